//! Compiles `chat.proto` with the pure-Rust `protox` compiler (no system
//! `protoc` needed) and generates prost types and tonic stubs from it. The
//! encoded descriptor set is kept for gRPC server reflection.
//!
//! Two passes: the messages and the client, then the server stubs alone with
//! `ServerEvent` mapped to [`EncodedServerEvent`](crate::encoded), so a
//! server hands tonic events it encoded once for all their recipients, and
//! with [`StreamCodec`](crate::codec)'s smaller per-call buffers.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=chat.proto");
    let descriptors = protox::compile(["chat.proto"], ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("chat_descriptor.bin"), prost::Message::encode_to_vec(&descriptors))?;
    // `build_transport(false)`: the RPC is called `Connect`, which would clash
    // with the generated `ChatServiceClient::connect` constructor; clients
    // build a `Channel` and call `ChatServiceClient::new` instead.
    tonic_prost_build::configure().build_transport(false).build_server(false).compile_fds(descriptors.clone())?;
    let server_dir = out_dir.join("server");
    std::fs::create_dir_all(&server_dir)?;
    tonic_prost_build::configure()
        .build_transport(false)
        .build_client(false)
        .extern_path(".chat.v1", "crate::pb")
        .extern_path(".chat.v1.ServerEvent", "crate::encoded::EncodedServerEvent")
        .codec_path("crate::codec::StreamCodec")
        .out_dir(server_dir)
        .compile_fds(descriptors)?;
    Ok(())
}
