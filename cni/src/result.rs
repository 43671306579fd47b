//! CNI results: what ADD prints and what CHECK, DEL and chained plugins receive as
//! `prevResult`, written in the shape of the configuration's `cniVersion`.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::version::Version;

/// An interface a plugin created or configured.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Interface name (in `sandbox` when that is set, else on the host).
    pub name: String,
    /// Hardware address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// MTU (reported from 1.1.0 on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The network namespace path for a container interface; absent for host interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// An address assigned to an interface.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address in CIDR notation, e.g. `10.244.1.5/24`.
    pub address: String,
    /// Default gateway for this subnet, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Index into `interfaces` of the interface this address is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// A route inside the container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteConf {
    /// Destination in CIDR notation.
    pub dst: String,
    /// Next hop; the default gateway when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
}

/// DNS settings passed through from the configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers, in priority order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// The local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// A CNI result, independent of the version it is written in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct CniResult {
    /// Interfaces, referred to by index from `ips`.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// Assigned addresses.
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    /// Routes in the container.
    #[serde(default)]
    pub routes: Vec<RouteConf>,
    /// DNS settings.
    #[serde(default)]
    pub dns: Dns,
}

impl CniResult {
    /// Writes the result in the shape `version` defines: 0.3.x and 0.4.0 carry
    /// `ips[].version`, 1.1.0 adds interface `mtu`.
    pub fn to_json(&self, version: Version) -> Value {
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut i = i.clone();
                if version < Version::V1_1_0 {
                    i.mtu = None;
                }
                json!(i)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut v = json!(ip);
                if version < Version::V1_0_0 {
                    let family = if ip.address.contains(':') { "6" } else { "4" };
                    v["version"] = Value::String(family.to_string());
                }
                v
            })
            .collect();
        let mut out = json!({
            "cniVersion": version.as_str(),
            "interfaces": interfaces,
            "ips": ips,
        });
        if !self.routes.is_empty() {
            out["routes"] = json!(self.routes);
        }
        out["dns"] = json!(self.dns);
        out
    }

    /// Appends `other` after this result's entries, renumbering its interface indices, as a
    /// plugin does with the `prevResult` it was chained after.
    pub fn extend(&mut self, other: CniResult) {
        let offset = self.interfaces.len();
        self.interfaces.extend(other.interfaces);
        self.ips.extend(other.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + offset);
            ip
        }));
        self.routes.extend(other.routes);
        if self.dns.is_empty() {
            self.dns = other.dns;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: Some("02:00:00:00:00:01".into()),
                mtu: Some(1500),
                sandbox: Some("/run/netns/x".into()),
            }],
            ips: vec![IpConfig {
                address: "10.244.1.5/24".into(),
                gateway: Some("10.244.1.1".into()),
                interface: Some(0),
            }],
            routes: vec![RouteConf {
                dst: "0.0.0.0/0".into(),
                gw: None,
            }],
            dns: Dns::default(),
        }
    }

    #[test]
    fn old_versions_carry_the_ip_family_and_no_mtu() {
        let v = sample().to_json(Version::V0_4_0);
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["ips"][0]["version"], "4");
        assert!(v["interfaces"][0].get("mtu").is_none());
    }

    #[test]
    fn v1_drops_the_ip_family_and_v1_1_reports_mtu() {
        let v = sample().to_json(Version::V1_0_0);
        assert!(v["ips"][0].get("version").is_none());
        assert!(v["interfaces"][0].get("mtu").is_none());
        let v = sample().to_json(Version::V1_1_0);
        assert_eq!(v["interfaces"][0]["mtu"], 1500);
    }

    #[test]
    fn a_result_reads_back_from_any_version() {
        for version in crate::version::SUPPORTED {
            let text = sample().to_json(version).to_string();
            let back: CniResult = serde_json::from_str(&text).expect("parse");
            assert_eq!(back.ips, sample().ips);
            assert_eq!(back.routes, sample().routes);
        }
    }

    #[test]
    fn extending_renumbers_interfaces() {
        let mut prev = CniResult {
            interfaces: vec![Interface {
                name: "lo".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        prev.extend(sample());
        assert_eq!(prev.interfaces.len(), 2);
        assert_eq!(prev.ips[0].interface, Some(1));
    }
}
