//! Reads the text form written by the printer, so tests can state small
//! graphs as text. Besides literal data, initializers accept two generators:
//! `rand(SEED)` (uniform in [-1, 1) for floats, [-10, 10] for integers,
//! deterministic) and `fill(X)`.
//!
//! Subgraph attributes and elided tensors (`<N values, …>`) cannot be parsed:
//! they print for reading, not for round-tripping through text.
//!
//! [`parse_fragment`] reads node lines alone, as YAML rewrite rules write
//! them: a value read before any line defines it is a free value of the
//! fragment (a rule's pattern input), not an error. An attribute written
//! `name=$var` is a reference (ONNX's `ref_attr_name`, which function bodies
//! use the same way): in a rule, a variable bound by the pattern.

use crate::attr::{attr_float, attr_floats, attr_int, attr_ints, attr_string, attr_tensor};
use crate::dtype::DataType;
use crate::error::IrError;
use crate::graph::{Graph, NodeId, ValueDef, ValueId};
use crate::proto::{AttributeProto, NodeProto, ValueInfoProto, attribute_proto::AttributeType};
use crate::shape::{Dim, Shape, TypeInfo};
use crate::tensor::Tensor;

/// Most elements a tensor written in the text form may have (rand/fill
/// would otherwise allocate whatever the dims say).
const MAX_ELEMENTS: usize = 1 << 20;

/// Parses a graph in the text form.
pub fn parse_graph(text: &str) -> Result<Graph, IrError> {
    let mut g: Option<Graph> = None;
    let mut closed = false;
    for (i, line) in text.lines().enumerate() {
        let mut c = Cursor { s: line, pos: 0, line: i + 1 };
        c.ws();
        if c.done() || c.peek_str("//") || (c.peek() == Some('#')) {
            continue;
        }
        if closed {
            return Err(c.err("text after the closing `}`"));
        }
        match g.as_mut() {
            None => {
                c.keyword("graph")?;
                let name = c.name()?;
                c.expect('{')?;
                c.end()?;
                let mut graph = Graph::new(&name, 13);
                graph.opset_import.clear();
                g = Some(graph);
            }
            Some(graph) => {
                if c.peek() == Some('}') {
                    c.expect('}')?;
                    c.end()?;
                    closed = true;
                } else {
                    statement(graph, &mut c)?;
                }
            }
        }
    }
    let g = g.ok_or(IrError::Parse { line: 1, column: 1, message: "expected `graph NAME {`".into() })?;
    if !closed {
        return Err(IrError::Parse { line: text.lines().count(), column: 1, message: "missing closing `}`".into() });
    }
    Ok(g)
}

/// Node lines without the `graph NAME { … }` around them (see the module doc).
#[derive(Debug, Clone)]
pub struct Fragment {
    /// The nodes, in order. Each free value is a graph input of unknown
    /// type, in order of first use.
    pub graph: Graph,
    /// The free values, in order of first use.
    pub free: Vec<FreeValue>,
    /// The 1-based line of each node, in node order.
    pub lines: Vec<usize>,
}

/// A value a fragment reads without defining it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreeValue {
    /// The graph input standing for it.
    pub value: ValueId,
    /// How it is written: `'%'` (any value) or `'@'` (an initializer).
    pub sigil: char,
    /// 1-based line of its first use.
    pub line: usize,
    /// 1-based column of its first use.
    pub column: usize,
}

/// Parses node lines (blank lines and lines starting with `#` or `//` are
/// skipped); values read before being defined become free values.
pub fn parse_fragment(text: &str) -> Result<Fragment, IrError> {
    let mut g = Graph::new("fragment", 13);
    g.opset_import.clear();
    let mut free = Vec::new();
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let mut c = Cursor { s: line, pos: 0, line: i + 1 };
        c.ws();
        if c.done() || c.peek_str("//") || (c.peek() == Some('#')) {
            continue;
        }
        node(&mut g, &mut c, Some(&mut free))?;
        lines.push(i + 1);
    }
    Ok(Fragment { graph: g, free, lines })
}

