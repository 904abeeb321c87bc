//! Whisper log-mel spectrogram, equal to transformers' `WhisperFeatureExtractor` (numpy path).
//!
//! Pipeline (16 kHz input): optional pad/truncate to 30 s (480 000 samples) with zeros; reflect
//! padding of 200 samples at both ends; 400-point frames every 160 samples with a periodic Hann
//! window; power spectrum; Slaney-normalised Slaney-scale mel filters from 0 to 8 kHz; the last
//! frame is dropped; `log10(max(x, 1e-10))`; values below `max - 8` are raised to `max - 8`,
//! where `max` is taken over the whole returned spectrogram; finally `(x + 4) / 4`.

use crate::error::{AudioError, Result};

use super::mel::{MelFilterbank, MelFilterbankConfig, MelNorm, MelScale, TriangleSpace};
use super::stft::{check_samples, spectrum_into, SpectrumKind, Stft, StftPadding};
use super::window::hann_window;

/// Input sample rate Whisper expects.
pub const WHISPER_SAMPLE_RATE: u32 = 16_000;
/// FFT size (25 ms).
pub const WHISPER_N_FFT: usize = 400;
/// Hop between frames (10 ms).
pub const WHISPER_HOP_LENGTH: usize = 160;
/// Samples in a 30 s chunk.
pub const WHISPER_N_SAMPLES: usize = 480_000;
/// Frames in a 30 s chunk.
pub const WHISPER_N_FRAMES: usize = WHISPER_N_SAMPLES / WHISPER_HOP_LENGTH;

const LOG_FLOOR: f32 = 1e-10;
const DYNAMIC_RANGE: f32 = 8.0;

/// A mel spectrogram, row-major `[n_mels, n_frames]` (Whisper's `input_features` layout).
#[derive(Debug, Clone, PartialEq)]
pub struct MelSpectrogram {
    /// Number of mel bins (rows).
    pub n_mels: usize,
    /// Number of frames (columns).
    pub n_frames: usize,
    /// Row-major values.
    pub data: Vec<f32>,
}

impl MelSpectrogram {
    /// Value of bin `m` at frame `t`.
    pub fn get(&self, m: usize, t: usize) -> f32 {
        self.data[m * self.n_frames + t]
    }

    /// Row `m` (all frames of one mel bin).
    pub fn row(&self, m: usize) -> &[f32] {
        &self.data[m * self.n_frames..(m + 1) * self.n_frames]
    }
}

/// Whisper's feature extractor; build once (plans the FFT, builds the filters) and reuse.
#[derive(Debug, Clone)]
pub struct WhisperMel {
    stft: Stft,
    filters: MelFilterbank,
}

impl WhisperMel {
    /// `n_mels` is 80 for Whisper v1/v2 and 128 for large-v3; any positive count is accepted.
    pub fn new(n_mels: usize) -> Result<Self> {
        if n_mels == 0 {
            return Err(AudioError::InvalidArgument(
                "WhisperMel: n_mels must be > 0".into(),
            ));
        }
        let stft = Stft::new(
            WHISPER_N_FFT,
            WHISPER_HOP_LENGTH,
            &hann_window(WHISPER_N_FFT, true),
            StftPadding::Reflect,
        )?;
        let filters = MelFilterbank::new(&MelFilterbankConfig {
            sample_rate: WHISPER_SAMPLE_RATE as f64,
            n_fft: WHISPER_N_FFT,
            n_mels,
            f_min: 0.0,
            f_max: 8000.0,
            scale: MelScale::Slaney,
            norm: MelNorm::Slaney,
            triangles: TriangleSpace::Hz,
        })?;
        Ok(Self { stft, filters })
    }

    /// Number of mel bins.
    pub fn n_mels(&self) -> usize {
        self.filters.n_mels()
    }

    /// The mel filters, `[n_mels, 201]`.
    pub fn filters(&self) -> &MelFilterbank {
        &self.filters
    }

    /// Log-mel features of 16 kHz mono `samples`.
    ///
    /// With `pad_to_30s` the input is zero-padded or truncated to 480 000 samples and the result
    /// has exactly 3000 frames (the extractor's default `padding="max_length"`).
    ///
    /// Without it the result has `samples.len() / 160` frames, exactly what the extractor gives
    /// for an unpadded clip (`padding="longest"` on a batch of one). The `max - 8` floor then uses
    /// the maximum over those frames only, and the frames near the end see reflected signal
    /// rather than zeros; so the values are not a prefix of the padded result in general.
    ///
    /// Errors: empty input, a non-finite sample, or (without padding) fewer than 160 samples,
    /// which leave no frame after the last one is dropped (the reference fails there too).
    pub fn compute(&self, samples: &[f32], pad_to_30s: bool) -> Result<MelSpectrogram> {
        check_samples(samples, "WhisperMel input")?;
        let padded;
        let input: &[f32] = if pad_to_30s {
            if samples.len() >= WHISPER_N_SAMPLES {
                &samples[..WHISPER_N_SAMPLES]
            } else {
                let mut v = vec![0.0f32; WHISPER_N_SAMPLES];
                v[..samples.len()].copy_from_slice(samples);
                padded = v;
                &padded
            }
        } else {
            if samples.len() < WHISPER_HOP_LENGTH {
                return Err(AudioError::InvalidArgument(format!(
                    "WhisperMel input: {} samples is shorter than one hop ({WHISPER_HOP_LENGTH}); \
                     pad it or pass pad_to_30s",
                    samples.len()
                )));
            }
            samples
        };
        let n_mels = self.n_mels();
        // Centered framing yields 1 + len / hop frames; Whisper drops the last one.
        let n_frames = self.stft.n_frames(input.len()) - 1;
        let mut data = vec![0.0f32; n_mels * n_frames];
        let mut power = vec![0.0f32; self.stft.n_bins()];
        let mut mel = vec![0.0f32; n_mels];
        let mut max = f32::NEG_INFINITY;
        self.stft.for_first_frames(input, n_frames, |t, spec| {
            spectrum_into(spec, SpectrumKind::Power, &mut power);
            self.filters.apply(&power, &mut mel);
            for (m, &v) in mel.iter().enumerate() {
                let l = v.max(LOG_FLOOR).log10();
                max = max.max(l);
                data[m * n_frames + t] = l;
            }
        })?;
        let floor = max - DYNAMIC_RANGE;
        for v in &mut data {
            *v = (v.max(floor) + 4.0) / 4.0;
        }
        Ok(MelSpectrogram {
            n_mels,
            n_frames,
            data,
        })
    }
}
