//! The code-view parser: a hand-written lexer and recursive-descent parser from rule text to
//! [`Expr`]. Cold path (once per catalog load); allocation is fine here, panics are not.
//! Every error carries the byte offset where it was found, turned into line and column once.

use std::num::NonZeroU32;

use super::{
    Expr, Frequency, FrequencyOp, MAX_DEPTH, ParseError, Position, Problem, Recency, RecencyOp,
};
use crate::model::TraitId;

/// Parses one segment rule in AAM code-view syntax (grammar in the module docs).
///
/// ```
/// use segmill::rules::segment_rule::{parse, Expr};
/// let rule = parse("24T or 25t and not 26T").unwrap();
/// assert_eq!(rule.to_string(), "24T OR 25T AND NOT 26T");
/// assert_eq!(
///     parse("24T AND 26").unwrap_err().to_string(),
///     "column 9: expected 'T' after trait id 26"
/// );
/// ```
pub fn parse(text: &str) -> Result<Expr, ParseError> {
    parse_at(text).map_err(|fail| ParseError {
        at: Position::of(text, fail.at),
        problem: fail.problem,
    })
}

fn parse_at(text: &str) -> Result<Expr, Fail> {
    let mut parser = Parser::new(text)?;
    if parser.peek.tok == Tok::End {
        return Err(Fail::new(parser.peek.at, Problem::Empty));
    }
    let expr = parser.or()?;
    let next = parser.peek;
    match next.tok {
        Tok::End => Ok(expr),
        Tok::Close => Err(Fail::new(next.at, Problem::UnmatchedClose)),
        _ => Err(Fail::new(
            next.at,
            Problem::ExpectedOperator {
                found: parser.found(next),
            },
        )),
    }
}

/// A problem at a byte offset, before it becomes a [`Position`].
#[derive(Debug)]
struct Fail {
    at: usize,
    problem: Problem,
}

impl Fail {
    fn new(at: usize, problem: Problem) -> Fail {
        Fail { at, problem }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok<'a> {
    Open,
    Close,
    OpenBracket,
    CloseBracket,
    Comma,
    /// `>=` or `=>`.
    Ge,
    /// `<=`.
    Le,
    /// `==`.
    Eq,
    /// A run of ASCII letters, digits and `_`: keywords, `24T`, `7D`, counts.
    Word(&'a str),
    End,
}

#[derive(Clone, Copy, Debug)]
struct Token<'a> {
    tok: Tok<'a>,
    /// Byte offset of the token's first byte.
    at: usize,
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

struct Lexer<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Lexer<'a> {
    fn byte(&self, at: usize) -> Option<u8> {
        self.text.as_bytes().get(at).copied()
    }

    fn next(&mut self) -> Result<Token<'a>, Fail> {
        while self.byte(self.pos).is_some_and(|b| b.is_ascii_whitespace()) {
            self.pos += 1;
        }
        let at = self.pos;
        let Some(b) = self.byte(at) else {
            return Ok(Token { tok: Tok::End, at });
        };
        let next = self.byte(at + 1);
        let (tok, len) = match (b, next) {
            (b'(', _) => (Tok::Open, 1),
            (b')', _) => (Tok::Close, 1),
            (b'[', _) => (Tok::OpenBracket, 1),
            (b']', _) => (Tok::CloseBracket, 1),
            (b',', _) => (Tok::Comma, 1),
            (b'>', Some(b'=')) | (b'=', Some(b'>')) => (Tok::Ge, 2),
            (b'<', Some(b'=')) => (Tok::Le, 2),
            (b'=', Some(b'=')) => (Tok::Eq, 2),
            (b'!', Some(b'=')) => return Err(unsupported(at, "!=")),
            (b'<', Some(b'>')) => return Err(unsupported(at, "<>")),
            (b'=', Some(b'<')) => return Err(unsupported(at, "=<")),
            (b'>', _) => return Err(unsupported(at, ">")),
            (b'<', _) => return Err(unsupported(at, "<")),
            (b'=', _) => return Err(unsupported(at, "=")),
            _ if is_word_byte(b) => {
                let rest = self.text.as_bytes().get(at..).unwrap_or_default();
                let len = rest
                    .iter()
                    .position(|&b| !is_word_byte(b))
                    .unwrap_or(rest.len());
                let word = self.text.get(at..at + len).unwrap_or_default();
                (Tok::Word(word), len)
            }
            _ => {
                let c = self.text.get(at..).and_then(|s| s.chars().next());
                return Err(Fail::new(
                    at,
                    Problem::UnexpectedChar(c.unwrap_or(char::REPLACEMENT_CHARACTER)),
                ));
            }
        };
        self.pos = at + len;
        Ok(Token { tok, at })
    }
}

fn unsupported(at: usize, op: &'static str) -> Fail {
    Fail::new(at, Problem::UnsupportedOperator(op))
}

struct Parser<'a> {
    lexer: Lexer<'a>,
    /// The next, not yet consumed token.
    peek: Token<'a>,
    /// Current nesting of parentheses and NOT.
    depth: usize,
}

