//! The parts of a speechbrain `hyperparams.yaml` (HyperPyYAML) that the ECAPA speaker encoder
//! needs: the `compute_features` Fbank, the `mean_var_norm` input normalisation and the
//! `embedding_model` ECAPA_TDNN.
//!
//! HyperPyYAML is YAML with tags: `!new:pkg.Class` builds an object from the mapping under it and
//! `!ref <key>` points at another top-level key (also inside strings, e.g.
//! `!ref <pretrained_path>/embedding_model.ckpt`). We parse with `serde_yaml` (which keeps unknown
//! tags), follow `!ref`s, check that each block is the class we implement, and read its
//! arguments with speechbrain 1.1.2's defaults for the ones the file leaves out. Anything we do
//! not implement (another model class, deltas, a non-ReLU activation, arithmetic in a `!ref`) is
//! a [`TeacherError::Config`] naming the field, never a silent approximation.

use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};
use vaak_audio::features::SpeechbrainFbankConfig;

use crate::error::{Result, TeacherError};

const FBANK_CLASS: &str = "speechbrain.lobes.features.Fbank";
const NORM_CLASS: &str = "speechbrain.processing.features.InputNormalization";
const ECAPA_CLASS: &str = "speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN";
/// `!ref` chains longer than this are taken as a cycle.
const MAX_REF_DEPTH: usize = 32;

/// ECAPA_TDNN constructor arguments (speechbrain 1.1.2 names and defaults).
#[derive(Clone, Debug, PartialEq)]
pub struct EcapaConfig {
    pub input_size: usize,
    pub channels: Vec<usize>,
    pub kernel_sizes: Vec<usize>,
    pub dilations: Vec<usize>,
    pub attention_channels: usize,
    pub res2net_scale: usize,
    pub se_channels: usize,
    pub global_context: bool,
    pub groups: Vec<usize>,
    pub lin_neurons: usize,
}

impl Default for EcapaConfig {
    /// speechbrain's constructor defaults with `input_size = 80`.
    fn default() -> Self {
        Self {
            input_size: 80,
            channels: vec![512, 512, 512, 512, 1536],
            kernel_sizes: vec![5, 3, 3, 3, 1],
            dilations: vec![1, 2, 3, 4, 1],
            attention_channels: 128,
            res2net_scale: 8,
            se_channels: 128,
            global_context: true,
            groups: vec![1, 1, 1, 1, 1],
            lin_neurons: 192,
        }
    }
}

impl EcapaConfig {
    /// Checks the constraints speechbrain asserts (or would fail on at run time).
    pub fn validate(&self) -> std::result::Result<(), String> {
        let n = self.channels.len();
        if n < 3 {
            return Err(format!("channels needs at least 3 entries, got {n}"));
        }
        for (name, len) in [
            ("kernel_sizes", self.kernel_sizes.len()),
            ("dilations", self.dilations.len()),
            ("groups", self.groups.len()),
        ] {
            if len != n {
                return Err(format!("{name} has {len} entries but channels has {n}"));
            }
        }
        if self.input_size == 0 || self.lin_neurons == 0 || self.attention_channels == 0 {
            return Err("input_size, lin_neurons and attention_channels must be > 0".into());
        }
        if self.se_channels == 0 || self.res2net_scale == 0 {
            return Err("se_channels and res2net_scale must be > 0".into());
        }
        if self.channels.contains(&0) {
            return Err(format!("channels must be > 0, got {:?}", self.channels));
        }
        if let Some(k) = self.kernel_sizes.iter().find(|&&k| k == 0 || k % 2 == 0) {
            return Err(format!("kernel sizes must be odd (same padding), got {k}"));
        }
        if self.dilations.contains(&0) {
            return Err("dilations must be > 0".into());
        }
        for &c in &self.channels[1..n - 1] {
            if c % self.res2net_scale != 0 {
                return Err(format!(
                    "channel count {c} is not divisible by res2net_scale {}",
                    self.res2net_scale
                ));
            }
        }
        for i in 0..n {
            let cin = match i {
                0 => self.input_size,
                _ if i == n - 1 => self.channels[n - 2] * (n - 2),
                _ => self.channels[i - 1],
            };
            let (cout, g) = (self.channels[i], self.groups[i]);
            if g == 0 || cin % g != 0 || cout % g != 0 {
                return Err(format!(
                    "groups[{i}] = {g} must divide in/out channels {cin}/{cout}"
                ));
            }
        }
        Ok(())
    }

