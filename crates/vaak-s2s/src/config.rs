//! [`S2sConfig`]: everything that fixes the shapes of an S2S model, stored as `config.json`
//! next to its weights, with named presets and validation that names the bad field.

use serde::{Deserialize, Serialize};

use crate::error::{config_err, Result};

/// The codec token stream the model reads and writes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CodecSpec {
    pub num_codebooks: usize,
    /// Codes per codebook (`0..cardinality`).
    pub cardinality: usize,
    /// Frames per second (informational: latency and duration maths).
    pub frame_rate: f64,
}

impl Default for CodecSpec {
    /// vaak-16k-like: 8 codebooks of 1024 codes at 25 Hz.
    fn default() -> Self {
        Self {
            num_codebooks: 8,
            cardinality: 1024,
            frame_rate: 25.0,
        }
    }
}

/// How the several codebooks of one frame are predicted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum HeadKind {
    /// Codebook `k` is delayed by `k` frames; one linear head per codebook on the temporal
    /// decoder (MusicGen). Cheapest step, `K - 1` frames of extra latency.
    #[default]
    Delay,
    /// A small transformer over the codebooks of each frame, conditioned on the temporal
    /// decoder's output (Moshi's depformer). No extra latency, `K` small steps per frame.
    Depth,
}

/// Width and depth of one transformer stack.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StackConfig {
    pub d_model: usize,
    pub num_heads: usize,
    pub num_layers: usize,
    pub dim_feedforward: usize,
}

/// The streaming Conformer encoder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EncoderConfig {
    #[serde(flatten)]
    pub stack: StackConfig,
    /// Frames per attention chunk: a frame sees its whole chunk, so output lags by at most
    /// `chunk_size - 1` frames.
    pub chunk_size: usize,
    /// Earlier chunks each chunk attends to.
    pub left_chunks: usize,
    /// Taps of the depthwise causal conv.
    pub conv_kernel: usize,
}

/// Sizes and options of the whole model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct S2sConfig {
    pub codec: CodecSpec,
    pub encoder: EncoderConfig,
    /// The temporal (per-frame) decoder.
    pub decoder: StackConfig,
    /// The depth transformer; used only by [`HeadKind::Depth`].
    pub depth: StackConfig,
    pub head: HeadKind,
    /// Vocabulary of the aligned text stream ("inner monologue"); `None` disables it.
    pub text_vocab_size: Option<usize>,
    /// Width of the speaker embedding fed as conditioning.
    pub speaker_dim: usize,
    /// Longest source (encoder memory) a stream may hold, in frames.
    pub max_source_frames: usize,
    /// Longest reply, in frames (the decoder's KV capacity adds the codebook delays).
    pub max_target_frames: usize,
}

