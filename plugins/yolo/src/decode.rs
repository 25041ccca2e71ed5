//! From a raw detector output to a list of boxes: layout detection (YOLOv8 or
//! YOLOv5 head), score threshold, centre→corner boxes and per-class NMS.
//!
//! All box arithmetic is done in `f32`, like the reference script does it
//! with float32 NumPy arrays, so thresholds compare the same numbers (e.g. an
//! IoU is compared with `0.45_f32`, which is what NumPy 2 does with a
//! Python float and a float32 array).

use std::borrow::Cow;

use qforge_runtime::{Data, HostTensor};

use crate::YoloError;

/// Score threshold of the reference: a detection is kept when its score is
/// strictly greater than this.
pub const CONF_THRESHOLD: f32 = 0.25;

/// IoU threshold of the per-class NMS: a box survives when its IoU with every
/// kept box of its class is strictly below this.
pub const NMS_IOU: f32 = 0.45;

/// One detected box.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    /// Corners `x1, y1, x2, y2`, in input pixels.
    pub bbox: [f32; 4],
    /// Class score (YOLOv5: class probability × objectness).
    pub score: f32,
    /// Class index (argmax of the class scores; the first one on ties).
    pub class: usize,
}

/// The head layouts [`decode`] understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `[1, 4+C, N]`: rows are `cx, cy, w, h`, then `C` class scores.
    V8 {
        /// Number of classes `C`.
        classes: usize,
        /// Number of anchors `N`.
        anchors: usize,
    },
    /// `[1, N, 5+C]`: columns are `cx, cy, w, h, objectness`, then `C` class probabilities.
    V5 {
        /// Number of classes `C`.
        classes: usize,
        /// Number of anchors `N`.
        anchors: usize,
    },
}

impl Layout {
    /// Tells the layout from the shape with the reference's rule: a 3-D
    /// output with batch 1 whose second dim is smaller than its third is a
    /// YOLOv8 head (`[1, 4+C, N]`), otherwise a YOLOv5 head (`[1, N, 5+C]`).
    pub fn of(shape: &[usize]) -> Result<Layout, YoloError> {
        let bad = || YoloError::UnsupportedShape { shape: shape.to_vec() };
        let &[1, a, b] = shape else { return Err(bad()) };
        if a < b {
            if a < 5 {
                return Err(bad());
            }
            Ok(Layout::V8 { classes: a - 4, anchors: b })
        } else {
            if b < 6 {
                return Err(bad());
            }
            Ok(Layout::V5 { classes: b - 5, anchors: a })
        }
    }
}

/// The elements of a float output as `f32` (f16 and f64 outputs are converted).
pub(crate) fn f32_data(t: &HostTensor) -> Result<Cow<'_, [f32]>, YoloError> {
    match &t.data {
        Data::F32(v) => Ok(Cow::Borrowed(v)),
        Data::F16(_) | Data::F64(_) => Ok(Cow::Owned(t.to_f64_vec().into_iter().map(|x| x as f32).collect())),
        _ => Err(YoloError::UnsupportedType(t.dtype().to_string())),
    }
}

/// Max and argmax of `scores` as NumPy computes them: the first maximum
/// wins, and a NaN anywhere makes the maximum NaN (then it never passes a
/// threshold).
fn max_argmax(scores: impl Iterator<Item = f32>) -> (f32, usize) {
    let mut best = (f32::NEG_INFINITY, 0);
    for (i, s) in scores.enumerate() {
        if s.is_nan() {
            return (f32::NAN, i);
        }
        if i == 0 || s > best.0 {
            best = (s, i);
        }
    }
    best
}

