//! Voice-preserving TTS: a base [`Tts`] speaks the text, then OpenVoice's tone-colour converter
//! moves the result to the voice of the request's reference clip.
//!
//! Per request: base TTS in the target language -> resample to the converter's rate -> convert
//! from the base voice's tone colour to the reference clip's -> resample to
//! [`VoiceConvertingTtsConfig::output_rate`]. The base voice's embedding (one per language, as a
//! base TTS such as espeak-ng uses one voice per language) is extracted once from a calibration
//! sentence synthesized by the base TTS, then cached; [`VoiceConvertingTts::set_base_embedding`]
//! preloads one instead (e.g. OpenVoice's published `base_speakers/ses`).
//!
//! Bad requests (no reference, a reference shorter than `min_reference_s`, silent or non-finite)
//! fail alone with [`TeacherError::BadInput`] naming the item; the rest of the batch goes on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use vaak_audio::resample::resample;

use crate::error::{Result, TeacherError};
use crate::vc::openvoice::item_error;
use crate::vc::{ToneColorConverter, DEFAULT_TAU};
use crate::{AudioRef, ItemResult, Lang, ModelId, Speech, Tts, TtsRequest};

/// Options of [`VoiceConvertingTts`].
#[derive(Clone, Debug)]
pub struct VoiceConvertingTtsConfig {
    /// Posterior noise scale (upstream default 0.3).
    pub tau: f32,
    /// Sample rate of the returned speech.
    pub output_rate: u32,
    /// References shorter than this (seconds) are rejected: too little voice to embed.
    pub min_reference_s: f64,
    /// References whose RMS is below this are rejected as silent.
    pub silence_rms: f32,
    /// Base seed of the posterior noise; each request's noise also depends on its text and
    /// language, so the same request gives the same audio in any batch.
    pub seed: u64,
    /// Sentence the base TTS speaks to measure its own voice, per language.
    pub calibration_texts: HashMap<Lang, String>,
}

impl Default for VoiceConvertingTtsConfig {
    fn default() -> Self {
        let calibration_texts = [
            (
                Lang::En,
                "The quick brown fox jumps over the lazy dog, and then it runs back home \
                 across the quiet green field before the evening rain begins.",
            ),
            (
                Lang::Ru,
                "Съешь же ещё этих мягких французских булок, да выпей чаю. Вечером на улице \
                 было тихо, и мы долго говорили о погоде.",
            ),
            (
                Lang::Hi,
                "आज मौसम बहुत सुहावना है, और हम सब शाम को बगीचे में टहलने जाएंगे। \
                 बच्चे खेल रहे हैं और पक्षी गा रहे हैं।",
            ),
            (
                Lang::Te,
                "ఈ రోజు వాతావరణం చాలా బాగుంది, సాయంత్రం మేమందరం తోటలో నడవడానికి \
                 వెళ్తాము. పిల్లలు ఆడుకుంటున్నారు.",
            ),
        ]
        .into_iter()
        .map(|(l, t)| (l, t.to_string()))
        .collect();
        Self {
            tau: DEFAULT_TAU,
            output_rate: 24_000,
            min_reference_s: 1.0,
            silence_rms: 1e-4,
            seed: 0,
            calibration_texts,
        }
    }
}

/// A [`Tts`] that speaks with the voice of each request's reference clip.
pub struct VoiceConvertingTts<B: Tts> {
    base: B,
    converter: Arc<ToneColorConverter>,
    cfg: VoiceConvertingTtsConfig,
    base_se: Mutex<HashMap<Lang, Arc<Vec<f32>>>>,
}

impl<B: Tts> VoiceConvertingTts<B> {
    pub fn new(
        base: B,
        converter: Arc<ToneColorConverter>,
        cfg: VoiceConvertingTtsConfig,
    ) -> Result<Self> {
        let bad = |field: &str, reason: String| TeacherError::Config {
            path: format!("VoiceConvertingTtsConfig.{field}").into(),
            reason,
        };
        if cfg.output_rate == 0 {
            return Err(bad("output_rate", "must be > 0".into()));
        }
        if !(cfg.tau.is_finite() && cfg.tau >= 0.0) {
            return Err(bad("tau", format!("{} must be finite and >= 0", cfg.tau)));
        }
        if !(cfg.min_reference_s.is_finite() && cfg.min_reference_s >= 0.0) {
            return Err(bad(
                "min_reference_s",
                format!("{} must be finite and >= 0", cfg.min_reference_s),
            ));
        }
        Ok(Self {
            base,
            converter,
            cfg,
            base_se: Mutex::new(HashMap::new()),
        })
    }

    pub fn base(&self) -> &B {
        &self.base
    }

    pub fn converter(&self) -> &ToneColorConverter {
        &self.converter
    }

