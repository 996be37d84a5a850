//! A generic gRPC client that has nothing but `proto/chat.proto` can chat:
//! `tests/python/generic_client.py` (Python, grpcio, stubs generated from the
//! proto at run time) creates a conversation, connects, joins, sends and
//! receives across two gateways on the AWS path.

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use chat_e2e::cluster::Cluster;
use chat_e2e::workspace_root;

/// The interpreter of the venv built from `tests/python/requirements-grpc.txt`.
const PYTHON_VAR: &str = "CHAT_GRPC_PYTHON";
/// The script's own deadline is 30 s; this bounds the process as a whole.
const TIMEOUT: Duration = Duration::from_secs(90);

/// `host:port` for `grpc.insecure_channel`.
fn host_port(url: &str) -> &str {
    url.strip_prefix("http://").unwrap_or(url)
}

#[tokio::test]
async fn python_client_from_the_proto_alone_chats_across_two_gateways() -> anyhow::Result<()> {
    let python = std::env::var_os(PYTHON_VAR).with_context(|| {
        format!(
            "{PYTHON_VAR} is not set: run the tests through `make test`, which builds the venv from \
             tests/python/requirements-grpc.txt and sets it (or point it at such a venv's python)"
        )
    })?;
    let root = workspace_root();
    let cluster = Cluster::aws(2).await?;
    let conversation = chat_e2e::unique("py-");

    let mut command = tokio::process::Command::new(&python);
    command
        .arg(root.join("tests/python/generic_client.py"))
        .arg("--proto")
        .arg(root.join("proto/chat.proto"))
        .args(["--gateway-a", host_port(cluster.url(0))])
        .args(["--gateway-b", host_port(cluster.url(1))])
        .args(["--token-alice", &cluster.token("alice")?])
        .args(["--token-bob", &cluster.token("bob")?])
        .args(["--conversation", &conversation])
        .args(["--count", "20"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().with_context(|| format!("starting {} ({PYTHON_VAR})", python.to_string_lossy()))?;
    // On timeout the future (and with it the child) is dropped: kill_on_drop
    // kills the script.
    let output = tokio::time::timeout(TIMEOUT, child.wait_with_output())
        .await
        .with_context(|| format!("generic_client.py did not finish within {TIMEOUT:?}; it was killed"))?
        .context("waiting for generic_client.py")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    anyhow::ensure!(
        output.status.success(),
        "generic_client.py exited with {}\n---- stdout ----\n{stdout}\n---- stderr ----\n{stderr}\n\
         ---- gateway A log tail ----\n{}\n---- gateway B log tail ----\n{}",
        output.status,
        cluster.log_tail(0),
        cluster.log_tail(1)
    );
    println!("{}", stdout.trim_end());
    Ok(())
}
