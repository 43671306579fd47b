//! Runs the CNI plugin for a pod sandbox the way libcni does: the network configuration on
//! stdin (name and cniVersion filled in), the `CNI_*` environment with containerd's `CNI_ARGS`,
//! the result or the error as JSON on stdout.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

/// The interface name inside the pod.
pub const POD_IFNAME: &str = "eth0";

/// How long one plugin call may take.
const PLUGIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Errors from running the plugin.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The plugin could not be started.
    #[error("failed to run the CNI plugin {path}")]
    Spawn {
        /// The plugin binary.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The plugin answered with a CNI error.
    #[error("CNI {command} failed with code {code}: {msg}{details}")]
    Plugin {
        /// ADD, DEL, ...
        command: &'static str,
        /// The CNI error code.
        code: i64,
        /// The error message.
        msg: String,
        /// `: <details>` when the plugin gave details.
        details: String,
    },
    /// The plugin's result was not what the spec says.
    #[error("CNI {command} gave an unreadable result: {message}")]
    Result {
        /// ADD, DEL, ...
        command: &'static str,
        /// What was wrong.
        message: String,
    },
}

/// The node's pod network, for the bridge plugin with built-in IPAM.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkConfig {
    /// The network's name.
    pub name: String,
    /// The plugin binary (`windlass-cni`).
    pub plugin: PathBuf,
    /// The node's pod CIDR, e.g. `10.244.0.0/24`.
    pub pod_cidr: String,
    /// The bridge's name.
    pub bridge: String,
    /// The interface MTU.
    pub mtu: u32,
    /// Where IPAM keeps its allocations (the network name is appended).
    pub ipam_dir: PathBuf,
}

impl NetworkConfig {
    /// The plugin configuration, as libcni hands it to the plugin.
    pub fn plugin_config(&self) -> Value {
        json!({
            "cniVersion": "1.1.0",
            "name": self.name,
            "type": "windlass-cni",
            "bridge": self.bridge,
            "mtu": self.mtu,
            "isGateway": true,
            "hairpinMode": true,
            "ipam": {"type": "windlass", "subnet": self.pod_cidr, "dataDir": self.ipam_dir},
        })
    }

    /// The conflist for `/etc/cni/net.d/10-windlass.conflist`, so containerd's CRI plugin and
    /// other runtimes use the same network.
    pub fn conflist(&self) -> Value {
        let mut plugin = self.plugin_config();
        if let Some(map) = plugin.as_object_mut() {
            map.remove("cniVersion");
            map.remove("name");
        }
        json!({"cniVersion": "1.0.0", "name": self.name, "plugins": [plugin]})
    }
}

/// Who the attachment is for.
#[derive(Debug, Clone)]
pub struct Attachment<'a> {
    /// The sandbox id (CNI_CONTAINERID).
    pub container_id: &'a str,
    /// The network namespace file.
    pub netns: &'a Path,
    /// The pod's namespace.
    pub pod_namespace: &'a str,
    /// The pod's name.
    pub pod_name: &'a str,
    /// The pod's uid.
    pub pod_uid: &'a str,
}

/// CNI ADD; returns the pod's IPv4 address.
pub async fn add(network: &NetworkConfig, who: &Attachment<'_>) -> Result<Ipv4Addr, CniError> {
    let result = run(network, "ADD", who).await?;
    result
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.get("address").and_then(Value::as_str))
        .find_map(|cidr| cidr.split('/').next()?.parse::<Ipv4Addr>().ok())
        .ok_or_else(|| CniError::Result {
            command: "ADD",
            message: format!("no IPv4 address in {result}"),
        })
}

/// CNI DEL; succeeds when the attachment is already gone.
pub async fn del(network: &NetworkConfig, who: &Attachment<'_>) -> Result<(), CniError> {
    run(network, "DEL", who).await.map(|_| ())
}

async fn run(
    network: &NetworkConfig,
    command: &'static str,
    who: &Attachment<'_>,
) -> Result<Value, CniError> {
    let spawn_err = |source| CniError::Spawn {
        path: network.plugin.display().to_string(),
        source,
    };
    let cni_path = network
        .plugin
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let mut child = tokio::process::Command::new(&network.plugin)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", who.container_id)
        .env("CNI_NETNS", who.netns)
        .env("CNI_IFNAME", POD_IFNAME)
        .env("CNI_PATH", cni_path)
        .env(
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
                who.pod_namespace, who.pod_name, who.container_id, who.pod_uid
            ),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_err)?;
    let config = network.plugin_config().to_string();
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(config.as_bytes())
            .await
            .map_err(spawn_err)?;
    }
    // A plugin that hangs must not wedge the pod forever (the child is killed on drop).
    let output = tokio::time::timeout(PLUGIN_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| CniError::Plugin {
            command,
            code: 11,
            msg: format!("the plugin did not answer within {PLUGIN_TIMEOUT:?}"),
            details: String::new(),
        })?
        .map_err(spawn_err)?;
    let stdout: Value = if output.stdout.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&output.stdout).map_err(|e| CniError::Result {
            command,
            message: format!(
                "{e}; stdout {:?}, stderr {:?}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        })?
    };
    if !output.status.success() {
        let code = stdout.get("code").and_then(Value::as_i64).unwrap_or(-1);
        let msg = stdout
            .get("msg")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&output.stderr).trim().to_string());
        let details = stdout
            .get("details")
            .and_then(Value::as_str)
            .filter(|d| !d.is_empty())
            .map(|d| format!(": {d}"))
            .unwrap_or_default();
        return Err(CniError::Plugin {
            command,
            code,
            msg,
            details,
        });
    }
    Ok(stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflist_names_the_plugin_once() {
        let network = NetworkConfig {
            name: "windlass".into(),
            plugin: "/opt/cni/bin/windlass-cni".into(),
            pod_cidr: "10.244.3.0/24".into(),
            bridge: "wl0".into(),
            mtu: 1500,
            ipam_dir: "/var/lib/windlass/cni".into(),
        };
        let list = network.conflist();
        assert_eq!(list["name"], "windlass");
        assert_eq!(list["plugins"][0]["type"], "windlass-cni");
        assert_eq!(list["plugins"][0]["ipam"]["subnet"], "10.244.3.0/24");
        assert!(list["plugins"][0].get("name").is_none());
        assert_eq!(network.plugin_config()["cniVersion"], "1.1.0");
    }
}
