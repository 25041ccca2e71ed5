//! a Q/DQ graph => the same graph, checked against TensorRT's explicit-quantization rules, plus artifacts and (where TensorRT is installed) the engine.
//!
//! The last pass of a TensorRT pipeline. It fails on anything TensorRT
//! would refuse (see [`legality`]), reports Q/DQ TensorRT cannot use and
//! which layers will run INT8 / FP16 / FP32, writes a TensorRT calibration
//! cache on request (for implicit-quantization flows, TensorRT ≤ 10), and
//! records the engine build, which runs once the ONNX file is saved
//! ([`build::EngineBuild`]).

pub mod build;
pub mod fusion;
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

/// The TensorRT release the model is for: it decides the graph form the
/// pass expects, the legality rules and the trtexec command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// TensorRT 8.6: implicit precisions; the float rest may be FP32 and the
    /// build asks for `--int8 --fp16`; ONNX opset at most 17.
    #[serde(rename = "8.6")]
    Trt86,
    /// TensorRT 10: a strongly typed build (`--stronglyTyped`): each layer
    /// runs in the precision the graph gives it.
    #[serde(rename = "10")]
    Trt10,
    /// TensorRT 11: every network is strongly typed; trtexec has no
    /// precision flags any more.
    #[serde(rename = "11")]
    Trt11,
}

impl Target {
    /// The major version, as trtexec reports it.
    pub fn major(self) -> u32 {
        match self {
            Target::Trt86 => 8,
            Target::Trt10 => 10,
            Target::Trt11 => 11,
        }
    }

    /// Whether the build takes every precision from the graph.
    pub fn strongly_typed(self) -> bool {
        self != Target::Trt86
    }
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
    /// The TensorRT release: `"8.6"`, `"10"` (default) or `"11"`.
    pub version: Target,
    /// Deprecated: `true` is `version: "10"`, `false` is `version: "8.6"`.
    pub strongly_typed: Option<bool>,
    /// `--timingCacheFile` for faster rebuilds.
    pub timing_cache: Option<PathBuf>,
    /// More trtexec arguments.
    pub extra_args: Vec<String>,
    /// Fail on rule violations (false: report them and go on).
    pub strict: bool,
    /// Also fail on Q/DQ the fusion prediction says TensorRT will not fuse.
    pub strict_fusion: bool,
    /// Write the per-layer fusion prediction here (relative: beside the output).
    pub fusion_report: Option<PathBuf>,
}

impl Default for TensorRt {
    fn default() -> Self {
        TensorRt {
            calib_cache: false,
            cache_version: "8601".into(),
            build: BuildMode::Auto,
            trtexec: None,
            engine: None,
            version: Target::Trt10,
            strongly_typed: None,
            timing_cache: None,
            extra_args: Vec::new(),
            strict: true,
            strict_fusion: false,
            fusion_report: None,
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
        (
            "version",
            "TensorRT release: \"8.6\" (FP32 rest, --int8 --fp16, opset <= 17) | \"10\" (default: strongly typed, --stronglyTyped) | \"11\" (strongly typed, no precision flags); checked against trtexec --version when trtexec is here",
        ),
        ("strongly_typed", "deprecated: true = version \"10\", false = version \"8.6\""),
        ("timing_cache", "--timingCacheFile for faster rebuilds"),
        ("extra_args", "more trtexec arguments"),
        ("strict", "fail on rule violations (default true)"),
        (
            "strict_fusion",
            "also fail when the fusion prediction finds Q/DQ TensorRT will not fuse or a forced INT8/float reformat (default false: report them)",
        ),
        (
            "fusion_report",
            "write the per-layer fusion prediction (INT8 output, fused epilogue, findings with the guide's rule) to this file, relative paths beside the output",
        ),
    ];
}

register_pass!(
    "tensorrt",
    TensorRt,
    "Q/DQ graph => the same graph checked against TensorRT's explicit-quantization rules, cache and engine build"
);

impl TensorRt {
    /// The target, the deprecated `strongly_typed` flag deciding when set.
    pub fn target(&self) -> Target {
        match self.strongly_typed {
            Some(true) if self.version == Target::Trt86 => Target::Trt10,
            Some(false) => Target::Trt86,
            _ => self.version,
        }
    }
}

impl Pass for TensorRt {
    fn tolerance(&self) -> Tolerance {
        Tolerance::Approximate
    }

