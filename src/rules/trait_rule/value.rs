//! Value semantics of trait-rule comparisons (CONTRACT §5): ASCII case-insensitive strings,
//! exact decimal numbers when both sides are `-?digits[.digits]`.
//!
//! Numbers are compared digit string against digit string, never through `f64`: a decimal is
//! viewed as (sign, integer digits without leading zeros, fraction digits without trailing
//! zeros), which is a unique form, so `1.50 == 01.5`, `-0 == 0.0` and
//! `12345678901234567890.1 > 12345678901234567890.09` hold exactly and any length works.
//! Nothing here allocates; [`Shape::prepare`] appends the canonical form to a caller's buffer.
//!
//! On the hot path both sides are analysed once ([`Shape::prepare`]: rule literals at compile
//! time, signal values once per line) and compared as [`View`]s, which costs a byte-slice
//! comparison instead of two decimal parses per comparison; [`equals`] and [`compare`] are the
//! reference the views are tested against.

use std::cmp::Ordering;

/// A decimal number viewed in place: `-?digits[.digits]`, normalized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Decimal<'a> {
    /// Negative and not zero.
    negative: bool,
    /// Integer digits without leading zeros (empty for zero).
    int: &'a [u8],
    /// Fraction digits without trailing zeros (empty for an integer).
    frac: &'a [u8],
}

