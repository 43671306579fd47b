//! Deployment controller: one ReplicaSet per pod template (named and labelled by the template's
//! hash), rolled from old to new within maxSurge / maxUnavailable (RollingUpdate) or all at once
//! (Recreate); `deployment.kubernetes.io/revision` annotations so `kubectl rollout history` and
//! `rollout undo` work; old ReplicaSets kept up to `revisionHistoryLimit`; status and the
//! Progressing / Available conditions that `kubectl rollout status` reads.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};

use super::ControllerError;
use super::replicaset::controller_of;

const REVISION: &str = "deployment.kubernetes.io/revision";
const HASH_LABEL: &str = "pod-template-hash";

/// A short, stable hash of a pod template, in kube's safe alphabet (no vowels).
pub fn template_hash(template: &Value) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    // FNV-1a over the canonical JSON (serde_json sorts object keys).
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in template.to_string().bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (0..10)
        .map(|i| ALPHABET[((hash >> (i * 6)) % ALPHABET.len() as u64) as usize] as char)
        .collect()
}

/// Resolves maxSurge / maxUnavailable against `replicas` (percentages: surge rounds up,
/// unavailable rounds down; both zero means one may be unavailable).
pub fn resolve_bounds(
    surge: Option<&IntOrString>,
    unavailable: Option<&IntOrString>,
    replicas: i32,
) -> (i32, i32) {
    let resolve = |v: Option<&IntOrString>, default: &str, round_up: bool| -> i32 {
        match v {
            Some(IntOrString::Int(n)) => *n,
            Some(IntOrString::String(s)) => percent(s, replicas, round_up),
            None => percent(default, replicas, round_up),
        }
    };
    let surge = resolve(surge, "25%", true).max(0);
    let unavailable = resolve(unavailable, "25%", false).max(0);
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable.min(replicas))
    }
}

fn percent(s: &str, replicas: i32, round_up: bool) -> i32 {
    let p: f64 = s.trim_end_matches('%').parse().unwrap_or(0.0);
    let v = p * f64::from(replicas) / 100.0;
    if round_up {
        v.ceil() as i32
    } else {
        v.floor() as i32
    }
}

struct Context {
    client: Client,
    sets: Store<ReplicaSet>,
}

fn revision_of(rs: &ReplicaSet) -> i64 {
    rs.annotations()
        .get(REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.replicas.unwrap_or(0)
}

/// Available replicas of a ReplicaSet, never more than it is scaled to (its status may still
/// count pods it is removing).
fn available(rs: &ReplicaSet) -> i32 {
    let reported = rs
        .status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0);
    reported.min(spec_replicas(rs))
}

/// The template without the hash label (what a ReplicaSet was made from).
fn template_value(template: &k8s_openapi::api::core::v1::PodTemplateSpec) -> Value {
    let mut value = serde_json::to_value(template).unwrap_or(Value::Null);
    if let Some(labels) = value
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(HASH_LABEL);
    }
    value
}

async fn scale(
    api: &Api<ReplicaSet>,
    rs: &ReplicaSet,
    replicas: i32,
) -> Result<(), ControllerError> {
    if spec_replicas(rs) == replicas {
        return Ok(());
    }
    api.patch(
        &rs.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "replicas": replicas } })),
    )
    .await?;
    Ok(())
}

