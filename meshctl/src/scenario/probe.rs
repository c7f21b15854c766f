//! One-shot connections from a pod that is not in the mesh — plain HTTP, or
//! TLS with a chosen server name and no client certificate — and what they
//! got; and reading a process's Prometheus metrics.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::dev::Net;

const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// What a probe got: `Ok(status line)` for an HTTP answer, `Err(why not)`.
pub async fn connect(net: &Net, addr: SocketAddr, sni: Option<&str>) -> Result<String, String> {
    let attempt = async {
        let conn = net
            .connect(addr)
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        match sni {
            None => request(conn).await,
            Some(name) => {
                let server = ServerName::try_from(name.to_owned())
                    .map_err(|e| format!("server name {name:?}: {e}"))?;
                let tls = tokio_rustls::TlsConnector::from(Arc::new(no_cert_client()))
                    .connect(server, conn)
                    .await
                    .map_err(|e| format!("TLS handshake with {addr} as {name}: {e}"))?;
                request(tls).await
            }
        }
    };
    match tokio::time::timeout(PROBE_TIMEOUT, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("{addr}: nothing within {PROBE_TIMEOUT:?}")),
    }
}

/// `GET /` and the status line of the answer.
async fn request<S: AsyncRead + AsyncWrite + Unpin>(mut conn: S) -> Result<String, String> {
    conn.write_all(b"GET / HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| format!("sending a request: {e}"))?;
    let mut head = Vec::new();
    (&mut conn)
        .take(512)
        .read_to_end(&mut head)
        .await
        .map_err(|e| format!("reading the answer: {e}"))?;
    let text = String::from_utf8_lossy(&head);
    let line = text.lines().next().unwrap_or_default().trim().to_owned();
    if line.is_empty() {
        return Err("the connection closed without an answer".into());
    }
    Ok(line)
}

/// Whether an HTTP status line is a 2xx.
pub fn success(status_line: &str) -> bool {
    status_line
        .split_whitespace()
        .nth(1)
        .is_some_and(|code| code.starts_with('2'))
}

/// A TLS client that presents no certificate and accepts any server's: a
/// pod outside the mesh that does not care whom it talks to.
fn no_cert_client() -> rustls::ClientConfig {
    let provider = meshfed_trust::provider();
    rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_no_client_auth()
}

#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One sample of Prometheus text: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the Prometheus text format (what every admin `/metrics` serves).
/// Lines that are not samples are skipped.
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(sample)
        .collect()
}

fn sample(line: &str) -> Option<Sample> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return None,
    };
    let mut labels = BTreeMap::new();
    let rest = if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices();
        let end;
        loop {
            // key
            let mut key = String::new();
            let mut c = chars.next()?;
            if c.1 == '}' {
                end = Some(c.0 + 1);
                break;
            }
            while c.1 != '=' {
                if c.1 != ',' && !c.1.is_whitespace() {
                    key.push(c.1);
                }
                c = chars.next()?;
            }
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                let (_, ch) = chars.next()?;
                match ch {
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    '"' => break,
                    other => value.push(other),
                }
            }
            labels.insert(key, value);
            let mut peek = chars.clone();
            match peek.next()? {
                (i, '}') => {
                    end = Some(i + 1);
                    break;
                }
                (_, ',') => {
                    chars.next();
                    if let Some((i, '}')) = chars.clone().next() {
                        end = Some(i + 1);
                        break;
                    }
                }
                _ => return None,
            }
        }
        &body[end?..]
    } else {
        rest
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// The sum of the samples named `name` whose labels include `labels`.
pub fn sum(samples: &[Sample], name: &str, labels: &BTreeMap<String, String>) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| s.value)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_is_read_with_labels_and_escapes() {
        let text = "# HELP x y\n# TYPE a counter\n\
            a_total{direction=\"outbound\",cluster=\"west\",error=\"a \\\"b\\\", c\"} 3\n\
            a_total{direction=\"outbound\",cluster=\"east\"} 4\n\
            up 1\nempty{} 2\ntrailing{k=\"v\",} 5\n";
        let s = parse_metrics(text);
        assert_eq!(s.len(), 5, "{s:?}");
        assert_eq!(s[0].labels["error"], "a \"b\", c");
        let mut want = BTreeMap::new();
        assert_eq!(sum(&s, "a_total", &want), 7.0);
        want.insert("cluster".into(), "west".into());
        assert_eq!(sum(&s, "a_total", &want), 3.0);
        assert_eq!(sum(&s, "up", &BTreeMap::new()), 1.0);
        assert_eq!(s[4].labels["k"], "v");
        assert_eq!(s[4].value, 5.0);
    }

    #[test]
    fn status_lines_are_judged_by_their_code() {
        assert!(success("HTTP/1.1 200 OK"));
        assert!(!success("HTTP/1.1 403 Forbidden"));
        assert!(!success("garbage"));
    }
}
