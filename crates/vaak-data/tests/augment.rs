//! `augment`: seeded (same seed, same bytes) and each effect does what it says.

mod common;

use vaak_audio::io::{decode_file, write_wav, WavFormat};
use vaak_data::augment::{augment, AugmentSettings, Effect};
use vaak_data::corpus::{read_corpus, write_corpus};

fn quiet(_: f64) {}

fn settings(out: &std::path::Path, effects: Vec<Effect>, seed: u64) -> AugmentSettings {
    AugmentSettings {
        out: out.to_path_buf(),
        data_root: None,
        rate: 16_000,
        effects,
        seed,
        noise_dir: None,
        with_source: false,
        jobs: 2,
    }
}

/// Frequency of a (near-)sinusoid from its positive-going zero crossings in the middle half.
fn frequency(x: &[f32], rate: u32) -> f64 {
    let mid = &x[x.len() / 4..3 * x.len() / 4];
    let ups: Vec<usize> = (1..mid.len())
        .filter(|&i| mid[i - 1] < 0.0 && mid[i] >= 0.0)
        .collect();
    let periods = (ups.len() - 1) as f64;
    periods * rate as f64 / (ups[ups.len() - 1] - ups[0]) as f64
}

#[test]
fn the_same_seed_gives_the_same_bytes_and_rows_link_to_their_sources() {
    let d = tempfile::tempdir().unwrap();
    let (m, src) = common::corpus(d.path(), 3, 16_000);
    let effects = vec![
        Effect::Speed(0.9),
        Effect::Speed(1.1),
        Effect::Pitch(-2.0),
        Effect::NoiseSnr(10.0),
        Effect::Gain(-6.0),
    ];
    let a = augment(
        &m,
        &settings(&d.path().join("a"), effects.clone(), 7),
        &quiet,
    )
    .unwrap();
    let b = augment(
        &m,
        &settings(&d.path().join("b"), effects.clone(), 7),
        &quiet,
    )
    .unwrap();
    augment(&m, &settings(&d.path().join("c"), effects, 8), &quiet).unwrap();
    assert_eq!(a.augmented_rows, 15);
    assert!(a.failed.is_empty(), "{:?}", a.failed);
    let rows = read_corpus(&a.manifest).unwrap().rows;
    assert_eq!(rows, read_corpus(&b.manifest).unwrap().rows);
    let mut noise_differs = false;
    for r in &rows {
        let fa = std::fs::read(d.path().join("a").join(&r.audio_path)).unwrap();
        let fb = std::fs::read(d.path().join("b").join(&r.audio_path)).unwrap();
        let fc = std::fs::read(d.path().join("c").join(&r.audio_path)).unwrap();
        assert_eq!(fa, fb, "{}", r.id);
        if r.augment.as_deref() == Some("noise_snr=10") {
            noise_differs |= fa != fc;
        } else {
            assert_eq!(fa, fc, "{}: only the noise depends on the seed", r.id);
        }
        let s = src
            .iter()
            .find(|s| Some(&s.id) == r.source_id.as_ref())
            .unwrap();
        assert_eq!(r.id, format!("{}~{}", s.id, r.augment.as_deref().unwrap()));
        assert_eq!((&r.text, &r.speaker), (&s.text, &s.speaker));
    }
    assert!(noise_differs, "another seed draws other noise");
    let labels: Vec<&str> = rows[..5]
        .iter()
        .map(|r| r.augment.as_deref().unwrap())
        .collect();
    assert_eq!(
        labels,
        [
            "speed=0.9",
            "speed=1.1",
            "pitch=-2",
            "noise_snr=10",
            "gain=-6"
        ]
    );
    // A rerun keeps every finished file.
    let again = augment(
        &m,
        &settings(&d.path().join("a"), vec![Effect::Speed(0.9)], 7),
        &quiet,
    )
    .unwrap();
    assert_eq!((again.written, again.skipped_done), (0, 3));
}

