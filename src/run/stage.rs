//! The nightly run as separate stages, for a scheduler that runs each stage's tasks on many
//! machines (DESIGN, "Beyond one machine"; issue #7). Every task is a process of its own over
//! a work store shared by the night's tasks: a folder every task mounts (default
//! `<state>/stage`) or an S3 prefix (see [`work`]):
//!
//! ```text
//! plan          discover, skip duplicates, apply tonight's ID-sync files   → plan.json, gen/idsync/…
//! map  i of M   parse + validate + cap + trait rules of files i, i+M, …    → map/i/{ops,pending}/ops-P, files.json, rejects-F
//! resolve j/N   look up the pending customer IDs of ID-sync partitions     → resolve/j/ops/ops-P, unmatched
//! merge   j/N   merge, expire and evaluate profile partitions; diff them   → merge/j/gen/{profiles/part-P, members/…},
//!               against what each destination last received                  merge/j/{parts.json,export/DID/part-P.run}
//! finalize      k-way merge of the exports, receipts, ledger, run report,  → the state, as `segmill run` leaves it
//!               generation switch
//! ```
//!
//! Each stage calls the same functions as `segmill run` (which fuses map and resolve: its parse
//! looks IDs up as it goes), so the outputs are byte-identical. A task commits its outputs in
//! one step (a folder rename, or a create-once put on S3): a retried task that finds its
//! outputs committed exits at once, and a task killed halfway left nothing another task reads.
//! Only `plan` and `finalize` open the state folder, and only `finalize` changes it, by the
//! same single rename as a run; it refuses to commit when another run committed since `plan`.

use super::{
    IdSyncResult, Night, PartFacts, Prepare, ReadFile, RejectRow, RunError, RunOptions, RunSummary,
    Tonight, TraitFileResult, apply_idsync, changed_segments, finish, ops, prepare, staged,
};
use crate::config::Config;
use crate::ingest::OpBuf;
use crate::ingest::spool::{Spool, read_spilled, spill_file};
use crate::model::Timestamp;
use crate::profile::merge::PartOut;
use crate::report::receipt::{Category, Counters};
use crate::report::run_report::IdSyncReceipt;
use crate::state::{LedgerEntry, Outcome, write_atomic};
use anyhow::{Context as _, anyhow};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use work::{TaskOut, Work};

mod work;

/// One stage of a staged run, as the command line names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Plan,
    Map { task: u32, of: u32 },
    Resolve { task: u32, of: u32 },
    Merge { task: u32, of: u32 },
    Finalize,
}

/// How a stage ended.
#[derive(Debug)]
pub enum StageOutcome {
    /// The task did its work; the text says what.
    Done(String),
    /// The task's outputs were already there (a retry, or a night already finalized).
    AlreadyDone(String),
    /// `finalize` committed the night.
    Finalized(Box<RunSummary>),
}

/// Version of the work folder's layout; a plan of another version is refused. 3: spill files
/// are batches with a header of their sizes (`ingest::spool`).
const WORK_FORMAT: u32 = 3;

/// The night as `plan` fixed it, read by every later task.
#[derive(Debug, Serialize, Deserialize)]
struct NightPlan {
    format: u32,
    run_id: String,
    /// The generation the night will commit, and the one it starts from.
    generation: u64,
    parent: Option<u64>,
    as_of: Timestamp,
    partitions: u32,
    chunk_bytes: usize,
    /// Every file the night covers (by display name) with its content hash when one was taken
    /// (32 hex digits); files that arrive later are left for the next night.
    files: BTreeMap<String, Option<String>>,
    /// The trait files to read, in order: map task i of M reads files i, i + M, ...
    to_read: Vec<String>,
    /// The ID-sync partitions the plan wrote, with their block indexes.
    idsync_parts: BTreeSet<String>,
    /// The files under `gen/` (tonight's ID-sync partitions, `.empty` markers included).
    gen_files: BTreeSet<String>,
    /// With an S3 work store: the checksum of the parent generation's manifest, mirrored
    /// under `state/` (16 hex digits).
    parent_manifest: Option<String>,
    idsync_receipt: IdSyncReceipt,
    idsync_ledger: Vec<LedgerLine>,
}

/// A ledger entry of an ID-sync file, as the plan keeps it for `finalize`.
#[derive(Debug, Serialize, Deserialize)]
struct LedgerLine {
    name: String,
    path: String,
    size: u64,
    hash: String,
    outcome: Outcome,
    reason: Option<String>,
}

