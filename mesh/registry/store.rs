//! Instances bound to leases, and a feed of changes for watchers.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::pb::v1::Instance;

/// The shortest lease the registry grants.
pub const MIN_TTL: Duration = Duration::from_secs(1);

/// A change to the set of instances.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Added or replaced.
    Upsert(Instance),
    /// Removed (deregistered or expired).
    Remove(Instance),
}

impl Change {
    /// The instance concerned.
    pub fn instance(&self) -> &Instance {
        match self {
            Change::Upsert(i) | Change::Remove(i) => i,
        }
    }
}

/// The lease is unknown: it expired, or the registry restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("lease {0} is unknown or expired; register again")]
pub struct UnknownLease(pub u64);

#[derive(Debug)]
struct Entry {
    instance: Instance,
    lease: u64,
    ttl: Duration,
    expires: Instant,
}

#[derive(Debug, Default)]
struct State {
    instances: HashMap<String, Entry>,
    leases: HashMap<u64, String>,
    next_lease: u64,
}

/// The registry's state.
#[derive(Debug)]
pub struct Store {
    state: Mutex<State>,
    changes: broadcast::Sender<Change>,
}

fn random_start() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    // Leave room to count up; never 0.
    (h.finish() >> 16).max(1)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Default for Store {
    fn default() -> Self {
        Self::new(4096)
    }
}

impl Store {
    /// A store whose change feed buffers `backlog` changes per watcher before it must re-snapshot.
    pub fn new(backlog: usize) -> Self {
        Self {
            state: Mutex::new(State {
                // Lease ids start at a random point so that a restarted registry does not hand out
                // its predecessor's ids (a server still holding one would renew a stranger's lease).
                next_lease: random_start(),
                ..State::default()
            }),
            changes: broadcast::channel(backlog.max(16)).0,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(state: &State) {
        crate::mesh::telemetry::metrics::metrics()
            .registry_instances
            .set(state.instances.len() as i64);
    }

    /// Adds or replaces (by id) an instance with a new lease; returns the lease and its TTL.
    pub fn register(&self, mut instance: Instance, ttl: Duration, now: Instant) -> (u64, Duration) {
        let ttl = ttl.max(MIN_TTL);
        let stamp = unix_ms();
        instance.registered_unix_ms = stamp;
        instance.renewed_unix_ms = stamp;
        let mut state = self.state();
        let lease = state.next_lease;
        state.next_lease += 1;
        if let Some(old) = state.instances.remove(&instance.id) {
            state.leases.remove(&old.lease);
        }
        state.leases.insert(lease, instance.id.clone());
        state.instances.insert(
            instance.id.clone(),
            Entry {
                instance: instance.clone(),
                lease,
                ttl,
                expires: now + ttl,
            },
        );
        Self::count(&state);
        // Sent under the lock so that watchers see changes in the order they happened.
        let _ = self.changes.send(Change::Upsert(instance));
        (lease, ttl)
    }

    /// Renews a lease (of `instance`, when given).
    pub fn keep_alive(
        &self,
        lease: u64,
        instance: Option<&str>,
        now: Instant,
    ) -> Result<Duration, UnknownLease> {
        let mut state = self.state();
        let id = state
            .leases
            .get(&lease)
            .cloned()
            .ok_or(UnknownLease(lease))?;
        if instance.is_some_and(|i| i != id) {
            return Err(UnknownLease(lease));
        }
        let entry = state.instances.get_mut(&id).ok_or(UnknownLease(lease))?;
        entry.expires = now + entry.ttl;
        entry.instance.renewed_unix_ms = unix_ms();
        Ok(entry.ttl)
    }

    /// The services of a registered instance.
    pub fn services_of(&self, id: &str) -> Option<Vec<String>> {
        self.state()
            .instances
            .get(id)
            .map(|e| e.instance.services.clone())
    }

    /// Removes an instance; false if it was not registered.
    pub fn deregister(&self, id: &str) -> bool {
        let mut state = self.state();
        let Some(entry) = state.instances.remove(id) else {
            return false;
        };
        state.leases.remove(&entry.lease);
        Self::count(&state);
        let _ = self.changes.send(Change::Remove(entry.instance));
        true
    }

    /// Removes every instance whose lease expired at `now`; returns them.
    pub fn expire(&self, now: Instant) -> Vec<Instance> {
        let mut state = self.state();
        let expired: Vec<String> = state
            .instances
            .iter()
            .filter(|(_, e)| e.expires <= now)
            .map(|(id, _)| id.clone())
            .collect();
        let mut removed = Vec::with_capacity(expired.len());
        for id in expired {
            if let Some(entry) = state.instances.remove(&id) {
                state.leases.remove(&entry.lease);
                let _ = self.changes.send(Change::Remove(entry.instance.clone()));
                removed.push(entry.instance);
            }
        }
        Self::count(&state);
        removed
    }

    /// The instances serving `service` (all of them for ""), sorted by id.
    pub fn resolve(&self, service: &str) -> Vec<Instance> {
        snapshot(&self.state(), service)
    }

    /// The current set and a feed of the changes after it, taken atomically.
    pub fn watch(&self, service: &str) -> (Vec<Instance>, broadcast::Receiver<Change>) {
        let state = self.state();
        (snapshot(&state, service), self.changes.subscribe())
    }

    /// When the next lease expires, if any.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.state().instances.values().map(|e| e.expires).min()
    }
}

fn snapshot(state: &State, service: &str) -> Vec<Instance> {
    let mut list: Vec<Instance> = state
        .instances
        .values()
        .filter(|e| serves(&e.instance, service))
        .map(|e| e.instance.clone())
        .collect();
    list.sort_by(|a, b| a.id.cmp(&b.id));
    list
}

/// True when `instance` serves `service` ("" matches everything).
pub fn serves(instance: &Instance, service: &str) -> bool {
    service.is_empty() || instance.services.iter().any(|s| s == service)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: &str, service: &str) -> Instance {
        Instance {
            id: id.into(),
            services: vec![service.into()],
            address: format!("127.0.0.1:{}", id.len()),
            ..Default::default()
        }
    }

