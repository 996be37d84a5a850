//! End-to-end tests of the simulator over real HTTP: the simulator and a
//! fake webhook (which records what it receives) both listen on
//! 127.0.0.1:0. Waits poll with a deadline; nothing relies on timing.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use channel_sim::SimConfig;
use channel_sim::control::{
    self, Ack, Callback, ErrorBody, Faults, Inbound, InboundResult, ManualStatus, ReceiptsMode, Sent, StatusResult,
};
use channels::{instagram, meta, telegram, whatsapp};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
struct Received {
    channel: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Received {
    fn json<T: DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body).expect("webhook body in the channel's shape")
    }

    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

#[derive(Debug, Default)]
struct Hook {
    received: Mutex<Vec<Received>>,
    /// Answer this many more requests with 500 before accepting.
    fail_remaining: AtomicU32,
}

async fn hook_handler(
    State(hook): State<Arc<Hook>>,
    Path(channel): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    if hook.fail_remaining.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    hook.received.lock().expect("hook lock").push(Received { channel, headers, body });
    StatusCode::OK
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Webhook {
    Fake,
    /// A port nobody listens on.
    Unreachable,
    Unset,
}

#[derive(Debug)]
struct Harness {
    base: String,
    http: reqwest::Client,
    hook: Arc<Hook>,
    config: SimConfig,
    shutdown: CancellationToken,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn local_listener() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0")
}

fn addr_of(listener: &tokio::net::TcpListener) -> SocketAddr {
    listener.local_addr().expect("local addr")
}

async fn start(webhook: Webhook) -> Harness {
    let shutdown = CancellationToken::new();
    let hook = Arc::new(Hook::default());
    let webhook_url = match webhook {
        Webhook::Fake => {
            let listener = local_listener().await;
            let url = format!("http://{}/hooks", addr_of(&listener));
            let app = Router::new().route("/hooks/{channel}", post(hook_handler)).with_state(Arc::clone(&hook));
            let stop = shutdown.clone();
            tokio::spawn(
                async move { axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await },
            );
            Some(url)
        }
        Webhook::Unreachable => {
            let listener = local_listener().await;
            let url = format!("http://{}", addr_of(&listener));
            drop(listener);
            Some(url)
        }
        Webhook::Unset => None,
    };
    let config = SimConfig { webhook_url, receipt_delay_ms: 5, ..SimConfig::default() };
    let listener = local_listener().await;
    let base = format!("http://{}", addr_of(&listener));
    let server = tokio::spawn(channel_sim::serve(config.clone(), listener, shutdown.clone()));
    Harness { base, http: reqwest::Client::new(), hook, config, shutdown, server: Some(server) }
}

/// Polls `probe` until it yields a value or the deadline passes.
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn json_of<T: DeserializeOwned>(response: reqwest::Response) -> (u16, T) {
    let status = response.status().as_u16();
    let body = response.bytes().await.expect("response body");
    let value = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("status {status}: unexpected body {:?}: {e}", String::from_utf8_lossy(&body)));
    (status, value)
}

impl Harness {
    async fn get<T: DeserializeOwned>(&self, path: &str) -> T {
        let response = self.http.get(format!("{}{path}", self.base)).send().await.expect("GET");
        assert!(response.status().is_success(), "GET {path}: {}", response.status());
        json_of(response).await.1
    }

    async fn post<B: Serialize>(&self, path: &str, body: &B) -> reqwest::Response {
        self.http.post(format!("{}{path}", self.base)).json(body).send().await.expect("POST")
    }

    async fn control<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> T {
        let (status, value) = json_of(self.post(path, body).await).await;
        assert_eq!(status, 200, "POST {path}");
        value
    }

    async fn faults(&self, faults: Faults) {
        let _: Faults = self.control(control::FAULTS_PATH, &faults).await;
    }

    async fn sent(&self, channel: &str) -> Vec<Sent> {
        self.get(&format!("{}?channel={channel}", control::SENT_PATH)).await
    }

    async fn callbacks(&self) -> Vec<Callback> {
        self.get(control::CALLBACKS_PATH).await
    }

    async fn raw_send(&self, path: &str, token: Option<&str>, body: Vec<u8>) -> reqwest::Response {
        let mut request =
            self.http.post(format!("{}{path}", self.base)).header("content-type", "application/json").body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("send")
    }

