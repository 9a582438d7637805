//! Helpers for the end-to-end tests: a temp folder with an inbound root, a state folder and a
//! config written by the test; the real `segmill` binary run as a child process; readers for
//! receipts, rejects and run reports; whole-folder snapshots for byte-for-byte comparisons.
//!
//! Everything here panics with a message naming the path on failure: these are tests.

#![allow(dead_code)]

use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The receipt counters of CONTRACT §6, in the receipt's order.
pub const COUNTERS: [&str; 17] = [
    "records_received",
    "format_errors",
    "invalid_aam_id",
    "invalid_device_id",
    "no_matching_aam_id",
    "no_trait_realized",
    "records_processed",
    "stored_records",
    "total_devices",
    "total_signals",
    "total_unused_signals",
    "total_realized_traits",
    "total_removed_traits",
    "total_traits_failed_validation",
    "total_users_with_failed_traits",
    "lines_over_user_limit",
    "malformed_items",
];

/// What one invocation of the binary did.
#[derive(Debug)]
pub struct Out {
    /// The exit code (-1 if killed by a signal).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// One test's world: `<tmp>/inbound`, `<tmp>/state`, `<tmp>/segmill.toml`.
pub struct Env {
    dir: tempfile::TempDir,
}

impl Default for Env {
    fn default() -> Self {
        Env::new()
    }
}

impl Env {
    /// A fresh temp folder with an empty inbound root.
    pub fn new() -> Env {
        let dir = tempfile::tempdir().expect("create temp dir");
        std::fs::create_dir_all(dir.path().join("inbound")).expect("create inbound");
        Env { dir }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn inbound(&self) -> PathBuf {
        self.root().join("inbound")
    }

    pub fn state(&self) -> PathBuf {
        self.root().join("state")
    }

    pub fn config_path(&self) -> PathBuf {
        self.root().join("segmill.toml")
    }

    /// Writes `segmill.toml`: `[paths]` (inbound, state, out beside it), `[run]` with
    /// `partitions`, then `catalog` verbatim.
    pub fn config(&self, partitions: u32, catalog: &str) {
        self.config_with_state("state", partitions, catalog);
    }

    /// Like [`Env::config`] with another state folder (relative to the temp root).
    pub fn config_with_state(&self, state: &str, partitions: u32, catalog: &str) {
        let text = format!(
            "[paths]\ninbound = \"inbound\"\nstate = \"{state}\"\noutbound = \"out\"\n\n\
             [run]\npartitions = {partitions}\n\n{catalog}"
        );
        std::fs::write(self.config_path(), text).expect("write config");
    }

    /// Writes `content` to `inbound/<rel>`, creating folders.
    pub fn put(&self, rel: &str, content: &[u8]) -> PathBuf {
        let path = self.inbound().join(rel);
        write_file(&path, content);
        path
    }

    /// Writes `content` gzip-compressed to `inbound/<rel>`.
    pub fn put_gz(&self, rel: &str, content: &[u8]) -> PathBuf {
        self.put(rel, &gzip(content))
    }

    /// Runs `segmill --config <cfg> ARGS...`.
    pub fn segmill(&self, args: &[&str]) -> Out {
        self.segmill_env(args, &[])
    }

    /// [`Env::segmill`] with extra environment variables.
    pub fn segmill_env(&self, args: &[&str], vars: &[(&str, &str)]) -> Out {
        let config = self.config_path();
        let mut full: Vec<&str> = vec!["--config", config.to_str().expect("utf-8 temp path")];
        full.extend_from_slice(args);
        segmill_with(&full, vars)
    }

    /// `segmill run --as-of AS_OF` plus extra arguments.
    pub fn run(&self, as_of: &str, extra: &[&str]) -> Out {
        let mut args = vec!["run", "--as-of", as_of];
        args.extend_from_slice(extra);
        self.segmill(&args)
    }

    /// `run`, asserting the exit code.
    pub fn run_ok(&self, as_of: &str, expected_code: i32) -> Out {
        let out = self.run(as_of, &[]);
        assert_eq!(
            out.code, expected_code,
            "segmill run --as-of {as_of}: {out:#?}"
        );
        out
    }

    /// `segmill inspect profile ID [--dpid DPID]` stdout, asserting exit 0.
    pub fn inspect_profile(&self, id: &str, dpid: Option<u32>) -> String {
        let dpid_text = dpid.map(|d| d.to_string());
        let mut args = vec!["inspect", "profile", id];
        if let Some(d) = &dpid_text {
            args.extend_from_slice(&["--dpid", d]);
        }
        let out = self.segmill(&args);
        assert_eq!(out.code, 0, "inspect profile {id}: {out:#?}");
        out.stdout
    }

    pub fn receipts_dir(&self, run_id: &str) -> PathBuf {
        self.state().join("receipts").join(run_id)
    }

    /// `receipts/<run_id>/<job>.json`, parsed.
    pub fn receipt(&self, run_id: &str, job: &str) -> Value {
        read_json(&self.receipts_dir(run_id).join(format!("{job}.json")))
    }

    /// `receipts/<run_id>/<job>.txt`.
    pub fn receipt_text(&self, run_id: &str, job: &str) -> String {
        read_text(&self.receipts_dir(run_id).join(format!("{job}.txt")))
    }

    /// `receipts/<run_id>/<job>.rejects.tsv`.
    pub fn rejects(&self, run_id: &str, job: &str) -> String {
        read_text(&self.receipts_dir(run_id).join(format!("{job}.rejects.tsv")))
    }

    /// `receipts/<run_id>/idsync.json`, parsed.
    pub fn idsync_receipt(&self, run_id: &str) -> Value {
        read_json(&self.receipts_dir(run_id).join("idsync.json"))
    }

    /// `runs/<run_id>.json`, parsed.
    pub fn run_report(&self, run_id: &str) -> Value {
        read_json(&self.state().join("runs").join(format!("{run_id}.json")))
    }

    /// The job names that have a receipt in run `run_id` (`21`, `0_21`, ...), sorted.
    pub fn receipt_jobs(&self, run_id: &str) -> Vec<String> {
        let dir = self.receipts_dir(run_id);
        let mut jobs: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .filter_map(|n| n.strip_suffix(".json").map(str::to_string))
            .filter(|n| n != "idsync")
            .collect();
        jobs.sort();
        jobs
    }

    /// Every file under the state folder except the lock and the run reports (which hold
    /// wall-clock durations).
    pub fn state_snapshot(&self) -> BTreeMap<String, Vec<u8>> {
        snapshot(&self.state(), |rel| {
            rel == "lock" || rel.starts_with("runs/")
        })
    }

    /// Every file under the state folder, run reports included, except the lock (whose
    /// holder line changes whenever a run takes it).
    pub fn state_snapshot_all(&self) -> BTreeMap<String, Vec<u8>> {
        snapshot(&self.state(), |rel| rel == "lock")
    }
}

/// Runs the binary with `args`.
pub fn segmill(args: &[&str]) -> Out {
    segmill_with(args, &[])
}

/// Runs the binary with `args` and extra environment variables.
pub fn segmill_with(args: &[&str], vars: &[(&str, &str)]) -> Out {
    let out = Command::new(env!("CARGO_BIN_EXE_segmill"))
        .args(args)
        .env_remove("RUST_LOG")
        .envs(vars.iter().copied())
        .output()
        .expect("spawn segmill");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The run id segmill gives generation `generation` at `as_of` (`2026-11-22T02:00:00Z` →
/// `000001-20261122T020000Z`).
pub fn run_id(generation: u64, as_of: &str) -> String {
    let compact: String = as_of.chars().filter(|c| *c != '-' && *c != ':').collect();
    format!("{generation:06}-{compact}")
}

pub fn write_file(path: &Path, content: &[u8]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .unwrap_or_else(|e| panic!("create {}: {e}", parent.display()));
    }
    std::fs::write(path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

pub fn gzip(content: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(content).expect("gzip");
    enc.finish().expect("gzip")
}

pub fn read_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

pub fn read_json(path: &Path) -> Value {
    serde_json::from_str(&read_text(path))
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Every file under `root` by path relative to it (`/`-separated), with its bytes, except those
/// for which `skip(rel)` holds. A missing root is an empty map.
pub fn snapshot(root: &Path, skip: impl Fn(&str) -> bool) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let path = e.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .replace('\\', "/");
            if !skip(&rel) {
                let bytes =
                    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
                out.insert(rel, bytes);
            }
        }
    }
    out
}

/// Asserts two snapshots hold the same files with the same bytes, naming the first difference.
pub fn assert_same_tree(
    what: &str,
    left: &BTreeMap<String, Vec<u8>>,
    right: &BTreeMap<String, Vec<u8>>,
) {
    let only_left: Vec<&String> = left.keys().filter(|k| !right.contains_key(*k)).collect();
    let only_right: Vec<&String> = right.keys().filter(|k| !left.contains_key(*k)).collect();
    assert!(
        only_left.is_empty() && only_right.is_empty(),
        "{what}: different file lists: only in the first {only_left:?}, only in the second {only_right:?}"
    );
    for (name, bytes) in left {
        assert!(
            &right[name] == bytes,
            "{what}: {name} differs:\n--- left\n{}\n--- right\n{}",
            String::from_utf8_lossy(bytes),
            String::from_utf8_lossy(&right[name])
        );
    }
}

/// The 17 counters of a receipt (or of one of its `files` entries).
pub fn counters(v: &Value) -> BTreeMap<&'static str, u64> {
    COUNTERS
        .iter()
        .map(|&k| {
            let n = v[k]
                .as_u64()
                .unwrap_or_else(|| panic!("counter {k} missing or not a number in {v:#}"));
            (k, n)
        })
        .collect()
}

/// Asserts every counter: those listed have the given value, all others are 0.
#[track_caller]
pub fn assert_counters(v: &Value, expected: &[(&str, u64)]) {
    let got = counters(v);
    let mut want: BTreeMap<&'static str, u64> = COUNTERS.iter().map(|&k| (k, 0)).collect();
    for &(k, n) in expected {
        let slot = want
            .get_mut(k)
            .unwrap_or_else(|| panic!("{k} is not a receipt counter"));
        *slot = n;
    }
    assert_eq!(got, want, "receipt counters");
}

/// The receipt identity of CONTRACT §3 (Stored = Processed − the categories, and Processed =
/// Received − over the per-user limit).
#[track_caller]
pub fn assert_identity(v: &Value) {
    let c = counters(v);
    assert_eq!(
        c["stored_records"],
        c["records_processed"]
            - c["format_errors"]
            - c["invalid_aam_id"]
            - c["invalid_device_id"]
            - c["no_matching_aam_id"]
            - c["no_trait_realized"],
        "Stored identity"
    );
    assert_eq!(
        c["records_processed"],
        c["records_received"] - c["lines_over_user_limit"],
        "Processed identity"
    );
}

/// `(name, outcome, reason)` of every entry of a run report's `files` list.
pub fn report_files(report: &Value) -> Vec<(String, String, Option<String>)> {
    report["files"]
        .as_array()
        .expect("files array")
        .iter()
        .map(|f| {
            (
                f["name"].as_str().expect("name").to_string(),
                f["outcome"].as_str().expect("outcome").to_string(),
                f["reason"].as_str().map(str::to_string),
            )
        })
        .collect()
}

/// Owned `(name, outcome, reason)` from literals, for comparing with [`report_files`].
pub fn files(list: &[(&str, &str, Option<&str>)]) -> Vec<(String, String, Option<String>)> {
    list.iter()
        .map(|(n, o, r)| (n.to_string(), o.to_string(), r.map(str::to_string)))
        .collect()
}

/// `(name, status)` of every entry of a receipt's `files` list.
pub fn receipt_files(receipt: &Value) -> Vec<(String, String)> {
    receipt["files"]
        .as_array()
        .expect("files array")
        .iter()
        .map(|f| {
            (
                f["name"].as_str().expect("name").to_string(),
                f["status"].as_str().expect("status").to_string(),
            )
        })
        .collect()
}

/// Copies the folder `from` to `to` (created), files and subfolders; symlinks are not expected.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("create {}: {e}", to.display()));
    for e in std::fs::read_dir(from).unwrap_or_else(|e| panic!("list {}: {e}", from.display())) {
        let e = e.expect("dir entry");
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_type().expect("file type").is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst)
                .unwrap_or_else(|e| panic!("copy {} to {}: {e}", src.display(), dst.display()));
        }
    }
}
