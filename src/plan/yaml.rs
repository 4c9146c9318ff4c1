//! A YAML document as a tree that remembers where every node was written.
//!
//! Plan errors must point at `FILE:LINE:COLUMN`, and most of them are found
//! long after parsing (by the JSON Schema, by semantic checks). So the plan is
//! parsed once into [`Node`]s that carry their source position (and, for
//! mapping entries, the position of the key), and every later stage looks
//! positions up by JSON pointer. The parser is yaml-rust2's event parser;
//! duplicate keys, tags and multi-document streams are rejected here because
//! a plan that means two things must not load.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A 1-based line and column in the plan file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    fn from_marker(m: Marker) -> Self {
        // yaml-rust2 counts lines from 1 and columns from 0.
        Pos {
            line: m.line(),
            column: m.col() + 1,
        }
    }
}

/// How a scalar was written; only plain scalars are resolved to numbers,
/// booleans and null (YAML 1.2 core schema), quoted ones stay strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalarStyle {
    Plain,
    Quoted,
    Block,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    Scalar { text: String, style: ScalarStyle },
    Sequence(Vec<Node>),
    Mapping(Vec<Entry>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub kind: NodeKind,
    pub pos: Pos,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub key_pos: Pos,
    pub value: Node,
}

/// A YAML problem found while building the tree.
#[derive(Debug, Clone, PartialEq)]
pub struct YamlError {
    pub pos: Pos,
    pub message: String,
    pub hint: String,
}

impl Node {
    /// Follows a JSON pointer (`/collections/0/columns`) through the tree.
    pub fn at_pointer(&self, pointer: &str) -> Option<&Node> {
        let mut node = self;
        if pointer.is_empty() {
            return Some(node);
        }
        for raw in pointer.trim_start_matches('/').split('/') {
            let seg = raw.replace("~1", "/").replace("~0", "~");
            node = match &node.kind {
                NodeKind::Mapping(entries) => &entries.iter().find(|e| e.key == seg)?.value,
                NodeKind::Sequence(items) => items.get(seg.parse::<usize>().ok()?)?,
                NodeKind::Scalar { .. } => return None,
            };
        }
        Some(node)
    }

    /// The entry for `key` in the mapping at `pointer` (for pointing at keys).
    pub fn entry_at(&self, pointer: &str, key: &str) -> Option<&Entry> {
        match &self.at_pointer(pointer)?.kind {
            NodeKind::Mapping(entries) => entries.iter().find(|e| e.key == key),
            _ => None,
        }
    }

    /// Converts to JSON, resolving plain scalars by the YAML 1.2 core schema.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match &self.kind {
            NodeKind::Scalar { text, style } => match style {
                ScalarStyle::Plain => resolve_plain(text),
                _ => Value::String(text.clone()),
            },
            NodeKind::Sequence(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            NodeKind::Mapping(entries) => Value::Object(
                entries
                    .iter()
                    .map(|e| (e.key.clone(), e.value.to_json()))
                    .collect(),
            ),
        }
    }
}

/// YAML 1.2 core schema resolution of a plain scalar.
pub fn resolve_plain(text: &str) -> serde_json::Value {
    use serde_json::Value;
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(i) = text.parse::<i64>() {
        return Value::from(i);
    }
    if let Some(hex) = text.strip_prefix("0x")
        && let Ok(i) = i64::from_str_radix(hex, 16)
    {
        return Value::from(i);
    }
    if let Some(oct) = text.strip_prefix("0o")
        && let Ok(i) = i64::from_str_radix(oct, 8)
    {
        return Value::from(i);
    }
    let looks_numeric = text
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
        && text.chars().any(|c| c.is_ascii_digit());
    if looks_numeric
        && let Ok(f) = text.parse::<f64>()
        && let Some(n) = serde_json::Number::from_f64(f)
    {
        return Value::Number(n);
    }
    Value::String(text.to_string())
}

/// Parses a single YAML document into a positioned tree.
pub fn parse(text: &str) -> Result<Node, YamlError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    if let Err(e) = parser.load(&mut builder, true) {
        let mut message = e.info().to_string();
        if let Some(first) = message.get(..1) {
            message = first.to_lowercase() + &message[1..];
        }
        return Err(YamlError {
            pos: Pos::from_marker(*e.marker()),
            message: format!("invalid YAML: {message}"),
            hint: "fix the YAML syntax at this position (indentation, a missing `:` or an unclosed quote or bracket are the usual causes)".into(),
        });
    }
    if let Some(err) = builder.error {
        return Err(err);
    }
    match builder.documents.len() {
        0 => Err(YamlError {
            pos: Pos { line: 1, column: 1 },
            message: "the plan file is empty".into(),
            hint: "start from `plans/minimal.yaml`, or run `lanceferry schema` to see every key"
                .into(),
        }),
        1 => Ok(builder.documents.pop().expect("one document")),
        _ => Err(YamlError {
            pos: builder.second_doc_pos.unwrap_or_default(),
            message: "the plan file holds more than one YAML document".into(),
            hint: "keep one plan per file; remove the `---` separator and what follows it".into(),
        }),
    }
}

enum Frame {
    Seq(Pos, Vec<Node>),
    Map(Pos, Vec<Entry>, Option<(String, Pos)>),
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    documents: Vec<Node>,
    anchors: HashMap<usize, Node>,
    // Anchor id per open collection, so the finished node can be registered.
    open_anchors: Vec<usize>,
    error: Option<YamlError>,
    second_doc_pos: Option<Pos>,
}

