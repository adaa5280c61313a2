//! Power of two choices over peak-EWMA latency, in the caller's own task.
//!
//! The endpoints in rotation are an immutable list swapped whole when the endpoint manager changes
//! it. A call picks two endpoints at random from the current list, takes the one with the lower
//! cost (its decayed peak-EWMA round-trip time × (calls in flight + 1), as tower's `PeakEwma`
//! computes it) and calls it directly: no balancer task to hand the call to and no lock held across
//! a call. Each endpoint is one shared HTTP/2 connection ([`super::link::Link`]), which the call
//! sends on directly.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use http::{Request, Response};
use tokio::sync::Notify;
use tokio::time::Instant;
use tonic::body::Body;
use tower::discover::Change;

use super::endpoints::Reporting;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An endpoint in rotation.
#[derive(Debug)]
struct Slot {
    key: String,
    service: Reporting,
    load: PeakEwma,
}

/// Peak-EWMA of an endpoint's round-trip time, and its calls in flight.
#[derive(Debug)]
struct PeakEwma {
    estimate: Mutex<Estimate>,
    pending: AtomicUsize,
    decay_ns: f64,
}

#[derive(Debug, Clone, Copy)]
struct Estimate {
    rtt_ns: f64,
    at: Instant,
    /// False until the first round trip: the estimate is then the default, which does not fade.
    /// Faded from each endpoint's insertion, it made the endpoint inserted first always the
    /// cheaper of two unmeasured ones, so every fresh channel's first calls (all of a one-shot
    /// `exemesh call`'s) went to it; equal, a tie goes either way (the pair is drawn in random
    /// order).
    measured: bool,
}

impl PeakEwma {
    fn new(default_rtt: Duration, decay: Duration) -> Self {
        Self {
            estimate: Mutex::new(Estimate {
                rtt_ns: default_rtt.as_nanos() as f64,
                at: Instant::now(),
                measured: false,
            }),
            pending: AtomicUsize::new(0),
            decay_ns: decay.as_nanos() as f64,
        }
    }

    fn estimate(&self) -> std::sync::MutexGuard<'_, Estimate> {
        self.estimate.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The estimate decayed to now, times the calls in flight plus one.
    fn cost(&self, now: Instant) -> f64 {
        let mut estimate = self.estimate();
        if estimate.measured && now > estimate.at {
            let elapsed = (now - estimate.at).as_nanos() as f64;
            estimate.rtt_ns *= (-elapsed / self.decay_ns).exp();
            estimate.at = now;
        }
        let pending = self.pending.load(Ordering::Relaxed) as f64;
        estimate.rtt_ns * (pending + 1.0)
    }

    /// A round trip from `sent` to `received`: a slower one than the estimate replaces it at once
    /// (the peak), a faster one is averaged in with a weight that grows with the time since the
    /// last sample.
    fn observe(&self, sent: Instant, received: Instant) {
        let rtt = received.saturating_duration_since(sent).as_nanos() as f64;
        let mut estimate = self.estimate();
        if !estimate.measured {
            // The default was a guess: the first sample starts the average.
            estimate.measured = true;
            estimate.rtt_ns = rtt;
        } else if rtt > estimate.rtt_ns {
            estimate.rtt_ns = rtt;
        } else {
            let elapsed = received.saturating_duration_since(estimate.at).as_nanos() as f64;
            let decay = (-elapsed / self.decay_ns).exp();
            estimate.rtt_ns = estimate.rtt_ns * decay + rtt * (1.0 - decay);
        }
        estimate.at = estimate.at.max(received);
    }
}

/// The endpoints of one service, and the choice among them.
#[derive(Debug)]
pub struct Balancer {
    endpoints: RwLock<Arc<Vec<Arc<Slot>>>>,
    changed: Notify,
    default_rtt: Duration,
    decay: Duration,
}

/// The endpoint picked for one call; counts as in flight on it until dropped.
#[derive(Debug)]
pub struct Picked {
    slot: Arc<Slot>,
}

