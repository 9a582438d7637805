//! Applies one partition's ops to its stored profiles: TTL expiry first, then every line in run
//! order — `.sync` realizations and removals as they come, `.overwrite` per user when the file
//! is done (CONTRACT §3). Produces the new partition and the merge-stage receipt counters.
//!
//! The ops are sorted by key as 16-byte refs, then walked beside the stored partition. A stored
//! profile with no op tonight whose [`Events`] say nothing happens by the as-of time is not
//! decoded: only its header is read, and its bytes are copied through with the run of quiet
//! profiles around it. Any other profile is decoded into reused buffers; if its entries,
//! segments and events come out unchanged it too is copied through as its stored bytes (the
//! encoding is canonical: see `profile::tests::decoding_then_encoding_gives_the_same_bytes`).

use super::{
    Entry, Events, Overlaid, Stored, Unreadable, decode_body, encode_into, encode_tombstone,
    next_or_end,
};
#[cfg(test)]
use super::{decode, next_stored};
use crate::blocks::{BlockIndex, Counts, DeltaCounts};
use crate::codec::{Reader, Truncated, Writer};
use crate::idsync::index::prefetch_read;
use crate::idsync::store::id_prefix;
use crate::ingest::{ActKind, NO_ITEM, Op, OpBuf, seq_file};
use crate::model::{Dpid, ProfileKey, Timestamp, TraitId};
use crate::report::receipt::{Counters, SAMPLES_PER_CATEGORY};
use crate::rules::segment_rule::SegmentRules;
use ahash::AHashMap;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

pub use super::SECONDS_PER_DAY;

/// What the merge needs to know of each file of the run, by file index.
#[derive(Clone, Copy, Debug)]
pub struct FileMeta {
    pub job: usize,
    pub overwrite: bool,
    pub target_ds: Dpid,
}

pub struct MergeCtx<'a> {
    pub files: &'a [FileMeta],
    pub jobs: usize,
    /// Trait → TTL in days (0 = never expires). Realizations of traits missing here are kept
    /// and never expire.
    pub ttl_days: &'a AHashMap<TraitId, u32>,
    pub as_of: Timestamp,
    pub segments: &'a SegmentRules,
    /// The segment definitions changed since the stored memberships were computed: evaluate
    /// every segment for every profile.
    pub reevaluate_all: bool,
    /// Trait → recency day counts that mention it (see `Catalog::recency_days`).
    pub recency_days: &'a AHashMap<TraitId, Vec<u32>>,
    /// The as-of time of the state being merged into: recency windows that closed or opened
    /// in (previous, now] make a profile's memberships due again.
    pub previous_as_of: Option<Timestamp>,
    /// The stored profiles' [`Events`] were computed under tonight's TTLs and segment rules: a
    /// stored profile with no op tonight and no event by the as-of time is copied through
    /// without reading its body. When `false`, every profile is read and its events computed
    /// again.
    pub trust_events: bool,
    /// Keep the profiles whose segments changed ([`PartOut::changes`]) for an `iter` export.
    pub keep_changes: bool,
}

/// The result of merging one partition. Serialized without its payload by a staged run's
/// merge task, for `segmill finalize`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct PartOut {
    /// The new payload from [`merge_partition`], or `None` when nothing changed (the old file
    /// can be carried over, if it is in the current format: the run rewrites a format-1
    /// partition regardless). Always `None` from [`merge_partition_into`], which hands the
    /// payload to its sink.
    #[serde(skip)]
    pub payload: Option<Vec<u8>>,
    /// Merge-stage counters per file index (categories decided here, item counts, devices).
    pub files: Vec<Counters>,
    /// Distinct profiles per job with a Stored line / with a failed-validation trait.
    pub job_devices: Vec<u64>,
    pub job_failed_users: Vec<u64>,
    /// Per job, the run positions of its first No Trait Realized lines in this partition.
    pub ntr_samples: Vec<Vec<u64>>,
    pub expired: u64,
    pub profiles: u64,
    pub memberships: u64,
    /// Profiles whose traits changed or expired.
    pub changed_profiles: u64,
    /// Profiles whose segment membership changed.
    pub membership_changes: u64,
    /// The earliest moment an entry of this partition expires.
    pub min_expiry: Option<Timestamp>,
    /// The earliest moment after this run at which a recency term can change a membership.
    pub min_flip: Option<Timestamp>,
    /// Whether the partition holds cross-device customer-ID profiles.
    pub has_customer: bool,
    /// The profiles whose segments changed, in key order, with their new segments (none for a
    /// dropped profile), in the members layout (`outbound::export::decode_members`), while
    /// they are few: `None` past [`changes_kept`] bytes, or when `MergeCtx::keep_changes` is
    /// off. An `iter` export diffs just these against its members instead of every profile.
    #[serde(skip)]
    pub changes: Option<Vec<u8>>,
    /// Whether the new partition differs from the stored one by a byte.
    #[serde(skip)]
    pub rewritten: bool,
    /// From [`merge_partition_delta`] over a base without a block index: the index of the
    /// base, which it read whole.
    #[serde(skip)]
    pub index: Option<Vec<u8>>,
    /// From [`merge_partition_delta`]: the new delta's block counts
    /// ([`crate::blocks::DeltaCounts`], encoded; empty when the delta is, or the base is
    /// empty). `None` from the other merges.
    #[serde(skip)]
    pub delta_counts: Option<Vec<u8>>,
    /// From [`merge_partition_delta`]: the offset of the base block that the given delta
    /// counts let go unread though the night needed it (the partition was then merged again
    /// without them).
    #[serde(skip)]
    pub counts_ignored: Option<usize>,
}

/// How many bytes of [`PartOut::changes`] a partition of `stored_bytes` keeps: about 30 bytes
/// a change against 40-50 a stored profile, so about one profile in 25 (and at least a few
/// hundred). Every partition's list is held until the exports, so together they stay under
/// about 3% of the profile store.
pub fn changes_kept(stored_bytes: usize) -> usize {
    stored_bytes / 32 + 8192
}

/// Records a change of segments into `out`, unless its list is already past `limit`.
fn note_change(out: &mut PartOut, key: &[u8], segments: &[u32], limit: usize) {
    if let Some(changes) = &mut out.changes {
        if changes.len() < limit {
            let mut w = Writer {
                buf: std::mem::take(changes),
            };
            crate::outbound::export::write_member(&mut w, key, segments);
            *changes = w.buf;
        } else {
            out.changes = None;
        }
    }
}

/// What the merge reads of a trait for every entry of every profile it writes.
#[derive(Clone, Copy)]
struct TraitFacts<'c> {
    /// TTL in days; 0 = never expires (also for traits missing from `MergeCtx::ttl_days`).
    ttl_days: u32,
    /// The recency day counts that mention the trait (see `MergeCtx::recency_days`).
    recency_days: &'c [u32],
}

/// Slots of [`FactsCache`]: 96 KiB, and catalogs number their traits densely.
const FACT_SLOTS: usize = 1 << 12;

/// [`TraitFacts`] memoized in a direct-mapped table by trait ID: the two hash lookups per entry
/// it replaces were a tenth of the merge stage's CPU (`perf` over a 6M-line night). A slot
/// holds the trait it was filled for, so a collision only costs the lookups again.
struct FactsCache<'c> {
    ttl_days: &'c AHashMap<TraitId, u32>,
    recency_days: &'c AHashMap<TraitId, Vec<u32>>,
    slots: Vec<Option<(TraitId, TraitFacts<'c>)>>,
}

impl<'c> FactsCache<'c> {
    fn new(ctx: &MergeCtx<'c>) -> FactsCache<'c> {
        FactsCache {
            ttl_days: ctx.ttl_days,
            recency_days: ctx.recency_days,
            slots: vec![None; FACT_SLOTS],
        }
    }

    fn get(&mut self, trait_id: TraitId) -> TraitFacts<'c> {
        if self.ttl_days.is_empty() && self.recency_days.is_empty() {
            // Nothing to look up: the table would only take cache lines from the ops.
            return TraitFacts {
                ttl_days: 0,
                recency_days: &[],
            };
        }
        let slot = &mut self.slots[trait_id as usize % FACT_SLOTS];
        match *slot {
            Some((t, facts)) if t == trait_id => facts,
            _ => {
                let facts = TraitFacts {
                    ttl_days: self.ttl_days.get(&trait_id).copied().unwrap_or(0),
                    recency_days: self
                        .recency_days
                        .get(&trait_id)
                        .map_or(&[][..], Vec::as_slice),
                };
                *slot = Some((trait_id, facts));
                facts
            }
        }
    }
}

fn expiry(entry: &Entry, facts: TraitFacts<'_>) -> Option<Timestamp> {
    (facts.ttl_days > 0).then(|| {
        entry
            .realized_at
            .saturating_add(i64::from(facts.ttl_days) * SECONDS_PER_DAY)
    })
}

/// Sets `entry` in `entries` (sorted by trait), replacing the entry of its trait if any.
fn upsert(entries: &mut Vec<Entry>, entry: Entry) {
    match position(entries, entry.trait_id) {
        Ok(i) => entries[i] = entry,
        Err(i) => entries.insert(i, entry),
    }
}

/// [`slice::binary_search_by_key`] on the trait. Most profiles hold a few traits: counting
/// the smaller ones is a run of independent compares, where each step of a binary search
/// waits for the load before it.
fn position(entries: &[Entry], trait_id: TraitId) -> Result<usize, usize> {
    if entries.len() > 16 {
        return entries.binary_search_by_key(&trait_id, |e| e.trait_id);
    }
    let i = entries.iter().filter(|e| e.trait_id < trait_id).count();
    match entries.get(i) {
        Some(e) if e.trait_id == trait_id => Ok(i),
        _ => Err(i),
    }
}

impl Scratch {
    fn new(ctx: &MergeCtx<'_>) -> Scratch {
        Scratch {
            realized: Vec::new(),
            union: Vec::new(),
            stored_files: Vec::new(),
            failed_files: Vec::new(),
            ntr: (0..ctx.jobs).map(|_| BinaryHeap::new()).collect(),
            old_entries: Vec::new(),
            old_segments: Vec::new(),
            entries: Vec::new(),
        }
    }
}

/// What merging one profile after another reuses: buffers, trait facts, and how many bytes
/// of changes the partition keeps ([`changes_kept`]).
struct Work<'c> {
    scratch: Scratch,
    seg_scratch: SegScratch,
    facts: FactsCache<'c>,
    changes_limit: usize,
}

