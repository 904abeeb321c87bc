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
//! VarBuilder paths are the checkpoint's tensor names (`model.encoder.layers.0.fc1`, ...).
//!
//! Every tensor fed to a matmul is made contiguous first (see the README's candle 0.11 traps).

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv1d, Conv1dConfig, Embedding, LayerNorm, Linear, VarBuilder};

use super::config::WhisperConfig;
use crate::error::{Result, TeacherError};

const LN_EPS: f64 = 1e-5;

fn linear(i: usize, o: usize, bias: bool, vb: VarBuilder) -> candle_core::Result<Linear> {
    if bias {
        candle_nn::linear(i, o, vb)
    } else {
        candle_nn::linear_no_bias(i, o, vb)
    }
}

/// `x @ w^T (+ b)` on a `[B, T, i]` input, through a 2-D matmul.
fn apply_linear(l: &Linear, x: &Tensor) -> candle_core::Result<Tensor> {
    let (b, t, d) = x.dims3()?;
    let y = l.forward(&x.contiguous()?.reshape((b * t, d))?)?;
    let o = y.dim(1)?;
    y.reshape((b, t, o))
}

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
    head_dim: usize,
    scale: f64,
}

impl Attention {
    fn load(d: usize, heads: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        let head_dim = d / heads;
        Ok(Self {
            q: linear(d, d, true, vb.pp("q_proj"))?,
            k: linear(d, d, false, vb.pp("k_proj"))?,
            v: linear(d, d, true, vb.pp("v_proj"))?,
            out: linear(d, d, true, vb.pp("out_proj"))?,
            heads,
            head_dim,
            scale: (head_dim as f64).powf(-0.5),
        })
    }

