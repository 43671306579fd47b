//! Typed handles on the pinned proxy maps: the [`Store`] the difference engine writes through,
//! and the readers adoption, `windlass proxy dump` and the metrics endpoint use.

use std::path::Path;

use aya::maps::{Array, HashMap, HashOfMaps, MapData, MapError, PerCpuArray, PerCpuValues};

use crate::ebpf::proxy::{
    AffinityKey, AffinityValue, Backend, Config, CtKey, CtValue, MAGLEV_M, SvcKey, SvcValue,
    map_names,
};

use super::datapath::{Datapath, DatapathError, open_pinned};
use super::sync::Store;

type MaglevTable = [u32; MAGLEV_M];

const UDP: u8 = 17;

/// The maps the control side writes.
pub struct ProxyMaps {
    services: HashMap<MapData, SvcKey, SvcValue>,
    backends: HashMap<MapData, u32, Backend>,
    maglev: HashOfMaps<MapData, u32, Array<MapData, MaglevTable>>,
    metrics: PerCpuArray<MapData, u64>,
    affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    ct: HashMap<MapData, CtKey, CtValue>,
    node_addrs: HashMap<MapData, u32, u32>,
    config: Array<MapData, Config>,
}

impl std::fmt::Debug for ProxyMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyMaps").finish_non_exhaustive()
    }
}

impl ProxyMaps {
    /// Takes the maps out of a loaded datapath.
    pub fn from_datapath(datapath: &mut Datapath) -> Result<Self, DatapathError> {
        Ok(ProxyMaps {
            services: datapath.take_map(map_names::SERVICES)?.try_into()?,
            backends: datapath.take_map(map_names::BACKENDS)?.try_into()?,
            maglev: datapath.take_map(map_names::MAGLEV)?.try_into()?,
            metrics: datapath.take_map(map_names::METRICS)?.try_into()?,
            affinity: datapath.take_map(map_names::AFFINITY)?.try_into()?,
            ct: datapath.take_map(map_names::CT)?.try_into()?,
            node_addrs: datapath.take_map(map_names::NODE_ADDRS)?.try_into()?,
            config: datapath.take_map(map_names::CONFIG)?.try_into()?,
        })
    }

    /// Every `wl_lb_services` entry.
    pub fn service_entries(&self) -> Vec<(SvcKey, SvcValue)> {
        self.services.iter().filter_map(Result::ok).collect()
    }

    /// Every backend.
    pub fn backend_entries(&self) -> Vec<(u32, Backend)> {
        self.backends.iter().filter_map(Result::ok).collect()
    }

    /// Writes the node settings.
    pub fn set_config(&mut self, config: Config) -> Result<(), MapError> {
        self.config.set(0, config, 0)
    }

    /// Replaces the NodePort addresses with `addrs` (map byte order).
    pub fn set_node_addrs(&mut self, addrs: &[u32]) -> Result<(), MapError> {
        let old: Vec<u32> = self.node_addrs.keys().filter_map(Result::ok).collect();
        for a in addrs {
            self.node_addrs.insert(a, 1, 0)?;
        }
        for a in old.iter().filter(|a| !addrs.contains(a)) {
            let _ = self.node_addrs.remove(a);
        }
        Ok(())
    }

    /// Forgets the tc path's UDP flows to `gone` backends, so their next datagram picks a live
    /// one (kube-proxy clears UDP conntrack entries for the same reason). TCP flows stay: a
    /// terminating backend finishes its connections.
    pub fn purge_udp_flows(&mut self, gone: &[Backend]) -> usize {
        if gone.is_empty() {
            return 0;
        }
        let dead = |address: u32, port: u16| {
            gone.iter()
                .any(|b| b.proto == UDP && b.address == address && b.port == port)
        };
        let stale: Vec<CtKey> = self
            .ct
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, v)| {
                k.proto == UDP
                    && if v.reply == 0 {
                        dead(v.daddr, v.dport)
                    } else {
                        dead(k.saddr, k.sport)
                    }
            })
            .map(|(k, _)| k)
            .collect();
        for k in &stale {
            let _ = self.ct.remove(k);
        }
        stale.len()
    }

    /// Whether no client has an affinity entry.
    pub fn affinity_is_empty(&self) -> bool {
        self.affinity.keys().next().is_none()
    }

    /// Forgets affinity entries whose backend no longer serves their service.
    pub fn purge_affinity(&mut self, live: impl Fn(u16, u32) -> bool) {
        let stale: Vec<AffinityKey> = self
            .affinity
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, v)| !live(k.service_id, v.backend_id))
            .map(|(k, _)| k)
            .collect();
        for k in stale {
            let _ = self.affinity.remove(&k);
        }
    }
}

fn absent_ok(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

impl Store for ProxyMaps {
    type Error = MapError;

    fn put_slot(&mut self, key: SvcKey, value: SvcValue) -> Result<(), MapError> {
        self.services.insert(key, value, 0)
    }

    fn delete_slot(&mut self, key: SvcKey) -> Result<(), MapError> {
        absent_ok(self.services.remove(&key))
    }

    fn put_backend(&mut self, id: u32, backend: Backend) -> Result<(), MapError> {
        self.backends.insert(id, backend, 0)
    }

    fn delete_backend(&mut self, id: u32) -> Result<(), MapError> {
        absent_ok(self.backends.remove(&id))
    }

    fn put_maglev(&mut self, service_id: u16, table: &[u32]) -> Result<(), MapError> {
        let mut full: Box<MaglevTable> = Box::new([0; MAGLEV_M]);
        for (slot, id) in full.iter_mut().zip(table) {
            *slot = *id;
        }
        let mut inner = Array::<MapData, MaglevTable>::create(1, 0)?;
        inner.set(0, *full, 0)?;
        // The outer map holds the inner one from here; our descriptor can go.
        self.maglev.insert(u32::from(service_id), &inner, 0)
    }

    fn delete_maglev(&mut self, service_id: u16) -> Result<(), MapError> {
        absent_ok(self.maglev.remove(&u32::from(service_id)))
    }

    fn clear_counters(&mut self, service_id: u16) -> Result<(), MapError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| {
            MapError::SyscallError(aya::sys::SyscallError {
                call: "nr_cpus",
                io_error: e,
            })
        })?;
        let zeros = PerCpuValues::try_from(vec![0u64; cpus])?;
        self.metrics.set(u32::from(service_id), zeros, 0)
    }
}

/// Raw `wl_lb_services` and `wl_lb_backends` entries.
pub type PinnedEntries = (Vec<(SvcKey, SvcValue)>, Vec<(u32, Backend)>);

/// The frontends and backends of a node's pinned maps, read without loading any program (for
/// `windlass proxy dump`).
pub fn read_pinned(dir: &Path) -> Result<PinnedEntries, DatapathError> {
    let services: HashMap<MapData, SvcKey, SvcValue> = HashMap::try_from(aya::maps::Map::HashMap(
        open_pinned(dir, map_names::SERVICES)?,
    ))?;
    let backends: HashMap<MapData, u32, Backend> = HashMap::try_from(aya::maps::Map::HashMap(
        open_pinned(dir, map_names::BACKENDS)?,
    ))?;
    Ok((
        services.iter().filter_map(Result::ok).collect(),
        backends.iter().filter_map(Result::ok).collect(),
    ))
}
