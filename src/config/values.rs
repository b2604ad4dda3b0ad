//! Cyrus value types: switches, integers as `strtol(…, 0)` reads them, durations with a
//! per-option default unit.

use std::time::Duration;

/// A Cyrus switch: `1`, `y…`, `on`, `t…` are true; `0`, `n…`, `of…`, `f…` are false.
pub fn parse_switch(value: &str) -> Result<bool, String> {
    let lower = value.to_ascii_lowercase();
    if lower == "1" || lower.starts_with('y') || lower == "on" || lower.starts_with('t') {
        Ok(true)
    } else if lower == "0"
        || lower.starts_with('n')
        || lower.starts_with("of")
        || lower.starts_with('f')
    {
        Ok(false)
    } else {
        Err(format!(
            "{value:?} is not a switch (use yes/no, on/off, true/false or 1/0)"
        ))
    }
}

/// An integer as C's `strtol(value, NULL, 0)` reads it: decimal, `0x` hex or `0` octal.
pub fn parse_int(value: &str) -> Result<i64, String> {
    let (negative, digits) = match value.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, value.strip_prefix('+').unwrap_or(value)),
    };
    let parsed = if let Some(hex) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        i64::from_str_radix(hex, 16)
    } else if digits.len() > 1 && digits.starts_with('0') {
        i64::from_str_radix(&digits[1..], 8)
    } else {
        digits.parse::<i64>()
    };
    let n = parsed.map_err(|_| format!("{value:?} is not an integer"))?;
    Ok(if negative { -n } else { n })
}

/// A non-negative integer that fits `usize`.
pub fn parse_count(value: &str) -> Result<usize, String> {
    let n = parse_int(value)?;
    usize::try_from(n).map_err(|_| format!("{value:?} must not be negative"))
}

/// A limit that must let at least one through (a cap or a wait of zero would refuse all).
pub fn at_least_one<T: Default + PartialEq>(
    parse: impl Fn(&str) -> Result<T, String>,
) -> impl Fn(&str) -> Result<T, String> {
    move |value| match parse(value)? {
        zero if zero == T::default() => Err(format!("{value:?} must be more than zero")),
        limit => Ok(limit),
    }
}

/// A Cyrus duration such as `3`, `90s`, `1h30m` or `2d`; a bare number is in `default_unit`
/// (one of `s`, `m`, `h`, `d`).
pub fn parse_duration(value: &str, default_unit: char) -> Result<Duration, String> {
    let bad = || format!("{value:?} is not a duration (for example 30s, 5m, 1h30m, 2d)");
    if value.is_empty() {
        return Err(bad());
    }
    let (negative, body) = match value.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    if negative {
        return Err(format!("{value:?}: a duration must not be negative"));
    }
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in body.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: u64 = number.parse().map_err(|_| bad())?;
        total = total
            .checked_add(
                n.checked_mul(unit_seconds(c).ok_or_else(bad)?)
                    .ok_or_else(bad)?,
            )
            .ok_or_else(bad)?;
        number.clear();
    }
    if !number.is_empty() {
        let n: u64 = number.parse().map_err(|_| bad())?;
        let unit = unit_seconds(default_unit).ok_or_else(bad)?;
        total = total
            .checked_add(n.checked_mul(unit).ok_or_else(bad)?)
            .ok_or_else(bad)?;
    }
    Ok(Duration::from_secs(total))
}

fn unit_seconds(unit: char) -> Option<u64> {
    match unit {
        's' => Some(1),
        'm' => Some(60),
        'h' => Some(3600),
        'd' => Some(86_400),
        _ => None,
    }
}

/// A space- or comma-separated list, as Cyrus reads `admins` and similar options.
pub fn parse_list(value: &str) -> Vec<String> {
    value
        .split(|c: char| c.is_ascii_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches() {
        for t in ["1", "yes", "Y", "on", "true", "t"] {
            assert_eq!(parse_switch(t), Ok(true), "{t}");
        }
        for f in ["0", "no", "off", "false", "F"] {
            assert_eq!(parse_switch(f), Ok(false), "{f}");
        }
        assert!(parse_switch("maybe").is_err());
    }

    #[test]
    fn integers_like_strtol() {
        assert_eq!(parse_int("128"), Ok(128));
        assert_eq!(parse_int("0x10"), Ok(16));
        assert_eq!(parse_int("010"), Ok(8));
        assert_eq!(parse_int("-3"), Ok(-3));
        assert!(parse_int("12abc").is_err());
        assert!(parse_count("-1").is_err());
        assert_eq!(at_least_one(parse_count)("64"), Ok(64));
        assert!(at_least_one(parse_count)("0").is_err());
        assert!(at_least_one(|v| parse_duration(v, 's'))("0s").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("3", 's'), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("180", 'm'), Ok(Duration::from_secs(10_800)));
        assert_eq!(parse_duration("1h30m", 's'), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("2d", 's'), Ok(Duration::from_secs(172_800)));
        assert!(parse_duration("5x", 's').is_err());
        assert!(parse_duration("-5", 's').is_err());
        assert!(parse_duration("", 's').is_err());
    }

    #[test]
    fn lists() {
        assert_eq!(
            parse_list("mupdate  admin,root"),
            ["mupdate", "admin", "root"]
        );
    }
}
