//! The cluster zone's answers, as CoreDNS's `kubernetes` plugin gives them: pure functions from
//! a question and the Services and EndpointSlices the agent reflects to the records of the
//! answer. No I/O, so every case is unit-tested from fake objects.
//!
//! Names inside the cluster domain `D`:
//! - `<svc>.<ns>.svc.D`: A/AAAA of the ClusterIP(s); headless services (clusterIP `None`) give
//!   their ready endpoints; ExternalName services a CNAME.
//! - `_<port>._<proto>.<svc>.<ns>.svc.D`: SRV for a named port (headless: one per endpoint,
//!   target `<hostname or dashed ip>.<svc>.<ns>.svc.D`), with the targets' addresses as
//!   additional records.
//! - `<hostname or dashed ip>.<svc>.<ns>.svc.D`: A/AAAA of that endpoint of a headless service.
//! - `a-b-c-d.<ns>.pod.D`: A `a.b.c.d` (CoreDNS `pods insecure`: not checked against pods).
//!
//! Anything else in `D` is NXDOMAIN; names outside `D` are forwarded.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use hickory_proto::rr::rdata::{A, AAAA, CNAME, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The TTL of every record in the cluster zone, and of negative answers (CoreDNS's default).
pub const TTL: u32 = 5;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What the answers are computed from: the reflected Services and EndpointSlices.
pub trait ClusterState: Send + Sync {
    /// The Service `namespace/name`, if it exists.
    fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>>;
    /// The EndpointSlices of Service `namespace/service`.
    fn endpoint_slices(&self, namespace: &str, service: &str) -> Vec<Arc<EndpointSlice>>;
}

/// The answer to one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The name exists in the cluster zone and has records of the asked type.
    Records {
        /// The answer section.
        answers: Vec<Record>,
        /// The additional section (SRV targets' addresses).
        additionals: Vec<Record>,
    },
    /// The name exists in the cluster zone but has no records of the asked type (NOERROR, SOA
    /// in the authority section).
    NoData,
    /// The name is in the cluster zone and does not exist (NXDOMAIN, SOA in the authority
    /// section).
    NxDomain,
    /// The name is outside the cluster zone: ask the upstream resolvers.
    Forward,
}

/// The cluster zone (`cluster.local.`) and its SOA.
#[derive(Debug, Clone)]
pub struct Zone {
    origin: Name,
    soa: Record,
}

impl Zone {
    /// The zone for cluster domain `domain` (`cluster.local`, with or without the final dot).
    pub fn new(domain: &str) -> Result<Self, hickory_proto::ProtoError> {
        let mut origin = Name::from_ascii(domain.trim_end_matches('.'))?.to_lowercase();
        origin.set_fqdn(true);
        let mname = Name::from_ascii("ns.dns")?.append_domain(&origin)?;
        let rname = Name::from_ascii("hostmaster")?.append_domain(&origin)?;
        // CoreDNS's values: refresh 7200, retry 1800, expire 86400, minimum = the TTL.
        let serial = u32::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default()
                % u64::from(u32::MAX),
        )
        .unwrap_or_default();
        let soa = Record::from_rdata(
            origin.clone(),
            TTL,
            RData::SOA(SOA::new(mname, rname, serial, 7200, 1800, 86400, TTL)),
        );
        Ok(Zone { origin, soa })
    }

    /// The zone's origin, e.g. `cluster.local.`.
    pub fn origin(&self) -> &Name {
        &self.origin
    }

    /// The zone's SOA record, for the authority section of negative answers.
    pub fn soa(&self) -> &Record {
        &self.soa
    }

    /// Whether `name` is in this zone.
    pub fn contains(&self, name: &Name) -> bool {
        self.origin.zone_of(&name.to_lowercase())
    }

    /// `labels` + the origin, e.g. `["web", "default", "svc"]` → `web.default.svc.cluster.local.`.
    fn name(&self, labels: &[&str]) -> Option<Name> {
        Name::from_labels(labels.iter().map(|l| l.as_bytes()))
            .ok()?
            .append_domain(&self.origin)
            .ok()
    }

    /// The answer to `name`/`qtype` from `state`.
    pub fn answer(&self, state: &dyn ClusterState, name: &Name, qtype: RecordType) -> Answer {
        let name = name.to_lowercase();
        if !self.origin.zone_of(&name) {
            return Answer::Forward;
        }
        let extra = usize::from(name.num_labels() - self.origin.num_labels());
        let labels: Vec<String> = name
            .iter()
            .take(extra)
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect();
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        let query = Query {
            zone: self,
            state,
            name: &name,
            qtype,
        };
        match labels.as_slice() {
            [] if qtype == RecordType::SOA => Answer::Records {
                answers: vec![self.soa.clone()],
                additionals: Vec::new(),
            },
            // The apex and the empty non-terminals above services and pods exist.
            [] | ["svc"] | ["pod"] | [_, "svc"] | [_, "pod"] => Answer::NoData,
            [service, namespace, "svc"] => query.service(namespace, service),
            [port, proto, service, namespace, "svc"]
                if port.starts_with('_') && proto.starts_with('_') =>
            {
                query.srv(namespace, service, &port[1..], &proto[1..])
            }
            [endpoint, service, namespace, "svc"] => query.endpoint(namespace, service, endpoint),
            [dashed, _namespace, "pod"] => match undash_ipv4(dashed) {
                Some(ip) => query.addresses(&[IpAddr::V4(ip)]),
                None => Answer::NxDomain,
            },
            _ => Answer::NxDomain,
        }
    }
}

