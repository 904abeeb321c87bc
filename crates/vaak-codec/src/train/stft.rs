//! A differentiable short-time Fourier transform on candle ops, as `torch.stft` (onesided,
//! unnormalised, `return_complex` split into real and imaginary parts).
//!
//! The transform is a strided conv of the signal with `n_fft`-tap windowed DFT kernels
//! (`w[n] cos(2πkn/N)` and `-w[n] sin(2πkn/N)`). With one input channel that conv is
//! "cut the signal into frames, then one rank-2 matmul with the `[n_fft, 2 * bins]` kernel
//! matrix": `vaak_nn::conv::conv1d_differentiable` would build the same im2col out of `n_fft`
//! slices (2048 tensor ops for a 2048-point FFT), whereas frames cut as `n_fft / hop` shifted
//! blocks (or one `index_select` when the hop does not divide `n_fft`) take a handful.
//!
//! The DFT of the frames then runs one of two ways, with the same values and gradients:
//! - f32 on the CPU with an even `n_fft`: a real FFT (`realfft`) as a candle custom op whose
//!   backward is the adjoint transform (an inverse real FFT of the half-weighted gradient
//!   spectrum). The matmul costs `2 n_fft` multiply-adds per bin and frame, the FFT
//!   `O(log n_fft)`, which makes the training losses ~20x cheaper at the sizes used (they
//!   would otherwise cost far more than the small codec itself).
//! - everywhere else (CUDA, other dtypes, odd sizes, or [`Stft::with_matmul`]): the window is
//!   folded into the `[n_fft, 2 * bins]` DFT matrix and one rank-2 matmul does it.
//!
//! Every candle op used (reshape, narrow, cat, index_select, matmul, broadcast_mul) has a
//! correct backward in candle 0.11.1 for batch > 1; both paths are checked against PyTorch
//! values and gradients with batch 2 (`tools/fixtures/codec_train.py`).
//!
//! Written for vaak; only `torch.stft`'s conventions were followed (periodic window centred
//! in `n_fft` when `win_length < n_fft`; `center` reflect-pads `n_fft / 2` on both sides).

use std::f64::consts::PI;
use std::sync::Arc;

use candle_core::{bail, CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor};
use realfft::num_complex::Complex;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};

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
    /// `[1, n_fft]`: the window, zero-padded to `n_fft`, for the FFT path.
    window: Tensor,
    /// The real FFT of `n_fft` points (even `n_fft` only); `None` forces the matmul.
    fft: Option<RealDft>,
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
        let window = Tensor::from_vec(
            win.iter().map(|&w| w as f32).collect::<Vec<_>>(),
            (1, n_fft),
            device,
        )?;
        let fft = if n_fft.is_multiple_of(2) {
            let mut planner = RealFftPlanner::<f32>::new();
            Some(RealDft {
                n: n_fft,
                fwd: planner.plan_fft_forward(n_fft),
                inv: planner.plan_fft_inverse(n_fft),
            })
        } else {
            None
        };
        Ok(Self {
            n_fft,
            hop,
            win_length,
            center,
            kernel,
            window,
            fft,
        })
    }

    /// Always uses the windowed-DFT matmul (the path CUDA takes), e.g. to compare paths.
    pub fn with_matmul(mut self) -> Self {
        self.fft = None;
        self
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
            vaak_nn::pad::reflect_pad_last(x, p, p)?
        } else {
            x.clone()
        };
        let len = x.dim(1)?;
        let frames = self.frames(t);
        if frames == 0 {
            bail!("Stft: {t} samples are shorter than n_fft {}", self.n_fft);
        }
        let framed = self.frame(&x, b, len, frames)?; // [B * frames, n_fft]
        match &self.fft {
            Some(fft) if x.device().is_cpu() && x.dtype() == DType::F32 => {
                let windowed = framed.broadcast_mul(&self.window)?.contiguous()?;
                Ok((windowed.apply_op1(fft.clone())?, frames))
            }
            _ => {
                let kernel = self.kernel.to_dtype(x.dtype())?;
                Ok((framed.matmul(&kernel)?, frames))
            }
        }
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

/// Real DFT of the rows of a contiguous f32 `[rows, n]` CPU tensor: `[rows, 2 * (n/2 + 1)]`
/// (real parts, then imaginary parts), as `x @ [cos | -sin]`. Its backward is [`RealDftAdjoint`].
#[derive(Clone)]
struct RealDft {
    n: usize,
    fwd: Arc<dyn RealToComplex<f32>>,
    inv: Arc<dyn ComplexToReal<f32>>,
}

