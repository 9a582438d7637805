//! The ID-sync tables in the state: one file per (table, DPID, partition), records sorted by ID.
//!
//! A record is `id, value_dpid, value, timestamp`: `id` in the file's DPID maps to `value` in
//! `value_dpid`. The latest file by TIMESTAMP wins (CONTRACT §4); within one run files are
//! applied in (TIMESTAMP, name) order, rows in line order.

use super::Table;
use crate::codec::{Reader, Truncated, Writer};
use crate::model::{AAM_UUID_DPID, Dpid, Uuid, id_hash};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// One stored mapping, borrowing its partition's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub id: &'a [u8],
    pub value_dpid: Dpid,
    pub value: Value<'a>,
    pub timestamp: u64,
}

/// The master ID a record maps to: an AAM UUID (kept as its number: 16 bytes instead of 38
/// digits, and no parsing when the index loads it), or any other ID as received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value<'a> {
    Uuid(Uuid),
    Id(&'a [u8]),
}

impl<'a> Value<'a> {
    /// The value of a row's master ID `text` in `dpid`: a UUID when `dpid` is the AAM UUID
    /// space and `text` is one.
    pub fn of(dpid: Dpid, text: &'a [u8]) -> Value<'a> {
        match Uuid::parse(text) {
            Some(u) if dpid == AAM_UUID_DPID => Value::Uuid(u),
            _ => Value::Id(text),
        }
    }

    /// The ID as text, exactly as it was received.
    pub fn text(&self) -> Cow<'a, [u8]> {
        match *self {
            Value::Uuid(u) => Cow::Owned(u.to_string().into_bytes()),
            Value::Id(text) => Cow::Borrowed(text),
        }
    }
}

/// The state-relative name of a table partition.
pub fn part_name(table: Table, dpid: Dpid, part: u32) -> String {
    format!("{}/dpid-{dpid}/part-{part:04}", table.dir())
}

/// The state-relative name of a table partition's block index ([`crate::blocks`]), written
/// with it.
pub fn index_name(table: Table, dpid: Dpid, part: u32) -> String {
    part_name(table, dpid, part) + crate::state::INDEX_SUFFIX
}

/// The partition of `(dpid, id)`.
pub fn part_of(dpid: Dpid, id: &[u8], partitions: u32) -> u32 {
    part_of_hash(id_hash(dpid, id), partitions)
}

/// The partition of a key by its [`id_hash`]: the high 64 bits, multiply-shifted onto
/// `0..partitions`. The in-memory index derives its table from the same hash, so a lookup hashes
/// the ID once (the low 64 bits place it inside the partition's table).
#[inline]
pub fn part_of_hash(hash: u128, partitions: u32) -> u32 {
    (((hash >> 64) * u128::from(partitions)) >> 64) as u32
}

/// Calls `f` with every record of a partition, in stored order, without collecting them.
///
/// A record is `varint len, id, varint value_dpid, value, varint timestamp`, where the value
/// is `varint 0` and a little-endian u128 for an AAM UUID, else `varint len + 1` and the bytes.
/// Every mapping has exactly one encoding: a UUID is refused in text form and vice versa.
pub fn for_each<'a>(payload: &'a [u8], mut f: impl FnMut(Record<'a>)) -> Result<(), Truncated> {
    for_each_at(payload, |r, _| f(r))
}

/// [`for_each`], with each record's end offset in `payload`.
pub fn for_each_at<'a>(
    payload: &'a [u8],
    mut f: impl FnMut(Record<'a>, usize),
) -> Result<(), Truncated> {
    let mut r = Reader::new(payload);
    while !r.is_empty() {
        let record = read_record(&mut r)?;
        f(record, r.offset());
    }
    Ok(())
}

/// One record as [`for_each`] reads it.
fn read_record<'a>(r: &mut Reader<'a>) -> Result<Record<'a>, Truncated> {
    let id = r.short_bytes()?;
    let value_dpid = r.varint_u32()?;
    let at = r.offset();
    let value = match r.varint()? {
        0 => {
            let u = u128::from_le_bytes(r.array()?);
            if value_dpid != AAM_UUID_DPID || u >= 10u128.pow(38) {
                return Err(Truncated { offset: at });
            }
            Value::Uuid(Uuid(u))
        }
        n => {
            let len = usize::try_from(n - 1).map_err(|_| Truncated { offset: at })?;
            let text = r.take(len)?;
            if Value::of(value_dpid, text) != Value::Id(text) {
                return Err(Truncated { offset: at });
            }
            Value::Id(text)
        }
    };
    let timestamp = r.varint()?;
    Ok(Record {
        id,
        value_dpid,
        value,
        timestamp,
    })
}

