//! Augmentation: lengths, pitch, SNR, gain, noise colour, determinism, config validation.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use realfft::RealFftPlanner;
use vaak_audio::augment::{
    add_noise, fit_noise, gain_db, pink_noise, pitch_shift, speed, time_stretch, white_noise,
    AugmentConfig, Augmenter, NoiseColour,
};
use vaak_audio::io::Audio;
use vaak_audio::AudioError;

/// A pitch-shifted sine's spectral peak must be within this relative error of
/// `f * 2^(semitones/12)`.
const PITCH_REL_TOL: f64 = 0.02;
/// Measured SNR after `add_noise` must be within this many dB of the target.
const SNR_TOL_DB: f64 = 0.05;

fn sine(rate: u32, f: f64, amp: f32, n: usize) -> Audio {
    let samples = (0..n)
        .map(|i| amp * (2.0 * std::f64::consts::PI * f * i as f64 / f64::from(rate)).sin() as f32)
        .collect();
    Audio::new(samples, rate)
}

/// Frequency (Hz) of the strongest spectral peak, refined by parabolic interpolation of the
/// log magnitude of a Hann-windowed FFT.
fn peak_hz(x: &[f32], rate: u32) -> f64 {
    let n = x.len();
    let mut planner = RealFftPlanner::<f64>::new();
    let fft = planner.plan_fft_forward(n);
    let mut buf: Vec<f64> = x
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            f64::from(v) * (0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n as f64).cos())
        })
        .collect();
    let mut spec = fft.make_output_vec();
    fft.process(&mut buf, &mut spec).unwrap();
    let mag: Vec<f64> = spec.iter().map(|c| c.norm().max(1e-30).ln()).collect();
    let k = (1..mag.len() - 1)
        .max_by(|&a, &b| mag[a].total_cmp(&mag[b]))
        .unwrap();
    let (a, b, c) = (mag[k - 1], mag[k], mag[k + 1]);
    let delta = 0.5 * (a - c) / (a - 2.0 * b + c);
    (k as f64 + delta) * f64::from(rate) / n as f64
}

