//! An OTLP trace receiver for tests: a gRPC `TraceService` (built from the
//! `opentelemetry-proto` definitions) on a free loopback port, keeping
//! every span it is sent with its resource's `service.name` and
//! `service.instance.id`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tokio_util::sync::CancellationToken;

use crate::DEADLINE;

/// One received span, ids in hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedSpan {
    pub service: String,
    pub instance: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root.
    pub parent_span_id: String,
    /// `(trace id, span id)` of each link.
    pub links: Vec<(String, String)>,
    pub attributes: Vec<(String, String)>,
}

impl ReceivedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Default, Clone)]
struct Collector {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(attributes: &[KeyValue]) -> Vec<(String, String)> {
    attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                Some(Value::DoubleValue(d)) => d.to_string(),
                _ => String::new(),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let resource = text(resource_spans.resource.as_ref().map(|r| r.attributes.as_slice()).unwrap_or_default());
            let find = |key: &str| resource.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()).unwrap_or_default();
            let (service, instance) = (find("service.name"), find("service.instance.id"));
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                received.push(ReceivedSpan {
                    service: service.clone(),
                    instance: instance.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    links: span.links.iter().map(|l| (hex(&l.trace_id), hex(&l.span_id))).collect(),
                    attributes: text(&span.attributes),
                });
            }
        }
        self.spans.lock().map_err(|_| tonic::Status::internal("poisoned"))?.extend(received);
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// The receiver; stops on drop.
#[derive(Debug)]
pub struct OtlpReceiver {
    pub endpoint: String,
    collector: Collector,
    stop: CancellationToken,
}

impl OtlpReceiver {
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let collector = Collector::default();
        let stop = CancellationToken::new();
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                stop.clone().cancelled_owned(),
            );
        tokio::spawn(async move {
            if let Err(e) = server.await {
                eprintln!("OTLP receiver failed: {e}");
            }
        });
        Ok(Self { endpoint, collector, stop })
    }

    /// The environment that points a process's traces here, exported
    /// quickly.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", self.endpoint.clone()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ]
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.collector.spans.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits until `pick` finds what it wants among the spans received.
    pub async fn wait_for<T>(&self, what: &str, pick: impl Fn(&[ReceivedSpan]) -> Option<T>) -> anyhow::Result<T> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let spans = self.spans();
            if let Some(found) = pick(&spans) {
                return Ok(found);
            }
            if Instant::now() > deadline {
                let names: Vec<String> =
                    spans.iter().map(|s| format!("{}/{} {} {}", s.service, s.instance, s.name, s.trace_id)).collect();
                bail!("no {what} among {} spans received: {names:#?}", spans.len());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
