//! The per-user limit (CONTRACT §3): only the first 200 records per user ID per file that are
//! not Format Errors are applied; later ones count in `lines_over_user_limit` and not in
//! Records processed. Applied in line order as the file's chunks arrive in order, so the result
//! never depends on how the file was cut, and a capped line's op is dropped before it is held.

use super::{ChunkOut, Status, seq};
use crate::anon_table::AnonTable;
use crate::report::receipt::Counters;

pub const MAX_LINES_PER_USER: u32 = 200;

/// How many lines ahead [`Cap::take`] prefetches a user's slot.
const PREFETCH_AHEAD: usize = 8;

/// The pre-merge receipt counters of one file and the lines the cap removed.
#[derive(Default, Debug)]
pub struct CapOutcome {
    pub counters: Counters,
    /// Line numbers of every capped line, ascending.
    pub capped_lines: Vec<u64>,
}

/// The cap over one file, fed its chunks in order ([`Cap::take`]).
pub struct Cap {
    file: u32,
    seen: UserCounts,
    outcome: CapOutcome,
    /// Records taken so far: until there are more than the limit, no user can be over it.
    records: u64,
}

impl Cap {
    /// The cap over file `file`, its table sized for about `users_hint` distinct users (a
    /// guess from the file's size: too small a guess costs the table's growth, too large one
    /// its memory).
    pub fn new(file: u32, users_hint: usize) -> Cap {
        Cap {
            file,
            seen: UserCounts::with_capacity(users_hint),
            outcome: CapOutcome::default(),
            records: 0,
        }
    }

    /// Counts the chunk's records by category, applies the cap, drops capped lines from the
    /// chunk's rejected list (they are reported as over the limit instead) and their ops from
    /// its op buffers. Consumes the chunk's marks.
    pub fn take(&mut self, out: &mut ChunkOut) {
        let c = &mut self.outcome.counters;
        c.records_received += out.records;
        c.format_errors += out.format_errors;
        let mut capped_rejects = Vec::new();
        let mut capped_ops = Vec::new();
        for (k, mark) in out.marks.iter().enumerate() {
            // The table is far larger than the caches once a file has millions of users: start
            // loading the slot of a user a few lines ahead.
            if let Some(ahead) = out.marks.get(k + PREFETCH_AHEAD) {
                self.seen.prefetch(ahead.user);
            }
            self.records += 1;
            if self.seen.bump(mark.user) > MAX_LINES_PER_USER {
                c.lines_over_user_limit += 1;
                self.outcome.capped_lines.push(mark.line);
                match mark.status {
                    Status::Op { .. } | Status::Pending { .. } => {
                        capped_ops.push(seq(self.file, mark.line))
                    }
                    _ => capped_rejects.push(mark.line),
                }
                continue;
            }
            match mark.status {
                Status::InvalidAamId => c.invalid_aam_id += 1,
                Status::InvalidDeviceId => c.invalid_device_id += 1,
                Status::NoMatchingAamId => c.no_matching_aam_id += 1,
                // Whether a pending line's ID is synced is counted where it is looked up.
                Status::Op { .. } | Status::Pending { .. } => {}
            }
        }
        // Marks serve the cap only: free them as soon as they are counted.
        out.marks = Vec::new();
        if !capped_rejects.is_empty() {
            // Both lists ascend by line: drop the capped ones in one pass.
            let mut capped = capped_rejects.iter().peekable();
            out.rejected.retain(|r| {
                while capped.peek().is_some_and(|&&l| l < r.line) {
                    capped.next();
                }
                capped.peek() != Some(&&r.line)
            });
        }
        if !capped_ops.is_empty() {
            // Each buffer's ops ascend by seq, like `capped_ops`.
            for buf in out.parts.iter_mut().chain(&mut out.pending) {
                let mut capped = capped_ops.iter().peekable();
                buf.retain(|op| {
                    while capped.peek().is_some_and(|&&s| s < op.seq) {
                        capped.next();
                    }
                    capped.peek() != Some(&&op.seq)
                });
            }
        }
    }

