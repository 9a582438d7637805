//! Run report.
