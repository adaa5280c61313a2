//! The properties exemesh's fuzz targets check, one function per target in `fuzz_targets/`.
//!
//! Each function takes the raw fuzz input and panics exactly when a property is violated, so
//! libFuzzer reports the input as a crash. The file is also compiled into exemesh's own tests with
//! `#[path]` (docs/fuzzing.md), which replay the seed corpus and every saved crash of
//! `fuzz/regressions/` through the very same checks. It therefore depends only on what exemesh's
//! tests can use: exemesh and its dependencies, no libFuzzer.

use std::path::Path;
use std::sync::OnceLock;

use exemesh::mesh::trace_view::span_head::SpanHead;
use exemesh::mesh::trace_view::wire::Fields;
use exemesh::services::json::{from_json, to_json, write_json};
use exemesh::services::manifest::Manifest;
use exemesh::services::transcode::json_to_proto::JsonToProto;
use exemesh::services::worker::frame::parse_inbound;
use prost_reflect::{DynamicMessage, MessageDescriptor};
use protox::file::{File, FileResolver, GoogleFileResolver};

/// `worker_frame`: any bytes on a worker's stdout become a frame or an error for the log.
pub fn worker_frame(line: &[u8]) {
    let _ = parse_inbound(line);
}

/// `manifest`: any UTF-8 text gives a manifest or a list of issues (other bytes are skipped).
///
/// The manifest lies in a directory that does not exist, so relative programs and working
/// directories resolve to nothing and validation reports them like any other issue.
pub fn manifest(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Manifest::parse(Path::new("/nonexistent/fuzz.toml"), text);
    }
}

/// `otlp_span`: any bytes as one span of an OTLP export, read the way `exemesh up`'s receiver reads
/// it (`mesh::trace_view::span_head`): never a panic, and whenever opentelemetry-proto's own
/// decoder takes the bytes as a `Span` whose ids have lengths OTLP allows, the receiver takes them
/// too and reads the same ids, times and error status. (The receiver only reads those fields, so
/// it takes some spans the full decoder refuses, such as a name that is not UTF-8.)
pub fn otlp_span(data: &[u8]) {
    use prost::Message as _;
    let _ = Fields::new(data).count();
    let head = SpanHead::read(data);
    let Ok(span) = opentelemetry_proto::tonic::trace::v1::Span::decode(data) else {
        return;
    };
    let allowed = |id: &[u8], len: usize| id.is_empty() || id.len() == len;
    if !(allowed(&span.trace_id, 16)
        && allowed(&span.span_id, 8)
        && allowed(&span.parent_span_id, 8))
    {
        assert!(head.is_err(), "an id of a length OTLP forbids was taken");
        return;
    }
    let head =
        head.unwrap_or_else(|e| panic!("the receiver refused a span the decoder reads: {e}"));
    let id = |bytes: &[u8]| bytes.iter().fold(0u64, |id, b| id << 8 | u64::from(*b));
    let mut trace_id = [0u8; 16];
    if !span.trace_id.is_empty() {
        trace_id.copy_from_slice(&span.trace_id);
    }
    assert_eq!(head.trace_id, trace_id, "trace id");
    assert_eq!(head.span_id, id(&span.span_id), "span id");
    assert_eq!(
        head.parent_span_id,
        id(&span.parent_span_id),
        "parent span id"
    );
    assert_eq!(head.start, span.start_time_unix_nano, "start");
    assert_eq!(head.end, span.end_time_unix_nano, "end");
    assert_eq!(
        head.error,
        span.status.is_some_and(|s| s.code == 2),
        "error status"
    );
}

