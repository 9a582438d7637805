//! The partitioned profile store: every profile's trait realizations, one file per partition,
//! profiles sorted by encoded key ([`crate::model::ProfileKey::encode`]).
//!
//! A stored profile is a header the merge can act on without decoding the rest, then a body:
//!
//! ```text
//! key (varint length, bytes) | entry count | expiry day | flip day | body length | body
//! body: segment count, segments | entries (trait ID, data source, realization time)
//! ```
//!
//! The days ([`Events`]) say when the profile can next change with no line of its own: an
//! entry expiring, or a recency window of a segment opening or closing. A night whose as-of
//! time is before both copies the profile's bytes through without reading its body, so a
//! night's merge costs a header per quiet profile instead of a decode. The segments come first
//! in the body because an export reads them and skips the entries by the body length.

pub mod merge;

use crate::codec::{Reader, Truncated, Writer};
use crate::model::{Dpid, Timestamp, TraitId};

/// Seconds in a day: [`Events`] are stored as days.
pub const SECONDS_PER_DAY: i64 = 86_400;

/// One trait realization on a profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub trait_id: TraitId,
    /// The data source the trait was onboarded to when realized.
    pub data_source: Dpid,
    pub realized_at: Timestamp,
}

/// When a stored profile can next change by the clock alone, as whole days since the Unix
/// epoch, rounded down (so at or before the moment itself: a night on that day reads the
/// profile and finds out). `None`: never, under the TTLs and segment rules it was written with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Events {
    /// The day its earliest-expiring entry expires.
    pub expiry_day: Option<u32>,
    /// The day of the earliest moment after it was written at which a recency term over one of
    /// its traits changes its answer.
    pub flip_day: Option<u32>,
}

impl Events {
    /// The day of moment `t` (clamped to day 0 before the epoch).
    pub fn day_of(t: Timestamp) -> u32 {
        u32::try_from(t.max(0).div_euclid(SECONDS_PER_DAY)).unwrap_or(u32::MAX)
    }

    /// The first moment of `day`.
    pub fn start_of(day: u32) -> Timestamp {
        i64::from(day) * SECONDS_PER_DAY
    }

    /// Whether nothing can change by the clock up to and including `as_of`.
    pub fn quiet_at(self, as_of: Timestamp) -> bool {
        [self.expiry_day, self.flip_day]
            .into_iter()
            .flatten()
            .all(|day| as_of < Events::start_of(day))
    }
}

/// One stored profile, borrowing its partition's bytes for the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile<'a> {
    pub key: &'a [u8],
    pub events: Events,
    /// Sorted by trait ID, one entry per trait.
    pub entries: Vec<Entry>,
    /// The segments the profile qualified for when it last changed, sorted.
    pub segments: Vec<u32>,
}

/// A stored profile's header, with its body and its whole encoding still undecoded.
#[derive(Clone, Copy, Debug)]
pub struct Stored<'a> {
    pub key: &'a [u8],
    /// How many entries the body holds.
    pub entries: u32,
    pub events: Events,
    /// Segments then entries, for [`decode_body`].
    pub body: &'a [u8],
    /// The profile's whole encoding, header included.
    pub raw: &'a [u8],
}

impl Stored<'_> {
    /// Whether this is a delta's tombstone ([`encode_tombstone`]).
    pub fn is_tombstone(&self) -> bool {
        self.entries == 0
    }
}

/// The state-relative name of a profile partition's block index ([`crate::blocks`]), written
/// with its base.
pub fn index_name(part: u32) -> String {
    part_name(part) + crate::state::INDEX_SUFFIX
}

/// The state-relative name of a profile partition.
pub fn part_name(part: u32) -> String {
    format!("profiles/part-{part:04}")
}

/// The state-relative name of a profile partition's delta: the profiles that changed since its
/// base file ([`part_name`]) was written, in key order, and a tombstone ([`Stored::is_tombstone`])
/// for each profile of the base since dropped. A partition is its base with its delta laid over
/// it ([`Overlaid`]); a partition without a delta is its base alone.
pub fn delta_name(part: u32) -> String {
    part_name(part) + crate::state::DELTA_SUFFIX
}

/// The state-relative name of what a profile partition's delta changes of its base's block
/// counts ([`crate::blocks::DeltaCounts`]).
pub fn delta_counts_name(part: u32) -> String {
    delta_name(part) + crate::state::COUNTS_SUFFIX
}

