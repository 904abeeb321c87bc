//! Reading and writing audio files.
//!
//! # Decoding
//!
//! [`decode_file`] and [`decode_bytes`] decode WAV (PCM 8/16/24/32-bit integer, 32/64-bit
//! float), FLAC, MP3 and Ogg/Vorbis with symphonia (AAC in ADTS/MP4 also decodes, as the
//! workspace enables those symphonia features, but is not tested here). Both go through one code
//! path, so a file and its bytes decode identically. They guarantee:
//!
//! - **Mono `f32`.** Multi-channel audio is mixed down by the mean of its channels. Integer PCM
//!   is scaled by `1 / 2^(bits-1)` (so PCM16 `-32768` is `-1.0`), which matches libsndfile.
//! - **Gapless.** The MP3 encoder delay and padding (LAME tag) and the Vorbis pre-skip / final
//!   granule are trimmed, so the output has the length the encoder was given.
//! - **Strict about damage.** A file is only returned if it decoded completely. Truncation is
//!   detected when the container declares its length (WAV data chunk, FLAC STREAMINFO, the
//!   Xing/Info/LAME frame count of an MP3, the last granule position of an Ogg stream) and fewer
//!   frames decode, or when a packet is cut off or fails to decode. Any of these gives
//!   [`AudioError::Corrupt`]; the decoded prefix is never returned. A stream holding more than
//!   its header declares is trimmed to the declared length if the excess is under one Vorbis
//!   block (8192 frames), and is [`AudioError::Corrupt`] otherwise. Known limitation: a WAV
//!   written by a streaming tool with a placeholder data length (`0xFFFFFFFF`) is reported as
//!   truncated. The one case that cannot be
//!   detected is an MP3 without a Xing/Info tag cut exactly between two frames: such a file
//!   carries no length, so it decodes as the shorter file it now is.
//! - **Finite.** Every returned sample is finite; a float WAV holding NaN or infinity is
//!   [`AudioError::Corrupt`].
//! - **Never panics.** The symphonia calls run under [`std::panic::catch_unwind`]; a panic inside
//!   a demuxer or decoder becomes [`AudioError::Corrupt`] (the panic message still goes to the
//!   panic hook, i.e. stderr). Fuzzing found real ones: symphonia 0.5's ADTS reader on damaged
//!   input, and its MP3 reader on a Xing frame count smaller than the LAME encoder delay.
//! - **Typed errors naming the file.** Unreadable path: [`AudioError::Open`]. A 0-byte file or a
//!   stream that decodes to zero frames: [`AudioError::Empty`]. Not a format we read (text,
//!   unknown container or codec): [`AudioError::Unsupported`]. Damaged: [`AudioError::Corrupt`].
//!
//! # Header info
//!
//! [`probe_info`] reads sample rate, channels, length and codec from the container headers
//! without decoding any audio (see its doc for the MP3 fallback).
//!
//! # Writing
//!
//! [`write_wav`] writes a mono WAV atomically: a temporary file in the destination directory is
//! written, flushed to disk, then renamed over the final name, so a crash never leaves a
//! half-written WAV under that name.

use std::fs::File;
use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use symphonia::core::codecs::{CodecParameters, DecoderOptions, CODEC_TYPE_NULL};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::{FormatOptions, FormatReader, Track};
use symphonia::core::io::{MediaSource, MediaSourceStream, MediaSourceStreamOptions};
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

use crate::error::{AudioError, Result};

/// Mono audio: samples in `[-1, 1]` (nominally) at `sample_rate` Hz.
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
    /// The samples, one per frame.
    pub samples: Vec<f32>,
    /// Frames per second.
    pub sample_rate: u32,
}

impl Audio {
    /// Wraps samples at a rate.
    pub fn new(samples: Vec<f32>, sample_rate: u32) -> Self {
        Self {
            samples,
            sample_rate,
        }
    }

    /// Length in seconds (0 when the rate is 0).
    pub fn duration_s(&self) -> f64 {
        if self.sample_rate == 0 {
            0.0
        } else {
            self.samples.len() as f64 / f64::from(self.sample_rate)
        }
    }
}

