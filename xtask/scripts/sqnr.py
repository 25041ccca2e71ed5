"""Output SQNR of a candidate (e.g. INT8 Q/DQ) model vs its FP32 reference, with ONNX Runtime.

Usage: sqnr.py FP32.onnx CANDIDATE.onnx PHOTOS [--resize] [--size H,W] [--detections]
                [--split-yolo | --box-outputs NAME,...]

Both models run on CPU on the same inputs: every photo of PHOTOS (sorted) in four views (itself,
mirrored, top-left and bottom-right 75 % crops), letterboxed like qforge (PIL bilinear resize to
fit, Python round(), top-left on grey 114, /255, NCHW float32), or with `--resize` plainly
resized to W x H (bilinear) and /255. H, W default to the input dims of the FP32 model (640 when
dynamic). Prints one JSON line with sqnr_db = 10 log10(sum y^2 / sum (y - y_hat)^2), summed over
all outputs of all samples, and the sample count. baseline_db is the same measure for the FP32
model's outputs on a plain grey image (114) in place of the candidate's: how much the outputs
depend on the image at all (a model whose baseline is as high as the candidate's SQNR barely
looks at its input, e.g. an untrained one).

--split-yolo also gives sqnr_boxes_db and sqnr_scores_db, the same measure over the parts of the
first output: a YOLOv8 head [1, 4+C, N] splits into box rows 0..4 (cx, cy, w, h) and score rows
4..4+C; a YOLOv5 head [1, N, 5+C] into box columns 0..4 and score columns 4..5+C (objectness and
classes). --box-outputs NAME,... splits by whole outputs instead: the named ones are boxes, every
other output scores (e.g. PicoDet, whose box outputs are per-side distance distributions).

--detections also scores the candidate's detections against the FP32 ones, with the definitions of
`qforge agree` (qforge-yolo), here with ONNX Runtime executing both models: first output, YOLOv8
[1, 4+C, N] or YOLOv5 [1, N, 5+C] head, score > 0.25, per-class greedy NMS at IoU 0.45; per
image, candidate detections by descending score each take the unused FP32 box of their class
with the best IoU, a hit when IoU >= 0.5; recall = hits / fp32_dets, precision = hits /
cand_dets, map50 = mean over the classes FP32 detected of the COCO 101-point AP.
"""

import argparse
import json
import math
import os
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ort_quant import photos, views  # noqa: E402


