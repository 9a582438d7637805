//! The ledger: every inbound file segmill has seen, for deduplication (CONTRACT §2).
//!
//! Stored as the data file `ledger` of each generation: JSON lines sorted by name, one object
//! per file, so equal ledgers give equal bytes and a human can read it:
//!
//! ```text
//! {"name":"date=2026-11-21/ftp_dpm_21_1763683200.sync","size":120,"hash":"<32 hex>","outcome":"processed","run_id":"...","seq":0}
//! ```
//!
//! `seq` is the order in which entries were recorded; it decides which of several processed
//! files with the same content is "the first" (`by_hash`). This module decides nothing about
//! duplicates itself: the inbound stage asks and records.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::{Generation, GenerationWriter, StateError};

/// Name of the ledger data file inside a generation.
pub const LEDGER_FILE: &str = "ledger";

/// What happened to an inbound file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Applied (whole).
    Processed,
    /// Rejected as a whole; see `reason`.
    Rejected,
}

/// One inbound file as recorded in the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    /// The bare file name: the deduplication key (a name is processed once, whatever folder
    /// it arrives in).
    pub name: String,
    /// Where the file was seen, relative to the inbound root (`date=.../ftp_dpm_...`).
    pub path: String,
    /// Size in bytes as received.
    pub size: u64,
    /// 128-bit content hash of the file as received.
    pub hash: u128,
    /// Processed or rejected.
    pub outcome: Outcome,
    /// Why it was rejected; `None` when processed.
    pub reason: Option<String>,
    /// The run that recorded it.
    pub run_id: String,
}

/// A malformed ledger; `line` counts from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ledger line {line}: {reason}")]
pub struct LedgerError {
    /// The offending line.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

/// The ledger line as stored (borrowed for writing).
#[derive(Serialize)]
struct WireOut<'a> {
    name: &'a str,
    path: &'a str,
    size: u64,
    hash: &'a str,
    outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    run_id: &'a str,
    seq: u64,
}

/// The ledger line as stored (owned for reading).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireIn {
    name: String,
    #[serde(default)]
    path: String,
    size: u64,
    hash: String,
    outcome: Outcome,
    #[serde(default)]
    reason: Option<String>,
    run_id: String,
    seq: u64,
}

