"""NVIDIA ModelOpt's ONNX PTQ (INT8) on photos, for `cargo xtask bench` (int8 section).

Usage: modelopt_quant.py MODEL.onnx PHOTOS OUT.onnx [--method entropy|max] [--size H,W] [--resize]
       modelopt_quant.py --version

Runs `modelopt.onnx.quantization.quantize` (the Python API behind `python -m
modelopt.onnx.quantization`) with quantize_mode int8, calibration_eps ["cpu"] and every other
argument at ModelOpt's default: its Q/DQ placement (per-channel weights through ONNX Runtime's
quantize_static), the float rest in FP16 (high_precision_dtype fp16), model inputs and outputs
kept in their original type. `--method` is ModelOpt's calibration_method: entropy (its default)
or max.

Calibration data is what qforge's `calibrate: {data: {views: true}}` feeds, built as
`ort_quant.py` and `sqnr.py` build it: every photo of PHOTOS (sorted) in four views (itself,
mirrored, top-left and bottom-right 75 % crops), letterboxed like qforge (PIL bilinear, Python
round(), top-left on grey 114, /255, NCHW float32) or with `--resize` plainly resized; H, W default
to the model's input dims (640 when dynamic). ModelOpt takes the data as one array
[samples, 3, H, W] (calibration_data) and runs it one sample at a time (calibration_shapes
1x3xHxW); a dynamic model input is fixed to that shape (override_shapes). ModelOpt writes
intermediate files beside the model, so the model is copied into a temporary folder first.

Prints one JSON line: seconds (from the start of the script), peak_rss_mb
(getrusage(RUSAGE_SELF).ru_maxrss / 1024), import_seconds and import_rss_mb (the same two once
every module, ModelOpt and with it torch among them, is imported, before any work), samples and versions. Needs a Python with
nvidia-modelopt[onnx] (and torch) and pillow; `--version` only prints the versions.
"""

import time

T0 = time.time()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ort_quant import photos, views  # noqa: E402
from sqnr import prep  # noqa: E402


def versions():
    from importlib.metadata import version

    out = {"python": sys.version.split()[0]}
    for pkg in ["nvidia-modelopt", "torch", "onnxruntime-gpu", "onnxruntime", "onnx"]:
        try:
            out[pkg] = version(pkg)
        except Exception:  # noqa: BLE001 - a package that is not installed
            pass
    return out


def input_dims(model_path):
    """Name and [H, W] of the first input (640 for a dynamic dim), and whether any dim is dynamic."""
    m = onnx.load(model_path, load_external_data=False)
    inp = m.graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 0 for d in inp.type.tensor_type.shape.dim]
    if len(dims) != 4:
        sys.exit(f"{model_path}: the first input {inp.name} is not an NCHW image ({len(dims)} dims)")
    return inp.name, [dims[2] or 640, dims[3] or 640], 0 in dims


def main():
    if sys.argv[1:] == ["--version"]:
        import modelopt.onnx.quantization  # noqa: F401 - fails here when ModelOpt's ONNX extra is missing

        print(json.dumps(versions()))
        return
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("model")
    a.add_argument("photos")
    a.add_argument("out")
    a.add_argument("--method", choices=["entropy", "max"], default="entropy")
    a.add_argument("--size", help="H,W (default: the model's input dims, 640 when dynamic)")
    a.add_argument("--resize", action="store_true", help="plain resize instead of letterbox")
    a = a.parse_args()

    from modelopt.onnx.quantization import quantize

    import_seconds = time.time() - T0
    import_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    name, (h, w), dynamic = input_dims(a.model)
    if a.size:
        h, w = (int(v) for v in a.size.split(","))
    files = photos(a.photos)
    if not files:
        sys.exit(f"no JPEG/PNG photos in {a.photos}")
    samples = []
    for f in files:
        with Image.open(f) as im:
            img = im.convert("RGB")
        samples += [prep(v, h, w, a.resize) for v in views(img)]
    data = np.concatenate(samples, 0)
    shape = f"{name}:1x3x{h}x{w}"

    with tempfile.TemporaryDirectory(prefix="modelopt_quant_") as tmp:
        src = os.path.join(tmp, os.path.basename(a.model))
        shutil.copy(a.model, src)
        quantize(
            src,
            quantize_mode="int8",
            calibration_data=data,
            calibration_method=a.method,
            calibration_shapes=shape,
            calibration_eps=["cpu"],
            override_shapes=shape if dynamic else None,
            output_path=os.path.abspath(a.out),
            log_level="WARNING",
        )
    if not os.path.isfile(a.out):
        sys.exit(f"ModelOpt wrote no {a.out}")
    print(
        json.dumps(
            {
                "method": a.method,
                "samples": int(data.shape[0]),
                "size": [h, w],
                "seconds": time.time() - T0,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "import_seconds": import_seconds,
                "import_rss_mb": import_rss_mb,
                **versions(),
            }
        )
    )


if __name__ == "__main__":
    main()
