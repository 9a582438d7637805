//! Inbound line grammar: physical lines, records and items (CONTRACT §3).
//!
//! This module owns the byte-level grammar of trait files and nothing else:
//!
//! - [`lines`] splits a newline-aligned chunk into numbered physical lines;
//! - [`parse_line`] classifies one line as [`LineKind::Blank`], a [`Record`] or a
//!   [`FormatError`];
//! - [`items`] walks the raw ITEMS text of a record and yields one [`Item`] per non-empty item.
//!
//! Everything here is pure and allocation-free: byte slices in, views borrowing those bytes out.
//! It does not validate IDs against a DPID (AAM UUID, device formats), does not look anything up,
//! does not count receipts and does not know file names; callers attach the file name and line
//! number to the reasons returned here ([`FormatError::reason`], [`Malformed::reason`]).
//!
//! # Decisions the contract leaves to this module
//!
//! - A line is classified in this order: blank (empty or only ASCII spaces, after dropping one
//!   trailing CR) → too long → invalid UTF-8 → TAB count → empty ID type (ODC) → empty ID. An
//!   all-space line is blank whatever its length.
//! - [`parse_line`] always drops one trailing CR, also on a last line that has no LF (a file
//!   ending in `...\r` without `\n`): the CR is the remainder of a CRLF terminator.
//! - Quotes toggle comma protection wherever they appear in the ITEMS text; a quote that is never
//!   closed turns the rest of the line into one [`Malformed::UnbalancedQuote`] item.
//! - `KEY=` and `KEY=""` are signals with an empty value, except for `d_sid`, `d_unsid` and `ic`,
//!   which are [`Malformed::EmptyValue`]. A bare `""` is also [`Malformed::EmptyValue`].
//! - Exactly one leading `-` is dropped from a key, after unquoting (`--a=1` has the key `-a`).
//!   The dash rule applies before the reserved keys are recognised: `-d_sid=24` realizes 24.
//! - Trait IDs are ASCII decimal digits that fit `u32` (leading zeros allowed, no sign). A quoted
//!   trait ID is allowed, but spaces inside the quotes are data, so `d_sid=" 24"` is malformed.
//! - A quoted bare item is always `ic`: `"24:0"` is `Ic("24:0")`, not a removal.
//! - `N:0`/`N:-1` is recognised only without spaces around `:` (spaces are trimmed around items
//!   and `=` only); `24 :0` is the bare signal `ic == "24 :0"`.
//! - Typographic quotes (`“gender”=”female”`, from AAM's own docs) are ordinary UTF-8 bytes, not
//!   quotes: that item is the signal with key `“gender”` and value `”female”`, which no rule on
//!   `gender` will match.

mod items;
mod line;

pub use items::{Item, Items, Malformed, items};
pub use line::{FormatError, LineKind, Lines, MAX_LINE_BYTES, Record, lines, parse_line};
