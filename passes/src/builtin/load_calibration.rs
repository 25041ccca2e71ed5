//! a calibration table file (qforge JSON or TensorRT cache) => the ranges of the pass context (graph unchanged).
//!
//! Calibration is the slow step; this lets a pipeline reuse a table that
//! `calibrate` wrote earlier (`json:`), or import the ranges of another
//! tool's TensorRT calibration cache. Loaded ranges carry no histograms, so
//! tensors that must share a scale take the largest of their amaxes.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use qforge_ir::Graph;

use crate::calibrate::table::CalibrationTable;
use crate::{Pass, PassContext, PassError, PassOptions, PassReport, register_pass};

/// Options of `load-calibration`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoadCalibration {
    /// The table: a `calibrate` JSON file or a TensorRT calibration cache.
    pub path: Option<PathBuf>,
    /// Fail when the file names tensors the model does not have.
    pub strict: bool,
}

impl PassOptions for LoadCalibration {
    const DOCS: &'static [(&'static str, &'static str)] = &[
        ("path", "calibration table: JSON written by calibrate, or a TensorRT cache (TRT-…-EntropyCalibration2)"),
        ("strict", "fail when the file names tensors the model does not have (default false: report them)"),
    ];
}

register_pass!("load-calibration", LoadCalibration, "calibration file => ranges in the pass context (graph unchanged)");

impl Pass for LoadCalibration {
    fn run(&self, g: &mut Graph, cx: &mut PassContext) -> Result<PassReport, PassError> {
        let path = self.path.as_ref().ok_or_else(|| PassError::msg("set load-calibration.path"))?;
        let (table, unknown) = CalibrationTable::read(path, g).map_err(PassError::msg)?;
        if self.strict && !unknown.is_empty() {
            return Err(PassError::msg(format!(
                "{}: {} tensor(s) are not in the model, first: {}",
                path.display(),
                unknown.len(),
                unknown[0]
            )));
        }
        let mut r = PassReport::default();
        r.info("tensors", table.tensors.len() as u64);
        r.info("weights", table.weights.len() as u64);
        if !unknown.is_empty() {
            r.info("unknown names", unknown.len() as u64);
            r.note(format!(
                "{} name(s) in {} are not in the model, first: {}",
                unknown.len(),
                path.display(),
                unknown[0]
            ));
        }
        cx.ext.insert(table);
        Ok(r)
    }
}
