//! Outbound names.
