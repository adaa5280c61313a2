//! Compiles the toolkit's own contracts in `proto/` with tonic-prost-build.
//!
//! protox (a pure-Rust protobuf compiler) parses the files, so no `protoc` binary is needed anywhere.
//! The encoded descriptor set is written next to the generated code so that servers can expose the
//! contracts through reflection and tests can check the JSON frames against them.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/exemesh/v1/registry.proto",
        "proto/exemesh/v1/traces.proto",
        "proto/exemesh/v1/worker.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("exemesh_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;

    // The etcd API subset for the etcd discovery backend: clients only, not part of exemesh's own
    // contracts (so not in the descriptor set served by reflection).
    let etcd = ["proto/etcd/rpc.proto"];
    for proto in etcd {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(protox::compile(etcd, ["proto"])?)?;
    Ok(())
}
