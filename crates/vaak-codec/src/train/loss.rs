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
    mag.matmul(fb)?.maximum(MEL_CLAMP)?.log()? / std::f64::consts::LN_10
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
