//! Starting executables safely: no shell, a clean environment, their own process group, and a
//! parent-death signal; and killing the whole group when the owner lets go.
//!
//! Every child runs in a new process group whose id is its pid, so a deadline or a shutdown kills the
//! child *and* anything it started (PyInstaller's `--onefile` runs as two processes, shell scripts
//! fork). On Linux the child also gets `SIGKILL` if exemesh dies, even by `kill -9`, and the
//! [orphan guard](super::reaper) kills the rest of the group.

use std::path::Path;
use std::process::Stdio;

use tokio::process::{Child, Command};

use super::sandbox::Sandbox;

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
    /// The child, with piped stdin, stdout and stderr.
    pub child: Child,
    /// Kills the group when dropped.
    pub group: GroupGuard,
}

/// Starts `launch` with piped stdio in its own process group.
pub fn start(launch: &Launch<'_>, extra_env: &[(&str, &str)]) -> std::io::Result<Started> {
    let mut cmd = Command::new(launch.program);
    cmd.args(launch.args)
        .current_dir(launch.cwd)
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .envs(extra_env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let parent = std::process::id() as libc::pid_t;
    let rlimits = launch.sandbox.rlimits();
    let run_as = launch.sandbox.run_as.as_ref().map(|u| (u.uid, u.gid));
    // SAFETY: the closure runs in the forked child before exec and only calls async-signal-safe
    // functions (prctl, getppid, _exit, setrlimit, setgroups, setgid, setuid).
    unsafe {
        cmd.pre_exec(move || {
            #[cfg(target_os = "linux")]
            {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // exemesh may have died between fork and prctl: then nobody would ever kill us.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            super::sandbox::apply_in_child(&rlimits, run_as)
        });
    }
    let child = cmd.spawn()?;
    let pgid = child.id().map_or(0, |pid| pid as libc::pid_t);
    super::reaper::register(pgid);
    Ok(Started {
        child,
        group: GroupGuard { pgid },
    })
}

/// Owns a process group; dropping it sends `SIGKILL` to every process still in the group.
#[derive(Debug)]
pub struct GroupGuard {
    pgid: libc::pid_t,
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
        super::reaper::unregister(self.pgid);
    }
}
