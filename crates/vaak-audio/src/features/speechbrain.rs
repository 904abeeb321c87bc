//! speechbrain's `Fbank` as the ECAPA-TDNN speaker recipes use it, and their sentence mean
//! normalisation.
//!
//! `speechbrain.lobes.features.Fbank(n_mels=80)` with every other argument at its default:
//! 16 kHz, `torch.stft` with n_fft 400, win 400 (25 ms), hop 160 (10 ms), `center=True` with
//! zero padding (`pad_mode="constant"`), a periodic Hamming window (`torch.hamming_window(400)`);
//! power spectrum (`re^2 + im^2`); speechbrain's own triangular filters: corners evenly spaced on
//! the HTK mel scale from 0 Hz to 8 kHz, but each triangle is symmetric in Hz, centred on its
//! mel point with half-width equal to the gap to the previous point; then
//! `10 log10(max(x, 1e-10))` and a floor at `max - 80` dB, the max taken over the whole utterance.
//!
//! `InputNormalization(norm_type="sentence", std_norm=False)` subtracts each mel bin's mean over
//! the utterance's frames.

use crate::error::{AudioError, Result};

use super::mel::{hz_to_mel, mel_to_hz, MelFilterbank, MelScale};
use super::stft::{check_samples, spectrum_into, SpectrumKind, Stft, StftPadding};
use super::window::hamming_window;
use super::FeatureMatrix;

/// Configuration of [`SpeechbrainFbank`]; [`Default`] is speechbrain's default except
/// `n_mels = 80` (ECAPA's value; speechbrain's own default is 40).
#[derive(Debug, Clone, PartialEq)]
pub struct SpeechbrainFbankConfig {
    /// Sample rate, Hz.
    pub sample_rate: u32,
    /// FFT size.
    pub n_fft: usize,
    /// Number of mel filters.
    pub n_mels: usize,
    /// Window length in ms (rounded to samples as speechbrain does).
    pub win_length_ms: f64,
    /// Hop length in ms.
    pub hop_length_ms: f64,
    /// Lowest filter corner, Hz.
    pub f_min: f64,
    /// Highest filter corner, Hz; `None` means Nyquist.
    pub f_max: Option<f64>,
    /// Dynamic range kept below the utterance maximum, dB.
    pub top_db: f32,
}

impl Default for SpeechbrainFbankConfig {
    fn default() -> Self {
        Self {
            sample_rate: 16000,
            n_fft: 400,
            n_mels: 80,
            win_length_ms: 25.0,
            hop_length_ms: 10.0,
            f_min: 0.0,
            f_max: None,
            top_db: 80.0,
        }
    }
}

const AMIN: f32 = 1e-10;

/// speechbrain `Fbank` extractor; build once and reuse.
#[derive(Debug, Clone)]
pub struct SpeechbrainFbank {
    cfg: SpeechbrainFbankConfig,
    stft: Stft,
    filters: MelFilterbank,
}

fn invalid(msg: String) -> AudioError {
    AudioError::InvalidArgument(format!("speechbrain fbank: {msg}"))
}

impl SpeechbrainFbank {
    /// Builds the STFT plan and the filters.
    pub fn new(cfg: SpeechbrainFbankConfig) -> Result<Self> {
        let sr = cfg.sample_rate as f64;
        if cfg.sample_rate == 0 || cfg.n_mels == 0 || cfg.n_fft < 2 {
            return Err(invalid(format!(
                "need sample_rate > 0, n_mels > 0, n_fft >= 2 (got {}, {}, {})",
                cfg.sample_rate, cfg.n_mels, cfg.n_fft
            )));
        }
        let win = (sr / 1000.0 * cfg.win_length_ms).round() as i64;
        let hop = (sr / 1000.0 * cfg.hop_length_ms).round() as i64;
        if win < 1 || win as usize > cfg.n_fft || hop < 1 {
            return Err(invalid(format!(
                "window {win} samples must be in 1..={} and hop {hop} samples > 0",
                cfg.n_fft
            )));
        }
        let f_max = cfg.f_max.unwrap_or(sr / 2.0);
        if !(0.0 <= cfg.f_min && cfg.f_min < f_max && f_max <= sr / 2.0) {
            return Err(invalid(format!(
                "need 0 <= f_min < f_max <= sample_rate/2 (got {}, {f_max})",
                cfg.f_min
            )));
        }
        if cfg.top_db.is_nan() || cfg.top_db < 0.0 {
            return Err(invalid(format!("top_db {} must be >= 0", cfg.top_db)));
        }
        let stft = Stft::new(
            cfg.n_fft,
            hop as usize,
            &hamming_window(win as usize, true),
            StftPadding::Zeros,
        )?;
        let filters = speechbrain_filterbank(sr, cfg.n_fft, cfg.n_mels, cfg.f_min, f_max)?;
        Ok(Self { cfg, stft, filters })
    }

