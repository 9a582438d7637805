//! `segmill state verify`: a read-only check of a whole state folder.
//!
//! Checks the current generation (or, with `all`, every kept generation): `CURRENT` names a
//! generation and its manifest's checksum, the manifest parses with a known format version,
//! every file it lists exists with the recorded size, footer and checksum, the ledger and the
//! profile, ID-sync and destination-member partitions decode, partition numbers are within the
//! partition count, and the manifest's metadata parses as the run's `StateMeta`.
//!
//! This is the one place in `state` that knows what the files hold; it only calls the owning
//! modules' decoders. It never writes, creates or locks anything, and it does not stop at the
//! first problem: every problem is collected with the file it concerns.
//!
//! Leftovers of a killed run (`*.partial` folders, temp files, a complete generation newer
//! than the current one) are not problems: the next run sweeps them. They are listed as notes.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::generation::{self, Generation};
use super::{CURRENT, LEDGER_FILE, Ledger, StateError, fsutil, parse_current};

/// One thing wrong with the state folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The file or folder concerned.
    pub path: PathBuf,
    /// What is wrong, for a person.
    pub reason: String,
}

/// What [`verify`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// The generations checked, ascending.
    pub generations: Vec<u64>,
    /// Data files checked (each file of each generation counted once per generation).
    pub files: u64,
    /// Everything wrong, in the order found.
    pub problems: Vec<Problem>,
    /// Facts worth saying that are not problems (leftovers of a killed run, a fresh folder).
    pub notes: Vec<String>,
}

impl VerifyReport {
    /// Whether no problem was found.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    /// One line per problem (`path: reason`), one per note (`note: ...`), then a summary line.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for p in &self.problems {
            out.push_str(&format!("{}: {}\n", p.path.display(), p.reason));
        }
        for n in &self.notes {
            out.push_str(&format!("note: {n}\n"));
        }
        let gens = match (self.generations.first(), self.generations.last()) {
            (None, _) | (_, None) => "no generation".to_owned(),
            (Some(&a), Some(&b)) if a == b => generation::dir_name(a),
            (Some(&a), Some(&b)) => format!(
                "{} generations ({} to {})",
                self.generations.len(),
                generation::dir_name(a),
                generation::dir_name(b)
            ),
        };
        let outcome = match self.problems.len() {
            0 => "clean".to_owned(),
            1 => "1 problem".to_owned(),
            n => format!("{n} problems"),
        };
        out.push_str(&format!(
            "state verify: {gens}, {} files checked: {outcome}\n",
            self.files
        ));
        out
    }

    fn problem(&mut self, path: &Path, reason: impl Into<String>) {
        self.problems.push(Problem {
            path: path.to_path_buf(),
            reason: reason.into(),
        });
    }

    fn state_error(&mut self, err: StateError) {
        let problem = match err {
            StateError::Corrupt { path, reason } => Problem { path, reason },
            StateError::Io { op, path, source } => Problem {
                reason: format!("cannot {op} it: {source}"),
                path,
            },
            StateError::TooNew {
                path,
                found,
                supported,
            } => Problem {
                reason: format!(
                    "format version {found}, but this segmill reads at most version {supported}"
                ),
                path,
            },
            other => Problem {
                path: PathBuf::new(),
                reason: other.to_string(),
            },
        };
        self.problems.push(problem);
    }
}

/// Checks the state folder `root` without writing anything: its current generation, or every
/// kept generation when `all`. Never fails: everything wrong (an unreadable folder included)
/// is a [`Problem`] in the report.
pub fn verify(root: &Path, all: bool) -> VerifyReport {
    let mut report = VerifyReport::default();
    let numbers = match list_root(root, &mut report) {
        Some(numbers) => numbers,
        None => return report,
    };
    let current = match current_of(root, &numbers, &mut report) {
        Ok(current) => current,
        Err(()) => return report,
    };
    let Some((number, sum)) = current else {
        return report;
    };
    for &newer in numbers.iter().filter(|&&n| n > number) {
        report.notes.push(format!(
            "{} is newer than the current {}: left by an interrupted run, removed by the next \
             run, not checked",
            generation::dir_name(newer),
            generation::dir_name(number)
        ));
    }
    let mut to_check: Vec<(u64, Option<u64>)> = vec![(number, Some(sum))];
    if all {
        to_check.extend(numbers.iter().filter(|&&n| n < number).map(|&n| (n, None)));
    }
    to_check.sort_unstable_by_key(|&(n, _)| n);
    let mut buf = Vec::new();
    for (n, sum) in to_check {
        report.generations.push(n);
        let loaded = match sum {
            Some(sum) => Generation::load(root, n, sum),
            None => Generation::load_kept(root, n),
        };
        match loaded {
            Ok(generation) => check_generation(&generation, &mut buf, &mut report),
            Err(err) => report.state_error(err),
        }
    }
    report
}

