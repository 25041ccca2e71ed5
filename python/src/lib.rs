//! `qforge._qforge`: the native half of the `qforge` Python package.
//!
//! It stays thin on purpose: everything a run does goes through the same
//! entry point as the `qforge` binary ([`qforge::cli::try_main`]), so the
//! Python API and the command cannot drift apart: same passes, same
//! pipelines, same one-line errors, same progress bars, same run report
//! (the API reads the JSON report the run writes). What is Python-specific
//! lives here: turning errors into exceptions, Ctrl-C into a cooperative
//! stop, a Python function into a model metric, and a small read-only view
//! of a model ([`Graph`]).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyKeyboardInterrupt};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use qforge::cli::Failure;
use qforge::passes::{interrupt, model_metric};

create_exception!(_qforge, QforgeError, PyException, "A qforge command failed; the message is the CLI's error line.");
create_exception!(
    _qforge,
    UsageError,
    QforgeError,
    "The arguments are wrong (an unknown option, a bad value); the message is the CLI's usage text."
);

/// The plugins the wheel's `qforge` links: the same as the default binary.
const PLUGINS: &[qforge::cli::Register] = &[qforge_yolo::register];

/// One run at a time per process: the interrupt flag and metric callbacks
/// are process-wide.
static RUNNING: Mutex<()> = Mutex::new(());

/// The `qforge` command (the wheel's console script): runs `argv` (first
/// item: the program name) and returns the exit code. Errors are printed as
/// the binary prints them; Ctrl-C ends the process (the script restores
/// Python's default SIGINT handling before calling this).
#[pyfunction]
fn main(py: Python<'_>, argv: Vec<String>) -> u8 {
    py.detach(|| qforge::cli::exit_code(PLUGINS, argv))
}

/// Runs a command line like `main`, but raises `QforgeError` (or
/// `UsageError`) with the CLI's message instead of printing it, returns
/// help text instead of printing it, and turns Ctrl-C into a stop at the
/// next pass, sample or trial (`KeyboardInterrupt`, nothing written).
#[pyfunction]
fn run_cli(py: Python<'_>, argv: Vec<String>) -> PyResult<Option<String>> {
    // Wait for another thread's run without holding the GIL (its metric
    // callback may need it).
    let _one = loop {
        match RUNNING.try_lock() {
            Ok(g) => break g,
            Err(std::sync::TryLockError::Poisoned(e)) => break e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => py.detach(|| std::thread::sleep(Duration::from_millis(50))),
        }
    };
    interrupt::clear();
    let (tx, rx) = std::sync::mpsc::channel();
    let args: Vec<OsString> = argv.into_iter().map(OsString::from).collect();
    let worker = std::thread::Builder::new()
        .name("qforge-run".into())
        .spawn(move || {
            let _ = tx.send(qforge::cli::try_main(PLUGINS, args));
        })
        .map_err(|e| QforgeError::new_err(format!("cannot start the run: {e}")))?;
    // A Receiver is not Sync; the GIL-free wait borrows it through a Mutex.
    let rx = Mutex::new(rx);
    let mut interrupted = None;
    let outcome = loop {
        let next = py.detach(|| match rx.lock() {
            Ok(rx) => rx.recv_timeout(Duration::from_millis(100)),
            Err(_) => Err(std::sync::mpsc::RecvTimeoutError::Disconnected),
        });
        match next {
            Ok(r) => break r,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if interrupted.is_none()
                    && let Err(e) = py.check_signals()
                {
                    interrupt::request();
                    interrupted = Some(e);
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                break Err(Failure::Error("internal error in qforge: the run ended without a result".into()));
            }
        }
    };
    let _ = worker.join();
    interrupt::clear();
    if let Some(e) = interrupted {
        return Err(e);
    }
    match outcome {
        Ok(()) => Ok(None),
        Err(Failure::Help(text)) => Ok(Some(text)),
        Err(Failure::Usage(text)) => Err(UsageError::new_err(text.trim_end().to_string())),
        Err(Failure::Error(msg)) if msg == "interrupted" => Err(PyKeyboardInterrupt::new_err("qforge run interrupted")),
        Err(Failure::Error(msg)) => Err(QforgeError::new_err(msg)),
    }
}

