//! `make run`'s script, `localstack/run-local.sh`, started by a test on free
//! loopback ports and its own run directory: what `tests/run_local.rs` checks
//! the script with, and what the browser tests chat through (the very
//! processes `make run` starts).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use crate::{free_port, free_ports, workspace_bin, workspace_root};

/// The script's bound (TERM, up to 10 s, KILL; for the gateways, runners and
/// simulator, then for the emulator), plus slack for a loaded machine.
pub const STOP_BOUND: Duration = Duration::from_secs(25);
/// Emulator, provisioning, gateways and functions.
pub const START_BOUND: Duration = Duration::from_secs(60);
pub const RUNNING: &str = "The chat platform is running";

/// A process as the script records it in `<run dir>/pids`.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub pid: u32,
    pub start_time: String,
    pub name: String,
}

impl Recorded {
    /// Still the process the script started: same pid, same start time, not
    /// a zombie.
    pub fn running(&self) -> bool {
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

pub fn signal(name: &str, pid: u32) -> anyhow::Result<()> {
    let status = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status()?;
    ensure!(status.success(), "kill -{name} {pid} failed");
    Ok(())
}

/// A directory removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Debug)]
pub struct Ports {
    pub emulator: u16,
    pub gateway_a: u16,
    pub gateway_b: u16,
    pub webhook: u16,
    pub simulator: u16,
    /// The first of the metrics ports (one per process, consecutive).
    pub metrics: u16,
    /// The web app's.
    pub web: u16,
}

/// Processes that serve metrics under `make run`: two gateways, seven
/// function runners.
pub const METRICS_PORTS: u16 = 9;

impl Ports {
    pub fn free() -> anyhow::Result<Self> {
        Ok(Self {
            emulator: free_port()?,
            gateway_a: free_port()?,
            gateway_b: free_port()?,
            webhook: free_port()?,
            simulator: free_port()?,
            metrics: free_ports(METRICS_PORTS)?,
            web: free_port()?,
        })
    }
}

/// One run of the script. On drop it is killed together with every process
/// it recorded that still runs, and its output is printed (the harness shows
/// it when the test fails).
#[derive(Debug)]
pub struct Run {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    output: Vec<String>,
    pub recorded: Vec<Recorded>,
    run_dir: PathBuf,
}

impl Run {
    /// Starts the script on `ports`, recording into `run_dir`, with the
    /// caller's environment but for its `CHAT_*` and `AWS_ENDPOINT_URL*`.
    pub fn start(run_dir: &Path, ports: &Ports) -> anyhow::Result<Self> {
        let python = crate::emulator::python();
        ensure!(python.exists(), "{} not found: set CHAT_PYTHON (make test does)", python.display());
        let gateway = workspace_bin("gateway")?;
        let bin_dir = gateway.parent().context("binary directory")?;
        let mut cmd = Command::new("env");
        // The script traps SIGINT, which bash cannot do when it starts with
        // SIGINT ignored (as a background job of a shell is).
        cmd.args(["--default-signal=INT", "bash"]).arg(workspace_root().join("localstack/run-local.sh"));
        // The web app `make test` built, where it says.
        if let Some(dir) = std::env::var_os("CHAT_WEB_DIR") {
            cmd.env("WEB_DIR", dir);
        }
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
            .env("WEB_PORT", ports.web.to_string())
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
    pub fn wait_line(&mut self, text: &str, within: Duration) -> anyhow::Result<String> {
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
    pub fn read_pids(&mut self) -> anyhow::Result<()> {
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

    pub fn pid(&self, name: &str) -> anyhow::Result<u32> {
        self.recorded.iter().find(|r| r.name == name).map(|r| r.pid).with_context(|| format!("no {name} recorded"))
    }

    pub fn still_running(&self) -> Vec<String> {
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
