//! [`Codec`]: SEANet encoder, residual VQ and SEANet decoder behind one API, whole-clip and
//! streaming ([`CodecStreamer`]).

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use vaak_nn::conv::CausalConvConfig;
use vaak_nn::rvq::{Codebook, CodebookStorage, ResidualVq, RvqConfig};
use vaak_nn::streaming::{StreamMask, StreamTensor, StreamingModule};
use vaak_nn::transformer::{StepWeights, StreamingTransformer, Transformer};
use vaak_nn::weights::{LoadOptions, WeightLocation, Weights};

use crate::config::{CodecConfig, HfCodecConfig, HfEncodecConfig, HfMimiConfig, PadMode};
use crate::error::{CodecError, Result};
use crate::seanet::{EdgeMode, SConv, SConvTr, Seanet};

/// Which codec (and checkpoint layout) to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// `facebook/encodec_24khz` in transformers' `EncodecModel` layout.
    Encodec24khz,
    /// `kyutai/mimi` in transformers' `MimiModel` layout (the flat published one).
    Mimi,
    /// vaak's own 16 kHz, 8 x 1024 codec (same tensor names as EnCodec, plain weights).
    Vaak16k,
}

impl Preset {
    /// Every preset, in the order `--help` lists them.
    pub const ALL: [Preset; 3] = [Self::Encodec24khz, Self::Mimi, Self::Vaak16k];

    /// The preset's CLI name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Encodec24khz => "encodec_24khz",
            Self::Mimi => "mimi",
            Self::Vaak16k => "vaak-16k",
        }
    }
}

/// Writes [`Preset::name`], which [`FromStr`] reads back.
impl std::fmt::Display for Preset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Reads [`Preset::name`] (and the spellings `encodec-24khz`, `encodec`, `vaak_16k`).
impl FromStr for Preset {
    type Err = crate::error::UnknownName;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "encodec_24khz" | "encodec-24khz" | "encodec" => Ok(Self::Encodec24khz),
            "mimi" => Ok(Self::Mimi),
            "vaak-16k" | "vaak_16k" => Ok(Self::Vaak16k),
            other => Err(crate::error::UnknownName {
                what: "codec preset",
                got: other.to_string(),
                valid: Self::ALL.map(Self::name).to_vec(),
            }),
        }
    }
}

/// Mimi's latent path: transformer + downsample after the SEANet encoder, upsample +
/// transformer before the SEANet decoder.
#[derive(Clone, Debug)]
struct LatentStage {
    enc_transformer: Transformer,
    downsample: SConv,
    upsample: SConvTr,
    dec_transformer: Transformer,
}

/// `[B, D, T]` through a transformer that wants `[B, T, D]` (made contiguous: candle's batched
/// matmul is wrong on a transposed lhs for batch > 1).
fn through_transformer(t: &Transformer, x: &Tensor) -> candle_core::Result<Tensor> {
    let y = t.forward(&x.transpose(1, 2)?.contiguous()?)?;
    y.transpose(1, 2)?.contiguous()
}

/// A loaded codec. Cheap to clone (tensors are shared).
#[derive(Clone, Debug)]
pub struct Codec {
    cfg: CodecConfig,
    encoder: Seanet,
    decoder: Seanet,
    latent: Option<LatentStage>,
    /// One residual VQ (EnCodec, vaak), or Mimi's semantic and acoustic ones.
    quantizer: Vec<ResidualVq>,
    n_q: usize,
    edge: EdgeMode,
    device: Device,
    dtype: DType,
    /// What streaming steps read ([`Self::set_step_weights`]).
    step_weights: StepWeights,
}

/// Reads and converts a published transformers `config.json` beside the weights.
fn hf_codec_config<C: HfCodecConfig>(
    loc: &WeightLocation,
    opts: &LoadOptions,
) -> Result<CodecConfig> {
    let path = loc.join("config.json").resolve_file(&opts.hub)?;
    let label = path.display().to_string();
    let text = std::fs::read_to_string(&path).map_err(|e| CodecError::ConfigFile {
        path: label.clone(),
        reason: e.to_string(),
    })?;
    C::from_json(&text, &label)?.to_codec_config(&label)
}

