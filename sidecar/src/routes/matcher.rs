//! Whether a request matches a rule: its path (exact, or a prefix by whole
//! elements), its headers, its query parameters (the first value of each,
//! percent-decoded) and its method, all of them.

use http::{HeaderName, Method};
use meshfed_api::discovery::path_match;

#[derive(Debug, Default)]
pub(super) struct Matcher {
    exact: bool,
    path: String,
    headers: Vec<(HeaderName, String)>,
    query: Vec<(String, String)>,
    method: Option<Method>,
}

impl Matcher {
    pub(super) fn compile(m: Option<&meshfed_api::discovery::RouteMatch>) -> Self {
        let Some(m) = m else {
            return Self {
                path: "/".into(),
                ..Self::default()
            };
        };
        let path = m.path.as_ref();
        Self {
            exact: path.is_some_and(|p| p.kind() == path_match::Kind::Exact),
            path: path.map_or_else(|| "/".into(), |p| p.value.clone()),
            headers: m
                .headers
                .iter()
                .filter_map(|h| {
                    Some((
                        HeaderName::from_bytes(h.name.as_bytes()).ok()?,
                        h.value.clone(),
                    ))
                })
                .collect(),
            query: m
                .query
                .iter()
                .map(|q| (q.name.clone(), q.value.clone()))
                .collect(),
            method: (!m.method.is_empty())
                .then(|| Method::from_bytes(m.method.as_bytes()).ok())
                .flatten(),
        }
    }

    pub(super) fn is_catch_all(&self) -> bool {
        !self.exact
            && self.path == "/"
            && self.headers.is_empty()
            && self.query.is_empty()
            && self.method.is_none()
    }

    pub(super) fn matches<B>(&self, req: &http::Request<B>) -> bool {
        let uri = req.uri();
        self.path_matches(uri.path())
            && self.method.as_ref().is_none_or(|m| m == req.method())
            && self.headers.iter().all(|(name, want)| {
                req.headers()
                    .get_all(name)
                    .iter()
                    .any(|v| v.as_bytes() == want.as_bytes())
            })
            && (self.query.is_empty() || self.query_matches(uri.query().unwrap_or_default()))
    }

    /// Exact: the whole path. Prefix: element by element, so `/abc`
    /// matches `/abc` and `/abc/def` but not `/abcd`.
    fn path_matches(&self, path: &str) -> bool {
        let path = if path.is_empty() { "/" } else { path };
        if self.exact {
            return path == self.path;
        }
        if self.path == "/" {
            return true;
        }
        path.strip_prefix(self.path.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    /// Each parameter's first value, percent-decoded, is the one compared.
    fn query_matches(&self, query: &str) -> bool {
        self.query.iter().all(|(name, want)| {
            let first = query.split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (decode(k) == *name).then(|| decode(v))
            });
            first.as_deref() == Some(want.as_str())
        })
    }
}

/// Percent-decodes a query component (`+` is a space); bytes that do not
/// decode are kept as they are.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
