//! The nightly job, end to end. The only module that knows the order of the stages and owns
//! the thread pool:
//!
//! ```text
//! discover ─► ledger (skip duplicates) ─► ID-sync files ─► ID index for tonight's DPIDs
//!   ─► trait files, in CONTRACT §2 order: read ─► process_chunk (parallel) ─► per-user cap
//!      ─► op spool (in chunk order)
//!   ─► merge every partition (parallel) ─► exports ─► receipts, rejects, run report
//!   ─► new state generation made current by one rename
//! ```
//!
//! New state files (ID-sync and profile partitions, members) are written into the next
//! generation's partial folder as soon as each is made (`staged::Staged`), not held until the
//! commit; the rename of `CURRENT` at the end is still the only thing that makes them current.

use crate::catalog::Catalog;
use crate::config::{Config, IdType};
use crate::idsync::index::{IdIndex, PartBytes};
use crate::idsync::store::{self as idstore, Record};
use crate::idsync::{self, ChunkRows, FileSpec, Table};
use crate::inbound::discover::{self, Discovery, Found, JobKey, RejectedFile, check_trait_file};
use crate::inbound::lines_at::lines_at;
use crate::inbound::names::{Classified, IdSyncKind, IdSyncName, Mode, TraitName, classify};
use crate::inbound::read::{FileStamp, ReadError, content_hash, read_chunks_each};
use crate::ingest::cap::{Cap, CapOutcome};
use crate::ingest::spool::Spool;
use crate::ingest::{ChunkOut, FileCtx, IdKind, OpBuf, process_chunk, seq_file, seq_line};
use crate::model::{AAM_UUID_DPID, Dpid, Timestamp, device_format};
use crate::outbound::export::{self, DestExport, DestMeta, ExportSummary};
use crate::profile::merge::{FileMeta, MergeCtx, PartOut, merge_partition, merge_partition_into};
use crate::report::receipt::{
    Category, Counters, FileReceipt, FileStatus, JobReceipt, SAMPLES_PER_CATEGORY, Sample,
    escape_tsv, receipt_time, sample_text,
};
use crate::report::run_report::{
    FileOutcome, IdSyncFileReceipt, IdSyncReceipt, RunReport, SeenFile,
};
use crate::state::{Generation, StateDir, StateError, write_atomic};
use crate::state::{LEDGER_FILE, Ledger, LedgerEntry, Outcome};
use ahash::AHashMap;
use anyhow::{Context as _, anyhow};
use rayon::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

mod backfill;
mod explain;
mod ops;
mod stage;
mod staged;

pub use backfill::{BackfillDay, backfill, day_end};
pub use explain::explain;
pub use stage::{Stage, StageOutcome, stage};

/// How a run was asked for.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// The run's logical time: realization time and TTL clock.
    pub as_of: Timestamp,
    /// Worker threads; `None` uses the config (0 there = all cores).
    pub threads: Option<usize>,
    /// Override the config's chunk size (tests use tiny ones).
    pub chunk_bytes: Option<usize>,
    /// File names to process again even though the ledger has them.
    pub reprocess: Vec<String>,
    /// Process exactly these files instead of discovering the inbound root.
    pub files: Option<Vec<PathBuf>>,
    /// Compute everything, write nothing (`segmill validate`).
    pub dry_run: bool,
    /// Process ID-sync files only (`segmill idsync import`).
    pub idsync_only: bool,
    /// `segmill export --destination ID [--full]`: no inbound files; export that destination
    /// only (as a full list when `true`).
    pub export_only: Option<(u32, bool)>,
    /// Discover only this day's folders (`date=DAY/`, `PARTNER/date=DAY/`), as a backfill does.
    pub day: Option<String>,
    /// Write no destination files; the changes stay due for the next export.
    pub no_export: bool,
    /// Where customer IDs are looked up (the outputs are the same either way).
    pub lookups: Lookups,
}

/// Where a run looks customer IDs up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Lookups {
    /// Deferred on a small night (see `Night::defer_lookups`), else fused.
    #[default]
    Auto,
    /// In the parse, against an index of every key of tonight's DPIDs.
    Fused,
    /// After the parse, a few ID-sync partitions at a time.
    Deferred,
}

/// Why a run stopped without committing.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Locked(String),
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

impl From<StateError> for RunError {
    fn from(e: StateError) -> RunError {
        RunError::Failed(e.into())
    }
}

/// What a finished run did.
#[derive(Debug)]
pub struct RunSummary {
    pub run_id: String,
    pub exit_code: u8,
    pub report: RunReport,
    pub receipts: Vec<JobReceipt>,
    pub idsync: Option<IdSyncReceipt>,
    /// Where the receipts were written (`None` for a dry run).
    pub receipts_dir: Option<PathBuf>,
    /// What each destination was sent.
    pub exports: Vec<ExportSummary>,
    /// What became of each receipt e-mail (sent after the commit).
    pub mail: Vec<crate::report::mail::MailOutcome>,
    /// Problems after the commit that did not fail the run (markers, metrics).
    pub warnings: Vec<String>,
}

/// Manifest metadata every generation carries.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct StateMeta {
    pub partitions: u32,
    pub partition_hash: String,
    pub as_of: Timestamp,
    pub run_id: String,
    pub ttl_fingerprint: u64,
    /// Fingerprint of the segment definitions the stored memberships were computed with.
    pub segments_fingerprint: u64,
    /// Per profile partition: the start of the day of the earliest expiry of any realization
    /// in it (at or before the moment itself; see `profile::Events`).
    pub min_expiry: Vec<Option<Timestamp>>,
    /// Per profile partition: the start of the day of the earliest moment a recency term can
    /// change a membership.
    #[serde(default)]
    pub min_flip: Vec<Option<Timestamp>>,
    /// Per profile partition: whether it holds cross-device customer-ID profiles.
    #[serde(default)]
    pub customer_partitions: Vec<bool>,
    /// Per profile partition: the last generation that changed a profile's segments in it
    /// (or dropped a profile that had some), which is when an `iter` export has something to
    /// send from it. States written before session 8 hold the last generation that rewrote
    /// the partition, which is never earlier.
    #[serde(default)]
    pub changed_generation: Vec<u64>,
    /// Per destination: its last export.
    #[serde(default)]
    pub destinations: BTreeMap<u32, DestMeta>,
}

/// How keys are spread over partitions; a state written under another scheme cannot be read.
pub const PARTITION_HASH: &str = "profiles: xxh3-64 of the key, seed 0x5e901112026_0001, \
multiply-shift; id-sync: high 64 bits of xxh3-128 of the ID, seed ^ DPID, multiply-shift";

/// Runs the job. Data problems are counted and reported; run problems return `Err` and commit
/// nothing.
pub fn run(config: &Config, opts: &RunOptions) -> Result<RunSummary, RunError> {
    let threads = opts.threads.unwrap_or(config.run.threads);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| anyhow!("cannot start {threads} worker threads: {e}"))?;
    pool.install(|| run_in_pool(config, opts))
}

/// What a run, or one stage of a staged run, works from: the state it starts from, the
/// night's plan and the compiled catalog. Made by [`prepare`]; every stage of one night makes
/// the same one (the staged plan pins the file hashes, see `stage`).
struct Night<'a> {
    config: &'a Config,
    opts: &'a RunOptions,
    state: StateDir,
    parent: Option<Generation>,
    parent_meta: Option<StateMeta>,
    partitions: u32,
    chunk_bytes: usize,
    ledger: Ledger,
    gen_number: u64,
    run_id: String,
    tmp: ops::TmpDir,
    inbound_store: Option<crate::storage::Store>,
    plan: Plan,
    catalog: Catalog,
    /// The config's TTL fingerprint, computed once (it hashes every trait).
    ttl_fingerprint: u64,
    /// Plan indexes of the trait files to read, in application order. A file's position here
    /// is its file index: the high bits of its lines' run positions (`ingest::seq`).
    to_read: Vec<usize>,
    progress: ops::Progress,
    stages: BTreeMap<String, f64>,
    started: Instant,
}

/// How [`prepare`] was called: by `run` itself, or by a stage of a staged run.
struct Prepare<'a> {
    /// Hold the state lock for the rest of the process (a real run, and `finalize`).
    lock: bool,
    /// The scratch folder's name when not the run ID (`None`: a real run's).
    tmp_name: Option<String>,
    /// The night's files and their content hashes as the staged plan recorded them; files
    /// that arrived since are left for the next night, and nothing is hashed again.
    recorded: Option<&'a BTreeMap<String, Option<u128>>>,
    /// The state to open instead of `paths.state`: a staged task's mirror of the parent
    /// generation, when the work store is remote.
    state: Option<StateDir>,
    /// From a remote inbound root, fetch only these files now (a staged task's share; others
    /// by [`Night::fetch_trait_file`] when needed). `None`: every file planning may read.
    fetch_only: Option<&'a BTreeSet<String>>,
}

/// Opens the state, discovers and plans the night's files (CONTRACT §2).
fn prepare<'a>(
    config: &'a Config,
    opts: &'a RunOptions,
    how: &Prepare<'_>,
) -> Result<(Night<'a>, Option<crate::state::LockGuard>), RunError> {
    let started = Instant::now();
    let mut stages: BTreeMap<String, f64> = BTreeMap::new();
    let state = match &how.state {
        Some(mirror) => mirror.clone(),
        None => StateDir::open(&config.paths.state).with_context(|| {
            format!(
                "cannot open the state folder {}",
                config.paths.state.display()
            )
        })?,
    };
    let lock = if how.lock {
        match state.lock() {
            Ok(guard) => Some(guard),
            Err(StateError::Locked { .. }) => {
                return Err(RunError::Locked(format!(
                    "another segmill run holds the lock on {}",
                    config.paths.state.display()
                )));
            }
            Err(e) => return Err(anyhow::Error::from(e).into()),
        }
    } else {
        None
    };
    let parent = state
        .current()
        .context("cannot read the current state generation")?;
    let parent_meta: Option<StateMeta> = match &parent {
        Some(g) => Some(
            serde_json::from_value(g.manifest.meta.clone()).with_context(|| {
                format!(
                    "state generation {}: manifest metadata is not segmill's",
                    g.number
                )
            })?,
        ),
        None => None,
    };
    if let (Some(g), Some(m)) = (&parent, &parent_meta)
        && m.partition_hash != PARTITION_HASH
    {
        return Err(anyhow!(
            "state generation {} in {} was written with another partitioning ({:?}); this \
             segmill uses {:?}: start a new state folder and re-import the ID-sync files",
            g.number,
            config.paths.state.display(),
            m.partition_hash,
            PARTITION_HASH
        )
        .into());
    }
    let partitions = parent_meta
        .as_ref()
        .map_or(config.run.partitions, |m| m.partitions);
    let chunk_bytes = opts.chunk_bytes.unwrap_or(config.run.chunk_bytes);
    let ledger = match &parent {
        Some(g) => g.ledger().context("cannot read the ledger")?,
        None => Ledger::new(),
    };
    let gen_number = parent.as_ref().map_or(1, |g| g.number + 1);
    let run_id = format!("{gen_number:06}-{}", compact_time(opts.as_of));
    // Fetched inbound copies, PGP plaintexts, spilled ops and staged exports; removed when the
    // run ends, and by the next run if this one is killed.
    ops::TmpDir::sweep_stale(state.root(), lock.is_some() && how.tmp_name.is_none());
    let tmp = ops::TmpDir::new(
        state.root(),
        &match &how.tmp_name {
            Some(name) => name.clone(),
            None if opts.dry_run => format!("{run_id}-dry-{}", std::process::id()),
            None => run_id.clone(),
        },
    );
    let mut inbound_store: Option<crate::storage::Store> = None;
    let progress = ops::Progress::new();
    progress.stage("discovering inbound files");

    // Discover and plan.
    let t = Instant::now();
    let discovery = match &opts.files {
        _ if opts.export_only.is_some() => Discovery::default(),
        Some(files) => explicit_files(files, config)?,
        None => {
            let store = ops::open_store(config, &config.paths.inbound)
                .with_context(|| format!("inbound {}", config.paths.inbound))?;
            // Its errors name the root already.
            let mut found = match &opts.day {
                Some(day) => crate::storage::discover_day(&store, day, config),
                None => crate::storage::discover(&store, config),
            }
            .map_err(anyhow::Error::from)?;
            if let Some(recorded) = how.recorded {
                keep_recorded(&mut found, recorded);
            }
            if !matches!(store, crate::storage::Store::Local(_)) {
                // Names the ledger has as processed are duplicates: never fetched.
                let reprocess: BTreeSet<&str> = opts.reprocess.iter().map(String::as_str).collect();
                let skip = |display: &str| {
                    let key = basename(display);
                    let processed = !reprocess.contains(key.as_str())
                        && ledger
                            .by_name(&key)
                            .is_some_and(|e| e.outcome == Outcome::Processed);
                    processed || how.fetch_only.is_some_and(|only| !only.contains(display))
                };
                ops::fetch_discovered(&store, &mut found, &skip, &tmp)?;
            }
            inbound_store = Some(store);
            found
        }
    };
    let mut discovery = discovery;
    if opts.idsync_only {
        if let Some(f) = discovery.trait_files.first() {
            return Err(anyhow!(
                "{}: not an ID-sync file (adobe_id_… or c2c_id_…)",
                f.display
            )
            .into());
        }
        discovery
            .rejected
            .retain(|r| !matches!(r.name, Classified::Trait(_)));
    }
    let plan = plan_files(discovery, &ledger, opts, config, how.recorded)?;
    stages.insert("discover".into(), t.elapsed().as_secs_f64());
    let catalog = Catalog::compile(config)?;
    let to_read: Vec<usize> = plan
        .trait_files
        .iter()
        .enumerate()
        .filter(|(_, p)| p.status == PlanStatus::New && !opts.idsync_only)
        .map(|(i, _)| i)
        .collect();
    let night = Night {
        config,
        opts,
        state,
        parent,
        parent_meta,
        partitions,
        chunk_bytes,
        ledger,
        gen_number,
        run_id,
        tmp,
        inbound_store,
        plan,
        catalog,
        ttl_fingerprint: config.fingerprint_ttl(),
        to_read,
        progress,
        stages,
        started,
    };
    Ok((night, lock))
}

