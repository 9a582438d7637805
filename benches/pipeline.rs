//! Hot-path benchmarks: the chunk kernel (parse + validate + resolve + bucket), next to its
//! floor (counting the same bytes' newlines with memchr). Run with `cargo bench --bench pipeline`.
//!
//! `process_chunk/aam_uuid_lines`: AAM-UUID lines, no ID lookup. `process_chunk/customer_lines`:
//! customer-ID lines resolved through a 1M-key ID index (90% synced), as in the nightly job.
//!
//! `trait_rules/*`: `TraitRules::qualify` alone, once per line that has key-value or `ic`
//! signals, over lines and a catalog written by `segmill gen` (`gen_catalog`), and over the same
//! lines against a catalog that uses every operator (`mixed_catalog`). Items are those lines.

mod common;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use segmill::idsync::index::IdIndex;
use segmill::ingest::{FileCtx, IdKind, process_chunk};
use segmill::model::{Dpid, TraitId};
use segmill::parse::{Item, LineKind, lines, parse_line};
use segmill::rules::trait_rule::{Scratch, TraitRules};
use std::hint::black_box;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `lines` AAM-UUID lines of 1-8 `d_sid` items each, deterministic.
fn uuid_lines(lines: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(lines * 80);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..lines {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(format!("{:038}\t", u128::from(x) * 1_000_003).as_bytes());
        for i in 0..(1 + x % 8) {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(format!("d_sid={}", 1000 + (x >> (i * 3)) % 500).as_bytes());
        }
        out.push(b'\n');
    }
    out
}

fn kernel(c: &mut Criterion) {
    let text = uuid_lines(100_000);
    let owners: segmill::catalog::TraitOwners = (1000..1500).map(|t| (t, 21)).collect();
    let index = IdIndex::default();
    let rules = segmill::rules::trait_rule::TraitRules::compile([]).expect("no rules");
    let mut group = c.benchmark_group("process_chunk");
    group.throughput(Throughput::Bytes(text.len() as u64));
    for partitions in [16u32, 64] {
        let ctx = FileCtx {
            file: 0,
            target_ds: 21,
            overwrite: false,
            id_kind: IdKind::AamUuid,
            trait_owner: &owners,
            rules: &rules,
            index: Some(&index),
            partitions,
        };
        group.bench_with_input(
            BenchmarkId::new("aam_uuid_lines", partitions),
            &ctx,
            |b, ctx| {
                b.iter(|| {
                    let out = process_chunk(black_box(&text), 1, ctx);
                    assert_eq!(out.records, 100_000);
                    out
                })
            },
        );
    }
    group.finish();
}

/// Customer-ID lines through a real index: parse + validate + resolve + bucket, one thread.
fn customer_kernel(c: &mut Criterion) {
    let (ids, lines) = (common::size(1_000_000), common::size(100_000));
    let index = common::build_index(&common::idsync_parts(ids));
    assert_eq!(index.len(), ids as usize);
    let (text, info) = common::customer_lines(lines, ids, 7);
    let owners = common::trait_owner();
    let rules = segmill::rules::trait_rule::TraitRules::compile([]).expect("no rules");
    let ctx = FileCtx {
        file: 0,
        target_ds: common::DPID,
        overwrite: false,
        id_kind: IdKind::Customer {
            dpid: common::DPID,
            cross_device: false,
        },
        trait_owner: &owners,
        rules: &rules,
        index: Some(&index),
        partitions: common::PARTITIONS,
    };
    let mut group = c.benchmark_group("process_chunk");
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.bench_function("customer_lines_1m_index", |b| {
        b.iter(|| {
            let out = process_chunk(black_box(&text), 1, &ctx);
            assert_eq!(out.records, info.lines);
            let ops: usize = out.parts.iter().map(|p| p.ops.len()).sum();
            assert_eq!(ops as u64, info.synced);
            out
        })
    });
    group.finish();

    // The floor: the same bytes' newlines counted with memchr.
    let mut group = c.benchmark_group("floor");
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.bench_function("memchr_newlines", |b| {
        b.iter(|| {
            let n = memchr::memchr_iter(b'\n', black_box(&text)).count();
            assert_eq!(n as u64, info.lines);
            n
        })
    });
    group.finish();
}

/// A key-value or `ic` signal, as the ingest kernel hands it to `qualify`.
type Signal<'a> = (u32, &'a [u8], &'a [u8]);

/// The signals of every line of `text` that has any, flattened, with each line's range; built
/// the way `ingest::push_op` builds them (bare and `ic=` items become key `ic`).
fn signal_lines(text: &[u8]) -> (Vec<Signal<'_>>, Vec<std::ops::Range<usize>>) {
    let (mut signals, mut ranges) = (Vec::new(), Vec::new());
    for (_, line) in lines(text, 1) {
        let LineKind::Record(record) = parse_line(line, false) else {
            continue;
        };
        let start = signals.len();
        for (index, item) in record.items().enumerate() {
            match item {
                Item::Signal { key, value } => signals.push((index as u32, key, value)),
                Item::Ic(value) => signals.push((index as u32, &b"ic"[..], value)),
                _ => {}
            }
        }
        if signals.len() > start {
            ranges.push(start..signals.len());
        }
    }
    (signals, ranges)
}

