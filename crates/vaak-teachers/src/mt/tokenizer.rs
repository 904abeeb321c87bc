//! Tokenizers of the local MT teachers, loaded from the files each family publishes, with the
//! ids transformers puts in `input_ids` and the text `decode(ids, skip_special_tokens=True)`
//! returns.
//!
//! - **M2M-100** (`sentencepiece.bpe.model` + `vocab.json`): pieces from our SentencePiece
//!   port ([`super::spm`]), mapped to fairseq ids through `vocab.json` (pieces missing there
//!   become `<unk>`); the language tokens `__xx__` follow the vocabulary in fairseq's order
//!   (`language_codes`: `m2m100` or `wmt21`), as `M2M100Tokenizer` numbers them. Input:
//!   `__src__ pieces </s>`.
//! - **NLLB** (`tokenizer.json`): the `tokenizers` crate runs the published pipeline; we add
//!   `src_lang pieces </s>` (or `pieces </s> src_lang` with `legacy_behaviour`) ourselves, as
//!   `NllbTokenizer.set_src_lang_special_tokens` does, since the post-processor in the file is
//!   fixed to one language.
//! - **Marian** (`source.spm` + `target.spm` + `vocab.json`): source pieces mapped through
//!   `vocab.json`, then `</s>`; a leading `>>xx<<` target-language code is kept whole. Decoding
//!   uses the source model when the vocabulary is shared, as `MarianTokenizer` does.
//!
//! Like transformers' slow tokenizers, special-token strings inside the text (`</s>`,
//! `__ru__`) are split out and encoded as those tokens.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use vaak_nn::weights::{HubOptions, WeightLocation};

use super::spm::SentencePiece;
use crate::error::{Result, TeacherError};
use crate::lang::Lang;

/// Which family's conventions a tokenizer follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenizerKind {
    M2m100,
    Nllb,
    Marian,
}

impl TokenizerKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::M2m100 => "M2M-100",
            Self::Nllb => "NLLB",
            Self::Marian => "Marian",
        }
    }
}

/// fairseq's language order for `language_codes: "m2m100"`; ids follow the vocabulary in it.
const M2M100_CODES: &[&str] = &[
    "af", "am", "ar", "ast", "az", "ba", "be", "bg", "bn", "br", "bs", "ca", "ceb", "cs", "cy",
    "da", "de", "el", "en", "es", "et", "fa", "ff", "fi", "fr", "fy", "ga", "gd", "gl", "gu", "ha",
    "he", "hi", "hr", "ht", "hu", "hy", "id", "ig", "ilo", "is", "it", "ja", "jv", "ka", "kk",
    "km", "kn", "ko", "lb", "lg", "ln", "lo", "lt", "lv", "mg", "mk", "ml", "mn", "mr", "ms", "my",
    "ne", "nl", "no", "ns", "oc", "or", "pa", "pl", "ps", "pt", "ro", "ru", "sd", "si", "sk", "sl",
    "so", "sq", "sr", "ss", "su", "sv", "sw", "ta", "th", "tl", "tn", "tr", "uk", "ur", "uz", "vi",
    "wo", "xh", "yi", "yo", "zh", "zu",
];
/// The same for `language_codes: "wmt21"`.
const WMT21_CODES: &[&str] = &["en", "ha", "is", "ja", "cs", "ru", "zh", "de"];

/// What `tokenizer_config.json` says that matters here (all optional).
#[derive(Debug, Default, serde::Deserialize)]
struct TokenizerConfig {
    tokenizer_class: Option<String>,
    language_codes: Option<String>,
    legacy_behaviour: Option<bool>,
    clean_up_tokenization_spaces: Option<bool>,
    clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output: Option<bool>,
    separate_vocabs: Option<bool>,
    source_lang: Option<String>,
    target_lang: Option<String>,
    bos_token: Option<serde_json::Value>,
    eos_token: Option<serde_json::Value>,
    unk_token: Option<serde_json::Value>,
    pad_token: Option<serde_json::Value>,
}

/// A special token spelled as a string or as an `AddedToken` object.
fn token_name(v: &Option<serde_json::Value>, default: &str) -> String {
    match v {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Object(o)) => o
            .get("content")
            .and_then(|c| c.as_str())
            .unwrap_or(default)
            .to_string(),
        _ => default.to_string(),
    }
}

