//! A differentiable short-time Fourier transform on candle ops, as `torch.stft` (onesided,
//! unnormalised, `return_complex` split into real and imaginary parts).
//!
//! The transform is a strided conv of the signal with `n_fft`-tap windowed DFT kernels
//! (`w[n] cos(2πkn/N)` and `-w[n] sin(2πkn/N)`). With one input channel that conv is
//! "cut the signal into frames, then one rank-2 matmul with the `[n_fft, 2 * bins]` kernel
//! matrix", which is what is written here: `vaak_nn::conv::conv1d_differentiable` would build
//! the same im2col out of `n_fft` slices (2048 tensor ops for a 2048-point FFT), whereas frames
//! cut as `n_fft / hop` shifted blocks (or one `index_select` when the hop does not divide
//! `n_fft`) take a handful. Every op used (reshape, narrow, cat, index_select, matmul) has a
//! correct backward in candle 0.11.1 for batch > 1; the gradients are checked against
//! PyTorch with batch 2 (`tools/fixtures/codec_train.py`).
//!
//! Written for vaak; only `torch.stft`'s conventions were followed (periodic window centred
//! in `n_fft` when `win_length < n_fft`; `center` reflect-pads `n_fft / 2` on both sides).

use std::f64::consts::PI;

use candle_core::{bail, Device, Result, Tensor};

/// Analysis window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Window {
    /// Periodic Hann (`torch.hann_window(win_length)`).
    #[default]
    Hann,
    /// Periodic Hamming (`torch.hamming_window(win_length)`).
    Hamming,
    /// All ones.
    Rectangular,
}

impl Window {
    /// The periodic window of `len` samples.
    pub fn values(self, len: usize) -> Vec<f64> {
        let n = len as f64;
        (0..len)
            .map(|i| {
                let x = 2.0 * PI * i as f64 / n;
                match self {
                    Self::Hann => 0.5 - 0.5 * x.cos(),
                    Self::Hamming => 0.54 - 0.46 * x.cos(),
                    Self::Rectangular => 1.0,
                }
            })
            .collect()
    }
}

/// A fixed STFT; cheap to clone (the kernel is shared).
#[derive(Clone, Debug)]
pub struct Stft {
    n_fft: usize,
    hop: usize,
    win_length: usize,
    center: bool,
    /// `[n_fft, 2 * bins]`: the real-part kernels, then the imaginary-part ones.
    kernel: Tensor,
}

impl Stft {
    /// An STFT with `n_fft / 2 + 1` bins. `win_length <= n_fft`; the window is centred in
    /// the `n_fft` frame (zeros around it), as `torch.stft` does.
    pub fn new(
        n_fft: usize,
        hop: usize,
        win_length: usize,
        window: Window,
        center: bool,
        device: &Device,
    ) -> Result<Self> {
        if n_fft < 2 || hop == 0 || win_length == 0 || win_length > n_fft {
            bail!(
                "Stft: need n_fft >= 2, hop >= 1 and 1 <= win_length <= n_fft, got n_fft \
                 {n_fft}, hop {hop}, win_length {win_length}"
            );
        }
        let bins = n_fft / 2 + 1;
        let mut win = vec![0f64; n_fft];
        let left = (n_fft - win_length) / 2;
        for (i, v) in window.values(win_length).into_iter().enumerate() {
            win[left + i] = v;
        }
        // Row n, column k (re) / bins + k (im).
        let mut k = vec![0f32; n_fft * 2 * bins];
        for (n, &w) in win.iter().enumerate() {
            for b in 0..bins {
                // Reduce the phase index mod n_fft first: exact angles for large n * b.
                let ang = 2.0 * PI * ((n * b) % n_fft) as f64 / n_fft as f64;
                k[n * 2 * bins + b] = (w * ang.cos()) as f32;
                k[n * 2 * bins + bins + b] = (-w * ang.sin()) as f32;
            }
        }
        let kernel = Tensor::from_vec(k, (n_fft, 2 * bins), device)?;
        Ok(Self {
            n_fft,
            hop,
            win_length,
            center,
            kernel,
        })
    }

    pub fn n_fft(&self) -> usize {
        self.n_fft
    }

    pub fn hop(&self) -> usize {
        self.hop
    }