/// All inbound files seen, by name, with a content index of the processed ones.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    /// name → (seq, entry)
    entries: BTreeMap<String, (u64, LedgerEntry)>,
    /// content hash of processed entries → seq → name
    processed: HashMap<u128, BTreeMap<u64, String>>,
    next_seq: u64,
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// Parses the stored form written by [`Ledger::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Ledger, LedgerError> {
        let mut ledger = Ledger::new();
        if bytes.is_empty() {
            return Ok(ledger);
        }
        let Some(body) = bytes.strip_suffix(b"\n") else {
            let line = bytes.split(|&b| b == b'\n').count();
            return Err(LedgerError {
                line,
                reason: "missing final newline (truncated?)".to_owned(),
            });
        };
        let mut seqs = std::collections::HashSet::new();
        for (i, raw) in body.split(|&b| b == b'\n').enumerate() {
            let line = i + 1;
            let err = |reason: String| LedgerError { line, reason };
            let wire: WireIn = serde_json::from_slice(raw).map_err(|e| err(e.to_string()))?;
            let hash = parse_hash(&wire.hash).ok_or_else(|| {
                err(format!(
                    "hash {:?} is not 32 lowercase hex digits",
                    wire.hash
                ))
            })?;
            if let Some((last, _)) = ledger.entries.last_key_value()
                && last.as_str() >= wire.name.as_str()
            {
                return Err(err(format!(
                    "name {:?} is not after {last:?} (unsorted or duplicate)",
                    wire.name
                )));
            }
            if !seqs.insert(wire.seq) {
                return Err(err(format!("seq {} appears twice", wire.seq)));
            }
            let entry = LedgerEntry {
                name: wire.name,
                path: wire.path,
                size: wire.size,
                hash,
                outcome: wire.outcome,
                reason: wire.reason,
                run_id: wire.run_id,
            };
            ledger.insert(wire.seq, entry);
        }
        Ok(ledger)
    }

    /// The stored form: JSON lines sorted by name, each ending in `\n`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * 160);
        let mut hash = String::with_capacity(32);
        for (seq, entry) in self.entries.values() {
            hash.clear();
            // Writing into a String cannot fail.
            let _ = write!(hash, "{:032x}", entry.hash);
            let wire = WireOut {
                name: &entry.name,
                path: &entry.path,
                size: entry.size,
                hash: &hash,
                outcome: entry.outcome,
                reason: entry.reason.as_deref(),
                run_id: &entry.run_id,
                seq: *seq,
            };
            // Serializing strings and integers into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut out, &wire);
            out.push(b'\n');
        }
        out
    }

    /// The entry recorded under `name`.
    pub fn by_name(&self, name: &str) -> Option<&LedgerEntry> {
        self.entries.get(name).map(|(_, entry)| entry)
    }

    /// The first-recorded processed entry whose content hash is `hash`.
    pub fn by_hash(&self, hash: u128) -> Option<&LedgerEntry> {
        let (_, name) = self.processed.get(&hash)?.first_key_value()?;
        self.by_name(name)
    }

    /// Records `entry`, replacing any entry of the same name (e.g. after `--reprocess`). The
    /// new entry counts as recorded after every existing one.
    pub fn record(&mut self, entry: LedgerEntry) {
        let seq = self.next_seq;
        self.insert(seq, entry);
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no file has been recorded.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries in name order.
    pub fn iter(&self) -> impl Iterator<Item = &LedgerEntry> {
        self.entries.values().map(|(_, entry)| entry)
    }

    fn insert(&mut self, seq: u64, entry: LedgerEntry) {
        if let Some((old_seq, old)) = self.entries.remove(&entry.name)
            && old.outcome == Outcome::Processed
            && let Some(names) = self.processed.get_mut(&old.hash)
        {
            names.remove(&old_seq);
            if names.is_empty() {
                self.processed.remove(&old.hash);
            }
        }
        if entry.outcome == Outcome::Processed {
            self.processed
                .entry(entry.hash)
                .or_default()
                .insert(seq, entry.name.clone());
        }
        self.next_seq = self.next_seq.max(seq.saturating_add(1));
        self.entries.insert(entry.name.clone(), (seq, entry));
    }
}

/// Parses 32 lowercase hex digits.
fn parse_hash(text: &str) -> Option<u128> {
    if text.len() != 32
        || !text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    u128::from_str_radix(text, 16).ok()
}

impl Generation {
    /// The verified ledger of this generation; empty if the generation has none.
    pub fn ledger(&self) -> Result<Ledger, StateError> {
        match self.read(LEDGER_FILE)? {
            None => Ok(Ledger::new()),
            Some(bytes) => Ledger::from_bytes(&bytes)
                .map_err(|e| StateError::corrupt(&self.dir.join(LEDGER_FILE), e.to_string())),
        }
    }
}

