//! Calibration data: image folders and `.npy` tensors, turned into model
//! inputs one sample at a time.
//!
//! Nothing is loaded up front: a [`Dataset`] is a sorted list of sample
//! references (files, or rows of a stacked `.npy` read by offset), so memory
//! does not grow with the number of samples. Image preprocessing follows the
//! YOLO family's conventions by default (letterbox with grey 114 padding,
//! RGB, ×1/255, NCHW) and is configured per pipeline.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use image::{Rgb, RgbImage};

use crate::host::HostTensor;

/// Errors of data loading.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A problem with the data set as a whole (folder missing or empty, …).
    #[error("{0}")]
    Set(String),
    /// One sample cannot be used (corrupt image, …); callers may skip it.
    #[error("{path}: {reason}")]
    Sample {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Where the image is placed when letterboxing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PadPosition {
    /// Top-left corner, padding right and bottom (the reference evaluation scripts).
    #[default]
    TopLeft,
    /// Centred, padding split on both sides (Ultralytics' `letterbox`).
    Center,
}

/// How an image becomes a tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocess {
    /// Target `[height, width]`; `None` takes it from the model input.
    pub size: Option<[usize; 2]>,
    /// Keep the aspect ratio and pad (`true`), or stretch to the size.
    pub letterbox: bool,
    /// Padding value of the letterbox, per channel (0–255).
    pub pad_value: u8,
    /// Where the letterboxed image sits.
    pub pad_position: PadPosition,
    /// Channel order BGR instead of RGB.
    pub bgr: bool,
    /// Multiplier applied to 0–255 pixel values before mean/std.
    pub scale: f32,
    /// Subtracted per channel after scaling.
    pub mean: [f32; 3],
    /// Divided per channel after the mean.
    pub std: [f32; 3],
    /// NHWC instead of NCHW.
    pub nhwc: bool,
}

impl Default for Preprocess {
    fn default() -> Self {
        Preprocess {
            size: None,
            letterbox: true,
            pad_value: 114,
            pad_position: PadPosition::TopLeft,
            bgr: false,
            scale: 1.0 / 255.0,
            mean: [0.0; 3],
            std: [1.0; 3],
            nhwc: false,
        }
    }
}

/// Where samples come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A folder searched recursively for JPEG/PNG files.
    Images(PathBuf),
    /// A `.npy` file (one sample, or a stack along the first axis) or a folder of them.
    Npy(PathBuf),
}

/// One sample.
#[derive(Debug, Clone)]
enum Item {
    /// A photo and which of its views (0 = the photo itself, see [`view`]).
    Image(PathBuf, u8),
    Npy {
        path: PathBuf,
        offset: u64,
        f64: bool,
    },
}

/// An ordered, lazily loaded set of samples for one model input.
#[derive(Debug, Clone)]
pub struct Dataset {
    items: Vec<Item>,
    shape: Vec<usize>,
    prep: Preprocess,
    /// Files that were skipped while listing, with the reason.
    pub skipped: Vec<String>,
    /// The last photos decoded, shared by their views.
    decoded: Decoded,
}

/// The last few decoded photos, so the four views of a photo (consecutive
/// samples, often loaded by different workers at once) decode it once:
/// decoding is most of a sample's preparation. A view asked for while its
/// photo is being decoded waits for that decode instead of starting
/// another. Bounded ([`Decoded::KEEP`] photos), so memory stays flat in the
/// number of samples; a clone starts empty.
#[derive(Default)]
struct Decoded(Mutex<VecDeque<(PathBuf, DecodeCell)>>);

type DecodeCell = Arc<OnceLock<Result<Arc<RgbImage>, String>>>;

impl Decoded {
    const KEEP: usize = 4;

