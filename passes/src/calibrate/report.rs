//! What `calibrate` publishes for the run report (`qforge run --report`):
//! per tensor, its histogram of |x| cut down to [`REPORT_BINS`] bins and the
//! threshold every method would choose, so a reader sees what the chosen
//! method clips and what the others would have kept.
//!
//! Computed only when a report was asked for ([`crate::PassContext::report_detail`]):
//! the entropy and MSE searches cost tens of milliseconds per tensor.

use rayon::prelude::*;

use qforge_ir::Graph;

use super::histogram::{Histogram, Method, compute_amax};
use super::table::CalibrationTable;

/// Bins of a histogram in the report (from the 2048 or more it was collected with).
pub const REPORT_BINS: usize = 128;

/// `counts` over `[0, width·len)` regrouped into `bins` equal bins over the
/// same range, each old bin going where its centre falls; rounded to whole
/// counts (the report's histograms are pictures, not data to re-calibrate on).
pub fn downsample(counts: &[f64], bins: usize) -> Vec<u64> {
    let bins = bins.max(1);
    let mut out = vec![0.0f64; bins];
    let len = counts.len().max(1) as f64;
    for (k, &c) in counts.iter().enumerate() {
        let at = (((k as f64 + 0.5) / len) * bins as f64) as usize;
        out[at.min(bins - 1)] += c;
    }
    out.into_iter().map(|c| c.round() as u64).collect()
}

/// Share of the values above `amax` (what the range clips), from the bins:
/// the bins wholly above it, and the part of the bin it cuts that lies
/// above it (values spread evenly in a bin). Nothing when `amax` reaches
/// the exact max.
fn clipped(h: &Histogram, amax: f32) -> f64 {
    let total: f64 = h.counts().iter().sum();
    let w = h.bin_width().unwrap_or(0.0);
    if total <= 0.0 || w <= 0.0 || amax >= h.max_abs() {
        return 0.0;
    }
    let a = amax as f64;
    let above: f64 = h
        .counts()
        .iter()
        .enumerate()
        .map(|(k, &c)| {
            let (lo, hi) = (k as f64 * w, (k + 1) as f64 * w);
            if lo >= a {
                c
            } else if hi > a {
                c * (hi - a) / w
            } else {
                0.0
            }
        })
        .sum();
    above / total
}

/// The `calibration` section: the chosen method and, per calibrated tensor
/// in the graph (in value order), the chosen amax, each method's threshold,
/// the share it clips and the downsampled histogram.
pub fn section(g: &Graph, table: &CalibrationTable, percentile: f64) -> serde_json::Value {
    let methods = [
        ("max".to_string(), Method::Max),
        (format!("percentile {percentile}"), Method::Percentile(percentile)),
        ("mse".to_string(), Method::Mse),
        ("entropy".to_string(), Method::Entropy),
    ];
    let rows: Vec<(String, f32, &Histogram)> = table
        .tensors
        .iter()
        .filter(|(v, _)| g.contains_value(**v))
        .filter_map(|(&v, r)| {
            r.histogram.as_ref().filter(|h| !h.counts().is_empty()).map(|h| (g.value_name(v).to_string(), r.amax, h))
        })
        .collect();
    let tensors: Vec<serde_json::Value> = rows
        .par_iter()
        .map(|(name, amax, h)| {
            // The chosen method's threshold is the table's amax, computed
            // from this histogram just before: the search is not repeated.
            let threshold = |method: Method| if table.kind == Some(method) { *amax } else { compute_amax(h, method) };
            let thresholds: serde_json::Map<String, serde_json::Value> =
                methods.iter().map(|(m, method)| (m.clone(), serde_json::json!(threshold(*method)))).collect();
            let width = h.bin_width().unwrap_or(0.0) * h.counts().len() as f64 / REPORT_BINS as f64;
            serde_json::json!({
                "tensor": name,
                "amax": amax,
                "max": h.max_abs(),
                "values": h.total(),
                "clipped": clipped(h, *amax),
                "thresholds": thresholds,
                "bin_width": width,
                "counts": downsample(h.counts(), REPORT_BINS),
            })
        })
        .collect();
    serde_json::json!({
        "method": table.method,
        "samples": table.samples,
        "bins": REPORT_BINS,
        "tensors": tensors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downsampling_keeps_every_count_in_place() {
        let counts: Vec<f64> = (0..2048).map(|k| (k % 7) as f64).collect();
        let d = downsample(&counts, 128);
        assert_eq!(d.len(), 128);
        assert_eq!(d.iter().sum::<u64>() as f64, counts.iter().sum::<f64>());
        // 16 old bins per new bin, in order.
        assert_eq!(d[0] as f64, counts[..16].iter().sum::<f64>());
        assert_eq!(d[127] as f64, counts[2032..].iter().sum::<f64>());
        // Fewer bins than asked: each lands where its centre is (0.25 and 0.75 of the range).
        assert_eq!(downsample(&[1.0, 2.0], 4), vec![0, 1, 0, 2]);
    }

    #[test]
    fn clipped_share_counts_the_bins_above_the_range() {
        let mut h = Histogram::new(100);
        h.add(&(0..100).map(|i| i as f32 + 0.5).collect::<Vec<_>>());
        let c = clipped(&h, 89.9);
        assert!((c - 0.10).abs() < 0.011, "{c}");
        assert_eq!(clipped(&h, h.max_abs()), 0.0, "the max clips nothing, even inside the last bin");
        assert_eq!(clipped(&h, 1000.0), 0.0);
    }
}
