//! SPIFFE IDs and trust domain names, validated against every rule of the
//! SPIFFE-ID specification.
//!
//! Parsing is strict and exact: a value that parses is already in canonical
//! form, so `SpiffeId::parse(s)?.to_string() == s` always holds. Nothing is
//! normalised (no lower-casing, no percent-decoding), because two spellings of
//! one identity would let a policy match one and miss the other.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The URI scheme prefix every SPIFFE ID starts with.
const SCHEME_PREFIX: &str = "spiffe://";

/// Longest trust domain name: RFC 3986 caps the host component at 255 bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Longest SPIFFE ID accepted. The spec requires support up to 2048 bytes and
/// says not to generate longer ones; rejecting longer ones keeps peers that
/// stop at 2048 able to read everything we issue.
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

/// Why a string is not a valid trust domain name or SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The input was the empty string.
    #[error("SPIFFE ID is empty")]
    Empty,
    /// The URI does not start with `spiffe://` (or has no scheme at all).
    #[error("SPIFFE ID must start with the scheme \"spiffe://\"")]
    WrongScheme,
    /// The scheme is `spiffe` in another case, e.g. `SPIFFE://`.
    #[error("SPIFFE ID scheme must be lowercase \"spiffe\"")]
    SchemeNotLowercase,
    /// The authority (trust domain) part is empty, e.g. `spiffe:///path`.
    #[error("trust domain name is empty")]
    EmptyTrustDomain,
    /// The trust domain exceeds [`MAX_TRUST_DOMAIN_LEN`] bytes.
    #[error("trust domain name is {len} bytes long; at most {MAX_TRUST_DOMAIN_LEN} are allowed")]
    TrustDomainTooLong {
        /// Length of the offending name in bytes.
        len: usize,
    },
    /// The trust domain contains an uppercase ASCII letter.
    #[error("trust domain name must be lowercase, found {ch:?}")]
    TrustDomainNotLowercase {
        /// The offending character.
        ch: char,
    },
    /// The trust domain contains a character outside `[a-z0-9._-]`.
    #[error("trust domain name may only contain a-z, 0-9, '.', '-' and '_', found {ch:?}")]
    TrustDomainInvalidChar {
        /// The offending character.
        ch: char,
    },
    /// The authority carries userinfo (`user@host`).
    #[error("SPIFFE ID must not contain userinfo ('@' in the authority)")]
    UserinfoNotAllowed,
    /// The authority carries a port (`host:port`).
    #[error("SPIFFE ID must not contain a port (':' in the authority)")]
    PortNotAllowed,
    /// The URI has a query component.
    #[error("SPIFFE ID must not contain a query ('?')")]
    QueryNotAllowed,
    /// The URI has a fragment component.
    #[error("SPIFFE ID must not contain a fragment ('#')")]
    FragmentNotAllowed,
    /// The URI contains percent-encoding, which SPIFFE IDs never use.
    #[error("SPIFFE ID must not contain percent-encoding ('%')")]
    PercentEncodingNotAllowed,
    /// A path given to [`SpiffeId::from_path`] is neither empty nor starts with `/`.
    #[error("SPIFFE ID path must be empty or start with '/'")]
    PathNotAbsolute,
    /// The path contains an empty segment (`//`).
    #[error("SPIFFE ID path must not contain empty segments (\"//\")")]
    EmptySegment,
    /// The path contains a `.` or `..` segment.
    #[error("SPIFFE ID path must not contain '.' or '..' segments")]
    DotSegment,
    /// The path ends with `/`.
    #[error("SPIFFE ID path must not end with '/'")]
    TrailingSlash,
    /// A path segment contains a character outside `[a-zA-Z0-9._-]`.
    #[error(
        "SPIFFE ID path may only contain a-z, A-Z, 0-9, '.', '-' and '_' in segments, found {ch:?}"
    )]
    PathInvalidChar {
        /// The offending character.
        ch: char,
    },
    /// The whole URI exceeds [`MAX_SPIFFE_ID_LEN`] bytes.
    #[error("SPIFFE ID is {len} bytes long; at most {MAX_SPIFFE_ID_LEN} are allowed")]
    TooLong {
        /// Length of the offending URI in bytes.
        len: usize,
    },
}

