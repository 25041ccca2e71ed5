//! qforge's pass framework and built-in passes.
//!
//! A pass is a struct that is its own options (deserialized from the
//! pipeline YAML with unknown fields refused) and implements [`Pass`]. It is
//! registered once with [`register_pass!`], which puts it in the
//! [`inventory`] registry that pipelines and `qforge passes` read. The
//! [`PassManager`] owns every cross-cutting concern (timing, the verifier
//! after each pass, IR dumps, bisecting, fixed-point groups, numeric checks),
//! so a pass only rewrites and reports what it did.
//!
//! Passes keep state for later passes in the context by type
//! ([`PassContext::ext`]) and leave work that needs the written file as
//! [`AfterSave`] hooks, so the framework names no pass.
//!
//! Plugins are ordinary crates that depend on this one and call
//! `register_pass!` / `register_metric!`. The linker keeps those
//! registrations only if the final binary refers to the plugin crate: the
//! `qforge` binary does through the plugin's entry point
//! (`qforge::cli::main_with(&[my_plugin::register])`, see the
//! `qforge-plugin` crate). Two registrations of one name are an error
//! ([`check_registrations`]).

#![deny(missing_docs)]

pub mod builtin;
pub mod calibrate;
mod context;
pub mod correct_bias;
pub mod insert_qdq;
pub mod interrupt;
mod located;
mod manager;
pub mod metric;
pub mod model_metric;
mod numerics;
pub mod ops;
pub mod opset;
mod pipeline;
pub mod precision;
pub mod qdq_rules;
mod registry;
pub mod skip_sensitive;
pub mod tensorrt;
pub mod tune_ranges;
pub mod util;

pub use context::{AfterSave, Extensions, PassContext, PassError, PassReport, Tolerance};
pub use located::{OptionCheck, OptionSpans};
pub use manager::{ManagerOptions, NumericCheck, NumericsReport, PassManager, PassRun, PrintAfter, RunReport};
pub use metric::{MetricInfo, all_metrics, find_metric};
pub use numerics::{NumericsOptions, compare_outputs};
pub use pipeline::{Origin, PassStep, Pipeline, Step};
pub use registry::{
    CalibOverrides, OptionDoc, PassInfo, PassOptions, all_passes, check_registrations, find_pass, suggest,
};

#[doc(hidden)]
pub use inventory;
#[doc(hidden)]
pub use serde_json;

use qforge_ir::Graph;

/// A graph rewrite or analysis.
pub trait Pass: Send + Sync {
    /// Runs on `graph`, reporting what changed. Errors name the node.
    fn run(&self, graph: &mut Graph, cx: &mut PassContext) -> Result<PassReport, PassError>;

    /// How closely the rewritten graph must match the original under
    /// `--check-numerics`.
    fn tolerance(&self) -> Tolerance {
        Tolerance::Exact
    }
}

/// Registers a pass type under a name, with a one-line description of its
/// rewrite (`before => after`). The type must implement [`Pass`] and
/// [`PassOptions`] (serde `Deserialize`/`Serialize` + `Default`).
///
/// ```ignore
/// register_pass!("fold-batchnorm", FoldBatchNorm, "Conv → BatchNormalization => Conv with folded weights");
/// ```
#[macro_export]
macro_rules! register_pass {
    ($name:literal, $ty:ty, $about:literal) => {
        $crate::inventory::submit! {
            $crate::PassInfo {
                name: $name,
                module: module_path!(),
                about: $about,
                create: |v| $crate::PassInfo::instantiate::<$ty>(v),
                defaults: || $crate::PassInfo::default_options::<$ty>(),
                docs: <$ty as $crate::PassOptions>::DOCS,
                calib: <$ty as $crate::PassOptions>::CALIB,
                float_outputs: <$ty as $crate::PassOptions>::FLOAT_OUTPUTS,
            }
        }
    };
}
