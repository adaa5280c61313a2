//! Following the instances of a service for callers.
//!
//! The set is published through a `watch` channel. When discovery is unreachable the last known set is
//! kept (static stability) while the watch is re-established with backoff; a fresh snapshot then
//! replaces it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Discovery, Instance, WatchUpdate};

/// Instances by id; `None` until the first snapshot arrived.
pub type InstanceSet = Option<Arc<BTreeMap<String, Instance>>>;

const RETRY_START: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// A live view of one service's instances.
#[derive(Debug)]
pub struct Watcher {
    set: watch::Receiver<InstanceSet>,
    task: JoinHandle<()>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Watcher {
    /// Starts following `service`.
    pub fn start(discovery: Arc<dyn Discovery>, service: &str) -> Watcher {
        let (tx, set) = watch::channel(None);
        let task = tokio::spawn(follow(discovery, service.to_string(), tx));
        Watcher { set, task }
    }

    /// Subscribes to the set.
    pub fn subscribe(&self) -> watch::Receiver<InstanceSet> {
        self.set.clone()
    }

    /// The current set (empty before the first snapshot).
    pub fn current(&self) -> Vec<Instance> {
        self.set
            .borrow()
            .as_ref()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }
}

async fn follow(discovery: Arc<dyn Discovery>, service: String, tx: watch::Sender<InstanceSet>) {
    let mut retry = RETRY_START;
    loop {
        match discovery.watch(&service).await {
            Ok(mut updates) => {
                while let Some(update) = updates.next().await {
                    match update {
                        Ok(update) => {
                            retry = RETRY_START;
                            apply(&tx, update);
                        }
                        Err(e) => {
                            tracing::warn!(service = %service, "watch failed ({e}); keeping the last known instances");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::debug!(service = %service, "cannot watch ({e}); keeping the last known instances")
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(RETRY_MAX);
    }
}

fn apply(tx: &watch::Sender<InstanceSet>, update: WatchUpdate) {
    tx.send_modify(|set| {
        let mut map = set.as_ref().map(|m| (**m).clone()).unwrap_or_default();
        match update {
            WatchUpdate::Snapshot(all) => {
                map = all.into_iter().map(|i| (i.id.clone(), i)).collect()
            }
            WatchUpdate::Upsert(list) => map.extend(list.into_iter().map(|i| (i.id.clone(), i))),
            WatchUpdate::Remove(list) => {
                for i in list {
                    map.remove(&i.id);
                }
            }
        }
        *set = Some(Arc::new(map));
    });
}