    /// Largest "same" padding of any time convolution, in frames: a clip (or batch) needs more
    /// frames than this for speechbrain's reflect padding.
    pub fn max_time_padding(&self) -> usize {
        self.kernel_sizes
            .iter()
            .zip(&self.dilations)
            .map(|(k, d)| d * (k - 1) / 2)
            .max()
            .unwrap_or(0)
    }
}

/// `InputNormalization` arguments (only `norm_type: sentence` is implemented: the others carry
/// training statistics that `encode_batch` of a speaker model does not use as a front end).
#[derive(Clone, Debug, PartialEq)]
pub struct InputNormConfig {
    pub std_norm: bool,
    pub avoid_padding_norm: bool,
    pub epsilon: f32,
}

impl Default for InputNormConfig {
    /// What the published ECAPA file asks for: sentence mean normalisation without std.
    fn default() -> Self {
        Self {
            std_norm: false,
            avoid_padding_norm: false,
            epsilon: 1e-10,
        }
    }
}

/// Everything `EncoderClassifier.encode_batch` runs, read from `hyperparams.yaml`.
#[derive(Clone, Debug, PartialEq)]
pub struct EcapaHyperparams {
    pub fbank: SpeechbrainFbankConfig,
    pub norm: InputNormConfig,
    pub model: EcapaConfig,
}

impl EcapaHyperparams {
    /// Reads and parses a hyperparams file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| TeacherError::Config {
            path: path.to_path_buf(),
            reason: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, path)
    }

    /// Parses hyperparams text; `path` only labels errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let p = Parser::new(text, path)?;
        let fbank = p.fbank()?;
        let norm = p.norm()?;
        let model = p.ecapa()?;
        if model.input_size != fbank.n_mels {
            return Err(p.err(
                "embedding_model.input_size",
                format!(
                    "is {} but compute_features gives {} mel bins",
                    model.input_size, fbank.n_mels
                ),
            ));
        }
        model.validate().map_err(|r| p.err("embedding_model", r))?;
        Ok(Self { fbank, norm, model })
    }
}

struct Parser {
    root: Mapping,
    path: PathBuf,
}

/// A `!new:` block: its arguments and the field name it was found under (for errors).
struct Block<'a> {
    field: String,
    args: Option<&'a Mapping>,
}

impl Parser {
    fn new(text: &str, path: &Path) -> Result<Self> {
        let v: Value = serde_yaml::from_str(text).map_err(|e| TeacherError::Config {
            path: path.to_path_buf(),
            reason: format!("not valid YAML: {e}"),
        })?;
        match v {
            Value::Mapping(root) => Ok(Self {
                root,
                path: path.to_path_buf(),
            }),
            _ => Err(TeacherError::Config {
                path: path.to_path_buf(),
                reason: "top level is not a mapping".into(),
            }),
        }
    }

    fn err(&self, field: &str, reason: impl Into<String>) -> TeacherError {
        TeacherError::Config {
            path: self.path.clone(),
            reason: format!("{field}: {}", reason.into()),
        }
    }

    /// Follows `!ref <key>` (whole-value references) to the value they name.
    fn deref<'a>(&'a self, mut v: &'a Value, field: &str) -> Result<&'a Value> {
        for _ in 0..MAX_REF_DEPTH {
            match v {
                Value::Tagged(t) if tag_name(&t.tag.to_string()) == "ref" => {
                    let s = t
                        .value
                        .as_str()
                        .ok_or_else(|| self.err(field, "!ref is not a string"))?
                        .trim();
                    let key = s
                        .strip_prefix('<')
                        .and_then(|s| s.strip_suffix('>'))
                        .filter(|k| !k.contains(['<', '>']))
                        .ok_or_else(|| {
                            self.err(
                                field,
                                format!("!ref {s:?} is not a plain <key> reference (unsupported)"),
                            )
                        })?;
                    v = self.lookup(key).ok_or_else(|| {
                        self.err(field, format!("!ref <{key}> names no top-level key"))
                    })?;
                }
                _ => return Ok(v),
            }
        }
        Err(self.err(field, "!ref chain too deep (cycle?)"))
    }

