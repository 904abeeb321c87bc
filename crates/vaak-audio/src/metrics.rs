//! Signal quality metrics: SNR, scale-invariant SDR and a multi-resolution log-mel distance.
//!
//! SNR and SI-SDR accumulate in `f64`. All three reject empty input, length mismatches and
//! non-finite samples with [`AudioError::InvalidArgument`].

use crate::error::{AudioError, Result};
use crate::features::mel::{MelFilterbank, MelFilterbankConfig, MelNorm, MelScale, TriangleSpace};
use crate::features::stft::{spectrum_into, SpectrumKind, Stft, StftPadding};
use crate::features::window::hann_window;

fn check_pair(reference: &[f32], estimate: &[f32], what: &str) -> Result<()> {
    if reference.is_empty() {
        return Err(AudioError::InvalidArgument(format!(
            "{what}: reference is empty"
        )));
    }
    if reference.len() != estimate.len() {
        return Err(AudioError::InvalidArgument(format!(
            "{what}: reference has {} samples but estimate has {}",
            reference.len(),
            estimate.len()
        )));
    }
    for (name, x) in [("reference", reference), ("estimate", estimate)] {
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(AudioError::InvalidArgument(format!(
                "{what}: {name} sample {i} is not finite"
            )));
        }
    }
    Ok(())
}

fn ratio_db(signal: f64, noise: f64) -> f64 {
    10.0 * (signal / noise).log10()
}

/// Signal-to-noise ratio in dB: `10 log10(sum(r^2) / sum((r - e)^2))`.
///
/// An estimate equal to the reference gives `+inf`. A reference with zero energy is an error,
/// since the ratio is then undefined or `-inf`.
pub fn snr_db(reference: &[f32], estimate: &[f32]) -> Result<f64> {
    check_pair(reference, estimate, "snr_db")?;
    let (mut s, mut n) = (0.0f64, 0.0f64);
    for (&r, &e) in reference.iter().zip(estimate) {
        let (r, e) = (r as f64, e as f64);
        s += r * r;
        n += (r - e) * (r - e);
    }
    if s == 0.0 {
        return Err(AudioError::InvalidArgument(
            "snr_db: reference has zero energy".into(),
        ));
    }
    Ok(ratio_db(s, n))
}

/// Scale-invariant signal-to-distortion ratio in dB (Le Roux et al., 2019).
///
/// Both signals are made zero-mean; with `a = <e, r> / <r, r>`, the target is `a r` and the
/// distortion `e - a r`; the result is `10 log10(|a r|^2 / |e - a r|^2)`. It is unchanged when
/// the estimate is scaled by any non-zero factor. A perfect (scaled) estimate gives `+inf`; a
/// reference that is constant (zero energy once its mean is removed) is an error.
pub fn si_sdr_db(reference: &[f32], estimate: &[f32]) -> Result<f64> {
    check_pair(reference, estimate, "si_sdr_db")?;
    let n = reference.len() as f64;
    let mr = reference.iter().map(|&x| x as f64).sum::<f64>() / n;
    let me = estimate.iter().map(|&x| x as f64).sum::<f64>() / n;
    let (mut rr, mut re) = (0.0f64, 0.0f64);
    for (&r, &e) in reference.iter().zip(estimate) {
        let (r, e) = (r as f64 - mr, e as f64 - me);
        rr += r * r;
        re += r * e;
    }
    if rr == 0.0 {
        return Err(AudioError::InvalidArgument(
            "si_sdr_db: reference is constant (zero energy after removing its mean)".into(),
        ));
    }
    let a = re / rr;
    let (mut t, mut d) = (0.0f64, 0.0f64);
    for (&r, &e) in reference.iter().zip(estimate) {
        let target = a * (r as f64 - mr);
        let dist = (e as f64 - me) - target;
        t += target * target;
        d += dist * dist;
    }
    Ok(ratio_db(t, d))
}

/// Configuration of [`MelDistance`].
#[derive(Debug, Clone, PartialEq)]
pub struct MelDistanceConfig {
    /// Sample rate of the signals, Hz.
    pub sample_rate: u32,
    /// FFT sizes of the resolutions; each uses a periodic Hann window of that length and a hop
    /// of `n_fft / 4`.
    pub fft_sizes: Vec<usize>,
    /// Mel filters per resolution.
    pub n_mels: usize,
    /// Lowest filter corner, Hz.
    pub f_min: f64,
    /// Highest filter corner, Hz; `None` means Nyquist.
    pub f_max: Option<f64>,
    /// Added before the log: `log10(mel + log_eps)`.
    pub log_eps: f32,
}

