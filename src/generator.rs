//! `segmill gen`: a complete, realistic drop folder of any size from a fixed seed (CONTRACT §1,
//! issue 4 item 1).
//!
//! Input: [`GenOptions`]. Output, under `opts.out` (which must be new or empty):
//!
//! ```text
//! segmill.toml                                   data sources 21 and 22, traits, segments,
//!                                                2 destinations; written LAST (completion mark)
//! inbound/date=DAY/adobe_id_0_21_TS.sync[.N]     `ids` rows UUID<TAB>customer-id, parts ≤ 1 GB
//! inbound/date=DAY/ftp_dpm_21_TS.(sync|overwrite)[.N][.gz]
//!                                                `lines` trait lines over `files` files
//! ```
//!
//! Every byte depends only on the options, never on the thread count: lines are generated in
//! fixed-size blocks, each with its own splitmix64 stream seeded from (seed, stream, file, block);
//! blocks are rendered in parallel on the ambient rayon pool (the caller installs one) and
//! written in order. A `.gz` file is a sequence of gzip members, one per block (valid
//! multi-member gzip, read with `MultiGzDecoder`), so compression runs in parallel too. While
//! one window of blocks is written, the next is rendered.
//!
//! Customer IDs and UUIDs are functions of the row index through a bijective 64-bit mixer, so
//! they are unique, look random and need no table: a trait line picks a row index and prints
//! that row's customer ID (synced: index < `ids`; unsynced: index in `ids..2*ids`).
//!
//! Every file is written to a hidden temp name beside its target, fsynced and renamed
//! (`state::atomic_writer`), so a crash never leaves a half file under a real name. The config
//! is written last: a folder with `segmill.toml` is complete.
//!
//! Not done here: argument parsing (the CLI maps its flags onto [`GenOptions`]), building the
//! thread pool, PGP files, device-ID or ODC files.

use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use rayon::prelude::*;

use crate::model::{Dpid, TraitId};
use crate::state::{self, AtomicFile, StateError};

/// Default seed of [`GenOptions::seed`].
pub const DEFAULT_SEED: u64 = 42;
/// Default number of onboarded traits.
pub const DEFAULT_TRAITS: u32 = 5000;
/// Default number of segments.
pub const DEFAULT_SEGMENTS: u32 = 200;
/// Default date folder.
pub const DEFAULT_DAY: &str = "2026-11-21";
/// Lines per trait file when `files` is not given: about 140 MB of text (lines average about
/// 70 bytes), well under AAM's recommended 1 GB per uncompressed file.
pub const DEFAULT_LINES_PER_FILE: u64 = 2_000_000;
/// The customer-ID data source: all trait files and the ID-sync file use it.
pub const CRM_DPID: Dpid = 21;
/// A second data source; its traits appear in CRM files as failed-validation traits.
pub const PARTNER_DPID: Dpid = 22;
/// The first trait ID; traits are numbered consecutively from here.
pub const FIRST_TRAIT: TraitId = 1000;
/// The first segment ID; segments are numbered consecutively from here.
pub const FIRST_SEGMENT: u32 = 500_000;
/// Upper bound of `traits` and `segments`: far above AAM's largest catalogs (100,000 traits,
/// 20,000 segments), low enough that the config stays loadable.
pub const MAX_CATALOG: u32 = 1_000_000;
/// Upper bound of `ids`: a trillion rows, so `2 * ids` (the unsynced index space) never
/// overflows and a typo fails fast.
pub const MAX_IDS: u64 = 1_000_000_000_000;

/// Lines (or ID-sync rows) per block: about 1.6 MB of text, enough to amortise the per-block
/// seeding and gzip member header, small enough that a window of blocks per thread stays in
/// tens of MB.
const BLOCK_LINES: u64 = 16_384;
/// Blocks rendered per thread in one window.
const BLOCKS_PER_THREAD: usize = 4;
/// Longest ID-sync row: 38-digit UUID, TAB, 40-char customer ID, LF.
const MAX_IDSYNC_ROW: u64 = 38 + 1 + 40 + 1;
/// ID-sync parts stay at or under 1 GB (AAM's recommended uncompressed size).
const IDSYNC_PART_ROWS: u64 = 1_000_000_000 / MAX_IDSYNC_ROW;

// Probabilities in parts per million.
const PPM: u64 = 1_000_000;
/// Lines whose user is one of the ID-sync rows.
const SYNCED_PPM: u64 = 900_000;
/// Lines that repeat the previous line's user.
const REPEAT_USER_PPM: u64 = 50_000;
/// Synced picks drawn from a skewed (Zipf-ish) distribution instead of uniform.
const HOT_USER_PPM: u64 = 300_000;
/// Lines with the wrong TAB count (Format Errors).
const MALFORMED_LINE_PPM: u64 = 1_000;
/// Item mix, cumulative thresholds checked in order; the rest is `d_sid` of a CRM trait.
const MALFORMED_ITEM_PPM: u64 = 500;
const FOREIGN_ITEM_PPM: u64 = MALFORMED_ITEM_PPM + 15_000;
const REMOVE_ITEM_PPM: u64 = FOREIGN_ITEM_PPM + 60_000;
const IC_ITEM_PPM: u64 = REMOVE_ITEM_PPM + 50_000;
const KV_ITEM_PPM: u64 = IC_ITEM_PPM + 70_000;
/// Most items on one line (at least 1).
const MAX_ITEMS: u64 = 8;

/// `ic` values used by rules and signals: `IC_BASE..IC_BASE + IC_COUNT`.
const IC_BASE: u64 = 30_600;
const IC_COUNT: u64 = 64;
/// Key-value vocabulary shared by trait rules and line signals.
const VOCABULARY: &[(&str, &[&str])] = &[
    ("product", &["tablet", "phone", "laptop", "camera", "tv"]),
    ("tier", &["gold", "silver", "bronze", "platinum"]),
    ("gender", &["f", "m"]),
    (
        "city",
        &["New York", "San Francisco", "Berlin", "Paris", "Tokyo"],
    ),
    ("age", &["18", "25", "32", "45", "60"]),
];

/// Customer-ID characters: exactly 64, so one character holds 6 bits.
const ID_ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";

