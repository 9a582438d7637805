//! Generations: immutable, checksummed snapshots of the state, and the writer that builds one.
//!
//! A generation is a folder `gen-NNNNNN/` with `manifest.json` (format version, number, the
//! caller's meta, and every file's payload size and xxh3-64) and data files under relative names
//! such as `profiles/part-0007`. Each data file is its payload followed by a 24-byte footer
//! (`SEGMILL\x01`, payload length u64 LE, xxh3-64 u64 LE). Reading checks the file size, the
//! footer and the payload against the manifest; any difference is `StateError::Corrupt`.
//!
//! Files are never modified once written, which is what makes `carry` (a hard link to the
//! parent's file) safe.
//!
//! BE ADVISED: the crash-safety argument depends on this order in `commit`, keep it:
//! data files fsynced → their folders fsynced → manifest written and fsynced → partial folder
//! fsynced → renamed to `gen-N` → root fsynced → `CURRENT` replaced atomically → prune.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3Default;

use super::fsutil::{self, FOOTER_LEN};
use super::{CURRENT, FORMAT_VERSION, OLDEST_FORMAT_VERSION, StateError};

/// Suffix of a generation folder under construction.
pub(crate) const PARTIAL_SUFFIX: &str = ".partial";

/// Name of the manifest inside a generation folder.
const MANIFEST: &str = "manifest.json";

/// Buffer size for streaming reads and writes: 64–128 KiB measured best (DESIGN.md).
const IO_BUF: usize = 128 * 1024;

/// Bytes [`Generation::map`] hashes before it lets them go.
const CHECK_WINDOW: usize = 1 << 20;

/// The folder name of generation `number`: `gen-` and at least 6 digits.
pub(crate) fn dir_name(number: u64) -> String {
    format!("gen-{number:06}")
}

/// Inverse of [`dir_name`]; only the canonical spelling is accepted.
pub(crate) fn parse_dir_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("gen-")?;
    if digits.len() < 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let number: u64 = digits.parse().ok()?;
    (dir_name(number) == name).then_some(number)
}

/// Numbers of the complete generation folders under `root`, ascending.
pub(crate) fn list(root: &Path) -> Result<Vec<u64>, StateError> {
    let entries = fs::read_dir(root).map_err(|source| StateError::io("list", root, source))?;
    let mut numbers = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| StateError::io("list", root, source))?;
        if let Some(n) = entry.file_name().to_str().and_then(parse_dir_name) {
            numbers.push(n);
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

/// Checks that `rel` is a plain relative name: `/`-separated components of ASCII letters,
/// digits, `.`, `_` and `-`, none empty or starting with a dot, and not the manifest.
pub(crate) fn validate_rel(rel: &str) -> Result<(), StateError> {
    let bad = |reason| {
        Err(StateError::BadName {
            name: rel.to_owned(),
            reason,
        })
    };
    if rel.is_empty() {
        return bad("the name is empty");
    }
    if rel == MANIFEST {
        return bad("manifest.json is reserved for the manifest");
    }
    for component in rel.split('/') {
        if component.is_empty() {
            return bad("empty path component (leading, trailing or double '/')");
        }
        if component.starts_with('.') {
            return bad(
                "a path component starts with '.' (reserved for temp files; '..' is not allowed)",
            );
        }
        if component.len() > 200 {
            return bad("a path component is longer than 200 bytes");
        }
        if !component
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return bad("only ASCII letters, digits, '.', '_', '-' and '/' are allowed");
        }
    }
    Ok(())
}

/// The manifest of a generation, stored as `manifest.json`. Serialized with fields in this
/// order and maps sorted by key, so equal content gives equal bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Layout version; see [`FORMAT_VERSION`].
    pub format_version: u32,
    /// This generation's number.
    pub generation: u64,
    /// The caller's metadata (partition count, hash, as-of time, ...). Stored as given.
    pub meta: serde_json::Value,
    /// Every data file by relative name.
    pub files: BTreeMap<String, FileEntry>,
}

/// One data file of a generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Payload length in bytes (the file on disk is 24 bytes longer: the footer).
    pub size: u64,
    /// xxh3-64 of the payload, 16 lowercase hex digits.
    pub checksum: String,
}

impl FileEntry {
    fn new(size: u64, sum: u64) -> FileEntry {
        FileEntry {
            size,
            checksum: fsutil::checksum_hex(sum),
        }
    }
}

/// A committed generation whose manifest has been verified. Data files are verified as read.
#[derive(Debug, Clone)]
pub struct Generation {
    /// The generation number (`gen-NNNNNN`).
    pub number: u64,
    /// Its folder.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// For a mirror of a generation kept elsewhere (a staged run's task on another machine):
    /// where a data file not yet in `dir` is fetched from.
    blobs: Option<Blobs>,
}

/// Fetches a mirrored generation's data file: called with its name, its manifest entry and
/// the local path to create (whole file, footer included); the file is verified as usual
/// after. The error is the reason, for a message that names the file.
pub type FetchBlob = dyn Fn(&str, &FileEntry, &Path) -> Result<(), String> + Send + Sync;

