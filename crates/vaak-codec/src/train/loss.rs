//! Reconstruction losses for codec training: multi-resolution STFT loss (spectral convergence
//! plus log-magnitude L1, as in Parallel WaveGAN) and multi-scale log-mel L1 (as in DAC),
//! both on the differentiable [`Stft`]. Values and input gradients are checked against
//! PyTorch with batch 2 (`tools/fixtures/codec_train.py`).
//!
//! Definitions (`x` target, `y` prediction, `|.|` STFT magnitude `sqrt(max(re² + im², 1e-7))`):
//! - spectral convergence `‖ |Y| − |X| ‖_F / ‖ |X| ‖_F` over the whole batch;
//! - log magnitude `mean | ln|Y| − ln|X| |`;
//! - log-mel `mean | log10(max(M|Y|, 1e-5)) − log10(max(M|X|, 1e-5)) |` with `M` a Slaney-scale,
//!   Slaney-normalised mel filterbank (librosa's default) from `vaak_audio::features::mel`.
//!
//! Each is averaged over its resolutions. The target side runs detached.

use candle_core::{bail, Device, Result, Tensor};
use serde::{Deserialize, Serialize};
use vaak_audio::features::mel::{
    MelFilterbank, MelFilterbankConfig, MelNorm, MelScale, TriangleSpace,
};

use super::stft::{Stft, Window};

/// Floor of the STFT power before the square root (keeps gradients finite at silence).
pub const MAG_EPS: f64 = 1e-7;
/// Floor of the mel energies before the log.
pub const MEL_CLAMP: f64 = 1e-5;

/// One STFT resolution (Hann window, centred).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StftResolution {
    pub n_fft: usize,
    pub hop: usize,
    pub win_length: usize,
}

/// One mel scale: a Hann-windowed centred STFT of `n_fft` (window `n_fft`) and `n_mels`
/// filters from 0 Hz to Nyquist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MelResolution {
    pub n_fft: usize,
    pub hop: usize,
    pub n_mels: usize,
}

/// `[B, T]` from `[B, T]` or `[B, 1, T]`.
fn as_2d(x: &Tensor, what: &str) -> Result<Tensor> {
    match x.rank() {
        2 => Ok(x.clone()),
        3 if x.dim(1)? == 1 => x.squeeze(1),
        _ => bail!(
            "{what}: expected [batch, samples] or [batch, 1, samples], got {:?}",
            x.dims()
        ),
    }
}

fn check_pair(pred: &Tensor, target: &Tensor, what: &str) -> Result<(Tensor, Tensor)> {
    let p = as_2d(pred, what)?;
    let t = as_2d(target, what)?.detach();
    if p.dims() != t.dims() {
        bail!(
            "{what}: prediction {:?} and target {:?} differ",
            p.dims(),
            t.dims()
        );
    }
    Ok((p, t))
}

/// Multi-resolution STFT loss.
#[derive(Clone, Debug)]
pub struct MultiResStftLoss {
    stfts: Vec<Stft>,
}

impl MultiResStftLoss {
    pub fn new(resolutions: &[StftResolution], device: &Device) -> Result<Self> {
        if resolutions.is_empty() {
            bail!("MultiResStftLoss: no resolutions");
        }
        let stfts = resolutions
            .iter()
            .map(|r| Stft::new(r.n_fft, r.hop, r.win_length, Window::Hann, true, device))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { stfts })
    }

    /// `(spectral convergence, log-magnitude L1)`, each averaged over the resolutions.
    pub fn forward(&self, pred: &Tensor, target: &Tensor) -> Result<(Tensor, Tensor)> {
        let (p, t) = check_pair(pred, target, "MultiResStftLoss")?;
        let mut sc = Vec::with_capacity(self.stfts.len());
        let mut mag = Vec::with_capacity(self.stfts.len());
        for stft in &self.stfts {
            let (yp, _) = stft.magnitude_rows(&p, MAG_EPS)?;
            let (yt, _) = stft.magnitude_rows(&t, MAG_EPS)?;
            let num = (&yp - &yt)?.sqr()?.sum_all()?.sqrt()?;
            let den = yt.sqr()?.sum_all()?.sqrt()?;
            sc.push((num / den)?);
            mag.push((yp.log()? - yt.log()?)?.abs()?.mean_all()?);
        }
        let n = self.stfts.len() as f64;
        Ok((
            (Tensor::stack(&sc, 0)?.sum_all()? / n)?,
            (Tensor::stack(&mag, 0)?.sum_all()? / n)?,
        ))
    }
}

