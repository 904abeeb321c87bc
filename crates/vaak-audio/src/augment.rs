//! Seeded, deterministic audio augmentation.
//!
//! The effects, each a plain function:
//!
//! - [`speed`]: Kaldi-style speed perturbation. The clip is resampled as if it had been recorded
//!   at `rate * factor`, so it plays `factor` times faster: the length becomes
//!   `round(n * rate / round(rate * factor))`, i.e. `n / factor` within one sample, and the
//!   pitch rises by `factor`.
//! - [`pitch_shift`]: shifts pitch by a number of semitones and keeps the length exactly. It is
//!   [`speed`] by `2^(semitones/12)` (moves pitch, changes length), followed by a phase-vocoder
//!   [`time_stretch`] back to the original length (keeps pitch). A phase vocoder was chosen over
//!   WSOLA because it keeps a tone's frequency exact for any stretch (WSOLA snaps to waveform
//!   periods and can warble on mixtures); its known cost, a slight "phasiness" on transients, is
//!   acceptable for training-data augmentation.
//! - [`add_noise`]: adds noise scaled so that the clip's SNR is exactly the target (to float
//!   rounding). The noise is white or pink Gaussian from a seeded generator
//!   ([`white_noise`], [`pink_noise`]), or a given clip looped/cropped from a seeded offset
//!   ([`fit_noise`]).
//! - [`gain_db`]: multiplies by `10^(dB/20)`. No clipping: the samples are floats.
//!
//! [`Augmenter`] draws effects with the probabilities of an [`AugmentConfig`] from a ChaCha8
//! generator seeded by the caller: the same seed and the same sequence of inputs give
//! bit-identical outputs on every platform; different seeds give different draws and noise.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use realfft::num_complex::Complex;
use realfft::RealFftPlanner;

use crate::error::{AudioError, Result};
use crate::io::Audio;
use crate::resample::resample;

/// Speed perturbation by `factor` (> 1 is faster and shorter, with higher pitch).
///
/// See the module doc for the exact output length. `factor` must be in `[0.25, 4]`.
pub fn speed(audio: &Audio, factor: f64) -> Result<Audio> {
    if !(0.25..=4.0).contains(&factor) {
        return Err(AudioError::InvalidArgument(format!(
            "speed factor {factor} outside [0.25, 4]"
        )));
    }
    check_rate(audio)?;
    let from = (f64::from(audio.sample_rate) * factor).round() as u32;
    let samples = resample(&audio.samples, from, audio.sample_rate)?;
    Ok(Audio::new(samples, audio.sample_rate))
}

/// Shifts the pitch by `semitones` (may be fractional, `|semitones| <= 24`), keeping the length.
///
/// See the module doc for the method. The output has exactly as many samples as the input.
pub fn pitch_shift(audio: &Audio, semitones: f64) -> Result<Audio> {
    if !semitones.is_finite() || semitones.abs() > 24.0 {
        return Err(AudioError::InvalidArgument(format!(
            "pitch shift of {semitones} semitones outside [-24, 24]"
        )));
    }
    check_rate(audio)?;
    if semitones == 0.0 || audio.samples.is_empty() {
        return Ok(audio.clone());
    }
    let sped = speed(audio, 2f64.powf(semitones / 12.0))?;
    let samples = time_stretch(&sped.samples, audio.samples.len());
    Ok(Audio::new(samples, audio.sample_rate))
}

/// FFT size of the phase vocoder (64 ms at 16 kHz).
const PV_FFT: usize = 1024;
/// Synthesis hop: 75 % overlap, so the squared Hann windows sum to a constant.
const PV_HOP: usize = PV_FFT / 4;

