//! Human durations in config files: `"500ms"`, `"2s"`, `"30m"`, `"24h"`, `"7d"`, `"1h30m"`.

use std::fmt;
use std::time::Duration;

/// A duration as the raw schema reads it: a string with units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Dur(pub Duration);

/// Parses `<number><unit>` groups (units `ms`, `s`, `m`, `h`, `d`), e.g. `1h30m`. A bare `0` is
/// zero; any other number needs a unit.
pub(super) fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err("empty duration (expected e.g. \"500ms\", \"2s\", \"30m\", \"24h\")".into());
    }
    let too_large = || format!("invalid duration {s:?}: too large");
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "invalid duration {s:?}: expected a number at {rest:?}"
            ));
        }
        let n: u64 = rest[..digits].parse().map_err(|_| too_large())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => n
                .checked_mul(60)
                .map(Duration::from_secs)
                .ok_or_else(too_large)?,
            "h" => n
                .checked_mul(3600)
                .map(Duration::from_secs)
                .ok_or_else(too_large)?,
            "d" => n
                .checked_mul(86_400)
                .map(Duration::from_secs)
                .ok_or_else(too_large)?,
            "" => {
                return Err(format!(
                    "invalid duration {s:?}: missing unit (ms, s, m, h, d)"
                ));
            }
            u => {
                return Err(format!(
                    "invalid duration {s:?}: unknown unit {u:?} (ms, s, m, h, d)"
                ));
            }
        };
        total = total.checked_add(part).ok_or_else(too_large)?;
    }
    Ok(total)
}

impl<'de> serde::Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
        super::raw::from_str_with(d, "a duration string such as \"2s\" or \"30m\"", |s| {
            parse(s).map(Dur)
        })
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        match ms {
            0 => f.write_str("0"),
            _ if ms % 86_400_000 == 0 => write!(f, "{}d", ms / 86_400_000),
            _ if ms % 3_600_000 == 0 => write!(f, "{}h", ms / 3_600_000),
            _ if ms % 60_000 == 0 => write!(f, "{}m", ms / 60_000),
            _ if ms % 1000 == 0 => write!(f, "{}s", ms / 1000),
            _ => write!(f, "{ms}ms"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_compounds_parse() {
        let cases = [
            ("0", 0),
            ("500ms", 500),
            ("2s", 2000),
            ("30m", 1_800_000),
            ("24h", 86_400_000),
            ("7d", 604_800_000),
            ("1h30m", 5_400_000),
            ("1m500ms", 60_500),
            (" 2s ", 2000),
        ];
        for (s, ms) in cases {
            assert_eq!(parse(s), Ok(Duration::from_millis(ms)), "{s:?}");
        }
    }

    #[test]
    fn bad_durations_are_explained() {
        for s in [
            "",
            "5",
            "s",
            "2x",
            "1.5s",
            "-1s",
            "2 s",
            "99999999999999999999s",
            "999999999999999999d",
        ] {
            let e = parse(s).expect_err(s);
            assert!(e.contains("duration"), "{s:?}: {e}");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["0", "500ms", "2s", "30m", "24h", "7d", "90s"] {
            let d = Dur(parse(s).unwrap());
            assert_eq!(Dur(parse(&d.to_string()).unwrap()), d);
        }
        assert_eq!(Dur(Duration::from_secs(90)).to_string(), "90s");
    }
}
