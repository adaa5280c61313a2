//! Starting a program without copying exemesh: `clone(CLONE_VM | CLONE_VFORK)`, the way glibc's
//! `posix_spawn` starts one, with exemesh's own steps between the clone and the `execve`.
//!
//! Why not `fork`: a fork of the multi-threaded `exemesh serve` copies its page tables, write-protects
//! its memory (TLB shootdowns to the other CPUs; a copy-on-write fault on each page exemesh touches
//! afterwards) and leaves the child to tear that copy down at `execve`. Measured on the benchmark
//! machine, that was about half of spawn mode's fixed cost per call: `/bin/cat` through `exemesh
//! serve` +0.65 ms over its bare spawn with `fork`, +0.34 ms without (docs/benchmarks.md, "What
//! exemesh adds to a spawn"). `posix_spawn` itself cannot do what exemesh needs in the child (the
//! parent-death signal, resource limits, the user to run as), hence this module.
//!
//! The child borrows exemesh's memory and the calling thread's stack frame until it calls `execve`
//! (the calling thread is suspended meanwhile), so the code it runs ([`child_main`]) is restricted:
//! raw system calls on data prepared beforehand, no allocation, no locks, no `errno`-dependent libc
//! wrappers that keep process-wide state (glibc's `setuid` family signals every thread of the
//! process, which the child is not), and no signal handler of exemesh's may run in it: every signal
//! is blocked across the clone, and the child resets the handlers before it unblocks them.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicI32, AtomicU8, Ordering};

/// The child's stack: it runs a few system calls, nothing recursive (glibc's `posix_spawn` uses
/// 32 KiB plus the size of the arguments).
const STACK_SIZE: usize = 64 * 1024;

/// Where the child's setup failed, for the error message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Step {
    None = 0,
    ProcessGroup,
    ParentDeathSignal,
    ParentGone,
    Stdio,
    WorkingDirectory,
    ResourceLimit,
    User,
    Exec,
}

impl Step {
    fn from_u8(value: u8) -> Self {
        [
            Step::None,
            Step::ProcessGroup,
            Step::ParentDeathSignal,
            Step::ParentGone,
            Step::Stdio,
            Step::WorkingDirectory,
            Step::ResourceLimit,
            Step::User,
            Step::Exec,
        ]
        .get(usize::from(value))
        .copied()
        .unwrap_or(Step::None)
    }

    fn describe(self) -> &'static str {
        match self {
            Step::None => "starting",
            Step::ProcessGroup => "creating its process group",
            Step::ParentDeathSignal => "setting its parent-death signal",
            Step::ParentGone => "starting (exemesh was exiting)",
            Step::Stdio => "connecting its stdin/stdout/stderr",
            Step::WorkingDirectory => "changing to its working directory",
            Step::ResourceLimit => "setting its resource limits",
            Step::User => "switching to its user",
            Step::Exec => "executing it",
        }
    }
}

/// Everything the child needs, prepared (and allocated) before the clone.
pub struct Plan {
    program: CString,
    // The pointers in `argv`/`envp` point into these; they must live as long as the plan.
    _args: Vec<CString>,
    _env: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    cwd: CString,
    /// The child's ends of its stdin, stdout and stderr.
    stdio: [RawFd; 3],
    rlimits: Vec<(libc::__rlimit_resource_t, libc::rlimit)>,
    run_as: Option<(libc::uid_t, libc::gid_t)>,
    parent: libc::pid_t,
    failed_step: AtomicU8,
    failed_errno: AtomicI32,
}

/// A started child: its pid, and a pidfd that becomes readable when it exits.
#[derive(Debug)]
pub struct Spawned {
    /// The child's pid (also its process group id).
    pub pid: libc::pid_t,
    /// A pidfd for the child (`pidfd_open`).
    pub pidfd: OwnedFd,
}

