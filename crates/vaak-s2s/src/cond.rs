//! Conditioning of the decoder: who speaks (a 192-d speaker embedding), how (emotion, prosody)
//! and in which language. Everything is summed into one vector added to every decoder input,
//! so the conditioning costs nothing per step and holds for the whole reply.

use std::fmt;
use std::str::FromStr;

use candle_core::{Device, Tensor};
use candle_nn::{Embedding, Linear, Module, VarBuilder};

use crate::error::{Result, S2sError};

/// The emotions a reply can be asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Emotion {
    #[default]
    Neutral,
    Happy,
    Sad,
    Angry,
    Fearful,
    Disgusted,
    Surprised,
    Calm,
    Excited,
}

impl Emotion {
    pub const ALL: [Emotion; 9] = [
        Emotion::Neutral,
        Emotion::Happy,
        Emotion::Sad,
        Emotion::Angry,
        Emotion::Fearful,
        Emotion::Disgusted,
        Emotion::Surprised,
        Emotion::Calm,
        Emotion::Excited,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Emotion::Neutral => "neutral",
            Emotion::Happy => "happy",
            Emotion::Sad => "sad",
            Emotion::Angry => "angry",
            Emotion::Fearful => "fearful",
            Emotion::Disgusted => "disgusted",
            Emotion::Surprised => "surprised",
            Emotion::Calm => "calm",
            Emotion::Excited => "excited",
        }
    }

    /// Row of the emotion embedding table.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Emotion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Emotion {
    type Err = S2sError;
    fn from_str(s: &str) -> Result<Self> {
        let l = s.trim().to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|e| e.name() == l)
            .ok_or_else(|| S2sError::UnknownEmotion {
                name: s.to_string(),
                valid: Self::ALL.map(|e| e.name()).join(", "),
            })
    }
}

/// Target languages of a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Language {
    #[default]
    En,
    Ru,
    Hi,
    Te,
}

impl Language {
    pub const ALL: [Language; 4] = [Language::En, Language::Ru, Language::Hi, Language::Te];

    pub fn code(self) -> &'static str {
        match self {
            Language::En => "en",
            Language::Ru => "ru",
            Language::Hi => "hi",
            Language::Te => "te",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for Language {
    type Err = S2sError;
    fn from_str(s: &str) -> Result<Self> {
        let l = s.trim().to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|x| x.code() == l)
            .ok_or_else(|| S2sError::UnknownLanguage {
                name: s.to_string(),
                valid: Self::ALL.map(|x| x.code()).join(", "),
            })
    }
}

/// Conditioning of one stream (one batch row or one server slot).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct SlotCondition {
    /// Speaker embedding (`speaker_dim` floats, e.g. ECAPA); `None` uses the learned null
    /// speaker, which is also the unconditional branch of classifier-free guidance.
    pub speaker: Option<Vec<f32>>,
    pub emotion: Emotion,
    pub language: Language,
    /// Pitch, energy and speaking rate, normalised by the data pipeline.
    pub prosody: [f32; 3],
}

/// Projections of the conditioning into the decoder width.
#[derive(Clone, Debug)]
pub(crate) struct CondEncoder {
    speaker_proj: Linear,
    /// Stands in for the projected speaker when none is given (and for CFG's branch).
    null_speaker: Tensor,
    emotion: Embedding,
    language: Embedding,
    prosody: Linear,
    speaker_dim: usize,
}

impl CondEncoder {
    pub fn new(speaker_dim: usize, d: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            speaker_proj: candle_nn::linear(speaker_dim, d, vb.pp("speaker_proj"))?,
            null_speaker: vb.get_with_hints(
                d,
                "null_speaker",
                candle_nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
            )?,
            emotion: candle_nn::embedding(Emotion::ALL.len(), d, vb.pp("emotion"))?,
            language: candle_nn::embedding(Language::ALL.len(), d, vb.pp("language"))?,
            prosody: candle_nn::linear(3, d, vb.pp("prosody"))?,
            speaker_dim,
        })
    }

    /// `[B, d]` conditioning vectors; `drop_speaker` forces the null speaker for every row.
    pub fn forward(
        &self,
        conds: &[SlotCondition],
        drop_speaker: bool,
        device: &Device,
    ) -> Result<Tensor> {
        let b = conds.len();
        let mut spk = Vec::with_capacity(b * self.speaker_dim);
        let mut has = Vec::with_capacity(b);
        for (i, c) in conds.iter().enumerate() {
            match (&c.speaker, drop_speaker) {
                (Some(s), false) => {
                    if s.len() != self.speaker_dim {
                        return Err(S2sError::BadInput(format!(
                            "row {i}: speaker embedding has {} values, the model takes {}",
                            s.len(),
                            self.speaker_dim
                        )));
                    }
                    spk.extend_from_slice(s);
                    has.push(1f32);
                }
                _ => {
                    spk.extend(std::iter::repeat_n(0f32, self.speaker_dim));
                    has.push(0f32);
                }
            }
        }
        let spk = Tensor::from_vec(spk, (b, self.speaker_dim), device)?;
        let has = Tensor::from_vec(has, (b, 1), device)?;
        let projected = self.speaker_proj.forward(&spk)?;
        let null = self.null_speaker.unsqueeze(0)?;
        // has * proj + (1 - has) * null, written with broadcasts so gradients reach both.
        let speaker =
            (projected.broadcast_mul(&has)? + null.broadcast_mul(&has.affine(-1.0, 1.0)?)?)?;
        let emo: Vec<u32> = conds.iter().map(|c| c.emotion.index() as u32).collect();
        let lang: Vec<u32> = conds.iter().map(|c| c.language.index() as u32).collect();
        let emo = self.emotion.forward(&Tensor::from_vec(emo, b, device)?)?;
        let lang = self.language.forward(&Tensor::from_vec(lang, b, device)?)?;
        let pros: Vec<f32> = conds.iter().flat_map(|c| c.prosody).collect();
        let pros = self
            .prosody
            .forward(&Tensor::from_vec(pros, (b, 3), device)?)?;
        Ok((((speaker + emo)? + lang)? + pros)?)
    }
}
