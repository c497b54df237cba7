//! Human durations in config files, read with `humantime`: `"500ms"`, `"2s"`, `"30m"`, `"24h"`,
//! `"7d"`, `"1h30m"`, a bare `"0"`.
//!
//! humantime also reads what the hand-written parser before it refused: spaces between groups
//! (`"1h 30m"`), long unit names (`"30 minutes"`, `"2 days"`), `us`/`ns`, weeks, years, and
//! fractions (`"1.5s"`). None of these changes the value of a duration that was accepted
//! before, and the rules in `validate` (not zero, at least 1s, not too long) still bound every
//! value that needs bounds. One spelling is refused: humantime's `M` (months), because `"30M"`
//! written for thirty minutes would silently mean thirty months.

use std::time::Duration;

/// Parses a duration; surrounding whitespace is ignored. The error names the input and what is
/// wrong with it (it is shown at the value's position).
pub(super) fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.contains('M') {
        return Err(format!(
            "invalid duration {s:?}: `M` would be months; write `m` for minutes (months are not \
             a config unit)"
        ));
    }
    humantime::parse_duration(s).map_err(|e| {
        format!("invalid duration {s:?}: {e} (expected e.g. \"500ms\", \"2s\", \"30m\", \"24h\")")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_the_old_parser_took_keeps_its_value() {
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
            (" 0 ", 0),
            ("0s", 0),
        ];
        for (s, ms) in cases {
            assert_eq!(parse(s), Ok(Duration::from_millis(ms)), "{s:?}");
        }
    }

    #[test]
    fn humantime_spellings_are_accepted_too() {
        let cases = [
            ("1h 30m", 5_400_000),
            ("30 minutes", 1_800_000),
            ("2 days", 172_800_000),
            ("1.5s", 1500),
            ("1w", 604_800_000),
        ];
        for (s, ms) in cases {
            assert_eq!(parse(s), Ok(Duration::from_millis(ms)), "{s:?}");
        }
    }

    #[test]
    fn bad_durations_are_explained() {
        for (s, why) in [
            ("", "empty"),
            ("5", "time unit needed"),
            ("s", "expected number"),
            ("2x", "unknown time unit \"x\""),
            ("-1s", "expected number"),
            ("30 lightyears", "unknown time unit"),
            ("30M", "write `m` for minutes"),
            ("1h30M", "`M` would be months"),
            ("99999999999999999999s", "too large"),
            ("999999999999999999d", "too large"),
        ] {
            let e = parse(s).expect_err(s);
            assert!(
                e.starts_with(&format!("invalid duration {:?}: ", s.trim())),
                "{s:?}: {e}"
            );
            assert!(e.contains(why), "{s:?}: {e} should say {why:?}");
        }
    }

    #[test]
    fn the_summary_format_reads_back_to_the_same_value() {
        for s in ["0", "500ms", "2s", "30m", "24h", "7d", "90s", "1h30m"] {
            let d = parse(s).unwrap();
            let shown = humantime::format_duration(d).to_string();
            assert_eq!(parse(&shown), Ok(d), "{s:?} shown as {shown:?}");
        }
        assert_eq!(
            humantime::format_duration(Duration::from_secs(1800)).to_string(),
            "30m"
        );
    }
}
