"""Runs two ONNX models with ONNX Runtime on the same inputs and compares outputs.

Usage: ort_compare.py A.onnx B.onnx [--images DIR] [--size N] [--input-shape D0,D1,...] [--seed S]

Inputs are the photos in DIR (letterboxed to the model's input size, /255, NCHW)
when given, else seeded uniform [0, 1) tensors. Prints JSON: per-output and
overall max abs difference, max relative difference (max|a-b| / max(max|a|, 1)),
and whether all outputs are bit-identical.
"""
import argparse, glob, json, os
import numpy as np
import onnxruntime as ort
from PIL import Image


def letterbox(path, h, w):
    im = Image.open(path).convert('RGB')
    r = min(w / im.width, h / im.height)
    im = im.resize((max(1, round(im.width * r)), max(1, round(im.height * r))), Image.BILINEAR)
    canvas = Image.new('RGB', (w, h), (114, 114, 114))
    canvas.paste(im, (0, 0))
    return (np.asarray(canvas, dtype=np.float32) / 255.0).transpose(2, 0, 1)[None]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('a'); ap.add_argument('b')
    ap.add_argument('--images'); ap.add_argument('--input-shape'); ap.add_argument('--seed', type=int, default=0)
    a = ap.parse_args()
    so = ort.SessionOptions(); so.log_severity_level = 3
    # Disable graph optimizations so ORT runs each model as written.
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sa = ort.InferenceSession(a.a, so, providers=['CPUExecutionProvider'])
    sb = ort.InferenceSession(a.b, so, providers=['CPUExecutionProvider'])
    inp = sa.get_inputs()[0]
    if a.input_shape:
        shape = [int(d) for d in a.input_shape.split(',')]
    else:
        shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    feeds = []
    if a.images:
        photos = sorted(p for p in glob.glob(os.path.join(a.images, '*')) if p.lower().endswith(('.jpg', '.jpeg', '.png')))
        feeds = [letterbox(p, shape[2], shape[3]) for p in photos]
    else:
        rng = np.random.default_rng(a.seed)
        feeds = [rng.random(shape, dtype=np.float32)]
    report = {'runs': len(feeds), 'identical': True, 'max_abs': 0.0, 'max_rel': 0.0, 'outputs': {}}
    names = [o.name for o in sa.get_outputs()]
    for x in feeds:
        ya = sa.run(None, {inp.name: x})
        yb = sb.run(None, {sb.get_inputs()[0].name: x})
        for n, u, v in zip(names, ya, yb):
            u = u.astype(np.float64); v = v.astype(np.float64)
            d = float(np.abs(u - v).max()) if u.size else 0.0
            rel = d / max(float(np.abs(u).max()) if u.size else 0.0, 1.0)
            o = report['outputs'].setdefault(n, {'max_abs': 0.0, 'max_rel': 0.0})
            o['max_abs'] = max(o['max_abs'], d); o['max_rel'] = max(o['max_rel'], rel)
            report['max_abs'] = max(report['max_abs'], d); report['max_rel'] = max(report['max_rel'], rel)
            if not np.array_equal(u, v):
                report['identical'] = False
    print(json.dumps(report))


if __name__ == '__main__':
    main()
