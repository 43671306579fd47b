//! The difference engine: holds what the maps contain (read back from the pins on start),
//! takes the desired frontends of one Service at a time and writes only what changed, in an
//! order that never shows the datapath a half-written service: backends before the slots that
//! name them, slots before the slot-0 count that exposes them, and the reverse when shrinking.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::ebpf::proxy::{
    Backend, MAGLEV_M, Scope, SvcKey, SvcValue, addr_from_map, addr_to_map, backend_flags,
    port_from_map, port_to_map, svc_flags,
};

use super::desired::{BackendKey, DesiredFrontend, FrontendKey, Proto, ServicePortKey};
use super::maglev;

/// Where the engine writes: the pinned maps, or a recording fake in unit tests.
pub trait Store {
    /// The error of a write.
    type Error: std::error::Error + Send + Sync + 'static;
    /// Writes one frontend slot.
    fn put_slot(&mut self, key: SvcKey, value: SvcValue) -> Result<(), Self::Error>;
    /// Deletes one frontend slot (absent is fine).
    fn delete_slot(&mut self, key: SvcKey) -> Result<(), Self::Error>;
    /// Writes a backend.
    fn put_backend(&mut self, id: u32, backend: Backend) -> Result<(), Self::Error>;
    /// Deletes a backend (absent is fine).
    fn delete_backend(&mut self, id: u32) -> Result<(), Self::Error>;
    /// Installs the Maglev table of a service id (entries are backend ids).
    fn put_maglev(&mut self, service_id: u16, table: &[u32]) -> Result<(), Self::Error>;
    /// Removes the Maglev table of a service id.
    fn delete_maglev(&mut self, service_id: u16) -> Result<(), Self::Error>;
    /// Zeroes a service id's counters (when the id is given up).
    fn clear_counters(&mut self, service_id: u16) -> Result<(), Self::Error>;
}

/// What one frontend holds in the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Applied {
    value: SvcValue,
    /// Backend ids by slot (slot i+1 holds `backends[i]`).
    backends: Vec<u32>,
}

#[derive(Clone, Debug)]
struct BackendEntry {
    id: u32,
    value: Backend,
    refs: usize,
}

/// A service's identity: namespace and name.
pub type ServiceKey = (String, String);

/// The counts a sync changed, for logs and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Map writes and deletes.
    pub writes: usize,
}

/// The engine.
#[derive(Debug)]
pub struct Syncer<S> {
    store: S,
    frontends: HashMap<FrontendKey, Applied>,
    by_service: HashMap<ServiceKey, BTreeSet<FrontendKey>>,
    backends: HashMap<BackendKey, BackendEntry>,
    backend_keys: HashMap<u32, BackendKey>,
    next_backend: u32,
    service_ids: HashMap<ServicePortKey, u16>,
    service_id_owner: HashMap<u16, ServicePortKey>,
    /// Frontends using each service id.
    service_id_refs: HashMap<u16, usize>,
    /// Backend ids each Maglev table was built from.
    maglev: HashMap<u16, Vec<u32>>,
    /// Backends removed since the last [`Syncer::take_released`].
    released: Vec<Backend>,
    /// Where the next service id search starts.
    next_service_id: u16,
    /// Frontends with the Maglev flag, per service id.
    maglev_users: HashMap<u16, usize>,
    /// What may have lost its last user since the last release (checked there, so a sync
    /// costs what it changed, not what the maps hold).
    maybe_unused_ids: BTreeSet<u16>,
    maybe_unused_tables: BTreeSet<u16>,
    maybe_unused_backends: BTreeSet<u32>,
}

/// A frontend read back from the maps (for adoption and dumps).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedFrontend {
    /// Its key.
    pub key: FrontendKey,
    /// Slot 0.
    pub value: SvcValue,
    /// Backend ids by slot.
    pub backends: Vec<u32>,
}

