//! The span processor of OTLP/gRPC export: a span is written as protobuf the moment it ends, on the
//! thread that ended it, into the batch being filled ([`EncodedSpans`]); a task on the runtime
//! sends each full batch, and every `OTEL_BSP_SCHEDULE_DELAY` whatever has been written, through
//! the [`GrpcExporter`].
//!
//! It replaces the SDK's batch span processor for gRPC. That one moved every finished span through
//! a channel to a thread of its own, which encoded it and freed it there: with every call traced,
//! the handoff (a channel send per span, the thread's wake-ups, memory freed on another thread than
//! the one that allocated it) cost the serving process more than writing the span's protobuf does.
//! The limits are the SDK's: at most `OTEL_BSP_MAX_QUEUE_SIZE` spans wait (more are dropped, which
//! is logged once, and their count at shutdown), an export carries at most
//! `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` spans, one export runs at a time, and a call never waits for
//! any of it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};
use tokio::sync::{Notify, mpsc};

use super::config::BatchSettings;
use super::exporter::GrpcExporter;
use super::otlp::EncodedSpans;

/// How long [`SpanProcessor::force_flush`] waits for the exports it asks for.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// Encodes spans as they end and exports them in batches (see the module documentation).
#[derive(Debug)]
pub struct EncodingProcessor {
    shared: Arc<Shared>,
    control: mpsc::UnboundedSender<Control>,
}

/// What the calls that end spans and the export task share.
#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    /// Signalled when a batch fills up.
    full: Notify,
    resource: Mutex<Resource>,
    settings: BatchSettings,
    /// Spans dropped because the queue was full.
    dropped: AtomicU64,
}

/// The spans waiting for export.
#[derive(Debug, Default)]
struct Queue {
    /// The batch being filled.
    filling: EncodedSpans,
    /// Batches ready to send, oldest first.
    full: VecDeque<EncodedSpans>,
    /// Spans in `filling` and `full`.
    waiting: usize,
    /// Shut down: spans that end now are not exported.
    closed: bool,
}

/// A request to the export task, answered when its exports are done.
#[derive(Debug)]
enum Control {
    Flush(std::sync::mpsc::SyncSender<OTelSdkResult>),
    Shutdown(std::sync::mpsc::SyncSender<OTelSdkResult>),
}

