//! Segment rules in AAM's code-view syntax (CONTRACT §5, AAM-REFERENCE §6.3): parsed once when
//! the catalog loads, compiled into flat short-circuit code, evaluated per changed profile.
//!
//! Inputs: `(segment id, rule text)` pairs from the catalog; per profile, its unexpired
//! onboarded traits as a slice of `(TraitId, realized_at)` sorted by trait id, and the run's
//! as-of time. Outputs: the qualified segment ids, and the index that says which segments a
//! changed trait can affect ([`SegmentRules::candidates`]).
//!
//! Not done here: deciding which profiles to evaluate, diffing memberships, checking that the
//! traits a rule names exist in the catalog (see [`SegmentRules::referenced_traits`]).
//!
//! # Grammar
//!
//! ```text
//! rule      = or
//! or        = and { OR and }
//! and       = unary { AND unary | NOT-unary }      -- `a NOT b` is `a AND NOT b`
//! unary     = NOT unary | primary
//! primary   = TRAIT | frequency | "(" or ")"
//! frequency = FREQUENCY "(" "[" TRAIT { "," TRAIT } "]" [ REC_OP DAYS ] ")" FREQ_OP COUNT
//! TRAIT     = digits "T"            e.g. 24T
//! DAYS      = digits "D"            N > 0, e.g. 7D
//! REC_OP    = ">=" | "<="           (">=" may be written "=>", as AAM's docs do)
//! FREQ_OP   = ">=" | "<=" | "=="    (">=" may be written "=>")
//! COUNT     = digits
//! ```
//!
//! Precedence, high to low: parentheses, `NOT`, `AND`, `OR`. Keywords and the `T`/`D`
//! suffixes are case-insensitive; whitespace (spaces, tabs, newlines) may appear between any
//! two tokens but not inside one (`24 T` is an error). Numbers fit a `u32`. Nesting of
//! parentheses and `NOT` is limited to [`MAX_DEPTH`] levels so that no input can exhaust the
//! stack.
//!
//! # Semantics (batch, onboarded traits)
//!
//! Onboarded traits are held at most once (AAM-REFERENCE §6.1), so a profile is a set of
//! traits, each with the time it was last realized.
//!
//! - `24T` is true when the profile holds trait 24.
//! - `FREQUENCY([a, b, ...] REC) OP n` counts the *distinct* listed traits the profile holds
//!   whose realization passes the recency filter, then compares `count OP n`. A trait listed
//!   twice counts once.
//! - Recency, with `cutoff = as_of − N × 86,400`: `<= ND` keeps realizations at or after the
//!   cutoff (within the last N days); `>= ND` keeps realizations at or before it (at least
//!   N days ago). Both bounds are **inclusive**: a trait realized exactly N days before as-of
//!   passes both filters.
//!
//! # Decisions where AAM and CONTRACT are silent
//!
//! - AAM's UI refuses a rule that is only `FREQUENCY([1000T]) <= 5` "for performance reasons"
//!   (it qualifies every profile that lacks the trait). segmill **accepts** it: in batch only
//!   profiles that segmill already evaluates are affected, and such segments are reported by
//!   [`SegmentRules::empty_qualifies`] so that first-seen profiles are evaluated for them.
//! - `a NOT b` is read as `a AND NOT b` ("NOT uses an implied 'and' condition",
//!   AAM-REFERENCE §6.2), the same reading as trait rules (CONTRACT §5).
//! - Recency and frequency apply to onboarded traits too, although AAM's UI offers them only for
//!   rule-based and folder traits: the realization time is the run's as-of time (CONTRACT §3).
//! - Segments with a recency term can change membership with time alone;
//!   [`SegmentRules::time_dependent`] lists them for the caller to decide when to re-evaluate.

mod compiled;
mod parse;

use crate::rules::display::{write_list, write_operand};
use std::fmt;
use std::num::NonZeroU32;

use crate::model::TraitId;

pub use compiled::SegmentRules;
pub use parse::parse;

/// Deepest nesting of parentheses and `NOT` a rule may have. AAM rules nest a handful of levels;
/// the limit keeps the recursive parser (and `Display`, `Drop` of [`Expr`]) far from the stack
/// size of a rayon worker.
pub const MAX_DEPTH: usize = 100;

/// Seconds in a recency day.
pub const SECONDS_PER_DAY: i64 = 86_400;

