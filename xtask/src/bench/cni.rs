//! `cargo xtask bench cni`: ADD and DEL latency of `windlass-cni` against the reference `bridge`
//! + `host-local` plugins (Debian's containernetworking-plugins), side by side in one run.
//!
//! Topology: one "node" network namespace made by the benchmark holds both bridges (`cni0` for
//! the reference, `wl0` for ours); 200 pod namespaces are made before any timing. Every plugin
//! process is started from a thread that has entered the node namespace, with
//! `CNI_NETNS=/run/netns/<pod>` and the environment libcni gives (containerd-style 64-hex
//! container ids, `K8S_POD_*` in `CNI_ARGS`), so nothing is created in the host's namespace.
//!
//! Measured, per plugin: wall time of each plugin execution (spawn, config on stdin, wait for
//! exit and stdout) for 200 sequential ADDs, 200 sequential DELs, then 200 ADDs and 200 DELs from
//! 8 worker threads pulling pods from one queue; and the bare process start (`CNI_COMMAND=VERSION`).
//! The order alternates (reference first in the sequential round, ours first in the parallel
//! one), and one ADD + DEL per plugin is run untimed first. Every ADD must exit 0 with a result
//! holding an address in the plugin's subnet, all distinct; after every DEL phase no address file
//! and no veth may remain. Writes `target/bench/cni.{json,md}`.
//!
//! For quick iterations: `WINDLASS_BENCH_CNI_PLUGINS=reference` (or `windlass`) runs one plugin,
//! `WINDLASS_BENCH_CNI_PODS=N` changes the pod count, `WINDLASS_BENCH_CNI_PROFILE=debug` times
//! the debug build of `windlass-cni` instead of the release one, and
//! `WINDLASS_BENCH_CNI_DATA_DIR=/dev/shm` keeps both plugins' IPAM state on a tmpfs (by default
//! it is on disk under `target/bench/`, as a node's `/var/lib` is) to show what storage costs.

use std::collections::HashSet;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use windlass_cni::netns::NetNs;

use super::{percentile, random_hex};
use crate::paths;

/// Pods attached and detached per phase.
const PODS: usize = 200;
/// Worker threads in the parallel phases.
const PARALLEL: usize = 8;
/// `CNI_COMMAND=VERSION` runs per plugin for the bare process start.
const VERSION_RUNS: usize = 50;
/// Where Debian's containernetworking-plugins puts the reference plugins.
const REFERENCE_DIR: &str = "/usr/lib/cni";
/// The interface name inside each pod, as containerd passes it.
const IFNAME: &str = "eth0";

/// Which plugin a measurement belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Reference,
    Windlass,
}

impl Which {
    fn key(self) -> &'static str {
        match self {
            Which::Reference => "reference",
            Which::Windlass => "windlass",
        }
    }
}

/// One plugin under test: the binary, its environment and its network configuration.
#[derive(Debug)]
struct Plugin {
    which: Which,
    /// How the table names it (with its version and build).
    label: String,
    binary: PathBuf,
    cni_path: String,
    config: String,
    /// The IPAM data directory (inside the benchmark's temporary directory).
    data_dir: PathBuf,
    bridge: &'static str,
    subnet: (Ipv4Addr, u8),
}

impl Plugin {
    fn reference(tmp: &Path, version: &str) -> Plugin {
        let data_dir = tmp.join("host-local");
        let config = json!({
            "cniVersion": "1.0.0", "name": "refnet", "type": "bridge", "bridge": "cni0",
            "isGateway": true, "ipMasq": false, "hairpinMode": true, "mtu": 1500,
            "ipam": { "type": "host-local", "subnet": "10.245.0.0/16",
                      "dataDir": data_dir, "routes": [{ "dst": "0.0.0.0/0" }] }
        });
        Plugin {
            which: Which::Reference,
            label: format!("reference bridge + host-local {version}"),
            binary: Path::new(REFERENCE_DIR).join("bridge"),
            cni_path: REFERENCE_DIR.to_string(),
            config: config.to_string(),
            data_dir,
            bridge: "cni0",
            subnet: (Ipv4Addr::new(10, 245, 0, 0), 16),
        }
    }

