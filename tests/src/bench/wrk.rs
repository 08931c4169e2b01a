//! `wrk` as the HTTP load generator: one run in a namespace, and its report parsed.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::netns::{Netns, run_checked};

/// Fixed load shape, the same for every configuration.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// `-t`: threads.
    pub threads: u32,
    /// `-c`: connections kept open (each reconnects after every response in close mode).
    pub connections: u32,
    /// `-d`: how long each run lasts.
    pub duration: Duration,
}

/// What one `wrk --latency` run reported.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WrkReport {
    /// Completed requests.
    pub requests: u64,
    /// Seconds wrk measured over.
    pub seconds: f64,
    /// `Requests/sec`.
    pub rps: f64,
    /// Latency percentiles, microseconds.
    pub p50_us: f64,
    /// 99th percentile latency, microseconds.
    pub p99_us: f64,
    /// Socket errors (connect + read + write + timeout).
    pub socket_errors: u64,
    /// Responses that were not 2xx/3xx.
    pub bad_status: u64,
}

/// Runs `wrk --latency` against `url` from `ns`. `close` adds `Connection: close`, so every
/// request is a new TCP connection.
pub fn run(ns: &Netns, url: &str, close: bool, load: &Load) -> Result<WrkReport> {
    run_with_headers(ns, url, close, &[], load)
}

/// [`run`] with extra request header lines (`Name: value`), e.g. credentials.
pub fn run_with_headers(
    ns: &Netns,
    url: &str,
    close: bool,
    headers: &[String],
    load: &Load,
) -> Result<WrkReport> {
    run_command(ns.command("wrk"), url, close, headers, load)
}

/// [`run_with_headers`] with `cmd` as the `wrk` to run (e.g. started inside a cgroup).
pub fn run_command(
    mut cmd: Command,
    url: &str,
    close: bool,
    headers: &[String],
    load: &Load,
) -> Result<WrkReport> {
    cmd.arg(format!("-t{}", load.threads))
        .arg(format!("-c{}", load.connections))
        .arg(format!("-d{}s", load.duration.as_secs().max(1)))
        .args(["--timeout", "2s", "--latency"]);
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    for h in headers {
        cmd.arg("-H").arg(h);
    }
    cmd.arg(url);
    let out = run_checked(&mut cmd)?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse(&text).with_context(|| format!("parse wrk output:\n{text}"))
}

/// Parses wrk's report (its format since 4.0).
pub fn parse(text: &str) -> Result<WrkReport> {
    let mut r = WrkReport::default();
    let mut in_distribution = false;
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        if line.starts_with("Latency Distribution") {
            in_distribution = true;
            continue;
        }
        if in_distribution && words.len() == 2 && words[0].ends_with('%') {
            let us = duration_us(words[1])?;
            match words[0] {
                "50%" => r.p50_us = us,
                "99%" => r.p99_us = us,
                _ => {}
            }
            continue;
        }
        in_distribution = false;
        if words.len() >= 4 && words[1] == "requests" && words[2] == "in" {
            r.requests = words[0].parse().context("request count")?;
            r.seconds = duration_us(words[3].trim_end_matches(','))? / 1e6;
        } else if let Some(rest) = line.strip_prefix("Requests/sec:") {
            r.rps = rest.trim().parse().context("Requests/sec")?;
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            r.socket_errors = rest
                .split(',')
                .filter_map(|p| p.split_whitespace().nth(1))
                .filter_map(|n| n.parse::<u64>().ok())
                .sum();
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            r.bad_status = rest.trim().parse().context("Non-2xx count")?;
        }
    }
    if r.requests == 0 && r.rps == 0.0 {
        bail!("no request count in wrk's output");
    }
    Ok(r)
}

/// `812.00us`, `1.25ms`, `2.00s`, `1.00m` -> microseconds.
fn duration_us(s: &str) -> Result<f64> {
    let split = s
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("no unit in {s:?}"))?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().with_context(|| format!("number in {s:?}"))?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => bail!("unknown unit in {s:?}"),
    };
    Ok(n * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Running 5s test @ http://10.200.100.1/
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.20ms  500.00us  10.00ms   80.00%
    Req/Sec    13.00k     1.00k   15.00k    70.00%
  Latency Distribution
     50%  812.00us
     75%    1.30ms
     90%    1.50ms
     99%    3.10ms
  130000 requests in 5.01s, 30.00MB read
  Socket errors: connect 1, read 2, write 0, timeout 4
  Non-2xx or 3xx responses: 5
Requests/sec:  25948.10
Transfer/sec:      6.00MB
";

    #[test]
    fn parses_a_report() {
        let r = parse(SAMPLE).unwrap();
        assert_eq!(r.requests, 130000);
        assert!((r.seconds - 5.01).abs() < 1e-9);
        assert!((r.rps - 25948.10).abs() < 1e-6);
        assert_eq!(r.p50_us, 812.0);
        assert_eq!(r.p99_us, 3100.0);
        assert_eq!(r.socket_errors, 7);
        assert_eq!(r.bad_status, 5);
    }

    #[test]
    fn refuses_garbage() {
        assert!(parse("unable to connect to 10.200.100.1:80 Connection refused").is_err());
        assert!(duration_us("3.0xs").is_err());
    }
}