fn rms(x: &[f32]) -> f64 {
    (x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
}

#[test]
fn speed_changes_length_by_one_over_factor() {
    for rate in [16000u32, 22050, 24000] {
        for factor in [0.9, 1.1, 0.95, 1.05, 1.23, 0.8] {
            for n in [1000usize, 8000, 12345] {
                let a = sine(rate, 300.0, 0.5, n);
                let out = speed(&a, factor).unwrap();
                assert_eq!(out.sample_rate, rate);
                let want = n as f64 / factor;
                assert!(
                    (out.samples.len() as f64 - want).abs() <= 1.0,
                    "rate {rate} factor {factor} n {n}: {} vs {want}",
                    out.samples.len()
                );
            }
        }
    }
}

#[test]
fn speed_scales_pitch_by_factor() {
    let a = sine(16000, 500.0, 0.5, 16000);
    for factor in [0.9, 1.1] {
        let out = speed(&a, factor).unwrap();
        let f = peak_hz(&out.samples, 16000);
        assert!((f / (500.0 * factor) - 1.0).abs() < 0.005, "{factor}: {f}");
    }
    assert!(speed(&a, 0.0).is_err());
    assert!(speed(&a, f64::NAN).is_err());
}

#[test]
fn pitch_shift_keeps_length_and_moves_the_peak() {
    let rate = 16000;
    for f0 in [220.0, 440.0, 1000.0] {
        for semis in [-5.0, -2.0, -1.0, 1.0, 3.0, 7.0] {
            let n = 12000;
            let a = sine(rate, f0, 0.5, n);
            let out = pitch_shift(&a, semis).unwrap();
            assert_eq!(out.samples.len(), n, "length");
            assert_eq!(out.sample_rate, rate);
            let want = f0 * 2f64.powf(semis / 12.0);
            let got = peak_hz(&out.samples, rate);
            let rel = (got / want - 1.0).abs();
            eprintln!("{f0} Hz {semis:+} st: peak {got:.2} Hz, want {want:.2} ({rel:.4})");
            assert!(rel < PITCH_REL_TOL, "{f0} Hz {semis} st: {got} vs {want}");
            // The level is kept (interior, away from the edges).
            let inner = &out.samples[n / 8..n - n / 8];
            let db = 20.0 * (rms(inner) / rms(&a.samples)).log10();
            assert!(db.abs() < 1.0, "{f0} Hz {semis} st: level {db:.2} dB");
        }
    }
    // Zero semitones is the identity.
    let a = sine(rate, 300.0, 0.5, 5000);
    assert_eq!(pitch_shift(&a, 0.0).unwrap(), a);
    assert!(pitch_shift(&a, 30.0).is_err());
}

#[test]
fn time_stretch_hits_the_length_and_keeps_frequency() {
    let a = sine(16000, 700.0, 0.5, 8000);
    for out_len in [4000usize, 7999, 8000, 8001, 12000, 16000] {
        let y = time_stretch(&a.samples, out_len);
        assert_eq!(y.len(), out_len);
        let f = peak_hz(&y, 16000);
        assert!((f / 700.0 - 1.0).abs() < 0.01, "{out_len}: {f}");
    }
    assert_eq!(time_stretch(&[], 5), vec![0.0; 5]);
}

fn measured_snr_db(signal: &[f32], noisy: &[f32]) -> f64 {
    let ps: f64 = signal.iter().map(|&v| f64::from(v).powi(2)).sum();
    let pn: f64 = signal
        .iter()
        .zip(noisy)
        .map(|(&s, &y)| (f64::from(y) - f64::from(s)).powi(2))
        .sum();
    10.0 * (ps / pn).log10()
}

#[test]
fn noise_reaches_the_target_snr() {
    let a = sine(16000, 440.0, 0.3, 16000);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let clip: Vec<f32> = white_noise(3000, &mut rng)
        .iter()
        .map(|v| v * 0.1 + 0.02)
        .collect();
    let noises = [
        ("white", white_noise(a.samples.len(), &mut rng)),
        ("pink", pink_noise(a.samples.len(), &mut rng)),
        ("clip", fit_noise(&clip, a.samples.len(), &mut rng).unwrap()),
    ];
    for (kind, noise) in &noises {
        for snr in [-5.0, 0.0, 10.0, 20.0, 40.0] {
            let y = add_noise(&a.samples, noise, snr).unwrap();
            let got = measured_snr_db(&a.samples, &y);
            assert!((got - snr).abs() < SNR_TOL_DB, "{kind} {snr}: {got}");
        }
    }
    // Silence has no SNR and stays silent; bad noise is an error.
    let silent = vec![0.0f32; 100];
    assert_eq!(add_noise(&silent, &vec![1.0; 100], 10.0).unwrap(), silent);
    assert!(add_noise(&a.samples, &vec![0.0; a.samples.len()], 10.0).is_err());
    assert!(add_noise(&a.samples, &[1.0], 10.0).is_err());
    assert!(fit_noise(&[], 10, &mut rng).is_err());
}

#[test]
fn fit_noise_loops_from_a_seeded_offset() {
    let clip: Vec<f32> = (0..10).map(|i| i as f32).collect();
    let a = fit_noise(&clip, 25, &mut ChaCha8Rng::seed_from_u64(3)).unwrap();
    let b = fit_noise(&clip, 25, &mut ChaCha8Rng::seed_from_u64(3)).unwrap();
    assert_eq!(a, b);
    let off = a[0] as usize;
    for (i, v) in a.iter().enumerate() {
        assert_eq!(*v, clip[(off + i) % 10]);
    }
    let offsets: std::collections::HashSet<u32> = (0..20)
        .map(|s| fit_noise(&clip, 1, &mut ChaCha8Rng::seed_from_u64(s)).unwrap()[0] as u32)
        .collect();
    assert!(offsets.len() > 3, "offsets do not depend on the seed");
}

/// Power in `[lo, hi)` Hz.
fn band_power(x: &[f32], rate: u32, lo: f64, hi: f64) -> f64 {
    let n = x.len();
    let mut planner = RealFftPlanner::<f64>::new();
    let fft = planner.plan_fft_forward(n);
    let mut buf: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
    let mut spec = fft.make_output_vec();
    fft.process(&mut buf, &mut spec).unwrap();
    spec.iter()
        .enumerate()
        .filter(|(k, _)| {
            let f = *k as f64 * f64::from(rate) / n as f64;
            f >= lo && f < hi
        })
        .map(|(_, c)| c.norm_sqr())
        .sum()
}

#[test]
fn noise_colours_have_their_spectra() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let n = 64000;
    let white = white_noise(n, &mut rng);
    let pink = pink_noise(n, &mut rng);
    assert!((rms(&white) - 1.0).abs() < 0.02);
    assert!((rms(&pink) - 1.0).abs() < 1e-6);
    // Octaves 250-500 Hz and 2-4 kHz: pink has equal power per octave, white 8x more in the
    // higher (8x wider) octave.
    let ratio_db = |x: &[f32]| {
        10.0 * (band_power(x, 16000, 2000.0, 4000.0) / band_power(x, 16000, 250.0, 500.0)).log10()
    };
    let (w, p) = (ratio_db(&white), ratio_db(&pink));
    eprintln!("octave power ratio: white {w:.2} dB, pink {p:.2} dB");
    assert!((w - 9.03).abs() < 1.0, "white {w}");
    assert!(p.abs() < 1.0, "pink {p}");
}

#[test]
fn gain_is_exact() {
    let a = sine(16000, 440.0, 0.3, 1000);
    for db in [-20.0, -6.0, 0.0, 3.5, 12.0] {
        let y = gain_db(&a.samples, db);
        let g = 10f64.powf(db / 20.0) as f32;
        for (x, v) in a.samples.iter().zip(&y) {
            assert_eq!(*v, x * g);
        }
    }
    let y = gain_db(&[0.5], 20.0 * 2f64.log10());
    assert!((y[0] - 1.0).abs() < 1e-7);
}

