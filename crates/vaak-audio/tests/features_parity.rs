//! Parity of vaak-audio's features with their reference implementations, on the fixtures made by
//! `tools/fixtures/audio_features.py` (transformers 5.23 WhisperFeatureExtractor numpy path,
//! torchaudio 2.11 `compliance.kaldi.fbank`, speechbrain 1.1.2 `Fbank(n_mels=80)` and
//! `InputNormalization(norm_type="sentence", std_norm=False)`).

use safetensors::{Dtype, SafeTensors};
use vaak_audio::features::{
    sentence_mean_normalize, KaldiFbank, KaldiFbankOptions, KaldiWindow, MelFilterbank,
    MelFilterbankConfig, MelNorm, MelScale, MelSpectrogram, SpeechbrainFbank,
    SpeechbrainFbankConfig, TriangleSpace, WhisperMel, WHISPER_N_FRAMES, WHISPER_N_SAMPLES,
};
use vaak_audio::AudioError;

/// Whisper log-mel, after `(x + 4) / 4`.
const WHISPER_TOL: f32 = 1e-4;
/// Kaldi fbank, natural-log domain (and the log-energy column).
const KALDI_TOL: f32 = 1e-3;
/// Filter weights against torchaudio `melscale_fbanks` (which builds them in `f32`).
const MELBANK_TOL: f32 = 1e-5;
/// speechbrain Fbank, dB domain (10 log10), before and after sentence mean normalisation.
const SPEECHBRAIN_TOL: f32 = 1e-3;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tools/fixtures/data/audio_features/audio_features.safetensors"
);

struct Fixture {
    bytes: Vec<u8>,
}

impl Fixture {
    fn load() -> Self {
        Self {
            bytes: std::fs::read(FIXTURE)
                .expect("fixture missing; run tools/fixtures/audio_features.py"),
        }
    }

    /// Tensor `name` as f32 values and its shape.
    fn f32(&self, name: &str) -> (Vec<f32>, Vec<usize>) {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), Dtype::F32, "{name}");
        let v = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        (v, t.shape().to_vec())
    }

    /// An int16 PCM signal as floats in [-1, 1), exactly as the script fed the references.
    fn signal(&self, name: &str) -> Vec<f32> {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), Dtype::I16, "{name}");
        t.data()
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0)
            .collect()
    }
}

/// Max abs difference, also failing on a length mismatch or any NaN.
fn max_abs_diff(got: &[f32], want: &[f32], what: &str) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = 0.0f32;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let d = (g - w).abs();
        assert!(!d.is_nan(), "{what}: NaN at {i} (got {g}, want {w})");
        worst = worst.max(d);
    }
    worst
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    let d = max_abs_diff(got, want, what);
    println!("{what}: max abs diff {d:.3e} (tolerance {tol:.0e})");
    assert!(d <= tol, "{what}: max abs diff {d} > {tol}");
}

/// Columns `[0, n)` of a `[n_mels, n_frames]` spectrogram, row-major `[n_mels, n]`.
fn first_frames(m: &MelSpectrogram, n: usize) -> Vec<f32> {
    (0..m.n_mels).flat_map(|r| m.row(r)[..n].to_vec()).collect()
}

fn column(m: &MelSpectrogram, t: usize) -> Vec<f32> {
    (0..m.n_mels).map(|r| m.get(r, t)).collect()
}

/// A padded Whisper spectrogram against its stored head (`[n_mels, kept]`) and last frame;
/// every frame after the head must equal the last frame (they are all padding).
fn check_whisper_padded(fx: &Fixture, n_mels: usize, signal: &str, key: &str) {
    let x = fx.signal(signal);
    let mel = WhisperMel::new(n_mels).unwrap().compute(&x, true).unwrap();
    assert_eq!((mel.n_mels, mel.n_frames), (n_mels, WHISPER_N_FRAMES));
    let (head, shape) = fx.f32(key);
    assert_eq!(shape[0], n_mels);
    let kept = shape[1];
    assert_close(&first_frames(&mel, kept), &head, WHISPER_TOL, key);
    let (last, _) = fx.f32(&format!("{key}_last"));
    for t in kept..mel.n_frames {
        let d = max_abs_diff(&column(&mel, t), &last, key);
        assert!(d <= WHISPER_TOL, "{key}: padding frame {t} differs by {d}");
    }
}

#[test]
fn whisper80_padded_matches_transformers() {
    let fx = Fixture::load();
    check_whisper_padded(&fx, 80, "sig_a", "whisper80_pad_a");
}

#[test]
fn whisper128_padded_matches_transformers() {
    let fx = Fixture::load();
    check_whisper_padded(&fx, 128, "sig_a", "whisper128_pad_a");
}

#[test]
fn whisper_padded_short_clip_matches_transformers() {
    let fx = Fixture::load();
    check_whisper_padded(&fx, 80, "sig_short", "whisper80_pad_short");
    check_whisper_padded(&fx, 128, "sig_short", "whisper128_pad_short");
}

