//! A peer's certificate chain is bytes from the network: the verifier must
//! refuse garbage without panicking.
#![no_main]

use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use meshfed_ca::{KeyAlgorithm, RootCa};
use meshfed_trust::{SvidVerifier, TrustBundle, TrustDomain, Usage};
use rustls_pki_types::CertificateDer;

static VERIFIER: LazyLock<SvidVerifier> = LazyLock::new(|| {
    let td = TrustDomain::new("fuzz.example").expect("td");
    let root =
        RootCa::generate(&td, KeyAlgorithm::EcdsaP256, Duration::from_secs(86400)).expect("root");
    let bundle = Arc::new(TrustBundle::new(td, [root.cert().clone()]).expect("bundle"));
    SvidVerifier::new(bundle, &meshfed_trust::provider())
});

fuzz_target!(|data: &[u8]| {
    // Split the input into up to four "certificates" at 0xff 0x00 markers.
    let parts: Vec<CertificateDer<'_>> = data
        .split(|b| *b == 0xff)
        .take(4)
        .map(CertificateDer::from)
        .collect();
    if let Some((leaf, rest)) = parts.split_first() {
        let _ = VERIFIER.verify(leaf, rest, SystemTime::now(), Usage::Server);
        let _ = meshfed_trust::CertInfo::parse(leaf);
    }
});