// Independent random streams, so the catalog does not shift when line options change.
const STREAM_CATALOG: u64 = 0xca7a_1065;
const STREAM_TRAITS: u64 = 0x7a17_f11e;
const KEY_CUSTOMER: u64 = 0xc057_0e11;
const KEY_UUID: u64 = 0x0a0a_0a11;
const SALT_FILLER: u64 = 0xf111_e111;
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// What to generate. Build it with [`GenOptions::new`] and override fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenOptions {
    /// Folder to create (or an existing empty one): `segmill.toml`, `inbound/…`.
    pub out: PathBuf,
    /// Synced customer IDs: rows of the ID-sync file. 0 writes no ID-sync file.
    pub ids: u64,
    /// Trait-file lines in total. 0 writes no trait file.
    pub lines: u64,
    /// Seed of every random choice; same seed and options, same bytes.
    pub seed: u64,
    /// Trait files, at least 1 (capped at `lines`, so no file is empty).
    pub files: u32,
    /// Onboarded traits, IDs from [`FIRST_TRAIT`].
    pub traits: u32,
    /// Segments, IDs from [`FIRST_SEGMENT`].
    pub segments: u32,
    /// The `date=` folder, `YYYY-MM-DD`; file timestamps fall on this day (UTC).
    pub day: String,
}

impl GenOptions {
    /// Options with every default: seed 42, [`default_files`] files, 5000 traits, 200
    /// segments, day 2026-11-21.
    pub fn new(out: PathBuf, ids: u64, lines: u64) -> GenOptions {
        GenOptions {
            out,
            ids,
            lines,
            seed: DEFAULT_SEED,
            files: default_files(lines),
            traits: DEFAULT_TRAITS,
            segments: DEFAULT_SEGMENTS,
            day: DEFAULT_DAY.to_owned(),
        }
    }
}

/// Default trait-file count for `lines`: one per [`DEFAULT_LINES_PER_FILE`] lines, at least 1.
pub fn default_files(lines: u64) -> u32 {
    u32::try_from(lines / DEFAULT_LINES_PER_FILE)
        .unwrap_or(u32::MAX)
        .max(1)
}

/// What [`generate`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenSummary {
    /// Every inbound file written, ID-sync parts first, then trait files in timestamp order,
    /// each with its size in bytes on disk (compressed for `.gz`).
    pub files: Vec<(PathBuf, u64)>,
    /// Trait-file lines written, malformed ones included; equals the `lines` option.
    pub lines: u64,
    /// ID-sync rows written; equals the `ids` option.
    pub ids: u64,
    /// The config file.
    pub config: PathBuf,
    /// Trait lines written with a wrong TAB count on purpose (Format Errors).
    pub format_errors: u64,
    /// Items written malformed on purpose (`d_sid=x…`, `N:5`, `=value`, `d_sid=`).
    pub malformed_items: u64,
}

