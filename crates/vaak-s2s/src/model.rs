//! [`S2sModel`]: encoder + cross-attending causal decoder + codebook heads + conditioning,
//! one definition for teacher-forced training and step-by-step generation.
//!
//! # Decoder sequence (per reply of `T` frames, `K` codebooks, delays `d_k`)
//!
//! Step `s` predicts codebook `k` of frame `s - d_k` (`d_k = k` for the delay pattern, `0` for
//! the depth head), and the text token of frame `s`. Codebook 0 (and text) predict the
//! end-of-turn id at frame `T`; positions before a codebook starts or after the turn are
//! ignored. Step 0's input is BOS on every stream; step `s >= 1` feeds back what step `s - 1`
//! predicted (a code, EOT, or PAD where nothing was predicted). A step's input embedding is the
//! sum of its per-codebook embeddings, the text embedding and the conditioning vector.
//!
//! The depth head runs a small causal transformer over the `K` codebooks of a frame: position
//! 0 gets `proj(h)` (+ the frame's text token), position `j` gets `proj(h)` + the embedding of
//! code `j - 1`; position `j` predicts code `j`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Embedding, Linear, Module, VarBuilder, VarMap};
use vaak_nn::transformer::{
    cross_attention_mask, CrossKvCache, SlotKvCache, Transformer, TransformerConfig,
    TransformerOptions,
};
use vaak_nn::StreamMask;

use crate::cond::{CondEncoder, SlotCondition};
use crate::config::{HeadKind, S2sConfig, Specials};
use crate::encoder::{EncodedChunk, Encoder, Frame};
use crate::error::{Result, S2sError};

/// One training pair.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub source: Vec<Frame>,
    pub target: Vec<Frame>,
    /// Text tokens aligned to `target` (one per frame; the tokenizer's own pad id where no
    /// word starts). Required exactly when the config has a text stream.
    pub text: Option<Vec<u32>>,
    pub cond: SlotCondition,
}

/// Decoder inputs and targets of one sample laid out per step (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct Layout {
    /// `[S][K]` input ids.
    pub inputs: Vec<Vec<u32>>,
    /// `[S][K]` targets, `None` where ignored.
    pub targets: Vec<Vec<Option<u32>>>,
    /// `[S]` text input ids (empty without a text stream).
    pub text_inputs: Vec<u32>,
    /// `[S]` text targets.
    pub text_targets: Vec<Option<u32>>,
}

/// Teacher-forced outputs of a batch with their targets.
#[derive(Debug)]
pub struct TeacherForced {
    /// `[B, S, K, V]` with `V = cardinality + 3`: every codebook's logits in one tensor, so the
    /// loss is one cross-entropy (per-codebook slices would each cost a full-size zero-padded
    /// gradient in the backward). [`TeacherForced::codebook_logits`] gives one codebook's.
    pub logits: Tensor,
    /// `[B, S, Vt]` with `Vt = text_vocab_size + 3`.
    pub text_logits: Option<Tensor>,
    /// `[B, S, K]` u32 (ignored positions hold 0) and `[B, S, K]` f32 1/0 weights.
    pub targets: Tensor,
    pub target_mask: Tensor,
    pub text_targets: Option<Tensor>,
    pub text_mask: Option<Tensor>,
}

impl TeacherForced {
    /// Codebook `c`'s logits `[B, S, V]` (a view of [`Self::logits`]).
    pub fn codebook_logits(&self, c: usize) -> Result<Tensor> {
        Ok(self.logits.narrow(2, c, 1)?.squeeze(2)?)
    }
}

/// The biases of `heads`, if they have them.
fn head_biases(heads: &[Linear]) -> Option<Vec<Tensor>> {
    heads.iter().map(|h| h.bias().cloned()).collect()
}

/// The `K` delay heads `[N, d] -> [N, V]` as one matmul against their stacked weights:
/// `[N, K, V]`.
fn stacked_heads(heads: &[Linear], x: &Tensor) -> candle_core::Result<Tensor> {
    let n = x.dim(0)?;
    let v = heads[0].weight().dim(0)?;
    let w = Tensor::cat(&heads.iter().map(|h| h.weight()).collect::<Vec<_>>(), 0)?;
    let mut y = x.matmul(&w.t()?)?;
    if let Some(b) = head_biases(heads) {
        y = y.broadcast_add(&Tensor::cat(&b, 0)?)?;
    }
    y.reshape((n, heads.len(), v))
}

/// Head `j` applied to position `j` of every item, `x: [N, K, d]` -> `[N, K, V]`, as one
/// batched matmul over the stacked weights (the depth transformer's per-codebook outputs).
fn per_codebook_heads(heads: &[Linear], x: &Tensor) -> candle_core::Result<Tensor> {
    let w = Tensor::stack(&heads.iter().map(|h| h.weight()).collect::<Vec<_>>(), 0)?;
    let mut y = x
        .transpose(0, 1)?
        .contiguous()?
        .matmul(&w.transpose(1, 2)?)?;
    if let Some(b) = head_biases(heads) {
        y = y.broadcast_add(&Tensor::stack(&b, 0)?.unsqueeze(1)?)?;
    }
    y.transpose(0, 1)
}

