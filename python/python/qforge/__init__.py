"""qforge: compile ONNX detectors for TensorRT from Python.

The same tool as the `qforge` command (installed with this package), as
functions::

    import qforge
    report = qforge.run("yolo-int8", "yolov8n.onnx", "yolov8n.int8.onnx",
                        calib="photos/", input_shape={"images": (1, 3, 640, 640)})
    print(report["runs"][-1]["notes"])
    g = qforge.Graph("yolov8n.int8.onnx")
    print(g, g.ops()["QuantizeLinear"], g.precisions())

Pipelines are YAML files or the names of the built-in ones
(`qforge.pipelines()`); passes and their options are listed by
`qforge.passes()`. A failed run raises `QforgeError` with the command's
one-line message; Ctrl-C stops a run at its next pass, sample or trial and
raises `KeyboardInterrupt`, writing nothing.

The sensitive-layer search can score candidates with your own evaluation:
`qforge.run(..., metric=my_map)` calls `my_map(model_path) -> float` (higher
is better) on each candidate model, in this process.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Union

from . import _qforge
from ._qforge import Graph, Node, QforgeError, UsageError

__version__ = _qforge.__version__
__all__ = [
    "Graph",
    "Node",
    "QforgeError",
    "UsageError",
    "metrics",
    "passes",
    "pipelines",
    "run",
]

PathLike = Union[str, "os.PathLike[str]"]


def passes() -> list:
    """The registered passes: dicts with `name`, `about`, `options`
    (`{option: {"default": ..., "doc": ...}}`) and `takes_calib`."""
    return _qforge.passes()


def metrics() -> Dict[str, str]:
    """The built-in output metrics (`metric: NAME` in a pipeline) and what each measures."""
    return _qforge.metrics()


def pipelines() -> Dict[str, str]:
    """The built-in pipelines by name, as YAML text (usable by name in `run`)."""
    return _qforge.pipelines()


def _yaml_value(v: Any) -> str:
    # JSON is YAML: numbers, booleans, lists and mappings pass unchanged;
    # a string is given as YAML text (so "max" and "{views: true}" both work).
    return v if isinstance(v, str) else json.dumps(v)


def run(
    pipeline: PathLike,
    model: PathLike,
    output: PathLike,
    *,
    calib: Optional[PathLike] = None,
    set: Optional[Mapping[str, Any]] = None,
    engine: str = "auto",
    input_shape: Optional[Mapping[str, Sequence[int]]] = None,
    check_numerics: bool = False,
    seed: Optional[int] = None,
    quiet: bool = False,
    metric: Optional[Callable[[str], float]] = None,
    args: Sequence[str] = (),
) -> Dict[str, Any]:
    """Runs `pipeline` (a YAML file or a built-in name) on `model` and
    writes `output` (atomically; nothing on failure). Returns the run report
    (the JSON of `qforge run --report`) as a dict.

    calib: folder of photos or .npy samples for the passes that read data.
    set: option overrides, `{"calibrate.method": "mse"}` (`--set`).
    engine: "auto" (ONNX Runtime when its library is found, else tract),
        "tract" or "ort".
    input_shape: fixed dims for symbolic inputs, `{"images": (1, 3, 640, 640)}`.
    metric: `f(model_path) -> float`, higher is better: the sensitive-layer
        search (`skip-sensitive`) scores each candidate model with it.
    args: further `qforge run` arguments, verbatim.
    """
    argv = ["qforge", "run", os.fspath(pipeline), "-i", os.fspath(model), "-o", os.fspath(output)]
    argv += ["--engine", engine]
    if calib is not None:
        argv += ["--calib", os.fspath(calib)]
    for name, dims in (input_shape or {}).items():
        argv += ["--input-shape", f"{name}={','.join(str(int(d)) for d in dims)}"]
    for key, value in (set or {}).items():
        argv += ["--set", f"{key}={_yaml_value(value)}"]
    if check_numerics:
        argv.append("--check-numerics")
    if seed is not None:
        argv += ["--seed", str(int(seed))]
    if quiet:
        argv.append("-q")
    argv += list(args)
    callback = None
    if metric is not None:
        if not callable(metric):
            raise TypeError("metric must be a function model_path -> float")
        callback = f"python-{id(metric):x}"
        _qforge.register_metric(callback, metric)
        argv += ["--set", f"skip-sensitive.metric={{callback: {callback}}}"]
    with tempfile.TemporaryDirectory(prefix="qforge-") as tmp:
        report = os.path.join(tmp, "report.json")
        argv += ["--report", report]
        try:
            _qforge.run_cli(argv)
        finally:
            if callback is not None:
                _qforge.unregister_metric(callback)
        with open(report, encoding="utf-8") as f:
            return json.load(f)
