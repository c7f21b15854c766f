//! The headers the mesh adds between the app and the sidecars, in one
//! place for both directions.

/// The header a sidecar uses to tell the next one the app spoke HTTP/1.1.
pub const ORIG_PROTO: &str = "meshfed-orig-proto";
/// The header carrying the verified caller identity to the app.
pub const CLIENT_ID: &str = "meshfed-client-id";
/// The header on an answer the sidecar made itself, naming why
/// ([`crate::Reason`]).
pub const ERROR_HEADER: &str = "meshfed-error";

/// The same names as `HeaderName`s, for the request path: a header
/// inserted under a `&str` name that is not a standard one gets its name
/// copied into an allocation of its own; these are static.
pub(crate) mod name {
    use http::HeaderName;

    pub(crate) const ORIG_PROTO: HeaderName = HeaderName::from_static(super::ORIG_PROTO);
    pub(crate) const CLIENT_ID: HeaderName = HeaderName::from_static(super::CLIENT_ID);
    pub(crate) const ERROR_HEADER: HeaderName = HeaderName::from_static(super::ERROR_HEADER);
    pub(crate) const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
}

/// Gives a request an absolute URI, as HTTP/2 carries it (`:scheme`,
/// `:authority`): an origin-form target takes its authority from `Host`,
/// or `fallback` when that is missing or not an authority.
pub(crate) fn absolute_form(
    headers: &http::HeaderMap,
    uri: &mut http::Uri,
    fallback: &'static str,
) {
    use http::uri::{Authority, PathAndQuery, Scheme};
    if uri.authority().is_some() {
        return;
    }
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| Authority::try_from(h.as_bytes()).ok());
    let mut parts = std::mem::take(uri).into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(host.unwrap_or(Authority::from_static(fallback)));
    parts
        .path_and_query
        .get_or_insert(PathAndQuery::from_static("/"));
    *uri = http::Uri::from_parts(parts).unwrap_or_default();
}

/// Puts a request's head in HTTP/1.1's origin form: the request line
/// carries the path (`/` when there is none), and the authority goes in
/// `Host` unless the request has one.
pub(crate) fn origin_form(headers: &mut http::HeaderMap, uri: &mut http::Uri) {
    use http::header::{HOST, HeaderValue};
    let Some(authority) = uri.authority() else {
        return;
    };
    if !headers.contains_key(HOST)
        && let Ok(v) = HeaderValue::from_str(authority.as_str())
    {
        headers.insert(HOST, v);
    }
    let path = uri.path_and_query().cloned();
    *uri = http::Uri::from(path.unwrap_or(http::uri::PathAndQuery::from_static("/")));
}