impl GenerationWriter {
    /// Writes `ledger` as this generation's `ledger` file.
    pub fn write_ledger(&self, ledger: &Ledger) -> Result<(), StateError> {
        self.write(LEDGER_FILE, &ledger.to_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, hash: u128, outcome: Outcome, run: &str) -> LedgerEntry {
        LedgerEntry {
            name: name.to_owned(),
            path: format!("date=2026-11-21/{name}"),
            size: 10,
            hash,
            outcome,
            reason: (outcome == Outcome::Rejected).then(|| "empty file".to_owned()),
            run_id: run.to_owned(),
        }
    }

    #[test]
    fn lookups_by_name_and_first_processed_hash() {
        let mut ledger = Ledger::new();
        ledger.record(entry("z_first", 7, Outcome::Processed, "r1"));
        ledger.record(entry("a_second", 7, Outcome::Processed, "r2"));
        ledger.record(entry("m_rejected", 9, Outcome::Rejected, "r2"));
        assert_eq!(
            ledger.by_name("a_second").map(|e| e.run_id.as_str()),
            Some("r2")
        );
        assert_eq!(ledger.by_name("nope"), None);
        // First recorded, not first by name.
        assert_eq!(ledger.by_hash(7).map(|e| e.name.as_str()), Some("z_first"));
        // Rejected content is not a "duplicate_of" source.
        assert_eq!(ledger.by_hash(9), None);
        assert_eq!(ledger.len(), 3);
    }

    #[test]
    fn record_replaces_same_name_and_updates_hash_index() {
        let mut ledger = Ledger::new();
        ledger.record(entry("f1", 7, Outcome::Processed, "r1"));
        ledger.record(entry("f2", 7, Outcome::Processed, "r1"));
        ledger.record(entry("f1", 8, Outcome::Processed, "r2"));
        assert_eq!(ledger.len(), 2);
        assert_eq!(
            ledger.by_name("f1").map(|e| (e.hash, e.run_id.as_str())),
            Some((8, "r2"))
        );
        assert_eq!(ledger.by_hash(7).map(|e| e.name.as_str()), Some("f2"));
        assert_eq!(ledger.by_hash(8).map(|e| e.name.as_str()), Some("f1"));
    }

    #[test]
    fn bytes_round_trip_exactly_and_keep_record_order() {
        let mut ledger = Ledger::new();
        ledger.record(entry("b", 1 << 100, Outcome::Processed, "r1"));
        ledger.record(entry("a", 1 << 100, Outcome::Processed, "r2"));
        ledger.record(entry("c", 3, Outcome::Rejected, "r2"));
        let bytes = ledger.to_bytes();
        let text = String::from_utf8(bytes.clone()).unwrap();
        let big = "00000010000000000000000000000000";
        let expected = [
            format!(r#"{{"name":"a","path":"date=2026-11-21/a","size":10,"hash":"{big}","outcome":"processed","run_id":"r2","seq":1}}"#),
            format!(r#"{{"name":"b","path":"date=2026-11-21/b","size":10,"hash":"{big}","outcome":"processed","run_id":"r1","seq":0}}"#),
            r#"{"name":"c","path":"date=2026-11-21/c","size":10,"hash":"00000000000000000000000000000003","outcome":"rejected","reason":"empty file","run_id":"r2","seq":2}"#.to_owned(),
        ];
        assert_eq!(text, expected.join("\n") + "\n");
        let back = Ledger::from_bytes(&bytes).unwrap();
        assert_eq!(back.to_bytes(), bytes);
        assert_eq!(back.by_hash(1 << 100).map(|e| e.name.as_str()), Some("b"));
        let mut back = back;
        back.record(entry("d", 4, Outcome::Processed, "r3"));
        assert!(
            String::from_utf8(back.to_bytes())
                .unwrap()
                .ends_with("\"seq\":3}\n")
        );
        assert_eq!(Ledger::from_bytes(b"").unwrap().len(), 0);
    }

    #[test]
    fn malformed_ledgers_name_the_line() {
        let good = "{\"name\":\"a\",\"size\":1,\"hash\":\"00000000000000000000000000000001\",\"outcome\":\"processed\",\"run_id\":\"r\",\"seq\":0}\n";
        let unsorted = format!("{good}{good}");
        let err = Ledger::from_bytes(unsorted.as_bytes()).unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.reason.contains("unsorted or duplicate"), "{err}");

        let err = Ledger::from_bytes(good.trim_end().as_bytes()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "ledger line 1: missing final newline (truncated?)"
        );

        let bad_hash = good.replace("00000000000000000000000000000001", "1");
        let err = Ledger::from_bytes(bad_hash.as_bytes()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "ledger line 1: hash \"1\" is not 32 lowercase hex digits"
        );

        let bad_outcome = good.replace("processed", "done");
        assert_eq!(
            Ledger::from_bytes(bad_outcome.as_bytes()).unwrap_err().line,
            1
        );
    }
}
