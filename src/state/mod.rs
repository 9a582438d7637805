//! The state folder: generations, checksummed files, the lock and the ledger.
//!
//! Owns everything under `paths.state`:
//!
//! ```text
//! state/
//!   CURRENT                 "gen-000012 <xxh3-64 hex of its manifest.json>\n"
//!   gen-000012/
//!     manifest.json         format version, generation, caller's meta, files with size + checksum
//!     profiles/part-0007    data files: payload + 24-byte footer (SEGMILL\x01, len, xxh3-64)
//!     profiles/part-0007.delta   (format 3) what changed in part-0007 since it was written
//!     profiles/part-0007.delta.counts   (format 4) what the delta changes of the blocks' counts
//!     ledger                inbound files seen (see `ledger.rs`)
//!   gen-000013.partial/     a generation being built; never read
//!   receipts/RUN/  runs/    written by the report stage with `write_atomic`
//!   lock                    held by the running process (see `lock.rs`)
//! ```
//!
//! Crash safety: a new generation is built in `gen-N.partial/`, every file and folder is fsynced,
//! the folder is renamed to `gen-N`, and only then is `CURRENT` replaced by an atomic rename.
//! Killing the process at any instant leaves the previous generation current and intact;
//! `begin` sweeps the leftovers, and generation numbers are `parent + 1`, so a re-run writes the
//! same names and bytes.
//!
//! This module does not know what the files contain (profiles, ID sync, members): it stores and
//! verifies bytes. The ledger is the one format it owns.

mod fsutil;
mod generation;
mod ledger;
mod lock;
mod verify;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

pub use fsutil::{
    AtomicFile, FOOTER_LEN, atomic_writer, create_dir_all_durable, sync_dir, write_atomic,
};
pub(crate) use fsutil::{is_temp_name, temp_path_for};
pub use generation::{
    Blobs, FetchBlob, FileEntry, FileWriter, Generation, GenerationWriter, Manifest, MappedPayload,
    VerifiedReader, read_loose, write_loose,
};
pub use ledger::{LEDGER_FILE, Ledger, LedgerEntry, LedgerError, Outcome};
pub use lock::LockGuard;
pub use verify::{Problem, VerifyReport, verify};

/// Version of the state layout this build writes. A state written by a newer segmill is
/// refused rather than misread.
///
/// - 1: the first layout.
/// - 2: each stored profile starts with a header (entry count, expiry and recency days, body
///   length) and keeps its segments before its entries (`profile` module). A state of format
///   1 is read, and the first run over it rewrites every profile partition in format 2.
/// - 3: a profile partition may have a delta beside it (`profile::delta_name`): the profiles
///   changed since the partition was last written whole, which a night rewrites instead of the
///   whole partition while they are few. A state of format 2 is read as it is (its partitions
///   have no deltas).
/// - 4: beside a profile delta there may be its block counts (`profile::delta_counts_name`).
///   A state of format 2 or 3 is read as it is (counts are made on its next delta night). A
///   format-3 segmill would take the counts for a profile partition in `inspect stats`, and
///   leave them stale beside a delta it rewrites (stale counts name another delta and are not
///   used, but it is refused all the same).
pub const FORMAT_VERSION: u32 = 4;

/// The first format whose stored profiles start with a header (format 2, above): a state of
/// this format or later is in this build's profile layout.
pub const PROFILE_HEADERS_SINCE: u32 = 2;

/// The oldest layout this build reads (and upgrades on its next run).
pub const OLDEST_FORMAT_VERSION: u32 = 1;

/// What a partition's delta adds to its name: `profiles/part-0007.delta` holds what changed in
/// `profiles/part-0007` (its base) since the base was written whole, and the same for a
/// destination's members. The partition is its base with its delta laid over it. Each kind of
/// file says how its delta marks a record the base has and the partition no longer does.
pub const DELTA_SUFFIX: &str = ".delta";

/// What a sorted data file's block index ([`crate::blocks`]) adds to the file's name.
pub const INDEX_SUFFIX: &str = ".index";

/// How many bytes a partition whose base has `base` bytes lets its delta (now `delta` bytes)
/// grow to on a night expected to add about `growth` bytes to it, before the partition is
/// rewritten whole instead; `None` when tonight alone would take it past that, so that the
/// night goes straight to the whole partition.
///
/// A delta is rewritten every night it changes, and its base when the delta is folded into
/// it: with deltas growing by about `c` bytes a night, folding at `d` bytes costs about
/// `d / 2 + base * c / d` bytes written a night, least at `d = sqrt(2 * base * c)` (with `c` at
/// least 64 KiB). A delta never passes a quarter of its base, so that reading a partition
/// stays about the cost of reading its base.
pub fn delta_limit(base: usize, delta: usize, growth: usize) -> Option<usize> {
    let limit = base
        .saturating_mul(2)
        .saturating_mul(growth.max(64 << 10))
        .isqrt()
        .min(base / 4);
    (delta.saturating_add(growth) < limit).then_some(limit)
}

