//! Assembling and running a gateway: bus and store from the configuration,
//! the gRPC server on a listener the caller bound, background tasks, and the
//! ordered shutdown.
//!
//! Shutdown order, on the token from `main`: stop accepting and close every
//! stream with a `Disconnect` (clients reconnect elsewhere) → wait for the
//! streams to end (bounded) → stop the pollers → unsubscribe and delete this
//! gateway's queue.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_config::BehaviorVersion;
use aws_config::timeout::TimeoutConfig;
use chat_proto::pb::chat_service_server::ChatServiceServer;
use chat_proto::pb::echo_service_server::EchoServiceServer;
use chat_proto::token::Verifier;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Identity, ServerTlsConfig};

use chat_aws::dynamo::DynamoStore;
use chat_aws::metered;
use chat_aws::queue::{self, GatewayQueue, QueueError};
use chat_aws::sns::SnsPublisher;
use chat_core::bus::Bus;
use chat_core::memory::MemoryStore;
use chat_core::store::{StoreError, Stores};

use crate::app::{App, PRESENCE_REFRESH};
use crate::auth::{Authenticated, Authenticator};
use crate::bus::batch::{BatchPolicy, BatchingPublisher};
use crate::bus::memory::MemoryBus;
use crate::bus::route::{self, RoutedSink, Router};
use crate::bus::sqs;
use crate::config::{BusKind, Config, Routing};
use crate::hub::Hub;
use crate::jwks::KeyCache;
use crate::limits::AddressLimits;
use crate::service::{ChatApi, EchoApi};

/// How long streams get to end after the shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often reorder gaps are checked.
const GAP_TICK: Duration = Duration::from_millis(50);
/// HTTP/2 flow-control windows for what clients send. h2 ends a connection
/// (GOAWAY `ENHANCE_YOUR_CALM`, which clients see as `UNAVAILABLE`) once
/// small DATA frames it holds unread cost more than half the connection
/// window in framing overhead (about 250 bytes each). A stream's window
/// bounds how many whole gRPC frames a client can get in before the
/// session reads them (32 KiB: some 3,000 of 10 bytes, 2,000 of 16), well
/// within that budget (2 MiB), so a flood of frames meets the gateway's own
/// frame limit (`RESOURCE_EXHAUSTED`) first. (hyper's defaults, 1 MiB
/// each, let one stream's unread frames exhaust the budget.)
const STREAM_WINDOW: u32 = 32 * 1024;
const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;
/// Longest a client may take over its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("JWT secret: {0}")]
    Secret(String),
    #[error("identity provider: {0}")]
    Jwks(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("gateway queue: {0}")]
    Queue(#[from] QueueError),
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("metrics: {0}")]
    Metrics(String),
    #[error("reflection: {0}")]
    Reflection(String),
}

/// The instance id: the configured one, or a fresh random one.
pub fn instance_id(config: &Config) -> Result<String, RunError> {
    let id =
        config.instance_id.clone().unwrap_or_else(|| format!("gw-{}", ulid::Ulid::new().to_string().to_lowercase()));
    let ok = !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(id)
    } else {
        Err(RunError::Config(format!(
            "instance id {id:?} must be 1..=64 letters, digits, '-' or '_' (it names an SQS queue)"
        )))
    }
}

/// Reads the HS256 secret: the configured value, else the secret file,
/// generating it (mode 0600) when it does not exist yet.
pub(crate) fn load_secret(config: &Config) -> Result<Vec<u8>, RunError> {
    if let Some(secret) = &config.jwt_secret {
        if secret.len() < 16 {
            return Err(RunError::Secret("CHAT_JWT_SECRET must be at least 16 bytes".into()));
        }
        return Ok(secret.clone().into_bytes());
    }
    read_or_create_secret(&config.jwt_secret_file)
}

