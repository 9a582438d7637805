//! The item grammar of a record's ITEMS text: `d_sid=N`, `d_unsid=N`, `N:0`, `N:-1`, `ic=V`,
//! bare `V` and `KEY=VALUE` (CONTRACT §3, AAM-REFERENCE §2.3-§2.5).
//!
//! Input is the raw ITEMS bytes of one record; output is a lazy sequence of [`Item`]s borrowing
//! them. A malformed item is an [`Item::Malformed`], never a line error. Rule evaluation and
//! counting happen downstream; keys are compared exactly there and values with
//! `<[u8]>::eq_ignore_ascii_case`, so nothing here lowercases or allocates.

use std::fmt;
use std::iter::FusedIterator;

use memchr::{memchr, memchr2};

use super::line::trim_spaces;
use crate::model::TraitId;

/// Walks the items of `raw` (a record's ITEMS text) in order.
///
/// Items are split on commas outside double quotes; items that are empty after trimming ASCII
/// spaces are skipped and not counted anywhere. See [`Item`] for what each item becomes.
///
/// ```
/// use segmill::parse::{Item, Malformed, items};
/// let got: Vec<_> = items(br#" d_sid=24,, 28:-1, "model" = "pickup, truck", 52, 24:5"#).collect();
/// assert_eq!(got, [
///     Item::Realize(24),
///     Item::Remove(28),
///     Item::Signal { key: b"model", value: b"pickup, truck" },
///     Item::Ic(b"52"),
///     Item::Malformed(Malformed::BadColonForm),
/// ]);
/// ```
pub fn items(raw: &[u8]) -> Items<'_> {
    Items { rest: Some(raw) }
}

/// Iterator over the items of a record; see [`items`].
#[derive(Clone, Debug)]
pub struct Items<'a> {
    /// The unsplit remainder, starting after the last comma consumed; `None` when done.
    rest: Option<&'a [u8]>,
}

impl<'a> Iterator for Items<'a> {
    type Item = Item<'a>;

    fn next(&mut self) -> Option<Item<'a>> {
        let rest = self.rest?;
        if let Some((id, after)) = plain_realize(rest) {
            self.rest = after;
            return Some(Item::Realize(id));
        }
        self.next_general()
    }
}

impl<'a> Items<'a> {
    /// [`Iterator::next`] through the whole grammar, without the `d_sid=N` shortcut.
    fn next_general(&mut self) -> Option<Item<'a>> {
        loop {
            let rest = self.rest?;
            let token = match next_token(rest) {
                Token::Complete { item, rest } => {
                    self.rest = rest;
                    item
                }
                Token::Unbalanced => {
                    self.rest = None;
                    return Some(Item::Malformed(Malformed::UnbalancedQuote));
                }
            };
            let token = trim_spaces(token);
            if !token.is_empty() {
                return Some(parse_item(token));
            }
        }
    }
}

impl FusedIterator for Items<'_> {}

/// The most digits [`plain_realize`] reads: any 9 digits fit a `TraitId`.
const PLAIN_DIGITS: usize = 9;

/// The shortcut for the item nearly every line is made of: when `rest` starts with `d_sid=`,
/// 1 to 9 digits and then a comma or its end, that item's trait and what follows the comma
/// (`None` at the end), just as the whole grammar reads them. Anything else (spaces, quotes, a
/// longer number, another key) gives `None`, and the whole grammar reads the item.
#[inline]
fn plain_realize(rest: &[u8]) -> Option<(TraitId, Option<&[u8]>)> {
    let digits = rest.strip_prefix(b"d_sid=")?;
    let n = digits
        .iter()
        .take(PLAIN_DIGITS + 1)
        .take_while(|b| b.is_ascii_digit())
        .count();
    if n == 0 || n > PLAIN_DIGITS {
        return None;
    }
    let after = match digits.get(n) {
        None => None,
        Some(b',') => Some(digits.get(n + 1..).unwrap_or_default()),
        Some(_) => return None,
    };
    let id = digits[..n]
        .iter()
        .fold(0, |id: TraitId, &d| id * 10 + TraitId::from(d - b'0'));
    Some((id, after))
}

