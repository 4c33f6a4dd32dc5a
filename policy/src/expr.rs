//! Predicate expressions: the `expression:` form of a WorkloadIdentity rule,
//! an alternative to a list of conditions (Teleport calls the same idea a
//! predicate expression).
//!
//! ```text
//! workload.kubernetes.namespace == "payments"
//!   && (workload.kubernetes.labels["app.kubernetes.io/name"] in ["api", "worker"]
//!       || glob(workload.kubernetes.service_account, "batch-*"))
//!   && !(workload.unix.uid == "0")
//! ```
//!
//! # Grammar
//! ```text
//! expression := or
//! or         := and ( "||" and )*
//! and        := unary ( "&&" unary )*
//! unary      := "!" unary | primary
//! primary    := "(" expression ")"
//!             | "has" "(" attribute ")"
//!             | "glob" "(" attribute "," string ")"
//!             | attribute "==" string
//!             | attribute "!=" string
//!             | attribute "in" "[" string ( "," string )* "]"
//! attribute  := name ( "[" string "]" )?
//! name       := [A-Za-z0-9_] [A-Za-z0-9_./-]*
//! string     := '"' ( any character but '"' and '\' | '\"' | '\\' )* '"'
//! ```
//! So `!` binds tighter than comparisons, which bind tighter than `&&`, which
//! binds tighter than `||`. Because of that, `!attr == "v"` would negate a
//! bare attribute; it is refused with a hint to write `!(attr == "v")` or
//! `attr != "v"`. Whitespace between tokens is ignored (newlines included).
//!
//! Names are the dotted attribute names of [`crate::attributes`]; a label key
//! made only of name characters can be written dotted
//! (`workload.kubernetes.labels.app.kubernetes.io/name`), any other key with
//! brackets after the map's name (`workload.docker.labels["com.example:team"]`).
//! A name outside the schema is a compile error.
//!
//! `==`, `!=` and `in` compare literally; a `*` in their values is refused,
//! since it would only ever match a `*`: `glob(attr, "team-*")` matches a
//! pattern with the semantics of [`crate::glob`] (`*` is any run of
//! characters, including `/` and `.`).
//!
//! # Absent attributes: three-valued logic
//! A workload lacking an attribute must never satisfy a rule because of the
//! lack, exactly as with conditions (where even `not_eq` on an absent
//! attribute is false). So every comparison and `glob` on an absent attribute
//! is *unknown*, and the connectives follow Kleene's logic:
//!
//! | a       | b       | `a && b` | `a \|\| b` | `!a`    |
//! |---------|---------|----------|------------|---------|
//! | true    | unknown | unknown  | true       | false   |
//! | false   | unknown | false    | unknown    | true    |
//! | unknown | unknown | unknown  | unknown    | unknown |
//!
//! A rule holds only when its whole expression is *true*. `has(attr)` is the
//! one test that is never unknown: it says whether the attribute is present.
//! Hence `!(workload.unix.uid == "0")` does not hold for a workload without a
//! uid, while `!has(workload.unix.uid) || workload.unix.uid != "0"` does. The
//! same goes for deny rules: a deny expression that is unknown refuses
//! nothing, so deny on `!has(attr) || ...` when absence should refuse.
//!
//! # Limits
//! At most [`MAX_EXPRESSION_LEN`] bytes of text, [`MAX_DEPTH`] nested levels of
//! `(` and `!`, and [`MAX_LIST_ITEMS`] values per `in` list. Expressions are
//! parsed once, when policy is compiled; errors give the column (and the line,
//! for expressions spanning several lines) where the problem starts.

use std::collections::BTreeSet;
use std::fmt;

use crate::attributes::{AttributeError, AttributeName, Attributes, Field, LabelMap};
use crate::glob::Glob;

/// Longest expression text accepted, in bytes.
pub const MAX_EXPRESSION_LEN: usize = 4096;
/// Deepest nesting of `(` and `!` accepted; deeper input is an error rather
/// than a risk to the parser's stack.
pub const MAX_DEPTH: usize = 64;
/// Most values accepted in one `in` list.
pub const MAX_LIST_ITEMS: usize = 256;

/// Where in the expression text a problem starts (1-based, columns counted
/// in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The line, when the expression spans more than one; `None` otherwise,
    /// so single-line expressions read simply "column N".
    pub line: Option<usize>,
    /// The column within the line.
    pub column: usize,
}

impl Position {
    fn of(src: &str, offset: usize) -> Position {
        let before = src.get(..offset).unwrap_or(src);
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before.get(line_start..).unwrap_or("").chars().count() + 1;
        // A YAML block scalar (`expression: |`) ends in a newline; that alone
        // does not make the expression multi-line.
        let line = src
            .trim_end()
            .contains('\n')
            .then(|| before.matches('\n').count() + 1);
        Position { line, column }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}, column {}", self.column),
            None => write!(f, "column {}", self.column),
        }
    }
}

/// Why an expression does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExprError {
    /// Longer than [`MAX_EXPRESSION_LEN`].
    #[error("expression is {len} bytes long; at most {MAX_EXPRESSION_LEN} are allowed")]
    TooLong {
        /// Length in bytes.
        len: usize,
    },
    /// Nothing but whitespace.
    #[error("expression is empty")]
    Empty,
    /// A character no token starts with.
    #[error("{at}: unexpected character {ch:?}{}", char_hint(*ch))]
    UnexpectedChar {
        /// Where.
        at: Position,
        /// The character.
        ch: char,
    },
    /// A string literal without its closing quote.
    #[error("{at}: unterminated string (no closing '\"')")]
    UnterminatedString {
        /// Where the string starts.
        at: Position,
    },
    /// A backslash not followed by `"` or `\`.
    #[error("{at}: invalid escape {found:?} in a string (only \\\" and \\\\ are escapes)")]
    InvalidEscape {
        /// Where the backslash is.
        at: Position,
        /// The backslash and the character after it.
        found: String,
    },
    /// The grammar wanted something else here.
    #[error("{at}: expected {expected}, found {found}")]
    Expected {
        /// Where.
        at: Position,
        /// What would have been accepted.
        expected: String,
        /// What was there.
        found: String,
    },
    /// A name outside the attribute schema (or a malformed label key).
    #[error("{at}: {source}")]
    UnknownAttribute {
        /// Where the name starts.
        at: Position,
        /// Why the name was refused.
        source: AttributeError,
    },
    /// `name["key"]` where `name` is not a label map.
    #[error(
        "{at}: {name:?} is not a label map; [\"key\"] may only follow {}",
        label_map_names()
    )]
    NotALabelMap {
        /// Where the name starts.
        at: Position,
        /// The name before the brackets.
        name: String,
    },
    /// `name(...)` for a function that does not exist.
    #[error("{at}: unknown function {name:?} (the functions are has and glob)")]
    UnknownFunction {
        /// Where the name starts.
        at: Position,
        /// The name.
        name: String,
    },
    /// `!attr == "v"`: `!` binds tighter than `==`, so it would apply to the
    /// bare attribute.
    #[error(
        "{at}: \"!\" cannot apply to the attribute {name} alone (it binds tighter than comparisons); write !({name} == \"...\") or use \"!=\""
    )]
    NegatedAttribute {
        /// Where the `!` is.
        at: Position,
        /// The attribute text after it.
        name: String,
    },
    /// A `*` in a literal comparison, which would only match a literal `*`.
    #[error(
        "{at}: {op:?} compares literally, so {value:?} would only match a '*'; use glob(attribute, {value:?}) to match a pattern"
    )]
    StarInLiteral {
        /// Where the value is.
        at: Position,
        /// The operator.
        op: &'static str,
        /// The value.
        value: String,
    },
    /// `in []`.
    #[error("{at}: an \"in\" list needs at least one value")]
    EmptyList {
        /// Where the list starts.
        at: Position,
    },
    /// More than [`MAX_LIST_ITEMS`] values in one list.
    #[error("{at}: an \"in\" list may hold at most {MAX_LIST_ITEMS} values")]
    TooManyItems {
        /// Where the list starts.
        at: Position,
    },
    /// More than [`MAX_DEPTH`] nested levels.
    #[error("{at}: more than {MAX_DEPTH} nested levels of \"(\" and \"!\"")]
    TooDeep {
        /// Where the level that is one too many starts.
        at: Position,
    },
}

