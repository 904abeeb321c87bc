//! The streaming source encoder: a chunk-causal Conformer over codec frames.
//!
//! Block (pre-norm, macaron):
//! ```text
//! x = x + 0.5 * ffn1(ln(x))
//! x = transformer_layer(x)            // x + attn(ln(x)) then x + ffn2(ln(x)), chunk-causal
//! x = x + pw2(silu(dwconv(glu(pw1(ln(x))))))   // depthwise causal conv
//! ```
//! and a final LayerNorm. The attention is vaak-nn's transformer layer with `chunk_size`: a
//! frame sees its own chunk and `left_chunks` chunks before it. The conv module follows the
//! second FFN (Conformer puts it between attention and FFN) so that the attention + FFN pair
//! is exactly one vaak-nn layer, one attention implementation for the whole workspace; the
//! capacity is the same. The conv is vaak-nn's `CausalConv1d`, which streams per slot.
//!
//! Streaming: frames are buffered per slot until a chunk is complete; complete chunks of
//! every slot run as one batched step (slots without a complete chunk are masked out). At the
//! end of the source, [`Encoder::flush`] runs a slot's partial last chunk, exactly as the
//! whole-clip forward treats a partial last chunk.

use candle_core::{Device, Tensor};
use candle_nn::{Embedding, Linear, Module, VarBuilder};
use vaak_nn::conv::{CausalConv1d, CausalConvConfig};
use vaak_nn::transformer::{SlotKvCache, Transformer, TransformerConfig, TransformerOptions};
use vaak_nn::{StreamMask, StreamTensor, StreamingModule};

use crate::config::S2sConfig;
use crate::error::{Result, S2sError};
use crate::nn::LayerNorm;

/// Codes of one frame, one per codebook.
pub type Frame = Vec<u32>;

#[derive(Clone, Debug)]
struct ConformerBlock {
    ffn1_norm: LayerNorm,
    ffn1_in: Linear,
    ffn1_out: Linear,
    attn: Transformer,
    conv_norm: LayerNorm,
    conv_in: Linear,
    conv: CausalConv1d,
    conv_out: Linear,
}

impl ConformerBlock {
    fn new(cfg: &S2sConfig, vb: VarBuilder) -> Result<Self> {
        let e = &cfg.encoder;
        let d = e.stack.d_model;
        let ff = e.stack.dim_feedforward;
        let tcfg = encoder_transformer_config(cfg);
        let opts = TransformerOptions {
            chunk_size: Some(e.chunk_size),
            ..Default::default()
        };
        let mut conv_cfg = CausalConvConfig::new(d, d, e.conv_kernel);
        conv_cfg.groups = d;
        Ok(Self {
            ffn1_norm: LayerNorm::new(d, vb.pp("ffn1_norm"))?,
            ffn1_in: candle_nn::linear(d, ff, vb.pp("ffn1_in"))?,
            ffn1_out: candle_nn::linear(ff, d, vb.pp("ffn1_out"))?,
            attn: Transformer::with_options(&tcfg, &opts, vb.pp("attn"))?,
            conv_norm: LayerNorm::new(d, vb.pp("conv_norm"))?,
            conv_in: candle_nn::linear(d, 2 * d, vb.pp("conv_in"))?,
            conv: {
                // CausalConv1d::new would initialise a fresh weight to zero, which kills the
                // module's gradient at the start of training; Kaiming init over the taps.
                let w = vb.pp("dwconv").get_with_hints(
                    (d, 1, e.conv_kernel),
                    "weight",
                    candle_nn::init::DEFAULT_KAIMING_NORMAL,
                )?;
                let b = vb
                    .pp("dwconv")
                    .get_with_hints(d, "bias", candle_nn::Init::Const(0.0))?;
                CausalConv1d::from_tensors(conv_cfg, w, Some(b))?
            },
            conv_out: candle_nn::linear(d, d, vb.pp("conv_out"))?,
        })
    }

    fn ffn1(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let h = vaak_nn::fused::linear(&self.ffn1_in, &self.ffn1_norm.forward(x, train)?)?;
        let h = vaak_nn::fused::linear(&self.ffn1_out, &vaak_nn::fused::silu(&h)?)?;
        x + (h * 0.5)?
    }

