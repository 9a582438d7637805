//! `parse::lines` and `parse::parse_line` on any chunk, in both layouts (plain and ODC).
//!
//! Properties beyond "no panic": the lines joined with `\n` give back the chunk; line numbers
//! are consecutive; every verdict agrees with the contract's checks (blank, too long, UTF-8,
//! TAB count, non-empty trimmed IDs); a record's parts are sub-slices of the line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use segmill::parse::{FormatError, LineKind, MAX_LINE_BYTES, lines, parse_line};

fuzz_target!(|data: &[u8]| {
    let first = 7u64;
    let mut rebuilt = Vec::with_capacity(data.len());
    let mut expected_number = first;
    let mut count = 0usize;
    for (number, line) in lines(data, first) {
        assert_eq!(number, expected_number, "line numbers must be consecutive");
        expected_number += 1;
        assert!(!line.contains(&b'\n'), "a line holds no LF");
        if count > 0 {
            rebuilt.push(b'\n');
        }
        rebuilt.extend_from_slice(line);
        count += 1;
        check(line, false);
        check(line, true);
    }
    if data.ends_with(b"\n") {
        rebuilt.push(b'\n');
    }
    assert_eq!(rebuilt, data, "lines must give back the chunk");
    let newlines = data.iter().filter(|&&b| b == b'\n').count();
    let expected_lines = if data.is_empty() || data.ends_with(b"\n") {
        newlines
    } else {
        newlines + 1
    };
    assert_eq!(count, expected_lines, "physical line count");
});

fn check(line: &[u8], odc: bool) {
    let content = line.strip_suffix(b"\r").unwrap_or(line);
    let tabs = content.iter().filter(|&&b| b == b'\t').count();
    let want_tabs = if odc { 2 } else { 1 };
    match parse_line(line, odc) {
        LineKind::Blank => assert!(
            content.iter().all(|&b| b == b' '),
            "blank verdict on {line:?}"
        ),
        LineKind::FormatError(FormatError::TooLong) => assert!(line.len() > MAX_LINE_BYTES),
        LineKind::FormatError(FormatError::InvalidUtf8) => {
            assert!(line.len() <= MAX_LINE_BYTES);
            assert!(std::str::from_utf8(content).is_err());
        }
        LineKind::FormatError(FormatError::TabCount { found }) => {
            assert_eq!(found, tabs);
            assert!(
                if odc { tabs != 2 } else { tabs > 1 },
                "TabCount with {tabs} TABs"
            );
        }
        LineKind::FormatError(FormatError::EmptyId | FormatError::EmptyIdType) => {
            assert!(tabs <= want_tabs);
        }
        LineKind::Record(rec) => {
            assert!(line.len() <= MAX_LINE_BYTES, "record longer than the limit");
            assert!(std::str::from_utf8(content).is_ok());
            assert!(if odc { tabs == 2 } else { tabs <= 1 });
            assert!(!rec.id.is_empty());
            assert!(!rec.id.starts_with(b" ") && !rec.id.ends_with(b" "));
            assert!(!rec.id.contains(&b'\t'));
            assert!(within(rec.id, content) && within(rec.items, content));
            assert!(!rec.items.contains(&b'\t'));
            assert_eq!(rec.id_type.is_some(), odc);
            if let Some(id_type) = rec.id_type {
                assert!(!id_type.is_empty() && within(id_type, content));
            }
            // The items text is the tail of the line after its last TAB.
            if tabs == 0 {
                assert!(rec.items.is_empty());
            } else {
                assert!(content.ends_with(rec.items));
            }
        }
    }
}

/// Whether `part` lies inside `whole` (pointer range).
fn within(part: &[u8], whole: &[u8]) -> bool {
    let w = whole.as_ptr_range();
    let p = part.as_ptr_range();
    p.start >= w.start && p.end <= w.end
}
