//! One span of an OTLP export, as `exemesh up`'s receiver reads it
//! (`exemesh::mesh::trace_view::span_head`): never a panic, and the same fields as
//! opentelemetry-proto's decoder (the property is `exemesh_fuzz::otlp_span`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| exemesh_fuzz::otlp_span(data));
