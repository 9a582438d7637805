//! `segmill.toml`: loading, validating and exposing the configuration and the catalog (data
//! sources, traits, segments, destinations), CONTRACT §7.
//!
//! Input: a path to the config file (and the files its `include` list names). Output: a
//! validated [`Config`] whose maps are keyed by ID, with every relative path already resolved
//! against the config file's folder. Rules and templates stay unparsed strings here; the rules
//! and outbound stages compile them.
//!
//! Errors name the file, the key and the problem. Syntax and type errors carry toml's line and
//! column; they deliberately do not echo the offending source line, because the file may
//! hold secrets (`[s3]`, `[ftp]`). FTP URLs may carry a password, so [`Location`]
//! redacts it in `Display` and `Debug`.
//!
//! Not done here: resolving `threads = 0` against the machine beyond [`RunSettings::threads`],
//! checking that `partitions` matches an existing state (the state stage does that), parsing
//! trait or segment rules.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::model::{AAM_UUID_DPID, Dpid, TraitId, device_format};
use crate::storage::StorageSettings;

/// Default parser chunk: 4 MiB is large enough to amortise per-chunk work and small enough
/// that two cores get many chunks from a 200 MB file.
pub const DEFAULT_CHUNK_BYTES: usize = 4 * 1024 * 1024;
/// Default number of state partitions. Fixed once a state exists.
pub const DEFAULT_PARTITIONS: u32 = 64;
/// Upper bound of `run.partitions`: the state keeps a partition number in 16 bits' worth of
/// range, and more partitions than this only adds files without adding parallelism.
pub const MAX_PARTITIONS: u32 = 65_536;
/// Upper bound of `run.threads`; far above any sensible machine, it catches typos such as
/// `threads = 40000`.
pub const MAX_THREADS: usize = 1024;
/// Default number of state generations kept: the current one plus two to roll back to.
pub const DEFAULT_KEEP_GENERATIONS: u32 = 3;
/// Default trait TTL in days, AAM's default (AAM-REFERENCE §2.10).
pub const DEFAULT_TTL_DAYS: u32 = 120;
/// Default outbound split size: 1 GiB, AAM's recommended uncompressed file size.
pub const DEFAULT_SPLIT_BYTES: u64 = 1024 * 1024 * 1024;

/// Most problems listed in one [`ConfigError::Invalid`] message; the rest are counted.
const MAX_DISPLAYED_PROBLEMS: usize = 50;

/// A validated `segmill.toml`.
#[derive(Clone, Debug)]
pub struct Config {
    /// The config file this was loaded from, as given to [`Config::load`].
    pub path: PathBuf,
    /// Where inbound files come from and where state and outputs go.
    pub paths: Paths,
    /// Tuning knobs of a run.
    pub run: RunSettings,
    /// Data sources by DPID. Never holds DPID 0 or a global device DPID.
    pub data_sources: BTreeMap<Dpid, DataSource>,
    /// Onboarded traits by trait ID; each one's data source is in `data_sources`.
    pub traits: BTreeMap<TraitId, Trait>,
    /// Segments by segment ID.
    pub segments: BTreeMap<u32, Segment>,
    /// Destinations by destination ID (AAM's DID / ORDER_ID); each listed segment exists.
    pub destinations: BTreeMap<u32, Destination>,
    /// S3 and FTP settings from `[s3]` and `[ftp]`, secrets already read from the environment
    /// variables the config names. Unset fields fall back to the AWS environment when a store
    /// is opened ([`StorageSettings::with_env`]). `Debug` never shows a secret.
    pub storage: StorageSettings,
    /// `[pgp]`: the private key that decrypts `.pgp`/`.gpg` inbound files.
    pub pgp: Option<PgpSettings>,
    /// `[smtp]`: where receipt e-mails are sent through.
    pub smtp: Option<crate::report::mail::MailSettings>,
    /// `[metrics] path`: the Prometheus text file written after each committed run.
    pub metrics: Option<PathBuf>,
}

/// The `[pgp]` table.
#[derive(Clone, PartialEq, Eq)]
pub struct PgpSettings {
    /// The OpenPGP secret key file, resolved against the config's folder.
    pub private_key: PathBuf,
    /// The key's passphrase, read from the variable `passphrase_env` names. Never printed.
    pub passphrase: Option<String>,
}

impl fmt::Debug for PgpSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgpSettings")
            .field("private_key", &self.private_key)
            .field("passphrase", &self.passphrase.as_ref().map(|_| "***"))
            .finish()
    }
}

/// The `[paths]` table, resolved against the config file's folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    /// The inbound root: a local folder, an S3 prefix or an FTP URL.
    pub inbound: Location,
    /// The state folder (generations, ledger, receipts, run reports). Always local.
    pub state: PathBuf,
    /// Default root for outbound files. Always local.
    pub outbound: PathBuf,
}

/// The `[run]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunSettings {
    /// Worker threads; 0 means one per available core. At most [`MAX_THREADS`].
    pub threads: usize,
    /// Parser chunk size in bytes, at least 1 (tiny values are legal, for tests).
    pub chunk_bytes: usize,
    /// Number of state partitions, `1..=MAX_PARTITIONS`.
    pub partitions: u32,
    /// State generations to keep, at least 1.
    pub keep_generations: u32,
    /// Write `<name>.processed` beside each processed inbound file, as AAM did.
    pub markers: bool,
    /// Bytes of tonight's ops held in memory before the largest partitions spill to the run's
    /// temporary folder (DESIGN "Memory and scale"); at least 1 (tiny values are legal, for
    /// tests: everything spills).
    pub ops_memory_bytes: usize,
    /// A night that changes little of a profile partition writes what changed beside it (a
    /// delta) instead of rewriting it whole (`profile::merge::delta_limit`). Off: every
    /// changed partition is written whole, and a delta left by an earlier night is folded in.
    pub profile_deltas: bool,
}

/// Default of `run.ops_memory_bytes`: 512 MiB. With the ID index and the per-user cap's table
/// this keeps the issue's 20M-ID / 24M-line night under 3.5 GB; spilling costs little (the
/// spill files are written once and read once, mostly from the page cache).
pub const DEFAULT_OPS_MEMORY_BYTES: usize = 512 << 20;

impl Default for RunSettings {
    fn default() -> Self {
        RunSettings {
            threads: 0,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            partitions: DEFAULT_PARTITIONS,
            keep_generations: DEFAULT_KEEP_GENERATIONS,
            markers: false,
            ops_memory_bytes: DEFAULT_OPS_MEMORY_BYTES,
            profile_deltas: true,
        }
    }
}

impl RunSettings {
    /// The thread count to use: `threads`, or the available parallelism when it is 0
    /// (1 if even that is unknown).
    pub fn effective_threads(&self) -> usize {
        if self.threads > 0 {
            return self.threads;
        }
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// How a data source's IDs are validated (CONTRACT §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdType {
    /// Customer IDs (DPUUIDs), resolved through the ID-sync index.
    Customer,
    /// AAM UUIDs: exactly 38 digits.
    AamUuid,
}

/// A `[[data_source]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataSource {
    /// The DPID; never 0 nor a global device DPID.
    pub id: Dpid,
    /// Human name, non-empty; shown in receipts.
    pub name: String,
    /// How IDs in files of this DPID are validated.
    pub id_type: IdType,
    /// Keep traits of unsynced customer IDs on a customer-ID profile (CONTRACT §3).
    pub cross_device: bool,
    /// Who gets this data source's receipts by e-mail; may be empty.
    pub receipt_emails: Vec<String>,
}

/// A `[[trait]]`: an onboarded trait.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trait {
    /// The trait ID (`d_sid`).
    pub id: TraitId,
    /// The owning data source; always defined in [`Config::data_sources`].
    pub data_source: Dpid,
    /// The trait-builder rule, unparsed; `None` qualifies only by `d_sid`.
    pub rule: Option<String>,
    /// Days a realization lives; 0 means it never expires.
    pub ttl_days: u32,
}