/// What the container headers say about a file (see [`probe_info`]).
#[derive(Debug, Clone, PartialEq)]
pub struct AudioInfo {
    /// Frames per second.
    pub sample_rate: u32,
    /// Number of channels.
    pub channels: u16,
    /// Number of frames (per channel), after gapless trimming; `None` if unknown.
    pub n_frames: Option<u64>,
    /// `n_frames / sample_rate`; `None` if the frame count is unknown.
    pub duration_s: Option<f64>,
    /// symphonia's short codec name, e.g. `pcm_s16le`, `flac`, `mp3`, `vorbis`.
    pub codec: String,
}

/// Sample format of a written WAV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum WavFormat {
    /// 16-bit integer PCM. Samples are scaled by 32768, rounded, and clipped to
    /// `[-32768, 32767]`, so anything outside `[-1, 1)` saturates.
    #[default]
    Pcm16,
    /// 32-bit IEEE float, written unchanged (no clipping).
    Float32,
}

/// Decodes an audio file to mono `f32`, resampled to `target_rate` if given.
///
/// The file is read into memory and handed to [`decode_bytes`] with its extension as the format
/// hint; all guarantees of the module doc apply. A missing file, a directory, or any other read
/// failure gives [`AudioError::Open`] naming `path`.
pub fn decode_file(path: impl AsRef<Path>, target_rate: Option<u32>) -> Result<Audio> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| AudioError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let ext = path.extension().and_then(|e| e.to_str());
    decode_bytes(bytes, ext, path, target_rate)
}

/// Decodes an in-memory audio file to mono `f32`, resampled to `target_rate` if given.
///
/// `ext_hint` (a file extension such as `"wav"`, without the dot) helps the format probe but is
/// not trusted: the content decides. `name` is only used in error messages. This is the single
/// decoding entry point; see the module doc for what it guarantees.
pub fn decode_bytes(
    bytes: Vec<u8>,
    ext_hint: Option<&str>,
    name: impl AsRef<Path>,
    target_rate: Option<u32>,
) -> Result<Audio> {
    let name = name.as_ref();
    if bytes.is_empty() {
        return Err(AudioError::Empty {
            path: name.to_path_buf(),
        });
    }
    if target_rate == Some(0) {
        return Err(AudioError::InvalidArgument(format!(
            "{}: target sample rate must be > 0",
            name.display()
        )));
    }
    let source: Box<dyn MediaSource> = Box::new(Cursor::new(bytes));
    let audio = guarded(name, || decode_source(source, ext_hint, name))?;
    if audio.samples.is_empty() {
        return Err(AudioError::Empty {
            path: name.to_path_buf(),
        });
    }
    match target_rate {
        Some(rate) if rate != audio.sample_rate => {
            let samples = crate::resample::resample(&audio.samples, audio.sample_rate, rate)?;
            Ok(Audio::new(samples, rate))
        }
        _ => Ok(audio),
    }
}

