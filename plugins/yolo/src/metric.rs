//! `yolo-map50`: detection agreement as a qforge metric, so
//! `skip-sensitive` can rank layers by what the detector detects rather
//! than by raw output error (which a YOLO head's box coordinates, in the
//! hundreds, dominate over its 0–1 scores).

use qforge_passes::metric::Outputs;
use qforge_passes::register_metric;

use crate::metrics::AgreementBuilder;

/// mAP50 of the candidate's detections against the float model's, over all
/// samples (first output of each).
fn map50(reference: &Outputs, test: &Outputs) -> Result<f64, String> {
    let mut b = AgreementBuilder::new();
    for (r, t) in reference.iter().zip(test) {
        let (Some(r), Some(t)) = (r.first(), t.first()) else { return Err("a model has no output".into()) };
        b.add(r, t).map_err(|e| e.to_string())?;
    }
    let a = b.finish();
    if a.fp32_dets == 0 {
        return Err(format!(
            "the float model detects nothing on these {} samples (score > 0.25); use more or other samples, or metric sqnr",
            a.images
        ));
    }
    Ok(a.map50)
}

register_metric!(
    "yolo-map50",
    map50,
    "detection agreement with the float model (YOLOv5/v8 heads): mAP50 with float detections as ground truth, 0–1"
);
