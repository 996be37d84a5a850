//! The event envelope: what gateways and functions publish to the bus and
//! read back from their queues.
//!
//! The body of each SNS message is one [`Envelope`] as JSON. Routing facts are
//! duplicated into message attributes ([`Envelope::attributes`]) so SNS filter
//! policies can route without parsing bodies. The format is versioned by
//! [`ENVELOPE_VERSION`]; a reader rejects versions it does not know instead
//! of guessing.

use serde::{Deserialize, Serialize};

/// The version written by this code and the only one it reads.
pub const ENVELOPE_VERSION: u32 = 1;

/// Characters of a message body kept as its conversation's "last message"
/// preview: written by `persist`, mirrored by the gateway's memory store.
pub const PREVIEW_CHARS: usize = 120;

/// The preview of a message body.
pub fn preview(body: &str) -> String {
    body.chars().take(PREVIEW_CHARS).collect()
}

/// Message attribute names set on published events.
pub mod attr {
    pub const KIND: &str = "kind";
    pub const CONVERSATION_ID: &str = "conversation_id";
    pub const ORIGIN: &str = "origin";
    /// `String.Array` of the external channels an event must reach (absent
    /// when none): SNS filter policies route on it to the per-channel
    /// connector queues.
    pub const CHANNELS: &str = "channels";
    /// The W3C trace context of the span that published the event.
    pub const TRACEPARENT: &str = "traceparent";
}

/// One message attribute of a published event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttributeValue {
    String(String),
    /// Published with data type `String.Array`, the value a JSON array.
    StringArray(Vec<String>),
}

impl AttributeValue {
    /// The SNS data type.
    pub fn data_type(&self) -> &'static str {
        match self {
            AttributeValue::String(_) => "String",
            AttributeValue::StringArray(_) => "String.Array",
        }
    }

    /// The SNS string value.
    pub fn string_value(&self) -> String {
        match self {
            AttributeValue::String(s) => s.clone(),
            AttributeValue::StringArray(values) => {
                serde_json::to_string(values).unwrap_or_else(|e| unreachable!("strings encode: {e}"))
            }
        }
    }
}

/// One event on the bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Format version, [`ENVELOPE_VERSION`].
    pub v: u32,
    /// Unique per event; consumers deduplicate on it. For a message it is the
    /// `message_id`, so a republished message is the same event.
    pub event_id: String,
    pub conversation_id: String,
    /// The instance id of the gateway (or function) that published it.
    pub origin: String,
    /// Publication time, milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// The conversation's membership version the event was published
    /// under: a message's when its seq was taken, a removal's after it (see
    /// `store::Removal`). 0 (absent) for events that need no such order.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub members_version: u64,
    /// The W3C `traceparent` of the span that published it, when traces
    /// are on: consumers continue the trace from it. Also a message
    /// attribute (`traceparent`), for consumers that do not read bodies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
    #[serde(flatten)]
    pub event: Event,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// What happened. Serialised with a `kind` tag next to the envelope fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    Message(MessageEvent),
    MemberJoined {
        user_id: String,
    },
    MemberLeft {
        user_id: String,
    },
    /// `user_id` was removed by `by`; with `banned` they are kept out.
    MemberRemoved {
        user_id: String,
        by: String,
        banned: bool,
    },
    /// `user_id` now has `role` (`owner`, `admin`, `member`), set by `by`.
    RoleChanged {
        user_id: String,
        role: String,
        by: String,
    },
    Presence {
        user_id: String,
        online: bool,
    },
    Typing {
        user_id: String,
        typing: bool,
    },
    Receipt(ReceiptEvent),
    Fallback(FallbackEvent),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageEvent {
    pub message_id: String,
    pub seq: u64,
    pub sender: String,
    pub body: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_message_id: String,
    /// The conversation's external members when the message was accepted
    /// (the sender excluded): the connector delivers to them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_recipients: Vec<String>,
}

/// How far a message got with a recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptStatus {
    /// Reached a device (or channel) of the recipient.
    Delivered,
    /// Seen by the recipient.
    Read,
    /// Could not be delivered to the recipient; terminal for that message.
    Failed,
}

impl ReceiptStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptStatus::Delivered => "delivered",
            ReceiptStatus::Read => "read",
            ReceiptStatus::Failed => "failed",
        }
    }
}

