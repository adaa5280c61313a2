//! The command line as a user runs it: `exemesh check`, `exemesh init`, `exemesh call`.

mod support;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use support::{Served, exemesh, fixture, manifest, marker, root};

/// Runs `exemesh` with `args` (a `bench … --json`), which must succeed, and returns its report.
fn bench_report(args: &[&str]) -> serde_json::Value {
    let out = run(args, None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("a JSON report")
}

fn run(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(exemesh())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run exemesh");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("write stdin");
    }
    drop(input);
    child.wait_with_output().expect("wait")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_accepts_the_shop_manifests() {
    for name in ["product.toml", "user.toml", "order.toml"] {
        let path = root().join("examples/shop").join(name);
        let out = run(&["check", path.to_str().expect("utf-8")], None);
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        assert!(
            text(&out.stdout).starts_with("ok: shop.v1."),
            "{}",
            text(&out.stdout)
        );
    }
}

#[test]
fn check_reports_every_problem_with_file_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = r#"
[service]
name = "test.v1.Echo"
protos = ["@FIXTURES@/echo.proto"]
include = ["@FIXTURES@"]

[methods.Unary]
mode = "spawn"
argv = ["@FIXTURES@/echo_spawn.py", "{no_such_field}"]

[methods.Expand]
mode = "spawn"
argv = ["./missing-program"]

[methods.Collect]
mode = "spawn"
argv = ["@FIXTURES@/echo_spawn.py", "{text}"]

[methods.Chat]
mode = "worker"

[methods.Legacy]
mode = "spawn"
argv = ["/bin/echo"]
output = "text"
text_field = "nope"

[server]
max_calls_per_connection = 100
max_concurrent_streams = 50
"#;
    let path = manifest(dir.path(), "bad.toml", bad, "m");
    let out = run(&["check", path.to_str().expect("utf-8")], None);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    let file = path.display().to_string();
    for expected in [
        format!("{file}: methods.Expand.argv[0]: program \"./missing-program\" not found"),
        format!("{file}: methods.Chat.pool: must name one of the pools (none defined"),
        format!(
            "{file}: server.max_concurrent_streams: is 50 but must be at least max_calls_per_connection (100)"
        ),
    ] {
        assert!(err.contains(&expected), "missing {expected:?} in:\n{err}");
    }

    // Once the manifest itself is valid, the contract checks run.
    let fixed = bad
        .replace("argv = [\"./missing-program\"]", "argv = [\"/bin/true\"]")
        .replace(
            "max_concurrent_streams = 50",
            "max_concurrent_streams = 100",
        )
        .replace(
            "mode = \"worker\"",
            "mode = \"spawn\"\nargv = [\"/bin/true\"]",
        );
    let path = manifest(dir.path(), "bad2.toml", &fixed, "m");
    let out = run(&["check", path.to_str().expect("utf-8")], None);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    for expected in [
        "methods.Unary.argv[1]: placeholder {no_such_field} names no field of test.v1.EchoRequest (fields: text, count, sleep_ms, mode, big, nested)",
        "methods.Collect.argv[1]: placeholders need a single request message, but Collect is client_streaming",
        "methods.Legacy.text_field: test.v1.EchoReply has no field nope",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

#[test]
fn check_names_the_line_of_a_syntax_error_or_unknown_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = manifest(
        dir.path(),
        "typo.toml",
        "[service]\nname = \"x.v1.S\"\nprotos = [\"a.proto\"]\nlisten_adress = \"127.0.0.1:1\"\n",
        "m",
    );
    let out = run(&["check", path.to_str().expect("utf-8")], None);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("typo.toml") && err.contains("line 4") && err.contains("listen_adress"),
        "{err}"
    );
}

