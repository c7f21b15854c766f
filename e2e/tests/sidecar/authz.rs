//! Inbound authorization: only a mesh certificate gets a connection to the
//! app, and only an allowed identity gets a request through; HTTP slipped
//! in on an opaque connection is served as HTTP, with the real caller's ID,
//! as is HTTP/1.1 between sidecars (ALPN `http/1.1`);
//! plaintext callers (outside the mesh) get what the port's policy says.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meshfed_ca::{KeyAlgorithm, RootCa};
use meshfed_sidecar::{Allow, Inbound, Locality, Plaintext, PortPolicy, SidecarConfig};
use meshfed_trust::{ExpectedIds, TrustDomain};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_without_a_mesh_certificate_or_not_allowed_are_refused() {
    let mesh = Mesh::new();
    let (east, a1) = east_allowing_only_frontend(&mesh).await;
    east.write("api.yaml", &api_manifest(false, &[(a1.addr, "a")]));

    // The allowed caller gets through, and the app learns who it is.
    let frontend = client_sidecar(&east, "a", FRONTEND).await;
    let up = frontend.upstream.expect("upstream");
    until_served_by(&http_client(), up, "east-a1", 1).await;
    let (status, body) = get(&http_client(), up).await.expect("answer");
    assert_eq!(status, 200);
    assert_eq!(body, format!("east-a1 {}", id(FRONTEND)));

    // A mesh identity not on the port's list: 403, saying why.
    let intruder = client_sidecar(&east, "a", "/ns/web/sa/intruder").await;
    let up = intruder.upstream.expect("upstream");
    let resp = http_client()
        .get(format!("http://{up}/").parse().expect("uri"))
        .await
        .expect("answer");
    assert_eq!(resp.status(), 403);
    assert_eq!(
        resp.headers()
            .get(meshfed_sidecar::ERROR_HEADER)
            .map(|v| v.as_bytes()),
        Some(&b"forbidden"[..])
    );

    // No client certificate at all: the handshake fails, nothing reaches the app.
    let no_cert = meshfed_trust::bootstrap_client_config(
        creds(&east.ca, FRONTEND),
        ExpectedIds::one(id(API)),
    );
    assert!(
        talk(no_cert, a1.addr).await.is_err(),
        "a caller without a certificate got through"
    );

    // A certificate of another mesh (same trust domain name, other root).
    let other_root = RootCa::generate(
        &TrustDomain::new(TD).expect("td"),
        KeyAlgorithm::EcdsaP256,
        Duration::from_secs(3600),
    )
    .expect("root");
    let other_ca = other_root
        .issue_cluster("east", Duration::from_secs(3600), Vec::new())
        .expect("ca");
    let mut foreign =
        meshfed_trust::client_config(creds(&other_ca, FRONTEND), ExpectedIds::one(id(API)));
    // It cannot verify our server either; skip to what the server does.
    foreign
        .dangerous()
        .set_certificate_verifier(Arc::new(AcceptAnyServer));
    assert!(
        talk(foreign, a1.addr).await.is_err(),
        "a foreign mesh got through"
    );

    // Plain bytes: no TLS, no app.
    let mut tcp = TcpStream::connect(a1.addr).await.expect("connect");
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: api\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert!(!String::from_utf8_lossy(&buf[..n]).contains("east-a1"));

    // A refusal is counted as the connection closes: give it a moment.
    const REFUSED: &str = "meshfed_sidecar_inbound_refused_total{port=";
    let metrics = metrics_when(|| a1.metrics(), |m| metric(m, REFUSED) >= 4.0).await;
    assert!(metric(&metrics, REFUSED) >= 4.0, "{metrics}");
    assert!(metrics.contains("reason=\"forbidden\""), "{metrics}");
    assert!(metrics.contains("reason=\"handshake\""), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_on_an_opaque_connection_still_carries_the_real_caller_id() {
    let mesh = Mesh::new();
    let east = Cluster::start(&mesh, "east").await;
    let a1 = Endpoint::start(&east, "east-a1", "127.0.0.1:0".parse().expect("addr")).await;
    // A real mesh certificate, opening an opaque (not HTTP/2) connection
    // and writing HTTP/1 that claims to come from someone else.
    let mut config =
        meshfed_trust::client_config(creds(&east.ca, FRONTEND), ExpectedIds::one(id(API)));
    config.alpn_protocols.clear();
    let spoof = format!(
        "GET / HTTP/1.1\r\nhost: api\r\n{}: {}\r\n\r\n",
        "meshfed-client-id",
        id("/ns/shop/sa/admin")
    );
    // Served as HTTP: the app learns who really called.
    let answer = talk_bytes(config.clone(), a1.addr, spoof.as_bytes())
        .await
        .expect("answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.ends_with(&format!("east-a1 {}", id(FRONTEND))),
        "{answer}"
    );
    // Other bytes on an opaque connection still reach the app (it answers
    // them with its own HTTP error).
    let answer = talk_bytes(config, a1.addr, b"hello\r\n\r\n").await;
    assert!(
        answer
            .as_deref()
            .is_ok_and(|a| a.starts_with("HTTP/1.1 400")),
        "{answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_between_sidecars_is_served_with_the_caller_id_or_refused_with_403() {
    let mesh = Mesh::new();
    let (east, a1) = east_allowing_only_frontend(&mesh).await;
    // What a client sidecar sends for an HTTP/1.1 app (ALPN http/1.1).
    let http1 = |path: &str| {
        let mut config =
            meshfed_trust::client_config(creds(&east.ca, path), ExpectedIds::one(id(API)));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config
    };
    let request = format!(
        "GET / HTTP/1.1\r\nhost: api\r\n{}: {}\r\n\r\n",
        "meshfed-client-id",
        id("/ns/shop/sa/admin")
    );
    // Allowed: the app answers, told who really called.
    let answer = talk_bytes(http1(FRONTEND), a1.addr, request.as_bytes())
        .await
        .expect("answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.ends_with(&format!("east-a1 {}", id(FRONTEND))),
        "{answer}"
    );
    // Not on the port's list: an answer saying why, not a closed connection.
    let answer = talk_bytes(http1("/ns/web/sa/intruder"), a1.addr, request.as_bytes())
        .await
        .expect("answer");
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("meshfed-error: forbidden"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_callers_get_what_the_port_policy_says() {
    let mesh = Mesh::new();
    let east = Cluster::start(&mesh, "east").await;
    let app = App::start("east-a1").await;
    // One app behind three explicit ports: strict (the default), made
    // permissive, and permissive with an allow-list.
    let ports = [free_port(), free_port(), free_port()];
    let [strict, open, listed] = ports;
    let allows = [Allow::Mesh, Allow::Mesh, Allow::Only(vec![id(FRONTEND)])];
    let mut config = SidecarConfig {
        locality: Locality {
            cluster: "east".into(),
            ..Locality::default()
        },
        inbound: ports
            .iter()
            .zip(allows)
            .map(|(port, allow)| Inbound {
                listen: SocketAddr::from(([127, 0, 0, 1], *port)),
                app: app.addr,
                allow,
            })
            .collect(),
        ..SidecarConfig::default()
    };
    let permissive = |port| PortPolicy {
        port,
        policy: Plaintext::Permissive,
    };
    config
        .apply_port_policies(vec![permissive(open), permissive(listed)])
        .expect("policies");
    let sidecar = Running::start(config, creds(&east.ca, API), &source(&east)).await;
    let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let spoof = format!(
        "GET / HTTP/1.1\r\nhost: api\r\n{}: {}\r\nconnection: close\r\n\r\n",
        "meshfed-client-id",
        id("/ns/shop/sa/admin")
    );

    // Permissive: HTTP is served, and the ID the caller wrote is dropped.
    let answer = plain(at(open), spoof.as_bytes()).await.expect("answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("east-a1 none"), "{answer}");
    // Other bytes are copied to the app (it answers with its own 400).
    let answer = plain(at(open), b"hello\r\n\r\n").await.expect("answer");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // Strict, and an allow-list (which no plaintext caller is on): closed.
    for port in [strict, listed] {
        let answer = plain(at(port), spoof.as_bytes()).await;
        assert!(
            answer.as_deref().map_or(true, |a| !a.contains("east-a1")),
            "port {port} served plaintext: {answer:?}"
        );
    }

    let line = |port: u16, policy: &str, outcome: &str| {
        format!(
            "meshfed_sidecar_inbound_plaintext_total{{port=\"{port}\",policy=\"{policy}\",outcome=\"{outcome}\"}}"
        )
    };
    let want = [
        (line(open, "permissive", "served"), 2.0),
        (line(strict, "strict", "refused"), 1.0),
        (line(listed, "permissive", "refused"), 1.0),
        (
            format!(
                "meshfed_sidecar_inbound_refused_total{{port=\"{strict}\",reason=\"plaintext\"}}"
            ),
            1.0,
        ),
    ];
    let metrics = metrics_when(
        || sidecar.metrics(),
        |m| want.iter().all(|(l, n)| metric(m, l) == *n),
    )
    .await;
    for (l, n) in &want {
        assert_eq!(metric(&metrics, l), *n, "{l} in\n{metrics}");
    }
}

/// A port free on loopback now (to name it in a policy before binding).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Sends `bytes` in plaintext and reads until the other side closes;
/// `Err` when it resets or says nothing in time.
async fn plain(addr: SocketAddr, bytes: &[u8]) -> std::io::Result<String> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(bytes).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer))
        .await
        .map_err(|_| std::io::Error::other("no answer"))??;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// A sidecar's metrics once `ready` holds of them, or after a second.
async fn metrics_when(metrics: impl Fn() -> String, ready: impl Fn(&str) -> bool) -> String {
    let mut m = metrics();
    for _ in 0..50 {
        if ready(&m) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        m = metrics();
    }
    m
}

/// Connects with `config` and asks for `/` over HTTP/2-less plain bytes;
/// `Err` when the server refused the handshake or closed without answering.
async fn talk(config: rustls::ClientConfig, addr: std::net::SocketAddr) -> std::io::Result<String> {
    talk_bytes(config, addr, b"hello\n").await
}

/// Connects with `config` (no ALPN: an opaque connection), sends `bytes`
/// and returns the first answer.
async fn talk_bytes(
    config: rustls::ClientConfig,
    addr: std::net::SocketAddr,
    bytes: &[u8],
) -> std::io::Result<String> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("api.shop.80.svc.meshfed.local").expect("name");
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    // TLS 1.3: a refused client certificate shows on the first read.
    tls.write_all(bytes).await?;
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
        .await
        .map_err(|_| std::io::Error::other("no answer"))??;
    if n == 0 {
        return Err(std::io::Error::other("closed"));
    }
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// East, and an endpoint of api there whose port only the frontend may call.
async fn east_allowing_only_frontend(mesh: &Mesh) -> (Cluster, Endpoint) {
    let east = Cluster::start(mesh, "east").await;
    let a1 = Endpoint::start_allowing(
        &east,
        "east-a1",
        "127.0.0.1:0".parse().expect("addr"),
        Allow::Only(vec![id(FRONTEND)]),
    )
    .await;
    (east, a1)
}

/// Accepts any server certificate (the test is about what the server accepts).
#[derive(Debug)]
struct AcceptAnyServer;

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &rustls_pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &rustls_pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        meshfed_trust::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
