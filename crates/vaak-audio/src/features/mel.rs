//! Mel scales and triangular mel filterbanks.
//!
//! Two scales: HTK (`2595 log10(1 + f/700)`, which Kaldi writes as `1127 ln(1 + f/700)`) and
//! Slaney (linear below 1 kHz, logarithmic above; librosa's default, used by Whisper). Filters are
//! triangles whose corners are `n_mels + 2` points evenly spaced on the mel scale; the triangles
//! are linear either in Hz (librosa, torchaudio, transformers) or in mel (Kaldi). Optional Slaney
//! normalisation scales each filter to unit area in Hz (`2 / (f_right - f_left)`).
//!
//! A filterbank keeps its dense weights and, for each filter, the range of FFT bins where it is
//! non-zero, so applying it costs only the triangles' support.

use crate::error::{AudioError, Result};

/// The mel scale variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MelScale {
    /// `2595 log10(1 + f / 700)`.
    Htk,
    /// Slaney / librosa `htk=False`: `3 f / 200` below 1 kHz, `15 + ln(f / 1000) / (ln 6.4 / 27)` above.
    Slaney,
}

const SLANEY_F_SP: f64 = 200.0 / 3.0;
const SLANEY_MIN_LOG_HZ: f64 = 1000.0;
const SLANEY_MIN_LOG_MEL: f64 = SLANEY_MIN_LOG_HZ / SLANEY_F_SP;

fn slaney_logstep() -> f64 {
    6.4f64.ln() / 27.0
}

/// Frequency in Hz to mel.
pub fn hz_to_mel(hz: f64, scale: MelScale) -> f64 {
    match scale {
        MelScale::Htk => 2595.0 * (1.0 + hz / 700.0).log10(),
        MelScale::Slaney => {
            if hz >= SLANEY_MIN_LOG_HZ {
                SLANEY_MIN_LOG_MEL + (hz / SLANEY_MIN_LOG_HZ).ln() / slaney_logstep()
            } else {
                hz / SLANEY_F_SP
            }
        }
    }
}

/// Mel to frequency in Hz (inverse of [`hz_to_mel`]).
pub fn mel_to_hz(mel: f64, scale: MelScale) -> f64 {
    match scale {
        MelScale::Htk => 700.0 * (10f64.powf(mel / 2595.0) - 1.0),
        MelScale::Slaney => {
            if mel >= SLANEY_MIN_LOG_MEL {
                SLANEY_MIN_LOG_HZ * (slaney_logstep() * (mel - SLANEY_MIN_LOG_MEL)).exp()
            } else {
                SLANEY_F_SP * mel
            }
        }
    }
}

/// Per-filter normalisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MelNorm {
    /// Peak 1 for every filter.
    None,
    /// Unit area in Hz: each filter is multiplied by `2 / (f_right - f_left)`.
    Slaney,
}

/// The axis on which the triangles are linear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriangleSpace {
    /// Linear in Hz (librosa, torchaudio `melscale_fbanks`, transformers' default).
    Hz,
    /// Linear in mel (Kaldi).
    Mel,
}

/// Parameters of a triangular mel filterbank over the one-sided spectrum of an `n_fft`-point FFT.
#[derive(Debug, Clone, PartialEq)]
pub struct MelFilterbankConfig {
    /// Sample rate in Hz.
    pub sample_rate: f64,
    /// FFT size; the bank has `n_fft / 2 + 1` columns, bin `k` at `k * sample_rate / n_fft` Hz.
    pub n_fft: usize,
    /// Number of filters.
    pub n_mels: usize,
    /// Lower edge of the first filter, Hz.
    pub f_min: f64,
    /// Upper edge of the last filter, Hz.
    pub f_max: f64,
    /// Mel scale used to place the corners.
    pub scale: MelScale,
    /// Filter normalisation.
    pub norm: MelNorm,
    /// Axis on which the triangles are linear.
    pub triangles: TriangleSpace,
}

/// A bank of mel filters, dense `[n_mels, n_bins]` plus each filter's non-zero bin range.
#[derive(Debug, Clone, PartialEq)]
pub struct MelFilterbank {
    n_mels: usize,
    n_bins: usize,
    weights: Vec<f32>,
    spans: Vec<(usize, usize)>,
}

