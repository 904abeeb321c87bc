//! ECAPA-TDNN speaker embeddings against speechbrain 1.1.2 `EncoderClassifier.encode_batch` on a
//! tiny random model saved in the published layout (tools/fixtures/ecapa_tiny.py).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use vaak_nn::weights::{LoadOptions, Weights};
use vaak_teachers::speaker::{
    cosine_similarity, EcapaBatching, EcapaHyperparams, EcapaOptions, EcapaSpeakerEncoder,
    EcapaTdnn, FrameLengths,
};
use vaak_teachers::{AudioRef, SpeakerEncoder, TeacherError};

const DATA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tools/fixtures/data/ecapa"
);
/// Embeddings from waveforms (our Fbank + normalisation + network) vs speechbrain, max abs.
/// The embeddings are O(1) (max |x| 1.12); measured 8.3e-7 (per-clip) and 7.5e-7 (padded).
const EMB_TOL: f32 = 1e-5;
/// The network alone, fed speechbrain's own normalised features, max abs; measured 4.8e-7.
const NET_TOL: f32 = 5e-6;
/// How far speechbrain's own padded-batch embeddings of the shorter clips are from the same
/// clips alone (measured 0.053 and 0.107): the leak that `PerClip` batching removes.
const SPEECHBRAIN_PADDING_LEAK_MIN: f32 = 1e-2;
const SR: u32 = 16000;

fn model_dir() -> PathBuf {
    Path::new(DATA).join("model")
}

struct Fixture {
    t: HashMap<String, Tensor>,
    clips: Vec<Vec<f32>>,
    wav_lens: Vec<f32>,
}

fn fixture() -> Fixture {
    let t = candle_core::safetensors::load(Path::new(DATA).join("ecapa.safetensors"), &Device::Cpu)
        .unwrap();
    let clips = (0..3)
        .map(|i| {
            t[&format!("pcm_{i}")]
                .to_dtype(candle_core::DType::F32)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .into_iter()
                .map(|v| v / 32768.0)
                .collect::<Vec<f32>>()
        })
        .collect::<Vec<_>>();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(DATA).join("ecapa.json")).unwrap())
            .unwrap();
    let wav_lens = meta["wav_lens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    Fixture { t, clips, wav_lens }
}

impl Fixture {
    fn vec(&self, name: &str) -> Vec<f32> {
        self.t[name].to_vec1().unwrap()
    }
    fn batch_ref(&self) -> Vec<Vec<f32>> {
        self.t["emb_batch"].to_vec2().unwrap()
    }
    fn refs(&self) -> Vec<AudioRef<'_>> {
        self.clips.iter().map(|c| AudioRef::new(c, SR)).collect()
    }
}

