//! A test's handle on the channel simulator: what it received, and the
//! faults, receipts and inbound messages it is told to produce.

use std::time::Duration;

use anyhow::Context;
pub use channel_sim::control::Faults;
use channel_sim::control::{self, Inbound, InboundResult, ReceiptsMode, Sent};

use crate::DEADLINE;

#[derive(Debug, Clone)]
pub struct SimClient {
    http: reqwest::Client,
    base: String,
    /// The webhook the simulator calls back (the local function URL).
    pub webhook_url: String,
}

impl SimClient {
    pub fn new(base: String, webhook_url: String) -> Self {
        Self { http: reqwest::Client::new(), base, webhook_url }
    }

    async fn post<T: serde::Serialize>(&self, path: &str, body: &T) -> anyhow::Result<reqwest::Response> {
        let response = self.http.post(format!("{}{path}", self.base)).json(body).send().await?;
        anyhow::ensure!(response.status().is_success(), "simulator {path}: HTTP {}", response.status());
        Ok(response)
    }

    /// Every send the simulator received on `channel`, in arrival order.
    pub async fn sent(&self, channel: &str) -> anyhow::Result<Vec<Sent>> {
        let url = format!("{}{}?channel={channel}", self.base, control::SENT_PATH);
        Ok(self.http.get(url).send().await?.error_for_status()?.json().await?)
    }

    /// The sends on `channel` the simulator accepted.
    pub async fn delivered(&self, channel: &str) -> anyhow::Result<Vec<Sent>> {
        Ok(self.sent(channel).await?.into_iter().filter(|s| s.status == 200).collect())
    }

    /// Waits until `channel` has received at least `count` sends, any outcome.
    pub async fn wait_sent(&self, channel: &str, count: usize) -> anyhow::Result<Vec<Sent>> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let sent = self.sent(channel).await?;
            if sent.len() >= count {
                return Ok(sent);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{channel} received {} sends, expected {count}: {sent:?}",
                sent.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn faults(&self, faults: Faults) -> anyhow::Result<()> {
        self.post(control::FAULTS_PATH, &faults).await.map(|_| ())
    }

    pub async fn receipts(&self, channel: &str, mode: &str) -> anyhow::Result<()> {
        let body = ReceiptsMode { channel: channel.into(), mode: mode.into() };
        self.post(control::RECEIPTS_PATH, &body).await.map(|_| ())
    }

    /// Makes a channel user send `text`; returns what the webhook answered.
    pub async fn inbound(&self, channel: &str, from: &str, text: &str) -> anyhow::Result<InboundResult> {
        let body = Inbound { channel: channel.into(), from: from.into(), text: text.into() };
        self.post(control::INBOUND_PATH, &body).await?.json().await.context("inbound result")
    }
}

/// No faults but the ones named.
pub fn faults(channel: &str) -> Faults {
    Faults { channel: channel.into(), latency_ms: None, fail_next: None, permanent: None }
}
