//! Codec configuration: our own [`CodecConfig`], and the parser for transformers'
//! `EncodecConfig` `config.json` (the layout of `facebook/encodec_24khz`).
//!
//! # Quirks of the HF EnCodec config handled here
//!
//! - Keys may be missing in older files (`use_conv_shortcut` predates transformers 4.33, `dtype`
//!   replaced `torch_dtype`); missing keys take `EncodecConfig`'s defaults.
//! - `codebook_dim: null` means `hidden_size`.
//! - The per-codebook bitrate uses an *integer* frame rate, `ceil(sampling_rate / hop)`, and
//!   `num_quantizers = floor(1000 * max(target_bandwidths) / (frame_rate * ceil(log2(K))))`;
//!   a bandwidth maps to `max(1, floor(1000 * bw / (log2(K) * frame_rate)))` codebooks.
//! - `upsampling_ratios` is in *decoder* order; the encoder downsamples in reverse order.
//! - Only what streams is accepted: `use_causal_conv: true`, `trim_right_ratio: 1.0`,
//!   `norm_type: weight_norm`, `normalize: false`, `chunk_length_s: null` (the 48 kHz model's
//!   clip-level normalisation and overlapping chunks cannot stream); anything else is a
//!   [`CodecError::Unsupported`] naming the field.

use serde::{Deserialize, Serialize};
use vaak_nn::transformer::{FfnKind, NormKind, RopeKind, TransformerConfig};

use crate::error::{CodecError, Result};

/// How a whole-clip conv pads the clip edges in [`crate::EdgeMode::Reference`] mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PadMode {
    /// Mirror the clip at its edges (EnCodec's default).
    Reflect,
    /// Zeros.
    Zero,
    /// Repeat the edge sample (Mimi's downsampling conv).
    Replicate,
}

/// A SEANet encoder/decoder pair (the EnCodec layout, also used by vaak's own presets).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeanetConfig {
    /// Audio channels in and out.
    pub channels: usize,
    /// Latent width (`hidden_size`).
    pub dimension: usize,
    /// Channels after the first conv; doubled at each downsampling.
    pub n_filters: usize,
    /// Residual blocks per resolution.
    pub n_residual_layers: usize,
    /// Upsampling ratios in decoder order; the encoder uses them reversed.
    pub ratios: Vec<usize>,
    pub kernel_size: usize,
    pub last_kernel_size: usize,
    pub residual_kernel_size: usize,
    /// Dilation of residual block `j` is `dilation_base^j`.
    pub dilation_base: usize,
    /// Hidden width of a residual block is `dim / compress`.
    pub compress: usize,
    /// LSTM layers after the encoder convs and before the decoder convs (0: none).
    pub lstm_layers: usize,
    /// A 1x1 conv on the residual skip (else identity).
    pub conv_shortcut: bool,
    /// Whole-clip edge padding in reference mode.
    pub pad_mode: PadMode,
    /// Whether conv weights are stored weight-normalised (`weight_g`/`weight_v` or
    /// `parametrizations.weight.original0/1`) rather than as a plain `weight`.
    pub weight_norm: bool,
}

impl SeanetConfig {
    /// Samples per latent frame: the product of the ratios.
    pub fn hop_length(&self) -> usize {
        self.ratios.iter().product()
    }
}

/// Mimi's additions to the SEANet + RVQ codec: transformers on the latent, a strided
/// down/upsampling pair, and a split quantizer (semantic + acoustic) with projections.
#[derive(Clone, Debug, PartialEq)]
pub struct LatentTransformerConfig {
    /// Shared by the encoder and decoder transformers.
    pub transformer: TransformerConfig,
    /// Leading codebooks quantized by the semantic RVQ; the rest by the acoustic one.
    pub num_semantic: usize,
    /// Width of the quantizer (1x1 projections from/to the latent).
    pub vq_dim: usize,
    /// Groups of the upsampling conv-transpose (`hidden_size` = depthwise).
    pub upsample_groups: usize,
}

