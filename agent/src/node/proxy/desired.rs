//! What the datapath should hold for one Service: its frontends (ClusterIP, NodePort, external
//! IPs) per port, scope and protocol, each with its backends, worked out from the Service and its
//! EndpointSlices the way kube-proxy reads them (ready endpoints, serving-terminating ones as
//! the fallback, internal/externalTrafficPolicy Local, ClientIP affinity).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::ebpf::proxy::Scope;

/// Kubernetes' default ClientIP affinity timeout (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;

/// TCP or UDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    /// IPPROTO_TCP.
    Tcp,
    /// IPPROTO_UDP.
    Udp,
}

impl Proto {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }

    /// From the IP protocol number.
    pub fn from_number(n: u8) -> Option<Proto> {
        match n {
            6 => Some(Proto::Tcp),
            17 => Some(Proto::Udp),
            _ => None,
        }
    }

    /// `TCP` / `UDP`.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        }
    }

    fn parse(s: Option<&str>) -> Option<Proto> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Proto::Tcp),
            "UDP" => Some(Proto::Udp),
            _ => None,
        }
    }
}

/// A frontend's identity in the datapath.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendKey {
    /// The address (0.0.0.0 for a NodePort on every node address).
    pub address: Ipv4Addr,
    /// The port.
    pub port: u16,
    /// TCP or UDP.
    pub proto: Proto,
    /// Which traffic it serves.
    pub scope: Scope,
}

/// A backend's identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    /// The endpoint address.
    pub address: Ipv4Addr,
    /// The target port.
    pub port: u16,
    /// TCP or UDP.
    pub proto: Proto,
}

impl BackendKey {
    /// `address:port/PROTO`, the name Maglev hashes.
    pub fn name(&self) -> String {
        format!("{}:{}/{}", self.address, self.port, self.proto.as_str())
    }
}

/// A backend as a frontend uses it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DesiredBackend {
    /// Address, port, protocol.
    pub key: BackendKey,
    /// On this node.
    pub local: bool,
    /// Serving but terminating (used only when no endpoint is ready).
    pub terminating: bool,
}

/// One frontend and what it leads to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredFrontend {
    /// Where it is matched.
    pub key: FrontendKey,
    /// The service port it belongs to.
    pub port: ServicePortKey,
    /// A NodePort (address 0.0.0.0).
    pub node_port: bool,
    /// ClientIP affinity timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// externalTrafficPolicy Local (external scope only).
    pub external_local: bool,
    /// Backend choice by Maglev (external scope).
    pub maglev: bool,
    /// The backends, sorted.
    pub backends: Vec<DesiredBackend>,
}

/// A service port: the unit that gets a service id (metrics, affinity, Maglev).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePortKey {
    /// Namespace.
    pub namespace: String,
    /// Service name.
    pub name: String,
    /// The port's name, or its number when unnamed.
    pub port: String,
    /// TCP or UDP.
    pub proto: Proto,
}

/// What the proxy keeps of a Service: only what decides its frontends, so 10,000 of them stay
/// small in memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceInfo {
    namespace: String,
    name: String,
    cluster_ips: Vec<Ipv4Addr>,
    external_ips: Vec<Ipv4Addr>,
    affinity_timeout: Option<u32>,
    internal_local: bool,
    external_local: bool,
    ports: Vec<PortInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct PortInfo {
    /// The name EndpointSlice ports carry ("" when unnamed).
    name: String,
    port: u16,
    node_port: Option<u16>,
    proto: Proto,
}

