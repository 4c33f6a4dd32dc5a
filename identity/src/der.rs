//! A minimal DER writer for the few structures this crate emits
//! (certificates, CSRs, SPKIs). Parsing is left to x509-parser and webpki.
//!
//! Writing the bytes ourselves keeps every security-relevant choice explicit:
//! extension criticality, the exact issuer name bytes, and multi-valued
//! subjects, none of which a generic builder let us control fully.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(crate) const TAG_BOOLEAN: u8 = 0x01;
pub(crate) const TAG_INTEGER: u8 = 0x02;
pub(crate) const TAG_BIT_STRING: u8 = 0x03;
pub(crate) const TAG_OCTET_STRING: u8 = 0x04;
pub(crate) const TAG_NULL: u8 = 0x05;
pub(crate) const TAG_OID: u8 = 0x06;
pub(crate) const TAG_UTF8_STRING: u8 = 0x0c;
pub(crate) const TAG_UTC_TIME: u8 = 0x17;
pub(crate) const TAG_GENERALIZED_TIME: u8 = 0x18;
pub(crate) const TAG_SEQUENCE: u8 = 0x30;
pub(crate) const TAG_SET: u8 = 0x31;

/// Object identifiers used by this crate, as dotted arcs.
pub(crate) mod oid {
    pub(crate) const EC_PUBLIC_KEY: &[u64] = &[1, 2, 840, 10045, 2, 1];
    pub(crate) const P256: &[u64] = &[1, 2, 840, 10045, 3, 1, 7];
    pub(crate) const P384: &[u64] = &[1, 3, 132, 0, 34];
    pub(crate) const P521: &[u64] = &[1, 3, 132, 0, 35];
    pub(crate) const RSA_ENCRYPTION: &[u64] = &[1, 2, 840, 113549, 1, 1, 1];
    pub(crate) const ECDSA_WITH_SHA256: &[u64] = &[1, 2, 840, 10045, 4, 3, 2];
    pub(crate) const ECDSA_WITH_SHA384: &[u64] = &[1, 2, 840, 10045, 4, 3, 3];
    pub(crate) const SHA256_WITH_RSA: &[u64] = &[1, 2, 840, 113549, 1, 1, 11];
    pub(crate) const COMMON_NAME: &[u64] = &[2, 5, 4, 3];
    pub(crate) const ORGANIZATION: &[u64] = &[2, 5, 4, 10];
    pub(crate) const ORGANIZATIONAL_UNIT: &[u64] = &[2, 5, 4, 11];
    pub(crate) const SUBJECT_KEY_ID: &[u64] = &[2, 5, 29, 14];
    pub(crate) const KEY_USAGE: &[u64] = &[2, 5, 29, 15];
    pub(crate) const SUBJECT_ALT_NAME: &[u64] = &[2, 5, 29, 17];
    pub(crate) const BASIC_CONSTRAINTS: &[u64] = &[2, 5, 29, 19];
    pub(crate) const AUTHORITY_KEY_ID: &[u64] = &[2, 5, 29, 35];
    pub(crate) const EXT_KEY_USAGE: &[u64] = &[2, 5, 29, 37];
    pub(crate) const KP_SERVER_AUTH: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 3, 1];
    pub(crate) const KP_CLIENT_AUTH: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 3, 2];
}

/// Appends a tag-length-value with a definite DER length.
pub(crate) fn write_tlv(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
}

pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 4);
    write_tlv(&mut out, tag, content);
    out
}

/// A constructed value whose content is the concatenation of `parts`.
pub(crate) fn constructed(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let content = parts.concat();
    tlv(tag, &content)
}

pub(crate) fn sequence(parts: &[&[u8]]) -> Vec<u8> {
    constructed(TAG_SEQUENCE, parts)
}

pub(crate) fn oid(arcs: &[u64]) -> Vec<u8> {
    let mut content = Vec::with_capacity(arcs.len() + 2);
    // The first two arcs share one subidentifier (X.690 8.19.4).
    let (first, rest) = match arcs {
        [a, b, rest @ ..] => (a * 40 + b, rest),
        [a] => (a * 40, &[][..]),
        [] => (0, &[][..]),
    };
    push_base128(&mut content, first);
    for arc in rest {
        push_base128(&mut content, *arc);
    }
    tlv(TAG_OID, &content)
}

fn push_base128(out: &mut Vec<u8>, mut value: u64) {
    let mut buf = [0u8; 10];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            break;
        }
    }
    let last = buf.len() - 1;
    for (j, b) in buf.iter().enumerate().skip(i) {
        out.push(if j == last { *b } else { b | 0x80 });
    }
}