/// Longest word quoted back in a message.
const MAX_QUOTED: usize = 40;

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Result<Parser<'a>, Fail> {
        let mut lexer = Lexer { text, pos: 0 };
        let peek = lexer.next()?;
        Ok(Parser {
            lexer,
            peek,
            depth: 0,
        })
    }

    fn advance(&mut self) -> Result<Token<'a>, Fail> {
        let current = self.peek;
        self.peek = self.lexer.next()?;
        Ok(current)
    }

    fn peek_keyword(&self, keyword: &str) -> bool {
        matches!(self.peek.tok, Tok::Word(w) if w.eq_ignore_ascii_case(keyword))
    }

    /// How a token is quoted in a message.
    fn found(&self, token: Token<'_>) -> String {
        match token.tok {
            Tok::Open => "'('".into(),
            Tok::Close => "')'".into(),
            Tok::OpenBracket => "'['".into(),
            Tok::CloseBracket => "']'".into(),
            Tok::Comma => "','".into(),
            Tok::Ge => {
                let op = self.lexer.text.get(token.at..token.at + 2).unwrap_or(">=");
                format!("'{op}'")
            }
            Tok::Le => "'<='".into(),
            Tok::Eq => "'=='".into(),
            Tok::Word(w) => quote(w),
            Tok::End => "end of rule".into(),
        }
    }

    fn enter(&mut self, at: usize) -> Result<(), Fail> {
        if self.depth >= MAX_DEPTH {
            return Err(Fail::new(at, Problem::TooDeep));
        }
        self.depth += 1;
        Ok(())
    }

    /// `or = and { OR and }`
    fn or(&mut self) -> Result<Expr, Fail> {
        let first = self.and()?;
        if !self.peek_keyword("OR") {
            return Ok(first);
        }
        let mut operands = vec![first];
        while self.peek_keyword("OR") {
            self.advance()?;
            operands.push(self.and()?);
        }
        Ok(Expr::Or(operands))
    }

    /// `and = unary { AND unary | NOT-unary }`
    fn and(&mut self) -> Result<Expr, Fail> {
        let first = self.unary()?;
        if !self.peek_keyword("AND") && !self.peek_keyword("NOT") {
            return Ok(first);
        }
        let mut operands = vec![first];
        loop {
            if self.peek_keyword("AND") {
                self.advance()?;
            } else if !self.peek_keyword("NOT") {
                break;
            }
            // After AND, or an implied AND before NOT (which `unary` consumes).
            operands.push(self.unary()?);
        }
        Ok(Expr::And(operands))
    }

    /// `unary = NOT unary | primary`
    fn unary(&mut self) -> Result<Expr, Fail> {
        if self.peek_keyword("NOT") {
            let not = self.advance()?;
            self.enter(not.at)?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(inner)));
        }
        self.primary()
    }

    /// `primary = TRAIT | frequency | "(" or ")"`
    fn primary(&mut self) -> Result<Expr, Fail> {
        let token = self.advance()?;
        match token.tok {
            Tok::Open => {
                self.enter(token.at)?;
                let inner = self.or()?;
                let close = self.advance()?;
                if close.tok != Tok::Close {
                    return Err(Fail::new(
                        close.at,
                        Problem::Unclosed {
                            open: Position::of(self.lexer.text, token.at),
                            found: self.found(close),
                        },
                    ));
                }
                self.depth -= 1;
                Ok(inner)
            }
            Tok::Word(w) if w.eq_ignore_ascii_case("FREQUENCY") => self.frequency(),
            Tok::Word(w) if w.starts_with(|c: char| c.is_ascii_digit()) => {
                Ok(Expr::Trait(trait_id(w, token.at)?))
            }
            _ => Err(Fail::new(
                token.at,
                Problem::ExpectedTerm {
                    found: self.found(token),
                },
            )),
        }
    }

    fn expect(&mut self, tok: Tok<'_>, what: &'static str) -> Result<(), Fail> {
        let token = self.advance()?;
        if token.tok == tok {
            Ok(())
        } else {
            Err(Fail::new(
                token.at,
                Problem::Expected {
                    what,
                    found: self.found(token),
                },
            ))
        }
    }

    /// After the `FREQUENCY` keyword:
    /// `"(" "[" TRAIT { "," TRAIT } "]" [ REC_OP DAYS ] ")" FREQ_OP COUNT`
    fn frequency(&mut self) -> Result<Expr, Fail> {
        self.expect(Tok::Open, "'(' after FREQUENCY")?;
        self.expect(Tok::OpenBracket, "'[' after FREQUENCY(")?;
        if self.peek.tok == Tok::CloseBracket {
            return Err(Fail::new(self.peek.at, Problem::EmptyTraitList));
        }
        let mut traits = Vec::new();
        loop {
            let token = self.advance()?;
            match token.tok {
                Tok::Word(w) if w.starts_with(|c: char| c.is_ascii_digit()) => {
                    traits.push(trait_id(w, token.at)?);
                }
                _ => {
                    return Err(Fail::new(
                        token.at,
                        Problem::Expected {
                            what: "a trait like 24T in the FREQUENCY list",
                            found: self.found(token),
                        },
                    ));
                }
            }
            let separator = self.advance()?;
            match separator.tok {
                Tok::Comma => {}
                Tok::CloseBracket => break,
                _ => {
                    return Err(Fail::new(
                        separator.at,
                        Problem::Expected {
                            what: "',' or ']' in the FREQUENCY list",
                            found: self.found(separator),
                        },
                    ));
                }
            }
        }
        let recency = match self.peek.tok {
            Tok::Ge | Tok::Le => {
                let op = self.advance()?;
                let days = self.advance()?;
                Some(Recency {
                    op: if op.tok == Tok::Le {
                        RecencyOp::Within
                    } else {
                        RecencyOp::AtLeastAgo
                    },
                    days: self.days(days)?,
                })
            }
            Tok::Eq => {
                return Err(Fail::new(
                    self.peek.at,
                    Problem::RecencyOperator {
                        found: self.found(self.peek),
                    },
                ));
            }
            _ => None,
        };
        self.expect(
            Tok::Close,
            if recency.is_some() {
                "')' after the recency"
            } else {
                "')', '>=' or '<=' after the FREQUENCY list"
            },
        )?;
        let op = self.advance()?;
        let op = match op.tok {
            Tok::Ge => FrequencyOp::AtLeast,
            Tok::Le => FrequencyOp::AtMost,
            Tok::Eq => FrequencyOp::Exactly,
            _ => {
                return Err(Fail::new(
                    op.at,
                    Problem::ExpectedFrequencyOperator {
                        found: self.found(op),
                    },
                ));
            }
        };
        let count = self.advance()?;
        let count = self.count(count)?;
        Ok(Expr::Frequency(Frequency {
            traits,
            recency,
            op,
            count,
        }))
    }

    /// `DAYS = digits "D"`, N > 0.
    fn days(&self, token: Token<'_>) -> Result<NonZeroU32, Fail> {
        let expected = || {
            Fail::new(
                token.at,
                Problem::ExpectedDays {
                    found: self.found(token),
                },
            )
        };
        let Tok::Word(w) = token.tok else {
            return Err(expected());
        };
        let (digits, rest) = split_digits(w);
        let mut suffix = rest.chars();
        if digits.is_empty() || !matches!(suffix.next(), Some('D' | 'd')) {
            return Err(expected());
        }
        let trailing = suffix.as_str();
        if !trailing.is_empty() {
            return Err(Fail::new(
                token.at + digits.len() + 1,
                Problem::Trailing {
                    token: format!("{digits}D"),
                    found: quote(trailing),
                },
            ));
        }
        NonZeroU32::new(number(digits, token.at)?).ok_or(Fail::new(token.at, Problem::ZeroDays))
    }

    /// `COUNT = digits`.
    fn count(&self, token: Token<'_>) -> Result<u32, Fail> {
        let Tok::Word(w) = token.tok else {
            return Err(Fail::new(
                token.at,
                Problem::ExpectedCount {
                    found: self.found(token),
                },
            ));
        };
        let (digits, rest) = split_digits(w);
        if digits.is_empty() {
            return Err(Fail::new(
                token.at,
                Problem::ExpectedCount {
                    found: self.found(token),
                },
            ));
        }
        if !rest.is_empty() {
            return Err(Fail::new(
                token.at + digits.len(),
                Problem::Trailing {
                    token: digits.to_owned(),
                    found: quote(rest),
                },
            ));
        }
        number(digits, token.at)
    }
}

