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
    pub trait_owner: AHashMap<TraitId, Dpid>,
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

impl Catalog {
    /// Compiles the config's rules. The config has already checked that each one parses, so an
    /// error here names the config file and every bad rule.
    pub fn compile(config: &Config) -> anyhow::Result<Catalog> {
        let mut trait_owner = AHashMap::with_capacity(config.traits.len());
        let mut ttl_days = AHashMap::with_capacity(config.traits.len());
        for (id, t) in &config.traits {
            trait_owner.insert(*id, t.data_source);
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
