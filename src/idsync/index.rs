//! The in-memory ID index: (DPID, customer ID) → the profile it lands on, for the DPIDs that
//! tonight's files use. Built once (cold), read by every parser thread (hot).
//!
//! Keys are 128-bit xxh3 hashes of (DPID, ID) (`model::id_hash`), so the table stores no key
//! strings at all; at 2^-128 per pair a collision is not a practical concern.

use super::Table;
use super::store::{decode, part_name};
use crate::model::{AAM_UUID_DPID, Dpid, Uuid, device_format, id_hash};
use ahash::AHashMap;
use rayon::prelude::*;
use std::collections::BTreeSet;

/// Longest master chain followed before giving up (a cycle, or a pathological graph).
const MAX_CHAIN: usize = 16;

/// Where a synced ID resolves to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target<'a> {
    Uuid(Uuid),
    /// The chain ended at a global device ID with no UUID mapping: the device profile.
    Device(Dpid, &'a [u8]),
}

#[derive(Default)]
pub struct IdIndex {
    uuids: AHashMap<u128, Uuid>,
    devices: AHashMap<u128, (Dpid, Box<[u8]>)>,
    dpids: BTreeSet<Dpid>,
}

/// One loaded mapping: key hash, master DPID, master ID.
type Loaded = (u128, Dpid, Vec<u8>);

/// A partition source: the payload of a state file by name, or `None` if it does not exist.
pub type PartSource<'a> = dyn Fn(&str) -> anyhow::Result<Option<Vec<u8>>> + Sync + 'a;

impl IdIndex {
    /// Loads the `adobe_id_` mappings of `dpids` (and, transitively, of the DPIDs their masters
    /// live in) and resolves every chain to its final profile.
    pub fn build(
        dpids: &BTreeSet<Dpid>,
        partitions: u32,
        source: &PartSource<'_>,
    ) -> anyhow::Result<IdIndex> {
        let mut index = IdIndex::default();
        let mut pending: AHashMap<u128, (Dpid, Box<[u8]>)> = AHashMap::new();
        let mut frontier: BTreeSet<Dpid> = dpids
            .iter()
            .copied()
            .filter(|&d| d != AAM_UUID_DPID)
            .collect();
        for _round in 0..MAX_CHAIN {
            if frontier.is_empty() {
                break;
            }
            index.dpids.extend(frontier.iter().copied());
            let names: Vec<(Dpid, String)> = frontier
                .iter()
                .flat_map(|&d| (0..partitions).map(move |p| (d, part_name(Table::Adobe, d, p))))
                .collect();
            let loaded: Vec<anyhow::Result<Vec<Loaded>>> = names
                .par_iter()
                .map(|(dpid, name)| {
                    let Some(bytes) = source(name)? else {
                        return Ok(Vec::new());
                    };
                    let records =
                        decode(&bytes).map_err(|e| anyhow::anyhow!("ID-sync table {name}: {e}"))?;
                    Ok(records
                        .iter()
                        .map(|r| (id_hash(*dpid, r.id), r.value_dpid, r.value.to_vec()))
                        .collect())
                })
                .collect();
            let mut next = BTreeSet::new();
            for part in loaded {
                for (key, value_dpid, value) in part? {
                    if value_dpid == AAM_UUID_DPID {
                        if let Some(u) = Uuid::parse(&value) {
                            index.uuids.insert(key, u);
                        }
                    } else {
                        if !index.dpids.contains(&value_dpid) {
                            next.insert(value_dpid);
                        }
                        pending.insert(key, (value_dpid, value.into_boxed_slice()));
                    }
                }
            }
            frontier = next;
        }
        // Resolve chains whose master is not an AAM UUID.
        let mut resolved_uuid = Vec::new();
        let mut resolved_device = Vec::new();
        for (&key, (dpid, id)) in &pending {
            let (mut dpid, mut id): (Dpid, &[u8]) = (*dpid, id);
            for _ in 0..MAX_CHAIN {
                let h = id_hash(dpid, id);
                if let Some(&u) = index.uuids.get(&h) {
                    resolved_uuid.push((key, u));
                    break;
                }
                match pending.get(&h) {
                    Some((d, next)) if h != key => (dpid, id) = (*d, next),
                    _ => {
                        if device_format(dpid).is_some() {
                            resolved_device.push((key, (dpid, Box::<[u8]>::from(id))));
                        }
                        break;
                    }
                }
            }
        }
        index.uuids.extend(resolved_uuid);
        index.devices.extend(resolved_device);
        Ok(index)
    }