impl Night<'_> {
    /// A data file of the generation this night starts from, or `None`.
    fn parent_file(&self, name: &str) -> anyhow::Result<Option<Vec<u8>>> {
        match &self.parent {
            Some(g) => Ok(g.read(name)?),
            None => Ok(None),
        }
    }

    /// Fetches trait file `plan_idx` from a remote inbound root if `prepare` left it there
    /// (a staged task fetches only what it reads).
    fn fetch_trait_file(&mut self, plan_idx: usize) -> anyhow::Result<()> {
        let Some(store) = &self.inbound_store else {
            return Ok(());
        };
        if matches!(store, crate::storage::Store::Local(_)) {
            return Ok(());
        }
        let found = &mut self.plan.trait_files[plan_idx].found;
        if found.path == self.tmp.file("in", &found.display)? {
            return Ok(()); // fetched by `prepare`
        }
        (found.path, found.size) = ops::fetch_inbound(store, &found.display, &self.tmp)?;
        Ok(())
    }

    /// A state file as this night leaves it so far: written tonight (`staged`), else the
    /// parent's.
    fn current_file(&self, staged: &staged::Staged, name: &str) -> anyhow::Result<Option<Vec<u8>>> {
        match staged.read(name)? {
            Some(bytes) => Ok(Some(bytes)),
            None => self.parent_file(name),
        }
    }

    /// Profile partition `p` as this night leaves it so far, its delta laid over its base.
    fn current_profiles(&self, staged: &staged::Staged, p: u32) -> anyhow::Result<Option<Vec<u8>>> {
        let name = crate::profile::part_name(p);
        let base = self.current_file(staged, &name)?;
        match self.current_file(staged, &crate::profile::delta_name(p))? {
            Some(delta) if !delta.is_empty() => {
                crate::profile::overlay(base.as_deref().unwrap_or_default(), &delta)
                    .map(Some)
                    .map_err(|e| anyhow!("profile partition {name} and its delta: {e}"))
            }
            _ => Ok(base),
        }
    }

    /// [`current_file`](Self::current_file), memory-mapped when it is a file of a generation.
    fn current_mapped(
        &self,
        staged: &staged::Staged,
        name: &str,
    ) -> anyhow::Result<Option<PartBytes<'static>>> {
        match staged.map(name)? {
            Some(bytes) => Ok(Some(bytes)),
            None => mapped(self.parent.as_ref(), name),
        }
    }

    /// Looks up the pending customer IDs (a deferred parse's, see [`FileCtx::index`]) of the
    /// ID-sync partitions `parts`, a batch at a time, one partition a thread, each batch with an
    /// index of just the keys it looks up (and the partitions of the chains' masters): memory
    /// holds a batch's share of tonight's lookups, not an index of every key. `pending(q)`
    /// gives partition `q`'s pending ops; resolved ops go to `spool`. Returns the unmatched
    /// lines by file, ascending.
    fn resolve_parts(
        &self,
        staged: &staged::Staged,
        parts: &[u32],
        pending: &(dyn Fn(u32) -> anyhow::Result<Vec<OpBuf>> + Sync),
        spool: &mut Spool,
    ) -> anyhow::Result<BTreeMap<u32, Vec<u64>>> {
        let dpids = self.customer_dpids();
        // Each partition is read once, mapped and let go of behind the read: a large store's
        // partitions are not held whole.
        let source = |name: &str| self.current_mapped(staged, name);
        // A stored partition with a block index is read where tonight's IDs are (one written
        // tonight is read whole: the stored index is not its own).
        let indexed: &crate::idsync::index::IndexedSource<'_> = &|name: &str| {
            let Some(g) = self.parent.as_ref().filter(|_| !staged.contains(name)) else {
                return Ok(None);
            };
            let Some(index) = g.read(&(name.to_string() + crate::state::INDEX_SUFFIX))? else {
                return Ok(None);
            };
            Ok(g.map_unhashed(name)?.map(|m| (PartBytes::Mapped(m), index)))
        };
        let mut unmatched: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        for batch in parts.chunks(rayon::current_num_threads().max(1)) {
            let only: BTreeSet<u32> = batch.iter().copied().collect();
            let ops: Vec<(u32, Vec<OpBuf>)> = batch
                .par_iter()
                .map(|&q| Ok((q, pending(q)?)))
                .collect::<anyhow::Result<_>>()?;
            // The index holds just the keys looked up (a pass over each partition, and no
            // table of all its keys); a chain's master still loads its partition whole.
            let mut wanted = crate::idsync::index::Wanted::default();
            for (q, ops) in &ops {
                crate::ingest::pending_keys(ops, &mut wanted, self.partitions)
                    .map_err(|e| anyhow!("ID-sync partition {q}: {e}"))?;
            }
            let index = IdIndex::build_wanted(
                &dpids,
                self.partitions,
                Some(&only),
                Some(&wanted),
                &source,
                Some(indexed),
            )?;
            drop(wanted);
            let resolved: Vec<anyhow::Result<crate::ingest::Resolved>> = ops
                .par_iter()
                .map(|(q, ops)| {
                    crate::ingest::resolve_pending(ops, &index, self.partitions)
                        .map_err(|e| anyhow!("ID-sync partition {q}: {e}"))
                })
                .collect();
            for r in resolved {
                let r = r?;
                for seq in r.unmatched {
                    unmatched
                        .entry(seq_file(seq))
                        .or_default()
                        .push(seq_line(seq));
                }
                spool
                    .push(r.parts)
                    .map_err(|e| anyhow!("cannot spool the resolved ops: {e}"))?;
            }
        }
        for lines in unmatched.values_mut() {
            lines.sort_unstable();
        }
        Ok(unmatched)
    }

    /// Adds the lines a deferred lookup found unmatched (`lines`, ascending) to a read file's
    /// outcome, as if the parse had found them.
    fn add_unmatched(&self, rf: &mut ReadFile, lines: Vec<u64>) {
        let p = &self.plan.trait_files[rf.plan_idx];
        if let IdKind::Customer { .. } = id_kind(self.config, &p.name, p.job) {
            rf.cap.counters.no_matching_aam_id += lines.len() as u64;
        }
        rf.unmatched = lines;
    }

    /// Whether to look customer IDs up after the parse, a few ID-sync partitions at a time
    /// ([`Night::resolve_parts`]), rather than in the parse against an index of every key of
    /// tonight's DPIDs: when tonight's trait files are smaller than those DPIDs' stored ID-sync
    /// partitions, the whole index would be most of the night's memory (and of its time to
    /// build), while a night large enough to touch most keys is faster with the lookups fused.
    fn defer_lookups(&self) -> bool {
        match self.opts.lookups {
            Lookups::Fused => return false,
            Lookups::Deferred => return true,
            Lookups::Auto => {}
        }
        let dpids = self.customer_dpids();
        let Some(g) = self.parent.as_ref().filter(|_| !dpids.is_empty()) else {
            return false; // nothing stored to look up in, or nothing to look up
        };
        let text: u64 = self
            .to_read
            .iter()
            .map(|&i| self.plan.trait_files[i].found.size)
            .sum();
        let prefixes: Vec<String> = dpids
            .into_iter()
            .map(|d| format!("{}/dpid-{d}/", Table::Adobe.dir()))
            .collect();
        // The mappings, not their block indexes.
        let stored: u64 = g
            .files()
            .filter(|(name, _)| {
                prefixes.iter().any(|pre| name.starts_with(pre.as_str()))
                    && !name.ends_with(crate::state::INDEX_SUFFIX)
            })
            .map(|(_, e)| e.size)
            .sum();
        text < stored
    }

    /// Whether tonight's files (trait and ID-sync text, on disk) are smaller than the profile
    /// store they update: a night whose own work is small beside the state's, so that
    /// memory the allocator keeps after freeing it would be most of its peak (see
    /// [`crate::alloc`]).
    fn small_night(&self) -> bool {
        let Some(g) = &self.parent else {
            return false;
        };
        let tonight: u64 = self
            .to_read
            .iter()
            .map(|&i| self.plan.trait_files[i].found.size)
            .chain(self.plan.idsync_files.iter().map(|f| f.found.size))
            .sum();
        let profiles: u64 = g
            .files()
            .filter(|(name, _)| name.starts_with("profiles/"))
            .map(|(_, e)| e.size)
            .sum();
        tonight < profiles
    }

    /// The DPIDs whose customer IDs tonight's trait files look up.
    fn customer_dpids(&self) -> BTreeSet<Dpid> {
        self.to_read
            .iter()
            .filter_map(|&i| {
                let p = &self.plan.trait_files[i];
                match id_kind(self.config, &p.name, p.job) {
                    IdKind::Customer { dpid, .. } => Some(dpid),
                    _ => None,
                }
            })
            .collect()
    }

    fn jobs(&self) -> Vec<JobKey> {
        self.plan.jobs.keys().copied().collect()
    }

    /// What the merge needs to know of each file read tonight, by file index.
    fn file_metas(&self) -> Vec<FileMeta> {
        let job_index: BTreeMap<JobKey, usize> = self
            .jobs()
            .iter()
            .enumerate()
            .map(|(i, j)| (*j, i))
            .collect();
        self.to_read
            .iter()
            .map(|&i| {
                let p = &self.plan.trait_files[i];
                FileMeta {
                    job: job_index[&p.job],
                    overwrite: p.name.mode == Mode::Overwrite,
                    target_ds: p.job.target(),
                }
            })
            .collect()
    }

    /// New or edited segment definitions: every stored membership is evaluated again.
    fn reevaluate_all(&self) -> bool {
        self.parent_meta
            .as_ref()
            .is_some_and(|m| m.segments_fingerprint != self.catalog.segments_fingerprint)
    }

    fn merge_ctx<'m>(&'m self, metas: &'m [FileMeta]) -> MergeCtx<'m> {
        MergeCtx {
            files: metas,
            jobs: self.plan.jobs.len(),
            ttl_days: &self.catalog.ttl_days,
            as_of: self.opts.as_of,
            segments: &self.catalog.segments,
            reevaluate_all: self.reevaluate_all(),
            recency_days: &self.catalog.recency_days,
            previous_as_of: self.parent_meta.as_ref().map(|m| m.as_of),
            trust_events: self.events_hold(),
            keep_changes: self.change_fed_exports(),
        }
    }

    /// Whether a destination may diff just tonight's changed profiles: an `iter` export
    /// whose template does not list traits, on a night that exports.
    fn change_fed_exports(&self) -> bool {
        !self.opts.no_export
            && !self.opts.idsync_only
            && self.config.destinations.values().any(|d| {
                d.mode == crate::config::ExportMode::Iter
                    && !self
                        .catalog
                        .templates
                        .get(&d.id)
                        .is_some_and(crate::outbound::template::Template::uses_traits)
            })
    }

    /// The format version of the state this night starts from (this build's for a new one).
    fn parent_format(&self) -> u32 {
        self.parent
            .as_ref()
            .map_or(crate::state::FORMAT_VERSION, |g| g.manifest.format_version)
    }

    /// Whether the stored state's times of expiry and of recency flips still hold: it was
    /// written in this format, under tonight's TTLs and segment definitions, at an as-of time
    /// not after tonight's (a recency flip is stored as the first one after its profile was
    /// written).
    fn events_hold(&self) -> bool {
        self.parent_format() >= crate::state::PROFILE_HEADERS_SINCE
            && !self.reevaluate_all()
            && self.parent_meta.as_ref().is_some_and(|m| {
                m.ttl_fingerprint == self.ttl_fingerprint && m.as_of <= self.opts.as_of
            })
    }

    /// Whether partition `p` can be carried over unchanged: no op tonight, and nothing in it
    /// expires or changes membership by the clock.
    fn quiet(&self, p: u32, no_ops: bool) -> bool {
        no_ops
            && self.events_hold()
            && self.parent_meta.as_ref().is_some_and(|m| {
                m.min_expiry
                    .get(p as usize)
                    .copied()
                    .flatten()
                    .is_none_or(|t| self.opts.as_of < t)
                    && m.min_flip
                        .get(p as usize)
                        .copied()
                        .flatten()
                        .is_none_or(|t| self.opts.as_of < t)
            })
    }

    /// Reads, parses and validates trait file `file` (plan index `plan_idx`) into the spools:
    /// ops that landed on a profile into `spool`, ops whose customer ID is still to be looked up
    /// (no `index`) into `pending`. A file is applied whole or not at all: a file rejected
    /// after its ops were pushed is rolled back from both.
    fn read_trait_file(
        &self,
        file: u32,
        pgp: &mut ops::PgpKeys<'_>,
        index: Option<&IdIndex>,
        spool: &mut Spool,
        pending: &mut Spool,
    ) -> anyhow::Result<Result<ReadFile, String>> {
        let plan_idx = self.to_read[file as usize];
        let p = &self.plan.trait_files[plan_idx];
        let stamp = FileStamp::of(&p.found.path).map_err(anyhow::Error::from)?;
        let (source_path, gzip) = if p.name.pgp {
            match pgp.decrypt(&p.found.path, &p.found.display, &self.tmp)? {
                ops::Decrypted::Plain(path) => (path, false),
                ops::Decrypted::Rejected(reason) => return Ok(Err(reason)),
            }
        } else {
            (p.found.path.clone(), p.name.gzip)
        };
        let ctx = FileCtx {
            file,
            target_ds: p.job.target(),
            overwrite: p.name.mode == Mode::Overwrite,
            id_kind: id_kind(self.config, &p.name, p.job),
            trait_owner: &self.catalog.trait_owner,
            rules: &self.catalog.trait_rules,
            index,
            partitions: self.partitions,
        };
        // Chunk outputs arrive in order: the cap drops capped lines' ops, the spools take the
        // rest; what stays per chunk is its rejected lines, for the rejects file.
        spool.checkpoint();
        pending.checkpoint();
        // About one distinct user per 128 bytes of text (lines of some 80 bytes, most users
        // on a line or two); compressed text is some 4 times smaller. `Cap::new` bounds it.
        let text_bytes = if gzip {
            p.found.size.saturating_mul(4)
        } else {
            p.found.size
        };
        let mut cap = Cap::new(
            file,
            usize::try_from(text_bytes / 128).unwrap_or(usize::MAX),
        );
        let mut rejected: Vec<RejectRow> = Vec::new();
        let mut spill_error = None;
        let read_result = read_chunks_each(
            &source_path,
            gzip,
            self.chunk_bytes,
            |c| process_chunk(c.bytes, c.first_line, &ctx),
            |mut out: ChunkOut| {
                cap.take(&mut out);
                let pushed = spool
                    .push(std::mem::take(&mut out.parts))
                    .and_then(|()| pending.push(std::mem::take(&mut out.pending)));
                if let Err(e) = pushed {
                    spill_error = Some(e);
                    return false;
                }
                rejected.extend(out.rejected.into_iter().map(|r| RejectRow {
                    line: r.line,
                    category: r.category,
                    reason: r.reason.text(),
                    text: r.text,
                }));
                true
            },
        );
        if let Some(e) = spill_error {
            return Err(anyhow!(
                "cannot spill tonight's ops to the run's temporary folder: {e}"
            ));
        }
        let reason = read_rejection(read_result)
            .map_err(anyhow::Error::from)?
            .or_else(|| {
                // An input that changed while it was read is rejected whole.
                stamp
                    .changed(&p.found.path, p.found.size)
                    .then(|| FileStamp::CHANGED.to_string())
            });
        match reason {
            Some(reason) => {
                // A file is applied whole or not at all: drop what it already put in the spools.
                spool
                    .rollback()
                    .and_then(|()| pending.rollback())
                    .map_err(|e| anyhow!("cannot roll back tonight's spilled ops: {e}"))?;
                Ok(Err(reason))
            }
            None => Ok(Ok(ReadFile {
                plan_idx,
                source: source_path,
                gzip,
                rejected,
                unmatched: Vec::new(),
                cap: cap.finish(),
            })),
        }
    }

    /// Merges partition `p`'s ops (`refs`) into its stored base and `delta` and writes just a
    /// new delta to `staged`, when the night changes little of the partition: what changed
    /// since the base was last written whole. `None` when the partition is to be merged whole:
    /// deltas are off, the stored events cannot be trusted, there is no base, or the delta
    /// would outgrow its limit ([`crate::state::delta_limit`]).
    fn merge_delta(
        &self,
        ctx: &MergeCtx<'_>,
        p: u32,
        refs: &[&OpBuf],
        delta: Option<&[u8]>,
        staged: &staged::Staged,
    ) -> anyhow::Result<Option<PartOut>> {
        let Some(g) = &self.parent else {
            return Ok(None);
        };
        if !self.config.run.profile_deltas || !ctx.trust_events || ctx.reevaluate_all {
            return Ok(None);
        }
        let name = crate::profile::part_name(p);
        // With its block index, the base is read a block at a time where the night needs it,
        // each block checked on its own; without, it is checked whole first.
        let index_bytes = self.parent_file(&crate::profile::index_name(p))?;
        let index = index_bytes
            .as_deref()
            .map(crate::blocks::BlockIndex::decode)
            .transpose()
            .map_err(|e| anyhow!("the block index of profile partition {name}: {e}"))?;
        let base = match &index {
            Some(_) => g.map_unhashed(&name)?,
            None => g.map(&name)?,
        };
        let Some(base) = base else {
            return Ok(None);
        };
        let index = match index {
            Some(index) if index.base_len != base.bytes().len() => {
                return Err(anyhow!(
                    "the block index of profile partition {name} is of a partition of {} \
                     bytes, but it has {}",
                    index.base_len,
                    base.bytes().len()
                ));
            }
            index => index,
        };
        let delta = delta.unwrap_or_default();
        let counts_name = crate::profile::delta_counts_name(p);
        let counts_bytes = self.parent_file(&counts_name)?;
        // Counts only save reading blocks: ones that do not decode (which `state verify`
        // reports) or do not fit the delta and index (see `DeltaCounts`) are not used, and the
        // night writes new ones.
        let counts = counts_bytes
            .as_deref()
            .and_then(|b| crate::blocks::DeltaCounts::decode(b).ok());
        let ops: usize = refs.iter().map(|b| b.ops.len()).sum();
        // About 64 bytes a line, for a changed or new profile.
        let Some(limit) =
            crate::state::delta_limit(base.bytes().len(), delta.len(), ops.saturating_mul(64))
        else {
            return Ok(None);
        };
        let out = crate::profile::merge::merge_partition_delta(
            base.bytes(),
            delta,
            index.as_ref(),
            counts.as_ref(),
            refs,
            ctx,
            limit,
            &mut |at| base.release_before(at),
        )
        .map_err(|e| anyhow!("profile partition {name} and its delta: {e}"))?;
        let Some(mut out) = out else {
            return Ok(None);
        };
        if let Some(at) = out.counts_ignored {
            tracing::warn!(
                partition = %name,
                counts = %counts_name,
                block_offset = at,
                "the delta's block counts let a block the night needed go unread; merged the \
                 partition again without them, and wrote new counts (`segmill state verify` \
                 checks a state's counts)"
            );
        }
        if let Some(payload) = out.payload.take() {
            staged.write(&crate::profile::delta_name(p), &payload)?;
        }
        // A base read whole for want of an index has one from now on.
        if let Some(index) = out.index.take() {
            staged.write(&crate::profile::index_name(p), &index)?;
        }
        if let Some(new) = out.delta_counts.take()
            && new != counts_bytes.unwrap_or_default()
        {
            staged.write(&counts_name, &new)?;
        }
        Ok(Some(out))
    }

    /// Merges partition `p`'s ops (`None` when it got none tonight) with its stored profiles
    /// and writes its new payload to `staged`; `None` when the partition is quiet.
    fn merge_part(
        &self,
        ctx: &MergeCtx<'_>,
        p: u32,
        ops: Option<Vec<OpBuf>>,
        staged: &staged::Staged,
    ) -> anyhow::Result<Option<PartOut>> {
        if self.quiet(p, ops.as_ref().is_none_or(Vec::is_empty)) {
            return Ok(None);
        }
        let bufs = ops.unwrap_or_default();
        let refs: Vec<&OpBuf> = bufs.iter().collect();
        let name = crate::profile::part_name(p);
        let format = self.parent_format();
        if format >= crate::state::PROFILE_HEADERS_SINCE {
            let delta_name = crate::profile::delta_name(p);
            let delta = self.parent_file(&delta_name)?;
            if let Some(out) = self.merge_delta(ctx, p, &refs, delta.as_deref(), staged)? {
                return Ok(Some(out));
            }
            // Otherwise the partition is written whole, with its delta folded in. The stored
            // partition is mapped and let go of as the merge passes it, and the new one goes
            // to disk as it is made: a large partition is never held whole (but for a delta's
            // fold, which holds the two laid together).
            let mapped = match &self.parent {
                Some(g) => g.map(&name)?,
                None => None,
            };
            let folded = match (&mapped, &delta) {
                (Some(base), Some(delta)) => {
                    let folded = crate::profile::overlay(base.bytes(), delta)
                        .map_err(|e| anyhow!("profile partition {name} and its delta: {e}"))?;
                    base.release_before(base.bytes().len());
                    Some(folded)
                }
                _ => None,
            };
            let mut sink = MergeSink {
                stream: staged.stream(&name),
                stored: mapped.as_ref().filter(|_| folded.is_none()),
                index: crate::blocks::Indexer::default(),
            };
            let old = match &folded {
                Some(folded) => Some(folded.as_slice()),
                None => mapped.as_ref().map(crate::state::MappedPayload::bytes),
            };
            let out =
                merge_partition_into(old, &refs, ctx, &mut sink).map_err(|e| match folded {
                    // Offsets are in the two laid together.
                    Some(_) => anyhow!("profile partition {name} with its delta folded in: {e}"),
                    None => anyhow!("profile partition {name}: {e}"),
                })?;
            // Unchanged, the parent's files are carried over instead (the stream is dropped).
            if out.rewritten {
                sink.stream.finish()?;
                // With its block index (none for an empty partition; the parent's is not
                // carried over).
                staged.write(&crate::profile::index_name(p), &sink.index.finish())?;
                if delta.is_some() {
                    // Written empty: the parent's delta is not carried over.
                    staged.write(&delta_name, &[])?;
                }
                // Nor its block counts.
                let counts_name = crate::profile::delta_counts_name(p);
                if self
                    .parent
                    .as_ref()
                    .is_some_and(|g| g.manifest.files.contains_key(&counts_name))
                {
                    staged.write(&counts_name, &[])?;
                }
            }
            return Ok(Some(out));
        }
        let old = match self.parent_file(&name)? {
            Some(payload) => Some(
                crate::profile::in_current_layout(format, payload)
                    .map_err(|e| anyhow!("profile partition {name} (format {format}): {e}"))?,
            ),
            None => None,
        };
        let mut out = merge_partition(old.as_deref(), &refs, ctx)
            .map_err(|e| anyhow!("profile partition {name}: {e}"))?;
        drop(refs);
        drop(bufs);
        // A partition of an older format is written in this one even when nothing changed.
        let payload = match out.payload.take() {
            None => old,
            payload => payload,
        };
        if let Some(payload) = payload {
            staged.write(&name, &payload)?;
        }
        Ok(Some(out))
    }
}

