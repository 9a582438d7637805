//! The in-memory ID index: (DPID, customer ID) → the profile it lands on, for the DPIDs that
//! tonight's files use. Built once (cold), read by every parser thread (hot).
//!
//! Keys are 128-bit xxh3 hashes of (DPID, ID) (`model::id_hash`), so the table stores no key
//! strings at all; at 2^-128 per pair a collision is not a practical concern.
//!
//! Layout: one flat open-addressing table (linear probing, 32-byte slots of hash and UUID) per
//! (DPID, state partition). A key's state partition comes from the high half of its hash
//! ([`part_of_hash`]), its home slot from the low half, so each table is built from exactly one
//! partition file, all of them in parallel, and a lookup costs one hash and usually one cache
//! line. [`IdIndex::prefetch`] lets the parser issue the loads of a batch of lines before it
//! needs them. IDs whose chain ends somewhere other than an AAM UUID (rare) live in small maps
//! beside the tables.

use super::Table;
use super::store::{Record, Value, for_each_at, part_name, part_of_hash};
use crate::anon_table::AnonTable;
use crate::blocks::BlockIndex;
use crate::model::{AAM_UUID_DPID, Dpid, Uuid, device_format, id_hash};
use ahash::AHashMap;
use rayon::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

/// Longest master chain followed before giving up (a cycle, or a pathological graph).
const MAX_CHAIN: usize = 16;

/// Tables are sized for at most 7 keys in 10 slots: short probe runs, ~46 bytes per key.
const LOAD_NUM: usize = 7;
const LOAD_DEN: usize = 10;

/// Where a synced ID resolves to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target<'a> {
    Uuid(Uuid),
    /// The chain ended at a global device ID with no UUID mapping: the device profile.
    Device(Dpid, &'a [u8]),
}

/// One slot: the key's hash (0 = empty) and the UUID it maps to; aligned so a slot never
/// straddles two cache lines.
#[derive(Clone, Copy, Default)]
#[repr(C, align(32))]
struct Slot {
    hash: u128,
    uuid: u128,
}

/// The open-addressing table of one (DPID, partition), in its own mapping advised for huge
/// pages ([`AnonTable::filled`]).
#[derive(Default)]
struct Shard {
    table: AnonTable<Slot>,
}

// SAFETY: two integers, `repr(C)`, no padding, 32-byte aligned: any bit pattern is a value.
#[allow(unsafe_code)]
unsafe impl crate::anon_table::Plain for Slot {}

/// A hash as stored: 0 marks an empty slot, so the (2^-128) hash 0 is stored as 1.
#[inline]
fn stored(hash: u128) -> u128 {
    hash.max(1)
}

impl Shard {
    fn build(keys: &[Slot]) -> std::io::Result<Shard> {
        if keys.is_empty() {
            return Ok(Shard::default());
        }
        let mut table = AnonTable::filled(keys.len() * LOAD_DEN / LOAD_NUM + 1)?;
        fill(table.slots_mut(), keys);
        Ok(Shard { table })
    }

    fn slots(&self) -> &[Slot] {
        self.table.slots()
    }

    #[inline]
    fn get(&self, hash: u128) -> Option<Uuid> {
        let slots = self.slots();
        let len = slots.len();
        if len == 0 {
            return None;
        }
        let mut i = home(hash, len);
        loop {
            let slot = slots[i];
            if slot.hash == hash {
                return Some(Uuid(slot.uuid));
            }
            if slot.hash == 0 {
                return None;
            }
            i = if i + 1 == len { 0 } else { i + 1 };
        }
    }
}

/// Inserts `keys` into an empty table (all slots zero).
fn fill(slots: &mut [Slot], keys: &[Slot]) {
    let len = slots.len();
    for key in keys {
        let mut i = home(key.hash, len);
        loop {
            let slot = &mut slots[i];
            if slot.hash == 0 || slot.hash == key.hash {
                // A repeated key (the store has one record per ID) keeps its last value.
                *slot = *key;
                break;
            }
            i = if i + 1 == len { 0 } else { i + 1 };
        }
    }
}

/// The home slot of a hash in a table of `len` slots: the low 64 bits, multiply-shifted (the
/// high 64 bits chose the partition).
#[inline]
fn home(hash: u128, len: usize) -> usize {
    ((u128::from(hash as u64) * len as u128) >> 64) as usize
}

