//! The in-memory ID index at 20M keys: build (from the stored ID-sync tables, as `segmill run`
//! does) apart from lookup (a batch of 1M probes, 90% hits, 10% misses, on 1 and 2 threads),
//! one by one and in prefetched batches of 16 as the parser does.
//!
//! Run with `cargo bench --bench idindex`. Needs about 8 GB of memory at 20M keys; set
//! `SEGMILL_BENCH_KEYS` for another size. Setup (generating the keys and `store::apply`) takes
//! tens of seconds and is printed, not measured by criterion.

mod common;

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use rayon::prelude::*;
use segmill::idsync::index::IdIndex;
use std::hint::black_box;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn keys() -> u64 {
    std::env::var("SEGMILL_BENCH_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| common::size(20_000_000))
}

/// Probe IDs in one arena: `ends[i]` closes probe `i`. Returns the expected hit count.
fn probes(ids: u64) -> (Vec<u8>, Vec<usize>, u64) {
    let probes = common::size(1_000_000);
    let mut rng = common::Rng::new(99);
    let mut arena = Vec::with_capacity(probes as usize * 31);
    let mut ends = Vec::with_capacity(probes as usize);
    let mut hits = 0;
    for _ in 0..probes {
        let k = if rng.below(10) < 9 {
            hits += 1;
            rng.below(ids)
        } else {
            ids + rng.below(ids)
        };
        common::push_customer_id(&mut arena, k);
        ends.push(arena.len());
    }
    (arena, ends, hits)
}

fn count_hits(index: &IdIndex, arena: &[u8], ends: &[usize], start: usize) -> u64 {
    let mut from = start;
    let mut hits = 0;
    for &end in ends {
        if index.lookup(common::DPID, &arena[from..end]).is_some() {
            hits += 1;
        }
        from = end;
    }
    hits
}

/// [`count_hits`] the way the parser does it: hash a batch of 16 IDs and prefetch their slots,
/// then look them up.
fn count_hits_batched(index: &IdIndex, arena: &[u8], ends: &[usize], start: usize) -> u64 {
    let mut from = start;
    let mut hits = 0;
    let mut hashes = [0u128; 16];
    for batch in ends.chunks(16) {
        let mut f = from;
        for (h, &end) in hashes.iter_mut().zip(batch) {
            *h = IdIndex::hash(common::DPID, &arena[f..end]);
            index.prefetch(common::DPID, *h);
            f = end;
        }
        for h in &hashes[..batch.len()] {
            if index.lookup_hashed(common::DPID, *h).is_some() {
                hits += 1;
            }
        }
        from = f;
    }
    hits
}

fn index(c: &mut Criterion) {
    let ids = keys();
    let t = Instant::now();
    let parts = common::idsync_parts(ids);
    let bytes: usize = parts.values().map(Vec::len).sum();
    eprintln!(
        "setup: {ids} ID-sync rows applied into {} partitions ({:.0} MB) in {:.1} s",
        parts.len(),
        bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );

    let mut group = c.benchmark_group("index");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(ids));
    group.bench_function(format!("build/{ids}"), |b| {
        b.iter(|| {
            let index = common::build_index(black_box(&parts));
            assert_eq!(index.len() as u64, ids);
            index
        })
    });
    group.finish();

    let index = common::build_index(&parts);
    drop(parts);
    let (arena, ends, expected) = probes(ids);

    let mut group = c.benchmark_group("index");
    group.throughput(Throughput::Elements(ends.len() as u64));
    group.sample_size(20);
    group.bench_function(format!("lookup/{ids}/1_thread"), |b| {
        b.iter(|| {
            let hits = count_hits(&index, black_box(&arena), &ends, 0);
            assert_eq!(hits, expected);
            hits
        })
    });
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("a pool of 2 threads");
    // Two halves, each walked by one thread.
    let half = ends.len() / 2;
    let (first, second) = ends.split_at(half);
    let second_start = first.last().copied().unwrap_or(0);
    for (name, count) in [
        (
            "lookup",
            count_hits as fn(&IdIndex, &[u8], &[usize], usize) -> u64,
        ),
        ("lookup_batched", count_hits_batched),
    ] {
        if name == "lookup_batched" {
            group.bench_function(format!("{name}/{ids}/1_thread"), |b| {
                b.iter(|| {
                    let hits = count(&index, black_box(&arena), &ends, 0);
                    assert_eq!(hits, expected);
                    hits
                })
            });
        }
        group.bench_function(format!("{name}/{ids}/2_threads"), |b| {
            b.iter(|| {
                let hits: u64 = pool.install(|| {
                    [(first, 0), (second, second_start)]
                        .par_iter()
                        .map(|&(ends, start)| count(&index, black_box(&arena), ends, start))
                        .sum()
                });
                assert_eq!(hits, expected);
                hits
            })
        });
    }
    group.finish();
}

criterion_group!(benches, index);
criterion_main!(benches);