    /// A top-level key, or `a[b]` for a key inside a top-level mapping.
    fn lookup(&self, key: &str) -> Option<&Value> {
        if let Some((outer, rest)) = key.split_once('[') {
            let inner = rest.strip_suffix(']')?;
            return self.root.get(outer)?.as_mapping()?.get(inner);
        }
        self.root.get(key)
    }

    /// The `!new:<class>` block that `encode_batch` uses as module `name`: `modules[name]` when
    /// the file has a `modules` mapping (as published), else the top-level key.
    fn block(&self, name: &str, class: &str) -> Result<Block<'_>> {
        let (field, raw) = match self
            .root
            .get("modules")
            .and_then(Value::as_mapping)
            .and_then(|m| m.get(name))
        {
            Some(v) => (format!("modules.{name}"), v),
            None => (
                name.to_string(),
                self.root
                    .get(name)
                    .ok_or_else(|| self.err(name, "missing"))?,
            ),
        };
        let v = self.deref(raw, &field)?;
        let Value::Tagged(t) = v else {
            return Err(self.err(&field, format!("expected a !new:{class} block")));
        };
        let tag = t.tag.to_string();
        let found = tag_name(&tag)
            .strip_prefix("new:")
            .ok_or_else(|| self.err(&field, format!("expected !new:{class}, found {tag}")))?;
        if found != class {
            return Err(self.err(&field, format!("is {found}; only {class} is implemented")));
        }
        let args = match &t.value {
            Value::Mapping(m) => Some(m),
            Value::Null => None,
            _ => return Err(self.err(&field, "arguments are not a mapping")),
        };
        Ok(Block { field, args })
    }

    fn arg<'a>(&'a self, b: &'a Block<'_>, key: &str) -> Result<Option<&'a Value>> {
        match b.args.and_then(|m| m.get(key)) {
            None => Ok(None),
            Some(v) => self.deref(v, &format!("{}.{key}", b.field)).map(|v| {
                if v.is_null() {
                    None
                } else {
                    Some(v)
                }
            }),
        }
    }

    fn usize_arg(&self, b: &Block<'_>, key: &str, default: usize) -> Result<usize> {
        match self.arg(b, key)? {
            None => Ok(default),
            Some(v) => v.as_u64().map(|x| x as usize).ok_or_else(|| {
                self.err(&format!("{}.{key}", b.field), format!("not a count: {v:?}"))
            }),
        }
    }

    fn f64_arg(&self, b: &Block<'_>, key: &str) -> Result<Option<f64>> {
        match self.arg(b, key)? {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| {
                self.err(
                    &format!("{}.{key}", b.field),
                    format!("not a number: {v:?}"),
                )
            }),
        }
    }

    fn bool_arg(&self, b: &Block<'_>, key: &str, default: bool) -> Result<bool> {
        match self.arg(b, key)? {
            None => Ok(default),
            Some(Value::Bool(x)) => Ok(*x),
            Some(Value::String(s)) if matches!(s.as_str(), "True" | "true" | "TRUE") => Ok(true),
            Some(Value::String(s)) if matches!(s.as_str(), "False" | "false" | "FALSE") => {
                Ok(false)
            }
            Some(v) => Err(self.err(&format!("{}.{key}", b.field), format!("not a bool: {v:?}"))),
        }
    }

    fn str_arg(&self, b: &Block<'_>, key: &str) -> Result<Option<String>> {
        match self.arg(b, key)? {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(self.err(
                &format!("{}.{key}", b.field),
                format!("not a string: {v:?}"),
            )),
        }
    }

    fn list_arg(&self, b: &Block<'_>, key: &str, default: &[usize]) -> Result<Vec<usize>> {
        let field = format!("{}.{key}", b.field);
        match self.arg(b, key)? {
            None => Ok(default.to_vec()),
            Some(Value::Sequence(items)) => items
                .iter()
                .map(|item| {
                    self.deref(item, &field)?
                        .as_u64()
                        .map(|x| x as usize)
                        .ok_or_else(|| self.err(&field, format!("not a count: {item:?}")))
                })
                .collect(),
            Some(v) => Err(self.err(&field, format!("not a list: {v:?}"))),
        }
    }

    /// Rejects arguments whose non-default values we do not implement.
    fn reject_if(&self, b: &Block<'_>, key: &str, unsupported: bool, why: &str) -> Result<()> {
        if unsupported {
            Err(self.err(&format!("{}.{key}", b.field), why.to_string()))
        } else {
            Ok(())
        }
    }

    fn fbank(&self) -> Result<SpeechbrainFbankConfig> {
        let b = self.block("compute_features", FBANK_CLASS)?;
        // speechbrain's own default is 40 mel bins; ECAPA files always set it.
        let n_mels = self.usize_arg(&b, "n_mels", 40)?;
        let d = SpeechbrainFbankConfig::default();
        let cfg = SpeechbrainFbankConfig {
            sample_rate: self.usize_arg(&b, "sample_rate", d.sample_rate as usize)? as u32,
            n_fft: self.usize_arg(&b, "n_fft", d.n_fft)?,
            n_mels,
            win_length_ms: self.f64_arg(&b, "win_length")?.unwrap_or(d.win_length_ms),
            hop_length_ms: self.f64_arg(&b, "hop_length")?.unwrap_or(d.hop_length_ms),
            f_min: self.f64_arg(&b, "f_min")?.unwrap_or(d.f_min),
            f_max: self.f64_arg(&b, "f_max")?,
            top_db: d.top_db,
        };
        self.reject_if(
            &b,
            "deltas",
            self.bool_arg(&b, "deltas", false)?,
            "deltas are not implemented",
        )?;
        self.reject_if(
            &b,
            "context",
            self.bool_arg(&b, "context", false)?,
            "context frames are not implemented",
        )?;
        for key in ["left_frames", "right_frames"] {
            let n = self.usize_arg(&b, key, 0)?;
            self.reject_if(&b, key, n != 0, "context frames are not implemented")?;
        }
        if let Some(shape) = self.str_arg(&b, "filter_shape")? {
            self.reject_if(
                &b,
                "filter_shape",
                shape != "triangular",
                "only triangular filters are implemented",
            )?;
        }
        Ok(cfg)
    }

    fn norm(&self) -> Result<InputNormConfig> {
        let b = self.block("mean_var_norm", NORM_CLASS)?;
        let norm_type = self
            .str_arg(&b, "norm_type")?
            .unwrap_or_else(|| "global".into());
        self.reject_if(
            &b,
            "norm_type",
            norm_type != "sentence",
            &format!("is {norm_type:?}; only \"sentence\" is implemented"),
        )?;
        self.reject_if(
            &b,
            "mean_norm",
            !self.bool_arg(&b, "mean_norm", true)?,
            "mean_norm False is not supported (speechbrain 1.1.2 rejects it too)",
        )?;
        let d = InputNormConfig::default();
        Ok(InputNormConfig {
            // speechbrain's constructor default is std_norm=True.
            std_norm: self.bool_arg(&b, "std_norm", true)?,
            avoid_padding_norm: self.bool_arg(&b, "avoid_padding_norm", false)?,
            epsilon: self.f64_arg(&b, "epsilon")?.map_or(d.epsilon, |e| e as f32),
        })
    }

    fn ecapa(&self) -> Result<EcapaConfig> {
        let b = self.block("embedding_model", ECAPA_CLASS)?;
        let d = EcapaConfig::default();
        let input_size = self
            .arg(&b, "input_size")?
            .ok_or_else(|| self.err(&format!("{}.input_size", b.field), "missing"))?
            .as_u64()
            .ok_or_else(|| self.err(&format!("{}.input_size", b.field), "not a count"))?
            as usize;
        if let Some(act) = b.args.and_then(|m| m.get("activation")) {
            let name = match self.deref(act, &format!("{}.activation", b.field))? {
                Value::Tagged(t) => t.tag.to_string(),
                v => format!("{v:?}"),
            };
            self.reject_if(
                &b,
                "activation",
                !matches!(
                    tag_name(&name),
                    "name:torch.nn.ReLU" | "name:torch.nn.modules.activation.ReLU"
                ),
                &format!("{name}: only torch.nn.ReLU is implemented"),
            )?;
        }
        Ok(EcapaConfig {
            input_size,
            channels: self.list_arg(&b, "channels", &d.channels)?,
            kernel_sizes: self.list_arg(&b, "kernel_sizes", &d.kernel_sizes)?,
            dilations: self.list_arg(&b, "dilations", &d.dilations)?,
            attention_channels: self.usize_arg(&b, "attention_channels", d.attention_channels)?,
            res2net_scale: self.usize_arg(&b, "res2net_scale", d.res2net_scale)?,
            se_channels: self.usize_arg(&b, "se_channels", d.se_channels)?,
            global_context: self.bool_arg(&b, "global_context", d.global_context)?,
            groups: self.list_arg(&b, "groups", &d.groups)?,
            lin_neurons: self.usize_arg(&b, "lin_neurons", d.lin_neurons)?,
        })
    }
}

