//! Lossless import → export: every ModelProto field survives, and ONNX
//! Runtime computes bit-identical outputs from the re-exported model.

mod common;

use prost::Message;
use qforge_ir::proto::ModelProto;
use qforge_ir::{ExportOptions, export, import, load, save};

fn decode(path: &std::path::Path) -> ModelProto {
    ModelProto::decode(&std::fs::read(path).unwrap()[..]).unwrap()
}

/// Every field of every message is set in `all_fields.pb` (generated from
/// the `onnx` package's own schema by `tests/fixtures/gen_fixtures.py`).
/// Field order may differ between encoders, but a dropped or mistyped field
/// changes the encoded length.
#[test]
fn schema_keeps_every_field() {
    let bytes = std::fs::read(common::root().join("tests/fixtures/all_fields.pb")).unwrap();
    let m = ModelProto::decode(&bytes[..]).unwrap();
    assert_eq!(m.encoded_len(), bytes.len(), "qforge's onnx.proto drops or mistypes a field");
    let again = ModelProto::decode(&m.encode_to_vec()[..]).unwrap();
    assert_eq!(m, again);
}

fn assert_lossless(path: &std::path::Path) {
    let original = decode(path);
    let model = load(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let exported = export(&model);
    assert!(original == exported, "{}: export differs from the input", path.display());
    // Importing from the proto directly gives the same.
    let again = import(original.clone(), path.parent()).unwrap();
    assert!(export(&again) == original);
}

#[test]
fn rich_model_round_trips_exactly() {
    let path = common::root().join("tests/fixtures/rich.onnx");
    assert_lossless(&path);
    let m = load(&path).unwrap();
    // The If branches capture `t`, `w` and `b` from the outer graph: those are uses.
    let t = m.graph.find_value("t").unwrap();
    assert!(m.graph.has_implicit_uses(t));
    qforge_ir::verify(&m.graph).unwrap();
}

#[test]
fn real_models_round_trip_exactly_and_run_identically() {
    let names =
        ["yolov5n-untrained-unfused-bn.onnx", "nudenet-320n.onnx", "picodet-layout-cdla.onnx", "ppocrv4-det.onnx"];
    let dir = common::tempdir();
    let ort = common::python_ort();
    for name in names {
        let Some(path) = common::model(name) else { continue };
        assert_lossless(&path);
        let out = dir.path().join(name);
        save(&load(&path).unwrap(), &out, &ExportOptions::default()).unwrap();
        assert!(decode(&path) == decode(&out), "{name}: saved file differs");
        if ort {
            let shape: &[&str] = match name {
                "nudenet-320n.onnx" => &["--input-shape", "1,3,320,320"],
                "ppocrv4-det.onnx" => &["--input-shape", "1,3,320,320"],
                _ => &[],
            };
            let r = common::ort_compare(&path, &out, shape);
            assert_eq!(r["identical"], true, "{name}: ONNX Runtime outputs differ after a round trip: {r}");
        }
    }
}

#[test]
fn external_data_is_written_and_read_back() {
    let dir = common::tempdir();
    let src = common::root().join("tests/fixtures/rich.onnx");
    let m = load(&src).unwrap();
    let out = dir.path().join("ext.onnx");
    save(&m, &out, &ExportOptions { external_threshold: Some(8) }).unwrap();
    assert!(dir.path().join("ext.onnx.data").exists());
    let on_disk = decode(&out);
    let b = on_disk.graph.as_ref().unwrap().initializer.iter().find(|t| t.name() == "b").unwrap();
    assert_eq!(b.data_location, Some(1), "b should be stored externally");
    // Loading resolves the data; saving again with default options keeps it external.
    let back = load(&out).unwrap();
    let orig_b = m.graph.initializer(m.graph.find_value("b").unwrap()).unwrap().to_vec::<f32>().unwrap();
    let new_b = back.graph.initializer(back.graph.find_value("b").unwrap()).unwrap().to_vec::<f32>().unwrap();
    assert_eq!(orig_b, new_b);
    let out2 = dir.path().join("ext2.onnx");
    save(&back, &out2, &ExportOptions::default()).unwrap();
    assert!(dir.path().join("ext2.onnx.data").exists());
    // Apart from where the bytes live, the models are the same.
    let inline = |p: &std::path::Path| {
        let m = load(p).unwrap();
        let mut e = export(&m);
        for t in &mut e.graph.as_mut().unwrap().initializer {
            t.external_data.clear();
            t.data_location = None;
        }
        e
    };
    assert!(inline(&out) == inline(&out2));
    let inline_src = export(&m);
    let resolved = export(&back);
    assert_eq!(inline_src.graph.as_ref().unwrap().node, resolved.graph.as_ref().unwrap().node);
}

#[test]
fn external_data_outside_the_model_folder_is_refused() {
    let dir = common::tempdir();
    let mut m = decode(&common::root().join("tests/fixtures/rich.onnx"));
    let t = m.graph.as_mut().unwrap().initializer.iter_mut().find(|t| t.name() == "b").unwrap();
    t.raw_data = None;
    t.float_data.clear();
    t.data_location = Some(1);
    t.external_data = vec![qforge_ir::proto::StringStringEntryProto {
        key: Some("location".into()),
        value: Some("../../etc/passwd".into()),
    }];
    let path = dir.path().join("evil.onnx");
    std::fs::write(&path, m.encode_to_vec()).unwrap();
    let e = load(&path).unwrap_err().to_string();
    assert!(e.contains("../../etc/passwd") && e.contains("`..` is refused"), "{e}");
}