    /// The file's counters and capped lines, once every chunk was taken.
    pub fn finish(mut self) -> CapOutcome {
        let c = &mut self.outcome.counters;
        c.records_processed = c.records_received - c.lines_over_user_limit;
        self.outcome
    }
}

/// Records per user of one file: an open-addressing table of 16-byte slots, each a user's
/// 128-bit hash (the lookup hash, see `ingest::process_chunk`) with its top byte replaced by a
/// saturating count. Users are told apart by the other 120 bits (two of 20 million users share
/// them with odds of about 10^-22), and a slot's key and count come in one cache line. The
/// table lives in an [`AnonTable`], sized from the file's size up to [`MAX_PRESIZED_USERS`]
/// and grown at 3/4 full: a file of 20 million users ends in a 512 MiB table, probed at
/// random.
#[derive(Default)]
struct UserCounts {
    /// 0 marks an empty slot; a used one has a count of at least 1.
    slots: AnonTable<u128>,
    len: usize,
}

/// The most users a table is sized for up front (a 512 MiB table): a file's size only guesses
/// its users, and every page of a table is touched once it holds a few users a page, so a guess
/// too large costs its whole size. Past this, the table grows as users come.
const MAX_PRESIZED_USERS: usize = 24 << 20;

/// Where a slot's count starts: its top byte.
const COUNT_SHIFT: u32 = 120;

/// The bits of a slot that hold the count.
const COUNT: u128 = 0xFF << COUNT_SHIFT;

impl UserCounts {
    /// A table sized for about `users` users (at most [`MAX_PRESIZED_USERS`]) without growing.
    fn with_capacity(users: usize) -> UserCounts {
        let users = users.min(MAX_PRESIZED_USERS);
        let slots = (users * 4 / 3).max(1024).next_power_of_two();
        UserCounts {
            // Without the memory for the table the file is counted in a growing one.
            slots: AnonTable::zeroed(slots).unwrap_or_default(),
            len: 0,
        }
    }

    /// Where `user`'s probe begins in a table of `mask + 1` slots: its low hash bits.
    fn home(user: u128, mask: usize) -> usize {
        user as usize & mask
    }

    /// Starts loading the slot where `user`'s probe begins (a hint; see [`Cap::take`]).
    fn prefetch(&self, user: u128) {
        let slots = self.slots.slots();
        if !slots.is_empty() {
            crate::idsync::index::prefetch_read(&slots[Self::home(user, slots.len() - 1)]);
        }
    }

    /// Adds one record of `user` and returns its count so far, saturating above the limit.
    fn bump(&mut self, user: u128) -> u32 {
        if (self.len + 1) * 4 > self.slots.slots().len() * 3 {
            self.grow();
        }
        let key = user & !COUNT;
        let slots = self.slots.slots_mut();
        let mask = slots.len() - 1;
        let mut i = Self::home(user, mask);
        loop {
            let slot = slots[i];
            if slot == 0 {
                slots[i] = key | 1 << COUNT_SHIFT;
                self.len += 1;
                return 1;
            }
            if slot & !COUNT == key {
                let n = ((slot >> COUNT_SHIFT) as u32 + 1).min(MAX_LINES_PER_USER + 1);
                slots[i] = key | u128::from(n) << COUNT_SHIFT;
                return n;
            }
            i = (i + 1) & mask;
        }
    }

    fn grow(&mut self) {
        let len = (self.slots.slots().len() * 2).max(1024);
        let old = std::mem::replace(
            &mut self.slots,
            AnonTable::zeroed(len).expect("memory for the per-user counts"),
        );
        let slots = self.slots.slots_mut();
        let mask = len - 1;
        for &slot in old.slots().iter().filter(|&&s| s != 0) {
            let mut i = Self::home(slot, mask);
            while slots[i] != 0 {
                i = (i + 1) & mask;
            }
            slots[i] = slot;
        }
    }
}