/// Groups raw `wl_lb_services` entries into frontends (slot 0 plus its slots, in order).
/// Entries with an unknown protocol or scope, and slots past the count, are returned apart
/// as leftovers to delete.
pub fn group_slots(entries: Vec<(SvcKey, SvcValue)>) -> (Vec<PinnedFrontend>, Vec<SvcKey>) {
    type Head = (SvcValue, BTreeMap<u16, u32>);
    let mut heads: BTreeMap<(u32, u16, u8, u8), Head> = BTreeMap::new();
    let mut slots: Vec<(SvcKey, SvcValue)> = Vec::new();
    for (k, v) in entries {
        if k.slot == 0 {
            heads
                .entry((k.address, k.port, k.proto, k.scope))
                .or_default()
                .0 = v;
        } else {
            slots.push((k, v));
        }
    }
    let mut leftovers = Vec::new();
    for (k, v) in slots {
        match heads.get_mut(&(k.address, k.port, k.proto, k.scope)) {
            Some((head, by_slot)) if k.slot <= head.count => {
                by_slot.insert(k.slot, v.backend_id);
            }
            _ => leftovers.push(k),
        }
    }
    let mut out = Vec::new();
    for ((address, port, proto, scope), (value, by_slot)) in heads {
        let raw = SvcKey {
            address,
            port,
            proto,
            scope,
            ..Default::default()
        };
        let (Some(proto), Some(scope)) = (Proto::from_number(proto), Scope::from_u8(scope)) else {
            leftovers.push(raw);
            leftovers.extend(by_slot.keys().map(|slot| SvcKey { slot: *slot, ..raw }));
            continue;
        };
        out.push(PinnedFrontend {
            key: FrontendKey {
                address: addr_from_map(address),
                port: port_from_map(port),
                proto,
                scope,
            },
            value,
            backends: by_slot.into_values().collect(),
        });
    }
    (out, leftovers)
}

fn raw_key(key: &FrontendKey, slot: u16) -> SvcKey {
    SvcKey {
        address: addr_to_map(key.address),
        port: port_to_map(key.port),
        slot,
        proto: key.proto.number(),
        scope: key.scope as u8,
        pad: [0; 2],
    }
}

impl<S: Store> Syncer<S> {
    /// An engine for maps holding `frontends` and `backends` (read back from the pins; empty on
    /// a first start). Nothing is written until the first sync.
    pub fn adopt(store: S, frontends: Vec<PinnedFrontend>, backends: Vec<(u32, Backend)>) -> Self {
        let mut syncer = Syncer {
            store,
            frontends: HashMap::new(),
            by_service: HashMap::new(),
            backends: HashMap::new(),
            backend_keys: HashMap::new(),
            next_backend: 1,
            service_ids: HashMap::new(),
            service_id_owner: HashMap::new(),
            service_id_refs: HashMap::new(),
            maglev: HashMap::new(),
            released: Vec::new(),
            next_service_id: 1,
            maglev_users: HashMap::new(),
            maybe_unused_ids: BTreeSet::new(),
            maybe_unused_tables: BTreeSet::new(),
            maybe_unused_backends: BTreeSet::new(),
        };
        for (id, value) in backends {
            let Some(proto) = Proto::from_number(value.proto) else {
                continue;
            };
            let key = BackendKey {
                address: addr_from_map(value.address),
                port: port_from_map(value.port),
                proto,
            };
            syncer.next_backend = syncer.next_backend.max(id.saturating_add(1));
            syncer.backend_keys.insert(id, key.clone());
            syncer
                .backends
                .insert(key, BackendEntry { id, value, refs: 0 });
        }
        for f in frontends {
            for id in &f.backends {
                if let Some(key) = syncer.backend_keys.get(id)
                    && let Some(entry) = syncer.backends.get_mut(key)
                {
                    entry.refs += 1;
                }
            }
            *syncer
                .service_id_refs
                .entry(f.value.service_id)
                .or_default() += 1;
            if f.value.flags & svc_flags::MAGLEV != 0 {
                *syncer.maglev_users.entry(f.value.service_id).or_default() += 1;
                // Its table is in the maps but its contents are unknown: rebuilt at first sync.
                syncer.maglev.insert(f.value.service_id, Vec::new());
            }
            syncer.frontends.insert(
                f.key,
                Applied {
                    value: f.value,
                    backends: f.backends,
                },
            );
        }
        syncer.maybe_unused_backends = syncer
            .backends
            .values()
            .filter(|e| e.refs == 0)
            .map(|e| e.id)
            .collect();
        syncer
    }

