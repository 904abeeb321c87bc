//! The numbers and pictures of an S2S model card, from a finished `vaak train s2s` run.
//!
//! ```text
//! cargo run --release -p vaak-s2s --example s2s_model_card -- RUN DATA CACHE MODEL_DIR [--f16]
//! ```
//!
//! - copies `RUN/export` (config.json, codec.json, model.safetensors; the weights as f16
//!   with `--f16`) to `MODEL_DIR`;
//! - rebuilds the run's examples from `DATA` through the code cache `CACHE` and its seeded
//!   held-out split (the trainer's own), then scores the model in `MODEL_DIR` (as shipped)
//!   and the unigram and copy-the-source baselines on the held-out pairs
//!   (`vaak_s2s::train::baselines`): `MODEL_DIR/card.json`;
//! - `MODEL_DIR/heldout/`: the codes of 5 held-out pairs (`<id>.src.npy`, `<id>.tgt.npy`),
//!   `pairs.json` (ids, target languages, aligned text ids when the model has a text
//!   stream) and the first pair's source audio (`<id>.src.wav`) for the bundled model's test;
//! - `MODEL_DIR/curves.png` (train and validation loss, validation accuracy) from
//!   `RUN/metrics.jsonl`, and `MODEL_DIR/reply_vs_target.png` + `sample_reply.wav`: the
//!   model's greedy reply to the first held-out source against its target.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use vaak_audio::io::{write_wav, WavFormat};
use vaak_s2s::train::{
    build_pair_examples, copy_accuracy, model_accuracy, parallel_pairs, unigram_accuracy,
    unigram_codes, write_codes, AudioTokenizer, CodeCache, S2sTrainConfig, S2sTrainer,
};
use vaak_s2s::{Emotion, GenerationConfig, S2sModel, SlotCondition, SpeechModel};

const HELDOUT_PAIRS: usize = 5;

fn copy_export(export: &Path, out: &Path, f16: bool) -> Result<()> {
    std::fs::create_dir_all(out)?;
    for f in ["config.json", "codec.json"] {
        std::fs::copy(export.join(f), out.join(f))
            .with_context(|| format!("copying {}", export.join(f).display()))?;
    }
    let src = export.join("model.safetensors");
    let dst = out.join("model.safetensors");
    if f16 {
        let t: HashMap<String, Tensor> = candle_core::safetensors::load(&src, &Device::Cpu)?;
        let t: HashMap<String, Tensor> = t
            .into_iter()
            .map(|(k, v)| Ok((k, v.to_dtype(DType::F16)?)))
            .collect::<candle_core::Result<_>>()?;
        candle_core::safetensors::save(&t, &dst)?;
    } else {
        std::fs::copy(&src, &dst)?;
    }
    Ok(())
}

