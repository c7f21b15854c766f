//! A Certify request's CSR is bytes from the network: the identity service
//! must answer every input with a status, never a panic.
#![no_main]

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use meshfed_api::identity::CertifyRequest;
use meshfed_api::identity::identity_server::Identity;
use meshfed_ca::{KeyAlgorithm, RootCa};
use meshfed_identity::{Authenticator, BootstrapTokens, IdentityService};
use meshfed_trust::TrustDomain;

const TOKEN: &str = "fuzz-token-0123456789";

static SERVICE: LazyLock<IdentityService> = LazyLock::new(|| {
    let td = TrustDomain::new("fuzz.example").expect("td");
    let root =
        RootCa::generate(&td, KeyAlgorithm::EcdsaP256, Duration::from_secs(86400)).expect("root");
    let ca = Arc::new(
        root.issue_cluster("east", Duration::from_secs(86400), Vec::new())
            .expect("ca"),
    );
    let auth = Authenticator::Bootstrap(
        BootstrapTokens::parse(&format!("shop/api {TOKEN}\n")).expect("tokens"),
    );
    let mut registry = prometheus_client::registry::Registry::default();
    IdentityService::new(ca, auth, Duration::from_secs(3600), &mut registry)
});

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
});

fuzz_target!(|data: &[u8]| {
    let req = CertifyRequest {
        csr_der: data.to_vec(),
        credential: TOKEN.into(),
    };
    let _ = RUNTIME.block_on(SERVICE.certify(tonic::Request::new(req)));
});