/// Decodes a YOLOv8 (`[1, 4+C, N]`) or YOLOv5 (`[1, N, 5+C]`) output:
/// scores above `conf` (strictly), boxes from centre/size to corners, then
/// greedy per-class NMS at IoU [`NMS_IOU`].
///
/// Detections come out grouped by class in ascending class order, each
/// class in descending score order — the order of the reference script,
/// which matters when ties are broken later.
pub fn decode(output: &HostTensor, conf: f32) -> Result<Vec<Detection>, YoloError> {
    let layout = Layout::of(&output.shape)?;
    let y = f32_data(output)?;
    let mut cand: Vec<Detection> = Vec::new();
    let mut push = |xywh: [f32; 4], (score, class): (f32, usize)| {
        if score > conf {
            let [x, y, w, h] = xywh;
            let bbox = [x - w / 2.0, y - h / 2.0, x + w / 2.0, y + h / 2.0];
            cand.push(Detection { bbox, score, class });
        }
    };
    match layout {
        Layout::V8 { classes, anchors: n } => {
            for a in 0..n {
                let best = max_argmax((0..classes).map(|c| y[(4 + c) * n + a]));
                push([y[a], y[n + a], y[2 * n + a], y[3 * n + a]], best);
            }
        }
        Layout::V5 { classes, anchors: n } => {
            let w = 5 + classes;
            for row in y.chunks_exact(w).take(n) {
                let obj = row[4];
                let best = max_argmax(row[5..].iter().map(|&p| p * obj));
                push([row[0], row[1], row[2], row[3]], best);
            }
        }
    }
    Ok(nms_per_class(&cand, NMS_IOU))
}

/// Per-class greedy NMS; classes in ascending order, survivors of each class
/// in keep order.
fn nms_per_class(dets: &[Detection], thr: f32) -> Vec<Detection> {
    let mut classes: Vec<usize> = dets.iter().map(|d| d.class).collect();
    classes.sort_unstable();
    classes.dedup();
    let mut out = Vec::new();
    for k in classes {
        let idx: Vec<usize> = (0..dets.len()).filter(|&i| dets[i].class == k).collect();
        let boxes: Vec<[f32; 4]> = idx.iter().map(|&i| dets[i].bbox).collect();
        let scores: Vec<f32> = idx.iter().map(|&i| dets[i].score).collect();
        out.extend(nms(&boxes, &scores, thr).into_iter().map(|j| dets[idx[j]]));
    }
    out
}

/// Greedy NMS: visits boxes by descending score and keeps a box when its IoU
/// with every box kept so far is strictly below `thr`. Returns the indices
/// kept, in keep order.
///
/// Equal scores are visited from the highest index down (the order of
/// NumPy's `argsort()[::-1]` when its sort is stable).
pub fn nms(boxes: &[[f32; 4]], scores: &[f32], thr: f32) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    order.reverse();
    // Boxes in visiting order, contiguous: the inner loop streams them.
    let sorted: Vec<[f32; 4]> = order.iter().map(|&i| boxes[i]).collect();
    let mut keep: Vec<usize> = Vec::new();
    let mut alive = vec![true; order.len()];
    for p in 0..sorted.len() {
        if !alive[p] {
            continue;
        }
        keep.push(order[p]);
        let b = &sorted[p];
        for (q, other) in sorted.iter().enumerate().skip(p + 1) {
            // Only boxes still alive can be suppressed: skipping the others
            // changes nothing and, on an untrained model's thousands of
            // candidates, most of the work.
            if !alive[q] {
                continue;
            }
            // The reference keeps `iou < thr`: a NaN IoU suppresses too.
            let v = iou(b, other);
            if v >= thr || v.is_nan() {
                alive[q] = false;
            }
        }
    }
    keep
}

