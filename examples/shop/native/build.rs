//! Generates the shop contracts' Rust code with tonic-prost-build, parsed by protox (no protoc).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "../proto/shop/v1/user.proto",
        "../proto/shop/v1/product.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(protos, ["../proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("shop_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
