//! The simulator's state and behaviour, apart from HTTP: what each send
//! meets (faults), what is recorded, and which callbacks go to the webhook.
//! The state sits behind one std mutex, held only for short, synchronous
//! updates and never across an `.await`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::channel::{Channel, ReceiptMode};
use crate::config::SimConfig;
use crate::control::{self, Callback, InboundResult, Sent, StatusResult};
use crate::delivery::{self, Delivery};
use crate::faults::{self, ChannelFaults, Outcome};
use crate::payloads::{self, WhatsAppStatus};

/// Bounds one webhook request, so a hung webhook cannot pin a callback.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Simulator {
    config: SimConfig,
    state: Mutex<State>,
    http: reqwest::Client,
    /// Scheduled receipts, so shutdown can stop and await them.
    tasks: TaskTracker,
    stop: CancellationToken,
}

#[derive(Debug)]
struct State {
    /// Bumped by reset, so receipts scheduled before it are dropped rather
    /// than leaking into the next test's records.
    epoch: u64,
    faults: [ChannelFaults; 3],
    modes: [ReceiptMode; 3],
    sent: Vec<Sent>,
    callbacks: Vec<Callback>,
    /// The last message id per Telegram chat, shared by both directions as
    /// in Telegram. Kept across resets so ids never repeat within a run.
    telegram_message_ids: HashMap<String, i64>,
    telegram_update_id: i64,
}

impl State {
    fn new() -> Self {
        Self {
            epoch: 0,
            faults: Default::default(),
            modes: Channel::ALL.map(ReceiptMode::default_for),
            sent: Vec::new(),
            callbacks: Vec::new(),
            telegram_message_ids: HashMap::new(),
            telegram_update_id: 0,
        }
    }

    fn next_telegram_message_id(&mut self, chat: &str) -> i64 {
        let id = self.telegram_message_ids.entry(chat.to_owned()).or_insert(0);
        *id += 1;
        *id
    }
}

/// What the simulator made of a well-formed send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Admission {
    /// `id` is the channel message id; `telegram_message_id` its numeric
    /// form on Telegram (0 elsewhere).
    Accepted { id: String, telegram_message_id: i64 },
    /// Answer this status with the channel's error body.
    Failed(u16),
}

/// Why a control request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    BadRequest(String),
    NotFound(String),
    /// A callback was asked for but no webhook URL is configured.
    NoWebhook,
}

/// A successful send, as receipts need it.
#[derive(Debug, Clone)]
struct Delivered {
    id: String,
    to: String,
    callback_data: String,
}

