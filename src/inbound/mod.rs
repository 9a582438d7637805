//! Inbound files: name grammar, discovery and readers.

pub mod names;
pub mod read;
