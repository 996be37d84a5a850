//! CPU time and resident memory of a process, from `/proc` (Linux). The
//! bench samples every gateway before and after each step.

use std::path::PathBuf;
use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Sample {
    /// User plus system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Resident set size, KB.
    pub rss_kb: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not in the expected format: {what}")]
    Format { path: PathBuf, what: &'static str },
}

/// Clock ticks per second for `/proc/<pid>/stat` times (`getconf CLK_TCK`;
/// 100 on every Linux this runs on, used when getconf is missing).
fn ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

pub fn sample(pid: u32) -> Result<Sample, ProcError> {
    let stat_path = PathBuf::from(format!("/proc/{pid}/stat"));
    let stat =
        std::fs::read_to_string(&stat_path).map_err(|source| ProcError::Read { path: stat_path.clone(), source })?;
    let status_path = PathBuf::from(format!("/proc/{pid}/status"));
    let status = std::fs::read_to_string(&status_path)
        .map_err(|source| ProcError::Read { path: status_path.clone(), source })?;
    let ticks = parse_stat_ticks(&stat).ok_or(ProcError::Format { path: stat_path, what: "utime and stime" })?;
    let rss_kb = parse_status_rss_kb(&status).ok_or(ProcError::Format { path: status_path, what: "VmRSS" })?;
    Ok(Sample { cpu_seconds: ticks as f64 / ticks_per_second(), rss_kb })
}

/// utime + stime, in ticks. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted from its closing parenthesis.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    // Fields after the name start at field 3 (state); utime is 14, stime 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn parse_status_rss_kb(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_even_with_an_awkward_command_name() {
        let stat = "4242 (gate way) (x)) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 50 0 0 20 0 9 0 100 0 0";
        assert_eq!(parse_stat_ticks(stat), Some(300));
        assert_eq!(parse_stat_ticks("garbage"), None);
        assert_eq!(parse_stat_ticks("1 (x) S 1 2"), None);
    }

    #[test]
    fn parses_rss_from_status() {
        let status = "Name:\tgateway\nVmPeak:\t  9000 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_status_rss_kb(status), Some(12345));
        assert_eq!(parse_status_rss_kb("Name:\tx\n"), None);
    }

    /// This very process: some CPU used, some memory resident.
    #[test]
    fn samples_a_live_process() {
        let own = sample(std::process::id()).expect("own /proc entry");
        assert!(own.rss_kb > 0);
        assert!(own.cpu_seconds >= 0.0);
        assert!(matches!(sample(u32::MAX), Err(ProcError::Read { .. })));
    }
}
