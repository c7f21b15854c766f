//! The transcript and the stand-in API server that plays it.

use crate::prelude::*;

/// One request meshctl must make, and the API server's answer to it.
#[derive(Debug)]
pub struct Exchange {
    pub method: Method,
    /// Path and query, exactly as sent.
    pub uri: String,
    pub content_type: Option<&'static str>,
    /// The request body; `None` for an empty one.
    pub body: Option<Value>,
    pub status: StatusCode,
    pub answer: Value,
    /// The answer's `Date` (the API server's clock); now when `None`.
    pub date: Option<SystemTime>,
    /// A plain-text answer instead of `answer` (what a pod serves through
    /// the API server's pod proxy).
    pub text: Option<String>,
}

impl Exchange {
    pub fn new(method: Method, uri: impl Into<String>) -> Self {
        Self {
            method,
            uri: uri.into(),
            content_type: None,
            body: None,
            status: StatusCode::OK,
            answer: Value::Null,
            date: None,
            text: None,
        }
    }

    pub fn get(uri: impl Into<String>) -> Self {
        Self::new(Method::GET, uri)
    }

    /// A server-side apply of `object`.
    pub fn apply(uri: impl Into<String>, object: Value) -> Self {
        Self {
            content_type: Some(APPLY),
            body: Some(object),
            ..Self::new(Method::PATCH, uri)
        }
    }

    pub fn merge(uri: impl Into<String>, patch: Value) -> Self {
        Self {
            content_type: Some(MERGE),
            body: Some(patch),
            ..Self::new(Method::PATCH, uri)
        }
    }

    /// A DELETE with default DeleteOptions.
    pub fn delete(uri: impl Into<String>) -> Self {
        Self {
            content_type: Some(JSON),
            body: Some(json!({})),
            ..Self::new(Method::DELETE, uri)
        }
    }

    pub fn answers(self, answer: Value) -> Self {
        Self { answer, ..self }
    }

    /// Answers `text` as `text/plain`, as a pod's port does through the proxy.
    pub fn answers_text(self, text: &str) -> Self {
        Self {
            text: Some(text.to_owned()),
            ..self
        }
    }

    pub fn fails(self, status: StatusCode, answer: Value) -> Self {
        Self {
            status,
            answer,
            ..self
        }
    }

    /// 404 for `name` of `resource` (`configmaps`, `links.meshfed.io`).
    pub fn not_found(self, resource: &str, name: &str) -> Self {
        let (kind, group) = resource.split_once('.').unwrap_or((resource, ""));
        let mut details = json!({ "name": name, "kind": kind });
        if !group.is_empty() {
            details["group"] = json!(group);
        }
        let status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("{resource} \"{name}\" not found"), "reason": "NotFound",
            "details": details, "code": 404,
        });
        self.fails(StatusCode::NOT_FOUND, status)
    }

    pub fn dated(self, date: SystemTime) -> Self {
        Self {
            date: Some(date),
            ..self
        }
    }

    pub fn describe(&self) -> String {
        describe(&self.method, &self.uri, self.content_type)
    }

    /// Why `got` is not this exchange's request, if it is not.
    pub fn mismatch(&self, got: &Seen) -> Option<String> {
        if self.method == got.method
            && self.uri == got.uri
            && self.content_type == got.content_type.as_deref()
            && self.body == got.body
        {
            return None;
        }
        let mut why = format!(
            "expected {}\n    got      {}",
            self.describe(),
            got.describe()
        );
        if self.body != got.body {
            let (want, have) = (show(self.body.as_ref()), show(got.body.as_ref()));
            match (&self.body, &got.body) {
                (Some(w), Some(g)) => {
                    let at = difference("", w, g).unwrap_or_default();
                    why.push_str(&format!("\n    body differs at {at}\n    got body {have}"));
                }
                _ => why.push_str(&format!(
                    "\n    expected body {want}\n    got body      {have}"
                )),
            }
        }
        Some(why)
    }

    pub fn response(&self) -> Response<Body> {
        let date = self.date.unwrap_or_else(SystemTime::now);
        if let Some(text) = &self.text {
            return Response::builder()
                .status(self.status)
                .header(CONTENT_TYPE, "text/plain; version=0.0.4")
                .header(DATE, httpdate::fmt_http_date(date))
                .body(Body::from(text.clone().into_bytes()))
                .expect("a valid response");
        }
        Response::builder()
            .status(self.status)
            .header(CONTENT_TYPE, JSON)
            // Like any Go net/http server, the API server dates every answer.
            .header(DATE, httpdate::fmt_http_date(date))
            .body(Body::from(
                serde_json::to_vec(&self.answer).expect("answers are JSON"),
            ))
            .expect("a valid response")
    }
}

