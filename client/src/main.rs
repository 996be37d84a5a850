//! `chat`: the command-line client.
//!
//! - `chat token --user alice` mints a development token;
//! - `chat connect --user alice --conversation room1` is an interactive
//!   terminal chat (lines are messages; `/help` lists commands);
//! - `chat send ...` sends one message (scripts);
//! - `chat history` and `chat conversations` read what is stored;
//! - `chat add-member`, `chat link`, `chat status` and `chat read` manage
//!   external members, offline fallback and receipts;
//! - `chat echo` checks connectivity;
//! - `chat serve-web` serves the web app locally (`make run`).

mod connect;

mod render;
mod web;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use chat_proto::pb::chat_service_client::ChatServiceClient;
use chat_proto::pb::echo_service_client::EchoServiceClient;
use chat_proto::pb::{
    AddMemberRequest, ConversationKind, CreateConversationRequest, EchoRequest, GetConversationRequest,
    GetHistoryRequest, GetMessageStatusRequest, LinkChannelRequest, ListConversationsRequest, MarkReadRequest,
    MessageStatus, RemoveMemberRequest, Role, SendMessageRequest, SetRoleRequest, UnbanMemberRequest,
};
use clap::{Args, Parser, Subcommand};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

#[derive(Debug, Parser)]
#[command(name = "chat", version, about = "Chat from the terminal through a chat gateway.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a development bearer token for a user.
    Token {
        #[arg(long, short = 'u', env = "CHAT_USER")]
        user: String,
        /// Validity in seconds.
        #[arg(long, default_value_t = 24 * 3600)]
        ttl_secs: u64,
        #[command(flatten)]
        secret: SecretArgs,
    },
    /// Serve the web app locally: its files, `config.json` naming the
    /// gateways, and (with --dev-tokens) development sign-in.
    ServeWeb(web::ServeWebArgs),
    /// Interactive chat in one or more conversations.
    Connect {
        #[command(flatten)]
        conn: ConnArgs,
        /// Conversations to join at start (repeatable); the first is where
        /// typed lines go until `/switch`.
        #[arg(long = "conversation", short = 'c')]
        conversations: Vec<String>,
        /// First create each conversation given whose name is free, as a
        /// public conversation you own (a taken name is simply joined).
        #[arg(long)]
        create: bool,
    },
    /// Send one message with the unary API and print its seq.
    Send {
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(long, short = 'c')]
        conversation: String,
        #[arg(long)]
        body: String,
        /// Idempotency key; a retry with the same key never makes a second
        /// message.
        #[arg(long, default_value = "")]
        client_message_id: String,
    },
    /// Print a conversation's stored messages, newest last.
    History {
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(long, short = 'c')]
        conversation: String,
        /// How many of the latest messages (pages of up to 200 are read).
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// List your conversations with their last message and unread count.
    Conversations {
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Create a conversation you own (private unless --public) and print
    /// its id.
    Create {
        #[command(flatten)]
        conn: ConnArgs,
        /// A name of your choosing instead of a minted id (names are
        /// public: anyone can find out one is taken).
        #[arg(long, short = 'c', default_value = "")]
        conversation: String,
        /// Anyone may join by id.
        #[arg(long)]
        public: bool,
        #[arg(long, default_value = "")]
        title: String,
        /// Initial members besides you (repeatable).
        #[arg(long = "member", short = 'm')]
        members: Vec<String>,
    },
    /// Open (or find) your direct conversation with another user and print
    /// its id.
    Dm {
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(long)]
        with: String,
    },
    /// A conversation's settings and members with their roles.
    Info {
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(long, short = 'c')]
        conversation: String,
    },
    /// Remove a member (admins and the owner); --ban keeps them out.
    Remove {
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(long, short = 'c')]
        conversation: String,
        #[arg(long)]
        member: String,
        #[arg(long)]
        ban: bool,
    },
    /// Lift a ban (admins and the owner).
    Unban {
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(long, short = 'c')]
        conversation: String,
        #[arg(long)]
        member: String,
    },
    /// Set a member's role; `owner` transfers your ownership to them.
    Role {
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(long, short = 'c')]
        conversation: String,
        #[arg(long)]
        member: String,
        #[arg(long, value_enum)]
        role: RoleArg,
    },
    /// Add a member to a conversation you administer: a user, or an
    /// external identity such as whatsapp:+5511999990000 or telegram:123456.
    AddMember {
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(long, short = 'c')]
        conversation: String,
        #[arg(long)]
        member: String,
    },
    /// Link your account to an external identity for offline fallback
    /// (empty to unlink).
    Link {
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(long, default_value = "")]
        external_id: String,
    },
    /// Where one of your messages stands with each recipient.
    Status {
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(long, short = 'c')]
        conversation: String,
        #[arg(long)]
        message_id: String,
    },
    /// Mark a conversation read up to a seq (a READ receipt for the others).
    Read {
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(long, short = 'c')]
        conversation: String,
        #[arg(long)]
        seq: u64,
    },
    /// Connectivity check of every gateway given (no authentication).
    Echo {
        #[arg(long = "gateway", short = 'g', env = "CHAT_GATEWAYS", value_delimiter = ',', default_value = DEFAULT_GATEWAY)]
        gateways: Vec<String>,
        #[command(flatten)]
        tls: TlsArgs,
        #[arg(long, default_value = "ping")]
        message: String,
    },
    /// Load generator: a sweep of users streaming through gateways, with
    /// latency at every recipient, completeness, and the gateways' CPU and
    /// memory; appends to a CSV (see client/src/bench/mod.rs).
    Bench {
        #[command(flatten)]
        bench: BenchArgs,
        #[command(flatten)]
        secret: SecretArgs,
    },
    /// The raw tonic baseline server the bench compares gateways with.
    BenchBaseline {
        #[arg(long, default_value = "127.0.0.1:50061")]
        listen: std::net::SocketAddr,
    },
    /// PNG plots (latency.png, throughput.png) from bench CSV files.
    BenchPlot {
        #[arg(long = "csv", required = true)]
        csv: Vec<PathBuf>,
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
        #[arg(long, default_value = "chat bench")]
        title: String,
    },
    /// AWS cost per million messages on the deployed stack, line by line:
    /// priced from the calls the bench counted (`--counts`), or from the
    /// hand model (the model and its price sources: client/src/cost/).
    Cost {
        #[command(flatten)]
        workload: chat_client::cost::Workload,
        /// A `counts.csv` the bench wrote (its fan-out step): price the
        /// calls measured at `--gateways` with `--routing` instead of the
        /// hand model's.
        #[arg(long)]
        counts: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// Gateway URLs (repeatable); users are spread over them round-robin.
    #[arg(long = "gateway", short = 'g', required = true)]
    gateways: Vec<String>,
    /// The gateways' process ids, in the same order, to sample CPU and
    /// memory from /proc (optional).
    #[arg(long = "pid")]
    pids: Vec<u32>,
    /// Users per step of the sweep.
    #[arg(long, value_delimiter = ',', default_value = "50,100,200,500,1000,2000,5000")]
    users: Vec<usize>,
    /// Members per conversation.
    #[arg(long, default_value_t = 5)]
    conversation_size: usize,
    /// Users whose streams share one HTTP/2 connection.
    #[arg(long, default_value_t = 1)]
    streams_per_connection: usize,
    /// Sends per second per user.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Seconds of sending per step.
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    /// Seconds to wait for in-flight deliveries after sending stops.
    #[arg(long, default_value_t = 15.0)]
    drain_secs: f64,
    #[arg(long, default_value_t = 64)]
    body_bytes: usize,
    /// Every user acks and reads each message it receives, as a reading
    /// client does.
    #[arg(long)]
    receipts: bool,
    /// Sends carry a client_message_id (idempotent).
    #[arg(long)]
    idempotent: bool,
    /// Series name in the CSV and plots.
    #[arg(long, default_value = "gateway")]
    label: String,
    /// CSV file the steps are appended to.
    #[arg(long, default_value = "bench/results/bench.csv")]
    csv: PathBuf,
    /// Send no token (for the baseline server).
    #[arg(long)]
    no_auth: bool,
    #[command(flatten)]
    tls: TlsArgs,
}

