//! A child process started by [`super::vfork`]: its pipes, and its exit, awaited through a pidfd.
//!
//! Dropping a [`Child`] that has not been waited for kills it (`SIGKILL`) and reaps it, in the
//! background if it takes a moment: no zombie is left behind, as with tokio's `kill_on_drop`.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

/// The child's stdin, as exemesh writes it.
pub type ChildStdin = pipe::Sender;
/// The child's stdout, as exemesh reads it.
pub type ChildStdout = pipe::Receiver;
/// The child's stderr, as exemesh reads it.
pub type ChildStderr = pipe::Receiver;

/// A started child process.
#[derive(Debug)]
pub struct Child {
    pid: libc::pid_t,
    pidfd: Option<AsyncFd<OwnedFd>>,
    status: Option<ExitStatus>,
    /// Its stdin (exemesh's end of the pipe).
    pub stdin: Option<ChildStdin>,
    /// Its stdout.
    pub stdout: Option<ChildStdout>,
    /// Its stderr.
    pub stderr: Option<ChildStderr>,
}

impl Child {
    /// Wraps a started child. Needs a tokio runtime (the pidfd joins its reactor); if it cannot,
    /// the child is killed and reaped, and the error returned.
    pub fn new(
        pid: libc::pid_t,
        pidfd: OwnedFd,
        stdin: ChildStdin,
        stdout: ChildStdout,
        stderr: ChildStderr,
    ) -> io::Result<Self> {
        // SAFETY: an OwnedFd is a valid open fd and always returns the same one; the AsyncFd owns it.
        let pidfd = match unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) } {
            Ok(pidfd) => pidfd,
            Err(e) => {
                kill_and_reap(pid);
                return Err(io::Error::other(e.to_string()));
            }
        };
        Ok(Self {
            pid,
            pidfd: Some(pidfd),
            status: None,
            stdin: Some(stdin),
            stdout: Some(stdout),
            stderr: Some(stderr),
        })
    }

    /// The child's pid.
    pub fn id(&self) -> u32 {
        self.pid.unsigned_abs()
    }

    /// Waits for the child to exit and reaps it. Cancel-safe; returns the same status again once
    /// the child has been reaped.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let pidfd = self
            .pidfd
            .as_ref()
            .ok_or_else(|| io::Error::other("the child is no longer watched"))?;
        loop {
            let mut ready = pidfd.readable().await?;
            match try_reap(self.pid)? {
                Some(status) => {
                    self.status = Some(status);
                    return Ok(status);
                }
                None => ready.clear_ready(),
            }
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.status.is_some() {
            return;
        }
        // SAFETY: kill of our own unreaped child (its pid cannot have been reused).
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
        }
        if let Ok(Some(_)) = try_reap(self.pid) {
            return;
        }
        let pid = self.pid;
        let pidfd = self.pidfd.take();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Some(pidfd) = &pidfd {
                        let _ = pidfd.readable().await;
                    }
                    kill_and_reap(pid);
                });
            }
            Err(_) => kill_and_reap(pid),
        }
    }
}

/// Reaps `pid` if it has exited.
fn try_reap(pid: libc::pid_t) -> io::Result<Option<ExitStatus>> {
    wait_pid(pid, libc::WNOHANG)
}

/// Kills `pid` and reaps it, waiting for it (a child that must not run on, or that failed before
/// its `execve` and is exiting anyway).
pub(super) fn kill_and_reap(pid: libc::pid_t) {
    // SAFETY: kill of our own unreaped child (its pid cannot have been reused).
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let _ = wait_pid(pid, 0);
}

/// `waitpid(pid, flags)`, retried on EINTR; `None` when `WNOHANG` found it still running.
fn wait_pid(pid: libc::pid_t, flags: libc::c_int) -> io::Result<Option<ExitStatus>> {
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child; `status` is a valid out-pointer.
        let reaped = unsafe { libc::waitpid(pid, &mut status, flags) };
        if reaped == pid {
            return Ok(Some(ExitStatus::from_raw(status)));
        }
        if reaped == 0 {
            return Ok(None);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
