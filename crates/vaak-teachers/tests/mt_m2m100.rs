//! M2M-100 / NLLB port against transformers 5.23 on tiny random checkpoints
//! (`tools/fixtures/mt_m2m100.py`): encoder states and decoder logits for a right-padded batch,
//! the KV cache against a full pass, and `generate()` token ids (greedy and beam search with
//! forced BOS, length penalties and all three `early_stopping` modes), batched and item by item.
//! `m2m` loads `model.safetensors` with a tied head; `nllb` loads `pytorch_model.bin` with an
//! untied head and unscaled embeddings.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde_json::Value;
use vaak_nn::weights::WeightLocation;
use vaak_teachers::mt::generate::{
    generate, pad_batch, EarlyStopping, GenerationConfigFile, GenerationParams, MaxLength,
};
use vaak_teachers::mt::m2m100::{M2m100LoadOptions, M2m100Model};

const DATA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tools/fixtures/data/mt_m2m100"
);
/// Encoder output vs transformers (f32 both sides).
const ENCODER_TOL: f32 = 1e-4;
/// Decoder logits vs transformers.
const LOGITS_TOL: f32 = 2e-4;
/// Teacher-forced full pass vs token by token through the cache.
const CACHE_TOL: f32 = 1e-4;

/// Sequence scores, one item alone vs in its batch.
const SCORE_TOL: f32 = 1e-4;

const MODELS: [&str; 2] = ["m2m", "nllb"];

fn dir(name: &str) -> PathBuf {
    Path::new(DATA).join(name)
}

fn load(name: &str) -> M2m100Model {
    M2m100Model::from_location(
        &WeightLocation::Local(dir(name)),
        &M2m100LoadOptions::default(),
    )
    .unwrap()
}

fn reference(name: &str) -> (HashMap<String, Tensor>, Value) {
    let t = candle_core::safetensors::load(dir(name).join("reference.safetensors"), &Device::Cpu)
        .unwrap();
    let j = std::fs::read_to_string(dir(name).join("reference.json")).unwrap();
    (t, serde_json::from_str(&j).unwrap())
}

fn ids2(t: &Tensor) -> Vec<Vec<u32>> {
    t.to_vec2::<i64>()
        .unwrap()
        .into_iter()
        .map(|r| r.into_iter().map(|x| x as u32).collect())
        .collect()
}

