//! Physical lines and records: chunk → `(line number, bytes)` → [`LineKind`].
//!
//! Input is a chunk that starts at a line start and ends after a `\n` or at end of file (the
//! reader has already skipped a UTF-8 BOM). Output borrows the chunk. No allocation, no I/O.

use std::fmt;
use std::iter::FusedIterator;

use memchr::memchr;

use super::items::{Items, items};

/// The longest line AAM accepts, in bytes. A CR before the LF counts, the LF does not
/// (AAM-REFERENCE §1.6 and §10 question 18; CONTRACT §3).
pub const MAX_LINE_BYTES: usize = 102_400;

/// Splits `chunk` into physical lines, numbering them from `first_line`.
///
/// Every physical line is yielded, blank ones included, without its LF (a CR before the LF is
/// kept: [`parse_line`] drops it). A chunk that ends with `\n` has no empty line after it; the
/// last line may lack a terminator. An empty chunk yields nothing.
///
/// ```
/// use segmill::parse::lines;
/// let got: Vec<_> = lines(b"a\r\n\nb", 7).collect();
/// assert_eq!(got, [(7, &b"a\r"[..]), (8, &b""[..]), (9, &b"b"[..])]);
/// ```
pub fn lines(chunk: &[u8], first_line: u64) -> Lines<'_> {
    Lines {
        rest: chunk,
        next_line: first_line,
    }
}

/// Iterator over the physical lines of a chunk; see [`lines`].
#[derive(Clone, Debug)]
pub struct Lines<'a> {
    /// Bytes not yet yielded; empty when done.
    rest: &'a [u8],
    /// The number of the next line yielded.
    next_line: u64,
}

impl<'a> Iterator for Lines<'a> {
    type Item = (u64, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let (line, rest) = match memchr(b'\n', self.rest) {
            Some(lf) => {
                let (line, from_lf) = self.rest.split_at(lf);
                (line, from_lf.get(1..).unwrap_or_default())
            }
            None => (self.rest, &self.rest[self.rest.len()..]),
        };
        self.rest = rest;
        let number = self.next_line;
        // Wrapping: a caller-supplied start near u64::MAX must not panic (it cannot occur in
        // practice: files have far fewer lines).
        self.next_line = number.wrapping_add(1);
        Some((number, line))
    }
}

impl FusedIterator for Lines<'_> {}

/// What one physical line is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineKind<'a> {
    /// Empty or only ASCII spaces (after dropping one trailing CR): not a record, not counted.
    Blank,
    /// A well-formed record.
    Record(Record<'a>),
    /// A record that is a Format Error (CONTRACT §3).
    FormatError(FormatError),
}

/// A well-formed record, borrowing the line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// The user ID, trimmed of ASCII spaces; never empty. Otherwise exact (case-sensitive).
    pub id: &'a [u8],
    /// ODC files only: the first column (`idfa`, `Android Device ID`), trimmed; never empty.
    pub id_type: Option<&'a [u8]>,
    /// The raw ITEMS text after the last TAB, untrimmed; empty for `ID` and `ID<TAB>`.
    /// Parse it with [`Record::items`] or [`items`].
    pub items: &'a [u8],
}

impl<'a> Record<'a> {
    /// The items of this record; see [`items`].
    pub fn items(&self) -> Items<'a> {
        items(self.items)
    }
}

/// Why a record is a Format Error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FormatError {
    /// Longer than [`MAX_LINE_BYTES`] (a CR before the LF counted).
    TooLong,
    /// Not valid UTF-8.
    InvalidUtf8,
    /// Not 0 or 1 TAB (ODC files: not exactly 2).
    TabCount {
        /// How many TABs the line has.
        found: usize,
    },
    /// The ID is empty after trimming ASCII spaces.
    EmptyId,
    /// ODC files: the ID type column is empty after trimming ASCII spaces.
    EmptyIdType,
}

impl FormatError {
    /// Human text for receipts and rejects; the caller adds file and line number.
    pub fn reason(&self) -> &'static str {
        match self {
            FormatError::TooLong => "line longer than 102,400 bytes",
            FormatError::InvalidUtf8 => "line is not valid UTF-8",
            FormatError::TabCount { .. } => {
                "wrong number of TABs: a record is ID or ID<TAB>ITEMS \
                 (ODC files: IDTYPE<TAB>ID<TAB>ITEMS)"
            }
            FormatError::EmptyId => "empty ID",
            FormatError::EmptyIdType => "empty ID type (first column of an ODC file)",
        }
    }
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatError::TabCount { found } => write!(f, "{} (found {found})", self.reason()),
            _ => f.write_str(self.reason()),
        }
    }
}

