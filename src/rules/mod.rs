//! Trait rules (AAM trait-builder expressions) and segment rules (AAM code view): parsed once,
//! compiled, evaluated on the hot path.

pub mod segment_rule;
pub mod trait_rule;
