//! `calibrate`: float model + real data => per-tensor INT8 ranges (the graph is unchanged).
//!
//! Runs the model on calibration samples (a folder of photos, or `.npy`
//! tensors), streams every tensor that quantization will need into a
//! histogram ([`histogram`]), and turns each histogram into an amax with the
//! chosen method: `max`, `percentile`, `mse` or `entropy` (TensorRT's KL).
//! Weights get per-output-channel ranges without data. The result is the
//! [`table::CalibrationTable`] in the pass context, optionally written as JSON
//! and as a TensorRT calibration cache; `load-calibration` reads either back.

pub mod collect;
pub mod histogram;
pub mod report;
pub mod table;

use std::collections::BTreeMap;
use std::path::PathBuf;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use qforge_ir::{Dim, Graph};
use qforge_runtime::{Dataset, Engine, HostTensor, PadPosition, Preprocess, Source};

use self::collect::{CollectOptions, collect};
use self::histogram::{DEFAULT_NUM_BINS, DEFAULT_PERCENTILE, Method, compute_amax};
use self::table::{CalibrationTable, TensorRange, WeightRange, method_name, write_atomic};
use crate::qdq_rules::{WEIGHTED_OPS, activation_targets, all_float_activations, weight_and_axis};
use crate::{Pass, PassContext, PassError, PassOptions, PassReport, register_pass};

/// Range method names as written in YAML.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MethodName {
    /// Exact max |x|.
    Max,
    /// A percentile of |x| (`percentile` option).
    Percentile,
    /// The threshold with the least quantization MSE.
    Mse,
    /// TensorRT's entropy (KL) calibration.
    Entropy,
}

/// Which tensors to collect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TensorSet {
    /// What `insert-qdq` quantizes: inputs of weighted ops, residual Adds,
    /// and scale-sharing ops.
    Quantizable,
    /// Every float activation.
    All,
}

/// Where calibration data comes from and how images are preprocessed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataOptions {
    /// Folder of JPEG/PNG photos (searched recursively, sorted).
    pub images: Option<PathBuf>,
    /// A `.npy` file (one sample or a stack) or a folder of them, already preprocessed.
    pub npy: Option<PathBuf>,
    /// Use at most this many samples.
    pub limit: Option<usize>,
    /// With `limit`: pick a seeded random subset instead of the first ones.
    pub seed: Option<u64>,
    /// Go through the data this many times (benchmarks).
    pub repeat: usize,
    /// Hold every k-th photo/sample out of calibration, for analyses that
    /// judge the quantized model (`skip-sensitive`) on data it was not
    /// calibrated on. Default (none): automatic, every 4th when there are
    /// at least [`AUTO_HOLDOUT_MIN`] samples (before views), else none;
    /// 0 or 1: never.
    pub holdout: Option<usize>,
    /// Use four views of each photo (itself, mirrored, two 75 % crops).
    pub views: bool,
    /// `[height, width]` of the model input; fixes dynamic dims.
    pub size: Option<[usize; 2]>,
    /// Keep the aspect ratio and pad (true) or stretch.
    pub letterbox: bool,
    /// Letterbox padding value (0–255).
    pub pad_value: u8,
    /// Centre the letterboxed image (Ultralytics) instead of top-left.
    pub center: bool,
    /// Feed BGR instead of RGB.
    pub bgr: bool,
    /// Pixel multiplier (1/255).
    pub scale: f32,
    /// Per-channel mean subtracted after scaling.
    pub mean: [f32; 3],
    /// Per-channel std divided after the mean.
    pub std: [f32; 3],
    /// `nchw` or `nhwc`.
    pub layout: String,
}

impl Default for DataOptions {
    fn default() -> Self {
        DataOptions {
            images: None,
            npy: None,
            limit: None,
            seed: None,
            repeat: 1,
            holdout: None,
            views: false,
            size: None,
            letterbox: true,
            pad_value: 114,
            center: false,
            bgr: false,
            scale: 1.0 / 255.0,
            mean: [0.0; 3],
            std: [1.0; 3],
            layout: "nchw".into(),
        }
    }
}

