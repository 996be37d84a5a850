//! `make run`'s script, `localstack/run-local.sh`, on free loopback ports and
//! its own run directory: a start cleans up the processes of an earlier run
//! that was itself killed, the `export` line it prints sets up `./chat`, and
//! SIGINT stops every process it started, within the script's stated bound,
//! even after one of them was SIGKILLed.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use chat_e2e::run_local::{Ports, RUNNING, Run, START_BOUND, STOP_BOUND, TempDir, signal};
use chat_e2e::{DEADLINE, unique, workspace_bin, workspace_root};

/// The `export NAME=value ...` line the script prints, run as `./chat`
/// would be by a user who pasted it: both gateways answer, and a command
/// that needs a user and a token works with no flags.
fn check_printed_exports(export_line: &str, bin_dir: &Path) -> anyhow::Result<()> {
    let vars: Vec<(&str, &str)> = export_line
        .trim()
        .strip_prefix("export ")
        .context("an export line")?
        .split(' ')
        .filter_map(|v| v.split_once('='))
        .collect();
    let names: Vec<&str> = vars.iter().map(|(name, _)| *name).collect();
    ensure!(names == ["CHAT_GATEWAYS", "CHAT_JWT_SECRET_FILE", "CHAT_USER"], "{export_line}");
    for args in [&["echo"][..], &["conversations"]] {
        let mut cmd = Command::new(workspace_root().join("chat"));
        for (name, _) in std::env::vars() {
            if name.starts_with("CHAT_") {
                cmd.env_remove(name);
            }
        }
        let out = cmd.args(args).envs(vars.iter().copied()).env("CHAT_BIN_DIR", bin_dir).output()?;
        ensure!(out.status.success(), "./chat {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        if args == ["echo"] {
            let text = String::from_utf8_lossy(&out.stdout);
            ensure!(text.contains("from local-a") && text.contains("from local-b"), "./chat echo: {text}");
        }
    }
    Ok(())
}

/// A plain HTTP/1.1 GET on loopback (this test has no runtime).
fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(DEADLINE))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    ensure!(answer.starts_with("HTTP/1.1 200"), "GET {path}: {answer}");
    Ok(answer)
}

#[test]
fn a_start_cleans_up_a_killed_run_and_ctrl_c_stops_everything() -> anyhow::Result<()> {
    let run_dir = TempDir(std::env::temp_dir().join(unique("chat-run-local-")));
    std::fs::create_dir_all(&run_dir.0)?;
    let ports = Ports::free()?;

    // A run killed outright (the script SIGKILLed) leaves its processes.
    let mut killed = Run::start(&run_dir.0, &ports)?;
    killed.wait_line(RUNNING, START_BOUND)?;
    killed.read_pids()?;
    killed.child.kill()?;
    killed.child.wait()?;
    let left: Vec<String> = killed.still_running();
    ensure!(left.len() + 1 == killed.recorded.len(), "only the script should have gone: {left:?}");

    // The next start, on the same ports, stops them first.
    let mut run = Run::start(&run_dir.0, &ports)?;
    run.wait_line("an earlier run left running", START_BOUND)?;
    let export_line = run.wait_line("export CHAT_GATEWAYS=", START_BOUND)?;
    // Every process's metrics endpoint is printed, and answers.
    let gateway_metrics = format!("http://127.0.0.1:{}/metrics", ports.metrics);
    let line = run.wait_line(&gateway_metrics, DEADLINE)?;
    ensure!(line.contains("gateway a"), "{line}");
    let persist_metrics = format!("http://127.0.0.1:{}/metrics", ports.metrics + 2);
    ensure!(run.wait_line(&persist_metrics, DEADLINE)?.contains("function persist"));
    run.wait_line("Press Ctrl-C", DEADLINE)?;
    let scrape = http_get(ports.metrics, "/metrics")?;
    ensure!(scrape.contains("chat_streams{gateway_id=\"local-a\"}"), "gateway a's metrics:\n{scrape}");
    ensure!(killed.still_running().is_empty(), "left from the killed run: {:?}", killed.still_running());
    run.read_pids()?;
    check_printed_exports(&export_line, workspace_bin("gateway")?.parent().context("binary directory")?)?;

    // A gateway crashes; the script notices and keeps the rest running.
    let gateway_a = run.pid("gateway a")?;
    signal("KILL", gateway_a)?;
    run.wait_line(&format!("process {gateway_a} (gateway a) exited"), DEADLINE)?;

    // Ctrl-C: the script and everything it started end within the bound.
    signal("INT", run.child.id())?;
    let deadline = Instant::now() + STOP_BOUND;
    loop {
        let script = run.child.try_wait()?;
        let left = run.still_running();
        if script.is_some() && left.is_empty() {
            break;
        }
        ensure!(Instant::now() < deadline, "{STOP_BOUND:?} after SIGINT: script {script:?}, still running {left:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    ensure!(
        std::net::TcpStream::connect(("127.0.0.1", ports.emulator)).is_err(),
        "the emulator's port {} is still taken",
        ports.emulator
    );
    ensure!(!run_dir.0.join("pids").exists(), "a clean stop removes its pid file");
    Ok(())
}
