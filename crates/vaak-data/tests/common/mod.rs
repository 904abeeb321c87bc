//! Test helpers: tiny audio files (WAV with hound, FLAC with the pure-Rust flacenc) and
//! parquet shards written with the parquet crate's low-level writer; small corpora of synthetic
//! WAVs with their manifests for the data-command tests.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

/// A deterministic tone, interleaved over `channels`.
pub fn tone(frames: usize, rate: u32, channels: u16) -> Vec<i16> {
    (0..frames)
        .flat_map(|i| {
            let v = (0.3
                * (2.0 * std::f64::consts::PI * 220.0 * i as f64 / f64::from(rate)).sin()
                * 32767.0) as i16;
            std::iter::repeat_n(v, channels as usize)
        })
        .collect()
}

pub fn wav_bytes(frames: usize, rate: u32, channels: u16) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    let spec = hound::WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::new(&mut buf, spec).unwrap();
    for s in tone(frames, rate, channels) {
        w.write_sample(s).unwrap();
    }
    w.finalize().unwrap();
    buf.into_inner()
}

pub fn write_wav(path: &Path, frames: usize, rate: u32, channels: u16) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, wav_bytes(frames, rate, channels)).unwrap();
}

/// FLAC bytes of [`tone`], through the same encoder `vaak data prepare` writes with.
pub fn flac_bytes(frames: usize, rate: u32) -> Vec<u8> {
    let samples: Vec<f32> = tone(frames, rate, 1)
        .into_iter()
        .map(|s| f32::from(s) / 32768.0)
        .collect();
    vaak_data::prepare::encode_flac(&samples, rate).unwrap()
}

pub fn write_flac(path: &Path, frames: usize, rate: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, flac_bytes(frames, rate)).unwrap();
}

pub fn write_text(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// One shard row: audio bytes (or null), the `Audio` struct's path, the string cells.
pub type ShardRow = (Option<Vec<u8>>, String, Vec<Option<String>>);

/// A parquet shard: an audio column (the HF `Audio` struct `{bytes, path}` when `hf_struct`,
/// else plain binary) and string columns, one row group per `groups` entry (row counts).
pub struct Shard<'a> {
    pub audio_col: &'a str,
    pub hf_struct: bool,
    pub str_cols: &'a [&'a str],
    /// (audio bytes or null, the struct's path, string cells)
    pub rows: Vec<ShardRow>,
    pub groups: &'a [usize],
}

pub fn write_parquet(path: &Path, s: &Shard) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut schema = String::from("message schema {\n");
    if s.hf_struct {
        schema.push_str(&format!(
            "optional group {} {{ optional binary bytes; optional binary path (STRING); }}\n",
            s.audio_col
        ));
    } else {
        schema.push_str(&format!("optional binary {};\n", s.audio_col));
    }
    for c in s.str_cols {
        schema.push_str(&format!("optional binary {c} (STRING);\n"));
    }
    schema.push('}');
    let schema = Arc::new(parse_message_type(&schema).unwrap());
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build(),
    );
    let file = std::fs::File::create(path).unwrap();
    let mut w = SerializedFileWriter::new(file, schema, props).unwrap();
    let mut start = 0;
    for &n in s.groups {
        let rows = &s.rows[start..start + n];
        start += n;
        // Column cells in schema order: audio (bytes[, path]), then the string columns.
        let mut cols: Vec<(Vec<Option<Vec<u8>>>, i16)> = Vec::new();
        let audio: Vec<Option<Vec<u8>>> = rows.iter().map(|r| r.0.clone()).collect();
        if s.hf_struct {
            cols.push((audio, 2));
            cols.push((
                rows.iter()
                    .map(|r| Some(r.1.clone().into_bytes()))
                    .collect(),
                2,
            ));
        } else {
            cols.push((audio, 1));
        }
        for k in 0..s.str_cols.len() {
            cols.push((
                rows.iter()
                    .map(|r| r.2[k].clone().map(String::into_bytes))
                    .collect(),
                1,
            ));
        }
        let mut rg = w.next_row_group().unwrap();
        let mut k = 0;
        while let Some(mut col) = rg.next_column().unwrap() {
            let (cells, max_def) = &cols[k];
            let vals: Vec<ByteArray> = cells
                .iter()
                .flatten()
                .map(|b| ByteArray::from(b.clone()))
                .collect();
            let defs: Vec<i16> = cells
                .iter()
                .map(|c| if c.is_some() { *max_def } else { max_def - 1 })
                .collect();
            col.typed::<ByteArrayType>()
                .write_batch(&vals, Some(&defs), None)
                .unwrap();
            col.close().unwrap();
            k += 1;
        }
        rg.close().unwrap();
    }
    w.close().unwrap();
}

use vaak_data::corpus::{write_corpus, CorpusRow};

// Small corpora of synthetic WAVs for the data-command tests.

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
        vaak_audio::io::write_wav(
            dir.join(&rel),
            &samples,
            rate,
            vaak_audio::io::WavFormat::Pcm16,
        )
        .unwrap();
        let spk = format!("s{}", i % 2);
        rows.push(row(&format!("u{i:03}"), &rel, secs, Some(&spk)));
    }
    let m = dir.join("m.jsonl");
    write_corpus(&m, &rows).unwrap();
    (m, rows)
}
