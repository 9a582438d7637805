//! Export writing: `outbound::export::write_export` of 1M rows (1-5 segments each), stored as
//! 64 sorted run files as `compute` leaves them and merged on the way out, to a local folder,
//! plain and gzip (level 6), with the default line layout and with gen's template
//! (`<UUID><TAB><SEGMENT_LIST;separator=",">`). Each written file is MD5-hashed and fsynced,
//! as in a run.
//!
//! Run with `cargo bench --bench export`. Throughput is in bytes of text written.

mod common;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use segmill::config::{Destination, ExportMode, Location, SyncType};
use segmill::model::{ProfileKey, Uuid};
use segmill::outbound::export::{DestinationView, ExportRow, Runs, write_export};
use segmill::outbound::template::Template;
use std::hint::black_box;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Rows written (a thousandth under `cargo test`, see `common::size`).
fn row_count() -> u64 {
    common::size(1_000_000)
}
const AS_OF: i64 = 1_795_312_800;
/// Run files, one per partition as in a run at bench size.
const PARTITIONS: usize = 64;

/// The rows, dealt round-robin to the partitions (their order is the runs' business).
fn parts() -> Vec<Vec<ExportRow>> {
    let mut rng = common::Rng::new(17);
    let mut parts: Vec<Vec<ExportRow>> = vec![Vec::new(); PARTITIONS];
    for (k, slot) in (0..row_count()).zip((0..PARTITIONS).cycle()) {
        let row = {
            let uuid = Uuid(common::uuid_of(k));
            let mut segments: Vec<u32> = (0..1 + rng.below(5))
                .map(|_| 500_000 + rng.below(200) as u32)
                .collect();
            segments.sort_unstable();
            segments.dedup();
            ExportRow {
                key: ProfileKey::Uuid(uuid).encode(),
                user: uuid.to_string(),
                segments,
                removed: Vec::new(),
                traits: Vec::new(),
            }
        };
        if let Some(part) = parts.get_mut(slot) {
            part.push(row);
        }
    }
    parts
}

fn destination(dir: &std::path::Path, gzip: bool, template: Option<&str>) -> Destination {
    Destination {
        id: 7002,
        sync_type: SyncType::Ftp,
        location: Location::Local(dir.to_path_buf()),
        master_dpid: 0,
        pid_alias: None,
        mode: ExportMode::Full,
        segments: (500_000..500_200).collect(),
        gzip,
        split_bytes: 1 << 40,
        template: template.map(str::to_owned),
    }
}

fn export(c: &mut Criterion) {
    let n = row_count();
    let view = DestinationView {
        did: 7002,
        active: (500_000..500_200).collect(),
        paused: Vec::new(),
        device: None,
        mode: ExportMode::Full,
    };
    let gen_template = "<UUID><TAB><SEGMENT_LIST;separator=\",\">";
    let template = Template::parse(gen_template).expect("gen's template parses");
    let dir = tempfile::tempdir().expect("temp dir");
    let runs_dir = dir.path().join("runs");
    std::fs::create_dir(&runs_dir).expect("runs dir");
    let runs = Runs::from_rows(&runs_dir, &parts(), false).expect("run files");
    assert_eq!(runs.files().len(), PARTITIONS);

    // Text size of each layout, from one plain write: the group's throughput.
    let text_bytes = |tpl: Option<&Template>, text: Option<&str>| -> u64 {
        let out = dir.path().join("size");
        let _ = std::fs::remove_dir_all(&out);
        let dest = destination(&out, false, text);
        let summary =
            write_export(&out, &dest, &view, tpl, &runs, AS_OF, AS_OF * 1000).expect("export");
        assert_eq!(summary.rows, n);
        let data = out.join(summary.files.first().expect("one data file"));
        let text = std::fs::read(&data).expect("read export");
        assert_eq!(memchr::memchr_iter(b'\n', &text).count() as u64, n);
        text.len() as u64
    };
    let default_bytes = text_bytes(None, None);
    let template_bytes = text_bytes(Some(&template), Some(gen_template));

    let mut group = c.benchmark_group("export_1m_rows");
    group.sample_size(10);
    for (layout, tpl, text, bytes) in [
        ("default_line", None, None, default_bytes),
        (
            "template",
            Some(&template),
            Some(gen_template),
            template_bytes,
        ),
    ] {
        group.throughput(Throughput::Bytes(bytes));
        for gzip in [false, true] {
            let out = dir.path().join(format!("{layout}-{gzip}"));
            let dest = destination(&out, gzip, text);
            let name = if gzip { "gzip" } else { "plain" };
            group.bench_function(BenchmarkId::new(layout, name), |b| {
                b.iter(|| {
                    let summary = write_export(
                        &out,
                        &dest,
                        &view,
                        tpl,
                        black_box(&runs),
                        AS_OF,
                        AS_OF * 1000,
                    )
                    .expect("export");
                    assert_eq!(summary.rows, n);
                    assert_eq!(summary.files.len(), 1);
                    summary
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, export);
criterion_main!(benches);
