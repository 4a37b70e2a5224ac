//! The subset of OData v2 query options Exact Online accepts (spec §4 "Query options"): a `$filter`
//! parser with type checking against the endpoint's fields, and `$select` / `$orderby` parsing.

use std::cmp::Ordering;
use std::str::FromStr;

use chrono::{NaiveDate, NaiveDateTime};
use rust_decimal::Decimal;
use serde_json::{Map, Value};
use uuid::Uuid;

/// Wire types of entity fields, as Exact's reference names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edm {
    Guid,
    String,
    Int16,
    Int32,
    Int64,
    Double,
    Boolean,
    DateTime,
    /// A navigation property (only `PurchaseEntryLines`): not filterable, expandable.
    Nav,
}

impl Edm {
    fn name(self) -> &'static str {
        match self {
            Edm::Guid => "Edm.Guid",
            Edm::String => "Edm.String",
            Edm::Int16 => "Edm.Int16",
            Edm::Int32 => "Edm.Int32",
            Edm::Int64 => "Edm.Int64",
            Edm::Double => "Edm.Double",
            Edm::Boolean => "Edm.Boolean",
            Edm::DateTime => "Edm.DateTime",
            Edm::Nav => "navigation property",
        }
    }

    fn is_numeric(self) -> bool {
        matches!(self, Edm::Int16 | Edm::Int32 | Edm::Int64 | Edm::Double)
    }
}

/// A field list: name and wire type.
pub type Fields = &'static [(&'static str, Edm)];

pub fn field_type(fields: Fields, name: &str) -> Option<Edm> {
    fields.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    Null,
    Bool(bool),
    Str(String),
    Num(Decimal),
    Guid(Uuid),
    /// Epoch milliseconds. `datetime'…'` literals carry no zone; the simulator reads them as UTC, like
    /// it writes `/Date(ms)/` values (spec §6 question 6 [U]).
    DateTime(i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    Trim,
    ToLower,
    ToUpper,
    SubstringOf,
    StartsWith,
    EndsWith,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Field(String),
    Lit(Lit),
    Call(Func, Vec<Expr>),
    Cmp(CmpOp, Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Lit(Lit),
    Open,
    Close,
    Comma,
}

fn tokenize(src: &str) -> Result<Vec<(usize, Tok)>, String> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        match c {
            '(' => {
                out.push((start, Tok::Open));
                i += 1;
            }
            ')' => {
                out.push((start, Tok::Close));
                i += 1;
            }
            ',' => {
                out.push((start, Tok::Comma));
                i += 1;
            }
            '\'' => {
                let (s, next) = quoted(&chars, i)?;
                out.push((start, Tok::Lit(Lit::Str(s))));
                i = next;
            }
            c if c.is_ascii_digit() || c == '-' || c == '.' => {
                let mut j = i + 1;
                while j < chars.len() && (chars[j].is_ascii_digit() || chars[j] == '.') {
                    j += 1;
                }
                let text: String = chars[i..j].iter().collect();
                // Type suffixes: L (Int64), M (Decimal), D (Double), F (Single).
                if j < chars.len()
                    && matches!(chars[j], 'L' | 'l' | 'M' | 'm' | 'D' | 'd' | 'F' | 'f')
                {
                    j += 1;
                }
                let n = Decimal::from_str(&text)
                    .map_err(|_| format!("Invalid number '{text}' at position {start}."))?;
                out.push((start, Tok::Lit(Lit::Num(n))));
                i = j;
            }
            c if c.is_alphabetic() || c == '_' => {
                let mut j = i + 1;
                while j < chars.len()
                    && (chars[j].is_alphanumeric() || chars[j] == '_' || chars[j] == '/')
                {
                    j += 1;
                }
                let word: String = chars[i..j].iter().collect();
                if j < chars.len() && chars[j] == '\'' {
                    let (s, next) = quoted(&chars, j)?;
                    i = next;
                    let lit = match word.to_ascii_lowercase().as_str() {
                        "guid" => Lit::Guid(Uuid::parse_str(&s).map_err(|_| {
                            format!("Invalid guid literal guid'{s}' at position {start}.")
                        })?),
                        "datetime" => Lit::DateTime(parse_datetime(&s).ok_or_else(|| {
                            format!("Invalid datetime literal datetime'{s}' at position {start}.")
                        })?),
                        "x" | "binary" | "time" | "datetimeoffset" => {
                            return Err(format!(
                                "Literal type '{word}' is not supported by this endpoint (position {start})."
                            ));
                        }
                        _ => return Err(format!("Syntax error at position {start} in '{src}'.")),
                    };
                    out.push((start, Tok::Lit(lit)));
                } else {
                    let tok = match word.as_str() {
                        "true" => Tok::Lit(Lit::Bool(true)),
                        "false" => Tok::Lit(Lit::Bool(false)),
                        "null" => Tok::Lit(Lit::Null),
                        _ => Tok::Ident(word),
                    };
                    out.push((start, tok));
                    i = j;
                }
            }
            _ => {
                return Err(format!(
                    "Syntax error: unexpected '{c}' at position {start} in '{src}'."
                ));
            }
        }
    }
    Ok(out)
}

