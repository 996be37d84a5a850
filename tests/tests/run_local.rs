//! `make run`'s script, `localstack/run-local.sh`, on free loopback ports and
//! its own run directory: a start cleans up the processes of an earlier run
//! that was itself killed, the `export` line it prints sets up `./chat`, and
//! SIGINT stops every process it started, within the script's stated bound,
//! even after one of them was SIGKILLed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use chat_e2e::{DEADLINE, free_port, unique, workspace_bin, workspace_root};

/// The script's bound (TERM, up to 10 s, KILL; for the gateways, runners and
/// simulator, then for the emulator), plus slack for a loaded machine.
const STOP_BOUND: Duration = Duration::from_secs(25);
/// Emulator, provisioning, gateways and functions.
const START_BOUND: Duration = Duration::from_secs(60);
const RUNNING: &str = "The chat platform is running";

/// A process as the script records it in `<run dir>/pids`.
#[derive(Debug, Clone)]
struct Recorded {
    pid: u32,
    start_time: String,
    name: String,
}

impl Recorded {
    /// Still the process the script started: same pid, same start time, not
    /// a zombie.
    fn running(&self) -> bool {
        proc_stat(self.pid).is_some_and(|(state, start_time)| state != 'Z' && start_time == self.start_time)
    }
}

/// State and start time (fields 3 and 22) of `/proc/<pid>/stat`.
fn proc_stat(pid: u32) -> Option<(char, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some((fields.first()?.chars().next()?, (*fields.get(19)?).to_owned()))
}

fn signal(name: &str, pid: u32) -> anyhow::Result<()> {
    let status = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status()?;
    ensure!(status.success(), "kill -{name} {pid} failed");
    Ok(())
}

/// A directory removed on drop.
#[derive(Debug)]
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Debug)]
struct Ports {
    emulator: u16,
    gateway_a: u16,
    gateway_b: u16,
    webhook: u16,
    simulator: u16,
    /// The first of the metrics ports (one per process, consecutive).
    metrics: u16,
}

/// Processes that serve metrics under `make run`: two gateways, seven
/// function runners.
const METRICS_PORTS: u16 = 9;

/// The first of `n` consecutive free loopback ports.
fn free_port_range(n: u16) -> anyhow::Result<u16> {
    for _ in 0..100 {
        let first = free_port()?;
        let Some(last) = first.checked_add(n) else { continue };
        let held: Vec<_> = (first..last).filter_map(|p| std::net::TcpListener::bind(("127.0.0.1", p)).ok()).collect();
        if held.len() == usize::from(n) {
            return Ok(first);
        }
    }
    anyhow::bail!("no {n} consecutive free ports")
}

impl Ports {
    fn free() -> anyhow::Result<Self> {
        Ok(Self {
            emulator: free_port()?,
            gateway_a: free_port()?,
            gateway_b: free_port()?,
            webhook: free_port()?,
            simulator: free_port()?,
            metrics: free_port_range(METRICS_PORTS)?,
        })
    }
}

/// One run of the script. On drop it is killed together with every process
/// it recorded that still runs, and its output is printed (the harness shows
/// it when the test fails).
#[derive(Debug)]
struct Run {
    child: Child,
    lines: mpsc::Receiver<String>,
    output: Vec<String>,
    recorded: Vec<Recorded>,
    run_dir: PathBuf,
}

impl Run {
    fn start(run_dir: &Path, ports: &Ports) -> anyhow::Result<Self> {
        let python = chat_e2e::emulator::python();
        ensure!(python.exists(), "{} not found: set CHAT_PYTHON (make test does)", python.display());
        let gateway = workspace_bin("gateway")?;
        let bin_dir = gateway.parent().context("binary directory")?;
        let mut cmd = Command::new("env");
        // The script traps SIGINT, which bash cannot do when it starts with
        // SIGINT ignored (as a background job of a shell is).
        cmd.args(["--default-signal=INT", "bash"]).arg(workspace_root().join("localstack/run-local.sh"));
        for (name, _) in std::env::vars() {
            if name.starts_with("CHAT_") || name.starts_with("AWS_ENDPOINT_URL") {
                cmd.env_remove(name);
            }
        }
        let mut child = cmd
            .env("CHAT_PYTHON", &python)
            .env("CHAT_BIN_DIR", bin_dir)
            .env("CHAT_RUN_DIR", run_dir)
            .env("EMULATOR_PORT", ports.emulator.to_string())
            .env("GATEWAY_A_PORT", ports.gateway_a.to_string())
            .env("GATEWAY_B_PORT", ports.gateway_b.to_string())
            .env("WEBHOOK_PORT", ports.webhook.to_string())
            .env("SIMULATOR_PORT", ports.simulator.to_string())
            .env("METRICS_PORT", ports.metrics.to_string())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting localstack/run-local.sh")?;
        let (tx, lines) = mpsc::channel();
        let stdout: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().context("stdout")?);
        let stderr: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().context("stderr")?);
        for stream in [stdout, stderr] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Self { child, lines, output: Vec::new(), recorded: Vec::new(), run_dir: run_dir.to_owned() })
    }

    /// Waits (bounded) for an output line containing `text`.
    fn wait_line(&mut self, text: &str, within: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.output.push(line.clone());
                    if line.contains(text) {
                        return Ok(line);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => bail!("no line with {text:?} within {within:?}"),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("the script ended ({:?}) before printing {text:?}", self.child.try_wait())
                }
            }
        }
    }

    /// Reads the pid file: what this run started.
    fn read_pids(&mut self) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(self.run_dir.join("pids")).context("reading the pid file")?;
        self.recorded = text
            .lines()
            .filter_map(|line| {
                let mut words = line.splitn(3, ' ');
                let pid = words.next()?.parse().ok()?;
                Some(Recorded { pid, start_time: words.next()?.to_owned(), name: words.next()?.to_owned() })
            })
            .collect();
        for name in ["run-local.sh", "emulator", "gateway a", "gateway b", "function persist", "channel simulator"] {
            ensure!(self.recorded.iter().any(|r| r.name == name), "no {name} in the pid file: {text}");
        }
        Ok(())
    }

    fn pid(&self, name: &str) -> anyhow::Result<u32> {
        self.recorded.iter().find(|r| r.name == name).map(|r| r.pid).with_context(|| format!("no {name} recorded"))
    }

    fn still_running(&self) -> Vec<String> {
        self.recorded.iter().filter(|r| r.running()).map(|r| format!("{} ({})", r.pid, r.name)).collect()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for r in self.recorded.iter().filter(|r| r.running()) {
            let _ = signal("KILL", r.pid);
        }
        self.output.extend(self.lines.try_iter());
        eprintln!("---- run-local.sh output ----\n{}", self.output.join("\n"));
    }
}

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
