//! The bare join, a floor for `scripts/bench.sh`: what the nightly job costs without anything
//! segmill does beyond joining. It maps the ID-sync files (`<AAM UUID> TAB <customer ID>`),
//! builds a hash map from customer ID to UUID, then reads the trait files
//! (`<customer ID> TAB <items>`), looks every line's ID up, and writes each matched line with
//! the UUID in place of the ID, counting matched and unmatched lines. No item is parsed, no
//! profile kept, nothing validated; both stages run on all of rayon's threads
//! (`RAYON_NUM_THREADS`). Done the careful way, as segmill's index does it: keys are 128-bit
//! xxh3 hashes of the IDs (no key bytes to compare), in open-addressing tables of 32-byte
//! slots that hold the UUID too (a 38-digit UUID as two 19-digit halves), probed in batches of
//! 16 lines whose slots are prefetched first.
//!
//! ```text
//! cargo bench --bench bare_join -- OUT ID_SYNC_FILE... -- TRAIT_FILE...
//! ```
//!
//! Without files (as `cargo test --all-targets` runs it) it joins a small generated sample and
//! checks its counts and output.

use rayon::prelude::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The ID map is split by hash into this many shards, built in parallel.
const SHARDS: usize = 64;

/// Input is cut into chunks of about this many bytes, at line ends.
const CHUNK: usize = 8 << 20;

/// Trait chunks joined at once before their output is written in order.
const BATCH: usize = 16;

/// Lines whose slots are prefetched before any of them is looked up.
const LOOKUP_BATCH: usize = 16;

/// One shard's table: linear probing over a power of two of slots, at most half full.
struct Shard {
    slots: Vec<Slot>,
}

#[derive(Clone, Copy, Default)]
#[repr(C, align(32))]
struct Slot {
    /// 0: empty (the hash 0 is stored as 1).
    key: u128,
    uuid: Uuid,
}

impl Shard {
    fn new(len: usize) -> Shard {
        Shard {
            slots: vec![Slot::default(); (len * 2).max(16).next_power_of_two()],
        }
    }

    fn home(&self, key: u128) -> usize {
        key as usize & (self.slots.len() - 1)
    }

    /// Inserts or replaces.
    fn insert(&mut self, key: u128, uuid: Uuid) {
        let key = key.max(1);
        let mut i = self.home(key);
        while self.slots[i].key != 0 && self.slots[i].key != key {
            i = (i + 1) & (self.slots.len() - 1);
        }
        self.slots[i] = Slot { key, uuid };
    }

    fn prefetch(&self, key: u128) {
        let slot = &self.slots[self.home(key.max(1))];
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch is a hint that never faults; the pointer comes from a reference.
        #[allow(unsafe_code)]
        unsafe {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            _mm_prefetch::<_MM_HINT_T0>((slot as *const Slot).cast::<i8>());
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = slot;
    }

    fn get(&self, key: u128) -> Option<Uuid> {
        let key = key.max(1);
        let mut i = self.home(key);
        loop {
            let slot = &self.slots[i];
            if slot.key == key {
                return Some(slot.uuid);
            }
            if slot.key == 0 {
                return None;
            }
            i = (i + 1) & (self.slots.len() - 1);
        }
    }

    fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.key != 0).count()
    }
}

/// One chunk's (customer ID hash, UUID) mappings, by shard.
type ByShard = Vec<Vec<(u128, Uuid)>>;

/// A 38-digit AAM UUID as its first and last 19 digits.
#[derive(Clone, Copy, Default)]
struct Uuid(u64, u64);

impl Uuid {
    fn parse(text: &[u8]) -> Option<Uuid> {
        if text.len() != 38 || !text.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let half = |digits: &[u8]| {
            digits
                .iter()
                .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'))
        };
        Some(Uuid(half(&text[..19]), half(&text[19..])))
    }

