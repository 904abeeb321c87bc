//! [`EcapaSpeakerEncoder`]: a published speechbrain ECAPA model behind [`SpeakerEncoder`].

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use vaak_audio::features::{FeatureMatrix, SpeechbrainFbank};
use vaak_audio::resample::resample;
use vaak_nn::weights::{HubOptions, LoadOptions, WeightLocation, Weights};

use super::ecapa::{EcapaTdnn, FrameLengths};
use super::hyperparams::{EcapaHyperparams, InputNormConfig};
use crate::error::{Result, TeacherError};
use crate::{AudioRef, ItemResult, ModelId, SpeakerEncoder};

/// File names of the published repository.
pub const HYPERPARAMS_FILE: &str = "hyperparams.yaml";
pub const EMBEDDING_MODEL_FILE: &str = "embedding_model.ckpt";

/// How clips of different lengths share a batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EcapaBatching {
    /// Every clip gets exactly what `EncoderClassifier.encode_batch` gives it alone, whatever
    /// else is in the batch (clips are still computed together, padded, and length-sorted into
    /// sub-batches). Embeddings are reproducible across batchings, which resumable data
    /// generation needs.
    #[default]
    PerClip,
    /// Exactly `encode_batch(padded_batch, wav_lens)`: one forward over the valid items in the
    /// order given, zero-padded to the longest, `wav_lens = len / max_len`. In speechbrain the
    /// padding leaks into a short clip's last frames through the reflect-padded convolutions,
    /// so a clip's embedding depends on its batch-mates (by up to ~0.1 absolute on the tiny
    /// fixture model). Items rejected by validation are left out of the padded batch (their
    /// lengths would make speechbrain fail).
    SpeechbrainPadded,
}

/// Loading and batching options.
#[derive(Clone, Debug)]
pub struct EcapaOptions {
    pub batching: EcapaBatching,
    pub device: Device,
    pub hub: HubOptions,
    /// [`EcapaBatching::PerClip`] splits a batch so that no sub-batch holds more than this many
    /// padded frames (items x longest frames); one long clip always gets its own.
    pub max_batch_frames: usize,
}

impl Default for EcapaOptions {
    fn default() -> Self {
        Self {
            batching: EcapaBatching::default(),
            device: Device::Cpu,
            hub: HubOptions::default(),
            // 16 clips of 30 s.
            max_batch_frames: 16 * 3001,
        }
    }
}

/// speechbrain ECAPA-TDNN speaker embeddings (`EncoderClassifier.encode_batch`, without the
/// optional `mean_var_norm_emb`, which `encode_batch` only applies when asked to normalise).
pub struct EcapaSpeakerEncoder {
    hp: EcapaHyperparams,
    fbank: SpeechbrainFbank,
    model: EcapaTdnn,
    id: ModelId,
    opts: EcapaOptions,
    min_samples: usize,
}

impl std::fmt::Debug for EcapaSpeakerEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EcapaSpeakerEncoder")
            .field("id", &self.id)
            .field("hp", &self.hp)
            .field("batching", &self.opts.batching)
            .finish()
    }
}

impl EcapaSpeakerEncoder {
    /// Loads `hyperparams.yaml` and `embedding_model.ckpt` from a local directory or
    /// `hf://speechbrain/spkrec-ecapa-voxceleb[@rev]`.
    pub fn load(location: &str, opts: EcapaOptions) -> Result<Self> {
        let loc = WeightLocation::parse(location)?;
        let hp_path = loc.join(HYPERPARAMS_FILE).resolve_file(&opts.hub)?;
        let hp = EcapaHyperparams::from_file(&hp_path)?;
        let ckpt = loc.join(EMBEDDING_MODEL_FILE).resolve_file(&opts.hub)?;
        let weights = Weights::from_files(
            &[ckpt],
            &LoadOptions {
                dtype: Some(candle_core::DType::F32),
                device: opts.device.clone(),
                hub: opts.hub.clone(),
                state_dict_key: None,
            },
        )?;
        let model = EcapaTdnn::load(&weights, &hp.model)?;
        let revision = match &loc {
            WeightLocation::Hub { revision, .. } => Some(revision.clone()),
            WeightLocation::Local(_) => None,
        };
        let id = ModelId {
            name: location.to_string(),
            revision,
        };
        Self::from_parts(hp, model, id, opts)
    }

