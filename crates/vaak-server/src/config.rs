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
        }
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
}
