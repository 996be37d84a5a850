//! Posting callbacks to the webhook: authenticated the way each channel
//! authenticates its webhooks, and retried a few times on failure as the
//! real channels retry, so the webhook's idempotency gets exercised.

use std::time::Duration;

use axum::http::header::CONTENT_TYPE;
use tokio_util::sync::CancellationToken;

use crate::channel::Channel;
use crate::config::SimConfig;

/// The first try and three retries.
pub(crate) const MAX_ATTEMPTS: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// How long to wait after failed attempt `attempt` (1-based): doubling from
/// 50 ms, short enough for tests, spaced enough for a webhook restart.
pub(crate) fn backoff(attempt: u32) -> Duration {
    FIRST_BACKOFF.saturating_mul(1 << attempt.saturating_sub(1).min(10))
}

/// The headers authenticating a webhook body, as the channel sends them.
pub(crate) fn auth_headers(channel: Channel, config: &SimConfig, body: &[u8]) -> [(&'static str, String); 1] {
    match channel {
        Channel::WhatsApp | Channel::Instagram => {
            [(channels::meta::SIGNATURE_HEADER, channels::meta_signature(&config.meta_app_secret, body))]
        }
        Channel::Telegram => [(channels::telegram::SECRET_HEADER, config.telegram_secret_token.clone())],
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Delivery {
    /// The last answer; 0 if the webhook never answered.
    pub(crate) http_status: u16,
    pub(crate) attempts: u32,
}

impl Delivery {
    pub(crate) fn ok(&self) -> bool {
        (200..300).contains(&self.http_status)
    }
}

/// Posts `body` until the webhook answers 2xx, `MAX_ATTEMPTS` are spent,
/// or `stop` is cancelled.
pub(crate) async fn post(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&'static str, String)],
    body: Vec<u8>,
    stop: &CancellationToken,
) -> Delivery {
    let mut delivery = Delivery { http_status: 0, attempts: 0 };
    for attempt in 1..=MAX_ATTEMPTS {
        let mut request = client.post(url).header(CONTENT_TYPE, "application/json").body(body.clone());
        for (name, value) in headers {
            request = request.header(*name, value.as_str());
        }
        delivery.attempts = attempt;
        let answer = tokio::select! {
            answer = request.send() => answer,
            () = stop.cancelled() => return delivery,
        };
        match answer {
            Ok(response) => {
                delivery.http_status = response.status().as_u16();
                if delivery.ok() {
                    return delivery;
                }
                tracing::warn!(url, attempt, status = delivery.http_status, "webhook refused a callback");
            }
            Err(e) => tracing::warn!(url, attempt, error = %e, "webhook unreachable"),
        }
        if attempt < MAX_ATTEMPTS {
            tokio::select! {
                () = tokio::time::sleep(backoff(attempt)) => {}
                () = stop.cancelled() => return delivery,
            }
        }
    }
    delivery
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_fifty_millis() {
        assert_eq!([1, 2, 3].map(backoff), [50, 100, 200].map(Duration::from_millis));
        assert!(backoff(u32::MAX) <= Duration::from_millis(50 << 10));
    }

    #[test]
    fn meta_bodies_are_signed_and_telegram_carries_the_secret() {
        let config = SimConfig::default();
        let body = br#"{"object":"instagram"}"#;
        let [(name, value)] = auth_headers(Channel::Instagram, &config, body);
        assert_eq!(name, "x-hub-signature-256");
        assert!(channels::verify_meta_signature(&config.meta_app_secret, body, &value));
        let [(name, value)] = auth_headers(Channel::Telegram, &config, body);
        assert_eq!((name, value.as_str()), ("x-telegram-bot-api-secret-token", "local-telegram-secret"));
    }

    #[test]
    fn only_2xx_counts_as_delivered() {
        assert!(Delivery { http_status: 204, attempts: 1 }.ok());
        assert!(!Delivery { http_status: 0, attempts: 4 }.ok());
        assert!(!Delivery { http_status: 500, attempts: 4 }.ok());
    }
}
