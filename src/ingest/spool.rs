//! Tonight's ops, held per profile partition in run order within a memory budget (DESIGN,
//! "Memory and scale on one machine").
//!
//! Chunks' op buffers are pushed in run order. When the buffered ops outgrow the budget, the
//! partitions holding the most are appended to one spill file each (a batch of compact varint
//! records after a header of their sizes) and their buffers freed. When a partition is merged, its spill file is read back first and its
//! buffers still in memory follow, so the ops come back in exactly the order they were pushed,
//! however much was spilled: outputs never depend on the budget.
//!
//! A file is applied whole or not at all: [`Spool::checkpoint`] before a file and
//! [`Spool::rollback`] when it is rejected after its ops were pushed (a gzip stream corrupt
//! halfway, an input that changed while read) drop exactly that file's ops, in memory and on
//! disk, whatever was spilled in between.

use super::{Act, ActKind, Op, OpBuf};
use crate::codec::{Reader, Writer};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Ops decoded into one buffer before the next is started, so that the `u32` offsets of an
/// [`OpBuf`] never overflow however large a spill file is.
const OPS_PER_DECODED_BUF: usize = 1 << 20;

/// Write buffer of a spill file.
const SPILL_BUF_BYTES: usize = 256 << 10;

/// One partition's ops: spilled ones (older) on disk, the rest in memory.
#[derive(Default)]
struct PartSpool {
    bufs: Vec<OpBuf>,
    /// Heap bytes of `bufs`.
    held: usize,
    /// Bytes written to this partition's spill file so far.
    spilled: u64,
    /// The checkpoint: how many of `bufs` precede it; once they are spilled (0 left),
    /// `cp_offset` is where it falls in the spill file.
    cp_bufs: usize,
    cp_offset: u64,
}

/// What the spool did, for the run report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Bytes of ops written to spill files (rolled-back bytes included).
    pub spilled_bytes: u64,
    /// How many times the budget was exceeded.
    pub spills: u64,
}

/// Tonight's ops per partition; see the module docs.
pub struct Spool {
    dir: PathBuf,
    parts: Vec<PartSpool>,
    held: usize,
    budget: usize,
    stats: SpoolStats,
}

/// One partition's ops, handed to the merge: [`PartOps::load`] reads them back in run order.
pub struct PartOps {
    file: Option<PathBuf>,
    spilled: u64,
    bufs: Vec<OpBuf>,
}

impl Spool {
    /// An empty spool of `partitions` partitions holding at most about `budget` bytes of ops
    /// in memory; spill files go to `dir` (created on the first spill).
    pub fn new(partitions: u32, budget: usize, dir: PathBuf) -> Spool {
        Spool {
            dir,
            parts: (0..partitions).map(|_| PartSpool::default()).collect(),
            held: 0,
            budget: budget.max(1),
            stats: SpoolStats::default(),
        }
    }

    /// Bytes of ops held in memory now.
    pub fn held(&self) -> usize {
        self.held
    }

    pub fn stats(&self) -> SpoolStats {
        self.stats
    }

    /// Appends one chunk's buffers, `parts[p]` for partition `p`; spills if the budget is
    /// exceeded.
    ///
    /// # Errors
    ///
    /// A spill file that cannot be written; the message names it.
    pub fn push(&mut self, parts: Vec<OpBuf>) -> io::Result<()> {
        for (p, mut buf) in parts.into_iter().enumerate() {
            if buf.ops.is_empty() {
                continue;
            }
            let Some(part) = self.parts.get_mut(p) else {
                continue;
            };
            // Chunk buffers are sized for an even spread of the chunk's lines: a partition that
            // got far fewer gives its slack back (a copy); a little slack is cheaper to keep
            // (it counts against the budget).
            if buf.heap_bytes() > 2 * buf.used_bytes() {
                buf.shrink_to_fit();
            }
            let bytes = buf.heap_bytes();
            part.held += bytes;
            self.held += bytes;
            part.bufs.push(buf);
        }
        if self.held > self.budget {
            self.spill()?;
        }
        Ok(())
    }