/// What the name of a delta's block counts ([`crate::blocks::DeltaCounts`]) adds to the
/// delta's.
pub const COUNTS_SUFFIX: &str = ".counts";

/// Name of the file inside the root that names the current generation.
const CURRENT: &str = "CURRENT";

/// Errors of the state folder. Every message names the path and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// An I/O operation failed.
    #[error("cannot {op} {}", path.display())]
    Io {
        /// What was being done, as a verb phrase ("fsync", "create folder").
        op: &'static str,
        /// The file or folder.
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A state file does not match its checksum, size, footer or format.
    #[error(
        "state file {} is corrupt: {reason}; restore the state folder from a backup, or point \
         CURRENT at an older intact generation",
        path.display()
    )]
    Corrupt {
        /// The damaged file (or the missing one).
        path: PathBuf,
        /// What check failed.
        reason: String,
    },
    /// The state was written by a newer segmill.
    #[error(
        "state {} has format version {found}, but this segmill reads at most version {supported}; \
         upgrade segmill",
        path.display()
    )]
    TooNew {
        /// The manifest.
        path: PathBuf,
        /// Its format version.
        found: u32,
        /// [`FORMAT_VERSION`].
        supported: u32,
    },
    /// Another process holds the lock (exit code 3).
    #[error(
        "state folder lock {} is locked by another segmill run ({holder}); wait for it to finish",
        path.display()
    )]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// The holder's pid and start time as it wrote them, or "holder unknown".
        holder: String,
    },
    /// A name given to the state folder is not a plain relative file name.
    #[error("invalid state file name {name:?}: {reason}")]
    BadName {
        /// The name as given.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// `begin` was given a parent that is not the current generation.
    #[error(
        "state folder {}: a new generation must build on the current one ({}), but was given {}; \
         re-read CURRENT and retry",
        root.display(), gen_label(*current), gen_label(*given)
    )]
    StaleParent {
        /// The state root.
        root: PathBuf,
        /// The current generation's number, if any.
        current: Option<u64>,
        /// The parent passed to `begin`.
        given: Option<u64>,
    },
    /// `carry` named a file the source generation does not hold.
    #[error("cannot carry {rel:?} from {}: it is not in that generation's manifest", from.display())]
    NotInParent {
        /// The relative file name.
        rel: String,
        /// The source generation's folder.
        from: PathBuf,
    },
    /// The same file was written twice into one new generation.
    #[error("{} was already written in this generation", path.display())]
    DuplicateFile {
        /// The file.
        path: PathBuf,
    },
}

fn gen_label(number: Option<u64>) -> String {
    match number {
        Some(n) => generation::dir_name(n),
        None => "no generation".to_owned(),
    }
}