/// Writes a delta's tombstone for `key`: a profile without entries, which a stored partition
/// never holds (a profile without traits is dropped).
pub fn encode_tombstone(w: &mut Writer, key: &[u8]) {
    encode_into(w, key, Events::default(), &[], &[]);
}

/// One key of a partition read as its base with its delta laid over it.
#[derive(Clone, Copy, Debug)]
pub struct Layered<'a> {
    pub key: &'a [u8],
    /// The profile: the delta's record when it has the key, else the base's; `None` when the
    /// delta's record is a tombstone.
    pub stored: Option<Stored<'a>>,
    /// Whether the base has the key, so that dropping it needs a tombstone.
    pub in_base: bool,
    /// The delta's record for the key, tombstones included.
    pub delta_raw: Option<&'a [u8]>,
}

/// Why stored profiles could not be read.
#[derive(Clone, Copy, Debug, thiserror::Error)]
pub enum Unreadable {
    #[error(transparent)]
    Truncated(#[from] Truncated),
    /// Of a partition read as its base and its delta ([`Overlaid`]): which of the two, at an
    /// offset in that file.
    #[error("in the base, {0}")]
    Base(Truncated),
    #[error("in the delta, {0}")]
    Delta(Truncated),
    #[error(
        "the block at byte {0} does not match its checksum in the partition's index \
         (edited or damaged)"
    )]
    Block(usize),
    #[error(
        "the block counts call the block at byte {0} quiet, but a profile in it is not \
         (edited or damaged)"
    )]
    Counts(usize),
}

/// A base and its delta read together in key order: each key once, the delta's record over
/// the base's.
pub struct Overlaid<'a> {
    base_bytes: &'a [u8],
    /// Reads `base_bytes` from `base_from` on.
    base: Reader<'a>,
    base_from: usize,
    delta: Reader<'a>,
    base_head: Option<Stored<'a>>,
    delta_head: Option<Stored<'a>>,
    /// With a block index: the blocks to read, the others stepped over.
    skips: Option<Skips<'a>>,
    /// Without one: the base's block index, built as the base is read.
    indexer: Option<crate::blocks::Indexer>,
}

/// The blocks of the base an [`Overlaid`] steps over, and what they hold.
struct Skips<'a> {
    blocks: &'a [crate::blocks::Block<'a>],
    touched: &'a [bool],
    /// Per block, what it counts (with the delta laid over it).
    counts: &'a [crate::blocks::Counts],
    /// The next block to come to.
    next: usize,
    skipped: crate::blocks::Counts,
}

