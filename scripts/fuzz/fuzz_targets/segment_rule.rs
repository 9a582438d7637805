//! `rules::segment_rule::parse` and `SegmentRules::{compile, evaluate, touching,
//! empty_qualifies}`.
//!
//! Input: segment rules, one per line, then a NUL byte, then profile bytes: pairs of (which
//! referenced trait, how many days before as-of it was realized). Properties beyond "no panic":
//! - parse → Display → parse gives the same AST, and Display is a fixed point;
//! - the compiled code agrees with a naive evaluation of the AST;
//! - toggling one trait never changes a segment that `touching(trait)` does not list, and every
//!   segment an empty profile qualifies for is in `empty_qualifies()`.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use segmill::rules::segment_rule::{Expr, FrequencyOp, RecencyOp, SegmentRules, parse};

const AS_OF: i64 = 1_795_312_800;
const DAY: i64 = 86_400;

fuzz_target!(|data: &[u8]| {
    let (rules_part, profile_part) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &data[data.len()..]),
    };
    let Ok(text) = std::str::from_utf8(rules_part) else {
        return;
    };
    let mut rules: Vec<(u32, &str, Expr)> = Vec::new();
    for (i, line) in text.split('\n').take(16).enumerate() {
        let Ok(expr) = parse(line) else {
            continue;
        };
        let shown = expr.to_string();
        let back = parse(&shown)
            .unwrap_or_else(|e| panic!("{line:?} displays as {shown:?}, which fails: {e}"));
        assert_eq!(back, expr, "{line:?} → {shown:?} parses to another rule");
        assert_eq!(
            back.to_string(),
            shown,
            "Display is not a fixed point for {line:?}"
        );
        rules.push((1000 + i as u32, line, expr));
    }
    if rules.is_empty() {
        return;
    }
    let compiled = match SegmentRules::compile(rules.iter().map(|(id, t, _)| (*id, *t))) {
        Ok(c) => c,
        Err(errors) => panic!("rules that parse one by one fail to compile: {errors:?}"),
    };
    let referenced = compiled.referenced_traits().to_vec();
    let mut profile: BTreeMap<u32, i64> = BTreeMap::new();
    if !referenced.is_empty() {
        for pair in profile_part.chunks_exact(2) {
            let t = referenced[pair[0] as usize % referenced.len()];
            profile.insert(t, AS_OF - i64::from(pair[1]) * DAY / 4);
        }
    }
    let ids: Vec<u32> = rules.iter().map(|(id, ..)| *id).collect();
    let check = |profile: &BTreeMap<u32, i64>| -> Vec<u32> {
        let traits: Vec<(u32, i64)> = profile.iter().map(|(&t, &at)| (t, at)).collect();
        let mut out = Vec::new();
        compiled.evaluate(&ids, &traits, AS_OF, &mut out);
        let want: Vec<u32> = rules
            .iter()
            .filter(|(_, _, e)| eval(e, profile))
            .map(|(id, ..)| *id)
            .collect();
        assert_eq!(
            out, want,
            "compiled code disagrees with the AST on {profile:?}"
        );
        out
    };
    let base = check(&profile);
    let empty = check(&BTreeMap::new());
    for id in &empty {
        assert!(
            compiled.empty_qualifies().contains(id),
            "segment {id} holds for an empty profile but is not in empty_qualifies()"
        );
    }
    for &t in referenced.iter().take(8) {
        let mut toggled = profile.clone();
        if toggled.remove(&t).is_none() {
            toggled.insert(t, AS_OF);
        }
        let after = check(&toggled);
        for id in symmetric_difference(&base, &after) {
            assert!(
                compiled.touching(t).contains(&id),
                "toggling trait {t} changed segment {id}, which touching({t}) omits"
            );
        }
    }
});

fn symmetric_difference(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut out: Vec<u32> = a.iter().filter(|x| !b.contains(x)).copied().collect();
    out.extend(b.iter().filter(|x| !a.contains(x)));
    out
}

/// The documented semantics, straight from the AST.
fn eval(expr: &Expr, profile: &BTreeMap<u32, i64>) -> bool {
    match expr {
        Expr::Trait(t) => profile.contains_key(t),
        Expr::Not(inner) => !eval(inner, profile),
        Expr::And(xs) => xs.iter().all(|x| eval(x, profile)),
        Expr::Or(xs) => xs.iter().any(|x| eval(x, profile)),
        Expr::Frequency(f) => {
            let mut listed = f.traits.clone();
            listed.sort_unstable();
            listed.dedup();
            let count = listed
                .iter()
                .filter(|t| match (profile.get(t), f.recency) {
                    (None, _) => false,
                    (Some(_), None) => true,
                    (Some(&at), Some(r)) => {
                        let cutoff = i128::from(AS_OF) - i128::from(r.days.get()) * 86_400;
                        match r.op {
                            RecencyOp::Within => i128::from(at) >= cutoff,
                            RecencyOp::AtLeastAgo => i128::from(at) <= cutoff,
                        }
                    }
                })
                .count() as u64;
            let n = u64::from(f.count);
            match f.op {
                FrequencyOp::AtLeast => count >= n,
                FrequencyOp::AtMost => count <= n,
                FrequencyOp::Exactly => count == n,
            }
        }
    }
}
