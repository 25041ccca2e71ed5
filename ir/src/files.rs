//! What qforge agrees to read and write: regular files.
//!
//! Reading a FIFO or a character device blocks forever or never ends, and
//! "replacing" one by renaming a finished file over it destroys something
//! that was not a model. So a path to read must name a regular file
//! (symbolic links are followed; a loop is the error the OS reports), and a
//! path to write must be new or a regular file, in an existing folder. Each
//! check runs before anything is opened or computed.

use std::path::Path;

use crate::IrError;

fn refused(path: &Path, what: &str) -> IrError {
    IrError::Io { path: path.to_path_buf(), source: std::io::Error::other(what.to_string()) }
}

fn kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a folder"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// The size of `path` when it is a regular file (after following links),
/// else a clear error.
pub fn regular_file(path: &Path) -> Result<u64, IrError> {
    let meta = std::fs::metadata(path).map_err(|e| IrError::io(path, e))?;
    if !meta.is_file() {
        return Err(refused(path, &format!("is {}; qforge reads only regular files", kind(&meta))));
    }
    Ok(meta.len())
}

/// Checks that `path` can be written as a whole file: it does not exist
/// yet or is a regular file, and its folder exists.
pub fn writable_file(path: &Path) -> Result<(), IrError> {
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_file() => {
            return Err(refused(path, &format!("is {}; qforge writes only regular files", kind(&meta))));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(IrError::io(path, e)),
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(refused(path, "its folder does not exist"));
    }
    Ok(())
}

/// An empty vector with room for `len` bytes. Large ones ask Linux to back
/// them with transparent huge pages: reading or encoding a 45 MB model into
/// fresh 4 KiB pages spends more time in page faults than in copying.
pub(crate) fn large_buffer(len: usize) -> Vec<u8> {
    let v: Vec<u8> = Vec::with_capacity(len);
    #[cfg(target_os = "linux")]
    if len >= 8 << 20 {
        const HUGE: usize = 2 << 20;
        let start = v.as_ptr() as usize;
        let (from, to) = (start.next_multiple_of(HUGE), (start + len) / HUGE * HUGE);
        if to > from {
            // SAFETY: advice about pages of our own allocation; it changes
            // how they are backed, never their contents. Failure is harmless.
            unsafe { libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_HUGEPAGE) };
        }
    }
    v
}

/// The whole file, read into a [`large_buffer`].
pub(crate) fn read_all(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let size = f.metadata()?.len() as usize;
    let mut v = large_buffer(size + 1);
    f.read_to_end(&mut v)?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_fifos_and_missing_folders_are_refused() {
        let dir = std::env::temp_dir().join(format!("qforge-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("m.onnx");
        std::fs::write(&f, b"x").unwrap();
        assert_eq!(regular_file(&f).unwrap(), 1);
        assert!(regular_file(&dir).unwrap_err().to_string().contains("a folder"));
        assert!(writable_file(&f).is_ok());
        assert!(writable_file(&dir.join("new.onnx")).is_ok());
        assert!(writable_file(&dir).unwrap_err().to_string().contains("a folder"));
        assert!(writable_file(&dir.join("nodir/r.json")).unwrap_err().to_string().contains("folder does not exist"));
        let fifo = dir.join("pipe");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success());
        if made {
            assert!(regular_file(&fifo).unwrap_err().to_string().contains("FIFO"));
            assert!(writable_file(&fifo).unwrap_err().to_string().contains("FIFO"));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
