//! Property tests of what the webhook reads from the outside: each
//! channel's payload ([`parse`]), its authentication and Meta's handshake.
//! Generated payloads round-trip through their JSON and read to the notices
//! they carry; arbitrary, mutated and retyped bodies get a reason, never a
//! panic.

use super::*;
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::Value;

/// Any text, kept short: edge cases are in the characters, not the length.
fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..24).prop_map(String::from_iter)
}

fn whatsapp_status() -> impl Strategy<Value = whatsapp::Status> {
    let status = prop_oneof![Just("sent"), Just("delivered"), Just("read"), Just("failed"), Just("deleted")];
    let error = (any::<i64>(), text()).prop_map(|(code, title)| whatsapp::StatusError { code, title });
    (text(), status, any::<i64>(), "[0-9]{0,15}", prop::collection::vec(error, 0..2)).prop_map(
        |(id, status, seconds, recipient_id, errors)| whatsapp::Status {
            id,
            status: status.into(),
            timestamp: seconds.to_string(),
            recipient_id,
            biz_opaque_callback_data: String::new(),
            errors,
        },
    )
}

fn whatsapp_message() -> impl Strategy<Value = whatsapp::InboundMessage> {
    let body = text().prop_map(|body| whatsapp::Text { preview_url: None, body });
    ("[0-9]{8,15}", text(), prop_oneof![Just("text"), Just("image"), Just("")], prop::option::of(body)).prop_map(
        |(from, id, kind, text)| whatsapp::InboundMessage {
            from,
            id,
            timestamp: "1700000000".into(),
            kind: kind.into(),
            text,
        },
    )
}

fn whatsapp_webhook() -> impl Strategy<Value = whatsapp::Webhook> {
    let value = (prop::collection::vec(whatsapp_status(), 0..3), prop::collection::vec(whatsapp_message(), 0..3))
        .prop_map(|(statuses, messages)| whatsapp::ChangeValue {
            messaging_product: "whatsapp".into(),
            metadata: whatsapp::Metadata { display_phone_number: "1".into(), phone_number_id: "2".into() },
            contacts: Vec::new(),
            messages,
            statuses,
        });
    let change = value.prop_map(|value| whatsapp::Change { field: "messages".into(), value });
    let entry = prop::collection::vec(change, 0..3).prop_map(|changes| whatsapp::Entry { id: "1".into(), changes });
    prop::collection::vec(entry, 0..3)
        .prop_map(|entry| whatsapp::Webhook { object: "whatsapp_business_account".into(), entry })
}

/// What a WhatsApp payload says, read by hand.
fn whatsapp_notices(hook: &whatsapp::Webhook) -> Vec<Notice> {
    let mut notices = Vec::new();
    for value in hook.entry.iter().flat_map(|e| &e.changes).map(|c| &c.value) {
        for s in &value.statuses {
            let status = match s.status.as_str() {
                "delivered" => ReceiptStatus::Delivered,
                "read" => ReceiptStatus::Read,
                "failed" => ReceiptStatus::Failed,
                _ => continue,
            };
            let seconds: i64 = s.timestamp.parse().unwrap_or_default();
            notices.push(Notice::Receipt {
                channel: Channel::WhatsApp,
                channel_message_id: s.id.clone(),
                status,
                at_ms: seconds.saturating_mul(1000),
                reason: s.errors.first().map(|e| format!("{} (code {})", e.title, e.code)).unwrap_or_default(),
            });
        }
        for m in &value.messages {
            let text = match (m.kind.as_str(), &m.text) {
                ("text", Some(text)) => text.body.clone(),
                (kind, _) => format!("[{kind} message: not supported yet]"),
            };
            let from = ExternalId { channel: Channel::WhatsApp, address: format!("+{}", m.from) };
            notices.push(Notice::Inbound { from, channel_message_id: m.id.clone(), text });
        }
    }
    notices
}

