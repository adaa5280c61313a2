//! A pool of workers: started, handshaken, supervised, restarted with backoff, and chosen per call.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::conn::ParentInfo;
use super::conn::{Conn, Event};
use super::frame::{self, Inbound, parse_inbound};
use super::outbound::Outbound;
use crate::mesh::telemetry::metrics::{metrics, name};
use crate::services::child::{Child, ChildStderr, ChildStdin, ChildStdout};
use crate::services::error::CallError;
use crate::services::exit_status::describe_exit;
use crate::services::line_reader::{Line, read_line};
use crate::services::manifest::PoolSpec;
use crate::services::process::{self, Launch, Started};

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
const HEALTHY_RUN: Duration = Duration::from_secs(30);

/// A pool of identical workers.
pub struct Pool {
    spec: PoolSpec,
    slots: RwLock<Vec<Option<Arc<Conn>>>>,
    released: Arc<Notify>,
    ready: watch::Sender<usize>,
    stopping: watch::Sender<bool>,
    tasks: Mutex<JoinSet<()>>,
    max_frame: usize,
    routed: Vec<String>,
    outbound: Option<Arc<Outbound>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.spec.name)
            .field("ready", &*self.ready.borrow())
            .finish()
    }
}

/// A reserved slot on a worker for one call.
pub struct Lease {
    /// The worker.
    pub conn: Arc<Conn>,
    /// The call's id on that worker.
    pub id: u32,
    /// What the worker says about the call.
    pub events: mpsc::UnboundedReceiver<Event>,
}

impl Pool {
    /// Starts the pool's workers. `max_output` bounds one reply message (frame lines get a little
    /// more for the envelope); `routed` names the methods (`pkg.Service/Method`) sent to this pool.
    /// `outbound` carries the workers' calls into the mesh (none: such calls fail with
    /// `FAILED_PRECONDITION`).
    pub fn start(
        spec: PoolSpec,
        max_output: usize,
        routed: Vec<String>,
        outbound: Option<Arc<Outbound>>,
    ) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            slots: RwLock::new(vec![None; spec.workers]),
            released: Arc::new(Notify::new()),
            ready: watch::channel(0).0,
            stopping: watch::channel(false).0,
            tasks: Mutex::new(JoinSet::new()),
            max_frame: max_output + 64 * 1024,
            routed,
            outbound,
            spec,
        });
        let mut tasks = pool.tasks.lock().unwrap_or_else(|p| p.into_inner());
        for index in 0..pool.spec.workers {
            tasks.spawn(supervise(pool.clone(), index));
        }
        drop(tasks);
        pool
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Follows the number of ready workers.
    pub fn ready_workers(&self) -> watch::Receiver<usize> {
        self.ready.subscribe()
    }

    /// Reserves a slot on the least-loaded ready worker, waiting for one to free up.
    /// The caller bounds the wait (deadline).
    pub async fn acquire(
        &self,
        method: &Arc<str>,
        parent: &ParentInfo,
    ) -> Result<Lease, CallError> {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if *self.stopping.borrow() {
                return Err(CallError::ShuttingDown);
            }
            if let Some(lease) = self.try_acquire(method, parent) {
                return Ok(lease);
            }
            released.await;
        }
    }

    fn try_acquire(&self, method: &Arc<str>, parent: &ParentInfo) -> Option<Lease> {
        let mut candidates: Vec<Arc<Conn>> = self
            .slots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .flatten()
            .cloned()
            .collect();
        candidates.sort_by_key(|c| c.in_flight());
        candidates.into_iter().find_map(|conn| {
            let (id, events) = conn.open_call(method.clone(), parent.clone())?;
            Some(Lease { conn, id, events })
        })
    }

    fn set_slot(&self, index: usize, conn: Option<Arc<Conn>>) {
        let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = slots.get_mut(index) {
            *slot = conn;
        }
        let ready = slots.iter().flatten().count();
        drop(slots);
        metrics()
            .pool_ready
            .get_or_create(&name(&self.spec.name))
            .set(ready as i64);
        self.ready.send_replace(ready);
        self.released.notify_waiters();
    }

    /// Stops every worker: closes stdin, waits up to the stop timeout, then kills the groups.
    pub async fn stop(&self) {
        self.stopping.send_replace(true);
        self.released.notify_waiters();
        let mut tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        while tasks.join_next().await.is_some() {}
    }
}

