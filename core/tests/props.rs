//! Property tests of the decoders in `chat-core` that read untrusted text:
//! the bus envelope (any SQS body reaches [`Envelope::decode`]), external
//! ids and the input limits. Valid values are generated to check round
//! trips; arbitrary and mutated encodings to check that every input gets an
//! answer, never a panic.

use chat_core::envelope::{
    AttributeValue, DecodeError, ENVELOPE_VERSION, Envelope, Event, FallbackEvent, MessageEvent, ReceiptEvent,
    ReceiptStatus, attr,
};
use chat_core::external::{Channel, ExternalId};
use chat_core::limits::{self, LimitError, MAX_ID_LEN};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::Value;

/// Any text, kept short: the decoders' edge cases are in which characters
/// appear (quotes, escapes, non-ASCII), not in length.
fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..24).prop_map(String::from_iter)
}

fn external_id() -> impl Strategy<Value = ExternalId> {
    prop_oneof![
        "\\+[0-9]{8,15}".prop_map(|a| ExternalId { channel: Channel::WhatsApp, address: a }),
        "[A-Za-z0-9._]{1,64}".prop_map(|a| ExternalId { channel: Channel::Instagram, address: a }),
        any::<i64>().prop_map(|id| ExternalId { channel: Channel::Telegram, address: id.to_string() }),
    ]
}

/// Recipients as the gateway writes them (external ids) or anything at all.
fn recipient() -> impl Strategy<Value = String> {
    prop_oneof![external_id().prop_map(|id| id.to_string()), text()]
}

fn message_event() -> impl Strategy<Value = MessageEvent> {
    (text(), any::<u64>(), text(), text(), text(), prop::collection::vec(recipient(), 0..4)).prop_map(
        |(message_id, seq, sender, body, client_message_id, external_recipients)| MessageEvent {
            message_id,
            seq,
            sender,
            body,
            client_message_id,
            external_recipients,
        },
    )
}

fn receipt_status() -> impl Strategy<Value = ReceiptStatus> {
    prop_oneof![Just(ReceiptStatus::Delivered), Just(ReceiptStatus::Read), Just(ReceiptStatus::Failed)]
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        message_event().prop_map(Event::Message),
        text().prop_map(|user_id| Event::MemberJoined { user_id }),
        text().prop_map(|user_id| Event::MemberLeft { user_id }),
        (text(), any::<bool>()).prop_map(|(user_id, online)| Event::Presence { user_id, online }),
        (text(), any::<bool>()).prop_map(|(user_id, typing)| Event::Typing { user_id, typing }),
        (text(), receipt_status(), any::<u64>(), text(), text(), text(), any::<bool>()).prop_map(
            |(user_id, status, up_to_seq, message_id, reason, via, recorded)| Event::Receipt(ReceiptEvent {
                user_id,
                status,
                up_to_seq,
                message_id,
                reason,
                via,
                recorded,
            })
        ),
        (text(), recipient(), message_event()).prop_map(|(user_id, to, message)| Event::Fallback(FallbackEvent {
            user_id,
            to,
            message
        })),
    ]
}

fn envelope() -> impl Strategy<Value = Envelope> {
    (text(), text(), text(), any::<i64>(), event()).prop_map(|(event_id, conversation_id, origin, at_ms, event)| {
        Envelope::new(event_id, conversation_id, origin, at_ms, event)
    })
}

/// A JSON value to splice into a valid body: every JSON type, nested a little.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        prop_oneof![Just("message"), Just("receipt"), Just("fallback"), Just("delivered")].prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// One edit of an encoding's bytes.
#[derive(Debug, Clone)]
enum Mutation {
    Set(Index, u8),
    Delete(Index, usize),
    Insert(Index, Vec<u8>),
    Truncate(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<Index>(), 1..8usize).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..8)).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<Index>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = bytes.len();
        match m {
            Mutation::Set(i, b) if len > 0 => bytes[i.index(len)] = *b,
            Mutation::Delete(i, n) if len > 0 => {
                let at = i.index(len);
                bytes.drain(at..(at + n).min(len));
            }
            Mutation::Insert(i, b) => {
                let at = i.index(len + 1);
                bytes.splice(at..at, b.iter().copied());
            }
            Mutation::Truncate(i) => bytes.truncate(i.index(len + 1)),
            _ => {}
        }
    }
    bytes
}

