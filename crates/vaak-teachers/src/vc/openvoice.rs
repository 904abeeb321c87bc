//! OpenVoice V2's tone-colour converter (`api.ToneColorConverter`), loaded from the published
//! `converter/config.json` + `converter/checkpoint.pth`.
//!
//! * [`ToneColorConverter::extract_se`]: linear spectrogram -> reference encoder -> embedding,
//!   averaged over the clips given (as upstream).
//! * [`ToneColorConverter::convert`]: spectrogram -> posterior encoder (sample with noise scaled
//!   by `tau`) -> flow forward under the source embedding -> flow reverse under the target
//!   embedding -> HiFi-GAN decoder (`SynthesizerTrn.voice_conversion`). With `zero_g` (V2) the
//!   posterior encoder and the decoder get a zero embedding.
//!
//! Upstream's output watermark (wavmark) is not applied: it is a separate model and changes no
//! tone colour.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use vaak_audio::resample::resample;
use vaak_nn::weights::{HubOptions, LoadOptions, WeightLocation, Weights};

use super::config::OpenVoiceConfig;
use super::layers::{sequence_mask, Flow, Generator, PosteriorEncoder, ReferenceEncoder};
use super::spectrogram::LinearSpectrogram;
use crate::error::{Result, TeacherError};
use crate::{AudioRef, ItemResult, ModelId, SpeakerEncoder};

/// File names inside the published `converter/` folder.
pub const CONFIG_FILE: &str = "config.json";
pub const CHECKPOINT_FILE: &str = "checkpoint.pth";

/// Upstream's default `tau` (scale of the posterior noise).
pub const DEFAULT_TAU: f32 = 0.3;

/// Where to load and run.
#[derive(Clone, Debug)]
pub struct ConverterOptions {
    pub device: Device,
    pub hub: HubOptions,
}

impl Default for ConverterOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            hub: HubOptions::default(),
        }
    }
}

/// The tone-colour converter.
#[derive(Debug)]
pub struct ToneColorConverter {
    cfg: OpenVoiceConfig,
    spec: LinearSpectrogram,
    ref_enc: ReferenceEncoder,
    enc_q: PosteriorEncoder,
    flow: Flow,
    dec: Generator,
    device: Device,
    id: ModelId,
}

impl ToneColorConverter {
    /// Loads `config.json` and `checkpoint.pth` from a local directory or an `hf://` folder,
    /// e.g. `hf://myshell-ai/OpenVoiceV2/converter`.
    pub fn load(location: &str, opts: &ConverterOptions) -> Result<Self> {
        let loc = WeightLocation::parse(location)?;
        let cfg_path = loc.join(CONFIG_FILE).resolve_file(&opts.hub)?;
        let cfg = OpenVoiceConfig::from_file(&cfg_path)?;
        let ckpt = loc.join(CHECKPOINT_FILE).resolve_file(&opts.hub)?;
        let weights = Weights::from_files(
            &[ckpt],
            &LoadOptions {
                dtype: Some(DType::F32),
                device: opts.device.clone(),
                hub: opts.hub.clone(),
                state_dict_key: None,
            },
        )?;
        let revision = match &loc {
            WeightLocation::Hub { revision, .. } => Some(revision.clone()),
            WeightLocation::Local(_) => None,
        };
        let id = ModelId {
            name: location.to_string(),
            revision,
        };
        Self::from_weights(cfg, weights, id)
    }

