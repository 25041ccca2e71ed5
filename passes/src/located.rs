//! Where each part of a pass's options was written in the pipeline YAML.
//!
//! Options reach a pass as JSON, which keeps no positions, so an error in
//! a deeply nested option could only point at the pass entry. Some options
//! are source text of their own (a `rewrite` rule's `from:` block, in the
//! text IR), and an error in them must point at the exact line of the file.
//! So the pipeline loader records the position of every option (by JSON
//! pointer, `/rules/0/from`) and runs the [`OptionCheck`]s registered for a
//! pass with them, before any pass is created. A check re-does what the
//! pass's own option parsing does, only with positions; options set with
//! `--set` are checked by the pass alone and reported at `--set`.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_saphyr::{Location, Spanned};

use crate::context::PassError;
use crate::pipeline::Origin;

/// A check of one pass's options that can point into the YAML, run when a
/// pipeline is loaded. Register with `inventory::submit!`.
pub struct OptionCheck {
    /// The pass whose options it checks.
    pub pass: &'static str,
    /// Returns an error located with `spans` (a [`PassError::Pipeline`]).
    pub check: fn(&Value, &OptionSpans) -> Result<(), PassError>,
}

inventory::collect!(OptionCheck);

/// Runs every check registered for `pass`.
pub(crate) fn check_options(pass: &str, options: &Value, spans: &OptionSpans) -> Result<(), PassError> {
    for c in inventory::iter::<OptionCheck>.into_iter().filter(|c| c.pass == pass) {
        (c.check)(options, spans)?;
    }
    Ok(())
}

/// The positions of one pass's options, by JSON pointer.
#[derive(Debug, Clone, Default)]
pub struct OptionSpans {
    file: String,
    /// Where the options as a whole were written (the pass entry).
    at: Origin,
    entries: BTreeMap<String, Entry>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    line: u64,
    column: u64,
    /// For strings: how their text maps to the file.
    text: Option<TextMap>,
}

/// How a string option's text maps to the file.
#[derive(Debug, Clone, Copy)]
struct TextMap {
    /// What to add to a column of the string to get the file column.
    offset: u64,
    /// The offset holds on every line (a block scalar, `|`, whose lines
    /// share one indentation), not only on the first.
    every_line: bool,
}

impl OptionSpans {
    /// Where the option at `pointer` (`""` = all of them, `/rules/0`) was
    /// written, or the pass entry when unknown.
    pub fn origin(&self, pointer: &str) -> Origin {
        match self.entries.get(pointer) {
            Some(e) => Origin { file: self.file.clone(), line: e.line, column: e.column },
            None => self.at.clone(),
        }
    }

    /// Where line `line`, column `column` (both 1-based) of the string
    /// option at `pointer` is in the file. Exact for block scalars (`|`) and
    /// one-line strings; on later lines of other strings the column is the
    /// string's own.
    pub fn text_origin(&self, pointer: &str, line: usize, column: usize) -> Origin {
        match self.entries.get(pointer) {
            Some(&Entry { line: first, text: Some(map), .. }) => Origin {
                file: self.file.clone(),
                line: first + line.saturating_sub(1) as u64,
                column: if line <= 1 || map.every_line { map.offset + column as u64 } else { column as u64 },
            },
            _ => self.origin(pointer),
        }
    }

    /// Records `node` (written at `at`) and everything under it.
    fn collect(&mut self, pointer: String, at: Location, node: &Located, lines: &[&str]) {
        let (line, column) = (at.line(), at.column());
        let text = matches!(node, Located::Scalar(Value::String(_))).then(|| text_map(lines, line, column));
        self.entries.insert(pointer.clone(), Entry { line, column, text });
        let mut child = |key: &str, at: Location, node: &Located| {
            let escaped = key.replace('~', "~0").replace('/', "~1");
            self.collect(format!("{pointer}/{escaped}"), at, node, lines);
        };
        match node {
            Located::Scalar(_) => {}
            Located::Seq(items) => items.iter().enumerate().for_each(|(i, (at, n))| child(&i.to_string(), *at, n)),
            Located::Map(entries) => entries.iter().for_each(|(k, at, n)| child(k, *at, n)),
        }
    }
}

/// How a string scalar written at `line`, `column` maps to the file. The
/// position is its opening quote for a quoted string, and the start of the
/// first content line for a block scalar, which has nothing but indentation
/// before it.
fn text_map(lines: &[&str], line: u64, column: u64) -> TextMap {
    let src = lines.get(line.saturating_sub(1) as usize).copied().unwrap_or("");
    let before: String = src.chars().take(column.saturating_sub(1) as usize).collect();
    let quoted = src.chars().nth(column.saturating_sub(1) as usize).is_some_and(|c| c == '"' || c == '\'');
    TextMap {
        offset: if quoted { column } else { column.saturating_sub(1) },
        every_line: !quoted && before.trim().is_empty(),
    }
}

/// A pipeline file being loaded.
pub(crate) struct Source<'a> {
    /// The file name, for origins.
    pub label: &'a str,
    /// Its text.
    pub text: &'a str,
}

impl Source<'_> {
    /// The positions under `node`, the options of a pass entry at `at`.
    pub(crate) fn spans(&self, at: &Origin, node: Option<(Location, &Located)>) -> OptionSpans {
        let mut s = OptionSpans { file: self.label.to_string(), at: at.clone(), entries: BTreeMap::new() };
        if let Some((loc, node)) = node {
            let lines: Vec<&str> = self.text.lines().collect();
            s.collect(String::new(), loc, node, &lines);
        }
        s
    }
}

