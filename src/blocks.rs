//! The block index of a sorted state file (`<partition>.index`, beside a profile partition's
//! base or an ID-sync table's partition): the file cut into blocks of whole records, about
//! [`BLOCK`] bytes each, and for each block its first key, its checksum and, for profiles, what
//! a merge counts of them ([`Counts`]; zero for ID-sync records).
//!
//! With it, a night that needs a few keys of a large file reads only the blocks they fall in:
//! a delta merge ([`crate::profile::merge::merge_partition_delta`]) the blocks that tonight's
//! lines or a due event fall in, counting the others from the index and the delta's
//! [`DeltaCounts`] (without those, also the blocks the delta's profiles fall in); a
//! small night's ID lookups ([`crate::idsync::index::IdIndex::build_wanted`]) the blocks of
//! the IDs they look up. A block that is read is first checked against its checksum here, so
//! the file needs no pass over all of it; the index itself is a data file of the generation,
//! checked whole when read.
//!
//! ```text
//! varint file length | varint block count | per block:
//!   varint length | u64 xxh3-64 of its bytes | varint profiles | varint entries |
//!   u8 customer-ID profiles (0/1) | earliest expiry day | earliest flip day | first key
//! ```
//!
//! (days as in a profile header: 0 for none, else the day plus one.)

use crate::codec::{Reader, Truncated, Writer};
use crate::model::ProfileKey;
use crate::profile::{Events, Stored};

/// A block is closed at the first record boundary at or past this many bytes. Small enough
/// that a night of 20,000 lines over 20M profiles reads about a tenth of them; large enough
/// that the index is about 1.5% of the file.
#[cfg(not(test))]
pub const BLOCK: usize = 4096;
/// Small in tests, so that their partitions have many blocks.
#[cfg(test)]
pub const BLOCK: usize = 64;

/// What a merge counts of a run of stored profiles it does not read (zero in an ID-sync
/// table's index).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub profiles: u64,
    /// Their entries (trait realizations) together.
    pub entries: u64,
    /// Whether one of them is a cross-device customer-ID profile.
    pub customer: bool,
    /// The earliest of their events.
    pub events: Events,
}

impl Counts {
    /// One profile's.
    pub fn of(stored: &Stored<'_>) -> Counts {
        Counts {
            profiles: 1,
            entries: u64::from(stored.entries),
            customer: stored.key.first() == Some(&ProfileKey::TAG_CUSTOMER),
            events: stored.events,
        }
    }

    /// Writes them as a block index holds them.
    fn write(&self, w: &mut Writer) {
        w.varint(self.profiles);
        w.varint(self.entries);
        w.u8(u8::from(self.customer));
        for day in [self.events.expiry_day, self.events.flip_day] {
            w.varint(day.map_or(0, |d| u64::from(d) + 1));
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Counts, Truncated> {
        Ok(Counts {
            profiles: r.varint()?,
            entries: r.varint()?,
            customer: r.u8()? != 0,
            events: Events {
                expiry_day: crate::profile::day(r)?,
                flip_day: crate::profile::day(r)?,
            },
        })
    }

    pub fn add(&mut self, other: &Counts) {
        let earliest = |a: Option<u32>, b: Option<u32>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // Saturating: counts read from a file cannot overflow them.
        self.profiles = self.profiles.saturating_add(other.profiles);
        self.entries = self.entries.saturating_add(other.entries);
        self.customer |= other.customer;
        self.events = Events {
            expiry_day: earliest(self.events.expiry_day, other.events.expiry_day),
            flip_day: earliest(self.events.flip_day, other.events.flip_day),
        };
    }
}

/// One block of an indexed file.
#[derive(Clone, Copy, Debug)]
pub struct Block<'a> {
    /// Where it starts in the file.
    pub start: usize,
    pub len: usize,
    pub hash: u64,
    pub first_key: &'a [u8],
    pub counts: Counts,
}

impl Block<'_> {
    /// The `file`'s bytes of this block, once they match its checksum; `Err` with the block's
    /// offset when they do not.
    pub fn checked<'b>(&self, file: &'b [u8]) -> Result<&'b [u8], usize> {
        file.get(self.start..self.start + self.len)
            .filter(|bytes| xxhash_rust::xxh3::xxh3_64(bytes) == self.hash)
            .ok_or(self.start)
    }
}

/// A decoded block index.
#[derive(Debug)]
pub struct BlockIndex<'a> {
    /// The xxh3-64 of the index itself, which covers every block's checksum.
    pub hash: u64,
    /// The length of the file it indexes.
    pub base_len: usize,
    /// In key order, back to back from offset 0 to `base_len`.
    pub blocks: Vec<Block<'a>>,
}

