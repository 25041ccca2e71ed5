//! The ranges a group of activations may take: what each calibrator would
//! give it, what it has, and points between.
//!
//! All come from the group's histograms merged (a shared scale must suit
//! every member), so they cost no run of the model. Ranges within 0.5 % of
//! one another are one candidate: the INT8 grids they give differ by less
//! than a rounding step on all but the largest codes.

use super::Group;
use crate::calibrate::histogram::{DEFAULT_PERCENTILE, Method, compute_amax};
use crate::calibrate::table::CalibrationTable;

/// One candidate range.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The symmetric range (`scale = amax / 127`).
    pub amax: f32,
    /// Where it comes from: a calibrator's name, `given` or `between`.
    pub source: String,
    /// Whether it is the range the group has now.
    pub current: bool,
}

/// Relative distance under which two ranges are one candidate.
const SAME: f32 = 0.005;

/// The candidates of `group`, in increasing range, the current one always
/// among them (marked), plus `grid` geometric midpoints between neighbours.
/// A group without histograms (a loaded table) has only its current range.
pub fn candidates(table: &CalibrationTable, group: &Group, grid: usize) -> Vec<Candidate> {
    let current = Candidate { amax: group.amax, source: "given".into(), current: true };
    let mut hist = None;
    for v in &group.values {
        match table.tensors.get(v).and_then(|t| t.histogram.as_ref()) {
            Some(h) => match hist.as_mut() {
                None => hist = Some(h.clone()),
                Some(m) => m.merge(h),
            },
            None => return vec![current],
        }
    }
    let Some(hist) = hist else { return vec![current] };
    let methods = [
        ("max", Method::Max),
        ("percentile", Method::Percentile(DEFAULT_PERCENTILE)),
        ("mse", Method::Mse),
        ("entropy", Method::Entropy),
    ];
    let mut found: Vec<Candidate> = methods
        .iter()
        .map(|&(name, m)| Candidate { amax: compute_amax(&hist, m), source: name.into(), current: false })
        .filter(|c| c.amax > 0.0 && c.amax.is_finite())
        .collect();
    found.sort_by(|a, b| a.amax.total_cmp(&b.amax));
    let mut out: Vec<Candidate> = Vec::new();
    for c in found {
        match out.last() {
            Some(l) if (c.amax - l.amax) <= SAME * c.amax => {}
            _ => out.push(c),
        }
    }
    // Points between neighbours, on a log scale (ranges act by ratios).
    let mut with_grid: Vec<Candidate> = Vec::new();
    for (i, c) in out.iter().enumerate() {
        if i > 0 {
            let lo = out[i - 1].amax as f64;
            for k in 1..=grid {
                let t = k as f64 / (grid + 1) as f64;
                let amax = (lo.ln() * (1.0 - t) + (c.amax as f64).ln() * t).exp() as f32;
                if (c.amax - amax) > SAME * c.amax && (amax - lo as f32) > SAME * amax {
                    with_grid.push(Candidate { amax, source: "between".into(), current: false });
                }
            }
        }
        with_grid.push(c.clone());
    }
    // The current range replaces a candidate it coincides with.
    match with_grid.iter_mut().find(|c| (c.amax - current.amax).abs() <= SAME * current.amax.max(c.amax)) {
        Some(c) => {
            c.amax = current.amax;
            c.current = true;
        }
        None => {
            with_grid.push(current);
            with_grid.sort_by(|a, b| a.amax.total_cmp(&b.amax));
        }
    }
    with_grid
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calibrate::histogram::Histogram;
    use crate::calibrate::table::TensorRange;
    use qforge_ir::ValueId;

    fn table_with(values: &[(ValueId, Vec<f32>)]) -> CalibrationTable {
        let mut t = CalibrationTable { method: "max".into(), kind: Some(Method::Max), ..Default::default() };
        for (v, xs) in values {
            let mut h = Histogram::new(2048);
            h.add(xs);
            t.tensors.insert(*v, TensorRange { amax: h.max_abs(), histogram: Some(h), samples: 1 });
        }
        t
    }

    #[test]
    fn candidates_span_the_calibrators_and_keep_the_current_range() {
        let g = qforge_ir::parse_graph(
            "graph t {\n  opset ai.onnx 13\n  input %x: f32[4]\n  %a = Relu(%x)  # r\n  %b = Neg(%x)  # n\n  output %a\n  output %b\n}\n",
        )
        .unwrap();
        let (a, b) = (g.find_value("a").unwrap(), g.find_value("b").unwrap());
        // A long tail: one outlier at 100 among values up to 1.
        let mut xs: Vec<f32> = (0..20000).map(|i| (i % 1000) as f32 / 1000.0).collect();
        xs.push(100.0);
        let table = table_with(&[(a, xs.clone()), (b, vec![0.5, -0.25])]);
        let group = Group { quantizers: vec![], values: vec![a], amax: 100.0 };
        let c = candidates(&table, &group, 1);
        // Sorted, distinct, the max (= the current range) marked current.
        assert!(c.windows(2).all(|w| w[0].amax < w[1].amax), "{c:?}");
        let last = c.last().unwrap();
        assert!(last.current && last.amax == 100.0, "{c:?}");
        assert_eq!(c.iter().filter(|k| k.current).count(), 1);
        // Clipping calibrators give far smaller ranges than the outlier.
        assert!(c[0].amax < 2.0, "{c:?}");
        assert!(c.iter().any(|k| k.source == "between"), "{c:?}");
        // Merged with a member whose values are smaller, the max stays.
        let both = Group { quantizers: vec![], values: vec![a, b], amax: 100.0 };
        assert_eq!(candidates(&table, &both, 0).last().unwrap().amax, 100.0);
        // A range no calibrator gives is kept as its own candidate.
        let odd = Group { quantizers: vec![], values: vec![a], amax: 50.0 };
        let c = candidates(&table, &odd, 0);
        assert!(c.iter().any(|k| k.current && k.amax == 50.0 && k.source == "given"), "{c:?}");
        // Without histograms: only the current range.
        let none = CalibrationTable::default();
        assert_eq!(candidates(&none, &group, 1).len(), 1);
    }
}
