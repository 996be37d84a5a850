//! WhatsApp Cloud API: `POST {base}/{version}/{phone_number_id}/messages`
//! with `Authorization: Bearer <token>`, and the `whatsapp_business_account`
//! webhook (message statuses and inbound messages), signed with
//! `X-Hub-Signature-256`.

use serde::{Deserialize, Serialize};

/// The path of the messages endpoint.
pub fn messages_path(version: &str, phone_number_id: &str) -> String {
    format!("/{version}/{phone_number_id}/messages")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendRequest {
    pub messaging_product: String,
    pub recipient_type: String,
    /// The recipient's number, digits only (no '+').
    pub to: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Text,
    /// Echoed back in status webhooks.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub biz_opaque_callback_data: String,
}

impl SendRequest {
    pub fn text(to: &str, body: &str, callback_data: &str) -> Self {
        Self {
            messaging_product: "whatsapp".into(),
            recipient_type: "individual".into(),
            to: to.trim_start_matches('+').to_owned(),
            kind: "text".into(),
            text: Text { preview_url: Some(false), body: body.to_owned() },
            biz_opaque_callback_data: callback_data.to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Text {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_url: Option<bool>,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendResponse {
    pub messaging_product: String,
    #[serde(default)]
    pub contacts: Vec<Contact>,
    pub messages: Vec<MessageRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    #[serde(default)]
    pub input: String,
    pub wa_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRef {
    /// `wamid.…`
    pub id: String,
}

/// The webhook body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    /// `whatsapp_business_account`
    pub object: String,
    pub entry: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub id: String,
    pub changes: Vec<Change>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// `messages`
    pub field: String,
    pub value: ChangeValue,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeValue {
    pub messaging_product: String,
    pub metadata: Metadata,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contacts: Vec<WebhookContact>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<InboundMessage>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub statuses: Vec<Status>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub display_phone_number: String,
    pub phone_number_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookContact {
    pub profile: Profile,
    pub wa_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub name: String,
}

/// A message a WhatsApp user sent to the business number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundMessage {
    /// The sender's number, digits only.
    pub from: String,
    pub id: String,
    /// Unix seconds, as a string.
    pub timestamp: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<Text>,
}

/// A status change of a message the business sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The `wamid` of the message.
    pub id: String,
    /// `sent`, `delivered`, `read` or `failed`.
    pub status: String,
    /// Unix seconds, as a string.
    pub timestamp: String,
    pub recipient_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub biz_opaque_callback_data: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<StatusError>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusError {
    pub code: i64,
    pub title: String,
}