/// With at least this many samples (photos before views), `calibrate`
/// holds every 4th out by default.
pub const AUTO_HOLDOUT_MIN: usize = 32;

/// Float outputs kept per calibration run, for analyses later in the pipeline.
const KEEP_OUTPUTS: usize = 64;

/// The data `calibrate` ran on, for analyses later in the pipeline
/// (`skip-sensitive`): they judge the quantized model on real samples
/// against the float model without running the float model again.
#[derive(Debug, Clone)]
pub struct CalibrationData {
    /// The samples the ranges come from.
    pub dataset: Dataset,
    /// Samples held out of calibration (`data.holdout`), if any.
    pub holdout: Option<Dataset>,
    /// The fixed input shape.
    pub shape: Vec<usize>,
    /// The float model's graph outputs on the first samples of `dataset`
    /// (`None` for a sample that was skipped or not kept).
    pub float_outputs: Vec<Option<Vec<HostTensor>>>,
}

/// Options of `calibrate`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Calibrate {
    /// The data (see [`DataOptions`]).
    pub data: DataOptions,
    /// Activation range method.
    pub method: MethodName,
    /// Percentile for `method: percentile`.
    pub percentile: f64,
    /// Histogram bins.
    pub bins: usize,
    /// Which tensors to calibrate.
    pub tensors: TensorSet,
    /// Per-channel weight ranges: `max` or `percentile`.
    pub weights: MethodName,
    /// Write the table as JSON here (relative paths: beside the output model).
    pub json: Option<PathBuf>,
    /// Write a TensorRT calibration cache here (relative paths: beside the output model).
    pub trt_cache: Option<PathBuf>,
    /// Version number in the cache header (`TRT-<version>-EntropyCalibration2`).
    pub trt_version: String,
    /// The engine that runs the model (default: the run's, `qforge run --engine`).
    pub engine: Option<Engine>,
}

impl Default for Calibrate {
    fn default() -> Self {
        Calibrate {
            data: DataOptions::default(),
            method: MethodName::Entropy,
            percentile: DEFAULT_PERCENTILE,
            bins: DEFAULT_NUM_BINS,
            tensors: TensorSet::Quantizable,
            weights: MethodName::Max,
            json: None,
            trt_cache: None,
            trt_version: "8601".into(),
            engine: None,
        }
    }
}

impl PassOptions for Calibrate {
    const DOCS: &'static [(&'static str, &'static str)] = &[
        (
            "data",
            "images: DIR | npy: FILE|DIR, limit, seed, repeat, views (false: 4 views per photo), holdout (auto: every 4th photo kept out of calibration for skip-sensitive when there are >= 32; 0: none), size: [h, w], letterbox (true), pad_value (114), center (false), bgr (false), scale (1/255), mean, std, layout (nchw)",
        ),
        ("method", "activation ranges: max | percentile | mse | entropy (default entropy)"),
        ("percentile", "percentile for method percentile (default 99.99)"),
        ("bins", "histogram bins (default 2048, as TensorRT)"),
        ("tensors", "quantizable (what insert-qdq needs, default) | all (every float activation)"),
        (
            "weights",
            "per-channel weight ranges: max (default) | percentile | mse (least rounding + clipping error per channel)",
        ),
        ("json", "write the calibration table as JSON to this file"),
        ("trt_cache", "write a TensorRT calibration cache to this file"),
        ("trt_version", "version in the cache header TRT-<version>-EntropyCalibration2 (default 8601)"),
        (
            "engine",
            "auto | tract | ort (ONNX Runtime); default: the run's --engine (auto: ONNX Runtime when found, else tract)",
        ),
    ];

    /// `--calib PATH`: `.npy` tensors (a file, or a folder holding some) or
    /// a folder of photos; the other source is cleared.
    const CALIB: Option<crate::CalibOverrides> = Some(|path| {
        let npy = path.extension().is_some_and(|e| e == "npy")
            || (path.is_dir()
                && std::fs::read_dir(path)
                    .map(|d| d.flatten().any(|e| e.path().extension().is_some_and(|x| x == "npy")))
                    .unwrap_or(false));
        let (set, clear) = if npy { ("npy", "images") } else { ("images", "npy") };
        let quoted = serde_json::to_string(&path.display().to_string()).unwrap_or_default();
        vec![format!("data.{set}={quoted}"), format!("data.{clear}=")]
    });
}

