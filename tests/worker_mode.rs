//! Worker mode end to end: the real binary, a pool of real Python workers built on the helper in
//! sdk/python, called by a tonic client.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use support::echo::{EchoClient, EchoRequest, req};
use support::{Served, manifest, marker};
use tonic::Code;

async fn serve_with(
    test: &str,
    edit: impl Fn(String) -> String,
) -> (Served, EchoClient, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mark = marker(test);
    let path = manifest(
        dir.path(),
        "worker.toml",
        &edit(include_str!("fixtures/echo/worker.toml").to_string()),
        &mark,
    );
    let served = Served::start(&path).await;
    let client = EchoClient::new(served.channel().await);
    (served, client, mark, dir)
}

async fn serve(test: &str) -> (Served, EchoClient, String, tempfile::TempDir) {
    serve_with(test, |m| m).await
}

#[tokio::test]
async fn unary_carries_message_deadline_trace_context_and_metadata() {
    let (_served, client, mark, _dir) = serve("w-unary").await;
    let reply = client
        .unary_with(
            "/test.v1.Echo/Unary",
            EchoRequest {
                text: "hi".into(),
                big: -9_007_199_254_740_993,
                ..Default::default()
            },
            Some(Duration::from_secs(9)),
        )
        .await
        .expect("call");
    assert_eq!(reply.text, "hi");
    assert_eq!(reply.big, -9_007_199_254_740_993);
    assert!(
        reply.timeout_ms > 4_000 && reply.timeout_ms <= 9_000,
        "deadline in the start frame: {}",
        reply.timeout_ms
    );
    assert_eq!(
        reply.traceparent,
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    assert_eq!(reply.argv[0], "test.v1.Echo/Unary");
    assert!(!reply.argv[1].is_empty(), "request id");
    assert_eq!(reply.argv[2], "acme", "client metadata reaches the worker");
    assert_eq!(reply.env.get("TEST_MARKER"), Some(&mark));
    assert_eq!(
        reply.env.get("EXEMESH_POOL").map(String::as_str),
        Some("echo")
    );
    assert_eq!(
        reply.env.get("EXEMESH_PROTOCOL").map(String::as_str),
        Some("1")
    );
    assert!(
        reply
            .env
            .get("EXEMESH_WORKER_ID")
            .is_some_and(|id| id.starts_with("echo#"))
    );
    assert!(
        !reply.env.contains_key("HOME"),
        "only the manifest's environment"
    );
}

#[tokio::test]
async fn every_rpc_kind_is_served() {
    let (_served, client, _mark, _dir) = serve("w-kinds").await;
    let replies = client
        .expand(EchoRequest {
            text: "s".into(),
            count: 4,
            ..Default::default()
        })
        .await
        .expect("expand");
    assert_eq!(
        replies.iter().map(|r| r.index).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    let (got, end) = client
        .expand_partial(EchoRequest {
            count: 5,
            mode: "fail-after".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(got.len(), 2);
    let status = end.expect_err("fails after 2");
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unavailable, "lost the database")
    );
    let reply = client
        .collect(vec![req("x", ""), req("y", "")])
        .await
        .expect("collect");
    assert_eq!((reply.text.as_str(), reply.index), ("x,y", 2));
    let replies = client.chat(&["a", "b", "c"]).await.expect("chat");
    assert_eq!(
        replies.iter().map(|r| r.text.as_str()).collect::<Vec<_>>(),
        vec!["A", "B", "C"]
    );
    let legacy = client
        .unary_with("/test.v1.Echo/Legacy", req("plain", ""), None)
        .await
        .expect("legacy");
    assert_eq!(legacy.text, "plain");
}

#[tokio::test]
async fn worker_errors_map_to_statuses() {
    let (_served, client, _mark, _dir) = serve("w-errors").await;
    let cases: [(&str, Code, &str); 5] = [
        ("error:NOT_FOUND", Code::NotFound, "reported by the worker"),
        ("error:7", Code::PermissionDenied, "reported by the worker"),
        ("raise", Code::Unknown, "ValueError: handler blew up"),
        (
            "wrong-type",
            Code::Internal,
            "test.v1.Echo/Unary: reply is not valid JSON for test.v1.EchoReply",
        ),
        ("big:100000", Code::ResourceExhausted, "65536"),
    ];
    for (mode, code, text) in cases {
        let status = client.unary(req("x", mode)).await.expect_err(mode);
        assert_eq!(status.code(), code, "{mode}: {}", status.message());
        assert!(
            status.message().contains(text),
            "{mode}: {:?} lacks {text:?}",
            status.message()
        );
    }
    // The workers survive all of that.
    client
        .unary(req("still here", ""))
        .await
        .expect("healthy after errors");
}

#[tokio::test]
async fn a_worker_crash_fails_its_call_with_unavailable_and_the_worker_is_restarted() {
    let (served, client, _mark, _dir) =
        serve_with("w-crash", |m| m.replace("workers = 2", "workers = 1")).await;
    let before = client.unary(req("a", "")).await.expect("first").index;
    let status = client
        .unary(req("x", "crash"))
        .await
        .expect_err("the worker dies mid-call");
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    assert!(status.message().contains("echo#1"), "{}", status.message());
    // Restarted with backoff: wait (bounded) for a new worker to answer.
    let start = Instant::now();
    let after = loop {
        match client
            .unary_with(
                "/test.v1.Echo/Unary",
                req("b", ""),
                Some(Duration::from_secs(5)),
            )
            .await
        {
            Ok(reply) => break reply.index,
            Err(e) => assert!(
                start.elapsed() < Duration::from_secs(20),
                "no restart: {e}\n{}",
                served.log()
            ),
        }
    };
    assert_ne!(before, after, "a new process serves after the crash");
    // stderr is logged with the worker id (by a task of its own: wait for it, bounded).
    let start = Instant::now();
    loop {
        let log = served.log();
        if log
            .lines()
            .any(|l| l.contains("crashing on purpose") && l.contains("echo#1"))
            && log.contains("restarting in")
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "stderr was not logged with the worker id:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_deadline_cancels_the_call_and_the_worker_keeps_serving() {
    let (served, client, _mark, _dir) =
        serve_with("w-deadline", |m| m.replace("workers = 2", "workers = 1")).await;
    let slow = EchoRequest {
        mode: "sleep".into(),
        sleep_ms: 30_000,
        ..Default::default()
    };
    let status =
        support::raw_grpc::unary_with_timeout(&served.addr, "/test.v1.Echo/Unary", &slow, "700m")
            .await;
    assert_eq!(status.code, Code::DeadlineExceeded as i32, "{status:?}");
    // The worker honoured the cancel frame: the same single worker answers right away.
    let reply = client
        .unary_with(
            "/test.v1.Echo/Unary",
            req("next", ""),
            Some(Duration::from_secs(10)),
        )
        .await
        .expect("worker still serving");
    assert_eq!(reply.text, "next");
}

#[tokio::test]
async fn calls_spread_over_the_pool_and_respect_max_in_flight() {
    let (_served, client, _mark, _dir) = serve_with("w-pool", |m| {
        m.replace("max_in_flight = 4", "max_in_flight = 1")
    })
    .await;
    // Two workers, one call each at a time: four 400ms calls cannot finish in under 800ms.
    let start = Instant::now();
    let calls: Vec<_> = (0..4)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .unary(EchoRequest {
                        text: i.to_string(),
                        mode: "sleep".into(),
                        sleep_ms: 400,
                        ..Default::default()
                    })
                    .await
            })
        })
        .collect();
    let mut pids = BTreeSet::new();
    for call in calls {
        pids.insert(call.await.expect("task").expect("call").index);
    }
    assert_eq!(pids.len(), 2, "both workers served");
    assert!(
        start.elapsed() >= Duration::from_millis(800),
        "more than one call in flight on a worker"
    );
}

#[tokio::test]
async fn a_worker_that_never_becomes_ready_gets_no_traffic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mark = marker("w-never-ready");
    let text = include_str!("fixtures/echo/worker.toml").replace(
        "argv = [\"@FIXTURES@/echo_worker.py\"]",
        "argv = [\"/bin/sleep\", \"1000\"]\nready_timeout = \"1s\"",
    );
    let path = manifest(dir.path(), "worker.toml", &text, &mark);
    let served = Served::spawn(&path, &[]);
    served
        .wait_health(
            tonic_health::pb::health_check_response::ServingStatus::NotServing,
            Duration::from_secs(10),
        )
        .await;
    let status = support::raw_grpc::unary_with_timeout(
        &served.addr,
        "/test.v1.Echo/Unary",
        &req("x", ""),
        "500m",
    )
    .await;
    assert_eq!(status.code, Code::DeadlineExceeded as i32, "{status:?}");
    let start = Instant::now();
    while !served.log().contains("sent no ready frame within 1000ms") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{}",
            served.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
