//! A fault-injecting HTTP proxy between the gateways and the emulator: every
//! AWS call goes through it (the gateway's `AWS_ENDPOINT_URL` names it), and
//! the test decides which calls fail and how — throttling or a 5xx, as AWS
//! answers them, every n-th call or all of them — so the gateway's real SDK
//! clients, retries and backoff meet the failures.
//!
//! The service is read from the SigV4 credential scope
//! (`Credential=…/<region>/<service>/aws4_request`) and the operation from
//! `X-Amz-Target` (JSON protocols: DynamoDB, SQS) or the `Action` form field
//! (query protocol: SNS).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::body::{Body, to_bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Request, Response, StatusCode};

/// An AWS service the gateway calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    Sns,
    Sqs,
    DynamoDb,
}

impl Service {
    fn from_scope(name: &str) -> Option<Self> {
        match name {
            "sns" => Some(Service::Sns),
            "sqs" => Some(Service::Sqs),
            "dynamodb" => Some(Service::DynamoDb),
            _ => None,
        }
    }
}

/// How a matched call fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The service's throttling answer (HTTP 400, retried with backoff).
    Throttle,
    /// HTTP 503, the service unavailable.
    Unavailable,
    /// HTTP 500, an internal error.
    Internal,
}

/// Which calls fail: those of `service` (and `operation`, when given), every
/// `every`-th of them (1: all).
#[derive(Debug, Clone)]
pub struct Rule {
    pub service: Service,
    pub operation: Option<String>,
    pub fault: Fault,
    pub every: u64,
}

impl Rule {
    pub fn all(service: Service, fault: Fault) -> Self {
        Self { service, operation: None, fault, every: 1 }
    }

    pub fn every(service: Service, fault: Fault, every: u64) -> Self {
        Self { service, operation: None, fault, every: every.max(1) }
    }

    pub fn operation(mut self, operation: &str) -> Self {
        self.operation = Some(operation.to_owned());
        self
    }
}

#[derive(Debug, Default)]
struct Shared {
    rules: Vec<(Rule, u64)>,
    /// (service, operation, SQS queue URL or empty) → (calls seen, calls failed)
    calls: HashMap<(Service, String, String), (u64, u64)>,
}

#[derive(Debug, Clone)]
struct Proxy {
    /// Where each service's calls go (the emulator may split them).
    upstreams: HashMap<Service, String>,
    http: reqwest::Client,
    shared: Arc<Mutex<Shared>>,
}

/// A running proxy; stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    pub url: String,
    shared: Arc<Mutex<Shared>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// A proxy on a random loopback port in front of the endpoints an
    /// emulator's environment names (`AWS_ENDPOINT_URL` and any
    /// `AWS_ENDPOINT_URL_<SERVICE>`).
    pub async fn start(aws_env: &[(String, String)]) -> anyhow::Result<Self> {
        let var = |name: &str| aws_env.iter().find(|(k, _)| k == name).map(|(_, v)| v.trim_end_matches('/').to_owned());
        let default = var("AWS_ENDPOINT_URL").context("no AWS_ENDPOINT_URL to stand in front of")?;
        let upstreams = SERVICES
            .iter()
            .map(|(service, name)| {
                (*service, var(&format!("AWS_ENDPOINT_URL_{name}")).unwrap_or_else(|| default.clone()))
            })
            .collect();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let proxy = Proxy {
            upstreams,
            http: reqwest::Client::builder().build().context("proxy HTTP client")?,
            shared: shared.clone(),
        };
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let url = format!("http://{}", listener.local_addr()?);
        let app = axum::Router::new().fallback(forward).with_state(proxy);
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("fault proxy stopped: {e}");
            }
        });
        Ok(Self { url, shared, task })
    }

    /// The environment that sends a gateway's AWS calls through the proxy.
    pub fn gateway_env(&self) -> Vec<(String, String)> {
        let mut env = vec![("AWS_ENDPOINT_URL".to_owned(), self.url.clone())];
        env.extend(SERVICES.iter().map(|(_, name)| (format!("AWS_ENDPOINT_URL_{name}"), self.url.clone())));
        env
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a rule; the first rule that matches a call decides it.
    pub fn inject(&self, rule: Rule) {
        self.shared().rules.push((rule, 0));
    }

    /// Removes every rule: calls go through again.
    pub fn heal(&self) {
        self.shared().rules.clear();
    }

    /// Calls seen and failed of `service` (and `operation`, when given).
    pub fn calls(&self, service: Service, operation: Option<&str>) -> (u64, u64) {
        self.calls_on(service, operation, "")
    }

    /// As [`FaultProxy::calls`], of SQS calls on queues whose URL contains
    /// `queue` (empty: every queue).
    pub fn calls_on(&self, service: Service, operation: Option<&str>, queue: &str) -> (u64, u64) {
        self.shared()
            .calls
            .iter()
            .filter(|((s, op, q), _)| *s == service && operation.is_none_or(|o| o == op) && q.contains(queue))
            .fold((0, 0), |(seen, failed), (_, (s, f))| (seen + s, failed + f))
    }
}