    fn whatsapp_path(&self) -> String {
        whatsapp::messages_path("v21.0", &self.config.whatsapp_phone_number_id)
    }

    fn instagram_path(&self) -> String {
        instagram::messages_path("v21.0", &self.config.instagram_user_id)
    }

    async fn whatsapp(&self, to: &str, text: &str, callback_data: &str) -> reqwest::Response {
        let body = serde_json::to_vec(&whatsapp::SendRequest::text(to, text, callback_data)).expect("json");
        self.raw_send(&self.whatsapp_path(), Some(&self.config.whatsapp_token), body).await
    }

    async fn instagram(&self, to: &str, text: &str) -> reqwest::Response {
        let body = serde_json::to_vec(&instagram::SendRequest::text(to, text)).expect("json");
        self.raw_send(&self.instagram_path(), Some(&self.config.instagram_token), body).await
    }

    async fn telegram(&self, chat_id: i64, text: &str) -> reqwest::Response {
        let body = serde_json::to_vec(&telegram::SendMessage { chat_id, text: text.into() }).expect("json");
        self.raw_send(&telegram::send_message_path(&self.config.telegram_bot_token), None, body).await
    }

    fn received(&self, channel: &str) -> Vec<Received> {
        let all = self.hook.received.lock().expect("hook lock");
        all.iter().filter(|r| r.channel == channel).cloned().collect()
    }

    async fn wait_received(&self, channel: &str, count: usize) -> Vec<Received> {
        eventually(&format!("{count} {channel} callbacks"), || async {
            let got = self.received(channel);
            (got.len() >= count).then_some(got)
        })
        .await
    }

    fn assert_meta_signed(&self, received: &Received) {
        let signature = received.header(meta::SIGNATURE_HEADER);
        assert!(
            channels::verify_meta_signature(&self.config.meta_app_secret, &received.body, signature),
            "bad signature {signature:?}"
        );
    }
}

fn faults(channel: &str) -> Faults {
    Faults { channel: channel.into(), ..Faults::default() }
}

#[tokio::test]
async fn health_answers_ok_and_unknown_routes_are_json_404() {
    let h = start(Webhook::Unset).await;
    let ack: Ack = h.get(control::HEALTH_PATH).await;
    assert!(ack.ok);
    let response = h.http.get(format!("{}/nowhere", h.base)).send().await.expect("GET");
    let (status, body): (u16, ErrorBody) = json_of(response).await;
    assert_eq!(status, 404);
    assert!(body.error.contains("/nowhere"));
}

#[tokio::test]
async fn whatsapp_send_answers_the_cloud_api_shape_and_is_recorded() {
    let h = start(Webhook::Unset).await;
    let (status, body): (u16, whatsapp::SendResponse) =
        json_of(h.whatsapp("15551234567", "hello", "msg-1").await).await;
    assert_eq!(status, 200);
    assert_eq!(body.messaging_product, "whatsapp");
    assert_eq!(body.contacts, [whatsapp::Contact { input: "15551234567".into(), wa_id: "15551234567".into() }]);
    let wamid = &body.messages[0].id;
    assert!(wamid.starts_with("wamid.") && wamid.len() > "wamid.".len());
    let sent = h.sent("whatsapp").await;
    assert_eq!(sent.len(), 1);
    let s = &sent[0];
    assert_eq!(
        (s.channel.as_str(), s.to.as_str(), s.text.as_str(), s.callback_data.as_str(), s.status),
        ("whatsapp", "15551234567", "hello", "msg-1", 200)
    );
    assert_eq!(&s.channel_message_id, wamid);
    assert!(s.received_at_ms > 0);
    assert!(h.sent("telegram").await.is_empty());
}

#[tokio::test]
async fn instagram_send_answers_recipient_and_mid() {
    let h = start(Webhook::Unset).await;
    let (status, body): (u16, instagram::SendResponse) = json_of(h.instagram("998877", "hi there").await).await;
    assert_eq!(status, 200);
    assert_eq!(body.recipient_id, "998877");
    assert!(body.message_id.starts_with("m_"));
    let sent = h.sent("instagram").await;
    assert_eq!((sent[0].to.as_str(), sent[0].text.as_str()), ("998877", "hi there"));
    assert_eq!(sent[0].channel_message_id, body.message_id);
    assert_eq!(sent[0].callback_data, "");
}

