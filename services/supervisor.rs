//! Running a set of child processes for `exemesh up`: each in its own process group, its stderr
//! prefixed with its name, restarted with backoff when it dies, and stopped cleanly (SIGTERM, then
//! SIGKILL of the group after a grace period).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
const HEALTHY_RUN: Duration = Duration::from_secs(30);

/// One supervised process.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    /// Its name, e.g. `product-1` (prefixes its log lines).
    pub name: String,
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Environment variables added to the inherited environment.
    pub env: Vec<(String, String)>,
}

/// What a child reports about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChildState {
    /// Starting (or restarting).
    Starting,
    /// It printed `listening on ADDR`.
    Listening(String),
    /// It exited; restarting after a backoff.
    Crashed(String),
    /// Stopped for good.
    Stopped,
}

/// Supervises children until stopped.
#[derive(Debug)]
pub struct Supervisor {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    states: Vec<(String, watch::Receiver<ChildState>)>,
}

impl Supervisor {
    /// Starts every child.
    pub fn start(children: Vec<ChildSpec>, grace: Duration) -> Supervisor {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut states = Vec::new();
        for spec in children {
            let (tx, rx) = watch::channel(ChildState::Starting);
            states.push((spec.name.clone(), rx));
            tasks.spawn(supervise(Arc::new(spec), tx, stopped.clone(), grace));
        }
        Supervisor {
            stop,
            tasks,
            states,
        }
    }

    /// Each child's name and state.
    pub fn states(&self) -> &[(String, watch::Receiver<ChildState>)] {
        &self.states
    }

    /// Stops every child (SIGTERM, then SIGKILL of its group after the grace period) and waits.
    pub async fn stop(mut self) {
        self.stop.send_replace(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

async fn supervise(
    spec: Arc<ChildSpec>,
    state: watch::Sender<ChildState>,
    mut stopped: watch::Receiver<bool>,
    grace: Duration,
) {
    let mut backoff = BACKOFF_START;
    while !*stopped.borrow() {
        state.send_replace(ChildState::Starting);
        let began = Instant::now();
        let how = run_once(&spec, &state, &mut stopped, grace).await;
        if *stopped.borrow() {
            break;
        }
        if began.elapsed() >= HEALTHY_RUN {
            backoff = BACKOFF_START;
        }
        eprintln!(
            "[{}] exited ({how}); restarting in {}ms",
            spec.name,
            backoff.as_millis()
        );
        state.send_replace(ChildState::Crashed(how));
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stopped.wait_for(|s| *s) => break,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    state.send_replace(ChildState::Stopped);
}

async fn run_once(
    spec: &ChildSpec,
    state: &watch::Sender<ChildState>,
    stopped: &mut watch::Receiver<bool>,
    grace: Duration,
) -> String {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe; it makes the child die with us.
    #[cfg(target_os = "linux")]
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            );
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => return format!("cannot start: {e}"),
    };
    let pgid = child.id().map_or(0, |p| p as i32);
    let registration = super::reaper::register(pgid);
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let name = spec.name.clone();
    let logs = tokio::spawn(async move {
        let Some(stderr) = stderr else { return };
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("[{name}] {line}");
        }
    });
    let state_out = state.clone();
    let listen = tokio::spawn(async move {
        let Some(stdout) = stdout else { return };
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(addr) = line.strip_prefix("listening on ") {
                state_out.send_replace(ChildState::Listening(addr.trim().to_string()));
            }
        }
    });
    let exited = tokio::select! {
        status = child.wait() => Some(status.map_or_else(|e| e.to_string(), |s| s.to_string())),
        _ = stopped.wait_for(|s| *s) => None,
    };
    let how = match exited {
        Some(how) => how,
        None => {
            signal_group(pgid, libc::SIGTERM);
            match tokio::time::timeout(grace, child.wait()).await {
                Ok(_) => "stopped".to_string(),
                Err(_) => "killed after the grace period".to_string(),
            }
        }
    };
    signal_group(pgid, libc::SIGKILL);
    let _ = child.wait().await;
    drop(registration);
    let _ = tokio::time::timeout(Duration::from_secs(1), logs).await;
    listen.abort();
    how
}

fn signal_group(pgid: i32, signal: libc::c_int) {
    if pgid > 0 {
        // SAFETY: killpg has no memory-safety preconditions.
        unsafe {
            libc::killpg(pgid, signal);
        }
    }
}
