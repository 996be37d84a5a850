//! `gateway`: parse the configuration, set up logging, bind, run until
//! SIGINT/SIGTERM.

use anyhow::Context;
use clap::Parser;
use gateway::Config;
use gateway::config::LogFormat;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    service::init_logging(config.log_format == LogFormat::Json);
    let listener =
        tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    let shutdown = service::stop_on_signals();
    gateway::run(config, listener, shutdown).await?;
    Ok(())
}
