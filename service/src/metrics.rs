//! Metrics through the `metrics` facade, exported the Prometheus way: a
//! process installs the recorder once ([`install_prometheus`]) and serves
//! `GET /metrics` on an admin listener of its own ([`serve`]), never on a
//! port clients reach. Code that counts only calls the facade's macros; in a
//! process with no recorder (unit tests, a library user) they cost nothing.
//!
//! Durations are histograms in seconds (`*_seconds`) and sizes in counts, on
//! fixed buckets so PromQL's `histogram_quantile` works across instances.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Latency buckets, 0.5 ms to 30 s: local paths (sub-millisecond) and the
/// bus (tens of ms on AWS, seconds under redrive) both resolve.
pub const SECONDS_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Batch-size buckets: SNS and SQS batches hold at most 10, a Lambda batch
/// up to 10,000.
pub const SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 1000.0, 10000.0];
/// How often histogram samples are folded into their buckets when nobody
/// scrapes (bounds the memory they hold).
const UPKEEP: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("installing the metrics recorder: {0}")]
    Install(String),
    #[error("metrics listener on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// Installs the process-wide Prometheus recorder. `labels` are added to
/// every series (`gateway_id`, `function`), so series from several
/// processes on one Prometheus stay apart.
pub fn install_prometheus(labels: &[(&str, &str)]) -> Result<PrometheusHandle, MetricsError> {
    let install = |e: metrics_exporter_prometheus::BuildError| MetricsError::Install(e.to_string());
    let mut builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .map_err(install)?
        .set_buckets_for_metric(Matcher::Suffix("_size".into()), SIZE_BUCKETS)
        .map_err(install)?;
    for (key, value) in labels {
        builder = builder.add_global_label(*key, *value);
    }
    builder.install_recorder().map_err(install)
}

/// Binds the admin listener; bind errors surface at start, not later.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr).await.map_err(|source| MetricsError::Bind { addr, source })
}

/// Serves `GET /metrics` on `listener` until `stop`. `refresh` runs before
/// each render: it publishes values the process keeps elsewhere (gauges
/// read from its state, counters kept as plain atomics on hot paths).
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    refresh: Arc<dyn Fn() + Send + Sync>,
    stop: CancellationToken,
) {
    let addr = listener.local_addr().ok();
    tracing::info!(addr = ?addr, path = "/metrics", "metrics serving");
    let upkeep = handle.clone();
    let upkeep_stop = stop.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP);
        loop {
            tokio::select! {
                () = upkeep_stop.cancelled() => return,
                _ = tick.tick() => upkeep.run_upkeep(),
            }
        }
    });
    let render = move || {
        let handle = handle.clone();
        let refresh = refresh.clone();
        async move {
            refresh();
            ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render())
        }
    };
    let app = axum::Router::new().route("/metrics", axum::routing::get(render));
    if let Err(error) = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await {
        tracing::error!(%error, "metrics listener failed");
    }
}

/// Binds the admin listener a process was asked for (`None`: metrics off).
/// Call first thing, as a process binds its main port: a port chosen free
/// by whoever started the process is taken by it before anything else can.
pub async fn bind_configured(addr: Option<SocketAddr>) -> Result<Option<TcpListener>, MetricsError> {
    match addr {
        Some(addr) => bind(addr).await.map(Some),
        None => Ok(None),
    }
}

/// Installs the recorder and serves `listener` in the background until
/// `stop`; nothing when metrics are off (`None`: the facade's calls are then
/// no-ops).
pub fn start(
    listener: Option<TcpListener>,
    labels: &[(&str, &str)],
    refresh: Arc<dyn Fn() + Send + Sync>,
    stop: CancellationToken,
) -> Result<(), MetricsError> {
    let Some(listener) = listener else { return Ok(()) };
    let handle = install_prometheus(labels)?;
    tokio::spawn(serve(listener, handle, refresh, stop));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scrape renders what the facade recorded, with buckets on
    /// `_seconds` histograms and the global labels on every series.
    #[tokio::test]
    async fn scrape_renders_counters_and_histograms() {
        let stop = CancellationToken::new();
        let refreshed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = refreshed.clone();
        let refresh: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            metrics::gauge!("test_refreshed").set(1.0);
        });
        let listener =
            bind_configured(Some(SocketAddr::from(([127, 0, 0, 1], 0)))).await.expect("bound").expect("a listener");
        let addr = listener.local_addr().expect("an address");
        start(Some(listener), &[("instance_role", "test")], refresh, stop.clone()).expect("started");
        metrics::counter!("test_requests_total", "outcome" => "ok").increment(3);
        metrics::histogram!("test_wait_seconds").record(0.003);
        let body = http_get(addr).await;
        assert!(body.contains("test_requests_total{instance_role=\"test\",outcome=\"ok\"} 3"), "{body}");
        assert!(body.contains("test_wait_seconds_bucket{instance_role=\"test\",le=\"0.005\"} 1"), "{body}");
        assert!(body.contains("test_refreshed{instance_role=\"test\"} 1"), "{body}");
        assert_eq!(refreshed.load(std::sync::atomic::Ordering::Relaxed), 1);
        stop.cancel();
    }

    /// A plain HTTP/1.1 GET, so the test needs no HTTP client crate.
    async fn http_get(addr: SocketAddr) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut body = String::new();
        stream.read_to_string(&mut body).await.expect("read");
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        body
    }
}