/// Reads a `'…'` literal starting at `open`; `''` inside is an escaped quote.
fn quoted(chars: &[char], open: usize) -> Result<(String, usize), String> {
    let mut s = String::new();
    let mut i = open + 1;
    loop {
        match chars.get(i) {
            None => return Err(format!("Unterminated string literal at position {open}.")),
            Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                s.push('\'');
                i += 2;
            }
            Some('\'') => return Ok((s, i + 1)),
            Some(c) => {
                s.push(*c);
                i += 1;
            }
        }
    }
}

/// Accepts the forms clients send: `2024-01-31T00:00:00`, with fractions, with a trailing `Z`, or a
/// plain date.
pub fn parse_datetime(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(dt) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(dt.timestamp_millis());
    }
    let bare = s.trim_end_matches('Z');
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S",
    ] {
        if let Ok(dt) = NaiveDateTime::parse_from_str(bare, fmt) {
            return Some(dt.and_utc().timestamp_millis());
        }
    }
    NaiveDate::parse_from_str(bare, "%Y-%m-%d").ok().map(|d| {
        d.and_hms_opt(0, 0, 0)
            .expect("midnight exists")
            .and_utc()
            .timestamp_millis()
    })
}

/// `/Date(1641034800000)/`, optionally with an offset suffix such as `+0200` (spec §4).
pub fn parse_json_date(s: &str) -> Option<i64> {
    let inner = s.strip_prefix("/Date(")?.strip_suffix(")/")?;
    let digits_end = inner
        .char_indices()
        .skip(1)
        .find(|(_, c)| *c == '+' || *c == '-')
        .map(|(i, _)| i)
        .unwrap_or(inner.len());
    inner[..digits_end].parse().ok()
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    pos: usize,
    src_len: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(_, t)| t)
    }

    fn at(&self) -> usize {
        self.toks
            .get(self.pos)
            .map(|(p, _)| *p)
            .unwrap_or(self.src_len)
    }

    fn keyword(&mut self, kw: &str) -> bool {
        if let Some(Tok::Ident(w)) = self.peek()
            && w == kw
        {
            self.pos += 1;
            return true;
        }
        false
    }

    fn or_expr(&mut self) -> Result<Expr, String> {
        let mut left = self.and_expr()?;
        while self.keyword("or") {
            left = Expr::Or(Box::new(left), Box::new(self.and_expr()?));
        }
        Ok(left)
    }

    fn and_expr(&mut self) -> Result<Expr, String> {
        let mut left = self.not_expr()?;
        while self.keyword("and") {
            left = Expr::And(Box::new(left), Box::new(self.not_expr()?));
        }
        Ok(left)
    }

    fn not_expr(&mut self) -> Result<Expr, String> {
        if self.keyword("not") {
            return Ok(Expr::Not(Box::new(self.not_expr()?)));
        }
        self.cmp_expr()
    }

    fn cmp_expr(&mut self) -> Result<Expr, String> {
        let left = self.primary()?;
        let op = match self.peek() {
            Some(Tok::Ident(w)) => match w.as_str() {
                "eq" => Some(CmpOp::Eq),
                "ne" => Some(CmpOp::Ne),
                "gt" => Some(CmpOp::Gt),
                "ge" => Some(CmpOp::Ge),
                "lt" => Some(CmpOp::Lt),
                "le" => Some(CmpOp::Le),
                _ => None,
            },
            _ => None,
        };
        match op {
            Some(op) => {
                self.pos += 1;
                let right = self.primary()?;
                Ok(Expr::Cmp(op, Box::new(left), Box::new(right)))
            }
            None => Ok(left),
        }
    }

    fn primary(&mut self) -> Result<Expr, String> {
        let at = self.at();
        let Some((_, tok)) = self.toks.get(self.pos).cloned() else {
            return Err(format!("Expression expected at position {at}."));
        };
        self.pos += 1;
        match tok {
            Tok::Open => {
                let e = self.or_expr()?;
                match self.peek() {
                    Some(Tok::Close) => {
                        self.pos += 1;
                        Ok(e)
                    }
                    _ => Err(format!(
                        "')' or operator expected at position {}.",
                        self.at()
                    )),
                }
            }
            Tok::Lit(l) => Ok(Expr::Lit(l)),
            Tok::Ident(name) => {
                if self.peek() == Some(&Tok::Open) {
                    let func = match name.as_str() {
                        "trim" => Func::Trim,
                        "tolower" => Func::ToLower,
                        "toupper" => Func::ToUpper,
                        "substringof" => Func::SubstringOf,
                        "startswith" => Func::StartsWith,
                        "endswith" => Func::EndsWith,
                        _ => return Err(format!("Unknown function '{name}' at position {at}.")),
                    };
                    self.pos += 1;
                    let mut args = vec![self.or_expr()?];
                    loop {
                        match self.peek() {
                            Some(Tok::Comma) => {
                                self.pos += 1;
                                args.push(self.or_expr()?);
                            }
                            Some(Tok::Close) => {
                                self.pos += 1;
                                break;
                            }
                            _ => return Err(format!("')' expected at position {}.", self.at())),
                        }
                    }
                    Ok(Expr::Call(func, args))
                } else if matches!(
                    name.as_str(),
                    "eq" | "ne" | "gt" | "ge" | "lt" | "le" | "and" | "or"
                ) {
                    Err(format!(
                        "Expression expected at position {at}, found '{name}'."
                    ))
                } else {
                    Ok(Expr::Field(name))
                }
            }
            Tok::Close | Tok::Comma => Err(format!("Expression expected at position {at}.")),
        }
    }
}