/// A serde_yaml tag without its leading `!`s.
fn tag_name(tag: &str) -> &str {
    tag.trim_start_matches('!')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published `speechbrain/spkrec-ecapa-voxceleb` hyperparams.yaml, abridged only in
    /// comments.
    const PUBLISHED: &str = r#"
n_mels: 80
pretrained_path: speechbrain/spkrec-ecapa-voxceleb
out_n_neurons: 7205
compute_features: !new:speechbrain.lobes.features.Fbank
    n_mels: !ref <n_mels>
mean_var_norm: !new:speechbrain.processing.features.InputNormalization
    norm_type: sentence
    std_norm: False
embedding_model: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN
    input_size: !ref <n_mels>
    channels: [1024, 1024, 1024, 1024, 3072]
    kernel_sizes: [5, 3, 3, 3, 1]
    dilations: [1, 2, 3, 4, 1]
    attention_channels: 128
    lin_neurons: 192
classifier: !new:speechbrain.lobes.models.ECAPA_TDNN.Classifier
    input_size: 192
    out_neurons: !ref <out_n_neurons>
mean_var_norm_emb: !new:speechbrain.processing.features.InputNormalization
    norm_type: global
    std_norm: False
modules:
    compute_features: !ref <compute_features>
    mean_var_norm: !ref <mean_var_norm>
    embedding_model: !ref <embedding_model>
    mean_var_norm_emb: !ref <mean_var_norm_emb>
    classifier: !ref <classifier>
label_encoder: !new:speechbrain.dataio.encoder.CategoricalEncoder
pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        embedding_model: !ref <embedding_model>
    paths:
        embedding_model: !ref <pretrained_path>/embedding_model.ckpt
"#;

    fn parse(text: &str) -> Result<EcapaHyperparams> {
        EcapaHyperparams::parse(text, Path::new("hyperparams.yaml"))
    }

    #[test]
    fn published_layout_parses_with_defaults() {
        let hp = parse(PUBLISHED).unwrap();
        assert_eq!(hp.fbank, SpeechbrainFbankConfig::default());
        assert_eq!(hp.norm, InputNormConfig::default());
        assert_eq!(
            hp.model,
            EcapaConfig {
                channels: vec![1024, 1024, 1024, 1024, 3072],
                ..EcapaConfig::default()
            }
        );
        assert_eq!(hp.model.lin_neurons, 192);
        assert_eq!(hp.model.max_time_padding(), 4);
    }

    fn config_reason(text: &str) -> String {
        match parse(text) {
            Err(TeacherError::Config { reason, .. }) => reason,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn unsupported_or_broken_blocks_are_named() {
        let r = config_reason(&PUBLISHED.replace("norm_type: sentence", "norm_type: batch"));
        assert!(
            r.contains("mean_var_norm") && r.contains("norm_type"),
            "{r}"
        );
        let r = config_reason(&PUBLISHED.replace("ECAPA_TDNN.ECAPA_TDNN", "Xvector.Xvector"));
        assert!(r.contains("embedding_model"), "{r}");
        let r = config_reason(
            &PUBLISHED.replace("input_size: !ref <n_mels>", "input_size: !ref <n_melz>"),
        );
        assert!(r.contains("<n_melz>"), "{r}");
        let r = config_reason(&PUBLISHED.replace("[5, 3, 3, 3, 1]", "[5, 3, 3, 1]"));
        assert!(r.contains("kernel_sizes"), "{r}");
        let r =
            config_reason(&PUBLISHED.replace("    n_mels: !ref <n_mels>\n", "    n_mels: 40\n"));
        assert!(r.contains("input_size"), "{r}");
        let r = config_reason("just text");
        assert!(r.contains("mapping"), "{r}");
    }
}