#[derive(Debug, Args)]
struct TlsArgs {
    /// PEM certificate of a private CA to trust for `https://` gateways,
    /// instead of the system's roots.
    #[arg(long, env = "CHAT_CA_CERT")]
    ca_cert: Option<PathBuf>,
}

impl TlsArgs {
    fn ca(&self) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self.ca_cert.as_deref().map(chat_client::tls::read_ca).transpose()?)
    }
}

#[derive(Debug, Args)]
struct SecretArgs {
    /// HS256 secret shared with the gateway.
    #[arg(long, env = "CHAT_JWT_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// File with the secret (what a local gateway generates).
    #[arg(long, env = "CHAT_JWT_SECRET_FILE", default_value = ".run/jwt-secret")]
    secret_file: PathBuf,
    #[arg(long, env = "CHAT_JWT_ISSUER", default_value = chat_proto::token::DEFAULT_ISSUER)]
    issuer: String,
    #[arg(long, env = "CHAT_JWT_AUDIENCE", default_value = chat_proto::token::DEFAULT_AUDIENCE)]
    audience: String,
}

/// Where `make run`'s first gateway listens.
const DEFAULT_GATEWAY: &str = "http://127.0.0.1:50051";

#[derive(Debug, Args)]
struct ConnArgs {
    /// Gateway URLs, comma-separated (or repeated): a command uses the first
    /// that answers; `connect` moves to the next when its gateway goes away.
    #[arg(long = "gateway", short = 'g', env = "CHAT_GATEWAYS", value_delimiter = ',', default_value = DEFAULT_GATEWAY)]
    gateways: Vec<String>,
    /// User to act as (a token is minted for it unless `--token` is given).
    #[arg(long, short = 'u', env = "CHAT_USER")]
    user: Option<String>,
    /// Bearer token to use as is.
    #[arg(long, env = "CHAT_TOKEN", hide_env_values = true, conflicts_with = "token_command")]
    token: Option<String>,
    /// Shell command printing a bearer token (e.g. one asking your identity
    /// provider); `connect` runs it again for a fresh token before each
    /// expires.
    #[arg(long, env = "CHAT_TOKEN_COMMAND")]
    token_command: Option<String>,
    /// Validity of the tokens minted for `--user`, in seconds (`connect`
    /// sends a fresh one on its stream before each expires).
    #[arg(long, default_value_t = 24 * 3600, value_parser = clap::value_parser!(u64).range(1..))]
    token_ttl_secs: u64,
    #[command(flatten)]
    secret: SecretArgs,
    #[command(flatten)]
    tls: TlsArgs,
}

