//! Destination exports (CONTRACT §6): what each destination receives, computed per partition
//! against what it last received, and written as AAM-named files with a `.info` control file
//! written last.
//!
//! State: `members/<DID>/part-XXXX` holds, per profile, the segments the destination was last
//! sent (restricted to its segments). An `iter` export diffs the current memberships against
//! it; only partitions whose profiles changed since the destination's last export are read,
//! unless the destination is new or its segment list changed (then every partition is, so
//! its first `iter` is a full list).

use super::info::{InfoFile, write_info};
use super::names::{OutboundName, default_line, mode_str, sync_type_str};
use super::template::{Batch, Row, SegmentRef, TRAIT_TYPE_ONBOARDED, Template, TraitRef};
use crate::codec::{Reader, Truncated, Writer};
use crate::config::{Config, Destination, ExportMode};
use crate::model::{ProfileKey, Timestamp, device_format};
use crate::profile::Profile;
use anyhow::{Context as _, anyhow};
use md5::{Digest, Md5};
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// One stored member: a profile key and the segments the destination last received for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member<'a> {
    pub key: &'a [u8],
    pub segments: Vec<u32>,
}

pub fn members_part_name(did: u32, part: u32) -> String {
    format!("members/{did}/part-{part:04}")
}

pub fn decode_members(payload: &[u8]) -> Result<Vec<Member<'_>>, Truncated> {
    let mut r = Reader::new(payload);
    let mut out = Vec::new();
    while !r.is_empty() {
        let key = r.bytes()?;
        let n = r.u32()? as usize;
        let mut segments = Vec::with_capacity(n.min(payload.len() / 4));
        for _ in 0..n {
            segments.push(r.u32()?);
        }
        out.push(Member { key, segments });
    }
    Ok(out)
}

/// What a destination takes from profiles: which segments, which ID space.
pub struct DestinationView {
    pub did: u32,
    /// Active (not paused) segments of the destination, sorted.
    pub active: Vec<u32>,
    /// Paused segments of the destination, sorted: members are kept, nothing is sent.
    pub paused: Vec<u32>,
    /// `Some(dpid)` when the destination takes device IDs of that global device source;
    /// `None` for AAM UUIDs.
    pub device: Option<u32>,
    pub mode: ExportMode,
}

impl DestinationView {
    pub fn new(config: &Config, dest: &Destination, full: bool) -> DestinationView {
        let mut active = Vec::new();
        let mut paused = Vec::new();
        for id in &dest.segments {
            match config.segments.get(id) {
                Some(s) if s.paused => paused.push(*id),
                Some(_) => active.push(*id),
                None => {}
            }
        }
        active.sort_unstable();
        paused.sort_unstable();
        let device = device_format(dest.master_dpid).map(|_| dest.master_dpid);
        let mode = if full { ExportMode::Full } else { dest.mode };
        DestinationView {
            did: dest.id,
            active,
            paused,
            device,
            mode,
        }
    }

    /// Changes whenever what the destination selects changes: its segments, their paused
    /// state, or its ID space. The members store is then diffed in every partition.
    pub fn fingerprint(&self) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for s in &self.active {
            h.update(&s.to_le_bytes());
        }
        h.update(b"|paused|");
        for s in &self.paused {
            h.update(&s.to_le_bytes());
        }
        h.update(&self.device.unwrap_or(0).to_le_bytes());
        h.digest()
    }

    /// The export key (for sorting and merging) and user ID of a profile, if this destination
    /// takes its ID space. Cross-device customer-ID profiles go out under the AAM UUID their ID
    /// is synced to, and not while unsynced.
    fn user_id(&self, key: &[u8], resolve: &Resolver<'_>) -> Option<(Vec<u8>, String)> {
        match (ProfileKey::decode(key)?, self.device) {
            (ProfileKey::Uuid(u), None) => Some((key.to_vec(), u.to_string())),
            (ProfileKey::Device(d, id), Some(want)) if d == want => {
                String::from_utf8(id.into_vec())
                    .ok()
                    .map(|user| (key.to_vec(), user))
            }
            (ProfileKey::Customer(d, id), None) => {
                let u = resolve(d, &id)?;
                Some((ProfileKey::Uuid(u).encode(), u.to_string()))
            }
            _ => None,
        }
    }
}

/// Resolves a cross-device customer ID to the AAM UUID it is synced to.
pub type Resolver<'a> = dyn Fn(crate::model::Dpid, &[u8]) -> Option<crate::model::Uuid> + Sync + 'a;

