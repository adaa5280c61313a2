//! The endpoints of a service as the balancer sees them: discovery's instances minus the ejected ones.
//!
//! Passive outlier ejection: every endpoint counts its consecutive failures (a transport error, a
//! response body that breaks before its first frame, or `UNAVAILABLE` before any message). At the threshold it is *benched*: removed from the balancer for a
//! backoff (1 s doubling to 30 s). Then it is readmitted on probation, where a single failure benches it
//! again with a longer backoff and a success clears its record. An endpoint is never dropped for good
//! while discovery lists it. (A dead endpoint fails fast, so under peak-EWMA it would otherwise look
//! like the *best* one and attract traffic.)

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::body::Body;
use tower::discover::Change;

use super::balancer::Balancer;
use super::link::Link;
use super::retry::{status_in, status_of};
use crate::mesh::discovery::watcher::InstanceSet;
use crate::mesh::telemetry::metrics::{metrics, name};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Consecutive failures that bench an endpoint.
pub const EJECT_AFTER: u32 = 3;
const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// The latency assumed for an endpoint with no history: optimistic, so that new and readmitted
/// endpoints get traffic at once (the first real sample replaces it).
pub const DEFAULT_RTT: Duration = Duration::from_micros(100);
/// How fast old latency samples fade.
pub const DECAY: Duration = Duration::from_secs(1);

/// Counters shared with the channel, for status and error messages.
#[derive(Debug, Default)]
pub struct EndpointStats {
    /// Endpoints currently in the balancer.
    pub active: AtomicUsize,
    /// Endpoints benched right now.
    pub ejected: AtomicUsize,
    /// Ejections so far.
    pub ejections: AtomicUsize,
}

/// The connection to one endpoint, reporting every call's outcome to the endpoint manager.
#[derive(Debug, Clone)]
pub struct Reporting {
    link: Link,
    health: Arc<Health>,
}

/// One incarnation of an endpoint's record (a readmission creates a new one).
#[derive(Debug)]
struct Health {
    key: Arc<str>,
    failures: AtomicU32,
    probation: AtomicBool,
    /// Set once this incarnation has been benched.
    ejected: AtomicBool,
    verdicts: mpsc::UnboundedSender<Verdict>,
}

/// What an endpoint tells its manager.
#[derive(Debug)]
pub(super) enum Verdict {
    /// Bench it.
    Eject(Arc<str>),
    /// It served a call on probation: it is healthy again.
    Recovered(Arc<str>),
}

impl Reporting {
    pub(super) fn new(
        link: Link,
        key: &str,
        probation: bool,
        verdicts: mpsc::UnboundedSender<Verdict>,
    ) -> Reporting {
        Reporting {
            link,
            health: Arc::new(Health {
                key: key.into(),
                failures: AtomicU32::new(0),
                probation: AtomicBool::new(probation),
                ejected: AtomicBool::new(false),
                verdicts,
            }),
        }
    }

    /// Makes one call on the endpoint; the response comes with its headers, and its body reports
    /// how it begins.
    pub async fn call(&self, request: Request<Body>) -> Result<Response<Body>, BoxError> {
        let result = self.link.send(request).await;
        let answered = matches!(&result, Ok(r) if status_of(r) != Some(tonic::Code::Unavailable));
        // Only a connection that failed or could not be opened (`UNAVAILABLE`) says that nothing
        // answers there; another error (a stream the peer reset, a request refused before it left)
        // counts as one failed call.
        let unreachable = matches!(&result, Err(e)
            if e.downcast_ref::<tonic::Status>().is_some_and(|s| s.code() == tonic::Code::Unavailable));
        self.record(answered, unreachable);
        if !answered {
            return result.map(|response| response.map(Body::new));
        }
        Ok(result?.map(|body| {
            Body::new(Watched {
                body,
                reporting: Some(self.clone()),
            })
        }))
    }

