//! Keeping one instance registered for the life of a server: register, renew the lease at a third of
//! its TTL, register again when the lease is lost (the registry restarted), and deregister on stop.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Discovery, DiscoveryError, Instance};

const RETRY_START: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// A running registration.
#[derive(Debug)]
pub struct Registration {
    discovery: Arc<dyn Discovery>,
    instance_id: String,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Registration {
    /// Starts registering `instance` with leases of `ttl`, retrying in the background until it
    /// succeeds (a server starts even if discovery is down).
    pub fn start(discovery: Arc<dyn Discovery>, instance: Instance, ttl: Duration) -> Registration {
        let (stop, stopped) = watch::channel(false);
        let instance_id = instance.id.clone();
        let task = tokio::spawn(keep_registered(discovery.clone(), instance, ttl, stopped));
        Registration {
            discovery,
            instance_id,
            stop,
            task,
        }
    }

    /// The registered instance's id.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// Stops renewing and deregisters (bounded: a dead registry cannot hold up shutdown; the lease
    /// then simply expires).
    pub async fn stop(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
        match tokio::time::timeout(
            Duration::from_secs(2),
            self.discovery.deregister(&self.instance_id),
        )
        .await
        {
            Ok(Ok(())) => tracing::info!(id = %self.instance_id, "deregistered"),
            Ok(Err(e)) => {
                tracing::warn!(id = %self.instance_id, "deregistration failed ({e}); the lease will expire")
            }
            Err(_) => {
                tracing::warn!(id = %self.instance_id, "deregistration timed out; the lease will expire")
            }
        }
    }
}

async fn keep_registered(
    discovery: Arc<dyn Discovery>,
    instance: Instance,
    ttl: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut retry = RETRY_START;
    let mut warned = false;
    'register: loop {
        if *stopped.borrow() {
            return;
        }
        let lease = match discovery.register(instance.clone(), ttl).await {
            Ok(lease) => lease,
            Err(e) => {
                if !warned {
                    tracing::warn!(id = %instance.id, "registration failed ({e}); retrying");
                    warned = true;
                }
                if sleep_or_stop(retry, &mut stopped).await {
                    return;
                }
                retry = (retry * 2).min(RETRY_MAX);
                continue;
            }
        };
        tracing::info!(id = %instance.id, address = %instance.address, "registered with a {}ms lease", lease.ttl.as_millis());
        retry = RETRY_START;
        warned = false;
        let interval = (lease.ttl / 3).max(Duration::from_millis(100));
        let mut last_ok = tokio::time::Instant::now();
        loop {
            if sleep_or_stop(interval, &mut stopped).await {
                return;
            }
            match discovery.keep_alive(lease.id, &instance.id).await {
                Ok(()) => last_ok = tokio::time::Instant::now(),
                Err(DiscoveryError::LeaseLost(_)) => {
                    tracing::info!(id = %instance.id, "lease lost; registering again");
                    continue 'register;
                }
                Err(e) if last_ok.elapsed() >= lease.ttl => {
                    tracing::warn!(id = %instance.id, "lease renewal failing for a whole TTL ({e}); registering again");
                    continue 'register;
                }
                Err(e) => tracing::debug!(id = %instance.id, "lease renewal failed: {e}"),
            }
        }
    }
}

/// Sleeps; true if stopped meanwhile.
async fn sleep_or_stop(duration: Duration, stopped: &mut watch::Receiver<bool>) -> bool {
    let stopped_now = tokio::select! {
        _ = tokio::time::sleep(duration) => false,
        _ = stopped.wait_for(|s| *s) => true,
    };
    stopped_now || *stopped.borrow()
}
