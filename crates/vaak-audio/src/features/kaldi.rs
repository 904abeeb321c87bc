//! Kaldi-compatible filterbank features, equal to `torchaudio.compliance.kaldi.fbank`.
//!
//! Per frame: extract `frame_length` ms of samples (`snip_edges` decides the framing), add
//! optional Gaussian dither, subtract the frame mean, take the raw log energy, pre-emphasise
//! (`x[i] -= p x[i-1]`, `x[0] -= p x[0]`), window, zero-pad to the FFT size, power (or magnitude)
//! spectrum, mel filters linear on Kaldi's mel scale (no Nyquist bin), `ln(max(x, f32::EPSILON))`.
//! VTLN warping is not implemented (torchaudio's default `vtln_warp = 1.0` disables it).

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::error::{AudioError, Result};

use super::mel::{MelFilterbank, MelFilterbankConfig, MelNorm, MelScale, TriangleSpace};
use super::stft::{check_samples, spectrum_into, RealFft, SpectrumKind};
use super::window::{blackman_window, hamming_window, hann_window, povey_window};
use super::FeatureMatrix;

/// Kaldi's floor for logs and energies: `torch.finfo(torch.float32).eps`.
const KALDI_EPSILON: f32 = f32::EPSILON;

/// Window shapes Kaldi offers (all symmetric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KaldiWindow {
    /// Hann to the power 0.85 (Kaldi's default).
    Povey,
    /// Symmetric Hann.
    Hanning,
    /// Symmetric Hamming (0.54/0.46).
    Hamming,
    /// All ones.
    Rectangular,
    /// Blackman with [`KaldiFbankOptions::blackman_coeff`].
    Blackman,
}

/// Options of `torchaudio.compliance.kaldi.fbank`, same names and defaults (VTLN omitted).
#[derive(Debug, Clone, PartialEq)]
pub struct KaldiFbankOptions {
    /// Sample rate of the input, Hz (16000).
    pub sample_frequency: f64,
    /// Frame length in ms (25).
    pub frame_length_ms: f64,
    /// Frame shift in ms (10).
    pub frame_shift_ms: f64,
    /// Number of triangular mel bins (23); must be > 3.
    pub num_mel_bins: usize,
    /// Pre-emphasis coefficient in `[0, 1]` (0.97).
    pub preemphasis_coefficient: f32,
    /// Subtract each frame's mean before everything else (true).
    pub remove_dc_offset: bool,
    /// Window shape (povey).
    pub window_type: KaldiWindow,
    /// Constant of the Blackman window (0.42).
    pub blackman_coeff: f64,
    /// Zero-pad frames to the next power of two before the FFT (true).
    pub round_to_power_of_two: bool,
    /// Only frames that fit entirely in the signal (true); otherwise `round(n / shift)` frames
    /// over a signal mirrored at both ends.
    pub snip_edges: bool,
    /// Lower edge of the mel filters, Hz (20).
    pub low_freq: f64,
    /// Upper edge, Hz; `<= 0` means Nyquist plus this value (0).
    pub high_freq: f64,
    /// Add the log energy as an extra column (false).
    pub use_energy: bool,
    /// Put the energy column last instead of first (false).
    pub htk_compat: bool,
    /// Natural log of the filter outputs (true).
    pub use_log_fbank: bool,
    /// Power spectrum; false uses the magnitude (true).
    pub use_power: bool,
    /// Floor of the energy before the log; 0 disables the floor (1.0).
    pub energy_floor: f32,
    /// Energy before pre-emphasis and windowing (true); false uses the windowed frame.
    pub raw_energy: bool,
    /// Subtract each column's mean over time (false).
    pub subtract_mean: bool,
    /// Standard deviation of Gaussian dither added to each sample of each frame (0.0).
    /// torchaudio draws it from torch's global RNG; here it comes from `dither_seed`, so results
    /// are reproducible but not bit-equal to torchaudio's.
    pub dither: f32,
    /// Seed of the dither generator.
    pub dither_seed: u64,
    /// Signals shorter than this many seconds give zero frames (0.0).
    pub min_duration: f64,
}

