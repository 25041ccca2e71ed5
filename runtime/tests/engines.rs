//! The ONNX Runtime engine against tract on the same graphs: float ops,
//! an intermediate tensor fetched as an extra output, and a Q/DQ graph.
//! Needs the `ort` feature and the library (ORT_DYLIB_PATH or the
//! `onnxruntime` Python wheel); without them it says SKIP, and fails when
//! the `CI` environment variable is set.
#![cfg(feature = "ort")]

use qforge_ir::{Model, parse_graph};
use qforge_runtime::{Engine, HostTensor, SessionOptions, random_inputs, session};

const GRAPH: &str = r#"
graph g {
  opset ai.onnx 13
  input %x: f32[1,3,8,8]
  init @w: f32[4,3,3,3] = rand(1)
  init @b: f32[4] = rand(2)
  init @s: f32[] = [0.02]
  init @z: i8[] = [0]
  %c = Conv(%x, @w, @b) {kernel_shape=[3,3], pads=[1,1,1,1]}  # conv
  %r = Relu(%c)  # relu
  %q = QuantizeLinear(%r, @s, @z)  # q
  %d = DequantizeLinear(%q, @s, @z)  # dq
  %y = Add(%d, %c)  # add
  output %y
}
"#;

/// False after a loud SKIP line when ONNX Runtime is missing; a failure under `CI`.
fn have_ort(test: &str) -> bool {
    let Err(e) = qforge_runtime::ort_library_path() else { return true };
    if std::env::var_os("CI").is_some() {
        panic!("{test}: CI is set, so this must not be skipped: {e}");
    }
    eprintln!("\n*** SKIP: {test}: {e} ***\n");
    false
}

fn run(engine: Engine, outputs: &[&str], x: &HostTensor) -> Vec<HostTensor> {
    let g = parse_graph(GRAPH).unwrap();
    let opts =
        SessionOptions { outputs: outputs.iter().map(|s| s.to_string()).collect(), engine, ..Default::default() };
    let s = session(&Model::new(g), &opts).unwrap_or_else(|e| panic!("{engine}: {e}"));
    assert_eq!(s.output_names(), outputs);
    s.run(std::slice::from_ref(x)).unwrap()
}

#[test]
fn ort_matches_tract_on_float_and_qdq_graphs() {
    if !have_ort("ort_matches_tract_on_float_and_qdq_graphs") {
        return;
    }
    let x = random_inputs(&[("x".into(), vec![1, 3, 8, 8], qforge_ir::DataType::F32)], 7).remove(0);
    let names = ["y", "c", "q"];
    let a = run(Engine::Tract, &names, &x);
    let b = run(Engine::Ort, &names, &x);
    for ((name, t), o) in names.iter().zip(&a).zip(&b) {
        assert_eq!(t.shape, o.shape, "{name}");
        assert_eq!(t.dtype(), o.dtype(), "{name}");
        let (t, o) = (t.to_f64_vec(), o.to_f64_vec());
        let scale = t.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-12);
        let worst = t.iter().zip(&o).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max) / scale;
        eprintln!("{name}: worst difference {worst:.2e} of its max");
        // Int8 codes may differ by one step where a value sits on a rounding edge.
        let tol = if *name == "q" { 1.0 / 127.0 } else { 1e-5 };
        assert!(worst <= tol, "{name}: ort and tract differ by {worst:e} relative");
    }
}

#[test]
fn a_tensor_that_is_not_in_the_graph_is_a_clear_error() {
    if !have_ort("a_tensor_that_is_not_in_the_graph_is_a_clear_error") {
        return;
    }
    let g = parse_graph(GRAPH).unwrap();
    let opts = SessionOptions { outputs: vec!["nope".into()], engine: Engine::Ort, ..Default::default() };
    let e = session(&Model::new(g), &opts).err().expect("must fail").to_string();
    assert!(e.contains("\"nope\""), "{e}");
}

/// What an observer got: (tag, index, values), in arrival order.
#[derive(Default)]
struct Seen(std::sync::Mutex<Vec<(u64, usize, Vec<f32>)>>);

impl qforge_runtime::Observer for Seen {
    fn observe(&self, tag: u64, index: usize, t: &qforge_runtime::TensorView<'_>) {
        self.0.lock().unwrap().push((tag, index, t.as_f32().unwrap().to_vec()));
    }
}

/// Observed tensors reach the observer, once per run, with the run's tag and
/// the values a fetch of the same tensors returns; the fetched outputs are
/// unchanged; a tensor that is not float32 cannot be observed (ONNX Runtime).