/// Why generation failed. Every message names the option or the path.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    /// An option value cannot be used.
    #[error("gen option {option}: {reason}")]
    BadOption {
        /// The option's name.
        option: &'static str,
        /// What is wrong and what to pass instead.
        reason: String,
    },
    /// The output folder already holds files.
    #[error(
        "output folder {} is not empty; choose a new folder or empty it (gen never mixes its files \
         with existing ones)",
        path.display()
    )]
    NotEmpty {
        /// The folder.
        path: PathBuf,
    },
    /// The output folder cannot be listed.
    #[error("cannot read output folder {}: {source}", path.display())]
    ReadDir {
        /// The folder.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Writing or compressing a file failed.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file (its final name; the bytes go to a temp file beside it).
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Creating a folder, or committing a file (fsync, rename), failed.
    #[error(transparent)]
    Commit(#[from] StateError),
}

/// Writes the drop folder described by `opts`; see the module docs for the layout. Runs on
/// the current rayon pool; the output does not depend on its size.
pub fn generate(opts: &GenOptions) -> anyhow::Result<GenSummary> {
    Ok(generate_typed(opts)?)
}

fn generate_typed(opts: &GenOptions) -> Result<GenSummary, GenError> {
    let day_start = check_options(opts)?;
    ensure_empty(&opts.out)?;
    let day_dir = opts.out.join("inbound").join(format!("date={}", opts.day));
    state::create_dir_all_durable(&day_dir)?;

    let catalog = Catalog::build(opts);
    let keys = IdKeys::new(opts.seed);
    let plan = plan_files(opts, day_start, &day_dir);
    let ctx = LineContext {
        keys,
        ids: opts.ids,
        catalog: &catalog,
    };
    let totals = write_planned(&plan, &ctx, opts.seed)?;

    let config = opts.out.join("segmill.toml");
    state::write_atomic(&config, catalog.config_toml().as_bytes())?;
    Ok(GenSummary {
        files: totals.files,
        lines: totals.lines,
        ids: totals.rows,
        config,
        format_errors: totals.format_errors,
        malformed_items: totals.malformed_items,
    })
}

/// Validates the options; returns the UTC start of `day` in Unix seconds.
fn check_options(opts: &GenOptions) -> Result<i64, GenError> {
    let bad = |option, reason: String| GenError::BadOption { option, reason };
    let day_start = parse_day(&opts.day).ok_or_else(|| {
        bad(
            "day",
            format!(
                "{:?} is not a date YYYY-MM-DD between 2001-09-10 and 2286-11-19 \
                 (file timestamps must have 10 digits)",
                opts.day
            ),
        )
    })?;
    if opts.lines > 0 && opts.files == 0 {
        return Err(bad("files", "must be at least 1".into()));
    }
    if opts.ids > MAX_IDS {
        return Err(bad(
            "ids",
            format!("{} is above the limit of {MAX_IDS}", opts.ids),
        ));
    }
    for (option, value) in [("traits", opts.traits), ("segments", opts.segments)] {
        if value > MAX_CATALOG {
            return Err(bad(
                option,
                format!("{value} is above the limit of {MAX_CATALOG}"),
            ));
        }
    }
    // The last drop's timestamp must keep 10 digits.
    let last_ts = day_start + DROP_OFFSET + i64::from(opts.files) * DROP_SPACING;
    if last_ts >= 10_000_000_000 {
        return Err(bad(
            "day",
            format!(
                "{} with {} files runs past the last 10-digit timestamp",
                opts.day, opts.files
            ),
        ));
    }
    Ok(day_start)
}

/// The UTC midnight of a `YYYY-MM-DD` date whose timestamps have exactly 10 digits.
fn parse_day(day: &str) -> Option<i64> {
    let b = day.as_bytes();
    let digits = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(r)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    if b.len() != 10 || b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    let year = i16::try_from(digits(0..4)?).ok()?;
    let month = i8::try_from(digits(5..7)?).ok()?;
    let dom = i8::try_from(digits(8..10)?).ok()?;
    let date = jiff::civil::Date::new(year, month, dom).ok()?;
    let start = date
        .to_zoned(jiff::tz::TimeZone::UTC)
        .ok()?
        .timestamp()
        .as_second();
    (1_000_000_000..10_000_000_000 - 86_400)
        .contains(&start)
        .then_some(start)
}

/// Refuses a folder that exists with entries in it; a missing folder is fine.
fn ensure_empty(out: &Path) -> Result<(), GenError> {
    match std::fs::read_dir(out) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(GenError::NotEmpty {
                    path: out.to_path_buf(),
                });
            }
            Ok(())
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(GenError::ReadDir {
            path: out.to_path_buf(),
            source,
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Randomness and IDs

/// The splitmix64 finalizer: a bijection on u64 (xor-shifts and odd multiplies are each
/// invertible), so distinct inputs give distinct outputs.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// splitmix64: tiny, fast and good enough for sample data; one per block.
struct Rng(u64);

impl Rng {
    /// The stream of `block` of `file` in random stream `stream`.
    fn for_block(seed: u64, stream: u64, file: u64, block: u64) -> Rng {
        Rng(mix64(mix64(mix64(seed ^ stream) ^ file) ^ block))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        mix64(self.0)
    }

    /// Uniform in `0..n` (0 when `n` is 0), by multiply-shift: no division, no bias worth
    /// caring about for sample data.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }

    /// True with probability `ppm` parts per million.
    fn chance(&mut self, ppm: u64) -> bool {
        self.below(PPM) < ppm
    }

    /// An element of a non-empty slice; `None` for an empty one.
    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        items.get(self.below(items.len() as u64) as usize)
    }

    /// Skewed towards 0 (density about ln(n/x)/n): popular items and users.
    fn skewed(&mut self, n: u64) -> u64 {
        let bound = self.below(n);
        self.below(bound + 1)
    }
}

/// Per-seed keys of the two ID mixers.
#[derive(Clone, Copy)]
struct IdKeys {
    customer: u64,
    uuid: u64,
}

impl IdKeys {
    fn new(seed: u64) -> IdKeys {
        IdKeys {
            customer: mix64(seed ^ KEY_CUSTOMER),
            uuid: mix64(seed ^ KEY_UUID),
        }
    }

    /// Appends the customer ID of row `k`: 20–40 characters of `[A-Za-z0-9_-]`. The first 11
    /// characters spell all 64 bits of a bijective mix of `k`, so IDs of distinct rows differ.
    fn push_customer_id(self, out: &mut Vec<u8>, k: u64) {
        let x = mix64(k ^ self.customer);
        let mut filler = mix64(x ^ SALT_FILLER);
        let len = 20 + (filler % 21) as usize;
        let mut v = x;
        for _ in 0..11 {
            out.push(ID_ALPHABET[(v & 63) as usize]);
            v >>= 6;
        }
        filler >>= 5;
        let mut left_in_word = 9;
        let mut word_no = 1u64;
        for _ in 11..len {
            if left_in_word == 0 {
                filler = mix64(x ^ SALT_FILLER.wrapping_add(word_no.wrapping_mul(GOLDEN)));
                word_no += 1;
                left_in_word = 10;
            }
            out.push(ID_ALPHABET[(filler & 63) as usize]);
            filler >>= 6;
            left_in_word -= 1;
        }
    }

    /// Appends the AAM UUID of row `k`: 38 digits, the last 20 a bijective mix of `k`.
    fn push_uuid(self, out: &mut Vec<u8>, k: u64) {
        let x = mix64(k ^ self.uuid);
        push_padded(out, mix64(x ^ SALT_FILLER) % 1_000_000_000_000_000_000, 18);
        push_padded(out, x, 20);
    }
}

/// Appends `v` in decimal, zero-padded to `width` digits (at most 20; wider `v` is cut to its
/// last `width` digits, which callers rule out).
fn push_padded(out: &mut Vec<u8>, mut v: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let width = width.min(digits.len());
    for slot in digits.iter_mut().take(width).rev() {
        *slot = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out.extend_from_slice(digits.get(..width).unwrap_or_default());
}

/// Appends `v` in decimal without padding.
fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        if let Some(slot) = digits.get_mut(start) {
            *slot = b'0' + (v % 10) as u8;
        }
        v /= 10;
        if v == 0 || start == 0 {
            break;
        }
    }
    out.extend_from_slice(digits.get(start..).unwrap_or_default());
}

// ---------------------------------------------------------------------------------------------
// Catalog and config

/// One generated trait.
struct TraitDef {
    id: TraitId,
    data_source: Dpid,
    rule: Option<String>,
    /// `None`: the default TTL (the key is left out of the config).
    ttl_days: Option<u32>,
}

/// Traits, segments and destinations, derived from the seed alone.
struct Catalog {
    traits: Vec<TraitDef>,
    /// IDs of CRM (21) traits, the usual `d_sid` targets.
    own: Vec<TraitId>,
    /// IDs of partner (22) traits: failed validation in CRM files.
    foreign: Vec<TraitId>,
    /// (segment ID, code-view rule).
    segments: Vec<(u32, String)>,
}

impl Catalog {
    fn build(opts: &GenOptions) -> Catalog {
        let mut rng = Rng::for_block(opts.seed, STREAM_CATALOG, 0, 0);
        let mut traits = Vec::with_capacity(opts.traits as usize);
        let (mut own, mut foreign) = (Vec::new(), Vec::new());
        for i in 0..opts.traits {
            let id = FIRST_TRAIT + i;
            // Exactly one trait in ten belongs to the partner source.
            let data_source = if i % 10 == 9 { PARTNER_DPID } else { CRM_DPID };
            let rule =
                (data_source == CRM_DPID && rng.chance(100_000)).then(|| trait_rule(&mut rng));
            let ttl_days = match rng.below(100) {
                0..80 => None,
                80..93 => Some(30),
                _ => Some(0),
            };
            if data_source == CRM_DPID {
                own.push(id);
            } else {
                foreign.push(id);
            }
            traits.push(TraitDef {
                id,
                data_source,
                rule,
                ttl_days,
            });
        }
        let segments = if own.is_empty() {
            Vec::new()
        } else {
            (0..opts.segments)
                .map(|i| (FIRST_SEGMENT + i, segment_rule(&mut rng, &own, i)))
                .collect()
        };
        Catalog {
            traits,
            own,
            foreign,
            segments,
        }
    }

    /// The whole `segmill.toml`.
    fn config_toml(&self) -> String {
        let mut s = String::with_capacity(128 * (self.traits.len() + self.segments.len()) + 2048);
        // Writing into a String cannot fail; `let _` keeps clippy quiet without unwrap.
        let _ = self.write_config(&mut s);
        s
    }

    fn write_config(&self, s: &mut String) -> std::fmt::Result {
        writeln!(s, "# Generated by `segmill gen`: synthetic sample data.")?;
        writeln!(
            s,
            "[paths]\ninbound = \"inbound\"\nstate = \"state\"\noutbound = \"out\"\n"
        )?;
        writeln!(s, "[run]\npartitions = 64\n")?;
        writeln!(
            s,
            "[[data_source]]\nid = {CRM_DPID}\nname = \"CRM\"\nid_type = \"customer\"\n"
        )?;
        writeln!(
            s,
            "[[data_source]]\nid = {PARTNER_DPID}\nname = \"Partner feed\"\nid_type = \"customer\"\n"
        )?;
        for t in &self.traits {
            writeln!(
                s,
                "[[trait]]\nid = {}\ndata_source = {}",
                t.id, t.data_source
            )?;
            if let Some(rule) = &t.rule {
                // Literal strings: rules hold double quotes and never a single quote.
                writeln!(s, "rule = '{rule}'")?;
            }
            if let Some(ttl) = t.ttl_days {
                writeln!(s, "ttl_days = {ttl}")?;
            }
            writeln!(s)?;
        }
        for (id, rule) in &self.segments {
            writeln!(s, "[[segment]]\nid = {id}\nrule = '{rule}'\n")?;
        }
        let every =
            |n: usize| -> Vec<u32> { self.segments.iter().step_by(n).map(|(id, _)| *id).collect() };
        writeln!(
            s,
            "[[destination]]\nid = 7001\nsync_type = \"s3\"\nlocation = \"out/7001\"\n\
             master_dpid = 0\npid_alias = \"SegmillDemo\"\nmode = \"iter\"\nsegments = {:?}\n\
             gzip = true\nsplit_bytes = 268435456\n",
            every(2)
        )?;
        writeln!(
            s,
            "[[destination]]\nid = 7002\nsync_type = \"ftp\"\nlocation = \"out/7002\"\n\
             master_dpid = 0\nmode = \"full\"\nsegments = {:?}\ngzip = false\n\
             template = '<UUID><TAB><SEGMENT_LIST;separator=\",\">'",
            every(3)
        )
    }
}

/// A trait-builder rule from the shared vocabulary.
fn trait_rule(rng: &mut Rng) -> String {
    let kv = |rng: &mut Rng| -> String {
        let (key, values) = rng.pick(VOCABULARY).copied().unwrap_or(("tier", &["gold"]));
        let value = rng.pick(values).copied().unwrap_or("gold");
        format!("{key} == \"{value}\"")
    };
    match rng.below(10) {
        0..5 => format!("ic == \"{}\"", IC_BASE + rng.below(IC_COUNT)),
        5..9 => kv(rng),
        _ => {
            let (a, b) = (kv(rng), kv(rng));
            format!("{a} AND {b}")
        }
    }
}

/// A code-view segment rule over CRM traits, favouring popular (low-index) ones so segments
/// have members. `own` is not empty.
fn segment_rule(rng: &mut Rng, own: &[TraitId], i: u32) -> String {
    let n = own.len() as u64;
    let base = rng.skewed(n.min(200));
    let step = 1 + rng.below((n / 4).max(1));
    let t = |j: u64| {
        own.get(((base + j * step) % n) as usize)
            .copied()
            .unwrap_or(FIRST_TRAIT)
    };
    let (a, b, c, d) = (t(0), t(1), t(2), t(3));
    match i % 6 {
        0 => format!("{a}T AND {b}T"),
        1 => format!("({a}T OR {b}T) AND NOT {c}T"),
        2 => format!("{a}T OR {b}T OR {c}T"),
        3 => format!("FREQUENCY([{a}T,{b}T] <= 30D) >= 1"),
        4 => format!("{a}T"),
        _ => format!("({a}T AND {b}T) OR ({c}T AND NOT {d}T)"),
    }
}

// ---------------------------------------------------------------------------------------------
// File plan

/// Seconds after midnight of the first trait drop, and between drops. ID-sync files are
/// stamped one hour after midnight, before every trait drop.
const DROP_OFFSET: i64 = 7_200;
const DROP_SPACING: i64 = 60;
const IDSYNC_OFFSET: i64 = 3_600;

/// One file to write.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Planned {
    path: PathBuf,
    gzip: bool,
    /// ID-sync rows (rows `first..first + count`) or trait lines (`count` lines).
    idsync: bool,
    first: u64,
    count: u64,
    /// Index among files of its kind; seeds the trait-line streams.
    file_no: u64,
}

