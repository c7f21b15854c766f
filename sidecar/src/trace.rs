//! W3C trace context: each hop keeps the trace id, makes its own span id,
//! and passes `traceparent` on so the next hop's span is its child.

use http::HeaderMap;
use rand::Rng;

/// The header.
pub(crate) const TRACEPARENT: &str = "traceparent";

/// The trace a request belongs to, as this hop continues it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TraceContext {
    pub(crate) trace_id: String,
    pub(crate) span_id: String,
    pub(crate) parent_id: Option<String>,
    flags: String,
}

impl TraceContext {
    /// Continues the trace in `headers` (or starts one) with a new span,
    /// and writes the new span into `headers` for the next hop.
    pub(crate) fn continue_in(headers: &mut HeaderMap) -> Self {
        let incoming = headers
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse);
        let mut rng = rand::rng();
        let span_id = format!("{:016x}", rng.random_range(1..=u64::MAX));
        let ctx = match incoming {
            Some((trace_id, parent, flags)) => Self {
                trace_id,
                span_id,
                parent_id: Some(parent),
                flags,
            },
            None => Self {
                trace_id: format!("{:032x}", rng.random_range(1..=u128::MAX)),
                span_id,
                parent_id: None,
                flags: "01".into(),
            },
        };
        if let Ok(v) = http::HeaderValue::from_str(&ctx.header()) {
            headers.insert(TRACEPARENT, v);
        }
        ctx
    }

    fn header(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.span_id, self.flags)
    }
}

/// `version-traceid-parentid-flags`, lowercase hex, ids not all zero.
fn parse(v: &str) -> Option<(String, String, String)> {
    let mut parts = v.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !hex(version, 2) || version == "ff" || !hex(trace, 32) || !hex(parent, 16) || !hex(flags, 2)
    {
        return None;
    }
    // Version 00 has exactly four fields; later versions may add more.
    if version == "00" && parts.next().is_some() {
        return None;
    }
    if trace.bytes().all(|b| b == b'0') || parent.bytes().all(|b| b == b'0') {
        return None;
    }
    Some((trace.into(), parent.into(), flags.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continues_a_trace_with_a_new_span() {
        let mut h = HeaderMap::new();
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        h.insert(TRACEPARENT, parent.parse().expect("value"));
        let ctx = TraceContext::continue_in(&mut h);
        assert_eq!(ctx.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ctx.parent_id.as_deref(), Some("00f067aa0ba902b7"));
        let sent = h.get(TRACEPARENT).expect("header").to_str().expect("ascii");
        assert!(sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(sent.ends_with("-01"));
        assert_ne!(sent, parent);
    }

    #[test]
    fn starts_a_trace_when_there_is_none_or_it_is_malformed() {
        for bad in [
            None,
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            Some("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
            Some("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("garbage"),
        ] {
            let mut h = HeaderMap::new();
            if let Some(b) = bad {
                h.insert(TRACEPARENT, b.parse().expect("value"));
            }
            let ctx = TraceContext::continue_in(&mut h);
            assert!(ctx.parent_id.is_none(), "{bad:?}");
            assert_eq!(ctx.trace_id.len(), 32);
            assert!(parse(h.get(TRACEPARENT).expect("set").to_str().expect("ascii")).is_some());
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
            proptest::prop_assert!(parse(&sent).is_some());
            proptest::prop_assert_eq!(ctx.trace_id.len(), 32);
        }
    }
}
