//! The proto3 JSON mapping (`exemesh::services::json`) and the reply transcoder
//! (`exemesh::services::transcode`) on the echo and shop contracts and the transcoder's fixture: never
//! a panic, accepted JSON survives the round trip, and the transcoder agrees with the general path
//! whenever it answers (the property is `exemesh_fuzz::json_proto`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| exemesh_fuzz::json_proto(data));