impl<'a> BlockIndex<'a> {
    pub fn decode(payload: &'a [u8]) -> Result<BlockIndex<'a>, Truncated> {
        let mut r = Reader::new(payload);
        let base_len = usize_of(&mut r)?;
        let n = usize_of(&mut r)?;
        // Each block takes at least 14 bytes: a lying count cannot reserve much.
        let mut blocks = Vec::with_capacity(n.min(r.remaining() / 14));
        let mut start = 0usize;
        for _ in 0..n {
            let len = usize_of(&mut r)?;
            let hash = r.u64()?;
            let counts = Counts::read(&mut r)?;
            let first_key = r.short_bytes()?;
            blocks.push(Block {
                start,
                len,
                hash,
                first_key,
                counts,
            });
            start = start
                .checked_add(len)
                .ok_or(Truncated { offset: r.offset() })?;
        }
        if !r.is_empty() || start != base_len {
            return Err(Truncated { offset: r.offset() });
        }
        Ok(BlockIndex {
            hash: xxhash_rust::xxh3::xxh3_64(payload),
            base_len,
            blocks,
        })
    }

    /// The block that `key` falls in (the last whose first key is not after it; the first
    /// block for a key before every block).
    pub fn block_of(&self, key: &[u8]) -> usize {
        self.blocks
            .partition_point(|b| b.first_key <= key)
            .saturating_sub(1)
    }
}

/// What a profile partition's delta changes of its base's block counts
/// ([`crate::profile::delta_counts_name`], beside the delta): for each block of the base
/// whose profiles, with the delta laid over them, count otherwise than the index says, what
/// they count. A key belongs to the block [`BlockIndex::block_of`] gives, so the delta's new
/// profiles count in the block they would fall in.
///
/// With it, a delta night reads a block only for tonight's lines or a due event, not for the
/// delta's records in it (which it copies), and a block whose due profile the delta already
/// holds changed is no longer due. It names the delta and the block index it was made with
/// (their checksums), and is not used with any other.
///
/// ```text
/// u64 xxh3-64 of the delta | u64 xxh3-64 of the index | varint base blocks |
///   varint changed blocks |
///   per changed block, ascending: varint its number less the previous one's | counts as in
///   the block index
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeltaCounts {
    pub delta_hash: u64,
    pub index_hash: u64,
    pub blocks: usize,
    /// (block, what it counts with the delta), ascending by block.
    pub changed: Vec<(usize, Counts)>,
}

impl DeltaCounts {
    /// Of `counts` (each block's, with `delta` laid over the base of `index`), those that
    /// differ from the index's.
    pub fn new(index: &BlockIndex<'_>, delta: &[u8], counts: &[Counts]) -> DeltaCounts {
        DeltaCounts {
            delta_hash: xxhash_rust::xxh3::xxh3_64(delta),
            index_hash: index.hash,
            blocks: index.blocks.len(),
            changed: index
                .blocks
                .iter()
                .zip(counts)
                .enumerate()
                .filter(|(_, (b, c))| b.counts != **c)
                .map(|(i, (_, c))| (i, *c))
                .collect(),
        }
    }

    /// Whether it was made for `delta` over the base of `index`.
    pub fn fits(&self, index: &BlockIndex<'_>, delta: &[u8]) -> bool {
        self.index_hash == index.hash
            && self.blocks == index.blocks.len()
            && self.delta_hash == xxhash_rust::xxh3::xxh3_64(delta)
    }

    /// Each block's counts: the index's, but where this says otherwise.
    pub fn apply(&self, index: &BlockIndex<'_>) -> Vec<Counts> {
        let mut counts: Vec<Counts> = index.blocks.iter().map(|b| b.counts).collect();
        for &(i, c) in &self.changed {
            if let Some(slot) = counts.get_mut(i) {
                *slot = c;
            }
        }
        counts
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u64(self.delta_hash);
        w.u64(self.index_hash);
        w.varint(self.blocks as u64);
        w.varint(self.changed.len() as u64);
        let mut previous = 0;
        for (i, c) in &self.changed {
            w.varint((i - previous) as u64);
            c.write(&mut w);
            previous = *i;
        }
        w.buf
    }

