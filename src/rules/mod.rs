//! Trait rules (AAM trait-builder expressions) and segment rules (AAM code view): parsed once,
//! compiled, evaluated on the hot path.

pub mod segment_rule;
pub mod trait_rule;

/// Printing boolean expressions in canonical form, shared by both rule languages.
pub(crate) mod display {
    use std::fmt;

    /// Writes `operands` joined by `separator`, parenthesizing those `needs_parens` picks.
    pub(crate) fn write_list<T: fmt::Display>(
        f: &mut fmt::Formatter<'_>,
        operands: &[T],
        separator: &str,
        needs_parens: impl Fn(&T) -> bool,
    ) -> fmt::Result {
        for (i, operand) in operands.iter().enumerate() {
            if i > 0 {
                f.write_str(separator)?;
            }
            write_operand(f, operand, needs_parens(operand))?;
        }
        Ok(())
    }

    pub(crate) fn write_operand<T: fmt::Display>(
        f: &mut fmt::Formatter<'_>,
        operand: &T,
        parens: bool,
    ) -> fmt::Result {
        if parens {
            write!(f, "({operand})")
        } else {
            write!(f, "{operand}")
        }
    }
}
