//! The cost of turning an executable's JSON reply into protobuf bytes: the general path
//! (`from_json` into a `DynamicMessage`, then its encoding) against the transcoder exemesh uses
//! first (`services/transcode`), per reply, in the same process and alternating rounds.
//!
//! `cargo bench --bench transcode` (release build; a few seconds). docs/benchmarks.md records its
//! output. Every reply is checked to take the fast path, so the comparison is of the two paths.

mod support;

use std::hint::black_box;
use std::path::Path;

use exemesh::services::contract::compile;
use exemesh::services::json::from_json;
use exemesh::services::transcode::json_to_proto::JsonToProto;
use prost::Message as _;
use prost_reflect::MessageDescriptor;
use support::{median, ns_per_call};

const ROUNDS: usize = 7;
const CALLS: usize = 20_000;

/// `(label, message type, JSON reply)`: replies as the example's executables write them.
const REPLIES: &[(&str, &str, &str)] = &[
    (
        "echo reply (bench worker)",
        "test.v1.EchoReply",
        r#"{"text": "bench", "big": "0", "index": 4242, "timeoutMs": "19998", "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "env": {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TEST_MARKER": "bench"}, "argv": ["test.v1.Echo/Unary", "1f", ""]}"#,
    ),
    (
        "shop Order (3 lines)",
        "shop.v1.Order",
        r#"{"id": "o-3f2a9c0b1d7e", "userId": "u1", "lines": [{"productId": "p1", "quantity": 2}, {"productId": "p2", "quantity": 1}, {"productId": "p3", "quantity": 5}], "totalCents": "12345", "status": "ORDER_STATUS_PLACED"}"#,
    ),
    (
        "small text reply",
        "test.v1.EchoReply",
        r#"{"text": "bench"}"#,
    ),
];

fn descriptor(name: &str) -> MessageDescriptor {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let echo = root.join("tests/fixtures/echo");
    let shop = root.join("examples/shop/proto");
    let (pool, _) = compile(
        &[echo.join("echo.proto"), shop.join("shop/v1/order.proto")],
        &[echo, shop],
    )
    .expect("the fixtures compile");
    pool.get_message_by_name(name).expect("the type exists")
}

fn main() {
    println!("| reply | bytes | general path, ns | transcoder, ns | general / transcoder |");
    println!("|---|---:|---:|---:|---:|");
    for (label, type_name, text) in REPLIES {
        let desc = descriptor(type_name);
        let fast = JsonToProto::new(&desc);
        let mut out = Vec::new();
        assert!(
            fast.transcode(text.as_bytes(), &mut out),
            "{label} takes the fast path"
        );
        let (mut general, mut transcoder) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            general.push(ns_per_call(CALLS, || {
                let message = from_json(&desc, black_box(text.as_bytes())).expect("valid");
                message.encode_to_vec().len()
            }));
            transcoder.push(ns_per_call(CALLS, || {
                let mut out = Vec::with_capacity(text.len());
                fast.transcode(black_box(text.as_bytes()), &mut out);
                out.len()
            }));
        }
        let (general, transcoder) = (median(general), median(transcoder));
        println!(
            "| {label} | {} | {general:.0} | {transcoder:.0} | {:.2}x |",
            text.len(),
            general / transcoder
        );
    }
}