/// Whatever a body decodes to is stable: encoding it again decodes to it.
fn decoded_is_stable(body: &str) -> Result<(), TestCaseError> {
    if let Ok(envelope) = Envelope::decode(body) {
        prop_assert_eq!(envelope.v, ENVELOPE_VERSION);
        prop_assert_eq!(Envelope::decode(&envelope.encode()).ok(), Some(envelope));
    }
    Ok(())
}

proptest! {
    #[test]
    fn envelopes_round_trip(envelope in envelope()) {
        let body = envelope.encode();
        let decoded = Envelope::decode(&body).map_err(|e| TestCaseError::fail(format!("{e}: {body}")))?;
        prop_assert_eq!(decoded, envelope);
    }

    #[test]
    fn attributes_agree_with_the_body(envelope in envelope()) {
        let body: Value = serde_json::from_str(&envelope.encode()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let attrs = envelope.attributes();
        prop_assert_eq!(&attrs[0], &(attr::KIND, AttributeValue::String(body["kind"].as_str().unwrap_or("").to_owned())));
        prop_assert_eq!(&attrs[1].1, &AttributeValue::String(envelope.conversation_id.clone()));
        match attrs.get(3) {
            Some((name, AttributeValue::StringArray(channels))) => {
                prop_assert_eq!(*name, attr::CHANNELS);
                prop_assert!(!channels.is_empty());
                prop_assert!(channels.windows(2).all(|w| w[0] < w[1]), "sorted and unique: {:?}", channels);
                prop_assert!(channels.iter().all(|c| Channel::parse(c).is_some()));
            }
            Some(other) => prop_assert!(false, "unexpected attribute {:?}", other),
            None => prop_assert!(envelope.event.channels().is_empty()),
        }
    }

    #[test]
    fn arbitrary_text_is_refused_or_decoded_never_a_panic(body in any::<String>()) {
        decoded_is_stable(&body)?;
    }

    #[test]
    fn mutated_bodies_never_panic(envelope in envelope(), mutations in prop::collection::vec(mutation(), 1..4)) {
        let bytes = mutate(envelope.encode().into_bytes(), &mutations);
        decoded_is_stable(&String::from_utf8_lossy(&bytes))?;
    }

    /// A field of a valid body replaced by any JSON value (a wrong type, a
    /// huge number, an unknown kind): refused with a reason, or read.
    #[test]
    fn bodies_with_a_field_replaced_never_panic(
        envelope in envelope(),
        field in any::<Index>(),
        value in json_value(),
    ) {
        let Ok(Value::Object(mut body)) = serde_json::from_str::<Value>(&envelope.encode()) else {
            return Err(TestCaseError::fail("an envelope encodes to a JSON object"));
        };
        let keys: Vec<String> = body.keys().cloned().collect();
        let key = field.get(&keys).clone();
        body.insert(key.clone(), value);
        let text = Value::Object(body).to_string();
        match Envelope::decode(&text) {
            Ok(decoded) => {
                prop_assert_eq!(decoded.v, ENVELOPE_VERSION);
                prop_assert_eq!(Envelope::decode(&decoded.encode()).ok(), Some(decoded));
            }
            Err(DecodeError::UnsupportedVersion(v)) => {
                prop_assert_eq!(key.as_str(), "v");
                prop_assert_ne!(v, ENVELOPE_VERSION);
            }
            Err(DecodeError::Malformed(e)) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn other_versions_are_refused_by_number(envelope in envelope(), v in any::<u32>()) {
        prop_assume!(v != ENVELOPE_VERSION);
        let body = envelope.encode().replacen("\"v\":1", &format!("\"v\":{v}"), 1);
        prop_assert!(matches!(Envelope::decode(&body), Err(DecodeError::UnsupportedVersion(n)) if n == v));
    }

    #[test]
    fn external_ids_round_trip(id in external_id()) {
        let text = id.to_string();
        prop_assert_eq!(ExternalId::parse(&text), Ok(Some(id.clone())));
        prop_assert_eq!(ExternalId::new(id.channel, &id.address), Ok(id));
        prop_assert!(ExternalId::has_channel_prefix(&text));
        prop_assert!(limits::member_id(&text).is_ok());
        prop_assert!(limits::user_id(&text).is_err(), "external identities never connect");
    }

    /// Any id is external (and then prints back as it came), malformed
    /// with a reason, or internal, exactly as its prefix says.
    #[test]
    fn any_id_is_classified_by_its_prefix(
        id in prop_oneof![
            any::<String>(),
            (prop_oneof![Just("whatsapp"), Just("instagram"), Just("telegram")], any::<String>())
                .prop_map(|(c, a)| format!("{c}:{a}")),
        ],
    ) {
        match ExternalId::parse(&id) {
            Ok(Some(parsed)) => {
                prop_assert_eq!(parsed.to_string(), id.clone());
                prop_assert!(ExternalId::has_channel_prefix(&id));
            }
            Ok(None) => prop_assert!(!ExternalId::has_channel_prefix(&id)),
            Err(reason) => {
                prop_assert!(ExternalId::has_channel_prefix(&id));
                prop_assert!(reason.contains("is not a"), "{}", reason);
            }
        }
    }

    /// Ids follow their documented rule exactly.
    #[test]
    fn ids_follow_the_documented_alphabet(
        id in prop_oneof![any::<String>(), "[A-Za-z0-9_.:@+-]{0,130}", "[A-Za-z0-9 /é\t]{1,4}"],
    ) {
        let allowed = !id.is_empty()
            && id.len() <= MAX_ID_LEN
            && id.chars().all(|c| c.is_ascii_alphanumeric() || "_-.:@+".contains(c));
        prop_assert_eq!(limits::conversation_id(&id).is_ok(), allowed);
        prop_assert_eq!(limits::message_id(&id).is_ok(), allowed);
        prop_assert_eq!(limits::user_id(&id).is_ok(), allowed && !ExternalId::has_channel_prefix(&id));
        if limits::member_id(&id).is_ok() {
            prop_assert!(allowed);
        }
        for refused in [limits::conversation_id(&id), limits::user_id(&id), limits::member_id(&id)] {
            if let Err(e) = refused {
                prop_assert!(matches!(e, LimitError::Invalid(_)));
                prop_assert!(!e.to_string().is_empty());
            }
        }
        let client_ok = id.len() <= MAX_ID_LEN && !id.chars().any(|c| c.is_control() || c.is_whitespace());
        prop_assert_eq!(limits::client_message_id(&id).is_ok(), client_ok);
    }

    #[test]
    fn bodies_are_refused_for_blankness_or_size(body in any::<String>(), max in 0..64usize) {
        match limits::body(&body, max) {
            Ok(()) => prop_assert!(!body.trim().is_empty() && body.len() <= max),
            Err(LimitError::Invalid(_)) => prop_assert!(body.trim().is_empty()),
            Err(LimitError::TooLarge(_)) => prop_assert!(!body.trim().is_empty() && body.len() > max),
        }
    }

    /// `fit` keeps the longest whole-character prefix within the limit.
    #[test]
    fn fit_keeps_the_longest_prefix_within_the_limit(text in any::<String>(), max in 0..64usize) {
        let fitted = limits::fit(&text, max);
        prop_assert!(text.starts_with(fitted));
        prop_assert!(fitted.len() <= max);
        if let Some(next) = text[fitted.len()..].chars().next() {
            prop_assert!(fitted.len() + next.len_utf8() > max, "a longer prefix fits");
        }
    }
}

/// Nesting deep enough to exhaust a naive recursive reader is refused.
#[test]
fn deeply_nested_bodies_are_refused() {
    for depth in [127, 128, 129, 100_000] {
        for open in ["[", r#"{"v":"#] {
            let body = format!(r#"{{"v":1,"kind":"typing","user_id":{}"#, open.repeat(depth));
            assert!(matches!(Envelope::decode(&body), Err(DecodeError::Malformed(_))), "{depth} {open}");
        }
    }
}
