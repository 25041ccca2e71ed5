//! `qforge agree`: detection agreement of a candidate model with its FP32
//! reference, the measure of a quantized detector; a subcommand this plugin
//! adds to the binaries that link it ([`crate::register`]).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

/// Arguments of `qforge agree`.
#[derive(Debug, Args)]
pub struct AgreeArgs {
    /// The FP32 reference model.
    fp32: PathBuf,
    /// The candidate (e.g. the INT8 Q/DQ model).
    candidate: PathBuf,
    /// Folder of photos (4 views of each are scored).
    #[arg(long)]
    images: PathBuf,
    /// Input side (0 = the model's, or 640 when dynamic).
    #[arg(long, default_value_t = 0)]
    size: usize,
    /// Engine that runs both models: auto (ONNX Runtime when its library is
    /// found, else tract), tract (embedded) or ort (ONNX Runtime).
    #[arg(long, value_name = "auto|tract|ort", default_value = "auto", value_parser = qforge_plugin::parse_engine)]
    engine: qforge_runtime::Engine,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs the command.
pub fn run(a: AgreeArgs) -> Result<()> {
    let f = qforge_ir::load(&a.fp32).with_context(|| format!("loading {}", a.fp32.display()))?;
    let c = qforge_ir::load(&a.candidate).with_context(|| format!("loading {}", a.candidate.display()))?;
    let r = crate::agreement(&f, &c, &a.images, a.size, a.engine)?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "images": r.images, "fp32_dets": r.fp32_dets, "cand_dets": r.cand_dets,
                "engine": a.engine.name(), "recall": r.recall, "precision": r.precision, "map50": r.map50,
                "sqnr_db": if r.sqnr_db.is_finite() { serde_json::json!(r.sqnr_db) } else { serde_json::json!(null) },
            })
        );
    } else {
        println!("{r}");
    }
    Ok(())
}
