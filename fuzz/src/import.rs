//! `import`: mutated bytes of real small models into `qforge_ir::import_bytes`.
//!
//! Seeds: `tests/fixtures/*.onnx` and `all_fields.pb` (every ModelProto
//! field set), every snapshot case `tests/passes/*/*.ir` and a few generated
//! graphs, exported. Mutations: bit flips, truncation, splicing, and
//! protobuf-aware ones (a varint field set to an edge value, a length
//! prefix changed, a field dropped, duplicated or taken from another model).
//!
//! Oracle: no panic, no hang; a model that imports prints, verifies (either
//! way), exports, and imports again to the same text and the same bytes
//! (export is deterministic and import of our own output is lossless).

use std::path::Path;

use prost::Message;
use qforge_ir::{Model, PrintOptions, export, import_bytes, print_graph, verify};

use crate::{Outcome, Rng, Target, graphs, mutate, seed_files};

/// The `import` target.
pub struct Import {
    seeds: Vec<Vec<u8>>,
}

/// Every snapshot case in `tests/passes/*/*.ir`, as text.
pub(crate) fn ir_cases(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs: Vec<_> = std::fs::read_dir(root.join("tests/passes"))
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()).collect())
        .unwrap_or_default();
    dirs.sort();
    for d in dirs {
        let rel = d.strip_prefix(root).unwrap_or(&d).to_string_lossy().into_owned();
        for f in seed_files(root, &rel, "ir") {
            if let Ok(t) = std::fs::read_to_string(f) {
                out.push(t);
            }
        }
    }
    out
}

impl Import {
    /// Reads the seeds from the workspace at `root`.
    pub fn new(root: &Path) -> Result<Import, String> {
        let mut seeds: Vec<Vec<u8>> = Vec::new();
        for p in seed_files(root, "tests/fixtures", "onnx").into_iter().chain(seed_files(root, "tests/fixtures", "pb"))
        {
            seeds.push(std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?);
        }
        let generated = (0..16).map(|i| graphs::generate(&mut Rng::new(i)));
        for text in ir_cases(root).into_iter().chain(generated) {
            if let Ok(g) = qforge_ir::parse_graph(&text) {
                seeds.push(export(&Model::new(g)).encode_to_vec());
            }
        }
        if seeds.is_empty() {
            return Err(format!("no seed models in {}/tests/fixtures", root.display()));
        }
        Ok(Import { seeds })
    }
}

impl Target for Import {
    fn name(&self) -> &'static str {
        "import"
    }
    fn ext(&self) -> &'static str {
        "onnx"
    }
    fn generate(&self, rng: &mut Rng) -> Vec<u8> {
        let seed = rng.pick(&self.seeds);
        if rng.one_in(16) { seed.clone() } else { mutate::bytes(rng, seed, &self.seeds) }
    }
    fn execute(&self, input: &[u8]) -> Result<Outcome, String> {
        let Ok(model) = import_bytes(input, None) else { return Ok(Outcome::Rejected) };
        let full = PrintOptions { max_elements: 64, initializers: true };
        let text = print_graph(&model.graph, &full);
        let verdict = verify(&model.graph).map_err(|e| e.to_string());
        let valid = verdict.is_ok();
        // Export completes a graph input/output declared without an element
        // type from what is known of its value (`derive_declared_types`):
        // a model invalid only for that may come back valid, by design.
        let repairable = verdict.as_ref().err().is_some_and(|e| {
            e.lines()
                .filter(|l| l.trim_start().starts_with("- "))
                .all(|l| l.contains("[types] graph ") && l.contains("without an element type"))
        });
        let bytes = export(&model).encode_to_vec();
        let again = import_bytes(&bytes, None).map_err(|e| format!("the exported model does not import again: {e}"))?;
        if print_graph(&again.graph, &full) != text {
            return Err("export then import changed the graph's text".into());
        }
        let valid_again = verify(&again.graph).is_ok();
        if valid_again != valid && !(repairable && valid_again) {
            return Err("export then import changed what the verifier says".into());
        }
        if export(&again).encode_to_vec() != bytes {
            return Err("export is not stable: exporting the re-imported model gives other bytes".into());
        }
        Ok(if valid { Outcome::Accepted } else { Outcome::Rejected })
    }
}
