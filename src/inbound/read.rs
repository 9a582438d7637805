//! Readers: turn one inbound file (plain or gzip) into newline-aligned [`Chunk`]s and run a
//! pure per-chunk function on them in parallel.
//!
//! Owns: opening the file, mapping plain files into memory, inflating gzip streams on a
//! dedicated thread, skipping the UTF-8 BOM at the start of the text (CONTRACT §3), cutting the
//! text into chunks that never split a line, numbering the chunks' first lines, and the content
//! hash the ledger stores.
//!
//! Does not: interpret lines (CRs, blank lines and line length are the parser's business), choose
//! the thread count (the caller `install`s its rayon pool), or decrypt PGP. One exception keeps
//! memory bounded: a line longer than [`KEPT_LINE_BYTES`] is cut (see [`Chunk::bytes`]), so a
//! gigabyte without a newline, plain or gzip, never has to be held or copied whole.
//!
//! Input: a path, whether it is gzip, a target chunk size and `f`. Output: `f`'s results in chunk
//! order plus the text's byte and physical-line counts, or a [`ReadError`]; on error no result
//! is returned, so nothing from a corrupt file is ever applied.
//!
//! # Safety of memory maps
//!
//! Plain files are memory-mapped. If another process truncates or rewrites a file while it is
//! mapped, reading the vanished pages kills the process with SIGBUS (or yields the new bytes).
//! segmill's contract is that inbound files are immutable once dropped; the README's cron
//! contract repeats this.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crossbeam_channel::{Receiver, Sender};
use flate2::bufread::MultiGzDecoder;
use memchr::{memchr, memchr_iter, memrchr};
use memmap2::Mmap;
use rayon::prelude::*;
use xxhash_rust::xxh3::{Xxh3Default, xxh3_128};

use crate::parse::MAX_LINE_BYTES;

/// Default target size of a chunk: 4 MiB. Large enough that per-chunk costs (a rayon task,
/// per-partition output buffers) vanish against the parsing work, small enough that a 100 MB
/// file still yields 25 chunks to balance over the threads and that gzip buffers in flight
/// (about 2 × threads of them) stay a few tens of MiB.
pub const DEFAULT_CHUNK_BYTES: usize = 4 << 20;

/// Size of the buffer between the gzip file and the decoder. DESIGN.md measured `read()` with
/// 64–128 KiB buffers 4.5x faster than with 1 MiB ones.
const GZ_INPUT_BUF_BYTES: usize = 128 << 10;

/// Upper bound of one up-front reservation in a gzip chunk buffer, so that a huge `chunk_bytes`
/// never asks the allocator for more than this at once (the buffer still grows as text arrives).
const MAX_RESERVE_BYTES: usize = 64 << 20;

/// Window in which a mapped file is hashed and then released.
const HASH_WINDOW_BYTES: usize = 32 << 20;

/// Step in which a file that cannot be mapped is read for hashing.
const HASH_READ_BYTES: usize = 128 << 10;

/// The UTF-8 byte order mark, skipped at the very start of the (decompressed) text only.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The longest line handed to `f` whole; a longer line is cut to this many bytes (see
/// [`Chunk::bytes`]). Two more than [`MAX_LINE_BYTES`], so that what is kept of a cut line is
/// still too long for both parsers: trait files count a CR in the limit, ID-sync files do not
/// (`idsync::MAX_ROW_BYTES`, checked below), and a kept line may end in a CR.
pub const KEPT_LINE_BYTES: usize = MAX_LINE_BYTES + 2;

const _: () = assert!(crate::idsync::MAX_ROW_BYTES <= MAX_LINE_BYTES);

/// Step in which the rest of a cut gzip line is read and dropped.
const SKIP_READ_BYTES: usize = 128 << 10;

/// One newline-aligned piece of a file's (decompressed) text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk<'a> {
    /// 0-based position of the chunk in the file.
    pub index: usize,
    /// 1-based physical line number of the chunk's first line (blank lines count).
    pub first_line: u64,
    /// The text: starts at a line start, ends right after a `'\n'` or at the end of the text.
    /// Never empty.
    ///
    /// Every line longer than [`KEPT_LINE_BYTES`] (its `'\n'` not counted) is replaced by what
    /// is kept of it, its `'\n'` kept, so line numbers do not move. What is kept is chosen so
    /// that the parsers classify it as they would the whole line: too long, or blank when the
    /// whole line is blank. It is the line's first [`KEPT_LINE_BYTES`] bytes, unless those are
    /// all spaces (a last CR allowed) and the line is not blank: then it is the spaces just
    /// before the line's first other byte, that byte, and when it is a CR the byte after it
    /// (`KEPT_LINE_BYTES` or one more bytes). It depends only on the line, never on
    /// `chunk_bytes`, so receipts and rejects do not either.
    pub bytes: &'a [u8],
}

/// What [`read_chunks`] returns for a file that was read whole.
#[derive(Debug, PartialEq, Eq)]
pub struct ReadOutcome<R> {
    /// `f`'s result for every chunk, in chunk order.
    pub results: Vec<R>,
    /// Bytes of (decompressed) text, BOM excluded.
    pub bytes: u64,
    /// Physical lines: newlines, plus one when the text does not end in `'\n'`; 0 for no text.
    pub lines: u64,
}

/// Why a file could not be read. Either way the whole file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file could not be opened, mapped or read (or its decoder thread not started).
    #[error("cannot read {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The gzip stream is corrupt or truncated: bad header, CRC mismatch, unexpected end,
    /// trailing garbage.
    #[error("{}: corrupt or truncated gzip stream: {reason}; ask the partner to resend the file", path.display())]
    Gzip {
        /// The file.
        path: PathBuf,
        /// The decoder's reason and how far it got.
        reason: String,
    },
}