impl<'c> Work<'c> {
    /// For a partition whose stored bytes are `stored_bytes` long.
    fn new(ctx: &MergeCtx<'c>, stored_bytes: usize) -> Work<'c> {
        Work {
            scratch: Scratch::new(ctx),
            seg_scratch: SegScratch::default(),
            facts: FactsCache::new(ctx),
            changes_limit: changes_kept(stored_bytes),
        }
    }

    /// [`merge_profile`] of `key` with the group of ops at `refs[*j..]` if it has ops
    /// tonight (`with_ops`; `*j` then moves past them).
    #[allow(clippy::too_many_arguments)]
    fn merge(
        &mut self,
        key: &[u8],
        stored: Option<Stored<'_>>,
        with_ops: bool,
        night: Night<'_>,
        refs: &[OpRef],
        j: &mut usize,
        ctx: &MergeCtx<'_>,
        out: &mut PartOut,
        w: &mut Writer,
    ) -> Result<(bool, Option<Counts>), Truncated> {
        let group = if with_ops {
            let start = *j;
            *j = night.group_end(refs, start);
            &refs[start..*j]
        } else {
            &refs[0..0]
        };
        merge_profile(key, stored, group, night, ctx, out, self, w)
    }
}

struct Scratch {
    realized: Vec<TraitId>,
    union: Vec<TraitId>,
    stored_files: Vec<u32>,
    failed_files: Vec<u32>,
    ntr: Vec<BinaryHeap<u64>>,
    /// The stored profile being merged, decoded into reused buffers.
    old_entries: Vec<Entry>,
    old_segments: Vec<u32>,
    /// The profile being built.
    entries: Vec<Entry>,
}

/// One of the night's ops, as the merge walks them in key order: the first 8 bytes of its key
/// as an integer (which settles nearly every comparison) and where the op is. 16 bytes, so the
/// sort moves little memory; the op itself is read only when its profile is merged.
#[derive(Clone, Copy)]
struct OpRef {
    prefix: u64,
    buf: u32,
    op: u32,
}

/// The op buffers of one partition, addressed by [`OpRef`].
#[derive(Clone, Copy)]
struct Night<'a> {
    bufs: &'a [&'a OpBuf],
}

impl<'a> Night<'a> {
    fn get(self, r: OpRef) -> (&'a [u8], &'a Op, &'a OpBuf) {
        let buf = self.bufs[r.buf as usize];
        let op = &buf.ops[r.op as usize];
        (buf.key(op), op, buf)
    }

    fn key(self, r: OpRef) -> &'a [u8] {
        self.get(r).0
    }

    /// Every op, sorted by (key, run position). One op per line, so (key, seq) is unique: the
    /// order is total and deterministic, whatever the sort algorithm.
    fn sorted(self) -> Vec<OpRef> {
        let total: usize = self.bufs.iter().map(|b| b.ops.len()).sum();
        let mut refs: Vec<OpRef> = Vec::with_capacity(total);
        for (b, buf) in self.bufs.iter().enumerate() {
            // Lines over the per-user cap never reach here (`ingest::cap` drops their ops).
            // Op buffers index their contents with u32 offsets, so indices fit in u32 too.
            refs.extend(buf.ops.iter().enumerate().map(|(o, op)| OpRef {
                prefix: crate::idsync::store::id_prefix(buf.key(op)),
                buf: b as u32,
                op: o as u32,
            }));
        }
        sort_by_prefix(&mut refs);
        // Runs of one prefix (in practice one user's several lines: keys are hashed into
        // partitions, so their first bytes are random) are put in (key, seq) order.
        let mut start = 0;
        while start < refs.len() {
            let prefix = refs[start].prefix;
            let end = start
                + refs[start..]
                    .iter()
                    .take_while(|r| r.prefix == prefix)
                    .count();
            if end - start > 1 {
                refs[start..end].sort_unstable_by(|&x, &y| {
                    let ((kx, ox, _), (ky, oy, _)) = (self.get(x), self.get(y));
                    cmp_keys(kx, ky).then(ox.seq.cmp(&oy.seq))
                });
            }
            start = end;
        }
        refs
    }

    /// The end of the group of ops for the key of `refs[start]`.
    fn group_end(self, refs: &[OpRef], start: usize) -> usize {
        let first = refs[start];
        let key = self.key(first);
        start
            + 1
            + refs[start + 1..]
                .iter()
                .take_while(|r| r.prefix == first.prefix && cmp_keys(self.key(**r), key).is_eq())
                .count()
    }

    /// Starts loading what the op at `r` will read when its profile is merged: its key and
    /// every cache line of its acts (a line with many items has several).
    fn prefetch(self, r: OpRef) {
        let (key, op, buf) = self.get(r);
        prefetch_read(key);
        let acts = buf.acts(op);
        // 64-byte lines hold at least 5 acts of 12 bytes.
        for act in acts.iter().step_by(5) {
            prefetch_read(act);
        }
        if let Some(last) = acts.last() {
            prefetch_read(last);
        }
    }
}

/// Sorts `refs` by prefix (equal prefixes in no particular order): below a few thousand with
/// the standard sort; above, by one pass of a counting sort on the prefix's leading bits
/// (over the range the prefixes span: a partition's keys share their first byte) into
/// buckets of about 32, each then sorted on its own. The standard sort spends most of its
/// time in the insertion sorts at its leaves, `log n` levels down.
fn sort_by_prefix(refs: &mut Vec<OpRef>) {
    let n = refs.len();
    if n < 4096 {
        refs.sort_unstable_by_key(|r| r.prefix);
        return;
    }
    let (min, max) = refs.iter().fold((u64::MAX, 0), |(lo, hi), r| {
        (lo.min(r.prefix), hi.max(r.prefix))
    });
    let span_bits = 64 - (max - min).leading_zeros();
    let bucket_bits = (n / 32).ilog2().clamp(8, 16);
    let shift = span_bits.saturating_sub(bucket_bits);
    let bucket = |r: &OpRef| ((r.prefix - min) >> shift) as usize;
    // Every bucket index is below 2^bucket_bits: (max - min) >> shift has at most that many bits.
    let mut starts = vec![0usize; (1 << bucket_bits) + 1];
    for r in refs.iter() {
        starts[bucket(r) + 1] += 1;
    }
    for b in 1..starts.len() {
        starts[b] += starts[b - 1];
    }
    let mut next = starts.clone();
    let mut out = vec![
        OpRef {
            prefix: 0,
            buf: 0,
            op: 0
        };
        n
    ];
    for r in refs.iter() {
        let b = bucket(r);
        out[next[b]] = *r;
        next[b] += 1;
    }
    for w in starts.windows(2) {
        out[w[0]..w[1]].sort_unstable_by_key(|r| r.prefix);
    }
    *refs = out;
}

/// Where [`merge_partition_into`] puts the new partition, a piece at a time, and what it tells
/// the owner of the stored partition as it walks past it.
pub trait PartSink {
    /// Appends the next bytes of the new partition.
    ///
    /// # Errors
    ///
    /// The bytes could not be written; the merge stops with [`MergeError::Write`].
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()>;

    /// The merge has read the stored partition up to `offset` and is unlikely to read before
    /// it again (it does once, to write out the stored profiles before the first one that
    /// changed): its pages can go, to fault back in if they are read.
    fn passed(&mut self, _offset: usize) {}

    /// The next profile of the new partition, in order: its encoding, its key and what it
    /// counts, which the sink's block index ([`crate::blocks::Indexer`]) is built from. Every
    /// profile of the partition comes through here, those of an unchanged stored prefix too
    /// (before its bytes are written, and whether or not they ever are).
    fn profile(&mut self, _raw: &[u8], _key: &[u8], _counts: &Counts) {}
}

impl PartSink for Vec<u8> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.extend_from_slice(bytes);
        Ok(())
    }
}

