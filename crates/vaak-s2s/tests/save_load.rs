//! Save/load round trip, checkpoint mismatches named by tensor and shapes, and bad input
//! that must give typed errors rather than panics.

mod common;

use std::str::FromStr;

use candle_core::Device;
use vaak_s2s::{CodecSpec, Emotion, HeadKind, Language, S2sConfig, S2sError, S2sModel, S2sStream};

#[test]
fn save_load_round_trip_gives_identical_logits() {
    for head in [HeadKind::Delay, HeadKind::Depth] {
        let cfg = common::tiny(head, true);
        let (model, vars) = S2sModel::init_seeded(&cfg, &Device::Cpu, 7).unwrap();
        let dir = tempfile::tempdir().unwrap();
        S2sModel::save(&cfg, &vars, dir.path()).unwrap();
        let (loaded, _) = S2sModel::load(dir.path(), &Device::Cpu).unwrap();
        // The inference load (plain tensors, no variables) computes the same logits.
        let plain = S2sModel::load_inference(dir.path(), &Device::Cpu).unwrap();
        assert_eq!(loaded.config(), &cfg);
        assert_eq!(plain.config(), &cfg);
        let batch = [common::sample(&cfg, 1, 6, 4), common::sample(&cfg, 2, 3, 2)];
        let a = model.forward_batch(&batch, false).unwrap();
        // The same weights through the same kernels: bit-identical. The inference load runs the
        // encoder's convs on vaak-nn's inference conv path (another summation order than the
        // differentiable conv a variable-backed model takes), so it agrees to float rounding.
        for (other, tol) in [(&loaded, 0.0f32), (&plain, 1e-5)] {
            let b = other.forward_batch(&batch, false).unwrap();
            let text = (
                a.text_logits.as_ref().unwrap(),
                b.text_logits.as_ref().unwrap(),
            );
            for (x, y) in [(&a.logits, &b.logits), text] {
                let x = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert_eq!(x.len(), y.len());
                let worst = x
                    .iter()
                    .zip(&y)
                    .map(|(p, q)| (p - q).abs())
                    .fold(0.0, f32::max);
                assert!(worst <= tol, "max |difference| {worst} > {tol}");
            }
        }
        // No variable under the inference model, so no graph is recorded: its loss's backward
        // holds only the loss itself.
        let tf = plain.forward_batch(&batch, true).unwrap();
        let loss = plain
            .loss(
                &tf,
                &vaak_s2s::LossWeights::uniform(cfg.codec.num_codebooks),
            )
            .unwrap();
        let grads = loss.total.backward().unwrap();
        assert_eq!(grads.get_ids().count(), 1);
        let tf = loaded.forward_batch(&batch, true).unwrap();
        let loss = loaded
            .loss(
                &tf,
                &vaak_s2s::LossWeights::uniform(cfg.codec.num_codebooks),
            )
            .unwrap();
        assert!(loss.total.backward().unwrap().get_ids().count() > 100);
    }
}

#[test]
fn mismatched_checkpoint_names_the_tensor_and_both_shapes() {
    let cfg = common::tiny(HeadKind::Delay, false);
    let (_, vars) = S2sModel::init_seeded(&cfg, &Device::Cpu, 7).unwrap();
    let dir = tempfile::tempdir().unwrap();
    S2sModel::save(&cfg, &vars, dir.path()).unwrap();
    // A config with a larger codebook than the weights were trained for.
    let mut other = cfg.clone();
    other.codec.cardinality = 20;
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_string(&other).unwrap(),
    )
    .unwrap();
    let Err(err) = S2sModel::load(dir.path(), &Device::Cpu) else {
        panic!("a mismatched checkpoint must not load");
    };
    let Err(plain_err) = S2sModel::load_inference(dir.path(), &Device::Cpu) else {
        panic!("a mismatched checkpoint must not load for inference either");
    };
    assert_eq!(plain_err.to_string(), err.to_string());
    match &err {
        S2sError::ShapeMismatch {
            name,
            expected,
            found,
        } => {
            // Tensors are checked in name order; the first affected one is the decoder's
            // codebook-0 embedding (16 + 3 rows saved, 20 + 3 expected).
            assert_eq!(name, "emb.0.weight");
            assert_eq!(expected, &[23, 32]);
            assert_eq!(found, &[19, 32]);
        }
        e => panic!("expected ShapeMismatch, got {e}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("emb.0.weight") && msg.contains("[23, 32]") && msg.contains("[19, 32]"),
        "{msg}"
    );

    // The depth head's tensors are absent from a delay checkpoint.
    let mut depth = cfg.clone();
    depth.head = HeadKind::Depth;
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_string(&depth).unwrap(),
    )
    .unwrap();
    match S2sModel::load(dir.path(), &Device::Cpu) {
        Err(S2sError::MissingTensor { name, .. }) => {
            assert!(name.starts_with("depth."), "{name}")
        }
        Err(e) => panic!("expected MissingTensor, got {e}"),
        Ok(_) => panic!("a delay checkpoint must not load as a depth model"),
    }
}