impl SecretArgs {
    fn mint(&self, user: &str, ttl: Duration) -> anyhow::Result<String> {
        let secret = self.secret()?;
        Ok(chat_proto::token::mint(secret.as_bytes(), user, &self.issuer, &self.audience, ttl)?)
    }

    fn auth(&self) -> anyhow::Result<chat_client::bench::Auth> {
        Ok(chat_client::bench::Auth {
            secret: self.secret()?.into_bytes(),
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
        })
    }

    fn secret(&self) -> anyhow::Result<String> {
        Ok(match &self.secret {
            Some(s) => s.clone(),
            None => std::fs::read_to_string(&self.secret_file)
                .with_context(|| {
                    format!(
                        "no --secret given and {} is unreadable (start a local gateway first, or set CHAT_JWT_SECRET)",
                        self.secret_file.display()
                    )
                })?
                .trim()
                .to_owned(),
        })
    }
}

impl ConnArgs {
    fn bearer(&self) -> anyhow::Result<(String, MetadataValue<tonic::metadata::Ascii>)> {
        let named = || self.user.clone().unwrap_or_else(|| "me".into());
        let (user, token) = match (&self.token, &self.token_command, &self.user) {
            (Some(token), _, _) => (named(), token.clone()),
            (None, Some(command), _) => (named(), connect::run_token_command(command)?),
            (None, None, Some(user)) => (user.clone(), self.secret.mint(user, self.token_ttl())?),
            (None, None, None) => bail!(
                "give --user NAME (or set CHAT_USER) to mint a token, or --token (CHAT_TOKEN), or --token-command"
            ),
        };
        let value = format!("Bearer {token}").parse().context("token is not valid metadata")?;
        Ok((user, value))
    }

    fn token_ttl(&self) -> Duration {
        Duration::from_secs(self.token_ttl_secs)
    }

