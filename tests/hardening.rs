//! Hardened execution, end to end: option injection through placeholders, resource limits, run-as
//! user, and programs anyone could replace. The real binary runs real programs.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use support::echo::{EchoClient, EchoRequest, req};
use support::raw_grpc::unary_raw;
use support::{Served, exemesh, manifest, marker};
use tonic::Code;

const LEGACY: &str = "/test.v1.Echo/Legacy";

/// A spawn manifest whose `Unary` method runs the echo fixture with `unary_argv` after the program,
/// and whose `Legacy` method is `legacy` (TOML lines).
fn write_manifest(dir: &Path, unary_argv: &str, legacy: &str) -> std::path::PathBuf {
    let template = format!(
        r#"[service]
name = "test.v1.Echo"
protos = ["@FIXTURES@/echo.proto"]
include = ["@FIXTURES@"]
inherit_env = ["PATH"]

[env]
TEST_MARKER = "@MARKER@"

[methods.Unary]
mode = "spawn"
argv = ["@FIXTURES@/echo_spawn.py", {unary_argv}]

[methods.Expand]
mode = "spawn"
argv = ["@FIXTURES@/echo_spawn.py"]

[methods.Collect]
mode = "spawn"
argv = ["@FIXTURES@/echo_spawn.py"]

[methods.Chat]
mode = "spawn"
argv = ["@FIXTURES@/echo_spawn.py"]

[methods.Legacy]
mode = "spawn"
output = "text"
text_field = "text"
{legacy}
"#
    );
    manifest(dir, "hardened.toml", &template, &marker("hardening"))
}

async fn serve(unary_argv: &str, legacy: &str) -> (Served, EchoClient, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_manifest(dir.path(), unary_argv, legacy);
    let served = Served::start(&path).await;
    let client = EchoClient::new(served.channel().await);
    (served, client, dir)
}

async fn legacy(client: &EchoClient, text: &str) -> Result<String, tonic::Status> {
    client
        .unary_with(LEGACY, req(text, ""), None)
        .await
        .map(|r| r.text)
}

#[tokio::test]
async fn a_value_that_looks_like_an_option_is_refused_unless_the_manifest_ends_options() {
    let (_served, client, _dir) = serve(
        r#""{text}", "--big={big}""#,
        r#"argv = ["/bin/echo", "{text}"]"#,
    )
    .await;
    for value in ["-n", "--help", "-rf", "-"] {
        let status = legacy(&client, value)
            .await
            .expect_err("an option-looking value is refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{value}");
        assert!(
            status.message().contains("field text starts with '-'")
                && status.message().contains("\"--\""),
            "{value}: {}",
            status.message()
        );
        assert!(
            client.unary(req(value, "")).await.is_err(),
            "{value} refused in the python method too"
        );
    }
    // Not at the start of the argument, or not starting with '-': passed on as is.
    assert_eq!(legacy(&client, "a -n").await.expect("call"), "a -n");
    let reply = client
        .unary(EchoRequest {
            text: "x".into(),
            big: -5,
            ..Default::default()
        })
        .await
        .expect("a negative number after a literal prefix is fine");
    assert_eq!(reply.argv, vec!["x", "--big=-5"]);
}

#[tokio::test]
async fn after_a_double_dash_or_with_allow_option_values_the_value_passes_verbatim() {
    let (_served, client, _dir) = serve(
        r#""--", "{text}""#,
        r#"argv = ["/bin/echo", "{text}"]
allow_option_values = true"#,
    )
    .await;
    let reply = client.unary(req("--help", "")).await.expect("after --");
    assert_eq!(reply.argv, vec!["--", "--help"]);
    // /bin/echo reads "-n" as its option: the manifest allowed exactly that.
    assert_eq!(legacy(&client, "-n").await.expect("allowed"), "");
    assert_eq!(legacy(&client, "-x").await.expect("allowed"), "-x");
}

#[tokio::test]
async fn resource_limits_bind_the_program() {
    let (_served, client, _dir) = serve(
        r#""{text}""#,
        r#"argv = ["/bin/sh", "-c", "echo $(ulimit -n) $(ulimit -t) $(ulimit -v)"]
rlimits = { open_files = 64, cpu_seconds = 7, address_space_mb = 512 }"#,
    )
    .await;
    assert_eq!(legacy(&client, "").await.expect("call"), "64 7 524288");
}

