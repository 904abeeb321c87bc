//! Examples built from audio through the bundled vaak-16k codec: clips and pairs are encoded
//! once into the code cache (a second build reads them back), and broken samples (a missing
//! file, an unreadable WAV, a bad speaker file, an unknown language) are skipped and counted,
//! never an error; pairs the cascade marked bad are left out unless asked for.

use std::path::{Path, PathBuf};

use candle_core::Device;
use vaak_audio::io::{write_wav, WavFormat};
use vaak_s2s::text::CharTokenizer;
use vaak_s2s::train::{
    build_clip_examples, build_pair_examples, AudioTokenizer, CodeCache, PairFiles,
};
use vaak_s2s::Language;

fn tone(path: &Path, f0: f32, secs: f32) {
    let sr = 16_000;
    let n = (secs * sr as f32) as usize;
    let x: Vec<f32> = (0..n)
        .map(|i| 0.3 * (2.0 * std::f32::consts::PI * f0 * i as f32 / sr as f32).sin())
        .collect();
    write_wav(path, &x, sr, WavFormat::Pcm16).unwrap();
}

fn pair(dir: &Path, id: &str) -> PairFiles {
    let d = dir.join(id);
    std::fs::create_dir_all(&d).unwrap();
    tone(&d.join("src.wav"), 180.0, 0.4);
    tone(&d.join("tgt.wav"), 220.0, 0.32);
    let spk = d.join("spk.npy");
    candle_core::Tensor::from_vec(vec![0.5f32; 4], 4, &Device::Cpu)
        .unwrap()
        .write_npy(&spk)
        .unwrap();
    PairFiles {
        id: id.into(),
        src_wav: d.join("src.wav"),
        tgt_wav: d.join("tgt.wav"),
        spk_npy: Some(spk),
        tokens_npy: None,
        tgt_lang: Some("ru".into()),
        emotion: Some("happy".into()),
        tgt_txt: None,
        bad: false,
    }
}

#[test]
fn builders_cache_codes_and_skip_broken_samples() {
    let dir = tempfile::tempdir().unwrap();
    let tok = AudioTokenizer::load("vaak-16k", Some(2), &Device::Cpu).unwrap();
    assert_eq!(tok.spec().num_codebooks, 2);
    let cache_dir = dir.path().join("cache");

    // Clips: two good ones, one missing, one that is not audio.
    let clips: Vec<PathBuf> = ["a.wav", "b.wav", "missing.wav", "junk.wav"]
        .iter()
        .map(|n| dir.path().join(n))
        .collect();
    tone(&clips[0], 200.0, 0.4);
    tone(&clips[1], 300.0, 0.2);
    std::fs::write(&clips[3], b"not a wav file at all").unwrap();
    let mut cache = CodeCache::open(&cache_dir, &tok).unwrap();
    let mut seen = 0;
    let (ex, rep) = build_clip_examples(&clips, &tok, &mut cache, &mut || seen += 1).unwrap();
    assert_eq!(seen, 4);
    assert_eq!(
        (ex.len(), rep.used, rep.skipped.len()),
        (2, 2, 2),
        "{rep:?}"
    );
    assert!(rep
        .skipped
        .iter()
        .any(|(id, _)| id.ends_with("missing.wav")));
    assert!(rep.skipped.iter().any(|(id, _)| id.ends_with("junk.wav")));
    // 25 Hz: 0.4 s is 10 frames of 2 codes; unpaired clips have no source.
    assert_eq!(ex[0].target.len(), 10);
    assert!(ex[0].target.iter().all(|f| f.len() == 2));
    assert!(!ex[0].is_paired());
    assert_eq!(rep.encoded, 2);

    // Read back from the cache: nothing encoded again, the same codes.
    let mut cache = CodeCache::open(&cache_dir, &tok).unwrap();
    let (ex2, rep2) = build_clip_examples(&clips[..2], &tok, &mut cache, &mut || {}).unwrap();
    assert_eq!((rep2.encoded, rep2.cache_hits), (0, 2));
    assert_eq!(ex2, ex);
    // Another codebook count is another cache.
    let tok3 = AudioTokenizer::load("vaak-16k", Some(3), &Device::Cpu).unwrap();
    let mut cache3 = CodeCache::open(&cache_dir, &tok3).unwrap();
    let (ex3, rep3) = build_clip_examples(&clips[..1], &tok3, &mut cache3, &mut || {}).unwrap();
    assert_eq!((rep3.encoded, ex3[0].target[0].len()), (1, 3));

    // Pairs.
    let pd = dir.path().join("pairs");
    let good = pair(&pd, "good");
    let mut no_tgt = pair(&pd, "no_tgt");
    std::fs::remove_file(&no_tgt.tgt_wav).unwrap();
    no_tgt.tokens_npy = Some(pd.join("no_tgt/tokens.npy"));
    let junk_src = pair(&pd, "junk_src");
    std::fs::write(&junk_src.src_wav, b"RIFF....garbage").unwrap();
    let bad_spk = pair(&pd, "bad_spk");
    std::fs::write(bad_spk.spk_npy.as_ref().unwrap(), b"nope").unwrap();
    let mut bad_lang = pair(&pd, "bad_lang");
    bad_lang.tgt_lang = Some("xx".into());
    let mut flagged = pair(&pd, "flagged");
    flagged.bad = true;
    // tokens.npy of the right length is used for the target.
    let mut with_tokens = pair(&pd, "with_tokens");
    let tokens: Vec<i64> = (0..16).map(|i| (i * 7) % 1024).collect();
    let tp = pd.join("with_tokens/tokens.npy");
    candle_core::Tensor::from_vec(tokens, (2, 8), &Device::Cpu)
        .unwrap()
        .write_npy(&tp)
        .unwrap();
    with_tokens.tokens_npy = Some(tp);
    let pairs = vec![
        good,
        no_tgt,
        junk_src,
        bad_spk,
        bad_lang,
        flagged.clone(),
        with_tokens,
    ];
    let mut cache = CodeCache::open(&cache_dir, &tok).unwrap();
    let (ex, rep) =
        build_pair_examples(&pairs, &tok, &mut cache, false, false, &mut || {}).unwrap();
    let ids: Vec<&str> = ex.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["good", "with_tokens"]);
    assert_eq!((rep.used, rep.bad, rep.skipped.len()), (2, 1, 4), "{rep:?}");
    let skipped: Vec<&str> = rep.skipped.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(skipped, ["no_tgt", "junk_src", "bad_spk", "bad_lang"]);
    let lang_reason = &rep.skipped[3].1;
    assert!(
        lang_reason.contains("xx") && lang_reason.contains("en"),
        "{lang_reason}"
    );
    let g = &ex[0];
    assert_eq!((g.source.len(), g.target.len()), (10, 8));
    assert_eq!(g.language, Language::Ru);
    assert_eq!(g.emotion.name(), "happy");
    assert_eq!(g.speaker.as_deref(), Some(&[0.5f32; 4][..]));
    // A 220 Hz target: pitch about log2(220/150) octaves, fully active.
    assert!(
        (g.prosody[0] - (220f32 / 150.0).log2()).abs() < 0.1,
        "{:?}",
        g.prosody
    );
    assert!(g.prosody[2] > 0.9, "{:?}", g.prosody);
    assert_eq!(ex[1].target[1], vec![7, 63]);
    // Asked for, the flagged pair is used.
    let (ex, rep) =
        build_pair_examples(&[flagged], &tok, &mut cache, true, false, &mut || {}).unwrap();
    assert_eq!((ex.len(), rep.bad), (1, 0));
}

