//! runc containers for tests, kept apart from everything else on the machine.
//!
//! A [`Runc`] fixture owns a temp directory (`/tmp/<prefix>-runc*`) holding a private runc state
//! root (`--root`), so a test never sees or touches other runc containers, plus bundles, state
//! and log directories for the test to use. Bundles ([`Runc::bundle`]) are busybox root
//! filesystems (Debian's busybox-static with a symlink per applet) with a `config.json` from
//! `runc spec`, patched: the given `process.args`, `terminal: false`, and
//! `linux.cgroupsPath = /<prefix>/<name>`. The spec's namespaces are kept, so every container gets
//! new PID, mount, network, IPC and UTS namespaces.
//!
//! Creating the fixture makes the test process a child subreaper: a container whose supervisor
//! died is re-parented to the test, which reaps it, instead of to PID 1 (which on some machines
//! never reaps). Dropping the fixture, also while unwinding from a panic, kills and deletes every
//! container under its root, reaps their init processes if they became the test's children,
//! removes `/<prefix>` from every cgroup hierarchy (runc with cgroupfs makes one per controller
//! and `runc delete` leaves the parent) and the directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use serde_json::{Value, json};

use crate::{HarnessError, io_err, prereq};

/// How long a container may take to stop after SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A private runc root and the directory around it; see the module docs.
#[derive(Debug)]
pub struct Runc {
    prefix: String,
    bin: PathBuf,
    dir: tempfile::TempDir,
}

/// What `runc state` says about a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    /// `created`, `running`, `paused` or `stopped`.
    pub status: String,
    /// The init process's pid (0 once stopped).
    pub pid: u32,
}

/// A change to a bundle's `config.json`.
type Patch<'a> = Box<dyn FnOnce(&mut Value) + 'a>;

/// Builds a [`Bundle`]; see [`Runc::bundle`].
pub struct BundleBuilder<'a> {
    runc: &'a Runc,
    name: String,
    args: Vec<String>,
    env: Vec<String>,
    patches: Vec<Patch<'a>>,
}

impl std::fmt::Debug for BundleBuilder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleBuilder")
            .field("name", &self.name)
            .field("args", &self.args)
            .field("env", &self.env)
            .field("patches", &self.patches.len())
            .finish()
    }
}

/// An OCI bundle on disk, under the fixture's directory.
#[derive(Debug, Clone)]
pub struct Bundle {
    id: String,
    path: PathBuf,
}

impl Bundle {
    /// The container id to use for it: `<prefix>-<name>`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The bundle directory (with `config.json` and `rootfs/`).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Runc {
    /// A fresh fixture with a unique prefix; fails the test (naming `cargo xtask deps`) when
    /// runc is missing or not running as root.
    pub fn new() -> Result<Runc, HarnessError> {
        prereq::require_root();
        let bin = prereq::require_tool("runc");
        let prefix = crate::prefix::unique();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{prefix}-runc"))
            .tempdir()
            .map_err(io_err("create", "runc fixture directory"))?;
        for sub in ["root", "bundles", "state", "logs"] {
            let path = dir.path().join(sub);
            std::fs::create_dir(&path).map_err(io_err("create", path.display()))?;
        }
        nix::sys::prctl::set_child_subreaper(true)
            .map_err(|e| HarnessError::Setup(format!("failed to become a subreaper: {e}")))?;
        Ok(Runc { prefix, bin, dir })
    }

