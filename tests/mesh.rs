//! The mesh: the embedded registry, servers registering themselves, and the balanced channel that
//! callers use, all as real processes on loopback.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use exemesh::mesh::channel::{CallPolicy, MeshChannel};
use exemesh::mesh::discovery::{Discovery, Instance, WatchUpdate, connect};
use futures_util::StreamExt;
use support::echo::{EchoClient, req};
use support::{Registry, Served, manifest, marker};

const SERVICE: &str = "test.v1.Echo";

/// A worker-mode replica (one worker, so the worker's pid identifies the replica).
async fn replica(dir: &std::path::Path, registry: &str, name: &str, env: &str) -> Served {
    let template = include_str!("fixtures/echo/worker.toml")
        .replace("workers = 2", "workers = 1")
        .replace("[env]\n", &format!("[env]\n{env}\n"));
    let path = manifest(dir, &format!("{name}.toml"), &template, &marker(name));
    Served::start_with_args(
        &path,
        &[
            "--discovery",
            registry,
            "--lease-ttl",
            "2s",
            "--instance-id",
            name,
        ],
    )
    .await
}

fn channel(registry: &str) -> MeshChannel {
    let policy = CallPolicy {
        timeout: Duration::from_secs(10),
        idempotent: ["/test.v1.Echo/Unary".to_string()].into(),
        one_message: ["/test.v1.Echo/Unary".to_string()].into(),
        ..CallPolicy::default()
    };
    MeshChannel::new(connect(registry).expect("discovery"), SERVICE, policy)
}

async fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_instances(discovery: &Arc<dyn Discovery>, n: usize, limit: Duration) {
    let start = Instant::now();
    loop {
        let found = discovery
            .resolve(SERVICE)
            .await
            .map(|l| l.len())
            .unwrap_or(0);
        if found == n {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "expected {n} instances, discovery has {found}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `n` unary calls, `concurrency` at a time; returns calls per replica (worker pid), the pids of
/// slow replicas, and the failures.
async fn load(
    client: &EchoClient<MeshChannel>,
    n: usize,
    concurrency: usize,
) -> (BTreeMap<i32, usize>, BTreeSet<i32>, Vec<tonic::Status>) {
    let results = futures_util::stream::iter(0..n)
        .map(|i| {
            let client = client.clone();
            async move { client.unary(req(&i.to_string(), "")).await }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await;
    let mut counts = BTreeMap::new();
    let mut slow = BTreeSet::new();
    let mut failures = Vec::new();
    for result in results {
        match result {
            Ok(reply) => {
                *counts.entry(reply.index).or_insert(0) += 1;
                if reply.env.contains_key("ECHO_DELAY_MS") {
                    slow.insert(reply.index);
                }
            }
            Err(status) => failures.push(status),
        }
    }
    (counts, slow, failures)
}

#[tokio::test]
async fn the_registry_expires_lapsed_leases_and_tells_watchers() {
    let registry = Registry::start("127.0.0.1:0");
    let discovery = connect(&registry.addr).expect("discovery");
    let mut watch = discovery.watch(SERVICE).await.expect("watch");
    assert_eq!(
        watch.next().await.expect("event").expect("ok"),
        WatchUpdate::Snapshot(vec![])
    );
    let instance = Instance {
        id: "i1".into(),
        services: vec![SERVICE.into()],
        address: "127.0.0.1:9".into(),
        ..Default::default()
    };
    let lease = discovery
        .register(instance, Duration::from_millis(1000))
        .await
        .expect("register");
    assert_eq!(lease.ttl, Duration::from_secs(1));
    assert!(
        matches!(watch.next().await, Some(Ok(WatchUpdate::Upsert(list))) if list[0].id == "i1")
    );
    let start = Instant::now();
    // No keep-alive: the lease lapses and the watcher hears of it.
    let removed = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("removal within the TTL");
    assert!(matches!(removed, Some(Ok(WatchUpdate::Remove(list))) if list[0].id == "i1"));
    assert!(
        start.elapsed() >= Duration::from_millis(800),
        "removed before the lease lapsed"
    );
    assert!(
        discovery.keep_alive(lease.id, "i1").await.is_err(),
        "an expired lease cannot be renewed"
    );
}

#[tokio::test]
async fn load_spreads_over_equal_replicas_and_avoids_a_slow_one() {
    let registry = Registry::start("127.0.0.1:0");
    let dir = tempfile::tempdir().expect("tempdir");
    let _a = replica(dir.path(), &registry.addr, "eq-a", "").await;
    let _b = replica(dir.path(), &registry.addr, "eq-b", "").await;
    let _c = replica(dir.path(), &registry.addr, "eq-c", "").await;
    let channel = channel(&registry.addr);
    let client = EchoClient::new_with(channel.clone());
    wait_until("3 endpoints", Duration::from_secs(10), || {
        channel.active_endpoints() == 3
    })
    .await;
    // Each replica gets at least 20 % of 600 calls (a fair share is 33 %). Peak-EWMA reacts to a
    // latency spike for about a second (DECAY), about as long as a round takes, so a stall of one
    // replica's process on this shared machine can tip a single round: the shares are measured
    // again, up to three rounds, and one round must show them all. A balancer that starves an
    // equal replica fails every round.
    let mut rounds = Vec::new();
    for _ in 0..3 {
        let (counts, _, failures) = load(&client, 600, 8).await;
        assert!(failures.is_empty(), "{failures:?}");
        eprintln!("shares over equal replicas: {counts:?}");
        let spread = counts.len() == 3 && counts.values().all(|&n| n >= 120);
        rounds.push(counts);
        if spread {
            break;
        }
    }
    let last = rounds.last().expect("a round");
    assert!(
        last.len() == 3 && last.values().all(|&n| n >= 120),
        "in every round a replica got under 20 % of 600 calls: {rounds:?}"
    );

    let _slow = replica(dir.path(), &registry.addr, "slow", "ECHO_DELAY_MS = \"40\"").await;
    wait_until("4 endpoints", Duration::from_secs(10), || {
        channel.active_endpoints() == 4
    })
    .await;
    let (counts, slow, failures) = load(&client, 800, 8).await;
    assert!(failures.is_empty(), "{failures:?}");
    let slow_pid = *slow
        .iter()
        .next()
        .expect("the slow replica served some calls");
    let slow_share = counts[&slow_pid];
    eprintln!("shares with a slow replica: {counts:?} (slow: {slow_pid})");
    // A fair share is 25% (200 calls); a replica answering 40 ms slower must get clearly less.
    assert!(
        slow_share < 100,
        "the slow replica got {slow_share} of 800 calls: {counts:?}"
    );
}

/// Runs `n` calls, `concurrency` at a time, calling `during` once `at` calls have completed.
async fn load_with_event(
    client: &EchoClient<MeshChannel>,
    n: usize,
    at: usize,
    during: impl FnOnce(),
) -> (BTreeMap<i32, usize>, Vec<tonic::Status>) {
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let task = {
        let client = client.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let results = futures_util::stream::iter(0..n)
                .map(|i| {
                    let client = client.clone();
                    let done = done.clone();
                    async move {
                        let r = client.unary(req(&i.to_string(), "")).await;
                        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        r
                    }
                })
                .buffer_unordered(16)
                .collect::<Vec<_>>()
                .await;
            let mut counts = BTreeMap::new();
            let mut failures = Vec::new();
            for r in results {
                match r {
                    Ok(reply) => *counts.entry(reply.index).or_insert(0) += 1,
                    Err(status) => failures.push(status),
                }
            }
            (counts, failures)
        })
    };
    wait_until("calls to progress", Duration::from_secs(30), || {
        done.load(std::sync::atomic::Ordering::Relaxed) >= at
    })
    .await;
    during();
    task.await.expect("load task")
}

#[tokio::test]
async fn kill_9_of_a_replica_under_load_fails_no_idempotent_call() {
    let registry = Registry::start("127.0.0.1:0");
    let dir = tempfile::tempdir().expect("tempdir");
    let a = replica(dir.path(), &registry.addr, "k9-a", "").await;
    let _b = replica(dir.path(), &registry.addr, "k9-b", "").await;
    let _c = replica(dir.path(), &registry.addr, "k9-c", "").await;
    let channel = channel(&registry.addr);
    let client = EchoClient::new_with(channel.clone());
    wait_until("3 endpoints", Duration::from_secs(10), || {
        channel.active_endpoints() == 3
    })
    .await;
    let (counts, failures) = load_with_event(&client, 1500, 300, || a.signal(libc::SIGKILL)).await;
    assert!(
        failures.is_empty(),
        "{} of 1500 calls failed: {:?}",
        failures.len(),
        failures.first()
    );
    assert_eq!(counts.values().sum::<usize>(), 1500);
    // The dead replica leaves discovery within its lease TTL (2 s) and the balancer with it.
    let discovery = connect(&registry.addr).expect("discovery");
    wait_instances(&discovery, 2, Duration::from_secs(4)).await;
    wait_until("2 endpoints", Duration::from_secs(4), || {
        channel.active_endpoints() == 2
    })
    .await;
}

/// Lists `address` in the registry as instance `id` of the echo service (lease of 30 s, not kept
/// alive); returns the discovery client and the lease.
async fn register_instance(
    registry: &str,
    id: &str,
    address: String,
) -> (Arc<dyn Discovery>, exemesh::mesh::discovery::Lease) {
    let discovery = connect(registry).expect("discovery");
    let instance = Instance {
        id: id.into(),
        services: vec![SERVICE.into()],
        address,
        ..Default::default()
    };
    let lease = discovery
        .register(instance, Duration::from_secs(30))
        .await
        .expect("register");
    (discovery, lease)
}

/// Serves one HTTP/2 connection as a replica dying mid-call: its first call gets response headers
/// and the first `partial` bytes of a message, then the connection closes. `None` when no call
/// came (a client that connected without calling); else whether the client answered both PINGs,
/// i.e. holds what was sent.
async fn answer_then_die(socket: tokio::net::TcpStream, partial: &'static [u8]) -> Option<bool> {
    let mut connection = h2::server::handshake(socket).await.ok()?;
    let mut ping_pong = connection.ping_pong()?;
    let (_request, mut respond) = connection.accept().await?.ok()?;
    let driver = tokio::spawn(async move { while connection.accept().await.is_some() {} });
    let headers = http::Response::builder()
        .header("content-type", "application/grpc")
        .body(())
        .expect("headers");
    let mut stream = respond.send_response(headers, false).ok()?;
    if !partial.is_empty() {
        stream
            .send_data(bytes::Bytes::from_static(partial), false)
            .ok()?;
    }
    // h2 may write a PING ahead of the frames queued before it, in the same flush. A second PING
    // goes out after that flush, so its PONG means that the client has read them.
    let mut answered = true;
    for _ in 0..2 {
        if ping_pong.ping(h2::Ping::opaque()).await.is_err() {
            answered = false;
            break;
        }
    }
    driver.abort();
    let _ = driver.await;
    Some(answered)
}

/// A listener on an ephemeral port of 127.0.0.1, and its address.
async fn local_listener() -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    (listener, address)
}

/// A server that answers one call with response headers and the first `partial` bytes of a message,
/// then dies, as a replica killed between a reply's headers and its message (or inside a message
/// split over frames) would: it closes the connection and stops listening. The receiver fires once
/// the client holds what was sent.
async fn headers_then_death(
    partial: &'static [u8],
) -> (String, tokio::sync::oneshot::Receiver<()>) {
    let (listener, address) = local_listener().await;
    let (hit, hit_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (socket, _) = listener.accept().await.expect("accept");
        drop(listener);
        if answer_then_die(socket, partial).await == Some(true) {
            let _ = hit.send(());
        }
    });
    (address, hit_rx)
}

/// A server that fails every call it gets, on any number of connections: response headers, then
/// the connection closes, as a replica dying mid-call would. Each failed call fires the receiver.
async fn failing_every_call() -> (String, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let (listener, address) = local_listener().await;
    let (hit, hits) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let hit = hit.clone();
            tokio::spawn(async move {
                if answer_then_die(socket, b"").await.is_some() {
                    let _ = hit.send(());
                }
            });
        }
    });
    (address, hits)
}