    fn windlass(tmp: &Path, binary: PathBuf, profile: &str) -> Plugin {
        let data_dir = tmp.join("windlass");
        let config = json!({
            "cniVersion": "1.0.0", "name": "windlass", "type": "windlass-cni", "bridge": "wl0",
            "mtu": 1500,
            "ipam": { "type": "windlass", "subnet": "10.244.0.0/16", "dataDir": data_dir }
        });
        let cni_path = binary
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        Plugin {
            which: Which::Windlass,
            label: format!("windlass-cni ({profile} build)"),
            binary,
            cni_path,
            config: config.to_string(),
            data_dir,
            bridge: "wl0",
            subnet: (Ipv4Addr::new(10, 244, 0, 0), 16),
        }
    }

    fn in_subnet(&self, ip: Ipv4Addr) -> bool {
        let (net, len) = self.subnet;
        let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        u32::from(ip) & mask == u32::from(net) & mask
    }
}

/// The identity a runtime gives one pod sandbox.
#[derive(Debug, Clone)]
struct Sandbox {
    index: usize,
    container_id: String,
    uid: String,
}

/// The benchmark's namespaces; dropping it (also while unwinding from a panic) removes them and,
/// with them, every bridge and veth the plugins made.
#[derive(Debug)]
struct Topology {
    node: NetNs,
    pods: Vec<NetNs>,
}

impl Topology {
    fn create(prefix: &str, pods: usize) -> Result<Topology> {
        let node = NetNs::create(&format!("{prefix}-node"))
            .with_context(|| format!("create the node namespace {prefix}-node"))?;
        let mut topology = Topology {
            node,
            pods: Vec::with_capacity(pods),
        };
        for i in 0..pods {
            let name = format!("{prefix}-p{i}");
            topology.pods.push(
                NetNs::create(&name).with_context(|| format!("create pod namespace {name}"))?,
            );
        }
        // The plugins' bridges act as gateways; keep the node's forwarding as a node's would be.
        topology
            .node
            .sysctl("net/ipv4/ip_forward", "1")
            .context("enable forwarding in the node namespace")?;
        Ok(topology)
    }