fn statement(g: &mut Graph, c: &mut Cursor) -> Result<(), IrError> {
    let save = c.pos;
    let word: String = c.s[c.pos..].chars().take_while(|ch| ch.is_ascii_alphanumeric()).collect();
    let keyword = c.s[c.pos + word.len()..].starts_with(char::is_whitespace);
    match word.as_str() {
        "opset" if keyword => {
            c.keyword("opset")?;
            let d = c.name()?;
            let v = c.int()?;
            c.end()?;
            g.set_opset(if d == "ai.onnx" { "" } else { &d }, v);
            Ok(())
        }
        "input" if keyword => {
            c.keyword("input")?;
            let (_, name) = c.value_name()?;
            c.expect(':')?;
            let ty = c.type_info()?;
            c.end()?;
            g.add_input(&name, &ty).map_err(|e| c.err(e.to_string()))?;
            Ok(())
        }
        "init" if keyword => {
            c.keyword("init")?;
            let (_, name) = c.value_name()?;
            c.expect(':')?;
            let col = c.pos;
            let ty = c.type_info()?;
            let (Some(dt), Some(dims)) = (ty.dtype, ty.known_dims()) else {
                c.pos = col;
                return Err(c.err("an initializer needs a dtype and known dims"));
            };
            c.expect('=')?;
            let t = c.tensor_data(dt, &dims)?;
            c.ws();
            let as_input = c.peek_str("(input)");
            if as_input {
                c.pos += "(input)".len();
            }
            c.end()?;
            if g.find_value(&name).is_some() {
                return Err(c.err(format!("\"{name}\" is already defined")));
            }
            let v = g.add_initializer(&name, t);
            if as_input {
                g.inputs.push(crate::graph::Port {
                    value: v,
                    info: ValueInfoProto { name: Some(name), r#type: Some(ty.to_proto()), ..Default::default() },
                });
            }
            Ok(())
        }
        "output" if keyword => {
            c.keyword("output")?;
            let (_, name) = c.value_name()?;
            let v = g.find_value(&name).ok_or_else(|| c.err(format!("output \"{name}\" is not defined")))?;
            let ty = if c.eat(':') { Some(c.type_info()?) } else { None };
            c.end()?;
            // The printer writes an output's type on its node line too; ONNX
            // keeps graph outputs out of value_info, so the type read there
            // moves to the output's declaration (else print → parse would
            // add a value_info entry the printed graph did not have).
            let line_type = if g.is_graph_output(v) { None } else { g.take_value_info(v) };
            g.add_output(v);
            if let Some(t) = line_type.and_then(|i| i.r#type.as_ref().and_then(TypeInfo::from_proto)) {
                g.set_type(v, &t);
            }
            if let Some(ty) = ty.filter(|t| t.dtype.is_some() || t.shape.is_some()) {
                g.set_type(v, &ty);
            }
            Ok(())
        }
        _ => {
            c.pos = save;
            node(g, c, None)
        }
    }
}

/// One node line; with `free`, undefined inputs become free values.
fn node(g: &mut Graph, c: &mut Cursor, mut free: Option<&mut Vec<FreeValue>>) -> Result<(), IrError> {
    // Outputs, if any, end with `=`.
    let mut outs: Vec<Option<(usize, String)>> = Vec::new();
    if matches!(c.peek(), Some('%' | '@' | '_')) {
        loop {
            c.ws();
            let col = c.pos;
            if c.eat('_') {
                outs.push(None);
            } else {
                let (_, name) = c.value_name()?;
                outs.push(Some((col, name)));
            }
            c.ws();
            if !c.eat(',') {
                break;
            }
        }
        c.expect('=')?;
    }
    c.ws();
    let mut op = c.name()?;
    let mut domain = String::new();
    if c.peek_str("::") {
        c.pos += 2;
        domain = op;
        op = c.name()?;
    }
    c.expect('(')?;
    let mut inputs: Vec<Option<ValueId>> = Vec::new();
    c.ws();
    if !c.eat(')') {
        loop {
            c.ws();
            if c.eat('_') {
                inputs.push(None);
            } else {
                let col = c.pos;
                let (sigil, name) = c.value_name()?;
                let v = match (g.find_value(&name), free.as_deref_mut()) {
                    (Some(v), Some(free)) => {
                        if let Some(f) = free.iter().find(|f| f.value == v && f.sigil != sigil) {
                            c.pos = col;
                            return Err(c.err(format!(
                                "\"{name}\" was first written {}{name} (line {}); one value, one sigil",
                                f.sigil, f.line
                            )));
                        }
                        v
                    }
                    (Some(v), None) => v,
                    (None, Some(free)) => {
                        let v = g.add_input(&name, &TypeInfo::default()).map_err(|e| c.err(e.to_string()))?;
                        free.push(FreeValue { value: v, sigil, line: c.line, column: c.s[..col].chars().count() + 1 });
                        v
                    }
                    (None, None) => {
                        c.pos = col;
                        return Err(c.err(format!("\"{name}\" is not defined before this line")));
                    }
                };
                inputs.push(Some(v));
            }
            c.ws();
            if c.eat(')') {
                break;
            }
            c.expect(',')?;
        }
    }
    c.ws();
    let mut attrs = Vec::new();
    if c.eat('{') {
        c.ws();
        if !c.eat('}') {
            loop {
                c.ws();
                let name = c.name()?;
                c.expect('=')?;
                attrs.push(c.attr(&name)?);
                c.ws();
                if c.eat('}') {
                    break;
                }
                c.expect(',')?;
            }
        }
    }
    c.ws();
    let mut types: Vec<Option<TypeInfo>> = Vec::new();
    if c.eat(':') {
        loop {
            c.ws();
            let t = c.type_info()?;
            types.push((t.dtype.is_some() || t.shape.is_some()).then_some(t));
            c.ws();
            if !c.eat(',') {
                break;
            }
        }
    }
    c.ws();
    let mut name = None;
    if c.eat('#') {
        c.ws();
        name = Some(if c.peek() == Some('"') { c.string()? } else { c.rest().trim().to_string() });
        c.pos = c.s.len();
    }
    c.end()?;
    if !types.is_empty() && types.len() != outs.len() {
        return Err(c.err(format!("{} output type(s) for {} output(s)", types.len(), outs.len())));
    }
    let proto = NodeProto {
        name,
        op_type: Some(op),
        domain: (!domain.is_empty()).then_some(domain),
        attribute: attrs,
        ..Default::default()
    };
    let n: NodeId = g.add_node_raw(proto);
    g.order.push(n);
    for (slot, v) in inputs.into_iter().enumerate() {
        g.set_input(n, slot, v);
    }
    for (slot, o) in outs.into_iter().enumerate() {
        let v = match o {
            None => None,
            Some((col, name)) => {
                if let Some(v) = g.find_value(&name) {
                    c.pos = col;
                    if let Some(f) = free.as_deref().and_then(|f| f.iter().find(|f| f.value == v)) {
                        return Err(c.err(if f.line == c.line {
                            format!("\"{name}\" is read by the line that defines it")
                        } else {
                            format!("\"{name}\" is read on line {} before this line defines it", f.line)
                        }));
                    }
                    return Err(c.err(format!("\"{name}\" is already defined")));
                }
                Some(g.new_value(name, ValueDef::Node(n, slot)))
            }
        };
        g.node_mut(n).outputs.push(v);
        if let (Some(v), Some(Some(t))) = (v, types.get(slot)) {
            g.set_type(v, t);
        }
    }
    Ok(())
}

struct Cursor<'a> {
    s: &'a str,
    pos: usize,
    line: usize,
}

