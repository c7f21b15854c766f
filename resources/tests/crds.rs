//! The CRD YAML in `deploy/crds/` is generated from the Rust types. This
//! test fails when the two drift; regenerate with
//! `MESHFED_UPDATE_CRDS=1 cargo test -p meshfed-resources --test crds`.

use std::path::PathBuf;

use meshfed_resources::crd::{self, FailoverPolicy, Link, LocalityKey};

fn crd_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds")
}

fn render(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> String {
    let yaml = serde_saphyr::to_string(crd).expect("crd renders as yaml");
    format!(
        "# Generated from the Rust types in resources/src/crd; do not edit.\n# Regenerate: MESHFED_UPDATE_CRDS=1 cargo test -p meshfed-resources --test crds\n{yaml}"
    )
}

#[test]
fn deploy_crds_match_the_rust_types() {
    let update = std::env::var_os("MESHFED_UPDATE_CRDS").is_some();
    let mut drifted = Vec::new();
    for crd in crd::all() {
        let name = crd.metadata.name.clone().expect("crd name");
        let path = crd_dir().join(format!("{name}.yaml"));
        let want = render(&crd);
        if update {
            std::fs::create_dir_all(crd_dir()).expect("mkdir");
            std::fs::write(&path, &want).expect("write crd");
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(want.as_str()) {
            drifted.push(path.display().to_string());
        }
    }
    assert!(
        drifted.is_empty(),
        "CRD YAML drifted from the Rust types: {drifted:?}; run MESHFED_UPDATE_CRDS=1 cargo test -p meshfed-resources --test crds"
    );
}

#[test]
fn crds_have_status_subresources_and_printer_columns() {
    for crd in crd::all() {
        assert_eq!(crd.spec.group, crd::GROUP);
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{:?} status",
            crd.metadata.name
        );
        let columns = version
            .additional_printer_columns
            .as_ref()
            .expect("printer columns");
        assert!(columns.len() >= 3, "{:?}", crd.metadata.name);
    }
}

#[test]
fn manifests_parse_with_defaults() {
    let link: Link = serde_saphyr::from_str(
        r#"
apiVersion: meshfed.io/v1alpha1
kind: Link
metadata: {name: west, namespace: meshfed-system}
spec:
  cluster: west
  gateway:
    addresses: [gw.west.example, 127.0.0.2]
    port: 15443
    identity: spiffe://mesh.example/ns/meshfed-system/sa/meshfed-gateway
    controllerIdentity: spiffe://mesh.example/ns/meshfed-system/sa/meshfed-controller
  selector:
    matchLabels: {tier: public}
"#,
    )
    .expect("link parses");
    assert_eq!(link.spec.lease_ttl_seconds, 5);
    assert_eq!(link.spec.probe.failure_threshold, 3);
    assert_eq!(link.spec.gateway.resolve_period_seconds, 30);

    let fp: FailoverPolicy = serde_saphyr::from_str(
        r#"
apiVersion: meshfed.io/v1alpha1
kind: FailoverPolicy
metadata: {name: api, namespace: shop}
spec:
  service: api
  locality: [zone, region]
  spillThreshold: 0.5
  outlierDetection: {consecutiveFailures: 3}
"#,
    )
    .expect("policy parses");
    assert_eq!(
        fp.spec.locality,
        Some(vec![LocalityKey::Zone, LocalityKey::Region])
    );
    assert_eq!(fp.spec.outlier_detection.consecutive_failures, 3);
    assert_eq!(fp.spec.outlier_detection.max_ejected_percent, 50);
    assert_eq!(fp.spec.retry_budget.percent, 20);
}