def prep(img, h, w, resize):
    if resize:
        canvas = img.resize((w, h), Image.BILINEAR)
    else:
        r = min(w / img.width, h / img.height)
        nw, nh = min(max(round(img.width * r), 1), w), min(max(round(img.height * r), 1), h)
        canvas = Image.new("RGB", (w, h), (114, 114, 114))
        canvas.paste(img.resize((nw, nh), Image.BILINEAR), (0, 0))
    x = np.asarray(canvas, dtype=np.float32) / 255.0
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def iou(b, bs):
    """IoU of one corner box with many (float32, +1e-9 in the union)."""
    x1, y1 = np.maximum(b[0], bs[:, 0]), np.maximum(b[1], bs[:, 1])
    x2, y2 = np.minimum(b[2], bs[:, 2]), np.minimum(b[3], bs[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda z: (z[..., 2] - z[..., 0]) * (z[..., 3] - z[..., 1])  # noqa: E731
    return inter / (area(b) + area(bs) - inter + np.float32(1e-9))


def decode(y, conf=0.25, thr=0.45):
    """[(box, score, class)] after the score threshold and per-class NMS, classes ascending."""
    y = y[0]
    if y.shape[0] < y.shape[1]:  # YOLOv8: [4+C, N]
        y = y.T
        cls = y[:, 4:]
    else:  # YOLOv5: [N, 5+C]
        cls = y[:, 5:] * y[:, 4:5]
    score, label = cls.max(1), cls.argmax(1)
    keep = score > conf
    xywh, score, label = y[keep, :4], score[keep], label[keep]
    boxes = np.stack([xywh[:, 0] - xywh[:, 2] / 2, xywh[:, 1] - xywh[:, 3] / 2,
                      xywh[:, 0] + xywh[:, 2] / 2, xywh[:, 1] + xywh[:, 3] / 2], 1)
    out = []
    for k in np.unique(label):
        idx = np.where(label == k)[0]
        order = score[idx].argsort(kind="stable")[::-1]
        while order.size:
            i = idx[order[0]]
            out.append((boxes[i], float(score[i]), int(k)))
            rest = order[1:]
            order = rest[iou(boxes[i], boxes[idx[rest]]) < thr] if rest.size else rest
    return out


def average_precision(ranked, npos):
    ranked = sorted(ranked, key=lambda r: -r[1])
    tp = np.cumsum([h for h, _ in ranked], dtype=float)
    fp = np.cumsum([not h for h, _ in ranked], dtype=float)
    rec, prec = tp / npos, tp / np.maximum(tp + fp, 1e-9)
    total = 0.0
    for r in np.linspace(0, 1, 101):
        ok = prec[rec >= r - 1e-12]
        total += ok.max() if ok.size else 0.0
    return total / 101


class Agreement:
    def __init__(self):
        self.fp32_dets = self.cand_dets = self.hits = 0
        self.npos, self.ranked = {}, {}

    def add(self, y, q):
        ref, cand = decode(y), decode(q)
        self.fp32_dets += len(ref)
        self.cand_dets += len(cand)
        for _, _, k in ref:
            self.npos[k] = self.npos.get(k, 0) + 1
        used = [False] * len(ref)
        for box, score, k in sorted(cand, key=lambda d: -d[1]):
            best, best_iou = None, None
            for i, (g, _, gk) in enumerate(ref):
                if gk == k and not used[i]:
                    v = float(iou(box, g[None])[0])
                    if best is None or v > best_iou:
                        best, best_iou = i, v
            hit = best is not None and best_iou >= 0.5
            if hit:
                used[best] = True
                self.hits += 1
            self.ranked.setdefault(k, []).append((hit, score))

    def result(self):
        aps = [average_precision(self.ranked.get(k, []), n) for k, n in sorted(self.npos.items())]
        return {
            "fp32_dets": self.fp32_dets,
            "cand_dets": self.cand_dets,
            "recall": self.hits / max(self.fp32_dets, 1),
            "precision": self.hits / max(self.cand_dets, 1),
            "map50": sum(aps) / len(aps) if aps else None,
        }


def yolo_split(shape):
    """Index expressions of the box and score parts of a YOLOv8 [1, 4+C, N] or YOLOv5 [1, N, 5+C] head."""
    if len(shape) != 3 or min(shape[1], shape[2]) < 5:
        sys.exit(f"--split-yolo: the first output {list(shape)} is not a YOLO head [1, 4+C, N] or [1, N, 5+C]")
    if shape[1] < shape[2]:  # YOLOv8: [1, 4+C, N]
        return {"boxes": np.s_[:, :4, :], "scores": np.s_[:, 4:, :]}
    return {"boxes": np.s_[:, :, :4], "scores": np.s_[:, :, 4:]}


def main():
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("fp32")
    a.add_argument("candidate")
    a.add_argument("photos")
    a.add_argument("--resize", action="store_true", help="plain resize instead of letterbox")
    a.add_argument("--size", help="H,W (default: the FP32 model's input dims)")
    a.add_argument("--detections", action="store_true", help="also detection agreement (YOLO heads)")
    split = a.add_mutually_exclusive_group()
    split.add_argument("--split-yolo", action="store_true", help="also SQNR of the box and score parts")
    split.add_argument("--box-outputs", help="comma-separated output names that are boxes (the rest: scores)")
    a = a.parse_args()

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    ref = ort.InferenceSession(a.fp32, opts, providers=["CPUExecutionProvider"])
    cand = ort.InferenceSession(a.candidate, opts, providers=["CPUExecutionProvider"])
    inp = ref.get_inputs()[0]
    if a.size:
        h, w = (int(v) for v in a.size.split(","))
    else:
        dims = [d if isinstance(d, int) and d > 0 else 640 for d in inp.shape]
        h, w = dims[2], dims[3]
    cand_name = cand.get_inputs()[0].name
    out_names = [o.name for o in ref.get_outputs()]
    box_outputs = set(a.box_outputs.split(",")) if a.box_outputs else set()
    missing = box_outputs - set(out_names)
    if missing:
        sys.exit(f"--box-outputs: no output named {sorted(missing)} (outputs: {out_names})")
    if a.box_outputs and box_outputs == set(out_names):
        sys.exit("--box-outputs names every output: nothing is left for scores")
    if [o.name for o in cand.get_outputs()] != out_names:
        sys.exit(f"the candidate's outputs {[o.name for o in cand.get_outputs()]} are not the FP32 model's {out_names}")

    grey = np.full((1, 3, h, w), 114 / 255.0, dtype=np.float32)
    ys_grey = [y.astype(np.float64) for y in ref.run(None, {inp.name: grey})]
    agreement = Agreement() if a.detections else None
    signal = noise = base = 0.0
    # [signal, noise] of the box and the score parts (--split-yolo / --box-outputs).
    parts = {"boxes": [0.0, 0.0], "scores": [0.0, 0.0]}
    split = a.split_yolo or bool(box_outputs)
    samples = 0
    for f in photos(a.photos):
        with Image.open(f) as im:
            img = im.convert("RGB")
        for v in views(img):
            x = prep(v, h, w, a.resize)
            ys = ref.run(None, {inp.name: x})
            yq = cand.run(None, {cand_name: x})
            if agreement:
                agreement.add(ys[0], yq[0])
            for name, y, q, g in zip(out_names, ys, yq, ys_grey):
                y = y.astype(np.float64)
                d2 = (y - q.astype(np.float64)) ** 2
                signal += float(np.sum(y * y))
                noise += float(np.sum(d2))
                base += float(np.sum((y - g) ** 2))
                if box_outputs:
                    part = parts["boxes" if name in box_outputs else "scores"]
                    part[0] += float(np.sum(y * y))
                    part[1] += float(np.sum(d2))
            if a.split_yolo:
                for key, idx in yolo_split(ys[0].shape).items():
                    y = ys[0][idx].astype(np.float64)
                    parts[key][0] += float(np.sum(y * y))
                    parts[key][1] += float(np.sum((y - yq[0][idx].astype(np.float64)) ** 2))
            samples += 1
    if samples == 0:
        sys.exit(f"no JPEG/PNG photos in {a.photos}")
    db = lambda n: 10 * math.log10(signal / n) if n > 0 else None  # noqa: E731
    result = {"samples": samples, "size": [h, w], "sqnr_db": db(noise), "baseline_db": db(base)}
    if split:
        for key, (sig, n) in parts.items():
            result[f"sqnr_{key}_db"] = 10 * math.log10(sig / n) if n > 0 and sig > 0 else None
    if agreement:
        result.update(agreement.result())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