    pub fn decode(payload: &[u8]) -> Result<DeltaCounts, Truncated> {
        let mut r = Reader::new(payload);
        let delta_hash = r.u64()?;
        let index_hash = r.u64()?;
        let blocks = usize_of(&mut r)?;
        let n = usize_of(&mut r)?;
        // Each entry takes at least 6 bytes: a lying count cannot reserve much.
        let mut changed = Vec::with_capacity(n.min(r.remaining() / 6));
        let mut previous: Option<usize> = None;
        for _ in 0..n {
            let at = r.offset();
            let gap = usize_of(&mut r)?;
            // Ascending, and each a block of the base.
            let block = match previous {
                None => Some(gap),
                Some(p) => p.checked_add(gap).filter(|_| gap > 0),
            }
            .filter(|&b| b < blocks)
            .ok_or(Truncated { offset: at })?;
            changed.push((block, Counts::read(&mut r)?));
            previous = Some(block);
        }
        if !r.is_empty() {
            return Err(Truncated { offset: r.offset() });
        }
        Ok(DeltaCounts {
            delta_hash,
            index_hash,
            blocks,
            changed,
        })
    }
}

/// [`BlockIndex::block_of`] for keys that come in ascending order: a step forward each
/// instead of a search.
#[derive(Debug, Default)]
pub struct BlockCursor {
    block: usize,
}

impl BlockCursor {
    /// The block of `key`, no earlier than the last key's.
    pub fn of(&mut self, index: &BlockIndex<'_>, key: &[u8]) -> usize {
        while index
            .blocks
            .get(self.block + 1)
            .is_some_and(|b| b.first_key <= key)
        {
            self.block += 1;
        }
        self.block
    }
}

fn usize_of(r: &mut Reader<'_>) -> Result<usize, Truncated> {
    let at = r.offset();
    usize::try_from(r.varint()?).map_err(|_| Truncated { offset: at })
}

/// Builds the block index of a file as its records are written, in order.
#[derive(Default)]
pub struct Indexer {
    blocks: Writer,
    count: u64,
    len: usize,
    /// The open block: its bytes (hashed at once when it closes: cheaper than hashing each
    /// record as it comes), its first key and counts.
    block: Vec<u8>,
    first_key: Vec<u8>,
    counts: Counts,
}

impl Indexer {
    /// The next record of the file: its whole encoding, its key and its counts.
    pub fn push(&mut self, raw: &[u8], key: &[u8], counts: &Counts) {
        if self.block.is_empty() {
            self.first_key.clear();
            self.first_key.extend_from_slice(key);
            self.block.reserve(2 * BLOCK);
        }
        self.block.extend_from_slice(raw);
        self.counts.add(counts);
        if self.block.len() >= BLOCK {
            self.close();
        }
    }

    fn close(&mut self) {
        if self.block.is_empty() {
            return;
        }
        let w = &mut self.blocks;
        w.varint(self.block.len() as u64);
        w.u64(xxhash_rust::xxh3::xxh3_64(&self.block));
        self.counts.write(w);
        w.short_bytes(&self.first_key);
        self.count += 1;
        self.len += self.block.len();
        self.block.clear();
        self.counts = Counts::default();
    }

