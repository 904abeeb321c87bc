//! Parity of [`MtTokenizer`] with transformers (`M2M100Tokenizer`, `NllbTokenizer`,
//! `MarianTokenizer`) on tiny SentencePiece models in the published layouts
//! (`tools/fixtures/mt_tokenizers.py`): every `input_ids` and every decode must be equal.

use std::path::PathBuf;

use vaak_nn::weights::{HubOptions, WeightLocation};
use vaak_teachers::mt::spm::SentencePiece;
use vaak_teachers::mt::tokenizer::{MtTokenizer, TokenizerKind};
use vaak_teachers::{Lang, TeacherError};

fn dir(name: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tools/fixtures/data/mt_tokenizers"
    ))
    .join(name)
}

fn reference() -> serde_json::Value {
    let text = std::fs::read_to_string(dir("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn load(name: &str) -> MtTokenizer {
    MtTokenizer::load(&WeightLocation::Local(dir(name)), &HubOptions::default()).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Asserts token-for-token equality of every encode and decode in the reference; returns the
/// number of `<unk>` ids seen, so callers can check the unknown paths were exercised.
fn check(tok: &MtTokenizer, reference: &serde_json::Value) -> usize {
    let mut unk = 0;
    let mut failures = Vec::new();
    for row in reference["encode"].as_array().unwrap() {
        let lang: Lang = row["lang"].as_str().unwrap().parse().unwrap();
        let text = row["text"].as_str().unwrap();
        let want = ids(&row["ids"]);
        let got = tok.encode_source(text, lang).unwrap();
        unk += want.iter().filter(|&&i| i == tok.unk_id()).count();
        if got != want {
            failures.push(format!(
                "encode {text:?} ({lang}):\n  got  {got:?}\n  want {want:?}"
            ));
        }
    }
    for case in reference["decode"].as_array().unwrap() {
        let input = ids(&case["ids"]);
        let want = case["text"].as_str().unwrap();
        let got = tok.decode(&input).unwrap();
        if got != want {
            failures.push(format!(
                "decode {input:?}:\n  got  {got:?}\n  want {want:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    unk
}

fn check_specials(tok: &MtTokenizer, r: &serde_json::Value) {
    let s = &r["specials"];
    assert_eq!(tok.pad_id() as u64, s["pad"].as_u64().unwrap());
    assert_eq!(tok.eos_id() as u64, s["eos"].as_u64().unwrap());
    assert_eq!(tok.unk_id() as u64, s["unk"].as_u64().unwrap());
    if let Some(bos) = s["bos"].as_u64() {
        assert_eq!(tok.bos_id() as u64, bos);
    }
}

#[test]
fn m2m100_matches_transformers_token_for_token() {
    let r = &reference()["m2m100"];
    let tok = load("m2m100");
    assert_eq!(tok.kind(), TokenizerKind::M2m100);
    check_specials(&tok, r);
    for (code, id) in r["lang_ids"].as_object().unwrap() {
        let lang: Lang = code.parse().unwrap();
        assert_eq!(
            tok.lang_token_id(lang).unwrap() as u64,
            id.as_u64().unwrap()
        );
    }
    assert_eq!(
        tok.vocab_size(),
        r["specials"]["len"].as_u64().unwrap() as usize
    );
    let unk = check(&tok, r);
    assert!(unk >= 5, "the fixture must exercise unknown pieces ({unk})");
}

#[test]
fn m2m100_has_no_telugu_and_says_which_languages_it_has() {
    let tok = load("m2m100");
    let e = tok.encode_source("ఈ రోజు", Lang::Te).unwrap_err();
    match &e {
        TeacherError::UnsupportedLanguage {
            code, supported, ..
        } => {
            assert_eq!(code, "te");
            assert_eq!(supported, "en, ru, hi");
        }
        other => panic!("unexpected error {other}"),
    }
}

#[test]
fn nllb_matches_transformers_token_for_token() {
    let r = &reference()["nllb"];
    let tok = load("nllb");
    assert_eq!(tok.kind(), TokenizerKind::Nllb);
    check_specials(&tok, r);
    for (code, id) in r["lang_ids"].as_object().unwrap() {
        let lang: Lang = code.parse().unwrap();
        assert_eq!(
            tok.lang_token_id(lang).unwrap() as u64,
            id.as_u64().unwrap()
        );
    }
    assert_eq!(
        tok.vocab_size(),
        r["specials"]["len"].as_u64().unwrap() as usize
    );
    check(&tok, r);
}

#[test]
fn marian_matches_transformers_token_for_token() {
    let r = &reference()["marian"];
    let tok = load("marian");
    assert_eq!(tok.kind(), TokenizerKind::Marian);
    check_specials(&tok, r);
    assert_eq!(
        tok.bos_id(),
        tok.pad_id(),
        "Marian starts decoding from <pad>"
    );
    assert!(tok.lang_token_id(Lang::Ru).is_err());
    assert_eq!(
        tok.vocab_size(),
        r["specials"]["len"].as_u64().unwrap() as usize
    );
    // The fixture's config says source_lang "ru"; the rows are all encoded as such there.
    let mut r = r.clone();
    for row in r["encode"].as_array_mut().unwrap() {
        row["lang"] = "ru".into();
    }
    let unk = check(&tok, &r);
    assert!(unk >= 5, "the fixture must exercise unknown pieces ({unk})");
    let e = tok
        .encode_source("hello", Lang::En)
        .unwrap_err()
        .to_string();
    assert!(e.contains("'en'") && e.contains("ru"), "{e}");
}

#[test]
fn missing_and_corrupt_files_are_typed_errors_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let e = MtTokenizer::load(
        &WeightLocation::Local(tmp.path().into()),
        &HubOptions::default(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("no MT tokenizer found"), "{e}");

    for f in [
        "source.spm",
        "target.spm",
        "vocab.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(dir("marian").join(f), tmp.path().join(f)).unwrap();
    }
    let bytes = std::fs::read(dir("marian").join("source.spm")).unwrap();
    std::fs::write(tmp.path().join("source.spm"), &bytes[..bytes.len() / 3]).unwrap();
    let e = MtTokenizer::load(
        &WeightLocation::Local(tmp.path().into()),
        &HubOptions::default(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("source.spm") && e.contains("SentencePiece"),
        "{e}"
    );

    std::fs::remove_file(tmp.path().join("target.spm")).unwrap();
    std::fs::copy(
        dir("marian").join("source.spm"),
        tmp.path().join("source.spm"),
    )
    .unwrap();
    let e = MtTokenizer::load(
        &WeightLocation::Local(tmp.path().into()),
        &HubOptions::default(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("target.spm") && e.contains("missing"), "{e}");

    let err =
        SentencePiece::from_bytes(b"\x0a\x05abc", std::path::Path::new("x.model")).unwrap_err();
    assert!(err.to_string().contains("x.model"), "{err}");
}
