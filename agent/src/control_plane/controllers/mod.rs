//! The core controllers, as kube-controller-manager runs them, each a reconcile function over
//! kube-runtime's `Controller` (watcher + reflector + de-duplicating work queue + backoff).
//! They use only the Kubernetes API (kube-rs), never the store, so they work the same against
//! any conforming API server.

pub mod cluster_dns;
pub mod daemonset;
pub mod deployment;
pub mod endpointslice;
pub mod gc;
pub mod namespace;
pub mod node_ipam;
pub mod node_lifecycle;
pub mod replicaset;
pub mod service_account;

use std::path::Path;

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// Errors a reconcile returns (and is retried with backoff for).
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The API answered with an error.
    #[error("API request failed")]
    Api(#[from] kube::Error),
    /// The object is not what the controller expects.
    #[error("{0}")]
    Invalid(String),
}

/// Settings shared by the controllers.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// The range node pod CIDRs are cut from (`--cluster-cidr`, default 10.244.0.0/16).
    pub cluster_cidr: (std::net::Ipv4Addr, u8),
    /// The prefix length of each node's pod CIDR (24).
    pub node_cidr_prefix: u8,
    /// Node lease grace and default eviction toleration.
    pub lifecycle: node_lifecycle::LifecycleOptions,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        ControllerOptions {
            cluster_cidr: (std::net::Ipv4Addr::new(10, 244, 0, 0), 16),
            node_cidr_prefix: 24,
            lifecycle: Default::default(),
        }
    }
}

/// A client from a kubeconfig file (the admin kubeconfig `windlass server` writes).
pub async fn client_from_kubeconfig(path: &Path) -> Result<Client, kube::Error> {
    let kubeconfig = Kubeconfig::read_from(path).map_err(kube::Error::InferKubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(kube::Error::InferKubeconfig)?;
    Client::try_from(config)
}

/// Runs every controller until the process ends.
pub async fn run_all(client: Client, options: ControllerOptions) {
    tokio::join!(
        service_account::run(client.clone()),
        node_ipam::run(client.clone(), options.clone()),
        namespace::run(client.clone()),
        replicaset::run(client.clone()),
        deployment::run(client.clone()),
        endpointslice::run(client.clone()),
        cluster_dns::run(client.clone()),
        daemonset::run(client.clone()),
        node_lifecycle::run(client.clone(), options.lifecycle),
        gc::run(client.clone()),
        crate::control_plane::scheduler::run(client.clone()),
    );
}

/// A reflector over `api`: a store kept current by one watch, and the stream of objects that
/// watch touches (for triggering reconciles); the stream must be polled to keep the store fresh.
pub fn reflect<K>(
    api: kube::Api<K>,
    config: kube::runtime::watcher::Config,
) -> (
    kube::runtime::reflector::Store<K>,
    impl futures::Stream<Item = Result<K, kube::runtime::watcher::Error>> + Send,
)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    use kube::runtime::WatchStreamExt;
    let (store, writer) = kube::runtime::reflector::store::<K>();
    let stream = kube::runtime::reflector::reflector(writer, kube::runtime::watcher(api, config))
        .default_backoff()
        .touched_objects();
    (store, stream)
}

/// Waits until `store` holds its first complete list: a controller that decided on a partial
/// cache (after a restart, say) would create pods that exist or miss leases that were renewed,
/// which is why kube-controller-manager waits for its informers to sync.
pub async fn synced<K>(store: &kube::runtime::reflector::Store<K>) -> Result<(), ControllerError>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    store
        .wait_until_ready()
        .await
        .map_err(|_| ControllerError::Invalid("the watch cache closed".into()))
}

/// Every resource the server serves (its recommended version), from discovery, retried until
/// the server answers.
pub async fn discover(
    client: &Client,
) -> Vec<(
    kube::discovery::ApiResource,
    kube::discovery::ApiCapabilities,
)> {
    loop {
        match kube::discovery::Discovery::new(client.clone()).run().await {
            Ok(discovery) => {
                return discovery
                    .groups()
                    .flat_map(|g| g.recommended_resources())
                    .collect();
            }
            Err(e) => {
                tracing::warn!(error = %e, "discovery failed; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}

/// Retry delays for failed reconciles: 1 s doubling to 5 min, per object.
pub fn backoff(attempt: u32) -> std::time::Duration {
    std::time::Duration::from_secs(1u64 << attempt.min(8)).min(std::time::Duration::from_secs(300))
}
