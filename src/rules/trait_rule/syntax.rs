//! Trait-builder rule syntax: the AST, a lexer and recursive-descent parser with column-exact
//! errors, and a canonical `Display` that parses back to the same AST.
//!
//! Grammar (keywords and named operators ASCII case-insensitive), loosest first, per
//! AAM-REFERENCE §6.2 (`( )` > comparisons > `AND`/`AND NOT` > `OR`):
//!
//! ```text
//! rule    = or
//! or      = and { "OR" and }
//! and     = unary { ("AND" unary) | unary-starting-with-NOT }   ; `a NOT b` = `a AND NOT b`
//! unary   = "NOT" unary | primary
//! primary = "(" or ")" | key op value
//! op      = "==" | "!=" | "<" | ">" | "<=" | ">=" | "=>"
//!         | "contains" | "startswith" | "endswith" | "matchesregex"
//! key     = word | quoted        ; a bare AND, OR or NOT is a keyword, never a key
//! value   = word | quoted        ; a bare AND, OR or NOT is rejected: quote it
//! word    = run of characters other than whitespace and ( ) " = ! < >
//! quoted  = '"' characters other than '"' '"'   ; no escapes, like the item grammar
//! ```
//!
//! Columns in errors count characters (not bytes) from 1; an error at the end of the rule points
//! one past its last character. Nesting of parentheses and `NOT` is capped at [`MAX_DEPTH`] so
//! that no input can exhaust the stack.

use crate::rules::display::{write_list, write_operand};
use std::fmt;

use super::value::Decimal;

/// Deepest nesting of parentheses and `NOT` a rule may use. Real rules nest a few levels; the
/// cap only keeps hostile input from overflowing the parser's stack.
pub const MAX_DEPTH: usize = 64;

/// A parsed trait rule.
///
/// The parser produces `And` and `Or` with at least two operands and flattens chains
/// (`a AND b AND c` is one `And` of three); parentheses keep nesting (`(a AND b) AND c` is an
/// `And` whose first operand is an `And`). `a AND NOT b` and `a NOT b` are both
/// `And([a, Not(b)])`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    /// One comparison `key OP value`.
    Atom(Atom),
    /// Negation.
    Not(Box<Expr>),
    /// All operands hold.
    And(Vec<Expr>),
    /// At least one operand holds.
    Or(Vec<Expr>),
}

/// One comparison: `key OP value`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Atom {
    /// The signal key, matched exactly (case-sensitive); never empty.
    pub key: String,
    /// The comparison.
    pub op: Op,
    /// The value as written, quotes removed (may be empty, never contains `"`).
    pub value: String,
}

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `>`
    Gt,
    /// `<=`
    Le,
    /// `>=`, also written `=>`
    Ge,
    /// `contains`: substring, ASCII case-insensitive.
    Contains,
    /// `startswith`: prefix, ASCII case-insensitive.
    StartsWith,
    /// `endswith`: suffix, ASCII case-insensitive.
    EndsWith,
    /// `matchesregex`: unanchored regex search, case-sensitive unless the pattern says `(?i)`.
    MatchesRegex,
}

impl Op {
    /// Every operator, for tests and generators.
    pub const ALL: [Op; 10] = [
        Op::Eq,
        Op::Ne,
        Op::Lt,
        Op::Gt,
        Op::Le,
        Op::Ge,
        Op::Contains,
        Op::StartsWith,
        Op::EndsWith,
        Op::MatchesRegex,
    ];