/// A request as the stand-in received it.
#[derive(Debug)]
pub struct Seen {
    pub method: Method,
    pub uri: String,
    pub content_type: Option<String>,
    pub body: Option<Value>,
}

impl Seen {
    pub async fn read(req: Request<Body>) -> Self {
        let method = req.method().clone();
        let uri = req
            .uri()
            .path_and_query()
            .map_or_else(String::new, |pq| pq.as_str().to_owned());
        let content_type = req
            .headers()
            .get(CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let body = match req.into_body().collect_bytes().await {
            Ok(b) if b.is_empty() => None,
            Ok(b) => Some(
                serde_json::from_slice(&b)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&b).into_owned())),
            ),
            Err(e) => Some(Value::String(format!("<unreadable body: {e}>"))),
        };
        Self {
            method,
            uri,
            content_type,
            body,
        }
    }

    pub fn describe(&self) -> String {
        describe(&self.method, &self.uri, self.content_type.as_deref())
    }
}

pub fn describe(method: &Method, uri: &str, content_type: Option<&str>) -> String {
    match content_type {
        Some(ct) => format!("{method} {uri} ({ct})"),
        None => format!("{method} {uri}"),
    }
}

pub fn show(body: Option<&Value>) -> String {
    body.map_or_else(|| "(none)".to_owned(), Value::to_string)
}

/// The first place (a JSON pointer) where `got` differs from `want`.
pub fn difference(at: &str, want: &Value, got: &Value) -> Option<String> {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => w.keys().chain(g.keys()).find_map(|k| {
            let at = format!("{at}/{k}");
            match (w.get(k), g.get(k)) {
                (Some(w), Some(g)) => difference(&at, w, g),
                (w, g) => Some(format!("{at}: expected {}, got {}", show(w), show(g))),
            }
        }),
        (Value::Array(w), Value::Array(g)) if w.len() == g.len() => w
            .iter()
            .zip(g)
            .enumerate()
            .find_map(|(i, (w, g))| difference(&format!("{at}/{i}"), w, g)),
        _ if want == got => None,
        _ => Some(format!("{at}: expected {want}, got {got}")),
    }
}

#[derive(Debug, Default)]
pub struct Log {
    /// How many exchanges were played.
    pub served: usize,
    pub mismatches: Vec<String>,
}

/// Plays one transcript to one client.
#[derive(Debug)]
pub struct ApiServer {
    pub expected: Vec<String>,
    pub log: Arc<Mutex<Log>>,
}

impl ApiServer {
    pub fn start(transcript: Vec<Exchange>) -> (kube::Client, Self) {
        let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let expected = transcript.iter().map(Exchange::describe).collect();
        let log = Arc::<Mutex<Log>>::default();
        let shared = Arc::clone(&log);
        tokio::spawn(async move {
            let mut n = 0;
            while let Some((req, send)) = handle.next_request().await {
                n += 1;
                let got = Seen::read(req).await;
                // Logged before answering, so the caller's view is complete once its call returns.
                let response = {
                    let mut log = shared.lock().expect("log lock");
                    let why = match transcript.get(log.served) {
                        Some(want) => want.mismatch(&got),
                        None => Some(format!(
                            "the transcript is over\n    got      {}",
                            got.describe()
                        )),
                    };
                    match why {
                        None => {
                            log.served += 1;
                            transcript[log.served - 1].response()
                        }
                        Some(why) => {
                            log.mismatches.push(format!("request {n}: {why}"));
                            server_error(&why)
                        }
                    }
                };
                send.send_response(response);
            }
        });
        (
            kube::Client::new(service, "default"),
            Self { expected, log },
        )
    }