#[derive(Default)]
pub struct IdIndex {
    /// Loaded DPIDs, sorted; `shards[d * partitions + p]` is DPID `dpids[d]`'s partition `p`.
    dpids: Vec<Dpid>,
    partitions: u32,
    shards: Vec<Shard>,
    /// Keys whose master is not an AAM UUID but whose chain ends at one.
    chained: AHashMap<u128, Uuid>,
    devices: AHashMap<u128, (Dpid, Box<[u8]>)>,
}

/// A partition source: the payload of a state file by name, or `None` if it does not exist.
/// Payloads already in memory (tonight's ID-sync partitions) are lent, not copied.
pub type PartSource<'a> = dyn Fn(&str) -> anyhow::Result<Option<PartBytes<'a>>> + Sync + 'a;

/// A partition's payload from a [`PartSource`]: lent, owned, or mapped from the state (then
/// let go of behind the one pass that reads it).
pub enum PartBytes<'a> {
    Borrowed(&'a [u8]),
    Owned(Vec<u8>),
    Mapped(crate::state::MappedPayload),
}

impl PartBytes<'_> {
    /// See [`MappedPayload::release_before`](crate::state::MappedPayload::release_before);
    /// nothing for bytes in memory.
    fn release_before(&self, offset: usize) {
        if let PartBytes::Mapped(m) = self {
            m.release_before(offset);
        }
    }
}

impl std::ops::Deref for PartBytes<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            PartBytes::Borrowed(b) => b,
            PartBytes::Owned(v) => v,
            PartBytes::Mapped(m) => m.bytes(),
        }
    }
}

