//! The objects every cluster starts with: the system namespaces, the `default/kubernetes`
//! Service pointing at this API server (kube-apiserver's endpoint reconciler), and the
//! `kube-system/kube-dns` Service whose address pods get as their nameserver.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde_json::{Value, json};

use super::ServerError;
use super::handlers::{Api, Target};
use super::resources;

/// The namespaces every cluster starts with.
const SYSTEM_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

/// The label and manager of the `kubernetes` EndpointSlice, as kube-apiserver writes them.
const SERVICE_NAME: &str = "kubernetes.io/service-name";
const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
const APISERVER_MANAGER: &str = "windlass.dev/apiserver";

/// Creates the system namespaces if they are missing.
pub async fn namespaces(api: &Api) -> Result<(), ServerError> {
    let namespaces =
        resources::find("", "v1", "namespaces").ok_or_else(|| ServerError::Bootstrap {
            what: "namespaces".into(),
            message: "not served".into(),
        })?;
    for ns in SYSTEM_NAMESPACES {
        let target = Target {
            resource: namespaces,
            namespace: None,
            name: None,
            subresource: None,
        };
        match api
            .create(&target, json!({ "metadata": { "name": ns } }))
            .await
        {
            Ok(_) => tracing::info!(namespace = ns, "created system namespace"),
            Err(e) if e.reason == "AlreadyExists" => {}
            Err(e) => {
                return Err(ServerError::Bootstrap {
                    what: format!("namespace {ns}"),
                    message: e.message,
                });
            }
        }
    }
    Ok(())
}

/// The address the `kubernetes` Service points at when `--advertise-address` is not given: the
/// listen address, or this host's first global IPv4 address when it listens on all of them.
pub fn advertise_address(listen: SocketAddr) -> IpAddr {
    if !listen.ip().is_unspecified() {
        return listen.ip();
    }
    host_addresses()
        .into_iter()
        .next()
        .map(IpAddr::V4)
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// This host's IPv4 addresses other than loopback and link-local, in interface order.
pub fn host_addresses() -> Vec<Ipv4Addr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for a in addrs {
        if let Some(sin) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) {
            let ip = sin.ip();
            if !ip.is_loopback() && !ip.is_link_local() && !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    out
}

/// The n-th address of the service range (1: `kubernetes`, 10: `kube-dns`), as kubeadm picks.
pub fn service_ip(api: &Api, n: u32) -> Ipv4Addr {
    let (base, _) = api.ranges.cidr;
    Ipv4Addr::from(u32::from(base) + n)
}

/// Creates (or brings up to date) `default/kubernetes` with its EndpointSlice pointing at
/// `advertise:<port>`, and `kube-system/kube-dns`. Failures are logged, not fatal: a cluster
/// whose service range is taken still serves the API.
pub async fn services(api: &Api, advertise: IpAddr, port: u16) {
    let kubernetes = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": "kubernetes", "namespace": "default",
                      "labels": { "component": "apiserver", "provider": "kubernetes" } },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": service_ip(api, 1).to_string(),
            "ports": [{ "name": "https", "port": 443, "protocol": "TCP", "targetPort": port }],
            "sessionAffinity": "None",
        }
    });
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": { "name": "kubernetes", "namespace": "default",
                      "labels": { SERVICE_NAME: "kubernetes", MANAGED_BY: APISERVER_MANAGER } },
        "addressType": if advertise.is_ipv4() { "IPv4" } else { "IPv6" },
        "endpoints": [{ "addresses": [advertise.to_string()], "conditions": { "ready": true } }],
        "ports": [{ "name": "https", "port": port, "protocol": "TCP" }],
    });
    let kube_dns = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": "kube-dns", "namespace": "kube-system",
                      "labels": { "k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS" } },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": service_ip(api, 10).to_string(),
            // Every node's agent serves DNS itself: the proxy sends each node's pods to their
            // own node's server.
            "internalTrafficPolicy": "Local",
            "ports": [
                { "name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53 },
                { "name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53 },
            ],
        }
    });
    ensure(api, "", "v1", "services", "default", kubernetes, false).await;
    ensure(
        api,
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        "default",
        slice,
        true,
    )
    .await;
    ensure(api, "", "v1", "services", "kube-system", kube_dns, false).await;
}

/// Creates `object`, or, when it exists and `reconcile` is set, replaces its spec-like fields
/// (the endpoint address changes when the server moves).
async fn ensure(
    api: &Api,
    group: &str,
    version: &str,
    plural: &str,
    namespace: &str,
    object: Value,
    reconcile: bool,
) {
    let Some(resource) = resources::find(group, version, plural) else {
        tracing::warn!(resource = plural, "not served; bootstrap object skipped");
        return;
    };
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let target = Target {
        resource,
        namespace: Some(namespace.to_string()),
        name: None,
        subresource: None,
    };
    let named = Target {
        name: Some(name.clone()),
        ..target.clone()
    };
    // Look first: creating an existing Service fails on its ClusterIP before its name.
    match api.get(&named).await {
        Ok(mut current) => {
            if !reconcile {
                return;
            }
            let mut changed = false;
            for field in ["endpoints", "ports", "addressType"] {
                if current[field] != object[field] {
                    current[field] = object[field].clone();
                    changed = true;
                }
            }
            if changed {
                match api.update(&named, current).await {
                    Ok(_) => tracing::info!(namespace, name, "updated bootstrap object"),
                    Err(e) => {
                        tracing::warn!(namespace, name, error = %e.message, "cannot update bootstrap object")
                    }
                }
            }
        }
        Err(e) if e.reason == "NotFound" => match api.create(&target, object).await {
            Ok(_) => tracing::info!(
                namespace,
                name,
                resource = plural,
                "created bootstrap object"
            ),
            Err(e) => {
                tracing::warn!(namespace, name, resource = plural, error = %e.message, "cannot create bootstrap object")
            }
        },
        Err(e) => {
            tracing::warn!(namespace, name, resource = plural, error = %e.message, "cannot read bootstrap object")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertise_address_is_the_listen_address_unless_unspecified() {
        let listen: SocketAddr = "192.0.2.7:6443".parse().expect("addr");
        assert_eq!(advertise_address(listen), listen.ip());
        let any: SocketAddr = "0.0.0.0:6443".parse().expect("addr");
        let picked = advertise_address(any);
        assert!(!picked.is_unspecified());
        match host_addresses().first() {
            Some(first) => assert_eq!(picked, IpAddr::V4(*first)),
            None => assert_eq!(picked, IpAddr::V4(Ipv4Addr::LOCALHOST)),
        }
    }
}