fn char_hint(ch: char) -> &'static str {
    match ch {
        '&' => " (did you mean \"&&\"?)",
        '|' => " (did you mean \"||\"?)",
        '=' => " (did you mean \"==\"?)",
        '\'' => " (strings use double quotes)",
        _ => "",
    }
}

fn label_map_names() -> String {
    LabelMap::ALL
        .iter()
        .map(|m| m.prefix().trim_end_matches('.'))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The value of an expression for one workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Truth {
    /// Holds.
    True,
    /// Does not hold.
    False,
    /// Depends on an attribute the workload lacks; does not hold.
    Unknown,
}

impl std::ops::Not for Truth {
    type Output = Truth;

    /// Kleene negation: unknown stays unknown.
    fn not(self) -> Truth {
        match self {
            Truth::True => Truth::False,
            Truth::False => Truth::True,
            Truth::Unknown => Truth::Unknown,
        }
    }
}

impl Truth {
    /// The lowercase name used in explanations.
    pub fn as_str(self) -> &'static str {
        match self {
            Truth::True => "true",
            Truth::False => "false",
            Truth::Unknown => "unknown",
        }
    }
}

impl From<bool> for Truth {
    fn from(b: bool) -> Self {
        if b { Truth::True } else { Truth::False }
    }
}

impl fmt::Display for Truth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed expression. Built by [`Expr::parse`]; its [`fmt::Display`] form
/// is canonical text that parses back to an equal value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// All of these (two or more; a parenthesized `&&` inside stays nested).
    And(Vec<Expr>),
    /// Any of these (two or more).
    Or(Vec<Expr>),
    /// `!e`.
    Not(Box<Expr>),
    /// `attr == "v"`.
    Eq(AttributeName, String),
    /// `attr != "v"`: present and different.
    NotEq(AttributeName, String),
    /// `attr in ["a", "b"]`, values in the order written.
    In(AttributeName, Vec<String>),
    /// `glob(attr, "pattern")`.
    Glob(AttributeName, Glob),
    /// `has(attr)`.
    Has(AttributeName),
}

/// Why an expression has its value for a workload, for denial messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// The value.
    pub truth: Truth,
    /// The attributes that decided it, as `name is "value"` or
    /// `name is absent`, without repeats.
    pub facts: Vec<String>,
}

/// Facts listed in one explanation before the rest is summarized, so a
/// denial stays readable for a long expression.
const MAX_FACTS: usize = 4;

impl fmt::Display for Explanation {
    /// `false (workload.kubernetes.namespace is "web")`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.truth.as_str())?;
        if self.facts.is_empty() {
            return Ok(());
        }
        let shown = self.facts.iter().take(MAX_FACTS);
        write!(f, " ({}", shown.cloned().collect::<Vec<_>>().join("; "))?;
        if self.facts.len() > MAX_FACTS {
            write!(f, "; and {} more", self.facts.len() - MAX_FACTS)?;
        }
        f.write_str(")")
    }
}

impl Expr {
    /// Parses expression text (see the module docs for the grammar).
    pub fn parse(text: &str) -> Result<Expr, ExprError> {
        if text.len() > MAX_EXPRESSION_LEN {
            return Err(ExprError::TooLong { len: text.len() });
        }
        if text.trim().is_empty() {
            return Err(ExprError::Empty);
        }
        let tokens = lex(text)?;
        let mut parser = Parser {
            src: text,
            tokens,
            next: 0,
            depth: 0,
        };
        let expr = parser.or()?;
        if !matches!(parser.peek(), Tok::End) {
            return Err(parser.expected("\"&&\", \"||\" or the end of the expression"));
        }
        Ok(expr)
    }

    /// The expression's value for a workload.
    pub fn evaluate(&self, attrs: &Attributes) -> Truth {
        match self {
            Expr::And(items) => {
                let mut out = Truth::True;
                for item in items {
                    match item.evaluate(attrs) {
                        Truth::False => return Truth::False,
                        Truth::Unknown => out = Truth::Unknown,
                        Truth::True => {}
                    }
                }
                out
            }
            Expr::Or(items) => {
                let mut out = Truth::False;
                for item in items {
                    match item.evaluate(attrs) {
                        Truth::True => return Truth::True,
                        Truth::Unknown => out = Truth::Unknown,
                        Truth::False => {}
                    }
                }
                out
            }
            Expr::Not(e) => !e.evaluate(attrs),
            Expr::Has(a) => Truth::from(attrs.get(a).is_some()),
            Expr::Eq(a, v) => compare(attrs, a, |x| x == v),
            Expr::NotEq(a, v) => compare(attrs, a, |x| x != v),
            Expr::In(a, vs) => compare(attrs, a, |x| vs.iter().any(|v| v == x)),
            Expr::Glob(a, g) => compare(attrs, a, |x| g.matches(x)),
        }
    }

    /// Whether the expression is true for the workload (unknown is not).
    pub fn holds(&self, attrs: &Attributes) -> bool {
        self.evaluate(attrs) == Truth::True
    }

    /// The value with the attributes that decided it. Slower than
    /// [`Expr::evaluate`]; meant for denial messages.
    pub fn explain(&self, attrs: &Attributes) -> Explanation {
        let (truth, names) = self.why(attrs);
        let mut seen = BTreeSet::new();
        let facts = names
            .into_iter()
            .filter(|n| seen.insert(n.as_str()))
            .map(|n| match attrs.get(n) {
                Some(v) => format!("{n} is {v:?}"),
                None => format!("{n} is absent"),
            })
            .collect();
        Explanation { truth, facts }
    }

    /// The value and the attributes of the subexpressions that decided it:
    /// for `&&`, the first false operand (or the unknown ones, or all when
    /// true); for `||`, dually.
    fn why(&self, attrs: &Attributes) -> (Truth, Vec<&AttributeName>) {
        let (items, decisive) = match self {
            Expr::And(items) => (items, Truth::False),
            Expr::Or(items) => (items, Truth::True),
            Expr::Not(e) => {
                let (t, names) = e.why(attrs);
                return (!t, names);
            }
            Expr::Has(a)
            | Expr::Eq(a, _)
            | Expr::NotEq(a, _)
            | Expr::In(a, _)
            | Expr::Glob(a, _) => return (self.evaluate(attrs), vec![a]),
        };
        let parts: Vec<_> = items.iter().map(|i| i.why(attrs)).collect();
        if let Some((t, names)) = parts.iter().find(|(t, _)| *t == decisive) {
            return (*t, names.clone());
        }
        let unknown: Vec<&AttributeName> = parts
            .iter()
            .filter(|(t, _)| *t == Truth::Unknown)
            .flat_map(|(_, names)| names.iter().copied())
            .collect();
        if !unknown.is_empty() {
            return (Truth::Unknown, unknown);
        }
        (
            !decisive,
            parts.into_iter().flat_map(|(_, names)| names).collect(),
        )
    }

    /// The Kubernetes namespaces outside which the expression can never be
    /// true, or `None` when it might be true anywhere (used to index
    /// identities).
    ///
    /// Sound under the three-valued semantics: `namespace == "x"` is true
    /// only when the namespace is present and is `x`; an `&&` is true only
    /// when every operand is, so the namespace lies in each pinned operand's
    /// set (their intersection); an `||` is true only when some operand is,
    /// so all operands must be pinned and the union is the pin. Nothing else
    /// (`!`, `!=`, `glob`, `has`) pins anything.
    pub fn namespace_pins(&self) -> Option<BTreeSet<String>> {
        let namespace = Field::KubernetesNamespace.as_str();
        match self {
            Expr::Eq(a, v) if a.as_str() == namespace => Some([v.clone()].into()),
            Expr::In(a, vs) if a.as_str() == namespace => Some(vs.iter().cloned().collect()),
            Expr::And(items) => items
                .iter()
                .filter_map(Expr::namespace_pins)
                .reduce(|a, b| a.intersection(&b).cloned().collect()),
            Expr::Or(items) => {
                let mut all = BTreeSet::new();
                for item in items {
                    all.extend(item.namespace_pins()?);
                }
                Some(all)
            }
            _ => None,
        }
    }

