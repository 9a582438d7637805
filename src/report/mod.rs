//! What a run tells people: job receipts (text, JSON, rejected lines), the ID-sync receipt and
//! the run report.

pub mod mail;
pub mod metrics;
pub mod receipt;
pub mod run_report;