    /// Wraps an already built model.
    pub fn from_parts(
        hp: EcapaHyperparams,
        model: EcapaTdnn,
        id: ModelId,
        opts: EcapaOptions,
    ) -> Result<Self> {
        let fbank = SpeechbrainFbank::new(hp.fbank.clone()).map_err(|e| TeacherError::Config {
            path: PathBuf::from(HYPERPARAMS_FILE),
            reason: format!("compute_features: {e}"),
        })?;
        let hop = (hp.fbank.sample_rate as f64 / 1000.0 * hp.fbank.hop_length_ms).round() as usize;
        let win = (hp.fbank.sample_rate as f64 / 1000.0 * hp.fbank.win_length_ms).round() as usize;
        // Frames are 1 + len / hop; the widest conv reflects `max_time_padding` frames, which
        // torch only allows on more frames than that. Below one analysis window a clip holds no
        // full frame of speech.
        let min_frames = hp.model.max_time_padding() + 1;
        let min_samples = ((min_frames - 1) * hop).max(win).max(1);
        Ok(Self {
            hp,
            fbank,
            model,
            id,
            opts,
            min_samples,
        })
    }

    /// The parsed hyperparams.
    pub fn hyperparams(&self) -> &EcapaHyperparams {
        &self.hp
    }

    /// The network.
    pub fn model(&self) -> &EcapaTdnn {
        &self.model
    }

    /// The model's sample rate (clips at other rates are resampled first).
    pub fn sample_rate(&self) -> u32 {
        self.hp.fbank.sample_rate
    }

    /// Shortest clip accepted, in samples at [`Self::sample_rate`].
    pub fn min_samples(&self) -> usize {
        self.min_samples
    }

    /// Checks and resamples one clip.
    fn prepare(&self, i: usize, clip: &AudioRef<'_>) -> ItemResult<Vec<f32>> {
        let bad = |m: String| TeacherError::BadInput(format!("item {i}: {m}"));
        if clip.sample_rate == 0 {
            return Err(bad("sample rate is 0".into()));
        }
        if clip.samples.is_empty() {
            return Err(bad("empty clip".into()));
        }
        if let Some(j) = clip.samples.iter().position(|s| !s.is_finite()) {
            return Err(bad(format!("sample {j} is not finite")));
        }
        let sr = self.sample_rate();
        let samples = if clip.sample_rate == sr {
            clip.samples.to_vec()
        } else {
            resample(clip.samples, clip.sample_rate, sr)?
        };
        if samples.len() < self.min_samples {
            return Err(bad(format!(
                "clip of {} samples at {sr} Hz is shorter than the minimum of {} ({:.3} s)",
                samples.len(),
                self.min_samples,
                self.min_samples as f64 / sr as f64
            )));
        }
        Ok(samples)
    }

    /// Embeddings of already prepared 16 kHz clips computed as one padded batch.
    fn forward_batch(&self, clips: &[&[f32]]) -> Result<Vec<Vec<f32>>> {
        let max_len = clips.iter().map(|c| c.len()).max().unwrap_or(0);
        let padded = self.opts.batching == EcapaBatching::SpeechbrainPadded;
        let mut feats: Vec<FeatureMatrix> = Vec::with_capacity(clips.len());
        let mut lengths_rel = Vec::with_capacity(clips.len());
        let mut lengths_frames = Vec::with_capacity(clips.len());
        for clip in clips {
            let f = if padded {
                // speechbrain computes Fbank on the zero-padded waveform.
                let mut wav = clip.to_vec();
                wav.resize(max_len, 0.0);
                self.fbank.compute(&wav)?
            } else {
                self.fbank.compute(clip)?
            };
            lengths_rel.push((clip.len() as f64 / max_len as f64) as f32);
            lengths_frames.push(f.n_frames);
            feats.push(f);
        }
        let t = feats.iter().map(|f| f.n_frames).max().unwrap_or(0);
        let n_mels = self.hp.fbank.n_mels;
        let mut data = vec![0.0f32; clips.len() * t * n_mels];
        for (b, f) in feats.iter_mut().enumerate() {
            let valid = if padded {
                mask_count(lengths_rel[b], f.n_frames)
            } else {
                f.n_frames
            };
            sentence_normalize(f, valid, &self.hp.norm);
            data[b * t * n_mels..b * t * n_mels + f.data.len()].copy_from_slice(&f.data);
        }
        let x = Tensor::from_vec(data, (clips.len(), t, n_mels), &self.opts.device)?;
        let lengths = if padded {
            FrameLengths::Relative(lengths_rel)
        } else {
            FrameLengths::Frames(lengths_frames)
        };
        let emb = self.model.forward(&x, &lengths)?;
        Ok(emb.to_dtype(candle_core::DType::F32)?.to_vec2()?)
    }
}

