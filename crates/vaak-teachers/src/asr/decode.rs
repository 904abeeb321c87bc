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
//! After the first position, the search is the shared [`crate::seq2seq::greedy_search`]; this
//! file keeps Whisper's prompt rules.

use std::io::Write;

use candle_core::Tensor;

use super::config::SuppressLists;
use super::model::WhisperModel;
use super::tokenizer::WhisperTokenizer;
use crate::error::Result;
use crate::seq2seq::{greedy_search, EarlyStopping, GenerationParams, MaxLength};

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
    let prompts: Vec<Vec<u32>> = rest
        .into_iter()
        .map(|r| [vec![tok.sot], r].concat())
        .collect();
    let prompt_len = prompts[0].len();
    let max_new = max_new_tokens.min(
        model
            .config()
            .max_target_positions
            .saturating_sub(prompt_len),
    );
    let params = GenerationParams {
        num_beams: 1,
        max_length: MaxLength::Fixed(prompt_len + max_new),
        min_length: 0,
        length_penalty: 1.0,
        early_stopping: EarlyStopping::False,
        decoder_start_token_id: tok.sot,
        forced_bos_token_id: None,
        forced_eos_token_id: None,
        eos_token_ids: vec![tok.eot],
        pad_token_id: tok.eot,
        no_repeat_ngram_size: 0,
    };
    let generated = greedy_search(
        model,
        &mut cache,
        prompts,
        1,
        &vec![prompt_len + max_new; b],
        &params,
        &suppress.rules(),
    )?;
    Ok(generated
        .into_iter()
        .enumerate()
        .map(|(i, g)| {
            let mut tokens = g.tokens[prompt_len..].to_vec();
            if g.ended {
                tokens.pop();
            }
            Decoded {
                tokens,
                language_token: langs[i],
                ended: g.ended,
                avg_logprob: if g.tokens.len() > prompt_len {
                    g.score
                } else {
                    0.0
                },
                no_speech_prob: no_speech[i],
            }
        })
        .collect())
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