/// A recipient's receipt. DELIVERED and READ are cumulative: every message
/// of the conversation up to `up_to_seq` (not sent by `user_id`) has that
/// status for `user_id`. FAILED names one message (`up_to_seq` is its seq).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptEvent {
    pub user_id: String,
    pub status: ReceiptStatus,
    pub up_to_seq: u64,
    /// The message the receipt was reported for, when known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message_id: String,
    /// Why delivery failed (FAILED only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// The external channel that reported it, when one did.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub via: String,
    /// Recorded in the store already, by whoever published it (a gateway
    /// records a READ before announcing it): `persist` leaves it alone
    /// rather than pay a write to find the watermark already there.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recorded: bool,
}

/// A message an internal member did not acknowledge in time, to be
/// delivered to them through their linked external identity `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FallbackEvent {
    pub user_id: String,
    pub to: String,
    pub message: MessageEvent,
}

impl Event {
    /// The value of the `kind` message attribute.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Message(_) => "message",
            Event::MemberJoined { .. } => "member_joined",
            Event::MemberLeft { .. } => "member_left",
            Event::MemberRemoved { .. } => "member_removed",
            Event::RoleChanged { .. } => "role_changed",
            Event::Presence { .. } => "presence",
            Event::Typing { .. } => "typing",
            Event::Receipt(_) => "receipt",
            Event::Fallback(_) => "fallback",
        }
    }

    /// The external channels this event must reach, sorted and unique.
    pub fn channels(&self) -> Vec<String> {
        let targets: Vec<&str> = match self {
            Event::Message(m) => m.external_recipients.iter().map(String::as_str).collect(),
            Event::Fallback(f) => vec![f.to.as_str()],
            _ => Vec::new(),
        };
        let channels: std::collections::BTreeSet<String> = targets
            .into_iter()
            .filter_map(|id| crate::external::ExternalId::parse(id).ok().flatten())
            .map(|id| id.channel.as_str().to_owned())
            .collect();
        channels.into_iter().collect()
    }
}

/// Why a bus payload could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("envelope is not valid JSON of the expected shape: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("envelope version {0} is not supported (this build reads version {ENVELOPE_VERSION})")]
    UnsupportedVersion(u32),
}

impl Envelope {
    pub fn new(event_id: String, conversation_id: String, origin: String, at_ms: i64, event: Event) -> Self {
        Self { v: ENVELOPE_VERSION, event_id, conversation_id, origin, at_ms, members_version: 0, trace: None, event }
    }

    /// The same event carrying trace context (`None`: traces are off).
    pub fn traced(mut self, traceparent: Option<String>) -> Self {
        self.trace = traceparent;
        self
    }

    /// The same event under membership version `version`.
    pub fn under_members_version(mut self, version: u64) -> Self {
        self.members_version = version;
        self
    }

    /// The JSON body published to the bus.
    pub fn encode(&self) -> String {
        // Serialising this type cannot fail: every field is a string, number
        // or bool, and maps have string keys.
        serde_json::to_string(self).unwrap_or_else(|e| unreachable!("envelope encodes: {e}"))
    }

    pub fn decode(body: &str) -> Result<Self, DecodeError> {
        #[derive(Deserialize)]
        struct Version {
            v: u32,
        }
        let Version { v } = serde_json::from_str(body)?;
        if v != ENVELOPE_VERSION {
            return Err(DecodeError::UnsupportedVersion(v));
        }
        Ok(serde_json::from_str(body)?)
    }

