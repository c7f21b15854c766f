//! The identity service, in-process and as the real `meshfed-identity`
//! binary: issuance over gRPC, refusals with clear statuses and counted
//! metrics, renewal, and TokenReview against a mocked API server.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use meshfed_api::identity::CertifyRequest;
use meshfed_api::identity::identity_server::Identity;
use meshfed_identity::{
    Authenticator, BootstrapTokens, IdentityService, IdentityServiceConfig, TokenReviewer,
};
use meshfed_trust::{
    ClientError, CredentialSource, IdentityClient, IdentityClientConfig, SpiffeId,
};
use prometheus_client::registry::Registry;
use rcgen::{CertificateParams, KeyPair, SanType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::Code;

use meshfed_testkit::pki::{Pki, TD, id, uri};

const API_TOKEN: &str = "api-token-0123456789";
const WEB_TOKEN: &str = "web-token-0123456789";

fn tokens() -> String {
    format!("# test tokens\nshop/api {API_TOKEN}\nshop/web {WEB_TOKEN}\n")
}

fn identity_id() -> SpiffeId {
    id("/ns/meshfed-system/sa/meshfed-identity")
}

fn client(pki: &Pki, addr: SocketAddr, want: &str, token: &str) -> IdentityClient {
    IdentityClient::new(client_config(pki, addr, want, token))
}

fn client_config(pki: &Pki, addr: SocketAddr, want: &str, token: &str) -> IdentityClientConfig {
    IdentityClientConfig {
        addr: addr.to_string(),
        server_id: identity_id(),
        id: id(want),
        credential: CredentialSource::Token(token.into()),
        bundle: pki.ca.bundle().clone(),
        dns_names: Vec::new(),
    }
}

/// The real binary, killed on drop.
struct IdentityProcess {
    child: Child,
    grpc: SocketAddr,
    admin: SocketAddr,
}

impl Drop for IdentityProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = String::new();
    tcp.read_to_string(&mut out).await?;
    Ok(out)
}

