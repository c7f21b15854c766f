//! The request's head between the app and the other sidecar: hop-by-hop
//! headers stripped both ways, the mesh's own headers only from the mesh,
//! and an HTTP/1.1 request given a valid `Host` (the endpoint layer makes
//! the URI absolute only for a connection that carries it as HTTP/2).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, Version};

use crate::body::Body;
use crate::headers::name::{CLIENT_ID, ORIG_PROTO};

/// Hop-by-hop headers never cross a proxy. Names, not strings: removing
/// by a string parses it into a name first, twice per request each.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
];

/// Whether `headers` has any of `names`: one pass over the names the
/// head has (a few, compared by their kind for the standard ones), where
/// removing each of `names` would hash every one of them.
fn mentions(headers: &HeaderMap, names: &[HeaderName]) -> bool {
    headers.keys().any(|k| names.contains(k))
}

/// The mesh's own headers: only the receiving sidecar sets them.
const MESH_ONLY: [HeaderName; 2] = [CLIENT_ID, ORIG_PROTO];

pub(super) fn strip(headers: &mut HeaderMap) {
    if mentions(headers, &HOP_BY_HOP) {
        remove_hop_by_hop(headers);
    }
}

/// Removes the hop-by-hop headers and those `Connection` lists.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    if let Some(listed) = headers.get(header::CONNECTION).cloned()
        && let Ok(listed) = listed.to_str()
    {
        for name in listed.split(',').map(str::trim) {
            // The usual options name no header of their own, or one
            // removed below anyway.
            if name.eq_ignore_ascii_case("keep-alive") || name.eq_ignore_ascii_case("close") {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
                headers.remove(name);
            }
        }
    }
    for h in &HOP_BY_HOP {
        headers.remove(h);
    }
}

/// RFC 9110's `Host`: `uri-host [ ":" port ]`, the host a reg-name
/// (RFC 3986: unreserved, percent-encoded, sub-delims), an IPv4 address
/// (a reg-name's characters) or a bracketed IP literal. Checked where it
/// lies, without a copy.
fn valid_host(v: &[u8]) -> bool {
    let (host, port) = match v.first() {
        Some(b'[') => match v.iter().position(|b| *b == b']') {
            Some(end) => {
                let literal = &v[1..end];
                let ok = !literal.is_empty()
                    && literal
                        .iter()
                        .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'));
                if !ok {
                    return false;
                }
                (&v[..=end], &v[end + 1..])
            }
            None => return false,
        },
        _ => {
            let end = v.iter().position(|b| *b == b':').unwrap_or(v.len());
            let name = &v[..end];
            if name.is_empty() || !reg_name(name) {
                return false;
            }
            (name, &v[end..])
        }
    };
    debug_assert!(!host.is_empty());
    match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    }
}

/// Unreserved characters, sub-delims and `%` with two hex digits.
fn reg_name(name: &[u8]) -> bool {
    let mut i = 0;
    while let Some(b) = name.get(i) {
        let ok = match b {
            b'%' => {
                let hex = name.get(i + 1..i + 3);
                i += 2;
                hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
            }
            b if b.is_ascii_alphanumeric() => true,
            b'-' | b'.' | b'_' | b'~' => true,
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' => true,
            _ => false,
        };
        if !ok {
            return false;
        }
        i += 1;
    }
    true
}

/// Turns the app's request into what goes to the other sidecar (the
/// version stays the app's: the endpoint layer carries it as such).
pub(super) fn prepare(
    mut parts: http::request::Parts,
    from_h1: bool,
    name: &str,
    namespace: &str,
) -> Result<http::request::Parts, String> {
    let headers = &mut parts.headers;
    // Only the receiving sidecar may say who called.
    if mentions(headers, &MESH_ONLY) {
        headers.remove(CLIENT_ID);
        headers.remove(ORIG_PROTO);
    }
    if mentions(headers, &HOP_BY_HOP) {
        let te_trailers = headers
            .get(header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
        remove_hop_by_hop(headers);
        if te_trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
    if from_h1 {
        match headers.get(header::HOST) {
            Some(host) if !valid_host(host.as_bytes()) => {
                return Err(format!("request target: invalid Host {host:?}"));
            }
            Some(_) => {}
            // An absolute-form target names its authority; the endpoint
            // layer moves it to `Host`.
            None if parts.uri.authority().is_some() => {}
            None => {
                let host = HeaderValue::try_from(format!("{name}.{namespace}"))
                    .map_err(|e| format!("request target: {e}"))?;
                headers.insert(header::HOST, host);
            }
        }
    }
    parts.version = if from_h1 {
        Version::HTTP_11
    } else {
        Version::HTTP_2
    };
    Ok(parts)
}

/// The answer as the app's protocol carries it.
pub(super) fn downgrade(resp: Response<Body>, to_h1: bool) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    if to_h1 {
        parts.version = Version::HTTP_11;
    }
    strip(&mut parts.headers);
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_is_checked_as_rfc_9110_writes_it() {
        for ok in [
            "api.shop",
            "api.shop:8080",
            "10.0.0.1:80",
            "[::1]:80",
            "[fe80::1]",
            "a%20b",
            "api.shop:",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            ":80",
            "api shop",
            "a@b",
            "api.shop:80x",
            "api.shop:123456",
            "[::1",
            "[]",
            "a%2",
            "a%zz",
            "api/shop",
            "[::1]x",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad}");
        }
    }

    fn app_request(host: Option<&str>, target: &str) -> http::request::Parts {
        let mut req = http::Request::get(target);
        if let Some(h) = host {
            req = req.header(header::HOST, h);
        }
        req.body(()).expect("request").into_parts().0
    }

    #[test]
    fn an_http1_request_keeps_its_target_and_gets_a_host() {
        let parts = prepare(
            app_request(Some("api.shop:8080"), "/a?b=1"),
            true,
            "api",
            "shop",
        )
        .expect("valid");
        assert_eq!(parts.uri, "/a?b=1");
        assert_eq!(parts.headers[header::HOST], "api.shop:8080");
        assert_eq!(parts.version, Version::HTTP_11);

        // No Host (HTTP/1.0): the service's name.
        let parts = prepare(app_request(None, "/"), true, "api", "shop").expect("valid");
        assert_eq!(parts.headers[header::HOST], "api.shop");

        // Absolute form: the endpoint layer moves the authority to `Host`.
        let parts =
            prepare(app_request(None, "http://api.shop/x"), true, "api", "shop").expect("valid");
        assert_eq!(parts.uri, "http://api.shop/x");
        assert!(parts.headers.get(header::HOST).is_none());
    }

    #[test]
    fn an_invalid_host_is_refused() {
        let refused = prepare(app_request(Some("api shop"), "/"), true, "api", "shop");
        assert!(refused.expect_err("refused").contains("invalid Host"));
    }
}
