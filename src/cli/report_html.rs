//! `qforge run --report run.html`: the run report as one self-contained
//! page, drawn from the same JSON document `--report run.json` writes, so
//! the two never disagree.
//!
//! Self-contained means: inline CSS and SVG, system fonts, one small inline
//! script (a name filter, and a `data-rendered="ok"` marker on `<body>` once
//! it ran, with script errors written into the page, so a headless browser
//! can check the page like a person would), and nothing fetched. Every text
//! from the model or the passes is escaped. Sections a run did not produce
//! (no calibration, no sensitivity analysis) are left out; histograms are
//! already cut down by the pass that published them and their count is
//! capped here, so a page stays well under a few megabytes.

use std::fmt::Write as _;

use serde_json::Value;

/// At most this many histograms are drawn (the JSON report has them all).
const MAX_HISTOGRAMS: usize = 400;

/// Histograms shown before the "more" fold.
const OPEN_HISTOGRAMS: usize = 12;

/// Bars of the sensitivity ranking chart.
const RANKING_BARS: usize = 24;

/// Colours of the calibration methods' thresholds, in legend order.
const METHOD_COLOURS: &[(&str, &str)] =
    &[("max", "#dc2626"), ("percentile", "#7c3aed"), ("mse", "#059669"), ("entropy", "#ea580c")];