/// Weights of the per-codebook and text cross-entropies in the total loss.
#[derive(Clone, Debug, PartialEq)]
pub struct LossWeights {
    pub codebooks: Vec<f64>,
    pub text: f64,
}

impl LossWeights {
    /// Every codebook and the text weighted 1.
    pub fn uniform(num_codebooks: usize) -> Self {
        Self {
            codebooks: vec![1.0; num_codebooks],
            text: 1.0,
        }
    }
}

/// Losses (scalar tensors, so training can stay on the device).
#[derive(Debug)]
pub struct LossOutput {
    /// `sum_k w_k * ce_k + w_text * ce_text`.
    pub total: Tensor,
    pub per_codebook: Vec<Tensor>,
    /// Fraction of non-ignored positions whose argmax is the target, per codebook.
    pub accuracy: Vec<Tensor>,
    pub text_ce: Option<Tensor>,
    pub text_accuracy: Option<Tensor>,
}

#[derive(Clone, Debug)]
struct DepthHead {
    proj: Linear,
    emb: Vec<Embedding>,
    text_emb: Option<Embedding>,
    transformer: Transformer,
    heads: Vec<Linear>,
}

#[derive(Clone, Debug)]
enum Heads {
    Delay(Vec<Linear>),
    Depth(Box<DepthHead>),
}

/// Incremental decoder state for `B` slots: self-attention KV cache and the cross-attention
/// memory cache, which grows as encoder chunks are appended.
#[derive(Debug)]
pub struct DecoderState {
    pub(crate) cache: SlotKvCache,
    pub(crate) memory: CrossKvCache,
}

impl DecoderState {
    /// Decoder steps taken per slot.
    pub fn positions(&self) -> &[usize] {
        self.cache.positions()
    }

    /// Encoder frames each slot can attend to.
    pub fn memory_lens(&self) -> &[usize] {
        self.memory.lens()
    }

    /// Forgets the slots set in `mask` (decoder steps and memory); others stay bit-identical.
    pub fn reset_slots(&mut self, mask: &StreamMask) -> Result<()> {
        self.cache.reset_slots(mask)?;
        self.memory.reset_slots(mask)?;
        Ok(())
    }
}

/// State of the depth transformer within one frame.
#[derive(Debug)]
pub struct DepthState {
    cache: SlotKvCache,
    hp: Tensor,
    next: usize,
}

/// The speech-to-speech model (weights only; all streaming state lives outside).
#[derive(Clone, Debug)]
pub struct S2sModel {
    cfg: S2sConfig,
    encoder: Encoder,
    emb: Vec<Embedding>,
    text_emb: Option<Embedding>,
    cond: CondEncoder,
    decoder: Transformer,
    text_head: Option<Linear>,
    heads: Heads,
    device: Device,
}

fn decoder_config(cfg: &S2sConfig) -> TransformerConfig {
    let s = &cfg.decoder;
    TransformerConfig {
        d_model: s.d_model,
        num_heads: s.num_heads,
        num_layers: s.num_layers,
        dim_feedforward: s.dim_feedforward,
        causal: true,
        final_norm: true,
        max_seq_len: cfg.decoder_steps(cfg.max_target_frames),
        ..Default::default()
    }
}

fn depth_config(cfg: &S2sConfig) -> TransformerConfig {
    let s = &cfg.depth;
    TransformerConfig {
        d_model: s.d_model,
        num_heads: s.num_heads,
        num_layers: s.num_layers,
        dim_feedforward: s.dim_feedforward,
        causal: true,
        final_norm: true,
        max_seq_len: cfg.codec.num_codebooks,
        ..Default::default()
    }
}

fn add(a: Option<Tensor>, b: Tensor) -> candle_core::Result<Tensor> {
    match a {
        None => Ok(b),
        Some(a) => a + b,
    }
}

