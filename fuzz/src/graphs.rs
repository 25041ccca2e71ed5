//! Small random graphs in the text IR: chains and branches of the ops the
//! fold pipeline rewrites or reads (Conv, BatchNormalization, Relu, Add,
//! Concat, Resize, MaxPool, Reshape, Slice, Gather, Shape), with random
//! attributes, some of them invalid on purpose (one node in eight gets a
//! zero stride, a huge pad, a wrong channel count, a Resize scale of 1e9,
//! …).
//!
//! The generator tracks the shapes a valid graph would have, to pick
//! parameters that fit; after an invalid choice the tracked shape may be
//! wrong, which only makes later nodes stranger.

use std::fmt::Write as _;

use crate::rng::Rng;

/// A value the generator can read.
#[derive(Debug, Clone)]
struct V {
    /// `%name` or `@name`.
    name: String,
    /// The dims it should have.
    dims: Vec<i64>,
}

struct Gen<'r> {
    rng: &'r mut Rng,
    inits: Vec<String>,
    nodes: Vec<String>,
    values: Vec<V>,
    n: usize,
}

fn list(xs: &[i64]) -> String {
    format!("[{}]", xs.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(","))
}

fn dims_str(xs: &[i64]) -> String {
    xs.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",")
}

impl Gen<'_> {
    fn fresh(&mut self, stem: &str) -> String {
        self.n += 1;
        format!("{stem}{}", self.n)
    }

    /// One node in eight gets something invalid.
    fn bad(&mut self) -> bool {
        self.rng.one_in(8)
    }

    fn init_rand(&mut self, stem: &str, dims: &[i64]) -> String {
        let name = self.fresh(stem);
        let seed = self.rng.below(1000);
        self.inits.push(format!("  init @{name}: f32[{}] = rand({seed})\n", dims_str(dims)));
        format!("@{name}")
    }

    fn init_f32(&mut self, stem: &str, values: &[f64]) -> String {
        let name = self.fresh(stem);
        let vals: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
        self.inits.push(format!("  init @{name}: f32[{}] = [{}]\n", values.len(), vals.join(",")));
        format!("@{name}")
    }

    fn init_i64(&mut self, stem: &str, values: &[i64], scalar: bool) -> String {
        let name = self.fresh(stem);
        let dims = if scalar { String::new() } else { values.len().to_string() };
        self.inits.push(format!("  init @{name}: i64[{dims}] = {}\n", list(values)));
        format!("@{name}")
    }

    /// Adds a node line; returns its output value.
    fn node(&mut self, op: &str, inputs: &[&str], attrs: &[String], dims: Vec<i64>) -> V {
        let out = self.fresh("v");
        let name = self.fresh(&op.to_lowercase());
        let attrs = if attrs.is_empty() { String::new() } else { format!(" {{{}}}", attrs.join(", ")) };
        self.nodes.push(format!("  %{out} = {op}({}){attrs}  # {name}", inputs.join(", ")));
        let v = V { name: format!("%{out}"), dims };
        self.values.push(v.clone());
        v
    }

    /// A value of rank 4, the latest most of the time.
    fn pick4(&mut self) -> Option<V> {
        let fours: Vec<V> = self.values.iter().filter(|v| v.dims.len() == 4).cloned().collect();
        if fours.is_empty() {
            return None;
        }
        Some(if self.rng.one_in(4) { self.rng.pick(&fours).clone() } else { fours[fours.len() - 1].clone() })
    }

    fn conv(&mut self, x: &V) -> V {
        let [n, c, h, w] = dims4(x);
        let group = if c > 1 && self.rng.one_in(3) { c } else { 1 };
        let o = group * (1 + self.rng.range(0, 2));
        let (kh, kw) = (self.rng.range(1, 3), self.rng.range(1, 3));
        let s = [self.rng.range(1, 2), self.rng.range(1, 2)];
        let d = if self.rng.one_in(4) { [2, 2] } else { [1, 1] };
        let mut pads = [
            self.rng.range(0, kh - 1),
            self.rng.range(0, kw - 1),
            self.rng.range(0, kh - 1),
            self.rng.range(0, kw - 1),
        ];
        let mut kernel = [kh, kw];
        let mut strides = s;
        let mut dil = d;
        let mut g = group;
        let mut wc = c / group.max(1);
        if self.bad() {
            match self.rng.below(7) {
                0 => strides[self.rng.below(2)] = 0,
                1 => pads[self.rng.below(4)] = -1,
                2 => kernel[0] += 1,
                3 => g = c + 1,
                4 => dil[1] = 0,
                5 => wc += 1,
                _ => pads[2] = 1 << 40,
            }
        }
        let wt = self.init_rand("w", &[o, wc, kh, kw]);
        let mut inputs = vec![x.name.clone(), wt];
        if self.rng.one_in(2) {
            inputs.push(self.init_rand("b", &[o]));
        }
        let mut attrs = Vec::new();
        if !self.rng.one_in(4) {
            attrs.push(format!("kernel_shape={}", list(&kernel)));
        }
        if strides != [1, 1] || self.rng.one_in(3) {
            attrs.push(format!("strides={}", list(&strides)));
        }
        if pads != [0; 4] || self.rng.one_in(3) {
            attrs.push(format!("pads={}", list(&pads)));
        }
        if dil != [1, 1] {
            attrs.push(format!("dilations={}", list(&dil)));
        }
        if g != 1 {
            attrs.push(format!("group={g}"));
        }
        let out = |len: i64, k: i64, s: i64, d: i64, p: i64| {
            if s <= 0 { 1 } else { (len + p - ((k - 1) * d + 1)).div_euclid(s) + 1 }
        };
        let dims = vec![
            n,
            o,
            out(h, kh, strides[0], dil[0], pads[0].saturating_add(pads[2])),
            out(w, kw, strides[1], dil[1], pads[1].saturating_add(pads[3])),
        ];
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        self.node("Conv", &inputs, &attrs, dims)
    }

    fn batchnorm(&mut self, x: &V) -> V {
        let c = dims4(x)[1];
        let k = if self.bad() { c + 1 } else { c };
        let gamma = self.init_rand("gamma", &[k]);
        let beta = self.init_rand("beta", &[k]);
        let mean = self.init_rand("mean", &[k]);
        let mut var: Vec<f64> = (0..k).map(|_| 0.05 + self.rng.unit() * 2.0).collect();
        if self.bad() && !var.is_empty() {
            var[0] = -1.0;
        }
        let var = self.init_f32("var", &var);
        let mut attrs = Vec::new();
        match self.rng.below(4) {
            0 => attrs.push("epsilon=0.001".to_string()),
            1 if self.bad() => attrs.push("epsilon=-1.0".to_string()),
            _ => {}
        }
        let x_name = x.name.clone();
        self.node("BatchNormalization", &[&x_name, &gamma, &beta, &mean, &var], &attrs, x.dims.clone())
    }

    fn add(&mut self, x: &V) -> V {
        let other = if x.dims.len() == 4 && self.rng.one_in(2) {
            let c = dims4(x)[1];
            let c = if self.bad() { c + 1 } else { c };
            self.init_rand("a", &[c, 1, 1])
        } else if let Some(same) = self.values.iter().rfind(|v| v.dims == x.dims && v.name != x.name) {
            same.name.clone()
        } else {
            self.init_rand("a", &[1])
        };
        let x_name = x.name.clone();
        self.node("Add", &[&x_name, &other], &[], x.dims.clone())
    }

    fn concat(&mut self, x: &V) -> V {
        let same: Vec<V> = self
            .values
            .iter()
            .filter(|v| v.dims.len() == 4 && v.dims[0] == x.dims[0] && v.dims[2..] == x.dims[2..])
            .cloned()
            .collect();
        let y = self.rng.pick(&same).clone();
        let axis = if self.bad() { *self.rng.pick(&[4, 7, -5]) } else { *self.rng.pick(&[1, -3]) };
        let mut dims = x.dims.clone();
        dims[1] += y.dims[1];
        self.node("Concat", &[&x.name, &y.name], &[format!("axis={axis}")], dims)
    }

    fn resize(&mut self, x: &V) -> V {
        let [n, c, h, w] = dims4(x);
        let modes = ["asymmetric", "half_pixel", "align_corners", "pytorch_half_pixel", "tf_crop_and_resize"];
        let nearest = ["floor", "ceil", "round_prefer_floor", "round_prefer_ceil"];
        let mut attrs = vec![format!("mode=\"{}\"", if self.rng.one_in(4) { "linear" } else { "nearest" })];
        if self.rng.one_in(2) {
            attrs.push(format!("coordinate_transformation_mode=\"{}\"", self.rng.pick(&modes)));
        }
        if self.rng.one_in(2) {
            attrs.push(format!("nearest_mode=\"{}\"", self.rng.pick(&nearest)));
        }
        let x_name = x.name.clone();
        if self.rng.one_in(3) {
            let f = self.rng.range(1, 3);
            let sizes = self.init_i64("sizes", &[n, c, h.saturating_mul(f), w.saturating_mul(f)], false);
            return self.node(
                "Resize",
                &[&x_name, "_", "_", &sizes],
                &attrs,
                vec![n, c, h.saturating_mul(f), w.saturating_mul(f)],
            );
        }
        let mut s = *self.rng.pick(&[1.0, 2.0, 2.0, 3.0, 0.5, 1.5]);
        let mut scales = vec![1.0, 1.0, s, s];
        if self.bad() {
            match self.rng.below(4) {
                0 => scales[2] = 1e9,
                1 => scales[3] = 0.0,
                2 => scales[2] = -2.0,
                _ => {
                    scales.pop();
                }
            }
            s = 1.0;
        }
        let scales = self.init_f32("scales", &scales);
        let out = |len: i64| ((len as f64) * s).floor() as i64;
        self.node("Resize", &[&x_name, "_", &scales], &attrs, vec![n, c, out(h), out(w)])
    }

    fn maxpool(&mut self, x: &V) -> V {
        let [n, c, h, w] = dims4(x);
        let k = [self.rng.range(1, 3), self.rng.range(1, 3)];
        let mut kernel = k;
        let mut strides = [self.rng.range(1, 2), self.rng.range(1, 2)];
        let mut pads = [
            self.rng.range(0, k[0] - 1),
            self.rng.range(0, k[1] - 1),
            self.rng.range(0, k[0] - 1),
            self.rng.range(0, k[1] - 1),
        ];
        if self.bad() {
            match self.rng.below(3) {
                0 => pads = [0, 0, 1 << 40, 1 << 40],
                1 => kernel[0] = 0,
                _ => strides[1] = 0,
            }
        }
        let ceil = self.rng.one_in(4);
        let mut attrs = vec![format!("kernel_shape={}", list(&kernel))];
        if strides != [1, 1] {
            attrs.push(format!("strides={}", list(&strides)));
        }
        if pads != [0; 4] {
            attrs.push(format!("pads={}", list(&pads)));
        }
        if ceil {
            attrs.push("ceil_mode=1".into());
        }
        let out = |len: i64, k: i64, s: i64, p: i64| {
            if s <= 0 {
                return 1;
            }
            let span = len + p - k;
            (if ceil { (span + s - 1).div_euclid(s) } else { span.div_euclid(s) }) + 1
        };
        let dims = vec![n, c, out(h, k[0], strides[0], pads[0] + pads[2]), out(w, k[1], strides[1], pads[1] + pads[3])];
        let x_name = x.name.clone();
        self.node("MaxPool", &[&x_name], &attrs, dims)
    }

    /// Reshape to rank 3 and back, the target either constant or computed
    /// from Shape → Gather → Concat as exports write it.
    fn reshape_pair(&mut self, x: &V) -> V {
        let [n, c, h, w] = dims4(x);
        let x_name = x.name.clone();
        let flat = if self.rng.one_in(2) {
            let target = match self.rng.below(3) {
                0 => vec![n, c, h.saturating_mul(w)],
                1 => vec![0, c, -1],
                _ if self.bad() => vec![-1, -1, 2],
                _ => vec![n, -1, h.saturating_mul(w)],
            };
            let t = self.init_i64("shape", &target, false);
            self.node("Reshape", &[&x_name, &t], &[], vec![n, c, h.saturating_mul(w)])
        } else {
            let s = self.node("Shape", &[&x_name], &[], vec![4]);
            let i = if self.bad() { 4 } else { 0 };
            let idx0 = self.init_i64("i", &[i], false);
            let idx1 = self.init_i64("i", &[1], false);
            let g0 = self.node("Gather", &[&s.name, &idx0], &["axis=0".into()], vec![1]);
            let g1 = self.node("Gather", &[&s.name, &idx1], &["axis=0".into()], vec![1]);
            let m1 = self.init_i64("m", &[-1], false);
            let cat = self.node("Concat", &[&g0.name, &g1.name, &m1], &["axis=0".into()], vec![3]);
            self.node("Reshape", &[&x_name, &cat.name], &[], vec![n, c, h.saturating_mul(w)])
        };
        let flat = if self.rng.one_in(2) { self.node("Relu", &[&flat.name], &[], flat.dims.clone()) } else { flat };
        let back = self.node("Shape", &[&x_name], &[], vec![4]);
        self.node("Reshape", &[&flat.name, &back.name], &[], vec![n, c, h, w])
    }

    fn slice(&mut self, x: &V) -> V {
        let mut dims = x.dims.clone();
        let axis = self.rng.range(2, 3);
        let len = dims[axis as usize];
        let start = self.rng.range(0, (len - 1).max(0));
        let end = if self.rng.one_in(4) { i64::MAX } else { self.rng.range(start + 1, len.max(start + 1)) };
        let mut step = 1;
        let mut axes = vec![axis];
        if self.bad() {
            match self.rng.below(3) {
                0 => step = 0,
                1 => axes = vec![7],
                _ => step = -1,
            }
        }
        dims[axis as usize] = end.min(len) - start;
        let starts = self.init_i64("st", &[start], false);
        let ends = self.init_i64("en", &[end], false);
        let axes = self.init_i64("ax", &axes, false);
        let x_name = x.name.clone();
        if step != 1 || self.rng.one_in(3) {
            let steps = self.init_i64("sp", &[step], false);
            self.node("Slice", &[&x_name, &starts, &ends, &axes, &steps], &[], dims)
        } else {
            self.node("Slice", &[&x_name, &starts, &ends, &axes], &[], dims)
        }
    }

    fn gather_channels(&mut self, x: &V) -> V {
        let c = dims4(x)[1];
        let k = 1 + self.rng.below(c.max(1) as usize) as i64;
        let mut idx: Vec<i64> = (0..k).map(|_| self.rng.range(-c, c - 1)).collect();
        if self.bad() {
            idx[0] = c + 3;
        }
        let idx = self.init_i64("gi", &idx, false);
        let mut dims = x.dims.clone();
        dims[1] = k;
        let x_name = x.name.clone();
        self.node("Gather", &[&x_name, &idx], &["axis=1".into()], dims)
    }
}

