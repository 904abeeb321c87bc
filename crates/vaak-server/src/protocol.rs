//! Wire protocol v1 (`docs/protocol.md`): every WebSocket message is one binary frame with a
//! 14-byte header (version, type, seq, t_us) and a payload (JSON for control-like types, a turn
//! number and PCM16 samples for audio).

use serde::{Deserialize, Serialize};

/// The only protocol version this server speaks.
pub const VERSION: u8 = 1;
/// Header bytes before the payload.
pub const HEADER_LEN: usize = 14;

/// Why a frame could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("frame of {len} bytes is shorter than the {HEADER_LEN}-byte header")]
    Short { len: usize },
    #[error("protocol version {got} is not supported (this server speaks version {VERSION})")]
    BadVersion { got: u8 },
    #[error("unknown message type 0x{got:02x}")]
    UnknownType { got: u8 },
    #[error("{kind:?} payload: {reason}")]
    BadPayload { kind: MsgType, reason: String },
}

impl ProtocolError {
    /// The ERROR code a client is sent for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtocolError::BadVersion { .. } => ErrorCode::BadVersion,
            ProtocolError::Short { .. } | ProtocolError::UnknownType { .. } => ErrorCode::BadFrame,
            ProtocolError::BadPayload { .. } => ErrorCode::BadRequest,
        }
    }
}

/// The one-byte message type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MsgType {
    Hello = 0x01,
    Welcome = 0x02,
    Audio = 0x10,
    Control = 0x20,
    Meta = 0x30,
    Error = 0x40,
    Ping = 0x50,
    Pong = 0x51,
}

impl MsgType {
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0x01 => MsgType::Hello,
            0x02 => MsgType::Welcome,
            0x10 => MsgType::Audio,
            0x20 => MsgType::Control,
            0x30 => MsgType::Meta,
            0x40 => MsgType::Error,
            0x50 => MsgType::Ping,
            0x51 => MsgType::Pong,
            _ => return None,
        })
    }
}

/// One decoded frame: header fields and the raw payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: MsgType,
    pub seq: u32,
    pub t_us: u64,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn new(kind: MsgType, seq: u32, t_us: u64, payload: Vec<u8>) -> Self {
        Self {
            kind,
            seq,
            t_us,
            payload,
        }
    }

    /// A frame with a JSON payload.
    pub fn json<T: Serialize>(kind: MsgType, seq: u32, t_us: u64, value: &T) -> Self {
        // Serializing our own plain structs cannot fail.
        let payload = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
        Self::new(kind, seq, t_us, payload)
    }

    /// An AUDIO frame: `turn` then PCM16 LE samples.
    pub fn audio(seq: u32, t_us: u64, turn: u32, samples: &[i16]) -> Self {
        let mut p = Vec::with_capacity(4 + samples.len() * 2);
        p.extend_from_slice(&turn.to_le_bytes());
        for s in samples {
            p.extend_from_slice(&s.to_le_bytes());
        }
        Self::new(MsgType::Audio, seq, t_us, p)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_LEN + self.payload.len());
        b.push(VERSION);
        b.push(self.kind as u8);
        b.extend_from_slice(&self.seq.to_le_bytes());
        b.extend_from_slice(&self.t_us.to_le_bytes());
        b.extend_from_slice(&self.payload);
        b
    }

    /// Decodes the header; the payload is kept as bytes (see [`Frame::parse_audio`],
    /// [`Frame::parse_json`]).
    pub fn decode(bytes: &[u8]) -> Result<Self, ProtocolError> {
        if bytes.len() < HEADER_LEN {
            // A wrong version is reported as such even on a short frame.
            if let Some(&v) = bytes.first() {
                if v != VERSION {
                    return Err(ProtocolError::BadVersion { got: v });
                }
            }
            return Err(ProtocolError::Short { len: bytes.len() });
        }
        if bytes[0] != VERSION {
            return Err(ProtocolError::BadVersion { got: bytes[0] });
        }
        let kind =
            MsgType::from_u8(bytes[1]).ok_or(ProtocolError::UnknownType { got: bytes[1] })?;
        let seq = u32::from_le_bytes(bytes[2..6].try_into().expect("4 bytes"));
        let t_us = u64::from_le_bytes(bytes[6..14].try_into().expect("8 bytes"));
        Ok(Self::new(kind, seq, t_us, bytes[HEADER_LEN..].to_vec()))
    }

    /// The turn and samples of an AUDIO payload.
    pub fn parse_audio(&self) -> Result<(u32, Vec<i16>), ProtocolError> {
        let bad = |reason: String| ProtocolError::BadPayload {
            kind: MsgType::Audio,
            reason,
        };
        if self.payload.len() < 4 {
            return Err(bad(format!(
                "{} bytes, need at least the 4-byte turn",
                self.payload.len()
            )));
        }
        let pcm = &self.payload[4..];
        if !pcm.len().is_multiple_of(2) {
            return Err(bad(format!("odd PCM16 byte count {}", pcm.len())));
        }
        let turn = u32::from_le_bytes(self.payload[..4].try_into().expect("4 bytes"));
        let samples = pcm
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect();
        Ok((turn, samples))
    }

    /// A JSON payload as `T`.
    pub fn parse_json<T: for<'de> Deserialize<'de>>(&self) -> Result<T, ProtocolError> {
        serde_json::from_slice(&self.payload).map_err(|e| ProtocolError::BadPayload {
            kind: self.kind,
            reason: e.to_string(),
        })
    }
}