register_pass!("calibrate", Calibrate, "float model + calibration data => per-tensor INT8 ranges (graph unchanged)");

impl Calibrate {
    fn method(&self) -> Method {
        match self.method {
            MethodName::Max => Method::Max,
            MethodName::Percentile => Method::Percentile(self.percentile),
            MethodName::Mse => Method::Mse,
            MethodName::Entropy => Method::Entropy,
        }
    }

    /// The fixed input shape: declared dims, `--input-shape`, or dynamic
    /// dims filled from `data.size`, else from the model's metadata
    /// (batch 1).
    fn input_shape(&self, g: &Graph, cx: &PassContext) -> Result<Vec<usize>, PassError> {
        let inputs = g.runtime_inputs();
        let Some(&input) = inputs.first() else { return Err(PassError::msg("the model has no input to feed")) };
        let name = g.value_name(input);
        if let Some(s) = cx.input_shapes.get(name) {
            return Ok(s.clone());
        }
        let dims = g.type_info(input).and_then(|t| t.shape).ok_or_else(|| {
            PassError::msg(format!("input \"{name}\" has no declared shape; give --input-shape {name}=1,3,H,W"))
        })?;
        let nhwc = self.data.layout == "nhwc";
        let (hi, wi, ci) = if nhwc { (1, 2, 3) } else { (2, 3, 1) };
        let mut out = Vec::with_capacity(dims.rank());
        for (i, d) in dims.0.iter().enumerate() {
            let v = match d {
                Dim::Known(k) if *k > 0 => *k as usize,
                _ if i == 0 => 1,
                _ if dims.rank() == 4 && i == ci => 3,
                _ if dims.rank() == 4 && (i == hi || i == wi) => match self.data.size {
                    Some([h, w]) => {
                        if i == hi {
                            h
                        } else {
                            w
                        }
                    }
                    None => match cx.metadata_shapes.get(name) {
                        Some(s) if s.len() == dims.rank() => s[i],
                        _ => {
                            return Err(PassError::msg(format!(
                                "input \"{name}\" has dynamic dims {dims}; set calibrate.data.size: [H, W] or --input-shape {name}=1,3,H,W"
                            )));
                        }
                    },
                },
                _ => {
                    return Err(PassError::msg(format!(
                        "input \"{name}\" has dynamic dims {dims}; give --input-shape {name}=..."
                    )));
                }
            };
            out.push(v);
        }
        Ok(out)
    }

    /// The calibration set and, when there is one, the held-out set.
    fn dataset(&self, shape: &[usize]) -> Result<(Dataset, Option<Dataset>), PassError> {
        let d = &self.data;
        if !matches!(d.layout.as_str(), "nchw" | "nhwc") {
            return Err(PassError::msg(format!("data.layout must be nchw or nhwc, not {:?}", d.layout)));
        }
        let source = match (&d.images, &d.npy) {
            (Some(p), None) => Source::Images(p.clone()),
            (None, Some(p)) => Source::Npy(p.clone()),
            (Some(_), Some(_)) => return Err(PassError::msg("set only one of data.images and data.npy")),
            (None, None) => {
                return Err(PassError::msg(
                    "no calibration data: set calibrate.data.images (a folder of photos) or data.npy, e.g. --calib photos/",
                ));
            }
        };
        let prep = Preprocess {
            size: d.size,
            letterbox: d.letterbox,
            pad_value: d.pad_value,
            pad_position: if d.center { PadPosition::Center } else { PadPosition::TopLeft },
            bgr: d.bgr,
            scale: d.scale,
            mean: d.mean,
            std: d.std,
            nhwc: d.layout == "nhwc",
        };
        let mut ds = Dataset::open(&source, shape, &prep).map_err(|e| PassError::msg(e.to_string()))?;
        if let Some(n) = d.limit {
            ds.limit(n, d.seed);
        }
        // Split before the views: the four views of one photo stay on one side.
        let every = d.holdout.unwrap_or(if ds.len() >= AUTO_HOLDOUT_MIN { 4 } else { 0 });
        let mut held = (every >= 2).then(|| ds.split_every(every)).filter(|h| !h.is_empty());
        if d.views {
            ds.augment_views();
            if let Some(h) = held.as_mut() {
                h.augment_views();
            }
        }
        if ds.is_empty() {
            return Err(PassError::msg("no calibration sample left after the held-out split (data.holdout)"));
        }
        ds.repeat(d.repeat);
        Ok((ds, held))
    }
}

