//! Job receipts in the layout of AAM's receipt e-mail (AAM-REFERENCE §4.1), as JSON with the
//! snake_case keys of CONTRACT §6, and the `.rejects.tsv` of every rejected line.

use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// The receipt counters of one file or one job. All of them are additive across partitions;
/// `total_devices` and `total_users_with_failed_traits` are distinct-profile counts, which stay
/// additive across partitions because a profile lives in exactly one partition.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub records_received: u64,
    pub format_errors: u64,
    pub invalid_aam_id: u64,
    pub invalid_device_id: u64,
    pub no_matching_aam_id: u64,
    pub no_trait_realized: u64,
    pub records_processed: u64,
    pub stored_records: u64,
    pub total_devices: u64,
    pub total_signals: u64,
    pub total_unused_signals: u64,
    pub total_realized_traits: u64,
    pub total_removed_traits: u64,
    pub total_traits_failed_validation: u64,
    pub total_users_with_failed_traits: u64,
    pub lines_over_user_limit: u64,
    pub malformed_items: u64,
}

impl Counters {
    /// Adds every counter of `other`. Only meaningful for the distinct counts when `self` and
    /// `other` cover disjoint sets of profiles (different partitions).
    pub fn add(&mut self, other: &Counters) {
        self.records_received += other.records_received;
        self.format_errors += other.format_errors;
        self.invalid_aam_id += other.invalid_aam_id;
        self.invalid_device_id += other.invalid_device_id;
        self.no_matching_aam_id += other.no_matching_aam_id;
        self.no_trait_realized += other.no_trait_realized;
        self.records_processed += other.records_processed;
        self.stored_records += other.stored_records;
        self.total_devices += other.total_devices;
        self.total_signals += other.total_signals;
        self.total_unused_signals += other.total_unused_signals;
        self.total_realized_traits += other.total_realized_traits;
        self.total_removed_traits += other.total_removed_traits;
        self.total_traits_failed_validation += other.total_traits_failed_validation;
        self.total_users_with_failed_traits += other.total_users_with_failed_traits;
        self.lines_over_user_limit += other.lines_over_user_limit;
        self.malformed_items += other.malformed_items;
    }

    /// CONTRACT §3: Stored = Processed − Format − Invalid AAM − Invalid Device − No Match − NTR,
    /// and Processed = Received − over the per-user limit.
    pub fn identity_holds(&self) -> bool {
        let categorized = self.format_errors
            + self.invalid_aam_id
            + self.invalid_device_id
            + self.no_matching_aam_id
            + self.no_trait_realized
            + self.stored_records;
        categorized == self.records_processed
            && self.records_processed + self.lines_over_user_limit == self.records_received
            && self.total_unused_signals <= self.total_signals
    }

    /// Whether anything here makes the run exit 1 (CONTRACT §1).
    pub fn has_rejected_lines(&self) -> bool {
        self.format_errors
            + self.invalid_aam_id
            + self.invalid_device_id
            + self.lines_over_user_limit
            > 0
    }
}

/// The per-line categories that get error samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    FormatErrors,
    InvalidAamId,
    InvalidDeviceId,
    NoMatchingAamId,
    NoTraitRealized,
    LinesOverUserLimit,
}

impl Category {
    pub const ALL: [Category; 6] = [
        Category::FormatErrors,
        Category::InvalidAamId,
        Category::InvalidDeviceId,
        Category::NoMatchingAamId,
        Category::NoTraitRealized,
        Category::LinesOverUserLimit,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Category::FormatErrors => "format_errors",
            Category::InvalidAamId => "invalid_aam_id",
            Category::InvalidDeviceId => "invalid_device_id",
            Category::NoMatchingAamId => "no_matching_aam_id",
            Category::NoTraitRealized => "no_trait_realized",
            Category::LinesOverUserLimit => "lines_over_user_limit",
        }
    }

    /// Whether lines of this category are written to `.rejects.tsv`. Lines that matched but
    /// realized nothing are a normal outcome, sampled but not listed one by one.
    pub fn is_rejection(self) -> bool {
        self != Category::NoTraitRealized
    }
}