    fn get(&self, path: &Path, decode: impl FnOnce() -> Result<RgbImage, String>) -> Result<Arc<RgbImage>, String> {
        let cell = {
            let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
            match q.iter().find(|(p, _)| p == path) {
                Some((_, c)) => c.clone(),
                None => {
                    let c: DecodeCell = Arc::default();
                    q.push_back((path.to_path_buf(), c.clone()));
                    if q.len() > Self::KEEP {
                        q.pop_front();
                    }
                    c
                }
            }
        };
        cell.get_or_init(|| decode().map(Arc::new)).clone()
    }
}

impl Clone for Decoded {
    fn clone(&self) -> Self {
        Decoded::default()
    }
}

impl std::fmt::Debug for Decoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Decoded")
    }
}

const IMAGE_EXT: &[&str] = &["jpg", "jpeg", "png"];

/// The regular files under `dir`, each real file once: links are followed,
/// but a folder already visited (a link loop, a link to a parent) is not
/// entered again, a file reached twice counts once, and FIFOs, devices and
/// broken links are left out (reading them would block or fail).
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut dirs = std::collections::HashSet::new();
    let mut files = std::collections::HashSet::new();
    walk_into(dir, out, &mut dirs, &mut files)
}

fn walk_into(
    dir: &Path,
    out: &mut Vec<PathBuf>,
    dirs: &mut std::collections::HashSet<PathBuf>,
    files: &mut std::collections::HashSet<PathBuf>,
) -> std::io::Result<()> {
    if !dirs.insert(dir.canonicalize()?) {
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    entries.sort();
    for p in entries {
        let Ok(meta) = std::fs::metadata(&p) else { continue };
        if meta.is_dir() {
            walk_into(&p, out, dirs, files)?;
        } else if meta.is_file() && p.canonicalize().is_ok_and(|c| files.insert(c)) {
            out.push(p);
        }
    }
    Ok(())
}

fn has_ext(p: &Path, exts: &[&str]) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| exts.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// Parsed `.npy` header.
struct NpyHeader {
    shape: Vec<usize>,
    f64: bool,
    data_offset: u64,
}

fn npy_header(path: &Path) -> Result<NpyHeader, DataError> {
    let bad = |reason: String| DataError::Sample { path: path.to_path_buf(), reason };
    let size = qforge_ir::regular_file(path).map_err(|e| bad(e.to_string()))?;
    let mut f = File::open(path).map_err(|e| bad(e.to_string()))?;
    let mut magic = [0u8; 8];
    f.read_exact(&mut magic).map_err(|_| bad("not a .npy file (too short)".into()))?;
    if &magic[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy file (bad magic)".into()));
    }
    let (hlen, pre) = if magic[6] == 1 {
        let mut b = [0u8; 2];
        f.read_exact(&mut b).map_err(|e| bad(e.to_string()))?;
        (u16::from_le_bytes(b) as usize, 10)
    } else {
        let mut b = [0u8; 4];
        f.read_exact(&mut b).map_err(|e| bad(e.to_string()))?;
        (u32::from_le_bytes(b) as usize, 12)
    };
    if (pre + hlen) as u64 > size {
        return Err(bad(format!("header length {hlen} is past the end of the {size}-byte file")));
    }
    let mut h = vec![0u8; hlen];
    f.read_exact(&mut h).map_err(|e| bad(e.to_string()))?;
    let h = String::from_utf8_lossy(&h);
    let field = |key: &str| -> Option<String> {
        let i = h.find(&format!("'{key}'"))?;
        let rest = h[i + key.len() + 2..].trim_start().strip_prefix(':')?.trim_start();
        Some(rest.to_string())
    };
    let descr = field("descr").ok_or_else(|| bad("header has no descr".into()))?;
    let f64 = if descr.starts_with("'<f4'") {
        false
    } else if descr.starts_with("'<f8'") {
        true
    } else {
        return Err(bad(format!("dtype {} is not supported (use float32)", descr.split(',').next().unwrap_or(""))));
    };
    if field("fortran_order").is_some_and(|v| v.starts_with("True")) {
        return Err(bad("Fortran-ordered arrays are not supported (save with np.ascontiguousarray)".into()));
    }
    let shape_s = field("shape").ok_or_else(|| bad("header has no shape".into()))?;
    let inner = shape_s.trim_start_matches('(').split(')').next().unwrap_or("");
    let shape: Result<Vec<usize>, _> =
        inner.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::parse::<usize>).collect();
    let shape = shape.map_err(|_| bad(format!("bad shape {inner:?}")))?;
    // The header is checked against the file before anything is allocated
    // from it (a 200-byte file may claim 2^40 samples).
    let data_offset = (pre + hlen) as u64;
    let declared = shape
        .iter()
        .try_fold(if f64 { 8u64 } else { 4 }, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| bad(format!("shape {shape:?} is too large")))?;
    if declared > size - data_offset {
        return Err(bad(format!(
            "its header declares {declared} bytes of data (shape {shape:?}) but the file holds {}",
            size - data_offset
        )));
    }
    Ok(NpyHeader { shape, f64, data_offset })
}

