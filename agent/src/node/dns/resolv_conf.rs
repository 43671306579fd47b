//! A pod's DNS configuration (its `/etc/resolv.conf`) from its `dnsPolicy` and `dnsConfig`,
//! as kubelet computes it (`pkg/kubelet/network/dns`):
//! - `ClusterFirst` (the default): `nameserver <cluster-dns>`, `search <ns>.svc.D svc.D D` and
//!   the node's search domains, `options ndots:5`; a hostNetwork pod gets the node's file.
//! - `ClusterFirstWithHostNet`: the cluster config, hostNetwork or not.
//! - `Default`: the node's file.
//! - `None`: only `dnsConfig`.
//!
//! `dnsConfig` is then merged in: nameservers and searches appended without duplicates,
//! options replacing the same-named ones. Without a cluster DNS address the cluster policies
//! fall back to the node's file, as kubelet does.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::PodSpec;
use serde::{Deserialize, Serialize};

/// kubelet's limits: three nameservers (glibc's MAXNS), 32 search domains.
const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCHES: usize = 32;

/// A resolver configuration (CRI's `DNSConfig`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodDns {
    /// `nameserver` lines.
    pub servers: Vec<String>,
    /// The `search` line.
    pub searches: Vec<String>,
    /// The `options` line.
    pub options: Vec<String>,
}

/// The node's cluster DNS settings (kubelet's `--cluster-dns`, `--cluster-domain`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDns {
    /// The nameservers pods get (the kube-dns Service's ClusterIP); none turns the cluster
    /// policies into `Default`.
    pub servers: Vec<IpAddr>,
    /// The cluster domain, `cluster.local`.
    pub domain: String,
}

impl PodDns {
    /// Parses resolv.conf text (comments after `#` or `;`; the last `search` line wins).
    pub fn parse(text: &str) -> Self {
        let mut dns = PodDns::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or_default();
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => dns.servers.extend(words.next().map(str::to_string)),
                Some("search") | Some("domain") => {
                    dns.searches = words.map(str::to_string).collect();
                }
                Some("options") => dns.options.extend(words.map(str::to_string)),
                _ => {}
            }
        }
        dns
    }

    /// The resolv.conf text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if !self.searches.is_empty() {
            out.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        for server in &self.servers {
            out.push_str(&format!("nameserver {server}\n"));
        }
        if !self.options.is_empty() {
            out.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        out
    }
}

/// The DNS configuration of a pod in `namespace` with `spec`, given the node's resolv.conf
/// text `host` and the cluster DNS settings.
pub fn pod_dns(spec: &PodSpec, namespace: &str, cluster: &ClusterDns, host: &str) -> PodDns {
    let host = PodDns::parse(host);
    let host_network = spec.host_network.unwrap_or(false);
    let use_cluster = match spec.dns_policy.as_deref() {
        Some("None") => None,
        Some("Default") => Some(false),
        Some("ClusterFirstWithHostNet") => Some(true),
        // ClusterFirst and anything unknown (the API server defaults the field).
        _ => Some(!host_network),
    };
    let mut dns = match use_cluster {
        None => PodDns::default(),
        Some(true) if !cluster.servers.is_empty() => {
            let domain = cluster.domain.trim_end_matches('.');
            let mut searches = vec![
                format!("{namespace}.svc.{domain}"),
                format!("svc.{domain}"),
                domain.to_string(),
            ];
            searches.extend(host.searches.iter().cloned());
            PodDns {
                servers: cluster.servers.iter().map(ToString::to_string).collect(),
                searches: dedup(searches),
                options: vec!["ndots:5".into()],
            }
        }
        Some(true) => {
            tracing::warn!(
                namespace,
                "no --cluster-dns configured; the pod gets the node's resolv.conf (dnsPolicy Default)"
            );
            host
        }
        Some(false) => host,
    };
    if let Some(config) = &spec.dns_config {
        dns.servers
            .extend(config.nameservers.iter().flatten().cloned());
        dns.servers = dedup(std::mem::take(&mut dns.servers));
        dns.searches
            .extend(config.searches.iter().flatten().cloned());
        dns.searches = dedup(std::mem::take(&mut dns.searches));
        for option in config.options.iter().flatten() {
            let Some(name) = option.name.as_deref() else {
                continue;
            };
            let rendered = match &option.value {
                Some(value) => format!("{name}:{value}"),
                None => name.to_string(),
            };
            dns.options.retain(|o| o.split(':').next() != Some(name));
            dns.options.push(rendered);
        }
    }
    dns.servers.truncate(MAX_NAMESERVERS);
    dns.searches.truncate(MAX_SEARCHES);
    dns
}

