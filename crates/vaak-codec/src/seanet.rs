//! SEANet encoder and decoder (EnCodec's layout and tensor names), whole-clip and streaming.
//!
//! Tensor names follow transformers' `EncodecEncoder` / `EncodecDecoder`: a flat
//! `layers.{i}` list where ELUs take an index but hold no weights, convs sit under
//! `layers.{i}.conv`, residual blocks under `layers.{i}.block.{1,3}.conv` and
//! `layers.{i}.shortcut.conv`, and the LSTM under `layers.{i}.lstm` (PyTorch `nn.LSTM` names).

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use vaak_nn::conv::{
    conv1d_fused, elu, CausalConv1d, CausalConvConfig, CausalConvTranspose1d, CausalPad,
    Conv1dOpts, Fused, InputAct,
};
use vaak_nn::simd::StepWeights;
use vaak_nn::streaming::{zero_slots, StreamMask, StreamTensor, StreamingModule};
use vaak_nn::weights::weight_norm;

use crate::config::{PadMode, SeanetConfig};

/// How a whole-clip forward treats the clip edges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum EdgeMode {
    /// As the reference implementation (HF `EncodecModel`): every conv pads its left edge with
    /// `k_eff - stride` samples in the config's pad mode (reflect for EnCodec) and its right
    /// edge with the "extra padding" that completes the last stride block, so a `T`-sample clip
    /// gives `ceil(T / hop)` frames. Needs the clip's future at both edges: not streamable.
    #[default]
    Reference,
    /// What a stream computes: zeros before the clip (fresh stream state) and no right padding,
    /// so `T` samples give `floor(T / hop)` frames. Streaming equals this exactly.
    Causal,
}

/// Loads a conv weight, weight-normalised or plain; a `VarMap` builder initialises it.
fn load_weight(vb: &VarBuilder, shape: &[usize], weight_norm_on: bool) -> Result<Tensor> {
    if weight_norm_on {
        return weight_norm(vb, shape, Some(0));
    }
    let fan_in: usize = shape[1..].iter().product();
    let std = (1.0 / fan_in.max(1) as f64).sqrt();
    vb.get_with_hints(
        shape,
        "weight",
        Init::Randn {
            mean: 0.0,
            stdev: std,
        },
    )
}

/// `weight` of `shape` (weight-normed or plain) and, when `cfg.bias`, `bias` under `vb`.
fn load_params(
    vb: &VarBuilder,
    shape: &[usize],
    cfg: &CausalConvConfig,
    weight_norm_on: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let w = load_weight(vb, shape, weight_norm_on)?.contiguous()?;
    let b = if cfg.bias {
        Some(load_bias(vb, cfg.out_channels)?)
    } else {
        None
    };
    Ok((w, b))
}

fn load_bias(vb: &VarBuilder, n: usize) -> Result<Tensor> {
    vb.get_with_hints(n, "bias", Init::Const(0.0))
}

/// Pads the time axis of `[B, C, T]` as `torch.nn.functional.pad` would, including HF
/// EnCodec's `_pad1d` trick for reflect padding of clips no longer than the pad (zeros are
/// appended first, then cut off again).
pub(crate) fn pad1d(x: &Tensor, left: usize, right: usize, mode: PadMode) -> Result<Tensor> {
    if left == 0 && right == 0 {
        return Ok(x.clone());
    }
    match mode {
        PadMode::Zero => x.pad_with_zeros(2, left, right),
        PadMode::Replicate => x.pad_with_same(2, left, right),
        PadMode::Reflect => {
            let len = x.dim(2)?;
            let max_pad = left.max(right);
            let (x, extra) = if len <= max_pad {
                let e = max_pad - len + 1;
                (x.pad_with_zeros(2, 0, e)?, e)
            } else {
                (x.clone(), 0)
            };
            let out = vaak_nn::pad::reflect_pad_last(&x, left, right)?;
            let total = out.dim(2)?;
            out.narrow(2, 0, total - extra)
        }
    }
}

/// SEANet's ELU (alpha 1) as a fused conv input activation, or none.
fn elu_act(on: bool) -> InputAct {
    if on {
        InputAct::Elu(1.0)
    } else {
        InputAct::None
    }
}

/// A SEANet conv: causal streaming via [`CausalConv1d`], reference-mode whole clip via
/// explicit padding.
#[derive(Clone, Debug)]
pub(crate) struct SConv {
    conv: CausalConv1d,
    pad_mode: PadMode,
}

impl SConv {
    fn new(cfg: CausalConvConfig, s: &SeanetConfig, vb: VarBuilder) -> Result<Self> {
        Self::with_options(cfg, s.weight_norm, s.pad_mode, vb)
    }

