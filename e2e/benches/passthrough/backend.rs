//! The backend: the bench binary re-executed with `--serve-backend DIR`, so
//! its descriptors and CPU are its own. An mTLS server (the `shop/api`
//! identity from DIR) on three loopback ports — one per path, so TIME_WAIT
//! sockets of one path never crowd another's — printed as
//! `ports DIRECT GATEWAY HAPROXY`. It exits when its stdin closes (the
//! bench ended or died).
//!
//! After the handshake the caller sends one command byte:
//! - `e`: echo every byte until end of stream;
//! - `d` + u64 (LE) `len`: read and discard `len` bytes, answer one byte; then
//!   the next command;
//! - `w`: answer the caller's SPIFFE ID and a newline; then the next command.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use meshfed_trust::{Credentials, peer_id, server_config};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

pub const PATHS: usize = 3;
const ECHO_BUF: usize = 16 * 1024;
const DISCARD_BUF: usize = 256 * 1024;

pub fn run(dir: &Path) -> anyhow::Result<()> {
    meshfed_trust::install_crypto_provider();
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let creds = Credentials::from_dir(dir)
        .with_context(|| format!("backend credentials in {}", dir.display()))?
        .into_watch()
        .1;
    let acceptor = TlsAcceptor::from(Arc::new(server_config(creds)));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("backend runtime")?;
    rt.block_on(async move {
        let mut ports = Vec::with_capacity(PATHS);
        for _ in 0..PATHS {
            let listener = TcpListener::bind("127.0.0.1:0").await.context("bind")?;
            ports.push(listener.local_addr().context("addr")?.port().to_string());
            tokio::spawn(accept(listener, acceptor.clone()));
        }
        let mut out = std::io::stdout();
        writeln!(out, "ports {}", ports.join(" ")).context("stdout")?;
        out.flush().context("stdout")?;
        // Until the bench closes our stdin (or dies).
        let _ = tokio::task::spawn_blocking(|| {
            let mut sink = [0u8; 64];
            while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
        })
        .await;
        anyhow::Ok(())
    })?;
    // Open connections are not drained: the bench is done with them.
    std::process::exit(0);
}

async fn accept(listener: TcpListener, acceptor: TlsAcceptor) {
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _ = serve(acceptor, tcp).await;
                });
            }
            Err(e) => {
                eprintln!("backend: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
}

async fn serve(acceptor: TlsAcceptor, tcp: TcpStream) -> std::io::Result<()> {
    tcp.set_nodelay(true)?;
    let mut tls = acceptor.accept(tcp).await?;
    loop {
        let mut cmd = [0u8; 1];
        if tls.read(&mut cmd).await? == 0 {
            break;
        }
        match cmd[0] {
            b'e' => {
                echo(&mut tls).await?;
                break;
            }
            b'd' => {
                let len = tls.read_u64_le().await?;
                discard(&mut tls, len).await?;
                tls.write_all(b"k").await?;
                tls.flush().await?;
            }
            b'w' => {
                let who = peer_id(tls.get_ref().1.peer_certificates())
                    .map_or_else(|| "none".to_owned(), |id| id.to_string());
                tls.write_all(format!("{who}\n").as_bytes()).await?;
                tls.flush().await?;
            }
            other => {
                return Err(std::io::Error::other(format!("unknown command {other}")));
            }
        }
    }
    tls.shutdown().await
}

async fn echo(tls: &mut (impl AsyncRead + AsyncWrite + Unpin)) -> std::io::Result<()> {
    let mut buf = vec![0u8; ECHO_BUF];
    loop {
        let n = tls.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        tls.write_all(&buf[..n]).await?;
        tls.flush().await?;
    }
}

async fn discard(tls: &mut (impl AsyncRead + Unpin), mut len: u64) -> std::io::Result<()> {
    let mut buf = vec![0u8; DISCARD_BUF];
    while len > 0 {
        let want = usize::try_from(len).unwrap_or(usize::MAX).min(buf.len());
        let n = tls.read(&mut buf[..want]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        len -= n as u64;
    }
    Ok(())
}
