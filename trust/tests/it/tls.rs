//! Real TLS handshakes on loopback with the mesh configs: mutual
//! authentication, expected server identities, and rotation under live
//! connections.

use std::sync::Arc;

use meshfed_trust::{
    CredentialsWatch, ExpectedIds, SpiffeId, client_config, peer_id, server_config,
};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector, client::TlsStream};

use meshfed_testkit::pki::{Pki, TD, id};

/// An echo server that reports each client's SPIFFE ID (or the handshake error).
async fn echo_server(
    creds: CredentialsWatch,
) -> (
    std::net::SocketAddr,
    mpsc::UnboundedReceiver<Result<SpiffeId, String>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let acceptor = TlsAcceptor::from(Arc::new(server_config(creds)));
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(mut tls) => {
                        let _ = tx.send(
                            peer_id(tls.get_ref().1.peer_certificates())
                                .ok_or_else(|| "no id".into()),
                        );
                        let mut buf = [0u8; 1024];
                        while let Ok(n) = tls.read(&mut buf).await {
                            if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
            });
        }
    });
    (addr, rx)
}

async fn connect(
    addr: std::net::SocketAddr,
    config: rustls::ClientConfig,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("api.shop.svc").expect("name"), tcp)
        .await?;
    // TLS 1.3: the server's verdict on our certificate arrives after the client's handshake ends.
    echo(&mut tls, b"hello").await?;
    Ok(tls)
}

async fn echo(tls: &mut TlsStream<TcpStream>, msg: &[u8]) -> std::io::Result<()> {
    tls.write_all(msg).await?;
    let mut back = vec![0u8; msg.len()];
    tls.read_exact(&mut back).await?;
    assert_eq!(back, msg);
    Ok(())
}

fn leaf_of(tls: &TlsStream<TcpStream>) -> Vec<u8> {
    tls.get_ref().1.peer_certificates().expect("server certs")[0].to_vec()
}

#[tokio::test]
async fn mutual_tls_carries_both_identities() {
    let pki = Pki::new(TD);
    let (_stx, server) = pki.creds("/ns/shop/sa/api").into_watch();
    let (_ctx, client) = pki.creds("/ns/shop/sa/web").into_watch();
    let (addr, mut seen) = echo_server(server).await;
    let tls = connect(
        addr,
        client_config(client, ExpectedIds::one(id("/ns/shop/sa/api"))),
    )
    .await
    .expect("handshake");
    assert_eq!(
        seen.recv().await.expect("report"),
        Ok(id("/ns/shop/sa/web")),
        "server sees the client's own id"
    );
    assert_eq!(
        peer_id(tls.get_ref().1.peer_certificates()),
        Some(id("/ns/shop/sa/api"))
    );
}

#[tokio::test]
async fn client_refuses_an_unexpected_server_identity() {
    let pki = Pki::new(TD);
    let (_stx, server) = pki.creds("/ns/shop/sa/impostor").into_watch();
    let (_ctx, client) = pki.creds("/ns/shop/sa/web").into_watch();
    let (addr, _seen) = echo_server(server).await;
    let expected =
        ExpectedIds::new([id("/ns/shop/sa/api"), id("/ns/shop/sa/api-canary")]).expect("non-empty");
    let err = connect(addr, client_config(client, expected))
        .await
        .expect_err("must refuse");
    assert!(err.to_string().contains("NotValidForName"), "{err}");
}

#[tokio::test]
async fn server_refuses_clients_without_a_mesh_certificate() {
    let pki = Pki::new(TD);
    let stranger = Pki::new(TD);
    let (_stx, server) = pki.creds("/ns/shop/sa/api").into_watch();
    let (addr, mut seen) = echo_server(server).await;

    // No certificate at all.
    let bare = meshfed_trust::bootstrap_client_config(
        pki.bundle(),
        ExpectedIds::one(id("/ns/shop/sa/api")),
    );
    assert!(connect(addr, bare).await.is_err());
    assert!(seen.recv().await.expect("report").is_err());

    // A certificate from another root (the client trusts both roots, so only the server can object).
    let w = stranger
        .ca
        .issue_workload(&id("/ns/shop/sa/web"), std::time::Duration::from_secs(600))
        .expect("issue");
    let both = meshfed_trust::TrustBundle::new(
        meshfed_testkit::pki::td(),
        [stranger.root.cert().clone(), pki.root.cert().clone()],
    )
    .expect("bundle");
    let foreign = meshfed_trust::Credentials::new(
        w.chain,
        rustls_pki_types::PrivatePkcs8KeyDer::from(w.key_pkcs8).into(),
        both,
    )
    .expect("creds");
    let (_ftx, foreign) = foreign.into_watch();
    assert!(
        connect(
            addr,
            client_config(foreign, ExpectedIds::one(id("/ns/shop/sa/api")))
        )
        .await
        .is_err()
    );
    let verdict = seen
        .recv()
        .await
        .expect("report")
        .expect_err("server must refuse");
    assert!(verdict.contains("UnknownIssuer"), "{verdict}");
}

#[tokio::test]
async fn rotation_keeps_open_connections_and_new_handshakes_get_the_new_certificate() {
    let pki = Pki::new(TD);
    let first = pki.creds("/ns/shop/sa/api");
    let first_leaf = first.chain()[0].to_vec();
    let (rotate, server) = first.into_watch();
    let (_ctx, client) = pki.creds("/ns/shop/sa/web").into_watch();
    let (addr, _seen) = echo_server(server).await;
    let expect = || ExpectedIds::one(id("/ns/shop/sa/api"));

    let mut before = connect(addr, client_config(client.clone(), expect()))
        .await
        .expect("first handshake");
    assert_eq!(leaf_of(&before), first_leaf);

    let second = pki.creds("/ns/shop/sa/api");
    let second_leaf = second.chain()[0].to_vec();
    assert_ne!(first_leaf, second_leaf);
    rotate.send(Arc::new(second)).expect("receivers alive");

    // The connection opened before the rotation keeps working...
    for i in 0..10u8 {
        echo(&mut before, &[i; 512])
            .await
            .expect("old connection still echoes");
    }
    // ...and a new handshake presents the new certificate.
    let after = connect(addr, client_config(client, expect()))
        .await
        .expect("second handshake");
    assert_eq!(leaf_of(&after), second_leaf);
    echo(&mut before, b"still here")
        .await
        .expect("old connection after new handshake");
}
