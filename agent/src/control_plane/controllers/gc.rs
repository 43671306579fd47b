//! Garbage collector: ownerReferences, with kube's three propagation policies.
//!
//! - Background: a dependent whose owners are all gone is deleted.
//! - Foreground: an owner being deleted with the `foregroundDeletion` finalizer has its
//!   dependents deleted; once none is left the finalizer is removed (and the owner goes).
//! - Orphan: an owner being deleted with the `orphan` finalizer has itself removed from its
//!   dependents' ownerReferences, then the finalizer is removed.
//!
//! One watch per discovered resource feeds a graph of object metadata (uid -> owners). Nothing
//! is decided before every watch has listed once, and an owner missing from the graph is looked
//! up live before anything is deleted, so a lagging watch never deletes a live object's
//! dependents.

use std::collections::{HashMap, HashSet};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PropagationPolicy};
use kube::discovery::{ApiResource, Scope};
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use serde_json::json;

/// What the collector knows of one object.
#[derive(Debug, Clone)]
struct Entry {
    resource: usize,
    namespace: Option<String>,
    name: String,
    owners: Vec<OwnerReference>,
    deleting: bool,
    finalizers: Vec<String>,
}

struct Collector {
    client: Client,
    resources: Vec<(ApiResource, bool)>,
    objects: HashMap<String, Entry>,
    dependents: HashMap<String, HashSet<String>>,
}

impl Collector {
    fn api(&self, entry: &Entry) -> Api<DynamicObject> {
        let (resource, namespaced) = &self.resources[entry.resource];
        match (&entry.namespace, namespaced) {
            (Some(ns), true) => Api::namespaced_with(self.client.clone(), ns, resource),
            _ => Api::all_with(self.client.clone(), resource),
        }
    }

    fn upsert(&mut self, resource: usize, object: &DynamicObject) -> Option<String> {
        let uid = object.uid()?;
        let entry = Entry {
            resource,
            namespace: object.namespace(),
            name: object.name_any(),
            owners: object.owner_references().to_vec(),
            deleting: object.metadata.deletion_timestamp.is_some(),
            finalizers: object.finalizers().to_vec(),
        };
        if let Some(old) = self.objects.get(&uid) {
            for owner in &old.owners {
                if let Some(set) = self.dependents.get_mut(&owner.uid) {
                    set.remove(&uid);
                }
            }
        }
        for owner in &entry.owners {
            self.dependents
                .entry(owner.uid.clone())
                .or_default()
                .insert(uid.clone());
        }
        self.objects.insert(uid.clone(), entry);
        Some(uid)
    }

    fn remove(&mut self, object: &DynamicObject) -> Option<(String, Entry)> {
        let uid = object.uid()?;
        let entry = self.objects.remove(&uid)?;
        for owner in &entry.owners {
            if let Some(set) = self.dependents.get_mut(&owner.uid) {
                set.remove(&uid);
            }
        }
        Some((uid, entry))
    }

    /// Whether an owner (by reference, in `namespace`) still exists: from the graph, or live.
    async fn owner_exists(&self, owner: &OwnerReference, namespace: Option<&str>) -> bool {
        if self.objects.contains_key(&owner.uid) {
            return true;
        }
        let group_version = owner.api_version.as_str();
        let Some((index, _)) = self
            .resources
            .iter()
            .enumerate()
            .find(|(_, (r, _))| r.kind == owner.kind && r.api_version == group_version)
        else {
            // An owner of a kind this server does not serve: leave the dependent alone.
            return true;
        };
        let probe = Entry {
            resource: index,
            namespace: namespace.map(String::from),
            name: owner.name.clone(),
            owners: Vec::new(),
            deleting: false,
            finalizers: Vec::new(),
        };
        match self.api(&probe).get_opt(&owner.name).await {
            Ok(Some(live)) => live.uid().as_deref() == Some(owner.uid.as_str()),
            Ok(None) => false,
            // Unsure (API error): keep the dependent.
            Err(_) => true,
        }
    }

