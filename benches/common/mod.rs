//! Shared inputs of the criterion benches: deterministic IDs, UUIDs and trait lines shaped like
//! `segmill gen`'s, and an ID index built the way `segmill run` builds it (`store::apply`, then
//! `IdIndex::build`). Every function depends only on its arguments, so the benches can assert
//! exact results.
//!
//! Not every bench uses every helper.
#![allow(dead_code)]

use segmill::idsync::Table;
use segmill::idsync::index::IdIndex;
use segmill::idsync::store::{Incoming, Record, apply};
use segmill::model::{Dpid, TraitId};
use std::collections::BTreeMap;
use std::collections::BTreeSet;

/// The customer-ID data source of the generated lines.
pub const DPID: Dpid = 21;
/// Traits of `DPID` used by the lines: `FIRST_TRAIT..FIRST_TRAIT + TRAITS`.
pub const FIRST_TRAIT: TraitId = 1000;
pub const TRAITS: u32 = 4500;
/// Partitions of the ID-sync tables and profiles, as in a generated config.
pub const PARTITIONS: u32 = 64;

/// The splitmix64 finalizer: a bijection on u64, so distinct inputs give distinct outputs.
pub fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A small deterministic generator.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(mix(seed ^ 0x5eed))
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in `0..n` (n > 0), by multiply-shift.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";

/// Appends the customer ID of row `k`: 20-40 characters; the first 11 spell all 64 bits of
/// `mix(k)`, so rows have distinct IDs.
pub fn push_customer_id(out: &mut Vec<u8>, k: u64) {
    let x = mix(k ^ 0xc0ffee);
    let mut filler = mix(x ^ 0xf111);
    let len = 20 + (filler % 21) as usize;
    for i in 0..11 {
        out.push(ALPHABET[((x >> (6 * i)) & 63) as usize]);
    }
    for i in 11..len {
        if i % 10 == 0 {
            filler = mix(filler);
        }
        out.push(ALPHABET[(filler & 63) as usize]);
        filler >>= 6;
    }
}

/// The AAM UUID of row `k` as a number below 10^38, distinct per row.
pub fn uuid_of(k: u64) -> u128 {
    u128::from(mix(k ^ 0x0a0a)) * 1_000_000_000_000_000_000
        + u128::from(mix(k) % 1_000_000_000_000_000_000)
}

/// Appends `uuid_of(k)` as 38 digits.
pub fn push_uuid(out: &mut Vec<u8>, k: u64) {
    let mut digits = [b'0'; 38];
    let mut v = uuid_of(k);
    for d in digits.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out.extend_from_slice(&digits);
}

/// Appends a decimal number.
pub fn push_num(out: &mut Vec<u8>, v: u64) {
    let mut buf = itoa_buf(v);
    out.append(&mut buf);
}

fn itoa_buf(mut v: u64) -> Vec<u8> {
    let mut digits = Vec::with_capacity(20);
    loop {
        digits.push(b'0' + (v % 10) as u8);
        v /= 10;
        if v == 0 {
            break;
        }
    }
    digits.reverse();
    digits
}

/// What a block of generated trait lines holds, for exact assertions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinesInfo {
    pub lines: u64,
    /// Lines whose customer ID is synced (row index below `ids`).
    pub synced: u64,
}

/// `lines` customer-ID trait lines: ~90% of users synced (row index below `ids`), the rest not
/// (index in `ids..2*ids`); 1-8 items per line, mostly `d_sid`, some `d_unsid`, `ic=` and
/// key-value signals, as `segmill gen` writes them (no malformed lines).
pub fn customer_lines(lines: u64, ids: u64, seed: u64) -> (Vec<u8>, LinesInfo) {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(lines as usize * 82);
    let mut info = LinesInfo::default();
    for _ in 0..lines {
        let user = if rng.below(10) < 9 {
            info.synced += 1;
            rng.below(ids)
        } else {
            ids + rng.below(ids)
        };
        info.lines += 1;
        push_customer_id(&mut out, user);
        out.push(b'\t');
        push_items(&mut out, &mut rng);
        out.push(b'\n');
    }
    (out, info)
}

/// 1-8 items in gen's mix: 87.5% `d_sid`, 6% `d_unsid`, 3% `ic=`, 3.5% key-value.
pub fn push_items(out: &mut Vec<u8>, rng: &mut Rng) {
    let n = 1 + rng.below(8);
    for i in 0..n {
        if i > 0 {
            out.push(b',');
        }
        let t = u64::from(FIRST_TRAIT) + rng.below(u64::from(TRAITS));
        match rng.below(1000) {
            0..875 => {
                out.extend_from_slice(b"d_sid=");
                push_num(out, t);
            }
            875..935 => {
                out.extend_from_slice(b"d_unsid=");
                push_num(out, t);
            }
            935..965 => {
                out.extend_from_slice(b"ic=");
                push_num(out, 30_600 + rng.below(64));
            }
            _ => out.extend_from_slice(b"product=tablet"),
        }
    }
}

/// The trait → owner map of the lines: every trait belongs to `DPID`.
pub fn trait_owner() -> segmill::catalog::TraitOwners {
    (FIRST_TRAIT..FIRST_TRAIT + TRAITS)
        .map(|t| (t, DPID))
        .collect()
}

/// The ID-sync tables of rows `0..ids` (customer ID → UUID) as `segmill run` stores them:
/// partition name → payload. Built with `store::apply`, as the ID-sync stage does.
pub fn idsync_parts(ids: u64) -> BTreeMap<String, Vec<u8>> {
    let mut keys = Vec::with_capacity(ids as usize * 31);
    let mut uuids = Vec::with_capacity(ids as usize * 38);
    let mut key_ends = Vec::with_capacity(ids as usize);
    for k in 0..ids {
        push_customer_id(&mut keys, k);
        key_ends.push(keys.len());
        push_uuid(&mut uuids, k);
    }
    let mut incoming = Vec::with_capacity(ids as usize);
    let mut start = 0;
    for (k, &end) in key_ends.iter().enumerate() {
        incoming.push(Incoming {
            key_dpid: DPID,
            record: Record {
                id: &keys[start..end],
                value_dpid: 0,
                value: segmill::idsync::store::Value::of(0, &uuids[k * 38..k * 38 + 38]),
                timestamp: 1_795_222_800,
            },
            file: 0,
        });
        start = end;
    }
    let none = |_: &str| -> anyhow::Result<Option<Vec<u8>>> { Ok(None) };
    let applied = apply(Table::Adobe, &incoming, PARTITIONS, &none).expect("apply ID sync");
    applied.parts
}

/// The in-memory index over `parts` for `DPID`, as `segmill run` builds it.
pub fn build_index(parts: &BTreeMap<String, Vec<u8>>) -> IdIndex {
    let source = |name: &str| -> anyhow::Result<Option<segmill::idsync::index::PartBytes<'_>>> {
        Ok(parts
            .get(name)
            .map(|b| segmill::idsync::index::PartBytes::Borrowed(b.as_slice())))
    };
    IdIndex::build(&BTreeSet::from([DPID]), PARTITIONS, &source).expect("build index")
}

/// Whether criterion measures (`cargo bench` passes `--bench`). Under `cargo test
/// --all-targets` (CI) it runs every bench once as a smoke test: sizes then shrink, so CI
/// neither waits minutes nor needs gigabytes for the 20M-key index.
pub fn measuring() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// `full` when measuring, else a thousandth of it (at least 100).
pub fn size(full: u64) -> u64 {
    if measuring() {
        full
    } else {
        (full / 1000).max(100)
    }
}
