//! Parity of [`MarianTranslator`] (the shared seq2seq stack + our loader) with transformers'
//! `MarianMTModel` on a tiny random opus-mt-style checkpoint (`tools/fixtures/mt_marian.py`):
//! logits, greedy `generate()`, and (`reference_batch.*`) a right-padded batch of unequal-length
//! sources (logits, greedy and beam-4 ids) and beam-4 `generate()` item by item.

use std::path::PathBuf;

use candle_core::Tensor;
use vaak_teachers::mt::generate::pad_batch;
use vaak_teachers::mt::marian::{MarianLoadOptions, MarianTranslator};
use vaak_teachers::{Lang, TeacherError, Translator};

/// Max |logit difference| allowed against transformers (f32 on both sides; candle computes the
/// sinusoidal positions in f32, transformers in f64).
const LOGITS_TOL: f32 = 1e-4;

fn data(name: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tools/fixtures/data/mt_marian"
    ))
    .join(name)
}

fn load(name: &str) -> MarianTranslator {
    MarianTranslator::load(data(name).to_str().unwrap(), &MarianLoadOptions::default()).unwrap()
}

fn reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(data("reference.json")).unwrap()).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn rows(t: &Tensor) -> Vec<Vec<u32>> {
    t.to_dtype(candle_core::DType::U32)
        .unwrap()
        .to_vec2::<u32>()
        .unwrap()
}