/// `TRAIT = digits "T"`; `word` starts with a digit.
fn trait_id(word: &str, at: usize) -> Result<TraitId, Fail> {
    let (digits, rest) = split_digits(word);
    let mut suffix = rest.chars();
    if !matches!(suffix.next(), Some('T' | 't')) {
        return Err(Fail::new(
            at,
            Problem::ExpectedT {
                digits: digits.to_owned(),
            },
        ));
    }
    let trailing = suffix.as_str();
    if !trailing.is_empty() {
        return Err(Fail::new(
            at + digits.len() + 1,
            Problem::Trailing {
                token: format!("{digits}T"),
                found: quote(trailing),
            },
        ));
    }
    number(digits, at)
}

/// Splits a word into its leading ASCII digits and the rest.
fn split_digits(word: &str) -> (&str, &str) {
    let n = word
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(word.len());
    word.split_at_checked(n).unwrap_or((word, ""))
}

/// Non-empty ASCII digits as a `u32`.
fn number(digits: &str, at: usize) -> Result<u32, Fail> {
    digits.parse::<u32>().map_err(|_| {
        Fail::new(
            at,
            Problem::OutOfRange {
                digits: digits.to_owned(),
            },
        )
    })
}

/// A word in single quotes, cut to [`MAX_QUOTED`] characters (words are ASCII).
fn quote(word: &str) -> String {
    match word.get(..MAX_QUOTED) {
        Some(head) if head.len() < word.len() => format!("'{head}...'"),
        _ => format!("'{word}'"),
    }
}
