//! The scheduler's decision logic, free of I/O: quantities, a pod's requests, the filters a node
//! must pass, and the scores among those that do.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Node, NodeSelectorRequirement, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Parses a CPU quantity into millicores (`"100m"` -> 100, `"1.5"` -> 1500).
pub fn millicores(q: &Quantity) -> Option<i64> {
    let s = q.0.trim();
    if let Some(m) = s.strip_suffix('m') {
        return m.parse::<i64>().ok();
    }
    s.parse::<f64>().ok().map(|v| (v * 1000.0).round() as i64)
}

/// Parses a memory (or any byte) quantity into bytes (`"16Mi"`, `"1G"`, `"1e9"`, `"129M"`).
pub fn bytes(q: &Quantity) -> Option<i64> {
    let s = q.0.trim();
    let suffixes: [(&str, f64); 12] = [
        ("Ki", 1024f64),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("Pi", 1024f64.powi(5)),
        ("Ei", 1024f64.powi(6)),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    for (suffix, factor) in suffixes {
        if let Some(number) = s.strip_suffix(suffix) {
            return number
                .parse::<f64>()
                .ok()
                .map(|v| (v * factor).round() as i64);
        }
    }
    if let Some(m) = s.strip_suffix('m') {
        return m.parse::<f64>().ok().map(|v| (v / 1000.0).round() as i64);
    }
    s.parse::<f64>().ok().map(|v| v.round() as i64)
}

/// What a pod asks of a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requests {
    /// CPU in millicores.
    pub cpu: i64,
    /// Memory in bytes.
    pub memory: i64,
}

impl std::ops::AddAssign for Requests {
    fn add_assign(&mut self, other: Self) {
        self.cpu += other.cpu;
        self.memory += other.memory;
    }
}

/// A pod's effective requests: the sum over its containers, or the largest init container's if
/// larger (init containers run one at a time, before the others).
pub fn pod_requests(pod: &Pod) -> Requests {
    let of = |resources: Option<&k8s_openapi::api::core::v1::ResourceRequirements>| {
        let requests = resources.and_then(|r| r.requests.as_ref());
        Requests {
            cpu: requests
                .and_then(|r| r.get("cpu"))
                .and_then(millicores)
                .unwrap_or(0),
            memory: requests
                .and_then(|r| r.get("memory"))
                .and_then(bytes)
                .unwrap_or(0),
        }
    };
    let Some(spec) = pod.spec.as_ref() else {
        return Requests::default();
    };
    let mut total = Requests::default();
    for c in &spec.containers {
        total += of(c.resources.as_ref());
    }
    for c in spec.init_containers.iter().flatten() {
        let r = of(c.resources.as_ref());
        total.cpu = total.cpu.max(r.cpu);
        total.memory = total.memory.max(r.memory);
    }
    total
}

/// A node's capacity for pods: allocatable cpu, memory and pod count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocatable {
    /// CPU in millicores.
    pub cpu: i64,
    /// Memory in bytes.
    pub memory: i64,
    /// Pod count.
    pub pods: i64,
}

/// The node's allocatable resources (capacity when allocatable is unset).
pub fn allocatable(node: &Node) -> Allocatable {
    let status = node.status.as_ref();
    let list = status.and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()));
    let get = |k: &str| list.and_then(|l| l.get(k));
    Allocatable {
        cpu: get("cpu").and_then(millicores).unwrap_or(0),
        memory: get("memory").and_then(bytes).unwrap_or(0),
        pods: get("pods").and_then(bytes).unwrap_or(110),
    }
}

/// What is already on a node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Summed requests.
    pub requested: Requests,
    /// Pod count.
    pub pods: i64,
    /// Host ports in use, as (protocol, port).
    pub host_ports: Vec<(String, i32)>,
    /// Pods per controlling owner (ReplicaSet, StatefulSet, Job... by uid), for spreading.
    pub owners: std::collections::BTreeMap<String, i64>,
}

impl Usage {
    /// Adds a pod.
    pub fn add(&mut self, pod: &Pod) {
        self.add_usage(&Usage::of(pod));
    }

    /// What one pod takes.
    pub fn of(pod: &Pod) -> Usage {
        Usage {
            requested: pod_requests(pod),
            pods: 1,
            host_ports: host_ports(pod),
            owners: controller_uid(pod)
                .map(|uid| (uid.to_string(), 1))
                .into_iter()
                .collect(),
        }
    }

