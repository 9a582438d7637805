//! The run's new state files, written as soon as each is made instead of held until the
//! commit: into the next generation's partial folder (read back from disk when a later stage
//! needs one); for a dry run, which writes nothing, kept in memory; for a task of a staged run
//! (`segmill plan`, `merge`), written as loose data files into the night's work folder, where
//! `segmill finalize` adopts them into the generation.

use crate::state::{GenerationWriter, read_loose, write_loose};
use anyhow::Context as _;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

/// Marks a loose file that was written empty (the partition became empty): no data file.
const EMPTY_SUFFIX: &str = ".empty";

enum Target {
    Writer(GenerationWriter),
    Memory(Mutex<BTreeMap<String, Vec<u8>>>),
    Loose(PathBuf),
}

pub(super) struct Staged {
    target: Target,
    /// Every name written, empty payloads included.
    written: Mutex<BTreeSet<String>>,
    /// Loose files an earlier stage of the night wrote, read from where it left them.
    earlier: Option<Earlier>,
}

/// The loose files an earlier stage of a staged night wrote (`segmill plan`: tonight's ID-sync
/// partitions), for a later task to read.
pub(super) struct Earlier {
    /// Where they are.
    pub(super) dir: PathBuf,
    /// Their names, empty payloads included.
    pub(super) names: BTreeSet<String>,
    /// Brings file `name` into `dir` before it is read, when the work folder is remote.
    pub(super) fetch: Option<Box<FetchLoose>>,
}

/// See [`Earlier::fetch`].
pub(super) type FetchLoose = dyn Fn(&str) -> anyhow::Result<()> + Send + Sync;

impl Staged {
    /// Files go into `gen_writer`'s generation, or stay in memory when it is `None`.
    pub(super) fn new(gen_writer: Option<GenerationWriter>) -> Staged {
        Staged {
            target: match gen_writer {
                Some(w) => Target::Writer(w),
                None => Target::Memory(Mutex::new(BTreeMap::new())),
            },
            written: Mutex::new(BTreeSet::new()),
            earlier: None,
        }
    }

    /// Files go to `dir` as loose data files, create-once: a file already there (written by an
    /// earlier attempt of the same task, with the same bytes) is kept. The files of `earlier`
    /// count as written by this run, and are read from where that stage left them.
    pub(super) fn loose(dir: PathBuf, earlier: Option<Earlier>) -> Staged {
        Staged {
            target: Target::Loose(dir),
            written: Mutex::new(
                earlier
                    .as_ref()
                    .map(|e| e.names.clone())
                    .unwrap_or_default(),
            ),
            earlier,
        }
    }

