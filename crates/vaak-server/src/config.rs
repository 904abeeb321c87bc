//! `serve.toml`: every knob of the server, with defaults (`vaak serve --print-default-config`).

use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Result, ServeError};

/// The whole server configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// Address to bind; anything but a loopback address requires `api_key` and
    /// `allowed_origins`.
    pub host: String,
    /// Port; 0 picks a free one (tests).
    pub port: u16,
    /// `vaak-16k` (bundled) or a vaak codec export directory.
    pub codec: String,
    /// `bundled`, an S2S model export directory, or `none` (echo only).
    pub s2s: String,
    /// `cpu`, `cuda`, `cuda:N`.
    pub device: String,
    /// Concurrent sessions (model worker slots); past it a client gets ERROR `busy`.
    pub max_sessions: usize,
    pub security: SecurityConfig,
    pub limits: LimitsConfig,
    pub vad: VadConfig,
    pub generation: GenerationSettings,
    /// Turns of context kept in `converse` mode.
    pub context_turns: usize,
    /// How far reply audio is sent ahead of real time (the client's jitter buffer); the rest
    /// waits on the server, where a barge-in drops it.
    pub playout_lead_ms: u64,
    /// Pipeline mode (ASR → MT or LLM → voice-preserving TTS) instead of the S2S model.
    pub pipeline: PipelineConfig,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8998,
            codec: "vaak-16k".into(),
            s2s: "bundled".into(),
            device: "cpu".into(),
            max_sessions: 4,
            security: SecurityConfig::default(),
            limits: LimitsConfig::default(),
            vad: VadConfig::default(),
            generation: GenerationSettings::default(),
            context_turns: 10,
            playout_lead_ms: 240,
            pipeline: PipelineConfig::default(),
        }
    }
}

/// Which pipeline `vaak serve --pipeline` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PipelineMode {
    /// No pipeline: the S2S model (or echo) answers.
    #[default]
    Off,
    /// ASR → machine translation → TTS in the speaker's voice.
    Translate,
    /// ASR → an LLM over the OpenAI-compatible API (with the last turns as history) → TTS.
    Converse,
}

impl PipelineMode {
    pub fn name(self) -> &'static str {
        match self {
            PipelineMode::Off => "off",
            PipelineMode::Translate => "translate",
            PipelineMode::Converse => "converse",
        }
    }
}

impl std::str::FromStr for PipelineMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" | "none" => Ok(PipelineMode::Off),
            "translate" => Ok(PipelineMode::Translate),
            "converse" => Ok(PipelineMode::Converse),
            _ => Err(format!(
                "pipeline mode {s:?}: use translate, converse or off"
            )),
        }
    }
}

/// One model of the pipeline, with the cascade config's keys: an implementation `kind`, the
/// weights (a local directory or `hf://org/repo[@rev][/path]`), a pinned `revision`, and
/// kind-specific `options` (the cascade's, e.g. `num_beams` for `m2m100`, `dtype` for
/// `whisper`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineModel {
    /// Empty: the stage's default kind (`whisper` for `asr`, `m2m100` for `translator`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
    pub weights: Option<String>,
    pub revision: Option<String>,
    #[serde(skip_serializing_if = "toml::Table::is_empty")]
    pub options: toml::Table,
}

/// The LLM of `converse` (any OpenAI-compatible server: vLLM, llama.cpp, Ollama, OpenAI).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlmConfig {
    /// API root up to `/v1`, e.g. `http://127.0.0.1:11434/v1` (Ollama).
    pub base_url: Option<String>,
    /// Model name as the server knows it.
    pub model: Option<String>,
    /// Environment variable holding the API key (none sent when unset or empty).
    pub api_key_env: String,
    pub system_prompt: String,
    pub max_tokens: u32,
    pub temperature: f32,
    /// Connect and per-read timeout of the stream, in milliseconds.
    pub timeout_ms: u64,
    /// Previous turns (user + reply) sent as chat history.
    pub history_turns: usize,
}

impl Default for LlmConfig {
    fn default() -> Self {
        Self {
            base_url: None,
            model: None,
            api_key_env: "OPENAI_API_KEY".into(),
            system_prompt: "You are a helpful voice assistant. Your replies are spoken aloud: \
                            answer in short, plain sentences, without lists, markup or emoji."
                .into(),
            max_tokens: 256,
            temperature: 0.7,
            timeout_ms: 30_000,
            history_turns: 10,
        }
    }
}

