//! segmill: onboard offline audience data the way Adobe Audience Manager's server-to-server
//! batch transfer does.
//!
//! Architecture notes are filled in as the stages land.

pub mod cli;
pub mod codec;
pub mod config;
pub mod failpoint;
pub mod idsync;
pub mod inbound;
pub mod ingest;
pub mod inspect;
pub mod model;
pub mod outbound;
pub mod parse;
pub mod profile;
pub mod report;
pub mod rules;
pub mod run;
pub mod state;