/// The unpadded sources of the reference batch.
fn sources(t: &HashMap<String, Tensor>) -> Vec<Vec<u32>> {
    let ids = ids2(&t["input_ids"]);
    let mask = ids2(&t["attention_mask"]);
    ids.into_iter()
        .zip(mask)
        .map(|(r, m)| {
            r.into_iter()
                .zip(m)
                .filter(|&(_, m)| m == 1)
                .map(|(x, _)| x)
                .collect()
        })
        .collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn params(model: &M2m100Model, setting: &Value) -> GenerationParams {
    let cfg = model.config();
    GenerationParams {
        num_beams: setting["num_beams"].as_u64().unwrap() as usize,
        max_length: MaxLength::Fixed(setting["max_length"].as_u64().unwrap() as usize),
        min_length: 0,
        length_penalty: setting["length_penalty"].as_f64().unwrap_or(1.0) as f32,
        early_stopping: match &setting["early_stopping"] {
            Value::Bool(true) => EarlyStopping::True,
            Value::String(s) if s == "never" => EarlyStopping::Never,
            _ => EarlyStopping::False,
        },
        decoder_start_token_id: cfg.decoder_start_token_id,
        forced_bos_token_id: Some(setting["forced_bos_token_id"].as_u64().unwrap() as u32),
        forced_eos_token_id: None,
        eos_token_ids: cfg.eos_ids(),
        pad_token_id: cfg.pad_token_id,
        no_repeat_ngram_size: 0,
    }
}

#[test]
fn encoder_matches_transformers_on_a_padded_batch() {
    for name in MODELS {
        let model = load(name);
        let (t, _) = reference(name);
        let src = sources(&t);
        let refs: Vec<&[u32]> = src.iter().map(|s| s.as_slice()).collect();
        let enc = model.encode(&refs).unwrap();
        let expected = &t["encoder_out"];
        // Padded positions are compared too: they attend to the real keys only, as in
        // transformers.
        let err = max_abs_diff(&enc.hidden, expected);
        println!("{name}: encoder max |err| = {err:.2e}");
        assert!(err < ENCODER_TOL, "{name}: encoder max error {err}");
        // Each item alone gives its own rows.
        for (i, s) in src.iter().enumerate() {
            let one = model.encode(&[s.as_slice()]).unwrap().hidden;
            let exp = expected
                .narrow(0, i, 1)
                .unwrap()
                .narrow(1, 0, s.len())
                .unwrap();
            let err = max_abs_diff(&one, &exp);
            assert!(err < ENCODER_TOL, "{name} item {i}: alone vs batched {err}");
        }
    }
}

#[test]
fn logits_match_transformers_and_the_cache_matches_a_full_pass() {
    for name in MODELS {
        let model = load(name);
        let (t, _) = reference(name);
        let src = sources(&t);
        let refs: Vec<&[u32]> = src.iter().map(|s| s.as_slice()).collect();
        let dec = ids2(&t["decoder_input_ids"]);
        let (b, l) = (dec.len(), dec[0].len());
        let flat: Vec<u32> = dec.iter().flatten().copied().collect();
        let enc = model.encode(&refs).unwrap();

        let mut cache = model.start(&enc, 1).unwrap();
        let full = model.decode(&flat, l, &mut cache).unwrap();
        assert_eq!(cache.len(), l);
        let err = max_abs_diff(&full, &t["logits"]);
        println!("{name}: logits max |err| = {err:.2e}");
        assert!(err < LOGITS_TOL, "{name}: logits max error {err}");

        // Token by token, after a two-token prefix.
        let mut cache = model.start(&enc, 1).unwrap();
        let head: Vec<u32> = dec.iter().flat_map(|r| r[..2].to_vec()).collect();
        let mut steps = vec![model.decode(&head, 2, &mut cache).unwrap()];
        for j in 2..l {
            let col: Vec<u32> = dec.iter().map(|r| r[j]).collect();
            steps.push(model.decode(&col, 1, &mut cache).unwrap());
        }
        let stepped = Tensor::cat(&steps, 1).unwrap();
        let err = max_abs_diff(&stepped, &full);
        println!("{name}: cached vs full max |err| = {err:.2e}");
        assert!(err < CACHE_TOL, "{name}: cache error {err}");
        assert_eq!(stepped.dims(), &[b, l, model.config().vocab_size]);
    }
}

#[test]
fn generate_matches_transformers_token_for_token() {
    for name in MODELS {
        let model = load(name);
        let (t, j) = reference(name);
        let src = sources(&t);
        let refs: Vec<&[u32]> = src.iter().map(|s| s.as_slice()).collect();
        let pad = model.config().pad_token_id;
        for setting in j["settings"].as_array().unwrap() {
            let sname = setting["name"].as_str().unwrap();
            let expected = ids2(&t[&format!("generate.{sname}")]);
            // The reference is not degenerate: rows differ, lengths differ, some end early.
            let lens: Vec<usize> = expected
                .iter()
                .map(|r| r.len() - r.iter().rev().take_while(|&&x| x == pad).count())
                .collect();
            let distinct_rows: std::collections::HashSet<_> = expected.iter().collect();
            assert_eq!(distinct_rows.len(), expected.len(), "{name}/{sname}");
            assert!(lens.iter().collect::<std::collections::HashSet<_>>().len() >= 2);
            let max_len = setting["max_length"].as_u64().unwrap() as usize;
            assert!(
                lens.iter().any(|&n| n < max_len),
                "{name}/{sname}: none ended"
            );

            let p = params(&model, setting);
            let got = generate(&model, &refs, &p).unwrap();
            assert_eq!(pad_batch(&got, pad), expected, "{name}/{sname}: batched");
            for (g, &n) in got.iter().zip(&lens) {
                assert_eq!(g.ended, n < max_len || g.tokens.last() == Some(&2));
            }
            // Item by item: the same rows.
            for (i, s) in src.iter().enumerate() {
                let one = generate(&model, &[s.as_slice()], &p).unwrap();
                assert_eq!(
                    one[0].tokens, got[i].tokens,
                    "{name}/{sname} item {i} alone"
                );
                let d = (one[0].score - got[i].score).abs();
                assert!(
                    d < SCORE_TOL,
                    "{name}/{sname} item {i} score differs by {d}"
                );
            }
            println!("{name}/{sname}: {} rows equal, lengths {lens:?}", got.len());
        }
    }
}

#[test]
fn published_generation_config_is_read() {
    let g = GenerationConfigFile::from_file(&dir("m2m").join("generation_config.json")).unwrap();
    assert_eq!(g.num_beams, Some(5));
    assert_eq!(g.max_length, Some(200));
    assert_eq!(g.early_stopping().unwrap(), EarlyStopping::True);
    let g = GenerationConfigFile::from_file(&dir("nllb").join("generation_config.json")).unwrap();
    assert_eq!(g.num_beams, None);
    assert_eq!(g.early_stopping().unwrap(), EarlyStopping::False);
}

#[test]
fn bad_inputs_are_errors() {
    let model = load("m2m");
    let e = model.encode(&[&[5, 6, 2], &[]]).unwrap_err().to_string();
    assert!(e.contains("source 1"), "{e}");
    let e = model.encode(&[&[5, 999, 2]]).unwrap_err().to_string();
    assert!(e.contains("999"), "{e}");
    let mut p = params(
        &model,
        &serde_json::json!({"num_beams": 2, "max_length": 1, "forced_bos_token_id": 129}),
    );
    let e = generate(&model, &[&[5, 6, 2]], &p).unwrap_err().to_string();
    assert!(e.contains("max_length 1"), "{e}");
    p.max_length = MaxLength::Fixed(8);
    p.forced_bos_token_id = Some(4000);
    let e = generate(&model, &[&[5, 6, 2]], &p).unwrap_err().to_string();
    assert!(e.contains("forced_bos_token_id 4000"), "{e}");
    // A missing config names the file.
    let tmp = tempfile::tempdir().unwrap();
    let e = M2m100Model::from_location(
        &WeightLocation::Local(tmp.path().to_path_buf()),
        &M2m100LoadOptions::default(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("config.json"), "{e}");
}