/// Writes a float32 `.npy` file (used by tests and `--dump` options).
pub fn write_npy(path: &Path, shape: &[usize], data: &[f32]) -> std::io::Result<()> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_s = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_s}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut f = std::io::BufWriter::new(File::create(path)?);
    f.write_all(b"\x93NUMPY\x01\x00")?;
    f.write_all(&(header.len() as u16).to_le_bytes())?;
    f.write_all(header.as_bytes())?;
    for x in data {
        f.write_all(&x.to_le_bytes())?;
    }
    f.flush()
}

impl Dataset {
    /// Lists the samples of `source` for a model input of `shape` (fixed
    /// dims, batch first). Files are sorted for determinism; non-image files
    /// in an image folder are skipped with a reason in [`Dataset::skipped`].
    pub fn open(source: &Source, shape: &[usize], prep: &Preprocess) -> Result<Dataset, DataError> {
        if shape.len() != 4 && matches!(source, Source::Images(_)) {
            return Err(DataError::Set(format!(
                "images need a 4-D model input (N,C,H,W or N,H,W,C); this one is {shape:?}"
            )));
        }
        let mut skipped = Vec::new();
        let mut items = Vec::new();
        match source {
            Source::Images(dir) => {
                if !dir.is_dir() {
                    return Err(DataError::Set(format!("image folder {} does not exist", dir.display())));
                }
                let mut files = Vec::new();
                walk(dir, &mut files).map_err(|e| DataError::Set(format!("{}: {e}", dir.display())))?;
                files.sort();
                for f in files {
                    if has_ext(&f, IMAGE_EXT) {
                        items.push(Item::Image(f, 0));
                    } else {
                        skipped.push(format!("{}: not a .jpg/.jpeg/.png file", f.display()));
                    }
                }
                if items.is_empty() {
                    return Err(DataError::Set(format!("no .jpg/.jpeg/.png images in {}", dir.display())));
                }
                let (c, h, w) = if prep.nhwc { (shape[3], shape[1], shape[2]) } else { (shape[1], shape[2], shape[3]) };
                if c != 3 {
                    return Err(DataError::Set(format!("images have 3 channels, the model input has {c} ({shape:?})")));
                }
                if let Some([ph, pw]) = prep.size
                    && (ph != h || pw != w)
                {
                    return Err(DataError::Set(format!(
                        "image size {ph}x{pw} does not fit the model input {shape:?} (height {h}, width {w})"
                    )));
                }
            }
            Source::Npy(p) => {
                let files: Vec<PathBuf> = if p.is_dir() {
                    let mut v = Vec::new();
                    walk(p, &mut v).map_err(|e| DataError::Set(format!("{}: {e}", p.display())))?;
                    v.retain(|f| has_ext(f, &["npy"]));
                    v.sort();
                    v
                } else if p.is_file() {
                    vec![p.clone()]
                } else {
                    return Err(DataError::Set(format!("{} does not exist", p.display())));
                };
                if files.is_empty() {
                    return Err(DataError::Set(format!("no .npy files in {}", p.display())));
                }
                let sample: usize = shape.iter().product();
                for f in files {
                    let h = npy_header(&f)?;
                    let elem = if h.f64 { 8 } else { 4 };
                    let n = if h.shape == shape {
                        1
                    } else if h.shape.len() == shape.len() && h.shape[1..] == shape[1..] && shape[0] == 1 {
                        h.shape[0]
                    } else if h.shape.len() + 1 == shape.len() && h.shape[..] == shape[1..] {
                        1
                    } else {
                        return Err(DataError::Sample {
                            path: f,
                            reason: format!(
                                "shape {:?} does not fit the model input {shape:?} (give one sample of that shape, or a stack (N,{}))",
                                h.shape,
                                shape[1..].iter().map(|d| d.to_string()).collect::<Vec<_>>().join(",")
                            ),
                        });
                    };
                    for i in 0..n {
                        items.push(Item::Npy {
                            path: f.clone(),
                            offset: h.data_offset + (i * sample * elem) as u64,
                            f64: h.f64,
                        });
                    }
                }
            }
        }
        Ok(Dataset { items, shape: shape.to_vec(), prep: prep.clone(), skipped, decoded: Decoded::default() })
    }

