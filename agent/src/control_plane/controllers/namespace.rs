//! Namespace controller: a namespace being deleted (with the `kubernetes` finalizer in
//! `spec.finalizers`) has everything in it deleted; once nothing is left, the finalizer is
//! removed through the `finalize` subresource and the API server removes the namespace.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::discovery::{ApiResource, Scope};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use super::ControllerError;

struct Context {
    client: Client,
    /// Every namespaced resource the server serves (from discovery), listed and deletable.
    resources: Vec<ApiResource>,
}

async fn reconcile(
    namespace: Arc<Namespace>,
    ctx: Arc<Context>,
) -> Result<Action, ControllerError> {
    let finalizers = namespace
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.clone())
        .unwrap_or_default();
    if namespace.metadata.deletion_timestamp.is_none()
        || !finalizers.iter().any(|f| f == "kubernetes")
    {
        return Ok(Action::await_change());
    }
    let name = namespace.name_any();
    let mut remaining = 0;
    for resource in &ctx.resources {
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &name, resource);
        api.delete_collection(&DeleteParams::background(), &ListParams::default())
            .await?;
        remaining += api
            .list_metadata(&ListParams::default().limit(1))
            .await?
            .items
            .len();
    }
    if remaining > 0 {
        // Pods on nodes go only once their kubelet confirms; look again shortly.
        return Ok(Action::requeue(std::time::Duration::from_secs(1)));
    }
    let mut finalized = (*namespace).clone();
    if let Some(spec) = finalized.spec.as_mut() {
        spec.finalizers = Some(
            finalizers
                .into_iter()
                .filter(|f| f != "kubernetes")
                .collect(),
        );
    }
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    match namespaces
        .replace_subresource("finalize", &name, &PostParams::default(), &finalized)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    tracing::info!(namespace = name, "namespace emptied and finalized");
    Ok(Action::await_change())
}

fn error_policy(namespace: Arc<Namespace>, error: &ControllerError, _: Arc<Context>) -> Action {
    tracing::warn!(namespace = namespace.name_any(), error = %error, "namespace controller: retrying");
    Action::requeue(std::time::Duration::from_secs(2))
}

/// Runs the controller (after discovering the namespaced resources).
pub async fn run(client: Client) {
    let resources: Vec<ApiResource> = super::discover(&client)
        .await
        .into_iter()
        .filter(|(_, caps)| {
            caps.scope == Scope::Namespaced && caps.supports_operation("deletecollection")
        })
        .map(|(resource, _)| resource)
        .collect();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    Controller::new(namespaces, watcher::Config::default())
        .run(
            reconcile,
            error_policy,
            Arc::new(Context { client, resources }),
        )
        .for_each(|_| futures::future::ready(()))
        .await;
}