impl S2sModel {
    /// Builds the model from `vb` (tensor names follow the field names: `encoder.*`,
    /// `emb.{k}`, `text_emb`, `cond.*`, `decoder.*`, `text_head`, `heads.{k}` or `depth.*`).
    pub fn new(cfg: &S2sConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let k = cfg.codec.num_codebooks;
        let d = cfg.decoder.d_model;
        let av = cfg.audio_specials().vocab();
        let tv = cfg.text_specials().map(|s| s.vocab());
        let emb = (0..k)
            .map(|i| candle_nn::embedding(av, d, vb.pp(format!("emb.{i}"))))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let text_emb = tv
            .map(|tv| candle_nn::embedding(tv, d, vb.pp("text_emb")))
            .transpose()?;
        let text_head = tv
            .map(|tv| candle_nn::linear(d, tv, vb.pp("text_head")))
            .transpose()?;
        let heads = match cfg.head {
            HeadKind::Delay => Heads::Delay(
                (0..k)
                    .map(|i| candle_nn::linear(d, av, vb.pp(format!("heads.{i}"))))
                    .collect::<candle_core::Result<Vec<_>>>()?,
            ),
            HeadKind::Depth => {
                let dd = cfg.depth.d_model;
                let vb = vb.pp("depth");
                Heads::Depth(Box::new(DepthHead {
                    proj: candle_nn::linear(d, dd, vb.pp("proj"))?,
                    emb: (0..k.saturating_sub(1))
                        .map(|i| candle_nn::embedding(av, dd, vb.pp(format!("emb.{i}"))))
                        .collect::<candle_core::Result<Vec<_>>>()?,
                    text_emb: tv
                        .map(|tv| candle_nn::embedding(tv, dd, vb.pp("text_emb")))
                        .transpose()?,
                    transformer: Transformer::new(&depth_config(cfg), vb.pp("transformer"))?,
                    heads: (0..k)
                        .map(|i| candle_nn::linear(dd, av, vb.pp(format!("heads.{i}"))))
                        .collect::<candle_core::Result<Vec<_>>>()?,
                }))
            }
        };
        Ok(Self {
            cfg: cfg.clone(),
            encoder: Encoder::new(cfg, vb.pp("encoder"))?,
            emb,
            text_emb,
            cond: CondEncoder::new(cfg.speaker_dim, d, vb.pp("cond"))?,
            decoder: Transformer::with_options(
                &decoder_config(cfg),
                &TransformerOptions {
                    cross_attention_dim: Some(cfg.encoder.stack.d_model),
                    ..Default::default()
                },
                vb.pp("decoder"),
            )?,
            text_head,
            heads,
            device: vb.device().clone(),
        })
    }

    /// A freshly initialised f32 model and the variables that hold its weights (for training
    /// and [`Self::save`]).
    pub fn init(cfg: &S2sConfig, device: &Device) -> Result<(Self, VarMap)> {
        let vm = VarMap::new();
        let m = Self::new(cfg, VarBuilder::from_varmap(&vm, DType::F32, device))?;
        Ok((m, vm))
    }

    /// [`S2sModel::init`] with every weight drawn from `seed` (candle's own init is not
    /// seeded), so two calls with one seed build the same model.
    pub fn init_seeded(cfg: &S2sConfig, device: &Device, seed: u64) -> Result<(Self, VarMap)> {
        let (m, vm) = Self::init(cfg, device)?;
        crate::train::trainer::seeded_init(&crate::train::trainer::sorted_vars(&vm)?, seed)?;
        Ok((m, vm))
    }

    pub fn config(&self) -> &S2sConfig {
        &self.cfg
    }

    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    fn specials(&self) -> Specials {
        self.cfg.audio_specials()
    }

    /// Checks a text row against the vocabulary.
    fn check_text(&self, row: usize, text: &[u32], what: &'static str) -> Result<()> {
        let Some(v) = self.cfg.text_vocab_size else {
            return Err(S2sError::BadInput(format!(
                "{what}: row {row} has text but the model has no text stream"
            )));
        };
        for (f, &t) in text.iter().enumerate() {
            if t as usize >= v {
                return Err(S2sError::TextOutOfRange {
                    what,
                    row,
                    frame: f,
                    token: t,
                    vocab: v,
                });
            }
        }
        Ok(())
    }

    /// Lays out the decoder inputs and targets of a sample (see the module docs); checks
    /// every code and text token.
    pub fn layout(&self, row: usize, sample: &Sample) -> Result<Layout> {
        let k = self.cfg.codec.num_codebooks;
        let card = self.cfg.codec.cardinality;
        for (fi, f) in sample.target.iter().enumerate() {
            if f.len() != k {
                return Err(S2sError::BadInput(format!(
                    "target: row {row}, frame {fi} has {} codes, the codec has {k} codebooks",
                    f.len()
                )));
            }
            for (ci, &c) in f.iter().enumerate() {
                if c as usize >= card {
                    return Err(S2sError::CodeOutOfRange {
                        what: "target",
                        row,
                        frame: fi,
                        codebook: ci,
                        code: c,
                        cardinality: card,
                    });
                }
            }
        }
        let t = sample.target.len();
        if t > self.cfg.max_target_frames {
            return Err(S2sError::BadInput(format!(
                "target: row {row} has {t} frames, max_target_frames is {}",
                self.cfg.max_target_frames
            )));
        }
        let sp = self.specials();
        let delays = self.cfg.delays();
        let steps = self.cfg.decoder_steps(t);
        // Token of codebook `k` at frame index `f` (may be negative or past the end).
        let tok = |k: usize, f: isize| -> Option<u32> {
            if f < 0 {
                None
            } else if (f as usize) < t {
                Some(sample.target[f as usize][k])
            } else if f as usize == t && k == 0 {
                Some(sp.eot)
            } else {
                None
            }
        };
        let mut inputs = Vec::with_capacity(steps);
        let mut targets = Vec::with_capacity(steps);
        for s in 0..steps {
            let s = s as isize;
            inputs.push(
                (0..k)
                    .map(|c| {
                        if s == 0 {
                            sp.bos
                        } else {
                            tok(c, s - 1 - delays[c] as isize).unwrap_or(sp.pad)
                        }
                    })
                    .collect(),
            );
            targets.push((0..k).map(|c| tok(c, s - delays[c] as isize)).collect());
        }
        let (mut text_inputs, mut text_targets) = (Vec::new(), Vec::new());
        match (self.cfg.text_specials(), &sample.text) {
            (None, None) => {}
            (Some(ts), Some(text)) => {
                self.check_text(row, text, "text")?;
                if text.len() != t {
                    return Err(S2sError::BadInput(format!(
                        "text: row {row} has {} tokens for {t} frames",
                        text.len()
                    )));
                }
                let ttok = |f: isize| -> Option<u32> {
                    if f < 0 {
                        None
                    } else if (f as usize) < t {
                        Some(text[f as usize])
                    } else if f as usize == t {
                        Some(ts.eot)
                    } else {
                        None
                    }
                };
                for s in 0..steps as isize {
                    text_inputs.push(if s == 0 {
                        ts.bos
                    } else {
                        ttok(s - 1).unwrap_or(ts.pad)
                    });
                    text_targets.push(ttok(s));
                }
            }
            (Some(_), None) => {
                return Err(S2sError::BadInput(format!(
                    "text: row {row} has no text but the model has a text stream"
                )))
            }
            (None, Some(_)) => {
                return Err(S2sError::BadInput(format!(
                    "text: row {row} has text but the model has no text stream"
                )))
            }
        }
        Ok(Layout {
            inputs,
            targets,
            text_inputs,
            text_targets,
        })
    }

