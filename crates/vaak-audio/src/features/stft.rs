//! Short-time Fourier transform of real signals (realfft), planned once and reused.
//!
//! An [`Stft`] owns its FFT plan and window, so building one per signal length is unnecessary:
//! build it once and call it from any number of threads (`&self` only). Each call allocates its
//! working buffers once, never per frame.

use std::sync::Arc;

use realfft::num_complex::Complex;
use realfft::{RealFftPlanner, RealToComplex};

use crate::error::{AudioError, Result};

/// How the signal is extended at both ends before framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StftPadding {
    /// No padding: frame `t` starts at sample `t * hop` (librosa/torch `center=False`).
    None,
    /// `n_fft / 2` samples of mirror reflection that excludes the edge sample on each side
    /// (numpy `np.pad(..., mode="reflect")`, torch `pad_mode="reflect"`). Signals shorter than the
    /// pad are reflected back and forth as numpy does.
    Reflect,
    /// `n_fft / 2` zeros on each side (torch `center=True, pad_mode="constant"`).
    Zeros,
}

/// Reusable buffers for one FFT plan. Cheap to make; make one per thread and reuse it.
pub struct FftWorkspace {
    input: Vec<f32>,
    spectrum: Vec<Complex<f32>>,
    scratch: Vec<Complex<f32>>,
}

impl FftWorkspace {
    /// Time-domain input of length `n_fft`; realfft uses it as scratch, so refill it per frame.
    pub fn input_mut(&mut self) -> &mut [f32] {
        &mut self.input
    }

    /// One-sided spectrum (`n_fft / 2 + 1` bins) of the last [`RealFft::process`].
    pub fn spectrum(&self) -> &[Complex<f32>] {
        &self.spectrum
    }
}

/// A planned forward real FFT of a fixed length.
#[derive(Clone)]
pub struct RealFft {
    plan: Arc<dyn RealToComplex<f32>>,
}

impl std::fmt::Debug for RealFft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealFft")
            .field("n_fft", &self.len())
            .finish()
    }
}

impl RealFft {
    /// Plans a forward FFT of length `n_fft` (any length > 0; mixed radix is fine).
    pub fn new(n_fft: usize) -> Result<Self> {
        if n_fft == 0 {
            return Err(AudioError::InvalidArgument("n_fft must be > 0".into()));
        }
        let plan = RealFftPlanner::<f32>::new().plan_fft_forward(n_fft);
        Ok(Self { plan })
    }

    /// FFT length.
    pub fn len(&self) -> usize {
        self.plan.len()
    }

    /// Always false: a plan has a positive length.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Number of one-sided bins, `n_fft / 2 + 1`.
    pub fn n_bins(&self) -> usize {
        self.len() / 2 + 1
    }

    /// Buffers sized for this plan.
    pub fn workspace(&self) -> FftWorkspace {
        FftWorkspace {
            input: self.plan.make_input_vec(),
            spectrum: self.plan.make_output_vec(),
            scratch: self.plan.make_scratch_vec(),
        }
    }

    /// Transforms the workspace input into its spectrum (clobbers the input). Fails only for a
    /// workspace made by a plan of another length.
    pub fn process(&self, ws: &mut FftWorkspace) -> Result<()> {
        self.plan
            .process_with_scratch(&mut ws.input, &mut ws.spectrum, &mut ws.scratch)
            .map_err(|e| AudioError::InvalidArgument(format!("FFT workspace: {e}")))
    }
}

/// What each spectrogram cell holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpectrumKind {
    /// `|X|^2`.
    Power,
    /// `|X|`.
    Magnitude,
}

/// A time-frequency matrix, row-major `[n_frames, n_bins]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Spectrogram {
    /// Number of frames (rows).
    pub n_frames: usize,
    /// Number of frequency bins (columns).
    pub n_bins: usize,
    /// Row-major values.
    pub data: Vec<f32>,
}

impl Spectrogram {
    /// Row `t` (one frame).
    pub fn frame(&self, t: usize) -> &[f32] {
        &self.data[t * self.n_bins..(t + 1) * self.n_bins]
    }
}

/// Short-time Fourier transform with a fixed FFT size, hop, window and edge padding.
#[derive(Debug, Clone)]
pub struct Stft {
    fft: RealFft,
    hop: usize,
    /// Window zero-padded (centred) to `n_fft`, as torch.stft does for `win_length < n_fft`.
    window: Vec<f32>,
    padding: StftPadding,
}