/// Everything needed to build a codec.
///
/// vaak's own checkpoints store it as `config.json` (serde, these field names; see
/// [`CodecConfig::from_vaak_json`]). Mimi's `latent` part is not serialised: vaak's format is
/// for plain-RVQ codecs (EnCodec style), and [`CodecConfig::to_vaak_json`] refuses others.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodecConfig {
    pub sample_rate: usize,
    pub seanet: SeanetConfig,
    /// Extra downsampling of the latent after the SEANet encoder (1: none).
    #[serde(default = "d_one")]
    pub latent_stride: usize,
    /// Mimi's latent transformers and split RVQ (`None`: EnCodec-style plain RVQ).
    #[serde(skip)]
    pub latent: Option<LatentTransformerConfig>,
    /// Entries per codebook.
    pub codebook_size: usize,
    /// Most codebooks the checkpoint has.
    pub num_quantizers: usize,
    /// Bandwidths (kbps) the checkpoint lists, ascending; may be empty.
    #[serde(default)]
    pub target_bandwidths: Vec<f64>,
    /// Codebooks used until the caller sets another number.
    pub default_codebooks: usize,
}

impl CodecConfig {
    /// Samples per frame (SEANet hop times the latent stride).
    pub fn hop_length(&self) -> usize {
        self.seanet.hop_length() * self.latent_stride
    }

    /// Frames per second (exact, possibly fractional).
    pub fn frame_rate(&self) -> f64 {
        self.sample_rate as f64 / self.hop_length() as f64
    }

    /// The integer frame rate HF EnCodec uses for bitrates: `ceil(sample_rate / hop)`.
    pub fn hf_frame_rate(&self) -> usize {
        self.sample_rate.div_ceil(self.hop_length())
    }

    /// Codebooks for a bandwidth in kbps, as HF's `get_num_quantizers_for_bandwidth`.
    pub fn codebooks_for_bandwidth(&self, kbps: f64) -> usize {
        let bw_per_q = (self.codebook_size as f64).log2() * self.hf_frame_rate() as f64;
        ((kbps * 1000.0 / bw_per_q).floor() as usize).max(1)
    }

    /// vaak's own 16 kHz codec: 8 codebooks of 1024 x 48, hop 640 (25 Hz, 2 kbps at 8
    /// codebooks; why 25 Hz: docs/codec.md), an EnCodec-style SEANet (ratios 8-5-4-4) without
    /// LSTM or conv shortcuts, plain weights (no weight norm), zero padding.
    ///
    /// Sized to train on a few CPU cores and to ship in the repository: 12 base filters
    /// (12-24-48-96-192 channels), latent and codebook width 48, last conv kernel 3 (as Mimi).
    /// About 0.85 M conv parameters plus 0.39 M codebook entries: ~5 MB in f32. Most of the
    /// training cost sits in the 16 kHz layers, which is what the small base width buys down.
    /// No LSTM: it is sequential over frames (slow to train on a CPU) and the causal convs
    /// already see ~1.3 s of context at the latent. A trained checkpoint's `config.json`
    /// overrides every field.
    pub fn vaak_16k() -> Self {
        let seanet = SeanetConfig {
            channels: 1,
            dimension: 48,
            n_filters: 12,
            n_residual_layers: 1,
            ratios: vec![8, 5, 4, 4],
            kernel_size: 7,
            last_kernel_size: 3,
            residual_kernel_size: 3,
            dilation_base: 2,
            compress: 2,
            lstm_layers: 0,
            conv_shortcut: false,
            pad_mode: PadMode::Zero,
            weight_norm: false,
        };
        Self {
            sample_rate: 16_000,
            seanet,
            latent_stride: 1,
            latent: None,
            codebook_size: 1024,
            num_quantizers: 8,
            target_bandwidths: vec![],
            default_codebooks: 8,
        }
    }

