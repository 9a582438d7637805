//! The work store of a staged night: a folder every task mounts, or an S3 prefix that every
//! task reaches over the network.
//!
//! ```text
//! plan.json                  the plan; written last by `plan` (create-once on S3)
//! gen/…                      state files `plan` wrote (tonight's ID-sync partitions)
//! map/<i>/task.json          task i's commit: its count, the night, its files
//! map/<i>/…                  its files (folder: beside task.json)
//! map/<i>/attempt-…/…        its files (S3: each attempt uploads under a prefix of its own;
//!                            the first task.json written names the one that counts)
//! resolve/<j>/… merge/<j>/…  the same for the other stages (merge/<j>/gen/…: its state files)
//! state/…                    S3 only: the parent generation's manifest and data files, by
//!                            checksum, for tasks on machines without the state folder
//! finalized.json             the night is committed
//! ```
//!
//! A task's outputs are written where no other task reads, then committed by one step that
//! either happens or does not: in a folder, the rename of `<i>.partial-PID` to `<i>`; on S3,
//! the conditional put (`If-None-Match: *`) of `task.json`. A retried task whose commit is
//! already there exits at once; a task killed before its commit left nothing a reader
//! trusts.

use super::super::staged::{Earlier, FetchLoose};
use super::NightPlan;
use crate::config::{Config, Location};
use crate::state::{Blobs, Generation, StateDir, write_atomic};
use crate::storage::Store;
use anyhow::{Context as _, anyhow};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where the work store's `state/` mirror keeps the parent generation.
const STATE: &str = "state";

/// Objects moved to or from S3 at once: a task moves hundreds to thousands of small ones
/// (an op file per partition), and each request is mostly waiting.
const TRANSFERS: usize = 16;

/// The work store of a staged night.
pub(super) struct Work {
    /// The shared folder; with an S3 work store, this task's local copy of what it reads and
    /// writes, removed when the task ends.
    pub(super) dir: PathBuf,
    remote: Option<Arc<Store>>,
}

/// A task's record of itself, `<stage>/<i>/task.json`, written last: its commit.
#[derive(Debug, Serialize, Deserialize)]
struct TaskDone {
    task: u32,
    of: u32,
    run_id: String,
    /// Where its files are, relative to the root, when not beside `task.json`.
    data: Option<String>,
    /// Its files, relative to its folder.
    files: BTreeSet<String>,
}

/// A finished task's outputs, as a later task reads them.
pub(super) struct TaskOut {
    /// Where its files are, or are fetched to.
    local: PathBuf,
    /// Their prefix in the S3 work store.
    remote: Option<String>,
    files: BTreeSet<String>,
}

impl Work {
    /// The work store at `at` (a folder or `s3://bucket/prefix`; default `<state>/stage`), for
    /// the task `label` (which names its local copy when the store is remote).
    pub(super) fn open(config: &Config, at: Option<&str>, label: &str) -> anyhow::Result<Work> {
        let Some(at) = at else {
            return Ok(Work {
                dir: config.paths.state.join("stage"),
                remote: None,
            });
        };
        let cwd = std::env::current_dir().unwrap_or_default();
        let location = Location::parse(at, &cwd).map_err(|e| anyhow!("--work {at}: {e}"))?;
        match location {
            Location::Local(dir) => Ok(Work { dir, remote: None }),
            Location::S3 { .. } => {
                let store = super::ops::open_store(config, &location)
                    .with_context(|| format!("work store {at}"))?;
                let temp = std::env::temp_dir();
                super::ops::TmpDir::sweep_stale_scratch(&temp);
                let dir = temp.join(format!("segmill-{label}-pid-{}", std::process::id()));
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                Ok(Work {
                    dir,
                    remote: Some(Arc::new(store)),
                })
            }
            Location::Ftp { .. } => Err(anyhow!(
                "--work {at}: a work store must be a folder or s3://; FTP cannot write \
                 create-once"
            )),
        }
    }

    /// How messages name `rel` in the work store.
    pub(super) fn describe(&self, rel: &str) -> String {
        match &self.remote {
            Some(store) => store.describe(rel),
            None => self.dir.join(rel).display().to_string(),
        }
    }

