//! The Node object: registration (capacity, allocatable, addresses, nodeInfo, conditions), the
//! `kube-node-lease` Lease renewed every 10 s, and status updates on change and at least every
//! minute.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeStatus,
    NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

use super::env::NodeResources;

/// How often the Lease is renewed (kubelet: 10 s).
pub const LEASE_RENEW: Duration = Duration::from_secs(10);
/// Lease duration written into the Lease (kubelet: 40 s).
pub const LEASE_DURATION_SECONDS: i32 = 40;
/// Status is written at least this often even when nothing changed (kubelet: 1 min).
pub const STATUS_REPORT: Duration = Duration::from_secs(60);
/// kubelet's default `--max-pods`.
pub const MAX_PODS: u32 = 110;

/// What the node is, read once at start.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    /// The Node's name.
    pub name: String,
    /// Its InternalIP.
    pub ip: Option<String>,
    /// Its hostname.
    pub hostname: String,
    /// CPU and memory and disk.
    pub capacity: NodeResources,
    /// nodeInfo.
    pub info: NodeSystemInfo,
    /// The kubelet HTTPS server's port, published as `status.daemonEndpoints`; 0 when none.
    pub kubelet_port: u16,
    /// The data dir, whose filesystem is the node's nodefs for DiskPressure.
    pub data_dir: std::path::PathBuf,
}

/// The node's pressure conditions against kubelet's hard eviction thresholds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pressure {
    /// memory.available < 100Mi.
    pub memory: bool,
    /// nodefs.available < 10% or nodefs.inodesFree < 5%.
    pub disk: bool,
    /// Fewer than 5% of kernel.pid_max left.
    pub pid: bool,
}

impl Pressure {
    /// Reads /proc/meminfo, the data dir's filesystem and the process count now.
    pub fn read(data_dir: &Path) -> Pressure {
        let memory = meminfo_field("MemAvailable:").is_some_and(|a| a < 100 * 1024 * 1024);
        let disk = nix::sys::statvfs::statvfs(data_dir).is_ok_and(|s| {
            let blocks_low = s.blocks() > 0 && s.blocks_available() * 10 < s.blocks();
            let inodes_low = s.files() > 0 && s.files_available() * 20 < s.files();
            blocks_low || inodes_low
        });
        let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(u64::MAX);
        let processes = std::fs::read_dir("/proc")
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .bytes()
                            .all(|b| b.is_ascii_digit())
                    })
                    .count() as u64
            })
            .unwrap_or(0);
        Pressure {
            memory,
            disk,
            pid: processes.saturating_mul(20) > pid_max.saturating_mul(19),
        }
    }
}