impl<'a> Overlaid<'a> {
    pub fn new(base: &'a [u8], delta: &'a [u8]) -> Result<Overlaid<'a>, Unreadable> {
        Overlaid::build(base, delta, None)
    }

    /// [`Overlaid::new`] building the base's block index as it reads it, for a base that has
    /// none (a state written before indexes): see [`Overlaid::take_index`].
    pub fn indexing(base: &'a [u8], delta: &'a [u8]) -> Result<Overlaid<'a>, Unreadable> {
        let mut layers = Overlaid::build(base, delta, None)?;
        // The first profile was read before the indexer came: read it again.
        layers.base = Reader::new(base);
        layers.indexer = Some(crate::blocks::Indexer::default());
        layers.base_head = layers.next_base()?;
        Ok(layers)
    }

    /// The base's block index, once an [`indexing`](Self::indexing) walk has read the whole
    /// base.
    pub fn take_index(&mut self) -> Option<Vec<u8>> {
        if self.base_head.is_some() || !self.base.is_empty() {
            return None;
        }
        self.indexer.take().map(crate::blocks::Indexer::finish)
    }

    /// [`Overlaid::new`] reading only the base's blocks that `touched` marks (by `index`, the
    /// base's block index), each checked against its checksum first, and stepping over the
    /// others, which [`skipped`](Self::skipped) adds up from `counts`.
    pub fn with_blocks(
        base: &'a [u8],
        delta: &'a [u8],
        index: &'a crate::blocks::BlockIndex<'a>,
        touched: &'a [bool],
        counts: &'a [crate::blocks::Counts],
    ) -> Result<Overlaid<'a>, Unreadable> {
        let skips = Skips {
            blocks: &index.blocks,
            touched,
            counts,
            next: 0,
            skipped: crate::blocks::Counts::default(),
        };
        Overlaid::build(base, delta, Some(skips))
    }

    fn build(
        base: &'a [u8],
        delta: &'a [u8],
        skips: Option<Skips<'a>>,
    ) -> Result<Overlaid<'a>, Unreadable> {
        let mut delta = Reader::new(delta);
        let mut layers = Overlaid {
            base_bytes: base,
            base: Reader::new(base),
            base_from: 0,
            delta_head: next_or_end(&mut delta).map_err(Unreadable::Delta)?,
            delta,
            base_head: None,
            skips,
            indexer: None,
        };
        layers.base_head = layers.next_base()?;
        Ok(layers)
    }

    /// What the blocks stepped over hold.
    pub fn skipped(&self) -> crate::blocks::Counts {
        self.skips.as_ref().map(|s| s.skipped).unwrap_or_default()
    }

    /// The base's next profile, past the blocks to step over.
    fn next_base(&mut self) -> Result<Option<Stored<'a>>, Unreadable> {
        if let Some(skips) = &mut self.skips {
            let mut at = self.base_from + self.base.offset();
            while let Some(block) = skips.blocks.get(skips.next).filter(|b| b.start == at) {
                skips.next += 1;
                if skips.touched[skips.next - 1] {
                    block.checked(self.base_bytes).map_err(Unreadable::Block)?;
                    break;
                }
                skips
                    .skipped
                    .add(skips.counts.get(skips.next - 1).unwrap_or(&block.counts));
                at += block.len;
                self.base = Reader::new(&self.base_bytes[at..]);
                self.base_from = at;
            }
        }
        // Offsets in the base file, whichever block the reader started at.
        let from = self.base_from;
        let next = next_or_end(&mut self.base).map_err(|t| {
            Unreadable::Base(Truncated {
                offset: from + t.offset,
            })
        })?;
        if let (Some(indexer), Some(stored)) = (&mut self.indexer, next) {
            indexer.push(stored.raw, stored.key, &crate::blocks::Counts::of(&stored));
        }
        Ok(next)
    }

    /// The next key, or `None` past the last.
    pub fn next_layer(&mut self) -> Result<Option<Layered<'a>>, Unreadable> {
        let from_base = match (self.base_head, self.delta_head) {
            (Some(b), Some(d)) => b.key < d.key,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if from_base {
            let Some(b) = self.base_head else {
                return Ok(None);
            };
            self.base_head = self.next_base()?;
            return Ok(Some(Layered {
                key: b.key,
                stored: Some(b),
                in_base: true,
                delta_raw: None,
            }));
        }
        let Some(d) = self.delta_head else {
            return Ok(None);
        };
        let in_base = self.base_head.is_some_and(|b| b.key == d.key);
        if in_base {
            self.base_head = self.next_base()?;
        }
        self.delta_head = next_or_end(&mut self.delta).map_err(Unreadable::Delta)?;
        Ok(Some(Layered {
            key: d.key,
            stored: (!d.is_tombstone()).then_some(d),
            in_base,
            delta_raw: Some(d.raw),
        }))
    }

    /// How far into the base the walk is: every base byte before it has been read.
    pub fn base_offset(&self) -> usize {
        self.base_from + self.base.offset() - self.base_head.map_or(0, |b| b.raw.len())
    }
}

/// What each block of `index` (the block index of `base`) counts with `delta` laid over it,
/// each key in the block [`crate::blocks::BlockIndex::block_of`] gives: what a delta's
/// [`crate::blocks::DeltaCounts`] must say.
pub fn overlay_counts(
    index: &crate::blocks::BlockIndex<'_>,
    base: &[u8],
    delta: &[u8],
) -> Result<Vec<crate::blocks::Counts>, Unreadable> {
    let mut counts = vec![crate::blocks::Counts::default(); index.blocks.len()];
    let mut blocks = crate::blocks::BlockCursor::default();
    let mut layers = Overlaid::new(base, delta)?;
    while let Some(l) = layers.next_layer()? {
        if let (Some(stored), Some(slot)) = (l.stored, counts.get_mut(blocks.of(index, l.key))) {
            slot.add(&crate::blocks::Counts::of(&stored));
        }
    }
    Ok(counts)
}

