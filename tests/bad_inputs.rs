//! The bad-input corpus (`testdata/bad-inputs/`, issue 6 item 5): every row of AAM-REFERENCE §8
//! about names, contents and ID sync (rows 1–7, 11–36, 41–43), each run through the real binary
//! with its expected outcome.
//!
//! `testdata/bad-inputs/manifest.json` lists the cases. Each case folder holds `run1/` (and
//! `run2/`, ...): the files dropped into the inbound root before that run, on top of
//! `common/` (an ID-sync file mapping `cust-001` and `cust-002` of DPID 21). Runs use the
//! manifest's `as_of` times in order. For every run the test checks, exactly:
//! - the exit code;
//! - every file of the run report with its outcome and reason (rejected files), and `ignored`;
//! - the set of receipt jobs, and every counter of each (counters not listed are 0), plus the
//!   receipt identities of CONTRACT §3;
//! - per receipt, the files with their status and `duplicate_of` where given;
//! - `idsync.json`: per ID-sync file its status, rows, rejected rows (with reasons) and
//!   mappings stored.
//!
//! Rows where the contract decides differently from AAM say so in the manifest's `contract`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

/// The corpus folder.
fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/bad-inputs")
}

/// Copies every file under `from` into `to`, keeping relative paths.
fn copy_into(from: &Path, to: &Path) {
    for (rel, bytes) in snapshot(from, |_| false) {
        write_file(&to.join(rel), &bytes);
    }
}

fn manifest() -> Value {
    read_json(&corpus().join("manifest.json"))
}

/// Runs one case of the manifest and checks every run; panics naming the case.
fn run_case(case: &Value, as_of: &[Value], catalog: &str) {
    let dir = case["dir"].as_str().expect("case dir");
    let env = Env::new();
    env.config(4, catalog);
    copy_into(&corpus().join("common"), &env.inbound());
    let runs = case["runs"].as_array().expect("runs");
    assert!(
        runs.len() <= as_of.len(),
        "{dir}: more runs than as_of times"
    );
    for (i, (expected, as_of)) in runs.iter().zip(as_of).enumerate() {
        let as_of = as_of.as_str().expect("as_of");
        let drop = corpus().join(dir).join(format!("run{}", i + 1));
        if drop.is_dir() {
            copy_into(&drop, &env.inbound());
        }
        let what = format!("{dir} run {}", i + 1);
        let out = env.run(as_of, &[]);
        let want_exit = expected["exit"].as_i64().expect("exit") as i32;
        assert_eq!(out.code, want_exit, "{what}: exit code; {out:#?}");
        let run_id = run_id(i as u64 + 1, as_of);
        check_report(&what, &env.run_report(&run_id), expected);
        check_receipts(&what, &env, &run_id, expected);
        check_idsync(&what, &env, &run_id, expected);
    }
}

/// Files of the run report: `{name: [outcome, reason]}` with the reason `null` when none, and
/// `ignored`.
fn check_report(what: &str, report: &Value, expected: &Value) {
    let got: BTreeMap<String, (String, Option<String>)> = report_files(report)
        .into_iter()
        .map(|(name, outcome, reason)| (name, (outcome, reason)))
        .collect();
    let want: BTreeMap<String, (String, Option<String>)> = expected["files"]
        .as_object()
        .expect("files")
        .iter()
        .map(|(name, v)| {
            let outcome = v[0].as_str().expect("outcome").to_string();
            (name.clone(), (outcome, v[1].as_str().map(str::to_string)))
        })
        .collect();
    assert_eq!(got, want, "{what}: run report files");
    let ignored: Vec<&str> = report["ignored"]
        .as_array()
        .expect("ignored")
        .iter()
        .map(|v| v.as_str().expect("ignored name"))
        .collect();
    let want_ignored: Vec<&str> = expected["ignored"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().expect("name")).collect())
        .unwrap_or_default();
    assert_eq!(ignored, want_ignored, "{what}: ignored");
}

