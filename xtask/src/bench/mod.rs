//! `cargo xtask bench <name>`: benchmarks that write JSON and a Markdown table under
//! `target/bench/`; `docs/benchmarks.md` keeps the figures with the command that made them.

mod apiserver;
pub mod chart;
mod cni;
mod kubelet;
mod node;
mod proxy;
mod scheduler;

use std::io::Read as _;

use anyhow::{Context as _, Result, anyhow, bail};

/// Runs one benchmark.
pub fn run(name: &str) -> Result<()> {
    match name {
        "apiserver" => apiserver::run(),
        "cni" => cni::run(),
        "kubelet" => kubelet::run(),
        "proxy" => proxy::run(),
        // The connection-rate client `bench proxy` runs in its client namespace.
        "proxy-client" => proxy::client_main(),
        "scheduler" => scheduler::run(),
        other => {
            bail!(
                "unknown benchmark {other:?}; available: apiserver, cni, kubelet, proxy, scheduler \
                 (and `chart`, the proxy chart)"
            )
        }
    }
}

/// p-th percentile (0..=100) of sorted samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

pub(super) fn env_or<T: std::str::FromStr>(key: &str, default: T) -> Result<T> {
    match std::env::var(key) {
        Ok(v) => v
            .parse()
            .map_err(|_| anyhow!("{key}={v:?} is not a valid value")),
        Err(_) => Ok(default),
    }
}

pub(super) fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("read /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

pub(super) fn round(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}

pub(super) fn status_kib(pid: u32, field: &str) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("{field} of {pid}"))
}
