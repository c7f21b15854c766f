//! The manifest directory's format, as the file store reads and writes it
//! and `meshctl` edits it: `*.yaml` files of `---`-separated documents, in
//! a shallow tree whose `status/` holds what the controller writes; parsed
//! with serde-saphyr (errors as line, column and a short reason), written
//! atomically (a temporary file and a rename, so no reader sees half a
//! file).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::de::DeserializeOwned;

use super::{ObjKey, StoreError};

pub const STATUS_DIR: &str = "status";
/// Deeper trees are not scanned: a manifest directory is shallow.
pub const MAX_DEPTH: usize = 4;
/// Larger files are refused rather than read.
pub const MAX_FILE_BYTES: u64 = 8 << 20;

/// Every `*.yaml` and `*.yml` file under `dir`, by name, with its stamp:
/// hidden entries are left out, and so is `status/` at the top; the walk
/// goes at most [`MAX_DEPTH`] deep. `depth` is `dir`'s own (0 at the top).
pub fn collect_files(dir: &Path, depth: usize, out: &mut Vec<(PathBuf, (SystemTime, u64))>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || (depth == 0 && name == STATUS_DIR) {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        let path = entry.path();
        if meta.is_dir() {
            if depth + 1 < MAX_DEPTH {
                collect_files(&path, depth + 1, out);
            }
        } else if meta.is_file() && (name.ends_with(".yaml") || name.ends_with(".yml")) {
            out.push((path, stamp(&meta)));
        }
    }
}

/// Deserializes one document; errors as (line, column, message).
pub fn from_yaml<T: DeserializeOwned>(doc: &str) -> Result<T, (usize, usize, String)> {
    serde_saphyr::from_str(doc).map_err(|e| {
        let (line, column) = e
            .location()
            .map_or((1, 1), |l| (l.line() as usize, l.column() as usize));
        (line, column, short_message(&e.to_string()))
    })
}

/// serde-saphyr's message opens with `error: line L column C: why` and then
/// draws a source excerpt; keep just the why.
fn short_message(full: &str) -> String {
    let first = full.lines().next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    match first.split_once(": ") {
        Some((loc, why)) if loc.starts_with("line ") => why.to_owned(),
        _ => first.to_owned(),
    }
}

/// Splits at `---` lines; yields each document with its first line number.
pub fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end();
        if bare == "---" || bare.starts_with("--- ") || bare == "..." {
            docs.push((start_line, &text[start..offset]));
            start = offset + line.len();
            start_line = i + 2;
        }
        offset += line.len();
    }
    docs.push((start_line, &text[start..]));
    docs
}

pub fn to_yaml<T: serde::Serialize>(key: &ObjKey, obj: &T) -> Result<String, StoreError> {
    serde_saphyr::to_string(obj).map_err(|e| StoreError::Serialize {
        what: key.to_string(),
        reason: e.to_string(),
    })
}

/// What tells one version of a file from the next: its mtime and size.
pub fn stamp(meta: &std::fs::Metadata) -> (SystemTime, u64) {
    (
        meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        meta.len(),
    )
}

/// Writes via a temporary file and a rename, so the controller never reads
/// half a file.
pub fn write_atomic(path: &Path, text: &str) -> Result<(), StoreError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, text).map_err(io(tmp.as_ref()))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.display().to_string();
    move |source| StoreError::Io { path, source }
}