impl Plan {
    /// A plan to run `program` with `args` (without argv\[0\], which is the program), exactly the
    /// environment `env`, in `cwd`, with `stdio` as its fds 0, 1 and 2, the resource limits
    /// `rlimits` (soft = hard) and, when given, as the user and group `run_as`.
    pub fn new<'a>(
        program: &Path,
        args: impl IntoIterator<Item = &'a str>,
        env: impl IntoIterator<Item = (&'a str, &'a str)>,
        cwd: &Path,
        stdio: [&OwnedFd; 3],
        rlimits: &[(libc::__rlimit_resource_t, libc::rlim_t)],
        run_as: Option<(libc::uid_t, libc::gid_t)>,
    ) -> io::Result<Self> {
        let program = c_string(program.as_os_str())?;
        let mut c_args = vec![program.clone()];
        for arg in args {
            c_args.push(c_string(OsStr::new(arg))?);
        }
        let mut c_env = Vec::new();
        for (key, value) in env {
            c_env.push(c_string(OsStr::new(&format!("{key}={value}")))?);
        }
        let argv = null_terminated(&c_args);
        let envp = null_terminated(&c_env);
        Ok(Self {
            program,
            _args: c_args,
            _env: c_env,
            argv,
            envp,
            cwd: c_string(cwd.as_os_str())?,
            stdio: stdio.map(AsRawFd::as_raw_fd),
            rlimits: rlimits
                .iter()
                .map(|&(resource, value)| {
                    let limit = libc::rlimit {
                        rlim_cur: value,
                        rlim_max: value,
                    };
                    (resource, limit)
                })
                .collect(),
            run_as,
            // SAFETY: getpid has no preconditions.
            parent: unsafe { libc::getpid() },
            failed_step: AtomicU8::new(Step::None as u8),
            failed_errno: AtomicI32::new(0),
        })
    }

    /// Starts the child and returns once it has called `execve` (or failed before: then the error
    /// says at which step, and the child is reaped).
    pub fn spawn(&self) -> io::Result<Spawned> {
        // Uninitialised is fine: the child only writes its frames there before reading them.
        let mut stack: Vec<u8> = Vec::with_capacity(STACK_SIZE);
        // The stack grows down; the top must be 16-byte aligned.
        let top = (stack.as_mut_ptr() as usize + STACK_SIZE) & !15;
        // SAFETY: sigset_t is plain data; all-zero is a valid (empty) value.
        let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: the sets are valid; blocking every signal keeps exemesh's handlers out of the child
        // until it has reset them, and the old mask is restored right after the clone.
        let pid = unsafe {
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            // SAFETY: CLONE_VFORK suspends this thread until the child has called execve or
            // _exit, so `self` and `stack` outlive every use the child makes of them.
            let pid = libc::clone(
                child_main,
                top as *mut libc::c_void,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                self as *const Plan as *mut libc::c_void,
            );
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            pid
        };
        drop(stack);
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        let step = Step::from_u8(self.failed_step.load(Ordering::Acquire));
        if step != Step::None {
            let errno = self.failed_errno.load(Ordering::Acquire);
            super::child::kill_and_reap(pid);
            let cause = io::Error::from_raw_os_error(errno);
            return Err(if step == Step::Exec {
                cause
            } else {
                io::Error::new(cause.kind(), format!("{}: {cause}", step.describe()))
            });
        }
        // SAFETY: pidfd_open on our own unreaped child: the pid cannot have been reused.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            super::child::kill_and_reap(pid);
            return Err(io::Error::new(
                e.kind(),
                format!("pidfd_open (Linux 5.3 or later is needed): {e}"),
            ));
        }
        // SAFETY: `fd` is a new pidfd that nothing else owns.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        Ok(Spawned { pid, pidfd })
    }

    fn fail(&self, step: Step) -> ! {
        // SAFETY: reading errno through its location has no preconditions.
        let errno = unsafe { *libc::__errno_location() };
        self.failed_errno.store(errno, Ordering::Release);
        self.failed_step.store(step as u8, Ordering::Release);
        // SAFETY: ends the child without running anything of the parent's (no atexit, no flush).
        unsafe { libc::_exit(127) }
    }
}

