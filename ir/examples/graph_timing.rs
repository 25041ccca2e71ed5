//! Times the IR on a real model: import, export, a mutation workload and a
//! read workload. Used to check that a change to the graph store (such as
//! the id ↔ petgraph index map) keeps these fast:
//!
//! ```text
//! cargo run --release -p qforge-ir --example graph_timing -- model.onnx [repeats]
//! ```
//!
//! Each phase runs `repeats` times (default 5) on a fresh import; the
//! minimum and median wall times are printed. The mutation workload touches
//! every node: an Identity is inserted after each produced value and its
//! readers moved to it, every original node is replaced by a copy of itself
//! (`replace_node`), then the Identities are removed again; the graph must
//! still verify. The workloads are not inlined, so an instruction profile
//! (`valgrind --tool=callgrind`) attributes their cost on a busy machine.

use std::time::{Duration, Instant};

use prost::Message;
use qforge_ir::proto::ModelProto;
use qforge_ir::{Graph, InsertAt, NewNode, UseSlot, ValueId};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: graph_timing MODEL.onnx [REPEATS]")?;
    let repeats: usize = args.next().map(|r| r.parse()).transpose()?.unwrap_or(5);
    let bytes = std::fs::read(&path)?;
    let dir = std::path::Path::new(&path).parent().map(std::path::Path::to_path_buf);

    let mut t_decode = Vec::new();
    let mut t_import = Vec::new();
    let mut t_export = Vec::new();
    let mut t_encode = Vec::new();
    let mut t_mutate = Vec::new();
    let mut t_read = Vec::new();
    let mut t_verify = Vec::new();
    let mut t_clone = Vec::new();
    let mut nodes = 0;
    for _ in 0..repeats {
        let t = Instant::now();
        let proto = ModelProto::decode(&bytes[..])?;
        t_decode.push(t.elapsed());
        let t = Instant::now();
        let mut model = qforge_ir::import(proto, dir.as_deref())?;
        t_import.push(t.elapsed());
        nodes = model.graph.node_count();

        let t = Instant::now();
        let out = qforge_ir::export(&model);
        t_export.push(t.elapsed());
        let t = Instant::now();
        let encoded = out.encode_to_vec();
        t_encode.push(t.elapsed());
        assert!(!encoded.is_empty());

        let t = Instant::now();
        let copy = model.graph.clone();
        t_clone.push(t.elapsed());
        drop(copy);

        let t = Instant::now();
        let reads = read_workload(&model.graph);
        t_read.push(t.elapsed());
        assert!(reads > 0);

        let t = Instant::now();
        mutate_workload(&mut model.graph)?;
        t_mutate.push(t.elapsed());
        assert_eq!(model.graph.node_count(), nodes, "the workload restores the node count");

        let t = Instant::now();
        qforge_ir::verify(&model.graph)?;
        t_verify.push(t.elapsed());
    }
    println!("{path}: {nodes} nodes, {} bytes, {repeats} repeats (min / median)", bytes.len());
    for (name, times) in [
        ("decode (prost)", t_decode),
        ("import (from_proto)", t_import),
        ("export (to_proto)", t_export),
        ("encode (prost)", t_encode),
        ("clone graph", t_clone),
        ("read workload", t_read),
        ("mutate workload", t_mutate),
        ("verify", t_verify),
    ] {
        let (min, med) = stats(times);
        println!("  {name:<22} {:>10.3} ms {:>10.3} ms", ms(min), ms(med));
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn stats(mut t: Vec<Duration>) -> (Duration, Duration) {
    t.sort();
    (t[0], t[t.len() / 2])
}

/// 100 walks over every node, its inputs' producers and its outputs' users.
#[inline(never)]
fn read_workload(g: &Graph) -> usize {
    let mut acc = 0;
    for _ in 0..100 {
        for n in g.nodes() {
            let node = g.node(n);
            acc += node.op_type().len();
            for v in node.inputs().iter().flatten() {
                if let Some(p) = g.producer_node(*v) {
                    acc += g.node(p).outputs().len();
                }
            }
            for v in node.outputs().iter().flatten() {
                acc += g.uses(*v).len();
            }
        }
    }
    acc
}

/// Identity after every produced value with readers, `replace_node` on every
/// original node, then the Identities removed again.
#[inline(never)]
fn mutate_workload(g: &mut Graph) -> Result<(), qforge_ir::IrError> {
    let originals = g.node_ids();
    let mut ids: Vec<(ValueId, ValueId, qforge_ir::NodeId)> = Vec::new();
    for &n in &originals {
        let outs: Vec<ValueId> = g.node(n).outputs().iter().flatten().copied().collect();
        for v in outs {
            let uses = g.uses(v).to_vec();
            if uses.is_empty() {
                continue;
            }
            let hint = format!("{}_id", g.value_name(v));
            let id = g.insert_node(InsertAt::After(n), NewNode::new("Identity", &hint, &[v], &hint))?;
            let out =
                g.node(id).output(0).ok_or_else(|| qforge_ir::IrError::Mutation("Identity without output".into()))?;
            for u in uses {
                if let UseSlot::Input(i) = u.slot {
                    g.set_input(u.node, i, Some(out));
                }
            }
            ids.push((v, out, id));
        }
    }
    for &n in &originals {
        let node = g.node(n);
        let new = NewNode {
            op_type: node.op_type().to_string(),
            domain: node.domain().to_string(),
            name: node.name().to_string(),
            inputs: node.inputs().to_vec(),
            outputs: Vec::new(),
            attrs: node.attrs().to_vec(),
        };
        g.replace_node(n, new)?;
    }
    for (orig, out, id) in ids {
        g.replace_uses(out, orig);
        g.remove_node(id);
        g.remove_value(out)?;
    }
    Ok(())
}