impl std::fmt::Debug for RealDft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RealDft({})", self.n)
    }
}

/// The adjoint of [`RealDft`]: `g @ [cos | -sin]^T`, `[rows, 2 * bins]` to `[rows, n]`.
struct RealDftAdjoint(RealDft);

/// The contiguous f32 data of a CPU tensor argument as `(rows, cols)` and a slice.
fn rows_of<'a>(s: &'a CpuStorage, l: &Layout, cols: usize, op: &str) -> Result<(usize, &'a [f32])> {
    let (rows, c) = l.shape().dims2()?;
    if c != cols {
        bail!("{op}: expected {cols} columns, got {c}");
    }
    let CpuStorage::F32(v) = s else {
        bail!("{op}: f32 only");
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        bail!("{op}: input must be contiguous");
    };
    Ok((rows, &v[a..b]))
}

/// Runs `f(input_rows, output_rows)` over row chunks on the available cores.
fn par_rows(
    input: &[f32],
    in_cols: usize,
    out_cols: usize,
    rows: usize,
    f: impl Fn(&[f32], &mut [f32]) + Sync,
) -> Vec<f32> {
    let mut out = vec![0f32; rows * out_cols];
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(rows.div_ceil(32))
        .max(1);
    let per = rows.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for (inp, outp) in input
            .chunks(per * in_cols)
            .zip(out.chunks_mut(per * out_cols))
        {
            let f = &f;
            s.spawn(move || f(inp, outp));
        }
    });
    out
}

impl CustomOp1 for RealDft {
    fn name(&self) -> &'static str {
        "vaak-real-dft"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = self.n;
        let bins = n / 2 + 1;
        let (rows, x) = rows_of(s, l, n, "RealDft")?;
        let out = par_rows(x, n, 2 * bins, rows, |inp, outp| {
            let mut buf = self.fwd.make_input_vec();
            let mut spec = self.fwd.make_output_vec();
            let mut scratch = self.fwd.make_scratch_vec();
            for (row, o) in inp.chunks(n).zip(outp.chunks_mut(2 * bins)) {
                buf.copy_from_slice(row);
                // Lengths come from the plan, so this cannot fail.
                let _ = self
                    .fwd
                    .process_with_scratch(&mut buf, &mut spec, &mut scratch);
                for (k, c) in spec.iter().enumerate() {
                    o[k] = c.re;
                    o[bins + k] = c.im;
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((rows, 2 * bins))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad
            .contiguous()?
            .apply_op1_no_bwd(&RealDftAdjoint(self.clone()))?;
        Ok(Some(g))
    }
}

impl CustomOp1 for RealDftAdjoint {
    fn name(&self) -> &'static str {
        "vaak-real-dft-adjoint"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = &self.0;
        let n = d.n;
        let bins = n / 2 + 1;
        let (rows, g) = rows_of(s, l, 2 * bins, "RealDftAdjoint")?;
        let out = par_rows(g, 2 * bins, n, rows, |inp, outp| {
            let mut spec = d.inv.make_input_vec();
            let mut buf = d.inv.make_output_vec();
            let mut scratch = d.inv.make_scratch_vec();
            for (row, o) in inp.chunks(2 * bins).zip(outp.chunks_mut(n)) {
                // The inverse real FFT computes Z_0 + Z_{n/2}(-1)^t + 2 Re Σ Z_k e^{2πikt/n};
                // with Z_k = (g_re + i g_im) / 2 inside, that is Σ g_re cos − g_im sin.
                for (k, z) in spec.iter_mut().enumerate() {
                    *z = if k == 0 || k == bins - 1 {
                        Complex::new(row[k], 0.0)
                    } else {
                        Complex::new(0.5 * row[k], 0.5 * row[bins + k])
                    };
                }
                let _ = d
                    .inv
                    .process_with_scratch(&mut spec, &mut buf, &mut scratch);
                o.copy_from_slice(&buf);
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((rows, n))))
    }
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
        let y = vaak_nn::pad::reflect_pad_last(&x, 2, 2)?.to_vec2::<f32>()?;
        assert_eq!(y[0], vec![2., 1., 0., 1., 2., 3., 4., 3., 2.]);
        let stft = Stft::new(8, 2, 8, Window::Hann, true, &Device::Cpu)?;
        assert_eq!(stft.frames(5), 3);
        assert!(stft
            .forward(&Tensor::zeros((1, 4), DType::F32, &Device::Cpu)?)
            .is_err());
        Ok(())
    }
}