    /// Keeps `limit` samples: the first ones, or a seeded random subset
    /// (in original order) when `seed` is given.
    pub fn limit(&mut self, limit: usize, seed: Option<u64>) {
        if limit >= self.items.len() {
            return;
        }
        match seed {
            None => self.items.truncate(limit),
            Some(s) => {
                let mut rng = crate::random::Rng::new(s);
                let mut idx: Vec<usize> = (0..self.items.len()).collect();
                // Fisher–Yates, then keep the first `limit` in file order.
                for i in (1..idx.len()).rev() {
                    let j = (rng.next_u64() % (i as u64 + 1)) as usize;
                    idx.swap(i, j);
                }
                let mut keep: Vec<usize> = idx[..limit].to_vec();
                keep.sort();
                self.items = keep.into_iter().map(|i| self.items[i].clone()).collect();
            }
        }
    }

    /// Moves every `k`-th sample (counting from the last, `k` ≥ 2) into a new
    /// set with the same preprocessing, leaving the others here: a held-out
    /// split spread over the whole (sorted) list, so it is not all from one
    /// folder. `k` < 2 moves nothing.
    pub fn split_every(&mut self, k: usize) -> Dataset {
        let mut kept = Vec::with_capacity(self.items.len());
        let mut held = Vec::new();
        let n = self.items.len();
        for (i, it) in std::mem::take(&mut self.items).into_iter().enumerate() {
            if k >= 2 && (n - 1 - i) % k == 0 {
                held.push(it);
            } else {
                kept.push(it);
            }
        }
        self.items = kept;
        Dataset {
            items: held,
            shape: self.shape.clone(),
            prep: self.prep.clone(),
            skipped: Vec::new(),
            decoded: Decoded::default(),
        }
    }

    /// The preprocessing of every sample.
    pub fn preprocess(&self) -> &Preprocess {
        &self.prep
    }

    /// The input shape every sample is loaded to.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Turns every photo into four samples: the photo, its mirror image, and
    /// its top-left and bottom-right 75 % crops (what the reference
    /// evaluation scripts score), so a few photos calibrate like more.
    pub fn augment_views(&mut self) {
        let mut out = Vec::with_capacity(self.items.len() * 4);
        for it in &self.items {
            match it {
                Item::Image(p, 0) => out.extend((0..4).map(|v| Item::Image(p.clone(), v))),
                other => out.push(other.clone()),
            }
        }
        self.items = out;
    }

