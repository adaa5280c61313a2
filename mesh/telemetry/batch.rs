//! Batched OTLP/gRPC export: a span is written as protobuf the moment it ends, on the thread that
//! ended it, into the batch being filled ([`EncodedSpans`]); a task on the runtime sends each full
//! batch, and every `OTEL_BSP_SCHEDULE_DELAY` whatever has been written, through the
//! [`GrpcExporter`].
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

use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use tokio::sync::{Notify, mpsc};

use super::config::BatchSettings;
use super::exporter::GrpcExporter;
use super::otlp::{EncodedSpans, ResourceFields};

/// Where finished spans are written: the batches a [`BatchExporter`] sends (cheap to clone).
#[derive(Debug, Clone)]
pub struct Batches(Arc<Shared>);

/// The export task's handle: flushes and shuts it down.
#[derive(Debug)]
pub struct BatchExporter {
    control: mpsc::UnboundedSender<Control>,
}

/// What the calls that end spans and the export task share.
#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    /// Signalled when a batch fills up.
    full: Notify,
    /// The resource's part of every export request.
    fields: ResourceFields,
    settings: BatchSettings,
    /// Spans dropped because the queue was full.
    dropped: AtomicU64,
}

/// The spans waiting for export.
#[derive(Debug)]
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

impl Queue {
    /// Moves the batch being filled to the batches ready to send. The next one reserves room for
    /// as many bytes as it took, and an eighth more: batches fill to about the same size, and a
    /// buffer that never grows is never copied.
    fn send_filling(&mut self, room: usize) {
        let expected = self.filling.bytes() + self.filling.bytes() / 8;
        let batch = std::mem::replace(&mut self.filling, EncodedSpans::with_room(room, expected));
        self.full.push_back(batch);
    }
}

impl BatchExporter {
    /// Starts exporting the spans of `resource` through `exporter` as `settings` say: the export
    /// task runs on the current tokio runtime (call it inside one). The [`Batches`] take the spans.
    pub fn start(
        exporter: GrpcExporter,
        settings: BatchSettings,
        resource: Resource,
    ) -> (BatchExporter, Batches) {
        let shared = Arc::new(Shared::new(resource, settings));
        let (control, requests) = mpsc::unbounded_channel();
        tokio::spawn(run(shared.clone(), exporter, requests));
        (BatchExporter { control }, Batches(shared))
    }

    /// Exports every span written so far, waiting up to `timeout`. Blocking: call it off the
    /// async threads.
    pub fn flush(&self, timeout: Duration) -> OTelSdkResult {
        self.ask(Control::Flush, timeout)
    }