/// One question being answered.
struct Query<'a> {
    zone: &'a Zone,
    state: &'a dyn ClusterState,
    name: &'a Name,
    qtype: RecordType,
}

/// A ready (or published) endpoint address of a headless service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Endpoint {
    ip: IpAddr,
    hostname: Option<String>,
}

impl Endpoint {
    /// The label the endpoint's own name starts with: its hostname or its dashed address.
    fn label(&self) -> String {
        match &self.hostname {
            Some(hostname) => hostname.to_lowercase(),
            None => dash(self.ip),
        }
    }
}

impl Query<'_> {
    /// A/AAAA records of `name` for the addresses of the asked family; NoData when there are
    /// none of that family.
    fn addresses(&self, ips: &[IpAddr]) -> Answer {
        let answers = address_records(self.name, ips, self.qtype);
        if answers.is_empty() {
            Answer::NoData
        } else {
            Answer::Records {
                answers,
                additionals: Vec::new(),
            }
        }
    }

    /// `<svc>.<ns>.svc.D`.
    fn service(&self, namespace: &str, name: &str) -> Answer {
        let Some(service) = self.state.service(namespace, name) else {
            return Answer::NxDomain;
        };
        let Some(spec) = service.spec.as_ref() else {
            return Answer::NoData;
        };
        if spec.type_.as_deref() == Some("ExternalName") {
            return match spec
                .external_name
                .as_deref()
                .and_then(|target| Name::from_ascii(target.trim_end_matches('.')).ok())
            {
                Some(mut target) => {
                    target.set_fqdn(true);
                    Answer::Records {
                        answers: vec![Record::from_rdata(
                            self.name.clone(),
                            TTL,
                            RData::CNAME(CNAME(target)),
                        )],
                        additionals: Vec::new(),
                    }
                }
                None => Answer::NoData,
            };
        }
        if is_headless(&service) {
            let endpoints = self.endpoints(namespace, name, &service);
            if endpoints.is_empty() {
                return Answer::NxDomain;
            }
            let ips: Vec<IpAddr> = endpoints
                .iter()
                .map(|e| e.ip)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            return self.addresses(&ips);
        }
        self.addresses(&cluster_ips(&service))
    }

    /// `<hostname or dashed ip>.<svc>.<ns>.svc.D` of a headless service.
    fn endpoint(&self, namespace: &str, service_name: &str, label: &str) -> Answer {
        let Some(service) = self.state.service(namespace, service_name) else {
            return Answer::NxDomain;
        };
        if !is_headless(&service) {
            return Answer::NxDomain;
        }
        let ips: Vec<IpAddr> = self
            .endpoints(namespace, service_name, &service)
            .into_iter()
            .filter(|e| e.label() == label || dash(e.ip) == label)
            .map(|e| e.ip)
            .collect();
        if ips.is_empty() {
            return Answer::NxDomain;
        }
        self.addresses(&ips)
    }

    /// `_<port>._<proto>.<svc>.<ns>.svc.D`.
    fn srv(&self, namespace: &str, service_name: &str, port_name: &str, proto: &str) -> Answer {
        let Some(service) = self.state.service(namespace, service_name) else {
            return Answer::NxDomain;
        };
        let matches = |name: Option<&str>, protocol: Option<&str>| {
            name.is_some_and(|n| n.eq_ignore_ascii_case(port_name))
                && protocol.unwrap_or("TCP").eq_ignore_ascii_case(proto)
        };
        let mut answers = Vec::new();
        let mut additionals = Vec::new();
        if is_headless(&service) {
            let mut seen = BTreeSet::new();
            for slice in self.state.endpoint_slices(namespace, service_name) {
                let Some(port) = slice.ports.iter().flatten().find(|p| {
                    matches(p.name.as_deref(), p.protocol.as_deref()) && p.port.is_some()
                }) else {
                    continue;
                };
                let Some(port) = port.port.and_then(|p| u16::try_from(p).ok()) else {
                    continue;
                };
                for endpoint in slice_endpoints(&slice, publish_not_ready(&service)) {
                    if !seen.insert((endpoint.clone(), port)) {
                        continue;
                    }
                    let Some(target) =
                        self.zone
                            .name(&[&endpoint.label(), service_name, namespace, "svc"])
                    else {
                        continue;
                    };
                    answers.push(srv_record(self.name, port, &target));
                    additionals.extend(address_records(&target, &[endpoint.ip], RecordType::ANY));
                }
            }
        } else if spec_type(&service) != "ExternalName" {
            let ports = service.spec.iter().flat_map(|s| s.ports.iter().flatten());
            for port in ports.filter(|p| matches(p.name.as_deref(), p.protocol.as_deref())) {
                let Ok(number) = u16::try_from(port.port) else {
                    continue;
                };
                let Some(target) = self.zone.name(&[service_name, namespace, "svc"]) else {
                    continue;
                };
                answers.push(srv_record(self.name, number, &target));
                additionals.extend(address_records(
                    &target,
                    &cluster_ips(&service),
                    RecordType::ANY,
                ));
            }
        }
        if answers.is_empty() {
            return Answer::NxDomain;
        }
        if self.qtype != RecordType::SRV && self.qtype != RecordType::ANY {
            return Answer::NoData;
        }
        additionals.sort_by_key(|r| r.name().to_string());
        additionals.dedup();
        Answer::Records {
            answers,
            additionals,
        }
    }

    /// The ready endpoints of a headless service (all of them with publishNotReadyAddresses).
    fn endpoints(&self, namespace: &str, name: &str, service: &Service) -> Vec<Endpoint> {
        let set: BTreeSet<Endpoint> = self
            .state
            .endpoint_slices(namespace, name)
            .iter()
            .flat_map(|slice| slice_endpoints(slice, publish_not_ready(service)))
            .collect();
        set.into_iter().collect()
    }
}

