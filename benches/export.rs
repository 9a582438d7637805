//! Export writing: `outbound::export::write_export` of 1M rows (1-5 segments each), stored as
//! 64 sorted run files as `compute` leaves them and merged on the way out, to a local folder,
//! plain and gzip (level 6), with the default line layout and with gen's template
//! (`<UUID><TAB><SEGMENT_LIST;separator=",">`). Each written file is MD5-hashed and fsynced,
//! as in a run. Throughput is in bytes of text written.
//!
//! Export diffing: `outbound::export::compute` over 1M stored profiles (3-6 traits and 1-5
//! segments each) in 64 partitions, for `segmill gen`'s two destinations at once (an `iter`
//! one without members yet and a `full` one), writing every partition's sorted run files.
//! Throughput is in profiles.
//!
//! Run with `cargo bench --bench export`.

mod common;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use segmill::config::{Config, Destination, ExportMode, Location, SyncType};
use segmill::idsync::index::PartBytes;
use segmill::model::{ProfileKey, Uuid};
use segmill::outbound::export::{
    DestinationView, ExportRow, Job, Runs, Sources, compute, write_export,
};
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
        cross_device: Vec::new(),
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

/// `segmill gen`'s two destinations over 200 segments: 7001 (`iter`, even segments) and 7002
/// (`full`, every third, gen's template).
const DIFF_CONFIG: &str = r#"
[paths]
inbound = "in"
state = "state"
outbound = "out"
[[data_source]]
id = 21
name = "CRM"
[[trait]]
id = 1000
data_source = 21
[[destination]]
id = 7001
sync_type = "s3"
location = "out/7001"
master_dpid = 0
mode = "iter"
segments = SEGMENTS_7001
[[destination]]
id = 7002
sync_type = "ftp"
location = "out/7002"
master_dpid = 0
mode = "full"
segments = SEGMENTS_7002
template = '<UUID><TAB><SEGMENT_LIST;separator=",">'
"#;

/// A profile before encoding: key, entries, segments.
type Stored = (Vec<u8>, Vec<segmill::profile::Entry>, Vec<u32>);

/// The stored profile partitions: 1M profiles dealt to 64 partitions by key, each sorted.
fn profile_partitions(profiles: u64) -> Vec<Vec<u8>> {
    let mut rng = common::Rng::new(23);
    let mut keyed: Vec<Vec<Stored>> = vec![Vec::new(); PARTITIONS];
    for k in 0..profiles {
        let key = ProfileKey::Uuid(Uuid(common::uuid_of(k))).encode();
        let mut entries: Vec<segmill::profile::Entry> = (0..3 + rng.below(4))
            .map(|_| segmill::profile::Entry {
                trait_id: 1000 + rng.below(5000) as u32,
                data_source: 21,
                realized_at: AS_OF - rng.below(86_400 * 30) as i64,
            })
            .collect();
        entries.sort_unstable_by_key(|e| e.trait_id);
        entries.dedup_by_key(|e| e.trait_id);
        let mut segments: Vec<u32> = (0..1 + rng.below(5))
            .map(|_| 500_000 + rng.below(200) as u32)
            .collect();
        segments.sort_unstable();
        segments.dedup();
        let part = segmill::model::partition_of(&key, PARTITIONS as u32) as usize;
        if let Some(p) = keyed.get_mut(part) {
            p.push((key, entries, segments));
        }
    }
    keyed
        .into_iter()
        .map(|mut profiles| {
            profiles.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            let mut w = segmill::codec::Writer::default();
            for (key, entries, segments) in &profiles {
                segmill::profile::encode_into(&mut w, key, Default::default(), entries, segments);
            }
            w.buf
        })
        .collect()
}