/// How many samples a receipt keeps per category.
pub const SAMPLES_PER_CATEGORY: usize = 10;
/// How much of a line a sample shows.
pub const SAMPLE_TEXT_BYTES: usize = 200;

/// One error sample.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    pub file: String,
    pub line: u64,
    pub reason: String,
    pub text: String,
}

/// Outcome of one file of a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileStatus {
    Processed,
    Duplicate,
    Rejected,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileReceipt {
    pub name: String,
    pub status: FileStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate_of: Option<String>,
    /// For a `duplicate`: the run that processed the name before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processed_by_run: Option<String>,
    #[serde(flatten)]
    pub counters: Counters,
}

/// The receipt of one job: all files of one (DPID, OWNER) in one run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobReceipt {
    pub run_id: String,
    pub job: String,
    pub dpid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<u32>,
    #[serde(flatten)]
    pub counters: Counters,
    pub job_start_time: String,
    pub job_end_time: String,
    pub files: Vec<FileReceipt>,
    pub error_samples: std::collections::BTreeMap<Category, Vec<Sample>>,
}

impl JobReceipt {
    /// The receipt e-mail text, line for line in AAM's layout, with segmill's extra counters
    /// after AAM's and the files that were not processed listed at the end.
    pub fn to_text(&self) -> String {
        let c = &self.counters;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Subject: segmill Server-To-Server Processing Result: job {} run {}",
            self.job, self.run_id
        );
        let _ = writeln!(s, "Dear Partner: (ID:{})", self.dpid);
        let _ = writeln!(s, "We have received your Server-To-Server file delivery");
        let _ = writeln!(s, "File name:");
        for f in self
            .files
            .iter()
            .filter(|f| f.status == FileStatus::Processed)
        {
            let _ = writeln!(s, "{}", printable(&f.name));
        }
        let rows: [(&str, u64); 17] = [
            ("Records received", c.records_received),
            ("Format Errors", c.format_errors),
            ("Invalid AAM ID", c.invalid_aam_id),
            ("Invalid Device ID", c.invalid_device_id),
            ("No Matching AAM ID", c.no_matching_aam_id),
            ("No Trait Realized", c.no_trait_realized),
            ("Records processed", c.records_processed),
            ("Stored Records", c.stored_records),
            ("Total devices", c.total_devices),
            ("Total signals", c.total_signals),
            ("Total unused signals", c.total_unused_signals),
            ("Total realized traits", c.total_realized_traits),
            ("Total removed traits", c.total_removed_traits),
            (
                "Total traits failed validation",
                c.total_traits_failed_validation,
            ),
            (
                "Total users that have traits which failed validation",
                c.total_users_with_failed_traits,
            ),
            ("Lines over the per-user limit", c.lines_over_user_limit),
            ("Malformed items", c.malformed_items),
        ];
        for (label, value) in rows {
            let _ = writeln!(s, "{label}: {value}");
        }
        let _ = writeln!(s, "Job start time: {}", self.job_start_time);
        let _ = writeln!(s, "Job end time: {}", self.job_end_time);
        let skipped: Vec<&FileReceipt> = self
            .files
            .iter()
            .filter(|f| f.status != FileStatus::Processed)
            .collect();
        if !skipped.is_empty() {
            let _ = writeln!(s, "Files not processed:");
            for f in skipped {
                let why = match (&f.status, &f.reason, &f.processed_by_run) {
                    (FileStatus::Rejected, Some(r), _) => format!("rejected: {r}"),
                    (FileStatus::Duplicate, _, Some(run)) => {
                        format!("duplicate: already processed by run {run}")
                    }
                    (status, _, _) => format!("{status:?}").to_lowercase(),
                };
                let _ = writeln!(s, "{} ({})", printable(&f.name), printable(&why));
            }
        }
        s
    }

    pub fn to_json(&self) -> String {
        // Serializing plain data with string keys cannot fail.
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }
}

