//! The syntax of the SQL subset that [`super`] plans.
//!
//! sqlparser's tokenizer (a loop over the characters) splits the query into tokens; this parser
//! builds from them only what the subset needs. It never recurses, so no query can exhaust the
//! stack of the thread that plans it:
//! - lists (SELECT items, function arguments, IN values, GROUP BY columns, AND and OR chains)
//!   are loops;
//! - parentheses around a value are counted, not descended into;
//! - the WHERE clause's parentheses and NOTs are an explicit stack whose height is checked
//!   against [`MAX_NESTING`] as it grows, and the clause comes out in postfix order
//!   ([`Step`]), a flat list that the planner folds into a predicate with a stack of its own.
//!
//! Scans ahead (to the end of a SELECT item, a function argument or a parenthesis) count
//! brackets in a loop; a token is scanned once for each group of conditions around it (at
//! most [`MAX_NESTING`]) and a few times more, so parsing stays linear in the query's length.

use sqlparser::dialect::GenericDialect;
use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer, Word};

use super::unsupported;
use crate::AnalyticsError;
use crate::spec::{Literal, MAX_NESTING, Op};

/// Characters of the query an error message quotes, at most.
const QUOTED_CHARS: usize = 60;

/// A parsed `SELECT … FROM … [WHERE …] [GROUP BY …]`.
#[derive(Debug)]
pub(super) struct Query {
    /// The SELECT list.
    pub(super) items: Vec<SelectItem>,
    /// The first table in FROM.
    pub(super) table: TableRef,
    /// `[INNER] JOIN table ON a.key = b.key`, if any.
    pub(super) join: Option<JoinClause>,
    /// The WHERE clause, in postfix order.
    pub(super) selection: Option<Vec<Step>>,
    /// The GROUP BY list.
    pub(super) group_by: Vec<Arg>,
}

/// The dataset named in FROM.
#[derive(Debug)]
pub(super) struct TableRef {
    /// Its name.
    pub(super) name: String,
    /// `AS alias`.
    pub(super) alias: Option<String>,
}

/// An inner join of the FROM table with one more, on one key column each.
#[derive(Debug)]
pub(super) struct JoinClause {
    /// The joined table.
    pub(super) table: TableRef,
    /// The two sides of `ON a.key = b.key`, columns as written (qualified or not).
    pub(super) on: (Operand, Operand),
}

/// One SELECT item.
#[derive(Debug)]
pub(super) struct SelectItem {
    /// What it computes.
    pub(super) expr: ItemExpr,
    /// `AS alias`.
    pub(super) alias: Option<String>,
}

/// A SELECT item's expression.
#[derive(Debug)]
pub(super) enum ItemExpr {
    /// `*` or `table.*`.
    Wildcard,
    /// A column, possibly qualified or in parentheses.
    Column(Operand),
    /// A function call.
    Call(Call),
    /// Anything else, as written.
    Other(String),
}

/// `name(arguments)`.
#[derive(Debug)]
pub(super) struct Call {
    /// The function's name as written (`a.b` if qualified).
    pub(super) name: String,
    /// The name has a qualifier.
    pub(super) qualified: bool,
    /// The arguments.
    pub(super) args: Vec<Arg>,
}

/// A function argument or a GROUP BY item.
#[derive(Debug)]
pub(super) enum Arg {
    /// `*`.
    Star,
    /// A column or a literal.
    Value(Operand),
    /// Anything else, as written.
    Other(String),
}

impl Arg {
    /// The argument as written.
    pub(super) fn text(&self) -> &str {
        match self {
            Arg::Star => "*",
            Arg::Value(o) => &o.text,
            Arg::Other(text) => text,
        }
    }
}

/// A column or a literal, possibly in parentheses.
#[derive(Debug)]
pub(super) struct Operand {
    /// What it is.
    pub(super) kind: OperandKind,
    /// As written, for names and messages.
    pub(super) text: String,
}

/// What an operand is.
#[derive(Debug)]
pub(super) enum OperandKind {
    /// A column name, with its qualifiers before it.
    Column(Vec<String>),
    /// A number (possibly signed) or single-quoted text.
    Literal(Literal),
    /// Another literal (`NULL`, `TRUE`, other kinds of string, a number out of range).
    Other,
}

/// One step of a WHERE clause in postfix order: conditions push a predicate, the others
/// combine the predicates on top.
#[derive(Debug)]
pub(super) enum Step {
    /// Push a condition.
    Atom(Atom),
    /// Negate the top.
    Not,
    /// Replace the top `n` (at least 2) by their conjunction.
    And(usize),
    /// Replace the top `n` (at least 2) by their disjunction.
    Or(usize),
}

