//! Partition merge: `profile::merge::merge_partition` applying 1M lines of ops to a partition of
//! 1M stored profiles (half the lines hit stored profiles, half create new ones), without and
//! with 200 segments to evaluate for every changed profile. The result is checked against a
//! naive model (a map of trait sets). `merge_quiet`: a night of 20,000 lines on a partition of
//! 1M profiles with TTLs, copying quiet profiles through or reading them all.
//!
//! Run with `cargo bench --bench merge`.

mod common;

use ahash::AHashMap;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use segmill::ingest::{FileCtx, IdKind, OpBuf, process_chunk};
use segmill::profile::merge::{FileMeta, MergeCtx, merge_partition};
use segmill::rules::segment_rule::SegmentRules;
use segmill::rules::trait_rule::TraitRules;
use std::collections::BTreeSet;
use std::hint::black_box;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const AS_OF: i64 = 1_795_312_800;

/// The naive model: user → trait set.
type Model = AHashMap<u64, BTreeSet<u32>>;

/// AAM-UUID lines for `users`, 1-8 items each, applied to `model` as they are written:
/// `d_sid` realizes, `d_unsid` removes (`removals` = false writes only `d_sid`).
fn lines(
    users: impl Iterator<Item = u64>,
    rng: &mut common::Rng,
    removals: bool,
    model: &mut Model,
) -> Vec<u8> {
    let mut out = Vec::new();
    for user in users {
        common::push_uuid(&mut out, user);
        out.push(b'\t');
        let set = model.entry(user).or_default();
        for i in 0..1 + rng.below(8) {
            if i > 0 {
                out.push(b',');
            }
            let t = common::FIRST_TRAIT + rng.below(u64::from(common::TRAITS)) as u32;
            if removals && rng.below(100) < 7 {
                out.extend_from_slice(b"d_unsid=");
                set.remove(&t);
            } else {
                out.extend_from_slice(b"d_sid=");
                set.insert(t);
            }
            common::push_num(&mut out, u64::from(t));
        }
        out.push(b'\n');
    }
    out
}

fn ops_of(text: &[u8], owners: &segmill::catalog::TraitOwners, rules: &TraitRules) -> OpBuf {
    let index = segmill::idsync::index::IdIndex::default();
    let ctx = FileCtx {
        file: 0,
        target_ds: common::DPID,
        overwrite: false,
        id_kind: IdKind::AamUuid,
        trait_owner: owners,
        rules,
        index: Some(&index),
        partitions: 1,
    };
    let mut out = process_chunk(text, 1, &ctx);
    out.parts.pop().expect("one partition")
}

/// 200 code-view rules over the lines' traits, in `segmill gen`'s shapes.
fn segment_rules() -> SegmentRules {
    let mut rng = common::Rng::new(5);
    let texts: Vec<(u32, String)> = (0..200u32)
        .map(|i| {
            let mut t = || common::FIRST_TRAIT + rng.below(u64::from(common::TRAITS)) as u32;
            let (a, b, c) = (t(), t(), t());
            let rule = match i % 4 {
                0 => format!("{a}T AND {b}T"),
                1 => format!("({a}T OR {b}T) AND NOT {c}T"),
                2 => format!("{a}T OR {b}T OR {c}T"),
                _ => format!("FREQUENCY([{a}T,{b}T] <= 30D) >= 1"),
            };
            (500_000 + i, rule)
        })
        .collect();
    SegmentRules::compile(texts.iter().map(|(id, r)| (*id, r.as_str()))).expect("valid rules")
}

