//! Function `webhook`: the channels call it back (a Lambda function URL on
//! AWS, a local HTTP server in `make run` and tests) with receipts and with
//! messages their users sent.
//!
//! - Every call is authenticated first: Meta's `X-Hub-Signature-256` (HMAC of
//!   the body with the app secret) for WhatsApp and Instagram, the
//!   `X-Telegram-Bot-Api-Secret-Token` header for Telegram; Meta's `GET`
//!   verification handshake is answered with the verify token.
//! - Receipts name the channel's message id; the connector recorded which of
//!   our messages that is, so they become DELIVERED/READ/FAILED receipts on
//!   the topic (the sender sees them live, `persist` records them).
//! - An inbound message goes to the conversation its sender was most
//!   recently added to: it is accepted like any send (its channel message id
//!   is the idempotency key, so the channel's retries never duplicate it)
//!   and published, so internal members see it live.
//!
//! Answers: 200 once handled (also for receipts of unknown messages, which
//! a retry would not fix), 401 for a bad signature, 400 for a malformed
//! body, 500 when storage or the bus failed (the channel retries).

use std::collections::HashMap;
use std::sync::Arc;

use channels::{instagram, meta, telegram, whatsapp};
use chat_aws::dynamo::connector::Records;
use chat_aws::dynamo::{DynamoStore, Tables};
use chat_aws::sns::SnsPublisher;
use chat_core::bus::Bus;
use chat_core::envelope::{Envelope, Event, ReceiptEvent, ReceiptStatus};
use chat_core::external::{Channel, ExternalId};
use chat_core::limits::{self, DEFAULT_MAX_BODY_BYTES, MAX_ID_LEN};
use chat_core::send::{self, Send, message_envelope};
use chat_core::store::{Links, Membership, Sequencer};

use crate::FunctionError;
use tracing::Instrument;

/// An HTTP request, whatever carried it.
#[derive(Debug, Clone, Default)]
pub struct WebhookRequest {
    pub method: String,
    pub path: String,
    pub query: HashMap<String, String>,
    /// Lowercase names.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookResponse {
    pub status: u16,
    pub body: String,
}

impl WebhookResponse {
    fn new(status: u16, body: impl Into<String>) -> Self {
        Self { status, body: body.into() }
    }
}

/// Shared secrets with the channels.
#[derive(Debug, Clone, clap::Args)]
pub struct WebhookSecrets {
    /// Meta app secret: verifies WhatsApp and Instagram signatures.
    #[arg(long, env = "CHAT_META_APP_SECRET", default_value = "local-meta-app-secret", hide_env_values = true)]
    pub meta_app_secret: String,
    /// Answers Meta's webhook verification handshake.
    #[arg(long, env = "CHAT_META_VERIFY_TOKEN", default_value = "local-verify-token", hide_env_values = true)]
    pub meta_verify_token: String,
    /// The secret token given to Telegram's `setWebhook`.
    #[arg(long, env = "CHAT_TELEGRAM_SECRET_TOKEN", default_value = "local-telegram-secret", hide_env_values = true)]
    pub telegram_secret_token: String,
}

/// What `webhook` needs: built once per process.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// Accepts inbound messages as sends.
    pub sequencer: Arc<dyn Sequencer>,
    /// Whether an external identity is still a member where it last was.
    pub membership: Arc<dyn Membership>,
    /// The conversation an external identity was most recently added to.
    pub links: Arc<dyn Links>,
    pub records: Records,
    pub bus: Arc<dyn Bus>,
    pub secrets: WebhookSecrets,
}

/// The webhook's configuration, shared by its Lambda binary and the local
/// server.
#[derive(Debug, Clone, clap::Args)]
pub struct WebhookArgs {
    #[command(flatten)]
    pub secrets: WebhookSecrets,
    #[command(flatten)]
    pub tables: Tables,
    #[arg(long, env = "CHAT_CONNECTOR_TABLE", default_value = "chat-connector")]
    pub connector_table: String,
    #[arg(long, env = "CHAT_TOPIC_ARN")]
    pub topic_arn: String,
}

