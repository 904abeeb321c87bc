//! `vaak data augment`: new corpus rows made from a manifest's rows by one effect each, with
//! vaak-audio's seeded effects ([`vaak_audio::augment`]):
//!
//! - `speed=F`: Kaldi-style speed perturbation (resampling; duration becomes `1/F`, pitch moves
//!   by `F`);
//! - `pitch=±N`: pitch shift by `N` semitones at the same length (resample + phase-vocoder
//!   time stretch);
//! - `noise_snr=D`: additive noise at `D` dB SNR: white Gaussian noise, or a clip from the
//!   noise directory looped/cropped from a seeded offset;
//! - `gain=G`: a gain of `G` dB (the 16-bit FLAC output clips at full scale).
//!
//! Every value of every effect makes one new row per source row: `--speed 0.9,1.1` doubles the
//! data, `--speed 0.9,1.1 --pitch -2,2` makes four copies. A new row's id is
//! `<source id>~<effect>`, its `source_id` the source's id and its `augment` the effect
//! (`speed=0.9`). The random draws of a row come from a ChaCha8 generator seeded with a hash of
//! `(seed, source id, effect)`, so the same seed gives the same bytes whatever the thread count
//! or row order. Outputs are FLAC under `OUT/audio/`, written and resumed like `prepare`'s.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use vaak_audio::augment as fx;
use vaak_audio::io::{decode_file, Audio};

use crate::atomic::write_atomic;
use crate::corpus::{read_corpus, write_corpus, CorpusRow};
use crate::error::{DataError, Result};
use crate::prepare::{encode_flac, load_row_audio, output_rel_path, FailedRow, PREPARED_MANIFEST};
use crate::safe_id::stable_hash;
use crate::sources::collect_audio;

/// One effect with its parameter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Effect {
    Speed(f64),
    Pitch(f64),
    NoiseSnr(f64),
    Gain(f64),
}

impl Effect {
    /// The `augment` label of rows made with this effect (`speed=0.9`, `pitch=+2`,
    /// `noise_snr=10`, `gain=-6`).
    pub fn label(&self) -> String {
        match *self {
            Self::Speed(f) => format!("speed={f}"),
            Self::Pitch(n) => format!("pitch={n:+}"),
            Self::NoiseSnr(d) => format!("noise_snr={d}"),
            Self::Gain(g) => format!("gain={g:+}"),
        }
    }
}

/// Settings of [`augment`].
#[derive(Clone, Debug)]
pub struct AugmentSettings {
    pub out: PathBuf,
    pub data_root: Option<PathBuf>,
    /// Sample rate the sources are decoded at and the outputs written at.
    pub rate: u32,
    pub effects: Vec<Effect>,
    pub seed: u64,
    /// A directory of noise clips (searched recursively); white noise when `None`.
    pub noise_dir: Option<PathBuf>,
    /// Also write each source row (at `rate`, FLAC, `augment` empty) into the output, so its
    /// manifest alone is the source plus the copies.
    pub with_source: bool,
    pub jobs: usize,
}

/// What [`augment`] did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct AugmentSummary {
    pub source_rows: usize,
    /// New rows in the output manifest.
    pub augmented_rows: usize,
    pub written: usize,
    pub skipped_done: usize,
    pub failed: Vec<FailedRow>,
    pub hours: f64,
    pub manifest: PathBuf,
}

/// Applies `effect` to `audio`; `rng` draws noise; `noise` are the noise clips (at the audio's
/// rate), white noise when empty.
pub fn apply_effect(
    audio: &Audio,
    effect: Effect,
    rng: &mut impl Rng,
    noise: &[Vec<f32>],
) -> Result<Audio> {
    Ok(match effect {
        Effect::Speed(f) => fx::speed(audio, f)?,
        Effect::Pitch(n) => fx::pitch_shift(audio, n)?,
        Effect::Gain(g) => Audio::new(fx::gain_db(&audio.samples, g), audio.sample_rate),
        Effect::NoiseSnr(snr) => {
            let n = audio.samples.len();
            let noise = if noise.is_empty() {
                fx::white_noise(n, rng)
            } else {
                let clip = &noise[rng.random_range(0..noise.len())];
                fx::fit_noise(clip, n, rng)?
            };
            Audio::new(
                fx::add_noise(&audio.samples, &noise, snr)?,
                audio.sample_rate,
            )
        }
    })
}

/// The generator for `(seed, source id, effect)`.
pub fn effect_rng(seed: u64, id: &str, effect: Effect) -> ChaCha8Rng {
    let key = format!("{id}\u{0}{}", effect.label());
    ChaCha8Rng::seed_from_u64(stable_hash(seed, key.as_bytes()))
}

