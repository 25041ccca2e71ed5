//! The pass registry: every `register_pass!` in any linked crate adds one
//! [`PassInfo`], found by name when a pipeline is built.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Pass, PassError};

/// One documented option: name and one-line description.
pub type OptionDoc = (&'static str, &'static str);

/// A pass type's options: the struct itself, deserialized from YAML.
///
/// `Default` gives the documented defaults; `Serialize` lets `qforge
/// passes` print them; `DOCS` describes each field in one line (a test
/// checks it lists exactly the serialized fields).
pub trait PassOptions: Pass + Default + Serialize + DeserializeOwned + 'static {
    /// `(option, description)` for every field.
    const DOCS: &'static [OptionDoc] = &[];

    /// For a pass that reads a data set: the option overrides that point it
    /// at PATH when the user runs `qforge run --calib PATH` (`--set` syntax
    /// without the pass name, e.g. `data.images="photos/"`), so the command
    /// line names no pass.
    const CALIB: Option<CalibOverrides> = None;

    /// Whether the pass compares against the float model's outputs on the
    /// calibration samples (`CalibrationData::float_outputs`). `calibrate`
    /// keeps those outputs (up to 64 samples, 256 MB) only when a pass after
    /// it in the pipeline says so; a pass that finds none runs the float
    /// model itself.
    const FLOAT_OUTPUTS: bool = false;
}

/// See [`PassOptions::CALIB`].
pub type CalibOverrides = fn(&std::path::Path) -> Vec<String>;

/// A registered pass.
pub struct PassInfo {
    /// The name pipelines use (`fold-batchnorm`).
    pub name: &'static str,
    /// The module that registered it (`module_path!()`), to tell two
    /// registrations of one name apart.
    pub module: &'static str,
    /// One line: the rewrite as `before => after`.
    pub about: &'static str,
    /// Builds the pass from its options (a JSON object; `null` = defaults).
    pub create: fn(&serde_json::Value) -> Result<Box<dyn Pass>, String>,
    /// The default options as JSON.
    pub defaults: fn() -> serde_json::Value,
    /// Option descriptions.
    pub docs: &'static [OptionDoc],
    /// What `qforge run --calib PATH` sets ([`PassOptions::CALIB`]).
    pub calib: Option<CalibOverrides>,
    /// Whether it reads the float model's kept outputs ([`PassOptions::FLOAT_OUTPUTS`]).
    pub float_outputs: bool,
}

inventory::collect!(PassInfo);

impl PassInfo {
    /// Deserializes options into a pass; unknown options get a suggestion.
    pub fn instantiate<T: PassOptions>(options: &serde_json::Value) -> Result<Box<dyn Pass>, String> {
        let defaults = Self::default_options::<T>();
        let known: Vec<&str> = defaults.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
        match options {
            serde_json::Value::Null => return Ok(Box::new(T::default())),
            serde_json::Value::Object(map) => {
                for key in map.keys() {
                    if !known.contains(&key.as_str()) {
                        let hint = suggest(key, known.iter().copied())
                            .map(|s| format!("; did you mean `{s}`?"))
                            .unwrap_or_default();
                        let list = if known.is_empty() { "none".to_string() } else { known.join(", ") };
                        return Err(format!("unknown option `{key}`{hint} (options: {list})"));
                    }
                }
            }
            other => {
                return Err(format!("options must be a mapping of option: value, got `{other}`"));
            }
        }
        serde_json::from_value::<T>(options.clone())
            .map(|p| Box::new(p) as Box<dyn Pass>)
            .map_err(|e| format!("bad option value: {e}"))
    }

    /// The default options of `T` as JSON.
    pub fn default_options<T: PassOptions>() -> serde_json::Value {
        serde_json::to_value(T::default()).unwrap_or(serde_json::Value::Null)
    }
}

/// Every registered pass, sorted by name.
pub fn all_passes() -> Vec<&'static PassInfo> {
    let mut v: Vec<&'static PassInfo> = inventory::iter::<PassInfo>.into_iter().collect();
    v.sort_by_key(|p| p.name);
    v
}

/// The pass called `name` (the first registration, if there are two:
/// [`check_registrations`] makes that an error at start-up, and
/// [`PassManager::new`](crate::PassManager::new) for the passes it uses).
pub fn find_pass(name: &str) -> Option<&'static PassInfo> {
    inventory::iter::<PassInfo>.into_iter().find(|p| p.name == name)
}

/// The one pass called `name`: `Ok(None)` when there is none, an error
/// naming both registrations when there are two.
pub(crate) fn unique_pass(name: &str) -> Result<Option<&'static PassInfo>, PassError> {
    let found: Vec<&'static PassInfo> = inventory::iter::<PassInfo>.into_iter().filter(|p| p.name == name).collect();
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        more => Err(duplicate("pass", name, more.iter().map(|p| p.module))),
    }
}