impl Default for KaldiFbankOptions {
    fn default() -> Self {
        Self {
            sample_frequency: 16000.0,
            frame_length_ms: 25.0,
            frame_shift_ms: 10.0,
            num_mel_bins: 23,
            preemphasis_coefficient: 0.97,
            remove_dc_offset: true,
            window_type: KaldiWindow::Povey,
            blackman_coeff: 0.42,
            round_to_power_of_two: true,
            snip_edges: true,
            low_freq: 20.0,
            high_freq: 0.0,
            use_energy: false,
            htk_compat: false,
            use_log_fbank: true,
            use_power: true,
            energy_floor: 1.0,
            raw_energy: true,
            subtract_mean: false,
            dither: 0.0,
            dither_seed: 0,
            min_duration: 0.0,
        }
    }
}

/// A Kaldi fbank extractor: window, FFT plan and filters built once.
#[derive(Debug, Clone)]
pub struct KaldiFbank {
    opts: KaldiFbankOptions,
    window_size: usize,
    window_shift: usize,
    window: Vec<f32>,
    fft: RealFft,
    filters: MelFilterbank,
}

fn invalid(msg: String) -> AudioError {
    AudioError::InvalidArgument(format!("kaldi fbank: {msg}"))
}

impl KaldiFbank {
    /// Validates the options (the same checks torchaudio asserts) and precomputes everything.
    pub fn new(opts: KaldiFbankOptions) -> Result<Self> {
        if opts.sample_frequency.is_nan() || opts.sample_frequency <= 0.0 {
            return Err(invalid(format!(
                "sample_frequency {} must be > 0",
                opts.sample_frequency
            )));
        }
        // Same expression order as torchaudio, then truncation like Python's int().
        let window_shift = (opts.sample_frequency * opts.frame_shift_ms * 0.001) as i64;
        let window_size = (opts.sample_frequency * opts.frame_length_ms * 0.001) as i64;
        if window_size < 2 {
            return Err(invalid(format!(
                "frame_length {} ms gives {window_size} samples; need >= 2",
                opts.frame_length_ms
            )));
        }
        if window_shift <= 0 {
            return Err(invalid(format!(
                "frame_shift {} ms gives {window_shift} samples; need > 0",
                opts.frame_shift_ms
            )));
        }
        let window_size = window_size as usize;
        let window_shift = window_shift as usize;
        let padded = if opts.round_to_power_of_two {
            window_size.next_power_of_two()
        } else {
            window_size
        };
        if padded % 2 != 0 {
            return Err(invalid(format!(
                "FFT size {padded} must be even (use round_to_power_of_two or an even frame length)"
            )));
        }
        if !(0.0..=1.0).contains(&opts.preemphasis_coefficient) {
            return Err(invalid(format!(
                "preemphasis_coefficient {} must be in [0, 1]",
                opts.preemphasis_coefficient
            )));
        }
        if opts.num_mel_bins <= 3 {
            return Err(invalid(format!(
                "num_mel_bins {} must be > 3",
                opts.num_mel_bins
            )));
        }
        let nyquist = 0.5 * opts.sample_frequency;
        let high = if opts.high_freq <= 0.0 {
            opts.high_freq + nyquist
        } else {
            opts.high_freq
        };
        if !((0.0..nyquist).contains(&opts.low_freq) && high > 0.0 && high <= nyquist)
            || opts.low_freq >= high
        {
            return Err(invalid(format!(
                "need 0 <= low_freq < high_freq <= Nyquist; got low_freq {}, high_freq {} (resolved {high}), Nyquist {nyquist}",
                opts.low_freq, opts.high_freq
            )));
        }
        if !(opts.dither >= 0.0 && opts.dither.is_finite()) {
            return Err(invalid(format!("dither {} must be >= 0", opts.dither)));
        }
        let window = match opts.window_type {
            KaldiWindow::Povey => povey_window(window_size),
            KaldiWindow::Hanning => hann_window(window_size, false),
            KaldiWindow::Hamming => hamming_window(window_size, false),
            KaldiWindow::Rectangular => vec![1.0; window_size],
            KaldiWindow::Blackman => blackman_window(window_size, opts.blackman_coeff),
        };
        let fb = MelFilterbank::new(&MelFilterbankConfig {
            sample_rate: opts.sample_frequency,
            n_fft: padded,
            n_mels: opts.num_mel_bins,
            f_min: opts.low_freq,
            f_max: high,
            scale: MelScale::Htk,
            norm: MelNorm::None,
            triangles: TriangleSpace::Mel,
        })?;
        // Kaldi's filters stop below the Nyquist bin.
        let n_bins = fb.n_bins();
        let mut weights = fb.weights().to_vec();
        for m in 0..opts.num_mel_bins {
            weights[m * n_bins + n_bins - 1] = 0.0;
        }
        let filters = MelFilterbank::from_weights(opts.num_mel_bins, n_bins, weights)?;
        Ok(Self {
            fft: RealFft::new(padded)?,
            opts,
            window_size,
            window_shift,
            window,
            filters,
        })
    }

