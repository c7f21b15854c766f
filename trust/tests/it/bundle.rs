//! Trust bundles from PEM and from SPIFFE bundle JSON.

use meshfed_trust::{BundleError, TrustBundle};

use meshfed_testkit::pki::{Pki, TD, td};

#[test]
fn pem_and_spiffe_json_round_trip() {
    let a = Pki::new(TD);
    let b = Pki::new(TD);
    let pem = meshfed_trust::certs_to_pem(&[a.root.cert().clone(), b.root.cert().clone()]);
    let bundle = TrustBundle::from_pem(td(), pem.as_bytes()).expect("pem bundle");
    assert_eq!(bundle.roots().len(), 2);

    let json = bundle.to_spiffe_json(7).expect("json");
    let doc: serde_json::Value = serde_json::from_str(&json).expect("valid json");
    assert_eq!(doc["spiffe_sequence"], 7);
    assert_eq!(doc["keys"][0]["use"], "x509-svid");
    assert_eq!(doc["keys"][0]["kty"], "EC");
    assert_eq!(doc["keys"][0]["crv"], "P-256");
    let back = TrustBundle::from_spiffe_json(td(), &json).expect("parse back");
    assert_eq!(back.roots(), bundle.roots());
}

#[test]
fn spiffe_json_skips_jwt_keys_and_rejects_inconsistent_keys() {
    let a = Pki::new(TD);
    let b = Pki::new(TD);
    let single = TrustBundle::new(td(), [a.root.cert().clone()]).expect("bundle");
    let mut doc: serde_json::Value =
        serde_json::from_str(&single.to_spiffe_json(1).expect("json")).expect("json");

    // A JWT-SVID key alongside is ignored.
    let mut jwt = doc["keys"][0].clone();
    jwt["use"] = "jwt-svid".into();
    jwt["x5c"] = serde_json::json!([]);
    doc["keys"].as_array_mut().expect("keys").push(jwt);
    assert_eq!(
        TrustBundle::from_spiffe_json(td(), &doc.to_string())
            .expect("ok")
            .roots()
            .len(),
        1
    );

    // JWK parameters that do not match the x5c certificate.
    let other = TrustBundle::new(td(), [b.root.cert().clone()]).expect("bundle");
    let other_doc: serde_json::Value =
        serde_json::from_str(&other.to_spiffe_json(1).expect("json")).expect("json");
    let mut mismatched = doc.clone();
    mismatched["keys"][0]["x"] = other_doc["keys"][0]["x"].clone();
    assert!(matches!(
        TrustBundle::from_spiffe_json(td(), &mismatched.to_string()),
        Err(BundleError::Json(_))
    ));

    // Two certificates in one x5c.
    let mut two = doc.clone();
    two["keys"][0]["x5c"] =
        serde_json::json!([doc["keys"][0]["x5c"][0], other_doc["keys"][0]["x5c"][0]]);
    assert!(matches!(
        TrustBundle::from_spiffe_json(td(), &two.to_string()),
        Err(BundleError::Json(_))
    ));

    // No X.509 key at all, and garbage.
    assert!(matches!(
        TrustBundle::from_spiffe_json(td(), r#"{"keys":[]}"#),
        Err(BundleError::Empty)
    ));
    assert!(matches!(
        TrustBundle::from_spiffe_json(td(), "{not json"),
        Err(BundleError::Json(_))
    ));
}

#[test]
fn bundles_refuse_leaves_and_empty_input() {
    let pki = Pki::new(TD);
    let leaf = pki
        .ca
        .issue_workload(
            &meshfed_testkit::pki::id("/ns/a/sa/b"),
            std::time::Duration::from_secs(60),
        )
        .expect("issue");
    assert!(matches!(
        TrustBundle::new(td(), [leaf.chain[0].clone()]),
        Err(BundleError::NotCa(0))
    ));
    assert!(matches!(
        TrustBundle::new(td(), []),
        Err(BundleError::Empty)
    ));
    assert!(TrustBundle::from_pem(td(), b"no pem here").is_err());
}

#[test]
fn bundle_files_load_as_pem_or_spiffe_json() {
    let a = Pki::new(TD);
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = TrustBundle::new(td(), [a.root.cert().clone()]).expect("bundle");
    let json = dir.path().join("bundle.json");
    std::fs::write(
        &json,
        format!("\n  {}", bundle.to_spiffe_json(1).expect("json")),
    )
    .expect("write");
    let pem = dir.path().join("root.crt");
    std::fs::write(&pem, meshfed_trust::certs_to_pem(bundle.roots())).expect("write");
    assert_eq!(
        TrustBundle::from_file(td(), &json)
            .expect("json file")
            .roots(),
        bundle.roots()
    );
    assert_eq!(
        TrustBundle::from_file(td(), &pem)
            .expect("pem file")
            .roots(),
        bundle.roots()
    );
    std::fs::write(&json, "{\"keys\": [{\"use\": \"x509-svid\"}]}").expect("write");
    let err = TrustBundle::from_file(td(), &json)
        .expect_err("malformed")
        .to_string();
    assert!(err.contains("bundle.json"), "errors name the file: {err}");
}
