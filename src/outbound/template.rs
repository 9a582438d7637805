//! AAM outbound templates (AAM-REFERENCE §5.3): a parser for the StringTemplate-like macro
//! syntax, compiled once into a flat program, and a renderer that appends one row to a byte
//! buffer.
//!
//! Owns: the template grammar, its error positions, and rendering of one row from a [`Batch`]
//! (per-file values) and a [`Row`] (per-user values). Does not own: choosing rows, sorting,
//! line terminators (the file writer ends every row with one LF), splitting or file names.
//!
//! # Grammar
//!
//! Text outside `<...>` is copied as is; `\<`, `\>`, `\{` and `\}` give the bare character.
//! A tag is one of:
//!
//! ```text
//! <NAME>                                  a value or a constant (table below)
//! <NAME; format="YYYYMMDDhhmmss">         TIMESTAMP only: UTC date (letters below)
//! <LIST; separator=SEP>                   the items' IDs, SEP between them
//! <LIST:{x|BODY}; separator=SEP>          BODY once per item; <x> and <x.attr> inside
//! <if(COND)> ... [<elseif(COND)> ...] [<else> ...] <endif>
//! <! comment !>
//! ```
//!
//! `SEP` is a quoted string (escapes `\"`, `\\`, `\n`, `\t`, `\r`) or a constant macro name
//! (`separator=TAB`); without it items are not separated. `COND` combines `SEGMENT_LIST`,
//! `REMOVED_SEGMENT_LIST`, `TRAIT_LIST`, `DP_UUID_LIST`, `DP_UUID`, `UUID`, `PID_ALIAS` and
//! `MASTER_DPID` (true when non-empty) with `&&`, `||`, `!` and parentheses. Lists cannot be
//! nested inside a list body. Macro and attribute names are case-sensitive.
//!
//! | Macro | Value |
//! |---|---|
//! | `UUID` | the row's AAM UUID |
//! | `DP_UUID` | the row's first partner ID (empty when none) |
//! | `DP_UUID_LIST` | the row's partner IDs (list) |
//! | `DPID`, `MASTER_DPID`, `PID`, `ORDER_ID` | batch numbers (`MASTER_DPID` empty when unset) |
//! | `PID_ALIAS`, `PIDALIAS` | batch PID alias (empty when unset) |
//! | `SYNC_MODE`, `SYNC_TYPE` | `iter`/`full`, `s3`/`ftp`/`http` |
//! | `TIMESTAMP` | batch time, 10-digit Unix seconds (the macro page's form) |
//! | `TAB`, `NEW_LINE`, `ASCII_SOH`, `COMMA` | `\t`, `\n`, `\x01`, `,` |
//! | `OPEN_CURLY_BRACKET`, `CLOSE_CURLY_BRACKET` | `{`, `}` |
//! | `SET_ATTRIBUTES`, `OUTPUT_ATTRIBUTE_VALUE` | `1` (static, per AAM) |
//! | `OPT_OUT` | `0` (deprecated by AAM; segmill never exports opted-out users) |
//! | `SEGMENT_LIST`, `REMOVED_SEGMENT_LIST` | segments (list); attributes `sid`, `segmentId`, `csegid`, `alias` (all the segment ID), `type` (5), `lastUpdateTime`, `lastRealizationTime` (Unix ms) |
//! | `TRAIT_LIST` | traits (list); attributes `Id`, `id`, `traitId`, `type` (10 = onboarded), `lastRealized` (Unix ms) |
//!
//! Segment and trait times print in milliseconds: the docs' only example
//! (`5,103714,1,1344114661000`) shows 13 digits.
//!
//! Date format letters (Java-style, read the way AAM's own example `YYYYMMDDhhmmss` means
//! them): `y`/`Y` year (2 letters: last two digits), `M` month, `d`/`D` day of month, `H`/`h`
//! hour 0–23, `m` minute, `s` second, `S` milliseconds (always 0); the letter count is the
//! zero-padded width. Other ASCII letters are rejected; `'text'` is literal, `''` is `'`.
//!
//! Not supported, with an error naming the macro: `DPUUIDS` (needs per-mapping timestamps the
//! row does not carry), `MCID`, `OUTPUT_ATTRIBUTE_TYPE` (deprecated, no documented value) and
//! `SPLITNUM` (a file-name macro).
//!
//! # Rendering cost
//!
//! Constant macros are folded into literal text at parse time. [`Template::render`] walks the
//! flat op list once per row, writes numbers through a stack buffer and never allocates beyond
//! growing the caller's buffer.

use thiserror::Error;

/// `type` of every segment in `SEGMENT_LIST` (AAM: static 5).
pub const SEGMENT_TYPE: u32 = 5;
/// `type` of a trait onboarded by an inbound batch job (AAM: "DPM trait").
pub const TRAIT_TYPE_ONBOARDED: u32 = 10;

/// Deepest nesting of parentheses and `!` in one condition; keeps parsing and evaluation on a
/// small fixed stack whatever the input.
const MAX_COND_DEPTH: usize = 16;
/// Widest zero-padded date field (`yyyyyyyyy`).
const MAX_DATE_WIDTH: usize = 9;

/// One segment of a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentRef {
    /// The segment ID (`sid`, also `alias`, `segmentId`, `csegid`).
    pub sid: u32,
    /// `lastUpdateTime`, Unix milliseconds.
    pub last_update_ms: i64,
    /// `lastRealizationTime`, Unix milliseconds.
    pub last_realization_ms: i64,
}

/// One trait of a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraitRef {
    /// The trait ID (`Id`, `traitId`).
    pub id: u32,
    /// `lastRealized`, Unix milliseconds.
    pub last_realized_ms: i64,
    /// `type`: [`TRAIT_TYPE_ONBOARDED`] for traits segmill onboards.
    pub kind: u32,
}

/// The per-user values of one rendered row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row<'a> {
    /// The AAM UUID, 38 digits.
    pub uuid: &'a str,
    /// The partner IDs synced to the user; `DP_UUID` is the first.
    pub dp_uuids: &'a [&'a str],
    /// Current segments (`SEGMENT_LIST`), in export order.
    pub segments: &'a [SegmentRef],
    /// Segments the user left (`REMOVED_SEGMENT_LIST`); empty in `full` exports.
    pub removed: &'a [SegmentRef],
    /// The user's traits (`TRAIT_LIST`).
    pub traits: &'a [TraitRef],
}

impl Row<'static> {
    /// A row with no values, for rendering header templates.
    pub const EMPTY: Row<'static> = Row {
        uuid: "",
        dp_uuids: &[],
        segments: &[],
        removed: &[],
        traits: &[],
    };
}

/// The per-file values of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batch<'a> {
    /// `ORDER_ID`: the destination ID.
    pub order_id: u32,
    /// `DPID`.
    pub dpid: u32,
    /// `MASTER_DPID`; `None` prints nothing.
    pub master_dpid: Option<u32>,
    /// `PID`.
    pub pid: u32,
    /// `PID_ALIAS` / `PIDALIAS`; `None` prints nothing.
    pub pid_alias: Option<&'a str>,
    /// `SYNC_MODE`: `iter` or `full`.
    pub sync_mode: &'a str,
    /// `SYNC_TYPE`: `s3`, `ftp` or `http`.
    pub sync_type: &'a str,
    /// `TIMESTAMP`: Unix seconds, UTC.
    pub timestamp_s: i64,
}

/// A template that cannot be compiled, with the 1-based line and column (in characters) of
/// the problem. The integrator adds the config file and destination key.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("template line {line}, column {column}: {kind}")]
pub struct TemplateError {
    /// Byte offset of the problem in the template text.
    pub offset: usize,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// What is wrong.
    pub kind: TemplateErrorKind,
}