impl ReadError {
    fn io(path: &Path, source: io::Error) -> ReadError {
        ReadError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Reads `path` (plain, or gzip when `gzip`), strips a UTF-8 BOM at the start of the text, cuts
/// it into newline-aligned chunks of about `chunk_bytes` and calls `f` on every chunk in
/// parallel on the current rayon pool. Returns the results in chunk order.
///
/// `chunk_bytes` is a target (0 is treated as 1): a plain-file chunk holds at least that many
/// bytes of the file's text and is extended to the next `'\n'`; a gzip chunk is cut at the last
/// `'\n'` of a buffer of about that size. Either way a chunk is never cut inside a line, and a
/// line longer than `chunk_bytes` makes one larger chunk. Lines longer than
/// [`KEPT_LINE_BYTES`] reach `f` cut ([`Chunk::bytes`]), so a gzip buffer never holds more than
/// about `chunk_bytes + KEPT_LINE_BYTES` bytes, however long a line is.
///
/// `f` must be pure: on any error no result is returned, so nothing from a corrupt file is ever
/// applied, and for gzip `f` may already have run on the chunks before the corruption.
///
/// # Errors
///
/// [`ReadError::Io`] when the file cannot be opened or read, [`ReadError::Gzip`] when its gzip
/// stream is corrupt or truncated (an empty `.gz` file included).
pub fn read_chunks<R, F>(
    path: &Path,
    gzip: bool,
    chunk_bytes: usize,
    f: F,
) -> Result<ReadOutcome<R>, ReadError>
where
    F: Fn(&Chunk<'_>) -> R + Sync,
    R: Send,
{
    let mut results = Vec::new();
    let totals = read_chunks_each(path, gzip, chunk_bytes, f, |r| {
        results.push(r);
        true
    })?;
    Ok(ReadOutcome {
        results,
        bytes: totals.bytes,
        lines: totals.lines,
    })
}

/// What [`read_chunks_each`] returns for a file it read to the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadTotals {
    /// Bytes of (decompressed) text, BOM excluded.
    pub bytes: u64,
    /// Physical lines: newlines, plus one when the text does not end in `'\n'`; 0 for no text.
    pub lines: u64,
}

/// Like [`read_chunks`], but hands each result to `sink` as soon as it and every earlier chunk's
/// are ready, in chunk order, instead of collecting them: memory holds only the chunks in
/// flight (about the thread count), whatever the file's size. A plain file's pages are released
/// (`MADV_DONTNEED`) once their chunk is processed, so the mapping does not pin the whole file
/// in the process's memory either.
///
/// `sink` runs on one thread at a time, under a lock the workers wait on; it must not wait on
/// the rayon pool (no `par_iter` inside), or a worker stolen into it could wait on itself.
/// When it returns `false`, reading stops: no further chunk reaches it and the returned totals
/// cover only part of the text (the caller knows why it stopped).
///
/// Unlike [`read_chunks`], results reach `sink` before the end of the file is known to be
/// sound: on a [`ReadError`] (a gzip stream corrupt halfway), the caller must discard what the
/// sink took from this file.
///
/// # Errors
///
/// As [`read_chunks`].
pub fn read_chunks_each<R, F, S>(
    path: &Path,
    gzip: bool,
    chunk_bytes: usize,
    f: F,
    sink: S,
) -> Result<ReadTotals, ReadError>
where
    F: Fn(&Chunk<'_>) -> R + Sync,
    R: Send,
    S: FnMut(R) -> bool + Send,
{
    let chunk_bytes = chunk_bytes.max(1);
    let file = File::open(path).map_err(|err| ReadError::io(path, err))?;
    let order = InOrder::new(sink);
    if gzip {
        read_gzip(path, file, chunk_bytes, &f, &order)
    } else {
        read_plain(path, &file, chunk_bytes, &f, &order)
    }
}

/// Hands results to a sink in chunk order as they complete (see [`read_chunks_each`]).
struct InOrder<R, S> {
    state: Mutex<Waiting<R, S>>,
    stopped: AtomicBool,
}

struct Waiting<R, S> {
    /// Index of the next chunk the sink takes.
    next: usize,
    /// Results that completed before an earlier chunk's.
    early: std::collections::BTreeMap<usize, R>,
    sink: S,
}

impl<R, S: FnMut(R) -> bool> InOrder<R, S> {
    fn new(sink: S) -> InOrder<R, S> {
        InOrder {
            state: Mutex::new(Waiting {
                next: 0,
                early: std::collections::BTreeMap::new(),
                sink,
            }),
            stopped: AtomicBool::new(false),
        }
    }

    /// Whether the sink asked to stop.
    fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// Takes chunk `index`'s result, and passes on every result that is now next in order.
    fn deliver(&self, index: usize, result: R) {
        let mut st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.stopped() {
            return;
        }
        let st = &mut *st;
        if index != st.next {
            st.early.insert(index, result);
            return;
        }
        let mut result = result;
        loop {
            st.next += 1;
            if !(st.sink)(result) {
                self.stopped.store(true, Ordering::Relaxed);
                st.early.clear();
                return;
            }
            match st.early.remove(&st.next) {
                Some(r) => result = r,
                None => return,
            }
        }
    }
}

/// 128-bit content hash of the raw file bytes as stored (compressed if `.gz`): xxh3-128 over a
/// read-only memory map, for the ledger. An empty file hashes to `xxh3_128(b"")`.
///
/// # Errors
///
/// [`ReadError::Io`] when the file cannot be opened or read.
pub fn content_hash(path: &Path) -> Result<u128, ReadError> {
    let file = File::open(path).map_err(|err| ReadError::io(path, err))?;
    match FileText::load(path, &file)? {
        FileText::Mapped(map) => {
            // In windows, releasing each behind the hash: a large input is not pinned in the
            // process's memory while it is hashed.
            let mut hasher = Xxh3Default::new();
            for (i, window) in map.chunks(HASH_WINDOW_BYTES).enumerate() {
                hasher.update(window);
                release(&map, i * HASH_WINDOW_BYTES, window.len());
            }
            Ok(hasher.digest128())
        }
        // A file reporting length 0, read whole (empty, or a special file).
        FileText::Owned(bytes) => Ok(xxh3_128(&bytes)),
        FileText::Unmappable => hash_reader(&file).map_err(|err| ReadError::io(path, err)),
    }
}

/// Streams `rdr` through xxh3-128; the same value as [`xxh3_128`] over all its bytes.
fn hash_reader(mut rdr: impl Read) -> io::Result<u128> {
    let mut hasher = Xxh3Default::new();
    let mut buf = vec![0u8; HASH_READ_BYTES];
    loop {
        match rdr.read(&mut buf) {
            Ok(0) => return Ok(hasher.digest128()),
            Ok(n) => hasher.update(buf.get(..n).unwrap_or_default()),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
}

/// A file's size and modification time, taken before it is read and compared after, to notice
/// an input that changed while segmill read it (a partner still uploading, a rewrite).
///
/// Not detected: a change that keeps both size and mtime (a rewrite within the file system's
/// timestamp resolution, or with the mtime set back). A plain file truncated while it is
/// memory-mapped is not detected either: reading its lost pages kills the process with SIGBUS
/// before any check (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    /// Size in bytes.
    pub size: u64,
    /// Last modification time, where the platform has one.
    pub modified: Option<std::time::SystemTime>,
}

impl FileStamp {
    /// Reason given when an input changed while it was read.
    pub const CHANGED: &'static str = "changed while being read (size/mtime differ)";

    /// The stamp of `path` now, following symlinks.
    ///
    /// # Errors
    ///
    /// [`ReadError::Io`] when `path` cannot be inspected.
    pub fn of(path: &Path) -> Result<FileStamp, ReadError> {
        let meta = std::fs::metadata(path).map_err(|err| ReadError::io(path, err))?;
        Ok(FileStamp {
            size: meta.len(),
            modified: meta.modified().ok(),
        })
    }

    /// Whether `path` differs from this stamp now, or from `listed_size` (its size when it was
    /// discovered); a file that can no longer be inspected has changed too.
    pub fn changed(&self, path: &Path, listed_size: u64) -> bool {
        self.size != listed_size || FileStamp::of(path).ok().as_ref() != Some(self)
    }
}

// ---------------------------------------------------------------------------------------------
// Plain files
// ---------------------------------------------------------------------------------------------

/// The bytes of a plain file.
enum FileText {
    /// A read-only map of a non-empty file.
    Mapped(Mmap),
    /// The file reported length 0 (it may still be a pipe or a special file): read normally.
    Owned(Vec<u8>),
    /// Mapping failed; the caller reads the file through `read()` instead.
    Unmappable,
}

impl FileText {
    /// Maps `file`, or reads it when it reports length 0 (never maps 0 bytes).
    fn load(path: &Path, file: &File) -> Result<FileText, ReadError> {
        let len = file
            .metadata()
            .map_err(|err| ReadError::io(path, err))?
            .len();
        if len == 0 {
            let mut bytes = Vec::new();
            (&*file)
                .read_to_end(&mut bytes)
                .map_err(|err| ReadError::io(path, err))?;
            return Ok(FileText::Owned(bytes));
        }
        match map_file(file) {
            Ok(map) => Ok(FileText::Mapped(map)),
            Err(err) => {
                tracing::debug!(path = %path.display(), error = %err, "mmap failed, reading instead");
                Ok(FileText::Unmappable)
            }
        }
    }

    /// The text, reading the file into memory when it could not be mapped.
    fn into_bytes(self, path: &Path, file: &File) -> Result<Bytes, ReadError> {
        match self {
            FileText::Mapped(map) => Ok(Bytes::Mapped(map)),
            FileText::Owned(bytes) => Ok(Bytes::Owned(bytes)),
            FileText::Unmappable => {
                let mut bytes = Vec::new();
                (&*file)
                    .read_to_end(&mut bytes)
                    .map_err(|err| ReadError::io(path, err))?;
                Ok(Bytes::Owned(bytes))
            }
        }
    }
}

/// A plain file's whole text, mapped or owned.
enum Bytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Bytes {
    /// See [`release`]; an owned text has nothing to release.
    fn release(&self, start: usize, len: usize) {
        if let Bytes::Mapped(map) = self {
            release(map, start, len);
        }
    }
}

/// Lets the kernel drop the pages of `map` wholly inside `len` bytes from `start` out of this
/// process's memory (they stay in the page cache and fault back in if touched again). A hint:
/// a refusal changes nothing.
#[allow(unsafe_code)]
pub(crate) fn release(map: &Mmap, start: usize, len: usize) {
    #[cfg(unix)]
    {
        const PAGE: usize = 4096;
        let from = start.next_multiple_of(PAGE);
        let to = (start + len).min(map.len()) / PAGE * PAGE;
        if to > from {
            // SAFETY: the map is a read-only file mapping: after MADV_DONTNEED, touching the
            // range reads the file's pages again, the same bytes (inbound files are immutable,
            // see the module docs, and so are a generation's data files); nothing is written
            // through it, and the caller is done with the range.
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, from, to - from)
            };
        }
    }
    #[cfg(not(unix))]
    let _ = (map, start, len);
}

impl std::ops::Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(map) => map,
            Bytes::Owned(bytes) => bytes,
        }
    }
}