#[test]
fn speed_pitch_noise_and_gain_do_what_they_say() {
    let d = tempfile::tempdir().unwrap();
    let tone: Vec<f32> = (0..32_000)
        .map(|i| 0.3 * (2.0 * std::f32::consts::PI * 440.0 * i as f32 / 16_000.0).sin())
        .collect();
    write_wav(d.path().join("tone.wav"), &tone, 16_000, WavFormat::Float32).unwrap();
    let m = d.path().join("m.jsonl");
    write_corpus(&m, &[common::row("t", "tone.wav", 2.0, None)]).unwrap();
    let mut cfg = settings(
        &d.path().join("out"),
        vec![
            Effect::Speed(0.9),
            Effect::Speed(1.1),
            Effect::Pitch(2.0),
            Effect::Pitch(-3.0),
            Effect::NoiseSnr(10.0),
            Effect::NoiseSnr(0.0),
            Effect::Gain(-6.0),
        ],
        1,
    );
    cfg.with_source = true;
    let s = augment(&m, &cfg, &quiet).unwrap();
    let rows = read_corpus(&s.manifest).unwrap().rows;
    assert_eq!(rows.len(), 8, "the source row is listed too");
    assert_eq!(
        (rows[0].id.as_str(), rows[0].augment.as_deref()),
        ("t", None)
    );
    let load = |id: &str| {
        let r = rows.iter().find(|r| r.id == id).unwrap();
        let a = decode_file(d.path().join("out").join(&r.audio_path), None).unwrap();
        assert!((a.duration_s() - r.duration_s).abs() < 1e-3);
        a.samples
    };
    // The reference is the 16-bit source as the outputs are 16-bit.
    for (f, id) in [(0.9, "t~speed=0.9"), (1.1, "t~speed=1.1")] {
        let n = load(id).len() as f64;
        assert!((n - 32_000.0 / f).abs() <= 2.0, "{id}: {n} samples");
    }
    let f0 = frequency(&tone, 16_000);
    for (st, id) in [(2.0, "t~pitch=+2"), (-3.0, "t~pitch=-3")] {
        let y = load(id);
        assert_eq!(y.len(), tone.len());
        let want = f0 * 2f64.powf(st / 12.0);
        let got = frequency(&y, 16_000);
        assert!(
            (got / want - 1.0).abs() < 0.01,
            "{id}: {got} Hz, want {want}"
        );
    }
    for (snr, id) in [(10.0, "t~noise_snr=10"), (0.0, "t~noise_snr=0")] {
        let y = load(id);
        let (sig, noise) = tone.iter().zip(&y).fold((0f64, 0f64), |(s, n), (&a, &b)| {
            (s + (a as f64).powi(2), n + ((b - a) as f64).powi(2))
        });
        let got = 10.0 * (sig / noise).log10();
        assert!((got - snr).abs() < 0.5, "{id}: {got} dB");
    }
    let y = load("t~gain=-6");
    let ratio = y.iter().map(|v| v.abs()).fold(0f32, f32::max) / 0.3;
    assert!((20.0 * ratio.log10() + 6.0).abs() < 0.05, "{ratio}");
}

#[test]
fn noise_clips_from_a_directory_are_used() {
    let d = tempfile::tempdir().unwrap();
    let (m, _) = common::corpus(d.path(), 2, 16_000);
    std::fs::create_dir_all(d.path().join("noise")).unwrap();
    let hum: Vec<f32> = (0..4000)
        .map(|i| (2.0 * std::f32::consts::PI * 50.0 * i as f32 / 16_000.0).sin())
        .collect();
    write_wav(
        d.path().join("noise/hum.wav"),
        &hum,
        16_000,
        WavFormat::Float32,
    )
    .unwrap();
    let mut cfg = settings(&d.path().join("out"), vec![Effect::NoiseSnr(5.0)], 3);
    cfg.noise_dir = Some(d.path().join("noise"));
    let s = augment(&m, &cfg, &quiet).unwrap();
    assert_eq!(s.augmented_rows, 2);
    let mut empty = settings(&d.path().join("out2"), vec![Effect::NoiseSnr(5.0)], 3);
    empty.noise_dir = Some(d.path().join("wav-none"));
    std::fs::create_dir_all(d.path().join("wav-none")).unwrap();
    let e = augment(&m, &empty, &quiet).unwrap_err();
    assert!(e.to_string().contains("wav-none"), "{e}");
}