impl Codec {
    /// Loads a preset from a local directory or `hf://org/repo[@rev]` holding `config.json`
    /// and the weights as published. For [`Preset::Vaak16k`] `config.json` is optional (the
    /// preset's defaults apply when it is absent).
    pub fn load(location: &str, preset: Preset, opts: &LoadOptions) -> Result<Self> {
        let loc = WeightLocation::parse(location)?;
        let cfg = match preset {
            Preset::Encodec24khz => hf_codec_config::<HfEncodecConfig>(&loc, opts)?,
            Preset::Mimi => hf_codec_config::<HfMimiConfig>(&loc, opts)?,
            Preset::Vaak16k => {
                // vaak's own checkpoints carry their config; without one the preset applies.
                match loc.join("config.json").resolve_file(&opts.hub) {
                    Ok(path) => {
                        let label = path.display().to_string();
                        let text =
                            std::fs::read_to_string(&path).map_err(|e| CodecError::ConfigFile {
                                path: label.clone(),
                                reason: e.to_string(),
                            })?;
                        CodecConfig::from_vaak_json(&text, &label)?
                    }
                    Err(vaak_nn::Error::MissingFile { .. }) => CodecConfig::vaak_16k(),
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let weights = Weights::load_location(&loc, opts)?;
        let weights = if preset == Preset::Mimi {
            let renamed = weights
                .load_all()?
                .into_iter()
                .map(|(k, v)| (mimi_name(&k), v))
                .collect::<HashMap<_, _>>();
            Weights::from_tensors(renamed, location, opts)
        } else {
            weights
        };
        let vb = weights.into_var_builder(opts.dtype);
        Self::new(cfg, preset, vb)
    }

    /// Builds from a config and a `VarBuilder` (a checkpoint, or a `VarMap` for training or
    /// random init). EnCodec checkpoints use [`EdgeMode::Reference`] by default, vaak's own
    /// [`EdgeMode::Causal`].
    pub fn new(cfg: CodecConfig, preset: Preset, vb: VarBuilder) -> Result<Self> {
        cfg.validate(preset.name())?;
        let encoder = Seanet::encoder(&cfg.seanet, vb.pp("encoder"))?;
        let decoder = Seanet::decoder(&cfg.seanet, vb.pp("decoder"))?;
        let d = cfg.seanet.dimension;
        let (latent, quantizer) = match &cfg.latent {
            None => {
                let g = ResidualVq::load_codec(
                    &RvqConfig {
                        dim: d,
                        codebook_dim: None,
                        n_q: cfg.num_quantizers,
                        codebook_size: cfg.codebook_size,
                    },
                    CodebookStorage::Embed,
                    vb.pp("quantizer"),
                )?;
                (None, vec![g])
            }
            Some(l) => {
                let s = cfg.latent_stride;
                let down_cfg = CausalConvConfig::new(d, d, 2 * s)
                    .with_stride(s)
                    .with_bias(false);
                let up_cfg = CausalConvConfig::new(d, d, 2 * s)
                    .with_stride(s)
                    .with_groups(l.upsample_groups)
                    .with_bias(false);
                let stage = LatentStage {
                    enc_transformer: Transformer::new(
                        &l.transformer,
                        vb.pp("encoder_transformer"),
                    )?,
                    downsample: SConv::with_options(
                        down_cfg,
                        false,
                        PadMode::Replicate,
                        vb.pp("downsample"),
                    )?,
                    upsample: SConvTr::with_options(up_cfg, false, vb.pp("upsample"))?,
                    dec_transformer: Transformer::new(
                        &l.transformer,
                        vb.pp("decoder_transformer"),
                    )?,
                };
                let qvb = vb.pp("quantizer");
                // Mimi: 1x1 projections around each group when its width differs.
                let group = |n_q: usize| RvqConfig {
                    dim: d,
                    codebook_dim: (l.vq_dim != d).then_some(l.vq_dim),
                    n_q,
                    codebook_size: cfg.codebook_size,
                };
                let sem = ResidualVq::load_codec(
                    &group(l.num_semantic),
                    CodebookStorage::EmbedSum,
                    qvb.pp("semantic_residual_vector_quantizer"),
                )?;
                let aco = ResidualVq::load_codec(
                    &group(cfg.num_quantizers - l.num_semantic),
                    CodebookStorage::EmbedSum,
                    qvb.pp("acoustic_residual_vector_quantizer"),
                )?;
                (Some(stage), vec![sem, aco])
            }
        };
        let edge = match preset {
            Preset::Encodec24khz | Preset::Mimi => EdgeMode::Reference,
            Preset::Vaak16k => EdgeMode::Causal,
        };
        Ok(Self {
            n_q: cfg.default_codebooks,
            encoder,
            decoder,
            latent,
            quantizer,
            edge,
            device: vb.device().clone(),
            dtype: vb.dtype(),
            cfg,
            step_weights: StepWeights::F32,
        })
    }

    pub fn config(&self) -> &CodecConfig {
        &self.cfg
    }

    pub fn sample_rate(&self) -> usize {
        self.cfg.sample_rate
    }

    /// Frames per second.
    pub fn frame_rate(&self) -> f64 {
        self.cfg.frame_rate()
    }

    /// Samples per frame.
    pub fn hop_length(&self) -> usize {
        self.cfg.hop_length()
    }

    /// Codebooks used by [`Codec::encode`].
    pub fn num_codebooks(&self) -> usize {
        self.n_q
    }

    /// Codebooks in the checkpoint.
    pub fn max_codebooks(&self) -> usize {
        self.cfg.num_quantizers
    }

    pub fn codebook_size(&self) -> usize {
        self.cfg.codebook_size
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// How whole-clip calls treat the clip edges.
    pub fn edge_mode(&self) -> EdgeMode {
        self.edge
    }

    /// Switches whole-clip edge handling (e.g. [`EdgeMode::Causal`] to match a stream).
    pub fn set_edge_mode(&mut self, edge: EdgeMode) {
        self.edge = edge;
    }

    /// Makes streaming steps read half-precision copies of the weights a step streams from
    /// memory (f32 accumulation; see [`StepWeights`]): Mimi's latent transformers and every
    /// codec's SEANet convs at the latent frame rate ([`Seanet::set_step_weights`]). The copies
    /// are made once here; streamers made afterwards use them. [`StepWeights::F32`] (the
    /// default) restores exact f32 steps. Whole-clip calls and the quantizer stay f32.
    pub fn set_step_weights(&mut self, kind: StepWeights) -> Result<()> {
        if let Some(l) = &mut self.latent {
            l.enc_transformer.set_step_weights(kind)?;
            l.dec_transformer.set_step_weights(kind)?;
        }
        self.encoder.set_step_weights(kind)?;
        self.decoder.set_step_weights(kind)?;
        self.step_weights = kind;
        Ok(())
    }

    /// The storage streaming steps read.
    pub fn step_weights(&self) -> StepWeights {
        self.step_weights
    }

    /// Uses the first `n` codebooks.
    pub fn set_num_codebooks(&mut self, n: usize) -> Result<()> {
        if n == 0 || n > self.cfg.num_quantizers {
            return Err(CodecError::BadNumCodebooks {
                requested: n,
                max: self.cfg.num_quantizers,
            });
        }
        self.n_q = n;
        Ok(())
    }

    /// Sets the bandwidth in kbps; it must be one the checkpoint lists (as HF requires).
    /// Returns the number of codebooks it means (24 kHz EnCodec: 1.5 -> 2, 3 -> 4, 6 -> 8,
    /// 12 -> 16, 24 -> 32).
    pub fn set_bandwidth(&mut self, kbps: f64) -> Result<usize> {
        if !self.cfg.target_bandwidths.contains(&kbps) {
            return Err(CodecError::UnsupportedBandwidth {
                bandwidth: kbps,
                allowed: self.cfg.target_bandwidths.clone(),
            });
        }
        let n = self
            .cfg
            .codebooks_for_bandwidth(kbps)
            .min(self.cfg.num_quantizers);
        self.set_num_codebooks(n)?;
        Ok(n)
    }

    fn check_audio(&self, audio: &Tensor, what: &'static str) -> Result<Tensor> {
        let ch = self.cfg.seanet.channels;
        let (_, c, t) = audio.dims3().map_err(|_| CodecError::BadInput {
            what,
            expected: format!("[batch, {ch}, samples]"),
            got: format!("{:?}", audio.dims()),
        })?;
        if c != ch {
            return Err(CodecError::BadInput {
                what,
                expected: format!("{ch} channel(s)"),
                got: format!("{c} channels"),
            });
        }
        if t == 0 || audio.dim(0)? == 0 {
            return Err(CodecError::BadInput {
                what,
                expected: "at least one batch item and one sample".into(),
                got: format!("{:?}", audio.dims()),
            });
        }
        if !audio.dtype().is_float() {
            return Err(CodecError::BadInput {
                what,
                expected: "float audio".into(),
                got: format!("{:?}", audio.dtype()),
            });
        }
        Ok(audio.to_dtype(self.dtype)?.to_device(&self.device)?)
    }

    /// Validates codes `[B, n_q, F]` (u8/u32/i64) and returns them as u32.
    fn check_codes(&self, codes: &Tensor, what: &'static str) -> Result<Tensor> {
        let (b, nq, f) = codes.dims3().map_err(|_| CodecError::BadInput {
            what,
            expected: "codes [batch, codebooks, frames]".into(),
            got: format!("{:?}", codes.dims()),
        })?;
        if !matches!(codes.dtype(), DType::U8 | DType::U32 | DType::I64) {
            return Err(CodecError::BadInput {
                what,
                expected: "u8, u32 or i64 codes".into(),
                got: format!("{:?}", codes.dtype()),
            });
        }
        if nq == 0 || nq > self.cfg.num_quantizers {
            return Err(CodecError::BadInput {
                what,
                expected: format!("1..={} codebooks", self.cfg.num_quantizers),
                got: format!("{nq}"),
            });
        }
        let flat = codes
            .to_dtype(DType::I64)?
            .flatten_all()?
            .to_vec1::<i64>()?;
        let size = self.cfg.codebook_size;
        if let Some(pos) = flat.iter().position(|&v| v < 0 || v as usize >= size) {
            return Err(CodecError::CodeOutOfRange {
                value: flat[pos],
                batch: pos / (nq * f),
                codebook: (pos / f) % nq,
                frame: pos % f,
                size,
            });
        }
        let _ = b;
        Ok(codes.to_dtype(DType::U32)?.to_device(&self.device)?)
    }

    /// Latent `[B, D, F]` to codes `[B, n_q, F]` (u32), stage by stage (per RVQ group).
    pub fn quantize(&self, latent: &Tensor) -> Result<Tensor> {
        let mut left = self.n_q;
        let mut parts = Vec::new();
        for g in &self.quantizer {
            let n = left.min(g.n_q());
            if n == 0 {
                break;
            }
            parts.push(g.encode_n(latent, n)?);
            left -= n;
        }
        Ok(Tensor::cat(&parts, 1)?)
    }

    /// Codes `[B, n_q, F]` (already checked) to the latent `[B, D, F]`.
    fn dequantize(&self, codes: &Tensor) -> Result<Tensor> {
        let nq = codes.dim(1)?;
        let mut start = 0;
        let mut sum: Option<Tensor> = None;
        for g in &self.quantizer {
            let n = (nq - start).min(g.n_q());
            if n == 0 {
                break;
            }
            let part = g.decode(&codes.narrow(1, start, n)?)?;
            sum = Some(match sum {
                None => part,
                Some(s) => (s + part)?,
            });
            start += n;
        }
        let sum = sum.expect("at least one codebook (checked)");
        Ok(sum.to_dtype(self.dtype)?)
    }

    /// The encoder's latent `[B, D, F]` for audio `[B, channels, T]`.
    pub fn encode_latent(&self, audio: &Tensor) -> Result<Tensor> {
        let x = self.check_audio(audio, "Codec::encode audio")?;
        let h = self.encoder.forward(&x, self.edge)?;
        Ok(match &self.latent {
            None => h,
            Some(l) => {
                let h = through_transformer(&l.enc_transformer, &h)?;
                l.downsample.forward(&h, self.edge)?
            }
        })
    }

    /// Audio `[B, channels, T]` to codes `[B, num_codebooks, F]` (u32). In
    /// [`EdgeMode::Reference`] `F = ceil(T / hop)`, in [`EdgeMode::Causal`] `F = floor(T / hop)`
    /// (a clip shorter than one frame is then an error).
    pub fn encode(&self, audio: &Tensor) -> Result<Tensor> {
        let latent = self.encode_latent(audio)?;
        if latent.dim(2)? == 0 {
            return Err(CodecError::BadInput {
                what: "Codec::encode audio",
                expected: format!("at least {} samples (one frame)", self.hop_length()),
                got: format!("{}", audio.dim(2)?),
            });
        }
        self.quantize(&latent)
    }

    /// Encodes clips of different lengths (each `[channels, samples]`) as one zero-padded
    /// batch: clip `i`'s codes `[num_codebooks, F_i]` equal [`Self::encode`] on that clip
    /// alone (each conv gets the clip's own edge padding, see `Seanet::forward_lengths`; the
    /// LSTM and the causal convs never read past a frame). Codecs with a latent transformer
    /// stage (Mimi) encode clip by clip.
    pub fn encode_batch(&self, clips: &[Tensor]) -> Result<Vec<Tensor>> {
        self.encode_latent_batch(clips)?
            .iter()
            .map(|l| {
                self.quantize(&l.unsqueeze(0)?)?
                    .squeeze(0)
                    .map_err(Into::into)
            })
            .collect()
    }

    /// The encoder's latents `[D, F_i]` of clips of different lengths, batched as in
    /// [`Self::encode_batch`].
    pub fn encode_latent_batch(&self, clips: &[Tensor]) -> Result<Vec<Tensor>> {
        let ch = self.cfg.seanet.channels;
        let mut lengths = Vec::with_capacity(clips.len());
        let mut rows = Vec::with_capacity(clips.len());
        for c in clips {
            let c = if c.rank() == 2 {
                c.unsqueeze(0)?
            } else {
                c.clone()
            };
            let x = self.check_audio(&c, "Codec::encode_batch clip")?;
            if x.dim(0)? != 1 {
                return Err(CodecError::BadInput {
                    what: "Codec::encode_batch clip",
                    expected: format!("[{ch}, samples]"),
                    got: format!("{:?}", c.dims()),
                });
            }
            lengths.push(x.dim(2)?);
            rows.push(x);
        }
        if self.latent.is_some() || rows.len() < 2 {
            return rows
                .iter()
                .map(|x| Ok(self.encode_latent(x)?.squeeze(0)?))
                .collect();
        }
        let t = lengths.iter().copied().max().unwrap_or(0);
        let rows = rows
            .iter()
            .zip(&lengths)
            .map(|(x, &l)| x.pad_with_zeros(2, 0, t - l))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let (h, frames) =
            self.encoder
                .forward_lengths(&Tensor::cat(&rows, 0)?, self.edge, &lengths)?;
        frames
            .iter()
            .enumerate()
            .map(|(i, &f)| {
                if f == 0 {
                    return Err(CodecError::BadInput {
                        what: "Codec::encode_batch clip",
                        expected: format!("at least {} samples (one frame)", self.hop_length()),
                        got: format!("{}", lengths[i]),
                    });
                }
                Ok(h.get(i)?.narrow(1, 0, f)?)
            })
            .collect()
    }

    /// Codes `[B, n_q, F]` (any `n_q` up to the checkpoint's) to audio `[B, channels, F * hop]`.
    pub fn decode(&self, codes: &Tensor) -> Result<Tensor> {
        let codes = self.check_codes(codes, "Codec::decode codes")?;
        if codes.dim(2)? == 0 {
            return Err(CodecError::BadInput {
                what: "Codec::decode codes",
                expected: "at least one frame".into(),
                got: "0 frames".into(),
            });
        }
        let latent = self.dequantize(&codes)?;
        let latent = match &self.latent {
            None => latent,
            Some(l) => through_transformer(&l.dec_transformer, &l.upsample.forward(&latent)?)?,
        };
        Ok(self.decoder.forward(&latent, self.edge)?)
    }

    /// The plain (EnCodec-style) residual VQ as a [`ResidualVq`], for training; Mimi's split
    /// quantizer is not trainable here.
    pub fn residual_vq(&self) -> Result<ResidualVq> {
        match self.quantizer.as_slice() {
            [g] if !g.has_projections() => Ok(g.clone()),
            _ => Err(CodecError::Unsupported {
                path: self.cfg.sample_rate.to_string() + " Hz codec",
                field: "latent",
                value: "split/projected RVQ".into(),
                reason: "training supports plain-RVQ (EnCodec-style) codecs only".into(),
            }),
        }
    }

    /// Replaces codebook `q` of the plain RVQ (e.g. after an EMA update).
    pub fn set_codebook(&mut self, q: usize, cb: Codebook) -> Result<()> {
        let n = self.cfg.num_quantizers;
        let g = match self.quantizer.as_mut_slice() {
            [g] => g,
            _ => {
                return Err(CodecError::BadInput {
                    what: "Codec::set_codebook",
                    expected: "a plain-RVQ codec".into(),
                    got: "a split quantizer".into(),
                })
            }
        };
        let old = g.codebooks().get(q).ok_or_else(|| CodecError::BadInput {
            what: "Codec::set_codebook",
            expected: format!("codebook index < {n}"),
            got: q.to_string(),
        })?;
        if old.size() != cb.size() || old.dim() != cb.dim() {
            return Err(CodecError::BadInput {
                what: "Codec::set_codebook",
                expected: format!("[{}, {}]", old.size(), old.dim()),
                got: format!("[{}, {}]", cb.size(), cb.dim()),
            });
        }
        g.set_codebook(q, cb)?;
        Ok(())
    }

    /// Training forward on audio `[B, channels, T]` (`T` a multiple of the hop): the causal
    /// encoder, straight-through RVQ where item `b` uses the first `n_q_per_item[b]` codebooks
    /// (quantizer dropout, see `vaak_nn::rvq::sample_n_q`), and the causal decoder. Every conv
    /// is differentiable with correct gradients for batch > 1 (`vaak_nn::conv`); codebooks get
    /// no gradient (they learn by EMA from [`CodecTrainOutput::stages`]).
    pub fn forward_train(
        &self,
        audio: &Tensor,
        n_q_per_item: &[usize],
    ) -> Result<CodecTrainOutput> {
        let x = self.check_audio(audio, "Codec::forward_train audio")?;
        let t = x.dim(2)?;
        let hop = self.hop_length();
        if t % hop != 0 || t == 0 {
            return Err(CodecError::BadInput {
                what: "Codec::forward_train audio",
                expected: format!("a positive multiple of the hop ({hop}) samples"),
                got: t.to_string(),
            });
        }
        if self.latent.is_some() {
            return Err(CodecError::Unsupported {
                path: "codec".into(),
                field: "latent",
                value: "Mimi latent transformer".into(),
                reason: "training supports plain-RVQ (EnCodec-style) codecs only".into(),
            });
        }
        let rvq = self.residual_vq()?;
        let latent = self.encoder.forward(&x, EdgeMode::Causal)?;
        let q = rvq.quantize_train(&latent, n_q_per_item)?;
        let audio = self.decoder.forward(&q.quantized, EdgeMode::Causal)?;
        Ok(CodecTrainOutput {
            audio,
            latent,
            codes: q.codes,
            commitment_loss: q.commitment_loss,
            stages: q.stages,
        })
    }

    /// A fresh streaming state for `batch` slots.
    pub fn streamer(&self, batch: usize) -> Result<CodecStreamer> {
        if batch == 0 {
            return Err(CodecError::BadInput {
                what: "Codec::streamer batch",
                expected: "at least 1 slot".into(),
                got: "0".into(),
            });
        }
        let latent = match &self.latent {
            None => None,
            Some(l) => Some(StreamingLatent {
                enc_transformer: StreamingTransformer::new(l.enc_transformer.clone(), batch)?,
                downsample: l.downsample.clone(),
                upsample: l.upsample.clone(),
                dec_transformer: StreamingTransformer::new(l.dec_transformer.clone(), batch)?,
            }),
        };
        Ok(CodecStreamer {
            codec: self.clone(),
            encoder: self.encoder.clone(),
            decoder: self.decoder.clone(),
            latent,
            batch,
        })
    }
}

/// What [`Codec::forward_train`] returns.
#[derive(Debug)]
pub struct CodecTrainOutput {
    /// Reconstruction `[B, channels, T]`.
    pub audio: Tensor,
    /// Encoder output `[B, dimension, T / hop]` (before quantization).
    pub latent: Tensor,
    /// Codes `[B, num_quantizers, T / hop]` (u32); stages an item skipped carry no meaning.
    pub codes: Tensor,
    /// Mean squared distance between each used stage's input residual and its code vector;
    /// its gradient reaches the encoder only.
    pub commitment_loss: Tensor,
    /// Per stage, the detached residual rows and codes of the items that used it, for
    /// `vaak_nn::rvq::EmaCodebook::update`.
    pub stages: Vec<(Tensor, Tensor)>,
}

/// Writes vaak's own checkpoint into `dir` (created if needed): `config.json` (serde of
/// [`CodecConfig`]) and `model.safetensors` with the names [`Codec::new`] reads (EnCodec's:
/// `encoder.layers.*`, `decoder.layers.*`, `quantizer.layers.{i}.codebook.embed`), so that
/// `Codec::load(dir, Preset::Vaak16k, ..)` reads it back. The tensors are checked by building
/// the codec from them first; each file is written to a temporary name and renamed into place.
pub fn save_vaak_checkpoint(
    dir: &Path,
    cfg: &CodecConfig,
    tensors: &HashMap<String, Tensor>,
) -> Result<()> {
    let json = cfg.to_vaak_json()?;
    let cpu: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.detach().to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<_>>()?;
    let label = dir.display().to_string();
    let check = Weights::from_tensors(cpu.clone(), &label, &LoadOptions::default());
    Codec::new(cfg.clone(), Preset::Vaak16k, check.into_var_builder(None))?;
    let io = |p: &Path, e: std::io::Error| CodecError::ConfigFile {
        path: p.display().to_string(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let tmp_w = dir.join(".model.safetensors.tmp");
    candle_core::safetensors::save(&cpu, &tmp_w)?;
    let tmp_c = dir.join(".config.json.tmp");
    std::fs::write(&tmp_c, json + "\n").map_err(|e| io(&tmp_c, e))?;
    let (w, c) = (dir.join("model.safetensors"), dir.join("config.json"));
    std::fs::rename(&tmp_w, &w).map_err(|e| io(&w, e))?;
    std::fs::rename(&tmp_c, &c).map_err(|e| io(&c, e))?;
    Ok(())
}

/// Per-slot streaming state of a [`Codec`]: one encoder and one decoder stream over `batch`
/// slots that step together. Streams follow [`EdgeMode::Causal`]: concatenated outputs equal
/// the causal whole-clip encode/decode exactly.
///
/// Chunks of a masked step (not all slots live) must be whole frames (`hop_length` samples) so
/// the strided convs of all slots stay aligned; unmasked steps take any length. Inactive slots
/// keep their state; their output rows carry no meaning.
#[derive(Debug)]
pub struct CodecStreamer {
    codec: Codec,
    encoder: Seanet,
    decoder: Seanet,
    latent: Option<StreamingLatent>,
    batch: usize,
}

/// Streaming state of Mimi's latent path (KV caches and conv buffers, per slot).
#[derive(Debug)]
struct StreamingLatent {
    enc_transformer: StreamingTransformer,
    downsample: SConv,
    upsample: SConvTr,
    dec_transformer: StreamingTransformer,
}

/// `[B, D, T]` chunk through a streaming transformer over `[B, T, D]`.
fn stream_transformer(
    t: &mut StreamingTransformer,
    x: &StreamTensor,
    mask: &StreamMask,
) -> candle_core::Result<StreamTensor> {
    let inp = x.map(|x| x.transpose(1, 2)?.contiguous())?;
    t.step(&inp, mask)?.map(|y| y.transpose(1, 2)?.contiguous())
}

impl CodecStreamer {
    pub fn batch_size(&self) -> usize {
        self.batch
    }

    fn check_mask(&self, mask: &StreamMask) -> Result<()> {
        if let StreamMask::Slots(s) = mask {
            if s.len() != self.batch {
                return Err(CodecError::BadInput {
                    what: "CodecStreamer mask",
                    expected: format!("{} slots", self.batch),
                    got: format!("{}", s.len()),
                });
            }
        }
        Ok(())
    }

    /// Feeds audio `[batch, channels, t]` (any `t >= 0`) and returns the codes
    /// `[batch, n_q, f]` of the frames completed by it, or `None` if none were.
    pub fn encode_step(&mut self, chunk: &Tensor, mask: &StreamMask) -> Result<Option<Tensor>> {
        self.check_mask(mask)?;
        let (b, c, t) = chunk.dims3().map_err(|_| CodecError::BadInput {
            what: "CodecStreamer::encode_step chunk",
            expected: "[batch, channels, samples]".into(),
            got: format!("{:?}", chunk.dims()),
        })?;
        if b != self.batch || c != self.codec.cfg.seanet.channels {
            return Err(CodecError::BadInput {
                what: "CodecStreamer::encode_step chunk",
                expected: format!("[{}, {}, t]", self.batch, self.codec.cfg.seanet.channels),
                got: format!("{:?}", chunk.dims()),
            });
        }
        if t == 0 {
            return Ok(None);
        }
        let x = chunk
            .to_dtype(self.codec.dtype)?
            .to_device(&self.codec.device)?;
        let mut latent = self.encoder.step(&StreamTensor::from_tensor(x), mask)?;
        if let Some(l) = &mut self.latent {
            latent = stream_transformer(&mut l.enc_transformer, &latent, mask)?;
            latent = l.downsample.streaming().step(&latent, mask)?;
        }
        match latent.into_option() {
            None => Ok(None),
            Some(l) => Ok(Some(self.codec.quantize(&l)?)),
        }
    }

    /// Feeds codes `[batch, n_q, f]` and returns the audio `[batch, channels, f * hop]` they
    /// complete.
    pub fn decode_step(&mut self, codes: &Tensor, mask: &StreamMask) -> Result<Option<Tensor>> {
        self.check_mask(mask)?;
        let codes = self
            .codec
            .check_codes(codes, "CodecStreamer::decode_step codes")?;
        if codes.dim(0)? != self.batch {
            return Err(CodecError::BadInput {
                what: "CodecStreamer::decode_step codes",
                expected: format!("batch {}", self.batch),
                got: format!("{:?}", codes.dims()),
            });
        }
        if codes.dim(2)? == 0 {
            return Ok(None);
        }
        let mut latent = StreamTensor::from_tensor(self.codec.dequantize(&codes)?);
        if let Some(l) = &mut self.latent {
            latent = l.upsample.streaming().step(&latent, mask)?;
            latent = stream_transformer(&mut l.dec_transformer, &latent, mask)?;
        }
        let y = self.decoder.step(&latent, mask)?;
        Ok(y.into_option())
    }

    /// Forgets every slot's encoder and decoder state.
    pub fn reset(&mut self) {
        self.encoder.reset_state();
        self.decoder.reset_state();
        if let Some(l) = &mut self.latent {
            l.enc_transformer.reset_state();
            l.downsample.streaming().reset_state();
            l.upsample.streaming().reset_state();
            l.dec_transformer.reset_state();
        }
    }

    /// Forgets the encoder and decoder state of the slots set in `mask` (a new session in
    /// those slots); the other slots continue untouched.
    pub fn reset_slots(&mut self, mask: &StreamMask) -> Result<()> {
        self.check_mask(mask)?;
        self.encoder.reset_slots(mask)?;
        self.decoder.reset_slots(mask)?;
        if let Some(l) = &mut self.latent {
            l.enc_transformer.reset_slots(mask)?;
            l.downsample.streaming().reset_slots(mask)?;
            l.upsample.streaming().reset_slots(mask)?;
            l.dec_transformer.reset_slots(mask)?;
        }
        Ok(())
    }

    /// Forgets the state of one slot.
    pub fn reset_slot(&mut self, slot: usize) -> Result<()> {
        if slot >= self.batch {
            return Err(CodecError::BadInput {
                what: "CodecStreamer::reset_slot",
                expected: format!("slot < {}", self.batch),
                got: slot.to_string(),
            });
        }
        self.reset_slots(&StreamMask::only(slot, self.batch))
    }
}

/// Mimi's transformer tensor names as (transformers' published spelling, vaak's): the one
/// table behind [`mimi_name`] and [`published_mimi_name`].
const MIMI_TRANSFORMER_NAMES: [(&str, &str); 6] = [
    (".input_layernorm.", ".norm1."),
    (".post_attention_layernorm.", ".norm2."),
    (".self_attn_layer_scale.", ".layer_scale_1."),
    (".mlp_layer_scale.", ".layer_scale_2."),
    (".mlp.fc1.", ".ffn.linear1."),
    (".mlp.fc2.", ".ffn.linear2."),
];

/// Renames the transformer tensors of a Mimi name through [`MIMI_TRANSFORMER_NAMES`], from
/// the published spelling to vaak's or (`to_published`) back; other names pass.
fn rename_mimi(name: &str, to_published: bool) -> String {
    if !(name.starts_with("encoder_transformer.") || name.starts_with("decoder_transformer.")) {
        return name.to_string();
    }
    MIMI_TRANSFORMER_NAMES
        .iter()
        .fold(name.to_string(), |n, &(published, ours)| {
            if to_published {
                n.replace(ours, published)
            } else {
                n.replace(published, ours)
            }
        })
}

/// Maps a transformers Mimi tensor name onto vaak's transformer names; other names pass.
pub fn mimi_name(name: &str) -> String {
    rename_mimi(name, false)
}

/// The inverse of [`mimi_name`]: vaak's Mimi transformer names back to transformers'.
pub fn published_mimi_name(name: &str) -> String {
    rename_mimi(name, true)
}