/// Speech out: espeak-ng speaks, OpenVoice's tone-colour converter moves it to the user's
/// voice.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineTtsConfig {
    /// The OpenVoice V2 converter (`config.json` + `checkpoint.pth`): a directory or
    /// `hf://myshell-ai/OpenVoiceV2/converter`; `none` speaks with the plain espeak-ng voice.
    pub converter: Option<String>,
    /// espeak-ng voice per language (`en`, `ru`, `hi`, `te`), e.g. `en = "en-us+f3"`.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub voices: std::collections::BTreeMap<String, String>,
    /// espeak-ng speaking rate, words per minute.
    pub rate_wpm: u32,
    /// The converter's posterior noise scale.
    pub tau: f32,
    pub seed: u64,
    /// User speech needed before the reply takes the user's voice (before: the base voice).
    pub min_reference_s: f64,
    /// The most recent user speech the voice embedding is computed from.
    pub max_reference_s: f64,
}

impl Default for PipelineTtsConfig {
    fn default() -> Self {
        Self {
            converter: None,
            voices: Default::default(),
            rate_wpm: 175,
            tau: 0.3,
            seed: 0,
            min_reference_s: 1.0,
            max_reference_s: 10.0,
        }
    }
}

/// `[pipeline]`: the models of `vaak serve --pipeline translate|converse`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    pub mode: PipelineMode,
    /// The language users speak (Whisper is forced to it): `en`, `ru`, `hi`, `te`.
    pub source_lang: String,
    /// The language of the reply; unset in `converse`: the source language.
    pub target_lang: Option<String>,
    /// Speech recognition (`kind = "whisper"`).
    pub asr: PipelineModel,
    /// Translation (`translate`): `m2m100`, `nllb`, `marian` or `openai`.
    pub translator: PipelineModel,
    pub llm: LlmConfig,
    pub tts: PipelineTtsConfig,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            mode: PipelineMode::Off,
            source_lang: "en".into(),
            target_lang: None,
            asr: PipelineModel::default(),
            translator: PipelineModel::default(),
            llm: LlmConfig::default(),
            tts: PipelineTtsConfig::default(),
        }
    }
}

impl PipelineConfig {
    /// Whether a pipeline replaces the S2S model.
    pub fn enabled(&self) -> bool {
        self.mode != PipelineMode::Off
    }

    /// The language replies are spoken in.
    pub fn reply_lang(&self) -> Option<&str> {
        match (self.mode, &self.target_lang) {
            (_, Some(t)) => Some(t),
            (PipelineMode::Converse, None) => Some(&self.source_lang),
            _ => None,
        }
    }

    /// Checks that the mode has every model it needs; the error names the missing key.
    pub fn check_complete(&self) -> Result<()> {
        let missing = |key: &'static str, why: &str| {
            Err(ServeError::PipelineMissing {
                mode: self.mode.name(),
                key,
                why: why.to_string(),
            })
        };
        if !self.enabled() {
            return Ok(());
        }
        if self.asr.weights.as_deref().is_none_or(str::is_empty) {
            return missing(
                "pipeline.asr.weights",
                "the Whisper checkpoint (--asr), e.g. hf://openai/whisper-large-v3",
            );
        }
        if self.tts.converter.as_deref().is_none_or(str::is_empty) {
            return missing(
                "pipeline.tts.converter",
                "the OpenVoice converter (--tts-converter), e.g. \
                 hf://myshell-ai/OpenVoiceV2/converter, or `none` for the plain espeak-ng voice",
            );
        }
        match self.mode {
            PipelineMode::Translate => {
                if self.target_lang.as_deref().is_none_or(str::is_empty) {
                    return missing(
                        "pipeline.target_lang",
                        "the language to translate into (--target-lang)",
                    );
                }
                let t = &self.translator;
                if t.kind != "openai" && t.weights.as_deref().is_none_or(str::is_empty) {
                    return missing(
                        "pipeline.translator.weights",
                        "the translation model (--translator), e.g. hf://facebook/m2m100_1.2B",
                    );
                }
            }
            PipelineMode::Converse => {
                if self.llm.base_url.as_deref().is_none_or(str::is_empty) {
                    return missing(
                        "pipeline.llm.base_url",
                        "an OpenAI-compatible server (--llm-url), e.g. http://127.0.0.1:11434/v1",
                    );
                }
                if self.llm.model.as_deref().is_none_or(str::is_empty) {
                    return missing(
                        "pipeline.llm.model",
                        "the model name the server knows (--llm-model)",
                    );
                }
            }
            PipelineMode::Off => {}
        }
        Ok(())
    }
}

