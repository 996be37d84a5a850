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
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A public EC JWK (two made-up coordinates: loading does not check the
    /// point, and nothing here verifies a signature).
    fn jwk(kid: &str) -> serde_json::Value {
        let coordinate = |b: u8| base64_url(&[b; 32]);
        serde_json::json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": coordinate(1), "y": coordinate(2)})
    }

    fn base64_url(bytes: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A JWKS server on a loopback port: `/jwks` answers with what `serve`
    /// holds (status and body) and counts requests.
    struct Server {
        url: String,
        serve: Arc<std::sync::Mutex<(u16, String)>>,
        hits: Arc<AtomicUsize>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Server {
        async fn start(status: u16, body: String) -> Self {
            let serve = Arc::new(std::sync::Mutex::new((status, body)));
            let hits = Arc::new(AtomicUsize::new(0));
            let (state, counter) = (serve.clone(), hits.clone());
            let app = axum::Router::new().route(
                "/jwks",
                axum::routing::get(move || {
                    let (state, counter) = (state.clone(), counter.clone());
                    async move {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let (status, body) = state.lock().map(|s| s.clone()).unwrap_or((500, String::new()));
                        let status = axum::http::StatusCode::from_u16(status).unwrap_or(axum::http::StatusCode::OK);
                        (status, body)
                    }
                }),
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let url = format!("http://{}/jwks", listener.local_addr().expect("addr"));
            let task = tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            Self { url, serve, hits, task }
        }

        fn answer(&self, status: u16, body: String) {
            *self.serve.lock().expect("lock") = (status, body);
        }

        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    fn set(kids: &[&str]) -> String {
        serde_json::json!({ "keys": kids.iter().map(|k| jwk(k)).collect::<Vec<_>>() }).to_string()
    }

    #[tokio::test]
    async fn unreadable_key_sets_stop_the_load() {
        let big = format!("{{\"keys\": [], \"pad\": \"{}\"}}", "x".repeat(MAX_DOCUMENT_BYTES));
        let cases = [
            (404, set(&["k1"])),
            (500, set(&["k1"])),
            (200, "not json".to_string()),
            (200, "{\"keys\": []}".to_string()),
            (200, serde_json::json!({"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]}).to_string()),
            (200, big),
        ];
        for (status, body) in cases {
            let server = Server::start(status, body.clone()).await;
            let loaded = KeyCache::load(&server.url, Duration::from_secs(30)).await;
            assert!(loaded.is_err(), "{status} {}", &body[..body.len().min(80)]);
        }
        assert!(KeyCache::load("http://127.0.0.1:1/jwks", Duration::from_secs(30)).await.is_err());
        assert!(KeyCache::load("not a url", Duration::from_secs(30)).await.is_err());
    }

    #[tokio::test]
    async fn unknown_kids_fetch_once_per_interval_and_failures_keep_the_keys() {
        let server = Server::start(200, set(&["k1"])).await;
        let cache = KeyCache::load(&server.url, Duration::from_secs(3600)).await.expect("load");
        assert_eq!((cache.current().kids(), server.hits()), (vec!["k1".to_string()], 1));
        // A kid already held fetches nothing.
        cache.refresh_for("k1").await;
        assert_eq!(server.hits(), 1);
        // The first unknown kid fetches; the next ones within the interval
        // do not, even once the provider has their key.
        server.answer(200, set(&["k1", "k2"]));
        cache.refresh_for("k2").await;
        assert_eq!((cache.current().kids().len(), server.hits()), (2, 2));
        server.answer(200, set(&["k1", "k2", "k3"]));
        cache.refresh_for("k3").await;
        cache.refresh_for("made-up").await;
        assert_eq!((cache.current().contains("k3"), server.hits()), (false, 2));
        // The periodic refresh is not gated; a failed one keeps the keys.
        cache.refresh().await;
        assert!(cache.current().contains("k3"));
        server.answer(503, String::new());
        cache.refresh().await;
        server.answer(200, "{\"keys\": []}".to_string());
        cache.refresh().await;
        assert_eq!(cache.current().kids(), vec!["k1".to_string(), "k2".to_string(), "k3".to_string()]);
        assert_eq!(server.hits(), 5);
    }

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
