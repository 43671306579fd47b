//! The OCI runtime `config.json` for one container of a pod: oci-spec's default Linux spec (its
//! mounts, masked and read-only paths), changed for Kubernetes: the image's entrypoint and cmd
//! under the pod's command and args, containerd's default capabilities, the pod's network, IPC
//! and UTS namespaces joined by path, `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf` from
//! the sandbox, volume mounts, the cgroup path and resources.

use std::path::Path;

use oci_spec::runtime::Spec;
use serde_json::{Value, json};

use super::{ContainerConfig, Sandbox};
use crate::node::kubelet::images::ImageConfig;

/// containerd's default capability set for CRI containers.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The process arguments Kubernetes runs: `command` replaces the image's entrypoint, `args`
/// replace its cmd; with a `command` and no `args`, the image's cmd is dropped.
pub fn process_args(config: &ContainerConfig, image: &ImageConfig) -> Vec<String> {
    match (config.command.is_empty(), config.args.is_empty()) {
        (false, false) => [config.command.clone(), config.args.clone()].concat(),
        (false, true) => config.command.clone(),
        (true, false) => [image.entrypoint.clone(), config.args.clone()].concat(),
        (true, true) => [image.entrypoint.clone(), image.cmd.clone()].concat(),
    }
}

/// The container's environment: the image's, then the pod spec's (later entries win).
pub fn process_env(config: &ContainerConfig, image: &ImageConfig, hostname: &str) -> Vec<String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |key: &str, value: &str| {
        if let Some(slot) = env.iter_mut().find(|(k, _)| k == key) {
            slot.1 = value.to_string();
        } else {
            env.push((key.to_string(), value.to_string()));
        }
    };
    set(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    for entry in &image.env {
        if let Some((k, v)) = entry.split_once('=') {
            set(k, v);
        }
    }
    set("HOSTNAME", hostname);
    for (k, v) in &config.env {
        set(k, v);
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Builds the spec; `rootfs` is the container's merged overlay directory.
pub fn build(
    config: &ContainerConfig,
    image: &ImageConfig,
    sandbox: &Sandbox,
    rootfs: &Path,
    cgroups_path: &str,
) -> Result<Spec, String> {
    let mut spec = serde_json::to_value(Spec::default()).map_err(|e| e.to_string())?;
    let args = process_args(config, image);
    if args.is_empty() {
        return Err("no command specified".into());
    }
    let cwd = config
        .working_dir
        .clone()
        .or_else(|| image.working_dir.clone())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "/".into());
    let (image_uid, image_gid) = parse_user(image.user.as_deref());
    let uid = config.run_as_user.unwrap_or(image_uid);
    let gid = config.run_as_group.unwrap_or(image_gid);
    let caps: Vec<&str> = if config.privileged {
        ALL_CAPABILITIES.to_vec()
    } else {
        DEFAULT_CAPABILITIES.to_vec()
    };
    let caps_for_user: Vec<&str> = if uid == 0 { caps.clone() } else { vec![] };
    spec["process"] = json!({
        "terminal": false,
        "user": {"uid": uid, "gid": gid},
        "args": args,
        "env": process_env(config, image, &sandbox.config.hostname),
        "cwd": cwd,
        "capabilities": {
            "bounding": caps,
            "effective": caps_for_user,
            "permitted": caps_for_user,
        },
        "noNewPrivileges": false,
        "oomScoreAdj": config.oom_score_adj,
    });
    if config.oom_score_adj.is_none()
        && let Some(p) = spec["process"].as_object_mut()
    {
        p.remove("oomScoreAdj");
    }
    spec["root"] = json!({"path": rootfs, "readonly": false});
    spec["hostname"] = Value::Null;
    if let Some(map) = spec.as_object_mut() {
        map.remove("hostname");
    }

    let mut namespaces = vec![json!({"type": "mount"})];
    if !sandbox.config.host_pid {
        namespaces.push(json!({"type": "pid"}));
    }
    if let Some(net) = &sandbox.netns {
        namespaces.push(json!({"type": "network", "path": net}));
    }
    if let Some(ipc) = &sandbox.ipcns {
        namespaces.push(json!({"type": "ipc", "path": ipc}));
    }
    if let Some(uts) = &sandbox.utsns {
        namespaces.push(json!({"type": "uts", "path": uts}));
    }
    namespaces.push(json!({"type": "cgroup"}));
    spec["linux"]["namespaces"] = Value::Array(namespaces);
    spec["linux"]["cgroupsPath"] = json!(cgroups_path);
    spec["linux"]["resources"] = config
        .resources
        .clone()
        .unwrap_or_else(|| json!({"devices": [{"allow": false, "access": "rwm"}]}));
    if spec["linux"]["resources"].get("devices").is_none() {
        spec["linux"]["resources"]["devices"] = json!([{"allow": false, "access": "rwm"}]);
    }
    if config.privileged {
        spec["linux"]["resources"]["devices"] = json!([{"allow": true, "access": "rwm"}]);
        spec["linux"]["maskedPaths"] = json!([]);
        spec["linux"]["readonlyPaths"] = json!([]);
    }

    let mut mounts = spec["mounts"].as_array().cloned().unwrap_or_default();
    // /sys read-write for a host-network pod would expose the node's; keep oci-spec's (ro).
    let bind = |source: &Path, destination: &str, read_only: bool| {
        let mut options = vec!["rbind", "rprivate"];
        options.push(if read_only { "ro" } else { "rw" });
        json!({"destination": destination, "type": "bind", "source": source, "options": options})
    };
    for (file, destination) in [
        ("hosts", "/etc/hosts"),
        ("hostname", "/etc/hostname"),
        ("resolv.conf", "/etc/resolv.conf"),
    ] {
        let source = sandbox.dir.join(file);
        if source.exists() {
            mounts.push(bind(&source, destination, false));
        }
    }
    for mount in &config.mounts {
        mounts.retain(|m| m["destination"] != json!(mount.container_path));
        mounts.push(bind(
            &mount.host_path,
            &mount.container_path,
            mount.read_only,
        ));
    }
    spec["mounts"] = Value::Array(mounts);
    serde_json::from_value(spec).map_err(|e| format!("invalid runtime spec: {e}"))
}

/// `uid[:gid]` from the image config; names are not resolved (numeric ids only), root otherwise.
fn parse_user(user: Option<&str>) -> (u32, u32) {
    let Some(user) = user.filter(|u| !u.is_empty()) else {
        return (0, 0);
    };
    let (u, g) = user.split_once(':').unwrap_or((user, ""));
    let uid = u.parse().unwrap_or(0);
    let gid = g.parse().unwrap_or(uid);
    (uid, gid)
}

/// Every capability, for privileged containers.
const ALL_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["default".into()],
            env: vec!["PATH=/bin".into(), "A=image".into()],
            ..Default::default()
        }
    }

    #[test]
    fn command_and_args_follow_kubernetes_rules() {
        let mut c = ContainerConfig::default();
        assert_eq!(process_args(&c, &image()), ["/entry", "default"]);
        c.args = vec!["x".into()];
        assert_eq!(process_args(&c, &image()), ["/entry", "x"]);
        c.command = vec!["/cmd".into()];
        assert_eq!(process_args(&c, &image()), ["/cmd", "x"]);
        c.args.clear();
        assert_eq!(process_args(&c, &image()), ["/cmd"]);
    }

    #[test]
    fn pod_env_overrides_image_env() {
        let c = ContainerConfig {
            env: vec![("A".into(), "pod".into()), ("B".into(), "b".into())],
            ..Default::default()
        };
        let env = process_env(&c, &image(), "web-0");
        assert!(env.contains(&"PATH=/bin".to_string()));
        assert!(env.contains(&"A=pod".to_string()));
        assert!(env.contains(&"B=b".to_string()));
        assert!(env.contains(&"HOSTNAME=web-0".to_string()));
        assert!(!env.contains(&"A=image".to_string()));
    }

    #[test]
    fn user_parsing() {
        assert_eq!(parse_user(None), (0, 0));
        assert_eq!(parse_user(Some("1000")), (1000, 1000));
        assert_eq!(parse_user(Some("1000:5")), (1000, 5));
    }
}
