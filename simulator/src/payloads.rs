//! The webhook bodies the simulator posts: receipts and inbound messages in
//! each channel's real webhook shape. Pure builders; the caller supplies
//! ids and clock readings.

use channels::{instagram, telegram, whatsapp};

/// The WhatsApp Business Account id in `entry[].id`.
pub(crate) const WABA_ID: &str = "200000000000001";
pub(crate) const DISPLAY_PHONE_NUMBER: &str = "15550000000";
/// The profile name of simulated users.
pub(crate) const WHATSAPP_PROFILE_NAME: &str = "Sim User";
pub(crate) const TELEGRAM_FIRST_NAME: &str = "Sim";
/// WhatsApp's error for a message that could not be delivered.
pub(crate) const UNDELIVERABLE_CODE: i64 = 131026;
pub(crate) const UNDELIVERABLE_TITLE: &str = "Message undeliverable";

fn whatsapp_webhook(
    phone_number_id: &str,
    value: impl FnOnce(whatsapp::Metadata) -> whatsapp::ChangeValue,
) -> whatsapp::Webhook {
    let metadata = whatsapp::Metadata {
        display_phone_number: DISPLAY_PHONE_NUMBER.into(),
        phone_number_id: phone_number_id.to_owned(),
    };
    whatsapp::Webhook {
        object: "whatsapp_business_account".into(),
        entry: vec![whatsapp::Entry {
            id: WABA_ID.into(),
            changes: vec![whatsapp::Change { field: "messages".into(), value: value(metadata) }],
        }],
    }
}

/// What a WhatsApp status receipt is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WhatsAppStatus<'a> {
    pub(crate) wamid: &'a str,
    /// `delivered`, `read` or `failed`.
    pub(crate) status: &'a str,
    pub(crate) recipient_id: &'a str,
    pub(crate) callback_data: &'a str,
}

pub(crate) fn whatsapp_status(phone_number_id: &str, s: &WhatsAppStatus<'_>, now_secs: i64) -> whatsapp::Webhook {
    let errors = if s.status == "failed" {
        vec![whatsapp::StatusError { code: UNDELIVERABLE_CODE, title: UNDELIVERABLE_TITLE.into() }]
    } else {
        Vec::new()
    };
    whatsapp_webhook(phone_number_id, |metadata| whatsapp::ChangeValue {
        messaging_product: "whatsapp".into(),
        metadata,
        contacts: Vec::new(),
        messages: Vec::new(),
        statuses: vec![whatsapp::Status {
            id: s.wamid.to_owned(),
            status: s.status.to_owned(),
            timestamp: now_secs.to_string(),
            recipient_id: s.recipient_id.trim_start_matches('+').to_owned(),
            biz_opaque_callback_data: s.callback_data.to_owned(),
            errors,
        }],
    })
}

pub(crate) fn whatsapp_inbound(
    phone_number_id: &str,
    from: &str,
    wamid: &str,
    text: &str,
    now_secs: i64,
) -> whatsapp::Webhook {
    whatsapp_webhook(phone_number_id, |metadata| whatsapp::ChangeValue {
        messaging_product: "whatsapp".into(),
        metadata,
        contacts: vec![whatsapp::WebhookContact {
            profile: whatsapp::Profile { name: WHATSAPP_PROFILE_NAME.into() },
            wa_id: from.to_owned(),
        }],
        messages: vec![whatsapp::InboundMessage {
            from: from.to_owned(),
            id: wamid.to_owned(),
            timestamp: now_secs.to_string(),
            kind: "text".into(),
            text: Some(whatsapp::Text { preview_url: None, body: text.to_owned() }),
        }],
        statuses: Vec::new(),
    })
}

fn instagram_webhook(ig_user_id: &str, messaging: instagram::Messaging) -> instagram::Webhook {
    instagram::Webhook {
        object: "instagram".into(),
        entry: vec![instagram::Entry {
            id: ig_user_id.to_owned(),
            time: messaging.timestamp,
            messaging: vec![messaging],
        }],
    }
}

/// The user `reader` has read the business's message `mid`.
pub(crate) fn instagram_read(ig_user_id: &str, reader: &str, mid: &str, now_ms: i64) -> instagram::Webhook {
    instagram_webhook(
        ig_user_id,
        instagram::Messaging {
            sender: instagram::Party { id: reader.to_owned() },
            recipient: instagram::Party { id: ig_user_id.to_owned() },
            timestamp: now_ms,
            message: None,
            read: Some(instagram::Read { mid: mid.to_owned() }),
        },
    )
}

