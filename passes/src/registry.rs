//! The pass registry: every `register_pass!` in any linked crate adds one
//! [`PassInfo`], found by name when a pipeline is built.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Pass;

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
}

/// A registered pass.
pub struct PassInfo {
    /// The name pipelines use (`fold-batchnorm`).
    pub name: &'static str,
    /// One line: the rewrite as `before => after`.
    pub about: &'static str,
    /// Builds the pass from its options (a JSON object; `null` = defaults).
    pub create: fn(&serde_json::Value) -> Result<Box<dyn Pass>, String>,
    /// The default options as JSON.
    pub defaults: fn() -> serde_json::Value,
    /// Option descriptions.
    pub docs: &'static [OptionDoc],
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

/// The pass called `name`.
pub fn find_pass(name: &str) -> Option<&'static PassInfo> {
    inventory::iter::<PassInfo>.into_iter().find(|p| p.name == name)
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

    #[test]
    fn suggestions_catch_typos_only() {
        assert_eq!(suggest("fold-batchnrom", ["fold-batchnorm", "topo-sort"]), Some("fold-batchnorm"));
        assert_eq!(suggest("quantize-everything", ["fold-batchnorm", "topo-sort"]), None);
    }
}