/// What a map task did with one trait file.
#[derive(Debug, Serialize, Deserialize)]
struct MapFile {
    /// The file index (position among the night's files to read).
    file: u32,
    /// Why the file was rejected whole, or `None` when it was read.
    rejected: Option<String>,
    counters: Counters,
    capped_lines: Vec<u64>,
}

/// The contiguous range of `partitions` that task `task` of `of` owns.
fn part_range(task: u32, of: u32, partitions: u32) -> std::ops::Range<u32> {
    let at = |t: u32| (u64::from(t) * u64::from(partitions) / u64::from(of)) as u32;
    at(task)..at(task + 1)
}

fn hex(hash: u128) -> String {
    format!("{hash:032x}")
}

fn unhex(text: &str) -> anyhow::Result<u128> {
    u128::from_str_radix(text, 16).map_err(|_| anyhow!("{text:?} is not a 32-digit hex hash"))
}

/// Runs one stage task. `opts.as_of` is used by `plan` only; later tasks take the plan's.
pub fn stage(
    config: &Config,
    opts: &RunOptions,
    which: Stage,
    work: Option<&str>,
) -> Result<StageOutcome, RunError> {
    match which {
        Stage::Map { task, of } | Stage::Resolve { task, of } | Stage::Merge { task, of }
            if of == 0 || task >= of =>
        {
            return Err(
                anyhow!("--task {task} --of {of}: the task must be below the count").into(),
            );
        }
        _ => {}
    }
    let label = match which {
        Stage::Plan => "plan".to_owned(),
        Stage::Map { task, .. } => format!("map-{task}"),
        Stage::Resolve { task, .. } => format!("resolve-{task}"),
        Stage::Merge { task, .. } => format!("merge-{task}"),
        Stage::Finalize => "finalize".to_owned(),
    };
    let work = Work::open(config, work, &label)?;
    let threads = opts.threads.unwrap_or(config.run.threads);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| anyhow!("cannot start {threads} worker threads: {e}"))?;
    pool.install(|| match which {
        Stage::Plan => plan(config, opts, &work),
        Stage::Map { task, of } => map(config, opts, &work, &Task::new("map", task, of)),
        Stage::Resolve { task, of } => {
            resolve(config, opts, &work, &Task::new("resolve", task, of))
        }
        Stage::Merge { task, of } => merge(config, opts, &work, &Task::new("merge", task, of)),
        Stage::Finalize => finalize(config, opts, &work),
    })
}

/// The number of the state's current generation, if any.
fn current_generation(config: &Config) -> anyhow::Result<Option<u64>> {
    let state = crate::state::StateDir::open(&config.paths.state).with_context(|| {
        format!(
            "cannot open the state folder {}",
            config.paths.state.display()
        )
    })?;
    Ok(state
        .current()
        .context("cannot read the current state generation")?
        .map(|g| g.number))
}

/// A task's plan, its options and the plan's recorded files.
struct Started {
    plan: NightPlan,
    opts: RunOptions,
    recorded: BTreeMap<String, Option<u128>>,
    /// The mirror of the parent generation, for a task on a remote work store.
    state: Option<crate::state::StateDir>,
}

/// One task of the map, resolve or merge stage.
struct Task {
    stage: &'static str,
    task: u32,
    of: u32,
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} task {} of {}", self.stage, self.task, self.of)
    }
}

impl Started {
    /// Opens the state and plans the night as `plan` did, for task `t`.
    fn prepare<'a>(
        &'a self,
        config: &'a Config,
        t: &Task,
    ) -> Result<(Night<'a>, &'a NightPlan), RunError> {
        let (n, _) = prepare_task(
            config,
            &self.opts,
            &self.plan,
            &self.recorded,
            (&t.tmp_name(), false),
            self.state.clone(),
            &t.inbound_share(&self.plan),
        )?;
        Ok((n, &self.plan))
    }
}

impl Task {
    fn new(stage: &'static str, task: u32, of: u32) -> Task {
        Task { stage, task, of }
    }

    /// Where its outputs are published in the work folder.
    fn rel(&self) -> String {
        format!("{}/{}", self.stage, self.task)
    }

    fn tmp_name(&self) -> String {
        format!("{}-{}", self.stage, self.task)
    }

