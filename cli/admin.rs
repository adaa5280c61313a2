//! The `--admin ADDR` option shared by the long-running subcommands.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use exemesh::mesh::telemetry::admin::serve_admin;
use tokio::task::JoinHandle;

/// A running admin endpoint (or none).
pub struct Admin {
    addr: Option<SocketAddr>,
    ready: Arc<AtomicBool>,
    task: Option<JoinHandle<()>>,
}

impl Drop for Admin {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Binds and serves the admin endpoints when `addr` is given.
pub async fn start(addr: Option<SocketAddr>, ready: bool) -> anyhow::Result<Admin> {
    let ready = Arc::new(AtomicBool::new(ready));
    let Some(addr) = addr else {
        return Ok(Admin {
            addr: None,
            ready,
            task: None,
        });
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (--admin)"))?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(serve_admin(listener, ready.clone(), std::future::pending()));
    Ok(Admin {
        addr: Some(bound),
        ready,
        task: Some(task),
    })
}

impl Admin {
    /// A second line for the startup banner, printed in the same write as the first.
    pub fn banner(&self) -> String {
        self.addr
            .map(|a| format!("\nadmin listening on {a}"))
            .unwrap_or_default()
    }

    /// Drives `/readyz`.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
}
