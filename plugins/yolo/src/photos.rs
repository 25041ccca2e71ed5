//! Running both models on a folder of photos: listing, the four views of a
//! photo, letterboxing, and the two sessions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use image::RgbImage;
use qforge_ir::{Dim, Model};
use qforge_runtime::{Engine, HostTensor, Session, SessionOptions};

use crate::YoloError;
use crate::metrics::{Agreement, AgreementBuilder};

/// Input side used when `size` is 0 and the model's input is dynamic.
pub const DEFAULT_SIZE: usize = 640;

/// The four views scored per photo: the photo, its mirror image, the top-left
/// 75 % and the bottom-right 75 % (PIL's `crop((0, 0, int(w*.75), int(h*.75)))`
/// and `crop((int(w*.25), int(h*.25), w, h))`), so a few photos give more cases.
pub fn views(img: &RgbImage) -> Vec<RgbImage> {
    (0..4).map(|v| qforge_runtime::data::view(img, v)).collect()
}

/// The photos of `dir` as the reference lists them: the folder's entries
/// (not recursive, no hidden files) whose name ends in `.jpg`, `.jpeg` or
/// `.png` in any case, sorted by path.
pub fn list_photos(dir: &Path) -> Result<Vec<PathBuf>, YoloError> {
    let io = |e: std::io::Error| YoloError::Photo { path: dir.to_path_buf(), reason: e.to_string() };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let p = entry.map_err(io)?.path();
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else { continue };
        let lower = name.to_ascii_lowercase();
        if !name.starts_with('.') && [".jpg", ".jpeg", ".png"].iter().any(|e| lower.ends_with(e)) && p.is_file() {
            out.push(p);
        }
    }
    out.sort();
    if out.is_empty() {
        return Err(YoloError::NoPhotos(dir.to_path_buf()));
    }
    Ok(out)
}

/// Decodes a photo to 8-bit RGB (alpha dropped, grey expanded).
pub fn load_photo(path: &Path) -> Result<RgbImage, YoloError> {
    let bad = |reason: String| YoloError::Photo { path: path.to_path_buf(), reason };
    let img = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| bad(e.to_string()))?
        .decode()
        .map_err(|e| bad(format!("cannot decode: {e}")))?
        .to_rgb8();
    if img.width() < 4 || img.height() < 4 {
        return Err(bad(format!("{}x{} is too small to crop into views", img.width(), img.height())));
    }
    Ok(img)
}

/// The input side to use: `size`, else the model's declared input height,
/// else [`DEFAULT_SIZE`].
fn input_size(model: &Model, size: usize) -> usize {
    if size > 0 {
        return size;
    }
    let g = &model.graph;
    let dims = g.runtime_inputs().first().and_then(|&v| g.type_info(v)).and_then(|t| t.shape).map(|s| s.0);
    match dims.as_ref().and_then(|d| d.get(2)) {
        Some(Dim::Known(k)) if *k > 0 => *k as usize,
        _ => DEFAULT_SIZE,
    }
}

/// One model ready to run on `[1, 3, size, size]` images, fetching its first output.
struct Runner {
    which: &'static str,
    session: Box<dyn Session>,
}

impl Runner {
    fn new(which: &'static str, model: &Model, size: usize, engine: Engine) -> Result<Runner, YoloError> {
        let g = &model.graph;
        let bad = |reason: String| YoloError::Model { which, reason };
        let inputs = g.runtime_inputs();
        let &[input] = inputs.as_slice() else {
            return Err(bad(format!("expected one image input, found {}", inputs.len())));
        };
        let output = g.outputs().first().ok_or_else(|| bad("the graph has no output".into()))?;
        let opts = SessionOptions {
            outputs: vec![g.value_name(output.value).to_string()],
            input_shapes: BTreeMap::from([(g.value_name(input).to_string(), vec![1, 3, size, size])]),
            engine,
            ..Default::default()
        };
        let session = qforge_runtime::session(model, &opts).map_err(|source| YoloError::Runtime { which, source })?;
        Ok(Runner { which, session })
    }