/// `json_proto`: the proto3 JSON mapping never panics on what an executable writes, what it
/// accepts survives the trip back, and the replies' fast path agrees with it.
///
/// The first byte picks a type of [`MESSAGES`] (modulo its length); the rest is the JSON text.
/// When the JSON → protobuf transcoder takes the text, `from_json` must accept it too, and the
/// transcoder's bytes must decode to the same message. When `from_json` accepts it, `to_json` and
/// `write_json` must write the same bytes, and `from_json` must parse them to an equal message.
/// "Equal" means the same canonical JSON: proto3 equality (a field without presence that holds its
/// default value counts as unset, so `{"text":""}` and `{}` are one message), map order aside,
/// and NaN equal to itself.
pub fn json_proto(data: &[u8]) {
    let Some((&selector, text)) = data.split_first() else {
        return;
    };
    let descriptors = descriptors();
    let desc = &descriptors[usize::from(selector) % descriptors.len()];
    let mut fast = Vec::new();
    let fast_took = JsonToProto::new(desc).transcode(text, &mut fast);
    let Ok(message) = from_json(desc, text) else {
        assert!(!fast_took, "the fast path took JSON from_json rejects");
        return;
    };
    if fast_took {
        let decoded = DynamicMessage::decode(desc.clone(), fast.as_slice())
            .unwrap_or_else(|e| panic!("the fast path wrote undecodable bytes: {e}"));
        assert_eq!(
            decoded.unknown_fields().count(),
            0,
            "the fast path wrote a field {} does not have",
            desc.full_name()
        );
        assert_eq!(
            canonical(&decoded),
            canonical(&message),
            "the fast path and from_json disagree on {}",
            desc.full_name()
        );
    }
    // Whatever from_json accepts, JSON can say.
    let json = to_json(&message)
        .unwrap_or_else(|e| panic!("from_json accepted what to_json cannot write: {e}"));
    let mut written = Vec::new();
    let _ = write_json(&message, &mut written);
    assert_eq!(
        written,
        json.as_bytes(),
        "write_json and to_json disagree for {}",
        desc.full_name()
    );
    let back = from_json(desc, json.as_bytes()).unwrap_or_else(|e| {
        panic!(
            "to_json wrote {json} for {}, which from_json rejects: {e}",
            desc.full_name()
        )
    });
    assert_eq!(
        canonical(&message),
        canonical(&back),
        "{} changed on the round trip through {json}",
        desc.full_name()
    );
}

/// The message types `json_proto` fuzzes, by the index the first input byte selects. Append new
/// types at the end, so that the seeds in `fuzz/corpus/json_proto/` keep their type.
pub const MESSAGES: &[&str] = &[
    "test.v1.EchoRequest",
    "test.v1.EchoReply",
    "shop.v1.GetProductRequest",
    "shop.v1.ListProductsRequest",
    "shop.v1.Product",
    "shop.v1.GetUserRequest",
    "shop.v1.User",
    "shop.v1.OrderLine",
    "shop.v1.PlaceOrderRequest",
    "shop.v1.GetOrderRequest",
    "shop.v1.Order",
    "shop.v1.ImportSummary",
    "kinds.v1.Everything",
    "google.protobuf.Struct",
    "google.protobuf.Timestamp",
];

/// The contracts, embedded so the fuzz binary needs no source tree: the echo test fixture and the
/// shop example, by the names their manifests import them with.
const PROTOS: &[(&str, &str)] = &[
    (
        "echo.proto",
        include_str!("../../tests/fixtures/echo/echo.proto"),
    ),
    (
        "shop/v1/product.proto",
        include_str!("../../examples/shop/proto/shop/v1/product.proto"),
    ),
    (
        "shop/v1/user.proto",
        include_str!("../../examples/shop/proto/shop/v1/user.proto"),
    ),
    (
        "shop/v1/order.proto",
        include_str!("../../examples/shop/proto/shop/v1/order.proto"),
    ),
    (
        "kinds.proto",
        include_str!("../../tests/fixtures/transcode/kinds.proto"),
    ),
];

struct EmbeddedProtos;

impl FileResolver for EmbeddedProtos {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        match PROTOS.iter().find(|(file, _)| *file == name) {
            Some((file, source)) => File::from_source(file, source),
            None => GoogleFileResolver::new().open_file(name),
        }
    }
}

/// [`MESSAGES`]' descriptors, compiled once per process with protox, as exemesh compiles contracts.
fn descriptors() -> &'static [MessageDescriptor] {
    static DESCRIPTORS: OnceLock<Vec<MessageDescriptor>> = OnceLock::new();
    DESCRIPTORS.get_or_init(|| {
        let mut compiler = protox::Compiler::with_file_resolver(EmbeddedProtos);
        for (file, _) in PROTOS {
            compiler
                .open_file(file)
                .unwrap_or_else(|e| panic!("the embedded {file} compiles: {e}"));
        }
        let pool = compiler.descriptor_pool();
        MESSAGES
            .iter()
            .map(|name| {
                pool.get_message_by_name(name)
                    .unwrap_or_else(|| panic!("{name} is defined by the embedded contracts"))
            })
            .collect()
    })
}

/// A message as its canonical JSON, parsed: equal for equal messages whatever the order of their
/// maps, and with NaN equal to itself.
fn canonical(message: &DynamicMessage) -> serde_json::Value {
    let text = to_json(message).unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("to_json wrote bad JSON: {e}"))
}
