//! `qforge passes`: the registry, documented.

use anyhow::{Result, bail};
use clap::Args;

/// Arguments of `qforge passes`.
#[derive(Debug, Args)]
pub struct PassesArgs {
    /// Show only this pass.
    name: Option<String>,
}

/// Runs the command.
pub fn run(a: PassesArgs) -> Result<()> {
    let all = qforge_passes::all_passes();
    let shown: Vec<_> = all.iter().filter(|p| a.name.as_deref().is_none_or(|n| n == p.name)).collect();
    if shown.is_empty() {
        let name = a.name.unwrap_or_default();
        let hint = qforge_passes::suggest(&name, all.iter().map(|p| p.name))
            .map(|s| format!("; did you mean `{s}`?"))
            .unwrap_or_default();
        bail!("no pass named `{name}`{hint}");
    }
    for p in shown {
        println!("{}\n    {}", p.name, p.about);
        let defaults = (p.defaults)();
        for (opt, doc) in p.docs {
            let d = defaults.get(*opt).map(|v| v.to_string()).unwrap_or_default();
            println!("    {opt} = {d}\n        {doc}");
        }
        if let Some(overrides) = p.calib {
            let set = overrides(std::path::Path::new("PATH")).join(", ");
            println!("    takes `qforge run --calib PATH` (a folder of photos sets {set})");
        }
        println!();
    }
    if a.name.is_none() {
        println!("metrics (passes with a `metric` option select one by name):");
        let metrics = qforge_passes::all_metrics();
        let w = metrics.iter().map(|m| m.name.len()).max().unwrap_or(0);
        for m in metrics {
            println!("    {:<w$}  {}", m.name, m.about);
        }
        println!();
    }
    println!("Use in a pipeline as `- NAME` or `- NAME: {{option: value}}`; override with --set NAME.option=value.");
    Ok(())
}
