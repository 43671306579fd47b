//! Running CNI plugins the way a runtime does: libcni's per-plugin configuration built from a
//! conflist (`name` and `cniVersion` injected, `prevResult` chained, `runtimeConfig` from the
//! plugins' capabilities), containerd's environment (`CNI_ARGS` with `IgnoreUnknown=1` and the
//! `K8S_*` keys, `CNI_PATH`), the plugin exec'd inside the node's namespace.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use serde_json::{Value, json};
use windlass_cni::netlink::{self, Ipv4View};

use crate::{HarnessError, NetNs, io_err};

/// Where Debian's containernetworking-plugins keeps the reference plugins.
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// The `windlass-cni` binary under test: `WINDLASS_CNI_BIN`, or `target/debug/windlass-cni`
/// (which `cargo xtask test` builds before the suite).
pub fn windlass_cni_bin() -> PathBuf {
    crate::prereq::workspace_binary("windlass-cni", "WINDLASS_CNI_BIN")
}

/// A reference plugin from Debian's containernetworking-plugins (`loopback`, `portmap`, ...),
/// or a failure naming `cargo xtask deps`.
pub fn reference_plugin(name: &str) -> PathBuf {
    let path = Path::new(REFERENCE_PLUGINS).join(name);
    if !path.is_file() {
        panic!(
            "the reference CNI plugin {} is missing: run `cargo xtask deps` (it installs \
             containernetworking-plugins)",
            path.display()
        );
    }
    path
}

/// One invocation's environment, as containerd sets it.
#[derive(Debug, Clone)]
pub struct Call {
    /// `CNI_COMMAND`.
    pub command: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`.
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`.
    pub args: String,
    /// Variables to leave out (to test a missing one).
    pub unset: Vec<&'static str>,
    /// Extra variables (fault injection).
    pub extra: Vec<(String, String)>,
}

impl Call {
    /// A call for the pod sandbox `container_id` with namespace `netns`, interface `eth0` and
    /// containerd's `CNI_ARGS` for pod `default/<container_id>`.
    pub fn new(command: &str, container_id: &str, netns: Option<&Path>) -> Call {
        Call {
            command: command.to_string(),
            container_id: container_id.to_string(),
            netns: netns.map(Path::to_path_buf),
            ifname: "eth0".to_string(),
            args: format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={container_id};\
                 K8S_POD_INFRA_CONTAINER_ID={container_id};K8S_POD_UID=uid-{container_id}"
            ),
            unset: Vec::new(),
            extra: Vec::new(),
        }
    }

    /// The same call with another command.
    pub fn with_command(&self, command: &str) -> Call {
        Call {
            command: command.to_string(),
            ..self.clone()
        }
    }

    fn command(&self, binary: &Path) -> Command {
        let mut cmd = Command::new(binary);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", &self.command)
            .env("CNI_CONTAINERID", &self.container_id)
            .env("CNI_IFNAME", &self.ifname)
            .env("CNI_ARGS", &self.args)
            .env(
                "CNI_PATH",
                format!(
                    "{}:{REFERENCE_PLUGINS}",
                    binary.parent().unwrap_or(Path::new("/")).display()
                ),
            );
        if let Some(netns) = &self.netns {
            cmd.env("CNI_NETNS", netns);
        }
        for key in &self.unset {
            cmd.env_remove(key);
        }
        for (key, value) in &self.extra {
            cmd.env(key, value);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }
}

/// What a plugin answered.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Exit status.
    pub status: ExitStatus,
    /// Stdout parsed as JSON (`Value::Null` when empty).
    pub json: Value,
    /// Stderr, for failure messages.
    pub stderr: String,
}

impl Answer {
    /// The result of a successful call; panics with the plugin's error otherwise.
    pub fn expect_ok(self, what: &str) -> Value {
        assert!(
            self.status.success(),
            "{what} failed: {} {}",
            self.json,
            self.stderr
        );
        self.json
    }

    /// The CNI error code of a failed call; panics if the call succeeded or printed no error.
    pub fn expect_error(self, what: &str) -> u64 {
        assert!(
            !self.status.success(),
            "{what} succeeded but should fail: {}",
            self.json
        );
        self.json["code"].as_u64().unwrap_or_else(|| {
            panic!(
                "{what}: stdout is not a CNI error: {} (stderr {})",
                self.json, self.stderr
            )
        })
    }
}

/// Starts `binary` inside `node` with `call`'s environment and `config` on stdin.
pub fn spawn(
    node: &NetNs,
    binary: &Path,
    call: &Call,
    config: &[u8],
) -> Result<Child, HarnessError> {
    let mut cmd = call.command(binary);
    let mut child = node
        .run(|| cmd.spawn())?
        .map_err(io_err("start", binary.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(config)
            .map_err(io_err("write the configuration to", binary.display()))?;
    }
    Ok(child)
}

/// Runs `binary` inside `node` with `call`'s environment and `config` on stdin.
pub fn invoke(
    node: &NetNs,
    binary: &Path,
    call: &Call,
    config: &[u8],
) -> Result<Answer, HarnessError> {
    let child = spawn(node, binary, call, config)?;
    let out = child
        .wait_with_output()
        .map_err(io_err("wait for", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let json = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).map_err(|e| {
            HarnessError::Setup(format!(
                "{} printed something that is not JSON ({e}): {text}",
                binary.display()
            ))
        })?
    };
    Ok(Answer {
        status: out.status,
        json,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Link `link`'s IPv4 addresses and the routes inside `ns`, read over rtnetlink.
pub fn ipv4_view(ns: &NetNs, link: &str) -> Result<Ipv4View, HarnessError> {
    Ok(ns.run(|| netlink::block_on(|nl| async move { nl.ipv4_view(link).await }))??)
}

/// The configuration libcni hands plugin `index` of `conflist`: the plugin's own object with the
/// list's `name` and `cniVersion`, `prevResult` when given, and `runtimeConfig` holding the
/// capability arguments the plugin declared in `capabilities`.
pub fn plugin_config(
    conflist: &Value,
    index: usize,
    prev_result: Option<&Value>,
    capability_args: &Value,
) -> Value {
    let mut conf = conflist["plugins"][index].clone();
    conf["name"] = conflist["name"].clone();
    conf["cniVersion"] = conflist["cniVersion"].clone();
    if let Some(prev) = prev_result {
        conf["prevResult"] = prev.clone();
    }
    let mut runtime = serde_json::Map::new();
    if let Some(caps) = conf.get("capabilities").and_then(Value::as_object) {
        for (cap, enabled) in caps {
            if enabled.as_bool() == Some(true)
                && let Some(arg) = capability_args.get(cap)
            {
                runtime.insert(cap.clone(), arg.clone());
            }
        }
    }
    if !runtime.is_empty() {
        conf["runtimeConfig"] = Value::Object(runtime);
    }
    conf
}

/// A conflist with `windlass-cni` alone, as the agent writes it.
pub fn windlass_conflist(version: &str, subnet: &str, data_dir: &Path) -> Value {
    json!({
        "cniVersion": version,
        "name": "windlass",
        "plugins": [{
            "type": "windlass-cni",
            "bridge": "wl0",
            "mtu": 1500,
            "ipam": {"type": "windlass", "subnet": subnet, "dataDir": data_dir},
        }],
    })
}