    /// The store (to read counters through it, for example).
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The store, to write through it directly.
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// `address:port/PROTO` of each service id's main frontend (its ClusterIP when it has one).
    pub fn main_frontends(&self) -> HashMap<u16, String> {
        let mut best: HashMap<u16, &FrontendKey> = HashMap::new();
        let rank = |k: &FrontendKey| (k.address.is_unspecified(), k.scope, k.address, k.port);
        for (k, a) in &self.frontends {
            let slot = best.entry(a.value.service_id).or_insert(k);
            if rank(k) < rank(slot) {
                *slot = k;
            }
        }
        best.into_iter()
            .map(|(id, k)| (id, format!("{}:{}/{}", k.address, k.port, k.proto.as_str())))
            .collect()
    }

    /// Every (service id, backend id) the frontends use.
    pub fn service_backend_pairs(&self) -> std::collections::HashSet<(u16, u32)> {
        self.frontends
            .values()
            .flat_map(|a| a.backends.iter().map(move |b| (a.value.service_id, *b)))
            .collect()
    }

    /// The backends removed from the maps since the last call (their UDP flows are stale).
    pub fn take_released(&mut self) -> Vec<Backend> {
        std::mem::take(&mut self.released)
    }

    /// The service port behind each service id in use.
    pub fn service_ports(&self) -> &HashMap<u16, ServicePortKey> {
        &self.service_id_owner
    }

    /// How many frontends the maps hold.
    pub fn frontend_count(&self) -> usize {
        self.frontends.len()
    }

    /// Brings the maps to `desired` for every service at once (the first sync after the
    /// initial lists): each service is synced, then frontends no service wants (left by a
    /// service deleted while the agent was down) are removed.
    pub fn sync_all(
        &mut self,
        desired: Vec<(ServiceKey, Vec<DesiredFrontend>)>,
    ) -> Result<Changes, S::Error> {
        let mut changes = Changes::default();
        let mut wanted: BTreeSet<FrontendKey> = BTreeSet::new();
        for (service, frontends) in desired {
            wanted.extend(frontends.iter().map(|f| f.key));
            changes.writes += self.sync_service(service, frontends)?.writes;
        }
        let stale: Vec<FrontendKey> = self
            .frontends
            .keys()
            .filter(|k| !wanted.contains(k))
            .copied()
            .collect();
        for key in stale {
            changes.writes += self.remove_frontend(&key)?;
        }
        changes.writes += self.release_unused()?;
        Ok(changes)
    }

    /// Brings one service's frontends to `desired` (empty: the service is gone).
    pub fn sync_service(
        &mut self,
        service: ServiceKey,
        desired: Vec<DesiredFrontend>,
    ) -> Result<Changes, S::Error> {
        let mut writes = 0;
        // 1. Service ids for the ports, keeping the ids already in the maps.
        let mut port_ids: HashMap<ServicePortKey, u16> = HashMap::new();
        for f in &desired {
            if port_ids.contains_key(&f.port) {
                continue;
            }
            let id = match self.service_ids.get(&f.port) {
                Some(id) => *id,
                None => {
                    let inherited = self
                        .frontends
                        .get(&f.key)
                        .map(|a| a.value.service_id)
                        .filter(|id| *id != 0 && !self.service_id_owner.contains_key(id));
                    let id = match inherited {
                        Some(id) => id,
                        None => self.allocate_service_id(),
                    };
                    self.service_ids.insert(f.port.clone(), id);
                    self.service_id_owner.insert(id, f.port.clone());
                    id
                }
            };
            port_ids.insert(f.port.clone(), id);
        }
        // 2. Backends before anything names them.
        for f in &desired {
            for b in &f.backends {
                writes += self.ensure_backend(b.key.clone(), b.local, b.terminating)?;
            }
        }
        // 3. Maglev tables before the flag that uses them.
        let mut maglev_ready: BTreeSet<u16> = BTreeSet::new();
        for f in desired
            .iter()
            .filter(|f| f.maglev && !f.backends.is_empty())
        {
            let id = port_ids[&f.port];
            if maglev_ready.contains(&id) {
                continue;
            }
            let mut names = Vec::with_capacity(f.backends.len());
            let mut ids = Vec::with_capacity(f.backends.len());
            for b in &f.backends {
                names.push(b.key.name());
                ids.push(self.backends[&b.key].id);
            }
            let mut sorted = ids.clone();
            sorted.sort_unstable();
            if self.maglev.get(&id) != Some(&sorted) {
                let table: Vec<u32> = maglev::table(&names, MAGLEV_M)
                    .into_iter()
                    .map(|i| ids[i as usize])
                    .collect();
                self.store.put_maglev(id, &table)?;
                self.maglev.insert(id, sorted);
                writes += 1;
            }
            maglev_ready.insert(id);
        }
        // 4. Each frontend: slots, then slot 0, then the slots past the new count.
        let old_keys = self.by_service.remove(&service).unwrap_or_default();
        let mut new_keys = BTreeSet::new();
        for f in &desired {
            let id = port_ids[&f.port];
            let wanted: Vec<u32> = f
                .backends
                .iter()
                .map(|b| self.backends[&b.key].id)
                .collect();
            let mut flags = 0;
            if f.node_port {
                flags |= svc_flags::NODEPORT;
            }
            if f.affinity_timeout.is_some() {
                flags |= svc_flags::AFFINITY;
            }
            if f.external_local {
                flags |= svc_flags::EXT_LOCAL;
            }
            if maglev_ready.contains(&id) && f.maglev {
                flags |= svc_flags::MAGLEV;
            }
            writes += self.write_frontend(f.key, id, flags, f.affinity_timeout, wanted)?;
            new_keys.insert(f.key);
        }
        // 5. Frontends the service no longer has.
        for key in old_keys.difference(&new_keys) {
            writes += self.remove_frontend(key)?;
        }
        if !new_keys.is_empty() {
            self.by_service.insert(service, new_keys);
        }
        // 6. Backends, ids and tables nothing uses any more.
        writes += self.release_unused()?;
        Ok(Changes { writes })
    }

