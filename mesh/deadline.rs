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
    let (value, unit) = timeout_parts(timeout);
    format!("{value}{}", char::from(unit))
}

/// The `grpc-timeout` header value of `timeout`, as [`format_grpc_timeout`] writes it, without the
/// formatting machinery and its `String` (the mesh channel sets it on every call).
pub fn grpc_timeout_value(timeout: Duration) -> http::HeaderValue {
    let (value, unit) = timeout_parts(timeout);
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(value).as_bytes();
    // At most 8 digits and the unit.
    let mut text = [0u8; 9];
    text[..digits.len()].copy_from_slice(digits);
    text[digits.len()] = unit;
    match http::HeaderValue::from_bytes(&text[..=digits.len()]) {
        Ok(header) => header,
        // Digits and a letter are always a valid header value.
        Err(_) => http::HeaderValue::from_static("99999999H"),
    }
}

/// The value (at most 8 digits) and unit of a `grpc-timeout`: the finest unit that fits, rounded up
/// so that a propagated deadline is never earlier than the real one.
fn timeout_parts(timeout: Duration) -> (u64, u8) {
    const MAX: u128 = 99_999_999;
    let nanos = timeout.as_nanos();
    let units: [(u128, u8); 6] = [
        (1, b'n'),
        (1_000, b'u'),
        (1_000_000, b'm'),
        (1_000_000_000, b'S'),
        (60_000_000_000, b'M'),
        (3_600_000_000_000, b'H'),
    ];
    for (scale, unit) in units {
        let value = nanos.div_ceil(scale);
        if value <= MAX {
            return (value as u64, unit);
        }
    }
    (MAX as u64, b'H')
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

    proptest::proptest! {
        #[test]
        fn the_header_value_is_the_formatted_text(nanos in proptest::prelude::any::<u64>(), secs in 0u64..u64::MAX / 2) {
            for d in [Duration::from_nanos(nanos), Duration::from_secs(secs), Duration::ZERO] {
                let (value, text) = (grpc_timeout_value(d), format_grpc_timeout(d));
                proptest::prop_assert_eq!(value.as_bytes(), text.as_bytes());
            }
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