impl Default for MelDistanceConfig {
    /// 24 kHz, FFT sizes 512 / 1024 / 2048, 80 mels from 0 Hz to Nyquist, `log_eps = 1e-5`.
    fn default() -> Self {
        Self {
            sample_rate: 24_000,
            fft_sizes: vec![512, 1024, 2048],
            n_mels: 80,
            f_min: 0.0,
            f_max: None,
            log_eps: 1e-5,
        }
    }
}

/// Multi-resolution log-mel L1 distance, with STFT plans and filters built once.
///
/// For each FFT size `N`: a centred STFT (`N/2` zeros at each end, hop `N/4`, periodic Hann),
/// magnitude spectrum, HTK-scale mel filters (triangular in Hz, peak 1, no area
/// normalisation), `log10(mel + log_eps)`. The distance at that resolution is the mean absolute
/// difference over all frames and mel bins; the result is the mean over resolutions. Identical
/// signals give exactly 0.
#[derive(Debug, Clone)]
pub struct MelDistance {
    cfg: MelDistanceConfig,
    resolutions: Vec<(Stft, MelFilterbank)>,
}

impl MelDistance {
    /// Validates the configuration and precomputes each resolution.
    pub fn new(cfg: MelDistanceConfig) -> Result<Self> {
        if cfg.fft_sizes.is_empty() {
            return Err(AudioError::InvalidArgument(
                "MelDistanceConfig.fft_sizes is empty".into(),
            ));
        }
        if cfg.log_eps.is_nan() || cfg.log_eps <= 0.0 {
            return Err(AudioError::InvalidArgument(format!(
                "MelDistanceConfig.log_eps {} must be > 0",
                cfg.log_eps
            )));
        }
        let sr = cfg.sample_rate as f64;
        let mut resolutions = Vec::with_capacity(cfg.fft_sizes.len());
        for &n_fft in &cfg.fft_sizes {
            if n_fft < 4 {
                return Err(AudioError::InvalidArgument(format!(
                    "MelDistanceConfig.fft_sizes: {n_fft} is too small (need >= 4)"
                )));
            }
            let stft = Stft::new(
                n_fft,
                n_fft / 4,
                &hann_window(n_fft, true),
                StftPadding::Zeros,
            )?;
            let fb = MelFilterbank::new(&MelFilterbankConfig {
                sample_rate: sr,
                n_fft,
                n_mels: cfg.n_mels,
                f_min: cfg.f_min,
                f_max: cfg.f_max.unwrap_or(sr / 2.0),
                scale: MelScale::Htk,
                norm: MelNorm::None,
                triangles: TriangleSpace::Hz,
            })?;
            resolutions.push((stft, fb));
        }
        Ok(Self { cfg, resolutions })
    }

    /// The configuration.
    pub fn config(&self) -> &MelDistanceConfig {
        &self.cfg
    }

    fn log_mel(&self, stft: &Stft, fb: &MelFilterbank, x: &[f32]) -> Result<Vec<f32>> {
        let n_mels = fb.n_mels();
        let mut out = vec![0.0f32; stft.n_frames(x.len()) * n_mels];
        let mut mag = vec![0.0f32; stft.n_bins()];
        stft.for_each_frame(x, |t, spec| {
            spectrum_into(spec, SpectrumKind::Magnitude, &mut mag);
            let row = &mut out[t * n_mels..(t + 1) * n_mels];
            fb.apply(&mag, row);
            for v in row.iter_mut() {
                *v = (*v + self.cfg.log_eps).log10();
            }
        })?;
        Ok(out)
    }

    /// Distance between two equally long signals (see the type's docs for the definition).
    pub fn distance(&self, reference: &[f32], estimate: &[f32]) -> Result<f64> {
        check_pair(reference, estimate, "mel distance")?;
        let mut total = 0.0f64;
        for (stft, fb) in &self.resolutions {
            let a = self.log_mel(stft, fb, reference)?;
            let b = self.log_mel(stft, fb, estimate)?;
            let sum: f64 = a.iter().zip(&b).map(|(x, y)| (x - y).abs() as f64).sum();
            total += sum / a.len() as f64;
        }
        Ok(total / self.resolutions.len() as f64)
    }
}

/// One-off [`MelDistance::distance`] (builds the plans each call; keep a [`MelDistance`] to reuse).
pub fn multi_resolution_mel_distance(
    reference: &[f32],
    estimate: &[f32],
    cfg: &MelDistanceConfig,
) -> Result<f64> {
    MelDistance::new(cfg.clone())?.distance(reference, estimate)
}