/// A partition of the state mapped without a pass over all of it, with its block index
/// ([`crate::blocks`]): what a small night's lookups read a block at a time. `None` for a
/// partition without an index (or written tonight), read whole through the [`PartSource`].
pub type IndexedSource<'a> =
    dyn Fn(&str) -> anyhow::Result<Option<(PartBytes<'a>, Vec<u8>)>> + Sync + 'a;

/// The keys a small night looks up ([`IdIndex::build_wanted`]): by hash, to keep just those,
/// and as IDs by (DPID, partition), to find the blocks of an indexed partition they are in.
#[derive(Default)]
pub struct Wanted {
    hashes: ahash::AHashSet<u128>,
    ids: BTreeMap<(Dpid, u32), Vec<Box<[u8]>>>,
}

impl Wanted {
    /// Adds `id` of `dpid`, a state of `partitions` partitions.
    pub fn insert(&mut self, dpid: Dpid, id: &[u8], partitions: u32) {
        let hash = id_hash(dpid, id);
        if self.hashes.insert(stored(hash)) {
            self.ids
                .entry((dpid, part_of_hash(hash, partitions)))
                .or_default()
                .push(id.into());
        }
    }

    fn contains(&self, hash: u128) -> bool {
        self.hashes.contains(&hash)
    }

    /// The blocks of `index` that the IDs wanted in partition `part` of `dpid` fall in, in
    /// order.
    fn blocks(&self, dpid: Dpid, part: u32, index: &BlockIndex<'_>) -> Vec<usize> {
        if index.blocks.is_empty() {
            return Vec::new();
        }
        let mut blocks: Vec<usize> = self
            .ids
            .get(&(dpid, part))
            .into_iter()
            .flatten()
            .map(|id| index.block_of(id))
            .collect();
        blocks.sort_unstable();
        blocks.dedup();
        blocks
    }
}

/// A mapping whose master is not an AAM UUID: (key hash, master DPID, master ID).
type Other = (u128, Dpid, Box<[u8]>);

/// What one partition file yields: its UUID-mapped keys and its other mappings.
type Loaded = (Vec<Slot>, Vec<Other>);

impl IdIndex {
    /// Loads the `adobe_id_` mappings of `dpids` (and, transitively, of the DPIDs their masters
    /// live in) and resolves every chain to its final profile.
    pub fn build(
        dpids: &BTreeSet<Dpid>,
        partitions: u32,
        source: &PartSource<'_>,
    ) -> anyhow::Result<IdIndex> {
        IdIndex::build_parts(dpids, partitions, None, source)
    }

    /// [`build`](Self::build) restricted to the ID-sync partitions `only` of `dpids` (all when
    /// `None`): what the resolve stage of one partition group needs. A chain whose master lives
    /// in another partition loads just that master's partition, so lookups of keys in `only`
    /// answer exactly as in a full index; keys in other partitions are not found.
    pub fn build_parts(
        dpids: &BTreeSet<Dpid>,
        partitions: u32,
        only: Option<&BTreeSet<u32>>,
        source: &PartSource<'_>,
    ) -> anyhow::Result<IdIndex> {
        IdIndex::build_wanted(dpids, partitions, only, None, source, None)
    }

    /// [`build_parts`](Self::build_parts) for lookups of just the keys `wanted` in the
    /// partitions `only` of `dpids`: a small night's
    /// deferred lookups. Those partitions' tables hold only the wanted keys, so building them
    /// costs a pass over the partition and no table of every key. A partition a chain's master
    /// lives in is loaded whole, as in [`build_parts`](Self::build_parts), so every wanted key
    /// answers as in a full index; other keys of those partitions are not found. A partition
    /// that `indexed` gives with its block index is read only in the blocks the wanted IDs
    /// fall in, each checked against the index first: the lookups cost about their own
    /// number, not the size of the table.
    pub fn build_wanted(
        dpids: &BTreeSet<Dpid>,
        partitions: u32,
        only: Option<&BTreeSet<u32>>,
        wanted: Option<&Wanted>,
        source: &PartSource<'_>,
        indexed: Option<&IndexedSource<'_>>,
    ) -> anyhow::Result<IdIndex> {
        let mut tables: BTreeMap<Dpid, Vec<Shard>> = BTreeMap::new();
        let mut pending: AHashMap<u128, (Dpid, Box<[u8]>)> = AHashMap::new();
        let mut loaded: BTreeSet<(Dpid, u32)> = BTreeSet::new();
        let mut frontier: BTreeSet<(Dpid, u32)> = dpids
            .iter()
            .copied()
            .filter(|&d| d != AAM_UUID_DPID)
            .flat_map(|d| {
                (0..partitions)
                    .filter(|p| only.is_none_or(|o| o.contains(p)))
                    .map(move |p| (d, p))
            })
            .collect();
        for &(d, _) in &frontier {
            tables.entry(d).or_default();
        }
        for round in 0..MAX_CHAIN {
            if frontier.is_empty() {
                break;
            }
            // The first round's partitions hold only the wanted keys: they do not count as
            // loaded, so a chain's master in one of them loads it whole in a later round.
            let filter = wanted.filter(|_| round == 0);
            if filter.is_none() {
                loaded.extend(frontier.iter().copied());
            }
            let parts: Vec<(Dpid, u32)> = frontier.iter().copied().collect();
            let results: Vec<anyhow::Result<(Shard, Vec<Other>)>> = parts
                .par_iter()
                .map(|&(dpid, p)| {
                    let name = part_name(Table::Adobe, dpid, p);
                    let by_blocks = match (filter, indexed) {
                        (Some(w), Some(indexed)) => indexed(&name)?.map(|part| (w, part)),
                        _ => None,
                    };
                    let (keys, others) = match by_blocks {
                        Some((w, (bytes, index))) => load_blocks(dpid, p, &bytes, &index, w)
                            .map_err(|e| anyhow::anyhow!("ID-sync table {name}: {e}"))?,
                        None => {
                            let Some(bytes) = source(&name)? else {
                                return Ok((Shard::default(), Vec::new()));
                            };
                            load_part(dpid, &bytes, filter)
                                .map_err(|e| anyhow::anyhow!("ID-sync table {name}: {e}"))?
                        }
                    };
                    let shard = Shard::build(&keys).map_err(|e| {
                        anyhow::anyhow!("ID-sync table {name}: cannot map its index table: {e}")
                    })?;
                    Ok((shard, others))
                })
                .collect();
            let mut next = BTreeSet::new();
            for (&(dpid, p), result) in parts.iter().zip(results) {
                let (shard, others) = result?;
                let shards = tables.entry(dpid).or_default();
                if shards.is_empty() {
                    shards.resize_with(partitions as usize, Shard::default);
                }
                shards[p as usize] = shard;
                for (key, value_dpid, value) in others {
                    // The master's own mapping, if any, is in its partition of its DPID.
                    let at = (
                        value_dpid,
                        part_of_hash(id_hash(value_dpid, &value), partitions),
                    );
                    if !loaded.contains(&at) {
                        next.insert(at);
                    }
                    pending.insert(key, (value_dpid, value));
                }
            }
            frontier = next;
        }
        let tables: Vec<(Dpid, Vec<Shard>)> = tables
            .into_iter()
            .map(|(d, mut shards)| {
                shards.resize_with(partitions as usize, Shard::default);
                (d, shards)
            })
            .collect();
        let mut index = IdIndex {
            dpids: tables.iter().map(|(d, _)| *d).collect(),
            partitions,
            shards: tables.into_iter().flat_map(|(_, s)| s).collect(),
            chained: AHashMap::new(),
            devices: AHashMap::new(),
        };
        // Resolve chains whose master is not an AAM UUID.
        let mut chained = AHashMap::new();
        let mut devices = AHashMap::new();
        for (&key, (dpid, id)) in &pending {
            let (mut dpid, mut id): (Dpid, &[u8]) = (*dpid, id);
            for _ in 0..MAX_CHAIN {
                let h = stored(id_hash(dpid, id));
                if let Some(u) = index.table_get(dpid, h) {
                    chained.insert(key, u);
                    break;
                }
                match pending.get(&h) {
                    Some((d, next)) if h != key => (dpid, id) = (*d, next),
                    _ => {
                        if device_format(dpid).is_some() {
                            devices.insert(key, (dpid, Box::<[u8]>::from(id)));
                        }
                        break;
                    }
                }
            }
        }
        index.chained = chained;
        index.devices = devices;
        Ok(index)
    }

    /// The table lookup alone (keys whose master is an AAM UUID), by stored hash.
    #[inline]
    fn table_get(&self, dpid: Dpid, hash: u128) -> Option<Uuid> {
        self.shard(dpid, hash)?.get(hash)
    }

    #[inline]
    fn shard(&self, dpid: Dpid, hash: u128) -> Option<&Shard> {
        // A night uses a handful of DPIDs: a linear scan beats anything cleverer.
        let d = self.dpids.iter().position(|&x| x == dpid)?;
        let p = part_of_hash(hash, self.partitions) as usize;
        self.shards.get(d * self.partitions as usize + p)
    }

    /// The hash [`lookup_hashed`](Self::lookup_hashed) and [`prefetch`](Self::prefetch) take.
    #[inline]
    pub fn hash(dpid: Dpid, id: &[u8]) -> u128 {
        id_hash(dpid, id)
    }

    /// Starts loading the cache line a lookup of `hash` will read first. A hint only.
    #[inline]
    pub fn prefetch(&self, dpid: Dpid, hash: u128) {
        if let Some(shard) = self.shard(dpid, hash)
            && !shard.slots().is_empty()
        {
            let slots = shard.slots();
            prefetch_read(&slots[home(stored(hash), slots.len())]);
        }
    }

    /// The profile `(dpid, id)` lands on, if it is synced.
    #[inline]
    pub fn lookup(&self, dpid: Dpid, id: &[u8]) -> Option<Target<'_>> {
        self.lookup_hashed(dpid, id_hash(dpid, id))
    }

    /// [`lookup`](Self::lookup) with the key's [`hash`](Self::hash) already computed.
    #[inline]
    pub fn lookup_hashed(&self, dpid: Dpid, hash: u128) -> Option<Target<'_>> {
        let hash = stored(hash);
        if let Some(u) = self.table_get(dpid, hash) {
            return Some(Target::Uuid(u));
        }
        if self.chained.is_empty() && self.devices.is_empty() {
            return None;
        }
        if let Some(&u) = self.chained.get(&hash) {
            return Some(Target::Uuid(u));
        }
        self.devices
            .get(&hash)
            .map(|(d, id)| Target::Device(*d, id))
    }

    /// Whether mappings of `dpid` were loaded.
    pub fn covers(&self, dpid: Dpid) -> bool {
        self.dpids.contains(&dpid)
    }

    /// Keys that resolve to a profile.
    pub fn len(&self) -> usize {
        let in_tables: usize = self
            .shards
            .iter()
            .map(|s| s.slots().iter().filter(|x| x.hash != 0).count())
            .sum();
        in_tables + self.chained.len() + self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Splits one partition file of `dpid` into UUID-mapped keys and other mappings.
fn load_part(
    dpid: Dpid,
    part: &PartBytes<'_>,
    wanted: Option<&Wanted>,
) -> Result<Loaded, crate::codec::Truncated> {
    let bytes: &[u8] = part;
    // ~80 bytes per record: reserve once instead of growing.
    let mut loaded: Loaded = (
        Vec::with_capacity(if wanted.is_some() {
            0
        } else {
            bytes.len() / 72 + 1
        }),
        Vec::new(),
    );
    let mut release_at = RELEASE_EVERY;
    for_each_at(bytes, |r, end| {
        if end >= release_at {
            part.release_before(end);
            release_at = end + RELEASE_EVERY;
        }
        take_record(dpid, &r, wanted, &mut loaded);
    })?;
    Ok(loaded)
}

/// [`load_part`] of just the blocks of partition `part` of `dpid` that the `wanted` IDs fall
/// in, by its block `index`, each checked against the index before it is read.
fn load_blocks(
    dpid: Dpid,
    part: u32,
    bytes: &PartBytes<'_>,
    index: &[u8],
    wanted: &Wanted,
) -> anyhow::Result<Loaded> {
    let index = BlockIndex::decode(index).map_err(|e| anyhow::anyhow!("its block index: {e}"))?;
    if index.base_len != bytes.len() {
        anyhow::bail!(
            "its block index is of a partition of {} bytes, but it has {}",
            index.base_len,
            bytes.len()
        );
    }
    let mut loaded: Loaded = (Vec::new(), Vec::new());
    let mut release_at = RELEASE_EVERY;
    for b in wanted.blocks(dpid, part, &index) {
        let block = &index.blocks[b];
        let data = block.checked(bytes).map_err(|at| {
            anyhow::anyhow!(
                "the block at byte {at} does not match its checksum in the partition's index \
                 (edited or damaged)"
            )
        })?;
        for_each_at(data, |r, _| {
            take_record(dpid, &r, Some(wanted), &mut loaded)
        })
        .map_err(|e| anyhow::anyhow!("{e} (in the block at byte {})", block.start))?;
        // The pages read, and those the kernel mapped around them, go every megabyte: a
        // night's blocks are scattered over the whole partition.
        let end = block.start + block.len;
        if end >= release_at {
            bytes.release_before(end);
            release_at = end + RELEASE_EVERY;
        }
    }
    Ok(loaded)
}

/// Takes record `r` of a partition of `dpid` into `loaded`: a UUID-mapped key (if `wanted`),
/// or a mapping to another master.
fn take_record(dpid: Dpid, r: &Record<'_>, wanted: Option<&Wanted>, loaded: &mut Loaded) {
    let hash = stored(id_hash(dpid, r.id));
    match r.value {
        Value::Uuid(u) if wanted.is_none_or(|w| w.contains(hash)) => {
            loaded.0.push(Slot { hash, uuid: u.0 })
        }
        Value::Uuid(_) => {}
        // Not a UUID: a master ID in another data source (text in the UUID space never
        // resolves).
        Value::Id(text) if r.value_dpid != AAM_UUID_DPID => {
            loaded.1.push((hash, r.value_dpid, Box::<[u8]>::from(text)));
        }
        Value::Id(_) => {}
    }
}

/// How often [`load_part`] lets go of a mapped partition's pages behind it.
const RELEASE_EVERY: usize = 1 << 20;

/// Asks the CPU to start loading `value`'s cache line: for loops that know which scattered
/// items they will touch a few steps ahead.
#[cfg(target_arch = "x86_64")]
#[inline]
#[allow(unsafe_code)]
pub(crate) fn prefetch_read<T: ?Sized>(value: &T) {
    use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
    // SAFETY: a prefetch is a hint: it never faults and has no effect on memory, and the
    // pointer comes from a live reference.
    unsafe { _mm_prefetch::<_MM_HINT_T0>((value as *const T).cast::<i8>()) }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
pub(crate) fn prefetch_read<T: ?Sized>(_value: &T) {}

#[cfg(test)]
mod tests {
    use super::super::store::{Incoming, Record, apply};
    use super::*;

    const U1: &str = "68079982765673198504052656074456196039";

    fn build(mappings: &[(Dpid, &str, Dpid, &str)], dpids: &[Dpid]) -> IdIndex {
        build_only(mappings, dpids, None)
    }

    fn build_only(
        mappings: &[(Dpid, &str, Dpid, &str)],
        dpids: &[Dpid],
        only: Option<&BTreeSet<u32>>,
    ) -> IdIndex {
        build_wanted(mappings, dpids, only, None, false)
    }

    /// The index of `dpids` over a state of `mappings`, of the `wanted` keys only if given,
    /// reading their partitions a block at a time (`by_blocks`) or whole.
    fn build_wanted(
        mappings: &[(Dpid, &str, Dpid, &str)],
        dpids: &[Dpid],
        only: Option<&BTreeSet<u32>>,
        wanted: Option<&Wanted>,
        by_blocks: bool,
    ) -> IdIndex {
        let incoming: Vec<Incoming<'_>> = mappings
            .iter()
            .map(|&(kd, k, vd, v)| Incoming {
                key_dpid: kd,
                record: Record {
                    id: k.as_bytes(),
                    value_dpid: vd,
                    value: super::super::store::Value::of(vd, v.as_bytes()),
                    timestamp: 1,
                },
                file: 0,
            })
            .collect();
        let none = |_: &str| -> anyhow::Result<Option<Vec<u8>>> { Ok(None) };
        let applied = apply(Table::Adobe, &incoming, 4, &none).unwrap();
        let (parts, indexes) = (applied.parts, applied.indexes);
        let source = |name: &str| -> anyhow::Result<Option<PartBytes<'_>>> {
            Ok(parts.get(name).map(|b| PartBytes::Borrowed(b.as_slice())))
        };
        let indexed: &IndexedSource<'_> = &|name: &str| {
            let index = indexes.get(&(name.to_string() + crate::state::INDEX_SUFFIX));
            Ok(parts
                .get(name)
                .zip(index)
                .map(|(b, index)| (PartBytes::Borrowed(b.as_slice()), index.clone())))
        };
        let dpids = dpids.iter().copied().collect();
        IdIndex::build_wanted(
            &dpids,
            4,
            only,
            wanted,
            &source,
            by_blocks.then_some(indexed),
        )
        .unwrap()
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
    fn every_key_of_a_large_table_is_found_and_no_other() {
        // Enough keys per partition for long probe runs and wrap-arounds in every table.
        let uuid = |i: u64| format!("{:038}", u128::from(i) * 7_919 + 11);
        let ids: Vec<String> = (0..20_000u64).map(|i| format!("cust-{i:x}")).collect();
        let uuids: Vec<String> = (0..20_000u64).map(uuid).collect();
        let mappings: Vec<(Dpid, &str, Dpid, &str)> = ids
            .iter()
            .zip(&uuids)
            .map(|(id, u)| (21, id.as_str(), 0, u.as_str()))
            .collect();
        let index = build(&mappings, &[21]);
        assert_eq!(index.len(), ids.len());
        for (id, u) in ids.iter().zip(&uuids) {
            let want = Uuid::parse(u.as_bytes()).unwrap();
            assert_eq!(
                index.lookup(21, id.as_bytes()),
                Some(Target::Uuid(want)),
                "{id}"
            );
            let h = IdIndex::hash(21, id.as_bytes());
            index.prefetch(21, h);
            assert_eq!(index.lookup_hashed(21, h), Some(Target::Uuid(want)));
        }
        for i in 20_000..40_000u64 {
            assert_eq!(index.lookup(21, format!("cust-{i:x}").as_bytes()), None);
        }
        // Same ID, other DPID: not loaded, not found.
        assert_eq!(index.lookup(22, ids[0].as_bytes()), None);
    }

    /// `n` customer IDs `c-i`, master IDs `m-i` and distinct UUIDs, for chains.
    fn chain_ids(n: u64) -> (Vec<String>, Vec<String>, Vec<String>) {
        (0..n)
            .map(|i| {
                let uuid = format!("{:038}", u128::from(i) * 7_919 + 11);
                (format!("c-{i}"), format!("m-{i}"), uuid)
            })
            .collect()
    }

    #[test]
    fn a_partition_group_answers_its_keys_like_the_full_index() {
        // Chains from DPID 21 through 22 (other partitions, another DPID) to UUIDs and devices.
        let gaid = "e4fe9bde-caa0-47b6-908d-ffba3fa184f2";
        let (ids, mids, uuids) = chain_ids(400);
        let mut mappings: Vec<(Dpid, &str, Dpid, &str)> = Vec::new();
        for i in 0..400 {
            match i % 3 {
                0 => mappings.push((21, &ids[i], 0, &uuids[i])),
                1 => {
                    mappings.push((21, &ids[i], 22, &mids[i]));
                    mappings.push((22, &mids[i], 0, &uuids[i]));
                }
                _ => mappings.push((21, &ids[i], 20914, gaid)),
            }
        }
        let full = build(&mappings, &[21]);
        let mut answered = 0;
        for group in [[0u32, 1], [2, 3]] {
            let only: BTreeSet<u32> = group.into_iter().collect();
            let part = build_only(&mappings, &[21], Some(&only));
            for id in ids.iter().chain(&mids) {
                let p = part_of_hash(IdIndex::hash(21, id.as_bytes()), 4);
                let got = part.lookup(21, id.as_bytes());
                if only.contains(&p) {
                    assert_eq!(got, full.lookup(21, id.as_bytes()), "{id}");
                    answered += usize::from(got.is_some());
                } else {
                    assert_eq!(got, None, "{id} is in partition {p}, not loaded");
                }
            }
        }
        assert_eq!(
            answered, 400,
            "every synced ID answered by exactly one group"
        );
    }

    /// A table of one partition: customer IDs `ids` of DPID 21 synced to `uuids`.
    fn synced(ids: &[String], uuids: &[String]) -> super::super::store::Applied {
        let incoming: Vec<Incoming<'_>> = ids
            .iter()
            .zip(uuids)
            .map(|(id, u)| Incoming {
                key_dpid: 21,
                record: Record {
                    id: id.as_bytes(),
                    value_dpid: 0,
                    value: super::super::store::Value::of(0, u.as_bytes()),
                    timestamp: 1,
                },
                file: 0,
            })
            .collect();
        let none = |_: &str| -> anyhow::Result<Option<Vec<u8>>> { Ok(None) };
        apply(Table::Adobe, &incoming, 1, &none).unwrap()
    }

    #[test]
    fn a_mapped_partition_let_go_of_behind_the_read_loads_like_one_in_memory() {
        // One partition of some 3 MB: several release steps.
        let ids: Vec<String> = (0..60_000).map(|i| format!("customer-{i:08}")).collect();
        let uuids: Vec<String> = (0..60_000u128)
            .map(|i| format!("{:038}", i * 7_919 + 11))
            .collect();
        let parts = synced(&ids, &uuids).parts;
        let tmp = tempfile::tempdir().unwrap();
        let state = crate::state::StateDir::open(tmp.path()).unwrap();
        let wtr = state.begin(None).unwrap();
        for (name, payload) in &parts {
            assert!(payload.len() > 2 * RELEASE_EVERY, "{}", payload.len());
            wtr.write(name, payload).unwrap();
        }
        let generation = wtr.commit(serde_json::json!(null), 1).unwrap();
        let mapped = |name: &str| -> anyhow::Result<Option<PartBytes<'_>>> {
            Ok(generation.map(name)?.map(PartBytes::Mapped))
        };
        let lent = |name: &str| -> anyhow::Result<Option<PartBytes<'_>>> {
            Ok(parts.get(name).map(|b| PartBytes::Borrowed(b.as_slice())))
        };
        let mut wanted = Wanted::default();
        for id in ids.iter().step_by(3) {
            wanted.insert(21, id.as_bytes(), 1);
        }
        let dpids = BTreeSet::from([21]);
        for wanted in [None, Some(&wanted)] {
            let a = IdIndex::build_wanted(&dpids, 1, None, wanted, &mapped, None).unwrap();
            let b = IdIndex::build_wanted(&dpids, 1, None, wanted, &lent, None).unwrap();
            for (i, id) in ids.iter().enumerate() {
                let got = a.lookup(21, id.as_bytes());
                assert_eq!(got, b.lookup(21, id.as_bytes()), "{id}");
                assert_eq!(got.is_some(), wanted.is_none() || i % 3 == 0, "{id}");
            }
        }
    }

    #[test]
    fn an_index_of_wanted_keys_answers_them_like_the_full_index() {
        // Chains within DPID 21 (whose partitions hold only wanted keys at first) and through
        // DPID 22, to UUIDs; half the customer IDs are wanted.
        let (ids, mids, uuids) = chain_ids(300);
        let mut mappings: Vec<(Dpid, &str, Dpid, &str)> = Vec::new();
        for i in 0..300 {
            match i % 3 {
                0 => mappings.push((21, &ids[i], 0, &uuids[i])),
                1 => {
                    mappings.push((21, &ids[i], 21, &mids[i]));
                    mappings.push((21, &mids[i], 0, &uuids[i]));
                }
                _ => {
                    mappings.push((21, &ids[i], 22, &mids[i]));
                    mappings.push((22, &mids[i], 0, &uuids[i]));
                }
            }
        }
        let full = build(&mappings, &[21]);
        let mut answered = 0;
        for group in [[0u32, 1], [2, 3]] {
            let only: BTreeSet<u32> = group.into_iter().collect();
            let in_group: Vec<&String> = ids
                .iter()
                .step_by(2)
                .filter(|id| only.contains(&part_of_hash(IdIndex::hash(21, id.as_bytes()), 4)))
                .collect();
            let mut wanted = Wanted::default();
            for id in &in_group {
                wanted.insert(21, id.as_bytes(), 4);
            }
            let whole = build_wanted(&mappings, &[21], Some(&only), Some(&wanted), false);
            let blocks = build_wanted(&mappings, &[21], Some(&only), Some(&wanted), true);
            for id in in_group {
                let got = whole.lookup(21, id.as_bytes());
                assert_eq!(got, full.lookup(21, id.as_bytes()), "{id}");
                assert_eq!(blocks.lookup(21, id.as_bytes()), got, "{id}");
                assert!(got.is_some(), "{id}");
                answered += 1;
            }
        }
        assert_eq!(
            answered, 150,
            "every wanted ID answered by exactly one group"
        );
    }

    #[test]
    fn lookups_by_block_read_only_the_blocks_of_their_ids() {
        let (ids, _, uuids) = chain_ids(2000);
        let applied = synced(&ids, &uuids);
        let name = part_name(Table::Adobe, 21, 0);
        let index_bytes = &applied.indexes[&(name.clone() + crate::state::INDEX_SUFFIX)];
        let index = BlockIndex::decode(index_bytes).unwrap();
        assert!(index.blocks.len() > 100, "{}", index.blocks.len());
        let looked_up = [7usize, 1234, 1999];
        let mut wanted = Wanted::default();
        for &i in &looked_up {
            wanted.insert(21, ids[i].as_bytes(), 1);
        }
        let theirs = wanted.blocks(21, 0, &index);
        let lookups = |payload: &[u8]| {
            let source = |_: &str| -> anyhow::Result<Option<PartBytes<'_>>> { Ok(None) };
            let indexed: &IndexedSource<'_> =
                &|_: &str| Ok(Some((PartBytes::Borrowed(payload), index_bytes.clone())));
            let dpids = BTreeSet::from([21]);
            IdIndex::build_wanted(&dpids, 1, None, Some(&wanted), &source, Some(indexed))
                .map(|ix| looked_up.map(|i| format!("{:?}", ix.lookup(21, ids[i].as_bytes()))))
        };
        let clean = lookups(&applied.parts[&name]).unwrap();
        for (&i, got) in looked_up.iter().zip(&clean) {
            let expected = Some(Target::Uuid(Uuid::parse(uuids[i].as_bytes()).unwrap()));
            assert_eq!(*got, format!("{expected:?}"), "{}", ids[i]);
        }
        // Every other block damaged: not read.
        let mut damaged = applied.parts[&name].clone();
        for (b, block) in index.blocks.iter().enumerate() {
            if !theirs.contains(&b) {
                damaged[block.start] ^= 0xff;
            }
        }
        assert_eq!(lookups(&damaged).unwrap(), clean);
        // One of theirs damaged: an error that says where.
        let mut bad = applied.parts[&name].clone();
        let at = index.blocks[theirs[1]].start;
        bad[at + 1] ^= 1;
        let err = format!("{:#}", lookups(&bad).unwrap_err());
        assert!(err.contains(&format!("the block at byte {at} ")), "{err}");
    }

    #[test]
    fn cycles_end_unresolved() {
        let index = build(&[(21, "a", 22, "b"), (22, "b", 21, "a")], &[21]);
        assert_eq!(index.lookup(21, b"a"), None);
    }
}
