//! Durable file primitives: atomic replacement, folder fsync and the checksum footer.
//!
//! Owns the one way segmill writes a file it owns: a temp file in the same folder with a unique
//! name, written, fsynced, renamed over the target, and then the folder fsynced so the rename
//! itself survives a power cut. Also owns the 24-byte footer every state data file ends with.
//! Does not know about generations or manifests (see `generation.rs`).

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::StateError;

/// Magic bytes that open the footer of every state data file; the last byte is the footer
/// version.
pub const FOOTER_MAGIC: [u8; 8] = *b"SEGMILL\x01";

/// Length of the footer: magic (8), payload length (u64 LE), xxh3-64 of the payload (u64 LE).
pub const FOOTER_LEN: usize = 24;

/// Marker inside temp file names, so a cleanup pass can recognise leftovers of a killed run.
pub(crate) const TEMP_MARKER: &str = ".segmill-tmp.";

/// Per-process counter that makes temp names unique between threads of one process; the pid
/// makes them unique between processes.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The checksum of a payload: xxh3-64 with seed 0.
pub fn checksum(payload: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(payload)
}

/// The checksum as written in manifests and in `CURRENT`: 16 lowercase hex digits.
pub fn checksum_hex(sum: u64) -> String {
    format!("{sum:016x}")
}

/// Parses 16 lowercase hex digits written by [`checksum_hex`]; anything else is `None`.
pub fn parse_checksum_hex(text: &str) -> Option<u64> {
    if text.len() != 16
        || !text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    u64::from_str_radix(text, 16).ok()
}

/// The footer that follows a payload of `len` bytes whose checksum is `sum`.
pub fn encode_footer(len: u64, sum: u64) -> [u8; FOOTER_LEN] {
    let mut footer = [0u8; FOOTER_LEN];
    footer[..8].copy_from_slice(&FOOTER_MAGIC);
    footer[8..16].copy_from_slice(&len.to_le_bytes());
    footer[16..].copy_from_slice(&sum.to_le_bytes());
    footer
}

/// Splits a footer into (payload length, checksum); `Err` names what is wrong.
pub fn decode_footer(footer: &[u8]) -> Result<(u64, u64), &'static str> {
    const WRONG_LEN: &str = "footer is not 24 bytes";
    let (magic, rest) = footer.split_first_chunk::<8>().ok_or(WRONG_LEN)?;
    let (len, rest) = rest.split_first_chunk::<8>().ok_or(WRONG_LEN)?;
    let (sum, rest) = rest.split_first_chunk::<8>().ok_or(WRONG_LEN)?;
    if !rest.is_empty() {
        return Err(WRONG_LEN);
    }
    if *magic != FOOTER_MAGIC {
        return Err("footer magic is not SEGMILL\\x01 (not a segmill state file, or truncated)");
    }
    Ok((u64::from_le_bytes(*len), u64::from_le_bytes(*sum)))
}

/// Replaces `path` with `bytes` atomically: write a temp file in the same folder, fsync it,
/// rename it over `path`, fsync the folder. A crash leaves either the old or the new content.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let mut file = atomic_writer(path)?;
    file.write_all(bytes)
        .map_err(|source| StateError::io("write", file.temp_path(), source))?;
    file.finish()
}

/// Starts an atomic replacement of `path` that is written as a stream. Nothing is visible at
/// `path` until [`AtomicFile::finish`]; dropping the writer without it removes the temp file.
pub fn atomic_writer(path: &Path) -> Result<AtomicFile, StateError> {
    let (dir, temp) = temp_path_for(path)?;
    remove_dead_temps(&dir, path)?;
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp)
        .map_err(|source| StateError::io("create temp file", &temp, source))?;
    Ok(AtomicFile {
        target: path.to_path_buf(),
        dir,
        temp,
        wtr: Some(io::BufWriter::with_capacity(128 * 1024, file)),
    })
}

/// A file being written for atomic replacement of its target; see [`atomic_writer`].
#[derive(Debug)]
pub struct AtomicFile {
    target: PathBuf,
    dir: PathBuf,
    temp: PathBuf,
    /// `None` once finished (or after a failed finish), so `Drop` knows what to clean up.
    wtr: Option<io::BufWriter<File>>,
}

