//! `exemesh bench --timeline`: the run cut into equal slices of time, each with its own calls,
//! errors and latency percentiles, to see what a whole-run summary hides (a failover, a slow start).

use std::time::{Duration, Instant};

use serde::Serialize;

use super::percentile::rank;

/// One call's outcome, stamped with when it finished.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When the call finished.
    pub at: Instant,
    /// How long it took, in microseconds (0 for an error).
    pub latency_us: u32,
    /// False when it ended with an error status.
    pub ok: bool,
}

/// One slice of the run.
#[derive(Debug, Serialize, PartialEq)]
pub struct Slice {
    /// Where the slice starts, in milliseconds from the start of the measured run.
    pub start_ms: u64,
    /// Calls that finished in the slice (errors included).
    pub calls: u64,
    /// Calls that finished with an error status.
    pub errors: u64,
    /// Calls per second over the slice.
    pub rps: f64,
    /// Latency percentiles of the successful calls, in microseconds (0 when there were none).
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Slowest.
    pub max_us: u64,
}

/// Groups `samples` into slices of `width` from `started`, every slice up to the last sample
/// present (an empty slice, with no call finishing, is itself a finding).
pub fn slices(samples: &[Sample], started: Instant, width: Duration) -> Vec<Slice> {
    let width_ns = width.as_nanos().max(1);
    let index =
        |s: &Sample| (s.at.saturating_duration_since(started).as_nanos() / width_ns) as usize;
    let count = samples.iter().map(index).max().map_or(0, |i| i + 1);
    let mut latencies: Vec<Vec<u32>> = vec![Vec::new(); count];
    let mut errors = vec![0u64; count];
    for sample in samples {
        let i = index(sample);
        if sample.ok {
            latencies[i].push(sample.latency_us);
        } else {
            errors[i] += 1;
        }
    }
    latencies
        .into_iter()
        .zip(errors)
        .enumerate()
        .map(|(i, (mut ok, errors))| {
            ok.sort_unstable();
            let calls = ok.len() as u64 + errors;
            Slice {
                start_ms: (width.as_millis() * i as u128) as u64,
                calls,
                errors,
                rps: calls as f64 / width.as_secs_f64(),
                p50_us: u64::from(rank(&ok, 0.5)),
                p99_us: u64::from(rank(&ok, 0.99)),
                max_us: ok.last().copied().map_or(0, u64::from),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, ms: u64, latency_us: u32, ok: bool) -> Sample {
        Sample {
            at: start + Duration::from_millis(ms),
            latency_us,
            ok,
        }
    }

    #[test]
    fn slices_split_by_finish_time_and_keep_empty_slices() {
        let t0 = Instant::now();
        let samples = [
            at(t0, 10, 100, true),
            at(t0, 20, 300, true),
            at(t0, 99, 200, true),
            at(t0, 250, 0, false),
            at(t0, 260, 50, true),
        ];
        let got = slices(&samples, t0, Duration::from_millis(100));
        assert_eq!(got.len(), 3);
        assert_eq!((got[0].calls, got[0].errors), (3, 0));
        assert_eq!(
            (got[0].p50_us, got[0].p99_us, got[0].max_us),
            (200, 300, 300)
        );
        assert_eq!(got[0].rps, 30.0);
        assert_eq!((got[1].calls, got[1].p99_us), (0, 0), "nothing finished");
        assert_eq!((got[2].start_ms, got[2].calls, got[2].errors), (200, 2, 1));
        assert_eq!(got[2].p50_us, 50, "errors carry no latency");
    }
}