fn encoder(batching: EcapaBatching) -> EcapaSpeakerEncoder {
    let opts = EcapaOptions {
        batching,
        ..EcapaOptions::default()
    };
    EcapaSpeakerEncoder::load(model_dir().to_str().unwrap(), opts).unwrap()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn fixture_hyperparams_parse() {
    let hp = EcapaHyperparams::from_file(&model_dir().join("hyperparams.yaml")).unwrap();
    assert_eq!(hp.fbank.n_mels, 80);
    assert_eq!(hp.fbank.sample_rate, 16000);
    assert!(!hp.norm.std_norm);
    let m = &hp.model;
    assert_eq!(m.input_size, 80);
    assert_eq!(m.channels, vec![32, 32, 32, 32, 96]);
    assert_eq!(m.kernel_sizes, vec![5, 3, 3, 3, 1]);
    assert_eq!(m.dilations, vec![1, 2, 3, 4, 1]);
    assert_eq!(m.attention_channels, 16);
    assert_eq!(m.se_channels, 8);
    assert_eq!(
        m.res2net_scale, 8,
        "speechbrain default when the file omits it"
    );
    assert!(m.global_context);
    assert_eq!(m.lin_neurons, 24);
    let enc = encoder(EcapaBatching::PerClip);
    assert_eq!(enc.dim(), 24);
    assert_eq!(enc.model_id().name, model_dir().to_str().unwrap());
    assert_eq!(enc.model_id().revision, None);
}

/// The network on speechbrain's own normalised features of the padded batch, with its
/// relative lengths: isolates the model port from the front end.
#[test]
fn network_matches_speechbrain_on_its_features() {
    let fx = fixture();
    let enc = encoder(EcapaBatching::SpeechbrainPadded);
    let emb = enc
        .model()
        .forward(
            &fx.t["feats_batch"],
            &FrameLengths::Relative(fx.wav_lens.clone()),
        )
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let want = fx.batch_ref();
    let err = (0..3)
        .map(|i| max_abs(&emb[i], &want[i]))
        .fold(0.0, f32::max);
    println!("network on reference features: max abs err {err:.2e}");
    assert!(err <= NET_TOL, "max abs err {err}");
}

/// `SpeechbrainPadded` = encode_batch(padded batch, wav_lens), from waveforms.
#[test]
fn padded_batch_matches_encode_batch() {
    let fx = fixture();
    let enc = encoder(EcapaBatching::SpeechbrainPadded);
    let out = enc.embed(&fx.refs()).unwrap();
    let want = fx.batch_ref();
    let mut err = 0.0f32;
    for (i, r) in out.into_iter().enumerate() {
        err = err.max(max_abs(&r.unwrap(), &want[i]));
    }
    println!("padded batch vs encode_batch: max abs err {err:.2e}");
    assert!(err <= EMB_TOL, "max abs err {err}");
}

/// `PerClip` (default): each clip of a padded batch equals encode_batch on that clip alone,
/// whatever the batch order, and so does embedding it on its own.
#[test]
fn per_clip_batch_equals_each_clip_alone() {
    let fx = fixture();
    let enc = encoder(EcapaBatching::PerClip);
    let want: Vec<Vec<f32>> = (0..3).map(|i| fx.vec(&format!("emb_alone_{i}"))).collect();
    let refs = fx.refs();
    let batch = enc.embed(&refs).unwrap();
    let mut err = 0.0f32;
    for (i, r) in batch.iter().enumerate() {
        err = err.max(max_abs(r.as_ref().unwrap(), &want[i]));
    }
    println!("per-clip batch vs encode_batch alone: max abs err {err:.2e}");
    assert!(err <= EMB_TOL, "batched: max abs err {err}");

    let reordered = [refs[2], refs[0], refs[1], refs[0]];
    let again = enc.embed(&reordered).unwrap();
    for (got, i) in again.iter().zip([2usize, 0, 1, 0]) {
        let e = max_abs(got.as_ref().unwrap(), &want[i]);
        assert!(e <= EMB_TOL, "reordered item (clip {i}): {e}");
    }
    // A frame budget below one clip forces one sub-batch per clip: same results.
    let split = EcapaSpeakerEncoder::load(
        model_dir().to_str().unwrap(),
        EcapaOptions {
            max_batch_frames: 50,
            ..EcapaOptions::default()
        },
    )
    .unwrap();
    for (i, r) in split.embed(&refs).unwrap().iter().enumerate() {
        let e = max_abs(r.as_ref().unwrap(), &want[i]);
        assert!(e <= EMB_TOL, "split sub-batches, clip {i}: {e}");
    }
    for (i, r) in refs.iter().enumerate() {
        let alone = enc
            .embed(std::slice::from_ref(r))
            .unwrap()
            .remove(0)
            .unwrap();
        let e = max_abs(&alone, &want[i]);
        assert!(e <= EMB_TOL, "clip {i} alone: {e}");
        let c = cosine_similarity(&alone, batch[i].as_ref().unwrap()).unwrap();
        assert!(c > 0.999_999, "clip {i}: cosine {c}");
    }
}

/// speechbrain's padded batch is *not* batch-invariant (its reflect-padded convolutions see the
/// padding); our two modes reproduce both sides of that.
#[test]
fn speechbrain_padding_leak_is_reproduced() {
    let fx = fixture();
    let batch_ref = fx.batch_ref();
    let enc = encoder(EcapaBatching::SpeechbrainPadded);
    let ours = enc.embed(&fx.refs()).unwrap();
    // Clips 0 and 1 are shorter than clip 2 and therefore padded.
    for i in 0..2 {
        let alone = fx.vec(&format!("emb_alone_{i}"));
        let leak_ref = max_abs(&batch_ref[i], &alone);
        let leak_ours = max_abs(ours[i].as_ref().unwrap(), &alone);
        println!("clip {i}: speechbrain padded-vs-alone {leak_ref:.3}, ours {leak_ours:.3}");
        assert!(
            leak_ref > SPEECHBRAIN_PADDING_LEAK_MIN,
            "clip {i}: {leak_ref}"
        );
        assert!((leak_ref - leak_ours).abs() <= 2.0 * EMB_TOL);
    }
    // The longest clip is not padded, so it matches its alone embedding in both.
    assert!(max_abs(&batch_ref[2], &fx.vec("emb_alone_2")) <= EMB_TOL);
}

#[test]
fn bad_items_get_their_own_errors() {
    let fx = fixture();
    for batching in [EcapaBatching::PerClip, EcapaBatching::SpeechbrainPadded] {
        let enc = encoder(batching);
        let short = vec![0.1f32; enc.min_samples() - 1];
        let mut nan = fx.clips[1].clone();
        nan[123] = f32::NAN;
        let batch = [
            AudioRef::new(&[], SR),
            AudioRef::new(&fx.clips[1], SR),
            AudioRef::new(&short, SR),
            AudioRef::new(&nan, SR),
            AudioRef::new(&fx.clips[0], 0),
        ];
        let out = enc.embed(&batch).unwrap();
        assert_eq!(out.len(), 5);
        let msg = |i: usize| match &out[i] {
            Err(TeacherError::BadInput(m)) => m.clone(),
            other => panic!("item {i}: expected BadInput, got {other:?}"),
        };
        assert!(
            msg(0).contains("item 0") && msg(0).contains("empty"),
            "{}",
            msg(0)
        );
        assert!(
            msg(2).contains("item 2") && msg(2).contains("shorter"),
            "{}",
            msg(2)
        );
        assert!(
            msg(3).contains("item 3") && msg(3).contains("sample 123"),
            "{}",
            msg(3)
        );
        assert!(
            msg(4).contains("item 4") && msg(4).contains("sample rate"),
            "{}",
            msg(4)
        );
        // The one good clip is alone among the valid items, so both modes give its alone value.
        let good = out[1].as_ref().unwrap();
        let e = max_abs(good, &fx.vec("emb_alone_1"));
        assert!(e <= EMB_TOL, "{batching:?}: {e}");
    }
    let enc = encoder(EcapaBatching::PerClip);
    assert!(enc.embed(&[]).unwrap().is_empty());
    // Exactly the minimum length is accepted.
    let min = vec![0.05f32; enc.min_samples()];
    let min: Vec<f32> = min
        .iter()
        .enumerate()
        .map(|(i, v)| v * (i as f32 * 0.3).sin())
        .collect();
    let e = enc
        .embed(&[AudioRef::new(&min, SR)])
        .unwrap()
        .remove(0)
        .unwrap();
    assert!(e.iter().all(|v| v.is_finite()));
}

/// Clips at another rate are resampled to 16 kHz with vaak-audio's resampler first.
#[test]
fn other_sample_rates_are_resampled() {
    let fx = fixture();
    let enc = encoder(EcapaBatching::PerClip);
    let clip8k = vaak_audio::resample::resample(&fx.clips[0], SR, 8000).unwrap();
    let back = vaak_audio::resample::resample(&clip8k, 8000, SR).unwrap();
    let out = enc
        .embed(&[AudioRef::new(&clip8k, 8000), AudioRef::new(&back, SR)])
        .unwrap();
    let (a, b) = (out[0].as_ref().unwrap(), out[1].as_ref().unwrap());
    assert_eq!(a.len(), 24);
    assert!(max_abs(a, b) <= EMB_TOL, "{}", max_abs(a, b));
}

#[test]
fn missing_checkpoint_is_a_typed_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        model_dir().join("hyperparams.yaml"),
        dir.path().join("hyperparams.yaml"),
    )
    .unwrap();
    let err = EcapaSpeakerEncoder::load(dir.path().to_str().unwrap(), EcapaOptions::default())
        .unwrap_err();
    match &err {
        TeacherError::Weights(vaak_nn::Error::MissingFile { path }) => {
            assert!(path.ends_with("embedding_model.ckpt"), "{path:?}")
        }
        other => panic!("expected MissingFile, got {other:?}"),
    }
    assert!(err.to_string().contains("embedding_model.ckpt"));

    let err = EcapaSpeakerEncoder::load(
        dir.path().join("nope").to_str().unwrap(),
        EcapaOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("hyperparams.yaml"), "{err}");
}