/// The SentencePiece-based families (M2M-100, Marian).
struct SpmTok {
    source: SentencePiece,
    /// Decodes; the source model unless Marian's vocabularies are separate.
    decode_spm: SentencePiece,
    vocab: HashMap<String, u32>,
    /// id -> piece for decoding (Marian's `target_vocab.json` when separate).
    decoder: HashMap<u32, String>,
    /// `__xx__` language tokens (M2M-100) as `(code, id)`.
    langs: Vec<(String, u32)>,
    /// Special-token strings split out of the text before SentencePiece, longest first.
    split_tokens: Vec<(String, u32)>,
    special_ids: HashSet<u32>,
    unk_token: String,
    /// `source_lang` / `target_lang` from the config when they parse as a vaak [`Lang`]
    /// (Marian).
    source_lang: Option<Lang>,
    target_lang: Option<Lang>,
}

enum Backend {
    Spm(Box<SpmTok>),
    Hf {
        inner: Box<tokenizers::Tokenizer>,
        legacy: bool,
    },
}

/// An MT tokenizer (M2M-100, NLLB or Marian), loaded as published.
pub struct MtTokenizer {
    kind: TokenizerKind,
    backend: Backend,
    location: String,
    pad: u32,
    eos: u32,
    bos: u32,
    unk: u32,
    vocab_size: usize,
    clean_up: bool,
}

