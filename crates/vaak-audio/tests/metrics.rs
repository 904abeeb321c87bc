//! SNR, SI-SDR and multi-resolution mel distance: analytic cases, invariances, bad input, and
//! parity of SNR / SI-SDR with numpy float64 formulas (tools/fixtures/audio_features.py).

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use safetensors::{Dtype, SafeTensors};
use vaak_audio::metrics::{
    multi_resolution_mel_distance, si_sdr_db, snr_db, MelDistance, MelDistanceConfig,
};
use vaak_audio::AudioError;

/// Analytic SNR cases (noise scaled to an exact energy ratio), dB.
const ANALYTIC_TOL_DB: f64 = 1e-3;
/// SNR / SI-SDR against numpy float64 on identical float32 inputs, dB.
const NUMPY_PARITY_TOL_DB: f64 = 1e-6;
/// SI-SDR change when the estimate is rescaled, dB.
const SCALE_INVARIANCE_TOL_DB: f64 = 1e-6;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tools/fixtures/data/audio_features/audio_features.safetensors"
);

fn tone(n: usize, sr: f32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let t = i as f32 / sr;
            0.5 * (2.0 * std::f32::consts::PI * 220.0 * t).sin()
                + 0.2 * (2.0 * std::f32::consts::PI * 1330.0 * t).sin()
        })
        .collect()
}

fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| StandardNormal.sample(&mut rng)).collect()
}

fn energy(x: &[f32]) -> f64 {
    x.iter().map(|&v| (v as f64) * (v as f64)).sum()
}

fn invalid(r: vaak_audio::Result<f64>) -> String {
    match r {
        Err(AudioError::InvalidArgument(m)) => m,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn snr_of_noise_scaled_to_a_known_level() {
    let x = tone(16000, 16000.0);
    let n = noise(x.len(), 1);
    for target in [-10.0f64, 0.0, 6.0, 20.0, 40.0] {
        let gain = (energy(&x) / energy(&n) / 10f64.powf(target / 10.0)).sqrt() as f32;
        let y: Vec<f32> = x.iter().zip(&n).map(|(a, b)| a + gain * b).collect();
        let got = snr_db(&x, &y).unwrap();
        assert!(
            (got - target).abs() < ANALYTIC_TOL_DB,
            "target {target} dB, got {got}"
        );
    }
    // Halving the signal leaves an error of half the signal: 20 log10(2) dB.
    let half: Vec<f32> = x.iter().map(|v| v * 0.5).collect();
    let got = snr_db(&x, &half).unwrap();
    assert!((got - 20.0 * 2f64.log10()).abs() < ANALYTIC_TOL_DB, "{got}");
    assert_eq!(snr_db(&x, &x).unwrap(), f64::INFINITY);
}

#[test]
fn si_sdr_ignores_scale_and_offset() {
    let x = tone(8000, 16000.0);
    let n = noise(x.len(), 2);
    let y: Vec<f32> = x.iter().zip(&n).map(|(a, b)| a + 0.05 * b).collect();
    let base = si_sdr_db(&x, &y).unwrap();
    assert!(base.is_finite() && base > 10.0 && base < 30.0, "{base}");
    for k in [0.01f32, 0.5, 3.0, -2.0] {
        let scaled: Vec<f32> = y.iter().map(|v| v * k).collect();
        let got = si_sdr_db(&x, &scaled).unwrap();
        assert!(
            (got - base).abs() < SCALE_INVARIANCE_TOL_DB,
            "scale {k}: {got} vs {base}"
        );
    }
    // A DC offset on either signal is removed by the zero-mean step.
    let offset: Vec<f32> = y.iter().map(|v| v + 0.25).collect();
    assert!((si_sdr_db(&x, &offset).unwrap() - base).abs() < 1e-4);
    // SNR, by contrast, punishes a gain error.
    let scaled: Vec<f32> = y.iter().map(|v| v * 0.5).collect();
    assert!(snr_db(&x, &scaled).unwrap() < snr_db(&x, &y).unwrap() - 3.0);
    assert_eq!(si_sdr_db(&x, &x).unwrap(), f64::INFINITY);
}

#[test]
fn si_sdr_of_orthogonal_noise_at_known_level() {
    // Project the zero-mean noise off the zero-mean reference so the target is the reference
    // itself; SI-SDR then equals the energy ratio.
    let x = tone(16000, 16000.0);
    let mx = x.iter().map(|&v| v as f64).sum::<f64>() / x.len() as f64;
    let xr: Vec<f64> = x.iter().map(|&v| v as f64 - mx).collect();
    let n = noise(x.len(), 3);
    let mn = n.iter().map(|&v| v as f64).sum::<f64>() / n.len() as f64;
    let mut nz: Vec<f64> = n.iter().map(|&v| v as f64 - mn).collect();
    let proj =
        nz.iter().zip(&xr).map(|(a, b)| a * b).sum::<f64>() / xr.iter().map(|v| v * v).sum::<f64>();
    for (v, r) in nz.iter_mut().zip(&xr) {
        *v -= proj * r;
    }
    let target_db = 15.0;
    let g = (xr.iter().map(|v| v * v).sum::<f64>()
        / nz.iter().map(|v| v * v).sum::<f64>()
        / 10f64.powf(target_db / 10.0))
    .sqrt();
    let y: Vec<f32> = x
        .iter()
        .zip(&nz)
        .map(|(&a, b)| a + (g * b) as f32)
        .collect();
    let got = si_sdr_db(&x, &y).unwrap();
    assert!((got - target_db).abs() < ANALYTIC_TOL_DB, "{got}");
}

#[test]
fn snr_and_si_sdr_match_numpy() {
    let bytes = std::fs::read(FIXTURE).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let pcm = |name: &str| -> Vec<f32> {
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), Dtype::I16);
        t.data()
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0)
            .collect()
    };
    let a = pcm("sig_a");
    let b = pcm("sig_b");
    // Same float32 expression as the script: (0.8 a + 0.1 b) + 0.003.
    let est: Vec<f32> = a
        .iter()
        .zip(&b)
        .map(|(&x, &y)| (0.8f32 * x + 0.1f32 * y) + 0.003f32)
        .collect();
    let t = st.tensor("metrics_snr_si_sdr").unwrap();
    assert_eq!(t.dtype(), Dtype::F64);
    let want: Vec<f64> = t
        .data()
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let snr = snr_db(&a, &est).unwrap();
    let sisdr = si_sdr_db(&a, &est).unwrap();
    println!("snr {snr} vs {} ; si-sdr {sisdr} vs {}", want[0], want[1]);
    assert!((snr - want[0]).abs() < NUMPY_PARITY_TOL_DB);
    assert!((sisdr - want[1]).abs() < NUMPY_PARITY_TOL_DB);
}