    /// veth interfaces in the node namespace.
    fn node_veths(&self) -> Result<usize> {
        let out = self
            .node
            .exec(Command::new("ip").args(["-o", "link", "show", "type", "veth"]))
            .context("list veths in the node namespace")?;
        if !out.status.success() {
            bail!(
                "ip link show in the node namespace: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).lines().count())
    }

    /// Whether `name` exists as a link in the node namespace.
    fn node_has_link(&self, name: &str) -> Result<bool> {
        let out = self
            .node
            .exec(Command::new("ip").args(["-o", "link", "show", "dev", name]))
            .context("look up a link in the node namespace")?;
        Ok(out.status.success())
    }
}

/// Fresh sandboxes for one round: 64-hex container ids like containerd's, UUID-shaped pod uids.
fn sandboxes(count: usize) -> Result<Vec<Sandbox>> {
    (0..count)
        .map(|index| {
            let u = random_hex(16)?;
            Ok(Sandbox {
                index,
                container_id: random_hex(32)?,
                uid: format!(
                    "{}-{}-{}-{}-{}",
                    &u[0..8],
                    &u[8..12],
                    &u[12..16],
                    &u[16..20],
                    &u[20..32]
                ),
            })
        })
        .collect()
}

/// Runs the plugin once with `CNI_COMMAND=command` for `sandbox` (in the calling thread's network
/// namespace); returns the wall time and, for ADD, the address it assigned. Any failure is an
/// error that carries the plugin's CNI error JSON and stderr.
fn exec(
    plugin: &Plugin,
    command: &str,
    sandbox: &Sandbox,
    netns: &Path,
) -> Result<(Duration, Option<Ipv4Addr>)> {
    let mut cmd = Command::new(&plugin.binary);
    cmd.env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &sandbox.container_id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", IFNAME)
        .env("CNI_PATH", &plugin.cni_path)
        .env(
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p{};\
                 K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
                sandbox.index, sandbox.container_id, sandbox.uid
            ),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("start {}", plugin.binary.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        // The configuration is far smaller than a pipe buffer: this never blocks.
        stdin
            .write_all(plugin.config.as_bytes())
            .with_context(|| format!("write the configuration to {}", plugin.label))?;
    }
    let output = child
        .wait_with_output()
        .with_context(|| format!("wait for {}", plugin.label))?;
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "{} {command} for pod p{} failed ({}):\n  stdout (CNI error): {}\n  stderr: {}",
            plugin.label,
            sandbox.index,
            output.status,
            stdout.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    if command != "ADD" {
        return Ok((elapsed, None));
    }
    let result: Value = serde_json::from_str(&stdout).with_context(|| {
        format!(
            "{} ADD for pod p{} printed no JSON result: {stdout:?}",
            plugin.label, sandbox.index
        )
    })?;
    let address = result
        .pointer("/ips/0/address")
        .and_then(Value::as_str)
        .with_context(|| {
            format!(
                "{} ADD for pod p{} returned no ips[0].address: {stdout}",
                plugin.label, sandbox.index
            )
        })?;
    let ip: Ipv4Addr = address
        .split('/')
        .next()
        .unwrap_or_default()
        .parse()
        .with_context(|| format!("{} ADD: address {address:?} is not IPv4", plugin.label))?;
    if !plugin.in_subnet(ip) {
        bail!(
            "{} ADD for pod p{} returned {address}, outside its subnet",
            plugin.label,
            sandbox.index
        );
    }
    Ok((elapsed, Some(ip)))
}

/// One timed phase: per-execution latencies (ms, sorted) and the phase's wall time.
#[derive(Debug)]
struct Phase {
    samples_ms: Vec<f64>,
    wall: Duration,
    ips: Vec<Ipv4Addr>,
}

impl Phase {
    fn summary(&self) -> Value {
        let mean = self.samples_ms.iter().sum::<f64>() / self.samples_ms.len().max(1) as f64;
        json!({
            "count": self.samples_ms.len(),
            "p50_ms": round3(percentile(&self.samples_ms, 50.0)),
            "p99_ms": round3(percentile(&self.samples_ms, 99.0)),
            "mean_ms": round3(mean),
            "max_ms": round3(self.samples_ms.last().copied().unwrap_or(f64::NAN)),
            "wall_s": round3(self.wall.as_secs_f64()),
            "per_second": (self.samples_ms.len() as f64 / self.wall.as_secs_f64()).round(),
        })
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Runs `command` for every sandbox from `workers` threads inside the node namespace, each taking
/// the next pod from a shared queue. Stops at the first failure and returns it.
fn phase(
    topology: &Topology,
    plugin: &Plugin,
    command: &str,
    sandboxes: &[Sandbox],
    workers: usize,
) -> Result<Phase> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let samples: Mutex<Vec<(f64, Option<Ipv4Addr>)>> =
        Mutex::new(Vec::with_capacity(sandboxes.len()));
    let worker = || -> Result<()> {
        let mut mine = Vec::new();
        let outcome = topology.node.run(|| -> Result<()> {
            while !failed.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(sandbox) = sandboxes.get(i) else {
                    break;
                };
                let netns = topology.pods[sandbox.index].path();
                match exec(plugin, command, sandbox, netns) {
                    Ok((elapsed, ip)) => mine.push((elapsed.as_secs_f64() * 1000.0, ip)),
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                }
            }
            Ok(())
        });
        if let Ok(mut all) = samples.lock() {
            all.extend(mine);
        }
        outcome.context("enter the node namespace")?
    };
    let started = Instant::now();
    let results: Vec<Result<()>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers).map(|_| scope.spawn(worker)).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a benchmark worker panicked")))
            })
            .collect()
    });
    let wall = started.elapsed();
    for result in results {
        result?;
    }
    let all = samples
        .into_inner()
        .map_err(|_| anyhow::anyhow!("samples lock poisoned"))?;
    if all.len() != sandboxes.len() {
        bail!(
            "{} {command}: {} of {} executions recorded",
            plugin.label,
            all.len(),
            sandboxes.len()
        );
    }
    let mut samples_ms: Vec<f64> = all.iter().map(|(ms, _)| *ms).collect();
    samples_ms.sort_by(f64::total_cmp);
    let ips = all.iter().filter_map(|(_, ip)| *ip).collect();
    Ok(Phase {
        samples_ms,
        wall,
        ips,
    })
}

