//! The canonical text form of a graph, used by snapshots, `qforge inspect`
//! and `--print-ir-after`. One statement per line, so snapshot diffs read as
//! "this node changed":
//!
//! ```text
//! graph main {
//!   opset ai.onnx 13
//!   input %x: f32[1,3,8,8]
//!   init @w: f32[4,3,3,3] = <108 values, fnv 9c3f…>
//!   init @b: f32[4] = [0.5,-1.0,0.0,2.0]
//!   %y = Conv(%x, @w, @b) {kernel_shape=[3,3], pads=[1,1,1,1]} : f32[1,4,8,8]  # conv0
//!   output %y
//! }
//! ```
//!
//! `%` marks graph inputs and computed tensors, `@` initializers; `_` is an
//! omitted optional input; `# name` is the node name; `attr=$var` is a
//! reference to a variable (`ref_attr_name`). Names outside
//! `[A-Za-z0-9_./-]` are quoted. [`crate::parse_graph`] reads this form back.

use std::fmt::{self, Write};

use half::{bf16, f16};

use crate::attr::AttrExt;
use crate::dtype::DataType;
use crate::graph::{Graph, NodeId, ValueDef, ValueId};
use crate::proto::{AttributeProto, attribute_proto::AttributeType};
use crate::tensor::Tensor;

/// Knobs of the text form.
#[derive(Debug, Clone)]
pub struct PrintOptions {
    /// Tensors with at most this many elements are printed in full; bigger
    /// ones as a count and a digest.
    pub max_elements: usize,
    /// Print `init` lines.
    pub initializers: bool,
}

impl Default for PrintOptions {
    fn default() -> Self {
        PrintOptions { max_elements: 16, initializers: true }
    }
}

/// Characters a name may have without quotes.
pub(crate) fn is_bare_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-'))
}

pub(crate) fn quote_name(s: &str) -> String {
    if is_bare_name(s) { s.to_string() } else { format!("{s:?}") }
}

fn fmt_f32(x: f32) -> String {
    if x.is_nan() {
        "nan".into()
    } else if x.is_infinite() {
        if x > 0.0 { "inf".into() } else { "-inf".into() }
    } else {
        format!("{x:?}")
    }
}

fn fmt_f64(x: f64) -> String {
    if x.is_nan() {
        "nan".into()
    } else if x.is_infinite() {
        if x > 0.0 { "inf".into() } else { "-inf".into() }
    } else {
        format!("{x:?}")
    }
}

/// The data part of a tensor: `[1.0,2.0]` or `<N values, fnv …>`.
pub(crate) fn tensor_data(t: &Tensor, max: usize) -> String {
    let n = t.numel();
    let list = |items: Vec<String>| format!("[{}]", items.join(","));
    if n <= max {
        let s = match t.dtype() {
            Some(DataType::F32) => t.to_vec::<f32>().map(|v| list(v.into_iter().map(fmt_f32).collect())),
            Some(DataType::F64) => t.to_vec::<f64>().map(|v| list(v.into_iter().map(fmt_f64).collect())),
            Some(DataType::F16) => {
                t.to_vec::<f16>().map(|v| list(v.into_iter().map(|x| fmt_f32(f32::from(x))).collect()))
            }
            Some(DataType::BF16) => {
                t.to_vec::<bf16>().map(|v| list(v.into_iter().map(|x| fmt_f32(f32::from(x))).collect()))
            }
            Some(DataType::Bool) => t.to_vec::<bool>().map(|v| list(v.into_iter().map(|b| b.to_string()).collect())),
            _ => t.to_i64_vec().map(|v| list(v.into_iter().map(|x| x.to_string()).collect())),
        };
        if let Ok(s) = s {
            return s;
        }
    }
    format!("<{n} values, fnv {:016x}>", t.digest())
}

fn tensor_type(t: &Tensor) -> String {
    let dims: Vec<String> = t.dims().iter().map(|d| d.to_string()).collect();
    let dt = t.dtype().map(|d| d.to_string()).unwrap_or_else(|| format!("type{}", t.proto().data_type()));
    format!("{dt}[{}]", dims.join(","))
}

