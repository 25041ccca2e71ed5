//! Command-line detection agreement, the Rust twin of `eval/agree.py`:
//!
//! ```text
//! cargo run --release -p qforge-yolo --example agree -- FP32.onnx CAND.onnx PHOTOS [--size N]
//! ```
//!
//! prints one line in the reference's format, e.g.
//! `photos=10x4 fp32_dets=57 cand_dets=55 recall=0.947 precision=0.982 mAP50_vs_fp32=0.941 output_sqnr_db=31.2`.

use std::path::PathBuf;
use std::process::ExitCode;

fn run(args: &[String]) -> Result<String, String> {
    let mut files: Vec<&str> = Vec::new();
    let mut size = 0usize;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--size" {
            let v = it.next().ok_or("--size needs a value")?;
            size = v.parse().map_err(|_| format!("--size: `{v}` is not a number"))?;
        } else if let Some(v) = a.strip_prefix("--size=") {
            size = v.parse().map_err(|_| format!("--size: `{v}` is not a number"))?;
        } else {
            files.push(a);
        }
    }
    let [fp32, cand, photos] = files[..] else {
        return Err("usage: agree FP32.onnx CANDIDATE.onnx PHOTOS_DIR [--size N]".into());
    };
    let load = |p: &str| qforge_ir::load(p).map_err(|e| format!("{p}: {e}"));
    let a = qforge_yolo::agreement(&load(fp32)?, &load(cand)?, &PathBuf::from(photos), size, Default::default())
        .map_err(|e| e.to_string())?;
    Ok(a.to_string())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