/// One row of an export, before rendering.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportRow {
    /// Sort key: the exported user's profile key (AAM UUIDs sort numerically, device IDs by
    /// bytes).
    pub key: Vec<u8>,
    pub user: String,
    pub segments: Vec<u32>,
    pub removed: Vec<u32>,
    /// (trait, realized_at) of the profile, for `TRAIT_LIST`.
    pub traits: Vec<(u32, Timestamp)>,
}

fn intersect(a: &[u32], b: &[u32]) -> Vec<u32> {
    a.iter()
        .copied()
        .filter(|x| b.binary_search(x).is_ok())
        .collect()
}

/// Diffs one partition's profiles against the destination's members. Returns the rows to
/// export and the new members payload. Pure.
pub fn diff_partition(
    profiles: &[Profile<'_>],
    members: &[Member<'_>],
    view: &DestinationView,
    resolve: &Resolver<'_>,
) -> (Vec<ExportRow>, Vec<u8>) {
    let mut rows = Vec::new();
    let mut w = Writer::default();
    let (mut i, mut j) = (0, 0);
    while i < profiles.len() || j < members.len() {
        let pk = profiles.get(i).map(|p| p.key);
        let mk = members.get(j).map(|m| m.key);
        let (key, profile, member) = match (pk, mk) {
            (Some(a), Some(b)) if a == b => {
                i += 1;
                j += 1;
                (a, Some(&profiles[i - 1]), Some(&members[j - 1]))
            }
            (Some(a), Some(b)) if a < b => {
                i += 1;
                (a, Some(&profiles[i - 1]), None)
            }
            (Some(a), None) => {
                i += 1;
                (a, Some(&profiles[i - 1]), None)
            }
            (_, Some(b)) => {
                j += 1;
                (b, None, Some(&members[j - 1]))
            }
            (None, None) => break,
        };
        let Some((export_key, user)) = view.user_id(key, resolve) else {
            continue;
        };
        let current = profile
            .map(|p| intersect(&p.segments, &view.active))
            .unwrap_or_default();
        let old = member.map_or(&[][..], |m| m.segments.as_slice());
        let old_active = intersect(old, &view.active);
        let kept_paused = intersect(old, &view.paused);
        let emit = match view.mode {
            ExportMode::Iter => current != old_active,
            ExportMode::Full => !current.is_empty(),
        };
        if emit {
            let removed = match view.mode {
                ExportMode::Iter => old_active
                    .iter()
                    .copied()
                    .filter(|s| current.binary_search(s).is_err())
                    .collect(),
                ExportMode::Full => Vec::new(),
            };
            let traits = profile
                .map(|p| {
                    p.entries
                        .iter()
                        .map(|e| (e.trait_id, e.realized_at))
                        .collect()
                })
                .unwrap_or_default();
            rows.push(ExportRow {
                key: export_key,
                user,
                segments: current.clone(),
                removed,
                traits,
            });
        }
        let mut new_member = current;
        new_member.extend(kept_paused);
        new_member.sort_unstable();
        if !new_member.is_empty() {
            w.bytes(key);
            w.u32(new_member.len() as u32);
            for s in &new_member {
                w.u32(*s);
            }
        }
    }
    (rows, w.buf)
}

/// One file written for a destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrittenFile {
    pub name: String,
    pub bytes: u64,
    pub lines: u64,
    pub md5: String,
}

/// What an export wrote.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ExportSummary {
    pub destination: u32,
    pub mode: &'static str,
    pub rows: u64,
    pub files: Vec<String>,
    pub info: String,
}

/// Text handed to the (gzip) writer at once.
const BLOCK_BYTES: usize = 128 * 1024;

/// A data file being written: text in, (optionally gzipped) bytes counted and hashed on the
/// way to a temporary file.
struct PartWriter {
    temp: PathBuf,
    sink: Sink,
    block: Vec<u8>,
    lines: u64,
    text_bytes: u64,
}

enum Sink {
    Plain(Hashing),
    Gzip(Box<flate2::write::GzEncoder<Hashing>>),
}

/// Counts and MD5-hashes the bytes that reach the file.
struct Hashing {
    file: std::io::BufWriter<std::fs::File>,
    md5: Md5,
    bytes: u64,
}