    /// The configuration.
    pub fn config(&self) -> &SpeechbrainFbankConfig {
        &self.cfg
    }

    /// The filters, `[n_mels, n_fft/2 + 1]`.
    pub fn filters(&self) -> &MelFilterbank {
        &self.filters
    }

    /// Log-mel features of mono `samples`, `[n_frames, n_mels]` with
    /// `n_frames = 1 + len / hop`. Errors: empty input or a non-finite sample.
    pub fn compute(&self, samples: &[f32]) -> Result<FeatureMatrix> {
        check_samples(samples, "speechbrain fbank input")?;
        let n_mels = self.cfg.n_mels;
        let n_frames = self.stft.n_frames(samples.len());
        let mut data = vec![0.0f32; n_frames * n_mels];
        let mut power = vec![0.0f32; self.stft.n_bins()];
        let mut max = f32::NEG_INFINITY;
        self.stft.for_each_frame(samples, |t, spec| {
            spectrum_into(spec, SpectrumKind::Power, &mut power);
            let row = &mut data[t * n_mels..(t + 1) * n_mels];
            self.filters.apply(&power, row);
            for v in row.iter_mut() {
                *v = 10.0 * v.max(AMIN).log10();
                max = max.max(*v);
            }
        })?;
        let floor = max - self.cfg.top_db;
        for v in &mut data {
            *v = v.max(floor);
        }
        Ok(FeatureMatrix {
            n_frames,
            n_features: n_mels,
            data,
        })
    }

    /// [`SpeechbrainFbank::compute`] then [`sentence_mean_normalize`]: the ECAPA front end.
    pub fn compute_normalized(&self, samples: &[f32]) -> Result<FeatureMatrix> {
        let mut f = self.compute(samples)?;
        sentence_mean_normalize(&mut f);
        Ok(f)
    }
}

/// speechbrain `Filterbank` triangles: corners `hz[i]` from `n_mels + 2` HTK-mel-spaced points;
/// filter `m` is centred on `hz[m+1]` and falls to zero at `hz[m+1] +- (hz[m+1] - hz[m])`.
pub fn speechbrain_filterbank(
    sample_rate: f64,
    n_fft: usize,
    n_mels: usize,
    f_min: f64,
    f_max: f64,
) -> Result<MelFilterbank> {
    if n_mels == 0 || n_fft < 2 || f_min.is_nan() || f_max.is_nan() || f_min >= f_max {
        return Err(invalid(format!(
            "filterbank needs n_mels > 0, n_fft >= 2, f_min < f_max (got {n_mels}, {n_fft}, {f_min}, {f_max})"
        )));
    }
    let n_bins = n_fft / 2 + 1;
    let (lo, hi) = (
        hz_to_mel(f_min, MelScale::Htk),
        hz_to_mel(f_max, MelScale::Htk),
    );
    let n_pts = n_mels + 2;
    let hz: Vec<f64> = (0..n_pts)
        .map(|i| {
            let m = if i == n_pts - 1 {
                hi
            } else {
                lo + (hi - lo) * i as f64 / (n_pts - 1) as f64
            };
            mel_to_hz(m, MelScale::Htk)
        })
        .collect();
    // torch.linspace(0, sample_rate // 2, n_bins)
    let nyq = (sample_rate / 2.0).floor();
    let mut w = vec![0.0f32; n_mels * n_bins];
    for m in 0..n_mels {
        let centre = hz[m + 1];
        let band = hz[m + 1] - hz[m];
        for k in 0..n_bins {
            let f = nyq * k as f64 / (n_bins - 1) as f64;
            let slope = (f - centre) / band;
            w[m * n_bins + k] = (slope + 1.0).min(1.0 - slope).max(0.0) as f32;
        }
    }
    MelFilterbank::from_weights(n_mels, n_bins, w)
}

/// Subtracts each feature's mean over all frames (speechbrain
/// `InputNormalization(norm_type="sentence", std_norm=False)` on one full-length utterance).
pub fn sentence_mean_normalize(features: &mut FeatureMatrix) {
    features.subtract_column_means();
}
