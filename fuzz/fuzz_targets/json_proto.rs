//! The proto3 JSON mapping (`exemesh::services::json`) on the echo and shop contracts: never a
//! panic, and accepted JSON survives the round trip (the property is `exemesh_fuzz::json_proto`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| exemesh_fuzz::json_proto(data));