#[tokio::test]
async fn telegram_send_answers_a_message_with_per_chat_ids() {
    let h = start(Webhook::Unset).await;
    let mut ids = Vec::new();
    for chat in [42, 42, 7] {
        let (status, body): (u16, telegram::ApiResponse<telegram::Message>) =
            json_of(h.telegram(chat, "hey").await).await;
        assert_eq!(status, 200);
        assert!(body.ok);
        let message = body.result.expect("result");
        assert_eq!(message.chat, telegram::Chat { id: chat, kind: "private".into() });
        assert_eq!(message.from, Some(telegram::User { id: 1, is_bot: true, first_name: "ChatBot".into() }));
        assert_eq!(message.text.as_deref(), Some("hey"));
        assert!(message.date > 1_600_000_000);
        ids.push(message.message_id);
    }
    assert_eq!(ids, [1, 2, 1]);
    let sent = h.sent("telegram").await;
    assert_eq!(
        sent.iter().map(|s| (s.to.as_str(), s.channel_message_id.as_str())).collect::<Vec<_>>(),
        [("42", "1"), ("42", "2"), ("7", "1")]
    );
}

#[tokio::test]
async fn wrong_tokens_are_401_in_each_channels_shape() {
    let h = start(Webhook::Unset).await;
    let body = serde_json::to_vec(&whatsapp::SendRequest::text("1555", "x", "")).expect("json");
    for token in [None, Some("wrong"), Some(h.config.instagram_token.as_str())] {
        let (status, error): (u16, meta::ErrorResponse) =
            json_of(h.raw_send(&h.whatsapp_path(), token, body.clone()).await).await;
        assert_eq!((status, error.error.code, error.error.kind.as_str()), (401, 190, "OAuthException"));
        assert_eq!(error.error.message, "Invalid OAuth access token.");
    }
    let body = serde_json::to_vec(&instagram::SendRequest::text("1", "x")).expect("json");
    let (status, error): (u16, meta::ErrorResponse) =
        json_of(h.raw_send(&h.instagram_path(), Some("wrong"), body).await).await;
    assert_eq!((status, error.error.code), (401, 190));
    let body = serde_json::to_vec(&telegram::SendMessage { chat_id: 1, text: "x".into() }).expect("json");
    let (status, error): (u16, telegram::ApiResponse<telegram::Message>) =
        json_of(h.raw_send(&telegram::send_message_path("wrong"), None, body).await).await;
    assert_eq!(status, 401);
    assert_eq!((error.ok, error.error_code, error.description.as_deref()), (false, Some(401), Some("Unauthorized")));
    let sent: Vec<Sent> = h.get(control::SENT_PATH).await;
    assert!(sent.is_empty(), "rejected requests are not sends: {sent:?}");
}

#[tokio::test]
async fn unknown_graph_object_is_400_code_100() {
    let h = start(Webhook::Unset).await;
    let body = serde_json::to_vec(&whatsapp::SendRequest::text("1555", "x", "")).expect("json");
    let path = whatsapp::messages_path("v19.0", "424242");
    let (status, error): (u16, meta::ErrorResponse) =
        json_of(h.raw_send(&path, Some(&h.config.whatsapp_token), body).await).await;
    assert_eq!((status, error.error.code), (400, 100));
    assert!(error.error.message.starts_with("Unsupported post request. Object with ID '424242' does not exist"));
}

