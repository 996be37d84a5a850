//! One adapter per channel: how to ask its API to send a text, and what its
//! answer means. Building requests and reading answers are plain functions
//! of bytes, tested without a network.

use std::time::Duration;

use channels::{instagram, meta, telegram, whatsapp};
use chat_core::external::Channel;

/// Where and how to reach one channel's API.
#[derive(Debug, Clone, clap::Args)]
pub struct ChannelApis {
    /// Base URL of the WhatsApp Cloud API (the Graph API host).
    #[arg(long, env = "CHAT_WHATSAPP_API_URL", default_value = "http://127.0.0.1:8090")]
    pub whatsapp_api_url: String,
    #[arg(long, env = "CHAT_WHATSAPP_API_VERSION", default_value = "v21.0")]
    pub whatsapp_api_version: String,
    /// The business phone number id messages are sent from.
    #[arg(long, env = "CHAT_WHATSAPP_PHONE_NUMBER_ID", default_value = "100000000000001")]
    pub whatsapp_phone_number_id: String,
    #[arg(long, env = "CHAT_WHATSAPP_TOKEN", default_value = "local-whatsapp-token", hide_env_values = true)]
    pub whatsapp_token: String,
    /// Base URL of the Instagram messaging API (the Graph API host).
    #[arg(long, env = "CHAT_INSTAGRAM_API_URL", default_value = "http://127.0.0.1:8090")]
    pub instagram_api_url: String,
    #[arg(long, env = "CHAT_INSTAGRAM_API_VERSION", default_value = "v21.0")]
    pub instagram_api_version: String,
    /// The professional account id messages are sent from.
    #[arg(long, env = "CHAT_INSTAGRAM_USER_ID", default_value = "17841400000000001")]
    pub instagram_user_id: String,
    #[arg(long, env = "CHAT_INSTAGRAM_TOKEN", default_value = "local-instagram-token", hide_env_values = true)]
    pub instagram_token: String,
    /// Base URL of the Telegram Bot API.
    #[arg(long, env = "CHAT_TELEGRAM_API_URL", default_value = "http://127.0.0.1:8090")]
    pub telegram_api_url: String,
    #[arg(long, env = "CHAT_TELEGRAM_BOT_TOKEN", default_value = "local-telegram-bot-token", hide_env_values = true)]
    pub telegram_bot_token: String,
}

/// A send the channel accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub channel_message_id: String,
}

/// A send the channel refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Throttling, a server error or a timeout: try again later.
    Retryable { reason: String, retry_after: Option<Duration> },
    /// The channel will never take this message (bad recipient, policy).
    Permanent { reason: String },
}

/// An outbound HTTP call, independent of the HTTP client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiRequest {
    pub url: String,
    pub bearer: Option<String>,
    pub body: Vec<u8>,
}

/// What an adapter knows of its channel.
#[derive(Debug, Clone)]
pub struct Adapter {
    pub channel: Channel,
    apis: ChannelApis,
}

impl Adapter {
    pub fn new(channel: Channel, apis: ChannelApis) -> Self {
        Self { channel, apis }
    }

    /// Whether an accepted send is final news: channels that report no
    /// delivery receipts (Instagram, Telegram) count it as DELIVERED;
    /// WhatsApp reports `delivered` through the webhook.
    pub fn delivered_on_accept(&self) -> bool {
        self.channel != Channel::WhatsApp
    }

    /// The request that sends `text` to `address`; `callback` is echoed in
    /// the channel's receipts where it supports that (WhatsApp).
    pub fn request(&self, address: &str, text: &str, callback: &str) -> Result<ApiRequest, SendError> {
        let apis = &self.apis;
        let encode = |body: Result<Vec<u8>, serde_json::Error>| {
            body.map_err(|e| SendError::Permanent { reason: format!("cannot encode the request: {e}") })
        };
        Ok(match self.channel {
            Channel::WhatsApp => ApiRequest {
                url: join(
                    &apis.whatsapp_api_url,
                    &whatsapp::messages_path(&apis.whatsapp_api_version, &apis.whatsapp_phone_number_id),
                ),
                bearer: Some(apis.whatsapp_token.clone()),
                body: encode(serde_json::to_vec(&whatsapp::SendRequest::text(address, text, callback)))?,
            },
            Channel::Instagram => ApiRequest {
                url: join(
                    &apis.instagram_api_url,
                    &instagram::messages_path(&apis.instagram_api_version, &apis.instagram_user_id),
                ),
                bearer: Some(apis.instagram_token.clone()),
                body: encode(serde_json::to_vec(&instagram::SendRequest::text(address, text)))?,
            },
            Channel::Telegram => {
                let chat_id: i64 = address.parse().map_err(|_| SendError::Permanent {
                    reason: format!("telegram chat id {address:?} is not an integer"),
                })?;
                ApiRequest {
                    url: join(&apis.telegram_api_url, &telegram::send_message_path(&apis.telegram_bot_token)),
                    bearer: None,
                    body: encode(serde_json::to_vec(&telegram::SendMessage { chat_id, text: text.to_owned() }))?,
                }
            }
        })
    }