/// A condition on one column.
#[derive(Debug)]
pub(super) enum Atom {
    /// `left op right`.
    Compare {
        /// The left side.
        left: Operand,
        /// The comparison.
        op: Op,
        /// The right side.
        right: Operand,
    },
    /// `operand [NOT] BETWEEN low AND high`.
    Between {
        /// What is tested.
        operand: Operand,
        /// `NOT BETWEEN`.
        negated: bool,
        /// The lower bound.
        low: Operand,
        /// The upper bound.
        high: Operand,
    },
    /// `operand [NOT] IN (values)`.
    In {
        /// What is tested.
        operand: Operand,
        /// `NOT IN`.
        negated: bool,
        /// The list.
        values: Vec<Operand>,
    },
    /// `operand IS [NOT] NULL`.
    IsNull {
        /// What is tested.
        operand: Operand,
        /// `IS NOT NULL`.
        negated: bool,
    },
}

/// Parses a whole query (one statement, optionally ending with `;`).
pub(super) fn parse(sql: &str) -> Result<Query, AnalyticsError> {
    let tokens = Tokenizer::new(&GenericDialect {}, sql)
        .tokenize_with_location()
        .map_err(|e| AnalyticsError::Parse(e.to_string()))?;
    let tokens: Vec<TokenWithSpan> =
        tokens.into_iter().filter(|t| !matches!(t.token, Token::Whitespace(_))).collect();
    Parser { tokens, pos: 0, eof: TokenWithSpan::new_eof() }.statement()
}

/// The clause a keyword after the FROM table starts, for the ones outside the subset.
fn clause(keyword: Keyword) -> Option<&'static str> {
    use Keyword as K;
    Some(match keyword {
        K::HAVING => "HAVING",
        K::ORDER => "ORDER BY",
        K::LIMIT | K::OFFSET | K::FETCH | K::TOP => "LIMIT, OFFSET or FETCH",
        K::UNION => "UNION",
        K::EXCEPT => "EXCEPT",
        K::INTERSECT => "INTERSECT",
        K::MINUS => "MINUS",
        K::WINDOW => "WINDOW",
        K::QUALIFY => "QUALIFY",
        K::FOR => "FOR clauses",
        K::SETTINGS | K::FORMAT => "SETTINGS or FORMAT",
        K::PREWHERE => "PREWHERE",
        K::CONNECT => "CONNECT BY",
        K::CLUSTER | K::DISTRIBUTE | K::SORT => "CLUSTER BY, DISTRIBUTE BY or SORT BY",
        K::LATERAL => "LATERAL VIEW",
        K::INTO => "SELECT INTO",
        K::TABLESAMPLE | K::SAMPLE => "TABLESAMPLE",
        K::JOIN
        | K::INNER
        | K::LEFT
        | K::RIGHT
        | K::FULL
        | K::CROSS
        | K::NATURAL
        | K::OUTER
        | K::STRAIGHT_JOIN
        | K::ON
        | K::USING
        | K::APPLY => "JOIN",
        _ => return None,
    })
}

/// Whether an unquoted word is a keyword that cannot name a column (quote such a column:
/// `"order"`).
fn reserved(w: &Word) -> bool {
    use Keyword as K;
    w.quote_style.is_none()
        && matches!(
            w.keyword,
            K::SELECT
                | K::FROM
                | K::WHERE
                | K::GROUP
                | K::BY
                | K::HAVING
                | K::ORDER
                | K::LIMIT
                | K::AND
                | K::OR
                | K::NOT
                | K::IN
                | K::IS
                | K::BETWEEN
                | K::LIKE
                | K::ILIKE
                | K::AS
                | K::CASE
                | K::WHEN
                | K::THEN
                | K::ELSE
                | K::END
                | K::EXISTS
                | K::DISTINCT
                | K::ALL
                | K::WITH
                | K::UNION
                | K::EXCEPT
                | K::INTERSECT
                | K::JOIN
                | K::ON
                | K::INTO
                | K::INTERVAL
        )
}

/// Whether an unquoted word after the FROM table starts a clause rather than naming an alias.
fn ends_table(w: &Word) -> bool {
    reserved(w) || w.quote_style.is_none() && clause(w.keyword).is_some()
}

/// Whether a word is the unquoted keyword `k`.
fn is(t: &Token, k: Keyword) -> bool {
    matches!(t, Token::Word(w) if w.quote_style.is_none() && w.keyword == k)
}

/// Whether a token starts a query (after an opening parenthesis: a subquery).
fn starts_query(t: &Token) -> bool {
    is(t, Keyword::SELECT) || is(t, Keyword::WITH) || is(t, Keyword::VALUES)
}

/// The comparison a token is.
fn comparison(t: &Token) -> Option<Op> {
    Some(match t {
        Token::Eq | Token::DoubleEq => Op::Eq,
        Token::Neq => Op::Ne,
        Token::Lt => Op::Lt,
        Token::LtEq => Op::Le,
        Token::Gt => Op::Gt,
        Token::GtEq => Op::Ge,
        _ => return None,
    })
}

