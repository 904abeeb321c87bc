//! `M2m100Translator` end to end against transformers (tokenizer -> `generate()` ->
//! `batch_decode`) on tiny models sized to the MT tokenizer fixtures
//! (`tools/fixtures/mt_m2m100.py`, `e2e_*`), plus per-item errors, long-text splitting and
//! unsupported languages.

use std::path::{Path, PathBuf};

use serde_json::Value;
use vaak_teachers::mt::generate::MaxLength;
use vaak_teachers::mt::local::{M2m100Translator, M2m100TranslatorOptions};
use vaak_teachers::{Lang, TeacherError, Translator};

const DATA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tools/fixtures/data/mt_m2m100"
);

fn dir(name: &str) -> PathBuf {
    Path::new(DATA).join(name)
}

fn e2e(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir(name).join("e2e.json")).unwrap()).unwrap()
}

/// Options reproducing the fixture's `generate()` call.
fn opts(j: &Value) -> M2m100TranslatorOptions {
    let g = &j["generate"];
    M2m100TranslatorOptions {
        num_beams: Some(g["num_beams"].as_u64().unwrap() as usize),
        length_penalty: g["length_penalty"].as_f64().map(|x| x as f32),
        max_length: Some(MaxLength::Fixed(g["max_length"].as_u64().unwrap() as usize)),
        batch_size: 3,
        allow_truncated: true,
        ..Default::default()
    }
}

fn translator(name: &str, o: &M2m100TranslatorOptions) -> M2m100Translator {
    M2m100Translator::load(dir(name).to_str().unwrap(), o).unwrap()
}

#[test]
fn translations_match_transformers_end_to_end() {
    for (name, src, tgt) in [
        ("e2e_m2m", Lang::En, Lang::Ru),
        ("e2e_nllb", Lang::En, Lang::Te),
    ] {
        let j = e2e(name);
        let t = translator(name, &opts(&j));
        let texts: Vec<&str> = j["texts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let expected: Vec<&str> = j["translations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let got: Vec<String> = t
            .translate(&texts, src, tgt)
            .unwrap()
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(got, expected, "{name}");
        // Batched by length in chunks of 3 across 4 items; each alone gives the same text.
        for (text, exp) in texts.iter().zip(&expected) {
            let one = t.translate(&[text], src, tgt).unwrap().remove(0).unwrap();
            assert_eq!(&one, exp, "{name}: {text:?} alone");
        }
        // The fixture's generated ids are reproduced too (decoder start and forced BOS
        // included), so the decode is not hiding a difference.
        let ids: Vec<Vec<u32>> = j["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as u32)
                    .collect()
            })
            .collect();
        let sources: Vec<Vec<u32>> = texts
            .iter()
            .map(|s| t.tokenizer().encode_source(s, src).unwrap())
            .collect();
        let gen = t.generate_ids(&sources, tgt).unwrap();
        let pad = t.model().config().pad_token_id;
        assert_eq!(
            vaak_teachers::mt::generate::pad_batch(&gen, pad),
            ids,
            "{name} ids"
        );
        println!("{name}: {got:?}");
    }
}

#[test]
fn per_item_errors_and_truncation() {
    let j = e2e("e2e_m2m");
    let mut o = opts(&j);
    o.allow_truncated = false;
    let t = translator("e2e_m2m", &o);
    let lens: Vec<usize> = j["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .filter(|x| x.as_u64() != Some(1))
                .count()
        })
        .collect();
    let max_len = j["generate"]["max_length"].as_u64().unwrap() as usize;
    let texts = ["Hello!", "   ", "", "We meet at noon"];
    let r = t.translate(&texts, Lang::En, Lang::Ru).unwrap();
    assert_eq!(r.len(), 4);
    for i in [1, 2] {
        let e = r[i].as_ref().unwrap_err().to_string();
        assert!(
            e.contains(&format!("item {i}")) && e.contains("empty"),
            "{e}"
        );
    }
    // "Hello!" is fixture item 1, "We meet at noon" item 3: each ended before the limit.
    assert!(lens[1] < max_len && lens[3] < max_len, "{lens:?}");
    assert!(r[0].is_ok() && r[3].is_ok());
    // A limit too short to end: the item is flagged, not silently cut.
    let mut o = opts(&j);
    o.allow_truncated = false;
    o.max_length = Some(MaxLength::Fixed(3));
    let t = translator("e2e_m2m", &o);
    let r = t.translate(&["Hello!"], Lang::En, Lang::Ru).unwrap();
    let e = r[0].as_ref().unwrap_err().to_string();
    assert!(e.contains("length limit"), "{e}");
}

#[test]
fn long_text_is_split_at_sentences() {
    let j = e2e("e2e_nllb");
    let t = translator("e2e_nllb", &opts(&j));
    let max = t.model().config().max_position_embeddings;
    let sentence = "The weather is nice today, and we are going to the park.";
    let n = t
        .tokenizer()
        .encode_source(sentence, Lang::En)
        .unwrap()
        .len();
    let k = max / (n - 2) + 2;
    let long = vec![sentence; k].join(" ");
    assert!(t.tokenizer().encode_source(&long, Lang::En).unwrap().len() > max);
    let r = t.translate(&[&long, sentence], Lang::En, Lang::Te).unwrap();
    assert!(r[1].is_ok());
    // Sentences are packed greedily into pieces that fit; the result is the pieces'
    // translations joined with spaces.
    let fits = |m: usize| {
        let text = vec![sentence; m].join(" ");
        t.tokenizer().encode_source(&text, Lang::En).unwrap().len() <= max
    };
    let per_piece = (1..=k).take_while(|&m| fits(m)).last().unwrap();
    assert!(per_piece < k);
    let mut pieces = Vec::new();
    let mut left = k;
    while left > 0 {
        let m = left.min(per_piece);
        pieces.push(vec![sentence; m].join(" "));
        left -= m;
    }
    let piece_refs: Vec<&str> = pieces.iter().map(|s| s.as_str()).collect();
    let expected: Vec<String> = t
        .translate(&piece_refs, Lang::En, Lang::Te)
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(r[0].as_ref().unwrap(), &expected.join(" "));
    // One sentence longer than the positions is a per-item error naming the limit.
    let no_stop = vec!["word"; max * 2].join(" ");
    let r = t
        .translate(&[&no_stop, sentence], Lang::En, Lang::Te)
        .unwrap();
    let e = r[0].as_ref().unwrap_err().to_string();
    assert!(
        e.contains("item 0") && e.contains(&format!("{max} positions")),
        "{e}"
    );
    assert!(r[1].is_ok());
}

#[test]
fn unsupported_language_names_the_supported_codes() {
    let j = e2e("e2e_m2m");
    let t = translator("e2e_m2m", &opts(&j));
    // The M2M-100 tokenizer fixture, like M2M-100, has no Telugu.
    assert!(t.supports(Lang::En) && t.supports(Lang::Ru) && t.supports(Lang::Hi));
    assert!(!t.supports(Lang::Te));
    let e = t.translate(&["Hello!"], Lang::En, Lang::Te).unwrap_err();
    assert!(matches!(e, TeacherError::UnsupportedLanguage { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("'te'") && msg.contains("en, ru, hi"), "{msg}");
    let nllb = translator("e2e_nllb", &opts(&e2e("e2e_nllb")));
    assert!(Lang::ALL.iter().all(|&l| nllb.supports(l)));
}
