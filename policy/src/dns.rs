//! Validation of DNS names placed in X.509-SVID subject alternative names.

/// Why a string is not an acceptable DNS SAN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsNameError {
    /// Empty, or longer than 253 characters.
    #[error("DNS name {0:?} must be 1 to 253 characters long")]
    Length(String),
    /// A label is empty or longer than 63 characters.
    #[error("DNS name {0:?} has an empty label or one longer than 63 characters")]
    LabelLength(String),
    /// A character other than letters, digits and `-` in a label, or a label
    /// starting or ending with `-`.
    #[error(
        "DNS name {0:?} must consist of letters, digits and '-' (not at either end of a label)"
    )]
    Character(String),
    /// `*` anywhere but as the whole leftmost label of a name with at least two
    /// more labels.
    #[error(
        "DNS name {0:?}: '*' is only allowed as the whole first label, as in \"*.example.com\""
    )]
    Wildcard(String),
}

/// Checks that `name` is a hostname (RFC 1123 labels) usable as a DNS SAN.
///
/// A wildcard is accepted only as a complete leftmost label followed by at
/// least two labels (`*.example.com`, not `*.com` or `a*.example.com`).
/// Uppercase letters are accepted; callers normalise to lowercase.
pub fn validate_dns_name(name: &str) -> Result<(), DnsNameError> {
    if name.is_empty() || name.len() > 253 {
        return Err(DnsNameError::Length(name.to_owned()));
    }
    let labels: Vec<&str> = name.split('.').collect();
    for (i, label) in labels.iter().enumerate() {
        if label.is_empty() || label.len() > 63 {
            return Err(DnsNameError::LabelLength(name.to_owned()));
        }
        if label.contains('*') {
            if i != 0 || *label != "*" || labels.len() < 3 {
                return Err(DnsNameError::Wildcard(name.to_owned()));
            }
            continue;
        }
        let ok_chars = label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok_chars || label.starts_with('-') || label.ends_with('-') {
            return Err(DnsNameError::Character(name.to_owned()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_hostnames_and_leading_wildcards() {
        for ok in [
            "localhost",
            "api.payments.svc",
            "pod-1.payments.svc.cluster.local",
            "*.payments.svc",
            "a1.B2.c3",
            &format!("{}.com", "a".repeat(63)),
        ] {
            assert_eq!(validate_dns_name(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn rejects_malformed_names() {
        assert!(matches!(
            validate_dns_name(""),
            Err(DnsNameError::Length(_))
        ));
        let long = format!("{}.com", ["a"; 130].join("."));
        assert!(matches!(
            validate_dns_name(&long),
            Err(DnsNameError::Length(_))
        ));
        for bad in ["a..b", ".a", "a.", &format!("{}.com", "a".repeat(64))] {
            assert!(
                matches!(validate_dns_name(bad), Err(DnsNameError::LabelLength(_))),
                "{bad}"
            );
        }
        for bad in ["a_b.com", "-a.com", "a-.com", "a b.com", "a/b", "ä.com"] {
            assert!(
                matches!(validate_dns_name(bad), Err(DnsNameError::Character(_))),
                "{bad}"
            );
        }
        for bad in ["*.com", "a.*.com", "a*.b.com", "*", "**.b.com"] {
            assert!(
                matches!(validate_dns_name(bad), Err(DnsNameError::Wildcard(_))),
                "{bad}"
            );
        }
    }
}
