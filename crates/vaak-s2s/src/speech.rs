//! [`SpeechModel`]: audio in, audio out. A model export (`config.json`, `model.safetensors`,
//! `codec.json`) and its codec: encode the input, stream it through the encoder, generate the
//! reply with [`S2sStream`], decode the reply's codes.

use std::path::{Path, PathBuf};

use candle_core::Device;
use vaak_nn::StreamMask;

use crate::cond::SlotCondition;
use crate::error::{Result, S2sError};
use crate::generate::{GenerationConfig, S2sStream};
use crate::model::S2sModel;
use crate::text::CharTokenizer;
use crate::train::{AudioTokenizer, ExportInfo};

/// Speaker embeddings shipped with a model: `<model>/voices/<name>.npy`.
pub const VOICES_DIR: &str = "voices";

/// Where a model's voices come from.
enum Voices {
    /// `<dir>/voices/*.npy`, read when asked for.
    Dir(PathBuf),
    /// Speaker embeddings held in memory (a model embedded in the binary), by name.
    Embedded(Vec<(String, Vec<f32>)>),
}

/// A loaded S2S model with its codec.
pub struct SpeechModel {
    model: S2sModel,
    tok: AudioTokenizer,
    info: ExportInfo,
    /// The model's directory, or a label for an embedded model (messages only).
    label: String,
    voices: Voices,
}

/// One generated reply.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    /// Mono samples at [`SpeechModel::sample_rate`] (empty when the model ended its turn at
    /// once).
    pub audio: Vec<f32>,
    pub source_frames: usize,
    pub reply_frames: usize,
    /// The reply stopped at the frame limit instead of an end of turn.
    pub truncated: bool,
    /// What the model's text stream said (its character ids decoded, see
    /// [`crate::text::CharTokenizer`]); `None` for a model without a character text stream.
    pub text: Option<String>,
}

impl SpeechModel {
    /// Loads a model export and the codec its `codec.json` names; checks that the codec's
    /// tokens are the model's.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let info = ExportInfo::read(dir)?;
        let model = S2sModel::load_inference(dir, device)?;
        Self::from_parts(
            model,
            info,
            &dir.display().to_string(),
            Voices::Dir(dir.to_path_buf()),
            device,
        )
    }

    /// A model already in memory (e.g. embedded in the binary, see [`crate::bundled`]) with
    /// its `codec.json` and its voices by name; `label` names it in messages.
    pub fn from_memory(
        model: S2sModel,
        info: ExportInfo,
        label: &str,
        voices: Vec<(String, Vec<f32>)>,
        device: &Device,
    ) -> Result<Self> {
        let mut voices = voices;
        voices.sort_by(|a, b| a.0.cmp(&b.0));
        Self::from_parts(model, info, label, Voices::Embedded(voices), device)
    }

    fn from_parts(
        model: S2sModel,
        info: ExportInfo,
        label: &str,
        voices: Voices,
        device: &Device,
    ) -> Result<Self> {
        let tok = AudioTokenizer::load(&info.codec, Some(info.num_codebooks), device)?;
        let (m, t) = (&model.config().codec, tok.spec());
        if m.num_codebooks != t.num_codebooks || m.cardinality != t.cardinality {
            return Err(S2sError::BadInput(format!(
                "{label}: the model reads {} codebooks of {} codes, codec {} gives {} of {}",
                m.num_codebooks, m.cardinality, info.codec, t.num_codebooks, t.cardinality
            )));
        }
        Ok(Self {
            model,
            tok,
            info,
            label: label.to_string(),
            voices,
        })
    }

    pub fn model(&self) -> &S2sModel {
        &self.model
    }

    pub fn info(&self) -> &ExportInfo {
        &self.info
    }

    pub fn tokenizer(&self) -> &AudioTokenizer {
        &self.tok
    }

    pub fn sample_rate(&self) -> u32 {
        self.tok.sample_rate()
    }

    /// Where the model came from: its directory, or a label for an embedded model.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The voices shipped in `<model>/voices/` (file stems of the `.npy` files) or embedded
    /// with the model, sorted.
    pub fn voices(&self) -> Vec<String> {
        let dir = match &self.voices {
            Voices::Embedded(v) => return v.iter().map(|(n, _)| n.clone()).collect(),
            Voices::Dir(d) => d,
        };
        let mut v: Vec<String> = std::fs::read_dir(dir.join(VOICES_DIR))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "npy"))
                    .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The speaker embedding of voice `name`; an unknown name lists the shipped ones.
    pub fn voice(&self, name: &str) -> Result<Vec<f32>> {
        let voices = self.voices();
        if !voices.iter().any(|v| v == name) {
            return Err(S2sError::BadInput(format!(
                "unknown voice {name:?}; voices of {}: {}",
                self.label,
                if voices.is_empty() {
                    format!("none (no {VOICES_DIR}/*.npy; pass --speaker spk.npy)")
                } else {
                    voices.join(", ")
                }
            )));
        }
        match &self.voices {
            Voices::Embedded(v) => Ok(v
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, s)| s.clone())
                .unwrap_or_default()),
            Voices::Dir(d) => {
                crate::train::read_speaker(&d.join(VOICES_DIR).join(format!("{name}.npy")))
            }
        }
    }

    /// The reply to `samples` (mono at [`Self::sample_rate`]) under `cond`. The source is
    /// streamed through the encoder chunk by chunk; the reply is at most `gen.max_frames`
    /// (and the model's `max_target_frames`) long.
    pub fn respond(
        &self,
        samples: &[f32],
        cond: SlotCondition,
        gen: GenerationConfig,
    ) -> Result<Reply> {
        let mut frames = self.tok.encode(samples)?;
        let max_src = self.model.config().max_source_frames;
        if frames.len() > max_src {
            tracing::warn!(
                "input of {} frames cut to the model's max_source_frames {max_src}",
                frames.len()
            );
            frames.truncate(max_src);
        }
        let seed = gen.seed;
        let max_frames = gen.max_frames.min(self.model.config().max_target_frames);
        let mut st = S2sStream::new(&self.model, 1, gen)?;
        st.start(0, cond, seed)?;
        let chunk = self.model.encoder().chunk_size().max(1);
        for c in frames.chunks(chunk) {
            st.push_source(&[c.to_vec()])?;
        }
        st.end_source(0)?;
        let mut reply = Vec::new();
        let mut text_ids = Vec::new();
        let mut truncated = false;
        // Each step completes at most one frame; the delayed codebooks add a few steps.
        let limit = self.model.config().decoder_steps(max_frames) + 1;
        let mut steps = 0;
        while !st.is_finished(0) {
            if steps >= limit {
                truncated = true;
                break;
            }
            if let Some(Some(o)) = st.step(&StreamMask::All)?.into_iter().next() {
                text_ids.extend(o.text.filter(|&t| (t as usize) < CharTokenizer::VOCAB));
                reply.extend(o.frames);
                if o.end_of_turn && reply.len() >= max_frames {
                    truncated = true;
                }
            }
            steps += 1;
        }
        let audio = self.tok.decode(&reply)?;
        let text = (self.model.config().text_vocab_size == Some(CharTokenizer::VOCAB))
            .then(|| CharTokenizer.decode(&text_ids));
        Ok(Reply {
            audio,
            source_frames: frames.len(),
            reply_frames: reply.len(),
            truncated,
            text,
        })
    }
}