impl NodeFacts {
    /// Reads the machine: cores, memory, the data dir's disk, kernel, OS, boot id.
    pub fn read(name: &str, ip: Option<String>, data_dir: &Path, runtime_version: &str) -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        let memory = meminfo_total().unwrap_or(0);
        let disk = nix::sys::statvfs::statvfs(data_dir)
            .map(|s| s.blocks() * s.fragment_size())
            .unwrap_or(0);
        let uname = nix::sys::utsname::uname().ok();
        let kernel = uname
            .as_ref()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        let os_image = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                    .map(|v| v.trim_matches('"').to_string())
            })
            .unwrap_or_else(|| "Linux".into());
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        NodeFacts {
            name: name.to_string(),
            ip,
            hostname: name.to_string(),
            capacity: NodeResources {
                cpu_millis: cpus * 1000,
                memory_bytes: memory,
                ephemeral_bytes: disk,
            },
            info: NodeSystemInfo {
                architecture: arch.into(),
                boot_id: read("/proc/sys/kernel/random/boot_id"),
                container_runtime_version: runtime_version.to_string(),
                kernel_version: kernel,
                kube_proxy_version: String::new(),
                kubelet_version: format!("v1.32.0-windlass.{}", env!("CARGO_PKG_VERSION")),
                machine_id: read("/etc/machine-id"),
                operating_system: "linux".into(),
                os_image,
                system_uuid: read("/sys/class/dmi/id/product_uuid"),
                ..Default::default()
            },
            kubelet_port: 0,
            data_dir: data_dir.to_path_buf(),
        }
    }

    /// Publishes the kubelet server's port in `status.daemonEndpoints.kubeletEndpoint`.
    pub fn with_kubelet_port(mut self, port: u16) -> Self {
        self.kubelet_port = port;
        self
    }

    fn resources(&self) -> BTreeMap<String, Quantity> {
        BTreeMap::from([
            (
                "cpu".to_string(),
                Quantity(format!("{}", self.capacity.cpu_millis / 1000)),
            ),
            (
                "memory".to_string(),
                Quantity(format!("{}Ki", self.capacity.memory_bytes / 1024)),
            ),
            ("pods".to_string(), Quantity(MAX_PODS.to_string())),
            (
                "ephemeral-storage".to_string(),
                Quantity(format!("{}Ki", self.capacity.ephemeral_bytes / 1024)),
            ),
        ])
    }

    /// The status to write; conditions keep their transition times while unchanged.
    pub fn status(&self, old: Option<&NodeStatus>, ready: bool, pressure: Pressure) -> NodeStatus {
        let now = Time(
            jiff::Timestamp::now()
                .round(jiff::Unit::Second)
                .unwrap_or_else(|_| jiff::Timestamp::now()),
        );
        let old_conditions = old.and_then(|s| s.conditions.clone()).unwrap_or_default();
        let cond = |kind: &str, status: bool, reason: &str, message: &str| {
            let status = if status { "True" } else { "False" };
            let transition = old_conditions
                .iter()
                .find(|c| c.type_ == kind && c.status == status)
                .and_then(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            NodeCondition {
                type_: kind.to_string(),
                status: status.to_string(),
                reason: Some(reason.to_string()),
                message: Some(message.to_string()),
                last_heartbeat_time: Some(now.clone()),
                last_transition_time: Some(transition),
            }
        };
        let mut addresses = Vec::new();
        if let Some(ip) = &self.ip {
            addresses.push(NodeAddress {
                type_: "InternalIP".into(),
                address: ip.clone(),
            });
        }
        addresses.push(NodeAddress {
            type_: "Hostname".into(),
            address: self.hostname.clone(),
        });
        NodeStatus {
            capacity: Some(self.resources()),
            allocatable: Some(self.resources()),
            addresses: Some(addresses),
            node_info: Some(self.info.clone()),
            daemon_endpoints: (self.kubelet_port != 0).then(|| NodeDaemonEndpoints {
                kubelet_endpoint: Some(DaemonEndpoint {
                    port: i32::from(self.kubelet_port),
                }),
            }),
            conditions: Some(vec![
                if pressure.memory {
                    cond(
                        "MemoryPressure",
                        true,
                        "KubeletHasInsufficientMemory",
                        "kubelet has insufficient memory available",
                    )
                } else {
                    cond(
                        "MemoryPressure",
                        false,
                        "KubeletHasSufficientMemory",
                        "kubelet has sufficient memory available",
                    )
                },
                if pressure.disk {
                    cond(
                        "DiskPressure",
                        true,
                        "KubeletHasDiskPressure",
                        "kubelet has disk pressure",
                    )
                } else {
                    cond(
                        "DiskPressure",
                        false,
                        "KubeletHasNoDiskPressure",
                        "kubelet has no disk pressure",
                    )
                },
                if pressure.pid {
                    cond(
                        "PIDPressure",
                        true,
                        "KubeletHasInsufficientPID",
                        "kubelet has insufficient PID available",
                    )
                } else {
                    cond(
                        "PIDPressure",
                        false,
                        "KubeletHasSufficientPID",
                        "kubelet has sufficient PID available",
                    )
                },
                if ready {
                    cond(
                        "Ready",
                        true,
                        "KubeletReady",
                        "kubelet is posting ready status",
                    )
                } else {
                    cond(
                        "Ready",
                        false,
                        "KubeletNotReady",
                        "container runtime network not ready: the node has no podCIDR yet",
                    )
                },
            ]),
            ..Default::default()
        }
    }
}

fn meminfo_total() -> Option<u64> {
    meminfo_field("MemTotal:")
}