    /// The canonical spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Gt => ">",
            Op::Le => "<=",
            Op::Ge => ">=",
            Op::Contains => "contains",
            Op::StartsWith => "startswith",
            Op::EndsWith => "endswith",
            Op::MatchesRegex => "matchesregex",
        }
    }

    /// The named operator spelled `word` (any ASCII case), if any.
    fn named(word: &str) -> Option<Op> {
        [Op::Contains, Op::StartsWith, Op::EndsWith, Op::MatchesRegex]
            .into_iter()
            .find(|op| word.eq_ignore_ascii_case(op.as_str()))
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rule that does not parse: where (character column from 1) and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {kind}")]
pub struct SyntaxError {
    /// Character column of the offending token, or one past the end of the rule.
    pub column: usize,
    /// What is wrong.
    pub kind: SyntaxErrorKind,
}

/// What is wrong with a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyntaxErrorKind {
    /// Nothing but whitespace.
    Empty,
    /// A `"` without its closing `"`.
    UnclosedQuote,
    /// A single `=`.
    SingleEquals,
    /// A `!` not followed by `=`.
    LoneBang,
    /// A key (or `(` or `NOT`) was expected.
    ExpectedKey {
        /// What was found instead.
        found: Found,
    },
    /// A quoted key with nothing inside.
    EmptyKey,
    /// An operator was expected after a key.
    ExpectedOperator {
        /// The key before it.
        key: String,
        /// What was found instead.
        found: Found,
    },
    /// A value was expected after an operator.
    ExpectedValue {
        /// The operator before it.
        op: Op,
        /// What was found instead.
        found: Found,
    },
    /// A complete comparison or group was followed by something that cannot follow it.
    ExpectedConnective {
        /// What was found instead.
        found: Found,
    },
    /// A `(` (at the error's column) is never closed.
    UnclosedParen,
    /// A `)` without its `(`.
    UnmatchedCloseParen,
    /// Parentheses and `NOT` nest deeper than [`MAX_DEPTH`].
    TooDeep,
    /// The value of `matchesregex` is not a valid regular expression.
    BadRegex {
        /// The regex crate's explanation.
        reason: String,
    },
}

/// The token an error found where it expected something else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// The end of the rule.
    End,
    /// A token, as written.
    Token(String),
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Found::End => f.write_str("the end of the rule"),
            Found::Token(t) => write!(f, "'{t}'"),
        }
    }
}

impl fmt::Display for SyntaxErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use SyntaxErrorKind as K;
        match self {
            K::Empty => f.write_str("the rule is empty"),
            K::UnclosedQuote => f.write_str("this double quote is never closed"),
            K::SingleEquals => f.write_str("'=' is not an operator; write '==' to compare"),
            K::LoneBang => f.write_str("'!' must be followed by '=' ('!=')"),
            K::ExpectedKey { found } => {
                write!(f, "expected a key, '(' or NOT, found {found}")
            }
            K::EmptyKey => f.write_str("the key is empty"),
            K::ExpectedOperator { key, found } => write!(
                f,
                "expected an operator (==, !=, <, >, <=, >=, contains, startswith, endswith, \
                 matchesregex) after key '{key}', found {found}"
            ),
            K::ExpectedValue { op, found } => match found {
                Found::End => write!(f, "expected a value after '{op}'"),
                Found::Token(_) => write!(
                    f,
                    "expected a value after '{op}', found {found} (quote a value that is a \
                     keyword or contains spaces)"
                ),
            },
            K::ExpectedConnective { found } => write!(
                f,
                "expected AND, OR, NOT, ')' or the end of the rule, found {found} (quote values \
                 that contain spaces)"
            ),
            K::UnclosedParen => f.write_str("this '(' is never closed"),
            K::UnmatchedCloseParen => f.write_str("')' without a matching '('"),
            K::TooDeep => write!(f, "parentheses and NOT nest deeper than {MAX_DEPTH} levels"),
            K::BadRegex { reason } => write!(f, "invalid regular expression: {reason}"),
        }
    }
}

impl Expr {
    /// Parses a trait-builder rule, including checking every `matchesregex` pattern.
    ///
    /// ```
    /// use segmill::rules::trait_rule::{Expr, Op};
    /// let rule = Expr::parse(r#"(a== "1" OR b=="1") AND (c=="new")"#).unwrap();
    /// assert_eq!(rule.to_string(), r#"(a == 1 OR b == 1) AND c == "new""#);
    /// let err = Expr::parse("c_make == ").unwrap_err();
    /// assert_eq!(err.to_string(), "column 11: expected a value after '=='");
    /// ```
    pub fn parse(text: &str) -> Result<Expr, SyntaxError> {
        let (expr, value_columns) = parse_spanned(text)?;
        let mut atoms = Vec::new();
        expr.atoms(&mut atoms);
        for (atom, column) in atoms.into_iter().zip(value_columns) {
            if atom.op == Op::MatchesRegex
                && let Err(e) = regex::bytes::Regex::new(&atom.value)
            {
                return Err(SyntaxError {
                    column,
                    kind: SyntaxErrorKind::BadRegex {
                        reason: e.to_string(),
                    },
                });
            }
        }
        Ok(expr)
    }