    /// Parses vaak's own `config.json` (see the type docs); `path` labels errors. Unknown or
    /// missing fields are errors naming the field.
    pub fn from_vaak_json(text: &str, path: &str) -> Result<Self> {
        let cfg: Self = parse_json(text, path)?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// vaak's `config.json` text for this config (plain-RVQ codecs only).
    pub fn to_vaak_json(&self) -> Result<String> {
        if self.latent.is_some() {
            return Err(CodecError::Unsupported {
                path: "config.json".into(),
                field: "latent",
                value: "Mimi latent transformer".into(),
                reason: "vaak's checkpoint format holds plain-RVQ (EnCodec-style) codecs only"
                    .into(),
            });
        }
        serde_json::to_string_pretty(self).map_err(|e| CodecError::ConfigFile {
            path: "config.json".into(),
            reason: e.to_string(),
        })
    }

    /// Checks the invariants the model relies on.
    pub fn validate(&self, path: &str) -> Result<()> {
        let bad = |field: &'static str, reason: String| CodecError::BadConfig {
            path: path.to_string(),
            field,
            reason,
        };
        let s = &self.seanet;
        for (field, v) in [
            ("sampling_rate", self.sample_rate),
            ("audio_channels", s.channels),
            ("hidden_size", s.dimension),
            ("num_filters", s.n_filters),
            ("kernel_size", s.kernel_size),
            ("last_kernel_size", s.last_kernel_size),
            ("residual_kernel_size", s.residual_kernel_size),
            ("dilation_growth_rate", s.dilation_base),
            ("compress", s.compress),
            ("codebook_size", self.codebook_size),
            ("num_quantizers", self.num_quantizers),
        ] {
            if v == 0 {
                return Err(bad(field, "must be at least 1".into()));
            }
        }
        if s.ratios.is_empty() || s.ratios.contains(&0) {
            return Err(bad(
                "upsampling_ratios",
                format!("must be non-empty positive integers, got {:?}", s.ratios),
            ));
        }
        if s.n_filters / s.compress == 0 {
            return Err(bad(
                "compress",
                format!(
                    "num_filters {} / compress {} is zero",
                    s.n_filters, s.compress
                ),
            ));
        }
        if self.default_codebooks == 0 || self.default_codebooks > self.num_quantizers {
            return Err(bad(
                "target_bandwidths",
                format!(
                    "default codebooks {} not in 1..={}",
                    self.default_codebooks, self.num_quantizers
                ),
            ));
        }
        Ok(())
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(text: &str, path: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| CodecError::ConfigFile {
        path: path.to_string(),
        reason: e.to_string(),
    })
}

/// The error for a published config field vaak cannot run or stream.
fn unsupported<T>(path: &str, field: &'static str, value: String, reason: &str) -> Result<T> {
    Err(CodecError::Unsupported {
        path: path.to_string(),
        field,
        value,
        reason: reason.to_string(),
    })
}

/// The checks every transformers codec config shares: its `model_type`, when given, is the
/// expected one (`model` = (model_type, name in messages)), and its SEANet convs can stream
/// (causal, all trimming on the right).
fn check_streamable(
    path: &str,
    (model_type, name): (&str, &str),
    got_model_type: Option<&str>,
    use_causal_conv: bool,
    trim_right_ratio: f64,
) -> Result<()> {
    if let Some(mt) = got_model_type.filter(|mt| *mt != model_type) {
        let expected = format!("expected \"{model_type}\"");
        return unsupported(path, "model_type", mt.to_string(), &expected);
    }
    if !use_causal_conv {
        let reason = format!("only causal {name} streams");
        return unsupported(path, "use_causal_conv", "false".into(), &reason);
    }
    if trim_right_ratio != 1.0 {
        return unsupported(
            path,
            "trim_right_ratio",
            trim_right_ratio.to_string(),
            "only 1.0 (all trimming on the right) is causal",
        );
    }
    Ok(())
}

/// The fields of a transformers codec config that decide whether it can stream; the same
/// names and defaults in EnCodec's and Mimi's schemas.
#[derive(Clone, Debug, Deserialize)]
pub struct HfStreamingFields {
    #[serde(default)]
    pub model_type: Option<String>,
    #[serde(default = "d_true")]
    pub use_causal_conv: bool,
    #[serde(default = "d_trim")]
    pub trim_right_ratio: f64,
}

/// A transformers codec `config.json` (EnCodec, Mimi): parsed, checked for streaming, then
/// turned into vaak's [`CodecConfig`]. The two schemas share field names but not defaults, so
/// each keeps its own struct; what they do with it is written once here.
pub trait HfCodecConfig: serde::de::DeserializeOwned {
    /// `(model_type, the model's name in messages)`.
    const MODEL: (&'static str, &'static str);

