//! Crash safety (CONTRACT §6): a run that fails on an injected write error, or is killed
//! outright, at any stage leaves the previous generation current and intact, and a re-run
//! produces byte-identical outputs and state to a run that was never interrupted. A corrupt
//! state (a flipped byte, a truncated manifest, a missing file) is named by `segmill state
//! verify`, which exits 2 and changes nothing.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const U1: &str = "59767559181262060060278870901087098252";
const U2: &str = "68079982765673198504052656074456196039";

fn config(root: &Path) {
    std::fs::write(
        root.join("segmill.toml"),
        r#"
[paths]
inbound = "inbound"
state = "state"
outbound = "out"
[run]
partitions = 4
# Every chunk's ops spill to disk, so the spill path is crossed (and its failpoint hit).
ops_memory_bytes = 1
chunk_bytes = 16
[[data_source]]
id = 21
name = "CRM"
[[trait]]
id = 24
data_source = 21
[[trait]]
id = 25
data_source = 21
ttl_days = 1
[[segment]]
id = 1001
rule = "24T OR 25T"
[[destination]]
id = 9
sync_type = "s3"
location = "out/9"
segments = [1001]
split_bytes = 60
"#,
    )
    .unwrap();
    std::fs::create_dir_all(root.join("inbound")).unwrap();
}

fn day1(root: &Path) {
    let inbound = root.join("inbound");
    std::fs::write(
        inbound.join("adobe_id_0_21_1763683200.sync"),
        format!("{U1}\tc1\n{U2}\tc2\n"),
    )
    .unwrap();
    std::fs::write(
        inbound.join("ftp_dpm_21_1763700000.sync"),
        "c1\td_sid=24,d_sid=25\nc2\td_sid=25\nc3\td_sid=24\n",
    )
    .unwrap();
}

fn day2(root: &Path) {
    let inbound = root.join("inbound");
    std::fs::write(
        inbound.join("ftp_dpm_21_1763790000.overwrite"),
        "c1\td_sid=25\nc2\n",
    )
    .unwrap();
    std::fs::write(
        inbound.join("ftp_dpm_21_1763790001.sync"),
        "c2\td_sid=24\nbad\tx\ty\n",
    )
    .unwrap();
}

fn segmill(root: &Path, as_of: &str, failpoint: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_segmill"));
    cmd.arg("--config")
        .arg(root.join("segmill.toml"))
        .args(["run", "--as-of", as_of]);
    match failpoint {
        Some(f) => cmd.env("SEGMILL_FAILPOINT", f),
        None => cmd.env_remove("SEGMILL_FAILPOINT"),
    };
    cmd.output().unwrap()
}

/// Every file under `dir` by relative path, except run reports (they hold durations) and
/// the lock file.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(base).unwrap().to_path_buf();
            if rel.starts_with("runs") || rel == Path::new("lock") {
                continue;
            }
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

const DAY1: &str = "2026-11-21T02:00:00Z";
const DAY2: &str = "2026-11-22T03:00:00Z";

#[test]
fn every_failpoint_leaves_the_previous_generation_and_a_rerun_matches() {
    let reference = tempfile::tempdir().unwrap();
    config(reference.path());
    day1(reference.path());
    assert_eq!(segmill(reference.path(), DAY1, None).status.code(), Some(0));
    day2(reference.path());
    assert_eq!(
        segmill(reference.path(), DAY2, None).status.code(),
        Some(1),
        "day 2 has a format error"
    );
    let want = tree(&reference.path().join("state"));
    let want_out = tree(&reference.path().join("out"));
    assert!(
        want_out.len() >= 4,
        "two exports with .info files: {:?}",
        want_out.keys()
    );
    assert!(want.keys().any(|k| k.starts_with("gen-000002")));

    for point in segmill::failpoint::POINTS {
        for abort in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path();
            config(root);
            day1(root);
            assert_eq!(segmill(root, DAY1, None).status.code(), Some(0));
            let before = tree(&root.join("state"));
            day2(root);
            let spec = if abort {
                format!("{point}:abort")
            } else {
                point.to_string()
            };
            let out = segmill(root, DAY2, Some(&spec));
            if abort {
                assert_eq!(
                    out.status.code(),
                    None,
                    "{spec}: the process should have been killed"
                );
            } else {
                assert_eq!(
                    out.status.code(),
                    Some(2),
                    "{spec}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let stderr = String::from_utf8_lossy(&out.stderr);
                assert!(stderr.contains("injected failure"), "{spec}: {stderr}");
            }
            let after = tree(&root.join("state"));
            assert_eq!(
                std::fs::read_to_string(root.join("state/CURRENT"))
                    .unwrap()
                    .split(' ')
                    .next(),
                Some("gen-000001"),
                "{spec}: the previous generation must stay current"
            );
            for (path, bytes) in &before {
                if path.starts_with("gen-000001") || path == Path::new("CURRENT") {
                    assert_eq!(
                        after.get(path),
                        Some(bytes),
                        "{spec}: {} changed",
                        path.display()
                    );
                }
            }
            assert_eq!(
                segmill(root, DAY2, None).status.code(),
                Some(1),
                "{spec}: re-run"
            );
            let got = tree(&root.join("state"));
            assert_eq!(
                got.keys().collect::<Vec<_>>(),
                want.keys().collect::<Vec<_>>(),
                "{spec}: file sets differ"
            );
            for (path, bytes) in &want {
                assert!(
                    got.get(path) == Some(bytes),
                    "{spec}: {} differs after the re-run",
                    path.display()
                );
            }
        }
    }
}

