//! Cluster DNS served by the agent, in place of a CoreDNS deployment: every agent answers on
//! its node IP (port 53, UDP and TCP) for the cluster domain from the Services and
//! EndpointSlices it watches, and forwards every other name to the node's resolvers.
//!
//! Pods reach it through the `kube-system/kube-dns` Service (10.96.0.10 by default) whose
//! EndpointSlice the control plane's `cluster_dns` controller keeps at one endpoint per node;
//! with `internalTrafficPolicy: Local` each node's proxy sends a pod's question to its own
//! agent. The kubelet writes `nameserver <cluster-dns>` into the pods' resolv.conf
//! ([`resolv_conf`]).
//!
//! - [`records`]: the answers (pure, unit-tested from fake objects).
//! - [`forward`]: the upstream client.
//! - [`server`]: the hickory-server request handler.
//! - [`resolv_conf`]: the pods' resolv.conf by dnsPolicy, as kubelet writes it.

pub mod forward;
pub mod records;
pub mod resolv_conf;
pub mod server;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};

pub use forward::{Forwarder, upstreams_from_resolv_conf};
pub use records::{ClusterState, Zone};

/// How long a TCP client may stay idle.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the server waits for the first list of Services and EndpointSlices before it
/// answers anyway (CoreDNS waits 5 s).
const SYNC_TIMEOUT: Duration = Duration::from_secs(10);

/// How the agent's DNS server is set up (`windlass agent --dns-bind-address`,
/// `--cluster-domain`, `--resolv-conf`).
#[derive(Debug, Clone)]
pub struct DnsOptions {
    /// Where to listen, UDP and TCP (the node IP, port 53).
    pub listen: SocketAddr,
    /// The cluster domain (`cluster.local`).
    pub cluster_domain: String,
    /// The resolvers names outside the cluster domain go to (from the node's resolv.conf).
    pub upstreams: Vec<SocketAddr>,
}

/// Errors that stop the DNS server.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The cluster domain is not a DNS name.
    #[error("invalid cluster domain {domain:?}")]
    Domain {
        /// The domain given.
        domain: String,
        /// The parse error.
        #[source]
        source: hickory_proto::ProtoError,
    },
    /// The listening socket could not be opened.
    #[error("failed to bind the DNS server to {protocol} {addr}")]
    Bind {
        /// `udp` or `tcp`.
        protocol: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The server loop failed.
    #[error("the DNS server failed")]
    Server(#[source] hickory_proto::ProtoError),
}

/// The reflected Services and EndpointSlices.
#[derive(Debug, Clone)]
pub struct Stores {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
}

impl ClusterState for Stores {
    fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>> {
        self.services.get(&ObjectRef::new(name).within(namespace))
    }

    fn endpoint_slices(&self, namespace: &str, service: &str) -> Vec<Arc<EndpointSlice>> {
        // A scan of the slices: fine for the clusters Windlass runs; an index by service is
        // the step up when it is not.
        self.slices
            .state()
            .into_iter()
            .filter(|slice| {
                slice.metadata.namespace.as_deref() == Some(namespace)
                    && slice
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(records::SERVICE_NAME_LABEL))
                        .is_some_and(|name| name == service)
            })
            .collect()
    }
}

/// Serves cluster DNS on `options.listen` until `shutdown` resolves. Binding fails at once
/// with [`DnsError::Bind`]; watch errors are retried with backoff (a 410 Gone relists).
pub async fn run(
    client: kube::Client,
    options: DnsOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DnsError> {
    let zone = Zone::new(&options.cluster_domain).map_err(|source| DnsError::Domain {
        domain: options.cluster_domain.clone(),
        source,
    })?;
    let udp = tokio::net::UdpSocket::bind(options.listen)
        .await
        .map_err(|source| DnsError::Bind {
            protocol: "udp",
            addr: options.listen,
            source,
        })?;
    let tcp = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|source| DnsError::Bind {
            protocol: "tcp",
            addr: options.listen,
            source,
        })?;
    // Asking ourselves would loop.
    let upstreams: Vec<SocketAddr> = options
        .upstreams
        .iter()
        .copied()
        .filter(|u| *u != options.listen)
        .collect();
    if upstreams.is_empty() {
        tracing::warn!("no upstream nameserver; names outside the cluster domain get SERVFAIL");
    }

    let (services, services_writer) = reflector::store::<Service>();
    let (slices, slices_writer) = reflector::store::<EndpointSlice>();
    let watch_services = watcher::watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(services_writer)
    .for_each(|event| async move {
        if let Err(e) = event {
            tracing::warn!(resource = "services", error = %e, "dns watch failed; retrying");
        }
    });
    let watch_slices = watcher::watcher(
        Api::<EndpointSlice>::all(client),
        watcher::Config::default().labels(records::SERVICE_NAME_LABEL),
    )
    .default_backoff()
    .reflect(slices_writer)
    .for_each(|event| async move {
        if let Err(e) = event {
            tracing::warn!(resource = "endpointslices", error = %e, "dns watch failed; retrying");
        }
    });
    let watchers = async {
        tokio::join!(watch_services, watch_slices);
    };
    tokio::pin!(watchers);

    // Answer from a listed cache: a name asked before the first list would get a wrong
    // NXDOMAIN.
    let synced = async {
        let _ = tokio::join!(services.wait_until_ready(), slices.wait_until_ready());
    };
    tokio::select! {
        _ = &mut watchers => {}
        _ = synced => {}
        _ = tokio::time::sleep(SYNC_TIMEOUT) => {
            tracing::warn!("services and endpointslices not listed yet; serving DNS anyway");
        }
    }

    let stores = Stores { services, slices };
    let handler = server::Handler::new(zone, Arc::new(stores), Forwarder::new(upstreams.clone()));
    let mut server = hickory_server::ServerFuture::new(handler);
    server.register_socket(udp);
    server.register_listener(tcp, TCP_TIMEOUT);
    let token = server.shutdown_token().clone();
    tracing::info!(
        listen = %options.listen,
        cluster_domain = %options.cluster_domain,
        upstreams = ?upstreams,
        "cluster dns serving"
    );
    let serve = server.block_until_done();
    tokio::pin!(serve);
    tokio::select! {
        result = &mut serve => return result.map_err(DnsError::Server),
        _ = shutdown => {}
        _ = &mut watchers => {}
    }
    token.cancel();
    serve.await.map_err(DnsError::Server)
}