    /// `[B, T, d]` to the GLU output `[B, d, T]` the conv takes.
    fn conv_pre(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let h = vaak_nn::fused::linear(&self.conv_in, &self.conv_norm.forward(x, train)?)?;
        let d = h.dim(2)? / 2;
        let a = h.narrow(2, 0, d)?;
        let g = h.narrow(2, d, d)?;
        let sig = vaak_nn::fused::sigmoid(&g)?;
        (a * sig)?.transpose(1, 2)?.contiguous()
    }

    fn conv_post(&self, x: &Tensor, c: &Tensor) -> candle_core::Result<Tensor> {
        let y =
            vaak_nn::fused::linear(&self.conv_out, &vaak_nn::fused::silu(&c.transpose(1, 2)?)?)?;
        x + y
    }

    fn forward(&self, x: &Tensor, lens: &[usize], train: bool) -> candle_core::Result<Tensor> {
        let x = self.ffn1(x, train)?;
        let x = self.attn.forward_padded(&x, lens, train)?;
        let c = self.conv.forward(&self.conv_pre(&x, train)?)?;
        self.conv_post(&x, &c)
    }

    fn step(
        &self,
        x: &Tensor,
        cache: &mut SlotKvCache,
        conv: &mut CausalConv1d,
        mask: &StreamMask,
    ) -> candle_core::Result<Tensor> {
        let x = self.ffn1(x, false)?;
        let x = self.attn.step_slots(&x, cache, mask)?;
        let c = conv.step(&StreamTensor::from_tensor(self.conv_pre(&x, false)?), mask)?;
        let Some(c) = c.into_option() else {
            candle_core::bail!("encoder conv: a stride-1 causal conv returned no frames");
        };
        self.conv_post(&x, &c)
    }
}

/// The vaak-nn config of one encoder attention + FFN layer.
fn encoder_transformer_config(cfg: &S2sConfig) -> TransformerConfig {
    let e = &cfg.encoder;
    TransformerConfig {
        d_model: e.stack.d_model,
        num_heads: e.stack.num_heads,
        num_layers: 1,
        dim_feedforward: e.stack.dim_feedforward,
        causal: true,
        context: Some((e.left_chunks + 1) * e.chunk_size),
        max_seq_len: cfg.max_source_frames,
        ..Default::default()
    }
}

/// Output frames of one batched encoder step: `out: [B, n, d]`, meaningful for the rows set in
/// `mask` (feed it to the decoder's cross-attention cache with the same mask).
#[derive(Debug)]
pub struct EncodedChunk {
    pub out: Tensor,
    pub mask: StreamMask,
}

/// Per-slot streaming state of the [`Encoder`].
#[derive(Debug)]
pub struct EncoderState {
    caches: Vec<SlotKvCache>,
    convs: Vec<CausalConv1d>,
    pending: Vec<Vec<Frame>>,
    /// Frames encoded since the last reset.
    encoded: Vec<usize>,
    /// A partial chunk was flushed: the slot's source is over until a reset.
    closed: Vec<bool>,
}

impl EncoderState {
    pub fn batch_size(&self) -> usize {
        self.pending.len()
    }

    /// Frames each slot has encoded since its last reset.
    pub fn encoded(&self) -> &[usize] {
        &self.encoded
    }

    /// Frames each slot holds back until its chunk is complete.
    pub fn pending(&self, slot: usize) -> usize {
        self.pending.get(slot).map_or(0, |p| p.len())
    }

    /// Forgets the slots set in `mask`; the others stay bit-identical.
    pub fn reset_slots(&mut self, mask: &StreamMask) -> Result<()> {
        for (c, v) in self.caches.iter_mut().zip(self.convs.iter_mut()) {
            c.reset_slots(mask)?;
            v.reset_slots(mask)?;
        }
        for i in 0..self.pending.len() {
            if mask.is_active(i) {
                self.pending[i].clear();
                self.encoded[i] = 0;
                self.closed[i] = false;
            }
        }
        Ok(())
    }
}