/// The static type of an expression, for checking before any row is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Edm(Edm),
    Null,
}

/// Parses `$filter` and checks it against the endpoint's fields: unknown fields, navigation paths and
/// incompatible operands fail with a 400-style message, like Exact's OData layer.
pub fn parse_filter(src: &str, fields: Fields) -> Result<Expr, String> {
    let toks = tokenize(src)?;
    let mut p = Parser {
        toks,
        pos: 0,
        src_len: src.len(),
    };
    let expr = p.or_expr()?;
    if p.pos != p.toks.len() {
        return Err(format!("Syntax error at position {} in '{src}'.", p.at()));
    }
    match type_of(&expr, fields)? {
        Ty::Edm(Edm::Boolean) => Ok(expr),
        _ => Err(format!(
            "The $filter expression '{src}' must evaluate to a Boolean."
        )),
    }
}

fn type_of(e: &Expr, fields: Fields) -> Result<Ty, String> {
    Ok(match e {
        Expr::Field(name) => {
            if name.contains('/') {
                // Spec §4: no filtering on navigation properties.
                return Err(format!(
                    "Filtering on navigation properties is not supported: '{name}'."
                ));
            }
            match field_type(fields, name) {
                Some(Edm::Nav) => {
                    return Err(format!(
                        "Filtering on navigation properties is not supported: '{name}'."
                    ));
                }
                Some(t) => Ty::Edm(t),
                None => {
                    return Err(format!(
                        "No property '{name}' exists in type of this endpoint (in $filter)."
                    ));
                }
            }
        }
        Expr::Lit(l) => match l {
            Lit::Null => Ty::Null,
            Lit::Bool(_) => Ty::Edm(Edm::Boolean),
            Lit::Str(_) => Ty::Edm(Edm::String),
            Lit::Num(_) => Ty::Edm(Edm::Double),
            Lit::Guid(_) => Ty::Edm(Edm::Guid),
            Lit::DateTime(_) => Ty::Edm(Edm::DateTime),
        },
        Expr::Call(f, args) => {
            let want = match f {
                Func::Trim | Func::ToLower | Func::ToUpper => 1,
                _ => 2,
            };
            if args.len() != want {
                return Err(format!("Function {f:?} expects {want} argument(s)."));
            }
            for a in args {
                match type_of(a, fields)? {
                    Ty::Edm(Edm::String) => {}
                    other => {
                        return Err(format!(
                            "Function {f:?} expects Edm.String arguments, got {other:?}."
                        ));
                    }
                }
            }
            match f {
                Func::Trim | Func::ToLower | Func::ToUpper => Ty::Edm(Edm::String),
                _ => Ty::Edm(Edm::Boolean),
            }
        }
        Expr::Cmp(op, l, r) => {
            let (lt, rt) = (type_of(l, fields)?, type_of(r, fields)?);
            let ok = match (lt, rt) {
                (Ty::Null, Ty::Null) => true,
                (Ty::Null, _) | (_, Ty::Null) => matches!(op, CmpOp::Eq | CmpOp::Ne),
                (Ty::Edm(a), Ty::Edm(b)) => {
                    (a.is_numeric() && b.is_numeric())
                        || (a == b && (a != Edm::Boolean || matches!(op, CmpOp::Eq | CmpOp::Ne)))
                }
            };
            if !ok {
                let name = |t: Ty| match t {
                    Ty::Null => "null",
                    Ty::Edm(e) => e.name(),
                };
                return Err(format!(
                    "Operator '{}' incompatible with operand types '{}' and '{}'.",
                    format!("{op:?}").to_lowercase(),
                    name(lt),
                    name(rt)
                ));
            }
            Ty::Edm(Edm::Boolean)
        }
        Expr::And(l, r) | Expr::Or(l, r) => {
            for side in [l, r] {
                if type_of(side, fields)? != Ty::Edm(Edm::Boolean) {
                    return Err("Operands of 'and'/'or' must be Boolean.".into());
                }
            }
            Ty::Edm(Edm::Boolean)
        }
        Expr::Not(x) => {
            if type_of(x, fields)? != Ty::Edm(Edm::Boolean) {
                return Err("Operand of 'not' must be Boolean.".into());
            }
            Ty::Edm(Edm::Boolean)
        }
    })
}

