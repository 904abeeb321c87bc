//! Whisper's encoder-decoder (transformers' `WhisperForConditionalGeneration`), with a batched
//! decoder KV cache.
//!
//! Written here rather than reusing candle-transformers' `whisper::model` because that module
//! fixes the feed-forward width at `4 * d_model` (checkpoints carry `encoder_ffn_dim` /
//! `decoder_ffn_dim`), keeps no self-attention cache (every step re-runs the whole prefix), and
//! has no way to drop finished items from a batch. What is shared with it is only the maths,
//! which follows transformers: erf GELU, LayerNorm eps 1e-5, queries scaled by `head_dim^-1/2`,
//! `k_proj` without bias, learned positions added after the two convolutions, and the output
//! projection tied to `embed_tokens` unless the checkpoint has its own `proj_out.weight`.
//! The layers, the KV cache and the search are the shared [`crate::seq2seq`] stack (pre-norm,
//! `k_proj` without bias, erf GELU); this file keeps Whisper's own parts: the convolutional
//! front end, the learned position tables and the tied output projection. VarBuilder paths are
//! the checkpoint's tensor names (`model.encoder.layers.0.fc1`, ...).

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv1d, Conv1dConfig, Embedding, VarBuilder};

use super::config::WhisperConfig;
use crate::error::{Result, TeacherError};
use crate::seq2seq::{
    embed_scale, Activation, Decoder, DecoderStack, Encoded, EncoderStack, KvCache, LayerConfig,
    LmHead, NormPosition, LN_EPS,
};

/// Per-batch decoder state: cross-attention keys/values of the encoder output and the growing
/// self-attention cache (the shared [`KvCache`], one row per clip).
pub type DecoderCache = KvCache;

fn layer_config(d_model: usize, heads: usize, ffn: usize) -> LayerConfig {
    LayerConfig {
        d_model,
        heads,
        ffn,
        activation: Activation::Gelu,
        norm: NormPosition::Pre,
        k_bias: false,
        ln_eps: LN_EPS,
    }
}

/// A loaded Whisper model.
pub struct WhisperModel {
    cfg: WhisperConfig,
    conv1: Conv1d,
    conv2: Conv1d,
    enc_positions: Tensor,
    encoder: EncoderStack,
    embed_tokens: Embedding,
    dec_positions: Tensor,
    decoder: DecoderStack,
    proj_out: LmHead,
    embed_scale: f64,
    dtype: DType,
    device: Device,
}
impl WhisperModel {
    /// Builds the model from a VarBuilder rooted at the checkpoint's top level.
    pub fn load(cfg: &WhisperConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.d_model;
        let enc = vb.pp("model.encoder");
        let dec = vb.pp("model.decoder");
        let conv = |stride| Conv1dConfig {
            padding: 1,
            stride,
            ..Default::default()
        };
        let conv1 = candle_nn::conv1d(cfg.num_mel_bins, d, 3, conv(1), enc.pp("conv1"))?;
        let conv2 = candle_nn::conv1d(d, d, 3, conv(2), enc.pp("conv2"))?;
        let enc_positions = enc.get((cfg.max_source_positions, d), "embed_positions.weight")?;
        let enc_cfg = layer_config(d, cfg.encoder_attention_heads, cfg.encoder_ffn());
        let encoder = EncoderStack::load(&enc_cfg, cfg.encoder_layers, enc.clone())?;
        let tok_w = dec.get((cfg.vocab_size, d), "embed_tokens.weight")?;
        let embed_tokens = Embedding::new(tok_w.clone(), d);
        let dec_positions = dec.get((cfg.max_target_positions, d), "embed_positions.weight")?;
        let dec_cfg = layer_config(d, cfg.decoder_attention_heads, cfg.decoder_ffn());
        let decoder = DecoderStack::load(&dec_cfg, cfg.decoder_layers, dec)?;
        // Published checkpoints tie the output projection and do not store it.
        let proj_out = if vb.contains_tensor("proj_out.weight") {
            vb.get((cfg.vocab_size, d), "proj_out.weight")?
        } else {
            tok_w
        };
        Ok(Self {
            cfg: cfg.clone(),
            conv1,
            conv2,
            enc_positions,
            encoder,
            embed_tokens,
            dec_positions,
            decoder,
            proj_out: LmHead::new(&proj_out, None)?,
            embed_scale: embed_scale(cfg.scale_embedding, d),
            dtype: vb.dtype(),
            device: vb.device().clone(),
        })
    }

    pub fn config(&self) -> &WhisperConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Encodes log-mel features `[B, n_mels, 2 * max_source_positions]` to `[B, S, d_model]`.
    pub fn encode(&self, mel: &Tensor) -> Result<Tensor> {
        let (_, n_mels, frames) = mel.dims3()?;
        if n_mels != self.cfg.num_mel_bins || frames != self.cfg.n_frames() {
            return Err(TeacherError::BadInput(format!(
                "Whisper encoder input is [_, {n_mels}, {frames}], expected [_, {}, {}]",
                self.cfg.num_mel_bins,
                self.cfg.n_frames()
            )));
        }
        let x = mel.to_dtype(self.dtype)?.contiguous()?;
        let x = self.conv1.forward(&x)?.gelu_erf()?;
        let x = self.conv2.forward(&x)?.gelu_erf()?;
        let x = x.transpose(1, 2)?.contiguous()?;
        let s = x.dim(1)?;
        let x = x.broadcast_add(&self.enc_positions.narrow(0, 0, s)?)?;
        let b = x.dim(0)?;
        Ok(self.encoder.forward(&x, &vec![s; b])?)
    }

    /// A fresh decoder cache for the encoder output `[B, S, d_model]`.
    pub fn decoder_cache(&self, encoded: &Tensor) -> Result<DecoderCache> {
        self.decoder.start(&Encoded::unpadded(encoded.clone())?, 1)
    }

    /// Feeds `tokens` (`[B, L]`, u32) after what `cache` holds and returns f32 logits
    /// `[B, L, vocab]`.
    pub fn decode(&self, tokens: &Tensor, cache: &mut DecoderCache) -> Result<Tensor> {
        let l = tokens.dim(1)?;
        let start = cache.len();
        if start + l > self.cfg.max_target_positions {
            return Err(TeacherError::BadInput(format!(
                "decoder input reaches {} tokens; the model has {} positions",
                start + l,
                self.cfg.max_target_positions
            )));
        }
        let pos = self.dec_positions.narrow(0, start, l)?;
        let x = (self.embed_tokens.forward(tokens)? * self.embed_scale)?.broadcast_add(&pos)?;
        let x = self.decoder.forward(&x, cache)?;
        Ok(self.proj_out.forward(&x)?)
    }
}

impl Decoder for WhisperModel {
    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }

    fn decode_step(&self, tokens: &[u32], l: usize, cache: &mut KvCache) -> Result<Tensor> {
        let rows = tokens.len() / l.max(1);
        let t = Tensor::from_slice(tokens, (rows, l), &self.device)?;
        self.decode(&t, cache)
    }
}
