//! The compiled catalog: trait ownership and TTLs, trait rules and segment rules, built once
//! per run from the validated config.

use crate::config::Config;
use crate::model::{Dpid, TraitId};
use crate::rules::segment_rule::SegmentRules;
use crate::rules::trait_rule::TraitRules;
use ahash::AHashMap;
use anyhow::anyhow;

pub struct Catalog {
    /// Trait → owning data source.
    pub trait_owner: TraitOwners,
    /// Trait → TTL in days (0 = never expires).
    pub ttl_days: AHashMap<TraitId, u32>,
    pub trait_rules: TraitRules,
    pub segments: SegmentRules,
    /// Changes whenever a segment is added, removed or its rule edited: memberships are then
    /// evaluated again for every profile.
    pub segments_fingerprint: u64,
    /// Trait → the day counts of the recency terms that mention it (sorted): a membership can
    /// change with time alone `days` after the trait's realization.
    pub recency_days: AHashMap<TraitId, Vec<u32>>,
    /// Destination → compiled line template.
    pub templates: std::collections::BTreeMap<u32, crate::outbound::template::Template>,
}

/// Trait → owning data source, looked up for every `d_sid` and `d_unsid` item of the night: a
/// table indexed by trait ID when the IDs are dense enough (catalogs number their traits
/// densely; a `segmill gen` catalog's 5,000 traits take 40 KB), a hash map otherwise.
#[derive(Clone, Debug, Default)]
pub struct TraitOwners {
    /// The first trait ID of `dense`.
    base: TraitId,
    dense: Vec<Option<Dpid>>,
    /// Every owner, when the IDs are too spread out for `dense`.
    sparse: AHashMap<TraitId, Dpid>,
}

impl TraitOwners {
    /// The data source that owns `trait_id`, if the catalog has the trait.
    #[inline]
    pub fn get(&self, trait_id: TraitId) -> Option<Dpid> {
        if self.dense.is_empty() {
            return self.sparse.get(&trait_id).copied();
        }
        let i = trait_id.checked_sub(self.base)?;
        self.dense.get(i as usize).copied().flatten()
    }
}

impl FromIterator<(TraitId, Dpid)> for TraitOwners {
    fn from_iter<I: IntoIterator<Item = (TraitId, Dpid)>>(iter: I) -> TraitOwners {
        let owners: Vec<(TraitId, Dpid)> = iter.into_iter().collect();
        let (Some(lo), Some(hi)) = (
            owners.iter().map(|o| o.0).min(),
            owners.iter().map(|o| o.0).max(),
        ) else {
            return TraitOwners::default();
        };
        // Dense when the table is at most a few times the traits (and never over 8 MB).
        let span = u64::from(hi - lo) + 1;
        if span > (owners.len() as u64 * 4).max(1 << 16) || span > 1 << 20 {
            return TraitOwners {
                sparse: owners.into_iter().collect(),
                ..TraitOwners::default()
            };
        }
        let mut dense = vec![None; span as usize];
        for (id, owner) in owners {
            dense[(id - lo) as usize] = Some(owner);
        }
        TraitOwners {
            base: lo,
            dense,
            sparse: AHashMap::new(),
        }
    }
}

impl Catalog {
    /// Compiles the config's rules. The config has already checked that each one parses, so an
    /// error here names the config file and every bad rule.
    pub fn compile(config: &Config) -> anyhow::Result<Catalog> {
        let trait_owner = config
            .traits
            .iter()
            .map(|(id, t)| (*id, t.data_source))
            .collect();
        let mut ttl_days = AHashMap::with_capacity(config.traits.len());
        for (id, t) in &config.traits {
            ttl_days.insert(*id, t.ttl_days);
        }
        let rules = config
            .traits
            .values()
            .filter_map(|t| t.rule.as_deref().map(|r| (t.id, t.data_source, r)));
        let trait_rules = TraitRules::compile(rules).map_err(|errors| {
            let list: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            anyhow!("{}: {}", config.path.display(), list.join("; "))
        })?;
        let segments =
            SegmentRules::compile(config.segments.values().map(|s| (s.id, s.rule.as_str())))
                .map_err(|errors| {
                    let list: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
                    anyhow!("{}: {}", config.path.display(), list.join("; "))
                })?;
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for s in config.segments.values() {
            h.update(&s.id.to_le_bytes());
            h.update(s.rule.as_bytes());
            h.update(&[0]);
        }
        let mut recency_days: AHashMap<TraitId, Vec<u32>> = AHashMap::new();
        for seg in config.segments.values() {
            if let Ok(expr) = crate::rules::segment_rule::parse(&seg.rule) {
                collect_recency(&expr, &mut recency_days);
            }
        }
        for days in recency_days.values_mut() {
            days.sort_unstable();
            days.dedup();
        }
        let mut templates = std::collections::BTreeMap::new();
        for d in config.destinations.values() {
            if let Some(text) = &d.template {
                let t = crate::outbound::template::Template::parse(text).map_err(|e| {
                    anyhow!(
                        "{}: destination {}.template: {e}",
                        config.path.display(),
                        d.id
                    )
                })?;
                templates.insert(d.id, t);
            }
        }
        Ok(Catalog {
            trait_owner,
            ttl_days,
            trait_rules,
            segments,
            segments_fingerprint: h.digest(),
            recency_days,
            templates,
        })
    }
}

fn collect_recency(expr: &crate::rules::segment_rule::Expr, out: &mut AHashMap<TraitId, Vec<u32>>) {
    use crate::rules::segment_rule::Expr;
    match expr {
        Expr::Trait(_) => {}
        Expr::Frequency(f) => {
            if let Some(r) = f.recency {
                for t in &f.traits {
                    out.entry(*t).or_default().push(r.days.get());
                }
            }
        }
        Expr::Not(e) => collect_recency(e, out),
        Expr::And(v) | Expr::Or(v) => v.iter().for_each(|e| collect_recency(e, out)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trait_owners_dense_and_sparse_agree_with_a_map() {
        for ids in [
            vec![1000u32, 1001, 1003, 5999],
            vec![0, 7, u32::MAX],
            vec![4_000_000_000, 5, 17],
            vec![],
        ] {
            let map: AHashMap<TraitId, Dpid> = ids.iter().map(|&t| (t, t % 7 + 20)).collect();
            let owners: TraitOwners = ids.iter().map(|&t| (t, t % 7 + 20)).collect();
            for probe in ids
                .iter()
                .copied()
                .chain([0, 1, 999, 1002, 6000, u32::MAX - 1, u32::MAX])
            {
                assert_eq!(
                    owners.get(probe),
                    map.get(&probe).copied(),
                    "{ids:?} {probe}"
                );
            }
        }
        let dense: TraitOwners = (1000..6000).map(|t| (t, 21)).collect();
        assert_eq!(dense.dense.len(), 5000);
        let sparse: TraitOwners = [(1, 21), (3_000_000, 22)].into_iter().collect();
        assert!(sparse.dense.is_empty());
    }
}