    /// Spills the partitions holding the most until at most half the budget is held.
    fn spill(&mut self) -> io::Result<()> {
        self.spill_to(self.budget / 2)
    }

    /// Writes every op still in memory to the spill files: a staged run's map and resolve
    /// tasks hand their ops on as those files ([`spill_file`] names them).
    ///
    /// # Errors
    ///
    /// A spill file that cannot be written; the message names it.
    pub fn spill_all(&mut self) -> io::Result<()> {
        if self.held == 0 {
            return Ok(());
        }
        self.spill_to(0)
    }

    /// Spills the partitions holding the most until at most `target` bytes are held.
    fn spill_to(&mut self, target: usize) -> io::Result<()> {
        self.stats.spills += 1;
        let mut order: Vec<usize> = (0..self.parts.len()).collect();
        order.sort_by_key(|&p| std::cmp::Reverse(self.parts[p].held));
        for p in order {
            if self.held <= target {
                break;
            }
            let part = &mut self.parts[p];
            if part.bufs.is_empty() {
                continue;
            }
            let path = spill_path(&self.dir, p);
            let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
            crate::failpoint::hit("spill-ops").map_err(named)?;
            // Ops from before the checkpoint first, so the checkpoint gets its file offset.
            let (before, after) = part.bufs.split_at(part.cp_bufs.min(part.bufs.len()));
            if !before.is_empty() {
                let written = append(&self.dir, &path, before).map_err(named)?;
                part.spilled += written;
                self.stats.spilled_bytes += written;
                part.cp_bufs = 0;
                part.cp_offset = part.spilled;
            }
            let written = append(&self.dir, &path, after).map_err(named)?;
            part.spilled += written;
            self.stats.spilled_bytes += written;
            self.held -= part.held;
            part.held = 0;
            part.bufs = Vec::new();
        }
        Ok(())
    }

    /// Marks the spool's current contents: [`Spool::rollback`] drops everything pushed after
    /// the latest checkpoint.
    pub fn checkpoint(&mut self) {
        for part in &mut self.parts {
            part.cp_bufs = part.bufs.len();
            part.cp_offset = part.spilled;
        }
    }

    /// Drops every op pushed since the latest [`Spool::checkpoint`], in memory and in spill
    /// files.
    ///
    /// # Errors
    ///
    /// A spill file that cannot be truncated; the message names it.
    pub fn rollback(&mut self) -> io::Result<()> {
        for (p, part) in self.parts.iter_mut().enumerate() {
            if part.cp_bufs == 0 && part.spilled > part.cp_offset {
                // Spilled since: every buffer still in memory is newer than the checkpoint too.
                let path = spill_path(&self.dir, p);
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(part.cp_offset))
                    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
                part.spilled = part.cp_offset;
            }
            let keep = part.cp_bufs.min(part.bufs.len());
            for buf in part.bufs.drain(keep..) {
                let bytes = buf.heap_bytes();
                part.held -= bytes;
                self.held -= bytes;
            }
        }
        Ok(())
    }

    /// Every partition's ops, for the merge.
    pub fn into_parts(self) -> Vec<PartOps> {
        let dir = self.dir;
        self.parts
            .into_iter()
            .enumerate()
            .map(|(p, part)| PartOps {
                file: (part.spilled > 0).then(|| spill_path(&dir, p)),
                spilled: part.spilled,
                bufs: part.bufs,
            })
            .collect()
    }
}

impl PartOps {
    /// Whether the partition received no op tonight.
    pub fn is_empty(&self) -> bool {
        self.spilled == 0 && self.bufs.is_empty()
    }