fn read_or_create_secret(path: &Path) -> Result<Vec<u8>, RunError> {
    match std::fs::read_to_string(path) {
        Ok(s) if s.trim().len() >= 16 => return Ok(s.trim().as_bytes().to_vec()),
        Ok(_) => return Err(RunError::Secret(format!("{} holds fewer than 16 bytes", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(RunError::Secret(format!("reading {}: {e}", path.display()))),
    }
    let secret = format!("{}{}", ulid::Ulid::new(), ulid::Ulid::new()).to_lowercase();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| RunError::Secret(format!("creating {}: {e}", dir.display())))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(mut file) => {
            std::io::Write::write_all(&mut file, secret.as_bytes())
                .map_err(|e| RunError::Secret(format!("writing {}: {e}", path.display())))?;
            tracing::warn!(path = %path.display(), "generated a development JWT secret; set CHAT_JWT_SECRET in production");
            Ok(secret.into_bytes())
        }
        // Another local gateway created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_or_create_secret(path),
        Err(e) => Err(RunError::Secret(format!("creating {}: {e}", path.display()))),
    }
}

/// How this gateway trusts tokens: the identity provider's keys when a JWKS
/// URL is configured (the shared secret is then not read), else HS256 with
/// the shared secret.
async fn authenticator(config: &Config) -> Result<(Authenticator, Option<Arc<KeyCache>>), RunError> {
    let (issuer, audience) = (&config.jwt_issuer, &config.jwt_audience);
    match config.jwks_url() {
        Some(url) => {
            let cache = KeyCache::load(url, Duration::from_secs(config.jwks_min_refresh_secs))
                .await
                .map_err(|e| RunError::Jwks(e.to_string()))?;
            let cache = Arc::new(cache);
            let verifier = Verifier::jwks(issuer, audience).with_leeway(config.jwt_leeway_secs);
            Ok((Authenticator::with_keys(verifier, cache.clone()), Some(cache)))
        }
        None => {
            let secret = load_secret(config)?;
            let verifier = Verifier::new(&secret, issuer, audience)
                .map_err(|e| RunError::Secret(e.to_string()))?
                .with_leeway(config.jwt_leeway_secs);
            Ok((Authenticator::with_secret(verifier), None))
        }
    }
}

/// The TLS settings when a certificate and key are configured. Read at
/// start, so a missing or bad file stops the gateway before it serves.
fn tls(config: &Config) -> Result<Option<ServerTlsConfig>, RunError> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else { return Ok(None) };
    let read = |path: &Path| std::fs::read(path).map_err(|e| RunError::Tls(format!("reading {}: {e}", path.display())));
    let identity = Identity::from_pem(read(cert)?, read(key)?);
    // The process-wide rustls provider: the AWS SDK links another one, and
    // with two linked rustls cannot pick a default by itself. (An error
    // means one is installed already.)
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = ServerTlsConfig::new().identity(identity).timeout(TLS_HANDSHAKE_TIMEOUT);
    // Building the acceptor checks that the certificate and key parse and
    // belong together.
    tonic::transport::Server::builder().tls_config(tls.clone()).map_err(|e| RunError::Tls(format!("{e}: {e:?}")))?;
    Ok(Some(tls))
}

/// Bus-side resources that need tearing down at shutdown.
struct AwsParts {
    queue: GatewayQueue,
    sqs: aws_sdk_sqs::Client,
    /// Member routing's registrations, when routing by members.
    router: Option<Arc<Router>>,
}

