//! Compiles `kv/v1/*.proto` with protox (pure Rust: no system `protoc` needed) and writes the
//! encoded descriptor set beside the generated code, for gRPC server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["kv/v1/kv.proto", "kv/v1/peer.proto", "kv/v1/admin.proto"];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("kv_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .bytes(".kv.v1")
        .compile_fds(fds)?;
    Ok(())
}
