//! The hot path: one pure function turns a chunk of a trait file into receipt tallies and
//! profile ops bucketed by partition ([`process_chunk`]); the chunks' outputs then go, in chunk
//! order, through the 200-lines-per-user cap ([`cap::Cap`]) into the night's op spool
//! ([`spool::Spool`]), which holds them per partition within a memory budget.
//!
//! Nothing here depends on the thread count: the run module calls [`process_chunk`] on every
//! chunk in parallel and feeds the outputs to the cap and the spool in chunk order. Only the
//! spool does I/O (its spill files).

pub mod cap;
pub mod spool;

use crate::idsync::index::{IdIndex, Target};
use crate::model::{DeviceFormat, Dpid, TraitId, Uuid, id_hash, partition_of};
use crate::parse::{Item, LineKind, items, lines, parse_line};
use crate::rules::trait_rule::{Scratch, TraitRules};
use smallvec::SmallVec;

/// How a file's ID column is validated and resolved (CONTRACT §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdKind {
    /// DPID 0, or a data source with `id_type = "aam_uuid"`: 38 digits, the profile itself.
    AamUuid,
    /// A global device DPID: that format, the device profile itself.
    Device(Dpid, DeviceFormat),
    /// A customer ID looked up under (DPID, ID); kept on its own profile when unmapped and the
    /// data source is cross-device.
    Customer { dpid: Dpid, cross_device: bool },
    /// ODC files: the first column names the device type of each line.
    Odc,
}

/// Read-only context of one trait file.
pub struct FileCtx<'a> {
    /// Index of the file in the run's application order.
    pub file: u32,
    /// The data source the traits are onboarded to (OWNER, else DPID).
    pub target_ds: Dpid,
    pub overwrite: bool,
    pub id_kind: IdKind,
    /// Trait → owning data source.
    pub trait_owner: &'a crate::catalog::TraitOwners,
    /// Rule-based qualification of key-value and `ic` signals.
    pub rules: &'a TraitRules,
    /// The ID index customer IDs are looked up in. `None` defers the lookups to the resolve
    /// stage (`segmill map`): such lines' ops go to [`ChunkOut::pending`] instead, keyed by
    /// [`pending_key`] and bucketed by ID-sync partition.
    pub index: Option<&'a IdIndex>,
    pub partitions: u32,
}

/// Position of a line in the whole run: file index in the high bits, line number below.
pub fn seq(file: u32, line: u64) -> u64 {
    (u64::from(file) << 40) | (line & ((1 << 40) - 1))
}

pub fn seq_file(seq: u64) -> u32 {
    (seq >> 40) as u32
}

pub fn seq_line(seq: u64) -> u64 {
    seq & ((1 << 40) - 1)
}

/// What an item does to a trait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActKind {
    Realize,
    Remove,
    /// The item satisfied part of a rule whose trait another item of the line realizes: it
    /// is a used signal but changes nothing itself.
    Touch,
}

/// One trait instruction of a line, from item number `item` (`NO_ITEM` for a rule that
/// qualified without any item of its own, e.g. `NOT key == "v"`). A line's acts are sorted by
/// item: that is the order `.sync` instructions apply in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Act {
    pub item: u32,
    pub trait_id: TraitId,
    pub kind: ActKind,
}

pub use crate::rules::trait_rule::NO_ITEM;

/// A line that reached trait mapping: its profile, its instructions and its item counts.
#[derive(Clone, Copy, Debug)]
pub struct Op {
    pub seq: u64,
    key: (u32, u32),
    acts: (u32, u32),
    /// Non-empty items on the line (the line's signals).
    pub items: u32,
    pub malformed: u32,
    /// `d_sid`/`d_unsid` of traits owned by another data source.
    pub failed: u32,
}

/// The ops of one chunk that fall into one partition.
#[derive(Default)]
pub struct OpBuf {
    keys: Vec<u8>,
    pub ops: Vec<Op>,
    acts: Vec<Act>,
}

impl OpBuf {
    pub fn key(&self, op: &Op) -> &[u8] {
        &self.keys[op.key.0 as usize..(op.key.0 + op.key.1) as usize]
    }

    pub fn acts(&self, op: &Op) -> &[Act] {
        &self.acts[op.acts.0 as usize..(op.acts.0 + op.acts.1) as usize]
    }

