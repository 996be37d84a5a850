//! The web app in real headless Chromium, driven through WebDriver, against
//! `make run`'s own processes (`localstack/run-local.sh`: moto, the
//! provisioned stack, two gateways on SNS → SQS, the functions and the web
//! server with development sign-in) on free loopback ports.
//!
//! One run, in steps, each leaving screenshots under
//! `$CHAT_ARTIFACTS/browser/` (`make test`: the target directory's
//! `test-artifacts`):
//! 1. alice on gateway A and bob on gateway B chat both ways in two
//!    browsers: presence, typing, messages, and ticks going forward from
//!    SENT to READ (bob's page shows the message at once, so his read
//!    arrives within his ack's window and takes its place: DELIVERED shows
//!    only when the ack went first);
//! 2. send → render latency: messages from a gRPC client on gateway A
//!    (40; `CHAT_BROWSER_LATENCY_MESSAGES` sets how many), rendered in bob's
//!    page on B, beside a native gRPC client on B, one clock (printed, and
//!    written to `browser-latency.csv`; never asserted);
//! 3. scrolling up pages older history in;
//! 4. a browser user, a `chat` CLI user and the generic Python client in one
//!    conversation;
//! 5. bob's gateway is SIGKILLed while alice keeps sending: bob's page moves
//!    to gateway A and shows every message once, in order.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, ensure};
use chat_e2e::client::{TestClient, with_token};
use chat_e2e::run_local::{Ports, RUNNING, Run, START_BOUND, TempDir, signal};
use chat_e2e::webdriver::{Browser, Driver};
use chat_e2e::{DEADLINE, unique, workspace_bin, workspace_root};
use chat_proto::pb::chat_service_client::ChatServiceClient;
use chat_proto::pb::server_event::Event;
use chat_proto::pb::{GetHistoryRequest, SendMessageRequest};
use serde_json::{Value, json};
use tonic::transport::Channel;

/// Messages of the latency step: a smoke-sized run by default (each send
/// on moto, with two pages acknowledging and reading it, takes some 400 ms);
/// `CHAT_BROWSER_LATENCY_MESSAGES=200` for the figure the closing notes
/// report.
const LATENCY_MESSAGES: usize = 40;
/// Their pace: a steady chat, not a flood.
const LATENCY_GAP: Duration = Duration::from_millis(20);
/// Messages stored before the history step opens its page (50 a page).
const HISTORY_MESSAGES: u64 = 120;

/// `make run` on free ports, a WebDriver, and where screenshots go.
struct Stage {
    run: Run,
    ports: Ports,
    run_dir: TempDir,
    bin_dir: PathBuf,
    driver: Driver,
    shots: PathBuf,
    shot_count: std::sync::atomic::AtomicUsize,
}

impl Stage {
    async fn start() -> anyhow::Result<Self> {
        let run_dir = TempDir(std::env::temp_dir().join(unique("chat-browser-run-")));
        std::fs::create_dir_all(&run_dir.0)?;
        let ports = Ports::free()?;
        let mut run = Run::start(&run_dir.0, &ports)?;
        run.wait_line(RUNNING, START_BOUND)?;
        run.wait_line("Press Ctrl-C", DEADLINE)?;
        run.read_pids()?;
        run.pid("web").context("make run serves the web app (built by `make web`; CHAT_WEB_DIR)")?;
        let bin_dir = workspace_bin("gateway")?.parent().context("binary directory")?.to_owned();
        let artifacts = std::env::var_os("CHAT_ARTIFACTS")
            .map_or_else(|| std::env::temp_dir().join("chat-test-artifacts"), PathBuf::from);
        let shots = artifacts.join("browser");
        let _ = std::fs::remove_dir_all(&shots);
        std::fs::create_dir_all(&shots)?;
        let driver = Driver::start().await?;
        Ok(Self { run, ports, run_dir, bin_dir, driver, shots, shot_count: Default::default() })
    }

    fn gateway_url(&self, index: usize) -> String {
        let port = if index == 0 { self.ports.gateway_a } else { self.ports.gateway_b };
        format!("http://127.0.0.1:{port}")
    }

    fn secret_file(&self) -> PathBuf {
        self.run_dir.0.join("jwt-secret")
    }