/// `segmill --config ROOT/segmill.toml state verify [--all]`.
fn verify(root: &Path, all: bool) -> common::Out {
    let config = root.join("segmill.toml");
    let mut args = vec!["--config", config.to_str().unwrap(), "state", "verify"];
    if all {
        args.push("--all");
    }
    common::segmill(&args)
}

/// A state with two generations (day 1 and day 2 of the tests above).
fn two_days() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    config(root);
    day1(root);
    assert_eq!(segmill(root, DAY1, None).status.code(), Some(0));
    day2(root);
    assert_eq!(segmill(root, DAY2, None).status.code(), Some(1));
    dir
}

/// Runs `state verify` on a damaged state: exit 2, one problem line naming `path` with
/// `reason`, and nothing under the root changed.
fn assert_verify_names(root: &Path, all: bool, path: &Path, reason: &str) {
    let before = common::snapshot(root, |_| false);
    let out = verify(root, all);
    assert_eq!(out.code, 2, "{out:#?}");
    let problems: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| !l.starts_with("note: ") && !l.starts_with("state verify: "))
        .collect();
    assert_eq!(problems.len(), 1, "{}", out.stdout);
    let want = format!("{}: {reason}", path.display());
    assert!(
        problems[0].starts_with(&want),
        "{} does not start with {want}",
        problems[0]
    );
    assert!(
        out.stdout.lines().last().unwrap().ends_with(": 1 problem"),
        "{}",
        out.stdout
    );
    common::assert_same_tree(
        "state verify wrote",
        &before,
        &common::snapshot(root, |_| false),
    );
}

#[test]
fn state_verify_passes_a_clean_state_and_names_every_damaged_file() {
    let dir = two_days();
    let root = dir.path();
    let state = root.join("state");
    let before = common::snapshot(root, |_| false);
    let out = verify(root, false);
    assert_eq!(out.code, 0, "{out:#?}");
    let gen2 = state.join("gen-000002");
    let files = common::snapshot(&gen2, |rel| rel == "manifest.json").len();
    assert_eq!(
        out.stdout,
        format!("state verify: gen-000002, {files} files checked: clean\n")
    );
    let out = verify(root, true);
    assert_eq!(out.code, 0, "{out:#?}");
    let files1 = common::snapshot(&state.join("gen-000001"), |rel| rel == "manifest.json").len();
    assert_eq!(
        out.stdout,
        format!(
            "state verify: 2 generations (gen-000001 to gen-000002), {} files checked: clean\n",
            files + files1
        )
    );
    common::assert_same_tree(
        "state verify wrote",
        &before,
        &common::snapshot(root, |_| false),
    );

    // A flipped byte in a profile partition of the current generation.
    let part = (0..4)
        .map(|p| gen2.join(format!("profiles/part-{p:04}")))
        .find(|p| p.exists())
        .expect("a profile partition");
    let mut bytes = std::fs::read(&part).unwrap();
    bytes[0] ^= 0x40;
    std::fs::write(&part, &bytes).unwrap();
    assert_verify_names(root, false, &part, "payload checksum is ");
    bytes[0] ^= 0x40;
    std::fs::write(&part, &bytes).unwrap();
    assert_eq!(verify(root, false).code, 0);

    // A missing file.
    let ledger = gen2.join("ledger");
    let saved = std::fs::read(&ledger).unwrap();
    std::fs::remove_file(&ledger).unwrap();
    assert_verify_names(
        root,
        false,
        &ledger,
        "missing: the manifest lists it but the file does not exist",
    );
    std::fs::write(&ledger, &saved).unwrap();
    assert_eq!(verify(root, false).code, 0);

    // A truncated manifest of the current generation: caught by CURRENT's checksum.
    let manifest = gen2.join("manifest.json");
    let saved = std::fs::read(&manifest).unwrap();
    std::fs::write(&manifest, &saved[..saved.len() / 2]).unwrap();
    assert_verify_names(root, false, &manifest, "checksum is ");
    std::fs::write(&manifest, &saved).unwrap();

    // A truncated manifest of an older generation: only --all looks at it.
    let old = state.join("gen-000001/manifest.json");
    let saved = std::fs::read(&old).unwrap();
    std::fs::write(&old, &saved[..saved.len() - 10]).unwrap();
    assert_eq!(verify(root, false).code, 0);
    assert_verify_names(root, true, &old, "not a manifest: ");
}
