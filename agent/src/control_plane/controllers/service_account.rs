//! ServiceAccount controller: every namespace that is not being deleted has a `default`
//! ServiceAccount; re-created if someone deletes it.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use super::ControllerError;

async fn reconcile(
    namespace: Arc<Namespace>,
    client: Arc<Client>,
) -> Result<Action, ControllerError> {
    if namespace.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let name = namespace.name_any();
    let accounts: Api<ServiceAccount> = Api::namespaced((*client).clone(), &name);
    if accounts.get_opt("default").await?.is_none() {
        let account = ServiceAccount {
            metadata: ObjectMeta {
                name: Some("default".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        match accounts.create(&PostParams::default(), &account).await {
            Ok(_) => tracing::info!(namespace = name, "created the default ServiceAccount"),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Action::await_change())
}

fn error_policy(_: Arc<Namespace>, error: &ControllerError, _: Arc<Client>) -> Action {
    tracing::warn!(error = %error, "serviceaccount controller: retrying");
    Action::requeue(std::time::Duration::from_secs(2))
}

/// Runs the controller.
pub async fn run(client: Client) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let accounts: Api<ServiceAccount> = Api::all(client.clone());
    Controller::new(namespaces, watcher::Config::default())
        .watches(accounts, watcher::Config::default(), |sa| {
            (sa.name_any() == "default")
                .then(|| ObjectRef::new(&sa.namespace().unwrap_or_default()))
        })
        .run(reconcile, error_policy, Arc::new(client))
        .for_each(|_| futures::future::ready(()))
        .await;
}
