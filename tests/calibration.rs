//! Calibration on real photos: ranges against ONNX Runtime's calibrator,
//! the JSON/TensorRT-cache round trip, and bad calibration data.

mod common;

use std::path::Path;
use std::process::Command;

use qforge_runtime::{Dataset, Preprocess, Source, write_npy};

/// Preprocesses the photos exactly as `calibrate` does and writes one `.npy`
/// per image, so both calibrators see the same input tensors.
fn photos_as_npy(photos: &Path, dir: &Path, shape: &[usize]) -> usize {
    let ds = Dataset::open(&Source::Images(photos.to_path_buf()), shape, &Preprocess::default()).unwrap();
    for i in 0..ds.len() {
        let t = ds.load(i).unwrap();
        write_npy(&dir.join(format!("{i:03}.npy")), &t.shape, t.as_f32().unwrap()).unwrap();
    }
    ds.len()
}

fn run_ok(args: &[&str]) -> String {
    let o = common::qforge().args(args).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "qforge {args:?} failed:\n{out}\n{}", String::from_utf8_lossy(&o.stderr));
    out
}

/// The engines this build can calibrate with (`ort` with the feature, when
/// its library is found; a loud SKIP otherwise).
fn engines() -> Vec<&'static str> {
    #[cfg(feature = "ort")]
    match qforge_runtime::ort_library_path() {
        Ok(_) => vec!["tract", "ort"],
        Err(e) => {
            common::skip(&format!("engine ort: {e}"));
            vec!["tract"]
        }
    }
    #[cfg(not(feature = "ort"))]
    {
        common::skip("engine ort: built without the `ort` feature (cargo test --features ort)");
        vec!["tract"]
    }
}

#[test]
fn max_ranges_match_onnxruntime_minmax_on_nudenet() {
    let Some(model) = common::model("nudenet-320n.onnx") else { return };
    let Some(photos) = common::photos() else { return };
    if !common::python_ort() {
        return;
    }
    let dir = common::tempdir();
    let npy = dir.path().join("npy");
    std::fs::create_dir(&npy).unwrap();
    let n = photos_as_npy(&photos, &npy, &[1, 3, 320, 320]);
    assert!(n >= 5);
    let o = Command::new("python3")
        .arg(common::root().join("tests/py/ort_minmax.py"))
        .arg(&model)
        .arg(&npy)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let theirs: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for engine in engines() {
        let pipe = dir.path().join("p.yaml");
        let table = format!("table-{engine}.json");
        std::fs::write(&pipe, format!("passes:\n  - calibrate: {{method: max, tensors: all, json: {table}}}\n"))
            .unwrap();
        let out = dir.path().join("out.onnx");
        run_ok(&[
            "run",
            pipe.to_str().unwrap(),
            "-i",
            model.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--calib",
            npy.to_str().unwrap(),
            "--input-shape",
            "images=1,3,320,320",
            "--engine",
            engine,
            "-q",
        ]);
        common::check_valid(&out, Some(&model));
        let ours: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join(&table)).unwrap()).unwrap();
        let mut compared = 0;
        let mut worst = (String::new(), 0.0f64);
        for (name, e) in ours["tensors"].as_object().unwrap() {
            let Some(t) = theirs.get(name).and_then(|v| v.as_f64()) else { continue };
            let a = e["amax"].as_f64().unwrap();
            let rel = (a - t).abs() / t.abs().max(1e-12);
            if rel > worst.1 {
                worst = (name.clone(), rel);
            }
            compared += 1;
        }
        eprintln!(
            "engine {engine}: compared {compared} tensor ranges with ONNX Runtime MinMax; worst {} at {:.2e} relative",
            worst.0, worst.1
        );
        assert!(compared >= 100, "engine {engine}: only {compared} tensors in common");
        assert!(
            worst.1 <= 1e-5,
            "engine {engine}: max range of {} differs from ONNX Runtime by {:e} relative",
            worst.0,
            worst.1
        );
    }
}