async fn reconcile(
    deployment: Arc<Deployment>,
    ctx: Arc<Context>,
) -> Result<Action, ControllerError> {
    super::synced(&ctx.sets).await?;
    if deployment.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let (ns, name) = (
        deployment.namespace().unwrap_or_default(),
        deployment.name_any(),
    );
    let uid = deployment.uid().unwrap_or_default();
    let spec = &deployment.spec;
    let replicas = spec.replicas.unwrap_or(1);
    let sets_api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    let mut owned: Vec<Arc<ReplicaSet>> = ctx
        .sets
        .state()
        .into_iter()
        .filter(|rs| rs.namespace().as_deref() == Some(ns.as_str()))
        .filter(|rs| controller_of(&rs.metadata).is_some_and(|o| o.uid == uid))
        .collect();
    owned.sort_by_key(|rs| revision_of(rs));
    let wanted_template = template_value(&spec.template);
    let hash = template_hash(&wanted_template);
    let max_revision = owned.iter().map(|rs| revision_of(rs)).max().unwrap_or(0);

    // The new ReplicaSet: the one made from the current template (which may be an old one
    // brought back by a rollback), or a fresh one.
    let existing = owned
        .iter()
        .find(|rs| rs.spec.template.as_ref().map(template_value).as_ref() == Some(&wanted_template))
        .cloned();
    let mut new_revision = max_revision + 1;
    let new_rs = match existing {
        Some(rs) => {
            if revision_of(&rs) == max_revision {
                new_revision = max_revision;
            } else {
                let patch = json!({ "metadata": { "annotations": { REVISION: (max_revision + 1).to_string() } } });
                sets_api
                    .patch(
                        &rs.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(patch),
                    )
                    .await?;
                tracing::info!(
                    deployment = name,
                    replicaset = rs.name_any(),
                    "rolled back to an earlier template"
                );
            }
            rs
        }
        None => {
            let owner = deployment
                .controller_owner_ref(&())
                .ok_or_else(|| ControllerError::Invalid("no owner ref".into()))?;
            let mut template = spec.template.clone();
            template
                .metadata
                .get_or_insert_with(Default::default)
                .labels
                .get_or_insert_with(Default::default)
                .insert(HASH_LABEL.into(), hash.clone());
            let mut selector = spec.selector.clone();
            selector
                .match_labels
                .get_or_insert_with(Default::default)
                .insert(HASH_LABEL.into(), hash.clone());
            let mut labels = spec
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            labels.insert(HASH_LABEL.into(), hash.clone());
            let rs = ReplicaSet {
                metadata: ObjectMeta {
                    name: Some(format!("{name}-{hash}")),
                    namespace: Some(ns.clone()),
                    labels: Some(labels),
                    annotations: Some(
                        [(REVISION.to_string(), (max_revision + 1).to_string())].into(),
                    ),
                    owner_references: Some(vec![owner]),
                    ..Default::default()
                },
                spec: k8s_openapi::api::apps::v1::ReplicaSetSpec {
                    replicas: Some(0),
                    selector,
                    template: Some(template),
                    min_ready_seconds: spec.min_ready_seconds,
                },
                status: None,
            };
            match sets_api.create(&PostParams::default(), &rs).await {
                Ok(created) => {
                    tracing::info!(
                        deployment = name,
                        replicaset = created.name_any(),
                        "created a new ReplicaSet"
                    );
                    Arc::new(created)
                }
                // Created already but not yet in the store: come back when it is.
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    return Ok(Action::requeue(std::time::Duration::from_millis(200)));
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    let olds: Vec<Arc<ReplicaSet>> = owned
        .iter()
        .filter(|rs| rs.uid() != new_rs.uid())
        .cloned()
        .collect();

    let strategy = spec.strategy.as_ref();
    let recreate = strategy.and_then(|s| s.type_.as_deref()) == Some("Recreate");
    let rolling = strategy.and_then(|s| s.rolling_update.as_ref());
    let (surge, unavailable) = if recreate {
        (0, replicas)
    } else {
        resolve_bounds(
            rolling.and_then(|r| r.max_surge.as_ref()),
            rolling.and_then(|r| r.max_unavailable.as_ref()),
            replicas,
        )
    };
    if spec.paused != Some(true) {
        if recreate {
            for old in &olds {
                scale(&sets_api, old, 0).await?;
            }
            let old_pods: i32 = olds
                .iter()
                .map(|rs| rs.status.as_ref().map(|s| s.replicas).unwrap_or(0))
                .sum();
            if old_pods == 0 {
                scale(&sets_api, &new_rs, replicas).await?;
            }
        } else {
            // Up: as far as maxSurge allows.
            let total: i32 = owned.iter().map(|rs| spec_replicas(rs)).sum();
            let room = replicas + surge - total;
            let new_current = spec_replicas(&new_rs);
            let new_target = if new_current > replicas {
                replicas
            } else {
                (new_current + room.max(0)).min(replicas)
            };
            scale(&sets_api, &new_rs, new_target).await?;
            // Down: old replicas, as far as maxUnavailable allows.
            let min_available = replicas - unavailable;
            let all_available: i32 = owned.iter().map(|rs| available(rs)).sum();
            let mut can_remove = (all_available - min_available).max(0);
            // Old replicas that are not available anyway can go first, at no cost.
            for old in &olds {
                let unhealthy = (spec_replicas(old) - available(old)).max(0);
                let target = spec_replicas(old) - unhealthy;
                scale(&sets_api, old, target.max(0)).await?;
            }
            for old in &olds {
                if can_remove == 0 {
                    break;
                }
                let current = spec_replicas(old).min(available(old));
                let cut = current.min(can_remove);
                if cut > 0 {
                    scale(&sets_api, old, current - cut).await?;
                    can_remove -= cut;
                }
            }
        }
    }

    // Keep revisionHistoryLimit old ReplicaSets that are scaled to zero.
    let limit = usize::try_from(spec.revision_history_limit.unwrap_or(10).max(0)).unwrap_or(10);
    let idle: Vec<&Arc<ReplicaSet>> = olds
        .iter()
        .filter(|rs| spec_replicas(rs) == 0 && rs.status.as_ref().is_none_or(|s| s.replicas == 0))
        .collect();
    if idle.len() > limit {
        for rs in idle.iter().take(idle.len() - limit) {
            let _ = sets_api
                .delete(&rs.name_any(), &DeleteParams::background())
                .await;
        }
    }

    // Status, as kubectl rollout status reads it.
    let all: Vec<&ReplicaSet> = olds
        .iter()
        .map(|rs| rs.as_ref())
        .chain(std::iter::once(new_rs.as_ref()))
        .collect();
    let sum = |f: &dyn Fn(&ReplicaSet) -> i32| -> i32 { all.iter().map(|rs| f(rs)).sum() };
    let current = sum(&|rs| rs.status.as_ref().map(|s| s.replicas).unwrap_or(0));
    let ready = sum(&|rs| {
        rs.status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0)
    });
    let available_now = sum(&|rs| available(rs));
    let updated = new_rs.status.as_ref().map(|s| s.replicas).unwrap_or(0);
    let complete = updated == replicas && current == replicas && available_now == replicas;
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let available_ok = available_now >= replicas - unavailable;
    let status = json!({ "status": {
        "observedGeneration": deployment.metadata.generation,
        "replicas": current,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": available_now,
        "unavailableReplicas": (replicas - available_now).max(0),
        "conditions": [
            { "type": "Available", "status": if available_ok { "True" } else { "False" },
              "reason": if available_ok { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" },
              "message": if available_ok { "Deployment has minimum availability." } else { "Deployment does not have minimum availability." },
              "lastUpdateTime": now, "lastTransitionTime": now },
            { "type": "Progressing", "status": "True",
              "reason": if complete { "NewReplicaSetAvailable" } else { "ReplicaSetUpdated" },
              "message": format!("ReplicaSet \"{}\" {}", new_rs.name_any(), if complete { "has successfully progressed." } else { "is progressing." }),
              "lastUpdateTime": now, "lastTransitionTime": now },
        ],
    }});
    let previous = deployment.status.as_ref();
    let changed = previous.is_none_or(|s| {
        s.observed_generation != deployment.metadata.generation
            || s.replicas != Some(current)
            || s.updated_replicas != Some(updated)
            || s.ready_replicas != Some(ready)
            || s.available_replicas != Some(available_now)
    });
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    if changed {
        deployments
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
            .await?;
    }
    if deployment.annotations().get(REVISION).map(String::as_str)
        != Some(new_revision.to_string().as_str())
    {
        let patch =
            json!({ "metadata": { "annotations": { REVISION: new_revision.to_string() } } });
        deployments
            .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
    }
    Ok(Action::await_change())
}

fn error_policy(deployment: Arc<Deployment>, error: &ControllerError, _: Arc<Context>) -> Action {
    tracing::warn!(deployment = deployment.name_any(), error = %error, "deployment controller: retrying");
    Action::requeue(std::time::Duration::from_secs(1))
}

/// Runs the controller.
pub async fn run(client: Client) {
    let (sets, set_events) = super::reflect(
        Api::<ReplicaSet>::all(client.clone()),
        watcher::Config::default(),
    );
    let deployments: Api<Deployment> = Api::all(client.clone());
    Controller::new(deployments, watcher::Config::default())
        .owns_stream(set_events)
        .run(reconcile, error_policy, Arc::new(Context { client, sets }))
        .for_each(|_| futures::future::ready(()))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surge_and_unavailable_round_like_kube() {
        let pct = |s: &str| IntOrString::String(s.into());
        assert_eq!(resolve_bounds(None, None, 4), (1, 1));
        assert_eq!(
            resolve_bounds(None, None, 10),
            (3, 2),
            "25% surge rounds up, 25% unavailable down"
        );
        assert_eq!(
            resolve_bounds(Some(&IntOrString::Int(0)), Some(&IntOrString::Int(0)), 3),
            (0, 1)
        );
        assert_eq!(
            resolve_bounds(Some(&pct("50%")), Some(&IntOrString::Int(0)), 5),
            (3, 0)
        );
    }

    #[test]
    fn template_hashes_are_stable_and_differ_by_template() {
        let a = json!({ "metadata": { "labels": { "app": "web" } }, "spec": { "containers": [{ "name": "c", "image": "v1" }] } });
        let b = json!({ "metadata": { "labels": { "app": "web" } }, "spec": { "containers": [{ "name": "c", "image": "v2" }] } });
        assert_eq!(template_hash(&a), template_hash(&a.clone()));
        assert_ne!(template_hash(&a), template_hash(&b));
        assert_eq!(template_hash(&a).len(), 10);
    }
}