    /// Builds the converter from a parsed config and an opened checkpoint (its `model` state
    /// dict, as `Weights` finds it).
    pub fn from_weights(cfg: OpenVoiceConfig, weights: Weights, id: ModelId) -> Result<Self> {
        cfg.validate().map_err(|reason| TeacherError::Config {
            path: PathBuf::from(CONFIG_FILE),
            reason,
        })?;
        let device = weights.device().clone();
        let vb = weights.into_var_builder(Some(DType::F32));
        let m = &cfg.model;
        let spec_ch = cfg.spec_channels();
        let wrap = |what: &str, e: candle_core::Error| {
            TeacherError::Msg(format!("{}: loading {what}: {e}", id.name))
        };
        let ref_enc = ReferenceEncoder::load(&vb.pp("ref_enc"), spec_ch, m.gin_channels)
            .map_err(|e| wrap("ref_enc", e))?;
        let enc_q = PosteriorEncoder::load(
            &vb.pp("enc_q"),
            spec_ch,
            m.inter_channels,
            m.hidden_channels,
            m.gin_channels,
        )
        .map_err(|e| wrap("enc_q", e))?;
        let flow = Flow::load(
            &vb.pp("flow"),
            m.inter_channels,
            m.hidden_channels,
            m.gin_channels,
            &device,
        )
        .map_err(|e| wrap("flow", e))?;
        let dec = Generator::load(&vb.pp("dec"), m).map_err(|e| wrap("dec", e))?;
        let d = &cfg.data;
        let spec = LinearSpectrogram::new(d.filter_length, d.hop_length, d.win_length)?;
        Ok(Self {
            cfg,
            spec,
            ref_enc,
            enc_q,
            flow,
            dec,
            device,
            id,
        })
    }

    /// The location it was loaded from (and hub revision).
    pub fn id(&self) -> &ModelId {
        &self.id
    }

    pub fn config(&self) -> &OpenVoiceConfig {
        &self.cfg
    }

    /// Overrides `model.zero_g` (V2 ships `true`).
    pub fn set_zero_g(&mut self, zero_g: bool) {
        self.cfg.model.zero_g = zero_g;
    }

    pub fn sample_rate(&self) -> u32 {
        self.cfg.data.sampling_rate
    }

    /// Length of a tone-colour embedding (`gin_channels`).
    pub fn embedding_dim(&self) -> usize {
        self.cfg.model.gin_channels
    }

    /// Output samples per spectrogram frame (the generator's total upsampling).
    pub fn samples_per_frame(&self) -> usize {
        self.cfg.model.upsample_rates.iter().product()
    }

    /// Fewest samples (at the model rate) a clip needs for one spectrogram frame.
    pub fn min_samples(&self) -> usize {
        self.spec.min_samples()
    }

    /// Spectrogram frames (= posterior noise frames) for `n` samples at the model rate.
    pub fn n_frames(&self, n: usize) -> usize {
        self.spec.n_frames(n)
    }

    /// The linear spectrogram `[1, n_bins, T]` of samples at the model rate.
    pub fn spectrogram(&self, samples: &[f32]) -> Result<Tensor> {
        let (data, t) = self.spec.compute(samples)?;
        Ok(Tensor::from_vec(
            data,
            (1, self.spec.n_bins(), t),
            &self.device,
        )?)
    }

    fn at_model_rate(&self, clip: &AudioRef<'_>) -> Result<Vec<f32>> {
        if clip.sample_rate == 0 {
            return Err(TeacherError::BadInput("clip has sample rate 0".into()));
        }
        if clip.sample_rate == self.sample_rate() {
            Ok(clip.samples.to_vec())
        } else {
            Ok(resample(
                clip.samples,
                clip.sample_rate,
                self.sample_rate(),
            )?)
        }
    }

    /// The embedding of one clip (any rate; resampled to the model rate).
    pub fn tone_color(&self, clip: AudioRef<'_>) -> Result<Vec<f32>> {
        let samples = self.at_model_rate(&clip)?;
        let spec = self.spectrogram(&samples)?;
        Ok(self.ref_enc.forward(&spec)?.flatten_all()?.to_vec1()?)
    }