    fn streaming(&self) -> &HfStreamingFields;

    /// The conversion proper, after the shared checks passed.
    fn convert(&self, path: &str) -> Result<CodecConfig>;

    /// Parses `config.json` text; `path` only labels errors.
    fn from_json(text: &str, path: &str) -> Result<Self> {
        parse_json(text, path)
    }

    /// Our config, or an error naming the first field vaak cannot run or stream.
    fn to_codec_config(&self, path: &str) -> Result<CodecConfig> {
        let f = self.streaming();
        check_streamable(
            path,
            Self::MODEL,
            f.model_type.as_deref(),
            f.use_causal_conv,
            f.trim_right_ratio,
        )?;
        self.convert(path)
    }
}

fn d_target_bandwidths() -> Vec<f64> {
    vec![1.5, 3.0, 6.0, 12.0, 24.0]
}
fn d_sampling_rate() -> usize {
    24_000
}
fn d_one() -> usize {
    1
}
fn d_hidden() -> usize {
    128
}
fn d_filters() -> usize {
    32
}
fn d_ratios() -> Vec<usize> {
    vec![8, 5, 4, 2]
}
fn d_norm() -> String {
    "weight_norm".into()
}
fn d_seven() -> usize {
    7
}
fn d_three() -> usize {
    3
}
fn d_two() -> usize {
    2
}
fn d_true() -> bool {
    true
}
fn d_reflect() -> String {
    "reflect".into()
}
fn d_trim() -> f64 {
    1.0
}
fn d_codebook_size() -> usize {
    1024
}

/// transformers' `EncodecConfig` as stored in `config.json` (HF key names and defaults).
#[derive(Clone, Debug, Deserialize)]
pub struct HfEncodecConfig {
    /// `model_type`, `use_causal_conv`, `trim_right_ratio`: what the streaming checks read.
    #[serde(flatten)]
    pub streaming: HfStreamingFields,
    #[serde(default = "d_target_bandwidths")]
    pub target_bandwidths: Vec<f64>,
    #[serde(default = "d_sampling_rate")]
    pub sampling_rate: usize,
    #[serde(default = "d_one")]
    pub audio_channels: usize,
    #[serde(default)]
    pub normalize: bool,
    #[serde(default)]
    pub chunk_length_s: Option<f64>,
    #[serde(default)]
    pub overlap: Option<f64>,
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_filters")]
    pub num_filters: usize,
    #[serde(default = "d_one")]
    pub num_residual_layers: usize,
    #[serde(default = "d_ratios")]
    pub upsampling_ratios: Vec<usize>,
    #[serde(default = "d_norm")]
    pub norm_type: String,
    #[serde(default = "d_seven")]
    pub kernel_size: usize,
    #[serde(default = "d_seven")]
    pub last_kernel_size: usize,
    #[serde(default = "d_three")]
    pub residual_kernel_size: usize,
    #[serde(default = "d_two")]
    pub dilation_growth_rate: usize,
    #[serde(default = "d_reflect")]
    pub pad_mode: String,
    #[serde(default = "d_two")]
    pub compress: usize,
    #[serde(default = "d_two")]
    pub num_lstm_layers: usize,
    #[serde(default = "d_codebook_size")]
    pub codebook_size: usize,
    #[serde(default)]
    pub codebook_dim: Option<usize>,
    #[serde(default = "d_true")]
    pub use_conv_shortcut: bool,
}

impl HfCodecConfig for HfEncodecConfig {
    const MODEL: (&'static str, &'static str) = ("encodec", "EnCodec");

    fn streaming(&self) -> &HfStreamingFields {
        &self.streaming
    }

