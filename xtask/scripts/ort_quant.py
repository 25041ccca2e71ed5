"""ONNX Runtime's `quantize_static` on photos, for `cargo xtask bench` (calib and int8 sections).

Usage: ort_quant.py MODEL.onnx PHOTOS OUT.onnx [--method minmax|entropy|percentile]
                    [--exclude-file NAMES.txt] [--repeat N] [--size N | --resize H,W] [--floor]

Quantizes to TensorRT's form: QDQ, per-channel int8 weights, symmetric int8 activations and
weights. Calibration data is what qforge's `calibrate: {data: {views: true}}` feeds: every photo
of PHOTOS (sorted) in four views (itself, mirrored, top-left and bottom-right 75 % crops),
letterboxed like qforge (PIL bilinear resize of the longer side to SIZE with Python round(),
pasted top-left on grey 114, /255, NCHW float32), or with `--resize H,W` plainly resized to
W x H (bilinear, /255; for models whose own preprocessing is a plain resize, e.g. PicoDet), the
whole list `--repeat` times. Samples are
produced lazily, one at a time, so the script itself holds one sample: the memory measured is
ONNX Runtime's. A dynamic model input is first fixed to 1x3xSIZExSIZE with the onnx package
(ORT's symbolic shape inference fails on such models), then `quant_pre_process` runs with
`skip_symbolic_shape=True`. Calibrator settings are ONNX Runtime's defaults.

`--floor` quantizes nothing: it prepares every sample first, then times only ONNX Runtime
running the (static-shape) float model on them, one after the other in one session with its
default threads (one per core): the least time any calibration on these samples can take with
this runtime. OUT is not written; the JSON gets `floor_seconds` and `floor_session_seconds`.

Prints one JSON line: seconds (from the start of the script), peak_rss_mb
(getrusage(RUSAGE_SELF).ru_maxrss / 1024), samples, excluded node counts and versions.
"""

import time

T0 = time.time()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime  # noqa: E402
from onnxruntime.quantization import (  # noqa: E402
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: E402
from PIL import Image  # noqa: E402

EXTENSIONS = (".jpg", ".jpeg", ".png")
METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}


def photos(folder):
    """JPEG/PNG files under `folder`, recursively, sorted by path (as qforge lists them)."""
    found = []
    for dirpath, _, files in os.walk(folder):
        found += [os.path.join(dirpath, f) for f in files if f.lower().endswith(EXTENSIONS)]
    return sorted(found)


def views(img):
    """The photo, its mirror image, its top-left and bottom-right 75 % crops."""
    w, h = img.size
    return [
        img,
        img.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        img.crop((0, 0, int(w * 0.75), int(h * 0.75))),
        img.crop((int(w * 0.25), int(h * 0.25), w, h)),
    ]


def letterbox(img, size):
    """Resize the longer side to `size` (bilinear), paste top-left on grey 114, /255, 1x3xHxW."""
    w, h = img.size
    r = min(size / w, size / h)
    nw, nh = min(max(round(w * r), 1), size), min(max(round(h * r), 1), size)
    canvas = Image.new("RGB", (size, size), (114, 114, 114))
    canvas.paste(img.resize((nw, nh), Image.BILINEAR), (0, 0))
    x = np.asarray(canvas, dtype=np.float32) / 255.0
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def plain_resize(img, h, w):
    """Resize to W x H (bilinear), /255, 1x3xHxW."""
    x = np.asarray(img.resize((w, h), Image.BILINEAR), dtype=np.float32) / 255.0
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


class Reader(CalibrationDataReader):
    """Yields {input: sample} for every view of every photo, `repeat` times, lazily.

    `size` is the letterbox side, or an (H, W) pair for a plain resize."""

    def __init__(self, name, files, size, repeat):
        self.count = 0
        self.it = self._gen(name, files, size, repeat)

    def _gen(self, name, files, size, repeat):
        for _ in range(repeat):
            for f in files:
                with Image.open(f) as im:
                    img = im.convert("RGB")
                for v in views(img):
                    self.count += 1
                    x = plain_resize(v, *size) if isinstance(size, tuple) else letterbox(v, size)
                    yield {name: x}

    def get_next(self):
        return next(self.it, None)