    /// Exports every span written so far and stops: spans that end later are not exported.
    /// Blocking: call it off the async threads.
    pub fn shutdown(&self, timeout: Duration) -> OTelSdkResult {
        self.ask(Control::Shutdown, timeout)
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

impl Batches {
    /// Writes a finished span into the batch being filled (`write` appends its `Span` body), unless
    /// the queue is full or shut down; wakes the export task when that fills the batch.
    pub fn add(&self, write: impl FnOnce(&mut Vec<u8>)) {
        if self.0.add(write) {
            self.0.full.notify_one();
        }
    }
}

impl Shared {
    /// Nothing written yet.
    fn new(resource: Resource, settings: BatchSettings) -> Shared {
        let fields = ResourceFields::new(&resource);
        let queue = Queue {
            filling: EncodedSpans::with_room(fields.header_room(), 0),
            full: VecDeque::new(),
            waiting: 0,
            closed: false,
        };
        Shared {
            queue: Mutex::new(queue),
            full: Notify::new(),
            fields,
            settings,
            dropped: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes a span into the batch being filled; true when that filled it.
    fn add(&self, write: impl FnOnce(&mut Vec<u8>)) -> bool {
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
        queue.filling.push(write);
        queue.waiting += 1;
        if queue.filling.len() < self.settings.max_export_batch_size {
            return false;
        }
        queue.send_filling(self.fields.header_room());
        true
    }

    /// Makes the batch being filled ready to send, even if it is not full.
    fn seal(&self) {
        let mut queue = self.lock();
        if !queue.filling.is_empty() {
            queue.send_filling(self.fields.header_room());
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
            let message = batch.export_message(&self.fields);
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

/// Batches that no task exports, for tests: what has been written is taken with
/// [`Batches::take`].
#[cfg(test)]
impl Batches {
    pub(super) fn detached() -> Batches {
        Batches(Arc::new(Shared::new(
            Resource::builder_empty().build(),
            BatchSettings::default(),
        )))
    }

    /// Every span written so far (and not yet taken).
    pub(super) fn take(&self) -> EncodedSpans {
        self.0.seal();
        let mut all = EncodedSpans::default();
        while let Some(batch) = self.0.next() {
            all.append(batch);
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    use crate::mesh::telemetry::exporter::tests::{api_key, collector};
    use crate::mesh::telemetry::otlp::tests::root_span;
    use crate::mesh::trace_view::store::TraceStore;

    fn settings(queue: usize, batch: usize, delay: Duration) -> BatchSettings {
        BatchSettings {
            max_queue_size: queue,
            max_export_batch_size: batch,
            schedule_delay: delay,
        }
    }

    /// An exporter to a fresh collector, its batches, and what that collector filed.
    async fn exporter(settings: BatchSettings) -> (BatchExporter, Batches, Arc<TraceStore>) {
        let store = Arc::new(TraceStore::default());
        let endpoint = format!("http://{}", collector(store.clone()).await);
        let exporter =
            GrpcExporter::new(&endpoint, &api_key(), Duration::from_secs(5)).expect("an exporter");
        let resource = Resource::builder().with_service_name("orders").build();
        let (exporter, batches) = BatchExporter::start(exporter, settings, resource);
        (exporter, batches, store)
    }

    /// Ends `n` root spans (one trace each, numbered from `first`) into `batches`.
    fn end_spans(batches: &Batches, first: u128, n: u128) {
        for trace in first..first + n {
            batches.add(|buf| root_span(buf, trace, "test.v1.Echo/Unary"));
        }
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
        let (exporter, batches, store) = exporter(settings(100, 3, hour)).await;
        end_spans(&batches, 1, 4);
        until_filed(&store, 3).await;
        assert_eq!(store.list(10)[0].root_service, "orders");
        // The fourth waits for the next batch, the delay or a flush.
        tokio::task::spawn_blocking(move || {
            assert_eq!(store.list(10).len(), 3, "not sent before a flush");
            exporter.flush(Duration::from_secs(10)).expect("flushed");
            assert_eq!(store.list(10).len(), 4);
        })
        .await
        .expect("flushed");
    }

    #[tokio::test]
    async fn a_batch_that_is_not_full_is_exported_after_the_delay() {
        let (_exporter, batches, store) =
            exporter(settings(100, 50, Duration::from_millis(50))).await;
        end_spans(&batches, 1, 2);
        until_filed(&store, 2).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_exports_what_is_left_and_then_takes_nothing() {
        let (exporter, batches, store) = exporter(BatchSettings::default()).await;
        end_spans(&batches, 1, 2);
        tokio::task::spawn_blocking(move || {
            exporter
                .shutdown(Duration::from_secs(10))
                .expect("shut down");
            assert_eq!(store.list(10).len(), 2);
            end_spans(&batches, 3, 1);
            assert!(matches!(
                exporter.flush(Duration::from_secs(10)),
                Err(OTelSdkError::AlreadyShutdown)
            ));
            assert_eq!(store.list(10).len(), 2);
        })
        .await
        .expect("shut down");
    }

    #[test]
    fn a_batch_is_written_in_one_buffer_sized_by_the_last_one() {
        let shared = Shared::new(
            Resource::builder().with_service_name("orders").build(),
            settings(100, 20, Duration::from_secs(3600)),
        );
        let add = |trace| shared.add(|buf| root_span(buf, trace, "test.v1.Echo/Unary"));
        let capacity = || shared.lock().filling.capacity();
        let mut grew = 0;
        for trace in 1..=20 {
            let before = capacity();
            add(trace);
            grew += usize::from(trace > 1 && capacity() != before);
        }
        assert!(grew > 0, "the first batch grows as it fills");
        let first = shared.next().expect("a full batch");
        add(21);
        let reserved = capacity();
        assert!(reserved >= first.bytes() + first.bytes() / 8, "{reserved}");
        for trace in 22..40 {
            add(trace);
            assert_eq!(capacity(), reserved, "grew at span {trace}");
        }
        add(40);
        let second = shared.next().expect("the second batch");
        assert_eq!(second.bytes(), first.bytes());
    }

    #[test]
    fn a_full_queue_drops_spans_and_counts_them() {
        // No export task: nothing leaves the queue.
        let shared = Shared::new(
            Resource::builder_empty().build(),
            settings(5, 2, Duration::from_secs(3600)),
        );
        let add = |trace| shared.add(|buf| root_span(buf, trace, "x"));
        let filled: Vec<bool> = (1..=8).map(add).collect();
        assert_eq!(
            filled,
            [false, true, false, true, false, false, false, false]
        );
        assert_eq!(shared.dropped.load(Ordering::Relaxed), 3);
        assert_eq!(shared.next().map(|b| b.len()), Some(2));
        assert_eq!(shared.next().map(|b| b.len()), Some(2));
        assert!(shared.next().is_none(), "the fifth span is still filling");
        // Sent batches free their room.
        assert!(add(9), "fills the batch of the fifth");
        assert_eq!(shared.dropped.load(Ordering::Relaxed), 3);
        shared.seal();
        assert_eq!(shared.next().map(|b| b.len()), Some(2));
    }
}
