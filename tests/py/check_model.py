"""Checks that a model file written by qforge is valid ONNX.

    python3 tests/py/check_model.py OUT.onnx [--input IN.onnx]

Runs `onnx.checker.check_model(path, full_check=True)` (structure plus strict
shape inference) and opens an `onnxruntime.InferenceSession` (which refuses
models the checker lets through, e.g. a value_info with element type 0).
With --input, the model the output was made from is checked the same way,
so the caller can tell a problem qforge introduced from one it inherited.

Prints one line per model and check, tab-separated (so the Rust side needs
no JSON parser): `output|input  checker|ort  ok`, or the same with `fail`,
the rule and the message. A rule is the message without the specifics that
differ between two models failing the same way (file path, node and tensor
names, numbers). Exits 3 when onnx or onnxruntime cannot be imported (the
caller skips), else 0.
"""
import re
import sys

try:
    import onnx
    import onnxruntime as ort
except ImportError as e:  # the Rust side prints the loud SKIP
    print(f"missing Python package: {e}", file=sys.stderr)
    sys.exit(3)


def first_line(e):
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def rule(msg):
    if msg is None:
        return None
    msg = re.sub(r"\(op_type:[^)]*\)", "(op)", msg)
    msg = re.sub(r'"[^"]*"', '""', msg)
    return re.sub(r"\d+", "N", msg)


def check(path):
    out = {"checker": None, "ort": None}
    try:
        onnx.checker.check_model(path, full_check=True)
    except Exception as e:  # noqa: BLE001 - every checker failure is reported
        out["checker"] = first_line(e)
    try:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001
        out["ort"] = first_line(e).replace(path, "<model>")
    return out


def main():
    args = sys.argv[1:]
    inp = None
    if "--input" in args:
        i = args.index("--input")
        inp = args[i + 1]
        del args[i:i + 2]
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    models = [("output", args[0])] + ([("input", inp)] if inp else [])
    for who, path in models:
        for what, msg in check(path).items():
            if msg is None:
                print(f"{who}\t{what}\tok")
            else:
                flat = " ".join(msg.split())
                print(f"{who}\t{what}\tfail\t{rule(flat)}\t{flat}")


if __name__ == "__main__":
    main()
