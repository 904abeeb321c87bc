//! Loading the audio a corpus row points at: a file under the data root, or a cell of a parquet
//! shard (see [`crate::corpus::AudioRef`]).

use std::path::{Path, PathBuf};

use crate::corpus::AudioRef;
use crate::error::{DataError, Result};
use crate::parquet_audio::read_audio_cell_full;
use crate::paths::resolve_audio_path;

/// The file a reference lives in (the audio file or the parquet shard), resolved inside
/// `data_root` (no `..`, absolute paths only under the root).
pub fn resolve_ref_file(data_root: &Path, r: &AudioRef) -> Result<PathBuf> {
    let raw = match r {
        AudioRef::File(p) => p,
        AudioRef::Parquet { file, .. } => file,
    };
    resolve_audio_path(data_root, raw).map_err(|reason| DataError::AudioSource {
        path: raw.into(),
        reason,
    })
}

/// Decodes the audio of `r` to mono `f32`, resampled to `target_rate` if given. A file goes
/// through [`vaak_audio::io::decode_file`]; a parquet cell's bytes through
/// [`vaak_audio::io::decode_bytes`], with the cell's original file extension as the format hint.
pub fn load_audio(
    data_root: &Path,
    r: &AudioRef,
    target_rate: Option<u32>,
) -> Result<vaak_audio::io::Audio> {
    let file = resolve_ref_file(data_root, r)?;
    match r {
        AudioRef::File(_) => Ok(vaak_audio::io::decode_file(&file, target_rate)?),
        AudioRef::Parquet { row, column, .. } => {
            let cell = read_audio_cell_full(&file, *row, column)?;
            let hint = cell.ext_hint().map(str::to_string);
            let name = PathBuf::from(r.to_string());
            Ok(vaak_audio::io::decode_bytes(
                cell.bytes,
                hint.as_deref(),
                name,
                target_rate,
            )?)
        }
    }
}
