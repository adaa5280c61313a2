//! gRPC status code names (`NOT_FOUND`) to [`tonic::Code`] and back.

use tonic::Code;

/// `grpc-status`, named once: a lookup by `&str` parses the name every time.
pub static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
/// `grpc-message`.
pub static GRPC_MESSAGE: http::HeaderName = http::HeaderName::from_static("grpc-message");

/// The number in the `grpc-status` among `headers` (response headers or trailers), if present and
/// readable.
pub fn status_number(headers: &http::HeaderMap) -> Option<i32> {
    headers.get(&GRPC_STATUS)?.to_str().ok()?.parse().ok()
}

/// Every code with its canonical upper-snake-case name, in numeric order.
const NAMES: [(Code, &str); 17] = [
    (Code::Ok, "OK"),
    (Code::Cancelled, "CANCELLED"),
    (Code::Unknown, "UNKNOWN"),
    (Code::InvalidArgument, "INVALID_ARGUMENT"),
    (Code::DeadlineExceeded, "DEADLINE_EXCEEDED"),
    (Code::NotFound, "NOT_FOUND"),
    (Code::AlreadyExists, "ALREADY_EXISTS"),
    (Code::PermissionDenied, "PERMISSION_DENIED"),
    (Code::ResourceExhausted, "RESOURCE_EXHAUSTED"),
    (Code::FailedPrecondition, "FAILED_PRECONDITION"),
    (Code::Aborted, "ABORTED"),
    (Code::OutOfRange, "OUT_OF_RANGE"),
    (Code::Unimplemented, "UNIMPLEMENTED"),
    (Code::Internal, "INTERNAL"),
    (Code::Unavailable, "UNAVAILABLE"),
    (Code::DataLoss, "DATA_LOSS"),
    (Code::Unauthenticated, "UNAUTHENTICATED"),
];

/// Parses a code given by name (any case, `CANCELED` accepted) or by number. `None` if unknown.
pub fn parse_code(text: &str) -> Option<Code> {
    let text = text.trim();
    if let Ok(n) = text.parse::<i32>() {
        return (0..=16).contains(&n).then(|| Code::from_i32(n));
    }
    let upper = text.to_ascii_uppercase().replace(['-', ' '], "_");
    if upper == "CANCELED" {
        return Some(Code::Cancelled);
    }
    NAMES
        .iter()
        .find(|(_, name)| *name == upper)
        .map(|(code, _)| *code)
}

/// The canonical name of a code, e.g. `NOT_FOUND`.
pub fn code_name(code: Code) -> &'static str {
    NAMES[code as usize].1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_round_trip() {
        for (i, (code, name)) in NAMES.iter().enumerate() {
            assert_eq!(*code as usize, i);
            assert_eq!(parse_code(name), Some(*code));
            assert_eq!(parse_code(&i.to_string()), Some(*code));
            assert_eq!(code_name(*code), *name);
        }
        assert_eq!(parse_code("not_found"), Some(Code::NotFound));
        assert_eq!(parse_code("Canceled"), Some(Code::Cancelled));
        assert_eq!(parse_code("17"), None);
        assert_eq!(parse_code("NOPE"), None);
    }
}