impl Drop for Picked {
    fn drop(&mut self) {
        self.slot.load.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Picked {
    /// Makes the call on the endpoint, timing its round trip (to the response headers).
    pub async fn call(self, request: Request<Body>) -> Result<Response<Body>, BoxError> {
        let sent = Instant::now();
        let result = self.slot.service.call(request).await;
        self.slot.load.observe(sent, Instant::now());
        result
    }
}

impl Balancer {
    /// No endpoints yet; a new endpoint's latency is taken as `default_rtt` until measured, and old
    /// samples fade over `decay`.
    pub fn new(default_rtt: Duration, decay: Duration) -> Self {
        Self {
            endpoints: RwLock::new(Arc::new(Vec::new())),
            changed: Notify::new(),
            default_rtt,
            decay,
        }
    }

    fn current(&self) -> Arc<Vec<Arc<Slot>>> {
        self.endpoints
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Applies a change from the endpoint manager (an endpoint inserted again replaces the old one).
    pub fn apply(&self, change: Change<String, Reporting>) {
        let mut endpoints = self.endpoints.write().unwrap_or_else(|p| p.into_inner());
        let mut next: Vec<Arc<Slot>> = endpoints.iter().cloned().collect();
        match change {
            Change::Insert(key, service) => {
                next.retain(|s| s.key != key);
                next.push(Arc::new(Slot {
                    key,
                    service,
                    load: PeakEwma::new(self.default_rtt, self.decay),
                }));
            }
            Change::Remove(key) => next.retain(|s| s.key != key),
        }
        *endpoints = Arc::new(next);
        drop(endpoints);
        self.changed.notify_waiters();
    }

    /// Picks an endpoint for a call, waiting for one while there is none (the caller's deadline
    /// bounds the wait).
    pub async fn pick(&self) -> Picked {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(picked) = self.try_pick() {
                return picked;
            }
            changed.await;
        }
    }

    fn try_pick(&self) -> Option<Picked> {
        let endpoints = self.current();
        let slot = match endpoints.len() {
            0 => return None,
            1 => &endpoints[0],
            n => {
                let (a, b) = two_distinct(n);
                let now = Instant::now();
                let (a, b) = (&endpoints[a], &endpoints[b]);
                if a.load.cost(now) <= b.load.cost(now) {
                    a
                } else {
                    b
                }
            }
        };
        slot.load.pending.fetch_add(1, Ordering::Relaxed);
        Some(Picked { slot: slot.clone() })
    }
}

/// Two different indices below `n` (n ≥ 2), at random.
fn two_distinct(n: usize) -> (usize, usize) {
    let r = random();
    let a = (r % n as u64) as usize;
    let mut b = ((r >> 32) % (n as u64 - 1)) as usize;
    if b >= a {
        b += 1;
    }
    (a, b)
}

/// A fast per-thread pseudo-random number (xorshift64*), seeded from the process's random hasher.
fn random() -> u64 {
    use std::cell::Cell;
    use std::hash::{BuildHasher, Hasher};
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_usize(0);
            h.finish() | 1
        });
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_distinct_indices_cover_every_pair() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2000 {
            let (a, b) = two_distinct(3);
            assert!(a < 3 && b < 3 && a != b);
            seen.insert((a, b));
        }
        assert_eq!(seen.len(), 6, "every ordered pair of 3 comes up");
    }

    #[test]
    fn peak_ewma_takes_peaks_at_once_and_forgets_them_with_time() {
        let load = PeakEwma::new(Duration::from_micros(100), Duration::from_secs(1));
        let t0 = Instant::now();
        assert!((load.cost(t0) - 100_000.0).abs() < 100.0);
        load.observe(t0, t0 + Duration::from_millis(10));
        let at = t0 + Duration::from_millis(10);
        assert!(
            (load.cost(at) - 10_000_000.0).abs() < 1.0,
            "the peak is taken whole"
        );
        load.pending.fetch_add(1, Ordering::Relaxed);
        assert!(
            (load.cost(at) - 20_000_000.0).abs() < 1.0,
            "a call in flight doubles it"
        );
        load.pending.fetch_sub(1, Ordering::Relaxed);
        let later = at + Duration::from_secs(1);
        let faded = load.cost(later);
        assert!(
            (faded - 10_000_000.0 / std::f64::consts::E).abs() < 1_000.0,
            "decays by e per second: {faded}"
        );
        load.observe(later, later + Duration::from_micros(50));
        assert!(
            load.cost(later + Duration::from_micros(50)) < faded,
            "a fast call pulls it down"
        );
    }

    #[test]
    fn an_unmeasured_endpoint_costs_the_default_however_old_and_its_first_call_sets_it() {
        let load = PeakEwma::new(Duration::from_micros(100), Duration::from_secs(1));
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(3);
        assert_eq!(load.cost(later), 100_000.0, "the default does not fade");
        load.observe(later, later + Duration::from_micros(40));
        let cost = load.cost(later + Duration::from_micros(40));
        assert!(
            (cost - 40_000.0).abs() < 1.0,
            "the first sample, whole: {cost}"
        );
    }

    #[test]
    fn unmeasured_endpoints_each_get_picked() {
        use super::super::endpoints::Reporting;
        use super::super::link::Link;
        let balancer = Balancer::new(Duration::from_micros(100), Duration::from_secs(1));
        let (verdicts, _) = tokio::sync::mpsc::unbounded_channel();
        for (key, port) in [("first", 1), ("second", 2), ("third", 3)] {
            let link = Link::new(&format!("127.0.0.1:{port}"), None).expect("a link");
            let reporting = Reporting::new(link, key, false, verdicts.clone());
            balancer.apply(Change::Insert(key.to_string(), reporting));
            // Inserted at different times, as the endpoint manager does.
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut picked = std::collections::BTreeMap::new();
        for _ in 0..300 {
            let choice = balancer.try_pick().expect("an endpoint");
            *picked.entry(choice.slot.key.clone()).or_insert(0) += 1;
        }
        assert_eq!(picked.len(), 3, "{picked:?}");
        assert!(picked.values().all(|&n| n >= 50), "{picked:?}");
    }
}
