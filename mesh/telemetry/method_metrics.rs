//! One method's call metrics, looked up in their families at its first call and kept.
//!
//! prometheus-client finds a labelled metric by building its label set (a `String` per label) and
//! hashing it (SipHash), under the family's lock: five times per served call (in flight up and
//! down, the count by status, the latency). The metrics themselves are shared handles, so a handle
//! kept per method records into the same series as a lookup would, for a few atomic operations.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use super::metrics::{CallLabels, CodeLabels, call_labels, code_labels, metrics};
use super::rpc_span::Side;

/// Paths kept per side, each with its own series. Paths come from callers (any name, known to the
/// contract or not): past this many, the calls of a path not seen yet are counted under
/// [`OVERFLOW`], so a caller making up method names grows neither this map nor `/metrics` without
/// bound. A contract has far fewer methods.
const MAX_KEPT: usize = 1024;

/// The path whose series (service and method `_other`) count the calls of paths past [`MAX_KEPT`].
const OVERFLOW: &str = "/_other/_other";

/// The gRPC status codes, 0 to 16: each gets its counter kept.
const CODES: usize = 17;

/// The metrics of one method's calls on one side of the call.
#[derive(Debug)]
pub struct MethodMetrics {
    labels: CallLabels,
    /// The family of the counts by status, for the codes not kept yet.
    requests: &'static Family<CodeLabels, Counter>,
    /// The count of each status code, once it has been seen.
    by_code: [OnceLock<Counter>; CODES],
    duration: Histogram,
    /// Calls in flight (served calls only).
    in_flight: Option<Gauge>,
}

impl MethodMetrics {
    /// The metrics of `path`'s calls on `side`, looked up in their families (which creates the
    /// series on first use, as a lookup at each call would).
    fn new(side: Side, path: &str) -> MethodMetrics {
        let m = metrics();
        let labels = call_labels(path);
        let (requests, duration, in_flight) = match side {
            Side::Server => (
                &m.server_requests,
                m.server_duration.get_or_create(&labels).clone(),
                Some(m.server_in_flight.get_or_create(&labels).clone()),
            ),
            Side::Client => (
                &m.client_requests,
                m.client_duration.get_or_create(&labels).clone(),
                None,
            ),
        };
        MethodMetrics {
            labels,
            requests,
            by_code: std::array::from_fn(|_| OnceLock::new()),
            duration,
            in_flight,
        }
    }

    /// The metrics of `path`'s calls on `side`: kept after the first call (or, past [`MAX_KEPT`]
    /// paths, those of [`OVERFLOW`]).
    pub fn of(side: Side, path: &str) -> Arc<MethodMetrics> {
        type Kept = RwLock<HashMap<Box<str>, Arc<MethodMetrics>, foldhash::fast::RandomState>>;
        static KEPT: OnceLock<[Kept; 2]> = OnceLock::new();
        let kept = &KEPT.get_or_init(Default::default)[side as usize];
        let read = kept.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(found) = read.get(path) {
            return found.clone();
        }
        drop(read);
        let mut write = kept.write().unwrap_or_else(PoisonError::into_inner);
        let path = match write.get(path) {
            Some(found) => return found.clone(),
            None if write.len() < MAX_KEPT => path,
            None => OVERFLOW,
        };
        write
            .entry(path.into())
            .or_insert_with(|| Arc::new(MethodMetrics::new(side, path)))
            .clone()
    }

    /// A call started.
    pub fn started(&self) {
        if let Some(in_flight) = &self.in_flight {
            in_flight.inc();
        }
    }

    /// A call ended with status `code` after `seconds`.
    pub fn finished(&self, code: i32, seconds: f64) {
        if let Some(in_flight) = &self.in_flight {
            in_flight.dec();
        }
        let counter = |code| {
            self.requests
                .get_or_create(&code_labels(&self.labels, code))
                .clone()
        };
        match usize::try_from(code).ok().and_then(|i| self.by_code.get(i)) {
            Some(kept) => kept.get_or_init(|| counter(code)).inc(),
            None => counter(code).inc(),
        };
        self.duration.observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the series of `name` whose labels include all of `labels`, in the exposition.
    fn series(name: &str, labels: &[&str]) -> Option<f64> {
        metrics().encode().lines().find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            (series.starts_with(name) && labels.iter().all(|l| series.contains(l)))
                .then(|| value.parse().ok())
                .flatten()
        })
    }

    #[test]
    fn paths_past_the_limit_are_counted_together() {
        let path = |i| format!("/made.up.v{i}/M");
        for i in 0..MAX_KEPT + 10 {
            MethodMetrics::of(Side::Client, &path(i)).finished(0, 0.001);
        }
        // The first paths have their own series; later ones share `_other`'s.
        assert_eq!(
            series("exemesh_client_requests_total", &["service=\"made.up.v0\""]),
            Some(1.0)
        );
        assert_eq!(
            series(
                "exemesh_client_requests_total",
                &["service=\"made.up.v1030\""]
            ),
            None
        );
        let other = ["service=\"_other\"", "method=\"_other\""];
        assert_eq!(series("exemesh_client_requests_total", &other), Some(10.0));
        let kept = &MethodMetrics::of(Side::Client, &path(MAX_KEPT + 50));
        assert!(Arc::ptr_eq(
            kept,
            &MethodMetrics::of(Side::Client, OVERFLOW)
        ));
        // A path kept before the limit keeps its own.
        let first = MethodMetrics::of(Side::Client, &path(0));
        assert!(!Arc::ptr_eq(&first, kept));
        let series_count = metrics()
            .encode()
            .lines()
            .filter(|l| l.starts_with("exemesh_client_requests_total{"))
            .count();
        assert_eq!(series_count, MAX_KEPT + 1);
    }

    #[test]
    fn kept_metrics_record_into_the_families_series() {
        let path = "/kept.v1.Svc/Get";
        let labels = ["service=\"kept.v1.Svc\"", "method=\"Get\""];
        let kept = MethodMetrics::of(Side::Server, path);
        assert!(Arc::ptr_eq(&kept, &MethodMetrics::of(Side::Server, path)));
        (0..3).for_each(|_| kept.started());
        assert_eq!(series("exemesh_server_in_flight", &labels), Some(3.0));
        kept.finished(0, 0.001);
        kept.finished(5, 0.002);
        // A code outside gRPC's is counted too (not kept).
        kept.finished(99, 0.003);
        assert_eq!(series("exemesh_server_in_flight", &labels), Some(0.0));
        let ok = [labels[0], labels[1], "code=\"OK\""];
        assert_eq!(series("exemesh_server_requests_total", &ok), Some(1.0));
        let not_found = [labels[0], labels[1], "code=\"NOT_FOUND\""];
        assert_eq!(
            series("exemesh_server_requests_total", &not_found),
            Some(1.0)
        );
        let count = "exemesh_server_request_duration_seconds_count";
        assert_eq!(series(count, &labels), Some(3.0));
        // A later lookup through the family finds the same series.
        metrics()
            .server_requests
            .get_or_create(&code_labels(&call_labels(path), 0))
            .inc();
        assert_eq!(series("exemesh_server_requests_total", &ok), Some(2.0));
        // The client side is kept apart, without an in-flight gauge.
        MethodMetrics::of(Side::Client, path).finished(0, 0.001);
        assert_eq!(series("exemesh_client_requests_total", &ok), Some(1.0));
        assert_eq!(series("exemesh_server_requests_total", &ok), Some(2.0));
    }
}
