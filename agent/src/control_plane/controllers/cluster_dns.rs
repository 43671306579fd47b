//! Cluster DNS endpoints: every agent serves DNS on its node IP (port 53), so the
//! `kube-system/kube-dns` Service (no selector; created by the API server bootstrap) gets one
//! EndpointSlice, `kube-dns-windlass`, with one endpoint per Node: its InternalIP, `nodeName`,
//! ready while the Node is Ready, ports `dns` 53/UDP and `dns-tcp` 53/TCP. With
//! `internalTrafficPolicy: Local` each node's proxy sends a pod's question to its own agent.
//!
//! Level-triggered: every Node event and a periodic resync recompute the whole slice, which is
//! written only when it differs.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use kube::{Client, Resource};

use super::ControllerError;

/// The Service pods use as their nameserver.
pub const SERVICE_NAMESPACE: &str = "kube-system";
/// The Service's name.
pub const SERVICE_NAME: &str = "kube-dns";
/// The slice this controller owns.
pub const SLICE_NAME: &str = "kube-dns-windlass";
/// The `endpointslice.kubernetes.io/managed-by` value of the slice.
pub const MANAGER: &str = "windlass.dev/cluster-dns";

const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";

/// How often the slice is checked without a Node event (someone may have edited or deleted
/// it, or the Service may have appeared).
const RESYNC: Duration = Duration::from_secs(30);

/// Whether the Node's Ready condition is True.
fn node_ready(node: &Node) -> bool {
    node.status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// The Node's first InternalIP that is IPv4.
fn internal_ipv4(node: &Node) -> Option<String> {
    node.status
        .iter()
        .flat_map(|s| s.addresses.iter().flatten())
        .filter(|a| a.type_ == "InternalIP")
        .find(|a| a.address.parse::<std::net::Ipv4Addr>().is_ok())
        .map(|a| a.address.clone())
}

/// The slice for `nodes` (sorted by node name), owned by `service` when it exists.
pub fn desired_slice(nodes: &[Node], service: Option<&Service>) -> EndpointSlice {
    let mut by_name: BTreeMap<String, Endpoint> = BTreeMap::new();
    for node in nodes {
        let (Some(name), Some(ip)) = (node.metadata.name.clone(), internal_ipv4(node)) else {
            continue;
        };
        let ready = node_ready(node) && node.metadata.deletion_timestamp.is_none();
        by_name.insert(
            name.clone(),
            Endpoint {
                addresses: vec![ip],
                conditions: Some(EndpointConditions {
                    ready: Some(ready),
                    serving: Some(ready),
                    terminating: Some(false),
                }),
                node_name: Some(name),
                ..Default::default()
            },
        );
    }
    let owner = service.and_then(|s| {
        Some(OwnerReference {
            api_version: "v1".into(),
            kind: "Service".into(),
            name: s.metadata.name.clone()?,
            uid: s.metadata.uid.clone()?,
            controller: Some(true),
            block_owner_deletion: Some(true),
        })
    });
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(SLICE_NAME.into()),
            namespace: Some(SERVICE_NAMESPACE.into()),
            labels: Some(BTreeMap::from([
                (SERVICE_NAME_LABEL.into(), SERVICE_NAME.into()),
                (MANAGED_BY_LABEL.into(), MANAGER.into()),
            ])),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: Some(by_name.into_values().collect()),
        ports: Some(vec![
            EndpointPort {
                name: Some("dns".into()),
                protocol: Some("UDP".into()),
                port: Some(53),
                ..Default::default()
            },
            EndpointPort {
                name: Some("dns-tcp".into()),
                protocol: Some("TCP".into()),
                port: Some(53),
                ..Default::default()
            },
        ]),
    }
}

/// Whether `current` already holds what `desired` says (labels it sets, owner, endpoints,
/// ports).
fn up_to_date(current: &EndpointSlice, desired: &EndpointSlice) -> bool {
    let labels_ok = desired.metadata.labels.iter().flatten().all(|(k, v)| {
        current
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(k))
            .is_some_and(|c| c == v)
    });
    labels_ok
        && current.metadata.owner_references == desired.metadata.owner_references
        && current.address_type == desired.address_type
        && current.endpoints.clone().unwrap_or_default()
            == desired.endpoints.clone().unwrap_or_default()
        && current.ports == desired.ports
}

