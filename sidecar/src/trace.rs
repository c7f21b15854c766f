//! W3C trace context: each hop keeps the trace id, makes its own span id,
//! and passes `traceparent` on so the next hop's span is its child.

use http::HeaderMap;

use crate::headers::name::TRACEPARENT;

/// The trace a request belongs to, as this hop continues it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TraceContext {
    pub(crate) trace_id: TraceId,
    pub(crate) span_id: SpanId,
    pub(crate) parent_id: Option<SpanId>,
    flags: u8,
}

/// A trace id; shown as 32 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TraceId(u128);

/// A span id; shown as 16 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SpanId(u64);

impl std::fmt::Display for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl std::fmt::Display for SpanId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl TraceContext {
    /// Continues the trace in `headers` (or starts one) with a new span,
    /// and writes the new span into `headers` for the next hop.
    pub(crate) fn continue_in(headers: &mut HeaderMap) -> Self {
        let incoming = headers.get(TRACEPARENT).and_then(|v| parse(v.as_bytes()));
        // Ids only need to be unique, not unguessable: the thread's own
        // fast generator (wyrand, seeded per thread), not a CSPRNG.
        let span_id = SpanId(fastrand::u64(1..));
        let ctx = match incoming {
            Some((trace_id, parent, flags)) => Self {
                trace_id,
                span_id,
                parent_id: Some(parent),
                flags,
            },
            None => Self {
                trace_id: TraceId(fastrand::u128(1..)),
                span_id,
                parent_id: None,
                flags: 1,
            },
        };
        // Owned and counted from the start: the retry layer's copy of the
        // head costs a reference, not an allocation.
        let value = bytes::Bytes::from_owner(ctx.header());
        if let Ok(v) = http::HeaderValue::from_maybe_shared(value) {
            headers.insert(TRACEPARENT, v);
        }
        ctx
    }

    /// `00-<trace id>-<span id>-<flags>`.
    fn header(&self) -> [u8; 55] {
        let mut out = [b'-'; 55];
        out[..2].copy_from_slice(b"00");
        hex_into(&mut out[3..19], (self.trace_id.0 >> 64) as u64);
        hex_into(&mut out[19..35], self.trace_id.0 as u64);
        hex_into(&mut out[36..52], self.span_id.0);
        hex_into(&mut out[53..55], u64::from(self.flags));
        out
    }
}

/// Each byte as two lowercase hex digits.
const HEX_PAIRS: [[u8; 2]; 256] = {
    let digits = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [digits[i >> 4], digits[i & 0xf]];
        i += 1;
    }
    t
};

/// Each byte's value as a lowercase hex digit; `INVALID` for any other.
const HEX_VALUES: [u8; 256] = {
    let mut t = [INVALID; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};
const INVALID: u8 = 0x10;

/// `v`'s low `out.len() / 2` bytes as `out.len()` (even, at most 16)
/// lowercase hex digits, most significant first: a byte, two digits, at a
/// time from a table. It runs twice per request on each side.
fn hex_into(out: &mut [u8], v: u64) {
    let bytes = v.to_be_bytes();
    let from = bytes.len() - out.len() / 2;
    for (pair, b) in out.chunks_exact_mut(2).zip(&bytes[from..]) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(*b)]);
    }
}

/// The value of lowercase hex digits `s`, at most 16 of them: a table
/// lookup per digit, one check at the end.
fn hex(s: &[u8]) -> Option<u64> {
    let mut acc = 0u64;
    let mut seen = 0u8;
    for b in s {
        let d = HEX_VALUES[usize::from(*b)];
        seen |= d;
        acc = acc << 4 | u64::from(d & 0xf);
    }
    (seen & INVALID == 0).then_some(acc)
}

