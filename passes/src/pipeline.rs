//! Pipelines: YAML files listing passes with options.
//!
//! ```yaml
//! name: fold
//! about: exact cleanups before quantization
//! include: [common.yaml]          # its passes run first
//! passes:
//!   - topo-sort                   # a pass with default options
//!   - fold-batchnorm: {}          # same, as a mapping
//!   - resize-to-conv-transpose:
//!       modes: [asymmetric]
//!   - fixed-point:                # repeat until nothing changes
//!       max_iterations: 8
//!       passes: [fold-constants, eliminate-dead]
//! ```
//!
//! Every entry remembers where it was written, so an unknown pass or option
//! is reported as `file:line:column` with the nearest valid name. Options
//! that are source text of their own (rewrite rules) are checked here too,
//! with the position of every option (see [`crate::located`]).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;
use serde_saphyr::Spanned;

use crate::context::PassError;
use crate::located::{Located, Source, check_options};
use crate::registry::{all_passes, find_pass, suggest};

/// Where a pipeline entry (or override) came from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Origin {
    /// File (or `--set`).
    pub file: String,
    /// 1-based line; 0 when not from a file.
    pub line: u64,
    /// 1-based column.
    pub column: u64,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 { f.write_str(&self.file) } else { write!(f, "{}:{}:{}", self.file, self.line, self.column) }
    }
}

/// One pass with its options.
#[derive(Debug, Clone)]
pub struct PassStep {
    /// Registered pass name.
    pub name: String,
    /// Options as written (a JSON object, or null for defaults).
    pub options: Value,
    /// Where it was written.
    pub origin: Origin,
}

/// A pipeline step.
#[derive(Debug, Clone)]
pub enum Step {
    /// Run one pass.
    Pass(PassStep),
    /// Run the passes in order, again and again until an iteration changes
    /// nothing or `max_iterations` is reached.
    FixedPoint {
        /// Iteration cap.
        max_iterations: usize,
        /// The group.
        passes: Vec<PassStep>,
        /// Where it was written.
        origin: Origin,
    },
}

/// A loaded pipeline.
#[derive(Debug, Clone, Default)]
pub struct Pipeline {
    /// Its name.
    pub name: String,
    /// What it is for.
    pub about: String,
    /// The steps, includes expanded.
    pub steps: Vec<Step>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    about: Option<String>,
    #[serde(default)]
    include: Vec<Spanned<String>>,
    #[serde(default)]
    passes: Vec<Spanned<Located>>,
}

const FIXED_POINT: &str = "fixed-point";

fn origin_of(file: &str, s: &serde_saphyr::Location) -> Origin {
    Origin { file: file.to_string(), line: s.line(), column: s.column() }
}

fn pipeline_err(origin: Origin, message: impl Into<String>) -> PassError {
    PassError::Pipeline { origin, message: message.into() }
}

/// Checks a pass name, suggesting the nearest registered one.
fn check_pass_name(name: &str, origin: &Origin) -> Result<(), PassError> {
    if find_pass(name).is_some() {
        return Ok(());
    }
    let names: Vec<&str> = all_passes().iter().map(|p| p.name).chain([FIXED_POINT]).collect();
    let hint = suggest(name, names.iter().copied()).map(|s| format!("; did you mean `{s}`?")).unwrap_or_default();
    Err(pipeline_err(origin.clone(), format!("unknown pass `{name}`{hint} (`qforge passes` lists them)")))
}

/// Reads one entry: `name`, or `{name: options}`.
fn entry(v: &Value, origin: &Origin) -> Result<(String, Value), PassError> {
    match v {
        Value::String(s) => Ok((s.clone(), Value::Null)),
        Value::Object(m) if m.len() == 1 => {
            let (k, v) = m.iter().next().expect("one entry");
            Ok((k.clone(), v.clone()))
        }
        other => Err(pipeline_err(
            origin.clone(),
            format!("a pass entry is `- name` or `- name: {{options}}`, got `{other}`"),
        )),
    }
}