fn spec_type(service: &Service) -> &str {
    service
        .spec
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("ClusterIP")
}

fn publish_not_ready(service: &Service) -> bool {
    service
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false)
}

/// clusterIP `None`.
fn is_headless(service: &Service) -> bool {
    service
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .is_some_and(|ip| ip == "None")
}

/// The service's cluster IPs (`clusterIPs`, else `clusterIP`) that parse.
fn cluster_ips(service: &Service) -> Vec<IpAddr> {
    let Some(spec) = service.spec.as_ref() else {
        return Vec::new();
    };
    let listed: Vec<&String> = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.iter().collect(),
        _ => spec.cluster_ip.iter().collect(),
    };
    listed
        .into_iter()
        .filter_map(|ip| ip.parse().ok())
        .collect()
}

/// The endpoints of `slice` that are ready (a missing condition counts as ready, as the API
/// documents), or all of them when `include_not_ready`.
fn slice_endpoints(slice: &EndpointSlice, include_not_ready: bool) -> Vec<Endpoint> {
    if slice.address_type == "FQDN" {
        return Vec::new();
    }
    slice
        .endpoints
        .iter()
        .flatten()
        .filter(|e| {
            include_not_ready || e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true)
        })
        .flat_map(|e| {
            e.addresses
                .iter()
                .filter_map(|a| a.parse().ok())
                .map(|ip| Endpoint {
                    ip,
                    hostname: e.hostname.clone().filter(|h| !h.is_empty()),
                })
        })
        .collect()
}