impl<'a> Decimal<'a> {
    /// Views `text` as a decimal if it is exactly `-?digits[.digits]` (ASCII digits, at least
    /// one on each side of the dot); anything else (`+1`, `1.`, `.5`, `1e3`, ` 1`) is `None`.
    pub(crate) fn parse(text: &'a [u8]) -> Option<Decimal<'a>> {
        let (negative, unsigned) = match text.split_first() {
            Some((b'-', rest)) => (true, rest),
            _ => (false, text),
        };
        let (int, frac) = match memchr::memchr(b'.', unsigned) {
            Some(dot) => {
                let (int, dot_frac) = unsigned.split_at(dot);
                let frac = dot_frac.get(1..).unwrap_or_default();
                if frac.is_empty() {
                    return None;
                }
                (int, frac)
            }
            None => (unsigned, &[][..]),
        };
        if int.is_empty() || !int.iter().all(u8::is_ascii_digit) {
            return None;
        }
        if !frac.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let int = strip_leading_zeros(int);
        let frac = strip_trailing_zeros(frac);
        let is_zero = int.is_empty() && frac.is_empty();
        Some(Decimal {
            negative: negative && !is_zero,
            int,
            frac,
        })
    }

    /// Orders two decimals exactly.
    pub(crate) fn cmp(&self, other: &Decimal<'_>) -> Ordering {
        match (self.negative, other.negative) {
            (false, true) => Ordering::Greater,
            (true, false) => Ordering::Less,
            (false, false) => cmp_magnitude(self, other),
            (true, true) => cmp_magnitude(other, self),
        }
    }
}

/// Orders |a| and |b|: more integer digits is larger (no leading zeros), then digit by digit;
/// fractions without trailing zeros compare lexicographically (a prefix is smaller).
fn cmp_magnitude(a: &Decimal<'_>, b: &Decimal<'_>) -> Ordering {
    a.int
        .len()
        .cmp(&b.int.len())
        .then_with(|| a.int.cmp(b.int))
        .then_with(|| a.frac.cmp(b.frac))
}

fn strip_leading_zeros(digits: &[u8]) -> &[u8] {
    let zeros = digits.iter().take_while(|&&b| b == b'0').count();
    digits.get(zeros..).unwrap_or_default()
}

fn strip_trailing_zeros(digits: &[u8]) -> &[u8] {
    let zeros = digits.iter().rev().take_while(|&&b| b == b'0').count();
    digits.get(..digits.len() - zeros).unwrap_or_default()
}

/// Orders a signal value against a rule value: as decimals when both are decimals, else
/// byte by byte after ASCII lowercasing. The reference [`View::compare`] is tested against.
#[cfg(test)]
pub(crate) fn compare(signal: &[u8], rule: &[u8]) -> Ordering {
    match (Decimal::parse(signal), Decimal::parse(rule)) {
        (Some(a), Some(b)) => a.cmp(&b),
        _ => cmp_ignore_ascii_case(signal, rule),
    }
}

/// Whether a signal value equals a rule value under [`compare`]. The reference
/// [`View::equals`] is tested against.
#[cfg(test)]
pub(crate) fn equals(signal: &[u8], rule: &[u8]) -> bool {
    match (Decimal::parse(signal), Decimal::parse(rule)) {
        (Some(a), Some(b)) => a == b,
        // A decimal never equals a non-decimal ignoring case: lowercasing touches only
        // letters, which no decimal contains.
        _ => signal.eq_ignore_ascii_case(rule),
    }
}

/// Lexicographic order of the ASCII-lowercased bytes.
#[cfg(test)]
pub(crate) fn cmp_ignore_ascii_case(a: &[u8], b: &[u8]) -> Ordering {
    a.iter()
        .map(u8::to_ascii_lowercase)
        .cmp(b.iter().map(u8::to_ascii_lowercase))
}

/// Appends the canonical form of `value` to `out`: equal under [`equals`] exactly when the
/// canonical forms are equal. Decimals become `-?int[.frac]` normalized (`0` for zero),
/// anything else its ASCII lowercase.
#[cfg(test)]
pub(crate) fn write_canonical(value: &[u8], out: &mut Vec<u8>) {
    write_canonical_of(value, Decimal::parse(value), out);
}

/// [`write_canonical`] of `value`, already viewed as `decimal` (`Decimal::parse(value)`).
fn write_canonical_of(value: &[u8], decimal: Option<Decimal<'_>>, out: &mut Vec<u8>) {
    match decimal {
        Some(d) => {
            // A leading `#` keeps decimals apart from any string; none of the bytes written
            // for a string could start with it and still be a decimal, but the tag makes the
            // separation obvious rather than argued.
            out.push(b'#');
            if d.negative {
                out.push(b'-');
            }
            if d.int.is_empty() {
                out.push(b'0');
            } else {
                out.extend_from_slice(d.int);
            }
            if !d.frac.is_empty() {
                out.push(b'.');
                out.extend_from_slice(d.frac);
            }
        }
        None => {
            out.push(b'$');
            out.extend(value.iter().map(u8::to_ascii_lowercase));
        }
    }
}

/// Where a value's analysis lives in a buffer that [`Shape::prepare`] appended to: its
/// canonical form (as [`write_canonical`] writes it) and, for a decimal, the lengths of its
/// normalized parts. Positions instead of slices, so it can be kept without borrowing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Shape {
    /// The canonical form is `buf[start..start + len]`.
    start: u32,
    len: u32,
    /// Whether the value is a decimal (canonical form `#-?int[.frac]`, else `$lowercase`).
    decimal: bool,
    negative: bool,
    /// Normalized integer digits (0 for zero: the canonical form then holds `0`).
    int_len: u32,
    /// Normalized fraction digits.
    frac_len: u32,
}

/// A value ready for comparisons: see [`Shape::view`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct View<'a> {
    /// The ASCII lowercase of the value as written.
    pub(crate) lower: &'a [u8],
    /// The canonical form: equal exactly when the values are [`equals`].
    canonical: &'a [u8],
    /// The value as a decimal, if it is one.
    decimal: Option<Decimal<'a>>,
}

impl Shape {
    /// Appends the canonical form of `value` to `buf` and returns where it is. Values longer
    /// than `u32::MAX` bytes cannot occur (lines are capped far below); their shape would be
    /// clamped, never a panic.
    pub(crate) fn prepare(value: &[u8], buf: &mut Vec<u8>) -> Shape {
        let start = buf.len();
        let parsed = Decimal::parse(value);
        write_canonical_of(value, parsed, buf);
        let len = buf.len() - start;
        let to_u32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let (decimal, negative, int_len, frac_len) = match parsed {
            Some(d) => (true, d.negative, d.int.len(), d.frac.len()),
            None => (false, false, 0, 0),
        };
        Shape {
            start: to_u32(start),
            len: to_u32(len),
            decimal,
            negative,
            int_len: to_u32(int_len),
            frac_len: to_u32(frac_len),
        }
    }

