//! Distributed tracing end to end: the shop's PlaceOrder through the mesh, every exemesh process
//! exporting to an OTLP/gRPC collector built from the official protos, and the whole tree checked.

mod support;

use std::process::Command;
use std::time::Duration;

use support::collector::{Collector, Received};
use support::{Registry, Served, exemesh, root};

const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const INTERNAL: i32 = 1;
const ERROR: i32 = 2;

struct Mesh {
    _registry: Registry,
    _servers: Vec<Served>,
    registry: String,
    env: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

async fn mesh(collector: &Collector) -> Mesh {
    mesh_with(collector, &[]).await
}

async fn mesh_with(collector: &Collector, extra: &[(String, String)]) -> Mesh {
    let registry = Registry::start("127.0.0.1:0");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut env = vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_string(),
            collector.endpoint.clone(),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY".to_string(), "100".to_string()),
        (
            "SHOP_DB".to_string(),
            dir.path().join("orders.db").display().to_string(),
        ),
    ];
    env.extend(extra.iter().cloned());
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut servers = Vec::new();
    for name in ["product", "user", "order"] {
        let manifest = root().join(format!("examples/shop/{name}.toml"));
        servers.push(
            Served::start_with_env_args(&manifest, &env_refs, &["--discovery", &registry.addr])
                .await,
        );
    }
    Mesh {
        registry: registry.addr.clone(),
        _registry: registry,
        _servers: servers,
        env,
        _dir: dir,
    }
}

/// Runs `exemesh call` (exporting its own client span) and returns its trace id and exit code.
async fn call(mesh: &Mesh, json: &str) -> (String, Option<i32>) {
    let (registry, env, json) = (mesh.registry.clone(), mesh.env.clone(), json.to_string());
    tokio::task::spawn_blocking(move || call_blocking(&registry, &env, &json))
        .await
        .expect("call")
}

fn call_blocking(registry: &str, env: &[(String, String)], json: &str) -> (String, Option<i32>) {
    let out = Command::new(exemesh())
        .args([
            "call",
            "--discovery",
            registry,
            "shop.v1.OrderService/PlaceOrder",
            json,
        ])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("exemesh call");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let trace = stderr
        .lines()
        .find_map(|l| l.strip_prefix("trace "))
        .unwrap_or_else(|| panic!("no trace id printed: {stderr}"));
    (trace.to_string(), out.status.code())
}

/// Spans of `service` named `name`, or starting with `name ` (exec and call spans name their method).
fn find<'a>(spans: &'a [Received], service: &str, name: &str) -> Vec<&'a Received> {
    spans
        .iter()
        .filter(|s| {
            s.service == service
                && (s.span.name == name || s.span.name.starts_with(&format!("{name} ")))
        })
        .collect()
}

fn is_exec(s: &Received) -> bool {
    s.span.name.starts_with("exec ")
}

fn one<'a>(spans: &'a [Received], service: &str, name: &str) -> &'a Received {
    let found = find(spans, service, name);
    assert_eq!(
        found.len(),
        1,
        "expected one {name} span from {service}, found {}",
        found.len()
    );
    found[0]
}

