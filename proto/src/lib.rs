//! The public API: the `chat.v1` gRPC contract (generated from
//! `chat.proto`), the bearer [`token`] format, and how a gRPC server accepts
//! connections ([`transport`]). Clients and the gateway's edge use it; the
//! Lambda functions never do (the bus carries `chat_core::envelope`, a serde
//! type with its own version).

pub mod codec;
pub mod encoded;
pub mod token;
pub mod transport;

/// Generated prost types and tonic stubs for `chat.v1`.
#[allow(unreachable_pub, missing_debug_implementations, clippy::all)]
pub mod pb {
    tonic::include_proto!("chat.v1");

    /// The server stubs, streaming events encoded once for all recipients
    /// ([`crate::encoded::EncodedServerEvent`]).
    pub use self::server::{chat_service_server, echo_service_server};
    mod server {
        include!(concat!(env!("OUT_DIR"), "/server/chat.v1.rs"));
    }
}

/// The encoded `FileDescriptorSet` of `chat.proto`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/chat_descriptor.bin"));