    /// A path in the shared folder (or in this task's local copy).
    pub(super) fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    fn get(&self, rel: &str) -> anyhow::Result<Option<Vec<u8>>> {
        match &self.remote {
            Some(store) => Ok(store.get_bytes(rel)?),
            None => match std::fs::read(self.path(rel)) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(anyhow!("cannot read {}: {e}", self.describe(rel))),
            },
        }
    }

    pub(super) fn read_json<T: for<'de> Deserialize<'de>>(
        &self,
        rel: &str,
    ) -> anyhow::Result<Option<T>> {
        match self.get(rel)? {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .with_context(|| format!("{}: not a segmill stage file", self.describe(rel))),
            None => Ok(None),
        }
    }

    pub(super) fn plan(&self) -> anyhow::Result<NightPlan> {
        let plan: NightPlan = self.read_json("plan.json")?.ok_or_else(|| {
            anyhow!(
                "{} holds no plan: run `segmill plan` first",
                self.describe("")
            )
        })?;
        if plan.format != super::WORK_FORMAT {
            return Err(anyhow!(
                "{}: work folder format {} (this segmill reads {}): run `segmill plan` again \
                 after removing the folder",
                self.describe("plan.json"),
                plan.format,
                super::WORK_FORMAT
            ));
        }
        Ok(plan)
    }

    pub(super) fn finalized(&self) -> anyhow::Result<bool> {
        Ok(self.get("finalized.json")?.is_some())
    }

    /// Whether the task publishing under `rel` has committed.
    pub(super) fn done(&self, rel: &str) -> anyhow::Result<bool> {
        match &self.remote {
            Some(store) => Ok(store.get_bytes(&format!("{rel}/task.json"))?.is_some()),
            None => Ok(self.path(rel).exists()),
        }
    }

    /// A fresh local folder for a task's outputs, published by [`Work::publish`].
    pub(super) fn staging(&self, rel: &str) -> anyhow::Result<PathBuf> {
        let dir = match &self.remote {
            Some(_) => self.path(&format!("out/{rel}")),
            None => self.path(&format!("{rel}.partial-{}", std::process::id())),
        };
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(dir)
    }

    /// Makes a task's outputs durable and visible under `rel`, unless an earlier attempt
    /// already did (then this attempt's copy, the same bytes, is dropped): `false` then.
    pub(super) fn publish(
        &self,
        staging: &Path,
        rel: &str,
        (task, of, run_id): (u32, u32, &str),
    ) -> anyhow::Result<bool> {
        let mut files = Vec::new();
        super::super::staged::walk(staging, "", &mut files)?;
        let mut done = TaskDone {
            task,
            of,
            run_id: run_id.to_owned(),
            data: None,
            files: files.iter().cloned().collect(),
        };
        let Some(store) = &self.remote else {
            let bytes = serde_json::to_vec(&done)?;
            write_atomic(&staging.join("task.json"), &bytes)?;
            sync_tree(staging)?;
            return publish_folder(staging, &self.path(rel));
        };
        let attempt = format!("{rel}/attempt-{}-{}", std::process::id(), nanos());
        let uploaded: Vec<String> = files.iter().map(|f| format!("{attempt}/{f}")).collect();
        in_flight(&files, |f| {
            Ok(store.put(&staging.join(f), &format!("{attempt}/{f}"))?)
        })?;
        // A staged run's own failpoint: killed here, the files are uploaded but not committed.
        crate::failpoint::hit("stage-uploaded").context("stage-uploaded")?;
        done.data = Some(attempt);
        let committed =
            store.put_bytes_once(&format!("{rel}/task.json"), &serde_json::to_vec(&done)?)?;
        if !committed {
            store.delete(&uploaded)?;
        }
        let _ = std::fs::remove_dir_all(staging);
        Ok(committed)
    }

    /// The outputs of every task of `stage` (`map`, `resolve`, `merge`), checked complete:
    /// tasks 0..M all committed, for the same night.
    pub(super) fn tasks(&self, stage: &str, run_id: &str) -> anyhow::Result<Vec<TaskOut>> {
        let mut found: BTreeMap<u32, (u32, TaskOut)> = BTreeMap::new();
        let mut add = |rel: String, local: PathBuf, bytes: &[u8]| -> anyhow::Result<()> {
            let done: TaskDone = serde_json::from_slice(bytes).with_context(|| {
                format!(
                    "{}/task.json: not a segmill stage file",
                    self.describe(&rel)
                )
            })?;
            if done.run_id != run_id {
                return Err(anyhow!(
                    "{}: written for run {}, not {run_id}",
                    self.describe(&rel),
                    done.run_id
                ));
            }
            let out = match done.data {
                Some(data) => TaskOut {
                    local,
                    remote: Some(data),
                    files: done.files,
                },
                None => TaskOut {
                    local: self.path(&rel),
                    remote: None,
                    files: done.files,
                },
            };
            found.insert(done.task, (done.of, out));
            Ok(())
        };
        match &self.remote {
            Some(store) => {
                // One listing of the task folders (not of their thousands of files), then
                // their commits, fetched together; a folder without one is a task still
                // running, or killed.
                let folders: Vec<String> = store
                    .list_folders(stage)?
                    .into_iter()
                    .filter(|n| n.parse::<u32>().is_ok())
                    .collect();
                let commits: std::sync::Mutex<Vec<(String, Vec<u8>)>> = Default::default();
                in_flight(&folders, |n| {
                    if let Some(bytes) = store.get_bytes(&format!("{stage}/{n}/task.json"))? {
                        commits
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push((n.clone(), bytes));
                    }
                    Ok(())
                })?;
                let committed = commits
                    .into_inner()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                for (n, bytes) in committed {
                    let local = self.path(&format!("in/{stage}/{n}"));
                    add(format!("{stage}/{n}"), local, &bytes)?;
                }
            }
            None => {
                let root = self.path(stage);
                let entries = match std::fs::read_dir(&root) {
                    Ok(entries) => entries.collect::<Vec<_>>(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                    Err(e) => return Err(anyhow!("cannot list {}: {e}", root.display())),
                };
                for entry in entries {
                    let entry = entry.with_context(|| format!("cannot list {}", root.display()))?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if name.parse::<u32>().is_err() {
                        continue; // a task still running, or killed: `N.partial-PID`
                    }
                    let rel = format!("{stage}/{name}");
                    let bytes = self
                        .get(&format!("{rel}/task.json"))?
                        .ok_or_else(|| anyhow!("{}: no task.json", self.describe(&rel)))?;
                    add(rel, entry.path(), &bytes)?;
                }
            }
        }
        let where_ = self.describe(stage);
        let of = found.values().next().map_or(0, |(of, _)| *of);
        if of == 0 {
            return Err(anyhow!(
                "no `segmill {stage}` task has finished in {where_}"
            ));
        }
        for t in 0..of {
            match found.get(&t) {
                Some((o, _)) if *o == of => {}
                Some((o, _)) => {
                    return Err(anyhow!(
                        "`segmill {stage}` tasks disagree on their count ({of} and {o}) in \
                         {where_}"
                    ));
                }
                None => {
                    return Err(anyhow!(
                        "`segmill {stage}` task {t} of {of} has not finished (no {where_}/{t})"
                    ));
                }
            }
        }
        if found.len() as u64 != u64::from(of) {
            return Err(anyhow!(
                "`segmill {stage}` has tasks beyond its count {of} in {where_}"
            ));
        }
        Ok(found.into_values().map(|(_, out)| out).collect())
    }

    /// Commits the plan, with the state files `plan` wrote under `gen/` of the local folder
    /// (uploaded first when the store is remote). `false` when another plan committed first.
    pub(super) fn put_plan(
        &self,
        bytes: &[u8],
        gen_files: &BTreeSet<String>,
    ) -> anyhow::Result<bool> {
        let Some(store) = &self.remote else {
            write_atomic(&self.path("plan.json"), bytes)?;
            return Ok(true);
        };
        let files: Vec<&String> = gen_files.iter().collect();
        in_flight(&files, |f| {
            Ok(store.put(&self.path(&format!("gen/{f}")), &format!("gen/{f}"))?)
        })?;
        Ok(store.put_bytes_once("plan.json", bytes)?)
    }

    /// Tonight's ID-sync partitions as `plan` left them, for [`Staged::loose`] to read.
    ///
    /// [`Staged::loose`]: super::super::staged::Staged::loose
    pub(super) fn earlier(&self, plan: &NightPlan) -> Earlier {
        let fetch: Option<Box<FetchLoose>> = self.remote.as_ref().map(|store| {
            let store = Arc::clone(store);
            let files = plan.gen_files.clone();
            let dir = self.path("gen");
            Box::new(move |name: &str| -> anyhow::Result<()> {
                let dest = dir.join(name);
                if files.contains(name) && !dest.exists() {
                    fetch_to(&store, &format!("gen/{name}"), &dest)?;
                }
                Ok(())
            }) as Box<FetchLoose>
        });
        Earlier {
            dir: self.path("gen"),
            names: plan.idsync_parts.clone(),
            fetch,
        }
    }

    /// The local folder holding every state file `plan` wrote (fetched when remote), for
    /// `finalize` to adopt.
    pub(super) fn plan_gen(&self, plan: &NightPlan) -> anyhow::Result<PathBuf> {
        let dir = self.path("gen");
        if let Some(store) = &self.remote {
            let files: Vec<&String> = plan.gen_files.iter().collect();
            in_flight(&files, |f| {
                fetch_to(store, &format!("gen/{f}"), &dir.join(f))
            })?;
        }
        Ok(dir)
    }

    /// Records that the night is committed and removes its task outputs; the plan stays, so
    /// that every later task of the night exits at once.
    pub(super) fn mark_finalized(&self, run_id: &str) -> anyhow::Result<()> {
        let text = format!("{{\"run_id\": {run_id:?}}}\n");
        let areas = ["map", "resolve", "merge", "gen"];
        match &self.remote {
            Some(store) => {
                store.put_bytes("finalized.json", text.as_bytes())?;
                for area in areas {
                    let keys: Vec<String> = store
                        .list_under(area)?
                        .into_iter()
                        .map(|(k, _)| k)
                        .collect();
                    store.delete(&keys)?;
                }
            }
            None => {
                write_atomic(&self.path("finalized.json"), text.as_bytes())?;
                for area in areas {
                    let _ = std::fs::remove_dir_all(self.path(area));
                }
            }
        }
        Ok(())
    }

    /// Removes everything of a finished or stale night (the `state/` mirror stays).
    pub(super) fn clear(&self) -> anyhow::Result<()> {
        match &self.remote {
            Some(store) => {
                let keys: Vec<String> = store
                    .list_under("")?
                    .into_iter()
                    .map(|(k, _)| k)
                    .filter(|k| !k.starts_with(&format!("{STATE}/")))
                    .collect();
                store.delete(&keys)?;
            }
            None => match std::fs::remove_dir_all(&self.dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(anyhow!("cannot clear {}: {e}", self.dir.display())),
            },
        }
        Ok(())
    }

    /// Copies the parent generation into the remote store's `state/` mirror, for tasks that
    /// run without the state folder: its manifest, and each data file not there yet (named
    /// by its checksum, so a night uploads only the files that changed). Files no longer
    /// referenced are removed. Returns the manifest's checksum, for the plan; `None` for a
    /// folder work store, whose tasks read the state folder itself.
    pub(super) fn push_state(&self, parent: Option<&Generation>) -> anyhow::Result<Option<u64>> {
        let Some(store) = &self.remote else {
            return Ok(None);
        };
        let have: BTreeSet<String> = store
            .list_under(STATE)?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        let mut keep = BTreeSet::new();
        let mut sum = None;
        if let Some(g) = parent {
            let (manifest, manifest_sum) = g.manifest_bytes()?;
            let mut missing = Vec::new();
            for (rel, entry) in g.files() {
                let key = blob_key(rel, &entry.checksum);
                if !have.contains(&key) {
                    missing.push((g.dir.join(rel), key.clone()));
                }
                keep.insert(key);
            }
            in_flight(&missing, |(path, key)| Ok(store.put(path, key)?))?;
            let key = manifest_key(manifest_sum);
            if !have.contains(&key) {
                store.put_bytes(&key, &manifest)?;
            }
            keep.insert(key);
            sum = Some(manifest_sum);
        }
        let stale: Vec<String> = have.difference(&keep).cloned().collect();
        store.delete(&stale)?;
        Ok(sum)
    }

    /// For a task on a remote work store: a local mirror of the plan's parent generation,
    /// whose data files are fetched from the `state/` mirror as they are read. `None` for a
    /// folder work store (the task opens the state folder itself).
    pub(super) fn state_mirror(&self, plan: &NightPlan) -> anyhow::Result<Option<StateDir>> {
        let Some(store) = &self.remote else {
            return Ok(None);
        };
        let root = self.path(STATE);
        let (Some(number), Some(sum)) = (plan.parent, plan.parent_manifest.as_deref()) else {
            return Ok(Some(StateDir::open(&root)?));
        };
        let sum = u64::from_str_radix(sum, 16)
            .map_err(|_| anyhow!("plan.json: parent manifest checksum {sum:?} is not hex"))?;
        let key = manifest_key(sum);
        let manifest = store.get_bytes(&key)?.ok_or_else(|| {
            anyhow!(
                "{} is missing: run `segmill plan` again",
                store.describe(&key)
            )
        })?;
        let fetcher = Arc::clone(store);
        let blobs = Blobs(Arc::new(
            move |rel: &str, entry: &crate::state::FileEntry, dest: &Path| {
                fetcher
                    .fetch(&blob_key(rel, &entry.checksum), dest)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            },
        ));
        Ok(Some(StateDir::mirror(
            &root, number, &manifest, sum, blobs,
        )?))
    }
}