/// A non-negative INTEGER from big-endian magnitude bytes.
pub(crate) fn unsigned_integer(magnitude: &[u8]) -> Vec<u8> {
    let skip = magnitude.iter().take_while(|b| **b == 0).count();
    let trimmed = &magnitude[skip..];
    let mut content = Vec::with_capacity(trimmed.len() + 1);
    // A set high bit would read as negative, so prefix a zero byte.
    if trimmed.first().is_none_or(|b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(trimmed);
    tlv(TAG_INTEGER, &content)
}

pub(crate) fn small_integer(value: u8) -> Vec<u8> {
    unsigned_integer(&[value])
}

/// A BIT STRING holding whole bytes (no unused bits).
pub(crate) fn bit_string(bytes: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(bytes.len() + 1);
    content.push(0);
    content.extend_from_slice(bytes);
    tlv(TAG_BIT_STRING, &content)
}

/// A named-bit BIT STRING (e.g. KeyUsage) with bits numbered from the most
/// significant bit of the first byte, trailing zero bits removed as DER requires.
pub(crate) fn named_bits(bits: &[u8]) -> Vec<u8> {
    let mut value: u16 = 0;
    for bit in bits {
        value |= 0x8000 >> bit;
    }
    if value == 0 {
        return tlv(TAG_BIT_STRING, &[0]);
    }
    let bytes = value.to_be_bytes();
    let used = if value & 0x00ff == 0 { 1 } else { 2 };
    let last = bytes[used - 1];
    let unused = last.trailing_zeros() as u8;
    let mut content = vec![unused];
    content.extend_from_slice(&bytes[..used]);
    tlv(TAG_BIT_STRING, &content)
}

pub(crate) fn octet_string(bytes: &[u8]) -> Vec<u8> {
    tlv(TAG_OCTET_STRING, bytes)
}

pub(crate) fn utf8_string(s: &str) -> Vec<u8> {
    tlv(TAG_UTF8_STRING, s.as_bytes())
}

pub(crate) fn boolean_true() -> Vec<u8> {
    tlv(TAG_BOOLEAN, &[0xff])
}

pub(crate) fn null() -> Vec<u8> {
    tlv(TAG_NULL, &[])
}

/// `[n] EXPLICIT` wrapper.
pub(crate) fn explicit(n: u8, content: &[u8]) -> Vec<u8> {
    tlv(0xa0 | n, content)
}

/// `[n] IMPLICIT` primitive (context-specific) value.
pub(crate) fn implicit_primitive(n: u8, content: &[u8]) -> Vec<u8> {
    tlv(0x80 | n, content)
}

/// An X.509 Time: UTCTime through 2049, GeneralizedTime after (RFC 5280 4.1.2.5).
/// Sub-second precision is dropped; callers truncate beforehand so reported
/// times equal encoded ones.
pub(crate) fn x509_time(t: SystemTime) -> Vec<u8> {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let dt = time::OffsetDateTime::from_unix_timestamp(secs.min(253_402_300_799) as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let (year, month, day) = (dt.year(), u8::from(dt.month()), dt.day());
    let (h, m, s) = (dt.hour(), dt.minute(), dt.second());
    if (1950..2050).contains(&year) {
        let text = format!(
            "{:02}{month:02}{day:02}{h:02}{m:02}{s:02}Z",
            year.rem_euclid(100)
        );
        tlv(TAG_UTC_TIME, text.as_bytes())
    } else {
        let text = format!("{year:04}{month:02}{day:02}{h:02}{m:02}{s:02}Z");
        tlv(TAG_GENERALIZED_TIME, text.as_bytes())
    }
}

/// `AlgorithmIdentifier` with absent parameters.
pub(crate) fn algorithm(arcs: &[u64]) -> Vec<u8> {
    sequence(&[&oid(arcs)])
}

/// `AlgorithmIdentifier` with NULL parameters (the RSA convention).
pub(crate) fn algorithm_null_params(arcs: &[u64]) -> Vec<u8> {
    sequence(&[&oid(arcs), &null()])
}

/// Reads one TLV from the start of `input`: (tag, content, rest).
/// Only used on signatures produced by ring, but checked all the same.
pub(crate) fn read_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_use_short_and_long_forms() {
        assert_eq!(tlv(0x04, &[1, 2]), vec![0x04, 0x02, 1, 2]);
        let long = tlv(0x04, &[0u8; 200]);
        assert_eq!(&long[..3], &[0x04, 0x81, 200]);
        let longer = tlv(0x04, &[0u8; 300]);
        assert_eq!(&longer[..4], &[0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(
            read_tlv(&longer).map(|(t, c, r)| (t, c.len(), r.len())),
            Some((4, 300, 0))
        );
    }

    #[test]
    fn oids_encode_like_x690() {
        // 1.2.840.113549 is the classic example with multi-byte arcs.
        assert_eq!(
            oid(&[1, 2, 840, 113549]),
            vec![0x06, 0x06, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d]
        );
        assert_eq!(oid(&[2, 5, 29, 17]), vec![0x06, 0x03, 0x55, 0x1d, 0x11]);
    }

    #[test]
    fn integers_are_minimal_and_positive() {
        assert_eq!(unsigned_integer(&[0, 0, 1]), vec![0x02, 0x01, 0x01]);
        assert_eq!(unsigned_integer(&[0x80]), vec![0x02, 0x02, 0x00, 0x80]);
        assert_eq!(unsigned_integer(&[]), vec![0x02, 0x01, 0x00]);
    }

    #[test]
    fn named_bits_drop_trailing_zeros() {
        // digitalSignature only.
        assert_eq!(named_bits(&[0]), vec![0x03, 0x02, 0x07, 0x80]);
        // keyCertSign + cRLSign.
        assert_eq!(named_bits(&[5, 6]), vec![0x03, 0x02, 0x01, 0x06]);
        // digitalSignature + keyEncipherment.
        assert_eq!(named_bits(&[0, 2]), vec![0x03, 0x02, 0x05, 0xa0]);
        // decipherOnly (bit 8) needs a second byte.
        assert_eq!(named_bits(&[0, 8]), vec![0x03, 0x03, 0x07, 0x80, 0x80]);
    }

    #[test]
    fn times_switch_to_generalized_in_2050() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(x509_time(t), tlv(TAG_UTC_TIME, b"231114221320Z"));
        let t = UNIX_EPOCH + Duration::from_secs(2_524_608_000); // 2050-01-01
        assert_eq!(x509_time(t), tlv(TAG_GENERALIZED_TIME, b"20500101000000Z"));
    }
}