/// Receipt jobs, their counters and their files.
fn check_receipts(what: &str, env: &Env, run_id: &str, expected: &Value) {
    let want = expected["receipts"].as_object().expect("receipts");
    let jobs = if env.receipts_dir(run_id).is_dir() {
        env.receipt_jobs(run_id)
    } else {
        Vec::new()
    };
    let want_jobs: Vec<&String> = want.keys().collect();
    assert_eq!(
        jobs.iter().collect::<Vec<_>>(),
        want_jobs,
        "{what}: receipt jobs"
    );
    for (job, spec) in want {
        let receipt = env.receipt(run_id, job);
        let counters: Vec<(&str, u64)> = spec["counters"]
            .as_object()
            .expect("counters")
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_u64().expect("counter value")))
            .collect();
        let got = common::counters(&receipt);
        let mut want_counters: BTreeMap<&str, u64> = COUNTERS.iter().map(|&k| (k, 0)).collect();
        for (k, v) in counters {
            assert!(want_counters.contains_key(k), "{what}: {k} is no counter");
            want_counters.insert(k, v);
        }
        assert_eq!(got, want_counters, "{what}: receipt {job} counters");
        assert_identity(&receipt);
        let files: Vec<Vec<Option<String>>> = receipt["files"]
            .as_array()
            .expect("files")
            .iter()
            .map(|f| {
                let mut row = vec![
                    f["name"].as_str().map(str::to_string),
                    f["status"].as_str().map(str::to_string),
                ];
                if let Some(d) = f["duplicate_of"].as_str() {
                    row.push(Some(d.to_string()));
                }
                row
            })
            .collect();
        let want_files: Vec<Vec<Option<String>>> = spec["files"]
            .as_array()
            .expect("receipt files")
            .iter()
            .map(|row| {
                row.as_array()
                    .expect("file row")
                    .iter()
                    .map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .collect();
        assert_eq!(files, want_files, "{what}: receipt {job} files");
    }
}

/// `idsync.json`: per file `[status, rows, rejected_rows, mappings_stored]`, and the reasons of
/// rejected rows in order.
fn check_idsync(what: &str, env: &Env, run_id: &str, expected: &Value) {
    let Some(want) = expected["idsync"].as_object() else {
        return;
    };
    let receipt = env.idsync_receipt(run_id);
    let files = receipt["files"].as_array().expect("idsync files");
    let names: Vec<&str> = files
        .iter()
        .map(|f| f["name"].as_str().expect("name"))
        .collect();
    let want_names: Vec<&str> = want.keys().map(String::as_str).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, want_names, "{what}: idsync files");
    for f in files {
        let name = f["name"].as_str().expect("name");
        let spec = &want[name];
        let got = (
            f["status"].as_str().map(str::to_string),
            f["rows"].as_u64(),
            f["rejected_rows"].as_u64(),
            f["mappings_stored"].as_u64(),
        );
        let exp = (
            spec["status"].as_str().map(str::to_string),
            spec["rows"].as_u64(),
            spec["rejected_rows"].as_u64(),
            spec["mappings_stored"].as_u64(),
        );
        assert_eq!(got, exp, "{what}: idsync {name}");
        if let Some(reasons) = spec["reasons"].as_array() {
            let got_reasons: Vec<(u64, &str)> = f["rejected"]
                .as_array()
                .expect("rejected rows")
                .iter()
                .map(|r| {
                    (
                        r["line"].as_u64().expect("line"),
                        r["reason"].as_str().expect("reason"),
                    )
                })
                .collect();
            let want_reasons: Vec<(u64, &str)> = reasons
                .iter()
                .map(|r| (r[0].as_u64().expect("line"), r[1].as_str().expect("reason")))
                .collect();
            assert_eq!(
                got_reasons, want_reasons,
                "{what}: idsync {name} rejected rows"
            );
        }
    }
}

/// Every manifest case, one after the other; a failure names the case and the run.
#[test]
fn every_case_gives_its_expected_outcome() {
    let manifest = manifest();
    let catalog = read_text(&corpus().join("catalog.toml"));
    let as_of = manifest["as_of"].as_array().expect("as_of");
    let cases = manifest["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 36, "cases in the manifest");
    for case in cases {
        run_case(case, as_of, &catalog);
    }
}

/// The manifest covers exactly the rows the brief names (AAM-REFERENCE §8 rows 1–7, 11–36 and
/// 41–43), and every case folder is in the manifest.
#[test]
fn manifest_covers_the_rows_and_the_folders() {
    let manifest = manifest();
    let cases = manifest["cases"].as_array().expect("cases");
    let mut rows: Vec<u64> = cases
        .iter()
        .flat_map(|c| c["rows"].as_array().expect("rows").iter())
        .map(|r| r.as_u64().expect("row"))
        .collect();
    rows.sort_unstable();
    rows.dedup();
    let want: Vec<u64> = (1..=7).chain(11..=36).chain(41..=43).collect();
    assert_eq!(rows, want, "rows covered");
    let mut dirs: Vec<String> = std::fs::read_dir(corpus())
        .expect("list corpus")
        .map(|e| e.expect("entry"))
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "common")
        .collect();
    dirs.sort();
    let mut listed: Vec<String> = cases
        .iter()
        .map(|c| c["dir"].as_str().expect("dir").to_string())
        .collect();
    listed.sort();
    assert_eq!(dirs, listed, "case folders vs manifest");
    for case in cases {
        for key in ["aam", "contract"] {
            assert!(
                case[key].as_str().is_some_and(|s| !s.is_empty()),
                "{}: {key} missing",
                case["dir"]
            );
        }
    }
}