impl EncodingProcessor {
    /// A processor exporting through `exporter` as `settings` say; its export task runs on the
    /// current tokio runtime (call it inside one).
    pub fn start(exporter: GrpcExporter, settings: BatchSettings) -> EncodingProcessor {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            full: Notify::new(),
            resource: Mutex::new(Resource::builder_empty().build()),
            settings,
            dropped: AtomicU64::new(0),
        });
        let (control, requests) = mpsc::unbounded_channel();
        tokio::spawn(run(shared.clone(), exporter, requests));
        EncodingProcessor { shared, control }
    }

    /// Asks the export task for `request` and waits up to `timeout` for its answer.
    fn ask(
        &self,
        request: fn(std::sync::mpsc::SyncSender<OTelSdkResult>) -> Control,
        timeout: Duration,
    ) -> OTelSdkResult {
        let (answer, answered) = std::sync::mpsc::sync_channel(1);
        self.control
            .send(request(answer))
            .map_err(|_| OTelSdkError::AlreadyShutdown)?;
        match answered.recv_timeout(timeout) {
            Ok(outcome) => outcome,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(OTelSdkError::Timeout(timeout)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                Err(OTelSdkError::AlreadyShutdown)
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes `span` into the batch being filled; true when that filled it.
    fn add(&self, span: &SpanData) -> bool {
        let mut queue = self.lock();
        if queue.closed {
            return false;
        }
        if queue.waiting >= self.settings.max_queue_size {
            drop(queue);
            if self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::warn!(
                    "spans are made faster than they are exported: {} are waiting \
                     (OTEL_BSP_MAX_QUEUE_SIZE), so new spans are dropped until exports catch up \
                     (this is logged once; the count at shutdown)",
                    self.settings.max_queue_size
                );
            }
            return false;
        }
        queue.filling.push(span);
        queue.waiting += 1;
        if queue.filling.len() < self.settings.max_export_batch_size {
            return false;
        }
        let batch = std::mem::take(&mut queue.filling);
        queue.full.push_back(batch);
        true
    }

    /// Makes the batch being filled ready to send, even if it is not full.
    fn seal(&self) {
        let mut queue = self.lock();
        if !queue.filling.is_empty() {
            let batch = std::mem::take(&mut queue.filling);
            queue.full.push_back(batch);
        }
    }

    /// The oldest batch ready to send, no longer counted as waiting.
    fn next(&self) -> Option<EncodedSpans> {
        let mut queue = self.lock();
        let batch = queue.full.pop_front()?;
        queue.waiting -= batch.len();
        Some(batch)
    }

    /// Sends every batch ready, one at a time: the last failure, if any.
    async fn export_ready(&self, exporter: &GrpcExporter) -> OTelSdkResult {
        let mut outcome = Ok(());
        while let Some(batch) = self.next() {
            let resource = self
                .resource
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            let message = batch.export_message(&resource);
            drop(batch);
            if let Err(reason) = exporter.send(message).await {
                outcome = Err(OTelSdkError::InternalFailure(format!(
                    "exporting spans failed: {reason}"
                )));
            }
        }
        outcome
    }
}

/// The export task: sends full batches as they fill, the rest every schedule delay, and answers
/// flush and shutdown requests once their spans are sent.
async fn run(
    shared: Arc<Shared>,
    exporter: GrpcExporter,
    mut requests: mpsc::UnboundedReceiver<Control>,
) {
    let delay = shared.settings.schedule_delay;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + delay, delay);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let request = tokio::select! {
            () = shared.full.notified() => None,
            _ = tick.tick() => {
                shared.seal();
                None
            }
            request = requests.recv() => match request {
                Some(request) => Some(request),
                // The processor is gone without a shutdown: nothing can ask for spans any more.
                None => return,
            },
        };
        if let Some(Control::Shutdown(_)) = request {
            shared.lock().closed = true;
        }
        if request.is_some() {
            shared.seal();
        }
        let outcome = shared.export_ready(&exporter).await;
        match request {
            Some(Control::Flush(answer)) => {
                let _ = answer.send(outcome);
            }
            Some(Control::Shutdown(answer)) => {
                let dropped = shared.dropped.load(Ordering::Relaxed);
                if dropped > 0 {
                    tracing::warn!(
                        "{dropped} spans were dropped because the export queue was full"
                    );
                }
                let _ = answer.send(outcome);
                return;
            }
            None => {}
        }
    }
}

