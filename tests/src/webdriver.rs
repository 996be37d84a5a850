//! Headless Chromium driven through WebDriver (`chromedriver`), for the
//! browser tests: the W3C WebDriver protocol's few commands they use, over
//! HTTP on loopback. The browser is Debian's `chromium`, the driver its
//! `chromium-driver` (`make test` installs both: tools/install-chromium.sh);
//! `CHAT_CHROMEDRIVER` and `CHAT_CHROMIUM` point elsewhere.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use base64::Engine;
use serde_json::{Value, json};

use crate::{DEADLINE, free_port};

/// The key WebDriver names an element reference by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How often a wait asks the page again.
const POLL: Duration = Duration::from_millis(50);

/// A `chromedriver` process on a free loopback port, killed on drop.
#[derive(Debug)]
pub struct Driver {
    child: Child,
    url: String,
    http: reqwest::Client,
    /// Each browser's own profile, removed on drop.
    profiles: PathBuf,
}

impl Driver {
    pub async fn start() -> anyhow::Result<Self> {
        let driver =
            std::env::var_os("CHAT_CHROMEDRIVER").map_or_else(|| PathBuf::from("/usr/bin/chromedriver"), PathBuf::from);
        ensure!(
            driver.exists(),
            "{} not found: `make test` installs Debian's chromium-driver (tools/install-chromium.sh), or set CHAT_CHROMEDRIVER",
            driver.display()
        );
        let port = free_port()?;
        // Its own process group, with the browsers it starts: dropping the
        // driver kills them all.
        let child = Command::new(&driver)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", driver.display()))?;
        let profiles = std::env::temp_dir().join(crate::unique("chat-browser-"));
        std::fs::create_dir_all(&profiles)?;
        let this = Self { child, url: format!("http://127.0.0.1:{port}"), http: reqwest::Client::new(), profiles };
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let ready = this.http.get(format!("{}/status", this.url)).send().await;
            if let Ok(answer) = ready
                && let Ok(status) = answer.json::<Value>().await
                && status["value"]["ready"] == true
            {
                return Ok(this);
            }
            ensure!(tokio::time::Instant::now() < deadline, "chromedriver did not become ready on port {port}");
            tokio::time::sleep(POLL).await;
        }
    }

    /// A new headless browser window, 1280×800, with its own empty profile.
    pub async fn browser(&self, name: &str) -> anyhow::Result<Browser> {
        let chromium =
            std::env::var_os("CHAT_CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
        let profile = self.profiles.join(name);
        // Without the background-networking flags Chromium keeps trying to
        // reach Google's services, which this machine's network refuses.
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            // A page in a hidden window still counts as visible: reads are sent.
            "--disable-background-timer-throttling".to_owned(),
            "--disable-renderer-backgrounding".to_owned(),
            "--window-size=1280,800".to_owned(),
            format!("--user-data-dir={}", profile.display()),
        ];
        let capabilities = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": { "binary": chromium, "args": args },
            }}
        });
        let answer =
            call(&self.http, reqwest::Method::POST, &format!("{}/session", self.url), Some(capabilities)).await?;
        let id = answer["sessionId"].as_str().context("a new session's id")?.to_owned();
        Ok(Browser { http: self.http.clone(), base: format!("{}/session/{id}", self.url), name: name.to_owned() })
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // `--`: without it, kill(1) may read the negative pid as an option.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-s", "KILL", "--", &group]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profiles);
    }
}

/// One browser window (a WebDriver session).
#[derive(Debug)]
pub struct Browser {
    http: reqwest::Client,
    base: String,
    pub name: String,
}

/// One WebDriver command: its `value`, or its error as one.
async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let request = http.request(method, url).timeout(DEADLINE);
    let request = match body {
        Some(body) => request.json(&body),
        None => request,
    };
    let answer: Value = request.send().await.with_context(|| format!("WebDriver {url}"))?.json().await?;
    let value = answer.get("value").cloned().unwrap_or(Value::Null);
    if let Some(error) = value.get("error").and_then(Value::as_str) {
        bail!("WebDriver {url}: {error}: {}", value["message"].as_str().unwrap_or_default());
    }
    // A new session answers with `value.sessionId`.
    Ok(if value.get("sessionId").is_some() { value } else { answer["value"].clone() })
}

impl Browser {
    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        call(&self.http, reqwest::Method::POST, &format!("{}{path}", self.base), Some(body)).await
    }

    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.post("/url", json!({ "url": url })).await.map(drop)
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    pub async fn run(&self, script: &str, args: Value) -> anyhow::Result<Value> {
        self.post("/execute/sync", json!({ "script": script, "args": args })).await
    }

    /// Waits (bounded) until `expression` is truthy in the page, and
    /// returns its value. `what` says what was awaited when it never is.
    pub async fn wait_for(&self, what: &str, expression: &str) -> anyhow::Result<Value> {
        let script = format!("try {{ return ({expression}); }} catch (e) {{ return null; }}");
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let value = self.run(&script, json!([])).await?;
            let truthy = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
                Value::String(s) => !s.is_empty(),
                Value::Array(a) => !a.is_empty(),
                Value::Object(_) => true,
            };
            if truthy {
                return Ok(value);
            }
            if tokio::time::Instant::now() >= deadline {
                let state = self.run(PAGE_STATE, json!([])).await.unwrap_or_default();
                bail!("{}: {what}: not within {DEADLINE:?}; the page shows {state}", self.name);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn element(&self, css: &str) -> anyhow::Result<String> {
        let found = self.post("/element", json!({ "using": "css selector", "value": css })).await?;
        found[ELEMENT].as_str().map(str::to_owned).with_context(|| format!("{}: no element {css}", self.name))
    }

    /// Types `text` into the element as keystrokes (real input events).
    pub async fn type_into(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let element = self.element(css).await?;
        self.post(&format!("/element/{element}/value"), json!({ "text": text })).await.map(drop)
    }

    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        let element = self.element(css).await?;
        self.post(&format!("/element/{element}/click"), json!({})).await.map(drop)
    }

    /// Saves a screenshot of the window as `dir/<name>.png`.
    pub async fn screenshot(&self, dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
        let answer = call(&self.http, reqwest::Method::GET, &format!("{}/screenshot", self.base), None).await?;
        let png = base64::engine::general_purpose::STANDARD.decode(answer.as_str().context("screenshot data")?)?;
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png)?;
        Ok(path)
    }
}

/// What a failed wait reports of the page: its status and what it lists.
const PAGE_STATE: &str = r#"
const q = (s) => document.querySelector(s);
const status = q('#status');
return JSON.stringify({
  status: status && status.dataset,
  error: q('#error-banner') && !q('#error-banner').hidden ? q('#error-banner').textContent : null,
  messages: Array.from(document.querySelectorAll('#messages li.message')).map((m) => [m.dataset.seq, m.dataset.sender, m.querySelector('.body') && m.querySelector('.body').textContent, m.querySelector('.ticks') && m.querySelector('.ticks').dataset.status]),
  typing: q('#typing') && q('#typing').textContent,
  presence: Array.from(document.querySelectorAll('#presence li')).map((p) => [p.dataset.user, p.dataset.online]),
});
"#;
