//! `--check-numerics` in the pass manager: one check per stretch of exact
//! passes, a failing stretch still names the pass that broke the numbers,
//! and a lossy pass is checked (and reported, not failed) on its own.

use qforge_ir::{Graph, parse_graph};
use serde_json::Value;

use super::*;
use crate::pipeline::Origin;
use crate::registry::find_pass;

const CONV_BN: &str = "graph g {
  opset ai.onnx 13
  input %x: f32[1,3,8,8]
  init @w: f32[4,3,3,3] = rand(1)
  init @b: f32[4] = rand(2)
  init @gamma: f32[4] = [0.5,1.5,-2.0,1.0]
  init @beta: f32[4] = [0.1,-0.2,0.3,0.0]
  init @mean: f32[4] = [0.05,-0.1,0.2,0.0]
  init @var: f32[4] = [1.0,0.25,4.0,0.5]
  %i = Identity(%x)  # id
  %c = Conv(%i, @w, @b) {kernel_shape=[3,3], pads=[1,1,1,1]}  # conv
  %y = BatchNormalization(%c, @gamma, @beta, @mean, @var)  # bn
  output %y: f32[1,4,8,8]
}
";

/// Scales the Conv weights by 1.01 while claiming (or not) to be exact.
struct Perturb(Tolerance);

impl Pass for Perturb {
    fn run(&self, g: &mut Graph, _cx: &mut PassContext) -> Result<PassReport, PassError> {
        let mut r = PassReport::default();
        let w = g.find_value("w").expect("the test graph has @w");
        let t = g.initializer(w).expect("@w is an initializer");
        let data: Vec<f32> = t.to_f32_vec().expect("f32").iter().map(|x| x * 1.01).collect();
        let scaled = qforge_ir::Tensor::new(t.dims(), &data);
        g.set_initializer(w, scaled).map_err(|e| PassError::ir("perturb", e))?;
        r.count("perturbed", 1);
        Ok(r)
    }
    fn tolerance(&self) -> Tolerance {
        self.0
    }
}

fn step(name: &str) -> PassStep {
    PassStep { name: name.into(), options: Value::Null, origin: Origin { file: "test".into(), line: 0, column: 0 } }
}

fn builtin(name: &str) -> Planned {
    let pass = (find_pass(name).expect("built-in pass").create)(&Value::Null).expect("default options");
    Planned::Single(Instance::new(step(name), pass, false))
}

fn perturb(tol: Tolerance) -> Planned {
    Planned::Single(Instance::new(step("perturb"), Box::new(Perturb(tol)), false))
}

fn run(planned: Vec<Planned>, each_pass: bool) -> Result<RunReport, PassError> {
    let numerics = NumericsOptions { each_pass, ..Default::default() };
    let pm = PassManager { planned, opts: ManagerOptions { check_numerics: Some(numerics), ..Default::default() } };
    let mut g = parse_graph(CONV_BN).expect("test graph parses");
    pm.run(&mut g, &mut PassContext { quiet: true, ..Default::default() })
}

fn spans(r: &RunReport) -> Vec<(usize, usize)> {
    r.numerics.as_ref().expect("numerics ran").checks.iter().map(|c| (c.first, c.last)).collect()
}

#[test]
fn exact_passes_are_checked_once_together() {
    let r = run(vec![builtin("eliminate-identity"), builtin("fold-batchnorm"), builtin("topo-sort")], false).unwrap();
    assert_eq!(spans(&r), [(1, 2)], "{r}");
    let c = &r.numerics.as_ref().unwrap().checks[0];
    assert!(c.exact && c.rel_err <= 1e-5, "{r}");
    assert_eq!(r.runs[0].checked_at, Some(2));
    assert_eq!(r.runs[1].numerics.as_ref().map(|n| n.0.as_str()), Some("y"));
    assert_eq!(r.runs[2].checked_at, None, "topo-sort changed nothing");
    assert!(r.end_to_end.is_some_and(|e| e.1 <= 1e-5));
    // Each pass on its own when asked.
    let r = run(vec![builtin("eliminate-identity"), builtin("fold-batchnorm"), builtin("topo-sort")], true).unwrap();
    assert_eq!(spans(&r), [(1, 1), (2, 2)], "{r}");
}

#[test]
fn a_failing_stretch_names_the_guilty_pass() {
    let e = run(vec![builtin("eliminate-identity"), perturb(Tolerance::Exact), builtin("fold-batchnorm")], false)
        .unwrap_err();
    match &e {
        PassError::Numerics { pass, rel_err, .. } => assert!(pass == "perturb" && *rel_err > 1e-3, "{e}"),
        other => panic!("not a numerics error: {other}"),
    }
    // Last in the stretch, or alone: the same pass is named.
    let e = run(vec![builtin("eliminate-identity"), builtin("fold-batchnorm"), perturb(Tolerance::Exact)], false)
        .unwrap_err();
    assert!(matches!(&e, PassError::Numerics { pass, .. } if pass == "perturb"), "{e}");
    let e = run(vec![perturb(Tolerance::Exact)], false).unwrap_err();
    assert!(matches!(&e, PassError::Numerics { pass, .. } if pass == "perturb"), "{e}");
}

