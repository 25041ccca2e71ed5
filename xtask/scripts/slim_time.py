"""Time onnxslim on one model, in-process: slim_time.py MODEL [--runs N] [--warmup N] [--fusion-only].

Used by `cargo xtask bench`. Each run loads the model with onnx (untimed: onnxslim mutates
its input), then times `onnxslim.slim(model)` + `onnx.save(...)`. Python start-up, imports
and the load are not in the timed part, which favours onnxslim against a qforge process.

By default onnxslim runs with its default arguments (constant folding, shape inference,
every graph-fusion pattern incl. FusionConvBN, dead-node elimination, ... iterated to a
fixed point). --fusion-only restricts it to what BatchNormalization fusion needs: only the
`constant_folding` and `graph_fusion` optimizations (constant folding is required: exporters
feed BN/Conv parameters through Identity/Constant nodes, and without it nothing fuses), only
the FusionConvBN and FusionConvTransposeBN patterns, and no shape inference.

Prints one JSON object on stdout (everything onnxslim prints goes to stderr).
"""

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time

BN_PATTERNS = ("FusionConvBN", "FusionConvTransposeBN")
KEEP_OPTIMIZATIONS = ("constant_folding", "graph_fusion")


def count(model, op):
    return sum(1 for n in model.graph.node if n.op_type == op)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--fusion-only", action="store_true")
    args = ap.parse_args()
    if args.runs < 1:
        sys.exit("--runs must be at least 1")

    import onnx
    import onnxslim

    kwargs = {}
    if args.fusion_only:
        from onnxslim.core import OptimizationSettings
        from onnxslim.core.pattern.registry import DEFAULT_FUSION_PATTERNS

        kwargs = dict(
            no_shape_infer=True,
            skip_optimizations=[k for k in OptimizationSettings.keys() if k not in KEEP_OPTIMIZATIONS],
            skip_fusion_patterns=[k for k in DEFAULT_FUSION_PATTERNS.keys() if k not in BN_PATTERNS],
        )

    fd, out = tempfile.mkstemp(suffix=".slim.onnx")
    os.close(fd)
    times, loads = [], []
    try:
        with contextlib.redirect_stdout(sys.stderr):
            for i in range(args.warmup + args.runs):
                t0 = time.perf_counter()
                model = onnx.load(args.model)
                t1 = time.perf_counter()
                slimmed = onnxslim.slim(model, **kwargs)
                onnx.save(slimmed, out)
                t2 = time.perf_counter()
                if i >= args.warmup:
                    times.append(t2 - t1)
                    loads.append(t1 - t0)
        original = onnx.load(args.model)
        result = onnx.load(out)
    finally:
        os.remove(out)

    print(
        json.dumps(
            {
                "model": args.model,
                "runs": args.runs,
                "warmup": args.warmup,
                "fusion_only": args.fusion_only,
                "median_s": statistics.median(times),
                "times_s": times,
                "load_median_s": statistics.median(loads),
                "nodes_before": len(original.graph.node),
                "nodes_after": len(result.graph.node),
                "bn_before": count(original, "BatchNormalization"),
                "bn_after": count(result, "BatchNormalization"),
                "onnxslim_version": onnxslim.__version__,
                "onnx_version": onnx.__version__,
                "python": sys.version.split()[0],
            }
        )
    )


if __name__ == "__main__":
    main()