    /// Bytes the buffer has allocated.
    pub fn heap_bytes(&self) -> usize {
        self.keys.capacity()
            + self.ops.capacity() * std::mem::size_of::<Op>()
            + self.acts.capacity() * std::mem::size_of::<Act>()
    }

    /// Bytes the buffer's contents take.
    pub fn used_bytes(&self) -> usize {
        self.keys.len()
            + self.ops.len() * std::mem::size_of::<Op>()
            + self.acts.len() * std::mem::size_of::<Act>()
    }

    /// Gives back allocated bytes the contents do not use.
    pub fn shrink_to_fit(&mut self) {
        self.keys.shrink_to_fit();
        self.ops.shrink_to_fit();
        self.acts.shrink_to_fit();
    }

    /// Appends a copy of `src`'s `op` (its acts and counts) under another key.
    pub fn push_copy(&mut self, key: &[u8], src: &OpBuf, op: &Op) {
        let key_start = self.keys.len() as u32;
        self.keys.extend_from_slice(key);
        let acts_start = self.acts.len() as u32;
        let acts = src.acts(op);
        self.acts.extend_from_slice(acts);
        self.ops.push(Op {
            key: (key_start, key.len() as u32),
            acts: (acts_start, acts.len() as u32),
            ..*op
        });
    }

    /// Keeps only the ops for which `keep` is true (their keys and acts stay allocated).
    pub fn retain(&mut self, keep: impl FnMut(&Op) -> bool) {
        self.ops.retain(keep);
    }
}

/// What happened to a record before trait mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    InvalidAamId,
    InvalidDeviceId,
    NoMatchingAamId,
    /// Reached trait mapping: an op exists in partition `part`.
    Op {
        part: u32,
    },
    /// Reached trait mapping with its customer ID not looked up yet: an op exists in
    /// [`ChunkOut::pending`] bucket `part` (an ID-sync partition).
    Pending {
        part: u32,
    },
}

/// A record (a non-blank line that is not a Format Error), for the per-user cap.
#[derive(Clone, Copy, Debug)]
pub struct Mark {
    pub user: u128,
    pub line: u64,
    pub status: Status,
}

/// A line rejected before trait mapping, with its text for the rejects file.
#[derive(Clone, Debug)]
pub struct Rejected {
    pub line: u64,
    pub category: crate::report::receipt::Category,
    pub reason: Reason,
    pub text: Vec<u8>,
}

/// Why a line was rejected before trait mapping; rendered to text only for receipts, so the
/// hot path allocates nothing for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    Format(&'static str),
    InvalidAamId,
    InvalidDeviceId(Dpid, DeviceFormat),
    UnknownOdcType(Box<[u8]>),
    NotSynced(Dpid),
}

impl Reason {
    pub fn text(&self) -> std::borrow::Cow<'static, str> {
        match self {
            Reason::Format(r) => (*r).into(),
            Reason::InvalidAamId => "AAM UUIDs are exactly 38 digits".into(),
            Reason::InvalidDeviceId(dpid, format) => {
                let name = crate::model::device_format(*dpid).map_or("device", |(n, _)| n);
                format!("not a valid {name} ID ({})", format.describe()).into()
            }
            Reason::UnknownOdcType(t) => format!(
                "unknown ODC ID type {:?} (expected IDFA or Android Device ID)",
                String::from_utf8_lossy(t)
            )
            .into(),
            Reason::NotSynced(dpid) => format!("ID not synced for DPID {dpid}").into(),
        }
    }
}

/// Everything one chunk yields.
pub struct ChunkOut {
    pub records: u64,
    pub format_errors: u64,
    pub marks: Vec<Mark>,
    pub rejected: Vec<Rejected>,
    pub parts: Vec<OpBuf>,
    /// Ops whose customer ID is still to be looked up, by ID-sync partition (empty unless
    /// [`FileCtx::index`] is `None` and the file's IDs are customer IDs).
    pub pending: Vec<OpBuf>,
}