    /// `[B, T, D]` -> `[B, H, T, Dh]`, contiguous.
    fn split(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        x.reshape((b, t, self.heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    fn keys_values(&self, x: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        Ok((
            self.split(&apply_linear(&self.k, x)?)?,
            self.split(&apply_linear(&self.v, x)?)?,
        ))
    }

    /// Attends from `x` (`[B, T, D]`) to keys/values `[B, H, S, Dh]`; `mask` is `[T, S]` additive.
    fn attend(
        &self,
        x: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let q = self.split(&(apply_linear(&self.q, x)? * self.scale)?)?;
        let kt = k.transpose(2, 3)?.contiguous()?;
        let mut scores = q.matmul(&kt)?;
        if let Some(m) = mask {
            scores = scores.broadcast_add(m)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let ctx = probs.matmul(&v.contiguous()?)?;
        let ctx = ctx.transpose(1, 2)?.contiguous()?.reshape((b, t, d))?;
        apply_linear(&self.out, &ctx)
    }
}

struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn load(d: usize, ffn: usize, vb: &VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            fc1: linear(d, ffn, true, vb.pp("fc1"))?,
            fc2: linear(ffn, d, true, vb.pp("fc2"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        apply_linear(&self.fc2, &apply_linear(&self.fc1, x)?.gelu_erf()?)
    }
}

struct EncoderLayer {
    attn: Attention,
    attn_ln: LayerNorm,
    mlp: Mlp,
    mlp_ln: LayerNorm,
}

impl EncoderLayer {
    fn load(cfg: &WhisperConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let d = cfg.d_model;
        Ok(Self {
            attn: Attention::load(d, cfg.encoder_attention_heads, vb.pp("self_attn"))?,
            attn_ln: candle_nn::layer_norm(d, LN_EPS, vb.pp("self_attn_layer_norm"))?,
            mlp: Mlp::load(d, cfg.encoder_ffn(), &vb)?,
            mlp_ln: candle_nn::layer_norm(d, LN_EPS, vb.pp("final_layer_norm"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.attn_ln.forward(x)?;
        let (k, v) = self.attn.keys_values(&h)?;
        let x = (x + self.attn.attend(&h, &k, &v, None)?)?;
        let h = self.mlp_ln.forward(&x)?;
        x + self.mlp.forward(&h)?
    }
}

struct DecoderLayer {
    self_attn: Attention,
    self_ln: LayerNorm,
    cross_attn: Attention,
    cross_ln: LayerNorm,
    mlp: Mlp,
    mlp_ln: LayerNorm,
}

impl DecoderLayer {
    fn load(cfg: &WhisperConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let d = cfg.d_model;
        let h = cfg.decoder_attention_heads;
        Ok(Self {
            self_attn: Attention::load(d, h, vb.pp("self_attn"))?,
            self_ln: candle_nn::layer_norm(d, LN_EPS, vb.pp("self_attn_layer_norm"))?,
            cross_attn: Attention::load(d, h, vb.pp("encoder_attn"))?,
            cross_ln: candle_nn::layer_norm(d, LN_EPS, vb.pp("encoder_attn_layer_norm"))?,
            mlp: Mlp::load(d, cfg.decoder_ffn(), &vb)?,
            mlp_ln: candle_nn::layer_norm(d, LN_EPS, vb.pp("final_layer_norm"))?,
        })
    }
}

/// Per-batch decoder state: cross-attention keys/values of the encoder output and the growing
/// self-attention cache, both `[B, H, S, Dh]` per layer.
pub struct DecoderCache {
    cross: Vec<(Tensor, Tensor)>,
    past: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl DecoderCache {
    /// Tokens consumed so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Batch size.
    pub fn batch(&self) -> Result<usize> {
        match self.cross.first() {
            Some((k, _)) => Ok(k.dim(0)?),
            None => Ok(0),
        }
    }

    /// Keeps only the batch rows in `rows` (in that order), e.g. to drop finished items.
    pub fn retain(&mut self, rows: &[usize]) -> Result<()> {
        let Some((k0, _)) = self.cross.first() else {
            return Ok(());
        };
        let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let idx = Tensor::new(idx.as_slice(), k0.device())?;
        let sel = |t: &Tensor| t.index_select(&idx, 0);
        for (k, v) in self.cross.iter_mut() {
            *k = sel(k)?;
            *v = sel(v)?;
        }
        for (k, v) in self.past.iter_mut().flatten() {
            *k = sel(k)?;
            *v = sel(v)?;
        }
        Ok(())
    }
}

/// A loaded Whisper model.
pub struct WhisperModel {
    cfg: WhisperConfig,
    conv1: Conv1d,
    conv2: Conv1d,
    enc_positions: Tensor,
    enc_layers: Vec<EncoderLayer>,
    enc_ln: LayerNorm,
    embed_tokens: Embedding,
    dec_positions: Tensor,
    dec_layers: Vec<DecoderLayer>,
    dec_ln: LayerNorm,
    proj_out: Tensor,
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
        let enc_layers = (0..cfg.encoder_layers)
            .map(|i| EncoderLayer::load(cfg, enc.pp(format!("layers.{i}"))))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let enc_ln = candle_nn::layer_norm(d, LN_EPS, enc.pp("layer_norm"))?;
        let tok_w = dec.get((cfg.vocab_size, d), "embed_tokens.weight")?;
        let embed_tokens = Embedding::new(tok_w.clone(), d);
        let dec_positions = dec.get((cfg.max_target_positions, d), "embed_positions.weight")?;
        let dec_layers = (0..cfg.decoder_layers)
            .map(|i| DecoderLayer::load(cfg, dec.pp(format!("layers.{i}"))))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let dec_ln = candle_nn::layer_norm(d, LN_EPS, dec.pp("layer_norm"))?;
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
            enc_layers,
            enc_ln,
            embed_tokens,
            dec_positions,
            dec_layers,
            dec_ln,
            proj_out: proj_out.t()?.contiguous()?,
            embed_scale: if cfg.scale_embedding {
                (d as f64).sqrt()
            } else {
                1.0
            },
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
        let mut x = x.broadcast_add(&self.enc_positions.narrow(0, 0, s)?)?;
        for layer in &self.enc_layers {
            x = layer.forward(&x)?;
        }
        Ok(self.enc_ln.forward(&x)?)
    }

    /// A fresh decoder cache for the encoder output `[B, S, d_model]`.
    pub fn decoder_cache(&self, encoded: &Tensor) -> Result<DecoderCache> {
        let cross = self
            .dec_layers
            .iter()
            .map(|l| l.cross_attn.keys_values(encoded))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(DecoderCache {
            cross,
            past: vec![None; self.dec_layers.len()],
            len: 0,
        })
    }

    /// Feeds `tokens` (`[B, L]`, u32) after what `cache` holds and returns f32 logits
    /// `[B, L, vocab]`.
    pub fn decode(&self, tokens: &Tensor, cache: &mut DecoderCache) -> Result<Tensor> {
        let (b, l) = tokens.dims2()?;
        let start = cache.len;
        if start + l > self.cfg.max_target_positions {
            return Err(TeacherError::BadInput(format!(
                "decoder input reaches {} tokens; the model has {} positions",
                start + l,
                self.cfg.max_target_positions
            )));
        }
        let pos = self.dec_positions.narrow(0, start, l)?;
        let mut x = (self.embed_tokens.forward(tokens)? * self.embed_scale)?.broadcast_add(&pos)?;
        let mask = if l > 1 {
            let total = start + l;
            let m: Vec<f32> = (0..l)
                .flat_map(|i| {
                    (0..total).map(move |j| {
                        if j > start + i {
                            f32::NEG_INFINITY
                        } else {
                            0.0
                        }
                    })
                })
                .collect();
            Some(Tensor::from_vec(m, (l, total), &self.device)?.to_dtype(self.dtype)?)
        } else {
            None
        };
        for (layer, (past, (ck, cv))) in self
            .dec_layers
            .iter()
            .zip(cache.past.iter_mut().zip(cache.cross.iter()))
        {
            let h = layer.self_ln.forward(&x)?;
            let (k, v) = layer.self_attn.keys_values(&h)?;
            let (k, v) = match past.take() {
                Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                None => (k, v),
            };
            x = (x + layer.self_attn.attend(&h, &k, &v, mask.as_ref())?)?;
            *past = Some((k, v));
            let h = layer.cross_ln.forward(&x)?;
            x = (x + layer.cross_attn.attend(&h, ck, cv, None)?)?;
            let h = layer.mlp_ln.forward(&x)?;
            x = (&x + layer.mlp.forward(&h)?)?;
        }
        cache.len += l;
        let x = self.dec_ln.forward(&x)?;
        let d = x.dim(2)?;
        let logits = x
            .contiguous()?
            .reshape((b * l, d))?
            .matmul(&self.proj_out)?;
        Ok(logits
            .reshape((b, l, self.cfg.vocab_size))?
            .to_dtype(DType::F32)?)
    }
}