/// File `name` of generation `g` (if any), mapped: for a reader that reads it once, front to
/// back.
fn mapped<'x>(g: Option<&Generation>, name: &str) -> anyhow::Result<Option<PartBytes<'x>>> {
    match g {
        Some(g) => Ok(g.map(name)?.map(PartBytes::Mapped)),
        None => Ok(None),
    }
}

/// A merge's new partition streamed into the generation and indexed, and its stored one let
/// go of behind it.
struct MergeSink<'a> {
    stream: staged::StagedStream<'a>,
    stored: Option<&'a crate::state::MappedPayload>,
    index: crate::blocks::Indexer,
}

impl crate::profile::merge::PartSink for MergeSink<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write(bytes)
    }

    fn passed(&mut self, offset: usize) {
        if let Some(stored) = self.stored {
            stored.release_before(offset);
        }
    }

    fn profile(&mut self, raw: &[u8], key: &[u8], counts: &crate::blocks::Counts) {
        self.index.push(raw, key, counts);
    }
}

/// Whether a merged partition's memberships changed: a profile's segments, or a profile with
/// segments dropped. Nothing else changes what an `iter` export sends from it (traits go out
/// only on a row sent for a membership change).
pub(crate) fn changed_segments(out: &PartOut) -> bool {
    out.membership_changes > 0
}