#[test]
fn text_stream_spreads_the_target_text_over_its_voiced_frames() {
    let dir = tempfile::tempdir().unwrap();
    let tok = AudioTokenizer::load("vaak-16k", Some(2), &Device::Cpu).unwrap();
    let mut cache = CodeCache::open(&dir.path().join("cache"), &tok).unwrap();
    // Target: 0.2 s silence, 0.4 s tone, 0.2 s silence (20 frames at 25 Hz).
    let mut with_text = pair(dir.path(), "with_text");
    let sr = 16_000;
    let mut x = vec![0.0f32; 3200];
    x.extend(
        (0..6400).map(|i| 0.3 * (2.0 * std::f32::consts::PI * 220.0 * i as f32 / sr as f32).sin()),
    );
    x.extend(vec![0.0f32; 3200]);
    write_wav(&with_text.tgt_wav, &x, sr as u32, WavFormat::Pcm16).unwrap();
    let txt = dir.path().join("with_text/tgt.txt");
    std::fs::write(&txt, "Да, 5.\n").unwrap();
    with_text.tgt_txt = Some(txt);
    let no_text = pair(dir.path(), "no_text");
    let (ex, rep) = build_pair_examples(
        &[with_text, no_text],
        &tok,
        &mut cache,
        false,
        true,
        &mut || {},
    )
    .unwrap();
    assert_eq!(ex.len(), 1);
    assert_eq!(rep.skipped.len(), 1, "{rep:?}");
    assert_eq!(rep.skipped[0].0, "no_text");
    let e = &ex[0];
    let text = e.text.as_ref().unwrap();
    assert_eq!(text.len(), e.target.len());
    // Every character, in order, once; only on the voiced middle (frames 5..15).
    let placed: Vec<(usize, u32)> = text
        .iter()
        .enumerate()
        .filter(|(_, &t)| t != CharTokenizer::PAD)
        .map(|(f, &t)| (f, t))
        .collect();
    let ids: Vec<u32> = placed.iter().map(|p| p.1).collect();
    assert_eq!(CharTokenizer.decode(&ids), "да, 5.");
    assert!(
        placed.iter().all(|&(f, _)| (4..=15).contains(&f)),
        "{placed:?}"
    );
    assert!(text[..4]
        .iter()
        .chain(&text[16..])
        .all(|&t| t == CharTokenizer::PAD));
}

/// A code cache is keyed by the codec's weights, not only its name: retraining the codec
/// (its codebooks move) starts a fresh cache instead of reusing stale codes.
#[test]
fn code_cache_key_follows_the_codec_weights() {
    use vaak_codec::Codec;
    let same = |c: Codec| AudioTokenizer::new(c, "vaak-16k", Some(2)).unwrap();
    let a = same(Codec::bundled_vaak_16k(&Device::Cpu).unwrap());
    let b = same(Codec::bundled_vaak_16k(&Device::Cpu).unwrap());
    assert_eq!(a.cache_key(), b.cache_key());
    let mut retrained = Codec::bundled_vaak_16k(&Device::Cpu).unwrap();
    let rvq = retrained.residual_vq().unwrap();
    let moved = (rvq.codebooks()[3].embed() * 1.001).unwrap();
    retrained
        .set_codebook(3, vaak_nn::rvq::Codebook::new(moved).unwrap())
        .unwrap();
    let c = same(retrained);
    assert_ne!(a.cache_key(), c.cache_key());
    assert!(
        c.cache_key().starts_with("vaak-16k#2#"),
        "{}",
        c.cache_key()
    );
}
