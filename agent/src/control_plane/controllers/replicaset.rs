//! ReplicaSet controller: keeps `spec.replicas` pods that match the selector and are owned by
//! the ReplicaSet; adopts matching orphans; on scale-down deletes the least valuable first
//! (unscheduled, then not ready, then newest); reports status.
//!
//! Pods come from one reflector (watch) that also triggers reconciles. Pods it has just created
//! or deleted may not be in that store yet, so the controller remembers them ("expectations",
//! as kube-controller-manager does) and never creates or deletes twice for one change.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use super::ControllerError;

/// Whether `labels` satisfy a `matchLabels` / `matchExpressions` selector.
pub fn selector_matches(
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    labels: &BTreeMap<String, String>,
) -> bool {
    let equal = selector
        .match_labels
        .as_ref()
        .is_none_or(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let expressions = selector.match_expressions.as_ref().is_none_or(|exprs| {
        exprs.iter().all(|e| {
            let values = e.values.clone().unwrap_or_default();
            let value = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
    });
    equal && expressions
}

/// Whether a pod is Ready (its Ready condition is True).
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The controller owner reference of an object, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_ref()
        .and_then(|refs| refs.iter().find(|r| r.controller == Some(true)))
}

/// What the controller did but has not seen yet, per ReplicaSet uid.
#[derive(Default)]
struct Expectations {
    creating: HashMap<String, HashSet<String>>,
    deleting: HashMap<String, HashSet<String>>,
}

struct Context {
    client: Client,
    pods: Store<Pod>,
    expectations: Mutex<Expectations>,
}

/// Scale-down order: unscheduled, then not ready, then newest first.
fn deletion_rank(pod: &Pod) -> (bool, bool, std::cmp::Reverse<String>) {
    let scheduled = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_ref())
        .is_some();
    let created = pod
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.to_string())
        .unwrap_or_default();
    (scheduled, pod_ready(pod), std::cmp::Reverse(created))
}