    /// Appends every atom, depth first, left to right (the order of their text).
    pub fn atoms<'e>(&'e self, out: &mut Vec<&'e Atom>) {
        match self {
            Expr::Atom(a) => out.push(a),
            Expr::Not(x) => x.atoms(out),
            Expr::And(xs) | Expr::Or(xs) => xs.iter().for_each(|x| x.atoms(out)),
        }
    }
}

impl std::str::FromStr for Expr {
    type Err = SyntaxError;

    fn from_str(text: &str) -> Result<Expr, SyntaxError> {
        Expr::parse(text)
    }
}

/// Parses without checking regexes; also returns the column of each atom's value, in
/// [`Expr::atoms`] order, so the caller can compile regexes once and still point at them.
pub(crate) fn parse_spanned(text: &str) -> Result<(Expr, Vec<usize>), SyntaxError> {
    let (tokens, end) = lex(text)?;
    if tokens.is_empty() {
        return Err(SyntaxError {
            column: 1,
            kind: SyntaxErrorKind::Empty,
        });
    }
    let mut parser = Parser {
        tokens,
        pos: 0,
        end,
        depth: 0,
        value_columns: Vec::new(),
    };
    let expr = parser.or()?;
    match parser.peek() {
        None => Ok((expr, parser.value_columns)),
        Some(t) if t.kind == Kind::RParen => {
            Err(parser.error_at(t, SyntaxErrorKind::UnmatchedCloseParen))
        }
        Some(t) => Err(parser.error_at(
            t,
            SyntaxErrorKind::ExpectedConnective {
                found: Found::Token(t.text.to_owned()),
            },
        )),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    LParen,
    RParen,
    Op(Op),
    Word,
    Quoted,
}

#[derive(Clone, Copy, Debug)]
struct Token<'t> {
    kind: Kind,
    /// Character column from 1.
    column: usize,
    /// The token as written (with quotes for `Quoted`).
    text: &'t str,
}

impl<'t> Token<'t> {
    /// The content: `text` without the quotes of a quoted token.
    fn content(&self) -> &'t str {
        match self.kind {
            Kind::Quoted => self
                .text
                .get(1..self.text.len().saturating_sub(1))
                .unwrap_or_default(),
            _ => self.text,
        }
    }

    fn is_keyword(&self, keyword: &str) -> bool {
        self.kind == Kind::Word && self.text.eq_ignore_ascii_case(keyword)
    }

    fn is_any_keyword(&self) -> bool {
        ["AND", "OR", "NOT"].iter().any(|k| self.is_keyword(k))
    }
}

/// Splits `text` into tokens; also returns the column one past the last character.
fn lex(text: &str) -> Result<(Vec<Token<'_>>, usize), SyntaxError> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    let mut column = 0;
    while let Some((start, c)) = chars.next() {
        column += 1;
        let token_column = column;
        let error = |kind| SyntaxError {
            column: token_column,
            kind,
        };
        let mut end = start + c.len_utf8();
        let kind = match c {
            c if c.is_whitespace() => continue,
            '(' => Kind::LParen,
            ')' => Kind::RParen,
            '"' => {
                loop {
                    match chars.next() {
                        Some((i, '"')) => {
                            column += 1;
                            end = i + 1;
                            break;
                        }
                        Some(_) => column += 1,
                        None => return Err(error(SyntaxErrorKind::UnclosedQuote)),
                    }
                }
                Kind::Quoted
            }
            '=' | '!' | '<' | '>' => {
                let next_is = |chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>,
                               want: char| {
                    chars.next_if(|&(_, n)| n == want).is_some()
                };
                let op = match c {
                    '=' if next_is(&mut chars, '=') => Op::Eq,
                    '=' if next_is(&mut chars, '>') => Op::Ge,
                    '=' => return Err(error(SyntaxErrorKind::SingleEquals)),
                    '!' if next_is(&mut chars, '=') => Op::Ne,
                    '!' => return Err(error(SyntaxErrorKind::LoneBang)),
                    '<' if next_is(&mut chars, '=') => Op::Le,
                    '<' => Op::Lt,
                    _ if next_is(&mut chars, '=') => Op::Ge,
                    _ => Op::Gt,
                };
                if matches!(op, Op::Eq | Op::Ge | Op::Ne | Op::Le) {
                    column += 1;
                    end += 1;
                }
                Kind::Op(op)
            }
            _ => {
                while let Some((i, n)) = chars.next_if(|&(_, n)| is_word_char(n)) {
                    column += 1;
                    end = i + n.len_utf8();
                }
                Kind::Word
            }
        };
        tokens.push(Token {
            kind,
            column: token_column,
            text: text.get(start..end).unwrap_or_default(),
        });
    }
    Ok((tokens, column + 1))
}