/// One pass entry; `located` is the same entry with positions, when it has them.
fn pass_step(v: &Value, origin: &Origin, src: &Source, located: Option<&Located>) -> Result<PassStep, PassError> {
    let (name, options) = entry(v, origin)?;
    if name == FIXED_POINT {
        return Err(pipeline_err(origin.clone(), "fixed-point groups cannot be nested"));
    }
    check_pass_name(&name, origin)?;
    check_options(&name, &options, &src.spans(origin, located.and_then(|l| l.child(&name))))?;
    Ok(PassStep { name, options, origin: origin.clone() })
}

fn step(located: &Located, origin: Origin, src: &Source) -> Result<Step, PassError> {
    let v = &located.to_value();
    let (name, options) = entry(v, &origin)?;
    if name != FIXED_POINT {
        return pass_step(v, &origin, src, Some(located)).map(Step::Pass);
    }
    let obj = options
        .as_object()
        .ok_or_else(|| pipeline_err(origin.clone(), "fixed-point takes `{max_iterations: N, passes: [...]}`"))?;
    for k in obj.keys() {
        if k != "max_iterations" && k != "passes" {
            let hint =
                suggest(k, ["max_iterations", "passes"]).map(|s| format!("; did you mean `{s}`?")).unwrap_or_default();
            return Err(pipeline_err(origin.clone(), format!("unknown fixed-point option `{k}`{hint}")));
        }
    }
    let max_iterations = match obj.get("max_iterations") {
        None => 8,
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n >= 1) => n.as_u64().unwrap_or(8) as usize,
        Some(other) => {
            return Err(pipeline_err(origin, format!("max_iterations must be a positive integer, got `{other}`")));
        }
    };
    let group = located.child(FIXED_POINT).and_then(|(_, g)| g.child("passes"));
    let passes = obj
        .get("passes")
        .and_then(Value::as_array)
        .ok_or_else(|| pipeline_err(origin.clone(), "fixed-point needs a `passes: [...]` list"))?
        .iter()
        .enumerate()
        .map(|(i, p)| pass_step(p, &origin, src, group.and_then(|(_, g)| g.child(&i.to_string())).map(|c| c.1)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Step::FixedPoint { max_iterations, passes, origin })
}

/// Most pipeline files one load may read, includes counted.
const MAX_INCLUDES: usize = 64;
/// Deepest include chain.
const MAX_INCLUDE_DEPTH: usize = 16;
/// Largest pipeline file.
const MAX_PIPELINE_BYTES: u64 = 1 << 20;

/// The folder built-in pipelines appear to live in (in labels and errors).
const BUILTIN_DIR: &str = "<built-in>";

/// Where pipeline files are read from.
enum Files<'a> {
    /// The file system.
    Disk,
    /// Embedded `(name, text)` pairs; `<built-in>/NAME.yaml` is `NAME`.
    Builtin(&'a [(&'a str, &'a str)]),
}

impl Files<'_> {
    /// The text of `path` and the key that detects include cycles.
    fn read(&self, path: &Path, at: &Origin) -> Result<(String, PathBuf), PassError> {
        let label = path.display().to_string();
        match self {
            Files::Disk => {
                let size =
                    qforge_ir::regular_file(path).map_err(|e| pipeline_err(at.clone(), format!("cannot read {e}")))?;
                if size > MAX_PIPELINE_BYTES {
                    return Err(pipeline_err(
                        at.clone(),
                        format!("{label} is {size} bytes; a pipeline is at most {MAX_PIPELINE_BYTES}"),
                    ));
                }
                let text = std::fs::read_to_string(path)
                    .map_err(|e| pipeline_err(at.clone(), format!("cannot read {label}: {e}")))?;
                Ok((text, path.canonicalize().unwrap_or_else(|_| path.to_path_buf())))
            }
            Files::Builtin(all) => {
                let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                let found = (path.parent() == Some(Path::new(BUILTIN_DIR))
                    && path.extension().is_some_and(|e| e == "yaml"))
                .then(|| all.iter().find(|(n, _)| *n == name))
                .flatten();
                match found {
                    Some((_, text)) => Ok((text.to_string(), path.to_path_buf())),
                    None => {
                        let names: Vec<&str> = all.iter().map(|p| p.0).collect();
                        Err(pipeline_err(
                            at.clone(),
                            format!("{label}: not a built-in pipeline (built-in: {})", names.join(", ")),
                        ))
                    }
                }
            }
        }
    }
}