    /// The inbound files this task reads (fetched when the inbound root is remote): a map
    /// task's share of the trait files; none for the others.
    fn inbound_share(&self, plan: &NightPlan) -> BTreeSet<String> {
        if self.stage != "map" {
            return BTreeSet::new();
        }
        plan.to_read
            .iter()
            .skip(self.task as usize)
            .step_by(self.of as usize)
            .cloned()
            .collect()
    }

    /// What to prepare the night with; `None` when the task's outputs, or the whole night,
    /// are committed already.
    fn start(&self, work: &Work, opts: &RunOptions) -> anyhow::Result<Option<Started>> {
        let plan = work.plan()?;
        if work.finalized()? || work.done(&self.rel())? {
            return Ok(None);
        }
        Ok(Some(Started {
            opts: task_opts(opts, &plan),
            recorded: recorded_files(&plan)?,
            state: work.state_mirror(&plan)?,
            plan,
        }))
    }

    /// Publishes the task's outputs from `out` and says what it did (`what`).
    fn finish(
        &self,
        work: &Work,
        out: &Path,
        run_id: &str,
        what: String,
    ) -> Result<StageOutcome, RunError> {
        Ok(
            if work.publish(out, &self.rel(), (self.task, self.of, run_id))? {
                StageOutcome::Done(what)
            } else {
                StageOutcome::AlreadyDone(what)
            },
        )
    }
}

/// The options every task after `plan` runs with: the plan's as-of time and chunk size.
fn task_opts(opts: &RunOptions, plan: &NightPlan) -> RunOptions {
    RunOptions {
        as_of: plan.as_of,
        threads: opts.threads,
        chunk_bytes: Some(plan.chunk_bytes),
        ..RunOptions::default()
    }
}

/// [`prepare`] for a task after `plan`, checked against the plan.
fn prepare_task<'a>(
    config: &'a Config,
    opts: &'a RunOptions,
    plan: &NightPlan,
    recorded: &BTreeMap<String, Option<u128>>,
    (name, lock): (&str, bool),
    state: Option<crate::state::StateDir>,
    fetch_only: &BTreeSet<String>,
) -> Result<(Night<'a>, Option<crate::state::LockGuard>), RunError> {
    let (n, guard) = prepare(
        config,
        opts,
        &Prepare {
            lock,
            tmp_name: Some(format!("{}-{name}-pid-{}", plan.run_id, std::process::id())),
            recorded: Some(recorded),
            state,
            fetch_only: Some(fetch_only),
        },
    )?;
    let current = n.parent.as_ref().map(|g| g.number);
    if current != plan.parent || n.run_id != plan.run_id || n.partitions != plan.partitions {
        return Err(anyhow!(
            "the state in {} moved on since `segmill plan` (current generation {:?}, planned on \
             {:?}): another run committed; run `segmill plan` again",
            config.paths.state.display(),
            current,
            plan.parent
        )
        .into());
    }
    Ok((n, guard))
}

fn recorded_files(plan: &NightPlan) -> anyhow::Result<BTreeMap<String, Option<u128>>> {
    plan.files
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.as_deref().map(unhex).transpose()?)))
        .collect()
}