/// Every record of a partition, in stored order.
pub fn decode(payload: &[u8]) -> Result<Vec<Record<'_>>, Truncated> {
    let mut out = Vec::new();
    for_each(payload, |r| out.push(r))?;
    Ok(out)
}

/// The first 8 bytes of an ID as a big-endian integer (zero-padded): ordering by it, then by
/// the whole ID, is the bytewise order.
#[inline]
pub fn id_prefix(id: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = id.len().min(8);
    b[..n].copy_from_slice(&id[..n]);
    u64::from_be_bytes(b)
}

/// Lays out records as [`for_each`] reads them.
pub fn encode(records: &[Record<'_>]) -> Vec<u8> {
    let mut w = Writer::default();
    w.buf.reserve(
        records
            .iter()
            .map(|r| {
                r.id.len()
                    + match r.value {
                        Value::Uuid(_) => 16,
                        Value::Id(text) => text.len(),
                    }
                    + 12
            })
            .sum(),
    );
    for rec in records {
        write_record(&mut w, rec);
    }
    w.buf
}

/// One record as [`for_each`] reads it.
fn write_record(w: &mut Writer, rec: &Record<'_>) {
    w.short_bytes(rec.id);
    w.varint(u64::from(rec.value_dpid));
    match rec.value {
        Value::Uuid(u) => {
            w.varint(0);
            w.buf.extend_from_slice(&u.0.to_le_bytes());
        }
        Value::Id(text) => {
            w.varint(text.len() as u64 + 1);
            w.buf.extend_from_slice(text);
        }
    }
    w.varint(rec.timestamp);
}

/// A mapping arriving tonight, with the index of the file it came from.
#[derive(Clone, Copy, Debug)]
pub struct Incoming<'a> {
    pub key_dpid: Dpid,
    pub record: Record<'a>,
    pub file: usize,
}

/// The result of applying tonight's mappings to one table.
#[derive(Default)]
pub struct Applied {
    /// New payloads by partition name; partitions not listed are unchanged.
    pub parts: BTreeMap<String, Vec<u8>>,
    /// Their block indexes, by name ([`index_name`]).
    pub indexes: BTreeMap<String, Vec<u8>>,
    /// Per file index: mappings stored (not superseded by a stored mapping from a later file).
    pub stored_per_file: BTreeMap<usize, u64>,
}

/// Errors reading the previous table.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("ID-sync table {part} is corrupt")]
    Corrupt { part: String, source: Truncated },
    #[error(transparent)]
    Read(#[from] anyhow::Error),
}