/// Reads sample rate, channel count, length and codec from the container headers.
///
/// Nothing is decoded. WAV, FLAC and Ogg/Vorbis always give `n_frames` from their headers (the
/// Ogg reader seeks to the last page for its granule position). An MP3 with a Xing/Info/VBRI tag
/// gives it from the tag (gapless: the LAME delay and padding are subtracted). An MP3 without a
/// tag has no length in any header; symphonia then estimates it from the bitrate and file size,
/// which is exact for constant bitrate only. Because that estimate cannot be told apart from a
/// tag count and may be wrong for VBR, for an untagged MP3 (and for any other stream whose
/// header lacks a length) the frames are counted from the packet durations instead: this reads
/// every frame header and skips the payloads, but decodes nothing.
pub fn probe_info(path: impl AsRef<Path>) -> Result<AudioInfo> {
    let path = path.as_ref();
    let file = File::open(path).map_err(|source| AudioError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let meta = file.metadata().map_err(|source| AudioError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.is_dir() {
        return Err(AudioError::Open {
            path: path.to_path_buf(),
            source: std::io::Error::other("is a directory"),
        });
    }
    if meta.len() == 0 {
        return Err(AudioError::Empty {
            path: path.to_path_buf(),
        });
    }
    let ext = path.extension().and_then(|e| e.to_str());
    guarded(path, || probe_source(Box::new(file), ext, path))
}

/// Writes mono `samples` as a WAV file at `path`, atomically.
///
/// The data goes to a temporary file in the same directory (`.<name>.tmp-<pid>-<n>`), which is
/// flushed and synced, then renamed to `path`; on any error the temporary file is removed and
/// an existing file at `path` is left untouched. [`WavFormat::Pcm16`] clips (see its doc);
/// [`WavFormat::Float32`] stores the values exactly. Non-finite samples and a zero sample rate
/// are rejected with [`AudioError::InvalidArgument`] before anything is written.
pub fn write_wav(
    path: impl AsRef<Path>,
    samples: &[f32],
    sample_rate: u32,
    format: WavFormat,
) -> Result<()> {
    let path = path.as_ref();
    if sample_rate == 0 {
        return Err(AudioError::InvalidArgument(format!(
            "{}: sample rate must be > 0",
            path.display()
        )));
    }
    if let Some(i) = samples.iter().position(|s| !s.is_finite()) {
        return Err(AudioError::InvalidArgument(format!(
            "{}: sample {i} is not finite ({})",
            path.display(),
            samples[i]
        )));
    }
    let write_err = |reason: String| AudioError::Write {
        path: path.to_path_buf(),
        reason,
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| write_err("path has no file name".into()))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{n}",
        file_name.to_string_lossy(),
        std::process::id()
    ));

    let result = write_wav_to(&tmp, samples, sample_rate, format)
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| format!("rename failed: {e}")));
    if let Err(reason) = result {
        // Best effort: the temp file may not exist if creating it failed.
        let _ = std::fs::remove_file(&tmp);
        return Err(write_err(reason));
    }
    // Persist the rename itself; best effort, as not every filesystem supports syncing a
    // directory and the file is already complete under its final name.
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn write_wav_to(
    tmp: &Path,
    samples: &[f32],
    sample_rate: u32,
    format: WavFormat,
) -> std::result::Result<(), String> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate,
        bits_per_sample: match format {
            WavFormat::Pcm16 => 16,
            WavFormat::Float32 => 32,
        },
        sample_format: match format {
            WavFormat::Pcm16 => hound::SampleFormat::Int,
            WavFormat::Float32 => hound::SampleFormat::Float,
        },
    };
    let file = File::create(tmp).map_err(|e| format!("cannot create temporary file: {e}"))?;
    let mut writer =
        hound::WavWriter::new(std::io::BufWriter::new(file), spec).map_err(|e| e.to_string())?;
    match format {
        WavFormat::Pcm16 => {
            for &s in samples {
                writer
                    .write_sample(pcm16_from_f32(s))
                    .map_err(|e| e.to_string())?;
            }
        }
        WavFormat::Float32 => {
            for &s in samples {
                writer.write_sample(s).map_err(|e| e.to_string())?;
            }
        }
    }
    // `finalize` patches the header sizes; the rename must only happen once the bytes are on
    // disk, hence the fsync through a fresh handle (hound does not give the file back).
    writer.finalize().map_err(|e| e.to_string())?;
    File::open(tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("cannot sync temporary file: {e}"))?;
    Ok(())
}

/// `x * 32768`, rounded, saturated to the `i16` range.
fn pcm16_from_f32(x: f32) -> i16 {
    (f64::from(x) * 32768.0).round().clamp(-32768.0, 32767.0) as i16
}

/// Runs `f`, turning a panic into [`AudioError::Corrupt`] naming `name`.
fn guarded<T>(name: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(AudioError::Corrupt {
                path: name.to_path_buf(),
                reason: format!("decoder panicked: {msg}"),
            })
        }
    }
}

fn corrupt(name: &Path, reason: impl Into<String>) -> AudioError {
    AudioError::Corrupt {
        path: name.to_path_buf(),
        reason: reason.into(),
    }
}

/// Maps a symphonia error during probing/demuxing/decoding to our typed error.
fn map_sym_error(name: &Path, what: &str, e: SymError) -> AudioError {
    match e {
        SymError::Unsupported(msg) => AudioError::Unsupported {
            path: name.to_path_buf(),
            reason: format!("{what}: {msg}"),
        },
        SymError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            corrupt(name, format!("{what}: unexpected end of data (truncated)"))
        }
        other => corrupt(name, format!("{what}: {other}")),
    }
}

