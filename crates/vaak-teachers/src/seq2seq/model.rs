//! What the token-to-token teachers (M2M-100 / NLLB, Marian) share around the stacks: padded
//! encoding, checked decoding, the generation traits, and finding a checkpoint's files.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use vaak_nn::weights::{HubOptions, LoadOptions, WeightLocation, Weights};

use super::cache::{Encoded, KvCache};
use super::generate::{Decoder, Seq2Seq};
use super::layers::Stacks;
use crate::error::{Result, TeacherError};

/// A token-in, token-out encoder-decoder: its own embeddings and positions around the shared
/// stacks. Implementors get [`Decoder`] and [`Seq2Seq`].
pub trait TokenSeq2Seq {
    fn vocab_size(&self) -> usize;
    /// Right-padding for source batches.
    fn pad_token_id(&self) -> u32;
    /// Scaled token embeddings plus positions of `rows x l` tokens (`shape`, row-major) after
    /// `past` ones, for the decoder (`dec`) or the encoder.
    fn embed(&self, ids: &[u32], shape: (usize, usize), past: usize, dec: bool) -> Result<Tensor>;
    fn stacks(&self) -> &Stacks;
}

fn check_ids(ids: &[u32], vocab: usize, what: &str) -> Result<()> {
    if let Some(&t) = ids.iter().find(|&&t| t as usize >= vocab) {
        return Err(TeacherError::BadInput(format!(
            "{what}: token id {t} is outside the vocabulary ({vocab})"
        )));
    }
    Ok(())
}

/// Encodes a batch of token sequences, right-padded with the pad id and masked.
pub fn encode_tokens<M: TokenSeq2Seq + ?Sized>(m: &M, sources: &[&[u32]]) -> Result<Encoded> {
    if sources.is_empty() {
        return Err(TeacherError::BadInput("encode: empty batch".into()));
    }
    let lengths: Vec<usize> = sources.iter().map(|s| s.len()).collect();
    if let Some(i) = lengths.iter().position(|&n| n == 0) {
        return Err(TeacherError::BadInput(format!(
            "encode: source {i} has no tokens"
        )));
    }
    let s = lengths.iter().copied().max().unwrap_or(1);
    let mut flat = Vec::with_capacity(sources.len() * s);
    for src in sources {
        check_ids(src, m.vocab_size(), "encode")?;
        flat.extend_from_slice(src);
        flat.extend(std::iter::repeat_n(m.pad_token_id(), s - src.len()));
    }
    let x = m.embed(&flat, (sources.len(), s), 0, false)?;
    Ok(Encoded {
        hidden: m.stacks().encoder.forward(&x, &lengths)?,
        lengths,
    })
}

/// Feeds `tokens` (`rows x l`, row-major; `rows` = the cache's rows) after what `cache` holds
/// and returns f32 logits `[rows, l, vocab]`.
pub fn decode_tokens<M: TokenSeq2Seq + ?Sized>(
    m: &M,
    tokens: &[u32],
    l: usize,
    cache: &mut KvCache,
) -> Result<Tensor> {
    let rows = cache.rows();
    if l == 0 || tokens.len() != rows * l {
        return Err(TeacherError::BadInput(format!(
            "decode: {} tokens for {rows} rows of {l}",
            tokens.len()
        )));
    }
    check_ids(tokens, m.vocab_size(), "decode")?;
    let x = m.embed(tokens, (rows, l), cache.len(), true)?;
    let st = m.stacks();
    let x = st.decoder.forward(&x, cache)?;
    Ok(st.lm_head.forward(&x)?)
}

impl<M: TokenSeq2Seq> Decoder for M {
    fn vocab_size(&self) -> usize {
        TokenSeq2Seq::vocab_size(self)
    }

    fn decode_step(&self, tokens: &[u32], l: usize, cache: &mut KvCache) -> Result<Tensor> {
        decode_tokens(self, tokens, l, cache)
    }
}

impl<M: TokenSeq2Seq> Seq2Seq for M {
    fn encode_sources(&self, sources: &[&[u32]]) -> Result<Encoded> {
        encode_tokens(self, sources)
    }

    fn start_cache(&self, enc: &Encoded, group: usize) -> Result<KvCache> {
        self.stacks().decoder.start(enc, group)
    }
}

/// `sqrt(d_model)` when the config scales embeddings, else 1.
pub fn embed_scale(scale_embedding: bool, d_model: usize) -> f64 {
    if scale_embedding {
        (d_model as f64).sqrt()
    } else {
        1.0
    }
}

/// A required file next to the weights; a missing one is a config error naming it and `who`.
pub(crate) fn required_file(
    loc: &WeightLocation,
    name: &str,
    hub: &HubOptions,
    who: &str,
) -> Result<PathBuf> {
    loc.join(name).resolve_file(hub).map_err(|e| match e {
        vaak_nn::Error::MissingFile { path } => TeacherError::Config {
            path,
            reason: format!("missing ({who} needs {name})"),
        },
        other => other.into(),
    })
}

/// The weight files of a checkpoint directory, by the published names first (a directory may
/// hold other files).
fn weight_files(loc: &WeightLocation, hub: &HubOptions) -> Result<Vec<PathBuf>> {
    for name in [
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
    ] {
        if let Ok(p) = loc.join(name).resolve_file(hub) {
            return Ok(vec![p]);
        }
    }
    Ok(vaak_nn::weights::resolve_files(loc, hub)?)
}

/// A VarBuilder over a checkpoint's weights, converted to `dtype` on `device`.
pub(crate) fn checkpoint(
    loc: &WeightLocation,
    hub: &HubOptions,
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>> {
    let opts = LoadOptions {
        dtype: Some(dtype),
        device: device.clone(),
        hub: hub.clone(),
        state_dict_key: None,
    };
    let weights = Weights::from_files(&weight_files(loc, hub)?, &opts)?;
    Ok(weights.into_var_builder(Some(dtype)))
}
