//! Kenyan mobile numbers as M-Pesa takes them: `2547XXXXXXXX` or `2541XXXXXXXX`.

/// Normalises a Kenyan mobile number written as `07XX XXX XXX`, `01XX...`, `+2547...`,
/// `2547...` or `7XX...` (spaces, dashes and brackets allowed) to `2547XXXXXXXX` /
/// `2541XXXXXXXX`; anything else is refused with the reason.
pub fn kenyan_msisdn(raw: &str) -> Result<String, String> {
    let cleaned: String = raw
        .trim()
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '(' | ')' | '.'))
        .collect();
    let digits = cleaned.strip_prefix('+').unwrap_or(&cleaned);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(
            "phone_number must be a Kenyan mobile number such as 0712345678 or +254712345678"
                .into(),
        );
    }
    let national = if let Some(rest) = digits.strip_prefix("254") {
        rest
    } else if let Some(rest) = digits.strip_prefix('0') {
        rest
    } else if cleaned.starts_with('+') {
        return Err("phone_number must be a Kenyan (+254) mobile number".into());
    } else {
        digits
    };
    if national.len() != 9 || !(national.starts_with('7') || national.starts_with('1')) {
        return Err(
            "phone_number must be a Kenyan mobile number: 07XXXXXXXX, 01XXXXXXXX or +2547XXXXXXXX"
                .into(),
        );
    }
    Ok(format!("254{national}"))
}

/// The number with all but its last three digits hidden, for logs and support views.
pub fn masked(msisdn: &str) -> String {
    let keep = msisdn.len().saturating_sub(3);
    format!("{}{}", "*".repeat(keep), &msisdn[keep..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kenyan_numbers_normalise_and_others_are_refused() {
        let table = [
            ("254712345678", Ok("254712345678")),
            ("254112345678", Ok("254112345678")),
            ("0712345678", Ok("254712345678")),
            ("0112345678", Ok("254112345678")),
            ("+254712345678", Ok("254712345678")),
            ("+254 712 345 678", Ok("254712345678")),
            ("0712-345-678", Ok("254712345678")),
            ("712345678", Ok("254712345678")),
            (" (0712) 345678 ", Ok("254712345678")),
            ("", Err(())),
            ("07123456", Err(())),
            ("07123456789", Err(())),
            ("0812345678", Err(())),
            ("254812345678", Err(())),
            ("+255712345678", Err(())),
            ("+1 415 555 0100", Err(())),
            ("2547123456789", Err(())),
            ("07l2345678", Err(())),
            ("٠٧١٢٣٤٥٦٧٨", Err(())),
            ("++254712345678", Err(())),
        ];
        for (raw, want) in table {
            let got = kenyan_msisdn(raw);
            match want {
                Ok(number) => assert_eq!(got.as_deref(), Ok(number), "{raw:?}"),
                Err(()) => assert!(got.is_err(), "{raw:?} was accepted as {got:?}"),
            }
        }
        assert_eq!(masked("254712345678"), "*********678");
    }
}
