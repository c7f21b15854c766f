//! The verifier accepts a proper SVID chain and refuses each way a peer
//! certificate can be wrong.

use std::time::{Duration, SystemTime};

use meshfed_trust::{CertError, SvidVerifier, TrustBundle, Usage, VerifyError};
use rcgen::SanType;
use rustls_pki_types::CertificateDer;

use meshfed_testkit::pki::{Pki, TD, ca_leaf, good_leaf, id, td, uri};

fn verify(
    pki: &Pki,
    chain: &[CertificateDer<'static>],
) -> Result<meshfed_trust::SpiffeId, VerifyError> {
    verify_with(pki.bundle(), chain, SystemTime::now())
}

fn verify_with(
    bundle: std::sync::Arc<TrustBundle>,
    chain: &[CertificateDer<'static>],
    now: SystemTime,
) -> Result<meshfed_trust::SpiffeId, VerifyError> {
    let v = SvidVerifier::new(bundle, &meshfed_trust::provider());
    let server = v.verify(&chain[0], &chain[1..], now, Usage::Server);
    let client = v.verify(&chain[0], &chain[1..], now, Usage::Client);
    assert_eq!(server, client, "server and client usage agree");
    server
}

fn workload() -> SanType {
    uri(&format!("spiffe://{TD}/ns/shop/sa/api"))
}

#[test]
fn accepts_a_proper_svid() {
    let pki = Pki::new(TD);
    let chain = pki.craft(&good_leaf(vec![workload()]));
    assert_eq!(verify(&pki, &chain), Ok(id("/ns/shop/sa/api")));
    let issued = pki
        .ca
        .issue_workload(&id("/ns/shop/sa/web"), Duration::from_secs(60))
        .expect("issue");
    assert_eq!(verify(&pki, &issued.chain), Ok(id("/ns/shop/sa/web")));
}

#[test]
fn rejects_unknown_root() {
    let ours = Pki::new(TD);
    let theirs = Pki::new(TD); // same trust domain name, different root
    let chain = theirs.craft(&good_leaf(vec![workload()]));
    assert!(
        matches!(verify(&ours, &chain), Err(VerifyError::UnknownIssuer(_))),
        "{:?}",
        verify(&ours, &chain)
    );
    // A chain missing its intermediate does not reach the root either.
    let chain = ours.craft(&good_leaf(vec![workload()]));
    assert!(matches!(
        verify(&ours, &chain[..1]),
        Err(VerifyError::UnknownIssuer(_))
    ));
}

#[test]
fn rejects_expired_and_not_yet_valid() {
    let pki = Pki::new(TD);
    let now = SystemTime::now();

    let mut expired = good_leaf(vec![workload()]);
    expired.not_before = (now - Duration::from_secs(7200)).into();
    expired.not_after = (now - Duration::from_secs(3600)).into();
    // The intermediate was made just now; backdating the leaf past it still fails on the leaf.
    assert_eq!(
        verify(&pki, &pki.craft(&expired)),
        Err(VerifyError::Expired)
    );

    let mut future = good_leaf(vec![workload()]);
    future.not_before = (now + Duration::from_secs(3600)).into();
    future.not_after = (now + Duration::from_secs(7200)).into();
    assert_eq!(
        verify(&pki, &pki.craft(&future)),
        Err(VerifyError::NotYetValid)
    );

    // A good leaf checked at a time when it has expired, or not started.
    let chain = pki
        .ca
        .issue_workload(&id("/ns/shop/sa/api"), Duration::from_secs(600))
        .expect("issue")
        .chain;
    assert_eq!(
        verify_with(pki.bundle(), &chain, now + Duration::from_secs(3600)),
        Err(VerifyError::Expired)
    );
    assert_eq!(
        verify_with(pki.bundle(), &chain, now - Duration::from_secs(3600)),
        Err(VerifyError::NotYetValid)
    );
}

#[test]
fn tolerates_small_clock_skew() {
    let pki = Pki::new(TD);
    let chain = pki
        .ca
        .issue_workload(&id("/ns/shop/sa/api"), Duration::from_secs(600))
        .expect("issue")
        .chain;
    // Our clock 30 s behind the issuer's (leaf not started yet by 30 s at most) or 30 s past expiry.
    let info = meshfed_trust::CertInfo::parse(&chain[0]).expect("parse");
    assert!(
        verify_with(
            pki.bundle(),
            &chain,
            info.not_before - Duration::from_secs(30)
        )
        .is_ok()
    );
    assert!(
        verify_with(
            pki.bundle(),
            &chain,
            info.not_after + Duration::from_secs(30)
        )
        .is_ok()
    );
    assert_eq!(
        verify_with(
            pki.bundle(),
            &chain,
            info.not_after + Duration::from_secs(120)
        ),
        Err(VerifyError::Expired)
    );
}

#[test]
fn rejects_zero_or_two_uri_sans() {
    let pki = Pki::new(TD);
    let none = pki.craft(&good_leaf(vec![]));
    assert_eq!(
        verify(&pki, &none),
        Err(VerifyError::BadCertificate(CertError::NoUriSan))
    );
    let dns_only = pki.craft(&good_leaf(vec![SanType::DnsName(
        "api.shop".try_into().expect("ia5"),
    )]));
    assert_eq!(
        verify(&pki, &dns_only),
        Err(VerifyError::BadCertificate(CertError::NoUriSan))
    );
    let two = pki.craft(&good_leaf(vec![
        workload(),
        uri(&format!("spiffe://{TD}/ns/shop/sa/web")),
    ]));
    assert_eq!(
        verify(&pki, &two),
        Err(VerifyError::BadCertificate(CertError::ManyUriSans(2)))
    );
}

#[test]
fn rejects_non_spiffe_and_malformed_uris() {
    let pki = Pki::new(TD);
    for bad in [
        "https://mesh.example/ns/shop/sa/api",
        "spiffe://mesh.example/ns/../sa/api",
        "spiffe://MESH/ns/a/sa/b",
    ] {
        let chain = pki.craft(&good_leaf(vec![uri(bad)]));
        assert!(
            matches!(
                verify(&pki, &chain),
                Err(VerifyError::BadCertificate(CertError::NotSpiffe(_)))
            ),
            "{bad}: {:?}",
            verify(&pki, &chain)
        );
    }
    // The trust domain's own ID names no workload.
    let chain = pki.craft(&good_leaf(vec![uri(&format!("spiffe://{TD}"))]));
    assert!(matches!(
        verify(&pki, &chain),
        Err(VerifyError::NoWorkload(_))
    ));
}

#[test]
fn rejects_another_trust_domain() {
    let pki = Pki::new(TD);
    // Signed by our own intermediate, but naming another domain.
    let chain = pki.craft(&good_leaf(vec![uri(
        "spiffe://other.example/ns/shop/sa/api",
    )]));
    assert!(matches!(
        verify(&pki, &chain),
        Err(VerifyError::ForeignTrustDomain { .. })
    ));
    // A whole other federation.
    let other = Pki::new("other.example");
    let chain = other.craft(&good_leaf(vec![uri(
        "spiffe://other.example/ns/shop/sa/api",
    )]));
    assert!(matches!(
        verify(&pki, &chain),
        Err(VerifyError::ForeignTrustDomain { .. })
    ));
}

#[test]
fn rejects_a_ca_certificate_as_leaf() {
    let pki = Pki::new(TD);
    let chain = pki.craft(&ca_leaf(vec![workload()]));
    assert_eq!(verify(&pki, &chain), Err(VerifyError::CaAsLeaf));
    // The intermediate itself, presented as a leaf.
    let chain = vec![pki.ca.cert().clone()];
    assert_eq!(verify(&pki, &chain), Err(VerifyError::CaAsLeaf));
}

#[test]
fn rejects_wrong_key_usage() {
    let pki = Pki::new(TD);
    let mut server_only = good_leaf(vec![workload()]);
    server_only.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let chain = pki.craft(&server_only);
    let v = SvidVerifier::new(pki.bundle(), &meshfed_trust::provider());
    assert!(
        v.verify(
            &chain[0],
            &chain[1..],
            SystemTime::now(),
            meshfed_trust::Usage::Server
        )
        .is_ok()
    );
    assert!(matches!(
        v.verify(
            &chain[0],
            &chain[1..],
            SystemTime::now(),
            meshfed_trust::Usage::Client
        ),
        Err(VerifyError::Chain(_))
    ));
}

#[test]
fn accepts_both_roots_during_root_rotation() {
    let old = Pki::new(TD);
    let new_root = meshfed_ca::RootCa::generate(
        &td(),
        meshfed_ca::KeyAlgorithm::EcdsaP256,
        Duration::from_secs(86400 * 365),
    )
    .expect("root");
    // The new root's cluster CA publishes old + new.
    let new = Pki::under(new_root, vec![old.root.cert().clone()]);
    assert_eq!(new.ca.bundle().roots().len(), 2);
    let from_old = old.craft(&good_leaf(vec![workload()]));
    let from_new = new.craft(&good_leaf(vec![workload()]));
    assert!(verify(&new, &from_old).is_ok(), "old leaf during rotation");
    assert!(verify(&new, &from_new).is_ok(), "new leaf during rotation");
    // Before the rotation, the old bundle does not know the new root; after it, the old root is retired.
    assert!(matches!(
        verify(&old, &from_new),
        Err(VerifyError::UnknownIssuer(_))
    ));
    let retired =
        std::sync::Arc::new(TrustBundle::new(td(), [new.root.cert().clone()]).expect("bundle"));
    assert!(matches!(
        verify_with(retired, &from_old, SystemTime::now()),
        Err(VerifyError::UnknownIssuer(_))
    ));
}