def static_copy(model_path, size, dst):
    """Fixes every symbolic dim of the (single image) input to 1x3xSIZExSIZE (1x3xHxW for an
    (H, W) pair); drops value_info."""
    m = onnx.load(model_path)
    inp = m.graph.input[0]
    dims = inp.type.tensor_type.shape.dim
    fixed = [1, 3, *size] if isinstance(size, tuple) else [1, 3, size, size]
    changed = False
    for d, v in zip(dims, fixed):
        if not d.HasField("dim_value") or d.dim_value <= 0:
            d.Clear()
            d.dim_value = v
            changed = True
    if not changed:
        return model_path, inp.name
    # Intermediate value_info still carries the symbolic dims; shape inference recomputes them.
    del m.graph.value_info[:]
    onnx.save(m, dst)
    return dst, inp.name


def input_size(model_path):
    m = onnx.load(model_path, load_external_data=False)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    side = dims[2].dim_value if len(dims) == 4 and dims[2].HasField("dim_value") else 0
    return side or 640


def floor(model, files, size, repeat):
    """Prints the time ONNX Runtime takes to run the float model on every sample (see `--floor`)."""
    with tempfile.TemporaryDirectory(prefix="ort_floor_") as tmp:
        src, name = static_copy(model, size, os.path.join(tmp, "static.onnx"))
        reader = Reader(name, files, size, repeat)
        samples = list(iter(reader.get_next, None))
        t = time.time()
        session = onnxruntime.InferenceSession(src, providers=["CPUExecutionProvider"])
        t_session = time.time() - t
    t = time.time()
    for feed in samples:
        session.run(None, feed)
    seconds = time.time() - t
    print(
        json.dumps(
            {
                "samples": len(samples),
                "floor_seconds": seconds,
                "floor_session_seconds": t_session,
                "onnxruntime_version": onnxruntime.__version__,
            }
        )
    )


def main():
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("model")
    a.add_argument("photos")
    a.add_argument("out")
    a.add_argument("--method", choices=sorted(METHODS), default="minmax")
    a.add_argument("--exclude-file", help="node names to keep float, one per line")
    a.add_argument("--repeat", type=int, default=1)
    a.add_argument("--size", type=int, default=0, help="input side (default: the model's, or 640)")
    a.add_argument("--resize", help="H,W: plain resize to W x H instead of the letterbox")
    a.add_argument("--floor", action="store_true", help="time only running the float model on the samples")
    a = a.parse_args()

    if a.resize and a.size:
        sys.exit("--size and --resize exclude each other")
    size = tuple(int(v) for v in a.resize.split(",")) if a.resize else a.size or input_size(a.model)
    files = photos(a.photos)
    if not files:
        sys.exit(f"no JPEG/PNG photos in {a.photos}")
    requested = []
    if a.exclude_file:
        with open(a.exclude_file) as f:
            requested = [line.strip() for line in f if line.strip()]

    if a.floor:
        floor(a.model, files, size, a.repeat)
        return
    with tempfile.TemporaryDirectory(prefix="ort_quant_") as tmp:
        src, name = static_copy(a.model, size, os.path.join(tmp, "static.onnx"))
        pre = os.path.join(tmp, "pre.onnx")
        quant_pre_process(src, pre, skip_symbolic_shape=True)
        present = {n.name for n in onnx.load(pre).graph.node}
        exclude = [n for n in requested if n in present]
        reader = Reader(name, files, size, a.repeat)
        quantize_static(
            pre,
            a.out,
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=METHODS[a.method],
            nodes_to_exclude=exclude,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
        )
    print(
        json.dumps(
            {
                "method": a.method,
                "samples": reader.count,
                "seconds": time.time() - T0,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "exclude_requested": len(requested),
                "excluded": len(exclude),
                "onnxruntime_version": onnxruntime.__version__,
                "onnx_version": onnx.__version__,
                "python": sys.version.split()[0],
            }
        )
    )


if __name__ == "__main__":
    main()
