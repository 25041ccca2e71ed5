"""A user's own metric for `skip-sensitive`, as the README describes it:

    python3 tests/py/sqnr_metric.py CANDIDATE.onnx FLOAT.onnx

Runs both models in ONNX Runtime on four seeded random images (the input's
symbolic dims fixed by --shape, default 1,3,320,320), and prints the output
SQNR in dB of the candidate against the float model as its last line
(`sqnr_db 23.41`). qforge reads that number; higher is better.
"""
import argparse

import numpy as np
import onnxruntime as ort


def outputs(path, feeds):
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return [s.run(None, {name: x}) for x in feeds]


def sqnr_db(ref, test):
    sig = noise = 0.0
    for a, b in zip(ref, test):
        for x, y in zip(a, b):
            x = x.astype(np.float64)
            y = y.astype(np.float64)
            sig += float((x * x).sum())
            noise += float(((x - y) ** 2).sum())
    return float("inf") if noise == 0 else 10 * np.log10(sig / noise)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("candidate")
    ap.add_argument("float_model")
    ap.add_argument("--shape", default="1,3,320,320")
    a = ap.parse_args()
    shape = [int(d) for d in a.shape.split(",")]
    rng = np.random.default_rng(7)
    feeds = [rng.random(shape, dtype=np.float32) for _ in range(4)]
    print(f"scoring {a.candidate}")
    print(f"sqnr_db {sqnr_db(outputs(a.float_model, feeds), outputs(a.candidate, feeds)):.4f}")


if __name__ == "__main__":
    main()