fn check_logits(m: &MarianTranslator) -> f32 {
    let r =
        candle_core::safetensors::load(data("reference.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let want = &r["logits"];
    let got = m
        .logits(&rows(&r["input_ids"]), &rows(&r["decoder_input_ids"]))
        .unwrap();
    assert_eq!(got.dims(), want.dims());
    assert_eq!(got.dim(0).unwrap(), 2, "the logits batch must have 2 items");
    let err = max_abs_diff(&got, want);
    assert!(err < LOGITS_TOL, "max |logits diff| {err}");
    err
}

#[test]
fn logits_match_transformers_for_a_batch_of_two() {
    let err = check_logits(&load("opus-tiny"));
    eprintln!("safetensors: max |logits diff| = {err:e}");
}

#[test]
fn greedy_ids_and_text_match_generate_item_by_item() {
    let m = load("opus-tiny");
    let r = reference();
    assert_eq!(m.max_length(), r["max_length"].as_u64().unwrap() as usize);
    let mut early = 0;
    for row in r["generate"].as_array().unwrap() {
        let text = row["text"].as_str().unwrap();
        let src = m.tokenizer().encode_source(text, Lang::Ru).unwrap();
        assert_eq!(src, ids(&row["input_ids"]), "{text}");
        let out = m.generate(std::slice::from_ref(&src)).unwrap();
        let want = ids(&row["output_ids"]);
        assert_eq!(out[0], want, "{text}");
        early += (want.len() < m.max_length()) as usize;
        assert_eq!(
            m.tokenizer().decode(&out[0]).unwrap(),
            row["translation"].as_str().unwrap()
        );
    }
    assert!(
        early >= 2,
        "the fixture must end some outputs at </s> before max_length"
    );
}

#[test]
fn batched_translate_equals_the_reference_and_batches_equal_lengths() {
    let m = load("opus-tiny");
    let r = reference();
    let gen = r["generate"].as_array().unwrap();
    let texts: Vec<&str> = gen.iter().map(|g| g["text"].as_str().unwrap()).collect();
    // The equal-length groups go through candle as batches of >= 2 (the batch > 1 trap).
    let mut lens: Vec<usize> = gen
        .iter()
        .map(|g| g["input_ids"].as_array().unwrap().len())
        .collect();
    lens.sort();
    assert!(lens.windows(2).filter(|w| w[0] == w[1]).count() >= 2);
    let out = m.translate(&texts, Lang::Ru, Lang::En).unwrap();
    for (g, o) in gen.iter().zip(&out) {
        assert_eq!(o.as_ref().unwrap(), g["translation"].as_str().unwrap());
    }
    // And as one batch of equal-length sources, straight through generate.
    for len in lens
        .iter()
        .filter(|&&l| lens.iter().filter(|&&k| k == l).count() >= 2)
    {
        let group: Vec<&serde_json::Value> = gen
            .iter()
            .filter(|g| g["input_ids"].as_array().unwrap().len() == *len)
            .collect();
        let srcs: Vec<Vec<u32>> = group.iter().map(|g| ids(&g["input_ids"])).collect();
        let outs = m.generate(&srcs).unwrap();
        for (g, o) in group.iter().zip(outs) {
            assert_eq!(o, ids(&g["output_ids"]));
        }
    }
}

#[test]
fn pytorch_bin_with_an_old_opus_config_loads_to_the_same_model() {
    let m = load("opus-tiny-bin");
    check_logits(&m);
    assert_eq!(m.pair(), (Lang::Ru, Lang::En));
    let r = reference();
    let row = &r["generate"][1];
    let out = m.generate(&[ids(&row["input_ids"])]).unwrap();
    assert_eq!(out[0], ids(&row["output_ids"]));
}

#[test]
fn bad_items_fail_alone_and_long_text_is_split_at_sentences() {
    let m = load("opus-tiny");
    let r = reference();
    let gen = r["generate"].as_array().unwrap();
    let sentences: Vec<&str> = gen.iter().map(|g| g["text"].as_str().unwrap()).collect();
    let long = sentences.join(" ");
    let limit = m.config().max_position_embeddings;
    assert!(m.tokenizer().encode_source(&long, Lang::Ru).unwrap().len() > limit);
    // The chunks a greedy packer makes from whole sentences.
    let mut chunks: Vec<String> = Vec::new();
    for s in &sentences {
        let joined = chunks.last().map(|c| format!("{c} {s}"));
        match joined {
            Some(j) if m.tokenizer().encode_source(&j, Lang::Ru).unwrap().len() <= limit => {
                *chunks.last_mut().unwrap() = j;
            }
            _ => chunks.push(s.to_string()),
        }
    }
    assert!(chunks.len() >= 2);
    let chunk_refs: Vec<&str> = chunks.iter().map(String::as_str).collect();
    let per_chunk = m.translate(&chunk_refs, Lang::Ru, Lang::En).unwrap();
    let expected = per_chunk
        .into_iter()
        .map(|r| r.unwrap())
        .collect::<Vec<_>>()
        .join(" ");

    let unsplittable = "слово ".repeat(80);
    let batch = [
        sentences[0],
        "",
        "  \t ",
        long.as_str(),
        unsplittable.as_str(),
    ];
    let out = m.translate(&batch, Lang::Ru, Lang::En).unwrap();
    assert_eq!(
        out[0].as_ref().unwrap(),
        gen[0]["translation"].as_str().unwrap()
    );
    for i in [1, 2] {
        let e = out[i].as_ref().unwrap_err().to_string();
        assert!(
            e.contains(&format!("item {i}")) && e.contains("empty"),
            "{e}"
        );
    }
    assert_eq!(out[3].as_ref().unwrap(), &expected);
    let e = out[4].as_ref().unwrap_err().to_string();
    assert!(
        e.contains("item 4") && e.contains("max_position_embeddings"),
        "{e}"
    );
}

#[test]
fn wrong_pair_and_missing_files_are_errors() {
    let m = load("opus-tiny");
    assert!(m.supports(Lang::Ru) && m.supports(Lang::En) && !m.supports(Lang::Hi));
    match m.translate(&["Привет"], Lang::En, Lang::Ru) {
        Err(TeacherError::UnsupportedLanguage {
            code, supported, ..
        }) => {
            assert_eq!(code, "en->ru");
            assert_eq!(supported, "ru->en");
        }
        other => panic!("unexpected {:?}", other.map(|_| ())),
    }
    let tmp = tempfile::tempdir().unwrap();
    let e = MarianTranslator::load(tmp.path().to_str().unwrap(), &MarianLoadOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("config.json"), "{e}");
    std::fs::copy(
        data("opus-tiny/config.json"),
        tmp.path().join("config.json"),
    )
    .unwrap();
    let e = MarianTranslator::load(tmp.path().to_str().unwrap(), &MarianLoadOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("tokenizer"), "{e}");
}

fn batch_reference() -> (std::collections::HashMap<String, Tensor>, serde_json::Value) {
    let t = candle_core::safetensors::load(
        data("reference_batch.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let j = std::fs::read_to_string(data("reference_batch.json")).unwrap();
    (t, serde_json::from_str(&j).unwrap())
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

/// The unpadded sources of the padded reference batch.
fn padded_sources(j: &serde_json::Value) -> Vec<Vec<u32>> {
    j["padded"]["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(ids)
        .collect()
}

fn id_rows(v: &serde_json::Value) -> Vec<Vec<u32>> {
    v.as_array().unwrap().iter().map(ids).collect()
}

#[test]
fn padded_batch_logits_match_transformers() {
    let m = load("opus-tiny");
    let (t, j) = batch_reference();
    let srcs = padded_sources(&j);
    let lens: Vec<usize> = srcs.iter().map(Vec::len).collect();
    assert!(
        lens.iter().collect::<std::collections::HashSet<_>>().len() == lens.len(),
        "{lens:?}"
    );
    // The stored ids are these sources right-padded, as the mask says.
    let padded = rows(&t["input_ids"]);
    let mask = rows(&t["attention_mask"]);
    for ((s, p), k) in srcs.iter().zip(&padded).zip(&mask) {
        assert_eq!(&p[..s.len()], s.as_slice());
        assert_eq!(k.iter().filter(|&&x| x == 1).count(), s.len());
    }
    let dec = rows(&t["decoder_input_ids"]);
    let got = m.logits(&srcs, &dec).unwrap();
    let err = max_abs_diff(&got, &t["logits"]);
    eprintln!("padded batch: max |logits diff| = {err:e}");
    assert!(err < LOGITS_TOL, "max |logits diff| {err}");
    // Each row alone gives its batch row.
    for (i, s) in srcs.iter().enumerate() {
        let one = m.logits(std::slice::from_ref(s), &dec[i..i + 1]).unwrap();
        let err = max_abs_diff(&one, &got.narrow(0, i, 1).unwrap());
        assert!(err < LOGITS_TOL, "row {i} alone vs batched: {err}");
    }
}

#[test]
fn padded_batch_greedy_and_beam4_ids_match_generate() {
    let m = load("opus-tiny");
    let (_, j) = batch_reference();
    let srcs = padded_sources(&j);
    let pad = m.generation_params().pad_token_id;
    let greedy = m.generate_ids(&srcs, m.generation_params()).unwrap();
    assert_eq!(pad_batch(&greedy, pad), id_rows(&j["padded"]["greedy"]));
    let mut p = m.generation_params().clone();
    p.num_beams = j["num_beams"].as_u64().unwrap() as usize;
    assert_eq!(p.num_beams, 4);
    let beam = m.generate_ids(&srcs, &p).unwrap();
    let want = id_rows(&j["padded"]["beam4"]);
    assert_eq!(pad_batch(&beam, pad), want);
    assert_ne!(
        pad_batch(&greedy, pad),
        want,
        "beam search must differ from greedy here"
    );
}

#[test]
fn beam4_ids_and_text_match_generate_item_by_item() {
    let r = batch_reference().1;
    let opts = MarianLoadOptions {
        num_beams: Some(4),
        ..MarianLoadOptions::default()
    };
    let m = MarianTranslator::load(data("opus-tiny").to_str().unwrap(), &opts).unwrap();
    let greedy = reference();
    let mut differ = 0;
    let mut texts = Vec::new();
    for (row, g) in r["beam4"]
        .as_array()
        .unwrap()
        .iter()
        .zip(greedy["generate"].as_array().unwrap())
    {
        let src = ids(&row["input_ids"]);
        let out = m.generate(std::slice::from_ref(&src)).unwrap();
        assert_eq!(out[0], ids(&row["output_ids"]), "{}", row["text"]);
        differ += (out[0] != ids(&g["output_ids"])) as usize;
        texts.push(row["text"].as_str().unwrap());
    }
    assert!(
        differ >= 2,
        "beam search must differ from greedy on some items"
    );
    // Batched through translate: the same translations.
    let out = m.translate(&texts, Lang::Ru, Lang::En).unwrap();
    for (row, o) in r["beam4"].as_array().unwrap().iter().zip(&out) {
        assert_eq!(o.as_ref().unwrap(), row["translation"].as_str().unwrap());
    }
}
