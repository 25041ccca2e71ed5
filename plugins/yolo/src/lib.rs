//! Detection agreement of a candidate YOLO model (typically the INT8 Q/DQ
//! model a qforge pipeline produced) with its FP32 reference, on real photos.
//!
//! Quantization is judged by what the detector *detects*, not only by how far
//! its raw outputs move. Without labelled data, the FP32 model's detections
//! serve as pseudo ground truth and the candidate is scored against them:
//!
//! | metric | definition |
//! |---|---|
//! | `fp32_dets`, `cand_dets` | detections after score > 0.25 and per-class NMS at IoU 0.45 |
//! | `recall` | matched candidate detections / `fp32_dets` |
//! | `precision` | matched candidate detections / `cand_dets` |
//! | `map50` | mean over the classes FP32 detected of the COCO 101-point AP at IoU 0.5 |
//! | `sqnr_db` | `10·log10(Σ y_fp32² / Σ (y_fp32 − y_cand)²)` over the raw outputs of all images |
//!
//! Matching is per image and greedy: candidate detections by descending
//! score, each to the unused FP32 box of its class with the best IoU, a hit
//! when that IoU is at least 0.5.
//!
//! This crate is qforge's own implementation of the reference script
//! `eval/agree.py` (ONNX Runtime + NumPy + PIL) and reproduces its definitions
//! number for number: the head-layout rule, `f32` box arithmetic, the `1e-9`
//! in the IoU, strict and non-strict comparisons, tie order, photo listing,
//! the 4 views per photo, and PIL's bilinear letterbox bit for bit (the runtime's
//! [`qforge_runtime::data::preprocess`] reproduces Pillow's resampling).
//! Fed the same raw outputs, it prints the script's line character for
//! character. What remains different:
//!
//! - identical outputs give an SQNR of `+inf` (the script clamps the noise to
//!   1e-30 and prints ~300–400 dB);
//! - JPEG photos are decoded by the `image` crate, whose pixels differ from
//!   libjpeg-turbo's (PIL) by up to 4 grey levels on a few percent of them
//!   (PNG decodes identically);
//! - the models run with tract instead of ONNX Runtime (outputs differ in
//!   the last bits).
//!
//! Either can move a detection that sits right at the 0.25 threshold, so
//! counts may differ by one now and then on JPEG photos.
//!
//! # Using it
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let fp32 = qforge_ir::load("yolov8n.onnx")?;
//! let int8 = qforge_ir::load("yolov8n.int8.onnx")?;
//! let engine = qforge_runtime::Engine::Tract; // or Ort (feature `ort`)
//! let a = qforge_yolo::agreement(&fp32, &int8, "photos/".as_ref(), 640, engine)?;
//! println!("{a}"); // photos=10x4 fp32_dets=57 cand_dets=55 recall=0.947 …
//! assert!(a.map50 > 0.9, "INT8 model lost detections: {a}");
//! # Ok(()) }
//! ```
//!
//! With outputs from elsewhere (another engine, a batch loop of your own),
//! feed them image by image to an [`AgreementBuilder`]; [`decode`] alone turns
//! a raw head output into [`Detection`]s. The `agree` example is the command
//! line version (`cargo run --release -p qforge-yolo --example agree --
//! FP32.onnx CAND.onnx PHOTOS [--size N]`), with the reference's output line.
//!
//! # A qforge plugin crate
//!
//! Plugins hold what is not general enough for the core crates: YOLO head
//! layouts, decoders, detection metrics, model-family rules. This one shows the
//! shape of such a crate:
//!
//! - it lives in `plugins/<name>/` as its own workspace member and depends
//!   only *down* the crate table: `qforge-ir` for models, `qforge-runtime`
//!   for sessions and tensors, `qforge-passes` for its metric
//!   (`register_metric!`; passes use `register_pass!`) and `qforge-plugin`
//!   for its entry point, [`register`], which adds the `agree` subcommand;
//!   qforge's default binary lists it like any other plugin
//!   (`qforge::cli::main_with(&[qforge_yolo::register])`), and
//!   `examples/plugin/` is the same shape outside the workspace;
//! - it reuses the runtime's sessions ([`qforge_runtime::session`]) and
//!   tensors ([`qforge_runtime::HostTensor`]) and the same letterbox as
//!   calibration ([`qforge_runtime::data::preprocess`]), so the photos a
//!   model was calibrated on are the tensors it is judged on;
//! - its errors are one `thiserror` enum whose messages name the file, the
//!   model or the shape involved;
//! - its integration test checks it against the reference implementation
//!   (here `agree.py` on ONNX Runtime) when that is available, and prints a
//!   loud `*** SKIP ***` line when it is not.
//!
//! Within qforge the agreement is the detector-aware metric of the
//! sensitivity analysis: quantize everything, put one layer back in float,
//! measure [`Agreement::map50`], rank the layers.

#![deny(missing_docs)]

mod agree;
mod decode;
mod metric;
mod metrics;
mod photos;

pub use decode::{CONF_THRESHOLD, Detection, Layout, NMS_IOU, decode, iou, nms};
pub use metrics::{Agreement, AgreementBuilder, MATCH_IOU, average_precision};
pub use photos::{DEFAULT_SIZE, agreement, list_photos, load_photo, views};

use std::path::PathBuf;

/// The plugin's entry point (see `qforge_plugin`): a binary that lists it
/// (`qforge::cli::main_with(&[qforge_yolo::register])`, as qforge's default
/// binary does) gets the `yolo-map50` metric and the `agree` subcommand.
pub fn register(q: &mut qforge_plugin::Plugin) {
    q.subcommand(
        "agree",
        "Detection agreement of a candidate (e.g. INT8) YOLO model with its FP32 reference on photos",
        agree::run,
    );
}

/// Errors of decoding and scoring.
#[derive(Debug, thiserror::Error)]
pub enum YoloError {
    /// The output is not a YOLOv8 or YOLOv5 detection head.
    #[error(
        "unsupported detector output shape {shape:?}: expected [1, 4+C, N] (YOLOv8 head, N > 4+C) \
         or [1, N, 5+C] (YOLOv5 head, N ≥ 5+C), with C ≥ 1 classes"
    )]
    UnsupportedShape {
        /// The output's shape.
        shape: Vec<usize>,
    },
    /// The output is not a float tensor.
    #[error("detector output has element type {0}; expected f32 (or f16/f64)")]
    UnsupportedType(String),
    /// The two models' outputs differ in shape, so they cannot be compared.
    #[error("the outputs differ in shape: FP32 {fp32:?}, candidate {cand:?}; both models must have the same head")]
    ShapeMismatch {
        /// Shape of the FP32 output.
        fp32: Vec<usize>,
        /// Shape of the candidate output.
        cand: Vec<usize>,
    },
    /// The photo folder holds no usable file.
    #[error("no .jpg/.jpeg/.png photos in {}", .0.display())]
    NoPhotos(PathBuf),
    /// A photo (or the folder) cannot be read.
    #[error("{}: {reason}", path.display())]
    Photo {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A model does not fit (inputs, outputs).
    #[error("{which}: {reason}")]
    Model {
        /// `FP32 model` or `candidate model`.
        which: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The runtime could not prepare or run a model.
    #[error("{which}: {source}")]
    Runtime {
        /// `FP32 model` or `candidate model`.
        which: &'static str,
        /// The runtime's error.
        #[source]
        source: qforge_runtime::RuntimeError,
    },
}
