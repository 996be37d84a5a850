//! `chat serve-web`: serves the web app's built files on a local listener,
//! with the `config.json` that tells the page where the gateways are, and,
//! with `--dev-tokens`, development tokens minted with the local secret at
//! `/dev/token?user=NAME` (what the page's development sign-in asks for).
//!
//! For `make run` and the browser tests. In production the files sit behind
//! any static host or CDN with a `config.json` beside them, and tokens come
//! from the identity provider: development tokens are refused off loopback.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::Args;

use crate::SecretArgs;

#[derive(Debug, Args)]
pub(crate) struct ServeWebArgs {
    /// Address to serve on (a port of 0 picks a free one; the URL is printed).
    #[arg(long, env = "CHAT_WEB_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The built web app (`web/dist`, or `web/dist-dev` for development
    /// sign-in).
    #[arg(long, default_value = "web/dist")]
    dir: PathBuf,
    /// Gateway gRPC-Web URLs the page connects to, in order of preference
    /// (comma-separated or repeated). Each must allow this page's origin
    /// (the gateway's `--cors-allow-origin`).
    #[arg(long = "gateway", short = 'g', env = "CHAT_GATEWAYS", value_delimiter = ',', required = true)]
    gateways: Vec<String>,
    /// Mint development tokens at `/dev/token?user=NAME` with the local
    /// secret. Only on a loopback address.
    #[arg(long)]
    dev_tokens: bool,
    #[command(flatten)]
    secret: SecretArgs,
}

/// Longest development token asked for (`ttl_secs`), and the default.
const MAX_TOKEN_TTL_SECS: u64 = 24 * 3600;
const DEFAULT_TOKEN_TTL_SECS: u64 = 3600;

struct Web {
    config: serde_json::Value,
    secret: Option<SecretArgs>,
}

pub(crate) async fn serve(args: ServeWebArgs) -> anyhow::Result<()> {
    let _telemetry = service::init_logging(false, "chat-web");
    if args.dev_tokens && !args.listen.ip().is_loopback() {
        bail!("--dev-tokens mints tokens for anyone who asks: it serves on loopback only, not {}", args.listen);
    }
    if !args.dir.join("index.html").is_file() {
        bail!("{} has no index.html: build the web app first (make web)", args.dir.display());
    }
    let web = Arc::new(Web {
        config: serde_json::json!({ "gateways": args.gateways, "devSignIn": args.dev_tokens }),
        secret: args.dev_tokens.then_some(args.secret),
    });
    let app = axum::Router::new()
        .route("/config.json", get(config))
        .route("/dev/token", get(dev_token))
        .fallback_service(tower_http::services::ServeDir::new(&args.dir))
        .with_state(web);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding the web listener on {}", args.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(url = %format!("http://{addr}/"), dir = %args.dir.display(), dev_tokens = args.dev_tokens, "serving the web app");
    let stop = service::stop_on_signals();
    axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await?;
    Ok(())
}

async fn config(State(web): State<Arc<Web>>) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(web.config.clone())).into_response()
}

#[derive(serde::Deserialize)]
struct TokenQuery {
    user: String,
    ttl_secs: Option<u64>,
}

async fn dev_token(State(web): State<Arc<Web>>, Query(query): Query<TokenQuery>) -> Response {
    let Some(secret) = &web.secret else {
        return (StatusCode::NOT_FOUND, "development tokens are off (serve-web --dev-tokens)").into_response();
    };
    if let Err(why) = check_user(&query.user) {
        return (StatusCode::BAD_REQUEST, why).into_response();
    }
    let ttl = query.ttl_secs.unwrap_or(DEFAULT_TOKEN_TTL_SECS).clamp(1, MAX_TOKEN_TTL_SECS);
    match secret.mint(&query.user, Duration::from_secs(ttl)) {
        Ok(token) => {
            let expires_at_ms = chat_proto::token::unverified_expiry(&token).unwrap_or(0).saturating_mul(1000);
            let body = serde_json::json!({ "token": token, "expires_at_ms": expires_at_ms });
            ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "minting a development token failed");
            (StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")).into_response()
        }
    }
}

/// A user name as a development sign-in takes it: what the gateway accepts
/// as a user id, short and plain, so the page can put it in a URL.
fn check_user(user: &str) -> Result<(), String> {
    let plain = user.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if user.is_empty() || user.len() > 64 || !plain {
        return Err(format!("user {user:?}: 1 to 64 letters, digits, '-', '_' or '.'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn development_user_names_are_plain() {
        assert!(check_user("alice").is_ok());
        assert!(check_user("bob.smith-2_x").is_ok());
        for bad in ["", "a b", "ali/ce", "<script>", &"x".repeat(65)] {
            assert!(check_user(bad).is_err(), "{bad:?}");
        }
    }
}