/// Parses, validates and resolves every line of `chunk`, and maps items to trait instructions.
/// Pure: the same bytes and context always give the same output.
pub fn process_chunk(chunk: &[u8], first_line: u64, ctx: &FileCtx<'_>) -> ChunkOut {
    let deferred = ctx.index.is_none() && matches!(ctx.id_kind, IdKind::Customer { .. });
    // Size the buffers for the chunk up front (lines of ~64 bytes spread evenly over the
    // partitions): growing them line by line copies every op several times.
    let sized = |partitions: u32| -> Vec<OpBuf> {
        let per_part = chunk.len() / 64 / partitions as usize + 4;
        (0..partitions)
            .map(|_| OpBuf {
                keys: Vec::with_capacity(per_part * 17),
                ops: Vec::with_capacity(per_part),
                acts: Vec::with_capacity(per_part * 4),
            })
            .collect()
    };
    let mut out = ChunkOut {
        records: 0,
        format_errors: 0,
        marks: Vec::with_capacity(chunk.len() / 64 + 4),
        rejected: Vec::new(),
        parts: if deferred {
            (0..ctx.partitions).map(|_| OpBuf::default()).collect()
        } else {
            sized(ctx.partitions)
        },
        pending: if deferred {
            sized(ctx.partitions)
        } else {
            Vec::new()
        },
    };
    let mut key_scratch = Vec::with_capacity(64);
    let mut rules = RuleScratch {
        scratch: Scratch::new(),
        qualified: Vec::new(),
    };
    // Lines go in batches: parse a batch and start loading every ID's index slot, then resolve
    // the batch, so the cache misses of a batch overlap instead of queueing.
    let odc = ctx.id_kind == IdKind::Odc;
    let lookup_dpid = match ctx.id_kind {
        IdKind::Customer { dpid, .. } => Some(dpid),
        _ => None,
    };
    let mut pending = lines(chunk, first_line);
    let mut batch: SmallVec<[Parsed<'_>; LOOKUP_BATCH]> = SmallVec::new();
    loop {
        batch.clear();
        for (line_no, raw) in pending.by_ref().take(LOOKUP_BATCH) {
            let kind = parse_line(raw, odc);
            // The user's identity for the per-user cap, which is also the index key when the
            // file's IDs are looked up (one DPID per file, so the two agree on "same ID").
            let hash = match (&kind, lookup_dpid) {
                (LineKind::Record(r), Some(dpid)) => {
                    let h = IdIndex::hash(dpid, r.id);
                    if let Some(index) = ctx.index {
                        index.prefetch(dpid, h);
                    }
                    h
                }
                (LineKind::Record(r), None) => id_hash(0, r.id),
                _ => 0,
            };
            batch.push((line_no, raw, kind, hash));
        }
        if batch.is_empty() {
            break;
        }
        for &(line_no, raw, kind, user) in &batch {
            process_line(
                ctx,
                &mut out,
                line_no,
                raw,
                kind,
                user,
                &mut key_scratch,
                &mut rules,
            );
        }
    }
    out
}

/// Lines parsed ahead of their index lookups (see [`process_chunk`]).
const LOOKUP_BATCH: usize = 16;

/// A line parsed ahead: line number, text, what it is, the ID's hash.
type Parsed<'a> = (u64, &'a [u8], LineKind<'a>, u128);

/// One line of [`process_chunk`]: `user` is the ID's hash (see there).
#[allow(clippy::too_many_arguments)]
#[inline]
fn process_line(
    ctx: &FileCtx<'_>,
    out: &mut ChunkOut,
    line_no: u64,
    raw: &[u8],
    kind: LineKind<'_>,
    user: u128,
    key_scratch: &mut Vec<u8>,
    rules: &mut RuleScratch,
) {
    use crate::report::receipt::Category;
    let record = match kind {
        LineKind::Blank => return,
        LineKind::FormatError(e) => {
            out.records += 1;
            out.format_errors += 1;
            out.rejected.push(Rejected {
                line: line_no,
                category: Category::FormatErrors,
                reason: Reason::Format(e.reason()),
                text: raw.to_vec(),
            });
            return;
        }
        LineKind::Record(r) => r,
    };
    out.records += 1;
    let deferred = match (ctx.index, ctx.id_kind) {
        (None, IdKind::Customer { dpid, cross_device }) => {
            key_scratch.clear();
            pending_key(dpid, cross_device, record.id, key_scratch);
            true
        }
        _ => false,
    };
    let resolved = if deferred {
        Ok(())
    } else {
        resolve(ctx, record.id, record.id_type, user, key_scratch)
    };
    let status = match resolved {
        Err((category, reason)) => {
            out.rejected.push(Rejected {
                line: line_no,
                category,
                reason,
                text: raw.to_vec(),
            });
            match category {
                Category::InvalidAamId => Status::InvalidAamId,
                Category::InvalidDeviceId => Status::InvalidDeviceId,
                _ => Status::NoMatchingAamId,
            }
        }
        Ok(()) => {
            // A deferred ID is looked up later, in the ID-sync partition its hash picks.
            let (bufs, part, status) = if deferred {
                let part = crate::idsync::store::part_of_hash(user, ctx.partitions);
                (&mut out.pending, part, Status::Pending { part })
            } else {
                let part = partition_of(key_scratch, ctx.partitions);
                (&mut out.parts, part, Status::Op { part })
            };
            push_op(
                &mut bufs[part as usize],
                ctx,
                seq(ctx.file, line_no),
                key_scratch,
                record.items,
                rules,
            );
            status
        }
    };
    out.marks.push(Mark {
        user,
        line: line_no,
        status,
    });
}

/// Merges `acts[..mid]` and `acts[mid..]`, each ascending by item, into one ascending run,
/// stably (on equal items, the first run's act first): the stable sort of the two.
fn merge_runs(acts: &mut [Act], mid: usize) {
    let (Some(last_first), Some(first_second)) = (mid.checked_sub(1), acts.get(mid)) else {
        return;
    };
    if acts[last_first].item <= first_second.item {
        return;
    }
    // From the back: the larger of the two runs' last acts goes last, the second run's on a tie.
    let second: SmallVec<[Act; 32]> = acts[mid..].iter().copied().collect();
    let (mut i, mut j, mut k) = (mid, second.len(), acts.len());
    while j > 0 {
        k -= 1;
        if i > 0 && acts[i - 1].item > second[j - 1].item {
            acts[k] = acts[i - 1];
            i -= 1;
        } else {
            acts[k] = second[j - 1];
            j -= 1;
        }
    }
}

/// Validates the ID and writes the encoded profile key into `key`, or says why not.
fn resolve(
    ctx: &FileCtx<'_>,
    id: &[u8],
    id_type: Option<&[u8]>,
    hash: u128,
    key: &mut Vec<u8>,
) -> Result<(), (crate::report::receipt::Category, Reason)> {
    use crate::model::ProfileKey;
    use crate::report::receipt::Category;
    key.clear();
    let device = |dpid: Dpid, format: DeviceFormat, key: &mut Vec<u8>| {
        if format.accepts(id) {
            ProfileKey::encode_device(dpid, id, key);
            Ok(())
        } else {
            Err((
                Category::InvalidDeviceId,
                Reason::InvalidDeviceId(dpid, format),
            ))
        }
    };
    match ctx.id_kind {
        IdKind::AamUuid => match Uuid::parse(id) {
            Some(u) => {
                ProfileKey::Uuid(u).encode_into(key);
                Ok(())
            }
            None => Err((Category::InvalidAamId, Reason::InvalidAamId)),
        },
        IdKind::Device(dpid, format) => device(dpid, format, key),
        IdKind::Odc => match odc_device(id_type.unwrap_or_default()) {
            Some((dpid, format)) => device(dpid, format, key),
            None => Err((
                Category::InvalidDeviceId,
                Reason::UnknownOdcType(id_type.unwrap_or_default().into()),
            )),
        },
        IdKind::Customer { dpid, cross_device } => {
            let target = ctx.index.and_then(|index| index.lookup_hashed(dpid, hash));
            if resolve_target(target, dpid, cross_device, id, key) {
                Ok(())
            } else {
                Err((Category::NoMatchingAamId, Reason::NotSynced(dpid)))
            }
        }
    }
}

/// Writes the profile key a customer ID `(dpid, id)` lands on, given its index entry: the
/// mapped profile, else its own customer-ID profile when the data source is cross-device.
/// `false` when it lands nowhere (No Matching AAM ID).
fn resolve_target(
    target: Option<Target<'_>>,
    dpid: Dpid,
    cross_device: bool,
    id: &[u8],
    key: &mut Vec<u8>,
) -> bool {
    use crate::model::ProfileKey;
    match target {
        Some(Target::Uuid(u)) => ProfileKey::Uuid(u).encode_into(key),
        Some(Target::Device(d, device_id)) => ProfileKey::encode_device(d, device_id, key),
        None if cross_device => ProfileKey::encode_customer(dpid, id, key),
        None => return false,
    }
    true
}

/// The key of a pending op (see [`FileCtx::index`]): a cross-device flag byte, the DPID
/// (big-endian) and the customer ID, everything the resolve stage needs to look it up.
pub fn pending_key(dpid: Dpid, cross_device: bool, id: &[u8], out: &mut Vec<u8>) {
    out.push(u8::from(cross_device));
    out.extend_from_slice(&dpid.to_be_bytes());
    out.extend_from_slice(id);
}

/// What [`resolve_pending`] did with one ID-sync partition's pending ops.
#[derive(Default)]
pub struct Resolved {
    /// The ops that landed on a profile, by profile partition.
    pub parts: Vec<OpBuf>,
    /// Run positions ([`seq`]) of the lines whose ID is not synced (No Matching AAM ID),
    /// ascending.
    pub unmatched: Vec<u64>,
}

/// The resolve stage: looks up the customer ID of every pending op (see [`FileCtx::index`])
/// and moves the op to the profile it lands on. Pure, like [`process_chunk`]; `index` must hold
/// the ID-sync partition the ops were bucketed by.
///
/// # Errors
///
/// A pending key too short to hold its DPID (the buffers were not made by [`process_chunk`]).
pub fn resolve_pending(
    pending: &[OpBuf],
    index: &IdIndex,
    partitions: u32,
) -> Result<Resolved, &'static str> {
    let mut out = Resolved {
        parts: (0..partitions).map(|_| OpBuf::default()).collect(),
        unmatched: Vec::new(),
    };
    let mut key = Vec::with_capacity(64);
    for buf in pending {
        for op in &buf.ops {
            let (flag, dpid, id) = split_pending_key(buf.key(op))?;
            key.clear();
            let target = index.lookup(dpid, id);
            if resolve_target(target, dpid, flag != 0, id, &mut key) {
                let part = partition_of(&key, partitions);
                out.parts[part as usize].push_copy(&key, buf, op);
            } else {
                out.unmatched.push(op.seq);
            }
        }
    }
    out.unmatched.sort_unstable();
    Ok(out)
}

