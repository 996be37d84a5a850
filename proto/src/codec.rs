//! The servers' gRPC codec: prost's, with smaller starting buffers.
//!
//! tonic gives every call a decode buffer and an encode buffer for its
//! whole life, 8 KiB each by default. On a long-lived chat stream that sits
//! idle most of the time, those two buffers were most of what a stream cost
//! its server beyond its connection. Starting them at [`STREAM_BUFFER`]
//! keeps an idle stream small; they grow as a burst needs (up to tonic's
//! yield threshold before a chunk goes out) and the bench's ceiling
//! measures what that costs under load.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::ProstCodec;

/// The starting size of each call's decode and encode buffer.
pub const STREAM_BUFFER: usize = 1024;

/// tonic's default: an encode buffer past this size goes out as a chunk.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// [`ProstCodec`] with [`STREAM_BUFFER`]-sized starting buffers.
#[derive(Debug, Clone)]
pub struct StreamCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for StreamCodec<T, U> {
    fn default() -> Self {
        Self { _types: PhantomData }
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(STREAM_BUFFER, YIELD_THRESHOLD)
}

impl<T, U> Codec for StreamCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = <ProstCodec<T, U> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