    /// Every attribute the expression reads, in order of appearance (with
    /// repeats).
    pub fn attributes(&self) -> Vec<&AttributeName> {
        let mut out = Vec::new();
        self.collect_attributes(&mut out);
        out
    }

    fn collect_attributes<'a>(&'a self, out: &mut Vec<&'a AttributeName>) {
        match self {
            Expr::And(items) | Expr::Or(items) => {
                for i in items {
                    i.collect_attributes(out);
                }
            }
            Expr::Not(e) => e.collect_attributes(out),
            Expr::Has(a)
            | Expr::Eq(a, _)
            | Expr::NotEq(a, _)
            | Expr::In(a, _)
            | Expr::Glob(a, _) => out.push(a),
        }
    }
}

fn compare(attrs: &Attributes, name: &AttributeName, test: impl Fn(&str) -> bool) -> Truth {
    attrs
        .get(name)
        .map_or(Truth::Unknown, |value| Truth::from(test(value)))
}

// ---- Rendering -------------------------------------------------------------

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Or(items) => join(f, items, " || ", |e| matches!(e, Expr::Or(_))),
            Expr::And(items) => join(f, items, " && ", |e| {
                matches!(e, Expr::And(_) | Expr::Or(_))
            }),
            Expr::Not(e) => {
                // A comparison after `!` needs parentheses (see NegatedAttribute).
                if matches!(**e, Expr::Not(_) | Expr::Has(_) | Expr::Glob(..)) {
                    write!(f, "!{e}")
                } else {
                    write!(f, "!({e})")
                }
            }
            Expr::Eq(a, v) => {
                write_attribute(f, a)?;
                f.write_str(" == ")?;
                write_string(f, v)
            }
            Expr::NotEq(a, v) => {
                write_attribute(f, a)?;
                f.write_str(" != ")?;
                write_string(f, v)
            }
            Expr::In(a, vs) => {
                write_attribute(f, a)?;
                f.write_str(" in [")?;
                for (i, v) in vs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write_string(f, v)?;
                }
                f.write_str("]")
            }
            Expr::Glob(a, g) => {
                f.write_str("glob(")?;
                write_attribute(f, a)?;
                f.write_str(", ")?;
                write_string(f, g.as_str())?;
                f.write_str(")")
            }
            Expr::Has(a) => {
                f.write_str("has(")?;
                write_attribute(f, a)?;
                f.write_str(")")
            }
        }
    }
}

fn join(
    f: &mut fmt::Formatter<'_>,
    items: &[Expr],
    separator: &str,
    needs_parens: impl Fn(&Expr) -> bool,
) -> fmt::Result {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(separator)?;
        }
        if needs_parens(item) {
            write!(f, "({item})")?;
        } else {
            write!(f, "{item}")?;
        }
    }
    Ok(())
}

/// An attribute name as expression text.
struct AttributeText<'a>(&'a AttributeName);

impl fmt::Display for AttributeText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_attribute(f, self.0)
    }
}

/// Dotted when the lexer would read the whole name as one token, otherwise
/// the bracket form.
fn write_attribute(f: &mut fmt::Formatter<'_>, name: &AttributeName) -> fmt::Result {
    match name.label_key() {
        Some((map, key)) if !key.chars().all(is_name_char) => {
            f.write_str(map.prefix().trim_end_matches('.'))?;
            f.write_str("[")?;
            write_string(f, key)?;
            f.write_str("]")
        }
        _ => f.write_str(name.as_str()),
    }
}

fn write_string(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_str("\"")?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            c => write!(f, "{c}")?,
        }
    }
    f.write_str("\"")
}

// ---- Lexer -----------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Name(String),
    Str(String),
    AndAnd,
    OrOr,
    Bang,
    EqEq,
    BangEq,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    End,
}

impl Tok {
    /// How the token is named in "found ..." messages.
    fn describe(&self) -> String {
        let punct = match self {
            Tok::Name(n) => return format!("{n:?}"),
            Tok::Str(s) => return format!("the string {s:?}"),
            Tok::End => return "the end of the expression".to_owned(),
            Tok::AndAnd => "&&",
            Tok::OrOr => "||",
            Tok::Bang => "!",
            Tok::EqEq => "==",
            Tok::BangEq => "!=",
            Tok::LParen => "(",
            Tok::RParen => ")",
            Tok::LBracket => "[",
            Tok::RBracket => "]",
            Tok::Comma => ",",
        };
        format!("{punct:?}")
    }
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    /// Byte offset of the token's first character.
    offset: usize,
}

/// Digits may start a name so that an unquoted number (`uid == 0`) is
/// reported as "expected a string, found "0"" rather than as a stray digit.
fn is_name_start(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/')
}

fn lex(src: &str) -> Result<Vec<Token>, ExprError> {
    let mut tokens = Vec::new();
    let mut offset = 0;
    while let Some(c) = src.get(offset..).and_then(|r| r.chars().next()) {
        if c.is_whitespace() {
            offset += c.len_utf8();
            continue;
        }
        let rest = src.get(offset..).unwrap_or("");
        let (tok, len) = if let Some(tok) = two_char(rest) {
            (tok, 2)
        } else {
            match c {
                '!' => (Tok::Bang, 1),
                '(' => (Tok::LParen, 1),
                ')' => (Tok::RParen, 1),
                '[' => (Tok::LBracket, 1),
                ']' => (Tok::RBracket, 1),
                ',' => (Tok::Comma, 1),
                '"' => {
                    let (value, len) = lex_string(src, offset)?;
                    (Tok::Str(value), len)
                }
                c if is_name_start(c) => {
                    // Name characters are ASCII, so the length is in bytes.
                    let len = rest.find(|c| !is_name_char(c)).unwrap_or(rest.len());
                    (Tok::Name(rest.get(..len).unwrap_or("").to_owned()), len)
                }
                ch => {
                    return Err(ExprError::UnexpectedChar {
                        at: Position::of(src, offset),
                        ch,
                    });
                }
            }
        };
        tokens.push(Token { tok, offset });
        offset += len;
    }
    // "found the end" points just past the last token, not past trailing
    // whitespace (a YAML block scalar's final newline).
    tokens.push(Token {
        tok: Tok::End,
        offset: src.trim_end().len(),
    });
    Ok(tokens)
}

fn two_char(rest: &str) -> Option<Tok> {
    Some(match rest.get(..2)? {
        "&&" => Tok::AndAnd,
        "||" => Tok::OrOr,
        "==" => Tok::EqEq,
        "!=" => Tok::BangEq,
        _ => return None,
    })
}

/// Reads the string literal starting at `start` (its opening quote); returns
/// the value and the literal's length in bytes.
fn lex_string(src: &str, start: usize) -> Result<(String, usize), ExprError> {
    let body = src.get(start + 1..).unwrap_or("");
    let mut value = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, i + 2)),
            '\\' => match chars.next() {
                Some((_, e @ ('"' | '\\'))) => value.push(e),
                Some((_, other)) => {
                    return Err(ExprError::InvalidEscape {
                        at: Position::of(src, start + 1 + i),
                        found: format!("\\{other}"),
                    });
                }
                None => break,
            },
            c => value.push(c),
        }
    }
    Err(ExprError::UnterminatedString {
        at: Position::of(src, start),
    })
}

// ---- Parser ----------------------------------------------------------------