#[test]
fn codes_outside_the_vocabulary_are_typed_errors() {
    let cfg = common::tiny(HeadKind::Delay, true);
    let (model, _) = S2sModel::init_seeded(&cfg, &Device::Cpu, 7).unwrap();
    let mut s = common::sample(&cfg, 1, 4, 3);
    s.source[2][1] = 16;
    match model.forward_batch(&[s.clone()], false).unwrap_err() {
        S2sError::CodeOutOfRange {
            what,
            row,
            frame,
            codebook,
            code,
            cardinality,
        } => assert_eq!(
            (what, row, frame, codebook, code, cardinality),
            ("source", 0, 2, 1, 16, 16)
        ),
        e => panic!("{e}"),
    }
    let mut t = common::sample(&cfg, 1, 4, 3);
    t.target[1][0] = 99;
    assert!(matches!(
        model.forward_batch(&[t], false).unwrap_err(),
        S2sError::CodeOutOfRange {
            what: "target",
            frame: 1,
            code: 99,
            ..
        }
    ));
    let mut u = common::sample(&cfg, 1, 4, 3);
    u.text.as_mut().unwrap()[0] = 500;
    assert!(matches!(
        model.forward_batch(&[u], false).unwrap_err(),
        S2sError::TextOutOfRange { token: 500, .. }
    ));
    // The streaming encoder checks before touching any state.
    let mut st = S2sStream::new(&model, 2, Default::default()).unwrap();
    let err = st
        .push_source(&[vec![vec![1, 2, 3]], vec![vec![1, 2, 17]]])
        .unwrap_err();
    assert!(
        matches!(
            err,
            S2sError::CodeOutOfRange {
                row: 1,
                codebook: 2,
                code: 17,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(st.memory_len(0), 0);
    // Wrong frame width.
    assert!(matches!(
        st.push_source(&[vec![vec![1, 2]], vec![]]).unwrap_err(),
        S2sError::BadInput(_)
    ));
}

#[test]
fn unknown_emotion_and_language_list_the_valid_ones() {
    assert_eq!(Emotion::from_str("Happy").unwrap(), Emotion::Happy);
    let e = Emotion::from_str("grumpy").unwrap_err().to_string();
    for em in Emotion::ALL {
        assert!(e.contains(em.name()), "{e}");
    }
    assert!(e.contains("grumpy"));
    assert_eq!(Language::from_str("te").unwrap(), Language::Te);
    let l = Language::from_str("fr").unwrap_err().to_string();
    assert!(l.contains("en, ru, hi, te"), "{l}");
}

#[test]
fn config_validation_names_the_field() {
    let codec = CodecSpec {
        num_codebooks: 2,
        cardinality: 8,
        frame_rate: 12.5,
    };
    let e = S2sConfig::preset("huge", codec.clone())
        .unwrap_err()
        .to_string();
    assert!(e.contains("tiny, small, base"), "{e}");
    let mut c = S2sConfig::preset("tiny", codec).unwrap();
    c.decoder.num_heads = 3;
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .contains("decoder.d_model"));
    let mut c2 = S2sConfig::preset("tiny", c.codec.clone()).unwrap();
    c2.encoder.chunk_size = 0;
    assert!(c2
        .validate()
        .unwrap_err()
        .to_string()
        .contains("encoder.chunk_size"));
    let json = serde_json::to_string(&c2).unwrap();
    assert!(S2sConfig::from_json(&json).is_err());
}

#[test]
fn presets_have_the_advertised_sizes() {
    let tiny = common::tiny(HeadKind::Depth, true);
    let (_, vars) = S2sModel::init_seeded(&tiny, &Device::Cpu, 7).unwrap();
    let n: usize = vars.all_vars().iter().map(|v| v.elem_count()).sum();
    assert!(n < 1_000_000, "tiny has {n} parameters");
    let small = S2sConfig::preset("small", CodecSpec::default()).unwrap();
    assert_eq!(small.decoder.d_model, 320);
    let base = S2sConfig::preset("base", CodecSpec::default()).unwrap();
    assert_eq!(
        (
            base.encoder.stack.num_layers,
            base.decoder.num_layers,
            base.decoder.d_model
        ),
        (12, 12, 768)
    );
}

#[test]
fn small_preset_is_about_thirty_million_parameters() {
    let cfg = S2sConfig::preset("small", CodecSpec::default()).unwrap();
    let (_, vars) = S2sModel::init_seeded(&cfg, &Device::Cpu, 7).unwrap();
    let n: usize = vars.all_vars().iter().map(|v| v.elem_count()).sum();
    println!("small preset: {n} parameters");
    assert!(
        (25_000_000..38_000_000).contains(&n),
        "small has {n} parameters"
    );
}