    /// `[B, d]` conditioning vectors; `drop_speaker` uses the null speaker for every row
    /// (the unconditional branch of classifier-free guidance).
    pub fn condition(&self, conds: &[SlotCondition], drop_speaker: bool) -> Result<Tensor> {
        self.cond.forward(conds, drop_speaker, &self.device)
    }

    /// Embeds decoder input ids `[B, T, K]` (+ text `[B, T]`) and adds `cond: [B, d]`.
    fn embed_inputs(&self, ids: &Tensor, text: Option<&Tensor>, cond: &Tensor) -> Result<Tensor> {
        let mut x = None;
        for (i, e) in self.emb.iter().enumerate() {
            x = Some(add(
                x,
                e.forward(&ids.narrow(2, i, 1)?.squeeze(2)?.contiguous()?)?,
            )?);
        }
        let mut x = x.ok_or_else(|| S2sError::BadInput("no codebooks".into()))?;
        match (&self.text_emb, text) {
            (Some(e), Some(t)) => x = (x + e.forward(t)?)?,
            (None, None) => {}
            _ => {
                return Err(S2sError::BadInput(
                    "text input given exactly when the model has a text stream".into(),
                ))
            }
        }
        Ok(x.broadcast_add(&cond.unsqueeze(1)?)?)
    }

    /// Teacher-forced forward of a batch (rows padded to the longest). Rows whose
    /// `cond.speaker` is `None` use the null speaker, which is how a trainer drops the speaker
    /// for classifier-free guidance.
    pub fn forward_batch(&self, samples: &[Sample], train: bool) -> Result<TeacherForced> {
        self.forward_batch_visible(samples, None, train)
    }