/// Keeps the first of each value, in order.
fn dedup(values: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    values
        .into_iter()
        .filter(|v| !v.is_empty() && seen.insert(v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use k8s_openapi::api::core::v1::{PodDNSConfig, PodDNSConfigOption};

    const HOST: &str =
        "# node\nsearch corp.example lab.example\nnameserver 192.0.2.53\noptions edns0 ndots:1\n";

    fn cluster() -> ClusterDns {
        ClusterDns {
            servers: vec!["10.96.0.10".parse().unwrap()],
            domain: "cluster.local".into(),
        }
    }

    fn spec(policy: Option<&str>, host_network: bool) -> PodSpec {
        PodSpec {
            dns_policy: policy.map(Into::into),
            host_network: Some(host_network),
            ..Default::default()
        }
    }

    #[test]
    fn cluster_first_points_at_cluster_dns() {
        let dns = pod_dns(&spec(None, false), "team-a", &cluster(), HOST);
        assert_eq!(
            dns.render(),
            "search team-a.svc.cluster.local svc.cluster.local cluster.local corp.example lab.example\nnameserver 10.96.0.10\noptions ndots:5\n"
        );
        assert_eq!(
            pod_dns(
                &spec(Some("ClusterFirst"), false),
                "team-a",
                &cluster(),
                HOST
            ),
            dns
        );
    }

    #[test]
    fn host_network_with_cluster_first_gets_the_node_file() {
        let dns = pod_dns(
            &spec(Some("ClusterFirst"), true),
            "team-a",
            &cluster(),
            HOST,
        );
        assert_eq!(dns, PodDns::parse(HOST));
        assert_eq!(dns.servers, ["192.0.2.53"]);
        assert_eq!(dns.options, ["edns0", "ndots:1"]);
    }

    #[test]
    fn cluster_first_with_host_net() {
        let dns = pod_dns(
            &spec(Some("ClusterFirstWithHostNet"), true),
            "kube-system",
            &cluster(),
            HOST,
        );
        assert_eq!(dns.servers, ["10.96.0.10"]);
        assert_eq!(dns.searches[0], "kube-system.svc.cluster.local");
    }

    #[test]
    fn default_policy_is_the_node_file() {
        let dns = pod_dns(&spec(Some("Default"), false), "a", &cluster(), HOST);
        assert_eq!(dns, PodDns::parse(HOST));
    }

    #[test]
    fn no_cluster_dns_falls_back_to_the_node_file() {
        let none = ClusterDns {
            servers: Vec::new(),
            domain: "cluster.local".into(),
        };
        assert_eq!(
            pod_dns(&spec(None, false), "a", &none, HOST),
            PodDns::parse(HOST)
        );
    }

    #[test]
    fn none_policy_takes_only_dns_config() {
        let mut pod = spec(Some("None"), false);
        pod.dns_config = Some(PodDNSConfig {
            nameservers: Some(vec!["1.1.1.1".into()]),
            searches: Some(vec!["my.example".into()]),
            options: Some(vec![PodDNSConfigOption {
                name: Some("ndots".into()),
                value: Some("2".into()),
            }]),
        });
        assert_eq!(
            pod_dns(&pod, "a", &cluster(), HOST).render(),
            "search my.example\nnameserver 1.1.1.1\noptions ndots:2\n"
        );
    }

    #[test]
    fn dns_config_merges_into_cluster_first() {
        let mut pod = spec(None, false);
        pod.dns_config = Some(PodDNSConfig {
            nameservers: Some(vec!["10.96.0.10".into(), "192.0.2.1".into()]),
            searches: Some(vec!["svc.cluster.local".into(), "extra.example".into()]),
            options: Some(vec![
                PodDNSConfigOption {
                    name: Some("ndots".into()),
                    value: Some("2".into()),
                },
                PodDNSConfigOption {
                    name: Some("edns0".into()),
                    value: None,
                },
            ]),
        });
        let dns = pod_dns(&pod, "a", &cluster(), HOST);
        assert_eq!(dns.servers, ["10.96.0.10", "192.0.2.1"]);
        assert_eq!(
            dns.searches,
            [
                "a.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "corp.example",
                "lab.example",
                "extra.example"
            ]
        );
        assert_eq!(dns.options, ["ndots:2", "edns0"]);
    }

    #[test]
    fn limits_are_kept() {
        let mut pod = spec(Some("None"), false);
        pod.dns_config = Some(PodDNSConfig {
            nameservers: Some((1..=5).map(|i| format!("192.0.2.{i}")).collect()),
            searches: Some((0..40).map(|i| format!("d{i}.example")).collect()),
            options: None,
        });
        let dns = pod_dns(&pod, "a", &cluster(), "");
        assert_eq!(dns.servers.len(), 3);
        assert_eq!(dns.searches.len(), 32);
    }
}
