//! A real `windlass agent` (the kubelet) for one test, inside a node's network namespace.
//!
//! The agent reaches the test's API server (on the host's loopback) through a forwarder: a
//! listener on `127.0.0.1:<server port>` inside the node namespace whose connections are relayed
//! to the same port on the host's loopback, so the admin kubeconfig works unchanged and no
//! traffic leaves loopback. Everything the agent makes lives under the test's own data dir, runc
//! root, cgroup root (`/<prefix>`), BPF pin directory (`--bpf-root /sys/fs/bpf/<prefix>-bpf`) and
//! pod log dir. Dropping the fixture (also while unwinding) kills the agent and then removes what
//! it left: containers (through the private runc root), overlay and namespace mounts under the
//! data dir, the cgroup subtree in every hierarchy (with the processes a test ran "from the
//! node" in it) and the pin directory (the pinned links go with it, which detaches the proxy's
//! programs).
//!
//! A client "from the node" ([`TestAgent::node_client_output`], [`TestAgent::spawn_node_client`])
//! runs in the node's network namespace and in the agent's cgroup v2 subtree
//! (`<cgroup root>/clients`), where the proxy's socket hooks apply to it.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::apiserver::{TestServer, windlass_bin};
use crate::bpffs::PinDir;
use crate::topology::Node;
use crate::{HarnessError, io_err, prefix, prereq};

/// Relays connections made inside a namespace to the host's loopback.
#[derive(Debug)]
pub struct LoopbackForwarder {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LoopbackForwarder {
    /// Listens on `127.0.0.1:port` inside `node` and relays to `127.0.0.1:port` on the host.
    pub fn start(node: &Node, port: u16) -> Result<Self, HarnessError> {
        let listener = node
            .ns
            .run(|| TcpListener::bind(("127.0.0.1", port)))?
            .map_err(io_err("listen in the node on", port))?;
        listener
            .set_nonblocking(true)
            .map_err(io_err("configure", "forwarder"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((inside, _)) => {
                        let _ = inside.set_nonblocking(false);
                        if let Ok(outside) = TcpStream::connect(("127.0.0.1", port)) {
                            relay(inside, outside);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(LoopbackForwarder {
            stop,
            thread: Some(thread),
        })
    }
}

fn relay(a: TcpStream, b: TcpStream) {
    let pipe = |mut from: TcpStream, mut to: TcpStream| {
        std::thread::spawn(move || {
            let mut buf = [0u8; 16384];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = to.shutdown(Shutdown::Write);
        });
    };
    if let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) {
        pipe(a, b2);
        pipe(b, a2);
    }
}

impl Drop for LoopbackForwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How a test agent is started.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// CrashLoopBackOff's first delay in seconds (kubelet: 10).
    pub backoff_base_seconds: f64,
    /// Extra `windlass agent` flags (`--runtime cri --container-runtime-endpoint ...`).
    pub extra_args: Vec<String>,
    /// Join with `--server URL --token T` (this token) instead of the admin kubeconfig.
    pub join_token: Option<String>,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            backoff_base_seconds: 10.0,
            extra_args: Vec::new(),
            join_token: None,
        }
    }
}

/// A running `windlass agent` in a node namespace.
#[derive(Debug)]
pub struct TestAgent {
    child: Option<Child>,
    args: Vec<String>,
    data: tempfile::TempDir,
    cgroup_root: String,
    node_ns: PathBuf,
    node_name: String,
    // Dropped after `cleanup` has killed the agent: removing it unpins (and so detaches) the
    // proxy's maps and links.
    pins: PinDir,
    _forwarder: Option<LoopbackForwarder>,
}

impl TestAgent {
    /// Starts an agent for `node` against `server`, with CrashLoopBackOff starting at
    /// `backoff_base_seconds`.
    pub fn start(
        server: &TestServer,
        node: &Node,
        backoff_base_seconds: f64,
    ) -> Result<Self, HarnessError> {
        Self::start_with(
            server,
            node,
            AgentOptions {
                backoff_base_seconds,
                ..Default::default()
            },
        )
    }

