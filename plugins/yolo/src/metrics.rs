//! Scoring a candidate's detections against the FP32 model's, image by image.
//!
//! The FP32 detections are the pseudo ground truth. Per image, candidate
//! detections are visited by descending score and each takes the unused FP32
//! box of its class with the best IoU, a hit when that IoU is at least
//! [`MATCH_IOU`]. Hits and scores of all images are pooled per class and
//! turned into a COCO-style 101-point AP; mAP50 is the mean over the classes
//! the FP32 model detected at least once.

use std::collections::BTreeMap;
use std::fmt;

use qforge_runtime::HostTensor;

use crate::YoloError;
use crate::decode::{CONF_THRESHOLD, Detection, decode, f32_data, iou};

/// IoU a candidate box needs with an FP32 box of its class to count as a hit.
pub const MATCH_IOU: f32 = 0.5;

/// How closely a candidate model's detections agree with its FP32 reference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Agreement {
    /// Images scored (each photo gives 4 views in [`crate::agreement`]).
    pub images: usize,
    /// Detections of the FP32 model (the pseudo ground truth).
    pub fp32_dets: usize,
    /// Detections of the candidate.
    pub cand_dets: usize,
    /// Hits / `fp32_dets` (0 when there are no FP32 detections).
    pub recall: f64,
    /// Hits / `cand_dets` (0 when the candidate detects nothing).
    pub precision: f64,
    /// Mean over the classes with FP32 detections of the 101-point AP at IoU
    /// 0.5; NaN when the FP32 model detected nothing.
    pub map50: f64,
    /// `10·log10(Σ y_fp32² / Σ (y_fp32 − y_cand)²)` over every output element
    /// of every image; `+inf` when the outputs are identical.
    pub sqnr_db: f64,
}

/// `{x:.prec}` as Python prints it (`nan`, `inf`, `-inf`).
fn py_fixed(x: f64, prec: usize) -> String {
    if x.is_nan() { "nan".to_string() } else { format!("{x:.prec$}") }
}

impl fmt::Display for Agreement {
    /// The reference script's one line, e.g. `photos=10x4 fp32_dets=57
    /// cand_dets=55 recall=0.947 precision=0.982 mAP50_vs_fp32=0.941
    /// output_sqnr_db=31.2`; `images=N` replaces `photos=Mx4` when the image
    /// count is not a multiple of 4.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.images % 4 == 0 {
            write!(f, "photos={}x4", self.images / 4)?;
        } else {
            write!(f, "images={}", self.images)?;
        }
        write!(
            f,
            " fp32_dets={} cand_dets={} recall={} precision={} mAP50_vs_fp32={} output_sqnr_db={}",
            self.fp32_dets,
            self.cand_dets,
            py_fixed(self.recall, 3),
            py_fixed(self.precision, 3),
            py_fixed(self.map50, 3),
            py_fixed(self.sqnr_db, 1)
        )
    }
}

/// Accumulates [`Agreement`] over images: [`AgreementBuilder::add`] the two
/// models' raw outputs for each image, then [`AgreementBuilder::finish`].
#[derive(Debug, Clone, Default)]
pub struct AgreementBuilder {
    images: usize,
    fp32_dets: usize,
    cand_dets: usize,
    /// FP32 detections per class (the AP denominators).
    npos: BTreeMap<usize, usize>,
    /// Per class, every candidate detection as (hit, score), in visiting order.
    ranked: BTreeMap<usize, Vec<(bool, f64)>>,
    sq_signal: f64,
    sq_noise: f64,
}

impl AgreementBuilder {
    /// An empty accumulator.
    pub fn new() -> AgreementBuilder {
        AgreementBuilder::default()
    }

    /// Scores one image: decodes both raw outputs (score > 0.25, NMS 0.45),
    /// matches the candidate's detections to the FP32 ones and adds both
    /// outputs to the SQNR sums. The outputs must have the same shape.
    pub fn add(&mut self, fp32_out: &HostTensor, cand_out: &HostTensor) -> Result<(), YoloError> {
        if fp32_out.shape != cand_out.shape {
            return Err(YoloError::ShapeMismatch { fp32: fp32_out.shape.clone(), cand: cand_out.shape.clone() });
        }
        let fp32 = decode(fp32_out, CONF_THRESHOLD)?;
        let cand = decode(cand_out, CONF_THRESHOLD)?;
        let (a, b) = (f32_data(fp32_out)?, f32_data(cand_out)?);
        for (&x, &y) in a.iter().zip(b.iter()) {
            // The difference in f32, then squared in f64, as the reference does.
            self.sq_signal += f64::from(x) * f64::from(x);
            let d = f64::from(x - y);
            self.sq_noise += d * d;
        }
        self.match_image(&fp32, &cand);
        Ok(())
    }