/// A SPIFFE trust domain name, such as `example.org`.
///
/// Holds the bare name only; use [`SpiffeId::parse`] for `spiffe://` URIs.
/// Serialized as the bare name string and validated on deserialization.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Validates a bare trust domain name (`example.org`, not `spiffe://example.org`).
    pub fn new(name: &str) -> Result<Self, IdError> {
        validate_trust_domain(name)?;
        Ok(Self(name.to_owned()))
    }

    /// The trust domain name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The SPIFFE ID of the trust domain itself, `spiffe://<name>`, as carried
    /// by its CA certificates.
    pub fn id(&self) -> SpiffeId {
        SpiffeId {
            uri: format!("{SCHEME_PREFIX}{}", self.0),
            trust_domain: self.clone(),
        }
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl Serialize for TrustDomain {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TrustDomain {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Self::new(&name).map_err(serde::de::Error::custom)
    }
}

/// A SPIFFE ID: `spiffe://<trust domain><path>`.
///
/// Always valid and canonical; serialized as the URI string and validated on
/// deserialization. Ordering is by the URI string.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct SpiffeId {
    // Field order matters for the derived Ord: compare by the full URI.
    uri: String,
    trust_domain: TrustDomain,
}

/// Every SPIFFE ID path equal to or under this one belongs to Signet itself
/// (its agents and its issuer): no workload may ever hold one, or its SVID
/// would work as an agent's or the issuer's.
pub const RESERVED_PATH: &str = "/signet";

/// Whether a SPIFFE ID path is Signet's own (`/signet` or under `/signet/`).
pub fn is_reserved_path(path: &str) -> bool {
    path.strip_prefix(RESERVED_PATH)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

impl SpiffeId {
    /// Whether the ID is one of Signet's own (see [`RESERVED_PATH`]).
    pub fn is_reserved(&self) -> bool {
        is_reserved_path(self.path())
    }

    /// Parses and validates a SPIFFE ID URI such as `spiffe://example.org/ns/web`.
    pub fn parse(uri: &str) -> Result<Self, IdError> {
        if uri.is_empty() {
            return Err(IdError::Empty);
        }
        if uri.len() > MAX_SPIFFE_ID_LEN {
            return Err(IdError::TooLong { len: uri.len() });
        }
        let rest = match uri.strip_prefix(SCHEME_PREFIX) {
            Some(rest) => rest,
            None => {
                let has_other_case_scheme = uri
                    .get(..SCHEME_PREFIX.len())
                    .is_some_and(|p| p.eq_ignore_ascii_case(SCHEME_PREFIX));
                return Err(if has_other_case_scheme {
                    IdError::SchemeNotLowercase
                } else {
                    IdError::WrongScheme
                });
            }
        };
        // Query and fragment are checked over the whole remainder first so a
        // '?' or '#' gets its specific error wherever it appears.
        if rest.contains('?') {
            return Err(IdError::QueryNotAllowed);
        }
        if rest.contains('#') {
            return Err(IdError::FragmentNotAllowed);
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(IdError::UserinfoNotAllowed);
        }
        if authority.contains(':') {
            return Err(IdError::PortNotAllowed);
        }
        validate_trust_domain(authority)?;
        validate_path(path)?;
        Ok(Self {
            uri: uri.to_owned(),
            trust_domain: TrustDomain(authority.to_owned()),
        })
    }

    /// Builds a SPIFFE ID from a trust domain and a path, which must be empty
    /// or start with `/` (e.g. `/ns/default/sa/web`).
    pub fn from_path(trust_domain: &TrustDomain, path: &str) -> Result<Self, IdError> {
        if !path.is_empty() && !path.starts_with('/') {
            return Err(IdError::PathNotAbsolute);
        }
        let len = SCHEME_PREFIX.len() + trust_domain.0.len() + path.len();
        if len > MAX_SPIFFE_ID_LEN {
            return Err(IdError::TooLong { len });
        }
        if path.contains('?') {
            return Err(IdError::QueryNotAllowed);
        }
        if path.contains('#') {
            return Err(IdError::FragmentNotAllowed);
        }
        validate_path(path)?;
        Ok(Self {
            uri: format!("{SCHEME_PREFIX}{}{path}", trust_domain.0),
            trust_domain: trust_domain.clone(),
        })
    }

    /// The trust domain this ID belongs to.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The path, either empty or starting with `/`.
    pub fn path(&self) -> &str {
        &self.uri[SCHEME_PREFIX.len() + self.trust_domain.0.len()..]
    }

    /// The full URI.
    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// True when this ID is in trust domain `td`.
    pub fn is_member_of(&self, td: &TrustDomain) -> bool {
        self.trust_domain == *td
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl FromStr for SpiffeId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.uri)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let uri = String::deserialize(deserializer)?;
        Self::parse(&uri).map_err(serde::de::Error::custom)
    }
}

