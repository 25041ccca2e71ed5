//! The built-in passes, one per file, each registered with `register_pass!`.
//! The first `//!` line of each file states its rewrite as `before => after`.

pub mod eliminate_common;
pub mod eliminate_dead;
pub mod eliminate_identity;
pub mod fold_batchnorm;
pub mod fold_bias_add;
pub mod fold_constants;
pub mod infer_shapes;
pub mod load_calibration;
pub mod resize_to_conv_transpose;
pub mod rewrite;
pub mod simplify_reshape;
pub mod to_fp16;
pub mod topo_sort;

/// Registrations live in this crate; calling this from a binary guarantees
/// the linker keeps them (the role a plugin's entry point plays for its
/// crate; `qforge::cli::main_with` calls it).
pub fn link() {}