/// A shared [`FetchBlob`].
#[derive(Clone)]
pub struct Blobs(pub std::sync::Arc<FetchBlob>);

impl std::fmt::Debug for Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Blobs(..)")
    }
}

impl Generation {
    /// Loads generation `number` under `root`, checking its manifest against `manifest_sum`
    /// (from `CURRENT`), its format version, its number and its file entries.
    pub(crate) fn load(
        root: &Path,
        number: u64,
        manifest_sum: u64,
    ) -> Result<Generation, StateError> {
        let dir = root.join(dir_name(number));
        let path = dir.join(MANIFEST);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StateError::corrupt(
                    &path,
                    format!(
                        "missing, but {} names {} as current",
                        root.join(CURRENT).display(),
                        dir_name(number)
                    ),
                ));
            }
            Err(source) => return Err(StateError::io("read", &path, source)),
        };
        let found = fsutil::checksum(&bytes);
        if found != manifest_sum {
            return Err(StateError::corrupt(
                &path,
                format!(
                    "checksum is {}, CURRENT says {} (edited or damaged)",
                    fsutil::checksum_hex(found),
                    fsutil::checksum_hex(manifest_sum)
                ),
            ));
        }
        Generation::parse(dir, number, &path, &bytes)
    }

    /// Loads generation `number` under `root` that `CURRENT` does not name (an older kept one),
    /// for `state verify --all`: the same checks as [`Generation::load`] except the manifest's
    /// checksum, which only `CURRENT` records.
    pub(crate) fn load_kept(root: &Path, number: u64) -> Result<Generation, StateError> {
        let dir = root.join(dir_name(number));
        let path = dir.join(MANIFEST);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StateError::corrupt(
                    &path,
                    "missing: a complete generation folder always holds its manifest",
                ));
            }
            Err(source) => return Err(StateError::io("read", &path, source)),
        };
        Generation::parse(dir, number, &path, &bytes)
    }

    /// Parses and checks the manifest `bytes` (read from `path`) of generation `number` in
    /// `dir`: format version, number and file entries.
    fn parse(
        dir: PathBuf,
        number: u64,
        path: &Path,
        bytes: &[u8],
    ) -> Result<Generation, StateError> {
        let path = path.to_path_buf();
        // Check the version before the full shape, so a newer layout is reported as such.
        #[derive(Deserialize)]
        struct Version {
            format_version: u32,
        }
        let version: Version = serde_json::from_slice(bytes)
            .map_err(|e| StateError::corrupt(&path, format!("not a manifest: {e}")))?;
        if version.format_version > FORMAT_VERSION {
            return Err(StateError::TooNew {
                path,
                found: version.format_version,
                supported: FORMAT_VERSION,
            });
        }
        if version.format_version < OLDEST_FORMAT_VERSION {
            return Err(StateError::corrupt(
                &path,
                format!("unknown format version {}", version.format_version),
            ));
        }
        let manifest: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| StateError::corrupt(&path, format!("not a manifest: {e}")))?;
        if manifest.generation != number {
            return Err(StateError::corrupt(
                &path,
                format!(
                    "describes generation {}, but lies in {}",
                    manifest.generation,
                    dir_name(number)
                ),
            ));
        }
        for (rel, entry) in &manifest.files {
            validate_rel(rel)
                .map_err(|e| StateError::corrupt(&path, format!("bad file entry: {e}")))?;
            if fsutil::parse_checksum_hex(&entry.checksum).is_none() {
                return Err(StateError::corrupt(
                    &path,
                    format!(
                        "file {rel:?} has checksum {:?}, expected 16 lowercase hex digits",
                        entry.checksum
                    ),
                ));
            }
        }
        Ok(Generation {
            number,
            dir,
            manifest,
            blobs: None,
        })
    }

    /// This generation as a mirror: data files missing from its folder are fetched by `blobs`
    /// when first read.
    pub(crate) fn with_blobs(mut self, blobs: Option<Blobs>) -> Generation {
        self.blobs = blobs;
        self
    }

    /// The bytes of its `manifest.json` and their checksum (what `CURRENT` records), to
    /// mirror this generation elsewhere ([`super::StateDir::mirror`]).
    pub fn manifest_bytes(&self) -> Result<(Vec<u8>, u64), StateError> {
        let path = self.dir.join(MANIFEST);
        let bytes = fs::read(&path).map_err(|source| StateError::io("read", &path, source))?;
        let sum = fsutil::checksum(&bytes);
        Ok((bytes, sum))
    }

    /// The data files of this generation, in name order.
    pub fn files(&self) -> impl Iterator<Item = (&str, &FileEntry)> {
        self.manifest
            .files
            .iter()
            .map(|(rel, entry)| (rel.as_str(), entry))
    }

    /// The verified payload of `rel`, or `None` if the manifest does not list it. A listed file
    /// that is missing, truncated or does not match its checksum is `StateError::Corrupt`.
    pub fn read(&self, rel: &str) -> Result<Option<Vec<u8>>, StateError> {
        let mut buf = Vec::new();
        Ok(self.read_into(rel, &mut buf)?.then_some(buf))
    }

    /// Like [`Generation::read`], but into `buf` (cleared first), so one buffer can serve
    /// partition after partition. Returns `false` if the manifest does not list `rel`. On
    /// error, `buf` holds unverified bytes: do not use them.
    pub fn read_into(&self, rel: &str, buf: &mut Vec<u8>) -> Result<bool, StateError> {
        buf.clear();
        let Some((path, entry, expected)) = self.locate(rel)? else {
            return Ok(false);
        };
        read_verified(&path, entry.size, expected, buf)?;
        Ok(true)
    }

    /// A streaming reader of the payload of `rel`, for partitions too large to hold twice, or
    /// `None` if the manifest does not list it. Size and footer are checked now; the checksum
    /// when the last payload byte is read: that read returns an `InvalidData` error wrapping
    /// `StateError::Corrupt` instead of the bytes. Act on the data only after reading to the end.
    pub fn open(&self, rel: &str) -> Result<Option<VerifiedReader>, StateError> {
        let Some((path, entry, expected)) = self.locate(rel)? else {
            return Ok(None);
        };
        let mut file = open_listed(&path)?;
        check_len(&file, &path, entry.size)?;
        check_footer_at_end(&mut file, &path, entry.size, expected)?;
        Ok(Some(VerifiedReader {
            rdr: io::BufReader::with_capacity(IO_BUF, file),
            path,
            remaining: entry.size,
            hasher: Xxh3Default::new(),
            expected,
        }))
    }

    /// The verified payload of `rel` as a read-only memory map, or `None` if the manifest does
    /// not list it, for a reader that walks it once front to back and lets go of what it has
    /// passed ([`MappedPayload::release_before`]), so that a large partition is never resident
    /// whole. Size, footer and checksum are checked first, as [`Generation::read`] does.
    pub fn map(&self, rel: &str) -> Result<Option<MappedPayload>, StateError> {
        let Some((path, entry, expected)) = self.locate(rel)? else {
            return Ok(None);
        };
        map_verified(&path, entry.size, expected, true).map(Some)
    }

    /// [`Generation::map`] with the size and footer checked but not the checksum, for a reader
    /// that checks each part it reads against checksums of its own (a profile partition's
    /// blocks against its block index) and may read only a few of them.
    pub fn map_unhashed(&self, rel: &str) -> Result<Option<MappedPayload>, StateError> {
        let Some((path, entry, expected)) = self.locate(rel)? else {
            return Ok(None);
        };
        map_verified(&path, entry.size, expected, false).map(Some)
    }

    /// Reads and verifies every data file; for `inspect` and after restoring a backup.
    pub fn verify_all(&self) -> Result<(), StateError> {
        for rel in self.manifest.files.keys() {
            let mut rdr = self
                .open(rel)?
                .ok_or_else(|| StateError::corrupt(&self.dir.join(rel), "vanished"))?;
            io::copy(&mut rdr, &mut io::sink())
                .map_err(|e| StateError::from_reader(e, &self.dir.join(rel)))?;
        }
        Ok(())
    }

    /// Path, entry and parsed checksum of a listed file.
    fn locate(&self, rel: &str) -> Result<Option<(PathBuf, &FileEntry, u64)>, StateError> {
        let Some(entry) = self.manifest.files.get(rel) else {
            return Ok(None);
        };
        let path = self.dir.join(rel);
        let expected = fsutil::parse_checksum_hex(&entry.checksum).ok_or_else(|| {
            StateError::corrupt(
                &path,
                "its manifest checksum is not 16 lowercase hex digits",
            )
        })?;
        if let Some(Blobs(fetch)) = &self.blobs
            && !path.exists()
        {
            let parent = path.parent().unwrap_or(&self.dir);
            fs::create_dir_all(parent)
                .map_err(|source| StateError::io("create folder", parent, source))?;
            // A fresh temp name: two threads may want the same file.
            let (_, tmp) = fsutil::temp_path_for(&path)?;
            fetch(rel, entry, &tmp).map_err(|reason| {
                let _ = fs::remove_file(&tmp);
                StateError::corrupt(&path, format!("cannot fetch it: {reason}"))
            })?;
            if let Err(source) = fs::rename(&tmp, &path) {
                let _ = fs::remove_file(&tmp);
                return Err(StateError::io("rename fetched file to", &path, source));
            }
        }
        Ok(Some((path, entry, expected)))
    }
}

