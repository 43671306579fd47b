//! `cargo xtask bench kubelet`: how fast `windlass agent` starts pods, and what it costs idle.
//!
//! For each runtime in the list (`oci`, then `cri`; `WINDLASS_BENCH_RUNTIMES` overrides it) a
//! fresh cluster is made the way `tests/kubelet.rs` makes one: a release `windlass server`
//! (SQLite, controllers on) on the host's loopback, and a release `windlass agent` inside a
//! node network namespace with no default route, reaching the server through a loopback
//! forwarder, with its own data dir, `--cgroup-root /<prefix>` and pod log dir; the busybox
//! image from `cargo xtask images` is imported first, so no pull is timed. For `cri` the agent
//! talks to a private containerd started in the node namespace (see [`containerd`]), into which
//! busybox and a pause image are imported with `ctr`.
//!
//! Pods are busybox `sleep 3600` with `terminationGracePeriodSeconds: 0`, created with
//! `spec.nodeName` already set (scheduling is `bench scheduler`'s subject). Latency is the time
//! from sending the create to a watch event with `status.phase: Running` arriving (the same
//! watch-stream reader as `bench scheduler`). Phases: one untimed warm-up pod; 50 pods one at a
//! time; 100 pods created at once; with the 100 running and settled, the agent's RSS and the
//! CPU it uses over 30 s (`utime + stime` from `/proc/<pid>/stat`). Pods are deleted between
//! phases and the bench waits until the API has deleted them and the runtime has no container
//! or shim left (runc's list for `oci`, `ctr containers ls` for `cri`). For `cri` containerd's
//! own RSS and CPU over the same 30 s are recorded too.
//!
//! Everything made (namespace, cgroup subtree, mounts, containers, data dirs, processes) is
//! removed at the end, also after an error or Ctrl-C. Writes `target/bench/kubelet.{json,md}`
//! and keeps each agent's log as `target/bench/kubelet-<runtime>-agent.log`.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use http_body_util::Full;
use hyper::body::Bytes;
use serde_json::{Value, json};
use windlass_cni::netlink;
use windlass_cni::netns::NetNs;

use self::containerd::Containerd;
use super::apiserver::{HttpsClient, Server, client, create_namespace, each_event, request, start};
use super::node::{Forwarder, kill9, processes, reap_orphans, remove_cgroups};
use super::{env_or, percentile, random_hex, round, status_kib};
use crate::paths;

mod containerd;

/// Runtimes benchmarked side by side, in this order.
const RUNTIMES: &str = "oci,cri";
const SEQUENTIAL: usize = 50;
const BURST: usize = 100;
/// How long the CPU of the idle agent is sampled.
const IDLE_SECONDS: u64 = 30;
/// Quiet time after the burst before RSS and CPU are sampled.
const SETTLE: Duration = Duration::from_secs(5);
const NAMESPACE: &str = "bench";
const IMAGE: &str = "windlass.local/busybox:latest";
/// The node's address on its (otherwise unused) uplink.
const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const PATIENCE: Duration = Duration::from_secs(120);

// Targets from the issue.
const TARGET_P50_MS: f64 = 300.0;
const TARGET_P99_MS: f64 = 1000.0;
const TARGET_BURST_S: f64 = 20.0;
const TARGET_RSS_MIB: f64 = 50.0;
const TARGET_CPU_PERCENT: f64 = 1.0;

/// A `windlass agent` in the node namespace, and everything it made: killed and removed on drop.
struct Agent {
    child: Option<Child>,
    data: tempfile::TempDir,
    cgroup_root: String,
    log_copy: PathBuf,
}