/// A parsed segment rule. Used when the catalog loads and in tests; evaluation runs on the flat
/// code compiled by [`SegmentRules::compile`].
///
/// Invariants kept by [`parse`] (and expected of hand-built values, or `Display` will not parse
/// back): `And` and `Or` have at least two operands; a `Frequency` lists at least one trait.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    /// `24T`: the profile holds the trait.
    Trait(TraitId),
    /// `FREQUENCY([..] REC) OP n`.
    Frequency(Frequency),
    /// `NOT x`.
    Not(Box<Expr>),
    /// `x AND y AND ...`, as written (not flattened across parentheses).
    And(Vec<Expr>),
    /// `x OR y OR ...`, as written (not flattened across parentheses).
    Or(Vec<Expr>),
}

/// A recency/frequency term: `FREQUENCY([24T,25T] >= 7D) >= 1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frequency {
    /// The listed traits, in the order written (duplicates kept; they count once).
    pub traits: Vec<TraitId>,
    /// The optional recency filter.
    pub recency: Option<Recency>,
    /// How the count compares with `count`.
    pub op: FrequencyOp,
    /// The number the count is compared with.
    pub count: u32,
}

/// A recency filter: `<= 7D` or `>= 7D`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recency {
    /// Within the last N days, or at least N days ago.
    pub op: RecencyOp,
    /// N; AAM requires it to be greater than 0.
    pub days: NonZeroU32,
}

/// The recency operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecencyOp {
    /// `<= ND`: realized within the last N days (at or after as-of − N days).
    Within,
    /// `>= ND`: realized at least N days ago (at or before as-of − N days).
    AtLeastAgo,
}

/// The frequency operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrequencyOp {
    /// `>= n`.
    AtLeast,
    /// `<= n`.
    AtMost,
    /// `== n`.
    Exactly,
}

impl RecencyOp {
    /// The operator as written in canonical form.
    pub fn as_str(self) -> &'static str {
        match self {
            RecencyOp::Within => "<=",
            RecencyOp::AtLeastAgo => ">=",
        }
    }

    /// Whether a realization at `realized_at` passes `self` with the given cutoff
    /// (`as_of − N days`, see [`Recency::cutoff`]). Both bounds are inclusive.
    #[inline]
    pub fn passes(self, realized_at: i64, cutoff: i128) -> bool {
        let realized_at = i128::from(realized_at);
        match self {
            RecencyOp::Within => realized_at >= cutoff,
            RecencyOp::AtLeastAgo => realized_at <= cutoff,
        }
    }
}

impl Recency {
    /// The cutoff time `as_of − days × 86,400`, exact: 128 bits, so that as-of times near the
    /// ends of `i64` neither overflow nor saturate into a wrong answer.
    #[inline]
    pub fn cutoff(self, as_of: i64) -> i128 {
        i128::from(as_of) - i128::from(self.days.get()) * i128::from(SECONDS_PER_DAY)
    }
}

impl FrequencyOp {
    /// The operator as written in canonical form.
    pub fn as_str(self) -> &'static str {
        match self {
            FrequencyOp::AtLeast => ">=",
            FrequencyOp::AtMost => "<=",
            FrequencyOp::Exactly => "==",
        }
    }

    /// `count OP n`.
    #[inline]
    pub fn holds(self, count: u32, n: u32) -> bool {
        match self {
            FrequencyOp::AtLeast => count >= n,
            FrequencyOp::AtMost => count <= n,
            FrequencyOp::Exactly => count == n,
        }
    }
}

impl Expr {
    /// Parses one rule; see [`parse`].
    pub fn parse(text: &str) -> Result<Expr, ParseError> {
        parse(text)
    }
}

/// The canonical form: keywords in upper case, one space around operators, `AND NOT` for an
/// implied-AND `NOT`, parentheses only where precedence needs them. It parses back to the same
/// [`Expr`].
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Trait(id) => write!(f, "{id}T"),
            Expr::Frequency(freq) => write!(f, "{freq}"),
            Expr::Not(inner) => {
                f.write_str("NOT ")?;
                write_operand(f, inner, matches!(**inner, Expr::And(_) | Expr::Or(_)))
            }
            Expr::And(operands) => write_list(f, operands, " AND ", |e| {
                matches!(e, Expr::And(_) | Expr::Or(_))
            }),
            Expr::Or(operands) => write_list(f, operands, " OR ", |e| matches!(e, Expr::Or(_))),
        }
    }
}

impl fmt::Display for Frequency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FREQUENCY([")?;
        for (i, id) in self.traits.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{id}T")?;
        }
        f.write_str("]")?;
        if let Some(recency) = self.recency {
            write!(f, " {} {}D", recency.op.as_str(), recency.days)?;
        }
        write!(f, ") {} {}", self.op.as_str(), self.count)
    }
}

/// Where in a rule's text a problem is: 1-based line and column (columns count characters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// 1-based line; rules are usually one line.
    pub line: u32,
    /// 1-based column, in characters.
    pub column: u32,
}