impl StateError {
    /// Recovers the `StateError` that a [`VerifiedReader`] wrapped into an `io::Error`; any
    /// other I/O error becomes `StateError::Io` on `path`.
    pub fn from_reader(err: io::Error, path: &Path) -> StateError {
        if err.get_ref().is_some_and(|inner| inner.is::<StateError>()) {
            if let Some(Ok(state)) = err.into_inner().map(|inner| inner.downcast::<StateError>()) {
                return *state;
            }
            return StateError::corrupt(path, "unreadable");
        }
        StateError::io("read", path, err)
    }
}

/// Reads the data file at `path` into `buf` (cleared first) and checks its length, footer and
/// checksum against `size` and `expected`; on error `buf` holds unverified bytes.
fn read_verified(
    path: &Path,
    size: u64,
    expected: u64,
    buf: &mut Vec<u8>,
) -> Result<(), StateError> {
    buf.clear();
    let mut file = open_listed(path)?;
    let file_len = check_len(&file, path, size)?;
    let capacity = usize::try_from(file_len)
        .map_err(|_| StateError::corrupt(path, "larger than this machine's address space"))?;
    buf.try_reserve_exact(capacity).map_err(|_| {
        StateError::io(
            "allocate a buffer for",
            path,
            io::ErrorKind::OutOfMemory.into(),
        )
    })?;
    file.read_to_end(buf)
        .map_err(|source| StateError::io("read", path, source))?;
    if buf.len() as u64 != file_len {
        return Err(StateError::corrupt(path, "changed size while being read"));
    }
    // check_len guarantees at least FOOTER_LEN bytes.
    let payload_len = buf.len().saturating_sub(FOOTER_LEN);
    let (payload, footer) = buf.split_at(payload_len);
    check_footer(path, footer, size, expected)?;
    check_sum(path, fsutil::checksum(payload), expected)?;
    buf.truncate(payload_len);
    Ok(())
}

