//! Raw torch exports rebuilt from committed skeletons.
//!
//! The two raw exports the tests need most (a YOLOv8s exactly as `torch.onnx.export`
//! writes it, and an untrained YOLOv5n with BatchNormalization left unfused) are on
//! no package index. Their *structure* is what matters — Constant nodes,
//! Shape→Gather→Slice chains, unfused BN, in-graph Resize sizes — and their weights are
//! random anyway. So the repository keeps a skeleton of each (`xtask/skeletons/*.onnx`:
//! every node, attribute and small constant verbatim, large float initializers with
//! their data removed and a `qforge-skeleton <normal mean std | uniform lo hi>` recipe in
//! the tensor's doc string), and `cargo xtask assets` fills the weights back in from a
//! seeded generator. The result is the same every time, on every machine, and needs
//! nothing but this repository.
//!
//! The skeletons were made from the models in the shared folder by
//! `xtask/scripts/make_skeleton.py`, which records each tensor's own distribution
//! (uniform over its range for positive tensors such as BN scales and variances,
//! normal with its mean and deviation otherwise).

use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};
use prost::Message;
use qforge_ir::proto::ModelProto;

/// The marker that starts a recipe in an initializer's doc string.
const MARK: &str = "qforge-skeleton ";

/// A committed skeleton and the asset it becomes.
pub struct Skeleton {
    /// File under `xtask/skeletons/`.
    pub file: &'static str,
    /// Destination relative to the assets folder.
    pub dest: &'static str,
    /// What it is, for `assets/README.txt`.
    pub about: &'static str,
}

/// The skeletons `cargo xtask assets` rebuilds.
pub const SKELETONS: &[Skeleton] = &[
    Skeleton {
        file: "yolov8s-torch-export.skel.onnx",
        dest: "models/yolov8s-torch-export-random.onnx",
        about: "a YOLOv8s exactly as torch.onnx.export (torch 2.x, opset 17) writes it: 57 BatchNormalization \
                unfused, 95 Constant nodes, Shape->Gather->Add->Div->Mul->Slice chains, no value_info, \
                output [1,6,8400]; random weights",
    },
    Skeleton {
        file: "yolov5n-untrained-unfused-bn.skel.onnx",
        dest: "models/yolov5n-untrained-unfused-bn.onnx",
        about: "an untrained YOLOv5n torch export: 57 BatchNormalization unfused, 213 Identity, 2 nearest \
                Resize with in-graph sizes, output [1,25200,85]; random weights",
    },
];

/// SplitMix64: a generator whose stream is defined here, not by a crate version.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in (0, 1).
    fn open01(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.open01(), self.open01());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// FNV-1a of the tensor name: each tensor's stream depends on its name only, so the
/// weights do not change when the file order does.
fn seed_of(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Values for a recipe: `normal MEAN STD` or `uniform LO HI`.
fn generate(recipe: &str, name: &str, n: usize) -> Result<Vec<f32>> {
    let parts: Vec<&str> = recipe.split_whitespace().collect();
    let num = |s: &str| s.parse::<f64>().with_context(|| format!("tensor {name}: bad number {s:?} in recipe"));
    let mut rng = Rng(seed_of(name));
    match parts.as_slice() {
        ["normal", mean, std] => {
            let (m, s) = (num(mean)?, num(std)?);
            Ok((0..n).map(|_| (m + s * rng.normal()) as f32).collect())
        }
        ["uniform", lo, hi] => {
            let (a, b) = (num(lo)?, num(hi)?);
            Ok((0..n).map(|_| (a + (b - a) * rng.open01()) as f32).collect())
        }
        _ => bail!("tensor {name}: unknown recipe {recipe:?}"),
    }
}

/// Decodes a skeleton, fills every recipe initializer, and returns the model bytes.
pub fn fill(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut m = ModelProto::decode(bytes).context("the skeleton is not an ONNX model")?;
    let g = m.graph.as_mut().context("the skeleton has no graph")?;
    let mut filled = 0;
    for t in &mut g.initializer {
        let Some(recipe) = t.doc_string.as_deref().and_then(|d| d.strip_prefix(MARK)).map(str::to_string) else {
            continue;
        };
        if t.data_type != Some(1) {
            bail!("tensor {}: recipes are for float32 tensors only", t.name());
        }
        let n = t.dims.iter().try_fold(1usize, |acc, &d| usize::try_from(d).ok().and_then(|d| acc.checked_mul(d)));
        let n = n.with_context(|| format!("tensor {}: bad dims {:?}", t.name(), t.dims))?;
        let values = generate(&recipe, t.name(), n)?;
        t.raw_data = Some(values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>().into());
        t.float_data.clear();
        t.doc_string = None;
        filled += 1;
    }
    if filled == 0 {
        bail!("the skeleton has no `{}` initializer: nothing to fill", MARK.trim());
    }
    Ok(m.encode_to_vec())
}

/// Rebuilds `dest` from the skeleton `src` (written atomically).
pub fn rebuild(src: &Path, dest: &Path) -> Result<()> {
    let bytes = fs::read(src).with_context(|| format!("cannot read {}", src.display()))?;
    let model = fill(&bytes).with_context(|| format!("rebuilding from {}", src.display()))?;
    let part = dest.with_extension("onnx.part");
    fs::write(&part, model).with_context(|| format!("cannot write {}", part.display()))?;
    fs::rename(&part, dest).with_context(|| format!("cannot rename {} to {}", part.display(), dest.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipes_follow_their_distribution_and_are_reproducible() {
        let a = generate("normal 0.5 2", "w", 20000).unwrap();
        let mean = a.iter().map(|&x| f64::from(x)).sum::<f64>() / a.len() as f64;
        let var = a.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum::<f64>() / a.len() as f64;
        assert!((mean - 0.5).abs() < 0.05, "{mean}");
        assert!((var.sqrt() - 2.0).abs() < 0.05, "{}", var.sqrt());
        assert_eq!(a, generate("normal 0.5 2", "w", 20000).unwrap());
        assert_ne!(a, generate("normal 0.5 2", "w2", 20000).unwrap());
        let u = generate("uniform 0.5 1.5", "v", 1000).unwrap();
        assert!(u.iter().all(|&x| (0.5..=1.5).contains(&x)));
        assert!(generate("gamma 1 2", "x", 3).is_err());
    }
}