    /// `ToneColorConverter.extract_se`: the mean embedding of the clips.
    pub fn extract_se(&self, clips: &[AudioRef<'_>]) -> Result<Vec<f32>> {
        if clips.is_empty() {
            return Err(TeacherError::BadInput(
                "extract_se needs at least one clip".into(),
            ));
        }
        let mut acc = vec![0.0f32; self.embedding_dim()];
        for (i, c) in clips.iter().enumerate() {
            let e = self.tone_color(*c).map_err(|e| match e {
                TeacherError::BadInput(m) => TeacherError::BadInput(format!("clip {i}: {m}")),
                other => other,
            })?;
            acc.iter_mut().zip(&e).for_each(|(a, v)| *a += v);
        }
        let n = clips.len() as f32;
        acc.iter_mut().for_each(|a| *a /= n);
        Ok(acc)
    }

    fn embedding_tensor(&self, se: &[f32], what: &str) -> Result<Tensor> {
        if se.len() != self.embedding_dim() {
            return Err(TeacherError::BadInput(format!(
                "{what} embedding has {} values, the converter expects {}",
                se.len(),
                self.embedding_dim()
            )));
        }
        if se.iter().any(|v| !v.is_finite()) {
            return Err(TeacherError::BadInput(format!(
                "{what} embedding is not finite"
            )));
        }
        Ok(Tensor::from_slice(se, (1, se.len(), 1), &self.device)?)
    }

    /// Converts `src` from the tone colour `src_se` to `tgt_se`; the posterior noise is drawn
    /// from a seeded generator, so the same inputs and seed give the same audio. Output is at
    /// [`Self::sample_rate`].
    pub fn convert(
        &self,
        src: AudioRef<'_>,
        src_se: &[f32],
        tgt_se: &[f32],
        tau: f32,
        seed: u64,
    ) -> Result<Vec<f32>> {
        let samples = self.at_model_rate(&src)?;
        let t = self.n_frames(samples.len());
        let noise = gaussian_noise(seed, self.cfg.model.inter_channels * t);
        let noise = Tensor::from_vec(noise, (self.cfg.model.inter_channels, t), &self.device)?;
        self.convert_samples(&samples, src_se, tgt_se, tau, &noise)
    }

    /// As [`Self::convert`] with caller-given standard-normal noise `[inter_channels, T]`,
    /// `T = n_frames(len at model rate)` (for parity with fixed noise).
    pub fn convert_with_noise(
        &self,
        src: AudioRef<'_>,
        src_se: &[f32],
        tgt_se: &[f32],
        tau: f32,
        noise: &Tensor,
    ) -> Result<Vec<f32>> {
        let samples = self.at_model_rate(&src)?;
        self.convert_samples(&samples, src_se, tgt_se, tau, noise)
    }

    /// The speaker conditioning of the posterior encoder and of the decoder: the source and
    /// target embeddings, or zeros for both when the checkpoint was trained with `zero_g`.
    fn conditioning(&self, g_src: &Tensor, g_tgt: &Tensor) -> Result<(Tensor, Tensor)> {
        if self.cfg.model.zero_g {
            let zeros = g_src.zeros_like()?;
            Ok((zeros.clone(), zeros))
        } else {
            Ok((g_src.clone(), g_tgt.clone()))
        }
    }

    fn convert_samples(
        &self,
        samples: &[f32],
        src_se: &[f32],
        tgt_se: &[f32],
        tau: f32,
        noise: &Tensor,
    ) -> Result<Vec<f32>> {
        // On the pool: every conv inside is a parallel loop (see `on_pool`).
        vaak_nn::cpu::on_pool(|| {
            let g_src = self.embedding_tensor(src_se, "source")?;
            let g_tgt = self.embedding_tensor(tgt_se, "target")?;
            let spec = self.spectrogram(samples)?;
            let t = spec.dim(2)?;
            let inter = self.cfg.model.inter_channels;
            if noise.dims() != [inter, t] {
                return Err(TeacherError::BadInput(format!(
                    "noise has shape {:?}, expected [{inter}, {t}]",
                    noise.dims()
                )));
            }
            // One clip per call; `convert_batched` runs padded batches with per-clip lengths.
            let mask = sequence_mask(&[t], t, &self.device)?;
            let (g_post, g_dec) = self.conditioning(&g_src, &g_tgt)?;
            let (m, logs) = self.enc_q.stats(&spec, &mask, &g_post)?;
            let noise = noise
                .to_dtype(DType::F32)?
                .to_device(&self.device)?
                .unsqueeze(0)?;
            let z = (m + (noise * tau as f64)?.mul(&logs.exp()?)?)?.broadcast_mul(&mask)?;
            let z_p = self.flow.forward(&z, &mask, &g_src, false)?;
            let z_hat = self.flow.forward(&z_p, &mask, &g_tgt, true)?;
            let wav = self.dec.forward(&z_hat.broadcast_mul(&mask)?, &g_dec)?;
            Ok(wav.flatten_all()?.to_vec1()?)
        })
    }

    /// Converts each item independently, one call per item (as upstream); a bad item gets its
    /// own error. [`Self::convert_batched`] gives the same audio (to float rounding) from
    /// padded batches.
    pub fn convert_batch(&self, items: &[ConvertItem<'_>]) -> Vec<ItemResult<Vec<f32>>> {
        items
            .iter()
            .enumerate()
            .map(|(i, it)| {
                self.convert(it.src, it.src_se, it.tgt_se, it.tau, it.seed)
                    .map_err(|e| item_error(i, e))
            })
            .collect()
    }
}

impl ToneColorConverter {
    /// Converts the items as padded batches of up to `max_batch` clips (similar lengths
    /// together), one network pass per batch (on the CPU the HiFi-GAN decoder then runs clip by
    /// clip, which is faster there). Each clip's audio equals [`Self::convert`]'s to float
    /// rounding: the posterior encoder and flow mask the padding, and the decoder's convs read
    /// past each clip's end as zeros (per-clip lengths). A bad item gets its own error and
    /// the rest still convert; a failed batch fails each of its items.
    pub fn convert_batched(
        &self,
        items: &[ConvertItem<'_>],
        max_batch: usize,
    ) -> Vec<ItemResult<Vec<f32>>> {
        let mut out: Vec<Option<ItemResult<Vec<f32>>>> = items.iter().map(|_| None).collect();
        let mut ready = Vec::new();
        for (i, it) in items.iter().enumerate() {
            match self.prepare(it) {
                Ok(p) => ready.push((i, p)),
                Err(e) => out[i] = Some(Err(item_error(i, e))),
            }
        }
        // Longest first, so each batch pads little.
        ready.sort_by_key(|(_, p)| std::cmp::Reverse(p.frames));
        for chunk in ready.chunks(max_batch.max(1)) {
            match vaak_nn::cpu::on_pool(|| self.run_prepared(chunk.iter().map(|(_, p)| p))) {
                Ok(wavs) => {
                    for ((i, _), w) in chunk.iter().zip(wavs) {
                        out[*i] = Some(Ok(w));
                    }
                }
                Err(e) => {
                    for (i, _) in chunk {
                        out[*i] = Some(Err(TeacherError::Msg(format!(
                            "item {i}: batched conversion failed: {e}"
                        ))));
                    }
                }
            }
        }
        out.into_iter()
            .map(|r| r.expect("every item is converted or has an error"))
            .collect()
    }

    /// One item's inputs at the model rate: spectrogram, noise and embeddings (validated).
    fn prepare(&self, it: &ConvertItem<'_>) -> Result<Prepared> {
        let g_src = self.embedding_tensor(it.src_se, "source")?;
        let g_tgt = self.embedding_tensor(it.tgt_se, "target")?;
        let samples = self.at_model_rate(&it.src)?;
        let spec = self.spectrogram(&samples)?;
        let frames = spec.dim(2)?;
        let inter = self.cfg.model.inter_channels;
        let noise = gaussian_noise(it.seed, inter * frames);
        let noise = Tensor::from_vec(noise, (1, inter, frames), &self.device)?;
        Ok(Prepared {
            spec,
            noise,
            g_src,
            g_tgt,
            tau: it.tau,
            frames,
        })
    }

    /// The network on a padded batch of prepared items: each item's waveform.
    fn run_prepared<'p>(&self, batch: impl Iterator<Item = &'p Prepared>) -> Result<Vec<Vec<f32>>> {
        let batch: Vec<&Prepared> = batch.collect();
        let lengths: Vec<usize> = batch.iter().map(|p| p.frames).collect();
        let t = lengths.iter().copied().max().unwrap_or(0);
        let pad = |x: &Tensor, n: usize| x.pad_with_zeros(2, 0, t - n);
        let cat = |f: &dyn Fn(&Prepared) -> candle_core::Result<Tensor>| {
            let parts = batch
                .iter()
                .map(|p| f(p))
                .collect::<candle_core::Result<Vec<_>>>()?;
            Tensor::cat(&parts, 0)
        };
        let spec = cat(&|p| pad(&p.spec, p.frames))?;
        let noise = cat(&|p| pad(&p.noise, p.frames))?;
        let g_src = cat(&|p| Ok(p.g_src.clone()))?;
        let g_tgt = cat(&|p| Ok(p.g_tgt.clone()))?;
        let taus: Vec<f32> = batch.iter().map(|p| p.tau).collect();
        let tau = Tensor::from_vec(taus, (batch.len(), 1, 1), &self.device)?;
        let mask = sequence_mask(&lengths, t, &self.device)?;
        let (g_post, g_dec) = self.conditioning(&g_src, &g_tgt)?;
        let (m, logs) = self.enc_q.stats(&spec, &mask, &g_post)?;
        let z = (m + noise.broadcast_mul(&tau)?.mul(&logs.exp()?)?)?.broadcast_mul(&mask)?;
        let z_p = self.flow.forward(&z, &mask, &g_src, false)?;
        let z_hat = self.flow.forward(&z_p, &mask, &g_tgt, true)?;
        let z_hat = z_hat.broadcast_mul(&mask)?;
        let spf = self.samples_per_frame();
        if self.device.is_cpu() {
            // On the CPU the HiFi-GAN runs item by item on its valid frames: a batch brings no
            // larger gemms there (the conv path already splits by item), only activations 8x
            // larger at the audio rate that fall out of the cache (batch 8 of 2 s clips: 0.89x
            // the time of one by one). The output equals the batched decoder's.
            return lengths
                .iter()
                .enumerate()
                .map(|(i, &n)| {
                    let z = z_hat.get(i)?.narrow(1, 0, n)?.unsqueeze(0)?;
                    let g = g_dec.get(i)?.unsqueeze(0)?;
                    Ok(self.dec.forward(&z, &g)?.flatten_all()?.to_vec1()?)
                })
                .collect();
        }
        let wav = self.dec.forward_lengths(&z_hat, &g_dec, Some(&lengths))?;
        lengths
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                Ok(wav
                    .get(i)?
                    .narrow(1, 0, n * spf)?
                    .flatten_all()?
                    .to_vec1()?)
            })
            .collect()
    }
}