#[test]
fn observed_tensors_are_the_fetched_ones_on_both_engines() {
    if !have_ort("observed_tensors_are_the_fetched_ones_on_both_engines") {
        return;
    }
    let x = random_inputs(&[("x".into(), vec![1, 3, 8, 8], qforge_ir::DataType::F32)], 9).remove(0);
    let watched = ["r", "c", "d"];
    for engine in [Engine::Tract, Engine::Ort] {
        let want = run(engine, &watched, &x);
        let seen = std::sync::Arc::new(Seen::default());
        let observe = qforge_runtime::Observe {
            tensors: watched.iter().map(|s| s.to_string()).collect(),
            observer: seen.clone(),
        };
        let opts = SessionOptions { outputs: vec!["y".into()], observe: Some(observe), engine, ..Default::default() };
        let s = session(&Model::new(parse_graph(GRAPH).unwrap()), &opts).unwrap_or_else(|e| panic!("{engine}: {e}"));
        assert_eq!(s.output_names(), ["y"]);
        let y = run(engine, &["y"], &x).remove(0);
        for tag in [5u64, 6] {
            let mut got = None;
            s.run_tagged(std::slice::from_ref(&x), tag, &mut |outs| got = Some(outs[0].to_host())).unwrap();
            assert_eq!(got.as_ref(), Some(&y), "{engine}: the fetched output");
        }
        let mut seen = std::mem::take(&mut *seen.0.lock().unwrap());
        seen.sort_by_key(|(tag, index, _)| (*tag, *index));
        let expected: Vec<(u64, usize)> =
            [5u64, 6].iter().flat_map(|&t| (0..watched.len()).map(move |i| (t, i))).collect();
        assert_eq!(seen.iter().map(|(t, i, _)| (*t, *i)).collect::<Vec<_>>(), expected, "{engine}");
        for (_, index, values) in &seen {
            assert_eq!(values.as_slice(), want[*index].as_f32().unwrap(), "{engine}: {}", watched[*index]);
        }
    }
    let observe = qforge_runtime::Observe { tensors: vec!["q".into()], observer: std::sync::Arc::new(Seen::default()) };
    let opts = SessionOptions { observe: Some(observe), engine: Engine::Ort, ..Default::default() };
    let e = session(&Model::new(parse_graph(GRAPH).unwrap()), &opts).err().expect("an int8 tensor").to_string();
    // The graph does not declare q's type, so ONNX Runtime refuses it.
    assert!(e.contains("(q)") && e.contains("Observe"), "{e}");
}

/// Where each observed tensor's data was, by observe index.
#[derive(Default)]
struct Addresses(std::sync::Mutex<Vec<(usize, usize)>>);

impl qforge_runtime::Observer for Addresses {
    fn observe(&self, _tag: u64, index: usize, t: &qforge_runtime::TensorView<'_>) {
        self.0.lock().unwrap().push((index, t.as_f32().unwrap().as_ptr() as usize));
    }
}

/// ONNX Runtime hands each observed tensor over right after computing it,
/// so its buffer is free again for the next layer; observed late (as when
/// the observe nodes were appended in production order), every tensor of a
/// chain stays alive until the end of the run, each in its own buffer, and
/// they reach the observer last first.
#[test]
fn ort_observes_each_tensor_as_soon_as_it_is_made() {
    if !have_ort("ort_observes_each_tensor_as_soon_as_it_is_made") {
        return;
    }
    const LAYERS: usize = 16;
    // 64 KiB per tensor: big enough to be allocated one by one.
    let mut text = String::from("graph chain {\n  opset ai.onnx 13\n  input %t0: f32[1,16,32,32]\n");
    for k in 1..=LAYERS {
        text += &format!("  %t{k} = Sigmoid(%t{})\n", k - 1);
    }
    text += &format!("  output %t{LAYERS}\n}}\n");
    let g = parse_graph(&text).unwrap();
    let seen = std::sync::Arc::new(Addresses::default());
    let observe =
        qforge_runtime::Observe { tensors: (1..LAYERS).map(|k| format!("t{k}")).collect(), observer: seen.clone() };
    let opts = SessionOptions { observe: Some(observe), engine: Engine::Ort, threads: 1, ..Default::default() };
    let s = session(&Model::new(g), &opts).unwrap();
    let x = random_inputs(&[("t0".into(), vec![1, 16, 32, 32], qforge_ir::DataType::F32)], 3).remove(0);
    for _ in 0..2 {
        s.run(std::slice::from_ref(&x)).unwrap();
    }
    let seen = std::mem::take(&mut *seen.0.lock().unwrap());
    let buffers: std::collections::BTreeSet<usize> = seen.iter().map(|&(_, p)| p).collect();
    assert!(
        buffers.len() <= LAYERS / 2,
        "{} buffers for {} observed tensors: they stayed alive after being observed",
        buffers.len(),
        LAYERS - 1
    );
    let order: Vec<usize> = seen.iter().map(|&(i, _)| i).collect();
    let once: Vec<usize> = (0..LAYERS - 1).collect();
    assert_eq!(order, [once.clone(), once].concat(), "observed in production order");
}