fn plan(config: &Config, opts: &RunOptions, work: &Work) -> Result<StageOutcome, RunError> {
    if work.finalized()? {
        // The previous night is done: its work folder goes.
        work.clear()?;
    }
    if let Some(existing) = work.read_json::<NightPlan>("plan.json")? {
        if existing.parent == current_generation(config)? {
            return Ok(StageOutcome::AlreadyDone(format!(
                "night {} is already planned in {}",
                existing.run_id,
                work.describe("")
            )));
        }
        // Planned on a state that another run has moved on from: plan again.
        tracing::warn!(
            planned = %existing.run_id,
            "the work folder's plan is stale (the state moved on); planning again"
        );
        work.clear()?;
    }
    let (n, _lock) = prepare(
        config,
        opts,
        &Prepare {
            lock: true,
            tmp_name: Some(format!("plan-pid-{}", std::process::id())),
            recorded: None,
            state: None,
            fetch_only: None,
        },
    )?;
    std::fs::create_dir_all(&work.dir)
        .with_context(|| format!("cannot create {}", work.dir.display()))?;
    let mut files: BTreeMap<String, Option<String>> = BTreeMap::new();
    for f in &n.plan.trait_files {
        files.insert(f.found.display.clone(), f.hash.map(hex));
    }
    for f in &n.plan.idsync_files {
        files.insert(f.found.display.clone(), f.hash.map(hex));
    }
    for ((r, hash), _) in &n.plan.name_rejected {
        files.insert(r.display.clone(), hash.map(hex));
    }
    for name in &n.plan.ignored {
        files.insert(name.clone(), None);
    }
    // Tonight's ID-sync mappings go into the next generation's ID-sync partitions now, so
    // that every resolve task looks IDs up in them.
    let _ = std::fs::remove_dir_all(work.path("gen"));
    let staged = staged::Staged::loose(work.path("gen"), None);
    let parent_file = |name: &str| n.parent_file(name);
    let idsync = apply_idsync(&n.plan, n.partitions, n.chunk_bytes, &parent_file, &staged)?;
    let mut gen_files = Vec::new();
    if work.path("gen").exists() {
        staged::walk(&work.path("gen"), "", &mut gen_files)?;
    }
    let night = NightPlan {
        format: WORK_FORMAT,
        run_id: n.run_id.clone(),
        generation: n.gen_number,
        parent: n.parent.as_ref().map(|g| g.number),
        as_of: opts.as_of,
        partitions: n.partitions,
        chunk_bytes: n.chunk_bytes,
        files,
        to_read: n
            .to_read
            .iter()
            .map(|&i| n.plan.trait_files[i].found.display.clone())
            .collect(),
        idsync_parts: idsync.parts,
        gen_files: gen_files.into_iter().collect(),
        parent_manifest: work
            .push_state(n.parent.as_ref())?
            .map(|sum| format!("{sum:016x}")),
        idsync_receipt: idsync.receipt,
        idsync_ledger: idsync
            .ledger
            .iter()
            .map(|e| LedgerLine {
                name: e.name.clone(),
                path: e.path.clone(),
                size: e.size,
                hash: hex(e.hash),
                outcome: e.outcome,
                reason: e.reason.clone(),
            })
            .collect(),
    };
    let bytes = serde_json::to_vec_pretty(&night).map_err(anyhow::Error::from)?;
    if !work.put_plan(&bytes, &night.gen_files)? {
        return Ok(StageOutcome::AlreadyDone(format!(
            "another `segmill plan` planned the night in {} first",
            work.describe("")
        )));
    }
    Ok(StageOutcome::Done(format!(
        "planned night {}: {} trait files to read, {} ID-sync partitions written, in {}",
        n.run_id,
        n.to_read.len(),
        night
            .idsync_parts
            .iter()
            .filter(|name| !name.ends_with(crate::state::INDEX_SUFFIX))
            .count(),
        work.describe("")
    )))
}

fn map(
    config: &Config,
    opts: &RunOptions,
    work: &Work,
    t: &Task,
) -> Result<StageOutcome, RunError> {
    let Some(started) = t.start(work, opts)? else {
        return Ok(StageOutcome::AlreadyDone(t.to_string()));
    };
    let (n, plan) = started.prepare(config, t)?;
    let out = work.staging(&t.rel())?;
    // The two spools share the op budget.
    let budget = config.run.ops_memory_bytes / 2;
    let mut spool = Spool::new(n.partitions, budget, out.join("ops"));
    let mut pending = Spool::new(n.partitions, budget, out.join("pending"));
    let mut pgp = ops::PgpKeys::new(config);
    let mut files = Vec::new();
    for file in (t.task as usize..n.to_read.len()).step_by(t.of as usize) {
        let result = n.read_trait_file(file as u32, &mut pgp, None, &mut spool, &mut pending)?;
        files.push(match result {
            Ok(rf) => {
                write_rejects(&out.join(format!("rejects-{file}")), &rf.rejected)?;
                MapFile {
                    file: file as u32,
                    rejected: None,
                    counters: rf.cap.counters,
                    capped_lines: rf.cap.capped_lines,
                }
            }
            Err(reason) => MapFile {
                file: file as u32,
                rejected: Some(reason),
                counters: Counters::default(),
                capped_lines: Vec::new(),
            },
        });
    }
    spool
        .spill_all()
        .and_then(|()| pending.spill_all())
        .map_err(|e| anyhow!("cannot write the map task's ops: {e}"))?;
    write_atomic(
        &out.join("files.json"),
        &serde_json::to_vec(&files).map_err(anyhow::Error::from)?,
    )?;
    let what = format!("{t}: {} files", files.len());
    t.finish(work, &out, &plan.run_id, what)
}

