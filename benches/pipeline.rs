//! Hot-path benchmarks: the chunk kernel (parse + validate + resolve + bucket), next to its
//! floor (counting the same bytes' newlines with memchr). Run with `cargo bench --bench pipeline`.
//!
//! `process_chunk/aam_uuid_lines`: AAM-UUID lines, no ID lookup. `process_chunk/customer_lines`:
//! customer-ID lines resolved through a 1M-key ID index (90% synced), as in the nightly job.

mod common;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use segmill::idsync::index::IdIndex;
use segmill::ingest::{FileCtx, IdKind, process_chunk};
use segmill::model::TraitId;
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
    let owners: ahash::AHashMap<TraitId, u32> = (1000..1500).map(|t| (t, 21)).collect();
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

criterion_group!(benches, kernel, customer_kernel);
criterion_main!(benches);