/// A pending op's key ([`pending_key`]) taken apart: (cross-device flag, DPID, customer ID).
fn split_pending_key(pk: &[u8]) -> Result<(u8, Dpid, &[u8]), &'static str> {
    match (
        pk.first(),
        pk.get(1..5)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(Dpid::from_be_bytes),
        pk.get(5..),
    ) {
        (Some(&flag), Some(dpid), Some(id)) => Ok((flag, dpid, id)),
        _ => Err("a pending op's key is too short"),
    }
}

/// Adds the keys [`resolve_pending`] will look up in `pending` to `wanted`, for an index of
/// just those ([`IdIndex::build_wanted`]) in a state of `partitions` partitions.
pub fn pending_keys(
    pending: &[OpBuf],
    wanted: &mut crate::idsync::index::Wanted,
    partitions: u32,
) -> Result<(), &'static str> {
    for buf in pending {
        for op in &buf.ops {
            let (_, dpid, id) = split_pending_key(buf.key(op))?;
            wanted.insert(dpid, id, partitions);
        }
    }
    Ok(())
}

/// The device source an ODC line's ID-type column names (AAM-REFERENCE §2.11).
fn odc_device(id_type: &[u8]) -> Option<(Dpid, DeviceFormat)> {
    let dpid = if id_type.eq_ignore_ascii_case(b"idfa") {
        20915
    } else if id_type.eq_ignore_ascii_case(b"android device id")
        || id_type.eq_ignore_ascii_case(b"gaid")
        || id_type.eq_ignore_ascii_case(b"aaid")
    {
        20914
    } else {
        return None;
    };
    crate::model::device_format(dpid).map(|(_, f)| (dpid, f))
}