pub(crate) fn instagram_inbound(
    ig_user_id: &str,
    from: &str,
    mid: &str,
    text: &str,
    now_ms: i64,
) -> instagram::Webhook {
    instagram_webhook(
        ig_user_id,
        instagram::Messaging {
            sender: instagram::Party { id: from.to_owned() },
            recipient: instagram::Party { id: ig_user_id.to_owned() },
            timestamp: now_ms,
            message: Some(instagram::InMessage { mid: mid.to_owned(), text: Some(text.to_owned()), is_echo: false }),
            read: None,
        },
    )
}

/// A private-chat message from user `chat_id` (in private chats the chat
/// id is the user id).
pub(crate) fn telegram_inbound(
    update_id: i64,
    message_id: i64,
    chat_id: i64,
    text: &str,
    now_secs: i64,
) -> telegram::Update {
    telegram::Update {
        update_id,
        message: Some(telegram::Message {
            message_id,
            date: now_secs,
            chat: telegram::Chat { id: chat_id, kind: "private".into() },
            from: Some(telegram::User { id: chat_id, is_bot: false, first_name: TELEGRAM_FIRST_NAME.into() }),
            text: Some(text.to_owned()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn whatsapp_status_has_the_cloud_api_shape() {
        let status =
            WhatsAppStatus { wamid: "wamid.A", status: "delivered", recipient_id: "15551234", callback_data: "cb" };
        let body = serde_json::to_value(whatsapp_status("100", &status, 1_700_000_000)).expect("json");
        assert_eq!(
            body,
            json!({"object": "whatsapp_business_account", "entry": [{"id": WABA_ID, "changes": [{"field": "messages",
                "value": {"messaging_product": "whatsapp",
                    "metadata": {"display_phone_number": "15550000000", "phone_number_id": "100"},
                    "statuses": [{"id": "wamid.A", "status": "delivered", "timestamp": "1700000000",
                        "recipient_id": "15551234", "biz_opaque_callback_data": "cb"}]}}]}]})
        );
    }

    #[test]
    fn failed_whatsapp_status_carries_the_undeliverable_error() {
        let status = WhatsAppStatus { wamid: "wamid.A", status: "failed", recipient_id: "1", callback_data: "" };
        let hook = whatsapp_status("100", &status, 1);
        let s = &hook.entry[0].changes[0].value.statuses[0];
        assert_eq!(s.errors, [whatsapp::StatusError { code: 131026, title: "Message undeliverable".into() }]);
        assert!(s.biz_opaque_callback_data.is_empty());
    }

    #[test]
    fn whatsapp_inbound_has_contact_and_text() {
        let hook = whatsapp_inbound("100", "15551234", "wamid.B", "hello", 5);
        let value = &hook.entry[0].changes[0].value;
        assert_eq!(value.contacts[0].wa_id, "15551234");
        assert_eq!(value.contacts[0].profile.name, "Sim User");
        let m = &value.messages[0];
        assert_eq!(
            (m.from.as_str(), m.id.as_str(), m.kind.as_str(), m.timestamp.as_str()),
            ("15551234", "wamid.B", "text", "5")
        );
        assert_eq!(m.text.as_ref().map(|t| t.body.as_str()), Some("hello"));
        assert!(value.statuses.is_empty());
    }

    #[test]
    fn instagram_read_and_inbound_have_the_messaging_shape() {
        let read = serde_json::to_value(instagram_read("178", "555", "m_A", 1_700_000_000_123)).expect("json");
        assert_eq!(
            read,
            json!({"object": "instagram", "entry": [{"id": "178", "time": 1_700_000_000_123i64, "messaging": [{
                "sender": {"id": "555"}, "recipient": {"id": "178"}, "timestamp": 1_700_000_000_123i64,
                "read": {"mid": "m_A"}}]}]})
        );
        let inbound = instagram_inbound("178", "555", "m_B", "hi", 7);
        let m = &inbound.entry[0].messaging[0];
        assert_eq!(m.sender.id, "555");
        assert_eq!(m.message.as_ref().map(|x| (x.mid.as_str(), x.text.as_deref())), Some(("m_B", Some("hi"))));
        assert_eq!(m.read, None);
    }

    #[test]
    fn telegram_inbound_is_a_private_chat_update() {
        let update = serde_json::to_value(telegram_inbound(9, 4, 42, "hi", 1_700_000_000)).expect("json");
        assert_eq!(
            update,
            json!({"update_id": 9, "message": {"message_id": 4, "date": 1_700_000_000,
                "chat": {"id": 42, "type": "private"}, "from": {"id": 42, "is_bot": false, "first_name": "Sim"},
                "text": "hi"}})
        );
    }
}