    /// Adds another usage (one pod's, say).
    pub fn add_usage(&mut self, other: &Usage) {
        self.requested += other.requested;
        self.pods += other.pods;
        self.host_ports.extend(other.host_ports.iter().cloned());
        for (owner, n) in &other.owners {
            *self.owners.entry(owner.clone()).or_default() += n;
        }
    }

    /// Removes a usage added before.
    pub fn remove_usage(&mut self, other: &Usage) {
        self.requested.cpu -= other.requested.cpu;
        self.requested.memory -= other.requested.memory;
        self.pods -= other.pods;
        for port in &other.host_ports {
            if let Some(i) = self.host_ports.iter().position(|p| p == port) {
                self.host_ports.swap_remove(i);
            }
        }
        for (owner, n) in &other.owners {
            if let Some(count) = self.owners.get_mut(owner) {
                *count -= n;
                if *count <= 0 {
                    self.owners.remove(owner);
                }
            }
        }
    }
}

fn host_ports(pod: &Pod) -> Vec<(String, i32)> {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            p.host_port
                .map(|hp| (p.protocol.clone().unwrap_or_else(|| "TCP".into()), hp))
        })
        .collect()
}

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Whether `toleration` tolerates `taint`.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect_ok = toleration
        .effect
        .as_deref()
        .is_none_or(|e| e.is_empty() || e == taint.effect);
    let key_ok = match toleration.key.as_deref() {
        None | Some("") => toleration.operator.as_deref() == Some("Exists"),
        Some(key) => key == taint.key,
    };
    let value_ok = match toleration.operator.as_deref() {
        Some("Exists") => true,
        _ => toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
    };
    effect_ok && key_ok && value_ok
}

fn requirement_matches(
    requirement: &NodeSelectorRequirement,
    labels: &BTreeMap<String, String>,
) -> bool {
    let value = labels.get(&requirement.key);
    let values = requirement.values.clone().unwrap_or_default();
    let number = |s: &str| s.parse::<i64>().ok();
    match requirement.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => {
            matches!((value.and_then(|v| number(v)), values.first().and_then(|v| number(v))), (Some(a), Some(b)) if a > b)
        }
        "Lt" => {
            matches!((value.and_then(|v| number(v)), values.first().and_then(|v| number(v))), (Some(a), Some(b)) if a < b)
        }
        _ => false,
    }
}

/// Checks one node for one pod; `Err` carries the reason, worded as kube-scheduler words it.
pub fn fits(pod: &Pod, node: &Node, usage: &Usage) -> Result<(), &'static str> {
    if !node_ready(node) {
        return Err("node(s) were not ready");
    }
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        return Err("node(s) were unschedulable");
    }
    let spec = pod.spec.as_ref();
    let tolerations = spec.and_then(|s| s.tolerations.clone()).unwrap_or_default();
    for taint in node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
    {
        let blocking = matches!(taint.effect.as_str(), "NoSchedule" | "NoExecute");
        if blocking && !tolerations.iter().any(|t| tolerates(t, taint)) {
            return Err("node(s) had untolerated taint");
        }
    }
    let labels = node.metadata.labels.clone().unwrap_or_default();
    if let Some(selector) = spec.and_then(|s| s.node_selector.as_ref())
        && !selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    {
        return Err("node(s) didn't match Pod's node affinity/selector");
    }
    let required = spec
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    if let Some(required) = required {
        let name = node.metadata.name.clone().unwrap_or_default();
        let any_term = required.node_selector_terms.iter().any(|term| {
            let expressions = term
                .match_expressions
                .iter()
                .flatten()
                .all(|r| requirement_matches(r, &labels));
            let fields: BTreeMap<String, String> =
                [("metadata.name".to_string(), name.clone())].into();
            let field_ok = term
                .match_fields
                .iter()
                .flatten()
                .all(|r| requirement_matches(r, &fields));
            expressions && field_ok
        });
        if !any_term {
            return Err("node(s) didn't match Pod's node affinity/selector");
        }
    }
    let capacity = allocatable(node);
    let asks = pod_requests(pod);
    if usage.pods + 1 > capacity.pods {
        return Err("Too many pods");
    }
    if asks.cpu > 0 && usage.requested.cpu + asks.cpu > capacity.cpu {
        return Err("Insufficient cpu");
    }
    if asks.memory > 0 && usage.requested.memory + asks.memory > capacity.memory {
        return Err("Insufficient memory");
    }
    if host_ports(pod).iter().any(|p| usage.host_ports.contains(p)) {
        return Err("node(s) didn't have free ports for the requested pod ports");
    }
    Ok(())
}