/// One item of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Item<'a> {
    /// `d_sid=N`: realize trait N.
    Realize(TraitId),
    /// `d_unsid=N`, `N:0` or `N:-1`: remove trait N.
    Remove(TraitId),
    /// `KEY=VALUE` with quotes stripped and one leading `-` dropped from the key. The key is
    /// never empty and never `d_sid`, `d_unsid` or `ic`; the value may be empty (`KEY=`).
    Signal {
        /// The key, exact (case-sensitive).
        key: &'a [u8],
        /// The value; compare it ASCII case-insensitively.
        value: &'a [u8],
    },
    /// `ic=V`, a bare `V` or a bare quoted `"V"`: the signal `ic == V`. Never empty.
    Ic(&'a [u8]),
    /// A malformed item: counted as malformed and as an unused signal.
    Malformed(Malformed),
}

/// Why an item is malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Malformed {
    /// A double quote is never closed; the rest of the line is this one item.
    UnbalancedQuote,
    /// Nothing before `=` (`=5`, `""=5`, `-=5`).
    EmptyKey,
    /// `d_sid=`, `d_unsid=`, `ic=` (or `=""`), or a bare `""`.
    EmptyValue,
    /// The trait ID of `d_sid`, `d_unsid`, `N:0` or `N:-1` is not decimal or does not fit `u32`.
    BadTraitId,
    /// `N:X` with N all digits and X other than `0` or `-1` (e.g. `24:5`).
    BadColonForm,
    /// A double quote that does not wrap a whole key or value (`a"b"=c`, `k=v"x"`).
    StrayQuote,
}

impl Malformed {
    /// Human text for receipts; the caller adds file and line number.
    pub fn reason(&self) -> &'static str {
        match self {
            Malformed::UnbalancedQuote => {
                "unbalanced double quote: the rest of the line is one malformed item"
            }
            Malformed::EmptyKey => "empty key before '='",
            Malformed::EmptyValue => {
                "empty value for d_sid, d_unsid or ic, or an empty quoted item"
            }
            Malformed::BadTraitId => "trait ID is not a decimal number that fits 32 bits",
            Malformed::BadColonForm => "TRAIT:N with N other than 0 or -1",
            Malformed::StrayQuote => "double quote that does not wrap a whole key or value",
        }
    }
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

/// The next comma-separated token of `rest`.
enum Token<'a> {
    /// An item (untrimmed) and what follows its comma (`None` if the item ended the text).
    Complete {
        item: &'a [u8],
        rest: Option<&'a [u8]>,
    },
    /// A quote opened in this token is never closed.
    Unbalanced,
}

/// Splits off the first token of `rest` at the first comma outside double quotes.
fn next_token(rest: &[u8]) -> Token<'_> {
    let mut pos = 0;
    loop {
        let Some(tail) = rest.get(pos..) else {
            return Token::Complete {
                item: rest,
                rest: None,
            };
        };
        let Some(found) = memchr2(b',', b'"', tail) else {
            return Token::Complete {
                item: rest,
                rest: None,
            };
        };
        let at = pos + found;
        if tail.get(found) == Some(&b',') {
            let (item, from_comma) = rest.split_at(at);
            return Token::Complete {
                item,
                rest: Some(from_comma.get(1..).unwrap_or_default()),
            };
        }
        // An opening quote: commas are data until the closing one.
        let quoted = rest.get(at + 1..).unwrap_or_default();
        match memchr(b'"', quoted) {
            Some(close) => pos = at + 1 + close + 1,
            None => return Token::Unbalanced,
        }
    }
}

/// Parses one trimmed, non-empty token with balanced quotes.
fn parse_item(token: &[u8]) -> Item<'_> {
    let parsed = match find_unquoted_eq(token) {
        Some(eq) => {
            let (key, from_eq) = token.split_at(eq);
            key_value(
                trim_spaces(key),
                trim_spaces(from_eq.get(1..).unwrap_or_default()),
            )
        }
        None => bare(token),
    };
    parsed.unwrap_or_else(Item::Malformed)
}

