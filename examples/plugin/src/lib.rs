//! A qforge plugin: the pass `collapse-idempotent`, the metric
//! `top1-agreement` and the subcommand `idempotent-chains`.
//!
//! The pass and the metric register themselves where they are defined
//! (`register_pass!`, `register_metric!`); [`register`] is the entry point
//! a binary lists (`qforge::cli::main_with(&[my_plugin::register])`), which
//! links this crate, so those registrations are kept, and adds the
//! subcommand.

mod chains;
mod collapse_idempotent;
mod top1;

pub use collapse_idempotent::CollapseIdempotent;

/// The plugin's entry point.
pub fn register(q: &mut qforge::cli::Plugin) {
    q.subcommand("idempotent-chains", "List the F(F(x)) chains that collapse-idempotent would collapse", chains::run);
}
