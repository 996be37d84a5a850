//! Logs and traces, set up one way for every process.
//!
//! Logs: `RUST_LOG` filtering (default `info`), JSON lines for log pipelines
//! or text. Traces: OpenTelemetry over OTLP/gRPC, **off unless configured**
//! by the standard variables: on when `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, unless `OTEL_SDK_DISABLED`
//! is `true` or `OTEL_TRACES_EXPORTER` is `none`; `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_BSP_*` are read as the SDK reads
//! them. `tracing` spans become OpenTelemetry spans; a root span of ours
//! records its `trace_id` as a field, so every log line inside it carries
//! the id.
//!
//! Context crosses processes as a W3C `traceparent` string
//! ([`traceparent`], [`set_parent`], [`add_link`]): in gRPC metadata, in
//! the bus envelope and its SNS message attributes.

use std::collections::HashMap;
use std::sync::OnceLock;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The W3C header and attribute name.
pub const TRACEPARENT: &str = "traceparent";

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Flushes and stops the trace exporter when dropped (the end of `main`).
#[derive(Debug)]
#[must_use = "dropping it at once stops exporting traces"]
pub struct Telemetry {
    tracing: bool,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn tracing(&self) -> bool {
        self.tracing
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = PROVIDER.get()
            && let Err(error) = provider.shutdown()
        {
            tracing::warn!(%error, "flushing traces at exit failed");
        }
    }
}

/// Whether the environment asks for traces (pure, for tests).
pub fn traces_configured(var: impl Fn(&str) -> Option<String>) -> bool {
    let set = |name: &str| var(name).is_some_and(|v| !v.trim().is_empty());
    let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Installs the global subscriber: logs, and traces when configured (see
/// the module doc). `service` names the process when `OTEL_SERVICE_NAME`
/// does not; `instance` (`service.instance.id`) tells apart processes of
/// one service. Call inside a Tokio runtime (the exporter's connection
/// lives on it).
pub fn init(json: bool, service: &str, instance: Option<&str>) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = if json {
        tracing_subscriber::fmt::layer().json().boxed()
    } else {
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
        tracing_subscriber::fmt::layer().with_ansi(ansi).boxed()
    };
    let (traces, failure) = if traces_configured(|name| std::env::var(name).ok()) {
        match provider(service, instance) {
            Ok(provider) => {
                let tracer = provider.tracer("chat");
                let _ = PROVIDER.set(provider);
                (Some(tracing_opentelemetry::layer().with_tracer(tracer)), None)
            }
            Err(error) => (None, Some(error)),
        }
    } else {
        (None, None)
    };
    let tracing = traces.is_some();
    tracing_subscriber::registry().with(filter).with(logs).with(traces).init();
    if let Some(error) = failure {
        tracing::error!(%error, "traces off: the OTLP exporter could not be built");
    }
    Telemetry { tracing }
}

fn provider(
    service: &str,
    instance: Option<&str>,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().build()?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service.to_owned());
    }
    if let Some(instance) = instance {
        resource = resource.with_attribute(opentelemetry::KeyValue::new("service.instance.id", instance.to_owned()));
    }
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource.build()).build())
}

/// Whether spans are exported: hot paths create their spans only then.
pub fn enabled() -> bool {
    PROVIDER.get().is_some()
}

/// Exports what has ended so far (a Lambda, before it is frozen between
/// invocations).
pub fn flush() {
    if let Some(provider) = PROVIDER.get()
        && let Err(error) = provider.force_flush()
    {
        tracing::warn!(%error, "flushing traces failed");
    }
}

/// `span`'s context as a `traceparent`; `None` when traces are off.
pub fn traceparent(span: &Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// The remote context a `traceparent` names; `None` when it is malformed.
fn remote(traceparent: &str) -> Option<opentelemetry::Context> {
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

/// Makes `span` a child of the remote span `traceparent` names (a malformed
/// one is ignored: the span stays a root), then records the trace id.
pub fn set_parent(span: &Span, traceparent: Option<&str>) {
    if let Some(cx) = traceparent.and_then(remote) {
        let _ = span.set_parent(cx);
    }
    record_trace_id(span);
}

/// Links `span` to the remote span `traceparent` names (a batch handler's
/// span to each record's trace).
pub fn add_link(span: &Span, traceparent: &str) {
    if let Some(cx) = remote(traceparent) {
        span.add_link(cx.span().span_context().clone());
    }
}

/// Records `span`'s trace id in its `trace_id` field (declared `Empty` at
/// creation), so log lines inside it carry the id.
pub fn record_trace_id(span: &Span) {
    let cx = span.context();
    let context = cx.span().span_context().clone();
    if context.is_valid() {
        span.record("trace_id", tracing::field::display(context.trace_id()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_are_off_unless_an_endpoint_is_configured() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
        };
        assert!(!traces_configured(env(&[])));
        assert!(!traces_configured(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])));
        assert!(traces_configured(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")])));
        assert!(traces_configured(env(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4317")])));
        assert!(!traces_configured(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_SDK_DISABLED", "true")
        ])));
        assert!(!traces_configured(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_TRACES_EXPORTER", "none")
        ])));
    }

    #[test]
    fn traceparents_are_validated() {
        assert!(remote("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_some());
        assert!(remote("not a traceparent").is_none());
        assert!(remote("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
        // Without a subscriber exporting traces there is no context to pass on.
        assert_eq!(traceparent(&Span::none()), None);
    }
}
