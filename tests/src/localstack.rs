//! LocalStack in Docker, for machines with a Docker engine: the harness
//! starts the pinned image through testcontainers when
//! `CHAT_EMULATOR=localstack-docker` (`make test-localstack` sets it when
//! `docker info` answers). Machines without Docker run LocalStack in host
//! mode instead (`localstack/test-localstack.sh`).
//!
//! The container lives on a thread with its own runtime, so an [`Emulator`]
//! can be made and dropped from sync and async code alike, and dropping it
//! always removes the container.
//!
//! [`Emulator`]: crate::emulator::Emulator

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerRequest, GenericImage, ImageExt};

/// The last release that runs without an auth token (as in `compose.yaml`).
pub const IMAGE: &str = "localstack/localstack";
pub const TAG: &str = "4.14.0";
const EDGE_PORT: u16 = 4566;
/// First start pulls the image; LocalStack itself is ready in seconds.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(300);

/// What the suite needs: the platform's services, and STS because
/// `provision.py` asks it for the account id.
pub fn request() -> ContainerRequest<GenericImage> {
    GenericImage::new(IMAGE, TAG)
        .with_exposed_port(EDGE_PORT.tcp())
        .with_wait_for(WaitFor::message_on_stdout("Ready."))
        .with_env_var("SERVICES", "sns,sqs,dynamodb,sts")
        // No outbound traffic: no usage events, no certificate download.
        .with_env_var("DISABLE_EVENTS", "1")
        .with_env_var("SKIP_SSL_CERT_DOWNLOAD", "1")
        .with_label("chat-platform", "e2e")
        .with_startup_timeout(STARTUP_TIMEOUT)
}

/// A running LocalStack container; removed on drop.
#[derive(Debug)]
pub struct Container {
    pub endpoint: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    owner: Option<JoinHandle<()>>,
}

impl Container {
    pub fn start() -> anyhow::Result<Self> {
        let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<String>>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let owner = std::thread::Builder::new()
            .name("localstack-container".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow::Error::new(e).context("building the container's runtime")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let container = match request().start().await {
                        Ok(container) => container,
                        Err(e) => {
                            let _ = ready_tx.send(Err(anyhow::Error::new(e)
                                .context(format!("starting {IMAGE}:{TAG} (is a Docker engine running?)"))));
                            return;
                        }
                    };
                    let endpoint = async {
                        let host = container.get_host().await?;
                        let port = container.get_host_port_ipv4(EDGE_PORT).await?;
                        anyhow::Ok(format!("http://{host}:{port}"))
                    }
                    .await;
                    let started = endpoint.is_ok();
                    let _ = ready_tx.send(endpoint);
                    if started {
                        // Until the Container is dropped (or the test process's
                        // side of the channel goes away).
                        let _ = stop_rx.await;
                    }
                    if let Err(e) = container.rm().await {
                        eprintln!("warning: removing the LocalStack container: {e}");
                    }
                });
            })
            .context("spawning the container thread")?;
        let mut container = Self { endpoint: String::new(), stop: Some(stop_tx), owner: Some(owner) };
        container.endpoint = ready_rx
            .recv_timeout(STARTUP_TIMEOUT + Duration::from_secs(30))
            .context("LocalStack container did not start in time")??;
        Ok(container)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(owner) = self.owner.take() {
            let _ = owner.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request the harness sends Docker: the pinned image, the edge
    /// port, the services the suite uses, and readiness on LocalStack's
    /// "Ready." line.
    #[test]
    fn the_request_pins_the_image_and_the_services() {
        let request = request();
        assert_eq!(request.descriptor(), "localstack/localstack:4.14.0");
        assert_eq!(request.expose_ports(), &[4566.tcp()]);
        let env: std::collections::HashMap<_, _> =
            request.env_vars().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        assert_eq!(env.get("SERVICES").map(String::as_str), Some("sns,sqs,dynamodb,sts"));
        assert_eq!(env.get("DISABLE_EVENTS").map(String::as_str), Some("1"));
        assert_eq!(request.startup_timeout(), Some(STARTUP_TIMEOUT));
        assert!(
            request.ready_conditions().iter().any(|w| format!("{w:?}").contains("Ready.")),
            "{:?}",
            request.ready_conditions()
        );
    }

    /// Without a Docker engine (this machine), starting fails with an error
    /// that says so, promptly, instead of hanging or panicking.
    #[test]
    fn without_docker_the_error_says_what_is_missing() {
        if std::process::Command::new("docker").arg("info").output().is_ok_and(|o| o.status.success()) {
            return; // an engine is here: `make test-localstack` exercises the real start
        }
        let error = Container::start().expect_err("no engine, no container");
        assert!(format!("{error:#}").contains("Docker engine"), "{error:#}");
    }
}
