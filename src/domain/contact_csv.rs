//! The contacts file written to Google Drive and Dropbox: a header row, then one row per
//! contact, RFC 4180 (comma separated, CRLF line ends, a field quoted when it holds a comma,
//! a quote or a line break, quotes doubled). UTF-8 without a byte-order mark.
//!
//! Cells a spreadsheet would read as a formula (starting with `=`, `+`, `-`, `@`, a tab or a
//! carriage return) are neutralised as OWASP recommends: prefixed with a single quote, so a
//! contact named `=HYPERLINK(...)` is shown as text, never evaluated.

use super::contact::Contact;

/// The header row, in column order.
pub const HEADER: [&str; 6] = [
    "Email",
    "First Name",
    "Last Name",
    "Company",
    "Phone",
    "Job Title",
];

/// Room left beyond a chunk for the page of contacts that crosses it (1,000 rows of about 100
/// bytes; a longer page makes the buffer grow once).
const PAGE_ROOM: usize = 256 * 1024;

/// The file, written a page of contacts at a time; only the bytes not taken yet are held.
#[derive(Default)]
pub struct ContactsCsv {
    bytes: Vec<u8>,
    rows: u64,
    header_written: bool,
}

/// A writer appending RFC 4180 records to `out`.
fn writer(out: &mut Vec<u8>) -> csv::Writer<&mut Vec<u8>> {
    csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .quote_style(csv::QuoteStyle::Necessary)
        .from_writer(out)
}

impl ContactsCsv {
    pub fn add<'a>(&mut self, contacts: impl IntoIterator<Item = &'a Contact>) {
        let header = !std::mem::replace(&mut self.header_written, true);
        let mut out = writer(&mut self.bytes);
        // Writing to a Vec cannot fail; a record error would only come from mismatched lengths.
        if header {
            let _ = out.write_record(HEADER);
        }
        for c in contacts {
            let field = |v: &Option<String>| neutralise(v.as_deref().unwrap_or("").trim());
            let _ = out.write_record([
                field(&c.email),
                field(&c.first_name),
                field(&c.last_name),
                field(&c.company),
                field(&c.phone),
                field(&c.job_title),
            ]);
            self.rows += 1;
        }
        let _ = out.flush();
    }

    /// Contacts written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Bytes written and not taken yet.
    pub fn buffered(&self) -> usize {
        self.bytes.len()
    }

    /// Takes the first `max` bytes written (all of them when fewer), leaving the rest: how the
    /// file is handed out in chunks while it is written.
    pub fn take(&mut self, max: usize) -> Vec<u8> {
        if !self.header_written {
            self.add([]);
        }
        if self.bytes.len() <= max {
            return std::mem::take(&mut self.bytes);
        }
        // The rest goes into a buffer with room for the next chunk and a page beyond, so
        // filling it never doubles a chunk-sized buffer (which would hold both copies at once).
        let mut rest = Vec::with_capacity(max.saturating_add(PAGE_ROOM));
        rest.extend_from_slice(&self.bytes[max..]);
        self.bytes.truncate(max);
        std::mem::replace(&mut self.bytes, rest)
    }

    /// An empty file that will be taken `chunk` bytes at a time: room for a chunk and a page.
    pub fn for_chunks(chunk: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(chunk.saturating_add(PAGE_ROOM)),
            ..Self::default()
        }
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.take(usize::MAX)
    }
}

/// The cell as text a spreadsheet shows and never evaluates.
pub fn neutralise(cell: &str) -> String {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{cell}")
    } else {
        cell.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_cells_are_neutralised() {
        for (cell, want) in [
            ("=1+2", "'=1+2"),
            ("+254700000000", "'+254700000000"),
            ("-5", "'-5"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\tx", "'\tx"),
            ("\rx", "'\rx"),
            ("Ada", "Ada"),
            ("a=b", "a=b"),
            ("", ""),
        ] {
            assert_eq!(neutralise(cell), want, "{cell:?}");
        }
    }

    #[test]
    fn the_file_taken_in_chunks_is_the_file_written_whole() {
        let contacts: Vec<Contact> = (0..500)
            .map(|i| Contact {
                id: i.to_string(),
                email: Some(format!("person{i}@example.com")),
                first_name: Some(format!("Person {i}")),
                ..Contact::default()
            })
            .collect();
        let mut whole = ContactsCsv::default();
        whole.add(&contacts);
        let whole = whole.finish();
        let mut chunked = ContactsCsv::default();
        let mut taken = Vec::new();
        for page in contacts.chunks(70) {
            chunked.add(page);
            while chunked.buffered() >= 1000 {
                let chunk = chunked.take(1000);
                assert_eq!(chunk.len(), 1000);
                taken.extend(chunk);
            }
        }
        taken.extend(chunked.take(1000));
        assert_eq!(chunked.buffered(), 0);
        assert_eq!(taken, whole);
    }

    #[test]
    fn fields_are_quoted_only_when_rfc_4180_needs_it() {
        let c = Contact {
            id: "1".into(),
            email: Some("a@b.com".into()),
            first_name: Some("Zoë".into()),
            last_name: Some("O\"Neil, Jr".into()),
            company: Some("Line\nBreak".into()),
            phone: None,
            job_title: Some(" CTO ".into()),
        };
        let mut file = ContactsCsv::default();
        file.add([&c]);
        assert_eq!(file.rows(), 1);
        let csv = String::from_utf8(file.finish()).unwrap_or_default();
        assert_eq!(
            csv,
            "Email,First Name,Last Name,Company,Phone,Job Title\r\n\
             a@b.com,Zoë,\"O\"\"Neil, Jr\",\"Line\nBreak\",,CTO\r\n"
        );
    }
}