/// Escapes a line for one TSV field: backslash, TAB, CR and LF as `\\`, `\t`, `\r`, `\n`, and
/// bytes that are not valid UTF-8 as `\xNN`.
pub fn escape_tsv(bytes: &[u8], out: &mut String) {
    for chunk in bytes.utf8_chunks() {
        // The escaped characters are ASCII: the text between them is copied as it is.
        let mut rest = chunk.valid();
        while let Some(i) = rest
            .bytes()
            .position(|b| matches!(b, b'\\' | b'\t' | b'\r' | b'\n'))
        {
            let (plain, special) = rest.split_at(i);
            out.push_str(plain);
            out.push_str(match special.as_bytes().first() {
                Some(b'\\') => "\\\\",
                Some(b'\t') => "\\t",
                Some(b'\r') => "\\r",
                _ => "\\n",
            });
            rest = special.get(1..).unwrap_or_default();
        }
        out.push_str(rest);
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
}

/// `text` with control characters (a partner's file name may hold a newline) written as
/// escapes, so nothing printed for people can be forged into extra lines.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return text.into();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// A line cut to at most `SAMPLE_TEXT_BYTES` bytes (at a byte boundary; invalid UTF-8 shown
/// lossily).
pub fn sample_text(bytes: &[u8]) -> String {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    let cut = &bytes[..bytes.len().min(SAMPLE_TEXT_BYTES)];
    String::from_utf8_lossy(cut).into_owned()
}

/// Formats a Unix timestamp as `YYYY-MM-DD HH:MM:SS` (UTC), the receipt's time format.
pub fn receipt_time(ts: i64) -> String {
    match jiff::Timestamp::from_second(ts) {
        Ok(t) => t.strftime("%Y-%m-%d %H:%M:%S").to_string(),
        Err(_) => ts.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsv_escaping() {
        let mut s = String::new();
        escape_tsv(b"a\tb\\c\r\xff", &mut s);
        assert_eq!(s, "a\\tb\\\\c\\r\\xff");
    }

    proptest::proptest! {
        /// The escaping agrees with its character-by-character definition, on any bytes.
        #[test]
        fn tsv_escaping_agrees_with_its_definition(
            bytes in proptest::collection::vec(proptest::prop_oneof![
                proptest::num::u8::ANY,
                proptest::sample::select(vec![b'\\', b'\t', b'\r', b'\n', b'a']),
            ], 0..40),
            prefix in "\\PC{0,4}",
        ) {
            let mut input = prefix.into_bytes();
            input.extend(bytes);
            let mut want = String::from("kept|");
            for chunk in input.utf8_chunks() {
                for ch in chunk.valid().chars() {
                    match ch {
                        '\\' => want.push_str("\\\\"),
                        '\t' => want.push_str("\\t"),
                        '\r' => want.push_str("\\r"),
                        '\n' => want.push_str("\\n"),
                        c => want.push(c),
                    }
                }
                for b in chunk.invalid() {
                    want.push_str(&format!("\\x{b:02x}"));
                }
            }
            let mut got = String::from("kept|");
            escape_tsv(&input, &mut got);
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn identity() {
        let c = Counters {
            records_received: 10,
            lines_over_user_limit: 1,
            records_processed: 9,
            format_errors: 1,
            invalid_aam_id: 1,
            no_trait_realized: 2,
            stored_records: 5,
            ..Counters::default()
        };
        assert!(c.identity_holds());
        let broken = Counters {
            stored_records: 4,
            ..c
        };
        assert!(!broken.identity_holds());
    }

    #[test]
    fn receipt_time_format() {
        assert_eq!(receipt_time(1_368_806_402), "2013-05-17 16:00:02");
    }
}

#[cfg(test)]
mod printable_tests {
    use super::printable;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            printable("ftp_dpm_21_1763700000.sync"),
            "ftp_dpm_21_1763700000.sync"
        );
        assert_eq!(printable("a\nb\tc\u{1b}"), "a\\nb\\tc\\u{1b}");
    }
}
