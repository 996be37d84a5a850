//! `gateway`: parse the configuration, set up logging, bind, run until
//! SIGINT/SIGTERM.

use anyhow::Context;
use clap::Parser;
use gateway::Config;
use gateway::config::LogFormat;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut config = Config::parse();
    // Resolved first, so traces name this gateway (`service.instance.id`).
    let instance_id = gateway::instance_id(&config)?;
    config.instance_id = Some(instance_id.clone());
    let _telemetry = service::telemetry::init(config.log_format == LogFormat::Json, "gateway", Some(&instance_id));
    let listener =
        tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    let shutdown = service::stop_on_signals();
    gateway::run(config, listener, shutdown).await?;
    Ok(())
}