/// Multi-scale log-mel L1 loss.
#[derive(Clone, Debug)]
pub struct MelLoss {
    /// Per scale: the STFT and the filterbank transposed, `[bins, n_mels]`.
    scales: Vec<(Stft, Tensor)>,
}

impl MelLoss {
    pub fn new(scales: &[MelResolution], sample_rate: usize, device: &Device) -> Result<Self> {
        if scales.is_empty() {
            bail!("MelLoss: no scales");
        }
        let mut out = Vec::with_capacity(scales.len());
        for r in scales {
            let stft = Stft::new(r.n_fft, r.hop, r.n_fft, Window::Hann, true, device)?;
            let fb = mel_filterbank(sample_rate, r.n_fft, r.n_mels)?;
            let bins = stft.bins();
            let w = Tensor::from_vec(fb.weights().to_vec(), (r.n_mels, bins), device)?
                .t()?
                .contiguous()?;
            out.push((stft, w));
        }
        Ok(Self { scales: out })
    }

    /// The log-mel L1 distance averaged over the scales.
    pub fn forward(&self, pred: &Tensor, target: &Tensor) -> Result<Tensor> {
        let (p, t) = check_pair(pred, target, "MelLoss")?;
        let mut per = Vec::with_capacity(self.scales.len());
        for (stft, fb) in &self.scales {
            let fb = fb.to_dtype(p.dtype())?;
            let lp = log_mel(stft, &fb, &p)?;
            let lt = log_mel(stft, &fb, &t)?;
            per.push((lp - lt)?.abs()?.mean_all()?);
        }
        Tensor::stack(&per, 0)?.sum_all()? / self.scales.len() as f64
    }
}

fn log_mel(stft: &Stft, fb: &Tensor, x: &Tensor) -> Result<Tensor> {
    let (mag, _) = stft.magnitude_rows(x, MAG_EPS)?;
    log_mel_of(&mag, fb)
}

/// `log10(max(mag @ fb, MEL_CLAMP))` of magnitude rows.
fn log_mel_of(mag: &Tensor, fb: &Tensor) -> Result<Tensor> {
    mag.matmul(fb)?.maximum(MEL_CLAMP)?.log()? / std::f64::consts::LN_10
}

/// Both reconstruction-loss families of one training step, [`MultiResStftLoss`] and
/// [`MelLoss`], with every distinct STFT (`n_fft`, hop, window length) of the prediction and
/// of the target computed once and shared: with the default resolutions (STFT 256 / 512 /
/// 1024, mel 128 / 256 / 512 / 1024, all hop `n_fft / 4`) that is 4 transforms per signal
/// instead of 7, forward and backward. Values and gradients are those of the two losses
/// computed separately.
#[derive(Clone, Debug)]
pub struct ReconLoss {
    /// The distinct transforms.
    stfts: Vec<Stft>,
    /// Per STFT-loss resolution, its transform.
    stft_of: Vec<usize>,
    /// Per mel scale, its transform and filterbank `[bins, n_mels]`.
    mel_of: Vec<(usize, Tensor)>,
}