/// Runs `augment` over `manifest`; `on_row(seconds)` as for [`crate::prepare::prepare`].
pub fn augment(
    manifest: &Path,
    cfg: &AugmentSettings,
    on_row: &(dyn Fn(f64) + Sync),
) -> Result<AugmentSummary> {
    if cfg.effects.is_empty() {
        return Err(DataError::AudioSource {
            path: manifest.into(),
            reason: "no effect asked for (give --speed, --pitch, --noise-snr or --gain-db)".into(),
        });
    }
    for e in &cfg.effects {
        let ok = match *e {
            Effect::Speed(f) => (0.25..=4.0).contains(&f),
            Effect::Pitch(n) => n.is_finite() && n.abs() <= 24.0,
            Effect::NoiseSnr(d) | Effect::Gain(d) => d.is_finite(),
        };
        if !ok {
            return Err(DataError::AudioSource {
                path: manifest.into(),
                reason: format!("effect {} out of range", e.label()),
            });
        }
    }
    let m = read_corpus(manifest)?;
    let root = cfg
        .data_root
        .clone()
        .unwrap_or_else(|| manifest.parent().map(Path::to_path_buf).unwrap_or_default());
    let noise = match &cfg.noise_dir {
        None => Vec::new(),
        Some(dir) => load_noise(dir, cfg.rate)?,
    };
    let audio_dir = cfg.out.join(crate::prepare::AUDIO_DIR);
    std::fs::create_dir_all(&audio_dir).map_err(|e| DataError::io(&audio_dir, e))?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(cfg.jobs.max(1))
        .build()
        .map_err(|e| DataError::AudioSource {
            path: cfg.out.clone(),
            reason: format!("thread pool: {e}"),
        })?;
    let failed = Mutex::new(Vec::new());
    let counts = Mutex::new((0usize, 0usize));
    // `None` is the source itself (with --with-source), written like the copies.
    let steps: Vec<Option<Effect>> = cfg
        .with_source
        .then_some(None)
        .into_iter()
        .chain(cfg.effects.iter().copied().map(Some))
        .collect();
    let per_row: Vec<Vec<CorpusRow>> = pool.install(|| {
        m.rows
            .par_iter()
            .map(|row| {
                let mut out_rows = Vec::new();
                let mut source: Option<Audio> = None;
                for &step in &steps {
                    let label = step.map(|e| e.label());
                    let id = match &label {
                        Some(l) => format!("{}~{l}", row.id),
                        None => row.id.clone(),
                    };
                    let rel = output_rel_path(&id);
                    let out = cfg.out.join(&rel);
                    let res = match vaak_audio::io::probe_info(&out)
                        .ok()
                        .filter(|i| i.sample_rate == cfg.rate)
                        .and_then(|i| i.duration_s)
                    {
                        Some(d) => {
                            counts.lock().expect("no panics hold the lock").1 += 1;
                            Ok(d)
                        }
                        None => {
                            let made = (|| -> Result<f64> {
                                if source.is_none() {
                                    source = Some(load_row_audio(&root, row, cfg.rate)?);
                                }
                                let src = source.as_ref().expect("loaded above");
                                let a = match step {
                                    Some(effect) => {
                                        let mut rng = effect_rng(cfg.seed, &row.id, effect);
                                        apply_effect(src, effect, &mut rng, &noise)?
                                    }
                                    None => src.clone(),
                                };
                                write_atomic(&out, &encode_flac(&a.samples, cfg.rate)?)?;
                                Ok(a.duration_s())
                            })();
                            if made.is_ok() {
                                counts.lock().expect("no panics hold the lock").0 += 1;
                            }
                            made
                        }
                    };
                    match res {
                        Ok(duration_s) => {
                            on_row(duration_s);
                            out_rows.push(CorpusRow {
                                id,
                                audio_path: rel,
                                duration_s,
                                sample_rate: Some(cfg.rate),
                                channels: Some(1),
                                source_id: Some(row.id.clone()),
                                augment: label,
                                ..row.clone()
                            });
                        }
                        Err(e) => {
                            on_row(0.0);
                            tracing::warn!("augment: row {id}: {e}");
                            failed
                                .lock()
                                .expect("no panics hold the lock")
                                .push(FailedRow {
                                    id,
                                    reason: e.to_string(),
                                });
                        }
                    }
                }
                out_rows
            })
            .collect()
    });
    let rows: Vec<CorpusRow> = per_row.into_iter().flatten().collect();
    let n_aug = rows.iter().filter(|r| r.augment.is_some()).count();
    let path = cfg.out.join(PREPARED_MANIFEST);
    write_corpus(&path, &rows)?;
    let mut failed = failed.into_inner().expect("no panics hold the lock");
    failed.sort_by(|a, b| a.id.cmp(&b.id));
    let (written, skipped_done) = counts.into_inner().expect("no panics hold the lock");
    Ok(AugmentSummary {
        source_rows: m.rows.len(),
        augmented_rows: n_aug,
        written,
        skipped_done,
        failed,
        hours: rows.iter().map(|r| r.duration_s).sum::<f64>() / 3600.0,
        manifest: path,
    })
}

fn load_noise(dir: &Path, rate: u32) -> Result<Vec<Vec<f32>>> {
    let found = collect_audio(dir, None, &["wav", "flac", "ogg", "mp3"])?;
    let mut clips = Vec::new();
    for c in &found.clips {
        let a = decode_file(&c.path, Some(rate))?;
        if a.samples.iter().any(|&s| s != 0.0) {
            clips.push(a.samples);
        }
    }
    if clips.is_empty() {
        return Err(DataError::AudioSource {
            path: dir.into(),
            reason: "no non-silent .wav/.flac/.ogg/.mp3 noise clip found".into(),
        });
    }
    Ok(clips)
}

/// Parses a comma-separated list of numbers (`0.9,1.1`, `-2,2`).
pub fn parse_list(s: &str) -> std::result::Result<Vec<f64>, String> {
    s.split(',')
        .map(|v| {
            v.trim()
                .parse::<f64>()
                .map_err(|e| format!("bad number {v:?} in {s:?}: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_lists() {
        assert_eq!(Effect::Speed(0.9).label(), "speed=0.9");
        assert_eq!(Effect::Pitch(2.0).label(), "pitch=+2");
        assert_eq!(Effect::Pitch(-1.5).label(), "pitch=-1.5");
        assert_eq!(Effect::NoiseSnr(10.0).label(), "noise_snr=10");
        assert_eq!(parse_list("0.9, 1.1").unwrap(), [0.9, 1.1]);
        assert!(parse_list("0.9,x").is_err());
    }
}