impl WebhookSecrets {
    /// Every secret must be set and non-empty (an empty one would match an
    /// empty header).
    pub fn check(&self) -> anyhow::Result<()> {
        for (name, value) in [
            ("CHAT_META_APP_SECRET", &self.meta_app_secret),
            ("CHAT_META_VERIFY_TOKEN", &self.meta_verify_token),
            ("CHAT_TELEGRAM_SECRET_TOKEN", &self.telegram_secret_token),
        ] {
            anyhow::ensure!(!value.trim().is_empty(), "{name} is empty: the webhook would accept forged calls");
        }
        Ok(())
    }

    /// On AWS the secrets must come from the environment, never from the
    /// local defaults (which are public).
    pub fn require_from_environment() -> anyhow::Result<()> {
        for name in ["CHAT_META_APP_SECRET", "CHAT_META_VERIFY_TOKEN", "CHAT_TELEGRAM_SECRET_TOKEN"] {
            anyhow::ensure!(
                std::env::var(name).is_ok_and(|v| !v.trim().is_empty()),
                "{name} must be set (the local default is public)"
            );
        }
        Ok(())
    }
}

impl WebhookArgs {
    pub fn build(self, sdk: &aws_config::SdkConfig) -> anyhow::Result<Webhook> {
        self.secrets.check()?;
        let dynamo = crate::dynamodb(sdk);
        let store = Arc::new(DynamoStore::new(dynamo.clone(), self.tables));
        Ok(Webhook {
            sequencer: store.clone(),
            membership: store.clone(),
            links: store,
            records: Records::new(dynamo, self.connector_table),
            bus: Arc::new(SnsPublisher::new(crate::sns(sdk), self.topic_arn)),
            secrets: self.secrets,
        })
    }
}

/// What a channel told us, before any I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Receipt { channel: Channel, channel_message_id: String, status: ReceiptStatus, at_ms: i64, reason: String },
    Inbound { from: ExternalId, channel_message_id: String, text: String },
}

/// The `webhook` handler: a plain function of (webhook, request).
pub async fn handle(webhook: &Webhook, request: WebhookRequest) -> WebhookResponse {
    let channel = match Channel::parse(request.path.trim_matches('/')) {
        Some(channel) => channel,
        None => return WebhookResponse::new(404, "unknown channel: POST to /whatsapp, /instagram or /telegram"),
    };
    if request.method.eq_ignore_ascii_case("GET") {
        return verify_subscription(&webhook.secrets, channel, &request.query);
    }
    if !request.method.eq_ignore_ascii_case("POST") {
        return WebhookResponse::new(405, "use POST");
    }
    if let Err(reason) = authenticate(&webhook.secrets, channel, &request) {
        tracing::warn!(channel = channel.as_str(), reason, "webhook call refused");
        return WebhookResponse::new(401, reason);
    }
    let notices = match parse(channel, &request.body) {
        Ok(notices) => notices,
        Err(reason) => {
            tracing::warn!(channel = channel.as_str(), reason, "malformed webhook body");
            return WebhookResponse::new(400, reason);
        }
    };
    for notice in notices {
        if let Err(e) = apply(webhook, notice).await {
            tracing::error!(channel = channel.as_str(), error = %e, "webhook notice failed; the channel will retry");
            return WebhookResponse::new(500, "temporarily unable to process; retry");
        }
    }
    WebhookResponse::new(200, "ok")
}

/// Meta's `GET ?hub.mode=subscribe&hub.verify_token=..&hub.challenge=..`.
fn verify_subscription(secrets: &WebhookSecrets, channel: Channel, query: &HashMap<String, String>) -> WebhookResponse {
    if channel == Channel::Telegram {
        return WebhookResponse::new(405, "use POST");
    }
    let (Some(mode), Some(token), Some(challenge)) =
        (query.get("hub.mode"), query.get("hub.verify_token"), query.get("hub.challenge"))
    else {
        return WebhookResponse::new(400, "expected hub.mode, hub.verify_token and hub.challenge");
    };
    if mode == "subscribe" && channels::secrets_equal(token, &secrets.meta_verify_token) {
        WebhookResponse::new(200, challenge.clone())
    } else {
        WebhookResponse::new(403, "verify token mismatch")
    }
}

