//! Small corpora of synthetic WAVs for the data-command tests.
#![allow(dead_code)]

use std::path::Path;

use vaak_audio::io::{write_wav, WavFormat};
use vaak_data::corpus::{write_corpus, CorpusRow};

/// A speech-like test signal: a few harmonics of `f0` with a slow amplitude envelope.
pub fn voice(n: usize, rate: u32, f0: f32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let t = i as f32 / rate as f32;
            let env = 0.5 + 0.4 * (2.0 * std::f32::consts::PI * 3.0 * t).sin();
            let tone: f32 = (1..=4)
                .map(|h| (2.0 * std::f32::consts::PI * f0 * h as f32 * t).sin() / h as f32)
                .sum();
            0.2 * env * tone
        })
        .collect()
}

/// A row for `rel` (relative to the manifest's directory).
pub fn row(id: &str, rel: &str, secs: f64, speaker: Option<&str>) -> CorpusRow {
    CorpusRow {
        id: id.into(),
        lang: "te".into(),
        dataset: "test".into(),
        split: "all".into(),
        audio_path: rel.into(),
        duration_s: secs,
        text: format!("text of {id}"),
        speaker: speaker.map(str::to_string),
        sample_rate: None,
        channels: None,
        source_id: None,
        augment: None,
    }
}

/// `n` WAV files at `rate` under `dir/wav/` (lengths 0.5 s + i*0.1 s, two speakers) and
/// `dir/m.jsonl` listing them; returns the manifest path and rows.
pub fn corpus(dir: &Path, n: usize, rate: u32) -> (std::path::PathBuf, Vec<CorpusRow>) {
    std::fs::create_dir_all(dir.join("wav")).unwrap();
    let mut rows = Vec::new();
    for i in 0..n {
        let secs = 0.5 + 0.1 * i as f64;
        let samples = voice((secs * rate as f64) as usize, rate, 110.0 + 10.0 * i as f32);
        let rel = format!("wav/u{i:03}.wav");
        write_wav(dir.join(&rel), &samples, rate, WavFormat::Pcm16).unwrap();
        let spk = format!("s{}", i % 2);
        rows.push(row(&format!("u{i:03}"), &rel, secs, Some(&spk)));
    }
    let m = dir.join("m.jsonl");
    write_corpus(&m, &rows).unwrap();
    (m, rows)
}