struct Parser<'s> {
    src: &'s str,
    tokens: Vec<Token>,
    next: usize,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> &Tok {
        self.peek_at(0)
    }

    fn peek_at(&self, ahead: usize) -> &Tok {
        // The token list always ends with End, which is never consumed.
        self.tokens
            .get(self.next + ahead)
            .or_else(|| self.tokens.last())
            .map_or(&Tok::End, |t| &t.tok)
    }

    fn position(&self) -> Position {
        let offset = self
            .tokens
            .get(self.next)
            .map_or(self.src.len(), |t| t.offset);
        Position::of(self.src, offset)
    }

    fn bump(&mut self) -> Tok {
        let tok = self.peek().clone();
        if !matches!(tok, Tok::End) {
            self.next += 1;
        }
        tok
    }

    fn expected(&self, what: impl Into<String>) -> ExprError {
        ExprError::Expected {
            at: self.position(),
            expected: what.into(),
            found: self.peek().describe(),
        }
    }

    fn expect(&mut self, tok: Tok, what: &str) -> Result<(), ExprError> {
        if *self.peek() == tok {
            self.bump();
            Ok(())
        } else {
            Err(self.expected(what))
        }
    }

    fn string(&mut self, what: &str) -> Result<String, ExprError> {
        match self.peek() {
            Tok::Str(s) => {
                let s = s.clone();
                self.bump();
                Ok(s)
            }
            _ => Err(self.expected(what)),
        }
    }

    /// Counts one level of `(` or `!`; the caller calls `leave` after.
    fn enter(&mut self) -> Result<(), ExprError> {
        if self.depth >= MAX_DEPTH {
            return Err(ExprError::TooDeep {
                at: self.position(),
            });
        }
        self.depth += 1;
        Ok(())
    }

    fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    fn or(&mut self) -> Result<Expr, ExprError> {
        let mut items = vec![self.and()?];
        while matches!(self.peek(), Tok::OrOr) {
            self.bump();
            items.push(self.and()?);
        }
        Ok(one_or(items, Expr::Or))
    }

    fn and(&mut self) -> Result<Expr, ExprError> {
        let mut items = vec![self.unary()?];
        while matches!(self.peek(), Tok::AndAnd) {
            self.bump();
            items.push(self.unary()?);
        }
        Ok(one_or(items, Expr::And))
    }

    fn unary(&mut self) -> Result<Expr, ExprError> {
        if !matches!(self.peek(), Tok::Bang) {
            return self.primary();
        }
        let at = self.position();
        self.enter()?;
        self.bump();
        if matches!(self.peek(), Tok::Name(_)) && !matches!(self.peek_at(1), Tok::LParen) {
            let attr = self.attribute()?;
            return Err(ExprError::NegatedAttribute {
                at,
                name: AttributeText(&attr).to_string(),
            });
        }
        let inner = self.unary()?;
        self.leave();
        Ok(Expr::Not(Box::new(inner)))
    }

    fn primary(&mut self) -> Result<Expr, ExprError> {
        match self.peek().clone() {
            Tok::LParen => {
                let open = self.position();
                self.enter()?;
                self.bump();
                let inner = self.or()?;
                self.expect(Tok::RParen, &format!("\")\" closing the \"(\" at {open}"))?;
                self.leave();
                Ok(inner)
            }
            Tok::Name(name) if matches!(self.peek_at(1), Tok::LParen) => self.call(&name),
            Tok::Name(_) => {
                let attr = self.attribute()?;
                self.comparison(attr)
            }
            _ => Err(self.expected(
                "a condition (an attribute compared with ==, != or in, has(...), glob(...), \"!\" or \"(\")",
            )),
        }
    }

    fn call(&mut self, name: &str) -> Result<Expr, ExprError> {
        let at = self.position();
        match name {
            "has" => {
                self.bump();
                self.bump();
                let attr = self.attribute()?;
                self.expect(Tok::RParen, "\")\" after the attribute in has(...)")?;
                Ok(Expr::Has(attr))
            }
            "glob" => {
                self.bump();
                self.bump();
                let attr = self.attribute()?;
                self.expect(
                    Tok::Comma,
                    "\",\" and a pattern after the attribute in glob(...)",
                )?;
                let pattern = self.string("a pattern string in glob(...)")?;
                self.expect(Tok::RParen, "\")\" after the pattern in glob(...)")?;
                Ok(Expr::Glob(attr, Glob::new(&pattern)))
            }
            _ => Err(ExprError::UnknownFunction {
                at,
                name: name.to_owned(),
            }),
        }
    }

    fn attribute(&mut self) -> Result<AttributeName, ExprError> {
        let at = self.position();
        let Tok::Name(name) = self.peek().clone() else {
            return Err(self.expected("an attribute name"));
        };
        self.bump();
        if !matches!(self.peek(), Tok::LBracket) {
            return AttributeName::parse(&name)
                .map_err(|source| ExprError::UnknownAttribute { at, source });
        }
        self.bump();
        let key = self.string("a label key string after \"[\"")?;
        self.expect(Tok::RBracket, "\"]\" after the label key")?;
        let map = LabelMap::ALL
            .into_iter()
            .find(|m| m.prefix().strip_suffix('.') == Some(name.as_str()))
            .ok_or(ExprError::NotALabelMap { at, name })?;
        AttributeName::label(map, &key).map_err(|source| ExprError::UnknownAttribute { at, source })
    }

    fn comparison(&mut self, attr: AttributeName) -> Result<Expr, ExprError> {
        match self.peek() {
            Tok::EqEq => {
                self.bump();
                let value = self.literal("==")?;
                Ok(Expr::Eq(attr, value))
            }
            Tok::BangEq => {
                self.bump();
                let value = self.literal("!=")?;
                Ok(Expr::NotEq(attr, value))
            }
            Tok::Name(n) if n == "in" => {
                self.bump();
                let values = self.list()?;
                Ok(Expr::In(attr, values))
            }
            _ => Err(self.expected(format!("\"==\", \"!=\" or \"in\" after {attr}"))),
        }
    }

    /// A comparison value: a string without `*`.
    fn literal(&mut self, op: &'static str) -> Result<String, ExprError> {
        let at = self.position();
        let value = self.string(&format!("a string after {op:?}"))?;
        if value.contains('*') {
            return Err(ExprError::StarInLiteral { at, op, value });
        }
        Ok(value)
    }

    fn list(&mut self) -> Result<Vec<String>, ExprError> {
        let at = self.position();
        self.expect(Tok::LBracket, "\"[\" after \"in\"")?;
        if matches!(self.peek(), Tok::RBracket) {
            return Err(ExprError::EmptyList { at });
        }
        let mut values = Vec::new();
        loop {
            let value = self.literal("in")?;
            if values.len() == MAX_LIST_ITEMS {
                return Err(ExprError::TooManyItems { at });
            }
            values.push(value);
            match self.peek() {
                Tok::Comma => {
                    self.bump();
                }
                Tok::RBracket => {
                    self.bump();
                    return Ok(values);
                }
                _ => return Err(self.expected("\",\" or \"]\" in the \"in\" list")),
            }
        }
    }
}