/// The complete generation numbers under `root`, noting leftovers; `None` (with a problem)
/// when `root` cannot be listed.
fn list_root(root: &Path, report: &mut VerifyReport) -> Option<Vec<u64>> {
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            report.problem(root, "the state folder does not exist");
            return None;
        }
        Err(e) => {
            report.problem(root, format!("cannot list the state folder: {e}"));
            return None;
        }
    };
    let mut numbers = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                report.problem(root, format!("cannot list the state folder: {e}"));
                return None;
            }
        };
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(n) = generation::parse_dir_name(name) {
            numbers.push(n);
        } else if name.ends_with(generation::PARTIAL_SUFFIX) || fsutil::is_temp_name(name) {
            report.notes.push(format!(
                "{name}: left by an interrupted run, removed by the next run"
            ));
        }
    }
    numbers.sort_unstable();
    Some(numbers)
}

/// The generation `CURRENT` names and its manifest checksum; `Ok(None)` for a folder without
/// a committed generation; `Err` (with a problem) when `CURRENT` is unusable.
fn current_of(
    root: &Path,
    numbers: &[u64],
    report: &mut VerifyReport,
) -> Result<Option<(u64, u64)>, ()> {
    let path = root.join(CURRENT);
    let text = match fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // As `StateDir::current`: only a first generation may lack CURRENT (its commit was
            // cut short between the folder rename and CURRENT).
            return match numbers.iter().find(|&&n| n > 1) {
                Some(&n) => {
                    report.problem(
                        &path,
                        format!(
                            "missing, but {} exists: CURRENT was lost",
                            generation::dir_name(n)
                        ),
                    );
                    Err(())
                }
                None => {
                    report.notes.push(match numbers.first() {
                        Some(_) => "no committed generation yet (gen-000001 is an interrupted \
                                    first commit, removed by the next run)"
                            .to_owned(),
                        None => "no committed generation yet (a fresh state folder)".to_owned(),
                    });
                    Ok(None)
                }
            };
        }
        Err(e) => {
            report.problem(&path, format!("cannot read it: {e}"));
            return Err(());
        }
    };
    match parse_current(&text) {
        Some(current) => Ok(Some(current)),
        None => {
            report.problem(
                &path,
                format!(
                    "expected one line \"gen-NNNNNN <16 hex digits>\", found {:?}",
                    String::from_utf8_lossy(text.get(..80).unwrap_or(&text))
                ),
            );
            Err(())
        }
    }
}

/// Checks the metadata and every file of one loaded generation.
fn check_generation(generation: &Generation, buf: &mut Vec<u8>, report: &mut VerifyReport) {
    let manifest_path = generation.dir.join("manifest.json");
    let partitions =
        match serde_json::from_value::<crate::run::StateMeta>(generation.manifest.meta.clone()) {
            Ok(meta) => Some(meta.partitions),
            Err(e) => {
                report.problem(
                    &manifest_path,
                    format!("its metadata is not a segmill state: {e}"),
                );
                None
            }
        };
    for (rel, _) in generation.files() {
        report.files += 1;
        let path = generation.dir.join(rel);
        match generation.read_into(rel, buf) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(err) => {
                report.state_error(err);
                continue;
            }
        }
        match check_content(rel, buf, partitions, generation.manifest.format_version) {
            Ok(()) => {}
            Err(Content::Bad(reason)) => report.problem(&path, reason),
            Err(Content::Unknown) => report.notes.push(format!(
                "{}: not a file this segmill writes; only its checksum was checked",
                path.display()
            )),
        }
    }
    check_companions(generation, report);
}

