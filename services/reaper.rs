//! The orphan guard: a tiny companion process that kills every process group exemesh started if
//! exemesh itself dies without cleaning up (`kill -9`, OOM killer, a crash).
//!
//! Process groups and the parent-death signal already cover the direct children, but a grandchild
//! (a shell pipeline, PyInstaller's `--onefile` child) is re-parented to init when its parent dies and
//! would live on. So exemesh starts `exemesh __guard` with a pipe on its stdin and keeps a table of
//! every process group it creates and reaps in memory shared with the guard
//! ([`GroupTable`]: an atomic store per change, nothing that wakes the guard). When the pipe reaches
//! end-of-file, which the kernel guarantees the moment exemesh dies however it dies, the guard reads
//! the table and sends `SIGKILL` to every group still in it, and exits. Groups that do not fit in
//! the table (or every group, if it could not be made) go through the pipe instead, as lines
//! `+PGID` and `-PGID`.

use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::os::fd::AsFd;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use super::guard_table::{self, GroupTable, Slot};

static GUARD: OnceLock<Mutex<Option<(Child, ChildStdin)>>> = OnceLock::new();

/// The table the running guard holds (set only once the guard has started with it).
static TABLE: OnceLock<GroupTable> = OnceLock::new();

/// The hidden subcommand that runs the guard.
pub const GUARD_SUBCOMMAND: &str = "__guard";

/// The guard's flag saying that its stdout is the table (an fd it inherits with no pre-exec step).
const TABLE_ON_STDOUT: &str = "--table-on-stdout";

/// Starts the guard (once per process). Without it, exemesh still kills its groups on every orderly
/// path; only the `kill -9` case loses grandchildren.
pub fn start() -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    if GUARD.get().is_some() {
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let mut command = Command::new(exe);
    command
        .arg(GUARD_SUBCOMMAND)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        // Its own group: a Ctrl-C aimed at exemesh's terminal group must not stop the guard first.
        .process_group(0);
    // Without a table, every group goes through the pipe.
    let table = GroupTable::create(guard_table::SLOTS).ok();
    if let Some(table) = &table {
        command
            .arg(TABLE_ON_STDOUT)
            .stdout(Stdio::from(table.fd().try_clone_to_owned()?));
    }
    let mut child = command.spawn()?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| std::io::Error::other("guard has no stdin"))?;
    let _ = GUARD.set(Mutex::new(Some((child, stdin))));
    if let Some(table) = table {
        let _ = TABLE.set(table);
    }
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

/// A process group registered with the guard; dropping it unregisters the group (drop it once the
/// group has been sent `SIGKILL`, or has ended).
#[derive(Debug)]
pub struct Registration {
    pgid: i32,
    slot: Option<Slot>,
}

/// Registers a process group with the guard (a no-op without a guard).
pub fn register(pgid: i32) -> Registration {
    let slot = TABLE
        .get()
        .filter(|_| pgid > 1)
        .and_then(|table| table.insert(pgid));
    if slot.is_none() {
        tell(format!("+{pgid}\n"));
    }
    Registration { pgid, slot }
}

impl Drop for Registration {
    fn drop(&mut self) {
        match (self.slot, TABLE.get()) {
            (Some(slot), Some(table)) => table.remove(slot, self.pgid),
            _ => tell(format!("-{}\n", self.pgid)),
        }
    }
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

/// The guard's main loop: track groups from stdin; at end-of-file kill those left there and in the
/// table.
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
    if std::env::args().any(|a| a == TABLE_ON_STDOUT)
        && let Ok(listed) = guard_table::read_groups(std::io::stdout().as_fd())
    {
        groups.extend(listed);
    }
    for pgid in groups {
        // SAFETY: killpg has no memory-safety preconditions.
        unsafe {
            libc::killpg(pgid, libc::SIGKILL);
        }
    }
}