    /// Reads the channel's answer to a send.
    pub fn outcome(&self, status: u16, body: &[u8], retry_after_header: Option<&str>) -> Result<Sent, SendError> {
        let header_wait = retry_after_header.and_then(|v| v.trim().parse::<u64>().ok()).map(Duration::from_secs);
        match self.channel {
            Channel::WhatsApp => meta_outcome(status, body, header_wait, |body| {
                let sent: whatsapp::SendResponse = serde_json::from_slice(body).ok()?;
                sent.messages.into_iter().next().map(|m| m.id)
            }),
            Channel::Instagram => meta_outcome(status, body, header_wait, |body| {
                serde_json::from_slice::<instagram::SendResponse>(body).ok().map(|s| s.message_id)
            }),
            Channel::Telegram => telegram_outcome(status, body, header_wait),
        }
    }
}

fn join(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}

/// Throttling, timeouts and server errors pass; so do 401/403: a rejected
/// credential is an operator's problem (an expired or rotated token), and
/// the messages must survive until it is fixed, not be declared FAILED.
fn is_retryable_status(status: u16) -> bool {
    matches!(status, 401 | 403 | 408 | 429) || status >= 500
}

fn meta_outcome(
    status: u16,
    body: &[u8],
    retry_after: Option<Duration>,
    message_id: impl Fn(&[u8]) -> Option<String>,
) -> Result<Sent, SendError> {
    if (200..300).contains(&status) {
        // Accepted: never sent again, even if the id is missing (its
        // receipts then cannot be matched, a lesser harm than a duplicate).
        let channel_message_id = message_id(body).unwrap_or_else(|| {
            tracing::warn!(status, "the channel accepted a send without a message id");
            String::new()
        });
        return Ok(Sent { channel_message_id });
    }
    let error = serde_json::from_slice::<meta::ErrorResponse>(body).ok().map(|e| e.error);
    let reason = match &error {
        Some(e) => format!("HTTP {status}: {} (code {})", e.message, e.code),
        None => format!("HTTP {status}: {}", String::from_utf8_lossy(body).chars().take(200).collect::<String>()),
    };
    let throttled = error.as_ref().is_some_and(|e| meta::THROTTLING_CODES.contains(&e.code));
    if throttled || is_retryable_status(status) {
        Err(SendError::Retryable { reason, retry_after })
    } else {
        Err(SendError::Permanent { reason })
    }
}

