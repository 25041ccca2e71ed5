//! The statistics table of a run (`RunReport`'s `Display`): one row per
//! pass execution with its own time, the verifier's time after it, and the
//! numeric check that covered it, then the totals of each timer.

use std::fmt;
use std::time::Duration;

use super::RunReport;

pub(super) fn fmt_time(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 1.0 {
        format!("{:.0} µs", ms * 1e3)
    } else if ms < 1e4 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.2} s", ms / 1e3)
    }
}

impl RunReport {
    /// The text of the check column for execution `i`.
    fn check_cell(&self, i: usize) -> String {
        let r = &self.runs[i];
        let Some(nr) = &self.numerics else { return String::new() };
        if let Some((_, e)) = &r.numerics {
            let c = nr.checks.iter().find(|c| c.last == r.index);
            return match c {
                Some(c) if c.first != c.last => format!("{e:.1e} (#{}–#{}, {})", c.first, c.last, fmt_time(c.time)),
                Some(c) => format!("{e:.1e} ({})", fmt_time(c.time)),
                None => format!("{e:.1e}"),
            };
        }
        match r.checked_at {
            Some(k) => format!("→ #{k}"),
            None if !r.changed => "(unchanged)".into(),
            None => "(not checked)".into(),
        }
    }
}

impl fmt::Display for RunReport {
    /// The statistics table.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let checked = self.numerics.is_some();
        let verified = self.runs.iter().any(|r| !r.verify_time.is_zero());
        let rows: Vec<[String; 7]> = self
            .runs
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let name = match r.iteration {
                    Some(it) => format!("{} (iter {it})", r.name),
                    None => r.name.clone(),
                };
                let changes: Vec<String> =
                    r.report.counters.iter().filter(|c| c.1 > 0).map(|(k, v)| format!("{k} {v}")).collect();
                [
                    r.index.to_string(),
                    name,
                    fmt_time(r.time),
                    if verified { fmt_time(r.verify_time) } else { String::new() },
                    format!("{} → {}", r.nodes_before, r.nodes_after),
                    if changes.is_empty() { "—".into() } else { changes.join(", ") },
                    self.check_cell(i),
                ]
            })
            .collect();
        let head = [
            "#",
            "pass",
            "time",
            if verified { "verify" } else { "" },
            "nodes",
            "changes",
            if checked { "check: max rel err (passes, time)" } else { "" },
        ];
        let mut w = [0usize; 7];
        for r in rows.iter().chain(std::iter::once(&head.map(String::from))) {
            for (i, c) in r.iter().enumerate() {
                w[i] = w[i].max(c.chars().count());
            }
        }
        // Right-aligned: numbers and times; the verify column only when the verifier ran.
        let right = [true, false, true, true, true, false, false];
        let cols: Vec<usize> = (0..7).filter(|&c| c != 3 || verified).collect();
        let line = |f: &mut fmt::Formatter<'_>, r: &[String; 7]| -> fmt::Result {
            let cells: Vec<String> = cols
                .iter()
                .map(|&c| {
                    let pad = " ".repeat(w[c].saturating_sub(r[c].chars().count()));
                    if right[c] { format!("{pad}{}", r[c]) } else { format!("{}{pad}", r[c]) }
                })
                .collect();
            writeln!(f, "{}", cells.join("  ").trim_end())
        };
        line(f, &head.map(String::from))?;
        for r in &rows {
            line(f, r)?;
        }
        for r in &self.runs {
            for n in &r.report.notes {
                writeln!(f, "note: {}: {n}", r.name)?;
            }
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        if let Some((o, e)) = &self.end_to_end {
            writeln!(
                f,
                "numerics: output \"{o}\" differs from the input model by {e:.2e} relative (max over outputs)"
            )?;
        }
        if self.stopped_early {
            writeln!(f, "stopped after pass #{} (--stop-after)", self.runs.len())?;
        }
        let passes: Duration = self.runs.iter().map(|r| r.time).sum();
        let mut parts = vec![format!("passes {}", fmt_time(passes))];
        if verified {
            parts.push(format!("verifier {}", fmt_time(self.verify_time())));
        }
        if let Some(nr) = &self.numerics {
            let checks: Duration = nr.checks.iter().map(|c| c.time).sum();
            parts.push(format!(
                "checks {} on {} (input model run {}, {} check{} {})",
                fmt_time(nr.reference_time + checks),
                nr.engine,
                fmt_time(nr.reference_time),
                nr.checks.len(),
                if nr.checks.len() == 1 { "" } else { "s" },
                fmt_time(checks)
            ));
            if let Some(note) = &nr.engine_note {
                writeln!(f, "note: --check-numerics: {note}")?;
            }
        }
        write!(f, "total {} ({})", fmt_time(self.total), parts.join(", "))
    }
}