impl Stft {
    /// `window.len()` must be in `1..=n_fft`; a shorter window is centred in the FFT frame.
    pub fn new(n_fft: usize, hop: usize, window: &[f32], padding: StftPadding) -> Result<Self> {
        if hop == 0 {
            return Err(AudioError::InvalidArgument("STFT hop must be > 0".into()));
        }
        if window.is_empty() || window.len() > n_fft {
            return Err(AudioError::InvalidArgument(format!(
                "STFT window length {} must be in 1..={n_fft} (n_fft)",
                window.len()
            )));
        }
        let fft = RealFft::new(n_fft)?;
        let mut full = vec![0.0f32; n_fft];
        let off = (n_fft - window.len()) / 2;
        full[off..off + window.len()].copy_from_slice(window);
        Ok(Self {
            fft,
            hop,
            window: full,
            padding,
        })
    }

    /// FFT size.
    pub fn n_fft(&self) -> usize {
        self.fft.len()
    }

    /// Hop between frame starts, in samples.
    pub fn hop(&self) -> usize {
        self.hop
    }

    /// Number of one-sided frequency bins.
    pub fn n_bins(&self) -> usize {
        self.fft.n_bins()
    }

    /// Number of frames produced for a signal of `n_samples` samples.
    pub fn n_frames(&self, n_samples: usize) -> usize {
        let n_fft = self.n_fft();
        let padded = match self.padding {
            StftPadding::None => n_samples,
            StftPadding::Reflect | StftPadding::Zeros => n_samples + 2 * (n_fft / 2),
        };
        if padded < n_fft {
            0
        } else {
            1 + (padded - n_fft) / self.hop
        }
    }

    /// The signal extended at both ends as the padding mode says.
    fn padded<'a>(&self, samples: &'a [f32]) -> Result<std::borrow::Cow<'a, [f32]>> {
        let pad = self.n_fft() / 2;
        match self.padding {
            StftPadding::None => Ok(std::borrow::Cow::Borrowed(samples)),
            StftPadding::Zeros => {
                let mut v = vec![0.0f32; samples.len() + 2 * pad];
                v[pad..pad + samples.len()].copy_from_slice(samples);
                Ok(std::borrow::Cow::Owned(v))
            }
            StftPadding::Reflect => {
                let n = samples.len();
                if n == 0 {
                    return Err(AudioError::InvalidArgument(
                        "reflect padding needs at least one sample".into(),
                    ));
                }
                let mut v = Vec::with_capacity(n + 2 * pad);
                v.extend((0..pad).map(|k| samples[reflect_index(k as isize - pad as isize, n)]));
                v.extend_from_slice(samples);
                v.extend((0..pad).map(|k| samples[reflect_index((n + k) as isize, n)]));
                Ok(std::borrow::Cow::Owned(v))
            }
        }
    }

    /// Calls `f(frame_index, spectrum)` for each frame, in order.
    pub fn for_each_frame<F>(&self, samples: &[f32], f: F) -> Result<()>
    where
        F: FnMut(usize, &[Complex<f32>]),
    {
        self.for_first_frames(samples, usize::MAX, f)
    }

    /// Like [`Stft::for_each_frame`] but stops after `max_frames` frames.
    pub fn for_first_frames<F>(&self, samples: &[f32], max_frames: usize, mut f: F) -> Result<()>
    where
        F: FnMut(usize, &[Complex<f32>]),
    {
        let signal = self.padded(samples)?;
        let n_fft = self.n_fft();
        let n_frames = self.n_frames(samples.len()).min(max_frames);
        let mut ws = self.fft.workspace();
        for t in 0..n_frames {
            let start = t * self.hop;
            let frame = &signal[start..start + n_fft];
            for ((dst, &x), &w) in ws.input.iter_mut().zip(frame).zip(&self.window) {
                *dst = x * w;
            }
            self.fft.process(&mut ws)?;
            f(t, &ws.spectrum);
        }
        Ok(())
    }

    /// Power or magnitude spectrogram, `[n_frames, n_bins]`.
    pub fn spectrogram(&self, samples: &[f32], kind: SpectrumKind) -> Result<Spectrogram> {
        let n_bins = self.n_bins();
        let n_frames = self.n_frames(samples.len());
        let mut data = vec![0.0f32; n_frames * n_bins];
        self.for_each_frame(samples, |t, spec| {
            let row = &mut data[t * n_bins..(t + 1) * n_bins];
            spectrum_into(spec, kind, row);
        })?;
        Ok(Spectrogram {
            n_frames,
            n_bins,
            data,
        })
    }
}

/// One-off power or magnitude spectrogram `[n_frames, n_fft/2 + 1]` (plans the FFT each call;
/// keep an [`Stft`] to reuse the plan).
pub fn spectrogram(
    samples: &[f32],
    n_fft: usize,
    hop: usize,
    window: &[f32],
    padding: StftPadding,
    kind: SpectrumKind,
) -> Result<Spectrogram> {
    Stft::new(n_fft, hop, window, padding)?.spectrogram(samples, kind)
}

