//! Spawn mode end to end: the real binary serving the test contract by running a real executable
//! per call, called by a tonic client.

mod support;

use std::time::Duration;

use support::echo::{EchoClient, EchoRequest, req};
use support::{Served, manifest, marker, wait_no_processes};
use tonic::Code;

async fn serve(test: &str) -> (Served, EchoClient, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mark = marker(test);
    let path = manifest(
        dir.path(),
        "spawn.toml",
        include_str!("fixtures/echo/spawn.toml"),
        &mark,
    );
    let served = Served::start(&path).await;
    let client = EchoClient::new(served.channel().await);
    (served, client, mark, dir)
}

#[tokio::test]
async fn unary_fills_placeholders_and_passes_only_the_documented_environment() {
    let (_served, client, mark, _dir) = serve("unary").await;
    let reply = client
        .unary(EchoRequest {
            text: "hello".into(),
            big: 9_007_199_254_740_993,
            ..Default::default()
        })
        .await
        .expect("call");
    assert_eq!(reply.text, "hello");
    assert_eq!(
        reply.big, 9_007_199_254_740_993,
        "int64 survives the JSON mapping exactly"
    );
    assert_eq!(
        reply.argv,
        vec!["hello", "--big=9007199254740993", "{literal}"]
    );
    assert_eq!(reply.env.get("TEST_MARKER"), Some(&mark));
    assert_eq!(
        reply.env.get("EXEMESH_METHOD").map(String::as_str),
        Some("test.v1.Echo/Unary")
    );
    assert!(reply.env.contains_key("PATH"), "inherit_env passes PATH");
    assert!(reply.env.contains_key("EXEMESH_REQUEST_ID"));
    assert!(reply.env.contains_key("EXEMESH_DEADLINE_UNIX_MS"));
    assert_eq!(
        reply.traceparent,
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    let timeout: i64 = reply
        .env
        .get("EXEMESH_TIMEOUT_MS")
        .and_then(|v| v.parse().ok())
        .expect("timeout ms");
    assert!(
        timeout > 10_000 && timeout <= 20_000,
        "default timeout of 20s, got {timeout}"
    );
    for leaked in ["HOME", "CARGO_MANIFEST_DIR", "EXEMESH_LOG"] {
        assert!(
            !reply.env.contains_key(leaked),
            "{leaked} must not reach the executable"
        );
    }
}

#[tokio::test]
async fn client_deadline_reaches_the_executable() {
    let (_served, client, _mark, _dir) = serve("deadline-env").await;
    let reply = client
        .unary_with(
            "/test.v1.Echo/Unary",
            req("x", ""),
            Some(Duration::from_secs(7)),
        )
        .await
        .expect("call");
    assert!(
        reply.timeout_ms > 3_000 && reply.timeout_ms <= 7_000,
        "got {}",
        reply.timeout_ms
    );
}

#[tokio::test]
async fn hostile_field_values_reach_the_program_verbatim_as_one_argument() {
    let (_served, client, mark, dir) = serve("hostile").await;
    let canary = dir.path().join(format!("pwned-{mark}"));
    let c = canary.display();
    let long = "A".repeat(20_000);
    let hostile = [
        format!("; touch {c}"),
        format!("$(touch {c})"),
        format!("`touch {c}`"),
        format!("' ; touch {c} ; '"),
        format!("\" && touch {c} && \""),
        format!("a\nb\ntouch {c}"),
        format!("| touch {c}"),
        // Values starting with '-' are refused as option injection: tests/hardening.rs.
        "x -rf --help".to_string(),
        "*".to_string(),
        "~".to_string(),
        "$HOME ${PATH}".to_string(),
        "ünïcødé ✓ \u{202e}".to_string(),
        " leading and trailing spaces ".to_string(),
        String::new(),
        long,
    ];
    for value in &hostile {
        let shown: String = value.chars().take(40).collect();
        let reply = client
            .unary(req(value, ""))
            .await
            .unwrap_or_else(|e| panic!("{shown:?}: {e}"));
        assert_eq!(reply.argv.len(), 3, "{shown:?} stays one argument");
        assert!(&reply.argv[0] == value, "{shown:?} arrived altered");
    }
    assert!(!canary.exists(), "a shell ran a command from a field value");
    let status = client
        .unary(req("nul\0byte", ""))
        .await
        .expect_err("NUL cannot be an argument");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("NUL"), "{}", status.message());
}

