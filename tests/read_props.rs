//! Property tests of `inbound::read::read_chunks`: for any text, chunk size, plain or gzip
//! (multi-member included) and thread count, the chunks concatenate back to the text minus a
//! leading BOM, each ends right after a '\n' or at the end, and the line numbering and counts
//! match a naive count. Texts with lines longer than `KEPT_LINE_BYTES` reassemble to the text
//! with those lines cut by a naive twin of the rule in `Chunk::bytes`, whatever the chunk size.

use std::io::Write;
use std::sync::LazyLock;

use flate2::Compression;
use flate2::write::GzEncoder;
use proptest::prelude::*;
use segmill::inbound::read::{DEFAULT_CHUNK_BYTES, KEPT_LINE_BYTES, ReadOutcome, read_chunks};

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One pool per tested thread count, built once.
static POOLS: LazyLock<[rayon::ThreadPool; 2]> = LazyLock::new(|| {
    [1, 2].map(|threads| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("a rayon pool")
    })
});

/// Text built from bytes that matter to the reader: newlines, CRs, BOM bytes, tabs, letters.
fn text() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        4 => Just(b'\n'),
        1 => Just(b'\r'),
        1 => Just(b'\t'),
        1 => Just(0xEF),
        1 => Just(0xBB),
        1 => Just(0xBF),
        6 => b'a'..=b'z',
    ];
    (any::<bool>(), prop::collection::vec(byte, 0..600)).prop_map(|(bom, body)| {
        let mut text = if bom { BOM.to_vec() } else { Vec::new() };
        text.extend(body);
        text
    })
}

fn chunk_bytes() -> impl Strategy<Value = usize> {
    prop_oneof![4 => 1..=64usize, 1 => Just(DEFAULT_CHUNK_BYTES)]
}

/// `text` gzip-compressed as one member per piece, cut at `cuts` (fractions of its length).
fn gzip_members(text: &[u8], cuts: &[u16]) -> Vec<u8> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|&c| text.len() * usize::from(c) / usize::from(u16::MAX))
        .collect();
    points.push(0);
    points.push(text.len());
    points.sort_unstable();
    let mut out = Vec::new();
    for pair in points.windows(2) {
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        enc.write_all(&text[pair[0]..pair[1]]).unwrap();
        out.extend(enc.finish().unwrap());
    }
    out
}

type Seen = (usize, u64, Vec<u8>);

fn read(bytes: &[u8], gzip: bool, chunk_bytes: usize, threads: usize) -> ReadOutcome<Seen> {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(bytes).unwrap();
    file.flush().unwrap();
    POOLS[threads - 1].install(|| {
        read_chunks(file.path(), gzip, chunk_bytes, |c| {
            (c.index, c.first_line, c.bytes.to_vec())
        })
        .unwrap()
    })
}

/// Checks everything `read_chunks` promises about `out` for the file text `text`.
fn check(out: &ReadOutcome<Seen>, text: &[u8], gzip: bool, chunk_bytes: usize) {
    let expected = text.strip_prefix(BOM).unwrap_or(text);
    let joined: Vec<u8> = out.results.iter().flat_map(|(_, _, b)| b.clone()).collect();
    assert_eq!(joined, expected, "reassembly");
    assert_eq!(out.bytes, expected.len() as u64);

    let newlines = expected.iter().filter(|&&b| b == b'\n').count() as u64;
    let lines = newlines + u64::from(expected.last().is_some_and(|&b| b != b'\n'));
    assert_eq!(out.lines, lines);

    let mut line = 1;
    for (position, (index, first_line, bytes)) in out.results.iter().enumerate() {
        assert_eq!(*index, position);
        assert_eq!(*first_line, line, "chunk {position}");
        assert!(!bytes.is_empty(), "chunk {position} is empty");
        let last = position + 1 == out.results.len();
        if !last {
            assert_eq!(
                bytes.last(),
                Some(&b'\n'),
                "chunk {position} cut inside a line"
            );
        }
        if !gzip {
            // A plain chunk holds at least `chunk_bytes` bytes and ends at the first '\n' from
            // there on.
            if !last {
                assert!(bytes.len() >= chunk_bytes, "chunk {position} too short");
            }
            let inner = &bytes[chunk_bytes.min(bytes.len()).saturating_sub(1)..bytes.len() - 1];
            assert!(
                !inner.contains(&b'\n'),
                "chunk {position} runs past its '\\n'"
            );
        }
        line += bytes.iter().filter(|&&b| b == b'\n').count() as u64;
    }
}

