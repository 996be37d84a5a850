//! Reading what processes export on `/metrics`: one scrape parsed
//! ([`Scrape`], for the bench and quick checks), and a real Prometheus
//! server scraping them ([`Prometheus`], queried with PromQL over its HTTP
//! API).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use crate::{DEADLINE, free_port, unique};

/// One sample: its series' labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A scrape of the Prometheus text format.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub samples: Vec<Sample>,
}

impl Scrape {
    pub async fn fetch(addr: &str) -> anyhow::Result<Self> {
        let text = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .with_context(|| format!("scraping {addr}"))?
            .error_for_status()?
            .text()
            .await?;
        Self::parse(&text)
    }

    /// The text format's sample lines (`name{k="v",...} value`); comments
    /// and blank lines are skipped.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut samples = Vec::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').with_context(|| format!("no value in {line:?}"))?;
            let value: f64 = value.parse().with_context(|| format!("bad value in {line:?}"))?;
            let (name, labels) = match series.split_once('{') {
                None => (series, BTreeMap::new()),
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').with_context(|| format!("unclosed labels in {line:?}"))?;
                    (name, parse_labels(body).with_context(|| format!("labels of {line:?}"))?)
                }
            };
            samples.push(Sample { name: name.to_owned(), labels, value });
        }
        Ok(Self { samples })
    }

    /// What each series gained since `before` (counters read twice from
    /// one process); a series absent before counts from zero.
    pub fn since(&self, before: &Scrape) -> Scrape {
        let samples = self
            .samples
            .iter()
            .map(|sample| {
                let earlier = before
                    .samples
                    .iter()
                    .find(|b| b.name == sample.name && b.labels == sample.labels)
                    .map_or(0.0, |b| b.value);
                Sample { value: sample.value - earlier, ..sample.clone() }
            })
            .collect();
        Scrape { samples }
    }

    /// Every distinct value of `label` on `name`'s series.
    pub fn label_values(&self, name: &str, label: &str) -> Vec<String> {
        let mut values: Vec<String> =
            self.samples.iter().filter(|s| s.name == name).filter_map(|s| s.labels.get(label).cloned()).collect();
        values.sort();
        values.dedup();
        values
    }

    /// The sum of `name`'s series whose labels include every `filter` pair.
    pub fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name && filter.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
            .map(|s| s.value)
            .sum()
    }
}

fn parse_labels(body: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"").context("label without =\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => bail!("dangling escape"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => bail!("unterminated label value"),
            }
        };
        labels.insert(key.trim_start_matches(',').to_owned(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    Ok(labels)
}

/// A Prometheus server on a free loopback port, scraping `targets` every
/// 500 ms into a throwaway data directory; killed (and the directory
/// removed) on drop. The binary is `CHAT_PROMETHEUS` (`make test` unpacks
/// Debian's package into the cache), else `prometheus` on `PATH`.
#[derive(Debug)]
pub struct Prometheus {
    child: Child,
    dir: PathBuf,
    pub url: String,
    http: reqwest::Client,
}

impl Prometheus {
    pub fn binary() -> PathBuf {
        std::env::var_os("CHAT_PROMETHEUS").map_or_else(|| PathBuf::from("prometheus"), PathBuf::from)
    }

    /// Starts scraping `targets` (`(job, host:port)`) and waits until the
    /// server is ready.
    pub async fn start(targets: &[(&str, &str)]) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(unique("prometheus-"));
        std::fs::create_dir_all(&dir)?;
        let mut jobs: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (job, addr) in targets {
            jobs.entry(job).or_default().push(addr);
        }
        let mut config = String::from("global:\n  scrape_interval: 500ms\n  scrape_timeout: 400ms\nscrape_configs:\n");
        for (job, addrs) in jobs {
            let list = addrs.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(", ");
            config.push_str(&format!("  - job_name: '{job}'\n    static_configs:\n      - targets: [{list}]\n"));
        }
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config)?;
        let port = free_port()?;
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let binary = Self::binary();
        let child = Command::new(&binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!("starting {} (make test installs it; set CHAT_PROMETHEUS to another)", binary.display())
            })?;
        let server = Self { child, dir, url: format!("http://127.0.0.1:{port}"), http: reqwest::Client::new() };
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Ok(r) = server.http.get(format!("{}/-/ready", server.url)).send().await
                && r.status().is_success()
            {
                return Ok(server);
            }
            ensure!(Instant::now() < deadline, "prometheus did not become ready:\n{}", server.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// An instant PromQL query: each series' labels and value.
    pub async fn query(&self, promql: &str) -> anyhow::Result<Vec<(BTreeMap<String, String>, f64)>> {
        let url = reqwest::Url::parse_with_params(&format!("{}/api/v1/query", self.url), &[("query", promql)])?;
        let answer: serde_json::Value = self
            .http
            .get(url)
            .send()
            .await?
            .error_for_status()
            .with_context(|| format!("query {promql}"))?
            .json()
            .await?;
        ensure!(answer["status"] == "success", "query {promql}: {answer}");
        let result =
            answer["data"]["result"].as_array().with_context(|| format!("{promql}: not a vector: {answer}"))?;
        result
            .iter()
            .map(|series| {
                let labels = series["metric"]
                    .as_object()
                    .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect())
                    .unwrap_or_default();
                let value = series["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .with_context(|| format!("{promql}: no value in {series}"))?;
                Ok((labels, value))
            })
            .collect()
    }

    /// The single value of a query that aggregates to one series (`None`
    /// while it has no series yet).
    pub async fn scalar(&self, promql: &str) -> anyhow::Result<Option<f64>> {
        let result = self.query(promql).await?;
        ensure!(result.len() <= 1, "{promql} returned {} series: {result:?}", result.len());
        Ok(result.first().map(|(_, v)| *v))
    }

    /// Waits until `promql`'s single value satisfies `ok`; returns it.
    pub async fn wait_scalar(&self, promql: &str, ok: impl Fn(f64) -> bool) -> anyhow::Result<f64> {
        let deadline = Instant::now() + DEADLINE;
        let mut last = None;
        while Instant::now() < deadline {
            last = self.scalar(promql).await?;
            if let Some(v) = last.filter(|v| ok(*v)) {
                return Ok(v);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        bail!("{promql} never reached the expected value; last {last:?}")
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_is_parsed() {
        let text = "# HELP x y\n# TYPE chat_deliveries_total counter\nchat_deliveries_total{gateway_id=\"a\"} 12\n\
                    chat_aws_requests_total{gateway_id=\"a\",operation=\"Receive\\\"Message\",service=\"SQS\"} 3\n\
                    up 1\n";
        let scrape = Scrape::parse(text).expect("parsed");
        assert_eq!(scrape.samples.len(), 3);
        assert_eq!(scrape.sum("chat_deliveries_total", &[("gateway_id", "a")]), 12.0);
        assert_eq!(scrape.sum("chat_aws_requests_total", &[("operation", "Receive\"Message")]), 3.0);
        assert_eq!(scrape.sum("chat_aws_requests_total", &[("service", "SNS")]), 0.0);
        assert_eq!(scrape.sum("up", &[]), 1.0);
        assert!(Scrape::parse("broken{a=\"1\" 2").is_err());
    }
}