fn curves(run: &Path, png: &Path) -> Result<()> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl"))?;
    let (mut loss, mut val_loss, mut acc0, mut acc_mean) = (vec![], vec![], vec![], vec![]);
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let Some(step) = v["step"].as_f64() else {
            continue;
        };
        if let Some(l) = v["loss"].as_f64() {
            loss.push((step, l));
        }
        if let Some(l) = v["val_loss"].as_f64() {
            val_loss.push((step, l));
        }
        if let Some(a) = v["val_accuracy"].as_array() {
            let a: Vec<f64> = a.iter().filter_map(|x| x.as_f64()).collect();
            if let Some(&first) = a.first() {
                acc0.push((step, first));
                acc_mean.push((step, a.iter().sum::<f64>() / a.len() as f64));
            }
        }
    }
    vaak_audio::plot::curves_png(
        png,
        "S2S training: loss (log scale)",
        &[("train loss", &loss), ("val loss", &val_loss)],
        true,
    )?;
    let acc_png = png.with_file_name("val_accuracy.png");
    vaak_audio::plot::curves_png(
        &acc_png,
        "held-out token accuracy",
        &[("codebook 0", &acc0), ("mean of codebooks", &acc_mean)],
        false,
    )?;
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let f16 = args.iter().any(|a| a == "--f16");
    let pos: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let [run, data, cache, out] = pos[..] else {
        bail!("usage: s2s_model_card RUN DATA CACHE MODEL_DIR [--f16]");
    };
    let (run, data, cache, out) = (
        PathBuf::from(run),
        PathBuf::from(data),
        PathBuf::from(cache),
        PathBuf::from(out),
    );
    let dev = Device::Cpu;
    copy_export(&run.join("export"), &out, f16)?;

    let cfg_text = std::fs::read_to_string(run.join("train_config.yaml"))?;
    let cfg = S2sTrainConfig::from_yaml(&cfg_text)?;
    let tok = AudioTokenizer::load(&cfg.codec, cfg.data.codebooks, &dev)?;
    let mut cc = CodeCache::open(&cache, &tok)?;
    let (pairs, _) = parallel_pairs(&data)?;
    let text = cfg.model_config(tok.spec())?.text_vocab_size.is_some();
    let (examples, rep) = build_pair_examples(&pairs, &tok, &mut cc, false, text, &mut || {})?;
    let trainer = S2sTrainer::new(cfg.clone(), tok.spec(), examples, None, &dev)?;
    let (train, val) = (trainer.train_examples(), trainer.val_examples());
    eprintln!(
        "{} pairs ({} skipped): {} train, {} held out",
        rep.used,
        rep.skipped.len(),
        train.len(),
        val.len()
    );

    let (model, _) = S2sModel::load(&out, &dev)?;
    let k = model.config().codec.num_codebooks;
    let uni_codes = unigram_codes(train, k)?;
    let uni = unigram_accuracy(val, &uni_codes)?;
    let copy = copy_accuracy(val, k)?;
    let (m, loss) = model_accuracy(&model, val)?;
    let params: usize = {
        let t: HashMap<String, Tensor> =
            candle_core::safetensors::load(out.join("model.safetensors"), &dev)?;
        t.values().map(|v| v.elem_count()).sum()
    };
    let card = serde_json::json!({
        "train_pairs": train.len(),
        "heldout_pairs": val.len(),
        "parameters": params,
        "heldout_loss": loss,
        "accuracy": {
            "model": m.accuracy(),
            "unigram": uni.accuracy(),
            "copy": copy.accuracy(),
        },
        "accuracy_mean": {
            "model": m.mean(),
            "unigram": uni.mean(),
            "copy": copy.mean(),
        },
        "scored_positions": m.total,
        "unigram_codes": uni_codes,
    });
    std::fs::write(out.join("card.json"), serde_json::to_string_pretty(&card)?)?;
    println!("{}", serde_json::to_string_pretty(&card)?);

    // Held-out pairs for the bundled model's test.
    let hdir = out.join("heldout");
    std::fs::create_dir_all(&hdir)?;
    let mut listed = Vec::new();
    for e in val.iter().take(HELDOUT_PAIRS) {
        write_codes(&hdir.join(format!("{}.src.npy", e.id)), &e.source)?;
        write_codes(&hdir.join(format!("{}.tgt.npy", e.id)), &e.target)?;
        // A model with a text stream needs each pair's aligned text ids (one per frame).
        listed.push(serde_json::json!({"id": e.id, "tgt_lang": e.language.code(), "text": e.text}));
    }
    std::fs::write(
        hdir.join("pairs.json"),
        serde_json::to_string_pretty(&listed)?,
    )?;

    // The first held-out pair: greedy reply vs target.
    let first = &val[0];
    let files = pairs
        .iter()
        .find(|p| p.id == first.id)
        .context("held-out pair not among the pairs")?;
    std::fs::copy(&files.src_wav, hdir.join(format!("{}.src.wav", first.id)))?;
    let sm = SpeechModel::load(&out, &dev)?;
    let src = sm.tokenizer().read_audio(&files.src_wav)?;
    let tgt = sm.tokenizer().read_audio(&files.tgt_wav)?;
    let reply = sm.respond(
        &src,
        SlotCondition {
            speaker: None,
            emotion: Emotion::Neutral,
            language: first.language,
            prosody: [0.0; 3],
        },
        GenerationConfig {
            temperature: 0.0,
            max_frames: 2 * first.target.len() + 25,
            ..GenerationConfig::default()
        },
    )?;
    eprintln!(
        "reply to {}: {} frames (target {}){}",
        first.id,
        reply.reply_frames,
        first.target.len(),
        if reply.truncated { ", truncated" } else { "" }
    );
    let sr = sm.sample_rate();
    if reply.audio.is_empty() {
        eprintln!("the model ended its turn at once: no reply spectrogram");
    } else {
        write_wav(
            out.join("sample_reply.wav"),
            &reply.audio,
            sr,
            WavFormat::Pcm16,
        )?;
        vaak_audio::plot::spectrogram_compare_png(
            out.join("reply_vs_target.png"),
            &tgt,
            &reply.audio,
            sr,
            &format!("{}: target (top) vs greedy model reply (bottom)", first.id),
        )?;
    }
    curves(&run, &out.join("curves.png"))?;
    Ok(())
}
