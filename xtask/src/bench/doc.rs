//! `bench/results.md`: the header (machine, software) and the merge that lets `--only` rerun
//! some sections while keeping the others from the previous file.
//!
//! Every section starts with its own stamp (date, git revision, load), so a section kept from an
//! earlier run still says when and on what it was measured.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::util;

/// Header lines that describe the run, not a tool (never carried over from an old file).
const RUN_KEYS: &[&str] = &["- date:", "- machine:", "- load average", "- qforge:", "- runs:", "- sections not rerun"];

/// The whole document: a new header, then every section of `order` that was run now (`fresh`)
/// or, when it was not, its text from `old` (the previous results.md), in `order`.
/// `tools` are the versions of the tools the fresh sections used (header lines).
pub fn merge(root: &Path, tools_used: &[String], old: &str, order: &[&str], fresh: &[(&str, String)]) -> String {
    let (old_header, old_sections) = split(old);
    let old_date = old_header.lines().find_map(|l| l.strip_prefix("- date: ")).unwrap_or("an earlier run");
    let mut body = String::new();
    let mut kept_any = false;
    for title in order {
        if let Some((_, md)) = fresh.iter().find(|(t, _)| t == title) {
            let _ = write!(body, "\n## {title}\n\n{md}");
        } else if let Some((_, text)) = old_sections.iter().find(|(t, _)| t == title) {
            if text.trim_start().starts_with("_Measured") {
                let _ = write!(body, "\n## {title}\n{text}");
            } else {
                let _ = write!(body, "\n## {title}\n\n_Measured {old_date} (kept from that run)._\n{text}");
            }
            kept_any = true;
        }
    }
    let mut tools: Vec<String> = Vec::new();
    for t in tools_used {
        if !tools.contains(t) {
            tools.push(t.clone());
        }
    }
    if kept_any {
        // Versions of tools used only by kept sections: keep their old lines.
        let first_word = |s: &str| s.split_whitespace().next().unwrap_or("").to_string();
        for line in old_header.lines().filter(|l| l.starts_with("- ") && !RUN_KEYS.iter().any(|k| l.starts_with(k))) {
            let tool = line[2..].to_string();
            if !tools.iter().any(|t| first_word(t) == first_word(&tool)) {
                tools.push(tool);
            }
        }
    }
    format!("{}{body}", header(root, &tools, kept_any))
}

/// `(text before the first "## ", [(section title, text after its title line)])`.
fn split(doc: &str) -> (String, Vec<(String, String)>) {
    let mut header = String::new();
    let mut sections: Vec<(String, String)> = Vec::new();
    for line in doc.split_inclusive('\n') {
        if let Some(title) = line.strip_prefix("## ") {
            sections.push((title.trim().to_string(), String::new()));
        } else if let Some((_, text)) = sections.last_mut() {
            text.push_str(line);
        } else {
            header.push_str(line);
        }
    }
    (header, sections)
}

/// Title, timestamp, machine and software, so results from different machines are comparable.
fn header(root: &Path, tools: &[String], kept: bool) -> String {
    let mut out = String::from(
        "# qforge benchmarks\n\n\
         Written by `cargo xtask bench`; do not edit by hand, rerun the bench instead \
         (`--only SECTION,...` reruns some sections and keeps the others).\n\n",
    );
    let _ = writeln!(out, "- date: {}", util::utc_timestamp());
    let _ = writeln!(out, "- machine: {}", machine());
    let _ =
        writeln!(out, "- load average at the end (1, 5, 15 min): {} (other work on the machine skews times)", load());
    let _ = writeln!(out, "- qforge: git {}", git_revision(root));
    for tool in tools {
        let _ = writeln!(out, "- {tool}");
    }
    if kept {
        let _ = writeln!(out, "- sections not rerun this time are kept from the previous file (see their own stamp)");
    }
    out
}

/// The first line of a section: when, on what and at which load it was measured.
pub fn stamp(root: &Path) -> String {
    format!(
        "_Measured {} on {}, qforge git {}; load average at the end {}._\n\n",
        util::utc_timestamp(),
        machine(),
        git_revision(root),
        load()
    )
}

fn machine() -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_string()))
        .unwrap_or_else(|| "unknown".into());
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gb = meminfo_kb("MemTotal:").map_or_else(|| "?".into(), |kb| format!("{:.1}", kb / 1024.0 / 1024.0));
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").map_or_else(|_| "?".into(), |s| s.trim().to_string());
    format!("{nproc} CPUs (nproc), {cpu}, {mem_gb} GiB RAM, Linux {kernel}")
}

/// A `/proc/meminfo` field in kB (`MemTotal:`, `MemAvailable:`).
pub fn meminfo_kb(key: &str) -> Option<f64> {
    let m = fs::read_to_string("/proc/meminfo").ok()?;
    m.lines().find(|l| l.starts_with(key))?.split_whitespace().nth(1)?.parse().ok()
}

fn load() -> String {
    fs::read_to_string("/proc/loadavg")
        .map_or_else(|_| "?".into(), |s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

/// `abc1234`, with ` + local changes` when the worktree differs from HEAD.
fn git_revision(root: &Path) -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(root)
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(rev) => match git(&["status", "--porcelain", "--untracked-files=no"]) {
            Some(s) if !s.is_empty() => format!("{rev} + local changes"),
            _ => rev,
        },
        None => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn splits_header_and_sections() {
        let doc = "# t\n\n- a\n\n## One\n\nx\n\n## Two\n\ny\n";
        let (h, s) = split(doc);
        assert_eq!(h, "# t\n\n- a\n\n");
        assert_eq!(s.len(), 2);
        assert_eq!(s[0], ("One".to_string(), "\nx\n\n".to_string()));
        assert_eq!(s[1].1, "\ny\n");
    }
}
