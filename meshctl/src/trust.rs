//! `meshctl trust`: the offline side of the CA hierarchy.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use meshfed_ca::{
    ClusterCa, DEFAULT_INTERMEDIATE_VALIDITY, DEFAULT_LEAF_TTL, DEFAULT_ROOT_VALIDITY,
    KeyAlgorithm, RootCa,
};
use meshfed_trust::{CertInfo, SpiffeId, TrustBundle, TrustDomain, paths};
use serde::Serialize;

#[derive(Debug, Subcommand)]
pub enum TrustCommand {
    /// Create the federation's root CA (keep its key offline).
    ///
    /// Example: meshctl trust init --trust-domain mesh.example --out ./root
    Init(InitArgs),
    /// Issue one cluster's intermediate CA, signed by the root.
    ///
    /// Example: meshctl trust issue-cluster --root ./root --cluster east --out ./east-ca
    IssueCluster(IssueClusterArgs),
    /// Issue a workload certificate offline (hosts without an identity service, tests).
    ///
    /// Example: meshctl trust issue-workload --ca ./east-ca --spiffe-id spiffe://mesh.example/ns/shop/sa/api --out ./api
    IssueWorkload(IssueWorkloadArgs),
    /// Show what a certificate file holds: subject, SPIFFE ID, issuer chain, validity, fingerprint.
    ///
    /// Example: meshctl trust inspect ./api/leaf.crt -o json
    /// (`-o spiffe-bundle` on a root.crt prints it as SPIFFE bundle JSON)
    Inspect(InspectArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Trust domain shared by every linked cluster, e.g. mesh.example.
    #[arg(long)]
    trust_domain: String,
    /// Directory to write root.crt and root.key into.
    #[arg(long)]
    out: PathBuf,
    /// Root lifetime, e.g. 87600h.
    #[arg(long, value_parser = humantime::parse_duration, default_value = humantime_default(DEFAULT_ROOT_VALIDITY))]
    validity: Duration,
    /// Key algorithm of the root.
    #[arg(long, value_enum, default_value = "p256")]
    key_algorithm: KeyAlg,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum KeyAlg {
    /// ECDSA P-256.
    P256,
    /// ECDSA P-384.
    P384,
}

#[derive(Debug, Args)]
pub struct IssueClusterArgs {
    /// Root directory (root.crt, root.key).
    #[arg(long)]
    root: PathBuf,
    /// Cluster name (a DNS label).
    #[arg(long)]
    cluster: String,
    /// Directory to write intermediate.crt, intermediate.key and the bundle root.crt into.
    #[arg(long)]
    out: PathBuf,
    /// Intermediate lifetime, e.g. 8760h (cut short to the root's expiry).
    #[arg(long, value_parser = humantime::parse_duration, default_value = humantime_default(DEFAULT_INTERMEDIATE_VALIDITY))]
    validity: Duration,
    /// Another root to trust besides this one (during a root rotation, the old root); PEM or SPIFFE bundle JSON. Repeatable.
    #[arg(long = "extra-root")]
    extra_roots: Vec<PathBuf>,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
pub struct IssueWorkloadArgs {
    /// Cluster CA directory (intermediate.crt, intermediate.key, root.crt).
    #[arg(long)]
    ca: PathBuf,
    /// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>
    #[arg(long)]
    spiffe_id: String,
    /// Directory to write leaf.crt, leaf.key, intermediate.crt and root.crt into.
    #[arg(long)]
    out: PathBuf,
    /// Leaf lifetime, e.g. 24h.
    #[arg(long, value_parser = humantime::parse_duration, default_value = humantime_default(DEFAULT_LEAF_TTL))]
    ttl: Duration,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A PEM file of one or more certificates.
    file: PathBuf,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: Output,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
    /// The file's roots as a SPIFFE trust bundle (JWK set), for SPIFFE-aware peers.
    SpiffeBundle,
}

fn humantime_default(d: Duration) -> clap::builder::OsStr {
    humantime::format_duration(d).to_string().into()
}

pub fn run(cmd: TrustCommand) -> anyhow::Result<()> {
    match cmd {
        TrustCommand::Init(a) => init(a),
        TrustCommand::IssueCluster(a) => issue_cluster(a),
        TrustCommand::IssueWorkload(a) => issue_workload(a),
        TrustCommand::Inspect(a) => inspect(a),
    }
}

fn init(a: InitArgs) -> anyhow::Result<()> {
    let td = TrustDomain::new(&a.trust_domain).context("--trust-domain")?;
    let alg = match a.key_algorithm {
        KeyAlg::P256 => KeyAlgorithm::EcdsaP256,
        KeyAlg::P384 => KeyAlgorithm::EcdsaP384,
    };
    let root = RootCa::generate(&td, alg, a.validity)?;
    root.save(&a.out, a.force)?;
    let info = CertInfo::parse(root.cert())?;
    println!(
        "root CA for trust domain {td} written to {}",
        a.out.display()
    );
    println!("  fingerprint  {}", info.fingerprint_sha256);
    println!(
        "  expires      {}",
        humantime::format_rfc3339_seconds(info.not_after)
    );
    println!(
        "keep {} offline; hand out {} only",
        file(&a.out, paths::ROOT_KEY),
        file(&a.out, paths::ROOT_CERT)
    );
    Ok(())
}

fn issue_cluster(a: IssueClusterArgs) -> anyhow::Result<()> {
    let root = RootCa::load(&a.root).context("loading --root")?;
    let mut extra = Vec::new();
    for path in &a.extra_roots {
        let bundle =
            TrustBundle::from_file(root.trust_domain().clone(), path).context("--extra-root")?;
        extra.extend(bundle.roots().iter().cloned());
    }
    let ca = root.issue_cluster(&a.cluster, a.validity, extra)?;
    ca.save(&a.out, a.force)?;
    let info = CertInfo::parse(ca.cert())?;
    println!(
        "intermediate CA for cluster {} written to {}",
        a.cluster,
        a.out.display()
    );
    println!("  trust domain {}", ca.trust_domain());
    println!("  fingerprint  {}", info.fingerprint_sha256);
    println!(
        "  expires      {}",
        humantime::format_rfc3339_seconds(info.not_after)
    );
    println!("  trusts {} root(s)", ca.bundle().roots().len());
    Ok(())
}

fn issue_workload(a: IssueWorkloadArgs) -> anyhow::Result<()> {
    let id = SpiffeId::parse(&a.spiffe_id).context("--spiffe-id")?;
    let ca = ClusterCa::load(&a.ca).context("loading --ca")?;
    let out = &a.out;
    let issued = ca.issue_workload(&id, a.ttl)?;
    issued.save(out, a.force)?;
    let info = CertInfo::parse(&issued.chain[0])?;
    println!("workload certificate for {id} written to {}", out.display());
    println!(
        "  expires      {}",
        humantime::format_rfc3339_seconds(info.not_after)
    );
    Ok(())
}

#[derive(Debug, Serialize)]
struct CertView {
    subject: String,
    issuer: String,
    spiffe_id: Option<String>,
    uri_sans: Vec<String>,
    is_ca: bool,
    not_before: String,
    not_after: String,
    expired: bool,
    fingerprint_sha256: String,
    /// Whether the next certificate in the file issued this one (by name).
    issued_by_next: Option<bool>,
}

fn inspect(a: InspectArgs) -> anyhow::Result<()> {
    let certs = meshfed_trust::read_certs(&a.file)?;
    let now = std::time::SystemTime::now();
    let infos = certs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            CertInfo::parse(c).with_context(|| format!("{} certificate #{i}", a.file.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let views: Vec<CertView> = infos
        .iter()
        .enumerate()
        .map(|(i, info)| CertView {
            subject: info.subject.clone(),
            issuer: info.issuer.clone(),
            spiffe_id: info.spiffe_id().ok().map(|id| id.to_string()),
            uri_sans: info.uri_sans.clone(),
            is_ca: info.is_ca,
            not_before: humantime::format_rfc3339_seconds(info.not_before).to_string(),
            not_after: humantime::format_rfc3339_seconds(info.not_after).to_string(),
            expired: info.not_after < now,
            fingerprint_sha256: info.fingerprint_sha256.clone(),
            issued_by_next: infos.get(i + 1).map(|next| next.subject == info.issuer),
        })
        .collect();
    match a.output {
        Output::SpiffeBundle => {
            let td = infos
                .iter()
                .find_map(|i| i.spiffe_id().ok())
                .map(|id| id.trust_domain().clone())
                .context(
                    "no certificate in the file names its trust domain (spiffe://<td> URI SAN)",
                )?;
            let bundle = TrustBundle::new(td, certs)
                .context("the file's certificates do not form a trust bundle")?;
            println!("{}", bundle.to_spiffe_json(1)?);
        }
        Output::Json => println!("{}", serde_json::to_string_pretty(&views)?),
        Output::Text => {
            for (i, v) in views.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                println!("certificate #{i}");
                println!("  subject      {}", v.subject);
                println!("  issuer       {}", v.issuer);
                println!("  spiffe id    {}", v.spiffe_id.as_deref().unwrap_or("-"));
                println!("  ca           {}", if v.is_ca { "yes" } else { "no" });
                println!("  not before   {}", v.not_before);
                println!(
                    "  not after    {}{}",
                    v.not_after,
                    if v.expired { " (EXPIRED)" } else { "" }
                );
                println!("  fingerprint  {}", v.fingerprint_sha256);
            }
        }
    }
    Ok(())
}

fn file(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}