    /// [`Self::forward_batch`] where `visible[b][s]` limits how many encoder frames decoder
    /// step `s` of row `b` sees (as when decoding starts before the source has ended);
    /// `None` lets every step see the row's whole source.
    pub fn forward_batch_visible(
        &self,
        samples: &[Sample],
        visible: Option<&[Vec<usize>]>,
        train: bool,
    ) -> Result<TeacherForced> {
        let b = samples.len();
        if b == 0 {
            return Err(S2sError::BadInput("empty batch".into()));
        }
        let k = self.cfg.codec.num_codebooks;
        let sp = self.specials();
        let layouts = samples
            .iter()
            .enumerate()
            .map(|(i, s)| self.layout(i, s))
            .collect::<Result<Vec<_>>>()?;
        let steps = layouts.iter().map(|l| l.inputs.len()).max().unwrap_or(0);
        let (mut ids, mut tg, mut tm) = (Vec::new(), Vec::new(), Vec::new());
        let (mut tids, mut ttg, mut ttm) = (Vec::new(), Vec::new(), Vec::new());
        let tsp = self.cfg.text_specials();
        for l in &layouts {
            for s in 0..steps {
                for c in 0..k {
                    let (i, t) = match (l.inputs.get(s), l.targets.get(s)) {
                        (Some(i), Some(t)) => (i[c], t[c]),
                        _ => (sp.pad, None),
                    };
                    ids.push(i);
                    tg.push(t.unwrap_or(0));
                    tm.push(if t.is_some() { 1f32 } else { 0f32 });
                }
                if let Some(ts) = tsp {
                    let i = l.text_inputs.get(s).copied().unwrap_or(ts.pad);
                    let t = l.text_targets.get(s).copied().flatten();
                    tids.push(i);
                    ttg.push(t.unwrap_or(0));
                    ttm.push(if t.is_some() { 1f32 } else { 0f32 });
                }
            }
        }
        let dev = &self.device;
        let ids = Tensor::from_vec(ids, (b, steps, k), dev)?;
        let targets = Tensor::from_vec(tg, (b, steps, k), dev)?;
        let target_mask = Tensor::from_vec(tm, (b, steps, k), dev)?;
        let (text_ids, text_targets, text_mask) = if tsp.is_some() {
            (
                Some(Tensor::from_vec(tids, (b, steps), dev)?),
                Some(Tensor::from_vec(ttg, (b, steps), dev)?),
                Some(Tensor::from_vec(ttm, (b, steps), dev)?),
            )
        } else {
            (None, None, None)
        };

        let sources: Vec<&[Frame]> = samples.iter().map(|s| s.source.as_slice()).collect();
        let (memory, lens) = self.encoder.forward(&sources, train)?;
        let s_max = memory.dim(1)?;
        if let Some((i, _)) = lens.iter().enumerate().find(|(_, &l)| l == 0) {
            return Err(S2sError::BadInput(format!("source: row {i} is empty")));
        }
        let vis: Vec<Vec<usize>> = match visible {
            None => lens.iter().map(|&l| vec![l; steps]).collect(),
            Some(v) => {
                if v.len() != b {
                    return Err(S2sError::BadInput(format!(
                        "visible has {} rows for a batch of {b}",
                        v.len()
                    )));
                }
                let mut out = Vec::with_capacity(b);
                for (i, row) in v.iter().enumerate() {
                    if row.len() < steps {
                        return Err(S2sError::BadInput(format!(
                            "visible row {i} has {} steps, the batch needs {steps}",
                            row.len()
                        )));
                    }
                    if let Some(&n) = row[..steps].iter().find(|&&n| n == 0 || n > lens[i]) {
                        return Err(S2sError::BadInput(format!(
                            "visible row {i}: {n} frames is outside 1..={}",
                            lens[i]
                        )));
                    }
                    out.push(row[..steps].to_vec());
                }
                out
            }
        };
        let mmask = cross_attention_mask(&vis, s_max, dev)?;
        let conds: Vec<SlotCondition> = samples.iter().map(|s| s.cond.clone()).collect();
        let cond = self.condition(&conds, false)?;
        let x = self.embed_inputs(&ids, text_ids.as_ref(), &cond)?;
        let h = self
            .decoder
            .forward_with_memory(&x, 0, train, &memory, Some(&mmask))?;
        let text_logits = self
            .text_head
            .as_ref()
            .map(|hd| hd.forward(&h))
            .transpose()?;
        let logits = match &self.heads {
            Heads::Delay(heads) => {
                stacked_heads(heads, &h.reshape((b * steps, ()))?)?.reshape((b, steps, k, ()))?
            }
            Heads::Depth(dh) => {
                let dd = self.cfg.depth.d_model;
                let hp = vaak_nn::fused::linear(&dh.proj, &h)?.reshape((b * steps, 1, dd))?;
                let flat_t = targets.reshape((b * steps, k))?;
                let flat_m = target_mask.reshape((b * steps, k))?;
                // Teacher forcing: ignored targets feed PAD.
                let pad = Tensor::full(sp.pad, (b * steps, k), dev)?;
                let fed = flat_m.ne(0f32)?.where_cond(&flat_t, &pad)?;
                let mut pos = Vec::with_capacity(k);
                let first = match (&dh.text_emb, &text_targets, &text_mask, tsp) {
                    (Some(e), Some(tt), Some(tm), Some(ts)) => {
                        let tpad = Tensor::full(ts.pad, (b * steps,), dev)?;
                        let tt = tm
                            .reshape(b * steps)?
                            .ne(0f32)?
                            .where_cond(&tt.reshape(b * steps)?, &tpad)?;
                        hp.broadcast_add(&e.forward(&tt)?.unsqueeze(1)?)?
                    }
                    _ => hp.clone(),
                };
                pos.push(first);
                for j in 1..k {
                    let e = dh.emb[j - 1]
                        .forward(&fed.narrow(1, j - 1, 1)?.squeeze(1)?.contiguous()?)?;
                    pos.push(hp.broadcast_add(&e.unsqueeze(1)?)?);
                }
                let x = Tensor::cat(&pos, 1)?;
                let y = dh.transformer.forward_at(&x, 0, train)?;
                per_codebook_heads(&dh.heads, &y)?.reshape((b, steps, k, sp.vocab()))?
            }
        };
        Ok(TeacherForced {
            logits,
            text_logits,
            targets,
            target_mask,
            text_targets,
            text_mask,
        })
    }