fn dims4(v: &V) -> [i64; 4] {
    [v.dims[0], v.dims[1], v.dims[2], v.dims[3]]
}

/// A random small graph in the text IR.
pub fn generate(rng: &mut Rng) -> String {
    let opset = *rng.pick(&[13, 13, 13, 11, 17, 19]);
    let dims = vec![if rng.one_in(6) { 2 } else { 1 }, rng.range(1, 4), rng.range(1, 8), rng.range(1, 8)];
    let mut g = Gen {
        rng,
        inits: Vec::new(),
        nodes: Vec::new(),
        values: vec![V { name: "%x".into(), dims: dims.clone() }],
        n: 0,
    };
    let steps = 1 + g.rng.below(7);
    for _ in 0..steps {
        let Some(x) = g.pick4() else { break };
        match g.rng.below(12) {
            0..=2 => {
                let c = g.conv(&x);
                if g.rng.one_in(2) {
                    g.batchnorm(&c);
                }
            }
            3 => {
                g.batchnorm(&x);
            }
            4 => {
                g.node("Relu", &[&x.name], &[], x.dims.clone());
            }
            5 => {
                g.add(&x);
            }
            6 => {
                g.concat(&x);
            }
            7 => {
                g.resize(&x);
            }
            8 => {
                g.maxpool(&x);
            }
            9 => {
                g.reshape_pair(&x);
            }
            10 => {
                g.slice(&x);
            }
            _ => {
                g.gather_channels(&x);
            }
        }
    }
    let mut outputs = vec![g.values.last().map_or("%x".to_string(), |v| v.name.clone())];
    if g.values.len() > 2 && g.rng.one_in(3) {
        let other = g.rng.pick(&g.values[1..]).name.clone();
        if !outputs.contains(&other) {
            outputs.push(other);
        }
    }
    let mut text = format!("graph g {{\n  opset ai.onnx {opset}\n  input %x: f32[{}]\n", dims_str(&dims));
    for l in &g.inits {
        text.push_str(l);
    }
    for l in &g.nodes {
        text.push_str(l);
        text.push('\n');
    }
    for o in outputs {
        let _ = writeln!(text, "  output {o}");
    }
    text.push_str("}\n");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_graphs_parse_and_mostly_verify() {
        let (mut parsed, mut valid) = (0, 0);
        for case in 0..300 {
            let text = generate(&mut Rng::for_case(5, "graphs", case));
            let g = qforge_ir::parse_graph(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            parsed += 1;
            valid += usize::from(qforge_ir::verify(&g).is_ok());
        }
        assert_eq!(parsed, 300);
        assert!(valid > 150, "only {valid} of 300 generated graphs verify");
    }
}