/// A YAML value with the position of each child.
#[derive(Debug, Clone)]
pub(crate) enum Located {
    /// A scalar, as JSON.
    Scalar(Value),
    /// Items with where each was written.
    Seq(Vec<(Location, Located)>),
    /// Entries (in order, a repeated key keeps its last value) with where each value was written.
    Map(Vec<(String, Location, Located)>),
}

impl Located {
    /// The value, exactly as `serde_json::Value` would read it.
    pub(crate) fn to_value(&self) -> Value {
        match self {
            Located::Scalar(v) => v.clone(),
            Located::Seq(items) => Value::Array(items.iter().map(|i| i.1.to_value()).collect()),
            Located::Map(entries) => Value::Object(entries.iter().map(|e| (e.0.clone(), e.2.to_value())).collect()),
        }
    }

    /// The child under `key` (a map key, or a sequence index as text).
    pub(crate) fn child(&self, key: &str) -> Option<(Location, &Located)> {
        match self {
            Located::Scalar(_) => None,
            Located::Seq(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)).map(|i| (i.0, &i.1)),
            Located::Map(entries) => entries.iter().find(|e| e.0 == key).map(|e| (e.1, &e.2)),
        }
    }
}

impl<'de> Deserialize<'de> for Located {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Located, D::Error> {
        d.deserialize_any(LocatedVisitor)
    }
}

struct LocatedVisitor;

impl<'de> Visitor<'de> for LocatedVisitor {
    type Value = Located;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Located, E> {
        Ok(Located::Scalar(Value::Bool(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Located, E> {
        Ok(Located::Scalar(Value::Number(v.into())))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Located, E> {
        Ok(Located::Scalar(Value::Number(v.into())))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Located, E> {
        Ok(Located::Scalar(serde_json::Number::from_f64(v).map(Value::Number).unwrap_or(Value::Null)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Located, E> {
        Ok(Located::Scalar(Value::String(v.to_string())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Located, E> {
        Ok(Located::Scalar(Value::String(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Located, E> {
        Ok(Located::Scalar(Value::Null))
    }
    fn visit_none<E: de::Error>(self) -> Result<Located, E> {
        Ok(Located::Scalar(Value::Null))
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Located, D::Error> {
        Located::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Located, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Located>>()? {
            items.push((item.referenced, item.value));
        }
        Ok(Located::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Located, A::Error> {
        let mut entries: Vec<(String, Location, Located)> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let v: Spanned<Located> = map.next_value()?;
            entries.retain(|e| e.0 != key);
            entries.push((key, v.referenced, v.value));
        }
        Ok(Located::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "\
passes:
  - rewrite:
      rules:
        - name: r
          from: |
            %a = Relu(%x)

              %y = Relu(%a)
          to: \"%y = Relu(%x)\"
          n: 3
";

    #[test]
    fn located_values_read_as_plain_json_values_do() {
        let yaml = "a: &x {b: [1, 2.5, true, null, ~, 'q', -3]}\nc: *x\nd: 1.5e3\ne: [[], {}]\nf: |\n  text\n";
        let located: Located = serde_saphyr::from_str(yaml).unwrap();
        let plain: Value = serde_saphyr::from_str(yaml).unwrap();
        assert_eq!(located.to_value(), plain);
        assert_eq!(
            located.child("c").and_then(|c| c.1.child("b")).and_then(|b| b.1.child("6")).map(|x| x.1.to_value()),
            Some(Value::from(-3))
        );
    }

    #[test]
    fn positions_of_nested_options_and_lines_of_block_text() {
        #[derive(Deserialize)]
        struct Raw {
            passes: Vec<Spanned<Located>>,
        }
        let raw: Raw = serde_saphyr::from_str(YAML).unwrap();
        let entry = &raw.passes[0];
        let json: Value = serde_saphyr::from_str::<serde_json::Map<String, Value>>(YAML).unwrap()["passes"][0].clone();
        assert_eq!(entry.value.to_value(), json, "the located value reads as plain JSON does");
        let src = Source { label: "p.yaml", text: YAML };
        let at = Origin { file: "p.yaml".into(), line: 2, column: 5 };
        let spans = src.spans(&at, entry.value.child("rewrite"));
        let o = |pointer: &str| {
            let o = spans.origin(pointer);
            (o.line, o.column)
        };
        assert_eq!(o("/rules/0/name"), (4, 17));
        assert_eq!(o("/rules/0/n"), (10, 14));
        assert_eq!(o("/nope"), (2, 5), "unknown pointers fall back to the pass entry");
        // `from` line 3 is `  %y = Relu(%a)`, its `%a` at string column 13.
        let t = spans.text_origin("/rules/0/from", 3, 13);
        assert_eq!((t.line, t.column), (8, 25));
        assert_eq!(&YAML.lines().nth(7).unwrap()[24..26], "%a");
        // A quoted one-line string: column 11 of `%y = Relu(%x)` is `%x`.
        let t = spans.text_origin("/rules/0/to", 1, 11);
        assert_eq!((t.line, t.column), (9, 26));
        assert_eq!(&YAML.lines().nth(8).unwrap()[25..27], "%x");
    }
}