async fn aws_backend(
    config: &Config,
    gateway_id: &str,
    hub: &Arc<Hub>,
) -> Result<(Stores, Arc<dyn Bus>, AwsParts), RunError> {
    let topic_arn = config
        .topic_arn
        .clone()
        .ok_or_else(|| RunError::Config("--bus sns-sqs needs --topic-arn (CHAT_TOPIC_ARN)".into()))?;
    let sdk = aws_config::defaults(BehaviorVersion::latest()).load().await;
    // Requests on the send path fail fast so a client can retry; receives
    // wait out the long poll.
    let quick = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3))
        .operation_attempt_timeout(Duration::from_secs(5))
        .operation_timeout(Duration::from_secs(12))
        .build();
    let polling = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3))
        .operation_attempt_timeout(Duration::from_secs(u64::try_from(queue::POLL_WAIT_SECS).unwrap_or(20) + 5))
        .build();
    let dynamo = aws_sdk_dynamodb::Client::from_conf(metered::dynamodb(&sdk).timeout_config(quick.clone()).build());
    let sns = aws_sdk_sns::Client::from_conf(metered::sns(&sdk).timeout_config(quick.clone()).build());
    let sqs = aws_sdk_sqs::Client::from_conf(metered::sqs(&sdk).timeout_config(polling).build());
    // Member routing's sends are on the send path: its short timeouts.
    let sqs_sends = aws_sdk_sqs::Client::from_conf(metered::sqs(&sdk).timeout_config(quick).build());

    let store = Arc::new(DynamoStore::new(dynamo, config.tables.clone()));
    store.check_tables().await?;
    let queue_name = format!("{}{}", config.queue_prefix, gateway_id);
    let by_members = config.routing == Routing::Members;
    // Under member routing the gateways send each other their events; the
    // topic brings only what the functions publish.
    let filter = by_members.then_some(queue::UNROUTED_ONLY);
    let boot = format!("{:08x}", ulid::Ulid::new().random() & 0xffff_ffff);
    let queue =
        GatewayQueue::create(sqs.clone(), sns.clone(), &topic_arn, &queue_name, gateway_id, Some(&boot), filter)
            .await?;
    tracing::info!(queue_url = queue.queue_url, subscription_arn = queue.subscription_arn, routing = ?config.routing, "gateway queue subscribed");
    let policy = BatchPolicy {
        linger: Duration::from_millis(config.publish_linger_ms),
        max_in_flight: usize::from(config.publish_concurrency),
    };
    let (publisher, router) = if by_members {
        let router = Arc::new(Router::new(
            store.clone(),
            sqs_sends,
            config.queue_prefix.clone(),
            route::route_id(gateway_id, &boot),
            usize::try_from(config.route_limit).unwrap_or(usize::MAX),
            Duration::from_secs(config.route_linger_secs),
        ));
        let sink = RoutedSink::new(router.clone(), hub.clone(), sns, topic_arn);
        (BatchingPublisher::spawn(sink, policy), Some(router))
    } else {
        (BatchingPublisher::spawn(SnsPublisher::new(sns, topic_arn), policy), None)
    };
    Ok((Stores::of(store), Arc::new(publisher), AwsParts { queue, sqs, router }))
}

/// Runs a gateway on `listener` until `shutdown` is cancelled, then stops in
/// order.
pub async fn run(config: Config, listener: TcpListener, shutdown: CancellationToken) -> Result<(), RunError> {
    let metrics =
        service::metrics::bind_configured(config.metrics_listen).await.map_err(|e| RunError::Metrics(e.to_string()))?;
    let gateway = Gateway::build(&config, metrics).await?;
    let served = gateway.serve(&config, listener, &shutdown).await;
    gateway.drain().await;
    served
}

/// A gateway assembled from its configuration: the shared state, its
/// background work, and what its shutdown must tear down.
struct Gateway {
    id: String,
    bus_kind: BusKind,
    auth: Arc<Authenticator>,
    /// The identity provider's keys, refreshed in the background.
    keys: Option<Arc<KeyCache>>,
    tls: Option<ServerTlsConfig>,
    hub: Arc<Hub>,
    app: Arc<App>,
    /// Admission of connections by source address.
    addresses: Arc<AddressLimits>,
    aws: Option<AwsParts>,
    /// Pollers, heartbeat, reorder gaps, presence refresh.
    background: TaskTracker,
    stop_background: CancellationToken,
    /// The `Connect` streams' sessions.
    sessions: TaskTracker,
}

