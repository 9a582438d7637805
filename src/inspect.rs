//! `segmill inspect`: what the current state generation knows about one user, and store-wide
//! counts. Read-only; takes no lock (generations are immutable once committed).

use crate::config::Config;
use crate::idsync::Table;
use crate::idsync::index::{IdIndex, PartBytes, Target};
use crate::model::{Dpid, ProfileKey, Uuid, device_format, partition_of};
use crate::profile::merge::SECONDS_PER_DAY;
use crate::run::StateMeta;
use crate::state::{Generation, StateDir};
use anyhow::{Context as _, anyhow, bail};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

fn current(config: &Config) -> anyhow::Result<Option<(Generation, StateMeta)>> {
    let state = StateDir::open(&config.paths.state)?;
    let Some(g) = state.current()? else {
        return Ok(None);
    };
    let meta: StateMeta = serde_json::from_value(g.manifest.meta.clone()).with_context(|| {
        format!(
            "state generation {}: manifest metadata is not segmill's",
            g.number
        )
    })?;
    Ok(Some((g, meta)))
}

/// Profile partition `name` of `g` in this build's layout, its delta laid over it (empty when
/// there is none).
fn profile_partition(g: &Generation, name: &str) -> anyhow::Result<Vec<u8>> {
    let payload = g.read(name)?.unwrap_or_default();
    let base = crate::profile::in_current_layout(g.manifest.format_version, payload)
        .map_err(|e| anyhow!("{name}: {e}"))?;
    match g.read(&(name.to_string() + crate::state::DELTA_SUFFIX))? {
        Some(delta) => {
            crate::profile::overlay(&base, &delta).map_err(|e| anyhow!("{name} and its delta: {e}"))
        }
        None => Ok(base),
    }
}

fn time(ts: i64) -> String {
    jiff::Timestamp::from_second(ts).map_or_else(|_| ts.to_string(), |t| t.to_string())
}

/// Describes the profile(s) an ID lands on.
pub fn profile(config: &Config, id: &str, dpid: Option<Dpid>) -> anyhow::Result<String> {
    let Some((g, meta)) = current(config)? else {
        return Ok("no state yet: run `segmill run` first\n".to_string());
    };
    let mut out = String::new();
    let mut keys: Vec<ProfileKey> = Vec::new();
    match dpid {
        None | Some(0) => {
            let u = Uuid::parse(id.as_bytes()).ok_or_else(|| {
                anyhow!(
                    "{id:?} is not a 38-digit AAM UUID; pass --dpid for a customer or device ID"
                )
            })?;
            keys.push(ProfileKey::Uuid(u));
        }
        Some(d) if device_format(d).is_some() => {
            keys.push(ProfileKey::Device(d, id.as_bytes().into()))
        }
        Some(d) => {
            if !config.data_sources.contains_key(&d) {
                bail!("DPID {d} is not a configured data source");
            }
            let source = |name: &str| -> anyhow::Result<Option<PartBytes<'_>>> {
                Ok(g.read(name)?.map(PartBytes::Owned))
            };
            let index = IdIndex::build(&BTreeSet::from([d]), meta.partitions, &source)?;
            match index.lookup(d, id.as_bytes()) {
                Some(Target::Uuid(u)) => {
                    let _ = writeln!(
                        out,
                        "customer ID {id:?} of DPID {d} is synced to AAM UUID {u}"
                    );
                    keys.push(ProfileKey::Uuid(u));
                }
                Some(Target::Device(dd, did)) => {
                    let _ = writeln!(
                        out,
                        "customer ID {id:?} of DPID {d} is synced to device {dd}:{}",
                        String::from_utf8_lossy(did)
                    );
                    keys.push(ProfileKey::Device(dd, did.into()));
                }
                None => {
                    let _ = writeln!(out, "customer ID {id:?} of DPID {d} is not synced");
                }
            }
            keys.push(ProfileKey::Customer(d, id.as_bytes().into()));
        }
    }
    for key in keys {
        let encoded = key.encode();
        let name = crate::profile::part_name(partition_of(&encoded, meta.partitions));
        let payload = profile_partition(&g, &name)?;
        let profiles = crate::profile::decode(&payload).map_err(|e| anyhow!("{name}: {e}"))?;
        match profiles.iter().find(|p| p.key == encoded.as_slice()) {
            None => {
                let _ = writeln!(out, "profile {key}: no traits");
            }
            Some(p) => {
                let _ = writeln!(
                    out,
                    "profile {key}: {} trait(s) (state as of {})",
                    p.entries.len(),
                    time(meta.as_of)
                );
                let segments: Vec<String> = p.segments.iter().map(u32::to_string).collect();
                let _ = writeln!(
                    out,
                    "  segments: {}",
                    if segments.is_empty() {
                        "none".to_string()
                    } else {
                        segments.join(", ")
                    }
                );
                for e in &p.entries {
                    let ttl = config.traits.get(&e.trait_id).map(|t| t.ttl_days);
                    let expiry = match ttl {
                        Some(0) => "never expires".to_string(),
                        Some(d) => format!(
                            "expires {}",
                            time(e.realized_at + i64::from(d) * SECONDS_PER_DAY)
                        ),
                        None => "trait not in config".to_string(),
                    };
                    let _ = writeln!(
                        out,
                        "  trait {:>8}  data source {:>8}  realized {}  {}",
                        e.trait_id,
                        e.data_source,
                        time(e.realized_at),
                        expiry
                    );
                }
            }
        }
    }
    Ok(out)
}