/// A map task's rejected lines: per line its number, category, reason and text.
fn write_rejects(path: &Path, rows: &[RejectRow]) -> anyhow::Result<()> {
    let mut w = crate::codec::Writer::default();
    for r in rows {
        w.varint(r.line);
        let cat = Category::ALL
            .iter()
            .position(|c| *c == r.category)
            .unwrap_or(0);
        w.u8(cat as u8);
        w.short_bytes(r.reason.as_bytes());
        w.short_bytes(&r.text);
    }
    write_atomic(path, &w.buf)?;
    Ok(())
}

fn read_rejects(path: &Path) -> anyhow::Result<Vec<RejectRow>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut r = crate::codec::Reader::new(&bytes);
    let mut rows = Vec::new();
    let bad = |e: crate::codec::Truncated| anyhow!("{}: {e}", path.display());
    while !r.is_empty() {
        let line = r.varint().map_err(bad)?;
        let category = *Category::ALL
            .get(usize::from(r.u8().map_err(bad)?))
            .ok_or_else(|| anyhow!("{}: unknown category", path.display()))?;
        let reason = String::from_utf8_lossy(r.short_bytes().map_err(bad)?).into_owned();
        let text = r.short_bytes().map_err(bad)?.to_vec();
        rows.push(RejectRow {
            line,
            category,
            reason: reason.into(),
            text,
        });
    }
    Ok(rows)
}

fn resolve(
    config: &Config,
    opts: &RunOptions,
    work: &Work,
    t: &Task,
) -> Result<StageOutcome, RunError> {
    let Some(started) = t.start(work, opts)? else {
        return Ok(StageOutcome::AlreadyDone(t.to_string()));
    };
    let (n, plan) = started.prepare(config, t)?;
    let maps = work.tasks("map", &plan.run_id)?;
    let range = part_range(t.task, t.of, n.partitions);
    let tonight = staged::Staged::loose(work.path("gen"), Some(work.earlier(plan)));
    let out = work.staging(&t.rel())?;
    let mut spool = Spool::new(n.partitions, config.run.ops_memory_bytes, out.join("ops"));
    let parts: Vec<u32> = range.collect();
    let pending: Vec<String> = parts
        .iter()
        .map(|&q| format!("pending/{}", spill_file(q)))
        .collect();
    work.prefetch(&maps, &pending)?;
    let take = |q: u32| -> anyhow::Result<Vec<OpBuf>> {
        let mut bufs: Vec<OpBuf> = Vec::new();
        for m in &maps {
            if let Some(path) = m.file(work, &format!("pending/{}", spill_file(q)))? {
                bufs.extend(read_spilled(&path)?);
            }
        }
        Ok(bufs)
    };
    let unmatched = n.resolve_parts(&tonight, &parts, &take, &mut spool)?;
    spool
        .spill_all()
        .map_err(|e| anyhow!("cannot write the resolve task's ops: {e}"))?;
    write_atomic(&out.join("unmatched"), &encode_unmatched(&unmatched))?;
    let what = format!(
        "{t}: ID-sync partitions {:?}, {} unmatched lines",
        part_range(t.task, t.of, n.partitions),
        unmatched.values().map(Vec::len).sum::<usize>()
    );
    t.finish(work, &out, &plan.run_id, what)
}