fn duplicate<'a>(kind: &'static str, name: &str, modules: impl Iterator<Item = &'a str>) -> PassError {
    let mut modules: Vec<&str> = modules.collect();
    modules.sort_unstable();
    PassError::DuplicateName { kind, name: name.to_string(), modules: modules.iter().map(|m| m.to_string()).collect() }
}

/// Fails when two passes, or two metrics, are registered under one name
/// (two plugins, or a plugin and a built-in): the error names the modules
/// of both, so the user knows which crate to change. The `qforge` binary
/// runs this at start-up.
pub fn check_registrations() -> Result<(), PassError> {
    check_pass_names()?;
    check_metric_names()
}

fn check_pass_names() -> Result<(), PassError> {
    unique_names("pass", inventory::iter::<PassInfo>.into_iter().map(|p| (p.name, p.module)).collect())
}

fn check_metric_names() -> Result<(), PassError> {
    unique_names("metric", inventory::iter::<crate::MetricInfo>.into_iter().map(|m| (m.name, m.module)).collect())
}

/// `(name, module)` pairs: an error for the first name that occurs twice.
fn unique_names(kind: &'static str, mut items: Vec<(&'static str, &'static str)>) -> Result<(), PassError> {
    items.sort_unstable();
    match items.chunk_by(|a, b| a.0 == b.0).find(|same| same.len() > 1) {
        Some(same) => Err(duplicate(kind, same[0].0, same.iter().map(|i| i.1))),
        None => Ok(()),
    }
}

/// The candidate closest to `word`, if it is close enough to be a typo.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(d, c)| *d <= 3.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pass_documents_exactly_its_options() {
        assert!(!all_passes().is_empty());
        for p in all_passes() {
            let defaults = (p.defaults)();
            let mut fields: Vec<&str> =
                defaults.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
            let mut docs: Vec<&str> = p.docs.iter().map(|d| d.0).collect();
            fields.sort();
            docs.sort();
            assert_eq!(fields, docs, "pass {} documents other options than it has", p.name);
            assert!(p.about.contains("=>"), "pass {}: about must read `before => after`", p.name);
            assert!((p.create)(&serde_json::Value::Null).is_ok(), "pass {} has no usable defaults", p.name);
        }
    }

    /// Two registrations of one pass name and of one metric name, from two
    /// modules, as two plugins would make them.
    mod plugin_a {
        use serde::{Deserialize, Serialize};

        #[derive(Default, Serialize, Deserialize)]
        pub struct Twice {}
        impl crate::PassOptions for Twice {}
        impl crate::Pass for Twice {
            fn run(
                &self,
                _: &mut qforge_ir::Graph,
                _: &mut crate::PassContext,
            ) -> Result<crate::PassReport, crate::PassError> {
                Ok(crate::PassReport::default())
            }
        }
        crate::register_pass!("registered-twice", Twice, "%x => %x (test)");
        fn zero(_: &crate::metric::Outputs, _: &crate::metric::Outputs) -> Result<f64, String> {
            Ok(0.0)
        }
        crate::register_metric!("metric-registered-twice", zero, "test");
    }

    mod plugin_b {
        crate::register_pass!("registered-twice", super::plugin_a::Twice, "%x => %x (test)");
        fn zero(_: &crate::metric::Outputs, _: &crate::metric::Outputs) -> Result<f64, String> {
            Ok(0.0)
        }
        crate::register_metric!("metric-registered-twice", zero, "test");
    }

    #[test]
    fn duplicate_names_are_errors_that_name_both_registrations() {
        let (a, b) = ("qforge_passes::registry::tests::plugin_a", "qforge_passes::registry::tests::plugin_b");
        let e = check_registrations().unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "pass `registered-twice` is registered more than once, by {a} and by {b}; names must be unique (rename one)"
            )
        );
        let e = check_metric_names().unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("metric `metric-registered-twice` is registered more than once, by {a} and by {b}")),
            "{e}"
        );
        // A pipeline that uses the name fails, at its line; others do not.
        let p = crate::Pipeline::parse("passes:\n  - topo-sort\n  - registered-twice\n", "p.yaml").unwrap();
        let e = crate::PassManager::new(&p, Default::default()).err().expect("ambiguous pass").to_string();
        assert!(
            e.starts_with("p.yaml:3:") && e.contains("pass `registered-twice` is registered more than once"),
            "{e}"
        );
        assert!(e.contains(a) && e.contains(b), "{e}");
        let p = crate::Pipeline::parse("passes:\n  - topo-sort\n", "p.yaml").unwrap();
        assert!(crate::PassManager::new(&p, Default::default()).is_ok());
    }

    #[test]
    fn suggestions_catch_typos_only() {
        assert_eq!(suggest("fold-batchnrom", ["fold-batchnorm", "topo-sort"]), Some("fold-batchnorm"));
        assert_eq!(suggest("quantize-everything", ["fold-batchnorm", "topo-sort"]), None);
    }
}
