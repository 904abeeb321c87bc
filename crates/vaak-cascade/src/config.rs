//! The cascade's configuration: a YAML file, with CLI flags layered on top.
//!
//! Every key has its default in exactly one place, the `Default` impls below. The embedded
//! [`DEFAULT_CONFIG_YAML`] is the same defaults written out with comments (a test checks that it
//! parses to `Config::default()`), so a fresh machine can run with no file at all. Unknown keys
//! are rejected with their name and position (`serde(deny_unknown_fields)`), so a typo never
//! silently falls back to a default. Every key is documented here and in `docs/cascade.md`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use vaak_data::Lang;

use crate::error::{CascadeError, Result};

/// The defaults, as a commented YAML file (`vaak cascade --print-default-config`).
pub const DEFAULT_CONFIG_YAML: &str = include_str!("../default_config.yaml");

/// The whole configuration file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Base directory that manifest `audio_path`s are relative to.
    pub data_root: PathBuf,
    /// Output base: samples go to `<output_root>/data/parallel/<direction>/<safe_id>/`, logs and
    /// summaries to `<output_root>/logs/<direction>/`.
    pub output_root: PathBuf,
    /// Manifest CSV per source language (`ru: /path/golos.csv`).
    pub manifests: Manifests,
    pub pipeline: PipelineConfig,
    pub compute: ComputeConfig,
    pub batch: BatchConfig,
    pub models: ModelsConfig,
    pub quality: QualityConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_root: PathBuf::from("/mnt/data"),
            output_root: PathBuf::from("/mnt/data/s2s"),
            manifests: Manifests::default(),
            pipeline: PipelineConfig::default(),
            compute: ComputeConfig::default(),
            batch: BatchConfig::default(),
            models: ModelsConfig::default(),
            quality: QualityConfig::default(),
        }
    }
}

/// Per-sample checks that mark a sample `bad` (with a reason in `meta.json`) and never stop the
/// run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QualityConfig {
    /// Cosine similarity of the speaker embeddings of `src.wav` and `tgt.wav` below this marks
    /// the sample `bad` (`low_speaker_similarity`); `null` only records it
    /// (`speaker_similarity` in `meta.json`).
    pub min_speaker_similarity: Option<f32>,
    /// A source clip shorter than this (seconds) is too short a voice reference
    /// (`short_reference`).
    pub min_reference_s: f64,
    /// A source clip whose RMS level is below this (dBFS) is a silent voice reference
    /// (`silent_reference`).
    pub min_reference_rms_dbfs: f64,
}

impl Default for QualityConfig {
    fn default() -> Self {
        Self {
            min_speaker_similarity: None,
            min_reference_s: 1.0,
            min_reference_rms_dbfs: -60.0,
        }
    }
}

/// Manifest CSV per source language; unset languages have none.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Manifests {
    pub en: Option<PathBuf>,
    pub ru: Option<PathBuf>,
    pub hi: Option<PathBuf>,
    pub te: Option<PathBuf>,
}

impl Default for Manifests {
    fn default() -> Self {
        Self {
            en: Some(PathBuf::from(
                "/mnt/data/manifests/peoples_speech_filtered.csv",
            )),
            ru: Some(PathBuf::from("/mnt/data/manifests/golos_filtered.csv")),
            hi: None,
            te: None,
        }
    }
}

impl Manifests {
    fn slot(&mut self, lang: Lang) -> &mut Option<PathBuf> {
        match lang {
            Lang::En => &mut self.en,
            Lang::Ru => &mut self.ru,
            Lang::Hi => &mut self.hi,
            Lang::Te => &mut self.te,
        }
    }

    /// The manifest of `lang`, if configured.
    pub fn get(&self, lang: Lang) -> Option<&PathBuf> {
        match lang {
            Lang::En => self.en.as_ref(),
            Lang::Ru => self.ru.as_ref(),
            Lang::Hi => self.hi.as_ref(),
            Lang::Te => self.te.as_ref(),
        }
    }

