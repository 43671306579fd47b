//! Node IPAM: gives each Node a `spec.podCIDR` cut from the cluster CIDR (a /24 of
//! 10.244.0.0/16 by default). A CIDR is free again once no Node holds it, so deleting a node
//! releases its range.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;

use super::{ControllerError, ControllerOptions};

struct Context {
    client: Client,
    options: ControllerOptions,
    /// Serializes allocation: one node at a time.
    allocating: tokio::sync::Mutex<()>,
}

/// The `index`-th subnet of `prefix` bits inside `cluster`, as `a.b.c.d/prefix`.
pub fn subnet(cluster: (Ipv4Addr, u8), prefix: u8, index: u32) -> Option<String> {
    let (base, bits) = cluster;
    if prefix < bits || prefix > 32 {
        return None;
    }
    let count = 1u64 << (prefix - bits);
    if u64::from(index) >= count {
        return None;
    }
    let step = 1u32.checked_shl(u32::from(32 - prefix)).unwrap_or(0);
    let network = u32::from(base) & (u32::MAX.checked_shl(u32::from(32 - bits)).unwrap_or(0));
    Some(format!(
        "{}/{prefix}",
        Ipv4Addr::from(network + index * step)
    ))
}

async fn reconcile(node: Arc<Node>, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    if node
        .spec
        .as_ref()
        .and_then(|s| s.pod_cidr.as_ref())
        .is_some_and(|c| !c.is_empty())
    {
        return Ok(Action::await_change());
    }
    // Allocation is rare: decide on a live list (a watch cache may still hold a node that was
    // just deleted, or miss one just given a range), one node at a time.
    let _one_at_a_time = ctx.allocating.lock().await;
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let live = nodes.list(&Default::default()).await?.items;
    // The cached Node may predate this controller's own patch (a status write by the kubelet
    // re-queues it before the cache sees the podCIDR): the live one decides, so a node never
    // gets a second range.
    let name = node.name_any();
    if live.iter().any(|n| {
        n.name_any() == name
            && n.spec
                .as_ref()
                .and_then(|s| s.pod_cidr.as_ref())
                .is_some_and(|c| !c.is_empty())
    }) {
        return Ok(Action::await_change());
    }
    let used: HashSet<String> = live
        .iter()
        .filter_map(|n| n.spec.as_ref().and_then(|s| s.pod_cidr.clone()))
        .collect();
    let (cluster, prefix) = (ctx.options.cluster_cidr, ctx.options.node_cidr_prefix);
    let cidr = (0..)
        .map_while(|i| subnet(cluster, prefix, i))
        .find(|c| !used.contains(c))
        .ok_or_else(|| {
            ControllerError::Invalid(format!(
                "no pod CIDR left in the cluster CIDR for node {}",
                node.name_any()
            ))
        })?;
    nodes
        .patch(
            &node.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "podCIDR": cidr, "podCIDRs": [cidr] } })),
        )
        .await?;
    tracing::info!(node = node.name_any(), cidr, "allocated pod CIDR");
    Ok(Action::await_change())
}

fn error_policy(node: Arc<Node>, error: &ControllerError, _: Arc<Context>) -> Action {
    tracing::warn!(node = node.name_any(), error = %error, "node ipam: retrying");
    Action::requeue(std::time::Duration::from_secs(2))
}

/// Runs the controller.
pub async fn run(client: Client, options: ControllerOptions) {
    let nodes: Api<Node> = Api::all(client.clone());
    let controller = Controller::new(nodes, watcher::Config::default());
    let ctx = Arc::new(Context {
        client,
        options,
        allocating: Default::default(),
    });
    controller
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_of_the_cluster_cidr() {
        let cluster = (Ipv4Addr::new(10, 244, 0, 0), 16);
        assert_eq!(subnet(cluster, 24, 0).as_deref(), Some("10.244.0.0/24"));
        assert_eq!(subnet(cluster, 24, 255).as_deref(), Some("10.244.255.0/24"));
        assert_eq!(subnet(cluster, 24, 256), None);
        assert_eq!(
            subnet((Ipv4Addr::new(10, 0, 0, 0), 8), 16, 3).as_deref(),
            Some("10.3.0.0/16")
        );
    }
}
