//! Property: whatever a partner sends, every receipt's arithmetic holds (CONTRACT §3) and the
//! receipts do not depend on the thread count or the chunk size.

use proptest::prelude::*;
use segmill::config::Config;
use segmill::run::{RunOptions, run};
use std::path::Path;

const SYNCED: [&str; 3] = ["c1", "c2", "c3"];
const UUIDS: [&str; 3] = [
    "59767559181262060060278870901087098252",
    "68079982765673198504052656074456196039",
    "00000000000000000000000000000000000042",
];

fn item() -> impl Strategy<Value = String> {
    prop_oneof![
        (20u32..30).prop_map(|t| format!("d_sid={t}")),
        (20u32..30).prop_map(|t| format!("d_unsid={t}")),
        (20u32..30).prop_map(|t| format!("{t}:0")),
        (20u32..30).prop_map(|t| format!(" {t}:-1 ")),
        Just("d_sid=40".to_string()),
        Just("product = \"a,b\"".to_string()),
        Just("x=\"open".to_string()),
        Just("24:5".to_string()),
        Just("".to_string()),
        "[a-z0-9=\" ]{0,6}",
    ]
}

fn line() -> impl Strategy<Value = String> {
    let id = prop_oneof![
        prop::sample::select(SYNCED.to_vec()).prop_map(str::to_string),
        Just("unsynced".to_string()),
        Just(" c1 ".to_string()),
        "[a-z0-9]{0,3}",
    ];
    prop_oneof![
        8 => (id, prop::collection::vec(item(), 0..5)).prop_map(|(id, items)| format!("{id}\t{}", items.join(","))),
        1 => prop::sample::select(SYNCED.to_vec()).prop_map(str::to_string),
        1 => Just(String::new()),
        1 => Just("a\tb\tc".to_string()),
        1 => "[ -~\t]{0,20}",
    ]
}

fn file() -> impl Strategy<Value = (String, String)> {
    (
        prop::collection::vec(line(), 0..40),
        1usize..4,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(lines, repeat, crlf, overwrite)| {
            let eol = if crlf { "\r\n" } else { "\n" };
            let mut text = String::new();
            for _ in 0..repeat {
                for l in &lines {
                    text.push_str(l);
                    text.push_str(eol);
                }
            }
            // A heavy user to cross the 200-lines-per-user limit.
            if repeat == 3 {
                for _ in 0..205 {
                    text.push_str("c2\td_sid=21");
                    text.push_str(eol);
                }
            }
            let mode = if overwrite { "overwrite" } else { "sync" };
            (text, mode.to_string())
        })
}

fn setup(root: &Path, files: &[(String, String)]) -> Config {
    let inbound = root.join("inbound");
    std::fs::create_dir_all(&inbound).unwrap();
    let mut idsync = String::new();
    for (id, uuid) in SYNCED.iter().zip(UUIDS) {
        idsync.push_str(&format!("{uuid}\t{id}\n"));
    }
    std::fs::write(inbound.join("adobe_id_0_21_1763683200.sync"), idsync).unwrap();
    for (i, (text, mode)) in files.iter().enumerate() {
        std::fs::write(
            inbound.join(format!("ftp_dpm_21_17637000{i:02}.{mode}")),
            text,
        )
        .unwrap();
    }
    let mut toml = String::from(
        "[paths]\ninbound = \"inbound\"\nstate = \"state\"\noutbound = \"out\"\n[run]\npartitions = 4\n\
         [[data_source]]\nid = 21\nname = \"CRM\"\n[[data_source]]\nid = 22\nname = \"Other\"\n",
    );
    for t in 20..30 {
        toml.push_str(&format!("[[trait]]\nid = {t}\ndata_source = 21\n"));
    }
    toml.push_str("[[trait]]\nid = 40\ndata_source = 22\n");
    let path = root.join("segmill.toml");
    std::fs::write(&path, toml).unwrap();
    Config::load(&path).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn receipt_identity_holds_and_ignores_threads_and_chunks(files in prop::collection::vec(file(), 1..3)) {
        let mut seen = None;
        for (threads, chunk) in [(1, 1 << 20), (2, 1), (2, 13)] {
            let dir = tempfile::tempdir().unwrap();
            let config = setup(dir.path(), &files);
            let opts = RunOptions {
                as_of: 1_763_780_000,
                threads: Some(threads),
                chunk_bytes: Some(chunk),
                dry_run: true,
                ..RunOptions::default()
            };
            let summary = run(&config, &opts).unwrap();
            for r in &summary.receipts {
                prop_assert!(r.counters.identity_holds(), "job {}: {:?}", r.job, r.counters);
                for f in &r.files {
                    prop_assert!(f.counters.identity_holds(), "file {}: {:?}", f.name, f.counters);
                }
            }
            let receipts: Vec<String> = summary.receipts.iter().map(|r| r.to_json()).collect();
            match &seen {
                None => seen = Some(receipts),
                Some(first) => prop_assert_eq!(first, &receipts),
            }
        }
    }
}
