//! `vaak data prepare`: a corpus manifest's audio decoded, made mono, resampled (vaak-audio's
//! rubato resampler), optionally loudness-normalised (EBU R128 integrated loudness) and
//! silence-trimmed, and written as 16-bit FLAC under `OUT/audio/`, with `OUT/manifest.jsonl`
//! pointing at the new files.
//!
//! Resumable: each output is encoded in memory, written to a temporary name
//! (`audio/.<name>.flac.tmp`), fsynced and renamed, so a file under its final name is always
//! complete. A rerun skips rows whose final file exists and whose header reads back, and redoes
//! everything else (a leftover temporary file is overwritten). The manifest is rebuilt from the
//! files on every run (durations come from the FLAC headers), so a killed run loses no finished
//! file; it is written atomically at the end.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use rayon::prelude::*;
use vaak_audio::io::{probe_info, Audio};

use crate::atomic::write_atomic;
use crate::corpus::{read_corpus, write_corpus, CorpusRow};
use crate::error::{DataError, Result};
use crate::safe_id::safe_id;

/// The name of the manifest `prepare` writes in its output directory.
pub const PREPARED_MANIFEST: &str = "manifest.jsonl";
/// The sub-directory of the output directory that holds the FLAC files.
pub const AUDIO_DIR: &str = "audio";

/// Settings of [`prepare`].
#[derive(Clone, Debug)]
pub struct PrepareConfig {
    pub out: PathBuf,
    /// Where relative `audio_path`s are resolved (default: the manifest's directory).
    pub data_root: Option<PathBuf>,
    /// Output sample rate in Hz.
    pub rate: u32,
    /// Target integrated loudness in LUFS, or `None` to keep the level.
    pub loudness_lufs: Option<f64>,
    /// Trim leading and trailing silence (see [`trim_silence`]).
    pub trim_silence: bool,
    /// Worker threads (at least 1).
    pub jobs: usize,
}

impl PrepareConfig {
    pub fn new(out: impl Into<PathBuf>) -> Self {
        Self {
            out: out.into(),
            data_root: None,
            rate: 16_000,
            loudness_lufs: None,
            trim_silence: false,
            jobs: std::thread::available_parallelism().map_or(1, usize::from),
        }
    }
}

/// A row that could not be prepared, and why.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FailedRow {
    pub id: String,
    pub reason: String,
}

/// What [`prepare`] did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PrepareSummary {
    /// Rows in the input manifest (malformed lines not counted).
    pub rows: usize,
    /// Outputs written by this run.
    pub written: usize,
    /// Outputs found finished from an earlier run and kept.
    pub skipped_done: usize,
    /// Rows that failed (left out of the output manifest).
    pub failed: Vec<FailedRow>,
    /// Malformed manifest lines (line number and reason).
    pub malformed: Vec<String>,
    /// Hours of audio in the output manifest.
    pub hours: f64,
    /// The manifest written.
    pub manifest: PathBuf,
}

/// Loads a corpus row's audio as mono at `target_rate` Hz, from a file or a parquet cell
/// ([`crate::audio_ref::load_audio`]); errors name the row.
pub fn load_row_audio(data_root: &Path, row: &CorpusRow, target_rate: u32) -> Result<Audio> {
    let r = row.audio()?;
    crate::audio_ref::load_audio(data_root, &r, Some(target_rate)).map_err(|e| {
        DataError::AudioSource {
            path: PathBuf::from(r.to_string()),
            reason: format!("row {}: {e}", row.id),
        }
    })
}

/// Encodes mono samples as 16-bit FLAC (samples are clipped to `[-1, 1]` and scaled by 32767).
pub fn encode_flac(samples: &[f32], sample_rate: u32) -> Result<Vec<u8>> {
    use flacenc::component::BitRepr;
    use flacenc::error::Verify;
    let ints: Vec<i32> = samples
        .iter()
        .map(|&s| (s.clamp(-1.0, 1.0) * 32767.0).round() as i32)
        .collect();
    let flac_err = |what: &str, e: String| DataError::AudioSource {
        path: PathBuf::from("<flac encoder>"),
        reason: format!("{what}: {e}"),
    };
    let config = flacenc::config::Encoder::default()
        .into_verified()
        .map_err(|(_, e)| flac_err("config", format!("{e:?}")))?;
    let source = flacenc::source::MemSource::from_samples(&ints, 1, 16, sample_rate as usize);
    let mut stream = flacenc::encode_with_fixed_block_size(&config, source, config.block_size)
        .map_err(|e| flac_err("encoding", format!("{e:?}")))?;
    // flacenc records the short last block as the minimum block size; FLAC leaves the last
    // block out of the minimum, and symphonia refuses such a fixed-block stream. Both sizes are
    // the fixed block size.
    stream
        .stream_info_mut()
        .set_block_sizes(config.block_size, config.block_size)
        .map_err(|e| flac_err("stream info", format!("{e:?}")))?;
    let mut sink = flacenc::bitsink::ByteSink::new();
    stream
        .write(&mut sink)
        .map_err(|e| flac_err("writing", format!("{e:?}")))?;
    Ok(sink.as_slice().to_vec())
}