    /// Writes data file `name`. An empty payload writes no file (the partition became empty),
    /// but `name` still counts as written: the previous generation's file is not carried over.
    /// May be called from several threads at once.
    pub(super) fn write(&self, name: &str, payload: &[u8]) -> anyhow::Result<()> {
        match &self.target {
            Target::Writer(w) => {
                if !payload.is_empty() {
                    w.write(name, payload)
                        .with_context(|| format!("cannot write state file {name}"))?;
                }
            }
            Target::Memory(m) => {
                if !payload.is_empty() {
                    m.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(name.to_owned(), payload.to_vec());
                }
            }
            Target::Loose(dir) => {
                let path = if payload.is_empty() {
                    dir.join(format!("{name}{EMPTY_SUFFIX}"))
                } else {
                    dir.join(name)
                };
                if !path.exists() {
                    if let Some(parent) = path.parent() {
                        std::fs::create_dir_all(parent)
                            .with_context(|| format!("cannot create {}", parent.display()))?;
                    }
                    write_loose(&path, payload)
                        .with_context(|| format!("cannot write state file {name}"))?;
                }
            }
        }
        self.written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_owned());
        Ok(())
    }

    /// Starts data file `name` as a stream: [`StagedStream::finish`] writes it as
    /// [`Staged::write`] would have the whole payload. Into a generation, the bytes go to disk
    /// as they come (past the first [`STREAM_HOLD`]); otherwise they are collected first.
    pub(super) fn stream(&self, name: &str) -> StagedStream<'_> {
        StagedStream {
            staged: self,
            name: name.to_owned(),
            held: Vec::new(),
            file: None,
        }
    }

    /// Whether `name` was written by this run.
    pub(super) fn contains(&self, name: &str) -> bool {
        self.written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(name)
    }

    /// The names written by this run, in order.
    pub(super) fn names(&self) -> BTreeSet<String> {
        self.written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The payload of `name` as this run wrote it (verified against its checksum when read
    /// back from disk; empty for an emptied partition), or `None` if this run did not write it.
    pub(super) fn read(&self, name: &str) -> anyhow::Result<Option<Vec<u8>>> {
        if !self.contains(name) {
            return Ok(None);
        }
        let payload = match &self.target {
            Target::Writer(w) => w
                .read(name)
                .with_context(|| format!("cannot read back state file {name}"))?,
            Target::Memory(m) => m
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(name)
                .cloned(),
            Target::Loose(dir) => {
                let path = match &self.earlier {
                    Some(e) if e.names.contains(name) => {
                        if let Some(fetch) = &e.fetch {
                            fetch(name)?;
                        }
                        e.dir.join(name)
                    }
                    _ => dir.join(name),
                };
                if path.exists() {
                    Some(
                        read_loose(&path)
                            .with_context(|| format!("cannot read back state file {name}"))?,
                    )
                } else {
                    None
                }
            }
        };
        Ok(Some(payload.unwrap_or_default()))
    }

    /// [`Staged::read`], memory-mapped when the file is in the generation being written.
    pub(super) fn map(
        &self,
        name: &str,
    ) -> anyhow::Result<Option<crate::idsync::index::PartBytes<'static>>> {
        use crate::idsync::index::PartBytes;
        if let Target::Writer(w) = &self.target
            && self.contains(name)
        {
            // Written empty (an emptied partition): no file.
            return Ok(Some(
                w.map(name)
                    .with_context(|| format!("cannot read back state file {name}"))?
                    .map_or(PartBytes::Owned(Vec::new()), PartBytes::Mapped),
            ));
        }
        Ok(self.read(name)?.map(PartBytes::Owned))
    }

    /// Takes every loose file under `dir` (see [`Staged::loose`]) as written by this run:
    /// linked into the generation being written. Returns how many names were taken.
    pub(super) fn adopt_loose(&self, dir: &Path) -> anyhow::Result<usize> {
        let Target::Writer(w) = &self.target else {
            anyhow::bail!("only a generation being written can adopt loose state files");
        };
        let mut files = Vec::new();
        if dir.exists() {
            walk(dir, "", &mut files)?;
        }
        files.sort();
        let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        for rel in &files {
            match rel.strip_suffix(EMPTY_SUFFIX) {
                Some(name) => {
                    written.insert(name.to_owned());
                }
                None => {
                    w.adopt(rel, &dir.join(rel))
                        .with_context(|| format!("cannot take state file {rel} from the stages"))?;
                    written.insert(rel.clone());
                }
            }
        }
        Ok(files.len())
    }

    /// The generation writer, to finish and commit; `None` for a dry run or loose files.
    pub(super) fn into_writer(self) -> Option<GenerationWriter> {
        match self.target {
            Target::Writer(w) => Some(w),
            _ => None,
        }
    }
}

/// Bytes a [`StagedStream`] into a generation holds before it creates its file: a partition
/// this small, or a stream dropped unfinished, never touches the disk.
const STREAM_HOLD: usize = 1 << 20;

/// A data file being written a piece at a time; see [`Staged::stream`]. Dropped unfinished, it
/// writes nothing and leaves no file.
pub(super) struct StagedStream<'a> {
    staged: &'a Staged,
    name: String,
    held: Vec<u8>,
    file: Option<crate::state::FileWriter<'a>>,
}

