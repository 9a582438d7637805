//! Destination exports (CONTRACT §6): what each destination receives, computed per partition
//! against what it last received, and written as AAM-named files with a `.info` control file
//! written last.
//!
//! State: `members/<DID>/part-XXXX` holds, per profile, the segments the destination was last
//! sent (restricted to its segments). An `iter` export diffs the current memberships against
//! it; only partitions whose memberships changed since the destination's last export are
//! diffed, unless the destination is new or its selection changed (then every partition is, so
//! its first `iter` is a full list). When the merge kept the profiles whose segments changed
//! tonight and the destination was last exported by the previous generation, just those are
//! diffed, and the partition is not read. Then, while they are few, only a delta of the members
//! is written ([`members_delta_name`]): the members changed since the file was written whole.
//!
//! Memory stays bounded whatever the number of users: each diffed partition's rows are
//! encoded compactly, sorted, and written to a run file at once ([`compute`]); the writer
//! merges the runs through buffered readers, joining rows of one user ([`Runs::merge`]).

use super::info::{InfoFile, write_info};
use super::names::{OutboundName, default_line, mode_str, sync_type_str};
use super::template::{Batch, Row, SegmentRef, TRAIT_TYPE_ONBOARDED, Template, TraitRef};
use crate::codec::{Reader, Truncated, Writer};
use crate::config::{Config, Destination, ExportMode};
use crate::idsync::index::PartBytes;
use crate::idsync::store::id_prefix;
use crate::model::{Dpid, ProfileKey, Timestamp, Uuid, device_format};
use crate::profile::Entry;
#[cfg(test)]
use crate::profile::Profile;
use anyhow::{Context as _, anyhow};
use md5::{Digest, Md5};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

/// One stored member: a profile key and the segments the destination last received for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member<'a> {
    pub key: &'a [u8],
    pub segments: Vec<u32>,
}

pub fn members_part_name(did: u32, part: u32) -> String {
    format!("members/{did}/part-{part:04}")
}

/// The delta of [`members_part_name`]: the members changed since that file was written whole,
/// in key order, and for each member of it since dropped a tombstone, the key with no
/// segments (a stored member always has some). See [`crate::state::DELTA_SUFFIX`].
pub fn members_delta_name(did: u32, part: u32) -> String {
    members_part_name(did, part) + crate::state::DELTA_SUFFIX
}

/// The members that `base` and its `delta` stand for, as one payload in key order.
pub fn overlay_members(base: &[u8], delta: &[u8]) -> Result<Vec<u8>, Truncated> {
    let mut out = Vec::with_capacity(base.len() + delta.len());
    let (mut base, mut delta) = (MemberCursor::new(base), MemberCursor::new(delta));
    while let Some((d, raw)) = delta.take_raw() {
        out.extend_from_slice(base.take_before(Some(d.key)));
        if base.peek().is_some_and(|b| b.key == d.key) {
            base.take();
        }
        if !d.segments.is_empty() {
            out.extend_from_slice(raw);
        }
    }
    out.extend_from_slice(base.take_before(None));
    match base.damaged.or(delta.damaged) {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

pub fn decode_members(payload: &[u8]) -> Result<Vec<Member<'_>>, Truncated> {
    let mut r = Reader::new(payload);
    let mut out = Vec::new();
    while !r.is_empty() {
        let key = r.bytes()?;
        let n = r.u32()? as usize;
        let mut segments = Vec::with_capacity(n.min(payload.len() / 4));
        for _ in 0..n {
            segments.push(r.u32()?);
        }
        out.push(Member { key, segments });
    }
    Ok(out)
}

/// What a destination takes from profiles: which segments, which ID space.
#[derive(Clone)]
pub struct DestinationView {
    pub did: u32,
    /// Active (not paused) segments of the destination, sorted.
    pub active: Vec<u32>,
    /// Paused segments of the destination, sorted: members are kept, nothing is sent.
    pub paused: Vec<u32>,
    /// `Some(dpid)` when the destination takes device IDs of that global device source;
    /// `None` for AAM UUIDs.
    pub device: Option<u32>,
    pub mode: ExportMode,
    /// The cross-device data sources, sorted: their customer-ID profiles go out under the AAM
    /// UUID their ID is synced to (to a destination of AAM UUIDs).
    pub cross_device: Vec<Dpid>,
}

impl DestinationView {
    pub fn new(config: &Config, dest: &Destination, full: bool) -> DestinationView {
        let mut active = Vec::new();
        let mut paused = Vec::new();
        for id in &dest.segments {
            match config.segments.get(id) {
                Some(s) if s.paused => paused.push(*id),
                Some(_) => active.push(*id),
                None => {}
            }
        }
        active.sort_unstable();
        paused.sort_unstable();
        let device = device_format(dest.master_dpid).map(|_| dest.master_dpid);
        let mode = if full { ExportMode::Full } else { dest.mode };
        let cross_device = config
            .data_sources
            .values()
            .filter(|d| d.cross_device)
            .map(|d| d.id)
            .collect();
        DestinationView {
            did: dest.id,
            active,
            paused,
            device,
            mode,
            cross_device,
        }
    }

    /// Changes whenever what the destination selects changes: its segments, their paused
    /// state, its ID space, or (for AAM UUIDs) which data sources' customer-ID profiles it
    /// receives. The members store is then diffed in every partition.
    pub fn fingerprint(&self) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for s in &self.active {
            h.update(&s.to_le_bytes());
        }
        h.update(b"|paused|");
        for s in &self.paused {
            h.update(&s.to_le_bytes());
        }
        h.update(&self.device.unwrap_or(0).to_le_bytes());
        if self.device.is_none() {
            h.update(b"|cross-device|");
            for d in &self.cross_device {
                h.update(&d.to_le_bytes());
            }
        }
        h.digest()
    }

    /// Writes the export key (for sorting and merging) of the profile `key` into `export_key`
    /// and returns its user ID, if this destination takes its ID space. Cross-device
    /// customer-ID profiles go out under the AAM UUID their ID is synced to, and not while
    /// unsynced.
    fn user_id<'k>(
        &self,
        key: &'k [u8],
        resolve: &Resolver<'_>,
        export_key: &mut Vec<u8>,
    ) -> Option<UserId<'k>> {
        export_key.clear();
        // The key's bytes are read in place (see `ProfileKey::encode_into`): decoding it to a
        // `ProfileKey` would allocate for every device and customer profile.
        let (&tag, rest) = key.split_first()?;
        match (tag, self.device) {
            (ProfileKey::TAG_UUID, None) => {
                let bytes = <[u8; 16]>::try_from(rest).ok()?;
                export_key.extend_from_slice(key);
                Some(UserId::Uuid(Uuid(u128::from_be_bytes(bytes))))
            }
            (ProfileKey::TAG_DEVICE, Some(want)) => match split_id(rest) {
                Some((dpid, id)) if dpid == want => {
                    let id = std::str::from_utf8(id).ok()?;
                    export_key.extend_from_slice(key);
                    Some(UserId::Text(id))
                }
                _ => None,
            },
            (ProfileKey::TAG_CUSTOMER, None) => {
                let u = split_id(rest).and_then(|(dpid, id)| resolve(dpid, id))?;
                ProfileKey::Uuid(u).encode_into(export_key);
                Some(UserId::Uuid(u))
            }
            _ => None,
        }
    }
}

/// The ID a destination receives a profile under; written out only for the rows it gets.
#[derive(Clone, Copy)]
enum UserId<'k> {
    Uuid(Uuid),
    Text(&'k str),
}

impl UserId<'_> {
    fn write_into(self, out: &mut String) {
        use std::fmt::Write as _;
        out.clear();
        match self {
            UserId::Uuid(u) => match u.digits() {
                // Digits are ASCII.
                Some(digits) => out.extend(digits.map(char::from)),
                // Writing to a String cannot fail.
                None => {
                    let _ = write!(out, "{u}");
                }
            },
            UserId::Text(id) => out.push_str(id),
        }
    }
}

/// The (DPID, ID) of a device or customer profile key after its tag.
fn split_id(rest: &[u8]) -> Option<(Dpid, &[u8])> {
    rest.split_first_chunk::<4>()
        .map(|(dpid, id)| (Dpid::from_be_bytes(*dpid), id))
}

/// Resolves a cross-device customer ID to the AAM UUID it is synced to.
pub type Resolver<'a> = dyn Fn(Dpid, &[u8]) -> Option<Uuid> + Sync + 'a;

/// One row of an export, before rendering.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportRow {
    /// Sort key: the exported user's profile key (AAM UUIDs sort numerically, device IDs by
    /// bytes).
    pub key: Vec<u8>,
    pub user: String,
    pub segments: Vec<u32>,
    pub removed: Vec<u32>,
    /// (trait, realized_at) of the profile, for `TRAIT_LIST`.
    pub traits: Vec<(u32, Timestamp)>,
}

/// A destination's active or paused segments, for the test every profile's segments go
/// through: a bitmap over their span when it is small (catalogs number segments densely), a
/// binary search otherwise.
struct SegmentSet {
    /// The first segment of the span; bit `s - base` of `bits` is segment `s`.
    base: u32,
    bits: Vec<u64>,
    /// The sorted segments, when the span is too wide for a bitmap.
    sorted: Vec<u32>,
}

/// The widest span given a bitmap: 128 KiB.
const SEGMENT_BITMAP_SPAN: u32 = 1 << 20;

impl SegmentSet {
    fn new(sorted: &[u32]) -> SegmentSet {
        match (sorted.iter().min(), sorted.iter().max()) {
            (Some(&lo), Some(&hi)) if hi - lo < SEGMENT_BITMAP_SPAN => {
                let mut bits = vec![0u64; ((hi - lo) / 64 + 1) as usize];
                for s in sorted {
                    let i = (s - lo) as usize;
                    bits[i / 64] |= 1 << (i % 64);
                }
                SegmentSet {
                    base: lo,
                    bits,
                    sorted: Vec::new(),
                }
            }
            _ => SegmentSet {
                base: 0,
                bits: Vec::new(),
                sorted: sorted.to_vec(),
            },
        }
    }

    fn contains(&self, s: u32) -> bool {
        if self.bits.is_empty() {
            return self.sorted.binary_search(&s).is_ok();
        }
        let Some(i) = s.checked_sub(self.base) else {
            return false;
        };
        let i = i as usize;
        self.bits
            .get(i / 64)
            .is_some_and(|w| (w >> (i % 64)) & 1 == 1)
    }

    /// `out` = the items of `a` in the set, in their order.
    fn intersect_into(&self, a: &[u32], out: &mut Vec<u32>) {
        out.clear();
        out.extend(a.iter().copied().filter(|&x| self.contains(x)));
    }
}

/// One destination's export as [`compute`] plans it, shared by its [`Differ`]s: its view, its
/// segment sets, whether its rows carry the profiles' traits, and whether every partition is
/// due (a full export, a new destination, or a changed selection) or only stale ones.
struct Selection {
    view: DestinationView,
    traits: bool,
    everything: bool,
    active: SegmentSet,
    paused: SegmentSet,
}