impl ServiceInfo {
    /// Reads what matters of `service` (an ExternalName or spec-less one has no ports).
    pub fn new(service: &Service) -> ServiceInfo {
        let mut info = ServiceInfo {
            namespace: service.metadata.namespace.clone().unwrap_or_default(),
            name: service.metadata.name.clone().unwrap_or_default(),
            ..Default::default()
        };
        let Some(spec) = &service.spec else {
            return info;
        };
        let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
        if kind == "ExternalName" {
            return info;
        }
        info.cluster_ips = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .filter_map(|ip| ip.parse().ok())
            .collect();
        info.cluster_ips.sort();
        info.cluster_ips.dedup();
        info.external_ips = spec
            .external_ips
            .iter()
            .flatten()
            .filter_map(|ip| ip.parse().ok())
            .chain(
                service
                    .status
                    .as_ref()
                    .and_then(|s| s.load_balancer.as_ref())
                    .and_then(|lb| lb.ingress.as_ref())
                    .into_iter()
                    .flatten()
                    .filter_map(|i| i.ip.as_deref().and_then(|ip| ip.parse().ok())),
            )
            .collect();
        info.external_ips.sort();
        info.external_ips.dedup();
        info.affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
        });
        info.internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
        info.external_local = spec.external_traffic_policy.as_deref() == Some("Local");
        let node_ports_on = matches!(kind, "NodePort" | "LoadBalancer");
        info.ports = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some(PortInfo {
                    name: p.name.clone().unwrap_or_default(),
                    port: u16::try_from(p.port).ok()?,
                    node_port: p
                        .node_port
                        .filter(|_| node_ports_on)
                        .and_then(|n| u16::try_from(n).ok())
                        .filter(|n| *n != 0),
                    proto: Proto::parse(p.protocol.as_deref())?,
                })
            })
            .collect();
        info
    }
}

/// What the proxy keeps of an EndpointSlice: its Service, ports and endpoints, with each
/// endpoint's conditions and whether it is on this node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SliceInfo {
    /// The Service it belongs to (its `kubernetes.io/service-name` label).
    pub service: Option<String>,
    ports: Vec<(String, u16, Proto)>,
    endpoints: Vec<EndpointInfo>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct EndpointInfo {
    address: Ipv4Addr,
    ready: bool,
    serving: bool,
    terminating: bool,
    local: bool,
}

impl SliceInfo {
    /// Reads what matters of `slice` as seen from node `node` (IPv4 slices only).
    pub fn new(slice: &EndpointSlice, service_label: &str, node: &str) -> SliceInfo {
        let service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(service_label))
            .cloned();
        if slice.address_type != "IPv4" {
            return SliceInfo {
                service,
                ..Default::default()
            };
        }
        let ports = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some((
                    p.name.clone().unwrap_or_default(),
                    u16::try_from(p.port?).ok()?,
                    Proto::parse(p.protocol.as_deref())?,
                ))
            })
            .collect();
        let mut endpoints = Vec::new();
        for endpoint in slice.endpoints.iter().flatten() {
            let conditions = endpoint.conditions.as_ref();
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let serving = conditions.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            let local = endpoint.node_name.as_deref() == Some(node);
            endpoints.extend(endpoint.addresses.iter().filter_map(|a| {
                Some(EndpointInfo {
                    address: a.parse().ok()?,
                    ready,
                    serving,
                    terminating,
                    local,
                })
            }));
        }
        SliceInfo {
            service,
            ports,
            endpoints,
        }
    }
}