/// Intersection over union of two corner boxes, with the reference's `1e-9`
/// in the denominator (computed in `f32`).
pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let x1 = a[0].max(b[0]);
    let y1 = a[1].max(b[1]);
    let x2 = a[2].min(b[2]);
    let y2 = a[3].min(b[3]);
    let inter = (x2 - x1).max(0.0) * (y2 - y1).max(0.0);
    let area = |z: &[f32; 4]| (z[2] - z[0]) * (z[3] - z[1]);
    inter / (area(a) + area(b) - inter + 1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `[1, 4+C, N]` tensor from per-anchor rows `cx, cy, w, h, scores…`.
    fn v8(rows: &[&[f32]]) -> HostTensor {
        let (n, f) = (rows.len(), rows[0].len());
        let mut data = vec![0.0; n * f];
        for (a, r) in rows.iter().enumerate() {
            for (k, &v) in r.iter().enumerate() {
                data[k * n + a] = v;
            }
        }
        HostTensor::f32(vec![1, f, n], data)
    }

    #[test]
    fn decodes_v8_heads() {
        // 7 anchors (N > 4+C), 2 classes.
        let t = v8(&[
            &[50.0, 50.0, 20.0, 10.0, 0.9, 0.1], // class 0
            &[10.0, 10.0, 4.0, 4.0, 0.2, 0.7],   // class 1
            &[90.0, 90.0, 4.0, 4.0, 0.25, 0.1],  // not > 0.25: dropped
            &[30.0, 30.0, 4.0, 4.0, 0.0, 0.0],   // dropped
            &[51.0, 50.0, 20.0, 10.0, 0.8, 0.0], // overlaps anchor 0: suppressed
            &[51.0, 50.0, 20.0, 10.0, 0.0, 0.6], // same place, other class: kept
            &[0.0, 0.0, 0.0, 0.0, 0.0, 0.0],     // dropped
        ]);
        let d = decode(&t, CONF_THRESHOLD).unwrap();
        assert_eq!(d.len(), 3, "{d:?}");
        assert_eq!(d[0], Detection { bbox: [40.0, 45.0, 60.0, 55.0], score: 0.9, class: 0 });
        assert_eq!(d[1], Detection { bbox: [8.0, 8.0, 12.0, 12.0], score: 0.7, class: 1 });
        assert_eq!(d[2].class, 1);
        assert_eq!(d[2].score, 0.6);
    }

    #[test]
    fn decodes_v5_heads() {
        // [1, N=7, 5+C=7] (the rule needs N ≥ 5+C): score = class probability × objectness.
        let mut data = vec![
            10.0, 20.0, 4.0, 6.0, 0.5, 0.9, 0.1, //  0.45 class 0
            10.0, 20.0, 4.0, 6.0, 0.2, 0.1, 0.9, //  0.18: dropped
            70.0, 20.0, 4.0, 6.0, 1.0, 0.3, 0.6, //  0.6 class 1
        ];
        data.resize(49, 0.0);
        let d = decode(&HostTensor::f32(vec![1, 7, 7], data), CONF_THRESHOLD).unwrap();
        assert_eq!(d.len(), 2, "{d:?}");
        assert_eq!(d[0], Detection { bbox: [8.0, 17.0, 12.0, 23.0], score: 0.9 * 0.5, class: 0 });
        assert_eq!(d[1], Detection { bbox: [68.0, 17.0, 72.0, 23.0], score: 0.6, class: 1 });
    }

    #[test]
    fn layout_rule_and_bad_shapes() {
        assert_eq!(Layout::of(&[1, 84, 8400]).unwrap(), Layout::V8 { classes: 80, anchors: 8400 });
        assert_eq!(Layout::of(&[1, 25200, 85]).unwrap(), Layout::V5 { classes: 80, anchors: 25200 });
        for s in [&[84, 8400][..], &[2, 84, 8400], &[1, 4, 8400], &[1, 100, 5], &[1, 3, 1, 1]] {
            let e = Layout::of(s).unwrap_err();
            assert!(e.to_string().contains("unsupported detector output shape"), "{e}");
        }
        let ints = HostTensor { shape: vec![1, 6, 8], data: Data::I64(vec![0; 48]) };
        assert!(decode(&ints, 0.25).unwrap_err().to_string().contains("i64"));
    }

    #[test]
    fn nms_suppresses_overlaps_and_keeps_the_rest() {
        let boxes = [[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 10.0]];
        // IoU(0,1) = 90/110 ≥ 0.45: the lower score goes; box 2 is apart.
        assert_eq!(nms(&boxes, &[0.5, 0.9, 0.3, 0.1], 0.45), vec![1, 2]);
        // Just below the threshold survives: IoU = 50/150 < 0.45.
        let b = [[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0]];
        assert_eq!(nms(&b, &[0.9, 0.8], 0.45), vec![0, 1]);
        // Equal scores: the later index first, like NumPy's argsort()[::-1].
        assert_eq!(nms(&boxes[..2], &[0.5, 0.5], 0.45), vec![1]);
        assert!((iou(&boxes[0], &boxes[1]) - 90.0 / 110.0).abs() < 1e-6);
        assert!(iou(&boxes[0], &boxes[2]) == 0.0);
    }

    #[test]
    fn other_dtypes_are_converted() {
        // [1, 5, 6]: one class, 6 anchors, only the first above the threshold.
        let mut data = vec![0.0; 30];
        (data[0], data[6], data[12], data[18], data[24]) = (5.0, 5.0, 2.0, 2.0, 0.5);
        let t = HostTensor { shape: vec![1, 5, 6], data: Data::F64(data) };
        let d = decode(&t, 0.25).unwrap();
        assert_eq!(d, vec![Detection { bbox: [4.0, 4.0, 6.0, 6.0], score: 0.5, class: 0 }]);
    }
}