/// Merges `incoming` (in application order) into `table`. `old` returns a partition's
/// previous payload, if any.
pub fn apply(
    table: Table,
    incoming: &[Incoming<'_>],
    partitions: u32,
    old: &(dyn Fn(&str) -> anyhow::Result<Option<Vec<u8>>> + Sync),
) -> Result<Applied, StoreError> {
    let mut grouped = Grouped::new(partitions);
    for m in incoming {
        grouped.push(m.key_dpid, m.file, &m.record);
    }
    let parts = std::sync::Mutex::new((BTreeMap::new(), BTreeMap::new()));
    let stored_per_file = grouped.apply(table, old, &|name, payload| {
        let mut parts = parts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (files, indexes) = &mut *parts;
        let to = if name.ends_with(crate::state::INDEX_SUFFIX) {
            indexes
        } else {
            files
        };
        to.insert(name.to_owned(), payload);
        Ok(())
    })?;
    let (parts, indexes) = parts
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Ok(Applied {
        parts,
        indexes,
        stored_per_file,
    })
}

/// Tonight's mappings of one table grouped by (DPID, partition) as they are read, in
/// application order within each group, compactly encoded (the file index, then the record as
/// stored: about 50 bytes for a customer ID mapped to an AAM UUID), so the files' text and
/// per-mapping structs need not be held until every file is read. A group is a list of
/// segments, each a whole number of mappings: a chunk's encoding is kept as it was made.
pub struct Grouped {
    partitions: u32,
    groups: BTreeMap<(Dpid, u32), Vec<Writer>>,
    mappings: u64,
}

/// A position in a [`Grouped`] to roll back to: each group's segment count and the length of
/// its last segment.
pub struct GroupedMark(Vec<((Dpid, u32), (usize, usize))>);

/// One chunk's mappings grouped and encoded as [`Grouped`] keeps them, made on the parser's
/// thread so that the in-order hand-over ([`Grouped::append`]) moves buffers, copying nothing.
#[derive(Default)]
pub struct GroupedChunk {
    groups: BTreeMap<(Dpid, u32), Writer>,
    mappings: u64,
    /// Bytes each new group reserves (see [`GroupedChunk::for_text`]).
    reserve: usize,
}

impl GroupedChunk {
    /// An empty chunk for `text_bytes` of ID-sync text spread over `partitions`: each group
    /// reserves its expected share up front (encoded mappings are somewhat smaller than their
    /// text), so it is not copied as it grows.
    pub fn for_text(text_bytes: usize, partitions: u32) -> GroupedChunk {
        GroupedChunk {
            reserve: text_bytes / partitions.max(1) as usize * 3 / 4 + 64,
            ..GroupedChunk::default()
        }
    }

    /// Mappings pushed.
    pub fn len(&self) -> u64 {
        self.mappings
    }

    pub fn is_empty(&self) -> bool {
        self.mappings == 0
    }

    /// Adds one mapping of `key_dpid`, from file index `file` (see [`Grouped::push`]).
    pub fn push(&mut self, partitions: u32, key_dpid: Dpid, file: usize, record: &Record<'_>) {
        let part = part_of(key_dpid, record.id, partitions);
        let reserve = self.reserve;
        let w = self
            .groups
            .entry((key_dpid, part))
            .or_insert_with(|| Writer {
                buf: Vec::with_capacity(reserve),
            });
        push_into(w, file, record);
        self.mappings += 1;
    }
}

/// Encodes one mapping (its file index, then the record) at the end of `w`.
fn push_into(w: &mut Writer, file: usize, record: &Record<'_>) {
    w.varint(file as u64);
    write_record(w, record);
}

impl Grouped {
    pub fn new(partitions: u32) -> Grouped {
        Grouped {
            partitions,
            groups: BTreeMap::new(),
            mappings: 0,
        }
    }

    /// Mappings pushed so far.
    pub fn len(&self) -> u64 {
        self.mappings
    }

    pub fn is_empty(&self) -> bool {
        self.mappings == 0
    }

    /// Adds one mapping of `key_dpid`, from file index `file`.
    pub fn push(&mut self, key_dpid: Dpid, file: usize, record: &Record<'_>) {
        let part = part_of(key_dpid, record.id, self.partitions);
        let segments = self.groups.entry((key_dpid, part)).or_default();
        if segments.is_empty() {
            segments.push(Writer::default());
        }
        push_into(segments.last_mut().expect("one segment"), file, record);
        self.mappings += 1;
    }

    /// Adds a chunk's mappings after those pushed so far, each group's bytes as a segment of
    /// its own: what pushing each mapping would have stored.
    pub fn append(&mut self, chunk: GroupedChunk) {
        for (key, w) in chunk.groups {
            self.groups.entry(key).or_default().push(w);
        }
        self.mappings += chunk.mappings;
    }

    /// Where the groups are now, for [`Grouped::rollback`].
    pub fn mark(&self) -> GroupedMark {
        GroupedMark(
            self.groups
                .iter()
                .map(|(k, segments)| {
                    let last = segments.last().map_or(0, |w| w.buf.len());
                    (*k, (segments.len(), last))
                })
                .collect(),
        )
    }

    /// Drops every mapping pushed since `mark` (a file rejected after it was read).
    pub fn rollback(&mut self, mark: &GroupedMark) {
        let lens: BTreeMap<(Dpid, u32), (usize, usize)> = mark.0.iter().copied().collect();
        self.groups.retain(|k, segments| match lens.get(k) {
            Some(&(count, last)) => {
                segments.truncate(count);
                if let Some(w) = segments.last_mut() {
                    w.buf.truncate(last);
                }
                true
            }
            None => false,
        });
        self.mappings = 0;
        for w in self.groups.values().flatten() {
            let mut r = Reader::new(&w.buf);
            while !r.is_empty() && r.varint().is_ok() && read_record(&mut r).is_ok() {
                self.mappings += 1;
            }
        }
    }

    /// Merges every group into its partition of `table`, in parallel, and hands each new
    /// payload to `out` (name, payload) as soon as it is merged; a group's encoded mappings are
    /// freed as it is merged. Returns the mappings stored per file index.
    pub fn apply(
        self,
        table: Table,
        old: &(dyn Fn(&str) -> anyhow::Result<Option<Vec<u8>>> + Sync),
        out: &(dyn Fn(&str, Vec<u8>) -> anyhow::Result<()> + Sync),
    ) -> Result<BTreeMap<usize, u64>, StoreError> {
        use rayon::prelude::*;
        let groups: Vec<((Dpid, u32), Vec<Writer>)> = self.groups.into_iter().collect();
        let results: Vec<Result<Vec<(usize, u64)>, StoreError>> = groups
            .into_par_iter()
            .map(|((dpid, part), segments)| {
                let mut incoming = Vec::new();
                let damaged = |source| StoreError::Corrupt {
                    part: format!("tonight's mappings for {}", part_name(table, dpid, part)),
                    source,
                };
                for w in &segments {
                    let mut r = Reader::new(&w.buf);
                    while !r.is_empty() {
                        let file = r.varint().map_err(damaged)? as usize;
                        let record = read_record(&mut r).map_err(damaged)?;
                        incoming.push(Incoming {
                            key_dpid: dpid,
                            record,
                            file,
                        });
                    }
                }
                merge_group(table, dpid, part, &incoming, old, out)
            })
            .collect();
        let mut stored_per_file = BTreeMap::new();
        for r in results {
            for (file, n) in r? {
                *stored_per_file.entry(file).or_default() += n;
            }
        }
        Ok(stored_per_file)
    }
}

/// How many IDs ahead [`merge_group`] starts loading a mapping's ID (and twice as far, the
/// mapping).
const PREFETCH_AHEAD: usize = 8;

/// Merges one group's mappings (in application order) into partition `part` of `dpid` and
/// hands the new payload to `out`, then its block index ([`index_name`]; empty for an empty
/// partition); returns the mappings stored per file index.
fn merge_group(
    table: Table,
    dpid: Dpid,
    part: u32,
    incoming: &[Incoming<'_>],
    old: &(dyn Fn(&str) -> anyhow::Result<Option<Vec<u8>>> + Sync),
    out: &(dyn Fn(&str, Vec<u8>) -> anyhow::Result<()> + Sync),
) -> Result<Vec<(usize, u64)>, StoreError> {
    let name = part_name(table, dpid, part);
    let previous = old(&name)?;
    let stored_records = match &previous {
        Some(bytes) => decode(bytes).map_err(|source| StoreError::Corrupt {
            part: name.clone(),
            source,
        })?,
        None => Vec::new(),
    };
    // Sort by ID, then application order; keep the winner per ID. The first 8
    // bytes as an integer decide nearly every comparison without a memcmp.
    let mut group: Vec<(u64, u32)> = incoming
        .iter()
        .enumerate()
        .map(|(i, m)| (id_prefix(m.record.id), i as u32))
        .collect();
    group.sort_unstable_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| {
                incoming[a.1 as usize]
                    .record
                    .id
                    .cmp(incoming[b.1 as usize].record.id)
            })
            .then(a.1.cmp(&b.1))
    });
    // Walk the IDs in order, the winner of each merged with the stored records as it is
    // found, and encode as we go. Tonight's mappings are read in ID order from wherever their
    // chunks left them: start loading a mapping, then its ID, a few IDs ahead.
    let mut w = Writer::default();
    w.buf.reserve(
        previous.as_ref().map_or(0, Vec::len)
            + incoming
                .iter()
                .map(|m| m.record.id.len() + 28)
                .sum::<usize>(),
    );
    let mut index = crate::blocks::Indexer::default();
    let mut counts: BTreeMap<usize, u64> = BTreeMap::new();
    let mut stored = stored_records.iter().peekable();
    let mut k = 0;
    while k < group.len() {
        if let Some(&(_, ahead)) = group.get(k + 2 * PREFETCH_AHEAD) {
            crate::idsync::index::prefetch_read(&incoming[ahead as usize]);
        }
        if let Some(&(_, ahead)) = group.get(k + PREFETCH_AHEAD) {
            crate::idsync::index::prefetch_read(incoming[ahead as usize].record.id);
        }
        let first = &incoming[group[k].1 as usize];
        let (mut winner, mut file) = (first.record, first.file);
        k += 1;
        // Later in application order wins a tie of timestamps.
        while let Some(m) = group.get(k).map(|&(_, i)| &incoming[i as usize])
            && m.record.id == winner.id
        {
            if m.record.timestamp >= winner.timestamp {
                (winner, file) = (m.record, m.file);
            }
            k += 1;
        }
        while let Some(s) = stored.next_if(|s| s.id < winner.id) {
            write_indexed(&mut w, &mut index, s);
        }
        // A stored mapping of the same ID is replaced unless it is newer.
        if let Some(s) = stored.next_if(|s| s.id == winner.id)
            && s.timestamp > winner.timestamp
        {
            write_indexed(&mut w, &mut index, s);
            continue;
        }
        write_indexed(&mut w, &mut index, &winner);
        *counts.entry(file).or_default() += 1;
    }
    for s in stored {
        write_indexed(&mut w, &mut index, s);
    }
    let payload = w.buf;
    // The inputs go before the payload is handed on (it may be written out).
    drop(group);
    drop(stored_records);
    drop(previous);
    out(&name, payload)?;
    out(&index_name(table, dpid, part), index.finish())?;
    Ok(counts.into_iter().collect())
}