/// A `[[segment]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// The segment ID.
    pub id: u32,
    /// The code-view rule, non-empty; validated to parse.
    pub rule: String,
    /// A paused segment keeps evaluating and retains its members, but sends nothing to
    /// destinations (AAM-REFERENCE §5.6).
    pub paused: bool,
}

/// The transport a destination's file names advertise (name prefix only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncType {
    /// `S3_...` names.
    S3,
    /// `FTP_...` names.
    Ftp,
    /// `HTTP_...` names.
    Http,
}

/// What a destination's export holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportMode {
    /// Users whose membership changed since the last export.
    Iter,
    /// Every current member.
    Full,
}

/// A `[[destination]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// The destination ID (DID / ORDER_ID).
    pub id: u32,
    /// Name prefix of the exported files.
    pub sync_type: SyncType,
    /// Where exports go; a relative folder is resolved against the config file's folder.
    pub location: Location,
    /// `MASTER_DPID` of the exported names; 0 means AAM UUIDs.
    pub master_dpid: Dpid,
    /// `PID_ALIAS` of the exported names, non-empty when given.
    pub pid_alias: Option<String>,
    /// `iter` or `full`.
    pub mode: ExportMode,
    /// Segments exported; each one is defined, none twice.
    pub segments: Vec<u32>,
    /// Gzip the exported files.
    pub gzip: bool,
    /// Split exported files at this many bytes (at least 1).
    pub split_bytes: u64,
    /// An AAM macro template for the lines, unparsed; `None` uses the default line layout.
    pub template: Option<String>,
}

/// A folder or remote prefix. `Display` and `Debug` never show an FTP password.
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    /// A local folder.
    Local(PathBuf),
    /// `s3://bucket/prefix`; `prefix` has no leading or trailing `/` and may be empty.
    S3 {
        /// The bucket name.
        bucket: String,
        /// The key prefix, without leading or trailing `/`.
        prefix: String,
    },
    /// `ftp://[user[:password]@]host[:port]/path`, kept whole for the FTP client.
    Ftp {
        /// The URL as configured, credentials included. Do not log it; use `Display`.
        url: String,
    },
}

impl Location {
    /// Parses a location: `s3://bucket/prefix`, `ftp://host/path`, or a folder, which is
    /// resolved against `base` when relative.
    pub fn parse(text: &str, base: &Path) -> Result<Location, Problem> {
        if let Some(rest) = text.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() || bucket.contains(char::is_whitespace) {
                return Err(Problem::BadLocation {
                    reason: "an s3:// URL needs a bucket name (s3://bucket/prefix)",
                });
            }
            return Ok(Location::S3 {
                bucket: bucket.to_owned(),
                prefix: prefix.trim_matches('/').to_owned(),
            });
        }
        if let Some(rest) = text.strip_prefix("ftp://") {
            let authority = rest.split('/').next().unwrap_or("");
            let host = authority.rsplit('@').next().unwrap_or("");
            if host.is_empty() {
                return Err(Problem::BadLocation {
                    reason: "an ftp:// URL needs a host (ftp://host/path)",
                });
            }
            return Ok(Location::Ftp {
                url: text.to_owned(),
            });
        }
        if let Some((scheme, _)) = text.split_once("://") {
            return Err(Problem::UnsupportedScheme {
                scheme: scheme.to_owned(),
            });
        }
        if text.is_empty() {
            return Err(Problem::Empty);
        }
        Ok(Location::Local(base.join(text)))
    }

    /// The local folder, if this is one.
    pub fn as_local(&self) -> Option<&Path> {
        match self {
            Location::Local(path) => Some(path),
            Location::S3 { .. } | Location::Ftp { .. } => None,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(path) => write!(f, "{}", path.display()),
            Location::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            Location::Ftp { url } => f.write_str(&redact_url(url)),
        }
    }
}

impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(path) => f.debug_tuple("Local").field(path).finish(),
            Location::S3 { bucket, prefix } => f
                .debug_struct("S3")
                .field("bucket", bucket)
                .field("prefix", prefix)
                .finish(),
            Location::Ftp { url } => f
                .debug_struct("Ftp")
                .field("url", &redact_url(url))
                .finish(),
        }
    }
}

/// `scheme://user:password@host/...` with the password replaced by `***`.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{host}{path}")
        }
        None => url.to_owned(),
    }
}

/// Why the config cannot be used. Every variant names the file; `Display` is one line per
/// problem, `file: key: problem`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file (the config or an included catalog) could not be read.
    #[error("{}: cannot read config file", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// TOML syntax, a wrong type, a missing or unknown key. `key` is a best-effort path such
    /// as `trait[3].data_source` (array indexes from 0), when it can be told from the text.
    #[error("{}:{line}:{column}: {}{message}", path.display(), key.as_deref().map(|k| format!("{k}: ")).unwrap_or_default())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column (in characters) of the error.
        column: usize,
        /// The key the error is about, when known.
        key: Option<String>,
        /// toml's description of the problem.
        message: String,
    },
    /// The file parsed but its values break the rules; every problem found is listed.
    #[error("{}", DisplayProblems(.0))]
    Invalid(Vec<Invalid>),
}

/// One validation problem at one key of one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// The file holding the key (the config or an included catalog).
    pub path: PathBuf,
    /// The key: `trait 24`, `destination 7.location`, `run.partitions`, `data_source[2]`...
    pub key: String,
    /// What is wrong.
    pub problem: Problem,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.path.display(), self.key, self.problem)
    }
}

struct DisplayProblems<'a>(&'a [Invalid]);

impl fmt::Display for DisplayProblems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, invalid) in self.0.iter().take(MAX_DISPLAYED_PROBLEMS).enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{invalid}")?;
        }
        if self.0.len() > MAX_DISPLAYED_PROBLEMS {
            write!(
                f,
                "\n... and {} more problems",
                self.0.len() - MAX_DISPLAYED_PROBLEMS
            )?;
        }
        Ok(())
    }
}

/// What is wrong with one key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The same ID is defined twice.
    #[error("defined twice (first in {})", first.display())]
    Duplicate {
        /// The file of the first definition.
        first: PathBuf,
    },
    /// A trait's `data_source` names no `[[data_source]]`.
    #[error("data_source {0} is not a defined data source")]
    UndefinedDataSource(Dpid),
    /// A destination lists a segment that no `[[segment]]` defines.
    #[error("segments lists {0}, which is not a defined segment")]
    UndefinedSegment(u32),
    /// A destination lists the same segment twice.
    #[error("segments lists {0} twice")]
    RepeatedSegment(u32),
    /// A data source ID that AAM reserves: 0 (AAM UUIDs) or a global device source.
    #[error("id {dpid} is reserved for {owner} and cannot be a configured data source")]
    ReservedDpid {
        /// The DPID.
        dpid: Dpid,
        /// What it is reserved for.
        owner: &'static str,
    },
    /// A number outside its allowed range.
    #[error("{value} is out of range (allowed: {allowed})")]
    OutOfRange {
        /// The configured value.
        value: u64,
        /// The allowed range, for humans.
        allowed: &'static str,
    },
    /// A string that must not be empty (or all spaces) is.
    #[error("must not be empty")]
    Empty,
    /// A trait rule, segment rule or template that does not parse.
    #[error("{0}")]
    Syntax(String),
    /// A string with characters that would break file names.
    #[error("must not contain '/', '\\' or whitespace")]
    BadName,
    /// A receipt e-mail address without an `@`.
    #[error("{0:?} is not an e-mail address")]
    BadEmail(String),
    /// A malformed s3:// or ftp:// URL.
    #[error("{reason}")]
    BadLocation {
        /// What is wrong.
        reason: &'static str,
    },
    /// A URL scheme other than s3:// and ftp://.
    #[error(
        "unsupported URL scheme {scheme}:// (expected a folder, s3://bucket/prefix or ftp://host/path)"
    )]
    UnsupportedScheme {
        /// The scheme.
        scheme: String,
    },
    /// A remote URL where only a local folder works.
    #[error("must be a local folder, not a URL")]
    NotLocal,
    /// A secret given both in plain and through an environment variable.
    #[error("set either the value or its _env variable name, not both")]
    Conflict,
    /// An `_env` key names an environment variable that is unset or empty.
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
    /// `[smtp] ca_file` cannot be read, is not a PEM certificate, or is set without
    /// `starttls = true`; the text says which.
    #[error("{0}")]
    CaFile(String),
}

