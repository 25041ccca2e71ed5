//! `qforge passes`: the registry, documented.

use anyhow::{Result, bail};
use clap::Args;

/// Arguments of `qforge passes`.
#[derive(Debug, Args)]
pub struct PassesArgs {
    /// Show only this pass.
    name: Option<String>,
    /// List the built-in pipelines (usable by name: `qforge run yolo-int8 …`).
    #[arg(long, conflicts_with_all = ["name", "show"])]
    pipelines: bool,
    /// Print the YAML of this built-in pipeline (a starting point for your own).
    #[arg(long, value_name = "PIPELINE", conflicts_with = "name")]
    show: Option<String>,
}

/// Runs the command.
pub fn run(a: PassesArgs) -> Result<()> {
    if a.pipelines {
        for (name, _) in crate::BUILTIN_PIPELINES {
            let p = qforge_passes::Pipeline::load_builtin(name, crate::BUILTIN_PIPELINES)?;
            let about = p.about.split(". ").next().unwrap_or_default().trim_end_matches('.');
            println!("{name}\n    {about}.\n    passes: {}", p.pass_names().join(", "));
        }
        println!("\nRun one by name from any folder (`qforge run NAME -i IN -o OUT`); `--show NAME` prints its YAML.");
        return Ok(());
    }
    if let Some(name) = &a.show {
        let Some((_, text)) = crate::BUILTIN_PIPELINES.iter().find(|(n, _)| n == name) else {
            let names: Vec<&str> = crate::BUILTIN_PIPELINES.iter().map(|p| p.0).collect();
            bail!("--show {name}: not a built-in pipeline (built-in: {})", names.join(", "));
        };
        print!("{text}");
        return Ok(());
    }
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