/// `error`, an offset in `part` (a record or its body), as an offset in `file`, the bytes
/// `part` was cut from (unchanged if it was not).
pub fn located(file: &[u8], part: &[u8], error: Truncated) -> Truncated {
    let start = (part.as_ptr() as usize).wrapping_sub(file.as_ptr() as usize);
    if start <= file.len() && part.len() <= file.len() - start {
        Truncated {
            offset: start + error.offset,
        }
    } else {
        error
    }
}

/// The next profile header at `r`, or `None` at its end.
pub(crate) fn next_or_end<'a>(r: &mut Reader<'a>) -> Result<Option<Stored<'a>>, Truncated> {
    if r.is_empty() {
        Ok(None)
    } else {
        next_stored(r).map(Some)
    }
}

/// The partition that `base` and its `delta` stand for, as one payload in key order (for the
/// readers that take a partition whole: exports that walk it, `inspect`, a merge that folds
/// the delta into a new base).
pub fn overlay(base: &[u8], delta: &[u8]) -> Result<Vec<u8>, Unreadable> {
    let mut out = Vec::with_capacity(base.len() + delta.len());
    let mut layers = Overlaid::new(base, delta)?;
    while let Some(l) = layers.next_layer()? {
        if let Some(stored) = l.stored {
            out.extend_from_slice(stored.raw);
        }
    }
    Ok(out)
}

/// Decodes a partition written by [`encode_into`]: profiles in key order.
pub fn decode(payload: &[u8]) -> Result<Vec<Profile<'_>>, Truncated> {
    let mut r = Reader::new(payload);
    let mut out = Vec::new();
    while !r.is_empty() {
        let mut entries = Vec::new();
        let mut segments = Vec::new();
        let stored = next_stored(&mut r)?;
        decode_body(&stored, &mut entries, &mut segments)?;
        out.push(Profile {
            key: stored.key,
            events: stored.events,
            entries,
            segments,
        });
    }
    Ok(out)
}

/// A profile partition of a state of format `format_version` in this build's layout: the
/// payload itself, or for format 1 (no headers, entries before segments) the same profiles
/// re-encoded with no [`Events`], which a run must not trust (see `MergeCtx::trust_events`).
pub fn in_current_layout(format_version: u32, payload: Vec<u8>) -> Result<Vec<u8>, Truncated> {
    if format_version >= crate::state::PROFILE_HEADERS_SINCE {
        return Ok(payload);
    }
    let mut r = Reader::new(&payload);
    let mut w = Writer::default();
    w.buf.reserve(payload.len() + payload.len() / 8);
    let (mut entries, mut segments) = (Vec::new(), Vec::new());
    while !r.is_empty() {
        let key = decode_v1(&mut r, &mut entries, &mut segments)?;
        encode_into(&mut w, key, Events::default(), &entries, &segments);
    }
    Ok(w.buf)
}

/// Decodes one profile of format 1: key, entry count, entries, segment count, segments.
fn decode_v1<'a>(
    r: &mut Reader<'a>,
    entries: &mut Vec<Entry>,
    segments: &mut Vec<u32>,
) -> Result<&'a [u8], Truncated> {
    let key = r.short_bytes()?;
    let n = r.varint_u32()? as usize;
    entries.clear();
    entries.reserve(n.min(r.remaining() / 3));
    decode_entries(r, n, entries)?;
    decode_segments(r, segments)?;
    Ok(key)
}

/// Reads the header of the profile at `r` and steps over its body.
pub fn next_stored<'a>(r: &mut Reader<'a>) -> Result<Stored<'a>, Truncated> {
    let start = r.offset();
    let key = r.short_bytes()?;
    let entries = r.varint_u32()?;
    let expiry_day = day(r)?;
    let flip_day = day(r)?;
    let len = usize::try_from(r.varint()?).map_err(|_| Truncated { offset: r.offset() })?;
    let body = r.take(len)?;
    Ok(Stored {
        key,
        entries,
        events: Events {
            expiry_day,
            flip_day,
        },
        body,
        raw: r.consumed_since(start),
    })
}