fn diff(c: &mut Criterion) {
    let profiles = common::size(1_000_000);
    let list = |step: usize| -> String {
        let ids: Vec<String> = (500_000..500_200)
            .step_by(step)
            .map(|s: u32| s.to_string())
            .collect();
        format!("[{}]", ids.join(", "))
    };
    let text = DIFF_CONFIG
        .replace("SEGMENTS_7001", &list(2))
        .replace("SEGMENTS_7002", &list(3));
    let mut text = text;
    for s in 500_000..500_200 {
        text.push_str(&format!("[[segment]]\nid = {s}\nrule = \"1000T\"\n"));
    }
    let config = Config::parse(std::path::Path::new("segmill.toml"), &text).expect("config");
    let template = Template::parse("<UUID><TAB><SEGMENT_LIST;separator=\",\">").expect("template");
    let parts = profile_partitions(profiles);
    let payload = |p: u32| -> anyhow::Result<Option<std::borrow::Cow<'_, [u8]>>> {
        Ok(parts
            .get(p as usize)
            .map(|b| std::borrow::Cow::Borrowed(b.as_slice())))
    };
    let no_members = |_: &str| -> anyhow::Result<Option<PartBytes<'_>>> { Ok(None) };
    let resolve = |_: u32, _: &[u8]| None;
    let sources = Sources {
        parts: 0..PARTITIONS as u32,
        profiles: &payload,
        members: &no_members,
        resolve: &resolve,
        deltas: false,
    };
    let stale = |_: u32| true;
    // Every partition is walked: no merge told which profiles changed.
    let unknown_changes = |_: u32| None;
    let dir = tempfile::tempdir().expect("temp dir");
    let jobs: Vec<Job<'_>> = [7001u32, 7002]
        .into_iter()
        .map(|did| {
            let runs_dir = dir.path().join(did.to_string());
            std::fs::create_dir(&runs_dir).expect("runs dir");
            Job {
                dest: &config.destinations[&did],
                template: (did == 7002).then_some(&template),
                full: false,
                last: None,
                stale: &stale,
                changes: &unknown_changes,
                runs_dir,
            }
        })
        .collect();
    let run_with = |jobs: &[Job<'_>], sources: &Sources<'_, '_>| {
        let members = std::sync::Mutex::new(std::collections::BTreeMap::new());
        let exports = compute(&config, jobs, sources, &|name, payload| {
            members
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .insert(name.to_string(), payload);
            Ok(())
        })
        .expect("compute");
        (exports, members.into_inner().expect("members"))
    };
    let run = || run_with(&jobs, &sources);
    // What the diff must give, checked once: every profile in one of a destination's
    // segments is a row of it (both are first exports).
    let decoded: Vec<Vec<u32>> = parts
        .iter()
        .flat_map(|p| segmill::profile::decode(p).expect("partition"))
        .map(|p| p.segments)
        .collect();
    let expected = |step: u32| {
        decoded
            .iter()
            .filter(|segs| segs.iter().any(|s| (s - 500_000) % step == 0))
            .count() as u64
    };
    let (exports, first_members) = run();
    for (e, step) in exports.iter().zip([2, 3]) {
        let rows = e.runs.merge(|_| Ok(())).expect("merge runs");
        assert_eq!(rows, expected(step), "destination {}", e.view.did);
    }
    drop(exports);

    // The next night's export of the same profiles: every partition is diffed against the
    // members the first one left. The `iter` destination sends nothing, the `full` one all.
    let stored_members = |name: &str| -> anyhow::Result<Option<PartBytes<'_>>> {
        Ok(first_members
            .get(name)
            .map(|m| PartBytes::Borrowed(m.as_slice())))
    };
    let again = Sources {
        parts: 0..PARTITIONS as u32,
        profiles: &payload,
        members: &stored_members,
        resolve: &resolve,
        deltas: false,
    };
    let next_jobs: Vec<Job<'_>> = jobs
        .iter()
        .map(|j| Job {
            last: Some(segmill::outbound::export::DestMeta {
                exported_generation: 1,
                fingerprint: DestinationView::new(&config, j.dest, false).fingerprint(),
                last_timestamp_ms: AS_OF * 1000,
            }),
            runs_dir: j.runs_dir.clone(),
            ..*j
        })
        .collect();
    let (exports, members) = run_with(&next_jobs, &again);
    let rows: Vec<u64> = exports
        .iter()
        .map(|e| e.runs.merge(|_| Ok(())).expect("merge runs"))
        .collect();
    assert_eq!(rows, [0, expected(3)]);
    assert_eq!(members, first_members);
    drop(exports);

    let mut group = c.benchmark_group("export_diff");
    group.sample_size(10);
    group.throughput(Throughput::Elements(profiles));
    group.bench_function("1m_profiles_2_destinations", |b| {
        b.iter(|| {
            let (exports, members) = run();
            assert_eq!(exports.len(), 2);
            assert_eq!(members.len(), 2 * PARTITIONS);
            exports
        })
    });
    group.bench_function("1m_profiles_2_destinations_next_night", |b| {
        b.iter(|| {
            let (exports, members) = run_with(&next_jobs, &again);
            assert_eq!(exports.len(), 2);
            assert_eq!(members.len(), 2 * PARTITIONS);
            exports
        })
    });
    group.finish();
}

criterion_group!(benches, export, diff);
criterion_main!(benches);
