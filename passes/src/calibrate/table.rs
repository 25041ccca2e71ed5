//! The calibration table: per-tensor ranges that `calibrate` (or
//! `load-calibration`) produces and quantization passes read.
//!
//! It lives in the pass context ([`PassContext::ext`](crate::PassContext::ext)), keyed by value, and
//! keeps each tensor's histogram next to its amax: tensors that must share
//! one scale (Concat inputs and output, MaxPool in/out) get it from their
//! *merged* histograms, which the amaxes alone cannot give. It is written as
//! JSON (everything) or as a TensorRT calibration cache (scales only), and
//! both can be read back.

use std::collections::BTreeMap;
use std::path::Path;

use qforge_ir::{Graph, ValueId};

use super::histogram::{Histogram, Method, compute_amax};

/// Statistics and range of one activation tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRange {
    /// The symmetric range: values in `[-amax, amax]` map to `[-127, 127]`.
    pub amax: f32,
    /// The streaming histogram, when the range was calibrated here (not loaded).
    pub histogram: Option<Histogram>,
    /// Samples (images) the statistics come from.
    pub samples: u64,
}

impl TensorRange {
    /// The INT8 scale `amax / 127` (with a zero range mapped to 1/127, so a
    /// tensor that was all zeros still gets a valid scale).
    pub fn scale(&self) -> f32 {
        int8_scale(self.amax)
    }
}

/// The symmetric INT8 scale of a range: `amax / 127`, and 1/127 for a zero
/// or non-finite range (a tensor that was all zeros still gets a valid scale).
pub fn int8_scale(amax: f32) -> f32 {
    if amax > 0.0 && amax.is_finite() { amax / 127.0 } else { 1.0 / 127.0 }
}

/// Per-channel weight ranges of one weighted op.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightRange {
    /// The output-channel axis of the weight tensor.
    pub axis: usize,
    /// amax per channel.
    pub amax: Vec<f32>,
}

/// The whole table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CalibrationTable {
    /// How activation ranges were computed (`entropy`, `max`, …, or `loaded`).
    pub method: String,
    /// The method as a value, for computing shared ranges the same way
    /// (`None` for loaded tables, which have no histograms).
    pub kind: Option<Method>,
    /// Activation ranges.
    pub tensors: BTreeMap<ValueId, TensorRange>,
    /// Weight ranges, keyed by the weight value.
    pub weights: BTreeMap<ValueId, WeightRange>,
    /// Samples used.
    pub samples: u64,
}

/// The method's name as written in pipelines and tables.
pub fn method_name(m: Method) -> String {
    match m {
        Method::Max => "max".into(),
        Method::Percentile(p) => format!("percentile({p})"),
        Method::Mse => "mse".into(),
        Method::Entropy => "entropy".into(),
    }
}

impl CalibrationTable {
    /// One amax for a group of tensors that must share a scale: computed
    /// from their merged histograms when all have one, else the largest
    /// amax (the only safe choice without distributions).
    pub fn shared_amax(&self, group: &[ValueId]) -> Option<f32> {
        let ranges: Vec<&TensorRange> = group.iter().filter_map(|v| self.tensors.get(v)).collect();
        if ranges.is_empty() {
            return None;
        }
        if let Some(method) = self.kind
            && ranges.iter().all(|r| r.histogram.is_some())
        {
            let mut h = ranges[0].histogram.clone()?;
            for r in &ranges[1..] {
                if let Some(o) = &r.histogram {
                    h.merge(o);
                }
            }
            return Some(compute_amax(&h, method));
        }
        Some(ranges.iter().map(|r| r.amax).fold(0.0, f32::max))
    }

    /// The table as JSON: per tensor amax, scale, exact max, counts.
    pub fn to_json(&self, g: &Graph) -> serde_json::Value {
        let tensors: serde_json::Map<String, serde_json::Value> = self
            .tensors
            .iter()
            .filter(|(v, _)| g.contains_value(**v))
            .map(|(&v, r)| {
                let mut e = serde_json::json!({ "amax": r.amax, "scale": r.scale(), "samples": r.samples });
                if let Some(h) = &r.histogram {
                    e["max"] = serde_json::json!(h.max_abs());
                    e["bins"] = serde_json::json!(h.counts().len());
                    e["bin_width"] = serde_json::json!(h.bin_width());
                    e["values"] = serde_json::json!(h.total());
                    e["nan"] = serde_json::json!(h.nan_count());
                    e["inf"] = serde_json::json!(h.inf_count());
                }
                (g.value_name(v).to_string(), e)
            })
            .collect();
        let weights: serde_json::Map<String, serde_json::Value> = self
            .weights
            .iter()
            .filter(|(v, _)| g.contains_value(**v))
            .map(|(&v, w)| (g.value_name(v).to_string(), serde_json::json!({ "axis": w.axis, "amax": w.amax })))
            .collect();
        serde_json::json!({
            "format": "qforge-calibration-1",
            "method": self.method,
            "samples": self.samples,
            "tensors": tensors,
            "weights": weights,
        })
    }

