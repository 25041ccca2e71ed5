//! The INT8 half of `cargo xtask demo`: `pipelines/yolo-int8.yaml` on every detector of the
//! assets, calibrated on the asset photos, judged against its own FP32 model, beside ONNX
//! Runtime's `quantize_static` (MinMax, the detector tail excluded as the bench does) on the
//! same photos.
//!
//! Agreement is measured by `qforge agree` (mAP50, recall, precision of the candidate's
//! detections against the FP32 model's, and output SQNR) with ONNX Runtime running both models
//! (the reference runtime; tract when ONNX Runtime is not installed). Models with random weights
//! detect nothing meaningful: only their SQNR is shown.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::Value;

use crate::bench::measure::{self, OrtQuant, num};
use crate::bench::{self, Ctx};
use crate::util::{self, Python};

/// A detector the demo quantizes.
struct Detector {
    file: &'static str,
    /// Input side for `qforge agree --size` and `ort_quant.py --size`.
    size: usize,
    /// Extra `qforge run` arguments.
    extra: &'static [&'static str],
    /// Trained weights: detection agreement means something.
    trained: bool,
}

const DETECTORS: &[Detector] = &[
    Detector { file: "nudenet-320n.onnx", size: 320, extra: &["--input-shape", "images=1,3,320,320"], trained: true },
    Detector { file: "yolov8s-torch-export-random.onnx", size: 640, extra: &[], trained: false },
    Detector { file: "yolov5n-untrained-unfused-bn.onnx", size: 640, extra: &[], trained: false },
];

/// One row of the summary.
struct Row {
    model: String,
    cells: Vec<String>,
    ok: bool,
}

/// Layer precisions from the `tensorrt` pass's counters in a run report.
fn precisions(report: &Value) -> String {
    let c = |p: &str| measure::report_counter(report, "tensorrt", &format!("{p} layers")).unwrap_or(0.0);
    format!("{:.0} / {:.0} / {:.0}", c("INT8"), c("FP16"), c("FP32"))
}

fn agreement(j: &Result<Value>, trained: bool) -> [String; 2] {
    match j {
        Ok(j) if trained => [
            format!(
                "{} / {} / {}",
                num(j["map50"].as_f64(), 3),
                num(j["recall"].as_f64(), 3),
                num(j["precision"].as_f64(), 3)
            ),
            num(j["sqnr_db"].as_f64(), 2),
        ],
        Ok(j) => ["(random weights)".into(), num(j["sqnr_db"].as_f64(), 2)],
        Err(e) => [format!("FAILED: {e}"), "—".into()],
    }
}

/// Runs the INT8 demo on the detectors among `models`; returns the markdown summary and whether
/// every qforge run succeeded.
pub fn run(models: &[PathBuf], qforge: &Path, out_dir: &Path) -> Result<(String, bool)> {
    let py = Python::find()?;
    let tools = match bench::ensure_python_tools(&py) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("warning: no ONNX Runtime comparison and tract measures agreement: {e:#}");
            false
        }
    };
    let engine = if tools { "ort" } else { "tract" };
    let args = bench::Args::for_demo();
    let ctx = Ctx::new(&args, qforge.to_path_buf(), py, models.to_vec(), out_dir.to_path_buf());
    let pipe = util::workspace_root().join("pipelines/yolo-int8.yaml");
    let mut rows = Vec::new();
    for d in DETECTORS {
        let Some(model) = models.iter().find(|m| m.file_name().is_some_and(|f| f == d.file)) else { continue };
        let stem = crate::models::stem(model);
        println!("\n==> [int8] {}", d.file);
        let out = out_dir.join(format!("{stem}.int8.onnx"));
        let mut row = Row { model: stem.clone(), cells: Vec::new(), ok: true };
        match measure::qforge_run(&ctx, &pipe, model, &out, d.extra) {
            Ok((m, report)) => {
                let last = report["runs"].as_array().and_then(|r| r.last());
                let nodes = last.and_then(|r| r["nodes_after"].as_u64()).map_or("?".into(), |n| n.to_string());
                row.cells.extend([nodes, precisions(&report)]);
                row.cells.extend(agreement(&measure::agree(&ctx, model, &out, d.size, engine), d.trained));
                row.cells.push(format!("{:.1}", m.seconds));
            }
            Err(e) => {
                row.ok = false;
                row.cells.extend([format!("FAILED: {e}"), "—".into(), "—".into(), "—".into(), "—".into()]);
            }
        }
        if tools {
            let ort_out = out_dir.join(format!("{stem}.ort-minmax.onnx"));
            let ort = bench::int8::tail_file(&ctx, model).and_then(|tail| {
                let o = OrtQuant { method: "minmax", exclude_file: Some(&tail), repeat: 1, size: d.size };
                measure::ort_quant(&ctx, model, &ort_out, &o)
            });
            match ort {
                Ok((m, _)) => {
                    row.cells.extend(agreement(&measure::agree(&ctx, model, &ort_out, d.size, engine), d.trained));
                    row.cells.push(format!("{:.1}", m.seconds));
                }
                Err(e) => row.cells.extend([format!("FAILED: {e}"), "—".into(), "—".into()]),
            }
        } else {
            row.cells.extend(["(no python)".into(), "—".into(), "—".into()]);
        }
        rows.push(row);
    }
    let header = [
        "model",
        "qforge yolo-int8: nodes",
        "INT8 / FP16 / FP32 layers",
        "mAP50 / recall / precision vs FP32",
        "SQNR dB",
        "time s",
        "ORT quantize_static (MinMax, tail float): mAP50 / recall / precision",
        "SQNR dB",
        "time s",
    ];
    let table: Vec<Vec<String>> =
        rows.iter().map(|r| std::iter::once(r.model.clone()).chain(r.cells.iter().cloned()).collect()).collect();
    let mut md = util::markdown_table(&header, &table);
    md += &format!(
        "\nCalibration and agreement on every photo of assets/photos in 4 views; both models of each \
         comparison run by {}. Layer precisions as the written graph gives them (strongly typed for \
         TensorRT 10/11: each layer runs in that precision; FP32 where a range or weight does not fit FP16).\n",
        if engine == "ort" { "ONNX Runtime" } else { "tract (ONNX Runtime not installed)" }
    );
    Ok((md, rows.iter().all(|r| r.ok)))
}