impl std::io::Write for Hashing {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.md5.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl PartWriter {
    fn create(temp: PathBuf, gzip: bool) -> anyhow::Result<PartWriter> {
        let file = std::fs::File::create(&temp)
            .with_context(|| format!("cannot create {}", temp.display()))?;
        let hashing = Hashing {
            file: std::io::BufWriter::with_capacity(256 * 1024, file),
            md5: Md5::new(),
            bytes: 0,
        };
        let sink = if gzip {
            // mtime 0 and no file name: the same rows give the same bytes.
            Sink::Gzip(Box::new(
                flate2::GzBuilder::new()
                    .mtime(0)
                    .write(hashing, flate2::Compression::new(6)),
            ))
        } else {
            Sink::Plain(hashing)
        };
        Ok(PartWriter {
            temp,
            sink,
            block: Vec::with_capacity(BLOCK_BYTES + 4096),
            lines: 0,
            text_bytes: 0,
        })
    }

    fn write_line(&mut self, line: &[u8]) -> anyhow::Result<()> {
        // Lines go to the encoder in large blocks: one deflate call per block, not per line.
        self.block.extend_from_slice(line);
        self.text_bytes += line.len() as u64;
        self.lines += 1;
        if self.block.len() >= BLOCK_BYTES {
            self.flush_block()?;
        }
        Ok(())
    }

    fn flush_block(&mut self) -> anyhow::Result<()> {
        let result = match &mut self.sink {
            Sink::Plain(h) => h.write_all(&self.block),
            Sink::Gzip(g) => g.write_all(&self.block),
        };
        result.with_context(|| format!("cannot write {}", self.temp.display()))?;
        self.block.clear();
        Ok(())
    }

