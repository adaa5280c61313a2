//! One running worker: the writer half of its pipes and the table of calls in flight on it.
//!
//! A call keeps its slot until the worker answers it (`end` or `error`) or dies, even after the
//! client went away: the worker is still busy with it, and counting it keeps the load honest.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::value::RawValue;
use tokio::sync::{Notify, mpsc};

use super::frame;
use crate::services::error::CallError;
use crate::services::spawn::ErrorBody;

/// What a call hears from its worker.
#[derive(Debug)]
pub enum Event {
    /// A reply message (raw JSON).
    Message(Box<RawValue>),
    /// The call succeeded.
    End,
    /// The call failed.
    Failed(CallError),
}

struct Entry {
    /// `None` once the caller is gone (cancelled): frames are then dropped.
    events: Option<mpsc::UnboundedSender<Event>>,
    method: Arc<str>,
    parent: ParentInfo,
}

/// What an outbound call inherits from the inbound call it is made for.
#[derive(Debug, Clone)]
pub struct ParentInfo {
    /// The inbound call's deadline.
    pub deadline: tokio::time::Instant,
    /// Its W3C trace context.
    pub traceparent: Option<String>,
    /// Its W3C trace state.
    pub tracestate: Option<String>,
}

/// A live, ready worker.
pub struct Conn {
    id: Arc<str>,
    pid: i32,
    writer: Mutex<Option<mpsc::Sender<Vec<u8>>>>,
    /// Calls in flight by id (ids are this side's counter: foldhash, not SipHash, on every call).
    calls: Mutex<HashMap<u32, Entry, foldhash::fast::RandomState>>,
    outbound: Mutex<HashMap<u32, tokio::task::AbortHandle>>,
    in_flight: AtomicUsize,
    next_id: AtomicU32,
    max_in_flight: usize,
    released: Arc<Notify>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("id", &self.id)
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave the maps inconsistent; keep serving.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Conn {
    /// A worker `id` writing frames through `writer`; `released` is notified whenever a slot frees.
    pub fn new(
        id: String,
        pid: i32,
        writer: mpsc::Sender<Vec<u8>>,
        max_in_flight: usize,
        released: Arc<Notify>,
    ) -> Self {
        Self {
            id: id.into(),
            pid,
            writer: Mutex::new(Some(writer)),
            calls: Mutex::new(HashMap::default()),
            outbound: Mutex::new(HashMap::new()),
            in_flight: AtomicUsize::new(0),
            next_id: AtomicU32::new(1),
            max_in_flight,
            released,
        }
    }

    /// The worker's id, e.g. `orders#1`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The worker's id, shared (a span attribute on every call it serves).
    pub fn shared_id(&self) -> Arc<str> {
        self.id.clone()
    }

    /// The worker's process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Calls in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Reserves a slot for a new call; `None` when the worker is full or closing.
    pub fn open_call(
        &self,
        method: Arc<str>,
        parent: ParentInfo,
    ) -> Option<(u32, mpsc::UnboundedReceiver<Event>)> {
        if locked(&self.writer).is_none() {
            return None;
        }
        let mut calls = locked(&self.calls);
        if calls.len() >= self.max_in_flight {
            return None;
        }
        let mut id = self.next_id.fetch_add(1, Ordering::Relaxed);
        while id == 0 || calls.contains_key(&id) {
            id = self.next_id.fetch_add(1, Ordering::Relaxed);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        calls.insert(
            id,
            Entry {
                events: Some(tx),
                method,
                parent,
            },
        );
        self.in_flight.store(calls.len(), Ordering::Release);
        Some((id, rx))
    }

    /// The context of inbound call `id`, while it is in flight.
    pub fn parent(&self, id: u32) -> Option<ParentInfo> {
        locked(&self.calls).get(&id).map(|e| e.parent.clone())
    }

    /// Tracks the worker's outbound call `call_id` (aborted if the worker dies or cancels it).
    pub fn track_outbound(&self, call_id: u32, task: tokio::task::AbortHandle) {
        let mut outbound = locked(&self.outbound);
        outbound.retain(|_, t| !t.is_finished());
        if let Some(old) = outbound.insert(call_id, task) {
            old.abort();
        }
    }

    /// The worker abandoned its outbound call.
    pub fn cancel_outbound(&self, call_id: u32) {
        if let Some(task) = locked(&self.outbound).remove(&call_id) {
            task.abort();
        }
    }

    /// Queues a frame for the worker's stdin; false if the worker is closing.
    pub async fn send(&self, line: Vec<u8>) -> bool {
        let writer = locked(&self.writer).clone();
        match writer {
            Some(w) => w.send(line).await.is_ok(),
            None => false,
        }
    }

    /// The caller gave up on call `id`: stop forwarding and tell the worker.
    pub fn cancel(&self, id: u32, reason: &str) {
        if let Some(entry) = locked(&self.calls).get_mut(&id) {
            entry.events = None;
        } else {
            return;
        }
        if let Some(w) = locked(&self.writer).as_ref() {
            // If the pipe is backed up the worker is not reading anyway; dropping the cancel is safe
            // because the slot stays held until the worker answers or dies.
            let _ = w.try_send(frame::cancel_line(id, reason));
        }
    }

    /// Routes a frame the worker wrote. Frames for unknown or finished calls are ignored.
    pub fn deliver(&self, id: u32, event: Event) {
        let terminal = !matches!(event, Event::Message(_));
        let mut calls = locked(&self.calls);
        let Some(entry) = calls.get(&id) else { return };
        if let Some(tx) = &entry.events {
            let _ = tx.send(event);
        }
        if terminal {
            calls.remove(&id);
            self.in_flight.store(calls.len(), Ordering::Release);
            drop(calls);
            self.released.notify_waiters();
        }
    }

    /// Maps an `error` frame to a call error.
    pub fn error_event(body: ErrorBody) -> Event {
        Event::Failed(body.into_error())
    }

    /// Stops accepting calls and closes the worker's stdin once queued frames are written.
    pub fn close(&self) {
        locked(&self.writer).take();
    }

    /// The worker is gone: every call in flight fails with `UNAVAILABLE`.
    pub fn fail_all(&self, detail: &str) {
        self.close();
        for (_, task) in locked(&self.outbound).drain() {
            task.abort();
        }
        let calls: Vec<Entry> = {
            let mut calls = locked(&self.calls);
            self.in_flight.store(0, Ordering::Release);
            calls.drain().map(|(_, e)| e).collect()
        };
        for entry in calls {
            if let Some(tx) = entry.events {
                let _ = tx.send(Event::Failed(CallError::WorkerLost {
                    method: entry.method.to_string(),
                    worker: self.id.to_string(),
                    detail: detail.to_string(),
                }));
            }
        }
        self.released.notify_waiters();
    }
}