#[tokio::test]
async fn a_cpu_limit_stops_a_runaway_program() {
    let (_served, client, _dir) = serve(
        r#""{text}""#,
        r#"argv = ["/bin/sh", "-c", "while :; do :; done"]
rlimits = { cpu_seconds = 1 }"#,
    )
    .await;
    let status = legacy(&client, "").await.expect_err("killed by the limit");
    assert!(
        status.message().contains("SIGXCPU") || status.message().contains("SIGKILL"),
        "{:?}: {}",
        status.code(),
        status.message()
    );
}

#[tokio::test]
async fn programs_run_as_the_configured_user() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_manifest(
        dir.path(),
        r#""{text}""#,
        r#"argv = ["/usr/bin/id", "-u"]
user = "nobody""#,
    );
    if !root {
        // Without root there is no switching users: the manifest is refused, naming the key.
        let out = Command::new(exemesh())
            .args(["check", path.to_str().expect("utf-8")])
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("methods.Legacy.user"), "{stderr}");
        return;
    }
    let served = Served::start(&path).await;
    let client = EchoClient::new(served.channel().await);
    let uid = legacy(&client, "").await.expect("call");
    assert_eq!(uid.trim(), "65534", "nobody's uid");
}

#[test]
fn a_program_anyone_could_replace_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let program = dir.path().join("tool.sh");
    std::fs::write(&program, "#!/bin/sh\necho hi\n").expect("write");
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let path = write_manifest(
        dir.path(),
        r#""{text}""#,
        &format!(r#"argv = ["{}"]"#, program.display()),
    );
    for command in ["check", "serve"] {
        let out = Command::new(exemesh())
            .args([command, path.to_str().expect("utf-8")])
            .args(if command == "serve" {
                &["--listen", "127.0.0.1:0"][..]
            } else {
                &[][..]
            })
            .output()
            .expect("run");
        assert!(!out.status.success(), "{command} must refuse");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("methods.Legacy.argv[0]") && stderr.contains("world-writable"),
            "{command}: {stderr}"
        );
    }
}

/// `EchoRequest` nested `depth` times through field 6, innermost holding `text`.
fn nested(depth: usize, text: &[u8]) -> Vec<u8> {
    let mut message = vec![0x0a, text.len() as u8];
    message.extend_from_slice(text);
    for _ in 0..depth {
        let mut outer = vec![0x32];
        let mut len = message.len();
        while len >= 0x80 {
            outer.push((len as u8 & 0x7f) | 0x80);
            len >>= 7;
        }
        outer.push(len as u8);
        outer.extend_from_slice(&message);
        message = outer;
    }
    message
}

#[tokio::test]
async fn hostile_messages_are_refused_before_anything_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let canary = dir.path().join("ran");
    let legacy = format!(r#"argv = ["/bin/sh", "-c", "touch {}"]"#, canary.display());
    let path = write_manifest(dir.path(), r#""{text}""#, &legacy);
    let served = Served::start_with_args(&path, &[]).await;
    let addr = served.addr.clone();
    let send = |body: Vec<u8>, headers: Vec<(&'static str, String)>| {
        let addr = addr.clone();
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            unary_raw(&addr, LEGACY, &body, &headers).await
        }
    };

    // Invalid UTF-8 in a string field.
    let status = send(vec![0x0a, 0x02, 0xff, 0xfe], vec![])
        .await
        .expect("answered");
    assert_eq!(status.code, Code::InvalidArgument as i32, "{status:?}");
    // Nested deeper than any real message (the decoder's recursion limit).
    let status = send(nested(200, b"deep"), vec![]).await.expect("answered");
    assert_eq!(status.code, Code::InvalidArgument as i32, "{status:?}");
    // Larger than [server] max_request_bytes (4 MiB by default).
    let mut huge = vec![0x0a, 0x80, 0x80, 0x80, 0x03]; // field 1, 6 MiB
    huge.resize(5 + 6 * 1024 * 1024, b'x');
    let status = send(huge, vec![]).await.expect("answered");
    assert_eq!(status.code, Code::ResourceExhausted as i32, "{status:?}");
    assert!(status.message.contains("max_request_bytes"), "{status:?}");
    // Garbage that is not protobuf at all.
    let status = send(vec![0xff; 64], vec![]).await.expect("answered");
    assert_eq!(status.code, Code::InvalidArgument as i32, "{status:?}");
    // Headers over the 16 KiB header-list limit: the stream is refused, the server lives on.
    let refused = send(nested(1, b"x"), vec![("x-junk", "j".repeat(64 * 1024))]).await;
    assert!(
        refused.as_ref().map_or(true, |s| s.code != 0),
        "an oversized header list must not be served: {refused:?}"
    );
    assert!(!canary.exists(), "nothing ran for a hostile message");

    // Control: a legitimately nested message is served (so the canary can tell).
    let status = send(nested(20, b"fine"), vec![]).await.expect("answered");
    assert_eq!(status.code, 0, "{status:?}");
    assert!(canary.exists(), "a valid call runs the program");
}

