//! The scheduler: binds pods that have no node (and ask for the default scheduler) to the best
//! node that fits, through `pods/binding`, as kube-scheduler does.
//!
//! Pods and nodes come from reflectors (watches). Decisions are made one at a time under a lock,
//! and a bound-but-not-yet-seen pod stays "assumed" on its node, so two quick decisions never
//! oversubscribe a node. A pod that fits nowhere gets a `FailedScheduling` event naming the
//! reasons and its PodScheduled condition set to False; it is tried again when nodes change and
//! with a backoff.

pub mod predicates;

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;

use self::predicates::{Usage, fits, score};
use crate::control_plane::controllers::reflect;

/// Scheduler names this scheduler serves.
const SCHEDULER_NAMES: [&str; 2] = ["default-scheduler", "windlass"];

/// Errors from one scheduling attempt.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// The API refused a request.
    #[error("API request failed")]
    Api(#[from] kube::Error),
    /// No node fits (the message names the reasons).
    #[error("{0}")]
    Unschedulable(String),
}

/// Requests per node: every bound pod the watch has shown, plus pods this scheduler has just
/// bound and not yet seen bound (assumed), so decisions never oversubscribe a node and never
/// walk every pod.
#[derive(Default)]
struct Ledger {
    per_node: HashMap<String, Usage>,
    by_pod: HashMap<String, (String, Usage)>,
}

impl Ledger {
    fn upsert(&mut self, uid: &str, node: &str, usage: Usage) {
        self.remove(uid);
        self.per_node
            .entry(node.to_string())
            .or_default()
            .add_usage(&usage);
        self.by_pod
            .insert(uid.to_string(), (node.to_string(), usage));
    }

    fn remove(&mut self, uid: &str) {
        if let Some((node, usage)) = self.by_pod.remove(uid)
            && let Some(total) = self.per_node.get_mut(&node)
        {
            total.remove_usage(&usage);
        }
    }

    /// Applies one pod watch event.
    fn observe(&mut self, event: &watcher::Event<Pod>) {
        match event {
            watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => {
                let uid = pod.uid().unwrap_or_default();
                let node = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .filter(|n| !n.is_empty());
                match node {
                    Some(_) if terminal(pod) => self.remove(&uid),
                    Some(node) => self.upsert(&uid, &node, Usage::of(pod)),
                    // Unbound as far as this event knows: an assumption stays until the
                    // binding shows up.
                    None => {}
                }
            }
            watcher::Event::Delete(pod) => self.remove(&pod.uid().unwrap_or_default()),
            watcher::Event::Init | watcher::Event::InitDone => {}
        }
    }
}

struct Context {
    client: Client,
    nodes: Store<Node>,
    ledger: std::sync::Mutex<Ledger>,
    /// One decision at a time (binding happens outside it).
    deciding: tokio::sync::Mutex<()>,
}

fn terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