    /// Repeats the sample list `times` times (benchmarks: same data, more work).
    pub fn repeat(&mut self, times: usize) {
        let one = self.items.clone();
        for _ in 1..times.max(1) {
            self.items.extend(one.iter().cloned());
        }
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when there are no samples.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The file a sample comes from.
    pub fn path(&self, i: usize) -> &Path {
        match &self.items[i] {
            Item::Image(p, _) | Item::Npy { path: p, .. } => p,
        }
    }

    /// Loads and preprocesses sample `i` into a tensor of the input shape.
    pub fn load(&self, i: usize) -> Result<HostTensor, DataError> {
        self.prepare(i).map(|p| self.finish(p))
    }

    /// The costly part of [`Dataset::load`]: a photo decoded, cut to its
    /// view and resized into the input's canvas, still 8-bit (a quarter of
    /// the tensor's size); an `.npy` sample read. [`Dataset::finish`] makes
    /// the tensor. Lets a caller prepare samples ahead, while it waits for
    /// something else, without holding them as floats.
    pub fn prepare(&self, i: usize) -> Result<Prepared, DataError> {
        match &self.items[i] {
            Item::Image(p, v) => {
                let img = self
                    .decoded
                    .get(p, || {
                        let img = image::ImageReader::open(p)
                            .and_then(|r| r.with_guessed_format())
                            .map_err(|e| e.to_string())?
                            .decode()
                            .map_err(|e| format!("cannot decode: {e}"))?;
                        Ok(img.to_rgb8())
                    })
                    .map_err(|reason| DataError::Sample { path: p.clone(), reason })?;
                Ok(Prepared::Pixels(match v {
                    0 => fit(&img, &self.shape, &self.prep),
                    _ => fit(&view(&img, *v), &self.shape, &self.prep),
                }))
            }
            Item::Npy { path, offset, f64 } => {
                let n: usize = self.shape.iter().product();
                let bad = |e: std::io::Error| DataError::Sample { path: path.clone(), reason: e.to_string() };
                let mut f = File::open(path).map_err(bad)?;
                f.seek(SeekFrom::Start(*offset)).map_err(bad)?;
                let mut buf = vec![0u8; n * if *f64 { 8 } else { 4 }];
                f.read_exact(&mut buf).map_err(|_| DataError::Sample {
                    path: path.clone(),
                    reason: "file is shorter than its header says".into(),
                })?;
                let data: Vec<f32> = if *f64 {
                    buf.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32).collect()
                } else {
                    buf.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap_or([0; 4]))).collect()
                };
                Ok(Prepared::Tensor(HostTensor::f32(self.shape.clone(), data)))
            }
        }
    }

    /// The tensor of a sample [`Dataset::prepare`] made.
    pub fn finish(&self, p: Prepared) -> HostTensor {
        match p {
            Prepared::Pixels(canvas) => normalise(&canvas, &self.shape, &self.prep),
            Prepared::Tensor(t) => t,
        }
    }
}

/// A sample [`Dataset::prepare`]d: all of [`Dataset::load`] but the
/// normalisation ([`Dataset::finish`]).
#[derive(Debug)]
pub enum Prepared {
    /// A photo's view in the input's canvas (letterboxed or resized), 8-bit RGB.
    Pixels(RgbImage),
    /// A sample that was a tensor already (`.npy`).
    Tensor(HostTensor),
}

impl Prepared {
    /// Bytes it holds.
    pub fn byte_len(&self) -> usize {
        match self {
            Prepared::Pixels(img) => img.as_raw().len(),
            Prepared::Tensor(t) => t.byte_len(),
        }
    }
}

/// View `v` of a photo: 0 the photo, 1 mirrored, 2 the top-left 75 % crop,
/// 3 the bottom-right 75 % crop (crop boxes truncated like Python's `int()`).
pub fn view(img: &RgbImage, v: u8) -> RgbImage {
    let (w, h) = img.dimensions();
    let (w3, h3) = ((f64::from(w) * 0.75) as u32, (f64::from(h) * 0.75) as u32);
    let (w1, h1) = ((f64::from(w) * 0.25) as u32, (f64::from(h) * 0.25) as u32);
    match v {
        1 => image::imageops::flip_horizontal(img),
        2 => image::imageops::crop_imm(img, 0, 0, w3.max(1), h3.max(1)).to_image(),
        3 => image::imageops::crop_imm(img, w1, h1, (w - w1).max(1), (h - h1).max(1)).to_image(),
        _ => img.clone(),
    }
}