impl Gateway {
    /// Identity, secret, bus and store from the configuration, then the
    /// background tasks; the AWS resources this gateway owns (its queue)
    /// exist once this returns.
    async fn build(config: &Config, metrics: Option<TcpListener>) -> Result<Self, RunError> {
        let id = instance_id(config)?;
        let tls = tls(config)?;
        let (auth, keys) = authenticator(config).await?;
        let hub = Arc::new(Hub::new(config.reorder_window()));
        let bus_kind = config.effective_bus();
        let (stores, bus, aws): (Stores, Arc<dyn Bus>, Option<AwsParts>) = match bus_kind {
            BusKind::SnsSqs => {
                let (stores, bus, parts) = aws_backend(config, &id, &hub).await?;
                (stores, bus, Some(parts))
            }
            _ => {
                let store = Arc::new(MemoryStore::new());
                (Stores::of(store.clone()), Arc::new(MemoryBus::new(hub.clone(), store)), None)
            }
        };
        let router = aws.as_ref().and_then(|parts| parts.router.clone());
        let app = Arc::new(
            App::new(id.clone(), stores, bus, hub.clone(), config.limits(), config.outbound_buffer).routed_by(router),
        );
        let gateway = Self {
            id,
            bus_kind,
            auth: Arc::new(auth),
            keys,
            tls,
            hub,
            app,
            addresses: Arc::new(AddressLimits::new(&config.limits())),
            aws,
            background: TaskTracker::new(),
            stop_background: CancellationToken::new(),
            sessions: TaskTracker::new(),
        };
        gateway.start_background(config);
        gateway.start_metrics(metrics)?;
        Ok(gateway)
    }

    /// The admin listener with `/metrics`, when configured; each scrape
    /// first publishes the hub's counts and the gauges read from state.
    fn start_metrics(&self, listener: Option<TcpListener>) -> Result<(), RunError> {
        let (hub, sessions) = (self.hub.clone(), self.sessions.clone());
        let refresh = Arc::new(move || crate::metrics::publish_hub(&hub, sessions.len()));
        let labels = [("gateway_id", self.id.as_str())];
        service::metrics::start(listener, &labels, refresh, self.stop_background.clone())
            .map_err(|e| RunError::Metrics(e.to_string()))
    }

    fn start_background(&self, config: &Config) {
        let (background, stop) = (&self.background, &self.stop_background);
        if let Some(parts) = &self.aws {
            let (deletes, handles) = tokio::sync::mpsc::unbounded_channel();
            background.spawn(sqs::deleter(
                parts.sqs.clone(),
                parts.queue.queue_url.clone(),
                handles,
                Duration::from_millis(config.delete_linger_ms),
            ));
            let poller = sqs::Poller {
                sqs: parts.sqs.clone(),
                queue_url: parts.queue.queue_url.clone(),
                inbox: self.hub.clone(),
                scale: Arc::new(sqs::PollerScale::new(usize::from(config.pollers))),
                window: Duration::from_millis(config.receive_window_ms),
                deletes,
            };
            for index in 0..usize::from(config.pollers) {
                background.spawn(sqs::poll(poller.clone(), index, stop.clone()));
            }
            if let Some(router) = &parts.router {
                background.spawn(router.clone().maintain(self.hub.clone(), stop.clone()));
            }
            let queue = parts.queue.clone();
            background.spawn(every(Duration::from_secs(config.heartbeat_secs), stop.clone(), move || {
                let queue = queue.clone();
                async move {
                    if let Err(e) = queue.heartbeat().await {
                        tracing::warn!(error = %e, "queue heartbeat failed");
                    }
                }
            }));
        }
        let hub = self.hub.clone();
        background.spawn(every(GAP_TICK, stop.clone(), move || {
            hub.expire_gaps(Instant::now());
            std::future::ready(())
        }));
        // Asks run in tasks of their own: one held up by the store holds up
        // neither expiry (the window bounds every wait) nor other asks.
        let app = self.app.clone();
        background.spawn(every(GAP_TICK, stop.clone(), move || {
            app.settle_gaps();
            std::future::ready(())
        }));
        let addresses = self.addresses.clone();
        background.spawn(every(PRESENCE_REFRESH, stop.clone(), move || {
            addresses.purge_idle();
            std::future::ready(())
        }));
        if let Some(keys) = &self.keys {
            let keys = keys.clone();
            background.spawn(every(Duration::from_secs(config.jwks_refresh_secs), stop.clone(), move || {
                let keys = keys.clone();
                async move { keys.refresh().await }
            }));
        }
        let app = self.app.clone();
        background.spawn(every(PRESENCE_REFRESH, stop.clone(), move || {
            let app = app.clone();
            async move { app.refresh_presence().await }
        }));
    }

