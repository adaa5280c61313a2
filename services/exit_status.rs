//! Spawn mode: how a process's exit becomes a gRPC status (the table in docs/manifest.md).

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use tonic::Code;

/// The status for an exit code, after the manifest's own `exit_codes`; `Ok` only for 0.
pub fn code_for_exit(code: i32, overrides: &BTreeMap<i32, Code>) -> Code {
    if let Some(code) = overrides.get(&code) {
        return *code;
    }
    match code {
        0 => Code::Ok,
        2 | 64 | 65 => Code::InvalidArgument,
        66..=68 => Code::NotFound,
        69 | 75 => Code::Unavailable,
        70..=74 | 76 => Code::Internal,
        77 => Code::PermissionDenied,
        78 => Code::FailedPrecondition,
        101..=116 => Code::from_i32(code - 100),
        _ => Code::Unknown,
    }
}

/// The status and a description for a finished process.
pub fn describe_exit(status: ExitStatus, overrides: &BTreeMap<i32, Code>) -> (Code, String) {
    if let Some(code) = status.code() {
        return (code_for_exit(code, overrides), format!("exit code {code}"));
    }
    let signal = status.signal().unwrap_or(0);
    (
        Code::Internal,
        format!("killed by signal {signal} ({})", signal_name(signal)),
    )
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        _ => "signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_documented_table() {
        let none = BTreeMap::new();
        let table = [
            (0, Code::Ok),
            (1, Code::Unknown),
            (2, Code::InvalidArgument),
            (64, Code::InvalidArgument),
            (65, Code::InvalidArgument),
            (66, Code::NotFound),
            (67, Code::NotFound),
            (68, Code::NotFound),
            (69, Code::Unavailable),
            (70, Code::Internal),
            (74, Code::Internal),
            (75, Code::Unavailable),
            (76, Code::Internal),
            (77, Code::PermissionDenied),
            (78, Code::FailedPrecondition),
            (101, Code::Cancelled),
            (105, Code::NotFound),
            (116, Code::Unauthenticated),
            (117, Code::Unknown),
            (3, Code::Unknown),
            (255, Code::Unknown),
        ];
        for (exit, code) in table {
            assert_eq!(code_for_exit(exit, &none), code, "exit {exit}");
        }
    }

    #[test]
    fn manifest_overrides_win() {
        let overrides = BTreeMap::from([(3, Code::NotFound), (66, Code::Aborted)]);
        assert_eq!(code_for_exit(3, &overrides), Code::NotFound);
        assert_eq!(code_for_exit(66, &overrides), Code::Aborted);
    }
}
