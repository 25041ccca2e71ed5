//! Arithmetic on dims that may be known, symbolic or unknown.
//!
//! Every helper answers "unknown" rather than guessing, and never divides by
//! zero or overflows: out-of-range inputs give `None`/`Dim::Unknown`.

use qforge_ir::Dim;

/// Largest dim a rule will produce from arithmetic (anything bigger is an
/// absurd model and becomes unknown).
pub const MAX_DIM: i64 = 1 << 40;

/// The known size of a dim.
pub fn known(d: &Dim) -> Option<i64> {
    if let Dim::Known(k) = d { Some(*k) } else { None }
}

/// A known dim from a computed size, unknown when negative or absurd.
pub fn checked(x: Option<i64>) -> Dim {
    match x {
        Some(k) if (0..=MAX_DIM).contains(&k) => Dim::Known(k),
        _ => Dim::Unknown,
    }
}

/// `axis` (possibly negative) as an index into a rank-`rank` shape.
pub fn norm_axis(axis: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis.checked_add(r)? } else { axis };
    (0..r).contains(&a).then_some(a as usize)
}

/// Normalises a list of axes; `None` on an out-of-range or repeated axis.
pub fn norm_axes(axes: &[i64], rank: usize) -> Option<Vec<usize>> {
    let mut out: Vec<usize> = Vec::with_capacity(axes.len());
    for &a in axes {
        let a = norm_axis(a, rank)?;
        if out.contains(&a) {
            return None;
        }
        out.push(a);
    }
    Some(out)
}

/// Multidirectional (numpy) broadcasting of several shapes. A symbolic or
/// unknown dim against 1 stays as it is; against a known k > 1 it is k (the
/// only size that can broadcast); two different symbols give unknown.
/// `None` when two known dims cannot broadcast.
pub fn broadcast(shapes: &[Vec<Dim>]) -> Option<Vec<Dim>> {
    let rank = shapes.iter().map(Vec::len).max()?;
    let mut out = Vec::with_capacity(rank);
    for i in 0..rank {
        let mut d = Dim::Known(1);
        for s in shapes {
            let Some(j) = (i + s.len()).checked_sub(rank) else { continue };
            let x = &s[j];
            d = match (&d, x) {
                (Dim::Known(1), _) => x.clone(),
                (_, Dim::Known(1)) => d,
                (Dim::Known(a), Dim::Known(b)) if a != b => return None,
                (Dim::Known(_), _) => d,
                (_, Dim::Known(_)) => x.clone(),
                (Dim::Sym(a), Dim::Sym(b)) if a == b => d,
                _ => Dim::Unknown,
            };
        }
        out.push(d);
    }
    Some(out)
}

/// Product of dims: known when all are, the symbol when exactly one symbol
/// remains among ones, else unknown.
pub fn product(ds: &[Dim]) -> Dim {
    let mut k: i64 = 1;
    let mut sym: Option<&Dim> = None;
    for d in ds {
        match d {
            Dim::Known(x) => match k.checked_mul(*x) {
                Some(p) => k = p,
                None => return Dim::Unknown,
            },
            Dim::Sym(_) if sym.is_none() => sym = Some(d),
            _ => return Dim::Unknown,
        }
    }
    match sym {
        None => checked(Some(k)),
        Some(s) if k == 1 => s.clone(),
        Some(_) if k == 0 => Dim::Known(0),
        Some(_) => Dim::Unknown,
    }
}

/// `a + b` (a symbol plus zero stays the symbol).
pub fn add(a: &Dim, b: &Dim) -> Dim {
    match (a, b) {
        (Dim::Known(x), Dim::Known(y)) => checked(x.checked_add(*y)),
        (s, Dim::Known(0)) | (Dim::Known(0), s) => s.clone(),
        _ => Dim::Unknown,
    }
}

/// `a * b` (a symbol times one stays the symbol).
pub fn mul(a: &Dim, b: &Dim) -> Dim {
    match (a, b) {
        (Dim::Known(x), Dim::Known(y)) => checked(x.checked_mul(*y)),
        (s, Dim::Known(1)) | (Dim::Known(1), s) => s.clone(),
        (_, Dim::Known(0)) | (Dim::Known(0), _) => Dim::Known(0),
        _ => Dim::Unknown,
    }
}

