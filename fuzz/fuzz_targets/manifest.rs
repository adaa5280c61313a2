//! Manifest text through `exemesh::services::manifest::Manifest::parse`: never a panic (the property
//! is `exemesh_fuzz::manifest`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| exemesh_fuzz::manifest(data));