#[tokio::test]
async fn an_idle_connection_is_closed_gracefully_and_calls_in_flight_finish() {
    let dir = tempfile::tempdir().expect("tempdir");
    let template = format!(
        "{}\n[server]\nidle_timeout = \"300ms\"\n",
        include_str!("fixtures/echo/worker.toml")
    );
    let path = manifest(dir.path(), "idle.toml", &template, &marker("idle"));
    let served = Served::start(&path).await;

    // A call in flight when the connection turns idle (no call started for 300 ms) still finishes.
    let client = EchoClient::new(served.channel().await);
    let reply = client
        .unary(EchoRequest {
            text: "slow".into(),
            mode: "sleep".into(),
            sleep_ms: 900,
            ..Default::default()
        })
        .await
        .expect("the in-flight call completes");
    assert_eq!(reply.text, "slow");

    // An idle connection is closed by the server.
    let tcp = tokio::net::TcpStream::connect(&served.addr)
        .await
        .expect("connect");
    let (_client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let closed = tokio::time::timeout(std::time::Duration::from_secs(10), conn).await;
    assert!(
        closed.is_ok(),
        "the server never closed the idle connection"
    );
}

#[tokio::test]
async fn an_oversized_message_mid_stream_ends_the_call_with_resource_exhausted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = manifest(
        dir.path(),
        "stream.toml",
        include_str!("fixtures/echo/worker.toml"),
        &marker("oversized-stream"),
    );
    let served = Served::start(&path).await;
    let client = EchoClient::new(served.channel().await);
    // 6 MiB, over the 4 MiB default of [server] max_request_bytes, after a message that is fine.
    let huge = "x".repeat(6 * 1024 * 1024);

    let collected = client
        .collect(vec![req("fine", ""), req(&huge, "")])
        .await
        .expect_err("client streaming: the oversized message is refused");
    assert_eq!(collected.code(), Code::ResourceExhausted, "{collected:?}");
    assert!(
        collected.message().contains("max_request_bytes"),
        "{collected:?}"
    );

    let chatted = client
        .chat(&["fine", &huge])
        .await
        .expect_err("bidi streaming: the oversized message is refused");
    assert_eq!(chatted.code(), Code::ResourceExhausted, "{chatted:?}");
    assert!(
        chatted.message().contains("max_request_bytes"),
        "{chatted:?}"
    );

    // The server and its workers live on.
    let reply = client
        .collect(vec![req("a", ""), req("b", "")])
        .await
        .expect("a normal stream is served");
    assert_eq!(reply.text, "a,b");
}

