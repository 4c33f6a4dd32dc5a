//! `*`-only glob patterns used by Role subjects, label matchers and SPIFFE grants.
//!
//! `*` matches any run of characters, including `/` and `.`, and the empty run.
//! Every other character matches itself; matching is anchored at both ends and
//! case-sensitive. There is deliberately no `?`, character class or regex form:
//! patterns in grants should be obvious to review.

use std::fmt;

/// A compiled glob pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    source: String,
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// No `*`: plain equality.
    Literal,
    /// Exactly `*`.
    Any,
    /// The literal pieces between stars; `anchored_start`/`anchored_end` say
    /// whether the pattern begins/ends with a literal rather than `*`.
    Pieces {
        pieces: Vec<String>,
        anchored_start: bool,
        anchored_end: bool,
    },
}

impl Glob {
    /// Compiles a pattern. Every string is a valid pattern.
    pub fn new(pattern: &str) -> Self {
        let kind = if !pattern.contains('*') {
            Kind::Literal
        } else if pattern.chars().all(|c| c == '*') {
            Kind::Any
        } else {
            let pieces: Vec<String> = pattern
                .split('*')
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect();
            Kind::Pieces {
                pieces,
                anchored_start: !pattern.starts_with('*'),
                anchored_end: !pattern.ends_with('*'),
            }
        };
        Glob {
            source: pattern.to_owned(),
            kind,
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the pattern contains no `*`.
    pub fn is_literal(&self) -> bool {
        matches!(self.kind, Kind::Literal)
    }

    /// Whether the pattern matches every string.
    pub fn matches_everything(&self) -> bool {
        matches!(self.kind, Kind::Any)
    }

    /// Whether `text` matches the whole pattern.
    pub fn matches(&self, text: &str) -> bool {
        match &self.kind {
            Kind::Literal => self.source == text,
            Kind::Any => true,
            Kind::Pieces {
                pieces,
                anchored_start,
                anchored_end,
            } => match_pieces(pieces, *anchored_start, *anchored_end, text),
        }
    }
}

/// Greedy leftmost matching is exact for `*`-only globs: taking the earliest
/// occurrence of each middle piece leaves the most room for the rest.
fn match_pieces(pieces: &[String], anchored_start: bool, anchored_end: bool, text: &str) -> bool {
    let mut rest = text;
    let mut middle = pieces;
    if anchored_start {
        let Some((first, tail)) = middle.split_first() else {
            return true;
        };
        match rest.strip_prefix(first.as_str()) {
            Some(r) => rest = r,
            None => return false,
        }
        middle = tail;
    }
    let mut last = None;
    if anchored_end {
        let Some((l, init)) = middle.split_last() else {
            // Unreachable for real patterns (anchored at both ends with a `*`
            // inside means two pieces); kept total instead of panicking.
            return rest.is_empty();
        };
        last = Some(l);
        middle = init;
    }
    for piece in middle {
        match rest.find(piece.as_str()) {
            Some(i) => rest = &rest[i + piece.len()..],
            None => return false,
        }
    }
    match last {
        Some(l) => rest.ends_with(l.as_str()),
        None => true,
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(p: &str, t: &str) -> bool {
        Glob::new(p).matches(t)
    }

    #[test]
    fn literal_and_any() {
        assert!(m("payments", "payments"));
        assert!(!m("payments", "payments2"));
        assert!(m("*", ""));
        assert!(m("*", "a/b/c"));
        assert!(m("**", "x"));
        assert!(Glob::new("*").matches_everything());
        assert!(Glob::new("abc").is_literal());
    }

    #[test]
    fn prefix_suffix_infix() {
        assert!(m("vm-*", "vm-1"));
        assert!(m("vm-*", "vm-"));
        assert!(!m("vm-*", "xvm-1"));
        assert!(m("*.payments.svc", "api.payments.svc"));
        assert!(m("*.payments.svc", "a.b.payments.svc"));
        assert!(!m("*.payments.svc", "api.payments.svc.evil"));
        assert!(m("/ns/payments/*", "/ns/payments/sa/x"));
        assert!(!m("/ns/payments/*", "/ns/payments2/sa/x"));
        assert!(m("/ns/*/sa/*", "/ns/a/sa/b"));
        assert!(!m("/ns/*/sa/*", "/ns/a/role/b"));
        assert!(m("a*b*c", "abc"));
        assert!(m("a*b*c", "aXbYbZc"));
        assert!(!m("a*b*c", "aXcYb"));
        // The end piece must not overlap the start piece.
        assert!(!m("ab*ba", "aba"));
        assert!(m("ab*ba", "abba"));
        assert!(m("*a*", "bab"));
        assert!(!m("*a*", "bbb"));
    }

    /// A straightforward recursive matcher to check the fast one against.
    fn reference(p: &[u8], t: &[u8]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (None, Some(_)) => false,
            (Some(b'*'), _) => reference(&p[1..], t) || (!t.is_empty() && reference(p, &t[1..])),
            (Some(c), Some(d)) => c == d && reference(&p[1..], &t[1..]),
            (Some(_), None) => false,
        }
    }

    proptest! {
        #[test]
        fn agrees_with_reference(p in "[ab*/]{0,8}", t in "[ab/]{0,10}") {
            prop_assert_eq!(m(&p, &t), reference(p.as_bytes(), t.as_bytes()));
        }
    }
}