    /// Finishes the stream, makes the file durable, and returns (temp path, bytes, lines, md5).
    fn finish(mut self) -> anyhow::Result<(PathBuf, u64, u64, String)> {
        self.flush_block()?;
        let temp = self.temp;
        let hashing = match self.sink {
            Sink::Plain(h) => h,
            Sink::Gzip(g) => g
                .finish()
                .with_context(|| format!("cannot write {}", temp.display()))?,
        };
        let Hashing { file, md5, bytes } = hashing;
        let file = file
            .into_inner()
            .map_err(|e| anyhow!("cannot write {}: {}", temp.display(), e.error()))?;
        file.sync_all()
            .with_context(|| format!("cannot fsync {}", temp.display()))?;
        let md5_hex: String = md5.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Ok((temp, bytes, self.lines, md5_hex))
    }
}

/// Writes `rows` (sorted) for `dest` into `dir`: data files split at `split_bytes` of text
/// (never inside a line), gzipped when configured, each written under a temporary name and
/// renamed; then the `.info` control file, atomically, last.
pub fn write_export(
    dir: &Path,
    dest: &Destination,
    view: &DestinationView,
    template: Option<&Template>,
    rows: &[ExportRow],
    as_of: Timestamp,
    timestamp_ms: i64,
) -> anyhow::Result<ExportSummary> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create destination folder {}", dir.display()))?;
    // Leftovers of an export that was killed before its renames.
    let prefix = format!(".segmill-export-{}-", dest.id);
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(&prefix) && name.ends_with(".partial") {
                std::fs::remove_file(e.path())
                    .with_context(|| format!("cannot remove {}", e.path().display()))?;
            }
        }
    }
    let master_dpid = (dest.master_dpid != 0).then_some(dest.master_dpid);
    let sync_type = sync_type_str(dest.sync_type);
    let name = |part: Option<u32>| OutboundName {
        sync_type,
        did: dest.id,
        master_dpid,
        pid_alias: dest.pid_alias.as_deref(),
        mode: view.mode,
        timestamp_ms,
        part,
        gzip: dest.gzip,
    };
    let batch = Batch {
        order_id: dest.id,
        dpid: dest.master_dpid,
        master_dpid,
        pid: 0,
        pid_alias: dest.pid_alias.as_deref(),
        sync_mode: mode_str(view.mode),
        sync_type,
        timestamp_s: as_of,
    };
    let mut parts: Vec<(PathBuf, u64, u64, String)> = Vec::new();
    let mut current: Option<PartWriter> = None;
    let mut line = Vec::with_capacity(256);
    let mut segs: Vec<SegmentRef> = Vec::new();
    let mut removed: Vec<SegmentRef> = Vec::new();
    let mut traits: Vec<TraitRef> = Vec::new();
    let ms = timestamp_ms;
    let temp = |index: usize| dir.join(format!(".segmill-export-{}-{ms}-{index}.partial", dest.id));
    for row in rows {
        line.clear();
        match template {
            Some(t) => {
                segs.clear();
                segs.extend(row.segments.iter().map(|&sid| SegmentRef {
                    sid,
                    last_update_ms: ms,
                    last_realization_ms: ms,
                }));
                removed.clear();
                removed.extend(row.removed.iter().map(|&sid| SegmentRef {
                    sid,
                    last_update_ms: ms,
                    last_realization_ms: ms,
                }));
                traits.clear();
                traits.extend(row.traits.iter().map(|&(id, at)| TraitRef {
                    id,
                    last_realized_ms: at.saturating_mul(1000),
                    kind: TRAIT_TYPE_ONBOARDED,
                }));
                let r = Row {
                    uuid: &row.user,
                    dp_uuids: &[],
                    segments: &segs,
                    removed: &removed,
                    traits: &traits,
                };
                t.render(&batch, &r, &mut line);
            }
            None => default_line(&mut line, &row.user, &row.segments, &row.removed, view.mode),
        }
        line.push(b'\n');
        let full = current.as_ref().is_some_and(|c| {
            c.text_bytes > 0 && c.text_bytes + line.len() as u64 > dest.split_bytes
        });
        if full && let Some(w) = current.take() {
            parts.push(w.finish()?);
        }
        let writer = match current.as_mut() {
            Some(w) => w,
            None => current.insert(PartWriter::create(temp(parts.len()), dest.gzip)?),
        };
        writer.write_line(&line)?;
    }
    // An export with no rows still writes one (empty) file, so consumers see every batch.
    if current.is_none() && parts.is_empty() {
        current = Some(PartWriter::create(temp(0), dest.gzip)?);
    }
    if let Some(w) = current.take() {
        parts.push(w.finish()?);
    }
    crate::failpoint::hit("mid-export").context("mid-export")?;
    let split = parts.len() > 1;
    let mut written = Vec::new();
    for (index, (temp, bytes, lines, md5_hex)) in parts.into_iter().enumerate() {
        let part = split.then_some(index as u32 + 1);
        let file_name = name(part).file_name().map_err(|e| anyhow!("{e}"))?;
        std::fs::rename(&temp, dir.join(&file_name))
            .with_context(|| format!("cannot rename {} to {file_name}", temp.display()))?;
        written.push(WrittenFile {
            name: file_name,
            bytes,
            lines,
            md5: md5_hex,
        });
    }
    crate::state::sync_dir(dir)?;
    let infos: Vec<InfoFile<'_>> = written
        .iter()
        .map(|f| InfoFile {
            name: &f.name,
            byte_size: f.bytes,
            line_count: f.lines,
            md5_hex: &f.md5,
        })
        .collect();
    let total = name(None).file_name().map_err(|e| anyhow!("{e}"))?;
    let mut info = Vec::new();
    write_info(&mut info, &total, &infos).map_err(|e| anyhow!("{e}"))?;
    let info_name = name(None).info_name().map_err(|e| anyhow!("{e}"))?;
    crate::state::write_atomic(&dir.join(&info_name), &info)?;
    Ok(ExportSummary {
        destination: dest.id,
        mode: mode_str(view.mode),
        rows: rows.len() as u64,
        files: written.into_iter().map(|f| f.name).collect(),
        info: info_name,
    })
}

/// What the state remembers of a destination's last export.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DestMeta {
    /// The generation that committed the export.
    pub exported_generation: u64,
    /// [`DestinationView::fingerprint`] at that export.
    pub fingerprint: u64,
    /// The batch timestamp (Unix ms) of that export; the next batch's is later, so names never
    /// repeat even when two exports share an as-of time.
    #[serde(default)]
    pub last_timestamp_ms: i64,
}

/// The timestamp of a destination's next batch: the as-of time in milliseconds, moved past the
/// previous batch's if needed.
pub fn batch_timestamp_ms(as_of: Timestamp, last: Option<DestMeta>) -> i64 {
    let ms = as_of.saturating_mul(1000);
    match last {
        Some(m) if m.last_timestamp_ms >= ms => m.last_timestamp_ms + 1,
        _ => ms,
    }
}