async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    super::synced(&ctx.pods).await?;
    if rs.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let (ns, name) = (rs.namespace().unwrap_or_default(), rs.name_any());
    let uid = rs.uid().unwrap_or_default();
    let spec = &rs.spec;
    let wanted = usize::try_from(spec.replicas.unwrap_or(1).max(0)).unwrap_or(0);
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);

    // Owned pods, and orphans that match the selector (to adopt).
    let mut owned = Vec::new();
    for pod in ctx.pods.state() {
        if pod.namespace().as_deref() != Some(ns.as_str()) {
            continue;
        }
        let labels = pod.labels().clone();
        match controller_of(&pod.metadata) {
            Some(owner) if owner.uid == uid => owned.push(pod),
            None if pod.metadata.deletion_timestamp.is_none()
                && selector_matches(&spec.selector, &labels) =>
            {
                let owner = rs
                    .controller_owner_ref(&())
                    .ok_or_else(|| ControllerError::Invalid("no owner ref".into()))?;
                let patch = json!({ "metadata": { "ownerReferences": [owner] } });
                pods_api
                    .patch(
                        &pod.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(patch),
                    )
                    .await?;
                tracing::info!(replicaset = %name, pod = pod.name_any(), "adopted an orphan pod");
                owned.push(pod);
            }
            _ => {}
        }
    }
    let active: Vec<Arc<Pod>> = owned
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .cloned()
        .collect();
    let seen: HashSet<String> = active.iter().map(|p| p.name_any()).collect();
    let (creating, deleting) = {
        let mut exp = ctx
            .expectations
            .lock()
            .map_err(|_| ControllerError::Invalid("expectations poisoned".into()))?;
        let creating = exp.creating.entry(uid.clone()).or_default();
        creating.retain(|n| !seen.contains(n));
        let pending_creates = creating.len();
        let deleting = exp.deleting.entry(uid.clone()).or_default();
        deleting.retain(|n| seen.contains(n));
        (pending_creates, deleting.clone())
    };
    let counted = active.len()
        - active
            .iter()
            .filter(|p| deleting.contains(&p.name_any()))
            .count()
        + creating;

    if counted < wanted {
        let template = spec.template.clone().unwrap_or_default();
        let owner = rs
            .controller_owner_ref(&())
            .ok_or_else(|| ControllerError::Invalid("no owner ref".into()))?;
        let mut metadata = template.metadata.clone().unwrap_or_default();
        metadata.name = None;
        metadata.generate_name = Some(format!("{name}-"));
        metadata.namespace = Some(ns.clone());
        metadata.owner_references = Some(vec![owner.clone()]);
        let pod = Pod {
            metadata,
            spec: template.spec.clone(),
            status: None,
        };
        // Up to 16 creates in flight (a 1,000-replica scale-up must not be 1,000 round trips in
        // a row); each created pod is expected before the next reconcile counts.
        let post = PostParams::default();
        let creates = futures::stream::iter(counted..wanted)
            .map(|_| pods_api.create(&post, &pod))
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await;
        let mut failure = None;
        for created in creates {
            match created {
                Ok(created) => {
                    if let Ok(mut exp) = ctx.expectations.lock() {
                        exp.creating
                            .entry(uid.clone())
                            .or_default()
                            .insert(created.name_any());
                    }
                }
                Err(e) => failure = Some(e),
            }
        }
        if let Some(e) = failure {
            return Err(e.into());
        }
        tracing::info!(replicaset = %name, created = wanted - counted, "scaled up");
    } else if counted > wanted {
        let mut candidates: Vec<Arc<Pod>> = active
            .into_iter()
            .filter(|p| !deleting.contains(&p.name_any()))
            .collect();
        candidates.sort_by_key(|p| deletion_rank(p));
        for pod in candidates.into_iter().take(counted - wanted) {
            match pods_api
                .delete(&pod.name_any(), &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
            if let Ok(mut exp) = ctx.expectations.lock() {
                exp.deleting
                    .entry(uid.clone())
                    .or_default()
                    .insert(pod.name_any());
            }
        }
        tracing::info!(replicaset = %name, deleted = counted - wanted, "scaled down");
    }

    // Pods being deleted (by this reconcile or an earlier one not yet seen) no longer count,
    // even if the store still shows them live: status must never overstate availability.
    let going: HashSet<String> = ctx
        .expectations
        .lock()
        .map(|e| e.deleting.get(&uid).cloned().unwrap_or_default())
        .unwrap_or_default();
    let staying: Vec<&Arc<Pod>> = owned
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && !going.contains(&p.name_any()))
        .collect();
    let ready = staying.iter().filter(|p| pod_ready(p)).count();
    let current = staying.len();
    let status = json!({ "status": {
        "replicas": current,
        "fullyLabeledReplicas": current,
        "readyReplicas": ready,
        "availableReplicas": ready,
        "observedGeneration": rs.metadata.generation,
    }});
    let unchanged = rs.status.as_ref().is_some_and(|s| {
        s.replicas as usize == current
            && s.ready_replicas.unwrap_or(0) as usize == ready
            && s.observed_generation == rs.metadata.generation
    });
    if !unchanged {
        let sets: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
        sets.patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
            .await?;
    }
    Ok(Action::await_change())
}

fn error_policy(rs: Arc<ReplicaSet>, error: &ControllerError, _: Arc<Context>) -> Action {
    tracing::warn!(replicaset = rs.name_any(), error = %error, "replicaset controller: retrying");
    Action::requeue(std::time::Duration::from_secs(1))
}

/// Runs the controller.
pub async fn run(client: Client) {
    let (pods, pod_events) =
        super::reflect(Api::<Pod>::all(client.clone()), watcher::Config::default());
    let sets: Api<ReplicaSet> = Api::all(client.clone());
    let ctx = Arc::new(Context {
        client,
        pods,
        expectations: Default::default(),
    });
    Controller::new(sets, watcher::Config::default())
        .owns_stream(pod_events)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}