fn all_on() -> AugmentConfig {
    AugmentConfig {
        speed_prob: 1.0,
        speed_factors: vec![0.9, 1.1],
        pitch_prob: 1.0,
        pitch_semitones: 3.0,
        noise_prob: 1.0,
        snr_db: [5.0, 25.0],
        noise_colours: vec![NoiseColour::White, NoiseColour::Pink],
        gain_prob: 1.0,
        gain_db: [-6.0, 6.0],
    }
}

#[test]
fn augmenter_is_deterministic_per_seed() {
    let a = sine(16000, 440.0, 0.3, 6000);
    let run = |seed: u64| {
        let mut aug = Augmenter::with_config(all_on(), seed).unwrap();
        (0..4)
            .map(|_| aug.apply_with_log(&a).unwrap())
            .collect::<Vec<_>>()
    };
    let r1 = run(42);
    let r2 = run(42);
    assert_eq!(r1, r2, "same seed must give identical output");
    let r3 = run(43);
    assert_ne!(r1, r3, "different seeds must differ");
    for (out, log) in &r1 {
        assert!(log.speed.is_some() && log.semitones.is_some());
        assert!(log.snr_db.is_some() && log.gain_db.is_some());
        assert!(out.samples.iter().all(|v| v.is_finite()));
        // Speed changed the length; pitch did not change it further.
        let f = log.speed.unwrap();
        assert!((out.samples.len() as f64 - 6000.0 / f).abs() <= 1.0);
    }
    // Successive calls draw new effects.
    assert_ne!(r1[0].1, r1[1].1);
}

#[test]
fn augmenter_probabilities_and_noise_clips() {
    let a = sine(16000, 440.0, 0.3, 4000);
    let off = AugmentConfig {
        speed_prob: 0.0,
        pitch_prob: 0.0,
        noise_prob: 0.0,
        gain_prob: 0.0,
        ..AugmentConfig::default()
    };
    let mut aug = Augmenter::with_config(off, 1).unwrap();
    assert_eq!(aug.apply(&a).unwrap(), a);

    // Noise only, from a 8 kHz clip (resampled to 16 kHz): the SNR is the logged one.
    let noise_only = AugmentConfig {
        speed_prob: 0.0,
        pitch_prob: 0.0,
        noise_prob: 1.0,
        gain_prob: 0.0,
        ..AugmentConfig::default()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let clip = Audio::new(white_noise(2000, &mut rng), 8000);
    let mut aug = Augmenter::with_config(noise_only, 2)
        .unwrap()
        .with_noise_clips(vec![clip])
        .unwrap();
    for _ in 0..3 {
        let (out, log) = aug.apply_with_log(&a).unwrap();
        let got = measured_snr_db(&a.samples, &out.samples);
        assert!((got - log.snr_db.unwrap()).abs() < SNR_TOL_DB);
    }
    assert!(Augmenter::new(0)
        .with_noise_clips(vec![Audio::new(vec![0.0; 10], 16000)])
        .is_err());

    // With probability 0.5 over many draws, both outcomes occur.
    let half = AugmentConfig {
        speed_prob: 0.0,
        pitch_prob: 0.0,
        noise_prob: 0.0,
        gain_prob: 0.5,
        ..AugmentConfig::default()
    };
    let mut aug = Augmenter::with_config(half, 3).unwrap();
    let applied = (0..200)
        .filter(|_| aug.apply_with_log(&a).unwrap().1.gain_db.is_some())
        .count();
    assert!((60..140).contains(&applied), "{applied}");
}

#[test]
fn config_validation_and_serde() {
    let mut c = AugmentConfig {
        speed_prob: 1.5,
        ..AugmentConfig::default()
    };
    let e = Augmenter::with_config(c.clone(), 0).unwrap_err();
    assert!(matches!(e, AudioError::InvalidArgument(_)));
    assert!(e.to_string().contains("speed_prob"), "{e}");
    c.speed_prob = 0.5;
    c.snr_db = [30.0, 10.0];
    assert!(Augmenter::with_config(c.clone(), 0)
        .unwrap_err()
        .to_string()
        .contains("snr_db"));
    c.snr_db = [10.0, 30.0];
    c.speed_factors = vec![0.0];
    assert!(Augmenter::with_config(c, 0).is_err());

    let json = serde_json::to_string(&all_on()).unwrap();
    let back: AugmentConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, all_on());
    // Missing fields take defaults; unknown fields are rejected.
    let partial: AugmentConfig = serde_json::from_str(r#"{"gain_prob": 1.0}"#).unwrap();
    assert_eq!(partial.gain_prob, 1.0);
    assert_eq!(
        partial.speed_factors,
        AugmentConfig::default().speed_factors
    );
    assert!(serde_json::from_str::<AugmentConfig>(r#"{"gain_porb": 1.0}"#).is_err());
    // A zero-rate input is an error, not a panic.
    assert!(Augmenter::new(0).apply(&Audio::new(vec![0.1], 0)).is_err());
}
