//! `channel-sim`: parse the configuration, set up logging, bind, serve until
//! SIGINT/SIGTERM.

use anyhow::Context;
use channel_sim::SimConfig;
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = SimConfig::parse();
    let _telemetry = service::init_logging(false, "channel-sim");
    let listener =
        tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    tracing::info!(%addr, webhook_url = config.webhook_url.as_deref().unwrap_or(""), "channel simulator listening");
    let shutdown = service::stop_on_signals();
    channel_sim::serve(config, listener, shutdown).await
}