fn instagram_webhook() -> impl Strategy<Value = instagram::Webhook> {
    let message = (text(), prop::option::of(text()), any::<bool>())
        .prop_map(|(mid, text, is_echo)| instagram::InMessage { mid, text, is_echo });
    let read = text().prop_map(|mid| instagram::Read { mid });
    let event = ("[A-Za-z0-9._]{1,64}", any::<i64>(), prop::option::of(message), prop::option::of(read)).prop_map(
        |(sender, timestamp, message, read)| instagram::Messaging {
            sender: instagram::Party { id: sender },
            recipient: instagram::Party { id: "17841".into() },
            timestamp,
            message,
            read,
        },
    );
    let entry = (any::<i64>(), prop::collection::vec(event, 0..4)).prop_map(|(time, messaging)| instagram::Entry {
        id: "17841".into(),
        time,
        messaging,
    });
    prop::collection::vec(entry, 0..3).prop_map(|entry| instagram::Webhook { object: "instagram".into(), entry })
}

fn instagram_notices(hook: &instagram::Webhook) -> Vec<Notice> {
    let mut notices = Vec::new();
    for event in hook.entry.iter().flat_map(|e| &e.messaging) {
        if let Some(read) = &event.read {
            notices.push(Notice::Receipt {
                channel: Channel::Instagram,
                channel_message_id: read.mid.clone(),
                status: ReceiptStatus::Read,
                at_ms: event.timestamp,
                reason: String::new(),
            });
        }
        if let Some(message) = event.message.as_ref().filter(|m| !m.is_echo) {
            notices.push(Notice::Inbound {
                from: ExternalId { channel: Channel::Instagram, address: event.sender.id.clone() },
                channel_message_id: message.mid.clone(),
                text: message.text.clone().unwrap_or_else(|| "[attachment: not supported yet]".into()),
            });
        }
    }
    notices
}

fn telegram_update() -> impl Strategy<Value = telegram::Update> {
    let user = (any::<i64>(), any::<bool>(), text()).prop_map(|(id, is_bot, first_name)| telegram::User {
        id,
        is_bot,
        first_name,
    });
    let message = (any::<i64>(), any::<i64>(), any::<i64>(), prop::option::of(user), prop::option::of(text()))
        .prop_map(|(message_id, date, chat, from, text)| telegram::Message {
            message_id,
            date,
            chat: telegram::Chat { id: chat, kind: "private".into() },
            from,
            text,
        });
    (any::<i64>(), prop::option::of(message)).prop_map(|(update_id, message)| telegram::Update { update_id, message })
}

fn telegram_notices(update: &telegram::Update) -> Vec<Notice> {
    update
        .message
        .iter()
        .map(|m| Notice::Inbound {
            from: ExternalId { channel: Channel::Telegram, address: m.chat.id.to_string() },
            channel_message_id: format!("{}:{}", m.chat.id, m.message_id),
            text: m.text.clone().unwrap_or_else(|| "[non-text message: not supported yet]".into()),
        })
        .collect()
}

/// A valid body of any channel, with the channel.
fn any_payload() -> impl Strategy<Value = (Channel, Vec<u8>)> {
    prop_oneof![
        whatsapp_webhook().prop_map(|h| (Channel::WhatsApp, serde_json::to_vec(&h).unwrap_or_default())),
        instagram_webhook().prop_map(|h| (Channel::Instagram, serde_json::to_vec(&h).unwrap_or_default())),
        telegram_update().prop_map(|u| (Channel::Telegram, serde_json::to_vec(&u).unwrap_or_default())),
    ]
}

fn channel() -> impl Strategy<Value = Channel> {
    prop::sample::select(Channel::ALL.to_vec())
}

/// A refusal says what was wrong: not the channel's JSON, or an identity
/// the channel cannot have sent.
fn refused_clearly(channel: Channel, result: Result<Vec<Notice>, String>) -> Result<(), TestCaseError> {
    if let Err(reason) = result {
        let shape = reason.starts_with(&format!("body is not a {channel} webhook: "));
        prop_assert!(shape || reason.contains(" is not a"), "unclear refusal: {}", reason);
    }
    Ok(())
}

