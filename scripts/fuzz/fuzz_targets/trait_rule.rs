//! `rules::trait_rule::Expr::parse` and `TraitRules::{compile, qualify}`.
//!
//! Input: rules, one per line, then a NUL byte, then signals, one `key=value` per line
//! (`ic=V` is the signal `ic == V`). Properties beyond "no panic":
//! - parse → Display → parse gives the same AST, and Display is a fixed point;
//! - qualify (indexed by trigger sets) agrees with a naive evaluation of every rule's AST
//!   against every signal, so an index that skips a rule that holds is caught;
//! - qualify is deterministic with a reused scratch, and its pushed item indexes are valid.
#![no_main]

use std::cmp::Ordering;
use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use segmill::rules::trait_rule::{Atom, Expr, NO_ITEM, Op, Scratch, TraitRules};

/// Data source of every rule but the last, which belongs to another one (so that
/// cross-source hash collisions are exercised).
const DS: u32 = 21;
const OTHER_DS: u32 = 33;

fuzz_target!(|data: &[u8]| {
    let (rules_part, signals_part) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &data[data.len()..]),
    };
    let Ok(rules_text) = std::str::from_utf8(rules_part) else {
        return;
    };
    let mut parsed: Vec<(u32, u32, &str, Expr)> = Vec::new();
    let lines: Vec<&str> = rules_text.split('\n').take(16).collect();
    let last = lines.len().saturating_sub(1);
    for (i, text) in lines.iter().enumerate() {
        let Ok(expr) = Expr::parse(text) else {
            continue;
        };
        let shown = expr.to_string();
        let back = Expr::parse(&shown)
            .unwrap_or_else(|e| panic!("{text:?} displays as {shown:?}, which fails: {e}"));
        assert_eq!(back, expr, "{text:?} → {shown:?} parses to another rule");
        assert_eq!(
            back.to_string(),
            shown,
            "Display is not a fixed point for {text:?}"
        );
        let ds = if i == last && i > 0 { OTHER_DS } else { DS };
        parsed.push((100 + i as u32, ds, text, expr));
    }
    if parsed.is_empty() {
        return;
    }
    let Ok(rules) = TraitRules::compile(parsed.iter().map(|(t, ds, text, _)| (*t, *ds, *text)))
    else {
        // Only an oversized regex can fail here once every rule parsed.
        return;
    };
    assert_eq!(rules.len(), parsed.len());

    let signals_owned: Vec<(u32, &[u8], &[u8])> = signals_part
        .split(|&b| b == b'\n')
        .take(32)
        .enumerate()
        .filter_map(|(i, line)| {
            let eq = line.iter().position(|&b| b == b'=')?;
            Some((i as u32, &line[..eq], &line[eq + 1..]))
        })
        .collect();
    let mut scratch = Scratch::new();
    for ds in [DS, OTHER_DS] {
        let mut out = Vec::new();
        rules.qualify(ds, &signals_owned, &mut scratch, &mut out);
        let mut again = Vec::new();
        rules.qualify(ds, &signals_owned, &mut scratch, &mut again);
        assert_eq!(out, again, "qualify is not deterministic");
        let got: BTreeSet<u32> = out.iter().map(|&(t, _)| t).collect();
        let want: BTreeSet<u32> = parsed
            .iter()
            .filter(|(_, rule_ds, _, expr)| *rule_ds == ds && eval(expr, &signals_owned))
            .map(|(t, ..)| *t)
            .collect();
        assert_eq!(
            got, want,
            "qualify disagrees with the naive evaluation (ds {ds})"
        );
        for &(_, item) in &out {
            assert!(
                item == NO_ITEM || signals_owned.iter().any(|&(i, _, _)| i == item),
                "qualify pushed item {item}, which is no signal"
            );
        }
    }
});

/// The contract's semantics, straight from the AST: an atom holds when some signal with its key
/// satisfies the comparison.
fn eval(expr: &Expr, signals: &[(u32, &[u8], &[u8])]) -> bool {
    match expr {
        Expr::Atom(atom) => signals
            .iter()
            .any(|&(_, key, value)| key == atom.key.as_bytes() && test(atom, value)),
        Expr::Not(inner) => !eval(inner, signals),
        Expr::And(xs) => xs.iter().all(|x| eval(x, signals)),
        Expr::Or(xs) => xs.iter().any(|x| eval(x, signals)),
    }
}

fn test(atom: &Atom, value: &[u8]) -> bool {
    let rule = atom.value.as_bytes();
    let lower = |b: &[u8]| b.to_ascii_lowercase();
    match atom.op {
        Op::Eq => compare(value, rule) == Ordering::Equal,
        Op::Ne => compare(value, rule) != Ordering::Equal,
        Op::Lt => compare(value, rule) == Ordering::Less,
        Op::Gt => compare(value, rule) == Ordering::Greater,
        Op::Le => compare(value, rule) != Ordering::Greater,
        Op::Ge => compare(value, rule) != Ordering::Less,
        Op::Contains => {
            let (hay, needle) = (lower(value), lower(rule));
            needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle.as_slice())
        }
        Op::StartsWith => lower(value).starts_with(&lower(rule)),
        Op::EndsWith => lower(value).ends_with(&lower(rule)),
        Op::MatchesRegex => regex::bytes::Regex::new(&atom.value)
            .map(|re| re.is_match(value))
            .unwrap_or(false),
    }
}

/// Exact decimal order when both sides are `-?digits[.digits]`, else ASCII case-insensitive
/// byte order. Written independently of segmill's `value` module: through a padded
/// fixed-point string.
fn compare(a: &[u8], b: &[u8]) -> Ordering {
    match (decimal(a), decimal(b)) {
        (Some(x), Some(y)) => {
            let width_i = x.1.len().max(y.1.len());
            let width_f = x.2.len().max(y.2.len());
            let pad = |d: &(bool, Vec<u8>, Vec<u8>)| {
                let mut s = vec![b'0'; width_i - d.1.len()];
                s.extend_from_slice(&d.1);
                s.extend_from_slice(&d.2);
                s.extend(std::iter::repeat_n(b'0', width_f - d.2.len()));
                s
            };
            let (px, py) = (pad(&x), pad(&y));
            let zero_x = px.iter().all(|&c| c == b'0');
            let zero_y = py.iter().all(|&c| c == b'0');
            let neg_x = x.0 && !zero_x;
            let neg_y = y.0 && !zero_y;
            match (neg_x, neg_y) {
                (false, true) => Ordering::Greater,
                (true, false) => Ordering::Less,
                (false, false) => px.cmp(&py),
                (true, true) => py.cmp(&px),
            }
        }
        _ => a.to_ascii_lowercase().cmp(&b.to_ascii_lowercase()),
    }
}

/// `-?digits[.digits]` as (negative, integer digits, fraction digits).
fn decimal(text: &[u8]) -> Option<(bool, Vec<u8>, Vec<u8>)> {
    let s = std::str::from_utf8(text).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, f),
        None => (s, ""),
    };
    if int.is_empty() || !int.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    if s.contains('.') && (frac.is_empty() || !frac.bytes().all(|c| c.is_ascii_digit())) {
        return None;
    }
    Some((neg, int.as_bytes().to_vec(), frac.as_bytes().to_vec()))
}