/// The index of the first `=` outside double quotes.
fn find_unquoted_eq(token: &[u8]) -> Option<usize> {
    let mut pos = 0;
    loop {
        let found = memchr2(b'=', b'"', token.get(pos..)?)?;
        let at = pos + found;
        if token.get(at) == Some(&b'=') {
            return Some(at);
        }
        let close = memchr(b'"', token.get(at + 1..)?)?;
        pos = at + 1 + close + 1;
    }
}

/// `KEY=VALUE`, both parts trimmed.
fn key_value<'a>(key: &'a [u8], value: &'a [u8]) -> Result<Item<'a>, Malformed> {
    let key = unquote(key)?;
    let key = key.strip_prefix(b"-").unwrap_or(key);
    if key.is_empty() {
        return Err(Malformed::EmptyKey);
    }
    let value = unquote(value)?;
    match key {
        b"d_sid" => trait_id(value).map(Item::Realize),
        b"d_unsid" => trait_id(value).map(Item::Remove),
        b"ic" if value.is_empty() => Err(Malformed::EmptyValue),
        b"ic" => Ok(Item::Ic(value)),
        _ => Ok(Item::Signal { key, value }),
    }
}

/// An item without `=` outside quotes: `"V"`, `N:0`, `N:-1`, `N:X` or `V`.
fn bare(token: &[u8]) -> Result<Item<'_>, Malformed> {
    let value = unquote(token)?;
    if value.len() != token.len() {
        // It was quoted: always an ic value, never a colon form.
        return if value.is_empty() {
            Err(Malformed::EmptyValue)
        } else {
            Ok(Item::Ic(value))
        };
    }
    if let Some(colon) = memchr(b':', token) {
        let (id, from_colon) = token.split_at(colon);
        if !id.is_empty() && id.iter().all(u8::is_ascii_digit) {
            return match from_colon.get(1..).unwrap_or_default() {
                b"0" | b"-1" => trait_id(id).map(Item::Remove),
                _ => Err(Malformed::BadColonForm),
            };
        }
    }
    Ok(Item::Ic(token))
}

/// `part` without the double quotes that wrap it whole; unchanged if it has no quote.
fn unquote(part: &[u8]) -> Result<&[u8], Malformed> {
    if memchr(b'"', part).is_none() {
        return Ok(part);
    }
    match part.strip_prefix(b"\"").and_then(|p| p.strip_suffix(b"\"")) {
        Some(inner) if memchr(b'"', inner).is_none() => Ok(inner),
        _ => Err(Malformed::StrayQuote),
    }
}