#[test]
fn init_writes_a_manifest_that_check_understands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_path = dir.path().join("echo.toml");
    let proto = fixture("echo/echo.proto");
    let out = run(
        &[
            "init",
            proto.to_str().expect("utf-8"),
            "-o",
            out_path.to_str().expect("utf-8"),
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let written = std::fs::read_to_string(&out_path).expect("manifest written");
    for method in ["Unary", "Expand", "Collect", "Chat", "Legacy"] {
        assert!(
            written.contains(&format!("[methods.{method}]")),
            "{written}"
        );
    }
    // Untouched, check points at the placeholders the user must edit...
    let out = run(&["check", out_path.to_str().expect("utf-8")], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("methods.Unary.argv[0]: program \"./CHANGE-ME\" not found"),
        "{}",
        text(&out.stderr)
    );
    // ...and once the program exists, it is a valid manifest.
    let script = dir.path().join("CHANGE-ME");
    std::fs::write(&script, "#!/bin/sh\necho '{}'\n").expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let out = run(&["check", out_path.to_str().expect("utf-8")], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // It never overwrites.
    let again = run(
        &[
            "init",
            proto.to_str().expect("utf-8"),
            "-o",
            out_path.to_str().expect("utf-8"),
        ],
        None,
    );
    assert_eq!(again.status.code(), Some(1));
}

#[tokio::test]
async fn call_speaks_json_in_and_out_with_exit_codes_from_the_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = manifest(
        dir.path(),
        "spawn.toml",
        include_str!("fixtures/echo/spawn.toml"),
        &marker("cli-call"),
    );
    let served = Served::start(&path).await;
    let addr = served.addr.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        // unary, request as an argument
        let out = run(
            &[
                "call",
                &addr,
                "test.v1.Echo/Legacy",
                r#"{"text":"hi there"}"#,
            ],
            None,
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "{\"text\":\"hi there\"}\n");

        // server streaming: one JSON line per message; request from a file
        let file = dir.path().join("req.json");
        std::fs::write(&file, r#"{"text":"s","count":3}"#).expect("write");
        let out = run(
            &[
                "call",
                &addr,
                "test.v1.Echo/Expand",
                "-d",
                &format!("@{}", file.display()),
            ],
            None,
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(
            text(&out.stdout),
            "{\"text\":\"s\"}\n{\"text\":\"s\",\"index\":1}\n{\"text\":\"s\",\"index\":2}\n"
        );

        // client streaming from stdin: several JSON values
        let out = run(
            &["call", &addr, "test.v1.Echo/Collect", "-d", "-"],
            Some("{\"text\":\"a\"}\n{\"text\":\"b\"}\n"),
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "{\"text\":\"a,b\",\"index\":2}\n");

        // an error status: stderr and exit code 100 + code
        let out = run(
            &[
                "call",
                &addr,
                "test.v1.Echo/Unary",
                r#"{"mode":"error-json:NOT_FOUND"}"#,
            ],
            None,
        );
        assert_eq!(out.status.code(), Some(105));
        let stderr = text(&out.stderr);
        assert_eq!(
            stderr.lines().next(),
            Some("NOT_FOUND: reported by the executable"),
            "{stderr}"
        );
        assert!(
            stderr
                .lines()
                .nth(1)
                .is_some_and(|l| l.starts_with("trace ") && l.len() == 38),
            "the trace id is printed: {stderr}"
        );

        // the deadline
        let out = run(
            &[
                "call",
                &addr,
                "test.v1.Echo/Unary",
                r#"{"mode":"sleep","sleepMs":5000}"#,
                "--timeout",
                "300ms",
            ],
            None,
        );
        assert_eq!(out.status.code(), Some(104), "{}", text(&out.stderr));
        assert!(
            text(&out.stderr).starts_with("DEADLINE_EXCEEDED"),
            "{}",
            text(&out.stderr)
        );

        // user mistakes are named
        let out = run(&["call", &addr, "test.v1.Echo/Nope"], None);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            text(&out.stderr).contains(
                "test.v1.Echo has no method Nope (methods: Unary, Expand, Collect, Chat, Legacy)"
            ),
            "{}",
            text(&out.stderr)
        );
        let out = run(
            &["call", &addr, "test.v1.Echo/Unary", r#"{"txet":"typo"}"#],
            None,
        );
        assert_eq!(out.status.code(), Some(1));
        assert!(
            text(&out.stderr).contains("not a valid test.v1.EchoRequest")
                && text(&out.stderr).contains("txet"),
            "{}",
            text(&out.stderr)
        );
    });
    outcome.await.expect("cli assertions");
}

#[tokio::test]
async fn bench_reads_the_contract_from_proto_files_when_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = manifest(
        dir.path(),
        "bench.toml",
        include_str!("fixtures/echo/worker.toml"),
        &marker("bench-proto"),
    );
    let served = Served::start(&path).await;
    let proto = fixture("echo/echo.proto");
    let include = fixture("echo");
    let (proto, include) = (
        proto.to_str().expect("utf-8"),
        include.to_str().expect("utf-8"),
    );
    let args = |proto: &str, include: &str| {
        vec![
            "bench".to_string(),
            "--proto".into(),
            proto.into(),
            "-I".into(),
            include.into(),
            served.addr.clone(),
            "test.v1.Echo/Unary".into(),
            r#"{"text":"x"}"#.into(),
            "-n".into(),
            "5".into(),
            "-c".into(),
            "1".into(),
            "--warmup".into(),
            "0s".into(),
            "--json".into(),
        ]
    };
    let ok = args(proto, include);
    let report = bench_report(&ok.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(report["calls"], 5, "{report}");

    // The descriptor comes from the files, not from the server: a file without the service fails
    // even though the server has it.
    let other = dir.path().join("other.proto");
    std::fs::write(
        &other,
        "syntax = \"proto3\";\npackage other.v1;\nmessage M {}\nservice S { rpc Do(M) returns (M); }\n",
    )
    .expect("write");
    let wrong = args(
        other.to_str().expect("utf-8"),
        dir.path().to_str().expect("utf-8"),
    );
    let out = run(&wrong.iter().map(String::as_str).collect::<Vec<_>>(), None);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("the --proto files define no service test.v1.Echo"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn bench_sends_the_request_it_was_given_on_every_call() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = manifest(
        dir.path(),
        "request.toml",
        include_str!("fixtures/echo/worker.toml"),
        &marker("bench-request"),
    );
    let served = Served::start(&path).await;
    // The request is encoded once for the whole run: the worker must see it on every call, here as
    // the error it asks for (an empty or damaged request would be answered OK).
    for client in ["tonic", "exemesh"] {
        let out = run(
            &[
                "bench",
                "--client",
                client,
                &served.addr,
                "test.v1.Echo/Unary",
                r#"{"text":"x","mode":"error:NOT_FOUND"}"#,
                "-n",
                "20",
                "-c",
                "4",
                "--warmup",
                "0s",
                "--json",
            ],
            None,
        );
        // Failed calls make the run exit with 1, after its report.
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
        assert_eq!(
            (
                report["ok"].as_u64(),
                report["errors"]["NOT_FOUND"].as_u64()
            ),
            (Some(0), Some(20)),
            "{client}: {report}"
        );
    }
}

#[tokio::test]
async fn bench_with_the_exemesh_client_calls_the_server_and_names_one_it_cannot_reach() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = manifest(
        dir.path(),
        "client.toml",
        include_str!("fixtures/echo/worker.toml"),
        &marker("bench-client"),
    );
    let served = Served::start(&path).await;
    let report = bench_report(&[
        "bench",
        "--client",
        "exemesh",
        "--connections",
        "2",
        &served.addr,
        "test.v1.Echo/Unary",
        r#"{"text":"x"}"#,
        "-n",
        "40",
        "-c",
        "4",
        "--warmup",
        "0s",
        "--json",
    ]);
    assert_eq!(
        (report["calls"].as_u64(), report["ok"].as_u64()),
        (Some(40), Some(40)),
        "{report}"
    );

    // A bound socket that does not listen: connecting is refused, and no other test can take it.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("address"))
        .expect("bind");
    let closed = socket.local_addr().expect("address").to_string();
    let out = run(
        &[
            "bench",
            "--client",
            "exemesh",
            &closed,
            "grpc.health.v1.Health/Check",
            "-n",
            "1",
        ],
        None,
    );
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("UNAVAILABLE") && stderr.contains(&closed),
        "{stderr}"
    );
    drop(socket);
}