    fn allocate_service_id(&mut self) -> u16 {
        let mut id = self.next_service_id.max(1);
        for _ in 0..u16::MAX {
            if !self.service_id_owner.contains_key(&id) && !self.service_id_refs.contains_key(&id) {
                break;
            }
            id = id.checked_add(1).unwrap_or(1);
        }
        self.next_service_id = id.checked_add(1).unwrap_or(1);
        id
    }

    fn ensure_backend(
        &mut self,
        key: BackendKey,
        local: bool,
        terminating: bool,
    ) -> Result<usize, S::Error> {
        let mut flags = 0;
        if local {
            flags |= backend_flags::LOCAL;
        }
        if terminating {
            flags |= backend_flags::TERMINATING;
        }
        let value = Backend {
            address: addr_to_map(key.address),
            port: port_to_map(key.port),
            proto: key.proto.number(),
            flags,
        };
        if let Some(entry) = self.backends.get_mut(&key) {
            if entry.value == value {
                return Ok(0);
            }
            self.store.put_backend(entry.id, value)?;
            entry.value = value;
            return Ok(1);
        }
        let mut id = self.next_backend.max(1);
        while self.backend_keys.contains_key(&id) {
            id = id.wrapping_add(1).max(1);
        }
        self.next_backend = id.wrapping_add(1).max(1);
        self.store.put_backend(id, value)?;
        self.backend_keys.insert(id, key.clone());
        self.backends
            .insert(key, BackendEntry { id, value, refs: 0 });
        Ok(1)
    }