/// Authentication and origins.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// Key a client must give (`?api_key=`, `x-api-key:` or `Authorization: Bearer`).
    pub api_key: Option<String>,
    /// Origins (`scheme://host[:port]`) allowed to open `/ws`; empty: only same-host and
    /// loopback origins (or clients sending no Origin).
    pub allowed_origins: Vec<String>,
    /// Enforce the key and origin rules of a public bind even on loopback.
    pub require_auth: bool,
}

/// Limits; each gives its own ERROR code.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest frame a client may send (ERROR `too_large`).
    pub max_frame_bytes: usize,
    /// Messages per second from a client (ERROR `rate_limited`).
    pub max_messages_per_s: u32,
    /// Seconds without a message from the client (ERROR `idle_timeout`).
    pub idle_timeout_s: f64,
    /// Total session length (ERROR `session_timeout`).
    pub max_session_s: f64,
    /// Longest user turn, in seconds of audio; longer speech is ended as a turn.
    pub max_turn_s: f64,
    /// Longest reply (frames past it end the reply as `truncated`).
    pub max_reply_s: f64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: 16384,
            max_messages_per_s: 200,
            idle_timeout_s: 60.0,
            max_session_s: 3600.0,
            max_turn_s: 20.0,
            max_reply_s: 20.0,
        }
    }
}

/// Voice activity detection (earshot, 16 ms frames) and turn-taking.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VadConfig {
    /// Speech probability at or above which a 16 ms frame is speech.
    pub threshold: f32,
    /// Speech needed before a turn starts.
    pub min_speech_ms: u64,
    /// Silence after which the VAD reports "not speaking".
    pub min_silence_ms: u64,
    /// Audio before the detected speech start that still goes to the model.
    pub prefix_padding_ms: u64,
    /// Silence after the last speech frame before the turn ends (the endpoint), when the
    /// silence is clear (its last `min_silence_ms` all under half the threshold).
    pub min_endpointing_delay_ms: u64,
    /// The endpoint at the latest, when the silence is not clear.
    pub max_endpointing_delay_ms: u64,
    /// Speech during a reply that interrupts it (barge-in).
    pub min_interruption_ms: u64,
    /// A reply paused by user speech that did not become an interruption resumes at the
    /// latest after this long.
    pub false_interruption_resume_ms: u64,
}

impl Default for VadConfig {
    fn default() -> Self {
        Self {
            threshold: 0.5,
            min_speech_ms: 200,
            min_silence_ms: 300,
            prefix_padding_ms: 300,
            min_endpointing_delay_ms: 500,
            max_endpointing_delay_ms: 3000,
            min_interruption_ms: 500,
            false_interruption_resume_ms: 2000,
        }
    }
}

/// Sampling settings of the S2S decoder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenerationSettings {
    pub temperature: f64,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub seed: u64,
}

impl Default for GenerationSettings {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: Some(250),
            top_p: None,
            seed: 0,
        }
    }
}

/// `x > 0` and not NaN.
fn positive(x: f64) -> bool {
    x > 0.0
}