fn merge(
    config: &Config,
    opts: &RunOptions,
    work: &Work,
    t: &Task,
) -> Result<StageOutcome, RunError> {
    let Some(started) = t.start(work, opts)? else {
        return Ok(StageOutcome::AlreadyDone(t.to_string()));
    };
    let (n, plan) = started.prepare(config, t)?;
    let mut inputs = work.tasks("map", &plan.run_id)?;
    inputs.extend(work.tasks("resolve", &plan.run_id)?);
    let metas = n.file_metas();
    let ctx = n.merge_ctx(&metas);
    // This task's state files go with its outputs; `finalize` adopts them.
    let out = work.staging(&t.rel())?;
    let staged = staged::Staged::loose(out.join("gen"), Some(work.earlier(plan)));
    let range = part_range(t.task, t.of, n.partitions);
    let ops: Vec<String> = range
        .clone()
        .map(|p| format!("ops/{}", spill_file(p)))
        .collect();
    work.prefetch(&inputs, &ops)?;
    let results: Vec<anyhow::Result<(u32, Option<PartOut>)>> = range
        .clone()
        .into_par_iter()
        .map(|p| {
            let mut bufs: Vec<OpBuf> = Vec::new();
            for input in &inputs {
                if let Some(path) = input.file(work, &format!("ops/{}", spill_file(p)))? {
                    bufs.extend(read_spilled(&path)?);
                }
            }
            let ops = (!bufs.is_empty()).then_some(bufs);
            Ok((p, n.merge_part(&ctx, p, ops, &staged)?))
        })
        .collect();
    let mut parts: BTreeMap<u32, Option<PartOut>> = BTreeMap::new();
    for r in results {
        let (p, out) = r?;
        parts.insert(p, out);
    }
    // The exports of these partitions: diffed here, merged by finalize.
    let meta = n.parent_meta.as_ref();
    let mut customer = Vec::with_capacity(n.partitions as usize);
    let mut changed_generation = Vec::with_capacity(n.partitions as usize);
    for p in 0..n.partitions {
        let i = p as usize;
        customer.push(match parts.get(&p) {
            Some(Some(o)) => o.has_customer,
            _ => meta.and_then(|m| m.customer_partitions.get(i).copied()) == Some(true),
        });
        changed_generation.push(
            if matches!(parts.get(&p), Some(Some(o)) if changed_segments(o)) {
                n.gen_number
            } else {
                meta.and_then(|m| m.changed_generation.get(i).copied())
                    .unwrap_or(0)
            },
        );
    }
    let changes: Vec<Option<&[u8]>> = (0..n.partitions)
        .map(|p| match parts.get(&p) {
            Some(Some(o)) => o.changes.as_deref(),
            _ => None,
        })
        .collect();
    let facts = PartFacts {
        customer: &customer,
        changed_generation: &changed_generation,
        cross_synced_tonight: n.cross_synced(&plan.idsync_parts),
        changes: &changes,
    };
    let exports = n.compute_exports(&staged, &facts, range.clone(), &|did| {
        let dir = out.join("export").join(did.to_string());
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(dir)
    })?;
    for e in exports {
        // They move with the task's folder when it is published.
        e.runs.into_files();
    }
    write_atomic(
        &out.join("parts.json"),
        &serde_json::to_vec(&parts).map_err(anyhow::Error::from)?,
    )?;
    let what = format!("{t}: profile partitions {range:?}");
    t.finish(work, &out, &plan.run_id, what)
}