/// Session modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Echo,
    Translate,
    Converse,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Echo, Mode::Translate, Mode::Converse];
    pub fn name(self) -> &'static str {
        match self {
            Mode::Echo => "echo",
            Mode::Translate => "translate",
            Mode::Converse => "converse",
        }
    }
}

/// When the reply starts: after the end of the user's turn, or while the user speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TurnMode {
    #[default]
    Turn,
    Stream,
}

impl TurnMode {
    pub const ALL: [TurnMode; 2] = [TurnMode::Turn, TurnMode::Stream];
    pub fn name(self) -> &'static str {
        match self {
            TurnMode::Turn => "turn",
            TurnMode::Stream => "stream",
        }
    }
}

fn default_audio() -> String {
    "pcm16".into()
}
fn default_rate() -> u32 {
    16000
}
fn default_emotion() -> String {
    "neutral".into()
}
fn default_lang() -> String {
    "en".into()
}

/// HELLO payload (c→s, the first frame).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub turn_mode: TurnMode,
    #[serde(default = "default_audio")]
    pub audio: String,
    #[serde(default = "default_rate")]
    pub sample_rate: u32,
    #[serde(default)]
    pub voice: Option<String>,
    #[serde(default = "default_emotion")]
    pub emotion: String,
    #[serde(default = "default_lang")]
    pub lang: String,
}

impl Default for Hello {
    fn default() -> Self {
        Self {
            mode: Mode::Echo,
            turn_mode: TurnMode::Turn,
            audio: default_audio(),
            sample_rate: default_rate(),
            voice: None,
            emotion: default_emotion(),
            lang: default_lang(),
        }
    }
}

/// Limits announced in WELCOME.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WelcomeLimits {
    pub max_frame_bytes: usize,
    pub max_session_s: f64,
    pub idle_timeout_s: f64,
    pub max_messages_per_s: u32,
}

/// WELCOME payload (s→c).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    pub protocol: u8,
    pub session: String,
    pub sample_rate: u32,
    pub frame_samples: usize,
    pub modes: Vec<String>,
    pub turn_modes: Vec<String>,
    pub voices: Vec<String>,
    pub emotions: Vec<String>,
    pub languages: Vec<String>,
    pub limits: WelcomeLimits,
}

/// CONTROL payloads, both directions, tagged by `op`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Control {
    // c→s
    Start,
    EndOfTurn,
    Interrupt,
    Set {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        voice: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        emotion: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<Mode>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        turn_mode: Option<TurnMode>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lang: Option<String>,
    },
    Close,
    // s→c
    TurnStarted {
        turn: u32,
    },
    Flush {
        turn: u32,
    },
    TurnEnded {
        turn: u32,
        reason: TurnEndReason,
    },
    Closing {
        reason: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TurnEndReason {
    Done,
    Interrupted,
    Truncated,
}

/// Per-stage latency of one reply, in milliseconds, by stage name. S2S modes:
/// `endpoint`, `encode_flush`, `first_decoder_step`, `codec_decode`, `server_total`;
/// pipeline modes: `endpoint`, `asr`, `first_token`, `first_tts_audio`, `first_audio_sent`
/// (each from the end of the turn; see `docs/protocol.md`).
pub type Stages = std::collections::BTreeMap<String, f64>;

/// META payloads (s→c), tagged by `kind`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Meta {
    Vad {
        speaking: bool,
        prob: f32,
    },
    Latency {
        turn: u32,
        speech_end_t_us: u64,
        endpoint_ms: f64,
        stages_ms: Stages,
    },
    /// Pipeline modes: what the user said in `turn` (the whole turn's transcript).
    Transcript {
        turn: u32,
        text: String,
    },
    /// Pipeline modes: the reply's text (the translation, or the LLM's reply as far as it
    /// was spoken), when the reply is complete.
    Reply {
        turn: u32,
        text: String,
    },
}

/// ERROR codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    Busy,
    Unauthorized,
    BadVersion,
    BadRequest,
    BadFrame,
    TooLarge,
    RateLimited,
    IdleTimeout,
    SessionTimeout,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 10] = [
        ErrorCode::Busy,
        ErrorCode::Unauthorized,
        ErrorCode::BadVersion,
        ErrorCode::BadRequest,
        ErrorCode::BadFrame,
        ErrorCode::TooLarge,
        ErrorCode::RateLimited,
        ErrorCode::IdleTimeout,
        ErrorCode::SessionTimeout,
        ErrorCode::Internal,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::Busy => "busy",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::BadVersion => "bad_version",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::IdleTimeout => "idle_timeout",
            ErrorCode::SessionTimeout => "session_timeout",
            ErrorCode::Internal => "internal",
        }
    }
}