    /// Starts an agent for `node` against `server` with `options`.
    pub fn start_with(
        server: &TestServer,
        node: &Node,
        options: AgentOptions,
    ) -> Result<Self, HarnessError> {
        let backoff_base_seconds = options.backoff_base_seconds;
        prereq::require_root();
        prereq::require_tool("runc");
        let port = server
            .url()
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok())
            .ok_or_else(|| HarnessError::Setup(format!("no port in {}", server.url())))?;
        // A server inside the topology's fabric is reached over it; one on the host's loopback
        // through a forwarder.
        let forwarder = match server.netns() {
            Some(_) => None,
            None => Some(LoopbackForwarder::start(node, port)?),
        };
        let prefix = prefix::unique();
        let data = tempfile::Builder::new()
            .prefix(&format!("{prefix}-agent"))
            .tempdir()
            .map_err(io_err("create", "agent data dir"))?;
        let cgroup_root = format!("/{prefix}");
        let pins = PinDir::create(&format!("{prefix}-bpf"))?;
        let node_name = node.ns.name().to_string();
        let bin_dir = windlass_bin()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let credentials: Vec<String> = match &options.join_token {
            Some(token) => vec![
                "--server".into(),
                server.url(),
                "--token".into(),
                token.clone(),
            ],
            None => vec![
                "--kubeconfig".into(),
                server.kubeconfig().display().to_string(),
            ],
        };
        let args: Vec<String> = ["agent".to_string()]
            .into_iter()
            .chain(credentials)
            .chain([
                "--node-name".into(),
                node_name.clone(),
                "--node-ip".into(),
                node.underlay_ip.to_string(),
                "--data-dir".into(),
                data.path().display().to_string(),
                "--cgroup-root".into(),
                cgroup_root.clone(),
                "--bpf-root".into(),
                pins.path().display().to_string(),
                "--pod-log-dir".into(),
                data.path().join("logs").display().to_string(),
                "--shim".into(),
                bin_dir.join("windlass-shim").display().to_string(),
                "--cni-plugin".into(),
                bin_dir.join("windlass-cni").display().to_string(),
                "--backoff-base-seconds".into(),
                backoff_base_seconds.to_string(),
            ])
            .chain(options.extra_args)
            .collect();
        // Shims orphaned by a killed agent come to the test, which reaps them.
        let _ = nix::sys::prctl::set_child_subreaper(true);
        let mut agent = TestAgent {
            child: None,
            args,
            data,
            cgroup_root,
            node_ns: node.ns.path().to_path_buf(),
            node_name,
            pins,
            _forwarder: forwarder,
        };
        agent.spawn()?;
        Ok(agent)
    }