    /// The partition's ops in run order: the spill file's first, then the buffers held.
    ///
    /// # Errors
    ///
    /// A spill file that cannot be read or does not decode; the message names it.
    pub fn load(self) -> io::Result<Vec<OpBuf>> {
        let mut out = Vec::new();
        if let Some(path) = &self.file {
            let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
            let mut bytes = Vec::with_capacity(usize::try_from(self.spilled).unwrap_or(0));
            File::open(path)
                .and_then(|f| f.take(self.spilled).read_to_end(&mut bytes))
                .map_err(named)?;
            if bytes.len() as u64 != self.spilled {
                return Err(named(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "spill file shorter than written",
                )));
            }
            decode(&bytes, &mut out)
                .map_err(|reason| named(io::Error::new(io::ErrorKind::InvalidData, reason)))?;
        }
        out.extend(self.bufs);
        Ok(out)
    }
}

fn spill_path(dir: &Path, part: usize) -> PathBuf {
    dir.join(spill_file(part as u32))
}

/// The name of partition `part`'s spill file in the spool's folder.
pub fn spill_file(part: u32) -> String {
    format!("ops-{part:04}")
}

/// Reads back a whole spill file written by [`Spool::spill_all`] (by another process), or
/// nothing if there is none (the partition got no op).
///
/// # Errors
///
/// A file that cannot be read or does not decode; the message names it.
pub fn read_spilled(path: &Path) -> io::Result<Vec<OpBuf>> {
    let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(named(e)),
    };
    let mut out = Vec::new();
    decode(&bytes, &mut out)
        .map_err(|reason| named(io::Error::new(io::ErrorKind::InvalidData, reason)))?;
    Ok(out)
}

/// Appends `bufs` to `path` as one batch; returns the bytes written (none, and no file
/// created, when `bufs` hold no op).
///
/// A batch starts with how many ops, key bytes and acts follow, so that reading it back
/// allocates each buffer once at its final size instead of growing it.
fn append(dir: &Path, path: &Path, bufs: &[OpBuf]) -> io::Result<u64> {
    let ops: usize = bufs.iter().map(|b| b.ops.len()).sum();
    if ops == 0 {
        return Ok(0);
    }
    std::fs::create_dir_all(dir)?;
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let mut out = BufWriter::with_capacity(SPILL_BUF_BYTES, file);
    let mut w = Writer::default();
    w.varint(ops as u64);
    // What the ops refer to: a buffer may hold the key and acts of an op it dropped.
    let ops_of = || bufs.iter().flat_map(|b| &b.ops);
    w.varint(ops_of().map(|op| u64::from(op.key.1)).sum());
    w.varint(ops_of().map(|op| u64::from(op.acts.1)).sum());
    let mut written = 0u64;
    for buf in bufs {
        for op in &buf.ops {
            encode_op(&mut w, buf, op);
            if w.buf.len() >= SPILL_BUF_BYTES {
                out.write_all(&w.buf)?;
                written += w.buf.len() as u64;
                w.buf.clear();
            }
        }
    }
    out.write_all(&w.buf)?;
    written += w.buf.len() as u64;
    out.flush()?;
    Ok(written)
}

fn encode_op(w: &mut Writer, buf: &OpBuf, op: &Op) {
    w.varint(op.seq);
    w.short_bytes(buf.key(op));
    let acts = buf.acts(op);
    w.varint(acts.len() as u64);
    for a in acts {
        w.varint(u64::from(a.item));
        w.varint(u64::from(a.trait_id));
        w.u8(match a.kind {
            ActKind::Realize => 0,
            ActKind::Remove => 1,
            ActKind::Touch => 2,
        });
    }
    w.varint(u64::from(op.items));
    w.varint(u64::from(op.malformed));
    w.varint(u64::from(op.failed));
}

/// Decodes spilled batches (see [`append`]) into buffers of at most [`OPS_PER_DECODED_BUF`]
/// ops each.
fn decode(bytes: &[u8], out: &mut Vec<OpBuf>) -> Result<(), String> {
    decode_in(bytes, OPS_PER_DECODED_BUF, out)
}

