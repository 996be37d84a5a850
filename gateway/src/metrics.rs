//! What the gateway exports on `/metrics` (`--metrics-listen`), through the
//! `metrics` facade (`service::metrics` serves it):
//!
//! | series | kind | from |
//! | --- | --- | --- |
//! | `chat_streams`, `chat_connections`, `chat_local_conversations` | gauge | sessions, accepted connections, the hub |
//! | `chat_joins_total{resume}`, `chat_resume_backfills_total` | counter | joins |
//! | `chat_messages_accepted_total`, `chat_send_accept_seconds` | counter, histogram | sends (frame read → accepted answered) |
//! | `chat_bus_events_received_total`, `chat_publish_receive_seconds` | counter, histogram | the bus (the envelope's `at_ms` → received) |
//! | `chat_deliveries_total`, `chat_bus_events_dropped_total{reason}` | counter | the hub |
//! | `chat_reorder_waits_total`, `chat_late_deliveries_total`, `chat_settled_total{outcome}` | counter | the reorderer |
//! | `chat_slow_consumer_disconnects_total` | counter | outboxes |
//! | `chat_receipts_reported_total{status}`, `chat_receipts_coalesced_total` | counter | streams' acks and reads (reported; merged into a later report) |
//! | `chat_publish_batch_size`, `chat_sqs_empty_receives_total`, `chat_sqs_messages_received_total` | histogram, counters | SNS publisher, SQS pollers (receives that returned nothing; messages received) |
//! | `chat_routes_healed_total`, `chat_routes_relayed_total` | counter | member routing: dead routes removed from a conversation; events relayed through the topic after a queue refused them |
//! | `chat_aws_requests_total{service,operation,outcome}`, `chat_aws_request_seconds` | counter, histogram | every AWS call (`chat_aws::metered`) |
//! | `chat_grpc_requests_total{method,code}` | counter | every gRPC call, by its final status ([`GrpcMetricsLayer`]) |
//!
//! The hub's counts stay plain atomics on its hot path and are published at
//! each scrape ([`publish_hub`]); the rest are recorded where they happen.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use http_body::{Body, Frame};
use tonic::Code;

use crate::hub::Hub;

/// Publishes the hub's counts and gauges (called before each render).
pub(crate) fn publish_hub(hub: &Hub, streams: usize) {
    let c = &hub.counters;
    let count = |name: &'static str, value: &std::sync::atomic::AtomicU64| {
        metrics::counter!(name).absolute(value.load(Ordering::Relaxed));
    };
    count("chat_bus_events_received_total", &c.dispatched);
    count("chat_deliveries_total", &c.deliveries);
    count("chat_reorder_waits_total", &c.held);
    count("chat_late_deliveries_total", &c.late);
    count("chat_slow_consumer_disconnects_total", &c.slow_consumers);
    let dropped = |reason: &'static str, value: &std::sync::atomic::AtomicU64| {
        metrics::counter!("chat_bus_events_dropped_total", "reason" => reason).absolute(value.load(Ordering::Relaxed));
    };
    dropped("no_local_members", &c.no_local_members);
    dropped("duplicate", &c.duplicates);
    dropped("stale", &c.stale);
    dropped("stale_receipt", &c.stale_receipts);
    dropped("not_for_streams", &c.not_for_streams);
    metrics::counter!("chat_parked_messages_total").absolute(c.parked.load(Ordering::Relaxed));
    metrics::counter!("chat_settled_total", "outcome" => "message")
        .absolute(c.settled_messages.load(Ordering::Relaxed));
    metrics::counter!("chat_settled_total", "outcome" => "void").absolute(c.settled_voids.load(Ordering::Relaxed));
    metrics::gauge!("chat_local_conversations").set(hub.local_conversations() as f64);
    metrics::gauge!("chat_streams").set(streams as f64);
}

/// Counts every gRPC request by method and final status: the `grpc-status`
/// of a trailers-only answer, else of the trailers that end the body; a body
/// dropped before its trailers (the client went away) counts as
/// `Cancelled`. Methods the gateway does not serve count as `unknown`, so a
/// client cannot mint series.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct GrpcMetricsLayer;

impl<S> tower_layer::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct GrpcMetrics<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for GrpcMetrics<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Counted<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let method = request.uri().path().to_owned();
        let response = self.inner.call(request);
        Box::pin(async move {
            let (head, body) = response.await?.into_parts();
            let mut counted = Counted { method, recorded: false, body };
            if let Some(code) = grpc_status(&head.headers) {
                counted.record(code);
            }
            Ok(http::Response::from_parts(head, counted))
        })
    }
}

/// A response body that records its request when its status is known.
#[derive(Debug)]
pub(crate) struct Counted<B> {
    method: String,
    recorded: bool,
    body: B,
}

impl<B> Counted<B> {
    fn record(&mut self, code: Code) {
        if self.recorded {
            return;
        }
        self.recorded = true;
        let method = if code == Code::Unimplemented { "unknown".to_owned() } else { std::mem::take(&mut self.method) };
        metrics::counter!("chat_grpc_requests_total", "method" => method, "code" => code_name(code)).increment(1);
    }
}

impl<B> Drop for Counted<B> {
    fn drop(&mut self) {
        self.record(Code::Cancelled);
    }
}

impl<B: Body + Unpin> Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    self.record(code);
                }
            }
            Poll::Ready(Some(Err(_))) => self.record(Code::Internal),
            Poll::Ready(None) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
    Some(Code::from_i32(value))
}

/// The canonical name of a status code, as gRPC's own metrics spell it.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_read_from_headers_or_trailers() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(grpc_status(&headers), None);
        headers.insert("grpc-status", http::HeaderValue::from_static("16"));
        assert_eq!(grpc_status(&headers), Some(Code::Unauthenticated));
        assert_eq!(code_name(Code::Unauthenticated), "UNAUTHENTICATED");
        headers.insert("grpc-status", http::HeaderValue::from_static("x"));
        assert_eq!(grpc_status(&headers), None);
    }
}