impl MelFilterbank {
    /// Builds the filterbank the configuration describes.
    pub fn new(cfg: &MelFilterbankConfig) -> Result<Self> {
        let nyquist = cfg.sample_rate / 2.0;
        if cfg.n_fft < 2 || cfg.n_mels == 0 {
            return Err(AudioError::InvalidArgument(format!(
                "mel filterbank needs n_fft >= 2 and n_mels >= 1 (got n_fft {}, n_mels {})",
                cfg.n_fft, cfg.n_mels
            )));
        }
        if !(cfg.sample_rate > 0.0 && 0.0 <= cfg.f_min && cfg.f_min < cfg.f_max)
            || cfg.f_max > nyquist + 1e-9
        {
            return Err(AudioError::InvalidArgument(format!(
                "mel filterbank needs 0 <= f_min < f_max <= sample_rate/2 (got f_min {}, f_max {}, sample_rate {})",
                cfg.f_min, cfg.f_max, cfg.sample_rate
            )));
        }
        let n_bins = cfg.n_fft / 2 + 1;
        let mel_lo = hz_to_mel(cfg.f_min, cfg.scale);
        let mel_hi = hz_to_mel(cfg.f_max, cfg.scale);
        let n_pts = cfg.n_mels + 2;
        // numpy.linspace: start + i * step, with the end point exact.
        let step = (mel_hi - mel_lo) / (n_pts - 1) as f64;
        let mel_pts: Vec<f64> = (0..n_pts)
            .map(|i| {
                if i == n_pts - 1 {
                    mel_hi
                } else {
                    mel_lo + i as f64 * step
                }
            })
            .collect();
        let hz_pts: Vec<f64> = mel_pts.iter().map(|&m| mel_to_hz(m, cfg.scale)).collect();
        let (corners, bin_pos): (&[f64], Vec<f64>) = match cfg.triangles {
            TriangleSpace::Hz => (
                &hz_pts,
                (0..n_bins)
                    .map(|k| k as f64 * cfg.sample_rate / cfg.n_fft as f64)
                    .collect(),
            ),
            TriangleSpace::Mel => (
                &mel_pts,
                (0..n_bins)
                    .map(|k| hz_to_mel(k as f64 * cfg.sample_rate / cfg.n_fft as f64, cfg.scale))
                    .collect(),
            ),
        };
        let mut weights = vec![0.0f32; cfg.n_mels * n_bins];
        for m in 0..cfg.n_mels {
            let (l, c, r) = (corners[m], corners[m + 1], corners[m + 2]);
            let scale = match cfg.norm {
                MelNorm::None => 1.0,
                MelNorm::Slaney => 2.0 / (hz_pts[m + 2] - hz_pts[m]),
            };
            for (k, &x) in bin_pos.iter().enumerate() {
                let up = (x - l) / (c - l);
                let down = (r - x) / (r - c);
                let w = up.min(down).max(0.0);
                weights[m * n_bins + k] = (w * scale) as f32;
            }
        }
        Self::from_weights(cfg.n_mels, n_bins, weights)
    }

    /// Wraps explicit weights, row-major `[n_mels, n_bins]`.
    pub fn from_weights(n_mels: usize, n_bins: usize, weights: Vec<f32>) -> Result<Self> {
        if weights.len() != n_mels * n_bins {
            return Err(AudioError::InvalidArgument(format!(
                "filterbank weights: {} values for {n_mels} x {n_bins}",
                weights.len()
            )));
        }
        let spans = weights
            .chunks(n_bins.max(1))
            .take(n_mels)
            .map(|row| {
                let first = row.iter().position(|&w| w != 0.0);
                match first {
                    Some(a) => {
                        let b = row.iter().rposition(|&w| w != 0.0).unwrap_or(a) + 1;
                        (a, b)
                    }
                    None => (0, 0),
                }
            })
            .collect();
        Ok(Self {
            n_mels,
            n_bins,
            weights,
            spans,
        })
    }

    /// Number of filters.
    pub fn n_mels(&self) -> usize {
        self.n_mels
    }

    /// Number of spectrum bins each filter spans.
    pub fn n_bins(&self) -> usize {
        self.n_bins
    }

    /// Dense weights, row-major `[n_mels, n_bins]`.
    pub fn weights(&self) -> &[f32] {
        &self.weights
    }

    /// Weights of filter `m`.
    pub fn filter(&self, m: usize) -> &[f32] {
        &self.weights[m * self.n_bins..(m + 1) * self.n_bins]
    }

    /// `out[m] = sum_k w[m, k] * spectrum[k]`; `spectrum` has `n_bins` values, `out` `n_mels`.
    pub fn apply(&self, spectrum: &[f32], out: &mut [f32]) {
        debug_assert_eq!(spectrum.len(), self.n_bins);
        for (m, (o, &(a, b))) in out.iter_mut().zip(&self.spans).enumerate() {
            let w = &self.weights[m * self.n_bins + a..m * self.n_bins + b];
            *o = w.iter().zip(&spectrum[a..b]).map(|(w, s)| w * s).sum();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_round_trip_and_anchor_points() {
        for scale in [MelScale::Htk, MelScale::Slaney] {
            for hz in [0.0, 100.0, 999.0, 1000.0, 4321.0, 8000.0] {
                assert!((mel_to_hz(hz_to_mel(hz, scale), scale) - hz).abs() < 1e-6);
            }
        }
        assert!((hz_to_mel(1000.0, MelScale::Slaney) - 15.0).abs() < 1e-12);
        assert!((hz_to_mel(700.0, MelScale::Htk) - 2595.0 * 2f64.log10()).abs() < 1e-9);
    }

    #[test]
    fn unnormalised_triangles_peak_at_one_and_overlap_to_one() {
        let fb = MelFilterbank::new(&MelFilterbankConfig {
            sample_rate: 16000.0,
            n_fft: 2048,
            n_mels: 20,
            f_min: 0.0,
            f_max: 8000.0,
            scale: MelScale::Htk,
            norm: MelNorm::None,
            triangles: TriangleSpace::Hz,
        })
        .unwrap();
        for m in 0..20 {
            let peak = fb.filter(m).iter().cloned().fold(0.0f32, f32::max);
            assert!(peak > 0.9 && peak <= 1.0, "filter {m} peak {peak}");
        }
        // Between the first and last centre, adjacent triangles sum to 1.
        let mut spec = vec![0.0; fb.n_bins()];
        spec[500] = 1.0;
        let mut out = vec![0.0; 20];
        fb.apply(&spec, &mut out);
        assert!((out.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }

    #[test]
    fn rejects_bad_ranges() {
        let mut cfg = MelFilterbankConfig {
            sample_rate: 16000.0,
            n_fft: 400,
            n_mels: 80,
            f_min: 0.0,
            f_max: 9000.0,
            scale: MelScale::Slaney,
            norm: MelNorm::Slaney,
            triangles: TriangleSpace::Hz,
        };
        assert!(MelFilterbank::new(&cfg).is_err());
        cfg.f_max = 8000.0;
        cfg.n_mels = 0;
        assert!(MelFilterbank::new(&cfg).is_err());
        assert!(MelFilterbank::from_weights(2, 3, vec![0.0; 5]).is_err());
    }
}
