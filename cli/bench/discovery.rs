//! `exemesh bench-discovery`: how big discovery can get. Registers many instances and keeps their
//! leases alive as servers do, opens many watchers, then times how long each change takes to reach
//! every watcher.

use crate::cli::discovery_arg::DiscoveryArg;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use exemesh::mesh::discovery::{Discovery, Instance, WatchUpdate};
use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::{Notify, mpsc};

use super::percentile::rank;

/// The id of the instance whose comings and goings are timed.
const PROBE: &str = "bench-discovery-probe";

/// Load a discovery backend (the embedded registry or etcd) the way a large mesh would, and time
/// how long a change takes to reach every watcher.
///
/// Registers --instances instances spread over --services services and renews their leases every
/// third of --ttl for the whole run; opens --watchers watchers spread over the services; then makes
/// --changes changes --interval apart (a probe instance serving every service, registered then
/// removed in turn) and times each one's arrival at every watcher. Everything it registers is removed at the end.
/// Use a backend of its own: the instances are fake (nothing listens at their addresses).
///
/// Example: `exemesh bench-discovery --discovery 127.0.0.1:7700 --instances 10000 --watchers 1000`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    discovery: DiscoveryArg,
    /// Instances to register and keep alive.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    instances: u32,
    /// Services the instances are spread over (bench.discovery.S0, S1, ...).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    services: u32,
    /// Watchers to open, spread over the services.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    watchers: u32,
    /// Watchers sharing one connection (a real mesh has one per process).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    watchers_per_connection: u32,
    /// Changes to time; each reaches every watcher.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    changes: u32,
    /// Pause between changes (the renewals go on meanwhile, as in a live mesh).
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Lease time to live of the instances (`exemesh serve`'s default); each is renewed every
    /// third of it.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Registration and renewal calls in flight at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    concurrency: u32,
    /// How long a change may take to reach a watcher before it counts as missed.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    patience: Duration,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// What a run measured.
#[derive(Debug, Serialize)]
struct Report {
    discovery: String,
    instances: u32,
    services: u32,
    watchers: u32,
    /// Time to register every instance.
    register_seconds: f64,
    /// Time until every watcher had its first snapshot.
    watch_seconds: f64,
    changes: u32,
    /// Arrivals timed: changes × watchers, less the missed ones.
    deliveries: u64,
    /// Arrivals that did not come within --patience.
    missed: u64,
    /// From the change's call to its arrival at a watcher.
    delivery_ms: Percentiles,
    /// Lease renewals made during the run, and the ones that failed.
    renewals: u64,
    renewal_errors: u64,
    /// Watch streams that ended or failed during the run.
    watch_errors: u64,
}

#[derive(Debug, Serialize)]
struct Percentiles {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

/// A watcher's view of the probe changed: (is it present now, when that was seen).
type Seen = (bool, Instant);

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let registrar = args.discovery.connect()?;
    let service = |i: u32| format!("bench.discovery.S{}", i % args.services);
    // A leftover probe from an interrupted run would make the first change a no-op.
    let _ = registrar.deregister(PROBE).await;

    let started = Instant::now();
    let leases = register_all(&registrar, &args, &service).await?;
    let register_seconds = started.elapsed().as_secs_f64();
    let renewals = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let renewing = tokio::spawn(renew(
        registrar.clone(),
        leases.clone(),
        args.ttl / 3,
        args.concurrency as usize,
        renewals.clone(),
    ));

    let started = Instant::now();
    let (seen_tx, mut seen) = mpsc::unbounded_channel::<Seen>();
    let ready = Arc::new((AtomicUsize::new(0), Notify::new()));
    let watch_errors = Arc::new(AtomicU64::new(0));
    let mut watchers = tokio::task::JoinSet::new();
    let mut connection = None;
    for w in 0..args.watchers {
        if w % args.watchers_per_connection == 0 {
            connection = Some(args.discovery.connect()?);
        }
        let Some(discovery) = connection.clone() else {
            bail!("no connection for watcher {w}");
        };
        watchers.spawn(watch(
            discovery,
            service(w),
            seen_tx.clone(),
            ready.clone(),
            watch_errors.clone(),
        ));
    }
    let all = args.watchers as usize;
    tokio::time::timeout(args.patience.max(Duration::from_secs(30)), async {
        while ready.0.load(Ordering::Acquire) < all {
            let notified = ready.1.notified();
            if ready.0.load(Ordering::Acquire) >= all {
                break;
            }
            notified.await;
        }
    })
    .await
    .with_context(|| {
        format!(
            "only {} of {all} watchers got their first snapshot",
            ready.0.load(Ordering::Acquire)
        )
    })?;
    let watch_seconds = started.elapsed().as_secs_f64();

    let probe = Instance {
        id: PROBE.into(),
        services: (0..args.services.min(args.watchers)).map(service).collect(),
        address: "127.0.0.1:9".into(),
        ..Instance::default()
    };
    let mut delays = Vec::with_capacity(args.changes as usize * all);
    let mut missed = 0u64;
    for change in 0..args.changes {
        if change > 0 {
            tokio::time::sleep(args.interval).await;
        }
        let present = change % 2 == 0;
        let sent = Instant::now();
        if present {
            registrar
                .register(probe.clone(), args.ttl)
                .await
                .context("registering the probe")?;
        } else {
            registrar
                .deregister(PROBE)
                .await
                .context("removing the probe")?;
        }
        let deadline = tokio::time::Instant::now() + args.patience;
        let mut arrived = 0;
        while arrived < all {
            match tokio::time::timeout_at(deadline, seen.recv()).await {
                Ok(Some((now_present, at))) if now_present == present => {
                    arrived += 1;
                    delays.push(at.saturating_duration_since(sent).as_secs_f64() * 1e3);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        missed += (all - arrived) as u64;
    }

    renewing.abort();
    watchers.abort_all();
    let _ = registrar.deregister(PROBE).await;
    remove_all(&registrar, &leases, args.concurrency as usize).await;
    delays.sort_by(f64::total_cmp);
    let report = Report {
        discovery: args.discovery.addr.clone(),
        instances: args.instances,
        services: args.services,
        watchers: args.watchers,
        register_seconds,
        watch_seconds,
        changes: args.changes,
        deliveries: delays.len() as u64,
        missed,
        delivery_ms: Percentiles {
            p50: rank(&delays, 0.5),
            p90: rank(&delays, 0.9),
            p99: rank(&delays, 0.99),
            max: delays.last().copied().unwrap_or(0.0),
        },
        renewals: renewals.0.load(Ordering::Relaxed),
        renewal_errors: renewals.1.load(Ordering::Relaxed),
        watch_errors: watch_errors.load(Ordering::Relaxed),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(
        if report.missed == 0 && report.renewal_errors == 0 && report.watch_errors == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        },
    )
}

/// Registers every instance, --concurrency at a time; returns (lease, instance id) pairs.
async fn register_all(
    registrar: &Arc<dyn Discovery>,
    args: &Args,
    service: &impl Fn(u32) -> String,
) -> anyhow::Result<Arc<Vec<(u64, String)>>> {
    let results: Vec<_> = futures_util::stream::iter(0..args.instances)
        .map(|i| {
            let instance = Instance {
                id: format!("bench-discovery-{i}"),
                services: vec![service(i)],
                address: format!(
                    "127.0.{}.{}:{}",
                    i / 65_536 % 256,
                    i / 256 % 256,
                    1 + i % 256
                ),
                ..Instance::default()
            };
            let registrar = registrar.clone();
            let ttl = args.ttl;
            async move {
                let id = instance.id.clone();
                registrar
                    .register(instance, ttl)
                    .await
                    .map(|lease| (lease.id, id))
            }
        })
        .buffer_unordered(args.concurrency as usize)
        .collect()
        .await;
    let leases = results
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .context("registering the instances")?;
    Ok(Arc::new(leases))
}

/// Renews every lease once per `every`, `concurrency` at a time, until aborted; counts renewals
/// and failures.
async fn renew(
    registrar: Arc<dyn Discovery>,
    leases: Arc<Vec<(u64, String)>>,
    every: Duration,
    concurrency: usize,
    counts: Arc<(AtomicU64, AtomicU64)>,
) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        futures_util::stream::iter(leases.iter())
            .for_each_concurrent(concurrency, |(lease, id)| {
                let (registrar, counts) = (registrar.clone(), counts.clone());
                async move {
                    let failed = registrar.keep_alive(*lease, id).await.is_err();
                    counts.0.fetch_add(1, Ordering::Relaxed);
                    counts.1.fetch_add(u64::from(failed), Ordering::Relaxed);
                }
            })
            .await;
    }
}

/// Removes the instances registered, `concurrency` at a time (failures ignored: leases lapse).
async fn remove_all(registrar: &Arc<dyn Discovery>, leases: &[(u64, String)], concurrency: usize) {
    futures_util::stream::iter(leases.iter())
        .for_each_concurrent(concurrency, |(_, id)| async move {
            let _ = registrar.deregister(id).await;
        })
        .await;
}

/// One watcher: follows `service` and reports each change in whether the probe is present.
async fn watch(
    discovery: Arc<dyn Discovery>,
    service: String,
    seen: mpsc::UnboundedSender<Seen>,
    ready: Arc<(AtomicUsize, Notify)>,
    errors: Arc<AtomicU64>,
) {
    let mut stream = match discovery.watch(&service).await {
        Ok(stream) => stream,
        Err(_) => {
            errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let is_probe = |list: &[Instance]| list.iter().any(|i| i.id == PROBE);
    let mut present = None;
    while let Some(update) = stream.next().await {
        let Ok(update) = update else {
            errors.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let was = present.unwrap_or(false);
        let now = match &update {
            WatchUpdate::Snapshot(list) => is_probe(list),
            WatchUpdate::Upsert(list) => was || is_probe(list),
            WatchUpdate::Remove(list) => was && !is_probe(list),
        };
        if present.is_none() {
            ready.0.fetch_add(1, Ordering::Release);
            ready.1.notify_waiters();
        } else if now != was {
            let _ = seen.send((now, Instant::now()));
        }
        present = Some(now);
    }
    errors.fetch_add(1, Ordering::Relaxed);
}

fn print_report(r: &Report) {
    println!("discovery   {}", r.discovery);
    println!(
        "load        {} instances over {} services ({:.2}s to register), {} watchers ({:.2}s to watch)",
        r.instances, r.services, r.register_seconds, r.watchers, r.watch_seconds
    );
    let d = &r.delivery_ms;
    println!(
        "changes     {} x {} watchers: {} arrived, {} missed",
        r.changes, r.watchers, r.deliveries, r.missed
    );
    println!(
        "delivery    p50 {:.2}ms  p90 {:.2}ms  p99 {:.2}ms  max {:.2}ms",
        d.p50, d.p90, d.p99, d.max
    );
    println!(
        "renewals    {} ({} failed); watch streams lost: {}",
        r.renewals, r.renewal_errors, r.watch_errors
    );
}