#[path = "support/naive_cut.rs"]
mod naive;
use naive::naive_cut;

/// Lines around and far over the limit: a run of one fill byte (space or letter) after a short
/// head, then a tail that decides the cut (a CR, a letter after spaces...), among short lines.
fn long_text() -> impl Strategy<Value = Vec<u8>> {
    let k = KEPT_LINE_BYTES;
    let long = (
        prop_oneof![Just(""), Just("c1\t"), Just(" ")],
        prop_oneof![Just(b' '), Just(b'v')],
        prop_oneof![k - 3..k + 4, k..3 * k],
        prop_oneof![
            Just(""),
            Just("\r"),
            Just("x"),
            Just("\rx"),
            Just(" \r"),
            Just("\r\r")
        ],
    )
        .prop_map(|(head, fill, len, tail)| {
            let mut line = head.as_bytes().to_vec();
            line.resize(len, fill);
            line.extend_from_slice(tail.as_bytes());
            line
        });
    let line = prop_oneof![2 => "[a-z\t ]{0,8}".prop_map(String::into_bytes), 1 => long];
    (prop::collection::vec(line, 1..5), any::<bool>()).prop_map(|(lines, last_newline)| {
        let mut text = lines.join(&b'\n');
        if last_newline {
            text.push(b'\n');
        }
        text
    })
}

/// What `long_text` promises: the chunks reassemble to `naive_cut(text)`, numbered by the
/// newlines before them, and the counts are those of the whole text.
fn check_cut(out: &ReadOutcome<Seen>, text: &[u8]) {
    let joined: Vec<u8> = out.results.iter().flat_map(|(_, _, b)| b.clone()).collect();
    assert!(joined == naive_cut(text), "reassembly after cutting");
    assert_eq!(out.bytes, text.len() as u64);
    let newlines = text.iter().filter(|&&b| b == b'\n').count() as u64;
    let lines = newlines + u64::from(text.last().is_some_and(|&b| b != b'\n'));
    assert_eq!(out.lines, lines);
    let mut line = 1;
    for (position, (index, first_line, bytes)) in out.results.iter().enumerate() {
        assert_eq!((*index, *first_line), (position, line));
        assert!(!bytes.is_empty(), "chunk {position} is empty");
        if position + 1 < out.results.len() {
            assert_eq!(
                bytes.last(),
                Some(&b'\n'),
                "chunk {position} cut inside a line"
            );
        }
        line += bytes.iter().filter(|&&b| b == b'\n').count() as u64;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn long_lines_are_cut_the_same_for_every_chunk_size(
        text in long_text(),
        chunk_bytes in prop_oneof![1..=64usize, KEPT_LINE_BYTES - 2..KEPT_LINE_BYTES + 3, Just(DEFAULT_CHUNK_BYTES)],
        gzip: bool,
        threads in 1..=2usize,
        cuts in prop::collection::vec(any::<u16>(), 0..3),
    ) {
        let bytes = if gzip { gzip_members(&text, &cuts) } else { text.clone() };
        let out = read(&bytes, gzip, chunk_bytes, threads);
        check_cut(&out, &text);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn plain_chunks_reassemble(text in text(), chunk_bytes in chunk_bytes(), threads in 1..=2usize) {
        let out = read(&text, false, chunk_bytes, threads);
        check(&out, &text, false, chunk_bytes);
    }

    #[test]
    fn gzip_chunks_reassemble(
        text in text(),
        chunk_bytes in chunk_bytes(),
        threads in 1..=2usize,
        cuts in prop::collection::vec(any::<u16>(), 0..3),
    ) {
        let out = read(&gzip_members(&text, &cuts), true, chunk_bytes, threads);
        check(&out, &text, true, chunk_bytes);
    }

    #[test]
    fn same_results_for_one_and_two_threads(text in text(), chunk_bytes in chunk_bytes(), gzip: bool) {
        let bytes = if gzip { gzip_members(&text, &[]) } else { text.clone() };
        let one = read(&bytes, gzip, chunk_bytes, 1);
        let two = read(&bytes, gzip, chunk_bytes, 2);
        prop_assert_eq!(one, two);
    }
}