/// Characters that continue a bare word.
fn is_word_char(c: char) -> bool {
    !c.is_whitespace() && !matches!(c, '(' | ')' | '"' | '=' | '!' | '<' | '>')
}

struct Parser<'t> {
    tokens: Vec<Token<'t>>,
    pos: usize,
    /// Column one past the end of the rule.
    end: usize,
    /// Current nesting of parentheses and `NOT`.
    depth: usize,
    /// Column of each atom's value, in text order.
    value_columns: Vec<usize>,
}

impl<'t> Parser<'t> {
    fn peek(&self) -> Option<Token<'t>> {
        self.tokens.get(self.pos).copied()
    }

    fn bump(&mut self) {
        self.pos += 1;
    }

    fn error_at(&self, token: Token<'_>, kind: SyntaxErrorKind) -> SyntaxError {
        SyntaxError {
            column: token.column,
            kind,
        }
    }

    /// An error at the next token, or at the end of the rule; `kind` is told what was found.
    fn error_here(&self, kind: impl FnOnce(Found) -> SyntaxErrorKind) -> SyntaxError {
        match self.peek() {
            Some(t) => self.error_at(t, kind(Found::Token(t.text.to_owned()))),
            None => SyntaxError {
                column: self.end,
                kind: kind(Found::End),
            },
        }
    }

    fn or(&mut self) -> Result<Expr, SyntaxError> {
        let first = self.and()?;
        if !self.peek().is_some_and(|t| t.is_keyword("OR")) {
            return Ok(first);
        }
        let mut operands = vec![first];
        while self.peek().is_some_and(|t| t.is_keyword("OR")) {
            self.bump();
            operands.push(self.and()?);
        }
        Ok(Expr::Or(operands))
    }

    fn and(&mut self) -> Result<Expr, SyntaxError> {
        let first = self.unary()?;
        let mut operands = Vec::new();
        loop {
            match self.peek() {
                Some(t) if t.is_keyword("AND") => self.bump(),
                // `a NOT b` means `a AND NOT b`: `unary` consumes the NOT.
                Some(t) if t.is_keyword("NOT") => {}
                _ => break,
            }
            operands.push(self.unary()?);
        }
        if operands.is_empty() {
            return Ok(first);
        }
        operands.insert(0, first);
        Ok(Expr::And(operands))
    }

    fn unary(&mut self) -> Result<Expr, SyntaxError> {
        match self.peek() {
            Some(t) if t.is_keyword("NOT") => {
                self.enter(t)?;
                self.bump();
                let operand = self.unary()?;
                self.depth -= 1;
                Ok(Expr::Not(Box::new(operand)))
            }
            _ => self.primary(),
        }
    }

    fn enter(&mut self, token: Token<'_>) -> Result<(), SyntaxError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error_at(token, SyntaxErrorKind::TooDeep));
        }
        Ok(())
    }

    fn primary(&mut self) -> Result<Expr, SyntaxError> {
        let Some(token) = self.peek() else {
            return Err(self.error_here(|found| SyntaxErrorKind::ExpectedKey { found }));
        };
        match token.kind {
            Kind::LParen => {
                self.enter(token)?;
                self.bump();
                let inner = self.or()?;
                match self.peek() {
                    Some(t) if t.kind == Kind::RParen => self.bump(),
                    Some(t) => {
                        return Err(self.error_at(
                            t,
                            SyntaxErrorKind::ExpectedConnective {
                                found: Found::Token(t.text.to_owned()),
                            },
                        ));
                    }
                    None => return Err(self.error_at(token, SyntaxErrorKind::UnclosedParen)),
                }
                self.depth -= 1;
                Ok(inner)
            }
            Kind::Quoted | Kind::Word if !token.is_any_keyword() => self.atom(token),
            _ => Err(self.error_here(|found| SyntaxErrorKind::ExpectedKey { found })),
        }
    }

    fn atom(&mut self, key: Token<'t>) -> Result<Expr, SyntaxError> {
        if key.content().is_empty() {
            return Err(self.error_at(key, SyntaxErrorKind::EmptyKey));
        }
        self.bump();
        let op = match self.peek() {
            Some(Token {
                kind: Kind::Op(op), ..
            }) => op,
            Some(t) if t.kind == Kind::Word => match Op::named(t.text) {
                Some(op) => op,
                None => return Err(self.expected_operator(key)),
            },
            _ => return Err(self.expected_operator(key)),
        };
        self.bump();
        match self.peek() {
            Some(value)
                if value.kind == Kind::Quoted
                    || (value.kind == Kind::Word && !value.is_any_keyword()) =>
            {
                self.bump();
                self.value_columns.push(value.column);
                Ok(Expr::Atom(Atom {
                    key: key.content().to_owned(),
                    op,
                    value: value.content().to_owned(),
                }))
            }
            _ => Err(self.error_here(|found| SyntaxErrorKind::ExpectedValue { op, found })),
        }
    }

    fn expected_operator(&self, key: Token<'_>) -> SyntaxError {
        let key = key.content().to_owned();
        self.error_here(|found| SyntaxErrorKind::ExpectedOperator { key, found })
    }
}