#[tokio::test]
async fn calls_over_the_per_connection_limit_get_resource_exhausted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let template = format!(
        "{}\n[server]\nmax_calls_per_connection = 2\n",
        include_str!("fixtures/echo/worker.toml")
    );
    let path = manifest(dir.path(), "limit.toml", &template, &marker("call-limit"));
    let served = Served::start_with_args(&path, &["--admin", "127.0.0.1:0"]).await;
    let busy = EchoClient::new(served.channel().await);

    // Two slow calls fill the connection's limit...
    let slow = |client: EchoClient| async move {
        client
            .unary(EchoRequest {
                text: "slow".into(),
                mode: "sleep".into(),
                sleep_ms: 4000,
                ..Default::default()
            })
            .await
    };
    let first = tokio::spawn(slow(busy.clone()));
    let second = tokio::spawn(slow(busy.clone()));
    let admin = served.admin.clone().expect("admin address");
    let in_flight = || {
        let (_, text) = support::http_get(&admin, "/metrics");
        text.lines()
            .find_map(|line| {
                line.strip_prefix(
                    r#"exemesh_server_in_flight{service="test.v1.Echo",method="Unary"} "#,
                )
            })
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while in_flight() < 2.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the two slow calls never arrived"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // ...so a third call on the same connection is refused, at once.
    let refusal = busy
        .unary(req("third", ""))
        .await
        .expect_err("a third concurrent call on the connection is refused");
    assert_eq!(refusal.code(), Code::ResourceExhausted, "{refusal:?}");
    assert!(
        refusal.message().contains("max_calls_per_connection"),
        "{refusal:?}"
    );

    // The limit is per connection: another connection is served meanwhile.
    let other = EchoClient::new(served.channel().await);
    assert_eq!(
        other.unary(req("other", "")).await.expect("served").text,
        "other"
    );
    let (_, metrics) = support::http_get(&admin, "/metrics");
    assert!(
        metrics.contains(r#"exemesh_server_refused_total{name="max_calls_per_connection"} "#),
        "{metrics}"
    );

    // The slow calls finish, and their places come back.
    for call in [first, second] {
        assert_eq!(call.await.expect("joined").expect("slow call").text, "slow");
    }
    assert_eq!(
        busy.unary(req("again", "")).await.expect("served").text,
        "again"
    );
}

/// `kinds.v1.Everything` (tests/fixtures/transcode/kinds.proto) with `maybe_text` (field 3) set, and
/// with `at` (field 20, a `Timestamp`) at `seconds` when given.
fn everything(text: &[u8], at_seconds: Option<u64>) -> Vec<u8> {
    let mut message = vec![0x1a, text.len() as u8];
    message.extend_from_slice(text);
    if let Some(mut seconds) = at_seconds {
        let mut timestamp = vec![0x08];
        while seconds >= 0x80 {
            timestamp.push((seconds as u8 & 0x7f) | 0x80);
            seconds >>= 7;
        }
        timestamp.push(seconds as u8);
        message.extend_from_slice(&[0xa2, 0x01, timestamp.len() as u8]);
        message.extend_from_slice(&timestamp);
    }
    message
}

#[tokio::test]
async fn a_request_that_json_cannot_say_is_refused_and_harms_no_worker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fixtures = support::fixture("transcode");
    let text = format!(
        r#"[service]
name = "kinds.v1.Kinds"
protos = ["{f}/kinds.proto"]
include = ["{f}"]
inherit_env = ["PATH"]

[pools.kinds]
argv = ["{f}/kinds_worker.py"]
workers = 1

[methods.Echo]
mode = "worker"

[methods.Cat]
mode = "spawn"
argv = ["/bin/cat"]
"#,
        f = fixtures.display()
    );
    let path = dir.path().join("kinds.toml");
    std::fs::write(&path, text).expect("write manifest");
    let served = Served::start_with_args(&path, &[]).await;
    for method in ["/kinds.v1.Kinds/Echo", "/kinds.v1.Kinds/Cat"] {
        // Valid protobuf, but year 31,690,708: RFC 3339, and so proto3 JSON, cannot write it.
        let bad = everything(b"bad", Some(1_000_000_000_000_000));
        let status = unary_raw(&served.addr, method, &bad, &[])
            .await
            .expect("answered");
        assert_eq!(
            status.code,
            Code::InvalidArgument as i32,
            "{method}: {status:?}"
        );
        assert!(
            status
                .message
                .contains("kinds.v1.Everything cannot be written as JSON"),
            "{method}: {status:?}"
        );
        // The executable is unharmed (the worker never saw a broken line): a valid call is served.
        let status = unary_raw(&served.addr, method, &everything(b"fine", None), &[])
            .await
            .expect("answered");
        assert_eq!(status.code, 0, "{method}: {status:?}");
    }
    let log = served.log();
    assert!(
        !log.contains("protocol") && !log.contains("restart"),
        "the worker was disturbed: {log}"
    );
}
