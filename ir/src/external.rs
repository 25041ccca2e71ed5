//! External tensor data: tensors whose bytes live in a file beside the model.
//!
//! A `location` is resolved relative to the model's folder and must stay
//! inside it: absolute paths and `..` components are refused, and so is a
//! symlink that leads out, because a model file is untrusted input and
//! reading `../../etc/passwd` into a tensor would leak it into the output.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Component, Path};

use crate::error::IrError;
use crate::proto::{StringStringEntryProto, TensorProto, tensor_proto::DataLocation};

/// Checks that an external-data `location` is a plain relative path that
/// cannot leave the model's folder.
pub fn check_location(location: &str) -> Result<(), String> {
    if location.is_empty() {
        return Err("empty location".into());
    }
    if location.contains('\0') {
        return Err("location contains a NUL byte".into());
    }
    let p = Path::new(location);
    if p.is_absolute() || location.starts_with('/') || location.starts_with('\\') {
        return Err("absolute paths are refused: external data must sit in the model's folder".into());
    }
    for c in p.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => {
                return Err("`..` is refused: external data must sit in the model's folder".into());
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err("absolute paths are refused: external data must sit in the model's folder".into());
            }
        }
    }
    Ok(())
}

fn entry<'a>(t: &'a TensorProto, key: &str) -> Option<&'a str> {
    t.external_data.iter().find(|e| e.key() == key).map(|e| e.value())
}

pub(crate) fn is_external(t: &TensorProto) -> bool {
    t.data_location == Some(DataLocation::External as i32)
}

/// Reads an external tensor's bytes into `raw_data`.
pub(crate) fn resolve(t: &mut TensorProto, dir: Option<&Path>) -> Result<(), IrError> {
    let location = entry(t, "location").unwrap_or("").to_string();
    let err =
        |reason: String| IrError::ExternalData { tensor: t.name().to_string(), location: location.clone(), reason };
    check_location(&location).map_err(err)?;
    let dir =
        dir.ok_or_else(|| err("the model was not loaded from a file, so there is no folder to read from".into()))?;
    let path = dir.join(&location);
    let canon_dir = dir.canonicalize().map_err(|e| err(format!("model folder: {e}")))?;
    let canon = path.canonicalize().map_err(|e| err(format!("{}: {e}", path.display())))?;
    if !canon.starts_with(&canon_dir) {
        return Err(err("it resolves (through a link) outside the model's folder".into()));
    }
    let parse = |key: &str| -> Result<Option<u64>, IrError> {
        entry(t, key).map(|s| s.parse::<u64>().map_err(|_| err(format!("{key} \"{s}\" is not a number")))).transpose()
    };
    let offset = parse("offset")?.unwrap_or(0);
    let length = parse("length")?;
    crate::files::regular_file(&canon).map_err(|e| err(e.to_string()))?;
    let mut f = File::open(&canon).map_err(|e| err(format!("{}: {e}", path.display())))?;
    let size = f.metadata().map_err(|e| err(e.to_string()))?.len();
    let len = length.unwrap_or(size.saturating_sub(offset));
    if offset.checked_add(len).is_none_or(|end| end > size) {
        return Err(err(format!("bytes {offset}..{} are past the end of the {size}-byte file", offset + len)));
    }
    let mut buf = vec![0u8; len as usize];
    f.seek(SeekFrom::Start(offset)).and_then(|_| f.read_exact(&mut buf)).map_err(|e| err(e.to_string()))?;
    t.raw_data = Some(buf.into());
    t.external_data.clear();
    t.data_location = None;
    Ok(())
}

/// Appends external tensors to a data file as they are exported.
pub(crate) struct ExternalWriter {
    pub(crate) file: File,
    pub(crate) location: String,
    pub(crate) offset: u64,
}

impl ExternalWriter {
    /// Moves `t`'s bytes to the data file and points `t` at them.
    pub(crate) fn write(&mut self, t: &mut TensorProto) -> std::io::Result<()> {
        let Some(raw) = t.raw_data.take() else { return Ok(()) };
        // Align each tensor so readers can map it directly.
        let pad = (64 - self.offset % 64) % 64;
        self.file.write_all(&vec![0u8; pad as usize])?;
        self.offset += pad;
        self.file.write_all(&raw)?;
        let kv = |k: &str, v: String| StringStringEntryProto { key: Some(k.into()), value: Some(v) };
        t.external_data = vec![
            kv("location", self.location.clone()),
            kv("offset", self.offset.to_string()),
            kv("length", raw.len().to_string()),
        ];
        t.data_location = Some(DataLocation::External as i32);
        self.offset += raw.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_locations_are_refused() {
        for bad in ["../../etc/passwd", "/etc/passwd", "a/../../b", "", "x\0y"] {
            assert!(check_location(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["weights.bin", "sub/w.bin", "./w.bin"] {
            assert!(check_location(good).is_ok(), "{good:?} refused");
        }
    }
}