impl Agent {
    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("agent.log")).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Whether the agent has exited, with its status.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Containers runc still knows about; `None` while runc cannot list them (a container
    /// being deleted at the same moment makes `runc list` fail).
    fn runc_containers(&self) -> Option<Vec<String>> {
        let root = self.data.path().join("runc");
        if !root.is_dir() {
            return Some(Vec::new());
        }
        let out = Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["list", "-q"])
            .output()
            .ok()?;
        out.status.success().then(|| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string)
                .collect()
        })
    }

    /// Whether the agent has torn every pod down: no sandbox dir, no runc container, no shim.
    fn idle(&self) -> bool {
        let sandboxes = std::fs::read_dir(self.data.path().join("sandboxes"))
            .map(|d| d.count())
            .unwrap_or(0);
        sandboxes == 0
            && self.runc_containers().is_some_and(|c| c.is_empty())
            && self.shims().is_empty()
    }

    /// The shims of this agent's containers (their command lines name the data dir).
    fn shims(&self) -> Vec<u32> {
        let data = self.data.path().display().to_string();
        processes()
            .into_iter()
            .filter(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&cmdline);
                cmdline
                    .split('\0')
                    .next()
                    .is_some_and(|argv0| argv0.ends_with("windlass-shim"))
                    && cmdline.contains(&data)
            })
            .collect()
    }

    fn cleanup(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::copy(self.data.path().join("agent.log"), &self.log_copy);
        let root = self.data.path().join("runc");
        for id in self.runc_containers().unwrap_or_default() {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(&root)
                .args(["delete", "--force", &id])
                .output();
        }
        // Shims exit once their container is gone; they were re-parented to this process.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            reap_orphans();
            let shims = self.shims();
            if shims.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                for pid in shims {
                    let _ = kill9(pid);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Mounts under the data dir: overlay rootfs, pinned namespaces, volumes; deepest first.
        let data = self.data.path().display().to_string();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&data))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        if let Err(e) = remove_cgroups(&self.cgroup_root) {
            eprintln!("bench kubelet: {e:#}");
        }
        reap_orphans();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Server, node namespace and agent for one runtime. Field order is drop order: the agent and
/// its pods first, then containerd (cri), then the forwarder and the namespace, then the server.
struct Cluster {
    agent: Agent,
    containerd: Option<Containerd>,
    _forwarder: Forwarder,
    node: NetNs,
    server: Arc<Server>,
    node_name: String,
}

impl Cluster {
    fn start(bin: &Path, runtime: &str, image: &Path) -> Result<Cluster> {
        let prefix = format!("wlb{}", random_hex(3)?);
        let node_name = format!("{prefix}-node");
        let server = Arc::new(start(&bin.join("windlass"), "sqlite", &[])?);
        let node = NetNs::create(&node_name)
            .with_context(|| format!("create the node namespace {node_name}"))?;
        // An uplink with the node's address and no default route, as in tests/harness/topology.rs.
        let (uplink, peer) = (format!("{prefix}up"), format!("{prefix}pe"));
        node.run(|| {
            netlink::block_on(|nl| async move {
                nl.set_up("lo").await?;
                nl.add_veth(&uplink, &peer, None).await?;
                nl.set_up(&peer).await?;
                nl.set_up(&uplink).await?;
                nl.add_address(&uplink, IpAddr::V4(NODE_IP), 24).await
            })
        })?
        .context("set up the node namespace's links")?;
        node.sysctl("net/ipv4/ip_forward", "1")?;
        let port: u16 = server
            .url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("no port in {}", server.url))?;
        let forwarder = Forwarder::start(&node, port)?;

