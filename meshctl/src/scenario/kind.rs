//! The kind provider: each cluster is a kind cluster `meshfed-NAME`
//! (context `kind-meshfed-NAME`) with Meshfed installed from the images in
//! deploy/ and the sample workloads as pods. `scenarios/kind/up.sh` builds
//! it from the plan this module writes, `down.sh` removes it, `fault.sh`
//! injects node-level faults (netfilter partitions, tc netem, SIGSTOP);
//! everything else goes through kubectl: Deployments are scaled, restarted
//! and read, admin endpoints are read through the API server's pod proxy,
//! and calls reach a client pod's sidecar through `kubectl port-forward`.
//!
//! A pod is one Deployment of namespace shop (`api-a`, `client`, ...); a
//! fault on a pod or on its sidecar acts on the whole pod, as it would in
//! Kubernetes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, bail};
use meshfed_runtime::port;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

mod ca;
mod dial;
mod plan;
mod shell;

use super::env::{Fault, Mirrors};
use super::probe::{self, Sample};
use super::spec::{Degrade, Replica, Scenario, Target};
use crate::cluster::{CONTROLLER, GATEWAY, IDENTITY, NAMESPACE};
use crate::dev::{CONTROLLER_PROCESS, Net, SHOP};
use plan::{scripts_for, write_plan};
use shell::{Forward, ScriptError, kubectl, port_forward, run_script, script_command};

/// Where the runner finds the scripts when the scenario file's directory
/// has no `kind/` (e.g. a scenario kept elsewhere).
pub const SCRIPTS_ENV: &str = "MESHFED_KIND_SCRIPTS";
/// The label every sample pod carries with its Deployment's name.
const POD_LABEL: &str = "meshfed.io/scenario-pod";
/// The client pods' explicit upstreams (up.sh sets them).
const API_UPSTREAM: u16 = 15001;
const ECHO_UPSTREAM: u16 = 15002;
/// How long a Deployment may take to roll out.
const ROLLOUT_TIMEOUT: &str = "180s";
/// Exit status with which fault.sh says netem is not available.
const NO_NETEM: i32 = 3;

/// The kind context of cluster `name`.
pub fn context(name: &str) -> String {
    format!("kind-meshfed-{name}")
}

/// A Deployment that stands for a scenario's pod or process.
struct Workload {
    namespace: &'static str,
    deployment: String,
    selector: String,
    admin: Option<u16>,
}

pub(super) struct Kind {
    dir: PathBuf,
    scripts: PathBuf,
    exe: PathBuf,
    lease_ttl: u64,
    image: String,
    forwards: BTreeMap<(String, String, u16), Forward>,
    /// Replicas of the Deployments a kill scaled to zero.
    killed: BTreeMap<(String, String), String>,
    /// Deployments one of whose pods a kill deleted (its ReplicaSet makes a
    /// new one: `start` waits for it).
    replaced: std::collections::BTreeSet<(String, String)>,
}

impl Kind {
    pub(super) async fn up(
        s: &Scenario,
        dir: &Path,
        say: &mut (dyn FnMut(&str) + Send),
    ) -> anyhow::Result<Self> {
        let scripts = scripts_for(s)?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        write_plan(s, &dir.join("plan"), &scripts)?;
        let exe = std::env::current_exe().context("finding the meshctl executable")?;
        let k = Self {
            dir: dir.to_owned(),
            scripts,
            exe,
            lease_ttl: s.lease_ttl.as_secs(),
            image: format!(
                "{}/meshctl:{}",
                std::env::var("MESHFED_IMAGE_REGISTRY").unwrap_or_else(|_| "meshfed.local".into()),
                std::env::var("MESHFED_IMAGE_TAG").unwrap_or_else(|_| "scenario".into())
            ),
            forwards: BTreeMap::new(),
            killed: BTreeMap::new(),
            replaced: Default::default(),
        };
        k.script_streamed("up.sh", &[], say)
            .await
            .context("the kind clusters did not come up (scenarios/kind/up.sh)")?;
        Ok(k)
    }

