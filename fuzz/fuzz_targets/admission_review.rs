//! The injector answers whatever the API server (or anyone reaching its
//! Service) POSTs: a review must never panic, and the answer is either an
//! AdmissionReview (200) that echoes the request's uid, or a 400 sentence.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshfed_injector::{NamespacePolicies, PodInjector, SidecarTemplate, review};
use meshfed_trust::TrustDomain;

fuzz_target!(|data: &[u8]| {
    let injector = PodInjector {
        template: SidecarTemplate {
            cluster: "east".into(),
            region: None,
            trust_domain: TrustDomain::new("mesh.test").expect("td"),
            image: "registry.test/meshfed-sidecar:1".into(),
            identity_server_id: "spiffe://mesh.test/ns/meshfed-system/sa/meshfed-identity".into(),
        },
        namespaces: NamespacePolicies::default(),
    };
    let answer = review(data, &injector);
    if answer.status == 200 {
        let v: serde_json::Value = serde_json::from_slice(&answer.body).expect("an AdmissionReview");
        assert_eq!(v["kind"], "AdmissionReview");
        assert!(v["response"]["uid"].as_str().is_some_and(|u| !u.is_empty()));
    } else {
        assert_eq!(answer.status, 400);
        assert!(answer.body.starts_with(b"malformed AdmissionReview: "));
    }
});