    fn write(self, out: &mut Vec<u8>) {
        let mut digits = [0u8; 38];
        for (half, mut n) in digits.chunks_mut(19).zip([self.0, self.1]) {
            for d in half.iter_mut().rev() {
                *d = b'0' + (n % 10) as u8;
                n /= 10;
            }
        }
        out.extend_from_slice(&digits);
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let result = match args.split_first() {
        None => self_check(),
        Some((out, files)) => {
            let split = files.iter().position(|a| a == "--");
            match split {
                Some(i) => run(Path::new(out), &paths(&files[..i]), &paths(&files[i + 1..])),
                None => Err("usage: bare_join OUT ID_SYNC_FILE... -- TRAIT_FILE...".into()),
            }
        }
    };
    if let Err(e) = result {
        eprintln!("bare_join: {e}");
        std::process::exit(1);
    }
}

fn paths(args: &[String]) -> Vec<PathBuf> {
    args.iter().map(PathBuf::from).collect()
}

type Error = Box<dyn std::error::Error>;

/// Line counts of a join.
#[derive(Debug, Default, PartialEq, Eq)]
struct Counts {
    ids: usize,
    lines: u64,
    matched: u64,
    unmatched: u64,
}

fn run(out: &Path, idsync: &[PathBuf], traits: &[PathBuf]) -> Result<(), Error> {
    let started = Instant::now();
    let maps = map_all(idsync)?;
    let ids = build(&maps);
    let built = started.elapsed().as_secs_f64();
    let trait_maps = map_all(traits)?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(out)?);
    let mut counts = join(&ids, &trait_maps, &mut w)?;
    w.flush()?;
    counts.ids = ids.iter().map(Shard::len).sum();
    let total = started.elapsed().as_secs_f64();
    println!(
        "{{\"ids\": {}, \"lines\": {}, \"matched\": {}, \"unmatched\": {}, \"build_s\": {built:.2}, \"join_s\": {:.2}}}",
        counts.ids,
        counts.lines,
        counts.matched,
        counts.unmatched,
        total - built
    );
    Ok(())
}

fn map_all(files: &[PathBuf]) -> Result<Vec<memmap2::Mmap>, Error> {
    files
        .iter()
        .map(|f| {
            let file = std::fs::File::open(f).map_err(|e| format!("{}: {e}", f.display()))?;
            // SAFETY: the benchmark's inputs are not modified while it runs.
            #[allow(unsafe_code)]
            let map = unsafe { memmap2::Mmap::map(&file) }?;
            Ok(map)
        })
        .collect()
}

/// `text` cut into pieces of about `CHUNK` bytes, each ending at a line end (or the end).
fn chunks(text: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let cut = if rest.len() <= CHUNK {
            rest.len()
        } else {
            memchr::memchr(b'\n', &rest[CHUNK..]).map_or(rest.len(), |i| CHUNK + i + 1)
        };
        out.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    out
}

fn lines(chunk: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    memchr::memchr_iter(b'\n', chunk)
        .chain(std::iter::once(chunk.len()))
        .map(move |end| {
            let line = &chunk[start.min(end)..end];
            start = end + 1;
            line.strip_suffix(b"\r").unwrap_or(line)
        })
        .filter(|l| !l.is_empty())
}

fn key(id: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(id)
}

fn shard_of(key: u128) -> usize {
    (key >> 122) as usize % SHARDS
}

/// The customer-ID → UUID map of the ID-sync files, in shards; a later mapping of an ID wins.
fn build(maps: &[memmap2::Mmap]) -> Vec<Shard> {
    let pieces: Vec<&[u8]> = maps.iter().flat_map(|m| chunks(m)).collect();
    // Each chunk's mappings grouped by shard, in file order.
    let grouped: Vec<ByShard> = pieces
        .par_iter()
        .map(|chunk| {
            let mut by_shard: ByShard = vec![Vec::new(); SHARDS];
            for line in lines(chunk) {
                let Some(tab) = memchr::memchr(b'\t', line) else {
                    continue;
                };
                let (uuid, id) = (&line[..tab], &line[tab + 1..]);
                if let Some(uuid) = Uuid::parse(uuid) {
                    let k = key(id);
                    by_shard[shard_of(k)].push((k, uuid));
                }
            }
            by_shard
        })
        .collect();
    (0..SHARDS)
        .into_par_iter()
        .map(|s| {
            let mut shard = Shard::new(grouped.iter().map(|g| g[s].len()).sum());
            for &(key, uuid) in grouped.iter().flat_map(|g| &g[s]) {
                shard.insert(key, uuid);
            }
            shard
        })
        .collect()
}