/// The frontends of `service` with the endpoints of `slices` (the service's EndpointSlices).
pub fn frontends(service: &ServiceInfo, slices: &[&SliceInfo]) -> Vec<DesiredFrontend> {
    let mut out = Vec::new();
    for port in &service.ports {
        let proto = port.proto;
        let port_key = ServicePortKey {
            namespace: service.namespace.clone(),
            name: service.name.clone(),
            port: if port.name.is_empty() {
                port.port.to_string()
            } else {
                port.name.clone()
            },
            proto,
        };
        let all = backends(slices, &port.name, proto);
        let local_only: Vec<DesiredBackend> = all.iter().filter(|b| b.local).cloned().collect();
        let internal = if service.internal_local {
            &local_only
        } else {
            &all
        };
        let external = if service.external_local {
            &local_only
        } else {
            &all
        };
        let affinity_timeout = service.affinity_timeout;
        let external_local = service.external_local;
        let frontend = |address, port: u16, scope, node_port, backends: &Vec<DesiredBackend>| {
            let ext = scope == Scope::External;
            DesiredFrontend {
                key: FrontendKey {
                    address,
                    port,
                    proto,
                    scope,
                },
                port: port_key.clone(),
                node_port,
                affinity_timeout,
                external_local: ext && external_local,
                maglev: ext,
                backends: backends.clone(),
            }
        };
        for ip in &service.cluster_ips {
            out.push(frontend(*ip, port.port, Scope::Internal, false, internal));
        }
        // NodePorts and external addresses: traffic from this node counts as in-cluster (as in
        // kube-proxy), traffic arriving from outside follows externalTrafficPolicy.
        if let Some(np) = port.node_port {
            out.push(frontend(
                Ipv4Addr::UNSPECIFIED,
                np,
                Scope::Internal,
                true,
                &all,
            ));
            out.push(frontend(
                Ipv4Addr::UNSPECIFIED,
                np,
                Scope::External,
                true,
                external,
            ));
        }
        for ip in &service.external_ips {
            out.push(frontend(*ip, port.port, Scope::Internal, false, &all));
            out.push(frontend(*ip, port.port, Scope::External, false, external));
        }
    }
    out
}