    pub fn set(&mut self, lang: Lang, path: PathBuf) {
        *self.slot(lang) = Some(path);
    }
}

/// What is selected and how each sample is judged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// Shortest manifest `duration_s` kept, seconds (inclusive).
    pub min_duration: f64,
    /// Longest manifest `duration_s` kept, seconds (inclusive).
    pub max_duration: f64,
    /// Source and target language, e.g. `ruen` (also `ru-en`).
    pub direction: Direction,
    /// Keep only rows whose `tier` column equals this (case-insensitive); `null` keeps all tiers.
    pub tier: Option<String>,
    /// Drop a row when its decoded duration differs from `duration_s` by more than this
    /// fraction of `duration_s`.
    pub duration_tolerance: f64,
    /// Seed of the deterministic shuffle that precedes sharding.
    pub shuffle_seed: u64,
    /// How `src.wav` is made from a WAV source: `copy` or `symlink`. Non-WAV sources are always
    /// re-encoded to a 16-bit WAV of the decoded audio.
    pub src_audio: SrcAudioMode,
    /// Fewer codec frames than this marks the sample `bad` (`tokens_too_short`).
    pub min_token_frames: usize,
    /// `tgt_duration_s / src_duration_s` below this marks the sample `bad`.
    pub min_duration_ratio: f64,
    /// `tgt_duration_s / src_duration_s` above this marks the sample `bad`.
    pub max_duration_ratio: f64,
    /// ASR no-speech probability above this marks the sample `bad` (`asr_no_speech`).
    pub max_no_speech_prob: f32,
    /// Upper bound on ASR tokens per clip.
    pub asr_max_new_tokens: usize,
    /// Legacy switch from the original spec: `true` selects the `openai` translator kind.
    pub use_gpt4o: bool,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            min_duration: 2.0,
            max_duration: 15.0,
            direction: Direction {
                src: Lang::Ru,
                tgt: Lang::En,
            },
            tier: Some("Gold".to_string()),
            duration_tolerance: 0.10,
            shuffle_seed: 0,
            src_audio: SrcAudioMode::Copy,
            min_token_frames: 10,
            min_duration_ratio: 0.25,
            max_duration_ratio: 4.0,
            max_no_speech_prob: 0.6,
            asr_max_new_tokens: 224,
            use_gpt4o: false,
        }
    }
}

/// Threads, device, logging.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ComputeConfig {
    /// Audio loader threads (decode + resample), overlapped with model work.
    pub num_workers: usize,
    /// Device handed to the teacher factory: `cpu`, `cuda:N`, `metal:N`.
    pub device: String,
    /// A progress log line every this many finished samples (0 = never).
    pub log_interval: usize,
    /// Decoded clips buffered between the loaders and the model stages (bounds memory).
    pub queue_depth: usize,
    /// Draw an indicatif progress bar on stderr.
    pub progress_bar: bool,
}

impl Default for ComputeConfig {
    fn default() -> Self {
        Self {
            num_workers: 4,
            device: "cuda:0".to_string(),
            log_interval: 10,
            queue_depth: 64,
            progress_bar: true,
        }
    }
}

/// Items per model call, per stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchConfig {
    pub asr: usize,
    pub translator: usize,
    pub speaker: usize,
    pub tts: usize,
    pub codec: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            asr: 16,
            translator: 32,
            speaker: 32,
            tts: 8,
            codec: 16,
        }
    }
}

impl BatchConfig {
    /// The number of clips gathered before the stages run: the largest stage batch.
    pub fn chunk(&self) -> usize {
        [
            self.asr,
            self.translator,
            self.speaker,
            self.tts,
            self.codec,
        ]
        .into_iter()
        .max()
        .unwrap_or(1)
        .max(1)
    }
}

