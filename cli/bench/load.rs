//! The load loop of `exemesh bench`: calls in flight on N slots, either closed loop (a slot calls
//! again as soon as its call ends: the most the target can do) or paced at a fixed rate (open loop:
//! the latency a steady load sees).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use exemesh::mesh::deadline::{GRPC_TIMEOUT_HEADER, grpc_timeout_value};
use exemesh::mesh::dynamic_client::{GrpcChannel, Method};
use exemesh::mesh::status_code::code_name;
use hdrhistogram::Histogram;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};

use super::timeline::Sample;

/// How to load the target.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Slots: calls in flight at most.
    pub concurrency: usize,
    /// Calls to measure; the run is timed by `duration` when `None`.
    pub total: Option<u64>,
    /// How long to measure.
    pub duration: Duration,
    /// Calls before the measured run, not counted.
    pub warmup: Duration,
    /// Deadline of each call.
    pub timeout: Duration,
    /// Calls per second in total, for a paced (open loop) run.
    pub rate: Option<f64>,
    /// Keep every measured call's outcome (for a timeline).
    pub keep_samples: bool,
    /// Show progress on stderr.
    pub progress: bool,
}

/// What a run measured.
#[derive(Debug)]
pub struct Outcome {
    /// Latencies of the successful calls, in microseconds.
    pub histogram: Histogram<u64>,
    /// Failed calls by status code name.
    pub errors: BTreeMap<String, u64>,
    /// When the measured run started.
    pub started: Instant,
    /// Its length.
    pub seconds: f64,
    /// Every measured call, when kept.
    pub samples: Vec<Sample>,
}

/// When each call of a paced run is due: call `k` at `origin + k / rate`. Calls before
/// `first_counted` are the warm-up; there are `end` calls in all.
#[derive(Debug, Clone, Copy)]
struct Pace {
    origin: Instant,
    rate: f64,
    first_counted: u64,
    end: u64,
}

impl Pace {
    fn new(plan: &Plan, rate: f64) -> Self {
        let first_counted = (plan.warmup.as_secs_f64() * rate).ceil() as u64;
        let measured = plan
            .total
            .unwrap_or((plan.duration.as_secs_f64() * rate).round() as u64);
        Self {
            origin: Instant::now(),
            rate,
            first_counted,
            end: first_counted + measured,
        }
    }

    fn due(&self, k: u64) -> Instant {
        self.origin + Duration::from_secs_f64(k as f64 / self.rate)
    }
}

/// Shared by the slots.
#[derive(Debug, Default)]
struct Shared {
    /// Closed loop: calls are counted once set.
    measuring: AtomicBool,
    /// Closed loop: the slots stop once set.
    stop: AtomicBool,
    /// Calls taken (counted ones in a closed loop; every ticket when paced).
    issued: AtomicU64,
    /// Counted calls finished.
    done: AtomicU64,
    /// Slots that ended.
    exited: AtomicUsize,
}