/// Whether a token is an operator outside the subset (arithmetic, string, pattern matching…).
fn other_operator(t: &Token) -> bool {
    use Keyword as K;
    match t {
        Token::Word(w) => {
            w.quote_style.is_none()
                && matches!(
                    w.keyword,
                    K::LIKE
                        | K::ILIKE
                        | K::SIMILAR
                        | K::REGEXP
                        | K::RLIKE
                        | K::GLOB
                        | K::MATCH
                        | K::DIV
                        | K::COLLATE
                        | K::AT
                        | K::XOR
                        | K::OVERLAPS
                        | K::MEMBER
                        | K::OPERATOR
                )
        }
        Token::EOF
        | Token::Number(..)
        | Token::Comma
        | Token::SemiColon
        | Token::LParen
        | Token::RParen
        | Token::Char(_)
        | Token::Placeholder(_) => false,
        t => comparison(t).is_none() && !is_string(t),
    }
}

/// Whether a token is a string literal of any kind.
fn is_string(t: &Token) -> bool {
    matches!(
        t,
        Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::TripleSingleQuotedString(_)
            | Token::TripleDoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::TripleSingleQuotedByteStringLiteral(_)
            | Token::TripleDoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedRawStringLiteral(_)
            | Token::DoubleQuotedRawStringLiteral(_)
            | Token::TripleSingleQuotedRawStringLiteral(_)
            | Token::TripleDoubleQuotedRawStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::QuoteDelimitedStringLiteral(_)
            | Token::NationalQuoteDelimitedStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_)
    )
}

/// A token as SQL writes it: quotes inside quoted names and strings doubled.
fn written(t: &Token) -> String {
    match t {
        Token::Word(Word { value, quote_style: Some(q), .. }) => {
            let end = if *q == '[' { ']' } else { *q };
            format!("{q}{}{end}", value.replace(end, &format!("{end}{end}")))
        }
        Token::Word(w) => w.value.clone(),
        Token::SingleQuotedString(s) => format!("'{}'", s.replace('\'', "''")),
        t => t.to_string(),
    }
}