fn authenticate(secrets: &WebhookSecrets, channel: Channel, request: &WebhookRequest) -> Result<(), String> {
    match channel {
        Channel::WhatsApp | Channel::Instagram => {
            let header = request.headers.get(meta::SIGNATURE_HEADER).ok_or("missing X-Hub-Signature-256 header")?;
            if channels::verify_meta_signature(&secrets.meta_app_secret, &request.body, header) {
                Ok(())
            } else {
                Err("X-Hub-Signature-256 does not match the body".into())
            }
        }
        Channel::Telegram => {
            let header =
                request.headers.get(telegram::SECRET_HEADER).ok_or("missing X-Telegram-Bot-Api-Secret-Token header")?;
            if channels::secrets_equal(header, &secrets.telegram_secret_token) {
                Ok(())
            } else {
                Err("X-Telegram-Bot-Api-Secret-Token does not match".into())
            }
        }
    }
}

fn seconds_ms(timestamp: &str) -> i64 {
    timestamp.parse::<i64>().map(|s| s.saturating_mul(1000)).unwrap_or_else(|_| chat_core::clock::now_ms())
}

/// Reads a channel's webhook body into notices.
pub fn parse(channel: Channel, body: &[u8]) -> Result<Vec<Notice>, String> {
    let malformed = |e: serde_json::Error| format!("body is not a {channel} webhook: {e}");
    let mut notices = Vec::new();
    match channel {
        Channel::WhatsApp => {
            let hook: whatsapp::Webhook = serde_json::from_slice(body).map_err(malformed)?;
            for value in hook.entry.into_iter().flat_map(|e| e.changes).map(|c| c.value) {
                for status in value.statuses {
                    let receipt = match status.status.as_str() {
                        "delivered" => ReceiptStatus::Delivered,
                        "read" => ReceiptStatus::Read,
                        "failed" => ReceiptStatus::Failed,
                        _ => continue, // `sent`: we knew when the API accepted it
                    };
                    let reason = status.errors.first().map(|e| format!("{} (code {})", e.title, e.code));
                    notices.push(Notice::Receipt {
                        channel,
                        channel_message_id: status.id,
                        status: receipt,
                        at_ms: seconds_ms(&status.timestamp),
                        reason: reason.unwrap_or_default(),
                    });
                }
                for message in value.messages {
                    let text = match (message.kind.as_str(), message.text) {
                        ("text", Some(text)) => text.body,
                        (kind, _) => format!("[{kind} message: not supported yet]"),
                    };
                    let from = ExternalId::new(Channel::WhatsApp, &format!("+{}", message.from))?;
                    notices.push(Notice::Inbound { from, channel_message_id: message.id, text });
                }
            }
        }
        Channel::Instagram => {
            let hook: instagram::Webhook = serde_json::from_slice(body).map_err(malformed)?;
            for event in hook.entry.into_iter().flat_map(|e| e.messaging) {
                if let Some(read) = event.read {
                    notices.push(Notice::Receipt {
                        channel,
                        channel_message_id: read.mid,
                        status: ReceiptStatus::Read,
                        at_ms: event.timestamp,
                        reason: String::new(),
                    });
                }
                if let Some(message) = event.message.filter(|m| !m.is_echo) {
                    let from = ExternalId::new(Channel::Instagram, &event.sender.id)?;
                    let text = message.text.unwrap_or_else(|| "[attachment: not supported yet]".into());
                    notices.push(Notice::Inbound { from, channel_message_id: message.mid, text });
                }
            }
        }
        Channel::Telegram => {
            let update: telegram::Update = serde_json::from_slice(body).map_err(malformed)?;
            if let Some(message) = update.message {
                let from = ExternalId::new(Channel::Telegram, &message.chat.id.to_string())?;
                let text = message.text.unwrap_or_else(|| "[non-text message: not supported yet]".into());
                let channel_message_id = format!("{}:{}", message.chat.id, message.message_id);
                notices.push(Notice::Inbound { from, channel_message_id, text });
            }
        }
    }
    Ok(notices)
}