#[test]
fn a_lossy_pass_is_checked_alone_and_reported() {
    let r = run(vec![builtin("eliminate-identity"), perturb(Tolerance::Approximate), builtin("fold-batchnorm")], false)
        .unwrap();
    assert_eq!(spans(&r), [(1, 1), (2, 2), (3, 3)], "{r}");
    let checks = &r.numerics.as_ref().unwrap().checks;
    assert!(!checks[1].exact && checks[1].rel_err > 1e-3, "{r}");
    assert!(checks[2].rel_err <= 1e-5, "fold-batchnorm is compared with the perturbed graph: {r}");
    // The table shows the check column and the timers.
    let table = r.to_string();
    assert!(table.contains("check: max rel err") && table.contains("verifier") && table.contains("checks"), "{table}");
}

/// Scales the Conv weights by 1.01 and reports nothing.
struct Silent;

impl Pass for Silent {
    fn run(&self, g: &mut Graph, cx: &mut PassContext) -> Result<PassReport, PassError> {
        Perturb(Tolerance::Exact).run(g, cx)?;
        Ok(PassReport::default())
    }
}

/// Reports a change and touches nothing.
struct Boaster;

impl Pass for Boaster {
    fn run(&self, _g: &mut Graph, _cx: &mut PassContext) -> Result<PassReport, PassError> {
        let mut r = PassReport::default();
        r.count("rewritten", 3);
        Ok(r)
    }
}

fn instance(name: &str, pass: Box<dyn Pass>) -> Instance {
    Instance::new(step(name), pass, false)
}

fn group(passes: Vec<Instance>) -> Planned {
    Planned::Group { max_iterations: 3, passes, origin: Origin { file: "test".into(), line: 1, column: 1 } }
}

fn run_plain(planned: Vec<Planned>) -> RunReport {
    let pm = PassManager { planned, opts: ManagerOptions::default() };
    let mut g = parse_graph(CONV_BN).expect("test graph parses");
    pm.run(&mut g, &mut PassContext { quiet: true, ..Default::default() }).expect("runs")
}

#[test]
fn a_pass_that_mutates_silently_is_seen_as_changed() {
    // The numeric check still covers it and names it.
    let e = run(vec![builtin("eliminate-identity"), Planned::Single(instance("silent", Box::new(Silent)))], false)
        .unwrap_err();
    assert!(matches!(&e, PassError::Numerics { pass, .. } if pass == "silent"), "{e}");
    // A fixed-point group with it never converges.
    let r = run_plain(vec![group(vec![instance("silent", Box::new(Silent))])]);
    assert_eq!(r.runs.len(), 3, "{r}");
    assert!(r.runs.iter().all(|p| p.changed && p.report.counters.is_empty()), "{r}");
    assert!(r.warnings.iter().any(|w| w.contains("still changed the graph after 3 iterations")), "{r}");
}

#[test]
fn a_pass_that_only_reports_a_change_is_not() {
    let r = run_plain(vec![group(vec![instance("boaster", Box::new(Boaster))])]);
    assert_eq!(r.runs.len(), 1, "converged at once: {r}");
    assert!(!r.runs[0].changed && r.runs[0].report.get("rewritten") == 3, "{r}");
    assert!(r.warnings.is_empty(), "{r}");
    // Not checked numerically either (nothing to check), and said so.
    let r =
        run(vec![Planned::Single(instance("boaster", Box::new(Boaster))), builtin("fold-batchnorm")], false).unwrap();
    assert_eq!(spans(&r), [(2, 2)], "{r}");
    assert_eq!(r.runs[0].checked_at, None);
    assert!(r.to_string().contains("(unchanged)"), "{r}");
}

/// `calibrate` keeps the float model's outputs only for a later pass that
/// reads them: each pass learns whether one runs after it, a fixed-point
/// group counting its own passes as later (it repeats).
#[test]
fn passes_learn_whether_a_later_pass_reads_the_float_outputs() {
    let pass = |reads: bool| Instance::new(step("p"), Box::new(Perturb(Tolerance::Exact)), reads);
    let mut planned = vec![
        Planned::Single(pass(false)),
        group(vec![pass(false), pass(true)]),
        Planned::Single(pass(true)),
        Planned::Single(pass(false)),
    ];
    mark_float_outputs_later(&mut planned);
    let later: Vec<bool> = planned
        .iter()
        .flat_map(|p| match p {
            Planned::Single(i) => vec![i.float_outputs_later],
            Planned::Group { passes, .. } => passes.iter().map(|i| i.float_outputs_later).collect(),
        })
        .collect();
    assert_eq!(later, [true, true, true, false, false]);
    // The built-ins that compare against the float outputs say so.
    for (name, reads) in [("correct-bias", true), ("skip-sensitive", true), ("tune-ranges", true), ("calibrate", false)]
    {
        assert_eq!(find_pass(name).expect("built-in").float_outputs, reads, "{name}");
    }
}