/// What the exports need to know of each profile partition.
struct PartFacts<'a> {
    /// Whether it holds cross-device customer-ID profiles.
    customer: &'a [bool],
    /// The last generation that changed a membership in it (this one's number if tonight did;
    /// see [`StateMeta::changed_generation`]).
    changed_generation: &'a [u64],
    /// Whether a mapping of a cross-device data source arrived tonight.
    cross_synced_tonight: bool,
    /// By partition: the profiles whose segments changed tonight, when the merge kept them
    /// ([`PartOut::changes`]; `None` for a partition not merged tonight, or with too many
    /// changes to keep, or on a night without a destination to feed them to).
    changes: &'a [Option<&'a [u8]>],
}

impl Night<'_> {
    /// Whether tonight's ID-sync partitions (`parts`) hold mappings of a cross-device data
    /// source: its customer-ID profiles are then due for every destination.
    fn cross_synced(&self, parts: &BTreeSet<String>) -> bool {
        self.config
            .data_sources
            .values()
            .filter(|d| d.cross_device)
            .any(|d| {
                let prefix = format!("{}/dpid-{}/", Table::Adobe.dir(), d.id);
                parts.iter().any(|name| name.starts_with(&prefix))
            })
    }

    /// Diffs every destination's profile partitions in `range` against what it last received,
    /// writing each diffed partition's sorted run file into `runs_dir(destination)` and its new
    /// members into `staged`. `segmill run` diffs every partition at once; a staged run's merge
    /// tasks diff their own ranges, and `finalize` merges the run files.
    fn compute_exports(
        &self,
        staged: &staged::Staged,
        facts: &PartFacts<'_>,
        range: std::ops::Range<u32>,
        runs_dir: &dyn Fn(u32) -> anyhow::Result<PathBuf>,
    ) -> anyhow::Result<Vec<DestExport>> {
        let config = self.config;
        // Cross-device customer-ID profiles are exported through their ID-sync mapping.
        let cross_device: BTreeSet<Dpid> = config
            .data_sources
            .values()
            .filter(|d| d.cross_device)
            .map(|d| d.id)
            .collect();
        let any_customer = range
            .clone()
            .any(|p| facts.customer.get(p as usize).copied().unwrap_or(false));
        let index_source = |name: &str| -> anyhow::Result<Option<PartBytes<'_>>> {
            Ok(self.current_file(staged, name)?.map(PartBytes::Owned))
        };
        let cross_index = if any_customer && !cross_device.is_empty() {
            IdIndex::build(&cross_device, self.partitions, &index_source)?
        } else {
            IdIndex::default()
        };
        let resolve = |dpid: Dpid, id: &[u8]| match cross_index.lookup(dpid, id) {
            Some(crate::idsync::index::Target::Uuid(u)) => Some(u),
            _ => None,
        };
        let profile_source = |p: u32| -> anyhow::Result<Option<std::borrow::Cow<'_, [u8]>>> {
            Ok(self
                .current_profiles(staged, p)?
                .map(std::borrow::Cow::Owned))
        };
        // Mapped: a partition's stored members are read once, front to back.
        let members = |name: &str| mapped(self.parent.as_ref(), name);
        let stale_for = |last: Option<DestMeta>| {
            move |p: u32| {
                let p = p as usize;
                last.is_none_or(|m| {
                    facts.changed_generation.get(p).copied().unwrap_or(0) > m.exported_generation
                }) || (facts.cross_synced_tonight
                    && facts.customer.get(p).copied().unwrap_or(false))
            }
        };
        // Tonight's changes are all that changed since an export made by the parent generation
        // (and by the ID-sync too, for customer-ID profiles, when a cross-device mapping came).
        let parent_generation = self.parent.as_ref().map(|g| g.number);
        let changes_for = |last: Option<DestMeta>| {
            move |p: u32| {
                let p = p as usize;
                let since_parent =
                    last.is_some_and(|m| Some(m.exported_generation) == parent_generation);
                let resynced =
                    facts.cross_synced_tonight && facts.customer.get(p).copied().unwrap_or(false);
                if since_parent && !resynced {
                    facts.changes.get(p).copied().flatten()
                } else {
                    None
                }
            }
        };
        let mut wanted = Vec::new();
        for dest in config.destinations.values() {
            let full = match self.opts.export_only {
                Some((did, full)) if did == dest.id => full,
                Some(_) => continue,
                None => false,
            };
            let last = self
                .parent_meta
                .as_ref()
                .and_then(|m| m.destinations.get(&dest.id).copied());
            wanted.push((
                dest,
                full,
                last,
                stale_for(last),
                changes_for(last),
                runs_dir(dest.id)?,
            ));
        }
        let jobs: Vec<export::Job<'_>> = wanted
            .iter()
            .map(|(dest, full, last, stale, changes, runs_dir)| export::Job {
                dest,
                template: self.catalog.templates.get(&dest.id),
                full: *full,
                last: *last,
                stale,
                changes,
                runs_dir: runs_dir.clone(),
            })
            .collect();
        let sources = export::Sources {
            parts: range,
            profiles: &profile_source,
            members: &members,
            resolve: &resolve,
            deltas: config.run.profile_deltas,
        };
        // What each destination now holds goes straight into the new generation.
        export::compute(config, &jobs, &sources, &|name, payload| {
            staged.write(name, &payload)
        })
    }
}

fn run_in_pool(config: &Config, opts: &RunOptions) -> Result<RunSummary, RunError> {
    let (mut n, _lock) = prepare(
        config,
        opts,
        &Prepare {
            lock: !opts.dry_run,
            tmp_name: None,
            recorded: None,
            state: None,
            fetch_only: None,
        },
    )?;
    // New state files are written as they are made (a dry run keeps them in memory); nothing
    // is current until the commit at the end.
    let staged = staged::Staged::new(if opts.dry_run {
        None
    } else {
        Some(n.state.begin(n.parent.as_ref())?)
    });

    // A night small beside the store it updates has mimalloc hand freed memory back at
    // once: its peak is then its own work's, not what the allocator keeps.
    if n.small_night() {
        crate::alloc::purge_at_once();
    }

    // ID sync.
    n.progress.stage("applying ID-sync files");
    let t = Instant::now();
    let parent_file = |name: &str| n.parent_file(name);
    let idsync_result = apply_idsync(&n.plan, n.partitions, n.chunk_bytes, &parent_file, &staged)?;
    n.stages.insert("idsync".into(), t.elapsed().as_secs_f64());
    crate::failpoint::hit("after-idsync").context("after-idsync")?;

    // The ID index of tonight's customer DPIDs: map and resolve fused into one pass. On a
    // small night, none: lookups wait for the parse to end (`resolve` below).
    let deferred = n.defer_lookups();
    let index = if deferred {
        None
    } else {
        let t = Instant::now();
        let index_source = |name: &str| -> anyhow::Result<Option<PartBytes<'_>>> {
            Ok(n.current_file(&staged, name)?.map(PartBytes::Owned))
        };
        let index = IdIndex::build(&n.customer_dpids(), n.partitions, &index_source)?;
        n.stages.insert("index".into(), t.elapsed().as_secs_f64());
        Some(index)
    };

    // Trait files.
    let t = Instant::now();
    let mut read: Vec<Option<ReadFile>> = Vec::new();
    let mut trait_outcomes: Vec<(usize, TraitFileResult)> = Vec::new();
    let mut pgp = ops::PgpKeys::new(config);
    let job_clock = ops::JobClock::new();
    // Customer IDs' ops wait in `pending` when lookups are deferred (the two spools share the
    // op budget); else it stays empty.
    let budget = config.run.ops_memory_bytes;
    let (ops_budget, pending_budget) = if deferred {
        (budget / 2, budget / 2)
    } else {
        (budget, usize::MAX)
    };
    let mut spool = Spool::new(n.partitions, ops_budget, n.tmp.dir("ops")?);
    let mut pending = Spool::new(n.partitions, pending_budget, n.tmp.dir("pending")?);
    n.progress.stage("reading trait files");
    n.progress.files(n.to_read.len());
    for file in 0..n.to_read.len() {
        let p = &n.plan.trait_files[n.to_read[file]];
        let _timed = job_clock.time(p.job);
        n.progress.file_done();
        let result = n.read_trait_file(
            file as u32,
            &mut pgp,
            index.as_ref(),
            &mut spool,
            &mut pending,
        )?;
        trait_outcomes.push((n.to_read[file], file_result(file, &result)));
        read.push(result.ok());
    }
    // The index is not needed past this point: its memory goes before the merge's comes.
    drop(index);
    let spilled = spool.stats();
    if spilled.spills > 0 {
        tracing::info!(
            spills = spilled.spills,
            bytes = spilled.spilled_bytes,
            budget = config.run.ops_memory_bytes,
            "tonight's ops outgrew run.ops_memory_bytes and were spilled to disk"
        );
    }
    n.stages.insert("parse".into(), t.elapsed().as_secs_f64());
    if deferred {
        n.progress.stage("looking up customer IDs");
        let t = Instant::now();
        let parts: Vec<std::sync::Mutex<Option<crate::ingest::spool::PartOps>>> = pending
            .into_parts()
            .into_iter()
            .map(|p| std::sync::Mutex::new(Some(p)))
            .collect();
        let take = |q: u32| -> anyhow::Result<Vec<OpBuf>> {
            let part = parts.get(q as usize).and_then(|m| {
                m.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take()
            });
            match part {
                Some(p) => p
                    .load()
                    .map_err(|e| anyhow!("cannot read back tonight's pending ops: {e}")),
                None => Ok(Vec::new()),
            }
        };
        let all: Vec<u32> = (0..n.partitions).collect();
        for (file, lines) in n.resolve_parts(&staged, &all, &take, &mut spool)? {
            if let Some(Some(rf)) = read.get_mut(file as usize) {
                n.add_unmatched(rf, lines);
            }
        }
        n.stages.insert("resolve".into(), t.elapsed().as_secs_f64());
    }
    crate::failpoint::hit("after-parse").context("after-parse")?;

    // Merge every partition.
    n.progress.stage("merging profiles");
    let t = Instant::now();
    let metas = n.file_metas();
    let merge_ctx = n.merge_ctx(&metas);
    // Each partition's ops come back from the spool in run order (file, then chunk) as it is
    // merged, and its new payload is written as soon as it is made: memory holds the
    // partitions in flight, not the night's ops or the whole store.
    let part_results: Vec<anyhow::Result<Option<PartOut>>> = spool
        .into_parts()
        .into_par_iter()
        .enumerate()
        .map(|(p, ops)| {
            let ops = if ops.is_empty() {
                None
            } else {
                Some(
                    ops.load()
                        .map_err(|e| anyhow!("cannot read back tonight's spilled ops: {e}"))?,
                )
            };
            n.merge_part(&merge_ctx, p as u32, ops, &staged)
        })
        .collect();
    let mut parts: Vec<Option<PartOut>> = Vec::with_capacity(n.partitions as usize);
    for r in part_results {
        parts.push(r?);
    }
    n.stages.insert("merge".into(), t.elapsed().as_secs_f64());
    crate::failpoint::hit("after-merge").context("after-merge")?;
    let tonight = Tonight {
        idsync: idsync_result,
        read,
        trait_outcomes,
        parts,
        exports: None,
    };
    finish(n, staged, tonight, &job_clock)
}