/// An optional day: 0 for none, else the day plus one.
pub(crate) fn day(r: &mut Reader<'_>) -> Result<Option<u32>, Truncated> {
    let at = r.offset();
    match r.varint()? {
        0 => Ok(None),
        v => u32::try_from(v - 1)
            .map(Some)
            .map_err(|_| Truncated { offset: at }),
    }
}

/// Decodes a stored profile's body into `entries` and `segments`, which are cleared first. The
/// body must hold exactly what its header counts.
pub fn decode_body(
    stored: &Stored<'_>,
    entries: &mut Vec<Entry>,
    segments: &mut Vec<u32>,
) -> Result<(), Truncated> {
    entries.clear();
    let mut r = Reader::new(stored.body);
    decode_segments(&mut r, segments)?;
    let n = stored.entries as usize;
    // Each entry takes at least 3 bytes: a lying count cannot reserve much.
    entries.reserve(n.min(r.remaining() / 3));
    decode_entries(&mut r, n, entries)?;
    ended(&r)
}

/// Appends `n` delta-encoded entries to `entries`.
fn decode_entries(r: &mut Reader<'_>, n: usize, entries: &mut Vec<Entry>) -> Result<(), Truncated> {
    let (mut trait_id, mut realized_at) = (0i64, 0i64);
    for _ in 0..n {
        let at = r.offset();
        trait_id = trait_id.wrapping_add(r.zigzag()?);
        let data_source = r.varint_u32()?;
        realized_at = realized_at.wrapping_add(r.zigzag()?);
        entries.push(Entry {
            trait_id: u32::try_from(trait_id).map_err(|_| Truncated { offset: at })?,
            data_source,
            realized_at,
        });
    }
    Ok(())
}

/// Decodes only a stored profile's segments into `segments` (cleared first), for readers that
/// need no trait realizations (an export without `TRAIT_LIST`): the entries are not read.
pub fn decode_segments_only(stored: &Stored<'_>, segments: &mut Vec<u32>) -> Result<(), Truncated> {
    decode_segments(&mut Reader::new(stored.body), segments)
}

/// A body must end where its last entry does: one encoding per profile.
fn ended(r: &Reader<'_>) -> Result<(), Truncated> {
    if r.is_empty() {
        Ok(())
    } else {
        Err(Truncated { offset: r.offset() })
    }
}

/// Reads a counted segment list into `segments` (cleared first).
fn decode_segments(r: &mut Reader<'_>, segments: &mut Vec<u32>) -> Result<(), Truncated> {
    segments.clear();
    let m = r.varint_u32()? as usize;
    segments.reserve(m.min(r.remaining()));
    let mut segment = 0i64;
    for _ in 0..m {
        let at = r.offset();
        segment = segment.wrapping_add(r.zigzag()?);
        segments.push(u32::try_from(segment).map_err(|_| Truncated { offset: at })?);
    }
    Ok(())
}