    /// The fixture's unique prefix (`wlt` + 5 hex digits).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The runc binary.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// runc's state root (`--root`).
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// A directory for a container's state files (`<dir>/state/<name>`, not created).
    pub fn state_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join("state").join(name)
    }

    /// A directory for a container's logs (`<dir>/logs/<name>`, not created).
    pub fn log_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join("logs").join(name)
    }

    /// The cgroup containers of this fixture go under, in every hierarchy: `/<prefix>`.
    pub fn cgroup_parent(&self) -> String {
        format!("/{}", self.prefix)
    }

    /// Starts a busybox bundle named `name` (container id `<prefix>-<name>`).
    pub fn bundle(&self, name: &str) -> BundleBuilder<'_> {
        BundleBuilder {
            runc: self,
            name: name.to_string(),
            args: vec!["/bin/sh".into()],
            env: Vec::new(),
            patches: Vec::new(),
        }
    }

    /// `runc --root <root>`, to add a subcommand to.
    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.bin);
        command.arg("--root").arg(self.root());
        command
    }

    fn run(&self, args: &[&str]) -> Result<Output, HarnessError> {
        let output = self
            .command()
            .args(args)
            .output()
            .map_err(io_err("run", format!("runc {}", args.join(" "))))?;
        if output.status.success() {
            Ok(output)
        } else {
            Err(HarnessError::Setup(format!(
                "runc {} failed ({}): {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )))
        }
    }

    /// The ids of every container under the fixture's root (`runc list -q`).
    pub fn list(&self) -> Result<Vec<String>, HarnessError> {
        let output = self.run(&["list", "-q"])?;
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// `runc state <id>`, or `None` when no such container exists.
    pub fn state(&self, id: &str) -> Result<Option<ContainerState>, HarnessError> {
        let output = self
            .command()
            .args(["state", id])
            .output()
            .map_err(io_err("run", "runc state"))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return if stderr.contains("does not exist") {
                Ok(None)
            } else {
                Err(HarnessError::Setup(format!(
                    "runc state {id} failed: {}",
                    stderr.trim()
                )))
            };
        }
        let state: Value = serde_json::from_slice(&output.stdout)
            .map_err(|e| HarnessError::Setup(format!("runc state {id} printed bad JSON: {e}")))?;
        Ok(Some(ContainerState {
            status: state["status"].as_str().unwrap_or_default().to_string(),
            pid: state["pid"]
                .as_u64()
                .and_then(|p| u32::try_from(p).ok())
                .unwrap_or(0),
        }))
    }

    /// `runc kill <id> <signal>` (`KILL`, `TERM`, ...).
    pub fn kill(&self, id: &str, signal: &str) -> Result<(), HarnessError> {
        self.run(&["kill", id, signal]).map(drop)
    }

    /// Stops and deletes a container: SIGKILL, wait until it stopped, `runc delete` (faster than
    /// `runc delete --force`, which sleeps 100 ms after its SIGKILL). Reaps the init if it is
    /// the test's child.
    pub fn remove(&self, id: &str) -> Result<(), HarnessError> {
        let Some(state) = self.state(id)? else {
            return Ok(());
        };
        if state.status != "stopped" {
            // It may stop on its own between state and kill.
            let _ = self.kill(id, "KILL");
            let deadline = Instant::now() + STOP_TIMEOUT;
            while self.state(id)?.is_some_and(|s| s.status != "stopped") {
                if Instant::now() > deadline {
                    return Err(HarnessError::Setup(format!(
                        "container {id} did not stop within {STOP_TIMEOUT:?} of SIGKILL"
                    )));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if self.run(&["delete", id]).is_err() {
            self.run(&["delete", "--force", id])?;
        }
        if state.pid != 0 {
            reap_if_child(state.pid);
        }
        Ok(())
    }
}

impl Drop for Runc {
    fn drop(&mut self) {
        match self.list() {
            Ok(ids) => {
                for id in ids {
                    if let Err(e) = self.remove(&id) {
                        eprintln!("runc fixture: {e}");
                    }
                }
            }
            Err(e) => eprintln!("runc fixture: {e}"),
        }
        if let Err(e) = crate::cgroup::remove_everywhere(&self.cgroup_parent()) {
            eprintln!("runc fixture: {e}");
        }
    }
}

/// Waits (up to 10 s) for `pid` if it is a child of this process, as processes re-parented to
/// the test (a subreaper) are; returns at once when it is not.
pub fn reap_if_child(pid: u32) {
    let Ok(raw) = i32::try_from(pid) else {
        return;
    };
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        match waitpid(Pid::from_raw(raw), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(nix::errno::Errno::EINTR) => {}
            // Reaped, not our child (ECHILD), or given up.
            _ => return,
        }
    }
}

impl<'a> BundleBuilder<'a> {
    /// `process.args` (default `["/bin/sh"]`).
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args = args.iter().map(|a| a.to_string()).collect();
        self
    }

    /// `/bin/sh -c <script>`.
    pub fn script(self, script: &str) -> Self {
        self.args(&["/bin/sh", "-c", script])
    }

    /// Adds `NAME=value` to `process.env`.
    pub fn env(mut self, name_value: &str) -> Self {
        self.env.push(name_value.to_string());
        self
    }

    /// Changes the generated `config.json` further before it is written.
    pub fn patch(mut self, patch: impl FnOnce(&mut Value) + 'a) -> Self {
        self.patches.push(Box::new(patch));
        self
    }

    /// Writes the bundle: `<dir>/bundles/<name>/{rootfs,config.json}`.
    pub fn build(self) -> Result<Bundle, HarnessError> {
        let busybox = crate::oci_image::require_static_busybox();
        let path = self.runc.dir.path().join("bundles").join(&self.name);
        let rootfs = path.join("rootfs");
        for sub in ["bin", "dev", "proc", "sys", "etc", "tmp", "run", "var"] {
            let dir = rootfs.join(sub);
            std::fs::create_dir_all(&dir).map_err(io_err("create", dir.display()))?;
        }
        let target = rootfs.join("bin/busybox");
        std::fs::copy(&busybox, &target).map_err(io_err("copy busybox to", target.display()))?;
        for applet in busybox_applets(&busybox)? {
            if applet == "busybox" {
                continue;
            }
            let link = rootfs.join("bin").join(&applet);
            std::os::unix::fs::symlink("busybox", &link).map_err(io_err("link", link.display()))?;
        }

        let spec = Command::new(&self.runc.bin)
            .arg("spec")
            .arg("--bundle")
            .arg(&path)
            .output()
            .map_err(io_err("run", "runc spec"))?;
        if !spec.status.success() {
            return Err(HarnessError::Setup(format!(
                "runc spec failed: {}",
                String::from_utf8_lossy(&spec.stderr).trim()
            )));
        }
        let config_path = path.join("config.json");
        let text = std::fs::read(&config_path).map_err(io_err("read", config_path.display()))?;
        let mut config: Value = serde_json::from_slice(&text)
            .map_err(|e| HarnessError::Setup(format!("runc spec wrote bad JSON: {e}")))?;
        config["process"]["args"] = json!(self.args);
        config["process"]["terminal"] = json!(false);
        if let Some(env) = config["process"]["env"].as_array_mut() {
            env.extend(self.env.iter().map(|e| json!(e)));
        }
        config["linux"]["cgroupsPath"] = json!(format!("/{}/{}", self.runc.prefix, self.name));
        for patch in self.patches {
            patch(&mut config);
        }
        let text = serde_json::to_vec_pretty(&config)
            .map_err(|e| HarnessError::Setup(format!("cannot encode config.json: {e}")))?;
        std::fs::write(&config_path, text).map_err(io_err("write", config_path.display()))?;
        Ok(Bundle {
            id: format!("{}-{}", self.runc.prefix, self.name),
            path,
        })
    }
}

/// The applets `busybox --list` names.
fn busybox_applets(busybox: &Path) -> Result<Vec<String>, HarnessError> {
    let output = Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(io_err("run", format!("{} --list", busybox.display())))?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && !a.contains('/'))
        .map(str::to_string)
        .collect())
}