impl Pipeline {
    /// Loads a pipeline file, expanding includes (relative to the file).
    pub fn load(path: impl AsRef<Path>) -> Result<Pipeline, PassError> {
        let mut p = Pipeline::default();
        let mut stack = Vec::new();
        let mut loads = 0;
        p.load_into(path.as_ref(), &Files::Disk, &mut stack, None, &mut loads)?;
        Ok(p)
    }

    /// Loads the pipeline `name` from a set of built-in `(name, text)`
    /// pipelines (those a binary embeds); its `include: [x.yaml]` resolve to
    /// the built-in `x`, so shipped pipelines work from any folder.
    pub fn load_builtin(name: &str, builtins: &[(&str, &str)]) -> Result<Pipeline, PassError> {
        let mut p = Pipeline::default();
        let mut stack = Vec::new();
        let mut loads = 0;
        let path = Path::new(BUILTIN_DIR).join(format!("{name}.yaml"));
        p.load_into(&path, &Files::Builtin(builtins), &mut stack, None, &mut loads)?;
        Ok(p)
    }

    fn load_into(
        &mut self,
        path: &Path,
        files: &Files<'_>,
        stack: &mut Vec<PathBuf>,
        from: Option<Origin>,
        loads: &mut usize,
    ) -> Result<(), PassError> {
        let label = path.display().to_string();
        let at = from.clone().unwrap_or(Origin { file: label.clone(), line: 0, column: 0 });
        // Bounded: a file that includes the next one twice, ten deep, would
        // otherwise expand to a thousand copies.
        *loads += 1;
        if *loads > MAX_INCLUDES || stack.len() >= MAX_INCLUDE_DEPTH {
            return Err(pipeline_err(
                at,
                format!(
                    "includes expand too far (more than {MAX_INCLUDES} files or {MAX_INCLUDE_DEPTH} levels); \
                     include each pipeline once"
                ),
            ));
        }
        let (text, canon) = files.read(path, &at)?;
        if stack.contains(&canon) {
            return Err(pipeline_err(at, format!("include cycle: {label} includes itself")));
        }
        stack.push(canon);
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let raw = parse_raw(&text, &label)?;
        if self.name.is_empty() {
            self.name = raw
                .name
                .clone()
                .unwrap_or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default());
            self.about = raw.about.clone().unwrap_or_default();
        }
        for inc in &raw.include {
            let o = origin_of(&label, &inc.referenced);
            self.load_into(&base.join(&inc.value), files, stack, Some(o), loads)?;
        }
        let src = Source { label: &label, text: &text };
        for e in &raw.passes {
            self.steps.push(step(&e.value, origin_of(&label, &e.referenced), &src)?);
        }
        stack.pop();
        Ok(())
    }

    /// Parses pipeline text; `label` names it in errors. Includes are not
    /// allowed (there is no folder to resolve them in).
    pub fn parse(text: &str, label: &str) -> Result<Pipeline, PassError> {
        let raw = parse_raw(text, label)?;
        if let Some(inc) = raw.include.first() {
            return Err(pipeline_err(origin_of(label, &inc.referenced), "include needs a pipeline loaded from a file"));
        }
        let src = Source { label, text };
        let steps = raw
            .passes
            .iter()
            .map(|e| step(&e.value, origin_of(label, &e.referenced), &src))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Pipeline { name: raw.name.unwrap_or_default(), about: raw.about.unwrap_or_default(), steps })
    }

    /// A pipeline of the named passes with default options.
    pub fn from_names(names: &[&str]) -> Result<Pipeline, PassError> {
        let origin = Origin { file: "<command line>".into(), line: 0, column: 0 };
        let steps = names
            .iter()
            .map(|n| {
                check_pass_name(n, &origin)?;
                Ok(Step::Pass(PassStep { name: n.to_string(), options: Value::Null, origin: origin.clone() }))
            })
            .collect::<Result<Vec<_>, PassError>>()?;
        Ok(Pipeline { name: "command-line".into(), about: String::new(), steps })
    }

    /// Every pass step, fixed-point groups included.
    pub fn pass_steps_mut(&mut self) -> impl Iterator<Item = &mut PassStep> {
        self.steps.iter_mut().flat_map(|s| match s {
            Step::Pass(p) => std::slice::from_mut(p).iter_mut(),
            Step::FixedPoint { passes, .. } => passes.iter_mut(),
        })
    }

    /// The names of the passes it runs, each once, in order of first use.
    pub fn pass_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for s in &self.steps {
            let steps = match s {
                Step::Pass(p) => std::slice::from_ref(p),
                Step::FixedPoint { passes, .. } => passes.as_slice(),
            };
            for p in steps {
                if !names.contains(&p.name) {
                    names.push(p.name.clone());
                }
            }
        }
        names
    }

    /// Applies an override `pass.option=value` (or `pass.a.b=value` for a
    /// nested option) to every step of that pass. The value is YAML.
    pub fn set(&mut self, assignment: &str) -> Result<(), PassError> {
        let origin = Origin { file: format!("--set {assignment}"), line: 0, column: 0 };
        let (key, value) =
            assignment.split_once('=').ok_or_else(|| pipeline_err(origin.clone(), "expected PASS.OPTION=VALUE"))?;
        let mut path = key.trim().split('.');
        let pass = path.next().unwrap_or_default().to_string();
        let opts: Vec<&str> = path.collect();
        if opts.is_empty() || opts.iter().any(|s| s.is_empty()) {
            return Err(pipeline_err(origin, "expected PASS.OPTION=VALUE"));
        }
        let value: Value = if value.trim().is_empty() {
            Value::Null
        } else {
            serde_saphyr::from_str(value)
                .map_err(|e| pipeline_err(origin.clone(), format!("value is not valid YAML: {e}")))?
        };
        let mut hit = false;
        let names: Vec<String> = self.pass_steps_mut().map(|s| s.name.clone()).collect();
        for s in self.pass_steps_mut().filter(|s| s.name == pass) {
            hit = true;
            if !s.options.is_object() {
                s.options = Value::Object(Default::default());
            }
            let mut cur = &mut s.options;
            for (i, k) in opts.iter().enumerate() {
                let obj = cur.as_object_mut().ok_or_else(|| {
                    pipeline_err(origin.clone(), format!("`{}` is not a mapping", opts[..i].join(".")))
                })?;
                if i + 1 == opts.len() {
                    obj.insert(k.to_string(), value.clone());
                    break;
                }
                cur = obj.entry(k.to_string()).or_insert_with(|| Value::Object(Default::default()));
            }
            s.origin = origin.clone();
        }
        if !hit {
            let hint = suggest(&pass, names.iter().map(String::as_str))
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
            return Err(pipeline_err(
                origin,
                format!("pass `{pass}` is not in this pipeline{hint} (its passes: {})", names.join(", ")),
            ));
        }
        Ok(())
    }
}

