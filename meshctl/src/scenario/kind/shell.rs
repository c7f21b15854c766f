//! Running the tools the kind provider drives: its scripts, kubectl, and
//! `kubectl port-forward`.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use super::context;
use crate::dev::SHOP;

/// How long one kubectl call may take.
const KUBECTL_TIMEOUT: Duration = Duration::from_secs(60);

/// A port-forward kept open for the run.
pub(super) struct Forward {
    pub(super) child: Child,
    pub(super) addr: std::net::SocketAddr,
}

pub(super) enum ScriptError {
    Failed { code: i32, stderr: String },
    Other(anyhow::Error),
}

impl From<ScriptError> for anyhow::Error {
    fn from(e: ScriptError) -> Self {
        match e {
            ScriptError::Failed { code, stderr } => {
                anyhow::anyhow!("exit {code}: {}", stderr.trim())
            }
            ScriptError::Other(e) => e,
        }
    }
}

pub(super) fn script_command(scripts: &Path, name: &str, work: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("bash");
    c.arg(scripts.join(name)).arg(work).args(args);
    if let Ok(exe) = std::env::current_exe() {
        c.env("MESHCTL", exe);
    }
    c.stdin(Stdio::null()).kill_on_drop(true);
    c
}

pub(super) async fn run_script(
    scripts: &Path,
    name: &str,
    work: &Path,
    args: &[&str],
) -> Result<String, ScriptError> {
    let out = script_command(scripts, name, work, args)
        .output()
        .await
        .map_err(|e| ScriptError::Other(anyhow::anyhow!("running {name}: {e}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(ScriptError::Failed {
            code: out.status.code().unwrap_or(-1),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// `kubectl --context kind-meshfed-CLUSTER ARGS`, its standard output.
pub(super) async fn kubectl(
    cluster: &str,
    args: &[&str],
    stdin: Option<Vec<u8>>,
) -> anyhow::Result<String> {
    let ctx = context(cluster);
    let mut c = Command::new("kubectl");
    c.arg("--context")
        .arg(&ctx)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = c.spawn().context("running kubectl")?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(&input).await?;
    }
    let out = tokio::time::timeout(KUBECTL_TIMEOUT, child.wait_with_output())
        .await
        .with_context(|| format!("kubectl {} timed out", args.join(" ")))??;
    if !out.status.success() {
        bail!(
            "kubectl --context {ctx} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `kubectl port-forward` to `port` of `pod` on a free local port.
pub(super) async fn port_forward(cluster: &str, pod: &str, port: u16) -> anyhow::Result<Forward> {
    let mut child = Command::new("kubectl")
        .args(["--context", &context(cluster), "-n", SHOP, "port-forward"])
        .arg(format!("pod/{pod}"))
        .arg(format!(":{port}"))
        .args(["--address", "127.0.0.1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("running kubectl port-forward")?;
    let out = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(out).lines();
    // "Forwarding from 127.0.0.1:41234 -> 15001"
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .with_context(|| format!("port-forward to {pod}:{port} in {cluster} timed out"))??
        .with_context(|| format!("port-forward to {pod}:{port} in {cluster} ended"))?;
    let addr = first
        .strip_prefix("Forwarding from ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("port-forward said {first:?}"))?;
    // Keep reading so kubectl never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Forward { child, addr })
}

pub(super) fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
