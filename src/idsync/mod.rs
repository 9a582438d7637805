//! ID synchronization (CONTRACT §4): `adobe_id_` and `c2c_id_` files, the partitioned mapping
//! tables in the state, and the in-memory index that serves tonight's lookups.
//!
//! Cold path: [`parse_chunk`] validates rows, [`store::apply`] merges them into the state's
//! tables. Hot path: [`index::IdIndex::lookup`].

pub mod index;
pub mod store;

use crate::model::{AAM_UUID_DPID, Dpid, Uuid, device_format};
use crate::parse::lines;

/// The longest row segmill reads, as for trait files.
pub const MAX_ROW_BYTES: usize = 102_400;

/// Which table a file feeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// `adobe_id_`: (DPID_k, ID_k) → master (DPID_1, ID_1).
    Adobe,
    /// `c2c_id_`: (DPID_1, customer ID) → (DPID_2, SHA-256 e-mail hash).
    C2c,
}

impl Table {
    pub fn dir(self) -> &'static str {
        match self {
            Table::Adobe => "idsync",
            Table::C2c => "c2c",
        }
    }
}

/// What a file's name says about its rows.
#[derive(Clone, Debug)]
pub struct FileSpec {
    pub table: Table,
    pub dpids: Vec<Dpid>,
    pub timestamp: u64,
}

/// One mapping from a row: `key` in `key_dpid`'s ID space maps to `value` in `value_dpid`'s.
/// Byte ranges point into the owning [`ChunkRows::arena`].
#[derive(Clone, Copy, Debug)]
pub struct RawMapping {
    pub key_dpid: Dpid,
    pub key: (u32, u32),
    pub value_dpid: Dpid,
    pub value: (u32, u32),
    pub line: u64,
}

/// A rejected row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectedRow {
    pub line: u64,
    pub reason: String,
    pub text: Vec<u8>,
}

/// Everything one chunk of an ID-sync file yields.
#[derive(Default)]
pub struct ChunkRows {
    pub rows: u64,
    pub arena: Vec<u8>,
    pub mappings: Vec<RawMapping>,
    pub rejected: Vec<RejectedRow>,
}

impl ChunkRows {
    pub fn bytes(&self, range: (u32, u32)) -> &[u8] {
        &self.arena[range.0 as usize..(range.0 + range.1) as usize]
    }

    fn push(&mut self, bytes: &[u8]) -> (u32, u32) {
        let start = self.arena.len() as u32;
        self.arena.extend_from_slice(bytes);
        (start, bytes.len() as u32)
    }
}

/// Parses and validates every row of one chunk. Pure.
pub fn parse_chunk(chunk: &[u8], first_line: u64, spec: &FileSpec) -> ChunkRows {
    let mut mappings = Vec::new();
    let mut arena = ChunkRows::default();
    let mut out = parse_chunk_each(chunk, first_line, spec, |m| {
        let key = arena.push(m.key);
        let value = arena.push(m.value);
        mappings.push(RawMapping {
            key_dpid: m.key_dpid,
            key,
            value_dpid: m.value_dpid,
            value,
            line: m.line,
        });
    });
    out.arena = arena.arena;
    out.mappings = mappings;
    out
}

/// One mapping of a row, borrowed from the chunk.
#[derive(Clone, Copy, Debug)]
pub struct Mapping<'a> {
    pub key_dpid: Dpid,
    pub key: &'a [u8],
    pub value_dpid: Dpid,
    pub value: &'a [u8],
    pub line: u64,
}