/// A field's value read from a stored row, typed by the schema.
pub fn read_value(row: &Map<String, Value>, name: &str, ty: Edm) -> Lit {
    let v = row.get(name).unwrap_or(&Value::Null);
    match (ty, v) {
        (_, Value::Null) => Lit::Null,
        (Edm::Guid, Value::String(s)) => Uuid::parse_str(s).map(Lit::Guid).unwrap_or(Lit::Null),
        (Edm::DateTime, Value::String(s)) => {
            parse_json_date(s).map(Lit::DateTime).unwrap_or(Lit::Null)
        }
        (_, Value::String(s)) => Lit::Str(s.clone()),
        (_, Value::Bool(b)) => Lit::Bool(*b),
        (_, Value::Number(n)) => json_decimal(n).map(Lit::Num).unwrap_or(Lit::Null),
        _ => Lit::Null,
    }
}

/// Decimal from a JSON number without going through f64 arithmetic.
pub fn json_decimal(n: &serde_json::Number) -> Option<Decimal> {
    let s = n.to_string();
    Decimal::from_str(&s)
        .or_else(|_| Decimal::from_scientific(&s))
        .ok()
}

fn eval_value(e: &Expr, row: &Map<String, Value>, fields: Fields) -> Lit {
    match e {
        Expr::Field(name) => {
            let ty = field_type(fields, name).unwrap_or(Edm::String);
            read_value(row, name, ty)
        }
        Expr::Lit(l) => l.clone(),
        Expr::Call(f, args) => {
            let strs: Vec<Option<String>> = args
                .iter()
                .map(|a| match eval_value(a, row, fields) {
                    Lit::Str(s) => Some(s),
                    _ => None,
                })
                .collect();
            match f {
                Func::Trim => strs[0]
                    .as_ref()
                    .map(|s| Lit::Str(s.trim().to_string()))
                    .unwrap_or(Lit::Null),
                Func::ToLower => strs[0]
                    .as_ref()
                    .map(|s| Lit::Str(s.to_lowercase()))
                    .unwrap_or(Lit::Null),
                Func::ToUpper => strs[0]
                    .as_ref()
                    .map(|s| Lit::Str(s.to_uppercase()))
                    .unwrap_or(Lit::Null),
                Func::SubstringOf | Func::StartsWith | Func::EndsWith => {
                    let (Some(a), Some(b)) = (&strs[0], &strs[1]) else {
                        return Lit::Bool(false);
                    };
                    let (a, b) = (a.to_lowercase(), b.to_lowercase());
                    Lit::Bool(match f {
                        // substringof(needle, haystack)
                        Func::SubstringOf => b.contains(&a),
                        Func::StartsWith => a.starts_with(&b),
                        _ => a.ends_with(&b),
                    })
                }
            }
        }
        other => Lit::Bool(eval(other, row, fields)),
    }
}