/// What is wrong with a template.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TemplateErrorKind {
    /// A `<` without its `>`.
    #[error("`<` is never closed by `>` (write `\\<` for a literal `<`)")]
    UnclosedTag,
    /// A `<! ...` comment without `!>`.
    #[error("comment `<!` is never closed by `!>`")]
    UnclosedComment,
    /// A name that is no known macro.
    #[error("unknown macro `{0}` (macro names are upper case, e.g. `<UUID>`, `<SEGMENT_LIST>`)")]
    UnknownMacro(String),
    /// A known AAM macro segmill cannot render.
    #[error("macro `{name}` is not supported: {why}")]
    Unsupported {
        /// The macro.
        name: String,
        /// Why.
        why: &'static str,
    },
    /// `<else>`, `<elseif>` or `<endif>` without an open `<if>`.
    #[error("`<{0}>` without an open `<if(...)>`")]
    StrayBranch(&'static str),
    /// `<else>` or `<elseif>` after this `<if>`'s `<else>`.
    #[error("`<{0}>` after `<else>` in the same `<if(...)>`")]
    BranchAfterElse(&'static str),
    /// An `<if>` without `<endif>` (reported at the `<if>`).
    #[error("`<if(...)>` is never closed by `<endif>`")]
    UnclosedIf,
    /// A list body without `}`.
    #[error(
        "list body `{{x|...` is never closed by `}}` (write `<CLOSE_CURLY_BRACKET>` for a literal `}}`)"
    )]
    UnclosedBody,
    /// Some other token was expected.
    #[error("expected {expected}, found {found}")]
    Expected {
        /// What the grammar needs here.
        expected: &'static str,
        /// What is there (quoted character or "end of template").
        found: String,
    },
    /// `NAME:{...}` on a macro that is not a list.
    #[error(
        "`{0}` is not a list; only SEGMENT_LIST, REMOVED_SEGMENT_LIST, TRAIT_LIST and \
         DP_UUID_LIST take `:{{x|...}}`"
    )]
    NotAList(String),
    /// A list inside a list body.
    #[error("lists cannot be used inside a list body")]
    NestedList,
    /// `x.attr` with an attribute the list's items do not have.
    #[error("`{list}` items have no attribute `{attr}`; known: {known}")]
    UnknownAttribute {
        /// The list.
        list: &'static str,
        /// The attribute asked for.
        attr: String,
        /// The attributes that exist.
        known: &'static str,
    },
    /// `x.attr` or `x` where `x` is not the enclosing body's item name.
    #[error("`{0}` is not the item name of an enclosing list body")]
    UnknownVariable(String),
    /// An option the macro does not take.
    #[error("`{name}` takes no option `{option}`")]
    UnknownOption {
        /// The macro.
        name: String,
        /// The option.
        option: String,
    },
    /// A separator that is neither a quoted string nor a constant macro.
    #[error(
        "separator `{0}` is neither a quoted string nor a constant macro \
         (TAB, NEW_LINE, ASCII_SOH, COMMA, ...)"
    )]
    BadSeparator(String),
    /// A bad `format=` of `TIMESTAMP`.
    #[error("date format: {0}")]
    BadDateFormat(String),
    /// A name that cannot be tested by `<if(...)>`.
    #[error(
        "`{0}` cannot be tested in a condition; use SEGMENT_LIST, REMOVED_SEGMENT_LIST, \
         TRAIT_LIST, DP_UUID_LIST, DP_UUID, UUID, PID_ALIAS or MASTER_DPID"
    )]
    BadCondition(String),
    /// Parentheses or `!` nested deeper than the limit.
    #[error("condition nested deeper than {MAX_COND_DEPTH} levels")]
    ConditionTooDeep,
    /// A quoted string without its closing quote.
    #[error("string is never closed by `\"`")]
    UnclosedString,
}