/// Frames `InputNormalization` counts as valid: `t < rel * T - 1e-6` in `f32`
/// (speechbrain's `make_padding_mask`).
fn mask_count(rel: f32, t: usize) -> usize {
    let bound = rel * t as f32 - 1e-6f32;
    (0..t).take_while(|&i| (i as f32) < bound).count()
}

/// `InputNormalization(norm_type="sentence")` with statistics over the first `valid` frames.
pub(crate) fn sentence_normalize(f: &mut FeatureMatrix, valid: usize, cfg: &InputNormConfig) {
    let nf = f.n_features;
    if valid == 0 || nf == 0 {
        return;
    }
    let mut mean = vec![0.0f64; nf];
    for row in f.data.chunks(nf).take(valid) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= valid as f64);
    let mean: Vec<f32> = mean.into_iter().map(|m| m as f32).collect();
    let std: Vec<f32> = if cfg.std_norm {
        let mut var = vec![0.0f64; nf];
        for row in f.data.chunks(nf).take(valid) {
            for ((s, &v), &m) in var.iter_mut().zip(row).zip(&mean) {
                *s += ((v - m) as f64).powi(2);
            }
        }
        var.into_iter()
            .map(|s| ((s / valid as f64).sqrt() as f32).max(cfg.epsilon))
            .collect()
    } else {
        vec![1.0f32.max(cfg.epsilon); nf]
    };
    for (t, row) in f.data.chunks_mut(nf).enumerate() {
        if cfg.avoid_padding_norm && t >= valid {
            // Mean 0 and std 1 on padding.
            for v in row.iter_mut() {
                *v /= 1.0f32.max(cfg.epsilon);
            }
            continue;
        }
        for ((v, &m), &s) in row.iter_mut().zip(&mean).zip(&std) {
            *v = (*v - m) / s;
        }
    }
}

impl SpeakerEncoder for EcapaSpeakerEncoder {
    fn model_id(&self) -> ModelId {
        self.id.clone()
    }

    fn dim(&self) -> usize {
        self.hp.model.lin_neurons
    }

    fn embed(&self, batch: &[AudioRef<'_>]) -> Result<Vec<ItemResult<Vec<f32>>>> {
        let mut out: Vec<ItemResult<Vec<f32>>> = Vec::with_capacity(batch.len());
        let mut ready: Vec<(usize, Vec<f32>)> = Vec::new();
        for (i, clip) in batch.iter().enumerate() {
            match self.prepare(i, clip) {
                Ok(s) => {
                    ready.push((i, s));
                    out.push(Ok(Vec::new()));
                }
                Err(e) => out.push(Err(e)),
            }
        }
        if ready.is_empty() {
            return Ok(out);
        }
        match self.opts.batching {
            EcapaBatching::SpeechbrainPadded => {
                let clips: Vec<&[f32]> = ready.iter().map(|(_, s)| s.as_slice()).collect();
                for ((i, _), e) in ready.iter().zip(self.forward_batch(&clips)?) {
                    out[*i] = Ok(e);
                }
            }
            EcapaBatching::PerClip => {
                // Results do not depend on the grouping, so sort by length to pad little.
                ready.sort_by_key(|(_, s)| std::cmp::Reverse(s.len()));
                let hop = self.fbank.config().hop_length_ms * self.sample_rate() as f64 / 1000.0;
                let frames = |n: usize| 1 + (n as f64 / hop.round()) as usize;
                let mut start = 0;
                while start < ready.len() {
                    // Longest first, so the first item sets the padded length.
                    let longest = frames(ready[start].1.len());
                    let fit = (self.opts.max_batch_frames / longest).max(1);
                    let end = (start + fit).min(ready.len());
                    let clips: Vec<&[f32]> = ready[start..end]
                        .iter()
                        .map(|(_, s)| s.as_slice())
                        .collect();
                    let embs = self.forward_batch(&clips)?;
                    for ((i, _), e) in ready[start..end].iter().zip(embs) {
                        out[*i] = Ok(e);
                    }
                    start = end;
                }
            }
        }
        Ok(out)
    }
}