    fn convert(&self, path: &str) -> Result<CodecConfig> {
        let unsupported = |field, value, reason| unsupported(path, field, value, reason);
        if self.norm_type != "weight_norm" {
            return unsupported(
                "norm_type",
                self.norm_type.clone(),
                "time_group_norm normalises over the whole clip and cannot stream",
            );
        }
        if self.normalize {
            return unsupported(
                "normalize",
                "true".into(),
                "clip-level loudness normalisation cannot stream",
            );
        }
        if let Some(c) = self.chunk_length_s {
            return unsupported(
                "chunk_length_s",
                c.to_string(),
                "overlapping chunked encoding (the 48 kHz model) is not supported",
            );
        }
        let pad_mode = match self.pad_mode.as_str() {
            "reflect" => PadMode::Reflect,
            "constant" | "zeros" | "zero" => PadMode::Zero,
            other => return unsupported("pad_mode", other.into(), "use reflect or constant"),
        };
        let codebook_dim = self.codebook_dim.unwrap_or(self.hidden_size);
        if codebook_dim != self.hidden_size {
            return Err(CodecError::BadConfig {
                path: path.to_string(),
                field: "codebook_dim",
                reason: format!(
                    "{codebook_dim} differs from hidden_size {}; EnCodec has no RVQ projection",
                    self.hidden_size
                ),
            });
        }
        if self.target_bandwidths.is_empty() {
            return Err(CodecError::BadConfig {
                path: path.to_string(),
                field: "target_bandwidths",
                reason: "empty".into(),
            });
        }
        if !self.codebook_size.is_power_of_two() {
            return Err(CodecError::BadConfig {
                path: path.to_string(),
                field: "codebook_size",
                reason: format!("{} is not a power of 2", self.codebook_size),
            });
        }
        let seanet = SeanetConfig {
            channels: self.audio_channels,
            dimension: self.hidden_size,
            n_filters: self.num_filters,
            n_residual_layers: self.num_residual_layers,
            ratios: self.upsampling_ratios.clone(),
            kernel_size: self.kernel_size,
            last_kernel_size: self.last_kernel_size,
            residual_kernel_size: self.residual_kernel_size,
            dilation_base: self.dilation_growth_rate,
            compress: self.compress,
            lstm_layers: self.num_lstm_layers,
            conv_shortcut: self.use_conv_shortcut,
            pad_mode,
            weight_norm: true,
        };
        let mut cfg = CodecConfig {
            sample_rate: self.sampling_rate,
            seanet,
            latent_stride: 1,
            latent: None,
            codebook_size: self.codebook_size,
            num_quantizers: 1,
            target_bandwidths: self.target_bandwidths.clone(),
            default_codebooks: 1,
        };
        if cfg.hop_length() == 0 || self.upsampling_ratios.contains(&0) {
            return Err(CodecError::BadConfig {
                path: path.to_string(),
                field: "upsampling_ratios",
                reason: format!("must be positive, got {:?}", self.upsampling_ratios),
            });
        }
        let nbits = (self.codebook_size as f64).log2().ceil() as usize;
        let max_bw = self
            .target_bandwidths
            .iter()
            .copied()
            .fold(f64::MIN, f64::max);
        cfg.num_quantizers =
            ((1000.0 * max_bw) / (cfg.hf_frame_rate() * nbits.max(1)) as f64).floor() as usize;
        // HF's default bandwidth is the first listed one.
        cfg.default_codebooks = cfg
            .codebooks_for_bandwidth(self.target_bandwidths[0])
            .min(cfg.num_quantizers.max(1));
        cfg.validate(path)?;
        Ok(cfg)
    }
}

fn d_mimi_hidden() -> usize {
    512
}
fn d_mimi_filters() -> usize {
    64
}
fn d_mimi_ratios() -> Vec<usize> {
    vec![8, 6, 5, 4]
}
fn d_constant() -> String {
    "constant".into()
}
fn d_2048() -> usize {
    2048
}
fn d_256() -> usize {
    256
}
fn d_32() -> usize {
    32
}
fn d_8() -> usize {
    8
}
fn d_gelu() -> String {
    "gelu".into()
}
fn d_8000() -> usize {
    8000
}
fn d_eps() -> f64 {
    1e-5
}
fn d_250() -> usize {
    250
}
fn d_ls() -> f64 {
    0.01
}

/// `rope_parameters` of transformers 5 configs.
#[derive(Clone, Debug, Deserialize)]
pub struct HfRopeParameters {
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_type: Option<String>,
}

/// transformers' `MimiConfig` as stored in `config.json` (the flat kyutai/mimi layout).
///
/// Quirks: the published file says `frame_rate` (12.5) and `rope_theta`; transformers 5 writes
/// `_frame_rate` and `rope_parameters.rope_theta`. Both are read. Without a frame rate it is
/// `sampling_rate / (hop * 2)`, as transformers computes it. `head_dim` must be
/// `hidden_size / num_attention_heads` (vaak's transformer assumes so).
#[derive(Clone, Debug, Deserialize)]
pub struct HfMimiConfig {
    /// `model_type`, `use_causal_conv`, `trim_right_ratio`: what the streaming checks read.
    #[serde(flatten)]
    pub streaming: HfStreamingFields,
    #[serde(default = "d_sampling_rate")]
    pub sampling_rate: usize,
    #[serde(default = "d_one")]
    pub audio_channels: usize,
    #[serde(default = "d_mimi_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_mimi_filters")]
    pub num_filters: usize,
    #[serde(default = "d_one")]
    pub num_residual_layers: usize,
    #[serde(default = "d_mimi_ratios")]
    pub upsampling_ratios: Vec<usize>,
    #[serde(default = "d_seven")]
    pub kernel_size: usize,
    #[serde(default = "d_three")]
    pub last_kernel_size: usize,
    #[serde(default = "d_three")]
    pub residual_kernel_size: usize,
    #[serde(default = "d_two")]
    pub dilation_growth_rate: usize,
    #[serde(default = "d_constant")]
    pub pad_mode: String,
    #[serde(default = "d_two")]
    pub compress: usize,
    #[serde(default = "d_2048")]
    pub codebook_size: usize,
    #[serde(default = "d_256")]
    pub codebook_dim: usize,
    #[serde(default = "d_32")]
    pub num_quantizers: usize,
    #[serde(default)]
    pub use_conv_shortcut: bool,
    #[serde(default)]
    pub vector_quantization_hidden_dimension: Option<usize>,
    #[serde(default = "d_one")]
    pub num_semantic_quantizers: usize,
    #[serde(default)]
    pub upsample_groups: Option<usize>,
    #[serde(default = "d_8")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_2048")]
    pub intermediate_size: usize,
    #[serde(default = "d_8")]
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "d_gelu")]
    pub hidden_act: String,
    #[serde(default = "d_8000")]
    pub max_position_embeddings: usize,
    #[serde(default = "d_eps")]
    pub norm_eps: f64,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_parameters: Option<HfRopeParameters>,
    #[serde(default = "d_250")]
    pub sliding_window: usize,
    #[serde(default = "d_ls")]
    pub layer_scale_initial_scale: f64,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub frame_rate: Option<f64>,
    #[serde(default, rename = "_frame_rate")]
    pub frame_rate_private: Option<f64>,
}