#[tokio::test]
async fn exemesh_call_retries_an_idempotent_method_on_another_instance() {
    let registry = Registry::start("127.0.0.1:0");
    let dir = tempfile::tempdir().expect("tempdir");
    let _a = replica(dir.path(), &registry.addr, "call-a", "").await;
    let (address, mut hits) = failing_every_call().await;
    let _failing = register_instance(&registry.addr, "call-failing", address).await;
    let channel = channel(&registry.addr);
    wait_until("2 endpoints", Duration::from_secs(10), || {
        channel.active_endpoints() == 2
    })
    .await;
    // Calls until several have met the failing instance: each must be answered, by a retry. Each
    // `exemesh call` learns the contract through reflection over the mesh first; reflection only
    // reads, so it is retried too.
    let mut met = 0;
    for i in 0..100 {
        let out = tokio::process::Command::new(support::exemesh())
            .args(["call", "--discovery", &registry.addr])
            .args(["test.v1.Echo/Unary", r#"{"text":"once"}"#])
            .output()
            .await
            .expect("exemesh call");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "call {i} failed: {stderr}");
        assert!(String::from_utf8_lossy(&out.stdout).contains(r#""text":"once""#));
        while hits.try_recv().is_ok() {
            met += 1;
        }
        // 8 meetings: without reflection retried, the odds that none of them was a reflection
        // call are 1 in 256.
        if met >= 8 {
            return;
        }
    }
    panic!("only {met} of 100 calls met the failing instance");
}

#[tokio::test]
async fn a_replica_dying_between_reply_headers_and_message_fails_no_idempotent_call() {
    no_idempotent_call_fails_when_a_replica_dies_after(b"").await;
}

#[tokio::test]
async fn a_replica_dying_inside_a_reply_message_fails_no_idempotent_call() {
    // A gRPC prefix announcing 64 bytes, and 3 of them.
    no_idempotent_call_fails_when_a_replica_dies_after(&[0, 0, 0, 0, 64, 1, 2, 3]).await;
}

/// Sequential idempotent calls over a replica and a server that dies after sending `partial`
/// (see [`headers_then_death`]): every call is answered.
async fn no_idempotent_call_fails_when_a_replica_dies_after(partial: &'static [u8]) {
    let registry = Registry::start("127.0.0.1:0");
    let dir = tempfile::tempdir().expect("tempdir");
    let _a = replica(dir.path(), &registry.addr, "hd-a", "").await;
    let (address, mut hit) = headers_then_death(partial).await;
    let _dying = register_instance(&registry.addr, "hd-dying", address).await;
    let channel = channel(&registry.addr);
    let client = EchoClient::new_with(channel.clone());
    wait_until("2 endpoints", Duration::from_secs(10), || {
        channel.active_endpoints() == 2
    })
    .await;
    // Sequential calls until one has met the dying server (p2c spreads them over both), then a few
    // more: every one must be answered, the one that met the death by a retry on the replica.
    let mut after_hit = None;
    for i in 0..200 {
        let reply = client.unary(req(&i.to_string(), "")).await;
        assert!(reply.is_ok(), "call {i} failed: {:?}", reply.err());
        if after_hit.is_none() && hit.try_recv().is_ok() {
            after_hit = Some(i);
        }
        if after_hit.is_some_and(|first| i >= first + 5) {
            // A body broken before its first frame benched the dying endpoint at once
            // (docs/mesh-channel.md).
            assert!(
                !partial.is_empty() || channel.ejections() >= 1,
                "the dying endpoint was not ejected"
            );
            return;
        }
    }
    panic!("no call reached the dying server (after_hit = {after_hit:?})");
}

#[tokio::test]
async fn sigterm_of_a_replica_under_load_fails_no_call() {
    let registry = Registry::start("127.0.0.1:0");
    let dir = tempfile::tempdir().expect("tempdir");
    let a = replica(dir.path(), &registry.addr, "term-a", "").await;
    let _b = replica(dir.path(), &registry.addr, "term-b", "").await;
    // Not idempotent here: a graceful stop must not need retries at all.
    let channel = MeshChannel::new(
        connect(&registry.addr).expect("discovery"),
        SERVICE,
        CallPolicy::default(),
    );
    let client = EchoClient::new_with(channel.clone());
    wait_until("2 endpoints", Duration::from_secs(10), || {
        channel.active_endpoints() == 2
    })
    .await;
    let (counts, failures) = load_with_event(&client, 1500, 300, || a.signal(libc::SIGTERM)).await;
    assert!(
        failures.is_empty(),
        "{} of 1500 calls failed: {:?}",
        failures.len(),
        failures.first()
    );
    assert_eq!(
        counts.len(),
        2,
        "both replicas served before the stop: {counts:?}"
    );
    wait_until("1 endpoint", Duration::from_secs(4), || {
        channel.active_endpoints() == 1
    })
    .await;
}

#[tokio::test]
async fn a_registry_restart_loses_no_endpoint_and_instances_come_back() {
    let mut registry = Registry::start("127.0.0.1:0");
    let addr = registry.addr.clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let _a = replica(dir.path(), &addr, "rr-a", "").await;
    let _b = replica(dir.path(), &addr, "rr-b", "").await;
    let channel = channel(&addr);
    let client = EchoClient::new_with(channel.clone());
    wait_until("2 endpoints", Duration::from_secs(10), || {
        channel.active_endpoints() == 2
    })
    .await;

    registry.kill();
    // Static stability: with discovery gone, callers keep their endpoints and keep working.
    let (counts, _, failures) = load(&client, 200, 4).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(counts.len(), 2, "{counts:?}");
    assert_eq!(channel.active_endpoints(), 2);

    // A new registry on the same address: the instances register again by themselves.
    let _registry = Registry::start(&addr);
    let discovery = connect(&addr).expect("discovery");
    // Bounded loosely: the servers notice at their next keep-alive, and a loaded CI machine is slow.
    let start = Instant::now();
    while discovery
        .resolve(SERVICE)
        .await
        .map(|l| l.len())
        .unwrap_or(0)
        != 2
    {
        let registration_log = |s: &Served| {
            s.log()
                .lines()
                .filter(|l| l.contains("regist") || l.contains("lease"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the instances did not re-register:\nA:\n{}\nB:\n{}",
            registration_log(&_a),
            registration_log(&_b)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (counts, _, failures) = load(&client, 200, 4).await;
    assert!(
        failures.is_empty() && counts.len() == 2,
        "{counts:?} {failures:?}"
    );
}

#[tokio::test]
async fn a_new_replica_gets_traffic_quickly() {
    let registry = Registry::start("127.0.0.1:0");
    let dir = tempfile::tempdir().expect("tempdir");
    let _a = replica(dir.path(), &registry.addr, "new-a", "").await;
    let channel = channel(&registry.addr);
    let client = EchoClient::new_with(channel.clone());
    let (counts, _, _) = load(&client, 20, 2).await;
    assert_eq!(counts.len(), 1);
    let old = *counts.keys().next().expect("the first replica's pid");
    let _b = replica(dir.path(), &registry.addr, "new-b", "").await;
    // The replica registers once SERVING (start_with_args waited for that). A new endpoint starts
    // from an optimistic latency estimate, so it should get the very next calls; the bound is loose
    // so that a loaded CI machine cannot make the test flaky, and the measured time is printed.
    let registered = Instant::now();
    loop {
        assert!(
            registered.elapsed() < Duration::from_secs(10),
            "the new replica got no traffic within 10 s"
        );
        let reply = client.unary(req("x", "")).await.expect("call");
        if reply.index != old {
            break;
        }
    }
    eprintln!(
        "the new replica got its first call {:?} after it was SERVING",
        registered.elapsed()
    );
}

#[tokio::test]
async fn an_executable_calls_the_mesh_and_the_outer_deadline_reaches_the_inner_call() {
    let registry = Registry::start("127.0.0.1:0");
    let dir = tempfile::tempdir().expect("tempdir");
    let served = replica(dir.path(), &registry.addr, "outbound-a", "").await;
    let _b = replica(dir.path(), &registry.addr, "outbound-b", "").await;
    let client = EchoClient::new(served.channel().await);
    // The worker calls test.v1.Echo/Unary (mode "deadline") through the mesh; the inner call reports
    // the deadline it was given.
    let reply = client
        .unary_with(
            "/test.v1.Echo/Unary",
            req("nested", "call:test.v1.Echo/Unary"),
            Some(Duration::from_secs(4)),
        )
        .await
        .expect("outer call");
    assert_eq!(reply.text, "nested");
    assert!(
        reply.timeout_ms > 1_000 && reply.timeout_ms <= 4_000,
        "the inner call got {}ms, not the outer 4s deadline",
        reply.timeout_ms
    );

    // Without a client deadline the server's default (20 s in the fixture manifest) is what propagates.
    let reply = client
        .unary_with(
            "/test.v1.Echo/Unary",
            req("nested", "call:test.v1.Echo/Unary"),
            None,
        )
        .await
        .expect("outer call");
    assert!(
        reply.timeout_ms > 15_000 && reply.timeout_ms <= 20_000,
        "inner deadline {}ms",
        reply.timeout_ms
    );

    // An error of the inner call comes back with its status.
    let status = client
        .unary(req("x", "call:test.v1.Echo/NoSuchMethod"))
        .await
        .expect_err("unknown method");
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
}

#[tokio::test]
async fn outbound_calls_need_discovery() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = manifest(
        dir.path(),
        "w.toml",
        include_str!("fixtures/echo/worker.toml"),
        &marker("no-discovery"),
    );
    let served = Served::start(&path).await;
    let client = EchoClient::new(served.channel().await);
    let status = client
        .unary(req("x", "call:test.v1.Echo/Unary"))
        .await
        .expect_err("no discovery");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("--discovery"), "{status:?}");
}

#[tokio::test]
async fn a_dead_endpoint_is_ejected_then_readmitted_when_it_comes_back() {
    let registry = Registry::start("127.0.0.1:0");
    let dir = tempfile::tempdir().expect("tempdir");
    let _live = replica(dir.path(), &registry.addr, "live", "").await;
    // An instance that discovery lists but that does not answer: its port is held by a socket that
    // does not listen, so connecting is refused and no other test can take the port. The socket
    // allows address reuse, as does serve's listener (tokio's), so serve can bind it later.
    let held = tokio::net::TcpSocket::new_v4().expect("socket");
    held.set_reuseaddr(true).expect("SO_REUSEADDR");
    held.bind("127.0.0.1:0".parse().expect("address"))
        .expect("bind");
    let port = held.local_addr().expect("address").port();
    let (discovery, lease) =
        register_instance(&registry.addr, "comeback", format!("127.0.0.1:{port}")).await;
    let channel = channel(&registry.addr);
    let client = EchoClient::new_with(channel.clone());
    wait_until("2 endpoints", Duration::from_secs(10), || {
        channel.active_endpoints() == 2
    })
    .await;

    // Idempotent calls keep succeeding (retried away from the dead endpoint), which gets benched.
    let (counts, _, failures) = load(&client, 100, 4).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(counts.len(), 1);
    assert!(
        channel.ejections() >= 1,
        "the dead endpoint was never ejected"
    );
    assert_eq!(
        channel.active_endpoints(),
        1,
        "benched endpoints leave the balancer"
    );

    // The instance comes back on its address: after its backoff it is probed and used again.
    let template = include_str!("fixtures/echo/worker.toml").replace("workers = 2", "workers = 1");
    let path = manifest(dir.path(), "comeback.toml", &template, &marker("comeback"));
    let _back = Served::spawn_with(&path, &[], &["--listen", &format!("127.0.0.1:{port}")]);
    _back.wait_serving().await;
    let start = Instant::now();
    let mut pids: BTreeSet<i32> = BTreeSet::new();
    while pids.len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the endpoint was never readmitted ({pids:?})"
        );
        let (counts, _, failures) = load(&client, 20, 4).await;
        assert!(failures.is_empty(), "{failures:?}");
        pids.extend(counts.keys().copied());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = discovery.keep_alive(lease.id, "comeback").await;
}