    /// Loads `conv.weight` (and `conv.bias` when `cfg.bias`) under `vb`.
    pub(crate) fn with_options(
        cfg: CausalConvConfig,
        weight_norm_on: bool,
        pad_mode: PadMode,
        vb: VarBuilder,
    ) -> Result<Self> {
        let vb = vb.pp("conv");
        let shape = [
            cfg.out_channels,
            cfg.in_channels / cfg.groups,
            cfg.kernel_size,
        ];
        let (w, b) = load_params(&vb, &shape, &cfg, weight_norm_on)?;
        // Replicate padding is causal, so the streaming / causal path can follow it exactly;
        // reflect needs samples a stream has not seen yet and stays zeros there.
        let pad = match pad_mode {
            PadMode::Replicate => CausalPad::Replicate,
            PadMode::Zero | PadMode::Reflect => CausalPad::Zeros,
        };
        Ok(Self {
            conv: CausalConv1d::from_tensors(cfg, w, b)?.with_pad(pad),
            pad_mode,
        })
    }

    pub(crate) fn streaming(&mut self) -> &mut CausalConv1d {
        &mut self.conv
    }

    /// [`Self::forward`] on a zero-padded batch whose item `i` holds `lengths[i]` valid
    /// samples: item `i`'s output (its first returned-length frames) equals `forward` on its
    /// valid samples alone. In reference mode each item gets its own edge padding (reflect
    /// or zeros, and HF's extra right padding) before the batched conv; causal convs never
    /// read past a frame's end, so they run on the batch as it is.
    pub(crate) fn forward_lengths(
        &self,
        x: &Tensor,
        edge: EdgeMode,
        lengths: &[usize],
    ) -> Result<(Tensor, Vec<usize>)> {
        self.forward_lengths_of(x, false, edge, lengths)
    }

    /// [`Self::forward_lengths`] of `elu(x)` when `elu_input`, the ELU fused into the conv.
    fn forward_lengths_of(
        &self,
        x: &Tensor,
        elu_input: bool,
        edge: EdgeMode,
        lengths: &[usize],
    ) -> Result<(Tensor, Vec<usize>)> {
        let cfg = *self.conv.config();
        let (k, s) = (cfg.effective_kernel(), cfg.stride);
        if edge == EdgeMode::Causal {
            return Ok((
                self.forward_of(x, elu_input, None, edge)?,
                lengths.iter().map(|&l| l / s).collect(),
            ));
        }
        let longest = lengths.iter().copied().max().unwrap_or(0);
        let pad = k.saturating_sub(s);
        if lengths.iter().all(|&l| l % s == 0 && l > pad) && longest == x.dim(2)? {
            // No item needs right padding (always so at stride 1) and each is longer than the
            // left padding (HF's short-clip reflect trick appends zeros first): the left edge
            // padding is then the same for every item and no frame of an item reads past its
            // end, so the batch runs as one clip would.
            return Ok((
                self.forward_of(x, elu_input, None, edge)?,
                lengths.iter().map(|&l| l / s).collect(),
            ));
        }
        let parts = lengths
            .iter()
            .enumerate()
            .map(|(i, &l)| {
                let extra = l.div_ceil(s) * s - l;
                let xi = x.narrow(0, i, 1)?.narrow(2, 0, l)?;
                pad1d(&xi, k.saturating_sub(s), extra, self.pad_mode)
            })
            .collect::<Result<Vec<_>>>()?;
        let width = parts.iter().map(|p| p.dim(2)).collect::<Result<Vec<_>>>()?;
        let widest = width.iter().copied().max().unwrap_or(0);
        let parts = parts
            .iter()
            .zip(&width)
            .map(|(p, &w)| p.pad_with_zeros(2, 0, widest - w))
            .collect::<Result<Vec<_>>>()?;
        let opts = Conv1dOpts::new(0, s, cfg.dilation, cfg.groups);
        let y = conv1d_fused(
            &Tensor::cat(&parts, 0)?,
            self.conv.weight(),
            self.conv.bias(),
            opts,
            None,
            Fused {
                input_act: elu_act(elu_input),
                residual: None,
                ..Default::default()
            },
        )?;
        let out = width.iter().map(|&w| (w - k) / s + 1).collect();
        Ok((y, out))
    }

    pub(crate) fn forward(&self, x: &Tensor, edge: EdgeMode) -> Result<Tensor> {
        self.forward_of(x, false, None, edge)
    }