    /// A dependent whose owners are all gone is deleted (in the background).
    async fn collect_if_dangling(&self, uid: &str) {
        let Some(entry) = self.objects.get(uid).cloned() else {
            return;
        };
        if entry.owners.is_empty() || entry.deleting {
            return;
        }
        // The graph may lag behind (an orphaning just removed the owner reference): decide on
        // the object as it is now.
        let live = match self.api(&entry).get_opt(&entry.name).await {
            Ok(Some(live)) if live.uid().as_deref() == Some(uid) => live,
            _ => return,
        };
        if live.metadata.deletion_timestamp.is_some() || live.owner_references().is_empty() {
            return;
        }
        for owner in live.owner_references() {
            if self.owner_exists(owner, entry.namespace.as_deref()).await {
                return;
            }
        }
        // Only if it has not changed since it was read (orphaned meanwhile, say).
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            preconditions: Some(kube::api::Preconditions {
                uid: live.uid(),
                resource_version: live.resource_version(),
            }),
            ..Default::default()
        };
        match self.api(&entry).delete(&entry.name, &params).await {
            Ok(_) => {
                tracing::info!(name = entry.name, namespace = ?entry.namespace, "collected an object whose owners are gone")
            }
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
            Err(e) => tracing::warn!(name = entry.name, error = %e, "garbage collection failed"),
        }
    }

    /// An owner being deleted with the foreground or orphan finalizer.
    async fn finish_owner(&self, uid: &str) {
        let Some(owner) = self.objects.get(uid).cloned() else {
            return;
        };
        if !owner.deleting {
            return;
        }
        let dependents: Vec<Entry> = self
            .dependents
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|d| self.objects.get(d).cloned())
            .collect();
        let finalizer = if owner.finalizers.iter().any(|f| f == "orphan") {
            for dependent in &dependents {
                let owners: Vec<&OwnerReference> =
                    dependent.owners.iter().filter(|o| o.uid != uid).collect();
                let patch = json!({ "metadata": { "ownerReferences": owners } });
                if let Err(e) = self
                    .api(dependent)
                    .patch(
                        &dependent.name,
                        &PatchParams::default(),
                        &Patch::Merge(patch),
                    )
                    .await
                {
                    tracing::warn!(name = dependent.name, error = %e, "failed to orphan a dependent");
                    return;
                }
            }
            "orphan"
        } else if owner.finalizers.iter().any(|f| f == "foregroundDeletion") {
            if !dependents.is_empty() {
                let params = DeleteParams {
                    propagation_policy: Some(PropagationPolicy::Foreground),
                    ..Default::default()
                };
                for dependent in dependents.iter().filter(|d| !d.deleting) {
                    let _ = self.api(dependent).delete(&dependent.name, &params).await;
                }
                // Finished when the last dependent is gone (its delete event brings us back).
                return;
            }
            "foregroundDeletion"
        } else {
            return;
        };
        let finalizers: Vec<&String> = owner
            .finalizers
            .iter()
            .filter(|f| f.as_str() != finalizer)
            .collect();
        let patch = json!({ "metadata": { "finalizers": finalizers } });
        match self
            .api(&owner)
            .patch(&owner.name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => tracing::warn!(name = owner.name, error = %e, "failed to remove a finalizer"),
        }
    }
}

/// Runs the collector until the process ends.
pub async fn run(client: Client) {
    let resources: Vec<(ApiResource, bool)> = super::discover(&client)
        .await
        .into_iter()
        .filter(|(_, caps)| caps.supports_operation("watch") && caps.supports_operation("delete"))
        .map(|(resource, caps)| (resource, caps.scope == Scope::Namespaced))
        .collect();
    let streams = resources.iter().enumerate().map(|(i, (resource, _))| {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), resource);
        watcher::watcher(api, watcher::Config::default())
            .map(move |event| (i, event))
            .boxed()
    });
    let mut events = futures::stream::select_all(streams);
    let mut collector = Collector {
        client,
        resources,
        objects: HashMap::new(),
        dependents: HashMap::new(),
    };
    let mut synced = HashSet::new();
    let total = collector.resources.len();
    while let Some((resource, event)) = events.next().await {
        let mut touched: Vec<String> = Vec::new();
        let mut owners_of_gone: Vec<String> = Vec::new();
        match event {
            Ok(Event::Apply(object) | Event::InitApply(object)) => {
                touched.extend(collector.upsert(resource, &object))
            }
            Ok(Event::Delete(object)) => {
                if let Some((uid, entry)) = collector.remove(&object) {
                    touched.extend(
                        collector
                            .dependents
                            .get(&uid)
                            .into_iter()
                            .flatten()
                            .cloned(),
                    );
                    owners_of_gone.extend(entry.owners.iter().map(|o| o.uid.clone()));
                }
            }
            Ok(Event::Init) => {}
            Ok(Event::InitDone) => {
                let first = synced.insert(resource);
                if first && synced.len() == total {
                    tracing::info!(
                        objects = collector.objects.len(),
                        "garbage collector synced"
                    );
                    touched.extend(collector.objects.keys().cloned());
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "garbage collector watch error (the watcher retries)");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
        if synced.len() < total {
            continue;
        }
        for uid in &touched {
            collector.collect_if_dangling(uid).await;
            collector.finish_owner(uid).await;
        }
        for uid in &owners_of_gone {
            collector.finish_owner(uid).await;
        }
    }
}
