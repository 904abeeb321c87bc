//! Whisper's `config.json` and `generation_config.json`, read as transformers writes them.
//!
//! Quirks handled here rather than in the files:
//! - transformers 5 writes `"suppress_tokens": null` (and sometimes `"begin_suppress_tokens":
//!   null`) into config.json, having moved both lists to generation_config.json; candle's
//!   `whisper::Config` wants lists. Every such field is optional here. As in transformers'
//!   `generate`, a generation_config.json, when present, is the only source of the lists;
//!   config.json is consulted only without one.
//! - The feed-forward width is `encoder_ffn_dim` / `decoder_ffn_dim`, not `4 * d_model` as
//!   candle-transformers assumes (true for the published sizes, not for fine-tunes or tiny
//!   test models).
//! - Token lists may name ids outside the vocabulary (transformers' default
//!   `begin_suppress_tokens` is `[220, 50256]` whatever the vocab); those are dropped, as
//!   transformers' `isin`-based processors ignore them.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Result, TeacherError};
use crate::seq2seq::config::{check_dims, dims_of, json_config};
use crate::seq2seq::TokenRules;

/// Whisper's `generation_config.json`: the shared reader (Whisper uses `suppress_tokens` and
/// `begin_suppress_tokens`).
pub use crate::seq2seq::GenerationConfigFile as GenerationConfig;

/// The model fields of a Whisper `config.json`.
#[derive(Clone, Debug, Deserialize)]
pub struct WhisperConfig {
    pub vocab_size: usize,
    pub num_mel_bins: usize,
    pub d_model: usize,
    pub encoder_layers: usize,
    pub encoder_attention_heads: usize,
    pub decoder_layers: usize,
    pub decoder_attention_heads: usize,
    /// Absent in some old configs; then `4 * d_model`.
    #[serde(default)]
    pub encoder_ffn_dim: Option<usize>,
    #[serde(default)]
    pub decoder_ffn_dim: Option<usize>,
    /// Encoder positions; the model sees `2 * max_source_positions` mel frames.
    pub max_source_positions: usize,
    pub max_target_positions: usize,
    #[serde(default = "default_activation")]
    pub activation_function: String,
    #[serde(default)]
    pub scale_embedding: bool,
    #[serde(default)]
    pub suppress_tokens: Option<Vec<i64>>,
    #[serde(default)]
    pub begin_suppress_tokens: Option<Vec<i64>>,
    #[serde(default)]
    pub decoder_start_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
}

fn default_activation() -> String {
    "gelu".to_string()
}

json_config!(WhisperConfig);

impl WhisperConfig {
    fn validate(&self, path: &Path) -> Result<()> {
        check_dims(
            path,
            dims_of!(self),
            &[
                ("num_mel_bins", self.num_mel_bins),
                ("encoder_layers", self.encoder_layers),
                ("decoder_layers", self.decoder_layers),
                ("max_source_positions", self.max_source_positions),
                ("max_target_positions", self.max_target_positions),
            ],
        )?;
        if self.activation_function != "gelu" {
            return Err(TeacherError::Config {
                path: path.to_path_buf(),
                reason: format!(
                    "activation_function {:?} is not supported (Whisper uses \"gelu\")",
                    self.activation_function
                ),
            });
        }
        Ok(())
    }

    pub fn encoder_ffn(&self) -> usize {
        self.encoder_ffn_dim.unwrap_or(4 * self.d_model)
    }

    pub fn decoder_ffn(&self) -> usize {
        self.decoder_ffn_dim.unwrap_or(4 * self.d_model)
    }

    /// Mel frames in one input window (3000 for the published models, i.e. 30 s).
    pub fn n_frames(&self) -> usize {
        2 * self.max_source_positions
    }
}

/// The token lists decoding applies, merged from both files and checked against the vocab.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SuppressLists {
    /// Never generated.
    pub always: Vec<u32>,
    /// Not generated as the first token after the prompt.
    pub at_begin: Vec<u32>,
}

impl SuppressLists {
    pub fn merge(cfg: &WhisperConfig, gen: Option<&GenerationConfig>) -> Self {
        let pick = |list: Option<&Vec<i64>>| -> Vec<u32> {
            let mut v: Vec<u32> = list
                .map(|l| {
                    l.iter()
                        .filter(|&&t| t >= 0 && (t as usize) < cfg.vocab_size)
                        .map(|&t| t as u32)
                        .collect()
                })
                .unwrap_or_default();
            v.sort_unstable();
            v.dedup();
            v
        };
        match gen {
            Some(g) => Self {
                always: pick(g.suppress_tokens.as_ref()),
                at_begin: pick(g.begin_suppress_tokens.as_ref()),
            },
            None => Self {
                always: pick(cfg.suppress_tokens.as_ref()),
                at_begin: pick(cfg.begin_suppress_tokens.as_ref()),
            },
        }
    }

    /// The lists as the shared search's token rules.
    pub fn rules(&self) -> TokenRules {
        TokenRules {
            suppress: self.always.clone(),
            begin_suppress: self.at_begin.clone(),
            bad_words: Vec::new(),
        }
    }
}