/// Writes `|X|^2` or `|X|` of each bin into `out`.
pub fn spectrum_into(spec: &[Complex<f32>], kind: SpectrumKind, out: &mut [f32]) {
    match kind {
        SpectrumKind::Power => {
            for (o, c) in out.iter_mut().zip(spec) {
                *o = c.re * c.re + c.im * c.im;
            }
        }
        SpectrumKind::Magnitude => {
            for (o, c) in out.iter_mut().zip(spec) {
                *o = c.re.hypot(c.im);
            }
        }
    }
}

/// Index into a signal of length `n` for position `i` of its infinite mirror extension without
/// edge repetition (numpy `reflect`): period `2(n-1)`. A one-sample signal repeats itself.
pub(crate) fn reflect_index(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let m = i.rem_euclid(period);
    if m < n as isize {
        m as usize
    } else {
        (period - m) as usize
    }
}

/// Rejects empty or non-finite input, naming the first bad sample.
pub(crate) fn check_samples(samples: &[f32], what: &str) -> Result<()> {
    if samples.is_empty() {
        return Err(AudioError::InvalidArgument(format!("{what}: no samples")));
    }
    if let Some(i) = samples.iter().position(|x| !x.is_finite()) {
        return Err(AudioError::InvalidArgument(format!(
            "{what}: sample {i} is not finite ({})",
            samples[i]
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_matches_numpy_pattern() {
        // np.pad(np.arange(3), 5, mode="reflect") and np.pad(np.arange(4), 7, mode="reflect")
        let got: Vec<usize> = (-5..8).map(|i| reflect_index(i, 3)).collect();
        assert_eq!(got, vec![1, 0, 1, 2, 1, 0, 1, 2, 1, 0, 1, 2, 1]);
        let got: Vec<usize> = (-7..11).map(|i| reflect_index(i, 4)).collect();
        assert_eq!(
            got,
            vec![1, 0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2]
        );
        assert_eq!(reflect_index(-3, 1), 0);
    }

    #[test]
    fn pure_tone_peaks_at_its_bin() {
        let n_fft = 64;
        let k = 5.0;
        let x: Vec<f32> = (0..640)
            .map(|i| (2.0 * std::f32::consts::PI * k * i as f32 / n_fft as f32).sin())
            .collect();
        let stft = Stft::new(n_fft, 16, &vec![1.0; n_fft], StftPadding::None).unwrap();
        let s = stft.spectrogram(&x, SpectrumKind::Magnitude).unwrap();
        assert_eq!(s.n_frames, 1 + (640 - 64) / 16);
        for t in 0..s.n_frames {
            let row = s.frame(t);
            assert!((row[5] - 32.0).abs() < 1e-3, "{}", row[5]);
            assert!(row[4] < 1e-3 && row[6] < 1e-3);
        }
    }

    #[test]
    fn power_is_magnitude_squared_and_padding_modes_frame_alike() {
        let x: Vec<f32> = (0..1000).map(|i| ((i * i) as f32 * 1e-4).sin()).collect();
        let w = super::super::window::hann_window(256, true);
        for pad in [StftPadding::None, StftPadding::Reflect, StftPadding::Zeros] {
            let p = spectrogram(&x, 256, 100, &w, pad, SpectrumKind::Power).unwrap();
            let m = spectrogram(&x, 256, 100, &w, pad, SpectrumKind::Magnitude).unwrap();
            assert_eq!(p.n_bins, 129);
            for (a, b) in p.data.iter().zip(&m.data) {
                assert!((a - b * b).abs() <= 1e-4 * a.max(1.0));
            }
        }
        // A centred frame t sees samples [t*hop - n_fft/2, t*hop + n_fft/2): frame 2 with hop 100
        // and n_fft 256 lies inside the signal, so reflect and zero padding agree there.
        let r = spectrogram(&x, 256, 100, &w, StftPadding::Reflect, SpectrumKind::Power).unwrap();
        let z = spectrogram(&x, 256, 100, &w, StftPadding::Zeros, SpectrumKind::Power).unwrap();
        assert_eq!(r.frame(2), z.frame(2));
        assert_ne!(r.frame(0), z.frame(0));
    }

    #[test]
    fn frame_counts() {
        let w = vec![1.0; 400];
        let c = Stft::new(400, 160, &w, StftPadding::Reflect).unwrap();
        assert_eq!(c.n_frames(480_000), 3001);
        let n = Stft::new(400, 160, &w, StftPadding::None).unwrap();
        assert_eq!(n.n_frames(399), 0);
        assert_eq!(n.n_frames(400), 1);
        assert!(Stft::new(400, 0, &w, StftPadding::None).is_err());
        assert!(Stft::new(300, 10, &w, StftPadding::None).is_err());
    }
}
