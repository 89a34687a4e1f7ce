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

/// The file, written a page of contacts at a time (only the file's bytes are held).
pub struct ContactsCsv {
    out: csv::Writer<Vec<u8>>,
    rows: u64,
}

impl Default for ContactsCsv {
    fn default() -> Self {
        let mut out = csv::WriterBuilder::new()
            .terminator(csv::Terminator::CRLF)
            .quote_style(csv::QuoteStyle::Necessary)
            .from_writer(Vec::new());
        // Writing to a Vec cannot fail; a record error would only come from mismatched lengths.
        let _ = out.write_record(HEADER);
        Self { out, rows: 0 }
    }
}

impl ContactsCsv {
    pub fn add<'a>(&mut self, contacts: impl IntoIterator<Item = &'a Contact>) {
        for c in contacts {
            let field = |v: &Option<String>| neutralise(v.as_deref().unwrap_or("").trim());
            let _ = self.out.write_record([
                field(&c.email),
                field(&c.first_name),
                field(&c.last_name),
                field(&c.company),
                field(&c.phone),
                field(&c.job_title),
            ]);
            self.rows += 1;
        }
    }

    /// Contacts written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn finish(self) -> Vec<u8> {
        self.out.into_inner().unwrap_or_default()
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