/// Which teacher runs each stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelsConfig {
    pub asr: ModelSpec,
    pub translator: ModelSpec,
    pub speaker: ModelSpec,
    pub tts: ModelSpec,
    pub codec: ModelSpec,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        Self {
            asr: ModelSpec::new("whisper", Some("hf://openai/whisper-large-v3")),
            translator: ModelSpec::new("m2m100", Some("hf://facebook/m2m100_1.2B")),
            speaker: ModelSpec::new("ecapa", Some("hf://speechbrain/spkrec-ecapa-voxceleb")),
            tts: ModelSpec::new("espeak", None),
            codec: ModelSpec::new("encodec", Some("hf://facebook/encodec_24khz")),
        }
    }
}

/// One teacher's spec (`kind`, `weights`, `revision`, `options`); defined with its builders in
/// `vaak-teachers`, so the server's pipeline mode builds the same teachers without the cascade.
pub use vaak_teachers::spec::ModelSpec;

/// `src.wav` as a copy of the source file or a symlink to it (part of the layout).
pub use vaak_data::parallel::SrcAudioMode;

/// A translation direction, written `ruen` (source then target ISO code).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Direction {
    pub src: Lang,
    pub tgt: Lang,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.src.code(), self.tgt.code())
    }
}

impl FromStr for Direction {
    type Err = CascadeError;

    fn from_str(s: &str) -> Result<Self> {
        let t: String = s
            .trim()
            .chars()
            .filter(|c| *c != '-' && *c != '_')
            .collect();
        let bad = |why: &str| {
            CascadeError::InvalidArgument(format!(
                "direction '{s}': {why} (expected e.g. 'ruen'; languages: {})",
                Lang::supported_list()
            ))
        };
        if t.len() != 4 || !t.is_ascii() {
            return Err(bad("not two 2-letter language codes"));
        }
        let src: Lang = t[..2].parse().map_err(|_| bad("unknown source language"))?;
        let tgt: Lang = t[2..].parse().map_err(|_| bad("unknown target language"))?;
        if src == tgt {
            return Err(bad("source and target are the same"));
        }
        Ok(Self { src, tgt })
    }
}

impl Serialize for Direction {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Direction {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Config {
    /// Parses YAML text; `origin` names it in errors.
    pub fn from_yaml_str(text: &str, origin: &str) -> Result<Self> {
        let cfg: Config = serde_yaml::from_str(text).map_err(|e| CascadeError::Config {
            origin: origin.to_string(),
            reason: e.to_string(),
        })?;
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// Reads and parses a YAML file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| CascadeError::ConfigRead {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::from_yaml_str(&text, &path.display().to_string())
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let bad = |reason: String| {
            Err(CascadeError::Config {
                origin: origin.to_string(),
                reason,
            })
        };
        let p = &self.pipeline;
        if !(p.min_duration.is_finite() && p.max_duration.is_finite())
            || p.min_duration < 0.0
            || p.min_duration > p.max_duration
        {
            return bad(format!(
                "pipeline.min_duration ({}) and pipeline.max_duration ({}) must satisfy 0 <= min <= max",
                p.min_duration, p.max_duration
            ));
        }
        if !(p.duration_tolerance.is_finite() && p.duration_tolerance >= 0.0) {
            return bad(format!(
                "pipeline.duration_tolerance ({}) must be >= 0",
                p.duration_tolerance
            ));
        }
        if !(p.min_duration_ratio >= 0.0 && p.min_duration_ratio <= p.max_duration_ratio) {
            return bad(format!(
                "pipeline.min_duration_ratio ({}) must be >= 0 and <= pipeline.max_duration_ratio ({})",
                p.min_duration_ratio, p.max_duration_ratio
            ));
        }
        let q = &self.quality;
        if let Some(t) = q.min_speaker_similarity {
            if !(-1.0..=1.0).contains(&t) {
                return bad(format!(
                    "quality.min_speaker_similarity ({t}) must be in -1..=1 (a cosine) or null"
                ));
            }
        }
        if !(q.min_reference_s.is_finite() && q.min_reference_s >= 0.0) {
            return bad(format!(
                "quality.min_reference_s ({}) must be >= 0",
                q.min_reference_s
            ));
        }
        if !q.min_reference_rms_dbfs.is_finite() {
            return bad(format!(
                "quality.min_reference_rms_dbfs ({}) must be a finite number",
                q.min_reference_rms_dbfs
            ));
        }
        let b = &self.batch;
        for (name, v) in [
            ("asr", b.asr),
            ("translator", b.translator),
            ("speaker", b.speaker),
            ("tts", b.tts),
            ("codec", b.codec),
        ] {
            if v == 0 {
                return bad(format!("batch.{name} must be >= 1"));
            }
        }
        if self.compute.num_workers == 0 {
            return bad("compute.num_workers must be >= 1".into());
        }
        if self.compute.queue_depth == 0 {
            return bad("compute.queue_depth must be >= 1".into());
        }
        let m = &self.models;
        for (name, spec) in [
            ("asr", &m.asr),
            ("translator", &m.translator),
            ("speaker", &m.speaker),
            ("tts", &m.tts),
            ("codec", &m.codec),
        ] {
            if spec.kind.trim().is_empty() {
                return bad(format!("models.{name}.kind must be set"));
            }
        }
        Ok(())
    }

