//! Label selectors in Calico's expression language — `k == 'v'`, `k != 'v'`,
//! `k in {'a', 'b'}`, `k not in {...}`, `has(k)`, `!has(k)`, `k contains 's'`,
//! `k starts with 's'`, `k ends with 's'`, `all()`, `!`, `&&`, `||` and parentheses — and
//! Kubernetes `LabelSelector`s converted into it (as Calico converts them), evaluated
//! against a set of labels. [`parse`] reads the text form; `Display` writes it back.
//!
//! Semantics as Calico's: `!=` and `not in` match a missing label; `==`, `in` and the
//! string operators need the label; an empty selector is `all()`.

use std::collections::BTreeSet;
use std::fmt;

/// A selector expression.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Selector {
    All,
    Has(String),
    Eq(String, String),
    Ne(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Contains(String, String),
    StartsWith(String, String),
    EndsWith(String, String),
    Not(Box<Selector>),
    And(Vec<Selector>),
    Or(Vec<Selector>),
}

impl Selector {
    /// The conjunction of `terms` (`all()` when there is none).
    pub fn and(mut terms: Vec<Selector>) -> Selector {
        terms.retain(|t| *t != Selector::All);
        match terms.len() {
            0 => Selector::All,
            1 => terms.pop().unwrap_or(Selector::All),
            _ => Selector::And(terms),
        }
    }

    /// Whether labels (looked up by `get`) match.
    pub fn matches<'a>(&self, get: &impl Fn(&str) -> Option<&'a str>) -> bool {
        match self {
            Selector::All => true,
            Selector::Has(k) => get(k).is_some(),
            Selector::Eq(k, v) => get(k) == Some(v.as_str()),
            Selector::Ne(k, v) => get(k) != Some(v.as_str()),
            Selector::In(k, vs) => get(k).is_some_and(|x| vs.contains(x)),
            Selector::NotIn(k, vs) => !get(k).is_some_and(|x| vs.contains(x)),
            Selector::Contains(k, s) => get(k).is_some_and(|x| x.contains(s.as_str())),
            Selector::StartsWith(k, s) => get(k).is_some_and(|x| x.starts_with(s.as_str())),
            Selector::EndsWith(k, s) => get(k).is_some_and(|x| x.ends_with(s.as_str())),
            Selector::Not(e) => !e.matches(get),
            Selector::And(es) => es.iter().all(|e| e.matches(get)),
            Selector::Or(es) => es.iter().any(|e| e.matches(get)),
        }
    }

    /// Every label key the selector reads.
    pub fn keys(&self, out: &mut BTreeSet<String>) {
        match self {
            Selector::All => {}
            Selector::Has(k)
            | Selector::Eq(k, _)
            | Selector::Ne(k, _)
            | Selector::In(k, _)
            | Selector::NotIn(k, _)
            | Selector::Contains(k, _)
            | Selector::StartsWith(k, _)
            | Selector::EndsWith(k, _) => {
                out.insert(k.clone());
            }
            Selector::Not(e) => e.keys(out),
            Selector::And(es) | Selector::Or(es) => es.iter().for_each(|e| e.keys(out)),
        }
    }
}

fn quoted(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    if s.contains('\'') { write!(f, "\"{s}\"") } else { write!(f, "'{s}'") }
}

fn set(f: &mut fmt::Formatter<'_>, vs: &BTreeSet<String>) -> fmt::Result {
    f.write_str("{")?;
    for (i, v) in vs.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        quoted(f, v)?;
    }
    f.write_str("}")
}

impl fmt::Display for Selector {
    /// Calico's syntax; compound operands are parenthesised.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let operand = |f: &mut fmt::Formatter<'_>, e: &Selector| match e {
            Selector::And(_) | Selector::Or(_) => write!(f, "({e})"),
            _ => write!(f, "{e}"),
        };
        match self {
            Selector::All => f.write_str("all()"),
            Selector::Has(k) => write!(f, "has({k})"),
            Selector::Eq(k, v) => {
                write!(f, "{k} == ")?;
                quoted(f, v)
            }
            Selector::Ne(k, v) => {
                write!(f, "{k} != ")?;
                quoted(f, v)
            }
            Selector::In(k, vs) => {
                write!(f, "{k} in ")?;
                set(f, vs)
            }
            Selector::NotIn(k, vs) => {
                write!(f, "{k} not in ")?;
                set(f, vs)
            }
            Selector::Contains(k, s) => {
                write!(f, "{k} contains ")?;
                quoted(f, s)
            }
            Selector::StartsWith(k, s) => {
                write!(f, "{k} starts with ")?;
                quoted(f, s)
            }
            Selector::EndsWith(k, s) => {
                write!(f, "{k} ends with ")?;
                quoted(f, s)
            }
            Selector::Not(e) => {
                f.write_str("!")?;
                match **e {
                    Selector::All | Selector::Has(_) | Selector::Not(_) => write!(f, "{e}"),
                    _ => write!(f, "({e})"),
                }
            }
            Selector::And(es) | Selector::Or(es) => {
                let op = if matches!(self, Selector::And(_)) { " && " } else { " || " };
                for (i, e) in es.iter().enumerate() {
                    if i > 0 {
                        f.write_str(op)?;
                    }
                    operand(f, e)?;
                }
                Ok(())
            }
        }
    }
}