    /// The options this extractor was built with.
    pub fn options(&self) -> &KaldiFbankOptions {
        &self.opts
    }

    /// Frame length in samples.
    pub fn window_size(&self) -> usize {
        self.window_size
    }

    /// Frame shift in samples.
    pub fn window_shift(&self) -> usize {
        self.window_shift
    }

    /// Number of output columns: `num_mel_bins`, plus one with `use_energy`.
    pub fn n_features(&self) -> usize {
        self.opts.num_mel_bins + usize::from(self.opts.use_energy)
    }

    /// Number of frames for `n` samples (`n >= window_size`).
    pub fn n_frames(&self, n: usize) -> usize {
        if self.opts.snip_edges {
            if n < self.window_size {
                0
            } else {
                1 + (n - self.window_size) / self.window_shift
            }
        } else {
            (n + self.window_shift / 2) / self.window_shift
        }
    }

    /// Features of mono `samples`, `[n_frames, n_features]`.
    ///
    /// Errors, as torchaudio's asserts: empty input, a non-finite sample, or fewer samples than
    /// one frame (`window_size`), whatever `snip_edges` says.
    pub fn compute(&self, samples: &[f32]) -> Result<FeatureMatrix> {
        check_samples(samples, "kaldi fbank input")?;
        let n = samples.len();
        if n < self.window_size {
            return Err(invalid(format!(
                "{n} samples is shorter than one frame ({} samples)",
                self.window_size
            )));
        }
        let n_feat = self.n_features();
        if (n as f64) < self.opts.min_duration * self.opts.sample_frequency {
            return Ok(FeatureMatrix {
                n_frames: 0,
                n_features: n_feat,
                data: Vec::new(),
            });
        }
        let o = &self.opts;
        let n_frames = self.n_frames(n);
        let ws = self.window_size;
        // Offset of frame 0 relative to sample 0; negative means it starts in the mirrored part.
        let offset: isize = if o.snip_edges {
            0
        } else {
            -((ws / 2) as isize - (self.window_shift / 2) as isize)
        };
        let n_mels = o.num_mel_bins;
        let mel_col = usize::from(o.use_energy && !o.htk_compat);
        let energy_col = if o.htk_compat { n_mels } else { 0 };
        let log_floor = if o.energy_floor > 0.0 {
            Some(o.energy_floor.ln())
        } else {
            None
        };
        let log_energy = |e: f32| {
            let l = e.max(KALDI_EPSILON).ln();
            match log_floor {
                Some(f) => l.max(f),
                None => l,
            }
        };

        let mut data = vec![0.0f32; n_frames * n_feat];
        let mut frame = vec![0.0f32; ws];
        let mut spec = vec![0.0f32; self.fft.n_bins()];
        let mut mel = vec![0.0f32; n_mels];
        let mut work = self.fft.workspace();
        let mut rng = ChaCha8Rng::seed_from_u64(o.dither_seed);
        let kind = if o.use_power {
            SpectrumKind::Power
        } else {
            SpectrumKind::Magnitude
        };
        for t in 0..n_frames {
            let start = t as isize * self.window_shift as isize + offset;
            for (i, f) in frame.iter_mut().enumerate() {
                *f = samples[symmetric_index(start + i as isize, n)];
            }
            if o.dither > 0.0 {
                for f in frame.iter_mut() {
                    let g: f32 = StandardNormal.sample(&mut rng);
                    *f += g * o.dither;
                }
            }
            if o.remove_dc_offset {
                let mean = (frame.iter().map(|&x| x as f64).sum::<f64>() / ws as f64) as f32;
                for f in frame.iter_mut() {
                    *f -= mean;
                }
            }
            let mut energy = if o.raw_energy {
                log_energy(frame.iter().map(|x| x * x).sum())
            } else {
                0.0
            };
            let p = o.preemphasis_coefficient;
            if p != 0.0 {
                for i in (1..ws).rev() {
                    frame[i] -= p * frame[i - 1];
                }
                frame[0] -= p * frame[0];
            }
            let input = work.input_mut();
            for ((dst, &x), &w) in input.iter_mut().zip(&frame).zip(&self.window) {
                *dst = x * w;
            }
            input[ws..].fill(0.0);
            if !o.raw_energy {
                energy = log_energy(input.iter().map(|x| x * x).sum());
            }
            self.fft.process(&mut work)?;
            spectrum_into(work.spectrum(), kind, &mut spec);
            self.filters.apply(&spec, &mut mel);
            let row = &mut data[t * n_feat..(t + 1) * n_feat];
            for (dst, &v) in row[mel_col..mel_col + n_mels].iter_mut().zip(&mel) {
                *dst = if o.use_log_fbank {
                    v.max(KALDI_EPSILON).ln()
                } else {
                    v
                };
            }
            if o.use_energy {
                row[energy_col] = energy;
            }
        }
        let mut out = FeatureMatrix {
            n_frames,
            n_features: n_feat,
            data,
        };
        if o.subtract_mean {
            out.subtract_column_means();
        }
        Ok(out)
    }
}