impl Position {
    /// The position of byte offset `at` in `text` (clamped to the text).
    pub fn of(text: &str, at: usize) -> Position {
        let mut line = 1u32;
        let mut column = 1u32;
        for (offset, c) in text.char_indices() {
            if offset >= at {
                break;
            }
            if c == '\n' {
                line = line.saturating_add(1);
                column = 1;
            } else {
                column = column.saturating_add(1);
            }
        }
        Position { line, column }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 1 {
            write!(f, "column {}", self.column)
        } else {
            write!(f, "line {}, column {}", self.line, self.column)
        }
    }
}

/// A syntax error in one rule: where, and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {problem}")]
pub struct ParseError {
    /// Where the problem was found.
    pub at: Position,
    /// What is wrong.
    pub problem: Problem,
}

/// What is wrong with a rule's text. `found` fields hold a quoted token or `end of rule`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// Nothing but whitespace.
    #[error("the rule is empty; write an expression like 24T AND NOT 25T")]
    Empty,
    /// A character outside the grammar.
    #[error("unexpected character {0:?}")]
    UnexpectedChar(char),
    /// `>`, `<`, `=`, `!=` and the like.
    #[error("operator '{0}' is not supported; use >=, <= or ==")]
    UnsupportedOperator(&'static str),
    /// A term was expected.
    #[error("expected a trait like 24T, NOT, FREQUENCY or '(', found {found}")]
    ExpectedTerm {
        /// What came instead.
        found: String,
    },
    /// Digits not followed by `T`.
    #[error("expected 'T' after trait id {digits}")]
    ExpectedT {
        /// The digits as written.
        digits: String,
    },
    /// A number wider than a `u32`.
    #[error("number {digits} is out of range (largest is 4294967295)")]
    OutOfRange {
        /// The digits as written.
        digits: String,
    },
    /// Letters glued to a trait, days or count token (`24TX`).
    #[error("expected a space, operator or bracket after {token}, found {found}")]
    Trailing {
        /// The token that was read.
        token: String,
        /// The rest of the word.
        found: String,
    },
    /// An operand ended but no operator followed.
    #[error("expected AND, OR, NOT, ')' or end of rule, found {found}")]
    ExpectedOperator {
        /// What came instead.
        found: String,
    },
    /// A `)` with no `(` open.
    #[error("')' has no matching '('")]
    UnmatchedClose,
    /// A `(` that is never closed.
    #[error("expected ')' to close the '(' at {open}, found {found}")]
    Unclosed {
        /// Where the `(` is.
        open: Position,
        /// What came instead.
        found: String,
    },
    /// A fixed piece of FREQUENCY syntax is missing.
    #[error("expected {what}, found {found}")]
    Expected {
        /// What the grammar needs here.
        what: &'static str,
        /// What came instead.
        found: String,
    },
    /// `FREQUENCY([])`.
    #[error("FREQUENCY needs at least one trait between '[' and ']'")]
    EmptyTraitList,
    /// `== ND` or another operator in recency position.
    #[error("recency takes >= or <=, found {found}")]
    RecencyOperator {
        /// What came instead.
        found: String,
    },
    /// Not `ND` after the recency operator.
    #[error("expected a number of days like 7D after the recency operator, found {found}")]
    ExpectedDays {
        /// What came instead.
        found: String,
    },
    /// `0D`.
    #[error("recency must be greater than 0 days")]
    ZeroDays,
    /// No frequency operator after `FREQUENCY(...)`.
    #[error("expected >=, <= or == after FREQUENCY(...), found {found}")]
    ExpectedFrequencyOperator {
        /// What came instead.
        found: String,
    },
    /// No count after the frequency operator.
    #[error("expected a whole number after the frequency operator, found {found}")]
    ExpectedCount {
        /// What came instead.
        found: String,
    },
    /// Parentheses and `NOT` nested deeper than [`MAX_DEPTH`].
    #[error("parentheses and NOT are nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// Why one segment of a catalog did not compile. The message names the segment and, for syntax
/// errors, the line and column in its rule; the caller adds the config file it came from.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SegmentRuleError {
    /// The rule's text does not parse.
    #[error("segment {segment}, {}", .error)]
    Syntax {
        /// The segment id.
        segment: u32,
        /// Where and what.
        error: ParseError,
    },
    /// Two rules for one segment id.
    #[error("segment {segment} is defined more than once; give each segment one rule")]
    Duplicate {
        /// The segment id.
        segment: u32,
    },
    /// The compiled code of all rules together outgrew the 32-bit instruction index.
    #[error(
        "segment {segment}: the rule set is too large to compile (over 4294967295 instructions)"
    )]
    TooLarge {
        /// The first segment that did not fit.
        segment: u32,
    },
}

#[cfg(test)]
mod tests;
