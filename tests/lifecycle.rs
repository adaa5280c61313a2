//! Shutdown and process hygiene: SIGTERM drains in-flight calls, and no executable outlives exemesh,
//! however it ends.

mod support;

use std::time::{Duration, Instant};

use support::echo::{EchoClient, EchoRequest, req};
use support::{Served, manifest, marker, wait_no_processes};

fn write(test: &str, template: &str) -> (std::path::PathBuf, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mark = marker(test);
    let path = manifest(dir.path(), "m.toml", template, &mark);
    (path, mark, dir)
}

async fn wait_log(served: &Served, needle: &str) {
    let start = Instant::now();
    while !served.log().contains(needle) {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "never logged {needle:?}\n{}",
            served.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn sigterm_drains_in_flight_calls_then_stops_every_worker() {
    let (path, mark, _dir) = write("sigterm", include_str!("fixtures/echo/worker.toml"));
    let mut served = Served::start(&path).await;
    let client = EchoClient::new(served.channel().await);
    let slow = EchoRequest {
        text: "in-flight".into(),
        mode: "sleep".into(),
        sleep_ms: 1500,
        ..Default::default()
    };
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.unary(slow).await }
    });
    wait_log(&served, "started in-flight").await;
    served.signal(libc::SIGTERM);
    let reply = call
        .await
        .expect("task")
        .expect("the in-flight call completes during the drain");
    assert_eq!(reply.text, "in-flight");
    let status = tokio::task::spawn_blocking(move || {
        let status = served.wait_exit(Duration::from_secs(15));
        (status, served.log())
    })
    .await
    .expect("join");
    assert!(
        status.0.success(),
        "exit status {:?}\n{}",
        status.0,
        status.1
    );
    assert!(
        status.1.contains("health: NotServing") || status.1.contains("shutting down"),
        "{}",
        status.1
    );
    let left = wait_no_processes(&mark, Duration::from_secs(5)).await;
    assert!(left.is_empty(), "workers outlived exemesh: {left:?}");
}

#[tokio::test]
async fn new_calls_are_refused_while_draining() {
    let (path, _mark, _dir) = write("drain-refuse", include_str!("fixtures/echo/worker.toml"));
    let served = Served::start(&path).await;
    let client = EchoClient::new(served.channel().await);
    let slow = EchoRequest {
        text: "long".into(),
        mode: "sleep".into(),
        sleep_ms: 3000,
        ..Default::default()
    };
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.unary(slow).await }
    });
    wait_log(&served, "started long").await;
    served.signal(libc::SIGTERM);
    wait_log(&served, "shutting down").await;
    // A fresh connection finds the listener closed.
    let refused = tonic::transport::Endpoint::from_shared(format!("http://{}", served.addr))
        .expect("uri")
        .connect()
        .await;
    assert!(
        refused.is_err(),
        "the listener still accepts during the drain"
    );
    assert_eq!(call.await.expect("task").expect("drained").text, "long");
}

#[tokio::test]
async fn kill_9_of_exemesh_leaves_no_worker_behind() {
    let (path, mark, _dir) = write("kill9-workers", include_str!("fixtures/echo/worker.toml"));
    let served = Served::start(&path).await;
    let start = Instant::now();
    while support::processes_named(&mark, "python3").len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the two workers never ran"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    served.signal(libc::SIGKILL);
    let left = wait_no_processes(&mark, Duration::from_secs(5)).await;
    assert!(
        left.is_empty(),
        "workers outlived kill -9 of exemesh: {left:?}"
    );
}

#[tokio::test]
async fn kill_9_of_exemesh_leaves_no_spawned_grandchild_behind() {
    let (path, mark, _dir) = write("kill9-spawn", include_str!("fixtures/echo/spawn.toml"));
    let served = Served::start(&path).await;
    let client = EchoClient::new(served.channel().await);
    let call = tokio::spawn(async move { client.unary(req("x", "grandchild")).await });
    // The grandchild (`sleep 300`) exists once the executable got as far as starting it.
    support::wait_for_process(&mark, "sleep", Duration::from_secs(10)).await;
    served.signal(libc::SIGKILL);
    let left = wait_no_processes(&mark, Duration::from_secs(5)).await;
    assert!(
        left.is_empty(),
        "spawned processes outlived kill -9 of exemesh: {left:?}"
    );
    call.await.expect("task").expect_err("the server died");
}