/// A/AAAA records of `name`: the IPv4 ones for A, IPv6 for AAAA, both for ANY.
fn address_records(name: &Name, ips: &[IpAddr], qtype: RecordType) -> Vec<Record> {
    ips.iter()
        .filter_map(|ip| match (ip, qtype) {
            (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => {
                Some(Record::from_rdata(name.clone(), TTL, RData::A(A(*v4))))
            }
            (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => Some(Record::from_rdata(
                name.clone(),
                TTL,
                RData::AAAA(AAAA(*v6)),
            )),
            _ => None,
        })
        .collect()
}

/// An SRV record as CoreDNS writes them: priority 0, weight 100.
fn srv_record(name: &Name, port: u16, target: &Name) -> Record {
    Record::from_rdata(
        name.clone(),
        TTL,
        RData::SRV(SRV::new(0, 100, port, target.clone())),
    )
}

/// `10.244.1.5` → `10-244-1-5`; IPv6 `fd00::1` → `fd00--1`.
pub fn dash(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
    }
}

/// `10-244-1-5` → `10.244.1.5`.
fn undash_ipv4(label: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = label.split('-').collect();
    if parts.len() != 4 {
        return None;
    }
    parts.join(".").parse().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use k8s_openapi::api::discovery::v1::{
        Endpoint as SliceEndpoint, EndpointConditions, EndpointPort,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::collections::BTreeMap;

    #[derive(Default)]
    struct Fake {
        services: Vec<Arc<Service>>,
        slices: Vec<Arc<EndpointSlice>>,
    }

    impl ClusterState for Fake {
        fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>> {
            self.services
                .iter()
                .find(|s| {
                    s.metadata.namespace.as_deref() == Some(namespace)
                        && s.metadata.name.as_deref() == Some(name)
                })
                .cloned()
        }
        fn endpoint_slices(&self, namespace: &str, service: &str) -> Vec<Arc<EndpointSlice>> {
            self.slices
                .iter()
                .filter(|s| {
                    s.metadata.namespace.as_deref() == Some(namespace)
                        && s.metadata
                            .labels
                            .as_ref()
                            .and_then(|l| l.get(SERVICE_NAME_LABEL))
                            .is_some_and(|n| n == service)
                })
                .cloned()
                .collect()
        }
    }

    fn service(ns: &str, name: &str, spec: ServiceSpec) -> Arc<Service> {
        Arc::new(Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            spec: Some(spec),
            status: None,
        })
    }

    fn port(name: &str, protocol: &str, number: i32) -> ServicePort {
        ServicePort {
            name: Some(name.into()),
            protocol: Some(protocol.into()),
            port: number,
            ..Default::default()
        }
    }

    /// (ip, hostname, ready)
    fn slice(ns: &str, svc: &str, endpoints: &[(&str, Option<&str>, bool)]) -> Arc<EndpointSlice> {
        Arc::new(EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{svc}-abc")),
                namespace: Some(ns.into()),
                labels: Some(BTreeMap::from([(SERVICE_NAME_LABEL.into(), svc.into())])),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: Some(
                endpoints
                    .iter()
                    .map(|(ip, hostname, ready)| SliceEndpoint {
                        addresses: vec![(*ip).into()],
                        hostname: hostname.map(Into::into),
                        conditions: Some(EndpointConditions {
                            ready: Some(*ready),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                protocol: Some("TCP".into()),
                port: Some(8080),
                ..Default::default()
            }]),
        })
    }

    fn fake() -> Fake {
        Fake {
            services: vec![
                service(
                    "default",
                    "web",
                    ServiceSpec {
                        cluster_ip: Some("10.96.0.20".into()),
                        ports: Some(vec![port("http", "TCP", 80), port("dns", "UDP", 53)]),
                        ..Default::default()
                    },
                ),
                service(
                    "default",
                    "db",
                    ServiceSpec {
                        cluster_ip: Some("None".into()),
                        ports: Some(vec![port("http", "TCP", 8080)]),
                        ..Default::default()
                    },
                ),
                service(
                    "default",
                    "empty",
                    ServiceSpec {
                        cluster_ip: Some("None".into()),
                        ..Default::default()
                    },
                ),
                service(
                    "default",
                    "ext",
                    ServiceSpec {
                        type_: Some("ExternalName".into()),
                        external_name: Some("example.org".into()),
                        ..Default::default()
                    },
                ),
            ],
            slices: vec![
                slice(
                    "default",
                    "db",
                    &[
                        ("10.244.1.5", Some("db-0"), true),
                        ("10.244.2.7", None, true),
                        ("10.244.2.9", Some("db-2"), false),
                    ],
                ),
                slice("default", "empty", &[("10.244.1.6", None, false)]),
            ],
        }
    }

    fn zone() -> Zone {
        Zone::new("cluster.local").unwrap()
    }

    fn ask(name: &str, qtype: RecordType) -> Answer {
        zone().answer(&fake(), &Name::from_ascii(name).unwrap(), qtype)
    }

    fn rdata(answer: &Answer) -> Vec<String> {
        match answer {
            Answer::Records { answers, .. } => {
                answers.iter().map(|r| r.data().to_string()).collect()
            }
            other => panic!("expected records, got {other:?}"),
        }
    }

    #[test]
    fn cluster_ip_service_gets_its_address() {
        let answer = ask("web.default.svc.cluster.local.", RecordType::A);
        assert_eq!(rdata(&answer), ["10.96.0.20"]);
        let Answer::Records { answers, .. } = answer else {
            unreachable!()
        };
        assert_eq!(answers[0].ttl(), TTL);
        assert_eq!(
            answers[0].name().to_string(),
            "web.default.svc.cluster.local."
        );
        // Case does not matter.
        assert_eq!(
            rdata(&ask("WEB.Default.svc.Cluster.Local.", RecordType::A)),
            ["10.96.0.20"]
        );
    }

    #[test]
    fn other_types_of_an_existing_name_are_nodata() {
        assert_eq!(
            ask("web.default.svc.cluster.local.", RecordType::AAAA),
            Answer::NoData
        );
        assert_eq!(
            ask("web.default.svc.cluster.local.", RecordType::MX),
            Answer::NoData
        );
        assert_eq!(
            ask("default.svc.cluster.local.", RecordType::A),
            Answer::NoData
        );
    }

    #[test]
    fn headless_service_gets_its_ready_endpoints() {
        assert_eq!(
            rdata(&ask("db.default.svc.cluster.local.", RecordType::A)),
            ["10.244.1.5", "10.244.2.7"]
        );
        // No ready endpoint: NXDOMAIN, as CoreDNS answers.
        assert_eq!(
            ask("empty.default.svc.cluster.local.", RecordType::A),
            Answer::NxDomain
        );
    }

    #[test]
    fn headless_endpoints_by_hostname_and_dashed_address() {
        assert_eq!(
            rdata(&ask("db-0.db.default.svc.cluster.local.", RecordType::A)),
            ["10.244.1.5"]
        );
        assert_eq!(
            rdata(&ask(
                "10-244-2-7.db.default.svc.cluster.local.",
                RecordType::A
            )),
            ["10.244.2.7"]
        );
        // Not ready.
        assert_eq!(
            ask("db-2.db.default.svc.cluster.local.", RecordType::A),
            Answer::NxDomain
        );
    }

    #[test]
    fn srv_of_a_cluster_ip_service_points_at_the_service() {
        let answer = ask("_http._tcp.web.default.svc.cluster.local.", RecordType::SRV);
        assert_eq!(rdata(&answer), ["0 100 80 web.default.svc.cluster.local."]);
        let Answer::Records { additionals, .. } = answer else {
            unreachable!()
        };
        assert_eq!(additionals.len(), 1);
        assert_eq!(additionals[0].data().to_string(), "10.96.0.20");
        assert_eq!(
            rdata(&ask(
                "_dns._udp.web.default.svc.cluster.local.",
                RecordType::SRV
            )),
            ["0 100 53 web.default.svc.cluster.local."]
        );
        // Wrong protocol or an unknown port.
        assert_eq!(
            ask("_dns._tcp.web.default.svc.cluster.local.", RecordType::SRV),
            Answer::NxDomain
        );
        assert_eq!(
            ask("_nope._tcp.web.default.svc.cluster.local.", RecordType::SRV),
            Answer::NxDomain
        );
    }

    #[test]
    fn srv_of_a_headless_service_has_one_record_per_endpoint() {
        let answer = ask("_http._tcp.db.default.svc.cluster.local.", RecordType::SRV);
        let mut got = rdata(&answer);
        got.sort();
        assert_eq!(
            got,
            [
                "0 100 8080 10-244-2-7.db.default.svc.cluster.local.",
                "0 100 8080 db-0.db.default.svc.cluster.local.",
            ]
        );
        let Answer::Records { additionals, .. } = answer else {
            unreachable!()
        };
        assert_eq!(additionals.len(), 2);
    }

    #[test]
    fn external_name_is_a_cname() {
        assert_eq!(
            rdata(&ask("ext.default.svc.cluster.local.", RecordType::A)),
            ["example.org."]
        );
    }

    #[test]
    fn pod_names_decode_their_address() {
        assert_eq!(
            rdata(&ask("10-244-1-5.default.pod.cluster.local.", RecordType::A)),
            ["10.244.1.5"]
        );
        assert_eq!(
            ask("10-244-1.default.pod.cluster.local.", RecordType::A),
            Answer::NxDomain
        );
        assert_eq!(
            ask("10-244-1-5.default.pod.cluster.local.", RecordType::AAAA),
            Answer::NoData
        );
    }

    #[test]
    fn unknown_names_in_the_zone_are_nxdomain() {
        assert_eq!(
            ask("nope.default.svc.cluster.local.", RecordType::A),
            Answer::NxDomain
        );
        assert_eq!(
            ask("web.other.svc.cluster.local.", RecordType::A),
            Answer::NxDomain
        );
        assert_eq!(
            ask("x.y.z.svc.cluster.local.", RecordType::A),
            Answer::NxDomain
        );
        assert_eq!(ask("foo.cluster.local.", RecordType::A), Answer::NxDomain);
    }

    #[test]
    fn apex_soa_and_forwarding() {
        let answer = ask("cluster.local.", RecordType::SOA);
        assert_eq!(rdata(&answer).len(), 1);
        assert_eq!(ask("example.org.", RecordType::A), Answer::Forward);
        // A suffix that only looks like the zone.
        assert_eq!(ask("notcluster.local.", RecordType::A), Answer::Forward);
    }

    #[test]
    fn other_cluster_domains() {
        let zone = Zone::new("corp.internal.").unwrap();
        assert_eq!(
            zone.answer(
                &fake(),
                &Name::from_ascii("web.default.svc.corp.internal.").unwrap(),
                RecordType::A
            ),
            Answer::Records {
                answers: vec![Record::from_rdata(
                    Name::from_ascii("web.default.svc.corp.internal.").unwrap(),
                    TTL,
                    RData::A(A::new(10, 96, 0, 20))
                )],
                additionals: Vec::new()
            }
        );
    }
}
