//! Hot-path benchmarks: the chunk kernel (parse + validate + resolve + bucket). Run with `cargo bench --bench pipeline`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use segmill::idsync::index::IdIndex;
use segmill::ingest::{FileCtx, IdKind, process_chunk};
use segmill::model::TraitId;
use std::hint::black_box;

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
            index: &index,
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

criterion_group!(benches, kernel);
criterion_main!(benches);
