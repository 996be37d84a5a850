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

    mod props {
        use super::*;
        use proptest::prelude::*;
        use proptest::sample::Index;

        /// Any text, kept short: edge cases are in the characters, not the length.
        fn text() -> impl Strategy<Value = String> {
            prop::collection::vec(any::<char>(), 0..24).prop_map(String::from_iter)
        }

        fn message() -> impl Strategy<Value = pb::Message> {
            (text(), text(), any::<u64>(), text(), any::<i64>()).prop_map(
                |(message_id, conversation_id, seq, body, sent_at_ms)| pb::Message {
                    message_id,
                    conversation_id,
                    seq,
                    body,
                    sent_at_ms,
                    ..Default::default()
                },
            )
        }

        fn event() -> impl Strategy<Value = ServerEvent> {
            let event = prop_oneof![
                message().prop_map(Event::Message),
                (text(), text(), any::<bool>()).prop_map(|(conversation_id, user_id, typing)| {
                    Event::Typing(pb::Typing { conversation_id, user_id, typing })
                }),
                (text(), any::<i32>(), any::<u64>(), any::<i64>()).prop_map(|(user_id, status, up_to_seq, at_ms)| {
                    Event::Receipt(pb::Receipt { user_id, status, up_to_seq, at_ms, ..Default::default() })
                }),
                (text(), any::<i32>(), text()).prop_map(|(request_id, code, message)| {
                    Event::Error(pb::ErrorEvent { request_id, code, message, ..Default::default() })
                }),
                (any::<i32>(), any::<u32>(), prop::collection::vec((text(), any::<u64>()), 0..4)).prop_map(
                    |(reason, retry_after_ms, resume)| {
                        Event::Disconnect(pb::Disconnect {
                            reason,
                            detail: String::new(),
                            retry_after_ms,
                            resume: resume
                                .into_iter()
                                .map(|(conversation_id, last_seq)| pb::ResumePoint { conversation_id, last_seq })
                                .collect(),
                        })
                    }
                ),
            ];
            prop::option::weighted(0.95, event).prop_map(|event| ServerEvent { event })
        }

        /// Bytes with a few edits: set, deleted, inserted or cut.
        fn mutated(bytes: Vec<u8>, edits: &[(u8, Index, Vec<u8>)]) -> Vec<u8> {
            let mut bytes = bytes;
            for (kind, at, data) in edits {
                let at = at.index(bytes.len() + 1);
                match kind % 4 {
                    0 if at < bytes.len() => bytes[at] = data.first().copied().unwrap_or(0),
                    1 => {
                        let end = (at + data.len()).min(bytes.len());
                        bytes.drain(at..end);
                    }
                    2 => drop(bytes.splice(at..at, data.iter().copied())),
                    _ => bytes.truncate(at),
                }
            }
            bytes
        }

        fn edits() -> impl Strategy<Value = Vec<(u8, Index, Vec<u8>)>> {
            prop::collection::vec((any::<u8>(), any::<Index>(), prop::collection::vec(any::<u8>(), 1..6)), 1..4)
        }

        /// Bytes a client or test decodes: read as they came, and read to
        /// the same event as `ServerEvent` reads them whenever it can.
        fn decodes_like_the_event(bytes: &[u8]) -> Result<(), TestCaseError> {
            let encoded = EncodedServerEvent::decode(bytes);
            if let Ok(event) = ServerEvent::decode(bytes) {
                let encoded = encoded.map_err(|e| TestCaseError::fail(format!("ServerEvent reads it: {e}")))?;
                prop_assert_eq!(encoded.decode_event().ok(), Some(event));
            }
            if let Ok(encoded) = EncodedServerEvent::decode(bytes) {
                let again =
                    EncodedServerEvent::decode(encoded.as_bytes()).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(again.as_bytes(), encoded.as_bytes());
            }
            Ok(())
        }

        proptest! {
            #[test]
            fn events_round_trip(event in event()) {
                let encoded = EncodedServerEvent::new(&event);
                let bytes = event.encode_to_vec();
                prop_assert_eq!(encoded.as_bytes(), bytes.as_slice());
                prop_assert_eq!(encoded.encoded_len(), event.encoded_len());
                prop_assert_eq!(encoded.decode_event().ok(), Some(event.clone()));
                let decoded = EncodedServerEvent::decode(encoded.as_bytes()).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(decoded, encoded);
            }

            #[test]
            fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
                decodes_like_the_event(&bytes)?;
            }

            #[test]
            fn mutated_events_never_panic(event in event(), edits in edits()) {
                decodes_like_the_event(&mutated(event.encode_to_vec(), &edits))?;
            }
        }
    }
}