    /// Every exchange played, in order, and no other request made.
    pub fn assert_done(&self) {
        let log = self.log.lock().expect("log lock");
        let mut problems = log.mismatches.clone();
        if log.served < self.expected.len() {
            problems.push(format!(
                "never asked (exchange {} on):\n    {}",
                log.served + 1,
                self.expected[log.served..].join("\n    ")
            ));
        }
        assert!(
            problems.is_empty(),
            "the API server saw another conversation than the transcript:\n  {}",
            problems.join("\n  ")
        );
    }
}

pub fn server_error(why: &str) -> Response<Body> {
    let status = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("not in the transcript: {why}"), "reason": "InternalError", "code": 500,
    });
    Response::builder()
        .status(StatusCode::INTERNAL_SERVER_ERROR)
        .header(CONTENT_TYPE, JSON)
        .body(Body::from(serde_json::to_vec(&status).expect("json")))
        .expect("a valid response")
}

pub fn kube_cluster(client: kube::Client, context: &str) -> Cluster {
    Cluster::Kube(stand_in(client, context))
}

/// The cluster of `context` behind a stand-in's client.
pub fn stand_in(client: kube::Client, context: &str) -> KubeCluster {
    KubeCluster::new(client, context, server_of(context))
}

/// The API server URL messages name for a stand-in's `context`; never dialled.
pub fn server_of(context: &str) -> String {
    format!("https://{context}.k8s.test:6443")
}

/// The cluster of kubeconfig context `context` (the current one) whose API
/// server URL is a loopback port nothing listens on; and that URL.
pub async fn unreachable(context: &str) -> (KubeCluster, String) {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
        probe.local_addr().expect("bound").port()
    };
    let url = format!("https://127.0.0.1:{port}");
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&format!(
        "apiVersion: v1
kind: Config
current-context: {context}
clusters:
- name: {context}
  cluster:
    server: {url}
contexts:
- name: {context}
  context:
    cluster: {context}
    user: ci
users:
- name: ci
  user:
    token: not-a-real-token
"
    ))
    .expect("a valid kubeconfig");
    let cluster = KubeCluster::from_kubeconfig(kubeconfig, None)
        .await
        .expect("a client for the kubeconfig");
    (cluster, url)
}

/// The API's answer to a refused request, as the API server writes it.
pub fn refusal(code: u16, reason: &str, message: &str, details: Value) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "details": details, "code": code,
    })
}

/// `err` as a person reads it — the whole chain, as meshctl prints it —
/// holding every one of `pieces` and no Rust debug dump; returns the text.
pub fn assert_reads(err: &anyhow::Error, pieces: &[&str]) -> String {
    let text = format!("{err:#}");
    for piece in pieces {
        assert!(text.contains(piece), "{piece:?} is missing from:\n{text}");
    }
    for dump in [format!("{err:#}"), format!("{err:?}")] {
        for leak in ["Status {", "ErrorResponse {", "ApiError", "Some(", "code: "] {
            assert!(!dump.contains(leak), "{leak:?} leaked into:\n{dump}");
        }
    }
    text
}

pub async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(DEADLINE, f)
        .await
        .expect("the command finished in time (is a request left unanswered?)")
}

pub fn args<T: clap::Args>(argv: &[&str]) -> T {
    meshctl::parse_args(argv).expect("valid flags")
}