async fn start_binary(pki: &Pki, token_file: &Path) -> IdentityProcess {
    let (grpc, admin) = (free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_meshfed-identity"))
        .args(["--ca-dir", pki.ca_dir().to_str().expect("utf8")])
        .args([
            "--auth",
            "bootstrap",
            "--bootstrap-tokens",
            token_file.to_str().expect("utf8"),
        ])
        .args([
            "--listen",
            &grpc.to_string(),
            "--admin-listen",
            &admin.to_string(),
        ])
        .args(["--leaf-ttl", "1h"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn meshfed-identity");
    let proc = IdentityProcess { child, grpc, admin };
    for _ in 0..200 {
        if http_get(admin, "/ready")
            .await
            .is_ok_and(|r| r.starts_with("HTTP/1.1 200"))
        {
            return proc;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("meshfed-identity did not become ready within 10 s");
}

fn metric(text: &str, result: &str) -> u64 {
    let needle = format!("meshfed_identity_certify_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .map_or(0, |v| v.trim().parse().expect("counter value"))
}

#[tokio::test]
async fn binary_issues_a_leaf_openssl_verifies_and_refuses_bad_requests() {
    let pki = Pki::new(TD);
    let tokens_file = pki.dir.path().join("tokens");
    std::fs::write(&tokens_file, tokens()).expect("write tokens");
    let proc = start_binary(&pki, &tokens_file).await;

    let creds = client(&pki, proc.grpc, "/ns/shop/sa/api", API_TOKEN)
        .fetch(&pki.bundle())
        .await
        .expect("issued");
    assert_eq!(creds.id(), &id("/ns/shop/sa/api"));
    let lifetime = creds
        .not_after()
        .duration_since(std::time::SystemTime::now())
        .expect("future");
    assert!(
        lifetime <= Duration::from_secs(3600) && lifetime > Duration::from_secs(3500),
        "{lifetime:?}"
    );

    // The stock OpenSSL CLI agrees the leaf chains to the root through the intermediate.
    let out = tempfile::tempdir().expect("tempdir");
    meshfed_trust::write_certs(&out.path().join("leaf.crt"), &creds.chain()[..1], false)
        .expect("write");
    let ok = openssl_verify(
        &pki.ca_dir().join("root.crt"),
        &pki.ca_dir().join("intermediate.crt"),
        &out.path().join("leaf.crt"),
    );
    assert!(ok.0, "openssl verify failed: {}", ok.1);

    // Wrong token.
    let err = client(
        &pki,
        proc.grpc,
        "/ns/shop/sa/api",
        "not-a-real-token-at-all",
    )
    .fetch(&pki.bundle())
    .await;
    assert!(
        matches!(&err, Err(ClientError::Refused(s)) if s.code() == Code::Unauthenticated),
        "{err:?}"
    );
    // A CSR for another identity than the token proves.
    let err = client(&pki, proc.grpc, "/ns/shop/sa/web", API_TOKEN)
        .fetch(&pki.bundle())
        .await;
    assert!(
        matches!(&err, Err(ClientError::Refused(s)) if s.code() == Code::PermissionDenied),
        "{err:?}"
    );

    let metrics = http_get(proc.admin, "/metrics").await.expect("metrics");
    assert_eq!(metric(&metrics, "issued"), 1, "{metrics}");
    assert_eq!(metric(&metrics, "bad_credential"), 1, "{metrics}");
    assert_eq!(metric(&metrics, "identity_mismatch"), 1, "{metrics}");
    assert!(
        http_get(proc.admin, "/live")
            .await
            .expect("live")
            .starts_with("HTTP/1.1 200")
    );
}

/// Runs `openssl verify`; a missing openssl fails the test loudly (CI installs it).
pub fn openssl_verify(root: &Path, intermediate: &Path, leaf: &Path) -> (bool, String) {
    let out = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(root)
        .arg("-untrusted")
        .arg(intermediate)
        .arg(leaf)
        .output()
        .expect("the openssl CLI must be installed for this test (apt-get install openssl)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && text.contains(": OK"), text)
}

#[tokio::test]
async fn client_refuses_an_identity_service_with_the_wrong_identity() {
    let pki = Pki::new(TD);
    let (addr, _task, _) =
        serve_in_process(&pki, Duration::from_secs(3600), id("/ns/evil/sa/mitm")).await;
    let err = client(&pki, addr, "/ns/shop/sa/api", API_TOKEN)
        .fetch(&pki.bundle())
        .await;
    assert!(matches!(&err, Err(ClientError::Connect { .. })), "{err:?}");
}

/// The service on loopback; its metrics are in the registry returned.
async fn serve_in_process(
    pki: &Pki,
    leaf_ttl: Duration,
    own_id: SpiffeId,
) -> (SocketAddr, tokio::task::JoinHandle<()>, Registry) {
    let (svc, registry) = service(pki, leaf_ttl);
    let (creds, _renew) =
        meshfed_identity::self_credentials(pki.ca.clone(), own_id, Duration::from_secs(3600))
            .expect("own creds");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let _renew = _renew;
        meshfed_identity::serve(
            listener,
            svc,
            creds,
            &IdentityServiceConfig::default(),
            std::future::pending(),
        )
        .await
        .expect("serve");
    });
    (addr, task, registry)
}

#[tokio::test]
async fn client_renews_before_expiry_and_publishes_new_credentials() {
    let pki = Pki::new(TD);
    // Leaves live 3 s, so the client renews after ~2.1 s.
    let (addr, _task, _) = serve_in_process(&pki, Duration::from_secs(3), identity_id()).await;
    let (mut creds, _renewal) = client(&pki, addr, "/ns/shop/sa/api", API_TOKEN)
        .start()
        .await
        .expect("first certificate");
    let first = creds.borrow_and_update().chain()[0].clone();
    tokio::time::timeout(Duration::from_secs(10), creds.changed())
        .await
        .expect("renewed within 10 s")
        .expect("sender alive");
    let second = creds.borrow_and_update().clone();
    assert_ne!(second.chain()[0], first, "a new leaf");
    assert_eq!(second.id(), &id("/ns/shop/sa/api"));
    let a = meshfed_trust::CertInfo::parse(&first).expect("parse");
    let b = meshfed_trust::CertInfo::parse(&second.chain()[0]).expect("parse");
    assert_ne!(a.spki_der, b.spki_der, "every renewal uses a fresh key");
}

fn service(pki: &Pki, leaf_ttl: Duration) -> (IdentityService, Registry) {
    let auth = Authenticator::Bootstrap(BootstrapTokens::parse(&tokens()).expect("tokens"));
    let mut registry = Registry::default();
    let svc = IdentityService::new(
        pki.ca.clone(),
        auth,
        leaf_ttl,
        registry.sub_registry_with_prefix("meshfed_identity"),
    );
    (svc, registry)
}

fn csr(sans: Vec<SanType>) -> Vec<u8> {
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    params
        .serialize_request(&KeyPair::generate().expect("key"))
        .expect("csr")
        .der()
        .to_vec()
}

async fn certify(
    svc: &IdentityService,
    csr_der: Vec<u8>,
    credential: &str,
) -> Result<(), tonic::Status> {
    svc.certify(tonic::Request::new(CertifyRequest {
        csr_der,
        credential: credential.into(),
    }))
    .await
    .map(|_| ())
}

#[tokio::test]
async fn handler_refuses_malformed_oversize_and_overreaching_csrs() {
    let pki = Pki::new(TD);
    let (svc, registry) = service(&pki, Duration::from_secs(3600));
    let api = || uri(&format!("spiffe://{TD}/ns/shop/sa/api"));

    assert!(certify(&svc, csr(vec![api()]), API_TOKEN).await.is_ok());

    let garbage = certify(&svc, b"definitely not DER".to_vec(), API_TOKEN)
        .await
        .expect_err("malformed");
    assert_eq!(garbage.code(), Code::InvalidArgument, "{garbage:?}");

    let mut tampered = csr(vec![api()]);
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01; // breaks the CSR's self-signature
    assert_eq!(
        certify(&svc, tampered, API_TOKEN)
            .await
            .expect_err("bad sig")
            .code(),
        Code::InvalidArgument
    );

    let oversize = certify(
        &svc,
        vec![0u8; meshfed_identity::MAX_CSR_BYTES + 1],
        API_TOKEN,
    )
    .await
    .expect_err("oversize");
    assert_eq!(oversize.code(), Code::ResourceExhausted);
    let long_token = "x".repeat(meshfed_identity::MAX_CREDENTIAL_BYTES + 1);
    assert_eq!(
        certify(&svc, csr(vec![api()]), &long_token)
            .await
            .expect_err("oversize")
            .code(),
        Code::ResourceExhausted
    );

    let extra_dns = vec![api(), SanType::DnsName("api.shop".try_into().expect("ia5"))];
    assert_eq!(
        certify(&svc, csr(extra_dns), API_TOKEN)
            .await
            .expect_err("extra san")
            .code(),
        Code::PermissionDenied
    );
    let other = csr(vec![uri(&format!("spiffe://{TD}/ns/shop/sa/web"))]);
    assert_eq!(
        certify(&svc, other, API_TOKEN)
            .await
            .expect_err("other id")
            .code(),
        Code::PermissionDenied
    );
    let foreign = csr(vec![uri("spiffe://other.example/ns/shop/sa/api")]);
    assert_eq!(
        certify(&svc, foreign, API_TOKEN)
            .await
            .expect_err("other td")
            .code(),
        Code::PermissionDenied
    );
    assert_eq!(
        certify(&svc, csr(vec![api()]), "wrong-token-0123456789")
            .await
            .expect_err("token")
            .code(),
        Code::Unauthenticated
    );

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    assert_eq!(metric(&text, "issued"), 1, "{text}");
    assert_eq!(metric(&text, "malformed_csr"), 2, "{text}");
    assert_eq!(metric(&text, "oversize"), 2, "{text}");
    assert_eq!(metric(&text, "identity_mismatch"), 3, "{text}");
    assert_eq!(metric(&text, "bad_credential"), 1, "{text}");
}

#[tokio::test]
async fn a_serving_certificate_names_only_the_service_of_its_own_service_account() {
    let pki = Pki::new(TD);
    let (svc, registry) = service(&pki, Duration::from_secs(3600));
    let api = || uri(&format!("spiffe://{TD}/ns/shop/sa/api"));
    let dns = |n: &str| SanType::DnsName(n.try_into().expect("ia5"));

    let answer = svc
        .certify(tonic::Request::new(CertifyRequest {
            csr_der: csr(vec![
                api(),
                dns("api.shop.svc"),
                dns("api.shop.svc.cluster.local"),
            ]),
            credential: API_TOKEN.into(),
        }))
        .await
        .expect("issued")
        .into_inner();
    let leaf = meshfed_trust::CertInfo::parse(&answer.cert_chain_der[0]).expect("leaf");
    assert_eq!(leaf.uri_sans, [format!("spiffe://{TD}/ns/shop/sa/api")]);
    assert_eq!(
        leaf.dns_sans,
        ["api.shop.svc", "api.shop.svc.cluster.local"]
    );

    for (sans, why) in [
        (
            vec![api(), dns("web.shop.svc")],
            "another service account's Service",
        ),
        (vec![api(), dns("api.other.svc")], "another namespace"),
        (
            vec![api(), dns("kubernetes.default.svc")],
            "the API server's name",
        ),
        (
            vec![
                api(),
                dns("api.shop.svc"),
                dns("api.shop.svc"),
                dns("api.shop.svc"),
            ],
            "too many names",
        ),
        (vec![dns("api.shop.svc")], "no SPIFFE ID"),
        (
            vec![api(), SanType::IpAddress("10.0.0.1".parse().expect("ip"))],
            "an IP address",
        ),
    ] {
        let err = certify(&svc, csr(sans), API_TOKEN).await.expect_err(why);
        assert_eq!(err.code(), Code::PermissionDenied, "{why}: {err:?}");
    }
    let err = certify(&svc, csr(vec![api(), dns("web.shop.svc")]), API_TOKEN)
        .await
        .expect_err("refused");
    assert_eq!(
        err.message(),
        format!(
            "csr asks for DNS name web.shop.svc, but spiffe://{TD}/ns/shop/sa/api may hold \
             only api.shop.svc and api.shop.svc.cluster.local"
        )
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    assert_eq!(metric(&text, "issued"), 1, "{text}");
    assert_eq!(metric(&text, "identity_mismatch"), 7, "{text}");
}

#[tokio::test]
async fn a_client_asking_for_dns_names_gets_and_renews_a_serving_certificate() {
    let pki = Pki::new(TD);
    let (addr, _task, _) = serve_in_process(&pki, Duration::from_secs(3), identity_id()).await;
    let mut config = client_config(&pki, addr, "/ns/shop/sa/api", API_TOKEN);
    config.dns_names = meshfed_trust::serving_names("shop", "api").to_vec();
    let (mut creds, _renewal) = IdentityClient::new(config)
        .start()
        .await
        .expect("first certificate");
    let names = |c: &meshfed_trust::Credentials| {
        meshfed_trust::CertInfo::parse(&c.chain()[0])
            .expect("leaf")
            .dns_sans
    };
    let first = creds.borrow_and_update().clone();
    assert_eq!(
        names(&first),
        ["api.shop.svc", "api.shop.svc.cluster.local"]
    );
    tokio::time::timeout(Duration::from_secs(10), creds.changed())
        .await
        .expect("renewed within 10 s")
        .expect("sender alive");
    let second = creds.borrow_and_update().clone();
    assert_ne!(second.chain()[0], first.chain()[0], "a new leaf");
    assert_eq!(names(&second), names(&first), "renewals keep the names");

    // A name the workload may not hold: the client refuses to start.
    let mut config = client_config(&pki, addr, "/ns/shop/sa/api", API_TOKEN);
    config.dns_names = vec!["web.shop.svc".into()];
    let err = IdentityClient::new(config)
        .start()
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("may hold only"), "{err}");
}

#[tokio::test]
async fn token_review_proves_service_accounts_against_the_api_server() {
    use http_body_util::BodyExt;
    let (mock, mut handle) = tower_test::mock::pair::<
        http::Request<kube::client::Body>,
        http::Response<kube::client::Body>,
    >();
    let reviewer = TokenReviewer::new(kube::Client::new(mock, "default"), vec!["meshfed".into()]);
    let api_server = tokio::spawn(async move {
        for (token, answer) in [
            (
                "good-sa-token",
                serde_json::json!({"authenticated": true, "audiences": ["meshfed"], "user": {"username": "system:serviceaccount:shop:api"}}),
            ),
            (
                "expired-token",
                serde_json::json!({"authenticated": false, "error": "token has expired"}),
            ),
            (
                "node-token",
                serde_json::json!({"authenticated": true, "audiences": ["meshfed"], "user": {"username": "system:node:n1"}}),
            ),
            (
                "wrong-aud-token",
                serde_json::json!({"authenticated": true, "audiences": ["other"], "user": {"username": "system:serviceaccount:shop:api"}}),
            ),
        ] {
            let (req, send) = handle.next_request().await.expect("a TokenReview request");
            assert_eq!(req.method(), http::Method::POST);
            assert_eq!(
                req.uri().path(),
                "/apis/authentication.k8s.io/v1/tokenreviews"
            );
            let body = req.into_body().collect().await.expect("body").to_bytes();
            let sent: serde_json::Value = serde_json::from_slice(&body).expect("json");
            assert_eq!(sent["spec"]["token"], token);
            assert_eq!(sent["spec"]["audiences"], serde_json::json!(["meshfed"]));
            let reply = serde_json::json!({
                "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "metadata": {}, "spec": sent["spec"], "status": answer,
            });
            send.send_response(
                http::Response::builder()
                    .status(201)
                    .body(kube::client::Body::from(
                        serde_json::to_vec(&reply).expect("json"),
                    ))
                    .expect("response"),
            );
        }
    });
    let ok = reviewer
        .authenticate("good-sa-token")
        .await
        .expect("authenticated");
    assert_eq!(
        (ok.namespace.as_str(), ok.service_account.as_str()),
        ("shop", "api")
    );
    for bad in ["expired-token", "node-token", "wrong-aud-token"] {
        assert!(
            matches!(
                reviewer.authenticate(bad).await,
                Err(meshfed_identity::AuthError::Rejected(_))
            ),
            "{bad}"
        );
    }
    api_server.await.expect("mock api server");
}

#[tokio::test]
async fn an_oversize_csr_over_grpc_is_resource_exhausted_whatever_its_size() {
    let pki = Pki::new(TD);
    let (addr, _task, registry) =
        serve_in_process(&pki, Duration::from_secs(3600), identity_id()).await;
    let tls = meshfed_trust::bootstrap_client_config(
        pki.bundle(),
        meshfed_trust::ExpectedIds::one(identity_id()),
    );
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let ch = meshfed_runtime::mtls_channel(addr.to_string(), name, tls, Duration::from_secs(5));
    let mut grpc = meshfed_api::identity::identity_client::IdentityClient::new(ch);
    // Under the service's message limit the handler refuses it; over it
    // (tonic's own limit answered OUT_OF_RANGE) the service does, unread.
    let sizes = [5 << 10, 64 << 10, 2 << 20];
    for (size, limit) in sizes.into_iter().zip(["4096", "16384", "16384"]) {
        let refused = grpc
            .certify(CertifyRequest {
                csr_der: vec![0u8; size],
                credential: API_TOKEN.into(),
            })
            .await
            .expect_err("oversize");
        assert_eq!(
            refused.code(),
            Code::ResourceExhausted,
            "{size}: {refused:?}"
        );
        let msg = refused.message();
        assert!(msg.contains(limit) && msg.contains("4096"), "{size}: {msg}");
    }
    // The connection still serves.
    let api = uri(&format!("spiffe://{TD}/ns/shop/sa/api"));
    grpc.certify(CertifyRequest {
        csr_der: csr(vec![api]),
        credential: API_TOKEN.into(),
    })
    .await
    .expect("a CSR of normal size is signed");
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    assert_eq!(metric(&text, "oversize"), 3, "{text}");
    assert_eq!(metric(&text, "issued"), 1, "{text}");
}