/// Why a merge stopped.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error(transparent)]
    Stored(#[from] Unreadable),
    #[error("cannot write the new partition: {0}")]
    Write(#[source] std::io::Error),
}

impl From<Truncated> for MergeError {
    fn from(t: Truncated) -> MergeError {
        MergeError::Stored(t.into())
    }
}

/// The new partition is handed to the sink in pieces of about this many bytes, and a quiet run
/// of stored profiles at least this long goes to it straight from the stored bytes.
#[cfg(not(test))]
const SINK_PIECE: usize = 256 << 10;
/// Small in tests, so that their partitions go to the sink in many pieces.
#[cfg(test)]
const SINK_PIECE: usize = 96;

/// Merges `ops` (this partition's op buffers, in run order) into `old`, the new partition in
/// [`PartOut::payload`] (`None` when no byte of it changed).
pub fn merge_partition(
    old: Option<&[u8]>,
    ops: &[&OpBuf],
    ctx: &MergeCtx<'_>,
) -> Result<PartOut, Unreadable> {
    let total: usize = ops.iter().map(|b| b.ops.len()).sum();
    let mut payload = Vec::with_capacity(old.map_or(0, <[u8]>::len) + total * 48);
    let mut out = merge_partition_into(old, ops, ctx, &mut payload).map_err(|e| match e {
        MergeError::Stored(t) => t,
        MergeError::Write(e) => unreachable!("a Vec takes every write: {e}"),
    })?;
    if out.rewritten {
        out.payload = Some(payload);
    }
    Ok(out)
}

/// Merges `ops` (this partition's op buffers, in run order) into `old`, writing the new
/// partition to `sink` as it is made, once it differs from `old` ([`PartOut::rewritten`]): an
/// unchanged partition writes nothing. Memory holds tonight's ops and a piece of the new
/// partition, not the whole of it; `sink` hears which stored bytes the merge is done with.
/// [`PartOut::payload`] stays `None`.
pub fn merge_partition_into(
    old: Option<&[u8]>,
    ops: &[&OpBuf],
    ctx: &MergeCtx<'_>,
    sink: &mut dyn PartSink,
) -> Result<PartOut, MergeError> {
    let night = Night { bufs: ops };
    let refs = night.sorted();
    let old = old.unwrap_or_default();
    let mut stored = Reader::new(old);

    let mut out = PartOut::new(ctx);
    let mut work = Work::new(ctx, old.len());
    let mut w = Writer::default();
    w.buf.reserve(2 * SINK_PIECE);
    // Where the stored bytes were last reported passed.
    let mut passed = 0usize;
    // Quiet stored profiles are copied through a run at a time: from `quiet_from` in `old` to
    // the current head, flushed before anything else is written.
    let mut quiet_from = 0usize;
    let mut rewritten = false;
    let mut head = next_or_end(&mut stored)?;
    let mut j = 0usize;
    let mut ahead = Ahead::default();
    loop {
        ahead.prefetch(night, &refs, j);
        let Some((key, from_store, with_ops)) = next_key(head.map(|o| (o.key, o)), night, &refs, j)
        else {
            break;
        };
        if let Some(o) = from_store
            && !with_ops
            && ctx.trust_events
            && o.events.quiet_at(ctx.as_of)
        {
            // Nothing can have changed: count it and leave its bytes in the run to copy.
            let counts = Counts::of(&o);
            out.count(&counts);
            sink.profile(o.raw, o.key, &counts);
            head = next_or_end(&mut stored)?;
            let at = start_of(&stored, head);
            // A long quiet run goes to the sink straight from the stored bytes.
            if rewritten && at - quiet_from >= SINK_PIECE {
                flush(sink, &mut w.buf, &old[quiet_from..at])?;
                quiet_from = at;
            }
            report_passed(sink, &mut passed, at);
            continue;
        }
        // The head is this profile or one after it: the quiet run ends where the head starts.
        let start = start_of(&stored, head);
        if rewritten {
            w.buf.extend_from_slice(&old[quiet_from..start]);
        }
        let mark = w.buf.len();
        let (changed, counts) = work
            .merge(
                key, from_store, with_ops, night, &refs, &mut j, ctx, &mut out, &mut w,
            )
            .map_err(|t| from_store.map_or(t, |o| super::located(old, o.body, t)))?;
        if let Some(counts) = counts {
            sink.profile(&w.buf[mark..], key, &counts);
        }
        if !rewritten {
            if changed {
                // Up to this profile, the new partition is the stored one: the sink gets it
                // now, and nothing at all if no profile changes.
                rewritten = true;
                flush(sink, &mut Vec::new(), &old[..start])?;
            } else {
                // The profile's stored bytes, copied through.
                w.buf.clear();
            }
        }
        if from_store.is_some() {
            head = next_or_end(&mut stored)?;
        }
        quiet_from = start_of(&stored, head);
        if w.buf.len() >= SINK_PIECE {
            flush(sink, &mut w.buf, &[])?;
        }
        report_passed(sink, &mut passed, quiet_from);
    }
    if rewritten {
        flush(sink, &mut w.buf, &old[quiet_from..])?;
    }
    sink.passed(old.len());
    out.rewritten = rewritten;
    out.take_samples(work.scratch);
    Ok(out)
}

/// Merges `ops` into the partition that `base` and its `delta` stand for, and makes its new
/// delta ([`PartOut::payload`], set when it differs from `delta`: [`PartOut::rewritten`]).
/// Only what the delta holds and what changes tonight is written; the base's quiet profiles
/// are read (their headers) and counted but not copied. `None` once the new delta passes
/// `limit` bytes (see [`crate::state::delta_limit`]): the partition is then better merged
/// whole, over [`super::overlay`] of the two. `passed` hears how far into the base the merge
/// has read (from the start again when it merges again, below).
///
/// With the base's block `index`, only the blocks that tonight's lines or a due event fall in
/// are read, and the others counted from the index; the delta's records fall in blocks that
/// are read too unless `delta_counts` (when it fits the delta) says what those blocks count.
/// The new delta's counts are in [`PartOut::delta_counts`].
///
/// Counts only save reads. Counts that call a block quiet when the night finds a due profile
/// of the delta in it, unread, are wrong (a bug, or a damaged file that still checks out):
/// the partition is merged again without them, every block a delta record falls in read, and
/// [`PartOut::counts_ignored`] says so.
#[allow(clippy::too_many_arguments)]
pub fn merge_partition_delta(
    base: &[u8],
    delta: &[u8],
    index: Option<&BlockIndex<'_>>,
    delta_counts: Option<&DeltaCounts>,
    ops: &[&OpBuf],
    ctx: &MergeCtx<'_>,
    limit: usize,
    passed: &mut dyn FnMut(usize),
) -> Result<Option<PartOut>, MergeError> {
    let mut merge = |counts| merge_delta_once(base, delta, index, counts, ops, ctx, limit, passed);
    match merge(delta_counts) {
        Err(MergeError::Stored(Unreadable::Counts(at))) if delta_counts.is_some() => {
            let mut out = merge(None)?;
            if let Some(out) = &mut out {
                out.counts_ignored = Some(at);
            }
            Ok(out)
        }
        result => result,
    }
}

/// One attempt of [`merge_partition_delta`], with the given counts.
#[allow(clippy::too_many_arguments)]
fn merge_delta_once(
    base: &[u8],
    delta: &[u8],
    index: Option<&BlockIndex<'_>>,
    delta_counts: Option<&DeltaCounts>,
    ops: &[&OpBuf],
    ctx: &MergeCtx<'_>,
    limit: usize,
    passed: &mut dyn FnMut(usize),
) -> Result<Option<PartOut>, MergeError> {
    let night = Night { bufs: ops };
    let refs = night.sorted();
    // Per block of the base: what it counts with the delta, and whether it is read.
    let plan = match index.filter(|i| !i.blocks.is_empty()) {
        Some(index) => {
            let fitting = delta_counts.filter(|c| c.fits(index, delta));
            let counts = match fitting {
                Some(c) => c.apply(index),
                None => index.blocks.iter().map(|b| b.counts).collect(),
            };
            // Without counts that fit, the delta's records are counted where they are read.
            let unknown = if fitting.is_some() { &[][..] } else { delta };
            let touched = touched_blocks(index, &counts, unknown, night, &refs, ctx)
                .map_err(Unreadable::Delta)?;
            Some((index, counts, touched))
        }
        None => None,
    };
    let mut layers = match &plan {
        Some((index, counts, touched)) => {
            Overlaid::with_blocks(base, delta, index, touched, counts)?
        }
        // A base without an index gets one, built as it is read through.
        None if index.is_none() => Overlaid::indexing(base, delta)?,
        None => Overlaid::new(base, delta)?,
    };
    // What each block counts tonight: a block not read as it did; a read one as the walk
    // finds it.
    let mut new_counts: Vec<Counts> = match &plan {
        Some((_, counts, touched)) => counts
            .iter()
            .zip(touched)
            .map(|(c, &read)| if read { Counts::default() } else { *c })
            .collect(),
        None => Vec::new(),
    };
    let mut cursor = crate::blocks::BlockCursor::default();
    let mut out = PartOut::new(ctx);
    let mut work = Work::new(ctx, base.len() + delta.len());
    let mut w = Writer::default();
    let mut reported = 0usize;
    let mut head = layers.next_layer()?;
    let mut j = 0usize;
    let mut ahead = Ahead::default();
    loop {
        ahead.prefetch(night, &refs, j);
        let Some((key, layer, with_ops)) = next_key(head.map(|l| (l.key, l)), night, &refs, j)
        else {
            break;
        };
        // The key's block, when the base has an index, and whether it was read.
        let (block, read) = match &plan {
            Some((index, _, touched)) => {
                let b = cursor.of(index, key);
                (Some(b), touched[b])
            }
            None => (None, true),
        };
        let mut counted = |c: &Counts| {
            if let Some(slot) = block.and_then(|b| new_counts.get_mut(b)) {
                slot.add(c);
            }
        };
        let quiet = layer.filter(|_| !with_ops).and_then(|l| match l.stored {
            // A tombstone without a line tonight stays one.
            None => Some(l),
            Some(o) => (ctx.trust_events && o.events.quiet_at(ctx.as_of)).then_some(l),
        });
        if let Some(l) = quiet {
            // A block not read is counted whole, with the delta's records in it.
            if let Some(o) = l.stored.filter(|_| read) {
                let c = Counts::of(&o);
                out.count(&c);
                counted(&c);
            }
            // What the delta held of it, it still holds; the base keeps the rest.
            w.buf.extend_from_slice(l.delta_raw.unwrap_or_default());
        } else {
            if !read {
                // Its base profile was not read: the counts that let it go unread are wrong.
                let at = plan
                    .as_ref()
                    .zip(block)
                    .map_or(0, |((index, ..), b)| index.blocks[b].start);
                return Err(Unreadable::Counts(at).into());
            }
            let mark = w.buf.len();
            let stored = layer.and_then(|l| l.stored);
            let (changed, counts) = work
                .merge(
                    key, stored, with_ops, night, &refs, &mut j, ctx, &mut out, &mut w,
                )
                .map_err(|t| match stored {
                    Some(o) if layer.is_some_and(|l| l.delta_raw.is_some()) => {
                        Unreadable::Delta(super::located(delta, o.body, t))
                    }
                    Some(o) => Unreadable::Base(super::located(base, o.body, t)),
                    None => Unreadable::Truncated(t),
                })?;
            if let Some(c) = counts {
                counted(&c);
            }
            let in_base = layer.is_some_and(|l| l.in_base);
            if changed && w.buf.len() == mark && in_base {
                // Dropped: the base's profile must not show through.
                encode_tombstone(&mut w, key);
            } else if !changed && layer.is_some_and(|l| l.delta_raw.is_none()) {
                // Its bytes as the base has them: nothing for the delta.
                w.buf.truncate(mark);
            }
            if w.buf.len() > limit {
                return Ok(None);
            }
        }
        // Read up to the next base profile (before the walk takes it).
        let at = layers.base_offset();
        if at >= reported + SINK_PIECE {
            reported = at;
            passed(at);
        }
        if layer.is_some() {
            head = layers.next_layer()?;
        }
    }
    passed(base.len());
    // The blocks not read, counted from the index.
    out.count(&layers.skipped());
    out.index = layers.take_index();
    // The new delta's block counts: none for an empty delta (it is dropped).
    out.delta_counts = Some(if w.buf.is_empty() {
        Vec::new()
    } else if let Some((index, ..)) = &plan {
        DeltaCounts::new(index, &w.buf, &new_counts).encode()
    } else if let Some(built) = out.index.as_ref().filter(|i| !i.is_empty()) {
        // The base was read whole for want of an index: count it again by the new one.
        let index = BlockIndex::decode(built)?;
        let counts = super::overlay_counts(&index, base, &w.buf)?;
        DeltaCounts::new(&index, &w.buf, &counts).encode()
    } else {
        Vec::new()
    });
    if w.buf != delta {
        out.rewritten = true;
        out.payload = Some(w.buf);
    }
    out.take_samples(work.scratch);
    Ok(Some(out))
}

/// Which of `index`'s blocks a merge over its base must read: those that a line of tonight
/// (`refs`) or a record of `unknown` (a delta without counts that fit it) falls in, and those
/// where a profile can change by the clock by `counts` (every block when the stored events are
/// not to be trusted).
fn touched_blocks(
    index: &BlockIndex<'_>,
    counts: &[Counts],
    unknown: &[u8],
    night: Night<'_>,
    refs: &[OpRef],
    ctx: &MergeCtx<'_>,
) -> Result<Vec<bool>, Truncated> {
    let mut touched: Vec<bool> = counts
        .iter()
        .map(|c| !(ctx.trust_events && c.events.quiet_at(ctx.as_of)))
        .collect();
    if touched.is_empty() {
        return Ok(touched);
    }
    for &r in refs {
        touched[index.block_of(night.key(r))] = true;
    }
    let mut r = Reader::new(unknown);
    while let Some(d) = next_or_end(&mut r)? {
        touched[index.block_of(d.key)] = true;
    }
    Ok(touched)
}

impl PartOut {
    /// Counts stored profiles in: their number, entries, kinds and earliest events.
    fn count(&mut self, c: &Counts) {
        self.profiles += c.profiles;
        self.memberships += c.entries;
        self.has_customer |= c.customer;
        fold_events(self, c.events);
    }

    /// Nothing merged yet.
    fn new(ctx: &MergeCtx<'_>) -> PartOut {
        PartOut {
            payload: None,
            files: vec![Counters::default(); ctx.files.len()],
            job_devices: vec![0; ctx.jobs],
            job_failed_users: vec![0; ctx.jobs],
            ntr_samples: vec![Vec::new(); ctx.jobs],
            expired: 0,
            profiles: 0,
            memberships: 0,
            changed_profiles: 0,
            membership_changes: 0,
            min_expiry: None,
            min_flip: None,
            has_customer: false,
            changes: ctx.keep_changes.then(Vec::new),
            rewritten: false,
            index: None,
            delta_counts: None,
            counts_ignored: None,
        }
    }

    /// Moves the merge's No Trait Realized samples into [`PartOut::ntr_samples`], in order.
    fn take_samples(&mut self, scratch: Scratch) {
        for (job, heap) in scratch.ntr.into_iter().enumerate() {
            self.ntr_samples[job] = heap.into_sorted_vec();
        }
    }
}

/// How far the merge's prefetches have reached in the sorted refs: every op's, not one per
/// profile merged (a profile with several lines consumes several refs at once).
#[derive(Default)]
struct Ahead {
    ops: usize,
    acts: usize,
}

impl Ahead {
    /// In key order the ops, their keys and their acts are scattered over the night's buffers:
    /// starts loading those a few ops past `j`, the next to merge (ops first, then what they
    /// point to). After a group longer than the distance, the cursors restart at `j`: the refs
    /// behind it are merged already.
    fn prefetch(&mut self, night: Night<'_>, refs: &[OpRef], j: usize) {
        let ops_to = (j + 2 * PREFETCH_AHEAD).min(refs.len());
        for &r in &refs[self.ops.max(j).min(ops_to)..ops_to] {
            prefetch_read(&night.bufs[r.buf as usize].ops[r.op as usize]);
        }
        self.ops = self.ops.max(ops_to);
        let acts_to = (j + PREFETCH_AHEAD).min(refs.len());
        for &r in &refs[self.acts.max(j).min(acts_to)..acts_to] {
            night.prefetch(r);
        }
        self.acts = self.acts.max(acts_to);
    }
}

/// The next key to merge: the stored `head` (its key and what it is), tonight's `refs[j]`, or
/// both when they are the same key, with whether it has ops tonight. `None` when both are done.
fn next_key<'k, T: Copy>(
    head: Option<(&'k [u8], T)>,
    night: Night<'k>,
    refs: &[OpRef],
    j: usize,
) -> Option<(&'k [u8], Option<T>, bool)> {
    let new = refs.get(j).map(|&r| (r.prefix, night.key(r)));
    // Keys are compared by their first 8 bytes as integers first, as the sort did.
    match (head, new) {
        (Some((key, o)), Some((prefix, n))) => Some(
            match id_prefix(key).cmp(&prefix).then_with(|| cmp_keys(key, n)) {
                Ordering::Equal => (key, Some(o), true),
                Ordering::Less => (key, Some(o), false),
                Ordering::Greater => (n, None, true),
            },
        ),
        (Some((key, o)), None) => Some((key, Some(o), false)),
        (None, Some((_, n))) => Some((n, None, true)),
        (None, None) => None,
    }
}

/// Hands `buf` (emptied) and then `stored`, a run of stored bytes, to `sink`.
fn flush(sink: &mut dyn PartSink, buf: &mut Vec<u8>, stored: &[u8]) -> Result<(), MergeError> {
    if !buf.is_empty() {
        sink.write(buf).map_err(MergeError::Write)?;
        buf.clear();
    }
    if !stored.is_empty() {
        sink.write(stored).map_err(MergeError::Write)?;
    }
    Ok(())
}

/// Tells `sink` the merge is past `offset` of the stored bytes, once it is a piece further
/// than it last said (`passed`).
fn report_passed(sink: &mut dyn PartSink, passed: &mut usize, offset: usize) {
    if offset >= *passed + SINK_PIECE {
        *passed = offset;
        sink.passed(offset);
    }
}

/// Where `head`, the profile `r` last read (or the end, for `None`), starts in the partition.
fn start_of(r: &Reader<'_>, head: Option<Stored<'_>>) -> usize {
    r.offset() - head.map_or(0, |o| o.raw.len())
}

/// Counts a written profile's events into the partition's earliest ones.
fn fold_events(out: &mut PartOut, events: Events) {
    let earliest = |m: Option<Timestamp>, day: Option<u32>| match (m, day) {
        (m, None) => m,
        (m, Some(d)) => {
            let t = Events::start_of(d);
            Some(m.map_or(t, |m| m.min(t)))
        }
    };
    out.min_expiry = earliest(out.min_expiry, events.expiry_day);
    out.min_flip = earliest(out.min_flip, events.flip_day);
}

/// Merges one profile: the stored one (`stored`, its body still encoded) or a new one
/// (`stored` = `None`), with its `group` of tonight's ops (sorted by run position; empty if
/// none). Appends the result to `w` unless the profile ends up without traits. Returns whether
/// the partition's bytes changed (the profile was written anew or dropped, not copied), and
/// what the profile written counts (`None` when dropped).
#[allow(clippy::too_many_arguments)]
fn merge_profile(
    key: &[u8],
    stored: Option<Stored<'_>>,
    group: &[OpRef],
    night: Night<'_>,
    ctx: &MergeCtx<'_>,
    out: &mut PartOut,
    work: &mut Work<'_>,
    w: &mut Writer,
) -> Result<(bool, Option<Counts>), Truncated> {
    let Work {
        scratch: s,
        seg_scratch,
        facts,
        changes_limit,
    } = work;
    let changes_limit = *changes_limit;
    let is_new = stored.is_none();
    match &stored {
        Some(o) => decode_body(o, &mut s.old_entries, &mut s.old_segments)?,
        None => {
            s.old_entries.clear();
            s.old_segments.clear();
        }
    }
    let mut entries = std::mem::take(&mut s.entries);
    entries.clear();
    entries.extend_from_slice(&s.old_entries);
    let before = entries.len();
    entries.retain(|e| expiry(e, facts.get(e.trait_id)).is_none_or(|t| ctx.as_of < t));
    let expired = (before - entries.len()) as u64;
    out.expired += expired;
    if !group.is_empty() {
        apply_ops(&mut entries, group, night, ctx, out, s);
    }
    let changed = expired > 0 || !group.is_empty();
    if changed {
        out.changed_profiles += 1;
    }
    let (old_entries, old_segments): (&[Entry], &[u32]) = (&s.old_entries, &s.old_segments);
    if entries.is_empty() {
        // A profile without traits is dropped, with every membership it had.
        if !old_segments.is_empty() {
            out.membership_changes += 1;
            note_change(out, key, &[], changes_limit);
        }
        s.entries = entries;
        return Ok((true, None));
    }
    let flipped = recency_flipped(&entries, ctx, facts);
    let segments: &[u32] = if ctx.reevaluate_all || changed || flipped {
        evaluate_segments(
            is_new,
            old_entries,
            old_segments,
            &entries,
            ctx,
            seg_scratch,
        );
        if !same(&seg_scratch.segments, old_segments) {
            out.membership_changes += 1;
            note_change(out, key, &seg_scratch.segments, changes_limit);
        }
        &seg_scratch.segments
    } else {
        old_segments
    };
    let events = events_of(&entries, ctx, facts);
    let counts = Counts {
        profiles: 1,
        entries: entries.len() as u64,
        customer: key.first() == Some(&ProfileKey::TAG_CUSTOMER),
        events,
    };
    out.count(&counts);
    let rewritten = match stored {
        // Same entries, segments and events: the stored bytes are what `encode_into` would
        // write (decoding accepts one encoding per value, and the encoding is a function of
        // them).
        Some(o) if !changed && same(segments, old_segments) && events == o.events => {
            w.buf.extend_from_slice(o.raw);
            false
        }
        _ => {
            encode_into(w, key, events, &entries, segments);
            true
        }
    };
    s.entries = entries;
    Ok((rewritten, Some(counts)))
}

/// When a profile of `entries`, written tonight, can next change by the clock alone.
fn events_of(entries: &[Entry], ctx: &MergeCtx<'_>, facts: &mut FactsCache<'_>) -> Events {
    let (mut expiry_at, mut flip_at): (Option<Timestamp>, Option<Timestamp>) = (None, None);
    for e in entries {
        let f = facts.get(e.trait_id);
        if let Some(t) = expiry(e, f) {
            expiry_at = Some(expiry_at.map_or(t, |m| m.min(t)));
        }
        for t in flip_times(e, f) {
            if t > ctx.as_of {
                flip_at = Some(flip_at.map_or(t, |m| m.min(t)));
            }
        }
    }
    Events {
        expiry_day: expiry_at.map(Events::day_of),
        flip_day: flip_at.map(Events::day_of),
    }
}

/// Bytewise order of two keys, 8 bytes at a time: keys are short (17 bytes for a UUID), and a
/// `memcmp` call costs more than the comparison (see [`same`]).
fn cmp_keys(mut a: &[u8], mut b: &[u8]) -> Ordering {
    while let (Some((x, a_rest)), Some((y, b_rest))) =
        (a.split_first_chunk::<8>(), b.split_first_chunk::<8>())
    {
        if x != y {
            return u64::from_be_bytes(*x).cmp(&u64::from_be_bytes(*y));
        }
        (a, b) = (a_rest, b_rest);
    }
    a.iter().cmp(b.iter())
}

/// `a == b`, for the short segment lists of one profile: an element loop, where slice equality
/// would call `memcmp` (which `perf` showed costing more than the loop, even for empty lists).
fn same(a: &[u32], b: &[u32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// The moments a recency term over `e`'s trait changes its answer: `<= ND` stops holding
/// just after realized_at + N days, `>= ND` starts holding at realized_at + N days.
fn flip_times<'c>(e: &Entry, facts: TraitFacts<'c>) -> impl Iterator<Item = Timestamp> + 'c {
    let realized_at = e.realized_at;
    facts.recency_days.iter().flat_map(move |&days| {
        let t = realized_at.saturating_add(i64::from(days) * SECONDS_PER_DAY);
        [t, t.saturating_add(1)]
    })
}

/// Whether a recency window of one of the profile's traits opened or closed since the state's
/// previous as-of time.
fn recency_flipped(entries: &[Entry], ctx: &MergeCtx<'_>, facts: &mut FactsCache<'_>) -> bool {
    let Some(previous) = ctx.previous_as_of else {
        return false;
    };
    entries
        .iter()
        .any(|e| flip_times(e, facts.get(e.trait_id)).any(|t| previous < t && t <= ctx.as_of))
}

/// Reusable buffers for segment evaluation.
#[derive(Default)]
struct SegScratch {
    changed: Vec<TraitId>,
    candidates: Vec<u32>,
    qualified: Vec<u32>,
    traits: Vec<(TraitId, Timestamp)>,
    /// The result of [`evaluate_segments`].
    segments: Vec<u32>,
}

/// The profile's segments after a change, into `s.segments`: segments that cannot have changed
/// keep their old answer; the candidates (segments mentioning a changed trait, or every segment
/// an empty profile qualifies for when the profile is new) are evaluated again.
fn evaluate_segments(
    is_new: bool,
    old_entries: &[Entry],
    old_segments: &[u32],
    entries: &[Entry],
    ctx: &MergeCtx<'_>,
    s: &mut SegScratch,
) {
    let rules = ctx.segments;
    s.traits.clear();
    s.traits
        .extend(entries.iter().map(|e| (e.trait_id, e.realized_at)));
    s.qualified.clear();
    s.segments.clear();
    if ctx.reevaluate_all {
        rules.evaluate(rules.ids(), &s.traits, ctx.as_of, &mut s.segments);
        return;
    }
    // Traits whose presence or realization time changed (recency reads the time), in trait
    // order: both sides are sorted by trait.
    s.changed.clear();
    let (mut a, mut b) = (0, 0);
    while a < old_entries.len() || b < entries.len() {
        match (old_entries.get(a), entries.get(b)) {
            (Some(x), Some(y)) if x.trait_id == y.trait_id => {
                if x.realized_at != y.realized_at {
                    s.changed.push(x.trait_id);
                }
                a += 1;
                b += 1;
            }
            (Some(x), Some(y)) if x.trait_id < y.trait_id => {
                s.changed.push(x.trait_id);
                a += 1;
            }
            (Some(x), None) => {
                s.changed.push(x.trait_id);
                a += 1;
            }
            (_, Some(y)) => {
                s.changed.push(y.trait_id);
                b += 1;
            }
            (None, None) => break,
        }
    }
    rules.candidates(&s.changed, is_new, &mut s.candidates);
    // Recency terms read the clock: while the profile is being looked at anyway, its
    // time-dependent segments are evaluated again too. The segments touching a changed trait
    // are candidates already, so only the unchanged traits are looked up (none, for a new
    // profile).
    let time_dependent = rules.time_dependent();
    if !time_dependent.is_empty() {
        let before = s.candidates.len();
        let mut c = 0;
        for e in entries {
            while s.changed.get(c).is_some_and(|&t| t < e.trait_id) {
                c += 1;
            }
            if s.changed.get(c) == Some(&e.trait_id) {
                continue;
            }
            for &seg in rules.touching(e.trait_id) {
                if time_dependent.binary_search(&seg).is_ok() {
                    s.candidates.push(seg);
                }
            }
        }
        if s.candidates.len() > before {
            s.candidates.sort_unstable();
            s.candidates.dedup();
        }
    }
    rules.evaluate(&s.candidates, &s.traits, ctx.as_of, &mut s.qualified);
    // Old answers for segments not re-evaluated, new answers for the candidates.
    s.segments.extend(
        old_segments
            .iter()
            .copied()
            .filter(|seg| s.candidates.binary_search(seg).is_err()),
    );
    s.segments.extend_from_slice(&s.qualified);
    s.segments.sort_unstable();
    s.segments.dedup();
}

/// How many ops ahead of the merge the prefetches reach (see [`merge_partition`]).
const PREFETCH_AHEAD: usize = 8;

/// Applies one profile's ops (sorted by run position) to its entries.
fn apply_ops(
    entries: &mut Vec<Entry>,
    group: &[OpRef],
    night: Night<'_>,
    ctx: &MergeCtx<'_>,
    out: &mut PartOut,
    s: &mut Scratch,
) {
    s.stored_files.clear();
    s.failed_files.clear();
    let mut start = 0;
    while start < group.len() {
        let file = seq_file(night.get(group[start]).1.seq);
        let end = start
            + group[start..]
                .iter()
                .take_while(|&&r| seq_file(night.get(r).1.seq) == file)
                .count();
        let meta = ctx.files[file as usize];
        s.union.clear();
        for &r in &group[start..end] {
            let (_, op, buf) = night.get(r);
            let counters = &mut out.files[file as usize];
            counters.total_signals += u64::from(op.items);
            counters.malformed_items += u64::from(op.malformed);
            counters.total_traits_failed_validation += u64::from(op.failed);
            if op.failed > 0 {
                s.failed_files.push(file);
            }
            s.realized.clear();
            let mut used_items = 0u64;
            let mut last_used_item = None;
            for act in buf.acts(op) {
                let used = match act.kind {
                    ActKind::Remove => match position(entries, act.trait_id) {
                        Ok(pos) => {
                            entries.remove(pos);
                            counters.total_removed_traits += 1;
                            true
                        }
                        Err(_) => false,
                    },
                    ActKind::Realize => {
                        // A line names a few traits: a scan keeps them distinct more cheaply
                        // than sorting them.
                        if !s.realized.contains(&act.trait_id) {
                            s.realized.push(act.trait_id);
                        }
                        if meta.overwrite {
                            s.union.push(act.trait_id);
                        } else {
                            upsert(
                                entries,
                                Entry {
                                    trait_id: act.trait_id,
                                    data_source: meta.target_ds,
                                    realized_at: ctx.as_of,
                                },
                            );
                        }
                        true
                    }
                    ActKind::Touch => true,
                };
                // Acts are sorted by item: count each used item once. A rule that qualified
                // without an item of its own (`NO_ITEM`) uses none.
                if used && act.item != NO_ITEM && last_used_item != Some(act.item) {
                    used_items += 1;
                    last_used_item = Some(act.item);
                }
            }
            counters.total_realized_traits += s.realized.len() as u64;
            counters.total_unused_signals += u64::from(op.items) - used_items;
            // An `.overwrite` line without items is an explicit clear: Stored.
            let stored = used_items > 0 || (meta.overwrite && op.items == 0);
            if stored {
                counters.stored_records += 1;
                s.stored_files.push(file);
            } else {
                counters.no_trait_realized += 1;
                let heap = &mut s.ntr[meta.job];
                heap.push(op.seq);
                if heap.len() > SAMPLES_PER_CATEGORY {
                    heap.pop();
                }
            }
        }
        if meta.overwrite {
            let counters = &mut out.files[file as usize];
            s.union.sort_unstable();
            s.union.dedup();
            let before = entries.len();
            entries.retain(|e| {
                e.data_source != meta.target_ds || s.union.binary_search(&e.trait_id).is_ok()
            });
            counters.total_removed_traits += (before - entries.len()) as u64;
            for &t in &s.union {
                upsert(
                    entries,
                    Entry {
                        trait_id: t,
                        data_source: meta.target_ds,
                        realized_at: ctx.as_of,
                    },
                );
            }
        }
        start = end;
    }
    count_distinct(
        &mut s.stored_files,
        ctx,
        &mut out.files,
        &mut out.job_devices,
        |c| &mut c.total_devices,
    );
    count_distinct(
        &mut s.failed_files,
        ctx,
        &mut out.files,
        &mut out.job_failed_users,
        |c| &mut c.total_users_with_failed_traits,
    );
}

/// Counts one profile once per file and once per job among `files`.
fn count_distinct(
    files: &mut Vec<u32>,
    ctx: &MergeCtx<'_>,
    counters: &mut [Counters],
    per_job: &mut [u64],
    field: impl Fn(&mut Counters) -> &mut u64,
) {
    files.sort_unstable();
    files.dedup();
    let mut jobs: Vec<usize> = Vec::with_capacity(files.len());
    for &f in files.iter() {
        *field(&mut counters[f as usize]) += 1;
        jobs.push(ctx.files[f as usize].job);
    }
    // Files of one job need not be contiguous in run order (they are sorted by timestamp).
    jobs.sort_unstable();
    jobs.dedup();
    for job in jobs {
        per_job[job] += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idsync::index::IdIndex;
    use crate::ingest::{FileCtx, IdKind, process_chunk};
    use crate::model::{ProfileKey, Uuid};

    const U: &str = "59767559181262060060278870901087098252";
    const DAY: i64 = SECONDS_PER_DAY;

    struct World {
        owners: crate::catalog::TraitOwners,
        ttl: AHashMap<TraitId, u32>,
        rules: crate::rules::trait_rule::TraitRules,
        segments: SegmentRules,
        recency: AHashMap<TraitId, Vec<u32>>,
    }

    fn world() -> World {
        // Traits 24..=27 belong to data source 21 (TTL 1 day for 27), 40 to data source 22.
        let owners = [(24, 21), (25, 21), (26, 21), (27, 21), (40, 22)];
        let ttl = [(24, 120), (25, 120), (26, 0), (27, 1), (40, 120)]
            .into_iter()
            .collect();
        // Trait 28 (data source 21) qualifies by rule.
        let rules = crate::rules::trait_rule::TraitRules::compile([
            (28, 21, r#"product == "tablet" AND tier == "gold""#),
            (29, 22, r#"product == "tablet""#),
        ])
        .unwrap();
        let owners = owners.into_iter().chain([(28, 21), (29, 22)]).collect();
        let segments = SegmentRules::compile([
            (1001, "24T AND 25T"),
            (1002, "NOT 27T"),
            (1003, "FREQUENCY([24T,26T] <= 1D) >= 2"),
        ])
        .unwrap();
        let recency = [(24, vec![1]), (26, vec![1])].into_iter().collect();
        World {
            owners,
            ttl,
            rules,
            segments,
            recency,
        }
    }

    /// Runs `files` ((text, overwrite, target data source)) through the kernel and merges them
    /// into `old` at `as_of`, trusting the stored profiles' events.
    fn merge(w: &World, old: Option<&[u8]>, files: &[(&str, bool, Dpid)], as_of: i64) -> PartOut {
        merge_with(w, old, files, as_of, None, true)
    }

    /// [`merge`] into a state of as-of time `previous`, trusting the stored events or not.
    fn merge_with(
        w: &World,
        old: Option<&[u8]>,
        files: &[(&str, bool, Dpid)],
        as_of: i64,
        previous: Option<i64>,
        trust_events: bool,
    ) -> PartOut {
        night_of(w, files, as_of, previous, trust_events, |bufs, ctx| {
            merge_checked(old, bufs, ctx)
        })
    }

    /// Calls `f` with the ops of `files` ((text, overwrite, target data source)), run through
    /// the kernel, and the context of merging them at `as_of` into a state of `previous`.
    fn night_of<R>(
        w: &World,
        files: &[(&str, bool, Dpid)],
        as_of: i64,
        previous: Option<i64>,
        trust_events: bool,
        f: impl FnOnce(&[&OpBuf], &MergeCtx<'_>) -> R,
    ) -> R {
        let index = IdIndex::default();
        let outs: Vec<_> = files
            .iter()
            .enumerate()
            .map(|(i, (text, overwrite, ds))| {
                let ctx = FileCtx {
                    file: i as u32,
                    target_ds: *ds,
                    overwrite: *overwrite,
                    id_kind: IdKind::AamUuid,
                    trait_owner: &w.owners,
                    rules: &w.rules,
                    index: Some(&index),
                    partitions: 1,
                };
                process_chunk(text.as_bytes(), 1, &ctx)
            })
            .collect();
        let metas: Vec<FileMeta> = files
            .iter()
            .map(|(_, overwrite, ds)| FileMeta {
                job: 0,
                overwrite: *overwrite,
                target_ds: *ds,
            })
            .collect();
        let ctx = MergeCtx {
            files: &metas,
            jobs: 1,
            ttl_days: &w.ttl,
            as_of,
            segments: &w.segments,
            reevaluate_all: false,
            recency_days: &w.recency,
            previous_as_of: previous,
            trust_events,
            keep_changes: true,
        };
        let bufs: Vec<&OpBuf> = outs.iter().map(|o| &o.parts[0]).collect();
        f(&bufs, &ctx)
    }

    /// The night of [`night_of`] merged into `base` under `delta`, trusting stored events.
    fn merge_delta(
        w: &World,
        base: &[u8],
        delta: &[u8],
        files: &[(&str, bool, Dpid)],
        as_of: i64,
        previous: Option<i64>,
    ) -> PartOut {
        night_of(w, files, as_of, previous, true, |bufs, ctx| {
            merge_over(base, delta, bufs, ctx).0
        })
    }

    /// Merges `bufs` into `base` under `delta` without the base's block index, with it, and
    /// with it and the delta's block counts, and checks that all three give the same night and
    /// the new delta's right block counts; returns the merge and the offsets it said it passed.
    fn merge_over(
        base: &[u8],
        delta: &[u8],
        bufs: &[&OpBuf],
        ctx: &MergeCtx<'_>,
    ) -> (PartOut, Vec<usize>) {
        let mut passed = Vec::new();
        let run = |index: Option<&BlockIndex<'_>>,
                   counts: Option<&DeltaCounts>,
                   passed: &mut dyn FnMut(usize)| {
            merge_partition_delta(base, delta, index, counts, bufs, ctx, usize::MAX, passed)
                .unwrap()
                .unwrap()
        };
        let out = run(None, None, &mut |at| passed.push(at));
        let index = crate::blocks::index_of(base);
        // Read whole, the base got its index.
        assert_eq!(out.index.as_deref(), Some(index.as_slice()));
        let index = (!index.is_empty()).then(|| BlockIndex::decode(&index).unwrap());
        let new_delta = out.payload.as_deref().unwrap_or(delta);
        assert_eq!(out.delta_counts, Some(counts_of(base, new_delta)));
        let indexed = run(index.as_ref(), None, &mut |_| {});
        let counts = DeltaCounts::decode(&counts_of(base, delta)).ok();
        let counted = run(index.as_ref(), counts.as_ref(), &mut |_| {});
        for other in [&indexed, &counted] {
            assert_same_night(other, &out);
            assert_eq!(other.rewritten, out.rewritten);
            assert_eq!(other.payload, out.payload);
            assert_eq!(other.delta_counts, out.delta_counts);
        }
        (out, passed)
    }

    /// The block counts of `delta` over `base` (encoded; empty for an empty delta or base), by
    /// the reference count.
    fn counts_of(base: &[u8], delta: &[u8]) -> Vec<u8> {
        let index = crate::blocks::index_of(base);
        if delta.is_empty() || index.is_empty() {
            return Vec::new();
        }
        let index = BlockIndex::decode(&index).unwrap();
        let counts = super::super::overlay_counts(&index, base, delta).unwrap();
        DeltaCounts::new(&index, delta, &counts).encode()
    }

    /// Merges `bufs` into `old` through a recording sink, through [`merge_partition`] and over
    /// a base and delta that stand for `old`, and checks that all three agree.
    fn merge_checked(old: Option<&[u8]>, bufs: &[&OpBuf], ctx: &MergeCtx<'_>) -> PartOut {
        // Through a sink, which the small SINK_PIECE of tests feeds in many pieces.
        let mut sink = Recording::default();
        let mut out = merge_partition_into(old, bufs, ctx, &mut sink).unwrap();
        let old_len = old.map_or(0, <[u8]>::len);
        assert!(
            sink.passed.windows(2).all(|p| p[0] <= p[1]),
            "{:?}",
            sink.passed
        );
        assert_eq!(sink.passed.last(), Some(&old_len));
        if out.rewritten {
            // Every profile of the new partition went by, in order.
            assert_eq!(sink.profiles, sink.bytes);
            out.payload = Some(sink.bytes);
        } else {
            assert!(
                sink.bytes.is_empty(),
                "an unchanged partition writes nothing"
            );
            assert_eq!(sink.profiles, old.unwrap_or_default());
        }
        let whole = merge_partition(old, bufs, ctx).unwrap();
        assert_eq!(whole.payload, out.payload);
        // The same night over a base and a delta that stand for `old`: the partition they
        // make is the same, and so is every counter.
        let old = old.unwrap_or_default();
        let (base, delta) = layered(old);
        assert_eq!(super::super::overlay(&base, &delta).unwrap(), old);
        let (by_delta, passed) = merge_over(&base, &delta, bufs, ctx);
        assert!(passed.windows(2).all(|p| p[0] <= p[1]), "{passed:?}");
        assert_eq!(passed.last(), Some(&base.len()));
        assert_same_night(&by_delta, &out);
        let new_delta = by_delta.payload.as_deref().unwrap_or(&delta);
        assert_eq!(
            super::super::overlay(&base, new_delta).unwrap(),
            out.payload.as_deref().unwrap_or(old)
        );
        out
    }

    /// Asserts that `a`, a merge over a delta, counted the same night as `b`, and changed its
    /// delta only if `b` changed its partition.
    fn assert_same_night(a: &PartOut, b: &PartOut) {
        assert_eq!(
            serde_json::to_value(a).unwrap(),
            serde_json::to_value(b).unwrap()
        );
        assert_eq!(a.changes, b.changes);
        // A delta says exactly whether it changed; a whole partition may call itself
        // rewritten with the same bytes (a line that realized nothing on a new profile).
        assert!(
            b.rewritten || !a.rewritten,
            "rewritten with nothing changed"
        );
    }

    /// A base and a delta that stand for partition `old`: every other profile of it in the
    /// delta over a stale one in the base, each followed by a profile that only the base has
    /// and the delta drops.
    fn layered(old: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let (mut base, mut delta) = (Writer::default(), Writer::default());
        let stale = [Entry {
            trait_id: 99,
            data_source: 21,
            realized_at: 0,
        }];
        let mut r = Reader::new(old);
        let mut odd = false;
        while let Some(p) = next_or_end(&mut r).unwrap() {
            if odd {
                encode_into(&mut base, p.key, Events::default(), &stale, &[]);
                delta.buf.extend_from_slice(p.raw);
                let gone = [p.key, &[0]].concat();
                encode_into(&mut base, &gone, Events::default(), &stale, &[]);
                encode_tombstone(&mut delta, &gone);
            } else {
                base.buf.extend_from_slice(p.raw);
            }
            odd = !odd;
        }
        (base.buf, delta.buf)
    }

    /// The 38-digit UUID of profile `n` of [`spread_base`].
    fn spread_uuid(n: u128) -> String {
        format!("{:038}", n * 7919)
    }

    /// A partition of 200 profiles merged at time 1000, profile `n` (keyed by
    /// [`spread_uuid`]) with the items `items(n)`: some 70 blocks of the test block size.
    fn spread_base(w: &World, items: impl Fn(u128) -> String) -> Vec<u8> {
        let text: String = (0..200u128)
            .map(|n| format!("{}\t{}\n", spread_uuid(n), items(n)))
            .collect();
        merge(w, None, &[(&text, false, 21)], 1000).payload.unwrap()
    }

    /// A night of `line` at `as_of` after `previous` over `base` (with its block `index`) and
    /// `delta` (with its block `counts`), trusting the stored events.
    #[allow(clippy::too_many_arguments)]
    fn delta_night(
        w: &World,
        line: &str,
        (as_of, previous): (i64, i64),
        base: &[u8],
        index: Option<&BlockIndex<'_>>,
        delta: &[u8],
        counts: Option<&DeltaCounts>,
    ) -> Result<Option<PartOut>, MergeError> {
        night_of(
            w,
            &[(line, false, 21)],
            as_of,
            Some(previous),
            true,
            |bufs, ctx| {
                merge_partition_delta(
                    base,
                    delta,
                    index,
                    counts,
                    bufs,
                    ctx,
                    usize::MAX,
                    &mut |_| {},
                )
            },
        )
    }

    #[test]
    fn a_merge_over_a_block_index_reads_only_the_blocks_its_night_falls_in() {
        let w = world();
        let uuid = |n: u128| format!("{n:038}");
        let base = spread_base(&w, |_| "d_sid=24,d_sid=26".into());
        let index_bytes = crate::blocks::index_of(&base);
        let index = BlockIndex::decode(&index_bytes).unwrap();
        assert!(index.blocks.len() > 20, "{}", index.blocks.len());
        let line = format!("{}\td_sid=25\n", uuid(100 * 7919));
        let touched = index.block_of(&ProfileKey::Uuid(Uuid(100 * 7919)).encode());
        let run = |base: &[u8]| delta_night(&w, &line, (2000, 1000), base, Some(&index), &[], None);
        let clean = run(&base).unwrap().unwrap();
        assert_eq!(clean.profiles, 200);
        assert_eq!(clean.changed_profiles, 1);
        // Every other block damaged: not read, so the night is the same.
        let mut damaged = base.clone();
        for (i, b) in index.blocks.iter().enumerate() {
            if i != touched {
                damaged[b.start] ^= 0xff;
            }
        }
        let read = run(&damaged).unwrap().unwrap();
        assert_same_night(&read, &clean);
        assert_eq!(read.payload, clean.payload);
        // The block the line falls in damaged: an error naming where, never its bytes used.
        let mut bad = base.clone();
        let at = index.blocks[touched].start;
        bad[at + 3] ^= 1;
        let err = run(&bad).unwrap_err();
        assert!(
            matches!(err, MergeError::Stored(Unreadable::Block(o)) if o == at),
            "{err}"
        );
    }

    #[test]
    fn with_its_block_counts_a_delta_does_not_make_its_blocks_read() {
        const DAY: i64 = 86_400;
        let w = world();
        let uuid = |n: u128| format!("{n:038}");
        let key = |n: u128| ProfileKey::Uuid(Uuid(n * 7919)).encode();
        // Trait 25 lasts 120 days; profile 50 also has trait 27, which lasts a day.
        let base = spread_base(&w, |n| {
            if n == 50 {
                "d_sid=25,d_sid=27"
            } else {
                "d_sid=25"
            }
            .into()
        });
        let index_bytes = crate::blocks::index_of(&base);
        let index = BlockIndex::decode(&index_bytes).unwrap();
        let [a, b, c] = [50, 150, 180].map(|n| index.block_of(&key(n)));
        assert!(a != b && b != c && a != c, "{a} {b} {c}");
        let night =
            |line: &str, day: i64, delta: &[u8], base: &[u8], counts: Option<&DeltaCounts>| {
                let at = (day * DAY + 1000, (day - 1) * DAY + 1000);
                delta_night(&w, line, at, base, Some(&index), delta, counts)
            };
        // Night 2: profile 50's trait 27 expires (its block is due) and profile 150 gets a
        // trait, so both go to the delta.
        let line2 = format!("{}\td_sid=25\n", uuid(150 * 7919));
        let two = night(&line2, 2, &[], &base, None).unwrap().unwrap();
        assert_eq!(two.changed_profiles, 2);
        let delta = two.payload.clone().unwrap();
        let counts = DeltaCounts::decode(two.delta_counts.as_deref().unwrap()).unwrap();
        assert_eq!(two.delta_counts, Some(counts_of(&base, &delta)));
        // Block b counts as it did (a trait realized again moves no count: its block's
        // earliest expiry is another profile's), so only block a is listed.
        let changed: Vec<usize> = counts.changed.iter().map(|&(i, _)| i).collect();
        assert_eq!(changed, [a]);
        let mut r = Reader::new(&delta);
        let in_delta: Vec<usize> = std::iter::from_fn(|| next_or_end(&mut r).unwrap())
            .map(|p| index.block_of(p.key))
            .collect();
        assert_eq!(in_delta, [a, b]);
        // Block a is no longer due: its profile's trait 27 is gone.
        let now = counts.apply(&index);
        assert!(now[a].events.quiet_at(100 * DAY), "{:?}", now[a]);
        assert!(!index.blocks[a].counts.events.quiet_at(3 * DAY));

        // Night 3 touches block c alone. With the counts, nothing else is read: every other
        // block damaged, the night is the same as over the intact base.
        let line3 = format!("{}\td_sid=25\n", uuid(180 * 7919));
        let clean = night(&line3, 3, &delta, &base, None).unwrap().unwrap();
        assert_eq!(clean.profiles, 200);
        let mut damaged = base.clone();
        for (i, block) in index.blocks.iter().enumerate() {
            if i != c {
                damaged[block.start] ^= 0xff;
            }
        }
        let read = night(&line3, 3, &delta, &damaged, Some(&counts))
            .unwrap()
            .unwrap();
        assert_same_night(&read, &clean);
        assert_eq!(read.payload, clean.payload);
        assert_eq!(read.delta_counts, clean.delta_counts);
        let new_delta = clean.payload.as_deref().unwrap();
        assert_eq!(clean.delta_counts, Some(counts_of(&base, new_delta)));
        // Without them, or with counts of another delta or index, the delta's blocks are read.
        let of_delta = DeltaCounts {
            delta_hash: counts.delta_hash ^ 1,
            ..counts.clone()
        };
        let of_index = DeltaCounts {
            index_hash: counts.index_hash ^ 1,
            ..counts.clone()
        };
        for counts in [None, Some(&of_delta), Some(&of_index)] {
            let err = night(&line3, 3, &delta, &damaged, counts).unwrap_err();
            assert!(
                matches!(err, MergeError::Stored(Unreadable::Block(o)) if o == index.blocks[a].start),
                "{err}"
            );
        }
        // Counts that call a block quiet when a delta profile in it is due are not trusted:
        // the night is merged again without them (the profile expires, not left unexpired),
        // and says so.
        let lying = DeltaCounts::new(
            &index,
            &delta,
            &vec![crate::blocks::Counts::default(); index.blocks.len()],
        );
        let lied = night(&line3, 200, &delta, &base, Some(&lying))
            .unwrap()
            .unwrap();
        let without = night(&line3, 200, &delta, &base, None).unwrap().unwrap();
        assert_eq!(lied.counts_ignored, Some(index.blocks[a].start));
        assert_eq!(without.counts_ignored, None);
        assert_same_night(&lied, &without);
        assert_eq!(lied.payload, without.payload);
        assert_eq!(lied.delta_counts, without.delta_counts);
        assert!(without.expired > 0);
        // The first attempt alone is the error the retry answers.
        let at = (200 * DAY + 1000, 199 * DAY + 1000);
        let once = night_of(
            &w,
            &[(&line3, false, 21)],
            at.0,
            Some(at.1),
            true,
            |bufs, ctx| {
                merge_delta_once(
                    &base,
                    &delta,
                    Some(&index),
                    Some(&lying),
                    bufs,
                    ctx,
                    usize::MAX,
                    &mut |_| {},
                )
            },
        );
        assert!(
            matches!(&once, Err(MergeError::Stored(Unreadable::Counts(o))) if *o == index.blocks[a].start),
            "{:?}",
            once.map(|o| o.map(|o| o.profiles))
        );
    }

    #[test]
    fn errors_say_whether_the_base_or_the_delta_and_where_in_that_file() {
        let w = world();
        let uuid = |n: u128| format!("{n:038}");
        let good = spread_base(&w, |_| "d_sid=25".into());
        // Profile 150 of the base claims two entries but holds one: its header reads, its body
        // does not. Its block's checksum is made over those bytes, as a bug would write them.
        let key150 = ProfileKey::Uuid(Uuid(150 * 7919)).encode();
        let mut r = Reader::new(&good);
        let mut at = 0;
        while let Some(p) = next_or_end(&mut r).unwrap() {
            if p.key == key150.as_slice() {
                break;
            }
            at = r.offset();
        }
        let mut base = good.clone();
        let count_at = at + 1 + key150.len();
        assert_eq!(base[count_at], 1);
        base[count_at] = 2;
        let index_bytes = crate::blocks::index_of(&base);
        let index = BlockIndex::decode(&index_bytes).unwrap();
        assert!(index.block_of(&key150) > 0);
        // A delta of two profiles, the second cut short.
        let delta = merge(
            &w,
            None,
            &[(
                &format!("{}\td_sid=24\n{}\td_sid=24\n", uuid(7919), uuid(3 * 7919)),
                false,
                21,
            )],
            1000,
        )
        .payload
        .unwrap();
        let night = |line: &str, base: &[u8], delta: &[u8], index: Option<&BlockIndex<'_>>| {
            delta_night(&w, line, (2000, 1000), base, index, delta, None).map(drop)
        };
        let line = format!("{}\td_sid=26\n", uuid(150 * 7919));
        for index in [None, Some(&index)] {
            let err = night(&line, &base, &[], index).unwrap_err();
            let MergeError::Stored(Unreadable::Base(t)) = err else {
                panic!("{err}");
            };
            assert!(t.offset > at && t.offset <= r.offset(), "{t:?} {at}");
            assert!(
                err.to_string()
                    .starts_with("in the base, record truncated at byte ")
            );
            let err = night(&line, &good, &delta[..delta.len() - 2], index).unwrap_err();
            let MergeError::Stored(Unreadable::Delta(t)) = err else {
                panic!("{err}");
            };
            assert!(
                t.offset > delta.len() / 2 && t.offset <= delta.len(),
                "{t:?}"
            );
        }
        // The whole merge says where in the partition.
        let err = night_of(
            &w,
            &[(&line, false, 21)],
            2000,
            Some(1000),
            true,
            |bufs, ctx| merge_partition(Some(&base), bufs, ctx).map(drop),
        )
        .unwrap_err();
        let Unreadable::Truncated(t) = err else {
            panic!("{err}");
        };
        assert!(t.offset > at && t.offset <= r.offset(), "{t:?} {at}");
    }

    #[test]
    fn a_delta_past_its_limit_gives_up() {
        let w = world();
        let line = format!("{U}\td_sid=24,d_sid=25\n");
        let stored = merge(&w, None, &[(&line, false, 21)], 1000)
            .payload
            .unwrap();
        let (base, delta) = layered(&stored);
        let other = "00000000000000000000000000000000000017\td_sid=26\n";
        let merged = |limit| {
            night_of(
                &w,
                &[(other, false, 21)],
                2000,
                Some(1000),
                true,
                |bufs, ctx| {
                    merge_partition_delta(&base, &delta, None, None, bufs, ctx, limit, &mut |_| {})
                        .unwrap()
                },
            )
        };
        let fits = merged(usize::MAX).unwrap().payload.unwrap();
        assert!(fits.len() > delta.len());
        assert!(merged(fits.len()).is_some());
        assert!(merged(fits.len() - 1).is_none());
    }

    /// A sink that keeps what it is given.
    #[derive(Default)]
    struct Recording {
        bytes: Vec<u8>,
        passed: Vec<usize>,
        /// The profiles it was told of, back to back.
        profiles: Vec<u8>,
    }

    impl PartSink for Recording {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
            self.bytes.extend_from_slice(bytes);
            Ok(())
        }

        fn passed(&mut self, offset: usize) {
            self.passed.push(offset);
        }

        fn profile(&mut self, raw: &[u8], key: &[u8], counts: &Counts) {
            let stored = next_stored(&mut Reader::new(raw)).unwrap();
            assert_eq!((stored.raw, stored.key), (raw, key));
            assert_eq!(Counts::of(&stored), *counts);
            self.profiles.extend_from_slice(raw);
        }
    }

    #[test]
    fn a_sink_that_cannot_write_stops_the_merge() {
        struct Full;
        impl PartSink for Full {
            fn write(&mut self, _: &[u8]) -> std::io::Result<()> {
                Err(std::io::Error::other("disk full"))
            }
        }
        let w = world();
        let line = format!("{U}\td_sid=24,d_sid=25\n");
        let stored = merge(&w, None, &[(&line, false, 21)], 1000)
            .payload
            .unwrap();
        let index = IdIndex::default();
        let ctx = FileCtx {
            file: 0,
            target_ds: 21,
            overwrite: false,
            id_kind: IdKind::AamUuid,
            trait_owner: &w.owners,
            rules: &w.rules,
            index: Some(&index),
            partitions: 1,
        };
        let other = "00000000000000000000000000000000000017\td_sid=26\n";
        let chunk = process_chunk(other.as_bytes(), 1, &ctx);
        let metas = [FileMeta {
            job: 0,
            overwrite: false,
            target_ds: 21,
        }];
        let merge_ctx = MergeCtx {
            files: &metas,
            jobs: 1,
            ttl_days: &w.ttl,
            as_of: 2000,
            segments: &w.segments,
            reevaluate_all: false,
            recency_days: &w.recency,
            previous_as_of: Some(1000),
            trust_events: true,
            keep_changes: false,
        };
        let err = merge_partition_into(Some(&stored), &[&chunk.parts[0]], &merge_ctx, &mut Full)
            .unwrap_err();
        assert!(matches!(err, MergeError::Write(_)), "{err}");
        assert_eq!(err.to_string(), "cannot write the new partition: disk full");
    }

    fn traits(out: &PartOut) -> Vec<(TraitId, Dpid, i64)> {
        let payload = out.payload.as_deref().unwrap_or_default();
        let profiles = decode(payload).unwrap();
        let key = ProfileKey::Uuid(Uuid::parse(U.as_bytes()).unwrap()).encode();
        profiles
            .iter()
            .find(|p| p.key == key.as_slice())
            .map(|p| {
                p.entries
                    .iter()
                    .map(|e| (e.trait_id, e.data_source, e.realized_at))
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn sync_applies_in_order_and_the_last_instruction_wins() {
        let w = world();
        let text = format!(
            "{U}\td_sid=24,d_unsid=24,d_sid=25\n{U}\td_unsid=26,ic=7\n{U}\t25:0, d_sid=25\n"
        );
        let out = merge(&w, None, &[(&text, false, 21)], 1000);
        assert_eq!(traits(&out), vec![(25, 21, 1000)]);
        let c = &out.files[0];
        // Line 2 removes a trait the user does not hold and signals nothing: No Trait Realized.
        assert_eq!((c.stored_records, c.no_trait_realized), (2, 1));
        assert_eq!((c.total_signals, c.total_unused_signals), (7, 2));
        assert_eq!((c.total_realized_traits, c.total_removed_traits), (3, 2));
        assert_eq!(c.total_devices, 1);
        assert_eq!(out.ntr_samples[0], vec![crate::ingest::seq(0, 2)]);
    }

    #[test]
    fn day1_sync_day2_overwrite_replaces_only_the_target_data_source() {
        let w = world();
        let day1 = format!("{U}\td_sid=24,d_sid=25,d_sid=26\n");
        let out1 = merge(&w, None, &[(&day1, false, 21)], 1000);
        let other = format!("{U}\td_sid=40\n");
        let out1b = merge(&w, out1.payload.as_deref(), &[(&other, false, 22)], 1000);
        let day2 = format!("{U}\td_sid=26\n{U}\td_sid=27, d_unsid=26\n");
        let out2 = merge(&w, out1b.payload.as_deref(), &[(&day2, true, 21)], 2000);
        assert_eq!(
            traits(&out2),
            vec![(26, 21, 2000), (27, 21, 2000), (40, 22, 1000)]
        );
        let c = &out2.files[0];
        assert_eq!(
            (
                c.stored_records,
                c.total_removed_traits,
                c.total_realized_traits
            ),
            (2, 2, 2)
        );
        // The d_unsid item is ignored in an overwrite file: an unused signal.
        assert_eq!(c.total_unused_signals, 1);
    }

    #[test]
    fn overwrite_with_an_empty_line_clears_and_counts_as_stored() {
        let w = world();
        let out1 = merge(&w, None, &[(&format!("{U}\td_sid=24\n"), false, 21)], 1000);
        let out2 = merge(
            &w,
            out1.payload.as_deref(),
            &[(&format!("{U}\n"), true, 21)],
            2000,
        );
        assert_eq!(traits(&out2), vec![]);
        assert_eq!(out2.profiles, 0);
        let c = &out2.files[0];
        assert_eq!(
            (
                c.stored_records,
                c.no_trait_realized,
                c.total_removed_traits
            ),
            (1, 0, 1)
        );
    }

    #[test]
    fn ttl_expires_exactly_at_realization_plus_ttl() {
        let w = world();
        let out1 = merge(
            &w,
            None,
            &[(&format!("{U}\td_sid=27,d_sid=26\n"), false, 21)],
            1000,
        );
        // Day-start granularity: at or before the moment itself.
        assert_eq!(out1.min_expiry, Some(DAY));
        let just_before = merge(&w, out1.payload.as_deref(), &[], 1000 + DAY - 1);
        assert_eq!(just_before.expired, 0);
        assert!(
            just_before.payload.is_none(),
            "nothing changed: the partition is carried over"
        );
        let at = merge(&w, out1.payload.as_deref(), &[], 1000 + DAY);
        assert_eq!(at.expired, 1);
        assert_eq!(
            traits(&at),
            vec![(26, 21, 1000)],
            "ttl_days = 0 never expires"
        );
        assert_eq!(at.min_expiry, None);
    }

    #[test]
    fn foreign_traits_fail_validation_and_are_never_touched() {
        let w = world();
        let out = merge(
            &w,
            None,
            &[(&format!("{U}\td_sid=40,d_unsid=40,d_sid=99\n"), false, 21)],
            1000,
        );
        let c = &out.files[0];
        assert_eq!(
            (
                c.total_traits_failed_validation,
                c.total_users_with_failed_traits
            ),
            (2, 1)
        );
        assert_eq!((c.no_trait_realized, c.total_unused_signals), (1, 3));
        assert_eq!(out.job_failed_users, vec![1]);
    }

    #[test]
    fn signals_realize_rule_traits_of_the_target_data_source_only() {
        let w = world();
        let text = format!(
            "{U}\tproduct=tablet, d_unsid=28, TIER = \"Gold\", x=1\n{U}\ttier=gold\n{U}\tproduct=Tablet,tier=gold,28:0\n"
        );
        let out = merge(&w, None, &[(&text, false, 21)], 1000);
        // Line 1: product (touch) and tier (realize at item 2) — but `TIER` is not the key
        // `tier` (keys are exact), so nothing qualifies; d_unsid=28 removes nothing.
        // Line 2: tier alone does not satisfy the AND. Line 3: qualifies at item 1, then 28:0
        // removes it again (instructions apply in item order).
        assert_eq!(traits(&out), vec![]);
        let c = &out.files[0];
        assert_eq!((c.stored_records, c.no_trait_realized), (1, 2));
        assert_eq!((c.total_signals, c.total_unused_signals), (8, 5));
        assert_eq!((c.total_realized_traits, c.total_removed_traits), (1, 1));
        // Trait 29 belongs to data source 22: never realized by a data source 21 file.
        let out = merge(
            &w,
            None,
            &[(&format!("{U}\ttier=gold,product=TABLET\n"), false, 21)],
            1000,
        );
        assert_eq!(traits(&out), vec![(28, 21, 1000)]);
        assert_eq!(
            (
                out.files[0].total_signals,
                out.files[0].total_unused_signals
            ),
            (2, 0)
        );
    }

    fn segments(out: &PartOut) -> Vec<u32> {
        let payload = out.payload.as_deref().unwrap_or_default();
        let key = ProfileKey::Uuid(Uuid::parse(U.as_bytes()).unwrap()).encode();
        decode(payload)
            .unwrap()
            .into_iter()
            .find(|p| p.key == key.as_slice())
            .map(|p| p.segments)
            .unwrap_or_default()
    }

    #[test]
    fn memberships_follow_trait_changes_and_expiry() {
        let w = world();
        // A new profile: 1002 (NOT 27T) qualifies an empty profile, so it is a candidate.
        let out1 = merge(&w, None, &[(&format!("{U}\td_sid=24\n"), false, 21)], 1000);
        assert_eq!(segments(&out1), vec![1002]);
        assert_eq!(out1.membership_changes, 1);
        let out2 = merge(
            &w,
            out1.payload.as_deref(),
            &[(&format!("{U}\td_sid=25,d_sid=26,d_sid=27\n"), false, 21)],
            2000,
        );
        // 24 (at 1000) and 26 (at 2000) are both within a day of 2000: frequency 2.
        assert_eq!(segments(&out2), vec![1001, 1003]);
        // Trait 27 expires after one day: 1002 qualifies again, and 1003's recency window has
        // moved past trait 24's realization.
        let out3 = merge(&w, out2.payload.as_deref(), &[], 2000 + DAY);
        assert_eq!(out3.expired, 1);
        assert_eq!(segments(&out3), vec![1001, 1002]);
        // Re-realizing 24 and 26 together brings 1003 back.
        let out4 = merge(
            &w,
            out3.payload.as_deref(),
            &[(&format!("{U}\td_sid=24,d_sid=26\n"), false, 21)],
            10 * DAY,
        );
        assert_eq!(segments(&out4), vec![1001, 1002, 1003]);
    }

    proptest::proptest! {
        /// The position of a trait among a profile's entries is the binary search's, for
        /// profiles short (counted) and long (searched), traits present and absent.
        #[test]
        fn entry_position_matches_the_binary_search(
            traits in proptest::collection::btree_set(0u32..100, 0..40),
            probe in 0u32..101,
        ) {
            let entries: Vec<Entry> = traits
                .iter()
                .map(|&trait_id| Entry { trait_id, data_source: 21, realized_at: 0 })
                .collect();
            proptest::prop_assert_eq!(
                position(&entries, probe),
                entries.binary_search_by_key(&probe, |e| e.trait_id)
            );
        }

        /// The prefix sort gives the standard sort's order of prefixes and keeps every ref,
        /// over spans narrow and wide (all prefixes equal, a few bits, all 64).
        #[test]
        fn prefix_sort_matches_the_standard_sort(
            base in proptest::num::u64::ANY,
            width in 0u32..=64,
            n in 0usize..20_000,
            seed in proptest::num::u64::ANY,
        ) {
            let mut x = seed | 1;
            let refs: Vec<OpRef> = (0..n)
                .map(|i| {
                    // xorshift: fast and fixed by the seed.
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let mask = if width == 64 { u64::MAX } else { (1u64 << width) - 1 };
                    OpRef { prefix: base.wrapping_add(x & mask), buf: (i % 7) as u32, op: i as u32 }
                })
                .collect();
            let mut sorted = refs.clone();
            sort_by_prefix(&mut sorted);
            let mut expected = refs;
            expected.sort_unstable_by_key(|r| (r.prefix, r.op));
            let mut got = sorted.clone();
            got.sort_by_key(|r| (r.prefix, r.op));
            proptest::prop_assert!(sorted.windows(2).all(|w| w[0].prefix <= w[1].prefix));
            let key = |r: &OpRef| (r.prefix, r.buf, r.op);
            proptest::prop_assert_eq!(
                got.iter().map(key).collect::<Vec<_>>(),
                expected.iter().map(key).collect::<Vec<_>>()
            );
        }

        /// Copying quiet profiles through unread changes nothing: over any sequence of nights
        /// (lines or none, TTLs running out, recency windows passing), a merge that trusts the
        /// stored events gives the same partition and counters as one that reads every profile.
        #[test]
        fn trusting_stored_events_changes_nothing(
            nights in proptest::collection::vec(
                (
                    proptest::collection::vec(
                        (0usize..3, proptest::collection::vec(0usize..7, 1..4)),
                        0..4,
                    ),
                    proptest::bool::weighted(0.2),
                    0usize..7,
                ),
                1..7,
            )
        ) {
            const ITEMS: [&str; 7] =
                ["d_sid=24", "d_sid=25", "d_sid=26", "d_sid=27", "d_unsid=24", "d_unsid=27", "d_sid=40"];
            const STEPS: [i64; 7] = [1, 3600, DAY - 1, DAY, DAY + 1, 3 * DAY, 121 * DAY];
            let users = [U, "00000000000000000000000000000000000017", "99999999999999999999999999999999999999"];
            let w = world();
            let (mut trusted, mut read): (Option<Vec<u8>>, Option<Vec<u8>>) = (None, None);
            // The same nights kept as a base and a delta, folded when the delta outgrows the
            // base.
            let (mut base, mut delta): (Vec<u8>, Vec<u8>) = (Vec::new(), Vec::new());
            let (mut as_of, mut previous) = (1000i64, None);
            for (lines, overwrite, step) in nights {
                let text: String = lines
                    .iter()
                    .map(|(user, items)| {
                        let items: Vec<&str> = items.iter().map(|&i| ITEMS[i]).collect();
                        format!("{}\t{}\n", users[*user], items.join(","))
                    })
                    .collect();
                let files = [(text.as_str(), overwrite, 21)];
                let files = if text.is_empty() { &files[..0] } else { &files[..] };
                let a = merge_with(&w, trusted.as_deref(), files, as_of, previous, true);
                let b = merge_with(&w, read.as_deref(), files, as_of, previous, false);
                proptest::prop_assert_eq!(format!("{a:?}"), format!("{b:?}"));
                let c = merge_delta(&w, &base, &delta, files, as_of, previous);
                assert_same_night(&c, &a);
                if let Some(new_delta) = c.payload {
                    delta = new_delta;
                }
                let partition = super::super::overlay(&base, &delta).unwrap();
                let expected = a.payload.as_deref().or(trusted.as_deref()).unwrap_or_default();
                proptest::prop_assert_eq!(&partition, expected);
                if delta.len() > base.len() {
                    (base, delta) = (partition, Vec::new());
                }
                if a.payload.is_some() {
                    trusted = a.payload;
                }
                if b.payload.is_some() {
                    read = b.payload;
                }
                previous = Some(as_of);
                as_of += STEPS[step];
            }
        }
    }
}