    /// Greedy matching of one image's detections.
    fn match_image(&mut self, fp32: &[Detection], cand: &[Detection]) {
        self.images += 1;
        self.fp32_dets += fp32.len();
        self.cand_dets += cand.len();
        for d in fp32 {
            *self.npos.entry(d.class).or_default() += 1;
        }
        let mut used = vec![false; fp32.len()];
        let mut order: Vec<usize> = (0..cand.len()).collect();
        // Stable: equal scores keep index order (NumPy's argsort(-scores)).
        order.sort_by(|&a, &b| cand[b].score.total_cmp(&cand[a].score));
        for j in order {
            let c = &cand[j];
            // The first best IoU among unused FP32 boxes of the class (np.argmax).
            let mut best: Option<(usize, f32)> = None;
            for (i, g) in fp32.iter().enumerate() {
                if g.class != c.class || used[i] {
                    continue;
                }
                let v = iou(&c.bbox, &g.bbox);
                match best {
                    Some((_, b)) if b.is_nan() || !(v > b || v.is_nan()) => {}
                    _ => best = Some((i, v)),
                }
            }
            let hit = match best {
                Some((i, v)) if v >= MATCH_IOU => {
                    used[i] = true;
                    true
                }
                _ => false,
            };
            self.ranked.entry(c.class).or_default().push((hit, f64::from(c.score)));
        }
    }

    /// The agreement over every image added so far.
    pub fn finish(&self) -> Agreement {
        let hits: usize = self.ranked.values().map(|r| r.iter().filter(|(h, _)| *h).count()).sum();
        let aps: Vec<f64> =
            self.npos.iter().map(|(k, &n)| average_precision(self.ranked.get(k).map_or(&[], |v| v), n)).collect();
        let map50 = if aps.is_empty() { f64::NAN } else { aps.iter().sum::<f64>() / aps.len() as f64 };
        let sqnr_db =
            if self.sq_noise == 0.0 { f64::INFINITY } else { 10.0 * (self.sq_signal / self.sq_noise).log10() };
        Agreement {
            images: self.images,
            fp32_dets: self.fp32_dets,
            cand_dets: self.cand_dets,
            recall: hits as f64 / self.fp32_dets.max(1) as f64,
            precision: hits as f64 / self.cand_dets.max(1) as f64,
            map50,
            sqnr_db,
        }
    }
}