    pub fn win_length(&self) -> usize {
        self.win_length
    }

    /// Frequency bins, `n_fft / 2 + 1`.
    pub fn bins(&self) -> usize {
        self.n_fft / 2 + 1
    }

    /// Frames for a `t`-sample signal (0 when it is too short).
    pub fn frames(&self, t: usize) -> usize {
        let len = if self.center {
            t + 2 * (self.n_fft / 2)
        } else {
            t
        };
        if len < self.n_fft {
            0
        } else {
            (len - self.n_fft) / self.hop + 1
        }
    }

    /// `x: [B, T]` (float) to `(re, im)`, each `[B, n_fft / 2 + 1, frames]`, in `x`'s dtype.
    /// With `center` the signal must be longer than `n_fft / 2` (reflect padding), without it
    /// at least `n_fft` long.
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let b = x.dim(0)?;
        let (rows, frames) = self.spectrum_rows(x)?;
        let bins = self.bins();
        let spec = rows.reshape((b, frames, 2 * bins))?.transpose(1, 2)?;
        let re = spec.narrow(1, 0, bins)?.contiguous()?;
        let im = spec.narrow(1, bins, bins)?.contiguous()?;
        Ok((re, im))
    }

    /// `sqrt(max(re² + im², eps))`, `[B, bins, frames]`; `eps` keeps the gradient finite at
    /// silent bins.
    pub fn magnitude(&self, x: &Tensor, eps: f64) -> Result<Tensor> {
        let (re, im) = self.forward(x)?;
        (re.sqr()? + im.sqr()?)?.maximum(eps)?.sqrt()
    }

    /// The magnitude as rows `[B * frames, bins]` (frame-major, no transpose), for losses
    /// that reduce over everything or multiply by a filterbank; also returns `frames`.
    pub fn magnitude_rows(&self, x: &Tensor, eps: f64) -> Result<(Tensor, usize)> {
        let (rows, frames) = self.spectrum_rows(x)?;
        let bins = self.bins();
        let re = rows.narrow(1, 0, bins)?;
        let im = rows.narrow(1, bins, bins)?;
        Ok(((re.sqr()? + im.sqr()?)?.maximum(eps)?.sqrt()?, frames))
    }

    /// `[B * frames, 2 * bins]` (real parts, then imaginary parts) and `frames`.
    fn spectrum_rows(&self, x: &Tensor) -> Result<(Tensor, usize)> {
        let (b, t) = x.dims2().map_err(|_| {
            candle_core::Error::Msg(format!(
                "Stft: input must be [batch, samples], got {:?}",
                x.dims()
            ))
        })?;
        if !x.dtype().is_float() {
            bail!("Stft: input must be float, got {:?}", x.dtype());
        }
        let x = if self.center {
            let p = self.n_fft / 2;
            if t <= p {
                bail!(
                    "Stft: a centred STFT with n_fft {} needs more than {p} samples, got {t}",
                    self.n_fft
                );
            }
            reflect_pad(x, p)?
        } else {
            x.clone()
        };
        let len = x.dim(1)?;
        let frames = self.frames(t);
        if frames == 0 {
            bail!("Stft: {t} samples are shorter than n_fft {}", self.n_fft);
        }
        let framed = self.frame(&x, b, len, frames)?; // [B * frames, n_fft]
        let kernel = self.kernel.to_dtype(x.dtype())?;
        Ok((framed.matmul(&kernel)?, frames))
    }

    /// Rows `[B * frames, n_fft]` of the (padded) `x: [B, len]`.
    fn frame(&self, x: &Tensor, b: usize, len: usize, frames: usize) -> Result<Tensor> {
        let (n, h) = (self.n_fft, self.hop);
        if n % h == 0 {
            // Frame f = hop blocks f .. f + n/h: pad to whole blocks, then n/h shifted views.
            let per = n / h;
            let blocks = frames - 1 + per;
            let need = blocks * h;
            let x = if need > len {
                x.pad_with_zeros(1, 0, need - len)?
            } else {
                x.narrow(1, 0, need)?
            };
            let x = x.reshape((b, blocks, h))?;
            let parts = (0..per)
                .map(|j| x.narrow(1, j, frames))
                .collect::<Result<Vec<_>>>()?;
            Tensor::cat(&parts, 2)?.reshape((b * frames, n))
        } else {
            let idx: Vec<u32> = (0..frames)
                .flat_map(|f| (0..n).map(move |i| (f * h + i) as u32))
                .collect();
            let idx = Tensor::from_vec(idx, frames * n, x.device())?;
            x.index_select(&idx, 1)?.reshape((b * frames, n))
        }
    }
}

