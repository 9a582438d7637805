//! Destinations: outbound file names, line layouts and templates, `.info` control files.

pub mod export;
pub mod info;
pub mod names;
pub mod pargz;
pub mod template;
