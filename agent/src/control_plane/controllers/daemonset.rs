//! DaemonSet controller: one pod on every eligible node (nodeSelector, required node affinity,
//! taints against the pod's tolerations plus the ones kube adds to every daemon pod), placed by
//! the scheduler through a `metadata.name` node affinity, as kube-controller-manager does.
//! RollingUpdate replaces pods whose template hash is stale, at most maxUnavailable at a time.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod, Toleration};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use super::ControllerError;
use super::deployment::template_hash;
use super::replicaset::{controller_of, pod_ready};
use crate::control_plane::scheduler::predicates::tolerates;

const HASH_LABEL: &str = "controller-revision-hash";

/// Tolerations kube adds to every daemon pod, so it stays through node trouble.
fn daemon_tolerations() -> Vec<Toleration> {
    let t = |key: &str, effect: &str| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    };
    vec![
        t("node.kubernetes.io/not-ready", "NoExecute"),
        t("node.kubernetes.io/unreachable", "NoExecute"),
        t("node.kubernetes.io/disk-pressure", "NoSchedule"),
        t("node.kubernetes.io/memory-pressure", "NoSchedule"),
        t("node.kubernetes.io/pid-pressure", "NoSchedule"),
        t("node.kubernetes.io/unschedulable", "NoSchedule"),
    ]
}

struct Context {
    client: Client,
    nodes: Store<Node>,
    pods: Store<Pod>,
}

/// Whether the daemon pod may be placed on `node` (or, when one is `running` there already,
/// keep running: then only NoExecute taints count, as in kube).
fn eligible(ds: &DaemonSet, node: &Node, running: bool) -> bool {
    let Some(spec) = ds.spec.template.spec.as_ref() else {
        return false;
    };
    let labels = node.labels();
    if let Some(selector) = &spec.node_selector
        && !selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    {
        return false;
    }
    let mut tolerations = spec.tolerations.clone().unwrap_or_default();
    tolerations.extend(daemon_tolerations());
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    taints
        .iter()
        .filter(|t| t.effect == "NoExecute" || (!running && t.effect == "NoSchedule"))
        .all(|taint| tolerations.iter().any(|tol| tolerates(tol, taint)))
}