/// How a trait file's read ended, for the plan's bookkeeping.
fn file_result(file: usize, result: &Result<ReadFile, String>) -> TraitFileResult {
    match result {
        Ok(_) => TraitFileResult::Read(file),
        Err(reason) => TraitFileResult::Rejected(reason.clone()),
    }
}

/// What the stages before [`finish`] made of the night.
struct Tonight {
    idsync: IdSyncResult,
    /// By file index: what each file to read gave (`None`: rejected).
    read: Vec<Option<ReadFile>>,
    /// (plan index, how its read ended), in file order.
    trait_outcomes: Vec<(usize, TraitFileResult)>,
    /// By profile partition: its merge (`None`: quiet, carried over).
    parts: Vec<Option<PartOut>>,
    /// The destinations' diffs when made already (a staged run's merge tasks); `None` makes
    /// them now.
    exports: Option<Vec<DestExport>>,
}

/// Everything after the merge: exports, receipts, ledger, run report and the commit.
fn finish(
    mut n: Night<'_>,
    staged: staged::Staged,
    tonight: Tonight,
    job_clock: &ops::JobClock,
) -> Result<RunSummary, RunError> {
    let Tonight {
        idsync: idsync_result,
        read,
        trait_outcomes,
        parts,
        exports,
    } = tonight;
    let config = n.config;
    let opts = n.opts;
    let partitions = n.partitions;
    let gen_number = n.gen_number;
    let run_id = n.run_id.clone();
    let jobs = n.jobs();
    let ttl_fingerprint = n.ttl_fingerprint;
    let parent_meta = n.parent_meta.clone();
    let mut stages = std::mem::take(&mut n.stages);
    let started = n.started;
    let mut ledger = std::mem::replace(&mut n.ledger, Ledger::new());
    let n = n;
    let (catalog, plan, tmp, state, progress, parent) = (
        &n.catalog,
        &n.plan,
        &n.tmp,
        &n.state,
        &n.progress,
        &n.parent,
    );
    let inbound_store = &n.inbound_store;
    // What the manifest keeps per partition, for the partitions this run did not touch.
    let mut min_expiry = vec![None; partitions as usize];
    let mut min_flip = vec![None; partitions as usize];
    let mut customer_partitions = vec![false; partitions as usize];
    for (p, out) in parts.iter().enumerate() {
        let m = parent_meta.as_ref();
        match out {
            Some(o) => {
                min_expiry[p] = o.min_expiry;
                min_flip[p] = o.min_flip;
                customer_partitions[p] = o.has_customer;
            }
            None => {
                min_expiry[p] = m.and_then(|m| m.min_expiry.get(p).copied().flatten());
                min_flip[p] = m.and_then(|m| m.min_flip.get(p).copied().flatten());
                customer_partitions[p] = m
                    .and_then(|m| m.customer_partitions.get(p).copied())
                    .unwrap_or(false);
            }
        }
    }

    // Destination exports, against the profiles as this run leaves them.
    let t = Instant::now();
    let cross_synced_tonight = n.cross_synced(&idsync_result.parts);
    let mut changed_generation: Vec<u64> = (0..partitions as usize)
        .map(|p| {
            parent_meta
                .as_ref()
                .and_then(|m| m.changed_generation.get(p).copied())
                .unwrap_or(0)
        })
        .collect();
    for (p, out) in parts.iter().enumerate() {
        if out.as_ref().is_some_and(changed_segments) {
            changed_generation[p] = gen_number;
        }
    }
    let exports: Vec<DestExport> = if opts.idsync_only || opts.no_export {
        Vec::new()
    } else if let Some(exports) = exports {
        exports
    } else {
        let changes: Vec<Option<&[u8]>> = parts
            .iter()
            .map(|out| out.as_ref().and_then(|o| o.changes.as_deref()))
            .collect();
        let facts = PartFacts {
            customer: &customer_partitions,
            changed_generation: &changed_generation,
            cross_synced_tonight,
            changes: &changes,
        };
        let out = n.compute_exports(&staged, &facts, 0..partitions, &|did| {
            tmp.dir(&format!("export-runs/{did}"))
        })?;
        if let Some((did, _)) = opts.export_only
            && out.is_empty()
        {
            return Err(anyhow!(
                "destination {did} is not defined in {}",
                config.path.display()
            )
            .into());
        }
        out
    };
    stages.insert("export".into(), t.elapsed().as_secs_f64());

    // Receipts.
    let t = Instant::now();
    let mut file_counters: Vec<Counters> = read
        .iter()
        .map(|r| {
            r.as_ref()
                .map(|r| r.cap.counters.clone())
                .unwrap_or_default()
        })
        .collect();
    let mut job_devices = vec![0u64; jobs.len()];
    let mut job_failed = vec![0u64; jobs.len()];
    let mut ntr: Vec<Vec<u64>> = vec![Vec::new(); jobs.len()];
    let mut expired_traits = 0u64;
    for part in parts.iter().flatten() {
        for (f, c) in part.files.iter().enumerate() {
            file_counters[f].add(c);
        }
        for j in 0..jobs.len() {
            job_devices[j] += part.job_devices[j];
            job_failed[j] += part.job_failed_users[j];
            ntr[j].extend_from_slice(&part.ntr_samples[j]);
        }
        expired_traits += part.expired;
    }
    let as_of_text = receipt_time(opts.as_of);
    let mut receipts = Vec::new();
    // Each job's rejects file is streamed to the run's temporary folder (it may hold every line
    // of a large file) and moved into the receipts folder with the receipts.
    let mut rejects: BTreeMap<JobKey, PathBuf> = BTreeMap::new();
    let file_results: BTreeMap<usize, &TraitFileResult> =
        trait_outcomes.iter().map(|(i, r)| (*i, r)).collect();
    for (job_no, job) in jobs.iter().enumerate() {
        let mut counters = Counters::default();
        let mut files = Vec::new();
        let mut samples: BTreeMap<Category, Vec<Sample>> = BTreeMap::new();
        let tsv_path = tmp.file("rejects", &format!("{job}.rejects.tsv"))?;
        let mut tsv: Box<dyn std::io::Write> = if opts.dry_run {
            Box::new(std::io::sink())
        } else {
            let file = std::fs::File::create(&tsv_path)
                .with_context(|| format!("cannot create {}", tsv_path.display()))?;
            Box::new(std::io::BufWriter::with_capacity(128 << 10, file))
        };
        for &plan_idx in &plan.jobs[job] {
            let p = &plan.trait_files[plan_idx];
            let mut receipt = FileReceipt {
                name: p.found.display.clone(),
                status: FileStatus::Processed,
                reason: None,
                duplicate_of: p.duplicate_of.clone(),
                processed_by_run: None,
                counters: Counters::default(),
            };
            match (&p.status, file_results.get(&plan_idx)) {
                (PlanStatus::Duplicate { run_id }, _) => {
                    receipt.status = FileStatus::Duplicate;
                    receipt.processed_by_run = Some(run_id.clone());
                }
                (PlanStatus::Rejected(reason), _)
                | (_, Some(TraitFileResult::Rejected(reason))) => {
                    receipt.status = FileStatus::Rejected;
                    receipt.reason = Some(reason.clone());
                }
                (PlanStatus::SkippedRejected(_), _) => continue,
                (_, Some(TraitFileResult::Read(r))) => {
                    let Some(rf) = read[*r].as_ref() else {
                        continue;
                    };
                    receipt.counters = file_counters[*r].clone();
                    counters.add(&receipt.counters);
                    let unmatched_reason = crate::ingest::Reason::NotSynced(p.job.dpid).text();
                    collect_rejects(p, rf, &unmatched_reason, &mut samples, &mut tsv)
                        .with_context(|| format!("cannot write {}", tsv_path.display()))?;
                }
                (PlanStatus::New, None) => continue, // idsync-only run
            }
            files.push(receipt);
        }
        counters.total_devices = job_devices[job_no];
        counters.total_users_with_failed_traits = job_failed[job_no];
        // No Trait Realized samples: the job's first lines in run order, texts fetched now.
        let mut seqs = std::mem::take(&mut ntr[job_no]);
        seqs.sort_unstable();
        seqs.truncate(SAMPLES_PER_CATEGORY);
        let ntr_samples = fetch_samples(
            &seqs,
            &read,
            plan,
            "no trait realized: no item realized or removed a trait",
        )?;
        if !ntr_samples.is_empty() {
            samples.insert(Category::NoTraitRealized, ntr_samples);
        }
        let receipt = JobReceipt {
            run_id: run_id.clone(),
            job: job.to_string(),
            dpid: job.dpid,
            owner: job.owner,
            counters,
            job_start_time: as_of_text.clone(),
            job_end_time: as_of_text.clone(),
            files,
            error_samples: samples,
        };
        debug_assert!(receipt.counters.identity_holds());
        tsv.flush()
            .with_context(|| format!("cannot write {}", tsv_path.display()))?;
        drop(tsv);
        rejects.insert(*job, tsv_path);
        receipts.push(receipt);
    }
    stages.insert("receipts".into(), t.elapsed().as_secs_f64());

    // Exit code and run report.
    let new_rejected_file = plan
        .trait_files
        .iter()
        .any(|p| matches!(p.status, PlanStatus::Rejected(_)))
        || trait_outcomes
            .iter()
            .any(|(_, r)| matches!(r, TraitFileResult::Rejected(_)))
        || plan.name_rejected.iter().any(|r| r.1)
        || idsync_result
            .receipt
            .files
            .iter()
            .any(|f| f.status == "rejected");
    let rejected_lines = receipts.iter().any(|r| r.counters.has_rejected_lines())
        || idsync_result
            .receipt
            .files
            .iter()
            .any(|f| f.rejected_rows > 0);
    let exit_code = if new_rejected_file || rejected_lines {
        1
    } else {
        0
    };

    // Ledger.
    if !opts.dry_run {
        for (i, p) in plan.trait_files.iter().enumerate() {
            let outcome = match (&p.status, file_results.get(&i)) {
                (PlanStatus::Rejected(reason), _)
                | (_, Some(TraitFileResult::Rejected(reason))) => {
                    Some((Outcome::Rejected, Some(reason.clone())))
                }
                (PlanStatus::New, Some(TraitFileResult::Read(_))) => {
                    Some((Outcome::Processed, None))
                }
                _ => None,
            };
            if let (Some((outcome, reason)), Some(hash)) = (outcome, p.hash) {
                ledger.record(LedgerEntry {
                    name: p.key.clone(),
                    path: p.found.display.clone(),
                    size: p.found.size,
                    hash,
                    outcome,
                    reason,
                    run_id: run_id.clone(),
                });
            }
        }
        for f in &idsync_result.ledger {
            ledger.record(LedgerEntry {
                run_id: run_id.clone(),
                ..f.clone()
            });
        }
        for (r, new) in &plan.name_rejected {
            if *new && let Some(hash) = r.1 {
                ledger.record(LedgerEntry {
                    name: basename(&r.0.display),
                    path: r.0.display.clone(),
                    size: r.0.size,
                    hash,
                    outcome: Outcome::Rejected,
                    reason: Some(r.0.reason.clone()),
                    run_id: run_id.clone(),
                });
            }
        }
    }

    let report = RunReport {
        run_id: run_id.clone(),
        as_of: jiff_rfc3339(opts.as_of),
        dry_run: opts.dry_run,
        generation: gen_number,
        files: plan.seen(&file_results),
        ignored: plan.ignored.clone(),
        rejected_files: plan.rejected_list(&file_results),
        expired_traits,
        profiles_changed: parts.iter().flatten().map(|p| p.changed_profiles).sum(),
        exit_code,
        durations_seconds: stages.clone(),
        total_seconds: started.elapsed().as_secs_f64(),
    };

    let idsync_receipt =
        (!idsync_result.receipt.files.is_empty()).then(|| idsync_result.receipt.clone());
    if opts.dry_run {
        return Ok(RunSummary {
            run_id,
            exit_code,
            report,
            receipts,
            idsync: idsync_receipt,
            receipts_dir: None,
            exports: Vec::new(),
            mail: Vec::new(),
            warnings: Vec::new(),
        });
    }

    // Write: receipts first, then the generation, then the run report; CURRENT switches last.
    progress.stage("writing receipts, exports and state");
    let t = Instant::now();
    let receipts_dir = state.receipts_dir(&run_id);
    clear_uncommitted(state, gen_number)?;
    std::fs::create_dir_all(&receipts_dir)
        .with_context(|| format!("cannot create {}", receipts_dir.display()))?;
    for r in &receipts {
        let stem = receipts_dir.join(&r.job);
        write_atomic(&stem.with_extension("txt"), r.to_text().as_bytes())?;
        crate::failpoint::hit("mid-receipts").context("mid-receipts")?;
        write_atomic(&stem.with_extension("json"), r.to_json().as_bytes())?;
        let key = JobKey {
            dpid: r.dpid,
            owner: r.owner,
        };
        let target = receipts_dir.join(format!("{}.rejects.tsv", r.job));
        match rejects.get(&key) {
            Some(staged) => {
                std::fs::File::open(staged)
                    .and_then(|f| f.sync_all())
                    .and_then(|()| std::fs::rename(staged, &target))
                    .with_context(|| {
                        format!("cannot move {} to {}", staged.display(), target.display())
                    })?;
                crate::state::sync_dir(&receipts_dir)?;
            }
            None => write_atomic(&target, b"")?,
        }
    }
    if let Some(idr) = &idsync_receipt {
        write_atomic(&receipts_dir.join("idsync.json"), idr.to_json().as_bytes())?;
    }

    crate::failpoint::hit("after-receipts").context("after-receipts")?;
    let mut export_summaries = Vec::new();
    let mut batch_ms = BTreeMap::new();
    // Each destination's files are written on a thread of their own (merging its runs and
    // compressing is most of this stage); remote ones are then delivered one by one, in order.
    let written: Vec<anyhow::Result<(PathBuf, bool, i64, export::ExportSummary)>> = exports
        .par_iter()
        .map(|e| {
            let dest = &config.destinations[&e.view.did];
            let template = catalog.templates.get(&dest.id);
            let local = dest.location.as_local().map(Path::to_path_buf);
            let dir = match &local {
                Some(dir) => dir.clone(),
                None => tmp.dir(&format!("out/{}", dest.id))?,
            };
            let last = parent_meta
                .as_ref()
                .and_then(|m| m.destinations.get(&dest.id).copied());
            let ms = export::batch_timestamp_ms(opts.as_of, last);
            let summary =
                export::write_export(&dir, dest, &e.view, template, &e.runs, opts.as_of, ms)?;
            Ok((dir, local.is_none(), ms, summary))
        })
        .collect();
    for (e, w) in exports.iter().zip(written) {
        let (dir, remote, ms, summary) = w?;
        let dest = &config.destinations[&e.view.did];
        batch_ms.insert(dest.id, ms);
        if remote {
            ops::deliver_export(config, dest, &dir, &summary.files, &summary.info)?;
        }
        export_summaries.push(summary);
    }
    crate::failpoint::hit("after-exports").context("after-exports")?;
    let mut destinations = parent_meta
        .as_ref()
        .map(|m| m.destinations.clone())
        .unwrap_or_default();
    destinations.retain(|did, _| config.destinations.contains_key(did));
    for e in &exports {
        destinations.insert(
            e.view.did,
            DestMeta {
                exported_generation: gen_number,
                fingerprint: e.view.fingerprint(),
                last_timestamp_ms: batch_ms.get(&e.view.did).copied().unwrap_or(0),
            },
        );
    }
    crate::failpoint::hit("mid-state-files").context("mid-state-files")?;
    // ID-sync tables and profiles: tonight's partitions were written as they were made; the
    // rest is carried over.
    let written = staged.names();
    let writer = staged
        .into_writer()
        .ok_or_else(|| anyhow!("a dry run has no generation to write"))?;
    if let Some(g) = parent {
        // Members of destinations no longer configured are dropped with them.
        let configured = |name: &str| match name.strip_prefix("members/") {
            Some(rest) => rest
                .split('/')
                .next()
                .and_then(|d| d.parse::<u32>().ok())
                .is_some_and(|did| config.destinations.contains_key(&did)),
            None => true,
        };
        let carried: Vec<String> = g
            .files()
            .map(|(name, _)| name.to_string())
            .filter(|name| name != LEDGER_FILE && !written.contains(name) && configured(name))
            .collect();
        for name in carried {
            writer.carry(&name, g)?;
        }
    }
    writer.write_ledger(&ledger)?;
    crate::failpoint::hit("after-state-files").context("after-state-files")?;
    let meta = StateMeta {
        partitions,
        partition_hash: PARTITION_HASH.to_string(),
        as_of: opts.as_of,
        run_id: run_id.clone(),
        ttl_fingerprint,
        segments_fingerprint: catalog.segments_fingerprint,
        min_expiry,
        min_flip,
        customer_partitions,
        changed_generation,
        destinations,
    };
    let runs_dir = state.runs_dir();
    std::fs::create_dir_all(&runs_dir)
        .with_context(|| format!("cannot create {}", runs_dir.display()))?;
    let mut report = report;
    report
        .durations_seconds
        .insert("write".into(), t.elapsed().as_secs_f64());
    // The whole run up to the commit, writes included.
    report.total_seconds = started.elapsed().as_secs_f64();
    let report_path = runs_dir.join(format!("{run_id}.json"));
    write_atomic(&report_path, report.to_json().as_bytes())?;
    crate::failpoint::hit("before-commit").context("before-commit")?;
    writer
        .commit(
            serde_json::to_value(&meta).map_err(anyhow::Error::from)?,
            config.run.keep_generations as usize,
        )
        .context("cannot commit the new state generation")?;
    tmp.remove_now();

    // After the commit: nothing here changes the data or the exit code.
    progress.stage("markers, mail and metrics");
    let mut warnings = Vec::new();
    if config.run.markers
        && let Some(store) = inbound_store
    {
        let mut processed: Vec<String> = read
            .iter()
            .flatten()
            .map(|r| plan.trait_files[r.plan_idx].found.display.clone())
            .collect();
        processed.extend(
            idsync_result
                .ledger
                .iter()
                .filter(|e| e.outcome == Outcome::Processed)
                .map(|e| e.path.clone()),
        );
        processed.sort();
        warnings.extend(ops::write_markers(store, &processed, &run_id));
    }
    let mail = ops::mail_receipts(config, &receipts);
    if let Some(path) = &config.metrics
        && let Err(e) = crate::report::metrics::write_with_job_seconds(
            path,
            &report,
            &receipts,
            Some(&job_clock.seconds()),
        )
    {
        tracing::warn!(error = %e, "metrics not written");
        warnings.push(e.to_string());
    }
    if (!mail.is_empty() || !warnings.is_empty())
        && let Err(e) = ops::write_report(&report_path, &report, &mail, &warnings)
    {
        let text = format!("{e:#}");
        tracing::warn!(error = %text, "run report not rewritten");
        warnings.push(text);
    }
    Ok(RunSummary {
        run_id,
        exit_code,
        report,
        receipts,
        idsync: idsync_receipt,
        receipts_dir: Some(receipts_dir),
        exports: export_summaries,
        mail,
        warnings,
    })
}

