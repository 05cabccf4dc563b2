//! The instance's maps, open, typed, with the reads and writes the plane
//! does on them: applying a plan's writes in order, rebuilding the planner's
//! state, and reading counters and the rewritten set.

use std::collections::BTreeMap;

use aya::maps::{Array, HashMap, Map, MapData, MapError};

use super::error::KernelError;
use super::maps::{
    self, AddrKey, BackendValue, ConfigValue, ConnValue, HealthValue, IdentValue, MAX_BACKENDS,
    SlotValue, StatsValue, SvcValue,
};
use super::plan::{Op, State};

pub(crate) struct Store {
    config: Array<MapData, ConfigValue>,
    services: HashMap<MapData, AddrKey, SvcValue>,
    slots: Array<MapData, SlotValue>,
    backends: Array<MapData, BackendValue>,
    health: Array<MapData, HealthValue>,
    stats: Array<MapData, StatsValue>,
    conns: HashMap<MapData, u64, ConnValue>,
    peers: HashMap<MapData, AddrKey, IdentValue>,
}

fn typed<T>(
    take: &mut impl FnMut(&'static str) -> Option<Map>,
    name: &'static str,
) -> Result<T, KernelError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let map = take(name).ok_or(KernelError::NoMap(name))?;
    T::try_from(map).map_err(KernelError::map(name, "open"))
}

impl Store {
    /// Takes the maps out of a loaded object.
    pub(crate) fn new(
        mut take: impl FnMut(&'static str) -> Option<Map>,
    ) -> Result<Store, KernelError> {
        Ok(Store {
            config: typed(&mut take, maps::CONFIG)?,
            services: typed(&mut take, maps::SERVICES)?,
            slots: typed(&mut take, maps::SLOTS)?,
            backends: typed(&mut take, maps::BACKENDS)?,
            health: typed(&mut take, maps::HEALTH)?,
            stats: typed(&mut take, maps::STATS)?,
            conns: typed(&mut take, maps::CONNS)?,
            peers: typed(&mut take, maps::PEERS)?,
        })
    }

    pub(crate) fn config(&self) -> Result<ConfigValue, KernelError> {
        self.config
            .get(&0, 0)
            .map_err(KernelError::map(maps::CONFIG, "read"))
    }

    pub(crate) fn set_config(&mut self, v: ConfigValue) -> Result<(), KernelError> {
        self.config
            .set(0, v, 0)
            .map_err(KernelError::map(maps::CONFIG, "write"))
    }

    /// Applies a plan's writes, in order.
    pub(crate) fn apply(&mut self, ops: &[Op]) -> Result<(), KernelError> {
        for op in ops {
            match op {
                Op::ResetHealth(i) => self
                    .health
                    .set(*i, HealthValue::default(), 0)
                    .map_err(KernelError::map(maps::HEALTH, "reset"))?,
                Op::ResetStats(i) => self
                    .stats
                    .set(*i, StatsValue::default(), 0)
                    .map_err(KernelError::map(maps::STATS, "reset"))?,
                Op::Backend(i, v) => self
                    .backends
                    .set(*i, v, 0)
                    .map_err(KernelError::map(maps::BACKENDS, "write"))?,
                Op::Slots { base, slots } => {
                    for (k, s) in slots.iter().enumerate() {
                        self.slots
                            .set(base + k as u32, s, 0)
                            .map_err(KernelError::map(maps::SLOTS, "write"))?;
                    }
                }
                Op::PutService(k, v) => self
                    .services
                    .insert(k, v, 0)
                    .map_err(KernelError::map(maps::SERVICES, "write"))?,
                Op::DeleteService(k) => match self.services.remove(k) {
                    Ok(()) | Err(MapError::KeyNotFound) => {}
                    Err(e) => return Err(KernelError::map(maps::SERVICES, "delete")(e)),
                },
            }
        }
        Ok(())
    }

    /// The planner's state, from the maps' contents.
    pub(crate) fn state(&self) -> Result<State, KernelError> {
        let backends = self.backends_raw()?;
        let mut services = BTreeMap::new();
        for kv in self.services.iter() {
            let (k, v) = kv.map_err(KernelError::map(maps::SERVICES, "read"))?;
            services.insert(k, v);
        }
        Ok(State::from_maps(backends, services))
    }

    pub(crate) fn backends_raw(&self) -> Result<Vec<BackendValue>, KernelError> {
        (0..MAX_BACKENDS as u32)
            .map(|i| {
                self.backends
                    .get(&i, 0)
                    .map_err(KernelError::map(maps::BACKENDS, "read"))
            })
            .collect()
    }

    pub(crate) fn backend(&self, i: u16) -> Result<BackendValue, KernelError> {
        self.backends
            .get(&u32::from(i), 0)
            .map_err(KernelError::map(maps::BACKENDS, "read"))
    }

    pub(crate) fn set_backend(&mut self, i: u16, v: BackendValue) -> Result<(), KernelError> {
        self.backends
            .set(u32::from(i), v, 0)
            .map_err(KernelError::map(maps::BACKENDS, "write"))
    }

    pub(crate) fn health(&self, i: u16) -> Result<HealthValue, KernelError> {
        self.health
            .get(&u32::from(i), 0)
            .map_err(KernelError::map(maps::HEALTH, "read"))
    }

    pub(crate) fn clear_health(&mut self, i: u16) -> Result<(), KernelError> {
        self.health
            .set(u32::from(i), HealthValue::default(), 0)
            .map_err(KernelError::map(maps::HEALTH, "write"))
    }

    pub(crate) fn stats(&self, i: u16) -> Result<StatsValue, KernelError> {
        self.stats
            .get(&u32::from(i), 0)
            .map_err(KernelError::map(maps::STATS, "read"))
    }

    /// One rewritten (or proxied, not yet connected) socket's record.
    pub(crate) fn conn(&self, cookie: u64) -> Result<Option<ConnValue>, KernelError> {
        match self.conns.get(&cookie, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(KernelError::map(maps::CONNS, "read")(e)),
        }
    }

    /// Every record of `cplb_conns`. Entries deleted during the walk may
    /// be missed or seen twice; the caller dedups by cookie.
    pub(crate) fn conns(&self) -> Result<BTreeMap<u64, ConnValue>, KernelError> {
        let mut out = BTreeMap::new();
        for kv in self.conns.iter() {
            match kv {
                Ok((k, v)) => {
                    out.insert(k, v);
                }
                // Deleted between the key walk and the lookup.
                Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(KernelError::map(maps::CONNS, "read")(e)),
            }
        }
        Ok(out)
    }

    pub(crate) fn peer(&self, key: &AddrKey) -> Result<Option<IdentValue>, KernelError> {
        match self.peers.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(KernelError::map(maps::PEERS, "read")(e)),
        }
    }
}
