//! Probes without a mesh certificate on kind: `meshctl scenario probe` runs
//! in a pod of its own (opted out of injection, though its namespace is
//! labelled for it) and dials the gateway's NodePort on a node, or a pod's
//! sidecar inbound port.

use anyhow::{Context, bail};
use meshfed_runtime::port;

use super::shell::kubectl;
use super::{Kind, POD_LABEL};
use crate::cluster::{GATEWAY, NAMESPACE};
use crate::dev::SHOP;
use crate::scenario::spec::ProbeTarget;
use meshfed_injector::pod::INJECT;

impl Kind {
    /// Runs `meshctl scenario probe` in a pod of `from` that has no sidecar
    /// (annotated `meshfed.io/inject: "false"`, so the webhook leaves it be).
    pub(in crate::scenario) async fn probe(
        &mut self,
        from: &str,
        to: &ProbeTarget,
        sni: Option<&str>,
    ) -> anyhow::Result<(String, Result<String, String>)> {
        let process = to
            .process
            .as_deref()
            .context("probe: caller and service, or process")?;
        let addr = self
            .address(&to.cluster, process, to.listener.as_deref())
            .await?;
        let name = format!("meshfed-probe-{}", rand::random::<u32>());
        let mut args = vec![
            "run".to_owned(),
            name,
            "-n".into(),
            SHOP.into(),
            format!("--image={}", self.image),
            "--image-pull-policy=Never".into(),
            "--restart=Never".into(),
            format!("--annotations={INJECT}=false"),
            "--rm".into(),
            "-i".into(),
            "--quiet".into(),
            "--".into(),
            "scenario".into(),
            "probe".into(),
            addr.clone(),
        ];
        if let Some(sni) = sni {
            args.extend(["--sni".into(), sni.into()]);
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        // The probe exits 1 when refused; its first line says how it went.
        let out = match kubectl(from, &refs, None).await {
            Ok(out) => out,
            Err(e) => format!("{e:#}"),
        };
        let got = out
            .lines()
            .find_map(|l| {
                l.strip_prefix("answered: ")
                    .map(|s| Ok(s.to_owned()))
                    .or_else(|| l.strip_prefix("refused: ").map(|s| Err(s.to_owned())))
            })
            .with_context(|| format!("the probe pod said nothing usable: {out}"))?;
        Ok((addr, got))
    }

    /// Where a pod of another cluster dials `process`: the gateway's
    /// NodePort on a node, or a pod's sidecar inbound port.
    async fn address(
        &self,
        cluster: &str,
        process: &str,
        listener: Option<&str>,
    ) -> anyhow::Result<String> {
        if process == "gateway" {
            let port = self.kc(cluster, &format!("get service {GATEWAY} -n {NAMESPACE} -o jsonpath={{.spec.ports[0].nodePort}}"))
                .await?;
            let ip = self.kc(cluster, "get nodes -o jsonpath={.items[0].status.addresses[?(@.type==\"InternalIP\")].address}")
                .await?;
            return Ok(format!("{}:{}", ip.trim(), port.trim()));
        }
        let Some(pod) = process.strip_suffix("-sidecar") else {
            bail!(
                "the kind provider probes a cluster's gateway or a pod's sidecar (POD-sidecar), not {process}"
            );
        };
        if listener.is_some_and(|l| l != "inbound") {
            bail!("the kind provider probes a sidecar's inbound listener only");
        }
        let ip = self.kc(cluster, &format!("get pods -n {SHOP} -l {POD_LABEL}={pod} --field-selector=status.phase=Running -o jsonpath={{.items[0].status.podIP}}"))
            .await?;
        if ip.trim().is_empty() {
            bail!("no running pod {pod} in {cluster}");
        }
        Ok(format!("{}:{}", ip.trim(), port::SIDECAR_INBOUND))
    }
}