    /// The translator spec after the legacy `pipeline.use_gpt4o` switch.
    pub fn translator_spec(&self) -> ModelSpec {
        let mut spec = self.models.translator.clone();
        if self.pipeline.use_gpt4o {
            spec.kind = "openai".to_string();
        }
        spec
    }

    /// Applies command-line overrides (each `Some` wins over the file).
    pub fn apply(&mut self, o: &Overrides) -> Result<()> {
        if let Some(d) = &o.data_root {
            self.data_root = d.clone();
        }
        if let Some(d) = &o.output_root {
            self.output_root = d.clone();
        }
        if let Some(d) = o.direction {
            self.pipeline.direction = d;
        }
        if let Some(d) = &o.device {
            self.compute.device = d.clone();
        }
        if let Some(n) = o.num_workers {
            self.compute.num_workers = n;
        }
        if let Some(t) = &o.tier {
            self.pipeline.tier = if t.is_empty() || t.eq_ignore_ascii_case("any") {
                None
            } else {
                Some(t.clone())
            };
        }
        if let Some((lang, path)) = &o.manifest {
            self.manifests.set(*lang, path.clone());
        }
        if o.no_progress {
            self.compute.progress_bar = false;
        }
        self.validate("after command-line overrides")
    }
}

/// Values given on the command line; they override the config file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub data_root: Option<PathBuf>,
    pub output_root: Option<PathBuf>,
    pub direction: Option<Direction>,
    pub device: Option<String>,
    pub num_workers: Option<usize>,
    /// `""` or `any` disables the tier filter.
    pub tier: Option<String>,
    /// Replace the manifest of one language.
    pub manifest: Option<(Lang, PathBuf)>,
    pub no_progress: bool,
}

/// Which slice of the manifest this process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub idx: usize,
    pub count: usize,
}