/// Changes the length of `x` to exactly `out_len` samples without changing its pitch.
///
/// A phase vocoder: Hann-windowed frames of [`PV_FFT`] samples are taken every
/// `PV_HOP * len / out_len` input samples, each bin's phase is advanced by its measured
/// instantaneous frequency times the fixed synthesis hop, and the frames are overlap-added with
/// the window-power sum divided out. Stationary tones keep their frequency and amplitude.
pub fn time_stretch(x: &[f32], out_len: usize) -> Vec<f32> {
    if x.is_empty() || out_len == 0 {
        return vec![0.0; out_len];
    }
    let n = PV_FFT;
    let bins = n / 2 + 1;
    let ha = PV_HOP as f64 * x.len() as f64 / out_len as f64;
    let window: Vec<f64> = (0..n)
        .map(|i| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n as f64).cos())
        .collect();
    let mut planner = RealFftPlanner::<f64>::new();
    let fwd = planner.plan_fft_forward(n);
    let inv = planner.plan_fft_inverse(n);
    let mut frame = fwd.make_input_vec();
    let mut spec = fwd.make_output_vec();
    let mut prev_phase = vec![0.0f64; bins];
    let mut syn_phase = vec![0.0f64; bins];
    // Output frame k is centred on output sample k * PV_HOP; `acc` starts half a frame early.
    let n_frames = out_len / PV_HOP + 3;
    let mut acc = vec![0.0f64; n_frames * PV_HOP + n];
    let mut wsum = vec![0.0f64; acc.len()];
    let mut prev_start = 0i64;
    for k in 0..n_frames {
        // Analysis frame centred on input sample round(k * ha).
        let centre = (k as f64 * ha).round() as i64;
        let start = centre - (n / 2) as i64;
        for (i, v) in frame.iter_mut().enumerate() {
            let j = start + i as i64;
            let s = if j >= 0 && (j as usize) < x.len() {
                f64::from(x[j as usize])
            } else {
                0.0
            };
            *v = s * window[i];
        }
        fwd.process(&mut frame, &mut spec)
            .expect("buffers come from the plan");
        let hop_a = (start - prev_start) as f64;
        for (b, c) in spec.iter_mut().enumerate() {
            let phase = c.arg();
            if k == 0 {
                syn_phase[b] = phase;
            } else {
                let omega = 2.0 * std::f64::consts::PI * b as f64 / n as f64;
                let freq = if hop_a > 0.0 {
                    let dev = wrap_phase(phase - prev_phase[b] - omega * hop_a);
                    omega + dev / hop_a
                } else {
                    omega
                };
                syn_phase[b] = wrap_phase(syn_phase[b] + freq * PV_HOP as f64);
            }
            prev_phase[b] = phase;
            *c = Complex::from_polar(c.norm(), syn_phase[b]);
        }
        // The DC and Nyquist bins of a real signal must stay real.
        spec[0].im = 0.0;
        spec[bins - 1].im = 0.0;
        prev_start = start;
        inv.process(&mut spec, &mut frame)
            .expect("buffers come from the plan");
        let off = k * PV_HOP;
        for i in 0..n {
            // realfft's inverse is unnormalised.
            acc[off + i] += frame[i] / n as f64 * window[i];
            wsum[off + i] += window[i] * window[i];
        }
    }
    let floor = 1e-3;
    (0..out_len)
        .map(|i| {
            let j = i + n / 2;
            (acc[j] / wsum[j].max(floor)) as f32
        })
        .collect()
}

fn wrap_phase(p: f64) -> f64 {
    let two_pi = 2.0 * std::f64::consts::PI;
    p - two_pi * (p / two_pi).round()
}

/// `n` samples of white Gaussian noise (unit variance) from `rng`.
pub fn white_noise(n: usize, rng: &mut impl Rng) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let v: f64 = StandardNormal.sample(rng);
            v as f32
        })
        .collect()
}

/// `n` samples of pink (1/f power) Gaussian noise from `rng`, with unit variance.
///
/// Made in the frequency domain: each bin gets a complex Gaussian scaled by `1/sqrt(k)`, DC is
/// zero, and the inverse FFT gives the waveform.
pub fn pink_noise(n: usize, rng: &mut impl Rng) -> Vec<f32> {
    if n == 0 {
        return Vec::new();
    }
    if n == 1 {
        return white_noise(1, rng);
    }
    let mut planner = RealFftPlanner::<f64>::new();
    let inv = planner.plan_fft_inverse(n);
    let mut spec = inv.make_input_vec();
    let last = spec.len() - 1;
    for (k, c) in spec.iter_mut().enumerate() {
        if k == 0 {
            continue;
        }
        let re: f64 = StandardNormal.sample(rng);
        let im: f64 = StandardNormal.sample(rng);
        let scale = 1.0 / (k as f64).sqrt();
        // The Nyquist bin of an even-length signal is real.
        let im = if k == last && n.is_multiple_of(2) {
            0.0
        } else {
            im
        };
        *c = Complex::new(re * scale, im * scale);
    }
    let mut out = inv.make_output_vec();
    inv.process(&mut spec, &mut out)
        .expect("buffers come from the plan");
    let rms = (out.iter().map(|v| v * v).sum::<f64>() / n as f64).sqrt();
    let rms = if rms > 0.0 { rms } else { 1.0 };
    out.iter().map(|v| (v / rms) as f32).collect()
}

/// `n` samples of `noise`, looped as needed, starting at an offset drawn from `rng`.
///
/// Errors if `noise` is empty.
pub fn fit_noise(noise: &[f32], n: usize, rng: &mut impl Rng) -> Result<Vec<f32>> {
    if noise.is_empty() {
        return Err(AudioError::InvalidArgument("noise clip is empty".into()));
    }
    let offset = rng.random_range(0..noise.len());
    Ok((0..n).map(|i| noise[(offset + i) % noise.len()]).collect())
}