/// Replaces the `at`-th JSON value of `value` (depth first, `value` itself
/// first) by `with`; false when there are fewer.
fn replace_node(value: &mut Value, at: &mut usize, with: &Value) -> bool {
    if *at == 0 {
        *value = with.clone();
        return true;
    }
    *at -= 1;
    match value {
        Value::Array(items) => items.iter_mut().any(|v| replace_node(v, at, with)),
        Value::Object(fields) => fields.values_mut().any(|v| replace_node(v, at, with)),
        _ => false,
    }
}

fn count_nodes(value: &Value) -> usize {
    1 + match value {
        Value::Array(items) => items.iter().map(count_nodes).sum(),
        Value::Object(fields) => fields.values().map(count_nodes).sum(),
        _ => 0,
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        text().prop_map(Value::String),
        Just(Value::Array(Vec::new())),
        Just(serde_json::json!({})),
    ]
}

fn secrets() -> WebhookSecrets {
    WebhookSecrets {
        meta_app_secret: "app-secret".into(),
        meta_verify_token: "verify-token".into(),
        telegram_secret_token: "telegram-secret".into(),
    }
}

fn post(channel: Channel, header: Option<(&str, String)>, body: Vec<u8>) -> WebhookRequest {
    WebhookRequest {
        method: "POST".into(),
        path: format!("/{channel}"),
        headers: header.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        body,
        ..Default::default()
    }
}

