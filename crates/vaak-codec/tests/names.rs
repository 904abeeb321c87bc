//! The names vaak-codec reads and writes: presets, training dtypes and Mimi's tensor names.

use vaak_codec::codec::{mimi_name, published_mimi_name};
use vaak_codec::train::TrainDtype;
use vaak_codec::{CodecError, Preset, UnknownName};

#[test]
fn every_preset_reads_back_its_display_name() {
    for p in Preset::ALL {
        assert_eq!(p.to_string(), p.name());
        assert_eq!(p.to_string().parse::<Preset>(), Ok(p));
    }
    assert_eq!("encodec".parse::<Preset>(), Ok(Preset::Encodec24khz));
}

#[test]
fn an_unknown_preset_names_the_valid_ones() {
    let e = "opus".parse::<Preset>().unwrap_err();
    assert_eq!(
        e,
        UnknownName {
            what: "codec preset",
            got: "opus".into(),
            valid: vec!["encodec_24khz", "mimi", "vaak-16k"],
        }
    );
    let msg = e.to_string();
    for p in Preset::ALL {
        assert!(msg.contains(p.name()), "{msg}");
    }
    assert!(msg.contains("\"opus\""), "{msg}");
    let codec_error: CodecError = e.into();
    assert!(
        codec_error.to_string().contains("vaak-16k"),
        "{codec_error}"
    );
}

#[test]
fn train_dtypes_read_back_their_yaml_names() {
    for d in TrainDtype::ALL {
        assert_eq!(d.to_string().parse::<TrainDtype>(), Ok(d));
        let yaml = serde_yaml::to_string(&d).unwrap();
        assert_eq!(yaml.trim(), d.name());
    }
    let e = "f16".parse::<TrainDtype>().unwrap_err().to_string();
    assert!(e.contains("f32") && e.contains("bf16"), "{e}");
}

#[test]
fn mimi_names_map_both_ways_through_one_table() {
    let pairs = [
        (
            "encoder_transformer.layers.3.mlp.fc1.weight",
            "encoder_transformer.layers.3.ffn.linear1.weight",
        ),
        (
            "decoder_transformer.layers.0.self_attn_layer_scale.scale",
            "decoder_transformer.layers.0.layer_scale_1.scale",
        ),
        (
            "encoder_transformer.layers.1.input_layernorm.bias",
            "encoder_transformer.layers.1.norm1.bias",
        ),
        (
            "decoder_transformer.layers.7.post_attention_layernorm.weight",
            "decoder_transformer.layers.7.norm2.weight",
        ),
        (
            "encoder_transformer.layers.2.mlp_layer_scale.scale",
            "encoder_transformer.layers.2.layer_scale_2.scale",
        ),
        (
            "decoder_transformer.layers.5.mlp.fc2.weight",
            "decoder_transformer.layers.5.ffn.linear2.weight",
        ),
        (
            "encoder.layers.0.conv.weight",
            "encoder.layers.0.conv.weight",
        ),
    ];
    for (published, ours) in pairs {
        assert_eq!(mimi_name(published), ours);
        assert_eq!(published_mimi_name(ours), published);
    }
}
