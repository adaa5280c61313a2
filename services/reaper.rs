//! The orphan guard: a tiny companion process that kills every process group exemesh started if
//! exemesh itself dies without cleaning up (`kill -9`, OOM killer, a crash).
//!
//! Process groups and the parent-death signal already cover the direct children, but a grandchild
//! (a shell pipeline, PyInstaller's `--onefile` child) is re-parented to init when its parent dies and
//! would live on. So exemesh starts `exemesh __guard` with a pipe on its stdin and tells it about every
//! process group it creates (`+PGID`) and reaps (`-PGID`). When the pipe reaches end-of-file, which the
//! kernel guarantees the moment exemesh dies however it dies, the guard sends `SIGKILL` to every group
//! still registered and exits.

use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};

static GUARD: OnceLock<Mutex<Option<(Child, ChildStdin)>>> = OnceLock::new();

/// The hidden subcommand that runs the guard.
pub const GUARD_SUBCOMMAND: &str = "__guard";

/// Starts the guard (once per process). Without it, exemesh still kills its groups on every orderly
/// path; only the `kill -9` case loses grandchildren.
pub fn start() -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    if GUARD.get().is_some() {
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .arg(GUARD_SUBCOMMAND)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        // Its own group: a Ctrl-C aimed at exemesh's terminal group must not stop the guard first.
        .process_group(0)
        .spawn()?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| std::io::Error::other("guard has no stdin"))?;
    let _ = GUARD.set(Mutex::new(Some((child, stdin))));
    Ok(())
}

fn tell(line: String) {
    if let Some(guard) = GUARD.get() {
        let mut guard = guard.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, stdin)) = guard.as_mut() {
            let _ = stdin.write_all(line.as_bytes());
        }
    }
}

/// Registers a process group with the guard.
pub fn register(pgid: i32) {
    tell(format!("+{pgid}\n"));
}

/// Unregisters a process group (it has been killed and reaped).
pub fn unregister(pgid: i32) {
    tell(format!("-{pgid}\n"));
}

/// Stops the guard at an orderly exit (every group is already gone).
pub fn stop() {
    if let Some(guard) = GUARD.get() {
        let taken = guard.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((mut child, stdin)) = taken {
            drop(stdin);
            let _ = child.wait();
        }
    }
}

/// The guard's main loop: track groups from stdin; at end-of-file kill those left.
pub fn run_guard() {
    // SAFETY: setting signal dispositions to SIG_IGN has no memory-safety preconditions.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    let mut groups = BTreeSet::new();
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let (sign, number) = line.split_at(line.len().min(1));
        let Ok(pgid) = number.parse::<i32>() else {
            continue;
        };
        if pgid <= 1 {
            continue;
        }
        match sign {
            "+" => {
                groups.insert(pgid);
            }
            "-" => {
                groups.remove(&pgid);
            }
            _ => {}
        }
    }
    for pgid in groups {
        // SAFETY: killpg has no memory-safety preconditions.
        unsafe {
            libc::killpg(pgid, libc::SIGKILL);
        }
    }
}