/// A destination's export, computed and not yet written.
pub struct DestExport {
    pub view: DestinationView,
    /// Rows sorted by user.
    pub rows: Vec<ExportRow>,
    /// New members payloads of the partitions that were diffed.
    pub members: std::collections::BTreeMap<u32, Vec<u8>>,
}

/// A source of partition payloads: `Ok(None)` when the partition has no file.
pub type PayloadSource<'a> =
    dyn Fn(u32) -> anyhow::Result<Option<std::borrow::Cow<'a, [u8]>>> + Sync + 'a;

/// Where an export reads the state from.
pub struct Sources<'a, 'p> {
    pub partitions: u32,
    /// Whether partition `p`'s profiles changed since the destination's last export.
    pub stale: &'a (dyn Fn(u32) -> bool + Sync),
    /// Profile partition payloads as this run leaves them.
    pub profiles: &'a PayloadSource<'p>,
    /// The previous generation's files by name (members of the last export).
    pub members: &'a (dyn Fn(&str) -> anyhow::Result<Option<Vec<u8>>> + Sync),
    pub resolve: &'a Resolver<'p>,
}

/// One diffed partition: its number, rows and new members payload.
type PartDiff = (u32, Vec<ExportRow>, Vec<u8>);

/// Computes `dest`'s export. Only stale partitions are diffed, unless the destination is new,
/// its selection changed, or the export is `full`: then every partition is.
pub fn compute(
    config: &Config,
    dest: &Destination,
    full: bool,
    last: Option<DestMeta>,
    src: &Sources<'_, '_>,
) -> anyhow::Result<DestExport> {
    use rayon::prelude::*;
    let Sources {
        partitions,
        stale,
        profiles,
        members,
        resolve,
    } = *src;
    let view = DestinationView::new(config, dest, full);
    let everything =
        view.mode == ExportMode::Full || last.is_none_or(|m| m.fingerprint != view.fingerprint());
    let todo: Vec<u32> = (0..partitions)
        .filter(|&p| everything || stale(p))
        .collect();
    let results: Vec<anyhow::Result<PartDiff>> = todo
        .par_iter()
        .map(|&p| {
            let payload = profiles(p)?;
            let stored = match payload.as_deref() {
                Some(bytes) => crate::profile::decode(bytes)
                    .map_err(|e| anyhow!("profile partition {p}: {e}"))?,
                None => Vec::new(),
            };
            let name = members_part_name(dest.id, p);
            let old = members(&name)?;
            let old_members = match old.as_deref() {
                Some(bytes) => decode_members(bytes).map_err(|e| anyhow!("{name}: {e}"))?,
                None => Vec::new(),
            };
            let (rows, new_members) = diff_partition(&stored, &old_members, &view, resolve);
            Ok((p, rows, new_members))
        })
        .collect();
    let mut rows = Vec::new();
    let mut new_members = std::collections::BTreeMap::new();
    for r in results {
        let (p, mut part_rows, payload) = r?;
        rows.append(&mut part_rows);
        new_members.insert(p, payload);
    }
    // Partitions interleave users: one sort puts them in user order. A UUID can come twice
    // (its own profile and a cross-device profile synced to it): the rows are joined.
    // The keys' first 8 bytes as an integer settle nearly every comparison without a memcmp.
    rows.sort_by(|a, b| {
        use crate::idsync::store::id_prefix;
        id_prefix(&a.key)
            .cmp(&id_prefix(&b.key))
            .then_with(|| a.key.cmp(&b.key))
    });
    Ok(DestExport {
        view,
        rows: merge_same_user(rows),
        members: new_members,
    })
}

/// Joins rows of one user (an AAM UUID's own profile and a cross-device customer profile
/// synced to it): the union of segments; removals only for segments neither row holds.
fn merge_same_user(rows: Vec<ExportRow>) -> Vec<ExportRow> {
    let mut out: Vec<ExportRow> = Vec::with_capacity(rows.len());
    for row in rows {
        match out.last_mut() {
            Some(last) if last.key == row.key => {
                last.segments.extend(row.segments);
                last.segments.sort_unstable();
                last.segments.dedup();
                last.removed.extend(row.removed);
                last.removed.sort_unstable();
                last.removed.dedup();
                let segments = &last.segments;
                last.removed.retain(|s| segments.binary_search(s).is_err());
                last.traits.extend(row.traits);
                last.traits.sort_unstable();
                last.traits.dedup_by_key(|t| t.0);
            }
            _ => out.push(row),
        }
    }
    out
}