/// Classifies one physical line (without its LF) of a trait file. `odc` selects the Oracle Data
/// Cloud layout `IDTYPE<TAB>ID<TAB>ITEMS` (AAM-REFERENCE §2.11).
///
/// Checks, first match wins: blank → [`FormatError::TooLong`] → [`FormatError::InvalidUtf8`] →
/// [`FormatError::TabCount`] → [`FormatError::EmptyIdType`] → [`FormatError::EmptyId`].
///
/// ```
/// use segmill::parse::{FormatError, LineKind, Record, parse_line};
/// let line = b" 1060413022 \td_sid=24, d_sid=26\r";
/// let LineKind::Record(rec) = parse_line(line, false) else { panic!() };
/// assert_eq!(rec.id, b"1060413022");
/// assert_eq!(rec.items, b"d_sid=24, d_sid=26");
/// assert_eq!(parse_line(b"a\tb\tc", false), LineKind::FormatError(FormatError::TabCount { found: 2 }));
/// assert_eq!(parse_line(b"  \r", false), LineKind::Blank);
/// ```
pub fn parse_line(line: &[u8], odc: bool) -> LineKind<'_> {
    let content = line.strip_suffix(b"\r").unwrap_or(line);
    if content.iter().all(|&b| b == b' ') {
        return LineKind::Blank;
    }
    // The CR is counted in the limit: measure `line`, not `content`.
    if line.len() > MAX_LINE_BYTES {
        return LineKind::FormatError(FormatError::TooLong);
    }
    if std::str::from_utf8(content).is_err() {
        return LineKind::FormatError(FormatError::InvalidUtf8);
    }
    match split_columns(content, odc) {
        Ok(record) => LineKind::Record(record),
        Err(err) => LineKind::FormatError(err),
    }
}

/// Splits a non-blank, CR-stripped line at its TABs into a [`Record`].
fn split_columns(content: &[u8], odc: bool) -> Result<Record<'_>, FormatError> {
    let tab_count = || FormatError::TabCount {
        found: memchr::memchr_iter(b'\t', content).count(),
    };
    let (first, after_first) = match memchr(b'\t', content) {
        Some(tab) => split_around(content, tab),
        None if odc => return Err(tab_count()),
        None => {
            let id = non_empty(trim_spaces(content), FormatError::EmptyId)?;
            return Ok(Record {
                id,
                id_type: None,
                items: &content[content.len()..],
            });
        }
    };
    if !odc {
        if memchr(b'\t', after_first).is_some() {
            return Err(tab_count());
        }
        let id = non_empty(trim_spaces(first), FormatError::EmptyId)?;
        return Ok(Record {
            id,
            id_type: None,
            items: after_first,
        });
    }
    let Some(second) = memchr(b'\t', after_first) else {
        return Err(tab_count());
    };
    let (id, items) = split_around(after_first, second);
    if memchr(b'\t', items).is_some() {
        return Err(tab_count());
    }
    let id_type = non_empty(trim_spaces(first), FormatError::EmptyIdType)?;
    let id = non_empty(trim_spaces(id), FormatError::EmptyId)?;
    Ok(Record {
        id,
        id_type: Some(id_type),
        items,
    })
}

/// The bytes before and after the separator at `at` (which must be an index of `bytes`).
fn split_around(bytes: &[u8], at: usize) -> (&[u8], &[u8]) {
    let (before, from_sep) = bytes.split_at(at.min(bytes.len()));
    (before, from_sep.get(1..).unwrap_or_default())
}

fn non_empty(bytes: &[u8], err: FormatError) -> Result<&[u8], FormatError> {
    if bytes.is_empty() {
        Err(err)
    } else {
        Ok(bytes)
    }
}