impl Cursor<'_> {
    fn err(&self, message: impl Into<String>) -> IrError {
        IrError::Parse { line: self.line, column: self.s[..self.pos].chars().count() + 1, message: message.into() }
    }
    fn peek(&self) -> Option<char> {
        self.s[self.pos..].chars().next()
    }
    fn peek_str(&self, p: &str) -> bool {
        self.s[self.pos..].starts_with(p)
    }
    fn rest(&self) -> &str {
        &self.s[self.pos..]
    }
    fn done(&self) -> bool {
        self.pos >= self.s.len()
    }
    fn ws(&mut self) {
        while let Some(ch) = self.peek() {
            if !ch.is_whitespace() {
                break;
            }
            self.pos += ch.len_utf8();
        }
    }
    fn eat(&mut self, ch: char) -> bool {
        self.ws();
        if self.peek() == Some(ch) {
            self.pos += ch.len_utf8();
            true
        } else {
            false
        }
    }
    fn expect(&mut self, ch: char) -> Result<(), IrError> {
        if self.eat(ch) { Ok(()) } else { Err(self.err(format!("expected `{ch}`"))) }
    }
    fn end(&mut self) -> Result<(), IrError> {
        self.ws();
        if self.done() { Ok(()) } else { Err(self.err(format!("unexpected `{}`", self.rest()))) }
    }
    fn keyword(&mut self, k: &str) -> Result<(), IrError> {
        self.ws();
        if self.peek_str(k) {
            self.pos += k.len();
            Ok(())
        } else {
            Err(self.err(format!("expected `{k}`")))
        }
    }
    fn string(&mut self) -> Result<String, IrError> {
        self.ws();
        if !self.eat('"') {
            return Err(self.err("expected a string"));
        }
        let mut out = String::new();
        let mut chars = self.s[self.pos..].char_indices();
        while let Some((i, ch)) = chars.next() {
            match ch {
                '"' => {
                    self.pos += i + 1;
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, 't')) => out.push('\t'),
                    Some((_, 'r')) => out.push('\r'),
                    Some((_, '0')) => out.push('\0'),
                    Some((_, 'u')) => {
                        let hex: String = chars.by_ref().map(|c| c.1).skip(1).take_while(|&c| c != '}').collect();
                        let c = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32);
                        out.push(c.ok_or_else(|| self.err("bad \\u escape"))?);
                    }
                    Some((_, c)) => out.push(c),
                    None => break,
                },
                c => out.push(c),
            }
        }
        Err(self.err("unterminated string"))
    }
    fn name(&mut self) -> Result<String, IrError> {
        self.ws();
        if self.peek() == Some('"') {
            return self.string();
        }
        let start = self.pos;
        while let Some(ch) = self.peek() {
            if ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '/' | '-') {
                // `::` separates domain and op; a single `:` ends the name.
                self.pos += 1;
            } else {
                break;
            }
        }
        if start == self.pos { Err(self.err("expected a name")) } else { Ok(self.s[start..self.pos].to_string()) }
    }
    fn value_name(&mut self) -> Result<(char, String), IrError> {
        self.ws();
        match self.peek() {
            Some(s @ ('%' | '@')) => {
                self.pos += 1;
                Ok((s, self.name()?))
            }
            _ => Err(self.err("expected `%name` or `@name`")),
        }
    }
    fn number_token(&mut self) -> Result<String, IrError> {
        self.ws();
        let start = self.pos;
        for w in ["-inf", "inf", "nan"] {
            if self.peek_str(w) {
                self.pos += w.len();
                return Ok(w.to_string());
            }
        }
        while let Some(ch) = self.peek() {
            if ch.is_ascii_digit() || matches!(ch, '-' | '+' | '.' | 'e' | 'E') {
                self.pos += 1;
            } else {
                break;
            }
        }
        if start == self.pos { Err(self.err("expected a number")) } else { Ok(self.s[start..self.pos].to_string()) }
    }
    fn int(&mut self) -> Result<i64, IrError> {
        let col = self.pos;
        let t = self.number_token()?;
        t.parse().map_err(|_| {
            self.pos = col;
            self.err(format!("`{t}` is not an integer"))
        })
    }
    fn float(&mut self) -> Result<f64, IrError> {
        let col = self.pos;
        let t = self.number_token()?;
        match t.as_str() {
            "inf" => Ok(f64::INFINITY),
            "-inf" => Ok(f64::NEG_INFINITY),
            "nan" => Ok(f64::NAN),
            _ => t.parse().map_err(|_| {
                self.pos = col;
                self.err(format!("`{t}` is not a number"))
            }),
        }
    }
    fn type_info(&mut self) -> Result<TypeInfo, IrError> {
        self.ws();
        if self.eat('?') {
            return Ok(TypeInfo::default());
        }
        let col = self.pos;
        let dt = self.name()?;
        let dtype = DataType::from_short_name(&dt).ok_or_else(|| {
            self.pos = col;
            self.err(format!("unknown element type `{dt}`"))
        })?;
        let mut shape = None;
        if self.peek() == Some('[') {
            self.pos += 1;
            let mut dims = Vec::new();
            self.ws();
            if !self.eat(']') {
                loop {
                    self.ws();
                    let d = match self.peek() {
                        Some('?') => {
                            self.pos += 1;
                            Dim::Unknown
                        }
                        Some(c) if c.is_ascii_digit() => Dim::Known(self.int()?),
                        _ => Dim::Sym(self.name()?),
                    };
                    dims.push(d);
                    if self.eat(']') {
                        break;
                    }
                    self.expect(',')?;
                }
            }
            shape = Some(Shape(dims));
        }
        Ok(TypeInfo { dtype: Some(dtype), shape })
    }
    fn tensor_data(&mut self, dt: DataType, dims: &[i64]) -> Result<Tensor, IrError> {
        // Dims are text: a product that overflows, or a tensor rand()/fill()
        // would spend gigabytes on, is an error, not an abort.
        let n = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d.max(0) as usize)).filter(|&n| n <= MAX_ELEMENTS);
        let Some(n) = n else {
            return Err(self.err(format!(
                "a tensor of dims {dims:?} is too big for the text form (at most {MAX_ELEMENTS} elements)"
            )));
        };
        self.ws();
        let values: Vec<f64> = if self.peek_str("rand(") {
            self.pos += 5;
            let seed = self.int()? as u64;
            self.expect(')')?;
            let mut rng = SplitMix(seed);
            (0..n)
                .map(|_| if dt.is_float() { rng.uniform() * 2.0 - 1.0 } else { (rng.uniform() * 21.0).floor() - 10.0 })
                .collect()
        } else if self.peek_str("fill(") {
            self.pos += 5;
            let x = self.scalar()?;
            self.expect(')')?;
            vec![x; n]
        } else if dt == DataType::I64 && self.peek() == Some('[') {
            // Exact: 64-bit integers do not survive a trip through f64.
            self.pos += 1;
            let mut v = Vec::new();
            self.ws();
            if !self.eat(']') {
                loop {
                    self.ws();
                    v.push(self.int()?);
                    self.ws();
                    if self.eat(']') {
                        break;
                    }
                    self.expect(',')?;
                }
            }
            if v.len() != n {
                return Err(self.err(format!("{} values for dims {dims:?} ({n} elements)", v.len())));
            }
            return Ok(Tensor::new(dims, &v));
        } else if self.eat('[') {
            let mut v = Vec::new();
            self.ws();
            if !self.eat(']') {
                loop {
                    v.push(self.scalar()?);
                    if self.eat(']') {
                        break;
                    }
                    self.expect(',')?;
                }
            }
            if v.len() != n {
                return Err(self.err(format!("{} values for dims {dims:?} ({n} elements)", v.len())));
            }
            v
        } else if self.peek() == Some('<') {
            return Err(self.err("elided tensor data cannot be parsed; use [..], rand(SEED) or fill(X)"));
        } else {
            return Err(self.err("expected tensor data: [..], rand(SEED) or fill(X)"));
        };
        make_tensor(dt, dims, &values).ok_or_else(|| self.err(format!("cannot build {dt} tensors in the text form")))
    }
    fn scalar(&mut self) -> Result<f64, IrError> {
        self.ws();
        if self.peek_str("true") {
            self.pos += 4;
            return Ok(1.0);
        }
        if self.peek_str("false") {
            self.pos += 5;
            return Ok(0.0);
        }
        self.float()
    }
    fn attr(&mut self, name: &str) -> Result<AttributeProto, IrError> {
        self.ws();
        if self.eat('$') {
            let var = self.name()?;
            return Ok(AttributeProto { name: Some(name.to_string()), ref_attr_name: Some(var), ..Default::default() });
        }
        if self.peek_str("ints[]") {
            self.pos += 6;
            return Ok(attr_ints(name, &[]));
        }
        if self.peek_str("floats[]") {
            self.pos += 8;
            return Ok(attr_floats(name, &[]));
        }
        if self.peek_str("tensor(") {
            self.pos += 7;
            let ty = self.type_info()?;
            let (Some(dt), Some(dims)) = (ty.dtype, ty.known_dims()) else {
                return Err(self.err("a tensor attribute needs a dtype and known dims"));
            };
            self.expect('=')?;
            let t = self.tensor_data(dt, &dims)?;
            self.expect(')')?;
            return Ok(attr_tensor(name, t));
        }
        match self.peek() {
            Some('"') => Ok(attr_string(name, &self.string()?)),
            Some('[') => {
                self.pos += 1;
                self.ws();
                if self.peek() == Some('"') {
                    let mut items = Vec::new();
                    loop {
                        items.push(self.string()?.into_bytes());
                        if self.eat(']') {
                            break;
                        }
                        self.expect(',')?;
                    }
                    return Ok(AttributeProto {
                        name: Some(name.to_string()),
                        r#type: Some(AttributeType::Strings as i32),
                        strings: items,
                        ..Default::default()
                    });
                }
                let mut toks = Vec::new();
                loop {
                    toks.push(self.number_token()?);
                    if self.eat(']') {
                        break;
                    }
                    self.expect(',')?;
                }
                if toks.iter().all(|t| t.parse::<i64>().is_ok()) {
                    Ok(attr_ints(name, &toks.iter().map(|t| t.parse().unwrap_or(0)).collect::<Vec<_>>()))
                } else {
                    let f: Result<Vec<f32>, _> = toks.iter().map(|t| parse_f32(t).ok_or(())).collect();
                    f.map(|f| attr_floats(name, &f)).map_err(|_| self.err("bad number in list"))
                }
            }
            Some(c) if c.is_ascii_digit() || c == '-' || c == 'i' || c == 'n' => {
                let t = self.number_token()?;
                if let Ok(i) = t.parse::<i64>() {
                    Ok(attr_int(name, i))
                } else {
                    parse_f32(&t).map(|f| attr_float(name, f)).ok_or_else(|| self.err(format!("bad number `{t}`")))
                }
            }
            _ => Err(self.err("expected an attribute value")),
        }
    }
}

