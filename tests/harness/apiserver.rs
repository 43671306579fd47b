//! A real `windlass server` process for one test: its own data dir and loopback port, SQLite or
//! a test etcd behind it, killed on drop. Clients are the real ones: kubectl (see
//! [`crate::prereq::kubectls`]) and curl.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::etcd::EtcdServer;
use crate::{HarnessError, io_err, prefix, prereq};

/// Which store the server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded SQLite store.
    Sqlite,
    /// A test etcd started for this server.
    Etcd,
}

/// The `windlass` binary under test: `WINDLASS_BIN`, or `target/debug/windlass` (which
/// `cargo xtask test` builds before the suite).
pub fn windlass_bin() -> PathBuf {
    crate::prereq::workspace_binary("windlass", "WINDLASS_BIN")
}

/// A running `windlass server`.
#[derive(Debug)]
pub struct TestServer {
    child: Option<Child>,
    addr: SocketAddr,
    data: tempfile::TempDir,
    backend: Backend,
    etcd: Option<EtcdServer>,
    extra_args: Vec<String>,
    /// The network namespace the server runs in (a topology's fabric), or none for the host.
    netns: Option<PathBuf>,
}

/// The port a server inside a topology's fabric listens on (the namespace is the test's own).
pub const FABRIC_PORT: u16 = 6443;

fn free_port() -> Result<u16, HarnessError> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(io_err("bind", "127.0.0.1:0"))?;
    Ok(listener
        .local_addr()
        .map_err(io_err("read address of", "listener"))?
        .port())
}

impl TestServer {
    /// Starts a server on `backend` and waits until it serves.
    pub fn start(backend: Backend) -> Result<Self, HarnessError> {
        Self::start_with(backend, &[])
    }

    /// Starts a server with extra `windlass server` flags.
    pub fn start_with(backend: Backend, extra_args: &[&str]) -> Result<Self, HarnessError> {
        let data = tempfile::Builder::new()
            .prefix(&format!("{}-server", prefix::unique()))
            .tempdir()
            .map_err(io_err("create", "server data dir"))?;
        let etcd = match backend {
            Backend::Etcd => Some(EtcdServer::start()?),
            Backend::Sqlite => None,
        };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        let mut server = TestServer {
            child: None,
            addr,
            data,
            backend,
            etcd,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            netns: None,
        };
        server.spawn()?;
        Ok(server)
    }

    /// Starts a SQLite-backed server inside `netns` (a topology's fabric, see
    /// [`crate::topology::Topology::fabric_address`]) listening on `ip:`[`FABRIC_PORT`], so
    /// agents in node namespaces reach it, and it reaches their kubelets, over the fabric. Its
    /// certificate covers `ip` and `admin.kubeconfig` points at it; only processes inside the
    /// topology reach it, so [`TestServer::kubectl`] and [`TestServer::curl`] run there.
    pub fn start_in(netns: &crate::NetNs, ip: Ipv4Addr) -> Result<Self, HarnessError> {
        Self::start_in_with(netns, ip, &[])
    }

    /// [`TestServer::start_in`] with extra `windlass server` flags (shorter node lifecycle
    /// timeouts, for example).
    pub fn start_in_with(
        netns: &crate::NetNs,
        ip: Ipv4Addr,
        extra_args: &[&str],
    ) -> Result<Self, HarnessError> {
        let data = tempfile::Builder::new()
            .prefix(&format!("{}-server", prefix::unique()))
            .tempdir()
            .map_err(io_err("create", "server data dir"))?;
        let mut server = TestServer {
            child: None,
            addr: SocketAddr::from((ip, FABRIC_PORT)),
            data,
            backend: Backend::Sqlite,
            etcd: None,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            netns: Some(netns.path().to_path_buf()),
        };
        server.spawn()?;
        Ok(server)
    }

    /// The namespace the server runs in, when not the host's.
    pub fn netns(&self) -> Option<&Path> {
        self.netns.as_deref()
    }

    /// Runs `f` in the server's namespace (or here, for a server on the host's loopback).
    fn in_netns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        match &self.netns {
            None => f(),
            Some(path) => crate::NetNs::open(path)
                .and_then(|ns| ns.run(f))
                .unwrap_or_else(|e| panic!("enter the server's namespace: {e}")),
        }
    }

    fn spawn(&mut self) -> Result<(), HarnessError> {
        let _ = std::fs::remove_file(self.kubeconfig());
        let mut command = Command::new(windlass_bin());
        command
            .arg("server")
            .arg("--data-dir")
            .arg(self.data.path())
            .arg("--listen")
            .arg(self.addr.to_string())
            .args(&self.extra_args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(etcd) = &self.etcd {
            command.args(["--store", "etcd", "--etcd-endpoints", etcd.client_url()]);
        }
        let child = self
            .in_netns(|| command.spawn())
            .map_err(io_err("start", "windlass server"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let addr = self.addr;
            if self.kubeconfig().is_file()
                && self
                    .in_netns(|| TcpStream::connect_timeout(&addr, Duration::from_millis(200)))
                    .is_ok()
            {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(HarnessError::Setup(format!(
                    "windlass server exited at start: {status}"
                )));
            }
            if Instant::now() > deadline {
                return Err(HarnessError::Setup(
                    "windlass server did not start within 30 s".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Kills the server with SIGKILL (no chance to flush anything) and waits for it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same data dir, port and store.
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.kill9();
        self.spawn()
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.data.path().join("admin.kubeconfig")
    }

    /// The data dir.
    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    /// The store it runs on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The admin bearer token.
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data.path().join("pki/admin.token"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// `kubectl args...` against this server, not started yet.
    pub fn kubectl_command(&self, kubectl: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(kubectl);
        command
            .args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .env_remove("KUBERNETES_SERVICE_HOST");
        command
    }

    /// Runs `kubectl args...` against this server (in its namespace).
    pub fn kubectl(&self, kubectl: &Path, args: &[&str]) -> Output {
        let mut command = self.kubectl_command(kubectl, args);
        self.in_netns(|| command.output())
            .unwrap_or_else(|e| panic!("run {}: {e}", kubectl.display()))
    }

    /// Starts `command` in the server's namespace with stdout piped (for `kubectl logs -f`);
    /// it is killed with SIGKILL if the test process dies.
    pub fn spawn_in_netns(&self, mut command: Command) -> Child {
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        self.in_netns(|| command.spawn())
            .unwrap_or_else(|e| panic!("start {:?}: {e}", command.get_program()))
    }

    /// Runs kubectl and returns stdout, failing the test with stderr when it fails.
    pub fn kubectl_ok(&self, kubectl: &Path, args: &[&str]) -> String {
        let out = self.kubectl(kubectl, args);
        assert!(
            out.status.success(),
            "{} {} failed: {}",
            kubectl.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// One HTTPS request with curl (`-w` appends the status code on a last line).
    pub fn curl(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
        content_type: &str,
    ) -> (u16, String) {
        prereq::require_tool("curl");
        let ca = self.data.path().join("pki/ca.crt");
        let mut command = Command::new("curl");
        command
            .args(["-sS", "--max-time", "10", "-X", method, "--cacert"])
            .arg(&ca)
            .args([
                "-H",
                &format!("Content-Type: {content_type}"),
                "-w",
                "\n%{http_code}",
            ]);
        if let Some(token) = token {
            command.args(["-H", &format!("Authorization: Bearer {token}")]);
        }
        if let Some(body) = body {
            command.args(["--data-binary", body]);
        }
        command.arg(format!("{}{path}", self.url()));
        let out = self.in_netns(|| command.output()).expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
    }
}