/// Whether a row matches. String comparisons ignore case: Exact runs on SQL Server with a
/// case-insensitive collation [U: not stated in the sources; a client must not rely on either].
pub fn eval(e: &Expr, row: &Map<String, Value>, fields: Fields) -> bool {
    match e {
        Expr::And(l, r) => eval(l, row, fields) && eval(r, row, fields),
        Expr::Or(l, r) => eval(l, row, fields) || eval(r, row, fields),
        Expr::Not(x) => !eval(x, row, fields),
        Expr::Cmp(op, l, r) => {
            let (a, b) = (eval_value(l, row, fields), eval_value(r, row, fields));
            match (&a, &b) {
                (Lit::Null, Lit::Null) => matches!(op, CmpOp::Eq | CmpOp::Le | CmpOp::Ge),
                (Lit::Null, _) | (_, Lit::Null) => *op == CmpOp::Ne,
                _ => match compare(&a, &b) {
                    Some(ord) => match op {
                        CmpOp::Eq => ord == Ordering::Equal,
                        CmpOp::Ne => ord != Ordering::Equal,
                        CmpOp::Gt => ord == Ordering::Greater,
                        CmpOp::Ge => ord != Ordering::Less,
                        CmpOp::Lt => ord == Ordering::Less,
                        CmpOp::Le => ord != Ordering::Greater,
                    },
                    None => false,
                },
            }
        }
        Expr::Call(..) => matches!(eval_value(e, row, fields), Lit::Bool(true)),
        Expr::Lit(Lit::Bool(b)) => *b,
        _ => false,
    }
}

pub fn compare(a: &Lit, b: &Lit) -> Option<Ordering> {
    Some(match (a, b) {
        (Lit::Str(x), Lit::Str(y)) => x.to_lowercase().cmp(&y.to_lowercase()),
        (Lit::Num(x), Lit::Num(y)) => x.cmp(y),
        (Lit::Guid(x), Lit::Guid(y)) => x.cmp(y),
        (Lit::DateTime(x), Lit::DateTime(y)) => x.cmp(y),
        (Lit::Bool(x), Lit::Bool(y)) => x.cmp(y),
        (Lit::Null, Lit::Null) => Ordering::Equal,
        (Lit::Null, _) => Ordering::Less,
        (_, Lit::Null) => Ordering::Greater,
        _ => return None,
    })
}

/// `$select`: top-level names and `PurchaseEntryLines/Field` paths.
#[derive(Debug, Clone, Default)]
pub struct Select {
    pub all: bool,
    pub top: Vec<String>,
    pub nested: Vec<String>,
}