    fn write_frontend(
        &mut self,
        key: FrontendKey,
        service_id: u16,
        flags: u8,
        affinity_timeout: Option<u32>,
        wanted: Vec<u32>,
    ) -> Result<usize, S::Error> {
        let mut writes = 0;
        let old = self.frontends.get(&key).cloned();
        let old_backends = old.as_ref().map(|a| a.backends.clone()).unwrap_or_default();
        // Keep surviving backends in their slots; new ones fill the holes, then the end.
        let wanted_set: BTreeSet<u32> = wanted.iter().copied().collect();
        let mut slots: Vec<Option<u32>> = old_backends
            .iter()
            .map(|id| wanted_set.contains(id).then_some(*id))
            .collect();
        let placed: BTreeSet<u32> = slots.iter().flatten().copied().collect();
        let mut fresh = wanted.iter().filter(|id| !placed.contains(id)).copied();
        for slot in slots.iter_mut().filter(|s| s.is_none()) {
            *slot = fresh.next();
        }
        slots.extend(fresh.map(Some));
        // Close the remaining holes by moving the last backends down.
        let mut compact: Vec<u32> = Vec::with_capacity(wanted.len());
        let mut tail: Vec<u32> = Vec::new();
        for (i, s) in slots.iter().enumerate() {
            match s {
                Some(id) if i < wanted.len() => compact.push(*id),
                Some(id) => tail.push(*id),
                None => compact.push(0),
            }
        }
        for hole in compact.iter_mut().filter(|id| **id == 0) {
            if let Some(id) = tail.pop() {
                *hole = id;
            }
        }
        compact.retain(|id| *id != 0);
        let new_backends = compact;

        for (i, id) in new_backends.iter().enumerate() {
            if old_backends.get(i) != Some(id) {
                let slot = (i + 1) as u16;
                self.store.put_slot(
                    raw_key(&key, slot),
                    SvcValue {
                        backend_id: *id,
                        ..Default::default()
                    },
                )?;
                writes += 1;
            }
        }
        let head = SvcValue {
            backend_id: 0,
            count: new_backends.len() as u16,
            service_id,
            affinity_timeout: affinity_timeout.unwrap_or(0),
            flags,
            pad: [0; 3],
        };
        if old.as_ref().map(|a| a.value) != Some(head) {
            self.store.put_slot(raw_key(&key, 0), head)?;
            writes += 1;
        }
        for i in new_backends.len()..old_backends.len() {
            self.store.delete_slot(raw_key(&key, (i + 1) as u16))?;
            writes += 1;
        }
        // Book-keeping: references of backends and service ids.
        for id in &new_backends {
            self.add_ref(*id, 1);
        }
        for id in &old_backends {
            self.add_ref(*id, -1);
        }
        *self.service_id_refs.entry(service_id).or_default() += 1;
        if head.flags & svc_flags::MAGLEV != 0 {
            *self.maglev_users.entry(service_id).or_default() += 1;
        }
        if let Some(old) = &old {
            self.drop_service_ref(old.value.service_id);
            self.drop_maglev_user(&old.value);
        }
        self.frontends.insert(
            key,
            Applied {
                value: head,
                backends: new_backends,
            },
        );
        Ok(writes)
    }

    fn add_ref(&mut self, id: u32, delta: isize) {
        if let Some(key) = self.backend_keys.get(&id)
            && let Some(entry) = self.backends.get_mut(key)
        {
            entry.refs = entry.refs.saturating_add_signed(delta);
            if entry.refs == 0 {
                self.maybe_unused_backends.insert(id);
            }
        }
    }

    fn drop_service_ref(&mut self, id: u16) {
        if let Some(n) = self.service_id_refs.get_mut(&id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.maybe_unused_ids.insert(id);
            }
        }
    }

    fn drop_maglev_user(&mut self, value: &SvcValue) {
        if value.flags & svc_flags::MAGLEV == 0 {
            return;
        }
        if let Some(n) = self.maglev_users.get_mut(&value.service_id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.maglev_users.remove(&value.service_id);
                self.maybe_unused_tables.insert(value.service_id);
            }
        }
    }

    fn remove_frontend(&mut self, key: &FrontendKey) -> Result<usize, S::Error> {
        let Some(applied) = self.frontends.remove(key) else {
            return Ok(0);
        };
        // Slot 0 first: readers stop finding the frontend before its slots go.
        self.store.delete_slot(raw_key(key, 0))?;
        for i in 0..applied.backends.len() {
            self.store.delete_slot(raw_key(key, (i + 1) as u16))?;
        }
        for id in &applied.backends {
            self.add_ref(*id, -1);
        }
        self.drop_service_ref(applied.value.service_id);
        self.drop_maglev_user(&applied.value);
        Ok(1 + applied.backends.len())
    }

    fn release_unused(&mut self) -> Result<usize, S::Error> {
        let mut writes = 0;
        for id in std::mem::take(&mut self.maybe_unused_ids) {
            if self.service_id_refs.get(&id) != Some(&0) {
                continue;
            }
            self.service_id_refs.remove(&id);
            if let Some(port) = self.service_id_owner.remove(&id) {
                self.service_ids.remove(&port);
            }
            self.store.clear_counters(id)?;
            writes += 1;
        }
        // Maglev tables whose service id lost its last external frontend.
        for id in std::mem::take(&mut self.maybe_unused_tables) {
            if self.maglev_users.contains_key(&id) || self.maglev.remove(&id).is_none() {
                continue;
            }
            self.store.delete_maglev(id)?;
            writes += 1;
        }
        for id in std::mem::take(&mut self.maybe_unused_backends) {
            let Some(key) = self.backend_keys.get(&id).cloned() else {
                continue;
            };
            if self.backends.get(&key).is_none_or(|e| e.refs != 0) {
                continue;
            }
            if let Some(entry) = self.backends.remove(&key) {
                self.backend_keys.remove(&entry.id);
                self.store.delete_backend(entry.id)?;
                self.released.push(entry.value);
                writes += 1;
            }
        }
        Ok(writes)
    }
}

