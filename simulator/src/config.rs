//! The simulator's configuration: flags, each with an environment fallback
//! so `make run` and the end-to-end harness can configure it either way.
//! The defaults are the local credentials the rest of the platform uses.

use std::net::{Ipv4Addr, SocketAddr};

use clap::Parser;

const DEFAULT_WHATSAPP_TOKEN: &str = "local-whatsapp-token";
const DEFAULT_WHATSAPP_PHONE_NUMBER_ID: &str = "100000000000001";
const DEFAULT_INSTAGRAM_TOKEN: &str = "local-instagram-token";
const DEFAULT_INSTAGRAM_USER_ID: &str = "17841400000000001";
const DEFAULT_TELEGRAM_BOT_TOKEN: &str = "local-telegram-bot-token";
const DEFAULT_META_APP_SECRET: &str = "local-meta-app-secret";
const DEFAULT_TELEGRAM_SECRET_TOKEN: &str = "local-telegram-secret";
const DEFAULT_RECEIPT_DELAY_MS: u64 = 20;

#[derive(Debug, Clone, Parser)]
#[command(name = "channel-sim", version, about = "Local WhatsApp/Instagram/Telegram stand-in for the chat platform")]
pub struct SimConfig {
    /// Address to listen on.
    #[arg(long, env = "CHAT_SIM_LISTEN", default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// The bearer token WhatsApp sends must carry.
    #[arg(long, env = "CHAT_SIM_WHATSAPP_TOKEN", default_value = DEFAULT_WHATSAPP_TOKEN)]
    pub whatsapp_token: String,
    /// The business phone number id WhatsApp sends are addressed to.
    #[arg(long, env = "CHAT_SIM_WHATSAPP_PHONE_NUMBER_ID", default_value = DEFAULT_WHATSAPP_PHONE_NUMBER_ID)]
    pub whatsapp_phone_number_id: String,
    /// The bearer token Instagram sends must carry.
    #[arg(long, env = "CHAT_SIM_INSTAGRAM_TOKEN", default_value = DEFAULT_INSTAGRAM_TOKEN)]
    pub instagram_token: String,
    /// The Instagram professional account id sends are addressed to.
    #[arg(long, env = "CHAT_SIM_INSTAGRAM_USER_ID", default_value = DEFAULT_INSTAGRAM_USER_ID)]
    pub instagram_user_id: String,
    /// The bot token in Telegram's `/bot{token}/` paths.
    #[arg(long, env = "CHAT_SIM_TELEGRAM_BOT_TOKEN", default_value = DEFAULT_TELEGRAM_BOT_TOKEN)]
    pub telegram_bot_token: String,
    /// Base URL of the webhook; callbacks go to `{base}/whatsapp`,
    /// `{base}/instagram` and `{base}/telegram`. Unset: no callbacks.
    #[arg(long, env = "CHAT_SIM_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// Signs WhatsApp and Instagram callbacks (`X-Hub-Signature-256`).
    #[arg(long, env = "CHAT_SIM_META_APP_SECRET", default_value = DEFAULT_META_APP_SECRET)]
    pub meta_app_secret: String,
    /// Sent as `X-Telegram-Bot-Api-Secret-Token` on Telegram callbacks.
    #[arg(long, env = "CHAT_SIM_TELEGRAM_SECRET_TOKEN", default_value = DEFAULT_TELEGRAM_SECRET_TOKEN)]
    pub telegram_secret_token: String,
    /// Pause before each receipt callback.
    #[arg(long, env = "CHAT_SIM_RECEIPT_DELAY_MS", default_value_t = DEFAULT_RECEIPT_DELAY_MS)]
    pub receipt_delay_ms: u64,
}

impl SimConfig {
    /// `{webhook_url}/{channel}`, or `None` when no webhook is configured.
    pub fn webhook_endpoint(&self, channel: &str) -> Option<String> {
        self.webhook_url.as_deref().map(|base| format!("{}/{channel}", base.trim_end_matches('/')))
    }
}

/// The flag defaults, without reading the environment (for tests and
/// embedding).
impl Default for SimConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8090)),
            whatsapp_token: DEFAULT_WHATSAPP_TOKEN.into(),
            whatsapp_phone_number_id: DEFAULT_WHATSAPP_PHONE_NUMBER_ID.into(),
            instagram_token: DEFAULT_INSTAGRAM_TOKEN.into(),
            instagram_user_id: DEFAULT_INSTAGRAM_USER_ID.into(),
            telegram_bot_token: DEFAULT_TELEGRAM_BOT_TOKEN.into(),
            webhook_url: None,
            meta_app_secret: DEFAULT_META_APP_SECRET.into(),
            telegram_secret_token: DEFAULT_TELEGRAM_SECRET_TOKEN.into(),
            receipt_delay_ms: DEFAULT_RECEIPT_DELAY_MS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_defaults_match_default_impl() {
        let parsed = SimConfig::parse_from(["channel-sim", "--webhook-url", "http://127.0.0.1:9000/hooks/"]);
        let default = SimConfig::default();
        // The environment of the test run may set CHAT_SIM_*; compare only
        // when it does not.
        if std::env::vars().all(|(k, _)| !k.starts_with("CHAT_SIM_")) {
            assert_eq!(parsed.listen, default.listen);
            assert_eq!(parsed.whatsapp_token, default.whatsapp_token);
            assert_eq!(parsed.whatsapp_phone_number_id, default.whatsapp_phone_number_id);
            assert_eq!(parsed.instagram_user_id, default.instagram_user_id);
            assert_eq!(parsed.telegram_bot_token, default.telegram_bot_token);
            assert_eq!(parsed.receipt_delay_ms, 20);
        }
        assert_eq!(parsed.webhook_endpoint("telegram").as_deref(), Some("http://127.0.0.1:9000/hooks/telegram"));
        assert_eq!(default.webhook_endpoint("telegram"), None);
    }

    #[test]
    fn command_definition_is_valid() {
        use clap::CommandFactory;
        SimConfig::command().debug_assert();
    }
}