    /// Routing attributes as (name, value) pairs.
    pub fn attributes(&self) -> Vec<(&'static str, AttributeValue)> {
        let mut attrs = vec![
            (attr::KIND, AttributeValue::String(self.event.kind().to_owned())),
            (attr::CONVERSATION_ID, AttributeValue::String(self.conversation_id.clone())),
            (attr::ORIGIN, AttributeValue::String(self.origin.clone())),
        ];
        let channels = self.event.channels();
        if !channels.is_empty() {
            attrs.push((attr::CHANNELS, AttributeValue::StringArray(channels)));
        }
        if let Some(traceparent) = &self.trace {
            attrs.push((attr::TRACEPARENT, AttributeValue::String(traceparent.clone())));
        }
        attrs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> Envelope {
        Envelope::new(
            "01J0000000000000000000000".into(),
            "room1".into(),
            "gw-a".into(),
            1_700_000_000_000,
            Event::Message(MessageEvent {
                message_id: "01J0000000000000000000000".into(),
                seq: 42,
                sender: "alice".into(),
                body: "hello \u{1F600} \"quoted\"".into(),
                client_message_id: "c-1".into(),
                external_recipients: Vec::new(),
            }),
        )
    }

    #[test]
    fn round_trips_every_kind() {
        let events = [
            message().event,
            Event::MemberJoined { user_id: "bob".into() },
            Event::MemberLeft { user_id: "bob".into() },
            Event::Presence { user_id: "bob".into(), online: true },
            Event::Typing { user_id: "bob".into(), typing: false },
            Event::Receipt(ReceiptEvent {
                user_id: "whatsapp:+5511999990000".into(),
                status: ReceiptStatus::Failed,
                up_to_seq: 4,
                message_id: "m4".into(),
                reason: "number not on WhatsApp".into(),
                via: "whatsapp".into(),
                recorded: false,
            }),
            Event::Fallback(FallbackEvent {
                user_id: "bob".into(),
                to: "telegram:42".into(),
                message: MessageEvent {
                    message_id: "m".into(),
                    seq: 1,
                    sender: "alice".into(),
                    body: "b".into(),
                    client_message_id: String::new(),
                    external_recipients: Vec::new(),
                },
            }),
        ];
        for event in events {
            let env = Envelope { event, ..message() };
            let decoded = Envelope::decode(&env.encode()).expect("decodes");
            assert_eq!(decoded, env);
        }
    }

    #[test]
    fn body_is_flat_json_with_kind_tag() {
        let json: serde_json::Value = serde_json::from_str(&message().encode()).expect("json");
        assert_eq!(json["v"], 1);
        assert_eq!(json["kind"], "message");
        assert_eq!(json["seq"], 42);
        assert_eq!(json["conversation_id"], "room1");
    }

    #[test]
    fn attributes_name_kind_conversation_and_origin() {
        let env = message();
        let attrs = env.attributes();
        assert_eq!(attrs[0], ("kind", AttributeValue::String("message".into())));
        assert_eq!(attrs[1], ("conversation_id", AttributeValue::String("room1".into())));
        assert_eq!(attrs[2], ("origin", AttributeValue::String("gw-a".into())));
        assert_eq!(attrs.len(), 3, "no channels attribute without external recipients");
    }

    /// Trace context travels in the body and as an attribute, and an
    /// envelope without it encodes as before (older consumers read it).
    #[test]
    fn trace_context_travels_in_body_and_attributes() {
        let plain = message();
        assert!(!plain.encode().contains("trace"));
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let traced = message().traced(Some(parent.into()));
        let decoded = Envelope::decode(&traced.encode()).expect("decodes");
        assert_eq!(decoded.trace.as_deref(), Some(parent));
        assert_eq!(decoded, traced);
        let attrs = traced.attributes();
        assert_eq!(attrs.last(), Some(&("traceparent", AttributeValue::String(parent.into()))));
    }

    #[test]
    fn channels_attribute_lists_each_external_channel_once() {
        let mut env = message();
        if let Event::Message(m) = &mut env.event {
            m.external_recipients =
                vec!["whatsapp:+5511999990000".into(), "telegram:1".into(), "whatsapp:+5511999990001".into()];
        }
        let attrs = env.attributes();
        let (name, value) = &attrs[3];
        assert_eq!(*name, "channels");
        assert_eq!(value.data_type(), "String.Array");
        assert_eq!(value.string_value(), r#"["telegram","whatsapp"]"#);
    }

    #[test]
    fn rejects_unknown_version() {
        let body = message().encode().replace("\"v\":1", "\"v\":2");
        assert!(matches!(Envelope::decode(&body), Err(DecodeError::UnsupportedVersion(2))));
    }

    #[test]
    fn rejects_garbage_and_unknown_kinds() {
        assert!(matches!(Envelope::decode("not json"), Err(DecodeError::Malformed(_))));
        assert!(matches!(Envelope::decode("{}"), Err(DecodeError::Malformed(_))));
        let body = message().encode().replace("\"kind\":\"message\"", "\"kind\":\"teleport\"");
        assert!(matches!(Envelope::decode(&body), Err(DecodeError::Malformed(_))));
    }
}
