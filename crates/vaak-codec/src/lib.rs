//! vaak-codec: one streaming neural audio codec family.
//!
//! A SEANet causal conv encoder/decoder (with EnCodec's LSTM), and residual vector
//! quantization, configurable through [`CodecConfig`]. Presets ([`Preset`]):
//!
//! - `encodec_24khz`: loads `facebook/encodec_24khz` as published in transformers'
//!   `EncodecModel` layout (`config.json` + `model.safetensors`, weight norm in either spelling).
//!   Whole-clip encode/decode match transformers exactly ([`EdgeMode::Reference`]).
//! - `mimi`: loads `kyutai/mimi` as published (flat transformers `MimiModel` layout): SEANet,
//!   encoder transformer (RoPE, layer scale, sliding-window context, GELU FFN), stride-2
//!   downsample, split RVQ (semantic + acoustic, 1x1 projections, `embed_sum /
//!   cluster_usage.clamp(1e-5)` codebooks), depthwise upsample, decoder transformer, SEANet.
//! - `vaak-16k`: vaak's own 16 kHz, 8 x 1024 codec, trained by [`train`] (`vaak train codec`);
//!   its checkpoints are `config.json` + `model.safetensors` ([`save_vaak_checkpoint`]).
//!
//! # Streaming and the clip edges
//!
//! [`CodecStreamer`] streams over batched slots with per-slot reset. A stream cannot see the
//! future, so it follows [`EdgeMode::Causal`] (zeros before the clip, no right padding); the
//! concatenated stream output equals the causal whole-clip output exactly, for any chunking.
//! HF EnCodec's whole-clip forward differs at two places:
//!
//! 1. *Left edge*: every conv reflect-pads its left edge (`k_eff - stride` samples mirrored
//!    from the clip's start), where a stream has zeros. Through the conv stacks this touches
//!    the first frames only, but the LSTM carries every difference forward, so in principle all
//!    later frames can differ slightly (in floats; codes flip only near ties).
//! 2. *Right edge*: when `T` is not a multiple of the hop, HF reflect-pads each strided conv to
//!    a whole stride block and emits `ceil(T / hop)` frames; the stream emits `floor(T / hop)`
//!    and holds the tail until more audio arrives.
//!
//! The tests measure how many streamed codes agree with HF's on the fixture (EnCodec: every
//! code from frame 21 of 100 on; the latent difference decays to ~1e-8).
//!
//! Mimi pads with zeros everywhere except its downsampling conv (replicate), which sits after
//! the transformer. Replicate padding is causal, so the stream (and the causal whole clip)
//! replicates each slot's first sample there too (`vaak_nn::conv::CausalPad::Replicate`): for
//! a clip of whole frames, streamed codes equal transformers' on every frame, and streamed
//! decoding equals transformers' whole-clip decode (it is causal throughout). EnCodec's reflect
//! padding reads samples a stream has not seen yet, so it stays zeros in the causal path.
//!
//! # What is reused and what is ours
//!
//! candle-transformers has an EnCodec (`models::encodec`), but it cannot parse transformers'
//! `config.json`, has no per-slot streaming state or masked steps, cannot be trained (its
//! conv-transpose has no backward) and hard-wires one layout. So the model here is ours, built
//! on `vaak_nn::conv` (streaming causal convs, differentiable conv-transpose), `vaak_nn::rvq`
//! (codebooks) and `vaak_nn::weights` (loading, weight norm). Only the numerics of transformers'
//! `modeling_encodec.py` / `modeling_mimi.py` were followed. Mimi's transformers are
//! `vaak_nn::transformer::Transformer` (same maths: pre-LayerNorm, neox RoPE, layer scale,
//! exact GELU, window `(t - context, t]`), with the checkpoint's names mapped on load
//! (`input_layernorm` -> `norm1`, `post_attention_layernorm` -> `norm2`,
//! `self_attn_layer_scale` -> `layer_scale_1`, `mlp_layer_scale` -> `layer_scale_2`,
//! `mlp.fc1/fc2` -> `ffn.linear1/2`); its per-slot KV cache gives the batched streaming.

pub mod bundled;
pub mod codec;
pub mod config;
pub mod error;
pub mod eval;
pub mod seanet;
pub mod train;

pub use codec::{save_vaak_checkpoint, Codec, CodecStreamer, CodecTrainOutput, Preset};
pub use config::{
    CodecConfig, HfCodecConfig, HfEncodecConfig, HfMimiConfig, HfStreamingFields,
    LatentTransformerConfig, PadMode, SeanetConfig,
};
pub use error::{CodecError, Result, UnknownName};
pub use seanet::{EdgeMode, Seanet};
pub use vaak_nn::transformer::StepWeights;