impl StagedStream<'_> {
    /// Appends `bytes` to the file.
    pub(super) fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write as _;
        if let Some(file) = &mut self.file {
            return file.write_all(bytes);
        }
        match &self.staged.target {
            Target::Writer(w) if self.held.len() + bytes.len() > STREAM_HOLD => {
                let mut file = w
                    .create(&self.name)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                file.write_all(&self.held)?;
                file.write_all(bytes)?;
                self.held = Vec::new();
                self.file = Some(file);
                Ok(())
            }
            _ => {
                self.held.extend_from_slice(bytes);
                Ok(())
            }
        }
    }

    /// Finishes the file (an empty one writes none, as [`Staged::write`]).
    pub(super) fn finish(self) -> anyhow::Result<()> {
        match self.file {
            Some(file) => {
                file.finish()
                    .with_context(|| format!("cannot write state file {}", self.name))?;
                self.staged
                    .written
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(self.name);
                Ok(())
            }
            None => self.staged.write(&self.name, &self.held),
        }
    }
}

/// Relative names of the files under `dir/prefix`, temp files of killed writers left out.
pub(super) fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) -> anyhow::Result<()> {
    let here = dir.join(prefix);
    for entry in
        std::fs::read_dir(&here).with_context(|| format!("cannot list {}", here.display()))?
    {
        let entry = entry.with_context(|| format!("cannot list {}", here.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let kind = entry
            .file_type()
            .with_context(|| format!("cannot list {}", here.display()))?;
        if kind.is_dir() {
            walk(dir, &rel, out)?;
        } else if !crate::state::is_temp_name(&name) {
            out.push(rel);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_writes_what_one_write_would_and_a_dropped_one_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let state = crate::state::StateDir::open(tmp.path()).unwrap();
        let staged = Staged::new(Some(state.begin(None).unwrap()));
        let payload: Vec<u8> = (0..3 * STREAM_HOLD as u32)
            .map(|i| (i % 253) as u8)
            .collect();

        // Past the hold, in pieces of odd sizes: to disk as it comes.
        let mut stream = staged.stream("profiles/part-0000");
        for piece in payload.chunks(STREAM_HOLD / 3 + 7) {
            stream.write(piece).unwrap();
        }
        stream.finish().unwrap();
        // Under the hold: written at the finish.
        let mut small = staged.stream("profiles/part-0001");
        small.write(&payload[..100]).unwrap();
        small.finish().unwrap();
        // Empty: written as an emptied partition (no file, but counts as written).
        staged.stream("profiles/part-0002").finish().unwrap();
        // Dropped unfinished, on either side of the hold: nothing.
        let mut dropped = staged.stream("profiles/part-0003");
        dropped.write(&payload).unwrap();
        drop(dropped);
        let mut dropped = staged.stream("profiles/part-0004");
        dropped.write(&payload[..10]).unwrap();
        drop(dropped);

        assert_eq!(
            staged.read("profiles/part-0000").unwrap(),
            Some(payload.clone())
        );
        assert_eq!(
            staged.read("profiles/part-0001").unwrap(),
            Some(payload[..100].to_vec())
        );
        assert_eq!(staged.read("profiles/part-0002").unwrap(), Some(Vec::new()));
        assert_eq!(staged.read("profiles/part-0003").unwrap(), None);
        assert_eq!(staged.read("profiles/part-0004").unwrap(), None);
        let names: Vec<String> = staged.names().into_iter().collect();
        assert_eq!(
            names,
            [
                "profiles/part-0000",
                "profiles/part-0001",
                "profiles/part-0002"
            ]
        );
        let generation = staged
            .into_writer()
            .unwrap()
            .commit(serde_json::json!(null), 1)
            .unwrap();
        let mut files: Vec<&str> = generation.files().map(|(name, _)| name).collect();
        files.sort_unstable();
        assert_eq!(files, ["profiles/part-0000", "profiles/part-0001"]);
        for n in 2..5 {
            assert!(
                !generation
                    .dir
                    .join(format!("profiles/part-000{n}"))
                    .exists()
            );
        }
    }
}