    /// Serves gRPC (chat, echo, health, reflection) on `listener` until
    /// `shutdown`; then streams are told to close and get a bounded time to.
    async fn serve(
        &self,
        config: &Config,
        listener: TcpListener,
        shutdown: &CancellationToken,
    ) -> Result<(), RunError> {
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<ChatServiceServer<ChatApi>>().await;
        // Both reflection versions: grpcurl and older clients still ask v1alpha.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(chat_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection().build_v1().map_err(|e| RunError::Reflection(e.to_string()))?;
        let reflection_v1alpha = reflection().build_v1alpha().map_err(|e| RunError::Reflection(e.to_string()))?;

        let chat = ChatServiceServer::new(ChatApi::new(self.app.clone(), self.sessions.clone(), self.auth.clone()))
            .max_decoding_message_size(config.max_grpc_message_bytes)
            .max_encoding_message_size(config.max_grpc_message_bytes);
        let echo = EchoServiceServer::new(EchoApi::new(self.id.clone()))
            .max_decoding_message_size(config.max_grpc_message_bytes)
            .max_encoding_message_size(config.max_grpc_message_bytes);
        // A connection its address's limits refused is told so before
        // anything else, authentication included.
        let chat = InterceptedService::new(Authenticated::new(chat, self.auth.clone()), crate::conn::admit);

        let local_addr = listener.local_addr().ok();
        tracing::info!(
            gateway_id = self.id,
            bus = ?self.bus_kind,
            addr = ?local_addr,
            tls = self.tls.is_some(),
            identity = ?self.auth.verifier(),
            "gateway serving"
        );
        let closing = self.app.closing().clone();
        let signal = shutdown.clone();
        let stopped = async move {
            signal.cancelled().await;
            tracing::info!("shutdown: closing streams");
            closing.cancel();
        };
        // HTTP/1.1 too: browsers speak gRPC-Web over whichever HTTP version
        // they reach the gateway with (never h2c).
        let mut builder = tonic::transport::Server::builder().accept_http1(true);
        if let Some(tls) = &self.tls {
            builder = builder.tls_config(tls.clone())?;
        }
        let serve = builder
            .http2_keepalive_interval(Some(Duration::from_secs(config.keepalive_secs.max(1))))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .layer(tower::util::option_layer(web_cors(&config.cors_allow_origins)))
            // gRPC-Web calls become gRPC calls here; the metrics and every
            // service below see only gRPC.
            .layer(tonic_web::GrpcWebLayer::new())
            .layer(crate::metrics::GrpcMetricsLayer)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(echo)
            .add_service(chat)
            .serve_with_incoming_shutdown(
                crate::conn::admitted(chat_proto::transport::incoming(listener), self.addresses.clone()),
                stopped,
            );
        // Draining is bounded: a stream that will not end must not keep the
        // gateway (and its queue) alive.
        let drained = async {
            shutdown.cancelled().await;
            tokio::time::sleep(DRAIN_TIMEOUT).await;
        };
        let served = tokio::select! {
            r = serve => r,
            () = drained => {
                tracing::warn!("streams did not end within the drain timeout");
                Ok(())
            }
        };
        health.set_not_serving::<ChatServiceServer<ChatApi>>().await;
        Ok(served?)
    }