/// A `/proc/meminfo` field in bytes.
fn meminfo_field(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Creates the Node if it does not exist (kubelet's registration); returns the current object.
pub async fn register(client: &Client, facts: &NodeFacts) -> Result<Node, kube::Error> {
    let api: Api<Node> = Api::all(client.clone());
    if let Some(node) = api.get_opt(&facts.name).await? {
        return Ok(node);
    }
    let node = Node {
        metadata: ObjectMeta {
            name: Some(facts.name.clone()),
            labels: Some(BTreeMap::from([
                ("kubernetes.io/hostname".to_string(), facts.hostname.clone()),
                ("kubernetes.io/os".to_string(), "linux".to_string()),
                (
                    "kubernetes.io/arch".to_string(),
                    facts.info.architecture.clone(),
                ),
            ])),
            ..Default::default()
        },
        ..Default::default()
    };
    match api.create(&PostParams::default(), &node).await {
        Ok(node) => {
            tracing::info!(node = %facts.name, "node registered");
            Ok(node)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => api.get(&facts.name).await,
        Err(e) => Err(e),
    }
}

/// Writes the Node's status.
pub async fn patch_status(
    client: &Client,
    facts: &NodeFacts,
    old: Option<&NodeStatus>,
    ready: bool,
) -> Result<Node, kube::Error> {
    let api: Api<Node> = Api::all(client.clone());
    let status = facts.status(old, ready, Pressure::read(&facts.data_dir));
    api.patch_status(
        &facts.name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await
}

/// Renews the node's Lease forever, every [`LEASE_RENEW`].
pub async fn renew_lease(client: Client, node: String) {
    let api: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    let mut ticker = tokio::time::interval(LEASE_RENEW);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let now = MicroTime(jiff::Timestamp::now());
        let spec = LeaseSpec {
            holder_identity: Some(node.clone()),
            lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
            renew_time: Some(now),
            ..Default::default()
        };
        // One request per renewal: patch, and create only when the Lease is not there yet.
        let result = match api
            .patch(
                &node,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": spec})),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => api
                .create(
                    &PostParams::default(),
                    &Lease {
                        metadata: ObjectMeta {
                            name: Some(node.clone()),
                            namespace: Some("kube-node-lease".into()),
                            ..Default::default()
                        },
                        spec: Some(spec),
                    },
                )
                .await
                .map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!(node = %node, error = %e, "cannot renew the node lease");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> NodeFacts {
        NodeFacts {
            name: "n1".into(),
            ip: Some("192.0.2.1".into()),
            hostname: "n1".into(),
            capacity: NodeResources {
                cpu_millis: 2000,
                memory_bytes: 4 << 30,
                ephemeral_bytes: 10 << 30,
            },
            info: NodeSystemInfo::default(),
            kubelet_port: 10250,
            data_dir: "/".into(),
        }
    }

    fn condition<'a>(status: &'a NodeStatus, kind: &str) -> &'a NodeCondition {
        status
            .conditions
            .as_ref()
            .and_then(|c| c.iter().find(|c| c.type_ == kind))
            .expect("condition")
    }

    #[test]
    fn pressure_and_readiness_become_conditions_and_keep_transition_times() {
        let f = facts();
        let calm = f.status(None, true, Pressure::default());
        assert_eq!(condition(&calm, "Ready").status, "True");
        assert_eq!(condition(&calm, "MemoryPressure").status, "False");
        assert_eq!(
            calm.capacity.as_ref().and_then(|c| c.get("cpu")),
            Some(&Quantity("2".into()))
        );
        assert_eq!(
            calm.daemon_endpoints
                .as_ref()
                .and_then(|d| d.kubelet_endpoint.as_ref())
                .map(|e| e.port),
            Some(10250)
        );
        let mut old = calm.clone();
        let past = Time(jiff::Timestamp::UNIX_EPOCH);
        for c in old.conditions.iter_mut().flatten() {
            c.last_transition_time = Some(past.clone());
        }
        let pressed = f.status(
            Some(&old),
            true,
            Pressure {
                memory: true,
                ..Default::default()
            },
        );
        let memory = condition(&pressed, "MemoryPressure");
        assert_eq!(memory.status, "True");
        assert_ne!(memory.last_transition_time, Some(past.clone()));
        assert_eq!(
            condition(&pressed, "Ready").last_transition_time,
            Some(past),
            "an unchanged condition keeps its transition time"
        );
        let not_ready = f.status(None, false, Pressure::default());
        assert_eq!(
            condition(&not_ready, "Ready").reason.as_deref(),
            Some("KubeletNotReady")
        );
    }
}
