//! Certificate fixtures for tests: a real root and cluster CA made with
//! meshfed-identity, plus an rcgen issuer over the same intermediate key so
//! tests can craft leaves that break one rule at a time. Panics on failure,
//! as test set-up does.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshfed_ca::{ClusterCa, KeyAlgorithm, RootCa};
use meshfed_trust::{Credentials, SpiffeId, TrustBundle, TrustDomain};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;

pub const TD: &str = "mesh.example";

pub fn td() -> TrustDomain {
    TrustDomain::new(TD).expect("valid trust domain")
}

pub fn id(path: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://{TD}{path}")).expect("valid id")
}

/// A root, one cluster CA under it, and its directory on disk.
pub struct Pki {
    pub root: RootCa,
    pub ca: Arc<ClusterCa>,
    pub dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("trust_domain", self.ca.trust_domain())
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl Pki {
    pub fn new(trust_domain: &str) -> Self {
        let td = TrustDomain::new(trust_domain).expect("td");
        let root = RootCa::generate(
            &td,
            KeyAlgorithm::EcdsaP256,
            Duration::from_secs(3600 * 24 * 365),
        )
        .expect("root");
        Self::under(root, Vec::new())
    }

    /// A cluster CA under `root`, trusting `extra_roots` too.
    pub fn under(root: RootCa, extra_roots: Vec<CertificateDer<'static>>) -> Self {
        let ca = root
            .issue_cluster("east", Duration::from_secs(3600 * 24 * 30), extra_roots)
            .expect("cluster");
        let dir = tempfile::tempdir().expect("tempdir");
        ca.save(dir.path(), false).expect("save");
        let key = meshfed_trust::read_key(&dir.path().join(meshfed_trust::paths::INTERMEDIATE_KEY))
            .expect("key");
        let key = KeyPair::try_from(&key).expect("keypair");
        let issuer = Issuer::from_ca_cert_der(ca.cert(), key).expect("issuer");
        Self {
            root,
            ca: Arc::new(ca),
            dir,
            issuer,
        }
    }

    pub fn ca_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    pub fn bundle(&self) -> Arc<TrustBundle> {
        Arc::new(self.ca.bundle().clone())
    }

    /// Credentials for `path` issued the normal way.
    pub fn creds(&self, path: &str) -> Credentials {
        let w = self
            .ca
            .issue_workload(&id(path), Duration::from_secs(3600))
            .expect("issue");
        w.into_credentials().expect("creds")
    }

    /// A leaf crafted from `params`, signed by the real intermediate:
    /// returns the chain (leaf, intermediate).
    pub fn craft(&self, params: &CertificateParams) -> Vec<CertificateDer<'static>> {
        let key = KeyPair::generate().expect("key");
        let leaf = params
            .signed_by(&key, &self.issuer)
            .expect("sign")
            .der()
            .clone();
        vec![leaf, self.ca.cert().clone()]
    }
}

/// Leaf parameters that are right in every respect; tests break one.
pub fn good_leaf(sans: Vec<SanType>) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.subject_alt_names = sans;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = SystemTime::now();
    p.not_before = (now - Duration::from_secs(600)).into();
    p.not_after = (now + Duration::from_secs(3600)).into();
    p
}

pub fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().expect("ia5"))
}

pub fn ca_leaf(sans: Vec<SanType>) -> CertificateParams {
    let mut p = good_leaf(sans);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}
