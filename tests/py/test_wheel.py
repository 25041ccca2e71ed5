"""The installed wheel, as a user meets it (run by tests/wheel.rs with the
virtual environment's python, from an empty folder):

    python test_wheel.py ASSETS TMPDIR

Checks the `qforge` command the wheel puts on PATH, `import qforge`, the API
(`run`, `passes`, `pipelines`, `Graph`), errors as exceptions, Ctrl-C, and
the user's own metric both ways: `metric: {command: ...}` from the command
line and `metric=callable` from Python. Each check asserts; any failure
exits non-zero with a traceback.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import onnx
import onnxruntime as ort

ASSETS, TMP = sys.argv[1], sys.argv[2]
MODEL = os.path.join(ASSETS, "models", "nudenet-320n.onnx")
PHOTOS = os.path.join(ASSETS, "photos")
HERE = os.path.dirname(os.path.abspath(__file__))
SHAPE = {"images": (1, 3, 320, 320)}
BIN = os.path.join(os.path.dirname(sys.executable), "qforge")


def valid(path):
    onnx.checker.check_model(path, full_check=True)
    ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def notes_of(report, name):
    return [n for r in report["runs"] if r["pass"] == name for n in r["notes"]]


import qforge  # noqa: E402

# Installed in this environment, not found elsewhere (e.g. the source tree).
assert os.path.abspath(qforge.__file__).startswith(os.path.abspath(sys.prefix)), qforge.__file__
assert sys.prefix != sys.base_prefix, "not running in a virtual environment"
os.chdir(TMP)  # built-in pipelines must work from any folder

# --- the command ---------------------------------------------------------
v = subprocess.run([BIN, "--version"], capture_output=True, text=True, check=True)
assert v.stdout.strip() == f"qforge {qforge.__version__}", v.stdout
p = subprocess.run([BIN, "passes", "--pipelines"], capture_output=True, text=True, check=True)
for name in ["fold", "calibrate", "yolo-int8", "yolo-int8-trt8"]:
    assert f"\n{name}\n" in f"\n{p.stdout}", p.stdout
bad = subprocess.run([BIN, "run", "no-such-pipeline", "-i", MODEL, "-o", "x.onnx"], capture_output=True, text=True)
assert bad.returncode == 1 and bad.stderr.startswith("error: pipeline no-such-pipeline"), bad
assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
assert not os.path.exists("x.onnx")
usage = subprocess.run([BIN, "run", "--bogus"], capture_output=True, text=True)
assert usage.returncode == 2, usage

# The sensitive-layer search driven by the user's command (SQNR scored by
# tests/py/sqnr_metric.py with this interpreter).
metric = f'{sys.executable} {os.path.join(HERE, "sqnr_metric.py")} {{model}} {MODEL}'
cli = subprocess.run(
    [BIN, "run", "yolo-int8", "-i", MODEL, "-o", "cli.onnx", "--calib", PHOTOS,
     "--input-shape", "images=1,3,320,320", "-q", "--report", "cli.json",
     "--set", "skip-sensitive.top_k=2", "--set", "skip-sensitive.shortlist=3",
     "--set", "skip-sensitive.metric=" + json.dumps({"command": metric, "timeout": 300})],
    capture_output=True, text=True)
assert cli.returncode == 0, cli.stderr
valid("cli.onnx")
report = json.load(open("cli.json"))
notes = notes_of(report, "skip-sensitive")
assert any(n.startswith("everything quantized: command ") for n in notes), notes
print("command metric:", [n for n in notes if n.startswith(("everything", "after"))])

# --- the API -----------------------------------------------------------------
names = [p["name"] for p in qforge.passes()]
for n in ["fold-batchnorm", "calibrate", "insert-qdq", "skip-sensitive", "tensorrt"]:
    assert n in names, names
ss = next(p for p in qforge.passes() if p["name"] == "skip-sensitive")
assert ss["options"]["top_k"]["default"] == 3 and "command" in ss["options"]["metric"]["doc"], ss
assert "sqnr" in qforge.metrics() and "yolo-map50" in qforge.metrics()
assert qforge.pipelines()["yolo-int8"].startswith("name: yolo-int8")

calls = []


def my_metric(path):
    """In-process: SQNR of the candidate against the float model, on seeded inputs."""
    import numpy as np

    rng = np.random.default_rng(7)
    feeds = [rng.random((1, 3, 320, 320), dtype=np.float32) for _ in range(2)]

    def run(p):
        s = ort.InferenceSession(p, providers=["CPUExecutionProvider"])
        return [s.run(None, {s.get_inputs()[0].name: x})[0].astype(np.float64) for x in feeds]

    ref, test = run(MODEL), run(path)
    noise = sum(float(((a - b) ** 2).sum()) for a, b in zip(ref, test))
    sig = sum(float((a * a).sum()) for a in ref)
    calls.append(path)
    return 10 * np.log10(sig / max(noise, 1e-30))


t = time.time()
rep = qforge.run("yolo-int8", MODEL, "api.onnx", calib=PHOTOS, input_shape=SHAPE, engine="tract",
                 set={"skip-sensitive.top_k": 2, "skip-sensitive.shortlist": 3}, metric=my_metric, quiet=True)
print(f"API run with the tract engine and a Python metric: {time.time() - t:.1f} s, {len(calls)} metric calls")
assert isinstance(rep, dict) and [r["pass"] for r in rep["runs"]][-1] == "tensorrt", rep["runs"]
assert len(calls) >= 4, calls  # the all-quantized model and each of the 3 shortlisted layers at least
assert not any(os.path.exists(c) for c in calls), "candidate files are temporary"
notes = notes_of(rep, "skip-sensitive")
assert any(n.startswith("everything quantized: python-") for n in notes), notes
valid("api.onnx")
g = qforge.Graph("api.onnx")
prec = g.precisions()
assert g.ops().get("QuantizeLinear", 0) > 0 and list(prec.values()).count("INT8") > 10, (g, prec)
assert "FP16" in prec.values(), prec  # the default pipeline writes the float rest in FP16
assert all(n.precision is None for n in g.nodes if n.op not in ("Conv", "ConvTranspose", "MatMul", "Gemm"))
assert g.inputs == ["images"] and len(g) == len(g.nodes)
print(g)

# --- errors are exceptions carrying the CLI's line ---------------------------------
try:
    qforge.run("no-such-pipeline", MODEL, "e.onnx")
    raise AssertionError("no exception")
except qforge.QforgeError as e:
    assert str(e).startswith("pipeline no-such-pipeline: no such file"), e
try:
    qforge.run("fold", MODEL, "e.onnx", args=["--bogus"])
    raise AssertionError("no exception")
except qforge.UsageError as e:
    assert "--bogus" in str(e), e


def broken(path):
    raise ValueError("my validation set is missing")


try:
    qforge.run("yolo-int8", MODEL, "e.onnx", calib=PHOTOS, input_shape=SHAPE, metric=broken, quiet=True,
               set={"calibrate.data.views": False})
    raise AssertionError("no exception")
except qforge.QforgeError as e:
    assert "the Python metric raised ValueError: my validation set is missing" in str(e), e
try:
    qforge.run("fold", MODEL, "e.onnx", metric=my_metric)
    raise AssertionError("no exception")
except qforge.QforgeError as e:
    assert "skip-sensitive" in str(e) and "not in this pipeline" in str(e), e
assert not os.path.exists("e.onnx")
try:
    qforge.Graph("missing.onnx")
    raise AssertionError("no exception")
except qforge.QforgeError as e:
    assert "missing.onnx" in str(e), e

# --- Ctrl-C stops an API run: KeyboardInterrupt, nothing written ------------------
child = subprocess.Popen(
    [sys.executable, "-c",
     "import sys, qforge\n"
     "try:\n"
     f"    qforge.run('yolo-int8', {MODEL!r}, 'int.onnx', calib={PHOTOS!r}, input_shape={SHAPE!r},"
     " engine='tract', quiet=True)\n"
     "except KeyboardInterrupt:\n"
     "    print('interrupted'); sys.exit(3)\n"],
    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
time.sleep(4)
child.send_signal(signal.SIGINT)
t = time.time()
out, err = child.communicate(timeout=60)
print(f"Ctrl-C: stopped {time.time() - t:.1f} s after the signal")
assert child.returncode == 3 and out.strip() == "interrupted", (child.returncode, out, err)
assert not os.path.exists("int.onnx")
print("wheel OK")
