//! Compiles the etcd API subset of `proto/etcd/rpc.proto` (pure Rust: protox, no protoc).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/etcd/rpc.proto");
    let fds = protox::compile(["etcd/rpc.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .bytes(".etcdserverpb")
        .compile_fds(fds)?;
    Ok(())
}
