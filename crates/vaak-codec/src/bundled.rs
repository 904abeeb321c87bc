//! The `vaak-16k` codec trained by vaak and shipped inside the binary (`models/vaak-16k`, see
//! its model card), so that `vaak codec roundtrip` works on a fresh machine with no download.

use std::collections::HashMap;

use candle_core::{DType, Device};
use vaak_nn::weights::{LoadOptions, Weights};

use crate::codec::{Codec, Preset};
use crate::config::CodecConfig;
use crate::error::Result;

/// Where the bundled checkpoint lives in the repository (for messages and docs).
pub const BUNDLED_VAAK_16K: &str = "models/vaak-16k";

const CONFIG_JSON: &str = include_str!("../../../models/vaak-16k/config.json");
const WEIGHTS: &[u8] = include_bytes!("../../../models/vaak-16k/model.safetensors");

impl Codec {
    /// The bundled `vaak-16k` checkpoint on `device` (f32).
    pub fn bundled_vaak_16k(device: &Device) -> Result<Self> {
        let label = format!("{BUNDLED_VAAK_16K} (embedded)");
        let cfg = CodecConfig::from_vaak_json(CONFIG_JSON, &label)?;
        let tensors: HashMap<String, candle_core::Tensor> =
            candle_core::safetensors::load_buffer(WEIGHTS, device)?;
        let opts = LoadOptions {
            device: device.clone(),
            dtype: Some(DType::F32),
            ..LoadOptions::default()
        };
        let weights = Weights::from_tensors(tensors, &label, &opts);
        Codec::new(
            cfg,
            Preset::Vaak16k,
            weights.into_var_builder(Some(DType::F32)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Tensor;

    #[test]
    fn bundled_codec_loads_and_round_trips_audio() {
        let codec = Codec::bundled_vaak_16k(&Device::Cpu).unwrap();
        assert_eq!(codec.sample_rate(), 16_000);
        assert_eq!(codec.num_codebooks(), 8);
        assert_eq!(codec.codebook_size(), 1024);
        let hop = codec.hop_length();
        let n = hop * 10;
        let wav: Vec<f32> = (0..n)
            .map(|i| 0.3 * (i as f32 * 2.0 * std::f32::consts::PI * 220.0 / 16_000.0).sin())
            .collect();
        let x = Tensor::from_vec(wav, (1, 1, n), &Device::Cpu).unwrap();
        let codes = codec.encode(&x).unwrap();
        assert_eq!(codes.dims3().unwrap(), (1, 8, 10));
        let y = codec.decode(&codes).unwrap();
        assert_eq!(y.dims3().unwrap(), (1, 1, n));
        let y: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        assert!(y.iter().all(|v| v.is_finite()));
    }
}