    /// The index payload (empty for an empty file, which has no index).
    pub fn finish(mut self) -> Vec<u8> {
        self.close();
        if self.count == 0 {
            return Vec::new();
        }
        let mut w = Writer::default();
        w.varint(self.len as u64);
        w.varint(self.count);
        w.buf.extend_from_slice(&self.blocks.buf);
        w.buf
    }
}

/// The block index of `base`, a whole profile partition.
#[cfg(test)]
pub(crate) fn index_of(base: &[u8]) -> Vec<u8> {
    let mut indexer = Indexer::default();
    let mut r = Reader::new(base);
    let mut at = 0;
    while let Some(stored) = crate::profile::next_or_end(&mut r).expect("a partition") {
        indexer.push(&base[at..r.offset()], stored.key, &Counts::of(&stored));
        at = r.offset();
    }
    indexer.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{Entry, encode_into, next_or_end};

    /// A base of `n` profiles and its index.
    fn base(n: u32) -> (Vec<u8>, Vec<u8>) {
        let mut w = Writer::default();
        for i in 0..n {
            // In key order: the last is a customer-ID profile.
            let tag = if i + 1 == n {
                ProfileKey::TAG_CUSTOMER
            } else {
                0
            };
            let key = [&[tag][..], &i.to_be_bytes()].concat();
            let entries: Vec<Entry> = (0..1 + i % 5)
                .map(|t| Entry {
                    trait_id: t,
                    data_source: 1,
                    realized_at: 1000,
                })
                .collect();
            let events = Events {
                expiry_day: Some(100 + i),
                flip_day: (i % 3 == 0).then_some(50 + i),
            };
            encode_into(&mut w, &key, events, &entries, &[1, 2]);
        }
        let index = index_of(&w.buf);
        (w.buf, index)
    }

    #[test]
    fn blocks_cover_the_base_and_count_its_profiles() {
        let (base, payload) = base(3000);
        let index = BlockIndex::decode(&payload).unwrap();
        assert_eq!(index.base_len, base.len());
        assert!(index.blocks.len() > 10, "{}", index.blocks.len());
        let mut total = Counts::default();
        for (i, b) in index.blocks.iter().enumerate() {
            assert!(b.len >= BLOCK || i + 1 == index.blocks.len());
            let bytes = b.checked(&base).unwrap();
            let mut r = Reader::new(bytes);
            let mut counts = Counts::default();
            let first = next_or_end(&mut r).unwrap().unwrap();
            assert_eq!(first.key, b.first_key);
            counts.add(&Counts::of(&first));
            while let Some(stored) = next_or_end(&mut r).unwrap() {
                counts.add(&Counts::of(&stored));
            }
            assert_eq!(counts, b.counts);
            total.add(&counts);
            assert_eq!(index.block_of(b.first_key), i);
        }
        assert_eq!(total.profiles, 3000);
        assert!(total.customer);
        assert_eq!(total.events.expiry_day, Some(100));
        assert_eq!(total.events.flip_day, Some(50));
        assert_eq!(index.block_of(b""), 0);
        assert_eq!(index.block_of(&[0xff; 8]), index.blocks.len() - 1);
    }

    #[test]
    fn a_changed_byte_fails_its_block_and_a_bad_index_does_not_decode() {
        let (mut base, payload) = base(3000);
        let index = BlockIndex::decode(&payload).unwrap();
        let b = index.blocks[3];
        base[b.start + 5] ^= 1;
        assert_eq!(b.checked(&base), Err(b.start));
        assert!(index.blocks[4].checked(&base).is_ok());
        // Cut short, or with a block length that does not add up to the base.
        assert!(BlockIndex::decode(&payload[..payload.len() - 1]).is_err());
        let mut longer = Writer::default();
        longer.varint(base.len() as u64 + 1);
        let mut r = Reader::new(&payload);
        r.varint().unwrap();
        longer.buf.extend_from_slice(&payload[r.offset()..]);
        assert!(BlockIndex::decode(&longer.buf).is_err());
        assert!(Indexer::default().finish().is_empty());
    }

    #[test]
    fn delta_counts_list_the_blocks_that_differ_and_fit_only_their_delta() {
        let (_, payload) = base(3000);
        let index = BlockIndex::decode(&payload).unwrap();
        let n = index.blocks.len();
        let mut counts: Vec<Counts> = index.blocks.iter().map(|b| b.counts).collect();
        counts[2].entries += 1;
        counts[n - 1] = Counts::default();
        counts[7].events.expiry_day = Some(9999);
        let delta = b"the delta".as_slice();
        let made = DeltaCounts::new(&index, delta, &counts);
        let listed: Vec<usize> = made.changed.iter().map(|&(i, _)| i).collect();
        assert_eq!(listed, [2, 7, n - 1]);
        assert_eq!(made.apply(&index), counts);
        let encoded = made.encode();
        assert_eq!(DeltaCounts::decode(&encoded).unwrap(), made);
        assert!(made.fits(&index, delta));
        assert!(!made.fits(&index, b"another delta"));
        // Nothing changed still says so (and which delta it is of).
        let unchanged: Vec<Counts> = index.blocks.iter().map(|b| b.counts).collect();
        let same = DeltaCounts::new(&index, delta, &unchanged);
        assert!(same.changed.is_empty());
        assert!(
            DeltaCounts::decode(&same.encode())
                .unwrap()
                .fits(&index, delta)
        );
        // Cut short, trailing bytes, blocks out of order or past the base: errors.
        assert!(DeltaCounts::decode(&encoded[..encoded.len() - 1]).is_err());
        assert!(DeltaCounts::decode(&[encoded.as_slice(), &[0]].concat()).is_err());
        let unordered = DeltaCounts {
            changed: vec![(3, Counts::default()), (3, Counts::default())],
            ..made.clone()
        };
        assert!(DeltaCounts::decode(&unordered.encode()).is_err());
        let past = DeltaCounts {
            changed: vec![(n, Counts::default())],
            ..made.clone()
        };
        assert!(DeltaCounts::decode(&past.encode()).is_err());
    }

    #[test]
    fn a_cursor_gives_each_ascending_key_its_block() {
        let (base, payload) = base(3000);
        let index = BlockIndex::decode(&payload).unwrap();
        let mut cursor = BlockCursor::default();
        let mut r = Reader::new(&base);
        assert_eq!(cursor.of(&index, b""), 0);
        while let Some(stored) = next_or_end(&mut r).unwrap() {
            assert_eq!(cursor.of(&index, stored.key), index.block_of(stored.key));
        }
        assert_eq!(cursor.of(&index, &[0xff; 8]), index.blocks.len() - 1);
    }
}
