//! YAML as a tree whose every node knows its line and column, so a field that does not
//! validate is named where it stands in the file. Built from yaml-rust2's event parser
//! (serde's YAML deserializers keep no position for a value that parsed but is wrong).
//! Anchors, aliases and tags are refused: a lab file is plain data.

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A position in the file (1-based line and column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mark {
    pub line: usize,
    pub col: usize,
}

impl Mark {
    fn of(m: &Marker) -> Mark {
        Mark { line: m.line(), col: m.col() + 1 }
    }
}

impl std::fmt::Display for Mark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A scalar's text; `quoted` when it was written in quotes (so `"true"` is text).
    Scalar {
        text: String,
        quoted: bool,
    },
    Seq(Vec<Node>),
    /// Entries in file order: key, the key's mark, value.
    Map(Vec<(String, Mark, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub mark: Mark,
    pub value: Value,
}

/// A syntax error, or YAML that a lab file does not use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub mark: Mark,
    pub problem: String,
}

/// Parses one YAML document (an empty file is an empty mapping).
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    let mut p = Parser::new_from_str(text);
    let mut stack: Vec<(Node, Option<(String, Mark)>)> = Vec::new();
    let mut root: Option<Node> = None;
    loop {
        let (ev, m) =
            p.next_token().map_err(|e| SyntaxError { mark: Mark::of(e.marker()), problem: e.info().into() })?;
        let mark = Mark::of(&m);
        let refuse = |what: &str| Err(SyntaxError { mark, problem: format!("{what} are not used in a lab file") });
        let node = match ev {
            Event::StreamEnd => break,
            Event::DocumentStart if root.is_some() => {
                return Err(SyntaxError { mark, problem: "one document per file".into() });
            }
            Event::Nothing | Event::StreamStart | Event::DocumentStart | Event::DocumentEnd => continue,
            Event::Alias(_) => return refuse("aliases"),
            Event::Scalar(_, _, anchor, _) | Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _)
                if anchor != 0 =>
            {
                return refuse("anchors");
            }
            Event::Scalar(_, _, _, Some(_)) | Event::SequenceStart(_, Some(_)) | Event::MappingStart(_, Some(_)) => {
                return refuse("tags");
            }
            Event::SequenceStart(..) => {
                stack.push((Node { mark, value: Value::Seq(Vec::new()) }, None));
                continue;
            }
            Event::MappingStart(..) => {
                stack.push((Node { mark, value: Value::Map(Vec::new()) }, None));
                continue;
            }
            Event::Scalar(text, style, _, _) => {
                // A scalar where a key is due is that key.
                if let Some((Node { value: Value::Map(_), .. }, pending @ None)) = stack.last_mut() {
                    *pending = Some((text, mark));
                    continue;
                }
                Node { mark, value: Value::Scalar { text, quoted: style != TScalarStyle::Plain } }
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some((n, None)) => n,
                _ => return Err(SyntaxError { mark, problem: "unbalanced collection".into() }),
            },
        };
        match stack.last_mut() {
            None => root = Some(node),
            Some((Node { value: Value::Seq(items), .. }, _)) => items.push(node),
            Some((Node { value: Value::Map(entries), .. }, pending)) => match pending.take() {
                Some((key, key_mark)) => {
                    if entries.iter().any(|(k, _, _)| *k == key) {
                        return Err(SyntaxError { mark: key_mark, problem: format!("'{key}' is given twice") });
                    }
                    entries.push((key, key_mark, node));
                }
                None => return Err(SyntaxError { mark: node.mark, problem: "a key must be a plain text".into() }),
            },
            Some(_) => unreachable!("only collections are pushed"),
        }
    }
    Ok(root.unwrap_or(Node { mark: Mark { line: 1, col: 1 }, value: Value::Map(Vec::new()) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_where_the_text_is() {
        let n = parse("name: a\ntopology:\n  nodes:\n    n1: {kind: ucanal}\n    n2:\n      - x\n").unwrap();
        let Value::Map(top) = &n.value else { panic!() };
        assert_eq!(top[0].0, "name");
        assert_eq!(top[0].1, Mark { line: 1, col: 1 });
        assert_eq!(top[0].2.mark, Mark { line: 1, col: 7 });
        let Value::Map(t) = &top[1].2.value else { panic!() };
        let Value::Map(nodes) = &t[0].2.value else { panic!() };
        assert_eq!((nodes[1].0.as_str(), nodes[1].1), ("n2", Mark { line: 5, col: 5 }));
        let Value::Map(n1) = &nodes[0].2.value else { panic!() };
        assert_eq!(n1[0].2.mark, Mark { line: 4, col: 16 });
        let Value::Seq(items) = &nodes[1].2.value else { panic!() };
        assert_eq!(items[0].mark, Mark { line: 6, col: 9 });
    }

    #[test]
    fn quoted_scalars_are_text() {
        let n = parse("a: \"true\"\nb: true\n").unwrap();
        let Value::Map(m) = n.value else { panic!() };
        assert!(matches!(&m[0].2.value, Value::Scalar { quoted: true, .. }));
        assert!(matches!(&m[1].2.value, Value::Scalar { quoted: false, .. }));
    }

    #[test]
    fn refuses_what_a_lab_file_does_not_use() {
        assert_eq!(parse("a: 1\na: 2\n").unwrap_err().mark, Mark { line: 2, col: 1 });
        assert!(parse("a: &x 1\nb: *x\n").unwrap_err().problem.contains("anchors"));
        assert!(parse("a: !!str 1\n").unwrap_err().problem.contains("tags"));
        assert!(parse("? [a]\n: 1\n").is_err());
        let e = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.mark.line >= 2, "{e:?}");
        assert!(parse("a: 1\n---\nb: 2\n").is_err());
        assert_eq!(parse("").unwrap().value, Value::Map(Vec::new()));
    }
}
