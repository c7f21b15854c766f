//! Validation of Meshfed's custom resources. A bad spec is rejected with an
//! `Accepted=False` condition naming every field at fault and why; nothing
//! else about it is acted on.

use meshfed_api::sni::is_dns_label;
use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use meshfed_resources::crd::{
    CONDITION_ACCEPTED, FailoverPolicySpec, LinkSpec, RateLimitPolicySpec, TokenBucket,
};
use meshfed_trust::SpiffeId;

/// Most gateway addresses a Link may list.
const MAX_ADDRESSES: usize = 16;

/// One field of a spec that is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// JSON path of the field, e.g. `spec.gateway.addresses[1]`.
    pub field: String,
    /// What is wrong, and what is expected.
    pub reason: String,
}

#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn add(&mut self, field: impl fmt::Display, reason: impl Into<String>) {
        self.0.push(FieldError {
            field: field.to_string(),
            reason: reason.into(),
        });
    }

    fn range(&mut self, field: &str, value: u32, min: u32, max: u32) {
        if !(min..=max).contains(&value) {
            self.add(
                field,
                format!("must be between {min} and {max} (got {value})"),
            );
        }
    }

    fn finish(self) -> Result<(), Vec<FieldError>> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0)
        }
    }
}

/// Checks a Link spec; every fault is reported, not just the first.
pub fn validate_link(spec: &LinkSpec) -> Result<(), Vec<FieldError>> {
    let mut e = Errors::default();
    if !is_dns_label(&spec.cluster) {
        e.add(
            "spec.cluster",
            format!(
                "{:?} is not a DNS label (1-63 of a-z, 0-9, '-')",
                spec.cluster
            ),
        );
    }
    if let Some(region) = &spec.region
        && !is_dns_label(region)
    {
        e.add(
            "spec.region",
            format!("{region:?} is not a DNS label (1-63 of a-z, 0-9, '-')"),
        );
    }
    let gw = &spec.gateway;
    if gw.addresses.is_empty() {
        e.add("spec.gateway.addresses", "at least one address is needed");
    } else if gw.addresses.len() > MAX_ADDRESSES {
        e.add(
            "spec.gateway.addresses",
            format!(
                "at most {MAX_ADDRESSES} addresses (got {})",
                gw.addresses.len()
            ),
        );
    }
    for (i, addr) in gw.addresses.iter().enumerate() {
        if addr.parse::<IpAddr>().is_err() && !is_dns_name(addr) {
            e.add(
                format!("spec.gateway.addresses[{i}]"),
                format!("{addr:?} is neither an IP address nor a DNS name"),
            );
        }
    }
    if gw.port == 0 {
        e.add("spec.gateway.port", "must be between 1 and 65535 (got 0)");
    }
    for (field, id) in [
        ("spec.gateway.identity", &gw.identity),
        ("spec.gateway.controllerIdentity", &gw.controller_identity),
    ] {
        match SpiffeId::parse(id) {
            Ok(parsed) if parsed.workload().is_ok() => {}
            Ok(_) => e.add(field, format!("{id} is not of the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>")),
            Err(err) => e.add(field, err.to_string()),
        }
    }
    e.range(
        "spec.gateway.resolvePeriodSeconds",
        gw.resolve_period_seconds,
        1,
        3600,
    );
    let probe = &spec.probe;
    e.range("spec.probe.periodSeconds", probe.period_seconds, 1, 300);
    e.range("spec.probe.timeoutSeconds", probe.timeout_seconds, 1, 300);
    if probe.timeout_seconds > probe.period_seconds {
        e.add(
            "spec.probe.timeoutSeconds",
            format!(
                "must not exceed spec.probe.periodSeconds ({})",
                probe.period_seconds
            ),
        );
    }
    e.range(
        "spec.probe.failureThreshold",
        probe.failure_threshold,
        1,
        100,
    );
    e.range("spec.leaseTtlSeconds", spec.lease_ttl_seconds, 1, 3600);
    e.range(
        "spec.controlPlaneGraceSeconds",
        spec.control_plane_grace_seconds,
        0,
        meshfed_resources::crd::MAX_CONTROL_PLANE_GRACE_SECONDS,
    );
    if let Some(selector) = &spec.selector {
        validate_selector(&mut e, "spec.selector", selector);
    }
    e.finish()
}

