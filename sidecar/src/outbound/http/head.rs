//! The request's head between the app and the other sidecar: hop-by-hop
//! headers stripped both ways, the mesh's own headers only from the mesh,
//! and an HTTP/1.1 request given the absolute URI every hop can route.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Response, Uri, Version};

use crate::body::Body;
use crate::headers::name::{CLIENT_ID, ORIG_PROTO};

/// Hop-by-hop headers never cross a proxy.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
];

pub(super) fn strip(headers: &mut HeaderMap) {
    if let Some(listed) = headers.get(header::CONNECTION).cloned()
        && let Ok(listed) = listed.to_str()
    {
        for name in listed.split(',') {
            if let Ok(name) = HeaderName::from_bytes(name.trim().as_bytes()) {
                headers.remove(name);
            }
        }
    }
    for h in HOP_BY_HOP {
        headers.remove(*h);
    }
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
    headers.remove(CLIENT_ID);
    headers.remove(ORIG_PROTO);
    let te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    strip(headers);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if from_h1 {
        headers.insert(ORIG_PROTO, HeaderValue::from_static("HTTP/1.1"));
        let authority = match headers.get(header::HOST) {
            Some(host) => Authority::try_from(host.as_bytes()),
            None => Authority::try_from(format!("{name}.{namespace}")),
        };
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(authority.map_err(|e| format!("request target: {e}"))?);
        uri.path_and_query
            .get_or_insert(PathAndQuery::from_static("/"));
        parts.uri = Uri::from_parts(uri).map_err(|e| format!("request target: {e}"))?;
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