/// The endpoints of `slices` serving port `port_name`: the ready ones, or the serving and
/// terminating ones when none is ready.
fn backends(slices: &[&SliceInfo], port_name: &str, proto: Proto) -> Vec<DesiredBackend> {
    let mut ready = BTreeSet::new();
    let mut terminating = BTreeSet::new();
    for slice in slices {
        let Some((_, target, _)) = slice
            .ports
            .iter()
            .find(|(name, _, p)| name == port_name && *p == proto)
        else {
            continue;
        };
        for e in &slice.endpoints {
            let backend = DesiredBackend {
                key: BackendKey {
                    address: e.address,
                    port: *target,
                    proto,
                },
                local: e.local,
                terminating: false,
            };
            if e.ready && !e.terminating {
                ready.insert(backend);
            } else if e.serving && e.terminating {
                terminating.insert(DesiredBackend {
                    terminating: true,
                    ..backend
                });
            }
        }
    }
    if ready.is_empty() {
        terminating.into_iter().collect()
    } else {
        ready.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(json: serde_json::Value) -> Service {
        serde_json::from_value(json).expect("valid Service")
    }

    fn slice(json: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json).expect("valid EndpointSlice")
    }

    fn web_slice() -> EndpointSlice {
        slice(serde_json::json!({
            "metadata": {"name": "web-abc", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.244.1.2"], "conditions": {"ready": true}, "nodeName": "n1"},
                {"addresses": ["10.244.2.2"], "conditions": {"ready": true}, "nodeName": "n2"},
                {"addresses": ["10.244.1.3"], "conditions": {"ready": false, "serving": true,
                                                            "terminating": true}, "nodeName": "n1"},
                {"addresses": ["10.244.1.4"], "conditions": {"ready": false}, "nodeName": "n1"}
            ]
        }))
    }

    /// `frontends` on the API objects, as node `node` sees them.
    fn frontends_of(svc: &Service, slices: &[&EndpointSlice], node: &str) -> Vec<DesiredFrontend> {
        let infos: Vec<SliceInfo> = slices
            .iter()
            .map(|s| SliceInfo::new(s, "kubernetes.io/service-name", node))
            .collect();
        let refs: Vec<&SliceInfo> = infos.iter().collect();
        frontends(&ServiceInfo::new(svc), &refs)
    }

    fn addrs(f: &DesiredFrontend) -> Vec<String> {
        f.backends.iter().map(|b| b.key.name()).collect()
    }

    #[test]
    fn cluster_ip_gets_ready_endpoints_only() {
        let svc = service(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.12", "clusterIPs": ["10.96.0.12"],
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
        }));
        let s = web_slice();
        let f = frontends_of(&svc, &[&s], "n1");
        assert_eq!(f.len(), 1);
        assert_eq!(
            f[0].key,
            FrontendKey {
                address: "10.96.0.12".parse().expect("ip"),
                port: 80,
                proto: Proto::Tcp,
                scope: Scope::Internal
            }
        );
        assert_eq!(addrs(&f[0]), ["10.244.1.2:8080/TCP", "10.244.2.2:8080/TCP"]);
        assert_eq!(f[0].port.port, "http");
        assert_eq!(f[0].affinity_timeout, None);
    }

    #[test]
    fn terminating_endpoints_are_the_fallback() {
        let svc = service(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.12", "ports": [{"name": "http", "port": 80}]}
        }));
        let mut s = web_slice();
        s.endpoints
            .as_mut()
            .expect("endpoints")
            .retain(|e| e.addresses[0] != "10.244.1.2" && e.addresses[0] != "10.244.2.2");
        let f = frontends_of(&svc, &[&s], "n1");
        assert_eq!(addrs(&f[0]), ["10.244.1.3:8080/TCP"]);
        assert!(f[0].backends[0].terminating);
    }

    #[test]
    fn node_port_with_local_policy_and_affinity() {
        let svc = service(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.12",
                     "externalTrafficPolicy": "Local", "sessionAffinity": "ClientIP",
                     "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
                     "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}
        }));
        let s = web_slice();
        let f = frontends_of(&svc, &[&s], "n1");
        assert_eq!(f.len(), 3);
        let internal = f
            .iter()
            .find(|f| f.node_port && f.key.scope == Scope::Internal)
            .expect("internal NodePort");
        let external = f
            .iter()
            .find(|f| f.node_port && f.key.scope == Scope::External)
            .expect("external NodePort");
        assert_eq!(internal.key.address, Ipv4Addr::UNSPECIFIED);
        assert_eq!(internal.key.port, 30080);
        assert_eq!(internal.backends.len(), 2);
        assert_eq!(addrs(external), ["10.244.1.2:8080/TCP"]);
        assert!(external.external_local && external.maglev);
        assert!(f.iter().all(|f| f.affinity_timeout == Some(60)));
    }

    #[test]
    fn headless_and_external_name_have_no_frontends() {
        let headless = service(serde_json::json!({
            "metadata": {"name": "db", "namespace": "default"},
            "spec": {"clusterIP": "None", "ports": [{"port": 5432}]}
        }));
        let external = service(serde_json::json!({
            "metadata": {"name": "ext", "namespace": "default"},
            "spec": {"type": "ExternalName", "externalName": "example.org"}
        }));
        assert!(frontends_of(&headless, &[], "n1").is_empty());
        assert!(frontends_of(&external, &[], "n1").is_empty());
    }

    #[test]
    fn unnamed_port_matches_unnamed_slice_port_and_udp_is_kept_apart() {
        let svc = service(serde_json::json!({
            "metadata": {"name": "dns", "namespace": "kube-system"},
            "spec": {"clusterIP": "10.96.0.10",
                     "ports": [{"port": 53, "protocol": "UDP"}]}
        }));
        let s = slice(serde_json::json!({
            "metadata": {"name": "dns-x", "namespace": "kube-system"},
            "addressType": "IPv4",
            "ports": [{"port": 5353, "protocol": "UDP"}, {"port": 5353, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.244.1.9"]}]
        }));
        let f = frontends_of(&svc, &[&s], "n1");
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].key.proto, Proto::Udp);
        assert_eq!(addrs(&f[0]), ["10.244.1.9:5353/UDP"]);
        assert_eq!(f[0].port.port, "53");
    }
}
