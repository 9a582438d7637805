//! Inbound files: name grammar, discovery and readers.

pub mod discover;
pub mod lines_at;
pub mod names;
pub mod pgp;
pub mod read;