/// `a / b` for an exact division (a symbol divided by one stays the symbol).
pub fn div_exact(a: &Dim, b: i64) -> Dim {
    match a {
        Dim::Known(x) if b > 0 && x % b == 0 => Dim::Known(x / b),
        s @ Dim::Sym(_) if b == 1 => s.clone(),
        _ => Dim::Unknown,
    }
}

/// The dims of two tensors merged where they must be equal (Concat's other
/// axes, Where's branches): known wins, equal symbols stay, else unknown.
pub fn unify(a: &Dim, b: &Dim) -> Dim {
    match (a, b) {
        (Dim::Known(_), _) => a.clone(),
        (_, Dim::Known(_)) => b.clone(),
        (Dim::Sym(x), Dim::Sym(y)) if x == y => a.clone(),
        _ => Dim::Unknown,
    }
}

/// First index and element count of `start:end:step` over an axis of
/// length `len`, as ONNX Slice clamps them; `None` for a zero step.
pub fn slice_range(len: i64, start: i64, end: i64, step: i64) -> Option<(i64, i64)> {
    if step == 0 || len < 0 {
        return None;
    }
    if len == 0 {
        return Some((0, 0));
    }
    let (l, st) = (i128::from(len), i128::from(step));
    let norm = |v: i64| if v < 0 { i128::from(v) + l } else { i128::from(v) };
    let (s, n) = if st > 0 {
        let (s, e) = (norm(start).clamp(0, l), norm(end).clamp(0, l));
        (s, if e > s { (e - s + st - 1) / st } else { 0 })
    } else {
        let (s, e) = (norm(start).clamp(0, l - 1), norm(end).clamp(-1, l - 1));
        (s, if s > e { (s - e - st - 1) / -st } else { 0 })
    };
    Some((s as i64, n as i64))
}

/// Attributes of a sliding window (Conv, pooling) on one spatial axis.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Kernel size.
    pub kernel: i64,
    /// Stride.
    pub stride: i64,
    /// Dilation.
    pub dilation: i64,
    /// Padding before.
    pub pad_begin: i64,
    /// Padding after.
    pub pad_end: i64,
}

/// How padding is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AutoPad {
    /// Explicit pads.
    NotSet,
    /// Output = ceil(input / stride).
    Same,
    /// No padding.
    Valid,
}

impl AutoPad {
    /// Parses the `auto_pad` attribute; `None` for an unknown spelling.
    pub fn parse(s: Option<&str>) -> Option<AutoPad> {
        Some(match s.unwrap_or("NOTSET") {
            "NOTSET" | "" => AutoPad::NotSet,
            "SAME_UPPER" | "SAME_LOWER" => AutoPad::Same,
            "VALID" => AutoPad::Valid,
            _ => return None,
        })
    }
}