/// Maps `file` read-only and advises the kernel that it will be read front to back.
#[allow(unsafe_code)]
fn map_file(file: &File) -> io::Result<Mmap> {
    // SAFETY: the map is read-only and private to this process, but its bytes can still change
    // underneath us: if another process truncates the file while it is mapped, touching the lost
    // pages raises SIGBUS and kills segmill; if it rewrites the file, we read a mix of old and
    // new bytes. Both are excluded by segmill's contract that inbound files are immutable once
    // dropped (README, "cron contract"); nothing here can make them memory-unsafe otherwise.
    let map = unsafe { Mmap::map(file)? };
    #[cfg(unix)]
    {
        // A hint only: the read is correct without it, so a refusal is ignored.
        let _ = map.advise(memmap2::Advice::Sequential);
    }
    Ok(map)
}

fn read_plain<R, F, S>(
    path: &Path,
    file: &File,
    chunk_bytes: usize,
    f: &F,
    order: &InOrder<R, S>,
) -> Result<ReadTotals, ReadError>
where
    F: Fn(&Chunk<'_>) -> R + Sync,
    R: Send,
    S: FnMut(R) -> bool + Send,
{
    let bytes = FileText::load(path, file)?.into_bytes(path, file)?;
    let text = strip_bom(&bytes);
    let bom = bytes.len() - text.len();
    let pieces = split_chunks(text, chunk_bytes);
    let mut starts = Vec::with_capacity(pieces.len());
    let mut at = bom;
    for piece in &pieces {
        starts.push(at);
        at += piece.len();
    }
    // Line numbers need every earlier piece's newlines: one counting pass first (vectorised,
    // about 10 GB/s), releasing each piece's pages behind it.
    let counts: Vec<u64> = pieces
        .par_iter()
        .zip(&starts)
        .map(|(piece, &start)| {
            let n = count_newlines(piece);
            bytes.release(start, piece.len());
            n
        })
        .collect();
    let mut first_lines = Vec::with_capacity(pieces.len());
    let mut newlines_before = 0u64;
    for n in &counts {
        first_lines.push(newlines_before + 1);
        newlines_before += n;
    }
    // Workers take pieces in file order, so results complete nearly in order and the sink's
    // reordering holds about one result per worker. A piece with an over-long line is copied
    // without the line's dropped bytes; the map itself is only read, never copied whole.
    let next = AtomicUsize::new(0);
    rayon::scope(|scope| {
        for _ in 0..rayon::current_num_threads().max(1) {
            scope.spawn(|_| {
                while !order.stopped() {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let (Some(piece), Some(&first_line), Some(&start)) =
                        (pieces.get(index), first_lines.get(index), starts.get(index))
                    else {
                        break;
                    };
                    let cut = cut_long_lines(piece);
                    let result = f(&Chunk {
                        index,
                        first_line,
                        bytes: cut.as_deref().unwrap_or(piece),
                    });
                    bytes.release(start, piece.len());
                    order.deliver(index, result);
                }
            });
        }
    });
    Ok(ReadTotals {
        bytes: text.len() as u64,
        lines: physical_lines(newlines_before, text.last().copied()),
    })
}

/// `text` without a leading UTF-8 BOM.
fn strip_bom(text: &[u8]) -> &[u8] {
    text.strip_prefix(BOM).unwrap_or(text)
}

/// Cuts `text` into consecutive non-empty pieces that concatenate back to `text`: each holds at
/// least `chunk_bytes` bytes (the last may hold fewer) and ends right after a `'\n'` or at the
/// end of `text`.
///
/// BE ADVISED: `read_gzip` cuts by the same rule seen from the other side (at the last `'\n'` of
/// a buffer); both must keep "a chunk ends right after a '\n' or at the end of the text", which
/// the parser and `first_line` numbering rely on. The property tests in `tests/read_props.rs`
/// check both paths against the same expectations.
fn split_chunks(text: &[u8], chunk_bytes: usize) -> Vec<&[u8]> {
    let chunk_bytes = chunk_bytes.max(1);
    let mut pieces = Vec::with_capacity(text.len() / chunk_bytes + 1);
    let mut rest = text;
    while !rest.is_empty() {
        // The '\n' ending the chunk is the first one at or after byte `chunk_bytes - 1`.
        let search_from = chunk_bytes.min(rest.len()) - 1;
        let end = rest
            .get(search_from..)
            .and_then(|tail| memchr(b'\n', tail))
            .map_or(rest.len(), |at| search_from + at + 1);
        let (piece, tail) = rest.split_at_checked(end).unwrap_or((rest, &[]));
        pieces.push(piece);
        rest = tail;
    }
    pieces
}

fn count_newlines(bytes: &[u8]) -> u64 {
    // `Memchr::count` is vectorized.
    memchr_iter(b'\n', bytes).count() as u64
}

/// Physical lines of a text with `newlines` newlines and last byte `last`.
fn physical_lines(newlines: u64, last: Option<u8>) -> u64 {
    match last {
        Some(b'\n') | None => newlines,
        Some(_) => newlines + 1,
    }
}

// ---------------------------------------------------------------------------------------------
// Over-long lines
// ---------------------------------------------------------------------------------------------

/// Start of the first line of `text` at or after `from` (a line start) that is longer than
/// [`KEPT_LINE_BYTES`], its `'\n'` not counted; `None` when there is none or `from` is past
/// the end.
///
/// Looks at windows of `KEPT_LINE_BYTES + 1` bytes from their end: a window holding a `'\n'`
/// ends every line starting in it (they are short), so the search jumps to after its last
/// `'\n'`; a window without one inside the text is the start of a long line. On ordinary text
/// this touches a few bytes per 100 KiB.
fn find_long_line(text: &[u8], from: usize) -> Option<usize> {
    let mut pos = from;
    loop {
        let window = text.get(pos..)?.get(..=KEPT_LINE_BYTES)?;
        match memrchr(b'\n', window) {
            Some(at) => pos += at + 1,
            None => return Some(pos),
        }
    }
}

/// `text` (whole lines) with every line longer than [`KEPT_LINE_BYTES`] replaced by what is
/// kept of it ([`Chunk::bytes`]), newlines kept; `None` when no line is that long.
fn cut_long_lines(text: &[u8]) -> Option<Vec<u8>> {
    let mut start = find_long_line(text, 0)?;
    let mut out = Vec::with_capacity(text.len().min(4 * KEPT_LINE_BYTES));
    let mut copied = 0;
    loop {
        let rest = text.get(start..).unwrap_or_default();
        let line_end = memchr(b'\n', rest).map_or(text.len(), |at| start + at);
        let line = text.get(start..line_end).unwrap_or_default();
        out.extend_from_slice(text.get(copied..start).unwrap_or_default());
        out.extend_from_slice(kept_of(line));
        // The '\n' (if any) is copied with the following text.
        copied = line_end;
        match find_long_line(text, line_end + 1) {
            Some(next) => start = next,
            None => break,
        }
    }
    out.extend_from_slice(text.get(copied..).unwrap_or_default());
    Some(out)
}

/// What is kept of `line` (without its `'\n'`), a sub-slice of it; the whole line when it is
/// not longer than [`KEPT_LINE_BYTES`].
fn kept_of(line: &[u8]) -> &[u8] {
    let (Some(prefix), Some(rest)) = (line.get(..KEPT_LINE_BYTES), line.get(KEPT_LINE_BYTES..))
    else {
        return line;
    };
    if rest.is_empty() {
        return line;
    }
    let mut cutter = Cutter::new(prefix);
    cutter.feed(rest);
    match cutter.kept() {
        Kept::Prefix => prefix,
        // The window is the spaces before byte `at` (at least KEPT_LINE_BYTES - 1 of them,
        // `Cutter` guarantees it), then `len` bytes from `at`.
        Kept::Window { at, len, .. } => {
            let from = (at + 1).saturating_sub(KEPT_LINE_BYTES);
            line.get(from..at + usize::from(len)).unwrap_or(prefix)
        }
    }
}

/// What is kept of a line longer than [`KEPT_LINE_BYTES`]; see [`Chunk::bytes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kept {
    /// The line's first `KEPT_LINE_BYTES` bytes.
    Prefix,
    /// `KEPT_LINE_BYTES - 1` spaces (the line's bytes before `at` are all spaces), then the
    /// first `len` (1 or 2) of `bytes`: the line's bytes from `at` on.
    Window {
        /// Position in the line of its first byte that is not a space.
        at: usize,
        /// That byte, and when it is a CR the byte after it.
        bytes: [u8; 2],
        /// How many of `bytes` are kept.
        len: u8,
    },
}