    #[test]
    fn leases_expire_unless_kept_alive() {
        let store = Store::default();
        let t0 = Instant::now();
        let (a, ttl) = store.register(instance("a", "s"), Duration::from_millis(10), t0);
        assert_eq!(ttl, MIN_TTL, "raised to the minimum");
        let (_b, _) = store.register(instance("b", "s"), Duration::from_secs(2), t0);
        assert!(store.expire(t0 + Duration::from_millis(900)).is_empty());
        store
            .keep_alive(a, Some("a"), t0 + Duration::from_millis(900))
            .expect("alive");
        assert!(
            store.expire(t0 + Duration::from_millis(1_500)).is_empty(),
            "renewed at 0.9 s: alive until 1.9 s"
        );
        store
            .keep_alive(a, Some("a"), t0 + Duration::from_millis(1_500))
            .expect("alive");
        let gone = store.expire(t0 + Duration::from_millis(2_100));
        assert_eq!(
            gone.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
            vec!["b"]
        );
        assert_eq!(store.resolve("s").len(), 1);
        let gone = store.expire(t0 + Duration::from_millis(2_600));
        assert_eq!(gone.len(), 1);
        assert_eq!(store.keep_alive(a, None, t0), Err(UnknownLease(a)));
    }

    #[test]
    fn watchers_get_a_snapshot_then_ordered_changes() {
        let store = Store::default();
        let now = Instant::now();
        store.register(instance("a", "s"), Duration::from_secs(5), now);
        let (snap, mut feed) = store.watch("s");
        assert_eq!(snap.len(), 1);
        store.register(instance("b", "other"), Duration::from_secs(5), now);
        assert!(store.deregister("a"));
        assert!(!store.deregister("a"));
        assert!(matches!(feed.try_recv(), Ok(Change::Upsert(i)) if i.id == "b"));
        assert!(matches!(feed.try_recv(), Ok(Change::Remove(i)) if i.id == "a"));
    }

    #[test]
    fn re_registering_an_id_replaces_it_and_its_lease() {
        let store = Store::default();
        let now = Instant::now();
        let (old, _) = store.register(instance("a", "s"), Duration::from_secs(5), now);
        let (new, _) = store.register(instance("a", "s"), Duration::from_secs(5), now);
        assert_ne!(old, new);
        assert_eq!(store.resolve("").len(), 1);
        assert!(store.keep_alive(old, None, now).is_err());
        assert!(store.keep_alive(new, Some("a"), now).is_ok());
        assert!(
            store.keep_alive(new, Some("b"), now).is_err(),
            "a lease of another instance"
        );
    }
}