/// Files under `dir` (recursively) named like an IPv4 address: allocations left behind.
fn ip_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(e).with_context(|| format!("read {}", dir.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("read {}", dir.display()))?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            found.extend(ip_files(&path)?);
        } else if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.parse::<Ipv4Addr>().is_ok())
        {
            found.push(path);
        }
    }
    Ok(found)
}

/// After ADD: every pod got its own address and its own veth.
fn check_attached(topology: &Topology, plugin: &Plugin, add: &Phase, pods: usize) -> Result<()> {
    let distinct: HashSet<_> = add.ips.iter().collect();
    if distinct.len() != pods {
        bail!(
            "{}: {pods} ADDs handed out {} distinct addresses",
            plugin.label,
            distinct.len()
        );
    }
    let veths = topology.node_veths()?;
    if veths != pods {
        bail!(
            "{}: {pods} pods attached but {veths} veths in the node namespace",
            plugin.label
        );
    }
    let files = ip_files(&plugin.data_dir)?.len();
    if files != pods {
        bail!(
            "{}: {pods} pods attached but {files} address files in {}",
            plugin.label,
            plugin.data_dir.display()
        );
    }
    Ok(())
}

/// After DEL: no address file and no veth left; the bridge stays, as both plugins leave it.
fn check_released(topology: &Topology, plugin: &Plugin) -> Result<()> {
    let files = ip_files(&plugin.data_dir)?;
    if !files.is_empty() {
        bail!(
            "{} leaked {} address files after DEL: {}",
            plugin.label,
            files.len(),
            files
                .iter()
                .take(5)
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let veths = topology.node_veths()?;
    if veths != 0 {
        bail!(
            "{} leaked {veths} veths in the node namespace after DEL",
            plugin.label
        );
    }
    if !topology.node_has_link(plugin.bridge)? {
        bail!(
            "{}: bridge {} is missing from the node namespace",
            plugin.label,
            plugin.bridge
        );
    }
    Ok(())
}

/// ADD then DEL of every pod with `workers` threads; checks after each.
fn round(
    topology: &Topology,
    plugin: &Plugin,
    workers: usize,
    pods: usize,
) -> Result<(Phase, Phase)> {
    let mode = if workers == 1 {
        "sequential".to_string()
    } else {
        format!("{workers} in parallel")
    };
    let sandboxes = sandboxes(pods)?;
    eprintln!("  {}: {pods} ADDs, {mode}", plugin.label);
    let add = phase(topology, plugin, "ADD", &sandboxes, workers)?;
    check_attached(topology, plugin, &add, pods)?;
    eprintln!("  {}: {pods} DELs, {mode}", plugin.label);
    let del = phase(topology, plugin, "DEL", &sandboxes, workers)?;
    check_released(topology, plugin)?;
    eprintln!(
        "    ADD p50 {:.2} ms p99 {:.2} ms; DEL p50 {:.2} ms p99 {:.2} ms",
        percentile(&add.samples_ms, 50.0),
        percentile(&add.samples_ms, 99.0),
        percentile(&del.samples_ms, 50.0),
        percentile(&del.samples_ms, 99.0)
    );
    Ok((add, del))
}

/// Bare process start: `CNI_COMMAND=VERSION` with an empty stdin, alternating between plugins.
fn process_start(topology: &Topology, plugins: &[Plugin]) -> Result<Vec<Vec<f64>>> {
    topology
        .node
        .run(|| -> Result<Vec<Vec<f64>>> {
            let mut samples = vec![Vec::with_capacity(VERSION_RUNS); plugins.len()];
            for _ in 0..VERSION_RUNS {
                for (plugin, samples) in plugins.iter().zip(samples.iter_mut()) {
                    let started = Instant::now();
                    let output = Command::new(&plugin.binary)
                        .env_clear()
                        .env("CNI_COMMAND", "VERSION")
                        .stdin(Stdio::null())
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped())
                        .output()
                        .with_context(|| format!("start {}", plugin.binary.display()))?;
                    samples.push(started.elapsed().as_secs_f64() * 1000.0);
                    if !output.status.success() {
                        bail!(
                            "{} VERSION failed: {}",
                            plugin.label,
                            String::from_utf8_lossy(&output.stdout).trim()
                        );
                    }
                }
            }
            for samples in &mut samples {
                samples.sort_by(f64::total_cmp);
            }
            Ok(samples)
        })
        .context("enter the node namespace")?
}

/// What `CNI_COMMAND=VERSION` prints (the supported versions).
fn supported_versions(binary: &Path) -> Result<Value> {
    let output = Command::new(binary)
        .env_clear()
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("start {}", binary.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "{} VERSION failed ({}): {}",
            binary.display(),
            output.status,
            stdout.trim()
        );
    }
    let value: Value = serde_json::from_str(&stdout)
        .with_context(|| format!("{} VERSION printed {stdout:?}", binary.display()))?;
    Ok(value
        .get("supportedVersions")
        .cloned()
        .unwrap_or(Value::Null))
}