fn open_listed(path: &Path) -> Result<File, StateError> {
    File::open(path).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            StateError::corrupt(
                path,
                "missing: the manifest lists it but the file does not exist",
            )
        } else {
            StateError::io("open", path, source)
        }
    })
}

/// Checks that the file is exactly payload + footer long; returns that length.
fn check_len(file: &File, path: &Path, size: u64) -> Result<u64, StateError> {
    let len = file
        .metadata()
        .map_err(|source| StateError::io("stat", path, source))?
        .len();
    let want = size
        .checked_add(FOOTER_LEN as u64)
        .ok_or_else(|| StateError::corrupt(path, "absurd size in manifest"))?;
    if len != want {
        return Err(StateError::corrupt(
            path,
            format!(
                "file is {len} bytes, expected {want} ({size} payload + {FOOTER_LEN} footer): truncated or overwritten"
            ),
        ));
    }
    Ok(len)
}

fn check_footer(path: &Path, footer: &[u8], size: u64, expected: u64) -> Result<(), StateError> {
    let (len, sum) =
        fsutil::decode_footer(footer).map_err(|reason| StateError::corrupt(path, reason))?;
    if len != size {
        return Err(StateError::corrupt(
            path,
            format!("footer says {len} payload bytes, manifest says {size}"),
        ));
    }
    if sum != expected {
        return Err(StateError::corrupt(
            path,
            format!(
                "footer checksum {} differs from manifest checksum {}",
                fsutil::checksum_hex(sum),
                fsutil::checksum_hex(expected)
            ),
        ));
    }
    Ok(())
}

fn check_footer_at_end(
    file: &mut File,
    path: &Path,
    size: u64,
    expected: u64,
) -> Result<(), StateError> {
    let mut footer = [0u8; FOOTER_LEN];
    file.seek(SeekFrom::Start(size))
        .and_then(|_| file.read_exact(&mut footer))
        .and_then(|()| file.seek(SeekFrom::Start(0)).map(drop))
        .map_err(|source| StateError::io("read footer of", path, source))?;
    check_footer(path, &footer, size, expected)
}

fn check_sum(path: &Path, found: u64, expected: u64) -> Result<(), StateError> {
    if found != expected {
        return Err(StateError::corrupt(
            path,
            format!(
                "payload checksum is {}, expected {} (damaged content)",
                fsutil::checksum_hex(found),
                fsutil::checksum_hex(expected)
            ),
        ));
    }
    Ok(())
}

/// Maps the data file at `path` and checks its length, footer and (with `hash`) checksum
/// against `size` and `expected`; see [`Generation::map`].
fn map_verified(
    path: &Path,
    size: u64,
    expected: u64,
    hash: bool,
) -> Result<MappedPayload, StateError> {
    let file = open_listed(path)?;
    let file_len = check_len(&file, path, size)?;
    let len = usize::try_from(size)
        .map_err(|_| StateError::corrupt(path, "larger than this machine's address space"))?;
    // SAFETY: data files are never modified once written (see the module docs), and the
    // map is read-only. (A file truncated under the map by someone else would fault the
    // process, as an input file would; segmill itself never does.)
    #[allow(unsafe_code)]
    let map = unsafe { memmap2::Mmap::map(&file) }
        .map_err(|source| StateError::io("map", path, source))?;
    if map.len() as u64 != file_len {
        return Err(StateError::corrupt(path, "changed size while being read"));
    }
    check_footer(path, &map[len..], size, expected)?;
    let mapped = MappedPayload {
        map,
        len,
        released: std::cell::Cell::new(0),
    };
    if !hash {
        return Ok(mapped);
    }
    // A window at a time, each let go of once hashed, until the reader comes to it.
    let mut hasher = Xxh3Default::new();
    for (n, window) in mapped.bytes().chunks(CHECK_WINDOW).enumerate() {
        hasher.update(window);
        mapped.release_before((n + 1) * CHECK_WINDOW);
    }
    check_sum(path, hasher.digest(), expected)?;
    mapped.released.set(0);
    Ok(mapped)
}