/// [`decode`] into buffers of at most `per_buf` ops.
fn decode_in(bytes: &[u8], per_buf: usize, out: &mut Vec<OpBuf>) -> Result<(), String> {
    let mut r = Reader::new(bytes);
    let bad = |r: &Reader<'_>, what: &str| format!("{what} at byte {}", r.offset());
    while !r.is_empty() {
        let start = r.offset();
        let mut header = [0u64; 3];
        for v in &mut header {
            *v = r.varint().map_err(|_| bad(&r, "truncated batch header"))?;
        }
        let [ops, keys, acts] = header.map(|v| usize::try_from(v).unwrap_or(usize::MAX));
        // An op takes at least 6 bytes and an act 3: a header claiming more than the rest of
        // the file could hold is damage, not a reason to allocate that much.
        let rest = r.remaining();
        if ops == 0 || ops > rest / 6 || keys > rest || acts > rest / 3 {
            return Err(bad(&r, "batch header does not fit the file"));
        }
        decode_batch(&mut r, [ops, keys, acts], per_buf, out)
            .map_err(|e| format!("{e} (the batch at byte {start})"))?;
    }
    Ok(())
}

/// Decodes one batch of `left` = [ops, key bytes, acts] from `r` into buffers of at most
/// `per_buf` ops.
fn decode_batch(
    r: &mut Reader<'_>,
    mut left: [usize; 3],
    per_buf: usize,
    out: &mut Vec<OpBuf>,
) -> Result<(), String> {
    let bad = |r: &Reader<'_>, what: &str| format!("{what} at byte {}", r.offset());
    while left[0] > 0 {
        let take = left[0].min(per_buf.max(1));
        // A batch spanning several buffers shares its keys and acts out by ops; a buffer
        // that needs more than its share grows.
        let share = |total: usize| (total as u128 * take as u128 / left[0] as u128) as usize;
        let mut buf = OpBuf {
            keys: Vec::with_capacity(share(left[1])),
            ops: Vec::with_capacity(take),
            acts: Vec::with_capacity(share(left[2])),
        };
        for _ in 0..take {
            let seq = r.varint().map_err(|_| bad(r, "truncated op"))?;
            let key = r.short_bytes().map_err(|_| bad(r, "truncated key"))?;
            let n = r.varint_u32().map_err(|_| bad(r, "truncated act count"))?;
            let key_at = (buf.keys.len() as u32, key.len() as u32);
            buf.keys.extend_from_slice(key);
            let acts_at = buf.acts.len() as u32;
            for _ in 0..n {
                let item = r.varint_u32().map_err(|_| bad(r, "truncated act"))?;
                let trait_id = r.varint_u32().map_err(|_| bad(r, "truncated act"))?;
                let kind = match r.u8().map_err(|_| bad(r, "truncated act"))? {
                    0 => ActKind::Realize,
                    1 => ActKind::Remove,
                    2 => ActKind::Touch,
                    _ => return Err(bad(r, "unknown act kind")),
                };
                buf.acts.push(Act {
                    item,
                    trait_id,
                    kind,
                });
            }
            let items = r.varint_u32().map_err(|_| bad(r, "truncated op"))?;
            let malformed = r.varint_u32().map_err(|_| bad(r, "truncated op"))?;
            let failed = r.varint_u32().map_err(|_| bad(r, "truncated op"))?;
            buf.ops.push(Op {
                seq,
                key: key_at,
                acts: (acts_at, n),
                items,
                malformed,
                failed,
            });
        }
        left[0] -= take;
        for (left, used) in left[1..].iter_mut().zip([buf.keys.len(), buf.acts.len()]) {
            *left = left
                .checked_sub(used)
                .ok_or_else(|| bad(r, "batch does not match its header"))?;
        }
        out.push(buf);
    }
    if left != [0; 3] {
        return Err(bad(r, "batch does not match its header"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A buffer of `n` ops with seqs from `first`, keys and acts derived from the seq.
    fn buf(first: u64, n: u64) -> OpBuf {
        let mut b = OpBuf::default();
        for seq in first..first + n {
            let key = format!("user-{}", seq % 7).into_bytes();
            let key_at = (b.keys.len() as u32, key.len() as u32);
            b.keys.extend_from_slice(&key);
            let acts_at = b.acts.len() as u32;
            let acts = (seq % 3) as u32;
            for i in 0..acts {
                b.acts.push(Act {
                    item: if i == 2 { crate::ingest::NO_ITEM } else { i },
                    trait_id: 1000 + seq as u32,
                    kind: [ActKind::Realize, ActKind::Remove, ActKind::Touch][i as usize],
                });
            }
            b.ops.push(Op {
                seq,
                key: key_at,
                acts: (acts_at, acts),
                items: acts + 1,
                malformed: (seq % 2) as u32,
                failed: (seq % 5) as u32,
            });
        }
        b
    }

    /// An op as owned values: seq, key, acts, items, malformed, failed.
    type Owned = (u64, Vec<u8>, Vec<Act>, u32, u32, u32);

    /// Every op of `bufs` in order, as owned values.
    fn flat(bufs: &[OpBuf]) -> Vec<Owned> {
        bufs.iter()
            .flat_map(|b| {
                b.ops.iter().map(move |op| {
                    (
                        op.seq,
                        b.key(op).to_vec(),
                        b.acts(op).to_vec(),
                        op.items,
                        op.malformed,
                        op.failed,
                    )
                })
            })
            .collect()
    }

    /// Pushes 40 chunks of 2 partitions (partition 1 empty every third chunk) into a spool with
    /// `budget`, and returns each partition's loaded ops.
    fn run(budget: usize, dir: &Path) -> (Vec<Vec<Owned>>, SpoolStats) {
        let mut spool = Spool::new(2, budget, dir.to_path_buf());
        for c in 0..40u64 {
            let second = if c % 3 == 0 {
                OpBuf::default()
            } else {
                buf(c * 100 + 50, 20)
            };
            spool.push(vec![buf(c * 100, 30), second]).unwrap();
        }
        let stats = spool.stats();
        let parts = spool
            .into_parts()
            .into_iter()
            .map(|p| flat(&p.load().unwrap()))
            .collect();
        (parts, stats)
    }

    #[test]
    fn ops_come_back_in_push_order_whatever_the_budget() {
        let tmp = tempfile::tempdir().unwrap();
        let (all_in_memory, stats) = run(usize::MAX, &tmp.path().join("a"));
        assert_eq!(stats.spills, 0);
        assert_eq!(all_in_memory[0].len(), 40 * 30);
        assert_eq!(all_in_memory[1].len(), 26 * 20);
        for budget in [1, 3000, 20_000] {
            let (parts, stats) = run(budget, &tmp.path().join(format!("b{budget}")));
            assert!(
                stats.spills > 0 && stats.spilled_bytes > 0,
                "{budget}: {stats:?}"
            );
            assert_eq!(parts, all_in_memory, "budget {budget}");
        }
    }

    #[test]
    fn rollback_drops_exactly_the_ops_pushed_since_the_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        for budget in [1, 5000, usize::MAX] {
            let dir = tmp.path().join(format!("s{budget}"));
            let mut spool = Spool::new(2, budget, dir.clone());
            spool.push(vec![buf(0, 30), buf(1000, 10)]).unwrap();
            spool.checkpoint();
            let held = spool.held();
            for c in 1..10 {
                spool
                    .push(vec![buf(c * 100, 30), buf(c * 100 + 50, 5)])
                    .unwrap();
            }
            spool.rollback().unwrap();
            if budget == usize::MAX {
                assert_eq!(spool.held(), held);
            }
            spool.push(vec![buf(5000, 3), OpBuf::default()]).unwrap();
            let parts: Vec<_> = spool
                .into_parts()
                .into_iter()
                .map(|p| flat(&p.load().unwrap()))
                .collect();
            let mut want0 = flat(&[buf(0, 30)]);
            want0.extend(flat(&[buf(5000, 3)]));
            assert_eq!(parts[0], want0, "budget {budget}");
            assert_eq!(parts[1], flat(&[buf(1000, 10)]), "budget {budget}");
        }
    }

    #[test]
    fn a_damaged_spill_file_is_an_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("s");
        let mut spool = Spool::new(1, 1, dir.clone());
        spool.push(vec![buf(0, 10)]).unwrap();
        let path = spill_path(&dir, 0);
        let len = std::fs::metadata(&path).unwrap().len();
        // Cut inside the last op: the file is shorter than the spool wrote.
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 1)
            .unwrap();
        let Err(err) = spool.into_parts().pop().unwrap().load() else {
            panic!("a cut spill file loaded");
        };
        let err = err.to_string();
        assert!(err.contains("ops-0000") && err.contains("shorter"), "{err}");
    }

    /// The bytes [`append`] writes for `bufs`.
    fn spilled(bufs: &[OpBuf]) -> Vec<u8> {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("ops");
        let written = append(tmp.path(), &path, bufs).unwrap();
        if written == 0 {
            assert!(!path.exists());
            return Vec::new();
        }
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, written);
        bytes
    }

    #[test]
    fn a_batch_is_read_back_into_buffers_allocated_once() {
        // The per-user cap drops ops from a buffer and leaves their keys and acts in it.
        let mut capped = buf(500, 25);
        capped.retain(|op| op.seq % 4 != 1);
        let bufs = [buf(0, 30), capped];
        let bytes = spilled(&bufs);
        let mut one = Vec::new();
        decode(&bytes, &mut one).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].heap_bytes(), one[0].used_bytes());
        assert_eq!(flat(&one), flat(&bufs));
        // Split over buffers of 7 ops, each gets its share and the ops come back in order.
        let mut split = Vec::new();
        decode_in(&bytes, 7, &mut split).unwrap();
        let ops: usize = bufs.iter().map(|b| b.ops.len()).sum();
        assert!(ops < 55);
        assert_eq!(split.len(), ops.div_ceil(7));
        assert!(split.iter().all(|b| b.ops.len() <= 7));
        assert_eq!(flat(&split), flat(&bufs));
        // Two batches in one file.
        let mut twice = bytes.clone();
        twice.extend(spilled(&[buf(900, 4)]));
        let mut both = Vec::new();
        decode(&twice, &mut both).unwrap();
        let mut want = flat(&bufs);
        want.extend(flat(&[buf(900, 4)]));
        assert_eq!(flat(&both), want);
        // Nothing to spill writes nothing.
        assert!(spilled(&[OpBuf::default()]).is_empty());
    }

    #[test]
    fn a_batch_header_that_does_not_match_its_ops_is_an_error() {
        let bufs = [buf(0, 30)];
        let bytes = spilled(&bufs);
        let mut r = Reader::new(&bytes);
        let header: Vec<u64> = (0..3).map(|_| r.varint().unwrap()).collect();
        let body = &bytes[r.offset()..];
        let with = |h: [u64; 3]| {
            let mut w = Writer::default();
            h.iter().for_each(|&v| w.varint(v));
            w.buf.extend_from_slice(body);
            let mut out = Vec::new();
            decode(&w.buf, &mut out).map(|()| flat(&out))
        };
        let h = [header[0], header[1], header[2]];
        assert_eq!(with(h).unwrap(), flat(&bufs));
        for (h, want) in [
            ([h[0], h[1] + 1, h[2]], "does not match its header"),
            ([h[0], h[1] - 1, h[2]], "does not match its header"),
            ([h[0], h[1], h[2] + 1], "does not match its header"),
            ([h[0] - 1, h[1], h[2]], "does not match its header"),
            ([h[0] + 1, h[1], h[2]], "truncated"),
            ([u64::MAX, h[1], h[2]], "does not fit"),
            ([0, 0, 0], "does not fit"),
        ] {
            let err = with(h).unwrap_err();
            assert!(err.contains(want), "{h:?}: {err}");
        }
    }

    #[test]
    fn an_empty_partition_loads_nothing() {
        let spool = Spool::new(3, 1, PathBuf::from("/nonexistent/never-created"));
        for p in spool.into_parts() {
            assert!(p.is_empty());
            assert!(p.load().unwrap().is_empty());
        }
    }
}