fn one_or(mut items: Vec<Expr>, many: fn(Vec<Expr>) -> Expr) -> Expr {
    if items.len() == 1
        && let Some(only) = items.pop()
    {
        return only;
    }
    many(items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
    use std::sync::atomic::{AtomicU64, Ordering};

    fn name(s: &str) -> AttributeName {
        AttributeName::parse(s).unwrap()
    }

    fn p(text: &str) -> Expr {
        match Expr::parse(text) {
            Ok(e) => e,
            Err(e) => panic!("{text}: {e}"),
        }
    }

    fn err(text: &str) -> String {
        match Expr::parse(text) {
            Ok(e) => panic!("{text} parsed as {e:?}"),
            Err(e) => e.to_string(),
        }
    }

    const UID: &str = "workload.unix.uid";
    const NS: &str = "workload.kubernetes.namespace";

    #[test]
    fn every_operator_parses() {
        assert_eq!(
            p(r#"workload.unix.uid == "0""#),
            Expr::Eq(name(UID), "0".into())
        );
        assert_eq!(
            p(r#"workload.unix.uid != "0""#),
            Expr::NotEq(name(UID), "0".into())
        );
        assert_eq!(
            p(r#"workload.kubernetes.namespace in ["a", "b"]"#),
            Expr::In(name(NS), vec!["a".into(), "b".into()])
        );
        assert_eq!(
            p(r#"glob(workload.kubernetes.namespace, "team-*")"#),
            Expr::Glob(name(NS), Glob::new("team-*"))
        );
        assert_eq!(p("has(workload.unix.uid)"), Expr::Has(name(UID)));
        assert_eq!(
            p("!has(workload.unix.uid)"),
            Expr::Not(Box::new(Expr::Has(name(UID))))
        );
        assert_eq!(
            p("has(workload.unix.uid) && has(workload.unix.gid)"),
            Expr::And(vec![
                Expr::Has(name(UID)),
                Expr::Has(name("workload.unix.gid"))
            ])
        );
        assert_eq!(
            p("has(workload.unix.uid) || has(workload.unix.gid)"),
            Expr::Or(vec![
                Expr::Has(name(UID)),
                Expr::Has(name("workload.unix.gid"))
            ])
        );
        // Whitespace, newlines included, is insignificant; parentheses
        // around a single condition leave no trace.
        assert_eq!(
            p("(( workload.unix.uid==\"0\" ))\n"),
            p(r#"workload.unix.uid == "0""#)
        );
        assert_eq!(
            p("workload.unix.uid\n  in\t[\"1\",\"2\"]"),
            Expr::In(name(UID), vec!["1".into(), "2".into()])
        );
    }

    #[test]
    fn precedence_is_not_then_comparison_then_and_then_or() {
        let a = || Expr::Has(name("workload.unix.pid"));
        let b = || Expr::Has(name("workload.unix.uid"));
        let c = || Expr::Has(name("workload.unix.gid"));
        let not = |e: Expr| Expr::Not(Box::new(e));
        let (pa, pb, pc) = (
            "has(workload.unix.pid)",
            "has(workload.unix.uid)",
            "has(workload.unix.gid)",
        );
        assert_eq!(
            p(&format!("{pa} || {pb} && {pc}")),
            Expr::Or(vec![a(), Expr::And(vec![b(), c()])])
        );
        assert_eq!(
            p(&format!("{pa} && {pb} || {pc}")),
            Expr::Or(vec![Expr::And(vec![a(), b()]), c()])
        );
        assert_eq!(p(&format!("!{pa} && {pb}")), Expr::And(vec![not(a()), b()]));
        assert_eq!(
            p(&format!("!({pa} && {pb})")),
            not(Expr::And(vec![a(), b()]))
        );
        assert_eq!(
            p(&format!("({pa} || {pb}) && {pc}")),
            Expr::And(vec![Expr::Or(vec![a(), b()]), c()])
        );
        assert_eq!(p(&format!("!!{pa}")), not(not(a())));
        // Chains stay flat; explicit parentheses stay nested.
        assert_eq!(
            p(&format!("{pa} && {pb} && {pc}")),
            Expr::And(vec![a(), b(), c()])
        );
        assert_eq!(
            p(&format!("({pa} && {pb}) && {pc}")),
            Expr::And(vec![Expr::And(vec![a(), b()]), c()])
        );
        // A comparison binds tighter than && and ||.
        assert_eq!(
            p(r#"workload.unix.uid == "0" && workload.unix.gid != "0" || has(workload.unix.pid)"#),
            Expr::Or(vec![
                Expr::And(vec![
                    Expr::Eq(name(UID), "0".into()),
                    Expr::NotEq(name("workload.unix.gid"), "0".into()),
                ]),
                a(),
            ])
        );
        assert_eq!(
            p(r#"!(workload.unix.uid == "0")"#),
            not(Expr::Eq(name(UID), "0".into()))
        );
    }

    #[test]
    fn string_escapes() {
        assert_eq!(
            p(r#"workload.unix.binary_path == "a\"b\\c""#),
            Expr::Eq(name("workload.unix.binary_path"), "a\"b\\c".into())
        );
        assert_eq!(
            p(r#"workload.unix.binary_path == """#),
            Expr::Eq(name("workload.unix.binary_path"), String::new())
        );
        // Anything else is taken as written, non-ASCII and newlines included.
        assert_eq!(
            p("workload.unix.binary_path == \"/opt/größe\nx\""),
            Expr::Eq(name("workload.unix.binary_path"), "/opt/größe\nx".into())
        );
        assert_eq!(
            err(r#"workload.unix.uid == "a\nb""#),
            r#"column 24: invalid escape "\\n" in a string (only \" and \\ are escapes)"#
        );
        assert_eq!(
            err(r#"workload.unix.uid == "abc"#),
            r#"column 22: unterminated string (no closing '"')"#
        );
        assert_eq!(
            err(r#"workload.unix.uid == "abc\"#),
            r#"column 22: unterminated string (no closing '"')"#
        );
    }

    #[test]
    fn label_keys_dotted_or_in_brackets() {
        let k8s = |key: &str| AttributeName::label(LabelMap::KubernetesLabels, key).unwrap();
        assert_eq!(
            p(r#"workload.kubernetes.labels["app.kubernetes.io/name"] == "web""#),
            Expr::Eq(k8s("app.kubernetes.io/name"), "web".into())
        );
        assert_eq!(
            p(r#"workload.kubernetes.labels.app.kubernetes.io/name == "web""#),
            p(r#"workload.kubernetes.labels["app.kubernetes.io/name"] == "web""#)
        );
        let docker = AttributeName::label(LabelMap::DockerLabels, "com.example:team").unwrap();
        assert_eq!(
            p(r#"has(workload.docker.labels["com.example:team"])"#),
            Expr::Has(docker.clone())
        );
        assert_eq!(
            p(r#"node.labels [ "a\"b" ] in ["x"]"#),
            Expr::In(
                AttributeName::label(LabelMap::NodeLabels, "a\"b").unwrap(),
                vec!["x".into()]
            )
        );
        // Rendering picks the form the lexer reads back.
        assert_eq!(
            Expr::Has(docker).to_string(),
            r#"has(workload.docker.labels["com.example:team"])"#
        );
        assert_eq!(
            Expr::Has(k8s("app.kubernetes.io/name")).to_string(),
            "has(workload.kubernetes.labels.app.kubernetes.io/name)"
        );
    }

    #[test]
    fn errors_point_at_the_column() {
        let cases = [
            (
                r#"workload.unix.uid == foo"#,
                r#"column 22: expected a string after "==", found "foo""#,
            ),
            (
                r#"workload.unix.uid == "0" && workload.unix.gid == bar"#,
                r#"column 50: expected a string after "==", found "bar""#,
            ),
            (
                r#"workload.unix.uid = "0""#,
                r#"column 19: unexpected character '=' (did you mean "=="?)"#,
            ),
            (
                r#"has(workload.unix.uid) & has(workload.unix.gid)"#,
                r#"column 24: unexpected character '&' (did you mean "&&"?)"#,
            ),
            (
                r#"workload.unix.uid == 'x'"#,
                r#"column 22: unexpected character '\'' (strings use double quotes)"#,
            ),
            (
                r#"workload.unix.euid == "0""#,
                r#"column 1: unknown attribute "workload.unix.euid""#,
            ),
            (
                r#"has(workload.kubernetes.labels)"#,
                r#"column 5: attribute "workload.kubernetes.labels" names a label map but no label key"#,
            ),
            (
                r#"workload.unix["x"] == "0""#,
                r#"column 1: "workload.unix" is not a label map; ["key"] may only follow workload.kubernetes.labels, workload.docker.labels, workload.podman.labels, workload.podman.pod_labels, node.labels, user.groups"#,
            ),
            (
                r#"has(workload.docker.labels["a b"])"#,
                r#"column 5: label key "a b" of attribute "workload.docker.labels.a b" contains whitespace, braces or control characters"#,
            ),
            (
                r#"workload.unix.uid"#,
                r#"column 18: expected "==", "!=" or "in" after workload.unix.uid, found the end of the expression"#,
            ),
            (
                r#"workload.unix.uid in "0""#,
                r#"column 22: expected "[" after "in", found the string "0""#,
            ),
            (
                r#"workload.unix.uid in []"#,
                r#"column 22: an "in" list needs at least one value"#,
            ),
            (
                r#"workload.unix.uid in ["0" "1"]"#,
                r#"column 27: expected "," or "]" in the "in" list, found the string "1""#,
            ),
            (
                r#"workload.unix.uid in ["0",]"#,
                r#"column 27: expected a string after "in", found "]""#,
            ),
            (
                r#"workload.kubernetes.namespace == "team-*""#,
                r#"column 34: "==" compares literally, so "team-*" would only match a '*'; use glob(attribute, "team-*") to match a pattern"#,
            ),
            (
                r#"workload.kubernetes.namespace in ["a", "*"]"#,
                r#"column 40: "in" compares literally, so "*" would only match a '*'; use glob(attribute, "*") to match a pattern"#,
            ),
            (
                r#"!workload.unix.uid == "0""#,
                r#"column 1: "!" cannot apply to the attribute workload.unix.uid alone (it binds tighter than comparisons); write !(workload.unix.uid == "...") or use "!=""#,
            ),
            (
                r#"!workload.docker.labels["a:b"] != "0""#,
                r#"column 1: "!" cannot apply to the attribute workload.docker.labels["a:b"] alone (it binds tighter than comparisons); write !(workload.docker.labels["a:b"] == "...") or use "!=""#,
            ),
            (
                r#"matches(workload.unix.uid, "0")"#,
                r#"column 1: unknown function "matches" (the functions are has and glob)"#,
            ),
            (
                r#"glob(workload.unix.uid)"#,
                r#"column 23: expected "," and a pattern after the attribute in glob(...), found ")""#,
            ),
            (
                r#"glob(workload.unix.uid, 0)"#,
                r#"column 25: expected a pattern string in glob(...), found "0""#,
            ),
            (
                r#"has("workload.unix.uid")"#,
                r#"column 5: expected an attribute name, found the string "workload.unix.uid""#,
            ),
            (
                r#"(has(workload.unix.uid)"#,
                r#"column 24: expected ")" closing the "(" at column 1, found the end of the expression"#,
            ),
            (
                r#"has(workload.unix.uid))"#,
                r#"column 23: expected "&&", "||" or the end of the expression, found ")""#,
            ),
            (
                r#"has(workload.unix.uid) &&"#,
                r#"column 26: expected a condition (an attribute compared with ==, != or in, has(...), glob(...), "!" or "("), found the end of the expression"#,
            ),
            (
                r#"has(workload.unix.uid) has(workload.unix.gid)"#,
                r#"column 24: expected "&&", "||" or the end of the expression, found "has""#,
            ),
            ("   \n ", "expression is empty"),
            (
                "has(workload.unix.uid) &&\n  workload.unix.gid == 7",
                r#"line 2, column 24: expected a string after "==", found "7""#,
            ),
            (
                "has(workload.unix.uid) ||\n  ünknown == \"x\"",
                r#"line 2, column 3: unexpected character 'ü'"#,
            ),
        ];
        for (text, want) in cases {
            assert_eq!(err(text), want, "{text}");
        }
        // A trailing newline (a YAML block scalar) is still one line.
        assert_eq!(
            err("workload.unix.uid == foo\n"),
            r#"column 22: expected a string after "==", found "foo""#
        );
    }

    #[test]
    fn limits_are_errors_not_crashes() {
        let long = format!(
            "workload.unix.uid == \"{}\"",
            "x".repeat(MAX_EXPRESSION_LEN)
        );
        assert_eq!(
            err(&long),
            format!(
                "expression is {} bytes long; at most 4096 are allowed",
                long.len()
            )
        );
        let at_limit = format!("workload.unix.uid == \"{}\"", "x".repeat(4096 - 23));
        assert_eq!(at_limit.len(), MAX_EXPRESSION_LEN);
        assert!(Expr::parse(&at_limit).is_ok());

        let leaf = "has(workload.unix.uid)";
        let nested = |n: usize| format!("{}{leaf}{}", "(".repeat(n), ")".repeat(n));
        assert!(Expr::parse(&nested(MAX_DEPTH)).is_ok());
        assert_eq!(
            err(&nested(MAX_DEPTH + 1)),
            r#"column 65: more than 64 nested levels of "(" and "!""#
        );
        let bangs = |n: usize| format!("{}{leaf}", "!".repeat(n));
        assert!(Expr::parse(&bangs(MAX_DEPTH)).is_ok());
        assert_eq!(
            err(&bangs(MAX_DEPTH + 1)),
            r#"column 65: more than 64 nested levels of "(" and "!""#
        );
        // Both kinds add up.
        let mixed = |extra: &str| format!("{extra}{}{leaf}{}", "!(".repeat(32), ")".repeat(32));
        assert!(Expr::parse(&mixed("")).is_ok());
        assert!(Expr::parse(&mixed("!")).is_err());
        // Far deeper than any stack allows recursing, within the length limit.
        assert!(matches!(
            Expr::parse(&"(".repeat(4000)),
            Err(ExprError::TooDeep { .. })
        ));
        // Long flat chains are not nesting.
        let chain = vec![leaf; 150].join(" && ");
        assert!(Expr::parse(&chain).is_ok());

        let list = |n: usize| {
            let items: Vec<String> = (0..n).map(|i| format!("\"{i}\"")).collect();
            format!("workload.unix.uid in [{}]", items.join(","))
        };
        assert!(Expr::parse(&list(MAX_LIST_ITEMS)).is_ok());
        assert_eq!(
            err(&list(MAX_LIST_ITEMS + 1)),
            r#"column 22: an "in" list may hold at most 256 values"#
        );
    }

    fn workload() -> Attributes {
        let mut a = Attributes::new();
        a.set(Field::UnixUid, "1000")
            .set(Field::KubernetesNamespace, "payments")
            .set(Field::KubernetesPodName, "");
        a.set_labels(LabelMap::KubernetesLabels, [("app", "ledger")])
            .unwrap();
        a
    }

    fn eval(text: &str) -> Truth {
        p(text).evaluate(&workload())
    }

    #[test]
    fn comparisons_on_present_and_absent_attributes() {
        use Truth::{False, True, Unknown};
        let cases = [
            (r#"workload.unix.uid == "1000""#, True),
            (r#"workload.unix.uid == "0""#, False),
            (r#"workload.unix.uid != "0""#, True),
            (r#"workload.unix.uid != "1000""#, False),
            (r#"workload.unix.uid in ["0", "1000"]"#, True),
            (r#"workload.unix.uid in ["0"]"#, False),
            (r#"glob(workload.kubernetes.namespace, "pay*")"#, True),
            (r#"glob(workload.kubernetes.namespace, "*ments")"#, True),
            (r#"glob(workload.kubernetes.namespace, "web-*")"#, False),
            (r#"glob(workload.kubernetes.labels.app, "*")"#, True),
            ("has(workload.unix.uid)", True),
            // Present but empty is present.
            ("has(workload.kubernetes.pod_name)", True),
            (r#"workload.kubernetes.pod_name == """#, True),
            // Absent: every comparison is unknown, has is false.
            (r#"workload.unix.gid == "0""#, Unknown),
            (r#"workload.unix.gid != "0""#, Unknown),
            (r#"workload.unix.gid in ["0"]"#, Unknown),
            (r#"glob(workload.unix.gid, "*")"#, Unknown),
            (r#"!(workload.unix.gid == "0")"#, Unknown),
            (r#"!(workload.unix.gid != "0")"#, Unknown),
            (r#"workload.kubernetes.labels.tier != "x""#, Unknown),
            ("has(workload.unix.gid)", False),
            ("!has(workload.unix.gid)", True),
            (
                r#"!has(workload.unix.gid) || workload.unix.gid != "0""#,
                True,
            ),
        ];
        for (text, want) in cases {
            assert_eq!(eval(text), want, "{text}");
            assert_eq!(p(text).holds(&workload()), want == True, "{text}");
        }
    }

    #[test]
    fn connectives_follow_kleene_truth_tables() {
        use Truth::{False, True, Unknown};
        // One expression per truth value for the workload above.
        let of = |t: Truth| match t {
            True => r#"workload.unix.uid == "1000""#,
            False => r#"workload.unix.uid == "0""#,
            Unknown => r#"workload.unix.gid == "0""#,
        };
        let table = [
            // a, b, a && b, a || b
            (True, True, True, True),
            (True, False, False, True),
            (True, Unknown, Unknown, True),
            (False, True, False, True),
            (False, False, False, False),
            (False, Unknown, False, Unknown),
            (Unknown, True, Unknown, True),
            (Unknown, False, False, Unknown),
            (Unknown, Unknown, Unknown, Unknown),
        ];
        for (a, b, and, or) in table {
            assert_eq!(eval(&format!("{} && {}", of(a), of(b))), and, "{a} && {b}");
            assert_eq!(eval(&format!("{} || {}", of(a), of(b))), or, "{a} || {b}");
        }
        for (a, not) in [(True, False), (False, True), (Unknown, Unknown)] {
            assert_eq!(eval(&format!("!({})", of(a))), not, "!{a}");
            assert_eq!(!a, not);
        }
    }

    #[test]
    fn explanations_name_the_deciding_attributes() {
        let explain = |text: &str| p(text).explain(&workload()).to_string();
        assert_eq!(
            explain(r#"workload.kubernetes.namespace == "web" && workload.unix.uid == "1000""#),
            r#"false (workload.kubernetes.namespace is "payments")"#
        );
        assert_eq!(
            explain(r#"workload.unix.uid == "1000" && workload.unix.gid == "0""#),
            "unknown (workload.unix.gid is absent)"
        );
        assert_eq!(
            explain(r#"workload.unix.uid == "0" || workload.unix.gid == "0""#),
            "unknown (workload.unix.gid is absent)"
        );
        assert_eq!(
            explain(r#"workload.unix.uid == "0" || workload.kubernetes.labels.app == "web""#),
            r#"false (workload.unix.uid is "1000"; workload.kubernetes.labels.app is "ledger")"#
        );
        assert_eq!(
            explain(r#"!(workload.unix.uid == "1000")"#),
            r#"false (workload.unix.uid is "1000")"#
        );
        assert_eq!(
            explain(r#"workload.unix.uid == "1000" && workload.unix.uid != "0""#),
            r#"true (workload.unix.uid is "1000")"#
        );
        let many = (0..6)
            .map(|i| format!("workload.kubernetes.labels.l{i} == \"x\""))
            .collect::<Vec<_>>()
            .join(" || ");
        assert_eq!(
            explain(&many),
            "unknown (workload.kubernetes.labels.l0 is absent; workload.kubernetes.labels.l1 is absent; workload.kubernetes.labels.l2 is absent; workload.kubernetes.labels.l3 is absent; and 2 more)"
        );
    }

    #[test]
    fn namespace_pins_only_where_sound() {
        let pins = |text: &str| {
            p(text)
                .namespace_pins()
                .map(|s| s.into_iter().collect::<Vec<_>>())
        };
        let some = |v: &[&str]| Some(v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        assert_eq!(
            pins(r#"workload.kubernetes.namespace == "a""#),
            some(&["a"])
        );
        assert_eq!(
            pins(r#"workload.kubernetes.namespace == "a" && has(workload.unix.uid)"#),
            some(&["a"])
        );
        assert_eq!(
            pins(
                r#"workload.kubernetes.namespace in ["a", "b"] && workload.kubernetes.namespace in ["b", "c"]"#
            ),
            some(&["b"])
        );
        assert_eq!(
            pins(r#"workload.kubernetes.namespace == "a" || workload.kubernetes.namespace == "b""#),
            some(&["a", "b"])
        );
        assert_eq!(
            pins(
                r#"(workload.kubernetes.namespace == "a" && has(workload.unix.uid)) || workload.kubernetes.namespace in ["b"]"#
            ),
            some(&["a", "b"])
        );
        for unpinned in [
            r#"workload.kubernetes.namespace != "a""#,
            r#"!(workload.kubernetes.namespace == "a")"#,
            r#"!(workload.kubernetes.namespace != "a")"#,
            r#"glob(workload.kubernetes.namespace, "a")"#,
            r#"has(workload.kubernetes.namespace)"#,
            r#"workload.kubernetes.namespace == "a" || has(workload.unix.uid)"#,
            r#"workload.kubernetes.pod_name == "a""#,
        ] {
            assert_eq!(pins(unpinned), None, "{unpinned}");
        }
    }

    #[test]
    fn rendering_is_canonical() {
        let cases = [
            (
                r#"(workload.unix.uid=="0"||has(workload.unix.gid))&&!glob(agent.name,"vm-*")"#,
                r#"(workload.unix.uid == "0" || has(workload.unix.gid)) && !glob(agent.name, "vm-*")"#,
            ),
            (
                r#"!(workload.unix.uid in ["a","b\"c"])"#,
                r#"!(workload.unix.uid in ["a", "b\"c"])"#,
            ),
            (
                r#"has(agent.name) || (has(agent.name) || has(node.name))"#,
                r#"has(agent.name) || (has(agent.name) || has(node.name))"#,
            ),
            (
                r#"has(agent.name) || has(agent.name) && has(node.name)"#,
                r#"has(agent.name) || has(agent.name) && has(node.name)"#,
            ),
        ];
        for (text, canonical) in cases {
            let e = p(text);
            assert_eq!(e.to_string(), canonical);
            assert_eq!(p(canonical), e);
        }
    }

    // ---- Properties ----------------------------------------------------

    /// Cases per property: small by default, `PROPTEST_CASES` for long runs.
    fn cases() -> u32 {
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(128)
    }

    /// Runs a property and reports how many cases ran (visible with
    /// `--nocapture`).
    fn check<S: Strategy>(
        property: &str,
        strategy: S,
        test: impl Fn(S::Value) -> Result<(), TestCaseError>,
    ) {
        let mut runner = TestRunner::new(ProptestConfig {
            cases: cases(),
            failure_persistence: None,
            ..ProptestConfig::default()
        });
        let ran = AtomicU64::new(0);
        let result = runner.run(&strategy, |value| {
            ran.fetch_add(1, Ordering::Relaxed);
            test(value)
        });
        if let Err(e) = result {
            panic!("{property}: {e}");
        }
        #[allow(clippy::print_stderr)]
        {
            eprintln!(
                "property {property}: {} cases passed",
                ran.load(Ordering::Relaxed)
            );
        }
    }

    fn any_attribute() -> BoxedStrategy<AttributeName> {
        prop_oneof![
            prop::sample::select(Field::ALL.to_vec()).prop_map(AttributeName::from),
            (
                prop::sample::select(LabelMap::ALL.to_vec()),
                "[a-z0-9./_-]{1,12}|[^\\s{}\\p{Cc}]{1,8}"
            )
                .prop_filter_map("representable key", |(m, k)| AttributeName::label(m, &k)
                    .ok()),
        ]
        .boxed()
    }

    fn leaf(
        attribute: impl Strategy<Value = AttributeName> + Clone + 'static,
        value: impl Strategy<Value = String> + Clone + 'static,
        pattern: impl Strategy<Value = String> + Clone + 'static,
        with_has: bool,
    ) -> BoxedStrategy<Expr> {
        let comparisons = prop_oneof![
            (attribute.clone(), value.clone()).prop_map(|(a, v)| Expr::Eq(a, v)),
            (attribute.clone(), value.clone()).prop_map(|(a, v)| Expr::NotEq(a, v)),
            (attribute.clone(), prop::collection::vec(value, 1..4))
                .prop_map(|(a, vs)| Expr::In(a, vs)),
            (attribute.clone(), pattern).prop_map(|(a, g)| Expr::Glob(a, Glob::new(&g))),
        ];
        if with_has {
            prop_oneof![4 => comparisons, 1 => attribute.prop_map(Expr::Has)].boxed()
        } else {
            comparisons.boxed()
        }
    }

    fn tree(leaves: BoxedStrategy<Expr>) -> impl Strategy<Value = Expr> {
        leaves.prop_recursive(5, 24, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 2..4).prop_map(Expr::And),
                prop::collection::vec(inner.clone(), 2..4).prop_map(Expr::Or),
                inner.prop_map(|e| Expr::Not(Box::new(e))),
            ]
        })
    }

    fn any_expr() -> impl Strategy<Value = Expr> {
        tree(leaf(
            any_attribute(),
            "[^*]{0,10}",
            "[a-z*/.-]{0,8}|\\PC{0,6}",
            true,
        ))
    }

    /// Expressions over a few attributes and values, so that evaluation
    /// meets every case (equal, different, absent).
    fn small_expr(with_has: bool) -> BoxedStrategy<Expr> {
        let attribute = prop::sample::select(vec![
            name(NS),
            name(UID),
            name("workload.kubernetes.labels.app"),
        ]);
        let value = prop::sample::select(vec!["a".to_owned(), "b".to_owned(), "c".to_owned()]);
        let pattern = prop::sample::select(vec!["a".to_owned(), "*".to_owned(), "b*".to_owned()]);
        tree(leaf(attribute, value, pattern, with_has)).boxed()
    }

    fn small_attributes() -> impl Strategy<Value = Attributes> {
        let slot = || prop::option::of(prop::sample::select(vec!["a", "b", "c"]));
        (slot(), slot(), slot()).prop_map(|(ns, uid, app)| {
            let mut a = Attributes::new();
            if let Some(v) = ns {
                a.set(Field::KubernetesNamespace, v);
            }
            if let Some(v) = uid {
                a.set(Field::UnixUid, v);
            }
            if let Some(v) = app {
                a.insert(name("workload.kubernetes.labels.app"), v);
            }
            a
        })
    }

    /// The textbook definition: F < U < T, && is min, || is max.
    fn reference(e: &Expr, attrs: &Attributes) -> Truth {
        let rank = |t: Truth| match t {
            Truth::False => 0,
            Truth::Unknown => 1,
            Truth::True => 2,
        };
        let values = |items: &[Expr]| {
            items
                .iter()
                .map(|i| reference(i, attrs))
                .collect::<Vec<_>>()
        };
        match e {
            Expr::And(items) => values(items)
                .into_iter()
                .min_by_key(|t| rank(*t))
                .unwrap_or(Truth::True),
            Expr::Or(items) => values(items)
                .into_iter()
                .max_by_key(|t| rank(*t))
                .unwrap_or(Truth::False),
            Expr::Not(inner) => !reference(inner, attrs),
            leaf => leaf.evaluate(attrs),
        }
    }

    #[test]
    fn arbitrary_text_never_panics() {
        check("arbitrary-text", any::<String>(), |text| {
            let _ = Expr::parse(&text);
            Ok(())
        });
        check(
            "arbitrary-bytes",
            prop::collection::vec(any::<u8>(), 0..300),
            |bytes| {
                let _ = Expr::parse(&String::from_utf8_lossy(&bytes));
                Ok(())
            },
        );
    }

    #[test]
    fn token_soup_never_panics_and_what_parses_round_trips() {
        let token = prop::sample::select(SOUP_TOKENS.to_vec());
        let separator = prop::sample::select(vec!["", " ", "\n"]);
        let soup = prop::collection::vec((token, separator), 0..24).prop_map(|parts| {
            parts
                .into_iter()
                .flat_map(|(t, s)| [t, s])
                .collect::<String>()
        });
        let parsed = AtomicU64::new(0);
        check("token-soup", soup, |text| {
            if let Ok(e) = Expr::parse(&text) {
                parsed.fetch_add(1, Ordering::Relaxed);
                let rendered = e.to_string();
                prop_assert_eq!(Expr::parse(&rendered), Ok(e), "{} -> {}", text, rendered);
            }
            Ok(())
        });
        report_parsed("token-soup", &parsed);
    }

    /// Near-valid input: a rendered expression with one token inserted, or
    /// one character deleted, somewhere.
    #[test]
    fn mutated_expressions_never_panic_and_what_parses_round_trips() {
        let mutated = (
            any_expr(),
            any::<prop::sample::Index>(),
            prop::option::of(prop::sample::select(SOUP_TOKENS.to_vec())),
        )
            .prop_map(|(e, at, insert)| {
                let text = e.to_string();
                let boundaries: Vec<usize> = text
                    .char_indices()
                    .map(|(i, _)| i)
                    .chain([text.len()])
                    .collect();
                let i = boundaries[at.index(boundaries.len())];
                match insert {
                    Some(token) => format!("{}{token}{}", &text[..i], &text[i..]),
                    None => {
                        let mut t = text.clone();
                        if i < t.len() {
                            t.remove(i);
                        }
                        t
                    }
                }
            });
        let parsed = AtomicU64::new(0);
        check("mutated", mutated, |text| {
            if let Ok(e) = Expr::parse(&text) {
                parsed.fetch_add(1, Ordering::Relaxed);
                let rendered = e.to_string();
                prop_assert_eq!(Expr::parse(&rendered), Ok(e), "{} -> {}", text, rendered);
            }
            Ok(())
        });
        report_parsed("mutated", &parsed);
    }

    #[allow(clippy::print_stderr)]
    fn report_parsed(property: &str, parsed: &AtomicU64) {
        eprintln!(
            "property {property}: {} inputs parsed and round-tripped",
            parsed.load(Ordering::Relaxed)
        );
    }

    /// Single tokens, broken ones, and whole conditions (so that some soups
    /// parse and exercise the round trip).
    const SOUP_TOKENS: [&str; 35] = [
        "&&",
        "||",
        "!",
        "(",
        ")",
        "[",
        "]",
        ",",
        "==",
        "!=",
        "=",
        "&",
        "in",
        "has",
        "glob",
        "workload.unix.uid",
        "workload.kubernetes.namespace",
        "workload.kubernetes.labels",
        "node.labels.pool",
        "agent",
        "\"a\"",
        "\"\"",
        "\"x*\"",
        "\"\\\"\"",
        "\"\\\\\"",
        "\"\\n\"",
        "\"",
        "\\",
        "ü",
        "0",
        "workload.docker.labels[\"a:b\"]",
        "has(workload.unix.uid)",
        "workload.unix.uid == \"a\"",
        "glob(agent.name, \"vm-*\")",
        "workload.kubernetes.namespace in [\"a\", \"b\"]",
    ];

    #[test]
    fn generated_expressions_round_trip_through_text() {
        check("render-parse", any_expr(), |e| {
            let text = e.to_string();
            if text.len() > MAX_EXPRESSION_LEN {
                let too_long = matches!(Expr::parse(&text), Err(ExprError::TooLong { .. }));
                prop_assert!(too_long);
            } else {
                prop_assert_eq!(Expr::parse(&text), Ok(e), "{}", text);
            }
            Ok(())
        });
    }

    #[test]
    fn evaluation_is_kleene_and_absence_never_helps() {
        check(
            "kleene-reference",
            (small_expr(true), small_attributes()),
            |(e, attrs)| {
                prop_assert_eq!(e.evaluate(&attrs), reference(&e, &attrs));
                prop_assert_eq!(e.explain(&attrs).truth, e.evaluate(&attrs));
                if e.attributes().iter().all(|a| attrs.get(a).is_some()) {
                    prop_assert_ne!(e.evaluate(&attrs), Truth::Unknown);
                }
                Ok(())
            },
        );
        // Without has(), learning more attributes never changes a definite
        // answer: an absent attribute cannot have made anything true (or false).
        check(
            "monotone-in-information",
            (small_expr(false), small_attributes(), small_attributes()),
            |(e, fewer, extra)| {
                let mut more = fewer.clone();
                for (k, v) in extra.iter() {
                    if fewer.get(&name(k)).is_none() {
                        more.insert(name(k), v);
                    }
                }
                let before = e.evaluate(&fewer);
                if before != Truth::Unknown {
                    prop_assert_eq!(e.evaluate(&more), before);
                }
                Ok(())
            },
        );
    }

    #[test]
    fn namespace_pins_are_sound() {
        check(
            "namespace-pins",
            (small_expr(true), small_attributes()),
            |(e, attrs)| {
                if let Some(pins) = e.namespace_pins()
                    && e.holds(&attrs)
                {
                    let ns = attrs.field(Field::KubernetesNamespace);
                    prop_assert!(ns.is_some_and(|ns| pins.contains(ns)), "{} {:?}", e, attrs);
                }
                Ok(())
            },
        );
    }
}