/// ERROR payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorMsg {
    pub code: ErrorCode,
    pub message: String,
    pub fatal: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_round_trips() {
        let f = Frame::new(MsgType::Ping, 7, 123_456_789, vec![1, 2, 3]);
        let b = f.encode();
        assert_eq!(b.len(), HEADER_LEN + 3);
        assert_eq!(&b[..2], &[1, 0x50]);
        assert_eq!(&b[2..6], &7u32.to_le_bytes());
        assert_eq!(Frame::decode(&b).unwrap(), f);
    }

    #[test]
    fn audio_round_trips_and_odd_bytes_are_refused() {
        let f = Frame::audio(3, 9, 42, &[0, -1, i16::MAX, i16::MIN]);
        let g = Frame::decode(&f.encode()).unwrap();
        assert_eq!(
            g.parse_audio().unwrap(),
            (42, vec![0, -1, i16::MAX, i16::MIN])
        );
        let mut bad = g.clone();
        bad.payload.push(0);
        assert!(matches!(
            bad.parse_audio(),
            Err(ProtocolError::BadPayload { .. })
        ));
        bad.payload.truncate(3);
        assert!(bad.parse_audio().is_err());
    }

    #[test]
    fn bad_headers_are_typed() {
        assert_eq!(
            Frame::decode(&[1, 2, 3]),
            Err(ProtocolError::Short { len: 3 })
        );
        assert_eq!(Frame::decode(&[]), Err(ProtocolError::Short { len: 0 }));
        let mut b = Frame::new(MsgType::Hello, 0, 0, vec![]).encode();
        b[0] = 2;
        assert_eq!(Frame::decode(&b), Err(ProtocolError::BadVersion { got: 2 }));
        assert_eq!(Frame::decode(&b).unwrap_err().code(), ErrorCode::BadVersion);
        b[0] = 1;
        b[1] = 0x77;
        assert_eq!(
            Frame::decode(&b),
            Err(ProtocolError::UnknownType { got: 0x77 })
        );
        assert_eq!(Frame::decode(&b).unwrap_err().code(), ErrorCode::BadFrame);
    }

    #[test]
    fn json_payloads_match_the_spec() {
        let h: Hello = serde_json::from_str(
            r#"{"mode":"translate","turn_mode":"stream","audio":"pcm16","sample_rate":48000,"voice":null,"emotion":"happy","lang":"ru"}"#,
        )
        .unwrap();
        assert_eq!(h.mode, Mode::Translate);
        assert_eq!(h.turn_mode, TurnMode::Stream);
        assert_eq!(h.sample_rate, 48000);
        let c: Control = serde_json::from_str(r#"{"op":"end_of_turn"}"#).unwrap();
        assert_eq!(c, Control::EndOfTurn);
        let c: Control = serde_json::from_str(r#"{"op":"set","emotion":"sad"}"#).unwrap();
        assert!(matches!(c, Control::Set { emotion: Some(ref e), .. } if e == "sad"));
        let s = serde_json::to_string(&Control::TurnEnded {
            turn: 3,
            reason: TurnEndReason::Interrupted,
        })
        .unwrap();
        assert_eq!(s, r#"{"op":"turn_ended","turn":3,"reason":"interrupted"}"#);
        let s = serde_json::to_string(&Meta::Vad {
            speaking: true,
            prob: 0.5,
        })
        .unwrap();
        assert_eq!(s, r#"{"kind":"vad","speaking":true,"prob":0.5}"#);
        let s = serde_json::to_string(&ErrorMsg {
            code: ErrorCode::RateLimited,
            message: "x".into(),
            fatal: true,
        })
        .unwrap();
        assert_eq!(s, r#"{"code":"rate_limited","message":"x","fatal":true}"#);
        for c in ErrorCode::ALL {
            assert_eq!(
                serde_json::to_string(&c).unwrap(),
                format!("\"{}\"", c.name())
            );
        }
        assert!(serde_json::from_str::<Control>(r#"{"op":"dance"}"#).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(f) = Frame::decode(&bytes) {
                let _ = f.parse_audio();
                let _ = f.parse_json::<Hello>();
                let _ = f.parse_json::<Control>();
                prop_assert_eq!(f.encode(), bytes);
            }
        }

        #[test]
        fn valid_headers_always_decode(kind in prop::sample::select(vec![0x01u8, 0x02, 0x10, 0x20, 0x30, 0x40, 0x50, 0x51]),
                                       seq in any::<u32>(), t in any::<u64>(),
                                       payload in proptest::collection::vec(any::<u8>(), 0..32)) {
            let f = Frame::new(MsgType::from_u8(kind).unwrap(), seq, t, payload);
            prop_assert_eq!(Frame::decode(&f.encode()).unwrap(), f);
        }
    }
}