/// Removes receipts and run reports of runs that never committed (a killed run of the same
/// generation number), so a re-run leaves exactly its own outputs.
fn clear_uncommitted(state: &StateDir, gen_number: u64) -> anyhow::Result<()> {
    let prefix = format!("{gen_number:06}-");
    let receipts_root = state.root().join("receipts");
    if let Ok(entries) = std::fs::read_dir(&receipts_root) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                std::fs::remove_dir_all(e.path())
                    .with_context(|| format!("cannot remove {}", e.path().display()))?;
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(state.runs_dir()) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                std::fs::remove_file(e.path())
                    .with_context(|| format!("cannot remove {}", e.path().display()))?;
            }
        }
    }
    Ok(())
}

/// The rejected lines of one processed file: samples and `.rejects.tsv` rows, in line order.
fn collect_rejects(
    p: &PlannedTrait,
    rf: &ReadFile,
    unmatched_reason: &str,
    samples: &mut BTreeMap<Category, Vec<Sample>>,
    tsv: &mut dyn std::io::Write,
) -> anyhow::Result<()> {
    // Lines rejected by the parser carry their text; capped lines and lines found unmatched
    // after the parse are read again from the source, one at a time, as the three
    // line-ordered lists are merged.
    let mut cursor = if rf.cap.capped_lines.is_empty() && rf.unmatched.is_empty() {
        None
    } else {
        Some(
            crate::inbound::lines_at::LineCursor::open(&rf.source, rf.gzip)
                .with_context(|| format!("cannot re-read {}", p.found.display))?,
        )
    };
    let over_reason = format!(
        "over the limit of {} lines per user ID per file",
        crate::ingest::cap::MAX_LINES_PER_USER
    );
    let mut rejected = rf.rejected.iter().peekable();
    let mut capped = rf.cap.capped_lines.iter().copied().peekable();
    let mut unmatched = rf.unmatched.iter().copied().peekable();
    let mut row = String::new();
    let mut emit = |line: u64, category: Category, reason: &str, text: &[u8]| {
        let list = samples.entry(category).or_default();
        if list.len() < SAMPLES_PER_CATEGORY {
            list.push(Sample {
                file: p.found.display.clone(),
                line,
                reason: reason.to_string(),
                text: sample_text(text),
            });
        }
        row.clear();
        escape_tsv(p.found.display.as_bytes(), &mut row);
        row.push('\t');
        row.push_str(&line.to_string());
        row.push('\t');
        row.push_str(reason);
        row.push('\t');
        escape_tsv(text, &mut row);
        row.push('\n');
        tsv.write_all(row.as_bytes())
    };
    let mut reread = |line: u64| -> anyhow::Result<Vec<u8>> {
        Ok(match cursor.as_mut() {
            Some(cur) => cur
                .line(line, usize::MAX)
                .with_context(|| format!("cannot re-read {}", p.found.display))?
                .map(<[u8]>::to_vec)
                .unwrap_or_default(),
            None => Vec::new(),
        })
    };
    loop {
        let next = [
            rejected.peek().map(|r| r.line),
            capped.peek().copied(),
            unmatched.peek().copied(),
        ];
        let Some((which, _)) = next
            .iter()
            .enumerate()
            .filter_map(|(i, l)| l.map(|l| (i, l)))
            .min_by_key(|&(i, l)| (l, i))
        else {
            break;
        };
        match which {
            0 => {
                let Some(r) = rejected.next() else { break };
                emit(r.line, r.category, &r.reason, &r.text)?;
            }
            1 => {
                let Some(c) = capped.next() else { break };
                let text = reread(c)?;
                emit(c, Category::LinesOverUserLimit, &over_reason, &text)?;
            }
            _ => {
                let Some(u) = unmatched.next() else { break };
                let text = reread(u)?;
                emit(u, Category::NoMatchingAamId, unmatched_reason, &text)?;
            }
        }
    }
    Ok(())
}