fn reference_tensors() -> HashMap<String, Tensor> {
    Weights::from_files(
        &[model_dir().join("embedding_model.ckpt")],
        &LoadOptions::default(),
    )
    .unwrap()
    .load_all()
    .unwrap()
}

#[test]
fn missing_or_misshapen_tensor_is_a_typed_error_naming_it() {
    let hp = EcapaHyperparams::from_file(&model_dir().join("hyperparams.yaml")).unwrap();
    let key = "blocks.2.res2net_block.blocks.3.conv.conv.weight";

    // Through the published loader: a state dict without one tensor.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        model_dir().join("hyperparams.yaml"),
        dir.path().join("hyperparams.yaml"),
    )
    .unwrap();
    let mut t = reference_tensors();
    assert!(t.remove(key).is_some());
    t.retain(|_, v| v.dtype() == candle_core::DType::F32);
    // The loader sniffs the format, so a safetensors body under the .ckpt name is fine here.
    candle_core::safetensors::save(&t, dir.path().join("embedding_model.ckpt")).unwrap();
    let err = EcapaSpeakerEncoder::load(dir.path().to_str().unwrap(), EcapaOptions::default())
        .unwrap_err();
    match &err {
        TeacherError::Weights(vaak_nn::Error::MissingTensor { name, .. }) => assert_eq!(name, key),
        other => panic!("expected MissingTensor, got {other:?}"),
    }

    // A config that disagrees with the checkpoint.
    let mut cfg = hp.model.clone();
    cfg.attention_channels = 8;
    let w = Weights::from_tensors(reference_tensors(), "tiny", &LoadOptions::default());
    match EcapaTdnn::load(&w, &cfg) {
        Err(TeacherError::Weights(vaak_nn::Error::ShapeMismatch { name, .. })) => {
            assert_eq!(name, "asp.tdnn.conv.conv.weight")
        }
        Err(other) => panic!("expected ShapeMismatch, got {other:?}"),
        Ok(_) => panic!("expected ShapeMismatch, got a model"),
    }
}

#[test]
fn cosine_of_real_embeddings() {
    let fx = fixture();
    let a = fx.vec("emb_alone_0");
    let b = fx.vec("emb_alone_1");
    assert!((cosine_similarity(&a, &a).unwrap() - 1.0).abs() < 1e-6);
    let ab = cosine_similarity(&a, &b).unwrap();
    assert!((ab - cosine_similarity(&b, &a).unwrap()).abs() < 1e-7);
    assert!(ab < 0.999 && ab > -1.0, "{ab}");
    let scaled: Vec<f32> = a.iter().map(|v| 3.0 * v).collect();
    assert!((cosine_similarity(&scaled, &a).unwrap() - 1.0).abs() < 1e-6);
}