/// Decides [`Kept`] for a long line seen in pieces, so a gzip line never has to be held whole.
/// Created from the line's first `KEPT_LINE_BYTES` bytes, then fed the rest in order.
struct Cutter {
    /// Bytes of the line seen so far.
    seen: usize,
    state: CutState,
}

enum CutState {
    /// Decided (the prefix does not look blank, or the window was found).
    Settled(Kept),
    /// Every byte so far is a space.
    Spaces,
    /// The first byte that is not a space is the CR at `at`, and it was the last byte seen.
    Cr { at: usize },
}

impl Cutter {
    /// Starts on `prefix`, the line's first [`KEPT_LINE_BYTES`] bytes.
    fn new(prefix: &[u8]) -> Cutter {
        // A parser sees `prefix` as blank when it is spaces with maybe one CR at the end.
        let (body, last) = match prefix.split_last() {
            Some((&last, body)) => (body, last),
            None => (prefix, b' '),
        };
        if body.iter().all(|&b| b == b' ') && matches!(last, b' ' | b'\r') {
            let mut cutter = Cutter {
                seen: body.len(),
                state: CutState::Spaces,
            };
            cutter.feed(&[last]);
            cutter
        } else {
            Cutter {
                seen: prefix.len(),
                state: CutState::Settled(Kept::Prefix),
            }
        }
    }

    /// Whether more bytes can no longer change [`Cutter::kept`].
    fn settled(&self) -> bool {
        matches!(self.state, CutState::Settled(_))
    }

    /// Feeds the next bytes of the line (never its `'\n'`).
    fn feed(&mut self, bytes: &[u8]) {
        let start = self.seen;
        self.seen += bytes.len();
        match self.state {
            CutState::Settled(_) => {}
            CutState::Cr { at } => {
                if let Some(&next) = bytes.first() {
                    self.state = CutState::Settled(Kept::Window {
                        at,
                        bytes: [b'\r', next],
                        len: 2,
                    });
                }
            }
            CutState::Spaces => {
                let Some(i) = bytes.iter().position(|&b| b != b' ') else {
                    return;
                };
                let at = start + i;
                self.state = match (bytes.get(i), bytes.get(i + 1)) {
                    (Some(b'\r'), Some(&next)) => CutState::Settled(Kept::Window {
                        at,
                        bytes: [b'\r', next],
                        len: 2,
                    }),
                    (Some(b'\r'), None) => CutState::Cr { at },
                    (first, _) => CutState::Settled(Kept::Window {
                        at,
                        bytes: [first.copied().unwrap_or(b' '), 0],
                        len: 1,
                    }),
                };
            }
        }
    }