impl Simulator {
    pub fn new(config: SimConfig) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder().timeout(WEBHOOK_TIMEOUT).build()?;
        Ok(Self {
            config,
            state: Mutex::new(State::new()),
            http,
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
        })
    }

    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves the records usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every recorded send, in arrival order, optionally of one channel.
    pub fn sent(&self, channel: Option<Channel>) -> Vec<Sent> {
        let state = self.state();
        state.sent.iter().filter(|s| channel.is_none_or(|c| s.channel == c.as_str())).cloned().collect()
    }

    /// Every finished callback, in completion order, optionally of one
    /// channel.
    pub fn callbacks(&self, channel: Option<Channel>) -> Vec<Callback> {
        let state = self.state();
        state.callbacks.iter().filter(|c| channel.is_none_or(|ch| c.channel == ch.as_str())).cloned().collect()
    }

    /// Clears faults and records and restores the default receipt modes;
    /// receipts still pending are dropped.
    pub fn reset(&self) {
        let mut state = self.state();
        state.epoch += 1;
        state.faults = Default::default();
        state.modes = Channel::ALL.map(ReceiptMode::default_for);
        state.sent.clear();
        state.callbacks.clear();
    }

    /// Stops pending callbacks and waits for their tasks to end.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Sets the given fault fields of one channel and answers the result.
    pub(crate) fn set_faults(&self, channel: Channel, update: &control::Faults) -> Result<control::Faults, Refusal> {
        if let Some(statuses) = &update.fail_next {
            faults::validate_fail_next(statuses).map_err(Refusal::BadRequest)?;
        }
        let mut state = self.state();
        let faults = &mut state.faults[channel.index()];
        if let Some(ms) = update.latency_ms {
            faults.latency = Duration::from_millis(ms);
        }
        if let Some(statuses) = &update.fail_next {
            faults.fail_next = statuses.iter().copied().collect();
        }
        if let Some(permanent) = &update.permanent {
            faults.permanent = permanent.iter().map(|a| fault_address(channel, a)).collect();
        }
        let mut permanent: Vec<String> = faults.permanent.iter().cloned().collect();
        permanent.sort();
        Ok(control::Faults {
            channel: channel.as_str().to_owned(),
            latency_ms: Some(u64::try_from(faults.latency.as_millis()).unwrap_or(u64::MAX)),
            fail_next: Some(faults.fail_next.iter().copied().collect()),
            permanent: Some(permanent),
        })
    }

    pub(crate) fn set_receipt_mode(&self, channel: Channel, mode: ReceiptMode) -> Result<(), Refusal> {
        if channel == Channel::Telegram && mode != ReceiptMode::None {
            return Err(Refusal::BadRequest("telegram has no receipts: its only mode is none".into()));
        }
        self.state().modes[channel.index()] = mode;
        Ok(())
    }

    pub(crate) fn latency(&self, channel: Channel) -> Duration {
        self.state().faults[channel.index()].latency
    }

    /// Applies the channel's faults to a well-formed send, records it, and
    /// on success schedules its receipts to follow the answer, which goes
    /// out after `latency`. Receipts are scheduled here rather than after
    /// the answer so that a client giving up on a slow answer still sees
    /// the message delivered, as with a real channel.
    pub(crate) fn admit(
        self: &Arc<Self>,
        channel: Channel,
        to: &str,
        text: &str,
        callback_data: &str,
        latency: Duration,
    ) -> Admission {
        let mut state = self.state();
        let outcome = faults::decide(&mut state.faults[channel.index()], &fault_address(channel, to));
        let (admission, status) = match outcome {
            Outcome::Fail(status) => (Admission::Failed(status), status),
            Outcome::Accept => {
                let admission = match channel {
                    Channel::WhatsApp => {
                        Admission::Accepted { id: format!("wamid.{}", ulid::Ulid::new()), telegram_message_id: 0 }
                    }
                    Channel::Instagram => {
                        Admission::Accepted { id: format!("m_{}", ulid::Ulid::new()), telegram_message_id: 0 }
                    }
                    Channel::Telegram => {
                        let n = state.next_telegram_message_id(to);
                        Admission::Accepted { id: n.to_string(), telegram_message_id: n }
                    }
                };
                (admission, 200)
            }
        };
        let id = match &admission {
            Admission::Accepted { id, .. } => id.clone(),
            Admission::Failed(_) => String::new(),
        };
        state.sent.push(Sent {
            channel: channel.as_str().to_owned(),
            to: to.to_owned(),
            text: text.to_owned(),
            channel_message_id: id.clone(),
            status,
            callback_data: callback_data.to_owned(),
            received_at_ms: now_ms(),
        });
        let statuses = state.modes[channel.index()].statuses(channel);
        let epoch = state.epoch;
        drop(state);
        match &admission {
            Admission::Failed(status) => tracing::info!(%channel, to, status, "send failed by an injected fault"),
            Admission::Accepted { .. } => {
                tracing::debug!(%channel, to, id, "send accepted");
                let delivered = Delivered { id, to: to.to_owned(), callback_data: callback_data.to_owned() };
                self.schedule_receipts(channel, statuses, delivered, epoch, latency);
            }
        }
        admission
    }

    fn schedule_receipts(
        self: &Arc<Self>,
        channel: Channel,
        statuses: &'static [&'static str],
        message: Delivered,
        epoch: u64,
        latency: Duration,
    ) {
        if statuses.is_empty() {
            return;
        }
        if self.config.webhook_url.is_none() {
            tracing::debug!(%channel, id = message.id, "no webhook url; receipts skipped");
            return;
        }
        let sim = Arc::clone(self);
        let delay = Duration::from_millis(self.config.receipt_delay_ms);
        self.tasks.spawn(async move {
            // In order: the next receipt waits for the previous one's last
            // attempt.
            for (i, status) in statuses.iter().enumerate() {
                let wait = if i == 0 { latency.saturating_add(delay) } else { delay };
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = sim.stop.cancelled() => return,
                }
                if sim.state().epoch != epoch {
                    return;
                }
                // Never refused: `statuses` only yields receipts the channel
                // has, and the webhook URL was checked above.
                let Ok(delivery) = sim.send_status(channel, &message, status).await else { return };
                sim.record_callback(Some(epoch), channel, control::KIND_STATUS, status, &message.id, delivery);
            }
        });
    }

    /// Builds one receipt and posts it.
    async fn send_status(&self, channel: Channel, message: &Delivered, status: &str) -> Result<Delivery, Refusal> {
        let body = match (channel, status) {
            (Channel::WhatsApp, "delivered" | "read" | "failed") => {
                let status = WhatsAppStatus {
                    wamid: &message.id,
                    status,
                    recipient_id: &message.to,
                    callback_data: &message.callback_data,
                };
                to_json(&payloads::whatsapp_status(&self.config.whatsapp_phone_number_id, &status, now_secs()))
            }
            (Channel::Instagram, "read") => {
                to_json(&payloads::instagram_read(&self.config.instagram_user_id, &message.to, &message.id, now_ms()))
            }
            (Channel::Telegram, _) => return Err(Refusal::BadRequest("telegram has no receipts".into())),
            (_, status) => {
                return Err(Refusal::BadRequest(format!("{channel} has no {status:?} receipts")));
            }
        };
        self.post_callback(channel, body?).await
    }

    /// `POST /_sim/status`: a receipt for a recorded successful send, now.
    pub(crate) async fn manual_status(
        &self,
        channel: Channel,
        id: &str,
        status: &str,
    ) -> Result<StatusResult, Refusal> {
        let message = {
            let state = self.state();
            let found = state.sent.iter().find(|s| s.channel == channel.as_str() && s.channel_message_id == id);
            found.map(|s| Delivered {
                id: s.channel_message_id.clone(),
                to: s.to.clone(),
                callback_data: s.callback_data.clone(),
            })
        };
        let Some(message) = message.filter(|m| !m.id.is_empty()) else {
            return Err(Refusal::NotFound(format!("no successful {channel} send with id {id:?}")));
        };
        let delivery = self.send_status(channel, &message, status).await?;
        self.record_callback(None, channel, control::KIND_STATUS, status, &message.id, delivery);
        Ok(StatusResult { webhook_status: delivery.http_status })
    }

    /// `POST /_sim/inbound`: a user writes to the business.
    pub(crate) async fn inbound(&self, channel: Channel, from: &str, text: &str) -> Result<InboundResult, Refusal> {
        if self.config.webhook_url.is_none() {
            return Err(Refusal::NoWebhook);
        }
        if text.trim().is_empty() {
            return Err(Refusal::BadRequest("text is empty".into()));
        }
        let (id, body) = match channel {
            Channel::WhatsApp => {
                let from = from.trim_start_matches('+');
                if from.is_empty() || !from.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(Refusal::BadRequest(format!("whatsapp sender {from:?} is not a phone number")));
                }
                let id = format!("wamid.{}", ulid::Ulid::new());
                let hook =
                    payloads::whatsapp_inbound(&self.config.whatsapp_phone_number_id, from, &id, text, now_secs());
                (id, to_json(&hook))
            }
            Channel::Instagram => {
                if from.trim().is_empty() {
                    return Err(Refusal::BadRequest("instagram sender id is empty".into()));
                }
                let id = format!("m_{}", ulid::Ulid::new());
                (
                    id.clone(),
                    to_json(&payloads::instagram_inbound(&self.config.instagram_user_id, from, &id, text, now_ms())),
                )
            }
            Channel::Telegram => {
                let Ok(chat) = from.trim().parse::<i64>() else {
                    return Err(Refusal::BadRequest(format!("telegram sender {from:?} is not a numeric chat id")));
                };
                let (update_id, message_id) = {
                    let mut state = self.state();
                    state.telegram_update_id += 1;
                    (state.telegram_update_id, state.next_telegram_message_id(&chat.to_string()))
                };
                (
                    message_id.to_string(),
                    to_json(&payloads::telegram_inbound(update_id, message_id, chat, text, now_secs())),
                )
            }
        };
        let delivery = self.post_callback(channel, body?).await?;
        self.record_callback(None, channel, control::KIND_INBOUND, control::KIND_INBOUND, &id, delivery);
        Ok(InboundResult { channel_message_id: id, webhook_status: delivery.http_status })
    }

    async fn post_callback(&self, channel: Channel, body: Vec<u8>) -> Result<Delivery, Refusal> {
        let Some(url) = self.config.webhook_endpoint(channel.as_str()) else { return Err(Refusal::NoWebhook) };
        let headers = delivery::auth_headers(channel, &self.config, &body);
        let delivery = delivery::post(&self.http, &url, &headers, body, &self.stop).await;
        if !delivery.ok() {
            tracing::warn!(%channel, url, status = delivery.http_status, attempts = delivery.attempts, "callback failed");
        }
        Ok(delivery)
    }

    /// Records a finished callback, unless a reset happened since `epoch`.
    fn record_callback(&self, epoch: Option<u64>, channel: Channel, kind: &str, status: &str, id: &str, d: Delivery) {
        let mut state = self.state();
        if epoch.is_some_and(|e| e != state.epoch) {
            return;
        }
        state.callbacks.push(Callback {
            channel: channel.as_str().to_owned(),
            kind: kind.to_owned(),
            status: status.to_owned(),
            channel_message_id: id.to_owned(),
            http_status: d.http_status,
            attempts: d.attempts,
            ok: d.ok(),
        });
    }
}