/// The trait-file pattern, repeated every 10 files: (overwrite, gzip, part number). Files 1–2
/// and 5–7 are split parts of one drop; 1, 2 and 4 are gzip (3 in 10); 9 is `.overwrite`.
const PATTERN: [(bool, bool, Option<u32>); 10] = [
    (false, false, None),
    (false, true, Some(1)),
    (false, true, Some(2)),
    (false, false, None),
    (false, true, None),
    (false, false, Some(1)),
    (false, false, Some(2)),
    (false, false, Some(3)),
    (false, false, None),
    (true, false, None),
];

fn plan_files(opts: &GenOptions, day_start: i64, dir: &Path) -> Vec<Planned> {
    let mut plan = Vec::new();
    let parts = opts.ids.div_ceil(IDSYNC_PART_ROWS);
    let ts = day_start + IDSYNC_OFFSET;
    for part in 0..parts {
        let suffix = if parts > 1 {
            format!(".{}", part + 1)
        } else {
            String::new()
        };
        let first = part * IDSYNC_PART_ROWS;
        plan.push(Planned {
            path: dir.join(format!("adobe_id_0_{CRM_DPID}_{ts}.sync{suffix}")),
            gzip: false,
            idsync: true,
            first,
            count: (opts.ids - first).min(IDSYNC_PART_ROWS),
            file_no: part,
        });
    }
    let files = u64::from(opts.files).min(opts.lines);
    let mut drop_no: i64 = -1;
    for f in 0..files {
        let (overwrite, gzip, part) = PATTERN
            .get((f % 10) as usize)
            .copied()
            .unwrap_or((false, false, None));
        if part.is_none_or(|p| p == 1) {
            drop_no += 1;
        }
        let ts = day_start + DROP_OFFSET + drop_no * DROP_SPACING;
        let mode = if overwrite { "overwrite" } else { "sync" };
        let part = part.map(|p| format!(".{p}")).unwrap_or_default();
        let gz = if gzip { ".gz" } else { "" };
        // Lines split evenly: file f gets [f*L/F, (f+1)*L/F).
        let bound = |i: u64| (u128::from(i) * u128::from(opts.lines) / u128::from(files)) as u64;
        let first = bound(f);
        plan.push(Planned {
            path: dir.join(format!("ftp_dpm_{CRM_DPID}_{ts}.{mode}{part}{gz}")),
            gzip,
            idsync: false,
            first,
            count: bound(f + 1) - first,
            file_no: f,
        });
    }
    plan
}

