//! segmill: onboard offline audience data the way Adobe Audience Manager's server-to-server
//! batch transfer does.
//!
//! # Architecture
//!
//! ```text
//! segmill run
//!   config ─► discover (inbound::discover) ─► plan against the ledger (run)
//!     ─► ID-sync files: parse (idsync::parse_chunk) ─► group by partition as chunks arrive
//!        (idsync::store::Grouped) ─► merge into the partitioned tables, each written out as
//!        merged ─► in-memory index for tonight's DPIDs (idsync::index)
//!     ─► trait files in CONTRACT §2 order, each:
//!          read (inbound::read: mmap, or gzip on its own thread over a bounded channel)
//!          ─► process_chunk (ingest, rayon, one pure function per chunk: parse, validate,
//!             resolve, map items to trait instructions, bucket ops by profile partition)
//!          ─► in chunk order: per-user cap (ingest::cap) ─► op spool, spilling partitions
//!             to disk past the memory budget (ingest::spool)
//!     ─► per partition, in parallel: ops back from the spool, sort by (profile, run
//!        position), TTL expiry, .sync / .overwrite / d_unsid merge, segments
//!        (profile::merge), written into the new generation as merged
//!     ─► exports: per-partition diffs into sorted run files, k-way merged into the
//!        destination files (outbound::export)
//!     ─► receipts, rejects, run report (report)
//!     ─► new state generation made current by one atomic rename (state)
//! ```
//!
//! Memory follows the night's ops, bounded by `run.ops_memory_bytes`, plus the ID index of
//! tonight's DPIDs: no stage holds the whole profile store or every line of a file.
//!
//! Data flows one way; only [`run`] knows the order of the stages and owns the thread pool.
//! The hot path ([`ingest::process_chunk`], [`profile::merge::merge_partition`]) is pure and
//! deterministic: every output is byte-identical whatever the thread count or chunk size.
//! Data problems (bad lines, unknown IDs, rejected files) are counted and reported; run
//! problems (config, state, I/O) return errors and commit nothing.
//!
//! Every stored structure is partitioned by a stable hash ([`model::partition_of`]: xxh3 with
//! a fixed seed) so that a partition is the unit another machine can own later.

#![deny(unsafe_code)]

pub mod alloc;
mod anon_table;
pub mod blocks;
pub mod catalog;
pub mod cli;
pub mod codec;
pub mod config;
pub mod failpoint;
pub mod generator;
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
pub mod storage;