/// A data file's verified payload, memory-mapped; see [`Generation::map`].
pub struct MappedPayload {
    map: memmap2::Mmap,
    len: usize,
    /// Bytes let go of so far.
    released: std::cell::Cell<usize>,
}

impl MappedPayload {
    pub fn bytes(&self) -> &[u8] {
        &self.map[..self.len]
    }

    /// Lets the pages wholly before `offset` leave this process's memory (they stay in the
    /// page cache, and the same bytes fault back in if touched again). An offset before the
    /// pages already let go of starts a new pass over the payload (a merge done again): the
    /// pages from there on are let go of again as later calls pass them.
    pub fn release_before(&self, offset: usize) {
        let (from, to) = (self.released.get(), offset.min(self.len));
        if to > from {
            // Whole pages only: the one straddling `to` goes with the next call.
            crate::inbound::read::release(&self.map, from, to - from);
            self.released.set(to / 4096 * 4096);
        } else {
            self.released.set(self.released.get().min(to / 4096 * 4096));
        }
    }
}

/// Streams the payload of one data file and verifies its checksum at the end; see
/// [`Generation::open`].
pub struct VerifiedReader {
    rdr: io::BufReader<File>,
    path: PathBuf,
    remaining: u64,
    hasher: Xxh3Default,
    expected: u64,
}

impl VerifiedReader {
    /// Payload bytes not yet read.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }
}

impl Read for VerifiedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = self.rdr.read(buf.get_mut(..want).unwrap_or_default())?;
        if n == 0 {
            let err = StateError::corrupt(
                &self.path,
                "ended before its payload (truncated while reading)",
            );
            return Err(io::Error::new(io::ErrorKind::InvalidData, err));
        }
        self.hasher.update(buf.get(..n).unwrap_or_default());
        self.remaining -= n as u64;
        if self.remaining == 0 {
            check_sum(&self.path, self.hasher.digest(), self.expected)
                .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))?;
        }
        Ok(n)
    }
}

/// Builds the next generation in `gen-N.partial/`; see [`super::StateDir::begin`].
///
/// `write`, `create` and `carry` take `&self` and may be called from several threads at once
/// (one partition per thread). Dropping the writer without `commit` removes the partial folder;
/// a killed process leaves it for the next `begin` to sweep.
#[derive(Debug)]
pub struct GenerationWriter {
    root: PathBuf,
    number: u64,
    partial: PathBuf,
    files: Mutex<BTreeMap<String, FileEntry>>,
    /// Subfolders created inside `partial`, fsynced at commit.
    dirs: Mutex<BTreeSet<PathBuf>>,
    committed: bool,
}

impl GenerationWriter {
    /// Creates `root/gen-N.partial/` (the caller swept any stale one).
    pub(crate) fn start(root: &Path, number: Option<u64>) -> Result<GenerationWriter, StateError> {
        let number = number.ok_or_else(|| {
            StateError::corrupt(&root.join(CURRENT), "generation number overflow")
        })?;
        let partial = root.join(format!("{}{PARTIAL_SUFFIX}", dir_name(number)));
        fs::create_dir(&partial)
            .map_err(|source| StateError::io("create folder", &partial, source))?;
        fsutil::sync_dir(root)?;
        Ok(GenerationWriter {
            root: root.to_path_buf(),
            number,
            partial,
            files: Mutex::new(BTreeMap::new()),
            dirs: Mutex::new(BTreeSet::new()),
            committed: false,
        })
    }

    /// The number the generation will have: parent + 1, or 1.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// Writes `payload` as data file `rel` (payload, footer, fsync).
    pub fn write(&self, rel: &str, payload: &[u8]) -> Result<(), StateError> {
        let mut wtr = self.create(rel)?;
        wtr.write_all(payload)
            .map_err(|source| StateError::io("write", &wtr.path, source))?;
        wtr.finish().map(drop)
    }

    /// Whether data file `rel` was written (finished) in this generation.
    pub fn contains(&self, rel: &str) -> bool {
        self.files
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(rel)
    }