#[test]
fn whisper_unpadded_matches_transformers() {
    let fx = Fixture::load();
    let x = fx.signal("sig_b");
    let mel = WhisperMel::new(80).unwrap().compute(&x, false).unwrap();
    let (want, shape) = fx.f32("whisper80_nopad_b");
    assert_eq!(vec![mel.n_mels, mel.n_frames], shape);
    assert_eq!(mel.n_frames, x.len() / 160);
    assert_close(&mel.data, &want, WHISPER_TOL, "whisper80_nopad_b");

    // 180 samples: one frame, reflect padding (200) longer than the signal.
    let x = fx.signal("sig_short");
    let mel = WhisperMel::new(128).unwrap().compute(&x, false).unwrap();
    let (want, shape) = fx.f32("whisper128_nopad_short");
    assert_eq!(vec![mel.n_mels, mel.n_frames], shape);
    assert_close(&mel.data, &want, WHISPER_TOL, "whisper128_nopad_short");
}

#[test]
fn whisper_silence_matches_transformers() {
    let fx = Fixture::load();
    let mel = WhisperMel::new(80)
        .unwrap()
        .compute(&vec![0.0; 16000], true)
        .unwrap();
    let (want, _) = fx.f32("whisper80_pad_silence_frame0");
    // log10(1e-10) = -10 everywhere, so the clamp changes nothing and (x + 4) / 4 = -1.5.
    assert!(want.iter().all(|&v| v == -1.5));
    assert!(mel.data.iter().all(|&v| v == -1.5));
}

#[test]
fn whisper_truncates_to_30s_and_checks_input() {
    let wm = WhisperMel::new(80).unwrap();
    // Longer than 30 s: only the first 480000 samples count.
    let long: Vec<f32> = (0..WHISPER_N_SAMPLES + 3200)
        .map(|i| ((i as f32) * 0.013).sin() * 0.3 + if i >= WHISPER_N_SAMPLES { 0.6 } else { 0.0 })
        .collect();
    let a = wm.compute(&long, true).unwrap();
    let b = wm.compute(&long[..WHISPER_N_SAMPLES], true).unwrap();
    assert_eq!(a, b);

    let err = |r: Result<MelSpectrogram, AudioError>| match r {
        Err(AudioError::InvalidArgument(msg)) => msg,
        other => panic!("expected InvalidArgument, got {other:?}"),
    };
    assert!(err(wm.compute(&[], true)).contains("no samples"));
    assert!(err(wm.compute(&[], false)).contains("no samples"));
    assert!(err(wm.compute(&[0.1, f32::NAN, 0.2], true)).contains("sample 1"));
    assert!(err(wm.compute(&[0.0, 1.0, f32::INFINITY], false)).contains("sample 2"));
    // Unpadded, fewer than 160 samples leaves no frame once the last is dropped.
    assert!(err(wm.compute(&[0.1; 159], false)).contains("shorter than one hop"));
    assert_eq!(wm.compute(&[0.1; 160], false).unwrap().n_frames, 1);
    assert!(WhisperMel::new(0).is_err());
}

fn kaldi_options(name: &str) -> KaldiFbankOptions {
    let d = KaldiFbankOptions::default();
    match name {
        "kaldi_default_a" | "kaldi_default_silence" => d,
        "kaldi_v1_a" => KaldiFbankOptions {
            num_mel_bins: 80,
            snip_edges: false,
            window_type: KaldiWindow::Hamming,
            ..d
        },
        "kaldi_v2_a" => KaldiFbankOptions {
            use_energy: true,
            ..d
        },
        "kaldi_v3_b" => KaldiFbankOptions {
            num_mel_bins: 24,
            window_type: KaldiWindow::Blackman,
            round_to_power_of_two: false,
            use_power: false,
            use_energy: true,
            raw_energy: false,
            htk_compat: true,
            preemphasis_coefficient: 0.0,
            remove_dc_offset: false,
            low_freq: 64.0,
            high_freq: -400.0,
            energy_floor: 0.0,
            subtract_mean: true,
            frame_shift_ms: 12.5,
            frame_length_ms: 30.0,
            ..d
        },
        _ => unreachable!("{name}"),
    }
}

fn check_kaldi(fx: &Fixture, name: &str, signal: &str, scale: f32) {
    let x: Vec<f32> = fx.signal(signal).iter().map(|v| v * scale).collect();
    let fb = KaldiFbank::new(kaldi_options(name)).unwrap();
    let got = fb.compute(&x).unwrap();
    let (want, shape) = fx.f32(name);
    assert_eq!(vec![got.n_frames, got.n_features], shape, "{name}");
    assert_close(&got.data, &want, KALDI_TOL, name);
}

#[test]
fn kaldi_fbank_default_matches_torchaudio() {
    check_kaldi(&Fixture::load(), "kaldi_default_a", "sig_a", 1.0);
}

#[test]
fn kaldi_fbank_80_bins_hamming_no_snip_matches_torchaudio() {
    check_kaldi(&Fixture::load(), "kaldi_v1_a", "sig_a", 1.0);
}

