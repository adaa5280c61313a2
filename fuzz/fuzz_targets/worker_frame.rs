//! Lines a worker writes on stdout, through `exemesh::services::worker::frame::parse_inbound`:
//! never a panic (the property is `exemesh_fuzz::worker_frame`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| exemesh_fuzz::worker_frame(data));
