//! What an export or import reports when it fails.

use std::path::{Path, PathBuf};

/// An export or import that failed; every message names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error(
        "{}: {field} = {file} in the file, but the run's {key} gives {run}; \
         set {key} to match the file (or export a model of this shape)",
        path.display()
    )]
    Mismatch {
        path: PathBuf,
        field: &'static str,
        key: &'static str,
        file: String,
        run: String,
    },
}

pub(super) fn file_error(path: &Path, message: impl std::fmt::Display) -> SafetensorsError {
    SafetensorsError::File {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}