/// The chunk-causal Conformer encoder (weights only; streaming state is an [`EncoderState`]).
#[derive(Clone, Debug)]
pub struct Encoder {
    emb: Vec<Embedding>,
    blocks: Vec<ConformerBlock>,
    norm_out: LayerNorm,
    num_codebooks: usize,
    cardinality: usize,
    chunk: usize,
    d: usize,
    max_frames: usize,
    device: Device,
}

impl Encoder {
    pub(crate) fn new(cfg: &S2sConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.encoder.stack.d_model;
        let k = cfg.codec.num_codebooks;
        // One extra row per codebook: the padding id of a shorter row in a batch.
        let emb = (0..k)
            .map(|i| candle_nn::embedding(cfg.codec.cardinality + 1, d, vb.pp(format!("emb.{i}"))))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let blocks = (0..cfg.encoder.stack.num_layers)
            .map(|i| ConformerBlock::new(cfg, vb.pp(format!("blocks.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            emb,
            blocks,
            norm_out: LayerNorm::new(d, vb.pp("norm_out"))?,
            num_codebooks: k,
            cardinality: cfg.codec.cardinality,
            chunk: cfg.encoder.chunk_size,
            d,
            max_frames: cfg.max_source_frames,
            device: vb.device().clone(),
        })
    }

    /// Width of the encoder output.
    pub fn d_model(&self) -> usize {
        self.d
    }

    pub fn chunk_size(&self) -> usize {
        self.chunk
    }

    /// `[B, T, K]` u32 ids of `rows` (checked, shorter rows padded) and their lengths.
    pub(crate) fn ids(
        &self,
        rows: &[&[Frame]],
        what: &'static str,
    ) -> Result<(Tensor, Vec<usize>)> {
        let k = self.num_codebooks;
        let t = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let mut v = Vec::with_capacity(rows.len() * t * k);
        for (ri, r) in rows.iter().enumerate() {
            for (fi, f) in r.iter().enumerate() {
                if f.len() != k {
                    return Err(S2sError::BadInput(format!(
                        "{what}: row {ri}, frame {fi} has {} codes, the codec has {k} codebooks",
                        f.len()
                    )));
                }
                for (ci, &c) in f.iter().enumerate() {
                    if c as usize >= self.cardinality {
                        return Err(S2sError::CodeOutOfRange {
                            what,
                            row: ri,
                            frame: fi,
                            codebook: ci,
                            code: c,
                            cardinality: self.cardinality,
                        });
                    }
                }
                v.extend_from_slice(f);
            }
            v.extend(std::iter::repeat_n(
                self.cardinality as u32,
                (t - r.len()) * k,
            ));
        }
        let lens = rows.iter().map(|r| r.len()).collect();
        Ok((Tensor::from_vec(v, (rows.len(), t, k), &self.device)?, lens))
    }

    fn embed(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let mut x: Option<Tensor> = None;
        for (i, e) in self.emb.iter().enumerate() {
            let y = e.forward(&ids.narrow(2, i, 1)?.squeeze(2)?.contiguous()?)?;
            x = Some(match x {
                None => y,
                Some(x) => (x + y)?,
            });
        }
        match x {
            Some(x) => Ok(x),
            None => candle_core::bail!("encoder: no codebooks"),
        }
    }

    /// Whole-clip forward of source rows (padded to the longest): `[B, T, d]` and the lengths.
    pub fn forward(&self, rows: &[&[Frame]], train: bool) -> Result<(Tensor, Vec<usize>)> {
        let (ids, lens) = self.ids(rows, "source")?;
        if let Some(&t) = lens.iter().max() {
            if t > self.max_frames {
                return Err(S2sError::BadInput(format!(
                    "source of {t} frames exceeds max_source_frames {}",
                    self.max_frames
                )));
            }
        }
        if let Some(i) = lens.iter().position(|&l| l == 0) {
            return Err(S2sError::BadInput(format!("source: row {i} is empty")));
        }
        let mut x = self.embed(&ids)?;
        for b in &self.blocks {
            x = b.forward(&x, &lens, train)?;
        }
        Ok((self.norm_out.forward(&x, train)?, lens))
    }

    /// Fresh streaming state for `batch_size` slots.
    pub fn state(&self, batch_size: usize) -> Result<EncoderState> {
        Ok(EncoderState {
            caches: self
                .blocks
                .iter()
                .map(|b| b.attn.slot_cache(batch_size))
                .collect::<candle_core::Result<Vec<_>>>()?,
            convs: self.blocks.iter().map(|b| b.conv.clone()).collect(),
            pending: vec![Vec::new(); batch_size],
            encoded: vec![0; batch_size],
            closed: vec![false; batch_size],
        })
    }

    fn run(&self, st: &mut EncoderState, ids: &Tensor, mask: &StreamMask) -> Result<Tensor> {
        let mut x = self.embed(ids)?;
        for ((b, c), v) in self
            .blocks
            .iter()
            .zip(st.caches.iter_mut())
            .zip(st.convs.iter_mut())
        {
            x = b.step(&x, c, v, mask)?;
        }
        Ok(self.norm_out.forward(&x, false)?)
    }

    /// Takes new source frames per slot (`frames[slot]`, possibly empty) and encodes every
    /// chunk that is now complete, all slots batched per chunk. Codes are checked before any
    /// state changes.
    pub fn push(&self, st: &mut EncoderState, frames: &[Vec<Frame>]) -> Result<Vec<EncodedChunk>> {
        let b = st.batch_size();
        if frames.len() != b {
            return Err(S2sError::BadInput(format!(
                "encoder push: {} slots of frames for a state of {b}",
                frames.len()
            )));
        }
        let refs: Vec<&[Frame]> = frames.iter().map(|f| f.as_slice()).collect();
        self.ids(&refs, "source")?;
        for (i, f) in frames.iter().enumerate() {
            if f.is_empty() {
                continue;
            }
            if st.closed[i] {
                return Err(S2sError::Slot {
                    slot: i,
                    reason: "source already flushed; reset the slot first".into(),
                });
            }
            let total = st.encoded[i] + st.pending[i].len() + f.len();
            if total > self.max_frames {
                return Err(S2sError::Slot {
                    slot: i,
                    reason: format!(
                        "source of {total} frames exceeds max_source_frames {}",
                        self.max_frames
                    ),
                });
            }
        }
        for (p, f) in st.pending.iter_mut().zip(frames) {
            p.extend(f.iter().cloned());
        }
        let mut out = Vec::new();
        loop {
            let ready: Vec<bool> = st.pending.iter().map(|p| p.len() >= self.chunk).collect();
            if !ready.iter().any(|&r| r) {
                break;
            }
            let mask = StreamMask::from_slots(&ready);
            out.push(self.run_slots(st, &mask, self.chunk)?);
        }
        Ok(out)
    }

    /// Encodes `n` pending frames of each slot set in `mask` (other rows run on padding).
    fn run_slots(
        &self,
        st: &mut EncoderState,
        mask: &StreamMask,
        n: usize,
    ) -> Result<EncodedChunk> {
        let b = st.batch_size();
        let pad = vec![self.cardinality as u32; self.num_codebooks];
        let mut v = Vec::with_capacity(b * n * self.num_codebooks);
        for i in 0..b {
            for j in 0..n {
                let f = if mask.is_active(i) {
                    &st.pending[i][j]
                } else {
                    &pad
                };
                v.extend_from_slice(f);
            }
        }
        let ids = Tensor::from_vec(v, (b, n, self.num_codebooks), &self.device)?;
        let out = self.run(st, &ids, mask)?;
        for i in 0..b {
            if mask.is_active(i) {
                st.pending[i].drain(..n);
                st.encoded[i] += n;
            }
        }
        Ok(EncodedChunk {
            out,
            mask: mask.clone(),
        })
    }

    /// Ends a slot's source: encodes its partial last chunk, if any. The slot then takes no
    /// more frames until it is reset.
    pub fn flush(&self, st: &mut EncoderState, slot: usize) -> Result<Option<EncodedChunk>> {
        let b = st.batch_size();
        if slot >= b {
            return Err(S2sError::Slot {
                slot,
                reason: format!("out of range for {b} slots"),
            });
        }
        let n = st.pending[slot].len();
        if n == 0 {
            return Ok(None);
        }
        let out = self.run_slots(st, &StreamMask::only(slot, b), n)?;
        st.closed[slot] = true;
        Ok(Some(out))
    }
}