    /// The user and where the interactive chat's tokens come from: the
    /// token given, or ones minted here (which can be refreshed).
    fn credentials(self) -> anyhow::Result<(String, connect::Credentials)> {
        let named = |user: Option<String>| user.unwrap_or_else(|| "me".into());
        match (self.token, self.token_command, self.user) {
            (Some(token), _, user) => Ok((named(user), connect::Credentials::Given(token))),
            (None, Some(command), user) => Ok((named(user), connect::Credentials::Command(command))),
            (None, None, Some(user)) => {
                let ttl = Duration::from_secs(self.token_ttl_secs);
                let secret = self.secret;
                secret.mint(&user, ttl)?; // fail now, not at the first refresh
                let name = user.clone();
                let mint = Box::new(move || secret.mint(&name, ttl));
                Ok((user, connect::Credentials::Minted(mint)))
            }
            (None, None, None) => bail!(
                "give --user NAME (or set CHAT_USER) to mint a token, or --token (CHAT_TOKEN), or --token-command"
            ),
        }
    }

    /// The gateway URLs given, in order.
    fn gateways(&self) -> anyhow::Result<Vec<String>> {
        gateway_list(&self.gateways)
    }

    /// The user and an authenticated client on the first gateway that
    /// answers, so a script keeps working while one gateway is down.
    async fn client(&self) -> anyhow::Result<(String, connect::Client)> {
        let (user, bearer) = self.bearer()?;
        let gateways = self.gateways()?;
        let ca = self.tls.ca()?;
        let mut failures = Vec::new();
        for gateway in &gateways {
            match channel(gateway, ca.as_deref()).await {
                Ok(channel) => return Ok((user, authed(channel, bearer))),
                Err(e) => failures.push(format!("{e:#}")),
            }
        }
        bail!("no gateway answers: {}", failures.join("; "))
    }
}

/// Gateway URLs without blanks (`CHAT_GATEWAYS="a, b,"` is two).
fn gateway_list(given: &[String]) -> anyhow::Result<Vec<String>> {
    let gateways: Vec<String> = given.iter().map(|g| g.trim()).filter(|g| !g.is_empty()).map(str::to_owned).collect();
    anyhow::ensure!(!gateways.is_empty(), "--gateway (CHAT_GATEWAYS) names no gateway");
    Ok(gateways)
}

/// A connection to a gateway (`https://` over TLS; `ca_cert` is a private
/// CA to trust instead of the system's roots).
pub(crate) async fn channel(gateway: &str, ca_cert: Option<&[u8]>) -> anyhow::Result<Channel> {
    chat_client::tls::endpoint(gateway, ca_cert)?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach gateway {gateway}: {}", chat_client::tls::describe(&e)))
}

pub(crate) fn authed(channel: Channel, bearer: MetadataValue<tonic::metadata::Ascii>) -> connect::Client {
    let attach: connect::Interceptor = Box::new(move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("authorization", bearer.clone());
        Ok(req)
    });
    ChatServiceClient::with_interceptor(channel, attach)
}

/// A failed call as an error that says its code.
fn rpc_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // `connect` may end (an expired token, a refused one) while a read of
    // the terminal is pending on a blocking thread: do not wait for it.
    runtime.shutdown_background();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Token { user, ttl_secs, secret } => token(user, ttl_secs, secret).await,
        Command::ServeWeb(args) => web::serve(args).await,
        Command::Bench { bench, secret } => run_bench(bench, secret).await,
        Command::BenchBaseline { listen } => bench_baseline(listen).await,
        Command::BenchPlot { csv, out, title } => bench_plot(csv, out, title).await,
        Command::Cost { workload, counts } => cost(workload, counts.as_deref()),
        Command::Echo { gateways, tls, message } => echo(gateways, tls, message).await,
        Command::Send { conn, conversation, body, client_message_id } => {
            send(conn, conversation, body, client_message_id).await
        }
        Command::History { conn, conversation, limit } => history(conn, conversation, limit).await,
        Command::Conversations { conn } => conversations(conn).await,
        Command::AddMember { conn, conversation, member } => add_member(conn, conversation, member).await,
        Command::Create { conn, conversation, public, title, members } => {
            let kind = if public { ConversationKind::Public } else { ConversationKind::Private };
            create(conn, CreateConversationRequest { kind: kind as i32, title, members, conversation_id: conversation })
                .await
        }
        Command::Dm { conn, with } => {
            let request = CreateConversationRequest {
                kind: ConversationKind::Direct as i32,
                members: vec![with],
                ..CreateConversationRequest::default()
            };
            create(conn, request).await
        }
        Command::Info { conn, conversation } => info(conn, conversation).await,
        Command::Remove { conn, conversation, member, ban } => remove(conn, conversation, member, ban).await,
        Command::Unban { conn, conversation, member } => unban(conn, conversation, member).await,
        Command::Role { conn, conversation, member, role } => set_role(conn, conversation, member, role).await,
        Command::Link { conn, external_id } => link(conn, external_id).await,
        Command::Status { conn, conversation, message_id } => status(conn, conversation, message_id).await,
        Command::Read { conn, conversation, seq } => read(conn, conversation, seq).await,
        Command::Connect { conn, conversations, create } => connect_interactive(conn, conversations, create).await,
    }
}