/// Checks a FailoverPolicy spec; every fault is reported, not just the first.
pub fn validate_failover_policy(spec: &FailoverPolicySpec) -> Result<(), Vec<FieldError>> {
    let mut e = Errors::default();
    if !is_dns_label(&spec.service) {
        e.add(
            "spec.service",
            format!("{:?} is not a Service name (a DNS label)", spec.service),
        );
    }
    if spec.locality.is_some() && spec.clusters.is_some() {
        e.add(
            "spec.clusters",
            "set either spec.locality or spec.clusters, not both",
        );
    }
    if let Some(locality) = &spec.locality {
        if locality.is_empty() {
            e.add(
                "spec.locality",
                "must not be empty (omit it for the default order)",
            );
        }
        let mut seen = HashSet::new();
        for (i, key) in locality.iter().enumerate() {
            if !seen.insert(*key) {
                e.add(
                    format!("spec.locality[{i}]"),
                    format!("{key:?} is listed twice"),
                );
            }
        }
    }
    if let Some(clusters) = &spec.clusters {
        if clusters.is_empty() {
            e.add(
                "spec.clusters",
                "must not be empty (omit it for the default order)",
            );
        }
        let mut seen = HashSet::new();
        for (i, c) in clusters.iter().enumerate() {
            if !is_dns_label(c) {
                e.add(
                    format!("spec.clusters[{i}]"),
                    format!("{c:?} is not a cluster name (a DNS label)"),
                );
            } else if !seen.insert(c.as_str()) {
                e.add(
                    format!("spec.clusters[{i}]"),
                    format!("{c:?} is listed twice"),
                );
            }
        }
    }
    let spill = spec.spill_threshold;
    if !(spill.is_finite() && spill > 0.0 && spill <= 1.0) {
        e.add(
            "spec.spillThreshold",
            format!("must be a healthy fraction greater than 0 and at most 1 (got {spill})"),
        );
    }
    if let Some(h) = &spec.consistent_hash {
        match (&h.header, &h.cookie) {
            (Some(_), Some(_)) | (None, None) => e.add(
                "spec.consistentHash",
                "give exactly one of header and cookie",
            ),
            (Some(name), None) => {
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    e.add(
                        "spec.consistentHash.header",
                        format!("{name:?} is not a header name"),
                    );
                }
            }
            (None, Some(name)) => {
                // A cookie name is an HTTP token (RFC 6265).
                let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
                if name.is_empty() || name.len() > 256 || !name.bytes().all(token) {
                    e.add(
                        "spec.consistentHash.cookie",
                        format!("{name:?} is not a cookie name"),
                    );
                }
            }
        }
    }
    let od = &spec.outlier_detection;
    e.range(
        "spec.outlierDetection.consecutiveFailures",
        od.consecutive_failures,
        1,
        1000,
    );
    e.range(
        "spec.outlierDetection.ejectionTimeSeconds",
        od.ejection_time_seconds,
        1,
        3600,
    );
    e.range(
        "spec.outlierDetection.maxEjectedPercent",
        od.max_ejected_percent,
        0,
        100,
    );
    e.range(
        "spec.failback.holdSeconds",
        spec.failback.hold_seconds,
        0,
        3600,
    );
    e.range(
        "spec.retryBudget.percent",
        spec.retry_budget.percent,
        0,
        100,
    );
    e.range(
        "spec.retryBudget.minRetriesPerSecond",
        spec.retry_budget.min_retries_per_second,
        0,
        10_000,
    );
    e.finish()
}

/// Checks a RateLimitPolicy spec; every fault is reported, not just the
/// first.
pub fn validate_rate_limit_policy(spec: &RateLimitPolicySpec) -> Result<(), Vec<FieldError>> {
    let mut e = Errors::default();
    if !is_dns_label(&spec.service) {
        e.add(
            "spec.service",
            format!("{:?} is not a Service name (a DNS label)", spec.service),
        );
    }
    if spec.port == Some(0) {
        e.add(
            "spec.port",
            "must be a Service port, 1 to 65535 (omit it for every port)",
        );
    }
    if spec.total.is_none() && spec.per_caller.is_none() {
        e.add(
            "spec",
            "give total, perCaller or both: a policy without either limits nothing",
        );
    }
    for (field, bucket) in [
        ("spec.total", &spec.total),
        ("spec.perCaller", &spec.per_caller),
    ] {
        let Some(bucket) = bucket else { continue };
        e.range(
            &format!("{field}.requestsPerSecond"),
            bucket.requests_per_second,
            1,
            TokenBucket::MAX_RATE,
        );
        if let Some(burst) = bucket.burst {
            e.range(&format!("{field}.burst"), burst, 1, TokenBucket::MAX_BURST);
        }
    }
    e.finish()
}

