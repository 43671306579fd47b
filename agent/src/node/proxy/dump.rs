//! `windlass proxy dump`: the services and backends as the pinned maps hold them, read without
//! the agent (it may be down), as JSON or as one line per frontend.

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;

use crate::ebpf::proxy::{Backend, addr_from_map, backend_flags, port_from_map, svc_flags};

use super::datapath::DatapathError;
use super::maps::read_pinned;
use super::sync::group_slots;

/// One frontend of the dump.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DumpFrontend {
    /// The frontend address (`0.0.0.0` for a NodePort).
    pub address: String,
    /// The port.
    pub port: u16,
    /// `TCP` or `UDP`.
    pub protocol: String,
    /// `internal` or `external`.
    pub scope: String,
    /// A NodePort on every node address.
    pub node_port: bool,
    /// The service port's id.
    pub service_id: u16,
    /// ClientIP affinity timeout.
    pub affinity_timeout_seconds: Option<u32>,
    /// Backend choice by Maglev.
    pub maglev: bool,
    /// The backends in slot order.
    pub backends: Vec<DumpBackend>,
}

/// One backend of the dump.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DumpBackend {
    /// Address.
    pub address: String,
    /// Port.
    pub port: u16,
    /// On this node.
    pub local: bool,
    /// Serving but terminating.
    pub terminating: bool,
}

/// Reads the frontends pinned in `dir`, sorted by address, port, protocol and scope.
pub fn read(dir: &Path) -> Result<Vec<DumpFrontend>, DatapathError> {
    let (entries, backends) = read_pinned(dir)?;
    let backends: HashMap<u32, Backend> = backends.into_iter().collect();
    let (frontends, _) = group_slots(entries);
    let mut out: Vec<DumpFrontend> = frontends
        .into_iter()
        .map(|f| DumpFrontend {
            address: f.key.address.to_string(),
            port: f.key.port,
            protocol: f.key.proto.as_str().to_string(),
            scope: f.key.scope.as_str().to_string(),
            node_port: f.value.flags & svc_flags::NODEPORT != 0,
            service_id: f.value.service_id,
            affinity_timeout_seconds: (f.value.flags & svc_flags::AFFINITY != 0)
                .then_some(f.value.affinity_timeout),
            maglev: f.value.flags & svc_flags::MAGLEV != 0,
            backends: f
                .backends
                .iter()
                .filter_map(|id| backends.get(id))
                .map(|b| DumpBackend {
                    address: addr_from_map(b.address).to_string(),
                    port: port_from_map(b.port),
                    local: b.flags & backend_flags::LOCAL != 0,
                    terminating: b.flags & backend_flags::TERMINATING != 0,
                })
                .collect(),
        })
        .collect();
    out.sort_by(|a, b| {
        let key = |f: &DumpFrontend| {
            (
                f.address.parse::<std::net::Ipv4Addr>().ok(),
                f.port,
                f.protocol.clone(),
                f.scope.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    Ok(out)
}

/// One line per frontend: `10.96.0.12:80/TCP internal id=3 -> 10.244.1.3:8080 10.244.1.4:8080`.
pub fn text(frontends: &[DumpFrontend]) -> String {
    let mut out = String::new();
    for f in frontends {
        let mut extra = String::new();
        if f.node_port {
            extra.push_str(" nodePort");
        }
        if let Some(t) = f.affinity_timeout_seconds {
            extra.push_str(&format!(" affinity={t}s"));
        }
        if f.maglev {
            extra.push_str(" maglev");
        }
        let backends: Vec<String> = f
            .backends
            .iter()
            .map(|b| {
                let mut s = format!("{}:{}", b.address, b.port);
                if b.local {
                    s.push_str("(local)");
                }
                if b.terminating {
                    s.push_str("(terminating)");
                }
                s
            })
            .collect();
        let to = if backends.is_empty() {
            "(none: refused)".to_string()
        } else {
            backends.join(" ")
        };
        out.push_str(&format!(
            "{}:{}/{} {} id={}{} -> {}\n",
            f.address, f.port, f.protocol, f.scope, f.service_id, extra, to
        ));
    }
    out
}