    /// `conv(elu(x)) + residual` (`elu` only when `elu_input`). In reference mode both fuse
    /// into the conv's passes: the ELU as the input is read (ELU commutes with the edge
    /// padding, since `elu(0) = 0`), the residual as the output's starting value.
    fn forward_of(
        &self,
        x: &Tensor,
        elu_input: bool,
        residual: Option<&Tensor>,
        edge: EdgeMode,
    ) -> Result<Tensor> {
        match edge {
            // In training (autograd on) this is `vaak_nn::conv::conv1d_differentiable`, with its
            // im2col custom ops on the CPU in f32.
            EdgeMode::Causal => {
                let y = match elu_input {
                    true => self.conv.forward(&elu(x, 1.0)?)?,
                    false => self.conv.forward(x)?,
                };
                match residual {
                    Some(r) => y + r,
                    None => Ok(y),
                }
            }
            EdgeMode::Reference => {
                let cfg = self.conv.config();
                let (k, s) = (cfg.effective_kernel(), cfg.stride);
                let len = x.dim(2)?;
                // HF's `_get_extra_padding_for_conv1d` simplifies to `ceil(len/s)*s - len`.
                let extra = len.div_ceil(s) * s - len;
                let padded = pad1d(x, k.saturating_sub(s), extra, self.pad_mode)?;
                // vaak-nn's inference conv (bias fused); under autograd its differentiable form.
                let opts = Conv1dOpts::new(0, s, cfg.dilation, cfg.groups);
                let fused = Fused {
                    input_act: elu_act(elu_input),
                    residual,
                    ..Default::default()
                };
                conv1d_fused(
                    &padded,
                    self.conv.weight(),
                    self.conv.bias(),
                    opts,
                    None,
                    fused,
                )
            }
        }
    }
}

/// A SEANet conv-transpose with `trim_right_ratio = 1`: identical whole-clip and streaming.
#[derive(Clone, Debug)]
pub(crate) struct SConvTr {
    conv: CausalConvTranspose1d,
}

impl SConvTr {
    fn new(cfg: CausalConvConfig, s: &SeanetConfig, vb: VarBuilder) -> Result<Self> {
        Self::with_options(cfg, s.weight_norm, vb)
    }