    /// Per-codebook (and text) masked cross-entropy, weighted into a total, with accuracies.
    pub fn loss(&self, tf: &TeacherForced, w: &LossWeights) -> Result<LossOutput> {
        let (b, s, k, v) = tf.logits.dims4()?;
        if w.codebooks.len() != k {
            return Err(S2sError::BadInput(format!(
                "loss weights: {} codebook weights for {k} codebooks",
                w.codebooks.len()
            )));
        }
        // Per-position cross-entropy and argmax hits of `[N, V]` logits.
        let nll_and_hits = |logits: &Tensor, tgt: &Tensor| -> Result<(Tensor, Tensor)> {
            let ce = vaak_nn::fused::cross_entropy_rows(logits, tgt)?;
            let hit = logits.argmax(D::Minus1)?.eq(tgt)?.to_dtype(DType::F32)?;
            Ok((ce, hit))
        };
        // Masked means per column of `[N, C]` values (`count`: the mask's column sums).
        let masked_means = |vals: &Tensor, m: &Tensor, count: &Tensor| -> Result<Tensor> {
            Ok((vals * m)?.sum(0)?.div(count)?)
        };
        // Every codebook at once: rows are (item, step), columns codebooks.
        let rows = b * s;
        let tgt = tf.targets.reshape(rows * k)?;
        let (nll, hit) = nll_and_hits(&tf.logits.reshape((rows * k, v))?, &tgt)?;
        let m = tf.target_mask.reshape((rows, k))?;
        let count = (m.sum(0)? + 1e-9)?;
        let ce = masked_means(&nll.reshape((rows, k))?, &m, &count)?;
        let acc = masked_means(&hit.reshape((rows, k))?, &m, &count)?;
        let weights: Vec<f32> = w.codebooks.iter().map(|&x| x as f32).collect();
        let weights = Tensor::from_vec(weights, k, ce.device())?;
        let mut total = (&ce * weights)?.sum_all()?;
        let per = (0..k)
            .map(|c| ce.get(c))
            .collect::<candle_core::Result<_>>()?;
        let acc = (0..k)
            .map(|c| acc.get(c))
            .collect::<candle_core::Result<_>>()?;
        let (mut text_ce, mut text_accuracy) = (None, None);
        if let (Some(l), Some(t), Some(m)) = (&tf.text_logits, &tf.text_targets, &tf.text_mask) {
            let n = t.elem_count();
            let (nll, hit) = nll_and_hits(&l.reshape((n, ()))?, &t.reshape(n)?)?;
            let m = m.reshape((n, 1))?;
            let count = (m.sum(0)? + 1e-9)?;
            let ce = masked_means(&nll.reshape((n, 1))?, &m, &count)?.squeeze(0)?;
            let a = masked_means(&hit.reshape((n, 1))?, &m, &count)?.squeeze(0)?;
            total = (total + (&ce * w.text)?)?;
            text_ce = Some(ce);
            text_accuracy = Some(a);
        }
        Ok(LossOutput {
            total,
            per_codebook: per,
            accuracy: acc,
            text_ce,
            text_accuracy,
        })
    }

    /// Fresh decoder state for `batch_size` slots; the memory holds up to
    /// `max_source_frames` encoder frames per slot.
    pub fn decoder_state(&self, batch_size: usize) -> Result<DecoderState> {
        Ok(DecoderState {
            cache: self.decoder.slot_cache(batch_size)?,
            memory: self
                .decoder
                .cross_cache(batch_size, self.cfg.max_source_frames)?,
        })
    }

    /// A fresh self-attention cache for a second (unconditional) decoder pass.
    pub(crate) fn decoder_cache(&self, batch_size: usize) -> Result<SlotKvCache> {
        Ok(self.decoder.slot_cache(batch_size)?)
    }

    /// Appends encoder output to the decoder's cross-attention memory (projected once).
    pub fn append_memory(&self, st: &mut DecoderState, chunk: &EncodedChunk) -> Result<()> {
        Ok(self
            .decoder
            .append_memory(&mut st.memory, &chunk.out, &chunk.mask)?)
    }

    /// Checks step input ids `[B][K]` (specials allowed) and text ids, builds tensors.
    fn step_ids(
        &self,
        codes: &[Vec<u32>],
        text: Option<&[u32]>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let k = self.cfg.codec.num_codebooks;
        let av = self.specials().vocab();
        let b = codes.len();
        let mut v = Vec::with_capacity(b * k);
        for (i, row) in codes.iter().enumerate() {
            if row.len() != k {
                return Err(S2sError::BadInput(format!(
                    "decoder step: slot {i} has {} ids for {k} codebooks",
                    row.len()
                )));
            }
            if let Some((c, &id)) = row.iter().enumerate().find(|(_, &id)| id as usize >= av) {
                return Err(S2sError::CodeOutOfRange {
                    what: "decoder input",
                    row: i,
                    frame: 0,
                    codebook: c,
                    code: id,
                    cardinality: av,
                });
            }
            v.extend_from_slice(row);
        }
        let ids = Tensor::from_vec(v, (b, 1, k), &self.device)?;
        let text =
            match (self.cfg.text_specials(), text) {
                (Some(ts), Some(t)) => {
                    if t.len() != b {
                        return Err(S2sError::BadInput(format!(
                            "decoder step: {} text ids for {b} slots",
                            t.len()
                        )));
                    }
                    if let Some((i, &id)) = t
                        .iter()
                        .enumerate()
                        .find(|(_, &id)| id as usize >= ts.vocab())
                    {
                        return Err(S2sError::TextOutOfRange {
                            what: "decoder input",
                            row: i,
                            frame: 0,
                            token: id,
                            vocab: ts.vocab(),
                        });
                    }
                    Some(Tensor::from_vec(t.to_vec(), (b, 1), &self.device)?)
                }
                (None, None) => None,
                _ => return Err(S2sError::BadInput(
                    "decoder step: text ids are needed exactly when the model has a text stream"
                        .into(),
                )),
            };
        Ok((ids, text))
    }

