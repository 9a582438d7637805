//! Segment evaluation at 20,000 segments (AAM's largest catalogs) over 4,500 traits:
//! `SegmentRules::candidates` + `evaluate` for profiles whose traits changed (the nightly path),
//! and every segment for a profile (the path after a definition change). Results are checked
//! against a naive evaluator of the same rule shapes.
//!
//! Run with `cargo bench --bench segments`.

mod common;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use segmill::rules::segment_rule::SegmentRules;
use std::hint::black_box;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SEGMENTS: u32 = 20_000;
const AS_OF: i64 = 1_795_312_800;
const DAY: i64 = 86_400;

/// The rule shapes the bench uses, with a naive evaluator.
enum Shape {
    And(u32, u32),
    OrAndNot(u32, u32, u32),
    Or3(u32, u32, u32),
    One(u32),
    AndOrAndNot(u32, u32, u32, u32),
    /// `FREQUENCY([a,b] <= 30D) >= 1`.
    Recent(u32, u32),
}

impl Shape {
    fn text(&self) -> String {
        match *self {
            Shape::And(a, b) => format!("{a}T AND {b}T"),
            Shape::OrAndNot(a, b, c) => format!("({a}T OR {b}T) AND NOT {c}T"),
            Shape::Or3(a, b, c) => format!("{a}T OR {b}T OR {c}T"),
            Shape::One(a) => format!("{a}T"),
            Shape::AndOrAndNot(a, b, c, d) => format!("({a}T AND {b}T) OR ({c}T AND NOT {d}T)"),
            Shape::Recent(a, b) => format!("FREQUENCY([{a}T,{b}T] <= 30D) >= 1"),
        }
    }

    fn traits(&self) -> Vec<u32> {
        match *self {
            Shape::And(a, b) | Shape::Recent(a, b) => vec![a, b],
            Shape::OrAndNot(a, b, c) | Shape::Or3(a, b, c) => vec![a, b, c],
            Shape::One(a) => vec![a],
            Shape::AndOrAndNot(a, b, c, d) => vec![a, b, c, d],
        }
    }

    fn holds(&self, traits: &[(u32, i64)]) -> bool {
        let has = |t: u32| traits.binary_search_by_key(&t, |e| e.0).is_ok();
        let recent = |t: u32| {
            traits
                .binary_search_by_key(&t, |e| e.0)
                .is_ok_and(|i| traits[i].1 >= AS_OF - 30 * DAY)
        };
        match *self {
            Shape::And(a, b) => has(a) && has(b),
            Shape::OrAndNot(a, b, c) => (has(a) || has(b)) && !has(c),
            Shape::Or3(a, b, c) => has(a) || has(b) || has(c),
            Shape::One(a) => has(a),
            Shape::AndOrAndNot(a, b, c, d) => (has(a) && has(b)) || (has(c) && !has(d)),
            Shape::Recent(a, b) => recent(a) || recent(b),
        }
    }
}

fn shapes(rng: &mut common::Rng) -> Vec<Shape> {
    (0..SEGMENTS)
        .map(|i| {
            // Popular (low) traits more often, as in `segmill gen`, so segments have members.
            let mut t = || {
                let bound = rng.below(u64::from(common::TRAITS));
                common::FIRST_TRAIT + rng.below(bound + 1) as u32
            };
            match i % 6 {
                0 => Shape::And(t(), t()),
                1 => Shape::OrAndNot(t(), t(), t()),
                2 => Shape::Or3(t(), t(), t()),
                3 => Shape::Recent(t(), t()),
                4 => Shape::One(t()),
                _ => Shape::AndOrAndNot(t(), t(), t(), t()),
            }
        })
        .collect()
}

/// A profile's traits (sorted, unique; 80% realized yesterday, 20% 100 days ago) and 3 of them
/// as the traits that changed tonight.
fn profile(rng: &mut common::Rng) -> (Vec<(u32, i64)>, Vec<u32>) {
    let n = 5 + rng.below(36);
    let mut traits: Vec<(u32, i64)> = (0..n)
        .map(|_| {
            let bound = rng.below(u64::from(common::TRAITS));
            let t = common::FIRST_TRAIT + rng.below(bound + 1) as u32;
            let at = if rng.below(10) < 8 {
                AS_OF - DAY
            } else {
                AS_OF - 100 * DAY
            };
            (t, at)
        })
        .collect();
    traits.sort_unstable_by_key(|e| e.0);
    traits.dedup_by_key(|e| e.0);
    let changed = (0..3)
        .map(|_| traits[rng.below(traits.len() as u64) as usize].0)
        .collect();
    (traits, changed)
}

fn segments(c: &mut Criterion) {
    let mut rng = common::Rng::new(3);
    let shapes = shapes(&mut rng);
    let texts: Vec<String> = shapes.iter().map(Shape::text).collect();
    let rules = SegmentRules::compile((0..SEGMENTS).map(|i| (1 + i, texts[i as usize].as_str())))
        .expect("valid rules");
    let all_ids: Vec<u32> = (1..=SEGMENTS).collect();
    assert_eq!(rules.ids(), all_ids.as_slice());

    // The nightly path: candidates of 3 changed traits, then evaluate.
    let changed_profiles = common::size(10_000) as usize;
    let profiles: Vec<_> = (0..changed_profiles).map(|_| profile(&mut rng)).collect();
    let expected_changed: u64 = profiles
        .iter()
        .map(|(traits, changed)| {
            shapes
                .iter()
                .filter(|s| s.traits().iter().any(|t| changed.contains(t)) && s.holds(traits))
                .count() as u64
        })
        .sum();
    let mut group = c.benchmark_group("segments_20000");
    group.throughput(Throughput::Elements(changed_profiles as u64));
    group.bench_function("changed_profiles_3_traits", |b| {
        let (mut candidates, mut out) = (Vec::new(), Vec::new());
        b.iter(|| {
            let mut qualified = 0u64;
            for (traits, changed) in black_box(&profiles) {
                rules.candidates(changed, false, &mut candidates);
                out.clear();
                rules.evaluate(&candidates, traits, AS_OF, &mut out);
                qualified += out.len() as u64;
            }
            assert_eq!(qualified, expected_changed);
            qualified
        })
    });

    // After a definition change: every segment for every profile.
    let all_profiles = if common::measuring() { 100 } else { 2 };
    let expected_all: u64 = profiles[..all_profiles]
        .iter()
        .map(|(traits, _)| shapes.iter().filter(|s| s.holds(traits)).count() as u64)
        .sum();
    group.throughput(Throughput::Elements(
        all_profiles as u64 * u64::from(SEGMENTS),
    ));
    group.bench_function("all_segments_per_profile", |b| {
        let mut out = Vec::new();
        b.iter(|| {
            let mut qualified = 0u64;
            for (traits, _) in black_box(&profiles[..all_profiles]) {
                out.clear();
                rules.evaluate(&all_ids, traits, AS_OF, &mut out);
                qualified += out.len() as u64;
            }
            assert_eq!(qualified, expected_all);
            qualified
        })
    });
    group.finish();
}

criterion_group!(benches, segments);
criterion_main!(benches);
