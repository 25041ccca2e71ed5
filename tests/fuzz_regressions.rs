//! The fuzz targets (`fuzz/`, `cargo xtask fuzz`) in the ordinary test
//! suite: each runs a few hundred cases so it cannot rot, and every finding
//! of a fuzz run that was fixed is replayed here from its input.

mod common;

use std::time::Duration;

use qforge_fuzz::{KNOWN_OPEN, Kind, Options, Outcome, TARGETS};

/// Runs `cases` cases of a target and fails on any finding.
fn smoke(name: &str, cases: u64) {
    let t = qforge_fuzz::target(&common::root(), name).unwrap();
    let opts = Options {
        seed: 0x5eed,
        duration: Duration::from_secs(120),
        max_cases: Some(cases),
        threads: 2,
        budget: Duration::from_secs(60),
        ..Default::default()
    };
    let stats = qforge_fuzz::run(t, &opts);
    assert_eq!(stats.executions, cases, "{name}: not every case ran");
    let unknown: Vec<_> = stats
        .findings
        .iter()
        .filter(|f| f.kind != Kind::Oracle || !KNOWN_OPEN.iter().any(|(needle, _)| f.message.contains(needle)))
        .collect();
    assert!(unknown.is_empty(), "{name}: {unknown:#?}");
    // The inputs are not all refused (a target whose generator only makes
    // garbage tests nothing past the first check).
    assert!(stats.accepted > 0, "{name}: no input was accepted");
}

#[test]
fn every_target_runs_a_few_hundred_cases_without_a_finding() {
    for name in TARGETS {
        let cases = if name == "fold" { 120 } else { 300 };
        smoke(name, cases);
    }
}

/// Replays one input through a target: it must not be a finding.
fn replay(target: &str, input: &str) -> Outcome {
    let t = qforge_fuzz::target(&common::root(), target).unwrap();
    qforge_fuzz::execute(t.as_ref(), input.as_bytes()).unwrap_or_else(|(kind, msg)| panic!("{kind}: {msg}"))
}

#[test]
fn a_resize_scale_of_1e9_in_a_generated_graph_is_refused_not_allocated() {
    // The fold target's bound (16 MiB) refuses it before tract runs; the
    // passes still run and leave a valid graph.
    let text = "graph g {
  opset ai.onnx 13
  input %x: f32[1,2,3,3]
  init @s: f32[4] = [1.0,1.0,1000000000.0,1.0]
  %y = Resize(%x, _, @s) {mode=\"nearest\"}  # up
  output %y
}
";
    assert_eq!(replay("fold", text), Outcome::Rejected);
}

#[test]
fn a_typed_graph_output_parses_back_without_a_value_info_entry() {
    // Found by the `parser` target: the printer writes an output's type on
    // its node line and on its `output` line; the parser stored the first
    // as a value_info entry the printed graph did not have, so the
    // re-parsed graph exported to other bytes.
    let text = "graph g {
  opset ai.onnx 13
  input %x: f32[1,4]
  %a = Relu(%x) : f32[1,4]  # live
  output %a: f32[1,4]
}
";
    let g = qforge_ir::parse_graph(text).unwrap();
    let proto = qforge_ir::export(&qforge_ir::Model::new(g.clone()));
    let graph = proto.graph.unwrap();
    assert!(graph.value_info.is_empty(), "{:?}", graph.value_info);
    assert!(graph.output[0].r#type.is_some(), "the output lost its type");
    assert_eq!(replay("parser", text), Outcome::Accepted);
}

/// A saved finding's input, replayed through its target.
fn replay_file(target: &str, file: &str) -> Outcome {
    let t = qforge_fuzz::target(&common::root(), target).unwrap();
    let input = std::fs::read(common::root().join("tests/fixtures/fuzz").join(file)).unwrap();
    qforge_fuzz::execute(t.as_ref(), &input).unwrap_or_else(|(kind, msg)| panic!("{file}: {kind}: {msg}"))
}

/// [`replay_file`] on a thread: an input that hangs again fails the test
/// after a minute instead of blocking the suite.
fn replay_file_within_a_minute(target: &'static str, file: &'static str) -> Outcome {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(replay_file(target, file));
    });
    rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("the {target} target hangs on {file} again"))
}

#[test]
fn tensor_dims_whose_product_overflows_are_refused() {
    // Found by `import` (seed 20261130, case 232377) and `parser` (case
    // 3584): the element count of a tensor was a plain product of its dims,
    // which overflows (a panic) or, in the parser's rand()/fill(), asks for
    // a 900 GB allocation (an abort).
    replay_file("import", "import-dims-overflow.onnx");
    // Then (case 329148) the saturated count overflowed again times the
    // element size in Tensor::raw_bytes.
    replay_file("import", "import-raw-bytes-overflow.onnx");
    // And (case 158467) a tensor just under the first text bound took over
    // 10 s to print and parse again: the bound is now 2^20 elements.
    let start = std::time::Instant::now();
    replay_file("parser", "parser-slow-big-tensor.ir");
    assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
    replay_file("parser", "parser-dims-overflow.ir");
    let e =
        qforge_ir::parse_graph("graph g {\n  init @w: f32[1099511627776,1099511627776] = fill(0.5)\n}\n").unwrap_err();
    assert!(e.to_string().contains("too big for the text form"), "{e}");
    let e = qforge_ir::parse_graph("graph g {\n  init @w: f32[100000,100000] = rand(1)\n}\n").unwrap_err();
    assert!(e.to_string().contains("too big for the text form"), "{e}");
}