impl fmt::Display for Expr {
    /// The canonical form: single spaces, upper-case keywords, `AND NOT` for infix NOT,
    /// parentheses only where needed, decimals bare and other values quoted, keys bare unless
    /// they need quotes. It parses back to an equal `Expr` for every `Expr` the parser
    /// produces (not for hand-built ones with fewer than two `And`/`Or` operands or a `"` in a
    /// key or value, which no rule text can express).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Atom(a) => a.fmt(f),
            Expr::Not(x) => {
                f.write_str("NOT ")?;
                write_operand(f, x, matches!(**x, Expr::And(_) | Expr::Or(_)))
            }
            Expr::And(xs) => {
                write_list(f, xs, " AND ", |x| matches!(x, Expr::And(_) | Expr::Or(_)))
            }
            Expr::Or(xs) => write_list(f, xs, " OR ", |x| matches!(x, Expr::Or(_))),
        }
    }
}

impl fmt::Display for Atom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bare_key = self
            .key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
            && !self.key.is_empty()
            && !["AND", "OR", "NOT"]
                .iter()
                .any(|k| self.key.eq_ignore_ascii_case(k));
        if bare_key {
            f.write_str(&self.key)?;
        } else {
            write!(f, "\"{}\"", self.key)?;
        }
        write!(f, " {} ", self.op)?;
        if Decimal::parse(self.value.as_bytes()).is_some() {
            f.write_str(&self.value)
        } else {
            write!(f, "\"{}\"", self.value)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn atom(key: &str, op: Op, value: &str) -> Expr {
        Expr::Atom(Atom {
            key: key.into(),
            op,
            value: value.into(),
        })
    }

    fn eq(key: &str, value: &str) -> Expr {
        atom(key, Op::Eq, value)
    }

    fn not(x: Expr) -> Expr {
        Expr::Not(Box::new(x))
    }

    fn p(text: &str) -> Expr {
        Expr::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn err(text: &str) -> String {
        Expr::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn every_operator() {
        for (text, op) in [
            ("k == v", Op::Eq),
            ("k != v", Op::Ne),
            ("k < v", Op::Lt),
            ("k > v", Op::Gt),
            ("k <= v", Op::Le),
            ("k >= v", Op::Ge),
            ("k => v", Op::Ge),
            ("k contains v", Op::Contains),
            ("k CONTAINS v", Op::Contains),
            ("k startswith v", Op::StartsWith),
            ("k StartsWith v", Op::StartsWith),
            ("k endswith v", Op::EndsWith),
            ("k ENDSWITH v", Op::EndsWith),
            ("k matchesregex v", Op::MatchesRegex),
            ("k MatchesRegex v", Op::MatchesRegex),
        ] {
            assert_eq!(p(text), atom("k", op, "v"), "{text}");
        }
        // Symbols need no spaces.
        assert_eq!(p("price>=1.00"), atom("price", Op::Ge, "1.00"));
        assert_eq!(p("a!=\"x y\""), atom("a", Op::Ne, "x y"));
        assert_eq!(p("a<-5"), atom("a", Op::Lt, "-5"));
    }

    #[test]
    fn keys_and_values() {
        assert_eq!(p("price-123 == 5"), eq("price-123", "5"));
        assert_eq!(p(r#""my key" == "New York""#), eq("my key", "New York"));
        assert_eq!(p(r#"ic == "123""#), eq("ic", "123"));
        assert_eq!(p(r#"k == """#), eq("k", ""));
        // Quoted keywords are keys and values.
        assert_eq!(p(r#""AND" == "or""#), eq("AND", "or"));
        // A bare word that names an operator is still a key in key position.
        assert_eq!(
            p("contains contains x"),
            atom("contains", Op::Contains, "x")
        );
        // Non-ASCII words.
        assert_eq!(p("stadt == München"), eq("stadt", "München"));
    }

    #[test]
    fn precedence_and_over_or() {
        assert_eq!(
            p("a==1 OR b==1 AND c==1"),
            Expr::Or(vec![
                eq("a", "1"),
                Expr::And(vec![eq("b", "1"), eq("c", "1")])
            ])
        );
        assert_eq!(
            p("a==1 and b==1 or c==1"),
            Expr::Or(vec![
                Expr::And(vec![eq("a", "1"), eq("b", "1")]),
                eq("c", "1")
            ])
        );
        assert_eq!(
            p("a==1 OR b==1 OR c==1"),
            Expr::Or(vec![eq("a", "1"), eq("b", "1"), eq("c", "1")])
        );
    }

    #[test]
    fn not_forms() {
        let want = Expr::And(vec![eq("a", "1"), not(eq("b", "2"))]);
        assert_eq!(p("a==1 AND NOT b==2"), want);
        assert_eq!(p("a==1 NOT b==2"), want);
        assert_eq!(p("a==1 and not b==2"), want);
        assert_eq!(p("NOT a==1"), not(eq("a", "1")));
        // Leading NOT binds to its operand only.
        assert_eq!(
            p("NOT a==1 AND b==2"),
            Expr::And(vec![not(eq("a", "1")), eq("b", "2")])
        );
        assert_eq!(
            p("a==1 OR NOT b==2"),
            Expr::Or(vec![eq("a", "1"), not(eq("b", "2"))])
        );
        assert_eq!(
            p("a==1 AND NOT b==2 OR c==3"),
            Expr::Or(vec![
                Expr::And(vec![eq("a", "1"), not(eq("b", "2"))]),
                eq("c", "3")
            ])
        );
        assert_eq!(p("NOT NOT a==1"), not(not(eq("a", "1"))));
        assert_eq!(
            p("NOT (a==1 OR b==2)"),
            not(Expr::Or(vec![eq("a", "1"), eq("b", "2")]))
        );
    }

    #[test]
    fn parentheses() {
        assert_eq!(
            p("(a==1 OR b==1) AND c==1"),
            Expr::And(vec![
                Expr::Or(vec![eq("a", "1"), eq("b", "1")]),
                eq("c", "1")
            ])
        );
        assert_eq!(p("((a==1))"), eq("a", "1"));
        assert_eq!(
            p("(a==1 AND b==1) AND c==1"),
            Expr::And(vec![
                Expr::And(vec![eq("a", "1"), eq("b", "1")]),
                eq("c", "1")
            ])
        );
    }

    #[test]
    fn aam_samples() {
        // AAM-REFERENCE §6.2.
        assert_eq!(
            p(r#"(c_make=="A") AND (c_model=="B") AND (c_search=="1")"#),
            Expr::And(vec![
                eq("c_make", "A"),
                eq("c_model", "B"),
                eq("c_search", "1")
            ])
        );
        assert_eq!(
            p(r#"(a== "1" OR b=="1") AND (c=="new")"#),
            Expr::And(vec![
                Expr::Or(vec![eq("a", "1"), eq("b", "1")]),
                eq("c", "new")
            ])
        );
        assert_eq!(
            p("(price >= 1.00 AND price <= 100.00)"),
            Expr::And(vec![
                atom("price", Op::Ge, "1.00"),
                atom("price", Op::Le, "100.00")
            ])
        );
        assert_eq!(p(r#"color == "blue""#), eq("color", "blue"));
        assert_eq!(p("price > 100"), atom("price", Op::Gt, "100"));
    }

    #[test]
    fn canonical_display() {
        for (text, want) in [
            (
                r#"(c_make=="A") AND (c_model=="B")"#,
                r#"c_make == "A" AND c_model == "B""#,
            ),
            ("a==1 NOT b==2", "a == 1 AND NOT b == 2"),
            ("x => 1.50", "x >= 1.50"),
            ("(a==1 OR b==1) and c==1", "(a == 1 OR b == 1) AND c == 1"),
            ("a==1 or (b==1 or c==1)", "a == 1 OR (b == 1 OR c == 1)"),
            ("not (a==1 and b==1)", "NOT (a == 1 AND b == 1)"),
            (r#""my key" CONTAINS x"#, r#""my key" contains "x""#),
            (r#""and" == x"#, r#""and" == "x""#),
            (
                r#"k matchesregex "^a.*(?i)b$""#,
                r#"k matchesregex "^a.*(?i)b$""#,
            ),
        ] {
            let e = p(text);
            assert_eq!(e.to_string(), want, "{text}");
            assert_eq!(p(want), e, "{want}");
        }
    }

    #[test]
    fn error_positions_and_messages() {
        assert_eq!(err("c_make =="), "column 10: expected a value after '=='");
        assert_eq!(err("c_make ==  "), "column 12: expected a value after '=='");
        assert_eq!(
            err("a == AND"),
            "column 6: expected a value after '==', found 'AND' (quote a value that is a \
             keyword or contains spaces)"
        );
        assert_eq!(
            err("tier gold"),
            "column 6: expected an operator (==, !=, <, >, <=, >=, contains, startswith, \
             endswith, matchesregex) after key 'tier', found 'gold'"
        );
        assert_eq!(
            err("tier = gold"),
            "column 6: '=' is not an operator; write '==' to compare"
        );
        assert_eq!(
            err("tier ! gold"),
            "column 6: '!' must be followed by '=' ('!=')"
        );
        assert_eq!(
            err(r#"a == "gold"#),
            "column 6: this double quote is never closed"
        );
        assert_eq!(err("(a == 1"), "column 1: this '(' is never closed");
        assert_eq!(err("a == 1)"), "column 7: ')' without a matching '('");
        assert_eq!(
            err("a == new york"),
            "column 10: expected AND, OR, NOT, ')' or the end of the rule, found 'york' (quote \
             values that contain spaces)"
        );
        assert_eq!(
            err("(a == 1 b == 2)"),
            "column 9: expected AND, OR, NOT, ')' or the end of the rule, found 'b' (quote \
             values that contain spaces)"
        );
        assert_eq!(
            err("a == 1 AND"),
            "column 11: expected a key, '(' or NOT, found the end of the rule"
        );
        assert_eq!(
            err("OR a == 1"),
            "column 1: expected a key, '(' or NOT, found 'OR'"
        );
        assert_eq!(
            err("== 1"),
            "column 1: expected a key, '(' or NOT, found '=='"
        );
        assert_eq!(err("()"), "column 2: expected a key, '(' or NOT, found ')'");
        assert_eq!(err(r#""" == 1"#), "column 1: the key is empty");
        assert_eq!(err("   "), "column 1: the rule is empty");
        assert_eq!(err(""), "column 1: the rule is empty");
        // Columns count characters, not bytes.
        assert_eq!(err("straße == "), "column 11: expected a value after '=='");
        assert!(err("k matchesregex \"(\"").starts_with("column 16: invalid regular expression: "));
    }

    #[test]
    fn nesting_is_capped() {
        let ok = format!("{}a==1{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert_eq!(p(&ok), eq("a", "1"));
        let deep = format!(
            "{}a==1{}",
            "(".repeat(MAX_DEPTH + 1),
            ")".repeat(MAX_DEPTH + 1)
        );
        assert_eq!(
            err(&deep),
            format!(
                "column {}: parentheses and NOT nest deeper than 64 levels",
                MAX_DEPTH + 1
            )
        );
        let nots = format!("{}a==1", "NOT ".repeat(100_000));
        assert!(err(&nots).ends_with("nest deeper than 64 levels"));
        let parens = "(".repeat(1_000_000);
        assert!(Expr::parse(&parens).is_err());
        // Long flat chains are fine: they do not nest.
        let chain = vec!["a==1"; 10_000].join(" AND ");
        let Expr::And(xs) = p(&chain) else {
            panic!("not an And")
        };
        assert_eq!(xs.len(), 10_000);
    }

    #[test]
    fn value_columns_follow_atoms() {
        let (_, cols) = parse_spanned(r#"a == 1 OR (b != "x" AND NOT c contains y)"#).unwrap();
        assert_eq!(cols, [6, 17, 40]);
    }
}