impl SpanProcessor for EncodingProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        // Recorded but not sampled (a `RecordOnly` sampler decision): not exported.
        if span.span_context.is_sampled() && self.shared.add(&span) {
            self.shared.full.notify_one();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.ask(Control::Flush, FLUSH_TIMEOUT)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.ask(Control::Shutdown, timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        *self
            .shared
            .resource
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = resource.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    use opentelemetry::InstrumentationScope;
    use opentelemetry::trace::{SpanContext, TraceFlags};

    use crate::mesh::telemetry::exporter::tests::{api_key, collector};
    use crate::mesh::telemetry::otlp::tests::span;
    use crate::mesh::trace_view::store::TraceStore;

    fn settings(queue: usize, batch: usize, delay: Duration) -> BatchSettings {
        BatchSettings {
            max_queue_size: queue,
            max_export_batch_size: batch,
            schedule_delay: delay,
        }
    }

    /// A processor exporting to a fresh collector, and what that collector filed.
    async fn processor(settings: BatchSettings) -> (EncodingProcessor, Arc<TraceStore>) {
        let store = Arc::new(TraceStore::default());
        let endpoint = format!("http://{}", collector(store.clone()).await);
        let exporter =
            GrpcExporter::new(&endpoint, &api_key(), Duration::from_secs(5)).expect("an exporter");
        let mut processor = EncodingProcessor::start(exporter, settings);
        processor.set_resource(&Resource::builder().with_service_name("orders").build());
        (processor, store)
    }

    /// `n` root spans (one trace each), sampled.
    fn spans(n: u64) -> Vec<SpanData> {
        let scope = InstrumentationScope::builder("exemesh").build();
        (0..n)
            .map(|i| {
                let mut span = span("test.v1.Echo/Unary", &scope, 0);
                let context = &span.span_context;
                span.span_context = SpanContext::new(
                    opentelemetry::trace::TraceId::from(u128::from(i) + 1),
                    context.span_id(),
                    context.trace_flags(),
                    false,
                    context.trace_state().clone(),
                );
                span
            })
            .collect()
    }

    /// Waits (up to 10 s) until `store` holds `n` traces.
    async fn until_filed(store: &TraceStore, n: usize) {
        let start = Instant::now();
        while store.list(usize::MAX).len() < n {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{} traces filed, expected {n}",
                store.list(usize::MAX).len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_batch_is_exported_without_waiting_for_the_delay() {
        let hour = Duration::from_secs(3600);
        let (processor, store) = processor(settings(100, 3, hour)).await;
        for span in spans(4) {
            processor.on_end(span);
        }
        until_filed(&store, 3).await;
        assert_eq!(store.list(10)[0].root_service, "orders");
        // The fourth waits for the next batch, the delay or a flush.
        tokio::task::spawn_blocking(move || {
            assert_eq!(store.list(10).len(), 3, "not sent before a flush");
            processor.force_flush().expect("flushed");
            assert_eq!(store.list(10).len(), 4);
        })
        .await
        .expect("flushed");
    }

    #[tokio::test]
    async fn a_batch_that_is_not_full_is_exported_after_the_delay() {
        let (processor, store) = processor(settings(100, 50, Duration::from_millis(50))).await;
        for span in spans(2) {
            processor.on_end(span);
        }
        until_filed(&store, 2).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unsampled_spans_are_not_exported() {
        let (processor, store) = processor(BatchSettings::default()).await;
        let mut spans = spans(2);
        let unsampled = &spans[1].span_context;
        spans[1].span_context = SpanContext::new(
            unsampled.trace_id(),
            unsampled.span_id(),
            TraceFlags::default(),
            false,
            unsampled.trace_state().clone(),
        );
        for span in spans {
            processor.on_end(span);
        }
        tokio::task::spawn_blocking(move || {
            processor.force_flush().expect("flushed");
            assert_eq!(store.list(10).len(), 1);
        })
        .await
        .expect("flushed");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_exports_what_is_left_and_then_takes_nothing() {
        let (processor, store) = processor(BatchSettings::default()).await;
        let mut spans = spans(3);
        let late = spans.pop().expect("a span");
        for span in spans {
            processor.on_end(span);
        }
        tokio::task::spawn_blocking(move || {
            processor
                .shutdown_with_timeout(Duration::from_secs(10))
                .expect("shut down");
            assert_eq!(store.list(10).len(), 2);
            processor.on_end(late);
            assert!(matches!(
                processor.force_flush(),
                Err(OTelSdkError::AlreadyShutdown)
            ));
            assert_eq!(store.list(10).len(), 2);
        })
        .await
        .expect("shut down");
    }

    #[test]
    fn a_full_queue_drops_spans_and_counts_them() {
        // No export task: nothing leaves the queue.
        let shared = Shared {
            queue: Mutex::new(Queue::default()),
            full: Notify::new(),
            resource: Mutex::new(Resource::builder_empty().build()),
            settings: settings(5, 2, Duration::from_secs(3600)),
            dropped: AtomicU64::new(0),
        };
        let filled: Vec<bool> = spans(8).iter().map(|s| shared.add(s)).collect();
        assert_eq!(
            filled,
            [false, true, false, true, false, false, false, false]
        );
        assert_eq!(shared.dropped.load(Ordering::Relaxed), 3);
        assert_eq!(shared.next().map(|b| b.len()), Some(2));
        assert_eq!(shared.next().map(|b| b.len()), Some(2));
        assert!(shared.next().is_none(), "the fifth span is still filling");
        // Sent batches free their room.
        assert!(shared.add(&spans(1)[0]), "fills the batch of the fifth");
        assert_eq!(shared.dropped.load(Ordering::Relaxed), 3);
        shared.seal();
        assert_eq!(shared.next().map(|b| b.len()), Some(2));
    }
}