/// `msg` without a leading `line L column C: `.
fn strip_location(msg: &str) -> &str {
    let Some(rest) = msg.strip_prefix("line ") else { return msg };
    let Some((_, rest)) = rest.split_once(" column ") else { return msg };
    match rest.split_once(": ") {
        Some((col, tail)) if col.chars().all(|c| c.is_ascii_digit()) => tail,
        _ => msg,
    }
}

fn parse_raw(text: &str, label: &str) -> Result<RawFile, PassError> {
    serde_saphyr::from_str::<RawFile>(text).map_err(|e| {
        let origin = match e.location() {
            Some(l) => Origin { file: label.to_string(), line: l.line(), column: l.column() },
            None => Origin { file: label.to_string(), line: 0, column: 0 },
        };
        // The library's message may add a source snippet: keep its first line.
        let msg = e.to_string();
        let first = msg.lines().next().unwrap_or("invalid YAML").to_string();
        let first = match first.find(" at line ") {
            Some(i) => first[..i].to_string(),
            None => first,
        };
        // The origin already says file, line and column: drop the library's
        // own "error: line L column C: " prefix.
        let first = strip_location(first.strip_prefix("error: ").unwrap_or(&first)).to_string();
        let first = if first.contains("unknown field") {
            format!("{first} (a pipeline has `name`, `about`, `include` and `passes`)")
        } else {
            first
        };
        pipeline_err(origin, first)
    })
}