impl Work {
    /// Brings the files `rels` of every task of `tasks` that has them into the local copy at
    /// once, when the store is remote (reads then find them local).
    pub(super) fn prefetch(&self, tasks: &[TaskOut], rels: &[String]) -> anyhow::Result<()> {
        let Some(store) = &self.remote else {
            return Ok(());
        };
        let mut wanted = Vec::new();
        for t in tasks {
            let Some(prefix) = &t.remote else { continue };
            for rel in rels {
                let dest = t.local.join(rel);
                if t.files.contains(rel) && !dest.exists() {
                    wanted.push((format!("{prefix}/{rel}"), dest));
                }
            }
        }
        in_flight(&wanted, |(key, dest)| fetch_to(store, key, dest))
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        if self.remote.is_some() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl TaskOut {
    /// The local path of the task's file `rel` (fetched first when remote), or `None` if the
    /// task wrote no such file.
    pub(super) fn file(&self, work: &Work, rel: &str) -> anyhow::Result<Option<PathBuf>> {
        if !self.files.contains(rel) {
            return Ok(None);
        }
        let path = self.local.join(rel);
        if let (Some(store), Some(prefix)) = (&work.remote, &self.remote)
            && !path.exists()
        {
            fetch_to(store, &format!("{prefix}/{rel}"), &path)?;
        }
        Ok(Some(path))
    }

    /// Like [`TaskOut::file`], for a file the task always writes.
    pub(super) fn required(&self, work: &Work, rel: &str) -> anyhow::Result<PathBuf> {
        self.file(work, rel)?.ok_or_else(|| {
            let at = match &self.remote {
                Some(prefix) => work.describe(prefix),
                None => self.local.display().to_string(),
            };
            anyhow!("{at}: the task wrote no {rel}")
        })
    }

    /// The task's files under the folder `sub`, relative to the task's folder, in name order.
    pub(super) fn under<'a>(&'a self, sub: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.files.iter().map(String::as_str).filter(move |f| {
            f.strip_prefix(sub)
                .is_some_and(|rest| rest.starts_with('/'))
        })
    }

    /// The local folder holding the task's files under `sub` (fetched first when remote).
    pub(super) fn folder(&self, work: &Work, sub: &str) -> anyhow::Result<PathBuf> {
        let rels: Vec<String> = self.under(sub).map(str::to_owned).collect();
        work.prefetch(std::slice::from_ref(self), &rels)?;
        Ok(self.local.join(sub))
    }
}

/// `state/<rel>.<checksum>`: a data file of a mirrored generation.
fn blob_key(rel: &str, checksum: &str) -> String {
    format!("{STATE}/{rel}.{checksum}")
}

/// `state/manifest.<checksum>.json`: a mirrored generation's manifest.
fn manifest_key(sum: u64) -> String {
    format!("{STATE}/manifest.{sum:016x}.json")
}

/// Fetches `rel` of `store` to `dest` through a temporary name, so `dest` is whole or absent.
fn fetch_to(store: &Store, rel: &str, dest: &Path) -> anyhow::Result<()> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    // A fresh temp name (skipped by listings): two threads may want the same file.
    let (_, tmp) = crate::state::temp_path_for(dest)?;
    store.fetch(rel, &tmp)?;
    std::fs::rename(&tmp, dest).with_context(|| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot rename {} to {}", tmp.display(), dest.display())
    })
}

