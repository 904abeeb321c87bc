//! Resampling: frequency, amplitude and phase of sines, exact lengths, alignment, identity, and
//! chunked streaming equal to the whole-clip call.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vaak_audio::resample::{resample, resampled_len, StreamResampler};
use vaak_audio::AudioError;

/// Passband error of a resampled sine against the ideal sine at the output rate (same
/// frequency, amplitude and phase), as energy ratio in dB. The requirement is -60 dB; the
/// measured worst case over the pairs and tones below is about -110 dB.
const MAX_SINE_ERROR_DB: f64 = -60.0;
/// Chunked streaming must reproduce the whole-clip output exactly.
const STREAM_TOLERANCE: f32 = 0.0;

const PAIRS: [(u32, u32); 3] = [(44100, 16000), (16000, 24000), (48000, 22050)];

fn sine(rate: u32, freq: f64, amp: f64, phase: f64, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            (amp * (2.0 * std::f64::consts::PI * freq * i as f64 / f64::from(rate) + phase).sin())
                as f32
        })
        .collect()
}

/// Error energy of `y` against `ideal` over `[lo, hi)`, relative to the ideal's energy, in dB.
fn error_db(y: &[f32], ideal: &[f32], lo: usize, hi: usize) -> f64 {
    let (mut e, mut s) = (0.0f64, 0.0f64);
    for i in lo..hi {
        let d = f64::from(y[i]) - f64::from(ideal[i]);
        e += d * d;
        s += f64::from(ideal[i]).powi(2);
    }
    10.0 * (e / s).log10()
}

#[test]
fn sines_keep_frequency_amplitude_and_phase() {
    for (from, to) in PAIRS {
        let nyq = f64::from(from.min(to)) / 2.0;
        // From low frequencies up to 90 % of the lower Nyquist frequency.
        for rel in [0.02, 0.1, 0.3, 0.6, 0.85, 0.9] {
            let f = nyq * rel;
            let n = (from / 2) as usize;
            let x = sine(from, f, 0.7, 0.4, n);
            let y = resample(&x, from, to).unwrap();
            assert_eq!(y.len() as u64, resampled_len(n as u64, from, to));
            let ideal = sine(to, f, 0.7, 0.4, y.len());
            // The clip edges are a step to the filter, so measure away from them.
            let margin = y.len() / 8;
            let db = error_db(&y, &ideal, margin, y.len() - margin);
            eprintln!("{from} -> {to} Hz, sine {f:.0} Hz: error {db:.1} dB");
            assert!(db < MAX_SINE_ERROR_DB, "{from}->{to} {f} Hz: {db:.1} dB");
        }
    }
}

#[test]
fn above_the_lower_nyquist_is_removed() {
    // 44.1k -> 16k: a 10 kHz tone cannot be represented and must not alias back in.
    let x = sine(44100, 10_000.0, 0.7, 0.0, 22050);
    let y = resample(&x, 44100, 16000).unwrap();
    let margin = y.len() / 8;
    let rms = (y[margin..y.len() - margin]
        .iter()
        .map(|v| f64::from(*v).powi(2))
        .sum::<f64>()
        / (y.len() - 2 * margin) as f64)
        .sqrt();
    let db = 20.0 * (rms / (0.7 / 2f64.sqrt())).log10();
    eprintln!("10 kHz tone after 44.1k->16k: {db:.1} dB");
    assert!(db < -60.0, "{db}");
}

#[test]
fn an_impulse_stays_in_place() {
    // Input frame 441 * k is exactly output frame 160 * k for 44.1k -> 16k.
    for (from, to, step_in, step_out) in [(44100, 16000, 441, 160), (16000, 24000, 2, 3)] {
        let mut x = vec![0.0f32; from as usize / 4];
        let k_in = step_in * 20;
        let k_out = step_out * 20;
        x[k_in] = 1.0;
        let y = resample(&x, from, to).unwrap();
        let peak = y
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0;
        assert_eq!(peak, k_out, "{from}->{to}");
        // Symmetric around the peak: linear phase, no fractional shift.
        for d in 1..20 {
            assert!(
                (y[k_out - d] - y[k_out + d]).abs() < 1e-5,
                "{from}->{to} d={d}"
            );
        }
    }
}

#[test]
fn lengths_are_exact() {
    for (from, to) in PAIRS
        .iter()
        .copied()
        .chain([(16000, 16000), (8000, 48000), (17600, 16000)])
    {
        for n in [0usize, 1, 2, 7, 100, 1023, 1024, 4097, 22050] {
            let x = vec![0.1f32; n];
            let y = resample(&x, from, to).unwrap();
            let want = ((n as f64) * f64::from(to) / f64::from(from)).round() as usize;
            assert_eq!(y.len(), want, "{from}->{to}, n={n}");
        }
    }
}

#[test]
fn same_rate_is_identity() {
    let x = sine(16000, 123.0, 0.5, 0.0, 777);
    assert_eq!(resample(&x, 16000, 16000).unwrap(), x);
    let mut s = StreamResampler::new(16000, 16000).unwrap();
    let mut out = s.push(&x[..100]).unwrap();
    out.extend(s.push(&x[100..]).unwrap());
    out.extend(s.finish().unwrap());
    assert_eq!(out, x);
}

#[test]
fn streaming_in_random_chunks_equals_whole_clip() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for (from, to) in PAIRS.iter().copied().chain([(17600, 16000)]) {
        let n = from as usize / 3 + 17;
        let x: Vec<f32> = (0..n).map(|_| rng.random_range(-0.8..0.8)).collect();
        let whole = resample(&x, from, to).unwrap();
        let mut stream = StreamResampler::new(from, to).unwrap();
        // Two passes: the second checks that `finish` resets the stream for reuse.
        for pass in 0..2 {
            let mut out = Vec::new();
            let mut pos = 0;
            while pos < n {
                // Chunks from empty to several blocks, like network packets.
                let len = rng.random_range(0..3000).min(n - pos);
                out.extend(stream.push(&x[pos..pos + len]).unwrap());
                pos += len;
            }
            out.extend(stream.finish().unwrap());
            assert_eq!(out.len(), whole.len(), "{from}->{to} pass {pass}");
            let max = out
                .iter()
                .zip(&whole)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(max <= STREAM_TOLERANCE, "{from}->{to} pass {pass}: {max}");
        }
    }
}

#[test]
fn stream_outputs_arrive_with_bounded_latency() {
    // Pushing 20 ms packets, the stream never holds back more than 1.5 blocks plus one packet.
    let (from, to) = (48000, 16000);
    let mut s = StreamResampler::new(from, to).unwrap();
    let packet = 960;
    let mut n_in = 0u64;
    let mut n_out = 0u64;
    let bound = (s.block_frames() as f64 * 1.5 + packet as f64) * f64::from(to) / f64::from(from);
    for _ in 0..100 {
        n_out += s.push(&vec![0.25f32; packet]).unwrap().len() as u64;
        n_in += packet as u64;
        let pending = resampled_len(n_in, from, to) - n_out;
        assert!((pending as f64) <= bound + 1.0, "{pending} > {bound}");
    }
}

#[test]
fn zero_rates_are_errors() {
    for (from, to) in [(0, 16000), (16000, 0)] {
        assert!(matches!(
            resample(&[0.0; 10], from, to),
            Err(AudioError::Resample { .. })
        ));
        assert!(StreamResampler::new(from, to).is_err());
    }
    assert!(StreamResampler::with_block_frames(16000, 8000, 0).is_err());
}