    fn run(&self, x: &HostTensor) -> Result<HostTensor, YoloError> {
        let out = self
            .session
            .run(std::slice::from_ref(x))
            .map_err(|source| YoloError::Runtime { which: self.which, source })?;
        out.into_iter().next().ok_or_else(|| YoloError::Model { which: self.which, reason: "no output".into() })
    }
}

/// Detection agreement of `cand` with `fp32` on the photos of the folder
/// `photos` (see [`list_photos`]), 4 [`views`] each, letterboxed to
/// `size`×`size` (top-left, grey 114, bilinear, ÷255; `size` 0 = the FP32
/// model's input height, or 640 when it is dynamic). Both models run on CPU
/// with `engine`; the first output of each is scored.
pub fn agreement(
    fp32: &Model,
    cand: &Model,
    photos: &Path,
    size: usize,
    engine: Engine,
) -> Result<Agreement, YoloError> {
    let files = list_photos(photos)?;
    let size = input_size(fp32, size);
    let f = Runner::new("FP32 model", fp32, size, engine)?;
    let q = Runner::new("candidate model", cand, size, engine)?;
    let mut acc = AgreementBuilder::new();
    for path in &files {
        for view in views(&load_photo(path)?) {
            let x =
                qforge_runtime::data::preprocess(&view, &[1, 3, size, size], &qforge_runtime::Preprocess::default());
            acc.add(&f.run(&x)?, &q.run(&x)?)?;
        }
    }
    Ok(acc.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    #[test]
    fn views_match_pil_crop_boxes() {
        let img = RgbImage::from_fn(10, 7, |x, y| Rgb([x as u8, y as u8, 0]));
        let v = views(&img);
        assert_eq!(v.len(), 4);
        assert_eq!(v[0], img);
        assert_eq!(v[1].get_pixel(0, 3), &Rgb([9, 3, 0]));
        // int(10*.75)=7, int(7*.75)=5: top-left 7x5.
        assert_eq!(v[2].dimensions(), (7, 5));
        assert_eq!(v[2].get_pixel(6, 4), &Rgb([6, 4, 0]));
        // int(10*.25)=2, int(7*.25)=1: from (2,1) to the corner, 8x6.
        assert_eq!(v[3].dimensions(), (8, 6));
        assert_eq!(v[3].get_pixel(0, 0), &Rgb([2, 1, 0]));
    }

    #[test]
    fn size_zero_takes_the_model_input_or_640() {
        let model = |input: &str| {
            let text = format!("graph g {{\n  opset ai.onnx 13\n  input %x: {input}\n  %y = Relu(%x)\n  output %y\n}}");
            Model::new(qforge_ir::parse_graph(&text).unwrap())
        };
        assert_eq!(input_size(&model("f32[1,3,416,416]"), 0), 416);
        assert_eq!(input_size(&model("f32[1,3,416,416]"), 320), 320);
        assert_eq!(input_size(&model("f32[batch,3,height,width]"), 0), DEFAULT_SIZE);
        assert_eq!(input_size(&model("f32[1,3,?,?]"), 0), DEFAULT_SIZE);
    }

    #[test]
    fn photo_listing_follows_the_reference() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.PNG", "a.jpg", "c.jpeg", ".hidden.jpg", "notes.txt"] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/d.jpg"), b"x").unwrap();
        let names: Vec<String> = list_photos(dir.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.jpg", "b.PNG", "c.jpeg"]);
        let empty = tempfile::tempdir().unwrap();
        let e = list_photos(empty.path()).unwrap_err();
        assert!(e.to_string().contains("no .jpg/.jpeg/.png photos"), "{e}");
        let e = load_photo(&dir.path().join("a.jpg")).unwrap_err();
        assert!(e.to_string().contains("a.jpg"), "{e}");
    }
}