/// Per-channel amax of a weight tensor along `axis`.
pub fn weight_amax(w: &[f32], dims: &[i64], axis: usize, method: MethodName, percentile: f64) -> Vec<f32> {
    let c = dims.get(axis).copied().unwrap_or(1).max(1) as usize;
    let inner: usize = dims.iter().skip(axis + 1).map(|&d| d.max(1) as usize).product();
    let mut per: Vec<Vec<f32>> = vec![Vec::new(); c];
    for (i, &x) in w.iter().enumerate() {
        per[(i / inner) % c].push(x.abs());
    }
    use rayon::prelude::*;
    per.into_par_iter()
        .map(|mut v| match method {
            MethodName::Percentile if !v.is_empty() => {
                v.sort_by(f32::total_cmp);
                let k = ((percentile / 100.0) * (v.len() - 1) as f64).round() as usize;
                v[k.min(v.len() - 1)]
            }
            MethodName::Mse => mse_amax(&v),
            _ => v.into_iter().fold(0.0, f32::max),
        })
        .collect()
}

/// The symmetric INT8 range of one weight channel (`|w|` values) with the
/// least squared rounding-plus-clipping error: max |w| scaled by 1.00,
/// 0.99, …, 0.30, the first of equal errors kept (so the plain max wins a
/// tie). Weights are all there is of a weight, so this is exact for the
/// data it sees, unlike an activation's MSE on a histogram.
pub fn mse_amax(abs: &[f32]) -> f32 {
    let max = abs.iter().copied().filter(|x| x.is_finite()).fold(0.0f32, f32::max);
    if max <= 0.0 {
        return max;
    }
    let error = |amax: f32| -> f64 {
        let s = amax / 127.0;
        abs.iter()
            .filter(|x| x.is_finite())
            .map(|&x| {
                let d = ((x / s).round_ties_even().min(127.0) * s - x) as f64;
                d * d
            })
            .sum()
    };
    let mut best = (error(max), max);
    for k in 1..=70 {
        let amax = max * (1.0 - k as f32 / 100.0);
        let e = error(amax);
        if e < best.0 {
            best = (e, amax);
        }
    }
    best.1
}