/// Makes `f(model_path: str) -> float` available to pipelines as
/// `metric: {callback: NAME}`. Exceptions it raises fail the run with
/// their message.
#[pyfunction]
fn register_metric(name: &str, f: Py<PyAny>) {
    let f = Arc::new(f);
    model_metric::register_callback(
        name,
        Arc::new(move |p: &Path| {
            Python::attach(|py| {
                let r = f.call1(py, (p.to_string_lossy().into_owned(),)).map_err(|e| describe(py, &e))?;
                r.extract::<f64>(py).map_err(|_| {
                    let shown = r.bind(py).repr().map(|s| s.to_string()).unwrap_or_else(|_| "?".into());
                    format!("the Python metric returned {shown}, not a number")
                })
            })
        }),
    );
}

/// Forgets the metric `name`.
#[pyfunction]
fn unregister_metric(name: &str) {
    model_metric::unregister_callback(name);
}

fn describe(py: Python<'_>, e: &PyErr) -> String {
    let ty = e.get_type(py).name().map(|n| n.to_string()).unwrap_or_else(|_| "Exception".into());
    format!("the Python metric raised {ty}: {}", e.value(py))
}

/// Links the built-in passes and the plugins' passes and metrics (their
/// registrations are what `passes()` and `metrics()` list).
fn link_plugins() {
    qforge::passes::builtin::link();
    let mut q = qforge::cli::Plugin::default();
    for register in PLUGINS {
        register(&mut q);
    }
}

/// The registered passes: name, one-line description, options with their
/// defaults and documentation, and whether `--calib` feeds it.
#[pyfunction]
fn passes(py: Python<'_>) -> PyResult<Vec<Py<PyDict>>> {
    link_plugins();
    qforge::passes::all_passes()
        .into_iter()
        .map(|p| {
            let d = PyDict::new(py);
            d.set_item("name", p.name)?;
            d.set_item("about", p.about)?;
            let defaults = (p.defaults)();
            let options = PyDict::new(py);
            for (opt, doc) in p.docs {
                let o = PyDict::new(py);
                o.set_item("default", json_to_py(py, defaults.get(*opt).unwrap_or(&serde_json::Value::Null))?)?;
                o.set_item("doc", *doc)?;
                options.set_item(*opt, o)?;
            }
            d.set_item("options", options)?;
            d.set_item("takes_calib", p.calib.is_some())?;
            Ok(d.unbind())
        })
        .collect()
}

/// The registered output metrics: name → description.
#[pyfunction]
fn metrics() -> BTreeMap<String, String> {
    link_plugins();
    qforge::passes::all_metrics().into_iter().map(|m| (m.name.to_string(), m.about.to_string())).collect()
}

/// The built-in pipelines: name → YAML text.
#[pyfunction]
fn pipelines() -> BTreeMap<String, String> {
    qforge::BUILTIN_PIPELINES.iter().map(|(n, t)| (n.to_string(), t.to_string())).collect()
}

fn json_to_py(py: Python<'_>, v: &serde_json::Value) -> PyResult<Py<PyAny>> {
    let json = py.import("json")?;
    Ok(json.call_method1("loads", (v.to_string(),))?.unbind())
}

/// One node of a [`Graph`].
#[pyclass(frozen, get_all, module = "qforge")]
struct Node {
    /// Node name.
    name: String,
    /// Operator type (`Conv`, `QuantizeLinear`, …).
    op: String,
    /// Input value names (`""` for an omitted optional input).
    inputs: Vec<String>,
    /// Output value names.
    outputs: Vec<String>,
    /// `INT8`, `FP16` or `FP32` for weighted layers (Conv, ConvTranspose,
    /// MatMul, Gemm), as TensorRT will run them; `None` for other ops.
    precision: Option<String>,
}

#[pymethods]
impl Node {
    fn __repr__(&self) -> String {
        match &self.precision {
            Some(p) => format!("<Node {} {} {p}>", self.op, self.name),
            None => format!("<Node {} {}>", self.op, self.name),
        }
    }
}