/// Checks that every block index and delta has the file it goes with, and every block index
/// that file's length and each of its blocks' checksums (a night reads only some blocks, and
/// trusts the rest to the index).
fn check_companions(generation: &Generation, report: &mut VerifyReport) {
    use crate::state::{COUNTS_SUFFIX, DELTA_SUFFIX, INDEX_SUFFIX};
    let names: std::collections::BTreeSet<&str> = generation.files().map(|(n, _)| n).collect();
    for &rel in &names {
        let (base, what) = if let Some(base) = rel.strip_suffix(INDEX_SUFFIX) {
            (base, "a block index")
        } else if let Some(delta) = rel.strip_suffix(COUNTS_SUFFIX) {
            (delta, "block counts")
        } else if let Some(base) = rel.strip_suffix(DELTA_SUFFIX) {
            (base, "a delta")
        } else {
            continue;
        };
        let path = generation.dir.join(rel);
        if !names.contains(base) {
            report.problem(
                &path,
                format!("{what} of {base}, which this generation does not hold"),
            );
            continue;
        }
        if rel.ends_with(COUNTS_SUFFIX) {
            check_delta_counts(generation, rel, base, report);
            continue;
        }
        if !rel.ends_with(INDEX_SUFFIX) {
            continue;
        }
        // Unreadable or undecodable files were reported above.
        let (Ok(Some(index)), Ok(Some(file))) = (generation.read(rel), generation.read(base))
        else {
            continue;
        };
        let Ok(index) = crate::blocks::BlockIndex::decode(&index) else {
            continue;
        };
        if index.base_len != file.len() {
            report.problem(
                &path,
                format!(
                    "it indexes {} bytes, but {base} has {}",
                    index.base_len,
                    file.len()
                ),
            );
        } else if let Some(b) = index.blocks.iter().find(|b| b.checked(&file).is_err()) {
            report.problem(
                &path,
                format!(
                    "the block at byte {} of {base} does not match its checksum here",
                    b.start
                ),
            );
        }
    }
}

/// Checks the block counts `rel` of profile delta `delta` against what the delta laid over
/// its base counts, block by block: a night trusts them for the blocks it does not read (and
/// does not use counts made for another delta or index, which segmill never leaves).
fn check_delta_counts(generation: &Generation, rel: &str, delta: &str, report: &mut VerifyReport) {
    let path = generation.dir.join(rel);
    let Some(base) = delta.strip_suffix(crate::state::DELTA_SUFFIX) else {
        return;
    };
    let index_name = base.to_string() + crate::state::INDEX_SUFFIX;
    // Unreadable or undecodable files were reported above.
    let read = |name: &str| generation.read(name).ok().flatten();
    let (Some(counts), Some(delta_bytes), Some(base_bytes)) = (read(rel), read(delta), read(base))
    else {
        return;
    };
    let Ok(counts) = crate::blocks::DeltaCounts::decode(&counts) else {
        return;
    };
    let Some(index_bytes) = read(&index_name) else {
        report.problem(
            &path,
            format!("block counts of {base}, which has no block index"),
        );
        return;
    };
    let Ok(index) = crate::blocks::BlockIndex::decode(&index_bytes) else {
        return;
    };
    if !counts.fits(&index, &delta_bytes) {
        report.problem(
            &path,
            format!(
                "made for another delta or block index of {base} (a night does not use them, \
                 and writes new ones)"
            ),
        );
        return;
    }
    let Ok(actual) = crate::profile::overlay_counts(&index, &base_bytes, &delta_bytes) else {
        return;
    };
    if let Some(b) = counts
        .apply(&index)
        .iter()
        .zip(&actual)
        .position(|(said, is)| said != is)
    {
        report.problem(
            &path,
            format!(
                "what it says of the block at byte {} of {base} is not what the block holds with \
                 the delta laid over it",
                index.blocks[b].start
            ),
        );
    }
}

/// Why a file's content did not pass.
enum Content {
    /// It does not decode, or its name is out of range.
    Bad(String),
    /// The name is not one segmill writes.
    Unknown,
}

