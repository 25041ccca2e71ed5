//! a Q/DQ graph => the same graph, checked against TensorRT's explicit-quantization rules, plus artifacts and (where TensorRT is installed) the engine.
//!
//! The last pass of a TensorRT pipeline. It fails on anything TensorRT
//! would refuse (see [`legality`]), reports Q/DQ TensorRT cannot use and
//! which layers will run INT8 / FP16 / FP32, writes a TensorRT calibration
//! cache on request (for implicit-quantization flows, TensorRT ≤ 10), and
//! records the engine build, which runs once the ONNX file is saved
//! ([`build::EngineBuild`]).

pub mod build;
pub mod legality;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use qforge_ir::Graph;

use crate::calibrate::table::write_atomic;
use crate::{Pass, PassContext, PassError, PassOptions, PassReport, Tolerance, register_pass};

/// When to build the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildMode {
    /// Build when `trtexec` is found, else print the command.
    Auto,
    /// Build, and fail when TensorRT is not available.
    Required,
    /// Never build.
    Never,
}

/// Options of `tensorrt`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TensorRt {
    /// Write a TensorRT calibration cache beside the output (`<output>.cache`).
    pub calib_cache: bool,
    /// Version in the cache header.
    pub cache_version: String,
    /// Engine build: auto, required or never.
    pub build: BuildMode,
    /// Path of `trtexec` (default: search PATH).
    pub trtexec: Option<PathBuf>,
    /// Engine file (default: the output with `.engine`).
    pub engine: Option<PathBuf>,
    /// Build with `--stronglyTyped` (TensorRT 10+) instead of `--int8 --fp16`.
    pub strongly_typed: bool,
    /// `--timingCacheFile` for faster rebuilds.
    pub timing_cache: Option<PathBuf>,
    /// More trtexec arguments.
    pub extra_args: Vec<String>,
    /// Fail on rule violations (false: report them and go on).
    pub strict: bool,
}

impl Default for TensorRt {
    fn default() -> Self {
        TensorRt {
            calib_cache: false,
            cache_version: "8601".into(),
            build: BuildMode::Auto,
            trtexec: None,
            engine: None,
            strongly_typed: false,
            timing_cache: None,
            extra_args: Vec::new(),
            strict: true,
        }
    }
}

impl PassOptions for TensorRt {
    const DOCS: &'static [(&'static str, &'static str)] = &[
        ("calib_cache", "write a TensorRT calibration cache <output>.cache from the calibration table (default false)"),
        ("cache_version", "version in the cache header TRT-<version>-EntropyCalibration2 (default 8601)"),
        ("build", "engine build: auto (when trtexec is found, default) | required | never"),
        ("trtexec", "path of trtexec (default: search PATH)"),
        ("engine", "engine file (default: the output model with .engine)"),
        ("strongly_typed", "build with --stronglyTyped (TensorRT 10+) instead of --int8 --fp16 (default false)"),
        ("timing_cache", "--timingCacheFile for faster rebuilds"),
        ("extra_args", "more trtexec arguments"),
        ("strict", "fail on rule violations (default true)"),
    ];
}

register_pass!(
    "tensorrt",
    TensorRt,
    "Q/DQ graph => the same graph checked against TensorRT's explicit-quantization rules, cache and engine build"
);

impl Pass for TensorRt {
    fn tolerance(&self) -> Tolerance {
        Tolerance::Approximate
    }

    fn run(&self, g: &mut Graph, cx: &mut PassContext) -> Result<PassReport, PassError> {
        let mut r = PassReport::default();
        let fp16 = !self.strongly_typed
            || g.nodes()
                .any(|n| g.node(n).outputs().iter().flatten().any(|&v| g.dtype(v) == Some(qforge_ir::DataType::F16)));
        let l = legality::check(g, fp16);
        for (p, n) in &l.precisions {
            r.info(&format!("{p} layers"), *n as u64);
        }
        if !l.float_layers.is_empty() {
            let shown: Vec<&str> = l.float_layers.iter().take(6).map(String::as_str).collect();
            r.note(format!(
                "weighted layers not in INT8: {}{}",
                shown.join(", "),
                if l.float_layers.len() > shown.len() {
                    format!(" … ({} in all)", l.float_layers.len())
                } else {
                    String::new()
                }
            ));
        }
        if !l.warnings.is_empty() {
            r.info("unfusable Q/DQ", l.warnings.len() as u64);
            for w in l.warnings.iter().take(5) {
                r.note(w.clone());
            }
        }
        if !l.errors.is_empty() {
            if self.strict {
                return Err(PassError::msg(format!(
                    "{} TensorRT rule violation(s): {}",
                    l.errors.len(),
                    l.errors.join("; ")
                )));
            }
            r.info("rule violations", l.errors.len() as u64);
            for e in &l.errors {
                r.note(format!("violation: {e}"));
            }
        }
        if self.calib_cache {
            let table = cx.calibration.as_ref().ok_or_else(|| {
                PassError::msg("calib_cache needs a calibration table: run calibrate or load-calibration first")
            })?;
            let out = cx.output_path.as_ref().ok_or_else(|| PassError::msg("calib_cache needs an output path"))?;
            let path = out.with_extension("cache");
            write_atomic(&path, &table.to_trt_cache(g, &self.cache_version)).map_err(PassError::msg)?;
            r.note(format!("wrote {}", path.display()));
        }
        if self.build != BuildMode::Never {
            cx.engine_build = Some(build::EngineBuild {
                trtexec: self.trtexec.clone(),
                engine: self.engine.clone(),
                strongly_typed: self.strongly_typed,
                timing_cache: self.timing_cache.clone(),
                extra_args: self.extra_args.clone(),
                required: self.build == BuildMode::Required,
            });
        }
        Ok(r)
    }
}