#[test]
fn table_and_trt_cache_are_written_and_load_back() {
    let Some(model) = common::model("yolov5n-untrained-unfused-bn.onnx") else { return };
    let Some(photos) = common::photos() else { return };
    let dir = common::tempdir();
    let out = dir.path().join("y.onnx");
    let stdout = run_ok(&[
        "run",
        "pipelines/calibrate.yaml",
        "-i",
        model.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--calib",
        photos.to_str().unwrap(),
        "--set",
        "calibrate.data.limit=4",
    ]);
    assert!(stdout.contains("samples 4"), "{stdout}");
    common::check_valid(&out, Some(&model));
    let cache = std::fs::read_to_string(dir.path().join("calibration.cache")).unwrap();
    assert!(cache.starts_with("TRT-8601-EntropyCalibration2\n"), "{cache}");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("calibration.json")).unwrap()).unwrap();
    let tensors = json["tensors"].as_object().unwrap();
    assert!(tensors.len() > 50);
    // Every cache line is the table's scale as big-endian f32 hex.
    for line in cache.lines().skip(1) {
        let (name, hex) = line.rsplit_once(": ").unwrap();
        let scale = f32::from_bits(u32::from_str_radix(hex, 16).unwrap());
        let want = tensors[name]["scale"].as_f64().unwrap() as f32;
        assert_eq!(scale, want, "{name}");
    }
    // Both files load back through load-calibration.
    for file in ["calibration.json", "calibration.cache"] {
        let pipe = dir.path().join("load.yaml");
        let p = dir.path().join(file);
        std::fs::write(
            &pipe,
            format!("passes:\n  - load-calibration: {{path: {:?}, strict: true}}\n", p.to_str().unwrap()),
        )
        .unwrap();
        let o2 = dir.path().join("o2.onnx");
        let s = run_ok(&["run", pipe.to_str().unwrap(), "-i", out.to_str().unwrap(), "-o", o2.to_str().unwrap()]);
        assert!(s.contains(&format!("tensors {}", tensors.len())), "{file}: {s}");
        common::check_valid(&o2, Some(&out));
    }
}

/// Samples run on several threads but are folded in in sample order (the
/// first sample fixes each histogram's bins): one thread and three give the
/// same table, byte for byte, on every engine.
#[test]
fn calibration_does_not_depend_on_the_number_of_threads() {
    let Some(model) = common::model("yolov5n-untrained-unfused-bn.onnx") else { return };
    let Some(photos) = common::photos() else { return };
    for engine in engines() {
        let tables: Vec<Vec<u8>> = ["1", "3"]
            .iter()
            .map(|threads| {
                let dir = common::tempdir();
                let out = dir.path().join("y.onnx");
                let o = common::qforge()
                    .env("RAYON_NUM_THREADS", threads)
                    .args(["run", "pipelines/calibrate.yaml", "-i", model.to_str().unwrap(), "-o"])
                    .arg(&out)
                    .args(["--calib", photos.to_str().unwrap(), "--engine", engine])
                    .args(["--set", "calibrate.data.limit=5", "--set", "calibrate.data.views=true"])
                    .output()
                    .unwrap();
                assert!(o.status.success(), "{engine}, {threads} thread(s): {}", String::from_utf8_lossy(&o.stderr));
                std::fs::read(dir.path().join("calibration.json")).unwrap()
            })
            .collect();
        assert!(tables[0] == tables[1], "{engine}: the table changed with the number of threads");
    }
}

fn calib_error(model: &Path, data: &Path, extra: &[&str], needle: &str) {
    let dir = common::tempdir();
    let out = dir.path().join("o.onnx");
    let o = common::qforge()
        .args([
            "run",
            "pipelines/calibrate.yaml",
            "-i",
            model.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--calib",
            data.to_str().unwrap(),
        ])
        .args(extra)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.lines().any(|l| l.starts_with("error:") && l.contains(needle)), "expected {needle:?} in:\n{err}");
    assert!(!out.exists());
}

