//! A `ServerEvent` already encoded, so one event going to many streams is
//! encoded once and shared (a reference-counted buffer) rather than cloned
//! and encoded per recipient.
//!
//! The server stubs ([`crate::pb::chat_service_server`]) stream
//! [`EncodedServerEvent`]s; on the wire they are ordinary `ServerEvent`s, and
//! clients decode them with the generated [`ServerEvent`].

use prost::Message;
use prost::bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::encoding::{DecodeContext, WireType};

use crate::pb::ServerEvent;

/// The protobuf encoding of one `ServerEvent`. Cloning shares the buffer.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EncodedServerEvent(Bytes);

impl EncodedServerEvent {
    pub fn new(event: &ServerEvent) -> Self {
        Self(event.encode_to_vec().into())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The event back, for tests and logs.
    pub fn decode_event(&self) -> Result<ServerEvent, prost::DecodeError> {
        ServerEvent::decode(self.0.clone())
    }
}

impl From<&ServerEvent> for EncodedServerEvent {
    fn from(event: &ServerEvent) -> Self {
        Self::new(event)
    }
}

impl std::fmt::Debug for EncodedServerEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("EncodedServerEvent").field(&self.0.len()).finish()
    }
}

impl Message for EncodedServerEvent {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    /// Decoding keeps each field's bytes as they came, so a decoded event
    /// encodes back to the same bytes. Every `ServerEvent` field is a
    /// message (length-delimited); anything else is skipped, as prost skips
    /// unknown fields.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        if wire_type != WireType::LengthDelimited {
            return prost::encoding::skip_field(wire_type, tag, buf, ctx);
        }
        let mut field = Vec::new();
        prost::encoding::bytes::merge(wire_type, &mut field, buf, ctx)?;
        let mut raw = BytesMut::from(&self.0[..]);
        prost::encoding::bytes::encode(tag, &field, &mut raw);
        self.0 = raw.freeze();
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0 = Bytes::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{self, server_event::Event};

    fn sample() -> ServerEvent {
        ServerEvent {
            event: Some(Event::Message(pb::Message {
                conversation_id: "c".into(),
                seq: 42,
                body: "héllo".into(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn encodes_to_the_same_bytes_as_the_event() {
        let event = sample();
        let encoded = EncodedServerEvent::new(&event);
        assert_eq!(encoded.encode_to_vec(), event.encode_to_vec());
        assert_eq!(encoded.encoded_len(), event.encoded_len());
        // As tonic frames it: length-delimited.
        assert_eq!(encoded.encode_length_delimited_to_vec(), event.encode_length_delimited_to_vec());
        assert_eq!(encoded.decode_event().expect("decode"), event);
    }

    #[test]
    fn decodes_into_the_same_bytes() {
        let event = sample();
        let decoded = EncodedServerEvent::decode(event.encode_to_vec().as_slice()).expect("decode");
        assert_eq!(decoded.as_bytes(), event.encode_to_vec().as_slice());
        assert!(EncodedServerEvent::decode(&[0x0a, 0x05, 0x01][..]).is_err(), "truncated field");
        assert_eq!(EncodedServerEvent::default().encoded_len(), 0);
    }
}
