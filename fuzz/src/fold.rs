//! `fold`: small generated graphs ([`crate::graphs`]) through the passes
//! of `pipelines/fold.yaml`, as `qforge run fold --check-numerics` runs them.
//!
//! Oracle: no panic, no hang; a graph the verifier accepts comes out of the
//! pipeline verified after every pass, computes the same outputs on random
//! inputs (tract, 1e-5 relative, when tract can run the input model at all),
//! and exports to a model that imports and verifies again. A graph the
//! verifier refuses is refused (the CLI stops there too). Pass errors on a
//! valid graph (a BatchNormalization with the wrong channel count) are
//! rejections, not findings; a failed numeric check, a verifier error after
//! a pass, or an engine that runs the input but not the output are findings.

use std::path::Path;

use prost::Message;
use qforge_ir::{Model, export, import_bytes, parse_graph, verify};
use qforge_passes::{ManagerOptions, NumericsOptions, PassContext, PassError, PassManager, Pipeline};
use qforge_runtime::Engine;

use crate::{Outcome, Rng, Target, graphs};

/// The bound on one tensor in a fold case: generated graphs are tiny, so a
/// bigger tensor means a huge scale or pad, refused before any engine runs.
pub const MAX_TENSOR_BYTES: u64 = 16 << 20;

/// The `fold` target.
pub struct Fold {
    checked: PassManager,
    plain: PassManager,
    /// `infer-shapes` alone, unverified: some invalid attributes (a Concat
    /// axis, a Conv's channels) only show once shapes are known.
    shapes: PassManager,
}

impl Fold {
    /// Loads `pipelines/fold.yaml` from the workspace at `root`.
    pub fn new(root: &Path) -> Result<Fold, String> {
        let path = root.join("pipelines/fold.yaml");
        let p = Pipeline::load(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let numerics =
            NumericsOptions { engine: Some(Engine::Tract), max_tensor_bytes: MAX_TENSOR_BYTES, ..Default::default() };
        let checked = PassManager::new(&p, ManagerOptions { check_numerics: Some(numerics), ..Default::default() })
            .map_err(|e| e.to_string())?;
        let plain = PassManager::new(&p, ManagerOptions::default()).map_err(|e| e.to_string())?;
        let shapes = Pipeline::from_names(&["infer-shapes"]).map_err(|e| e.to_string())?;
        let shapes = PassManager::new(&shapes, ManagerOptions { verify: false, ..Default::default() })
            .map_err(|e| e.to_string())?;
        Ok(Fold { checked, plain, shapes })
    }

    /// Runs the oracle on one graph in the text IR.
    pub fn check_text(&self, text: &str) -> Result<Outcome, String> {
        let g = parse_graph(text).map_err(|e| format!("a generated graph does not parse: {e}"))?;
        if verify(&g).is_err() {
            return Ok(Outcome::Rejected);
        }
        let cx = || PassContext { quiet: true, ..Default::default() };
        // Invalid once the shapes are known (Concat axis 7 of a rank-4
        // tensor): the input's fault, not a pass's.
        let mut shaped = g.clone();
        if self.shapes.run(&mut shaped, &mut cx()).is_err() || verify(&shaped).is_err() {
            return Ok(Outcome::Rejected);
        }
        let mut out = g.clone();
        let outcome = match self.checked.run(&mut out, &mut cx()) {
            Ok(_) => Outcome::Accepted,
            Err(PassError::Runtime { context, .. }) if context.contains("input model") => {
                // The engine cannot run the input (or it is too big to): the
                // passes still must not break it.
                out = g.clone();
                match self.plain.run(&mut out, &mut cx()) {
                    Ok(_) => Outcome::Rejected,
                    Err(e @ PassError::Verify { .. }) => return Err(e.to_string()),
                    Err(_) => return Ok(Outcome::Rejected),
                }
            }
            Err(e @ (PassError::Numerics { .. } | PassError::Verify { .. } | PassError::Runtime { .. })) => {
                return Err(e.to_string());
            }
            Err(_) => return Ok(Outcome::Rejected),
        };
        let bytes = export(&Model::new(out)).encode_to_vec();
        let again = import_bytes(&bytes, None).map_err(|e| format!("the folded model does not import: {e}"))?;
        verify(&again.graph).map_err(|e| format!("the folded model does not verify after export and import: {e}"))?;
        Ok(outcome)
    }
}

impl Target for Fold {
    fn name(&self) -> &'static str {
        "fold"
    }
    fn ext(&self) -> &'static str {
        "ir"
    }
    fn generate(&self, rng: &mut Rng) -> Vec<u8> {
        graphs::generate(rng).into_bytes()
    }
    fn execute(&self, input: &[u8]) -> Result<Outcome, String> {
        let text = std::str::from_utf8(input).map_err(|e| format!("a generated graph is not UTF-8: {e}"))?;
        self.check_text(text)
    }
}