impl Pass for Calibrate {
    fn run(&self, g: &mut Graph, cx: &mut PassContext) -> Result<PassReport, PassError> {
        if !matches!(self.weights, MethodName::Max | MethodName::Percentile | MethodName::Mse) {
            return Err(PassError::msg("weights must be max, percentile or mse"));
        }
        let started = std::time::Instant::now();
        let shape = self.input_shape(g, cx)?;
        let (data, holdout) = self.dataset(&shape)?;
        let listing = started.elapsed().as_secs_f64();
        let targets = match self.tensors {
            TensorSet::Quantizable => activation_targets(g),
            TensorSet::All => all_float_activations(g),
        };
        if targets.is_empty() {
            return Err(PassError::msg("nothing to calibrate: the model has no quantizable activation"));
        }
        let col = collect(
            g,
            &targets,
            &data,
            &shape,
            &CollectOptions {
                bins: self.bins,
                quiet: cx.quiet,
                engine: self.engine.unwrap_or(cx.engine),
                // Only for a pass after this one that compares against them.
                keep_outputs: if cx.float_outputs_later == Some(false) { 0 } else { KEEP_OUTPUTS },
            },
        )?;
        let method = self.method();
        let mut table = CalibrationTable {
            method: method_name(method),
            kind: Some(method),
            samples: col.samples,
            ..Default::default()
        };
        let mut zero = Vec::new();
        let (mut only_non_finite, mut nothing) = (Vec::new(), Vec::new());
        let (mut nan, mut inf) = (0u64, 0u64);
        let ranging = (std::time::Instant::now(), collect::process_cpu());
        // The searches (entropy, mse) cost tens of ms per tensor: run them in parallel.
        let amaxes: Vec<f32> = col.histograms.par_iter().map(|h| compute_amax(h, method)).collect();
        for ((&v, h), amax) in targets.iter().zip(col.histograms).zip(amaxes) {
            if col.not_float.contains(&v) {
                continue;
            }
            if h.is_empty() {
                // No finite value at all: the range below is a placeholder.
                let name = g.value_name(v).to_string();
                if h.nan_count() + h.inf_count() > 0 {
                    only_non_finite.push(format!("{name} ({} NaN, {} ±Inf)", h.nan_count(), h.inf_count()));
                } else {
                    nothing.push(name);
                }
            } else if amax == 0.0 {
                zero.push(g.value_name(v).to_string());
            }
            nan += h.nan_count();
            inf += h.inf_count();
            table.tensors.insert(v, TensorRange { amax, histogram: Some(h), samples: col.samples });
        }
        for n in g.nodes() {
            if !WEIGHTED_OPS.contains(&g.node(n).op_type()) {
                continue;
            }
            if let Some((w, axis)) = weight_and_axis(g, n)
                && let Some(t) = g.constant(w)
                && let Ok(data) = t.to_f32_vec()
            {
                let amax = weight_amax(&data, t.dims(), axis, self.weights, self.percentile);
                table.weights.insert(w, WeightRange { axis, amax });
            }
        }
        let ranges = (ranging.0.elapsed().as_secs_f64(), collect::process_cpu() - ranging.1);
        let mut r = PassReport::default();
        r.info("samples", col.samples);
        if let Some(h) = &holdout {
            r.info("held out", h.len() as u64);
            r.note(format!("{} sample(s) held out of calibration for evaluation (data.holdout)", h.len()));
        }
        r.info("tensors", table.tensors.len() as u64);
        r.info("weights", table.weights.len() as u64);
        r.note(format!(
            "{} samples in {:.1} s ({:.1} samples/s), method {}, engine {}",
            col.samples,
            col.seconds,
            col.samples as f64 / col.seconds.max(1e-9),
            table.method,
            self.engine.unwrap_or(cx.engine).describe()
        ));
        if !col.skipped.is_empty() {
            r.info("samples skipped", col.skipped.len() as u64);
            r.note(format!("skipped {} sample(s), first: {}", col.skipped.len(), col.skipped[0]));
        }
        if nan + inf > 0 {
            r.note(format!("{nan} NaN and {inf} infinite activation values were counted and left out of the ranges"));
        }
        if !only_non_finite.is_empty() {
            r.warn(format!(
                "{} tensor(s) saw only NaN/Inf on every sample, so their range is a placeholder \
                 (scale 1/127): {}",
                only_non_finite.len(),
                first_few(&only_non_finite)
            ));
        }
        if !nothing.is_empty() {
            r.warn(format!(
                "{} tensor(s) saw no value at all (empty on every sample), so their range is a placeholder \
                 (scale 1/127): {}",
                nothing.len(),
                first_few(&nothing)
            ));
        }
        if !zero.is_empty() {
            r.note(format!(
                "{} tensor(s) were zero on every sample (scale 1/127 is used), first: {}",
                zero.len(),
                zero[0]
            ));
        }
        let beside_output = |p: &PathBuf| -> PathBuf {
            match cx.output_path.as_ref().and_then(|o| o.parent()) {
                Some(dir) if p.is_relative() => dir.join(p),
                _ => p.clone(),
            }
        };
        if let Some(p) = self.json.as_ref().map(beside_output) {
            let text = serde_json::to_string_pretty(&table.to_json(g)).unwrap_or_default();
            write_atomic(&p, &text).map_err(PassError::msg)?;
            r.note(format!("wrote {}", p.display()));
        }
        if let Some(p) = self.trt_cache.as_ref().map(beside_output) {
            write_atomic(&p, &table.to_trt_cache(g, &self.trt_version)).map_err(PassError::msg)?;
            r.note(format!("wrote {}", p.display()));
        }
        let kept: Vec<&Vec<HostTensor>> = col.outputs.iter().flatten().collect();
        if !kept.is_empty() {
            let bytes: usize = kept.iter().flat_map(|o| o.iter()).map(HostTensor::byte_len).sum();
            r.note(format!(
                "kept the float model's outputs on {} samples ({:.1} MB) for the passes after it",
                kept.len(),
                bytes as f64 / 1e6
            ));
        }
        let reporting = (std::time::Instant::now(), collect::process_cpu());
        if cx.report_detail {
            r.publish("calibration", report::section(g, &table, self.percentile));
        }
        r.note(format!(
            "time: listing the data {listing:.2} s, collection {:.2} s ({}), ranges {:.2}/{:.2} s, report {:.2}/{:.2} s",
            col.seconds,
            col.phases.describe(),
            ranges.0,
            ranges.1,
            reporting.0.elapsed().as_secs_f64(),
            collect::process_cpu() - reporting.1
        ));
        cx.ext.insert(table);
        cx.ext.insert(CalibrationData { dataset: data, holdout, shape, float_outputs: col.outputs });
        Ok(r)
    }
}