/// Writes the slice for the current Nodes if it differs.
async fn reconcile(client: &Client, nodes: &[Node]) -> Result<(), ControllerError> {
    let services: Api<Service> = Api::namespaced(client.clone(), SERVICE_NAMESPACE);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), SERVICE_NAMESPACE);
    let service = services.get_opt(SERVICE_NAME).await?;
    let mut desired = desired_slice(nodes, service.as_ref());
    match slices.get_opt(SLICE_NAME).await? {
        None => {
            slices.create(&PostParams::default(), &desired).await?;
            tracing::info!(
                slice = SLICE_NAME,
                nodes = nodes.len(),
                "created the cluster dns endpointslice"
            );
        }
        Some(current) if up_to_date(&current, &desired) => {}
        Some(current) => {
            let mut labels = current.metadata.labels.clone().unwrap_or_default();
            labels.extend(desired.metadata.labels.take().unwrap_or_default());
            desired.metadata.labels = Some(labels);
            desired.metadata.resource_version = current.meta().resource_version.clone();
            slices
                .replace(SLICE_NAME, &PostParams::default(), &desired)
                .await?;
            tracing::info!(
                slice = SLICE_NAME,
                nodes = nodes.len(),
                "updated the cluster dns endpointslice"
            );
        }
    }
    Ok(())
}

/// Keeps the cluster DNS EndpointSlice current until the process ends.
pub async fn run(client: Client) {
    let (nodes, stream) =
        super::reflect(Api::<Node>::all(client.clone()), watcher::Config::default());
    let mut stream = std::pin::pin!(stream);
    let mut resync = tokio::time::interval(RESYNC);
    let mut attempt = 0u32;
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        let retry = async {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            event = stream.next() => match event {
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!(resource = "nodes", error = %e, "cluster dns watch failed; retrying");
                    continue;
                }
                None => return,
            },
            _ = resync.tick() => {}
            _ = retry => {}
        }
        // Wait for the first list: a slice written from an empty cache would drop every node.
        if futures::FutureExt::now_or_never(nodes.wait_until_ready()).is_none() {
            continue;
        }
        let current: Vec<Node> = nodes.state().iter().map(|n| (**n).clone()).collect();
        match reconcile(&client, &current).await {
            Ok(()) => {
                attempt = 0;
                retry_at = None;
            }
            Err(e) => {
                let delay = super::backoff(attempt);
                attempt = attempt.saturating_add(1);
                retry_at = Some(tokio::time::Instant::now() + delay);
                tracing::warn!(slice = SLICE_NAME, error = %e, retry_in = ?delay, "cluster dns endpointslice not written");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeCondition, NodeStatus};

    fn node(name: &str, ip: &str, ready: bool) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: None,
            status: Some(NodeStatus {
                addresses: Some(vec![
                    NodeAddress {
                        type_: "Hostname".into(),
                        address: name.into(),
                    },
                    NodeAddress {
                        type_: "InternalIP".into(),
                        address: ip.into(),
                    },
                ]),
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn one_endpoint_per_node_with_its_readiness() {
        let nodes = [
            node("b", "192.0.2.12", false),
            node("a", "192.0.2.11", true),
            Node {
                metadata: ObjectMeta {
                    name: Some("no-ip".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        ];
        let slice = desired_slice(&nodes, None);
        assert_eq!(slice.metadata.name.as_deref(), Some(SLICE_NAME));
        assert_eq!(slice.metadata.namespace.as_deref(), Some("kube-system"));
        let labels = slice.metadata.labels.clone().unwrap();
        assert_eq!(labels[SERVICE_NAME_LABEL], "kube-dns");
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGER);
        let endpoints = slice.endpoints.clone().unwrap();
        assert_eq!(endpoints.len(), 2);
        assert_eq!(endpoints[0].addresses, ["192.0.2.11"]);
        assert_eq!(endpoints[0].node_name.as_deref(), Some("a"));
        assert_eq!(endpoints[0].conditions.as_ref().unwrap().ready, Some(true));
        assert_eq!(endpoints[1].conditions.as_ref().unwrap().ready, Some(false));
        let ports = slice.ports.clone().unwrap();
        assert_eq!(
            ports
                .iter()
                .map(|p| (
                    p.name.clone().unwrap(),
                    p.protocol.clone().unwrap(),
                    p.port.unwrap()
                ))
                .collect::<Vec<_>>(),
            [
                ("dns".to_string(), "UDP".to_string(), 53),
                ("dns-tcp".to_string(), "TCP".to_string(), 53)
            ]
        );
        assert!(up_to_date(&slice, &desired_slice(&nodes, None)));
        assert!(!up_to_date(
            &slice,
            &desired_slice(&[node("a", "192.0.2.11", true)], None)
        ));
    }

    #[test]
    fn the_service_owns_the_slice() {
        let service = Service {
            metadata: ObjectMeta {
                name: Some("kube-dns".into()),
                uid: Some("u-1".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let slice = desired_slice(&[], Some(&service));
        let owner = &slice.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("Service", "u-1")
        );
    }
}