impl ServeConfig {
    /// Reads a TOML file; missing keys keep their defaults.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ServeError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            ServeError::Config(m) => ServeError::Config(format!("{}: {m}", path.display())),
            e => e,
        })
    }

    pub fn from_toml(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| ServeError::Config(e.to_string()))
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// Whether the bind address is a loopback one.
    pub fn is_loopback(&self) -> bool {
        self.host == "localhost"
            || self
                .host
                .parse::<IpAddr>()
                .map(|a| a.is_loopback())
                .unwrap_or(false)
    }

    /// Whether clients must give the key (a public bind, or `security.require_auth`).
    pub fn auth_required(&self) -> bool {
        self.security.require_auth || !self.is_loopback()
    }

    /// Checks values and the security rule: a public bind needs a key and an origin list.
    pub fn validate(&self) -> Result<()> {
        let bad = |k: &str, why: &str| Err(ServeError::Config(format!("{k}: {why}")));
        if self.max_sessions == 0 {
            return bad("max_sessions", "must be at least 1");
        }
        if !(self.vad.threshold > 0.0 && self.vad.threshold < 1.0) {
            return bad("vad.threshold", "must be in (0, 1)");
        }
        if self.vad.max_endpointing_delay_ms < self.vad.min_endpointing_delay_ms {
            return bad(
                "vad.max_endpointing_delay_ms",
                "must be at least vad.min_endpointing_delay_ms",
            );
        }
        let l = &self.limits;
        if l.max_frame_bytes < 64 {
            return bad("limits.max_frame_bytes", "must be at least 64");
        }
        if l.max_messages_per_s == 0 || !positive(l.idle_timeout_s) || !positive(l.max_session_s) {
            return bad(
                "limits",
                "max_messages_per_s, idle_timeout_s and max_session_s must be positive",
            );
        }
        if !positive(l.max_turn_s) || !positive(l.max_reply_s) {
            return bad("limits", "max_turn_s and max_reply_s must be positive");
        }
        self.pipeline.check_complete()?;
        if self.auth_required() {
            let key_ok = self
                .security
                .api_key
                .as_deref()
                .is_some_and(|k| !k.is_empty());
            if !key_ok || self.security.allowed_origins.is_empty() {
                return Err(ServeError::Insecure {
                    host: self.host.clone(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_round_trips_through_toml() {
        let c = ServeConfig::default();
        assert_eq!(ServeConfig::from_toml(&c.to_toml()).unwrap(), c);
        c.validate().unwrap();
    }

    #[test]
    fn file_keys_override_and_unknown_keys_are_named() {
        let c = ServeConfig::from_toml("port = 9000\n[vad]\nthreshold = 0.7\n").unwrap();
        assert_eq!(c.port, 9000);
        assert_eq!(c.vad.threshold, 0.7);
        assert_eq!(c.vad.min_speech_ms, 200);
        let e = ServeConfig::from_toml("[vad]\nthreshhold = 0.7\n").unwrap_err();
        assert!(e.to_string().contains("threshhold"), "{e}");
    }

    #[test]
    fn public_bind_needs_key_and_origins() {
        let mut c = ServeConfig {
            host: "0.0.0.0".into(),
            ..Default::default()
        };
        assert!(matches!(c.validate(), Err(ServeError::Insecure { .. })));
        c.security.api_key = Some("k".into());
        assert!(c.validate().is_err());
        c.security.allowed_origins = vec!["https://example.org".into()];
        c.validate().unwrap();
        let mut l = ServeConfig::default();
        assert!(!l.auth_required());
        l.security.require_auth = true;
        assert!(l.validate().is_err());
    }

    #[test]
    fn pipeline_section_parses_and_missing_keys_are_named() {
        let c = ServeConfig::from_toml(
            "[pipeline]\nmode = \"translate\"\ntarget_lang = \"ru\"\n\
             [pipeline.asr]\nweights = \"hf://openai/whisper-large-v3\"\n\
             [pipeline.translator]\nkind = \"m2m100\"\nweights = \"/m\"\noptions = { num_beams = 2 }\n",
        )
        .unwrap();
        assert_eq!(c.pipeline.mode, PipelineMode::Translate);
        assert_eq!(
            c.pipeline.translator.options["num_beams"].as_integer(),
            Some(2)
        );
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("pipeline.tts.converter"), "{e}");
        let mut c = c;
        c.pipeline.tts.converter = Some("none".into());
        c.validate().unwrap();
        assert_eq!(ServeConfig::from_toml(&c.to_toml()).unwrap(), c);
        c.pipeline.mode = PipelineMode::Converse;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("pipeline.llm.base_url"), "{e}");
        c.pipeline.llm.base_url = Some("http://127.0.0.1:1/v1".into());
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("pipeline.llm.model"));
        c.pipeline.llm.model = Some("m".into());
        c.validate().unwrap();
        assert_eq!(c.pipeline.reply_lang(), Some("ru"));
        c.pipeline.target_lang = None;
        assert_eq!(c.pipeline.reply_lang(), Some("en"));
        let e = ServeConfig::from_toml("[pipeline.llm]\nurl = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("url"), "{e}");
        assert_eq!(
            "Converse".parse::<PipelineMode>().unwrap(),
            PipelineMode::Converse
        );
        assert!("chat".parse::<PipelineMode>().is_err());
    }
}
