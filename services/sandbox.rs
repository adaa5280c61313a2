//! What an executable may use: resource limits (`setrlimit`), an optional user to run as, and the
//! checks made on its program before anything is started.
//!
//! The limits and the user switch are applied in the forked child just before `exec`, so they bind
//! the program and everything it starts, never exemesh itself.

use std::ffi::CString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

/// Resource limits for one method's (or one pool's) processes; `None` leaves the inherited limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResourceLimits {
    /// CPU time in seconds (`RLIMIT_CPU`): the kernel sends SIGXCPU, then SIGKILL.
    pub cpu: Option<Duration>,
    /// Address space in bytes (`RLIMIT_AS`): allocations beyond it fail.
    pub address_space: Option<u64>,
    /// Open file descriptors (`RLIMIT_NOFILE`).
    pub open_files: Option<u64>,
    /// Processes of the user (`RLIMIT_NPROC`; not enforced for root).
    pub processes: Option<u64>,
}

/// A user to run executables as (exemesh must be root to switch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// The user's name, as written in the manifest.
    pub name: String,
    /// Its uid.
    pub uid: libc::uid_t,
    /// Its primary gid.
    pub gid: libc::gid_t,
}

/// Everything applied to a child before `exec`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sandbox {
    /// Resource limits.
    pub limits: ResourceLimits,
    /// The user to switch to, if any.
    pub run_as: Option<RunAs>,
}

impl Sandbox {
    /// The `(resource, value)` pairs to set, computed before the child starts (no allocation in it).
    pub fn rlimits(&self) -> Vec<(libc::__rlimit_resource_t, libc::rlim_t)> {
        let l = &self.limits;
        [
            (libc::RLIMIT_CPU, l.cpu.map(|d| d.as_secs().max(1))),
            (libc::RLIMIT_AS, l.address_space),
            (libc::RLIMIT_NOFILE, l.open_files),
            (libc::RLIMIT_NPROC, l.processes),
        ]
        .into_iter()
        .filter_map(|(resource, value)| value.map(|v| (resource, v as libc::rlim_t)))
        .collect()
    }
}

/// Looks up a user by name; the error says why it cannot be used.
pub fn lookup_user(name: &str) -> Result<RunAs, String> {
    let c_name = CString::new(name).map_err(|_| format!("user {name:?} contains a NUL byte"))?;
    // SAFETY: `passwd` is plain data (integers and pointers); all-zero is a valid value.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and `buf` is as long as we say.
    let rc = unsafe {
        libc::getpwnam_r(
            c_name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return Err(format!("no user named {name:?} on this machine"));
    }
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 && pwd.pw_uid != euid {
        return Err(format!(
            "running as user {name:?} needs exemesh to run as root (it runs as uid {euid})"
        ));
    }
    Ok(RunAs {
        name: name.to_string(),
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
    })
}

/// Refuses a program that someone other than its owner could replace: the file itself, or any
/// directory above it, is writable by everybody (a sticky directory such as `/tmp` is fine for the
/// directories: others cannot rename or delete what they do not own there).
pub fn check_program_path(program: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(program)
        .map_err(|e| format!("cannot inspect {}: {e}", program.display()))?;
    if meta.permissions().mode() & 0o002 != 0 {
        return Err(format!(
            "{} is world-writable: anyone could replace what exemesh runs (chmod o-w it)",
            program.display()
        ));
    }
    let mut dir = program.parent();
    while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(meta) = std::fs::metadata(d) {
            let mode = meta.mode();
            if mode & 0o002 != 0 && mode & 0o1000 == 0 {
                return Err(format!(
                    "{} is in {}, which is world-writable: anyone could replace the program (chmod o-w it)",
                    program.display(),
                    d.display()
                ));
            }
        }
        dir = d.parent();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn world_writable_programs_and_directories_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let program = dir.path().join("tool");
        std::fs::write(&program, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert_eq!(check_program_path(&program), Ok(()));

        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o757)).expect("chmod");
        let error = check_program_path(&program).expect_err("world-writable file");
        assert!(error.contains("world-writable"), "{error}");

        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
        let error = check_program_path(&program).expect_err("world-writable directory");
        assert!(error.contains("which is world-writable"), "{error}");

        // Sticky, like /tmp: fine.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777))
            .expect("chmod");
        assert_eq!(check_program_path(&program), Ok(()));
    }

    #[test]
    fn limits_become_rlimit_pairs() {
        let sandbox = Sandbox {
            limits: ResourceLimits {
                cpu: Some(Duration::from_millis(1500)),
                open_files: Some(64),
                ..ResourceLimits::default()
            },
            run_as: None,
        };
        assert_eq!(
            sandbox.rlimits(),
            vec![(libc::RLIMIT_CPU, 1), (libc::RLIMIT_NOFILE, 64)]
        );
    }

    #[test]
    fn unknown_users_are_named() {
        let error = lookup_user("no-such-user-exemesh").expect_err("unknown");
        assert!(error.contains("no-such-user-exemesh"), "{error}");
    }
}