/// Resizes (letterbox or stretch) and normalises one RGB image.
///
/// Pixel for pixel what the Python tools compute with PIL: the letterbox
/// scale is `min(w_t / w, h_t / h)`, sides are rounded half-to-even (Python's
/// `round`), the resize is Pillow's bilinear ([`crate::resize::resize_bilinear`]),
/// and a scale of `1/k` divides by `k` (as `array / 255.`) rather than
/// multiplying by a rounded reciprocal.
pub fn preprocess(img: &RgbImage, shape: &[usize], p: &Preprocess) -> HostTensor {
    normalise(&fit(img, shape, p), shape, p)
}

/// The first half of [`preprocess`]: the image letterboxed or resized to
/// the input's height and width.
fn fit(img: &RgbImage, shape: &[usize], p: &Preprocess) -> RgbImage {
    let (h, w) = hw(shape, p);
    if p.letterbox {
        let r = (w as f64 / img.width() as f64).min(h as f64 / img.height() as f64);
        let side = |s: u32, max: usize| ((f64::from(s) * r).round_ties_even() as u32).clamp(1, max as u32);
        let (nw, nh) = (side(img.width(), w), side(img.height(), h));
        let resized = crate::resize::resize_bilinear(img, nw, nh);
        let mut c = RgbImage::from_pixel(w as u32, h as u32, Rgb([p.pad_value; 3]));
        let (x0, y0) = match p.pad_position {
            PadPosition::TopLeft => (0, 0),
            PadPosition::Center => ((w as u32 - nw) / 2, (h as u32 - nh) / 2),
        };
        image::imageops::replace(&mut c, &resized, i64::from(x0), i64::from(y0));
        c
    } else {
        crate::resize::resize_bilinear(img, w as u32, h as u32)
    }
}

/// Height and width of an image input of `shape`.
fn hw(shape: &[usize], p: &Preprocess) -> (usize, usize) {
    if p.nhwc { (shape[1], shape[2]) } else { (shape[2], shape[3]) }
}