    /// Views the value this shape was prepared from: `value` is that value, `buf` the buffer
    /// [`Shape::prepare`] appended to. O(1): nothing is parsed again.
    pub(crate) fn view<'a>(&self, value: &'a [u8], buf: &'a [u8]) -> View<'a> {
        let start = self.start as usize;
        let canonical = buf
            .get(start..start.saturating_add(self.len as usize))
            .unwrap_or_default();
        if !self.decimal {
            return View {
                lower: canonical.get(1..).unwrap_or_default(),
                canonical,
                decimal: None,
            };
        }
        // `#`, then `-` when negative, then the integer digits (or `0`), then `.frac`.
        let body = canonical
            .get(1 + usize::from(self.negative)..)
            .unwrap_or_default();
        let int = body.get(..self.int_len as usize).unwrap_or_default();
        let frac = body
            .len()
            .checked_sub(self.frac_len as usize)
            .and_then(|from| body.get(from..))
            .unwrap_or_default();
        View {
            // Lowercasing changes no byte of a decimal (digits, `-`, `.`).
            lower: value,
            canonical,
            decimal: Some(Decimal {
                negative: self.negative,
                int,
                frac,
            }),
        }
    }
}

impl<'a> View<'a> {
    /// The canonical form ([`write_canonical`]).
    pub(crate) fn canonical(&self) -> &'a [u8] {
        self.canonical
    }

    /// [`equals`] of the two values.
    pub(crate) fn equals(&self, rule: &View<'_>) -> bool {
        self.canonical == rule.canonical
    }

    /// [`compare`] of the two values (`self` the signal, `rule` the rule's value).
    pub(crate) fn compare(&self, rule: &View<'_>) -> Ordering {
        match (&self.decimal, &rule.decimal) {
            (Some(a), Some(b)) => a.cmp(b),
            _ => self.lower.cmp(rule.lower),
        }
    }
}

/// Whether `haystack` starts with `prefix`, ignoring ASCII case. The reference of
/// `startswith` (compiled: the lowercased signal against the lowercased prefix).
#[cfg(test)]
pub(crate) fn starts_with_ignore_case(haystack: &[u8], prefix: &[u8]) -> bool {
    haystack
        .get(..prefix.len())
        .is_some_and(|h| h.eq_ignore_ascii_case(prefix))
}

