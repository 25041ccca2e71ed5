//! The Python interpreter behind a pyenv shim, found without running it.
//!
//! The ONNX Runtime library is looked for in the `onnxruntime` wheel of
//! `python3` (see `ort_engine::library_path`), which means starting that
//! Python. When `python3` is a pyenv shim, the shim is a chain of bash
//! scripts (`pyenv exec`, `version-name`, `hooks`, `which`, ...) that took
//! 0.10 s of the 0.15 s the search cost on every run, before the engine could
//! open; the interpreter itself answers in 0.04 s.
//!
//! So a shim is resolved here the way pyenv documents it ("Choosing the
//! Python version"): `PYENV_VERSION`, else the first `.python-version` file
//! from the current directory up (from `PYENV_DIR` when set), else
//! `$PYENV_ROOT/version`; the first listed version whose
//! `$PYENV_ROOT/versions/NAME/bin/PROGRAM` is executable is the interpreter.
//! Anything this does not cover (`system`, a version prefix pyenv would
//! complete, a version that is not installed, a name that is a path, an
//! unreadable file) gives
//! `None`, and the caller runs the shim as before: this is only a shortcut
//! to the same interpreter, never a different answer.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The interpreter `program` (a name looked up on `PATH`, or a path) runs
/// when it is a pyenv shim, in this process's environment and directory.
pub(crate) fn interpreter(program: &str) -> Option<PathBuf> {
    let cwd = logical_cwd(std::env::var_os("PWD"), std::env::current_dir().ok()?);
    resolve(program, &|k| std::env::var_os(k), &cwd)
}

/// The current directory as the shim's bash sees it: `$PWD` when it names
/// this directory (through symlinks perhaps, whose parents are the ones
/// pyenv searches), else the physical path.
fn logical_cwd(pwd: Option<OsString>, physical: PathBuf) -> PathBuf {
    let same = |p: &Path| p.is_absolute() && p.canonicalize().ok() == physical.canonicalize().ok();
    match pwd.map(PathBuf::from) {
        Some(p) if same(&p) => p,
        _ => physical,
    }
}

/// [`interpreter`] with the environment and the current directory given.
fn resolve(program: &str, env: &dyn Fn(&str) -> Option<OsString>, cwd: &Path) -> Option<PathBuf> {
    let shim = on_path(program, env)?;
    let root = shim_root(&shim)?;
    let name = shim.file_name()?.to_str()?;
    for version in versions(&root, env, cwd)? {
        if version == "system" {
            return None;
        }
        let prefix = root.join("versions").join(&version);
        if !prefix.is_dir() {
            // Not installed under that name: pyenv may complete a prefix
            // ("3.11") or fail; either way, its answer, not a guess.
            return None;
        }
        let exe = prefix.join("bin").join(name);
        if is_executable(&exe) {
            return Some(exe);
        }
    }
    None
}

/// Where `program` is: itself when it names a path, else the first
/// `PATH` entry that has it.
fn on_path(program: &str, env: &dyn Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    std::env::split_paths(&env("PATH")?).map(|d| d.join(program)).find(|p| is_executable(p))
}

/// A file that `exec` would run (what a `PATH` search skips otherwise).
fn is_executable(p: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }
    #[cfg(not(unix))]
    {
        p.is_file()
    }
}

/// `PYENV_ROOT` as a pyenv shim sets it, or `None` when `path` is not a
/// pyenv shim (a shim is a short bash script that exports the root and
/// execs `pyenv exec`).
fn shim_root(path: &Path) -> Option<PathBuf> {
    use std::io::Read;
    let mut head = Vec::new();
    std::fs::File::open(path).ok()?.take(4096).read_to_end(&mut head).ok()?;
    let text = std::str::from_utf8(&head).ok()?;
    if !text.starts_with("#!") || !text.contains("\" exec \"$program\"") {
        return None;
    }
    text.lines().find_map(|l| {
        let v = l.trim().strip_prefix("export PYENV_ROOT=")?;
        let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
        (!v.is_empty() && !v.contains('$')).then(|| PathBuf::from(v))
    })
}

/// The version names pyenv would pick, in its order of precedence; `None`
/// when a file that decides is unreadable or holds a name pyenv refuses.
fn versions(root: &Path, env: &dyn Fn(&str) -> Option<OsString>, cwd: &Path) -> Option<Vec<String>> {
    if let Some(v) = env("PYENV_VERSION").filter(|v| !v.is_empty()) {
        let v = v.into_string().ok()?;
        let names: Vec<String> = v.split(':').filter(|s| !s.is_empty()).map(str::to_string).collect();
        return names.iter().all(|n| acceptable(n)).then_some(names);
    }
    let start = env("PYENV_DIR").map(PathBuf::from).unwrap_or_else(|| cwd.to_path_buf());
    let local = start.ancestors().map(|d| d.join(".python-version")).find(|f| f.is_file());
    let file = local.unwrap_or_else(|| root.join("version"));
    if !file.exists() {
        return Some(vec!["system".into()]);
    }
    let text = std::fs::read_to_string(&file).ok()?;
    let mut names = Vec::new();
    for word in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        if !acceptable(word) {
            return None;
        }
        names.push(word.to_string());
    }
    (!names.is_empty()).then_some(names)
}