#[test]
fn bad_calibration_data_gives_clear_errors() {
    let Some(model) = common::model("yolov5n-untrained-unfused-bn.onnx") else { return };
    let dir = common::tempdir();
    // A folder with no images.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(empty.join("notes.txt"), "hello").unwrap();
    calib_error(&model, &empty, &[], "no .jpg/.jpeg/.png images in");
    // An .npy of the wrong shape.
    let npy = dir.path().join("wrong.npy");
    write_npy(&npy, &[1, 3, 32, 32], &vec![0.0; 3 * 32 * 32]).unwrap();
    calib_error(&model, &npy, &[], "does not fit the model input [1, 3, 640, 640]");
    // An image size that does not fit the model.
    let one = dir.path().join("one");
    std::fs::create_dir(&one).unwrap();
    image::RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3])).save(one.join("a.png")).unwrap();
    calib_error(
        &model,
        &one,
        &["--set", "calibrate.data.size=[320,320]"],
        "image size 320x320 does not fit the model input",
    );
    // Only corrupt images: each is skipped with a warning, then a clear error.
    let bad = dir.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(bad.join("broken.jpg"), b"\xff\xd8\xff\xe0 not really a jpeg").unwrap();
    calib_error(&model, &bad, &[], "no usable calibration sample among 1");
}

#[test]
fn a_corrupt_image_among_good_ones_is_skipped_with_a_warning() {
    let Some(model) = common::model("yolov5n-untrained-unfused-bn.onnx") else { return };
    let dir = common::tempdir();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8, y as u8, 7])).save(data.join("good.png")).unwrap();
    std::fs::write(data.join("broken.jpg"), b"\xff\xd8\xff\xe0 not really a jpeg").unwrap();
    let out = dir.path().join("o.onnx");
    let o = common::qforge()
        .args([
            "run",
            "pipelines/calibrate.yaml",
            "-i",
            model.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--calib",
            data.to_str().unwrap(),
            "--set",
            "calibrate.method=max",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("warning: skipping") && err.contains("broken.jpg"), "{err}");
    assert!(stdout.contains("samples 1") && stdout.contains("samples skipped 1"), "{stdout}");
    common::check_valid(&out, Some(&model));
}

/// A raw torch export has no value_info: shape arithmetic (int64 Concat
/// inputs in the head's Shape chains) is among the calibration targets
/// until `infer-shapes` types it. Typed, it is left out as not float
/// without being fetched on every run; before, the 640×640 YOLOv8s export
/// fetched 34 such tensors per sample. The table is the same on both engines.
#[test]
fn shape_arithmetic_of_a_raw_export_is_not_fetched() {
    let Some(model) = common::model("yolov8s-torch-export-random.onnx") else { return };
    let Some(photos) = common::photos() else { return };
    let mut tables = Vec::new();
    for engine in engines() {
        let dir = common::tempdir();
        let pipe = dir.path().join("max.yaml");
        std::fs::write(&pipe, "passes:\n  - calibrate: {method: max, json: calibration.json, data: {limit: 2}}\n")
            .unwrap();
        let out = dir.path().join("y.onnx");
        let stdout = run_ok(&[
            "run",
            pipe.to_str().unwrap(),
            "-i",
            model.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--calib",
            photos.to_str().unwrap(),
            "--engine",
            engine,
        ]);
        let fetched: usize = stdout
            .split(" fetched;")
            .next()
            .and_then(|s| s.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{engine}: no fetch count in the notes:\n{stdout}"));
        // At most the graph output (a target only when it is also an activation).
        assert!(fetched <= 1, "{engine}: {fetched} tensors fetched after every run:\n{stdout}");
        // No pass after it compares against the float outputs: none are kept.
        assert!(!stdout.contains("kept the float model's outputs"), "{engine}:\n{stdout}");
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("calibration.json")).unwrap()).unwrap();
        let names: Vec<String> = json["tensors"].as_object().unwrap().keys().cloned().collect();
        assert!(names.len() > 100, "{engine}: {} tensors", names.len());
        tables.push(names);
    }
    assert!(tables.windows(2).all(|w| w[0] == w[1]), "the engines calibrated different tensors");
}
