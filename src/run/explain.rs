//! `segmill validate --explain ID`: why an ID of a trait file does (or does not) match, looked
//! up in the current state's ID-sync tables for the data sources involved only.
//!
//! Reasons, most specific first: not an AAM UUID (DPID 0), wrong device-ID format (global device
//! DPIDs), synced, differs only in case from a synced ID, surrounded by whitespace, synced under
//! another configured data source, looks hashed (32/40/64 hex digits), never synced.

use super::StateMeta;
use crate::config::{Config, IdType};
use crate::idsync::Table;
use crate::idsync::index::{IdIndex, Target};
use crate::idsync::store::{decode, part_name, part_of};
use crate::model::{AAM_UUID_DPID, Dpid, Uuid, device_format};
use crate::state::{Generation, StateDir};
use anyhow::Context as _;
use std::collections::BTreeSet;

/// One line per DPID in `dpids`: what `id` is for that data source. Reads only the ID-sync
/// partitions of those DPIDs (and, for "synced elsewhere", one partition per other customer
/// data source).
pub fn explain(config: &Config, id: &str, dpids: &BTreeSet<Dpid>) -> anyhow::Result<String> {
    let state = StateDir::open(&config.paths.state).with_context(|| {
        format!(
            "cannot open the state folder {}",
            config.paths.state.display()
        )
    })?;
    let current = state
        .current()
        .context("cannot read the current state generation")?;
    let partitions = match &current {
        Some(g) => {
            let meta: StateMeta =
                serde_json::from_value(g.manifest.meta.clone()).with_context(|| {
                    format!(
                        "state generation {}: manifest metadata is not segmill's",
                        g.number
                    )
                })?;
            meta.partitions
        }
        None => config.run.partitions,
    };
    let mut out = String::new();
    for &dpid in dpids {
        let reason = explain_one(config, current.as_ref(), partitions, id, dpid)?;
        out.push_str(&format!(
            "{id:?} for {}: {reason}\n",
            source_name(config, dpid)
        ));
    }
    Ok(out)
}

fn source_name(config: &Config, dpid: Dpid) -> String {
    if dpid == AAM_UUID_DPID {
        return "DPID 0 (AAM UUIDs)".into();
    }
    if let Some((name, _)) = device_format(dpid) {
        return format!("DPID {dpid} ({name})");
    }
    match config.data_source(dpid) {
        Some(ds) => format!("data source {dpid} ({})", ds.name),
        None => format!("DPID {dpid} (not configured)"),
    }
}

