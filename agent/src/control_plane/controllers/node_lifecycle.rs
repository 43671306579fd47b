//! Node lifecycle: a node whose Lease (in `kube-node-lease`) is not renewed within the grace
//! period (40 s) gets its conditions set to Unknown and the `node.kubernetes.io/unreachable`
//! taints (NoSchedule, NoExecute); pods on it that do not tolerate NoExecute for longer are
//! deleted once their toleration (300 s by default) has run out. A node that renews again loses
//! the taints. Each node is re-examined exactly when its next deadline falls, never by polling.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;

use super::ControllerError;

/// The taint a node gets when its kubelet stops reporting.
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";

/// Timing of the controller.
#[derive(Debug, Clone, Copy)]
pub struct LifecycleOptions {
    /// How long a node may go without renewing its Lease (kube: 40 s).
    pub grace: Duration,
    /// How long pods without their own NoExecute toleration stay on an unreachable node (kube's
    /// DefaultTolerationSeconds: 300 s).
    pub default_toleration: Duration,
}

impl Default for LifecycleOptions {
    fn default() -> Self {
        LifecycleOptions {
            grace: Duration::from_secs(40),
            default_toleration: Duration::from_secs(300),
        }
    }
}

struct Context {
    client: Client,
    leases: Store<Lease>,
    pods: Store<Pod>,
    options: LifecycleOptions,
}

fn seconds_since(time: &jiff::Timestamp) -> f64 {
    jiff::Timestamp::now().duration_since(*time).as_secs_f64()
}

/// When the node last showed life: its Lease's renewTime, else its Ready heartbeat.
fn last_heartbeat(node: &Node, leases: &Store<Lease>) -> Option<jiff::Timestamp> {
    let lease = leases.get(&ObjectRef::new(&node.name_any()).within("kube-node-lease"));
    let renewed = lease.and_then(|l| {
        l.spec
            .as_ref()
            .and_then(|s| s.renew_time.as_ref())
            .map(|t| t.0)
    });
    renewed.or_else(|| {
        node.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .and_then(|c| c.last_heartbeat_time.as_ref().map(|t| t.0))
    })
}

/// How long `pod` tolerates an unreachable node (its own NoExecute toleration, else the default).
fn toleration(pod: &Pod, default: Duration) -> Option<Duration> {
    let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.as_ref());
    let matching = tolerations.into_iter().flatten().find(|t| {
        let key_ok = t.key.as_deref() == Some(UNREACHABLE)
            || (t.key.is_none() && t.operator.as_deref() == Some("Exists"));
        let effect_ok = t
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == "NoExecute");
        key_ok && effect_ok
    });
    match matching {
        // Tolerated for ever.
        Some(t) if t.toleration_seconds.is_none() => None,
        Some(t) => Some(Duration::from_secs(
            u64::try_from(t.toleration_seconds.unwrap_or(0).max(0)).unwrap_or(0),
        )),
        None => Some(default),
    }
}

async fn reconcile(node: Arc<Node>, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    super::synced(&ctx.leases).await?;
    super::synced(&ctx.pods).await?;
    let name = node.name_any();
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let grace = ctx.options.grace.as_secs_f64();
    let Some(heartbeat) = last_heartbeat(&node, &ctx.leases) else {
        // Never reported: give it the grace period from registration.
        return Ok(Action::requeue(ctx.options.grace));
    };
    let silent = seconds_since(&heartbeat);
    let taints: Vec<Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let tainted_since = taints
        .iter()
        .find(|t| t.key == UNREACHABLE && t.effect == "NoExecute")
        .and_then(|t| t.time_added.as_ref().map(|t| t.0));
    if silent <= grace {
        if tainted_since.is_some() {
            let kept: Vec<&Taint> = taints.iter().filter(|t| t.key != UNREACHABLE).collect();
            nodes
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "spec": { "taints": kept } })),
                )
                .await?;
            tracing::info!(node = name, "node is reachable again");
        }
        return Ok(Action::requeue(Duration::from_secs_f64(
            grace - silent + 0.1,
        )));
    }

    // Unreachable: conditions Unknown and the taints, once.
    let now = jiff::Timestamp::now();
    if tainted_since.is_none() {
        let conditions: Vec<serde_json::Value> = ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"]
            .iter()
            .map(|t| json!({ "type": t, "status": "Unknown", "reason": "NodeStatusUnknown",
                              "message": "Kubelet stopped posting node status.", "lastTransitionTime": now.to_string() }))
            .collect();
        nodes
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Strategic(json!({ "status": { "conditions": conditions } })),
            )
            .await?;
        let mut all: Vec<serde_json::Value> = taints
            .iter()
            .filter(|t| t.key != UNREACHABLE)
            .map(|t| json!(t))
            .collect();
        all.push(
            json!({ "key": UNREACHABLE, "effect": "NoSchedule", "timeAdded": now.to_string() }),
        );
        all.push(
            json!({ "key": UNREACHABLE, "effect": "NoExecute", "timeAdded": now.to_string() }),
        );
        nodes
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "taints": all } })),
            )
            .await?;
        tracing::warn!(
            node = name,
            silent_seconds = silent as u64,
            "node stopped renewing its lease: marked unreachable"
        );
    }
    let since = tainted_since.unwrap_or(now);

    // Evict pods whose toleration has run out; come back for the next one.
    let mut next: Option<f64> = None;
    for pod in ctx.pods.state() {
        let on_node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name.as_str());
        if !on_node || pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(tolerated) = toleration(&pod, ctx.options.default_toleration) else {
            continue;
        };
        let left = tolerated.as_secs_f64() - seconds_since(&since);
        if left <= 0.0 {
            let api: Api<Pod> =
                Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
            match api.delete(&pod.name_any(), &DeleteParams::default()).await {
                Ok(_) => tracing::info!(
                    node = name,
                    pod = pod.name_any(),
                    "evicted from an unreachable node"
                ),
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        } else {
            next = Some(next.map_or(left, |n: f64| n.min(left)));
        }
    }
    Ok(match next {
        Some(seconds) => Action::requeue(Duration::from_secs_f64(seconds + 0.1)),
        None => Action::requeue(ctx.options.grace),
    })
}

fn error_policy(node: Arc<Node>, error: &ControllerError, _: Arc<Context>) -> Action {
    tracing::warn!(node = node.name_any(), error = %error, "node lifecycle: retrying");
    Action::requeue(Duration::from_secs(1))
}

/// Runs the controller.
pub async fn run(client: Client, options: LifecycleOptions) {
    let (leases, lease_events) = super::reflect(
        Api::<Lease>::namespaced(client.clone(), "kube-node-lease"),
        watcher::Config::default(),
    );
    let (pods, pod_events) =
        super::reflect(Api::<Pod>::all(client.clone()), watcher::Config::default());
    let nodes: Api<Node> = Api::all(client.clone());
    // A renewed lease concerns its node; pods are only read from their store.
    let lease_to_node = |lease: Lease| Some(ObjectRef::<Node>::new(&lease.name_any()));
    let drive_pods = pod_events.for_each(|_| futures::future::ready(()));
    let lifecycle = Controller::new(nodes, watcher::Config::default())
        .watches_stream(lease_events, lease_to_node)
        .run(
            reconcile,
            error_policy,
            Arc::new(Context {
                client,
                leases,
                pods,
                options,
            }),
        )
        .for_each(|_| futures::future::ready(()));
    tokio::join!(drive_pods, lifecycle);
}