    /// After serving: sessions and the sends they started finish (bounded),
    /// background work stops, this gateway's queue is deleted, and its
    /// totals are logged.
    async fn drain(self) {
        self.sessions.close();
        self.app.tasks().close();
        let finished = async {
            self.sessions.wait().await;
            self.app.tasks().wait().await;
        };
        if tokio::time::timeout(DRAIN_TIMEOUT, finished).await.is_err() {
            tracing::warn!("some sessions did not finish cleaning up");
        }
        self.stop_background.cancel();
        self.background.close();
        self.background.wait().await;
        if let Some(parts) = &self.aws {
            if let Some(router) = &parts.router
                && tokio::time::timeout(DRAIN_TIMEOUT, router.unregister_all()).await.is_err()
            {
                tracing::warn!("some routes were left registered; sends that find the queue gone remove them");
            }
            parts.queue.delete().await;
        }
        let c = &self.hub.counters;
        tracing::info!(
            dispatched = c.dispatched.load(std::sync::atomic::Ordering::Relaxed),
            deliveries = c.deliveries.load(std::sync::atomic::Ordering::Relaxed),
            duplicates = c.duplicates.load(std::sync::atomic::Ordering::Relaxed),
            late = c.late.load(std::sync::atomic::Ordering::Relaxed),
            held = c.held.load(std::sync::atomic::Ordering::Relaxed),
            stale = c.stale.load(std::sync::atomic::Ordering::Relaxed),
            slow_consumers = c.slow_consumers.load(std::sync::atomic::Ordering::Relaxed),
            "gateway stopped"
        );
    }
}

/// The CORS answers that let pages of `origins` call the gateway over
/// gRPC-Web: preflights for POST with the headers gRPC-Web clients send,
/// and the status trailers (which gRPC-Web puts in headers for a
/// trailers-only answer) readable by the page. None without origins.
fn web_cors(origins: &[http::HeaderValue]) -> Option<tower_http::cors::CorsLayer> {
    use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName};
    if origins.is_empty() {
        return None;
    }
    let name = HeaderName::from_static;
    Some(
        tower_http::cors::CorsLayer::new()
            .allow_origin(tower_http::cors::AllowOrigin::list(origins.iter().cloned()))
            .allow_methods([http::Method::POST])
            .allow_headers([
                AUTHORIZATION,
                CONTENT_TYPE,
                name("x-grpc-web"),
                name("x-user-agent"),
                name("grpc-timeout"),
                name(service::telemetry::TRACEPARENT),
                name("tracestate"),
            ])
            .expose_headers([name("grpc-status"), name("grpc-message"), name("grpc-status-details-bin")])
            .max_age(Duration::from_secs(24 * 3600)),
    )
}

/// Runs `tick` every `period` until `stop`.
async fn every<F, Fut>(period: Duration, stop: CancellationToken, mut tick: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        // A tick in progress does not hold up shutdown either.
        tokio::select! {
            () = stop.cancelled() => return,
            () = tick() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn instance_ids_are_checked() {
        let ok = Config::parse_from(["gateway", "--instance-id", "gw-a_1"]);
        assert_eq!(instance_id(&ok).expect("valid"), "gw-a_1");
        let bad = Config::parse_from(["gateway", "--instance-id", "gw/a"]);
        assert!(instance_id(&bad).is_err());
        let generated = instance_id(&Config::parse_from(["gateway"])).expect("generated");
        assert!(generated.starts_with("gw-"));
    }

    #[test]
    fn secret_file_is_generated_once_and_reused() {
        let dir = std::env::temp_dir().join(format!("chat-secret-{}", ulid::Ulid::new()));
        let path = dir.join("nested").join("secret");
        let first = read_or_create_secret(&path).expect("generated");
        let second = read_or_create_secret(&path).expect("read back");
        assert_eq!(first, second);
        assert!(first.len() >= 16);
        std::fs::write(&path, "short").expect("write");
        assert!(read_or_create_secret(&path).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