fn parent_of<'a>(spans: &'a [Received], child: &Received) -> &'a Received {
    spans
        .iter()
        .find(|s| s.span_id() == child.parent_id())
        .unwrap_or_else(|| {
            panic!(
                "the parent of {} ({}) is missing",
                child.span.name, child.service
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn place_order_is_one_trace_from_the_cli_into_every_executable() {
    let collector = Collector::start().await;
    let mesh = mesh(&collector).await;
    let order = r#"{"userId":"u1","lines":[{"productId":"p1","quantity":2},{"productId":"p3","quantity":1}]}"#;
    let (trace, code) = call(&mesh, order).await;
    assert_eq!(code, Some(0));
    // Expected: cli client → order server → order exec → 3 outbound calls (user + 2 products), each
    // rpc.client → server → exec.
    let spans = collector
        .wait_trace(&trace, Duration::from_secs(20), |s| {
            s.iter().filter(|x| is_exec(x)).count() >= 4
                && s.iter().filter(|x| x.kind() == SERVER).count() >= 4
                && s.iter().any(|x| x.service == "exemesh-call")
        })
        .await;
    assert!(spans.iter().all(|s| s.trace_id() == trace), "one trace id");

    // The CLI's own span is the root; the mesh channel's client span (with the retries, if any) is its
    // child.
    let cli = find(&spans, "exemesh-call", "shop.v1.OrderService/PlaceOrder")
        .into_iter()
        .find(|s| s.span.parent_span_id.is_empty())
        .expect("a root span from the CLI");
    assert_eq!(cli.kind(), CLIENT);
    let mesh_client = spans.iter().find(|s| {
        s.service == "exemesh-call" && s.kind() == CLIENT && s.parent_id() == cli.span_id()
    });
    let order_server = one(
        &spans,
        "shop.v1.OrderService",
        "shop.v1.OrderService/PlaceOrder",
    );
    assert_eq!(order_server.kind(), SERVER);
    let expected_parent = mesh_client
        .map(|m| m.span_id())
        .unwrap_or_else(|| cli.span_id());
    assert_eq!(
        order_server.parent_id(),
        expected_parent,
        "the server continues the caller's trace"
    );
    assert_eq!(order_server.attr("rpc.system").as_deref(), Some("grpc"));
    assert_eq!(
        order_server.attr("rpc.service").as_deref(),
        Some("shop.v1.OrderService")
    );
    assert_eq!(
        order_server.attr("rpc.method").as_deref(),
        Some("PlaceOrder")
    );
    assert_eq!(
        order_server.attr("rpc.grpc.status_code").as_deref(),
        Some("0")
    );
    assert_eq!(
        order_server.attr("server.address").as_deref(),
        Some("127.0.0.1")
    );
    assert!(order_server.attr("network.peer.address").is_some());

    let order_exec = one(&spans, "shop.v1.OrderService", "exec");
    assert_eq!(
        (order_exec.kind(), order_exec.parent_id()),
        (INTERNAL, order_server.span_id())
    );
    assert_eq!(order_exec.attr("exemesh.mode").as_deref(), Some("worker"));
    assert!(
        order_exec
            .attr("exemesh.worker")
            .is_some_and(|w| w.starts_with("shop#"))
    );
    assert!(order_exec.attr("process.pid").is_some());

    // The worker's outbound calls are children of its execution.
    let outbound = find(&spans, "shop.v1.OrderService", "call");
    assert_eq!(outbound.len(), 3, "GetUser + GetProduct x2");
    for call in &outbound {
        assert_eq!(call.parent_id(), order_exec.span_id());
        // (The first call to a service also fetches its contract through reflection: another client
        // span under the same call.)
        let method = call.span.name.trim_start_matches("call ");
        let client = spans
            .iter()
            .find(|s| {
                s.kind() == CLIENT && s.parent_id() == call.span_id() && s.span.name == method
            })
            .expect("a client span per outbound call");
        let server = spans
            .iter()
            .find(|s| s.kind() == SERVER && s.parent_id() == client.span_id())
            .expect("the callee's server span");
        let exec = spans
            .iter()
            .find(|s| is_exec(s) && s.parent_id() == server.span_id())
            .expect("the callee's exec span");
        assert_eq!(exec.service, server.service);
        assert_eq!(server.attr("rpc.grpc.status_code").as_deref(), Some("0"));
    }
    let product_execs = find(&spans, "shop.v1.ProductService", "exec");
    assert_eq!(product_execs.len(), 2);
    for exec in product_execs {
        assert_eq!(exec.attr("exemesh.mode").as_deref(), Some("spawn"));
        assert_eq!(exec.attr("process.exit_code").as_deref(), Some("0"));
        assert!(
            exec.attr("exemesh.bytes_out")
                .is_some_and(|b| b.parse::<i64>().unwrap_or(0) > 0)
        );
        assert_eq!(parent_of(&spans, exec).service, "shop.v1.ProductService");
    }
    drop(mesh);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_call_is_recorded_as_an_error_along_the_trace() {
    let collector = Collector::start().await;
    let mesh = mesh(&collector).await;
    let order = r#"{"userId":"nobody","lines":[{"productId":"p1","quantity":1}]}"#;
    let (trace, code) = call(&mesh, order).await;
    assert_eq!(code, Some(105), "NOT_FOUND");
    let spans = collector
        .wait_trace(&trace, Duration::from_secs(20), |s| {
            s.iter().filter(|x| x.kind() == SERVER).count() >= 2
                && s.iter().any(|x| x.service == "exemesh-call")
                && s.iter()
                    .any(|x| is_exec(x) && x.service == "shop.v1.OrderService")
        })
        .await;
    let order_server = one(
        &spans,
        "shop.v1.OrderService",
        "shop.v1.OrderService/PlaceOrder",
    );
    assert_eq!(
        order_server.attr("rpc.grpc.status_code").as_deref(),
        Some("5")
    );
    assert_eq!(order_server.status(), ERROR);
    let user_server = one(&spans, "shop.v1.UserService", "shop.v1.UserService/GetUser");
    assert_eq!(
        user_server.attr("rpc.grpc.status_code").as_deref(),
        Some("5")
    );
    assert_eq!(user_server.status(), ERROR);
    let order_exec = one(&spans, "shop.v1.OrderService", "exec");
    assert_eq!(order_exec.status(), ERROR);
    let cli = find(&spans, "exemesh-call", "shop.v1.OrderService/PlaceOrder")
        .into_iter()
        .find(|s| s.span.parent_span_id.is_empty())
        .expect("a root span from the CLI");
    assert_eq!(cli.status(), ERROR);
    drop(mesh);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workers_python_spans_nest_under_the_exec_span() {
    // The shop workers run with the test venv's python, which has the OpenTelemetry SDK.
    let venv = root().join(".venv/bin");
    assert!(
        venv.join("python3").exists(),
        "{} is missing: scripts/test.sh creates it",
        venv.display()
    );
    let path = format!(
        "{}:{}",
        venv.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let collector = Collector::start().await;
    let mesh = mesh_with(&collector, &[("PATH".to_string(), path)]).await;
    let (trace, code) = call(
        &mesh,
        r#"{"userId":"u2","lines":[{"productId":"p2","quantity":1}]}"#,
    )
    .await;
    assert_eq!(code, Some(0));
    let spans = collector
        .wait_trace(&trace, Duration::from_secs(20), |s| {
            let python: Vec<&Received> = s.iter().filter(|x| x.service == "shop.py").collect();
            python.len() >= 2
                && python
                    .iter()
                    .all(|p| s.iter().any(|x| x.span_id() == p.parent_id()))
        })
        .await;
    for (python, server) in [
        ("shop.place_order", "shop.v1.OrderService"),
        ("shop.get_user", "shop.v1.UserService"),
    ] {
        let span = one(&spans, "shop.py", python);
        assert_eq!(
            span.trace_id(),
            trace,
            "the Python span shares the trace id"
        );
        let exec = parent_of(&spans, span);
        assert!(
            is_exec(exec) && exec.service == server,
            "{python}'s parent is {} from {}",
            exec.span.name,
            exec.service
        );
    }
    drop(mesh);
}

async fn served_echo(
    dir: &std::path::Path,
    name: &str,
    telemetry: &str,
    env: &[(&str, &str)],
) -> Served {
    let template = format!(
        "{}\n{telemetry}\n",
        include_str!("fixtures/echo/worker.toml")
    );
    let path = support::manifest(
        dir,
        &format!("{name}.toml"),
        &template,
        &support::marker(name),
    );
    Served::start_with_env_args(&path, env, &[]).await
}

async fn call_and_stop(mut served: Served) -> String {
    let client = support::echo::EchoClient::new(served.channel().await);
    for _ in 0..3 {
        client
            .unary(support::echo::req("x", ""))
            .await
            .expect("call");
    }
    served.signal(libc::SIGTERM);
    tokio::task::spawn_blocking(move || {
        served.wait_exit(Duration::from_secs(20));
        served.log()
    })
    .await
    .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_keys_configure_export_and_otel_sdk_disabled_turns_it_off() {
    let collector = Collector::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let telemetry = format!(
        "[telemetry]\notlp_endpoint = \"{}\"\nservice_name = \"echo-from-manifest\"",
        collector.endpoint
    );

    // The manifest's [telemetry] keys alone turn export on (and name the service)...
    let on = served_echo(
        dir.path(),
        "on",
        &telemetry,
        &[("OTEL_BSP_SCHEDULE_DELAY", "50")],
    )
    .await;
    let log = call_and_stop(on).await;
    assert!(log.contains("exporting spans to"), "{log}");
    let spans = collector.spans();
    assert!(
        spans
            .iter()
            .filter(|s| s.service == "echo-from-manifest" && s.kind() == SERVER)
            .count()
            >= 3,
        "{} spans",
        spans.len()
    );

    // ...and OTEL_SDK_DISABLED=true switches everything off: no exporter, not a single span.
    let before = collector.spans().len();
    let off = served_echo(
        dir.path(),
        "off",
        &telemetry,
        &[
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
    )
    .await;
    let log = call_and_stop(off).await;
    assert!(!log.contains("exporting spans"), "{log}");
    assert_eq!(
        collector.spans().len(),
        before,
        "spans were exported with OTEL_SDK_DISABLED=true"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_and_ejections_are_events_on_the_client_span() {
    let collector = Collector::start().await;
    let registry = Registry::start("127.0.0.1:0");
    let dir = tempfile::tempdir().expect("tempdir");
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "50"),
    ];
    let template = include_str!("fixtures/echo/worker.toml").replace("workers = 2", "workers = 1");
    let callee = support::manifest(
        dir.path(),
        "callee.toml",
        &template,
        &support::marker("callee"),
    );
    let _callee = Served::start_with_env_args(
        &callee,
        &env,
        &["--discovery", &registry.addr, "--instance-id", "callee"],
    )
    .await;
    // A registered instance nothing answers for: calls routed to it fail to connect.
    let discovery = exemesh::mesh::discovery::connect(&registry.addr).expect("discovery");
    // Its port is held by a socket that does not listen: connecting is refused, and no other test
    // can take the port.
    let held = tokio::net::TcpSocket::new_v4().expect("socket");
    held.bind("127.0.0.1:0".parse().expect("address"))
        .expect("bind");
    let dead = held.local_addr().expect("address");
    let ghost = exemesh::mesh::discovery::Instance {
        id: "ghost".into(),
        services: vec!["test.v1.Echo".into()],
        address: dead.to_string(),
        ..Default::default()
    };
    discovery
        .register(ghost, Duration::from_secs(60))
        .await
        .expect("register the ghost");
    // The caller's worker calls test.v1.Echo/Unary through the mesh; the contract marks it
    // idempotent (NO_SIDE_EFFECTS), so failed attempts are retried on the live replica.
    let caller = support::manifest(
        dir.path(),
        "caller.toml",
        &template,
        &support::marker("caller"),
    );
    let caller = Served::start_with_env_args(
        &caller,
        &env,
        &["--discovery", &registry.addr, "--instance-id", "caller"],
    )
    .await;
    let client = support::echo::EchoClient::new(caller.channel().await);
    for i in 0..12 {
        let reply = client
            .unary(support::echo::req(
                &i.to_string(),
                "call:test.v1.Echo/Unary",
            ))
            .await
            .expect("the retries hide the dead instance");
        assert_eq!(reply.text, i.to_string());
    }
    let has_event = |spans: &[Received], name: &str| {
        spans
            .iter()
            .any(|s| s.kind() == CLIENT && s.span.events.iter().any(|e| e.name == name))
    };
    let start = std::time::Instant::now();
    loop {
        let spans = collector.spans();
        if has_event(&spans, "retry") && has_event(&spans, "endpoint ejected") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no retry/ejection events among {} spans; caller log:\n{}",
            spans.len(),
            spans
                .iter()
                .filter(|s| s.kind() == CLIENT)
                .map(|s| format!(
                    "{} {} {:?}",
                    s.service,
                    s.span.name,
                    s.span
                        .events
                        .iter()
                        .map(|e| e.name.clone())
                        .collect::<Vec<_>>()
                ))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