const STYLE: &str = r#"
:root{--int8:#2563eb;--fp16:#f59e0b;--fp32:#dc2626;--ink:#1f2937;--mute:#6b7280;--line:#e5e7eb;--bg:#f8fafc}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--ink);background:var(--bg)}
main{max-width:1240px;margin:0 auto;padding:20px 24px 48px}
header h1{font-size:22px;margin:0 0 4px}
header .sub{color:var(--mute);font-size:13px;word-break:break-all}
h2{font-size:17px;margin:28px 0 10px;padding-bottom:4px;border-bottom:2px solid var(--line)}
h2 small{font-weight:normal;color:var(--mute);font-size:13px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin-top:16px}
.card{background:#fff;border:1px solid var(--line);border-radius:8px;padding:10px 14px;min-width:170px;flex:1}
.card .k{color:var(--mute);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.card .v{font-size:22px;font-weight:600;margin-top:2px;white-space:nowrap}
.card .d{color:var(--mute);font-size:12px}
.good{color:#047857}.bad{color:#b91c1c}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid var(--line);font-size:13px}
th,td{padding:4px 8px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{background:#f1f5f9;font-weight:600;white-space:nowrap}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.pass{white-space:nowrap}
td.name{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:12px;word-break:break-all}
.bar{display:inline-block;height:8px;background:#94a3b8;border-radius:2px;vertical-align:middle;margin-left:6px}
.tag{display:inline-block;padding:0 6px;border-radius:9px;color:#fff;font-size:11px;font-weight:600}
.INT8{background:var(--int8)}.FP16{background:var(--fp16)}.FP32{background:var(--fp32)}
.legend{display:flex;flex-wrap:wrap;gap:14px;font-size:12px;color:var(--mute);margin:6px 0}
.legend i{display:inline-block;width:12px;height:12px;border-radius:2px;vertical-align:-2px;margin-right:4px}
.legend i.line{height:3px;vertical-align:3px;width:16px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(370px,1fr));gap:12px}
figure{margin:0;background:#fff;border:1px solid var(--line);border-radius:6px;padding:6px 8px}
figcaption{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:12px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
figcaption span{font-family:system-ui,sans-serif;color:var(--mute)}
svg text{font-family:system-ui,-apple-system,"DejaVu Sans",sans-serif}
details{margin:8px 0}
summary{cursor:pointer;color:#1d4ed8}
ul.notes{margin:4px 0;padding-left:20px;font-size:13px}
ul.notes li{margin:2px 0}
input[type=search]{padding:4px 8px;border:1px solid #cbd5e1;border-radius:6px;width:280px;font:inherit}
#script-errors{color:#b91c1c;white-space:pre-wrap}
#script-errors:empty{display:none}
.muted{color:var(--mute)}
"#;

/// Escapes text for HTML content and attribute values.
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// A number for people: 3 significant digits or so.
fn num(x: f64) -> String {
    if !x.is_finite() {
        return if x.is_nan() {
            "—".into()
        } else if x > 0.0 {
            "∞".into()
        } else {
            "−∞".into()
        };
    }
    let a = x.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 1000.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 0.01 {
        format!("{x:.3}")
    } else {
        format!("{x:.2e}")
    }
}

fn secs(s: f64) -> String {
    if s < 1e-3 {
        format!("{:.0} µs", s * 1e6)
    } else if s < 10.0 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// The last section named `name` any pass published.
fn section<'a>(doc: &'a Value, name: &str) -> Option<&'a Value> {
    doc["runs"].as_array()?.iter().rev().find_map(|r| r["data"].get(name))
}

/// The whole page.
pub fn render(doc: &Value) -> String {
    let mut h = String::with_capacity(1 << 16);
    let input = text(&doc["input"]);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>qforge report: {}</title><style>{STYLE}</style></head>\n\
         <body data-rendered=\"no\"><pre id=\"script-errors\"></pre>\n\
         <script>window.onerror=function(m,s,l,c){{var e=document.getElementById('script-errors');\
         e.textContent+='script error: '+m+' (line '+l+')\\n';document.body.setAttribute('data-script-error','1');}};</script>\n<main>",
        esc(input)
    );
    let _ = write!(
        h,
        "<header><h1>qforge run report</h1><div class=\"sub\">pipeline <b>{}</b> · {} → {} · qforge {}</div></header>",
        esc(text(&doc["pipeline"])),
        esc(input),
        esc(text(&doc["output"])),
        esc(text(&doc["qforge"]))
    );
    summary(&mut h, doc);
    passes(&mut h, doc);
    precision(&mut h, doc);
    calibration(&mut h, doc);
    sensitivity(&mut h, doc);
    h.push_str("</main>\n<script>\n");
    h.push_str(SCRIPT);
    h.push_str("</script>\n</body></html>\n");
    h
}

/// Filters tables and figures by name, then marks the page as rendered.
const SCRIPT: &str = r#"(function(){
  document.querySelectorAll('input[data-filter]').forEach(function(box){
    var items=document.querySelectorAll(box.getAttribute('data-filter'));
    box.addEventListener('input',function(){
      var q=box.value.toLowerCase();
      items.forEach(function(el){
        var name=(el.getAttribute('data-name')||'').toLowerCase();
        el.style.display=name.indexOf(q)>=0?'':'none';
        if(q&&name.indexOf(q)>=0&&el.closest('details'))el.closest('details').open=true;
      });
    });
  });
  var n=document.querySelectorAll('svg').length+document.querySelectorAll('tbody tr').length;
  document.body.setAttribute('data-items',String(n));
  document.body.setAttribute('data-rendered','ok');
})();
"#;

fn card(h: &mut String, key: &str, value: &str, detail: &str) {
    let _ = write!(
        h,
        "<div class=\"card\"><div class=\"k\">{}</div><div class=\"v\">{value}</div><div class=\"d\">{}</div></div>",
        esc(key),
        esc(detail)
    );
}

fn summary(h: &mut String, doc: &Value) {
    h.push_str("<div class=\"cards\">");
    if let Some(rows) = doc["precision"].as_array() {
        let count = |p: &str, weighted_only: bool| {
            rows.iter().filter(|r| r["precision"] == p && (!weighted_only || is_weighted(r))).count()
        };
        let v = format!(
            "<span style=\"color:var(--int8)\">{}</span> / <span style=\"color:var(--fp16)\">{}</span> / <span style=\"color:var(--fp32)\">{}</span>",
            count("INT8", true),
            count("FP16", true),
            count("FP32", true)
        );
        let all = format!(
            "all {} in the map: {} / {} / {}",
            rows.len(),
            count("INT8", false),
            count("FP16", false),
            count("FP32", false)
        );
        card(h, "layers INT8 / FP16 / FP32", &v, &format!("Conv, ConvTranspose, Gemm, MatMul; {all}"));
    }
    if let Some(s) = section(doc, "sensitivity") {
        let metric = text(&s["metric"]);
        let (b, fin) = (&s["all_quantized"], &s["final"]);
        let up = f(&fin["metric"]) >= f(&b["metric"]);
        card(
            h,
            &format!("{metric} vs FP32"),
            &format!("<span class=\"{}\">{}</span>", if up { "good" } else { "bad" }, esc(&num(f(&fin["metric"])))),
            &format!("all layers INT8: {}", num(f(&b["metric"]))),
        );
        card(
            h,
            "output SQNR vs FP32",
            &format!("{} dB", esc(&num(f(&fin["sqnr_db"])))),
            &format!("all layers INT8: {} dB", num(f(&b["sqnr_db"]))),
        );
    }
    if let Some(c) = section(doc, "calibration") {
        card(
            h,
            "calibration",
            &esc(text(&c["method"])),
            &format!(
                "{} samples · {} tensors",
                c["samples"].as_u64().unwrap_or(0),
                c["tensors"].as_array().map_or(0, Vec::len)
            ),
        );
    }
    if let Some(e) = doc["end_to_end_max_rel_err"].as_f64() {
        card(h, "numeric check", &format!("{e:.1e}"), "max relative output error vs the input model");
    }
    let runs = doc["runs"].as_array().map_or(0, Vec::len);
    card(h, "time", &esc(&secs(f(&doc["seconds"]))), &format!("{runs} pass runs"));
    h.push_str("</div>");
    for w in doc["warnings"].as_array().into_iter().flatten() {
        let _ = write!(h, "<p class=\"bad\">warning: {}</p>", esc(text(w)));
    }
}

fn passes(h: &mut String, doc: &Value) {
    let runs = doc["runs"].as_array().cloned().unwrap_or_default();
    let longest = runs.iter().map(|r| f(&r["seconds"])).fold(0.0f64, |a, b| a.max(b)).max(1e-9);
    let checked = runs.iter().any(|r| r["max_rel_err"].is_number());
    let _ = write!(h, "<h2 id=\"passes\">Passes <small>{} runs</small></h2>", runs.len());
    h.push_str("<table><thead><tr><th>#</th><th>pass</th><th>time</th><th>nodes</th><th>changes</th>");
    if checked {
        h.push_str("<th>check: max rel err</th>");
    }
    h.push_str("</tr></thead><tbody>");
    for r in &runs {
        let name = match r["iteration"].as_u64() {
            Some(i) => format!("{} (iter {i})", text(&r["pass"])),
            None => text(&r["pass"]).to_string(),
        };
        let changes: Vec<String> = r["counters"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let t = f(&r["seconds"]);
        let _ = write!(
            h,
            "<tr><td class=\"n\">{}</td><td class=\"pass\">{}</td><td class=\"n\">{}<span class=\"bar\" style=\"width:{:.0}px\"></span></td>\
             <td class=\"n\">{} → {}</td><td>{}</td>",
            r["index"],
            esc(&name),
            esc(&secs(t)),
            (t / longest * 80.0).max(1.0),
            r["nodes_before"],
            r["nodes_after"],
            if changes.is_empty() { "<span class=\"muted\">—</span>".to_string() } else { esc(&changes.join(", ")) }
        );
        if checked {
            let c = r["max_rel_err"].as_f64().map(|e| format!("{e:.1e}")).unwrap_or_default();
            let _ = write!(h, "<td class=\"n\">{c}</td>");
        }
        h.push_str("</tr>");
    }
    h.push_str("</tbody></table>");
    let noted: Vec<&Value> = runs.iter().filter(|r| r["notes"].as_array().is_some_and(|n| !n.is_empty())).collect();
    if !noted.is_empty() {
        let total: usize = noted.iter().map(|r| r["notes"].as_array().map_or(0, Vec::len)).sum();
        let _ = write!(h, "<details><summary>notes of the passes ({total})</summary><ul class=\"notes\">");
        for r in noted {
            for n in r["notes"].as_array().into_iter().flatten() {
                let _ = write!(h, "<li><b>{}</b>: {}</li>", esc(text(&r["pass"])), esc(text(n)));
            }
        }
        h.push_str("</ul></details>");
    }
}

/// Whether a precision-map row is a weighted layer (what TensorRT counts as a layer's precision).
fn is_weighted(r: &Value) -> bool {
    matches!(text(&r["op"]), "Conv" | "ConvTranspose" | "Gemm" | "MatMul")
}

/// One letter per reason kind, drawn in the layer's cell.
fn reason_letter(kind: &str) -> &'static str {
    match kind {
        "sensitivity" => "S",
        "tail" => "T",
        "overflow" => "O",
        "excluded" | "first-conv" | "kept-fp32" => "X",
        "no-range" => "R",
        _ => "?",
    }
}

fn precision(h: &mut String, doc: &Value) {
    let Some(rows) = doc["precision"].as_array() else { return };
    let _ = write!(
        h,
        "<h2 id=\"precision\">Precision map <small>{} layers of the final graph, in graph order</small></h2>",
        rows.len()
    );
    h.push_str(
        "<div class=\"legend\"><span><i class=\"INT8\"></i>INT8</span><span><i class=\"FP16\"></i>FP16</span>\
         <span><i class=\"FP32\"></i>FP32</span><span>letters: why float — S sensitive (skip-sensitive), \
         T post-processing tail, O range overflows FP16, X excluded, R no calibration range</span></div>",
    );
    // One cell per layer, wrapping rows.
    let (cols, cw, ch, gap) = (40usize, 28.0, 22.0, 2.0);
    let lines = rows.len().div_ceil(cols).max(1);
    let (w, hgt) = (cols as f64 * (cw + gap), lines as f64 * (ch + gap));
    let _ = write!(
        h,
        "<svg role=\"img\" aria-label=\"precision map\" viewBox=\"0 0 {w} {hgt}\" width=\"100%\" style=\"max-width:{w}px;background:#fff;border:1px solid var(--line)\">"
    );
    for (i, r) in rows.iter().enumerate() {
        let (x, y) = ((i % cols) as f64 * (cw + gap) + 1.0, (i / cols) as f64 * (ch + gap) + 1.0);
        let p = text(&r["precision"]);
        let colour = match p {
            "INT8" => "var(--int8)",
            "FP16" => "var(--fp16)",
            _ => "var(--fp32)",
        };
        let reasons: Vec<&Value> = r["reasons"].as_array().map(|a| a.iter().collect()).unwrap_or_default();
        let why: Vec<String> = reasons.iter().map(|x| format!("{}: {}", text(&x["pass"]), text(&x["why"]))).collect();
        let letter = reasons.first().map(|x| reason_letter(text(&x["kind"]))).unwrap_or("");
        let _ = write!(
            h,
            "<g><title>{} ({}) — {}{}{}</title><rect x=\"{x}\" y=\"{y}\" width=\"{cw}\" height=\"{ch}\" rx=\"3\" fill=\"{colour}\"/>",
            esc(text(&r["node"])),
            esc(text(&r["op"])),
            p,
            if why.is_empty() { "" } else { ": " },
            esc(&why.join("; "))
        );
        if !letter.is_empty() {
            let _ = write!(
                h,
                "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" font-weight=\"700\" fill=\"#fff\" text-anchor=\"middle\">{letter}</text>",
                x + cw / 2.0,
                y + ch / 2.0 + 4.0
            );
        }
        h.push_str("</g>");
    }
    h.push_str("</svg>");
    // The float layers with their reasons first; then every layer, folded.
    let float: Vec<&Value> = rows.iter().filter(|r| r["precision"] != "INT8").collect();
    let table = |h: &mut String, list: &[&Value], filter: Option<&str>| {
        h.push_str(
            "<table><thead><tr><th>layer</th><th>op</th><th>precision</th><th>why float</th></tr></thead><tbody>",
        );
        for r in list {
            let why: Vec<String> = r["reasons"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|x| format!("<b>{}</b>: {}", esc(text(&x["pass"])), esc(text(&x["why"]))))
                .collect();
            let p = text(&r["precision"]);
            let _ = write!(
                h,
                "<tr{}><td class=\"name\">{}</td><td>{}</td><td><span class=\"tag {p}\">{p}</span></td><td>{}</td></tr>",
                filter.map(|c| format!(" class=\"{c}\" data-name=\"{}\"", esc(text(&r["node"])))).unwrap_or_default(),
                esc(text(&r["node"])),
                esc(text(&r["op"])),
                if why.is_empty() && p != "INT8" {
                    "<span class=\"muted\">no pass gave a reason</span>".into()
                } else {
                    why.join("<br>")
                }
            );
        }
        h.push_str("</tbody></table>");
    };
    let float_weighted: Vec<&Value> = float.iter().copied().filter(|r| is_weighted(r)).collect();
    let _ =
        write!(h, "<p>Weighted layers (Conv, ConvTranspose, Gemm, MatMul) not in INT8: {}</p>", float_weighted.len());
    if !float_weighted.is_empty() {
        table(h, &float_weighted, None);
    }
    let _ = write!(
        h,
        "<details><summary>all {} layers (INT8 {}, float {})</summary>\
         <p><input type=\"search\" placeholder=\"filter layers by name\" data-filter=\"tr.layer\"></p>",
        rows.len(),
        rows.len() - float.len(),
        float.len()
    );
    let all: Vec<&Value> = rows.iter().collect();
    table(h, &all, Some("layer"));
    h.push_str("</details>");
}

fn sensitivity(h: &mut String, doc: &Value) {
    let Some(s) = section(doc, "sensitivity") else { return };
    let metric = text(&s["metric"]);
    let _ = write!(
        h,
        "<h2 id=\"sensitivity\">Sensitivity <small>metric {} on {}</small></h2>",
        esc(metric),
        esc(text(&s["samples"]))
    );
    let steps = s["steps"].as_array().cloned().unwrap_or_default();
    let kept: Vec<&str> = steps.iter().filter(|x| x["accepted"] == true).map(|x| text(&x["node"])).collect();
    let tried: Vec<&str> = steps.iter().map(|x| text(&x["node"])).collect();
    // The local ranking, worst first.
    let mut ranking: Vec<&Value> = s["local_ranking"].as_array().map(|a| a.iter().collect()).unwrap_or_default();
    ranking.sort_by(|a, b| f(&a["local_sqnr_db"]).total_cmp(&f(&b["local_sqnr_db"])));
    let n = ranking.len().min(RANKING_BARS);
    if n > 0 {
        let _ = write!(
            h,
            "<p>Local measure: each layer's own output SQNR with its inputs quantized (lower = more sensitive); the {n} worst of {} layers.</p>\
             <div class=\"legend\"><span><i style=\"background:#16a34a\"></i>kept float</span><span><i style=\"background:#f59e0b\"></i>measured end to end, left INT8</span><span><i style=\"background:#94a3b8\"></i>not shortlisted</span></div>",
            ranking.len()
        );
        // Bars start at a round floor below the worst layer, so differences of
        // a few dB between layers show.
        let finite: Vec<f64> = ranking[..n].iter().map(|r| f(&r["local_sqnr_db"])).filter(|x| x.is_finite()).collect();
        let lo = finite.iter().copied().fold(f64::INFINITY, f64::min);
        let lo = if lo.is_finite() { ((lo - 1.0) / 5.0).floor() * 5.0 } else { 0.0 };
        let top = finite.iter().copied().fold(lo + 1.0, f64::max);
        let (label_w, bar_w, row) = (330.0, 520.0, 18.0);
        let height = n as f64 * row + 24.0;
        let _ = write!(
            h,
            "<svg role=\"img\" aria-label=\"sensitivity ranking\" viewBox=\"0 0 {} {height}\" width=\"100%\" style=\"max-width:{}px;background:#fff;border:1px solid var(--line)\">",
            label_w + bar_w + 80.0,
            label_w + bar_w + 80.0
        );
        for (i, r) in ranking[..n].iter().enumerate() {
            let node = text(&r["node"]);
            let v = f(&r["local_sqnr_db"]);
            let y = 6.0 + i as f64 * row;
            let colour = if kept.contains(&node) {
                "#16a34a"
            } else if tried.contains(&node) {
                "#f59e0b"
            } else {
                "#94a3b8"
            };
            let len = if v.is_finite() { ((v - lo).max(0.0) / (top - lo) * bar_w).max(1.0) } else { bar_w };
            let short: String = if node.chars().count() > 46 {
                format!("…{}", node.chars().rev().take(45).collect::<Vec<_>>().into_iter().rev().collect::<String>())
            } else {
                node.to_string()
            };
            let _ = write!(
                h,
                "<g><title>{} ({}): local SQNR {} dB</title><text x=\"{:.0}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{}</text>\
                 <rect x=\"{label_w}\" y=\"{y:.1}\" width=\"{len:.1}\" height=\"{:.0}\" fill=\"{colour}\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"#374151\">{} dB</text></g>",
                esc(node),
                esc(text(&r["op"])),
                num(v),
                label_w - 6.0,
                y + 11.0,
                esc(&short),
                row - 4.0,
                label_w + len + 4.0,
                y + 11.0,
                num(v)
            );
        }
        let _ = write!(
            h,
            "<text x=\"{label_w}\" y=\"{:.0}\" font-size=\"11\" fill=\"#6b7280\">local SQNR (dB), bars from {} dB</text></svg>",
            height - 4.0,
            num(lo)
        );
    }
    let _ = write!(
        h,
        "<p>Greedy steps: the shortlist, most helpful alone first; a layer stays float only if the model with it scores better on {} (ties within the margin broken by SQNR).</p>",
        esc(metric)
    );
    h.push_str(
        "<table><thead><tr><th>layer</th><th>op</th><th>local SQNR</th><th>alone: metric / SQNR</th>\
         <th>combined: metric / SQNR</th><th>decision</th></tr></thead><tbody>",
    );
    let score = |v: &Value| {
        if v.is_object() { format!("{} / {} dB", num(f(&v["metric"])), num(f(&v["sqnr_db"]))) } else { "—".into() }
    };
    for st in &steps {
        let ok = st["accepted"] == true;
        let _ = write!(
            h,
            "<tr><td class=\"name\">{}</td><td>{}</td><td class=\"n\">{} dB</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"{}\">{}{}</td></tr>",
            esc(text(&st["node"])),
            esc(text(&st["op"])),
            num(f(&st["local_sqnr_db"])),
            esc(&score(&st["alone"])),
            esc(&score(&st["combined"])),
            if ok { "good" } else { "muted" },
            if ok { "kept float: " } else { "" },
            esc(text(&st["why"]))
        );
    }
    let _ = write!(
        h,
        "<tr><td colspan=\"3\"><b>all layers INT8</b> → <b>final</b></td><td class=\"n\">{}</td><td class=\"n\">{}</td><td></td></tr></tbody></table>",
        esc(&score(&s["all_quantized"])),
        esc(&score(&s["final"]))
    );
}

/// One histogram: log-scaled counts of |x| as a step outline, each method's
/// threshold as a vertical line, the range the graph uses dashed.
fn histogram(h: &mut String, t: &Value, used: Option<f64>) {
    let counts: Vec<f64> = t["counts"].as_array().map(|a| a.iter().map(f).collect()).unwrap_or_default();
    let width = f(&t["bin_width"]);
    if counts.is_empty() || width.is_nan() || width <= 0.0 {
        return;
    }
    let xmax = width * counts.len() as f64;
    let (w, hgt, left, bottom) = (350.0, 130.0, 4.0, 18.0);
    let plot_w = w - 2.0 * left;
    let plot_h = hgt - bottom - 6.0;
    let top = counts.iter().fold(0.0f64, |a, &b| a.max(b));
    let ly = |c: f64| if top > 0.0 { (1.0 + c).ln() / (1.0 + top).ln() } else { 0.0 };
    let x_of = |v: f64| left + (v / xmax).clamp(0.0, 1.0) * plot_w;
    let base = 6.0 + plot_h;
    let mut d = format!("M{left:.1} {base:.1}");
    for (k, &c) in counts.iter().enumerate() {
        let y = base - ly(c) * plot_h;
        let _ = write!(d, "V{y:.1}H{:.1}", left + (k + 1) as f64 / counts.len() as f64 * plot_w);
    }
    let _ = write!(d, "V{base:.1}Z");
    let name = text(&t["tensor"]);
    let amax = f(&t["amax"]);
    let _ = write!(
        h,
        "<figure data-name=\"{}\"><figcaption title=\"{}\">{}<br><span>max {} · range {} · clips {:.3}%</span></figcaption>\
         <svg viewBox=\"0 0 {w} {hgt}\" width=\"100%\" role=\"img\" aria-label=\"histogram of {}\"><path d=\"{d}\" fill=\"#cbd5e1\" stroke=\"#64748b\" stroke-width=\"0.6\"/>",
        esc(name),
        esc(name),
        esc(name),
        num(f(&t["max"])),
        num(amax),
        f(&t["clipped"]) * 100.0,
        esc(name)
    );
    for (m, v) in t["thresholds"].as_object().into_iter().flatten() {
        let colour = METHOD_COLOURS.iter().find(|c| m.starts_with(c.0)).map_or("#111827", |c| c.1);
        let x = x_of(f(v));
        let chosen = (f(v) - amax).abs() <= 1e-6 * amax.abs().max(1e-12);
        let _ = write!(
            h,
            "<line x1=\"{x:.1}\" y1=\"4\" x2=\"{x:.1}\" y2=\"{base:.1}\" stroke=\"{colour}\" stroke-width=\"{}\"><title>{}: {}{}</title></line>",
            if chosen { 2.5 } else { 1.2 },
            esc(m),
            num(f(v)),
            if chosen { " (chosen)" } else { "" }
        );
    }
    if let Some(u) = used.filter(|u| (u - amax).abs() > 1e-6 * amax.abs().max(1e-12)) {
        let x = x_of(u);
        let _ = write!(
            h,
            "<line x1=\"{x:.1}\" y1=\"4\" x2=\"{x:.1}\" y2=\"{base:.1}\" stroke=\"#111827\" stroke-width=\"1.5\" stroke-dasharray=\"4 3\"><title>range in the graph (shared scale or head range): {}</title></line>",
            num(u)
        );
    }
    let _ = write!(
        h,
        "<text x=\"{left}\" y=\"{:.0}\" font-size=\"10\" fill=\"#6b7280\">0</text><text x=\"{:.0}\" y=\"{:.0}\" font-size=\"10\" fill=\"#6b7280\" text-anchor=\"end\">|x| {}</text></svg></figure>",
        hgt - 3.0,
        w - left,
        hgt - 3.0,
        num(xmax)
    );
}

fn calibration(h: &mut String, doc: &Value) {
    let Some(c) = section(doc, "calibration") else { return };
    let mut tensors: Vec<&Value> = c["tensors"].as_array().map(|a| a.iter().collect()).unwrap_or_default();
    let ranges = section(doc, "ranges");
    let _ = write!(
        h,
        "<h2 id=\"calibration\">Calibration <small>method {} · {} samples · {} tensors · histograms of |x|, log scale; most clipped first, then where the methods disagree most</small></h2>",
        esc(text(&c["method"])),
        c["samples"].as_u64().unwrap_or(0),
        tensors.len()
    );
    h.push_str("<div class=\"legend\">");
    for (m, colour) in METHOD_COLOURS {
        let _ = write!(h, "<span><i class=\"line\" style=\"background:{colour}\"></i>{m}</span>");
    }
    h.push_str(
        "<span>thick line: the chosen range</span><span><i class=\"line\" style=\"background:repeating-linear-gradient(90deg,#111827 0 4px,transparent 4px 7px)\"></i>range in the graph, where insert-qdq changed it</span></div>",
    );
    // Where the choice matters most first: what the range clips, then how
    // far apart the methods' thresholds are.
    let spread = |t: &Value| {
        let th: Vec<f64> = t["thresholds"].as_object().into_iter().flatten().map(|(_, v)| f(v)).collect();
        let (lo, hi) = th.iter().fold((f64::INFINITY, 0.0f64), |(l, h), &x| (l.min(x), h.max(x)));
        if lo > 0.0 && lo.is_finite() { hi / lo } else { 1.0 }
    };
    tensors.sort_by(|a, b| {
        f(&b["clipped"])
            .total_cmp(&f(&a["clipped"]))
            .then(spread(b).total_cmp(&spread(a)))
            .then(text(&a["tensor"]).cmp(text(&b["tensor"])))
    });
    let shown = tensors.len().min(MAX_HISTOGRAMS);
    let used = |t: &Value| ranges.and_then(|r| r.get(text(&t["tensor"]))).and_then(Value::as_f64);
    h.push_str("<p><input type=\"search\" placeholder=\"filter tensors by name\" data-filter=\"figure[data-name]\"></p><div class=\"grid\">");
    for t in &tensors[..shown.min(OPEN_HISTOGRAMS)] {
        histogram(h, t, used(t));
    }
    h.push_str("</div>");
    if shown > OPEN_HISTOGRAMS {
        let _ = write!(h, "<details><summary>{} more tensors</summary><div class=\"grid\">", shown - OPEN_HISTOGRAMS);
        for t in &tensors[OPEN_HISTOGRAMS..shown] {
            histogram(h, t, used(t));
        }
        h.push_str("</div></details>");
    }
    if tensors.len() > shown {
        let _ = write!(h, "<p class=\"muted\">{} more tensors are in the JSON report.</p>", tensors.len() - shown);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_everywhere() {
        let evil = "<script>alert('x')</script>&\"";
        let doc = serde_json::json!({
            "pipeline": evil, "input": evil, "output": "o.onnx", "qforge": "0",
            "runs": [{"index": 1, "pass": evil, "seconds": 0.5, "nodes_before": 1, "nodes_after": 1,
                      "counters": {evil: 1}, "notes": [evil], "data": {}}],
            "precision": [{"node": evil, "op": "Conv", "precision": "FP32",
                           "reasons": [{"kind": "tail", "pass": evil, "why": evil}]}],
            "seconds": 1.0,
        });
        let page = render(&doc);
        assert!(!page.contains("<script>alert"), "unescaped text in the page");
        assert!(page.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"));
        // The only scripts are ours: the error hook and the one at the end.
        assert_eq!(page.matches("<script>").count(), 2);
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(num(1234.4), "1234");
        assert_eq!(num(12.34), "12.3");
        assert_eq!(num(0.1234), "0.123");
        assert_eq!(num(0.00012), "1.20e-4");
        assert_eq!(num(f64::INFINITY), "∞");
    }
}