impl S2sConfig {
    /// A named preset: `tiny` (tests, < 1M parameters), `small` (6 + 6 layers, width 320:
    /// ~32M parameters with an 8 x 1024 codec) or `base` (12 + 12 layers, width 768).
    pub fn preset(name: &str, codec: CodecSpec) -> Result<Self> {
        let stack = |d, h, l, ff| StackConfig {
            d_model: d,
            num_heads: h,
            num_layers: l,
            dim_feedforward: ff,
        };
        let (enc, dec, dep, chunk, left, kernel) = match name {
            "tiny" => (
                stack(32, 2, 2, 64),
                stack(32, 2, 2, 64),
                stack(32, 2, 1, 64),
                2,
                2,
                3,
            ),
            "small" => (
                stack(320, 5, 6, 1280),
                stack(320, 5, 6, 1280),
                stack(256, 4, 2, 1024),
                4,
                8,
                7,
            ),
            "base" => (
                stack(768, 12, 12, 3072),
                stack(768, 12, 12, 3072),
                stack(512, 8, 4, 2048),
                4,
                16,
                15,
            ),
            other => {
                return Err(config_err(
                    "preset",
                    format!("unknown preset {other:?}; valid presets: tiny, small, base"),
                ))
            }
        };
        let cfg = Self {
            codec,
            encoder: EncoderConfig {
                stack: enc,
                chunk_size: chunk,
                left_chunks: left,
                conv_kernel: kernel,
            },
            decoder: dec,
            depth: dep,
            head: HeadKind::Delay,
            text_vocab_size: None,
            speaker_dim: 192,
            max_source_frames: 1024,
            max_target_frames: 1024,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn from_json(s: &str) -> Result<Self> {
        let cfg: Self = serde_json::from_str(s).map_err(|e| config_err("json", e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every field the model's shapes depend on.
    pub fn validate(&self) -> Result<()> {
        let c = &self.codec;
        if c.num_codebooks == 0 {
            return Err(config_err("codec.num_codebooks", "must be at least 1"));
        }
        if c.cardinality < 2 || c.cardinality > (u32::MAX as usize - 3) {
            return Err(config_err("codec.cardinality", "must be in 2..2^32-3"));
        }
        if c.frame_rate.is_nan() || c.frame_rate <= 0.0 {
            return Err(config_err("codec.frame_rate", "must be positive"));
        }
        for (name, s) in [
            ("encoder", &self.encoder.stack),
            ("decoder", &self.decoder),
            ("depth", &self.depth),
        ] {
            if s.d_model == 0 || s.num_heads == 0 || s.d_model % s.num_heads != 0 {
                return Err(config_err(
                    &format!("{name}.d_model"),
                    format!(
                        "{} must be a positive multiple of num_heads {}",
                        s.d_model, s.num_heads
                    ),
                ));
            }
            if (s.d_model / s.num_heads) % 2 != 0 {
                return Err(config_err(
                    &format!("{name}.num_heads"),
                    "head width d_model / num_heads must be even (RoPE)",
                ));
            }
            if s.dim_feedforward == 0 {
                return Err(config_err(
                    &format!("{name}.dim_feedforward"),
                    "must be at least 1",
                ));
            }
            if s.num_layers == 0 && name != "depth" {
                return Err(config_err(
                    &format!("{name}.num_layers"),
                    "must be at least 1",
                ));
            }
        }
        if self.head == HeadKind::Depth && self.depth.num_layers == 0 {
            return Err(config_err(
                "depth.num_layers",
                "the depth head needs at least 1 layer",
            ));
        }
        let e = &self.encoder;
        if e.chunk_size == 0 {
            return Err(config_err("encoder.chunk_size", "must be at least 1"));
        }
        if e.conv_kernel == 0 {
            return Err(config_err("encoder.conv_kernel", "must be at least 1"));
        }
        if self.text_vocab_size == Some(0) {
            return Err(config_err(
                "text_vocab_size",
                "must be at least 1 (or null to disable)",
            ));
        }
        if self.speaker_dim == 0 {
            return Err(config_err("speaker_dim", "must be at least 1"));
        }
        if self.max_source_frames == 0 || self.max_target_frames == 0 {
            return Err(config_err(
                "max_source_frames/max_target_frames",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// Per-codebook delays: `k` for the delay pattern, none for the depth head.
    pub fn delays(&self) -> Vec<usize> {
        match self.head {
            HeadKind::Delay => (0..self.codec.num_codebooks).collect(),
            HeadKind::Depth => vec![0; self.codec.num_codebooks],
        }
    }

    /// Decoder steps for a reply of `frames` frames: the frames, the end-of-turn frame and
    /// the delayed codebooks' tail.
    pub fn decoder_steps(&self, frames: usize) -> usize {
        let max_delay = self.delays().into_iter().max().unwrap_or(0);
        frames + max_delay.max(1)
    }

    /// Token ids of one codebook stream: the codes, then [`Specials`].
    pub fn audio_specials(&self) -> Specials {
        Specials::after(self.codec.cardinality)
    }

    /// Token ids of the text stream, if enabled.
    pub fn text_specials(&self) -> Option<Specials> {
        self.text_vocab_size.map(Specials::after)
    }
}

/// The special ids that follow a stream's `n` ordinary tokens. Each stream's embedding and
/// head have `n + 3` rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Specials {
    /// "No token here": before a delayed codebook starts, after the turn ended.
    pub pad: u32,
    /// Input of the first decoder step.
    pub bos: u32,
    /// End of turn: predicted by codebook 0 (and the text stream) after the last frame.
    pub eot: u32,
}

impl Specials {
    fn after(n: usize) -> Self {
        let n = n as u32;
        Self {
            pad: n,
            bos: n + 1,
            eot: n + 2,
        }
    }

    /// Rows of the stream's embedding table and head.
    pub fn vocab(&self) -> usize {
        self.pad as usize + 3
    }
}
