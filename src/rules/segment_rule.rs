//! Segment rules.