// ---------------------------------------------------------------------------------------------
// Rendering

/// Read-only inputs of line rendering.
struct LineContext<'a> {
    keys: IdKeys,
    ids: u64,
    catalog: &'a Catalog,
}

/// Counts of one block (or of everything written).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct BlockStats {
    lines: u64,
    rows: u64,
    format_errors: u64,
    malformed_items: u64,
}

impl LineContext<'_> {
    /// Rows `first..first + count` of the ID-sync file.
    fn render_idsync(&self, first: u64, count: u64, out: &mut Vec<u8>) -> BlockStats {
        for k in first..first + count {
            self.keys.push_uuid(out, k);
            out.push(b'\t');
            self.keys.push_customer_id(out, k);
            out.push(b'\n');
        }
        BlockStats {
            rows: count,
            ..BlockStats::default()
        }
    }

    /// `count` trait lines from `rng`.
    fn render_traits(&self, rng: &mut Rng, count: u64, out: &mut Vec<u8>) -> BlockStats {
        let mut stats = BlockStats {
            lines: count,
            ..BlockStats::default()
        };
        let mut prev: Option<u64> = None;
        for _ in 0..count {
            let user = match prev {
                Some(k) if rng.chance(REPEAT_USER_PPM) => k,
                _ => self.pick_user(rng),
            };
            prev = Some(user);
            self.keys.push_customer_id(out, user);
            if rng.chance(MALFORMED_LINE_PPM) {
                // A third column: a Format Error (wrong TAB count).
                push_tagged(out, b"\td_sid=", FIRST_TRAIT);
                out.extend_from_slice(b"\tsegment\n");
                stats.format_errors += 1;
                continue;
            }
            out.push(b'\t');
            let items = 1 + rng.below(MAX_ITEMS);
            for i in 0..items {
                if i > 0 {
                    out.push(b',');
                }
                if self.push_item(rng, out) {
                    stats.malformed_items += 1;
                }
            }
            out.push(b'\n');
        }
        stats
    }

    /// A row index: synced (`< ids`, uniform or skewed) or unsynced (`ids..2*ids`).
    fn pick_user(&self, rng: &mut Rng) -> u64 {
        if self.ids > 0 && rng.chance(SYNCED_PPM) {
            if rng.chance(HOT_USER_PPM) {
                rng.skewed(self.ids)
            } else {
                rng.below(self.ids)
            }
        } else {
            self.ids + rng.below(self.ids.max(1))
        }
    }

    /// Appends one item; true when it is malformed on purpose.
    fn push_item(&self, rng: &mut Rng, out: &mut Vec<u8>) -> bool {
        let roll = rng.below(PPM);
        if roll < MALFORMED_ITEM_PPM {
            let bad: &[u8] = match rng.below(4) {
                0 => b"d_sid=x1000",
                1 => b"1000:5",
                2 => b"=tablet",
                _ => b"d_sid=",
            };
            out.extend_from_slice(bad);
            return true;
        }
        if roll < FOREIGN_ITEM_PPM {
            if let Some(&t) = rng.pick(&self.catalog.foreign) {
                push_tagged(out, b"d_sid=", t);
                return false;
            }
        } else if roll < REMOVE_ITEM_PPM {
            if let Some(t) = self.own_trait(rng) {
                match rng.below(10) {
                    0 => push_colon_removal(out, t, b":0"),
                    1 => push_colon_removal(out, t, b":-1"),
                    _ => push_tagged(out, b"d_unsid=", t),
                }
                return false;
            }
        } else if roll < IC_ITEM_PPM {
            push_ic(rng, out);
            return false;
        } else if roll < KV_ITEM_PPM {
            push_kv(rng, out);
            return false;
        }
        // The common case, and the fallback when a trait list is empty.
        match self.own_trait(rng) {
            Some(t) => push_tagged(out, b"d_sid=", t),
            None => push_ic(rng, out),
        }
        false
    }

    /// A CRM trait, half uniform, half skewed to the popular low IDs.
    fn own_trait(&self, rng: &mut Rng) -> Option<TraitId> {
        let own = &self.catalog.own;
        let n = own.len() as u64;
        let i = if rng.chance(500_000) {
            rng.skewed(n)
        } else {
            rng.below(n)
        };
        own.get(i as usize).copied()
    }
}

/// `TAG` followed by a trait ID, e.g. `d_sid=1000`.
fn push_tagged(out: &mut Vec<u8>, tag: &[u8], t: TraitId) {
    out.extend_from_slice(tag);
    push_u64(out, u64::from(t));
}

/// A trait ID followed by `:0` or `:-1`.
fn push_colon_removal(out: &mut Vec<u8>, t: TraitId, suffix: &[u8]) {
    push_u64(out, u64::from(t));
    out.extend_from_slice(suffix);
}

/// `ic=N` or a bare `N`.
fn push_ic(rng: &mut Rng, out: &mut Vec<u8>) {
    if rng.chance(500_000) {
        out.extend_from_slice(b"ic=");
    }
    push_u64(out, IC_BASE + rng.below(IC_COUNT));
}

/// A key-value signal in one of the spellings AAM documents.
fn push_kv(rng: &mut Rng, out: &mut Vec<u8>) {
    let Some(&(key, values)) = rng.pick(VOCABULARY) else {
        return;
    };
    let value = rng.pick(values).copied().unwrap_or_default();
    let (key, value) = (key.as_bytes(), value.as_bytes());
    match rng.below(20) {
        0..14 => {
            out.extend_from_slice(key);
            out.push(b'=');
            out.extend_from_slice(value);
        }
        14..17 => {
            out.push(b'"');
            out.extend_from_slice(key);
            out.extend_from_slice(b"\"=\"");
            out.extend_from_slice(value);
            out.push(b'"');
        }
        17..19 => {
            out.extend_from_slice(key);
            out.extend_from_slice(b" = ");
            out.extend_from_slice(value);
        }
        _ => {
            out.push(b'-');
            out.extend_from_slice(key);
            out.push(b'=');
            out.extend_from_slice(value);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Writing

/// One block of one planned file.
struct Job<'a> {
    /// Index of the file in the plan: blocks of one file are consecutive.
    file: usize,
    planned: &'a Planned,
    /// Block number within the file; seeds the block's random stream.
    block: u64,
    first: u64,
    count: u64,
}

/// A rendered (and maybe compressed) block.
struct Rendered<'a> {
    file: usize,
    path: &'a Path,
    bytes: Vec<u8>,
    stats: BlockStats,
}

/// Everything written.
#[derive(Default)]
struct Totals {
    files: Vec<(PathBuf, u64)>,
    lines: u64,
    rows: u64,
    format_errors: u64,
    malformed_items: u64,
}

fn jobs_of(plan: &[Planned]) -> Vec<Job<'_>> {
    let mut jobs = Vec::new();
    for (file, planned) in plan.iter().enumerate() {
        let mut block = 0;
        let mut first = planned.first;
        let end = planned.first + planned.count;
        while first < end {
            let count = (end - first).min(BLOCK_LINES);
            jobs.push(Job {
                file,
                planned,
                block,
                first,
                count,
            });
            block += 1;
            first += count;
        }
    }
    jobs
}