fn parse_f32(t: &str) -> Option<f32> {
    match t {
        "inf" => Some(f32::INFINITY),
        "-inf" => Some(f32::NEG_INFINITY),
        "nan" => Some(f32::NAN),
        _ => t.parse().ok(),
    }
}

fn make_tensor(dt: DataType, dims: &[i64], v: &[f64]) -> Option<Tensor> {
    if dt.is_float() {
        return Tensor::from_f64(dt, dims, v);
    }
    Some(match dt {
        DataType::I64 => Tensor::new(dims, &v.iter().map(|&x| x as i64).collect::<Vec<_>>()),
        DataType::I32 => Tensor::new(dims, &v.iter().map(|&x| x as i32).collect::<Vec<_>>()),
        DataType::I16 => Tensor::new(dims, &v.iter().map(|&x| x as i16).collect::<Vec<_>>()),
        DataType::I8 => Tensor::new(dims, &v.iter().map(|&x| x as i8).collect::<Vec<_>>()),
        DataType::U8 => Tensor::new(dims, &v.iter().map(|&x| x as u8).collect::<Vec<_>>()),
        DataType::U16 => Tensor::new(dims, &v.iter().map(|&x| x as u16).collect::<Vec<_>>()),
        DataType::U32 => Tensor::new(dims, &v.iter().map(|&x| x as u32).collect::<Vec<_>>()),
        DataType::U64 => Tensor::new(dims, &v.iter().map(|&x| x as u64).collect::<Vec<_>>()),
        DataType::Bool => Tensor::new(dims, &v.iter().map(|&x| x != 0.0).collect::<Vec<_>>()),
        _ => return None,
    })
}

