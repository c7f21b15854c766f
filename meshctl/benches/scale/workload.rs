//! What the bench writes into a cluster's store directory: N exported
//! Services in namespace `bench`, each with 2 running Pods and the
//! EndpointSlice the endpoint-slice controller writes for them (label
//! `kubernetes.io/service-name`, `targetRef` to each Pod with its uid,
//! `conditions.ready`, zone), 1,000 objects a file; and the one-service
//! files the change phase exports, changes and unexports. Every file is
//! written whole (temp file, then rename): the store never reads half.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use meshfed_api::labels;
use meshfed_resources::objects;
use serde::Serialize;

/// The namespace of every bench service (and of their mirrors).
pub const NAMESPACE: &str = "bench";
/// The Service port a subscriber asks for.
pub const PORT: u16 = 80;
/// The Pods' port, as the slices name it.
const TARGET_PORT: u16 = 8080;
/// A Service, its slice and 2 Pods: 1,000 objects a file.
const SERVICES_PER_FILE: usize = 250;
/// The folder of the bench's files inside a store directory.
const DIR: &str = "bench";

/// The name of bulk service `j`.
pub fn service_name(j: usize) -> String {
    format!("s-{j:05}")
}

/// The exporting cluster `cluster` (from 0) in `zones`: where its Pods
/// are, and how its files are made.
#[derive(Debug, Clone)]
pub struct Exporter {
    pub cluster: usize,
    pub zones: Vec<String>,
}

impl Exporter {
    /// Pod `k` of the `j`-th service of this cluster: an address of its own
    /// in 127.(200 + cluster).0.0/16 (loopback; no one dials it).
    fn pod_ip(&self, j: usize, k: usize) -> String {
        let n = 2 * j + k + 1;
        format!("127.{}.{}.{}", 200 + self.cluster, n >> 8, n & 0xff)
    }

    /// Two ready endpoints in the first two zones, Pods running as the
    /// service's own account.
    fn workload(&self, j: usize, name: &str) -> (Vec<Pod>, EndpointSlice) {
        let zone = |k: usize| Some(self.zones[k % self.zones.len()].as_str());
        let (ip0, ip1) = (self.pod_ip(j, 0), self.pod_ip(j, 1));
        objects::pods_and_slice(
            NAMESPACE,
            name,
            name,
            &[("http", TARGET_PORT)],
            &[(&ip0, zone(0), true), (&ip1, zone(1), true)],
        )
    }

    /// The manifests of services `0..n`, file by file: `(file name, text)`.
    /// The first file also holds the Nodes the Pods run on.
    pub fn services(&self, n: usize) -> anyhow::Result<Vec<(String, String)>> {
        let mut files = Vec::new();
        for first in (0..n).step_by(SERVICES_PER_FILE) {
            let mut text = String::new();
            if first == 0 {
                for zone in &self.zones {
                    push(&mut text, &node(zone))?;
                }
            }
            for j in first..n.min(first + SERVICES_PER_FILE) {
                let name = service_name(j);
                push(
                    &mut text,
                    &objects::service(NAMESPACE, &name, &[("http", PORT)], true),
                )?;
                let (pods, slice) = self.workload(j, &name);
                push(&mut text, &slice)?;
                for p in &pods {
                    push(&mut text, p)?;
                }
            }
            files.push((
                format!("services-{:03}.yaml", first / SERVICES_PER_FILE),
                text,
            ));
        }
        Ok(files)
    }
}

/// The Node `objects::pods_and_slice` puts a zone's Pods on.
fn node(zone: &str) -> Node {
    let name = format!("node-{zone}");
    Node {
        metadata: ObjectMeta {
            labels: Some(
                [
                    (labels::ZONE.to_owned(), zone.to_owned()),
                    ("kubernetes.io/hostname".to_owned(), name.clone()),
                ]
                .into(),
            ),
            name: Some(name),
            ..ObjectMeta::default()
        },
        ..Node::default()
    }
}

fn push(text: &mut String, object: &impl Serialize) -> anyhow::Result<()> {
    text.push_str("---\n");
    text.push_str(&serde_saphyr::to_string(object).context("YAML")?);
    Ok(())
}

/// Writes `text` to `state_dir/bench/name` whole; returns when the new file
/// took the old one's place (the moment the store can see it).
pub fn write(state_dir: &Path, name: &str, text: &str) -> anyhow::Result<Instant> {
    let dir = state_dir.join(DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // Not `*.yaml`: the store does not read it.
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(Instant::now())
}

/// Mirrors of bench services a store holds: the files the controller
/// writes as `mirrors/<namespace>/<name>.yaml` (the file store's layout).
pub fn mirrors(state_dir: &Path) -> usize {
    let dir: PathBuf = state_dir.join("mirrors").join(NAMESPACE);
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".yaml"))
            .count()
    })
}

/// One service of the change phase, in a file of its own: exported, then
/// one endpoint not ready, then unexported.
#[derive(Debug)]
pub struct Changing {
    pub name: String,
    file: String,
    service: Service,
    slice: EndpointSlice,
    pods: Vec<Pod>,
}

impl Changing {
    /// Change service `i`; its Pods' addresses follow the `n` bulk services'.
    pub fn new(at: &Exporter, n: usize, i: usize) -> Self {
        let name = format!("p-{i:03}");
        let (pods, slice) = at.workload(n + i, &name);
        Self {
            file: format!("change-{i:03}.yaml"),
            service: objects::service(NAMESPACE, &name, &[("http", PORT)], true),
            name,
            slice,
            pods,
        }
    }

    fn save(&self, state_dir: &Path) -> anyhow::Result<Instant> {
        let mut text = String::new();
        push(&mut text, &self.service)?;
        push(&mut text, &self.slice)?;
        for p in &self.pods {
            push(&mut text, p)?;
        }
        write(state_dir, &self.file, &text)
    }

    /// Makes `change` and writes the file; returns when the store can see it.
    pub fn apply(&mut self, change: Change, state_dir: &Path) -> anyhow::Result<Instant> {
        match change {
            // Written as created: exported, 2 ready endpoints.
            Change::Export => {}
            // As the endpoint-slice controller writes a Pod that failed its
            // readiness probe.
            Change::EndpointNotReady => {
                let ep = self
                    .slice
                    .endpoints
                    .as_mut()
                    .and_then(|e| e.first_mut())
                    .context("the slice has endpoints")?;
                let c = ep.conditions.get_or_insert_default();
                c.ready = Some(false);
                c.serving = Some(false);
            }
            // What `meshctl unexport` does.
            Change::Unexport => {
                if let Some(l) = self.service.metadata.labels.as_mut() {
                    l.remove(labels::EXPORTED);
                }
            }
        }
        self.save(state_dir)
    }
}

/// The changes timed, in the order each change service goes through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Export,
    EndpointNotReady,
    Unexport,
}

impl Change {
    pub const ALL: [Change; 3] = [Change::Export, Change::EndpointNotReady, Change::Unexport];

    pub fn name(self) -> &'static str {
        match self {
            Change::Export => "export",
            Change::EndpointNotReady => "endpoint not ready",
            Change::Unexport => "unexport",
        }
    }

    /// The healthy endpoints the importer's remote group shows once the
    /// change arrived (`None`: no group, the service is gone from there).
    pub fn remote_healthy(self) -> Option<u32> {
        match self {
            Change::Export => Some(2),
            Change::EndpointNotReady => Some(1),
            Change::Unexport => None,
        }
    }
}