#[test]
fn snr_and_si_sdr_reject_bad_input() {
    let x = tone(100, 16000.0);
    assert!(invalid(snr_db(&[], &[])).contains("empty"));
    assert!(invalid(si_sdr_db(&[], &[])).contains("empty"));
    assert!(invalid(snr_db(&x, &x[..99])).contains("100 samples but estimate has 99"));
    assert!(invalid(si_sdr_db(&x[..50], &x)).contains("50 samples"));
    let mut bad = x.clone();
    bad[7] = f32::NAN;
    assert!(invalid(snr_db(&x, &bad)).contains("estimate sample 7"));
    assert!(invalid(si_sdr_db(&bad, &x)).contains("reference sample 7"));
    assert!(invalid(snr_db(&[0.0; 10], &[0.1; 10])).contains("zero energy"));
    assert!(invalid(si_sdr_db(&[0.3; 10], &[0.1; 10])).contains("constant"));
}

#[test]
fn mel_distance_is_zero_for_identical_and_grows_with_noise() {
    let cfg = MelDistanceConfig::default();
    let md = MelDistance::new(cfg.clone()).unwrap();
    let x = tone(24000, 24000.0);
    assert_eq!(md.distance(&x, &x).unwrap(), 0.0);
    let n = noise(x.len(), 4);
    let mut last = 0.0;
    for level in [1e-4f32, 1e-3, 1e-2, 1e-1] {
        let y: Vec<f32> = x.iter().zip(&n).map(|(a, b)| a + level * b).collect();
        let d = md.distance(&x, &y).unwrap();
        let d_rev = md.distance(&y, &x).unwrap();
        assert!((d - d_rev).abs() < 1e-12, "L1 is symmetric");
        assert!(d > last, "noise {level}: {d} <= {last}");
        last = d;
    }
    // The one-off helper gives the same number.
    let y: Vec<f32> = x.iter().zip(&n).map(|(a, b)| a + 0.01 * b).collect();
    assert_eq!(
        multi_resolution_mel_distance(&x, &y, &cfg).unwrap(),
        md.distance(&x, &y).unwrap()
    );
}

#[test]
fn mel_distance_handles_short_signals_and_rejects_bad_input() {
    let md = MelDistance::new(MelDistanceConfig::default()).unwrap();
    // Shorter than the largest FFT: zero padding still yields frames.
    let x = tone(300, 24000.0);
    let y: Vec<f32> = x.iter().map(|v| v * 0.5).collect();
    let d = md.distance(&x, &y).unwrap();
    assert!(d.is_finite() && d > 0.0);
    assert!(invalid(md.distance(&[], &[])).contains("empty"));
    assert!(invalid(md.distance(&x, &y[..10])).contains("300 samples"));
    let bad = |cfg: MelDistanceConfig| {
        matches!(MelDistance::new(cfg), Err(AudioError::InvalidArgument(_)))
    };
    assert!(bad(MelDistanceConfig {
        fft_sizes: vec![],
        ..Default::default()
    }));
    assert!(bad(MelDistanceConfig {
        log_eps: 0.0,
        ..Default::default()
    }));
    assert!(bad(MelDistanceConfig {
        f_max: Some(20000.0),
        ..Default::default()
    }));
    assert!(bad(MelDistanceConfig {
        fft_sizes: vec![2],
        ..Default::default()
    }));
}