/// Joins the trait files against `ids`, writing matched lines in input order.
fn join(ids: &[Shard], maps: &[memmap2::Mmap], w: &mut impl Write) -> Result<Counts, Error> {
    let pieces: Vec<&[u8]> = maps.iter().flat_map(|m| chunks(m)).collect();
    let mut counts = Counts::default();
    for batch in pieces.chunks(BATCH) {
        let joined: Vec<(Vec<u8>, u64, u64)> = batch
            .par_iter()
            .map(|chunk| {
                let mut out = Vec::with_capacity(chunk.len() + chunk.len() / 4);
                let (mut matched, mut unmatched) = (0, 0);
                let mut lines = lines(chunk).peekable();
                let mut batch: Vec<(u128, &[u8])> = Vec::with_capacity(LOOKUP_BATCH);
                while lines.peek().is_some() {
                    batch.clear();
                    for line in lines.by_ref().take(LOOKUP_BATCH) {
                        let tab = memchr::memchr(b'\t', line).unwrap_or(line.len());
                        let k = key(&line[..tab]);
                        ids[shard_of(k)].prefetch(k);
                        batch.push((k, &line[tab..]));
                    }
                    for &(k, rest) in &batch {
                        match ids[shard_of(k)].get(k) {
                            Some(uuid) => {
                                matched += 1;
                                uuid.write(&mut out);
                                out.extend_from_slice(rest);
                                out.push(b'\n');
                            }
                            None => unmatched += 1,
                        }
                    }
                }
                (out, matched, unmatched)
            })
            .collect();
        for (out, matched, unmatched) in joined {
            w.write_all(&out)?;
            counts.matched += matched;
            counts.unmatched += unmatched;
            counts.lines += matched + unmatched;
        }
    }
    Ok(counts)
}

/// A small join with known answers.
fn self_check() -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    let mut idsync = String::new();
    for i in 0..5_000u64 {
        idsync.push_str(&format!("{:038}\tcust-{i}\n", 10_000_000 + i));
    }
    // A later mapping of an ID wins.
    idsync.push_str(&format!("{}\tcust-7\n", "9".repeat(38)));
    // Not a UUID: skipped.
    idsync.push_str("123\tcust-9999\n");
    let mut traits = String::new();
    for i in 0..12_000u64 {
        traits.push_str(&format!("cust-{i}\td_sid={}\n", i % 97));
    }
    let (ids_path, traits_path, out) = (
        dir.path().join("ids"),
        dir.path().join("traits"),
        dir.path().join("out"),
    );
    std::fs::write(&ids_path, idsync)?;
    std::fs::write(&traits_path, traits)?;
    let maps = map_all(&[ids_path])?;
    let ids = build(&maps);
    let trait_maps = map_all(&[traits_path])?;
    let mut w = std::fs::File::create(&out)?;
    let counts = join(&ids, &trait_maps, &mut w)?;
    let want = Counts {
        ids: 0,
        lines: 12_000,
        matched: 5_000,
        unmatched: 7_000,
    };
    if counts != want {
        return Err(format!("counts {counts:?}, want {want:?}").into());
    }
    let text = std::fs::read_to_string(&out)?;
    let mut rows = text.lines();
    let (first, eighth) = (rows.next(), rows.nth(6));
    let (want_first, want_eighth) = (
        format!("{:038}\td_sid=0", 10_000_000),
        format!("{}\td_sid=7", "9".repeat(38)),
    );
    if first != Some(want_first.as_str()) || eighth != Some(want_eighth.as_str()) {
        return Err(format!("unexpected rows {first:?}, {eighth:?}").into());
    }
    if ids.iter().map(Shard::len).sum::<usize>() != 5_000 {
        return Err("the map should hold 5,000 IDs".into());
    }
    println!("bare_join self-check: ok");
    Ok(())
}