async fn apply(webhook: &Webhook, notice: Notice) -> Result<(), FunctionError> {
    match notice {
        Notice::Receipt { channel, channel_message_id, status, at_ms, reason } => {
            let Some(reference) = webhook.records.reference(channel.as_str(), &channel_message_id).await? else {
                tracing::warn!(
                    channel = channel.as_str(),
                    channel_message_id,
                    "receipt for an unknown message ignored"
                );
                return Ok(());
            };
            // The receipt joins the message's trace: a span of its own,
            // a child of the publish that the connector's send continued.
            let span = if service::telemetry::enabled() {
                let span = tracing::info_span!(
                    parent: None,
                    "webhook.receipt",
                    channel = channel.as_str(),
                    status = ?status,
                    seq = reference.seq,
                    trace_id = tracing::field::Empty
                );
                service::telemetry::set_parent(&span, reference.trace.as_deref());
                span
            } else {
                tracing::Span::none()
            };
            let receipt = ReceiptEvent {
                user_id: reference.user_id,
                status,
                up_to_seq: reference.seq,
                message_id: reference.message_id,
                reason,
                via: channel.as_str().to_owned(),
                recorded: false,
            };
            let envelope = Envelope::new(
                ulid::Ulid::new().to_string(),
                reference.conversation_id,
                format!("webhook-{channel}"),
                at_ms,
                Event::Receipt(receipt),
            )
            .traced(service::telemetry::traceparent(&span));
            Ok(webhook.bus.publish(&[envelope]).instrument(span).await?)
        }
        Notice::Inbound { from, channel_message_id, text } => {
            let sender = from.to_string();
            let Some(conversation_id) = reply_conversation(webhook, &sender).await? else {
                tracing::warn!(sender, "message from an identity in no conversation ignored");
                return Ok(());
            };
            // The channel's text is cut to our limits, not refused: a
            // channel cannot be asked to resend something shorter.
            let body = limits::fit(&text, DEFAULT_MAX_BODY_BYTES);
            let client_message_id = limits::fit(&channel_message_id, MAX_ID_LEN);
            let send = match Send::new(&conversation_id, client_message_id, body, DEFAULT_MAX_BODY_BYTES) {
                Ok(send) => send,
                Err(e) => {
                    // A retry would not fix it: answered, logged, not stored.
                    tracing::warn!(sender, conversation_id, channel_message_id, error = %e, "inbound message refused");
                    return Ok(());
                }
            };
            let origin = format!("webhook-{}", from.channel);
            let accepted = send::accept(webhook.sequencer.as_ref(), &origin, &sender, &send).await?;
            let accepted = send::record(webhook.sequencer.as_ref(), &origin, &sender, &send, accepted).await?;
            let envelope = message_envelope(&origin, &sender, &send, &accepted);
            webhook.bus.publish(&[envelope]).await?;
            tracing::info!(
                sender,
                conversation_id,
                seq = accepted.seq,
                duplicate = accepted.duplicate,
                "inbound message"
            );
            Ok(())
        }
    }
}

/// Where an external identity's message goes: the conversation we last
/// delivered to it (so it answers what it was sent), while it is still a
/// member there; else the conversation it was most recently added to.
async fn reply_conversation(webhook: &Webhook, sender: &str) -> Result<Option<String>, FunctionError> {
    if let Some(conversation_id) = webhook.records.binding(sender).await?
        && webhook.membership.is_member(&conversation_id, sender).await?
    {
        return Ok(Some(conversation_id));
    }
    Ok(webhook.links.bound_conversation(sender).await?)
}