#[cfg(test)]
mod tests {
    use super::super::desired::DesiredBackend;
    use std::net::Ipv4Addr;

    use super::*;

    /// A fake store that checks, after every write, what a datapath reader would see: every
    /// frontend's slots 1..count name a backend that exists.
    #[derive(Debug, Default)]
    struct Fake {
        slots: BTreeMap<SvcKey, SvcValue>,
        backends: BTreeMap<u32, Backend>,
        maglev: BTreeMap<u16, Vec<u32>>,
        log: Vec<String>,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("fake")]
    struct Never;

    impl Fake {
        fn check(&self) {
            for (k, v) in self.slots.iter().filter(|(k, _)| k.slot == 0) {
                for slot in 1..=v.count {
                    let s = self
                        .slots
                        .get(&SvcKey { slot, ..*k })
                        .unwrap_or_else(|| panic!("slot {slot} of {k:?} missing: {:?}", self.log));
                    assert!(
                        self.backends.contains_key(&s.backend_id),
                        "slot {slot} names a missing backend: {:?}",
                        self.log
                    );
                }
                if v.flags & svc_flags::MAGLEV != 0 {
                    let table = self.maglev.get(&v.service_id).expect("maglev table");
                    assert!(table.iter().all(|id| self.backends.contains_key(id)));
                }
            }
        }
    }

    impl Store for Fake {
        type Error = Never;
        fn put_slot(&mut self, key: SvcKey, value: SvcValue) -> Result<(), Never> {
            self.log.push(format!("put {}:{}", key.port, key.slot));
            self.slots.insert(key, value);
            self.check();
            Ok(())
        }
        fn delete_slot(&mut self, key: SvcKey) -> Result<(), Never> {
            self.log.push(format!("del {}:{}", key.port, key.slot));
            self.slots.remove(&key);
            self.check();
            Ok(())
        }
        fn put_backend(&mut self, id: u32, backend: Backend) -> Result<(), Never> {
            self.log.push(format!("backend {id}"));
            self.backends.insert(id, backend);
            Ok(())
        }
        fn delete_backend(&mut self, id: u32) -> Result<(), Never> {
            self.log.push(format!("unbackend {id}"));
            self.backends.remove(&id);
            self.check();
            Ok(())
        }
        fn put_maglev(&mut self, service_id: u16, table: &[u32]) -> Result<(), Never> {
            self.maglev.insert(service_id, table.to_vec());
            Ok(())
        }
        fn delete_maglev(&mut self, service_id: u16) -> Result<(), Never> {
            self.maglev.remove(&service_id);
            self.check();
            Ok(())
        }
        fn clear_counters(&mut self, _: u16) -> Result<(), Never> {
            Ok(())
        }
    }

    fn svc() -> ServiceKey {
        ("default".into(), "web".into())
    }

    fn frontend(port: u16, backends: &[u8], maglev: bool) -> DesiredFrontend {
        DesiredFrontend {
            key: FrontendKey {
                address: Ipv4Addr::new(10, 96, 0, 12),
                port,
                proto: Proto::Tcp,
                scope: if maglev {
                    Scope::External
                } else {
                    Scope::Internal
                },
            },
            port: ServicePortKey {
                namespace: "default".into(),
                name: "web".into(),
                port: port.to_string(),
                proto: Proto::Tcp,
            },
            node_port: false,
            affinity_timeout: None,
            external_local: false,
            maglev,
            backends: backends
                .iter()
                .map(|i| DesiredBackend {
                    key: BackendKey {
                        address: Ipv4Addr::new(10, 244, 1, *i),
                        port: 8080,
                        proto: Proto::Tcp,
                    },
                    local: true,
                    terminating: false,
                })
                .collect(),
        }
    }