impl ReconLoss {
    /// Either list may be empty (its terms are then zero); not both.
    pub fn new(
        stft: &[StftResolution],
        mel: &[MelResolution],
        sample_rate: usize,
        device: &Device,
    ) -> Result<Self> {
        if stft.is_empty() && mel.is_empty() {
            bail!("ReconLoss: no STFT resolution and no mel scale");
        }
        let mut keys: Vec<(usize, usize, usize)> = Vec::new();
        let mut stfts = Vec::new();
        let mut index = |n_fft: usize, hop: usize, win: usize| -> Result<usize> {
            if let Some(i) = keys.iter().position(|k| *k == (n_fft, hop, win)) {
                return Ok(i);
            }
            keys.push((n_fft, hop, win));
            stfts.push(Stft::new(n_fft, hop, win, Window::Hann, true, device)?);
            Ok(stfts.len() - 1)
        };
        let stft_of = stft
            .iter()
            .map(|r| index(r.n_fft, r.hop, r.win_length))
            .collect::<Result<Vec<_>>>()?;
        let mut mel_of = Vec::with_capacity(mel.len());
        for r in mel {
            let i = index(r.n_fft, r.hop, r.n_fft)?;
            let fb = mel_filterbank(sample_rate, r.n_fft, r.n_mels)?;
            let w = Tensor::from_vec(fb.weights().to_vec(), (r.n_mels, r.n_fft / 2 + 1), device)?
                .t()?
                .contiguous()?;
            mel_of.push((i, w));
        }
        Ok(Self {
            stfts,
            stft_of,
            mel_of,
        })
    }

    /// Distinct transforms per signal.
    pub fn transforms(&self) -> usize {
        self.stfts.len()
    }

    /// `(spectral convergence, log-magnitude L1, log-mel L1)`, each averaged over its
    /// resolutions (a zero scalar for an empty family).
    pub fn forward(&self, pred: &Tensor, target: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (p, t) = check_pair(pred, target, "ReconLoss")?;
        let mut mags = Vec::with_capacity(self.stfts.len());
        for stft in &self.stfts {
            let (yp, _) = stft.magnitude_rows(&p, MAG_EPS)?;
            let (yt, _) = stft.magnitude_rows(&t, MAG_EPS)?;
            mags.push((yp, yt));
        }
        let zero = || Tensor::zeros((), p.dtype(), p.device());
        let (sc, mag) = if self.stft_of.is_empty() {
            (zero()?, zero()?)
        } else {
            let mut sc = Vec::with_capacity(self.stft_of.len());
            let mut mag = Vec::with_capacity(self.stft_of.len());
            for &i in &self.stft_of {
                let (yp, yt) = &mags[i];
                let num = (yp - yt)?.sqr()?.sum_all()?.sqrt()?;
                let den = yt.sqr()?.sum_all()?.sqrt()?;
                sc.push((num / den)?);
                mag.push((yp.log()? - yt.log()?)?.abs()?.mean_all()?);
            }
            let n = self.stft_of.len() as f64;
            (
                (Tensor::stack(&sc, 0)?.sum_all()? / n)?,
                (Tensor::stack(&mag, 0)?.sum_all()? / n)?,
            )
        };
        let mel = if self.mel_of.is_empty() {
            zero()?
        } else {
            let mut per = Vec::with_capacity(self.mel_of.len());
            for (i, fb) in &self.mel_of {
                let fb = fb.to_dtype(p.dtype())?;
                let (yp, yt) = &mags[*i];
                per.push(
                    (log_mel_of(yp, &fb)? - log_mel_of(yt, &fb)?)?
                        .abs()?
                        .mean_all()?,
                );
            }
            (Tensor::stack(&per, 0)?.sum_all()? / self.mel_of.len() as f64)?
        };
        Ok((sc, mag, mel))
    }
}