/// Why a selector's text does not parse: the byte offset and what was wrong there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at character {at}: {what}")]
pub struct SelectorError {
    pub at: usize,
    pub what: String,
}

/// Selectors nest at most this deep (parentheses and `!`), so hostile text cannot
/// exhaust the stack.
const MAX_DEPTH: usize = 64;

/// Parses Calico's selector syntax; `""` is `all()`.
pub fn parse(text: &str) -> Result<Selector, SelectorError> {
    let mut p = Parser { s: text.as_bytes(), at: 0, depth: 0 };
    p.space();
    if p.at == p.s.len() {
        return Ok(Selector::All);
    }
    let e = p.or()?;
    p.space();
    if p.at != p.s.len() {
        return Err(p.err("unexpected text after the expression"));
    }
    Ok(e)
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
    depth: usize,
}

impl Parser<'_> {
    fn err(&self, what: impl Into<String>) -> SelectorError {
        SelectorError { at: self.at, what: what.into() }
    }
    fn space(&mut self) {
        while self.s.get(self.at).is_some_and(|c| c.is_ascii_whitespace()) {
            self.at += 1;
        }
    }
    /// Consumes `tok` (after spaces) when it is next.
    fn eat(&mut self, tok: &str) -> bool {
        self.space();
        if self.s[self.at..].starts_with(tok.as_bytes()) {
            self.at += tok.len();
            true
        } else {
            false
        }
    }
    /// Consumes the keyword `word` when it is next and not the start of a longer word.
    fn keyword(&mut self, word: &str) -> bool {
        self.space();
        let end = self.at + word.len();
        if self.s[self.at..].starts_with(word.as_bytes()) && !self.s.get(end).is_some_and(|c| is_key_char(*c)) {
            self.at = end;
            true
        } else {
            false
        }
    }
    fn or(&mut self) -> Result<Selector, SelectorError> {
        let mut terms = vec![self.and()?];
        while self.eat("||") {
            terms.push(self.and()?);
        }
        Ok(if terms.len() == 1 { terms.remove(0) } else { Selector::Or(terms) })
    }
    fn and(&mut self) -> Result<Selector, SelectorError> {
        let mut terms = vec![self.unary()?];
        while self.eat("&&") {
            terms.push(self.unary()?);
        }
        Ok(if terms.len() == 1 { terms.remove(0) } else { Selector::And(terms) })
    }
    fn unary(&mut self) -> Result<Selector, SelectorError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err(format!("nested more than {MAX_DEPTH} deep")));
        }
        let e = if self.eat("!") {
            Selector::Not(Box::new(self.unary()?))
        } else if self.eat("(") {
            let e = self.or()?;
            if !self.eat(")") {
                return Err(self.err("expected ')'"));
            }
            e
        } else {
            self.term()?
        };
        self.depth -= 1;
        Ok(e)
    }
    fn term(&mut self) -> Result<Selector, SelectorError> {
        self.space();
        if self.keyword("all") {
            return self.call_end().map(|_| Selector::All);
        }
        if self.keyword("global") {
            return Err(self.err("global() is not supported (no host endpoints or global network sets)"));
        }
        if self.keyword("has") {
            if !self.eat("(") {
                return Err(self.err("expected '(' after has"));
            }
            let k = self.key()?;
            if !self.eat(")") {
                return Err(self.err("expected ')'"));
            }
            return Ok(Selector::Has(k));
        }
        let k = self.key()?;
        if self.eat("==") {
            return Ok(Selector::Eq(k, self.string()?));
        }
        if self.eat("!=") {
            return Ok(Selector::Ne(k, self.string()?));
        }
        if self.keyword("in") {
            return Ok(Selector::In(k, self.values()?));
        }
        if self.keyword("not") {
            if !self.keyword("in") {
                return Err(self.err("expected 'in' after 'not'"));
            }
            return Ok(Selector::NotIn(k, self.values()?));
        }
        if self.keyword("contains") {
            return Ok(Selector::Contains(k, self.string()?));
        }
        for (first, make) in [("starts", Selector::StartsWith as fn(_, _) -> _), ("ends", Selector::EndsWith)] {
            if self.keyword(first) {
                if !self.keyword("with") {
                    return Err(self.err(format!("expected 'with' after '{first}'")));
                }
                return Ok(make(k, self.string()?));
            }
        }
        Err(self.err(format!(
            "expected an operator after label '{k}' (==, !=, in, not in, contains, starts with, ends with)"
        )))
    }
    fn call_end(&mut self) -> Result<(), SelectorError> {
        if self.eat("(") && self.eat(")") { Ok(()) } else { Err(self.err("expected '()'")) }
    }
    fn key(&mut self) -> Result<String, SelectorError> {
        self.space();
        let start = self.at;
        while self.s.get(self.at).is_some_and(|c| is_key_char(*c)) {
            self.at += 1;
        }
        if start == self.at {
            return Err(self.err("expected a label key"));
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.at]).into_owned())
    }
    fn string(&mut self) -> Result<String, SelectorError> {
        self.space();
        let Some(&q) = self.s.get(self.at).filter(|c| **c == b'\'' || **c == b'"') else {
            return Err(self.err("expected a quoted string"));
        };
        let start = self.at + 1;
        let Some(len) = self.s[start..].iter().position(|c| *c == q) else {
            return Err(self.err("unterminated string"));
        };
        self.at = start + len + 1;
        std::str::from_utf8(&self.s[start..start + len])
            .map(str::to_owned)
            .map_err(|_| SelectorError { at: start, what: "a string that is not UTF-8".into() })
    }
    fn values(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        if !self.eat("{") {
            return Err(self.err("expected '{'"));
        }
        let mut out = BTreeSet::new();
        if self.eat("}") {
            return Ok(out);
        }
        loop {
            out.insert(self.string()?);
            if self.eat("}") {
                return Ok(out);
            }
            if !self.eat(",") {
                return Err(self.err("expected ',' or '}'"));
            }
        }
    }
}