    /// What to keep, once the whole line was fed. A line that is spaces, maybe ending in a CR,
    /// is blank: its prefix (blank too) is kept.
    fn kept(&self) -> Kept {
        match self.state {
            CutState::Settled(kept) => kept,
            CutState::Spaces | CutState::Cr { .. } => Kept::Prefix,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Gzip files
// ---------------------------------------------------------------------------------------------

/// A decoded buffer on its way to the parsers: chunk index, first line, text.
type Filled = (usize, u64, Vec<u8>);

/// Totals the decoder thread reports when the stream ended cleanly.
struct Totals {
    bytes: u64,
    newlines: u64,
    last: Option<u8>,
}

/// Inflates on a dedicated thread while the current rayon pool runs `f` on the buffers it
/// hands over a bounded channel, so inflate (the floor for `.gz` inputs) overlaps parsing.
fn read_gzip<R, F, S>(
    path: &Path,
    file: File,
    chunk_bytes: usize,
    f: &F,
    order: &InOrder<R, S>,
) -> Result<ReadTotals, ReadError>
where
    F: Fn(&Chunk<'_>) -> R + Sync,
    R: Send,
    S: FnMut(R) -> bool + Send,
{
    let workers = rayon::current_num_threads().max(1);
    // Two buffers per worker keep every worker busy while the decoder fills the next one, and
    // bound the memory in flight to about (3 × workers + 1) × chunk_bytes.
    let (filled_tx, filled_rx) = crossbeam_channel::bounded::<Filled>(2 * workers);
    let (empty_tx, empty_rx) = crossbeam_channel::bounded::<Vec<u8>>(3 * workers + 1);
    let failed = AtomicBool::new(false);

    std::thread::scope(|scope| {
        let decoder = std::thread::Builder::new()
            .name("segmill-gunzip".to_owned())
            .spawn_scoped(scope, {
                let failed = &failed;
                move || {
                    let totals = decode(path, file, chunk_bytes, &filled_tx, &empty_rx);
                    if totals.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    totals
                }
            })
            .map_err(|err| ReadError::io(path, err))?;

        run_on_filled(filled_rx, empty_tx, f, &failed, order);
        let totals = decoder.join().map_err(|_| ReadError::Gzip {
            path: path.to_path_buf(),
            reason: "the decoder thread panicked (a bug in segmill or its inflate library)".into(),
        })??;
        Ok(ReadTotals {
            bytes: totals.bytes,
            lines: physical_lines(totals.newlines, totals.last),
        })
    })
}

/// Runs `f` on every received buffer, one consumer task per pool thread, and hands the results
/// to `order`. Buffers go back to the decoder through `empty`. Once `failed` is set, or the
/// sink stopped, the remaining buffers are drained without running `f`.
fn run_on_filled<R, F, S>(
    filled: Receiver<Filled>,
    empty: Sender<Vec<u8>>,
    f: &F,
    failed: &AtomicBool,
    order: &InOrder<R, S>,
) where
    F: Fn(&Chunk<'_>) -> R + Sync,
    R: Send,
    S: FnMut(R) -> bool + Send,
{
    rayon::scope(|scope| {
        for _ in 0..rayon::current_num_threads().max(1) {
            let filled = filled.clone();
            let empty = empty.clone();
            scope.spawn(move |_| {
                for (index, first_line, mut buf) in filled.iter() {
                    if !failed.load(Ordering::Relaxed) && !order.stopped() {
                        if let Some(cut) = cut_long_lines(&buf) {
                            buf = cut;
                        }
                        let result = f(&Chunk {
                            index,
                            first_line,
                            bytes: &buf,
                        });
                        order.deliver(index, result);
                    }
                    // A full recycle channel means enough spare buffers: let this one go.
                    let _ = empty.try_send(buf);
                }
            });
        }
        // Only the consumers may keep the channel open: if they all stop (a panic in `f`), the
        // decoder's next send fails and it ends instead of blocking forever.
        drop(filled);
        drop(empty);
    });
}

/// The decoder thread: inflates `file` into buffers of about `chunk_bytes`, cuts each after its
/// last `'\n'` (carrying the tail into the next buffer), and sends them in order.
fn decode(
    path: &Path,
    file: File,
    chunk_bytes: usize,
    filled: &Sender<Filled>,
    empty: &Receiver<Vec<u8>>,
) -> Result<Totals, ReadError> {
    let mut rdr = MultiGzDecoder::new(BufReader::with_capacity(
        GZ_INPUT_BUF_BYTES,
        FileSource { file, error: None },
    ));
    let mut totals = Totals {
        bytes: 0,
        newlines: 0,
        last: None,
    };
    // Text decoded but not yet sent: the start of a line (or the first bytes of the stream).
    let mut carry = Vec::new();
    let mut eof = match fill_to(&mut rdr, &mut carry, BOM.len()) {
        Ok(eof) => eof,
        Err(err) => return Err(decode_error(path, &mut rdr, err, carry.len() as u64)),
    };
    if carry == BOM {
        carry.clear();
    }
    let mut index = 0;
    loop {
        let mut buf = empty.try_recv().unwrap_or_default();
        buf.clear();
        buf.append(&mut carry);
        // Bytes of `buf` known to hold no '\n' that may end this chunk.
        let mut searched = 0;
        let mut target = chunk_bytes;
        let cut = loop {
            if !eof {
                eof = match fill_to(&mut rdr, &mut buf, target) {
                    Ok(eof) => eof,
                    Err(err) => {
                        let decoded = totals.bytes + buf.len() as u64;
                        return Err(decode_error(path, &mut rdr, err, decoded));
                    }
                };
            }
            if eof {
                break Some(buf.len());
            }
            match buf
                .get(searched..)
                .and_then(|unsearched| memrchr(b'\n', unsearched))
            {
                Some(at) => break Some(searched + at + 1),
                // The whole buffer is the start of one line, already too long to keep whole.
                None if buf.len() > KEPT_LINE_BYTES => break None,
                None => {
                    // One line fills the whole buffer: grow it by another chunk.
                    searched = buf.len();
                    target = buf.len().saturating_add(chunk_bytes);
                }
            }
        };
        let first_line = totals.newlines + 1;
        match cut {
            Some(cut) => {
                if let Some(tail) = buf.get(cut..) {
                    carry.extend_from_slice(tail);
                }
                buf.truncate(cut);
                if buf.is_empty() {
                    return Ok(totals);
                }
                totals.newlines += count_newlines(&buf);
                totals.bytes += buf.len() as u64;
                totals.last = buf.last().copied();
                // Long lines inside `buf` are cut by the consumers, in parallel.
            }
            None => {
                let mut skipped = Skipped {
                    bytes: buf.len() as u64,
                    last: buf.last().copied(),
                    newline: false,
                };
                if let Err(err) = skip_long_line(&mut rdr, &mut buf, &mut carry, &mut skipped) {
                    let decoded = totals.bytes + skipped.bytes;
                    return Err(decode_error(path, &mut rdr, err, decoded));
                }
                eof = !skipped.newline;
                totals.newlines += u64::from(skipped.newline);
                totals.bytes += skipped.bytes;
                totals.last = skipped.last;
            }
        }
        if filled.send((index, first_line, buf)).is_err() {
            // Every consumer is gone, which only a panic in `f` causes; it is re-raised by the
            // caller's rayon scope, so what is returned here is never seen.
            return Ok(totals);
        }
        index += 1;
    }
}

/// How far [`skip_long_line`] read: the line's bytes (its `'\n'` included), the last of them,
/// and whether it ended with a `'\n'` (else the text ended).
struct Skipped {
    bytes: u64,
    last: Option<u8>,
    newline: bool,
}

/// `buf` holds the start of one line, longer than [`KEPT_LINE_BYTES`] and without `'\n'`.
/// Reads the rest of the line from `rdr` in steps of [`SKIP_READ_BYTES`], keeping none of it,
/// and leaves in `buf` what is kept of the line ([`Chunk::bytes`]) followed by its `'\n'`, and
/// in `carry` (empty on entry) the text read after that `'\n'`. `skipped` starts with `buf`'s
/// length and last byte and is updated as bytes are read, also when reading fails.
fn skip_long_line(
    rdr: &mut impl Read,
    buf: &mut Vec<u8>,
    carry: &mut Vec<u8>,
    skipped: &mut Skipped,
) -> io::Result<()> {
    let mut cutter = Cutter::new(buf.get(..KEPT_LINE_BYTES).unwrap_or_default());
    cutter.feed(buf.get(KEPT_LINE_BYTES..).unwrap_or_default());
    let mut step = vec![0u8; SKIP_READ_BYTES];
    loop {
        let got = match rdr.read(&mut step) {
            Ok(0) => break,
            Ok(n) => step.get(..n).unwrap_or_default(),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        if let Some(at) = memchr(b'\n', got) {
            cutter.feed(got.get(..at).unwrap_or_default());
            carry.extend_from_slice(got.get(at + 1..).unwrap_or_default());
            skipped.bytes += at as u64 + 1;
            skipped.last = Some(b'\n');
            skipped.newline = true;
            break;
        }
        if !cutter.settled() {
            cutter.feed(got);
        }
        skipped.bytes += got.len() as u64;
        skipped.last = got.last().copied();
    }
    match cutter.kept() {
        Kept::Prefix => buf.truncate(KEPT_LINE_BYTES),
        Kept::Window { bytes, len, .. } => {
            // The line's first KEPT_LINE_BYTES - 1 bytes are spaces (`Cutter` guarantees it).
            buf.truncate(KEPT_LINE_BYTES - 1);
            buf.extend_from_slice(bytes.get(..usize::from(len)).unwrap_or_default());
        }
    }
    if skipped.newline {
        buf.push(b'\n');
    }
    Ok(())
}

/// The error for a failed read from the decoder after `decoded` bytes of text: the file's own
/// I/O error when reading it failed, else the decoder's reason.
fn decode_error(
    path: &Path,
    rdr: &mut MultiGzDecoder<BufReader<FileSource>>,
    err: io::Error,
    decoded: u64,
) -> ReadError {
    match rdr.get_mut().get_mut().error.take() {
        Some(source) => ReadError::io(path, source),
        None => ReadError::Gzip {
            path: path.to_path_buf(),
            reason: format!("{err} (after {decoded} bytes of decompressed text)"),
        },
    }
}

/// Appends decoded text to `buf` until it holds `target` bytes or the stream ends; returns
/// whether it ended.
fn fill_to(rdr: &mut impl Read, buf: &mut Vec<u8>, target: usize) -> io::Result<bool> {
    let want = target.saturating_sub(buf.len());
    if want == 0 {
        return Ok(false);
    }
    buf.reserve(want.min(MAX_RESERVE_BYTES));
    let got = rdr.take(want as u64).read_to_end(buf)?;
    Ok(got < want)
}

/// The compressed file under the decoder. It keeps the operating system's error aside, so that
/// a failing disk is reported as [`ReadError::Io`] and not as a corrupt gzip stream.
struct FileSource {
    file: File,
    error: Option<io::Error>,
}

impl Read for FileSource {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.file.read(buf) {
            Err(err) if err.kind() != io::ErrorKind::Interrupted => {
                let kind = err.kind();
                self.error = Some(err);
                Err(io::Error::new(kind, "reading the compressed file failed"))
            }
            result => result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use std::io::Write;

    /// What every chunk of a read shows: index, first line and text.
    type Seen = (usize, u64, Vec<u8>);

    fn write_temp(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(bytes).unwrap();
        file.flush().unwrap();
        file
    }

    fn gzip(text: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(text).unwrap();
        enc.finish().unwrap()
    }

    fn read_all(
        bytes: &[u8],
        gz: bool,
        chunk_bytes: usize,
    ) -> Result<ReadOutcome<Seen>, ReadError> {
        let file = write_temp(bytes);
        read_chunks(file.path(), gz, chunk_bytes, |c| {
            (c.index, c.first_line, c.bytes.to_vec())
        })
    }

    /// Expected chunks of `text` under the plain-file rule, from a naive byte-by-byte twin.
    fn naive_split(text: &[u8], chunk_bytes: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut cur = Vec::new();
        for &b in text {
            cur.push(b);
            if b == b'\n' && cur.len() >= chunk_bytes {
                out.push(std::mem::take(&mut cur));
            }
        }
        if !cur.is_empty() {
            out.push(cur);
        }
        out
    }

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    }

    /// `read_chunks_each` hands the sink every chunk in order, even when workers finish out
    /// of order (chunk 0 is made slow), on 1, 2 and 4 threads, plain and gzip; a sink that
    /// returns `false` gets nothing more.
    #[test]
    fn each_delivers_in_chunk_order_and_stops_when_asked() {
        let text: Vec<u8> = (0..2000)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        for gz in [false, true] {
            let file = write_temp(&if gz { gzip(&text) } else { text.clone() });
            for threads in [1, 2, 4] {
                let seen = pool(threads).install(|| {
                    let mut seen = Vec::new();
                    let totals = read_chunks_each(
                        file.path(),
                        gz,
                        64,
                        |c| {
                            if c.index == 0 {
                                std::thread::sleep(std::time::Duration::from_millis(50));
                            }
                            (c.index, c.first_line)
                        },
                        |r| {
                            seen.push(r);
                            true
                        },
                    )
                    .unwrap();
                    assert_eq!((totals.bytes, totals.lines), (text.len() as u64, 2000));
                    seen
                });
                let indices: Vec<usize> = seen.iter().map(|r| r.0).collect();
                assert_eq!(
                    indices,
                    (0..seen.len()).collect::<Vec<_>>(),
                    "gz {gz} t {threads}"
                );
                assert!(seen.len() > 100);
                let stopped = pool(threads).install(|| {
                    let mut n = 0;
                    read_chunks_each(
                        file.path(),
                        gz,
                        64,
                        |c| c.index,
                        |i| {
                            assert_eq!(i, n);
                            n += 1;
                            n < 5
                        },
                    )
                    .unwrap();
                    n
                });
                assert_eq!(stopped, 5, "gz {gz} t {threads}");
            }
        }
    }

    #[test]
    fn split_chunks_matches_naive_twin_on_edge_cases() {
        let cases: &[&[u8]] = &[
            b"",
            b"\n",
            b"\n\n\n",
            b"a",
            b"abc",
            b"abc\n",
            b"ab\ncd\n",
            b"ab\ncd",
            b"abcd\nef\n",
            b"a\r\nb\r\n",
            b"0123456789\n",
        ];
        for text in cases {
            for chunk_bytes in 1..=12 {
                let got: Vec<Vec<u8>> = split_chunks(text, chunk_bytes)
                    .iter()
                    .map(|p| p.to_vec())
                    .collect();
                assert_eq!(
                    got,
                    naive_split(text, chunk_bytes),
                    "{text:?} at {chunk_bytes}"
                );
            }
        }
    }

    #[test]
    fn split_chunks_line_exactly_at_boundary() {
        // "abc\n" is 4 bytes: with chunk_bytes 4 the first chunk ends exactly at its '\n'.
        assert_eq!(
            split_chunks(b"abc\ndef\n", 4),
            vec![&b"abc\n"[..], &b"def\n"[..]]
        );
        // One byte more and the chunk runs to the next '\n'.
        assert_eq!(split_chunks(b"abc\ndef\n", 5), vec![&b"abc\ndef\n"[..]]);
        // A line longer than a chunk makes one larger chunk.
        assert_eq!(
            split_chunks(b"abcdefgh\ni\n", 2),
            vec![&b"abcdefgh\n"[..], &b"i\n"[..]]
        );
        // chunk_bytes 0 behaves as 1.
        assert_eq!(split_chunks(b"a\nb", 0), vec![&b"a\n"[..], &b"b"[..]]);
    }

    #[test]
    fn plain_chunks_numbers_and_counts() {
        let out = read_all(b"a\nbb\n\nccc\nd", false, 3).unwrap();
        assert_eq!(
            out.results,
            vec![
                (0, 1, b"a\nbb\n".to_vec()),
                (1, 3, b"\nccc\n".to_vec()),
                (2, 5, b"d".to_vec()),
            ]
        );
        assert_eq!(out.bytes, 11);
        assert_eq!(out.lines, 5);
    }

    #[test]
    fn gzip_chunks_numbers_and_counts() {
        let out = read_all(&gzip(b"a\nbb\n\nccc\nd"), true, 3).unwrap();
        // Buffers of 3 bytes cut after their last '\n', the tail carried: "a\nb" → "a\n";
        // "b" + "b\n" → "bb\n"; "\ncc" → "\n"; "cc" + "c" has no '\n', so the buffer grows
        // and meets the end of the text: "ccc\nd".
        assert_eq!(
            out.results,
            vec![
                (0, 1, b"a\n".to_vec()),
                (1, 2, b"bb\n".to_vec()),
                (2, 3, b"\n".to_vec()),
                (3, 4, b"ccc\nd".to_vec()),
            ]
        );
        assert_eq!(out.bytes, 11);
        assert_eq!(out.lines, 5);
    }

    #[test]
    fn empty_text_has_no_chunks() {
        for (bytes, gz) in [
            (b"".to_vec(), false),
            (gzip(b""), true),
            (BOM.to_vec(), false),
            (gzip(BOM), true),
        ] {
            let out = read_all(&bytes, gz, 4).unwrap();
            assert_eq!(
                out,
                ReadOutcome {
                    results: vec![],
                    bytes: 0,
                    lines: 0
                },
                "gzip {gz}"
            );
        }
    }

    #[test]
    fn trailing_newline_decides_the_last_line() {
        for gz in [false, true] {
            let bytes = |t: &[u8]| if gz { gzip(t) } else { t.to_vec() };
            assert_eq!(read_all(&bytes(b"x"), gz, 8).unwrap().lines, 1);
            assert_eq!(read_all(&bytes(b"x\n"), gz, 8).unwrap().lines, 1);
            assert_eq!(read_all(&bytes(b"\n"), gz, 8).unwrap().lines, 1);
            assert_eq!(read_all(&bytes(b"x\ny"), gz, 8).unwrap().lines, 2);
            assert_eq!(read_all(&bytes(b"\n\n"), gz, 8).unwrap().lines, 2);
        }
    }

    #[test]
    fn bom_stripped_at_start_only_and_crlf_kept() {
        let text = b"\xEF\xBB\xBFid1\tx\r\n\xEF\xBB\xBFid2\r\n";
        for gz in [false, true] {
            for chunk_bytes in [1, 2, 3, 4, 100] {
                let bytes = if gz { gzip(text) } else { text.to_vec() };
                let out = read_all(&bytes, gz, chunk_bytes).unwrap();
                let joined: Vec<u8> = out.results.iter().flat_map(|(_, _, b)| b.clone()).collect();
                assert_eq!(
                    joined,
                    b"id1\tx\r\n\xEF\xBB\xBFid2\r\n".to_vec(),
                    "gzip {gz} at {chunk_bytes}"
                );
                assert_eq!(out.bytes, 15);
                assert_eq!(out.lines, 2);
            }
        }
    }

    #[test]
    fn partial_bom_is_text() {
        for gz in [false, true] {
            let text = b"\xEF\xBB\n";
            let bytes = if gz { gzip(text) } else { text.to_vec() };
            let out = read_all(&bytes, gz, 1).unwrap();
            assert_eq!(out.results, vec![(0, 1, text.to_vec())], "gzip {gz}");
        }
    }

    #[test]
    fn line_longer_than_many_chunks() {
        let mut text = vec![b'x'; 10_000];
        text.extend_from_slice(b"\nshort\n");
        text.extend(std::iter::repeat_n(b'y', 5_000));
        for gz in [false, true] {
            let bytes = if gz { gzip(&text) } else { text.clone() };
            let out = read_all(&bytes, gz, 7).unwrap();
            let firsts: Vec<(usize, u64, usize)> = out
                .results
                .iter()
                .map(|(i, l, b)| (*i, *l, b.len()))
                .collect();
            // A plain chunk runs past "short\n" (6 < 7 bytes) to the end; a gzip buffer of 7
            // bytes is cut after "short\n".
            let expected = if gz {
                vec![(0, 1, 10_001), (1, 2, 6), (2, 3, 5_000)]
            } else {
                vec![(0, 1, 10_001), (1, 2, 5_006)]
            };
            assert_eq!(firsts, expected, "gzip {gz}");
            assert_eq!(out.lines, 3);
        }
    }

    // A file of `tests/` (shared with tests/read_props.rs and the fuzz target); `#[path]`
    // cannot reach it from an inline module.
    mod naive {
        include!("../../tests/support/naive_cut.rs");
    }
    use naive::{naive_cut, naive_kept};

    /// Long lines whose kept part is each case of the rule, with a short line between them.
    fn long_line_cases() -> Vec<(&'static str, Vec<u8>)> {
        let k = KEPT_LINE_BYTES;
        let with = |head: &[u8], fill: u8, len: usize, tail: &[u8]| {
            let mut line = head.to_vec();
            line.resize(len, fill);
            line.extend_from_slice(tail);
            line
        };
        vec![
            ("letters", with(b"c1\td_sid=24,k=", b'v', k + 1, b"")),
            ("just long enough", with(b"", b'x', k + 1, b"")),
            ("not cut", with(b"", b'x', k, b"")),
            ("with CR", with(b"c1\t", b'v', 3 * k, b"\r")),
            ("spaces then a letter", with(b"", b' ', 2 * k, b"x  y")),
            (
                "spaces then CR then a letter",
                with(b"", b' ', 2 * k, b"\rx"),
            ),
            ("spaces then two CRs", with(b"", b' ', k + 7, b"\r\r")),
            ("prefix ends in CR", with(b"", b' ', k - 1, b"\rzz")),
            ("all spaces", with(b"", b' ', 3 * k, b"")),
            ("spaces and a last CR", with(b"", b' ', 3 * k, b"\r")),
        ]
    }

    #[test]
    fn kept_of_matches_the_naive_rule() {
        for (name, line) in long_line_cases() {
            assert_eq!(kept_of(&line), &naive_kept(&line)[..], "{name}");
        }
        let k = KEPT_LINE_BYTES;
        // The cases above reach every branch of the rule, with exact results.
        let cases = long_line_cases();
        let kept = |i: usize| naive_kept(&cases[i].1);
        assert_eq!(kept(0).len(), k);
        assert_eq!(&kept(0)[..15], b"c1\td_sid=24,k=v");
        assert_eq!(kept(2).len(), k);
        assert_eq!(kept(4), [vec![b' '; k - 1], b"x".to_vec()].concat());
        assert_eq!(kept(5), [vec![b' '; k - 1], b"\rx".to_vec()].concat());
        assert_eq!(kept(6), [vec![b' '; k - 1], b"\r\r".to_vec()].concat());
        assert_eq!(kept(7), [vec![b' '; k - 1], b"\rz".to_vec()].concat());
        assert_eq!(kept(8), vec![b' '; k]);
        assert_eq!(kept(9), vec![b' '; k]);
    }

    #[test]
    fn kept_lines_parse_like_the_whole_line() {
        use crate::parse::{FormatError, LineKind, parse_line};
        for (name, line) in long_line_cases() {
            let whole = parse_line(&line, false);
            let kept = parse_line(kept_of(&line), false);
            let kind = |k: &LineKind<'_>| match k {
                LineKind::Blank => "blank",
                LineKind::FormatError(FormatError::TooLong) => "too long",
                _ => "other",
            };
            assert_eq!(kind(&kept), kind(&whole), "{name}");
            assert_ne!(kind(&kept), "other", "{name}");
            // ID-sync rows: too long (or blank) as well.
            let stripped = kept_of(&line).strip_suffix(b"\r").unwrap_or(kept_of(&line));
            let blank = stripped.iter().all(|&b| b == b' ');
            assert!(
                blank || stripped.len() > crate::idsync::MAX_ROW_BYTES,
                "{name}"
            );
        }
    }

    #[test]
    fn long_lines_are_cut_in_every_chunk_size_plain_and_gzip() {
        let mut text = Vec::new();
        for (i, (_, line)) in long_line_cases().iter().enumerate() {
            text.extend(format!("short{i}\n").bytes());
            text.extend(line);
            text.push(b'\n');
        }
        // The last line has no '\n' and is long too.
        text.extend(vec![b'w'; 2 * KEPT_LINE_BYTES]);
        let want = naive_cut(&text);
        assert!(want.len() < text.len());
        let newlines = count_newlines(&text);
        for gz in [false, true] {
            let bytes = if gz { gzip(&text) } else { text.clone() };
            for chunk_bytes in [1, 7, 4096, KEPT_LINE_BYTES, KEPT_LINE_BYTES + 1, 1 << 20] {
                let out = read_all(&bytes, gz, chunk_bytes).unwrap();
                let joined: Vec<u8> = out.results.iter().flat_map(|(_, _, b)| b.clone()).collect();
                assert!(joined == want, "gzip {gz} at {chunk_bytes}");
                let mut line = 1;
                for (position, (index, first_line, bytes)) in out.results.iter().enumerate() {
                    assert_eq!((*index, *first_line), (position, line), "gzip {gz}");
                    line += count_newlines(bytes);
                }
                assert_eq!(
                    (out.bytes, out.lines),
                    (text.len() as u64, newlines + 1),
                    "gzip {gz} at {chunk_bytes}"
                );
            }
        }
    }

    #[test]
    fn a_gzip_line_of_many_buffers_is_never_held_whole() {
        // 40 MiB without a newline: the decoder keeps only the buffer it cut at.
        let mut text = b"c1\t".to_vec();
        text.resize(40 << 20, b'v');
        text.extend_from_slice(b"\nnext\n");
        let largest = std::sync::atomic::AtomicUsize::new(0);
        let file = write_temp(&gzip(&text));
        let out = read_chunks(file.path(), true, 1 << 20, |c| {
            largest.fetch_max(c.bytes.len(), Ordering::Relaxed);
            (c.first_line, c.bytes.len())
        })
        .unwrap();
        assert_eq!(out.results, vec![(1, KEPT_LINE_BYTES + 1), (2, 5)]);
        assert_eq!((out.bytes, out.lines), (text.len() as u64, 2));
        assert_eq!(largest.into_inner(), KEPT_LINE_BYTES + 1);
    }

    #[test]
    fn find_long_line_edges() {
        let k = KEPT_LINE_BYTES;
        let line = |n: usize| vec![b'a'; n];
        assert_eq!(find_long_line(&line(k), 0), None);
        assert_eq!(find_long_line(&line(k + 1), 0), Some(0));
        assert_eq!(find_long_line(&[line(k), b"\n".to_vec()].concat(), 0), None);
        let two = [line(3), b"\n".to_vec(), line(k + 1), b"\n".to_vec()].concat();
        assert_eq!(find_long_line(&two, 0), Some(4));
        assert_eq!(find_long_line(&two, k + 6), None);
        assert_eq!(find_long_line(&two, 10 * k), None);
        assert_eq!(cut_long_lines(&line(k)), None);
    }

    #[test]
    fn results_in_chunk_order_whatever_the_thread_count() {
        let text: Vec<u8> = (0..2_000)
            .flat_map(|i| format!("user{i}\t{i}\n").into_bytes())
            .collect();
        let expected: Vec<(usize, u64)> = split_chunks(&text, 64)
            .iter()
            .scan(1u64, |line, piece| {
                let first = *line;
                *line += count_newlines(piece);
                Some(first)
            })
            .enumerate()
            .collect();
        let plain = write_temp(&text);
        let gz = write_temp(&gzip(&text));
        for threads in [1, 2] {
            pool(threads).install(|| {
                let out =
                    read_chunks(plain.path(), false, 64, |c| (c.index, c.first_line)).unwrap();
                assert_eq!(out.results, expected, "plain, {threads} threads");
                // Gzip chunks differ from plain ones; check order and numbering by content.
                let out = read_chunks(gz.path(), true, 64, |c| {
                    (c.index, c.first_line, c.bytes.to_vec())
                })
                .unwrap();
                let mut line = 1;
                for (position, (index, first_line, bytes)) in out.results.iter().enumerate() {
                    assert_eq!(
                        (*index, *first_line),
                        (position, line),
                        "gzip, {threads} threads"
                    );
                    line += count_newlines(bytes);
                }
                let joined: Vec<u8> = out.results.iter().flat_map(|(_, _, b)| b.clone()).collect();
                assert_eq!(joined, text);
                assert_eq!(out.lines, 2_000);
            });
        }
    }

    #[test]
    fn multi_member_gzip_reads_whole() {
        let mut bytes = gzip(b"a\nb");
        bytes.extend(gzip(b"c\nd\n"));
        let out = read_all(&bytes, true, 1).unwrap();
        let joined: Vec<u8> = out.results.iter().flat_map(|(_, _, b)| b.clone()).collect();
        assert_eq!(joined, b"a\nbc\nd\n".to_vec());
        assert_eq!((out.bytes, out.lines), (7, 3));
    }

    fn gzip_reason(bytes: &[u8]) -> String {
        let file = write_temp(bytes);
        let err = read_chunks(file.path(), true, 16, |c| c.index).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains(&file.path().display().to_string()),
            "{message}"
        );
        match err {
            ReadError::Gzip { path, reason } => {
                assert_eq!(path, file.path());
                reason
            }
            other => panic!("expected a gzip error, got {other:?}"),
        }
    }

    fn big_text() -> Vec<u8> {
        (0..5_000)
            .flat_map(|i| format!("id{i}\t{}\n", i * 7919 % 1000).into_bytes())
            .collect()
    }

    #[test]
    fn truncated_gzip_is_rejected() {
        let text = big_text();
        let whole = gzip(&text);
        // Cut inside the deflate data.
        let reason = gzip_reason(&whole[..whole.len() / 2]);
        assert!(
            reason.starts_with("incomplete deflate stream (after "),
            "{reason}"
        );
        // Cut inside the 8-byte trailer: all text was decoded, the check is missing.
        assert_eq!(
            gzip_reason(&whole[..whole.len() - 3]),
            format!(
                "unexpected end of file (after {} bytes of decompressed text)",
                text.len()
            )
        );
    }

    #[test]
    fn corrupt_gzip_is_rejected() {
        let text = big_text();
        let whole = gzip(&text);
        // A flipped byte in the middle of the deflate data.
        let mut middle = whole.clone();
        middle[whole.len() / 2] ^= 0x55;
        let reason = gzip_reason(&middle);
        assert!(reason.starts_with("corrupt "), "{reason}");
        // A flipped byte in the CRC of the trailer.
        let mut crc = whole.clone();
        crc[whole.len() - 8] ^= 0x01;
        assert_eq!(
            gzip_reason(&crc),
            format!(
                "corrupt gzip stream does not have a matching checksum \
                 (after {} bytes of decompressed text)",
                text.len()
            )
        );
    }

    #[test]
    fn trailing_garbage_bad_header_and_empty_gz_are_rejected() {
        let mut garbage = gzip(b"a\n");
        garbage.extend_from_slice(b"not gzip");
        // The decoder takes the 8 bytes for a short second member header.
        assert_eq!(
            gzip_reason(&garbage),
            "unexpected end of file (after 2 bytes of decompressed text)"
        );
        assert_eq!(
            gzip_reason(b"plain text\n"),
            "invalid gzip header (after 0 bytes of decompressed text)"
        );
        assert_eq!(
            gzip_reason(b""),
            "unexpected end of file (after 0 bytes of decompressed text)"
        );
    }

    #[test]
    fn unreadable_file_is_an_io_error_not_a_gzip_error() {
        // Opening a directory succeeds on Linux; reading it fails with EISDIR.
        let dir = tempfile::tempdir().unwrap();
        for gz in [false, true] {
            let err = read_chunks(dir.path(), gz, 16, |_| ()).unwrap_err();
            assert!(
                matches!(&err, ReadError::Io { path, source }
                    if path == dir.path() && source.kind() == io::ErrorKind::IsADirectory),
                "gzip {gz}: {err:?}"
            );
        }
    }

    #[test]
    fn missing_file_is_an_io_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ftp_dpm_21_1732240800.sync");
        for gz in [false, true] {
            let err = read_chunks(&path, gz, 16, |_| ()).unwrap_err();
            assert!(matches!(&err, ReadError::Io { path: p, .. } if p == &path));
            assert_eq!(err.to_string(), format!("cannot read {}", path.display()));
        }
        assert!(matches!(content_hash(&path), Err(ReadError::Io { .. })));
    }

    #[test]
    fn file_stamp_notices_appends_rewrites_and_removals() {
        let file = write_temp(b"id1\t24\n");
        let path = file.path();
        let stamp = FileStamp::of(path).unwrap();
        assert_eq!(stamp.size, 7);
        assert!(!stamp.changed(path, 7));
        // Discovered at another size.
        assert!(stamp.changed(path, 6));
        // Appended to.
        std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .unwrap()
            .write_all(b"id2\t24\n")
            .unwrap();
        assert!(stamp.changed(path, 7));
        // Same size, another mtime.
        std::fs::write(path, b"id1\t25\n").unwrap();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert!(stamp.changed(path, 7));
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        std::fs::write(&gone, b"x").unwrap();
        let stamp = FileStamp::of(&gone).unwrap();
        std::fs::remove_file(&gone).unwrap();
        assert!(stamp.changed(&gone, 1));
        assert!(matches!(FileStamp::of(&gone), Err(ReadError::Io { .. })));
    }

    #[test]
    fn content_hash_of_raw_bytes() {
        let a = write_temp(b"id1\t24\n");
        let b = write_temp(b"id1\t24\n");
        let c = write_temp(b"id1\t25\n");
        let empty = write_temp(b"");
        let ha = content_hash(a.path()).unwrap();
        assert_eq!(ha, content_hash(b.path()).unwrap());
        assert_ne!(ha, content_hash(c.path()).unwrap());
        assert_eq!(ha, xxh3_128(b"id1\t24\n"));
        assert_eq!(content_hash(empty.path()).unwrap(), xxh3_128(b""));
        // The fallback reader agrees with the one-shot hash on a multi-buffer input.
        let big = big_text().repeat(4);
        assert!(big.len() > HASH_READ_BYTES);
        assert_eq!(hash_reader(&big[..]).unwrap(), xxh3_128(&big));
        let gz = write_temp(&gzip(b"id1\t24\n"));
        assert_eq!(
            content_hash(gz.path()).unwrap(),
            xxh3_128(&gzip(b"id1\t24\n"))
        );
    }
}
