//! What WhatsApp and Instagram share: Meta's Graph API error body and the
//! webhook verification handshake.

use serde::{Deserialize, Serialize};

/// The header carrying the webhook payload's signature.
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";

/// Graph API error codes that mean "slow down", whatever the HTTP status
/// (Meta often answers throttling with 400).
pub const THROTTLING_CODES: [i64; 5] = [4, 80007, 130429, 131048, 131056];

/// `{"error": {...}}`, the body of every Graph API failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: GraphError,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphError {
    pub message: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    pub code: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_subcode: Option<i64>,
    #[serde(default)]
    pub fbtrace_id: String,
}

/// The query of the `GET` Meta sends when a webhook is registered: answer
/// `hub.challenge` when `hub.verify_token` matches.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VerifyQuery {
    #[serde(rename = "hub.mode")]
    pub mode: String,
    #[serde(rename = "hub.verify_token")]
    pub verify_token: String,
    #[serde(rename = "hub.challenge")]
    pub challenge: String,
}