#[tokio::test]
async fn bench_paces_calls_at_a_fixed_rate_and_reports_a_timeline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = manifest(
        dir.path(),
        "paced.toml",
        include_str!("fixtures/echo/worker.toml"),
        &marker("bench-rate"),
    );
    let served = Served::start(&path).await;
    let report = bench_report(&[
        "bench",
        &served.addr,
        "test.v1.Echo/Unary",
        r#"{"text":"x"}"#,
        "--rate",
        "200",
        "-n",
        "40",
        "-c",
        "4",
        "--warmup",
        "0s",
        "--timeline",
        "50ms",
        "--json",
    ]);
    assert_eq!(
        (report["calls"].as_u64(), report["ok"].as_u64()),
        (Some(40), Some(40)),
        "{report}"
    );
    assert_eq!(report["rate"], 200.0, "{report}");
    // Paced, the 40th call is not sent before 39/200 s = 195 ms after the first (a closed loop
    // makes 40 echo calls in a few milliseconds). A lower bound: no machine is too fast for it.
    let seconds = report["seconds"].as_f64().expect("seconds");
    assert!(seconds >= 0.195, "not paced: {report}");
    let slices = report["timeline"].as_array().expect("a timeline");
    assert!(slices.len() >= 4, "195 ms in 50 ms slices: {report}");
    let counted: u64 = slices.iter().filter_map(|s| s["calls"].as_u64()).sum();
    assert_eq!(counted, 40, "every call is in one slice: {report}");

    let out = run(
        &["bench", &served.addr, "test.v1.Echo/Unary", "--rate", "0"],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--rate") && text(&out.stderr).contains("above 0"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn bench_discovery_loads_the_registry_and_times_changes_at_every_watcher() {
    let registry = support::Registry::start("127.0.0.1:0");
    support::bench_discovery(&registry.addr, 200).await;

    let out = run(&["bench-discovery", "--watchers", "0"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--watchers"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn busy_poll_takes_microseconds_up_to_a_millisecond() {
    let product = root().join("examples/shop/product.toml");
    let product = product.to_str().expect("utf-8");
    let out = run(&["--busy-poll", "5000", "check", product], None);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("--busy-poll") && err.contains("0..=1000"),
        "{err}"
    );
    for value in ["0", "1000"] {
        let out = run(&["check", product, "--busy-poll", value], None);
        assert!(out.status.success(), "{value}: {}", text(&out.stderr));
    }
}

#[tokio::test]
async fn threads_sizes_the_runtime_and_a_server_takes_half_the_cpus_by_default() {
    let product = root().join("examples/shop/product.toml");
    let threads_in_log = |served: &Served| {
        let log = served.log();
        let found = log
            .split("(runtime threads: ")
            .nth(1)
            .and_then(|rest| rest.split(')').next())
            .and_then(|n| n.parse::<usize>().ok());
        (found, log)
    };
    let explicit = Served::start_with_args(&product, &["--threads", "3"]).await;
    let (found, log) = threads_in_log(&explicit);
    assert_eq!(found, Some(3), "{log}");

    let default = Served::start(&product).await;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (found, log) = threads_in_log(&default);
    assert_eq!(found, Some((cpus / 2).max(1)), "{log}");

    let out = run(
        &["--threads", "0", "check", product.to_str().expect("utf-8")],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--threads"),
        "{}",
        text(&out.stderr)
    );
}
