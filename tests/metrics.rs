//! Golden metrics: the admin port serves /metrics, /healthz and /readyz, the exposition parses, and
//! the counters move as calls are made.

mod support;

use std::collections::BTreeMap;

use support::echo::{EchoClient, req};
use support::{Served, http_get, manifest, marker};

/// Parses the exposition text strictly: `# ...` lines, `name{labels} value` samples, `# EOF` last.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.last(),
        Some(&"# EOF"),
        "the exposition ends with # EOF"
    );
    for line in lines {
        if line.starts_with('#') {
            assert!(
                line.starts_with("# HELP ")
                    || line.starts_with("# TYPE ")
                    || line.starts_with("# UNIT ")
                    || line == "# EOF",
                "bad comment line {line:?}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        assert!(series.starts_with("exemesh_"), "{line:?}");
        if let Some((_, labels)) = series.split_once('{') {
            assert!(labels.ends_with('}'), "{line:?}");
        }
        samples.insert(series.to_string(), value);
    }
    samples
}

fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

/// The echo fixture served with an admin port: its directory, the server and the admin address.
async fn echo_with_admin(name: &str) -> (tempfile::TempDir, Served, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = manifest(
        dir.path(),
        "w.toml",
        include_str!("fixtures/echo/worker.toml"),
        &marker(name),
    );
    let served = Served::start_with_args(&path, &["--admin", "127.0.0.1:0"]).await;
    let admin = served.admin.clone().expect("admin address printed");
    (dir, served, admin)
}

#[tokio::test]
async fn the_admin_port_serves_metrics_that_move_with_the_calls() {
    let (_dir, served, admin) = echo_with_admin("metrics").await;
    let (code, body) = http_get(&admin, "/healthz");
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    assert_eq!(http_get(&admin, "/readyz").0, 200, "SERVING means ready");
    assert_eq!(http_get(&admin, "/nope").0, 404);

    let ok = r#"exemesh_server_requests_total{service="test.v1.Echo",method="Unary",code="OK"}"#;
    let not_found =
        r#"exemesh_server_requests_total{service="test.v1.Echo",method="Unary",code="NOT_FOUND"}"#;
    let latency =
        r#"exemesh_server_request_duration_seconds_count{service="test.v1.Echo",method="Unary"}"#;
    let execs = r#"exemesh_exec_duration_seconds_count{method="test.v1.Echo/Unary",mode="worker"}"#;
    let before = parse(&http_get(&admin, "/metrics").1);
    let client = EchoClient::new(served.channel().await);
    for _ in 0..3 {
        client.unary(req("x", "")).await.expect("call");
    }
    client
        .unary(req("x", "error:NOT_FOUND"))
        .await
        .expect_err("not found");
    let after = parse(&http_get(&admin, "/metrics").1);
    assert_eq!(
        value(&after, ok) - value(&before, ok),
        3.0,
        "OK calls counted"
    );
    assert_eq!(
        value(&after, not_found) - value(&before, not_found),
        1.0,
        "errors counted by status"
    );
    assert_eq!(
        value(&after, latency) - value(&before, latency),
        4.0,
        "every call's latency observed"
    );
    assert_eq!(
        value(&after, execs) - value(&before, execs),
        4.0,
        "every execution observed"
    );
    // SERVING needs one ready worker per pool; the second may still be starting: wait for it.
    let start = std::time::Instant::now();
    loop {
        let ready = value(
            &parse(&http_get(&admin, "/metrics").1),
            r#"exemesh_worker_pool_ready{name="echo"}"#,
        );
        if ready == 2.0 {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(15),
            "worker_pool_ready stayed at {ready}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        value(
            &after,
            r#"exemesh_server_in_flight{service="test.v1.Echo",method="Unary"}"#
        ),
        0.0
    );
}

#[tokio::test]
async fn made_up_method_names_cannot_grow_the_metrics_without_bound() {
    let (_dir, served, admin) = echo_with_admin("cardinality").await;
    let mut grpc = tonic::client::Grpc::new(served.channel().await);
    // More distinct paths than a process keeps series for (1,024 per side), none in the contract.
    let calls = 1_030;
    for i in 0..calls {
        grpc.ready().await.expect("ready");
        let path =
            http::uri::PathAndQuery::try_from(format!("/made.up.v{i}/Nothing")).expect("a path");
        let status = grpc
            .unary(
                tonic::Request::new(support::echo::req("x", "")),
                path,
                tonic_prost::ProstCodec::<support::echo::EchoRequest, support::echo::EchoReply>::default(),
            )
            .await
            .expect_err("no such method");
        assert_eq!(
            status.code(),
            tonic::Code::Unimplemented,
            "call {i}: {status:?}"
        );
    }
    let samples = parse(&http_get(&admin, "/metrics").1);
    let made_up: Vec<&String> = samples
        .keys()
        .filter(|s| s.starts_with("exemesh_server_requests_total{service=\"made.up."))
        .collect();
    assert_eq!(made_up.len(), 1_024, "series of their own");
    let other =
        r#"exemesh_server_requests_total{service="_other",method="_other",code="UNIMPLEMENTED"}"#;
    assert_eq!(
        value(&samples, other),
        (calls - 1_024) as f64,
        "the rest counted together"
    );
}