/// Renders one block (pure apart from the allocation of its buffer) and gzips it into one
/// member when its file is `.gz`.
fn render_job<'a>(
    job: &Job<'a>,
    ctx: &LineContext<'_>,
    seed: u64,
) -> Result<Rendered<'a>, GenError> {
    let p = job.planned;
    // 112 bytes covers the average line (about 70) with room, so most blocks never regrow.
    let mut text = Vec::with_capacity((job.count * 112) as usize);
    let stats = if p.idsync {
        ctx.render_idsync(job.first, job.count, &mut text)
    } else {
        let mut rng = Rng::for_block(seed, STREAM_TRAITS, p.file_no, job.block);
        ctx.render_traits(&mut rng, job.count, &mut text)
    };
    let bytes = if p.gzip {
        let mut enc = GzEncoder::new(Vec::with_capacity(text.len() / 3), Compression::fast());
        enc.write_all(&text)
            .and_then(|()| enc.finish())
            .map_err(|source| GenError::Write {
                path: p.path.clone(),
                source,
            })?
    } else {
        text
    };
    Ok(Rendered {
        file: job.file,
        path: &p.path,
        bytes,
        stats,
    })
}

/// Renders every block of `plan` in parallel windows and writes them in order, the write of
/// one window overlapping the rendering of the next.
fn write_planned(plan: &[Planned], ctx: &LineContext<'_>, seed: u64) -> Result<Totals, GenError> {
    let jobs = jobs_of(plan);
    let window = rayon::current_num_threads().max(1) * BLOCKS_PER_THREAD;
    let mut sink = Sink::default();
    let mut pending: Vec<Rendered<'_>> = Vec::new();
    for chunk in jobs.chunks(window) {
        let ready = std::mem::take(&mut pending);
        let (written, rendered) = rayon::join(
            || sink.write_all(ready),
            || {
                chunk
                    .par_iter()
                    .map(|job| render_job(job, ctx, seed))
                    .collect::<Result<Vec<_>, _>>()
            },
        );
        written?;
        pending = rendered?;
    }
    sink.write_all(pending)?;
    sink.close()?;
    Ok(sink.totals)
}

/// Writes rendered blocks in order into their files, one open file at a time.
#[derive(Default)]
struct Sink {
    /// The file being written: its index in the plan, its path, its writer, bytes so far.
    open: Option<(usize, PathBuf, AtomicFile, u64)>,
    totals: Totals,
}

impl Sink {
    fn write_all(&mut self, blocks: Vec<Rendered<'_>>) -> Result<(), GenError> {
        for block in blocks {
            let open = match &mut self.open {
                Some(open) if open.0 == block.file => open,
                _ => {
                    self.close()?;
                    let wtr = state::atomic_writer(block.path)?;
                    self.open
                        .insert((block.file, block.path.to_path_buf(), wtr, 0))
                }
            };
            let (_, path, wtr, bytes) = open;
            wtr.write_all(&block.bytes)
                .map_err(|source| GenError::Write {
                    path: path.clone(),
                    source,
                })?;
            *bytes += block.bytes.len() as u64;
            let t = &mut self.totals;
            t.lines += block.stats.lines;
            t.rows += block.stats.rows;
            t.format_errors += block.stats.format_errors;
            t.malformed_items += block.stats.malformed_items;
        }
        Ok(())
    }

    /// Commits the open file, if any: fsync, rename onto its name, fsync the folder.
    fn close(&mut self) -> Result<(), GenError> {
        if let Some((_, path, wtr, bytes)) = self.open.take() {
            wtr.finish()?;
            self.totals.files.push((path, bytes));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};
    use std::io::Read;

    use super::*;
    use crate::config::{Config, ExportMode};
    use crate::inbound::names::{Classified, classify};
    use crate::model::Uuid;
    use crate::parse::{FormatError, Item, LineKind, parse_line};

    /// 2026-11-21T00:00:00Z.
    const DAY_START: i64 = 1_795_219_200;

    fn opts(out: &Path, ids: u64, lines: u64, files: u32) -> GenOptions {
        GenOptions {
            files,
            traits: 300,
            segments: 24,
            ..GenOptions::new(out.to_path_buf(), ids, lines)
        }
    }

    fn run_with_threads(threads: usize, opts: &GenOptions) -> GenSummary {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| generate(opts)).unwrap()
    }

