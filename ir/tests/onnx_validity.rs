//! What makes a written model invalid ONNX (rejected by `onnx.checker` or
//! refused by ONNX Runtime) and how the IR keeps it from being written:
//! unknown element types are never declared, the verifier names the
//! violations, import drops type-less `value_info` and says so, export
//! derives what the graph knows, and `save` refuses an invalid graph.

use qforge_ir::proto::{ModelProto, OperatorSetIdProto, TypeProto, ValueInfoProto, type_proto};
use qforge_ir::{DataType, Dim, ExportOptions, Model, Shape, TypeInfo, export, import, parse_graph, save};

const CHAIN: &str = "graph g {\n  opset ai.onnx 17\n  input %x: f32[1,4]\n  %t = Relu(%x)  # relu\n  %y = Neg(%t)  # neg\n  output %y: f32[1,4]\n}\n";

fn proto(text: &str) -> ModelProto {
    export(&Model::new(parse_graph(text).unwrap()))
}

fn elem(info: &ValueInfoProto) -> Option<i32> {
    match info.r#type.as_ref()?.value.as_ref()? {
        type_proto::Value::TensorType(t) => t.elem_type,
        _ => None,
    }
}

/// A tensor type with dims but element type 0, as `infer-shapes` used to write.
fn untyped(name: &str, dims: &[i64]) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(0),
                shape: Some(Shape::known(dims).to_proto()),
            })),
            denotation: None,
        }),
        ..Default::default()
    }
}

fn rules(m: &Model) -> Vec<String> {
    qforge_ir::verify::check(&m.graph).iter().map(|v| v.to_string()).collect()
}

#[test]
fn set_type_never_declares_an_unknown_element_type() {
    let mut g = parse_graph(CHAIN).unwrap();
    let t = g.find_value("t").unwrap();
    // Shape known, element type not: nothing is declared.
    let shape_only = TypeInfo { dtype: None, shape: Some(Shape::known(&[1, 4])) };
    assert!(!g.set_type(t, &shape_only));
    assert_eq!(g.type_info(t), None);
    let p = export(&Model::new(g.clone()));
    assert!(p.graph.as_ref().unwrap().value_info.is_empty(), "{:?}", p.graph.unwrap().value_info);
    // Once the element type is known, a later shape-only refinement keeps it.
    assert!(g.set_type(t, &TypeInfo { dtype: Some(DataType::F32), shape: None }));
    assert!(g.set_type(t, &shape_only));
    assert_eq!(g.type_info(t), Some(TypeInfo::new(DataType::F32, &[1, 4])));
    // A graph output keeps its declared element type too.
    let y = g.find_value("y").unwrap();
    let sym = TypeInfo { dtype: None, shape: Some(Shape(vec![Dim::Sym("n".into()), Dim::Known(4)])) };
    assert!(g.set_type(y, &sym));
    assert_eq!(g.dtype(y), Some(DataType::F32));
    qforge_ir::verify(&g).unwrap();
}

#[test]
fn import_drops_type_less_value_info_and_says_so() {
    let mut p = proto(CHAIN);
    p.graph.as_mut().unwrap().value_info.push(untyped("t", &[1, 4]));
    let m = import(p, None).unwrap();
    assert_eq!(m.repairs().len(), 1, "{:?}", m.repairs());
    assert!(m.repairs()[0].contains("value_info \"t\"") && m.repairs()[0].contains("without an element type"));
    qforge_ir::verify(&m.graph).unwrap();
    let out = export(&m);
    assert!(out.graph.unwrap().value_info.is_empty());
    // A valid model has nothing to repair.
    assert!(import(proto(CHAIN), None).unwrap().repairs().is_empty());
}