        let data = tempfile::Builder::new()
            .prefix(&format!("{prefix}-agent"))
            .tempdir()
            .context("create the agent's data dir")?;
        let out = paths::target_dir().join("bench");
        std::fs::create_dir_all(&out)?;
        let mut agent = Agent {
            child: None,
            cgroup_root: format!("/{prefix}"),
            log_copy: out.join(format!("kubelet-{runtime}-agent.log")),
            data,
        };
        let mut runtime_args: Vec<std::ffi::OsString> = vec!["--runtime".into(), runtime.into()];
        let containerd = if runtime == "cri" {
            // containerd runs windlass-cni from its bin dir, configured by the conflist the
            // agent writes into containerd's conf dir.
            let containerd = Containerd::start(
                &node,
                &prefix,
                &bin.join("windlass-cni"),
                &agent.cgroup_root,
                out.join("kubelet-cri-containerd.log"),
            )?;
            containerd.import_pause()?;
            containerd.import(image, IMAGE)?;
            let mut endpoint = std::ffi::OsString::from("unix://");
            endpoint.push(containerd.socket());
            runtime_args.extend([
                "--container-runtime-endpoint".into(),
                endpoint,
                "--cni-conf-dir".into(),
                containerd.cni_conf_dir().into(),
            ]);
            Some(containerd)
        } else {
            let import = Command::new(bin.join("windlass"))
                .args(["image", "import", "--data-dir"])
                .arg(agent.data.path())
                .arg(image)
                .output()
                .context("run windlass image import")?;
            if !import.status.success() {
                bail!(
                    "windlass image import failed: {}",
                    String::from_utf8_lossy(&import.stderr)
                );
            }
            None
        };
        let log = std::fs::File::create(agent.data.path().join("agent.log"))?;
        let mut command = Command::new(bin.join("windlass"));
        command
            .arg("agent")
            .arg("--kubeconfig")
            .arg(server.data.path().join("admin.kubeconfig"))
            .args(["--node-name", &node_name, "--node-ip", &NODE_IP.to_string()])
            .arg("--data-dir")
            .arg(agent.data.path())
            .args(["--cgroup-root", &agent.cgroup_root])
            .arg("--pod-log-dir")
            .arg(agent.data.path().join("logs"))
            .arg("--shim")
            .arg(bin.join("windlass-shim"))
            .arg("--cni-plugin")
            .arg(bin.join("windlass-cni"))
            // This bench measures the kubelet; the proxy has its own (`cargo xtask bench proxy`).
            .arg("--disable-proxy")
            .args(&runtime_args)
            .env(
                "RUST_LOG",
                std::env::var("WINDLASS_BENCH_AGENT_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            // Its own process group: a Ctrl-C reaches the bench, which then tears down in order.
            .process_group(0);
        let child = node
            .run(|| command.spawn())?
            .context("start windlass agent")?;
        agent.child = Some(child);
        Ok(Cluster {
            agent,
            containerd,
            _forwarder: forwarder,
            node,
            server,
            node_name,
        })
    }

    /// Whether the runtime has torn every pod down: for cri also no container in containerd
    /// and no containerd shim.
    fn idle(&self) -> bool {
        self.agent.idle() && self.containerd.as_ref().is_none_or(Containerd::idle)
    }

    /// The shims of the pods: windlass-shim (oci) or containerd-shim-runc-v2 (cri).
    fn shims(&self) -> Vec<u32> {
        match &self.containerd {
            Some(containerd) => containerd.shims(),
            None => self.agent.shims(),
        }
    }

    /// The agent's and containerd's log tails.
    fn log_tail(&self) -> String {
        match &self.containerd {
            Some(c) => format!(
                "{}\ncontainerd log ends:\n{}",
                self.agent.log_tail(),
                c.log_tail()
            ),
            None => self.agent.log_tail(),
        }
    }

    /// Waits for the Node to be Ready; fails early (with the agent's log) if the agent exits.
    async fn wait_ready(&mut self, client: &HttpsClient) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let path = format!("/api/v1/nodes/{}", self.node_name);
        loop {
            if let Some(status) = self.agent.exited() {
                bail!(
                    "windlass agent exited ({status}):\n{}",
                    self.agent.log_tail()
                );
            }
            let (code, body) = request(client, &self.server, "GET", &path, None).await?;
            if code == 200 {
                let node: Value = serde_json::from_slice(&body)?;
                let ready = node
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .is_some_and(|c| {
                        c.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    });
                if ready {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "node {} not Ready within 60 s:\n{}",
                    self.node_name,
                    self.agent.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// What the pod watch has seen: when each pod was first Running, and which were deleted.
#[derive(Default)]
struct Seen {
    running: HashMap<String, Instant>,
    deleted: HashSet<String>,
    ended: bool,
}

struct PodWatch {
    seen: Arc<Mutex<Seen>>,
    changed: tokio::sync::watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PodWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PodWatch {
    async fn open(client: &HttpsClient, server: &Server) -> Result<PodWatch> {
        let req = hyper::Request::builder()
            .uri(format!(
                "{}/api/v1/namespaces/{NAMESPACE}/pods?watch=1",
                server.url
            ))
            .header("Authorization", format!("Bearer {}", server.token))
            .body(Full::new(Bytes::new()))?;
        let response = client.request(req).await?;
        if !response.status().is_success() {
            bail!("watch pods: {}", response.status());
        }
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let (tx, changed) = tokio::sync::watch::channel(0u64);
        let state = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            let mut n = 0u64;
            each_event(response.into_body(), |event, arrived| {
                let name = event
                    .pointer("/object/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                if let Ok(mut seen) = state.lock() {
                    if event["type"] == "DELETED" {
                        seen.deleted.insert(name);
                    } else if event.pointer("/object/status/phase") == Some(&json!("Running")) {
                        seen.running.entry(name).or_insert(arrived);
                    }
                }
                n += 1;
                let _ = tx.send(n);
                true
            })
            .await;
            if let Ok(mut seen) = state.lock() {
                seen.ended = true;
            }
            let _ = tx.send(u64::MAX);
        });
        Ok(PodWatch {
            seen,
            changed,
            task,
        })
    }

    /// Waits until `done` holds for what the watch has seen, or fails after `patience`.
    async fn until<T>(
        &mut self,
        what: &str,
        patience: Duration,
        mut done: impl FnMut(&Seen) -> Option<T>,
    ) -> Result<T> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            self.changed.borrow_and_update();
            {
                let seen = self
                    .seen
                    .lock()
                    .map_err(|_| anyhow!("watch state poisoned"))?;
                if let Some(t) = done(&seen) {
                    return Ok(t);
                }
                if seen.ended {
                    bail!("the pod watch ended while waiting for {what}");
                }
            }
            match tokio::time::timeout_at(deadline, self.changed.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => bail!("the pod watch ended while waiting for {what}"),
                Err(_) => bail!(
                    "timed out after {} s waiting for {what}",
                    patience.as_secs()
                ),
            }
        }
    }
}

fn pod(name: &str, node: &str) -> Value {
    json!({ "metadata": { "name": name },
            "spec": { "nodeName": node, "terminationGracePeriodSeconds": 0,
                      "containers": [{ "name": "sleep", "image": IMAGE, "command": ["sleep", "3600"] }] } })
}

async fn create_pod(client: &HttpsClient, server: &Server, name: &str, node: &str) -> Result<()> {
    let path = format!("/api/v1/namespaces/{NAMESPACE}/pods");
    let (code, body) = request(client, server, "POST", &path, Some(&pod(name, node))).await?;
    if code != 201 {
        bail!(
            "create pod {name}: {code} {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(())
}

/// Deletes `names` and waits until the API has removed them and the agent has torn them down.
/// Returns the seconds that took.
async fn delete_all(
    cluster: &Cluster,
    client: &HttpsClient,
    watch: &mut PodWatch,
    names: &[String],
) -> Result<f64> {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for name in names {
        let (client, server, name) = (client.clone(), Arc::clone(&cluster.server), name.clone());
        tasks.spawn(async move {
            let path = format!("/api/v1/namespaces/{NAMESPACE}/pods/{name}");
            let (code, body) = request(&client, &server, "DELETE", &path, None).await?;
            if code != 200 && code != 202 && code != 404 {
                bail!(
                    "delete pod {name}: {code} {}",
                    String::from_utf8_lossy(&body)
                );
            }
            Ok::<(), anyhow::Error>(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    let wanted: HashSet<&String> = names.iter().collect();
    watch
        .until("the pods to be deleted", PATIENCE, |seen| {
            wanted
                .iter()
                .all(|n| seen.deleted.contains(*n))
                .then_some(())
        })
        .await?;
    // With a zero grace period the API removes the pods at once; the agent tears them down
    // after that, so wait for it too.
    let deadline = Instant::now() + PATIENCE;
    while !cluster.idle() {
        if Instant::now() > deadline {
            bail!(
                "the runtime still holds sandboxes, containers or shims after the pods were deleted"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(started.elapsed().as_secs_f64())
}

fn summary(samples_ms: &mut [f64]) -> Value {
    samples_ms.sort_by(f64::total_cmp);
    let mean = samples_ms.iter().sum::<f64>() / samples_ms.len().max(1) as f64;
    json!({
        "count": samples_ms.len(),
        "p50_ms": round(percentile(samples_ms, 50.0), 1),
        "p99_ms": round(percentile(samples_ms, 99.0), 1),
        "mean_ms": round(mean, 1),
        "max_ms": round(samples_ms.last().copied().unwrap_or(f64::NAN), 1),
    })
}

/// `utime + stime` (and the same for reaped children) of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    let rest = stat
        .rsplit_once(") ")
        .map(|(_, r)| r)
        .context("parse /proc/pid/stat")?;
    // After "pid (comm) ": state is field 3, utime 14, stime 15, cutime 16, cstime 17.
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    if f.len() < 4 {
        bail!("short /proc/{pid}/stat");
    }
    Ok((f[0] + f[1], f[2] + f[3]))
}

fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64)
}

/// All phases for one runtime.
async fn bench_runtime(bin: &Path, runtime: &str, image: &Path) -> Result<Value> {
    let sequential: usize = env_or("WINDLASS_BENCH_KUBELET_SEQUENTIAL", SEQUENTIAL)?;
    let burst: usize = env_or("WINDLASS_BENCH_KUBELET_BURST", BURST)?;
    let idle_seconds: u64 = env_or("WINDLASS_BENCH_KUBELET_IDLE_SECONDS", IDLE_SECONDS)?;
    let bench_started = Instant::now();
    let mut cluster = Cluster::start(bin, runtime, image)?;
    let client = client(&cluster.server.ca)?;
    eprintln!(
        "bench kubelet [{runtime}]: node namespace {}, agent pid {}",
        cluster.node.name(),
        cluster.agent.pid().unwrap_or(0)
    );
    cluster.wait_ready(&client).await?;
    let node = cluster.node_name.clone();
    create_namespace(&client, &cluster.server, NAMESPACE).await?;
    let mut watch = PodWatch::open(&client, &cluster.server).await?;

    // Warm-up: the first pod creates the bridge and the kubepods cgroups and faults the
    // binaries in; timed, but reported apart.
    let sent = Instant::now();
    create_pod(&client, &cluster.server, "warmup", &node).await?;
    let first = watch
        .until("the warm-up pod to be Running", PATIENCE, |s| {
            s.running.get("warmup").copied()
        })
        .await
        .with_context(|| cluster.log_tail())?;
    let first_ms = first.duration_since(sent).as_secs_f64() * 1000.0;
    delete_all(&cluster, &client, &mut watch, &["warmup".to_string()]).await?;
    eprintln!("  warm-up pod Running in {first_ms:.1} ms");

    // One at a time.
    let mut seq_ms = Vec::new();
    let mut seq_samples = Vec::new();
    let mut names = Vec::new();
    for i in 0..sequential {
        let name = format!("seq-{i:03}");
        let created_unix = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
        let sent = Instant::now();
        create_pod(&client, &cluster.server, &name, &node).await?;
        let running = watch
            .until(&format!("pod {name} to be Running"), PATIENCE, |s| {
                s.running.get(&name).copied()
            })
            .await
            .with_context(|| cluster.log_tail())?;
        let ms = running.duration_since(sent).as_secs_f64() * 1000.0;
        seq_ms.push(ms);
        seq_samples.push(json!({ "pod": name, "created_unix": round(created_unix, 6), "running_ms": round(ms, 2) }));
        names.push(name);
    }
    let sequential_summary = summary(&mut seq_ms);
    eprintln!("  {sequential} pods one at a time: {sequential_summary}");
    let seq_delete_s = delete_all(&cluster, &client, &mut watch, &names).await?;

    // All at once.
    let names: Vec<String> = (0..burst).map(|i| format!("burst-{i:03}")).collect();
    let sent_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let burst_started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for name in &names {
        let (client, server, name, node, sent_at) = (
            client.clone(),
            Arc::clone(&cluster.server),
            name.clone(),
            node.clone(),
            Arc::clone(&sent_at),
        );
        tasks.spawn(async move {
            let sent = Instant::now();
            create_pod(&client, &server, &name, &node).await?;
            sent_at
                .lock()
                .map_err(|_| anyhow!("poisoned"))?
                .insert(name, sent);
            Ok::<(), anyhow::Error>(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    let created_s = burst_started.elapsed().as_secs_f64();
    let last = watch
        .until(&format!("all {burst} pods to be Running"), PATIENCE, |s| {
            names
                .iter()
                .map(|n| s.running.get(n).copied())
                .collect::<Option<Vec<Instant>>>()
                .and_then(|t| t.into_iter().max())
        })
        .await
        .with_context(|| cluster.log_tail())?;
    let all_running_s = last.duration_since(burst_started).as_secs_f64();
    let mut burst_ms: Vec<f64> = {
        let seen = watch.seen.lock().map_err(|_| anyhow!("poisoned"))?;
        let sent_at = sent_at.lock().map_err(|_| anyhow!("poisoned"))?;
        names
            .iter()
            .filter_map(|n| {
                Some(
                    seen.running
                        .get(n)?
                        .duration_since(*sent_at.get(n)?)
                        .as_secs_f64()
                        * 1000.0,
                )
            })
            .collect()
    };
    let burst_summary = summary(&mut burst_ms);
    eprintln!(
        "  {burst} pods at once: created in {created_s:.2} s, all Running in {all_running_s:.2} s; {burst_summary}"
    );

    // Steady state with the pods running.
    tokio::time::sleep(SETTLE).await;
    let pid = cluster.agent.pid().context("agent not running")?;
    if let Some(status) = cluster.agent.exited() {
        bail!(
            "windlass agent exited ({status}):\n{}",
            cluster.agent.log_tail()
        );
    }
    let rss_mib = status_kib(pid, "VmRSS:")? / 1024.0;
    let hwm_mib = status_kib(pid, "VmHWM:")? / 1024.0;
    let threads = status_kib(pid, "Threads:")?;
    let shims = cluster.shims();
    let containerd_pid = cluster.containerd.as_ref().and_then(Containerd::pid);
    let containerd_rss_mib = match containerd_pid {
        Some(pid) => Some(status_kib(pid, "VmRSS:")? / 1024.0),
        None => None,
    };
    let containerd0 = containerd_pid.map(cpu_ticks).transpose()?;
    let shim_rss_mib = shims
        .iter()
        .filter_map(|p| status_kib(*p, "VmRSS:").ok())
        .sum::<f64>()
        / 1024.0;
    let shim_ticks = |shims: &[u32]| -> u64 {
        shims
            .iter()
            .filter_map(|p| cpu_ticks(*p).ok())
            .map(|(own, _)| own)
            .sum()
    };
    let (own0, children0) = cpu_ticks(pid)?;
    let shims0 = shim_ticks(&shims);
    let idle_started = Instant::now();
    tokio::time::sleep(Duration::from_secs(idle_seconds)).await;
    let (own1, children1) = cpu_ticks(pid)?;
    let shims1 = shim_ticks(&shims);
    let containerd1 = containerd_pid.map(cpu_ticks).transpose()?;
    let wall = idle_started.elapsed().as_secs_f64();
    let tick = clock_ticks();
    let percent = |ticks: u64| ticks as f64 / tick / wall * 100.0;
    let cpu_percent = percent(own1 - own0);
    let children_cpu_percent = percent(children1.saturating_sub(children0));
    let shims_cpu_percent = percent(shims1.saturating_sub(shims0));
    let containerd_cpu_percent = containerd0
        .zip(containerd1)
        .map(|((own0, _), (own1, _))| percent(own1.saturating_sub(own0)));
    if let (Some(rss), Some(cpu)) = (containerd_rss_mib, containerd_cpu_percent) {
        eprintln!("  containerd: RSS {rss:.1} MiB, {cpu:.2}% CPU");
    }
    eprintln!(
        "  with {burst} pods: agent RSS {rss_mib:.1} MiB (peak {hwm_mib:.1}), {threads} threads; \
         CPU over {wall:.0} s: agent {cpu_percent:.2}% of a core, its children {children_cpu_percent:.2}%; \
         {} shims: {shim_rss_mib:.1} MiB RSS, {shims_cpu_percent:.2}% CPU",
        shims.len()
    );
    let burst_delete_s = delete_all(&cluster, &client, &mut watch, &names).await?;
    eprintln!(
        "  deleted: {sequential} pods in {seq_delete_s:.2} s, {burst} pods in {burst_delete_s:.2} s"
    );
    drop(watch);
    drop(cluster);
    Ok(json!({
        "runtime": runtime,
        "warmup_pod_running_ms": round(first_ms, 1),
        "sequential": sequential_summary,
        "sequential_samples": seq_samples,
        "burst": burst_summary,
        "burst_pods": burst,
        "burst_created_seconds": round(created_s, 3),
        "burst_all_running_seconds": round(all_running_s, 2),
        "agent_rss_mib": round(rss_mib, 1),
        "agent_peak_rss_mib": round(hwm_mib, 1),
        "agent_threads": threads,
        "idle_seconds": round(wall, 1),
        "agent_idle_cpu_percent": round(cpu_percent, 3),
        "agent_children_idle_cpu_percent": round(children_cpu_percent, 3),
        "shims": shims.len(),
        "shims_rss_mib": round(shim_rss_mib, 1),
        "shims_idle_cpu_percent": round(shims_cpu_percent, 3),
        "containerd_rss_mib": containerd_rss_mib.map(|v| round(v, 1)),
        "containerd_idle_cpu_percent": containerd_cpu_percent.map(|v| round(v, 3)),
        "delete_sequential_seconds": round(seq_delete_s, 2),
        "delete_burst_seconds": round(burst_delete_s, 2),
        "runtime_wall_seconds": round(bench_started.elapsed().as_secs_f64(), 1),
    }))
}

/// Why `runtime` cannot be benchmarked with this build and this bench, if it cannot.
fn unsupported(bin: &Path, runtime: &str) -> Option<String> {
    if runtime != "cri" {
        return None;
    }
    let help = Command::new(bin.join("windlass"))
        .args(["agent", "--help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if !help.contains("--container-runtime-endpoint") {
        return Some("`windlass agent --runtime cri` is not built yet".to_string());
    }
    ["containerd", "ctr", "containerd-shim-runc-v2"]
        .into_iter()
        .find(|tool| containerd::which(tool).is_err())
        .map(|tool| format!("{tool} is not installed (`cargo xtask deps`)"))
}

/// Every runtime in turn. `oci` must succeed; another runtime that cannot run (or fails) is
/// recorded with the reason, so the `oci` figures are still written.
async fn bench(bin: &Path, image: &Path, runtimes: &[String]) -> Result<Vec<Value>> {
    let mut results = Vec::new();
    for runtime in runtimes {
        eprintln!("bench kubelet: runtime {runtime}");
        if let Some(reason) = unsupported(bin, runtime) {
            eprintln!("  skipped: {reason}");
            results.push(json!({ "runtime": runtime, "skipped": reason }));
            continue;
        }
        match bench_runtime(bin, runtime, image).await {
            Ok(result) => results.push(result),
            Err(e) if runtime != "oci" => {
                let reason = format!("failed: {e:#}");
                eprintln!("  {reason}");
                results.push(json!({ "runtime": runtime, "skipped": reason }));
            }
            Err(e) => return Err(e.context(format!("runtime {runtime}"))),
        }
    }
    Ok(results)
}

fn verdict(met: bool) -> &'static str {
    if met { "MET" } else { "MISSED" }
}

fn markdown(results: &[Value]) -> String {
    let mut md = String::from(
        "| runtime | warm-up pod (ms) | one at a time p50 / p99 (ms) | 100 at once p50 / p99 (ms) | 100 all Running (s) | agent RSS, 100 pods (MiB) | agent idle CPU (% of a core) | containerd RSS (MiB) / idle CPU (%) |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        if let Some(reason) = r["skipped"].as_str() {
            md.push_str(&format!(
                "| {} | {} | | | | | | |\n",
                r["runtime"].as_str().unwrap_or(""),
                reason.lines().next().unwrap_or("")
            ));
            continue;
        }
        let containerd = match (
            r["containerd_rss_mib"].as_f64(),
            r["containerd_idle_cpu_percent"].as_f64(),
        ) {
            (Some(rss), Some(cpu)) => format!("{rss} / {cpu}"),
            _ => "-".to_string(),
        };
        md.push_str(&format!(
            "| {} | {} | {} / {} | {} / {} | {} | {} | {} | {containerd} |\n",
            r["runtime"].as_str().unwrap_or(""),
            r["warmup_pod_running_ms"],
            r["sequential"]["p50_ms"],
            r["sequential"]["p99_ms"],
            r["burst"]["p50_ms"],
            r["burst"]["p99_ms"],
            r["burst_all_running_seconds"],
            r["agent_rss_mib"],
            r["agent_idle_cpu_percent"],
        ));
    }
    md
}

fn targets(results: &[Value]) {
    for r in results.iter().filter(|r| r["skipped"].is_null()) {
        let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
        let runtime = r["runtime"].as_str().unwrap_or("");
        let checks = [
            (
                "one at a time p50 < 300 ms",
                f(&r["sequential"]["p50_ms"]) < TARGET_P50_MS,
            ),
            (
                "one at a time p99 < 1 s",
                f(&r["sequential"]["p99_ms"]) < TARGET_P99_MS,
            ),
            (
                "100 pods all Running < 20 s",
                f(&r["burst_all_running_seconds"]) < TARGET_BURST_S,
            ),
            (
                "agent RSS < 50 MiB",
                f(&r["agent_rss_mib"]) < TARGET_RSS_MIB,
            ),
            (
                "agent idle CPU < 1% of a core",
                f(&r["agent_idle_cpu_percent"]) < TARGET_CPU_PERCENT,
            ),
        ];
        for (what, met) in checks {
            println!("{runtime}: {what}: {}", verdict(met));
        }
    }
}

/// Blocks SIGINT and SIGTERM in this process and returns a receiver that fires when one comes.
/// Children start with an empty signal mask (the standard library resets it on spawn).
fn interrupts() -> Result<tokio::sync::oneshot::Receiver<()>> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block().context("block SIGINT and SIGTERM")?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        if let Ok(signal) = set.wait() {
            eprintln!("bench kubelet: {signal}; cleaning up");
            let _ = tx.send(());
        }
    });
    Ok(rx)
}

/// Builds the release binaries and the test image, runs the benchmark, writes the results.
pub fn run() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "the kubelet benchmark creates network namespaces, cgroups and containers: run \
             `cargo xtask bench kubelet` as root"
        );
    }
    crate::deps::ensure()?;
    let runtimes: Vec<String> = std::env::var("WINDLASS_BENCH_RUNTIMES")
        .unwrap_or_else(|_| RUNTIMES.into())
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if let Some(other) = runtimes
        .iter()
        .find(|r| !matches!(r.as_str(), "oci" | "cri"))
    {
        bail!("WINDLASS_BENCH_RUNTIMES: unknown runtime {other:?} (oci, cri)");
    }
    // WINDLASS_BENCH_KUBELET_SKIP_BUILD=1 reuses the release binaries already built (for
    // profiling runs while the sources change under the bench).
    if std::env::var_os("WINDLASS_BENCH_KUBELET_SKIP_BUILD").is_none() {
        paths::cargo(&["build", "--release", "--bins"])?;
    }
    crate::images::run()?;
    let bin = paths::target_dir().join("release");
    let image = paths::target_dir().join("images/busybox.tar");
    // Shims orphaned when the agent is killed come to the bench, which reaps them.
    nix::sys::prctl::set_child_subreaper(true).context("become a child subreaper")?;
    let interrupted = interrupts()?;

    let started = Instant::now();
    let runtime = tokio::runtime::Runtime::new()?;
    let results = runtime.block_on(async {
        tokio::select! {
            results = bench(&bin, &image, &runtimes) => results,
            _ = interrupted => Err(anyhow!("interrupted")),
        }
    })?;
    let seconds = started.elapsed().as_secs_f64();
    let out = paths::target_dir().join("bench");
    std::fs::create_dir_all(&out)?;
    let report = json!({
        "benchmark": "kubelet",
        "command": "cargo xtask bench kubelet",
        "seconds": round(seconds, 1),
        "result": results,
    });
    std::fs::write(
        out.join("kubelet.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let md = markdown(&results);
    std::fs::write(out.join("kubelet.md"), &md)?;
    println!("{md}");
    targets(&results);
    eprintln!("bench kubelet: {seconds:.0} s after the build");
    Ok(())
}