/// Prints a development token.
async fn token(user: String, ttl_secs: u64, secret: SecretArgs) -> anyhow::Result<()> {
    println!("{}", secret.mint(&user, Duration::from_secs(ttl_secs))?);
    Ok(())
}

/// Runs the benchmark sweep, one step per user count, appending to the CSV.
async fn run_bench(bench: BenchArgs, secret: SecretArgs) -> anyhow::Result<()> {
    let _telemetry = service::init_logging(false, "chat");
    let auth = if bench.no_auth { None } else { Some(secret.auth()?) };
    let seconds = |s: f64, what: &str| {
        Duration::try_from_secs_f64(s).with_context(|| format!("{what} must be a non-negative number of seconds"))
    };
    let (duration, drain) =
        (seconds(bench.duration_secs, "--duration-secs")?, seconds(bench.drain_secs, "--drain-secs")?);
    let run_id = ulid::Ulid::new().to_string().to_lowercase();
    let ca = bench.tls.ca()?;
    for (step, users) in bench.users.iter().enumerate() {
        let plan = chat_client::bench::Plan {
            label: bench.label.clone(),
            gateways: bench.gateways.clone(),
            pids: bench.pids.clone(),
            users: *users,
            streams_per_connection: bench.streams_per_connection,
            conversation_size: bench.conversation_size,
            rate: bench.rate,
            duration,
            drain,
            body_bytes: bench.body_bytes,
            auth: auth.clone(),
            ca_cert: ca.clone(),
            run_id: format!("{run_id}-{step}"),
            receipts: bench.receipts,
            idempotent: bench.idempotent,
        };
        let result = chat_client::bench::run(plan).await?;
        println!("{}", result.summary());
        chat_client::bench::append_csv(&bench.csv, std::slice::from_ref(&result))
            .with_context(|| format!("writing {}", bench.csv.display()))?;
    }
    Ok(())
}

/// Serves the raw tonic baseline until a signal.
async fn bench_baseline(listen: std::net::SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    eprintln!("baseline listening on {}", listener.local_addr()?);
    tonic::transport::Server::builder()
        .add_service(chat_client::bench::baseline::Baseline::default().server())
        .serve_with_incoming_shutdown(
            chat_proto::transport::incoming(listener),
            service::stop_on_signals().cancelled_owned(),
        )
        .await?;
    Ok(())
}

/// Draws the PNG plots of bench CSV files.
async fn bench_plot(csv: Vec<PathBuf>, out: PathBuf, title: String) -> anyhow::Result<()> {
    let mut points = Vec::new();
    for path in &csv {
        points.extend(chat_client::bench::plot::read_points(path)?);
    }
    for path in chat_client::bench::plot::plot(&points, &out, &title)? {
        println!("{}", path.display());
    }
    Ok(())
}

/// Prints the AWS cost model, from measured counts when given.
fn cost(workload: chat_client::cost::Workload, counts: Option<&Path>) -> anyhow::Result<()> {
    use chat_client::cost::{estimate, measured, render};
    let Some(path) = counts else {
        print!("{}", render(&workload, &estimate(&workload)?));
        return Ok(());
    };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let rows = measured::parse_counts(&text)?;
    let estimate = measured::estimate_measured(&workload, &rows, &path.display().to_string())?;
    print!("{}", measured::render_measured(&workload, &estimate));
    Ok(())
}

/// Checks every gateway given.
async fn echo(gateways: Vec<String>, tls: TlsArgs, message: String) -> anyhow::Result<()> {
    let ca = tls.ca()?;
    for gateway in gateway_list(&gateways)? {
        let mut client = EchoServiceClient::new(channel(&gateway, ca.as_deref()).await?);
        let reply = client
            .echo(EchoRequest { message: message.clone() })
            .await
            .map_err(rpc_error)
            .with_context(|| format!("gateway {gateway}"))?
            .into_inner();
        println!("{} (from {} at {gateway})", reply.message, reply.gateway_id);
    }
    Ok(())
}

