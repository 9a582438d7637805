//! Trait rules: AAM trait-builder expressions that qualify onboarded traits from a line's
//! key-value and `ic` signals (CONTRACT §5, AAM-REFERENCE §2.3, §6.2).
//!
//! - [`Expr`] is a parsed rule ([`Expr::parse`], and a canonical `Display` that parses back
//!   to the same `Expr`); errors carry the character column ([`SyntaxError`]).
//! - [`TraitRules`] is the compiled, indexed set used on the hot path:
//!   [`TraitRules::compile`] once per run, [`TraitRules::qualify`] once per line.
//!
//! Semantics, fixed here where the contract leaves room:
//! - Keys match exactly (the item parser has already dropped one leading `-`); a bare or `ic=`
//!   item reaches the rules as key `ic`.
//! - An atom holds when ANY signal of the line with its key satisfies it; `!=` holds when some
//!   signal with the key has a different value, so an absent key makes every atom false.
//! - `==`, `!=`, `<`, `>`, `<=`, `>=` compare as exact decimals when both sides are
//!   `-?digits[.digits]` (digit strings, no `f64`: `1.0 == 1`, `10 > 9`), otherwise as
//!   ASCII-lowercased byte strings (`"Gold" == "gold"`, `"b" > "Alice"`).
//! - `contains`, `startswith`, `endswith` ignore ASCII case and never compare numerically.
//! - `matchesregex` runs a `regex::bytes::Regex` search (unanchored: write `^...$` for a whole
//!   match) on the raw value bytes; it is case-sensitive unless the pattern says `(?i)`.
//!
//! Not here: reading the catalog (config), `d_sid` items (the ingest kernel), counting used
//! signals (the caller, from [`TraitRules::qualify`]'s item indexes).

mod set;
mod syntax;
mod value;

pub use set::{NO_ITEM, Scratch, TraitRules};
pub use syntax::{Atom, Expr, Found, MAX_DEPTH, Op, SyntaxError, SyntaxErrorKind};

use crate::model::TraitId;

/// A trait rule that cannot be compiled. The caller adds the catalog file it came from.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// The rule text does not parse, or a `matchesregex` pattern is invalid.
    #[error("rule of trait {trait_id}, {error}")]
    Syntax {
        /// The trait whose rule it is.
        trait_id: TraitId,
        /// Where and why.
        error: SyntaxError,
    },
    /// The same trait ID came with a second rule.
    #[error("rule of trait {trait_id}: given more than once; a trait has one rule")]
    DuplicateTrait {
        /// The repeated trait ID.
        trait_id: TraitId,
    },
    /// More than `u32::MAX` rules.
    #[error("rule of trait {trait_id}: more rules than the index can number (4,294,967,295)")]
    TooMany {
        /// The first trait that did not fit.
        trait_id: TraitId,
    },
}