pub fn parse_select(
    src: Option<&str>,
    fields: Fields,
    nested_fields: Option<Fields>,
) -> Result<Select, String> {
    let Some(src) = src.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(Select {
            all: true,
            ..Default::default()
        });
    };
    let mut sel = Select::default();
    for item in src.split(',').map(str::trim) {
        if item == "*" {
            sel.all = true;
            continue;
        }
        match item.split_once('/') {
            Some((nav, sub)) => {
                let (Some(Edm::Nav), Some(nf)) = (field_type(fields, nav), nested_fields) else {
                    return Err(format!(
                        "No navigation property '{nav}' exists (in $select)."
                    ));
                };
                if sub != "*" && field_type(nf, sub).is_none() {
                    return Err(format!(
                        "No property '{sub}' exists in type of '{nav}' (in $select)."
                    ));
                }
                if !sel.top.iter().any(|t| t == nav) {
                    sel.top.push(nav.to_string());
                }
                sel.nested.push(sub.to_string());
            }
            None => {
                if field_type(fields, item).is_none() {
                    return Err(format!(
                        "No property '{item}' exists in type of this endpoint (in $select)."
                    ));
                }
                sel.top.push(item.to_string());
            }
        }
    }
    Ok(sel)
}

/// `$orderby=Field [asc|desc], …`.
pub fn parse_orderby(src: &str, fields: Fields) -> Result<Vec<(String, bool)>, String> {
    let mut out = Vec::new();
    for part in src.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let mut words = part.split_whitespace();
        let name = words.next().unwrap_or_default();
        let desc = match words.next() {
            None | Some("asc") => false,
            Some("desc") => true,
            Some(other) => return Err(format!("Invalid $orderby direction '{other}'.")),
        };
        match field_type(fields, name) {
            Some(Edm::Nav) | None => {
                return Err(format!("No property '{name}' exists (in $orderby)."));
            }
            Some(_) => out.push((name.to_string(), desc)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const F: Fields = &[
        ("ID", Edm::Guid),
        ("Code", Edm::String),
        ("Name", Edm::String),
        ("IsSupplier", Edm::Boolean),
        ("Timestamp", Edm::Int64),
        ("Modified", Edm::DateTime),
        ("PurchaseEntryLines", Edm::Nav),
    ];

    fn row() -> Map<String, Value> {
        json!({"ID":"1b0b1d8e-5d3a-4e0a-9c1e-0d2f3a4b5c6d","Code":"                25","Name":"O'Brien",
               "IsSupplier":true,"Timestamp":1234,"Modified":"/Date(1700000000000)/"})
        .as_object()
        .unwrap()
        .clone()
    }

    fn m(src: &str) -> bool {
        eval(&parse_filter(src, F).unwrap(), &row(), F)
    }

    #[test]
    fn filters_evaluate() {
        assert!(m("trim(Code) eq '25'"));
        assert!(!m("Code eq '25'"));
        assert!(m("Name eq 'O''Brien' and IsSupplier eq true"));
        assert!(m(
            "(Name eq 'x' or Timestamp gt 1233L) and ID eq guid'1B0B1D8E-5D3A-4E0A-9C1E-0D2F3A4B5C6D'"
        ));
        assert!(!m("Timestamp gt 1234L"));
        assert!(m("Modified ge datetime'2023-11-14T00:00:00'"));
        assert!(m("not (IsSupplier eq false)"));
        assert!(m("startswith(Name,'o''b')"));
    }

    #[test]
    fn filters_reject_bad_input() {
        assert!(parse_filter("Nope eq 1", F).unwrap_err().contains("Nope"));
        assert!(
            parse_filter("ID eq 'abc'", F)
                .unwrap_err()
                .contains("incompatible")
        );
        assert!(parse_filter("Name eq 'unterminated", F).is_err());
        assert!(parse_filter("PurchaseEntryLines/AmountFC eq 1", F).is_err());
        assert!(parse_filter("Name eq", F).is_err());
        assert!(parse_filter("Name", F).is_err());
    }

    #[test]
    fn json_dates_parse_with_offsets() {
        assert_eq!(
            parse_json_date("/Date(1641034800000)/"),
            Some(1641034800000)
        );
        assert_eq!(
            parse_json_date("/Date(1641034800000+0200)/"),
            Some(1641034800000)
        );
        assert_eq!(parse_datetime("2026-06-17"), Some(1781654400000));
    }
}