/// [`write_record`], with the record also going into the partition's block `index`.
fn write_indexed(w: &mut Writer, index: &mut crate::blocks::Indexer, rec: &Record<'_>) {
    let at = w.buf.len();
    write_record(w, rec);
    index.push(&w.buf[at..], rec.id, &crate::blocks::Counts::default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn rec<'a>(id: &'a str, value: &'a str, ts: u64) -> Record<'a> {
        Record {
            id: id.as_bytes(),
            value_dpid: 0,
            value: Value::of(0, value.as_bytes()),
            timestamp: ts,
        }
    }

    fn lookup(parts: &BTreeMap<String, Vec<u8>>, id: &str) -> Option<String> {
        parts.values().find_map(|bytes| {
            decode(bytes)
                .unwrap()
                .into_iter()
                .find(|r| r.id == id.as_bytes())
                .map(|r| String::from_utf8(r.value.text().into_owned()).unwrap())
        })
    }

    /// What applying `g` to an empty table stores: partitions by name, and counts per file.
    fn applied(g: Grouped) -> (BTreeMap<String, Vec<u8>>, BTreeMap<usize, u64>) {
        let none = |_: &str| -> anyhow::Result<Option<Vec<u8>>> { Ok(None) };
        let parts = std::sync::Mutex::new(BTreeMap::new());
        let stored = g
            .apply(Table::Adobe, &none, &|name, payload| {
                parts.lock().unwrap().insert(name.to_owned(), payload);
                Ok(())
            })
            .unwrap();
        (parts.into_inner().unwrap(), stored)
    }

    #[test]
    fn grouped_rollback_drops_exactly_the_mappings_since_the_mark() {
        let first: Vec<String> = (0..500).map(|i| format!("id-{i}")).collect();
        let mut want = Grouped::new(8);
        let mut got = Grouped::new(8);
        for id in &first {
            want.push(21, 0, &rec(id, "u1", 10));
            got.push(21, 0, &rec(id, "u1", 10));
        }
        let mark = got.mark();
        // Existing groups and new DPIDs (new groups) alike, appended as a chunk and pushed
        // after it (into the chunk's segments).
        let mut chunk = GroupedChunk::for_text(4096, 8);
        for i in 0..150 {
            chunk.push(8, 21, 1, &rec(&format!("id-{i}"), "u2", 20));
            chunk.push(8, 22, 1, &rec(&format!("x-{i}"), "u3", 20));
        }
        got.append(chunk);
        for i in 150..300 {
            got.push(21, 1, &rec(&format!("id-{i}"), "u2", 20));
            got.push(22, 1, &rec(&format!("x-{i}"), "u3", 20));
        }
        assert_eq!(got.len(), 1100);
        got.rollback(&mark);
        assert_eq!(got.len(), 500);
        assert_eq!(applied(got), applied(want));
    }

    #[test]
    fn appended_chunks_store_what_pushing_each_mapping_stores() {
        // The same IDs again in later chunks with later timestamps: order across segments
        // decides the winner.
        let mappings: Vec<(usize, String, String, u64)> = (0..2000)
            .map(|i| {
                (
                    i / 500,
                    format!("id-{}", i % 700),
                    format!("u{i}"),
                    10 + i as u64 / 1000,
                )
            })
            .collect();
        let mut pushed = Grouped::new(8);
        let mut appended = Grouped::new(8);
        for batch in mappings.chunks(333) {
            let mut chunk = GroupedChunk::for_text(1 << 12, 8);
            for (file, id, uuid, ts) in batch {
                pushed.push(21, *file, &rec(id, uuid, *ts));
                chunk.push(8, 21, *file, &rec(id, uuid, *ts));
            }
            appended.append(chunk);
        }
        assert_eq!(appended.len(), 2000);
        assert_eq!(applied(appended), applied(pushed));
    }

    #[test]
    fn latest_timestamp_wins_and_partitions_are_sorted() {
        let first = [
            Incoming {
                key_dpid: 21,
                record: rec("b", "u1", 100),
                file: 0,
            },
            Incoming {
                key_dpid: 21,
                record: rec("a", "u2", 100),
                file: 0,
            },
            Incoming {
                key_dpid: 21,
                record: rec("b", "u3", 100),
                file: 1,
            },
        ];
        let none = |_: &str| -> anyhow::Result<Option<Vec<u8>>> { Ok(None) };
        let applied = apply(Table::Adobe, &first, 1, &none).unwrap();
        assert_eq!(lookup(&applied.parts, "b").as_deref(), Some("u3"));
        let all = decode(applied.parts.values().next().unwrap()).unwrap();
        assert_eq!(
            all.iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![&b"a"[..], b"b"]
        );
        assert_eq!(applied.stored_per_file, BTreeMap::from([(0, 1), (1, 1)]));

        // An older file arriving later does not replace a newer stored mapping.
        let store: HashMap<String, Vec<u8>> = applied.parts.clone().into_iter().collect();
        let old =
            move |name: &str| -> anyhow::Result<Option<Vec<u8>>> { Ok(store.get(name).cloned()) };
        let late = [
            Incoming {
                key_dpid: 21,
                record: rec("b", "u9", 50),
                file: 0,
            },
            Incoming {
                key_dpid: 21,
                record: rec("c", "u4", 50),
                file: 0,
            },
        ];
        let applied2 = apply(Table::Adobe, &late, 1, &old).unwrap();
        assert_eq!(lookup(&applied2.parts, "b").as_deref(), Some("u3"));
        assert_eq!(lookup(&applied2.parts, "c").as_deref(), Some("u4"));
        assert_eq!(applied2.stored_per_file, BTreeMap::from([(0, 1)]));
    }

    proptest::proptest! {
        /// The merge of tonight's mappings into a stored partition keeps, per ID, the newest
        /// mapping: tonight's latest by timestamp (the later of a tie), unless the stored one
        /// is strictly newer; and counts each file's mappings that were stored.
        #[test]
        fn the_newest_mapping_of_each_id_is_stored(
            stored in proptest::collection::btree_map(0u8..40, 0u64..6, 0..30),
            tonight in proptest::collection::vec((0u8..40, 0u64..6, 0usize..3), 0..120),
            partitions in 1u32..4,
        ) {
            let id = |i: u8| format!("id-{i:02}");
            let value = |t: u64, k: usize| format!("v{t}-{k}");
            let ids: Vec<String> = (0..40).map(id).collect();
            let values: Vec<String> = (0..6)
                .flat_map(|t| (0..=120).map(move |k| value(t, k)))
                .collect();
            let v = |t: u64, k: usize| values[t as usize * 121 + k].as_str();
            // Stored values are numbered 120, tonight's by position (below 120).
            let old_parts: Vec<Incoming<'_>> = stored
                .iter()
                .map(|(&i, &t)| Incoming {
                    key_dpid: 21,
                    record: rec(&ids[i as usize], v(t, 120), t),
                    file: 0,
                })
                .collect();
            let none = |_: &str| -> anyhow::Result<Option<Vec<u8>>> { Ok(None) };
            let base = apply(Table::Adobe, &old_parts, partitions, &none).unwrap().parts;
            let old = |name: &str| -> anyhow::Result<Option<Vec<u8>>> {
                Ok(base.get(name).cloned())
            };
            let incoming: Vec<Incoming<'_>> = tonight
                .iter()
                .enumerate()
                .map(|(k, &(i, t, file))| Incoming {
                    key_dpid: 21,
                    record: rec(&ids[i as usize], v(t, k), t),
                    file,
                })
                .collect();
            let applied = apply(Table::Adobe, &incoming, partitions, &old).unwrap();

            // The model: stored first, then tonight's in order, a later one winning ties.
            let mut want: BTreeMap<u8, (u64, String, Option<usize>)> = stored
                .iter()
                .map(|(&i, &t)| (i, (t, value(t, 120), None)))
                .collect();
            for (k, &(i, t, file)) in tonight.iter().enumerate() {
                match want.get(&i) {
                    Some((old_t, _, _)) if *old_t > t => {}
                    _ => {
                        want.insert(i, (t, value(t, k), Some(file)));
                    }
                }
            }
            let mut counts = BTreeMap::new();
            for (_, _, file) in want.values() {
                if let Some(f) = file {
                    *counts.entry(*f).or_insert(0u64) += 1;
                }
            }
            proptest::prop_assert_eq!(&applied.stored_per_file, &counts);
            let mut parts = base.clone();
            parts.extend(applied.parts.clone());
            let mut got = BTreeMap::new();
            for payload in parts.values() {
                let records = decode(payload).unwrap();
                proptest::prop_assert!(records.windows(2).all(|w| w[0].id < w[1].id));
                for r in records {
                    got.insert(
                        String::from_utf8(r.id.to_vec()).unwrap(),
                        String::from_utf8(r.value.text().into_owned()).unwrap(),
                    );
                }
            }
            let want: BTreeMap<String, String> =
                want.into_iter().map(|(i, (_, v, _))| (id(i), v)).collect();
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn records_round_trip_with_one_encoding_each() {
        let uuid = b"00000000000000000000000000000000000042";
        let records = [
            Record {
                id: b"a",
                value_dpid: 0,
                value: Value::of(0, uuid),
                timestamp: 7,
            },
            Record {
                id: b"b",
                value_dpid: 20914,
                value: Value::of(20914, b"e4fe9bde-caa0-47b6-908d-ffba3fa184f2"),
                timestamp: u64::MAX,
            },
            // Not a UUID, though in the UUID space: kept as text.
            Record {
                id: b"c",
                value_dpid: 0,
                value: Value::of(0, b"123"),
                timestamp: 0,
            },
            // 38 digits in another space: text too.
            Record {
                id: b"d",
                value_dpid: 21,
                value: Value::of(21, uuid),
                timestamp: 1,
            },
        ];
        assert!(matches!(records[0].value, Value::Uuid(_)));
        assert!(matches!(records[3].value, Value::Id(_)));
        assert_eq!(records[0].value.text().as_ref(), uuid);
        let bytes = encode(&records);
        assert_eq!(decode(&bytes).unwrap(), records);
        // A UUID in text form is not its encoding: refused, like a UUID outside space 0.
        let mut w = Writer::default();
        w.short_bytes(b"a");
        w.varint(0);
        w.varint(uuid.len() as u64 + 1);
        w.buf.extend_from_slice(uuid);
        w.varint(7);
        assert!(decode(&w.buf).is_err());
        let mut w = Writer::default();
        w.short_bytes(b"a");
        w.varint(21);
        w.varint(0);
        w.buf.extend_from_slice(&42u128.to_le_bytes());
        w.varint(7);
        assert!(decode(&w.buf).is_err());
    }

    #[test]
    fn truncated_partition_is_an_error() {
        let bytes = encode(&[rec("a", "b", 1)]);
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
    }
}