    /// The verified payload of data file `rel` written in this generation, or `None` if it was
    /// not (yet) written: a partition written early is read back from disk instead of being
    /// held in memory until the commit.
    pub fn read(&self, rel: &str) -> Result<Option<Vec<u8>>, StateError> {
        let Some((path, size, expected)) = self.written(rel)? else {
            return Ok(None);
        };
        let mut buf = Vec::new();
        read_verified(&path, size, expected, &mut buf)?;
        Ok(Some(buf))
    }

    /// [`GenerationWriter::read`], memory-mapped: see [`Generation::map`].
    pub fn map(&self, rel: &str) -> Result<Option<MappedPayload>, StateError> {
        let Some((path, size, expected)) = self.written(rel)? else {
            return Ok(None);
        };
        map_verified(&path, size, expected, true).map(Some)
    }

    /// Path, payload size and checksum of data file `rel` if it was written (finished) here.
    fn written(&self, rel: &str) -> Result<Option<(PathBuf, u64, u64)>, StateError> {
        let entry = self
            .files
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(rel)
            .cloned();
        let Some(entry) = entry else {
            return Ok(None);
        };
        let path = self.partial.join(rel);
        let expected = fsutil::parse_checksum_hex(&entry.checksum)
            .ok_or_else(|| StateError::corrupt(&path, "checksum is not 16 lowercase hex digits"))?;
        Ok(Some((path, entry.size, expected)))
    }

    /// Starts data file `rel` as a stream; [`FileWriter::finish`] adds the footer and records it.
    pub fn create(&self, rel: &str) -> Result<FileWriter<'_>, StateError> {
        let path = self.prepare(rel)?;
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|source| duplicate_or_io("create", &path, source))?;
        Ok(FileWriter {
            owner: self,
            rel: rel.to_owned(),
            path,
            wtr: Some(BufWriter::with_capacity(IO_BUF, file)),
            hasher: Xxh3Default::new(),
            len: 0,
        })
    }

    /// Reuses the unchanged file `rel` of `from`: a hard link (files are immutable), or a copy
    /// where links are not possible. Checks its size and footer, not its whole content.
    pub fn carry(&self, rel: &str, from: &Generation) -> Result<(), StateError> {
        let entry = from
            .manifest
            .files
            .get(rel)
            .ok_or_else(|| StateError::NotInParent {
                rel: rel.to_owned(),
                from: from.dir.clone(),
            })?;
        let expected = fsutil::parse_checksum_hex(&entry.checksum).ok_or_else(|| {
            StateError::corrupt(
                &from.dir.join(rel),
                "its manifest checksum is not 16 lowercase hex digits",
            )
        })?;
        let src = from.dir.join(rel);
        let mut src_file = open_listed(&src)?;
        check_len(&src_file, &src, entry.size)?;
        check_footer_at_end(&mut src_file, &src, entry.size, expected)?;
        drop(src_file);
        let dst = self.prepare(rel)?;
        if let Err(link_err) = fs::hard_link(&src, &dst) {
            if link_err.kind() == io::ErrorKind::AlreadyExists {
                return Err(StateError::DuplicateFile { path: dst });
            }
            // Another file system or no link support: copy, then make the copy durable.
            let mut src_file =
                File::open(&src).map_err(|source| StateError::io("open", &src, source))?;
            let mut dst_file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&dst)
                .map_err(|source| duplicate_or_io("create", &dst, source))?;
            io::copy(&mut src_file, &mut dst_file)
                .map_err(|source| StateError::io("copy into", &dst, source))?;
            dst_file
                .sync_all()
                .map_err(|source| StateError::io("fsync", &dst, source))?;
        }
        self.record(rel, entry.clone(), &dst)
    }

    /// Takes data file `rel` from `path`, a file written elsewhere in the data-file format by
    /// [`write_loose`] (a staged run's task, possibly on another machine). Its whole payload is
    /// verified against its footer, then it is linked in (copied where links are not possible).
    pub fn adopt(&self, rel: &str, path: &Path) -> Result<(), StateError> {
        let payload = read_loose(path)?;
        let entry = FileEntry::new(payload.len() as u64, fsutil::checksum(&payload));
        drop(payload);
        let dst = self.prepare(rel)?;
        if fs::hard_link(path, &dst).is_err() {
            fs::copy(path, &dst)
                .and_then(|_| File::open(&dst).and_then(|f| f.sync_all()))
                .map_err(|source| StateError::io("copy into", &dst, source))?;
        }
        self.record(rel, entry, &dst)
    }

    /// Validates `rel`, creates its parent folders and returns its path inside the partial folder.
    fn prepare(&self, rel: &str) -> Result<PathBuf, StateError> {
        validate_rel(rel)?;
        let path = self.partial.join(rel);
        if self
            .files
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(rel)
        {
            return Err(StateError::DuplicateFile { path });
        }
        if let Some((parent_rel, _)) = rel.rsplit_once('/') {
            let parent = self.partial.join(parent_rel);
            let mut dirs = self.dirs.lock().unwrap_or_else(PoisonError::into_inner);
            if !dirs.contains(&parent) {
                fs::create_dir_all(&parent)
                    .map_err(|source| StateError::io("create folder", &parent, source))?;
                // Record every level, so commit fsyncs each folder that gained an entry.
                let mut cur = parent.as_path();
                while cur != self.partial {
                    dirs.insert(cur.to_path_buf());
                    match cur.parent() {
                        Some(p) => cur = p,
                        None => break,
                    }
                }
            }
        }
        Ok(path)
    }

    fn record(&self, rel: &str, entry: FileEntry, path: &Path) -> Result<(), StateError> {
        let mut files = self.files.lock().unwrap_or_else(PoisonError::into_inner);
        if files.contains_key(rel) {
            return Err(StateError::DuplicateFile {
                path: path.to_path_buf(),
            });
        }
        files.insert(rel.to_owned(), entry);
        Ok(())
    }

    /// Makes the generation durable and current, then removes generations older than the
    /// newest `keep` (at least the new one is kept). Pruning failures are logged, not returned:
    /// by then the generation is committed, and the next commit retries.
    pub fn commit(
        mut self,
        meta: serde_json::Value,
        keep: usize,
    ) -> Result<super::Generation, StateError> {
        let files = std::mem::take(&mut *self.files.lock().unwrap_or_else(PoisonError::into_inner));
        let dirs = std::mem::take(&mut *self.dirs.lock().unwrap_or_else(PoisonError::into_inner));
        // Deepest first, so a folder is fsynced after the subfolders it names.
        for dir in dirs.iter().rev() {
            fsutil::sync_dir(dir)?;
        }
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            generation: self.number,
            meta,
            files,
        };
        let mut bytes = serde_json::to_vec_pretty(&manifest).map_err(|e| {
            StateError::io("serialize manifest for", &self.partial, io::Error::other(e))
        })?;
        bytes.push(b'\n');
        let manifest_path = self.partial.join(MANIFEST);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&manifest_path)
            .map_err(|source| StateError::io("create", &manifest_path, source))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(|source| StateError::io("write", &manifest_path, source))?;
        drop(file);
        fsutil::sync_dir(&self.partial)?;

        let dir = self.root.join(dir_name(self.number));
        fs::rename(&self.partial, &dir)
            .map_err(|source| StateError::io("rename partial generation to", &dir, source))?;
        self.committed = true;
        fsutil::sync_dir(&self.root)?;
        crate::failpoint::hit("commit-renamed")
            .map_err(|source| StateError::io("switch to", &dir, source))?;
        // The switch: until this rename lands, the previous generation is current.
        let current = super::format_current(self.number, fsutil::checksum(&bytes));
        fsutil::write_atomic(&self.root.join(CURRENT), current.as_bytes())?;

        prune(&self.root, self.number, keep);
        Ok(Generation {
            number: self.number,
            dir,
            manifest,
            blobs: None,
        })
    }
}