/// COCO-style 101-point interpolated AP of ranked `(hit, score)` detections
/// against `npos` references: the mean, over recall levels r = 0, 0.01, …, 1,
/// of the best precision reached at a recall of at least r (0 when never).
/// Equal scores keep their given order. `npos` must be positive.
pub fn average_precision(ranked: &[(bool, f64)], npos: usize) -> f64 {
    let mut order: Vec<usize> = (0..ranked.len()).collect();
    order.sort_by(|&a, &b| ranked[b].1.total_cmp(&ranked[a].1));
    let (mut tp, mut fp) = (0.0_f64, 0.0_f64);
    let mut curve: Vec<(f64, f64)> = Vec::with_capacity(ranked.len()); // (recall, precision)
    for i in order {
        if ranked[i].0 {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        curve.push((tp / npos as f64, tp / (tp + fp).max(1e-9)));
    }
    let mut total = 0.0;
    for step in 0..=100 {
        // np.linspace(0, 1, 101): i * 0.01, the last point exactly 1.
        let r = if step == 100 { 1.0 } else { f64::from(step) * 0.01 };
        let best = curve
            .iter()
            .filter(|(rec, _)| *rec >= r - 1e-12)
            .map(|&(_, p)| p)
            .fold(None, |m: Option<f64>, p| Some(m.map_or(p, |m| m.max(p))));
        total += best.unwrap_or(0.0);
    }
    total / 101.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A YOLOv5 output `[1, N, 6]` (one class) or `[1, N, 7]` from rows.
    fn v5(rows: &[&[f32]]) -> HostTensor {
        let w = rows[0].len();
        HostTensor::f32(vec![1, rows.len(), w], rows.iter().flat_map(|r| r.iter().copied()).collect())
    }

    fn scene() -> HostTensor {
        v5(&[
            &[50.0, 50.0, 20.0, 20.0, 1.0, 0.9, 0.0],
            &[150.0, 50.0, 20.0, 20.0, 1.0, 0.8, 0.0],
            &[50.0, 150.0, 20.0, 20.0, 1.0, 0.0, 0.7],
            &[0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0],
            &[0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0],
            &[0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0],
            &[0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0],
            &[0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0],
        ])
    }

    #[test]
    fn perfect_candidate_agrees_fully() {
        let mut b = AgreementBuilder::new();
        for _ in 0..4 {
            b.add(&scene(), &scene()).unwrap();
        }
        let a = b.finish();
        assert_eq!((a.images, a.fp32_dets, a.cand_dets), (4, 12, 12));
        assert_eq!((a.recall, a.precision, a.map50), (1.0, 1.0, 1.0));
        assert_eq!(a.sqnr_db, f64::INFINITY);
        assert_eq!(
            a.to_string(),
            "photos=1x4 fp32_dets=12 cand_dets=12 recall=1.000 precision=1.000 mAP50_vs_fp32=1.000 output_sqnr_db=inf"
        );
    }

    #[test]
    fn empty_candidate_scores_zero() {
        let mut b = AgreementBuilder::new();
        let empty = HostTensor::f32(vec![1, 8, 7], vec![0.0; 56]);
        b.add(&scene(), &empty).unwrap();
        let a = b.finish();
        assert_eq!((a.fp32_dets, a.cand_dets), (3, 0));
        assert_eq!((a.recall, a.precision, a.map50), (0.0, 0.0, 0.0));
        assert_eq!(a.sqnr_db, 0.0, "all the signal is noise");
        assert!(a.to_string().starts_with("images=1 fp32_dets=3 cand_dets=0 recall=0.000"), "{a}");
        // Nothing detected by FP32 either: mAP is undefined, printed as Python prints NaN.
        let mut b = AgreementBuilder::new();
        b.add(&empty, &empty).unwrap();
        assert!(b.finish().map50.is_nan());
        assert!(b.finish().to_string().contains("mAP50_vs_fp32=nan"), "{}", b.finish());
    }

    #[test]
    fn matching_is_greedy_per_class() {
        // Candidate: box 0 shifted a little (hit), box 1 moved away (miss),
        // box 2 right place but class 0 instead of 1 (miss), plus a false positive.
        let cand = v5(&[
            &[52.0, 50.0, 20.0, 20.0, 1.0, 0.95, 0.0],
            &[190.0, 50.0, 20.0, 20.0, 1.0, 0.8, 0.0],
            &[50.0, 150.0, 20.0, 20.0, 1.0, 0.6, 0.0],
            &[300.0, 300.0, 20.0, 20.0, 1.0, 0.0, 0.5],
            &[0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0],
            &[0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0],
            &[0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0],
            &[0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0],
        ]);
        let mut b = AgreementBuilder::new();
        b.add(&scene(), &cand).unwrap();
        let a = b.finish();
        assert_eq!((a.fp32_dets, a.cand_dets), (3, 4));
        assert!((a.recall - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(a.precision, 0.25);
        // Class 0: ranked hit, miss, miss against 2 refs → AP = 51/101; class 1: no hit → 0.
        assert!((a.map50 - (51.0 / 101.0) / 2.0).abs() < 1e-12, "{}", a.map50);
    }

    #[test]
    fn average_precision_101_points() {
        assert_eq!(average_precision(&[(true, 0.9), (true, 0.8)], 2), 1.0);
        assert_eq!(average_precision(&[], 3), 0.0);
        assert_eq!(average_precision(&[(false, 0.9)], 1), 0.0);
        // hit, miss, hit against 2 refs: precision 1 up to recall 0.5 (51 levels), then 2/3 (50 levels).
        let ap = average_precision(&[(true, 0.7), (false, 0.8), (true, 0.9)], 2);
        assert!((ap - (51.0 + 50.0 * 2.0 / 3.0) / 101.0).abs() < 1e-12, "{ap}");
    }

    #[test]
    fn sqnr_sums_over_images() {
        // [1, 8, 7] outputs, all zero but the first anchor's objectness and class score.
        let out = |obj: f32, cls: f32| {
            let mut d = vec![0.0; 56];
            (d[4], d[5]) = (obj, cls);
            HostTensor::f32(vec![1, 8, 7], d)
        };
        let (f, c) = (out(0.6, 0.8), out(0.6, 0.7));
        let mut b = AgreementBuilder::new();
        b.add(&f, &c).unwrap();
        let one = b.finish().sqnr_db;
        let noise = f64::from(0.8_f32 - 0.7_f32).powi(2);
        let signal = f64::from(0.6_f32).powi(2) + f64::from(0.8_f32).powi(2);
        let expect = 10.0 * (signal / noise).log10();
        assert!((one - expect).abs() < 1e-9 && (one - 20.0).abs() < 1e-4, "{one} vs {expect}");
        // A second, identical pair adds signal but no noise: 2 / 0.01 → 23.01 dB (not the mean of per-image dB).
        b.add(&f, &f).unwrap();
        assert!((b.finish().sqnr_db - 23.0103).abs() < 1e-3, "{}", b.finish().sqnr_db);
        let e = b.add(&f, &HostTensor::f32(vec![1, 7, 8], vec![0.0; 56])).unwrap_err();
        assert!(e.to_string().contains("differ in shape"), "{e}");
    }
}