fn attr_value(a: &AttributeProto, max: usize) -> String {
    if let Some(var) = a.ref_attr_name.as_deref().filter(|r| !r.is_empty()) {
        return format!("${}", quote_name(var));
    }
    let list = |items: Vec<String>| format!("[{}]", items.join(","));
    match a.kind() {
        AttributeType::Int => a.i().to_string(),
        AttributeType::Float => fmt_f32(a.f()),
        AttributeType::String => format!("{:?}", String::from_utf8_lossy(a.s())),
        AttributeType::Ints if a.ints.is_empty() => "ints[]".into(),
        AttributeType::Ints => list(a.ints.iter().map(|x| x.to_string()).collect()),
        AttributeType::Floats if a.floats.is_empty() => "floats[]".into(),
        AttributeType::Floats => list(a.floats.iter().map(|&x| fmt_f32(x)).collect()),
        AttributeType::Strings => list(a.strings.iter().map(|s| format!("{:?}", String::from_utf8_lossy(s))).collect()),
        AttributeType::Tensor => match a.as_tensor() {
            Some(t) => format!("tensor({} = {})", tensor_type(&t), tensor_data(&t, max)),
            None => "tensor(?)".into(),
        },
        AttributeType::Graph => {
            let g = a.g.as_ref();
            format!(
                "graph({}, {} nodes)",
                quote_name(g.map(|g| g.name()).unwrap_or("")),
                g.map(|g| g.node.len()).unwrap_or(0)
            )
        }
        AttributeType::Graphs => format!("graphs({})", a.graphs.len()),
        AttributeType::Tensors => format!("tensors({})", a.tensors.len()),
        other => format!("<{}>", other.as_str_name().to_ascii_lowercase()),
    }
}

impl Graph {
    /// The `%name` / `@name` reference to a value.
    pub fn value_ref(&self, v: ValueId) -> String {
        let sigil = if self.value(v).def() == ValueDef::Initializer { '@' } else { '%' };
        format!("{sigil}{}", quote_name(self.value_name(v)))
    }

    fn type_str(&self, v: ValueId) -> String {
        self.type_info(v).map(|t| t.to_string()).unwrap_or_else(|| "?".into())
    }

    /// The text line of one node (no indentation, no newline).
    pub fn node_line(&self, n: NodeId, opts: &PrintOptions) -> String {
        let node = self.node(n);
        let mut s = String::new();
        let outs: Vec<String> =
            node.outputs().iter().map(|o| o.map(|v| self.value_ref(v)).unwrap_or_else(|| "_".into())).collect();
        if !outs.is_empty() {
            let _ = write!(s, "{} = ", outs.join(", "));
        }
        if !node.domain().is_empty() {
            let _ = write!(s, "{}::", quote_name(node.domain()));
        }
        let ins: Vec<String> =
            node.inputs().iter().map(|i| i.map(|v| self.value_ref(v)).unwrap_or_else(|| "_".into())).collect();
        let _ = write!(s, "{}({})", quote_name(node.op_type()), ins.join(", "));
        if !node.attrs().is_empty() {
            let attrs: Vec<String> = node
                .attrs()
                .iter()
                .map(|a| format!("{}={}", quote_name(a.name()), attr_value(a, opts.max_elements)))
                .collect();
            let _ = write!(s, " {{{}}}", attrs.join(", "));
        }
        let known: Vec<Option<String>> =
            node.outputs().iter().map(|o| o.and_then(|v| self.type_info(v)).map(|t| t.to_string())).collect();
        if known.iter().any(Option::is_some) {
            let tys: Vec<String> = known.into_iter().map(|t| t.unwrap_or_else(|| "?".into())).collect();
            let _ = write!(s, " : {}", tys.join(", "));
        }
        if !node.name().is_empty() {
            let name = node.name();
            if name.chars().any(char::is_control) {
                let _ = write!(s, "  # {name:?}");
            } else {
                let _ = write!(s, "  # {name}");
            }
        }
        s
    }

    /// Writes the text form with the given options.
    pub fn write_text(&self, out: &mut impl Write, opts: &PrintOptions) -> fmt::Result {
        writeln!(out, "graph {} {{", quote_name(self.name()))?;
        for o in self.opset_imports() {
            let d = if o.domain().is_empty() { "ai.onnx" } else { o.domain() };
            writeln!(out, "  opset {} {}", quote_name(d), o.version())?;
        }
        for p in self.inputs() {
            if self.value(p.value).def() == ValueDef::Input {
                writeln!(out, "  input {}: {}", self.value_ref(p.value), self.type_str(p.value))?;
            }
        }
        if opts.initializers {
            for &v in self.initializers() {
                if let Some(t) = self.initializer(v) {
                    let overridable = if self.is_graph_input(v) { " (input)" } else { "" };
                    writeln!(
                        out,
                        "  init {}: {} = {}{overridable}",
                        self.value_ref(v),
                        tensor_type(t),
                        tensor_data(t, opts.max_elements)
                    )?;
                }
            }
        }
        for n in self.nodes() {
            writeln!(out, "  {}", self.node_line(n, opts))?;
        }
        for p in self.outputs() {
            writeln!(out, "  output {}: {}", self.value_ref(p.value), self.type_str(p.value))?;
        }
        writeln!(out, "}}")
    }
}

/// The text form with custom options.
pub fn print_graph(g: &Graph, opts: &PrintOptions) -> String {
    let mut s = String::new();
    let _ = g.write_text(&mut s, opts);
    s
}

impl fmt::Display for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_text(f, &PrintOptions::default())
    }
}