fn validate_selector(e: &mut Errors, field: &str, selector: &LabelSelector) {
    for (i, req) in selector.match_expressions.iter().flatten().enumerate() {
        let at = format!("{field}.matchExpressions[{i}]");
        let values = req.values.as_deref().unwrap_or_default();
        match req.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                e.add(&at, format!("operator {} needs values", req.operator))
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                e.add(&at, format!("operator {} takes no values", req.operator));
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => e.add(
                &at,
                format!("unknown operator {other:?} (In, NotIn, Exists, DoesNotExist)"),
            ),
        }
    }
}

/// The `Accepted` condition for a validation result at `generation`.
pub fn accepted_condition(
    result: &Result<(), Vec<FieldError>>,
    generation: Option<i64>,
    now: Time,
) -> Condition {
    let (status, reason, message) = match result {
        Ok(()) => ("True", "Valid", "spec is valid".to_owned()),
        Err(errors) => (
            "False",
            "InvalidSpec",
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        ),
    };
    Condition {
        type_: CONDITION_ACCEPTED.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: now,
    }
}

fn is_dns_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshfed_resources::crd::{FailoverPolicy, Link};

    fn link(spec_yaml: &str) -> LinkSpec {
        let doc = format!(
            "apiVersion: meshfed.io/v1alpha1\nkind: Link\nmetadata: {{name: l}}\nspec:\n{spec_yaml}"
        );
        serde_saphyr::from_str::<Link>(&doc)
            .expect("link yaml")
            .spec
    }

    fn policy(spec_yaml: &str) -> FailoverPolicySpec {
        let doc = format!(
            "apiVersion: meshfed.io/v1alpha1\nkind: FailoverPolicy\nmetadata: {{name: p}}\nspec:\n{spec_yaml}"
        );
        serde_saphyr::from_str::<FailoverPolicy>(&doc)
            .expect("policy yaml")
            .spec
    }

    const GOOD_GATEWAY: &str = "  gateway:\n    addresses: [gw.west.example, 127.0.0.2, '::1']\n    port: 15443\n    identity: spiffe://mesh.example/ns/meshfed-system/sa/meshfed-gateway\n    controllerIdentity: spiffe://mesh.example/ns/meshfed-system/sa/meshfed-controller\n";

    fn fields(r: Result<(), Vec<FieldError>>) -> Vec<String> {
        r.expect_err("must be rejected")
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn a_good_link_is_accepted() {
        assert_eq!(
            validate_link(&link(&format!(
                "  cluster: west\n  region: eu-west-1\n{GOOD_GATEWAY}"
            ))),
            Ok(())
        );
    }

    #[test]
    fn bad_links_name_every_bad_field() {
        let spec = link(
            "  cluster: West_1\n  leaseTtlSeconds: 0\n  gateway:\n    addresses: [gw.west.example, 'bad host!', '-x.example']\n    port: 0\n    identity: https://gw\n    controllerIdentity: spiffe://mesh.example/controller\n  probe: {periodSeconds: 1, timeoutSeconds: 2, failureThreshold: 0}\n  selector:\n    matchExpressions:\n    - {key: tier, operator: In}\n    - {key: tier, operator: Near, values: [a]}\n",
        );
        assert_eq!(
            fields(validate_link(&spec)),
            [
                "spec.cluster",
                "spec.gateway.addresses[1]",
                "spec.gateway.addresses[2]",
                "spec.gateway.port",
                "spec.gateway.identity",
                "spec.gateway.controllerIdentity",
                "spec.probe.timeoutSeconds",
                "spec.probe.failureThreshold",
                "spec.leaseTtlSeconds",
                "spec.selector.matchExpressions[0]",
                "spec.selector.matchExpressions[1]",
            ]
        );
        let empty = link(
            "  cluster: west\n  gateway: {addresses: [], port: 1, identity: 'spiffe://td/ns/a/sa/b', controllerIdentity: 'spiffe://td/ns/a/sa/c'}\n",
        );
        assert_eq!(fields(validate_link(&empty)), ["spec.gateway.addresses"]);
    }

    fn rate_limit(spec_yaml: &str) -> RateLimitPolicySpec {
        let doc = format!(
            "apiVersion: meshfed.io/v1alpha1\nkind: RateLimitPolicy\nmetadata: {{name: p}}\nspec:\n{spec_yaml}"
        );
        serde_saphyr::from_str::<meshfed_resources::crd::RateLimitPolicy>(&doc)
            .expect("policy parses")
            .spec
    }

    #[test]
    fn rate_limit_policies() {
        for good in [
            "  service: api\n  total: {requestsPerSecond: 100}\n",
            "  service: api\n  port: 8080\n  perCaller: {requestsPerSecond: 5, burst: 1}\n",
            "  service: api\n  total: {requestsPerSecond: 1000000, burst: 10000000}\n  perCaller: {requestsPerSecond: 1}\n",
        ] {
            assert_eq!(
                validate_rate_limit_policy(&rate_limit(good)),
                Ok(()),
                "{good}"
            );
        }
        assert_eq!(
            fields(validate_rate_limit_policy(&rate_limit("  service: api\n"))),
            ["spec"]
        );
        let bad = rate_limit(
            "  service: Api\n  port: 0\n  total: {requestsPerSecond: 0, burst: 0}\n  perCaller: {requestsPerSecond: 1000001, burst: 10000001}\n",
        );
        let errors = validate_rate_limit_policy(&bad).expect_err("bad policy");
        assert_eq!(
            errors.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(),
            [
                "spec.service",
                "spec.port",
                "spec.total.requestsPerSecond",
                "spec.total.burst",
                "spec.perCaller.requestsPerSecond",
                "spec.perCaller.burst",
            ]
        );
        assert!(errors[2].reason.contains("got 0"), "{}", errors[2].reason);
        // A port beyond u16 does not parse at all: the file store reports
        // the file, the API server's schema refuses it.
        let doc = "apiVersion: meshfed.io/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: p}\nspec: {service: api, port: 70000, total: {requestsPerSecond: 1}}\n";
        assert!(serde_saphyr::from_str::<meshfed_resources::crd::RateLimitPolicy>(doc).is_err());
    }

    #[test]
    fn failover_policies() {
        assert_eq!(
            validate_failover_policy(&policy("  service: api\n")),
            Ok(())
        );
        assert_eq!(
            validate_failover_policy(&policy(
                "  service: api\n  clusters: [west, central]\n  spillThreshold: 1\n"
            )),
            Ok(())
        );
        let spill = validate_failover_policy(&policy("  service: api\n  spillThreshold: 1.5\n"));
        let err = spill.clone().expect_err("bad spill");
        assert_eq!(err[0].field, "spec.spillThreshold");
        assert!(err[0].reason.contains("got 1.5"), "{}", err[0].reason);
        assert_eq!(
            fields(validate_failover_policy(&policy(
                "  service: api\n  spillThreshold: 0\n"
            ))),
            ["spec.spillThreshold"]
        );
        assert_eq!(
            fields(validate_failover_policy(&policy(
                "  service: Api\n  locality: [zone, zone]\n  clusters: [west, west, 'x y']\n  outlierDetection: {maxEjectedPercent: 101, consecutiveFailures: 0}\n  retryBudget: {percent: 150}\n"
            ))),
            [
                "spec.service",
                "spec.clusters",
                "spec.locality[1]",
                "spec.clusters[1]",
                "spec.clusters[2]",
                "spec.outlierDetection.consecutiveFailures",
                "spec.outlierDetection.maxEjectedPercent",
                "spec.retryBudget.percent",
            ]
        );
        for good in ["{header: x-user-id}", "{cookie: session}"] {
            let spec = policy(&format!("  service: api\n  consistentHash: {good}\n"));
            assert_eq!(validate_failover_policy(&spec), Ok(()), "{good}");
        }
        for (bad, field) in [
            ("{}", "spec.consistentHash"),
            ("{header: a, cookie: b}", "spec.consistentHash"),
            ("{header: 'x user'}", "spec.consistentHash.header"),
            ("{cookie: 'a;b'}", "spec.consistentHash.cookie"),
        ] {
            let spec = policy(&format!("  service: api\n  consistentHash: {bad}\n"));
            assert_eq!(fields(validate_failover_policy(&spec)), [field], "{bad}");
        }
    }

    #[test]
    fn condition_says_which_field_and_why() {
        let now = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        let bad = validate_failover_policy(&policy("  service: api\n  spillThreshold: 2\n"));
        let c = accepted_condition(&bad, Some(3), now.clone());
        assert_eq!(
            (c.type_.as_str(), c.status.as_str(), c.reason.as_str()),
            ("Accepted", "False", "InvalidSpec")
        );
        assert!(
            c.message
                .starts_with("spec.spillThreshold: must be a healthy fraction"),
            "{}",
            c.message
        );
        assert_eq!(c.observed_generation, Some(3));
        let good = accepted_condition(&Ok(()), Some(4), now);
        assert_eq!(
            (good.status.as_str(), good.reason.as_str()),
            ("True", "Valid")
        );
    }
}