impl AtomicFile {
    /// The temp file being written, for error messages.
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// Flushes, fsyncs, renames the temp file over the target and fsyncs the folder.
    pub fn finish(mut self) -> Result<(), StateError> {
        let Some(wtr) = self.wtr.take() else {
            return Err(StateError::io(
                "finish",
                &self.target,
                io::Error::other("writer already finished"),
            ));
        };
        let result = (|| {
            let file = wtr
                .into_inner()
                .map_err(|e| StateError::io("write", &self.temp, e.into_error()))?;
            file.sync_all()
                .map_err(|source| StateError::io("fsync", &self.temp, source))?;
            drop(file);
            fs::rename(&self.temp, &self.target)
                .map_err(|source| StateError::io("rename temp file onto", &self.target, source))?;
            sync_dir(&self.dir)
        })();
        if result.is_err() {
            // Best effort: the error being returned matters more than a leftover temp file.
            let _ = fs::remove_file(&self.temp);
        }
        result
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.wtr {
            Some(wtr) => wtr.write(buf),
            None => Err(io::Error::other("atomic file already finished")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.wtr {
            Some(wtr) => wtr.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.wtr.take().is_some() {
            // Abandoned: the target keeps its old content. Removal is best effort; a leftover
            // carries TEMP_MARKER in its name and is swept by the next `StateDir::begin`.
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// The folder of `path` and a fresh temp name beside it: `.NAME.segmill-tmp.PID.N`.
pub(crate) fn temp_path_for(path: &Path) -> Result<(PathBuf, PathBuf), StateError> {
    let name = path.file_name().ok_or_else(|| StateError::BadName {
        name: path.display().to_string(),
        reason: "the path has no file name",
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut temp = OsString::from(".");
    temp.push(name);
    temp.push(format!("{TEMP_MARKER}{}.{n}", std::process::id()));
    let temp = dir.join(temp);
    Ok((dir, temp))
}

/// Removes temp files for the target `path` in `dir` that were left by a process that no
/// longer runs (killed between creating and renaming them): outside the state root, in receipt,
/// report and outbound folders, nothing else would, and a re-run that writes the same target
/// must leave the same folder. A temp of a live process (this one included) is left alone.
fn remove_dead_temps(dir: &Path, path: &Path) -> Result<(), StateError> {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(());
    };
    let prefix = format!(".{name}{TEMP_MARKER}");
    let Ok(entries) = fs::read_dir(dir) else {
        // A missing folder is reported by the create that follows.
        return Ok(());
    };
    for entry in entries.flatten() {
        let entry_name = entry.file_name();
        let Some(pid) = entry_name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|rest| rest.split('.').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists();
        if !alive {
            let leftover = entry.path();
            fs::remove_file(&leftover)
                .map_err(|source| StateError::io("remove stale temp file", &leftover, source))?;
        }
    }
    Ok(())
}

/// Whether `name` is a temp file left by [`atomic_writer`].
pub(crate) fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(TEMP_MARKER)
}

/// Fsyncs a folder so that entries created, renamed or removed in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), StateError> {
    let file =
        File::open(dir).map_err(|source| StateError::io("open folder for fsync", dir, source))?;
    file.sync_all()
        .map_err(|source| StateError::io("fsync folder", dir, source))
}

/// Creates `dir` and its missing parents, fsyncing each parent whose entries changed.
pub fn create_dir_all_durable(dir: &Path) -> Result<(), StateError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut cur = dir;
    while !cur.as_os_str().is_empty() && !cur.exists() {
        missing.push(cur);
        match cur.parent() {
            Some(parent) => cur = parent,
            None => break,
        }
    }
    fs::create_dir_all(dir).map_err(|source| StateError::io("create folder", dir, source))?;
    for created in missing.iter().rev() {
        if let Some(parent) = created.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_content_and_leaves_no_temp() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("report.json");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![OsString::from("report.json")]);
    }

    #[test]
    fn temps_of_dead_processes_for_the_same_target_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("x.info");
        // PID 999999999 is above every kernel's pid_max: never alive.
        let dead = dir.path().join(".x.info.segmill-tmp.999999999.3");
        let live = dir
            .path()
            .join(format!(".x.info.segmill-tmp.{}.77", std::process::id()));
        let other_target = dir.path().join(".y.info.segmill-tmp.999999999.0");
        for p in [&dead, &live, &other_target] {
            fs::write(p, b"old").unwrap();
        }
        write_atomic(&target, b"new").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"new");
        assert!(!dead.exists());
        assert!(live.exists());
        assert!(other_target.exists());
    }

    #[test]
    fn dropped_writer_keeps_old_content_and_removes_temp() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("CURRENT");
        write_atomic(&path, b"old").unwrap();
        let mut wtr = atomic_writer(&path).unwrap();
        wtr.write_all(b"half-written").unwrap();
        wtr.flush().unwrap();
        let temp = wtr.temp_path().to_path_buf();
        assert!(temp.exists());
        assert!(is_temp_name(temp.file_name().unwrap().to_str().unwrap()));
        drop(wtr);
        assert!(!temp.exists());
        assert_eq!(fs::read(&path).unwrap(), b"old");
    }

    #[test]
    fn streaming_writer_commits_on_finish() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("out.txt");
        let mut wtr = atomic_writer(&path).unwrap();
        wtr.write_all(b"a").unwrap();
        assert!(!path.exists());
        wtr.write_all(b"b").unwrap();
        wtr.finish().unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"ab");
    }

    #[test]
    fn write_atomic_into_missing_folder_names_the_temp_file() {
        let tmp = tempfile::tempdir().unwrap();
        let err = write_atomic(&tmp.path().join("nope/x"), b"1")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("cannot create temp file "), "{err}");
        assert!(err.contains("nope/.x.segmill-tmp."), "{err}");
    }

    #[test]
    fn footer_round_trip_and_rejections() {
        let footer = encode_footer(5, 0xdead_beef);
        assert_eq!(&footer[..8], b"SEGMILL\x01");
        assert_eq!(decode_footer(&footer), Ok((5, 0xdead_beef)));
        let mut bad = footer;
        bad[7] = 2;
        assert!(decode_footer(&bad).unwrap_err().contains("magic"));
        assert_eq!(decode_footer(&footer[..20]), Err("footer is not 24 bytes"));
    }

    #[test]
    fn checksum_hex_is_fixed_width_and_parses_back() {
        assert_eq!(checksum_hex(0xab), "00000000000000ab");
        assert_eq!(parse_checksum_hex("00000000000000ab"), Some(0xab));
        assert_eq!(parse_checksum_hex("00000000000000AB"), None);
        assert_eq!(parse_checksum_hex("ab"), None);
        assert_eq!(checksum(b""), 0x2d06_8005_38d3_94c2);
    }

    #[test]
    fn create_dir_all_durable_creates_nested() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b/c");
        create_dir_all_durable(&dir).unwrap();
        assert!(dir.is_dir());
        create_dir_all_durable(&dir).unwrap();
    }
}