/// Scales `samples` to `target_lufs` integrated loudness (EBU R128, mono). The gain is capped so
/// the peak stays at or below 0.999 (such a clip ends quieter than the target). Clips too short
/// or too quiet to have a gated loudness (under 400 ms, or silent) are left unchanged. Returns
/// the gain applied, in dB.
pub fn normalise_loudness(samples: &mut [f32], rate: u32, target_lufs: f64) -> Result<f64> {
    let err = |e: ebur128::Error| DataError::AudioSource {
        path: PathBuf::from("<loudness>"),
        reason: e.to_string(),
    };
    let mut meter = ebur128::EbuR128::new(1, rate, ebur128::Mode::I).map_err(err)?;
    meter.add_frames_f32(samples).map_err(err)?;
    let lufs = meter.loudness_global().map_err(err)?;
    if !lufs.is_finite() {
        return Ok(0.0);
    }
    let mut gain = 10f64.powf((target_lufs - lufs) / 20.0);
    let peak = samples.iter().fold(0f32, |m, s| m.max(s.abs())) as f64;
    if peak > 0.0 && peak * gain > 0.999 {
        gain = 0.999 / peak;
    }
    for s in samples.iter_mut() {
        *s = (*s as f64 * gain) as f32;
    }
    Ok(20.0 * gain.log10())
}

/// Trims leading and trailing silence: 10 ms frames whose RMS is more than 40 dB below the
/// loudest frame (or below -60 dBFS) are silence; 50 ms of margin is kept on each side. An
/// all-silent clip is returned unchanged.
pub fn trim_silence(samples: &[f32], rate: u32) -> &[f32] {
    let frame = (rate as usize / 100).max(1);
    let rms: Vec<f64> = samples
        .chunks(frame)
        .map(|c| (c.iter().map(|&s| (s as f64) * (s as f64)).sum::<f64>() / c.len() as f64).sqrt())
        .collect();
    let loudest = rms.iter().cloned().fold(0.0, f64::max);
    let threshold = (loudest * 10f64.powf(-40.0 / 20.0)).max(10f64.powf(-60.0 / 20.0));
    let (Some(first), Some(last)) = (
        rms.iter().position(|&r| r > threshold),
        rms.iter().rposition(|&r| r > threshold),
    ) else {
        return samples;
    };
    let margin = rate as usize / 20;
    let start = (first * frame).saturating_sub(margin);
    let end = ((last + 1) * frame + margin).min(samples.len());
    &samples[start..end]
}

/// The output file of row id `id`, relative to the output directory.
pub fn output_rel_path(id: &str) -> String {
    format!("{AUDIO_DIR}/{}.flac", safe_id(id))
}

/// Runs `prepare` over `manifest`. `on_row(seconds)` is called (from worker threads) once per
/// finished row with the output duration (0 for a failed row), for progress reporting.
pub fn prepare(
    manifest: &Path,
    cfg: &PrepareConfig,
    on_row: &(dyn Fn(f64) + Sync),
) -> Result<PrepareSummary> {
    if cfg.rate == 0 {
        return Err(DataError::AudioSource {
            path: manifest.into(),
            reason: "output rate 0".into(),
        });
    }
    let m = read_corpus(manifest)?;
    let mut seen = HashSet::new();
    for r in &m.rows {
        if !seen.insert(safe_id(&r.id)) {
            return Err(DataError::Manifest {
                path: manifest.into(),
                reason: format!("id {:?} appears twice; output names must be unique", r.id),
            });
        }
    }
    let root = cfg
        .data_root
        .clone()
        .unwrap_or_else(|| manifest.parent().map(Path::to_path_buf).unwrap_or_default());
    let audio_dir = cfg.out.join(AUDIO_DIR);
    std::fs::create_dir_all(&audio_dir).map_err(|e| DataError::io(&audio_dir, e))?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(cfg.jobs.max(1))
        .build()
        .map_err(|e| DataError::AudioSource {
            path: cfg.out.clone(),
            reason: format!("thread pool: {e}"),
        })?;
    let written = AtomicUsize::new(0);
    let skipped = AtomicUsize::new(0);
    let failed = Mutex::new(Vec::new());
    let results: Vec<Option<CorpusRow>> = pool.install(|| {
        m.rows
            .par_iter()
            .map(|row| {
                let rel = output_rel_path(&row.id);
                let out = cfg.out.join(&rel);
                let done = done_duration(&out, cfg.rate);
                let res = match done {
                    Some(d) => {
                        skipped.fetch_add(1, Ordering::Relaxed);
                        Ok(d)
                    }
                    None => prepare_one(&root, row, &out, cfg).inspect(|_| {
                        written.fetch_add(1, Ordering::Relaxed);
                    }),
                };
                match res {
                    Ok(duration_s) => {
                        on_row(duration_s);
                        Some(CorpusRow {
                            audio_path: rel,
                            duration_s,
                            sample_rate: Some(cfg.rate),
                            channels: Some(1),
                            source_id: Some(row.id.clone()),
                            ..row.clone()
                        })
                    }
                    Err(e) => {
                        on_row(0.0);
                        tracing::warn!("prepare: row {}: {e}", row.id);
                        failed
                            .lock()
                            .expect("no panics hold the lock")
                            .push(FailedRow {
                                id: row.id.clone(),
                                reason: e.to_string(),
                            });
                        None
                    }
                }
            })
            .collect()
    });
    let rows: Vec<CorpusRow> = results.into_iter().flatten().collect();
    let path = cfg.out.join(PREPARED_MANIFEST);
    write_corpus(&path, &rows)?;
    let mut failed = failed.into_inner().expect("no panics hold the lock");
    failed.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(PrepareSummary {
        rows: m.rows.len(),
        written: written.into_inner(),
        skipped_done: skipped.into_inner(),
        failed,
        malformed: m
            .malformed
            .iter()
            .map(|b| format!("line {}: {}", b.line, b.reason))
            .collect(),
        hours: rows.iter().map(|r| r.duration_s).sum::<f64>() / 3600.0,
        manifest: path,
    })
}