/// Decodes the verified payload of `rel` (of a state of `format`) with the decoder of its
/// kind, and checks that its partition number is below `partitions` (when known).
fn check_content(
    rel: &str,
    payload: &[u8],
    partitions: Option<u32>,
    format: u32,
) -> Result<(), Content> {
    if rel == LEDGER_FILE {
        return Ledger::from_bytes(payload)
            .map(drop)
            .map_err(|e| Content::Bad(format!("the ledger does not decode: {e}")));
    }
    let components: Vec<&str> = rel.split('/').collect();
    let (kind, part) = match components.as_slice() {
        ["profiles", part] => {
            let counts = crate::state::DELTA_SUFFIX.to_string() + crate::state::COUNTS_SUFFIX;
            if let Some(base) = part.strip_suffix(counts.as_str()) {
                ("profile delta block counts", base)
            } else if let Some(base) = part.strip_suffix(crate::state::DELTA_SUFFIX) {
                ("profile delta", base)
            } else if let Some(base) = part.strip_suffix(crate::state::INDEX_SUFFIX) {
                ("profile block index", base)
            } else {
                ("profile", *part)
            }
        }
        ["idsync" | "c2c", dpid, part] if dpid_dir(dpid) => {
            match part.strip_suffix(crate::state::INDEX_SUFFIX) {
                Some(base) => ("ID-sync block index", base),
                None => ("ID-sync", *part),
            }
        }
        ["members", did, part] if did.parse::<u32>().is_ok() => {
            match part.strip_suffix(crate::state::DELTA_SUFFIX) {
                Some(base) => ("destination members delta", base),
                None => ("destination members", *part),
            }
        }
        _ => return Err(Content::Unknown),
    };
    let number = part
        .strip_prefix("part-")
        .filter(|digits| digits.len() == 4 && digits.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|digits| digits.parse::<u32>().ok())
        .ok_or(Content::Unknown)?;
    if let Some(partitions) = partitions.filter(|&p| number >= p) {
        return Err(Content::Bad(format!(
            "{kind} partition {number}, but the state has {partitions} partitions"
        )));
    }
    let decoded = match kind {
        "profile" if format < crate::state::PROFILE_HEADERS_SINCE => {
            crate::profile::in_current_layout(format, payload.to_vec()).map(drop)
        }
        // A delta's tombstones decode as profiles without entries.
        "profile" | "profile delta" => crate::profile::decode(payload).map(drop),
        "profile block index" | "ID-sync block index" => {
            crate::blocks::BlockIndex::decode(payload).map(drop)
        }
        "profile delta block counts" => crate::blocks::DeltaCounts::decode(payload).map(drop),
        "ID-sync" => crate::idsync::store::decode(payload).map(drop),
        _ => crate::outbound::export::decode_members(payload).map(drop),
    };
    decoded.map_err(|e| Content::Bad(format!("the {kind} partition does not decode: {e}")))
}