// ---------------------------------------------------------------------------------------------
// Raw, as-written shapes. `deny_unknown_fields` everywhere so typos fail loudly.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMain {
    #[serde(default)]
    include: Vec<String>,
    paths: RawPaths,
    #[serde(default)]
    run: RawRun,
    #[serde(default)]
    data_source: Vec<RawDataSource>,
    #[serde(default, rename = "trait")]
    trait_: Vec<RawTrait>,
    #[serde(default)]
    segment: Vec<RawSegment>,
    #[serde(default)]
    destination: Vec<RawDestination>,
    s3: Option<RawS3>,
    ftp: Option<RawFtp>,
    pgp: Option<RawPgp>,
    smtp: Option<RawSmtp>,
    metrics: Option<RawMetrics>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawS3 {
    region: Option<String>,
    endpoint: Option<String>,
    access_key_id: Option<String>,
    access_key_id_env: Option<String>,
    secret_access_key: Option<String>,
    secret_access_key_env: Option<String>,
    session_token_env: Option<String>,
    allow_http: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFtp {
    user: Option<String>,
    password: Option<String>,
    password_env: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPgp {
    private_key: String,
    passphrase_env: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSmtp {
    host: String,
    #[serde(default = "default_smtp_port")]
    port: u16,
    #[serde(default)]
    starttls: bool,
    username: Option<String>,
    password_env: Option<String>,
    from: String,
    ca_file: Option<String>,
}

fn default_smtp_port() -> u16 {
    25
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    path: String,
}

/// An included catalog: the same arrays as the main file, nothing else.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    #[serde(default)]
    data_source: Vec<RawDataSource>,
    #[serde(default, rename = "trait")]
    trait_: Vec<RawTrait>,
    #[serde(default)]
    segment: Vec<RawSegment>,
    #[serde(default)]
    destination: Vec<RawDestination>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPaths {
    inbound: String,
    state: String,
    outbound: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRun {
    threads: usize,
    chunk_bytes: usize,
    partitions: u32,
    keep_generations: u32,
    markers: bool,
    ops_memory_bytes: usize,
    profile_deltas: bool,
}

impl Default for RawRun {
    fn default() -> Self {
        let d = RunSettings::default();
        RawRun {
            threads: d.threads,
            chunk_bytes: d.chunk_bytes,
            partitions: d.partitions,
            keep_generations: d.keep_generations,
            markers: d.markers,
            ops_memory_bytes: d.ops_memory_bytes,
            profile_deltas: d.profile_deltas,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDataSource {
    id: Dpid,
    name: String,
    #[serde(default = "default_id_type")]
    id_type: IdType,
    #[serde(default)]
    cross_device: bool,
    #[serde(default)]
    receipt_emails: Vec<String>,
}

fn default_id_type() -> IdType {
    IdType::Customer
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrait {
    id: TraitId,
    data_source: Dpid,
    rule: Option<String>,
    #[serde(default = "default_ttl_days")]
    ttl_days: u32,
}

fn default_ttl_days() -> u32 {
    DEFAULT_TTL_DAYS
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSegment {
    id: u32,
    rule: String,
    #[serde(default)]
    paused: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDestination {
    id: u32,
    sync_type: SyncType,
    location: String,
    #[serde(default)]
    master_dpid: Dpid,
    pid_alias: Option<String>,
    #[serde(default = "default_mode")]
    mode: ExportMode,
    segments: Vec<u32>,
    #[serde(default = "default_true")]
    gzip: bool,
    #[serde(default = "default_split_bytes")]
    split_bytes: u64,
    template: Option<String>,
}

fn default_mode() -> ExportMode {
    ExportMode::Iter
}

fn default_true() -> bool {
    true
}

fn default_split_bytes() -> u64 {
    DEFAULT_SPLIT_BYTES
}

// ---------------------------------------------------------------------------------------------

impl Config {
    /// Reads, parses and validates the config at `path` and the catalogs it includes.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read_file(path)?;
        Config::parse(path, &text)
    }

    /// Parses and validates `text` as if it were the config file at `path`: relative paths and
    /// includes are resolved against `path`'s folder, and errors name `path`. Included files
    /// are read from disk.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        Config::parse_with_env(path, text, &|name| std::env::var(name).ok())
    }

    /// [`Config::parse`] reading `*_env` variables through `env` (tests use a map).
    fn parse_with_env(
        path: &Path,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let main: RawMain = toml::from_str(text).map_err(|err| syntax_error(path, text, &err))?;
        let base = path.parent().unwrap_or(Path::new(""));

        // Files in load order; items remember the index of the file they came from.
        let mut files = vec![path.to_path_buf()];
        let mut catalog = Catalog::default();
        catalog.add(
            0,
            RawCatalog {
                data_source: main.data_source,
                trait_: main.trait_,
                segment: main.segment,
                destination: main.destination,
            },
        );
        let mut problems = Vec::new();
        for (i, include) in main.include.iter().enumerate() {
            if include.trim().is_empty() {
                problems.push(Invalid {
                    path: path.to_path_buf(),
                    key: format!("include[{i}]"),
                    problem: Problem::Empty,
                });
                continue;
            }
            let included = base.join(include);
            let text = read_file(&included)?;
            let raw: RawCatalog =
                toml::from_str(&text).map_err(|err| syntax_error(&included, &text, &err))?;
            files.push(included);
            catalog.add(files.len() - 1, raw);
        }

        let mut v = Validator {
            files: &files,
            problems,
        };
        let paths = v.paths(main.paths, base);
        let run = v.run(main.run);
        let data_sources = v.data_sources(catalog.data_sources);
        let traits = v.traits(catalog.traits, &data_sources);
        let segments = v.segments(catalog.segments);
        let destinations = v.destinations(catalog.destinations, &segments, base);
        let storage = v.storage(
            main.s3.unwrap_or_default(),
            main.ftp.unwrap_or_default(),
            env,
        );
        let pgp = main.pgp.map(|raw| v.pgp(raw, base, env));
        let smtp = main.smtp.map(|raw| v.smtp(raw, base, env));
        let metrics = main
            .metrics
            .map(|raw| v.local_folder(&raw.path, base, "metrics.path"));
        if !v.problems.is_empty() {
            return Err(ConfigError::Invalid(v.problems));
        }
        Ok(Config {
            path: path.to_path_buf(),
            paths,
            run,
            data_sources,
            traits,
            segments,
            destinations,
            storage,
            pgp,
            smtp,
            metrics,
        })
    }

    /// The data source with this DPID, if configured.
    pub fn data_source(&self, dpid: Dpid) -> Option<&DataSource> {
        self.data_sources.get(&dpid)
    }

    /// The onboarded trait with this ID, if configured.
    pub fn trait_def(&self, id: TraitId) -> Option<&Trait> {
        self.traits.get(&id)
    }

    /// A fingerprint of every trait's TTL: xxh3 over (trait ID, ttl_days) in trait ID order,
    /// each as little-endian u32. The state stores it to notice TTL changes between runs.
    pub fn fingerprint_ttl(&self) -> u64 {
        let mut hasher = xxhash_rust::xxh3::Xxh3Default::new();
        for t in self.traits.values() {
            hasher.update(&t.id.to_le_bytes());
            hasher.update(&t.ttl_days.to_le_bytes());
        }
        hasher.digest()
    }
}

fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn syntax_error(path: &Path, text: &str, err: &toml::de::Error) -> ConfigError {
    let offset = err.span().map_or(0, |span| span.start);
    let (line, column) = line_column(text, offset);
    ConfigError::Syntax {
        path: path.to_path_buf(),
        line,
        column,
        key: err.span().and_then(|_| key_at(text, offset)),
        message: err.message().trim_end().to_owned(),
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

/// Best effort: the dotted key at byte `offset`, from the last table header before it (with
/// the 0-based index of an array of tables) and the key on the offset's line. Multi-line
/// strings can fool it; it only decorates an error message.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let mut header: Option<String> = None;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut line_key: Option<&str> = None;
    let mut start = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim();
        if let Some(name) = trimmed
            .strip_prefix("[[")
            .and_then(|rest| rest.split_once("]]"))
            .map(|(name, _)| name.trim())
        {
            let count = counts.entry(name).or_insert(0);
            header = Some(format!("{name}[{count}]"));
            *count += 1;
        } else if let Some(name) = trimmed
            .strip_prefix('[')
            .and_then(|rest| rest.split_once(']'))
            .map(|(name, _)| name.trim())
        {
            header = Some(name.to_owned());
        }
        let end = start + line.len();
        if offset < end || end == text.len() {
            line_key = trimmed
                .split_once('=')
                .map(|(key, _)| key.trim())
                .filter(|key| !key.is_empty() && !key.starts_with('['));
            break;
        }
        start = end;
    }
    match (header, line_key) {
        (Some(h), Some(k)) => Some(format!("{h}.{k}")),
        (Some(h), None) => Some(h),
        (None, Some(k)) => Some(k.to_owned()),
        (None, None) => None,
    }
}

/// Every catalog item of every file, with the index of its file.
#[derive(Default)]
struct Catalog {
    data_sources: Vec<(usize, RawDataSource)>,
    traits: Vec<(usize, RawTrait)>,
    segments: Vec<(usize, RawSegment)>,
    destinations: Vec<(usize, RawDestination)>,
}

impl Catalog {
    /// Appends `raw`'s items as (file index, item).
    fn add(&mut self, file: usize, raw: RawCatalog) {
        self.data_sources
            .extend(raw.data_source.into_iter().map(|item| (file, item)));
        self.traits
            .extend(raw.trait_.into_iter().map(|item| (file, item)));
        self.segments
            .extend(raw.segment.into_iter().map(|item| (file, item)));
        self.destinations
            .extend(raw.destination.into_iter().map(|item| (file, item)));
    }
}

struct Validator<'a> {
    files: &'a [PathBuf],
    problems: Vec<Invalid>,
}

impl Validator<'_> {
    fn file(&self, index: usize) -> PathBuf {
        self.files.get(index).cloned().unwrap_or_default()
    }

    fn push(&mut self, file: usize, key: String, problem: Problem) {
        let path = self.file(file);
        self.problems.push(Invalid { path, key, problem });
    }

    /// Records a duplicate when `id` is already in `seen`, else remembers its file.
    fn first_definition(
        &mut self,
        seen: &mut BTreeMap<u32, usize>,
        id: u32,
        file: usize,
        key: &str,
    ) -> bool {
        match seen.entry(id) {
            Entry::Vacant(slot) => {
                slot.insert(file);
                true
            }
            Entry::Occupied(slot) => {
                let first = self.file(*slot.get());
                self.push(file, key.to_owned(), Problem::Duplicate { first });
                false
            }
        }
    }

    fn paths(&mut self, raw: RawPaths, base: &Path) -> Paths {
        let inbound = Location::parse(&raw.inbound, base).unwrap_or_else(|problem| {
            self.push(0, "paths.inbound".into(), problem);
            Location::Local(PathBuf::new())
        });
        let state = self.local_folder(&raw.state, base, "paths.state");
        let outbound = self.local_folder(&raw.outbound, base, "paths.outbound");
        Paths {
            inbound,
            state,
            outbound,
        }
    }

    fn local_folder(&mut self, text: &str, base: &Path, key: &str) -> PathBuf {
        match Location::parse(text, base) {
            Ok(Location::Local(path)) => path,
            Ok(Location::S3 { .. } | Location::Ftp { .. }) => {
                self.push(0, key.into(), Problem::NotLocal);
                PathBuf::new()
            }
            Err(problem) => {
                self.push(0, key.into(), problem);
                PathBuf::new()
            }
        }
    }

    fn run(&mut self, raw: RawRun) -> RunSettings {
        if raw.threads > MAX_THREADS {
            self.push(
                0,
                "run.threads".into(),
                Problem::OutOfRange {
                    value: raw.threads as u64,
                    allowed: "0..=1024, 0 = all cores",
                },
            );
        }
        if raw.chunk_bytes == 0 {
            self.push(
                0,
                "run.chunk_bytes".into(),
                Problem::OutOfRange {
                    value: 0,
                    allowed: "at least 1",
                },
            );
        }
        if !(1..=MAX_PARTITIONS).contains(&raw.partitions) {
            self.push(
                0,
                "run.partitions".into(),
                Problem::OutOfRange {
                    value: u64::from(raw.partitions),
                    allowed: "1..=65536",
                },
            );
        }
        if raw.keep_generations == 0 {
            self.push(
                0,
                "run.keep_generations".into(),
                Problem::OutOfRange {
                    value: 0,
                    allowed: "at least 1",
                },
            );
        }
        if raw.ops_memory_bytes == 0 {
            self.push(
                0,
                "run.ops_memory_bytes".into(),
                Problem::OutOfRange {
                    value: 0,
                    allowed: "at least 1",
                },
            );
        }
        RunSettings {
            threads: raw.threads,
            chunk_bytes: raw.chunk_bytes,
            partitions: raw.partitions,
            keep_generations: raw.keep_generations,
            markers: raw.markers,
            ops_memory_bytes: raw.ops_memory_bytes,
            profile_deltas: raw.profile_deltas,
        }
    }

    /// A secret given either in plain (`plain`) or through an environment variable (`env_name`
    /// names it). A named variable that is unset or empty is a problem at `key`.
    fn secret(
        &mut self,
        plain: Option<String>,
        env_name: Option<String>,
        key: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<String> {
        if plain.is_some() && env_name.is_some() {
            self.push(0, key.into(), Problem::Conflict);
            return None;
        }
        if let Some(name) = env_name {
            let value = env(&name).filter(|v| !v.is_empty());
            if value.is_none() {
                self.push(0, format!("{key}_env"), Problem::MissingEnv(name));
            }
            return value;
        }
        plain
    }

    fn storage(
        &mut self,
        s3: RawS3,
        ftp: RawFtp,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> StorageSettings {
        StorageSettings {
            access_key_id: self.secret(
                s3.access_key_id,
                s3.access_key_id_env,
                "s3.access_key_id",
                env,
            ),
            secret_access_key: self.secret(
                s3.secret_access_key,
                s3.secret_access_key_env,
                "s3.secret_access_key",
                env,
            ),
            session_token: self.secret(None, s3.session_token_env, "s3.session_token", env),
            region: s3.region,
            endpoint: s3.endpoint,
            allow_http: s3.allow_http,
            ftp_user: ftp.user,
            ftp_password: self.secret(ftp.password, ftp.password_env, "ftp.password", env),
            part_bytes: None,
            concurrency: None,
        }
    }

    fn pgp(
        &mut self,
        raw: RawPgp,
        base: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> PgpSettings {
        let private_key = self.local_folder(&raw.private_key, base, "pgp.private_key");
        let passphrase = self.secret(None, raw.passphrase_env, "pgp.passphrase", env);
        PgpSettings {
            private_key,
            passphrase,
        }
    }

    fn smtp(
        &mut self,
        raw: RawSmtp,
        base: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> crate::report::mail::MailSettings {
        if raw.host.trim().is_empty() {
            self.push(0, "smtp.host".into(), Problem::Empty);
        }
        if !raw.from.contains('@') {
            self.push(0, "smtp.from".into(), Problem::BadEmail(raw.from.clone()));
        }
        let password = self.secret(None, raw.password_env, "smtp.password", env);
        let mut settings = crate::report::mail::MailSettings::new(raw.host, raw.port, raw.from);
        settings.starttls = raw.starttls;
        settings.ca = raw
            .ca_file
            .and_then(|text| self.smtp_ca(&text, raw.starttls, base));
        settings.username = raw.username;
        settings.password = password;
        settings
    }

    /// `[smtp] ca_file`, resolved against the config's folder and read now, so that a bad
    /// file fails `segmill validate` and the run's start rather than the night's first mail.
    fn smtp_ca(
        &mut self,
        text: &str,
        starttls: bool,
        base: &Path,
    ) -> Option<crate::report::mail::TrustedCa> {
        let key = "smtp.ca_file";
        if !starttls {
            self.push(
                0,
                key.into(),
                Problem::CaFile(
                    "is only used with starttls = true; set it or remove ca_file".into(),
                ),
            );
            return None;
        }
        let before = self.problems.len();
        let path = self.local_folder(text, base, key);
        if self.problems.len() > before {
            return None;
        }
        crate::report::mail::TrustedCa::load(&path)
            .map_err(|e| self.push(0, key.into(), Problem::CaFile(e.to_string())))
            .ok()
    }

    fn data_sources(&mut self, raw: Vec<(usize, RawDataSource)>) -> BTreeMap<Dpid, DataSource> {
        let mut seen = BTreeMap::new();
        let mut out = BTreeMap::new();
        for (file, ds) in raw {
            let key = format!("data_source {}", ds.id);
            let reserved = if ds.id == AAM_UUID_DPID {
                Some("AAM UUIDs")
            } else {
                device_format(ds.id).map(|(name, _)| name)
            };
            if let Some(owner) = reserved {
                self.push(file, key, Problem::ReservedDpid { dpid: ds.id, owner });
                continue;
            }
            if !self.first_definition(&mut seen, ds.id, file, &key) {
                continue;
            }
            if ds.name.trim().is_empty() {
                self.push(file, format!("{key}.name"), Problem::Empty);
            }
            for email in &ds.receipt_emails {
                if !email.contains('@') {
                    self.push(
                        file,
                        format!("{key}.receipt_emails"),
                        Problem::BadEmail(email.clone()),
                    );
                }
            }
            out.insert(
                ds.id,
                DataSource {
                    id: ds.id,
                    name: ds.name,
                    id_type: ds.id_type,
                    cross_device: ds.cross_device,
                    receipt_emails: ds.receipt_emails,
                },
            );
        }
        out
    }

    fn traits(
        &mut self,
        raw: Vec<(usize, RawTrait)>,
        data_sources: &BTreeMap<Dpid, DataSource>,
    ) -> BTreeMap<TraitId, Trait> {
        let mut seen = BTreeMap::new();
        let mut out = BTreeMap::new();
        for (file, t) in raw {
            let key = format!("trait {}", t.id);
            if !self.first_definition(&mut seen, t.id, file, &key) {
                continue;
            }
            if !data_sources.contains_key(&t.data_source) {
                self.push(
                    file,
                    key.clone(),
                    Problem::UndefinedDataSource(t.data_source),
                );
            }
            match t.rule.as_deref() {
                Some(r) if r.trim().is_empty() => {
                    self.push(file, format!("{key}.rule"), Problem::Empty)
                }
                Some(r) => {
                    if let Err(e) = crate::rules::trait_rule::Expr::parse(r) {
                        self.push(file, format!("{key}.rule"), Problem::Syntax(e.to_string()));
                    }
                }
                None => {}
            }
            out.insert(
                t.id,
                Trait {
                    id: t.id,
                    data_source: t.data_source,
                    rule: t.rule,
                    ttl_days: t.ttl_days,
                },
            );
        }
        out
    }

    fn segments(&mut self, raw: Vec<(usize, RawSegment)>) -> BTreeMap<u32, Segment> {
        let mut seen = BTreeMap::new();
        let mut out = BTreeMap::new();
        for (file, s) in raw {
            let key = format!("segment {}", s.id);
            if !self.first_definition(&mut seen, s.id, file, &key) {
                continue;
            }
            if s.rule.trim().is_empty() {
                self.push(file, format!("{key}.rule"), Problem::Empty);
            } else if let Err(e) = crate::rules::segment_rule::parse(&s.rule) {
                self.push(file, format!("{key}.rule"), Problem::Syntax(e.to_string()));
            }
            out.insert(
                s.id,
                Segment {
                    id: s.id,
                    rule: s.rule,
                    paused: s.paused,
                },
            );
        }
        out
    }

    fn destinations(
        &mut self,
        raw: Vec<(usize, RawDestination)>,
        segments: &BTreeMap<u32, Segment>,
        base: &Path,
    ) -> BTreeMap<u32, Destination> {
        let mut seen = BTreeMap::new();
        let mut out = BTreeMap::new();
        for (file, d) in raw {
            let key = format!("destination {}", d.id);
            if !self.first_definition(&mut seen, d.id, file, &key) {
                continue;
            }
            let location = Location::parse(&d.location, base).unwrap_or_else(|problem| {
                self.push(file, format!("{key}.location"), problem);
                Location::Local(PathBuf::new())
            });
            if let Some(alias) = &d.pid_alias {
                if alias.trim().is_empty() {
                    self.push(file, format!("{key}.pid_alias"), Problem::Empty);
                } else if alias
                    .chars()
                    .any(|c| c == '/' || c == '\\' || c.is_whitespace())
                {
                    self.push(file, format!("{key}.pid_alias"), Problem::BadName);
                }
            }
            let mut listed = std::collections::BTreeSet::new();
            for &segment in &d.segments {
                if !segments.contains_key(&segment) {
                    self.push(file, key.clone(), Problem::UndefinedSegment(segment));
                } else if !listed.insert(segment) {
                    self.push(file, key.clone(), Problem::RepeatedSegment(segment));
                }
            }
            if d.split_bytes == 0 {
                self.push(
                    file,
                    format!("{key}.split_bytes"),
                    Problem::OutOfRange {
                        value: 0,
                        allowed: "at least 1",
                    },
                );
            }
            match d.template.as_deref() {
                Some(t) if t.trim().is_empty() => {
                    self.push(file, format!("{key}.template"), Problem::Empty)
                }
                Some(t) => {
                    if let Err(e) = crate::outbound::template::Template::parse(t) {
                        self.push(
                            file,
                            format!("{key}.template"),
                            Problem::Syntax(e.to_string()),
                        );
                    }
                }
                None => {}
            }
            out.insert(
                d.id,
                Destination {
                    id: d.id,
                    sync_type: d.sync_type,
                    location,
                    master_dpid: d.master_dpid,
                    pid_alias: d.pid_alias,
                    mode: d.mode,
                    segments: d.segments,
                    gzip: d.gzip,
                    split_bytes: d.split_bytes,
                    template: d.template,
                },
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[paths]
inbound = "in"
state = "state"
outbound = "out"
"#;

    const FULL: &str = r#"
[paths]
inbound = "testdata/inbound"
state = "state"
outbound = "/abs/out"

[run]
threads = 2
chunk_bytes = 1
partitions = 8
keep_generations = 1
ops_memory_bytes = 4096
profile_deltas = false

[[data_source]]
id = 21
name = "CRM"
id_type = "aam_uuid"
cross_device = true
receipt_emails = ["ops@example.com"]

[[data_source]]
id = 33
name = "Loyalty"

[[trait]]
id = 24
data_source = 21
rule = 'tier == "gold"'
ttl_days = 0

[[trait]]
id = 25
data_source = 33

[[segment]]
id = 1001
rule = "24T OR 25T"

[[destination]]
id = 1234
sync_type = "s3"
location = "out/1234"
pid_alias = "XYZCustomer"
mode = "full"
segments = [1001]
gzip = false
split_bytes = 1000
template = "<UUID>"

[[destination]]
id = 1235
sync_type = "ftp"
location = "ftp://user:hunter2@ftp.example.com/outbound"
segments = []
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("conf/segmill.toml"), text)
    }

    fn with_minimal(extra: &str) -> Result<Config, ConfigError> {
        parse(&format!("{MINIMAL}{extra}"))
    }

    fn message(result: Result<Config, ConfigError>) -> String {
        match result {
            Ok(_) => panic!("expected an error"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn full_config_parses_with_exact_values() {
        let config = parse(FULL).unwrap();
        assert_eq!(config.path, PathBuf::from("conf/segmill.toml"));
        assert_eq!(
            config.paths,
            Paths {
                inbound: Location::Local(PathBuf::from("conf/testdata/inbound")),
                state: PathBuf::from("conf/state"),
                outbound: PathBuf::from("/abs/out"),
            }
        );
        assert_eq!(
            config.run,
            RunSettings {
                threads: 2,
                chunk_bytes: 1,
                partitions: 8,
                keep_generations: 1,
                markers: false,
                ops_memory_bytes: 4096,
                profile_deltas: false,
            }
        );
        assert_eq!(
            config.data_source(21),
            Some(&DataSource {
                id: 21,
                name: "CRM".into(),
                id_type: IdType::AamUuid,
                cross_device: true,
                receipt_emails: vec!["ops@example.com".into()],
            })
        );
        assert_eq!(
            config.data_source(33),
            Some(&DataSource {
                id: 33,
                name: "Loyalty".into(),
                id_type: IdType::Customer,
                cross_device: false,
                receipt_emails: vec![],
            })
        );
        assert_eq!(config.data_source(99), None);
        assert_eq!(
            config.trait_def(24),
            Some(&Trait {
                id: 24,
                data_source: 21,
                rule: Some("tier == \"gold\"".into()),
                ttl_days: 0
            })
        );
        assert_eq!(
            config.trait_def(25),
            Some(&Trait {
                id: 25,
                data_source: 33,
                rule: None,
                ttl_days: 120
            })
        );
        assert_eq!(
            config.segments.get(&1001),
            Some(&Segment {
                id: 1001,
                rule: "24T OR 25T".into(),
                paused: false,
            })
        );
        assert_eq!(
            config.destinations.get(&1234),
            Some(&Destination {
                id: 1234,
                sync_type: SyncType::S3,
                location: Location::Local(PathBuf::from("conf/out/1234")),
                master_dpid: 0,
                pid_alias: Some("XYZCustomer".into()),
                mode: ExportMode::Full,
                segments: vec![1001],
                gzip: false,
                split_bytes: 1000,
                template: Some("<UUID>".into()),
            })
        );
        let ftp = config.destinations.get(&1235).unwrap();
        assert_eq!(ftp.sync_type, SyncType::Ftp);
        assert_eq!(ftp.mode, ExportMode::Iter);
        assert!(ftp.gzip);
        assert_eq!(ftp.split_bytes, 1_073_741_824);
        assert_eq!(ftp.pid_alias, None);
        assert_eq!(
            ftp.location,
            Location::Ftp {
                url: "ftp://user:hunter2@ftp.example.com/outbound".into()
            }
        );
    }

    #[test]
    fn minimal_config_takes_defaults() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.run, RunSettings::default());
        assert_eq!(config.run.chunk_bytes, 4_194_304);
        assert_eq!(config.run.partitions, 64);
        assert_eq!(config.run.keep_generations, 3);
        assert_eq!(config.run.threads, 0);
        assert!(config.run.effective_threads() >= 1);
        assert!(config.data_sources.is_empty());
    }

    #[test]
    fn config_in_current_folder_keeps_paths_relative() {
        let config = Config::parse(Path::new("segmill.toml"), MINIMAL).unwrap();
        assert_eq!(config.paths.inbound.as_local(), Some(Path::new("in")));
        assert_eq!(config.paths.state, PathBuf::from("state"));
    }

    #[test]
    fn locations_parse_and_redact() {
        let base = Path::new("/etc/segmill");
        assert_eq!(
            Location::parse("s3://bucket/some/prefix/", base),
            Ok(Location::S3 {
                bucket: "bucket".into(),
                prefix: "some/prefix".into()
            })
        );
        assert_eq!(
            Location::parse("s3://bucket", base),
            Ok(Location::S3 {
                bucket: "bucket".into(),
                prefix: String::new()
            })
        );
        assert_eq!(
            Location::parse("s3:///x", base),
            Err(Problem::BadLocation {
                reason: "an s3:// URL needs a bucket name (s3://bucket/prefix)"
            })
        );
        assert_eq!(
            Location::parse("ftp://user@/x", base),
            Err(Problem::BadLocation {
                reason: "an ftp:// URL needs a host (ftp://host/path)"
            })
        );
        assert_eq!(
            Location::parse("http://x/y", base),
            Err(Problem::UnsupportedScheme {
                scheme: "http".into()
            })
        );
        assert_eq!(
            Location::parse("in", base),
            Ok(Location::Local(PathBuf::from("/etc/segmill/in")))
        );
        let ftp = Location::parse("ftp://bob:s3cret@host:21/in", base).unwrap();
        assert_eq!(ftp.to_string(), "ftp://bob:***@host:21/in");
        let debug = format!("{ftp:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert_eq!(debug, r#"Ftp { url: "ftp://bob:***@host:21/in" }"#);
        let no_password = Location::parse("ftp://bob@host/in", base).unwrap();
        assert_eq!(no_password.to_string(), "ftp://bob@host/in");
        assert_eq!(
            Location::parse("s3://b/p", base).unwrap().to_string(),
            "s3://b/p"
        );
    }

    #[test]
    fn trait_with_undefined_data_source_names_file_and_key() {
        let err = with_minimal("[[trait]]\nid = 24\ndata_source = 99\n");
        assert_eq!(
            message(err),
            "conf/segmill.toml: trait 24: data_source 99 is not a defined data source"
        );
    }

    #[test]
    fn duplicates_are_reported_per_kind() {
        let err = with_minimal(
            r#"
[[data_source]]
id = 21
name = "a"
[[data_source]]
id = 21
name = "b"
[[trait]]
id = 5
data_source = 21
[[trait]]
id = 5
data_source = 21
[[segment]]
id = 7
rule = "5T"
[[segment]]
id = 7
rule = "5T"
[[destination]]
id = 9
sync_type = "s3"
location = "o"
segments = [7]
[[destination]]
id = 9
sync_type = "http"
location = "o"
segments = []
"#,
        );
        assert_eq!(
            message(err),
            "conf/segmill.toml: data_source 21: defined twice (first in conf/segmill.toml)\n\
             conf/segmill.toml: trait 5: defined twice (first in conf/segmill.toml)\n\
             conf/segmill.toml: segment 7: defined twice (first in conf/segmill.toml)\n\
             conf/segmill.toml: destination 9: defined twice (first in conf/segmill.toml)"
        );
    }

    #[test]
    fn reserved_data_source_ids_are_rejected() {
        let err = with_minimal(
            "[[data_source]]\nid = 0\nname = \"x\"\n[[data_source]]\nid = 20914\nname = \"y\"\n",
        );
        assert_eq!(
            message(err),
            "conf/segmill.toml: data_source 0: id 0 is reserved for AAM UUIDs and cannot be a \
             configured data source\n\
             conf/segmill.toml: data_source 20914: id 20914 is reserved for GAID (Android) and \
             cannot be a configured data source"
        );
    }

    #[test]
    fn run_ranges_are_checked() {
        let err = with_minimal(
            "[run]\nthreads = 1025\nchunk_bytes = 0\npartitions = 65537\nkeep_generations = 0\n",
        );
        assert_eq!(
            message(err),
            "conf/segmill.toml: run.threads: 1025 is out of range (allowed: 0..=1024, 0 = all cores)\n\
             conf/segmill.toml: run.chunk_bytes: 0 is out of range (allowed: at least 1)\n\
             conf/segmill.toml: run.partitions: 65537 is out of range (allowed: 1..=65536)\n\
             conf/segmill.toml: run.keep_generations: 0 is out of range (allowed: at least 1)"
        );
        let err = with_minimal("[run]\npartitions = 0\n");
        assert_eq!(
            message(err),
            "conf/segmill.toml: run.partitions: 0 is out of range (allowed: 1..=65536)"
        );
        assert_eq!(
            with_minimal("[run]\npartitions = 65536\nthreads = 1024\n")
                .unwrap()
                .run
                .partitions,
            65536
        );
    }

    #[test]
    fn empty_names_and_strings_are_rejected() {
        let err = with_minimal(
            r#"
[[data_source]]
id = 21
name = "  "
receipt_emails = ["nobody"]
[[trait]]
id = 1
data_source = 21
rule = ""
[[segment]]
id = 2
rule = " "
[[destination]]
id = 3
sync_type = "s3"
location = ""
pid_alias = ""
segments = [2, 2, 4]
split_bytes = 0
template = ""
[[destination]]
id = 4
sync_type = "s3"
location = "s3://b/p"
pid_alias = "a b"
segments = []
"#,
        );
        assert_eq!(
            message(err),
            "conf/segmill.toml: data_source 21.name: must not be empty\n\
             conf/segmill.toml: data_source 21.receipt_emails: \"nobody\" is not an e-mail address\n\
             conf/segmill.toml: trait 1.rule: must not be empty\n\
             conf/segmill.toml: segment 2.rule: must not be empty\n\
             conf/segmill.toml: destination 3.location: must not be empty\n\
             conf/segmill.toml: destination 3.pid_alias: must not be empty\n\
             conf/segmill.toml: destination 3: segments lists 2 twice\n\
             conf/segmill.toml: destination 3: segments lists 4, which is not a defined segment\n\
             conf/segmill.toml: destination 3.split_bytes: 0 is out of range (allowed: at least 1)\n\
             conf/segmill.toml: destination 3.template: must not be empty\n\
             conf/segmill.toml: destination 4.pid_alias: must not contain '/', '\\' or whitespace"
        );
    }

    #[test]
    fn state_and_outbound_must_be_local() {
        let err = parse(
            "[paths]\ninbound = \"s3://bucket/in\"\nstate = \"s3://b/s\"\noutbound = \"ftp://h/o\"\n",
        );
        assert_eq!(
            message(err),
            "conf/segmill.toml: paths.state: must be a local folder, not a URL\n\
             conf/segmill.toml: paths.outbound: must be a local folder, not a URL"
        );
        let err = parse("[paths]\ninbound = \"sftp://h/in\"\nstate = \"s\"\noutbound = \"o\"\n");
        assert_eq!(
            message(err),
            "conf/segmill.toml: paths.inbound: unsupported URL scheme sftp:// (expected a \
             folder, s3://bucket/prefix or ftp://host/path)"
        );
    }

    #[test]
    fn type_errors_name_line_column_and_key() {
        let err = with_minimal(
            "[[data_source]]\nid = 21\nname = \"a\"\n[[trait]]\nid = 24\ndata_source = \"x\"\n",
        );
        assert_eq!(
            message(err),
            "conf/segmill.toml:11:15: trait[0].data_source: invalid type: string \"x\", expected u32"
        );
        let err = with_minimal("[run]\npartitions = -1\n");
        assert_eq!(
            message(err),
            "conf/segmill.toml:7:14: run.partitions: invalid value: integer `-1`, expected u32"
        );
    }

    #[test]
    fn unknown_and_missing_keys_are_errors() {
        let err = with_minimal(
            "[[segment]]\nid = 1\nrule = \"1T\"\n[[segment]]\nid = 2\nrulez = \"x\"\n",
        );
        let text = message(err);
        assert!(
            text.starts_with("conf/segmill.toml:11:1: segment[1].rulez: unknown field `rulez`"),
            "{text}"
        );
        let err = with_minimal("[[segment]]\nid = 1\n");
        let text = message(err);
        assert!(text.starts_with("conf/segmill.toml:"), "{text}");
        assert!(text.contains("segment[0]"), "{text}");
        assert!(text.contains("missing field `rule`"), "{text}");
        let err = parse("[paths]\ninbound = \"in\"\n");
        assert!(message(err).contains("missing field `state`"));
    }

    #[test]
    fn syntax_errors_do_not_echo_the_source_line() {
        let err = with_minimal("[[data_source]]\nid = 21\nname = \"hunter2\n");
        let text = message(err);
        assert_eq!(
            text,
            "conf/segmill.toml:8:16: data_source[0].name: invalid basic string, expected `\"`"
        );
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains('\n'), "{text}");
    }

    fn with_env(extra: &str) -> Result<Config, ConfigError> {
        let env = |name: &str| match name {
            "S3_SECRET" => Some("hunter2".to_string()),
            "FTP_PASS" => Some("ftppass".to_string()),
            "PGP_PASS" => Some("pgppass".to_string()),
            "SMTP_PASS" => Some("smtppass".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        let text = format!("{MINIMAL}{extra}");
        Config::parse_with_env(Path::new("conf/segmill.toml"), &text, &env)
    }

    #[test]
    fn ops_tables_parse_and_never_print_secrets() {
        let config = with_env(
            "[run]\nmarkers = true\n\
             [s3]\nregion = \"eu-west-1\"\nendpoint = \"http://127.0.0.1:9000\"\n\
             access_key_id = \"AKIA1\"\nsecret_access_key_env = \"S3_SECRET\"\nallow_http = true\n\
             [ftp]\nuser = \"bob\"\npassword_env = \"FTP_PASS\"\n\
             [pgp]\nprivate_key = \"keys/k.asc\"\npassphrase_env = \"PGP_PASS\"\n\
             [smtp]\nhost = \"127.0.0.1\"\nport = 2525\nstarttls = true\nusername = \"u\"\n\
             password_env = \"SMTP_PASS\"\nfrom = \"segmill@example.com\"\n\
             [metrics]\npath = \"m/segmill.prom\"\n",
        )
        .unwrap();
        assert!(config.run.markers);
        assert_eq!(config.storage.region.as_deref(), Some("eu-west-1"));
        assert_eq!(
            config.storage.endpoint.as_deref(),
            Some("http://127.0.0.1:9000")
        );
        assert_eq!(config.storage.access_key_id.as_deref(), Some("AKIA1"));
        assert_eq!(config.storage.secret_access_key.as_deref(), Some("hunter2"));
        assert_eq!(config.storage.allow_http, Some(true));
        assert_eq!(config.storage.ftp_user.as_deref(), Some("bob"));
        assert_eq!(config.storage.ftp_password.as_deref(), Some("ftppass"));
        let pgp = config.pgp.as_ref().unwrap();
        assert_eq!(pgp.private_key, Path::new("conf/keys/k.asc"));
        assert_eq!(pgp.passphrase.as_deref(), Some("pgppass"));
        let smtp = config.smtp.as_ref().unwrap();
        assert_eq!(
            (smtp.host.as_str(), smtp.port, smtp.starttls),
            ("127.0.0.1", 2525, true)
        );
        assert_eq!(smtp.username.as_deref(), Some("u"));
        assert_eq!(smtp.password.as_deref(), Some("smtppass"));
        assert_eq!(smtp.from, "segmill@example.com");
        assert_eq!(
            config.metrics.as_deref(),
            Some(Path::new("conf/m/segmill.prom"))
        );
        let debug = format!("{config:?}");
        for secret in ["hunter2", "ftppass", "pgppass", "smtppass"] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
    }

    #[test]
    fn ops_tables_report_missing_env_and_conflicts() {
        let text = message(with_env(
            "[s3]\nsecret_access_key = \"hunter2\"\nsecret_access_key_env = \"S3_SECRET\"\n\
             [ftp]\npassword_env = \"NOPE\"\n\
             [smtp]\nhost = \"h\"\nfrom = \"nobody\"\npassword_env = \"EMPTY\"\n",
        ));
        assert_eq!(
            text,
            "conf/segmill.toml: s3.secret_access_key: set either the value or its _env variable \
             name, not both\n\
             conf/segmill.toml: ftp.password_env: environment variable NOPE is not set\n\
             conf/segmill.toml: smtp.from: \"nobody\" is not an e-mail address\n\
             conf/segmill.toml: smtp.password_env: environment variable EMPTY is not set"
        );
        assert!(!text.contains("hunter2"));
        let text = message(with_env("[metrics]\nx = 1\n"));
        assert!(text.contains("unknown field `x`"), "{text}");
        let defaults = with_env("").unwrap();
        assert!(!defaults.run.markers);
        assert!(defaults.run.profile_deltas);
        assert_eq!(defaults.storage, StorageSettings::default());
        assert!(defaults.pgp.is_none() && defaults.smtp.is_none() && defaults.metrics.is_none());
    }

    #[test]
    fn smtp_ca_file_is_resolved_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tls")).unwrap();
        std::fs::write(
            dir.path().join("tls/ca.pem"),
            crate::report::mail::TEST_CA_PEM,
        )
        .unwrap();
        std::fs::write(dir.path().join("tls/key.txt"), "not a certificate\n").unwrap();
        let main = dir.path().join("segmill.toml");
        let parse = |smtp: &str| {
            Config::parse_with_env(&main, &format!("{MINIMAL}[smtp]\n{smtp}"), &|_| None)
        };
        let base = "host = \"relay.internal\"\nfrom = \"s@example.com\"\n";

        let config = parse(&format!(
            "{base}starttls = true\nca_file = \"tls/ca.pem\"\n"
        ))
        .unwrap();
        let smtp = config.smtp.unwrap();
        assert!(smtp.starttls);
        assert_eq!(
            smtp.ca.as_ref().map(|ca| ca.path().to_path_buf()),
            Some(dir.path().join("tls/ca.pem"))
        );
        let config = parse(base).unwrap();
        assert!(config.smtp.unwrap().ca.is_none());

        let at = main.display();
        let text = message(parse(&format!(
            "{base}starttls = true\nca_file = \"tls/missing.pem\"\n"
        )));
        let missing = dir.path().join("tls/missing.pem");
        assert!(
            text.starts_with(&format!(
                "{at}: smtp.ca_file: cannot read CA file {}: ",
                missing.display()
            )),
            "{text}"
        );
        let text = message(parse(&format!(
            "{base}starttls = true\nca_file = \"tls/key.txt\"\n"
        )));
        assert_eq!(
            text,
            format!(
                "{at}: smtp.ca_file: CA file {} holds no PEM certificate \
                 (-----BEGIN CERTIFICATE-----)",
                dir.path().join("tls/key.txt").display()
            )
        );
        let text = message(parse(&format!("{base}ca_file = \"tls/ca.pem\"\n")));
        assert_eq!(
            text,
            format!(
                "{at}: smtp.ca_file: is only used with starttls = true; set it or remove ca_file"
            )
        );
        let text = message(parse(&format!(
            "{base}starttls = true\nca_file = \"s3://bucket/ca.pem\"\n"
        )));
        assert_eq!(
            text,
            format!("{at}: smtp.ca_file: must be a local folder, not a URL")
        );
    }

    #[test]
    fn includes_are_relative_and_errors_name_the_included_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("catalog")).unwrap();
        let main = dir.path().join("segmill.toml");
        std::fs::write(
            &main,
            format!(
                "include = [\"catalog/traits.toml\"]\n{MINIMAL}\n[[data_source]]\nid = 21\nname = \"CRM\"\n\
                 [[trait]]\nid = 1\ndata_source = 21\n"
            ),
        )
        .unwrap();
        let traits = dir.path().join("catalog/traits.toml");
        std::fs::write(
            &traits,
            "[[trait]]\nid = 2\ndata_source = 21\nttl_days = 7\n[[segment]]\nid = 5\nrule = \"2T\"\n",
        )
        .unwrap();
        let config = Config::load(&main).unwrap();
        assert_eq!(config.traits.keys().copied().collect::<Vec<_>>(), [1, 2]);
        assert_eq!(config.trait_def(2).map(|t| t.ttl_days), Some(7));
        assert_eq!(config.segments.len(), 1);
        assert_eq!(config.paths.state, dir.path().join("state"));

        std::fs::write(
            &traits,
            "[[trait]]\nid = 1\ndata_source = 21\n[[trait]]\nid = 3\ndata_source = 99\n",
        )
        .unwrap();
        assert_eq!(
            message(Config::load(&main)),
            format!(
                "{t}: trait 1: defined twice (first in {m})\n\
                 {t}: trait 3: data_source 99 is not a defined data source",
                t = traits.display(),
                m = main.display()
            )
        );

        std::fs::write(&traits, "[[trait]]\nid = 1\nbogus = 1\n").unwrap();
        let text = message(Config::load(&main));
        assert!(
            text.starts_with(&format!(
                "{}:3:1: trait[0].bogus: unknown field `bogus`",
                traits.display()
            )),
            "{text}"
        );
        std::fs::write(&traits, "include = [\"x.toml\"]\n").unwrap();
        assert!(message(Config::load(&main)).contains("unknown field `include`"));

        std::fs::remove_file(&traits).unwrap();
        let err = Config::load(&main).unwrap_err();
        assert!(matches!(&err, ConfigError::Read { path, .. } if *path == traits));
        assert_eq!(
            err.to_string(),
            format!("{}: cannot read config file", traits.display())
        );
        assert!(
            std::error::Error::source(&err).is_some(),
            "the OS error is the source"
        );
    }

    #[test]
    fn missing_config_file_is_a_read_error() {
        let err = Config::load(Path::new("/nonexistent/segmill.toml")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/nonexistent/segmill.toml: cannot read config file"
        );
        assert!(
            std::error::Error::source(&err).is_some(),
            "the OS error is the source"
        );
    }

    #[test]
    fn many_problems_are_capped_in_display() {
        let mut extra = String::new();
        for id in 1..=60 {
            extra.push_str(&format!("[[trait]]\nid = {id}\ndata_source = 5\n"));
        }
        let err = with_minimal(&extra).unwrap_err();
        let ConfigError::Invalid(problems) = &err else {
            panic!("expected Invalid, got {err:?}");
        };
        assert_eq!(problems.len(), 60);
        let text = err.to_string();
        assert_eq!(text.lines().count(), 51);
        assert_eq!(text.lines().last(), Some("... and 10 more problems"));
    }

    #[test]
    fn ttl_fingerprint_depends_on_ids_and_ttls() {
        let a = parse(FULL).unwrap();
        let b = parse(&FULL.replace("ttl_days = 0", "ttl_days = 1")).unwrap();
        let c = parse(FULL).unwrap();
        assert_eq!(a.fingerprint_ttl(), c.fingerprint_ttl());
        assert_ne!(a.fingerprint_ttl(), b.fingerprint_ttl());
        let mut expected = xxhash_rust::xxh3::Xxh3Default::new();
        for (id, ttl) in [(24u32, 0u32), (25, 120)] {
            expected.update(&id.to_le_bytes());
            expected.update(&ttl.to_le_bytes());
        }
        assert_eq!(a.fingerprint_ttl(), expected.digest());
    }

    #[test]
    fn key_at_finds_headers_and_keys() {
        let text = "a = 1\n[paths]\nstate = 2\n[[trait]]\nid = 1\n[[trait]]\nid = 2\n";
        assert_eq!(key_at(text, 0).as_deref(), Some("a"));
        assert_eq!(
            key_at(text, text.find("state").unwrap() + 8).as_deref(),
            Some("paths.state")
        );
        assert_eq!(
            key_at(text, text.rfind("id").unwrap()).as_deref(),
            Some("trait[1].id")
        );
        assert_eq!(
            key_at(text, text.rfind("[[").unwrap()).as_deref(),
            Some("trait[1]")
        );
        assert_eq!(line_column(text, text.rfind("id").unwrap()), (7, 1));
        assert_eq!(line_column(text, 10_000), (8, 1));
    }

    #[test]
    fn rules_and_templates_are_checked_and_errors_name_the_key() {
        let text = format!(
            "{MINIMAL}\n[[data_source]]\nid = 21\nname = \"CRM\"\n\
             [[trait]]\nid = 24\ndata_source = 21\nrule = 'tier =='\n\
             [[segment]]\nid = 1001\nrule = \"24T AND\"\n\
             [[segment]]\nid = 1002\nrule = \"24T\"\npaused = true\n\
             [[destination]]\nid = 7\nsync_type = \"s3\"\nlocation = \"out/7\"\nsegments = [1002]\n\
             template = \"<UUID><if(SEGMENT_LIST)>\"\n"
        );
        let msg = message(Config::parse(Path::new("segmill.toml"), &text));
        assert!(msg.contains("segmill.toml: trait 24.rule: "), "{msg}");
        assert!(msg.contains("segmill.toml: segment 1001.rule: "), "{msg}");
        assert!(
            msg.contains("segmill.toml: destination 7.template: "),
            "{msg}"
        );
        assert!(!msg.contains("segment 1002"), "{msg}");
    }
}