#[tokio::test]
async fn server_streaming_sends_one_message_per_line() {
    let (_served, client, _mark, _dir) = serve("expand").await;
    let replies = client
        .expand(EchoRequest {
            text: "t".into(),
            count: 5,
            ..Default::default()
        })
        .await
        .expect("stream");
    assert_eq!(
        replies.iter().map(|r| r.index).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );
    assert!(replies.iter().all(|r| r.text == "t"));

    let (got, end) = client
        .expand_partial(EchoRequest {
            count: 5,
            mode: "fail-after".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(got.len(), 2, "messages before the failure are delivered");
    let status = end.expect_err("exit 69");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("lost the database"),
        "{}",
        status.message()
    );

    let (got, end) = client
        .expand_partial(EchoRequest {
            count: 5,
            mode: "error-line".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(got.len(), 1);
    let status = end.expect_err("error line");
    assert_eq!(
        (status.code(), status.message()),
        (Code::Aborted, "stopped at 1")
    );
}

#[tokio::test]
async fn client_streaming_and_bidi() {
    let (_served, client, _mark, _dir) = serve("streams").await;
    let reply = client
        .collect(vec![req("a", ""), req("b", ""), req("c", "")])
        .await
        .expect("collect");
    assert_eq!((reply.text.as_str(), reply.index), ("a,b,c", 3));
    let empty = client.collect(vec![]).await.expect("collect nothing");
    assert_eq!((empty.text.as_str(), empty.index), ("", 0));
    let replies = client.chat(&["one", "two", "three"]).await.expect("chat");
    assert_eq!(
        replies.iter().map(|r| r.text.as_str()).collect::<Vec<_>>(),
        vec!["ONE", "TWO", "THREE"]
    );
}

#[tokio::test]
async fn text_output_wraps_an_unmodified_cli() {
    let (_served, client, _mark, _dir) = serve("legacy").await;
    let reply = client
        .unary_with(
            "/test.v1.Echo/Legacy",
            req("plain text, not JSON", ""),
            None,
        )
        .await
        .expect("legacy");
    assert_eq!(reply.text, "plain text, not JSON");
}

#[tokio::test]
async fn failures_map_to_the_documented_statuses() {
    let (_served, client, _mark, _dir) = serve("status").await;
    let cases: [(&str, Code, &str); 11] = [
        ("exit:1", Code::Unknown, "boom on stderr"),
        ("exit:2", Code::InvalidArgument, "exit code 2"),
        ("exit:3", Code::AlreadyExists, "boom on stderr"),
        ("exit:66", Code::NotFound, "boom on stderr"),
        ("exit:105", Code::NotFound, "exit code 105"),
        ("exit:75", Code::Unavailable, "boom"),
        (
            "error-json:PERMISSION_DENIED",
            Code::PermissionDenied,
            "reported by the executable",
        ),
        (
            "bad-json",
            Code::Internal,
            "test.v1.Echo/Unary: reply is not valid JSON for test.v1.EchoReply",
        ),
        ("wrong-type", Code::Internal, "test.v1.EchoReply"),
        ("big:100000", Code::ResourceExhausted, "65536"),
        ("segfault", Code::Internal, "signal 11"),
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
}

#[tokio::test]
async fn an_undecodable_request_is_invalid_argument() {
    #[derive(Clone, PartialEq, prost::Message)]
    struct Wrong {
        #[prost(fixed64, tag = "1")]
        text: u64,
    }
    let (served, _client, _mark, _dir) = serve("undecodable").await;
    let mut grpc = tonic::client::Grpc::new(served.channel().await);
    grpc.ready().await.expect("ready");
    let codec = tonic_prost::ProstCodec::<Wrong, Wrong>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/test.v1.Echo/Unary");
    let status = grpc
        .unary(tonic::Request::new(Wrong { text: 7 }), path, codec)
        .await
        .expect_err("wrong wire type");
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert!(
        status.message().contains("test.v1.EchoRequest"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn the_deadline_kills_the_whole_process_group() {
    let (served, _client, mark, _dir) = serve("deadline").await;
    // A bare HTTP/2 client with no timer of its own: what arrives is the server's own answer.
    let status = support::raw_grpc::unary_with_timeout(
        &served.addr,
        "/test.v1.Echo/Unary",
        &req("x", "grandchild"),
        "1500m",
    )
    .await;
    assert_eq!(status.code, Code::DeadlineExceeded as i32, "{status:?}");
    assert!(
        status.message.contains("deadline of 1500ms exceeded"),
        "{status:?}"
    );
    let left = wait_no_processes(&mark, Duration::from_secs(5)).await;
    assert!(left.is_empty(), "processes survived the deadline: {left:?}");
}

#[tokio::test]
async fn a_cancelled_call_kills_its_process_group() {
    let (_served, client, mark, _dir) = serve("cancel").await;
    let call = tokio::spawn(async move { client.unary(req("x", "grandchild")).await });
    // The grandchild (`sleep 300`) exists once the executable got as far as starting it.
    support::wait_for_process(&mark, "sleep", Duration::from_secs(10)).await;
    call.abort();
    let left = wait_no_processes(&mark, Duration::from_secs(5)).await;
    assert!(
        left.is_empty(),
        "processes survived the cancellation: {left:?}"
    );
}

#[tokio::test]
async fn a_full_queue_is_resource_exhausted() {
    let (_served, client, _mark, _dir) = serve("limits").await;
    let slow = EchoRequest {
        mode: "sleep".into(),
        sleep_ms: 3000,
        ..Default::default()
    };
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let client = client.clone();
            let slow = slow.clone();
            tokio::spawn(async move { client.unary(slow).await })
        })
        .collect();
    let mut exhausted = 0;
    let mut ok = 0;
    for call in calls {
        match call.await.expect("task") {
            Ok(_) => ok += 1,
            Err(status) if status.code() == Code::ResourceExhausted => exhausted += 1,
            Err(status) => panic!("unexpected {status:?}"),
        }
    }
    assert_eq!(
        (ok, exhausted),
        (3, 1),
        "2 running + 1 queued succeed, the 4th is refused"
    );
}

#[tokio::test]
async fn a_background_process_holding_stdout_does_not_hold_the_call() {
    let (_served, client, mark, _dir) = serve("daemon").await;
    let started = std::time::Instant::now();
    let reply = client
        .unary_with(
            "/test.v1.Echo/Unary",
            req("x", "daemon"),
            Some(Duration::from_secs(15)),
        )
        .await
        .expect("answered");
    assert_eq!(reply.text, "daemon started");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the call waited for the background process"
    );
    let left = wait_no_processes(&mark, Duration::from_secs(5)).await;
    assert!(
        left.is_empty(),
        "the background process outlived its call: {left:?}"
    );
}