fn open_format(
    source: Box<dyn MediaSource>,
    ext_hint: Option<&str>,
    name: &Path,
) -> Result<Box<dyn FormatReader>> {
    let mss = MediaSourceStream::new(source, MediaSourceStreamOptions::default());
    let mut hint = Hint::new();
    if let Some(ext) = ext_hint {
        hint.with_extension(ext);
    }
    let format_opts = FormatOptions {
        enable_gapless: true,
        ..Default::default()
    };
    let probed = symphonia::default::get_probe()
        .format(&hint, mss, &format_opts, &MetadataOptions::default())
        .map_err(|e| match e {
            // A probe that finds no reader at all means "not audio we know"; the reader's own
            // errors (after the magic matched) mean a damaged file.
            SymError::Unsupported(msg) => AudioError::Unsupported {
                path: name.to_path_buf(),
                reason: msg.to_string(),
            },
            other => map_sym_error(name, "reading container header", other),
        })?;
    Ok(probed.format)
}

fn audio_track<'a>(format: &'a dyn FormatReader, name: &Path) -> Result<&'a Track> {
    format
        .default_track()
        .filter(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .or_else(|| {
            format
                .tracks()
                .iter()
                .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        })
        .ok_or_else(|| AudioError::Unsupported {
            path: name.to_path_buf(),
            reason: "no audio track".into(),
        })
}

fn codec_name(params: &CodecParameters) -> String {
    symphonia::default::get_codecs()
        .get_codec(params.codec)
        .map(|d| d.short_name.to_string())
        .unwrap_or_else(|| format!("{}", params.codec))
}

fn decode_source(
    source: Box<dyn MediaSource>,
    ext_hint: Option<&str>,
    name: &Path,
) -> Result<Audio> {
    let mut format = open_format(source, ext_hint, name)?;
    let track = audio_track(format.as_ref(), name)?;
    let track_id = track.id;
    let params = track.codec_params.clone();
    let declared_frames = declared_frames(&params);
    let mut decoder = symphonia::default::get_codecs()
        .make(&params, &DecoderOptions::default())
        .map_err(|e| map_sym_error(name, "opening decoder", e))?;

    let mut samples: Vec<f32> = Vec::new();
    let mut sample_rate: Option<u32> = params.sample_rate.filter(|&r| r > 0);
    let mut n_packet = 0u64;
    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            // symphonia signals the end of the stream with an EOF error; whether the stream was
            // complete is checked against the declared length below.
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(SymError::ResetRequired) => {
                return Err(AudioError::Unsupported {
                    path: name.to_path_buf(),
                    reason: "stream parameters change mid-file (chained stream)".into(),
                })
            }
            Err(e) => {
                return Err(map_sym_error(
                    name,
                    &format!("demuxing packet {n_packet}"),
                    e,
                ))
            }
        };
        n_packet += 1;
        if packet.track_id() != track_id {
            continue;
        }
        let buf = decoder
            .decode(&packet)
            .map_err(|e| map_sym_error(name, &format!("decoding packet {}", n_packet - 1), e))?;
        let spec = *buf.spec();
        if spec.rate == 0 {
            return Err(corrupt(name, "sample rate 0"));
        }
        match sample_rate {
            None => sample_rate = Some(spec.rate),
            Some(r) if r != spec.rate => {
                return Err(corrupt(
                    name,
                    format!("sample rate changes mid-stream ({r} -> {} Hz)", spec.rate),
                ))
            }
            Some(_) => {}
        }
        let channels = spec.channels.count();
        let frames = buf.frames();
        if channels == 0 || frames == 0 {
            continue;
        }
        let mut sb = symphonia::core::audio::SampleBuffer::<f32>::new(frames as u64, spec);
        sb.copy_interleaved_ref(buf);
        let data = sb.samples();
        let inv = 1.0 / channels as f32;
        samples.reserve(frames);
        for frame in data.chunks_exact(channels) {
            let s: f32 = frame.iter().sum::<f32>() * inv;
            samples.push(s);
        }
    }
    if let Some(declared) = declared_frames {
        let decoded = samples.len() as u64;
        // Vorbis decodes whole blocks and its last granule position says where the stream
        // ends, so up to one block of excess is trimmed; more means the header is wrong.
        if decoded > declared + MAX_EXCESS_FRAMES {
            return Err(corrupt(
                name,
                format!("header declares {declared} frames but the stream holds {decoded}"),
            ));
        }
        samples.truncate(usize::try_from(declared).unwrap_or(usize::MAX));
        if (samples.len() as u64) < declared {
            return Err(corrupt(
                name,
                format!(
                    "truncated: header declares {declared} frames, only {} decoded",
                    samples.len()
                ),
            ));
        }
    }
    if let Some(i) = samples.iter().position(|s| !s.is_finite()) {
        return Err(corrupt(name, format!("sample {i} is not finite")));
    }
    let sample_rate = match sample_rate {
        Some(r) => r,
        None if samples.is_empty() => 0,
        None => return Err(corrupt(name, "no sample rate in header or packets")),
    };
    Ok(Audio::new(samples, sample_rate))
}

