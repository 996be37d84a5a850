//! A set of gateway processes (and the emulator they use) owned by one test.
//! Everything is killed on drop; a failing test shows the processes' logs.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use chat_proto::pb::chat_service_client::ChatServiceClient;
use chat_proto::pb::echo_service_client::EchoServiceClient;
use chat_proto::pb::{
    AddMemberRequest, ConversationKind, CreateConversationRequest, CreateConversationResponse, EchoRequest,
    GetConversationRequest, GetConversationResponse, GetMessageStatusRequest, GetMessageStatusResponse,
    LinkChannelRequest, RemoveMemberRequest, Role, SendMessageRequest, SendMessageResponse, SetRoleRequest,
    UnbanMemberRequest,
};
use tonic::transport::{Channel, Endpoint};

use crate::client::{TestClient, with_token};
use crate::emulator::Emulator;
use crate::metrics::Scrape;
use crate::{free_port, unique, workspace_bin};

/// Limits high enough that only tests of limits meet them.
const TEST_ENV: &[(&str, &str)] = &[
    ("CHAT_SEND_RATE", "100000"),
    ("CHAT_SEND_BURST", "100000"),
    ("CHAT_JOIN_RATE", "100000"),
    ("CHAT_JOIN_BURST", "100000"),
    ("CHAT_RECEIPT_RATE", "100000"),
    ("CHAT_RECEIPT_BURST", "100000"),
    ("CHAT_STREAM_RATE", "100000"),
    ("CHAT_STREAM_BURST", "100000"),
    ("CHAT_MAX_STREAMS_PER_USER", "100000"),
    ("CHAT_FRAME_RATE", "100000"),
    ("CHAT_FRAME_BURST", "100000"),
    ("CHAT_CONNECTION_RATE_PER_ADDRESS", "100000"),
    ("CHAT_CONNECTION_BURST_PER_ADDRESS", "100000"),
    ("CHAT_MAX_CONNECTIONS_PER_ADDRESS", "100000"),
    ("CHAT_LOG_FORMAT", "text"),
    ("NO_COLOR", "1"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Gateways on SNS/SQS/DynamoDB of the emulator.
    Aws,
    /// One gateway with the in-memory bus and store.
    Memory,
}

#[derive(Debug)]
pub struct GatewayProcess {
    child: Option<Child>,
    pub url: String,
    /// The metrics endpoint, `host:port`.
    pub metrics: String,
    pub instance_id: String,
    log: PathBuf,
}

#[derive(Debug)]
pub struct Cluster {
    pub mode: Mode,
    pub emulator: Option<Emulator>,
    pub stack: String,
    outputs: Vec<(String, String)>,
    secret: String,
    pub gateways: Vec<GatewayProcess>,
    /// Local function runners (`local-runner`), killed on drop.
    runners: Vec<(Child, PathBuf)>,
    /// Each runner's metrics endpoint (`host:port`), by runner index.
    runner_metrics: Vec<String>,
    logs: PathBuf,
    /// The private CA (PEM) of gateways serving TLS; `None`: plain h2c.
    ca: Option<Vec<u8>>,
    /// The CPUs (a `taskset` list) gateways start on; `None`: any.
    cpus: Option<String>,
}

impl Cluster {
    /// An emulator, a provisioned stack, and `gateways` gateways on it.
    pub async fn aws(gateways: usize) -> anyhow::Result<Self> {
        Self::aws_with(gateways, &[]).await
    }

    pub async fn aws_with(gateways: usize, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::aws_custom(gateways, env, &[]).await
    }

    /// Gateways with extra environment on a stack provisioned with template
    /// parameters (`Key=Value`).
    pub async fn aws_custom(gateways: usize, env: &[(&str, &str)], parameters: &[&str]) -> anyhow::Result<Self> {
        let emulator = Emulator::start()?;
        let stack = unique("e2e");
        let outputs = emulator.provision_with(&stack, parameters)?;
        let mut cluster = Self::empty(Mode::Aws, Some(emulator), stack, outputs)?;
        for _ in 0..gateways {
            cluster.start_gateway(env).await?;
        }
        Ok(cluster)
    }

    /// One gateway in embedded memory mode.
    pub async fn memory() -> anyhow::Result<Self> {
        Self::memory_with(&[]).await
    }

    pub async fn memory_with(env: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::memory_started(env, None).await
    }

    /// One memory-mode gateway started on the CPUs `cpus` names (a
    /// `taskset` list such as `0`): its runtime sizes itself to them.
    pub async fn memory_on(cpus: &str) -> anyhow::Result<Self> {
        Self::memory_started(&[], Some(cpus)).await
    }

    async fn memory_started(env: &[(&str, &str)], cpus: Option<&str>) -> anyhow::Result<Self> {
        let mut cluster = Self::empty(Mode::Memory, None, unique("mem"), Vec::new())?;
        cluster.cpus = cpus.map(str::to_owned);
        cluster.start_gateway(env).await?;
        Ok(cluster)
    }

    /// One memory-mode gateway serving TLS with the certificate and key
    /// files in `env` (`CHAT_TLS_CERT`, `CHAT_TLS_KEY`), reached at
    /// `https://127.0.0.1:<port>` trusting `ca_pem`.
    pub async fn memory_tls(env: &[(&str, &str)], ca_pem: Vec<u8>) -> anyhow::Result<Self> {
        let mut cluster = Self::empty(Mode::Memory, None, unique("tls"), Vec::new())?;
        cluster.ca = Some(ca_pem);
        cluster.start_gateway(env).await?;
        Ok(cluster)
    }

    /// Chat tests run on either mode.
    pub async fn new(mode: Mode, gateways: usize) -> anyhow::Result<Self> {
        match mode {
            Mode::Aws => Self::aws(gateways).await,
            Mode::Memory => Self::memory().await,
        }
    }

    fn empty(
        mode: Mode,
        emulator: Option<Emulator>,
        stack: String,
        outputs: Vec<(String, String)>,
    ) -> anyhow::Result<Self> {
        let logs = std::env::temp_dir().join(format!("chat-e2e-{stack}"));
        std::fs::create_dir_all(&logs)?;
        Ok(Self {
            mode,
            emulator,
            stack,
            outputs,
            secret: format!("{}{}", ulid::Ulid::new(), ulid::Ulid::new()),
            gateways: Vec::new(),
            runners: Vec::new(),
            runner_metrics: Vec::new(),
            logs,
            ca: None,
            cpus: None,
        })
    }

    /// The queue name prefix of this cluster's gateways.
    pub fn queue_prefix(&self) -> String {
        format!("{}-gw-", self.stack)
    }

    /// Starts one more gateway and waits until it answers. A start that
    /// lost its ports to another process between pick and bind is retried on
    /// fresh ports.
    pub async fn start_gateway(&mut self, env: &[(&str, &str)]) -> anyhow::Result<usize> {
        let mut attempt = 1;
        loop {
            let index = self.spawn_gateway(env)?;
            match self.wait_ready(index).await {
                Ok(()) => return Ok(index),
                Err(_) if attempt < 3 && self.log(index).contains("Address already in use") => {
                    eprintln!(
                        "gateway {index} lost its port to another process (attempt {attempt}); starting it again"
                    );
                    if let Some(mut child) = self.gateways.pop().and_then(|mut gateway| gateway.child.take()) {
                        let _ = child.kill();
                        let _ = child.wait();
                    }
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    fn spawn_gateway(&mut self, env: &[(&str, &str)]) -> anyhow::Result<usize> {
        let index = self.gateways.len();
        let port = free_port()?;
        let metrics = format!("127.0.0.1:{}", free_port()?);
        let instance_id = unique(&format!("g{index}-"));
        let log = self.logs.join(format!("gateway-{index}.log"));
        let mut cmd = crate::on_cpus(workspace_bin("gateway")?, self.cpus.as_deref());
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", std::env::var("CHAT_E2E_LOG").unwrap_or_else(|_| "info".into()))
            .env("CHAT_LISTEN", format!("127.0.0.1:{port}"))
            .env("CHAT_METRICS_LISTEN", &metrics)
            .env("CHAT_INSTANCE_ID", &instance_id)
            .env("CHAT_JWT_SECRET", &self.secret)
            .env("CHAT_QUEUE_PREFIX", self.queue_prefix())
            .envs(TEST_ENV.iter().copied());
        match self.mode {
            Mode::Aws => {
                let emulator = self.emulator.as_ref().context("AWS mode without emulator")?;
                cmd.env("CHAT_BUS", "sns-sqs").envs(emulator.aws_env()).envs(self.outputs.iter().cloned());
            }
            Mode::Memory => {
                cmd.env("CHAT_BUS", "memory");
            }
        }
        cmd.envs(env.iter().copied());
        let file = std::fs::File::create(&log)?;
        let child =
            cmd.stdin(Stdio::null()).stdout(file.try_clone()?).stderr(file).spawn().context("starting gateway")?;
        self.gateways.push(GatewayProcess {
            child: Some(child),
            url: format!("{}://127.0.0.1:{port}", if self.ca.is_some() { "https" } else { "http" }),
            metrics,
            instance_id,
            log,
        });
        Ok(index)
    }

    async fn wait_ready(&mut self, index: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = self.gateways[index].url.clone();
        while Instant::now() < deadline {
            if let Some(child) = self.gateways[index].child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("gateway {index} exited with {status} while starting:\n{}", self.log_tail(index));
            }
            if let Ok(channel) = self.endpoint(&url)?.connect().await {
                let mut echo = EchoServiceClient::new(channel);
                if echo.echo(EchoRequest { message: "ready?".into() }).await.is_ok() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("gateway {index} did not become ready:\n{}", self.log_tail(index))
    }

    /// A stack output (`CHAT_*` name), e.g. `CHAT_PERSIST_QUEUE_URL`.
    pub fn output(&self, name: &str) -> anyhow::Result<String> {
        self.outputs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| anyhow::anyhow!("stack has no output {name}"))
    }

    /// Empties the functions' queues (persist, fallback, connectors and
    /// their dead-letter queues). The benchmark runs no functions, and moto's
    /// `SendMessage` slows with the depth of the queue it sends to (measured:
    /// about 12 ms at 500 deep, 50 ms at 2,500), which would charge every
    /// later publish for the earlier steps' messages.
    pub async fn purge_function_queues(&self) -> anyhow::Result<()> {
        let emulator = self.emulator.as_ref().context("purging queues needs the emulator")?;
        let sqs = aws_sdk_sqs::Client::new(&emulator.sdk_config().await);
        for (name, url) in self.outputs.iter().filter(|(name, _)| name.ends_with("_QUEUE_URL")) {
            sqs.purge_queue().queue_url(url).send().await.with_context(|| format!("purging {name}"))?;
        }
        Ok(())
    }

    /// Starts `local-runner <function>` on `queue_output`'s queue.
    pub fn start_runner(&mut self, function: &str, queue_output: &str, env: &[(&str, &str)]) -> anyhow::Result<usize> {
        let queue = self.output(queue_output)?;
        let mut env: Vec<(&str, &str)> = env.to_vec();
        env.insert(0, ("CHAT_QUEUE_URL", &queue));
        self.spawn_helper("local-runner", &[function], &env)
    }

    /// Starts the janitor on this cluster's gateway queues: a sweep every
    /// `every_secs`, reaping queues whose heartbeat is older than
    /// `stale_after_secs`.
    pub fn start_janitor(&mut self, stale_after_secs: u64, every_secs: u64) -> anyhow::Result<usize> {
        let prefix = self.queue_prefix();
        let (stale, every) = (stale_after_secs.to_string(), every_secs.to_string());
        self.spawn_helper(
            "local-runner",
            &["janitor"],
            &[
                ("CHAT_QUEUE_PREFIX", &prefix),
                ("CHAT_JANITOR_STALE_AFTER_SECS", &stale),
                ("CHAT_JANITOR_EVERY_SECS", &every),
            ],
        )
    }

    /// Starts a helper process (function runner, simulator) with the
    /// emulator's environment and the stack's outputs; killed on drop.
    fn spawn_helper(&mut self, binary: &str, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<usize> {
        let emulator = self.emulator.as_ref().context("helpers need the emulator")?;
        let index = self.runners.len();
        let metrics = format!("127.0.0.1:{}", free_port()?);
        let log = self.logs.join(format!("{binary}-{}-{index}.log", args.first().copied().unwrap_or("")));
        let file = std::fs::File::create(&log)?;
        let child = Command::new(workspace_bin(binary)?)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", std::env::var("CHAT_E2E_LOG").unwrap_or_else(|_| "info".into()))
            .env("NO_COLOR", "1")
            .envs(emulator.aws_env())
            .envs(self.outputs.iter().cloned())
            .env("CHAT_METRICS_LISTEN", &metrics)
            .envs(env.iter().copied())
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {binary}"))?;
        self.runners.push((child, log));
        self.runner_metrics.push(metrics);
        Ok(index)
    }

    /// The external channels of a test: the channel simulator, the webhook
    /// (local function URL) it calls back, and one connector runner per
    /// channel in `channels`, pointed at the simulator. `connector_env` goes
    /// to the connectors and the webhook.
    pub async fn start_channels(
        &mut self,
        channels: &[&str],
        connector_env: &[(&str, &str)],
    ) -> anyhow::Result<crate::channels::SimClient> {
        let webhook_port = free_port()?;
        let sim_port = free_port()?;
        let webhook_listen = format!("127.0.0.1:{webhook_port}");
        let sim_listen = format!("127.0.0.1:{sim_port}");
        let webhook_url = format!("http://{webhook_listen}");
        let sim_url = format!("http://{sim_listen}");
        let mut webhook_env = vec![("CHAT_WEBHOOK_LISTEN", webhook_listen.as_str())];
        webhook_env.extend_from_slice(connector_env);
        self.spawn_helper("local-runner", &["webhook"], &webhook_env)?;
        self.spawn_helper(
            "channel-sim",
            &[],
            &[
                ("CHAT_SIM_LISTEN", &sim_listen),
                ("CHAT_SIM_WEBHOOK_URL", &webhook_url),
                ("CHAT_SIM_RECEIPT_DELAY_MS", "50"),
            ],
        )?;
        for channel in channels {
            let queue_output = format!("CHAT_CONNECTOR_{}_QUEUE_URL", channel.to_uppercase());
            let mut env = vec![
                ("CHAT_CHANNEL", *channel),
                ("CHAT_WHATSAPP_API_URL", sim_url.as_str()),
                ("CHAT_INSTAGRAM_API_URL", sim_url.as_str()),
                ("CHAT_TELEGRAM_API_URL", sim_url.as_str()),
                ("CHAT_BATCHING_WINDOW_MS", "0"),
            ];
            env.extend_from_slice(connector_env);
            self.start_runner("connector", &queue_output, &env)?;
        }
        for (what, port) in [("webhook", webhook_port), ("channel simulator", sim_port)] {
            crate::wait_listening(port).await.with_context(|| format!("{what} did not start"))?;
        }
        Ok(crate::channels::SimClient::new(sim_url, webhook_url))
    }

    /// Stored seqs of a conversation, every message item (duplicates
    /// included; a void is not a message).
    pub async fn stored_seqs(&self, conversation: &str) -> anyhow::Result<Vec<u64>> {
        use aws_sdk_dynamodb::types::AttributeValue;
        let dynamo = self.emulator.as_ref().context("emulator")?.dynamodb().await;
        let mut seqs = Vec::new();
        let mut start = None;
        loop {
            let out = dynamo
                .query()
                .table_name(self.output("CHAT_MESSAGES_TABLE")?)
                .key_condition_expression("conversation_id = :c")
                .expression_attribute_values(":c", AttributeValue::S(conversation.into()))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await?;
            for item in out.items().iter().filter(|item| !item.contains_key("void")) {
                seqs.push(item.get("seq").and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok()).context("seq")?);
            }
            match out.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => return Ok(seqs),
            }
        }
    }

    /// Where `user`'s DELIVERED watermark in the conversation is, read
    /// from the members table (`persist` records a stream's acks).
    pub async fn delivered_seq(&self, conversation: &str, user: &str) -> anyhow::Result<Option<u64>> {
        use aws_sdk_dynamodb::types::AttributeValue;
        let dynamo = self.emulator.as_ref().context("emulator")?.dynamodb().await;
        let out = dynamo
            .get_item()
            .table_name(self.output("CHAT_MEMBERS_TABLE")?)
            .key("conversation_id", AttributeValue::S(conversation.into()))
            .key("user_id", AttributeValue::S(user.into()))
            .consistent_read(true)
            .send()
            .await?;
        Ok(out.item().and_then(|item| item.get("delivered_seq")?.as_n().ok()?.parse().ok()))
    }

    /// Waits until `user`'s DELIVERED watermark reaches `seq` (or the
    /// deadline passes) and returns where it is.
    pub async fn wait_delivered(&self, conversation: &str, user: &str, seq: u64) -> anyhow::Result<Option<u64>> {
        let deadline = Instant::now() + crate::DEADLINE;
        loop {
            let at = self.delivered_seq(conversation, user).await?;
            if at >= Some(seq) || Instant::now() > deadline {
                return Ok(at);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every seq of `expected` is stored (or the deadline
    /// passes) and returns what is stored, for the checker to judge.
    pub async fn wait_stored(&self, conversation: &str, expected: &BTreeSet<u64>) -> anyhow::Result<Vec<u64>> {
        let deadline = Instant::now() + crate::DEADLINE;
        loop {
            let seqs = self.stored_seqs(conversation).await?;
            if expected.iter().all(|s| seqs.contains(s)) || Instant::now() > deadline {
                return Ok(seqs);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One unary `SendMessage` as `user` on gateway `index`.
    pub async fn send_unary(
        &self,
        index: usize,
        user: &str,
        conversation: &str,
        client_message_id: &str,
        body: &str,
    ) -> anyhow::Result<Result<SendMessageResponse, tonic::Status>> {
        let request = SendMessageRequest {
            conversation_id: conversation.into(),
            client_message_id: client_message_id.into(),
            body: body.into(),
        };
        let mut client = ChatServiceClient::new(self.channel(index).await?);
        Ok(client.send_message(with_token(request, &self.token(user)?)?).await.map(tonic::Response::into_inner))
    }

    /// `AddMember` as `user` on gateway `index`.
    pub async fn add_member(
        &self,
        index: usize,
        user: &str,
        conversation: &str,
        member: &str,
    ) -> anyhow::Result<Result<bool, tonic::Status>> {
        let request = AddMemberRequest { conversation_id: conversation.into(), member_id: member.into() };
        let mut client = ChatServiceClient::new(self.channel(index).await?);
        Ok(client.add_member(with_token(request, &self.token(user)?)?).await.map(|r| r.into_inner().added))
    }

    /// `CreateConversation` as `user` on gateway `index`.
    pub async fn create_conversation(
        &self,
        index: usize,
        user: &str,
        request: CreateConversationRequest,
    ) -> anyhow::Result<Result<CreateConversationResponse, tonic::Status>> {
        let mut client = ChatServiceClient::new(self.channel(index).await?);
        Ok(client.create_conversation(with_token(request, &self.token(user)?)?).await.map(tonic::Response::into_inner))
    }

    /// A new conversation of `kind` named `unique(prefix)`, created by
    /// `user` (its owner) on gateway `index` with `members` besides them;
    /// returns its id.
    pub async fn room_on(
        &self,
        index: usize,
        user: &str,
        prefix: &str,
        kind: ConversationKind,
        members: &[&str],
    ) -> anyhow::Result<String> {
        let id = unique(prefix);
        let request = CreateConversationRequest {
            kind: kind as i32,
            title: String::new(),
            members: members.iter().map(|m| (*m).to_owned()).collect(),
            conversation_id: id.clone(),
        };
        let created = self
            .create_conversation(index, user, request)
            .await?
            .map_err(|s| anyhow::anyhow!("{user} creating {id}: {:?} {}", s.code(), s.message()))?;
        let conversation = created.conversation.context("CreateConversation answered no conversation")?;
        anyhow::ensure!(created.created && conversation.conversation_id == id, "creating {id} gave {conversation:?}");
        Ok(id)
    }

    /// A public conversation (anyone may join it) named `unique(prefix)`,
    /// owned by `user`: what a test that only chats needs.
    pub async fn public_room(&self, user: &str, prefix: &str) -> anyhow::Result<String> {
        self.room_on(0, user, prefix, ConversationKind::Public, &[]).await
    }

    /// A public conversation created through gateway `index`.
    pub async fn public_room_on(&self, index: usize, user: &str, prefix: &str) -> anyhow::Result<String> {
        self.room_on(index, user, prefix, ConversationKind::Public, &[]).await
    }

    /// A private conversation (members only) owned by `user` with `members`.
    pub async fn private_room(&self, user: &str, prefix: &str, members: &[&str]) -> anyhow::Result<String> {
        self.room_on(0, user, prefix, ConversationKind::Private, members).await
    }

    /// `GetConversation` as `user` on gateway `index`.
    pub async fn get_conversation(
        &self,
        index: usize,
        user: &str,
        conversation: &str,
    ) -> anyhow::Result<Result<GetConversationResponse, tonic::Status>> {
        let request = GetConversationRequest { conversation_id: conversation.into() };
        let mut client = ChatServiceClient::new(self.channel(index).await?);
        Ok(client.get_conversation(with_token(request, &self.token(user)?)?).await.map(tonic::Response::into_inner))
    }

    /// `RemoveMember` as `user` on gateway `index`: whether `member` was one.
    pub async fn remove_member(
        &self,
        index: usize,
        user: &str,
        conversation: &str,
        member: &str,
        ban: bool,
    ) -> anyhow::Result<Result<bool, tonic::Status>> {
        let request = RemoveMemberRequest { conversation_id: conversation.into(), member_id: member.into(), ban };
        let mut client = ChatServiceClient::new(self.channel(index).await?);
        Ok(client.remove_member(with_token(request, &self.token(user)?)?).await.map(|r| r.into_inner().removed))
    }

    /// `UnbanMember` as `user` on gateway `index`: whether there was a ban.
    pub async fn unban_member(
        &self,
        index: usize,
        user: &str,
        conversation: &str,
        member: &str,
    ) -> anyhow::Result<Result<bool, tonic::Status>> {
        let request = UnbanMemberRequest { conversation_id: conversation.into(), member_id: member.into() };
        let mut client = ChatServiceClient::new(self.channel(index).await?);
        Ok(client.unban_member(with_token(request, &self.token(user)?)?).await.map(|r| r.into_inner().unbanned))
    }

    /// `SetRole` as `user` on gateway `index`.
    pub async fn set_role(
        &self,
        index: usize,
        user: &str,
        conversation: &str,
        member: &str,
        role: Role,
    ) -> anyhow::Result<Result<(), tonic::Status>> {
        let request =
            SetRoleRequest { conversation_id: conversation.into(), member_id: member.into(), role: role as i32 };
        let mut client = ChatServiceClient::new(self.channel(index).await?);
        Ok(client.set_role(with_token(request, &self.token(user)?)?).await.map(|_| ()))
    }

    /// `LinkChannel` as `user` on gateway `index`.
    pub async fn link_channel(
        &self,
        index: usize,
        user: &str,
        external_id: &str,
    ) -> anyhow::Result<Result<(), tonic::Status>> {
        let request = LinkChannelRequest { external_id: external_id.into() };
        let mut client = ChatServiceClient::new(self.channel(index).await?);
        Ok(client.link_channel(with_token(request, &self.token(user)?)?).await.map(|_| ()))
    }

    /// `GetMessageStatus` as `user` on gateway `index`.
    pub async fn message_status(
        &self,
        index: usize,
        user: &str,
        conversation: &str,
        message_id: &str,
    ) -> anyhow::Result<Result<GetMessageStatusResponse, tonic::Status>> {
        let request = GetMessageStatusRequest { conversation_id: conversation.into(), message_id: message_id.into() };
        let mut client = ChatServiceClient::new(self.channel(index).await?);
        Ok(client.get_message_status(with_token(request, &self.token(user)?)?).await.map(|r| r.into_inner()))
    }

    /// Polls `GetMessageStatus` until `done` accepts it (statuses are
    /// recorded asynchronously by `persist`).
    pub async fn wait_message_status(
        &self,
        user: &str,
        conversation: &str,
        message_id: &str,
        mut done: impl FnMut(&GetMessageStatusResponse) -> bool,
    ) -> anyhow::Result<GetMessageStatusResponse> {
        let deadline = Instant::now() + crate::DEADLINE;
        loop {
            let last = self.message_status(0, user, conversation, message_id).await?;
            if let Ok(status) = &last
                && done(status)
            {
                return Ok(status.clone());
            }
            if Instant::now() > deadline {
                bail!("message status never reached the expected state; last: {last:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Gateway `index`'s metrics, scraped now.
    pub async fn scrape(&self, index: usize) -> anyhow::Result<Scrape> {
        Scrape::fetch(&self.gateways[index].metrics).await
    }

    /// Runner `index`'s metrics endpoint, `host:port`.
    pub fn runner_metrics(&self, index: usize) -> Option<&str> {
        self.runner_metrics.get(index).map(String::as_str)
    }

    /// Where runner `index` logs.
    pub fn runner_log(&self, index: usize) -> Option<PathBuf> {
        self.runners.get(index).map(|(_, log)| log.clone())
    }

    /// Stops runner `index` (SIGKILL); its in-flight records return to the
    /// queue after the visibility timeout.
    pub fn kill_runner(&mut self, index: usize) {
        if let Some((child, _)) = self.runners.get_mut(index) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The URL of gateway `index` (memory mode has one: every index maps to it).
    pub fn url(&self, index: usize) -> &str {
        let i = index.min(self.gateways.len().saturating_sub(1));
        &self.gateways[i].url
    }

    /// The process id of gateway `index`, while it runs.
    pub fn gateway_pid(&self, index: usize) -> Option<u32> {
        self.gateways.get(index)?.child.as_ref().map(std::process::Child::id)
    }

    /// What the bench needs to reach every gateway: URLs, pids and the
    /// signing secret.
    pub fn bench_target(&self) -> (Vec<String>, Vec<u32>, chat_client::bench::Auth) {
        let urls = self.gateways.iter().map(|g| g.url.clone()).collect();
        let pids = (0..self.gateways.len()).filter_map(|i| self.gateway_pid(i)).collect();
        let auth = chat_client::bench::Auth {
            secret: self.secret.as_bytes().to_vec(),
            issuer: chat_proto::token::DEFAULT_ISSUER.into(),
            audience: chat_proto::token::DEFAULT_AUDIENCE.into(),
        };
        (urls, pids, auth)
    }

    /// The gateways' signing secret (what a local gateway keeps in
    /// `.run/jwt-secret`).
    pub fn secret(&self) -> &str {
        &self.secret
    }

    pub fn token(&self, user: &str) -> anyhow::Result<String> {
        Ok(chat_proto::token::mint(
            self.secret.as_bytes(),
            user,
            chat_proto::token::DEFAULT_ISSUER,
            chat_proto::token::DEFAULT_AUDIENCE,
            Duration::from_secs(3600),
        )?)
    }

    pub async fn channel(&self, index: usize) -> anyhow::Result<Channel> {
        Ok(self.endpoint(self.url(index))?.connect().await?)
    }

    /// A gateway URL's endpoint, trusting this cluster's CA when it has one.
    fn endpoint(&self, url: &str) -> anyhow::Result<Endpoint> {
        Ok(chat_client::tls::endpoint(url, self.ca.as_deref())?)
    }

    /// A user's `Connect` stream on gateway `index`.
    pub async fn connect(&self, index: usize, user: &str) -> anyhow::Result<TestClient> {
        TestClient::connect(self.channel(index).await?, user, &self.token(user)?).await
    }

    /// SIGTERM, then wait (bounded) for a clean exit.
    pub async fn stop_gateway(&mut self, index: usize) -> anyhow::Result<std::process::ExitStatus> {
        let gateway = &mut self.gateways[index];
        let Some(mut child) = gateway.child.take() else { bail!("gateway {index} is not running") };
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status()?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("gateway {index} did not stop within 30 s:\n{}", self.log_tail(index));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: a crash.
    pub fn kill_gateway(&mut self, index: usize) {
        if let Some(mut child) = self.gateways[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The store the gateways use, for reading and doing what a gateway does.
    pub async fn store(&self) -> anyhow::Result<chat_aws::dynamo::DynamoStore> {
        let emulator = self.emulator.as_ref().context("an emulator")?;
        Ok(chat_aws::dynamo::DynamoStore::new(emulator.dynamodb().await, crate::tables(|name| self.output(name))?))
    }

    /// The stack's tables, full name to the logical name its output gives
    /// (`CHAT_SEND_DEDUP_TABLE` → `send_dedup`).
    pub fn table_names(&self) -> std::collections::BTreeMap<String, String> {
        self.outputs
            .iter()
            .filter_map(|(output, name)| {
                let logical = output.strip_prefix("CHAT_")?.strip_suffix("_TABLE")?;
                Some((name.clone(), logical.to_lowercase()))
            })
            .collect()
    }

    /// Waits (bounded) until the queues the outputs name hold nothing:
    /// none visible, in flight or delayed.
    pub async fn wait_queues_empty(&self, outputs: &[&str]) -> anyhow::Result<()> {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let emulator = self.emulator.as_ref().context("queues need the emulator")?;
        let sqs = aws_sdk_sqs::Client::new(&emulator.sdk_config().await);
        let deadline = Instant::now() + Duration::from_secs(120);
        for output in outputs {
            let url = self.output(output)?;
            loop {
                let attributes = sqs
                    .get_queue_attributes()
                    .queue_url(&url)
                    .attribute_names(A::ApproximateNumberOfMessages)
                    .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
                    .attribute_names(A::ApproximateNumberOfMessagesDelayed)
                    .send()
                    .await
                    .with_context(|| format!("reading {output}'s depth"))?;
                let held: u64 = attributes
                    .attributes()
                    .map(|a| a.values().filter_map(|v| v.parse::<u64>().ok()).sum())
                    .unwrap_or(0);
                if held == 0 {
                    break;
                }
                ensure!(Instant::now() < deadline, "{output} still holds {held} messages");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }

    /// Gateway `index`'s queue URL.
    pub async fn queue_url(&self, index: usize) -> anyhow::Result<String> {
        let emulator = self.emulator.as_ref().context("an emulator")?;
        let sqs = aws_sdk_sqs::Client::new(&emulator.sdk_config().await);
        let name = format!("{}{}", self.queue_prefix(), self.gateways[index].instance_id);
        let out = sqs.get_queue_url().queue_name(&name).send().await.context("GetQueueUrl")?;
        out.queue_url().map(str::to_owned).context("no queue URL")
    }

    /// Gateway `index`'s whole log so far.
    pub fn log(&self, index: usize) -> String {
        std::fs::read_to_string(&self.gateways[index].log).unwrap_or_default()
    }

    pub fn log_tail(&self, index: usize) -> String {
        let text = std::fs::read_to_string(&self.gateways[index].log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for gateway in &mut self.gateways {
            if let Some(mut child) = gateway.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        for (child, _) in &mut self.runners {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Always printed: the test harness shows a test's output only when
        // it fails (by panic or by returning an error), which is when the
        // logs are wanted; they are deleted below.
        for i in 0..self.gateways.len() {
            eprintln!("---- gateway {i} ({}) log tail ----\n{}", self.gateways[i].instance_id, self.log_tail(i));
        }
        for (_, log) in &self.runners {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("---- {} ----\n{}", log.display(), lines[lines.len().saturating_sub(40)..].join("\n"));
        }
        let _ = std::fs::remove_dir_all(&self.logs);
    }
}