/// Output length of a window over `input` (floor, or ceil for pooling's
/// `ceil_mode` with the rule that the last window must start inside the
/// input or its leading padding). A symbolic input keeps its symbol only
/// when the window preserves length (stride 1, same padding).
pub fn window_out(input: &Dim, w: Window, auto: AutoPad, ceil: bool) -> Dim {
    if w.kernel <= 0 || w.stride <= 0 || w.dilation <= 0 || w.pad_begin < 0 || w.pad_end < 0 {
        return Dim::Unknown;
    }
    let Some(eff) = (w.kernel - 1).checked_mul(w.dilation).and_then(|x| x.checked_add(1)) else {
        return Dim::Unknown;
    };
    let preserves = w.stride == 1
        && match auto {
            AutoPad::Same => true,
            AutoPad::Valid => eff == 1,
            AutoPad::NotSet => w.pad_begin.checked_add(w.pad_end) == Some(eff - 1),
        };
    let x = match input {
        Dim::Known(x) => *x,
        Dim::Sym(_) if preserves => return input.clone(),
        _ => return Dim::Unknown,
    };
    let r = match auto {
        AutoPad::Same => Some((x + w.stride - 1) / w.stride),
        AutoPad::Valid => (x - eff).checked_div(w.stride).filter(|_| x >= eff).map(|q| q + 1),
        AutoPad::NotSet => {
            let span = x + w.pad_begin + w.pad_end - eff;
            if span < 0 {
                None
            } else if ceil {
                let mut q = (span + w.stride - 1) / w.stride + 1;
                if (q - 1) * w.stride >= x + w.pad_begin {
                    q -= 1;
                }
                Some(q)
            } else {
                Some(span / w.stride + 1)
            }
        }
    };
    checked(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(v: &[i64]) -> Vec<Dim> {
        v.iter().map(|&d| Dim::Known(d)).collect()
    }

    fn s(n: &str) -> Dim {
        Dim::Sym(n.into())
    }

    #[test]
    fn broadcast_follows_numpy_and_keeps_symbols() {
        assert_eq!(broadcast(&[k(&[1, 3, 1]), k(&[4, 1, 5])]), Some(k(&[4, 3, 5])));
        assert_eq!(broadcast(&[k(&[2, 3]), k(&[4, 3])]), None);
        assert_eq!(broadcast(&[k(&[3]), vec![s("n"), Dim::Known(3)]]), Some(vec![s("n"), Dim::Known(3)]));
        assert_eq!(broadcast(&[vec![s("n")], k(&[1])]), Some(vec![s("n")]));
        assert_eq!(broadcast(&[vec![s("n")], vec![s("m")]]), Some(vec![Dim::Unknown]));
        assert_eq!(broadcast(&[vec![s("n")], k(&[5])]), Some(k(&[5])));
        assert_eq!(broadcast(&[vec![Dim::Unknown], k(&[1])]), Some(vec![Dim::Unknown]));
    }

    #[test]
    fn window_guards_and_symbols() {
        let w = |kernel, stride, pb, pe| Window { kernel, stride, dilation: 1, pad_begin: pb, pad_end: pe };
        assert_eq!(window_out(&Dim::Known(640), w(3, 2, 1, 1), AutoPad::NotSet, false), Dim::Known(320));
        assert_eq!(window_out(&Dim::Known(640), w(3, 0, 1, 1), AutoPad::NotSet, false), Dim::Unknown);
        assert_eq!(window_out(&Dim::Known(640), w(0, 1, 1, 1), AutoPad::NotSet, false), Dim::Unknown);
        assert_eq!(window_out(&s("h"), w(3, 1, 1, 1), AutoPad::NotSet, false), s("h"));
        assert_eq!(window_out(&s("h"), w(3, 2, 1, 1), AutoPad::NotSet, false), Dim::Unknown);
        assert_eq!(window_out(&s("h"), w(5, 1, 2, 2), AutoPad::NotSet, false), s("h"));
        assert_eq!(window_out(&Dim::Known(2), w(5, 1, 0, 0), AutoPad::NotSet, false), Dim::Unknown);
        // ceil mode: 5 with k=2 s=2 gives 3; a last window starting in the end padding is dropped.
        assert_eq!(window_out(&Dim::Known(5), w(2, 2, 0, 0), AutoPad::NotSet, true), Dim::Known(3));
        assert_eq!(window_out(&Dim::Known(4), w(2, 2, 0, 1), AutoPad::NotSet, true), Dim::Known(2));
        assert_eq!(window_out(&Dim::Known(7), w(3, 2, 0, 0), AutoPad::Same, false), Dim::Known(4));
    }

    #[test]
    fn products_and_sums() {
        assert_eq!(product(&k(&[2, 3, 4])), Dim::Known(24));
        assert_eq!(product(&[s("n"), Dim::Known(1)]), s("n"));
        assert_eq!(product(&[s("n"), Dim::Known(2)]), Dim::Unknown);
        assert_eq!(product(&[Dim::Known(i64::MAX), Dim::Known(4)]), Dim::Unknown);
        assert_eq!(add(&s("n"), &Dim::Known(0)), s("n"));
        assert_eq!(mul(&s("n"), &Dim::Known(1)), s("n"));
        assert_eq!(div_exact(&Dim::Known(7), 0), Dim::Unknown);
    }

    #[test]
    fn slice_ranges_clamp_like_onnx() {
        assert_eq!(slice_range(10, 0, i64::MAX, 1), Some((0, 10)));
        assert_eq!(slice_range(10, -3, i64::MAX, 1), Some((7, 3)));
        assert_eq!(slice_range(10, 1, 9, 3), Some((1, 3)));
        assert_eq!(slice_range(10, -1, i64::MIN, -1), Some((9, 10)));
        assert_eq!(slice_range(10, 8, 1, -2), Some((8, 4)));
        assert_eq!(slice_range(10, 20, 0, -1), Some((9, 9)));
        assert_eq!(slice_range(10, 5, 2, 1), Some((5, 0)));
        assert_eq!(slice_range(10, 0, 5, 0), None);
        assert_eq!(slice_range(0, -1, i64::MIN, -1), Some((0, 0)));
        assert_eq!(slice_range(10, 0, 10, i64::MAX), Some((0, 1)));
    }
}