impl Selection {
    fn new(view: DestinationView, traits: bool, everything: bool) -> Selection {
        let (active, paused) = (SegmentSet::new(&view.active), SegmentSet::new(&view.paused));
        Selection {
            view,
            traits,
            everything,
            active,
            paused,
        }
    }
}

/// Where one encoded row lies in a [`PartRows`] buffer.
#[derive(Clone, Copy, Debug)]
struct Slot {
    /// [`id_prefix`] of the export key: settles nearly every comparison without a memcmp.
    prefix: u64,
    /// Where the record starts: the export key's `u32` length.
    start: usize,
    /// Where the export key ends.
    key_end: usize,
    /// Where the record ends.
    end: usize,
}

/// One partition's export rows, encoded back to back in one buffer.
///
/// A record is the export key ([`Writer::bytes`]), the user ID ([`Writer::short_bytes`]),
/// then three counted lists of varints: segments, removed segments, and traits as (trait ID,
/// zigzag realization time); the trait list is empty when the destination does not use them.
#[derive(Default)]
pub(crate) struct PartRows {
    w: Writer,
    slots: Vec<Slot>,
}

impl PartRows {
    fn push(
        &mut self,
        key: &[u8],
        user: &str,
        segments: &[u32],
        removed: &[u32],
        traits: impl ExactSizeIterator<Item = (u32, Timestamp)>,
    ) {
        let w = &mut self.w;
        let start = w.buf.len();
        w.bytes(key);
        let key_end = w.buf.len();
        w.short_bytes(user.as_bytes());
        for list in [segments, removed] {
            w.varint(list.len() as u64);
            for &s in list {
                w.varint(u64::from(s));
            }
        }
        w.varint(traits.len() as u64);
        for (id, at) in traits {
            w.varint(u64::from(id));
            w.zigzag(at);
        }
        self.slots.push(Slot {
            prefix: id_prefix(key),
            start,
            key_end,
            end: w.buf.len(),
        });
    }

    fn key(&self, s: &Slot) -> &[u8] {
        self.w.buf.get(s.start + 4..s.key_end).unwrap_or_default()
    }

    /// Whether there are no rows.
    pub(crate) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Sorts the rows by export key (the order of the merge) and writes them as a run file at
    /// `path`. Rows of one key keep their order.
    fn write_run(mut self, path: &Path) -> Result<(), RunFileError> {
        let mut slots = std::mem::take(&mut self.slots);
        slots.sort_by(|a, b| {
            a.prefix
                .cmp(&b.prefix)
                .then_with(|| self.key(a).cmp(self.key(b)))
        });
        let write_err = |source| RunFileError::Write {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::create(path).map_err(write_err)?;
        let mut out = std::io::BufWriter::with_capacity(RUN_BUFFER_BYTES, file);
        out.write_all(RUN_MAGIC).map_err(write_err)?;
        for s in &slots {
            let record = self.w.buf.get(s.start..s.end).unwrap_or_default();
            let len = u32::try_from(record.len())
                .ok()
                .filter(|&n| n != RUN_TRAILER)
                .ok_or_else(|| RunFileError::RowTooLarge {
                    path: path.to_path_buf(),
                    bytes: record.len(),
                })?;
            out.write_all(&len.to_le_bytes()).map_err(write_err)?;
            out.write_all(record).map_err(write_err)?;
        }
        out.write_all(&RUN_TRAILER.to_le_bytes())
            .map_err(write_err)?;
        out.write_all(&(slots.len() as u64).to_le_bytes())
            .map_err(write_err)?;
        out.flush().map_err(write_err)
    }
}

/// One stored member as it lies in a members payload: its key, and its segments still as
/// little-endian u32s.
#[derive(Clone, Copy)]
struct RawMember<'a> {
    key: &'a [u8],
    segments: &'a [u8],
}

/// A destination's members of one partition, read one at a time in key order from their
/// payload (never decoded into a list: a large partition's members are not held twice).
struct MemberCursor<'a> {
    payload: &'a [u8],
    r: Reader<'a>,
    /// The next member not yet taken, and where it starts in the payload.
    head: Option<RawMember<'a>>,
    head_start: usize,
    /// Where the payload could not be read, if it could not: the cursor stops there.
    damaged: Option<Truncated>,
}

impl<'a> MemberCursor<'a> {
    fn new(payload: &'a [u8]) -> MemberCursor<'a> {
        let mut cursor = MemberCursor {
            payload,
            r: Reader::new(payload),
            head: None,
            head_start: 0,
            damaged: None,
        };
        cursor.advance();
        cursor
    }

    /// Reads the next member into `head`.
    fn advance(&mut self) {
        self.head_start = self.r.offset();
        self.head = None;
        if self.r.is_empty() || self.damaged.is_some() {
            return;
        }
        let read = |r: &mut Reader<'a>| -> Result<RawMember<'a>, Truncated> {
            let key = r.bytes()?;
            let n = r.u32()? as usize;
            let segments = r.take(n.checked_mul(4).ok_or(Truncated { offset: r.offset() })?)?;
            Ok(RawMember { key, segments })
        };
        match read(&mut self.r) {
            Ok(m) => self.head = Some(m),
            Err(e) => self.damaged = Some(e),
        }
    }

    fn peek(&self) -> Option<RawMember<'a>> {
        self.head
    }

    fn take(&mut self) -> Option<RawMember<'a>> {
        let head = self.head;
        if head.is_some() {
            self.advance();
        }
        head
    }

    /// Takes the next member, with its stored bytes.
    fn take_raw(&mut self) -> Option<(RawMember<'a>, &'a [u8])> {
        let head = self.head?;
        let start = self.head_start;
        self.advance();
        Some((head, &self.payload[start..self.head_start]))
    }

    /// Takes every member before `key` (all of them for `None`) as their stored bytes.
    fn take_before(&mut self, key: Option<&[u8]>) -> &'a [u8] {
        let start = self.head_start;
        while let Some(m) = self.head
            && key.is_none_or(|k| m.key < k)
        {
            self.advance();
        }
        &self.payload[start..self.head_start]
    }
}

/// Diffs one partition's profiles against a destination's members, fed the profiles in key
/// order ([`Differ::profile`]) and then finished ([`Differ::finish`]): the rows to export
/// (with traits only when its [`Selection`] asks for them) and the new members payload. One
/// decoded partition feeds the differs of every destination that is due.
struct Differ<'a> {
    selection: &'a Selection,
    /// The destination's members of this partition, by key: the whole of them, or with
    /// `delta` the base that it lies over.
    members: MemberCursor<'a>,
    /// The members' delta, when the differ writes a new delta ([`Differ::layered`]) instead of
    /// every member.
    delta: Option<MemberCursor<'a>>,
    /// The segments of the member being diffed.
    old: Vec<u32>,
    rows: PartRows,
    new_members: Writer,
    export_key: Vec<u8>,
    user: String,
    current: Vec<u32>,
    old_active: Vec<u32>,
    kept_paused: Vec<u32>,
    removed: Vec<u32>,
    new_member: Vec<u32>,
}

