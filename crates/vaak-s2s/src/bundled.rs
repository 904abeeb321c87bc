//! The S2S model trained by vaak and shipped inside the binary (`models/vaak-s2s-tiny`, see
//! its model card), so that `vaak s2s translate IN OUT` runs on a fresh machine with no
//! `--model` and no download. Its tokens are the bundled `vaak-16k` codec's, which is embedded
//! too.
//!
//! A tiny CPU-trained model: it shows the whole path works (codec encode -> model -> codec
//! decode); it is not a usable translator.

use std::collections::HashMap;

use candle_core::{Device, Tensor};

use crate::config::S2sConfig;
use crate::error::{Result, S2sError};
use crate::model::S2sModel;
use crate::speech::SpeechModel;
use crate::train::ExportInfo;

/// Where the bundled model lives in the repository (for messages and docs).
pub const BUNDLED_S2S: &str = "models/vaak-s2s-tiny";

const CONFIG_JSON: &str = include_str!("../../../models/vaak-s2s-tiny/config.json");
const CODEC_JSON: &str = include_str!("../../../models/vaak-s2s-tiny/codec.json");
/// The weights (f16 in the file; loaded as f32).
const WEIGHTS: &[u8] = include_bytes!("../../../models/vaak-s2s-tiny/model.safetensors");

fn label() -> String {
    format!("{BUNDLED_S2S} (embedded)")
}

/// The bundled model's config.
pub fn config() -> Result<S2sConfig> {
    S2sConfig::from_json(CONFIG_JSON)
}

/// The bundled model's `codec.json`: which codec its tokens belong to, the stage and step.
pub fn export_info() -> Result<ExportInfo> {
    serde_json::from_str(CODEC_JSON).map_err(|e| S2sError::Json {
        path: format!("{BUNDLED_S2S}/codec.json").into(),
        source: e,
    })
}

/// The bundled weights as an f32 [`S2sModel`] on `device`. Every tensor is checked against
/// the config's shapes (a mismatch names the tensor and both shapes).
pub fn model(device: &Device) -> Result<S2sModel> {
    let cfg = config()?;
    let file: HashMap<String, Tensor> = candle_core::safetensors::load_buffer(WEIGHTS, device)?;
    S2sModel::from_tensors_inference(&cfg, &file, device)
}

/// The bundled model with its codec (the embedded `vaak-16k`), ready for
/// [`SpeechModel::respond`]. What `vaak s2s translate|reply` use without `--model`.
pub fn load(device: &Device) -> Result<SpeechModel> {
    let info = export_info()?;
    SpeechModel::from_memory(model(device)?, info, &label(), Vec::new(), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_config_and_weights_agree() {
        let cfg = config().unwrap();
        let info = export_info().unwrap();
        assert_eq!(info.codec, "vaak-16k");
        assert_eq!(info.num_codebooks, cfg.codec.num_codebooks);
        let m = model(&Device::Cpu).unwrap();
        assert_eq!(m.config(), &cfg);
    }
}