    /// The profile `(dpid, id)` lands on, if it is synced.
    #[inline]
    pub fn lookup(&self, dpid: Dpid, id: &[u8]) -> Option<Target<'_>> {
        let h = id_hash(dpid, id);
        if let Some(&u) = self.uuids.get(&h) {
            return Some(Target::Uuid(u));
        }
        self.devices.get(&h).map(|(d, id)| Target::Device(*d, id))
    }

    /// Whether mappings of `dpid` were loaded.
    pub fn covers(&self, dpid: Dpid) -> bool {
        self.dpids.contains(&dpid)
    }

    pub fn len(&self) -> usize {
        self.uuids.len() + self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::super::store::{Incoming, Record, apply};
    use super::*;
    use std::collections::BTreeMap;

    const U1: &str = "68079982765673198504052656074456196039";

    fn build(mappings: &[(Dpid, &str, Dpid, &str)], dpids: &[Dpid]) -> IdIndex {
        let incoming: Vec<Incoming<'_>> = mappings
            .iter()
            .map(|&(kd, k, vd, v)| Incoming {
                key_dpid: kd,
                record: Record {
                    id: k.as_bytes(),
                    value_dpid: vd,
                    value: v.as_bytes(),
                    timestamp: 1,
                },
                file: 0,
            })
            .collect();
        let none = |_: &str| -> anyhow::Result<Option<Vec<u8>>> { Ok(None) };
        let parts: BTreeMap<String, Vec<u8>> =
            apply(Table::Adobe, &incoming, 4, &none).unwrap().parts;
        let source =
            move |name: &str| -> anyhow::Result<Option<Vec<u8>>> { Ok(parts.get(name).cloned()) };
        IdIndex::build(&dpids.iter().copied().collect(), 4, &source).unwrap()
    }

    #[test]
    fn direct_and_transitive_resolution() {
        // AAM-REFERENCE §3.3: 12345 → UUID, then 67890 → 12345 → UUID.
        let index = build(
            &[(12345, "XYZ", 0, U1), (67890, "4598060374", 12345, "XYZ")],
            &[67890],
        );
        let u = Uuid::parse(U1.as_bytes()).unwrap();
        assert_eq!(index.lookup(67890, b"4598060374"), Some(Target::Uuid(u)));
        assert!(
            index.covers(12345),
            "the master's DPID is loaded transitively"
        );
        assert_eq!(index.lookup(67890, b"4598060375"), None);
        // IDs are case-sensitive.
        assert_eq!(
            build(&[(21, "User123", 0, U1)], &[21]).lookup(21, b"USER123"),
            None
        );
    }

    #[test]
    fn device_master_without_uuid_is_the_device_profile() {
        let gaid = "e4fe9bde-caa0-47b6-908d-ffba3fa184f2";
        let index = build(&[(21, "c1", 20914, gaid)], &[21]);
        assert_eq!(
            index.lookup(21, b"c1"),
            Some(Target::Device(20914, gaid.as_bytes()))
        );
        let index = build(&[(21, "c1", 20914, gaid), (20914, gaid, 0, U1)], &[21]);
        assert_eq!(
            index.lookup(21, b"c1"),
            Some(Target::Uuid(Uuid::parse(U1.as_bytes()).unwrap()))
        );
    }

    #[test]
    fn cycles_end_unresolved() {
        let index = build(&[(21, "a", 22, "b"), (22, "b", 21, "a")], &[21]);
        assert_eq!(index.lookup(21, b"a"), None);
    }
}