    /// Records an outcome. `unreachable` (the connection failed) benches the endpoint at once: nothing
    /// listens there, and a fast failure would otherwise make it look like the best endpoint.
    fn record(&self, ok: bool, unreachable: bool) {
        let health = &*self.health;
        if ok {
            health.failures.store(0, Ordering::Relaxed);
            if health.probation.swap(false, Ordering::Relaxed) {
                let _ = health.verdicts.send(Verdict::Recovered(health.key.clone()));
            }
            return;
        }
        let threshold = if unreachable || health.probation.load(Ordering::Relaxed) {
            1
        } else {
            EJECT_AFTER
        };
        if health.failures.fetch_add(1, Ordering::Relaxed) + 1 >= threshold
            && !health.ejected.swap(true, Ordering::Relaxed)
        {
            // An event on the span of the call whose failure benched the endpoint.
            crate::mesh::telemetry::span::event("endpoint ejected", || {
                vec![opentelemetry::KeyValue::new(
                    "endpoint",
                    health.key.to_string(),
                )]
            });
            let _ = health.verdicts.send(Verdict::Eject(health.key.clone()));
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that tells its endpoint how it begins: a body that breaks before any frame
    /// (the endpoint died after sending the headers) benches the endpoint at once, like a refused
    /// connection, and trailers with `UNAVAILABLE` before any message count like a trailers-only
    /// `UNAVAILABLE`. It wraps the link's own body type, so that a call's body is boxed once.
    struct Watched<B> {
        #[pin]
        body: B,
        reporting: Option<Reporting>,
    }
}

impl<B> http_body::Body for Watched<B>
where
    B: http_body::Body<Data = bytes::Bytes, Error = tonic::Status>,
{
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.body.poll_frame(cx);
        if let Poll::Ready(outcome) = &polled
            && let Some(reporting) = this.reporting.take()
        {
            match outcome {
                Some(Err(_)) => reporting.record(false, true),
                Some(Ok(frame))
                    if frame
                        .trailers_ref()
                        .is_some_and(|t| status_in(t) == Some(tonic::Code::Unavailable)) =>
                {
                    reporting.record(false, false)
                }
                _ => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

struct Member {
    address: String,
    state: MemberState,
    backoff: Duration,
}

enum MemberState {
    Active,
    Probation,
    Benched { until: Instant },
}

/// Runs until the channel is dropped (it aborts this task) or discovery's watcher ends: turns
/// instance sets and ejections into changes of `balancer`'s endpoints.
pub async fn manage(
    service: String,
    mut instances: watch::Receiver<InstanceSet>,
    balancer: Arc<Balancer>,
    stats: Arc<EndpointStats>,
) {
    let (verdict_tx, mut verdicts) = mpsc::unbounded_channel::<Verdict>();
    let mut members: HashMap<String, Member> = HashMap::new();
    let make = |key: &str, address: &str, probation: bool| -> Option<Reporting> {
        let link = match Link::new(address, Some(&service)) {
            Ok(link) => link,
            Err(e) => {
                tracing::warn!(service = %service, endpoint = %key, "endpoint left out: {e}");
                return None;
            }
        };
        Some(Reporting::new(link, key, probation, verdict_tx.clone()))
    };
    let mut sync = true;
    loop {
        if sync {
            let current: BTreeMap<String, String> = instances
                .borrow_and_update()
                .as_ref()
                .map(|set| {
                    set.values()
                        .map(|i| (format!("{}@{}", i.id, i.address), i.address.clone()))
                        .collect()
                })
                .unwrap_or_default();
            members.retain(|key, member| {
                if current.contains_key(key) {
                    return true;
                }
                if !matches!(member.state, MemberState::Benched { .. }) {
                    balancer.apply(Change::Remove(key.clone()));
                }
                false
            });
            for (key, address) in current {
                if members.contains_key(&key) {
                    continue;
                }
                if let Some(svc) = make(&key, &address, false) {
                    tracing::debug!(service = %service, endpoint = %key, "endpoint added");
                    balancer.apply(Change::Insert(key.clone(), svc));
                    members.insert(
                        key,
                        Member {
                            address,
                            state: MemberState::Active,
                            backoff: BACKOFF_START,
                        },
                    );
                }
            }
            publish(&members, &stats, &service);
            sync = false;
        }
        let next_readmit = members
            .values()
            .filter_map(|m| match m.state {
                MemberState::Benched { until } => Some(until),
                _ => None,
            })
            .min();
        tokio::select! {
            changed = instances.changed() => {
                if changed.is_err() {
                    return;
                }
                sync = true;
            }
            Some(verdict) = verdicts.recv() => match verdict {
                Verdict::Recovered(key) => {
                    if let Some(member) = members.get_mut(&*key) {
                        tracing::info!(service = %service, endpoint = %key, "endpoint recovered");
                        member.state = MemberState::Active;
                        member.backoff = BACKOFF_START;
                    }
                }
                Verdict::Eject(key) => eject(&service, &key, &mut members, &balancer, &stats),
            },
            _ = sleep_until_opt(next_readmit) => {
                let now = Instant::now();
                for (key, member) in members.iter_mut() {
                    if matches!(member.state, MemberState::Benched { until } if until <= now)
                        && let Some(svc) = make(key, &member.address, true)
                    {
                        tracing::info!(service = %service, endpoint = %key, "endpoint readmitted on probation");
                        member.state = MemberState::Probation;
                        balancer.apply(Change::Insert(key.clone(), svc));
                    }
                }
                publish(&members, &stats, &service);
            }
        }
    }
}

fn eject(
    service: &str,
    key: &str,
    members: &mut HashMap<String, Member>,
    balancer: &Balancer,
    stats: &EndpointStats,
) {
    let Some(member) = members.get_mut(key) else {
        return;
    };
    if matches!(member.state, MemberState::Benched { .. }) {
        return;
    }
    tracing::warn!(service = %service, endpoint = %key, "endpoint ejected for {}ms after failures", member.backoff.as_millis());
    member.state = MemberState::Benched {
        until: Instant::now() + member.backoff,
    };
    member.backoff = (member.backoff * 2).min(BACKOFF_MAX);
    stats.ejections.fetch_add(1, Ordering::Relaxed);
    metrics()
        .client_ejections
        .get_or_create(&name(service))
        .inc();
    balancer.apply(Change::Remove(key.to_string()));
    publish(members, stats, service);
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn publish(members: &HashMap<String, Member>, stats: &EndpointStats, service: &str) {
    let benched = members
        .values()
        .filter(|m| matches!(m.state, MemberState::Benched { .. }))
        .count();
    stats.ejected.store(benched, Ordering::Relaxed);
    stats
        .active
        .store(members.len() - benched, Ordering::Relaxed);
    metrics()
        .client_endpoints
        .get_or_create(&name(service))
        .set((members.len() - benched) as i64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;
    use http_body_util::{BodyExt as _, StreamBody};

    fn reporting() -> (Reporting, mpsc::UnboundedReceiver<Verdict>) {
        let (verdicts, rx) = mpsc::unbounded_channel();
        // Never called: the tests hand the body over directly.
        let link = Link::with_tls("127.0.0.1:1", None).expect("a valid address");
        let reporting = Reporting::new(link, "e@127.0.0.1:1", false, verdicts);
        (reporting, rx)
    }

    async fn read(
        reporting: Reporting,
        frames: Vec<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>,
    ) {
        let mut body = Watched {
            body: Body::new(StreamBody::new(stream::iter(frames))),
            reporting: Some(reporting),
        };
        while body.frame().await.is_some() {}
    }

    fn trailers(status: &'static str) -> http_body::Frame<bytes::Bytes> {
        let mut map = http::HeaderMap::new();
        map.insert("grpc-status", http::HeaderValue::from_static(status));
        http_body::Frame::trailers(map)
    }

    #[tokio::test]
    async fn a_body_broken_before_any_frame_benches_the_endpoint_at_once() {
        let (reporting, mut verdicts) = reporting();
        read(reporting, vec![Err(tonic::Status::unknown("broken pipe"))]).await;
        assert!(matches!(verdicts.try_recv(), Ok(Verdict::Eject(_))));
    }

    #[tokio::test]
    async fn unavailable_trailers_before_a_message_count_as_a_failure() {
        let (reporting, mut verdicts) = reporting();
        for _ in 0..EJECT_AFTER {
            assert!(verdicts.try_recv().is_err(), "benched too early");
            read(reporting.clone(), vec![Ok(trailers("14"))]).await;
        }
        assert!(matches!(verdicts.try_recv(), Ok(Verdict::Eject(_))));
    }

    #[tokio::test]
    async fn a_body_that_starts_with_a_message_reports_nothing_whatever_follows() {
        let (reporting, mut verdicts) = reporting();
        read(
            reporting,
            vec![
                Ok(http_body::Frame::data(bytes::Bytes::from_static(b"m"))),
                Err(tonic::Status::unknown("later")),
            ],
        )
        .await;
        assert!(verdicts.try_recv().is_err());
    }
}
