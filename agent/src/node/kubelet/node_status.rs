//! The Node object: registration (capacity, allocatable, addresses, nodeInfo, conditions), the
//! `kube-node-lease` Lease renewed every 10 s, and status updates on change and at least every
//! minute.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition, NodeStatus, NodeSystemInfo};
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
        }
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
    pub fn status(&self, old: Option<&NodeStatus>, ready: bool) -> NodeStatus {
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
            conditions: Some(vec![
                cond(
                    "MemoryPressure",
                    false,
                    "KubeletHasSufficientMemory",
                    "kubelet has sufficient memory available",
                ),
                cond(
                    "DiskPressure",
                    false,
                    "KubeletHasNoDiskPressure",
                    "kubelet has no disk pressure",
                ),
                cond(
                    "PIDPressure",
                    false,
                    "KubeletHasSufficientPID",
                    "kubelet has sufficient PID available",
                ),
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
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
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
    let status = facts.status(old, ready);
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
        let result = match api.get_opt(&node).await {
            Ok(Some(_)) => api
                .patch(
                    &node,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": spec})),
                )
                .await
                .map(|_| ()),
            Ok(None) => api
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