/// A model loaded for inspection (read-only): its nodes, op histogram and
/// the precision of each weighted layer.
#[pyclass(frozen, module = "qforge")]
struct Graph {
    path: PathBuf,
    nodes: Vec<Py<Node>>,
    inputs: Vec<String>,
    outputs: Vec<String>,
    opset: i64,
}

#[pymethods]
impl Graph {
    /// Loads an ONNX file (external data beside it is read too).
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<Graph> {
        let model = py
            .detach(|| qforge::ir::load(&path))
            .map_err(|e| QforgeError::new_err(format!("loading {}: {e}", path.display())))?;
        let g = &model.graph;
        let mut nodes = Vec::new();
        for n in g.nodes() {
            let node = g.node(n);
            let name = |v: Option<qforge::ir::ValueId>| v.map(|v| g.value_name(v).to_string()).unwrap_or_default();
            nodes.push(Py::new(
                py,
                Node {
                    name: node.name().to_string(),
                    op: node.op_type().to_string(),
                    inputs: node.inputs().iter().map(|&v| name(v)).collect(),
                    outputs: node.outputs().iter().map(|&v| name(v)).collect(),
                    precision: qforge::passes::tensorrt::legality::layer_precision(g, n, false).map(str::to_string),
                },
            )?);
        }
        Ok(Graph {
            path,
            nodes,
            inputs: g.runtime_inputs().iter().map(|&v| g.value_name(v).to_string()).collect(),
            outputs: g.outputs().iter().map(|p| g.value_name(p.value).to_string()).collect(),
            opset: g.opset("").unwrap_or(0),
        })
    }

    /// The nodes, in graph order.
    #[getter]
    fn nodes(&self, py: Python<'_>) -> Vec<Py<Node>> {
        self.nodes.iter().map(|n| n.clone_ref(py)).collect()
    }

    /// Names of the inputs fed at run time (initializers excluded).
    #[getter]
    fn inputs(&self) -> Vec<String> {
        self.inputs.clone()
    }

    /// Names of the graph outputs.
    #[getter]
    fn outputs(&self) -> Vec<String> {
        self.outputs.clone()
    }

    /// The default-domain opset.
    #[getter]
    fn opset(&self) -> i64 {
        self.opset
    }

    /// How many nodes of each op type: `{"Conv": 57, …}`.
    fn ops(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for n in &self.nodes {
            *m.entry(n.get().op.clone()).or_default() += 1;
        }
        m
    }

    /// Precision of each weighted layer by node name: `{"/model.0/conv/Conv": "INT8", …}`.
    fn precisions(&self) -> BTreeMap<String, String> {
        self.nodes.iter().filter_map(|n| n.get().precision.clone().map(|p| (n.get().name.clone(), p))).collect()
    }

    fn __len__(&self) -> usize {
        self.nodes.len()
    }

    fn __repr__(&self) -> String {
        let p = self.precisions();
        let count = |k: &str| p.values().filter(|v| *v == k).count();
        format!(
            "<Graph {} : {} nodes, opset {}, weighted layers INT8 {} / FP16 {} / FP32 {}>",
            self.path.display(),
            self.nodes.len(),
            self.opset,
            count("INT8"),
            count("FP16"),
            count("FP32")
        )
    }
}

#[pymodule]
fn _qforge(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("QforgeError", m.py().get_type::<QforgeError>())?;
    m.add("UsageError", m.py().get_type::<UsageError>())?;
    m.add_function(wrap_pyfunction!(main, m)?)?;
    m.add_function(wrap_pyfunction!(run_cli, m)?)?;
    m.add_function(wrap_pyfunction!(register_metric, m)?)?;
    m.add_function(wrap_pyfunction!(unregister_metric, m)?)?;
    m.add_function(wrap_pyfunction!(passes, m)?)?;
    m.add_function(wrap_pyfunction!(metrics, m)?)?;
    m.add_function(wrap_pyfunction!(pipelines, m)?)?;
    m.add_class::<Graph>()?;
    m.add_class::<Node>()?;
    Ok(())
}