fn explain_one(
    config: &Config,
    state: Option<&Generation>,
    partitions: u32,
    id: &str,
    dpid: Dpid,
) -> anyhow::Result<String> {
    let bytes = id.as_bytes();
    if dpid == AAM_UUID_DPID {
        return Ok(match Uuid::parse(bytes) {
            Some(_) => "a well-formed AAM UUID: it needs no ID sync".into(),
            None => "not an AAM UUID (exactly 38 digits): counted as Invalid AAM ID".into(),
        });
    }
    if let Some((name, format)) = device_format(dpid) {
        return Ok(if format.accepts(bytes) {
            format!("a well-formed {name} device ID: device IDs need no ID sync")
        } else {
            format!(
                "wrong device-ID format for {name}: expected {}; counted as Invalid device ID",
                format.describe()
            )
        });
    }
    let Some(ds) = config.data_source(dpid) else {
        return Ok("not a configured data source: the whole file is rejected".into());
    };
    if ds.id_type == IdType::AamUuid {
        return Ok(match Uuid::parse(bytes) {
            Some(_) => "a well-formed AAM UUID (the data source's IDs are AAM UUIDs)".into(),
            None => {
                "not an AAM UUID (exactly 38 digits), which this data source's IDs must be".into()
            }
        });
    }
    let source = |name: &str| -> anyhow::Result<Option<Vec<u8>>> {
        match state {
            Some(g) => Ok(g.read(name)?),
            None => Ok(None),
        }
    };
    let owned = |name: &str| Ok(source(name)?.map(crate::idsync::index::PartBytes::Owned));
    let index = IdIndex::build(&BTreeSet::from([dpid]), partitions, &owned)?;
    match index.lookup(dpid, bytes) {
        Some(Target::Uuid(u)) => return Ok(format!("synced to AAM UUID {:038}", u.0)),
        Some(Target::Device(d, device)) => {
            return Ok(format!(
                "synced to device ID {} of DPID {d}",
                String::from_utf8_lossy(device)
            ));
        }
        None => {}
    }
    // Not synced: look for a near miss in this data source's table.
    let trimmed = id.trim();
    if trimmed != id && !trimmed.is_empty() && index.lookup(dpid, trimmed.as_bytes()).is_some() {
        return Ok(format!(
            "has leading or trailing whitespace; {trimmed:?} is synced"
        ));
    }
    for p in 0..partitions {
        let Some(payload) = source(&part_name(Table::Adobe, dpid, p))? else {
            continue;
        };
        let records = decode(&payload).map_err(|_| {
            anyhow::anyhow!(
                "ID-sync partition {} is truncated",
                part_name(Table::Adobe, dpid, p)
            )
        })?;
        if let Some(r) = records.iter().find(|r| r.id.eq_ignore_ascii_case(bytes)) {
            return Ok(format!(
                "differs only in case from the synced ID {:?} (IDs match exactly)",
                String::from_utf8_lossy(r.id)
            ));
        }
    }
    // Synced under another customer data source? One partition each.
    for other in config.data_sources.values() {
        if other.id == dpid || other.id_type != IdType::Customer {
            continue;
        }
        let name = part_name(Table::Adobe, other.id, part_of(other.id, bytes, partitions));
        let Some(payload) = source(&name)? else {
            continue;
        };
        let records = decode(&payload)
            .map_err(|_| anyhow::anyhow!("ID-sync partition {name} is truncated"))?;
        if records.iter().any(|r| r.id == bytes) {
            return Ok(format!(
                "never synced for this data source, but synced under data source {} ({}): \
                 the file's DPID may be wrong",
                other.id, other.name
            ));
        }
    }
    let hex = bytes.iter().all(u8::is_ascii_hexdigit);
    let hashed = match bytes.len() {
        32 if hex => Some("an MD5"),
        40 if hex => Some("a SHA-1"),
        64 if hex => Some("a SHA-256"),
        _ => None,
    };
    Ok(match hashed {
        Some(kind) => format!(
            "never synced; it looks like {kind} hash: the ID-sync file must carry the same \
             hashed form"
        ),
        None => "never synced: no ID-sync file has mapped it; counted as No Matching AAM ID".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config() -> Config {
        Config::parse(
            Path::new("segmill.toml"),
            "[paths]\ninbound = \"in\"\nstate = \"/nonexistent/segmill-explain-test\"\n\
             outbound = \"out\"\n[[data_source]]\nid = 21\nname = \"CRM\"\n",
        )
        .unwrap()
    }

    #[test]
    fn format_reasons_need_no_state() {
        let c = config();
        let none = None;
        assert_eq!(
            explain_one(&c, none, 4, "abc", 0).unwrap(),
            "not an AAM UUID (exactly 38 digits): counted as Invalid AAM ID"
        );
        assert_eq!(
            explain_one(&c, none, 4, "ABCDEF01-0000-0000-0000-000000000000", 20914).unwrap(),
            "wrong device-ID format for GAID (Android): expected 36 characters, lowercase hex \
             8-4-4-4-12; counted as Invalid device ID"
        );
        assert_eq!(
            explain_one(&c, none, 4, &"a".repeat(64), 21).unwrap(),
            "never synced; it looks like a SHA-256 hash: the ID-sync file must carry the same \
             hashed form"
        );
        assert_eq!(
            explain_one(&c, none, 4, "cust1", 21).unwrap(),
            "never synced: no ID-sync file has mapped it; counted as No Matching AAM ID"
        );
    }
}