/// Sends one message through the unary API.
async fn send(conn: ConnArgs, conversation: String, body: String, client_message_id: String) -> anyhow::Result<()> {
    let (_, mut client) = conn.client().await?;
    let reply = client
        .send_message(SendMessageRequest { conversation_id: conversation, client_message_id, body })
        .await
        .map_err(rpc_error)?
        .into_inner();
    println!(
        "{} seq={} message_id={}{}",
        reply.conversation_id,
        reply.seq,
        reply.message_id,
        if reply.duplicate { " (duplicate)" } else { "" }
    );
    Ok(())
}

/// Prints stored messages, oldest first.
async fn history(conn: ConnArgs, conversation: String, limit: usize) -> anyhow::Result<()> {
    let (_, mut client) = conn.client().await?;
    let mut messages = Vec::new();
    let mut cursor = String::new();
    while messages.len() < limit {
        let page = client
            .get_history(GetHistoryRequest {
                conversation_id: conversation.clone(),
                page_size: u32::try_from((limit - messages.len()).min(200)).unwrap_or(200),
                cursor: std::mem::take(&mut cursor),
                ..Default::default()
            })
            .await
            .map_err(rpc_error)?
            .into_inner();
        messages.extend(page.messages);
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    for m in messages.iter().rev() {
        println!("[{} #{}] {}: {}", m.conversation_id, m.seq, m.sender, m.body);
    }
    Ok(())
}

/// Lists the caller's conversations with unread counts.
async fn conversations(conn: ConnArgs) -> anyhow::Result<()> {
    let (_, mut client) = conn.client().await?;
    let mut cursor = String::new();
    loop {
        let page = client
            .list_conversations(ListConversationsRequest { page_size: 100, cursor })
            .await
            .map_err(rpc_error)?
            .into_inner();
        for c in &page.conversations {
            let last = c
                .last_message
                .as_ref()
                .map(|m| format!("#{} {}: {}", m.seq, m.sender, m.body))
                .unwrap_or_else(|| "(no messages)".into());
            println!("{} — {} unread — {last}", c.conversation_id, c.unread);
        }
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum RoleArg {
    Member,
    Admin,
    Owner,
}

impl RoleArg {
    fn pb(self) -> Role {
        match self {
            RoleArg::Member => Role::Member,
            RoleArg::Admin => Role::Admin,
            RoleArg::Owner => Role::Owner,
        }
    }
}

fn role_name(role: i32) -> &'static str {
    match Role::try_from(role) {
        Ok(Role::Owner) => "owner",
        Ok(Role::Admin) => "admin",
        _ => "member",
    }
}

/// Creates a conversation (or finds a direct one) and prints its id alone
/// on stdout, so scripts can capture it.
async fn create(conn: ConnArgs, request: CreateConversationRequest) -> anyhow::Result<()> {
    let (_, mut client) = conn.client().await?;
    let response = client.create_conversation(request).await.map_err(rpc_error)?.into_inner();
    let conversation = response.conversation.context("the gateway answered without a conversation")?;
    if !response.created {
        eprintln!("(existing conversation)");
    }
    println!("{}", conversation.conversation_id);
    Ok(())
}

/// Prints a conversation's settings and members.
async fn info(conn: ConnArgs, conversation: String) -> anyhow::Result<()> {
    let (_, mut client) = conn.client().await?;
    let response = client
        .get_conversation(GetConversationRequest { conversation_id: conversation })
        .await
        .map_err(rpc_error)?
        .into_inner();
    let c = response.conversation.context("the gateway answered without a conversation")?;
    let kind = match ConversationKind::try_from(c.kind) {
        Ok(ConversationKind::Public) => "public",
        Ok(ConversationKind::Direct) => "direct",
        _ => "private",
    };
    println!("{} ({kind}) {}", c.conversation_id, c.title);
    for m in &response.members {
        println!("  {} — {}", m.user_id, role_name(m.role));
    }
    Ok(())
}

/// Removes (or bans) a member.
async fn remove(conn: ConnArgs, conversation: String, member: String, ban: bool) -> anyhow::Result<()> {
    let (_, mut client) = conn.client().await?;
    let request = RemoveMemberRequest { conversation_id: conversation.clone(), member_id: member.clone(), ban };
    let removed = client.remove_member(request).await.map_err(rpc_error)?.into_inner().removed;
    let what = match (removed, ban) {
        (true, true) => "removed from and banned in",
        (true, false) => "removed from",
        (false, true) => "was not a member; now banned in",
        (false, false) => "was not a member of",
    };
    println!("{member} {what} {conversation}");
    Ok(())
}

/// Lifts a ban.
async fn unban(conn: ConnArgs, conversation: String, member: String) -> anyhow::Result<()> {
    let (_, mut client) = conn.client().await?;
    let request = UnbanMemberRequest { conversation_id: conversation.clone(), member_id: member.clone() };
    let unbanned = client.unban_member(request).await.map_err(rpc_error)?.into_inner().unbanned;
    println!("{member} {} {conversation}", if unbanned { "may join again" } else { "was not banned in" });
    Ok(())
}

/// Sets a member's role.
async fn set_role(conn: ConnArgs, conversation: String, member: String, role: RoleArg) -> anyhow::Result<()> {
    let (_, mut client) = conn.client().await?;
    let request =
        SetRoleRequest { conversation_id: conversation.clone(), member_id: member.clone(), role: role.pb() as i32 };
    client.set_role(request).await.map_err(rpc_error)?;
    println!("{member} is now {} of {conversation}", role_name(role.pb() as i32));
    Ok(())
}

/// Adds a member (a user or an external identity).
async fn add_member(conn: ConnArgs, conversation: String, member: String) -> anyhow::Result<()> {
    let (_, mut client) = conn.client().await?;
    let added = client
        .add_member(AddMemberRequest { conversation_id: conversation.clone(), member_id: member.clone() })
        .await
        .map_err(rpc_error)?
        .into_inner()
        .added;
    println!("{member} {} {conversation}", if added { "added to" } else { "was already in" });
    Ok(())
}

/// Links the caller to an external identity for offline fallback.
async fn link(conn: ConnArgs, external_id: String) -> anyhow::Result<()> {
    let (user, mut client) = conn.client().await?;
    client.link_channel(LinkChannelRequest { external_id: external_id.clone() }).await.map_err(rpc_error)?;
    if external_id.is_empty() {
        println!("{user}: no fallback channel");
    } else {
        println!("{user}: messages you do not acknowledge in time go to {external_id}");
    }
    Ok(())
}

/// Prints each recipient's status of a message.
async fn status(conn: ConnArgs, conversation: String, message_id: String) -> anyhow::Result<()> {
    let (_, mut client) = conn.client().await?;
    let status = client
        .get_message_status(GetMessageStatusRequest { conversation_id: conversation, message_id })
        .await
        .map_err(rpc_error)?
        .into_inner();
    println!("#{} by {}:", status.seq, status.sender);
    for r in status.recipients {
        let name = MessageStatus::try_from(r.status).map(|s| s.as_str_name()).unwrap_or("UNKNOWN");
        let reason = if r.reason.is_empty() { String::new() } else { format!(" — {}", r.reason) };
        println!("  {:<28} {name}{reason}", r.user_id);
    }
    Ok(())
}

/// Marks a conversation read up to a seq.
async fn read(conn: ConnArgs, conversation: String, seq: u64) -> anyhow::Result<()> {
    let (_, mut client) = conn.client().await?;
    let marker = client
        .mark_read(MarkReadRequest { conversation_id: conversation.clone(), seq })
        .await
        .map_err(rpc_error)?
        .into_inner()
        .last_read_seq;
    println!("{conversation}: read up to #{marker}");
    Ok(())
}

/// The interactive chat.
async fn connect_interactive(conn: ConnArgs, conversations: Vec<String>, create: bool) -> anyhow::Result<()> {
    if create {
        let (_, mut client) = conn.client().await?;
        for conversation in &conversations {
            let request = CreateConversationRequest {
                kind: ConversationKind::Public as i32,
                conversation_id: conversation.clone(),
                ..CreateConversationRequest::default()
            };
            match client.create_conversation(request).await {
                Ok(_) => eprintln!("* created public conversation {conversation}"),
                Err(status) if status.code() == tonic::Code::AlreadyExists => {}
                Err(status) => return Err(rpc_error(status)),
            }
        }
    }
    let gateways = conn.gateways()?;
    let ca = conn.tls.ca()?;
    let (user, credentials) = conn.credentials()?;
    connect::interactive(gateways, ca, credentials, user, conversations).await?;
    Ok(())
}