/// A version name this resolves itself: one plain directory name under
/// `versions/` (pyenv refuses paths, and words are split apart there).
fn acceptable(name: &str) -> bool {
    !name.contains('/') && name != ".." && name != "." && !name.contains(char::is_whitespace)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A pyenv root with a shim for python3 and versions `installed`, each
    /// with bin/python3, under a fresh directory.
    fn fake_root(tag: &str, installed: &[&str]) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let base = std::env::temp_dir().join(format!("qforge-pyenv-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let root = base.join("pyenv");
        std::fs::create_dir_all(root.join("shims")).unwrap();
        let shim = format!(
            "#!/usr/bin/env bash\nset -e\nprogram=\"${{0##*/}}\"\n\nexport PYENV_ROOT=\"{}\"\nexec \"{}/libexec/pyenv\" exec \"$program\" \"$@\"\n",
            root.display(),
            root.display()
        );
        std::fs::write(root.join("shims/python3"), shim).unwrap();
        std::fs::set_permissions(root.join("shims/python3"), std::fs::Permissions::from_mode(0o755)).unwrap();
        for v in installed {
            let bin = root.join("versions").join(v).join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            std::fs::write(bin.join("python3"), "").unwrap();
            std::fs::set_permissions(bin.join("python3"), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::create_dir_all(base.join("work/sub")).unwrap();
        root
    }

    fn lookup(root: &Path, vars: &[(&str, &str)], cwd: &Path) -> Option<PathBuf> {
        let mut env: HashMap<String, OsString> = vars.iter().map(|(k, v)| (k.to_string(), OsString::from(v))).collect();
        env.insert("PATH".into(), std::env::join_paths([root.join("shims")]).unwrap());
        resolve("python3", &move |k| env.get(k).cloned(), cwd)
    }

    #[test]
    fn a_shim_resolves_the_way_pyenv_chooses_versions() {
        let root = fake_root("choose", &["3.10.4", "3.11.7", "venv-a"]);
        let work = root.parent().unwrap().join("work");
        let sub = work.join("sub");
        let exe = |v: &str| Some(root.join("versions").join(v).join("bin/python3"));
        // No version file at all: the system Python, which is left to pyenv.
        assert_eq!(lookup(&root, &[], &sub), None);
        std::fs::write(root.join("version"), "# global\n3.10.4\n").unwrap();
        assert_eq!(lookup(&root, &[], &sub), exe("3.10.4"));
        // A local file in a parent directory wins over the global one.
        std::fs::write(work.join(".python-version"), "venv-a\n").unwrap();
        assert_eq!(lookup(&root, &[], &sub), exe("venv-a"));
        assert_eq!(lookup(&root, &[("PYENV_DIR", root.to_str().unwrap())], &sub), exe("3.10.4"));
        // The environment wins over both; the first installed version with
        // the program is the one.
        assert_eq!(lookup(&root, &[("PYENV_VERSION", "3.11.7:3.10.4")], &sub), exe("3.11.7"));
        std::fs::remove_file(root.join("versions/3.11.7/bin/python3")).unwrap();
        assert_eq!(lookup(&root, &[("PYENV_VERSION", "3.11.7:3.10.4")], &sub), exe("3.10.4"));
        // What pyenv would complete or refuse is left to pyenv.
        for v in ["3.11", "system", "3.9.1:3.10.4", "../pyenv/versions/3.10.4", "..:3.10.4"] {
            assert_eq!(lookup(&root, &[("PYENV_VERSION", v)], &sub), None, "{v}");
        }
        std::fs::write(work.join(".python-version"), "../3.10.4\n").unwrap();
        assert_eq!(lookup(&root, &[], &sub), None);
        let _ = std::fs::remove_dir_all(root.parent().unwrap());
    }

    #[test]
    fn a_real_interpreter_is_not_a_shim() {
        let root = fake_root("real", &["3.11.7"]);
        let exe = root.join("versions/3.11.7/bin/python3");
        std::fs::write(&exe, "#!/bin/sh\nexec /usr/bin/python3 \"$@\"\n").unwrap();
        assert_eq!(resolve(exe.to_str().unwrap(), &|_| None, &root), None);
        assert_eq!(shim_root(&root.join("shims/python3")), Some(root.clone()));
        let _ = std::fs::remove_dir_all(root.parent().unwrap());
    }

    #[test]
    fn a_shim_that_cannot_run_is_not_the_one_on_path() {
        let root = fake_root("noexec", &["3.11.7"]);
        std::fs::write(root.join("version"), "3.11.7\n").unwrap();
        let cwd = root.parent().unwrap().join("work");
        assert_eq!(lookup(&root, &[], &cwd), Some(root.join("versions/3.11.7/bin/python3")));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root.join("shims/python3"), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(lookup(&root, &[], &cwd), None);
        let _ = std::fs::remove_dir_all(root.parent().unwrap());
    }

    #[test]
    fn the_logical_directory_is_searched_when_pwd_names_this_one() {
        let base = std::env::temp_dir().join(format!("qforge-pyenv-pwd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("real/proj")).unwrap();
        std::fs::create_dir_all(base.join("links")).unwrap();
        std::os::unix::fs::symlink(base.join("real/proj"), base.join("links/proj")).unwrap();
        let physical = base.join("real/proj");
        let logical = base.join("links/proj");
        assert_eq!(logical_cwd(Some(logical.clone().into()), physical.clone()), logical);
        // A stale or relative PWD is not this directory: the physical path.
        assert_eq!(logical_cwd(Some(base.join("links").into()), physical.clone()), physical);
        assert_eq!(logical_cwd(Some("links/proj".into()), physical.clone()), physical);
        assert_eq!(logical_cwd(None, physical.clone()), physical);
        let _ = std::fs::remove_dir_all(&base);
    }
}