async fn schedule(pod: Arc<Pod>, ctx: Arc<Context>) -> Result<Action, ScheduleError> {
    let spec = pod.spec.as_ref();
    let bound = spec
        .and_then(|s| s.node_name.as_ref())
        .is_some_and(|n| !n.is_empty());
    let ours = SCHEDULER_NAMES.contains(
        &spec
            .and_then(|s| s.scheduler_name.as_deref())
            .unwrap_or("default-scheduler"),
    );
    if bound || !ours || pod.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let (ns, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
    let uid = pod.uid().unwrap_or_default();
    let decision = {
        let _one_at_a_time = ctx.deciding.lock().await;
        let nodes = ctx.nodes.state();
        let mut ledger = ctx
            .ledger
            .lock()
            .map_err(|_| ScheduleError::Unschedulable("scheduler ledger poisoned".into()))?;
        if ledger.by_pod.contains_key(&uid) {
            // Already decided (and being bound): nothing to do.
            return Ok(Action::await_change());
        }
        let mut reasons: HashMap<&'static str, usize> = HashMap::new();
        let mut best: Option<(i64, String)> = None;
        let empty = Usage::default();
        for node in &nodes {
            let node_name = node.name_any();
            let on_node = ledger.per_node.get(&node_name).unwrap_or(&empty);
            match fits(&pod, node, on_node) {
                Ok(()) => {
                    let s = score(&pod, node, on_node);
                    if best
                        .as_ref()
                        .is_none_or(|(b, n)| s > *b || (s == *b && node_name < *n))
                    {
                        best = Some((s, node_name));
                    }
                }
                Err(reason) => *reasons.entry(reason).or_default() += 1,
            }
        }
        match best {
            Some((_, node)) => {
                // Assume it now, so the next decision sees this node's new usage.
                ledger.upsert(&uid, &node, Usage::of(&pod));
                Ok(node)
            }
            None => Err(predicates::failure_message(nodes.len(), &reasons)),
        }
    };
    let node = match decision {
        Ok(node) => node,
        Err(message) => {
            report_unschedulable(&ctx.client, &pod, &message).await?;
            return Err(ScheduleError::Unschedulable(message));
        }
    };
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let binding = json!({
        "apiVersion": "v1", "kind": "Binding",
        "metadata": { "name": name, "namespace": ns },
        "target": { "apiVersion": "v1", "kind": "Node", "name": node },
    });
    let result = pods
        .create_subresource::<_, serde_json::Value>(
            "binding",
            &name,
            &PostParams::default(),
            &binding,
        )
        .await;
    match result {
        Ok(_) => tracing::debug!(pod = %format!("{ns}/{name}"), node, "bound"),
        Err(e) => {
            // Not bound by us: drop the assumption (the watch shows wherever it really went).
            if let Ok(mut ledger) = ctx.ledger.lock() {
                ledger.remove(&uid);
            }
            match e {
                kube::Error::Api(status) if status.code == 409 || status.code == 404 => {}
                e => return Err(e.into()),
            }
        }
    }
    Ok(Action::await_change())
}

/// Records why a pod cannot be scheduled: a Warning event and the PodScheduled condition.
async fn report_unschedulable(
    client: &Client,
    pod: &Pod,
    message: &str,
) -> Result<(), kube::Error> {
    let ns = pod.namespace().unwrap_or_default();
    let now = Time(jiff::Timestamp::now());
    let already = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter().any(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.message.as_deref() == Some(message)
            })
        });
    if already {
        // Same reason as last time: the condition and the event already say it.
        return Ok(());
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let condition = json!({ "status": { "conditions": [{ "type": "PodScheduled", "status": "False",
        "reason": "Unschedulable", "message": message, "lastProbeTime": null, "lastTransitionTime": now }] } });
    pods.patch_status(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Strategic(condition),
    )
    .await?;
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let event = Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}.", pod.name_any())),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(pod.name_any()),
            namespace: Some(ns.clone()),
            uid: pod.uid(),
            ..Default::default()
        },
        reason: Some("FailedScheduling".into()),
        message: Some(message.to_string()),
        type_: Some("Warning".into()),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        count: Some(1),
        reporting_component: Some("default-scheduler".into()),
        source: Some(k8s_openapi::api::core::v1::EventSource {
            component: Some("default-scheduler".into()),
            host: None,
        }),
        ..Default::default()
    };
    events.create(&PostParams::default(), &event).await?;
    Ok(())
}

fn error_policy(pod: Arc<Pod>, error: &ScheduleError, _: Arc<Context>) -> Action {
    match error {
        ScheduleError::Unschedulable(message) => {
            tracing::info!(pod = pod.name_any(), message, "unschedulable; retrying");
            Action::requeue(std::time::Duration::from_secs(10))
        }
        ScheduleError::Api(e) => {
            tracing::warn!(pod = pod.name_any(), error = %e, "scheduling failed; retrying");
            Action::requeue(std::time::Duration::from_secs(1))
        }
    }
}

/// Runs the scheduler.
pub async fn run(client: Client) {
    let (nodes, node_events) =
        reflect(Api::<Node>::all(client.clone()), watcher::Config::default());
    let unscheduled = watcher::Config::default().fields("spec.nodeName=");
    let controller = Controller::new(Api::<Pod>::all(client.clone()), unscheduled);
    let pending = controller.store();
    // A node that appears or changes may fit the pods waiting for one.
    let requeue_pending = move |_node: Node| {
        pending
            .state()
            .iter()
            .map(|p| ObjectRef::from_obj(p.as_ref()))
            .collect::<Vec<_>>()
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        nodes,
        ledger: Default::default(),
        deciding: Default::default(),
    });
    // Every pod's binding and end keeps the ledger of node usage current.
    let ledger_ctx = ctx.clone();
    let track_pods = watcher(Api::<Pod>::all(client), watcher::Config::default())
        .default_backoff()
        .for_each(move |event| {
            if let (Ok(event), Ok(mut ledger)) = (event, ledger_ctx.ledger.lock()) {
                ledger.observe(&event);
            }
            futures::future::ready(())
        });
    let schedule_loop = controller
        .watches_stream(node_events, requeue_pending)
        .run(schedule, error_policy, ctx)
        .for_each(|_| futures::future::ready(()));
    tokio::join!(track_pods, schedule_loop);
}