fn finalize(config: &Config, opts: &RunOptions, work: &Work) -> Result<StageOutcome, RunError> {
    if work.finalized()? {
        return Ok(StageOutcome::AlreadyDone(format!(
            "the night in {} is already finalized",
            work.describe("")
        )));
    }
    let plan = work.plan()?;
    if current_generation(config)? == Some(plan.generation) {
        // Committed by an earlier attempt that was stopped before it said so.
        let state = crate::state::StateDir::open(&config.paths.state)?;
        let committed = state
            .current()?
            .and_then(|g| g.manifest.meta.get("run_id").cloned())
            .and_then(|v| v.as_str().map(str::to_owned));
        if committed.as_deref() == Some(plan.run_id.as_str()) {
            work.mark_finalized(&plan.run_id)?;
            return Ok(StageOutcome::AlreadyDone(format!(
                "night {} is already committed",
                plan.run_id
            )));
        }
    }
    let opts = task_opts(opts, &plan);
    let recorded = recorded_files(&plan)?;
    // Inbound files are fetched only where lines are read again (rejected by resolve or
    // over the cap).
    let (mut n, _lock) = prepare_task(
        config,
        &opts,
        &plan,
        &recorded,
        ("finalize", true),
        None,
        &BTreeSet::new(),
    )?;

    // Trait files: what map found, plus what resolve found unmatched.
    let maps = work.tasks("map", &plan.run_id)?;
    let mut listed: Vec<String> = (0..plan.to_read.len())
        .map(|f| format!("rejects-{f}"))
        .collect();
    listed.push("files.json".into());
    work.prefetch(&maps, &listed)?;
    let mut map_files: BTreeMap<u32, (MapFile, &TaskOut)> = BTreeMap::new();
    for m in &maps {
        let list: Vec<MapFile> = read_json_file(&m.required(work, "files.json")?)?;
        for f in list {
            map_files.insert(f.file, (f, m));
        }
    }
    let mut unmatched: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    let resolves = work.tasks("resolve", &plan.run_id)?;
    work.prefetch(&resolves, &["unmatched".to_owned()])?;
    for r in &resolves {
        decode_unmatched(&r.required(work, "unmatched")?, &mut unmatched)?;
    }
    let mut pgp = ops::PgpKeys::new(config);
    let mut read: Vec<Option<ReadFile>> = Vec::with_capacity(n.to_read.len());
    let mut trait_outcomes: Vec<(usize, TraitFileResult)> = Vec::new();
    for (file, plan_idx) in n.to_read.clone().into_iter().enumerate() {
        let Some((mf, m)) = map_files.remove(&(file as u32)) else {
            return Err(anyhow!("no map task read file {file} of the night").into());
        };
        if let Some(reason) = mf.rejected {
            trait_outcomes.push((plan_idx, TraitFileResult::Rejected(reason)));
            read.push(None);
            continue;
        }
        let mut lines = unmatched.remove(&(file as u32)).unwrap_or_default();
        lines.sort_unstable();
        // The rejects file quotes unmatched and capped lines from the source.
        let reread = !lines.is_empty() || !mf.capped_lines.is_empty();
        if reread {
            n.fetch_trait_file(plan_idx)?;
        }
        let p = &n.plan.trait_files[plan_idx];
        let (source, gzip) = if p.name.pgp && reread {
            match pgp.decrypt(&p.found.path, &p.found.display, &n.tmp)? {
                ops::Decrypted::Plain(path) => (path, false),
                ops::Decrypted::Rejected(reason) => {
                    return Err(anyhow!(
                        "{}: decrypted by its map task, but not now: {reason}",
                        p.found.display
                    )
                    .into());
                }
            }
        } else {
            (p.found.path.clone(), p.name.gzip)
        };
        trait_outcomes.push((plan_idx, TraitFileResult::Read(file)));
        let mut rf = ReadFile {
            plan_idx,
            source,
            gzip,
            rejected: read_rejects(&m.required(work, &format!("rejects-{file}"))?)?,
            unmatched: Vec::new(),
            cap: crate::ingest::cap::CapOutcome {
                counters: mf.counters,
                capped_lines: mf.capped_lines,
            },
        };
        n.add_unmatched(&mut rf, lines);
        read.push(Some(rf));
    }

    // Profile partitions: what merge made.
    let mut parts: Vec<Option<PartOut>> = (0..n.partitions).map(|_| None).collect();
    let mut covered = 0u32;
    let merges = work.tasks("merge", &plan.run_id)?;
    for m in &merges {
        let list: BTreeMap<u32, Option<PartOut>> =
            read_json_file(&m.required(work, "parts.json")?)?;
        for (p, out) in list {
            if let Some(slot) = parts.get_mut(p as usize) {
                *slot = out;
                covered += 1;
            }
        }
    }
    if covered != n.partitions {
        return Err(anyhow!(
            "the merge tasks covered {covered} of {} profile partitions",
            n.partitions
        )
        .into());
    }

    // The state files the stages wrote become part of the new generation.
    let staged = staged::Staged::new(Some(n.state.begin(n.parent.as_ref())?));
    staged.adopt_loose(&work.plan_gen(&plan)?)?;
    for m in &merges {
        staged.adopt_loose(&m.folder(work, "gen")?)?;
    }
    let idsync = IdSyncResult {
        parts: plan.idsync_parts.clone(),
        receipt: plan.idsync_receipt.clone(),
        ledger: plan
            .idsync_ledger
            .iter()
            .map(|l| {
                Ok(LedgerEntry {
                    name: l.name.clone(),
                    path: l.path.clone(),
                    size: l.size,
                    hash: unhex(&l.hash)?,
                    outcome: l.outcome,
                    reason: l.reason.clone(),
                    run_id: String::new(),
                })
            })
            .collect::<anyhow::Result<_>>()?,
    };
    // Every destination's run files, in partition order, for the k-way merge.
    let mut exports = Vec::new();
    for dest in config.destinations.values() {
        let mut files: Vec<(String, PathBuf)> = Vec::new();
        let sub = format!("export/{}", dest.id);
        for m in &merges {
            m.folder(work, &sub)?;
            for rel in m.under(&sub).filter(|f| f.ends_with(".run")) {
                let name = rel.rsplit('/').next().unwrap_or(rel).to_owned();
                files.push((name, m.required(work, rel)?));
            }
        }
        files.sort();
        let traits = n
            .catalog
            .templates
            .get(&dest.id)
            .is_some_and(crate::outbound::template::Template::uses_traits);
        exports.push(crate::outbound::export::DestExport {
            view: crate::outbound::export::DestinationView::new(config, dest, false),
            runs: crate::outbound::export::Runs::from_files(
                files.into_iter().map(|(_, p)| p).collect(),
                traits,
            ),
        });
    }
    let job_clock = ops::JobClock::new();
    let tonight = Tonight {
        idsync,
        read,
        trait_outcomes,
        parts,
        exports: Some(exports),
    };
    let summary = finish(n, staged, tonight, &job_clock)?;
    // A staged run's own failpoint (not in `failpoint::POINTS`, which `run` passes): killed
    // here, the night is committed but the work folder does not say so yet.
    crate::failpoint::hit("finalize-committed").context("finalize-committed")?;
    work.mark_finalized(&summary.run_id)?;
    Ok(StageOutcome::Finalized(Box::new(summary)))
}