/// A decimal trait ID: ASCII digits only, fitting `u32`. Empty is [`Malformed::EmptyValue`].
fn trait_id(digits: &[u8]) -> Result<TraitId, Malformed> {
    if digits.is_empty() {
        return Err(Malformed::EmptyValue);
    }
    digits.iter().try_fold(0 as TraitId, |acc, &b| {
        let digit = b.wrapping_sub(b'0');
        if digit > 9 {
            return Err(Malformed::BadTraitId);
        }
        acc.checked_mul(10)
            .and_then(|v| v.checked_add(TraitId::from(digit)))
            .ok_or(Malformed::BadTraitId)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{LineKind, parse_line};

    fn all(raw: &[u8]) -> Vec<Item<'_>> {
        items(raw).collect()
    }

    fn sig<'a>(key: &'a str, value: &'a str) -> Item<'a> {
        Item::Signal {
            key: key.as_bytes(),
            value: value.as_bytes(),
        }
    }

    fn bad(m: Malformed) -> Item<'static> {
        Item::Malformed(m)
    }

    /// The items of a full line, for the AAM examples that include the ID and TAB.
    fn line_items(line: &[u8]) -> Vec<Item<'_>> {
        match parse_line(line, false) {
            LineKind::Record(r) => r.items().collect(),
            other => panic!("expected a record, got {other:?}"),
        }
    }

    const UUID: &str = "59767559181262060060278870901087098252";

    #[test]
    fn matrix_add_remove_forms() {
        // AAM-REFERENCE §2.7 rows 1-2 (and 5-6, 9-10, 13-14: same items, other IDs).
        let add = format!("{UUID} \t d_sid=24, d_sid=26, d_sid=27");
        let want = [Item::Realize(24), Item::Realize(26), Item::Realize(27)];
        assert_eq!(line_items(add.as_bytes()), want);
        let want = [Item::Remove(24), Item::Remove(26), Item::Remove(27)];
        for items in [
            "d_unsid=24, d_unsid=26, d_unsid=27",
            "24:0, 26:0, 27:0",
            "24:-1, 26:-1, 27:-1",
        ] {
            let line = format!("{UUID} \t {items}");
            assert_eq!(line_items(line.as_bytes()), want, "{items}");
        }
        // §2.3: `...<TAB>28:0, 29:0`.
        assert_eq!(all(b"28:0, 29:0"), [Item::Remove(28), Item::Remove(29)]);
    }

    #[test]
    fn matrix_key_value_forms() {
        // AAM-REFERENCE §2.7 row 3.
        let want = [sig("product", "tablet"), sig("product", "phone")];
        for items in [
            r#"product = tablet, product = phone"#,
            r#""product" = "tablet", "product" = "phone""#,
        ] {
            let line = format!("{UUID} \t {items}");
            assert_eq!(line_items(line.as_bytes()), want, "{items}");
        }
    }

    #[test]
    fn matrix_ic_forms() {
        // AAM-REFERENCE §2.7 row 4.
        let line = format!("{UUID} \t 30608,50354,50338,50352,30626");
        let want = [
            Item::Ic(b"30608"),
            Item::Ic(b"50354"),
            Item::Ic(b"50338"),
            Item::Ic(b"50352"),
            Item::Ic(b"30626"),
        ];
        assert_eq!(line_items(line.as_bytes()), want);
        let line = format!("{UUID} \t ic=52,ic=55");
        assert_eq!(
            line_items(line.as_bytes()),
            [Item::Ic(b"52"), Item::Ic(b"55")]
        );
    }

    #[test]
    fn matrix_device_and_dpuuid_rows() {
        // Rows 5-16: GAID, IDFA and DPUUID with the same item forms.
        for id in [
            "e4fe9bde-caa0-47b6-908d-ffba3fa184f2",
            "6D92078A-8246-4BA4-AE5B-76104861E7DC",
            "DBwFoc3dhfMNCFBh2M4F9ZkJEXMNnRDh2PXvnI1",
        ] {
            let line = format!("{id} \t d_sid=24, d_sid=25, d_sid=26");
            assert_eq!(
                line_items(line.as_bytes()),
                [Item::Realize(24), Item::Realize(25), Item::Realize(26)]
            );
            let line = format!("{id} \t d_unsid=24, d_unsid=26, d_unsid=27");
            assert_eq!(
                line_items(line.as_bytes()),
                [Item::Remove(24), Item::Remove(26), Item::Remove(27)]
            );
            let line = format!("{id} \t product = tablet, product = phone");
            assert_eq!(
                line_items(line.as_bytes()),
                [sig("product", "tablet"), sig("product", "phone")]
            );
            let line = format!("{id} \t ic=52,ic=55");
            assert_eq!(
                line_items(line.as_bytes()),
                [Item::Ic(b"52"), Item::Ic(b"55")]
            );
        }
    }

    #[test]
    fn combined_line() {
        let line = format!("{UUID}\td_sid=24,d_sid=26,d_sid=27,d_unsid=28,d_unsid=29");
        let want = [
            Item::Realize(24),
            Item::Realize(26),
            Item::Realize(27),
            Item::Remove(28),
            Item::Remove(29),
        ];
        assert_eq!(line_items(line.as_bytes()), want);
    }

    #[test]
    fn section_2_3_key_value_examples() {
        assert_eq!(all(br#""age"="32""#), [sig("age", "32")]);
        assert_eq!(all(br#""gender"=m"#), [sig("gender", "m")]);
        assert_eq!(
            all(br#"model = "pickup truck""#),
            [sig("model", "pickup truck")]
        );
        assert_eq!(all(b"product = tablet"), [sig("product", "tablet")]);
        assert_eq!(all(br#""key" = value"#), [sig("key", "value")]);
    }

    #[test]
    fn section_2_4_quotes_and_dashes() {
        let want = [sig("d_city", "New York"), sig("d_city", "San Francisco")];
        assert_eq!(
            all(br#"d_city = "New York", d_city = "San Francisco""#),
            want
        );
        assert_eq!(
            all(br#""d_city" = "New York", "d_city" = "San Francisco""#),
            want
        );
        assert_eq!(all(b"-product = camera"), [sig("product", "camera")]);
        assert_eq!(all(br#""-product" = camera"#), [sig("product", "camera")]);
        // Exactly one dash is dropped.
        assert_eq!(all(b"--product=camera"), [sig("-product", "camera")]);
        // The dash rule comes before the reserved keys.
        assert_eq!(
            all(b"-d_sid=24, -d_unsid=25, -ic=x"),
            [Item::Realize(24), Item::Remove(25), Item::Ic(b"x")]
        );
        // A dash outside the quotes is a stray-quote key.
        assert_eq!(all(br#"-"product"=camera"#), [bad(Malformed::StrayQuote)]);
        // A dash on a value or a bare item is data.
        assert_eq!(all(b"k=-1, -abc"), [sig("k", "-1"), Item::Ic(b"-abc")]);
    }

    #[test]
    fn adobe_sample_with_crlf_no_final_newline_and_empty_item() {
        // Shape of `[BDT]assets/ftp_dpm_1234_1445374061.overwrite` (AAM-REFERENCE §2.5).
        let chunk = concat!(
            "1060413022\t\"Product\"=\"3 Months  Subscription| Free Base Product for PIP Outbound|x-1: 2.0\",",
            "\"TotalSalesAmount\"=\"39.99\",,\"Calls_Before_Sale\"=\"0\"\r\n",
            "1060413023\t\"Calls_Before_Sale\"=\"2\""
        );
        let mut got = Vec::new();
        for (n, line) in crate::parse::lines(chunk.as_bytes(), 1) {
            let LineKind::Record(r) = parse_line(line, false) else {
                panic!("line {n} is not a record");
            };
            got.push((n, r.id, r.items().collect::<Vec<_>>()));
        }
        let want: Vec<(u64, &[u8], Vec<Item<'_>>)> = vec![
            (
                1,
                b"1060413022",
                vec![
                    sig(
                        "Product",
                        "3 Months  Subscription| Free Base Product for PIP Outbound|x-1: 2.0",
                    ),
                    sig("TotalSalesAmount", "39.99"),
                    sig("Calls_Before_Sale", "0"),
                ],
            ),
            (2, b"1060413023", vec![sig("Calls_Before_Sale", "2")]),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn empty_items_are_skipped() {
        assert!(all(b"").is_empty());
        assert!(all(b"   ").is_empty());
        assert!(all(b",,, ,").is_empty());
        assert_eq!(all(b",a,"), [Item::Ic(b"a")]);
        assert_eq!(all(b"a , , b"), [Item::Ic(b"a"), Item::Ic(b"b")]);
    }

    #[test]
    fn quoted_values_with_commas_and_equals() {
        assert_eq!(
            all(br#"k="a,b=c", x=1"#),
            [sig("k", "a,b=c"), sig("x", "1")]
        );
        assert_eq!(all(br#""a=b"="c""#), [sig("a=b", "c")]);
        assert_eq!(all(br#""a,b""#), [Item::Ic(b"a,b")]);
        assert_eq!(all(br#""=x""#), [Item::Ic(b"=x")]);
        // Spaces inside quotes are data; spaces around `=` and the item are not.
        assert_eq!(all(br#"  " k " =  " v "  "#), [sig(" k ", " v ")]);
        // An unquoted value may contain `=` after the first one.
        assert_eq!(all(b"k=a=b"), [sig("k", "a=b")]);
        // Inner spaces of unquoted parts are kept.
        assert_eq!(all(b"my key = my  value"), [sig("my key", "my  value")]);
    }

    #[test]
    fn unbalanced_quote_takes_the_rest_of_the_line() {
        assert_eq!(
            all(br#"d_sid=1, k="open, d_sid=2, d_sid=3"#),
            [Item::Realize(1), bad(Malformed::UnbalancedQuote)]
        );
        assert_eq!(all(br#"""", d_sid=2"#), [bad(Malformed::UnbalancedQuote)]);
        assert_eq!(all(br#"a"b"c"d"#), [bad(Malformed::UnbalancedQuote)]);
    }

    #[test]
    fn stray_quotes() {
        assert_eq!(all(br#"a"b"=c"#), [bad(Malformed::StrayQuote)]);
        assert_eq!(all(br#"k=v"x""#), [bad(Malformed::StrayQuote)]);
        assert_eq!(all(br#"k="a""b""#), [bad(Malformed::StrayQuote)]);
        assert_eq!(
            all(br#"ab"c,d"e, x"#),
            [bad(Malformed::StrayQuote), Item::Ic(b"x")]
        );
        assert_eq!(all(br#""a"b"#), [bad(Malformed::StrayQuote)]);
    }

    #[test]
    fn empty_keys_and_values() {
        assert_eq!(all(b"=5"), [bad(Malformed::EmptyKey)]);
        assert_eq!(all(br#"""=5"#), [bad(Malformed::EmptyKey)]);
        assert_eq!(all(b"-=5"), [bad(Malformed::EmptyKey)]);
        assert_eq!(all(b" = "), [bad(Malformed::EmptyKey)]);
        // Documented decision: an empty value is a signal, except for the reserved keys.
        assert_eq!(all(b"k="), [sig("k", "")]);
        assert_eq!(all(br#"k = """#), [sig("k", "")]);
        assert_eq!(
            all(b"d_sid=, d_unsid= , ic=, ic=\"\""),
            [bad(Malformed::EmptyValue); 4]
        );
        assert_eq!(all(br#""""#), [bad(Malformed::EmptyValue)]);
    }

    #[test]
    fn the_d_sid_shortcut_reads_what_the_grammar_reads() {
        // The shortcut's edges: 9 and 10 digits, leading zeros, a comma at the end, spaces,
        // quotes, another key after.
        let cases: [&[u8]; 12] = [
            b"d_sid=123456789",
            b"d_sid=1234567890",
            b"d_sid=4294967296",
            b"d_sid=007,d_sid=8,",
            b"d_sid=5 ,d_sid= 6",
            b"d_sid=\"7\",d_sid=",
            b"d_sid=9,,d_sid=10:0",
            b"d_sid=1x,d_sid=2",
            b"d_sid=3,d_sidx=4,d_unsid=3",
            b"d_sid=,",
            b"d_sid=12,-d_sid=13",
            b"d_sid=",
        ];
        for raw in cases {
            assert_eq!(all(raw), general(raw), "{}", String::from_utf8_lossy(raw));
        }
    }

    /// The items of `raw` through the whole grammar only.
    fn general(raw: &[u8]) -> Vec<Item<'_>> {
        let mut it = items(raw);
        std::iter::from_fn(|| it.next_general()).collect()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]
        /// The `d_sid=N` shortcut never changes what a line's items are.
        #[test]
        fn items_with_and_without_the_shortcut_agree(
            parts in proptest::collection::vec(
                proptest::sample::select(vec![
                    "d_sid=", "d_sid=7", "d_sid=123456789", "d_sid=4294967296", "d_unsid=",
                    "0", "42", ",", " ", "\"", "=", ":", "-1", "x", "ic=",
                ]),
                0..12,
            )
        ) {
            let raw = parts.concat().into_bytes();
            proptest::prop_assert_eq!(all(&raw), general(&raw));
        }
    }

    #[test]
    fn trait_ids() {
        assert_eq!(
            all(br#"d_sid="24", d_unsid = "25""#),
            [Item::Realize(24), Item::Remove(25)]
        );
        assert_eq!(
            all(b"d_sid=0, d_sid=007"),
            [Item::Realize(0), Item::Realize(7)]
        );
        assert_eq!(all(b"d_sid=4294967295"), [Item::Realize(u32::MAX)]);
        assert_eq!(all(b"d_sid=4294967296"), [bad(Malformed::BadTraitId)]);
        assert_eq!(
            all(b"d_unsid=99999999999999999999"),
            [bad(Malformed::BadTraitId)]
        );
        for raw in [
            "d_sid=abc",
            "d_sid=-1",
            "d_sid=+1",
            "d_sid=1 2",
            "d_sid=1.0",
            r#"d_sid=" 24""#,
        ] {
            assert_eq!(all(raw.as_bytes()), [bad(Malformed::BadTraitId)], "{raw}");
        }
        // Keys are case-sensitive: `D_SID` is an ordinary signal.
        assert_eq!(all(b"D_SID=24, IC=5"), [sig("D_SID", "24"), sig("IC", "5")]);
    }

    #[test]
    fn colon_forms() {
        assert_eq!(all(b"24:0, 24:-1"), [Item::Remove(24), Item::Remove(24)]);
        assert_eq!(all(b"4294967295:0"), [Item::Remove(u32::MAX)]);
        assert_eq!(all(b"4294967296:-1"), [bad(Malformed::BadTraitId)]);
        for raw in ["24:5", "24:1", "24:", "24:00", "24:-0", "24:-1:0", "24:0 x"] {
            assert_eq!(all(raw.as_bytes()), [bad(Malformed::BadColonForm)], "{raw}");
        }
        // Not all digits before the colon, or spaces around it: a bare ic value.
        assert_eq!(
            all(b"abc:0, :0, 24 :0, 2a:0"),
            [
                Item::Ic(b"abc:0"),
                Item::Ic(b":0"),
                Item::Ic(b"24 :0"),
                Item::Ic(b"2a:0")
            ]
        );
        // Quoted: always ic.
        assert_eq!(all(br#""24:0""#), [Item::Ic(b"24:0")]);
        // With `=` it is a key-value pair.
        assert_eq!(all(b"k=24:5"), [sig("k", "24:5")]);
    }

    #[test]
    fn bare_values() {
        assert_eq!(
            all(b"123, abc, \"String ID\", d_sid"),
            [
                Item::Ic(b"123"),
                Item::Ic(b"abc"),
                Item::Ic(b"String ID"),
                Item::Ic(b"d_sid")
            ]
        );
    }

    #[test]
    fn typographic_quotes_are_plain_bytes() {
        // The docs' `“gender”=”female”,“luxury_shopper”=”yes”`: not quotes, so the curly
        // quotes stay part of the key and value.
        let got = all("“gender”=”female”,“luxury_shopper”=”yes”".as_bytes());
        assert_eq!(
            got,
            [
                sig("“gender”", "”female”"),
                sig("“luxury_shopper”", "”yes”")
            ]
        );
        assert_eq!(
            all("“a,b”".as_bytes()),
            [Item::Ic("“a".as_bytes()), Item::Ic("b”".as_bytes())]
        );
    }

    #[test]
    fn tabs_and_other_whitespace_are_not_trimmed() {
        assert_eq!(all(b"\tk=v\t"), [sig("\tk", "v\t")]);
    }

    #[test]
    fn reasons() {
        assert_eq!(
            Malformed::BadColonForm.reason(),
            "TRAIT:N with N other than 0 or -1"
        );
        assert_eq!(Malformed::EmptyKey.to_string(), "empty key before '='");
    }
}
