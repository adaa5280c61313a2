//! Starting executables safely: no shell, a clean environment, their own process group, and a
//! parent-death signal; and killing the whole group when the owner lets go.
//!
//! Every child runs in a new process group whose id is its pid, so a deadline or a shutdown kills the
//! child *and* anything it started (PyInstaller's `--onefile` runs as two processes, shell scripts
//! fork). The child also gets `SIGKILL` if exemesh dies, even by `kill -9`, and the
//! [orphan guard](super::reaper) kills the rest of the group. Children start without a copy of
//! exemesh's memory ([`super::vfork`]).

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use super::child::{Child, ChildStderr, ChildStdin, ChildStdout};
use super::sandbox::Sandbox;
use super::vfork::Plan;

/// A description of what to start.
#[derive(Debug)]
pub struct Launch<'a> {
    /// Absolute path of the program.
    pub program: &'a Path,
    /// Its arguments.
    pub args: &'a [String],
    /// Working directory.
    pub cwd: &'a Path,
    /// The complete environment (nothing is inherited).
    pub env: &'a [(String, String)],
    /// Resource limits and the user to run as.
    pub sandbox: &'a Sandbox,
}

/// A started child and the guard of its process group.
#[derive(Debug)]
pub struct Started {
    /// Kills the group when dropped. Declared first so that it is dropped first: the group is
    /// killed while its leader is still unreaped, so its id cannot have been reused.
    pub group: GroupGuard,
    /// The child, with piped stdin, stdout and stderr.
    pub child: Child,
}

/// Starts `launch` with piped stdio in its own process group (see [`super::vfork`] for how), with
/// `extra_env` on top of its environment (a key in both takes the value in `extra_env`).
pub fn start(launch: &Launch<'_>, extra_env: &[(&str, &str)]) -> std::io::Result<Started> {
    let (stdin, stdin_w) = pipe()?;
    let (stdout_r, stdout) = pipe()?;
    let (stderr_r, stderr) = pipe()?;
    // exemesh's ends join the reactor before anything starts: nothing can fail after the spawn.
    let stdin_w = ChildStdin::from_owned_fd(stdin_w)?;
    let stdout_r = ChildStdout::from_owned_fd(stdout_r)?;
    let stderr_r = ChildStderr::from_owned_fd(stderr_r)?;
    let env = launch
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .filter(|(k, _)| !extra_env.iter().any(|(extra, _)| extra == k))
        .chain(extra_env.iter().copied());
    let plan = Plan::new(
        launch.program,
        launch.args.iter().map(String::as_str),
        env,
        launch.cwd,
        [&stdin, &stdout, &stderr],
        &launch.sandbox.rlimits(),
        launch.sandbox.run_as.as_ref().map(|u| (u.uid, u.gid)),
    )?;
    let spawned = plan.spawn()?;
    // The child's ends are its own now.
    drop((stdin, stdout, stderr));
    let pgid = spawned.pid;
    let group = GroupGuard {
        pgid,
        _registration: super::reaper::register(pgid),
    };
    let child = Child::new(spawned.pid, spawned.pidfd, stdin_w, stdout_r, stderr_r)?;
    Ok(Started { child, group })
}

/// A pipe, both ends close-on-exec: (read end, write end).
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded: both fds are new and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Owns a process group; dropping it sends `SIGKILL` to every process still in the group.
#[derive(Debug)]
pub struct GroupGuard {
    pgid: libc::pid_t,
    // Dropped after `drop` has killed the group: the guard forgets it only then.
    _registration: super::reaper::Registration,
}

impl GroupGuard {
    /// The process group id (the leader's pid).
    pub fn pgid(&self) -> i32 {
        self.pgid
    }

    /// Sends `signal` to the whole group.
    pub fn signal(&self, signal: libc::c_int) {
        if self.pgid > 0 {
            // SAFETY: killpg has no memory-safety preconditions; a stale group yields ESRCH.
            unsafe {
                libc::killpg(self.pgid, signal);
            }
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
    }
}