/// `signal + g * noise` with `g` chosen so that `10 log10(sum(signal²) / sum((g noise)²))` is
/// `snr_db`.
///
/// `noise` must have the signal's length and non-zero power. A silent signal has no defined
/// SNR and is returned unchanged.
pub fn add_noise(signal: &[f32], noise: &[f32], snr_db: f64) -> Result<Vec<f32>> {
    if noise.len() != signal.len() {
        return Err(AudioError::InvalidArgument(format!(
            "noise has {} samples, signal {}",
            noise.len(),
            signal.len()
        )));
    }
    if !snr_db.is_finite() {
        return Err(AudioError::InvalidArgument(format!("SNR {snr_db} dB")));
    }
    let ps: f64 = signal.iter().map(|&v| f64::from(v).powi(2)).sum();
    if ps == 0.0 {
        return Ok(signal.to_vec());
    }
    let pn: f64 = noise.iter().map(|&v| f64::from(v).powi(2)).sum();
    if pn == 0.0 || !pn.is_finite() {
        return Err(AudioError::InvalidArgument(
            "noise has zero or non-finite power".into(),
        ));
    }
    let g = (ps / pn / 10f64.powf(snr_db / 10.0)).sqrt();
    Ok(signal
        .iter()
        .zip(noise)
        .map(|(&s, &v)| (f64::from(s) + g * f64::from(v)) as f32)
        .collect())
}

/// Multiplies every sample by `10^(db/20)` (computed in `f64`, applied as one `f32` factor).
pub fn gain_db(samples: &[f32], db: f64) -> Vec<f32> {
    let g = 10f64.powf(db / 20.0) as f32;
    samples.iter().map(|&v| v * g).collect()
}

fn check_rate(audio: &Audio) -> Result<()> {
    if audio.sample_rate == 0 {
        return Err(AudioError::InvalidArgument("sample rate is 0".into()));
    }
    Ok(())
}

/// Generated noise colour, used when no noise clips are given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoiseColour {
    /// Flat spectrum.
    White,
    /// 1/f power spectrum.
    Pink,
}

/// Which effects [`Augmenter::apply`] uses, and how often. Effects run in the order speed,
/// pitch, noise, gain; each is drawn independently with its probability.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    /// Probability of speed perturbation.
    pub speed_prob: f64,
    /// Factors to pick from uniformly (Kaldi recipes use 0.9 and 1.1).
    pub speed_factors: Vec<f64>,
    /// Probability of a pitch shift.
    pub pitch_prob: f64,
    /// The shift is uniform in `[-pitch_semitones, pitch_semitones]`.
    pub pitch_semitones: f64,
    /// Probability of additive noise.
    pub noise_prob: f64,
    /// The SNR is uniform in `[snr_db[0], snr_db[1]]`.
    pub snr_db: [f64; 2],
    /// Colours for generated noise, picked uniformly (ignored when noise clips are given).
    pub noise_colours: Vec<NoiseColour>,
    /// Probability of a gain change.
    pub gain_prob: f64,
    /// The gain is uniform in `[gain_db[0], gain_db[1]]`.
    pub gain_db: [f64; 2],
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            speed_prob: 0.3,
            speed_factors: vec![0.9, 1.1],
            pitch_prob: 0.0,
            pitch_semitones: 2.0,
            noise_prob: 0.3,
            snr_db: [10.0, 30.0],
            noise_colours: vec![NoiseColour::White, NoiseColour::Pink],
            gain_prob: 0.3,
            gain_db: [-6.0, 6.0],
        }
    }
}

impl AugmentConfig {
    /// Checks probabilities, ranges and factors; the error names the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, why: String| {
            Err(AudioError::InvalidArgument(format!(
                "augment config `{field}`: {why}"
            )))
        };
        for (field, p) in [
            ("speed_prob", self.speed_prob),
            ("pitch_prob", self.pitch_prob),
            ("noise_prob", self.noise_prob),
            ("gain_prob", self.gain_prob),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return bad(field, format!("probability {p} not in [0, 1]"));
            }
        }
        if self.speed_prob > 0.0 {
            if self.speed_factors.is_empty() {
                return bad("speed_factors", "empty".into());
            }
            if let Some(f) = self
                .speed_factors
                .iter()
                .find(|f| !(0.25..=4.0).contains(*f))
            {
                return bad("speed_factors", format!("{f} not in [0.25, 4]"));
            }
        }
        if !(0.0..=24.0).contains(&self.pitch_semitones) {
            return bad(
                "pitch_semitones",
                format!("{} not in [0, 24]", self.pitch_semitones),
            );
        }
        for (field, [lo, hi]) in [("snr_db", self.snr_db), ("gain_db", self.gain_db)] {
            if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
                return bad(field, format!("[{lo}, {hi}] is not a finite range"));
            }
        }
        if self.noise_prob > 0.0 && self.noise_colours.is_empty() {
            return bad("noise_colours", "empty".into());
        }
        Ok(())
    }
}

