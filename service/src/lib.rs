//! The edge of every process (gateway, Lambda functions and their local
//! runner, channel simulator, bench baseline): logging and graceful
//! shutdown, set up one way; [`telemetry`] (logs and OpenTelemetry traces)
//! and [`metrics`] on a Prometheus endpoint.

pub mod metrics;
pub mod telemetry;

use tokio_util::sync::CancellationToken;

/// Installs logging, and tracing when the OpenTelemetry environment asks
/// for it ([`telemetry`]); keep the returned guard until the process ends.
pub fn init_logging(json: bool, service: &str) -> telemetry::Telemetry {
    telemetry::init(json, service, None)
}

/// A token cancelled on the first SIGINT (Ctrl-C) or SIGTERM (what ECS and
/// `make run` send). Must be called inside a Tokio runtime; the SIGTERM
/// handler is in place when it returns.
pub fn stop_on_signals() -> CancellationToken {
    let stop = CancellationToken::new();
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .inspect_err(|error| tracing::error!(%error, "cannot listen for SIGTERM; stopping on Ctrl-C only"))
        .ok();
    let cancel = stop.clone();
    tokio::spawn(async move {
        let ctrl_c = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        #[cfg(unix)]
        let term = async {
            match term {
                Some(mut term) => {
                    term.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            () = ctrl_c => {}
            () = term => {}
        }
        tracing::info!("signal received; stopping");
        cancel.cancel();
    });
    stop
}

#[cfg(all(test, unix))]
mod tests {
    use std::time::Duration;

    /// SIGTERM to this process cancels the token instead of killing it.
    #[tokio::test]
    async fn sigterm_cancels_the_token() {
        let stop = super::stop_on_signals();
        assert!(!stop.is_cancelled());
        let status = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success());
        tokio::time::timeout(Duration::from_secs(10), stop.cancelled()).await.expect("cancelled within 10 s");
    }
}
