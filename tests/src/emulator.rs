//! The AWS emulator a test runs against, and provisioning from
//! `template.yaml`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{free_port, workspace_root};

/// Credentials and region emulators accept; real AWS is never the target of
/// the harness (it only uses an explicit endpoint).
pub const REGION: &str = "us-east-1";
const KEY: &str = "test";

#[derive(Debug)]
pub struct Emulator {
    pub endpoint: String,
    /// The moto server this harness started, if it started one.
    process: Option<Child>,
    /// The LocalStack container this harness started, if it started one
    /// (held for its drop, which removes it).
    _container: Option<crate::localstack::Container>,
}

/// The Python interpreter of the project's pinned environment.
pub fn python() -> PathBuf {
    std::env::var_os("CHAT_PYTHON").map(PathBuf::from).unwrap_or_else(|| workspace_root().join(".venv/bin/python"))
}

impl Emulator {
    /// `AWS_ENDPOINT_URL` when set; else a fresh LocalStack container when
    /// `CHAT_EMULATOR=localstack-docker`; else a fresh moto server.
    pub fn start() -> anyhow::Result<Self> {
        if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") {
            return Ok(Self { endpoint, process: None, _container: None });
        }
        match std::env::var("CHAT_EMULATOR").as_deref() {
            Ok("localstack-docker") => {
                let container = crate::localstack::Container::start()?;
                return Ok(Self { endpoint: container.endpoint.clone(), process: None, _container: Some(container) });
            }
            Ok("moto") | Err(_) => {}
            Ok(other) => bail!("CHAT_EMULATOR={other:?}: expected moto (the default) or localstack-docker"),
        }
        let python = python();
        anyhow::ensure!(
            python.exists(),
            "{} not found: run the tests through `make test` (it installs the pinned emulator), set CHAT_PYTHON, or set AWS_ENDPOINT_URL",
            python.display()
        );
        let port = free_port()?;
        let process = Command::new(&python)
            .arg(workspace_root().join("localstack/moto_server.py"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            // PurgeQueue at any time, not once a minute: the benchmark
            // empties the functions' queues between steps.
            .env("MOTO_SQS_ENFORCE_STRICT_QUEUE_PURGE_BEHAVIOUR", "false")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting moto server with {}", python.display()))?;
        let emulator = Self { endpoint: format!("http://127.0.0.1:{port}"), process: Some(process), _container: None };
        emulator.wait_listening(port)?;
        Ok(emulator)
    }

    fn wait_listening(&self, port: u16) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("moto server did not listen on port {port} within 30 s")
    }

    /// The moto server's process id, when this harness started one: a test
    /// may freeze it (SIGSTOP) to stand for an AWS that stops answering.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Child::id)
    }

    /// The AWS environment for a process that should use this emulator;
    /// per-service endpoints (`AWS_ENDPOINT_URL_DYNAMODB` when SNS/SQS are
    /// LocalStack and DynamoDB is moto) pass through.
    pub fn aws_env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("AWS_ENDPOINT_URL".to_owned(), self.endpoint.clone()),
            ("AWS_REGION".to_owned(), std::env::var("AWS_REGION").unwrap_or_else(|_| REGION.into())),
        ];
        env.extend(std::env::vars().filter(|(k, _)| k.starts_with("AWS_ENDPOINT_URL_")));
        // Credentials in this environment pass through; else any will do.
        for (name, fallback) in [("AWS_ACCESS_KEY_ID", KEY), ("AWS_SECRET_ACCESS_KEY", KEY)] {
            env.push((name.to_owned(), std::env::var(name).unwrap_or_else(|_| fallback.to_owned())));
        }
        env
    }

    /// Creates a stack named `stack` from `template.yaml`; returns the
    /// template's outputs as `CHAT_*` environment variables.
    pub fn provision(&self, stack: &str) -> anyhow::Result<Vec<(String, String)>> {
        self.provision_with(stack, &[])
    }

    /// [`Emulator::provision`] with template parameters (`Key=Value`).
    pub fn provision_with(&self, stack: &str, parameters: &[&str]) -> anyhow::Result<Vec<(String, String)>> {
        let root = workspace_root();
        let mut cmd = Command::new(python());
        cmd.arg(root.join("localstack/provision.py")).args(["--template"]).arg(root.join("template.yaml")).args([
            "--endpoint",
            &self.endpoint,
            "--stack-name",
            stack,
            "--format",
            "env",
        ]);
        for parameter in parameters {
            cmd.args(["--parameter", parameter]);
        }
        let out = cmd.envs(self.aws_env()).output().context("running provision.py")?;
        if !out.status.success() {
            bail!("provisioning failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let text = String::from_utf8(out.stdout)?;
        let vars: HashMap<String, String> = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        anyhow::ensure!(vars.contains_key("CHAT_TOPIC_ARN"), "provisioning printed no CHAT_TOPIC_ARN: {text}");
        Ok(vars.into_iter().collect())
    }

    /// A DynamoDB client for assertions (on `AWS_ENDPOINT_URL_DYNAMODB` when
    /// DynamoDB is served apart from SNS/SQS).
    pub async fn dynamodb(&self) -> aws_sdk_dynamodb::Client {
        let sdk = self.sdk_config().await;
        let mut config = aws_sdk_dynamodb::config::Builder::from(&sdk);
        if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL_DYNAMODB") {
            config = config.endpoint_url(endpoint);
        }
        aws_sdk_dynamodb::Client::from_conf(config.build())
    }

    /// SDK configuration for assertions made directly against the emulator.
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(aws_config::Region::new(REGION))
            .credentials_provider(aws_sdk_sqs::config::Credentials::new(KEY, KEY, None, None, "e2e"))
            .load()
            .await
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
