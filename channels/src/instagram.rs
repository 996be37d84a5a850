//! Instagram messaging (Graph API): `POST {base}/{version}/{ig_user_id}/messages`
//! with `Authorization: Bearer <token>`, and the `instagram` webhook
//! (inbound messages and `read` receipts), signed with `X-Hub-Signature-256`.
//! Instagram reports no delivery receipts: an accepted send is DELIVERED.

use serde::{Deserialize, Serialize};

pub fn messages_path(version: &str, ig_user_id: &str) -> String {
    format!("/{version}/{ig_user_id}/messages")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendRequest {
    pub recipient: Party,
    pub message: OutMessage,
}

impl SendRequest {
    pub fn text(to: &str, body: &str) -> Self {
        Self { recipient: Party { id: to.to_owned() }, message: OutMessage { text: body.to_owned() } }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Party {
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutMessage {
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendResponse {
    pub recipient_id: String,
    pub message_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    /// `instagram`
    pub object: String,
    pub entry: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub id: String,
    pub time: i64,
    #[serde(default)]
    pub messaging: Vec<Messaging>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Messaging {
    pub sender: Party,
    pub recipient: Party,
    /// Milliseconds since the epoch.
    pub timestamp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<InMessage>,
    /// The user has read everything up to and including `mid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<Read>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InMessage {
    pub mid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Set on messages the business account itself sent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_echo: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Read {
    pub mid: String,
}
