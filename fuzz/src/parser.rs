//! `parser`: the text IR parser on mutated printer output.
//!
//! Seeds: the printer's output of every snapshot case, of the fixtures and
//! of generated graphs (all data printed, so it can be read back).
//!
//! Oracle: no panic, no hang; text that parses prints to text that parses
//! to the same graph (print → parse → print is a fixed point); the verifier,
//! the exporter and the fragment parser never panic on what the parser
//! accepts or refuses.

use std::path::Path;

use prost::Message;
use qforge_ir::{Model, PrintOptions, export, parse_fragment, parse_graph, print_graph};

use crate::{Outcome, Rng, Target, graphs, import::ir_cases, mutate, seed_files};

/// Printer options that print every tensor in full (the elided form
/// `<N values, …>` is for reading, not for parsing back).
pub fn full() -> PrintOptions {
    PrintOptions { max_elements: usize::MAX, initializers: true }
}

/// Tokens of the text IR a mutation inserts.
const TOKENS: &[&str] = &[
    "%",
    "@",
    "{",
    "}",
    "[",
    "]",
    "(",
    ")",
    ",",
    "=",
    ":",
    "_",
    "#",
    "//",
    "\"",
    "\\",
    "$",
    "?",
    "-",
    ".",
    "::",
    " ",
    "\n",
    "\t",
    "graph",
    "input",
    "output",
    "init",
    "opset",
    "ai.onnx",
    "f32",
    "f16",
    "i64",
    "i8",
    "u8",
    "bool",
    "string",
    "rand(",
    "fill(",
    "rand(1)",
    "fill(0.5)",
    "nan",
    "inf",
    "1e999",
    "é",
    "\u{0}",
    "\u{feff}",
    "…",
    "<3 values, fnv 1234>",
    "[]",
    "[,]",
    "[1,]",
    "=[]",
    "{}",
    "%x",
    "@w",
    "Conv",
    "Relu",
    "com.microsoft::",
    "$k",
    "kernel_shape=",
    "pads=",
    "\"str\"",
    "[\"a\",\"b\"]",
    "[1.5,2]",
    "tensor(",
    "batch",
    "?",
];

/// The `parser` target.
pub struct Parser {
    seeds: Vec<String>,
}

impl Parser {
    /// Reads the seeds from the workspace at `root`.
    pub fn new(root: &Path) -> Result<Parser, String> {
        let mut seeds = Vec::new();
        let generated = (0..16).map(|i| graphs::generate(&mut Rng::new(i)));
        for text in ir_cases(root).into_iter().chain(generated) {
            if let Ok(g) = parse_graph(&text) {
                seeds.push(print_graph(&g, &full()));
            }
            // The case files themselves: comments, `# name` tails, options lines.
            seeds.push(text);
        }
        for p in seed_files(root, "tests/fixtures", "onnx") {
            if let Ok(m) = qforge_ir::load(&p) {
                seeds.push(print_graph(&m.graph, &full()));
            }
        }
        if seeds.is_empty() {
            return Err(format!("no text IR seeds under {}/tests/passes", root.display()));
        }
        Ok(Parser { seeds })
    }
}

/// The round-trip oracle on a parsed graph.
pub fn round_trip(g: &qforge_ir::Graph) -> Result<(), String> {
    let _ = qforge_ir::verify::check(g);
    let text = print_graph(g, &full());
    let again = parse_graph(&text).map_err(|e| format!("the printer's output does not parse: {e}\n{text}"))?;
    let text2 = print_graph(&again, &full());
    if text2 != text {
        return Err(format!("print → parse → print changed the text:\n{text}\n---\n{text2}"));
    }
    // Stricter, and not yet true: both graphs export to the same bytes. An
    // output declared `: ?` (a type with nothing known) prints like one
    // declared without a type, so the bytes can differ; see the README's
    // fuzzing notes.
    let _ = (export(&Model::new(g.clone())).encode_to_vec(), export(&Model::new(again)).encode_to_vec());
    Ok(())
}

impl Target for Parser {
    fn name(&self) -> &'static str {
        "parser"
    }
    fn ext(&self) -> &'static str {
        "ir"
    }
    fn generate(&self, rng: &mut Rng) -> Vec<u8> {
        let seed = rng.pick(&self.seeds);
        if rng.one_in(8) {
            seed.clone().into_bytes()
        } else {
            mutate::text(rng, seed, TOKENS, &self.seeds).into_bytes()
        }
    }
    fn execute(&self, input: &[u8]) -> Result<Outcome, String> {
        let Ok(text) = std::str::from_utf8(input) else { return Ok(Outcome::Rejected) };
        match parse_graph(text) {
            Ok(g) => round_trip(&g).map(|_| Outcome::Accepted),
            Err(_) => {
                // What the rewrite rules parse: node lines alone.
                let body: String = text.lines().filter(|l| l.contains('=')).collect::<Vec<_>>().join("\n");
                if let Ok(f) = parse_fragment(&body) {
                    let _ = qforge_ir::verify::check(&f.graph);
                    let _ = f.graph.to_string();
                }
                Ok(Outcome::Rejected)
            }
        }
    }
}
