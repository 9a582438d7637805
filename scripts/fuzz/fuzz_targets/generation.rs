//! `state::StateDir::current` and `Generation::{read, open, ledger}` on a damaged state folder.
//!
//! A small state (one generation: a profile partition, an ID-sync partition and a ledger) is
//! written once through the library. Each input is a list of 4-byte damage operations
//! `[file, kind, offset, value]` applied to a fresh copy: flip bits of a byte, truncate, append,
//! or delete a file (`CURRENT`, the manifest or a data file). Property beyond "no panic":
//! whatever the damage, every read either fails with an error or returns exactly the bytes that
//! were written. Damage is never used silently. (One documented exception: deleting `CURRENT`
//! while gen-000001 is the only generation reads as a fresh state.)
#![no_main]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use segmill::codec::Writer;
use segmill::profile::{self, Entry};
use segmill::state::{Ledger, LedgerEntry, Outcome, StateDir};

struct Pristine {
    dir: PathBuf,
    /// Files of the state (relative paths), damage targets.
    files: Vec<String>,
    /// Data files of the generation and their payloads.
    payloads: Vec<(String, Vec<u8>)>,
    ledger: Vec<u8>,
}

fn pristine() -> &'static Pristine {
    static P: OnceLock<Pristine> = OnceLock::new();
    P.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("segmill-fuzz-gen-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let state = StateDir::open(&dir.join("state")).expect("open state");
        let writer = state.begin(None).expect("begin");
        let mut w = Writer::default();
        let e = Entry {
            trait_id: 24,
            data_source: 21,
            realized_at: 1_795_312_800,
        };
        profile::encode_into(
            &mut w,
            b"\x00\x00\x00\x15cust-001",
            Default::default(),
            &[e],
            &[1001],
        );
        profile::encode_into(
            &mut w,
            b"\x00\x00\x00\x15cust-002",
            Default::default(),
            &[],
            &[],
        );
        let mut ids = Writer::default();
        ids.bytes(b"cust-001");
        ids.u32(0);
        ids.bytes(b"68079982765673198504052656074456196039");
        ids.u64(1_763_683_200);
        let mut ledger = Ledger::new();
        ledger.record(LedgerEntry {
            name: "ftp_dpm_21_1763700000.sync".into(),
            path: "date=2026-11-21/ftp_dpm_21_1763700000.sync".into(),
            size: 42,
            hash: 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef,
            outcome: Outcome::Processed,
            reason: None,
            run_id: "000001-20261122T020000Z".into(),
        });
        let payloads = vec![
            ("profiles/part-0000".to_string(), w.buf),
            ("idsync/dpid-21/part-0000".to_string(), ids.buf),
        ];
        for (rel, bytes) in &payloads {
            writer.write(rel, bytes).expect("write");
        }
        writer.write_ledger(&ledger).expect("write ledger");
        writer
            .commit(serde_json::json!({"partitions": 1}), 2)
            .expect("commit");
        let files = vec![
            "CURRENT".to_string(),
            "gen-000001/manifest.json".to_string(),
            "gen-000001/profiles/part-0000".to_string(),
            "gen-000001/idsync/dpid-21/part-0000".to_string(),
            "gen-000001/ledger".to_string(),
        ];
        for f in &files {
            assert!(
                dir.join("state").join(f).is_file(),
                "layout changed: {f} missing"
            );
        }
        Pristine {
            dir,
            files,
            payloads,
            ledger: ledger.to_bytes(),
        }
    })
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("list") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let p = pristine();
    let work = p.dir.join("work");
    let _ = std::fs::remove_dir_all(&work);
    copy_tree(&p.dir.join("state"), &work);
    for op in data.chunks_exact(4).take(8) {
        let path = work.join(&p.files[op[0] as usize % p.files.len()]);
        let Ok(mut bytes) = std::fs::read(&path) else {
            continue;
        };
        let offset = usize::from(op[2]) * 4 + usize::from(op[1] >> 2);
        match op[1] % 4 {
            0 => {
                if bytes.is_empty() {
                    continue;
                }
                let at = offset % bytes.len();
                bytes[at] ^= op[3].max(1);
            }
            1 => bytes.truncate(offset.min(bytes.len().saturating_sub(1))),
            2 => bytes.push(op[3]),
            _ => {
                let _ = std::fs::remove_file(&path);
                continue;
            }
        }
        std::fs::write(&path, &bytes).expect("damage");
    }

    let Ok(state) = StateDir::open(&work) else {
        return;
    };
    let generation = match state.current() {
        Ok(Some(g)) => g,
        // Documented: with only gen-000001 present, a missing CURRENT is read as a first commit
        // cut short (see `StateDir::current`), so the state is fresh. Nothing else may be.
        Ok(None) => {
            assert!(
                !work.join("CURRENT").exists(),
                "a damaged state with a CURRENT file read as a fresh one"
            );
            return;
        }
        Err(_) => return,
    };
    let listed: Vec<&str> = generation.files().map(|(rel, _)| rel).collect();
    let mut expected: Vec<&str> = p.payloads.iter().map(|(r, _)| r.as_str()).collect();
    expected.push("ledger");
    expected.sort_unstable();
    assert_eq!(listed, expected, "a verified manifest lists other files");
    for (rel, payload) in &p.payloads {
        match generation.read(rel) {
            Ok(Some(bytes)) => assert_eq!(&bytes, payload, "{rel}: damaged bytes accepted"),
            Ok(None) => panic!("{rel}: listed file reported as not listed"),
            Err(_) => {}
        }
        if let Ok(Some(mut rdr)) = generation.open(rel) {
            let mut bytes = Vec::new();
            if rdr.read_to_end(&mut bytes).is_ok() {
                assert_eq!(&bytes, payload, "{rel}: damaged bytes streamed");
            }
        }
    }
    if let Ok(ledger) = generation.ledger() {
        assert_eq!(ledger.to_bytes(), p.ledger, "damaged ledger accepted");
    }
});