    /// Deletes the kind clusters a killed run in `dir` left.
    pub(super) async fn clean(dir: &Path) -> anyhow::Result<Option<String>> {
        let plan = dir.join("plan");
        let Ok(scripts) = std::fs::read_to_string(plan.join("scripts")) else {
            return Ok(None);
        };
        let names: Vec<String> = std::fs::read_to_string(plan.join("clusters"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect();
        run_script(Path::new(scripts.trim()), "down.sh", dir, &[])
            .await
            .map_err(anyhow::Error::from)
            .context("deleting the kind clusters of an earlier run (scenarios/kind/down.sh)")?;
        std::fs::remove_file(plan.join("scripts"))
            .with_context(|| format!("removing {}", plan.display()))?;
        Ok(Some(format!("kind clusters {}", names.join(", "))))
    }

    pub(super) async fn down(&mut self) -> anyhow::Result<()> {
        for (_, mut f) in std::mem::take(&mut self.forwards) {
            let _ = f.child.kill().await;
        }
        Self::clean(&self.dir).await.map(|_| ())
    }

    async fn script_streamed(
        &self,
        name: &str,
        args: &[&str],
        say: &mut (dyn FnMut(&str) + Send),
    ) -> anyhow::Result<()> {
        let mut child = script_command(&self.scripts, name, &self.dir, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {name}"))?;
        let out = child.stdout.take().context("stdout")?;
        let err = child.stderr.take().context("stderr")?;
        let mut out = BufReader::new(out).lines();
        let mut err = BufReader::new(err).lines();
        let mut tail: Vec<String> = Vec::new();
        let (mut out_open, mut err_open) = (true, true);
        while out_open || err_open {
            let line: Option<String> = tokio::select! {
                l = out.next_line(), if out_open => {
                    let l = l?;
                    out_open = l.is_some();
                    l
                }
                l = err.next_line(), if err_open => {
                    let l = l?;
                    err_open = l.is_some();
                    l
                }
            };
            if let Some(line) = line {
                say(&line);
                tail.push(line);
                if tail.len() > 12 {
                    tail.remove(0);
                }
            }
        }
        let status = child.wait().await?;
        if !status.success() {
            bail!("{name} failed ({status}):\n{}", tail.join("\n"));
        }
        Ok(())
    }

    /// `fault.sh WORK VERB ARGS...`; the exit status and stderr when it failed.
    async fn fault_script(&self, args: &[&str]) -> anyhow::Result<Result<(), (i32, String)>> {
        let out = run_script(&self.scripts, "fault.sh", &self.dir, args).await;
        match out {
            Ok(_) => Ok(Ok(())),
            Err(ScriptError::Failed { code, stderr }) => Ok(Err((code, stderr))),
            Err(ScriptError::Other(e)) => Err(e),
        }
    }

    async fn fault_ok(&self, args: &[&str]) -> anyhow::Result<()> {
        self.fault_script(args)
            .await?
            .map_err(|(code, e)| anyhow::anyhow!("fault.sh {} (exit {code}): {e}", args.join(" ")))
    }

    fn workload(t: &Target) -> anyhow::Result<Workload> {
        match (&t.process, &t.pod) {
            (Some(p), _) => process_workload(p),
            (None, Some(pod)) => Ok(pod_workload(pod)),
            (None, None) => bail!("give process or pod"),
        }
    }

    /// The pod a step acts on alone: the replica the runner picked, or the
    /// one a replica's process name (`controller-1`) stands for.
    async fn pod_of(
        &self,
        t: &Target,
        w: &Workload,
        replica: Option<&str>,
    ) -> anyhow::Result<Option<String>> {
        if let Some(r) = replica {
            return Ok(Some(r.to_owned()));
        }
        let Some(i) = t.process.as_deref().and_then(replica_index) else {
            return Ok(None);
        };
        let pods = self.pods(&t.cluster, w.namespace, &w.selector).await?;
        let what = format!("{} of cluster {}", w.deployment, t.cluster);
        let running: Vec<(String, bool)> = pods.into_iter().map(|p| (p, true)).collect();
        super::replica::pick(&what, &running, None, &Replica::Index(i)).map(Some)
    }

    pub(super) async fn replicas(
        &self,
        cluster: &str,
        process: &str,
    ) -> anyhow::Result<Vec<(String, bool)>> {
        let w = process_workload(process)?;
        let mut pods = self.pods(cluster, w.namespace, &w.selector).await?;
        pods.sort();
        Ok(pods.into_iter().map(|p| (p, true)).collect())
    }

    pub(super) async fn leader(&self, cluster: &str) -> anyhow::Result<Option<String>> {
        let out = self.kc(cluster, &commands::leader()).await?;
        let holder = out.trim();
        Ok((!holder.is_empty()).then(|| holder.to_owned()))
    }

    pub(super) fn sample_mirror(
        &self,
        cluster: &str,
        service: &str,
        origin: &str,
    ) -> anyhow::Result<super::sample::Samples> {
        let (cluster, service, origin) =
            (cluster.to_owned(), service.to_owned(), origin.to_owned());
        // As fast as kubectl answers.
        Ok(super::sample::Samples::start(
            std::time::Duration::from_millis(50),
            move || {
                let (cluster, service, origin) = (cluster.clone(), service.clone(), origin.clone());
                async move { mirror_state_of(&cluster, &service, &origin).await }
            },
        ))
    }

    pub(super) async fn upstream(
        &mut self,
        cluster: &str,
        caller: &str,
        service: &str,
    ) -> anyhow::Result<(Net, SocketAddr)> {
        let port = match service {
            "api" => API_UPSTREAM,
            "echo" => ECHO_UPSTREAM,
            other => bail!("the kind clusters' clients have no upstream for {other}"),
        };
        let key = (cluster.to_owned(), caller.to_owned(), port);
        if let Some(f) = self.forwards.get_mut(&key)
            && f.child.try_wait()?.is_none()
        {
            return Ok((Net::Host, f.addr));
        }
        let pod = self
            .pods(cluster, SHOP, &format!("{POD_LABEL}={caller}"))
            .await?
            .into_iter()
            .next()
            .with_context(|| format!("no running pod {caller} in {cluster}"))?;
        let f = port_forward(cluster, &pod, port).await?;
        let addr = f.addr;
        self.forwards.insert(key, f);
        Ok((Net::Host, addr))
    }

    /// `kubectl` with `cmd`'s words as arguments (none of them holds a space).
    async fn kc(&self, cluster: &str, cmd: &str) -> anyhow::Result<String> {
        let args: Vec<&str> = cmd.split_whitespace().collect();
        kubectl(cluster, &args, None).await
    }

    /// The running pods of `namespace` matching `selector`.
    async fn pods(
        &self,
        cluster: &str,
        namespace: &str,
        selector: &str,
    ) -> anyhow::Result<Vec<String>> {
        let out = self.kc(cluster, &format!("get pods -n {namespace} -l {selector} --field-selector=status.phase=Running -o jsonpath={{.items[*].metadata.name}}"))
            .await?;
        Ok(out.split_whitespace().map(str::to_owned).collect())
    }

    pub(super) async fn fault(
        &mut self,
        t: &Target,
        replica: Option<&str>,
        f: Fault,
    ) -> anyhow::Result<()> {
        let w = Self::workload(t)?;
        if let Some(pod) = self.pod_of(t, &w, replica).await? {
            // One replica: its pod alone.
            return match f {
                Fault::Pause | Fault::Resume => {
                    let verb = if f == Fault::Pause { "pause" } else { "resume" };
                    self.kc(&t.cluster, &commands::label_pod(w.namespace, &pod))
                        .await?;
                    self.fault_ok(&[verb, &t.cluster, w.namespace, &commands::pod_selector(&pod)])
                        .await
                }
                Fault::Kill => {
                    self.kc(&t.cluster, &commands::kill_pod(w.namespace, &pod))
                        .await?;
                    self.replaced
                        .insert((t.cluster.clone(), w.deployment.clone()));
                    Ok(())
                }
            };
        }
        match f {
            Fault::Pause | Fault::Resume => {
                let verb = if f == Fault::Pause { "pause" } else { "resume" };
                self.fault_ok(&[verb, &t.cluster, w.namespace, &w.selector])
                    .await
            }
            Fault::Kill => {
                let deploy = format!("deployment/{}", w.deployment);
                let replicas = self
                    .kc(
                        &t.cluster,
                        &format!(
                            "get {deploy} -n {} -o jsonpath={{.spec.replicas}}",
                            w.namespace
                        ),
                    )
                    .await?;
                if replicas.trim() == "0" {
                    bail!("{} of cluster {} is not running", w.deployment, t.cluster);
                }
                self.kc(
                    &t.cluster,
                    &format!("scale {deploy} -n {} --replicas=0", w.namespace),
                )
                .await?;
                // Scaling down asks politely; a kill does not wait.
                self.kc(
                    &t.cluster,
                    &format!(
                        "delete pods -n {} -l {} --grace-period=0 --force --wait=true",
                        w.namespace, w.selector
                    ),
                )
                .await?;
                self.killed.insert(
                    (t.cluster.clone(), w.deployment.clone()),
                    replicas.trim().to_owned(),
                );
                Ok(())
            }
        }
    }

    pub(super) async fn start(
        &mut self,
        t: &Target,
        replica: Option<&str>,
        restart: bool,
    ) -> anyhow::Result<()> {
        let w = Self::workload(t)?;
        let deploy = format!("deployment/{}", w.deployment);
        let key = (t.cluster.clone(), w.deployment.clone());
        let one = self.pod_of(t, &w, replica).await?;
        match (restart, one) {
            // The Deployment replaces a pod deleted politely.
            (true, Some(pod)) => {
                self.kc(&t.cluster, &commands::delete_pod(w.namespace, &pod))
                    .await?;
            }
            (true, None) => {
                self.kc(
                    &t.cluster,
                    &commands::rollout(w.namespace, &w.deployment)[0],
                )
                .await?;
            }
            // A killed replica's pod was replaced by its ReplicaSet already.
            (false, _) if self.replaced.remove(&key) => {}
            (false, _) => {
                let replicas = self.killed.remove(&key).with_context(|| {
                    format!(
                        "{} of cluster {} is already running",
                        w.deployment, t.cluster
                    )
                })?;
                self.kc(
                    &t.cluster,
                    &format!("scale {deploy} -n {} --replicas={replicas}", w.namespace),
                )
                .await?;
            }
        }
        self.kc(
            &t.cluster,
            &commands::rollout(w.namespace, &w.deployment)[1],
        )
        .await
        .map(|_| ())
    }

    /// `kubectl rollout restart` and `rollout status`: the Deployment's
    /// strategy replaces one pod at a time (maxUnavailable 0).
    pub(super) async fn rollout(&mut self, t: &Target) -> anyhow::Result<()> {
        let w = Self::workload(t)?;
        for cmd in commands::rollout(w.namespace, &w.deployment) {
            self.kc(&t.cluster, &cmd).await?;
        }
        Ok(())
    }

    pub(super) async fn ready(&self, cluster: &str, process: &str) -> Result<(), String> {
        let w = process_workload(process).map_err(|e| format!("{e:#}"))?;
        self.kc(
            cluster,
            &format!(
                "rollout status deployment/{} -n {} --timeout=2s",
                w.deployment, w.namespace
            ),
        )
        .await
        .map(|_| ())
        .map_err(|e| format!("{e:#}"))
    }

    /// Every running pod's metrics, summed by sample (the identity service
    /// runs two replicas).
    pub(super) async fn metrics(
        &self,
        cluster: &str,
        process: &str,
    ) -> anyhow::Result<Vec<Sample>> {
        let w = process_workload(process)?;
        let port = w
            .admin
            .with_context(|| format!("{process} has no admin listener"))?;
        let pods = self.pods(cluster, w.namespace, &w.selector).await?;
        if pods.is_empty() {
            bail!("metrics of {process} in {cluster}: no running pod");
        }
        let mut samples = Vec::new();
        for pod in pods {
            let path = format!(
                "/api/v1/namespaces/{}/pods/{pod}:{port}/proxy/metrics",
                w.namespace
            );
            let text = self
                .kc(cluster, &format!("get --raw {path}"))
                .await
                .with_context(|| format!("metrics of {process} in {cluster}"))?;
            samples.extend(probe::parse_metrics(&text));
        }
        Ok(samples)
    }

    pub(super) async fn mirrors(&self, cluster: &str) -> anyhow::Result<Mirrors> {
        let mut out = BTreeMap::new();
        for o in mirror_objects(cluster).await? {
            let meta = &o["metadata"];
            let name = format!(
                "{}/{}",
                o["kind"].as_str().unwrap_or_default(),
                meta["name"].as_str().unwrap_or_default()
            );
            let said = serde_json::json!({
                "labels": meta["labels"],
                "annotations": meta["annotations"],
                "spec": o["spec"],
                "endpoints": o["endpoints"],
                "ports": o["ports"],
            });
            let version = meta["resourceVersion"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            out.insert(name, (said.to_string(), version));
        }
        Ok(out)
    }

    pub(super) async fn mirror_state(
        &self,
        cluster: &str,
        service: &str,
        origin: &str,
    ) -> anyhow::Result<Option<bool>> {
        mirror_state_of(cluster, service, origin).await
    }

    pub(super) async fn partition(&mut self, cluster: &str, cut: bool) -> anyhow::Result<()> {
        self.fault_ok(&[if cut { "partition" } else { "heal" }, cluster])
            .await
    }

    pub(super) async fn degrade(&mut self, d: &Degrade) -> anyhow::Result<Result<(), String>> {
        let latency = d.latency.unwrap_or_default().as_millis().to_string();
        let loss = d.loss.unwrap_or_default().to_string();
        match self
            .fault_script(&["degrade", &d.cluster, &latency, &loss])
            .await?
        {
            Ok(()) => Ok(Ok(())),
            Err((NO_NETEM, why)) => Ok(Err(why.trim().to_owned())),
            Err((code, e)) => bail!("fault.sh degrade (exit {code}): {e}"),
        }
    }

    pub(super) async fn undegrade(&mut self, cluster: &str) -> anyhow::Result<()> {
        self.fault_ok(&["undegrade", cluster]).await
    }

    pub(super) async fn set_exported(
        &self,
        cluster: &str,
        service: &str,
        on: bool,
    ) -> anyhow::Result<()> {
        let c = crate::target::open(Some(&context(cluster)), None).await?;
        c.set_exported(SHOP, service, on).await.map(|_| ())
    }

    pub(super) async fn put_route(
        &self,
        cluster: &str,
        route: &meshfed_resources::route::HttpRoute,
    ) -> anyhow::Result<()> {
        let c = crate::target::open(Some(&context(cluster)), None).await?;
        c.put_route(route).await.map(|_| ())
    }

    /// As up.sh links, and as a person would.
    pub(super) async fn link(&self, cluster: &str, peer: &str) -> anyhow::Result<()> {
        let out = Command::new(&self.exe)
            .args([
                "link",
                "--from-context",
                &context(peer),
                "--to-context",
                &context(cluster),
                "--lease-ttl",
                &self.lease_ttl.to_string(),
            ])
            .output()
            .await
            .context("running meshctl link")?;
        if !out.status.success() {
            bail!(
                "meshctl link {peer} → {cluster}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    pub(super) async fn unlink(&self, cluster: &str, peer: &str) -> anyhow::Result<()> {
        let c = crate::target::open(Some(&context(cluster)), None).await?;
        if !c.delete_link(peer).await? {
            bail!("cluster {cluster} had no link to {peer}");
        }
        Ok(())
    }

    pub(super) fn root_dir(&self) -> PathBuf {
        self.dir.join("trust").join("root")
    }

    pub(super) fn ca_dir(&self, cluster: &str) -> anyhow::Result<PathBuf> {
        Ok(self.dir.join("trust").join(format!("{cluster}-ca")))
    }
}

async fn mirror_objects(cluster: &str) -> anyhow::Result<Vec<Value>> {
    let selector = meshfed_api::labels::ORIGIN_CLUSTER;
    let args = [
        "get",
        "services,endpointslices",
        "-n",
        SHOP,
        "-l",
        selector,
        "-o",
        "json",
    ];
    let out = kubectl(cluster, &args, None).await?;
    let list: Value = serde_json::from_str(&out).context("kubectl's JSON")?;
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

/// Whether `cluster`'s mirror of `service` from `origin` has ready
/// endpoints (`None`: no mirror).
async fn mirror_state_of(
    cluster: &str,
    service: &str,
    origin: &str,
) -> anyhow::Result<Option<bool>> {
    let name = format!("{service}-{origin}");
    let objects = mirror_objects(cluster).await?;
    let svc = objects
        .iter()
        .any(|o| o["kind"] == "Service" && o["metadata"]["name"] == name.as_str());
    let slices: Vec<&Value> = objects
        .iter()
        .filter(|o| {
            o["kind"] == "EndpointSlice"
                && o["metadata"]["labels"][meshfed_api::labels::SERVICE_NAME] == name.as_str()
        })
        .collect();
    Ok(match (svc, slices.is_empty()) {
        (false, true) => None,
        (_, true) => Some(false),
        (_, false) => Some(slices.iter().any(|s| super::env::any_ready(s))),
    })
}

/// The kubectl commands (the words after `kubectl --context C`) that the
/// controller's replicas are found and acted on with.
mod commands {
    use crate::cluster::{CONTROLLER, NAMESPACE};

    /// The label a single pod is given so fault.sh can select it alone.
    const PICKED: &str = "meshfed.io/scenario-replica";

    /// The Lease's holder: the leading replica's pod name (the controller
    /// runs with `MESHFED_POD_NAME` as its holder identity).
    pub(super) fn leader() -> String {
        format!(
            "get lease -n {NAMESPACE} {CONTROLLER} --ignore-not-found -o jsonpath={{.spec.holderIdentity}}"
        )
    }

    /// A killed replica: its pod deleted with no grace, as a crash.
    pub(super) fn kill_pod(namespace: &str, pod: &str) -> String {
        format!("delete pod -n {namespace} {pod} --grace-period=0 --force --wait=true")
    }

    /// A restarted replica: its pod deleted politely (SIGTERM, its grace).
    pub(super) fn delete_pod(namespace: &str, pod: &str) -> String {
        format!("delete pod -n {namespace} {pod} --wait=true")
    }

    pub(super) fn label_pod(namespace: &str, pod: &str) -> String {
        format!("label pod -n {namespace} {pod} {PICKED}={pod} --overwrite")
    }

    pub(super) fn pod_selector(pod: &str) -> String {
        format!("{PICKED}={pod}")
    }

    /// `rollout restart`, then `rollout status` until every new pod is ready.
    pub(super) fn rollout(namespace: &str, deployment: &str) -> [String; 2] {
        [
            format!("rollout restart deployment/{deployment} -n {namespace}"),
            format!(
                "rollout status deployment/{deployment} -n {namespace} --timeout={}",
                super::ROLLOUT_TIMEOUT
            ),
        ]
    }
}

/// The index a replica's process name (`controller-1`) stands for.
fn replica_index(process: &str) -> Option<usize> {
    process
        .strip_prefix(CONTROLLER_PROCESS)?
        .strip_prefix('-')?
        .parse()
        .ok()
}

fn pod_workload(pod: &str) -> Workload {
    Workload {
        namespace: SHOP,
        deployment: pod.to_owned(),
        selector: format!("{POD_LABEL}={pod}"),
        admin: Some(port::SIDECAR_ADMIN),
    }
}

/// A process as the local provider names it, in Kubernetes terms.
fn process_workload(process: &str) -> anyhow::Result<Workload> {
    let component = |name: &str, port: u16| Workload {
        namespace: NAMESPACE,
        deployment: name.to_owned(),
        selector: format!("app.kubernetes.io/name={name}"),
        admin: Some(port),
    };
    Ok(match process {
        "identity" => component(IDENTITY, port::IDENTITY_ADMIN),
        "controller" => component(CONTROLLER, port::CONTROLLER_ADMIN),
        // One replica (`controller-1`): its Deployment, the pod picked apart.
        p if replica_index(p).is_some() => component(CONTROLLER, port::CONTROLLER_ADMIN),
        "gateway" => component(GATEWAY, port::GATEWAY_ADMIN),
        p => match p.strip_suffix("-sidecar") {
            Some(pod) => pod_workload(pod),
            None => Workload {
                admin: None,
                ..pod_workload(p)
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_map_to_deployments() {
        let w = process_workload("gateway").expect("gateway");
        assert_eq!(
            (w.namespace, w.deployment.as_str(), w.admin),
            (NAMESPACE, GATEWAY, Some(port::GATEWAY_ADMIN))
        );
        let w = process_workload("api-a-sidecar").expect("sidecar");
        assert_eq!(
            (w.namespace, w.deployment.as_str(), w.selector.as_str()),
            (SHOP, "api-a", "meshfed.io/scenario-pod=api-a")
        );
        assert_eq!(w.admin, Some(port::SIDECAR_ADMIN));
        assert_eq!(process_workload("echo").expect("echo").admin, None);
    }

    #[test]
    fn controller_replicas_map_to_the_deployment_its_lease_and_its_pods() {
        // `controller` and one replica of it are the same Deployment.
        for p in ["controller", "controller-1"] {
            let w = process_workload(p).expect(p);
            assert_eq!(
                (w.namespace, w.deployment.as_str(), w.selector.as_str()),
                (
                    NAMESPACE,
                    CONTROLLER,
                    "app.kubernetes.io/name=meshfed-controller"
                )
            );
        }
        assert_eq!(replica_index("controller-1"), Some(1));
        assert_eq!(replica_index("controller"), None);
        assert_eq!(replica_index("controller-x"), None);
        assert_eq!(
            commands::leader(),
            "get lease -n meshfed-system meshfed-controller --ignore-not-found \
             -o jsonpath={.spec.holderIdentity}"
        );
        // Killing the leader: its pod force-deleted, as a crash.
        let pod = "meshfed-controller-6b7d9c-x2x9q";
        assert_eq!(
            commands::kill_pod(NAMESPACE, pod),
            format!("delete pod -n meshfed-system {pod} --grace-period=0 --force --wait=true")
        );
        assert_eq!(
            commands::delete_pod(NAMESPACE, pod),
            format!("delete pod -n meshfed-system {pod} --wait=true")
        );
        // Pausing one replica: fault.sh selects it by a label of its own.
        assert_eq!(
            commands::label_pod(NAMESPACE, pod),
            format!(
                "label pod -n meshfed-system {pod} meshfed.io/scenario-replica={pod} --overwrite"
            )
        );
        assert_eq!(
            commands::pod_selector(pod),
            format!("meshfed.io/scenario-replica={pod}")
        );
        assert_eq!(
            commands::rollout(NAMESPACE, CONTROLLER),
            [
                "rollout restart deployment/meshfed-controller -n meshfed-system".to_owned(),
                "rollout status deployment/meshfed-controller -n meshfed-system --timeout=180s"
                    .to_owned()
            ]
        );
    }
}