const SERVICES: [(Service, &str); 3] = [(Service::Sns, "SNS"), (Service::Sqs, "SQS"), (Service::DynamoDb, "DYNAMODB")];

/// The service named by a SigV4 `Authorization` header.
fn service_of(headers: &HeaderMap) -> Option<Service> {
    let auth = headers.get("authorization")?.to_str().ok()?;
    let credential = auth.split("Credential=").nth(1)?;
    let scope: Vec<&str> = credential.split(['/', ',']).collect();
    Service::from_scope(scope.get(3)?)
}

/// The operation: `X-Amz-Target`'s suffix, or the query protocol's `Action`.
fn operation_of(headers: &HeaderMap, body: &[u8]) -> String {
    if let Some(target) = headers.get("x-amz-target").and_then(|t| t.to_str().ok()) {
        return target.rsplit('.').next().unwrap_or(target).to_owned();
    }
    String::from_utf8_lossy(body)
        .split('&')
        .find_map(|pair| pair.strip_prefix("Action="))
        .unwrap_or("unknown")
        .to_owned()
}

/// The failure as the service's protocol answers it.
fn fault_response(service: Service, fault: Fault) -> Response<Body> {
    let (status, code) = match fault {
        Fault::Throttle => (
            StatusCode::BAD_REQUEST,
            match service {
                Service::DynamoDb => "ThrottlingException",
                Service::Sqs => "RequestThrottled",
                Service::Sns => "Throttling",
            },
        ),
        Fault::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
        Fault::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "InternalFailure"),
    };
    let (content_type, body) = match service {
        Service::DynamoDb => (
            "application/x-amz-json-1.0",
            format!(r#"{{"__type":"com.amazonaws.dynamodb.v20120810#{code}","message":"injected fault"}}"#),
        ),
        Service::Sqs => (
            "application/x-amz-json-1.0",
            format!(r#"{{"__type":"com.amazonaws.sqs#{code}","message":"injected fault"}}"#),
        ),
        Service::Sns => (
            "text/xml",
            format!(
                "<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>injected fault</Message></Error><RequestId>fault</RequestId></ErrorResponse>"
            ),
        ),
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert("content-type", value);
    }
    if service == Service::Sqs
        && let Ok(value) = format!("AWS.SimpleQueueService.{code};Sender").parse()
    {
        response.headers_mut().insert("x-amzn-query-error", value);
    }
    response
}

async fn forward(State(proxy): State<Proxy>, request: Request<Body>) -> Response<Body> {
    match try_forward(proxy, request).await {
        Ok(response) => response,
        Err(e) => {
            let mut response = Response::new(Body::from(format!("proxy: {e:#}")));
            *response.status_mut() = StatusCode::BAD_GATEWAY;
            response
        }
    }
}

async fn try_forward(proxy: Proxy, request: Request<Body>) -> anyhow::Result<Response<Body>> {
    let (parts, body) = request.into_parts();
    let body = to_bytes(body, 64 << 20).await.context("reading the request")?;
    let service = service_of(&parts.headers);
    if let Some(service) = service {
        let operation = operation_of(&parts.headers, &body);
        let fault = {
            let mut shared = proxy.shared.lock().unwrap_or_else(|p| p.into_inner());
            let fault = shared
                .rules
                .iter_mut()
                .find(|(rule, _)| rule.service == service && rule.operation.as_ref().is_none_or(|o| *o == operation))
                .and_then(|(rule, seen)| {
                    *seen += 1;
                    (*seen % rule.every == 0).then_some(rule.fault)
                });
            let queue = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("QueueUrl").and_then(|q| q.as_str()).map(str::to_owned))
                .unwrap_or_default();
            let counts = shared.calls.entry((service, operation, queue)).or_default();
            counts.0 += 1;
            if fault.is_some() {
                counts.1 += 1;
            }
            fault
        };
        if let Some(fault) = fault {
            return Ok(fault_response(service, fault));
        }
    }
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let base = service.and_then(|s| proxy.upstreams.get(&s)).or_else(|| proxy.upstreams.values().next());
    let base = base.context("no upstream")?;
    let mut upstream = proxy.http.request(parts.method, format!("{base}{path}")).body(body);
    for (name, value) in &parts.headers {
        if !matches!(name.as_str(), "content-length" | "transfer-encoding" | "connection") {
            upstream = upstream.header(name, value);
        }
    }
    let answer = upstream.send().await.context("forwarding")?;
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if !matches!(name.as_str(), "content-length" | "transfer-encoding" | "connection") {
            response = response.header(name, value);
        }
    }
    let bytes = answer.bytes().await.context("reading the answer")?;
    Ok(response.body(Body::from(bytes))?)
}
