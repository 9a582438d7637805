//! The read path: `inbound::read::read_chunks` over a plain (memory-mapped) file and over the
//! same text gzipped (inflated on the decoder thread, parsed on the pool), with a trivial
//! per-chunk function (newline count) and with the real kernel (`process_chunk` against a
//! 1M-key ID index). The floor for `.gz` is `inflate_only`: the single-core inflate rate.
//! Everything runs on a 2-thread pool, as `segmill run --threads 2`.
//!
//! Run with `cargo bench --bench read`. Throughput is in bytes of decompressed text.

mod common;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use segmill::inbound::read::{DEFAULT_CHUNK_BYTES, read_chunks};
use segmill::ingest::{FileCtx, IdKind, process_chunk};
use std::hint::black_box;
use std::io::{Read, Write};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn read(c: &mut Criterion) {
    // About 65 MB of text against a 1M-key index.
    let (ids, lines) = (common::size(1_000_000), common::size(800_000));
    let (text, info) = common::customer_lines(lines, ids, 21);
    let dir = tempfile::tempdir().expect("temp dir");
    let plain = dir.path().join("ftp_dpm_21_1795226400.sync");
    let gz = dir.path().join("ftp_dpm_21_1795226400.sync.gz");
    std::fs::write(&plain, &text).expect("write plain file");
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).expect("create gz file"),
        flate2::Compression::default(),
    );
    enc.write_all(&text).expect("write gz file");
    enc.finish().expect("finish gz file");
    let gz_bytes = std::fs::metadata(&gz).expect("gz size").len();
    eprintln!(
        "setup: {} MB of text, {} MB gzipped (level 6)",
        text.len() / 1_000_000,
        gz_bytes / 1_000_000
    );

    let index = common::build_index(&common::idsync_parts(ids));
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
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("a pool of 2 threads");

    let mut group = c.benchmark_group("read");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.bench_function("gzip/inflate_only", |b| {
        let mut buf = vec![0u8; 128 * 1024];
        b.iter(|| {
            let file = std::fs::File::open(&gz).expect("open gz");
            let mut dec = flate2::read::MultiGzDecoder::new(std::io::BufReader::with_capacity(
                128 * 1024,
                file,
            ));
            let mut total = 0usize;
            loop {
                let n = dec.read(&mut buf).expect("inflate");
                if n == 0 {
                    break;
                }
                total += n;
            }
            assert_eq!(total, text.len());
            total
        })
    });
    for (name, path, gzip) in [("plain", &plain, false), ("gzip", &gz, true)] {
        group.bench_function(format!("{name}/count_lines"), |b| {
            b.iter(|| {
                let outcome = pool
                    .install(|| {
                        read_chunks(black_box(path), gzip, DEFAULT_CHUNK_BYTES, |c| {
                            memchr::memchr_iter(b'\n', c.bytes).count() as u64
                        })
                    })
                    .expect("read");
                assert_eq!(outcome.results.iter().sum::<u64>(), info.lines);
                assert_eq!(outcome.bytes, text.len() as u64);
                outcome.lines
            })
        });
        group.bench_function(format!("{name}/process_chunk"), |b| {
            b.iter(|| {
                let outcome = pool
                    .install(|| {
                        read_chunks(black_box(path), gzip, DEFAULT_CHUNK_BYTES, |c| {
                            let out = process_chunk(c.bytes, c.first_line, &ctx);
                            (
                                out.records,
                                out.parts.iter().map(|p| p.ops.len() as u64).sum::<u64>(),
                            )
                        })
                    })
                    .expect("read");
                let records: u64 = outcome.results.iter().map(|r| r.0).sum();
                let ops: u64 = outcome.results.iter().map(|r| r.1).sum();
                assert_eq!((records, ops), (info.lines, info.synced));
                outcome.lines
            })
        });
    }
    group.finish();
}

criterion_group!(benches, read);
criterion_main!(benches);
