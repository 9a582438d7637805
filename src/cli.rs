//! Command-line interface. The doc comments are the `--help` text.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// segmill: onboard offline audience data (AAM server-to-server batch files) into trait
/// profiles, with exact receipts for every job.
///
/// Exit codes: 0 the run completed and nothing was rejected; 1 the run completed but a file or
/// line was rejected; 2 the run failed and committed nothing; 3 another run holds the lock.
#[derive(Debug, Parser)]
#[command(name = "segmill", version)]
pub struct Cli {
    /// The config file.
    #[arg(long, global = true, default_value = "segmill.toml")]
    pub config: PathBuf,
    /// Worker threads (default: the config's `run.threads`, 0 = all cores).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// Log lines on stderr: `text` for people, `json` (one object a line) for log shippers.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Which log lines to show, as a `RUST_LOG` filter: `warn`, `info`, `segmill=debug`...
    /// (default: `RUST_LOG`, else `warn`).
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The nightly job: discover new inbound files, process them, write receipts, commit state.
    Run(RunArgs),
    /// Dry run: name and content checks plus the would-be receipt against the real ID-sync
    /// table and profiles. Changes nothing.
    Validate {
        /// Inbound files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The run's logical time, RFC 3339 in UTC (default: now).
        #[arg(long)]
        as_of: Option<String>,
        /// Also say why this ID does or does not match, for the data sources of FILES: never
        /// synced, differs only in case, looks hashed, wrong device-ID format...
        #[arg(long, value_name = "ID")]
        explain: Option<String>,
    },
    /// Write a destination's files now: what changed since its last export (`iter`), or every
    /// member with `--full`.
    Export {
        /// The destination ID.
        #[arg(long = "destination", value_name = "ID")]
        destination: u32,
        /// Send every current member, not only the changes.
        #[arg(long)]
        full: bool,
        /// The export's logical time (file-name timestamp), RFC 3339 in UTC (default: now).
        #[arg(long)]
        as_of: Option<String>,
    },
    /// Replay the inbound `date=` folders day by day, each day one run with as-of at the day's
    /// last second (UTC). Resumable: days the state already covers are skipped.
    Backfill(BackfillArgs),
    /// ID-sync tables.
    Idsync {
        #[command(subcommand)]
        command: IdsyncCommand,
    },
    /// Staged run, step 1 of 5 (one task): discover the night's files, skip duplicates, apply
    /// tonight's ID-sync files and write the plan every later task reads. The stages run in
    /// order (plan, map, resolve, merge, finalize); the tasks of one stage may run at once, on
    /// any machines that mount the state and work folders.
    Plan(PlanArgs),
    /// Staged run, step 2 (M tasks): parse and validate the plan's trait files i, i+M, i+2M...
    /// into records bucketed by ID-sync partition.
    Map(TaskArgs),
    /// Staged run, step 3 (N tasks): look up the customer IDs of task i's share of the ID-sync
    /// partitions; write ops bucketed by profile partition.
    Resolve(TaskArgs),
    /// Staged run, step 4 (N tasks): merge task i's share of the profile partitions, expire
    /// traits and evaluate segments.
    Merge(TaskArgs),
    /// Staged run, step 5 (one task): exports, receipts, ledger and run report, and the switch
    /// to the new state generation. Exit codes as for `run`.
    Finalize(WorkArgs),
    /// Synthetic sample data of any size (a drop folder, ID-sync files and a config) from a
    /// fixed seed, for benchmarks and demos.
    Gen(GenArgs),
    /// What segmill knows.
    Inspect {
        #[command(subcommand)]
        command: InspectCommand,
    },
    /// The state folder.
    State {
        #[command(subcommand)]
        command: StateCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// Check the state folder without changing it: the current generation's manifest, every
    /// file's size and checksum, and that the ledger, partitions and metadata decode. Prints one
    /// line per problem and a summary; exit 0 when clean, 2 when anything is wrong.
    Verify {
        /// Check every kept generation, not only the current one.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The run's logical time: realization time and TTL clock. RFC 3339 in UTC, e.g.
    /// 2026-11-22T02:00:00Z (default: now).
    #[arg(long)]
    pub as_of: Option<String>,
    /// Process this file name again although the ledger has it (repeatable).
    #[arg(long, value_name = "NAME")]
    pub reprocess: Vec<String>,
    /// Parser chunk size in bytes (default: the config's `run.chunk_bytes`).
    #[arg(long, hide = true)]
    pub chunk_bytes: Option<usize>,
    /// Where customer IDs are looked up: in the parse (`fused`), after it a few ID-sync
    /// partitions at a time (`deferred`), or `auto` (deferred on a night smaller than the
    /// stored ID-sync tables). The outputs are the same; for tests and benchmarks.
    #[arg(long, hide = true, value_enum, default_value = "auto")]
    pub lookups: LookupsArg,
}

/// See [`RunArgs::lookups`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LookupsArg {
    Auto,
    Fused,
    Deferred,
}

#[derive(Debug, clap::Args)]
pub struct WorkArgs {
    /// The night's work store: a folder every task mounts (default: `<paths.state>/stage`), or
    /// `s3://bucket/prefix`, which tasks reach without sharing a folder (each keeps a local
    /// copy of what it reads under the temp folder, `TMPDIR`).
    #[arg(long, value_name = "DIR|s3://bucket/prefix")]
    pub work: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub work: WorkArgs,
    /// The night's logical time, RFC 3339 in UTC (default: now); every later task uses it.
    #[arg(long)]
    pub as_of: Option<String>,
    /// Parser chunk size in bytes (default: the config's `run.chunk_bytes`).
    #[arg(long, hide = true)]
    pub chunk_bytes: Option<usize>,
}

#[derive(Debug, clap::Args)]
pub struct TaskArgs {
    #[command(flatten)]
    pub work: WorkArgs,
    /// This task's index, from 0 (default: `JOB_COMPLETION_INDEX` of a Kubernetes Indexed Job,
    /// else `AWS_BATCH_JOB_ARRAY_INDEX` of an AWS Batch array job).
    #[arg(long)]
    pub task: Option<u32>,
    /// How many tasks the stage has.
    #[arg(long)]
    pub of: u32,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, clap::Args)]