impl HfCodecConfig for HfMimiConfig {
    const MODEL: (&'static str, &'static str) = ("mimi", "Mimi");

    fn streaming(&self) -> &HfStreamingFields {
        &self.streaming
    }

    fn convert(&self, path: &str) -> Result<CodecConfig> {
        let unsupported = |field, value, reason| unsupported(path, field, value, reason);
        if self.attention_bias {
            return unsupported(
                "attention_bias",
                "true".into(),
                "vaak's transformer would also give the MLP a bias, which Mimi's lacks",
            );
        }
        if self.hidden_act != "gelu" {
            return unsupported("hidden_act", self.hidden_act.clone(), "only exact gelu");
        }
        let pad_mode = match self.pad_mode.as_str() {
            "constant" | "zeros" | "zero" => PadMode::Zero,
            "reflect" => PadMode::Reflect,
            "replicate" => PadMode::Replicate,
            other => return unsupported("pad_mode", other.into(), "use constant or reflect"),
        };
        let heads = self.num_attention_heads.max(1);
        let head_dim = self.head_dim.unwrap_or(self.hidden_size / heads);
        if head_dim * heads != self.hidden_size {
            return unsupported(
                "head_dim",
                head_dim.to_string(),
                "vaak's transformer needs head_dim * num_attention_heads == hidden_size",
            );
        }
        let theta = self
            .rope_parameters
            .as_ref()
            .and_then(|r| r.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(10_000.0);
        if let Some(t) = self
            .rope_parameters
            .as_ref()
            .and_then(|r| r.rope_type.clone())
        {
            if t != "default" {
                return unsupported("rope_parameters.rope_type", t, "only default RoPE");
            }
        }
        let seanet = SeanetConfig {
            channels: self.audio_channels,
            dimension: self.hidden_size,
            n_filters: self.num_filters,
            n_residual_layers: self.num_residual_layers,
            ratios: self.upsampling_ratios.clone(),
            kernel_size: self.kernel_size,
            last_kernel_size: self.last_kernel_size,
            residual_kernel_size: self.residual_kernel_size,
            dilation_base: self.dilation_growth_rate,
            compress: self.compress,
            lstm_layers: 0,
            conv_shortcut: self.use_conv_shortcut,
            pad_mode,
            weight_norm: false,
        };
        let hop = seanet.hop_length();
        if hop == 0 {
            return Err(CodecError::BadConfig {
                path: path.to_string(),
                field: "upsampling_ratios",
                reason: format!("must be positive, got {:?}", self.upsampling_ratios),
            });
        }
        let encodec_rate = self.sampling_rate.div_ceil(hop) as f64;
        let frame_rate = self
            .frame_rate
            .or(self.frame_rate_private)
            .unwrap_or(self.sampling_rate as f64 / (hop * 2) as f64);
        let latent_stride = (encodec_rate / frame_rate) as usize;
        if latent_stride == 0 {
            return Err(CodecError::BadConfig {
                path: path.to_string(),
                field: "frame_rate",
                reason: format!("{frame_rate} is above the SEANet rate {encodec_rate}"),
            });
        }
        if self.num_semantic_quantizers == 0 || self.num_semantic_quantizers >= self.num_quantizers
        {
            return Err(CodecError::BadConfig {
                path: path.to_string(),
                field: "num_semantic_quantizers",
                reason: format!(
                    "{} must be in 1..num_quantizers ({})",
                    self.num_semantic_quantizers, self.num_quantizers
                ),
            });
        }
        let transformer = TransformerConfig {
            d_model: self.hidden_size,
            num_heads: heads,
            num_kv_heads: self.num_key_value_heads,
            num_layers: self.num_hidden_layers,
            dim_feedforward: self.intermediate_size,
            norm: NormKind::LayerNorm,
            norm_eps: self.norm_eps,
            ffn: FfnKind::Gelu,
            bias: false,
            causal: true,
            context: Some(self.sliding_window),
            max_period: theta,
            rope: RopeKind::default(),
            layer_scale: Some(self.layer_scale_initial_scale),
            final_norm: false,
            max_seq_len: self.max_position_embeddings,
        };
        let cfg = CodecConfig {
            sample_rate: self.sampling_rate,
            seanet,
            latent_stride,
            latent: Some(LatentTransformerConfig {
                transformer,
                num_semantic: self.num_semantic_quantizers,
                vq_dim: self
                    .vector_quantization_hidden_dimension
                    .unwrap_or(self.codebook_dim),
                upsample_groups: self.upsample_groups.unwrap_or(self.hidden_size),
            }),
            codebook_size: self.codebook_size,
            num_quantizers: self.num_quantizers,
            target_bandwidths: vec![],
            default_codebooks: self.num_quantizers,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }
}
