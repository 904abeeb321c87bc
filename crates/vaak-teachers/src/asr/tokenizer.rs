//! Whisper's tokenizer: the published `tokenizer.json` through the `tokenizers` crate, with the
//! special tokens looked up by name (ids differ between Whisper generations, e.g. large-v3
//! added `<|yue|>` and shifted everything after it).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::error::{Result, TeacherError};
use crate::lang::Lang;

/// Whisper's tokenizer and the special token ids decoding needs.
pub struct WhisperTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    pub sot: u32,
    pub eot: u32,
    pub transcribe: Option<u32>,
    pub translate: Option<u32>,
    pub no_timestamps: u32,
    /// `<|nospeech|>`, or `<|nocaptions|>` in the first multilingual releases.
    pub no_speech: Option<u32>,
    /// `(code, id)` of every `<|xx|>` language token, by id.
    languages: Vec<(String, u32)>,
    special: HashSet<u32>,
}

/// `<|xx|>` or `<|xxx|>` with lowercase ASCII letters: Whisper's language tokens. Every other
/// special token name is longer, and timestamps hold digits.
fn language_code(token: &str) -> Option<&str> {
    let code = token.strip_prefix("<|")?.strip_suffix("|>")?;
    ((2..=3).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_lowercase())).then_some(code)
}

impl WhisperTokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let cfg_err = |reason: String| TeacherError::Config {
            path: path.to_path_buf(),
            reason,
        };
        if !path.is_file() {
            return Err(cfg_err("missing (Whisper needs tokenizer.json)".into()));
        }
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| cfg_err(format!("cannot load tokenizer: {e}")))?;
        let need = |name: &str| {
            inner
                .token_to_id(name)
                .ok_or_else(|| cfg_err(format!("special token {name} is missing")))
        };
        let sot = need("<|startoftranscript|>")?;
        let eot = need("<|endoftext|>")?;
        let no_timestamps = need("<|notimestamps|>")?;
        let no_speech = inner
            .token_to_id("<|nospeech|>")
            .or_else(|| inner.token_to_id("<|nocaptions|>"));
        let added = inner.get_added_tokens_decoder();
        let mut languages: Vec<(String, u32)> = added
            .iter()
            .filter_map(|(&id, t)| language_code(&t.content).map(|c| (c.to_string(), id)))
            .collect();
        languages.sort_by_key(|&(_, id)| id);
        let special = added
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(&id, _)| id)
            .collect();
        let transcribe = inner.token_to_id("<|transcribe|>");
        if !languages.is_empty() && transcribe.is_none() {
            return Err(cfg_err(
                "multilingual tokenizer without <|transcribe|>".into(),
            ));
        }
        Ok(Self {
            translate: inner.token_to_id("<|translate|>"),
            inner,
            path: path.to_path_buf(),
            sot,
            eot,
            transcribe,
            no_timestamps,
            no_speech,
            languages,
            special,
        })
    }

    /// Whether the tokenizer has language tokens (English-only models have none).
    pub fn is_multilingual(&self) -> bool {
        !self.languages.is_empty()
    }

    /// `(code, id)` of every language token.
    pub fn languages(&self) -> &[(String, u32)] {
        &self.languages
    }

    /// The language token of `code`, if the tokenizer has one.
    pub fn language_token(&self, code: &str) -> Option<u32> {
        self.languages
            .iter()
            .find(|(c, _)| c == code)
            .map(|&(_, id)| id)
    }

    /// The code of a language token id.
    pub fn language_of(&self, id: u32) -> Option<&str> {
        self.languages
            .iter()
            .find(|&&(_, i)| i == id)
            .map(|(c, _)| c.as_str())
    }

    /// The prompt that forces `lang` (None: the language is detected later). English-only
    /// models take `<|startoftranscript|><|notimestamps|>` and accept only English.
    pub fn check_language(&self, lang: Lang) -> Result<Option<u32>> {
        if !self.is_multilingual() {
            return if lang == Lang::En {
                Ok(None)
            } else {
                Err(self.unsupported(lang))
            };
        }
        self.language_token(lang.code())
            .map(Some)
            .ok_or_else(|| self.unsupported(lang))
    }

    fn unsupported(&self, lang: Lang) -> TeacherError {
        let supported: Vec<&str> = Lang::ALL
            .iter()
            .filter(|l| {
                if self.is_multilingual() {
                    self.language_token(l.code()).is_some()
                } else {
                    **l == Lang::En
                }
            })
            .map(|l| l.code())
            .collect();
        TeacherError::UnsupportedLanguage {
            code: lang.code().to_string(),
            what: format!("Whisper tokenizer {}", self.path.display()),
            supported: supported.join(", "),
        }
    }

    /// Text tokens of `text` (no special tokens added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| TeacherError::Msg(format!("tokenizing {text:?}: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The text of generated ids, without special or timestamp tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let text_ids: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|id| !self.special.contains(id) && *id <= self.no_timestamps)
            .collect();
        self.inner
            .decode(&text_ids, true)
            .map_err(|e| TeacherError::Msg(format!("detokenizing: {e}")))
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}