/// Store-wide counts.
pub fn stats(config: &Config) -> anyhow::Result<String> {
    let Some((g, meta)) = current(config)? else {
        return Ok("no state yet: run `segmill run` first\n".to_string());
    };
    let mut profiles = 0u64;
    let mut memberships = 0u64;
    let mut by_kind: BTreeMap<&str, u64> = BTreeMap::new();
    let mut mappings: BTreeMap<(String, Dpid), u64> = BTreeMap::new();
    for (name, _) in g.files() {
        // Block indexes and a delta's block counts hold nothing to count.
        if name.ends_with(crate::state::INDEX_SUFFIX) || name.ends_with(crate::state::COUNTS_SUFFIX)
        {
            continue;
        }
        // Each partition once, with its delta.
        if name.starts_with("profiles/") && !name.ends_with(crate::state::DELTA_SUFFIX) {
            let payload = profile_partition(&g, name)?;
            for p in crate::profile::decode(&payload).map_err(|e| anyhow!("{name}: {e}"))? {
                profiles += 1;
                memberships += p.entries.len() as u64;
                let kind = match p.key.first() {
                    Some(0) => "aam_uuid",
                    Some(1) => "device",
                    _ => "customer (cross-device, unsynced)",
                };
                *by_kind.entry(kind).or_default() += 1;
            }
        }
        for table in [Table::Adobe, Table::C2c] {
            let prefix = format!("{}/dpid-", table.dir());
            if let Some(rest) = name.strip_prefix(&prefix) {
                let dpid: Dpid = rest
                    .split('/')
                    .next()
                    .and_then(|d| d.parse().ok())
                    .unwrap_or(0);
                let payload = g.read(name)?.unwrap_or_default();
                let n = crate::idsync::store::decode(&payload)
                    .map_err(|e| anyhow!("{name}: {e}"))?
                    .len();
                *mappings.entry((table.dir().to_string(), dpid)).or_default() += n as u64;
            }
        }
    }
    let ledger = g.ledger()?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "generation {} (run {}, as of {})",
        g.number,
        meta.run_id,
        time(meta.as_of)
    );
    let _ = writeln!(out, "partitions {}", meta.partitions);
    let _ = writeln!(out, "profiles {profiles}");
    for (kind, n) in by_kind {
        let _ = writeln!(out, "  {kind} {n}");
    }
    let _ = writeln!(out, "trait memberships {memberships}");
    for ((table, dpid), n) in mappings {
        let _ = writeln!(out, "{table} mappings for DPID {dpid}: {n}");
    }
    let _ = writeln!(out, "ledger files {}", ledger.len());
    Ok(out)
}