    /// The TensorRT calibration cache: a `TRT-<version>-EntropyCalibration2`
    /// header, then `name: <scale as big-endian f32 hex>` per tensor.
    pub fn to_trt_cache(&self, g: &Graph, version: &str) -> String {
        let mut s = format!("TRT-{version}-EntropyCalibration2\n");
        for (&v, r) in &self.tensors {
            if g.contains_value(v) {
                s += &format!("{}: {:08x}\n", g.value_name(v), r.scale().to_bits());
            }
        }
        s
    }

    /// Reads a table written by [`CalibrationTable::to_json`] or a TensorRT
    /// cache (recognised by its header). Names not in `g` are returned.
    pub fn read(path: &Path, g: &Graph) -> Result<(CalibrationTable, Vec<String>), String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut t = CalibrationTable { method: "loaded".into(), ..Default::default() };
        let mut unknown = Vec::new();
        if text.starts_with("TRT-") {
            for (i, line) in text.lines().enumerate().skip(1) {
                if line.trim().is_empty() {
                    continue;
                }
                let (name, hex) = line
                    .rsplit_once(':')
                    .ok_or_else(|| format!("{}:{}: expected `name: hex`", path.display(), i + 1))?;
                let bits = u32::from_str_radix(hex.trim(), 16)
                    .map_err(|_| format!("{}:{}: `{}` is not 8 hex digits", path.display(), i + 1, hex.trim()))?;
                let scale = f32::from_bits(bits);
                if !(scale.is_finite() && scale > 0.0) {
                    return Err(format!("{}:{}: scale {scale} is not a positive number", path.display(), i + 1));
                }
                match g.find_value(name.trim()) {
                    Some(v) => {
                        t.tensors.insert(v, TensorRange { amax: scale * 127.0, histogram: None, samples: 0 });
                    }
                    None => unknown.push(name.trim().to_string()),
                }
            }
            return Ok((t, unknown));
        }
        let j: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| format!("{}: neither a TensorRT cache nor JSON ({e})", path.display()))?;
        if j["format"] != "qforge-calibration-1" {
            return Err(format!(
                "{}: not a qforge calibration table (no \"format\": \"qforge-calibration-1\")",
                path.display()
            ));
        }
        t.samples = j["samples"].as_u64().unwrap_or(0);
        if let Some(m) = j["method"].as_str() {
            t.method = format!("loaded {m}");
        }
        for (name, e) in j["tensors"].as_object().into_iter().flatten() {
            let amax = e["amax"].as_f64().ok_or_else(|| format!("{}: tensor {name} has no amax", path.display()))?;
            match g.find_value(name) {
                Some(v) => {
                    t.tensors.insert(
                        v,
                        TensorRange { amax: amax as f32, histogram: None, samples: e["samples"].as_u64().unwrap_or(0) },
                    );
                }
                None => unknown.push(name.clone()),
            }
        }
        for (name, e) in j["weights"].as_object().into_iter().flatten() {
            let amax: Option<Vec<f32>> =
                e["amax"].as_array().map(|a| a.iter().filter_map(|x| x.as_f64()).map(|x| x as f32).collect());
            match (g.find_value(name), amax, e["axis"].as_u64()) {
                (Some(v), Some(amax), Some(axis)) => {
                    t.weights.insert(v, WeightRange { axis: axis as usize, amax });
                }
                _ => unknown.push(name.clone()),
            }
        }
        Ok((t, unknown))
    }
}

/// Writes `text` to `path` atomically (temporary file + rename).
pub(crate) fn write_atomic(path: &Path, text: &str) -> Result<(), String> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("{}: {e}", path.display())
    })
}