/// Largest Vorbis block: decoded frames beyond the declared length that are trimmed silently.
const MAX_EXCESS_FRAMES: u64 = 8192;

/// The frame count the container guarantees, if it is trustworthy enough to flag truncation.
///
/// symphonia fills `n_frames` of an untagged MP3 with a bitrate estimate; only a LAME tag (seen
/// as a known encoder delay) marks a count read from the header.
fn declared_frames(params: &CodecParameters) -> Option<u64> {
    let n = params.n_frames?;
    if params.codec == symphonia::core::codecs::CODEC_TYPE_MP3
        || params.codec == symphonia::core::codecs::CODEC_TYPE_MP2
        || params.codec == symphonia::core::codecs::CODEC_TYPE_MP1
    {
        params.delay.map(|_| n)
    } else {
        Some(n)
    }
}

fn probe_source(
    source: Box<dyn MediaSource>,
    ext_hint: Option<&str>,
    name: &Path,
) -> Result<AudioInfo> {
    let mut format = open_format(source, ext_hint, name)?;
    let track = audio_track(format.as_ref(), name)?;
    let track_id = track.id;
    let params = track.codec_params.clone();
    let sample_rate = params
        .sample_rate
        .filter(|&r| r > 0)
        .ok_or_else(|| corrupt(name, "header has no sample rate"))?;
    let channels = params
        .channels
        .map(|c| c.count() as u16)
        .ok_or_else(|| corrupt(name, "header has no channel layout"))?;
    let mut n_frames = declared_frames(&params);
    if n_frames.is_none() {
        // Count from packet durations: reads packet headers, decodes nothing.
        let mut total = 0u64;
        loop {
            match format.next_packet() {
                Ok(p) if p.track_id() == track_id => total = total.saturating_add(p.dur),
                Ok(_) => {}
                Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(map_sym_error(name, "counting packets", e)),
            }
        }
        n_frames = Some(total);
    }
    Ok(AudioInfo {
        sample_rate,
        channels,
        n_frames,
        duration_s: n_frames.map(|n| n as f64 / f64::from(sample_rate)),
        codec: codec_name(&params),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_inside_the_guard_becomes_corrupt() {
        let name = Path::new("some/file.mp3");
        let r: Result<()> = guarded(name, || panic!("decoder bug {}", 42));
        match r {
            Err(AudioError::Corrupt { path, reason }) => {
                assert_eq!(path, name);
                assert!(reason.contains("decoder bug 42"), "{reason}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        let r: Result<()> = guarded(name, || std::panic::panic_any(7u8));
        assert!(matches!(r, Err(AudioError::Corrupt { .. })));
        assert_eq!(guarded(name, || Ok(5)).unwrap(), 5);
    }

    #[test]
    fn pcm16_conversion_rounds_and_saturates() {
        assert_eq!(pcm16_from_f32(0.0), 0);
        assert_eq!(pcm16_from_f32(0.5), 16384);
        assert_eq!(pcm16_from_f32(1.0), 32767);
        assert_eq!(pcm16_from_f32(-1.0), -32768);
        assert_eq!(pcm16_from_f32(-7.0), -32768);
        assert_eq!(pcm16_from_f32(1.0 / 65536.0), 1);
    }
}
