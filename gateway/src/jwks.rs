//! The identity provider's signing keys: fetched from its JWKS URL, cached,
//! and fetched again when a token names a `kid` the cache does not hold —
//! at most once per `--jwks-min-refresh-secs`, so tokens with made-up key
//! ids cannot make the gateway hammer the provider — and every
//! `--jwks-refresh-secs` regardless, so keys the provider withdrew stop
//! being trusted.
//!
//! Verification itself is `chat_proto::token`'s, pure; this is the thin
//! fetching layer around it. A failed fetch keeps the keys already held.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use chat_proto::token::KeySet;
use tokio::time::Instant;

/// Largest JWKS document read.
const MAX_DOCUMENT_BYTES: usize = 1 << 20;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
#[error("JWKS {url}: {what}")]
pub(crate) struct JwksError {
    url: String,
    what: String,
}

/// When a token with an unknown `kid` may cause a fetch: at most once per
/// `min_interval`.
#[derive(Debug)]
pub(crate) struct RefreshGate {
    min_interval: Duration,
    last: Option<Instant>,
}

impl RefreshGate {
    pub(crate) fn new(min_interval: Duration) -> Self {
        Self { min_interval, last: None }
    }

    /// Whether a fetch may start at `now`; if so, it counts from `now`.
    pub(crate) fn try_start(&mut self, now: Instant) -> bool {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.min_interval => false,
            _ => {
                self.last = Some(now);
                true
            }
        }
    }
}

/// The cached key set and how to fetch it again.
#[derive(Debug)]
pub(crate) struct KeyCache {
    url: String,
    http: reqwest::Client,
    keys: RwLock<Arc<KeySet>>,
    /// Held while an unknown-kid fetch runs, so concurrent tokens naming the
    /// same new key wait for one fetch instead of each starting their own.
    gate: tokio::sync::Mutex<RefreshGate>,
}

impl KeyCache {
    /// Fetches the key set once; a gateway configured with a JWKS URL it
    /// cannot read does not start.
    pub(crate) async fn load(url: &str, min_refresh: Duration) -> Result<Self, JwksError> {
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| JwksError { url: url.to_owned(), what: format!("HTTP client: {e}") })?;
        let keys = fetch(&http, url).await?;
        tracing::info!(jwks_url = url, kids = ?keys.kids(), "identity provider keys loaded");
        Ok(Self {
            url: url.to_owned(),
            http,
            keys: RwLock::new(Arc::new(keys)),
            gate: tokio::sync::Mutex::new(RefreshGate::new(min_refresh)),
        })
    }

    /// The keys held now.
    pub(crate) fn current(&self) -> Arc<KeySet> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Fetches again because a token named `kid`, unless another fetch just
    /// brought it or the last such fetch was too recent.
    pub(crate) async fn refresh_for(&self, kid: &str) {
        let mut gate = self.gate.lock().await;
        if self.current().contains(kid) {
            return;
        }
        if !gate.try_start(Instant::now()) {
            tracing::debug!(kid, "unknown kid; the key set was fetched too recently to fetch again");
            return;
        }
        tracing::info!(kid, "token names an unknown kid; fetching the key set");
        self.refresh().await;
    }

    /// Fetches the key set and replaces the cached one; a failure is logged
    /// and the keys already held stay.
    pub(crate) async fn refresh(&self) {
        match fetch(&self.http, &self.url).await {
            Ok(keys) => {
                tracing::debug!(kids = ?keys.kids(), "identity provider keys refreshed");
                *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
            }
            Err(e) => tracing::warn!(error = %e, "fetching the identity provider's keys failed; keeping the old ones"),
        }
    }
}

/// GETs and reads a JWKS document (bounded), keeping its usable keys.
async fn fetch(http: &reqwest::Client, url: &str) -> Result<KeySet, JwksError> {
    let fail = |what: String| JwksError { url: url.to_owned(), what };
    let mut response = http
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| fail(e.to_string()))?;
    if response.content_length().is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64) {
        return Err(fail(format!("document over {MAX_DOCUMENT_BYTES} bytes")));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| fail(e.to_string()))? {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(fail(format!("document over {MAX_DOCUMENT_BYTES} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    let (keys, skipped) = KeySet::from_json(&body).map_err(|e| fail(e.to_string()))?;
    for why in &skipped {
        tracing::warn!(jwks_url = url, why, "JWKS key not trusted");
    }
    if keys.is_empty() {
        return Err(fail("no usable signing key (RSA or EC P-256 with a kid)".into()));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn unknown_kid_fetches_are_spaced_by_the_minimum_interval() {
        let mut gate = RefreshGate::new(Duration::from_secs(30));
        let start = Instant::now();
        assert!(gate.try_start(start), "the first fetch may start");
        assert!(!gate.try_start(start));
        assert!(!gate.try_start(start + Duration::from_secs(29)));
        assert!(gate.try_start(start + Duration::from_secs(30)));
        assert!(!gate.try_start(start + Duration::from_secs(31)));
        // A clock that seems to go back does not open the gate.
        assert!(!gate.try_start(start));
    }
}