impl Shard {
    /// Resolves the shard from flags, then the scheduler's environment, then `0 of 1`.
    ///
    /// Slurm: `SLURM_ARRAY_TASK_ID` minus `SLURM_ARRAY_TASK_MIN` (arrays may start at 1) of
    /// `SLURM_ARRAY_TASK_COUNT`. Kubernetes Indexed Job: `JOB_COMPLETION_INDEX` of
    /// `VAAK_NUM_SHARDS` (set it to the Job's `completions`). `env` is a lookup so tests need
    /// not touch the process environment.
    pub fn resolve(
        idx: Option<usize>,
        count: Option<usize>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        let num = |name: &str| -> Result<Option<usize>> {
            match env(name) {
                None => Ok(None),
                Some(v) if v.trim().is_empty() => Ok(None),
                Some(v) => v.trim().parse::<usize>().map(Some).map_err(|_| {
                    CascadeError::InvalidArgument(format!(
                        "environment variable {name}='{v}' is not a non-negative integer"
                    ))
                }),
            }
        };
        let (env_idx, env_count) = if let Some(id) = num("SLURM_ARRAY_TASK_ID")? {
            let min = num("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let idx = id.checked_sub(min).ok_or_else(|| {
                CascadeError::InvalidArgument(format!(
                    "SLURM_ARRAY_TASK_ID={id} is below SLURM_ARRAY_TASK_MIN={min}"
                ))
            })?;
            (Some(idx), num("SLURM_ARRAY_TASK_COUNT")?)
        } else if let Some(i) = num("JOB_COMPLETION_INDEX")? {
            (Some(i), num("VAAK_NUM_SHARDS")?)
        } else {
            (None, num("VAAK_NUM_SHARDS")?)
        };
        let idx = idx.or(env_idx).unwrap_or(0);
        let count = count.or(env_count).unwrap_or(1);
        if count == 0 || idx >= count {
            return Err(CascadeError::InvalidArgument(format!(
                "shard index {idx} is not in 0..{count} (num_shards)"
            )));
        }
        Ok(Self { idx, count })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_yaml_is_exactly_the_default_impls() {
        let parsed = Config::from_yaml_str(DEFAULT_CONFIG_YAML, "embedded").unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn quality_section_parses_and_is_validated() {
        let c = Config::from_yaml_str("quality:\n  min_speaker_similarity: 0.4\n", "t").unwrap();
        assert_eq!(c.quality.min_speaker_similarity, Some(0.4));
        assert_eq!(c.quality.min_reference_s, 1.0);
        for (y, field) in [
            (
                "quality:\n  min_speaker_similarity: 1.5\n",
                "min_speaker_similarity",
            ),
            ("quality:\n  min_reference_s: -1\n", "min_reference_s"),
            (
                "quality:\n  min_reference_rms_dbfs: .nan\n",
                "min_reference_rms_dbfs",
            ),
            ("quality:\n  min_speaker_sim: 0.4\n", "min_speaker_sim"),
        ] {
            let e = Config::from_yaml_str(y, "t").unwrap_err().to_string();
            assert!(e.contains(field), "{y}: {e}");
        }
    }

    #[test]
    fn empty_file_gives_defaults_and_partial_sections_keep_other_defaults() {
        assert_eq!(Config::from_yaml_str("{}", "t").unwrap(), Config::default());
        let c = Config::from_yaml_str("pipeline:\n  min_duration: 1.5\n", "t").unwrap();
        assert_eq!(c.pipeline.min_duration, 1.5);
        assert_eq!(c.pipeline.max_duration, 15.0);
        assert_eq!(c.compute, ComputeConfig::default());
    }

    #[test]
    fn spec_example_config_parses() {
        let y = r#"
data_root: "/mnt/data"
output_root: "/mnt/data/s2s"
manifests:
  ru: "/mnt/data/manifests/golos_filtered.csv"
  en: "/mnt/data/manifests/peoples_speech_filtered.csv"
pipeline:
  min_duration: 2.0
  max_duration: 15.0
  direction: "ruen"
  use_gpt4o: false
compute:
  num_workers: 4
  device: "cuda:0"
  log_interval: 10
"#;
        let c = Config::from_yaml_str(y, "spec").unwrap();
        assert_eq!(c.pipeline.direction.to_string(), "ruen");
        assert!(c.manifests.get(Lang::Ru).is_some() && c.manifests.get(Lang::Hi).is_none());
        assert_eq!(c.translator_spec().kind, "m2m100");
    }

    #[test]
    fn unknown_keys_are_rejected_by_name_at_every_level() {
        for (y, key) in [
            ("data_rot: /x\n", "data_rot"),
            ("pipeline:\n  min_duraton: 1\n", "min_duraton"),
            ("compute:\n  gpus: 2\n", "gpus"),
            ("batch:\n  whisper: 2\n", "whisper"),
            ("models:\n  asr:\n    knd: whisper\n", "knd"),
        ] {
            let e = Config::from_yaml_str(y, "cfg.yaml")
                .unwrap_err()
                .to_string();
            assert!(e.contains(key) && e.contains("cfg.yaml"), "{e}");
        }
        let e = Config::from_yaml_str("manifests:\n  de: /x.csv\n", "c")
            .unwrap_err()
            .to_string();
        assert!(e.contains("de"), "{e}");
    }

    #[test]
    fn bad_values_are_rejected_with_the_key() {
        for (y, key) in [
            (
                "pipeline:\n  min_duration: 5\n  max_duration: 2\n",
                "min_duration",
            ),
            ("batch:\n  tts: 0\n", "batch.tts"),
            ("pipeline:\n  direction: ruru\n", "direction"),
            ("pipeline:\n  direction: xxen\n", "direction"),
            ("compute:\n  num_workers: 0\n", "num_workers"),
        ] {
            let e = Config::from_yaml_str(y, "c").unwrap_err().to_string();
            assert!(e.contains(key), "{y}: {e}");
        }
    }

    #[test]
    fn flags_override_the_file() {
        let mut c = Config::from_yaml_str(
            "compute:\n  device: cpu\npipeline:\n  tier: Gold\n  direction: ruen\n",
            "c",
        )
        .unwrap();
        c.apply(&Overrides {
            device: Some("cuda:1".into()),
            direction: Some("enru".parse().unwrap()),
            tier: Some("any".into()),
            data_root: Some("/d".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.compute.device, "cuda:1");
        assert_eq!(c.pipeline.direction.src, Lang::En);
        assert_eq!(c.pipeline.tier, None);
        assert_eq!(c.data_root, PathBuf::from("/d"));
        let mut c2 = Config::default();
        assert!(c2
            .apply(&Overrides {
                num_workers: Some(0),
                ..Default::default()
            })
            .is_err());
    }

    #[test]
    fn direction_parses_both_spellings() {
        let d: Direction = "ru-en".parse().unwrap();
        assert_eq!((d.src, d.tgt), (Lang::Ru, Lang::En));
        assert_eq!("enru".parse::<Direction>().unwrap().to_string(), "enru");
        assert!("english".parse::<Direction>().is_err());
    }

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn shard_defaults_come_from_slurm_then_k8s_and_flags_win() {
        assert_eq!(
            Shard::resolve(None, None, env_of(&[])).unwrap(),
            Shard { idx: 0, count: 1 }
        );
        let slurm = env_of(&[
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]);
        assert_eq!(
            Shard::resolve(None, None, &slurm).unwrap(),
            Shard { idx: 3, count: 4 }
        );
        assert_eq!(
            Shard::resolve(Some(1), None, &slurm).unwrap(),
            Shard { idx: 1, count: 4 }
        );
        let one_based = env_of(&[
            ("SLURM_ARRAY_TASK_ID", "4"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]);
        assert_eq!(
            Shard::resolve(None, None, one_based).unwrap(),
            Shard { idx: 3, count: 4 }
        );
        let k8s = env_of(&[("JOB_COMPLETION_INDEX", "2"), ("VAAK_NUM_SHARDS", "8")]);
        assert_eq!(
            Shard::resolve(None, None, &k8s).unwrap(),
            Shard { idx: 2, count: 8 }
        );
        assert_eq!(
            Shard::resolve(None, Some(3), &k8s).unwrap(),
            Shard { idx: 2, count: 3 }
        );
        assert!(Shard::resolve(Some(4), Some(4), env_of(&[])).is_err());
        assert!(Shard::resolve(None, None, env_of(&[("JOB_COMPLETION_INDEX", "x")])).is_err());
        // An index without a count is out of range of the default single shard.
        assert!(Shard::resolve(None, None, env_of(&[("JOB_COMPLETION_INDEX", "1")])).is_err());
    }
}
