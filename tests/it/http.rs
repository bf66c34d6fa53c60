//! The HTTP side: `/health` and `/metrics`, as a load balancer and a
//! Prometheus scraper see them.
//!
//! NOTE: the metrics recorder is process-wide, so in-process nodes of other
//! tests add to the same counters; assertions here only rely on increases.

use crate::support::{http_get, http_get_with_token, ok, start_node};

/// The value of the sample whose name-and-labels part is exactly `series`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

#[tokio::test]
async fn health_answers_200_with_json_status_ok() {
    let node = start_node(|_| {}).await;
    let mut c = node.conn().await;
    ok::<()>(&mut c, &["MSET", "a", "1", "b", "2", "c", "3"]).await;
    let (status, head, body) = http_get(node.http_addr, "/health").await;
    assert_eq!(status, 200, "{body}");
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(body.contains("\"status\":\"ok\""), "{body}");
    assert!(body.contains("\"keys\":3"), "{body}");
    assert!(body.contains("\"engine\":\"memory\""), "{body}");

    let (status, _, _) = http_get(node.http_addr, "/no-such-page").await;
    assert_eq!(status, 404);
    node.shutdown().await;
}

#[tokio::test]
async fn metrics_count_commands_and_expose_gauges() {
    let node = start_node(|_| {}).await;
    let mut c = node.conn().await;
    let (_, _, before) = http_get(node.http_addr, "/metrics").await;
    let sets_before = sample(&before, r#"ringkv_commands_total{cmd="set"}"#).unwrap_or(0.0);
    for i in 0..10 {
        ok::<()>(&mut c, &["SET", &format!("k{i}"), "v"]).await;
    }
    ok::<Option<String>>(&mut c, &["GET", "k1"]).await;

    let (status, head, metrics) = http_get(node.http_addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/plain"), "{head}");
    let sets = sample(&metrics, r#"ringkv_commands_total{cmd="set"}"#)
        .unwrap_or_else(|| panic!("no SET counter in:\n{metrics}"));
    assert!(
        sets >= sets_before + 10.0,
        "set counter {sets_before} -> {sets}"
    );
    assert!(sample(&metrics, r#"ringkv_commands_total{cmd="get"}"#).unwrap_or(0.0) >= 1.0);

    let histogram_lines: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("ringkv_command_duration_seconds"))
        .collect();
    for part in ["_bucket{", "_sum{", "_count{"] {
        assert!(
            histogram_lines
                .iter()
                .any(|l| l.contains(part) && l.contains(r#"cmd="set""#)),
            "no {part} line for set in:\n{metrics}"
        );
    }
    let set_count = sample(
        &metrics,
        r#"ringkv_command_duration_seconds_count{cmd="set"}"#,
    )
    .unwrap_or_else(|| panic!("no set duration count in:\n{metrics}"));
    // One command in eight per connection is timed: 10 SETs give at least one sample.
    assert!(set_count >= 1.0, "set duration count {set_count}");

    let clients = sample(&metrics, "ringkv_connected_clients")
        .unwrap_or_else(|| panic!("no ringkv_connected_clients in:\n{metrics}"));
    assert!(clients >= 1.0, "connected clients {clients}");
    // Per-keyspace gauges are process-wide too; this node's keys count is
    // set at scrape time, so it is exact right after our scrape.
    assert_eq!(
        sample(&metrics, r#"ringkv_keys{keyspace="default"}"#),
        Some(10.0),
        "{metrics}"
    );
    assert!(
        sample(&metrics, "ringkv_engine_bytes").is_some(),
        "{metrics}"
    );
    node.shutdown().await;
}

#[tokio::test]
async fn admin_routes_need_the_bearer_token_when_one_is_set() {
    let node = start_node(|cfg| cfg.node.http_token = Some("admin-token-0123".into())).await;
    for path in ["/v1/cluster", "/v1/repair"] {
        let (status, head, body) = http_get(node.http_addr, path).await;
        assert_eq!(status, 401, "{path}: {body}");
        assert!(head.contains("www-authenticate: bearer"), "{head}");
        assert!(body.contains("http_token"), "{body}");
        let (status, _, _) = http_get_with_token(node.http_addr, path, "wrong-token-0123").await;
        assert_eq!(status, 401, "{path} with a wrong token");
        let (status, _, body) = http_get_with_token(node.http_addr, path, "admin-token-0123").await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    for open in ["/health", "/metrics"] {
        let (status, _, _) = http_get(node.http_addr, open).await;
        assert_eq!(status, 200, "{open} stays open for probes and scrapers");
    }
    node.shutdown().await;
}