    /// Every file under `root`: relative path → (size, xxh3-64 of the bytes).
    fn digest_tree(root: &Path) -> BTreeMap<String, (u64, u64)> {
        let mut out = BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    let bytes = std::fs::read(&path).unwrap();
                    let rel = path.strip_prefix(root).unwrap().display().to_string();
                    let hash = xxhash_rust::xxh3::xxh3_64(&bytes);
                    out.insert(rel, (bytes.len() as u64, hash));
                }
            }
        }
        out
    }

    /// The decompressed text of a generated file.
    fn text_of(path: &Path) -> Vec<u8> {
        let raw = std::fs::read(path).unwrap();
        if path.extension().is_some_and(|e| e == "gz") {
            let mut text = Vec::new();
            flate2::read::MultiGzDecoder::new(raw.as_slice())
                .read_to_end(&mut text)
                .unwrap();
            text
        } else {
            raw
        }
    }

    fn is_idsync(path: &Path) -> bool {
        path.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("adobe_id_"))
    }

    #[test]
    fn output_bytes_do_not_depend_on_thread_count() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        // 20,000 lines per file: two blocks each, so the .gz files hold two members.
        let one = run_with_threads(1, &opts(a.path(), 5_000, 60_000, 3));
        let two = run_with_threads(2, &opts(b.path(), 5_000, 60_000, 3));
        let (tree_a, tree_b) = (digest_tree(a.path()), digest_tree(b.path()));
        assert_eq!(tree_a, tree_b);
        assert_eq!(
            tree_a.len(),
            5,
            "config, ID sync, 3 trait files: {tree_a:?}"
        );
        assert_eq!(one.lines, 60_000);
        assert_eq!(one.ids, 5_000);
        assert_eq!(
            (one.lines, one.ids, one.format_errors, one.malformed_items),
            (two.lines, two.ids, two.format_errors, two.malformed_items)
        );
        let sizes = |s: &GenSummary| s.files.iter().map(|(_, n)| *n).collect::<Vec<_>>();
        assert_eq!(sizes(&one), sizes(&two));
        // The reported sizes are the sizes on disk.
        for (path, size) in &one.files {
            assert_eq!(std::fs::metadata(path).unwrap().len(), *size);
        }
    }

    #[test]
    fn gzip_files_are_multi_member_and_decode_whole() {
        let dir = tempfile::tempdir().unwrap();
        let summary = run_with_threads(2, &opts(dir.path(), 100, 40_000, 2));
        let (gz, _) = summary
            .files
            .iter()
            .find(|(p, _)| p.extension().is_some_and(|e| e == "gz"))
            .unwrap();
        let raw = std::fs::read(gz).unwrap();
        assert_eq!(raw.get(..2), Some(&[0x1f, 0x8b][..]));
        // A single-member decoder stops after the first block of 16,384 lines.
        let mut first = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut first)
            .unwrap();
        assert_eq!(memchr::memchr_iter(b'\n', &first).count(), 16_384);
        assert_eq!(memchr::memchr_iter(b'\n', &text_of(gz)).count(), 20_000);
    }

    #[test]
    fn another_seed_gives_other_bytes() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        run_with_threads(1, &opts(a.path(), 100, 500, 1));
        run_with_threads(
            1,
            &GenOptions {
                seed: 7,
                ..opts(b.path(), 100, 500, 1)
            },
        );
        let (tree_a, tree_b) = (digest_tree(a.path()), digest_tree(b.path()));
        assert_eq!(
            tree_a.keys().collect::<Vec<_>>(),
            tree_b.keys().collect::<Vec<_>>()
        );
        for (name, digest) in &tree_a {
            assert_ne!(Some(digest), tree_b.get(name), "{name}");
        }
    }

    #[test]
    fn names_follow_the_pattern_and_are_valid_inbound_names() {
        let dir = tempfile::tempdir().unwrap();
        let summary = run_with_threads(2, &opts(dir.path(), 10, 1_200, 12));
        let names: Vec<String> = summary
            .files
            .iter()
            .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        let ts = |drop: i64| DAY_START + DROP_OFFSET + drop * DROP_SPACING;
        let expected = vec![
            format!("adobe_id_0_21_{}.sync", DAY_START + IDSYNC_OFFSET),
            format!("ftp_dpm_21_{}.sync", ts(0)),
            format!("ftp_dpm_21_{}.sync.1.gz", ts(1)),
            format!("ftp_dpm_21_{}.sync.2.gz", ts(1)),
            format!("ftp_dpm_21_{}.sync", ts(2)),
            format!("ftp_dpm_21_{}.sync.gz", ts(3)),
            format!("ftp_dpm_21_{}.sync.1", ts(4)),
            format!("ftp_dpm_21_{}.sync.2", ts(4)),
            format!("ftp_dpm_21_{}.sync.3", ts(4)),
            format!("ftp_dpm_21_{}.sync", ts(5)),
            format!("ftp_dpm_21_{}.overwrite", ts(6)),
            format!("ftp_dpm_21_{}.sync", ts(7)),
            format!("ftp_dpm_21_{}.sync.1.gz", ts(8)),
        ];
        assert_eq!(names, expected);
        assert_eq!(ts(0), 1_795_226_400);
        for (path, _) in &summary.files {
            assert!(path.starts_with(dir.path().join("inbound/date=2026-11-21")));
            let name = path.file_name().unwrap().to_str().unwrap();
            assert!(
                matches!(classify(name), Classified::Trait(_) | Classified::IdSync(_)),
                "{name}: {:?}",
                classify(name)
            );
            let lines = memchr::memchr_iter(b'\n', &text_of(path)).count();
            assert_eq!(lines, if is_idsync(path) { 10 } else { 100 }, "{name}");
        }
        // No temp file is left behind.
        let leftovers: Vec<_> = digest_tree(dir.path())
            .into_keys()
            .filter(|k| k.contains("segmill-tmp"))
            .collect();
        assert_eq!(leftovers, Vec::<String>::new());
    }

    #[test]
    fn lines_parse_except_the_intended_malformed_ones_and_90_percent_match() {
        let dir = tempfile::tempdir().unwrap();
        let summary = run_with_threads(2, &opts(dir.path(), 20_000, 10_000, 4));
        let mut synced: HashSet<Vec<u8>> = HashSet::new();
        let mut uuids: HashSet<Vec<u8>> = HashSet::new();
        let mut traits = Vec::new();
        for (path, _) in &summary.files {
            let text = text_of(path);
            if is_idsync(path) {
                for row in text.split(|&b| b == b'\n').filter(|r| !r.is_empty()) {
                    let (uuid, id) = row.split_at(memchr::memchr(b'\t', row).unwrap());
                    assert!(Uuid::parse(uuid).is_some(), "{row:?}");
                    let id = &id[1..];
                    assert!((20..=40).contains(&id.len()), "{id:?}");
                    assert!(id.iter().all(|b| ID_ALPHABET.contains(b)), "{id:?}");
                    assert!(uuids.insert(uuid.to_vec()), "duplicate UUID {uuid:?}");
                    assert!(synced.insert(id.to_vec()), "duplicate customer ID {id:?}");
                }
            } else {
                traits.push(text);
            }
        }
        assert_eq!(synced.len(), 20_000);

        let (mut records, mut matched, mut format_errors) = (0u64, 0u64, 0);
        let mut kinds = [0u64; 5];
        let mut users = HashSet::new();
        let mut lines = 0u64;
        for text in &traits {
            assert_eq!(text.last(), Some(&b'\n'));
            for line in text.strip_suffix(b"\n").unwrap().split(|&b| b == b'\n') {
                lines += 1;
                match parse_line(line, false) {
                    LineKind::Record(rec) => {
                        records += 1;
                        matched += u64::from(synced.contains(rec.id));
                        users.insert(rec.id.to_vec());
                        let n = rec.items().count();
                        assert!((1..=8).contains(&n), "{n} items: {line:?}");
                        for item in rec.items() {
                            let k = match item {
                                Item::Realize(_) => 0,
                                Item::Remove(_) => 1,
                                Item::Signal { .. } => 2,
                                Item::Ic(_) => 3,
                                Item::Malformed(_) => 4,
                            };
                            kinds[k] += 1;
                        }
                    }
                    LineKind::FormatError(FormatError::TabCount { found: 2 }) => format_errors += 1,
                    other => panic!("unexpected {other:?} for {line:?}"),
                }
            }
        }
        let malformed = kinds[4];
        assert_eq!(lines, 10_000);
        assert_eq!(summary.lines, 10_000);
        assert_eq!(format_errors, summary.format_errors);
        assert_eq!(malformed, summary.malformed_items);
        assert!((1..=40).contains(&format_errors), "{format_errors}");
        assert!((1..=80).contains(&malformed), "{malformed}");
        let rate = matched as f64 / records as f64;
        assert!((0.87..=0.93).contains(&rate), "match rate {rate}");
        // Repeated users, and every item kind present, d_sid the most common.
        assert!(
            users.len() < records as usize * 97 / 100,
            "{} users",
            users.len()
        );
        assert!(kinds.iter().all(|&n| n > 0), "{kinds:?}");
        assert!(kinds[0] > kinds[1] + kinds[2] + kinds[3], "{kinds:?}");
    }

    #[test]
    fn config_loads_with_the_promised_catalog() {
        let dir = tempfile::tempdir().unwrap();
        let summary = run_with_threads(
            1,
            &GenOptions {
                traits: 1_000,
                segments: 30,
                ..opts(dir.path(), 10, 10, 1)
            },
        );
        assert_eq!(summary.config, dir.path().join("segmill.toml"));
        let config = Config::load(&summary.config).unwrap();
        assert_eq!(config.run.partitions, 64);
        assert_eq!(
            config.paths.inbound.as_local(),
            Some(dir.path().join("inbound").as_path())
        );
        assert_eq!(config.paths.state, dir.path().join("state"));
        assert_eq!(
            config.data_sources.keys().copied().collect::<Vec<_>>(),
            [21, 22]
        );
        assert_eq!(config.traits.len(), 1_000);
        assert_eq!(config.traits.keys().next(), Some(&1000));
        assert_eq!(config.traits.keys().last(), Some(&1999));
        let crm = config
            .traits
            .values()
            .filter(|t| t.data_source == 21)
            .count();
        assert_eq!(crm, 900);
        let rules = config.traits.values().filter(|t| t.rule.is_some()).count();
        assert!((50..=140).contains(&rules), "{rules} rules");
        assert!(
            config
                .traits
                .values()
                .all(|t| t.rule.is_none() || t.data_source == 21)
        );
        let ttl = |d: u32| config.traits.values().filter(|t| t.ttl_days == d).count();
        assert!(
            ttl(120) > 700 && ttl(30) > 50 && ttl(0) > 20,
            "{} {} {}",
            ttl(120),
            ttl(30),
            ttl(0)
        );
        assert_eq!(config.segments.len(), 30);
        assert!(
            config
                .segments
                .values()
                .any(|s| s.rule.starts_with("FREQUENCY(["))
        );
        assert_eq!(config.destinations.len(), 2);
        let iter = &config.destinations[&7001];
        assert_eq!(
            (iter.mode, iter.gzip, iter.split_bytes),
            (ExportMode::Iter, true, 256 << 20)
        );
        assert_eq!(iter.segments.len(), 15);
        let full = &config.destinations[&7002];
        assert_eq!(full.mode, ExportMode::Full);
        assert_eq!(
            full.template.as_deref(),
            Some("<UUID><TAB><SEGMENT_LIST;separator=\",\">")
        );
        assert_eq!(full.segments.len(), 10);
    }

    #[test]
    fn refuses_a_non_empty_folder_and_bad_options() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keep.txt"), b"x").unwrap();
        let err = generate(&opts(dir.path(), 1, 1, 1))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("is not empty") && err.contains(&dir.path().display().to_string()),
            "{err}"
        );

        let fresh = dir.path().join("new");
        for (day, ok) in [
            ("2026-02-30", false),
            ("26-11-21", false),
            ("1999-01-01", false),
            ("2001-09-09", false),
            ("2001-09-10", true),
            ("2286-11-19", true),
            ("2286-11-20", false),
            ("2026-11-21", true),
        ] {
            let result = generate_typed(&GenOptions {
                day: day.into(),
                ..opts(&fresh.join(day), 1, 1, 1)
            });
            assert_eq!(result.is_ok(), ok, "{day}: {result:?}");
        }
        let err = generate_typed(&opts(&fresh.join("f"), 1, 5, 0)).unwrap_err();
        assert_eq!(err.to_string(), "gen option files: must be at least 1");
        assert!(!fresh.join("f").exists());
    }

    #[test]
    fn empty_sizes_write_only_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let summary = run_with_threads(1, &opts(dir.path(), 0, 0, 1));
        assert_eq!(summary.files, Vec::new());
        assert!(Config::load(&summary.config).is_ok());
        // More files than lines: no empty file.
        let dir = tempfile::tempdir().unwrap();
        let summary = run_with_threads(1, &opts(dir.path(), 0, 3, 10));
        assert_eq!(summary.files.len(), 3);
        assert!(summary.files.iter().all(|(_, n)| *n > 0));
    }

    #[test]
    fn digit_writers() {
        let mut out = Vec::new();
        for v in [0, 7, 10, 1234, u64::MAX] {
            push_u64(&mut out, v);
            out.push(b' ');
        }
        assert_eq!(out, b"0 7 10 1234 18446744073709551615 ");
        out.clear();
        push_padded(&mut out, 42, 5);
        push_padded(&mut out, u64::MAX, 20);
        push_padded(&mut out, 0, 3);
        assert_eq!(out, b"0004218446744073709551615000");
    }

    #[test]
    fn ids_are_unique_well_formed_and_seeded() {
        let keys = IdKeys::new(42);
        let mut ids = HashSet::new();
        let mut buf = Vec::new();
        for k in 0..50_000 {
            buf.clear();
            keys.push_customer_id(&mut buf, k);
            assert!((20..=40).contains(&buf.len()));
            assert!(ids.insert(buf.clone()));
            buf.clear();
            keys.push_uuid(&mut buf, k);
            assert_eq!(buf.len(), 38);
            assert!(Uuid::parse(&buf).is_some());
        }
        let lens: HashSet<usize> = ids.iter().map(Vec::len).collect();
        assert_eq!(lens.len(), 21, "every length 20..=40 occurs");
        let (mut a, mut b) = (Vec::new(), Vec::new());
        IdKeys::new(42).push_customer_id(&mut a, 5);
        IdKeys::new(43).push_customer_id(&mut b, 5);
        assert_ne!(a, b);
    }
}