fn merge(c: &mut Criterion) {
    let (stored_n, night_n) = (common::size(1_000_000), common::size(1_000_000));
    let owners = common::trait_owner();
    let rules = TraitRules::compile([]).expect("no rules");
    let mut model = Model::default();
    let mut rng = common::Rng::new(11);
    let stored_text = lines(0..stored_n, &mut rng, false, &mut model);
    let night_users: Vec<u64> = (0..night_n)
        .map(|_| {
            if rng.below(2) == 0 {
                rng.below(stored_n)
            } else {
                stored_n + rng.below(stored_n)
            }
        })
        .collect();
    let night_text = lines(night_users.iter().copied(), &mut rng, true, &mut model);
    let profiles = model.values().filter(|s| !s.is_empty()).count() as u64;
    let memberships: u64 = model.values().map(|s| s.len() as u64).sum();

    let files = [FileMeta {
        job: 0,
        overwrite: false,
        target_ds: common::DPID,
    }];
    let ttl = AHashMap::new();
    let recency = AHashMap::new();
    let no_segments = SegmentRules::default();
    let with_segments = segment_rules();
    let ctx = |segments| MergeCtx {
        files: &files,
        jobs: 1,
        ttl_days: &ttl,
        as_of: AS_OF,
        segments,
        reevaluate_all: false,
        recency_days: &recency,
        previous_as_of: None,
        trust_events: true,
        keep_changes: false,
    };

    let stored_ops = ops_of(&stored_text, &owners, &rules);
    assert_eq!(stored_ops.ops.len() as u64, stored_n);
    let stored = merge_partition(None, &[&stored_ops], &ctx(&no_segments))
        .expect("merge into an empty partition")
        .payload
        .expect("a new partition");
    drop(stored_ops);
    let night_ops = ops_of(&night_text, &owners, &rules);
    assert_eq!(night_ops.ops.len() as u64, night_n);

    let mut group = c.benchmark_group("merge");
    group.sample_size(10);
    group.throughput(Throughput::Elements(night_n));
    for (label, segments) in [
        ("no_segments", &no_segments),
        ("200_segments", &with_segments),
    ] {
        let ctx = ctx(segments);
        group.bench_with_input(
            BenchmarkId::new("1m_ops_on_1m_profiles", label),
            &ctx,
            |b, ctx| {
                b.iter(|| {
                    let out = merge_partition(Some(black_box(&stored)), &[&night_ops], ctx)
                        .expect("merge");
                    assert_eq!(out.profiles, profiles);
                    assert_eq!(out.memberships, memberships);
                    out
                })
            },
        );
    }
    group.finish();
}

/// A small night on a large store with TTLs: 20,000 lines on stored users of 1M profiles whose
/// traits all expire in 120 days, merged one day later. Trusting the stored events copies the
/// quiet profiles through unread; reading every profile is what a night does after a TTL or a
/// segment changed (and what every night did before the profiles carried their events). Both
/// must give the same partition.
fn merge_quiet(c: &mut Criterion) {
    let (stored_n, night_n) = (common::size(1_000_000), common::size(20_000));
    let owners = common::trait_owner();
    let rules = TraitRules::compile([]).expect("no rules");
    let mut model = Model::default();
    let mut rng = common::Rng::new(12);
    let stored_text = lines(0..stored_n, &mut rng, false, &mut model);
    let night_users: Vec<u64> = (0..night_n).map(|_| rng.below(stored_n)).collect();
    let night_text = lines(night_users.iter().copied(), &mut rng, true, &mut model);
    let profiles = model.values().filter(|s| !s.is_empty()).count() as u64;

    let files = [FileMeta {
        job: 0,
        overwrite: false,
        target_ds: common::DPID,
    }];
    let ttl: AHashMap<u32, u32> = (0..common::TRAITS)
        .map(|i| (common::FIRST_TRAIT + i, 120))
        .collect();
    let recency = AHashMap::new();
    let segments = segment_rules();
    let ctx = |as_of, previous_as_of, trust_events| MergeCtx {
        files: &files,
        jobs: 1,
        ttl_days: &ttl,
        as_of,
        segments: &segments,
        reevaluate_all: false,
        recency_days: &recency,
        previous_as_of,
        trust_events,
        keep_changes: false,
    };
    let stored_ops = ops_of(&stored_text, &owners, &rules);
    let stored = merge_partition(None, &[&stored_ops], &ctx(AS_OF, None, true))
        .expect("merge into an empty partition")
        .payload
        .expect("a new partition");
    drop(stored_ops);
    let night_ops = ops_of(&night_text, &owners, &rules);
    let next_day = AS_OF + 86_400;
    let trusted = ctx(next_day, Some(AS_OF), true);
    let reading = ctx(next_day, Some(AS_OF), false);
    let merged = |ctx: &MergeCtx<'_>| {
        let out = merge_partition(Some(black_box(&stored)), &[&night_ops], ctx).expect("merge");
        assert_eq!(out.profiles, profiles);
        out
    };
    assert_eq!(merged(&trusted).payload, merged(&reading).payload);

    let mut group = c.benchmark_group("merge_quiet");
    group.sample_size(10);
    group.throughput(Throughput::Elements(stored_n));
    for (label, ctx) in [
        ("trusting_events", &trusted),
        ("reading_every_profile", &reading),
    ] {
        group.bench_with_input(
            BenchmarkId::new("20k_lines_on_1m_profiles", label),
            ctx,
            |b, ctx| b.iter(|| merged(ctx)),
        );
    }
    group.finish();
}

criterion_group!(benches, merge, merge_quiet);
criterion_main!(benches);
