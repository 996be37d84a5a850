//! `channel-sim`: a local stand-in for the WhatsApp Cloud API, Instagram
//! messaging and the Telegram Bot API, so the platform can run and be tested
//! end to end without real accounts.
//!
//! It answers the send endpoints the `connector` calls with the channels'
//! real success and error shapes (the types of the `channels` crate),
//! records every send, injects faults on demand (latency, queued failures,
//! permanently failing recipients) and calls the `webhook` back with signed
//! receipts and inbound messages. A JSON control API under `/_sim/` drives
//! it; its bodies are the types of [`control`].

pub mod channel;
mod config;
pub mod control;
mod delivery;
mod faults;
mod payloads;
mod server;
mod sim;
mod wire;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

pub use channel::{Channel, ReceiptMode};
pub use config::SimConfig;
pub use server::router;
pub use sim::Simulator;

/// Serves the simulator on `listener` until `shutdown` is cancelled, then
/// lets in-flight requests finish and drops pending callbacks.
pub async fn serve(
    config: SimConfig,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let sim = Arc::new(Simulator::new(config)?);
    let app = router(Arc::clone(&sim));
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await?;
    sim.shutdown().await;
    Ok(())
}
