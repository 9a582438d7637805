//! The per-user limit (CONTRACT §3): only the first 200 records per user ID per file that are
//! not Format Errors are applied; later ones count in `lines_over_user_limit` and not in
//! Records processed. Applied in line order across the file's chunks, so the result never
//! depends on how the file was cut.

use super::{ChunkOut, Status, seq};
use crate::report::receipt::Counters;
use ahash::AHashMap;

pub const MAX_LINES_PER_USER: u32 = 200;

/// The pre-merge receipt counters of one file and the lines the cap removed.
#[derive(Default, Debug)]
pub struct CapOutcome {
    pub counters: Counters,
    /// Run positions (`seq`) of capped lines that had reached trait mapping.
    pub capped_ops: Vec<u64>,
    /// Line numbers of every capped line, ascending.
    pub capped_lines: Vec<u64>,
}

/// Counts the file's records by category, applies the cap and drops capped lines from the
/// chunks' rejected lists (they are reported as over the limit instead). Consumes the chunks'
/// marks.
pub fn apply_cap(outs: &mut [ChunkOut], file: u32) -> CapOutcome {
    let mut outcome = CapOutcome::default();
    let c = &mut outcome.counters;
    let total_marks: usize = outs.iter().map(|o| o.marks.len()).sum();
    let mut seen: AHashMap<u128, u32> = AHashMap::new();
    if total_marks > MAX_LINES_PER_USER as usize {
        seen.reserve(total_marks.min(1 << 24));
    }
    for out in outs.iter_mut() {
        c.records_received += out.records;
        c.format_errors += out.format_errors;
        let mut capped_here = Vec::new();
        for mark in &out.marks {
            let over = total_marks > MAX_LINES_PER_USER as usize && {
                let n = seen.entry(mark.user).or_insert(0);
                *n += 1;
                *n > MAX_LINES_PER_USER
            };
            if over {
                c.lines_over_user_limit += 1;
                outcome.capped_lines.push(mark.line);
                match mark.status {
                    Status::Op { .. } => outcome.capped_ops.push(seq(file, mark.line)),
                    _ => capped_here.push(mark.line),
                }
                continue;
            }
            match mark.status {
                Status::InvalidAamId => c.invalid_aam_id += 1,
                Status::InvalidDeviceId => c.invalid_device_id += 1,
                Status::NoMatchingAamId => c.no_matching_aam_id += 1,
                Status::Op { .. } => {}
            }
        }
        // Marks serve the cap only: free them as soon as they are counted.
        out.marks = Vec::new();
        if !capped_here.is_empty() {
            // Both lists ascend by line: drop the capped ones in one pass.
            let mut capped = capped_here.iter().peekable();
            out.rejected.retain(|r| {
                while capped.peek().is_some_and(|&&l| l < r.line) {
                    capped.next();
                }
                capped.peek() != Some(&&r.line)
            });
        }
    }
    c.records_processed = c.records_received - c.lines_over_user_limit;
    outcome
}