impl StateError {
    pub(crate) fn io(op: &'static str, path: &Path, source: io::Error) -> StateError {
        StateError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn corrupt(path: &Path, reason: impl Into<String>) -> StateError {
        StateError::Corrupt {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

/// An opened state folder.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
    /// Set for a mirror (see [`StateDir::mirror`]).
    blobs: Option<Blobs>,
}

impl StateDir {
    /// Opens the state folder at `root`, creating it (and its parents) if missing. Reads nothing
    /// else: call [`StateDir::lock`] before [`StateDir::begin`].
    pub fn open(root: &Path) -> Result<StateDir, StateError> {
        fsutil::create_dir_all_durable(root)?;
        Ok(StateDir {
            root: root.to_path_buf(),
            blobs: None,
        })
    }

    /// A read-only mirror at `root` of a generation kept elsewhere, for a staged run's task on
    /// a machine without the state folder: `manifest` (the bytes of its `manifest.json`, which
    /// must hash to `manifest_sum`) is written there as generation `number`'s and made current;
    /// its data files are fetched by `blobs` when first read, and verified like any other.
    pub fn mirror(
        root: &Path,
        number: u64,
        manifest: &[u8],
        manifest_sum: u64,
        blobs: Blobs,
    ) -> Result<StateDir, StateError> {
        let dir = root.join(generation::dir_name(number));
        let found = fsutil::checksum(manifest);
        if found != manifest_sum {
            return Err(StateError::corrupt(
                &dir.join("manifest.json"),
                format!(
                    "the copy fetched has checksum {}, the plan says {}",
                    fsutil::checksum_hex(found),
                    fsutil::checksum_hex(manifest_sum)
                ),
            ));
        }
        fs::create_dir_all(&dir).map_err(|source| StateError::io("create folder", &dir, source))?;
        fsutil::write_atomic(&dir.join("manifest.json"), manifest)?;
        fsutil::write_atomic(
            &root.join(CURRENT),
            format_current(number, manifest_sum).as_bytes(),
        )?;
        Ok(StateDir {
            root: root.to_path_buf(),
            blobs: Some(blobs),
        })
    }

    /// The state folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Takes the run lock without waiting; [`StateError::Locked`] if another run holds it.
    /// Writers must hold it from before [`StateDir::current`] until after `commit`.
    pub fn lock(&self) -> Result<LockGuard, StateError> {
        lock::acquire(&self.root.join("lock"))
    }

    /// The current generation, with its manifest verified against the checksum in `CURRENT`,
    /// or `None` for a fresh state folder. Data files are verified when read.
    pub fn current(&self) -> Result<Option<Generation>, StateError> {
        let current_path = self.root.join(CURRENT);
        let text = match fs::read(&current_path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return self.no_current(&current_path),
            Err(source) => return Err(StateError::io("read", &current_path, source)),
        };
        let (number, manifest_sum) = parse_current(&text).ok_or_else(|| {
            StateError::corrupt(
                &current_path,
                format!(
                    "expected one line \"gen-NNNNNN <16 hex digits>\", found {:?}",
                    String::from_utf8_lossy(&text[..text.len().min(80)])
                ),
            )
        })?;
        Generation::load(&self.root, number, manifest_sum)
            .map(|g| Some(g.with_blobs(self.blobs.clone())))
    }

    /// `CURRENT` is missing: a fresh folder, or a first generation whose commit was cut short
    /// (it is swept by `begin`). Anything else means `CURRENT` was lost, which must not silently
    /// restart from nothing.
    fn no_current(&self, current_path: &Path) -> Result<Option<Generation>, StateError> {
        let generations = generation::list(&self.root)?;
        match generations.iter().find(|&&n| n > 1) {
            Some(&n) => Err(StateError::corrupt(
                current_path,
                format!(
                    "missing, but {} exists; write \"{} <xxh3-64 of its manifest.json>\" into it to \
                     restore",
                    generation::dir_name(n),
                    generation::dir_name(n)
                ),
            )),
            None => Ok(None),
        }
    }

    /// Starts generation `parent + 1` (or 1) in `gen-N.partial/`. `parent` must be the current
    /// generation (`None` only for a fresh folder), else [`StateError::StaleParent`].
    ///
    /// Sweeps what a killed run may have left: temp files in the root, `*.partial` folders and
    /// complete-but-uncommitted generations newer than the current one.
    pub fn begin(&self, parent: Option<&Generation>) -> Result<GenerationWriter, StateError> {
        let current = self.current()?;
        let current_number = current.as_ref().map(|g| g.number);
        let given = parent.map(|g| g.number);
        if current_number != given {
            return Err(StateError::StaleParent {
                root: self.root.clone(),
                current: current_number,
                given,
            });
        }
        self.sweep(current_number.unwrap_or(0))?;
        GenerationWriter::start(&self.root, given.map_or(Some(1), |n| n.checked_add(1)))
    }

    /// Removes leftovers of killed runs; see [`StateDir::begin`].
    fn sweep(&self, current: u64) -> Result<(), StateError> {
        let entries = fs::read_dir(&self.root)
            .map_err(|source| StateError::io("list", &self.root, source))?;
        let mut removed = false;
        for entry in entries {
            let entry = entry.map_err(|source| StateError::io("list", &self.root, source))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let path = entry.path();
            if fsutil::is_temp_name(name) {
                fs::remove_file(&path)
                    .map_err(|source| StateError::io("remove stale temp file", &path, source))?;
                removed = true;
            } else if name.ends_with(generation::PARTIAL_SUFFIX)
                || generation::parse_dir_name(name).is_some_and(|n| n > current)
            {
                fs::remove_dir_all(&path).map_err(|source| {
                    StateError::io("remove uncommitted generation", &path, source)
                })?;
                removed = true;
            }
        }
        if removed {
            sync_dir(&self.root)?;
        }
        Ok(())
    }

    /// Where the receipts of run `run_id` go: `root/receipts/<run_id>`. Not created here.
    pub fn receipts_dir(&self, run_id: &str) -> PathBuf {
        self.root.join("receipts").join(run_id)
    }

    /// Where run reports go: `root/runs`. Not created here.
    pub fn runs_dir(&self) -> PathBuf {
        self.root.join("runs")
    }
}

/// Parses the content of `CURRENT`: exactly `gen-NNNNNN <16 lowercase hex>\n`.
fn parse_current(text: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(text).ok()?.strip_suffix('\n')?;
    let (dir, sum) = text.split_once(' ')?;
    Some((
        generation::parse_dir_name(dir)?,
        fsutil::parse_checksum_hex(sum)?,
    ))
}

/// The content of `CURRENT` naming generation `number` whose manifest has checksum `sum`.
fn format_current(number: u64, sum: u64) -> String {
    format!(
        "{} {}\n",
        generation::dir_name(number),
        fsutil::checksum_hex(sum)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::io::{Read, Write};

    fn corrupt_reason(err: StateError, want_path: &Path) -> String {
        match err {
            StateError::Corrupt { path, reason } => {
                assert_eq!(path, want_path);
                reason
            }
            other => panic!(
                "expected Corrupt for {}, got {other:?}",
                want_path.display()
            ),
        }
    }

    /// A state with generation 1 holding two files and a ledger.
    fn state_with_gen1() -> (tempfile::TempDir, StateDir, Generation) {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(&tmp.path().join("state")).unwrap();
        assert!(state.current().unwrap().is_none());
        let wtr = state.begin(None).unwrap();
        assert_eq!(wtr.number(), 1);
        wtr.write("profiles/part-0007", b"seven").unwrap();
        wtr.write("idsync/part-0003", b"").unwrap();
        let gen1 = wtr.commit(json!({"partitions": 16}), 3).unwrap();
        (tmp, state, gen1)
    }

    #[test]
    fn commit_then_current_round_trips() {
        let (_tmp, state, gen1) = state_with_gen1();
        let root = state.root();
        let current = state.current().unwrap().unwrap();
        assert_eq!(current.number, 1);
        assert_eq!(current.dir, root.join("gen-000001"));
        assert_eq!(current.manifest, gen1.manifest);
        assert_eq!(current.manifest.meta, json!({"partitions": 16}));
        assert_eq!(
            current.read("profiles/part-0007").unwrap(),
            Some(b"seven".to_vec())
        );
        assert_eq!(current.read("idsync/part-0003").unwrap(), Some(Vec::new()));
        assert_eq!(current.read("profiles/part-0008").unwrap(), None);
        let names: Vec<_> = current.files().map(|(rel, e)| (rel, e.size)).collect();
        assert_eq!(
            names,
            vec![("idsync/part-0003", 0), ("profiles/part-0007", 5)]
        );
        current.verify_all().unwrap();

        // On-disk layout: payload + footer, CURRENT naming the manifest checksum.
        let raw = fs::read(root.join("gen-000001/profiles/part-0007")).unwrap();
        assert_eq!(raw.len(), 5 + FOOTER_LEN);
        assert_eq!(&raw[..5], b"seven");
        assert_eq!(&raw[5..13], b"SEGMILL\x01");
        assert_eq!(raw[13..21], 5u64.to_le_bytes());
        assert_eq!(raw[21..], fsutil::checksum(b"seven").to_le_bytes());
        let manifest = fs::read(root.join("gen-000001/manifest.json")).unwrap();
        let expected_current = format!("gen-000001 {:016x}\n", fsutil::checksum(&manifest));
        assert_eq!(
            fs::read_to_string(root.join(CURRENT)).unwrap(),
            expected_current
        );
        let text = String::from_utf8(manifest).unwrap();
        assert!(
            text.starts_with("{\n  \"format_version\": 4,\n  \"generation\": 1,\n"),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "\"checksum\": \"{:016x}\"",
                fsutil::checksum(b"seven")
            )),
            "{text}"
        );
    }

    #[test]
    fn streaming_write_and_verified_read() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(tmp.path()).unwrap();
        let wtr = state.begin(None).unwrap();
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut file = wtr.create("profiles/part-0000").unwrap();
        for piece in payload.chunks(7777) {
            file.write_all(piece).unwrap();
        }
        let entry = file.finish().unwrap();
        assert_eq!(entry.size, 300_000);
        assert_eq!(
            entry.checksum,
            format!("{:016x}", fsutil::checksum(&payload))
        );
        let dropped = wtr.create("profiles/part-0001").unwrap();
        drop(dropped);
        let generation = wtr.commit(json!(null), 2).unwrap();
        assert_eq!(generation.files().count(), 1);
        assert!(!generation.dir.join("profiles/part-0001").exists());

        let mut rdr = generation.open("profiles/part-0000").unwrap().unwrap();
        let mut back = Vec::new();
        rdr.read_to_end(&mut back).unwrap();
        assert_eq!(back, payload);
        assert_eq!(
            generation.read("profiles/part-0000").unwrap().as_ref(),
            Some(&payload)
        );
        assert!(generation.open("nope").unwrap().is_none());
        let mapped = generation.map("profiles/part-0000").unwrap().unwrap();
        assert_eq!(mapped.bytes(), &payload[..]);
        // Letting go of pages changes nothing the reader sees.
        mapped.release_before(200_000);
        assert_eq!(mapped.bytes(), &payload[..]);
        mapped.release_before(usize::MAX);
        assert_eq!(mapped.bytes(), &payload[..]);
        assert!(generation.map("nope").unwrap().is_none());
    }

    #[test]
    fn flipped_payload_byte_is_caught_by_read_and_stream() {
        let (_tmp, state, gen1) = state_with_gen1();
        let path = gen1.dir.join("profiles/part-0007");
        let mut raw = fs::read(&path).unwrap();
        raw[1] ^= 0x20;
        fs::write(&path, &raw).unwrap();
        let current = state.current().unwrap().unwrap();
        let reason = corrupt_reason(current.read("profiles/part-0007").unwrap_err(), &path);
        assert!(reason.starts_with("payload checksum is "), "{reason}");
        let reason = corrupt_reason(current.map("profiles/part-0007").err().unwrap(), &path);
        assert!(reason.starts_with("payload checksum is "), "{reason}");

        let mut rdr = current.open("profiles/part-0007").unwrap().unwrap();
        let mut sink = Vec::new();
        let err = rdr.read_to_end(&mut sink).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        let reason = corrupt_reason(StateError::from_reader(err, &path), &path);
        assert!(reason.starts_with("payload checksum is "), "{reason}");
        let err = current.verify_all().unwrap_err();
        assert!(
            err.to_string()
                .contains("part-0007 is corrupt: payload checksum"),
            "{err}"
        );
    }

    #[test]
    fn truncated_file_is_caught() {
        let (_tmp, state, gen1) = state_with_gen1();
        let path = gen1.dir.join("profiles/part-0007");
        let raw = fs::read(&path).unwrap();
        fs::write(&path, &raw[..raw.len() - 3]).unwrap();
        let current = state.current().unwrap().unwrap();
        let reason = corrupt_reason(current.read("profiles/part-0007").unwrap_err(), &path);
        assert_eq!(
            reason,
            "file is 26 bytes, expected 29 (5 payload + 24 footer): truncated or overwritten"
        );
        let reason = corrupt_reason(current.open("profiles/part-0007").err().unwrap(), &path);
        assert!(reason.starts_with("file is 26 bytes"), "{reason}");
        let reason = corrupt_reason(current.map("profiles/part-0007").err().unwrap(), &path);
        assert!(reason.starts_with("file is 26 bytes"), "{reason}");
        let err = current.read("profiles/part-0007").unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "state file {} is corrupt: file is 26 bytes",
                path.display()
            )),
            "{err}"
        );
    }

    #[test]
    fn wrong_footer_is_caught() {
        let (_tmp, state, gen1) = state_with_gen1();
        let path = gen1.dir.join("profiles/part-0007");
        let raw = fs::read(&path).unwrap();
        let current = state.current().unwrap().unwrap();

        let mut bad_magic = raw.clone();
        bad_magic[5] = b'X';
        fs::write(&path, &bad_magic).unwrap();
        let reason = corrupt_reason(current.read("profiles/part-0007").unwrap_err(), &path);
        assert!(reason.starts_with("footer magic"), "{reason}");
        let reason = corrupt_reason(current.map("profiles/part-0007").err().unwrap(), &path);
        assert!(reason.starts_with("footer magic"), "{reason}");

        let mut bad_len = raw.clone();
        bad_len[13] = 6;
        fs::write(&path, &bad_len).unwrap();
        let reason = corrupt_reason(current.read("profiles/part-0007").unwrap_err(), &path);
        assert_eq!(reason, "footer says 6 payload bytes, manifest says 5");

        let mut bad_sum = raw;
        bad_sum[21] ^= 1;
        fs::write(&path, &bad_sum).unwrap();
        let reason = corrupt_reason(current.open("profiles/part-0007").err().unwrap(), &path);
        assert!(reason.starts_with("footer checksum "), "{reason}");
    }

    #[test]
    fn missing_file_is_caught() {
        let (_tmp, state, gen1) = state_with_gen1();
        let path = gen1.dir.join("idsync/part-0003");
        fs::remove_file(&path).unwrap();
        let current = state.current().unwrap().unwrap();
        let reason = corrupt_reason(current.read("idsync/part-0003").unwrap_err(), &path);
        assert_eq!(
            reason,
            "missing: the manifest lists it but the file does not exist"
        );
    }

    #[test]
    fn edited_manifest_is_caught() {
        let (_tmp, state, gen1) = state_with_gen1();
        let path = gen1.dir.join("manifest.json");
        let text = fs::read_to_string(&path).unwrap().replace("16", "17");
        fs::write(&path, text).unwrap();
        let reason = corrupt_reason(state.current().unwrap_err(), &path);
        assert!(reason.contains("(edited or damaged)"), "{reason}");
    }

    #[test]
    fn a_delta_grows_with_its_base_and_tonight_up_to_a_quarter_of_the_base() {
        assert_eq!(delta_limit(0, 0, 0), None);
        // sqrt(2 * 100 MB * 64 KiB) for a small night.
        assert_eq!(delta_limit(100_000_000, 0, 640), Some(3_620_386));
        assert_eq!(delta_limit(100_000_000, 3_620_000, 640), None);
        assert_eq!(delta_limit(100_000_000, 0, 640_000), Some(11_313_708));
        assert_eq!(delta_limit(100_000_000, 0, 19_200_000), Some(25_000_000));
        // Tonight alone would pass a quarter of the base.
        assert_eq!(delta_limit(100_000_000, 0, 25_600_000), None);
    }

    #[test]
    fn newer_format_version_is_refused() {
        let (_tmp, state, gen1) = state_with_gen1();
        let path = gen1.dir.join("manifest.json");
        let text = fs::read_to_string(&path)
            .unwrap()
            .replace("\"format_version\": 4", "\"format_version\": 5");
        fs::write(&path, &text).unwrap();
        write_atomic(
            &state.root().join(CURRENT),
            format_current(1, fsutil::checksum(text.as_bytes())).as_bytes(),
        )
        .unwrap();
        let err = state.current().unwrap_err();
        assert!(
            matches!(
                err,
                StateError::TooNew {
                    found: 5,
                    supported: 4,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .ends_with("reads at most version 4; upgrade segmill"),
            "{err}"
        );
    }

    #[test]
    fn manifest_with_escaping_file_name_is_refused() {
        let (_tmp, state, gen1) = state_with_gen1();
        let path = gen1.dir.join("manifest.json");
        let text = fs::read_to_string(&path)
            .unwrap()
            .replace("idsync/part-0003", "../../etc/x");
        fs::write(&path, &text).unwrap();
        write_atomic(
            &state.root().join(CURRENT),
            format_current(1, fsutil::checksum(text.as_bytes())).as_bytes(),
        )
        .unwrap();
        let reason = corrupt_reason(state.current().unwrap_err(), &path);
        assert!(
            reason.starts_with("bad file entry: invalid state file name \"../../etc/x\""),
            "{reason}"
        );
    }

    #[test]
    fn current_pointing_to_missing_generation_is_caught() {
        let (_tmp, state, _gen1) = state_with_gen1();
        let current_path = state.root().join(CURRENT);
        fs::write(&current_path, "gen-000009 0000000000000000\n").unwrap();
        let path = state.root().join("gen-000009/manifest.json");
        let reason = corrupt_reason(state.current().unwrap_err(), &path);
        assert!(reason.starts_with("missing, but "), "{reason}");
        assert!(reason.ends_with("names gen-000009 as current"), "{reason}");

        fs::write(&current_path, "gen-1\n").unwrap();
        let reason = corrupt_reason(state.current().unwrap_err(), &current_path);
        assert_eq!(
            reason,
            "expected one line \"gen-NNNNNN <16 hex digits>\", found \"gen-1\\n\""
        );
    }

    #[test]
    fn lost_current_with_later_generations_is_not_a_fresh_start() {
        let (_tmp, state, gen1) = state_with_gen1();
        let wtr = state.begin(Some(&gen1)).unwrap();
        wtr.commit(json!({}), 3).unwrap();
        let current_path = state.root().join(CURRENT);
        fs::remove_file(&current_path).unwrap();
        let reason = corrupt_reason(state.current().unwrap_err(), &current_path);
        assert!(
            reason.starts_with("missing, but gen-000002 exists"),
            "{reason}"
        );
    }

    #[test]
    fn killed_before_commit_keeps_previous_generation_and_rerun_is_identical() {
        let (_tmp, state, gen1) = state_with_gen1();
        let root = state.root().to_path_buf();
        let build = |state: &StateDir, parent: &Generation| {
            let wtr = state.begin(Some(parent)).unwrap();
            assert_eq!(wtr.number(), 2);
            wtr.write("profiles/part-0007", b"seven, changed").unwrap();
            wtr.carry("idsync/part-0003", parent).unwrap();
            wtr
        };

        // Simulate a kill after writing: the process never drops the writer.
        std::mem::forget(build(&state, &gen1));
        fs::write(root.join(".CURRENT.segmill-tmp.1.0"), "gen-000002 junk").unwrap();
        assert!(root.join("gen-000002.partial/profiles/part-0007").exists());
        assert_eq!(state.current().unwrap().unwrap().number, 1);
        assert_eq!(
            state
                .current()
                .unwrap()
                .unwrap()
                .read("profiles/part-0007")
                .unwrap(),
            Some(b"seven".to_vec())
        );

        // Simulate a kill between the folder rename and the CURRENT switch.
        let first_try = {
            let wtr = build(&state, &gen1);
            let generation = wtr.commit(json!({"run": "x"}), 3).unwrap();
            let bytes = snapshot(&generation.dir);
            fs::write(
                root.join(CURRENT),
                format_current(
                    1,
                    fsutil::checksum(&fs::read(gen1.dir.join("manifest.json")).unwrap()),
                ),
            )
            .unwrap();
            bytes
        };
        assert_eq!(state.current().unwrap().unwrap().number, 1);
        assert!(root.join("gen-000002").exists());

        // The re-run sweeps both leftovers and produces the same bytes.
        let wtr = build(&state, &gen1);
        assert!(!root.join(".CURRENT.segmill-tmp.1.0").exists());
        let gen2 = wtr.commit(json!({"run": "x"}), 3).unwrap();
        assert_eq!(snapshot(&gen2.dir), first_try);
        let current = state.current().unwrap().unwrap();
        assert_eq!(current.number, 2);
        assert_eq!(current.read("idsync/part-0003").unwrap(), Some(Vec::new()));
        assert_eq!(
            current.manifest.files["idsync/part-0003"],
            gen1.manifest.files["idsync/part-0003"]
        );
        let mut names: Vec<_> = fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["CURRENT", "gen-000001", "gen-000002"]);
    }

    /// Every file under `dir` with its bytes, in name order.
    fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    let rel = path.strip_prefix(dir).unwrap().display().to_string();
                    out.push((rel, fs::read(&path).unwrap()));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn dropped_writer_removes_partial_and_keeps_current() {
        let (_tmp, state, gen1) = state_with_gen1();
        let wtr = state.begin(Some(&gen1)).unwrap();
        wtr.write("ledger", b"x").unwrap();
        drop(wtr);
        assert!(!state.root().join("gen-000002.partial").exists());
        assert_eq!(state.current().unwrap().unwrap().number, 1);
    }

    #[test]
    fn begin_requires_the_current_generation_as_parent() {
        let (_tmp, state, gen1) = state_with_gen1();
        let err = state.begin(None).unwrap_err();
        assert!(
            matches!(
                err,
                StateError::StaleParent {
                    current: Some(1),
                    given: None,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().contains(
                "must build on the current one (gen-000001), but was given no generation"
            ),
            "{err}"
        );
        let gen2 = state
            .begin(Some(&gen1))
            .unwrap()
            .commit(json!({}), 5)
            .unwrap();
        let err = state.begin(Some(&gen1)).unwrap_err();
        assert!(
            matches!(
                err,
                StateError::StaleParent {
                    current: Some(2),
                    given: Some(1),
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(state.begin(Some(&gen2)).unwrap().number(), 3);
    }

    #[test]
    fn commit_prunes_to_keep_newest() {
        let (_tmp, state, gen1) = state_with_gen1();
        let mut parent = gen1;
        for _ in 0..3 {
            let wtr = state.begin(Some(&parent)).unwrap();
            wtr.carry("profiles/part-0007", &parent).unwrap();
            parent = wtr.commit(json!({}), 2).unwrap();
        }
        assert_eq!(parent.number, 4);
        assert_eq!(generation::list(state.root()).unwrap(), vec![3, 4]);
        assert_eq!(
            parent.read("profiles/part-0007").unwrap(),
            Some(b"seven".to_vec())
        );
        // keep = 0 still keeps the new current generation.
        let gen5 = state
            .begin(Some(&parent))
            .unwrap()
            .commit(json!({}), 0)
            .unwrap();
        assert_eq!(generation::list(state.root()).unwrap(), vec![5]);
        assert_eq!(state.current().unwrap().unwrap().number, gen5.number);
    }

    #[test]
    fn writer_rejects_bad_and_duplicate_names() {
        let (_tmp, state, gen1) = state_with_gen1();
        let wtr = state.begin(Some(&gen1)).unwrap();
        assert!(matches!(
            wtr.write("../escape", b""),
            Err(StateError::BadName { .. })
        ));
        assert!(matches!(
            wtr.write("manifest.json", b""),
            Err(StateError::BadName { .. })
        ));
        wtr.write("ledger", b"1").unwrap();
        assert!(matches!(
            wtr.write("ledger", b"2"),
            Err(StateError::DuplicateFile { .. })
        ));
        assert!(matches!(wtr.carry("profiles/part-0007", &gen1), Ok(())));
        assert!(matches!(
            wtr.carry("profiles/part-0007", &gen1),
            Err(StateError::DuplicateFile { .. })
        ));
        let err = wtr.carry("profiles/part-9999", &gen1).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "cannot carry \"profiles/part-9999\" from {}: it is not in that generation's manifest",
                gen1.dir.display()
            )
        );
    }

    #[test]
    fn carry_refuses_a_truncated_source() {
        let (_tmp, state, gen1) = state_with_gen1();
        let path = gen1.dir.join("profiles/part-0007");
        let raw = fs::read(&path).unwrap();
        fs::write(&path, &raw[1..]).unwrap();
        let wtr = state.begin(Some(&gen1)).unwrap();
        let reason = corrupt_reason(wtr.carry("profiles/part-0007", &gen1).unwrap_err(), &path);
        assert!(reason.starts_with("file is 28 bytes"), "{reason}");
    }

    #[test]
    fn parallel_writes_from_threads() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(tmp.path()).unwrap();
        let wtr = state.begin(None).unwrap();
        std::thread::scope(|s| {
            for t in 0..4u8 {
                let wtr = &wtr;
                s.spawn(move || {
                    wtr.write(&format!("profiles/part-000{t}"), &[t; 10])
                        .unwrap()
                });
            }
        });
        let generation = wtr.commit(json!({}), 1).unwrap();
        assert_eq!(generation.files().count(), 4);
        assert_eq!(
            generation.read("profiles/part-0002").unwrap(),
            Some(vec![2; 10])
        );
    }

    #[test]
    fn ledger_round_trips_through_a_generation() {
        let (_tmp, state, gen1) = state_with_gen1();
        assert!(gen1.ledger().unwrap().is_empty());
        let mut ledger = gen1.ledger().unwrap();
        ledger.record(LedgerEntry {
            name: "ftp_dpm_21_1763683200.sync".to_owned(),
            path: "ftp_dpm_21_1763683200.sync".to_owned(),
            size: 42,
            hash: 0xabc,
            outcome: Outcome::Processed,
            reason: None,
            run_id: "run-1".to_owned(),
        });
        let wtr = state.begin(Some(&gen1)).unwrap();
        wtr.write_ledger(&ledger).unwrap();
        let gen2 = wtr.commit(json!({}), 2).unwrap();
        let back = state.current().unwrap().unwrap().ledger().unwrap();
        assert_eq!(back.to_bytes(), ledger.to_bytes());
        assert_eq!(back.by_hash(0xabc).map(|e| e.size), Some(42));

        let path = gen2.dir.join("ledger");
        let mut raw = fs::read(&path).unwrap();
        raw[0] = b'[';
        fs::write(&path, raw).unwrap();
        let reason = corrupt_reason(gen2.ledger().unwrap_err(), &path);
        assert!(reason.starts_with("payload checksum"), "{reason}");
    }

    #[test]
    fn lock_is_exclusive_between_handles() {
        let tmp = tempfile::tempdir().unwrap();
        let a = StateDir::open(tmp.path()).unwrap();
        let b = StateDir::open(tmp.path()).unwrap();
        let guard = a.lock().unwrap();
        assert!(matches!(b.lock(), Err(StateError::Locked { .. })));
        drop(guard);
        let _again = b.lock().unwrap();
    }

    #[test]
    fn run_folders() {
        let state = StateDir {
            root: PathBuf::from("/s"),
            blobs: None,
        };
        assert_eq!(
            state.receipts_dir("20261122T020000Z"),
            PathBuf::from("/s/receipts/20261122T020000Z")
        );
        assert_eq!(state.runs_dir(), PathBuf::from("/s/runs"));
    }
}
