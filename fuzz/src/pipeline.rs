//! `pipeline`: the YAML pipeline loader on mutated pipelines.
//!
//! A case is a bundle of files (`=== NAME` headers): the main pipeline,
//! every pipeline it may include (all of `pipelines/*.yaml`), and `--set`
//! overrides. One of them is mutated (tokens, numbers, lines, splices from
//! the others). The files are written to a temporary folder and loaded with
//! `Pipeline::load`, the overrides applied, and every pass instantiated
//! with its options (`PassManager::new`), as `qforge run` does.
//!
//! Oracle: no panic, no hang; an error is one non-empty message.

use std::cell::RefCell;
use std::path::Path;

use qforge_passes::{ManagerOptions, PassManager, Pipeline, all_passes};

use crate::{Outcome, Rng, Target, mutate, seed_files};

/// Tokens of YAML and of pipelines a mutation inserts.
const TOKENS: &[&str] = &[
    ":",
    "-",
    "- ",
    "[",
    "]",
    "{",
    "}",
    ",",
    "'",
    "\"",
    "#",
    "&a ",
    "*a",
    "<<: *a",
    "!!str ",
    "!!int ",
    "!custom ",
    "~",
    "null",
    "true",
    "yes",
    "no",
    "\n",
    "\n  ",
    "\n    - ",
    "\t",
    "? ",
    "| ",
    "> ",
    "---\n",
    "...\n",
    "%YAML 1.2\n",
    "include: ",
    "include: [fold.yaml]",
    "include: [main.yaml]",
    "include: [/dev/zero]",
    "include: [../]",
    "include: [.]",
    "passes:",
    "passes: []",
    "fixed-point:",
    "max_iterations: ",
    "max_iterations: 0",
    "name: ",
    "about: ",
    "[a, [b, [c, [d]]]]",
    "{a: {b: {c: 1}}}",
    "1e400",
    "-1",
    "18446744073709551616",
    "é",
    "\u{0}",
    "\u{feff}",
    "\\u0000",
    "data: {images: /dev/null}",
    "rules:",
    "from: |",
    "to: |",
    "%y = Relu(%x)",
];

/// Override keys and values a case may carry.
const SET_VALUES: &[&str] =
    &["1", "0", "-1", "true", "[Conv]", "{}", "[]", "null", "'x'", "1e999", "[[[]]]", "{a: 1}", "&a [*a]"];

/// The `pipeline` target.
pub struct PipelineTarget {
    /// `(file name, text)` of every pipeline in `pipelines/`.
    files: Vec<(String, String)>,
    /// Pass names and option names, for `--set` and insertions.
    words: Vec<String>,
}

impl PipelineTarget {
    /// Reads the seeds from the workspace at `root`.
    pub fn new(root: &Path) -> Result<PipelineTarget, String> {
        let mut files = Vec::new();
        for p in seed_files(root, "pipelines", "yaml") {
            let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            files.push((name, text));
        }
        if files.is_empty() {
            return Err(format!("no pipelines in {}/pipelines", root.display()));
        }
        let mut words = Vec::new();
        for info in all_passes() {
            if let Some(obj) = (info.defaults)().as_object() {
                for key in obj.keys() {
                    words.push(format!("{}.{key}", info.name));
                }
            }
            words.push(info.name.to_string());
        }
        words.sort();
        Ok(PipelineTarget { files, words })
    }
}

/// A bundle's files: `(name, text)`, the first being the main pipeline.
pub fn unbundle(input: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in input.split_inclusive('\n') {
        if let Some(name) = line.strip_prefix("=== ") {
            out.push((name.trim().to_string(), String::new()));
        } else if let Some((_, text)) = out.last_mut() {
            text.push_str(line);
        }
    }
    out
}

/// Files as one bundle.
pub fn bundle(files: &[(String, String)]) -> String {
    let mut s = String::new();
    for (name, text) in files {
        s.push_str("=== ");
        s.push_str(name);
        s.push('\n');
        s.push_str(text);
        if !text.ends_with('\n') {
            s.push('\n');
        }
    }
    s
}

thread_local! {
    static DIR: RefCell<Option<tempfile::TempDir>> = const { RefCell::new(None) };
}

impl Target for PipelineTarget {
    fn name(&self) -> &'static str {
        "pipeline"
    }
    fn ext(&self) -> &'static str {
        "bundle"
    }
    fn generate(&self, rng: &mut Rng) -> Vec<u8> {
        let main = rng.below(self.files.len());
        let mut files = vec![("main.yaml".to_string(), self.files[main].1.clone())];
        files.extend(self.files.iter().cloned());
        let others: Vec<String> = self.files.iter().map(|f| f.1.clone()).collect();
        let words: Vec<&str> = self.words.iter().map(String::as_str).chain(TOKENS.iter().copied()).collect();
        let which = if rng.one_in(4) { rng.below(files.len()) } else { 0 };
        if !rng.one_in(10) {
            files[which].1 = mutate::text(rng, &files[which].1, &words, &others);
        }
        if rng.one_in(3) {
            let mut sets = String::new();
            for _ in 0..1 + rng.below(3) {
                let key = rng.pick(&self.words);
                let value = rng.pick(SET_VALUES);
                sets.push_str(&format!("{key}={value}\n"));
            }
            files.push(("--set".to_string(), sets));
        }
        bundle(&files).into_bytes()
    }
    fn execute(&self, input: &[u8]) -> Result<Outcome, String> {
        let Ok(text) = std::str::from_utf8(input) else { return Ok(Outcome::Rejected) };
        let files = unbundle(text);
        DIR.with(|d| {
            let mut d = d.borrow_mut();
            if d.is_none() {
                *d = Some(tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?);
            }
            let dir = d.as_ref().map(|t| t.path().to_path_buf()).unwrap_or_default();
            // Start from an empty folder: only this case's files.
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for e in rd.flatten() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
            let mut sets = Vec::new();
            for (name, text) in &files {
                if name == "--set" {
                    sets.extend(text.lines().map(str::to_string));
                } else if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
                    std::fs::write(dir.join(name), text).map_err(|e| format!("writing {name}: {e}"))?;
                }
            }
            let Some((main, _)) = files.first() else { return Ok(Outcome::Rejected) };
            let err = |e: qforge_passes::PassError| {
                let m = e.to_string();
                if m.trim().is_empty() {
                    Err("an error with an empty message".to_string())
                } else {
                    Ok(Outcome::Rejected)
                }
            };
            let mut p = match Pipeline::load(dir.join(main)) {
                Ok(p) => p,
                Err(e) => return err(e),
            };
            for s in &sets {
                if let Err(e) = p.set(s) {
                    return err(e);
                }
            }
            match PassManager::new(&p, ManagerOptions::default()) {
                Ok(_) => Ok(Outcome::Accepted),
                Err(e) => err(e),
            }
        })
    }
}