    /// Loads `conv.weight` (and `conv.bias` when `cfg.bias`) under `vb`.
    pub(crate) fn with_options(
        cfg: CausalConvConfig,
        weight_norm_on: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let vb = vb.pp("conv");
        let shape = [
            cfg.in_channels,
            cfg.out_channels / cfg.groups,
            cfg.kernel_size,
        ];
        let (w, b) = load_params(&vb, &shape, &cfg, weight_norm_on)?;
        Ok(Self {
            conv: CausalConvTranspose1d::from_tensors(cfg, w, b)?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.forward(x)
    }

    pub(crate) fn streaming(&mut self) -> &mut CausalConvTranspose1d {
        &mut self.conv
    }
}

/// Multi-layer LSTM over `[B, C, T]` with a residual skip, as HF's `EncodecLSTM`. Gate order
/// and names as PyTorch `nn.LSTM`; the state is `(h, c)` per layer, `[B, H]` each.
#[derive(Clone, Debug)]
pub(crate) struct SLstm {
    /// Per layer: `W_ih^T` `[I, 4H]`, `W_hh` `[4H, H]` (as stored: one row per gate unit, the
    /// layout the CPU recurrence streams), `b_ih + b_hh` `[4H]`.
    layers: Vec<(Tensor, Tensor, Tensor)>,
    hidden: usize,
    state: Option<Vec<(Tensor, Tensor)>>,
}

impl SLstm {
    fn new(dim: usize, n_layers: usize, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("lstm");
        let std = (1.0 / dim as f64).sqrt();
        let init = Init::Uniform { lo: -std, up: std };
        let mut layers = Vec::with_capacity(n_layers);
        for l in 0..n_layers {
            let w_ih = vb.get_with_hints((4 * dim, dim), &format!("weight_ih_l{l}"), init)?;
            let w_hh = vb.get_with_hints((4 * dim, dim), &format!("weight_hh_l{l}"), init)?;
            let b_ih = vb.get_with_hints(4 * dim, &format!("bias_ih_l{l}"), init)?;
            let b_hh = vb.get_with_hints(4 * dim, &format!("bias_hh_l{l}"), init)?;
            layers.push((w_ih.t()?.contiguous()?, w_hh.contiguous()?, (b_ih + b_hh)?));
        }
        Ok(Self {
            layers,
            hidden: dim,
            state: None,
        })
    }

    fn zero_state(&self, b: usize, dtype: DType, dev: &Device) -> Result<Vec<(Tensor, Tensor)>> {
        let z = Tensor::zeros((b, self.hidden), dtype, dev)?;
        Ok(self.layers.iter().map(|_| (z.clone(), z.clone())).collect())
    }

    /// Runs over `x: [B, C, T]` from `init`, returning `lstm(x) + x` and the final states.
    fn run(
        &self,
        x: &Tensor,
        init: &[(Tensor, Tensor)],
    ) -> Result<(Tensor, Vec<(Tensor, Tensor)>)> {
        let (b, c, t) = x.dims3()?;
        let h4 = 4 * self.hidden;
        // [B, T, C], contiguous so the rank-2 matmuls below see plain rows.
        let mut inp = x.transpose(1, 2)?.contiguous()?;
        let mut finals = Vec::with_capacity(self.layers.len());
        for ((w_ih, w_hh, bias), (h0, c0)) in self.layers.iter().zip(init) {
            let width = inp.dim(2)?;
            let xp = inp
                .reshape((b * t, width))?
                .matmul(w_ih)?
                .broadcast_add(bias)?
                .reshape((b, t, h4))?;
            if let Some((out, h, cs)) = recur_cpu(&xp, w_hh, h0, c0)? {
                finals.push((h, cs));
                inp = out;
                continue;
            }
            let w_hh_t = w_hh.t()?;
            let (mut h, mut cs) = (h0.clone(), c0.clone());
            let mut outs = Vec::with_capacity(t);
            for step in 0..t {
                let gates = (xp.narrow(1, step, 1)?.squeeze(1)? + h.matmul(&w_hh_t)?)?;
                let hs = self.hidden;
                let i = candle_nn::ops::sigmoid(&gates.narrow(1, 0, hs)?)?;
                let f = candle_nn::ops::sigmoid(&gates.narrow(1, hs, hs)?)?;
                let g = gates.narrow(1, 2 * hs, hs)?.tanh()?;
                let o = candle_nn::ops::sigmoid(&gates.narrow(1, 3 * hs, hs)?)?;
                cs = ((f * &cs)? + (i * g)?)?;
                h = (o * cs.tanh()?)?;
                outs.push(h.clone());
            }
            finals.push((h, cs));
            inp = Tensor::stack(&outs, 1)?;
        }
        debug_assert_eq!(inp.dim(2)?, c);
        let y = (inp.transpose(1, 2)? + x)?;
        Ok((y, finals))
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let b = x.dim(0)?;
        let init = self.zero_state(b, x.dtype(), x.device())?;
        Ok(self.run(x, &init)?.0)
    }
}

/// Gate units per parallel task of the CPU recurrence's matrix-vector product.
const LSTM_UNITS_PER_TASK: usize = 256;

/// Outputs `[B, T, H]` and final `(h, c)` of one LSTM layer.
type LstmRun = (Tensor, Tensor, Tensor);

/// The LSTM recurrence for an untracked CPU f32 layer: `xp` `[B, T, 4H]` (the input projection
/// plus both biases), `w_hh` `[4H, H]`, states `[B, H]`; returns the outputs `[B, T, H]` and the
/// final `(h, c)`, or `None` for any other tensors. Each frame reads `w_hh` once (split across
/// the rayon pool by gate units) and updates the gates in place, where the composed candle ops
/// would make ~10 tensors per frame and run the product on one thread.
fn recur_cpu(xp: &Tensor, w_hh: &Tensor, h0: &Tensor, c0: &Tensor) -> Result<Option<LstmRun>> {
    use rayon::prelude::*;
    if ![xp, w_hh, h0, c0]
        .into_iter()
        .all(vaak_nn::cpu::is_untracked_cpu_f32)
    {
        return Ok(None);
    }
    let (b, t, h4) = xp.dims3()?;
    let hs = h4 / 4;
    let xp = xp.flatten_all()?.to_vec1::<f32>()?;
    let w = w_hh.flatten_all()?.to_vec1::<f32>()?;
    let mut h = h0.flatten_all()?.to_vec1::<f32>()?;
    let mut c = c0.flatten_all()?.to_vec1::<f32>()?;
    let mut out = vec![0f32; b * t * hs];
    let parallel = vaak_nn::cpu::candle_threads() > 1 && h4 >= 2 * LSTM_UNITS_PER_TASK;
    let tasks = h4.div_ceil(LSTM_UNITS_PER_TASK);
    // Per task: its gate units' pre-activations for every batch row, `[B, units]`.
    let mut parts: Vec<Vec<f32>> = (0..tasks)
        .map(|i| vec![0f32; b * LSTM_UNITS_PER_TASK.min(h4 - i * LSTM_UNITS_PER_TASK)])
        .collect();
    use vaak_nn::activation::{sigmoid_in_place, tanh_in_place};
    let mut gates = vec![0f32; h4];
    let mut tanh_c = vec![0f32; hs];
    for step in 0..t {
        let product = |(part, rows): (&mut Vec<f32>, &[f32])| {
            vaak_nn::transformer::rows_times_wt(&h, rows, hs, None, part);
        };
        if parallel {
            parts
                .par_iter_mut()
                .zip(w.par_chunks(LSTM_UNITS_PER_TASK * hs))
                .for_each(product);
        } else {
            parts
                .iter_mut()
                .zip(w.chunks(LSTM_UNITS_PER_TASK * hs))
                .for_each(product);
        }
        for r in 0..b {
            let xr = &xp[(r * t + step) * h4..][..h4];
            for (task, part) in parts.iter().enumerate() {
                let units = part.len() / b;
                let at = task * LSTM_UNITS_PER_TASK;
                for ((g, p), x) in gates[at..at + units]
                    .iter_mut()
                    .zip(&part[r * units..(r + 1) * units])
                    .zip(&xr[at..at + units])
                {
                    *g = p + x;
                }
            }
            // PyTorch's gate order: input, forget, cell, output.
            sigmoid_in_place(&mut gates[..2 * hs]);
            tanh_in_place(&mut gates[2 * hs..3 * hs]);
            sigmoid_in_place(&mut gates[3 * hs..]);
            let c = &mut c[r * hs..(r + 1) * hs];
            for (j, cj) in c.iter_mut().enumerate() {
                *cj = gates[hs + j] * *cj + gates[j] * gates[2 * hs + j];
            }
            tanh_c.copy_from_slice(c);
            tanh_in_place(&mut tanh_c);
            let h = &mut h[r * hs..(r + 1) * hs];
            for ((hj, o), tc) in h.iter_mut().zip(&gates[3 * hs..]).zip(&tanh_c) {
                *hj = o * tc;
            }
            out[(r * t + step) * hs..(r * t + step + 1) * hs].copy_from_slice(h);
        }
    }
    let dev = h0.device();
    Ok(Some((
        Tensor::from_vec(out, (b, t, hs), dev)?,
        Tensor::from_vec(h, (b, hs), dev)?,
        Tensor::from_vec(c, (b, hs), dev)?,
    )))
}

impl StreamingModule for SLstm {
    fn step(&mut self, xs: &StreamTensor, mask: &StreamMask) -> Result<StreamTensor> {
        let Some(x) = xs.as_option() else {
            return Ok(StreamTensor::empty());
        };
        let b = x.dim(0)?;
        let old = match self.state.take() {
            Some(s) if s[0].0.dim(0)? == b => s,
            Some(s) => {
                let prev = s[0].0.dim(0)?;
                self.state = Some(s);
                candle_core::bail!("SEANet LSTM: stream batch changed from {prev} to {b}");
            }
            None => self.zero_state(b, x.dtype(), x.device())?,
        };
        let (y, new) = self.run(x, &old)?;
        let kept = new
            .iter()
            .zip(&old)
            .map(|((h, c), (h0, c0))| Ok((mask.select(h, h0)?, mask.select(c, c0)?)))
            .collect::<Result<Vec<_>>>()?;
        self.state = Some(kept);
        Ok(StreamTensor::from_tensor(y))
    }

    fn reset_state(&mut self) {
        self.state = None;
    }

    fn reset_slots(&mut self, mask: &StreamMask) -> Result<()> {
        if let Some(s) = self.state.as_mut() {
            for (h, c) in s.iter_mut() {
                *h = zero_slots(h, mask)?;
                *c = zero_slots(c, mask)?;
            }
        }
        Ok(())
    }
}

/// SEANet residual block: `shortcut(x) + conv1x1(elu(conv_k(elu(x))))`.
#[derive(Clone, Debug)]
pub(crate) struct ResBlock {
    conv1: SConv,
    conv2: SConv,
    shortcut: Option<SConv>,
}

impl ResBlock {
    fn new(dim: usize, dilation: usize, s: &SeanetConfig, vb: VarBuilder) -> Result<Self> {
        let hidden = dim / s.compress;
        let c1 = CausalConvConfig::new(dim, hidden, s.residual_kernel_size).with_dilation(dilation);
        let c2 = CausalConvConfig::new(hidden, dim, 1);
        let shortcut = if s.conv_shortcut {
            Some(SConv::new(
                CausalConvConfig::new(dim, dim, 1),
                s,
                vb.pp("shortcut"),
            )?)
        } else {
            None
        };
        Ok(Self {
            conv1: SConv::new(c1, s, vb.pp("block.1"))?,
            conv2: SConv::new(c2, s, vb.pp("block.3"))?,
            shortcut,
        })
    }

    /// See [`SConv::forward_lengths`]; the lengths are unchanged (stride 1).
    fn forward_lengths(&self, x: &Tensor, edge: EdgeMode, lengths: &[usize]) -> Result<Tensor> {
        let (h, l) = self.conv1.forward_lengths_of(x, true, edge, lengths)?;
        let (h, _) = self.conv2.forward_lengths_of(&h, true, edge, &l)?;
        let skip = match &self.shortcut {
            Some(sc) => sc.forward_lengths(x, edge, lengths)?.0,
            None => x.clone(),
        };
        // Reference-mode convs may leave the batch wider or narrower than the input: the
        // valid frames of every item sit at the front of both.
        let t = skip.dim(2)?.min(h.dim(2)?);
        skip.narrow(2, 0, t)? + h.narrow(2, 0, t)?
    }

    fn forward(&self, x: &Tensor, edge: EdgeMode) -> Result<Tensor> {
        let h = self.conv1.forward_of(x, true, None, edge)?;
        let skip = match &self.shortcut {
            Some(sc) => sc.forward(x, edge)?,
            None => x.clone(),
        };
        // Stride 1 keeps the length in both modes, so the skip is the 1x1 conv's residual.
        self.conv2.forward_of(&h, true, Some(&skip), edge)
    }
}

impl StreamingModule for ResBlock {
    fn step(&mut self, xs: &StreamTensor, mask: &StreamMask) -> Result<StreamTensor> {
        // Stride-1 causal convs emit one frame per input frame, so both branches line up.
        let h = self.conv1.conv.step(&xs.map(|x| elu(x, 1.0))?, mask)?;
        let h = self.conv2.conv.step(&h.map(|x| elu(x, 1.0))?, mask)?;
        let skip = match &mut self.shortcut {
            Some(sc) => sc.conv.step(xs, mask)?,
            None => xs.clone(),
        };
        match (skip.as_option(), h.as_option()) {
            (Some(a), Some(b)) => Ok(StreamTensor::from_tensor((a + b)?)),
            (None, None) => Ok(StreamTensor::empty()),
            _ => candle_core::bail!("SEANet residual block: branches emitted different lengths"),
        }
    }

    fn reset_state(&mut self) {
        self.conv1.conv.reset_state();
        self.conv2.conv.reset_state();
        if let Some(sc) = &mut self.shortcut {
            sc.conv.reset_state();
        }
    }

    fn reset_slots(&mut self, mask: &StreamMask) -> Result<()> {
        self.conv1.conv.reset_slots(mask)?;
        self.conv2.conv.reset_slots(mask)?;
        if let Some(sc) = &mut self.shortcut {
            sc.conv.reset_slots(mask)?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug)]
enum Layer {
    Conv(SConv),
    ConvTr(SConvTr),
    Res(Box<ResBlock>),
    Lstm(SLstm),
    Elu,
}

impl Layer {
    fn forward(&self, x: &Tensor, edge: EdgeMode) -> Result<Tensor> {
        match self {
            Self::Conv(c) => c.forward(x, edge),
            Self::ConvTr(c) => c.conv.forward(x),
            Self::Res(r) => r.forward(x, edge),
            Self::Lstm(l) => l.forward(x),
            Self::Elu => elu(x, 1.0),
        }
    }

    /// See [`SConv::forward_lengths`]: the output and each item's valid length after it.
    fn forward_lengths(
        &self,
        x: &Tensor,
        edge: EdgeMode,
        lengths: &[usize],
    ) -> Result<(Tensor, Vec<usize>)> {
        match self {
            Self::Conv(c) => c.forward_lengths(x, edge, lengths),
            Self::ConvTr(c) => {
                let s = c.conv.config().stride;
                Ok((c.conv.forward(x)?, lengths.iter().map(|&l| l * s).collect()))
            }
            Self::Res(r) => Ok((r.forward_lengths(x, edge, lengths)?, lengths.to_vec())),
            // Causal over time: padding after an item never reaches its valid frames.
            Self::Lstm(l) => Ok((l.forward(x)?, lengths.to_vec())),
            Self::Elu => Ok((elu(x, 1.0)?, lengths.to_vec())),
        }
    }

    fn step(&mut self, xs: &StreamTensor, mask: &StreamMask) -> Result<StreamTensor> {
        match self {
            Self::Conv(c) => c.conv.step(xs, mask),
            Self::ConvTr(c) => c.conv.step(xs, mask),
            Self::Res(r) => r.step(xs, mask),
            Self::Lstm(l) => l.step(xs, mask),
            Self::Elu => xs.map(|x| elu(x, 1.0)),
        }
    }

    fn reset_state(&mut self) {
        match self {
            Self::Conv(c) => c.conv.reset_state(),
            Self::ConvTr(c) => c.conv.reset_state(),
            Self::Res(r) => r.reset_state(),
            Self::Lstm(l) => l.reset_state(),
            Self::Elu => {}
        }
    }

    fn reset_slots(&mut self, mask: &StreamMask) -> Result<()> {
        match self {
            Self::Conv(c) => c.conv.reset_slots(mask),
            Self::ConvTr(c) => c.conv.reset_slots(mask),
            Self::Res(r) => r.reset_slots(mask),
            Self::Lstm(l) => l.reset_slots(mask),
            Self::Elu => Ok(()),
        }
    }
}

/// A stack of SEANet layers (encoder or decoder) under HF's `layers.{i}` names.
#[derive(Clone, Debug)]
pub struct Seanet {
    layers: Vec<Layer>,
    in_channels: usize,
}

impl Seanet {
    /// Makes the streaming steps of the convs at the latent frame rate (the encoder's last
    /// downsampling conv and those after it, the decoder's convs up to its first upsampling
    /// one) read half-precision copies of their weights ([`StepWeights`]); [`StepWeights::F32`]
    /// drops them. Those convs hold the stack's biggest weights and a step gives them one or
    /// two frames, so reading the weight from memory is their whole cost (Mimi: 88 MB of f32
    /// per 80 ms frame). Whole-clip calls keep the f32 weights.
    pub fn set_step_weights(&mut self, kind: StepWeights) -> Result<()> {
        let total_down: usize = self
            .layers
            .iter()
            .map(|l| match l {
                Layer::Conv(c) => c.conv.config().stride,
                _ => 1,
            })
            .product();
        let (mut down, mut up) = (1, 1);
        for layer in &mut self.layers {
            match layer {
                Layer::Conv(c) => {
                    down *= c.conv.config().stride;
                    let latent = down == total_down && up == 1;
                    c.conv
                        .set_step_weights(if latent { kind } else { StepWeights::F32 })?;
                }
                Layer::ConvTr(c) => {
                    let latent = down == total_down && up == 1;
                    c.conv
                        .set_step_weights(if latent { kind } else { StepWeights::F32 })?;
                    up *= c.conv.config().stride;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The encoder: `[B, channels, T]` to `[B, dimension, T / hop]`.
    pub fn encoder(s: &SeanetConfig, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("layers");
        let mut layers = Vec::new();
        let mut push = |l: Layer| -> usize {
            layers.push(l);
            layers.len() - 1
        };
        let mut i = 0;
        let first = CausalConvConfig::new(s.channels, s.n_filters, s.kernel_size);
        push(Layer::Conv(SConv::new(first, s, vb.pp(i))?));
        i += 1;
        let mut scale = 1;
        for &ratio in s.ratios.iter().rev() {
            let dim = scale * s.n_filters;
            for j in 0..s.n_residual_layers {
                let dil = s.dilation_base.pow(j as u32);
                push(Layer::Res(Box::new(ResBlock::new(dim, dil, s, vb.pp(i))?)));
                i += 1;
            }
            push(Layer::Elu);
            i += 1;
            let down = CausalConvConfig::new(dim, dim * 2, ratio * 2).with_stride(ratio);
            push(Layer::Conv(SConv::new(down, s, vb.pp(i))?));
            i += 1;
            scale *= 2;
        }
        let dim = scale * s.n_filters;
        if s.lstm_layers > 0 {
            push(Layer::Lstm(SLstm::new(dim, s.lstm_layers, vb.pp(i))?));
            i += 1;
        }
        push(Layer::Elu);
        i += 1;
        let last = CausalConvConfig::new(dim, s.dimension, s.last_kernel_size);
        push(Layer::Conv(SConv::new(last, s, vb.pp(i))?));
        Ok(Self {
            layers,
            in_channels: s.channels,
        })
    }

    /// The decoder: `[B, dimension, F]` to `[B, channels, F * hop]`.
    pub fn decoder(s: &SeanetConfig, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("layers");
        let mut layers = Vec::new();
        let mut i = 0;
        let mut scale = 1usize << s.ratios.len();
        let first = CausalConvConfig::new(s.dimension, scale * s.n_filters, s.kernel_size);
        layers.push(Layer::Conv(SConv::new(first, s, vb.pp(i))?));
        i += 1;
        if s.lstm_layers > 0 {
            let dim = scale * s.n_filters;
            layers.push(Layer::Lstm(SLstm::new(dim, s.lstm_layers, vb.pp(i))?));
            i += 1;
        }
        for &ratio in &s.ratios {
            let dim = scale * s.n_filters;
            layers.push(Layer::Elu);
            i += 1;
            let up = CausalConvConfig::new(dim, dim / 2, ratio * 2).with_stride(ratio);
            layers.push(Layer::ConvTr(SConvTr::new(up, s, vb.pp(i))?));
            i += 1;
            for j in 0..s.n_residual_layers {
                let dil = s.dilation_base.pow(j as u32);
                layers.push(Layer::Res(Box::new(ResBlock::new(
                    dim / 2,
                    dil,
                    s,
                    vb.pp(i),
                )?)));
                i += 1;
            }
            scale /= 2;
        }
        layers.push(Layer::Elu);
        i += 1;
        let last = CausalConvConfig::new(s.n_filters, s.channels, s.last_kernel_size);
        layers.push(Layer::Conv(SConv::new(last, s, vb.pp(i))?));
        Ok(Self {
            layers,
            in_channels: s.dimension,
        })
    }

    /// Channels the stack expects.
    pub fn in_channels(&self) -> usize {
        self.in_channels
    }

    /// Whole-clip forward of a zero-padded batch whose item `i` holds `lengths[i]` valid
    /// samples: the output and each item's valid frames in it, which equal [`Self::forward`]
    /// on that item alone.
    pub fn forward_lengths(
        &self,
        x: &Tensor,
        edge: EdgeMode,
        lengths: &[usize],
    ) -> Result<(Tensor, Vec<usize>)> {
        if lengths.len() != x.dim(0)?
            || lengths.iter().any(|&l| l == 0 || l > x.dim(2).unwrap_or(0))
        {
            candle_core::bail!(
                "Seanet::forward_lengths: lengths {lengths:?} do not fit a batch of shape {:?}",
                x.dims()
            );
        }
        let mut h = x.clone();
        let mut lens = lengths.to_vec();
        let mut layers = self.layers.iter().peekable();
        while let Some(l) = layers.next() {
            (h, lens) = match (l, layers.peek()) {
                (Layer::Elu, Some(Layer::Conv(c))) => {
                    layers.next();
                    c.forward_lengths_of(&h, true, edge, &lens)?
                }
                _ => l.forward_lengths(&h, edge, &lens)?,
            };
        }
        Ok((h, lens))
    }

    /// Whole-clip forward.
    pub fn forward(&self, x: &Tensor, edge: EdgeMode) -> Result<Tensor> {
        let mut h = x.clone();
        let mut layers = self.layers.iter().peekable();
        while let Some(l) = layers.next() {
            h = match (l, layers.peek()) {
                // The ELU before a conv is read into the conv's input window instead.
                (Layer::Elu, Some(Layer::Conv(c))) => {
                    layers.next();
                    c.forward_of(&h, true, None, edge)?
                }
                _ => l.forward(&h, edge)?,
            };
        }
        Ok(h)
    }
}

impl StreamingModule for Seanet {
    fn step(&mut self, xs: &StreamTensor, mask: &StreamMask) -> Result<StreamTensor> {
        let mut h = xs.clone();
        for l in &mut self.layers {
            h = l.step(&h, mask)?;
        }
        Ok(h)
    }

    fn reset_state(&mut self) {
        for l in &mut self.layers {
            l.reset_state();
        }
    }

    fn reset_slots(&mut self, mask: &StreamMask) -> Result<()> {
        for l in &mut self.layers {
            l.reset_slots(mask)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_pad_matches_torch() -> Result<()> {
        let x = Tensor::arange(0f32, 5., &Device::Cpu)?.reshape((1, 1, 5))?;
        let y = pad1d(&x, 3, 2, PadMode::Reflect)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert_eq!(y, vec![3., 2., 1., 0., 1., 2., 3., 4., 3., 2.]);
        // Shorter than the pad: zeros appended first (HF `_pad1d`), then cut.
        let x = Tensor::new(&[[[1f32, 2.]]], &Device::Cpu)?;
        let y = pad1d(&x, 3, 0, PadMode::Reflect)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        // torch: pad([1,2,0,0], (3,0), reflect) = [0,0,2,1,2,0,0] -> drop the 2 appended zeros.
        assert_eq!(y, vec![0., 0., 2., 1., 2.]);
        Ok(())
    }

    /// The CPU recurrence against the composed candle ops (the path autograd and other
    /// devices take), over a batch of 2 and both layers (the rayon split is on wherever candle uses more
    /// than one thread).
    #[test]
    fn cpu_lstm_recurrence_equals_the_composed_ops() -> Result<()> {
        let dev = Device::Cpu;
        // 4H = 1024 gate units: four parallel tasks.
        let dim = 256;
        let vm = candle_nn::VarMap::new();
        let lstm = SLstm::new(dim, 2, VarBuilder::from_varmap(&vm, DType::F32, &dev))?;
        let x = Tensor::randn(0f32, 1., (2, dim, 9), &dev)?;
        let init = lstm.zero_state(2, DType::F32, &dev)?;
        // Tracked weights send `run` down the composed path.
        let tracked: Vec<(Tensor, Tensor, Tensor)> = lstm
            .layers
            .iter()
            .map(|(a, b, c)| {
                let var =
                    |t: &Tensor| candle_core::Var::from_tensor(t).map(|v| v.as_tensor().clone());
                Ok((var(a)?, var(b)?, var(c)?))
            })
            .collect::<Result<_>>()?;
        let composed = SLstm {
            layers: tracked,
            ..lstm.clone()
        };
        let (want, want_state) = composed.run(&x, &init)?;
        let (got, got_state) = lstm.run(&x, &init)?;
        let max_diff = |a: &Tensor, b: &Tensor| -> Result<f32> {
            (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
        };
        assert!(max_diff(&got, &want)? < 1e-5);
        for ((h, c), (wh, wc)) in got_state.iter().zip(&want_state) {
            assert!(max_diff(h, wh)? < 1e-5 && max_diff(c, wc)? < 1e-5);
        }
        Ok(())
    }
}
