//! `top1-agreement`: how often a classifier's top-1 class survives
//! quantization, for `skip-sensitive: {metric: top1-agreement}`.

use qforge::passes::metric::Outputs;
use qforge::passes::register_metric;

/// The fraction of samples whose argmax of the first output is the float
/// model's; higher is better, 1 = always the same class.
fn top1(reference: &Outputs, test: &Outputs) -> Result<f64, String> {
    if reference.is_empty() {
        return Err("no samples".into());
    }
    let argmax = |v: Vec<f64>| v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|m| m.0);
    let mut same = 0;
    for (r, t) in reference.iter().zip(test) {
        let (Some(r), Some(t)) = (r.first(), t.first()) else { return Err("a model has no output".into()) };
        if argmax(r.to_f64_vec()) == argmax(t.to_f64_vec()) {
            same += 1;
        }
    }
    Ok(same as f64 / reference.len() as f64)
}

register_metric!("top1-agreement", top1, "classifiers: share of samples whose top-1 class is the float model's, 0–1");
