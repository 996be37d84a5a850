//! The contract shared by every part of the platform: the `chat.v1` gRPC API
//! (generated from `chat.proto`), the versioned event [`envelope`] that
//! gateways and functions exchange over SNS/SQS, and the development
//! [`token`] format.
//!
//! Protobuf types stay at the edges (the gateway's service layer and clients);
//! the bus carries [`envelope::Envelope`], a serde type with its own version.

pub mod encoded;
pub mod envelope;
pub mod external;
pub mod token;

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