/// The second half of [`preprocess`]: a canvas of the input's size to the
/// normalised tensor (channel order, scale, mean and std, layout).
fn normalise(canvas: &RgbImage, shape: &[usize], p: &Preprocess) -> HostTensor {
    let (h, w) = hw(shape, p);
    let inv = 1.0 / f64::from(p.scale);
    let divisor = ((inv - inv.round()).abs() < 1e-6 * inv.abs()).then(|| inv.round() as f32);
    // Every input channel byte's normalised value, computed once: the same
    // float operations per value as computing it per pixel.
    let lut: [[f32; 256]; 3] = std::array::from_fn(|c| {
        std::array::from_fn(|raw| {
            let raw = raw as f32;
            let scaled = match divisor {
                Some(d) => raw / d,
                None => raw * p.scale,
            };
            (scaled - p.mean[c]) / p.std[c]
        })
    });
    let plane = h * w;
    let mut data = vec![0f32; 3 * plane];
    for (k, px) in canvas.as_raw().chunks_exact(3).enumerate() {
        for (c, lut) in lut.iter().enumerate() {
            let src = if p.bgr { 2 - c } else { c };
            let idx = if p.nhwc { k * 3 + c } else { c * plane + k };
            data[idx] = lut[usize::from(px[src])];
        }
    }
    HostTensor::f32(shape.to_vec(), data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letterbox_pads_with_114_and_scales() {
        let img = RgbImage::from_pixel(20, 10, Rgb([255, 0, 0]));
        let t = preprocess(&img, &[1, 3, 8, 8], &Preprocess::default());
        let d = t.as_f32().unwrap();
        // Top-left: red; bottom rows: padding 114/255.
        assert_eq!(d[0], 1.0);
        assert_eq!(d[64], 0.0);
        assert!((d[7 * 8] - 114.0 / 255.0).abs() < 1e-6);
        let bgr = preprocess(&img, &[1, 3, 8, 8], &Preprocess { bgr: true, ..Default::default() });
        assert_eq!(bgr.as_f32().unwrap()[128], 1.0);
    }

    #[test]
    fn npy_round_trip_and_stacks() {
        let dir = std::env::temp_dir().join(format!("qforge-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let data: Vec<f32> = (0..2 * 3 * 2 * 2).map(|i| i as f32).collect();
        write_npy(&dir.join("stack.npy"), &[2, 3, 2, 2], &data).unwrap();
        let ds = Dataset::open(&Source::Npy(dir.join("stack.npy")), &[1, 3, 2, 2], &Preprocess::default()).unwrap();
        assert_eq!(ds.len(), 2);
        assert_eq!(ds.load(1).unwrap().as_f32().unwrap(), &data[12..]);
        let e = Dataset::open(&Source::Npy(dir.join("stack.npy")), &[1, 3, 4, 4], &Preprocess::default()).unwrap_err();
        assert!(e.to_string().contains("does not fit the model input"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn split_every_holds_out_a_spread_subset() {
        let dir = std::env::temp_dir().join(format!("qforge-split-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let data: Vec<f32> = (0..10).map(|i| i as f32).collect();
        write_npy(&dir.join("s.npy"), &[10, 1], &data).unwrap();
        let mut ds = Dataset::open(&Source::Npy(dir.join("s.npy")), &[1, 1], &Preprocess::default()).unwrap();
        let held = ds.split_every(4);
        let values = |d: &Dataset| (0..d.len()).map(|i| d.load(i).unwrap().as_f32().unwrap()[0]).collect::<Vec<_>>();
        assert_eq!(values(&held), [1.0, 5.0, 9.0]);
        assert_eq!(values(&ds), [0.0, 2.0, 3.0, 4.0, 6.0, 7.0, 8.0]);
        assert_eq!(ds.split_every(1).len(), 0);
        assert_eq!(ds.len(), 7);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The views of a photo, loaded from several threads at once and in any
    /// order, through the shared decode, are exactly the views of a freshly
    /// decoded copy; a photo that cannot be decoded fails every view.
    #[test]
    fn views_share_one_decode_and_match_a_fresh_one() {
        let dir = std::env::temp_dir().join(format!("qforge-views-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (k, name) in ["a.png", "b.png", "c.png"].iter().enumerate() {
            let img = RgbImage::from_fn(37, 23, |x, y| Rgb([(x * 7 + k as u32) as u8, (y * 11) as u8, (x ^ y) as u8]));
            img.save(dir.join(name)).unwrap();
        }
        std::fs::write(dir.join("d.png"), b"not a png").unwrap();
        let shape = [1, 3, 16, 16];
        let mut ds = Dataset::open(&Source::Images(dir.clone()), &shape, &Preprocess::default()).unwrap();
        ds.augment_views();
        assert_eq!(ds.len(), 16);
        let order: Vec<usize> = (0..ds.len()).rev().chain(0..ds.len()).collect();
        let got: Vec<(usize, Result<HostTensor, String>)> = std::thread::scope(|s| {
            let hs: Vec<_> = order
                .chunks(5)
                .map(|c| s.spawn(|| c.iter().map(|&i| (i, ds.load(i).map_err(|e| e.to_string()))).collect::<Vec<_>>()))
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        for (i, r) in got {
            let Item::Image(p, v) = &ds.items[i] else { panic!("photos only") };
            if p.ends_with("d.png") {
                assert!(r.unwrap_err().contains("cannot decode"), "view {v} of the broken file");
                continue;
            }
            let fresh = image::open(p).unwrap().to_rgb8();
            assert_eq!(r.unwrap(), preprocess(&view(&fresh, *v), &shape, &Preprocess::default()), "{p:?} view {v}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