/// Runs the plan against `channels` (the slots are spread over them), sending `request` (one
/// encoded message) on every call.
pub async fn run<T>(
    channels: Vec<T>,
    method: &Method,
    request: Bytes,
    plan: &Plan,
) -> anyhow::Result<Outcome>
where
    T: GrpcChannel + Sync,
{
    let shared = Arc::new(Shared::default());
    let pace = plan.rate.map(|rate| Pace::new(plan, rate));
    let slots = plan.concurrency.max(1);
    // Every call carries the same deadline: its `grpc-timeout` is written once.
    let timeout = AsciiMetadataValue::try_from(grpc_timeout_value(plan.timeout).as_bytes())
        .context("the call deadline")?;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..slots {
        let channel = channels[i % channels.len()].clone();
        let call = Call {
            method: method.clone(),
            request: request.clone(),
            timeout: (
                AsciiMetadataKey::from_static(GRPC_TIMEOUT_HEADER),
                timeout.clone(),
            ),
        };
        let (shared, plan) = (shared.clone(), plan.clone());
        tasks.spawn(async move {
            let result = slot(channel, call, &shared, &plan, pace).await;
            shared.exited.fetch_add(1, Ordering::Relaxed);
            result
        });
    }
    let started = match pace {
        Some(pace) => pace.due(pace.first_counted),
        None => {
            tokio::time::sleep(plan.warmup).await;
            shared.measuring.store(true, Ordering::Relaxed);
            Instant::now()
        }
    };
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let n = shared.done.load(Ordering::Relaxed);
        let elapsed = Instant::now().saturating_duration_since(started);
        if plan.progress {
            let shown = match plan.total {
                Some(t) => format!("{n}/{t}"),
                None => format!(
                    "{:>5.1}/{:.0}s",
                    elapsed.as_secs_f64(),
                    plan.duration.as_secs_f64()
                ),
            };
            eprint!(
                "\r{shown}  {n} calls, {:.0} calls/s   ",
                n as f64 / elapsed.as_secs_f64().max(1e-3)
            );
            let _ = std::io::stderr().flush();
        }
        // A paced run ends when its calls are made; a closed loop when its time or count is up.
        let finished = pace.is_none()
            && match plan.total {
                Some(t) => n >= t,
                None => elapsed >= plan.duration,
            };
        if finished || shared.exited.load(Ordering::Relaxed) == slots {
            break;
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    let mut histogram = Histogram::<u64>::new(3).context("histogram")?;
    let mut errors = BTreeMap::new();
    let mut samples = Vec::new();
    let mut ended = started;
    while let Some(joined) = tasks.join_next().await {
        let (h, e, s, last) = joined.context("bench slot")?;
        ended = ended.max(last.unwrap_or(started));
        histogram.add(h).context("merging histograms")?;
        for (code, n) in e {
            *errors.entry(code).or_insert(0) += n;
        }
        samples.extend(s);
    }
    // Up to the last counted call's end, not to when the slots were seen to be done.
    let seconds = ended.saturating_duration_since(started).as_secs_f64();
    if plan.progress {
        eprintln!();
    }
    Ok(Outcome {
        histogram,
        errors,
        started,
        seconds,
        samples,
    })
}

/// What a slot measured: latencies, errors by code, samples, and when its last counted call ended.
type SlotResult = (
    Histogram<u64>,
    BTreeMap<String, u64>,
    Vec<Sample>,
    Option<Instant>,
);

/// What every call of a run sends, prepared once.
struct Call {
    method: Method,
    request: Bytes,
    /// The `grpc-timeout` header and its value for the plan's deadline.
    timeout: (AsciiMetadataKey, AsciiMetadataValue),
}

/// One slot: takes calls until the run ends.
async fn slot<T>(
    channel: T,
    call: Call,
    shared: &Shared,
    plan: &Plan,
    pace: Option<Pace>,
) -> SlotResult
where
    T: GrpcChannel + Sync,
{
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .or_else(|_| Histogram::new(3))
        .expect("a 3-digit histogram is a valid configuration");
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut samples = Vec::new();
    // When this slot's last call ended (and so when it was last free).
    let mut free_at = Instant::now();
    let mut last_end = None;
    while !shared.stop.load(Ordering::Relaxed) {
        let (counted, start) = match pace {
            Some(pace) => {
                let k = shared.issued.fetch_add(1, Ordering::Relaxed);
                if k >= pace.end {
                    break;
                }
                let due = pace.due(k);
                // Due while every slot was busy (this one included): the wait for a free slot is
                // part of what a caller would see, so the call is timed from when it was due.
                // Otherwise it is timed from when it is sent: a timer waking late is the load
                // generator's slack, not the target's.
                let start = if free_at > due {
                    due
                } else {
                    tokio::time::sleep_until(due.into()).await;
                    Instant::now()
                };
                (k >= pace.first_counted, start)
            }
            None => {
                let counted = shared.measuring.load(Ordering::Relaxed);
                if counted
                    && shared.issued.fetch_add(1, Ordering::Relaxed)
                        >= plan.total.unwrap_or(u64::MAX)
                {
                    break;
                }
                (counted, Instant::now())
            }
        };
        let mut request = tonic::Request::new(tokio_stream::once(call.request.clone()));
        let (key, value) = &call.timeout;
        request.metadata_mut().insert(key.clone(), value.clone());
        let outcome = async {
            let mut replies = call
                .method
                .call(channel.clone(), request)
                .await?
                .into_inner();
            while replies.message().await?.is_some() {}
            Ok::<_, tonic::Status>(())
        }
        .await;
        let end = Instant::now();
        free_at = end;
        if !counted {
            continue;
        }
        last_end = Some(end);
        let latency_us = end.saturating_duration_since(start).as_micros().max(1) as u64;
        let ok = match outcome {
            Ok(()) => {
                let _ = histogram.record(latency_us);
                true
            }
            Err(status) => {
                *errors
                    .entry(code_name(status.code()).to_string())
                    .or_insert(0) += 1;
                false
            }
        };
        if plan.keep_samples {
            samples.push(Sample {
                at: end,
                latency_us: if ok {
                    u32::try_from(latency_us).unwrap_or(u32::MAX)
                } else {
                    0
                },
                ok,
            });
        }
        shared.done.fetch_add(1, Ordering::Relaxed);
    }
    (histogram, errors, samples, last_end)
}

/// True when progress can be shown (stderr is a terminal).
pub fn interactive() -> bool {
    std::io::stderr().is_terminal()
}