/// A Lambda function URL event as a [`WebhookRequest`].
pub fn from_function_url(
    event: aws_lambda_events::event::lambda_function_urls::LambdaFunctionUrlRequest,
) -> WebhookRequest {
    use base64::Engine;
    let body = event.body.unwrap_or_default();
    let body = if event.is_base64_encoded {
        base64::engine::general_purpose::STANDARD.decode(body.as_bytes()).unwrap_or_default()
    } else {
        body.into_bytes()
    };
    WebhookRequest {
        method: event.request_context.http.method.unwrap_or_default(),
        path: event.raw_path.unwrap_or_default(),
        query: event.query_string_parameters,
        headers: event
            .headers
            .iter()
            .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str().to_ascii_lowercase(), v.to_owned())))
            .collect(),
        body,
    }
}

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_whatsapp_statuses_and_messages() {
        let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{
            "messaging_product":"whatsapp","metadata":{"display_phone_number":"1","phone_number_id":"2"},
            "statuses":[{"id":"wamid.A","status":"read","timestamp":"1700000000","recipient_id":"5511"},
                        {"id":"wamid.B","status":"sent","timestamp":"1700000000","recipient_id":"5511"},
                        {"id":"wamid.C","status":"failed","timestamp":"1700000001","recipient_id":"5511","errors":[{"code":131026,"title":"Message undeliverable"}]}],
            "messages":[{"from":"5511999990000","id":"wamid.D","timestamp":"1700000002","type":"text","text":{"body":"oi"}}]}}]}]}"#;
        let notices = parse(Channel::WhatsApp, body).expect("parses");
        assert_eq!(notices.len(), 3, "`sent` is not news: {notices:?}");
        assert!(matches!(&notices[0], Notice::Receipt { status: ReceiptStatus::Read, at_ms: 1_700_000_000_000, .. }));
        assert!(
            matches!(&notices[1], Notice::Receipt { status: ReceiptStatus::Failed, reason, .. } if reason.contains("undeliverable"))
        );
        match &notices[2] {
            Notice::Inbound { from, text, .. } => {
                assert_eq!(from.to_string(), "whatsapp:+5511999990000");
                assert_eq!(text, "oi");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_telegram_and_instagram() {
        let update = br#"{"update_id":5,"message":{"message_id":9,"date":1,"chat":{"id":123456,"type":"private"},"text":"hello"}}"#;
        let notices = parse(Channel::Telegram, update).expect("parses");
        assert!(matches!(&notices[0], Notice::Inbound { from, channel_message_id, .. }
            if from.to_string() == "telegram:123456" && channel_message_id == "123456:9"));
        let ig = br#"{"object":"instagram","entry":[{"id":"17841","time":1,"messaging":[
            {"sender":{"id":"someuser"},"recipient":{"id":"17841"},"timestamp":5,"read":{"mid":"m_1"}},
            {"sender":{"id":"17841"},"recipient":{"id":"someuser"},"timestamp":6,"message":{"mid":"m_2","text":"echo","is_echo":true}}]}]}"#;
        let notices = parse(Channel::Instagram, ig).expect("parses");
        assert_eq!(notices.len(), 1, "echoes of our own sends are not inbound: {notices:?}");
        assert!(parse(Channel::Telegram, b"{not json").is_err());
    }

    fn secrets() -> WebhookSecrets {
        WebhookSecrets {
            meta_app_secret: "app".into(),
            meta_verify_token: "verify".into(),
            telegram_secret_token: "tg".into(),
        }
    }

    #[test]
    fn signatures_and_tokens_are_checked() {
        let body = br#"{"object":"whatsapp_business_account","entry":[]}"#.to_vec();
        let mut request =
            WebhookRequest { method: "POST".into(), path: "/whatsapp".into(), body, ..Default::default() };
        assert!(authenticate(&secrets(), Channel::WhatsApp, &request).is_err(), "unsigned");
        request.headers.insert(meta::SIGNATURE_HEADER.into(), channels::meta_signature("wrong", &request.body));
        assert!(authenticate(&secrets(), Channel::WhatsApp, &request).is_err(), "wrong secret");
        request.headers.insert(meta::SIGNATURE_HEADER.into(), channels::meta_signature("app", &request.body));
        assert!(authenticate(&secrets(), Channel::WhatsApp, &request).is_ok());
        request.headers.insert(telegram::SECRET_HEADER.into(), "nope".into());
        assert!(authenticate(&secrets(), Channel::Telegram, &request).is_err());
        request.headers.insert(telegram::SECRET_HEADER.into(), "tg".into());
        assert!(authenticate(&secrets(), Channel::Telegram, &request).is_ok());
    }

    #[test]
    fn meta_verification_handshake() {
        let query = |token: &str| {
            HashMap::from([
                ("hub.mode".to_string(), "subscribe".to_string()),
                ("hub.verify_token".to_string(), token.to_string()),
                ("hub.challenge".to_string(), "1158201444".to_string()),
            ])
        };
        assert_eq!(
            verify_subscription(&secrets(), Channel::WhatsApp, &query("verify")),
            WebhookResponse::new(200, "1158201444")
        );
        assert_eq!(verify_subscription(&secrets(), Channel::Instagram, &query("bad")).status, 403);
        assert_eq!(verify_subscription(&secrets(), Channel::WhatsApp, &HashMap::new()).status, 400);
    }
}