fn telegram_outcome(status: u16, body: &[u8], retry_after: Option<Duration>) -> Result<Sent, SendError> {
    let answer = serde_json::from_slice::<telegram::ApiResponse<telegram::Message>>(body).ok();
    if let Some(telegram::ApiResponse { ok: true, result, .. }) = &answer {
        let channel_message_id = result.as_ref().map(|m| format!("{}:{}", m.chat.id, m.message_id)).unwrap_or_default();
        return Ok(Sent { channel_message_id });
    }
    // A blank description would leave a failed message with no reason.
    let description = answer.as_ref().and_then(|a| a.description.clone()).filter(|d| !d.trim().is_empty());
    let description = description.unwrap_or_else(|| {
        format!("HTTP {status}: {}", String::from_utf8_lossy(body).chars().take(200).collect::<String>())
    });
    let code = answer.as_ref().and_then(|a| a.error_code).and_then(|c| u16::try_from(c).ok()).unwrap_or(status);
    let wait = answer
        .as_ref()
        .and_then(|a| a.parameters.as_ref())
        .and_then(|p| p.retry_after)
        .map(Duration::from_secs)
        .or(retry_after);
    if is_retryable_status(code) || (200..300).contains(&status) && answer.is_none() {
        Err(SendError::Retryable { reason: description, retry_after: wait })
    } else {
        Err(SendError::Permanent { reason: description })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Args {
        #[command(flatten)]
        apis: ChannelApis,
    }

    fn adapter(channel: Channel) -> Adapter {
        Adapter::new(channel, Args::parse_from(["test"]).apis)
    }

    #[test]
    fn requests_have_each_apis_shape() {
        let wa = adapter(Channel::WhatsApp).request("+5511999990000", "hi", "ref-1").expect("request");
        assert!(wa.url.ends_with("/v21.0/100000000000001/messages"), "{}", wa.url);
        assert_eq!(wa.bearer.as_deref(), Some("local-whatsapp-token"));
        let body: serde_json::Value = serde_json::from_slice(&wa.body).expect("json");
        assert_eq!(body["to"], "5511999990000");
        assert_eq!(body["text"]["body"], "hi");
        assert_eq!(body["biz_opaque_callback_data"], "ref-1");
        let tg = adapter(Channel::Telegram).request("-100200", "hi", "").expect("request");
        assert!(tg.url.ends_with("/botlocal-telegram-bot-token/sendMessage"));
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&tg.body).expect("json")["chat_id"], -100200);
        let ig = adapter(Channel::Instagram).request("someuser", "hi", "").expect("request");
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&ig.body).expect("json")["recipient"]["id"], "someuser");
    }

    #[test]
    fn meta_answers_are_classified() {
        let wa = adapter(Channel::WhatsApp);
        let ok = br#"{"messaging_product":"whatsapp","contacts":[],"messages":[{"id":"wamid.1"}]}"#;
        assert_eq!(wa.outcome(200, ok, None), Ok(Sent { channel_message_id: "wamid.1".into() }));
        let throttled = br#"{"error":{"message":"Rate limit hit","type":"OAuthException","code":130429}}"#;
        assert!(matches!(wa.outcome(400, throttled, None), Err(SendError::Retryable { .. })));
        let server = br#"{"error":{"message":"unknown","code":1}}"#;
        assert!(
            matches!(wa.outcome(503, server, Some("2")), Err(SendError::Retryable { retry_after: Some(d), .. }) if d == Duration::from_secs(2))
        );
        let undeliverable = br#"{"error":{"message":"Message undeliverable","code":131026}}"#;
        match wa.outcome(400, undeliverable, None) {
            Err(SendError::Permanent { reason }) => assert!(reason.contains("Message undeliverable"), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(wa.outcome(502, b"<html>bad gateway</html>", None), Err(SendError::Retryable { .. })));
        let expired = br#"{"error":{"message":"Invalid OAuth access token.","code":190}}"#;
        assert!(matches!(wa.outcome(401, expired, None), Err(SendError::Retryable { .. })), "credentials are fixable");
        assert_eq!(wa.outcome(200, b"{}", None), Ok(Sent { channel_message_id: String::new() }), "accepted is sent");
    }

    #[test]
    fn telegram_answers_are_classified() {
        let tg = adapter(Channel::Telegram);
        let ok = br#"{"ok":true,"result":{"message_id":7,"date":1,"chat":{"id":42,"type":"private"},"text":"hi"}}"#;
        assert_eq!(tg.outcome(200, ok, None), Ok(Sent { channel_message_id: "42:7".into() }));
        let flood = br#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 3","parameters":{"retry_after":3}}"#;
        assert!(
            matches!(tg.outcome(429, flood, None), Err(SendError::Retryable { retry_after: Some(d), .. }) if d == Duration::from_secs(3))
        );
        let missing = br#"{"ok":false,"error_code":400,"description":"Bad Request: chat not found"}"#;
        assert_eq!(
            tg.outcome(400, missing, None),
            Err(SendError::Permanent { reason: "Bad Request: chat not found".into() })
        );
        assert!(matches!(tg.request("abc", "x", ""), Err(SendError::Permanent { .. })));
    }

    #[test]
    fn a_blank_telegram_description_still_gives_a_reason() {
        let blank = br#"{"ok":false,"error_code":400,"description":" "}"#;
        assert_eq!(
            adapter(Channel::Telegram).outcome(400, blank, None),
            Err(SendError::Permanent { reason: r#"HTTP 400: {"ok":false,"error_code":400,"description":" "}"#.into() })
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// A channel's answer: its documented shapes with any values, or
        /// anything at all.
        fn answer() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..64),
                (any::<String>(), any::<i64>()).prop_map(|(message, code)| {
                    serde_json::json!({"error": {"message": message, "code": code}}).to_string().into_bytes()
                }),
                (any::<bool>(), any::<i64>(), any::<u64>(), any::<i64>(), any::<String>()).prop_map(|(ok, code, wait, id, description)| {
                    serde_json::json!({"ok": ok, "error_code": code, "description": description, "parameters": {"retry_after": wait},
                        "result": {"message_id": id, "date": 0, "chat": {"id": id, "type": "private"}}})
                    .to_string()
                    .into_bytes()
                }),
                any::<String>().prop_map(|id| serde_json::json!({"messaging_product": "whatsapp", "messages": [{"id": id}]})
                    .to_string()
                    .into_bytes()),
            ]
        }

        proptest! {
            /// Any answer is read as sent, retryable or permanent; a Meta 2xx
            /// is always sent (never sent twice), anything else never is.
            #[test]
            fn any_answer_is_classified(
                channel in prop::sample::select(Channel::ALL.to_vec()),
                status in prop_oneof![any::<u16>(), 200..300u16, Just(429u16)],
                body in answer(),
                header in prop::option::of(prop_oneof![any::<String>(), any::<u64>().prop_map(|n| n.to_string())]),
            ) {
                let outcome = adapter(channel).outcome(status, &body, header.as_deref());
                let success = (200..300).contains(&status);
                match channel {
                    Channel::WhatsApp | Channel::Instagram => prop_assert_eq!(outcome.is_ok(), success),
                    Channel::Telegram => {
                        let ok = serde_json::from_slice::<telegram::ApiResponse<telegram::Message>>(&body).is_ok_and(|a| a.ok);
                        prop_assert_eq!(outcome.is_ok(), ok);
                    }
                }
                if let Err(SendError::Retryable { reason, .. } | SendError::Permanent { reason }) = outcome {
                    prop_assert!(!reason.is_empty());
                }
            }
        }
    }
}