/// One item of [`ToneColorConverter::convert_batched`], ready for the network.
#[derive(Debug)]
struct Prepared {
    /// `[1, bins, frames]`.
    spec: Tensor,
    /// `[1, inter, frames]`, standard normal from the item's seed.
    noise: Tensor,
    g_src: Tensor,
    g_tgt: Tensor,
    tau: f32,
    frames: usize,
}

/// One conversion of a batch.
#[derive(Clone, Copy, Debug)]
pub struct ConvertItem<'a> {
    pub src: AudioRef<'a>,
    pub src_se: &'a [f32],
    pub tgt_se: &'a [f32],
    pub tau: f32,
    pub seed: u64,
}

pub(crate) fn item_error(i: usize, e: TeacherError) -> TeacherError {
    match e {
        TeacherError::BadInput(m) => TeacherError::BadInput(format!("item {i}: {m}")),
        TeacherError::Msg(m) => TeacherError::Msg(format!("item {i}: {m}")),
        TeacherError::Audio(a) => TeacherError::BadInput(format!("item {i}: {a}")),
        other => other,
    }
}

impl SpeakerEncoder for ToneColorConverter {
    fn model_id(&self) -> ModelId {
        self.id.clone()
    }

    fn dim(&self) -> usize {
        self.embedding_dim()
    }

    /// The tone-colour embedding of each clip (not averaged).
    fn embed(&self, batch: &[AudioRef<'_>]) -> Result<Vec<ItemResult<Vec<f32>>>> {
        Ok(batch
            .iter()
            .enumerate()
            .map(|(i, c)| self.tone_color(*c).map_err(|e| item_error(i, e)))
            .collect())
    }
}

/// `n` standard-normal values from SplitMix64 + Box-Muller; deterministic in `seed`.
pub fn gaussian_noise(seed: u64, n: usize) -> Vec<f32> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        // 53-bit uniforms in (0, 1]; the log never sees 0.
        let u1 = ((next() >> 11) + 1) as f64 / (1u64 << 53) as f64;
        let u2 = (next() >> 11) as f64 / (1u64 << 53) as f64;
        let r = (-2.0 * u1.ln()).sqrt();
        let th = 2.0 * std::f64::consts::PI * u2;
        out.push((r * th.cos()) as f32);
        out.push((r * th.sin()) as f32);
    }
    out.truncate(n);
    out
}
