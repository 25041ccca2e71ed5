"""Makes a skeleton of an ONNX model for `cargo xtask assets` (see xtask/src/skeleton.rs).

    python3 xtask/scripts/make_skeleton.py MODEL.onnx OUT.skel.onnx

Every node, attribute, Constant and small or non-float initializer is kept verbatim. Each
float32 initializer with more than 16 elements loses its data and gets a recipe in its doc
string that the Rust side expands with a seeded generator: `uniform LO HI` over the tensor's
own range when all its values are positive (BatchNorm scales and variances), otherwise
`normal MEAN STD` with its own mean and deviation.
"""
import sys

import numpy as np
import onnx
from onnx import numpy_helper

src, dst = sys.argv[1], sys.argv[2]
model = onnx.load(src)
for t in model.graph.initializer:
    a = numpy_helper.to_array(t)
    if a.dtype != np.float32 or a.size <= 16:
        continue
    if a.min() > 0:
        recipe = f"uniform {a.min():.6g} {a.max():.6g}"
    else:
        recipe = f"normal {a.mean():.6g} {a.std():.6g}"
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.doc_string = "qforge-skeleton " + recipe
onnx.save(model, dst)