/// [`parse_chunk`] handing each mapping to `each` as it is found, in row order, instead of
/// collecting them (the returned rows have no arena and no mappings): nothing is copied.
pub fn parse_chunk_each<'a>(
    chunk: &'a [u8],
    first_line: u64,
    spec: &FileSpec,
    mut each: impl FnMut(Mapping<'a>),
) -> ChunkRows {
    let mut out = ChunkRows::default();
    let mut fields: Vec<&'a [u8]> = Vec::with_capacity(spec.dpids.len());
    // What holds for the whole chunk holds for each of its rows: two row checks can then be
    // skipped (a chunk is whole lines, so UTF-8 cannot break at its edges).
    let whole = ChunkChecks {
        utf8: std::str::from_utf8(chunk).is_ok(),
        no_percent: memchr::memchr(b'%', chunk).is_none(),
    };
    for (line_no, raw) in lines(chunk, first_line) {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.iter().all(|&b| b == b' ') {
            continue;
        }
        out.rows += 1;
        match check_row(line, spec, whole, &mut fields) {
            Ok(()) => {
                let Some((&master, rest)) = fields.split_first() else {
                    continue;
                };
                match spec.table {
                    Table::Adobe => {
                        for (k, &id) in rest.iter().enumerate() {
                            each(Mapping {
                                key_dpid: spec.dpids[k + 1],
                                key: id,
                                value_dpid: spec.dpids[0],
                                value: master,
                                line: line_no,
                            });
                        }
                    }
                    Table::C2c => each(Mapping {
                        key_dpid: spec.dpids[0],
                        key: master,
                        value_dpid: spec.dpids[1],
                        value: rest.first().copied().unwrap_or_default(),
                        line: line_no,
                    }),
                }
            }
            Err(reason) => out.rejected.push(RejectedRow {
                line: line_no,
                reason,
                text: raw.to_vec(),
            }),
        }
    }
    out
}

/// Row checks already passed by the whole chunk.
#[derive(Clone, Copy)]
struct ChunkChecks {
    utf8: bool,
    no_percent: bool,
}

