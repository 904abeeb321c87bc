//! OpenVoice's linear spectrogram (`mel_processing.spectrogram_torch`, `center=False`).
//!
//! The signal is reflect-padded by `(n_fft - hop) / 2` on each side (not torch.stft's own
//! `n_fft / 2` centring), framed without further padding, windowed by a periodic Hann window of
//! `win_length` centred in the `n_fft` frame, and each bin is `sqrt(re^2 + im^2 + 1e-6)`.
//! The FFT is vaak-audio's [`Stft`] (realfft).

use vaak_audio::features::{hann_window, SpectrumKind, Stft, StftPadding};

use crate::error::{Result, TeacherError};

/// Added under the square root, as upstream does (keeps the log-free model away from 0).
const MAG_EPS: f32 = 1e-6;

/// A planned linear-magnitude spectrogram.
#[derive(Clone, Debug)]
pub struct LinearSpectrogram {
    stft: Stft,
    pad: usize,
}

impl LinearSpectrogram {
    pub fn new(n_fft: usize, hop: usize, win: usize) -> Result<Self> {
        if hop > n_fft {
            return Err(TeacherError::BadInput(format!(
                "spectrogram hop {hop} exceeds n_fft {n_fft}"
            )));
        }
        let stft = Stft::new(n_fft, hop, &hann_window(win, true), StftPadding::None)?;
        Ok(Self {
            stft,
            pad: (n_fft - hop) / 2,
        })
    }

    pub fn n_bins(&self) -> usize {
        self.stft.n_bins()
    }

    /// Samples needed for one frame; torch's reflect pad also needs more than `pad` samples.
    pub fn min_samples(&self) -> usize {
        (self.stft.n_fft().saturating_sub(2 * self.pad)).max(self.pad + 1)
    }

    /// Frames for a clip of `n` samples.
    pub fn n_frames(&self, n: usize) -> usize {
        self.stft.n_frames(n + 2 * self.pad)
    }

    /// `[n_bins, n_frames]` row-major (bin-major, as the model consumes it), and `n_frames`.
    pub fn compute(&self, samples: &[f32]) -> Result<(Vec<f32>, usize)> {
        let n = samples.len();
        if n < self.min_samples() {
            return Err(TeacherError::BadInput(format!(
                "clip of {n} samples is too short for the spectrogram (needs {})",
                self.min_samples()
            )));
        }
        let p = self.pad;
        let mut padded = Vec::with_capacity(n + 2 * p);
        // Mirror without repeating the edge sample (torch/numpy "reflect"); n > p so in range.
        padded.extend((1..=p).rev().map(|k| samples[k]));
        padded.extend_from_slice(samples);
        padded.extend((0..p).map(|k| samples[n - 2 - k]));
        let spec = self.stft.spectrogram(&padded, SpectrumKind::Power)?;
        let (t, f) = (spec.n_frames, spec.n_bins);
        let mut out = vec![0.0f32; f * t];
        for ti in 0..t {
            for (fi, &pw) in spec.frame(ti).iter().enumerate() {
                out[fi * t + ti] = (pw + MAG_EPS).sqrt();
            }
        }
        Ok((out, t))
    }
}