/// The child's side, between the clone and the execve. Only raw system calls on the prepared plan.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `&Plan` passed to clone, alive until the parent resumes.
    let plan = unsafe { &*(arg as *const Plan) };
    // SAFETY: every call below is a system call on values prepared by the parent, valid and alive
    // for the duration of the call; nothing allocates or takes a lock.
    unsafe {
        // Default handlers for whatever exemesh catches (its handlers must never run here; exec
        // would reset them anyway), and SIGPIPE, which Rust's runtime ignores, back to default.
        let mut action: libc::sigaction = std::mem::zeroed();
        for signal in 1..=64 {
            if signal == libc::SIGKILL || signal == libc::SIGSTOP {
                continue;
            }
            if libc::sigaction(signal, std::ptr::null(), &mut action) == 0
                && (action.sa_sigaction != libc::SIG_IGN || signal == libc::SIGPIPE)
                && action.sa_sigaction != libc::SIG_DFL
            {
                let mut default: libc::sigaction = std::mem::zeroed();
                default.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(signal, &default, std::ptr::null_mut());
            }
        }
        if libc::setpgid(0, 0) != 0 {
            plan.fail(Step::ProcessGroup);
        }
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            plan.fail(Step::ParentDeathSignal);
        }
        // exemesh may have died before the prctl: then nobody would ever kill this child.
        if libc::getppid() != plan.parent {
            plan.fail(Step::ParentGone);
        }
        for (target, &fd) in plan.stdio.iter().enumerate() {
            let target = target as RawFd;
            let ok = if fd == target {
                // dup2 onto itself keeps close-on-exec: clear it instead.
                libc::fcntl(fd, libc::F_SETFD, 0) == 0
            } else {
                libc::dup2(fd, target) == target
            };
            if !ok {
                plan.fail(Step::Stdio);
            }
        }
        if libc::chdir(plan.cwd.as_ptr()) != 0 {
            plan.fail(Step::WorkingDirectory);
        }
        for (resource, limit) in &plan.rlimits {
            if libc::setrlimit(*resource, limit) != 0 {
                plan.fail(Step::ResourceLimit);
            }
        }
        if let Some((uid, gid)) = plan.run_as {
            // Raw system calls: glibc's wrappers would signal every thread of exemesh. The order
            // (groups, gid, then uid) drops root last.
            let groups = [gid];
            if libc::syscall(libc::SYS_setgroups, 1, groups.as_ptr()) != 0
                || libc::syscall(libc::SYS_setgid, gid) != 0
                || libc::syscall(libc::SYS_setuid, uid) != 0
            {
                plan.fail(Step::User);
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::execve(
            plan.program.as_ptr(),
            plan.argv.as_ptr(),
            plan.envp.as_ptr(),
        );
    }
    plan.fail(Step::Exec)
}

fn c_string(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{:?} contains a NUL byte", s),
        )
    })
}

fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::services::process::{Launch, Started, start};
    use crate::services::sandbox::{ResourceLimits, Sandbox};

    fn launch<'a>(
        program: &'a str,
        args: &'a [String],
        env: &'a [(String, String)],
        sandbox: &'a Sandbox,
    ) -> Launch<'a> {
        Launch {
            program: Path::new(program),
            args,
            cwd: Path::new("/tmp"),
            env,
            sandbox,
        }
    }

    /// Runs `started` to the end, feeding `input`; returns (exit code, stdout).
    async fn finish(mut started: Started, input: &[u8]) -> (Option<i32>, String) {
        let mut stdin = started.child.stdin.take().expect("stdin");
        stdin.write_all(input).await.expect("write stdin");
        drop(stdin);
        let mut out = String::new();
        let mut stdout = started.child.stdout.take().expect("stdout");
        stdout.read_to_string(&mut out).await.expect("read stdout");
        let status = started.child.wait().await.expect("wait");
        (status.code(), out)
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["-c".to_string(), script.to_string()]
    }

    #[tokio::test]
    async fn runs_the_program_with_exactly_its_environment_directory_and_stdio() {
        let env = vec![
            ("A".to_string(), "1".to_string()),
            ("B".to_string(), "x".to_string()),
        ];
        let sandbox = Sandbox::default();
        let args = sh("cat; echo; pwd; env | sort; exit 7");
        let started =
            start(&launch("/bin/sh", &args, &env, &sandbox), &[("B", "2")]).expect("start");
        let (code, out) = finish(started, b"request").await;
        assert_eq!(code, Some(7));
        // `sh` adds PWD (and may add SHLVL/_): check the variables exemesh passed.
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "request");
        assert_eq!(lines[1], "/tmp");
        assert!(lines.contains(&"A=1"), "{out}");
        assert!(lines.contains(&"B=2"), "an extra variable wins: {out}");
        assert!(!lines.contains(&"B=x"), "{out}");
        assert!(!out.contains("PATH="), "nothing inherited: {out}");
    }

    #[tokio::test]
    async fn the_child_starts_with_no_signal_blocked_or_ignored_in_its_own_group() {
        let sandbox = Sandbox::default();
        let args = vec![
            "/proc/self/stat".to_string(),
            "/proc/self/status".to_string(),
        ];
        let started = start(&launch("/bin/cat", &args, &[], &sandbox), &[]).expect("start");
        let pid = started.child.id();
        let (code, out) = finish(started, b"").await;
        assert_eq!(code, Some(0));
        // /proc/self/stat: "pid (comm) state ppid pgrp ..."
        let after_comm = out.split(") ").nth(1).expect("stat line");
        let pgrp: u32 = after_comm
            .split(' ')
            .nth(2)
            .and_then(|f| f.parse().ok())
            .expect("pgrp");
        assert_eq!(pgrp, pid, "its own process group");
        let field = |name: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .unwrap_or_default()
                .to_string()
        };
        // exemesh blocks every signal around the clone: the child must not inherit that mask.
        assert_eq!(field("SigBlk:"), "0000000000000000");
        // Ignored signals are inherited as with any exec, except SIGPIPE, which Rust's runtime
        // ignores for itself.
        let ours = std::fs::read_to_string("/proc/self/status").expect("own status");
        let ours = ours
            .lines()
            .find_map(|l| l.strip_prefix("SigIgn:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .expect("own SigIgn");
        let sigpipe = 1u64 << (libc::SIGPIPE - 1);
        assert_ne!(ours & sigpipe, 0, "the test runs with SIGPIPE ignored");
        assert_eq!(field("SigIgn:"), format!("{:016x}", ours & !sigpipe));
    }

    #[tokio::test]
    async fn resource_limits_apply_before_the_program_runs() {
        let sandbox = Sandbox {
            limits: ResourceLimits {
                open_files: Some(48),
                ..ResourceLimits::default()
            },
            run_as: None,
        };
        let args = sh("ulimit -n");
        let started = start(&launch("/bin/sh", &args, &[], &sandbox), &[]).expect("start");
        let (code, out) = finish(started, b"").await;
        assert_eq!((code, out.trim()), (Some(0), "48"));
    }

    #[tokio::test]
    async fn failures_before_exec_say_which_step_failed() {
        let sandbox = Sandbox::default();
        let missing = start(&launch("/nonexistent/program", &[], &[], &sandbox), &[])
            .expect_err("a missing program");
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
        let mut bad_cwd = launch("/bin/true", &[], &[], &sandbox);
        bad_cwd.cwd = Path::new("/nonexistent/directory");
        let err = start(&bad_cwd, &[]).expect_err("a missing working directory");
        assert!(err.to_string().contains("working directory"), "{err}");
        // The failed children were reaped: none is left for this process to wait for.
        // SAFETY: waitpid with WNOHANG on any child; no out-pointer.
        let left = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
        assert!(left <= 0, "a child was left unreaped: {left}");
    }

    #[tokio::test]
    async fn dropping_a_running_child_kills_and_reaps_it() {
        let sandbox = Sandbox::default();
        let args = vec!["30".to_string()];
        let started = start(&launch("/bin/sleep", &args, &[], &sandbox), &[]).expect("start");
        let pid = started.child.id();
        drop(started);
        // Reaped (a zombie would keep /proc/PID) within a few seconds.
        let proc_dir = format!("/proc/{pid}");
        let mut waited = Duration::ZERO;
        while Path::new(&proc_dir).exists() {
            assert!(waited < Duration::from_secs(10), "{proc_dir} still exists");
            tokio::time::sleep(Duration::from_millis(10)).await;
            waited += Duration::from_millis(10);
        }
    }
}