    /// Uses `se` as the base voice's tone colour for `lang` instead of measuring it.
    pub fn set_base_embedding(&self, lang: Lang, se: Vec<f32>) -> Result<()> {
        if se.len() != self.converter.embedding_dim() {
            return Err(TeacherError::BadInput(format!(
                "base embedding for {} has {} values, the converter expects {}",
                lang.code(),
                se.len(),
                self.converter.embedding_dim()
            )));
        }
        self.lock_cache().insert(lang, Arc::new(se));
        Ok(())
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<Lang, Arc<Vec<f32>>>> {
        // A panic while holding the lock leaves a consistent map (inserts are atomic).
        self.base_se.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The base voice's tone colour for `lang`, measured once and cached.
    pub fn base_embedding(&self, lang: Lang) -> Result<Arc<Vec<f32>>> {
        let mut cache = self.lock_cache();
        if let Some(se) = cache.get(&lang) {
            return Ok(se.clone());
        }
        let text = self
            .cfg
            .calibration_texts
            .get(&lang)
            .ok_or_else(|| TeacherError::Config {
                path: "VoiceConvertingTtsConfig.calibration_texts".into(),
                reason: format!("no calibration sentence for language {}", lang.code()),
            })?;
        let req = TtsRequest {
            text,
            lang,
            reference: None,
        };
        let speech = self
            .base
            .synthesize(&[req])?
            .pop()
            .ok_or_else(|| TeacherError::Msg("base TTS returned no result".into()))?
            .map_err(|e| {
                TeacherError::Msg(format!(
                    "base TTS failed on the {} calibration sentence: {e}",
                    lang.code()
                ))
            })?;
        let se = self
            .converter
            .tone_color(AudioRef::new(&speech.samples, speech.sample_rate))?;
        let se = Arc::new(se);
        cache.insert(lang, se.clone());
        Ok(se)
    }

    /// Why a reference clip cannot be used, if it cannot.
    fn check_reference(&self, r: Option<&AudioRef<'_>>) -> std::result::Result<(), String> {
        let Some(r) = r else {
            return Err("no reference clip (a voice-preserving TTS needs one)".into());
        };
        if r.sample_rate == 0 {
            return Err("reference clip has sample rate 0".into());
        }
        if r.duration_s() < self.cfg.min_reference_s {
            return Err(format!(
                "reference clip is {:.3} s, shorter than the {} s minimum",
                r.duration_s(),
                self.cfg.min_reference_s
            ));
        }
        if let Some(k) = r.samples.iter().position(|v| !v.is_finite()) {
            return Err(format!("reference clip has a non-finite sample at {k}"));
        }
        let rms = (r
            .samples
            .iter()
            .map(|&v| (v as f64) * (v as f64))
            .sum::<f64>()
            / r.samples.len() as f64)
            .sqrt();
        if rms < self.cfg.silence_rms as f64 {
            return Err(format!(
                "reference clip is silent (RMS {rms:.2e} < {:.2e})",
                self.cfg.silence_rms
            ));
        }
        Ok(())
    }

    fn convert_one(&self, req: &TtsRequest<'_>, base: &Speech) -> Result<Speech> {
        let reference = req
            .reference
            .ok_or_else(|| TeacherError::BadInput("no reference clip".into()))?;
        let src_se = self.base_embedding(req.lang)?;
        let tgt_se = self.converter.tone_color(reference)?;
        let seed = request_seed(self.cfg.seed, req);
        let wav = self.converter.convert(
            AudioRef::new(&base.samples, base.sample_rate),
            &src_se,
            &tgt_se,
            self.cfg.tau,
            seed,
        )?;
        let from = self.converter.sample_rate();
        let samples = if from == self.cfg.output_rate {
            wav
        } else {
            resample(&wav, from, self.cfg.output_rate)?
        };
        Ok(Speech {
            samples,
            sample_rate: self.cfg.output_rate,
        })
    }
}

/// Noise seed of one request: the base seed mixed with its language and text (FNV-1a).
fn request_seed(seed: u64, req: &TtsRequest<'_>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in req.lang.code().bytes().chain([0]).chain(req.text.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl<B: Tts> Tts for VoiceConvertingTts<B> {
    fn model_id(&self) -> ModelId {
        let b = self.base.model_id();
        let c = self.converter.id().clone();
        ModelId {
            name: format!("{} + openvoice-v2 {}", b.name, c.name),
            revision: match (b.revision, c.revision) {
                (None, None) => None,
                (x, y) => Some(format!(
                    "{} + {}",
                    x.as_deref().unwrap_or("-"),
                    y.as_deref().unwrap_or("-")
                )),
            },
        }
    }

    fn supports(&self, lang: Lang) -> bool {
        self.base.supports(lang)
    }

    fn synthesize(&self, batch: &[TtsRequest<'_>]) -> Result<Vec<ItemResult<Speech>>> {
        let mut out: Vec<Option<ItemResult<Speech>>> = Vec::with_capacity(batch.len());
        let mut valid = Vec::new();
        for (i, req) in batch.iter().enumerate() {
            match self.check_reference(req.reference.as_ref()) {
                Ok(()) => {
                    valid.push(i);
                    out.push(None);
                }
                Err(m) => out.push(Some(Err(TeacherError::BadInput(format!("item {i}: {m}"))))),
            }
        }
        if !valid.is_empty() {
            let sub: Vec<TtsRequest<'_>> = valid.iter().map(|&i| batch[i]).collect();
            let base = self.base.synthesize(&sub)?;
            if base.len() != sub.len() {
                return Err(TeacherError::Msg(format!(
                    "base TTS returned {} results for {} requests",
                    base.len(),
                    sub.len()
                )));
            }
            for (&i, res) in valid.iter().zip(base) {
                // The base TTS numbers items within the sub-batch; say which request it was.
                let r = res
                    .map_err(|e| match e {
                        TeacherError::BadInput(m) => {
                            TeacherError::BadInput(format!("item {i}: base TTS: {m}"))
                        }
                        other => TeacherError::Msg(format!("item {i}: base TTS: {other}")),
                    })
                    .and_then(|speech| {
                        self.convert_one(&batch[i], &speech)
                            .map_err(|e| item_error(i, e))
                    });
                out[i] = Some(r);
            }
        }
        Ok(out
            .into_iter()
            .map(|r| r.expect("every item is decided"))
            .collect())
    }
}
