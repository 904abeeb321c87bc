//! The converter's `config.json`, in the schema `myshell-ai/OpenVoiceV2` publishes
//! (`_version_`, `data`, `model`). Keys the converter does not use (the text encoder's
//! `filter_channels`, `n_heads`, ...) are accepted and ignored, as OpenVoice itself does.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Result, TeacherError};

/// `data`: the audio front end.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct DataConfig {
    pub sampling_rate: u32,
    /// FFT size; the spectrogram has `filter_length / 2 + 1` bins.
    pub filter_length: usize,
    pub hop_length: usize,
    pub win_length: usize,
    /// 0 for the tone-colour converter (speaker embeddings come from the reference encoder).
    #[serde(default)]
    pub n_speakers: usize,
}

/// `model`: the parts of `SynthesizerTrn` the converter builds.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ModelConfig {
    /// V2 feeds zeros instead of the source embedding to the posterior encoder and decoder.
    #[serde(default)]
    pub zero_g: bool,
    pub inter_channels: usize,
    pub hidden_channels: usize,
    /// `"1"` (three dilated conv pairs) or `"2"` (two convs), as HiFi-GAN.
    pub resblock: String,
    pub resblock_kernel_sizes: Vec<usize>,
    pub resblock_dilation_sizes: Vec<Vec<usize>>,
    pub upsample_rates: Vec<usize>,
    pub upsample_initial_channel: usize,
    pub upsample_kernel_sizes: Vec<usize>,
    #[serde(default = "default_gin")]
    pub gin_channels: usize,
}

fn default_gin() -> usize {
    256
}

/// The whole `config.json`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct OpenVoiceConfig {
    #[serde(rename = "_version_", default)]
    pub version: Option<String>,
    pub data: DataConfig,
    pub model: ModelConfig,
}

impl OpenVoiceConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| TeacherError::Config {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let cfg: Self = serde_json::from_str(text).map_err(|e| TeacherError::Config {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        cfg.validate().map_err(|reason| TeacherError::Config {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(cfg)
    }

    /// Number of linear-spectrogram bins.
    pub fn spec_channels(&self) -> usize {
        self.data.filter_length / 2 + 1
    }

    /// Checks what the model code would otherwise assert or index out of range on.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let d = &self.data;
        let m = &self.model;
        if d.n_speakers != 0 {
            return Err(format!(
                "data.n_speakers is {}; the tone-colour converter has n_speakers = 0",
                d.n_speakers
            ));
        }
        if d.sampling_rate == 0 || d.hop_length == 0 || d.filter_length < 2 {
            return Err("data.sampling_rate, hop_length must be > 0, filter_length >= 2".into());
        }
        if d.win_length == 0 || d.win_length > d.filter_length {
            return Err(format!(
                "data.win_length {} must be in 1..={} (filter_length)",
                d.win_length, d.filter_length
            ));
        }
        if d.hop_length > d.filter_length {
            return Err("data.hop_length must not exceed filter_length".into());
        }
        if m.inter_channels == 0 || !m.inter_channels.is_multiple_of(2) {
            return Err(format!(
                "model.inter_channels {} must be even and > 0 (the flow splits it in halves)",
                m.inter_channels
            ));
        }
        if m.hidden_channels == 0 || m.gin_channels == 0 {
            return Err("model.hidden_channels and gin_channels must be > 0".into());
        }
        if m.resblock != "1" && m.resblock != "2" {
            return Err(format!(
                "model.resblock {:?} must be \"1\" or \"2\"",
                m.resblock
            ));
        }
        if m.resblock_kernel_sizes.is_empty()
            || m.resblock_kernel_sizes.len() != m.resblock_dilation_sizes.len()
        {
            return Err(
                "model.resblock_kernel_sizes and resblock_dilation_sizes must be non-empty and \
                 of equal length"
                    .into(),
            );
        }
        let need = if m.resblock == "1" { 3 } else { 2 };
        if m.resblock_dilation_sizes.iter().any(|d| d.len() < need) {
            return Err(format!(
                "model.resblock_dilation_sizes: resblock {} needs {need} dilations each",
                m.resblock
            ));
        }
        if m.upsample_rates.is_empty() || m.upsample_rates.len() != m.upsample_kernel_sizes.len() {
            return Err(
                "model.upsample_rates and upsample_kernel_sizes must be non-empty and of equal \
                 length"
                    .into(),
            );
        }
        for (u, k) in m.upsample_rates.iter().zip(&m.upsample_kernel_sizes) {
            if *u == 0 || k < u {
                return Err(format!(
                    "model.upsample: rate {u} with kernel {k} (need rate > 0, kernel >= rate)"
                ));
            }
        }
        if m.upsample_initial_channel >> m.upsample_rates.len() == 0 {
            return Err(format!(
                "model.upsample_initial_channel {} halves to 0 over {} upsamplers",
                m.upsample_initial_channel,
                m.upsample_rates.len()
            ));
        }
        Ok(())
    }
}
