use prometheus_client::encoding::text::encode;

use super::*;
use crate::headers::ERROR_HEADER;

fn labels(service: &str, cluster: &str) -> DestLabels {
    DestLabels {
        direction: Direction::outbound,
        service: service.into(),
        cluster: cluster.into(),
        zone: "a".into(),
    }
}

fn answer(status: u16, error: Option<&'static str>) -> http::Response<()> {
    let mut resp = http::Response::new(());
    *resp.status_mut() = http::StatusCode::from_u16(status).expect("status");
    if let Some(e) = error {
        resp.headers_mut()
            .insert(ERROR_HEADER, http::HeaderValue::from_static(e));
    }
    resp
}

fn count(registry: &Registry, series: &str) -> Option<u64> {
    let mut text = String::new();
    encode(&mut text, registry).expect("encode");
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

fn requests(service: &str, status: u16, error: &str) -> String {
    format!(
        "meshfed_sidecar_requests_total{{direction=\"outbound\",service=\"{service}\",\
         cluster=\"east\",zone=\"a\",status=\"{status}\",error=\"{error}\"}}"
    )
}

#[test]
fn a_request_is_counted_under_its_labels_whichever_copy_of_them_it_carries() {
    let mut registry = Registry::default();
    let m = Metrics::new(&mut registry);
    let now = tokio::time::Instant::now();
    let d = labels("api.shop:80", "east");
    for _ in 0..3 {
        m.request(d.clone(), &answer(200, None), now);
    }
    // The same text in other `Arc`s: the same series.
    m.request(labels("api.shop:80", "east"), &answer(200, None), now);
    m.request(d.clone(), &answer(503, Some("no_healthy_endpoints")), now);
    // An error the sidecar does not know of is counted under its own text.
    m.request(d.clone(), &answer(503, Some("app-made")), now);
    m.request(d, &answer(503, Some("app-made")), now);
    let svc = "api.shop:80";
    assert_eq!(count(&registry, &requests(svc, 200, "none")), Some(4));
    assert_eq!(
        count(&registry, &requests(svc, 503, "no_healthy_endpoints")),
        Some(1)
    );
    assert_eq!(count(&registry, &requests(svc, 503, "app-made")), Some(2));
    let latency = "meshfed_sidecar_request_duration_seconds_count{direction=\"outbound\",\
                   service=\"api.shop:80\",cluster=\"east\",zone=\"a\"}";
    assert_eq!(count(&registry, latency), Some(7));
}

#[test]
fn handles_past_the_limit_are_dropped_and_counting_goes_on() {
    let mut registry = Registry::default();
    let m = Metrics::new(&mut registry);
    let now = tokio::time::Instant::now();
    let first = labels("svc-0", "east");
    m.request(first.clone(), &answer(200, None), now);
    for i in 1..MAX_HANDLES + 10 {
        m.request(labels(&format!("svc-{i}"), "east"), &answer(200, None), now);
    }
    assert!(m.handles.lock().expect("lock").len() <= MAX_HANDLES);
    m.request(first, &answer(200, None), now);
    assert_eq!(count(&registry, &requests("svc-0", 200, "none")), Some(2));
    let last = format!("svc-{}", MAX_HANDLES + 9);
    assert_eq!(count(&registry, &requests(&last, 200, "none")), Some(1));
}
