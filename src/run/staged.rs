//! The run's new state files, written as soon as each is made instead of held until the
//! commit: into the next generation's partial folder (read back from disk when a later stage
//! needs one), or, for a dry run, which writes nothing, kept in memory.

use crate::state::GenerationWriter;
use anyhow::Context as _;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, PoisonError};

pub(super) struct Staged {
    /// `None` for a dry run.
    gen_writer: Option<GenerationWriter>,
    memory: Mutex<BTreeMap<String, Vec<u8>>>,
    /// Every name written, empty payloads included.
    written: Mutex<BTreeSet<String>>,
}

impl Staged {
    /// Files go into `gen_writer`'s generation, or stay in memory when it is `None`.
    pub(super) fn new(gen_writer: Option<GenerationWriter>) -> Staged {
        Staged {
            gen_writer,
            memory: Mutex::new(BTreeMap::new()),
            written: Mutex::new(BTreeSet::new()),
        }
    }

    /// Writes data file `name`. An empty payload writes no file (the partition became empty),
    /// but `name` still counts as written: the previous generation's file is not carried over.
    /// May be called from several threads at once.
    pub(super) fn write(&self, name: &str, payload: &[u8]) -> anyhow::Result<()> {
        if !payload.is_empty() {
            match &self.gen_writer {
                Some(w) => w
                    .write(name, payload)
                    .with_context(|| format!("cannot write state file {name}"))?,
                None => {
                    self.memory
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(name.to_owned(), payload.to_vec());
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
        let payload = match &self.gen_writer {
            Some(w) => w
                .read(name)
                .with_context(|| format!("cannot read back state file {name}"))?,
            None => self
                .memory
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(name)
                .cloned(),
        };
        Ok(Some(payload.unwrap_or_default()))
    }

    /// The generation writer, to finish and commit; `None` for a dry run.
    pub(super) fn into_writer(self) -> Option<GenerationWriter> {
        self.gen_writer
    }
}