    fn backends_of(s: &Syncer<Fake>, port: u16) -> Vec<u8> {
        let head = s
            .store
            .slots
            .iter()
            .find(|(k, _)| k.slot == 0 && port_from_map(k.port) == port)
            .map(|(k, v)| (*k, *v));
        let Some((k, v)) = head else {
            return Vec::new();
        };
        let mut out: Vec<u8> = (1..=v.count)
            .map(|slot| {
                let id = s.store.slots[&SvcKey { slot, ..k }].backend_id;
                addr_from_map(s.store.backends[&id].address).octets()[3]
            })
            .collect();
        out.sort_unstable();
        out
    }

    #[test]
    fn scale_down_and_up_never_exposes_a_missing_backend() {
        let mut s = Syncer::adopt(Fake::default(), Vec::new(), Vec::new());
        for step in [
            &[1u8, 2, 3][..],
            &[2],
            &[2, 4, 5],
            &[],
            &[6, 7, 8, 9],
            &[9, 1],
        ] {
            s.sync_service(svc(), vec![frontend(80, step, false)])
                .expect("sync");
            let mut want = step.to_vec();
            want.sort_unstable();
            assert_eq!(backends_of(&s, 80), want);
        }
        // Only the backends in use are left.
        assert_eq!(s.store.backends.len(), 2);
    }

    #[test]
    fn an_unchanged_service_writes_nothing() {
        let mut s = Syncer::adopt(Fake::default(), Vec::new(), Vec::new());
        let first = s
            .sync_service(svc(), vec![frontend(80, &[1, 2, 3], false)])
            .expect("sync");
        assert!(first.writes > 0);
        let again = s
            .sync_service(svc(), vec![frontend(80, &[3, 2, 1], false)])
            .expect("sync");
        assert_eq!(again.writes, 0);
        // One backend more: one backend, one slot and slot 0.
        let more = s
            .sync_service(svc(), vec![frontend(80, &[1, 2, 3, 4], false)])
            .expect("sync");
        assert_eq!(more.writes, 3);
    }

    #[test]
    fn deleting_the_service_empties_the_maps() {
        let mut s = Syncer::adopt(Fake::default(), Vec::new(), Vec::new());
        s.sync_service(
            svc(),
            vec![frontend(80, &[1, 2], false), frontend(81, &[3], true)],
        )
        .expect("sync");
        assert_eq!(s.store.maglev.len(), 1);
        s.sync_service(svc(), Vec::new()).expect("sync");
        assert!(s.store.slots.is_empty());
        assert!(s.store.backends.is_empty());
        assert!(s.store.maglev.is_empty());
        assert!(s.service_ports().is_empty());
    }

    #[test]
    fn adoption_keeps_ids_and_removes_what_no_service_wants() {
        let mut first = Syncer::adopt(Fake::default(), Vec::new(), Vec::new());
        first
            .sync_service(svc(), vec![frontend(80, &[1, 2], false)])
            .expect("sync");
        first
            .sync_service(
                ("default".into(), "old".into()),
                vec![frontend(90, &[7], false)],
            )
            .expect("sync");
        let slots: Vec<(SvcKey, SvcValue)> =
            first.store.slots.iter().map(|(k, v)| (*k, *v)).collect();
        let backends: Vec<(u32, Backend)> =
            first.store.backends.iter().map(|(k, v)| (*k, *v)).collect();
        let (pinned, leftovers) = group_slots(slots);
        assert!(leftovers.is_empty());
        let store = Fake {
            slots: first.store.slots.clone(),
            backends: first.store.backends.clone(),
            ..Default::default()
        };
        let before = first.store.slots.clone();
        let mut second = Syncer::adopt(store, pinned, backends);
        second
            .sync_all(vec![(svc(), vec![frontend(80, &[1, 2], false)])])
            .expect("sync");
        // Port 80 untouched (same ids, same slots); port 90 gone.
        let kept: BTreeMap<SvcKey, SvcValue> = before
            .into_iter()
            .filter(|(k, _)| port_from_map(k.port) == 80)
            .collect();
        assert_eq!(second.store.slots, kept);
        assert_eq!(second.store.backends.len(), 2);
    }
}