    fn token(&self, user: &str) -> anyhow::Result<String> {
        let secret = std::fs::read_to_string(self.secret_file())?;
        Ok(chat_proto::token::mint(
            secret.trim().as_bytes(),
            user,
            chat_proto::token::DEFAULT_ISSUER,
            chat_proto::token::DEFAULT_AUDIENCE,
            Duration::from_secs(3600),
        )?)
    }

    /// The `chat` CLI as a user of this run would call it.
    async fn chat(&self, user: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = tokio::process::Command::new(self.bin_dir.join("chat"));
        for (name, _) in std::env::vars() {
            if name.starts_with("CHAT_") {
                cmd.env_remove(name);
            }
        }
        let output = cmd
            .args(args)
            .env("CHAT_GATEWAYS", format!("{},{}", self.gateway_url(0), self.gateway_url(1)))
            .env("CHAT_JWT_SECRET_FILE", self.secret_file())
            .env("CHAT_USER", user)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(DEADLINE, output).await.context("chat CLI timed out")??;
        ensure!(output.status.success(), "chat {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    async fn grpc(&self, index: usize) -> anyhow::Result<ChatServiceClient<Channel>> {
        Ok(ChatServiceClient::new(Channel::from_shared(self.gateway_url(index))?.connect().await?))
    }

    /// A browser signed in as `user` (development sign-in), preferring
    /// gateway `gateway`, with `conversation` open and joined.
    async fn open(&self, user: &str, conversation: &str, gateway: usize) -> anyhow::Result<Browser> {
        let browser = self.driver.browser(user).await?;
        let url =
            format!("http://127.0.0.1:{}/?user={user}&conversation={conversation}&gateway={gateway}", self.ports.web);
        browser.goto(&url).await?;
        browser.wait_for("connected", "document.querySelector('#status').dataset.state === 'connected'").await?;
        browser
            .wait_for(
                "the conversation open",
                &format!("document.querySelector('#conversations li.active[data-conversation-id=\"{conversation}\"]')"),
            )
            .await?;
        Ok(browser)
    }

    async fn shot(&self, browser: &Browser, step: &str) -> anyhow::Result<()> {
        let n = self.shot_count.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        browser.screenshot(&self.shots, &format!("{n:02}-{step}-{}", browser.name)).await?;
        Ok(())
    }
}

/// `[seq, sender, body, tick status]` of every message a page shows, in
/// page order.
async fn shown(browser: &Browser) -> anyhow::Result<Vec<(u64, String, String, String)>> {
    let rows = browser
        .run(
            "return Array.from(document.querySelectorAll('#messages li.message')).map((m) => [Number(m.dataset.seq), \
             m.dataset.sender, m.querySelector('.body').textContent, \
             m.querySelector('.ticks') ? m.querySelector('.ticks').dataset.status : '']);",
            json!([]),
        )
        .await?;
    let rows: Vec<(u64, String, String, String)> = serde_json::from_value(rows)?;
    Ok(rows)
}

/// A JS expression: the page shows a message from `sender` with `body`.
fn shows(sender: &str, body: &str) -> String {
    format!(
        "Array.from(document.querySelectorAll('#messages li.message')).some((m) => m.dataset.sender === {} && \
         m.querySelector('.body').textContent === {})",
        json!(sender),
        json!(body)
    )
}

/// Every seq once, strictly increasing.
fn check_order(who: &str, rows: &[(u64, String, String, String)]) -> anyhow::Result<()> {
    let seqs: Vec<u64> = rows.iter().map(|r| r.0).collect();
    ensure!(seqs.windows(2).all(|w| w[0] < w[1]), "{who}'s page shows seqs out of order or twice: {seqs:?}");
    Ok(())
}

fn now_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.saturating_sub(1).min(sorted.len().saturating_sub(1))).copied().unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_app_chats_in_real_chromium_against_make_run() -> anyhow::Result<()> {
    let stage = Stage::start().await?;
    let room = unique("web-");
    stage.chat("alice", &["create", "-c", &room, "--public", "--title", "Web chat"]).await?;

    // 1. Two browsers, two gateways.
    let alice = stage.open("alice", &room, 0).await?;
    let bob = stage.open("bob", &room, 1).await?;
    let a_gateway = alice.run("return document.querySelector('#status').dataset.gatewayId;", json!([])).await?;
    let b_gateway = bob.run("return document.querySelector('#status').dataset.gatewayId;", json!([])).await?;
    ensure!((a_gateway.as_str(), b_gateway.as_str()) == (Some("local-a"), Some("local-b")), "{a_gateway} {b_gateway}");
    alice
        .wait_for("bob online", "document.querySelector('#presence li[data-user=\"bob\"][data-online=\"true\"]')")
        .await?;
    bob.wait_for("alice online", "document.querySelector('#presence li[data-user=\"alice\"][data-online=\"true\"]')")
        .await?;
    stage.shot(&alice, "presence").await?;

    // Every status alice's own ticks take, in order.
    alice
        .run(
            "window.tickHistory = []; new MutationObserver((records) => { for (const r of records) { \
             if (r.target.classList && r.target.classList.contains('ticks')) window.tickHistory.push(r.target.dataset.status); } \
             }).observe(document.querySelector('#messages'), { subtree: true, attributes: true, attributeFilter: ['data-status'] });",
            json!([]),
        )
        .await?;
    alice.type_into("#composer", "hello bob").await?;
    bob.wait_for("alice typing", "document.querySelector('#typing').textContent.includes('alice')").await?;
    stage.shot(&bob, "alice-typing").await?;
    alice.click("#send").await?;
    bob.wait_for("alice's message", &shows("alice", "hello bob")).await?;
    alice
        .wait_for(
            "READ on alice's message",
            "Array.from(document.querySelectorAll('#messages li.message .ticks')).some((t) => t.dataset.status === 'READ')",
        )
        .await?;
    let ticks: Vec<String> = serde_json::from_value(alice.run("return window.tickHistory;", json!([])).await?)?;
    let rank = |status: &str| ["SENT", "DELIVERED", "READ"].iter().position(|s| *s == status);
    let ranks: Vec<usize> = ticks
        .iter()
        .map(|t| rank(t).context(format!("an unknown tick {t:?}: {ticks:?}")))
        .collect::<anyhow::Result<_>>()?;
    ensure!(ranks.windows(2).all(|w| w[0] <= w[1]), "ticks went backwards: {ticks:?}");
    ensure!(ticks.first().map(String::as_str) == Some("SENT"), "ticks start at SENT: {ticks:?}");
    ensure!(ticks.last().map(String::as_str) == Some("READ"), "ticks end at READ: {ticks:?}");
    stage.shot(&alice, "read-ticks").await?;
    bob.type_into("#composer", "hi alice\u{E007}").await?; // typed, then Enter
    alice.wait_for("bob's reply", &shows("bob", "hi alice")).await?;
    bob.wait_for("bob's own reply", &shows("bob", "hi alice")).await?;
    stage.shot(&alice, "reply").await?;
    stage.shot(&bob, "reply").await?;

    // 2. Send → render latency, gateway A → bob's page on B, beside a
    // native gRPC stream on B; every timestamp from this machine's clock.
    let messages = std::env::var("CHAT_BROWSER_LATENCY_MESSAGES")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(LATENCY_MESSAGES);
    let token = stage.token("lat")?;
    let mut native =
        TestClient::connect(Channel::from_shared(stage.gateway_url(1))?.connect().await?, "lat", &token).await?;
    native.join(&room).await?;
    // Read as they arrive, in a task of its own.
    let native_task = tokio::spawn(async move {
        let mut ms = Vec::new();
        while ms.len() < messages {
            match native.next_event(DEADLINE).await? {
                Some(Event::Message(m)) if m.body.starts_with("latency ") => ms.push(now_ms() - m.sent_at_ms as f64),
                Some(_) => {}
                None => anyhow::bail!("the native stream ended after {} of {messages}", ms.len()),
            }
        }
        Ok(ms)
    });
    let mut sender = stage.grpc(0).await?;
    let mut seqs = Vec::new();
    let mut pace = tokio::time::interval(LATENCY_GAP);
    for i in 0..messages {
        pace.tick().await;
        let request = SendMessageRequest {
            conversation_id: room.clone(),
            client_message_id: format!("lat-{i}"),
            body: format!("latency {i}"),
        };
        seqs.push(sender.send_message(with_token(request, &token)?).await?.into_inner().seq);
    }
    let mut native_ms = native_task.await??;
    let last = *seqs.last().context("sent")?;
    bob.wait_for(
        "every latency message rendered",
        &format!("window.chatDebug.renderLatencies.some((l) => l.seq === {last})"),
    )
    .await?;
    let rendered: Vec<Value> =
        serde_json::from_value(bob.run("return window.chatDebug.renderLatencies;", json!([])).await?)?;
    let mut browser_ms: Vec<f64> = rendered
        .iter()
        .filter(|l| l["seq"].as_u64().is_some_and(|s| seqs.contains(&s)))
        .filter_map(|l| Some(l["renderedAtMs"].as_f64()? - l["sentAtMs"].as_f64()?))
        .collect();
    ensure!(browser_ms.len() == messages, "bob's page rendered {} of {messages}", browser_ms.len());
    browser_ms.sort_by(f64::total_cmp);
    native_ms.sort_by(f64::total_cmp);
    let report = format!(
        "path,messages,p50_ms,p99_ms,max_ms\nbrowser (gRPC-Web, rendered),{messages},{:.1},{:.1},{:.1}\n\
         native gRPC stream (tonic),{messages},{:.1},{:.1},{:.1}\n",
        percentile(&browser_ms, 50.0),
        percentile(&browser_ms, 99.0),
        browser_ms.last().copied().unwrap_or_default(),
        percentile(&native_ms, 50.0),
        percentile(&native_ms, 99.0),
        native_ms.last().copied().unwrap_or_default(),
    );
    eprintln!("send (accepted on gateway A) -> shown on gateway B, one clock:\n{report}");
    std::fs::write(stage.shots.join("browser-latency.csv"), &report)?;
    stage.shot(&bob, "latency-run").await?;

    // 3. History pages in as bob scrolls up.
    let old_room = unique("web-history-");
    stage.chat("carol", &["create", "-c", &old_room, "--public"]).await?;
    let carol = stage.token("carol")?;
    let mut history_sender = stage.grpc(0).await?;
    for i in 1..=HISTORY_MESSAGES {
        let request = SendMessageRequest {
            conversation_id: old_room.clone(),
            client_message_id: format!("old-{i}"),
            body: format!("old message {i}"),
        };
        history_sender.send_message(with_token(request, &carol)?).await?;
    }
    wait_stored(&mut history_sender, &carol, &old_room, HISTORY_MESSAGES).await?;
    let reader = stage.open("dora", &old_room, 1).await?;
    reader.wait_for("the newest page", &shows("carol", &format!("old message {HISTORY_MESSAGES}"))).await?;
    let first_page = shown(&reader).await?;
    ensure!(first_page.len() < HISTORY_MESSAGES as usize, "the whole history came at once: {}", first_page.len());
    stage.shot(&reader, "history-newest-page").await?;
    let scroll_up = "const m = document.querySelector('#messages'); m.scrollTop = 0; m.dispatchEvent(new Event('scroll')); \
                     return document.querySelectorAll('#messages li.message').length;";
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let count = reader.run(scroll_up, json!([])).await?.as_u64().unwrap_or(0);
        if count >= HISTORY_MESSAGES {
            break;
        }
        ensure!(tokio::time::Instant::now() < deadline, "scrolling up showed {count} of {HISTORY_MESSAGES}");
        reader
            .wait_for(
                "the page loaded",
                "document.querySelector('#messages').dataset.loading === 'false' || \
                 document.querySelector('#messages').dataset.hasMore === 'false'",
            )
            .await?;
    }
    let all = shown(&reader).await?;
    let seqs: Vec<u64> = all.iter().map(|r| r.0).collect();
    ensure!(seqs == (1..=HISTORY_MESSAGES).collect::<Vec<_>>(), "history after scrolling: {seqs:?}");
    reader.wait_for("no more history", "document.querySelector('#messages').dataset.hasMore === 'false'").await?;
    stage.shot(&reader, "history-scrolled-to-the-start").await?;
    drop(reader);

    // 4. A browser, the CLI and the Python client in one conversation.
    let mixed = unique("web-mixed-");
    stage.chat("alice", &["create", "-c", &mixed, "-m", "dave", "-m", "erin", "-m", "frank"]).await?;
    let dave = stage.open("dave", &mixed, 0).await?;
    let python = std::env::var_os("CHAT_GRPC_PYTHON").context("CHAT_GRPC_PYTHON is not set (make test sets it)")?;
    let mut participant = tokio::process::Command::new(python)
        .arg(workspace_root().join("tests/python/generic_client.py"))
        .arg("--participant")
        .arg("--proto")
        .arg(workspace_root().join("proto/chat.proto"))
        .args(["--gateway-a", &stage.gateway_url(1)])
        .args(["--token-alice", &stage.token("frank")?])
        .args(["--conversation", &mixed])
        .args(["--say", "hello from python"])
        .args(["--expect", "dave=hello from the browser", "--expect", "erin=hello from the cli"])
        .args(["--timeout", "60"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the Python client")?;
    dave.wait_for("frank's message (Python)", &shows("frank", "hello from python")).await?;
    stage.chat("erin", &["send", "-c", &mixed, "--body", "hello from the cli"]).await?;
    dave.wait_for("erin's message (CLI)", &shows("erin", "hello from the cli")).await?;
    dave.type_into("#composer", "hello from the browser\u{E007}").await?;
    dave.wait_for("dave's own message", &shows("dave", "hello from the browser")).await?;
    stage.shot(&dave, "browser-cli-python").await?;
    let stdout = participant.stdout.take();
    let status =
        tokio::time::timeout(Duration::from_secs(90), participant.wait()).await.context("Python client hung")??;
    let mut out = String::new();
    if let Some(mut stdout) = stdout {
        use tokio::io::AsyncReadExt;
        stdout.read_to_string(&mut out).await?;
    }
    ensure!(status.success(), "the Python client failed ({status}): {out}");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let history = stage.chat("erin", &["history", "-c", &mixed]).await?;
        if history.contains("hello from the browser") && history.contains("dave") {
            break;
        }
        ensure!(tokio::time::Instant::now() < deadline, "the CLI's history lacks the browser's message:\n{history}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(dave);

    // 5. Bob's gateway dies mid-conversation; his page resumes on A.
    let before = shown(&bob).await?.len();
    let gateway_b = stage.run.pid("gateway b")?;
    let mut bodies = Vec::new();
    for i in 0..12 {
        if i == 4 {
            signal("KILL", gateway_b)?;
        }
        let body = format!("while b is down {i}");
        alice.type_into("#composer", &format!("{body}\u{E007}")).await?;
        alice.wait_for("alice's message shown", &shows("alice", &body)).await?;
        bodies.push(body);
    }
    bob.wait_for(
        "bob reconnected to gateway A",
        "document.querySelector('#status').dataset.state === 'connected' && \
         document.querySelector('#status').dataset.gatewayId === 'local-a' && \
         Number(document.querySelector('#status').dataset.sessions) >= 2",
    )
    .await?;
    let last = bodies.last().context("sent")?.clone();
    bob.wait_for("alice's last message after the failover", &shows("alice", &last)).await?;
    stage.shot(&bob, "after-failover").await?;
    let rows = shown(&bob).await?;
    check_order("bob", &rows)?;
    let got: Vec<&str> = rows.iter().filter(|r| r.2.starts_with("while b is down")).map(|r| r.2.as_str()).collect();
    ensure!(got == bodies.iter().map(String::as_str).collect::<Vec<_>>(), "bob's page after failover: {got:?}");
    ensure!(rows.len() >= before + bodies.len(), "bob's page lost messages: {} then {}", before, rows.len());
    check_order("alice", &shown(&alice).await?)?;
    Ok(())
}

/// Waits (bounded) until `persist` has stored seq 1..=`count` of
/// `conversation` (what `GetHistory` pages through).
async fn wait_stored(
    client: &mut ChatServiceClient<Channel>,
    token: &str,
    conversation: &str,
    count: u64,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let request = GetHistoryRequest {
            conversation_id: conversation.to_owned(),
            page_size: 200,
            direction: chat_proto::pb::get_history_request::Direction::Forward as i32,
            ..Default::default()
        };
        let page = client.get_history(with_token(request, token)?).await?.into_inner();
        if page.messages.len() as u64 >= count {
            return Ok(());
        }
        ensure!(tokio::time::Instant::now() < deadline, "persist did not store {count} messages of {conversation}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