    /// One decoder step for the slots set in `mask`: input ids `[B][K]` (codes or specials),
    /// text ids `[B]`, conditioning `[B, d]`; returns the hidden states `[B, d]` (rows of
    /// inactive slots carry no meaning).
    pub fn decoder_step(
        &self,
        st: &mut DecoderState,
        codes: &[Vec<u32>],
        text: Option<&[u32]>,
        cond: &Tensor,
        mask: &StreamMask,
    ) -> Result<Tensor> {
        self.decoder_step_with(&mut st.cache, &st.memory, codes, text, cond, mask)
    }

    pub(crate) fn decoder_step_with(
        &self,
        cache: &mut SlotKvCache,
        memory: &CrossKvCache,
        codes: &[Vec<u32>],
        text: Option<&[u32]>,
        cond: &Tensor,
        mask: &StreamMask,
    ) -> Result<Tensor> {
        let (ids, text) = self.step_ids(codes, text)?;
        let x = self.embed_inputs(&ids, text.as_ref(), cond)?;
        let h = self
            .decoder
            .step_slots_with_memory(&x, cache, mask, memory)?;
        Ok(h.squeeze(1)?)
    }

    /// Text logits `[B, Vt]` from decoder hidden states `[B, d]`.
    pub fn text_logits(&self, h: &Tensor) -> Result<Option<Tensor>> {
        Ok(self
            .text_head
            .as_ref()
            .map(|hd| hd.forward(h))
            .transpose()?)
    }

    /// Delay-pattern logits, one `[B, V]` per codebook. Errors for a depth-head model.
    pub fn delay_logits(&self, h: &Tensor) -> Result<Vec<Tensor>> {
        match &self.heads {
            Heads::Delay(heads) => Ok(heads
                .iter()
                .map(|hd| hd.forward(h))
                .collect::<candle_core::Result<Vec<_>>>()?),
            Heads::Depth(_) => Err(S2sError::BadInput(
                "delay_logits on a depth-head model".into(),
            )),
        }
    }

    /// Starts the depth transformer for one frame from decoder hidden states `[B, d]`.
    pub fn depth_start(&self, h: &Tensor) -> Result<DepthState> {
        let Heads::Depth(dh) = &self.heads else {
            return Err(S2sError::BadInput(
                "depth_start on a delay-head model".into(),
            ));
        };
        Ok(DepthState {
            cache: dh.transformer.slot_cache(h.dim(0)?)?,
            hp: dh.proj.forward(h)?.unsqueeze(1)?,
            next: 0,
        })
    }

    /// Next depth step: `prev` holds, per row, the frame's text id for codebook 0 (ignored
    /// without a text stream) or code `j - 1` for codebook `j`. Returns codebook `j`'s logits
    /// `[B, V]`.
    pub fn depth_step(&self, st: &mut DepthState, prev: &[u32]) -> Result<Tensor> {
        let Heads::Depth(dh) = &self.heads else {
            return Err(S2sError::BadInput(
                "depth_step on a delay-head model".into(),
            ));
        };
        let k = self.cfg.codec.num_codebooks;
        let j = st.next;
        if j >= k {
            return Err(S2sError::BadInput(format!(
                "depth_step: all {k} codebooks done"
            )));
        }
        let b = st.hp.dim(0)?;
        if prev.len() != b {
            return Err(S2sError::BadInput(format!(
                "depth_step: {} ids for {b} rows",
                prev.len()
            )));
        }
        let ids = || Tensor::from_vec(prev.to_vec(), b, &self.device);
        let x = if j == 0 {
            match (&dh.text_emb, self.cfg.text_specials()) {
                (Some(e), Some(ts)) => {
                    if let Some(&id) = prev.iter().find(|&&id| id as usize >= ts.vocab()) {
                        return Err(S2sError::BadInput(format!(
                            "depth_step: text id {id} outside 0..{}",
                            ts.vocab()
                        )));
                    }
                    st.hp.broadcast_add(&e.forward(&ids()?)?.unsqueeze(1)?)?
                }
                _ => st.hp.clone(),
            }
        } else {
            let av = self.specials().vocab();
            if let Some(&id) = prev.iter().find(|&&id| id as usize >= av) {
                return Err(S2sError::BadInput(format!(
                    "depth_step: code {id} outside 0..{av}"
                )));
            }
            st.hp
                .broadcast_add(&dh.emb[j - 1].forward(&ids()?)?.unsqueeze(1)?)?
        };
        let y = dh
            .transformer
            .step_slots(&x, &mut st.cache, &StreamMask::All)?;
        st.next += 1;
        Ok(dh.heads[j].forward(&y.squeeze(1)?)?)
    }

