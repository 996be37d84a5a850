//! Compiles `chat.proto` with the pure-Rust `protox` compiler (no system
//! `protoc` needed) and generates prost types and tonic stubs from it. The
//! encoded descriptor set is kept for gRPC server reflection.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=chat.proto");
    let descriptors = protox::compile(["chat.proto"], ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("chat_descriptor.bin"), prost::Message::encode_to_vec(&descriptors))?;
    // `build_transport(false)`: the RPC is called `Connect`, which would clash
    // with the generated `ChatServiceClient::connect` constructor; clients
    // build a `Channel` and call `ChatServiceClient::new` instead.
    tonic_prost_build::configure().build_transport(false).compile_fds(descriptors)?;
    Ok(())
}