/// A key-value or `ic` signal of a line: (item index, key, value).
type Signal<'a> = (u32, &'a [u8], &'a [u8]);

/// Reusable buffers for rule qualification, one per chunk.
struct RuleScratch {
    scratch: Scratch,
    qualified: Vec<(TraitId, u32)>,
}

fn push_op(
    buf: &mut OpBuf,
    ctx: &FileCtx<'_>,
    seq: u64,
    key: &[u8],
    raw_items: &[u8],
    rules: &mut RuleScratch,
) {
    let key_start = buf.keys.len() as u32;
    buf.keys.extend_from_slice(key);
    let acts_start = buf.acts.len();
    let (mut n, mut malformed, mut failed) = (0u32, 0u32, 0u32);
    // Signals borrow the line; a line rarely has more than a few, so the array lives on the
    // stack and spills to the heap only for long lines.
    let mut signals: SmallVec<[Signal<'_>; 16]> = SmallVec::new();
    for item in items(raw_items) {
        let index = n;
        n += 1;
        let (trait_id, kind) = match item {
            Item::Realize(t) => (t, ActKind::Realize),
            // `.overwrite` ignores removals: the item stays an unused signal.
            Item::Remove(_) if ctx.overwrite => continue,
            Item::Remove(t) => (t, ActKind::Remove),
            Item::Malformed(_) => {
                malformed += 1;
                continue;
            }
            Item::Signal { key, value } => {
                signals.push((index, key, value));
                continue;
            }
            Item::Ic(value) => {
                signals.push((index, b"ic", value));
                continue;
            }
        };
        match ctx.trait_owner.get(trait_id) {
            None => {}
            Some(owner) if owner != ctx.target_ds => failed += 1,
            Some(_) => buf.acts.push(Act {
                item: index,
                trait_id,
                kind,
            }),
        }
    }
    if !signals.is_empty() && !ctx.rules.is_empty() {
        let rules_start = buf.acts.len();
        let q = &mut rules.qualified;
        q.clear();
        ctx.rules
            .qualify(ctx.target_ds, &signals, &mut rules.scratch, q);
        // Per qualified trait: it is realized at its last satisfying item (the rule holds once
        // all its atoms are seen); earlier satisfying items are touched. A trait's items
        // ascend and are distinct (or it has just `NO_ITEM`), so its touches then its realize
        // ascend too.
        let mut i = 0;
        while i < q.len() {
            let trait_id = q[i].0;
            let end = i + q[i..].iter().take_while(|(t, _)| *t == trait_id).count();
            let (&(_, at), touched) = q[i..end].split_last().expect("one item at least");
            for &(_, item) in touched {
                buf.acts.push(Act {
                    item,
                    trait_id,
                    kind: ActKind::Touch,
                });
            }
            buf.acts.push(Act {
                item: at,
                trait_id,
                kind: ActKind::Realize,
            });
            i = end;
        }
        // Interleave rule acts with d_sid/d_unsid acts in item order (stable: equal items keep
        // their order). The item acts ascend already, and so do the rule acts of most lines
        // (one signal qualifying a few one-atom rules): sort the rule acts if they must be,
        // then merge the two runs.
        let rule_acts = &mut buf.acts[rules_start..];
        if !rule_acts.is_sorted_by_key(|a| a.item) {
            rule_acts.sort_by_key(|a| a.item);
        }
        merge_runs(&mut buf.acts[acts_start..], rules_start - acts_start);
    }
    buf.ops.push(Op {
        seq,
        key: (key_start, key.len() as u32),
        acts: (acts_start as u32, (buf.acts.len() - acts_start) as u32),
        items: n,
        malformed,
        failed,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Merging the two ascending runs is their stable sort: random items with ties
        /// inside and across the runs, and acts told apart by their trait.
        #[test]
        fn merging_two_runs_is_their_stable_sort(
            first in proptest::collection::vec(0u32..12, 0..20),
            second in proptest::collection::vec(0u32..12, 0..40),
        ) {
            let run = |items: &[u32], from: u32| -> Vec<Act> {
                let mut items = items.to_vec();
                items.sort_unstable();
                items
                    .iter()
                    .enumerate()
                    .map(|(i, &item)| Act {
                        item,
                        trait_id: from + i as u32,
                        kind: ActKind::Realize,
                    })
                    .collect()
            };
            let mut acts = run(&first, 0);
            acts.extend(run(&second, 1000));
            let mut expected = acts.clone();
            expected.sort_by_key(|a| a.item);
            merge_runs(&mut acts, first.len());
            proptest::prop_assert_eq!(acts, expected);
        }
    }
}