/// A recipient as fault settings name it: WhatsApp numbers without the
/// optional '+', so `+1555…` and `1555…` are one recipient.
fn fault_address(channel: Channel, address: &str) -> String {
    match channel {
        Channel::WhatsApp => address.trim().trim_start_matches('+').to_owned(),
        Channel::Instagram | Channel::Telegram => address.trim().to_owned(),
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, Refusal> {
    // The payload types are plain structs of strings and numbers.
    serde_json::to_vec(value).map_err(|e| Refusal::BadRequest(format!("cannot encode the webhook body: {e}")))
}

pub(crate) fn now_ms() -> i64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

pub(crate) fn now_secs() -> i64 {
    now_ms() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sim() -> Arc<Simulator> {
        Arc::new(Simulator::new(SimConfig::default()).expect("simulator"))
    }

    #[tokio::test]
    async fn telegram_message_ids_count_per_chat_from_one() {
        let sim = sim();
        let ids: Vec<Admission> = ["42", "42", "7", "42"]
            .into_iter()
            .map(|chat| sim.admit(Channel::Telegram, chat, "hi", "", Duration::ZERO))
            .collect();
        let numbers: Vec<i64> = ids
            .iter()
            .map(|a| match a {
                Admission::Accepted { telegram_message_id, .. } => *telegram_message_id,
                Admission::Failed(_) => -1,
            })
            .collect();
        assert_eq!(numbers, [1, 2, 1, 3]);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn failed_sends_are_recorded_without_an_id() {
        let sim = sim();
        let update = control::Faults { channel: "whatsapp".into(), fail_next: Some(vec![503]), ..Default::default() };
        sim.set_faults(Channel::WhatsApp, &update).expect("valid faults");
        assert_eq!(sim.admit(Channel::WhatsApp, "1555", "a", "cb", Duration::ZERO), Admission::Failed(503));
        assert!(matches!(sim.admit(Channel::WhatsApp, "1555", "b", "cb", Duration::ZERO), Admission::Accepted { .. }));
        let sent = sim.sent(Some(Channel::WhatsApp));
        assert_eq!(
            sent.iter().map(|s| (s.status, s.channel_message_id.is_empty())).collect::<Vec<_>>(),
            [(503, true), (200, false)]
        );
        assert!(sent[1].channel_message_id.starts_with("wamid."));
        assert!(sim.sent(Some(Channel::Telegram)).is_empty());
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn faults_update_only_given_fields_and_reset_clears_them() {
        let sim = sim();
        let set = |f: control::Faults| sim.set_faults(Channel::Instagram, &f).expect("valid faults");
        set(control::Faults { latency_ms: Some(30), permanent: Some(vec!["9".into()]), ..Default::default() });
        let now = set(control::Faults { fail_next: Some(vec![429]), ..Default::default() });
        assert_eq!((now.latency_ms, now.fail_next, now.permanent), (Some(30), Some(vec![429]), Some(vec!["9".into()])));
        assert!(
            sim.set_faults(Channel::Instagram, &control::Faults { fail_next: Some(vec![200]), ..Default::default() })
                .is_err()
        );
        sim.set_receipt_mode(Channel::WhatsApp, ReceiptMode::None).expect("mode");
        assert!(sim.set_receipt_mode(Channel::Telegram, ReceiptMode::Read).is_err());
        sim.reset();
        assert_eq!(sim.latency(Channel::Instagram), Duration::ZERO);
        assert_eq!(sim.state().modes, [ReceiptMode::Read, ReceiptMode::Read, ReceiptMode::None]);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn permanent_whatsapp_numbers_match_with_or_without_plus() {
        let sim = sim();
        let update = control::Faults { permanent: Some(vec!["+1555".into()]), ..Default::default() };
        sim.set_faults(Channel::WhatsApp, &update).expect("valid faults");
        assert_eq!(sim.admit(Channel::WhatsApp, "1555", "a", "", Duration::ZERO), Admission::Failed(400));
        assert_eq!(sim.admit(Channel::WhatsApp, "+1555", "a", "", Duration::ZERO), Admission::Failed(400));
        assert_eq!(sim.sent(None).iter().map(|s| s.to.as_str()).collect::<Vec<_>>(), ["1555", "+1555"]);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn callbacks_need_a_webhook() {
        let sim = sim();
        assert_eq!(sim.inbound(Channel::Telegram, "42", "hi").await, Err(Refusal::NoWebhook));
        assert!(matches!(sim.manual_status(Channel::WhatsApp, "wamid.nope", "read").await, Err(Refusal::NotFound(_))));
        sim.shutdown().await;
    }
}
