//! Inbound file names.
