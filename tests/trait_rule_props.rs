//! Property tests of trait rules through the public API (`segmill::rules::trait_rule`):
//! Display/parse round trip, no panic on any input, and the indexed `qualify` against a naive
//! evaluator written here from CONTRACT §5 (own decimal and case rules, no shared code).

use std::cmp::Ordering;

use proptest::prelude::*;
use segmill::rules::trait_rule::{Atom, Expr, NO_ITEM, Op, Scratch, TraitRules};

const KEYS: &[&str] = &["a", "b", "ic", "my key", "price-1", "AND", "Not"];
const VALUES: &[&str] = &[
    "1", "01", "1.0", "-1", "-0", "10", "9", "0.5", "gold", "GOLD", "Gold bar", "", "and", "-",
    "1.", "é", "x=y",
];
const PATTERNS: &[&str] = &[
    "^g",
    "(?i)gold",
    "1$",
    "o",
    "^$",
    "[0-9]+",
    "^-?[0-9]+\\.[0-9]+$",
];

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(VALUES).prop_map(str::to_owned),
        2 => "-?[0-9]{1,3}(\\.[0-9]{1,3})?",
        1 => "[a-cA-C ]{0,3}",
    ]
}

fn atom(keys: &'static [&'static str]) -> impl Strategy<Value = Expr> {
    (
        prop::sample::select(keys),
        prop::sample::select(Op::ALL.to_vec()),
        value(),
        prop::sample::select(PATTERNS),
    )
        .prop_map(|(key, op, value, pattern)| {
            let value = if op == Op::MatchesRegex {
                pattern.to_owned()
            } else {
                value
            };
            Expr::Atom(Atom {
                key: key.to_owned(),
                op,
                value,
            })
        })
}

fn expr(keys: &'static [&'static str]) -> impl Strategy<Value = Expr> {
    atom(keys).prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            inner.clone().prop_map(|x| Expr::Not(Box::new(x))),
            prop::collection::vec(inner.clone(), 2..4).prop_map(Expr::And),
            prop::collection::vec(inner, 2..4).prop_map(Expr::Or),
        ]
    })
}

/// Tokens that matter to the rule grammar, for inputs that get past the first token.
fn token_soup() -> impl Strategy<Value = String> {
    let tokens = prop::sample::select(vec![
        "(",
        ")",
        "\"",
        "==",
        "=",
        "!",
        "!=",
        "<",
        ">=",
        "=>",
        "<=",
        "AND",
        "or",
        "not",
        "NOT",
        "contains",
        "MatchesRegex",
        "a",
        "1",
        "-1.5",
        " ",
        "\"x y\"",
        "\"(\"",
        "é",
        "\t",
        "\"\"",
    ]);
    prop::collection::vec(tokens, 0..30).prop_map(|t| t.concat())
}

// ---- the naive evaluator ----

/// `-?digits[.digits]` scaled to 10^-6 (generated decimals have at most 3 + 3 digits, and the
/// fixed pool fits too).
fn decimal(s: &str) -> Option<i128> {
    let (neg, unsigned) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = match unsigned.split_once('.') {
        Some((i, f)) if !f.is_empty() => (i, f),
        Some(_) => return None,
        None => (unsigned, ""),
    };
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !digits(int) || !digits(frac) || frac.len() > 6 {
        return None;
    }
    let scaled: i128 = format!("{int}{frac:0<6}").parse().ok()?;
    Some(if neg { -scaled } else { scaled })
}

fn order(signal: &str, rule: &str) -> Ordering {
    match (decimal(signal), decimal(rule)) {
        (Some(a), Some(b)) => a.cmp(&b),
        _ => signal.to_ascii_lowercase().cmp(&rule.to_ascii_lowercase()),
    }
}

fn satisfies(atom: &Atom, value: &str) -> bool {
    let (v, r) = (value.to_ascii_lowercase(), atom.value.to_ascii_lowercase());
    match atom.op {
        Op::Eq => order(value, &atom.value) == Ordering::Equal,
        Op::Ne => order(value, &atom.value) != Ordering::Equal,
        Op::Lt => order(value, &atom.value) == Ordering::Less,
        Op::Gt => order(value, &atom.value) == Ordering::Greater,
        Op::Le => order(value, &atom.value) != Ordering::Greater,
        Op::Ge => order(value, &atom.value) != Ordering::Less,
        Op::Contains => v.contains(&r),
        Op::StartsWith => v.starts_with(&r),
        Op::EndsWith => v.ends_with(&r),
        Op::MatchesRegex => regex::Regex::new(&atom.value).is_ok_and(|re| re.is_match(value)),
    }
}