async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    super::synced(&ctx.nodes).await?;
    super::synced(&ctx.pods).await?;
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let (ns, name) = (ds.namespace().unwrap_or_default(), ds.name_any());
    let uid = ds.uid().unwrap_or_default();
    let hash = template_hash(&serde_json::to_value(&ds.spec.template).unwrap_or_default());
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let mut by_node: HashMap<String, Vec<Arc<Pod>>> = HashMap::new();
    for pod in ctx.pods.state() {
        if controller_of(&pod.metadata).is_some_and(|o| o.uid == uid)
            && pod.metadata.deletion_timestamp.is_none()
        {
            let node = affinity_node(&pod).unwrap_or_default();
            by_node.entry(node).or_default().push(pod);
        }
    }
    let nodes = ctx.nodes.state();
    let wanted: Vec<String> = nodes
        .iter()
        .filter(|n| eligible(&ds, n, by_node.contains_key(&n.name_any())))
        .map(|n| n.name_any())
        .collect();
    let owner = ds
        .controller_owner_ref(&())
        .ok_or_else(|| ControllerError::Invalid("no owner ref".into()))?;
    let max_unavailable = match ds
        .spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref())
        .and_then(|r| r.max_unavailable.as_ref())
    {
        Some(IntOrString::Int(n)) => (*n).max(1) as usize,
        Some(IntOrString::String(p)) => {
            ((p.trim_end_matches('%').parse::<f64>().unwrap_or(0.0) * wanted.len() as f64 / 100.0)
                .floor() as usize)
                .max(1)
        }
        None => 1,
    };
    let on_delete = ds
        .spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        == Some("OnDelete");
    let mut unavailable = wanted
        .iter()
        .filter(|n| {
            !by_node
                .get(*n)
                .is_some_and(|pods| pods.iter().any(|p| pod_ready(p)))
        })
        .count();

    for node in &wanted {
        let pods = by_node.get(node).cloned().unwrap_or_default();
        if pods.is_empty() {
            let mut template = ds.spec.template.clone();
            let metadata = template.metadata.get_or_insert_with(Default::default);
            metadata
                .labels
                .get_or_insert_with(Default::default)
                .insert(HASH_LABEL.into(), hash.clone());
            let mut pod: Pod = serde_json::from_value(json!({
                "metadata": { "generateName": format!("{name}-"), "namespace": ns, "labels": metadata.labels, "annotations": metadata.annotations, "ownerReferences": [owner] },
                "spec": template.spec,
            }))
            .map_err(|e| ControllerError::Invalid(e.to_string()))?;
            if let Some(spec) = pod.spec.as_mut() {
                spec.tolerations
                    .get_or_insert_with(Default::default)
                    .extend(daemon_tolerations());
                spec.affinity = Some(serde_json::from_value(json!({ "nodeAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{ "matchFields": [{ "key": "metadata.name", "operator": "In", "values": [node] }] }] } } }))
                    .map_err(|e| ControllerError::Invalid(e.to_string()))?);
            }
            pods_api.create(&PostParams::default(), &pod).await?;
            continue;
        }
        // Extra pods on one node, and stale ones during a rolling update.
        for extra in pods.iter().skip(1) {
            let _ = pods_api
                .delete(&extra.name_any(), &DeleteParams::default())
                .await;
        }
        let stale = pods[0].labels().get(HASH_LABEL) != Some(&hash);
        if stale && !on_delete && (unavailable < max_unavailable || !pod_ready(&pods[0])) {
            let _ = pods_api
                .delete(&pods[0].name_any(), &DeleteParams::default())
                .await;
            if pod_ready(&pods[0]) {
                unavailable += 1;
            }
        }
    }
    // Pods on nodes that are gone or no longer eligible.
    for (node, pods) in &by_node {
        if !wanted.contains(node) {
            for pod in pods {
                let _ = pods_api
                    .delete(&pod.name_any(), &DeleteParams::default())
                    .await;
            }
        }
    }

    let scheduled = wanted.iter().filter(|n| by_node.contains_key(*n)).count();
    let ready = wanted
        .iter()
        .filter(|n| {
            by_node
                .get(*n)
                .is_some_and(|p| p.iter().any(|p| pod_ready(p)))
        })
        .count();
    let updated = wanted
        .iter()
        .filter(|n| {
            by_node
                .get(*n)
                .is_some_and(|p| p.iter().any(|p| p.labels().get(HASH_LABEL) == Some(&hash)))
        })
        .count();
    let misscheduled = by_node.keys().filter(|n| !wanted.contains(n)).count();
    let status = json!({ "status": {
        "desiredNumberScheduled": wanted.len(), "currentNumberScheduled": scheduled, "numberReady": ready,
        "updatedNumberScheduled": updated, "numberAvailable": ready, "numberUnavailable": wanted.len() - ready,
        "numberMisscheduled": misscheduled, "observedGeneration": ds.metadata.generation,
    }});
    let sets: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &ns);
    sets.patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
        .await?;
    Ok(Action::await_change())
}

/// The node a daemon pod is pinned to (its `metadata.name` affinity), or where it runs.
fn affinity_node(pod: &Pod) -> Option<String> {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .and_then(|r| r.node_selector_terms.first())
        .and_then(|t| t.match_fields.as_ref())
        .and_then(|f| f.first())
        .and_then(|f| f.values.as_ref())
        .and_then(|v| v.first().cloned())
        .or_else(|| pod.spec.as_ref().and_then(|s| s.node_name.clone()))
}

fn error_policy(ds: Arc<DaemonSet>, error: &ControllerError, _: Arc<Context>) -> Action {
    tracing::warn!(daemonset = ds.name_any(), error = %error, "daemonset controller: retrying");
    Action::requeue(std::time::Duration::from_secs(1))
}

/// Runs the controller.
pub async fn run(client: Client) {
    let (pods, pod_events) =
        super::reflect(Api::<Pod>::all(client.clone()), watcher::Config::default());
    let (nodes, node_events) =
        super::reflect(Api::<Node>::all(client.clone()), watcher::Config::default());
    let sets: Api<DaemonSet> = Api::all(client.clone());
    let controller = Controller::new(sets, watcher::Config::default());
    let all_sets = controller.store();
    // Any node change may add or remove a daemon pod of every DaemonSet.
    let every_set = move |_node: Node| {
        all_sets
            .state()
            .iter()
            .map(|d| ObjectRef::from_obj(d.as_ref()))
            .collect::<Vec<_>>()
    };
    controller
        .owns_stream(pod_events)
        .watches_stream(node_events, every_set)
        .run(
            reconcile,
            error_policy,
            Arc::new(Context {
                client,
                nodes,
                pods,
            }),
        )
        .for_each(|_| futures::future::ready(()))
        .await;
}
