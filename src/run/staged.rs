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