#[test]
fn kaldi_fbank_with_energy_on_int16_scale_matches_torchaudio() {
    check_kaldi(&Fixture::load(), "kaldi_v2_a", "sig_a", 32768.0);
}

#[test]
fn kaldi_fbank_blackman_magnitude_htk_energy_mean_norm_matches_torchaudio() {
    check_kaldi(&Fixture::load(), "kaldi_v3_b", "sig_b", 1.0);
}

#[test]
fn kaldi_fbank_silence_and_bad_input() {
    let fx = Fixture::load();
    let fb = KaldiFbank::new(KaldiFbankOptions::default()).unwrap();
    let got = fb.compute(&vec![0.0; 16000]).unwrap();
    let (frame0, _) = fx.f32("kaldi_default_silence_frame0");
    assert_eq!(got.n_frames, 98);
    let want: Vec<f32> = frame0.repeat(got.n_frames);
    assert_close(&got.data, &want, KALDI_TOL, "kaldi silence");
    // torchaudio asserts on input shorter than one frame, whatever snip_edges says.
    let short = fx.signal("sig_short");
    for snip_edges in [true, false] {
        let fb = KaldiFbank::new(KaldiFbankOptions {
            snip_edges,
            ..Default::default()
        })
        .unwrap();
        match fb.compute(&short) {
            Err(AudioError::InvalidArgument(m)) => assert!(m.contains("shorter than one frame")),
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
        assert!(matches!(
            fb.compute(&[]),
            Err(AudioError::InvalidArgument(_))
        ));
        let mut bad = vec![0.1f32; 800];
        bad[500] = f32::NEG_INFINITY;
        match fb.compute(&bad) {
            Err(AudioError::InvalidArgument(m)) => assert!(m.contains("sample 500")),
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }
}

#[test]
fn speechbrain_fbank_matches_speechbrain() {
    let fx = Fixture::load();
    let sb = SpeechbrainFbank::new(SpeechbrainFbankConfig::default()).unwrap();
    for (sig, key) in [("sig_a", "sb_fbank_a"), ("sig_short", "sb_fbank_short")] {
        let x = fx.signal(sig);
        let got = sb.compute(&x).unwrap();
        let (want, shape) = fx.f32(key);
        assert_eq!(vec![got.n_frames, got.n_features], shape, "{key}");
        assert_eq!(got.n_frames, 1 + x.len() / 160);
        assert_close(&got.data, &want, SPEECHBRAIN_TOL, key);
    }
}

#[test]
fn speechbrain_sentence_normalised_fbank_matches_speechbrain() {
    let fx = Fixture::load();
    let sb = SpeechbrainFbank::new(SpeechbrainFbankConfig::default()).unwrap();
    let x = fx.signal("sig_b");
    let (want, shape) = fx.f32("sb_fbank_norm_b");
    let got = sb.compute_normalized(&x).unwrap();
    assert_eq!(vec![got.n_frames, got.n_features], shape);
    assert_close(&got.data, &want, SPEECHBRAIN_TOL, "sb_fbank_norm_b");
    let mut manual = sb.compute(&x).unwrap();
    sentence_mean_normalize(&mut manual);
    assert_eq!(manual, got);
}

#[test]
fn speechbrain_fbank_silence_and_bad_input() {
    let fx = Fixture::load();
    let sb = SpeechbrainFbank::new(SpeechbrainFbankConfig::default()).unwrap();
    let got = sb.compute(&vec![0.0; 16000]).unwrap();
    let (frame0, _) = fx.f32("sb_fbank_silence_frame0");
    assert_eq!(got.n_frames, 101);
    let want: Vec<f32> = frame0.repeat(got.n_frames);
    assert_close(&got.data, &want, SPEECHBRAIN_TOL, "sb silence");
    assert!(matches!(
        sb.compute(&[]),
        Err(AudioError::InvalidArgument(_))
    ));
    assert!(matches!(
        sb.compute(&[0.0, f32::NAN]),
        Err(AudioError::InvalidArgument(_))
    ));
    // One sample is enough: zero padding gives one frame.
    assert_eq!(sb.compute(&[0.5]).unwrap().n_frames, 1);
}

#[test]
fn mel_filterbanks_match_torchaudio() {
    let fx = Fixture::load();
    for (key, f_min, f_max, scale, norm) in [
        ("melbank_htk", 30.0, 7600.0, MelScale::Htk, MelNorm::None),
        (
            "melbank_slaney",
            0.0,
            8000.0,
            MelScale::Slaney,
            MelNorm::Slaney,
        ),
    ] {
        let fb = MelFilterbank::new(&MelFilterbankConfig {
            sample_rate: 16000.0,
            n_fft: 128,
            n_mels: 24,
            f_min,
            f_max,
            scale,
            norm,
            triangles: TriangleSpace::Hz,
        })
        .unwrap();
        let (want, shape) = fx.f32(key);
        assert_eq!(vec![fb.n_mels(), fb.n_bins()], shape);
        assert_close(fb.weights(), &want, MELBANK_TOL, key);
    }
}