/// What one [`Augmenter::apply_with_log`] call did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    /// Speed factor, if speed perturbation ran.
    pub speed: Option<f64>,
    /// Pitch shift in semitones, if it ran.
    pub semitones: Option<f64>,
    /// Target SNR in dB, if noise was added.
    pub snr_db: Option<f64>,
    /// Gain in dB, if applied.
    pub gain_db: Option<f64>,
}

/// Applies randomly drawn effects from an [`AugmentConfig`], deterministically per seed.
#[derive(Debug, Clone)]
pub struct Augmenter {
    config: AugmentConfig,
    rng: ChaCha8Rng,
    noise_clips: Vec<Audio>,
    /// Noise clips resampled to a clip's rate, by (clip index, rate).
    resampled: HashMap<(usize, u32), Vec<f32>>,
}

impl Augmenter {
    /// An augmenter with [`AugmentConfig::default`] and generated noise.
    pub fn new(seed: u64) -> Self {
        Self {
            config: AugmentConfig::default(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            noise_clips: Vec::new(),
            resampled: HashMap::new(),
        }
    }

    /// An augmenter with `config` (validated) and generated noise.
    pub fn with_config(config: AugmentConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let mut a = Self::new(seed);
        a.config = config;
        Ok(a)
    }

    /// Uses these noise clips (picked uniformly, resampled to each input's rate as needed)
    /// instead of generated noise. Empty or silent clips are rejected.
    pub fn with_noise_clips(mut self, clips: Vec<Audio>) -> Result<Self> {
        for (i, c) in clips.iter().enumerate() {
            if c.sample_rate == 0 || !c.samples.iter().any(|&v| v != 0.0) {
                return Err(AudioError::InvalidArgument(format!(
                    "noise clip {i} is empty, silent or has rate 0"
                )));
            }
        }
        self.noise_clips = clips;
        self.resampled.clear();
        Ok(self)
    }

    /// The configuration in use.
    pub fn config(&self) -> &AugmentConfig {
        &self.config
    }

    /// Applies a random selection of effects to `audio`.
    pub fn apply(&mut self, audio: &Audio) -> Result<Audio> {
        self.apply_with_log(audio).map(|(a, _)| a)
    }

    /// Like [`apply`](Self::apply), also saying which effects ran with which parameters.
    pub fn apply_with_log(&mut self, audio: &Audio) -> Result<(Audio, Applied)> {
        check_rate(audio)?;
        let cfg = self.config.clone();
        let mut log = Applied::default();
        let mut out = audio.clone();
        if self.rng.random_bool(cfg.speed_prob) {
            let f = cfg.speed_factors[self.rng.random_range(0..cfg.speed_factors.len())];
            out = speed(&out, f)?;
            log.speed = Some(f);
        }
        if self.rng.random_bool(cfg.pitch_prob) {
            let s = uniform(&mut self.rng, -cfg.pitch_semitones, cfg.pitch_semitones);
            out = pitch_shift(&out, s)?;
            log.semitones = Some(s);
        }
        if self.rng.random_bool(cfg.noise_prob) {
            let snr = uniform(&mut self.rng, cfg.snr_db[0], cfg.snr_db[1]);
            let noise = self.draw_noise(out.samples.len(), out.sample_rate)?;
            out.samples = add_noise(&out.samples, &noise, snr)?;
            log.snr_db = Some(snr);
        }
        if self.rng.random_bool(cfg.gain_prob) {
            let g = uniform(&mut self.rng, cfg.gain_db[0], cfg.gain_db[1]);
            out.samples = gain_db(&out.samples, g);
            log.gain_db = Some(g);
        }
        Ok((out, log))
    }

    fn draw_noise(&mut self, n: usize, rate: u32) -> Result<Vec<f32>> {
        if self.noise_clips.is_empty() {
            let colours = &self.config.noise_colours;
            let colour = colours[self.rng.random_range(0..colours.len())];
            return Ok(match colour {
                NoiseColour::White => white_noise(n, &mut self.rng),
                NoiseColour::Pink => pink_noise(n, &mut self.rng),
            });
        }
        let idx = self.rng.random_range(0..self.noise_clips.len());
        let clip = &self.noise_clips[idx];
        let samples = if clip.sample_rate == rate {
            &clip.samples
        } else {
            match self.resampled.entry((idx, rate)) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert(resample(&clip.samples, clip.sample_rate, rate)?),
            }
        };
        fit_noise(samples, n, &mut self.rng)
    }
}

fn uniform(rng: &mut ChaCha8Rng, lo: f64, hi: f64) -> f64 {
    if lo == hi {
        lo
    } else {
        rng.random_range(lo..=hi)
    }
}