/// A compiled template. Parse once per destination, render once per row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    /// The flat program. Jumps only go forward; a list's body ops follow the list op.
    ops: Vec<Op>,
    /// Literal text, separators and date-format literals, referenced by byte ranges.
    text: Vec<u8>,
    /// Conditions in postfix order, referenced by ranges.
    conds: Vec<CondOp>,
    /// Compiled date formats, referenced by ranges.
    dates: Vec<DatePiece>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    /// Copy `text[start..end]`.
    Lit { start: usize, end: usize },
    /// A per-row or per-batch value.
    Scalar(Scalar),
    /// `TIMESTAMP` formatted by `dates[start..end]`.
    Date { start: usize, end: usize },
    /// A list; when `body` is `Some(n)`, the next `n` ops are its body.
    List {
        list: ListKind,
        sep_start: usize,
        sep_end: usize,
        body: Option<usize>,
    },
    /// An attribute of the current list item.
    Attr(Attr),
    /// Evaluate `conds[start..end]`; when false, continue at `target`.
    JumpUnless {
        start: usize,
        end: usize,
        target: usize,
    },
    /// Continue at `target`.
    Jump { target: usize },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scalar {
    Uuid,
    DpUuid,
    Dpid,
    MasterDpid,
    Pid,
    PidAlias,
    OrderId,
    SyncMode,
    SyncType,
    Timestamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ListKind {
    Segments,
    Removed,
    Traits,
    DpUuids,
}

impl ListKind {
    fn name(self) -> &'static str {
        match self {
            ListKind::Segments => "SEGMENT_LIST",
            ListKind::Removed => "REMOVED_SEGMENT_LIST",
            ListKind::Traits => "TRAIT_LIST",
            ListKind::DpUuids => "DP_UUID_LIST",
        }
    }

    fn attr(self, name: &str) -> Result<Attr, TemplateErrorKind> {
        let found = match self {
            ListKind::Segments | ListKind::Removed => match name {
                "sid" | "segmentId" | "csegid" | "alias" => Some(Attr::Id),
                "type" => Some(Attr::Type),
                "lastUpdateTime" => Some(Attr::LastUpdate),
                "lastRealizationTime" => Some(Attr::LastRealization),
                _ => None,
            },
            ListKind::Traits => match name {
                "Id" | "id" | "traitId" => Some(Attr::Id),
                "type" => Some(Attr::Type),
                "lastRealized" => Some(Attr::LastRealization),
                _ => None,
            },
            ListKind::DpUuids => None,
        };
        found.ok_or_else(|| TemplateErrorKind::UnknownAttribute {
            list: self.name(),
            attr: name.to_owned(),
            known: match self {
                ListKind::Segments | ListKind::Removed => {
                    "sid, segmentId, csegid, alias, type, lastUpdateTime, lastRealizationTime"
                }
                ListKind::Traits => "Id, id, traitId, type, lastRealized",
                ListKind::DpUuids => "none (use the item itself)",
            },
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attr {
    /// The item itself: segment ID, trait ID or partner ID.
    Item,
    Id,
    Type,
    LastUpdate,
    LastRealization,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CondAtom {
    List(ListKind),
    DpUuid,
    Uuid,
    PidAlias,
    MasterDpid,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CondOp {
    Atom(CondAtom),
    Not,
    And,
    Or,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DateField {
    Year,
    ShortYear,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    Millis,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DatePiece {
    Field { field: DateField, width: usize },
    Lit { start: usize, end: usize },
}

/// What a macro name stands for.
enum Macro {
    Const(&'static [u8]),
    Scalar(Scalar),
    List(ListKind),
    Unsupported(&'static str),
}

fn lookup(name: &str) -> Option<Macro> {
    let m = match name {
        "TAB" => Macro::Const(b"\t"),
        "NEW_LINE" => Macro::Const(b"\n"),
        "ASCII_SOH" => Macro::Const(b"\x01"),
        "COMMA" => Macro::Const(b","),
        "OPEN_CURLY_BRACKET" => Macro::Const(b"{"),
        "CLOSE_CURLY_BRACKET" => Macro::Const(b"}"),
        "SET_ATTRIBUTES" | "OUTPUT_ATTRIBUTE_VALUE" => Macro::Const(b"1"),
        "OPT_OUT" => Macro::Const(b"0"),
        "UUID" => Macro::Scalar(Scalar::Uuid),
        "DP_UUID" => Macro::Scalar(Scalar::DpUuid),
        "DPID" => Macro::Scalar(Scalar::Dpid),
        "MASTER_DPID" => Macro::Scalar(Scalar::MasterDpid),
        "PID" => Macro::Scalar(Scalar::Pid),
        "PID_ALIAS" | "PIDALIAS" => Macro::Scalar(Scalar::PidAlias),
        "ORDER_ID" => Macro::Scalar(Scalar::OrderId),
        "SYNC_MODE" => Macro::Scalar(Scalar::SyncMode),
        "SYNC_TYPE" => Macro::Scalar(Scalar::SyncType),
        "TIMESTAMP" => Macro::Scalar(Scalar::Timestamp),
        "SEGMENT_LIST" => Macro::List(ListKind::Segments),
        "REMOVED_SEGMENT_LIST" => Macro::List(ListKind::Removed),
        "TRAIT_LIST" => Macro::List(ListKind::Traits),
        "DP_UUID_LIST" => Macro::List(ListKind::DpUuids),
        "DPUUIDS" => Macro::Unsupported("it needs per-mapping timestamps a row does not carry"),
        "MCID" => Macro::Unsupported("segmill does not know Experience Cloud IDs"),
        "OUTPUT_ATTRIBUTE_TYPE" => {
            Macro::Unsupported("it is deprecated by AAM and has no documented value")
        }
        "SPLITNUM" => Macro::Unsupported("it is a file-name macro, not a content macro"),
        _ => return None,
    };
    Some(m)
}

impl Template {
    /// Compiles `text`. Every failure carries the line and column of the problem.
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let mut parser = Parser {
            src: text.as_bytes(),
            pos: 0,
            barrier: 0,
            prog: Template {
                ops: Vec::new(),
                text: Vec::new(),
                conds: Vec::new(),
                dates: Vec::new(),
            },
        };
        match parser.seq(None) {
            Ok(()) => Ok(parser.prog),
            Err((offset, kind)) => Err(error_at(text, offset, kind)),
        }
    }

    /// Appends the rendering of `row` to `out`, without a line terminator. Never fails and
    /// never panics: missing values print as nothing, and a timestamp outside years
    /// -9999..=9999 prints its raw seconds in place of a formatted date.
    pub fn render(&self, batch: &Batch<'_>, row: &Row<'_>, out: &mut Vec<u8>) {
        self.exec(0, self.ops.len(), batch, row, Item::None, out);
    }

    /// Whether rendering reads the row's traits (`TRAIT_LIST` as a list or in a condition).
    /// When it does not, rows may be built without them.
    pub fn uses_traits(&self) -> bool {
        self.ops.iter().any(|op| {
            matches!(
                op,
                Op::List {
                    list: ListKind::Traits,
                    ..
                }
            )
        }) || self
            .conds
            .iter()
            .any(|c| matches!(c, CondOp::Atom(CondAtom::List(ListKind::Traits))))
    }

    fn exec(
        &self,
        start: usize,
        end: usize,
        batch: &Batch<'_>,
        row: &Row<'_>,
        item: Item<'_>,
        out: &mut Vec<u8>,
    ) {
        let mut pc = start;
        while pc < end {
            let Some(&op) = self.ops.get(pc) else { return };
            pc += 1;
            match op {
                Op::Lit { start, end } => out.extend_from_slice(self.slice(start, end)),
                Op::Scalar(s) => scalar(s, batch, row, out),
                Op::Date { start, end } => self.date(
                    self.dates.get(start..end).unwrap_or(&[]),
                    batch.timestamp_s,
                    out,
                ),
                Op::List {
                    list,
                    sep_start,
                    sep_end,
                    body,
                } => {
                    let sep = self.slice(sep_start, sep_end);
                    let body = body.map(|len| (pc, pc.saturating_add(len)));
                    match list {
                        ListKind::Segments => {
                            self.each(row.segments, Item::Seg, sep, body, batch, row, out)
                        }
                        ListKind::Removed => {
                            self.each(row.removed, Item::Seg, sep, body, batch, row, out)
                        }
                        ListKind::Traits => {
                            self.each(row.traits, Item::Trait, sep, body, batch, row, out)
                        }
                        ListKind::DpUuids => {
                            self.each(row.dp_uuids, Item::DpUuid, sep, body, batch, row, out)
                        }
                    }
                    if let Some((_, body_end)) = body {
                        pc = body_end;
                    }
                }
                Op::Attr(attr) => item.write(attr, out),
                Op::JumpUnless { start, end, target } => {
                    if !self.eval(start, end, row, batch) {
                        pc = target;
                    }
                }
                Op::Jump { target } => pc = target,
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn each<'r, T>(
        &self,
        items: &'r [T],
        wrap: fn(&'r T) -> Item<'r>,
        sep: &[u8],
        body: Option<(usize, usize)>,
        batch: &Batch<'_>,
        row: &Row<'_>,
        out: &mut Vec<u8>,
    ) {
        for (i, it) in items.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(sep);
            }
            let item = wrap(it);
            match body {
                Some((start, end)) => self.exec(start, end, batch, row, item, out),
                None => item.write(Attr::Item, out),
            }
        }
    }

    fn slice(&self, start: usize, end: usize) -> &[u8] {
        self.text.get(start..end).unwrap_or(&[])
    }

    fn eval(&self, start: usize, end: usize, row: &Row<'_>, batch: &Batch<'_>) -> bool {
        // A bit stack: the parser bounds the depth far below 64.
        let mut bits: u64 = 0;
        let mut len: u32 = 0;
        for op in self.conds.get(start..end).unwrap_or(&[]) {
            match *op {
                CondOp::Atom(atom) => {
                    if len >= 64 {
                        return false;
                    }
                    let value = match atom {
                        CondAtom::List(ListKind::Segments) => !row.segments.is_empty(),
                        CondAtom::List(ListKind::Removed) => !row.removed.is_empty(),
                        CondAtom::List(ListKind::Traits) => !row.traits.is_empty(),
                        CondAtom::List(ListKind::DpUuids) => !row.dp_uuids.is_empty(),
                        CondAtom::DpUuid => row.dp_uuids.first().is_some_and(|s| !s.is_empty()),
                        CondAtom::Uuid => !row.uuid.is_empty(),
                        CondAtom::PidAlias => batch.pid_alias.is_some_and(|s| !s.is_empty()),
                        CondAtom::MasterDpid => batch.master_dpid.is_some(),
                    };
                    bits = (bits << 1) | u64::from(value);
                    len += 1;
                }
                CondOp::Not => {
                    if len == 0 {
                        return false;
                    }
                    bits ^= 1;
                }
                CondOp::And | CondOp::Or => {
                    if len < 2 {
                        return false;
                    }
                    let (b, a) = (bits & 1, (bits >> 1) & 1);
                    let v = if *op == CondOp::And { a & b } else { a | b };
                    bits = ((bits >> 2) << 1) | v;
                    len -= 1;
                }
            }
        }
        len == 1 && bits & 1 == 1
    }

    fn date(&self, pieces: &[DatePiece], seconds: i64, out: &mut Vec<u8>) {
        let Ok(ts) = jiff::Timestamp::from_second(seconds) else {
            push_i64(out, seconds);
            return;
        };
        let dt = jiff::tz::TimeZone::UTC.to_datetime(ts);
        for piece in pieces {
            match *piece {
                DatePiece::Lit { start, end } => out.extend_from_slice(self.slice(start, end)),
                DatePiece::Field { field, width } => {
                    let value: i64 = match field {
                        DateField::Year => i64::from(dt.year()),
                        DateField::ShortYear => i64::from(dt.year()).rem_euclid(100),
                        DateField::Month => i64::from(dt.month()),
                        DateField::Day => i64::from(dt.day()),
                        DateField::Hour => i64::from(dt.hour()),
                        DateField::Minute => i64::from(dt.minute()),
                        DateField::Second => i64::from(dt.second()),
                        DateField::Millis => 0,
                    };
                    if value < 0 {
                        out.push(b'-');
                    }
                    push_padded(out, value.unsigned_abs(), width);
                }
            }
        }
    }
}

/// The current list item while a body runs.
#[derive(Clone, Copy)]
enum Item<'r> {
    None,
    Seg(&'r SegmentRef),
    Trait(&'r TraitRef),
    DpUuid(&'r &'r str),
}

impl Item<'_> {
    fn write(self, attr: Attr, out: &mut Vec<u8>) {
        match (self, attr) {
            (Item::None, _) => {}
            (Item::Seg(s), Attr::Item | Attr::Id) => push_u64(out, u64::from(s.sid)),
            (Item::Seg(_), Attr::Type) => push_u64(out, u64::from(SEGMENT_TYPE)),
            (Item::Seg(s), Attr::LastUpdate) => push_i64(out, s.last_update_ms),
            (Item::Seg(s), Attr::LastRealization) => push_i64(out, s.last_realization_ms),
            (Item::Trait(t), Attr::Item | Attr::Id) => push_u64(out, u64::from(t.id)),
            (Item::Trait(t), Attr::Type) => push_u64(out, u64::from(t.kind)),
            (Item::Trait(t), Attr::LastRealization) => push_i64(out, t.last_realized_ms),
            (Item::Trait(_), Attr::LastUpdate) => {}
            (Item::DpUuid(id), Attr::Item) => out.extend_from_slice(id.as_bytes()),
            (Item::DpUuid(_), _) => {}
        }
    }
}

fn scalar(s: Scalar, batch: &Batch<'_>, row: &Row<'_>, out: &mut Vec<u8>) {
    match s {
        Scalar::Uuid => out.extend_from_slice(row.uuid.as_bytes()),
        Scalar::DpUuid => {
            if let Some(id) = row.dp_uuids.first() {
                out.extend_from_slice(id.as_bytes());
            }
        }
        Scalar::Dpid => push_u64(out, u64::from(batch.dpid)),
        Scalar::MasterDpid => {
            if let Some(m) = batch.master_dpid {
                push_u64(out, u64::from(m));
            }
        }
        Scalar::Pid => push_u64(out, u64::from(batch.pid)),
        Scalar::PidAlias => {
            if let Some(a) = batch.pid_alias {
                out.extend_from_slice(a.as_bytes());
            }
        }
        Scalar::OrderId => push_u64(out, u64::from(batch.order_id)),
        Scalar::SyncMode => out.extend_from_slice(batch.sync_mode.as_bytes()),
        Scalar::SyncType => out.extend_from_slice(batch.sync_type.as_bytes()),
        Scalar::Timestamp => push_i64(out, batch.timestamp_s),
    }
}

/// Appends `n` in decimal, without allocating.
pub(super) fn push_u64(out: &mut Vec<u8>, n: u64) {
    push_padded(out, n, 1);
}

/// Appends `n` in decimal, `-` first when negative, without allocating.
pub(super) fn push_i64(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    push_padded(out, n.unsigned_abs(), 1);
}

/// Appends `n` in decimal, zero-padded to at least `width` digits.
fn push_padded(out: &mut Vec<u8>, mut n: u64, width: usize) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        // `n % 10 < 10`, so the cast is exact.
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    let digits = buf.len() - i;
    for _ in digits..width {
        out.push(b'0');
    }
    out.extend_from_slice(&buf[i..]);
}

fn error_at(text: &str, offset: usize, kind: TemplateErrorKind) -> TemplateError {
    let offset = offset.min(text.len());
    // `offset` may sit inside a multi-byte character; count what precedes it.
    let before = text.as_bytes().get(..offset).unwrap_or(&[]);
    let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let column = 1 + before
        .get(line_start..)
        .unwrap_or(&[])
        .iter()
        .filter(|&&b| (b & 0xC0) != 0x80)
        .count();
    TemplateError {
        offset,
        line,
        column,
        kind,
    }
}

type ParseResult<T> = Result<T, (usize, TemplateErrorKind)>;

/// The list body being parsed: its item name and list.
#[derive(Clone, Copy)]
struct BodyCtx<'s> {
    var: &'s str,
    list: ListKind,
}

struct IfFrame {
    /// Offset of the `<if`, for the unclosed error.
    open: usize,
    /// The `JumpUnless` of the current branch, patched at the next branch or `<endif>`.
    pending: Option<usize>,
    /// `Jump`s at the end of each taken branch, patched at `<endif>`.
    ends: Vec<usize>,
    seen_else: bool,
}

struct Parser<'s> {
    src: &'s [u8],
    pos: usize,
    /// Ops before this index may not absorb following literal text: it is a jump target.
    barrier: usize,
    prog: Template,
}

impl<'s> Parser<'s> {
    /// Parses text and tags until the end (top level) or the body's `}` (consumed).
    fn seq(&mut self, body: Option<BodyCtx<'s>>) -> ParseResult<()> {
        let mut ifs: Vec<IfFrame> = Vec::new();
        let body_open = self.pos;
        let mut lit_start = self.pos;
        loop {
            let Some(&b) = self.src.get(self.pos) else {
                self.flush(lit_start, self.pos);
                if body.is_some() {
                    return Err((body_open, TemplateErrorKind::UnclosedBody));
                }
                break;
            };
            match b {
                b'<' => {
                    self.flush(lit_start, self.pos);
                    let open = self.pos;
                    let end = self.src.len();
                    // A tag cut off by the end of the template is reported at its `<`.
                    self.tag(body, &mut ifs).map_err(|(at, kind)| match kind {
                        TemplateErrorKind::UnclosedTag if at >= end => (open, kind),
                        _ => (at, kind),
                    })?;
                    lit_start = self.pos;
                }
                b'\\' if matches!(self.src.get(self.pos + 1), Some(b'<' | b'>' | b'{' | b'}')) => {
                    self.flush(lit_start, self.pos);
                    lit_start = self.pos + 1;
                    self.pos += 2;
                }
                b'}' if body.is_some() => {
                    self.flush(lit_start, self.pos);
                    self.pos += 1;
                    break;
                }
                _ => self.pos += 1,
            }
        }
        match ifs.first() {
            Some(frame) => Err((frame.open, TemplateErrorKind::UnclosedIf)),
            None => Ok(()),
        }
    }

    fn flush(&mut self, start: usize, end: usize) {
        if let Some(bytes) = self.src.get(start..end) {
            self.push_lit(bytes);
        }
    }

    fn push_lit(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let text_len = self.prog.text.len();
        self.prog.text.extend_from_slice(bytes);
        let new_end = self.prog.text.len();
        if self.prog.ops.len() > self.barrier
            && let Some(Op::Lit { end, .. }) = self.prog.ops.last_mut()
            && *end == text_len
        {
            *end = new_end;
            return;
        }
        self.prog.ops.push(Op::Lit {
            start: text_len,
            end: new_end,
        });
    }

    /// The index the next op will get, made a jump target.
    fn target_here(&mut self) -> usize {
        self.barrier = self.prog.ops.len();
        self.barrier
    }

    fn patch(&mut self, at: usize, target: usize) {
        match self.prog.ops.get_mut(at) {
            Some(Op::JumpUnless { target: t, .. }) | Some(Op::Jump { target: t }) => *t = target,
            _ => {}
        }
    }

    fn peek(&self) -> Option<u8> {
        self.src.get(self.pos).copied()
    }

    fn found(&self) -> String {
        match std::str::from_utf8(self.src.get(self.pos..).unwrap_or(&[]))
            .ok()
            .and_then(|s| s.chars().next())
        {
            Some(c) => format!("{c:?}"),
            None if self.pos >= self.src.len() => "end of template".to_owned(),
            None => "a non-UTF-8 byte".to_owned(),
        }
    }

    fn expect(&mut self, byte: u8, expected: &'static str) -> ParseResult<()> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else if self.peek().is_none() {
            Err((self.pos, TemplateErrorKind::UnclosedTag))
        } else {
            Err((
                self.pos,
                TemplateErrorKind::Expected {
                    expected,
                    found: self.found(),
                },
            ))
        }
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.pos += 1;
        }
    }

    /// An identifier (letters, digits, `_`, `.`); empty when there is none.
    fn ident(&mut self) -> &'s str {
        let start = self.pos;
        while matches!(self.peek(), Some(b) if b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        {
            self.pos += 1;
        }
        // ASCII only, so always valid UTF-8.
        std::str::from_utf8(self.src.get(start..self.pos).unwrap_or(&[])).unwrap_or("")
    }

    fn need_ident(&mut self, expected: &'static str) -> ParseResult<&'s str> {
        let at = self.pos;
        let name = self.ident();
        if name.is_empty() {
            if self.peek().is_none() {
                return Err((at, TemplateErrorKind::UnclosedTag));
            }
            return Err((
                at,
                TemplateErrorKind::Expected {
                    expected,
                    found: self.found(),
                },
            ));
        }
        Ok(name)
    }

    /// Parses one tag; `pos` is at its `<`.
    fn tag(&mut self, body: Option<BodyCtx<'s>>, ifs: &mut Vec<IfFrame>) -> ParseResult<()> {
        let open = self.pos;
        self.pos += 1;
        if self.peek() == Some(b'!') {
            return match memchr::memmem::find(self.src.get(self.pos + 1..).unwrap_or(&[]), b"!>") {
                Some(i) => {
                    self.pos += 1 + i + 2;
                    Ok(())
                }
                None => Err((open, TemplateErrorKind::UnclosedComment)),
            };
        }
        self.skip_ws();
        let name_at = self.pos;
        let name = self.need_ident("a macro name")?;
        match name {
            "if" | "elseif" => {
                let is_if = name == "if";
                if !is_if {
                    match ifs.last() {
                        None => return Err((open, TemplateErrorKind::StrayBranch("elseif"))),
                        Some(f) if f.seen_else => {
                            return Err((open, TemplateErrorKind::BranchAfterElse("elseif")));
                        }
                        Some(_) => {}
                    }
                }
                self.skip_ws();
                self.expect(b'(', "`(` after `if`")?;
                let start = self.prog.conds.len();
                self.cond_or(0)?;
                let end = self.prog.conds.len();
                self.skip_ws();
                self.expect(b')', "`)` or an operator (`&&`, `||`) in the condition")?;
                self.skip_ws();
                self.expect(b'>', "`>` after the condition")?;
                if is_if {
                    let at = self.prog.ops.len();
                    self.prog.ops.push(Op::JumpUnless {
                        start,
                        end,
                        target: 0,
                    });
                    ifs.push(IfFrame {
                        open,
                        pending: Some(at),
                        ends: Vec::new(),
                        seen_else: false,
                    });
                } else {
                    let jump = self.prog.ops.len();
                    self.prog.ops.push(Op::Jump { target: 0 });
                    let here = self.target_here();
                    let at = self.prog.ops.len();
                    self.prog.ops.push(Op::JumpUnless {
                        start,
                        end,
                        target: 0,
                    });
                    if let Some(frame) = ifs.last_mut() {
                        frame.ends.push(jump);
                        let pending = frame.pending.replace(at);
                        if let Some(p) = pending {
                            self.patch(p, here);
                        }
                    }
                }
                Ok(())
            }
            "else" => {
                self.skip_ws();
                self.expect(b'>', "`>` after `else`")?;
                match ifs.last() {
                    None => return Err((open, TemplateErrorKind::StrayBranch("else"))),
                    Some(f) if f.seen_else => {
                        return Err((open, TemplateErrorKind::BranchAfterElse("else")));
                    }
                    Some(_) => {}
                }
                let jump = self.prog.ops.len();
                self.prog.ops.push(Op::Jump { target: 0 });
                let here = self.target_here();
                if let Some(frame) = ifs.last_mut() {
                    frame.ends.push(jump);
                    frame.seen_else = true;
                    if let Some(p) = frame.pending.take() {
                        self.patch(p, here);
                    }
                }
                Ok(())
            }
            "endif" => {
                self.skip_ws();
                self.expect(b'>', "`>` after `endif`")?;
                let Some(frame) = ifs.pop() else {
                    return Err((open, TemplateErrorKind::StrayBranch("endif")));
                };
                let here = self.target_here();
                if let Some(p) = frame.pending {
                    self.patch(p, here);
                }
                for j in frame.ends {
                    self.patch(j, here);
                }
                Ok(())
            }
            _ => self.value_tag(name, name_at, body),
        }
    }

    /// A tag naming a macro, a list item or an item attribute; `pos` is after the name.
    fn value_tag(
        &mut self,
        name: &'s str,
        name_at: usize,
        body: Option<BodyCtx<'s>>,
    ) -> ParseResult<()> {
        if let Some((var, attr)) = name.split_once('.') {
            let ctx = body
                .filter(|b| b.var == var)
                .ok_or_else(|| (name_at, TemplateErrorKind::UnknownVariable(var.to_owned())))?;
            let attr = ctx.list.attr(attr).map_err(|k| (name_at, k))?;
            self.prog.ops.push(Op::Attr(attr));
            return self.close_tag();
        }
        if body.is_some_and(|b| b.var == name) {
            self.prog.ops.push(Op::Attr(Attr::Item));
            return self.close_tag();
        }
        let Some(mac) = lookup(name) else {
            return Err((name_at, TemplateErrorKind::UnknownMacro(name.to_owned())));
        };
        match mac {
            Macro::Unsupported(why) => Err((
                name_at,
                TemplateErrorKind::Unsupported {
                    name: name.to_owned(),
                    why,
                },
            )),
            Macro::Const(bytes) => {
                self.no_body_or_options(name)?;
                self.push_lit(bytes);
                Ok(())
            }
            Macro::Scalar(Scalar::Timestamp) => {
                self.skip_ws();
                if self.peek() == Some(b':') {
                    return Err((name_at, TemplateErrorKind::NotAList(name.to_owned())));
                }
                let mut format = None;
                self.options(|p, option, at| match option {
                    "format" => {
                        format = Some((p.string()?, at));
                        Ok(())
                    }
                    _ => Err(unknown_option(name, option, at)),
                })?;
                self.close_tag()?;
                match format {
                    None => self.prog.ops.push(Op::Scalar(Scalar::Timestamp)),
                    Some((fmt, at)) => {
                        let start = self.prog.dates.len();
                        self.date_format(&fmt).map_err(|k| (at, k))?;
                        let end = self.prog.dates.len();
                        self.prog.ops.push(Op::Date { start, end });
                    }
                }
                Ok(())
            }
            Macro::Scalar(s) => {
                self.no_body_or_options(name)?;
                self.prog.ops.push(Op::Scalar(s));
                Ok(())
            }
            Macro::List(list) => {
                if body.is_some() {
                    return Err((name_at, TemplateErrorKind::NestedList));
                }
                self.list(list, name)
            }
        }
    }

    fn close_tag(&mut self) -> ParseResult<()> {
        self.skip_ws();
        self.expect(b'>', "`>`")
    }

    /// For macros without body or options: `;` or `:` are errors naming the macro.
    fn no_body_or_options(&mut self, name: &str) -> ParseResult<()> {
        self.skip_ws();
        let at = self.pos;
        if self.peek() == Some(b':') {
            return Err((at, TemplateErrorKind::NotAList(name.to_owned())));
        }
        self.options(|_, option, at| Err(unknown_option(name, option, at)))?;
        self.close_tag()
    }

    /// `; opt=value[, opt=value...]`, if present; `pos` ends before the `>`.
    fn options(
        &mut self,
        mut each: impl FnMut(&mut Self, &'s str, usize) -> ParseResult<()>,
    ) -> ParseResult<()> {
        self.skip_ws();
        if self.peek() != Some(b';') {
            return Ok(());
        }
        self.pos += 1;
        loop {
            self.skip_ws();
            let at = self.pos;
            let option = self.need_ident("an option name (`separator` or `format`)")?;
            self.skip_ws();
            self.expect(b'=', "`=` after the option name")?;
            self.skip_ws();
            each(self, option, at)?;
            self.skip_ws();
            match self.peek() {
                Some(b',' | b';') => self.pos += 1,
                _ => return Ok(()),
            }
        }
    }

    /// A quoted string; `pos` is at the opening quote.
    fn string(&mut self) -> ParseResult<Vec<u8>> {
        self.expect(b'"', "a quoted string")?;
        let open = self.pos - 1;
        let mut value = Vec::new();
        loop {
            let Some(b) = self.peek() else {
                return Err((open, TemplateErrorKind::UnclosedString));
            };
            self.pos += 1;
            match b {
                b'"' => return Ok(value),
                b'\\' => {
                    let Some(e) = self.peek() else {
                        return Err((open, TemplateErrorKind::UnclosedString));
                    };
                    self.pos += 1;
                    match e {
                        b'n' => value.push(b'\n'),
                        b't' => value.push(b'\t'),
                        b'r' => value.push(b'\r'),
                        b'"' | b'\\' => value.push(e),
                        other => {
                            value.push(b'\\');
                            value.push(other);
                        }
                    }
                }
                other => value.push(other),
            }
        }
    }

    /// `separator=` value: a quoted string or a constant macro name.
    fn separator(&mut self) -> ParseResult<Vec<u8>> {
        if self.peek() == Some(b'"') {
            return self.string();
        }
        let at = self.pos;
        let name = self.need_ident("a quoted separator or a constant macro such as TAB")?;
        match lookup(name) {
            Some(Macro::Const(bytes)) => Ok(bytes.to_vec()),
            _ => Err((at, TemplateErrorKind::BadSeparator(name.to_owned()))),
        }
    }

    /// A list tag after its name: `[:{x|body}] [; separator=...] >`.
    fn list(&mut self, list: ListKind, name: &'s str) -> ParseResult<()> {
        let at = self.prog.ops.len();
        self.prog.ops.push(Op::List {
            list,
            sep_start: 0,
            sep_end: 0,
            body: None,
        });
        self.skip_ws();
        let mut body = None;
        if self.peek() == Some(b':') {
            self.pos += 1;
            self.skip_ws();
            self.expect(b'{', "`{` to open the list body")?;
            self.skip_ws();
            let var_at = self.pos;
            let var = self.need_ident("the item name, as in `{seg|...}`")?;
            if var.contains('.') {
                return Err((
                    var_at,
                    TemplateErrorKind::Expected {
                        expected: "an item name without `.`",
                        found: format!("{var:?}"),
                    },
                ));
            }
            self.skip_ws();
            self.expect(b'|', "`|` after the item name")?;
            self.seq(Some(BodyCtx { var, list }))?;
            body = Some(self.prog.ops.len() - at - 1);
            self.target_here();
        }
        let mut sep = Vec::new();
        self.options(|p, option, opt_at| match option {
            "separator" => {
                sep = p.separator()?;
                Ok(())
            }
            _ => Err(unknown_option(name, option, opt_at)),
        })?;
        self.close_tag()?;
        let sep_start = self.prog.text.len();
        self.prog.text.extend_from_slice(&sep);
        let sep_end = self.prog.text.len();
        if let Some(op) = self.prog.ops.get_mut(at) {
            *op = Op::List {
                list,
                sep_start,
                sep_end,
                body,
            };
        }
        Ok(())
    }

    /// `a || b`, lowest precedence.
    fn cond_or(&mut self, depth: usize) -> ParseResult<()> {
        self.cond_and(depth)?;
        loop {
            self.skip_ws();
            if self.src.get(self.pos..self.pos + 2) == Some(b"||") {
                self.pos += 2;
                self.cond_and(depth)?;
                self.prog.conds.push(CondOp::Or);
            } else {
                return Ok(());
            }
        }
    }

    fn cond_and(&mut self, depth: usize) -> ParseResult<()> {
        self.cond_unary(depth)?;
        loop {
            self.skip_ws();
            if self.src.get(self.pos..self.pos + 2) == Some(b"&&") {
                self.pos += 2;
                self.cond_unary(depth)?;
                self.prog.conds.push(CondOp::And);
            } else {
                return Ok(());
            }
        }
    }

    fn cond_unary(&mut self, depth: usize) -> ParseResult<()> {
        self.skip_ws();
        if depth >= MAX_COND_DEPTH {
            return Err((self.pos, TemplateErrorKind::ConditionTooDeep));
        }
        match self.peek() {
            Some(b'!') => {
                self.pos += 1;
                self.cond_unary(depth + 1)?;
                self.prog.conds.push(CondOp::Not);
                Ok(())
            }
            Some(b'(') => {
                self.pos += 1;
                self.cond_or(depth + 1)?;
                self.skip_ws();
                self.expect(b')', "`)` to close `(` in the condition")
            }
            _ => {
                let at = self.pos;
                let name = self.need_ident("a list or value name in the condition")?;
                let atom = match lookup(name) {
                    Some(Macro::List(list)) => CondAtom::List(list),
                    Some(Macro::Scalar(Scalar::DpUuid)) => CondAtom::DpUuid,
                    Some(Macro::Scalar(Scalar::Uuid)) => CondAtom::Uuid,
                    Some(Macro::Scalar(Scalar::PidAlias)) => CondAtom::PidAlias,
                    Some(Macro::Scalar(Scalar::MasterDpid)) => CondAtom::MasterDpid,
                    _ => return Err((at, TemplateErrorKind::BadCondition(name.to_owned()))),
                };
                self.prog.conds.push(CondOp::Atom(atom));
                Ok(())
            }
        }
    }

    /// Compiles a Java-style date format into `prog.dates`.
    fn date_format(&mut self, fmt: &[u8]) -> Result<(), TemplateErrorKind> {
        let mut i = 0;
        while let Some(&c) = fmt.get(i) {
            if c == b'\'' {
                i = self.date_quoted(fmt, i + 1)?;
                continue;
            }
            if !c.is_ascii_alphabetic() {
                let run = fmt
                    .get(i..)
                    .unwrap_or(&[])
                    .iter()
                    .take_while(|&&b| !b.is_ascii_alphabetic() && b != b'\'')
                    .count();
                self.date_lit(fmt.get(i..i + run).unwrap_or(&[]));
                i += run;
                continue;
            }
            let width = fmt
                .get(i..)
                .unwrap_or(&[])
                .iter()
                .take_while(|&&b| b == c)
                .count();
            i += width;
            let field = match c {
                b'y' | b'Y' if width == 2 => DateField::ShortYear,
                b'y' | b'Y' => DateField::Year,
                b'M' => DateField::Month,
                b'd' | b'D' => DateField::Day,
                b'H' | b'h' => DateField::Hour,
                b'm' => DateField::Minute,
                b's' => DateField::Second,
                b'S' => DateField::Millis,
                other => {
                    return Err(TemplateErrorKind::BadDateFormat(format!(
                        "letter `{}` is not supported (use y, M, d, H, m, s, S)",
                        char::from(other)
                    )));
                }
            };
            if width > MAX_DATE_WIDTH {
                return Err(TemplateErrorKind::BadDateFormat(format!(
                    "field `{}` is wider than {MAX_DATE_WIDTH} letters",
                    char::from(c)
                )));
            }
            self.prog.dates.push(DatePiece::Field { field, width });
        }
        Ok(())
    }

    /// A quoted date literal starting after its opening `'` at `i`: `''` alone is a quote, and
    /// `''` inside quotes is a quote too. Returns the index after the closing quote.
    fn date_quoted(&mut self, fmt: &[u8], mut i: usize) -> Result<usize, TemplateErrorKind> {
        if fmt.get(i) == Some(&b'\'') {
            self.date_lit(b"'");
            return Ok(i + 1);
        }
        loop {
            let rest = fmt.get(i..).unwrap_or(&[]);
            let Some(q) = memchr::memchr(b'\'', rest) else {
                return Err(TemplateErrorKind::BadDateFormat(
                    "quote `'` is never closed".to_owned(),
                ));
            };
            self.date_lit(rest.get(..q).unwrap_or(&[]));
            i += q + 1;
            if fmt.get(i) == Some(&b'\'') {
                self.date_lit(b"'");
                i += 1;
            } else {
                return Ok(i);
            }
        }
    }

    fn date_lit(&mut self, bytes: &[u8]) {
        let start = self.prog.text.len();
        self.prog.text.extend_from_slice(bytes);
        let end = self.prog.text.len();
        self.prog.dates.push(DatePiece::Lit { start, end });
    }
}

fn unknown_option(name: &str, option: &str, at: usize) -> (usize, TemplateErrorKind) {
    (
        at,
        TemplateErrorKind::UnknownOption {
            name: name.to_owned(),
            option: option.to_owned(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BATCH: Batch<'static> = Batch {
        order_id: 888,
        dpid: 21,
        master_dpid: None,
        pid: 1159,
        pid_alias: Some("XYZ"),
        sync_mode: "iter",
        sync_type: "s3",
        timestamp_s: 1_449_756_724,
    };

    fn seg(sid: u32) -> SegmentRef {
        SegmentRef {
            sid,
            last_update_ms: 1_000 + i64::from(sid),
            last_realization_ms: 2_000 + i64::from(sid),
        }
    }

    fn render(t: &str, row: &Row<'_>) -> String {
        let tpl = Template::parse(t).unwrap();
        let mut out = Vec::new();
        tpl.render(&BATCH, row, &mut out);
        String::from_utf8(out).unwrap()
    }

    fn err(t: &str) -> TemplateError {
        Template::parse(t).unwrap_err()
    }

    #[test]
    fn scalars_and_constants() {
        let row = Row {
            uuid: "U",
            dp_uuids: &["a", "b"],
            ..Row::EMPTY
        };
        assert_eq!(
            render(
                "<UUID>|<DP_UUID>|<DPID>|<MASTER_DPID>|<PID>|<PID_ALIAS>|<PIDALIAS>|<ORDER_ID>|\
                 <SYNC_MODE>|<SYNC_TYPE>|<TIMESTAMP>",
                &row
            ),
            "U|a|21||1159|XYZ|XYZ|888|iter|s3|1449756724"
        );
        assert_eq!(
            render(
                "<TAB><NEW_LINE><ASCII_SOH><COMMA><OPEN_CURLY_BRACKET><CLOSE_CURLY_BRACKET>\
                 <SET_ATTRIBUTES><OUTPUT_ATTRIBUTE_VALUE><OPT_OUT>",
                &row
            ),
            "\t\n\x01,{}110"
        );
        // Constants fold into one literal op.
        let t = Template::parse("a<TAB>b<COMMA>c").unwrap();
        assert_eq!(t.ops.len(), 1);
        assert_eq!(render("x\\<y\\>\\{\\}\\z", &row), "x<y>{}\\z");
        assert_eq!(render("<! a comment <UUID> !>k", &row), "k");
    }

    #[test]
    fn timestamp_formats() {
        // 1449756724 = 2015-12-10T14:12:04Z.
        let row = Row::EMPTY;
        assert_eq!(
            render(r#"<TIMESTAMP; format="YYYYMMDDhhmmss">"#, &row),
            "20151210141204"
        );
        assert_eq!(
            render(
                r#"<TIMESTAMP;format="yyyy-MM-dd'T'HH:mm:ss.SSS 'o''clock' yy M d">"#,
                &row
            ),
            "2015-12-10T14:12:04.000 o'clock 15 12 10"
        );
        let tpl = Template::parse(r#"<TIMESTAMP; format="yyyyMMdd">"#).unwrap();
        let mut out = Vec::new();
        tpl.render(
            &Batch {
                timestamp_s: i64::MAX,
                ..BATCH
            },
            &row,
            &mut out,
        );
        assert_eq!(out, i64::MAX.to_string().as_bytes());
        assert_eq!(
            err(r#"<TIMESTAMP; format="yyyyQQ">"#).kind,
            TemplateErrorKind::BadDateFormat(
                "letter `Q` is not supported (use y, M, d, H, m, s, S)".to_owned()
            )
        );
        assert_eq!(
            err(r#"<TIMESTAMP; separator=",">"#).kind,
            TemplateErrorKind::UnknownOption {
                name: "TIMESTAMP".into(),
                option: "separator".into()
            }
        );
    }

    #[test]
    fn lists_and_bodies() {
        let segs = [seg(24), seg(26)];
        let removed = [seg(25)];
        let traits = [TraitRef {
            id: 7,
            last_realized_ms: 99,
            kind: TRAIT_TYPE_ONBOARDED,
        }];
        let row = Row {
            uuid: "U",
            dp_uuids: &["d1", "d2"],
            segments: &segs,
            removed: &removed,
            traits: &traits,
        };
        assert_eq!(render(r#"<SEGMENT_LIST;separator=",">"#, &row), "24,26");
        assert_eq!(render("<SEGMENT_LIST>", &row), "2426");
        assert_eq!(render("<DP_UUID_LIST;separator=TAB>", &row), "d1\td2");
        assert_eq!(
            render(
                r#"<SEGMENT_LIST:{s|[<s.sid>/<s.alias>/<s.segmentId>/<s.csegid>/<s.type>/<s.lastUpdateTime>/<s.lastRealizationTime>/<s>/<DPID>]}; separator="\t">"#,
                &row
            ),
            "[24/24/24/24/5/1024/2024/24/21]\t[26/26/26/26/5/1026/2026/26/21]"
        );
        assert_eq!(
            render(
                "<TRAIT_LIST:{t|<t.Id>,<t.id>,<t.traitId>,<t.type>,<t.lastRealized>,<t>}>",
                &row
            ),
            "7,7,7,10,99,7"
        );
        assert_eq!(
            render(r#"<DP_UUID_LIST:{d|(<d>)}; separator=" , ">"#, &row),
            "(d1) , (d2)"
        );
        assert_eq!(
            render(
                r#"<REMOVED_SEGMENT_LIST:{s|<if(TRAIT_LIST)>t<endif><s>}>x"#,
                &row
            ),
            "t25x"
        );
    }

    #[test]
    fn conditionals() {
        let segs = [seg(1)];
        let with_segs = Row {
            segments: &segs,
            ..Row::EMPTY
        };
        let t = "<if(SEGMENT_LIST)>S<elseif(REMOVED_SEGMENT_LIST)>R<else>N<endif>.";
        assert_eq!(render(t, &with_segs), "S.");
        let with_removed = Row {
            removed: &segs,
            ..Row::EMPTY
        };
        assert_eq!(render(t, &with_removed), "R.");
        assert_eq!(render(t, &Row::EMPTY), "N.");
        let both = Row {
            segments: &segs,
            removed: &segs,
            ..Row::EMPTY
        };
        let t = "<if(SEGMENT_LIST && REMOVED_SEGMENT_LIST)>B<endif>";
        assert_eq!(render(t, &both), "B");
        assert_eq!(render(t, &with_segs), "");
        let t = "<if(!(SEGMENT_LIST || TRAIT_LIST) && PID_ALIAS)>x<else>y<endif>";
        assert_eq!(render(t, &Row::EMPTY), "x");
        assert_eq!(render(t, &with_segs), "y");
        assert_eq!(
            render("<if(MASTER_DPID)>m<endif><if(UUID)>u<endif>", &Row::EMPTY),
            ""
        );
        // Literal text after an `<endif>` is not merged into the branch.
        assert_eq!(render("a<if(SEGMENT_LIST)>b<endif>c", &Row::EMPTY), "ac");
        assert_eq!(
            render("a<if(SEGMENT_LIST)>b<else>c<endif>d", &Row::EMPTY),
            "acd"
        );
        assert_eq!(
            render(
                "<if(SEGMENT_LIST)><if(TRAIT_LIST)>t<endif>s<endif>",
                &with_segs
            ),
            "s"
        );
    }

    #[test]
    fn errors_name_the_position_and_reason() {
        let e = err("ab\ncd<FOO>");
        assert_eq!((e.offset, e.line, e.column), (6, 2, 4));
        assert_eq!(e.kind, TemplateErrorKind::UnknownMacro("FOO".into()));
        assert_eq!(
            e.to_string(),
            "template line 2, column 4: unknown macro `FOO` (macro names are upper case, e.g. `<UUID>`, `<SEGMENT_LIST>`)"
        );
        let e = err("é<if(SEGMENT_LIST)>x");
        assert_eq!(
            (e.line, e.column, e.kind),
            (1, 2, TemplateErrorKind::UnclosedIf)
        );
        assert_eq!(
            err("x<endif>").kind,
            TemplateErrorKind::StrayBranch("endif")
        );
        assert_eq!(err("<else>").kind, TemplateErrorKind::StrayBranch("else"));
        assert_eq!(
            err("<if(UUID)><else><else><endif>").kind,
            TemplateErrorKind::BranchAfterElse("else")
        );
        assert_eq!(err("<UUID").kind, TemplateErrorKind::UnclosedTag);
        let e = err("ab\n<SEGMENT_LIST:{s|<s.sid>}; separator=\",\"");
        assert_eq!((e.offset, e.line, e.column), (3, 2, 1));
        assert_eq!(e.kind, TemplateErrorKind::UnclosedTag);
        assert_eq!(err("<SEGMENT_LIST:{s|<s.sid").offset, 17);
        assert_eq!(err("<").kind, TemplateErrorKind::UnclosedTag);
        assert_eq!(err("<!x").kind, TemplateErrorKind::UnclosedComment);
        assert_eq!(
            err("<SEGMENT_LIST:{s|<s>").kind,
            TemplateErrorKind::UnclosedBody
        );
        assert_eq!(
            err("<UUID:{s|x}>").kind,
            TemplateErrorKind::NotAList("UUID".into())
        );
        assert_eq!(
            err("<SEGMENT_LIST:{s|<TRAIT_LIST>}>").kind,
            TemplateErrorKind::NestedList
        );
        assert_eq!(
            err("<SEGMENT_LIST:{s|<t.sid>}>").kind,
            TemplateErrorKind::UnknownVariable("t".into())
        );
        assert!(matches!(
            err("<SEGMENT_LIST:{s|<s.lastRealized>}>").kind,
            TemplateErrorKind::UnknownAttribute {
                list: "SEGMENT_LIST",
                ..
            }
        ));
        assert_eq!(
            err("<s.sid>").kind,
            TemplateErrorKind::UnknownVariable("s".into())
        );
        assert_eq!(
            err("<SEGMENT_LIST; separator=UUID>").kind,
            TemplateErrorKind::BadSeparator("UUID".into())
        );
        assert_eq!(
            err(r#"<SEGMENT_LIST; separator=",>"#).kind,
            TemplateErrorKind::UnclosedString
        );
        assert_eq!(
            err("<if(PID)>x<endif>").kind,
            TemplateErrorKind::BadCondition("PID".into())
        );
        assert_eq!(
            err(&format!("<if({}UUID)><endif>", "(".repeat(40))).kind,
            TemplateErrorKind::ConditionTooDeep
        );
        assert!(matches!(
            err("<DPUUIDS; format=\"dpids=1\">").kind,
            TemplateErrorKind::Unsupported { .. }
        ));
        assert_eq!(
            err("<UUID x>").kind,
            TemplateErrorKind::Expected {
                expected: "`>`",
                found: "'x'".into()
            }
        );
    }

    #[test]
    fn numbers() {
        let mut out = Vec::new();
        push_u64(&mut out, 0);
        out.push(b' ');
        push_u64(&mut out, u64::MAX);
        out.push(b' ');
        push_i64(&mut out, i64::MIN);
        out.push(b' ');
        push_padded(&mut out, 7, 3);
        assert_eq!(out, b"0 18446744073709551615 -9223372036854775808 007");
    }

    fn token() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("<".to_owned()),
            Just(">".to_owned()),
            Just("{".to_owned()),
            Just("}".to_owned()),
            Just("|".to_owned()),
            Just(";".to_owned()),
            Just(":".to_owned()),
            Just("\"".to_owned()),
            Just("\\".to_owned()),
            Just("(".to_owned()),
            Just(")".to_owned()),
            Just("!".to_owned()),
            Just("&&".to_owned()),
            Just("||".to_owned()),
            Just("separator=".to_owned()),
            Just("format=".to_owned()),
            Just("if(".to_owned()),
            Just("elseif(".to_owned()),
            Just("<else>".to_owned()),
            Just("<endif>".to_owned()),
            Just("SEGMENT_LIST".to_owned()),
            Just("REMOVED_SEGMENT_LIST".to_owned()),
            Just("TRAIT_LIST".to_owned()),
            Just("DP_UUID_LIST".to_owned()),
            Just("UUID".to_owned()),
            Just("TIMESTAMP".to_owned()),
            Just("TAB".to_owned()),
            Just("s".to_owned()),
            Just("s.sid".to_owned()),
            Just("s.type".to_owned()),
            Just("t.lastRealized".to_owned()),
            Just("yyyy'MM".to_owned()),
            Just(" ".to_owned()),
            "[a-zA-Z0-9 é]{0,3}",
        ]
    }

    /// Well-formed templates built from the grammar, so rendering is exercised on nested
    /// lists, branches and dates, not only on parse errors.
    fn well_formed() -> impl Strategy<Value = String> {
        let scalar = prop_oneof![
            Just("<UUID>"),
            Just("<DP_UUID>"),
            Just("<MASTER_DPID>"),
            Just("<PID_ALIAS>"),
            Just("<TIMESTAMP>"),
            Just("<TAB>"),
            Just("<CLOSE_CURLY_BRACKET>"),
            Just("<TIMESTAMP; format=\"yy-MM-dd'T'HH:mm:ss.SSS\">"),
            Just("x{\"y\"}"),
        ]
        .prop_map(str::to_owned);
        let cond = prop_oneof![
            Just("SEGMENT_LIST"),
            Just("!REMOVED_SEGMENT_LIST"),
            Just("TRAIT_LIST && (DP_UUID || !MASTER_DPID)"),
            Just("DP_UUID_LIST || UUID && PID_ALIAS"),
        ];
        let body = prop_oneof![
            Just("<s>"),
            Just("<s.sid>,<s.type>,<s.lastUpdateTime>,<s.lastRealizationTime>"),
            Just("[<s.alias>]<if(TRAIT_LIST)>t<else>n<endif>"),
        ];
        let trait_body = prop_oneof![Just("<t>"), Just("<t.Id>:<t.type>:<t.lastRealized>")];
        let list = prop_oneof![
            (body.clone(), Just("SEGMENT_LIST"))
                .prop_map(|(b, l)| format!("<{l}:{{s|{b}}}; separator=\",\">")),
            (body, Just("REMOVED_SEGMENT_LIST")).prop_map(|(b, l)| format!("<{l}:{{s|{b}}}>")),
            trait_body.prop_map(|b| format!("<TRAIT_LIST:{{t|{b}}}; separator=TAB>")),
            Just("<DP_UUID_LIST:{d|(<d>)}; separator=\" \\\" \">".to_owned()),
            Just("<SEGMENT_LIST; separator=NEW_LINE>".to_owned()),
        ];
        let leaf = prop_oneof![scalar, list];
        leaf.prop_recursive(3, 24, 4, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 1..4).prop_map(|v| v.concat()),
                (cond.clone(), inner.clone(), proptest::option::of(inner)).prop_map(|(c, a, b)| {
                    match b {
                        Some(b) => format!("<if({c})>{a}<elseif(SEGMENT_LIST)>-<else>{b}<endif>"),
                        None => format!("<if({c})>{a}<endif>"),
                    }
                }),
            ]
        })
    }

    fn template_text() -> impl Strategy<Value = String> {
        prop_oneof![
            ".{0,64}",
            proptest::collection::vec(token(), 0..40).prop_map(|v| v.concat()),
            well_formed(),
            // A well-formed template cut short or with one byte inserted: errors near the end
            // of tags, bodies and strings.
            (well_formed(), any::<prop::sample::Index>(), token()).prop_map(|(t, at, tok)| {
                let cut = at.index(t.len() + 1);
                let cut = (0..=cut)
                    .rev()
                    .find(|&i| t.is_char_boundary(i))
                    .unwrap_or(0);
                format!(
                    "{}{tok}{}",
                    &t[..cut],
                    if tok.len() % 2 == 0 { &t[cut..] } else { "" }
                )
            }),
        ]
    }

    fn rows() -> impl Strategy<Value = (Vec<SegmentRef>, Vec<SegmentRef>, Vec<TraitRef>, i64)> {
        let s = (any::<u32>(), any::<i64>(), any::<i64>()).prop_map(|(sid, a, b)| SegmentRef {
            sid,
            last_update_ms: a,
            last_realization_ms: b,
        });
        let t = (any::<u32>(), any::<i64>(), any::<u32>()).prop_map(|(id, l, kind)| TraitRef {
            id,
            last_realized_ms: l,
            kind,
        });
        (
            proptest::collection::vec(s.clone(), 0..4),
            proptest::collection::vec(s, 0..4),
            proptest::collection::vec(t, 0..4),
            any::<i64>(),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn parser_and_renderer_never_panic(text in template_text(), (segs, removed, traits, ts) in rows()) {
            match Template::parse(&text) {
            Ok(t) => {
                let row = Row {
                    uuid: "00000000000000000000000000000000000001",
                    dp_uuids: &["x", ""],
                    segments: &segs,
                    removed: &removed,
                    traits: &traits,
                };
                let batch = Batch { timestamp_s: ts, master_dpid: Some(3), ..BATCH };
                let mut out = Vec::new();
                t.render(&batch, &row, &mut out);
                t.render(&batch, &Row::EMPTY, &mut out);
            }
            Err(e) => {
                prop_assert!(e.offset <= text.len());
                prop_assert!(e.line >= 1 && e.column >= 1);
            }
            }
        }

        #[test]
        fn well_formed_templates_compile(text in well_formed()) {
            let parsed = Template::parse(&text);
            prop_assert!(parsed.is_ok(), "{}: {:?}", text, parsed);
        }

        #[test]
        fn plain_text_renders_as_itself(text in "[^<\\\\]{0,64}") {
            prop_assert_eq!(render(&text, &Row::EMPTY), text);
        }
    }
}
