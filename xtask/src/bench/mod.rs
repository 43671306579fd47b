//! `cargo xtask bench <name>`: benchmarks that write JSON and a Markdown table under
//! `target/bench/`; `docs/benchmarks.md` keeps the figures with the command that made them.

mod apiserver;
mod cni;
mod kubelet;
mod proxy;
mod scheduler;

use anyhow::{Result, bail};

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
                "unknown benchmark {other:?}; available: apiserver, cni, kubelet, proxy, scheduler"
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
