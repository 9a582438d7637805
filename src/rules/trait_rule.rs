//! Trait rules.