impl<'a> Differ<'a> {
    /// A differ against `members`, a members payload ([`decode_members`]'s layout).
    fn new(selection: &'a Selection, members: &'a [u8]) -> Differ<'a> {
        Differ {
            selection,
            members: MemberCursor::new(members),
            delta: None,
            old: Vec::new(),
            rows: PartRows::default(),
            new_members: Writer::default(),
            export_key: Vec::new(),
            user: String::new(),
            current: Vec::new(),
            old_active: Vec::new(),
            kept_paused: Vec::new(),
            removed: Vec::new(),
            new_member: Vec::new(),
        }
    }

    /// A differ against the members that `base` and its `delta` stand for, which is fed
    /// tonight's [`changes`](Self::changes) and writes a new delta: the old one with those
    /// changes laid over it. The base's other members are read, not copied.
    fn layered(selection: &'a Selection, base: &'a [u8], delta: &'a [u8]) -> Differ<'a> {
        Differ {
            delta: Some(MemberCursor::new(delta)),
            ..Differ::new(selection, base)
        }
    }

    /// The next profile in key order: every member before it first, then the profile with
    /// its member, if any.
    fn profile(&mut self, key: &[u8], entries: &[Entry], segments: &[u32], resolve: &Resolver<'_>) {
        debug_assert!(self.delta.is_none(), "a layered differ is fed changes");
        while let Some(m) = self.members.peek()
            && m.key < key
        {
            self.members.take();
            self.user(m.key, None, Some(m), resolve);
        }
        let member = self.members.peek().filter(|m| m.key == key);
        if member.is_some() {
            self.members.take();
        }
        self.user(key, Some((entries, segments)), member, resolve);
    }

    /// Feeds the profiles whose segments changed since the destination's last export (in key
    /// order), instead of every profile ([`profile`](Self::profile)). Every other member is
    /// kept as it is: its profile's segments are those it was sent, so the diff would send
    /// nothing and write the member back unchanged.
    fn changes(&mut self, changes: &[Member<'_>], resolve: &Resolver<'_>) {
        if let Some(delta) = self.delta.take() {
            self.delta = Some(self.changes_layered(delta, changes, resolve));
            return;
        }
        for c in changes {
            // Unchanged members are written back as they are stored (the layout has one
            // encoding per member, and a member's segments are stored sorted).
            let kept = self.members.take_before(Some(c.key));
            self.new_members.buf.extend_from_slice(kept);
            let member = self.members.peek().filter(|m| m.key == c.key);
            if member.is_some() {
                self.members.take();
            }
            self.user(c.key, Some((&[], &c.segments)), member, resolve);
        }
        let kept = self.members.take_before(None);
        self.new_members.buf.extend_from_slice(kept);
    }

    /// [`changes`](Self::changes) of a [`layered`](Self::layered) differ: the new delta holds
    /// the old one's members but where tonight changes them, and for each changed member
    /// that the base has and that is now gone, a tombstone.
    fn changes_layered(
        &mut self,
        mut delta: MemberCursor<'a>,
        changes: &[Member<'_>],
        resolve: &Resolver<'_>,
    ) -> MemberCursor<'a> {
        for c in changes {
            let kept = delta.take_before(Some(c.key));
            self.new_members.buf.extend_from_slice(kept);
            self.members.take_before(Some(c.key));
            let base = self.members.peek().filter(|m| m.key == c.key);
            if base.is_some() {
                self.members.take();
            }
            let member = match delta.peek().filter(|m| m.key == c.key) {
                Some(d) => {
                    delta.take();
                    Some(d).filter(|d| !d.segments.is_empty())
                }
                None => base,
            };
            let written = self.new_members.buf.len();
            self.user(c.key, Some((&[], &c.segments)), member, resolve);
            if base.is_some() && self.new_members.buf.len() == written {
                write_member(&mut self.new_members, c.key, &[]);
            }
        }
        let kept = delta.take_before(None);
        self.new_members.buf.extend_from_slice(kept);
        self.members.take_before(None);
        delta
    }

    /// The rows and new members payload (for a [`layered`](Self::layered) differ, its new
    /// delta), once every profile was fed; an error if the stored members could not be read
    /// to their end.
    fn finish(mut self, resolve: &Resolver<'_>) -> Result<(PartRows, Vec<u8>), Truncated> {
        match &mut self.delta {
            None => {
                while let Some(m) = self.members.take() {
                    self.user(m.key, None, Some(m), resolve);
                }
            }
            // What no change reached stays as it is (all of it, without changes).
            Some(delta) => {
                let kept = delta.take_before(None);
                self.new_members.buf.extend_from_slice(kept);
                self.members.take_before(None);
            }
        }
        match self.members.damaged.or(self.delta.and_then(|d| d.damaged)) {
            Some(e) => Err(e),
            None => Ok((self.rows, self.new_members.buf)),
        }
    }

    /// One user: a stored profile (entries, segments), a member, or both.
    fn user(
        &mut self,
        key: &[u8],
        profile: Option<(&[Entry], &[u32])>,
        member: Option<RawMember<'_>>,
        resolve: &Resolver<'_>,
    ) {
        let sel = self.selection;
        let view = &sel.view;
        let Some(user) = view.user_id(key, resolve, &mut self.export_key) else {
            return;
        };
        let segments = profile.map_or(&[][..], |(_, s)| s);
        sel.active.intersect_into(segments, &mut self.current);
        self.old.clear();
        if let Some(m) = member {
            self.old.extend(
                m.segments
                    .chunks_exact(4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
        }
        sel.active.intersect_into(&self.old, &mut self.old_active);
        sel.paused.intersect_into(&self.old, &mut self.kept_paused);
        let emit = match view.mode {
            // Element by element: for these short lists a `memcmp` call costs more.
            ExportMode::Iter => {
                self.current.len() != self.old_active.len()
                    || self
                        .current
                        .iter()
                        .zip(&self.old_active)
                        .any(|(a, b)| a != b)
            }
            ExportMode::Full => !self.current.is_empty(),
        };
        if emit {
            self.removed.clear();
            if view.mode == ExportMode::Iter {
                let current = &self.current;
                self.removed.extend(
                    self.old_active
                        .iter()
                        .copied()
                        .filter(|s| current.binary_search(s).is_err()),
                );
            }
            let entries = match profile {
                Some((entries, _)) if sel.traits => entries,
                _ => &[],
            };
            user.write_into(&mut self.user);
            self.rows.push(
                &self.export_key,
                &self.user,
                &self.current,
                &self.removed,
                entries.iter().map(|e| (e.trait_id, e.realized_at)),
            );
        }
        self.new_member.clear();
        self.new_member.extend_from_slice(&self.current);
        self.new_member.extend_from_slice(&self.kept_paused);
        self.new_member.sort_unstable();
        if !self.new_member.is_empty() {
            write_member(&mut self.new_members, key, &self.new_member);
        }
    }
}

/// Appends one member: its key and its segments (sorted).
pub(crate) fn write_member(w: &mut Writer, key: &[u8], segments: &[u32]) {
    w.bytes(key);
    w.u32(segments.len() as u32);
    for &s in segments {
        w.u32(s);
    }
}

/// Diffs decoded profiles (in key order) against members: [`Differ`] over a whole list.
#[cfg(test)]
fn diff_partition(
    profiles: &[Profile<'_>],
    members: &[Member<'_>],
    view: &DestinationView,
    resolve: &Resolver<'_>,
    traits: bool,
) -> (PartRows, Vec<u8>) {
    let selection = Selection::new(view.clone(), traits, true);
    let mut stored = Writer::default();
    for m in members {
        write_member(&mut stored, m.key, &m.segments);
    }
    let mut differ = Differ::new(&selection, &stored.buf);
    for p in profiles {
        differ.profile(p.key, &p.entries, &p.segments, resolve);
    }
    differ.finish(resolve).expect("members written here")
}

/// What is wrong with an export run file.
#[derive(Debug, thiserror::Error)]
pub enum RunFileError {
    #[error("cannot write export run file {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read export run file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("export run file {}: a row of {bytes} bytes is too large for a run record", path.display())]
    RowTooLarge { path: PathBuf, bytes: usize },
    #[error("export run file {} is damaged at byte {offset}: {reason}", path.display())]
    Damaged {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
}

/// First bytes of a run file.
const RUN_MAGIC: &[u8; 8] = b"SMXRUN1\n";
/// A record length that marks the trailer: the row count as a `u64` follows, then the end.
const RUN_TRAILER: u32 = u32::MAX;
/// Buffer of each run file's reader and writer.
const RUN_BUFFER_BYTES: usize = 128 * 1024;

/// An export's rows on disk: one run file per diffed partition that had rows, each sorted by
/// export key. The files are removed when this is dropped.
#[derive(Debug)]
pub struct Runs {
    files: Vec<PathBuf>,
    traits: bool,
}

impl Runs {
    /// Writes rows computed elsewhere as runs in `dir`, one per item of `parts` (each sorted
    /// here; an empty part gives an empty run), named `rows-NNNN.run`. `traits` says whether
    /// the rows carry the profile's traits. For tests and benchmarks.
    pub fn from_rows(
        dir: &Path,
        parts: &[Vec<ExportRow>],
        traits: bool,
    ) -> Result<Runs, RunFileError> {
        let mut runs = Runs {
            files: Vec::with_capacity(parts.len()),
            traits,
        };
        for (index, part) in parts.iter().enumerate() {
            let mut rows = PartRows::default();
            for r in part {
                rows.push(
                    &r.key,
                    &r.user,
                    &r.segments,
                    &r.removed,
                    r.traits.iter().copied(),
                );
            }
            let path = dir.join(format!("rows-{index:04}.run"));
            rows.write_run(&path)?;
            runs.files.push(path);
        }
        Ok(runs)
    }

    /// Takes run files written by [`compute`] in other processes (a staged run's merge
    /// tasks), in partition order; they are removed when the result is dropped.
    pub fn from_files(files: Vec<PathBuf>, traits: bool) -> Runs {
        Runs { files, traits }
    }

    /// Gives up the run files without removing them (another process merges them).
    pub fn into_files(mut self) -> Vec<PathBuf> {
        std::mem::take(&mut self.files)
    }

    /// The run files, in partition order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Whether the rows carry the profiles' traits.
    pub fn has_traits(&self) -> bool {
        self.traits
    }

    /// Merges the runs in export-key order and calls `emit` once per user: rows of one user
    /// (an AAM UUID's own profile and a cross-device customer profile synced to it) are
    /// joined, with the union of segments and removals only for segments neither row holds.
    /// Returns the number of users. Memory: one reader buffer and one record per run.
    pub fn merge(
        &self,
        mut emit: impl FnMut(&ExportRow) -> anyhow::Result<()>,
    ) -> anyhow::Result<u64> {
        let mut cursors = Vec::with_capacity(self.files.len());
        let mut heap = std::collections::BinaryHeap::with_capacity(self.files.len());
        for (run, path) in self.files.iter().enumerate() {
            let mut cursor = Cursor::open(path)?;
            let mut head = Head {
                prefix: 0,
                key_end: 0,
                run,
                record: Vec::new(),
            };
            if cursor.next(&mut head.record)? {
                head.load_key(&cursor)?;
                heap.push(head);
            }
            cursors.push(cursor);
        }
        let mut row = ExportRow::default();
        let mut users = 0u64;
        let mut started = false;
        while let Some(mut top) = heap.peek_mut() {
            let Some(cursor) = cursors.get_mut(top.run) else {
                break;
            };
            let joins = started && row.key == top.key();
            if started && !joins {
                emit(&row)?;
                users += 1;
            }
            cursor.decode(&top.record, &mut row, joins)?;
            started = true;
            if cursor.next(&mut top.record)? {
                top.load_key(cursor)?;
            } else {
                std::collections::binary_heap::PeekMut::pop(top);
            }
        }
        if started {
            emit(&row)?;
            users += 1;
        }
        Ok(users)
    }
}

impl Drop for Runs {
    fn drop(&mut self) {
        for path in &self.files {
            if let Err(e) = std::fs::remove_file(path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(file = %path.display(), error = %e, "cannot remove an export run file");
            }
        }
    }
}

/// A run file being read.
struct Cursor<'a> {
    path: &'a Path,
    reader: std::io::BufReader<std::fs::File>,
    /// File offset of the next record.
    offset: u64,
    /// Records read so far.
    rows: u64,
    /// File offset of the record last read.
    record_at: u64,
}

impl<'a> Cursor<'a> {
    fn open(path: &'a Path) -> Result<Cursor<'a>, RunFileError> {
        let file = std::fs::File::open(path).map_err(|source| RunFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut c = Cursor {
            path,
            reader: std::io::BufReader::with_capacity(RUN_BUFFER_BYTES, file),
            offset: 0,
            rows: 0,
            record_at: 0,
        };
        let mut magic = [0u8; RUN_MAGIC.len()];
        c.read_exact(&mut magic, "it is too short to be a run file")?;
        if &magic != RUN_MAGIC {
            return Err(c.damaged(0, "it is not an export run file".into()));
        }
        Ok(c)
    }

    fn damaged(&self, offset: u64, reason: String) -> RunFileError {
        RunFileError::Damaged {
            path: self.path.to_path_buf(),
            offset,
            reason,
        }
    }

    fn read_exact(&mut self, buf: &mut [u8], at_eof: &str) -> Result<(), RunFileError> {
        match self.reader.read_exact(buf) {
            Ok(()) => {
                self.offset += buf.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Err(self.damaged(self.offset, at_eof.to_owned()))
            }
            Err(source) => Err(RunFileError::Read {
                path: self.path.to_path_buf(),
                source,
            }),
        }
    }

    /// Reads the next record into `record`; `false` at the (checked) trailer.
    fn next(&mut self, record: &mut Vec<u8>) -> Result<bool, RunFileError> {
        let at = self.offset;
        let mut len = [0u8; 4];
        self.read_exact(&mut len, "it ends without its trailer (truncated)")?;
        let len = u32::from_le_bytes(len);
        if len == RUN_TRAILER {
            let mut count = [0u8; 8];
            self.read_exact(&mut count, "its trailer is truncated")?;
            let count = u64::from_le_bytes(count);
            if count != self.rows {
                return Err(self.damaged(
                    at,
                    format!(
                        "its trailer counts {count} rows but {} were read",
                        self.rows
                    ),
                ));
            }
            let mut extra = [0u8; 1];
            return match self.reader.read(&mut extra) {
                Ok(0) => Ok(false),
                Ok(_) => Err(self.damaged(self.offset, "data follows the trailer".into())),
                Err(source) => Err(RunFileError::Read {
                    path: self.path.to_path_buf(),
                    source,
                }),
            };
        }
        record.clear();
        // Read as the bytes come, so a damaged length cannot make one huge allocation.
        let got = (&mut self.reader)
            .take(u64::from(len))
            .read_to_end(record)
            .map_err(|source| RunFileError::Read {
                path: self.path.to_path_buf(),
                source,
            })?;
        if got != len as usize {
            return Err(self.damaged(
                at,
                format!("its record of {len} bytes is truncated after {got}"),
            ));
        }
        self.offset += u64::from(len);
        self.rows += 1;
        self.record_at = at;
        Ok(true)
    }

    /// Decodes the record last read into `row`, or when `join`, joins it to `row` (the same
    /// user) as [`Runs::merge`] says.
    fn decode(&self, record: &[u8], row: &mut ExportRow, join: bool) -> Result<(), RunFileError> {
        let mut r = Reader::new(record);
        let damaged = |offset: usize, reason: &str| {
            self.damaged(self.record_at + 4 + offset as u64, reason.to_owned())
        };
        let truncated = |t: Truncated| damaged(t.offset, "record truncated");
        let key = r.bytes().map_err(truncated)?;
        let user_at = r.offset();
        let user = r.short_bytes().map_err(truncated)?;
        if !join {
            let user =
                std::str::from_utf8(user).map_err(|_| damaged(user_at, "user ID is not UTF-8"))?;
            row.key.clear();
            row.key.extend_from_slice(key);
            row.user.clear();
            row.user.push_str(user);
            row.segments.clear();
            row.removed.clear();
            row.traits.clear();
        }
        for list in [&mut row.segments, &mut row.removed] {
            // Each item takes at least one byte: the loop ends with the record.
            let n = r.varint().map_err(truncated)?;
            for _ in 0..n {
                list.push(r.varint_u32().map_err(truncated)?);
            }
        }
        let n = r.varint().map_err(truncated)?;
        for _ in 0..n {
            let id = r.varint_u32().map_err(truncated)?;
            let at = r.zigzag().map_err(truncated)?;
            row.traits.push((id, at));
        }
        if !r.is_empty() {
            return Err(damaged(r.offset(), "bytes follow the row"));
        }
        if join {
            row.segments.sort_unstable();
            row.segments.dedup();
            row.removed.sort_unstable();
            row.removed.dedup();
            let segments = &row.segments;
            row.removed.retain(|s| segments.binary_search(s).is_err());
            row.traits.sort_unstable();
            row.traits.dedup_by_key(|t| t.0);
        }
        Ok(())
    }
}

/// A run's next record in the merge heap, ordered so that the heap's top is the smallest
/// (export key, run).
struct Head {
    prefix: u64,
    /// Where the export key ends in `record` (it starts after its `u32` length).
    key_end: usize,
    run: usize,
    record: Vec<u8>,
}

impl Head {
    fn key(&self) -> &[u8] {
        self.record.get(4..self.key_end).unwrap_or_default()
    }

    /// Reads the key of a new `record`.
    fn load_key(&mut self, cursor: &Cursor<'_>) -> Result<(), RunFileError> {
        let mut r = Reader::new(&self.record);
        let key = r.bytes().map_err(|t| {
            cursor.damaged(
                cursor.record_at + 4 + t.offset as u64,
                "record truncated".into(),
            )
        })?;
        self.prefix = id_prefix(key);
        self.key_end = r.offset();
        Ok(())
    }
}

impl Ord for Head {
    fn cmp(&self, other: &Head) -> std::cmp::Ordering {
        // Reversed: `BinaryHeap` is a max-heap. Ties go to the earlier run, so rows of one
        // user come in partition order, as a stable sort of all rows would give them.
        other
            .prefix
            .cmp(&self.prefix)
            .then_with(|| other.key().cmp(self.key()))
            .then_with(|| other.run.cmp(&self.run))
    }
}

impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Head) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Head {
    fn eq(&self, other: &Head) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Head {}

/// One file written for a destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrittenFile {
    pub name: String,
    pub bytes: u64,
    pub lines: u64,
    pub md5: String,
}

/// What an export wrote.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ExportSummary {
    pub destination: u32,
    pub mode: &'static str,
    pub rows: u64,
    pub files: Vec<String>,
    pub info: String,
}

/// Text handed to the (gzip) writer at once.
const BLOCK_BYTES: usize = 128 * 1024;

/// A block buffer with room for [`BLOCK_BYTES`] and the line that crosses it.
fn empty_block() -> Vec<u8> {
    Vec::with_capacity(BLOCK_BYTES + 4096)
}

/// A data file being written: text in, (optionally gzipped) bytes counted and hashed on the
/// way to a temporary file.
struct PartWriter {
    temp: PathBuf,
    sink: Sink,
    block: Vec<u8>,
    lines: u64,
    text_bytes: u64,
}

enum Sink {
    Plain(Hashing),
    Gzip(Box<super::pargz::ParGzWriter<Hashing>>),
}

/// Counts and MD5-hashes the bytes that reach the file.
struct Hashing {
    file: std::io::BufWriter<std::fs::File>,
    md5: Md5,
    bytes: u64,
}

impl std::io::Write for Hashing {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.md5.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl PartWriter {
    fn create(temp: PathBuf, gzip: bool) -> anyhow::Result<PartWriter> {
        let file = std::fs::File::create(&temp)
            .with_context(|| format!("cannot create {}", temp.display()))?;
        let hashing = Hashing {
            file: std::io::BufWriter::with_capacity(256 * 1024, file),
            md5: Md5::new(),
            bytes: 0,
        };
        let sink = if gzip {
            // Blocks are compressed on the run's threads; the same rows give the same bytes.
            let gz = super::pargz::ParGzWriter::new(hashing, flate2::Compression::new(6))
                .with_context(|| format!("cannot write {}", temp.display()))?;
            Sink::Gzip(Box::new(gz))
        } else {
            Sink::Plain(hashing)
        };
        Ok(PartWriter {
            temp,
            sink,
            block: empty_block(),
            lines: 0,
            text_bytes: 0,
        })
    }

    fn write_line(&mut self, line: &[u8]) -> anyhow::Result<()> {
        // Lines go to the encoder in large blocks: one deflate call per block, not per line.
        self.block.extend_from_slice(line);
        self.text_bytes += line.len() as u64;
        self.lines += 1;
        if self.block.len() >= BLOCK_BYTES {
            self.flush_block()?;
        }
        Ok(())
    }

    fn flush_block(&mut self) -> anyhow::Result<()> {
        let result = match &mut self.sink {
            Sink::Plain(h) => {
                let result = h.write_all(&self.block);
                self.block.clear();
                result
            }
            Sink::Gzip(g) => {
                let block = std::mem::replace(&mut self.block, empty_block());
                g.write_block(block)
            }
        };
        result.with_context(|| format!("cannot write {}", self.temp.display()))
    }

    /// Finishes the stream, makes the file durable, and returns (temp path, bytes, lines, md5).
    fn finish(mut self) -> anyhow::Result<(PathBuf, u64, u64, String)> {
        self.flush_block()?;
        let temp = self.temp;
        let hashing = match self.sink {
            Sink::Plain(h) => h,
            Sink::Gzip(g) => g
                .finish()
                .with_context(|| format!("cannot write {}", temp.display()))?,
        };
        let Hashing { file, md5, bytes } = hashing;
        let file = file
            .into_inner()
            .map_err(|e| anyhow!("cannot write {}: {}", temp.display(), e.error()))?;
        file.sync_all()
            .with_context(|| format!("cannot fsync {}", temp.display()))?;
        let md5_hex: String = md5.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Ok((temp, bytes, self.lines, md5_hex))
    }
}

/// Writes the rows of `runs` for `dest` into `dir`, merged in user order (see
/// [`Runs::merge`]): data files split at `split_bytes` of text (never inside a line), gzipped
/// when configured, each written under a temporary name and renamed; then the `.info` control
/// file, atomically, last.
pub fn write_export(
    dir: &Path,
    dest: &Destination,
    view: &DestinationView,
    template: Option<&Template>,
    runs: &Runs,
    as_of: Timestamp,
    timestamp_ms: i64,
) -> anyhow::Result<ExportSummary> {
    if template.is_some_and(Template::uses_traits) && !runs.has_traits() {
        return Err(anyhow!(
            "destination {}: its template uses TRAIT_LIST but the export's rows were computed \
             without traits",
            dest.id
        ));
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create destination folder {}", dir.display()))?;
    // Leftovers of an export that was killed before its renames.
    let prefix = format!(".segmill-export-{}-", dest.id);
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(&prefix) && name.ends_with(".partial") {
                std::fs::remove_file(e.path())
                    .with_context(|| format!("cannot remove {}", e.path().display()))?;
            }
        }
    }
    let master_dpid = (dest.master_dpid != 0).then_some(dest.master_dpid);
    let sync_type = sync_type_str(dest.sync_type);
    let name = |part: Option<u32>| OutboundName {
        sync_type,
        did: dest.id,
        master_dpid,
        pid_alias: dest.pid_alias.as_deref(),
        mode: view.mode,
        timestamp_ms,
        part,
        gzip: dest.gzip,
    };
    let batch = Batch {
        order_id: dest.id,
        dpid: dest.master_dpid,
        master_dpid,
        pid: 0,
        pid_alias: dest.pid_alias.as_deref(),
        sync_mode: mode_str(view.mode),
        sync_type,
        timestamp_s: as_of,
    };
    let mut parts: Vec<(PathBuf, u64, u64, String)> = Vec::new();
    let mut current: Option<PartWriter> = None;
    let mut line = Vec::with_capacity(256);
    let mut segs: Vec<SegmentRef> = Vec::new();
    let mut removed: Vec<SegmentRef> = Vec::new();
    let mut traits: Vec<TraitRef> = Vec::new();
    let ms = timestamp_ms;
    let temp = |index: usize| dir.join(format!(".segmill-export-{}-{ms}-{index}.partial", dest.id));
    let rows = runs.merge(|row| {
        line.clear();
        match template {
            Some(t) => {
                segs.clear();
                segs.extend(row.segments.iter().map(|&sid| SegmentRef {
                    sid,
                    last_update_ms: ms,
                    last_realization_ms: ms,
                }));
                removed.clear();
                removed.extend(row.removed.iter().map(|&sid| SegmentRef {
                    sid,
                    last_update_ms: ms,
                    last_realization_ms: ms,
                }));
                traits.clear();
                traits.extend(row.traits.iter().map(|&(id, at)| TraitRef {
                    id,
                    last_realized_ms: at.saturating_mul(1000),
                    kind: TRAIT_TYPE_ONBOARDED,
                }));
                let r = Row {
                    uuid: &row.user,
                    dp_uuids: &[],
                    segments: &segs,
                    removed: &removed,
                    traits: &traits,
                };
                t.render(&batch, &r, &mut line);
            }
            None => default_line(&mut line, &row.user, &row.segments, &row.removed, view.mode),
        }
        line.push(b'\n');
        let full = current.as_ref().is_some_and(|c| {
            c.text_bytes > 0 && c.text_bytes + line.len() as u64 > dest.split_bytes
        });
        if full && let Some(w) = current.take() {
            parts.push(w.finish()?);
        }
        let writer = match current.as_mut() {
            Some(w) => w,
            None => current.insert(PartWriter::create(temp(parts.len()), dest.gzip)?),
        };
        writer.write_line(&line)
    })?;
    // An export with no rows still writes one (empty) file, so consumers see every batch.
    if current.is_none() && parts.is_empty() {
        current = Some(PartWriter::create(temp(0), dest.gzip)?);
    }
    if let Some(w) = current.take() {
        parts.push(w.finish()?);
    }
    crate::failpoint::hit("mid-export").context("mid-export")?;
    let split = parts.len() > 1;
    let mut written = Vec::new();
    for (index, (temp, bytes, lines, md5_hex)) in parts.into_iter().enumerate() {
        let part = split.then_some(index as u32 + 1);
        let file_name = name(part).file_name().map_err(|e| anyhow!("{e}"))?;
        std::fs::rename(&temp, dir.join(&file_name))
            .with_context(|| format!("cannot rename {} to {file_name}", temp.display()))?;
        written.push(WrittenFile {
            name: file_name,
            bytes,
            lines,
            md5: md5_hex,
        });
    }
    crate::state::sync_dir(dir)?;
    let infos: Vec<InfoFile<'_>> = written
        .iter()
        .map(|f| InfoFile {
            name: &f.name,
            byte_size: f.bytes,
            line_count: f.lines,
            md5_hex: &f.md5,
        })
        .collect();
    let total = name(None).file_name().map_err(|e| anyhow!("{e}"))?;
    let mut info = Vec::new();
    write_info(&mut info, &total, &infos).map_err(|e| anyhow!("{e}"))?;
    let info_name = name(None).info_name().map_err(|e| anyhow!("{e}"))?;
    crate::state::write_atomic(&dir.join(&info_name), &info)?;
    Ok(ExportSummary {
        destination: dest.id,
        mode: mode_str(view.mode),
        rows,
        files: written.into_iter().map(|f| f.name).collect(),
        info: info_name,
    })
}

/// What the state remembers of a destination's last export.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DestMeta {
    /// The generation that committed the export.
    pub exported_generation: u64,
    /// [`DestinationView::fingerprint`] at that export.
    pub fingerprint: u64,
    /// The batch timestamp (Unix ms) of that export; the next batch's is later, so names never
    /// repeat even when two exports share an as-of time.
    #[serde(default)]
    pub last_timestamp_ms: i64,
}

/// The timestamp of a destination's next batch: the as-of time in milliseconds, moved past the
/// previous batch's if needed.
pub fn batch_timestamp_ms(as_of: Timestamp, last: Option<DestMeta>) -> i64 {
    let ms = as_of.saturating_mul(1000);
    match last {
        Some(m) if m.last_timestamp_ms >= ms => m.last_timestamp_ms + 1,
        _ => ms,
    }
}

/// A destination's export, computed and not yet written.
pub struct DestExport {
    pub view: DestinationView,
    /// The rows, in run files sorted by user. New members payloads went to
    /// [`compute`]'s members sink as each partition was diffed.
    pub runs: Runs,
}

/// A source of partition payloads: `Ok(None)` when the partition has no file.
pub type PayloadSource<'a> =
    dyn Fn(u32) -> anyhow::Result<Option<std::borrow::Cow<'a, [u8]>>> + Sync + 'a;

/// Where the exports read the state from.
pub struct Sources<'a, 'p> {
    /// The profile partitions to diff (all of them, or a staged merge task's share).
    pub parts: std::ops::Range<u32>,
    /// Profile partition payloads as this run leaves them.
    pub profiles: &'a PayloadSource<'p>,
    /// The previous generation's files by name (members of the last export), mapped or in
    /// memory.
    pub members: &'a (dyn Fn(&str) -> anyhow::Result<Option<PartBytes<'p>>> + Sync),
    pub resolve: &'a Resolver<'p>,
    /// Whether a destination fed a partition's changes writes just a delta of its members
    /// ([`members_delta_name`]) while it is small (`run.profile_deltas`).
    pub deltas: bool,
}

/// Receives a diffed partition's new members file (its state name and payload; an empty
/// payload for a file that is no more), from any worker thread, as soon as the partition is
/// diffed.
pub type MembersSink<'a> = dyn Fn(&str, Vec<u8>) -> anyhow::Result<()> + Sync + 'a;

/// One destination's export to compute.
pub struct Job<'a> {
    pub dest: &'a Destination,
    pub template: Option<&'a Template>,
    /// A full list whatever the destination's mode (`--export-only DID --full`).
    pub full: bool,
    /// The destination's last export, if any.
    pub last: Option<DestMeta>,
    /// Whether partition `p`'s memberships changed since the destination's last export.
    pub stale: &'a (dyn Fn(u32) -> bool + Sync),
    /// Partition `p`'s profiles whose segments changed since the destination's last export,
    /// in key order, when that is known: then an `iter` export without traits reads just those
    /// and its members, not the partition.
    /// They are in the members layout ([`decode_members`]), as the merge keeps them.
    pub changes: &'a (dyn Fn(u32) -> Option<&'a [u8]> + Sync),
    /// An existing folder for the export's run files (`part-NNNN.run`).
    pub runs_dir: PathBuf,
}

/// Computes the exports of `jobs`, in their order. Only stale partitions are diffed for a
/// destination, unless it is new, its selection changed, or the export is `full`: then every
/// partition is. Partitions are taken in parallel. Each is read and decoded once for all the
/// destinations due that walk its profiles (without their trait realizations unless a
/// template uses them), and not read at all when each of them is fed the partition's changes
/// ([`Job::changes`]). Each destination's rows are sorted and written to a run file in its
/// `runs_dir`, and its members payload handed to `on_members`, before the next partition is
/// taken, so memory holds one partition per worker thread.
pub fn compute(
    config: &Config,
    jobs: &[Job<'_>],
    src: &Sources<'_, '_>,
    on_members: &MembersSink<'_>,
) -> anyhow::Result<Vec<DestExport>> {
    use rayon::prelude::*;
    let selections: Vec<Selection> = jobs
        .iter()
        .map(|job| {
            let view = DestinationView::new(config, job.dest, job.full);
            let traits = job.template.is_some_and(Template::uses_traits);
            let everything = view.mode == ExportMode::Full
                || job.last.is_none_or(|m| m.fingerprint != view.fingerprint());
            Selection::new(view, traits, everything)
        })
        .collect();
    let parts: Vec<u32> = src.parts.clone().collect();
    let results: Vec<anyhow::Result<Vec<Option<PathBuf>>>> = parts
        .par_iter()
        .map(|&p| {
            let due: Vec<usize> = (0..jobs.len())
                .filter(|&d| selections[d].everything || (jobs[d].stale)(p))
                .collect();
            let mut written = Written(vec![None; jobs.len()]);
            if due.is_empty() {
                return Ok(written.keep());
            }
            diff_due(p, &due, jobs, &selections, src, on_members, &mut written.0)?;
            Ok(written.keep())
        })
        .collect();
    let mut all: Vec<Runs> = selections
        .iter()
        .map(|s| Runs {
            files: Vec::with_capacity(parts.len()),
            traits: s.traits,
        })
        .collect();
    let mut first_error = None;
    for r in results {
        match r {
            Ok(paths) => {
                for (runs, path) in all.iter_mut().zip(paths) {
                    runs.files.extend(path);
                }
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    // On an error the runs written so far are removed as `all` drops.
    if let Some(e) = first_error {
        return Err(e);
    }
    Ok(selections
        .into_iter()
        .zip(all)
        .map(|(s, runs)| DestExport { view: s.view, runs })
        .collect())
}

/// Run files of one partition, by job; removed when dropped unless kept (an error half-way
/// through the partition leaves none behind).
struct Written(Vec<Option<PathBuf>>);

impl Written {
    fn keep(&mut self) -> Vec<Option<PathBuf>> {
        std::mem::take(&mut self.0)
    }
}

impl Drop for Written {
    fn drop(&mut self) {
        for path in self.0.iter().flatten() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A destination's stored members of one partition, as a diff reads them and as its new
/// members are written.
struct StoredMembers<'p> {
    /// The whole file's name.
    name: String,
    /// The members: the whole file, or the base under `delta`.
    members: PartBytes<'p>,
    /// The delta the diff writes anew, when it writes a delta.
    delta: Option<Vec<u8>>,
    /// Whether a delta is stored now.
    had_delta: bool,
}

impl<'p> StoredMembers<'p> {
    /// Reads destination `did`'s members of partition `p`: laid together into one, unless
    /// the destination is fed the partition's `changes` and they fit a delta.
    fn read(
        src: &Sources<'_, 'p>,
        did: u32,
        p: u32,
        changes: Option<&[u8]>,
    ) -> anyhow::Result<StoredMembers<'p>> {
        let name = members_part_name(did, p);
        let base = (src.members)(&name)?.unwrap_or(PartBytes::Owned(Vec::new()));
        let delta = (src.members)(&members_delta_name(did, p))?;
        let had_delta = delta.is_some();
        let delta = delta.map(|d| d.to_vec()).unwrap_or_default();
        // Each change adds about its own length to the delta.
        let layered = src.deltas
            && changes.is_some_and(|c| {
                crate::state::delta_limit(base.len(), delta.len(), c.len()).is_some()
            });
        if layered {
            return Ok(StoredMembers {
                name,
                members: base,
                delta: Some(delta),
                had_delta,
            });
        }
        let members = if had_delta {
            PartBytes::Owned(
                overlay_members(&base, &delta).map_err(|e| anyhow!("{name} and its delta: {e}"))?,
            )
        } else {
            base
        };
        Ok(StoredMembers {
            name,
            members,
            delta: None,
            had_delta,
        })
    }

    fn differ<'a>(&'a self, selection: &'a Selection) -> Differ<'a> {
        match &self.delta {
            Some(delta) => Differ::layered(selection, &self.members, delta),
            None => Differ::new(selection, &self.members),
        }
    }

    /// Hands the diff's `new` members (or new delta) to `on_members`: a delta only if it
    /// changed, and a whole file with its old delta dropped.
    fn write(&self, new: Vec<u8>, on_members: &MembersSink<'_>) -> anyhow::Result<()> {
        let delta_name = self.name.clone() + crate::state::DELTA_SUFFIX;
        match &self.delta {
            Some(old) if *old == new => Ok(()),
            Some(_) => on_members(&delta_name, new),
            None => {
                on_members(&self.name, new)?;
                if self.had_delta {
                    on_members(&delta_name, Vec::new())?;
                }
                Ok(())
            }
        }
    }
}

/// Diffs partition `p` for the jobs `due` (indexes into `jobs` and `selections`): reads and
/// decodes it once, feeding every due destination's [`Differ`], then writes each one's run
/// file into `written` and hands its members on.
fn diff_due(
    p: u32,
    due: &[usize],
    jobs: &[Job<'_>],
    selections: &[Selection],
    src: &Sources<'_, '_>,
    on_members: &MembersSink<'_>,
    written: &mut [Option<PathBuf>],
) -> anyhow::Result<()> {
    let resolve = src.resolve;
    // A destination whose changes are known is fed them; the others walk the partition.
    let changes: Vec<Option<&[u8]>> = due
        .iter()
        .map(|&d| {
            let s = &selections[d];
            (!s.everything && !s.traits && s.view.mode == ExportMode::Iter)
                .then(|| (jobs[d].changes)(p))
                .flatten()
        })
        .collect();
    let olds: Vec<StoredMembers> = due
        .iter()
        .zip(&changes)
        .map(|(&d, changes)| StoredMembers::read(src, jobs[d].dest.id, p, *changes))
        .collect::<anyhow::Result<_>>()?;
    let mut differs: Vec<Differ<'_>> = due
        .iter()
        .zip(&olds)
        .map(|(&d, old)| old.differ(&selections[d]))
        .collect();
    for (differ, changes) in differs.iter_mut().zip(&changes) {
        if let Some(bytes) = changes {
            let changed = decode_members(bytes)
                .map_err(|e| anyhow!("tonight's changes of profile partition {p}: {e}"))?;
            differ.changes(&changed, resolve);
        }
    }
    let walking = changes.iter().any(Option::is_none);
    let payload = if walking { (src.profiles)(p)? } else { None };
    if let Some(bytes) = payload.as_deref() {
        let with_traits = differs.iter().any(|d| d.selection.traits);
        let mut r = Reader::new(bytes);
        let (mut entries, mut segments) = (Vec::new(), Vec::new());
        while !r.is_empty() {
            let stored = crate::profile::next_stored(&mut r)
                .and_then(|stored| {
                    if with_traits {
                        crate::profile::decode_body(&stored, &mut entries, &mut segments)
                    } else {
                        crate::profile::decode_segments_only(&stored, &mut segments)
                    }
                    .map(|()| stored)
                })
                .map_err(|e| anyhow!("profile partition {p}: {e}"))?;
            for (differ, changes) in differs.iter_mut().zip(&changes) {
                if changes.is_none() {
                    differ.profile(stored.key, &entries, &segments, resolve);
                }
            }
        }
    }
    drop(payload);
    // Every destination's stored members are read to their end before any is written.
    let finished: Vec<(PartRows, Vec<u8>)> = differs
        .into_iter()
        .zip(&olds)
        .map(|(differ, old)| {
            differ
                .finish(resolve)
                .map_err(|e| anyhow!("{}: {e}", old.name))
        })
        .collect::<anyhow::Result<_>>()?;
    for ((&d, (rows, new_members)), old) in due.iter().zip(finished).zip(&olds) {
        old.write(new_members, on_members)?;
        if !rows.is_empty() {
            let path = jobs[d].runs_dir.join(format!("part-{p:04}.run"));
            rows.write_run(&path)?;
            written[d] = Some(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Location, SyncType};
    use crate::profile::Events;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    /// Today's reference: every row in one list, one stable sort, then adjacent rows of one
    /// user joined.
    fn reference(parts: &[Vec<ExportRow>]) -> Vec<ExportRow> {
        let mut rows: Vec<ExportRow> = parts.iter().flatten().cloned().collect();
        rows.sort_by(|a, b| {
            id_prefix(&a.key)
                .cmp(&id_prefix(&b.key))
                .then_with(|| a.key.cmp(&b.key))
        });
        let mut out: Vec<ExportRow> = Vec::with_capacity(rows.len());
        for row in rows {
            match out.last_mut() {
                Some(last) if last.key == row.key => {
                    last.segments.extend(row.segments);
                    last.segments.sort_unstable();
                    last.segments.dedup();
                    last.removed.extend(row.removed);
                    last.removed.sort_unstable();
                    last.removed.dedup();
                    let segments = &last.segments;
                    last.removed.retain(|s| segments.binary_search(s).is_err());
                    last.traits.extend(row.traits);
                    last.traits.sort_unstable();
                    last.traits.dedup_by_key(|t| t.0);
                }
                _ => out.push(row),
            }
        }
        out
    }

    fn merged(runs: &Runs) -> Vec<ExportRow> {
        let mut out = Vec::new();
        let users = runs
            .merge(|row| {
                out.push(row.clone());
                Ok(())
            })
            .unwrap();
        assert_eq!(users, out.len() as u64);
        out
    }

    fn uuid_row(n: u128, segments: &[u32], removed: &[u32], traits: &[(u32, i64)]) -> ExportRow {
        ExportRow {
            key: ProfileKey::Uuid(Uuid(n)).encode(),
            user: Uuid(n).to_string(),
            segments: segments.to_vec(),
            removed: removed.to_vec(),
            traits: traits.to_vec(),
        }
    }

    fn device_row(dpid: u32, id: &str, segments: &[u32]) -> ExportRow {
        let mut key = Vec::new();
        ProfileKey::encode_device(dpid, id.as_bytes(), &mut key);
        ExportRow {
            key,
            user: id.to_owned(),
            segments: segments.to_vec(),
            removed: Vec::new(),
            traits: Vec::new(),
        }
    }

    #[test]
    fn three_runs_interleave_and_join_one_user() {
        let dir = tempfile::tempdir().unwrap();
        let parts = vec![
            vec![
                uuid_row(5, &[1], &[], &[]),
                uuid_row(1, &[2, 4], &[7, 9], &[(30, 100), (10, 50)]),
            ],
            vec![uuid_row(4, &[3], &[], &[]), uuid_row(2, &[1, 2], &[], &[])],
            vec![
                uuid_row(3, &[], &[8], &[]),
                // User 1 again: a cross-device profile synced to it, in another partition.
                uuid_row(1, &[3, 4, 7], &[2, 8], &[(10, 40), (20, 60)]),
                uuid_row(6, &[5], &[], &[(1, 1)]),
            ],
        ];
        let runs = Runs::from_rows(dir.path(), &parts, true).unwrap();
        assert_eq!(runs.files().len(), 3);
        let got = merged(&runs);
        assert_eq!(
            got,
            vec![
                // Union of segments; 7 is held by the second row and 2 by the first, so only
                // 8 and 9 stay removed; trait 10 keeps its earliest realization.
                uuid_row(1, &[2, 3, 4, 7], &[8, 9], &[(10, 40), (20, 60), (30, 100)]),
                uuid_row(2, &[1, 2], &[], &[]),
                uuid_row(3, &[], &[8], &[]),
                uuid_row(4, &[3], &[], &[]),
                uuid_row(5, &[1], &[], &[]),
                uuid_row(6, &[5], &[], &[(1, 1)]),
            ]
        );
        assert_eq!(got, reference(&parts));
    }

    #[test]
    fn rows_of_one_user_within_one_run_are_joined() {
        let dir = tempfile::tempdir().unwrap();
        let parts = vec![vec![
            uuid_row(9, &[1], &[4], &[]),
            device_row(20_914, "b", &[1]),
            uuid_row(9, &[4], &[1, 5], &[]),
            device_row(20_914, "a", &[2]),
        ]];
        let runs = Runs::from_rows(dir.path(), &parts, false).unwrap();
        let got = merged(&runs);
        assert_eq!(
            got,
            vec![
                uuid_row(9, &[1, 4], &[5], &[]),
                device_row(20_914, "a", &[2]),
                device_row(20_914, "b", &[1]),
            ]
        );
        assert_eq!(got, reference(&parts));
    }

    #[test]
    fn empty_runs_merge_to_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let none = Runs::from_rows(dir.path(), &[], false).unwrap();
        assert_eq!(merged(&none), Vec::<ExportRow>::new());
        let empty = Runs::from_rows(dir.path(), &[Vec::new(), Vec::new()], false).unwrap();
        assert_eq!(merged(&empty), Vec::<ExportRow>::new());
        let parts = vec![Vec::new(), vec![uuid_row(3, &[1], &[], &[])], Vec::new()];
        let some = Runs::from_rows(dir.path(), &parts, false).unwrap();
        assert_eq!(merged(&some), vec![uuid_row(3, &[1], &[], &[])]);
    }

    #[test]
    fn one_huge_run() {
        let dir = tempfile::tempdir().unwrap();
        let n = 100_000u128;
        // Written in descending order with every 1000th user twice: the run sorts and joins.
        let mut rows: Vec<ExportRow> = (0..n)
            .rev()
            .map(|k| uuid_row(k * 7919, &[(k % 50) as u32], &[], &[]))
            .collect();
        rows.extend(
            (0..n)
                .step_by(1000)
                .map(|k| uuid_row(k * 7919, &[999], &[], &[])),
        );
        let parts = vec![rows];
        let runs = Runs::from_rows(dir.path(), &parts, false).unwrap();
        let got = merged(&runs);
        assert_eq!(got.len(), n as usize);
        assert_eq!(got[0], uuid_row(0, &[0, 999], &[], &[]));
        assert_eq!(got[1], uuid_row(7919, &[1], &[], &[]));
        assert_eq!(got, reference(&parts));
    }

    #[test]
    fn runs_are_removed_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let runs =
            Runs::from_rows(dir.path(), &[vec![uuid_row(1, &[1], &[], &[])]], false).unwrap();
        let path = runs.files()[0].clone();
        assert!(path.exists());
        drop(runs);
        assert!(!path.exists());
    }

    fn merge_error(runs: &Runs) -> String {
        format!("{:#}", runs.merge(|_| Ok(())).unwrap_err())
    }

    #[test]
    fn damaged_run_files_name_the_file_and_reason() {
        let dir = tempfile::tempdir().unwrap();
        let parts = vec![vec![
            uuid_row(1, &[1], &[], &[]),
            uuid_row(2, &[2], &[], &[]),
        ]];
        let runs = Runs::from_rows(dir.path(), &parts, false).unwrap();
        let path = runs.files()[0].clone();
        let good = std::fs::read(&path).unwrap();
        let shown = path.display().to_string();

        std::fs::write(&path, &good[..good.len() - 12]).unwrap();
        assert_eq!(
            merge_error(&runs),
            format!(
                "export run file {shown} is damaged at byte {}: it ends without its trailer \
                 (truncated)",
                good.len() - 12
            )
        );

        std::fs::write(&path, &good[..good.len() - 20]).unwrap();
        let e = merge_error(&runs);
        assert!(
            e.starts_with(&format!("export run file {shown} is damaged at byte ")),
            "{e}"
        );
        assert!(e.contains("is truncated after"), "{e}");

        let mut extra = good.clone();
        extra.push(0);
        std::fs::write(&path, &extra).unwrap();
        assert_eq!(
            merge_error(&runs),
            format!(
                "export run file {shown} is damaged at byte {}: data follows the trailer",
                good.len()
            )
        );

        let mut wrong_count = good.clone();
        let at = wrong_count.len() - 8;
        wrong_count[at] = 3;
        std::fs::write(&path, &wrong_count).unwrap();
        assert_eq!(
            merge_error(&runs),
            format!(
                "export run file {shown} is damaged at byte {}: its trailer counts 3 rows but 2 \
                 were read",
                good.len() - 12
            )
        );

        std::fs::write(&path, b"SMXRUN0\nxxxx").unwrap();
        assert_eq!(
            merge_error(&runs),
            format!("export run file {shown} is damaged at byte 0: it is not an export run file")
        );

        std::fs::remove_file(&path).unwrap();
        assert!(
            merge_error(&runs).starts_with(&format!("cannot read export run file {shown}: ")),
            "{}",
            merge_error(&runs)
        );
    }

    fn view(mode: ExportMode) -> DestinationView {
        DestinationView {
            did: 7,
            active: vec![10, 20, 30],
            paused: vec![40],
            device: None,
            mode,
            cross_device: Vec::new(),
        }
    }

    fn entry(trait_id: u32, realized_at: i64) -> Entry {
        Entry {
            trait_id,
            data_source: 1,
            realized_at,
        }
    }

    /// A base and a delta that stand for the members `payload`: every other member in the
    /// delta over a stale one in the base, each followed by a member that only the base has
    /// and the delta drops.
    fn layered_members(payload: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let (mut base, mut delta) = (Writer::default(), Writer::default());
        for (i, m) in decode_members(payload).unwrap().iter().enumerate() {
            if i % 2 == 0 {
                write_member(&mut base, m.key, &m.segments);
            } else {
                write_member(&mut base, m.key, &[99]);
                write_member(&mut delta, m.key, &m.segments);
                let gone = [m.key, &[0]].concat();
                write_member(&mut base, &gone, &[10]);
                write_member(&mut delta, &gone, &[]);
            }
        }
        (base.buf, delta.buf)
    }

    #[test]
    fn a_layered_differ_without_changes_keeps_its_delta() {
        let mut stored = Writer::default();
        for (n, segments) in [(1u128, &[10u32][..]), (2, &[20, 40]), (3, &[30])] {
            write_member(&mut stored, &ProfileKey::Uuid(Uuid(n)).encode(), segments);
        }
        let (base, delta) = layered_members(&stored.buf);
        let selection = Selection::new(view(ExportMode::Iter), false, false);
        let resolve = |_: Dpid, _: &[u8]| None;
        for fed in [true, false] {
            let mut differ = Differ::layered(&selection, &base, &delta);
            if fed {
                differ.changes(&[], &resolve);
            }
            let (rows, new_delta) = differ.finish(&resolve).unwrap();
            assert!(rows.is_empty());
            assert_eq!(new_delta, delta);
        }
        // A damaged delta is an error, not the end of it.
        let cut = &delta[..delta.len() - 2];
        let mut differ = Differ::layered(&selection, &base, cut);
        differ.changes(&[], &resolve);
        assert!(differ.finish(&resolve).is_err());
    }

    #[test]
    fn damaged_members_are_an_error_not_the_end_of_the_list() {
        let mut stored = Writer::default();
        for (n, segments) in [(1u128, &[10u32][..]), (2, &[20, 40]), (3, &[30])] {
            write_member(&mut stored, &ProfileKey::Uuid(Uuid(n)).encode(), segments);
        }
        let selection = Selection::new(view(ExportMode::Iter), false, false);
        let resolve = |_: Dpid, _: &[u8]| None;
        // Whole, the members are read to their end and kept.
        let mut differ = Differ::new(&selection, &stored.buf);
        differ.changes(&[], &resolve);
        let (_, members) = differ.finish(&resolve).unwrap();
        assert_eq!(members, stored.buf);
        // Cut inside the last member's segments, on both paths.
        let cut = &stored.buf[..stored.buf.len() - 2];
        let mut differ = Differ::new(&selection, cut);
        differ.changes(&[], &resolve);
        assert!(differ.finish(&resolve).is_err());
        let differ = Differ::new(&selection, cut);
        assert!(differ.finish(&resolve).is_err());
    }

    #[test]
    fn diff_partition_rows_members_and_cross_device_join() {
        let uuid_key = ProfileKey::Uuid(Uuid(77)).encode();
        let mut customer_key = Vec::new();
        ProfileKey::encode_customer(900, b"crm-1", &mut customer_key);
        let mut unsynced_key = Vec::new();
        ProfileKey::encode_customer(900, b"crm-2", &mut unsynced_key);
        let gone_key = ProfileKey::Uuid(Uuid(78)).encode();
        let profiles = vec![
            Profile {
                key: &uuid_key,
                events: Events::default(),
                entries: vec![entry(5, 1000)],
                segments: vec![10, 11, 20],
            },
            Profile {
                key: &customer_key,
                events: Events::default(),
                entries: vec![entry(6, 2000)],
                segments: vec![30],
            },
            Profile {
                key: &unsynced_key,
                events: Events::default(),
                entries: Vec::new(),
                segments: vec![10],
            },
        ];
        let members = vec![
            Member {
                key: &uuid_key,
                segments: vec![10, 30, 40],
            },
            Member {
                key: &gone_key,
                segments: vec![20, 40],
            },
        ];
        let resolve = |dpid: Dpid, id: &[u8]| (dpid == 900 && id == b"crm-1").then_some(Uuid(77));
        let v = view(ExportMode::Iter);
        let (rows, payload) = diff_partition(&profiles, &members, &v, &resolve, true);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.run");
        rows.write_run(&path).unwrap();
        let runs = Runs {
            files: vec![path],
            traits: true,
        };
        assert_eq!(
            merged(&runs),
            vec![
                // The UUID's own row (+20, -30) joined with its synced customer profile (+30).
                uuid_row(77, &[10, 20, 30], &[], &[(5, 1000), (6, 2000)]),
                // Profile gone: its active segment removed, the paused one kept in members.
                uuid_row(78, &[], &[20], &[]),
            ]
        );
        let new_members = decode_members(&payload).unwrap();
        assert_eq!(
            new_members,
            vec![
                Member {
                    key: &uuid_key,
                    segments: vec![10, 20, 40],
                },
                Member {
                    key: &gone_key,
                    segments: vec![40],
                },
                Member {
                    key: &customer_key,
                    segments: vec![30],
                },
            ]
        );
        // Without traits (the template does not use them) rows carry none.
        let (rows, _) = diff_partition(&profiles, &members, &v, &resolve, false);
        let path = dir.path().join("q.run");
        rows.write_run(&path).unwrap();
        let runs = Runs {
            files: vec![path],
            traits: false,
        };
        assert_eq!(merged(&runs)[0], uuid_row(77, &[10, 20, 30], &[], &[]));
    }

    /// Two destinations computed together (one partition decoded once for both) give what
    /// each gives alone: the same rows and members, with traits only for the one whose
    /// template uses them, and only the partitions each is due for.
    #[test]
    fn destinations_computed_together_equal_each_alone() {
        let config = Config::parse(
            Path::new("segmill.toml"),
            r#"
[paths]
inbound = "in"
state = "state"
outbound = "out"
[[data_source]]
id = 21
name = "CRM"
[[trait]]
id = 5
data_source = 21
[[segment]]
id = 10
rule = "5T"
[[segment]]
id = 20
rule = "5T"
[[segment]]
id = 30
rule = "5T"
[[destination]]
id = 7
sync_type = "ftp"
location = "out/7"
master_dpid = 0
mode = "iter"
segments = [10, 20]
[[destination]]
id = 8
sync_type = "ftp"
location = "out/8"
master_dpid = 0
mode = "full"
segments = [20, 30]
template = '<UUID>,<TRAIT_LIST;separator=",">'
"#,
        )
        .unwrap();
        let template = Template::parse(r#"<UUID>,<TRAIT_LIST;separator=",">"#).unwrap();
        let key = |n: u128| ProfileKey::Uuid(Uuid(n)).encode();
        // Three partitions: profiles 1-3, none, profiles 4-5.
        let partitions: Vec<Option<Vec<u8>>> = vec![
            Some((1..=3u128).collect::<Vec<_>>()),
            None,
            Some(vec![4, 5]),
        ]
        .into_iter()
        .map(|users| {
            users.map(|users| {
                let mut w = Writer::default();
                for n in users {
                    let segments: Vec<u32> = [10, 20, 30]
                        .into_iter()
                        .filter(|s| (n as u32 + s / 10).is_multiple_of(2) || n == 5)
                        .collect();
                    crate::profile::encode_into(
                        &mut w,
                        &key(n),
                        Events::default(),
                        &[entry(5, 1000 + n as i64)],
                        &segments,
                    );
                }
                w.buf
            })
        })
        .collect();
        // Destination 7 last received profile 2 in segment 10 and profile 9 (gone) in 20.
        let mut old_members = Writer::default();
        for (n, segs) in [(2u128, &[10u32][..]), (9, &[20])] {
            old_members.bytes(&key(n));
            old_members.u32(segs.len() as u32);
            for s in segs {
                old_members.u32(*s);
            }
        }
        let old_members = old_members.buf;
        let view7 = DestinationView::new(&config, &config.destinations[&7], false);
        let last7 = Some(DestMeta {
            exported_generation: 1,
            fingerprint: view7.fingerprint(),
            last_timestamp_ms: 0,
        });
        let profiles = |p: u32| -> anyhow::Result<Option<std::borrow::Cow<'_, [u8]>>> {
            Ok(partitions[p as usize]
                .as_deref()
                .map(std::borrow::Cow::Borrowed))
        };
        let members = |name: &str| -> anyhow::Result<Option<PartBytes<'_>>> {
            Ok((name == members_part_name(7, 0)).then(|| PartBytes::Borrowed(&old_members)))
        };
        let resolve = |_: Dpid, _: &[u8]| None;
        let sources = Sources {
            parts: 0..3,
            profiles: &profiles,
            members: &members,
            resolve: &resolve,
            deltas: true,
        };
        // Destination 7 is due for partition 0 only; 8 (full) for every one.
        let stale7 = |p: u32| p == 0;
        let stale8 = |_: u32| false;
        let no_changes = |_: u32| None;
        let dir = tempfile::tempdir().unwrap();
        let compute_in = |name: &str, which: &[u32]| {
            let jobs: Vec<Job<'_>> = which
                .iter()
                .map(|&did| {
                    let runs_dir = dir.path().join(name).join(did.to_string());
                    std::fs::create_dir_all(&runs_dir).unwrap();
                    Job {
                        dest: &config.destinations[&did],
                        template: (did == 8).then_some(&template),
                        full: false,
                        last: if did == 7 { last7 } else { None },
                        stale: if did == 7 { &stale7 } else { &stale8 },
                        changes: &no_changes,
                        runs_dir,
                    }
                })
                .collect();
            let sink = std::sync::Mutex::new(BTreeMap::new());
            let out = compute(&config, &jobs, &sources, &|name, payload| {
                sink.lock().unwrap().insert(name.to_string(), payload);
                Ok(())
            })
            .unwrap();
            let rows: Vec<(u32, Vec<ExportRow>, usize)> = out
                .iter()
                .map(|e| (e.view.did, merged(&e.runs), e.runs.files().len()))
                .collect();
            (rows, sink.into_inner().unwrap())
        };
        let (together, together_members) = compute_in("both", &[7, 8]);
        let (alone7, members7) = compute_in("seven", &[7]);
        let (alone8, members8) = compute_in("eight", &[8]);
        assert_eq!(together, [alone7, alone8].concat());
        let mut each = members7;
        each.extend(members8);
        assert_eq!(together_members, each);
        // 7 diffed partition 0 only (its members of it plus profile 9's exit); 8 all three.
        let keys: Vec<_> = together_members.keys().cloned().collect();
        let expected: Vec<String> = [(7, 0), (8, 0), (8, 1), (8, 2)]
            .iter()
            .map(|&(did, p)| members_part_name(did, p))
            .collect();
        assert_eq!(keys, expected);
        let (rows7, rows8) = (&together[0].1, &together[1].1);
        assert!(rows7.iter().all(|r| r.traits.is_empty()));
        assert!(rows7.iter().any(|r| r.key == key(9) && r.removed == [20]));
        assert!(rows8.iter().all(|r| r.traits.len() == 1));
        assert!(rows8.windows(2).all(|w| w[0].key < w[1].key));
        assert!(
            rows8
                .iter()
                .any(|r| r.key == key(5) && r.segments == [20, 30])
        );
    }

    #[test]
    fn the_cross_device_sources_are_part_of_an_aam_uuid_selection() {
        let uuids = view(ExportMode::Iter);
        let with = DestinationView {
            cross_device: vec![33],
            ..uuids.clone()
        };
        assert_ne!(uuids.fingerprint(), with.fingerprint());
        // A destination of device IDs never receives customer-ID profiles.
        let devices = DestinationView {
            device: Some(20_914),
            ..uuids
        };
        let devices_with = DestinationView {
            cross_device: vec![33],
            ..devices.clone()
        };
        assert_eq!(devices.fingerprint(), devices_with.fingerprint());
    }

    /// Rows of `rows` as the merge reads them back.
    fn read_rows(rows: PartRows, traits: bool) -> Vec<ExportRow> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.run");
        rows.write_run(&path).unwrap();
        merged(&Runs {
            files: vec![path],
            traits,
        })
    }

    proptest! {
        /// Fed only the profiles whose segments changed since the members were written, an
        /// `iter` diff sends the same rows and leaves the same members as a walk over every
        /// profile.
        #[test]
        fn a_diff_of_the_changes_equals_a_diff_of_every_profile(
            users in proptest::collection::btree_map(
                0u128..40,
                (
                    proptest::option::of(proptest::collection::btree_set(
                        prop_oneof![Just(10u32), Just(20), Just(30), Just(40), Just(50)],
                        0..4,
                    )),
                    proptest::option::of(proptest::collection::btree_set(
                        prop_oneof![Just(10u32), Just(20), Just(30), Just(40), Just(50)],
                        0..4,
                    )),
                ),
                0..30,
            )
        ) {
            let v = view(ExportMode::Iter);
            let resolve = |_: Dpid, _: &[u8]| None;
            let keys: BTreeMap<u128, Vec<u8>> =
                users.keys().map(|&n| (n, ProfileKey::Uuid(Uuid(n)).encode())).collect();
            let profiles_of = |new: bool| -> Vec<Profile<'_>> {
                users
                    .iter()
                    .filter_map(|(n, (before, after))| {
                        let segments = if new { after } else { before };
                        segments.as_ref().map(|s| Profile {
                            key: &keys[n],
                            events: Events::default(),
                            entries: vec![entry(5, 1000)],
                            segments: s.iter().copied().collect(),
                        })
                    })
                    .collect()
            };
            // The members the last export left: the old profiles diffed against none.
            let (_, payload) = diff_partition(&profiles_of(false), &[], &v, &resolve, false);
            let members = decode_members(&payload).unwrap();
            let (walked, walked_members) =
                diff_partition(&profiles_of(true), &members, &v, &resolve, false);
            let changes: Vec<Member<'_>> = users
                .iter()
                .filter_map(|(n, (before, after))| {
                    let empty = BTreeSet::new();
                    let after_or_none = after.as_ref().unwrap_or(&empty);
                    (before.as_ref().unwrap_or(&empty) != after_or_none).then(|| Member {
                        key: &keys[n],
                        segments: after_or_none.iter().copied().collect(),
                    })
                })
                .collect();
            let selection = Selection::new(v.clone(), false, false);
            let mut differ = Differ::new(&selection, &payload);
            differ.changes(&changes, &resolve);
            let (fed, fed_members) = differ.finish(&resolve).unwrap();
            let walked = read_rows(walked, false);
            prop_assert_eq!(read_rows(fed, false), walked.clone());
            prop_assert_eq!(&fed_members, &walked_members);
            // The same changes over a base and a delta that stand for the members: the same
            // rows, and a new delta that with the base stands for the same members.
            let (base, delta) = layered_members(&payload);
            prop_assert_eq!(overlay_members(&base, &delta).unwrap(), payload.clone());
            let mut differ = Differ::layered(&selection, &base, &delta);
            differ.changes(&changes, &resolve);
            let (layered, new_delta) = differ.finish(&resolve).unwrap();
            prop_assert_eq!(read_rows(layered, false), walked);
            prop_assert_eq!(overlay_members(&base, &new_delta).unwrap(), walked_members);
        }

        /// The bitmap (narrow spans) and the binary search (wide ones) answer alike.
        #[test]
        fn segment_sets_contain_exactly_their_segments(
            set in proptest::collection::btree_set(
                prop_oneof![0u32..300, 500_000u32..500_300, proptest::num::u32::ANY],
                0..20,
            ),
            probes in proptest::collection::vec(
                prop_oneof![0u32..300, 500_000u32..500_300, proptest::num::u32::ANY],
                0..30,
            ),
        ) {
            let sorted: Vec<u32> = set.iter().copied().collect();
            let s = SegmentSet::new(&sorted);
            for p in probes.iter().chain(&sorted).copied().chain([0, u32::MAX]) {
                prop_assert_eq!(s.contains(p), set.contains(&p), "{}", p);
            }
        }
    }

    #[test]
    fn template_trait_use() {
        let uses = |t: &str| Template::parse(t).unwrap().uses_traits();
        assert!(!uses("<UUID><TAB><SEGMENT_LIST;separator=\",\">"));
        assert!(uses("<UUID>,<TRAIT_LIST;separator=\",\">"));
        assert!(uses("<TRAIT_LIST:{t|<t.id>}>"));
        assert!(uses("<UUID><if(TRAIT_LIST)>x<endif>"));
        assert!(!uses("<UUID><if(SEGMENT_LIST)>x<endif>"));
    }

    const AS_OF: Timestamp = 1_700_000_000;

    fn destination(dir: &Path, template: Option<&str>) -> Destination {
        Destination {
            id: 7,
            sync_type: SyncType::Ftp,
            location: Location::Local(dir.to_path_buf()),
            master_dpid: 0,
            pid_alias: None,
            mode: ExportMode::Iter,
            segments: vec![10, 20, 30],
            gzip: false,
            split_bytes: 1 << 40,
            template: template.map(str::to_owned),
        }
    }

    #[test]
    fn write_export_renders_merged_rows() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let runs_dir = dir.path().join("runs");
        std::fs::create_dir(&runs_dir).unwrap();
        let parts = vec![
            vec![uuid_row(2, &[10], &[], &[]), uuid_row(1, &[20], &[30], &[])],
            vec![uuid_row(1, &[30], &[10], &[])],
        ];
        let runs = Runs::from_rows(&runs_dir, &parts, false).unwrap();
        let dest = destination(&out, None);
        let summary = write_export(
            &out,
            &dest,
            &view(ExportMode::Iter),
            None,
            &runs,
            AS_OF,
            AS_OF * 1000,
        )
        .unwrap();
        assert_eq!(summary.rows, 2);
        let text = std::fs::read_to_string(out.join(&summary.files[0])).unwrap();
        assert_eq!(text, format!("{} 20,30 10\n{} 10 \n", Uuid(1), Uuid(2)));
    }

    #[test]
    fn write_export_refuses_rows_without_traits_for_a_trait_template() {
        let dir = tempfile::tempdir().unwrap();
        let runs =
            Runs::from_rows(dir.path(), &[vec![uuid_row(1, &[10], &[], &[])]], false).unwrap();
        let text = "<UUID> <TRAIT_LIST;separator=\",\">";
        let template = Template::parse(text).unwrap();
        let out = dir.path().join("out");
        let e = write_export(
            &out,
            &destination(&out, Some(text)),
            &view(ExportMode::Iter),
            Some(&template),
            &runs,
            AS_OF,
            AS_OF * 1000,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "destination 7: its template uses TRAIT_LIST but the export's rows were computed \
             without traits"
        );
    }

    fn arb_row() -> impl Strategy<Value = ExportRow> {
        let list = || proptest::collection::btree_set(0u32..12, 0..4);
        (
            prop_oneof![
                (0u128..40).prop_map(|n| ProfileKey::Uuid(Uuid(n)).encode()),
                "[a-c]{0,3}".prop_map(|id| {
                    let mut key = Vec::new();
                    ProfileKey::encode_device(20_914, id.as_bytes(), &mut key);
                    key
                }),
            ],
            list(),
            list(),
            proptest::collection::vec((0u32..6, -3i64..3), 0..4),
        )
            .prop_map(|(key, segments, removed, traits)| ExportRow {
                user: match ProfileKey::decode(&key) {
                    Some(ProfileKey::Uuid(u)) => u.to_string(),
                    Some(ProfileKey::Device(_, id)) => String::from_utf8_lossy(&id).into_owned(),
                    _ => String::new(),
                },
                key,
                segments: segments.into_iter().collect(),
                removed: removed.into_iter().collect(),
                traits,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn streamed_merge_equals_sort_and_join(
            parts in proptest::collection::vec(proptest::collection::vec(arb_row(), 0..30), 0..6)
        ) {
            let dir = tempfile::tempdir().unwrap();
            let runs = Runs::from_rows(dir.path(), &parts, true).unwrap();
            prop_assert_eq!(merged(&runs), reference(&parts));
        }
    }
}