/// Runs `each` over `items` on up to [`TRANSFERS`] threads; the first error is returned and
/// stops the rest from starting.
fn in_flight<T: Sync>(
    items: &[T],
    each: impl Fn(&T) -> anyhow::Result<()> + Sync,
) -> anyhow::Result<()> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let failed: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..TRANSFERS.min(items.len()) {
            scope.spawn(|| {
                while let Some(item) = items.get(next.fetch_add(1, Ordering::Relaxed)) {
                    if let Err(e) = each(item) {
                        next.store(items.len(), Ordering::Relaxed);
                        failed
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .get_or_insert(e);
                    }
                }
            });
        }
    });
    match failed
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
    {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Renames the complete folder `staging` to `target` unless `target` exists (an earlier
/// attempt's); `false` then, and `staging` is removed.
fn publish_folder(staging: &Path, target: &Path) -> anyhow::Result<bool> {
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    if target.exists() {
        let _ = std::fs::remove_dir_all(staging);
        return Ok(false);
    }
    std::fs::rename(staging, target).with_context(|| {
        format!(
            "cannot rename {} to {}",
            staging.display(),
            target.display()
        )
    })?;
    if let Some(parent) = target.parent() {
        crate::state::sync_dir(parent)?;
    }
    Ok(true)
}

/// Fsyncs every file and folder under `dir`.
fn sync_tree(dir: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            sync_tree(&path)?;
        } else {
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("cannot fsync {}", path.display()))?;
        }
    }
    crate::state::sync_dir(dir)?;
    Ok(())
}
