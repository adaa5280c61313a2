//! Busy polling, on a real runtime over real loopback sockets: the runtime's threads see replies
//! while they poll, and polling holds up neither work queued from outside nor a runtime without it.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use exemesh::mesh::busy_poll::BusyPoll;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Two worker threads, as on the 2-CPU machines these tests run on.
const TWO: std::num::NonZeroUsize = std::num::NonZeroUsize::new(2).expect("non-zero");

/// A peer on its own OS thread that echoes every byte it reads, one at a time, until end-of-file.
fn echo_peer() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        conn.set_nodelay(true).expect("nodelay");
        let mut byte = [0u8; 1];
        while conn.read_exact(&mut byte).is_ok() && conn.write_all(&byte).is_ok() {}
    });
    addr
}

/// Sends `n` one-byte pings to `addr` one at a time, each waiting for its echo.
async fn ping_pong(addr: std::net::SocketAddr, n: usize) {
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    conn.set_nodelay(true).expect("nodelay");
    let mut byte = [7u8; 1];
    for _ in 0..n {
        conn.write_all(&byte).await.expect("write");
        conn.read_exact(&mut byte).await.expect("read");
    }
}

#[test]
fn replies_that_come_soon_are_caught_by_polling() {
    // A generous maximum, so that a slow machine's replies still come within it.
    let (runtime, poll) = BusyPoll::build_runtime(Duration::from_millis(1), TWO).expect("runtime");
    assert!(
        poll.is_active(),
        "the runtime's epoll instance was not found"
    );
    let addr = echo_peer();
    runtime.block_on(async { tokio::spawn(ping_pong(addr, 500)).await.expect("pings") });
    assert!(poll.caught() > 0, "no reply was seen while polling");
}

#[test]
fn without_busy_polling_nothing_polls() {
    let (runtime, poll) = BusyPoll::build_runtime(Duration::ZERO, TWO).expect("runtime");
    assert!(!poll.is_active());
    let addr = echo_peer();
    runtime.block_on(async { tokio::spawn(ping_pong(addr, 200)).await.expect("pings") });
    assert_eq!(poll.caught(), 0);
}

#[test]
fn tasks_from_other_threads_and_timers_still_run_while_threads_poll() {
    let (runtime, poll) = BusyPoll::build_runtime(Duration::from_millis(1), TWO).expect("runtime");
    assert!(poll.is_active());
    let addr = echo_peer();
    // Replies within the maximum open every polling thread's window.
    runtime.block_on(ping_pong(addr, 300));
    let handle = runtime.handle().clone();
    for _ in 0..50 {
        let (tx, rx) = std::sync::mpsc::channel();
        handle.spawn(async move {
            tokio::time::sleep(Duration::from_micros(200)).await;
            tx.send(())
        });
        rx.recv_timeout(Duration::from_secs(20))
            .expect("a task spawned from another thread never finished");
    }
}