    fn spawn(&mut self) -> Result<(), HarnessError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.path().join("agent.log"))
            .map_err(io_err("open", "agent.log"))?;
        let mut command = Command::new(windlass_bin());
        command
            .args(&self.args)
            .env("RUST_LOG", "info,windlass=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let ns = crate::NetNs::open(&self.node_ns)?;
        let child = ns
            .run(|| command.spawn())?
            .map_err(io_err("start", windlass_bin().display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// The Node's name.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The agent's data dir.
    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    /// The agent's cgroup root (`/<prefix>`).
    pub fn cgroup_root(&self) -> &str {
        &self.cgroup_root
    }

    /// The agent's `--bpf-root` (a test-owned directory on bpffs); the agent pins its maps and
    /// links under `<bpf root>/<node name>/`.
    pub fn bpf_root(&self) -> &Path {
        self.pins.path()
    }

    /// The cgroup v2 directory that clients "from the node" run in:
    /// `<v2 mount>/<cgroup root>/clients`, inside the subtree the agent's socket hooks cover.
    pub fn clients_cgroup(&self) -> Result<PathBuf, HarnessError> {
        Ok(crate::cgroup::v2_mount()?
            .join(self.cgroup_root.trim_start_matches('/'))
            .join("clients"))
    }

    /// `program args...` as a client on the node: started in the node's network namespace, it
    /// moves itself into [`TestAgent::clients_cgroup`] (created if missing) before it execs, so
    /// its sockets are the node's sockets as the proxy sees them. Not started yet; stdin is
    /// null and stdout and stderr are piped unless the caller changes them.
    fn node_client_command(&self, program: &Path, args: &[&str]) -> Result<Command, HarnessError> {
        let cgroup = self.clients_cgroup()?;
        std::fs::create_dir_all(&cgroup).map_err(io_err("create cgroup", cgroup.display()))?;
        let procs = cgroup.join("cgroup.procs");
        // The shell writes its own pid ("0") into cgroup.procs and then becomes the program, so
        // the program never runs outside the cgroup.
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(r#"echo 0 > "$0" && exec "$@""#)
            .arg(&procs)
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Ok(command)
    }

    /// Runs `program args...` as a client on the node (in its network namespace and in
    /// [`TestAgent::clients_cgroup`]) and waits for it. Whatever it leaves running is killed with the agent's cgroups on drop.
    pub fn node_client_output(
        &self,
        program: &Path,
        args: &[&str],
    ) -> Result<Output, HarnessError> {
        let mut command = self.node_client_command(program, args)?;
        let ns = crate::NetNs::open(&self.node_ns)?;
        ns.run(|| command.output())?
            .map_err(io_err("run on the node", program.display()))
    }

    /// Starts `program args...` as a client on the node with stdin, stdout and stderr piped (a
    /// held-open session). It is killed with the agent's cgroups on drop, also after a panic.
    pub fn spawn_node_client(&self, program: &Path, args: &[&str]) -> Result<Child, HarnessError> {
        let mut command = self.node_client_command(program, args)?;
        command.stdin(Stdio::piped());
        let ns = crate::NetNs::open(&self.node_ns)?;
        ns.run(|| command.spawn())?
            .map_err(io_err("start on the node", program.display()))
    }

    /// Where pod logs go.
    pub fn pod_log_dir(&self) -> PathBuf {
        self.data.path().join("logs")
    }

    /// The agent's own log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("agent.log")).unwrap_or_default()
    }

    /// Whether the agent process has exited (it is reaped if so).
    pub fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    /// The agent's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the agent with SIGKILL, leaving its pods' shims running.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the agent again with the same flags.
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.kill9();
        self.spawn()
    }

    /// Imports an OCI archive into the agent's image store with `windlass image import`.
    pub fn import_image(&self, archive: &Path) -> Result<(), HarnessError> {
        let out = Command::new(windlass_bin())
            .args(["image", "import", "--data-dir"])
            .arg(self.data.path())
            .arg(archive)
            .output()
            .map_err(io_err("run", "windlass image import"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(HarnessError::Setup(format!(
                "windlass image import failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )))
        }
    }

    fn cleanup(&mut self) {
        self.kill9();
        remove_node_state(self.data.path(), &self.cgroup_root);
    }
}

/// Removes what an agent with data dir `data` and cgroup root `cgroup_root` left running or
/// mounted: its runc containers, the mounts under `data` (overlay rootfs, pinned namespaces,
/// tmpfs volumes) and its cgroups. For clean-up after a test, whatever state it ended in.
pub fn remove_node_state(data: &Path, cgroup_root: &str) {
    let runc_root = data.join("runc");
    if runc_root.is_dir() {
        let list = Command::new("runc")
            .arg("--root")
            .arg(&runc_root)
            .args(["list", "-q"])
            .output();
        if let Ok(list) = list {
            for id in String::from_utf8_lossy(&list.stdout).lines() {
                let _ = Command::new("runc")
                    .arg("--root")
                    .arg(&runc_root)
                    .args(["delete", "--force", id])
                    .output();
            }
        }
    }
    let data = data.display().to_string();
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
    let _ = crate::cgroup::remove_everywhere(cgroup_root);
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- agent log ---\n{}", self.log());
        }
        self.cleanup();
    }
}