fn naive_eval(e: &Expr, line: &[(u32, String, String)]) -> bool {
    match e {
        Expr::Atom(a) => line.iter().any(|(_, k, v)| *k == a.key && satisfies(a, v)),
        Expr::Not(x) => !naive_eval(x, line),
        Expr::And(xs) => xs.iter().all(|x| naive_eval(x, line)),
        Expr::Or(xs) => xs.iter().any(|x| naive_eval(x, line)),
    }
}

fn naive_items(e: &Expr, positive: bool, line: &[(u32, String, String)], out: &mut Vec<u32>) {
    match e {
        Expr::Atom(a) if positive => out.extend(
            line.iter()
                .filter(|(_, k, v)| *k == a.key && satisfies(a, v))
                .map(|(i, _, _)| *i),
        ),
        Expr::Atom(_) => {}
        Expr::Not(x) => naive_items(x, !positive, line, out),
        Expr::And(xs) | Expr::Or(xs) => xs.iter().for_each(|x| naive_items(x, positive, line, out)),
    }
}

fn naive_qualify(
    rules: &[(u32, u32, Expr)],
    ds: u32,
    line: &[(u32, String, String)],
) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    for (trait_id, _, e) in rules
        .iter()
        .filter(|(_, d, e)| *d == ds && naive_eval(e, line))
    {
        let mut items = Vec::new();
        naive_items(e, true, line, &mut items);
        items.sort_unstable();
        items.dedup();
        if items.is_empty() {
            items.push(NO_ITEM);
        }
        out.extend(items.into_iter().map(|i| (*trait_id, i)));
    }
    out
}

fn signal() -> impl Strategy<Value = (String, String)> {
    (prop::sample::select(&KEYS[..4]), value()).prop_map(|(k, v)| (k.to_owned(), v))
}

proptest! {
    #[test]
    fn display_parses_back_to_the_same_ast(e in expr(KEYS)) {
        let text = e.to_string();
        prop_assert_eq!(Expr::parse(&text), Ok(e), "{}", text);
    }

    #[test]
    fn any_string_parses_or_errs_without_panicking(text in any::<String>()) {
        check_parse(&text)?;
    }

    #[test]
    fn token_soup_parses_or_errs_without_panicking(text in token_soup()) {
        check_parse(&text)?;
    }

    #[test]
    fn qualify_agrees_with_a_naive_evaluator(
        exprs in prop::collection::vec((1u32..3, expr(&KEYS[..4])), 1..12),
        signals in prop::collection::vec(signal(), 0..8),
    ) {
        let rules: Vec<(u32, u32, Expr)> =
            exprs.into_iter().enumerate().map(|(i, (ds, e))| (100 + i as u32, ds, e)).collect();
        let texts: Vec<String> = rules.iter().map(|(_, _, e)| e.to_string()).collect();
        let set = TraitRules::compile(rules.iter().zip(&texts).map(|((t, d, _), text)| (*t, *d, text.as_str())))
            .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        prop_assert_eq!(set.len(), rules.len());
        // Item indexes that are not positions, to catch one passed for the other.
        let line: Vec<(u32, String, String)> =
            signals.into_iter().enumerate().map(|(i, (k, v))| (3 * i as u32 + 1, k, v)).collect();
        let borrowed: Vec<(u32, &[u8], &[u8])> =
            line.iter().map(|(i, k, v)| (*i, k.as_bytes(), v.as_bytes())).collect();
        let mut scratch = Scratch::new();
        for ds in [1, 2, 3, 1] {
            let mut got = Vec::new();
            set.qualify(ds, &borrowed, &mut scratch, &mut got);
            prop_assert_eq!(got, naive_qualify(&rules, ds, &line), "ds {} rules {:?}", ds, texts);
        }
    }
}

fn check_parse(text: &str) -> Result<(), TestCaseError> {
    match Expr::parse(text) {
        Ok(e) => {
            // Whatever parses also round-trips through its canonical form.
            let canonical = e.to_string();
            prop_assert_eq!(
                Expr::parse(&canonical),
                Ok(e),
                "{:?} -> {}",
                text,
                canonical
            );
        }
        Err(err) => {
            let end = text.chars().count() + 1;
            prop_assert!(err.column >= 1 && err.column <= end, "{:?}: {}", text, err);
        }
    }
    // The compiled path must not panic either.
    let _ = TraitRules::compile([(1, 1, text)]);
    Ok(())
}
