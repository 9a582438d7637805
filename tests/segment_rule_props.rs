//! Property tests of segment rules through the public API (`segmill::rules::segment_rule`):
//! the canonical form parses back, no text panics the parser, the compiled evaluator agrees
//! with a naive recursive twin, and `candidates` never misses a segment that can change.

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;

use proptest::prelude::*;
use segmill::rules::segment_rule::{
    Expr, Frequency, FrequencyOp, Recency, RecencyOp, SegmentRules, parse,
};

const DAY: i64 = 86_400;
/// Trait ids the generators use: few, so that rules and profiles overlap.
const TRAITS: u32 = 10;

type Profile = BTreeMap<u32, i64>;

// ---------------------------------------------------------------------------------------------
// The naive twin: a direct reading of the module docs, over the recursive `Expr`.

fn naive(expr: &Expr, profile: &Profile, as_of: i64) -> bool {
    match expr {
        Expr::Trait(id) => profile.contains_key(id),
        Expr::Not(inner) => !naive(inner, profile, as_of),
        Expr::And(operands) => operands.iter().all(|e| naive(e, profile, as_of)),
        Expr::Or(operands) => operands.iter().any(|e| naive(e, profile, as_of)),
        Expr::Frequency(freq) => {
            let listed: BTreeSet<u32> = freq.traits.iter().copied().collect();
            let count = listed
                .iter()
                .filter_map(|id| profile.get(id))
                .filter(|&&realized_at| match freq.recency {
                    None => true,
                    Some(r) => {
                        let cutoff = i128::from(as_of) - i128::from(r.days.get()) * i128::from(DAY);
                        match r.op {
                            RecencyOp::Within => i128::from(realized_at) >= cutoff,
                            RecencyOp::AtLeastAgo => i128::from(realized_at) <= cutoff,
                        }
                    }
                })
                .count() as u64;
            let n = u64::from(freq.count);
            match freq.op {
                FrequencyOp::AtLeast => count >= n,
                FrequencyOp::AtMost => count <= n,
                FrequencyOp::Exactly => count == n,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Generators.

fn trait_id() -> impl Strategy<Value = u32> {
    prop_oneof![9 => 0..TRAITS, 1 => any::<u32>()]
}

fn frequency() -> impl Strategy<Value = Expr> {
    (
        prop::collection::vec(trait_id(), 1..5),
        prop::option::of((
            prop_oneof![Just(RecencyOp::Within), Just(RecencyOp::AtLeastAgo)],
            prop_oneof![4 => 1u32..5, 1 => 1..=u32::MAX],
        )),
        prop_oneof![
            Just(FrequencyOp::AtLeast),
            Just(FrequencyOp::AtMost),
            Just(FrequencyOp::Exactly)
        ],
        prop_oneof![4 => 0u32..5, 1 => any::<u32>()],
    )
        .prop_map(|(traits, recency, op, count)| {
            Expr::Frequency(Frequency {
                traits,
                recency: recency
                    .and_then(|(op, days)| NonZeroU32::new(days).map(|days| Recency { op, days })),
                op,
                count,
            })
        })
}

fn expr() -> impl Strategy<Value = Expr> {
    let leaf = prop_oneof![2 => trait_id().prop_map(Expr::Trait), 1 => frequency()];
    leaf.prop_recursive(6, 48, 4, |inner| {
        prop_oneof![
            inner.clone().prop_map(|e| Expr::Not(Box::new(e))),
            prop::collection::vec(inner.clone(), 2..5).prop_map(Expr::And),
            prop::collection::vec(inner, 2..5).prop_map(Expr::Or),
        ]
    })
}

fn as_of() -> impl Strategy<Value = i64> {
    prop_oneof![
        8 => Just(1_790_000_000i64),
        1 => any::<i64>(),
        1 => prop_oneof![Just(i64::MIN), Just(i64::MAX), Just(0)],
    ]
}

/// A realization time relative to `as_of`: whole days back, nudged by a second around the
/// recency boundaries, or anything at all.
fn realized_at(as_of: i64) -> impl Strategy<Value = i64> {
    prop_oneof![
        6 => (0i64..6, -1i64..=1).prop_map(move |(days, nudge)| {
            as_of.saturating_sub(days * DAY).saturating_add(nudge)
        }),
        1 => any::<i64>(),
    ]
}

fn profile(as_of: i64) -> impl Strategy<Value = Profile> {
    prop::collection::btree_map(0..TRAITS + 2, realized_at(as_of), 0..8)
}

fn rules() -> impl Strategy<Value = Vec<(u32, Expr)>> {
    prop::collection::vec(expr(), 1..12).prop_map(|exprs| {
        exprs
            .into_iter()
            .enumerate()
            .map(|(i, e)| (i as u32 * 3 + 1, e))
            .collect()
    })
}

/// Compiles through the canonical text, the way the catalog does.
fn compile(rules: &[(u32, Expr)]) -> SegmentRules {
    let texts: Vec<(u32, String)> = rules.iter().map(|(s, e)| (*s, e.to_string())).collect();
    SegmentRules::compile(texts.iter().map(|(s, t)| (*s, t.as_str())))
        .unwrap_or_else(|errors| panic!("canonical rules failed to compile: {errors:?}"))
}

fn as_slice(profile: &Profile) -> Vec<(u32, i64)> {
    profile.iter().map(|(&t, &r)| (t, r)).collect()
}

fn qualified(rules: &SegmentRules, profile: &Profile, as_of: i64) -> Vec<u32> {
    let mut out = Vec::new();
    rules.evaluate(rules.ids(), &as_slice(profile), as_of, &mut out);
    out
}

fn naive_qualified(rules: &[(u32, Expr)], profile: &Profile, as_of: i64) -> Vec<u32> {
    rules
        .iter()
        .filter(|(_, e)| naive(e, profile, as_of))
        .map(|(s, _)| *s)
        .collect()
}

/// Text that looks like rules often enough to reach every branch of the parser.
fn rule_soup() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        8 => prop::sample::select(vec![
            "24T", "7t", "0T", "4294967296T", "24", "24TX", "AND", "and", "OR", "NOT", "not",
            "(", ")", "[", "]", ",", ">=", "<=", "==", "=>", "=<", "!=", ">", "<", "=", "!",
            "FREQUENCY", "frequency", "7D", "0D", "7d", "7DX", "5", "x", "_", "é", "\u{a0}",
            "\n", "\t", "\r", " ", "  ",
        ]).prop_map(str::to_owned),
        1 => any::<String>(),
    ];
    prop::collection::vec(token, 0..40).prop_map(|tokens| {
        tokens
            .iter()
            .enumerate()
            .fold(String::new(), |mut s, (i, tok)| {
                if i % 3 == 1 {
                    s.push(' ');
                }
                s.push_str(tok);
                s
            })
    })
}

// ---------------------------------------------------------------------------------------------
// Properties.

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn display_parses_back_to_the_same_ast(e in expr()) {
        let text = e.to_string();
        prop_assert_eq!(parse(&text), Ok(e), "text: {}", text);
    }

    #[test]
    fn no_text_panics_the_parser(text in rule_soup()) {
        if let Ok(e) = parse(&text) {
            // Whatever parses has a canonical form that parses back to it.
            prop_assert_eq!(parse(&e.to_string()), Ok(e));
        }
    }

    #[test]
    fn no_bytes_panic_the_parser(text in any::<String>()) {
        let _ = parse(&text);
    }

    #[test]
    fn evaluate_agrees_with_the_naive_twin(
        rules in rules(),
        (as_of, profile) in as_of().prop_flat_map(|t| (Just(t), profile(t))),
    ) {
        let compiled = compile(&rules);
        prop_assert_eq!(
            qualified(&compiled, &profile, as_of),
            naive_qualified(&rules, &profile, as_of)
        );
        // The empty profile: `empty_qualifies` is exactly the naive answer.
        prop_assert_eq!(
            compiled.empty_qualifies().to_vec(),
            naive_qualified(&rules, &Profile::new(), as_of)
        );
        // A sub-list of candidates yields the matching sub-list of answers.
        let odd: Vec<u32> = compiled.ids().iter().copied().skip(1).step_by(2).collect();
        let mut out = Vec::new();
        compiled.evaluate(&odd, &as_slice(&profile), as_of, &mut out);
        let want: Vec<u32> = naive_qualified(&rules, &profile, as_of)
            .into_iter()
            .filter(|s| odd.contains(s))
            .collect();
        prop_assert_eq!(out, want);
    }

    #[test]
    fn candidates_never_miss_a_changed_segment(
        rules in rules(),
        (as_of, before, after) in as_of().prop_flat_map(|t| (Just(t), profile(t), profile(t))),
        changed in prop::collection::btree_set(0..TRAITS + 2, 0..6),
    ) {
        // `after` differs from `before` only in the `changed` traits.
        let mut after_profile = before.clone();
        for t in &changed {
            match after.get(t) {
                Some(&r) => after_profile.insert(*t, r),
                None => after_profile.remove(t),
            };
        }
        let compiled = compile(&rules);
        let changed: Vec<u32> = changed.into_iter().collect();
        let mut candidates = Vec::new();
        compiled.candidates(&changed, false, &mut candidates);
        prop_assert!(candidates.windows(2).all(|w| w[0] < w[1]), "not sorted: {:?}", candidates);
        for (segment, e) in &rules {
            if naive(e, &before, as_of) != naive(e, &after_profile, as_of) {
                prop_assert!(
                    candidates.contains(segment),
                    "segment {} ({}) changed but is not a candidate of {:?}", segment, e, changed
                );
            }
        }

        // A new profile: every segment it qualifies for is a candidate, given its traits.
        let held: Vec<u32> = after_profile.keys().copied().collect();
        compiled.candidates(&held, true, &mut candidates);
        for segment in naive_qualified(&rules, &after_profile, as_of) {
            prop_assert!(candidates.contains(&segment), "new profile misses {}", segment);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    /// Single frequency terms over few traits, so that recency boundaries are hit often.
    #[test]
    fn frequency_terms_agree_with_the_naive_twin(
        terms in prop::collection::vec(frequency(), 1..8),
        (as_of, profile) in as_of().prop_flat_map(|t| (Just(t), profile(t))),
    ) {
        let rules: Vec<(u32, Expr)> = terms.into_iter().zip(1u32..).map(|(e, s)| (s, e)).collect();
        let compiled = compile(&rules);
        prop_assert_eq!(
            qualified(&compiled, &profile, as_of),
            naive_qualified(&rules, &profile, as_of)
        );
    }
}
