//! `inbound::read::read_chunks` on any file bytes, read as gzip and as plain text.
//!
//! The bytes are written to a temp file (the reader takes a path). Properties beyond
//! "no panic":
//! - gzip: `read_chunks` succeeds exactly when flate2's `MultiGzDecoder` reads the whole stream
//!   (an empty file is an error too); then the chunks concatenate to the decoded text without a
//!   leading BOM, with every line longer than `KEPT_LINE_BYTES` cut as `Chunk::bytes` says
//!   (checked against a naive twin of the rule), each chunk is non-empty and ends after a `\n`
//!   or at the end, `first_line` numbers follow the newlines, and `bytes`/`lines` match the text;
//! - plain: the same chunk properties against the raw bytes.
//!
//! Inputs that inflate past 8 MiB are skipped: the reference decoding here holds the whole
//! text (the reader itself is bounded), and libFuzzer would only report an out-of-memory.
#![no_main]

use std::io::Read;
use std::path::PathBuf;
use std::sync::OnceLock;

use flate2::read::MultiGzDecoder;
use libfuzzer_sys::fuzz_target;
use segmill::inbound::read::{KEPT_LINE_BYTES, read_chunks};

const MAX_TEXT: u64 = 8 << 20;

fn temp_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("segmill-fuzz-read-{}", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&knob, file)) = data.split_first() else {
        return;
    };
    let chunk_bytes = usize::from(knob % 64);
    let path = temp_path();
    std::fs::write(path, file).expect("write the temp file");

    // Reference decoding, bounded.
    let mut reference = Vec::new();
    let decoded = MultiGzDecoder::new(file)
        .take(MAX_TEXT + 1)
        .read_to_end(&mut reference);
    if decoded.is_ok() && reference.len() as u64 > MAX_TEXT {
        return;
    }
    let gz = read_chunks(path, true, chunk_bytes, |c| {
        (c.index, c.first_line, c.bytes.to_vec())
    });
    match (decoded.is_ok(), gz) {
        // An empty .gz file is corrupt for segmill (flate2 reads it as no text).
        (_, Err(_)) if file.is_empty() => {}
        (true, Ok(outcome)) if !file.is_empty() => {
            check(&reference, &outcome.results, outcome.bytes, outcome.lines);
        }
        (false, Err(_)) => {}
        (flate2_ok, got) => panic!(
            "gzip verdicts differ: flate2 ok = {flate2_ok}, read_chunks {:?}",
            got.map(|o| o.bytes)
        ),
    }

    let plain = read_chunks(path, false, chunk_bytes, |c| {
        (c.index, c.first_line, c.bytes.to_vec())
    })
    .expect("a plain temp file must be readable");
    check(file, &plain.results, plain.bytes, plain.lines);
});

fn check(raw: &[u8], chunks: &[(usize, u64, Vec<u8>)], bytes: u64, lines: u64) {
    let text = raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw);
    let mut joined = Vec::with_capacity(text.len());
    let mut newlines = 0u64;
    for (i, (index, first_line, chunk)) in chunks.iter().enumerate() {
        assert_eq!(*index, i, "chunk indexes");
        assert!(!chunk.is_empty(), "empty chunk");
        assert_eq!(*first_line, newlines + 1, "first_line of chunk {i}");
        if i + 1 < chunks.len() {
            assert!(chunk.ends_with(b"\n"), "chunk {i} cut inside a line");
        }
        newlines += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        joined.extend_from_slice(chunk);
    }
    assert!(
        joined == naive_cut(text),
        "chunks must concatenate to the text with long lines cut"
    );
    assert_eq!(bytes, text.len() as u64, "byte count");
    let want_lines = if text.is_empty() || text.ends_with(b"\n") {
        newlines
    } else {
        newlines + 1
    };
    assert_eq!(lines, want_lines, "line count");
}

#[path = "../../../tests/support/naive_cut.rs"]
mod naive;
use naive::naive_cut;