/// Whether `name` is `dpid-<u32>`.
fn dpid_dir(name: &str) -> bool {
    name.strip_prefix("dpid-")
        .is_some_and(|n| n.parse::<u32>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{LedgerEntry, Outcome, StateDir};

    fn meta(partitions: u32) -> serde_json::Value {
        serde_json::json!({
            "partitions": partitions,
            "partition_hash": "h",
            "as_of": 1_763_780_000,
            "run_id": "000001-20261122T020000Z",
            "ttl_fingerprint": 1,
            "segments_fingerprint": 2,
            "min_expiry": [null, null],
        })
    }

    /// Two generations; the second holds a profile, an ID-sync and a members partition.
    fn sample() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state");
        let state = StateDir::open(&root).unwrap();
        let wtr = state.begin(None).unwrap();
        wtr.write("profiles/part-0001", b"").unwrap();
        let gen1 = wtr.commit(meta(2), 3).unwrap();
        let wtr = state.begin(Some(&gen1)).unwrap();
        let mut w = crate::codec::Writer::default();
        crate::profile::encode_into(&mut w, b"key", Default::default(), &[], &[7]);
        wtr.write("profiles/part-0001", &w.buf).unwrap();
        let record = crate::idsync::store::Record {
            id: b"c1",
            value_dpid: 0,
            value: crate::idsync::store::Value::of(0, b"uuid"),
            timestamp: 5,
        };
        wtr.write(
            "idsync/dpid-21/part-0000",
            &crate::idsync::store::encode(&[record]),
        )
        .unwrap();
        wtr.write("members/7/part-0000", b"").unwrap();
        let mut ledger = Ledger::new();
        ledger.record(LedgerEntry {
            name: "ftp_dpm_21_1763700000.sync".into(),
            path: "ftp_dpm_21_1763700000.sync".into(),
            size: 3,
            hash: 9,
            outcome: Outcome::Processed,
            reason: None,
            run_id: "000002-20261122T020000Z".into(),
        });
        wtr.write_ledger(&ledger).unwrap();
        wtr.commit(meta(2), 3).unwrap();
        (tmp, root)
    }

    /// A writer of the generation after the current one of the state at `root`.
    fn next_generation(root: &Path) -> crate::state::GenerationWriter {
        let state = StateDir::open(root).unwrap();
        let parent = state.current().unwrap().unwrap();
        state.begin(Some(&parent)).unwrap()
    }

    /// Commits `wtr` (generation 3 of [`sample`]'s state, of `partitions` partitions) and
    /// verifies the state: the report and the generation's folder.
    fn commit_and_verify(
        root: &Path,
        wtr: crate::state::GenerationWriter,
        partitions: u32,
    ) -> (VerifyReport, PathBuf) {
        wtr.commit(meta(partitions), 3).unwrap();
        (verify(root, false), root.join("gen-000003"))
    }

    #[test]
    fn clean_state_has_no_problem() {
        let (_tmp, root) = sample();
        let report = verify(&root, false);
        assert_eq!(report.problems, vec![], "{}", report.to_text());
        assert_eq!(report.generations, vec![2]);
        assert_eq!(report.files, 4);
        assert_eq!(
            report.to_text(),
            "state verify: gen-000002, 4 files checked: clean\n"
        );
        let all = verify(&root, true);
        assert!(all.is_clean(), "{}", all.to_text());
        assert_eq!(all.generations, vec![1, 2]);
        assert_eq!(all.files, 5);
    }

    #[test]
    fn fresh_and_missing_folders() {
        let tmp = tempfile::tempdir().unwrap();
        let report = verify(tmp.path(), true);
        assert!(report.is_clean());
        assert_eq!(
            report.notes,
            vec!["no committed generation yet (a fresh state folder)".to_owned()]
        );
        let missing = tmp.path().join("nope");
        let report = verify(&missing, false);
        assert_eq!(
            report.problems,
            vec![Problem {
                path: missing.clone(),
                reason: "the state folder does not exist".into()
            }]
        );
        assert!(!missing.exists());
    }

    #[test]
    fn a_partition_that_does_not_decode_is_named() {
        let (_tmp, root) = sample();
        // A well-formed file (size, footer, checksum) whose payload is not a profile partition.
        let wtr = next_generation(&root);
        wtr.write("profiles/part-0000", b"\x05\x00").unwrap();
        wtr.write("profiles/part-0009", b"").unwrap();
        wtr.write("notes/readme", b"hello").unwrap();
        let (report, gen3) = commit_and_verify(&root, wtr, 2);
        assert_eq!(
            report.problems,
            vec![
                Problem {
                    path: gen3.join("profiles/part-0000"),
                    reason: "the profile partition does not decode: record truncated at byte 1"
                        .into()
                },
                Problem {
                    path: gen3.join("profiles/part-0009"),
                    reason: "profile partition 9, but the state has 2 partitions".into()
                },
            ]
        );
        assert_eq!(
            report.notes,
            vec![format!(
                "{}: not a file this segmill writes; only its checksum was checked",
                gen3.join("notes/readme").display()
            )]
        );
    }

    #[test]
    fn block_indexes_and_deltas_are_checked_against_their_files() {
        let (_tmp, root) = sample();
        let wtr = next_generation(&root);
        let mut w = crate::codec::Writer::default();
        for key in [b"a", b"b", b"c"] {
            crate::profile::encode_into(&mut w, key, Default::default(), &[], &[7]);
        }
        let index = crate::blocks::index_of(&w.buf);
        // Partition 0 with its index; partition 1 with the index of other bytes of its length;
        // a delta and an index of partitions that are not there.
        wtr.write("profiles/part-0000", &w.buf).unwrap();
        wtr.write("profiles/part-0000.index", &index).unwrap();
        let mut other = w.buf.clone();
        other[1] ^= 1;
        wtr.write("profiles/part-0001", &other).unwrap();
        wtr.write("profiles/part-0001.index", &index).unwrap();
        wtr.write("profiles/part-0002.delta", &w.buf).unwrap();
        wtr.write("idsync/dpid-21/part-0001.index", &index).unwrap();
        let (report, gen3) = commit_and_verify(&root, wtr, 4);
        assert_eq!(
            report.problems,
            vec![
                Problem {
                    path: gen3.join("idsync/dpid-21/part-0001.index"),
                    reason: "a block index of idsync/dpid-21/part-0001, which this generation \
                             does not hold"
                        .into()
                },
                Problem {
                    path: gen3.join("profiles/part-0001.index"),
                    reason: "the block at byte 0 of profiles/part-0001 does not match its \
                             checksum here"
                        .into()
                },
                Problem {
                    path: gen3.join("profiles/part-0002.delta"),
                    reason: "a delta of profiles/part-0002, which this generation does not hold"
                        .into()
                },
            ]
        );
    }

    #[test]
    fn delta_block_counts_are_checked_against_the_blocks() {
        let (_tmp, root) = sample();
        let wtr = next_generation(&root);
        let mut base = crate::codec::Writer::default();
        for key in [b"a", b"b", b"c", b"d", b"e"] {
            crate::profile::encode_into(&mut base, key, Default::default(), &[], &[7]);
        }
        let mut delta = crate::codec::Writer::default();
        crate::profile::encode_tombstone(&mut delta, b"b");
        let index_bytes = crate::blocks::index_of(&base.buf);
        let index = crate::blocks::BlockIndex::decode(&index_bytes).unwrap();
        let right = crate::profile::overlay_counts(&index, &base.buf, &delta.buf).unwrap();
        let counts = |delta: &[u8], counts: &[crate::blocks::Counts]| {
            crate::blocks::DeltaCounts::new(&index, delta, counts).encode()
        };
        // Partition 0 right; 1 with counts that miss the tombstone; 2 with counts of another
        // delta; and counts of a delta that is not there.
        for p in 0..3 {
            wtr.write(&format!("profiles/part-000{p}"), &base.buf)
                .unwrap();
            wtr.write(&format!("profiles/part-000{p}.index"), &index_bytes)
                .unwrap();
            wtr.write(&format!("profiles/part-000{p}.delta"), &delta.buf)
                .unwrap();
        }
        let unchanged: Vec<_> = index.blocks.iter().map(|b| b.counts).collect();
        wtr.write(
            "profiles/part-0000.delta.counts",
            &counts(&delta.buf, &right),
        )
        .unwrap();
        wtr.write(
            "profiles/part-0001.delta.counts",
            &counts(&delta.buf, &unchanged),
        )
        .unwrap();
        wtr.write(
            "profiles/part-0002.delta.counts",
            &counts(b"old", &unchanged),
        )
        .unwrap();
        wtr.write(
            "profiles/part-0003.delta.counts",
            &counts(&delta.buf, &right),
        )
        .unwrap();
        let (report, gen3) = commit_and_verify(&root, wtr, 4);
        assert_ne!(right, unchanged);
        let problem = |p: u32, reason: &str| Problem {
            path: gen3.join(format!("profiles/part-000{p}.delta.counts")),
            reason: reason.into(),
        };
        assert_eq!(
            report.problems,
            vec![
                problem(
                    1,
                    "what it says of the block at byte 0 of profiles/part-0001 is not what the \
                     block holds with the delta laid over it"
                ),
                problem(
                    2,
                    "made for another delta or block index of profiles/part-0002 (a night does \
                     not use them, and writes new ones)"
                ),
                problem(
                    3,
                    "block counts of profiles/part-0003.delta, which this generation does not \
                     hold"
                ),
            ]
        );
        assert!(report.notes.is_empty(), "{:?}", report.notes);
    }

    #[test]
    fn damaged_current_manifest_and_old_generation() {
        let (_tmp, root) = sample();
        fs::write(root.join(CURRENT), "gen-000002 zz\n").unwrap();
        let report = verify(&root, false);
        assert_eq!(report.problems.len(), 1);
        assert_eq!(report.problems[0].path, root.join(CURRENT));

        let (_tmp, root) = sample();
        // Damage generation 1 (only checked with --all).
        let old = root.join("gen-000001/manifest.json");
        let text = fs::read_to_string(&old).unwrap();
        fs::write(&old, &text[..text.len() / 2]).unwrap();
        assert!(verify(&root, false).is_clean());
        let report = verify(&root, true);
        assert_eq!(report.problems.len(), 1, "{}", report.to_text());
        assert_eq!(report.problems[0].path, old);
        assert!(
            report.problems[0].reason.starts_with("not a manifest: "),
            "{}",
            report.problems[0].reason
        );
    }
}
