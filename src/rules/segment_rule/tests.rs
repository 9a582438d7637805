//! Unit tests of the segment-rule parser, canonical form, compiler and evaluator.

use super::*;

const DAY: i64 = SECONDS_PER_DAY;
const AS_OF: i64 = 1_790_000_000;

fn t(id: TraitId) -> Expr {
    Expr::Trait(id)
}

fn not(e: Expr) -> Expr {
    Expr::Not(Box::new(e))
}

fn freq(
    traits: &[TraitId],
    recency: Option<(RecencyOp, u32)>,
    op: FrequencyOp,
    count: u32,
) -> Expr {
    Expr::Frequency(Frequency {
        traits: traits.to_vec(),
        recency: recency.map(|(op, days)| Recency {
            op,
            days: NonZeroU32::new(days).unwrap(),
        }),
        op,
        count,
    })
}

fn err(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

/// Compiles one rule as segment 1 and evaluates it for `traits`.
fn eval(rule: &str, traits: &[(TraitId, i64)], as_of: i64) -> bool {
    let rules = SegmentRules::compile([(1, rule)]).unwrap();
    let mut out = Vec::new();
    rules.evaluate(&[1], traits, as_of, &mut out);
    match out.as_slice() {
        [] => false,
        [1] => true,
        other => panic!("unexpected output {other:?}"),
    }
}

#[test]
fn parses_every_form() {
    assert_eq!(parse("24T").unwrap(), t(24));
    assert_eq!(parse("  24t\n").unwrap(), t(24));
    assert_eq!(parse("24T AND 25T").unwrap(), Expr::And(vec![t(24), t(25)]));
    assert_eq!(
        parse("24T or 25T Or 26T").unwrap(),
        Expr::Or(vec![t(24), t(25), t(26)])
    );
    assert_eq!(parse("NOT 27T").unwrap(), not(t(27)));
    assert_eq!(parse("not not 27T").unwrap(), not(not(t(27))));
    assert_eq!(
        parse("24T AND NOT 25T").unwrap(),
        Expr::And(vec![t(24), not(t(25))])
    );
    assert_eq!(parse("((24T))").unwrap(), t(24));
    assert_eq!(
        parse("(24T AND 26T) OR NOT 27T").unwrap(),
        Expr::Or(vec![Expr::And(vec![t(24), t(26)]), not(t(27))])
    );
    assert_eq!(
        parse("FREQUENCY([24T,25T] >= 7D) >= 1").unwrap(),
        freq(
            &[24, 25],
            Some((RecencyOp::AtLeastAgo, 7)),
            FrequencyOp::AtLeast,
            1
        )
    );
    assert_eq!(
        parse("frequency( [ 24T ] <= 30d ) == 1").unwrap(),
        freq(
            &[24],
            Some((RecencyOp::Within, 30)),
            FrequencyOp::Exactly,
            1
        )
    );
    assert_eq!(
        parse("FREQUENCY([1000T]) <= 5").unwrap(),
        freq(&[1000], None, FrequencyOp::AtMost, 5)
    );
    assert_eq!(
        parse("FREQUENCY([1000T] => 2D) => 0").unwrap(),
        freq(
            &[1000],
            Some((RecencyOp::AtLeastAgo, 2)),
            FrequencyOp::AtLeast,
            0
        )
    );
    assert_eq!(parse("4294967295T").unwrap(), t(u32::MAX));
    assert_eq!(
        parse("24T\tAND\n(\r\n25T)").unwrap(),
        Expr::And(vec![t(24), t(25)])
    );
}

#[test]
fn precedence_is_parens_not_and_or() {
    assert_eq!(
        parse("24T OR 25T AND NOT 26T").unwrap(),
        Expr::Or(vec![t(24), Expr::And(vec![t(25), not(t(26))])])
    );
    assert_eq!(
        parse("NOT 24T AND 25T").unwrap(),
        Expr::And(vec![not(t(24)), t(25)])
    );
    assert_eq!(
        parse("NOT (24T AND 25T)").unwrap(),
        not(Expr::And(vec![t(24), t(25)]))
    );
    assert_eq!(
        parse("24T AND 25T OR 26T AND 27T").unwrap(),
        Expr::Or(vec![
            Expr::And(vec![t(24), t(25)]),
            Expr::And(vec![t(26), t(27)])
        ])
    );
    assert_eq!(
        parse("(24T OR 25T) AND 26T").unwrap(),
        Expr::And(vec![Expr::Or(vec![t(24), t(25)]), t(26)])
    );
    // NOT without AND is an implied AND.
    assert_eq!(
        parse("24T NOT 25T").unwrap(),
        parse("24T AND NOT 25T").unwrap()
    );
    assert_eq!(
        parse("24T OR 25T NOT 26T").unwrap(),
        Expr::Or(vec![t(24), Expr::And(vec![t(25), not(t(26))])])
    );
    // Parentheses are kept as grouping, not flattened.
    assert_eq!(
        parse("24T AND (25T AND 26T)").unwrap(),
        Expr::And(vec![t(24), Expr::And(vec![t(25), t(26)])])
    );
}

#[test]
fn display_is_canonical_and_parses_back() {
    let cases = [
        ("24t", "24T"),
        ("24T or 25T and not 26T", "24T OR 25T AND NOT 26T"),
        ("24T NOT 25T", "24T AND NOT 25T"),
        ("(24T OR 25T) AND 26T", "(24T OR 25T) AND 26T"),
        ("24T OR (25T OR 26T)", "24T OR (25T OR 26T)"),
        ("24T AND (25T AND 26T)", "24T AND (25T AND 26T)"),
        ("NOT (24T OR 25T)", "NOT (24T OR 25T)"),
        ("not not 24T", "NOT NOT 24T"),
        (
            "frequency([24T,25T,24T]=>7d)>=1",
            "FREQUENCY([24T, 25T, 24T] >= 7D) >= 1",
        ),
        ("FREQUENCY([1T]) == 0", "FREQUENCY([1T]) == 0"),
        (
            "NOT FREQUENCY([1T] <= 3D) <= 2 OR 5T",
            "NOT FREQUENCY([1T] <= 3D) <= 2 OR 5T",
        ),
    ];
    for (text, canonical) in cases {
        let expr = parse(text).unwrap();
        assert_eq!(expr.to_string(), canonical, "{text}");
        assert_eq!(parse(canonical).unwrap(), expr, "{text}");
    }
}

#[test]
fn errors_name_the_position_and_the_problem() {
    let cases = [
        ("23T AND 24", "column 9: expected 'T' after trait id 24"),
        ("23T AND 24X", "column 9: expected 'T' after trait id 24"),
        ("24 T", "column 1: expected 'T' after trait id 24"),
        (
            "24TX",
            "column 4: expected a space, operator or bracket after 24T, found 'X'",
        ),
        (
            "",
            "column 1: the rule is empty; write an expression like 24T AND NOT 25T",
        ),
        (
            "   ",
            "column 4: the rule is empty; write an expression like 24T AND NOT 25T",
        ),
        (
            "24T AND",
            "column 8: expected a trait like 24T, NOT, FREQUENCY or '(', found end of rule",
        ),
        (
            "24T AND OR 25T",
            "column 9: expected a trait like 24T, NOT, FREQUENCY or '(', found 'OR'",
        ),
        (
            "24T 25T",
            "column 5: expected AND, OR, NOT, ')' or end of rule, found '25T'",
        ),
        ("24T)", "column 4: ')' has no matching '('"),
        (
            "(24T AND 25T",
            "column 13: expected ')' to close the '(' at column 1, found end of rule",
        ),
        (
            "24T AND\n  (25T OR",
            "line 2, column 10: expected a trait like 24T, NOT, FREQUENCY or '(', found end of rule",
        ),
        ("24T & 25T", "column 5: unexpected character '&'"),
        ("24T AND é", "column 9: unexpected character 'é'"),
        (
            "4294967296T",
            "column 1: number 4294967296 is out of range (largest is 4294967295)",
        ),
        (
            "FREQUENCY([24T]) > 1",
            "column 18: operator '>' is not supported; use >=, <= or ==",
        ),
        (
            "FREQUENCY([24T]) != 1",
            "column 18: operator '!=' is not supported; use >=, <= or ==",
        ),
        (
            "FREQUENCY([24T]) = 1",
            "column 18: operator '=' is not supported; use >=, <= or ==",
        ),
        (
            "FREQUENCY 24T",
            "column 11: expected '(' after FREQUENCY, found '24T'",
        ),
        (
            "FREQUENCY(24T)",
            "column 11: expected '[' after FREQUENCY(, found '24T'",
        ),
        (
            "FREQUENCY([]) >= 1",
            "column 12: FREQUENCY needs at least one trait between '[' and ']'",
        ),
        (
            "FREQUENCY([24T,]) >= 1",
            "column 16: expected a trait like 24T in the FREQUENCY list, found ']'",
        ),
        (
            "FREQUENCY([24T 25T]) >= 1",
            "column 16: expected ',' or ']' in the FREQUENCY list, found '25T'",
        ),
        (
            "FREQUENCY([24T] == 7D) >= 1",
            "column 17: recency takes >= or <=, found '=='",
        ),
        (
            "FREQUENCY([24T] >= 7) >= 1",
            "column 20: expected a number of days like 7D after the recency operator, found '7'",
        ),
        (
            "FREQUENCY([24T] >= 0D) >= 1",
            "column 20: recency must be greater than 0 days",
        ),
        (
            "FREQUENCY([24T] >= 7DX) >= 1",
            "column 22: expected a space, operator or bracket after 7D, found 'X'",
        ),
        (
            "FREQUENCY([24T] >= 7D >= 1",
            "column 23: expected ')' after the recency, found '>='",
        ),
        (
            "FREQUENCY([24T]",
            "column 16: expected ')', '>=' or '<=' after the FREQUENCY list, found end of rule",
        ),
        (
            "FREQUENCY([24T]) AND 25T",
            "column 18: expected >=, <= or == after FREQUENCY(...), found 'AND'",
        ),
        (
            "FREQUENCY([24T]) >= x",
            "column 21: expected a whole number after the frequency operator, found 'x'",
        ),
        (
            "FREQUENCY([24T]) >= 1x",
            "column 22: expected a space, operator or bracket after 1, found 'x'",
        ),
    ];
    for (text, message) in cases {
        assert_eq!(err(text), message, "{text:?}");
    }
    let long = format!("24T AND {}", "A".repeat(60));
    assert_eq!(
        err(&long),
        format!(
            "column 9: expected a trait like 24T, NOT, FREQUENCY or '(', found '{}...'",
            "A".repeat(40)
        )
    );
}

#[test]
fn nesting_is_limited() {
    let ok = format!("{}24T{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
    assert_eq!(parse(&ok).unwrap(), t(24));
    let deep = format!(
        "{}24T{}",
        "(".repeat(MAX_DEPTH + 1),
        ")".repeat(MAX_DEPTH + 1)
    );
    assert_eq!(parse(&deep).unwrap_err().problem, Problem::TooDeep);
    let nots = format!("{}24T", "NOT ".repeat(MAX_DEPTH + 1));
    assert_eq!(
        err(&nots),
        format!(
            "column {}: parentheses and NOT are nested deeper than 100 levels",
            4 * MAX_DEPTH + 1
        )
    );
    // Width is not depth: a long chain is fine.
    let wide = (1..=5000)
        .map(|i| format!("{i}T"))
        .collect::<Vec<_>>()
        .join(" AND ");
    assert!(matches!(parse(&wide).unwrap(), Expr::And(v) if v.len() == 5000));
}

#[test]
fn boolean_semantics() {
    let held = [(24, AS_OF), (26, AS_OF)];
    assert!(eval("24T", &held, AS_OF));
    assert!(!eval("25T", &held, AS_OF));
    assert!(eval("24T AND 26T", &held, AS_OF));
    assert!(!eval("24T AND 25T", &held, AS_OF));
    assert!(eval("25T OR 26T", &held, AS_OF));
    assert!(!eval("25T OR 27T", &held, AS_OF));
    assert!(eval("NOT 25T", &held, AS_OF));
    assert!(!eval("NOT 24T", &held, AS_OF));
    assert!(eval("24T AND NOT 25T", &held, AS_OF));
    assert!(!eval("24T AND NOT 26T", &held, AS_OF));
    // OR binds looser than AND: 24T OR (25T AND NOT 26T).
    assert!(eval("24T OR 25T AND NOT 26T", &held, AS_OF));
    assert!(!eval("24T OR 25T AND NOT 26T", &[(26, AS_OF)], AS_OF));
    assert!(eval("24T OR 25T AND NOT 26T", &[(25, AS_OF)], AS_OF));
    assert!(!eval("(24T OR 25T) AND NOT 26T", &held, AS_OF));
    assert!(eval("NOT (24T AND 25T)", &held, AS_OF));
    assert!(!eval("NOT (24T OR 25T)", &held, AS_OF));
    assert!(eval("(24T AND 26T) OR NOT 27T", &[], AS_OF));
}

#[test]
fn recency_boundaries_are_inclusive() {
    let within = "FREQUENCY([24T] <= 7D) >= 1";
    let ago = "FREQUENCY([24T] >= 7D) >= 1";
    let cutoff = AS_OF - 7 * DAY;
    for (realized_at, want_within, want_ago) in [
        (AS_OF, true, false),
        (cutoff + 1, true, false),
        (cutoff, true, true),
        (cutoff - 1, false, true),
        (AS_OF + DAY, true, false),
    ] {
        let traits = [(24, realized_at)];
        assert_eq!(
            eval(within, &traits, AS_OF),
            want_within,
            "within at {realized_at}"
        );
        assert_eq!(eval(ago, &traits, AS_OF), want_ago, "ago at {realized_at}");
    }
    assert!(!eval(within, &[], AS_OF));
    assert!(!eval(ago, &[], AS_OF));
    // Extreme times neither overflow nor saturate: the cutoff lies below i64::MIN.
    assert!(!eval(ago, &[(24, i64::MIN)], i64::MIN));
    assert!(eval(within, &[(24, i64::MIN)], i64::MIN));
    assert!(eval(within, &[(24, i64::MAX)], i64::MAX));
    assert!(eval(ago, &[(24, i64::MIN)], i64::MAX));
}

#[test]
fn frequency_counts_distinct_listed_traits() {
    let traits = [
        (1, AS_OF),
        (2, AS_OF - 10 * DAY),
        (3, AS_OF - 2 * DAY),
        (9, AS_OF),
    ];
    let count_is = |rule_list: &str, rec: &str, n: u32| {
        let rule = format!("FREQUENCY([{rule_list}]{rec}) == {n}");
        eval(&rule, &traits, AS_OF)
    };
    assert!(count_is("1T,2T,3T", "", 3));
    assert!(count_is("1T,2T,3T,4T", "", 3));
    assert!(count_is("1T,1T,1T", "", 1));
    assert!(count_is("4T,5T", "", 0));
    assert!(count_is("1T,2T,3T", " <= 5D", 2));
    assert!(count_is("1T,2T,3T", " >= 5D", 1));
    assert!(count_is("1T,2T,3T", " >= 2D", 2));
    // More listed traits than held ones takes the other lookup path.
    assert!(count_is("1T,2T,3T,4T,5T,6T,7T,8T,9T", "", 4));
    assert!(count_is("1T,2T,3T,4T,5T,6T,7T,8T,9T", " <= 1D", 2));

    assert!(eval("FREQUENCY([1T,2T]) >= 2", &traits, AS_OF));
    assert!(!eval("FREQUENCY([1T,2T]) >= 3", &traits, AS_OF));
    assert!(eval("FREQUENCY([1T,2T]) <= 2", &traits, AS_OF));
    assert!(!eval("FREQUENCY([1T,2T]) <= 1", &traits, AS_OF));
    assert!(eval("FREQUENCY([1T,2T]) >= 0", &[], AS_OF));
    assert!(eval("FREQUENCY([1000T]) <= 5", &[], AS_OF));
}

#[test]
fn touching_empty_qualifies_and_indexes() {
    let rules = SegmentRules::compile([
        (30, "NOT 27T"),
        (10, "24T AND 26T"),
        (20, "FREQUENCY([26T, 28T, 26T] <= 7D) >= 1 OR 24T"),
        (40, "FREQUENCY([29T]) <= 5"),
        (50, "NOT (24T OR NOT 25T)"),
    ])
    .unwrap();
    assert_eq!(rules.ids(), [10, 20, 30, 40, 50]);
    assert_eq!(rules.touching(24), [10, 20, 50]);
    assert_eq!(rules.touching(26), [10, 20]);
    assert_eq!(rules.touching(27), [30]);
    assert_eq!(rules.touching(28), [20]);
    assert_eq!(rules.touching(29), [40]);
    assert_eq!(rules.touching(25), [50]);
    assert_eq!(rules.touching(99), [] as [u32; 0]);
    assert_eq!(rules.referenced_traits(), [24, 25, 26, 27, 28, 29]);
    assert_eq!(rules.empty_qualifies(), [30, 40]);
    assert_eq!(rules.time_dependent(), [20]);

    let mut out = vec![7, 7];
    rules.candidates(&[28, 24, 24], false, &mut out);
    assert_eq!(out, [10, 20, 50]);
    rules.candidates(&[28], true, &mut out);
    assert_eq!(out, [20, 30, 40]);
    rules.candidates(&[], false, &mut out);
    assert_eq!(out, [] as [u32; 0]);
}

#[test]
fn evaluate_appends_qualified_candidates_in_order() {
    let rules = SegmentRules::compile([
        (10, "24T AND 26T"),
        (20, "25T"),
        (30, "NOT 27T"),
        (40, "26T"),
    ])
    .unwrap();
    let profile = [(24, AS_OF), (26, AS_OF)];
    let mut out = vec![1];
    rules.evaluate(&[5, 10, 15, 20, 30, 40, 99], &profile, AS_OF, &mut out);
    assert_eq!(out, [1, 10, 30, 40]);
    out.clear();
    rules.evaluate(&[40], &profile, AS_OF, &mut out);
    assert_eq!(out, [40]);
    out.clear();
    rules.evaluate(rules.ids(), &[(27, AS_OF)], AS_OF, &mut out);
    assert_eq!(out, [] as [u32; 0]);
}

#[test]
fn compile_lists_every_bad_rule_and_repeated_ids() {
    let errors = SegmentRules::compile([
        (1003, "24T AND"),
        (1001, "23T AND 24"),
        (1002, "24T"),
        (1002, "25T"),
        (1004, "26T"),
        (1004, "oops"),
    ])
    .unwrap_err();
    let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        messages,
        [
            "segment 1001, column 9: expected 'T' after trait id 24",
            "segment 1002 is defined more than once; give each segment one rule",
            "segment 1003, column 8: expected a trait like 24T, NOT, FREQUENCY or '(', found end of rule",
            "segment 1004, column 1: expected a trait like 24T, NOT, FREQUENCY or '(', found 'oops'",
            "segment 1004 is defined more than once; give each segment one rule",
        ]
    );
}

#[test]
fn empty_catalog_and_hand_built_edge_cases() {
    let rules = SegmentRules::compile([]).unwrap();
    assert_eq!(rules.ids(), [] as [u32; 0]);
    assert_eq!(rules.touching(1), [] as [u32; 0]);
    let mut out = Vec::new();
    rules.evaluate(&[1, 2], &[(1, 0)], 0, &mut out);
    assert!(out.is_empty());

    // Operand-less And/Or (never produced by `parse`) are true and false.
    let rules = SegmentRules::from_exprs([(1, Expr::And(vec![])), (2, Expr::Or(vec![]))]).unwrap();
    assert_eq!(rules.empty_qualifies(), [1]);
}

#[test]
fn compiles_a_large_catalog() {
    let texts: Vec<(u32, String)> = (0..20_000u32)
        .map(|s| {
            let base = s * 7;
            (
                s,
                format!(
                    "({}T AND {}T) OR NOT {}T AND FREQUENCY([{}T,{}T,{}T] <= 30D) >= 2 OR ({}T AND NOT {}T OR {}T)",
                    base, base + 1, base + 2, base + 3, base + 4, base + 5, base + 6, base, base + 1
                ),
            )
        })
        .collect();
    let rules = SegmentRules::compile(texts.iter().map(|(s, t)| (*s, t.as_str()))).unwrap();
    assert_eq!(rules.ids().len(), 20_000);
    assert_eq!(rules.touching(7 * 123 + 1), [123]);
    assert_eq!(rules.referenced_traits().len(), 140_000);
    assert_eq!(rules.time_dependent().len(), 20_000);
    let mut out = Vec::new();
    rules.evaluate(&[123], &[(861, 0), (862, 0)], 0, &mut out);
    assert_eq!(out, [123]);
}

/// `touching` answers the same through its dense table (trait ids close together) and through
/// the binary search (ids too far apart for the table), at and past both ends.
#[test]
fn touching_is_the_same_dense_and_sparse() {
    for far in [40, 3_000_000_000] {
        let second = format!("26T OR {far}T");
        let rules = SegmentRules::compile([(1, "24T AND 26T"), (2, second.as_str())]).unwrap();
        assert_eq!(rules.touching(24), [1], "far = {far}");
        assert_eq!(rules.touching(26), [1, 2]);
        assert_eq!(rules.touching(far), [2]);
        for none in [0, 23, 25, 27, far - 1, far + 1, u32::MAX] {
            assert_eq!(
                rules.touching(none),
                [] as [u32; 0],
                "trait {none}, far = {far}"
            );
        }
    }
}