fn validate_trust_domain(name: &str) -> Result<(), IdError> {
    if name.is_empty() {
        return Err(IdError::EmptyTrustDomain);
    }
    if name.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(IdError::TrustDomainTooLong { len: name.len() });
    }
    for ch in name.chars() {
        match ch {
            'a'..='z' | '0'..='9' | '.' | '-' | '_' => {}
            'A'..='Z' => return Err(IdError::TrustDomainNotLowercase { ch }),
            '%' => return Err(IdError::PercentEncodingNotAllowed),
            _ => return Err(IdError::TrustDomainInvalidChar { ch }),
        }
    }
    Ok(())
}

/// Validates a path that is empty or starts with '/'.
fn validate_path(path: &str) -> Result<(), IdError> {
    if path.is_empty() {
        return Ok(());
    }
    if path.ends_with('/') {
        return Err(IdError::TrailingSlash);
    }
    // Skip the leading '/', then every segment is between two separators.
    for segment in path[1..].split('/') {
        if segment.is_empty() {
            return Err(IdError::EmptySegment);
        }
        if segment == "." || segment == ".." {
            return Err(IdError::DotSegment);
        }
        for ch in segment.chars() {
            match ch {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' => {}
                '%' => return Err(IdError::PercentEncodingNotAllowed),
                _ => return Err(IdError::PathInvalidChar { ch }),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn valid_ids_parse_into_parts() {
        let cases = [
            ("spiffe://example.org", "example.org", ""),
            ("spiffe://example.org/ns/web", "example.org", "/ns/web"),
            ("spiffe://a", "a", ""),
            ("spiffe://td-1_x.y/A.b-c_D/9", "td-1_x.y", "/A.b-c_D/9"),
            ("spiffe://example.org/...", "example.org", "/..."),
            (
                "spiffe://example.org/.a/a./..b",
                "example.org",
                "/.a/a./..b",
            ),
            ("spiffe://127.0.0.1/x", "127.0.0.1", "/x"),
        ];
        for (uri, td, path) in cases {
            let id = SpiffeId::parse(uri).unwrap_or_else(|e| panic!("{uri}: {e}"));
            assert_eq!(id.trust_domain().as_str(), td, "{uri}");
            assert_eq!(id.path(), path, "{uri}");
            assert_eq!(id.as_str(), uri);
            assert_eq!(id.to_string(), uri);
            assert_eq!(uri.parse::<SpiffeId>().as_ref(), Ok(&id));
        }
    }

    #[test]
    fn every_spec_rule_is_enforced() {
        let long_td = "a".repeat(256);
        let long_path = format!("spiffe://example.org/{}", "a".repeat(2048 - 21 + 1));
        let cases: Vec<(&str, IdError)> = vec![
            ("", IdError::Empty),
            ("example.org", IdError::WrongScheme),
            ("http://example.org/x", IdError::WrongScheme),
            ("spiffe:/example.org", IdError::WrongScheme),
            ("spiffe:example.org", IdError::WrongScheme),
            ("SPIFFE://example.org", IdError::SchemeNotLowercase),
            ("Spiffe://example.org/a", IdError::SchemeNotLowercase),
            ("spiffe://", IdError::EmptyTrustDomain),
            ("spiffe:///path", IdError::EmptyTrustDomain),
            (
                "spiffe://Example.org",
                IdError::TrustDomainNotLowercase { ch: 'E' },
            ),
            (
                "spiffe://exa mple.org",
                IdError::TrustDomainInvalidChar { ch: ' ' },
            ),
            (
                "spiffe://exämple.org",
                IdError::TrustDomainInvalidChar { ch: 'ä' },
            ),
            (
                "spiffe://ex+ample",
                IdError::TrustDomainInvalidChar { ch: '+' },
            ),
            ("spiffe://[::1]/x", IdError::PortNotAllowed),
            ("spiffe://user@example.org/x", IdError::UserinfoNotAllowed),
            ("spiffe://example.org:8443/x", IdError::PortNotAllowed),
            ("spiffe://example.org:/x", IdError::PortNotAllowed),
            ("spiffe://example.org/x?y=1", IdError::QueryNotAllowed),
            ("spiffe://example.org?x", IdError::QueryNotAllowed),
            ("spiffe://example.org/x#frag", IdError::FragmentNotAllowed),
            ("spiffe://example.org#x", IdError::FragmentNotAllowed),
            (
                "spiffe://example.org/a%20b",
                IdError::PercentEncodingNotAllowed,
            ),
            ("spiffe://ex%41mple.org", IdError::PercentEncodingNotAllowed),
            ("spiffe://example.org//a", IdError::EmptySegment),
            ("spiffe://example.org/a//b", IdError::EmptySegment),
            ("spiffe://example.org/./a", IdError::DotSegment),
            ("spiffe://example.org/a/..", IdError::DotSegment),
            ("spiffe://example.org/a/../b", IdError::DotSegment),
            ("spiffe://example.org/", IdError::TrailingSlash),
            ("spiffe://example.org/a/", IdError::TrailingSlash),
            (
                "spiffe://example.org/a b",
                IdError::PathInvalidChar { ch: ' ' },
            ),
            (
                "spiffe://example.org/a*",
                IdError::PathInvalidChar { ch: '*' },
            ),
            (
                "spiffe://example.org/ä",
                IdError::PathInvalidChar { ch: 'ä' },
            ),
            (
                "spiffe://example.org/a\\b",
                IdError::PathInvalidChar { ch: '\\' },
            ),
            (
                "spiffe://example.org/a:b",
                IdError::PathInvalidChar { ch: ':' },
            ),
            (
                "spiffe://example.org/a@b",
                IdError::PathInvalidChar { ch: '@' },
            ),
        ];
        for (uri, want) in cases {
            assert_eq!(SpiffeId::parse(uri), Err(want), "{uri:?}");
        }
        assert_eq!(
            SpiffeId::parse(&format!("spiffe://{long_td}")),
            Err(IdError::TrustDomainTooLong { len: 256 })
        );
        assert_eq!(
            SpiffeId::parse(&long_path),
            Err(IdError::TooLong { len: 2049 })
        );
    }

    #[test]
    fn length_limits_are_inclusive() {
        let td = "a".repeat(MAX_TRUST_DOMAIN_LEN);
        assert!(TrustDomain::new(&td).is_ok());
        let id = SpiffeId::parse(&format!("spiffe://{td}")).unwrap();
        assert_eq!(id.trust_domain().as_str().len(), 255);

        // Exactly 2048 bytes is the largest length the spec obliges us to accept.
        let prefix = "spiffe://example.org/";
        let uri = format!("{prefix}{}", "b".repeat(MAX_SPIFFE_ID_LEN - prefix.len()));
        assert_eq!(uri.len(), MAX_SPIFFE_ID_LEN);
        assert!(SpiffeId::parse(&uri).is_ok());
        let td = TrustDomain::new("example.org").unwrap();
        let path = &uri["spiffe://example.org".len()..];
        assert!(SpiffeId::from_path(&td, path).is_ok());
        let too_long = format!("{path}c");
        assert_eq!(
            SpiffeId::from_path(&td, &too_long),
            Err(IdError::TooLong { len: 2049 })
        );
    }

    #[test]
    fn trust_domain_rules() {
        let td = TrustDomain::new("example.org").unwrap();
        assert_eq!(td.as_str(), "example.org");
        assert_eq!(td.to_string(), "example.org");
        assert_eq!(td.id().as_str(), "spiffe://example.org");
        assert_eq!(td.id().path(), "");
        assert_eq!(td.id().trust_domain(), &td);
        let cases = [
            ("", IdError::EmptyTrustDomain),
            (
                "spiffe://example.org",
                IdError::TrustDomainInvalidChar { ch: ':' },
            ),
            ("Example.org", IdError::TrustDomainNotLowercase { ch: 'E' }),
            ("example.org/x", IdError::TrustDomainInvalidChar { ch: '/' }),
            ("ex%2e", IdError::PercentEncodingNotAllowed),
        ];
        for (name, want) in cases {
            assert_eq!(TrustDomain::new(name), Err(want.clone()), "{name:?}");
            assert_eq!(name.parse::<TrustDomain>(), Err(want), "{name:?}");
        }
        assert_eq!(
            TrustDomain::new(&"a".repeat(256)),
            Err(IdError::TrustDomainTooLong { len: 256 })
        );
    }

    #[test]
    fn from_path_rules() {
        let td = TrustDomain::new("example.org").unwrap();
        let id = SpiffeId::from_path(&td, "/ns/default/sa/web").unwrap();
        assert_eq!(id.as_str(), "spiffe://example.org/ns/default/sa/web");
        assert_eq!(id, SpiffeId::parse(id.as_str()).unwrap());
        assert_eq!(SpiffeId::from_path(&td, "").unwrap(), td.id());
        let cases = [
            ("ns/web", IdError::PathNotAbsolute),
            ("/", IdError::TrailingSlash),
            ("/a//b", IdError::EmptySegment),
            ("/a/./b", IdError::DotSegment),
            ("/a?b", IdError::QueryNotAllowed),
            ("/a#b", IdError::FragmentNotAllowed),
            ("/a%41", IdError::PercentEncodingNotAllowed),
            ("/a b", IdError::PathInvalidChar { ch: ' ' }),
        ];
        for (path, want) in cases {
            assert_eq!(SpiffeId::from_path(&td, path), Err(want), "{path:?}");
        }
    }

    #[test]
    fn membership() {
        let id = SpiffeId::parse("spiffe://example.org/web").unwrap();
        assert!(id.is_member_of(&TrustDomain::new("example.org").unwrap()));
        assert!(!id.is_member_of(&TrustDomain::new("example.com").unwrap()));
        // Prefix of the name is not membership.
        assert!(!id.is_member_of(&TrustDomain::new("example.or").unwrap()));
    }

    #[test]
    fn ordering_is_by_uri() {
        let mut ids: Vec<SpiffeId> = ["spiffe://b/x", "spiffe://a/z", "spiffe://a/y", "spiffe://a"]
            .iter()
            .map(|s| SpiffeId::parse(s).unwrap())
            .collect();
        ids.sort();
        let sorted: Vec<&str> = ids.iter().map(SpiffeId::as_str).collect();
        assert_eq!(
            sorted,
            ["spiffe://a", "spiffe://a/y", "spiffe://a/z", "spiffe://b/x"]
        );
    }

    #[test]
    fn serde_uses_strings_and_validates() {
        let id = SpiffeId::parse("spiffe://example.org/web").unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"spiffe://example.org/web\"");
        assert_eq!(serde_json::from_str::<SpiffeId>(&json).unwrap(), id);
        let err = serde_json::from_str::<SpiffeId>("\"spiffe://example.org/web/\"").unwrap_err();
        assert!(err.to_string().contains("must not end with '/'"), "{err}");

        let td = TrustDomain::new("example.org").unwrap();
        let json = serde_json::to_string(&td).unwrap();
        assert_eq!(json, "\"example.org\"");
        assert_eq!(serde_json::from_str::<TrustDomain>(&json).unwrap(), td);
        assert!(serde_json::from_str::<TrustDomain>("\"spiffe://example.org\"").is_err());
        assert!(serde_json::from_str::<TrustDomain>("42").is_err());
    }

    #[test]
    fn errors_have_clear_messages() {
        let err = SpiffeId::parse("spiffe://example.org:80").unwrap_err();
        assert_eq!(
            err.to_string(),
            "SPIFFE ID must not contain a port (':' in the authority)"
        );
        let err = SpiffeId::parse("spiffe://EX").unwrap_err();
        assert_eq!(
            err.to_string(),
            "trust domain name must be lowercase, found 'E'"
        );
    }

    fn valid_segment() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9._-]{1,12}".prop_filter("dot segments are invalid", |s| s != "." && s != "..")
    }

    fn valid_id() -> impl Strategy<Value = String> {
        (
            "[a-z0-9._-]{1,40}",
            proptest::collection::vec(valid_segment(), 0..6),
        )
            .prop_map(|(td, segs)| {
                let mut uri = format!("spiffe://{td}");
                for s in segs {
                    uri.push('/');
                    uri.push_str(&s);
                }
                uri
            })
    }

    proptest! {
        #[test]
        fn arbitrary_input_never_panics_and_accepted_is_canonical(s in any::<String>()) {
            if let Ok(id) = SpiffeId::parse(&s) {
                prop_assert_eq!(id.to_string(), s.clone());
            }
            if let Ok(td) = TrustDomain::new(&s) {
                prop_assert_eq!(td.as_str(), s.as_str());
            }
        }

        #[test]
        fn uri_like_input_never_panics_and_accepted_is_canonical(
            s in "spiffe://[a-zA-Z0-9._:@%?#/ -]{0,60}"
        ) {
            if let Ok(id) = SpiffeId::parse(&s) {
                prop_assert_eq!(id.to_string(), s.clone());
                let rebuilt = SpiffeId::from_path(id.trust_domain(), id.path());
                prop_assert_eq!(rebuilt, Ok(id));
            }
        }

        #[test]
        fn valid_ids_round_trip(uri in valid_id()) {
            let id = SpiffeId::parse(&uri).unwrap();
            prop_assert_eq!(id.to_string(), uri.clone());
            prop_assert_eq!(SpiffeId::parse(&id.to_string()).unwrap(), id.clone());
            let json = serde_json::to_string(&id).unwrap();
            prop_assert_eq!(serde_json::from_str::<SpiffeId>(&json).unwrap(), id.clone());
            let td_json = serde_json::to_string(id.trust_domain()).unwrap();
            prop_assert_eq!(&serde_json::from_str::<TrustDomain>(&td_json).unwrap(), id.trust_domain());
            prop_assert_eq!(SpiffeId::from_path(id.trust_domain(), id.path()).unwrap(), id);
        }
    }

    #[test]
    fn reserved_paths() {
        for reserved in [
            "/signet",
            "/signet/",
            "/signet/issuer",
            "/signet/agent/k8s/n1",
        ] {
            assert!(is_reserved_path(reserved), "{reserved}");
        }
        for free in ["/signets", "/signet-x/y", "/ns/signet", "/", ""] {
            assert!(!is_reserved_path(free), "{free}");
        }
        let td = TrustDomain::new("example.org").unwrap();
        assert!(
            SpiffeId::from_path(&td, "/signet/issuer")
                .unwrap()
                .is_reserved()
        );
        assert!(
            !SpiffeId::from_path(&td, "/ns/signet")
                .unwrap()
                .is_reserved()
        );
    }
}