/// Reflect-pads the last axis of `[B, T]` by `p` on both sides (`T > p`), as
/// `torch.nn.functional.pad(mode="reflect")`; differentiable (index_select).
pub fn reflect_pad(x: &Tensor, p: usize) -> Result<Tensor> {
    let t = x.dim(1)?;
    if p == 0 {
        return Ok(x.clone());
    }
    if t <= p {
        bail!("reflect_pad: pad {p} needs more than {p} samples, got {t}");
    }
    let idx: Vec<u32> = (0..p)
        .map(|i| (p - i) as u32)
        .chain((0..t).map(|i| i as u32))
        .chain((0..p).map(|j| (t - 2 - j) as u32))
        .collect();
    let n = idx.len();
    x.index_select(&Tensor::from_vec(idx, n, x.device())?, 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    /// A direct O(N²) DFT of one frame, for checking the kernels and framing.
    fn naive(x: &[f64], n_fft: usize, hop: usize, win: &[f64], f: usize) -> Vec<(f64, f64)> {
        (0..n_fft / 2 + 1)
            .map(|k| {
                let (mut re, mut im) = (0.0, 0.0);
                for (n, w) in win.iter().enumerate() {
                    let v = x.get(f * hop + n).copied().unwrap_or(0.0) * w;
                    let a = 2.0 * PI * (k * n) as f64 / n_fft as f64;
                    re += v * a.cos();
                    im -= v * a.sin();
                }
                (re, im)
            })
            .collect()
    }

    #[test]
    fn matches_a_naive_dft_for_dividing_and_other_hops() -> Result<()> {
        let t = 300;
        let sig: Vec<f64> = (0..2 * t)
            .map(|i| ((i * 7919) % 101) as f64 / 50.0 - 1.0)
            .collect();
        let x = Tensor::from_vec(
            sig.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            (2, t),
            &Device::Cpu,
        )?;
        for (n_fft, hop, wl) in [(64, 16, 64), (64, 24, 48), (32, 32, 32)] {
            let stft = Stft::new(n_fft, hop, wl, Window::Hann, false, &Device::Cpu)?;
            let (re, im) = stft.forward(&x)?;
            let frames = stft.frames(t);
            assert_eq!(re.dims(), [2, n_fft / 2 + 1, frames]);
            let mut win = vec![0.0; n_fft];
            let left = (n_fft - wl) / 2;
            for (i, v) in Window::Hann.values(wl).into_iter().enumerate() {
                win[left + i] = v;
            }
            let re = re.to_vec3::<f32>()?;
            let im = im.to_vec3::<f32>()?;
            for bi in 0..2 {
                for f in [0, frames / 2, frames - 1] {
                    let want = naive(&sig[bi * t..(bi + 1) * t], n_fft, hop, &win, f);
                    for (k, (wr, wi)) in want.into_iter().enumerate() {
                        assert!(
                            (re[bi][k][f] as f64 - wr).abs() < 1e-4,
                            "re {n_fft}/{hop} b{bi} f{f} k{k}"
                        );
                        assert!(
                            (im[bi][k][f] as f64 - wi).abs() < 1e-4,
                            "im {n_fft}/{hop} b{bi} f{f} k{k}"
                        );
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn centre_padding_reflects() -> Result<()> {
        let x = Tensor::new(&[[0f32, 1., 2., 3., 4.]], &Device::Cpu)?;
        let y = reflect_pad(&x, 2)?.to_vec2::<f32>()?;
        assert_eq!(y[0], vec![2., 1., 0., 1., 2., 3., 4., 3., 2.]);
        let stft = Stft::new(8, 2, 8, Window::Hann, true, &Device::Cpu)?;
        assert_eq!(stft.frames(5), 3);
        assert!(stft
            .forward(&Tensor::zeros((1, 4), DType::F32, &Device::Cpu)?)
            .is_err());
        Ok(())
    }
}