/// Keeps worker `index` running until the pool stops.
async fn supervise(pool: Arc<Pool>, index: usize) {
    let id = format!("{}#{}", pool.spec.name, index + 1);
    let mut backoff = BACKOFF_START;
    let mut stopping = pool.stopping.subscribe();
    while !*stopping.borrow() {
        let began = Instant::now();
        match run_once(&pool, index, &id, &mut stopping).await {
            Ok(how) if *stopping.borrow() => tracing::info!(worker = %id, "worker {how}"),
            Ok(how) => tracing::warn!(worker = %id, "worker {how}"),
            Err(e) => tracing::error!(worker = %id, "worker failed: {e}"),
        }
        pool.set_slot(index, None);
        if *stopping.borrow() {
            break;
        }
        if began.elapsed() >= HEALTHY_RUN {
            backoff = BACKOFF_START;
        }
        tracing::info!(worker = %id, "restarting in {}ms", backoff.as_millis());
        metrics()
            .pool_restarts
            .get_or_create(&name(&pool.spec.name))
            .inc();
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stopping.changed() => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Runs one incarnation of a worker; returns how it ended.
async fn run_once(
    pool: &Arc<Pool>,
    index: usize,
    id: &str,
    stopping: &mut watch::Receiver<bool>,
) -> Result<String, String> {
    let spec = &pool.spec;
    let launch = Launch {
        program: &spec.program,
        args: &spec.args,
        cwd: &spec.cwd,
        env: &spec.env,
        sandbox: &spec.sandbox,
    };
    let extra = [
        ("EXEMESH_WORKER_ID", id),
        ("EXEMESH_POOL", spec.name.as_str()),
        ("EXEMESH_PROTOCOL", "1"),
    ];
    let Started { mut child, group } = process::start(&launch, &extra)
        .map_err(|e| format!("cannot start {}: {e}", spec.program.display()))?;
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err("missing pipes".into());
    };
    let mut io = JoinSet::new();
    let mut stderr_task = tokio::spawn(log_stderr(stderr, id.to_string()));
    let _stderr_guard = AbortGuard(stderr_task.abort_handle());
    let (tx, rx) = mpsc::channel(1024);
    io.spawn(write_frames(stdin, rx));
    let mut reader = BufReader::with_capacity(64 * 1024, stdout);
    let mut line = Vec::new();

    let ready = tokio::select! {
        r = tokio::time::timeout(spec.ready_timeout, wait_ready(&mut reader, &mut line, pool.max_frame, id)) => r,
        _ = stopping.changed() => return Ok("stopped before it was ready".into()),
    };
    let ready = match ready {
        Ok(Ok(ready)) => ready,
        Ok(Err(e)) => {
            return Err(format!(
                "{e} before its ready frame{}",
                exit_note(&mut child).await
            ));
        }
        Err(_) => {
            return Err(format!(
                "sent no ready frame within {}ms; killed",
                spec.ready_timeout.as_millis()
            ));
        }
    };
    let max = match ready.max_in_flight as usize {
        0 => spec.max_in_flight,
        n => n.min(spec.max_in_flight),
    };
    let conn = Arc::new(Conn::new(
        id.to_string(),
        group.pgid(),
        tx,
        max,
        pool.released.clone(),
    ));
    tracing::info!(worker = %id, pid = group.pgid(), max_in_flight = max, sdk = %ready.sdk, "worker ready");
    if !ready.methods.is_empty() {
        for method in pool.routed.iter().filter(|m| !ready.methods.contains(m)) {
            tracing::warn!(worker = %id, "the worker does not list {method} in its ready frame; calls to it may fail with UNIMPLEMENTED");
        }
    }
    pool.set_slot(index, Some(conn.clone()));

    let ended = tokio::select! {
        r = read_frames(&mut reader, &mut line, pool, &conn) => r,
        _ = stopping.changed() => {
            pool.set_slot(index, None);
            conn.close();
            let graceful = tokio::time::timeout(spec.stop_timeout, drain_until_eof(&mut reader, &mut line, pool, &conn)).await;
            if graceful.is_err() {
                group.signal(libc::SIGTERM);
                let _ = tokio::time::timeout(Duration::from_secs(1), child.wait()).await;
            }
            Ok("stopped".to_string())
        }
    };
    pool.set_slot(index, None);
    let how = match ended {
        Ok(how) => how,
        Err(e) => format!("broke the protocol ({e}); killed"),
    };
    let note = exit_note(&mut child).await;
    conn.fail_all(&format!("{how}{note}"));
    drop(group);
    // Let the stderr logger drain what the worker wrote last (its crash message, say): its pipe
    // closes with the process (bounded, in case a grandchild keeps it open).
    let _ = tokio::time::timeout(Duration::from_secs(1), &mut stderr_task).await;
    io.abort_all();
    Ok(format!("{how}{note}"))
}

/// Aborts a task when dropped (every exit path of a worker's incarnation).
struct AbortGuard(tokio::task::AbortHandle);

impl Drop for AbortGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Waits briefly for the process to end and describes how it did.
async fn exit_note(child: &mut Child) -> String {
    match tokio::time::timeout(Duration::from_millis(500), child.wait()).await {
        Ok(Ok(status)) => format!(" ({})", describe_exit(status, &Default::default()).1),
        _ => String::new(),
    }
}

async fn wait_ready(
    reader: &mut BufReader<ChildStdout>,
    line: &mut Vec<u8>,
    max: usize,
    id: &str,
) -> Result<super::frame::Ready, String> {
    loop {
        match read_line(reader, line, max).await {
            Ok(Line::Complete) => match parse_inbound(line) {
                Ok(Inbound::Ready(ready)) => return Ok(ready),
                Ok(other) => tracing::warn!(worker = %id, "frame before ready ignored: {other:?}"),
                Err(e) => tracing::warn!(worker = %id, "ignored stdout line before ready: {e}"),
            },
            Ok(Line::Eof) => return Err("closed stdout".into()),
            Ok(Line::TooLong) => return Err(format!("wrote a line over {max} bytes")),
            Err(e) => return Err(format!("stdout error: {e}")),
        }
    }
}

/// Routes frames to calls until the worker closes stdout. `Err` for a fatal protocol violation.
async fn read_frames(
    reader: &mut BufReader<ChildStdout>,
    line: &mut Vec<u8>,
    pool: &Pool,
    conn: &Arc<Conn>,
) -> Result<String, String> {
    let max = pool.max_frame;
    loop {
        match read_line(reader, line, max).await {
            Ok(Line::Complete) => route(line, conn, pool.outbound.as_ref()),
            Ok(Line::Eof) => return Ok("closed stdout".into()),
            Ok(Line::TooLong) => return Err(format!("a line over {max} bytes")),
            Err(e) => return Err(format!("stdout error: {e}")),
        }
    }
}

/// After stdin is closed: deliver what the worker still writes until it exits.
async fn drain_until_eof(
    reader: &mut BufReader<ChildStdout>,
    line: &mut Vec<u8>,
    pool: &Pool,
    conn: &Arc<Conn>,
) {
    let _ = read_frames(reader, line, pool, conn).await;
}

fn route(line: &[u8], conn: &Arc<Conn>, outbound: Option<&Arc<Outbound>>) {
    if line.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    match parse_inbound(line) {
        Ok(Inbound::Message(id, raw)) => conn.deliver(id, Event::Message(raw)),
        Ok(Inbound::End(id)) => conn.deliver(id, Event::End),
        Ok(Inbound::Error(id, body)) => conn.deliver(id, Conn::error_event(body)),
        Ok(Inbound::Ready(_)) => {
            tracing::warn!(worker = %conn.id(), "duplicate ready frame ignored")
        }
        Ok(Inbound::Call(call_id, call)) => match outbound {
            Some(outbound) => {
                let parent = (call.parent_id != 0)
                    .then(|| conn.parent(call.parent_id))
                    .flatten();
                let task = tokio::spawn(outbound.clone().run(conn.clone(), call_id, call, parent));
                conn.track_outbound(call_id, task.abort_handle());
            }
            None => {
                let conn = conn.clone();
                let line = frame::reply_error_line(
                    call_id,
                    "FAILED_PRECONDITION",
                    "this server has no discovery: start it with --discovery (exemesh up does) to call other services",
                );
                tokio::spawn(async move { conn.send(line).await });
            }
        },
        Ok(Inbound::CancelCall(call_id)) => conn.cancel_outbound(call_id),
        Err(e) => {
            let shown = String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned();
            tracing::warn!(worker = %conn.id(), "ignored stdout line ({e}): {shown}");
        }
    }
}

/// Writes queued frames to stdin, batching what is ready; ends (closing stdin) when the queue closes.
async fn write_frames(mut stdin: ChildStdin, mut rx: mpsc::Receiver<Vec<u8>>) {
    let mut batch = Vec::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        batch.clear();
        batch.extend_from_slice(&first);
        while batch.len() < 64 * 1024 {
            match rx.try_recv() {
                Ok(more) => batch.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if stdin.write_all(&batch).await.is_err() {
            return;
        }
    }
    let _ = stdin.shutdown().await;
}

/// Logs each stderr line with the worker's id.
async fn log_stderr(stderr: ChildStderr, id: String) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    while let Ok(Line::Complete | Line::TooLong) =
        read_line(&mut reader, &mut line, 64 * 1024).await
    {
        tracing::info!(target: "exemesh::worker_stderr", worker = %id, "{}", String::from_utf8_lossy(&line));
    }
}