/// The installed containernetworking-plugins package version, as dpkg reports it.
fn reference_version() -> String {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", "containernetworking-plugins"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "(version unknown)".to_string())
}

/// The type of the filesystem holding `path` (as findmnt names it), for the report.
fn filesystem_of(path: &Path) -> String {
    Command::new("findmnt")
        .args(["-n", "-o", "FSTYPE", "-T"])
        .arg(path)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            // Stacked mounts print one line each, in mount order; the last is the visible one.
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next_back()
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| "unknown filesystem".to_string())
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> Result<T> {
    match std::env::var(key) {
        Ok(v) => v
            .parse()
            .map_err(|_| anyhow::anyhow!("{key}={v:?} is not valid")),
        Err(_) => Ok(default),
    }
}

fn summary_row(md: &mut String, label: &str, phase: &str, s: &Value) {
    md.push_str(&format!(
        "| {label} | {phase} | {:.2} | {:.2} | {:.2} | {} |\n",
        s["p50_ms"].as_f64().unwrap_or(f64::NAN),
        s["p99_ms"].as_f64().unwrap_or(f64::NAN),
        s["mean_ms"].as_f64().unwrap_or(f64::NAN),
        s.get("wall_s")
            .and_then(Value::as_f64)
            .map(|w| format!("{w:.2}"))
            .unwrap_or_else(|| "-".to_string()),
    ));
}