/// The uid of the pod's controlling owner (its ReplicaSet, StatefulSet, Job...), if any.
fn controller_uid(pod: &Pod) -> Option<&str> {
    pod.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

/// Score of a node that fits (higher is better): least-allocated plus balanced allocation, each
/// 0..=100, computed with the pod placed on it, plus a spread score (0..=100) that prefers
/// nodes with fewer pods of the same owner, as kube-scheduler's default topology spreading
/// over hostnames does, so a Deployment's replicas land on different nodes.
pub fn score(pod: &Pod, node: &Node, usage: &Usage) -> i64 {
    let capacity = allocatable(node);
    let asks = pod_requests(pod);
    let fraction = |used: i64, total: i64| {
        if total <= 0 {
            1.0
        } else {
            (used as f64 / total as f64).min(1.0)
        }
    };
    let cpu = fraction(usage.requested.cpu + asks.cpu, capacity.cpu);
    let memory = fraction(usage.requested.memory + asks.memory, capacity.memory);
    let pods = fraction(usage.pods + 1, capacity.pods);
    let least = ((1.0 - cpu) + (1.0 - memory) + (1.0 - pods)) / 3.0 * 100.0;
    let balanced = (1.0 - (cpu - memory).abs()) * 100.0;
    let siblings = controller_uid(pod)
        .and_then(|uid| usage.owners.get(uid))
        .copied()
        .unwrap_or(0)
        .max(0);
    let spread = 100.0 / (1.0 + siblings as f64);
    (least + balanced + spread).round() as i64
}

/// kube-scheduler's summary: `0/3 nodes are available: 2 Insufficient cpu, 1 node(s) were not
/// ready.`
pub fn failure_message(nodes: usize, reasons: &HashMap<&'static str, usize>) -> String {
    let mut parts: Vec<(&str, usize)> = reasons.iter().map(|(r, n)| (*r, *n)).collect();
    parts.sort();
    let detail: Vec<String> = parts.iter().map(|(r, n)| format!("{n} {r}")).collect();
    if detail.is_empty() {
        format!("0/{nodes} nodes are available.")
    } else {
        format!("0/{nodes} nodes are available: {}.", detail.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn node(name: &str, cpu: &str, memory: &str, extra: serde_json::Value) -> Node {
        let mut value = json!({ "metadata": { "name": name, "labels": { "zone": "a" } },
            "status": { "allocatable": { "cpu": cpu, "memory": memory, "pods": "110" },
                        "conditions": [{ "type": "Ready", "status": "True" }] } });
        json_patch::merge(&mut value, &extra);
        serde_json::from_value(value).expect("node")
    }

    fn pod(cpu: &str, memory: &str, extra: serde_json::Value) -> Pod {
        let mut value = json!({ "metadata": { "name": "p" }, "spec": { "containers": [{ "name": "c", "image": "i",
            "resources": { "requests": { "cpu": cpu, "memory": memory } } }] } });
        json_patch::merge(&mut value, &extra);
        serde_json::from_value(value).expect("pod")
    }

    #[test]
    fn quantities() {
        let q = |s: &str| Quantity(s.into());
        assert_eq!(millicores(&q("100m")), Some(100));
        assert_eq!(millicores(&q("1.5")), Some(1500));
        assert_eq!(millicores(&q("2")), Some(2000));
        assert_eq!(bytes(&q("16Mi")), Some(16 * 1024 * 1024));
        assert_eq!(bytes(&q("1G")), Some(1_000_000_000));
        assert_eq!(bytes(&q("1e9")), Some(1_000_000_000));
        assert_eq!(bytes(&q("128974848")), Some(128_974_848));
    }

    #[test]
    fn filters_name_their_reason() {
        let n = node("n", "2", "4Gi", json!({}));
        let mut usage = Usage::default();
        assert_eq!(fits(&pod("1", "1Gi", json!({})), &n, &usage), Ok(()));
        usage.requested = Requests {
            cpu: 1500,
            memory: 0,
        };
        assert_eq!(
            fits(&pod("1", "1Gi", json!({})), &n, &usage),
            Err("Insufficient cpu")
        );
        let usage = Usage::default();
        assert_eq!(
            fits(&pod("1", "8Gi", json!({})), &n, &usage),
            Err("Insufficient memory")
        );
        let tainted = node(
            "n",
            "2",
            "4Gi",
            json!({ "spec": { "taints": [{ "key": "gpu", "value": "yes", "effect": "NoSchedule" }] } }),
        );
        assert_eq!(
            fits(&pod("1", "1Gi", json!({})), &tainted, &usage),
            Err("node(s) had untolerated taint")
        );
        let tolerant = pod(
            "1",
            "1Gi",
            json!({ "spec": { "tolerations": [{ "key": "gpu", "operator": "Equal", "value": "yes", "effect": "NoSchedule" }] } }),
        );
        assert_eq!(fits(&tolerant, &tainted, &usage), Ok(()));
        let everything = pod(
            "1",
            "1Gi",
            json!({ "spec": { "tolerations": [{ "operator": "Exists" }] } }),
        );
        assert_eq!(fits(&everything, &tainted, &usage), Ok(()));
        let selective = pod(
            "1",
            "1Gi",
            json!({ "spec": { "nodeSelector": { "zone": "b" } } }),
        );
        assert!(fits(&selective, &n, &usage).is_err());
        let affine = pod(
            "1",
            "1Gi",
            json!({ "spec": { "affinity": { "nodeAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{ "matchExpressions": [{ "key": "zone", "operator": "In", "values": ["x"] }] },
                                  { "matchExpressions": [{ "key": "zone", "operator": "Exists" }] }] } } } } }),
        );
        assert_eq!(fits(&affine, &n, &usage), Ok(()), "terms are ORed");
        let not_ready = node(
            "n",
            "2",
            "4Gi",
            json!({ "status": { "conditions": [{ "type": "Ready", "status": "False" }] } }),
        );
        assert_eq!(
            fits(&pod("1", "1Gi", json!({})), &not_ready, &usage),
            Err("node(s) were not ready")
        );
        let ported = pod(
            "0",
            "0",
            json!({ "spec": { "containers": [{ "name": "c", "image": "i", "ports": [{ "containerPort": 80, "hostPort": 8080 }] }] } }),
        );
        let mut busy = Usage::default();
        busy.add(&ported);
        assert!(fits(&ported, &n, &busy).is_err());
    }

    #[test]
    fn emptier_nodes_score_higher() {
        let n = node("n", "4", "8Gi", json!({}));
        let p = pod("500m", "512Mi", json!({}));
        let empty = Usage::default();
        let busy = Usage {
            requested: Requests {
                cpu: 3000,
                memory: 6 * 1024 * 1024 * 1024,
            },
            pods: 10,
            ..Default::default()
        };
        assert!(score(&p, &n, &empty) > score(&p, &n, &busy));
        let reasons: HashMap<&'static str, usize> =
            [("Insufficient cpu", 2), ("node(s) were not ready", 1)].into();
        assert_eq!(
            failure_message(3, &reasons),
            "0/3 nodes are available: 2 Insufficient cpu, 1 node(s) were not ready."
        );
    }

    #[test]
    fn replicas_of_one_owner_spread_over_nodes() {
        let n = node("n", "4", "8Gi", json!({}));
        let owned = |uid: &str| {
            pod(
                "0",
                "0",
                json!({ "metadata": { "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "web", "uid": uid, "controller": true }] } }),
            )
        };
        let mut with_sibling = Usage::default();
        with_sibling.add(&owned("rs-1"));
        let mut with_stranger = Usage::default();
        with_stranger.add(&owned("rs-2"));
        // Same pod count, same requests: only the owner differs.
        assert!(
            score(&owned("rs-1"), &n, &with_stranger) > score(&owned("rs-1"), &n, &with_sibling)
        );
        with_sibling.remove_usage(&Usage::of(&owned("rs-1")));
        assert!(
            with_sibling.owners.is_empty(),
            "removing the pod forgets its owner"
        );
    }
}