/// `version-traceid-parentid-flags`, lowercase hex, ids not all zero.
fn parse(v: &[u8]) -> Option<(TraceId, SpanId, u8)> {
    let v = v.trim_ascii();
    // Fixed widths: `vv-` + 32 + `-` + 16 + `-` + `ff`, then, in a later
    // version only, `-` and more.
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = hex(&v[..2])?;
    if version == 0xff {
        return None;
    }
    // Version 00 has exactly four fields; later versions may add more.
    if v.len() > 55 && (version == 0 || v[55] != b'-') {
        return None;
    }
    let trace = u128::from(hex(&v[3..19])?) << 64 | u128::from(hex(&v[19..35])?);
    let (parent, flags) = (hex(&v[36..52])?, hex(&v[53..55])?);
    if trace == 0 || parent == 0 {
        return None;
    }
    Some((TraceId(trace), SpanId(parent), flags as u8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_digits_both_ways() {
        let mut out = [0u8; 16];
        hex_into(&mut out, 0x0123_4567_89ab_cdef);
        assert_eq!(&out, b"0123456789abcdef");
        let mut two = [0u8; 2];
        hex_into(&mut two, 0x1ff);
        assert_eq!(&two, b"ff");
        assert_eq!(hex(b"0123456789abcdef"), Some(0x0123_4567_89ab_cdef));
        assert_eq!(hex(b"00"), Some(0));
        for bad in [&b"0A"[..], b"g0", b"0-", b" 0", b"\xff0"] {
            assert_eq!(hex(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn continues_a_trace_with_a_new_span() {
        let mut h = HeaderMap::new();
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        h.insert(TRACEPARENT, parent.parse().expect("value"));
        let ctx = TraceContext::continue_in(&mut h);
        assert_eq!(ctx.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let parent_id = ctx.parent_id.map(|p| p.to_string());
        assert_eq!(parent_id.as_deref(), Some("00f067aa0ba902b7"));
        assert_eq!(ctx.span_id.to_string().len(), 16);
        let sent = h.get(TRACEPARENT).expect("header").to_str().expect("ascii");
        assert!(sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(sent.ends_with("-01"));
        assert_ne!(sent, parent);
    }

    #[test]
    fn a_later_version_s_extra_fields_are_left_and_its_ids_kept() {
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        for later in [
            format!("01-{trace}-00f067aa0ba902b7-01"),
            format!("01-{trace}-00f067aa0ba902b7-01-what-comes-later"),
        ] {
            let mut h = HeaderMap::new();
            h.insert(TRACEPARENT, later.parse().expect("value"));
            let ctx = TraceContext::continue_in(&mut h);
            assert_eq!(ctx.trace_id.to_string(), trace, "{later}");
            let sent = h.get(TRACEPARENT).expect("set").to_str().expect("ascii");
            assert!(sent.starts_with(&format!("00-{trace}-")), "{sent}");
            assert_eq!(sent.len(), 55);
        }
        let mut h = HeaderMap::new();
        h.insert(
            TRACEPARENT,
            format!("01-{trace}-00f067aa0ba902b7-011")
                .parse()
                .expect("value"),
        );
        assert!(TraceContext::continue_in(&mut h).parent_id.is_none());
    }

    #[test]
    fn starts_a_trace_when_there_is_none_or_it_is_malformed() {
        for bad in [
            None,
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            Some("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
            Some("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("garbage"),
            // Version 00 has four fields, no more.
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-011"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0"),
        ] {
            let mut h = HeaderMap::new();
            if let Some(b) = bad {
                h.insert(TRACEPARENT, b.parse().expect("value"));
            }
            let ctx = TraceContext::continue_in(&mut h);
            assert!(ctx.parent_id.is_none(), "{bad:?}");
            assert_eq!(ctx.trace_id.to_string().len(), 32);
            let sent = h.get(TRACEPARENT).expect("set");
            assert!(parse(sent.as_bytes()).is_some());
            assert_eq!(
                sent.to_str().expect("ascii"),
                format!("00-{}-{}-01", ctx.trace_id, ctx.span_id)
            );
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Whatever a peer sends, the hop goes on with a well-formed header.
        #[test]
        fn any_header_value_gives_a_valid_traceparent(raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80)) {
            let mut h = HeaderMap::new();
            if let Ok(v) = http::HeaderValue::from_bytes(&raw) {
                h.insert(TRACEPARENT, v);
            }
            let ctx = TraceContext::continue_in(&mut h);
            let sent = h.get(TRACEPARENT).expect("set").to_str().expect("ascii").to_owned();
            proptest::prop_assert!(parse(sent.as_bytes()).is_some());
            proptest::prop_assert_eq!(ctx.trace_id.to_string().len(), 32);
        }
    }
}
