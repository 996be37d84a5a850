//! The control API under `/_sim/`: the JSON bodies it reads and answers, so
//! Rust tests drive the simulator with the same types it parses. Channels
//! are named `whatsapp`, `instagram` or `telegram`; any other name is
//! answered 400 with an [`ErrorBody`].

use serde::{Deserialize, Serialize};

pub const HEALTH_PATH: &str = "/_sim/health";
pub const SENT_PATH: &str = "/_sim/sent";
pub const CALLBACKS_PATH: &str = "/_sim/callbacks";
pub const FAULTS_PATH: &str = "/_sim/faults";
pub const RESET_PATH: &str = "/_sim/reset";
pub const RECEIPTS_PATH: &str = "/_sim/receipts";
pub const INBOUND_PATH: &str = "/_sim/inbound";
pub const STATUS_PATH: &str = "/_sim/status";

/// `Callback::kind` of receipts.
pub const KIND_STATUS: &str = "status";
/// `Callback::kind` (and `Callback::status`) of inbound messages.
pub const KIND_INBOUND: &str = "inbound";

/// `{"ok": true}`: the answer of `GET /_sim/health`, `POST /_sim/reset`
/// and `POST /_sim/receipts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub ok: bool,
}

/// The query of `GET /_sim/sent` and `GET /_sim/callbacks`: all channels
/// when `channel` is absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelFilter {
    #[serde(default)]
    pub channel: Option<String>,
}

/// One send the simulator answered, in arrival order (`GET /_sim/sent`).
/// Sends failed by a fault are recorded too: their `status` is not 200 and
/// their `channel_message_id` is empty. Requests rejected before a send
/// could be read (bad token, malformed body) are not recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sent {
    pub channel: String,
    /// WhatsApp `to` as sent, the Instagram recipient id, or the Telegram
    /// `chat_id` as a string.
    pub to: String,
    pub text: String,
    /// `wamid.…`, `m_…` or the Telegram `message_id`; empty if failed.
    pub channel_message_id: String,
    /// The HTTP status answered.
    pub status: u16,
    /// WhatsApp `biz_opaque_callback_data`; empty elsewhere.
    pub callback_data: String,
    pub received_at_ms: i64,
}

impl Sent {
    pub fn succeeded(&self) -> bool {
        self.status == 200
    }
}

/// One callback to the webhook, after its last attempt
/// (`GET /_sim/callbacks`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Callback {
    pub channel: String,
    /// [`KIND_STATUS`] or [`KIND_INBOUND`].
    pub kind: String,
    /// `delivered`, `read`, `failed` or `inbound`.
    pub status: String,
    pub channel_message_id: String,
    /// The webhook's last answer; 0 if it never answered.
    pub http_status: u16,
    pub attempts: u32,
    /// Whether the webhook accepted it (2xx).
    pub ok: bool,
}

/// `POST /_sim/faults`: sets the given fields for one channel; omitted
/// fields keep their value. Answered with all fields of the channel's
/// faults as they now are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Faults {
    pub channel: String,
    /// Every send on the channel waits this long before it is answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// Statuses (400..=599) the next sends fail with, one per send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_next: Option<Vec<u16>>,
    /// Recipients (as addressed in the send) that always fail permanently.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permanent: Option<Vec<String>>,
}

/// `POST /_sim/receipts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptsMode {
    pub channel: String,
    /// `none`, `delivered` or `read`.
    pub mode: String,
}

/// `POST /_sim/inbound`: a user of `channel` sends `text` to the business.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inbound {
    pub channel: String,
    /// WhatsApp number (digits), Instagram user id, or Telegram chat id.
    pub from: String,
    pub text: String,
}

/// The answer to `POST /_sim/inbound`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundResult {
    pub channel_message_id: String,
    /// The webhook's last answer; 0 if it never answered.
    pub webhook_status: u16,
}

/// `POST /_sim/status`: send a receipt now for a recorded, successful send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManualStatus {
    pub channel: String,
    pub channel_message_id: String,
    /// `delivered`, `read` or `failed` (WhatsApp); `read` (Instagram).
    pub status: String,
}

/// The answer to `POST /_sim/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusResult {
    pub webhook_status: u16,
}

/// Every control API failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}