const _: () = assert!(MAX_LINES_PER_USER < u8::MAX as u32);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::{Mark, OpBuf};

    #[test]
    fn counts_saturate_just_above_the_limit() {
        let mut t = UserCounts::default();
        for n in 1..=300u32 {
            assert_eq!(t.bump(7), n.min(MAX_LINES_PER_USER + 1));
        }
        assert_eq!(t.bump(0), 1);
        assert_eq!(t.bump(1), 1);
        // Users are told apart by their hashes below the count byte.
        assert_eq!(t.bump(1 | 0xAB << COUNT_SHIFT), 2);
        assert_eq!(t.bump(7 | 1 << 119), 1);
    }

    #[test]
    fn a_presized_table_takes_its_users_without_growing() {
        let mut t = UserCounts::with_capacity(3_000);
        let slots = t.slots.slots().len();
        assert_eq!(slots, 4096);
        // Users whose home is the last slot: their probes wrap around to the first ones.
        let users: Vec<u128> = (0..3_000u128).map(|k| 4095 + (k << 12)).collect();
        for round in 1..=2 {
            for &u in &users {
                assert_eq!(t.bump(u), round);
            }
        }
        assert_eq!(t.len, 3_000);
        assert_eq!(t.slots.slots().len(), slots);
        // A hint larger than the bound gets the bound's table, not the hint's.
        let big = UserCounts::with_capacity(usize::MAX);
        assert_eq!(
            big.slots.slots().len(),
            (MAX_PRESIZED_USERS * 4 / 3).next_power_of_two()
        );
    }

    #[test]
    fn many_users_survive_growth() {
        let mut t = UserCounts::default();
        let users: Vec<u128> = (0..50_000u128)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835) | 2)
            .collect();
        for round in 1..=3 {
            for &u in &users {
                assert_eq!(t.bump(u), round);
            }
        }
        assert_eq!(t.len, users.len());
        assert!(t.slots.slots().len() * 3 >= t.len * 4);
    }

    fn chunk(first_line: u64, users: &[u128]) -> ChunkOut {
        ChunkOut {
            pending: Vec::new(),
            records: users.len() as u64,
            format_errors: 0,
            marks: users
                .iter()
                .enumerate()
                .map(|(i, &user)| Mark {
                    user,
                    line: first_line + i as u64,
                    status: if user % 2 == 0 {
                        Status::Op { part: 0 }
                    } else {
                        Status::NoMatchingAamId
                    },
                })
                .collect(),
            rejected: Vec::new(),
            parts: vec![ops_of(first_line, users)],
        }
    }

    /// One op per even user's line (the ones with `Status::Op`), as `process_chunk` makes them.
    fn ops_of(first_line: u64, users: &[u128]) -> OpBuf {
        let mut buf = OpBuf::default();
        for (i, &user) in users.iter().enumerate() {
            if user % 2 == 0 {
                buf.ops.push(crate::ingest::Op {
                    seq: seq(0, first_line + i as u64),
                    key: (0, 0),
                    acts: (0, 0),
                    items: 1,
                    malformed: 0,
                    failed: 0,
                });
            }
        }
        buf
    }

    #[test]
    fn the_cap_follows_line_order_across_chunks() {
        // User 4: 150 lines in the first chunk, 100 in the second; user 3 (unmatched): 250.
        let mut cap = Cap::new(0, 0);
        let mut a = chunk(1, &[vec![4u128; 150], vec![3; 125]].concat());
        let mut b = chunk(276, &[vec![3u128; 125], vec![4; 100]].concat());
        cap.take(&mut a);
        cap.take(&mut b);
        assert!(a.marks.is_empty() && b.marks.is_empty());
        // Only the ops of kept lines stay: user 4's first 200 lines.
        let kept: Vec<u64> = [&a, &b]
            .iter()
            .flat_map(|c| c.parts[0].ops.iter().map(|op| op.seq))
            .collect();
        let want_ops: Vec<u64> = (1..=150).chain(401..=450).map(|l| seq(0, l)).collect();
        assert_eq!(kept, want_ops);
        let out = cap.finish();
        let c = &out.counters;
        assert_eq!(c.records_received, 500);
        assert_eq!(c.lines_over_user_limit, 50 + 50);
        assert_eq!(c.records_processed, 400);
        assert_eq!(c.no_matching_aam_id, 200);
        // User 3's lines 276..=400 minus the first 75 of chunk b; user 4's last 50.
        let want: Vec<u64> = (351..=400).chain(451..=500).collect();
        assert_eq!(out.capped_lines, want);
    }
}