/// Qualifies every line; returns (qualified pairs, a fingerprint of them in order).
fn qualify_all(
    rules: &TraitRules,
    ds: Dpid,
    signals: &[Signal<'_>],
    ranges: &[std::ops::Range<usize>],
    scratch: &mut Scratch,
    out: &mut Vec<(TraitId, u32)>,
) -> (u64, u64) {
    let (mut pairs, mut fingerprint) = (0u64, 0u64);
    for range in ranges {
        out.clear();
        rules.qualify(ds, &signals[range.clone()], scratch, out);
        pairs += out.len() as u64;
        for &(t, item) in out.iter() {
            fingerprint = common::mix(fingerprint ^ (u64::from(t) << 32 | u64::from(item)));
        }
    }
    (pairs, fingerprint)
}

/// `n` rules over gen's signal vocabulary using every operator, deterministic.
fn mixed_rules(n: u32) -> Vec<(TraitId, Dpid, String)> {
    const TIERS: [&str; 4] = ["gold", "silver", "bronze", "platinum"];
    const PRODUCTS: [&str; 5] = ["tablet", "phone", "laptop", "camera", "tv"];
    const CITIES: [&str; 5] = ["New York", "San Francisco", "Berlin", "Paris", "Tokyo"];
    let mut rng = common::Rng::new(11);
    (0..n)
        .map(|i| {
            let mut pick = |list: &[&'static str]| list[rng.below(list.len() as u64) as usize];
            let (tier, product, city) = (pick(&TIERS), pick(&PRODUCTS), pick(&CITIES));
            let age = 18 + rng.below(45);
            let ic = 30_600 + rng.below(64);
            let affix = &city[..1 + rng.below(3) as usize];
            let rule = match i % 10 {
                0 => format!("age >= {age} AND age < {}.5", age + 20),
                1 => format!(r#"tier != "{tier}""#),
                2 => format!(r#"product contains "{}""#, &product[product.len() - 2..]),
                3 => format!(r#"city startswith "{affix}""#),
                4 => format!(r#"age > {age} AND NOT tier == "{tier}""#),
                5 => format!(
                    r#"city endswith "{}" OR product == "{product}""#,
                    &city[city.len() - 2..]
                ),
                6 => format!(r#"ic >= {ic} AND ic <= "{}""#, ic + 5),
                7 => format!(
                    r#"product matchesregex "^{}" AND tier == {tier}"#,
                    &product[..2]
                ),
                8 => format!(r#"ic == {ic} OR (tier == "{tier}" AND product == "{product}")"#),
                _ => format!(r#"gender == f AND age <= {age}"#),
            };
            (5000 + i, common::DPID, rule)
        })
        .collect()
}

/// `TraitRules::qualify` on gen's lines: its catalog (5,000 traits, ~450 rules) and a mixed one.
fn trait_rules(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let opts =
        segmill::generator::GenOptions::new(dir.path().join("drop"), 1_000, common::size(200_000));
    let summary = segmill::generator::generate(&opts).expect("gen");
    let config = segmill::config::Config::load(&summary.config).expect("gen's config");
    let gen_rules = TraitRules::compile(
        config
            .traits
            .values()
            .filter_map(|t| t.rule.as_deref().map(|r| (t.id, t.data_source, r))),
    )
    .expect("gen's rules compile");
    let mixed = mixed_rules(500);
    let mixed_rules =
        TraitRules::compile(mixed.iter().map(|(t, ds, r)| (*t, *ds, r.as_str()))).expect("mixed");
    // gen writes one plain `.sync` file for fewer than 2M lines: the trait file.
    let (trait_file, _) = summary
        .files
        .iter()
        .find(|(p, _)| p.to_string_lossy().contains("ftp_dpm_"))
        .expect("a trait file");
    let text = std::fs::read(trait_file).expect("read the trait file");
    let (signals, ranges) = signal_lines(&text);
    assert!(!ranges.is_empty());

    let mut group = c.benchmark_group("trait_rules");
    group.throughput(Throughput::Elements(ranges.len() as u64));
    for (name, rules) in [("gen_catalog", &gen_rules), ("mixed_catalog", &mixed_rules)] {
        let (mut scratch, mut out) = (Scratch::new(), Vec::new());
        let want = qualify_all(
            rules,
            common::DPID,
            &signals,
            &ranges,
            &mut scratch,
            &mut out,
        );
        assert!(want.0 > 0, "{name}: some line qualifies");
        eprintln!(
            "trait_rules/{name}: {} rules, {} lines with signals, {} signals, {} qualified pairs, fingerprint {:016x}",
            rules.len(),
            ranges.len(),
            signals.len(),
            want.0,
            want.1
        );
        group.bench_function(name, |b| {
            b.iter(|| {
                let got = qualify_all(
                    rules,
                    common::DPID,
                    black_box(&signals),
                    &ranges,
                    &mut scratch,
                    &mut out,
                );
                assert_eq!(got, want);
                got
            })
        });
    }
    group.finish();
}

criterion_group!(benches, kernel, customer_kernel, trait_rules);
criterion_main!(benches);