impl Builder {
    fn fail(&mut self, pos: Pos, message: String, hint: &str) {
        if self.error.is_none() {
            self.error = Some(YamlError {
                pos,
                message,
                hint: hint.to_string(),
            });
        }
    }

    fn push_node(&mut self, node: Node) {
        let mut problem = None;
        match self.stack.last_mut() {
            None => self.documents.push(node),
            Some(Frame::Seq(_, items)) => items.push(node),
            Some(Frame::Map(_, entries, pending)) => match pending.take() {
                None => {
                    let key = match &node.kind {
                        NodeKind::Scalar { text, .. } => text.clone(),
                        _ => {
                            problem = Some((
                                node.pos,
                                "a mapping key must be a plain string".to_string(),
                                "write keys as simple words, e.g. `name: value`",
                            ));
                            String::new()
                        }
                    };
                    if let Some(first) = entries.iter().find(|e| e.key == key) {
                        problem = Some((
                            node.pos,
                            format!(
                                "duplicate key `{key}` (first written on line {})",
                                first.key_pos.line
                            ),
                            "remove one of the two entries; YAML keeps only one and the plan would silently lose the other",
                        ));
                    }
                    // Keep the key (even a bad one) so the value that follows pairs up.
                    *pending = Some((key, node.pos));
                }
                Some((key, key_pos)) => entries.push(Entry {
                    key,
                    key_pos,
                    value: node,
                }),
            },
        }
        if let Some((pos, message, hint)) = problem {
            self.fail(pos, message, hint);
        }
    }

    fn check_tag(&mut self, tag: &Option<yaml_rust2::parser::Tag>, pos: Pos) {
        if let Some(tag) = tag {
            self.fail(
                pos,
                format!("YAML tag `{}{}` is not allowed in a plan", tag.handle, tag.suffix),
                "remove the tag; plan values are plain strings, numbers, booleans, lists and mappings",
            );
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = Pos::from_marker(mark);
        match ev {
            Event::DocumentStart if !self.documents.is_empty() && self.second_doc_pos.is_none() => {
                self.second_doc_pos = Some(pos);
            }
            Event::Scalar(text, style, anchor, tag) => {
                self.check_tag(&tag, pos);
                let style = match style {
                    TScalarStyle::Plain => ScalarStyle::Plain,
                    TScalarStyle::SingleQuoted | TScalarStyle::DoubleQuoted => ScalarStyle::Quoted,
                    TScalarStyle::Literal | TScalarStyle::Folded => ScalarStyle::Block,
                };
                let node = Node {
                    kind: NodeKind::Scalar { text, style },
                    pos,
                };
                if anchor > 0 {
                    self.anchors.insert(anchor, node.clone());
                }
                self.push_node(node);
            }
            Event::SequenceStart(anchor, tag) => {
                self.check_tag(&tag, pos);
                self.open_anchors.push(anchor);
                self.stack.push(Frame::Seq(pos, Vec::new()));
            }
            Event::MappingStart(anchor, tag) => {
                self.check_tag(&tag, pos);
                self.open_anchors.push(anchor);
                self.stack.push(Frame::Map(pos, Vec::new(), None));
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let node = match self.stack.pop() {
                    Some(Frame::Seq(p, items)) => Node {
                        kind: NodeKind::Sequence(items),
                        pos: p,
                    },
                    Some(Frame::Map(p, entries, _)) => Node {
                        // Point at the first key: the parser's mark for a block
                        // mapping lands after it, which reads as a wrong column.
                        pos: entries.first().map(|e| e.key_pos).unwrap_or(p),
                        kind: NodeKind::Mapping(entries),
                    },
                    None => return,
                };
                let anchor = self.open_anchors.pop().unwrap_or(0);
                if anchor > 0 {
                    self.anchors.insert(anchor, node.clone());
                }
                self.push_node(node);
            }
            Event::Alias(id) => match self.anchors.get(&id).cloned() {
                // An alias is a copy of its anchor, positioned where the alias is
                // written so errors point at the use.
                Some(mut node) => {
                    node.pos = pos;
                    self.push_node(node);
                }
                None => self.fail(
                    pos,
                    "alias to an unknown anchor".into(),
                    "define the anchor (`&name`) before using it (`*name`)",
                ),
            },
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based() {
        let doc = parse("a: 1\nb:\n  c: x\n").unwrap();
        let c = doc.entry_at("/b", "c").unwrap();
        assert_eq!(c.key_pos, Pos { line: 3, column: 3 });
        assert_eq!(c.value.pos, Pos { line: 3, column: 6 });
    }

    #[test]
    fn duplicate_keys_are_rejected() {
        let err = parse("a: 1\na: 2\n").unwrap_err();
        assert_eq!(err.pos, Pos { line: 2, column: 1 });
        assert!(err.message.contains("duplicate key `a`"));
    }

    #[test]
    fn plain_scalars_resolve_quoted_stay_strings() {
        let doc = parse("a: 12\nb: '12'\nc: true\nd: 1.5\ne: ~\n").unwrap();
        let json = doc.to_json();
        assert_eq!(json["a"], serde_json::json!(12));
        assert_eq!(json["b"], serde_json::json!("12"));
        assert_eq!(json["c"], serde_json::json!(true));
        assert_eq!(json["d"], serde_json::json!(1.5));
        assert!(json["e"].is_null());
    }

    #[test]
    fn aliases_copy_their_anchor() {
        let doc = parse("a: &x {k: 1}\nb: *x\n").unwrap();
        assert_eq!(doc.to_json()["b"]["k"], serde_json::json!(1));
    }
}
