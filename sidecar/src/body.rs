//! One body type for everything the sidecar forwards, and the answers it
//! makes itself.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

use crate::headers::name::ERROR_HEADER;
use crate::reason::Reason;

/// Errors inside bodies.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request or response body of any origin.
pub(crate) type Body = BoxBody<Bytes, BoxError>;

/// A body of known bytes.
pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed()
}

/// Any body, boxed.
pub(crate) fn boxed<B>(body: B) -> Body
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

/// The sidecar's own answer: the status for `reason`, the reason in a
/// header, and a line a person can read.
pub(crate) fn error_response(reason: Reason, detail: &str) -> http::Response<Body> {
    let mut resp = http::Response::new(full(format!("meshfed: {}: {detail}\n", reason.as_str())));
    *resp.status_mut() = reason.status();
    resp.headers_mut().insert(
        ERROR_HEADER,
        http::HeaderValue::from_static(reason.as_str()),
    );
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