/// `bytes` without leading and trailing ASCII spaces (not TABs or other whitespace).
pub(super) fn trim_spaces(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != b' ').unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|&b| b != b' ')
        .map_or(start, |i| i + 1);
    bytes.get(start..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(line: &[u8], odc: bool) -> Record<'_> {
        match parse_line(line, odc) {
            LineKind::Record(r) => r,
            other => panic!("expected a record, got {other:?}"),
        }
    }

    fn format_error(line: &[u8], odc: bool) -> FormatError {
        match parse_line(line, odc) {
            LineKind::FormatError(e) => e,
            other => panic!("expected a format error, got {other:?}"),
        }
    }

    #[test]
    fn lines_numbers_every_physical_line_and_keeps_cr() {
        let got: Vec<_> = lines(b"a\r\n\n  \nb\n", 1).collect();
        let want: Vec<(u64, &[u8])> = vec![(1, b"a\r"), (2, b""), (3, b"  "), (4, b"b")];
        assert_eq!(got, want);
    }

    #[test]
    fn lines_last_line_without_terminator() {
        let got: Vec<_> = lines(b"x\ny", 41).collect();
        let want: Vec<(u64, &[u8])> = vec![(41, b"x"), (42, b"y")];
        assert_eq!(got, want);
    }

    #[test]
    fn lines_edge_chunks() {
        assert_eq!(lines(b"", 1).count(), 0);
        let want: Vec<(u64, &[u8])> = vec![(5, b"")];
        assert_eq!(lines(b"\n", 5).collect::<Vec<_>>(), want);
        let want: Vec<(u64, &[u8])> = vec![(1, b""), (2, b"")];
        assert_eq!(lines(b"\n\n", 1).collect::<Vec<_>>(), want);
        let mut it = lines(b"a", u64::MAX);
        assert_eq!(it.next(), Some((u64::MAX, &b"a"[..])));
        assert_eq!(it.next(), None);
        assert_eq!(it.next(), None);
    }

    #[test]
    fn line_numbers_across_blank_lines_and_missing_final_newline() {
        let chunk = b"u1\td_sid=1\n\n   \r\nu2\td_sid=2\r\n\nu3";
        let got: Vec<(u64, &[u8])> = lines(chunk, 1)
            .filter_map(|(n, l)| match parse_line(l, false) {
                LineKind::Record(r) => Some((n, r.id)),
                _ => None,
            })
            .collect();
        let want: Vec<(u64, &[u8])> = vec![(1, b"u1"), (4, b"u2"), (6, b"u3")];
        assert_eq!(got, want);
    }

    #[test]
    fn blank_lines() {
        assert_eq!(parse_line(b"", false), LineKind::Blank);
        assert_eq!(parse_line(b"\r", false), LineKind::Blank);
        assert_eq!(parse_line(b"     ", false), LineKind::Blank);
        assert_eq!(parse_line(b"   \r", true), LineKind::Blank);
        // Only one CR is dropped; a second one is data, and so the ID.
        assert_eq!(record(b" \r\r", false).id, b"\r");
        // A TAB is not a space.
        assert_eq!(format_error(b"\t", false), FormatError::EmptyId);
        // All-space lines are blank whatever their length.
        assert_eq!(
            parse_line(&[b' '; MAX_LINE_BYTES + 10], false),
            LineKind::Blank
        );
    }

    #[test]
    fn id_only_and_empty_items() {
        let r = record(b"  user1  ", false);
        assert_eq!((r.id, r.id_type, r.items), (&b"user1"[..], None, &b""[..]));
        let r = record(b"user1\t", false);
        assert_eq!((r.id, r.items), (&b"user1"[..], &b""[..]));
        let r = record(b"user1\t\r", false);
        assert_eq!((r.id, r.items), (&b"user1"[..], &b""[..]));
        let r = record(b"user1 \t  ", false);
        assert_eq!((r.id, r.items), (&b"user1"[..], &b"  "[..]));
    }

    #[test]
    fn record_keeps_id_case_and_inner_spaces_and_cr_elsewhere() {
        let r = record(b" User 123 \tic=1", false);
        assert_eq!(r.id, b"User 123");
        let r = record(b"a\rb\tx\ry\r", false);
        assert_eq!((r.id, r.items), (&b"a\rb"[..], &b"x\ry"[..]));
    }

    #[test]
    fn aam_matrix_id_columns() {
        // AAM-REFERENCE §2.7 rows 1, 5, 9, 13, with the spaces around <TAB> the docs show.
        let cases: [(&[u8], &[u8]); 4] = [
            (
                b"59767559181262060060278870901087098252 \t d_sid=24, d_sid=26, d_sid=27",
                b"59767559181262060060278870901087098252",
            ),
            (
                b"e4fe9bde-caa0-47b6-908d-ffba3fa184f2 \t d_sid=24, d_sid=25, d_sid=26",
                b"e4fe9bde-caa0-47b6-908d-ffba3fa184f2",
            ),
            (
                b"6D92078A-8246-4BA4-AE5B-76104861E7DC \t d_sid=24, d_sid=25, d_sid=26",
                b"6D92078A-8246-4BA4-AE5B-76104861E7DC",
            ),
            (
                b"DBwFoc3dhfMNCFBh2M4F9ZkJEXMNnRDh2PXvnI1 \t d_sid=24, d_sid=25, d_sid=26",
                b"DBwFoc3dhfMNCFBh2M4F9ZkJEXMNnRDh2PXvnI1",
            ),
        ];
        for (line, id) in cases {
            let r = record(line, false);
            assert_eq!(r.id, id);
            assert_eq!(r.id_type, None);
            assert_eq!(&r.items[..8], b" d_sid=2");
        }
    }

    #[test]
    fn odc_lines() {
        let r = record(b"idfa\tB56E68EC-34ED-46D5-AF0C-1D2401F676C9\t38838", true);
        assert_eq!(r.id_type, Some(&b"idfa"[..]));
        assert_eq!(r.id, b"B56E68EC-34ED-46D5-AF0C-1D2401F676C9");
        assert_eq!(r.items, b"38838");
        let r = record(b" Android Device ID \t abc \t\r", true);
        assert_eq!(
            (r.id_type, r.id, r.items),
            (Some(&b"Android Device ID"[..]), &b"abc"[..], &b""[..])
        );
        assert_eq!(
            format_error(b"idfa\tX", true),
            FormatError::TabCount { found: 1 }
        );
        assert_eq!(format_error(b"X", true), FormatError::TabCount { found: 0 });
        assert_eq!(
            format_error(b"a\tb\tc\td", true),
            FormatError::TabCount { found: 3 }
        );
        assert_eq!(format_error(b"  \tX\t1", true), FormatError::EmptyIdType);
        assert_eq!(format_error(b"idfa\t \t1", true), FormatError::EmptyId);
        // An ODC line in a non-ODC file has two TABs.
        assert_eq!(
            format_error(b"idfa\tB56E68EC-34ED-46D5-AF0C-1D2401F676C9\t38838", false),
            FormatError::TabCount { found: 2 }
        );
    }

    #[test]
    fn each_format_error() {
        assert_eq!(
            format_error(b"a\tb\tc\t", false),
            FormatError::TabCount { found: 3 }
        );
        assert_eq!(format_error(b"  \td_sid=1", false), FormatError::EmptyId);
        assert_eq!(
            format_error(b"ab\xffc\td_sid=1", false),
            FormatError::InvalidUtf8
        );
        assert_eq!(
            format_error(b"abc\td_sid=\xc3", false),
            FormatError::InvalidUtf8
        );
        // Valid multibyte UTF-8 is fine.
        assert_eq!(record("ü\tk=é".as_bytes(), false).items, "k=é".as_bytes());
        // The first check that fails wins: too long before invalid UTF-8 and TABs.
        let mut long = vec![b'\t'; MAX_LINE_BYTES + 1];
        long[0] = 0xff;
        assert_eq!(format_error(&long, false), FormatError::TooLong);
    }

    #[test]
    fn length_boundary_without_cr() {
        let mut line = b"id\t".to_vec();
        line.resize(MAX_LINE_BYTES, b'x');
        let r = record(&line, false);
        assert_eq!(r.items.len(), MAX_LINE_BYTES - 3);
        line.push(b'x');
        assert_eq!(line.len(), 102_401);
        assert_eq!(format_error(&line, false), FormatError::TooLong);
    }

    #[test]
    fn length_boundary_with_cr() {
        let mut line = b"id\t".to_vec();
        line.resize(MAX_LINE_BYTES - 1, b'x');
        line.push(b'\r');
        assert_eq!(line.len(), 102_400);
        assert_eq!(record(&line, false).items.len(), MAX_LINE_BYTES - 4);
        // 102,400 bytes of content plus the CR: 102,401 counted bytes.
        line.pop();
        line.push(b'x');
        line.push(b'\r');
        assert_eq!(format_error(&line, false), FormatError::TooLong);
    }

    #[test]
    fn length_boundary_via_lines_excludes_lf() {
        let mut chunk = b"id\t".to_vec();
        chunk.resize(MAX_LINE_BYTES - 1, b'x');
        chunk.extend_from_slice(b"\r\nid\t");
        let second_start = chunk.len() - 3;
        chunk.resize(second_start + MAX_LINE_BYTES, b'y');
        chunk.extend_from_slice(b"\r\n");
        let kinds: Vec<_> = lines(&chunk, 1)
            .map(|(n, l)| (n, matches!(parse_line(l, false), LineKind::Record(_))))
            .collect();
        assert_eq!(kinds, [(1, true), (2, false)]);
    }

    #[test]
    fn reasons_and_display() {
        assert_eq!(FormatError::EmptyId.reason(), "empty ID");
        assert_eq!(
            FormatError::TooLong.to_string(),
            "line longer than 102,400 bytes"
        );
        assert_eq!(
            FormatError::TabCount { found: 3 }.to_string(),
            "wrong number of TABs: a record is ID or ID<TAB>ITEMS \
             (ODC files: IDTYPE<TAB>ID<TAB>ITEMS) (found 3)"
        );
    }

    #[test]
    fn trim_spaces_only_trims_ascii_spaces() {
        assert_eq!(trim_spaces(b"  a b  "), b"a b");
        assert_eq!(trim_spaces(b"   "), b"");
        assert_eq!(trim_spaces(b""), b"");
        assert_eq!(trim_spaces(b"\ta\t"), b"\ta\t");
    }
}
