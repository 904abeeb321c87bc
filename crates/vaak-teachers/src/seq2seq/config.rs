//! One reader for `generation_config.json` (and the config.json checks the models share).
//!
//! Every field is optional (absent or `null` stays `None`) and unknown ones are ignored, so the
//! files of Whisper, M2M-100 / NLLB and Marian all parse into [`GenerationConfigFile`]; each
//! model reads the fields it honours.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::error::{Result, TeacherError};

/// One id or a list of ids (`eos_token_id` may be either in HF configs).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            Self::One(i) => vec![*i],
            Self::Many(v) => v.clone(),
        }
    }
}

/// transformers' `early_stopping`: `true`, `false` or `"never"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum EarlyStopping {
    /// Stop an item once `num_beams` hypotheses are finished.
    True,
    /// Stop when the best running beam, scored at the current length, cannot beat the worst
    /// finished one (transformers' default).
    #[default]
    False,
    /// As `False`, but with a positive length penalty the running beam is scored at
    /// `max_length` (the canonical beam search).
    Never,
}

/// The decoding fields of a published `generation_config.json`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct GenerationConfigFile {
    pub num_beams: Option<usize>,
    pub max_length: Option<usize>,
    pub min_length: Option<usize>,
    pub length_penalty: Option<f32>,
    /// `true`, `false` or `"never"`.
    pub early_stopping: Option<serde_json::Value>,
    pub no_repeat_ngram_size: Option<usize>,
    pub forced_bos_token_id: Option<u32>,
    pub forced_eos_token_id: Option<u32>,
    pub decoder_start_token_id: Option<u32>,
    pub eos_token_id: Option<TokenIds>,
    pub pad_token_id: Option<u32>,
    /// Never generated (Whisper). Ids may lie outside the vocabulary; users filter them.
    pub suppress_tokens: Option<Vec<i64>>,
    /// Not generated first (Whisper).
    pub begin_suppress_tokens: Option<Vec<i64>>,
    /// Token sequences never completed (Marian bans `<pad>` this way).
    pub bad_words_ids: Option<Vec<Vec<u32>>>,
}

impl GenerationConfigFile {
    pub fn from_file(path: &Path) -> Result<Self> {
        let cfg: Self = read_json(path)?;
        cfg.early_stopping()
            .map_err(|reason| TeacherError::Config {
                path: path.to_path_buf(),
                reason,
            })?;
        Ok(cfg)
    }

    /// The parsed `early_stopping` (transformers' default `false` when absent).
    pub fn early_stopping(&self) -> std::result::Result<EarlyStopping, String> {
        match &self.early_stopping {
            None | Some(serde_json::Value::Null) => Ok(EarlyStopping::False),
            Some(serde_json::Value::Bool(true)) => Ok(EarlyStopping::True),
            Some(serde_json::Value::Bool(false)) => Ok(EarlyStopping::False),
            Some(serde_json::Value::String(s)) if s == "never" => Ok(EarlyStopping::Never),
            Some(v) => Err(format!(
                "early_stopping must be true, false or \"never\", not {v}"
            )),
        }
    }
}

/// A file's text; a read failure is a config error naming it.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| TeacherError::Config {
        path: path.to_path_buf(),
        reason: format!("cannot read: {e}"),
    })
}

/// Parses JSON text; a failure is a config error naming `path`.
pub(crate) fn parse_json<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T> {
    serde_json::from_str(text).map_err(|e| TeacherError::Config {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Reads and parses a JSON file.
pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    parse_json(&read_text(path)?, path)
}

/// The sizes every encoder-decoder `config.json` has (transformers' names).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dims {
    pub vocab_size: usize,
    pub d_model: usize,
    /// Encoder and decoder attention heads.
    pub heads: (usize, usize),
}

/// The [`Dims`] of a config with transformers' field names.
macro_rules! dims_of {
    ($c:expr) => {
        $crate::seq2seq::config::Dims {
            vocab_size: $c.vocab_size,
            d_model: $c.d_model,
            heads: ($c.encoder_attention_heads, $c.decoder_attention_heads),
        }
    };
}
pub(crate) use dims_of;

/// `from_json` and `from_file` for a `config.json` type with a `validate(&self, &Path)`.
macro_rules! json_config {
    ($t:ty) => {
        impl $t {
            /// Parses and validates a config.json's text; `path` names it in errors.
            pub fn from_json(text: &str, path: &std::path::Path) -> $crate::error::Result<Self> {
                let cfg: Self = $crate::seq2seq::config::parse_json(text, path)?;
                cfg.validate(path)?;
                Ok(cfg)
            }

            /// Reads, parses and validates a config.json.
            pub fn from_file(path: &std::path::Path) -> $crate::error::Result<Self> {
                Self::from_json(&$crate::seq2seq::config::read_text(path)?, path)
            }
        }
    };
}
pub(crate) use json_config;

/// The checks every encoder-decoder `config.json` needs: `dims` and the model's `other` sizes
/// are positive and `d_model` splits into both head counts.
pub(crate) fn check_dims(path: &Path, dims: Dims, other: &[(&str, usize)]) -> Result<()> {
    let bad = |reason: String| {
        Err(TeacherError::Config {
            path: path.to_path_buf(),
            reason,
        })
    };
    let heads = [
        ("encoder_attention_heads", dims.heads.0),
        ("decoder_attention_heads", dims.heads.1),
    ];
    let common = [("vocab_size", dims.vocab_size), ("d_model", dims.d_model)];
    for &(name, v) in common.iter().chain(&heads).chain(other) {
        if v == 0 {
            return bad(format!("{name} must be positive"));
        }
    }
    for (name, h) in heads {
        if !dims.d_model.is_multiple_of(h) {
            return bad(format!(
                "d_model {} is not divisible by {name} {h}",
                dims.d_model
            ));
        }
    }
    Ok(())
}