proptest! {
    #[test]
    fn whatsapp_payloads_round_trip(hook in whatsapp_webhook()) {
        let body = serde_json::to_vec(&hook).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(serde_json::from_slice::<whatsapp::Webhook>(&body).ok(), Some(hook.clone()));
        prop_assert_eq!(parse(Channel::WhatsApp, &body), Ok(whatsapp_notices(&hook)));
    }

    #[test]
    fn instagram_payloads_round_trip(hook in instagram_webhook()) {
        let body = serde_json::to_vec(&hook).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(serde_json::from_slice::<instagram::Webhook>(&body).ok(), Some(hook.clone()));
        prop_assert_eq!(parse(Channel::Instagram, &body), Ok(instagram_notices(&hook)));
    }

    #[test]
    fn telegram_payloads_round_trip(update in telegram_update()) {
        let body = serde_json::to_vec(&update).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(serde_json::from_slice::<telegram::Update>(&body).ok(), Some(update.clone()));
        prop_assert_eq!(parse(Channel::Telegram, &body), Ok(telegram_notices(&update)));
    }

    /// Senders a channel could not have: refused with the rule they break.
    #[test]
    fn impossible_senders_are_refused_with_a_reason(from in text(), sender in text()) {
        refused_clearly(Channel::WhatsApp, parse(Channel::WhatsApp, &whatsapp_body(&from)))?;
        let ig = serde_json::json!({"object": "instagram", "entry": [{"id": "1", "time": 1, "messaging": [
            {"sender": {"id": sender}, "recipient": {"id": "1"}, "timestamp": 1, "message": {"mid": "m"}}]}]});
        refused_clearly(Channel::Instagram, parse(Channel::Instagram, ig.to_string().as_bytes()))?;
    }

    #[test]
    fn arbitrary_bodies_are_refused_clearly(channel in channel(), body in prop::collection::vec(any::<u8>(), 0..256)) {
        refused_clearly(channel, parse(channel, &body))?;
    }

    /// Valid bodies with bytes changed, and read as any channel's.
    #[test]
    fn mutated_bodies_are_refused_clearly(
        (_, body) in any_payload(),
        edits in prop::collection::vec((any::<Index>(), any::<u8>(), 0..3u8), 1..4),
        to in channel(),
    ) {
        let mut body = body;
        for (at, byte, kind) in edits {
            let at = at.index(body.len() + 1);
            match kind {
                0 if at < body.len() => body[at] = byte,
                1 => body.insert(at, byte),
                _ => body.truncate(at),
            }
        }
        refused_clearly(to, parse(to, &body))?;
    }

    /// Valid bodies with any one JSON value replaced by a value of another
    /// type (a number for a string, an object for a list, a null).
    #[test]
    fn retyped_bodies_are_refused_clearly((channel, body) in any_payload(), at in any::<Index>(), with in json_value()) {
        let mut json: Value = serde_json::from_slice(&body).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut position = at.index(count_nodes(&json));
        prop_assert!(replace_node(&mut json, &mut position, &with));
        refused_clearly(channel, parse(channel, json.to_string().as_bytes()))?;
    }

    /// A Meta call passes exactly when signed with the app secret over
    /// its body; a Telegram call exactly when it carries the secret token.
    #[test]
    fn calls_are_authenticated_exactly(
        body in prop::collection::vec(any::<u8>(), 0..128),
        header in prop::option::of(text()),
        signed in any::<bool>(),
    ) {
        let secrets = secrets();
        for channel in [Channel::WhatsApp, Channel::Instagram] {
            let signature = channels::meta_signature(&secrets.meta_app_secret, &body);
            let value = if signed { Some(signature.clone()) } else { header.clone() };
            let expected = value.as_deref().is_some_and(|v| v.to_ascii_lowercase() == signature && v.starts_with("sha256="));
            let request = post(channel, value.map(|v| (meta::SIGNATURE_HEADER, v)), body.clone());
            prop_assert_eq!(authenticate(&secrets, channel, &request).is_ok(), expected);
        }
        let value = if signed { Some(secrets.telegram_secret_token.clone()) } else { header };
        let expected = value.as_deref() == Some(secrets.telegram_secret_token.as_str());
        let request = post(Channel::Telegram, value.map(|v| (telegram::SECRET_HEADER, v)), body);
        prop_assert_eq!(authenticate(&secrets, Channel::Telegram, &request).is_ok(), expected);
    }

    #[test]
    fn the_handshake_answers_only_the_verify_token(
        mode in prop_oneof![Just("subscribe".to_owned()), text()],
        token in prop_oneof![Just("verify-token".to_owned()), text()],
        challenge in text(),
        drop in prop::option::of(0..3usize),
        channel in channel(),
    ) {
        let mut query = HashMap::from([
            ("hub.mode".to_owned(), mode.clone()),
            ("hub.verify_token".to_owned(), token.clone()),
            ("hub.challenge".to_owned(), challenge.clone()),
        ]);
        if let Some(i) = drop {
            query.remove(["hub.mode", "hub.verify_token", "hub.challenge"][i]);
        }
        let answer = verify_subscription(&secrets(), channel, &query);
        let expected = match (channel, drop) {
            (Channel::Telegram, _) => 405,
            (_, Some(_)) => 400,
            _ if mode == "subscribe" && token == "verify-token" => 200,
            _ => 403,
        };
        prop_assert_eq!(answer.status, expected);
        if expected == 200 {
            prop_assert_eq!(answer.body, challenge);
        }
    }
}

/// A WhatsApp body with one inbound message from `from`.
fn whatsapp_body(from: &str) -> Vec<u8> {
    serde_json::json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages",
        "value": {"messaging_product": "whatsapp", "metadata": {"display_phone_number": "1", "phone_number_id": "2"},
        "messages": [{"from": from, "id": "m", "timestamp": "1", "type": "text", "text": {"body": "hi"}}]}}]}]})
    .to_string()
    .into_bytes()
}

/// Nesting deep enough to exhaust a naive recursive reader is refused.
#[test]
fn deeply_nested_bodies_are_refused_clearly() {
    for channel in Channel::ALL {
        for depth in [127, 128, 129, 100_000] {
            for open in ["[", r#"{"entry":"#] {
                let body = format!(r#"{{"object":"x","entry":{}"#, open.repeat(depth));
                let refused = parse(channel, body.as_bytes()).expect_err("nested too deep");
                assert!(refused.starts_with(&format!("body is not a {channel} webhook")), "{refused}");
            }
        }
    }
}