/// `text` cut to [`QUOTED_CHARS`] characters.
fn shorten(text: String) -> String {
    match text.char_indices().nth(QUOTED_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// One WHERE group: the top level, or a parenthesis.
#[derive(Default)]
struct Group {
    /// OR operands finished.
    ors: usize,
    /// AND operands of the current OR operand.
    ands: usize,
    /// NOTs before the group's opening parenthesis.
    nots: usize,
}

struct Parser {
    /// The tokens, without whitespace and comments.
    tokens: Vec<TokenWithSpan>,
    /// The next token.
    pos: usize,
    /// What every position past the end reads as.
    eof: TokenWithSpan,
}

impl Parser {
    fn at(&self, i: usize) -> &TokenWithSpan {
        self.tokens.get(i).unwrap_or(&self.eof)
    }

    fn peek(&self) -> &Token {
        &self.at(self.pos).token
    }

    fn peek_nth(&self, n: usize) -> &Token {
        &self.at(self.pos.saturating_add(n)).token
    }

    fn advance(&mut self) {
        if self.pos < self.tokens.len() {
            self.pos += 1;
        }
    }

    fn eat(&mut self, t: &Token) -> bool {
        let found = self.peek() == t;
        if found {
            self.advance();
        }
        found
    }

    fn eat_keyword(&mut self, k: Keyword) -> bool {
        let found = is(self.peek(), k);
        if found {
            self.advance();
        }
        found
    }

    /// A parse error: `what` was expected where the next token stands.
    fn expected(&self, what: &str) -> AnalyticsError {
        let t = self.at(self.pos);
        let found = match &t.token {
            Token::EOF => "the end of the query".to_string(),
            other => shorten(other.to_string()),
        };
        let place = if t.span.start.line == 0 {
            String::new()
        } else {
            format!(" at line {}, column {}", t.span.start.line, t.span.start.column)
        };
        AnalyticsError::Parse(format!("expected {what}, found {found}{place}"))
    }

    /// The tokens `from..to` as written, give or take spaces, cut for messages.
    fn render(&self, from: usize, to: usize) -> String {
        let mut out = String::new();
        let mut prev: Option<&Token> = None;
        for i in from..to.min(self.tokens.len()) {
            let t = &self.at(i).token;
            let glued = match (prev, t) {
                (None, _) => true,
                (Some(Token::LParen | Token::Period), _) => true,
                (Some(_), Token::RParen | Token::Comma | Token::Period) => true,
                (Some(Token::Word(_)), Token::LParen) => true,
                // A sign before a number, not after a value.
                (Some(Token::Minus | Token::Plus), Token::Number(..)) => {
                    let before = &self.at(i.saturating_sub(2)).token;
                    i < from + 2
                        || (!matches!(before, Token::Word(_) | Token::Number(..) | Token::RParen)
                            && !is_string(before))
                }
                _ => false,
            };
            if !glued {
                out.push(' ');
            }
            out.push_str(&written(t));
            if out.chars().count() > QUOTED_CHARS {
                break;
            }
            prev = Some(t);
        }
        shorten(out)
    }

    /// The position of the first token from `from` on, outside brackets opened after it, that
    /// `stop` accepts (or of the end of the query).
    fn scan(&self, from: usize, stop: impl Fn(&Token) -> bool) -> usize {
        let mut depth = 0usize;
        let mut i = from;
        loop {
            let t = &self.at(i).token;
            match t {
                Token::EOF => return i,
                Token::LParen | Token::LBracket | Token::LBrace => depth += 1,
                Token::RParen | Token::RBracket | Token::RBrace if depth > 0 => depth -= 1,
                t if depth == 0 && stop(t) => return i,
                _ => {}
            }
            i += 1;
        }
    }

    fn statement(mut self) -> Result<Query, AnalyticsError> {
        while self.eat(&Token::SemiColon) {}
        let query = match self.peek() {
            Token::EOF => return Err(unsupported("an empty query")),
            t if is(t, Keyword::SELECT) => self.select()?,
            t if is(t, Keyword::WITH) => {
                return Err(unsupported("WITH (common table expressions)"));
            }
            t if is(t, Keyword::FROM) => return Err(unsupported("FROM before SELECT")),
            Token::LParen => return Err(unsupported("a subquery")),
            Token::Word(w) if w.keyword != Keyword::NoKeyword => {
                return Err(unsupported("statements other than SELECT"));
            }
            _ => return Err(self.expected("a SELECT statement")),
        };
        match self.peek() {
            Token::Word(w) if w.quote_style.is_none() => {
                if let Some(what) = clause(w.keyword) {
                    return Err(unsupported(what));
                }
            }
            Token::VerticalBarRightAngleBracket => return Err(unsupported("pipe operators")),
            _ => {}
        }
        let ended = self.eat(&Token::SemiColon);
        while self.eat(&Token::SemiColon) {}
        match self.peek() {
            Token::EOF => Ok(query),
            _ if ended => Err(unsupported("several statements")),
            _ => Err(self.expected("the end of the query")),
        }
    }

    fn select(&mut self) -> Result<Query, AnalyticsError> {
        self.advance();
        self.eat_keyword(Keyword::ALL);
        match self.peek() {
            t if is(t, Keyword::DISTINCT) => return Err(unsupported("DISTINCT")),
            t if is(t, Keyword::TOP) => return Err(unsupported("TOP")),
            t if is(t, Keyword::AS) => return Err(unsupported("SELECT AS VALUE or STRUCT")),
            _ => {}
        }
        let mut items = Vec::new();
        loop {
            items.push(self.item()?);
            if !self.eat(&Token::Comma) {
                break;
            }
        }
        match self.peek() {
            t if is(t, Keyword::FROM) => self.advance(),
            t if is(t, Keyword::INTO) => return Err(unsupported("SELECT INTO")),
            Token::EOF | Token::SemiColon => return Err(unsupported("a query without FROM")),
            _ => return Err(self.expected("a comma or FROM")),
        }
        let table = self.table()?;
        let join = self.join()?;
        let selection =
            if self.eat_keyword(Keyword::WHERE) { Some(self.condition()?) } else { None };
        let mut group_by = Vec::new();
        if self.eat_keyword(Keyword::GROUP) {
            if !self.eat_keyword(Keyword::BY) {
                return Err(self.expected("BY after GROUP"));
            }
            group_by = self.group_by()?;
        }
        Ok(Query { items, table, join, selection, group_by })
    }

    /// One SELECT item, with its alias.
    fn item(&mut self) -> Result<SelectItem, AnalyticsError> {
        let start = self.pos;
        let end = self.scan(self.pos, |t| {
            matches!(t, Token::Comma | Token::SemiColon)
                || is(t, Keyword::FROM)
                || is(t, Keyword::AS)
                || is(t, Keyword::INTO)
        });
        if start == end {
            return Err(self.expected("a SELECT item"));
        }
        let mut expr = self.item_expr(end)?;
        let mut alias = None;
        // An alias without AS.
        if self.pos + 1 == end {
            if let Token::Word(w) = self.peek() {
                if !reserved(w) {
                    alias = Some(w.value.clone());
                    self.advance();
                }
            }
        }
        if self.pos != end {
            if !matches!(expr, ItemExpr::Wildcard) {
                expr = ItemExpr::Other(self.render(start, end));
            }
            self.pos = end;
        }
        if self.eat_keyword(Keyword::AS) {
            match self.peek() {
                Token::Word(w) if !reserved(w) => alias = Some(w.value.clone()),
                _ => return Err(self.expected("an alias after AS")),
            }
            self.advance();
        }
        Ok(SelectItem { expr, alias })
    }

    /// A SELECT item's expression, reading no further than `end`; the caller checks that it
    /// reached `end`.
    fn item_expr(&mut self, end: usize) -> Result<ItemExpr, AnalyticsError> {
        let start = self.pos;
        if self.eat(&Token::Mul) {
            return Ok(ItemExpr::Wildcard);
        }
        let mut parens = 0usize;
        while self.pos < end && self.eat(&Token::LParen) {
            parens += 1;
        }
        let expr = match self.peek() {
            Token::Word(w) if !reserved(w) => {
                let parts = self.name_parts();
                if self.peek() == &Token::Period && self.peek_nth(1) == &Token::Mul {
                    self.advance();
                    self.advance();
                    ItemExpr::Wildcard
                } else if self.peek() == &Token::LParen {
                    let name = self.render(start + parens, self.pos);
                    ItemExpr::Call(self.call(name, parts.len() > 1)?)
                } else {
                    let text = self.render(start, self.pos);
                    ItemExpr::Column(Operand { kind: OperandKind::Column(parts), text })
                }
            }
            _ => {
                self.pos = end;
                return Ok(ItemExpr::Other(self.render(start, end)));
            }
        };
        for _ in 0..parens {
            if self.pos >= end || !self.eat(&Token::RParen) {
                self.pos = end;
                return Ok(ItemExpr::Other(self.render(start, end)));
            }
        }
        Ok(match expr {
            ItemExpr::Column(o) => {
                ItemExpr::Column(Operand { text: self.render(start, self.pos), ..o })
            }
            other => other,
        })
    }

    /// `word(.word)*` from the cursor, which is at a word; stops before a `.` that no word
    /// follows.
    fn name_parts(&mut self) -> Vec<String> {
        let mut parts = Vec::new();
        while let Token::Word(w) = self.peek() {
            parts.push(w.value.clone());
            self.advance();
            let more = self.peek() == &Token::Period && matches!(self.peek_nth(1), Token::Word(_));
            if !more {
                break;
            }
            self.advance();
        }
        parts
    }

    /// A function call whose name has been read; the cursor is at its `(`.
    fn call(&mut self, name: String, qualified: bool) -> Result<Call, AnalyticsError> {
        self.advance();
        if is(self.peek(), Keyword::DISTINCT) || is(self.peek(), Keyword::ALL) {
            return Err(unsupported(format!("DISTINCT or ALL in {}", name.to_uppercase())));
        }
        let mut args = Vec::new();
        if !self.eat(&Token::RParen) {
            loop {
                let end = self.scan(self.pos, |t| matches!(t, Token::Comma | Token::RParen));
                if self.pos == end {
                    return Err(self.expected(&format!("an argument of {name}")));
                }
                if self.peek() == &Token::Mul && self.pos + 1 == end {
                    self.advance();
                    args.push(Arg::Star);
                } else {
                    args.push(self.value_until(end));
                }
                match self.peek() {
                    Token::Comma => self.advance(),
                    Token::RParen => {
                        self.advance();
                        break;
                    }
                    _ => return Err(self.expected(&format!("`,` or `)` in {name}(…)"))),
                }
            }
        }
        match self.peek() {
            t if is(t, Keyword::OVER) => Err(unsupported("window functions (OVER)")),
            t if is(t, Keyword::FILTER) => Err(unsupported("FILTER on aggregates (use WHERE)")),
            t if is(t, Keyword::WITHIN) || is(t, Keyword::RESPECT) || is(t, Keyword::IGNORE) => {
                Err(unsupported(format!("{} after {name}(…)", self.render(self.pos, self.pos + 2))))
            }
            _ => Ok(Call { name, qualified, args }),
        }
    }

    /// A column or a literal filling the tokens up to `end`, else those tokens as written;
    /// the cursor ends at `end`.
    fn value_until(&mut self, end: usize) -> Arg {
        let start = self.pos;
        match self.operand("") {
            Ok(o) if self.pos == end => Arg::Value(o),
            _ => {
                self.pos = end;
                Arg::Other(self.render(start, end))
            }
        }
    }

    /// After the FROM table: `[INNER] JOIN table ON a.key = b.key`, the one join the subset
    /// has; other joins, a second join and several tables in FROM are refused.
    fn join(&mut self) -> Result<Option<JoinClause>, AnalyticsError> {
        const INNER_ONLY: &str =
            "this kind of JOIN (an inner JOIN … ON a.key = b.key of two datasets is supported)";
        let inner = self.eat_keyword(Keyword::INNER);
        if !self.eat_keyword(Keyword::JOIN) {
            return match self.peek() {
                _ if inner => Err(self.expected("JOIN after INNER")),
                Token::Comma => Err(unsupported("several tables in FROM (write … JOIN … ON …)")),
                Token::Word(w) if w.quote_style.is_none() && clause(w.keyword) == Some("JOIN") => {
                    Err(unsupported(INNER_ONLY))
                }
                _ => Ok(None),
            };
        }
        let table = self.table()?;
        if !self.eat_keyword(Keyword::ON) {
            if is(self.peek(), Keyword::USING) {
                return Err(unsupported("JOIN … USING (write ON a.key = b.key)"));
            }
            return Err(self.expected("ON after the joined dataset"));
        }
        let left = self.operand(" in ON")?;
        if !(self.eat(&Token::Eq) || self.eat(&Token::DoubleEq)) {
            return Err(self.expected("= in ON (a join matches one key column of each side)"));
        }
        let right = self.operand(" in ON")?;
        for o in [&left, &right] {
            if !matches!(o.kind, OperandKind::Column(_)) {
                return Err(unsupported(format!(
                    "{} in ON (name a key column of each side)",
                    o.text
                )));
            }
        }
        match self.peek() {
            t if is(t, Keyword::AND) || is(t, Keyword::OR) => {
                Err(unsupported("a join on several conditions (join on one key column each)"))
            }
            Token::Comma => Err(unsupported("several tables in FROM (write … JOIN … ON …)")),
            Token::Word(w) if w.quote_style.is_none() && clause(w.keyword) == Some("JOIN") => {
                Err(unsupported("more than one JOIN"))
            }
            _ => Ok(Some(JoinClause { table, on: (left, right) })),
        }
    }

    /// A table in FROM or JOIN, with its alias; refuses subqueries.
    fn table(&mut self) -> Result<TableRef, AnalyticsError> {
        let start = self.pos;
        let parts = match self.peek() {
            Token::LParen if starts_query(self.peek_nth(1)) => {
                return Err(unsupported("a subquery"));
            }
            Token::LParen => return Err(unsupported("JOIN")),
            Token::Word(w) if !ends_table(w) => self.name_parts(),
            _ => return Err(self.expected("a dataset name after FROM")),
        };
        let name = match <[String; 1]>::try_from(parts) {
            Ok([name]) => name,
            Err(_) => {
                let text = self.render(start, self.pos);
                return Err(unsupported(format!("the qualified table name {text}")));
            }
        };
        if self.peek() == &Token::LParen {
            return Err(unsupported(format!("FROM {name}(…) (name one dataset)")));
        }
        let alias = match self.peek() {
            t if is(t, Keyword::AS) => {
                self.advance();
                match self.peek() {
                    Token::Word(w) if !reserved(w) => Some(w.value.clone()),
                    _ => return Err(self.expected("an alias after AS")),
                }
            }
            Token::Word(w) if !ends_table(w) => Some(w.value.clone()),
            _ => None,
        };
        if alias.is_some() {
            self.advance();
            if self.peek() == &Token::LParen {
                return Err(unsupported("column aliases on the table"));
            }
        }
        Ok(TableRef { name, alias })
    }

    /// The GROUP BY list.
    fn group_by(&mut self) -> Result<Vec<Arg>, AnalyticsError> {
        const MODIFIERS: &str = "GROUP BY modifiers (ROLLUP, CUBE, TOTALS)";
        if is(self.peek(), Keyword::ALL) {
            return Err(unsupported("GROUP BY ALL"));
        }
        let mut items = Vec::new();
        loop {
            let modifier = [Keyword::ROLLUP, Keyword::CUBE, Keyword::GROUPING]
                .iter()
                .any(|k| is(self.peek(), *k));
            if modifier {
                return Err(unsupported(MODIFIERS));
            }
            if matches!(self.peek(), Token::Comma | Token::SemiColon | Token::RParen | Token::EOF) {
                return Err(self.expected("a GROUP BY column"));
            }
            // The first word may be a column named like a clause (`start`).
            let from = self.pos + usize::from(matches!(self.peek(), Token::Word(_)));
            let end = self.scan(from, |t| match t {
                Token::Comma | Token::SemiColon | Token::RParen => true,
                Token::Word(w) => {
                    w.quote_style.is_none()
                        && (clause(w.keyword).is_some() || w.keyword == Keyword::WITH)
                }
                _ => false,
            });
            items.push(self.value_until(end));
            if !self.eat(&Token::Comma) {
                break;
            }
        }
        if is(self.peek(), Keyword::WITH) {
            return Err(unsupported(MODIFIERS));
        }
        Ok(items)
    }

    /// A column or a literal, possibly in parentheses; `context` says where, for messages.
    fn operand(&mut self, context: &str) -> Result<Operand, AnalyticsError> {
        let start = self.pos;
        let mut parens = 0usize;
        while self.peek() == &Token::LParen {
            if starts_query(self.peek_nth(1)) {
                return Err(unsupported("a subquery"));
            }
            parens += 1;
            self.advance();
        }
        let kind = match self.peek() {
            t if is(t, Keyword::EXISTS) => return Err(unsupported("a subquery")),
            Token::Word(w) if self.peek_nth(1) == &Token::LParen => {
                let name = w.value.to_uppercase();
                return Err(unsupported(format!("the function {name}{context}")));
            }
            t if is(t, Keyword::NULL) || is(t, Keyword::TRUE) || is(t, Keyword::FALSE) => {
                self.advance();
                OperandKind::Other
            }
            t if is(t, Keyword::CASE) => return Err(unsupported(format!("CASE{context}"))),
            Token::Word(w) if !reserved(w) => {
                let parts = self.name_parts();
                if self.peek() == &Token::Period {
                    return Err(self.expected("a column name after `.`"));
                }
                OperandKind::Column(parts)
            }
            Token::Number(..) => self.number(1.0),
            Token::Minus | Token::Plus => {
                let sign = if self.peek() == &Token::Minus { -1.0 } else { 1.0 };
                self.advance();
                if !matches!(self.peek(), Token::Number(..)) {
                    return Err(self.expected("a number after the sign"));
                }
                self.number(sign)
            }
            Token::SingleQuotedString(s) => {
                let text = Literal::Text(s.clone());
                self.advance();
                OperandKind::Literal(text)
            }
            t if is_string(t) => {
                self.advance();
                OperandKind::Other
            }
            _ => return Err(self.expected("a column or a value")),
        };
        for _ in 0..parens {
            if !self.eat(&Token::RParen) {
                return Err(self.not_closed(context));
            }
        }
        Ok(Operand { kind, text: self.render(start, self.pos) })
    }

    /// The number at the cursor, times `sign`.
    fn number(&mut self, sign: f64) -> OperandKind {
        let kind = match self.peek() {
            Token::Number(s, false) => s
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .map_or(OperandKind::Other, |x| OperandKind::Literal(Literal::Number(sign * x))),
            _ => OperandKind::Other,
        };
        self.advance();
        kind
    }

    /// The error for a value that a `)` should end but something else follows.
    fn not_closed(&self, context: &str) -> AnalyticsError {
        if other_operator(self.peek()) || comparison(self.peek()).is_some() {
            unsupported(format!("the operator {}{context} inside parentheses", self.peek()))
        } else {
            self.expected("`)`")
        }
    }

    /// Whether the `(` at the cursor opens a group of conditions rather than a value in
    /// parentheses: a value's `)` is followed by what continues a condition.
    fn opens_group(&self) -> bool {
        let mut depth = 0usize;
        let mut i = self.pos;
        loop {
            match &self.at(i).token {
                Token::EOF => return true,
                Token::LParen => depth += 1,
                Token::RParen => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        let (after, next) = (&self.at(i + 1).token, &self.at(i + 2).token);
        let continues = comparison(after).is_some()
            || other_operator(after)
            || [Keyword::IS, Keyword::IN, Keyword::BETWEEN].iter().any(|k| is(after, *k))
            || is(after, Keyword::NOT)
                && [Keyword::IN, Keyword::BETWEEN, Keyword::LIKE].iter().any(|k| is(next, *k));
        !continues
    }

    /// A WHERE clause, in postfix order. Stops at the first token after a complete condition
    /// that is not AND or OR (or a `)` closing a group).
    fn condition(&mut self) -> Result<Vec<Step>, AnalyticsError> {
        let mut steps = Vec::new();
        let mut groups = vec![Group::default()];
        // NOTs read before the next condition.
        let mut nots = 0usize;
        // Open parentheses and NOTs around the cursor.
        let mut level = 0usize;
        loop {
            // A condition: NOTs and opening parentheses, then a comparison.
            if self.eat_keyword(Keyword::NOT) {
                nots += 1;
                level += 1;
                if level > MAX_NESTING {
                    return Err(AnalyticsError::TooDeep { limit: MAX_NESTING });
                }
                continue;
            }
            if self.peek() == &Token::LParen
                && !starts_query(self.peek_nth(1))
                && self.opens_group()
            {
                level += 1;
                if level > MAX_NESTING {
                    return Err(AnalyticsError::TooDeep { limit: MAX_NESTING });
                }
                self.advance();
                groups.push(Group { nots, ..Group::default() });
                nots = 0;
                continue;
            }
            steps.push(Step::Atom(self.atom()?));
            steps.extend(std::iter::repeat_with(|| Step::Not).take(nots));
            level = level.saturating_sub(nots);
            nots = 0;
            let Some(group) = groups.last_mut() else { break };
            group.ands += 1;
            // What follows a condition: AND, OR, `)` closing groups, or the end.
            loop {
                if self.eat_keyword(Keyword::AND) {
                    break;
                }
                let Some(group) = groups.last_mut() else { break };
                close_and(group, &mut steps);
                if self.eat_keyword(Keyword::OR) {
                    break;
                }
                close_or(group, &mut steps);
                let g_nots = group.nots;
                if groups.len() == 1 {
                    // The clause ends here, unless an operator outside the subset follows.
                    let t = self.peek();
                    if other_operator(t) || comparison(t).is_some() {
                        return Err(unsupported(format!("the operator {t} in WHERE")));
                    }
                    return Ok(steps);
                }
                if !self.eat(&Token::RParen) {
                    return Err(self.after_condition());
                }
                groups.pop();
                steps.extend(std::iter::repeat_with(|| Step::Not).take(g_nots));
                level = level.saturating_sub(1 + g_nots);
                let Some(parent) = groups.last_mut() else { break };
                parent.ands += 1;
            }
        }
        // The top level is never popped.
        Err(self.expected("a condition"))
    }

    /// The error for a token that cannot follow a condition inside parentheses.
    fn after_condition(&self) -> AnalyticsError {
        let t = self.peek();
        if other_operator(t) || comparison(t).is_some() {
            unsupported(format!("the operator {t} in WHERE"))
        } else {
            self.expected("AND, OR or `)`")
        }
    }

    /// One condition on a column: a comparison, BETWEEN, IN or IS NULL.
    fn atom(&mut self) -> Result<Atom, AnalyticsError> {
        const WHERE: &str = " in WHERE";
        let operand = self.operand(WHERE)?;
        if let Some(op) = comparison(self.peek()) {
            self.advance();
            let right = self.operand(WHERE)?;
            return Ok(Atom::Compare { left: operand, op, right });
        }
        let negated = is(self.peek(), Keyword::NOT)
            && (is(self.peek_nth(1), Keyword::BETWEEN) || is(self.peek_nth(1), Keyword::IN));
        if negated {
            self.advance();
        }
        match self.peek() {
            t if is(t, Keyword::BETWEEN) => {
                self.advance();
                let low = self.operand(WHERE)?;
                if !self.eat_keyword(Keyword::AND) {
                    return Err(self.expected("AND in BETWEEN"));
                }
                let high = self.operand(WHERE)?;
                Ok(Atom::Between { operand, negated, low, high })
            }
            t if is(t, Keyword::IN) => {
                self.advance();
                if self.peek() != &Token::LParen {
                    return Err(unsupported(format!("IN {}", self.render(self.pos, self.pos + 1))));
                }
                if starts_query(self.peek_nth(1)) {
                    return Err(unsupported("a subquery"));
                }
                self.advance();
                let mut values = Vec::new();
                loop {
                    values.push(self.operand(" in an IN list")?);
                    if !self.eat(&Token::Comma) {
                        break;
                    }
                }
                if !self.eat(&Token::RParen) {
                    return Err(self.not_closed(" in an IN list"));
                }
                Ok(Atom::In { operand, negated, values })
            }
            t if is(t, Keyword::IS) => {
                self.advance();
                let negated = self.eat_keyword(Keyword::NOT);
                if self.eat_keyword(Keyword::NULL) {
                    return Ok(Atom::IsNull { operand, negated });
                }
                let not = if negated { "NOT " } else { "" };
                Err(unsupported(format!("IS {not}{} (only IS [NOT] NULL)", self.peek())))
            }
            t if other_operator(t) => Err(unsupported(format!("the operator {t} in WHERE"))),
            t if is(t, Keyword::NOT) && other_operator(self.peek_nth(1)) => {
                Err(unsupported(format!("the operator NOT {} in WHERE", self.peek_nth(1))))
            }
            _ => Err(unsupported(format!(
                "the condition {} in WHERE (compare a column with a literal)",
                operand.text
            ))),
        }
    }
}

/// Ends the current AND chain of `group`.
fn close_and(group: &mut Group, steps: &mut Vec<Step>) {
    if group.ands > 1 {
        steps.push(Step::And(group.ands));
    }
    if group.ands > 0 {
        group.ors += 1;
    }
    group.ands = 0;
}

/// Ends the OR chain of `group` (its AND chain already ended).
fn close_or(group: &mut Group, steps: &mut Vec<Step>) {
    if group.ors > 1 {
        steps.push(Step::Or(group.ors));
    }
}