impl Drop for GenerationWriter {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort; `begin` sweeps whatever remains.
            let _ = fs::remove_dir_all(&self.partial);
        }
    }
}

fn duplicate_or_io(op: &'static str, path: &Path, source: io::Error) -> StateError {
    if source.kind() == io::ErrorKind::AlreadyExists {
        StateError::DuplicateFile {
            path: path.to_path_buf(),
        }
    } else {
        StateError::io(op, path, source)
    }
}

/// Removes generations older than the newest `keep` (never `current`). Logs failures.
fn prune(root: &Path, current: u64, keep: usize) {
    let numbers = match list(root) {
        Ok(numbers) => numbers,
        Err(err) => {
            tracing::warn!(%err, "cannot list old generations to prune");
            return;
        }
    };
    let older: Vec<u64> = numbers.into_iter().filter(|&n| n < current).collect();
    let keep_older = keep.saturating_sub(1);
    let remove = older.len().saturating_sub(keep_older);
    let mut removed = false;
    for &n in older.iter().take(remove) {
        let dir = root.join(dir_name(n));
        match fs::remove_dir_all(&dir) {
            Ok(()) => removed = true,
            Err(err) => tracing::warn!(%err, dir = %dir.display(), "cannot remove old generation"),
        }
    }
    if removed && let Err(err) = fsutil::sync_dir(root) {
        tracing::warn!(%err, "cannot fsync state folder after pruning");
    }
}

/// Writes `payload` as a loose data file at `path` (payload, footer; temp file, fsync, rename),
/// for [`GenerationWriter::adopt`] to take into a generation later.
pub fn write_loose(path: &Path, payload: &[u8]) -> Result<(), StateError> {
    let mut file = fsutil::atomic_writer(path)?;
    file.write_all(payload)
        .and_then(|()| {
            file.write_all(&fsutil::encode_footer(
                payload.len() as u64,
                fsutil::checksum(payload),
            ))
        })
        .map_err(|source| StateError::io("write", path, source))?;
    file.finish()
}

