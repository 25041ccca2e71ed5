//! Model-quality metrics for analyses such as `skip-sensitive`: a score of a
//! quantized model's outputs against the float model's, higher is better.
//!
//! Metrics are registered like passes (`register_metric!`), so a plugin can
//! bring a task-aware one (e.g. detection agreement for a detector) and
//! pipelines select it by name.

use qforge_runtime::HostTensor;

/// Outputs of a model on each sample: `[sample][output]`.
pub type Outputs = [Vec<HostTensor>];

/// A registered metric.
pub struct MetricInfo {
    /// Name used in pipelines (`metric: sqnr`).
    pub name: &'static str,
    /// The module that registered it (`module_path!()`).
    pub module: &'static str,
    /// One line: what it measures and its unit.
    pub about: &'static str,
    /// Score of `test` against `reference`; higher is better.
    pub score: fn(reference: &Outputs, test: &Outputs) -> Result<f64, String>,
}

inventory::collect!(MetricInfo);

/// Registers a metric function under a name.
#[macro_export]
macro_rules! register_metric {
    ($name:literal, $f:path, $about:literal) => {
        $crate::inventory::submit! {
            $crate::MetricInfo { name: $name, module: module_path!(), about: $about, score: $f }
        }
    };
}

/// The metric called `name`.
pub fn find_metric(name: &str) -> Option<&'static MetricInfo> {
    inventory::iter::<MetricInfo>.into_iter().find(|m| m.name == name)
}

/// Every registered metric, by name.
pub fn all_metrics() -> Vec<&'static MetricInfo> {
    let mut v: Vec<_> = inventory::iter::<MetricInfo>.into_iter().collect();
    v.sort_by_key(|m| m.name);
    v
}

/// SQNR in dB of `test` against `reference`, over all samples and outputs:
/// `10·log10(Σy² / Σ(y − ŷ)²)`; `+inf` when identical.
pub fn sqnr_db(reference: &Outputs, test: &Outputs) -> f64 {
    let (mut sig, mut noise) = (0.0f64, 0.0f64);
    for (a, b) in reference.iter().zip(test) {
        for (x, y) in a.iter().zip(b) {
            for (p, q) in x.to_f64_vec().into_iter().zip(y.to_f64_vec()) {
                sig += p * p;
                noise += (p - q) * (p - q);
            }
        }
    }
    if noise == 0.0 { f64::INFINITY } else { 10.0 * (sig / noise).log10() }
}

fn sqnr_metric(reference: &Outputs, test: &Outputs) -> Result<f64, String> {
    Ok(sqnr_db(reference, test))
}

/// Cosine similarity of all outputs, flattened.
fn cosine_metric(reference: &Outputs, test: &Outputs) -> Result<f64, String> {
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (a, b) in reference.iter().zip(test) {
        for (x, y) in a.iter().zip(b) {
            for (p, q) in x.to_f64_vec().into_iter().zip(y.to_f64_vec()) {
                dot += p * q;
                na += p * p;
                nb += q * q;
            }
        }
    }
    Ok(if na == 0.0 || nb == 0.0 { 0.0 } else { dot / (na.sqrt() * nb.sqrt()) })
}

register_metric!("sqnr", sqnr_metric, "output SQNR vs float, dB: 10·log10(Σy²/Σ(y−ŷ)²) over all outputs");
register_metric!("cosine", cosine_metric, "cosine similarity of all outputs with the float model's (1 = identical)");