#[tokio::test]
async fn malformed_bodies_are_400_not_a_panic() {
    let h = start(Webhook::Unset).await;
    let no_text = br#"{"messaging_product":"whatsapp","recipient_type":"individual","to":"1555","type":"text"}"#;
    for body in [&b"{"[..], b"", b"null", b"[1,2]", no_text] {
        let token = Some(h.config.whatsapp_token.as_str());
        let (status, error): (u16, meta::ErrorResponse) =
            json_of(h.raw_send(&h.whatsapp_path(), token, body.to_vec()).await).await;
        assert_eq!((status, error.error.code), (400, 100));
        assert_eq!(error.error.message, "(#100) Invalid parameter");
        let token = Some(h.config.instagram_token.as_str());
        let (status, error): (u16, meta::ErrorResponse) =
            json_of(h.raw_send(&h.instagram_path(), token, body.to_vec()).await).await;
        assert_eq!((status, error.error.code), (400, 100));
    }
    let path = telegram::send_message_path(&h.config.telegram_bot_token);
    for (body, description) in [
        (&b"{oops"[..], "Bad Request: can't parse JSON object"),
        (br#"{"chat_id":5}"#, "Bad Request: message text is empty"),
        (br#"{"chat_id":5,"text":""}"#, "Bad Request: message text is empty"),
        (br#"{"text":"x"}"#, "Bad Request: chat_id is empty"),
    ] {
        let (status, error): (u16, telegram::ApiResponse<telegram::Message>) =
            json_of(h.raw_send(&path, None, body.to_vec()).await).await;
        assert_eq!(status, 400);
        assert_eq!((error.ok, error.error_code, error.description.as_deref()), (false, Some(400), Some(description)));
    }
    let response = h.raw_send(control::FAULTS_PATH, None, b"{not json".to_vec()).await;
    let (status, error): (u16, ErrorBody) = json_of(response).await;
    assert_eq!(status, 400);
    assert!(error.error.contains("invalid JSON"));
    let ack: Ack = h.get(control::HEALTH_PATH).await;
    assert!(ack.ok, "still serving");
}

#[tokio::test]
async fn fail_next_fails_that_many_sends_then_succeeds() {
    let h = start(Webhook::Unset).await;
    h.faults(Faults { fail_next: Some(vec![503, 503]), ..faults("whatsapp") }).await;
    for _ in 0..2 {
        let (status, error): (u16, meta::ErrorResponse) = json_of(h.whatsapp("1555", "x", "").await).await;
        assert_eq!((status, error.error.code), (503, 2));
        assert_eq!(error.error.message, "Service temporarily unavailable");
    }
    let (status, _): (u16, whatsapp::SendResponse) = json_of(h.whatsapp("1555", "x", "").await).await;
    assert_eq!(status, 200);
    let sent = h.sent("whatsapp").await;
    assert_eq!(
        sent.iter().map(|s| (s.status, s.channel_message_id.is_empty())).collect::<Vec<_>>(),
        [(503, true), (503, true), (200, false)]
    );

    h.faults(Faults { fail_next: Some(vec![500]), ..faults("telegram") }).await;
    let (status, error): (u16, telegram::ApiResponse<telegram::Message>) = json_of(h.telegram(3, "x").await).await;
    assert_eq!(
        (status, error.error_code, error.description.as_deref()),
        (500, Some(500), Some("Internal Server Error"))
    );
    let (status, ok): (u16, telegram::ApiResponse<telegram::Message>) = json_of(h.telegram(3, "x").await).await;
    assert_eq!(status, 200);
    // The failed send consumed no message id.
    assert_eq!(ok.result.map(|m| m.message_id), Some(1));

    h.faults(Faults { fail_next: Some(vec![500]), ..faults("instagram") }).await;
    let (status, error): (u16, meta::ErrorResponse) = json_of(h.instagram("5", "x").await).await;
    assert_eq!((status, error.error.code, error.error.message.as_str()), (500, 1, "An unknown error occurred"));
}

#[tokio::test]
async fn throttling_uses_each_channels_rate_limit_shape() {
    let h = start(Webhook::Unset).await;
    for channel in ["whatsapp", "instagram", "telegram"] {
        h.faults(Faults { fail_next: Some(vec![429]), ..faults(channel) }).await;
    }
    let (status, error): (u16, meta::ErrorResponse) = json_of(h.whatsapp("1555", "x", "").await).await;
    assert_eq!((status, error.error.code), (429, 130429));
    assert!(error.error.message.contains("Rate limit hit"));
    let (status, error): (u16, meta::ErrorResponse) = json_of(h.instagram("5", "x").await).await;
    assert_eq!((status, error.error.code), (429, 130429));
    let (status, error): (u16, telegram::ApiResponse<telegram::Message>) = json_of(h.telegram(3, "x").await).await;
    assert_eq!(status, 429);
    assert_eq!(error.error_code, Some(429));
    assert_eq!(error.description.as_deref(), Some("Too Many Requests: retry after 1"));
    assert_eq!(error.parameters.and_then(|p| p.retry_after), Some(1));
}

#[tokio::test]
async fn permanent_recipients_always_fail_with_a_permanent_error() {
    let h = start(Webhook::Unset).await;
    h.faults(Faults { permanent: Some(vec!["15550009".into()]), ..faults("whatsapp") }).await;
    h.faults(Faults { permanent: Some(vec!["666".into()]), ..faults("instagram") }).await;
    h.faults(Faults { permanent: Some(vec!["99".into()]), ..faults("telegram") }).await;
    for _ in 0..2 {
        let (status, error): (u16, meta::ErrorResponse) = json_of(h.whatsapp("15550009", "x", "").await).await;
        assert_eq!((status, error.error.code), (400, 131026));
        assert!(error.error.message.contains("Message undeliverable"));
    }
    let (status, _): (u16, whatsapp::SendResponse) = json_of(h.whatsapp("15550008", "x", "").await).await;
    assert_eq!(status, 200);
    let (status, error): (u16, meta::ErrorResponse) = json_of(h.instagram("666", "x").await).await;
    assert_eq!((status, error.error.code), (400, 131026));
    let (status, error): (u16, telegram::ApiResponse<telegram::Message>) = json_of(h.telegram(99, "x").await).await;
    assert_eq!((status, error.description.as_deref()), (400, Some("Bad Request: chat not found")));
    let sent = h.sent("whatsapp").await;
    assert_eq!(
        sent.iter().map(|s| (s.to.as_str(), s.status)).collect::<Vec<_>>(),
        [("15550009", 400), ("15550009", 400), ("15550008", 200)]
    );
}

#[tokio::test]
async fn latency_on_one_channel_does_not_delay_another() {
    let h = Arc::new(start(Webhook::Unset).await);
    h.faults(Faults { latency_ms: Some(2000), ..faults("whatsapp") }).await;
    let finished = Arc::new(Mutex::new(Vec::new()));
    let slow = tokio::spawn({
        let (h, finished) = (Arc::clone(&h), Arc::clone(&finished));
        async move {
            let status = h.whatsapp("1555", "slow", "").await.status();
            finished.lock().expect("lock").push("whatsapp");
            status
        }
    });
    // The send is recorded on arrival, before its latency: from here on it
    // is pending inside the simulator.
    eventually("the whatsapp send to arrive", || async { (!h.sent("whatsapp").await.is_empty()).then_some(()) }).await;
    let status = h.telegram(1, "fast").await.status();
    finished.lock().expect("lock").push("telegram");
    assert_eq!(status, 200);
    assert_eq!(slow.await.expect("whatsapp task"), 200);
    assert_eq!(*finished.lock().expect("lock"), ["telegram", "whatsapp"]);
}

#[tokio::test]
async fn whatsapp_receipts_arrive_signed_in_order_with_callback_data() {
    let h = start(Webhook::Fake).await;
    let (_, body): (u16, whatsapp::SendResponse) = json_of(h.whatsapp("15551234567", "hello", "ctx-77").await).await;
    let wamid = body.messages[0].id.clone();
    let received = h.wait_received("whatsapp", 2).await;
    let mut statuses = Vec::new();
    for r in &received {
        h.assert_meta_signed(r);
        let hook: whatsapp::Webhook = r.json();
        assert_eq!(hook.object, "whatsapp_business_account");
        let change = &hook.entry[0].changes[0];
        assert_eq!(change.field, "messages");
        assert_eq!(change.value.metadata.phone_number_id, h.config.whatsapp_phone_number_id);
        let status = &change.value.statuses[0];
        assert_eq!((status.id.as_str(), status.recipient_id.as_str()), (wamid.as_str(), "15551234567"));
        assert_eq!(status.biz_opaque_callback_data, "ctx-77");
        assert!(status.timestamp.parse::<i64>().is_ok());
        statuses.push(status.status.clone());
    }
    assert_eq!(statuses, ["delivered", "read"]);
    let callbacks = eventually("both callbacks logged", || async {
        let logged = h.callbacks().await;
        (logged.len() == 2).then_some(logged)
    })
    .await;
    for (callback, status) in callbacks.iter().zip(["delivered", "read"]) {
        assert_eq!(
            (callback.channel.as_str(), callback.kind.as_str(), callback.status.as_str()),
            ("whatsapp", "status", status)
        );
        assert_eq!((callback.channel_message_id.as_str(), callback.http_status, callback.attempts), (&*wamid, 200, 1));
        assert!(callback.ok);
    }
}

#[tokio::test]
async fn instagram_read_receipt_names_the_reader_and_mid() {
    let h = start(Webhook::Fake).await;
    let (_, body): (u16, instagram::SendResponse) = json_of(h.instagram("998877", "hi").await).await;
    let received = h.wait_received("instagram", 1).await;
    h.assert_meta_signed(&received[0]);
    let hook: instagram::Webhook = received[0].json();
    assert_eq!(hook.object, "instagram");
    assert_eq!(hook.entry[0].id, h.config.instagram_user_id);
    let m = &hook.entry[0].messaging[0];
    assert_eq!((m.sender.id.as_str(), m.recipient.id.as_str()), ("998877", h.config.instagram_user_id.as_str()));
    assert_eq!(m.read.as_ref().map(|r| r.mid.as_str()), Some(body.message_id.as_str()));
    assert_eq!(m.message, None);
}

#[tokio::test]
async fn refused_callbacks_are_retried() {
    let h = start(Webhook::Fake).await;
    let _: Ack =
        h.control(control::RECEIPTS_PATH, &ReceiptsMode { channel: "whatsapp".into(), mode: "delivered".into() }).await;
    h.hook.fail_remaining.store(2, Ordering::SeqCst);
    let (status, _): (u16, whatsapp::SendResponse) = json_of(h.whatsapp("1555", "x", "").await).await;
    assert_eq!(status, 200);
    let callbacks = eventually("the delivered callback", || async {
        let logged = h.callbacks().await;
        (!logged.is_empty()).then_some(logged)
    })
    .await;
    assert_eq!((callbacks[0].status.as_str(), callbacks[0].http_status, callbacks[0].attempts), ("delivered", 200, 3));
    assert_eq!(h.received("whatsapp").len(), 1);
}

#[tokio::test]
async fn unreachable_webhook_is_logged_as_failed_after_retries() {
    let h = start(Webhook::Unreachable).await;
    let request = Inbound { channel: "telegram".into(), from: "42".into(), text: "hi".into() };
    let result: InboundResult = h.control(control::INBOUND_PATH, &request).await;
    assert_eq!(result.webhook_status, 0);
    let callbacks = h.callbacks().await;
    assert_eq!(callbacks.len(), 1);
    assert_eq!((callbacks[0].kind.as_str(), callbacks[0].http_status, callbacks[0].attempts), ("inbound", 0, 4));
    assert!(!callbacks[0].ok);
}

#[tokio::test]
async fn telegram_inbound_carries_the_secret_header() {
    let h = start(Webhook::Fake).await;
    let mut update_ids = Vec::new();
    for text in ["first", "second"] {
        let request = Inbound { channel: "telegram".into(), from: "4242".into(), text: text.into() };
        let result: InboundResult = h.control(control::INBOUND_PATH, &request).await;
        assert_eq!(result.webhook_status, 200);
        let received = h.received("telegram");
        let last = received.last().expect("delivered synchronously");
        assert_eq!(last.header(telegram::SECRET_HEADER), h.config.telegram_secret_token);
        let update: telegram::Update = last.json();
        let message = update.message.expect("message");
        assert_eq!(message.chat, telegram::Chat { id: 4242, kind: "private".into() });
        assert_eq!(message.from, Some(telegram::User { id: 4242, is_bot: false, first_name: "Sim".into() }));
        assert_eq!(message.text.as_deref(), Some(text));
        assert_eq!(result.channel_message_id, message.message_id.to_string());
        update_ids.push(update.update_id);
    }
    assert!(update_ids[1] > update_ids[0]);
}

#[tokio::test]
async fn whatsapp_and_instagram_inbound_are_signed_messages() {
    let h = start(Webhook::Fake).await;
    let request = Inbound { channel: "whatsapp".into(), from: "15557654321".into(), text: "hola".into() };
    let result: InboundResult = h.control(control::INBOUND_PATH, &request).await;
    assert_eq!(result.webhook_status, 200);
    let received = h.received("whatsapp");
    h.assert_meta_signed(&received[0]);
    let hook: whatsapp::Webhook = received[0].json();
    let value = &hook.entry[0].changes[0].value;
    assert_eq!(value.contacts[0].wa_id, "15557654321");
    assert_eq!(value.contacts[0].profile.name, "Sim User");
    let message = &value.messages[0];
    assert_eq!((message.from.as_str(), message.kind.as_str()), ("15557654321", "text"));
    assert_eq!(message.id, result.channel_message_id);
    assert!(message.id.starts_with("wamid."));
    assert_eq!(message.text.as_ref().map(|t| t.body.as_str()), Some("hola"));

    let request = Inbound { channel: "instagram".into(), from: "31337".into(), text: "yo".into() };
    let result: InboundResult = h.control(control::INBOUND_PATH, &request).await;
    assert_eq!(result.webhook_status, 200);
    let received = h.received("instagram");
    h.assert_meta_signed(&received[0]);
    let hook: instagram::Webhook = received[0].json();
    let m = &hook.entry[0].messaging[0];
    assert_eq!((m.sender.id.as_str(), m.recipient.id.as_str()), ("31337", h.config.instagram_user_id.as_str()));
    let message = m.message.as_ref().expect("message");
    assert_eq!((message.mid.as_str(), message.text.as_deref()), (result.channel_message_id.as_str(), Some("yo")));
    assert!(message.mid.starts_with("m_"));
}

#[tokio::test]
async fn manual_status_sends_a_receipt_now() {
    let h = start(Webhook::Fake).await;
    for channel in ["whatsapp", "instagram"] {
        let _: Ack =
            h.control(control::RECEIPTS_PATH, &ReceiptsMode { channel: channel.into(), mode: "none".into() }).await;
    }
    let (_, body): (u16, whatsapp::SendResponse) = json_of(h.whatsapp("1555", "x", "cb-9").await).await;
    let wamid = body.messages[0].id.clone();
    let request =
        ManualStatus { channel: "whatsapp".into(), channel_message_id: wamid.clone(), status: "failed".into() };
    let result: StatusResult = h.control(control::STATUS_PATH, &request).await;
    assert_eq!(result.webhook_status, 200);
    let received = h.received("whatsapp");
    assert_eq!(received.len(), 1, "receipt mode none sent nothing else");
    h.assert_meta_signed(&received[0]);
    let hook: whatsapp::Webhook = received[0].json();
    let status = &hook.entry[0].changes[0].value.statuses[0];
    assert_eq!(
        (status.id.as_str(), status.status.as_str(), status.biz_opaque_callback_data.as_str()),
        (wamid.as_str(), "failed", "cb-9")
    );
    assert_eq!(status.errors, [whatsapp::StatusError { code: 131026, title: "Message undeliverable".into() }]);

    let (_, body): (u16, instagram::SendResponse) = json_of(h.instagram("55", "x").await).await;
    let mid = body.message_id;
    let delivered =
        ManualStatus { channel: "instagram".into(), channel_message_id: mid.clone(), status: "delivered".into() };
    assert_eq!(h.post(control::STATUS_PATH, &delivered).await.status(), 400);
    let read = ManualStatus { status: "read".into(), ..delivered };
    let result: StatusResult = h.control(control::STATUS_PATH, &read).await;
    assert_eq!(result.webhook_status, 200);
    let hook: instagram::Webhook = h.received("instagram")[0].json();
    assert_eq!(hook.entry[0].messaging[0].read.as_ref().map(|r| r.mid.clone()), Some(mid));

    let unknown =
        ManualStatus { channel: "whatsapp".into(), channel_message_id: "wamid.nope".into(), status: "read".into() };
    let (status, _): (u16, ErrorBody) = json_of(h.post(control::STATUS_PATH, &unknown).await).await;
    assert_eq!(status, 404);
    let (_, body): (u16, telegram::ApiResponse<telegram::Message>) = json_of(h.telegram(8, "x").await).await;
    let id = body.result.expect("message").message_id.to_string();
    let telegram = ManualStatus { channel: "telegram".into(), channel_message_id: id, status: "read".into() };
    let (status, _): (u16, ErrorBody) = json_of(h.post(control::STATUS_PATH, &telegram).await).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn unknown_channels_in_the_control_api_are_400() {
    let h = start(Webhook::Fake).await;
    let responses = [
        h.post(control::FAULTS_PATH, &faults("sms")).await,
        h.post(control::RECEIPTS_PATH, &ReceiptsMode { channel: "sms".into(), mode: "read".into() }).await,
        h.post(control::INBOUND_PATH, &Inbound { channel: "sms".into(), from: "1".into(), text: "x".into() }).await,
        h.post(
            control::STATUS_PATH,
            &ManualStatus { channel: "sms".into(), channel_message_id: "1".into(), status: "read".into() },
        )
        .await,
        h.http.get(format!("{}{}?channel=sms", h.base, control::SENT_PATH)).send().await.expect("GET"),
    ];
    for response in responses {
        let (status, body): (u16, ErrorBody) = json_of(response).await;
        assert_eq!(status, 400);
        assert!(body.error.contains("unknown channel \"sms\""), "{}", body.error);
    }
    let bad_mode =
        h.post(control::RECEIPTS_PATH, &ReceiptsMode { channel: "whatsapp".into(), mode: "seen".into() }).await;
    assert_eq!(bad_mode.status(), 400);
    let bad_status = h.post(control::FAULTS_PATH, &Faults { fail_next: Some(vec![200]), ..faults("whatsapp") }).await;
    assert_eq!(bad_status.status(), 400);
}

#[tokio::test]
async fn inbound_without_a_webhook_is_409() {
    let h = start(Webhook::Unset).await;
    let request = Inbound { channel: "whatsapp".into(), from: "1555".into(), text: "x".into() };
    let (status, body): (u16, ErrorBody) = json_of(h.post(control::INBOUND_PATH, &request).await).await;
    assert_eq!(status, 409);
    assert!(body.error.contains("webhook"));
}

#[tokio::test]
async fn reset_clears_faults_and_records() {
    let h = start(Webhook::Unset).await;
    h.faults(Faults { fail_next: Some(vec![503]), latency_ms: Some(5), ..faults("whatsapp") }).await;
    let _: Ack =
        h.control(control::RECEIPTS_PATH, &ReceiptsMode { channel: "whatsapp".into(), mode: "none".into() }).await;
    assert_eq!(h.whatsapp("1555", "x", "").await.status(), 503);
    let _: Ack = h.control(control::RESET_PATH, &serde_json::json!({})).await;
    assert!(h.sent("whatsapp").await.is_empty());
    assert_eq!(h.whatsapp("1555", "x", "").await.status(), 200);
    let now: Faults = h.control(control::FAULTS_PATH, &faults("whatsapp")).await;
    assert_eq!((now.latency_ms, now.fail_next, now.permanent), (Some(0), Some(vec![]), Some(vec![])));
}

#[tokio::test]
async fn serve_stops_on_cancellation() {
    let mut h = start(Webhook::Unset).await;
    let _: Ack = h.get(control::HEALTH_PATH).await;
    h.shutdown.cancel();
    let server = h.server.take().expect("server task");
    let result = tokio::time::timeout(DEADLINE, server).await.expect("stopped in time").expect("task");
    assert!(result.is_ok(), "{result:?}");
}

/// The binary: flags parsed, the listening line logged, SIGTERM honoured.
#[cfg(unix)]
#[tokio::test]
async fn binary_logs_its_address_and_stops_on_sigterm() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_channel-sim"))
        .args(["--listen", "127.0.0.1:0", "--receipt-delay-ms", "1"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn channel-sim");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await.expect("read log") {
            if line.contains("channel simulator listening") {
                let field = line.split_whitespace().find_map(|w| w.strip_prefix("addr=")).expect("addr field");
                return field.parse::<SocketAddr>().expect("socket address");
            }
        }
        panic!("channel-sim exited before listening");
    })
    .await
    .expect("listening line in time");
    let health: Ack = reqwest::get(format!("http://{addr}{}", control::HEALTH_PATH))
        .await
        .expect("GET health")
        .json()
        .await
        .expect("health json");
    assert!(health.ok);
    let pid = child.id().expect("pid").to_string();
    let killed = tokio::process::Command::new("kill").args(["-TERM", &pid]).status().await.expect("kill");
    assert!(killed.success());
    let status = tokio::time::timeout(DEADLINE, child.wait()).await.expect("exited in time").expect("wait");
    assert!(status.success(), "{status}");
}