/// The duration of a finished output, or `None` when it must be (re)made: missing, unreadable,
/// or at another rate.
fn done_duration(out: &Path, rate: u32) -> Option<f64> {
    let info = probe_info(out).ok()?;
    (info.sample_rate == rate && info.channels == 1)
        .then_some(info.duration_s)
        .flatten()
}

fn prepare_one(root: &Path, row: &CorpusRow, out: &Path, cfg: &PrepareConfig) -> Result<f64> {
    let audio = load_row_audio(root, row, cfg.rate)?;
    let mut samples = audio.samples;
    if cfg.trim_silence {
        let kept = trim_silence(&samples, cfg.rate);
        samples = kept.to_vec();
    }
    if let Some(target) = cfg.loudness_lufs {
        normalise_loudness(&mut samples, cfg.rate, target)?;
    }
    let bytes = encode_flac(&samples, cfg.rate).map_err(|e| match e {
        DataError::AudioSource { reason, .. } => DataError::AudioSource {
            path: out.into(),
            reason,
        },
        other => other,
    })?;
    write_atomic(out, &bytes)?;
    Ok(samples.len() as f64 / f64::from(cfg.rate))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::atomic::temp_name;

    #[test]
    fn flac_round_trips_through_the_decoder() {
        let d = tempfile::tempdir().unwrap();
        let x: Vec<f32> = (0..30000).map(|i| 0.5 * (i as f32 * 0.05).sin()).collect();
        let p = d.path().join("a.flac");
        write_atomic(&p, &encode_flac(&x, 16000).unwrap()).unwrap();
        let back = vaak_audio::io::decode_file(&p, None).unwrap();
        assert_eq!(back.sample_rate, 16000);
        assert_eq!(back.samples.len(), 30000);
        let err = x
            .iter()
            .zip(&back.samples)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(err < 1.0 / 16000.0, "max error {err}");
        assert!(!temp_name(&p).exists());
        // A length that is not a whole number of blocks, and one shorter than a block.
        for n in [22_050, 1000] {
            write_atomic(&p, &encode_flac(&x[..n.min(x.len())], 16000).unwrap()).unwrap();
            let info = probe_info(&p).unwrap();
            assert_eq!(info.n_frames, Some(n.min(x.len()) as u64));
        }
    }

    #[test]
    fn trim_keeps_the_loud_part_with_margins() {
        let mut x = vec![0f32; 16000];
        x.extend((0..8000).map(|i| 0.3 * (i as f32 * 0.1).sin()));
        x.extend(vec![0f32; 16000]);
        let t = trim_silence(&x, 16000);
        assert!(
            (8000..=8000 + 2 * 800 + 320).contains(&t.len()),
            "{}",
            t.len()
        );
        assert_eq!(trim_silence(&[0f32; 100], 16000).len(), 100);
    }

    #[test]
    fn loudness_reaches_the_target() {
        let mut x: Vec<f32> = (0..32000)
            .map(|i| 0.05 * (i as f32 * 2.0 * std::f32::consts::PI * 440.0 / 16000.0).sin())
            .collect();
        normalise_loudness(&mut x, 16000, -23.0).unwrap();
        let mut m = ebur128::EbuR128::new(1, 16000, ebur128::Mode::I).unwrap();
        m.add_frames_f32(&x).unwrap();
        let l = m.loudness_global().unwrap();
        assert!((l + 23.0).abs() < 0.1, "{l}");
    }
}
