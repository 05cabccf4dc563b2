//! nginx time values (`3s`, `10m`, `500ms`, `1h30m`, bare `30` = seconds)
//! to humantime strings that cplb's config reads back to the same duration.

/// Milliseconds per nginx unit. nginx's `M` is 30 days and `y` 365, unlike
/// humantime's, so those are never copied through as written.
fn unit_ms(unit: &str) -> Option<u64> {
    Some(match unit {
        "ms" => 1,
        "s" | "" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        "M" => 30 * 86_400_000,
        "y" => 365 * 86_400_000,
        _ => return None,
    })
}

/// The humantime text for an nginx time value, or `None` if it is not one.
pub(super) fn to_humantime(text: &str) -> Option<String> {
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    if compact.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    let mut parts = 0;
    let mut rest = compact.as_str();
    let mut single: Option<(u64, &str)> = None;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let number: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        total = total.checked_add(number.checked_mul(unit_ms(unit)?)?)?;
        parts += 1;
        single = Some((number, unit));
    }
    // One number with a unit humantime reads the same way: keep it as the
    // operator wrote it, so `3000s` stays recognisable.
    if let (1, Some((n, unit @ ("ms" | "s" | "m" | "h" | "d" | "w")))) = (parts, single) {
        return Some(format!("{n}{unit}"));
    }
    Some(if total.is_multiple_of(1000) {
        format!("{}s", total / 1000)
    } else {
        format!("{total}ms")
    })
}

#[cfg(test)]
mod tests {
    use super::to_humantime;

    #[test]
    fn nginx_times() {
        for (nginx, want) in [
            ("3s", "3s"),
            ("10m", "10m"),
            ("1h", "1h"),
            ("500ms", "500ms"),
            ("30", "30s"),
            ("3000s", "3000s"),
            ("1h30m", "5400s"),
            ("1h 30m", "5400s"),
            ("1s500ms", "1500ms"),
            ("1M", "2592000s"),
        ] {
            assert_eq!(to_humantime(nginx).as_deref(), Some(want), "{nginx}");
            let back = humantime::parse_duration(want).unwrap();
            assert!(!back.is_zero(), "{nginx}");
        }
        for bad in ["", "s", "3x", "-1s", "1.5s", "99999999999999999999"] {
            assert_eq!(to_humantime(bad), None, "{bad}");
        }
    }
}