/// SplitMix64: a tiny deterministic generator for `rand(SEED)`.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::printer::PrintOptions;

    const SMALL: &str = r#"
graph g {
  opset ai.onnx 13
  input %x: f32[1,2,4,4]
  init @w: f32[2,2,1,1] = [1.0,0.0,0.0,1.0]
  init @s: f32[4] = fill(2.0)
  %y = Conv(%x, @w) {kernel_shape=[1,1], strides=[1,1]} : f32[1,2,4,4]  # conv0
  %z = Resize(%y, _, @s) {mode="nearest"} : f32[1,2,8,8]
  output %z: f32[1,2,8,8]
}
"#;

    #[test]
    fn print_parse_print_is_stable() {
        let g = parse_graph(SMALL).unwrap();
        let printed = g.to_string();
        let again = parse_graph(&printed).unwrap().to_string();
        assert_eq!(printed, again);
        assert!(printed.contains("%y = Conv(%x, @w) {kernel_shape=[1,1], strides=[1,1]} : f32[1,2,4,4]  # conv0"));
        assert!(printed.contains("Resize(%y, _, @s)"), "{printed}");
    }

    #[test]
    fn errors_carry_line_and_column() {
        let e = parse_graph("graph g {\n  %y = Relu(%nope)\n}\n").unwrap_err().to_string();
        assert!(e.starts_with("line 2, column 13"), "{e}");
        assert!(e.contains("\"nope\" is not defined"), "{e}");
    }

    #[test]
    fn fragments_have_free_values_and_attribute_variables() {
        let f = parse_fragment("  %t = Transpose(%x) {perm=$p}\n\n  # comment\n  %y = Add(%t, @b)\n").unwrap();
        assert_eq!(f.lines, vec![1, 4]);
        let free: Vec<(&str, char, usize, usize)> =
            f.free.iter().map(|v| (f.graph.value_name(v.value), v.sigil, v.line, v.column)).collect();
        assert_eq!(free, vec![("x", '%', 1, 18), ("b", '@', 4, 16)]);
        let t = f.graph.nodes().next().unwrap();
        assert_eq!(f.graph.node(t).attr("perm").and_then(|a| a.ref_attr_name.as_deref()), Some("p"));
        assert!(f.graph.node_line(t, &PrintOptions::default()).ends_with("{perm=$p}"));
        // A name is read before its line defines it, or written with two sigils.
        let e = parse_fragment("%y = Relu(%a)\n%a = Relu(%x)\n").unwrap_err().to_string();
        assert!(e.starts_with("line 2, column 1") && e.contains("read on line 1 before"), "{e}");
        let e = parse_fragment("%y = Add(%w, @w)\n").unwrap_err().to_string();
        assert!(e.contains("first written %w"), "{e}");
    }

    #[test]
    fn attribute_references_round_trip_through_graphs() {
        let t = "graph g {\n  opset ai.onnx 13\n  input %x: f32[2]\n  %y = LeakyRelu(%x) {alpha=$a}\n  output %y\n}\n";
        let printed = parse_graph(t).unwrap().to_string();
        assert!(printed.contains("  %y = LeakyRelu(%x) {alpha=$a}\n"), "{printed}");
        assert_eq!(parse_graph(&printed).unwrap().to_string(), printed);
    }

    #[test]
    fn overridable_initializers_round_trip() {
        let t = "graph g {\n  init @c: f32[2] = [1.0,2.0] (input)\n  output @c\n}\n";
        let g = parse_graph(t).unwrap();
        assert!(g.is_graph_input(g.find_value("c").unwrap()));
        assert_eq!(parse_graph(&g.to_string()).unwrap().to_string(), g.to_string());
    }

    #[test]
    fn rand_is_deterministic() {
        let t = "graph g {\n  init @w: f32[8] = rand(7)\n  output @w\n}\n";
        assert_eq!(parse_graph(t).unwrap().to_string(), parse_graph(t).unwrap().to_string());
    }
}