/// The first five items of a list, then how many more.
fn first_few(items: &[String]) -> String {
    let shown = items.iter().take(5).map(String::as_str).collect::<Vec<_>>().join(", ");
    if items.len() > 5 { format!("{shown} and {} more", items.len() - 5) } else { shown }
}

/// Ranges by tensor name, for tests and tools.
pub fn amax_by_name(g: &Graph, t: &CalibrationTable) -> BTreeMap<String, f32> {
    t.tensors
        .iter()
        .filter(|(v, _)| g.contains_value(**v))
        .map(|(&v, r)| (g.value_name(v).to_string(), r.amax))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Squared error of symmetric INT8 rounding with range `amax`.
    fn sq_error(v: &[f32], amax: f32) -> f64 {
        let s = amax / 127.0;
        v.iter().map(|&x| ((x / s).round_ties_even().clamp(-127.0, 127.0) * s - x) as f64).map(|d| d * d).sum()
    }

    #[test]
    fn mse_weight_range_clips_a_lone_outlier_and_beats_max() {
        // 10001 weights evenly over ±1 and one at 1.3: clipping the outlier
        // to ~1.2 costs less than the coarser step of the range 1.3 costs
        // every other weight. (A far outlier, 20, stays nearly whole:
        // clipping it to the bulk would cost more than all the rounding.)
        let mut v: Vec<f32> = (0..=10_000).map(|i| i as f32 / 5000.0 - 1.0).collect();
        v.push(1.3);
        let abs: Vec<f32> = v.iter().map(|x| x.abs()).collect();
        let amax = mse_amax(&abs);
        assert!(amax < 1.3 && amax > 1.0, "{amax}");
        assert!(sq_error(&v, amax) < sq_error(&v, 1.3), "{} vs {}", sq_error(&v, amax), sq_error(&v, 1.3));
        let mut far = abs.clone();
        *far.last_mut().unwrap() = 20.0;
        assert!(mse_amax(&far) >= 19.0, "{}", mse_amax(&far));
        // Per channel: axis 0 of a [2, 10002] weight, the second channel evenly over ±1.
        let mut w = v.clone();
        w.extend((0..10_002).map(|i| i as f32 / 5001.0 - 1.0));
        let per = weight_amax(&w, &[2, 10_002], 0, MethodName::Mse, 100.0);
        assert_eq!(per.len(), 2);
        assert_eq!(per[0], amax);
        // A uniform channel has no outlier to clip: its range stays near its max.
        assert!(per[1] >= 0.95 && per[1] <= 1.0, "{}", per[1]);
    }

    #[test]
    fn mse_weight_range_of_zeros_and_non_finite_values() {
        assert_eq!(mse_amax(&[0.0, 0.0]), 0.0);
        assert_eq!(mse_amax(&[]), 0.0);
        let a = mse_amax(&[f32::NAN, 1.0, 0.5]);
        assert!(a > 0.0 && a <= 1.0, "{a}");
    }
}