    /// Writes `config.json` and `model.safetensors` (the variables of `vars`) into `dir`.
    pub fn save(cfg: &S2sConfig, vars: &VarMap, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| S2sError::Io {
            path: dir.to_path_buf(),
            source: e,
        })?;
        let cp = dir.join("config.json");
        let json = serde_json::to_string_pretty(cfg).map_err(|e| S2sError::Json {
            path: cp.clone(),
            source: e,
        })?;
        std::fs::write(&cp, json).map_err(|e| S2sError::Io {
            path: cp.clone(),
            source: e,
        })?;
        vars.save(dir.join("model.safetensors"))?;
        Ok(())
    }

    /// Loads a directory written by [`Self::save`]. Every tensor is checked against the
    /// shapes the config implies: a mismatch names the tensor and both shapes. Returns the
    /// variables too, so training can resume from them.
    pub fn load(dir: &Path, device: &Device) -> Result<(Self, VarMap)> {
        let (cfg, file) = Self::read_export(dir, device)?;
        Self::from_tensors(&cfg, &file, device)
    }

    /// The config and the named tensors of an export directory.
    fn read_export(dir: &Path, device: &Device) -> Result<(S2sConfig, HashMap<String, Tensor>)> {
        let cp = dir.join("config.json");
        let text = std::fs::read_to_string(&cp).map_err(|e| S2sError::Io {
            path: cp.clone(),
            source: e,
        })?;
        let cfg: S2sConfig = serde_json::from_str(&text).map_err(|e| S2sError::Json {
            path: cp.clone(),
            source: e,
        })?;
        cfg.validate()?;
        let wp = dir.join("model.safetensors");
        if !wp.exists() {
            return Err(S2sError::Io {
                path: wp,
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no weights"),
            });
        }
        let file: HashMap<String, Tensor> = candle_core::safetensors::load(&wp, device)?;
        Ok((cfg, file))
    }

    /// Builds the model of `cfg` from named tensors (a safetensors file's contents), checking
    /// every tensor: a missing, extra or wrongly shaped one is an error naming it. Tensors of
    /// another dtype (an f16 export) are converted to the variables' dtype. The model runs on
    /// the returned variables (for training from these weights); inference is faster on
    /// [`Self::from_tensors_inference`].
    pub fn from_tensors(
        cfg: &S2sConfig,
        file: &HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<(Self, VarMap)> {
        let (_, vm) = Self::init(cfg, device)?;
        let checked = Self::check_tensors(&vm, file)?;
        {
            let data = vm
                .data()
                .lock()
                .map_err(|_| S2sError::BadInput("variable map lock poisoned".into()))?;
            for (name, t) in &checked {
                data[name].set(t)?;
            }
        }
        let m = Self::new(cfg, VarBuilder::from_varmap(&vm, DType::F32, device))?;
        Ok((m, vm))
    }

    /// [`Self::from_tensors`] for inference: the weights are plain tensors, not variables, so
    /// no operation records a backward graph (less time and memory per step). Same checks.
    pub fn from_tensors_inference(
        cfg: &S2sConfig,
        file: &HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Self> {
        let (_, vm) = Self::init(cfg, device)?;
        let checked = Self::check_tensors(&vm, file)?;
        drop(vm);
        Self::new(cfg, VarBuilder::from_tensors(checked, DType::F32, device))
    }

    /// [`Self::load`] for inference: plain tensors (see [`Self::from_tensors_inference`]).
    pub fn load_inference(dir: &Path, device: &Device) -> Result<Self> {
        let (cfg, file) = Self::read_export(dir, device)?;
        Self::from_tensors_inference(&cfg, &file, device)
    }

    /// Every variable of `vm` found in `file` with its shape, converted to its dtype; a
    /// missing, extra or wrongly shaped tensor is an error naming it.
    fn check_tensors(
        vm: &VarMap,
        file: &HashMap<String, Tensor>,
    ) -> Result<HashMap<String, Tensor>> {
        let data = vm
            .data()
            .lock()
            .map_err(|_| S2sError::BadInput("variable map lock poisoned".into()))?;
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        let mut out = HashMap::with_capacity(names.len());
        for name in names {
            let var = &data[name];
            let expected = var.dims().to_vec();
            let Some(t) = file.get(name) else {
                return Err(S2sError::MissingTensor {
                    name: name.clone(),
                    expected,
                });
            };
            if t.dims() != expected.as_slice() {
                return Err(S2sError::ShapeMismatch {
                    name: name.clone(),
                    expected,
                    found: t.dims().to_vec(),
                });
            }
            out.insert(name.clone(), t.to_dtype(var.dtype())?);
        }
        let mut extra: Vec<&String> = file.keys().filter(|n| !data.contains_key(*n)).collect();
        extra.sort();
        if let Some(n) = extra.first() {
            return Err(S2sError::UnexpectedTensor {
                name: (*n).clone(),
                found: file[*n].dims().to_vec(),
            });
        }
        Ok(out)
    }
}