/// Characters of a label key (a DNS prefix, '/', a name).
fn is_key_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'/' | b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn eval(sel: &str, labels: &[(&str, &str)]) -> bool {
        let m: BTreeMap<&str, &str> = labels.iter().copied().collect();
        parse(sel).unwrap().matches(&|k: &str| m.get(k).copied())
    }

    #[test]
    fn operators_as_calico_defines_them() {
        let l = [("app", "web"), ("tier", "front-end"), ("env", "prod")];
        assert!(eval("", &l));
        assert!(eval("all()", &l));
        assert!(eval("app == 'web'", &l));
        assert!(!eval("app == 'db'", &l));
        assert!(eval("app != 'db'", &l));
        assert!(eval("missing != 'x'", &l), "!= matches a missing label");
        assert!(eval("app in {'web', \"db\"}", &l));
        assert!(!eval("missing in {'x'}", &l));
        assert!(eval("missing not in {'x'}", &l), "not in matches a missing label");
        assert!(!eval("app not in {'web'}", &l));
        assert!(eval("has(tier) && !has(missing)", &l));
        assert!(eval("tier contains 'end'", &l));
        assert!(eval("tier starts with 'front'", &l));
        assert!(eval("tier ends with '-end'", &l));
        assert!(eval("app == 'db' || env == 'prod'", &l));
        assert!(!eval("!(app == 'web' && env == 'prod')", &l));
        assert!(eval("app == 'db' || env == 'prod' && tier == 'front-end'", &l), "&& binds tighter than ||");
        assert!(!eval("(app == 'db' || env == 'prod') && tier == 'back'", &l));
        assert!(eval("projectcalico.org/namespace == 'x'", &[("projectcalico.org/namespace", "x")]));
    }

    #[test]
    fn display_parses_back_to_the_same_selector() {
        for s in [
            "all()",
            "a == 'x' && (b != 'y' || !has(c))",
            "k in {'a', 'b'} || k not in {}",
            "!(a == 'x' || b == 'y')",
            "t starts with 'p' && t ends with \"it's\"",
            "!!has(a)",
        ] {
            let e = parse(s).unwrap();
            assert_eq!(parse(&e.to_string()).unwrap(), e, "{s} -> {e}");
        }
    }

    #[test]
    fn errors_name_the_place() {
        for (s, at) in [
            ("app = 'x'", 4),
            ("app == x", 7),
            ("has(app", 7),
            ("app in {'a' 'b'}", 12),
            ("(a == 'x'", 9),
            ("a == 'x' b", 9),
            ("global()", 6),
            ("app not 'x'", 8),
            ("a == 'x", 5),
        ] {
            let e = parse(s).unwrap_err();
            assert_eq!(e.at, at, "{s}: {e}");
        }
        let deep = "!".repeat(200) + "all()";
        assert!(parse(&deep).unwrap_err().what.contains("nested"));
    }
}