    fn run(&self, g: &mut Graph, cx: &mut PassContext) -> Result<PassReport, PassError> {
        let mut r = PassReport::default();
        let target = self.target();
        let has_fp16 = g
            .nodes()
            .any(|n| g.node(n).outputs().iter().flatten().any(|&v| g.dtype(v) == Some(qforge_ir::DataType::F16)));
        let fp16 = !target.strongly_typed() || has_fp16;
        let mut l = legality::check(g, fp16);
        let opset = g.opset("").unwrap_or(1);
        if target == Target::Trt86 {
            if opset > 17 {
                l.errors.push(format!("opset {opset}: TensorRT 8.6 parses ONNX opsets up to 17"));
            }
            if has_fp16 {
                l.errors.push(
                    "the graph computes in float16: TensorRT 8.6 builds precisions itself (--fp16); \
                     drop to-fp16 or target version 10"
                        .into(),
                );
            }
        } else if !has_fp16 && g.nodes().any(|n| g.node(n).is_op("QuantizeLinear")) {
            r.note(format!(
                "TensorRT {}: a strongly typed build runs every float layer in the graph's precision, here FP32 \
                 (slower than FP16): add to-fp16 before tensorrt, or target version \"8.6\"",
                target.major()
            ));
        }
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
        let fusion = fusion::predict(g);
        let int8_out = fusion.layers.iter().filter(|l| l.output == fusion::Output::Int8).count();
        r.info("layers with INT8 output", int8_out as u64);
        r.info("unfused Q/DQ or reformats", fusion.findings.len() as u64);
        for f in fusion.findings.iter().take(5) {
            r.note(format!("fusion: {f}"));
        }
        if fusion.findings.len() > 5 {
            r.note(format!(
                "fusion: … {} finding(s) in all{}",
                fusion.findings.len(),
                if self.fusion_report.is_none() { " (tensorrt.fusion_report: FILE lists them)" } else { "" }
            ));
        }
        if let Some(path) = &self.fusion_report {
            let path = match (&cx.output_path, path.is_relative()) {
                (Some(out), true) => out.parent().unwrap_or(std::path::Path::new(".")).join(path),
                _ => path.clone(),
            };
            write_atomic(&path, &fusion.to_text()).map_err(PassError::msg)?;
            r.note(format!("wrote {}", path.display()));
        }
        if self.strict_fusion && !fusion.findings.is_empty() {
            let shown: Vec<String> = fusion.findings.iter().take(3).map(|f| f.to_string()).collect();
            return Err(PassError::msg(format!(
                "strict_fusion: {} Q/DQ TensorRT will not fuse or reformat(s): {}{}",
                fusion.findings.len(),
                shown.join("; "),
                if fusion.findings.len() > 3 { "; …" } else { "" }
            )));
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
            let table = cx.ext.get::<crate::calibrate::table::CalibrationTable>().ok_or_else(|| {
                PassError::msg("calib_cache needs a calibration table: run calibrate or load-calibration first")
            })?;
            let out = cx.output_path.as_ref().ok_or_else(|| PassError::msg("calib_cache needs an output path"))?;
            let path = out.with_extension("cache");
            write_atomic(&path, &table.to_trt_cache(g, &self.cache_version)).map_err(PassError::msg)?;
            r.note(format!("wrote {}", path.display()));
        }
        if self.build != BuildMode::Never {
            let build = build::EngineBuild {
                trtexec: self.trtexec.clone(),
                engine: self.engine.clone(),
                target,
                timing_cache: self.timing_cache.clone(),
                extra_args: self.extra_args.clone(),
                required: self.build == BuildMode::Required,
            };
            // The build needs the ONNX file: the caller that writes it runs this.
            let quiet = cx.quiet;
            cx.after_save.push(crate::AfterSave::new("tensorrt: engine build", move |onnx| {
                let out = build.run(onnx, quiet)?;
                if out.built && !quiet {
                    println!(
                        "engine built: {} (throughput {} qps, mean latency {} ms)",
                        out.command,
                        out.throughput_qps.map(|x| format!("{x:.1}")).unwrap_or_else(|| "?".into()),
                        out.latency_mean_ms.map(|x| format!("{x:.3}")).unwrap_or_else(|| "?".into())
                    );
                }
                Ok(())
            }));
        }
        Ok(r)
    }
}
