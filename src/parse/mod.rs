//! Inbound line grammar: records and items.
