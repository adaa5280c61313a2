//! The `grpc-timeout` request header: how gRPC carries a call's deadline between processes.
//!
//! Format (gRPC over HTTP/2 spec): at most 8 ASCII digits followed by a unit, `H`, `M`, `S`, `m`
//! (milliseconds), `u` (microseconds) or `n` (nanoseconds).

use std::time::Duration;

/// The metadata key carrying the timeout.
pub const GRPC_TIMEOUT_HEADER: &str = "grpc-timeout";

/// Parses a `grpc-timeout` value; `None` when it is malformed.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Formats a duration as a `grpc-timeout` value, choosing the finest unit that fits in 8 digits.
pub fn format_grpc_timeout(timeout: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let nanos = timeout.as_nanos();
    let units: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    for (scale, unit) in units {
        // Round up so a propagated deadline is never earlier than the real one by truncation.
        let value = nanos.div_ceil(scale);
        if value <= MAX {
            return format!("{value}{unit}");
        }
    }
    format!("{MAX}H")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in ["", "S", "5", "5s", "123456789S", "-5S", "5 S", "1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn formats_round_trip_without_shortening() {
        for d in [
            Duration::from_nanos(1),
            Duration::from_micros(1500),
            Duration::from_millis(30_000),
            Duration::from_secs(100_000),
            Duration::from_secs(86_400 * 365),
        ] {
            let text = format_grpc_timeout(d);
            let back = parse_grpc_timeout(&text).expect("formatted value parses");
            assert!(back >= d, "{d:?} -> {text} -> {back:?}");
        }
    }
}

tokio::task_local! {
    /// The deadline of the inbound call the current task works for, if any.
    static CALL_DEADLINE: tokio::time::Instant;
}

/// Runs `future` with `deadline` as the inbound call's deadline: every outbound call made through a
/// mesh channel inside it is capped by what remains.
pub async fn with_call_deadline<F: std::future::Future>(
    deadline: tokio::time::Instant,
    future: F,
) -> F::Output {
    CALL_DEADLINE.scope(deadline, future).await
}

/// The inbound call's deadline, when the current task runs inside [`with_call_deadline`].
pub fn call_deadline() -> Option<tokio::time::Instant> {
    CALL_DEADLINE.try_with(|d| *d).ok()
}
