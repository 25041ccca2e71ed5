//! qforge: a plugin-based compiler-pass framework for ONNX.
//!
//! This crate is the command-line tool and the one-stop dependency for
//! library users: it re-exports the IR ([`ir`]), the runtime ([`runtime`])
//! and the pass framework ([`passes`]). See the README for the pipeline
//! format and how to write a pass.

#![deny(missing_docs)]

pub mod cli;

pub use qforge_ir as ir;
pub use qforge_passes as passes;
pub use qforge_runtime as runtime;

/// Pipelines shipped with qforge, usable by name from any folder
/// (`qforge run yolo-int8 …`); their includes resolve among themselves.
/// The files in `pipelines/` are the source; `qforge passes --pipelines`
/// lists these and `--show NAME` prints one to start a variant from.
pub const BUILTIN_PIPELINES: &[(&str, &str)] = &[
    ("fold", include_str!("../pipelines/fold.yaml")),
    ("calibrate", include_str!("../pipelines/calibrate.yaml")),
    ("yolo-int8", include_str!("../pipelines/yolo-int8.yaml")),
    ("yolo-int8-trt8", include_str!("../pipelines/yolo-int8-trt8.yaml")),
    ("yolo-int8-tuned", include_str!("../pipelines/yolo-int8-tuned.yaml")),
    ("rewrite-example", include_str!("../pipelines/rewrite-example.yaml")),
];

#[cfg(test)]
mod tests {
    use std::path::Path;

    use qforge_passes::Pipeline;

    /// Every file in `pipelines/` is built in, and loads by name to the same
    /// steps as from its file (includes resolved among the built-ins).
    #[test]
    fn builtin_pipelines_are_the_files_and_load_by_name() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter_map(|e| e.path().file_stem().map(|s| s.to_string_lossy().into_owned()))
            .collect();
        files.sort();
        let mut names: Vec<String> = super::BUILTIN_PIPELINES.iter().map(|p| p.0.to_string()).collect();
        names.sort();
        assert_eq!(files, names, "pipelines/ and BUILTIN_PIPELINES differ");
        for (name, text) in super::BUILTIN_PIPELINES {
            assert_eq!(std::fs::read_to_string(dir.join(format!("{name}.yaml"))).unwrap(), *text);
            let built_in = Pipeline::load_builtin(name, super::BUILTIN_PIPELINES).unwrap();
            let file = Pipeline::load(dir.join(format!("{name}.yaml"))).unwrap();
            assert_eq!(built_in.name, file.name);
            assert_eq!(built_in.pass_names(), file.pass_names(), "{name}");
            assert!(!built_in.pass_names().is_empty());
        }
        let e = Pipeline::load_builtin("nope", super::BUILTIN_PIPELINES).unwrap_err().to_string();
        assert!(e.contains("not a built-in pipeline (built-in: fold, calibrate"), "{e}");
    }
}