#[test]
fn a_resize_on_a_2_to_the_40_pixel_axis_is_not_checked_pixel_by_pixel() {
    // Found by `fold` (seed 7, case 132): a Conv with a 2^40 pad gives a
    // 5·10^11-pixel axis, and resize-to-conv-transpose evaluated the nearest
    // mapping at every output position (a hang). Axes above 65536 pixels
    // are now left alone with a reason. Replayed on a thread: a regression
    // fails after a minute instead of hanging the suite.
    let outcome = replay_file_within_a_minute("fold", "fold-resize-huge-dims.ir");
    assert_ne!(outcome, Outcome::Accepted, "an invalid model got through");
}

#[test]
fn an_output_declared_without_element_type_is_completed_by_export() {
    // Found by `import` (seed 20261130, case 3240184): graph output "x" is
    // the graph input "x" declared again with element type 0. The verifier
    // refuses it; export completes the declaration from the input's type,
    // so the re-imported model verifies: a repair, not a lost verdict.
    assert_eq!(replay_file("import", "import-output-is-input-untyped.onnx"), Outcome::Rejected);
}

#[test]
fn a_conv_whose_kernel_is_longer_than_its_padded_input_is_refused_before_tract() {
    // Found by `fold` (seed 20261130, case 378): a 3-tall kernel over a
    // 1-tall input padded to 2. Its output would be empty; tract read out of
    // bounds building it (a non-unwinding panic in a debug build: the whole
    // fuzz process aborted). The size check every engine session goes
    // through now refuses it, naming the node.
    assert_eq!(replay_file("fold", "fold-conv-kernel-longer-than-padded-input.ir"), Outcome::Rejected);
    let g = qforge_ir::parse_graph(
        &std::fs::read_to_string(
            common::root().join("tests/fixtures/fuzz/fold-conv-kernel-longer-than-padded-input.ir"),
        )
        .unwrap(),
    )
    .unwrap();
    let e = qforge_passes::ops::check_sizes(&g, &Default::default(), u64::MAX).unwrap_err().to_string();
    assert!(e.contains("conv12") && e.contains("shorter than the dilated kernel (3)"), "{e}");
    // Then (case 732): a nearest Resize by 0.5 of a 1-pixel axis makes it
    // empty, and the Conv reading it aborted tract the same way.
    assert_eq!(replay_file("fold", "fold-conv-on-empty-resize-output.ir"), Outcome::Rejected);
    // And (case 22798): a tf_crop_and_resize Resize without roi had no
    // shape rule, so the check could not see the Conv after it; without roi
    // the output dims are those of any mode (the roi is the whole axis).
    assert_eq!(replay_file("fold", "fold-conv-after-crop-resize-without-roi.ir"), Outcome::Rejected);
}

#[test]
fn a_resize_to_1e9_pixels_next_to_an_empty_axis_is_refused_before_tract() {
    // Found by `fold` (seed 20261130, case 16312): a nearest Resize scales a
    // 1-pixel axis by 1e9 and the next by 0.5, so its output is empty (0
    // bytes, under every bound) while tract walked the 1e9-long axis: the
    // case hung and grew without end, and the fuzz run was OOM-killed at
    // 24 GB. The size check now counts an empty axis as 1 when it bounds
    // the others. Replayed on a thread: a regression fails after a minute.
    assert_eq!(replay_file_within_a_minute("fold", "fold-resize-1e9-next-to-an-empty-axis.ir"), Outcome::Rejected);
    let text =
        std::fs::read_to_string(common::root().join("tests/fixtures/fuzz/fold-resize-1e9-next-to-an-empty-axis.ir"))
            .unwrap();
    let g = qforge_ir::parse_graph(&text).unwrap();
    let e = qforge_passes::ops::check_sizes(&g, &Default::default(), 1 << 30).unwrap_err().to_string();
    assert!(e.contains("resize28"), "{e}");
}

#[test]
fn a_conv_padded_beyond_the_tensor_bound_is_refused_before_tract() {
    // Found by `fold` (seed 20261130, case 58763): a Conv padded by 2^40
    // makes an axis past what shape rules track (unknown above 2^40), so
    // the size check saw nothing, and tract planned a 4 TB index table for
    // the Resize after it (an allocation failure aborts the process). A
    // padded input axis longer than the tensor bound is now refused.
    assert_eq!(replay_file("fold", "fold-conv-padded-by-2-to-the-40-then-resize.ir"), Outcome::Rejected);
    let text = std::fs::read_to_string(
        common::root().join("tests/fixtures/fuzz/fold-conv-padded-by-2-to-the-40-then-resize.ir"),
    )
    .unwrap();
    let g = qforge_ir::parse_graph(&text).unwrap();
    let e = qforge_passes::ops::check_sizes(&g, &Default::default(), 1 << 30).unwrap_err().to_string();
    assert!(e.contains("conv4") && e.contains("padded would be [1, 2, 1099511627780, 1]"), "{e}");
}