pub struct BackfillArgs {
    /// First day, YYYY-MM-DD.
    #[arg(long)]
    pub from: String,
    /// Last day (inclusive), YYYY-MM-DD.
    #[arg(long)]
    pub to: String,
    /// Write no destination files; the changes are exported by the next run or export.
    #[arg(long)]
    pub no_export: bool,
}

#[derive(Debug, Subcommand)]
pub enum IdsyncCommand {
    /// Bulk-load ID-sync files (adobe_id_..., c2c_id_...) into the state.
    Import {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The import's logical time, RFC 3339 in UTC (default: now).
        #[arg(long)]
        as_of: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum InspectCommand {
    /// One user's traits: data source, realized-at and expiry.
    Profile {
        /// An AAM UUID, or with --dpid a customer or device ID.
        id: String,
        /// The ID's data source (a customer DPID or a global device DPID).
        #[arg(long)]
        dpid: Option<u32>,
    },
    /// Store-wide counts.
    Stats,
}

#[derive(Debug, clap::Args)]
pub struct GenArgs {
    /// Folder to create (must be missing or empty).
    #[arg(long)]
    pub out: PathBuf,
    /// Synced customer IDs (ID-sync rows).
    #[arg(long, default_value_t = 100_000)]
    pub ids: u64,
    /// Inbound trait-file lines in total.
    #[arg(long, default_value_t = 1_000_000)]
    pub lines: u64,
    /// Random seed: the same options and seed give the same bytes.
    #[arg(long, default_value_t = crate::generator::DEFAULT_SEED)]
    pub seed: u64,
    /// Trait files (default: one per 2 million lines).
    #[arg(long)]
    pub files: Option<u32>,
    /// Onboarded traits in the catalog.
    #[arg(long, default_value_t = crate::generator::DEFAULT_TRAITS)]
    pub traits: u32,
    /// Segments in the catalog.
    #[arg(long, default_value_t = crate::generator::DEFAULT_SEGMENTS)]
    pub segments: u32,
    /// The `date=` folder of the drop.
    #[arg(long, default_value = crate::generator::DEFAULT_DAY)]
    pub day: String,
}
