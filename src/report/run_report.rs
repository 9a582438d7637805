//! The machine-readable run report (`runs/<run_id>.json`) and the ID-sync receipt
//! (`receipts/<run_id>/idsync.json`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What became of one file the run saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileOutcome {
    Processed,
    Duplicate,
    Rejected,
    /// Rejected by an earlier run and unchanged since: not examined again.
    PreviouslyRejected,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenFile {
    pub name: String,
    pub outcome: FileOutcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `runs/<run_id>.json`. Unlike receipts and state, it holds wall-clock durations, so it is
/// the one output that differs between otherwise identical runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunReport {
    pub run_id: String,
    pub as_of: String,
    pub dry_run: bool,
    pub generation: u64,
    pub files: Vec<SeenFile>,
    pub ignored: Vec<String>,
    pub rejected_files: Vec<SeenFile>,
    pub expired_traits: u64,
    pub profiles_changed: u64,
    pub exit_code: u8,
    pub durations_seconds: BTreeMap<String, f64>,
    pub total_seconds: f64,
}

impl RunReport {
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedRow {
    pub line: u64,
    pub reason: String,
    pub text: String,
}

/// One ID-sync file in the run's ID-sync receipt.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdSyncFileReceipt {
    pub name: String,
    /// `processed`, `duplicate` or `rejected`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub rows: u64,
    pub rejected_rows: u64,
    /// Mappings in accepted rows (a row of N columns holds N − 1).
    pub mappings: u64,
    /// Mappings now in the state (the rest were superseded by a mapping from a later file).
    pub mappings_stored: u64,
    pub rejected: Vec<RejectedRow>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdSyncReceipt {
    pub files: Vec<IdSyncFileReceipt>,
}

impl IdSyncReceipt {
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }
}