/// A resolve task's unmatched lines: per file, its index, the count and the sorted line
/// numbers as varint deltas (tens of millions of lines on a large night).
fn encode_unmatched(unmatched: &BTreeMap<u32, Vec<u64>>) -> Vec<u8> {
    let mut w = crate::codec::Writer::default();
    for (file, lines) in unmatched {
        w.varint(u64::from(*file));
        w.varint(lines.len() as u64);
        let mut last = 0;
        for &line in lines {
            w.varint(line - last);
            last = line;
        }
    }
    w.buf
}

/// Reads what [`encode_unmatched`] wrote at `path`, adding to `into`.
fn decode_unmatched(path: &Path, into: &mut BTreeMap<u32, Vec<u64>>) -> anyhow::Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let bad = |e: crate::codec::Truncated| anyhow!("{}: {e}", path.display());
    let mut r = crate::codec::Reader::new(&bytes);
    while !r.is_empty() {
        let file = u32::try_from(r.varint().map_err(bad)?)
            .map_err(|_| anyhow!("{}: file index out of range", path.display()))?;
        let count = r.varint().map_err(bad)?;
        let lines = into.entry(file).or_default();
        let mut line = 0u64;
        for _ in 0..count {
            line = line
                .checked_add(r.varint().map_err(bad)?)
                .ok_or_else(|| anyhow!("{}: line number out of range", path.display()))?;
            lines.push(line);
        }
    }
    Ok(())
}

/// A stage file's JSON.
fn read_json_file<T: for<'de> Deserialize<'de>>(path: &Path) -> anyhow::Result<T> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: not a segmill stage file", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_ranges_cover_every_partition_once() {
        for (of, partitions) in [(1, 8), (3, 8), (4, 8), (7, 64), (8, 8)] {
            let ranges: Vec<_> = (0..of).map(|t| part_range(t, of, partitions)).collect();
            assert_eq!(ranges.first().map(|r| r.start), Some(0));
            assert_eq!(ranges.last().map(|r| r.end), Some(partitions));
            for pair in ranges.windows(2) {
                assert_eq!(pair[0].end, pair[1].start, "{of} of {partitions}");
            }
        }
    }

    #[test]
    fn unmatched_lines_round_trip_and_truncation_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("unmatched");
        let written: BTreeMap<u32, Vec<u64>> = [
            (0, vec![1, 1, 7, 1 << 40]),
            (3, vec![]),
            (u32::MAX, vec![u64::MAX]),
        ]
        .into();
        std::fs::write(&path, encode_unmatched(&written)).unwrap();
        let mut read = BTreeMap::from([(3, vec![9])]);
        decode_unmatched(&path, &mut read).unwrap();
        assert_eq!(read[&0], written[&0]);
        assert_eq!(read[&3], [9], "lines are added to what is there");
        assert_eq!(read[&u32::MAX], [u64::MAX]);

        let bytes = encode_unmatched(&written);
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        let err = decode_unmatched(&path, &mut BTreeMap::new()).unwrap_err();
        assert!(err.to_string().contains("unmatched"), "{err}");
    }
}