/// Reads a loose data file written by [`write_loose`], verified against its footer.
pub fn read_loose(path: &Path) -> Result<Vec<u8>, StateError> {
    let mut buf = fs::read(path).map_err(|source| StateError::io("read", path, source))?;
    let payload_len = buf
        .len()
        .checked_sub(FOOTER_LEN)
        .ok_or_else(|| StateError::corrupt(path, "shorter than a data-file footer"))?;
    let (payload, footer) = buf.split_at(payload_len);
    let (len, sum) = fsutil::decode_footer(footer).map_err(|e| StateError::corrupt(path, e))?;
    if len != payload_len as u64 {
        return Err(StateError::corrupt(
            path,
            format!("footer says {len} payload bytes, the file holds {payload_len}"),
        ));
    }
    check_sum(path, fsutil::checksum(payload), sum)?;
    buf.truncate(payload_len);
    Ok(buf)
}

/// A data file being written as a stream into a new generation; see
/// [`GenerationWriter::create`]. Dropping it without `finish` removes the file.
pub struct FileWriter<'a> {
    owner: &'a GenerationWriter,
    rel: String,
    path: PathBuf,
    /// `None` once finished.
    wtr: Option<BufWriter<File>>,
    hasher: Xxh3Default,
    len: u64,
}

impl FileWriter<'_> {
    /// Appends the footer, fsyncs, and records the file in the generation's manifest.
    pub fn finish(mut self) -> Result<FileEntry, StateError> {
        let Some(mut wtr) = self.wtr.take() else {
            return Err(StateError::io(
                "finish",
                &self.path,
                io::Error::other("writer already finished"),
            ));
        };
        let sum = self.hasher.digest();
        let result = wtr
            .write_all(&fsutil::encode_footer(self.len, sum))
            .and_then(|()| wtr.into_inner().map_err(io::IntoInnerError::into_error))
            .and_then(|file| file.sync_all());
        if let Err(source) = result {
            let _ = fs::remove_file(&self.path);
            return Err(StateError::io("write", &self.path, source));
        }
        let entry = FileEntry::new(self.len, sum);
        self.owner.record(&self.rel, entry.clone(), &self.path)?;
        Ok(entry)
    }
}

impl Write for FileWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(wtr) = &mut self.wtr else {
            return Err(io::Error::other("data file already finished"));
        };
        let n = wtr.write(buf)?;
        let written = buf.get(..n).unwrap_or_default();
        self.hasher.update(written);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.wtr {
            Some(wtr) => wtr.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for FileWriter<'_> {
    fn drop(&mut self) {
        if self.wtr.take().is_some() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_names_round_trip_and_reject_odd_spellings() {
        assert_eq!(dir_name(12), "gen-000012");
        assert_eq!(dir_name(1_234_567), "gen-1234567");
        assert_eq!(parse_dir_name("gen-000012"), Some(12));
        assert_eq!(parse_dir_name("gen-1234567"), Some(1_234_567));
        assert_eq!(parse_dir_name("gen-12"), None);
        assert_eq!(parse_dir_name("gen-0000012"), None);
        assert_eq!(parse_dir_name("gen-000012.partial"), None);
        assert_eq!(parse_dir_name("gen-+00012"), None);
    }

    #[test]
    fn a_mapped_payload_lets_go_behind_each_pass() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("part");
        let payload: Vec<u8> = (0..10 * 4096 + 100).map(|i| (i % 251) as u8).collect();
        write_loose(&path, &payload).unwrap();
        let m = map_verified(
            &path,
            payload.len() as u64,
            fsutil::checksum(&payload),
            true,
        )
        .unwrap();
        assert_eq!(m.released.get(), 0);
        assert_eq!(m.bytes(), &payload[..]);
        // Whole pages, forward only within a pass.
        m.release_before(3 * 4096 + 10);
        assert_eq!(m.released.get(), 3 * 4096);
        m.release_before(3 * 4096 + 20);
        assert_eq!(m.released.get(), 3 * 4096);
        m.release_before(6 * 4096);
        assert_eq!(m.released.get(), 6 * 4096);
        // A second pass from further back: its pages are let go of again as it goes.
        m.release_before(2 * 4096 + 5);
        assert_eq!(m.released.get(), 2 * 4096);
        m.release_before(8 * 4096);
        assert_eq!(m.released.get(), 8 * 4096);
        m.release_before(usize::MAX);
        assert_eq!(m.released.get(), payload.len() / 4096 * 4096);
        assert_eq!(m.bytes(), &payload[..]);
    }

    #[test]
    fn relative_names() {
        for ok in [
            "ledger",
            "profiles/part-0007",
            "members/1234/part-0000",
            "a.b_c-d",
        ] {
            assert!(validate_rel(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/abs",
            "a//b",
            "a/",
            "../x",
            "a/../b",
            ".hidden",
            "manifest.json",
            "a b",
            "a\\b",
            "ü",
        ] {
            assert!(validate_rel(bad).is_err(), "{bad}");
        }
        let err = validate_rel("../x").unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid state file name \"../x\": a path component starts with '.' (reserved for temp files; '..' is not allowed)"
        );
    }
}
