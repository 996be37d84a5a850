//! The end-to-end harness: real gateway processes on a real AWS emulator,
//! driven over gRPC like any client would.
//!
//! - [`emulator::Emulator`] is the emulator endpoint: `AWS_ENDPOINT_URL` when
//!   set (LocalStack, or any running emulator), otherwise a moto server
//!   started from the project's pinned Python environment on a free loopback
//!   port. Each test provisions its own stack (unique names) from
//!   `template.yaml`.
//! - [`cluster::Cluster`] owns the emulator and gateway processes and kills
//!   them on drop.
//! - [`client::TestClient`] is a `Connect` stream with helpers that wait on
//!   conditions with deadlines, never on fixed sleeps.
//! - [`scenarios`] are the chat tests, written once and run on both the AWS
//!   path and the embedded memory mode.

pub mod channels;
pub mod checker;
pub mod client;
pub mod cluster;
pub mod conformance;
pub mod emulator;
pub mod faults;
pub mod localstack;
pub mod metrics;
pub mod raw_bus;
pub mod run_local;
pub mod scenarios;
pub mod stored;
pub mod traces;
pub mod webdriver;

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

/// The default deadline for anything a test waits on.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The workspace root (where `template.yaml` lives).
pub fn workspace_root() -> PathBuf {
    // Run time first: `cargo test` names this checkout, while a build shared
    // between checkouts (one `CARGO_TARGET_DIR`) may have compiled in
    // another's path without rebuilding.
    let manifest =
        std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest.parent().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."))
}

/// A command running `program`, started on the CPUs `cpus` names (a
/// `taskset` list, util-linux) when given.
pub fn on_cpus(program: PathBuf, cpus: Option<&str>) -> std::process::Command {
    match cpus {
        Some(cpus) => {
            let mut cmd = std::process::Command::new("taskset");
            cmd.args(["-c", cpus]).arg(program);
            cmd
        }
        None => std::process::Command::new(program),
    }
}

/// Moves every thread of this process to the CPUs `cpus` names (a
/// `taskset` list); threads started later follow.
pub fn move_self_to_cpus(cpus: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    let status = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &std::process::id().to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .context("running taskset (util-linux)")?;
    anyhow::ensure!(status.success(), "taskset could not move this process to CPUs {cpus}: {status}");
    Ok(())
}

/// A free loopback port for a process a test starts (bound, read, released).
pub fn free_port() -> anyhow::Result<u16> {
    free_ports(1)
}

/// The first of `n` consecutive free loopback ports.
///
/// Picked below the kernel's ephemeral range: a port the kernel hands out
/// (`bind :0`) is also what it hands every outgoing connection, so one of the
/// many SDK connections to the emulator could take it between this pick and
/// the child's bind. Ports below the range are only ever taken by a bind, and
/// the ones this process hands out are never handed out twice.
pub fn free_ports(n: u16) -> anyhow::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FLOOR: u32 = 10_000;
    static CURSOR: AtomicU32 = AtomicU32::new(u32::MAX);
    let n = u32::from(n.max(1));
    let span = ephemeral_floor().max(FLOOR + 1_000) - FLOOR;
    // Each test binary starts at its own place so binaries run side by side
    // rarely probe the same ports.
    let start = std::process::id().wrapping_mul(7_919) % span;
    let _ = CURSOR.compare_exchange(u32::MAX, start, Ordering::SeqCst, Ordering::SeqCst);
    for _ in 0..span / n {
        let offset = CURSOR.fetch_add(n, Ordering::SeqCst) % span;
        if offset + n > span {
            continue;
        }
        let first = FLOOR + offset;
        let all_free = (first..first + n).all(|port| TcpListener::bind(("127.0.0.1", port as u16)).is_ok());
        if all_free {
            return Ok(first as u16);
        }
    }
    anyhow::bail!("no {n} consecutive free loopback ports below the ephemeral range")
}

/// The lowest port of the kernel's ephemeral range (Linux's default when
/// unreadable).
fn ephemeral_floor() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next().and_then(|low| low.parse().ok()))
        .unwrap_or(32_768)
}

/// Waits (bounded) until something listens on a loopback port.
pub async fn wait_listening(port: u16) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "nothing listens on port {port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// A binary of this workspace in `target/<profile>/`,
/// or where `CHAT_<NAME>_BIN` says.
pub fn workspace_bin(name: &str) -> anyhow::Result<PathBuf> {
    let var = format!("CHAT_{}_BIN", name.to_uppercase());
    if let Ok(path) = std::env::var(&var) {
        return Ok(PathBuf::from(path));
    }
    // Test executables live in `target/<profile>/deps/`, binaries one up.
    let exe = std::env::current_exe()?;
    let dirs = exe.ancestors().skip(1).take(2);
    let candidates: Vec<PathBuf> = dirs.map(|d| d.join(name)).collect();
    let path = candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| candidates.last().cloned().unwrap_or_else(|| PathBuf::from(name)));
    anyhow::ensure!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --bins`, as `make test` does) or set {var}",
        path.display()
    );
    Ok(path)
}

/// A short unique lowercase id for resource names.
pub fn unique(prefix: &str) -> String {
    let id = ulid::Ulid::new().to_string().to_lowercase();
    format!("{prefix}{}", &id[16..])
}

/// The chat tables named by a stack's outputs (`CHAT_*_TABLE`).
pub fn tables(output: impl Fn(&str) -> anyhow::Result<String>) -> anyhow::Result<chat_aws::dynamo::Tables> {
    Ok(chat_aws::dynamo::Tables {
        messages: output("CHAT_MESSAGES_TABLE")?,
        conversations: output("CHAT_CONVERSATIONS_TABLE")?,
        members: output("CHAT_MEMBERS_TABLE")?,
        presence: output("CHAT_PRESENCE_TABLE")?,
        send_dedup: output("CHAT_SEND_DEDUP_TABLE")?,
        receipts: output("CHAT_RECEIPTS_TABLE")?,
        users: output("CHAT_USERS_TABLE")?,
    })
}