fn fetch_samples(
    seqs: &[u64],
    read: &[Option<ReadFile>],
    plan: &Plan,
    reason: &str,
) -> anyhow::Result<Vec<Sample>> {
    let mut by_file: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for &s in seqs {
        by_file.entry(seq_file(s)).or_default().push(seq_line(s));
    }
    let mut out = Vec::new();
    for (file, lines) in by_file {
        let Some(rf) = read.get(file as usize).and_then(Option::as_ref) else {
            continue;
        };
        let p = &plan.trait_files[rf.plan_idx];
        let texts = lines_at(
            &rf.source,
            rf.gzip,
            &lines,
            crate::report::receipt::SAMPLE_TEXT_BYTES + 1,
        )
        .with_context(|| format!("cannot re-read {}", p.found.display))?;
        for line in lines {
            let text = texts.get(&line).map_or(&b""[..], |t| t.as_slice());
            out.push(Sample {
                file: p.found.display.clone(),
                line,
                reason: reason.to_string(),
                text: sample_text(text),
            });
        }
    }
    Ok(out)
}

/// How the ID column of a trait file is validated and resolved.
fn id_kind(config: &Config, name: &TraitName, job: JobKey) -> IdKind {
    if name.odc {
        return IdKind::Odc;
    }
    if name.dpid == AAM_UUID_DPID {
        return IdKind::AamUuid;
    }
    if let Some((_, format)) = device_format(name.dpid) {
        return IdKind::Device(name.dpid, format);
    }
    match config.data_sources.get(&job.dpid) {
        Some(ds) if ds.id_type == IdType::AamUuid => IdKind::AamUuid,
        Some(ds) => IdKind::Customer {
            dpid: job.dpid,
            cross_device: ds.cross_device,
        },
        None => IdKind::Customer {
            dpid: job.dpid,
            cross_device: false,
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Planning: which discovered files are new, duplicates or rejected.

#[derive(Clone, Debug, PartialEq, Eq)]
enum PlanStatus {
    New,
    Duplicate {
        run_id: String,
    },
    /// Rejected before (for this reason), unchanged since: not examined again.
    SkippedRejected(Option<String>),
    Rejected(String),
}

struct PlannedTrait {
    found: Found,
    name: TraitName,
    job: JobKey,
    /// The ledger key: the bare file name.
    key: String,
    hash: Option<u128>,
    status: PlanStatus,
    duplicate_of: Option<String>,
}

struct PlannedIdSync {
    found: Found,
    spec: FileSpec,
    gzip: bool,
    key: String,
    hash: Option<u128>,
    status: PlanStatus,
}

impl PlannedIdSync {
    fn new(
        found: Found,
        name: &IdSyncName,
        hash: Option<u128>,
        status: PlanStatus,
    ) -> PlannedIdSync {
        let table = match name.kind {
            IdSyncKind::Adobe => Table::Adobe,
            IdSyncKind::C2c => Table::C2c,
        };
        PlannedIdSync {
            key: basename(&found.display),
            spec: FileSpec {
                table,
                dpids: name.dpids.clone(),
                timestamp: name.timestamp,
            },
            gzip: name.gzip,
            found,
            hash,
            status,
        }
    }
}

struct Plan {
    trait_files: Vec<PlannedTrait>,
    idsync_files: Vec<PlannedIdSync>,
    /// Job → indexes into `trait_files`, in application order.
    jobs: BTreeMap<JobKey, Vec<usize>>,
    ignored: Vec<String>,
    /// Files whose name does not match a grammar: (file, hash), newly rejected?
    name_rejected: Vec<((RejectedFile, Option<u128>), bool)>,
}

enum TraitFileResult {
    Read(usize),
    Rejected(String),
}

struct ReadFile {
    plan_idx: usize,
    /// What was read: the inbound file, its fetched copy or its PGP plaintext.
    source: PathBuf,
    /// Whether `source` is gzip.
    gzip: bool,
    /// Lines rejected by the parser (capped lines excluded), ascending.
    rejected: Vec<RejectRow>,
    /// Lines whose customer ID was looked up after the parse (a staged run's resolve stage) and
    /// is not synced, ascending; their texts are read again for the rejects file.
    unmatched: Vec<u64>,
    cap: CapOutcome,
}

/// A line rejected by the parser, as the rejects file and the samples show it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RejectRow {
    line: u64,
    category: Category,
    reason: std::borrow::Cow<'static, str>,
    text: Vec<u8>,
}

/// Keeps only the files a staged plan recorded (see [`Prepare::recorded`]).
fn keep_recorded(d: &mut Discovery, recorded: &BTreeMap<String, Option<u128>>) {
    d.trait_files.retain(|f| recorded.contains_key(&f.display));
    d.idsync_files.retain(|f| recorded.contains_key(&f.display));
    d.rejected.retain(|f| recorded.contains_key(&f.display));
    d.ignored.retain(|name| recorded.contains_key(name));
}

fn basename(display: &str) -> String {
    display.rsplit('/').next().unwrap_or(display).to_string()
}

fn hash_of(path: &Path) -> anyhow::Result<u128> {
    content_hash(path).map_err(anyhow::Error::from)
}

/// The DPID and OWNER of a name that starts like a trait file but does not match the grammar
/// (`ftp_dpm_21_1763700001.sync.zip`): the leading numbers after `ftp_dpm_[odc_]`, of which
/// the last is the timestamp. `None` when they cannot be read.
fn job_hint(file_name: &str) -> Option<TraitName> {
    let rest = file_name.strip_prefix("ftp_dpm_")?;
    let rest = rest.strip_prefix("odc_").unwrap_or(rest);
    let head = rest.split('.').next()?;
    let numbers: Vec<u64> = head
        .split('_')
        .map(|t| t.parse().ok())
        .collect::<Option<_>>()?;
    let (dpid, owner, timestamp) = match numbers.as_slice() {
        [dpid, ts] => (*dpid, None, *ts),
        [dpid, owner, ts] => (*dpid, Some(Dpid::try_from(*owner).ok()?), *ts),
        _ => return None,
    };
    Some(TraitName {
        odc: false,
        dpid: Dpid::try_from(dpid).ok()?,
        owner,
        timestamp,
        mode: Mode::Sync,
        split: None,
        gzip: false,
        pgp: false,
    })
}

/// Decides what happens to every discovered file, consulting the ledger.
fn plan_files(
    discovery: Discovery,
    ledger: &Ledger,
    opts: &RunOptions,
    _config: &Config,
    recorded: Option<&BTreeMap<String, Option<u128>>>,
) -> anyhow::Result<Plan> {
    let reprocess: BTreeSet<&str> = opts.reprocess.iter().map(String::as_str).collect();
    let check_ledger = !opts.dry_run || opts.files.is_none();
    // A file processed before under its name is a duplicate without reading it.
    let known = |found: &Found| -> bool {
        let key = basename(&found.display);
        check_ledger
            && !reprocess.contains(key.as_str())
            && ledger
                .by_name(&key)
                .is_some_and(|e| e.outcome == Outcome::Processed)
    };
    // The other ID-sync and trait files are hashed up front, several at once: one thread
    // hashing a night's files one after another took 1-3 s of a 3.3 GB night. A staged run's
    // later stages take the hashes its plan recorded.
    let recorded_hash = |display: &str| recorded.and_then(|r| r.get(display).copied().flatten());
    let hashed: std::cell::RefCell<AHashMap<String, anyhow::Result<u128>>> = {
        use rayon::prelude::*;
        let todo: Vec<&Found> = discovery
            .idsync_files
            .iter()
            .filter(|f| f.idsync_name().is_some())
            .chain(discovery.trait_files.iter().filter(|f| {
                f.trait_name()
                    .is_some_and(|name| check_trait_file(name, _config).is_ok())
            }))
            .filter(|f| !known(f) && recorded_hash(&f.display).is_none())
            .collect();
        todo.par_iter()
            .map(|f| (f.display.clone(), hash_of(&f.path)))
            .collect::<Vec<_>>()
            .into_iter()
            .collect::<AHashMap<_, _>>()
            .into()
    };
    let hash_of = |found_path: &Path, display: &str| -> anyhow::Result<u128> {
        match recorded_hash(display) {
            Some(hash) => Ok(hash),
            None => {
                let done = hashed.borrow_mut().remove(display);
                done.unwrap_or_else(|| hash_of(found_path))
            }
        }
    };
    let mut plan = Plan {
        trait_files: Vec::new(),
        idsync_files: Vec::new(),
        jobs: BTreeMap::new(),
        ignored: discovery.ignored,
        name_rejected: Vec::new(),
    };
    let mut seen_hashes: AHashMap<u128, String> = AHashMap::new();
    // Decides duplicates and skips: (status, hash, duplicate_of).
    let decide = |found: &Found,
                  seen_hashes: &mut AHashMap<u128, String>|
     -> anyhow::Result<(PlanStatus, Option<u128>, Option<String>)> {
        let key = basename(&found.display);
        let entry = if check_ledger {
            ledger.by_name(&key)
        } else {
            None
        };
        if let Some(e) = entry
            && e.outcome == Outcome::Processed
            && !reprocess.contains(key.as_str())
        {
            return Ok((
                PlanStatus::Duplicate {
                    run_id: e.run_id.clone(),
                },
                None,
                None,
            ));
        }
        let hash = hash_of(&found.path, &found.display)?;
        if let Some(e) = entry
            && e.outcome == Outcome::Rejected
            && e.size == found.size
            && e.hash == hash
            && !reprocess.contains(key.as_str())
        {
            return Ok((
                PlanStatus::SkippedRejected(e.reason.clone()),
                Some(hash),
                None,
            ));
        }
        let duplicate_of = match ledger.by_hash(hash) {
            Some(e) if e.outcome == Outcome::Processed && e.name != key => {
                Some(if e.path.is_empty() {
                    e.name.clone()
                } else {
                    e.path.clone()
                })
            }
            _ => seen_hashes.get(&hash).cloned(),
        };
        seen_hashes.entry(hash).or_insert(found.display.clone());
        Ok((PlanStatus::New, Some(hash), duplicate_of))
    };

    for found in discovery.idsync_files {
        let Some(name) = found.idsync_name().cloned() else {
            continue;
        };
        let (status, hash, _) = decide(&found, &mut seen_hashes)?;
        plan.idsync_files
            .push(PlannedIdSync::new(found, &name, hash, status));
    }
    for found in discovery.trait_files {
        let Some(name) = found.trait_name().cloned() else {
            continue;
        };
        let Ok(job) = check_trait_file(&name, _config) else {
            continue;
        };
        let (status, hash, duplicate_of) = decide(&found, &mut seen_hashes)?;
        plan.trait_files.push(PlannedTrait {
            key: basename(&found.display),
            found,
            name,
            job,
            hash,
            status,
            duplicate_of,
        });
    }
    for rejected in discovery.rejected {
        let found = Found {
            display: rejected.display.clone(),
            path: rejected.path.clone(),
            size: rejected.size,
            name: rejected.name.clone(),
        };
        // A trait file rejected for its name (`.zip`, a short timestamp, ...) still belongs to
        // a job when its DPID and OWNER can be read, so that job's receipt says why.
        let as_trait = match &rejected.name {
            Classified::Trait(name) => Some(name.clone()),
            Classified::Rejected(_) => job_hint(&basename(&rejected.display)),
            _ => None,
        };
        match (&rejected.name, as_trait) {
            (_, Some(name)) => {
                let (status, hash, _) = decide(&found, &mut seen_hashes)?;
                let job = JobKey {
                    dpid: name.dpid,
                    owner: name.owner,
                };
                let status = match status {
                    PlanStatus::New => PlanStatus::Rejected(rejected.reason.clone()),
                    other => other,
                };
                plan.trait_files.push(PlannedTrait {
                    key: basename(&found.display),
                    found,
                    name: name.clone(),
                    job,
                    hash,
                    status,
                    duplicate_of: None,
                });
            }
            (Classified::IdSync(name), None) => {
                let (status, hash, _) = decide(&found, &mut seen_hashes)?;
                let status = match status {
                    PlanStatus::New => PlanStatus::Rejected(rejected.reason.clone()),
                    other => other,
                };
                plan.idsync_files
                    .push(PlannedIdSync::new(found, name, hash, status));
            }
            _ => {
                let key = basename(&rejected.display);
                let hash = hash_of(&rejected.path, &rejected.display)?;
                let unchanged = check_ledger
                    && ledger.by_name(&key).is_some_and(|e| {
                        e.outcome == Outcome::Rejected && e.size == rejected.size && e.hash == hash
                    });
                plan.name_rejected
                    .push(((rejected, Some(hash)), !unchanged));
            }
        }
    }
    // Application order (CONTRACT §2): trait files by (TIMESTAMP, DPID, OWNER, SPLIT, name).
    plan.trait_files.sort_by(|a, b| {
        (
            a.name.timestamp,
            a.name.dpid,
            a.name.owner,
            a.name.split,
            &a.found.display,
        )
            .cmp(&(
                b.name.timestamp,
                b.name.dpid,
                b.name.owner,
                b.name.split,
                &b.found.display,
            ))
    });
    plan.idsync_files.sort_by(|a, b| {
        (a.spec.timestamp, &a.found.display).cmp(&(b.spec.timestamp, &b.found.display))
    });
    for (i, p) in plan.trait_files.iter().enumerate() {
        if !matches!(p.status, PlanStatus::SkippedRejected(_)) {
            plan.jobs.entry(p.job).or_default().push(i);
        }
    }
    Ok(plan)
}

impl Plan {
    fn seen(&self, results: &BTreeMap<usize, &TraitFileResult>) -> Vec<SeenFile> {
        let mut out = Vec::new();
        for f in &self.idsync_files {
            out.push(SeenFile {
                name: f.found.display.clone(),
                outcome: outcome_of(&f.status, None),
                reason: reason_of(&f.status, None),
            });
        }
        for (i, f) in self.trait_files.iter().enumerate() {
            let r = results.get(&i).copied();
            out.push(SeenFile {
                name: f.found.display.clone(),
                outcome: outcome_of(&f.status, r),
                reason: reason_of(&f.status, r),
            });
        }
        for ((r, _), new) in &self.name_rejected {
            out.push(SeenFile {
                name: r.display.clone(),
                outcome: if *new {
                    FileOutcome::Rejected
                } else {
                    FileOutcome::PreviouslyRejected
                },
                reason: Some(r.reason.clone()),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn rejected_list(&self, results: &BTreeMap<usize, &TraitFileResult>) -> Vec<SeenFile> {
        self.seen(results)
            .into_iter()
            .filter(|f| f.outcome == FileOutcome::Rejected)
            .collect()
    }
}

fn outcome_of(status: &PlanStatus, result: Option<&TraitFileResult>) -> FileOutcome {
    match (status, result) {
        (PlanStatus::Duplicate { .. }, _) => FileOutcome::Duplicate,
        (PlanStatus::SkippedRejected(_), _) => FileOutcome::PreviouslyRejected,
        (PlanStatus::Rejected(_), _) | (_, Some(TraitFileResult::Rejected(_))) => {
            FileOutcome::Rejected
        }
        _ => FileOutcome::Processed,
    }
}

fn reason_of(status: &PlanStatus, result: Option<&TraitFileResult>) -> Option<String> {
    match (status, result) {
        (PlanStatus::Rejected(r), _) | (_, Some(TraitFileResult::Rejected(r))) => Some(r.clone()),
        (PlanStatus::Duplicate { run_id }, _) => Some(format!("already processed by run {run_id}")),
        (PlanStatus::SkippedRejected(reason), _) => reason.clone(),
        _ => None,
    }
}

/// `Found` entries for files named on the command line (`validate`, `idsync import`).
fn explicit_files(files: &[PathBuf], config: &Config) -> anyhow::Result<Discovery> {
    let mut d = Discovery::default();
    for path in files {
        let meta =
            std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        let display = path.to_string_lossy().into_owned();
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = classify(&file_name);
        let found = Found {
            display: display.clone(),
            path: path.clone(),
            size: meta.len(),
            name: name.clone(),
        };
        let reject = |reason: String, d: &mut Discovery| {
            d.rejected.push(RejectedFile {
                display: display.clone(),
                path: path.clone(),
                size: meta.len(),
                name: name.clone(),
                reason,
            })
        };
        match &name {
            Classified::Trait(t) => match check_trait_file(t, config) {
                Err(reason) => reject(reason, &mut d),
                Ok(_) if meta.len() == 0 => reject("empty file".into(), &mut d),
                Ok(_) => d.trait_files.push(found),
            },
            Classified::IdSync(n) => match discover::check_idsync_file(n, config) {
                Err(reason) => reject(reason, &mut d),
                Ok(()) if meta.len() == 0 => reject("empty file".into(), &mut d),
                Ok(()) => d.idsync_files.push(found),
            },
            Classified::Rejected(reason) => reject(reason.clone(), &mut d),
            Classified::Ignored => reject(
                "not an inbound file name (ftp_dpm_..., adobe_id_..., c2c_id_...)".into(),
                &mut d,
            ),
        }
    }
    Ok(d)
}

// ---------------------------------------------------------------------------------------------
// ID sync.

struct IdSyncResult {
    /// Names of the ID-sync partitions rewritten tonight (already written to `staged`).
    parts: BTreeSet<String>,
    receipt: IdSyncReceipt,
    ledger: Vec<LedgerEntry>,
}

fn apply_idsync(
    plan: &Plan,
    partitions: u32,
    chunk_bytes: usize,
    source: &(dyn Fn(&str) -> anyhow::Result<Option<Vec<u8>>> + Sync),
    staged: &staged::Staged,
) -> anyhow::Result<IdSyncResult> {
    let mut receipt = IdSyncReceipt::default();
    let mut ledger = Vec::new();
    // Mappings are grouped by partition as chunks arrive; a chunk's text goes right after.
    let mut grouped = [Table::Adobe, Table::C2c].map(|_| idstore::Grouped::new(partitions));
    let table_slot = |t: Table| usize::from(t != Table::Adobe);
    for (i, f) in plan.idsync_files.iter().enumerate() {
        let mut file_receipt = IdSyncFileReceipt {
            name: f.found.display.clone(),
            ..Default::default()
        };
        match &f.status {
            PlanStatus::Duplicate { run_id } => {
                file_receipt.status = "duplicate".into();
                file_receipt.reason = Some(format!("already processed by run {run_id}"));
            }
            PlanStatus::SkippedRejected(_) => continue,
            PlanStatus::Rejected(reason) => {
                file_receipt.status = "rejected".into();
                file_receipt.reason = Some(reason.clone());
            }
            PlanStatus::New => {
                let slot = table_slot(f.spec.table);
                let mark = grouped[slot].mark();
                let mut read_receipt = IdSyncFileReceipt::default();
                let result = read_chunks_each(
                    &f.found.path,
                    f.gzip,
                    chunk_bytes,
                    // Each chunk's mappings are grouped by partition on its parser's thread;
                    // the in-order hand-over only moves its buffers.
                    |c| {
                        let mut chunk = idstore::GroupedChunk::for_text(c.bytes.len(), partitions);
                        let rows = idsync::parse_chunk_each(c.bytes, c.first_line, &f.spec, |m| {
                            let record = Record {
                                id: m.key,
                                value_dpid: m.value_dpid,
                                value: idstore::Value::of(m.value_dpid, m.value),
                                timestamp: f.spec.timestamp,
                            };
                            chunk.push(partitions, m.key_dpid, i, &record);
                        });
                        (rows, chunk)
                    },
                    |(c, chunk): (ChunkRows, idstore::GroupedChunk)| {
                        read_receipt.rows += c.rows;
                        read_receipt.rejected_rows += c.rejected.len() as u64;
                        read_receipt.mappings += chunk.len();
                        for r in &c.rejected {
                            read_receipt
                                .rejected
                                .push(crate::report::run_report::RejectedRow {
                                    line: r.line,
                                    reason: r.reason.clone(),
                                    text: sample_text(&r.text),
                                });
                        }
                        grouped[slot].append(chunk);
                        true
                    },
                );
                let rejected = read_rejection(result)?;
                match rejected {
                    Some(reason) => {
                        // Applied whole or not at all.
                        grouped[slot].rollback(&mark);
                        file_receipt.status = "rejected".into();
                        file_receipt.reason = Some(reason);
                    }
                    None => {
                        file_receipt.status = "processed".into();
                        file_receipt.rows = read_receipt.rows;
                        file_receipt.rejected_rows = read_receipt.rejected_rows;
                        file_receipt.mappings = read_receipt.mappings;
                        file_receipt.rejected = read_receipt.rejected;
                    }
                }
            }
        }
        if let (Some(hash), "processed" | "rejected") = (f.hash, file_receipt.status.as_str()) {
            let outcome = if file_receipt.status == "processed" {
                Outcome::Processed
            } else {
                Outcome::Rejected
            };
            ledger.push(LedgerEntry {
                name: f.key.clone(),
                path: f.found.display.clone(),
                size: f.found.size,
                hash,
                outcome,
                reason: file_receipt.reason.clone(),
                run_id: String::new(),
            });
        }
        receipt.files.push(file_receipt);
    }
    let parts = std::sync::Mutex::new(BTreeSet::new());
    for table in [Table::Adobe, Table::C2c] {
        let incoming = std::mem::replace(
            &mut grouped[table_slot(table)],
            idstore::Grouped::new(partitions),
        );
        if incoming.is_empty() {
            continue;
        }
        let write = |name: &str, payload: Vec<u8>| -> anyhow::Result<()> {
            staged.write(name, &payload)?;
            parts
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(name.to_owned());
            Ok(())
        };
        let stored_per_file = incoming.apply(table, source, &write)?;
        for (file, n) in stored_per_file {
            let name = &plan.idsync_files[file].found.display;
            if let Some(r) = receipt.files.iter_mut().find(|r| &r.name == name) {
                r.mappings_stored += n;
            }
        }
    }
    Ok(IdSyncResult {
        parts: parts
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
        receipt,
        ledger,
    })
}

/// Why a file that was read to the end is rejected whole (no text, or a corrupt gzip stream),
/// or `None`; a file that could not be read at all is a run problem, returned as the error.
fn read_rejection(
    result: Result<crate::inbound::read::ReadTotals, ReadError>,
) -> Result<Option<String>, ReadError> {
    match result {
        Ok(totals) if totals.bytes == 0 => {
            Ok(Some("empty file (no text after decompression)".to_string()))
        }
        Ok(_) => Ok(None),
        Err(ReadError::Gzip { reason, .. }) => {
            Ok(Some(format!("corrupt or truncated gzip stream: {reason}")))
        }
        Err(e) => Err(e),
    }
}

fn compact_time(ts: Timestamp) -> String {
    match jiff::Timestamp::from_second(ts) {
        Ok(t) => t.strftime("%Y%m%dT%H%M%SZ").to_string(),
        Err(_) => ts.to_string(),
    }
}

fn jiff_rfc3339(ts: Timestamp) -> String {
    match jiff::Timestamp::from_second(ts) {
        Ok(t) => t.to_string(),
        Err(_) => ts.to_string(),
    }
}

/// Parses `--as-of` (RFC 3339, UTC).
pub fn parse_as_of(text: &str) -> anyhow::Result<Timestamp> {
    let t: jiff::Timestamp = text.parse().map_err(|e| {
        anyhow!("--as-of {text:?}: expected RFC 3339 in UTC like 2026-11-22T02:00:00Z ({e})")
    })?;
    Ok(t.as_second())
}

/// Unused until the generation is handed to callers that inspect it.
#[allow(dead_code)]
fn _generation_is_send(g: Generation) -> impl Send {
    g
}
