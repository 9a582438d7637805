//! Property: whatever a partner sends, every receipt's arithmetic holds (CONTRACT §3) and the
//! receipts do not depend on the thread count or the chunk size; nor do they, or the rejects
//! files, when lines longer than the reader keeps cross chunk boundaries, plain or gzip.

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

/// A file whose lines are mostly over the length limit (letters, spaces then a letter, blank
/// runs of spaces, CRLF), among ordinary records.
fn long_line_file() -> impl Strategy<Value = String> {
    let k = segmill::inbound::read::KEPT_LINE_BYTES;
    let long = (
        prop::sample::select(vec!["c1\td_sid=2", "c2\t", "", " "]),
        prop::sample::select(vec!['v', ' ']),
        prop_oneof![k - 3..k + 3, k..2 * k],
        prop::sample::select(vec!["", "x", "\r", "\rx"]),
    )
        .prop_map(|(head, fill, len, tail)| {
            let mut line = head.to_string();
            while line.len() < len {
                line.push(fill);
            }
            line.push_str(tail);
            line
        });
    prop::collection::vec(prop_oneof![2 => line(), 1 => long], 1..8)
        .prop_map(|lines| lines.join("\n"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn long_lines_give_the_same_receipts_and_rejects_for_every_chunk_size(
        text in long_line_file(),
        gzip: bool,
    ) {
        let mut seen = None;
        let k = segmill::inbound::read::KEPT_LINE_BYTES;
        for (threads, chunk) in [(1, 1 << 20), (2, 1), (2, 4096), (1, k - 1), (2, k + 1)] {
            let dir = tempfile::tempdir().unwrap();
            let config = setup(dir.path(), &[]);
            let inbound = dir.path().join("inbound");
            if gzip {
                use std::io::Write as _;
                let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                enc.write_all(text.as_bytes()).unwrap();
                std::fs::write(inbound.join("ftp_dpm_21_1763700000.sync.gz"), enc.finish().unwrap())
                    .unwrap();
            } else {
                std::fs::write(inbound.join("ftp_dpm_21_1763700000.sync"), &text).unwrap();
            }
            let opts = RunOptions {
                as_of: 1_763_780_000,
                threads: Some(threads),
                chunk_bytes: Some(chunk),
                ..RunOptions::default()
            };
            let summary = run(&config, &opts).unwrap();
            let receipts: Vec<String> = summary.receipts.iter().map(|r| r.to_json()).collect();
            prop_assert_eq!(receipts.len(), 1);
            for r in &summary.receipts {
                prop_assert!(r.counters.identity_holds(), "job {}: {:?}", r.job, r.counters);
            }
            let receipts_dir = summary.receipts_dir.clone().unwrap();
            let rejects = std::fs::read(receipts_dir.join("21.rejects.tsv")).unwrap();
            // No rejected line is written longer than the reader keeps (+ name, number, reason).
            for row in rejects.split(|&b| b == b'\n') {
                prop_assert!(row.len() < k + 200, "a rejects row of {} bytes", row.len());
            }
            match &seen {
                None => seen = Some((receipts, rejects)),
                Some(first) => {
                    prop_assert_eq!(&first.0, &receipts);
                    prop_assert!(first.1 == rejects, "rejects differ at chunk {}", chunk);
                }
            }
        }
    }
}