fn check_row<'a>(
    line: &'a [u8],
    spec: &FileSpec,
    whole: ChunkChecks,
    fields: &mut Vec<&'a [u8]>,
) -> Result<(), String> {
    fields.clear();
    if line.len() > MAX_ROW_BYTES {
        return Err(format!("row longer than {MAX_ROW_BYTES} bytes"));
    }
    if matches!(line.last(), Some(b'\t' | b' ')) {
        return Err("row ends with a TAB or space".into());
    }
    if !whole.utf8 && std::str::from_utf8(line).is_err() {
        return Err("row is not valid UTF-8".into());
    }
    if !whole.no_percent && memchr::memchr(b'%', line).is_some() {
        return Err("URL-encoded ID ('%'): IDs must be sent unencoded".into());
    }
    fields.extend(line.split(|&b| b == b'\t').map(|f| f.trim_ascii()));
    if fields.len() != spec.dpids.len() {
        return Err(format!(
            "expected {} columns (one per DPID in the name), found {}",
            spec.dpids.len(),
            fields.len()
        ));
    }
    for (k, (&field, &dpid)) in fields.iter().zip(&spec.dpids).enumerate() {
        if field.is_empty() {
            return Err(format!("column {} is empty", k + 1));
        }
        if dpid == AAM_UUID_DPID && Uuid::parse(field).is_none() {
            return Err(format!(
                "column {} (DPID 0) is not a 38-digit AAM UUID",
                k + 1
            ));
        }
        if let Some((name, format)) = device_format(dpid)
            && !format.accepts(field)
        {
            return Err(format!(
                "column {} is not a valid {name} ID ({})",
                k + 1,
                format.describe()
            ));
        }
    }
    if spec.table == Table::C2c {
        let hash = fields.get(1).copied().unwrap_or_default();
        let ok = hash.len() == 64
            && hash
                .iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
        if !ok {
            return Err(
                "column 2 is not a lowercase SHA-256 hex e-mail hash (64 characters)".into(),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "68079982765673198504052656074456196039";

    fn adobe(dpids: &[Dpid]) -> FileSpec {
        FileSpec {
            table: Table::Adobe,
            dpids: dpids.to_vec(),
            timestamp: 1_476_312_152,
        }
    }

    #[test]
    fn documented_rows_map_every_column_to_the_master() {
        let text = format!("{UUID}\tXYZ3017D_2kzkTOXkFYIAgwbajoqWRcqkXl-TTrj6E4njaMR38\n\n");
        let out = parse_chunk(text.as_bytes(), 1, &adobe(&[0, 12345]));
        assert_eq!(out.rows, 1);
        assert!(out.rejected.is_empty());
        assert_eq!(out.mappings.len(), 1);
        let m = out.mappings[0];
        assert_eq!((m.key_dpid, m.value_dpid, m.line), (12345, 0, 1));
        assert_eq!(
            out.bytes(m.key),
            b"XYZ3017D_2kzkTOXkFYIAgwbajoqWRcqkXl-TTrj6E4njaMR38"
        );
        assert_eq!(out.bytes(m.value), UUID.as_bytes());
    }

    #[test]
    fn three_columns_give_two_mappings() {
        let text = format!("{UUID}\ta\tb\r\n");
        let out = parse_chunk(text.as_bytes(), 1, &adobe(&[0, 5, 6]));
        let keys: Vec<(Dpid, &[u8])> = out
            .mappings
            .iter()
            .map(|m| (m.key_dpid, out.bytes(m.key)))
            .collect();
        assert_eq!(keys, vec![(5, &b"a"[..]), (6, &b"b"[..])]);
    }

    #[test]
    fn rejected_rows_say_why() {
        let cases: [(&str, &str); 6] = [
            ("{U}\tabc\t", "ends with a TAB"),
            ("{U}\tabc ", "ends with a TAB or space"),
            ("{U}\tab%20c", "URL-encoded"),
            ("{U}\ta\tb", "expected 2 columns"),
            ("123\tabc", "38-digit AAM UUID"),
            ("{U}\t", "ends with a TAB"),
        ];
        for (row, reason) in cases {
            let text = row.replace("{U}", UUID);
            let out = parse_chunk(text.as_bytes(), 7, &adobe(&[0, 21]));
            assert_eq!(out.rejected.len(), 1, "{row}");
            assert!(
                out.rejected[0].reason.contains(reason),
                "{row}: {}",
                out.rejected[0].reason
            );
            assert_eq!(out.rejected[0].line, 7);
            assert!(out.mappings.is_empty());
        }
    }

    #[test]
    fn bad_rows_among_good_ones_are_rejected_one_by_one() {
        // The chunk as a whole is neither UTF-8 nor free of '%', so each row is checked.
        let mut text = format!("{UUID}\tgood1\n{UUID}\tab%20c\n").into_bytes();
        text.extend_from_slice(UUID.as_bytes());
        text.extend_from_slice(b"\tbad\xff\n");
        text.extend_from_slice(format!("{UUID}\tgood2\n").as_bytes());
        let out = parse_chunk(&text, 1, &adobe(&[0, 21]));
        let reasons: Vec<(u64, &str)> = out
            .rejected
            .iter()
            .map(|r| (r.line, r.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            vec![
                (2, "URL-encoded ID ('%'): IDs must be sent unencoded"),
                (3, "row is not valid UTF-8"),
            ]
        );
        let keys: Vec<&[u8]> = out.mappings.iter().map(|m| out.bytes(m.key)).collect();
        assert_eq!(keys, vec![&b"good1"[..], b"good2"]);
        assert_eq!(out.rows, 4);
    }

    #[test]
    fn device_master_is_checked() {
        let out = parse_chunk(
            b"E4FE9BDE-CAA0-47B6-908D-FFBA3FA184F2\tcust1\n",
            1,
            &adobe(&[20914, 21]),
        );
        assert_eq!(out.rejected.len(), 1);
        assert!(out.rejected[0].reason.contains("GAID"));
    }

    #[test]
    fn c2c_needs_a_lowercase_sha256() {
        let spec = FileSpec {
            table: Table::C2c,
            dpids: vec![999_999, 987_654],
            timestamp: 1_560_431_657,
        };
        let good = "cust\t55e79200c1635b37ad31a378c39feb12f120f116625093a19bc32fff15041149\r\n";
        let out = parse_chunk(good.as_bytes(), 1, &spec);
        assert_eq!(out.mappings.len(), 1);
        assert_eq!(out.mappings[0].key_dpid, 999_999);
        let bad = "cust\t55E79200C1635B37AD31A378C39FEB12F120F116625093A19BC32FFF15041149\n";
        let out = parse_chunk(bad.as_bytes(), 1, &spec);
        assert_eq!(out.rejected.len(), 1);
    }
}