/// Index into a signal of length `n` for position `i` of its mirror extension that repeats the
/// edge sample (Kaldi's `snip_edges=false` padding): `-1 -> 0`, `n -> n-1`. Frames never reach
/// further than one signal length beyond either edge, since a frame is no longer than the signal.
fn symmetric_index(i: isize, n: usize) -> usize {
    let n = n as isize;
    let j = if i < 0 {
        -i - 1
    } else if i >= n {
        2 * n - 1 - i
    } else {
        i
    };
    j.clamp(0, n - 1) as usize
}

/// [`KaldiFbank::new`] then [`KaldiFbank::compute`], for one-off use.
pub fn kaldi_fbank(samples: &[f32], opts: &KaldiFbankOptions) -> Result<FeatureMatrix> {
    KaldiFbank::new(opts.clone())?.compute(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_padding_repeats_edges() {
        let got: Vec<usize> = (-3..7).map(|i| symmetric_index(i, 4)).collect();
        assert_eq!(got, vec![2, 1, 0, 0, 1, 2, 3, 3, 2, 1]);
    }

    #[test]
    fn frame_counts_follow_kaldi() {
        let d = KaldiFbank::new(KaldiFbankOptions::default()).unwrap();
        assert_eq!((d.window_size(), d.window_shift()), (400, 160));
        assert_eq!(d.n_frames(16000), 98);
        let ns = KaldiFbank::new(KaldiFbankOptions {
            snip_edges: false,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(ns.n_frames(16000), 100);
        assert_eq!(ns.n_frames(16080), 101);
    }

    #[test]
    fn bad_options_are_rejected() {
        let bad = [
            KaldiFbankOptions {
                num_mel_bins: 3,
                ..Default::default()
            },
            KaldiFbankOptions {
                high_freq: 9000.0,
                ..Default::default()
            },
            KaldiFbankOptions {
                low_freq: 8000.0,
                ..Default::default()
            },
            KaldiFbankOptions {
                frame_shift_ms: 0.0,
                ..Default::default()
            },
            KaldiFbankOptions {
                preemphasis_coefficient: 1.5,
                ..Default::default()
            },
            KaldiFbankOptions {
                round_to_power_of_two: false,
                frame_length_ms: 25.0625,
                ..Default::default()
            },
        ];
        for o in bad {
            assert!(KaldiFbank::new(o.clone()).is_err(), "{o:?}");
        }
    }

    #[test]
    fn dither_is_seeded() {
        let x: Vec<f32> = (0..4000).map(|i| (i as f32 * 0.01).sin()).collect();
        let o = KaldiFbankOptions {
            dither: 1.0,
            dither_seed: 7,
            ..Default::default()
        };
        let a = kaldi_fbank(&x, &o).unwrap();
        let b = kaldi_fbank(&x, &o).unwrap();
        let c = kaldi_fbank(&x, &KaldiFbankOptions::default()).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