/// Appends one profile. Compact, because a state holds tens of millions of profiles and every
/// changed partition is rewritten: varint lengths and counts, and each trait ID, realization
/// time and segment ID as a zigzag varint of its difference to the previous one (entries are
/// sorted by trait and mostly realized by the same run, so most entries take 3-4 bytes instead
/// of 16).
pub fn encode_into(
    w: &mut Writer,
    key: &[u8],
    events: Events,
    entries: &[Entry],
    segments: &[u32],
) {
    w.short_bytes(key);
    w.varint(entries.len() as u64);
    for day in [events.expiry_day, events.flip_day] {
        w.varint(day.map_or(0, |d| u64::from(d) + 1));
    }
    // The body's length goes before it: one byte is reserved, and the body moves up in the
    // rare case its length takes more.
    let len_at = w.buf.len();
    w.buf.push(0);
    w.varint(segments.len() as u64);
    let mut segment = 0i64;
    for &s in segments {
        w.zigzag(i64::from(s).wrapping_sub(segment));
        segment = i64::from(s);
    }
    let (mut trait_id, mut realized_at) = (0i64, 0i64);
    for e in entries {
        w.zigzag(i64::from(e.trait_id).wrapping_sub(trait_id));
        w.varint(u64::from(e.data_source));
        w.zigzag(e.realized_at.wrapping_sub(realized_at));
        trait_id = i64::from(e.trait_id);
        realized_at = e.realized_at;
    }
    let len = w.buf.len() - len_at - 1;
    if len < 0x80 {
        w.buf[len_at] = len as u8;
    } else {
        let mut prefix = Writer::default();
        prefix.varint(len as u64);
        w.buf
            .splice(len_at..=len_at, prefix.buf.iter().copied())
            .for_each(drop);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut w = Writer::default();
        let e = Entry {
            trait_id: 24,
            data_source: 21,
            realized_at: 1_700_000_000,
        };
        let events = Events {
            expiry_day: Some(19_800),
            flip_day: None,
        };
        encode_into(&mut w, b"k1", events, &[e], &[1001, 1002]);
        encode_into(&mut w, b"k2", Events::default(), &[], &[]);
        let profiles = decode(&w.buf).unwrap();
        assert_eq!(
            profiles,
            vec![
                Profile {
                    key: b"k1",
                    events,
                    entries: vec![e],
                    segments: vec![1001, 1002]
                },
                Profile {
                    key: b"k2",
                    events: Events::default(),
                    entries: vec![],
                    segments: vec![]
                }
            ]
        );
        assert!(decode(&w.buf[..w.buf.len() - 2]).is_err());
    }

    #[test]
    fn format_1_partitions_are_read_in_the_current_layout() {
        // Two profiles as format 1 wrote them: key, entry count, entries (trait, data source
        // and time as deltas), segment count, segments (as deltas).
        let mut v1 = Writer::default();
        v1.short_bytes(b"k1");
        v1.varint(2);
        for (trait_delta, ds, time_delta) in [(24, 21, 1_700_000_000), (3, 21, 0)] {
            v1.zigzag(trait_delta);
            v1.varint(ds);
            v1.zigzag(time_delta);
        }
        v1.varint(2);
        v1.zigzag(1001);
        v1.zigzag(1);
        v1.short_bytes(b"k2");
        v1.varint(0);
        v1.varint(0);
        let upgraded = in_current_layout(1, v1.buf.clone()).unwrap();
        let entry = |trait_id| Entry {
            trait_id,
            data_source: 21,
            realized_at: 1_700_000_000,
        };
        assert_eq!(
            decode(&upgraded).unwrap(),
            vec![
                Profile {
                    key: b"k1",
                    events: Events::default(),
                    entries: vec![entry(24), entry(27)],
                    segments: vec![1001, 1002],
                },
                Profile {
                    key: b"k2",
                    events: Events::default(),
                    entries: vec![],
                    segments: vec![],
                },
            ]
        );
        assert_eq!(in_current_layout(2, upgraded.clone()).unwrap(), upgraded);
        assert!(in_current_layout(1, v1.buf[..v1.buf.len() - 1].to_vec()).is_err());
    }

    #[test]
    fn a_body_longer_than_its_counts_is_an_error() {
        let mut w = Writer::default();
        encode_into(&mut w, b"k", Events::default(), &[], &[7]);
        // Body length 2 (segment count, one segment) becomes 3 with a stray byte after it.
        let body_len_at = 1 + 1 + 1 + 2;
        assert_eq!(w.buf[body_len_at], 2);
        w.buf[body_len_at] = 3;
        w.buf.push(0);
        assert!(decode(&w.buf).is_err());
    }

    #[test]
    fn events_are_quiet_before_their_first_day() {
        let day = Events::day_of(1_795_399_200);
        assert_eq!(Events::start_of(day), 1_795_392_000);
        let events = Events {
            expiry_day: Some(day),
            flip_day: Some(day + 3),
        };
        assert!(events.quiet_at(Events::start_of(day) - 1));
        assert!(!events.quiet_at(Events::start_of(day)));
        assert!(Events::default().quiet_at(i64::MAX));
        assert_eq!(Events::day_of(-5), 0);
    }

    /// A profile's fields: key, events, entries (trait, data source, time), segments.
    type Fields = (Vec<u8>, Events, Vec<(u32, u32, i64)>, Vec<u32>);

    /// Any profile, at the extremes of every field.
    fn any_profile() -> impl proptest::strategy::Strategy<Value = Fields> {
        use proptest::prelude::*;
        let day = proptest::option::of(any::<u32>());
        (
            proptest::collection::vec(any::<u8>(), 0..40),
            (day.clone(), day).prop_map(|(expiry_day, flip_day)| Events {
                expiry_day,
                flip_day,
            }),
            proptest::collection::vec((any::<u32>(), any::<u32>(), any::<i64>()), 0..12),
            // Long enough lists for a body of more than 127 bytes.
            proptest::collection::vec(any::<u32>(), 0..40),
        )
    }

    proptest::proptest! {
        /// Any profiles round-trip, sorted or not.
        #[test]
        fn any_profiles_round_trip(
            profiles in proptest::collection::vec(any_profile(), 0..8)
        ) {
            let mut w = Writer::default();
            let want: Vec<Profile<'_>> = profiles
                .iter()
                .map(|(key, events, entries, segments)| Profile {
                    key,
                    events: *events,
                    entries: entries
                        .iter()
                        .map(|&(trait_id, data_source, realized_at)| Entry {
                            trait_id,
                            data_source,
                            realized_at,
                        })
                        .collect(),
                    segments: segments.clone(),
                })
                .collect();
            for p in &want {
                encode_into(&mut w, p.key, p.events, &p.entries, &p.segments);
            }
            proptest::prop_assert_eq!(&decode(&w.buf).unwrap(), &want);
            // The headers alone give the same keys, counts and events, and the segments alone
            // the same segments; each profile's bytes are its encoding.
            let mut r = Reader::new(&w.buf);
            let mut segments = Vec::new();
            for p in &want {
                let stored = next_stored(&mut r).unwrap();
                decode_segments_only(&stored, &mut segments).unwrap();
                proptest::prop_assert_eq!(
                    (stored.key, stored.entries as usize, stored.events, &segments),
                    (p.key, p.entries.len(), p.events, &p.segments)
                );
                let mut one = Writer::default();
                encode_into(&mut one, p.key, p.events, &p.entries, &p.segments);
                proptest::prop_assert_eq!(stored.raw, &one.buf[..]);
            }
            proptest::prop_assert!(r.is_empty());
            // Every strict prefix of a non-empty payload is an error or fewer profiles, never
            // a panic.
            for cut in 0..w.buf.len() {
                let _ = decode(&w.buf[..cut]);
            }
        }
    }

    proptest::proptest! {
        /// Whatever decodes re-encodes to the same bytes (one encoding per value): the merge
        /// copies an unchanged profile's stored bytes instead of encoding it again.
        #[test]
        fn decoding_then_encoding_gives_the_same_bytes(
            payload in proptest::collection::vec(proptest::num::u8::ANY, 0..48)
        ) {
            if let Ok(profiles) = decode(&payload) {
                let mut w = Writer::default();
                for p in &profiles {
                    encode_into(&mut w, p.key, p.events, &p.entries, &p.segments);
                }
                proptest::prop_assert_eq!(w.buf, payload);
            }
        }
    }

    #[test]
    fn a_typical_profile_is_small() {
        let entries: Vec<Entry> = (0..6)
            .map(|i| Entry {
                trait_id: 1000 + i * 37,
                data_source: 21,
                realized_at: 1_795_222_800,
            })
            .collect();
        let events = Events {
            expiry_day: Some(Events::day_of(1_795_222_800) + 120),
            flip_day: None,
        };
        let mut w = Writer::default();
        encode_into(&mut w, &[0u8; 17], events, &entries, &[5001, 5007]);
        // Key (1 + 17), count, expiry day (3), no flip day, body length, segment count, two
        // segments (2 + 1), first entry (trait 2, source 1, time 5), five more of 3 bytes
        // each: 50 bytes, where fixed widths took 133.
        assert_eq!(
            w.buf.len(),
            18 + 1 + 3 + 1 + 1 + 1 + 2 + 1 + (2 + 1 + 5) + 5 * (1 + 1 + 1)
        );
    }

    #[test]
    fn overlong_varints_are_errors() {
        let mut r = Reader::new(&[0xff; 11]);
        assert!(r.varint().is_err());
        // 2^64 does not fit.
        let mut r = Reader::new(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02]);
        assert!(r.varint().is_err());
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert_eq!(r.varint(), Ok(u64::MAX));
        // One encoding per value: an overlong zero or one is refused.
        assert!(Reader::new(&[0x80, 0x00]).varint().is_err());
        assert!(Reader::new(&[0x81, 0x00]).varint().is_err());
        assert_eq!(Reader::new(&[0x81, 0x01]).varint(), Ok(129));
    }
}