/// Builds `windlass-cni`, runs the benchmark, writes the results.
pub fn run() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "the CNI benchmark creates network namespaces, bridges and veths: run \
             `cargo xtask bench cni` as root"
        );
    }
    crate::deps::ensure()?;
    let pods: usize = env_or("WINDLASS_BENCH_CNI_PODS", PODS)?;
    if pods == 0 {
        bail!("WINDLASS_BENCH_CNI_PODS must be at least 1");
    }
    let profile = std::env::var("WINDLASS_BENCH_CNI_PROFILE").unwrap_or_else(|_| "release".into());
    let chosen =
        std::env::var("WINDLASS_BENCH_CNI_PLUGINS").unwrap_or_else(|_| "reference,windlass".into());
    let chosen: Vec<&str> = chosen.split(',').filter(|s| !s.is_empty()).collect();
    if let Some(other) = chosen
        .iter()
        .find(|c| !matches!(**c, "reference" | "windlass"))
    {
        bail!("WINDLASS_BENCH_CNI_PLUGINS: unknown plugin {other:?} (reference, windlass)");
    }

    // IPAM state lives where a node keeps it, on disk (`/var/lib/...` in production; /tmp may
    // be a tmpfs, which would hide the cost of fsync and rename): under the target directory
    // unless WINDLASS_BENCH_CNI_DATA_DIR names another parent (a tmpfs, to isolate that cost).
    let parent = std::env::var_os("WINDLASS_BENCH_CNI_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| paths::target_dir().join("bench"));
    std::fs::create_dir_all(&parent).with_context(|| format!("create {}", parent.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix("cni-ipam-")
        .tempdir_in(&parent)
        .with_context(|| format!("create a directory in {}", parent.display()))?;
    let data_fs = filesystem_of(tmp.path());
    eprintln!(
        "bench cni: IPAM data under {} ({data_fs})",
        tmp.path().display()
    );
    let mut plugins = Vec::new();
    let ref_version = reference_version();
    if chosen.contains(&"reference") {
        let plugin = Plugin::reference(tmp.path(), &ref_version);
        for binary in ["bridge", "host-local"] {
            let path = Path::new(REFERENCE_DIR).join(binary);
            if !path.exists() {
                bail!(
                    "{} is missing: `cargo xtask deps` installs containernetworking-plugins",
                    path.display()
                );
            }
        }
        plugins.push(plugin);
    }
    if chosen.contains(&"windlass") {
        let binary = match profile.as_str() {
            "release" => {
                paths::cargo(&["build", "--release", "--package", "windlass-cni"])?;
                paths::target_dir().join("release/windlass-cni")
            }
            "debug" => {
                paths::cargo(&["build", "--package", "windlass-cni"])?;
                paths::target_dir().join("debug/windlass-cni")
            }
            other => bail!("WINDLASS_BENCH_CNI_PROFILE={other:?}: release or debug"),
        };
        plugins.push(Plugin::windlass(tmp.path(), binary, &profile));
    }
    let mut versions = serde_json::Map::new();
    for plugin in &plugins {
        let supported = supported_versions(&plugin.binary)?;
        eprintln!(
            "bench cni: {} at {}: supportedVersions {supported}",
            plugin.label,
            plugin.binary.display()
        );
        versions.insert(
            plugin.which.key().to_string(),
            json!({ "label": plugin.label, "binary": plugin.binary, "supportedVersions": supported }),
        );
    }

    let prefix = format!("wlb{}", random_hex(3)?);
    let bench_started = Instant::now();
    eprintln!("bench cni: node namespace {prefix}-node, {pods} pod namespaces {prefix}-p*");
    let topology = Topology::create(&prefix, pods)?;

    // Untimed warm-up: creates each bridge and the IPAM directories, faults the binaries in.
    let warm = sandboxes(1)?;
    for plugin in &plugins {
        let netns = topology.pods[0].path();
        topology
            .node
            .run(|| -> Result<()> {
                exec(plugin, "ADD", &warm[0], netns)?;
                exec(plugin, "DEL", &warm[0], netns)?;
                Ok(())
            })
            .context("enter the node namespace")??;
        check_released(&topology, plugin)?;
    }

    eprintln!("bench cni: process start (VERSION x {VERSION_RUNS})");
    let starts = process_start(&topology, &plugins)?;

    // Sequential round in list order (reference first), the parallel round reversed, so neither
    // plugin always runs on a cache the other warmed.
    let mut results: Vec<serde_json::Map<String, Value>> =
        plugins.iter().map(|_| serde_json::Map::new()).collect();
    eprintln!("bench cni: sequential");
    for (i, plugin) in plugins.iter().enumerate() {
        let (add, del) = round(&topology, plugin, 1, pods)?;
        results[i].insert("sequential_add".into(), add.summary());
        results[i].insert("sequential_del".into(), del.summary());
    }
    eprintln!("bench cni: {PARALLEL} in parallel");
    for (i, plugin) in plugins.iter().enumerate().rev() {
        let (add, del) = round(&topology, plugin, PARALLEL, pods)?;
        results[i].insert("parallel_add".into(), add.summary());
        results[i].insert("parallel_del".into(), del.summary());
    }
    for (i, samples) in starts.iter().enumerate() {
        let mean = samples.iter().sum::<f64>() / samples.len().max(1) as f64;
        results[i].insert(
            "process_start".into(),
            json!({ "count": samples.len(), "p50_ms": round3(percentile(samples, 50.0)),
                    "p99_ms": round3(percentile(samples, 99.0)), "mean_ms": round3(mean) }),
        );
    }
    drop(topology);
    let bench_seconds = bench_started.elapsed().as_secs_f64();

    let by_key = |which: Which| {
        plugins
            .iter()
            .position(|p| p.which == which)
            .map(|i| &results[i])
    };
    let p50 = |r: &serde_json::Map<String, Value>, phase: &str| {
        r.get(phase)
            .and_then(|s| s["p50_ms"].as_f64())
            .unwrap_or(f64::NAN)
    };
    let mut comparison = json!(null);
    let mut verdict = String::new();
    if let (Some(reference), Some(windlass)) = (by_key(Which::Reference), by_key(Which::Windlass)) {
        let ratio = |phase: &str| round3(p50(windlass, phase) / p50(reference, phase));
        let ours = p50(windlass, "sequential_add");
        let theirs = p50(reference, "sequential_add");
        let half = ours <= 0.5 * theirs;
        let under_5 = ours < 5.0;
        comparison = json!({
            "windlass_over_reference_p50": {
                "sequential_add": ratio("sequential_add"), "sequential_del": ratio("sequential_del"),
                "parallel_add": ratio("parallel_add"), "parallel_del": ratio("parallel_del"),
                "process_start": ratio("process_start"),
            },
            "targets": { "add_p50_at_most_half_of_reference": half, "add_p50_under_5_ms": under_5 },
        });
        let mark = |ok: bool| if ok { "MET" } else { "MISSED" };
        verdict = format!(
            "Sequential ADD p50: windlass {ours:.2} ms, reference {theirs:.2} ms, ratio {:.2} \
             (parallel ADD ratio {:.2}, sequential DEL ratio {:.2}).\n\
             Target ADD p50 <= 0.5 x reference: {}. Target ADD p50 < 5 ms: {}.\n",
            ratio("sequential_add"),
            ratio("parallel_add"),
            ratio("sequential_del"),
            mark(half),
            mark(under_5),
        );
    }

    let mut md = String::from(
        "| plugin | phase | p50 (ms) | p99 (ms) | mean (ms) | phase wall time (s) |\n|---|---|---|---|---|---|\n",
    );
    let phases = [
        ("process_start", "process start (VERSION)".to_string()),
        ("sequential_add", "ADD, sequential".to_string()),
        ("sequential_del", "DEL, sequential".to_string()),
        ("parallel_add", format!("ADD, {PARALLEL} in parallel")),
        ("parallel_del", format!("DEL, {PARALLEL} in parallel")),
    ];
    for (key, name) in &phases {
        for (plugin, result) in plugins.iter().zip(&results) {
            if let Some(summary) = result.get(*key) {
                summary_row(&mut md, &plugin.label, name, summary);
            }
        }
    }
    md.push_str(&format!(
        "\n{pods} pods, cniVersion 1.0.0, IPAM data on {data_fs}.\n"
    ));
    if !verdict.is_empty() {
        md.push('\n');
        md.push_str(&verdict);
    }

    let out = paths::target_dir().join("bench");
    std::fs::create_dir_all(&out)?;
    let report = json!({
        "benchmark": "cni",
        "command": "cargo xtask bench cni",
        "machine": format!("{} cores, kernel {}", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
                           std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim()),
        "pods": pods,
        "parallel_workers": PARALLEL,
        "cni_version": "1.0.0",
        "ipam_data_filesystem": data_fs,
        "plugins": versions,
        "results": plugins.iter().zip(&results).map(|(p, r)| (p.which.key().to_string(), Value::Object(r.clone())))
            .collect::<serde_json::Map<_, _>>(),
        "comparison": comparison,
        "bench_seconds": round3(bench_seconds),
    });
    std::fs::write(out.join("cni.json"), serde_json::to_string_pretty(&report)?)?;
    std::fs::write(out.join("cni.md"), &md)?;
    println!("{md}");
    println!(
        "benchmark took {bench_seconds:.1} s (namespaces to teardown); written to {}",
        out.display()
    );
    Ok(())
}
