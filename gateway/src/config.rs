//! The gateway's one `Config`: flags with environment fallbacks, parsed once
//! in `main` and passed down. Nothing deeper reads the environment; the AWS
//! SDK alone reads the standard AWS variables (`AWS_ENDPOINT_URL`,
//! `AWS_REGION`, credentials).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Which bus carries events between gateways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BusKind {
    /// `sns-sqs` when a topic ARN is configured, `memory` otherwise.
    Auto,
    /// One gateway, an in-process bus and in-memory store: no AWS at all.
    Memory,
    /// SNS topic fan-out to one SQS queue per gateway; DynamoDB for sequence
    /// numbers, membership, presence and send idempotency.
    SnsSqs,
}

/// How events reach the gateways on the SNS/SQS bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Routing {
    /// Straight to the queues of the gateways that hold a member's stream
    /// (`SendMessageBatch`); the topic carries what the functions need.
    Members,
    /// Through the topic to every gateway's queue.
    Broadcast,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "gateway",
    version,
    about = "The chat gRPC gateway: holds client streams, publishes to the bus, fans events out to local members."
)]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(long, env = "CHAT_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Address of the admin listener serving Prometheus metrics at
    /// `/metrics` (never the gRPC port). Off when absent.
    #[arg(long, env = "CHAT_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Web page origins (`https://chat.example.com`, `http://127.0.0.1:8080`)
    /// allowed to call the gateway from a browser over gRPC-Web (CORS).
    /// Repeat the flag, or separate them with commas. None by default: a
    /// page on another origin is refused by the browser; gRPC-Web from the
    /// gateway's own origin and native gRPC need none.
    #[arg(long = "cors-allow-origin", env = "CHAT_CORS_ALLOW_ORIGINS", value_delimiter = ',', value_parser = parse_origin)]
    pub cors_allow_origins: Vec<http::HeaderValue>,

    /// The bus between gateways.
    #[arg(long, env = "CHAT_BUS", value_enum, default_value_t = BusKind::Auto)]
    pub bus: BusKind,

    /// How events reach other gateways on the SNS/SQS bus. Every gateway of
    /// a deployment must use the same: typing, presence and membership
    /// events do not cross between the two kinds.
    #[arg(long, env = "CHAT_ROUTING", value_enum, default_value_t = Routing::Members)]
    pub routing: Routing,

    /// Gateways a conversation routes to at most under member routing; a
    /// conversation streamed on more goes through the topic to every
    /// gateway from then on (its routes ride on each seq update, which
    /// costs a write unit per KiB).
    #[arg(long, env = "CHAT_ROUTE_LIMIT", default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub route_limit: u64,

    /// How long a conversation with no member streaming on this gateway
    /// stays registered for its events, in seconds (a member back within it
    /// costs no write).
    #[arg(long, env = "CHAT_ROUTE_LINGER_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub route_linger_secs: u64,

    /// This gateway's instance id: names its SQS queue and marks what it
    /// publishes. Letters, digits, '-' and '_' only. Random when absent.
    #[arg(long, env = "CHAT_INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// HS256 secret that bearer tokens are signed with.
    #[arg(long, env = "CHAT_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// File holding the HS256 secret, used when `--jwt-secret` is absent. If
    /// the file does not exist a random secret is generated into it, so local
    /// gateways and the `chat` client share one without configuration.
    #[arg(long, env = "CHAT_JWT_SECRET_FILE", default_value = ".run/jwt-secret")]
    pub jwt_secret_file: PathBuf,

    /// Required `iss` claim of bearer tokens.
    #[arg(long, env = "CHAT_JWT_ISSUER", default_value = chat_proto::token::DEFAULT_ISSUER)]
    pub jwt_issuer: String,

    /// Required `aud` claim of bearer tokens.
    #[arg(long, env = "CHAT_JWT_AUDIENCE", default_value = chat_proto::token::DEFAULT_AUDIENCE)]
    pub jwt_audience: String,

    /// Clock skew tolerated on a token's `exp` and `nbf`, in seconds. A
    /// stream ends when its token has expired by this much.
    #[arg(long, env = "CHAT_JWT_LEEWAY_SECS", default_value_t = chat_proto::token::DEFAULT_LEEWAY_SECS, value_parser = clap::value_parser!(u64).range(0..=300))]
    pub jwt_leeway_secs: u64,

    /// The identity provider's JWKS URL. When set, bearer tokens must be
    /// RS256 or ES256 tokens signed by one of its keys (HS256 and the shared
    /// secret are then refused); without it, HS256 with the shared secret.
    #[arg(long, env = "CHAT_JWKS_URL")]
    pub jwks_url: Option<String>,

    /// Least time between two fetches of the JWKS caused by tokens naming a
    /// key id not held yet, in seconds (bounds what made-up key ids cost).
    #[arg(long, env = "CHAT_JWKS_MIN_REFRESH_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub jwks_min_refresh_secs: u64,

    /// How often the JWKS is fetched again regardless, in seconds, so keys
    /// the provider withdrew stop being trusted.
    #[arg(long, env = "CHAT_JWKS_REFRESH_SECS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(10..=86_400))]
    pub jwks_refresh_secs: u64,

    /// PEM certificate chain to serve TLS with (with `--tls-key`). Without
    /// both, the gateway speaks plain HTTP/2 (h2c), e.g. behind a load
    /// balancer that terminates TLS.
    #[arg(long, env = "CHAT_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "CHAT_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// ARN of the SNS topic all events are published to (sns-sqs bus).
    #[arg(long, env = "CHAT_TOPIC_ARN")]
    pub topic_arn: Option<String>,

    /// Prefix of this gateway's SQS queue name; the instance id follows it.
    #[arg(long, env = "CHAT_QUEUE_PREFIX", default_value = "chat-gw-")]
    pub queue_prefix: String,

    /// DynamoDB table names.
    #[command(flatten)]
    pub tables: chat_aws::dynamo::Tables,

    /// How often this gateway's queue heartbeat tag is refreshed, in
    /// seconds; the janitor reaps queues whose heartbeat is older than its
    /// threshold (keep that several heartbeats long).
    #[arg(long, env = "CHAT_HEARTBEAT_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub heartbeat_secs: u64,

    /// Longest a send waits to share an SNS `PublishBatch` with others while
    /// earlier batches are in flight, in milliseconds (an idle gateway
    /// publishes at once).
    #[arg(long, env = "CHAT_PUBLISH_LINGER_MS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub publish_linger_ms: u64,

    /// SNS publish requests in flight at once; further sends queue and go
    /// out in fuller batches.
    #[arg(long, env = "CHAT_PUBLISH_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub publish_concurrency: u16,

    /// After a receive from this gateway's queue that was not full, wait
    /// this long before the next, so receives come back fuller: fewer SQS
    /// calls per event, at up to that much latency. 0: receive again at once.
    #[arg(long, env = "CHAT_RECEIVE_WINDOW_MS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub receive_window_ms: u64,

    /// How long a received event's delete waits for others to share its
    /// `DeleteMessageBatch` (ten per call). Well inside the queue's 30 s
    /// visibility timeout; a crash in between redelivers the events, which
    /// the hub drops as duplicates. 0: delete each receive's events at once.
    #[arg(long, env = "CHAT_DELETE_LINGER_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub delete_linger_ms: u64,

    /// Most concurrent long-polls on this gateway's queue: one while it is
    /// quiet, more while receives come back full.
    #[arg(long, env = "CHAT_POLLERS", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub pollers: u16,

    /// Largest message body accepted, in bytes (UTF-8).
    #[arg(long, env = "CHAT_MAX_BODY_BYTES", default_value_t = 4096)]
    pub max_body_bytes: usize,

    /// Conversations one connection may have joined at once.
    #[arg(long, env = "CHAT_MAX_CONVERSATIONS_PER_CONNECTION", default_value_t = 64)]
    pub max_conversations_per_connection: usize,

    /// Sustained sends (and typing frames, added members) per second allowed
    /// per user on this gateway. Every rate below: 0 turns the limit off.
    #[arg(long, env = "CHAT_SEND_RATE", default_value_t = 20.0)]
    pub send_rate_per_sec: f64,

    /// Burst of sends allowed above the sustained rate.
    #[arg(long, env = "CHAT_SEND_BURST", default_value_t = 40)]
    pub send_burst: u32,

    /// Sustained join frames per second per user.
    #[arg(long, env = "CHAT_JOIN_RATE", default_value_t = 10.0)]
    pub join_rate_per_sec: f64,

    /// Burst of joins above the sustained rate.
    #[arg(long, env = "CHAT_JOIN_BURST", default_value_t = 100)]
    pub join_burst: u32,

    /// Sustained acks and reads (frames and `MarkRead`) per second per user.
    #[arg(long, env = "CHAT_RECEIPT_RATE", default_value_t = 20.0)]
    pub receipt_rate_per_sec: f64,

    /// Burst of acks and reads above the sustained rate.
    #[arg(long, env = "CHAT_RECEIPT_BURST", default_value_t = 100)]
    pub receipt_burst: u32,

    /// Sustained new `Connect` streams per second per user.
    #[arg(long, env = "CHAT_STREAM_RATE", default_value_t = 1.0)]
    pub stream_rate_per_sec: f64,

    /// Burst of new streams above the sustained rate.
    #[arg(long, env = "CHAT_STREAM_BURST", default_value_t = 20)]
    pub stream_burst: u32,

    /// `Connect` streams one user may have open at once on this gateway
    /// (0: no limit).
    #[arg(long, env = "CHAT_MAX_STREAMS_PER_USER", default_value_t = 16)]
    pub max_streams_per_user: usize,

    /// Sustained client frames per second on one connection (all its
    /// `Connect` streams); going over ends the stream with
    /// `RESOURCE_EXHAUSTED`.
    #[arg(long, env = "CHAT_FRAME_RATE", default_value_t = 100.0)]
    pub frame_rate_per_sec: f64,

    /// Burst of frames per connection above the sustained rate; also how
    /// many frames of a stream wait to be processed before reading pauses.
    #[arg(long, env = "CHAT_FRAME_BURST", default_value_t = 200)]
    pub frame_burst: u32,

    /// Sustained new connections per second from one source address. Behind
    /// a load balancer that does not preserve client addresses (the
    /// template's), every connection comes from the balancer: set 0 there.
    #[arg(long, env = "CHAT_CONNECTION_RATE_PER_ADDRESS", default_value_t = 20.0)]
    pub connection_rate_per_address: f64,

    /// Burst of new connections from one address above the sustained rate.
    #[arg(long, env = "CHAT_CONNECTION_BURST_PER_ADDRESS", default_value_t = 100)]
    pub connection_burst_per_address: u32,

    /// Connections open at once from one source address (0: no limit; see
    /// `--connection-rate-per-address` about load balancers).
    #[arg(long, env = "CHAT_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 256)]
    pub max_connections_per_address: usize,

    /// The longest a send waits for storage and the bus, in milliseconds;
    /// then it is answered `UNAVAILABLE` (retry with the same
    /// `client_message_id`).
    #[arg(long, env = "CHAT_SEND_DEADLINE_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub send_deadline_ms: u64,

    /// How long a stream that was ended (a slow consumer cut off) gets for
    /// its client to read the end, in milliseconds; a client that has not by
    /// then has its connection closed, so it learns at once.
    #[arg(long, env = "CHAT_STALL_GRACE_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub stall_grace_ms: u64,

    /// Events buffered per connection before a client counts as too slow
    /// and is disconnected with a resume hint.
    #[arg(long, env = "CHAT_OUTBOUND_BUFFER", default_value_t = 1024)]
    pub outbound_buffer: usize,

    /// How long a gap in a conversation's `seq` is waited for before the
    /// store is asked what the missing seqs hold (a message, delivered from
    /// there; or nothing, passed over for good).
    #[arg(long, env = "CHAT_GAP_SETTLE_MS", default_value_t = 250)]
    pub gap_settle_ms: u64,

    /// A stream's acks and reads of one conversation are reported as at
    /// most one DELIVERED and one READ receipt per this window, in
    /// milliseconds: the first at once, the newest of the rest at the
    /// window's end (receipts are cumulative). 0 reports every one.
    #[arg(long, env = "CHAT_RECEIPT_WINDOW_MS", default_value_t = 250, value_parser = clap::value_parser!(u64).range(0..=5000))]
    pub receipt_window_ms: u64,

    /// How long a gap in a conversation's `seq` is waited for before later
    /// messages are released without it, when the store cannot settle it.
    #[arg(long, env = "CHAT_REORDER_WINDOW_MS", default_value_t = 2000)]
    pub reorder_window_ms: u64,

    /// Largest gRPC message decoded or encoded, in bytes.
    #[arg(long, env = "CHAT_MAX_GRPC_MESSAGE_BYTES", default_value_t = 64 * 1024)]
    pub max_grpc_message_bytes: usize,

    /// HTTP/2 keepalive ping interval, in seconds.
    #[arg(long, env = "CHAT_KEEPALIVE_SECS", default_value_t = 20)]
    pub keepalive_secs: u64,

    /// Log format.
    #[arg(long, env = "CHAT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// An origin as a browser sends it: `scheme://host[:port]`, nothing more.
fn parse_origin(value: &str) -> Result<http::HeaderValue, String> {
    let value = value.trim();
    let explain = || format!("{value:?} is not an origin: give scheme://host[:port] (e.g. https://chat.example.com)");
    let (scheme, rest) = value.split_once("://").ok_or_else(explain)?;
    let host_ok =
        !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if !matches!(scheme, "http" | "https") || !host_ok {
        return Err(explain());
    }
    http::HeaderValue::from_str(value).map_err(|_| explain())
}

impl Config {
    /// The bus this configuration selects once `auto` is resolved.
    pub fn effective_bus(&self) -> BusKind {
        match self.bus {
            BusKind::Auto if self.topic_arn.is_some() => BusKind::SnsSqs,
            BusKind::Auto => BusKind::Memory,
            other => other,
        }
    }

    /// The JWKS URL, when one is configured (an empty value is none).
    pub fn jwks_url(&self) -> Option<&str> {
        self.jwks_url.as_deref().map(str::trim).filter(|u| !u.is_empty())
    }

    pub fn reorder_window(&self) -> Duration {
        Duration::from_millis(self.reorder_window_ms)
    }

    pub(crate) fn limits(&self) -> crate::limits::Limits {
        use crate::limits::Rate;
        crate::limits::Limits {
            max_body_bytes: self.max_body_bytes,
            max_conversations_per_connection: self.max_conversations_per_connection,
            sends: Rate::new(self.send_rate_per_sec, self.send_burst),
            joins: Rate::new(self.join_rate_per_sec, self.join_burst),
            receipts: Rate::new(self.receipt_rate_per_sec, self.receipt_burst),
            new_streams: Rate::new(self.stream_rate_per_sec, self.stream_burst),
            max_streams_per_user: self.max_streams_per_user,
            frames: Rate::new(self.frame_rate_per_sec, self.frame_burst),
            connections_per_address: Rate::new(self.connection_rate_per_address, self.connection_burst_per_address),
            max_connections_per_address: self.max_connections_per_address,
            send_deadline: Duration::from_millis(self.send_deadline_ms),
            stall_grace: Duration::from_millis(self.stall_grace_ms),
            gap_settle: Duration::from_millis(self.gap_settle_ms),
            receipt_window: Duration::from_millis(self.receipt_window_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cors_origins_are_origins() {
        let config = Config::parse_from([
            "gateway",
            "--cors-allow-origin",
            "https://chat.example.com,http://127.0.0.1:8080",
            "--cors-allow-origin",
            "http://[::1]:3000",
        ]);
        let origins: Vec<_> = config.cors_allow_origins.iter().map(|o| o.to_str().unwrap_or_default()).collect();
        assert_eq!(origins, ["https://chat.example.com", "http://127.0.0.1:8080", "http://[::1]:3000"]);
        assert!(Config::parse_from(["gateway"]).cors_allow_origins.is_empty(), "none by default");
        for bad in ["*", "chat.example.com", "https://chat.example.com/app", "ftp://x", "https://"] {
            let err = Config::try_parse_from(["gateway", "--cors-allow-origin", bad]).expect_err(bad);
            assert!(err.to_string().contains("is not an origin"), "{bad}: {err}");
        }
    }

    #[test]
    fn auto_bus_follows_topic_configuration() {
        let base = Config::parse_from(["gateway"]);
        assert_eq!(base.effective_bus(), BusKind::Memory);
        let aws = Config::parse_from(["gateway", "--topic-arn", "arn:aws:sns:us-east-1:1:t"]);
        assert_eq!(aws.effective_bus(), BusKind::SnsSqs);
        let forced = Config::parse_from(["gateway", "--bus", "memory", "--topic-arn", "arn:x"]);
        assert_eq!(forced.effective_bus(), BusKind::Memory);
    }

    #[test]
    fn limits_follow_the_flags() {
        let limits = Config::parse_from(["gateway", "--join-rate-per-sec", "0", "--frame-burst", "7"]).limits();
        assert_eq!(limits.joins.per_sec, 0.0);
        assert_eq!(limits.frames.burst, 7);
        assert_eq!(limits.send_deadline, Duration::from_secs(5));
        assert!(Config::try_parse_from(["gateway", "--send-deadline-ms", "0"]).is_err());
    }

    #[test]
    fn tls_needs_both_certificate_and_key() {
        assert!(Config::try_parse_from(["gateway", "--tls-cert", "c.pem"]).is_err());
        assert!(Config::try_parse_from(["gateway", "--tls-key", "k.pem"]).is_err());
        let both = Config::parse_from(["gateway", "--tls-cert", "c.pem", "--tls-key", "k.pem"]);
        assert_eq!(both.tls_cert, Some(PathBuf::from("c.pem")));
    }

    #[test]
    fn an_empty_jwks_url_is_none() {
        assert_eq!(Config::parse_from(["gateway", "--jwks-url", " "]).jwks_url(), None);
        let set = Config::parse_from(["gateway", "--jwks-url", "https://idp.example/jwks.json"]);
        assert_eq!(set.jwks_url(), Some("https://idp.example/jwks.json"));
        assert!(Config::try_parse_from(["gateway", "--jwks-min-refresh-secs", "0"]).is_err());
    }

    #[test]
    fn pollers_are_bounded() {
        assert!(Config::try_parse_from(["gateway", "--pollers", "0"]).is_err());
        assert!(Config::try_parse_from(["gateway", "--pollers", "65"]).is_err());
    }
}
