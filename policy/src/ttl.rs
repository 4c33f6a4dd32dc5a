//! SVID lifetimes written as duration strings (`"1h"`, `"5m"`, `"90s"`, `"1h30m"`).
//!
//! The accepted syntax is one or more `<digits><unit>` pairs with unit `h`, `m`
//! or `s`: the subset of Go durations that makes sense for certificate
//! lifetimes. The CRD schema carries the same pattern, so the API server and
//! the standalone loader accept exactly the same strings.

use std::fmt;
use std::time::Duration;

/// Regular expression for the CRD schema, equal to what [`parse_duration`] accepts.
pub const DURATION_PATTERN: &str = "^([0-9]+[hms])+$";

/// Default X.509-SVID lifetime when `spec.spiffe.x509.ttl` is omitted.
pub const X509_DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// Shortest accepted X.509-SVID lifetime. Shorter certificates rotate (at half
/// life) faster than agents and issuers should be asked to work.
pub const X509_MIN_TTL: Duration = Duration::from_secs(60);
/// Longest accepted X.509-SVID lifetime. SVIDs are meant to be short-lived;
/// a day matches Teleport's legacy maximum.
pub const X509_MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// Default JWT-SVID lifetime when `spec.spiffe.jwt.ttl` is omitted.
pub const JWT_DEFAULT_TTL: Duration = Duration::from_secs(300);
/// Shortest accepted JWT-SVID lifetime; below a minute clock skew between
/// issuer and audience starts rejecting fresh tokens.
pub const JWT_MIN_TTL: Duration = Duration::from_secs(60);
/// Longest accepted JWT-SVID lifetime. JWTs are bearer tokens that cannot be
/// revoked, so they are kept much shorter than certificates.
pub const JWT_MAX_TTL: Duration = Duration::from_secs(3600);

/// Errors from parsing or bounding a TTL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TtlError {
    /// Not of the form `1h30m`, `5m`, `90s`.
    #[error(
        "invalid duration {0:?}: expected digits followed by h, m or s, e.g. \"1h\", \"5m\", \"90s\""
    )]
    Syntax(String),
    /// Too large to represent.
    #[error("duration {0:?} is too large")]
    Overflow(String),
    /// Outside the allowed range.
    #[error("duration {value:?} is outside the allowed range {min} to {max}")]
    OutOfBounds {
        /// The duration as written.
        value: String,
        /// Lower bound, formatted.
        min: DisplayDuration,
        /// Upper bound, formatted.
        max: DisplayDuration,
    },
}

/// Parses a duration string.
pub fn parse_duration(text: &str) -> Result<Duration, TtlError> {
    let syntax = || TtlError::Syntax(text.to_owned());
    if text.is_empty() {
        return Err(syntax());
    }
    let mut total: u64 = 0;
    let mut digits: Option<u64> = None;
    for c in text.chars() {
        if let Some(d) = c.to_digit(10) {
            let n = digits
                .unwrap_or(0)
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(d)))
                .ok_or_else(|| TtlError::Overflow(text.to_owned()))?;
            digits = Some(n);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(syntax()),
        };
        let n = digits.take().ok_or_else(syntax)?;
        total = n
            .checked_mul(unit)
            .and_then(|secs| total.checked_add(secs))
            .ok_or_else(|| TtlError::Overflow(text.to_owned()))?;
    }
    if digits.is_some() {
        // Trailing number without a unit, e.g. "90".
        return Err(syntax());
    }
    Ok(Duration::from_secs(total))
}

/// Parses `text` (or takes `default` when absent) and checks `min..=max`.
pub fn parse_bounded(
    text: Option<&str>,
    default: Duration,
    min: Duration,
    max: Duration,
) -> Result<Duration, TtlError> {
    let Some(text) = text else {
        return Ok(default);
    };
    let d = parse_duration(text)?;
    if d < min || d > max {
        return Err(TtlError::OutOfBounds {
            value: text.to_owned(),
            min: DisplayDuration(min),
            max: DisplayDuration(max),
        });
    }
    Ok(d)
}

/// Formats a duration in the same `1h30m` syntax [`parse_duration`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DisplayDuration(pub Duration);

impl fmt::Display for DisplayDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs();
        if secs == 0 {
            return f.write_str("0s");
        }
        let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if s > 0 {
            write!(f, "{s}s")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_sums() {
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("1m1m").unwrap(), Duration::from_secs(120));
    }

    #[test]
    fn rejects_bad_syntax() {
        for bad in [
            "", "1", "h", "1d", "1.5h", "1h 30m", " 1h", "-1h", "1H", "1ms",
        ] {
            assert!(
                matches!(parse_duration(bad), Err(TtlError::Syntax(_))),
                "{bad:?} should be a syntax error"
            );
        }
        assert!(matches!(
            parse_duration("99999999999999999999h"),
            Err(TtlError::Overflow(_))
        ));
        assert!(matches!(
            parse_duration("9999999999999999h"),
            Err(TtlError::Overflow(_))
        ));
    }

    #[test]
    fn bounds_and_defaults() {
        assert_eq!(
            parse_bounded(None, X509_DEFAULT_TTL, X509_MIN_TTL, X509_MAX_TTL).unwrap(),
            X509_DEFAULT_TTL
        );
        assert_eq!(
            parse_bounded(Some("24h"), X509_DEFAULT_TTL, X509_MIN_TTL, X509_MAX_TTL).unwrap(),
            X509_MAX_TTL
        );
        let err =
            parse_bounded(Some("25h"), X509_DEFAULT_TTL, X509_MIN_TTL, X509_MAX_TTL).unwrap_err();
        assert_eq!(
            err.to_string(),
            "duration \"25h\" is outside the allowed range 1m to 24h"
        );
        assert!(parse_bounded(Some("30s"), JWT_DEFAULT_TTL, JWT_MIN_TTL, JWT_MAX_TTL).is_err());
        assert!(parse_bounded(Some("0s"), JWT_DEFAULT_TTL, JWT_MIN_TTL, JWT_MAX_TTL).is_err());
    }

    #[test]
    fn display_round_trips() {
        for s in ["1h", "5m", "90s", "1h30m", "1h1m1s"] {
            let d = parse_duration(s).unwrap();
            let shown = DisplayDuration(d).to_string();
            assert_eq!(parse_duration(&shown).unwrap(), d);
        }
        assert_eq!(
            DisplayDuration(Duration::from_secs(90)).to_string(),
            "1m30s"
        );
    }
}
