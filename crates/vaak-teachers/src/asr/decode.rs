//! Batched greedy decoding with Whisper's safeguards.
//!
//! Matches transformers' `WhisperForConditionalGeneration.generate` for short-form audio with
//! `do_sample=False`, no timestamps: the prompt is `<|startoftranscript|>` `<|xx|>`
//! `<|transcribe|>` `<|notimestamps|>` (English-only models: `<|startoftranscript|>`
//! `<|notimestamps|>`); `suppress_tokens` are masked at every step and
//! `begin_suppress_tokens` at the first generated one; the next token is the arg-max (the
//! first one on ties, as `torch.argmax`); a row stops at `<|endoftext|>` or after
//! `max_new_tokens`.
//!
//! The distribution after `<|startoftranscript|>` (position 0, raw logits) gives both the
//! no-speech probability (as OpenAI's `DecodingTask` and transformers' `WhisperNoSpeechDetection`
//! take it) and, when no language is forced, the detected language (arg-max over the language
//! tokens, as transformers' `detect_language`). Since the decoder is causal, that position is
//! fed alone first and the rest of the prompt continues from the cache.
//!
//! The average log-prob is OpenAI's: the log-softmax of the processed logits at each chosen
//! token, the end-of-text token included, over the number of those tokens. Finished rows leave
//! the batch (their cache rows are dropped), so a batch costs what its longest item costs.

use std::io::Write;

use candle_core::Tensor;

use super::config::SuppressLists;
use super::model::WhisperModel;
use super::tokenizer::WhisperTokenizer;
use crate::error::Result;

/// What one row decoded to.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    /// Generated ids, without the prompt and without the final `<|endoftext|>`.
    pub tokens: Vec<u32>,
    /// The language token used (forced or detected); None for English-only models.
    pub language_token: Option<u32>,
    /// Whether `<|endoftext|>` was generated (false: `max_new_tokens` cut the row).
    pub ended: bool,
    pub avg_logprob: f32,
    pub no_speech_prob: f32,
}

/// Language handling for a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LanguagePrompt {
    /// Every row uses this language token.
    Forced(u32),
    /// Each row's language is detected from its audio.
    Detect,
    /// English-only model: no language and no task token.
    None,
}

fn softmax_prob(logits: &[f32], idx: usize) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    (((logits[idx] - max) as f64).exp() / sum) as f32
}

/// Arg-max (first on ties) and its log-softmax value.
fn pick(logits: &[f32]) -> (u32, f64) {
    let mut best = 0usize;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    let max = logits[best] as f64;
    let lse = max
        + logits
            .iter()
            .map(|&l| (l as f64 - max).exp())
            .sum::<f64>()
            .ln();
    (best as u32, logits[best] as f64 - lse)
}

/// Greedy decoding of a batch of encoder outputs `[B, S, d_model]`.
pub fn greedy(
    model: &WhisperModel,
    tok: &WhisperTokenizer,
    suppress: &SuppressLists,
    encoded: &Tensor,
    language: LanguagePrompt,
    max_new_tokens: usize,
) -> Result<Vec<Decoded>> {
    let b = encoded.dim(0)?;
    let dev = model.device();
    let mut cache = model.decoder_cache(encoded)?;

    let sot = Tensor::new(vec![tok.sot; b], dev)?.reshape((b, 1))?;
    let first = model
        .decode(&sot, &mut cache)?
        .squeeze(1)?
        .to_vec2::<f32>()?;
    let no_speech: Vec<f32> = first
        .iter()
        .map(|row| {
            tok.no_speech
                .map_or(0.0, |id| softmax_prob(row, id as usize))
        })
        .collect();
    let langs: Vec<Option<u32>> = match language {
        LanguagePrompt::Forced(id) => vec![Some(id); b],
        LanguagePrompt::None => vec![None; b],
        LanguagePrompt::Detect => first
            .iter()
            .map(|row| {
                tok.languages()
                    .iter()
                    .map(|&(_, id)| id)
                    .fold(None, |best: Option<u32>, id| match best {
                        Some(bi) if row[bi as usize] >= row[id as usize] => Some(bi),
                        _ => Some(id),
                    })
            })
            .collect(),
    };
    let rest: Vec<Vec<u32>> = langs
        .iter()
        .map(|l| match (l, tok.transcribe) {
            (Some(l), Some(t)) => vec![*l, t, tok.no_timestamps],
            _ => vec![tok.no_timestamps],
        })
        .collect();
    let prompt_len = 1 + rest[0].len();
    let max_new = max_new_tokens.min(
        model
            .config()
            .max_target_positions
            .saturating_sub(prompt_len),
    );
    let flat: Vec<u32> = rest.iter().flatten().copied().collect();
    let rest_t = Tensor::from_vec(flat, (b, prompt_len - 1), dev)?;
    let logits = model.decode(&rest_t, &mut cache)?;
    let mut last = logits
        .narrow(1, prompt_len - 2, 1)?
        .squeeze(1)?
        .to_vec2::<f32>()?;

    let mut out: Vec<Decoded> = (0..b)
        .map(|i| Decoded {
            tokens: Vec::new(),
            language_token: langs[i],
            ended: false,
            avg_logprob: 0.0,
            no_speech_prob: no_speech[i],
        })
        .collect();
    let mut sum_lp = vec![0.0f64; b];
    let mut n_lp = vec![0usize; b];
    // Rows still decoding, in cache order.
    let mut active: Vec<usize> = (0..b).collect();
    for step in 0..max_new {
        let mut next = Vec::with_capacity(active.len());
        let mut keep = Vec::with_capacity(active.len());
        for (row, &item) in active.iter().enumerate() {
            let l = &mut last[row];
            for &t in &suppress.always {
                l[t as usize] = f32::NEG_INFINITY;
            }
            if step == 0 {
                for &t in &suppress.at_begin {
                    l[t as usize] = f32::NEG_INFINITY;
                }
            }
            let (t, lp) = pick(l);
            sum_lp[item] += lp;
            n_lp[item] += 1;
            if t == tok.eot {
                out[item].ended = true;
            } else {
                out[item].tokens.push(t);
                next.push(t);
                keep.push(row);
            }
        }
        if keep.is_empty() || step + 1 == max_new {
            break;
        }
        if keep.len() < active.len() {
            cache.retain(&keep)?;
            active = keep.iter().map(|&r| active[r]).collect();
        }
        let n = next.len();
        let t = Tensor::from_vec(next, (n, 1), dev)?;
        last = model.decode(&t, &mut cache)?.squeeze(1)?.to_vec2::<f32>()?;
    }
    for (i, d) in out.iter_mut().enumerate() {
        d.avg_logprob = if n_lp[i] == 0 {
            0.0
        } else {
            (sum_lp[i] / n_lp[i] as f64) as f32
        };
    }
    Ok(out)
}

/// Bytes of `text` over bytes of its zlib stream (level 6, Python's `zlib.compress` default);
/// 0 for empty text. Whisper treats ratios above 2.4 as repetition loops.
pub fn compression_ratio(text: &str) -> f32 {
    if text.is_empty() {
        return 0.0;
    }
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(6));
    // Writing to a Vec cannot fail.
    let compressed = enc
        .write_all(text.as_bytes())
        .and_then(|_| enc.finish())
        .map(|v| v.len())
        .unwrap_or(text.len());
    text.len() as f32 / compressed.max(1) as f32
}