/// Whether `haystack` ends with `suffix`, ignoring ASCII case. The reference of `endswith`.
#[cfg(test)]
pub(crate) fn ends_with_ignore_case(haystack: &[u8], suffix: &[u8]) -> bool {
    haystack
        .len()
        .checked_sub(suffix.len())
        .and_then(|start| haystack.get(start..))
        .is_some_and(|h| h.eq_ignore_ascii_case(suffix))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::{Equal, Greater, Less};

    fn canon(v: &str) -> String {
        let mut out = Vec::new();
        write_canonical(v.as_bytes(), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn decimal_grammar() {
        for yes in [
            "0",
            "-0",
            "007",
            "1.5",
            "-1.50",
            "00.000",
            "123456789012345678901234567890",
        ] {
            assert!(Decimal::parse(yes.as_bytes()).is_some(), "{yes}");
        }
        for no in [
            "", "-", "+1", "1.", ".5", "1e3", " 1", "1 ", "1,5", "--1", "1.2.3", "½", "0x1",
        ] {
            assert!(Decimal::parse(no.as_bytes()).is_none(), "{no}");
        }
    }

    #[test]
    fn numbers_compare_exactly() {
        assert_eq!(compare(b"10", b"9"), Greater);
        assert_eq!(compare(b"9", b"10"), Less);
        assert_eq!(compare(b"1.00", b"1"), Equal);
        assert_eq!(compare(b"-0", b"0.000"), Equal);
        assert_eq!(compare(b"-1", b"0"), Less);
        assert_eq!(compare(b"-2", b"-10"), Greater);
        assert_eq!(compare(b"-2.5", b"-2.45"), Less);
        assert_eq!(compare(b"0.1", b"0.09"), Greater);
        assert_eq!(compare(b"0.5", b"0.51"), Less);
        assert_eq!(compare(b"007", b"7"), Equal);
        // Beyond f64 precision: these are equal as f64 but not as decimals.
        assert_eq!(compare(b"9007199254740993", b"9007199254740992"), Greater);
        assert_eq!(compare(b"0.30000000000000001", b"0.3"), Greater);
    }

    #[test]
    fn strings_compare_ignoring_ascii_case() {
        assert_eq!(compare(b"Gold", b"gold"), Equal);
        assert_eq!(compare(b"apple", b"Banana"), Less);
        assert_eq!(compare(b"ab", b"a"), Greater);
        // One side not a decimal: a string comparison, so "10" < "9a".
        assert_eq!(compare(b"10", b"9a"), Less);
        assert_eq!(compare(b"1.", b"1"), Greater);
        // Non-ASCII bytes are compared as they are.
        assert_eq!(compare("É".as_bytes(), "é".as_bytes()), Less);
        assert!(equals(b"GOLD", b"gold"));
        assert!(equals(b"1.0", b"1"));
        assert!(!equals(b"1.0", b"1.01"));
        assert!(!equals("É".as_bytes(), "é".as_bytes()));
    }

    #[test]
    fn canonical_forms() {
        assert_eq!(canon("Gold"), "$gold");
        assert_eq!(canon("007.50"), "#7.5");
        assert_eq!(canon("-0.0"), "#0");
        assert_eq!(canon("-12"), "#-12");
        assert_eq!(canon("0.25"), "#0.25");
        assert_eq!(canon("1."), "$1.");
        assert_eq!(canon(""), "$");
        for (a, b) in [
            ("1.0", "1"),
            ("ABC", "abc"),
            ("-0", "0"),
            ("x", "y"),
            ("1", "1a"),
        ] {
            assert_eq!(
                equals(a.as_bytes(), b.as_bytes()),
                canon(a) == canon(b),
                "{a} {b}"
            );
        }
    }

    #[test]
    fn views_agree_with_equals_and_compare() {
        let values = [
            "0",
            "-0",
            "0.0",
            "-0.000",
            "007",
            "7",
            "7.0",
            "-7",
            "1.5",
            "1.50",
            "-1.5",
            "01.05",
            "10",
            "9",
            "9a",
            "1.",
            ".5",
            "",
            "-",
            "Gold",
            "gold",
            "GOLDEN",
            "É",
            "é",
            "a-1",
            "123456789012345678901234567890.5",
            "123456789012345678901234567890.50001",
        ];
        // Shapes of many values share one buffer, as in a line's scratch.
        let mut buf = Vec::new();
        let shapes: Vec<Shape> = values
            .iter()
            .map(|v| Shape::prepare(v.as_bytes(), &mut buf))
            .collect();
        for (a, sa) in values.iter().zip(&shapes) {
            let va = sa.view(a.as_bytes(), &buf);
            assert_eq!(va.lower, a.to_ascii_lowercase().as_bytes(), "{a}");
            for (b, sb) in values.iter().zip(&shapes) {
                let vb = sb.view(b.as_bytes(), &buf);
                let (a, b) = (a.as_bytes(), b.as_bytes());
                assert_eq!(va.equals(&vb), equals(a, b), "{a:?} {b:?}");
                assert_eq!(va.compare(&vb), compare(a, b), "{a:?} {b:?}");
            }
        }
        assert_eq!(
            shapes[4],
            Shape {
                start: 8,
                len: 2,
                decimal: true,
                negative: false,
                int_len: 1,
                frac_len: 0
            },
            "007, after four #0 in the buffer, is #7"
        );
    }

    #[test]
    fn affixes_ignore_case() {
        assert!(starts_with_ignore_case(b"Pickup Truck", b"pICKUP"));
        assert!(!starts_with_ignore_case(b"Pick", b"pickup"));
        assert!(ends_with_ignore_case(b"Pickup Truck", b"TRUCK"));
        assert!(!ends_with_ignore_case(b"uck", b"truck"));
        assert!(starts_with_ignore_case(b"", b""));
        assert!(ends_with_ignore_case(b"x", b""));
    }
}