/// librosa's default mel filterbank (Slaney scale and area normalisation, triangles in Hz),
/// 0 Hz to Nyquist.
pub fn mel_filterbank(sample_rate: usize, n_fft: usize, n_mels: usize) -> Result<MelFilterbank> {
    let sr = sample_rate as f64;
    MelFilterbank::new(&MelFilterbankConfig {
        sample_rate: sr,
        n_fft,
        n_mels,
        f_min: 0.0,
        f_max: sr / 2.0,
        scale: MelScale::Slaney,
        norm: MelNorm::Slaney,
        triangles: TriangleSpace::Hz,
    })
    .map_err(|e| {
        candle_core::Error::Msg(format!(
            "mel filterbank (n_fft {n_fft}, {n_mels} mels): {e}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn signals(dev: &Device) -> Result<(Var, Tensor)> {
        let n = 2 * 1600;
        let x: Vec<f32> = (0..n)
            .map(|i| {
                ((i as f32) * 0.031).sin() * 0.4 + ((i * 7919 % 101) as f32 / 101.0 - 0.5) * 0.1
            })
            .collect();
        let y: Vec<f32> = x
            .iter()
            .enumerate()
            .map(|(i, v)| v * 0.8 + ((i % 13) as f32) * 0.003)
            .collect();
        Ok((
            Var::from_tensor(&Tensor::from_vec(y, (2, 1, 1600), dev)?)?,
            Tensor::from_vec(x, (2, 1, 1600), dev)?,
        ))
    }

    #[test]
    fn shared_transforms_give_the_separate_losses_values_and_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let r = |n_fft: usize| StftResolution {
            n_fft,
            hop: n_fft / 4,
            win_length: n_fft,
        };
        let m = |n_fft: usize, n_mels: usize| MelResolution {
            n_fft,
            hop: n_fft / 4,
            n_mels,
        };
        let stft_res = [r(256), r(512), r(1024)];
        let mel_res = [m(128, 16), m(256, 32), m(512, 64), m(1024, 80)];
        let (y, x) = signals(&dev)?;
        let joint = ReconLoss::new(&stft_res, &mel_res, 16_000, &dev)?;
        assert_eq!(joint.transforms(), 4);
        let (sc, mag, mel) = joint.forward(y.as_tensor(), &x)?;
        let (sc0, mag0) = MultiResStftLoss::new(&stft_res, &dev)?.forward(y.as_tensor(), &x)?;
        let mel0 = MelLoss::new(&mel_res, 16_000, &dev)?.forward(y.as_tensor(), &x)?;
        for (a, b) in [(&sc, &sc0), (&mag, &mag0), (&mel, &mel0)] {
            assert_eq!(a.to_scalar::<f32>()?, b.to_scalar::<f32>()?);
        }
        let w = |a: &Tensor, b: &Tensor, c: &Tensor| -> Result<Tensor> {
            (a + (b * 0.5)?)? + (c * 2.0)?
        };
        let g = w(&sc, &mag, &mel)?.backward()?;
        let g0 = w(&sc0, &mag0, &mel0)?.backward()?;
        let a = g
            .get(y.as_tensor())
            .expect("gradient")
            .flatten_all()?
            .to_vec1::<f32>()?;
        let b = g0
            .get(y.as_tensor())
            .expect("gradient")
            .flatten_all()?
            .to_vec1::<f32>()?;
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(scale > 0.0);
        for (u, v) in a.iter().zip(&b) {
            assert!((u - v).abs() <= 1e-6 * scale, "{u} vs {v}");
        }
        Ok(())
    }

    #[test]
    fn empty_families_are_zero_and_both_empty_is_refused() -> Result<()> {
        let dev = Device::Cpu;
        let (y, x) = signals(&dev)?;
        let only_mel = [MelResolution {
            n_fft: 256,
            hop: 64,
            n_mels: 32,
        }];
        let l = ReconLoss::new(&[], &only_mel, 16_000, &dev)?;
        let (sc, mag, mel) = l.forward(y.as_tensor(), &x)?;
        assert_eq!(sc.to_scalar::<f32>()?, 0.0);
        assert_eq!(mag.to_scalar::<f32>()?, 0.0);
        assert!(mel.to_scalar::<f32>()? > 0.0);
        assert!(ReconLoss::new(&[], &[], 16_000, &dev).is_err());
        Ok(())
    }
}