fn cfg_err(path: &Path, reason: impl Into<String>) -> TeacherError {
    TeacherError::Config {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The local path of `name` at `loc`, or None when the file is not there (or not cached).
fn optional(loc: &WeightLocation, name: &str, hub: &HubOptions) -> Result<Option<PathBuf>> {
    match loc.join(name).resolve_file(hub) {
        Ok(p) => Ok(Some(p)),
        Err(vaak_nn::Error::MissingFile { .. })
        | Err(vaak_nn::Error::HubFileNotCached { .. })
        | Err(vaak_nn::Error::HubDownload { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn required(loc: &WeightLocation, name: &str, hub: &HubOptions, what: &str) -> Result<PathBuf> {
    loc.join(name).resolve_file(hub).map_err(|e| match e {
        vaak_nn::Error::MissingFile { path } => cfg_err(
            &path,
            format!("missing (the {what} tokenizer needs {name})"),
        ),
        other => other.into(),
    })
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).map_err(|e| cfg_err(path, format!("cannot read: {e}")))?;
    serde_json::from_str(&text).map_err(|e| cfg_err(path, format!("invalid JSON: {e}")))
}

fn read_vocab(path: &Path) -> Result<HashMap<String, u32>> {
    let v: HashMap<String, u32> = read_json(path)?;
    if v.is_empty() {
        return Err(cfg_err(path, "empty vocabulary"));
    }
    Ok(v)
}

fn lookup(vocab: &HashMap<String, u32>, token: &str, path: &Path) -> Result<u32> {
    vocab.get(token).copied().ok_or_else(|| {
        cfg_err(
            path,
            format!("special token {token} is not in the vocabulary"),
        )
    })
}

/// Python's `str.strip()` (Rust's `trim` misses the ASCII separators 0x1C..0x1F).
fn py_strip(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

/// transformers' `clean_up_tokenization`.
fn clean_up_tokenization(s: &str) -> String {
    s.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}

/// Splits text after sentence-ending punctuation (`. ! ? । ॥ …`) followed by whitespace, and
/// at newlines; pieces are trimmed and blanks dropped (`3.14` stays whole).
pub fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut prev_end = false;
    for (i, c) in text.char_indices() {
        if c == '\n' || (prev_end && c.is_whitespace()) {
            let s = text[start..i].trim();
            if !s.is_empty() {
                out.push(s);
            }
            start = i + c.len_utf8();
        }
        prev_end = matches!(c, '.' | '!' | '?' | '।' | '॥' | '…');
    }
    let s = text[start..].trim();
    if !s.is_empty() {
        out.push(s);
    }
    out
}

impl MtTokenizer {
    /// Loads from a model directory or `hf://org/repo[@rev]`, detecting the family from
    /// `tokenizer_config.json`'s `tokenizer_class`, else from the files present.
    pub fn load(loc: &WeightLocation, hub: &HubOptions) -> Result<Self> {
        let cfg_path = optional(loc, "tokenizer_config.json", hub)?;
        let cfg: TokenizerConfig = match &cfg_path {
            Some(p) => read_json(p)?,
            None => TokenizerConfig::default(),
        };
        let class = cfg
            .tokenizer_class
            .clone()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let kind = if class.starts_with("nllb") {
            TokenizerKind::Nllb
        } else if class.starts_with("m2m100") {
            TokenizerKind::M2m100
        } else if class.starts_with("marian") || optional(loc, "source.spm", hub)?.is_some() {
            TokenizerKind::Marian
        } else if optional(loc, "sentencepiece.bpe.model", hub)?.is_some()
            && optional(loc, "vocab.json", hub)?.is_some()
        {
            TokenizerKind::M2m100
        } else if optional(loc, "tokenizer.json", hub)?.is_some() {
            TokenizerKind::Nllb
        } else {
            return Err(TeacherError::Config {
                path: PathBuf::from(loc.to_string()),
                reason: "no MT tokenizer found: expected source.spm + target.spm + vocab.json \
                         (Marian), sentencepiece.bpe.model + vocab.json (M2M-100) or \
                         tokenizer.json (NLLB)"
                    .into(),
            });
        };
        let mut tok = match kind {
            TokenizerKind::Nllb => Self::load_nllb(loc, hub, &cfg)?,
            TokenizerKind::M2m100 => Self::load_m2m100(loc, hub, &cfg)?,
            TokenizerKind::Marian => Self::load_marian(loc, hub, &cfg)?,
        };
        tok.location = loc.to_string();
        Ok(tok)
    }

    fn load_nllb(loc: &WeightLocation, hub: &HubOptions, cfg: &TokenizerConfig) -> Result<Self> {
        let path = required(loc, "tokenizer.json", hub, "NLLB")?;
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| cfg_err(&path, format!("cannot load tokenizer: {e}")))?;
        let need = |name: String| {
            inner
                .token_to_id(&name)
                .ok_or_else(|| cfg_err(&path, format!("special token {name} is missing")))
        };
        let bos = need(token_name(&cfg.bos_token, "<s>"))?;
        let eos = need(token_name(&cfg.eos_token, "</s>"))?;
        let unk = need(token_name(&cfg.unk_token, "<unk>"))?;
        let pad = need(token_name(&cfg.pad_token, "<pad>"))?;
        // transformers skips the clean-up for BPE models unless forced.
        let clean_up = cfg.clean_up_tokenization_spaces.unwrap_or(false)
            && cfg
                .clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output
                .unwrap_or(false);
        Ok(Self {
            kind: TokenizerKind::Nllb,
            vocab_size: inner.get_vocab_size(true),
            backend: Backend::Hf {
                inner: Box::new(inner),
                legacy: cfg.legacy_behaviour.unwrap_or(false),
            },
            location: String::new(),
            pad,
            eos,
            bos,
            unk,
            clean_up,
        })
    }

    fn load_m2m100(loc: &WeightLocation, hub: &HubOptions, cfg: &TokenizerConfig) -> Result<Self> {
        let spm_path = required(loc, "sentencepiece.bpe.model", hub, "M2M-100")?;
        let vocab_path = required(loc, "vocab.json", hub, "M2M-100")?;
        let sp = SentencePiece::from_file(&spm_path)?;
        let vocab = read_vocab(&vocab_path)?;
        let codes = match cfg.language_codes.as_deref().unwrap_or("m2m100") {
            "m2m100" => M2M100_CODES,
            "wmt21" => WMT21_CODES,
            other => {
                return Err(cfg_err(
                    &PathBuf::from(loc.join("tokenizer_config.json").to_string()),
                    format!("unknown language_codes {other:?} (expected m2m100 or wmt21)"),
                ))
            }
        };
        let base = vocab.len() as u32;
        let langs: Vec<(String, u32)> = codes
            .iter()
            .enumerate()
            .map(|(i, c)| (c.to_string(), base + i as u32))
            .collect();
        let names = [
            token_name(&cfg.bos_token, "<s>"),
            token_name(&cfg.eos_token, "</s>"),
            token_name(&cfg.unk_token, "<unk>"),
            token_name(&cfg.pad_token, "<pad>"),
        ];
        let [bos, eos, unk, pad] = [0, 1, 2, 3].map(|i| lookup(&vocab, &names[i], &vocab_path));
        let (bos, eos, unk, pad) = (bos?, eos?, unk?, pad?);
        let mut split_tokens: Vec<(String, u32)> = names
            .iter()
            .cloned()
            .zip([bos, eos, unk, pad])
            .chain(langs.iter().map(|(c, id)| (format!("__{c}__"), *id)))
            .collect();
        split_tokens.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        let special_ids = split_tokens.iter().map(|&(_, id)| id).collect();
        let decoder = vocab.iter().map(|(k, &v)| (v, k.clone())).collect();
        let vocab_size = vocab.len() + langs.len();
        Ok(Self {
            kind: TokenizerKind::M2m100,
            backend: Backend::Spm(Box::new(SpmTok {
                decode_spm: sp.clone(),
                source: sp,
                vocab,
                decoder,
                langs,
                split_tokens,
                special_ids,
                unk_token: names[2].clone(),
                source_lang: None,
                target_lang: None,
            })),
            location: String::new(),
            pad,
            eos,
            bos,
            unk,
            vocab_size,
            clean_up: cfg.clean_up_tokenization_spaces.unwrap_or(false),
        })
    }

    fn load_marian(loc: &WeightLocation, hub: &HubOptions, cfg: &TokenizerConfig) -> Result<Self> {
        let src_path = required(loc, "source.spm", hub, "Marian")?;
        let tgt_path = required(loc, "target.spm", hub, "Marian")?;
        let vocab_path = required(loc, "vocab.json", hub, "Marian")?;
        let source = SentencePiece::from_file(&src_path)?;
        let target = SentencePiece::from_file(&tgt_path)?;
        let vocab = read_vocab(&vocab_path)?;
        let separate = cfg.separate_vocabs.unwrap_or(false);
        let (decoder_vocab, decode_spm) = if separate {
            let p = required(loc, "target_vocab.json", hub, "Marian (separate_vocabs)")?;
            (read_vocab(&p)?, target)
        } else {
            (vocab.clone(), source.clone())
        };
        let names = [
            token_name(&cfg.eos_token, "</s>"),
            token_name(&cfg.unk_token, "<unk>"),
            token_name(&cfg.pad_token, "<pad>"),
        ];
        let eos = lookup(&vocab, &names[0], &vocab_path)?;
        let unk = lookup(&vocab, &names[1], &vocab_path)?;
        let pad = lookup(&vocab, &names[2], &vocab_path)?;
        let mut split_tokens: Vec<(String, u32)> =
            names.iter().cloned().zip([eos, unk, pad]).collect();
        split_tokens.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        let special_ids = [eos, unk, pad].into_iter().collect();
        let vocab_size = vocab.len();
        Ok(Self {
            kind: TokenizerKind::Marian,
            backend: Backend::Spm(Box::new(SpmTok {
                source,
                decode_spm,
                decoder: decoder_vocab.iter().map(|(k, &v)| (v, k.clone())).collect(),
                vocab,
                langs: Vec::new(),
                split_tokens,
                special_ids,
                unk_token: names[1].clone(),
                source_lang: cfg.source_lang.as_deref().and_then(|s| s.parse().ok()),
                target_lang: cfg.target_lang.as_deref().and_then(|s| s.parse().ok()),
            })),
            location: String::new(),
            pad,
            eos,
            // Marian has no <s>: generation starts from <pad>.
            bos: pad,
            unk,
            vocab_size,
            clean_up: cfg.clean_up_tokenization_spaces.unwrap_or(false),
        })
    }

    pub fn kind(&self) -> TokenizerKind {
        self.kind
    }

    fn unsupported(&self, lang: Lang, supported: Vec<&str>) -> TeacherError {
        TeacherError::UnsupportedLanguage {
            code: lang.code().to_string(),
            what: format!("{} tokenizer {}", self.kind.name(), self.location),
            supported: if supported.is_empty() {
                "none".into()
            } else {
                supported.join(", ")
            },
        }
    }

    /// Marian's `(source_lang, target_lang)` from `tokenizer_config.json`, where they name a
    /// vaak language; `(None, None)` for the multilingual families.
    pub fn config_languages(&self) -> (Option<Lang>, Option<Lang>) {
        match &self.backend {
            Backend::Spm(s) => (s.source_lang, s.target_lang),
            Backend::Hf { .. } => (None, None),
        }
    }

    /// The language token: `__ru__` (M2M-100) or `rus_Cyrl` (NLLB). Marian models are one
    /// language pair each and have none.
    pub fn lang_token_id(&self, lang: Lang) -> Result<u32> {
        match &self.backend {
            Backend::Spm(s) if self.kind == TokenizerKind::M2m100 => {
                let find = |l: Lang| {
                    s.langs
                        .iter()
                        .find(|(c, _)| c == l.code())
                        .map(|&(_, id)| id)
                };
                find(lang).ok_or_else(|| {
                    let ok = Lang::ALL
                        .into_iter()
                        .filter(|&l| find(l).is_some())
                        .map(Lang::code);
                    self.unsupported(lang, ok.collect())
                })
            }
            Backend::Hf { inner, .. } => {
                let find = |l: Lang| inner.token_to_id(l.nllb_code());
                find(lang).ok_or_else(|| {
                    let ok = Lang::ALL
                        .into_iter()
                        .filter(|&l| find(l).is_some())
                        .map(Lang::nllb_code);
                    self.unsupported(lang, ok.collect())
                })
            }
            Backend::Spm(_) => Err(TeacherError::BadInput(format!(
                "{} tokenizer {} has no language tokens (one Marian model serves one language \
                 pair)",
                self.kind.name(),
                self.location
            ))),
        }
    }
    /// The source ids of `text`; when they exceed `max` tokens, its sentences (see
    /// [`sentences`]) packed greedily into pieces of at most `max` tokens, each translated on
    /// its own. A single sentence longer than `max` is a [`TeacherError::BadInput`].
    pub fn encode_source_packed(&self, text: &str, src: Lang, max: usize) -> Result<Vec<Vec<u32>>> {
        let whole = self.encode_source(text, src)?;
        if whole.len() <= max {
            return Ok(vec![whole]);
        }
        let mut out = Vec::new();
        let mut cur = String::new();
        let mut cur_ids: Option<Vec<u32>> = None;
        for s in sentences(text) {
            let joined = if cur.is_empty() {
                s.to_string()
            } else {
                format!("{cur} {s}")
            };
            let ids = self.encode_source(&joined, src)?;
            if ids.len() <= max {
                cur = joined;
                cur_ids = Some(ids);
                continue;
            }
            out.extend(cur_ids.take());
            let alone = self.encode_source(s, src)?;
            if alone.len() > max {
                let head: String = s.chars().take(40).collect();
                return Err(TeacherError::BadInput(format!(
                    "a sentence of {} tokens exceeds the model's {max} positions \
                     (max_position_embeddings) and has no sentence boundary to split at: \
                     {head:?}...",
                    alone.len()
                )));
            }
            cur = s.to_string();
            cur_ids = Some(alone);
        }
        out.extend(cur_ids);
        Ok(out)
    }

    /// The model's `input_ids` for `text` in `src`, as transformers builds them.
    pub fn encode_source(&self, text: &str, src: Lang) -> Result<Vec<u32>> {
        match &self.backend {
            Backend::Hf { inner, legacy } => {
                let lang = self.lang_token_id(src)?;
                let enc = inner.encode(text, false).map_err(|e| {
                    TeacherError::BadInput(format!("cannot tokenize {text:?}: {e}"))
                })?;
                let mut ids = Vec::with_capacity(enc.len() + 2);
                if !legacy {
                    ids.push(lang);
                }
                ids.extend_from_slice(enc.get_ids());
                ids.push(self.eos);
                if *legacy {
                    ids.push(lang);
                }
                Ok(ids)
            }
            Backend::Spm(s) => {
                let mut ids = Vec::new();
                if self.kind == TokenizerKind::M2m100 {
                    ids.push(self.lang_token_id(src)?);
                } else if let Some(l) = s.source_lang.filter(|&l| l != src) {
                    return Err(self.unsupported(src, vec![l.code()]));
                }
                self.encode_pieces_into(s, text, &mut ids);
                ids.push(self.eos);
                Ok(ids)
            }
        }
    }

    /// Splits special-token strings out of `text`, then encodes each remaining chunk.
    fn encode_pieces_into(&self, s: &SpmTok, text: &str, ids: &mut Vec<u32>) {
        let mut chunk_start = 0;
        let mut i = 0;
        while i < text.len() {
            if let Some((tok, id)) = s
                .split_tokens
                .iter()
                .find(|(t, _)| text[i..].starts_with(t.as_str()))
            {
                self.encode_chunk(s, &text[chunk_start..i], ids);
                ids.push(*id);
                i += tok.len();
                chunk_start = i;
            } else {
                i += text[i..].chars().next().map_or(1, char::len_utf8);
            }
        }
        self.encode_chunk(s, &text[chunk_start..], ids);
    }

    fn encode_chunk(&self, s: &SpmTok, mut chunk: &str, ids: &mut Vec<u32>) {
        if chunk.is_empty() {
            return;
        }
        let to_id = |p: &str| s.vocab.get(p).copied().unwrap_or(self.unk);
        if self.kind == TokenizerKind::Marian && chunk.starts_with(">>") {
            // MarianTokenizer.remove_language_code: a `>>xx<<` prefix is one token.
            if let Some(end) = chunk.find("<<") {
                ids.push(to_id(&chunk[..end + 2]));
                chunk = &chunk[end + 2..];
            }
        }
        ids.extend(s.source.encode(chunk).iter().map(|p| to_id(p)));
    }

    /// The text of `ids` without special tokens, as `decode(ids, skip_special_tokens=True)`.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let text = match &self.backend {
            Backend::Hf { inner, .. } => inner
                .decode(ids, true)
                .map_err(|e| TeacherError::BadInput(format!("cannot decode {ids:?}: {e}")))?,
            Backend::Spm(s) => {
                let pieces: Vec<&str> = ids
                    .iter()
                    .filter(|id| !s.special_ids.contains(id))
                    .map(|id| self.id_to_piece(s, *id))
                    .collect();
                let text = s.decode_spm.decode_pieces(&pieces);
                let text = if self.kind == TokenizerKind::Marian {
                    text.replace(super::spm::SPACE_SYMBOL, " ")
                } else {
                    text
                };
                py_strip(&text).to_string()
            }
        };
        Ok(if self.clean_up {
            clean_up_tokenization(&text)
        } else {
            text
        })
    }

    fn id_to_piece<'a>(&'a self, s: &'a SpmTok, id: u32) -> &'a str {
        if let Some(p) = s.decoder.get(&id) {
            return p;
        }
        if self.kind == TokenizerKind::Marian {
            // MarianTokenizer falls back to the spm's own piece of that id.
            if let Some(p) = s.decode_spm.id_to_piece(id) {
                return p;
            }
        }
        &s.unk_token
    }

    /// The id of a token string, if the tokenizer knows it.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        match &self.backend {
            Backend::Hf { inner, .. } => inner.token_to_id(token),
            Backend::Spm(s) => s.vocab.get(token).copied().or_else(|| {
                let code = token.strip_prefix("__")?.strip_suffix("__")?;
                s.langs.iter().find(|(c, _)| c == code).map(|&(_, id)| id)
            }),
        }
    }

    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// `<s>`; Marian has none and returns its decoder start token, `<pad>`.
    pub fn bos_id(&self) -> u32 {
        self.bos
    }

    pub fn unk_id(&self) -> u32 {
        self.unk
    }

    /// One past the largest id the tokenizer produces: `vocab.json` plus the language tokens
    /// (M2M-100), all tokens with added ones (NLLB), `vocab.json` (Marian). Published models'
    /// embedding tables can be larger (M2M-100's made-up words).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }
}

#[cfg(test)]
mod tests {
    use super::sentences;

    #[test]
    fn sentence_split_keeps_punctuation_and_skips_blanks() {
        assert_eq!(
            sentences("Hi there. How are you?  Fine!\nNext line"),
            vec!["Hi there.", "How are you?", "Fine!", "Next line"]
        );
        assert_eq!(sentences("नमस्ते। ठीक है"), vec!["नमस्ते।", "ठीक है"]);
        assert_eq!(sentences("3.14 is pi"), vec!["3.14 is pi"]);
        assert!(sentences(" \n ").is_empty());
    }
}