#[test]
fn verifier_names_a_graph_output_without_element_type() {
    let mut p = proto(CHAIN);
    p.graph.as_mut().unwrap().output[0] = untyped("y", &[1, 4]);
    let m = import(p, None).unwrap();
    let v = rules(&m);
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].starts_with("[types] graph output \"y\" declares a tensor type without an element type"), "{v:?}");
    // save refuses it, and nothing is left behind.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.onnx");
    let e = save(&m, &path, &ExportOptions::default()).unwrap_err().to_string();
    assert!(e.contains("graph output \"y\""), "{e}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn verifier_names_a_domain_without_opset_import() {
    let mut p = proto(CHAIN);
    let n = &mut p.graph.as_mut().unwrap().node[1];
    n.domain = Some("com.microsoft".into());
    n.op_type = Some("Gelu".into());
    let m = import(p, None).unwrap();
    let v = rules(&m);
    assert_eq!(
        v,
        ["[opset] node \"neg\" (Gelu) uses operator domain \"com.microsoft\", which the model does not import"]
    );
    let mut p = export(&m);
    p.opset_import.push(OperatorSetIdProto { domain: Some("com.microsoft".into()), version: Some(1) });
    assert!(rules(&import(p, None).unwrap()).is_empty());
}

#[test]
fn verifier_names_duplicate_node_names() {
    let mut p = proto(CHAIN);
    p.graph.as_mut().unwrap().node[1].name = Some("relu".into());
    let v = rules(&import(p, None).unwrap());
    assert_eq!(v, ["[names] 2 nodes are called \"relu\" (ONNX Runtime refuses duplicate node names)"]);
    // Unnamed nodes are fine.
    let mut p = proto(CHAIN);
    for n in &mut p.graph.as_mut().unwrap().node {
        n.name = None;
    }
    assert!(rules(&import(p, None).unwrap()).is_empty());
}

#[test]
fn export_sets_the_ir_version_the_opset_needs() {
    let mut p = proto(&CHAIN.replace("ai.onnx 17", "ai.onnx 21"));
    p.ir_version = Some(8);
    assert_eq!(export(&import(p.clone(), None).unwrap()).ir_version, Some(10));
    p.ir_version = None;
    assert_eq!(export(&import(p, None).unwrap()).ir_version, Some(10));
    // A higher version than needed is kept.
    let mut p = proto(CHAIN);
    p.ir_version = Some(10);
    assert_eq!(export(&import(p, None).unwrap()).ir_version, Some(10));
}

#[test]
fn export_declares_an_initializer_by_its_data() {
    let text = "graph g {\n  opset ai.onnx 17\n  input %x: f32[4]\n  init @w: f32[4] = [1.0,2.0,3.0,4.0]\n  %y = Add(%x, @w)  # add\n  output %y: f32[4]\n}\n";
    let mut p = proto(text);
    // A stale entry, as left by a pass that converted the data (to-fp16).
    let stale = TypeInfo::new(DataType::F16, &[5]);
    p.graph.as_mut().unwrap().value_info.push(ValueInfoProto {
        name: Some("w".into()),
        r#type: Some(stale.to_proto()),
        ..Default::default()
    });
    let out = export(&import(p, None).unwrap());
    let vi = &out.graph.unwrap().value_info[0];
    assert_eq!(TypeInfo::from_proto(vi.r#type.as_ref().unwrap()), Some(TypeInfo::new(DataType::F32, &[4])));
}

#[test]
fn export_fills_a_graph_output_type_the_graph_knows() {
    let mut p = proto(CHAIN);
    let gp = p.graph.as_mut().unwrap();
    gp.output[0].r#type = None;
    gp.value_info.push(ValueInfoProto {
        name: Some("y".into()),
        r#type: Some(TypeInfo::new(DataType::F32, &[1, 4]).to_proto()),
        ..Default::default()
    });
    let out = export(&import(p, None).unwrap());
    let o = &out.graph.unwrap().output[0];
    assert_eq!(elem(o), Some(1));
    assert_eq!(TypeInfo::from_proto(o.r#type.as_ref().unwrap()), Some(TypeInfo::new(DataType::F32, &[1, 4])));
    // An output whose element type nothing knows stays undeclared (never 0).
    let mut p = proto("graph g {\n  opset ai.onnx 17\n  input %x: f32[1,4]\n  %y = Relu(%x)  # relu\n  output %y\n}\n");
    p.graph.as_mut().unwrap().output[0].r#type = None;
    let out = export(&import(p, None).unwrap());
    assert_eq!(out.graph.unwrap().output[0].r#type, None);
}
