//! Residual vector quantization: codebooks, the residual stack with optional input/output
//! projections and variable bitrate, and the training tools (k-means initialisation, EMA
//! codebook updates with Laplace smoothing, dead-code restart, straight-through quantization
//! with a commitment loss, and seeded quantizer dropout).
//!
//! # Tensor names (relative to the `VarBuilder` given to [`ResidualVq::new`])
//!
//! | name                          | shape                                  |
//! |-------------------------------|----------------------------------------|
//! | `layers.{i}.codebook.embed`   | `[codebook_size, codebook_dim]`        |
//! | `input_proj.weight`           | `[codebook_dim, dim]` (or `[.., .., 1]`, a 1x1 conv) |
//! | `output_proj.weight`          | `[dim, codebook_dim]` (or `[.., .., 1]`) |
//!
//! The projections exist when [`RvqConfig::codebook_dim`] is set. [`ResidualVq::load_codec`]
//! reads the layouts codecs publish: projections as 1x1 convs only, and codebooks as `embed` or
//! as Mimi's `embed_sum` / `cluster_usage` pair ([`CodebookStorage`]).
//!
//! Nearest neighbours use `argmin_k (‖e_k‖² − 2 x·e_k)`: the `‖x‖²` term of the squared L2
//! distance is the same for every code, so it is dropped, and the rest is one matmul.

use candle_core::{DType, Device, IndexOp, Result, Tensor, D};
use candle_nn::{Init, VarBuilder};
use rand::Rng;
use serde::Deserialize;

/// A table of `K` code vectors of width `D`, with their squared norms cached.
#[derive(Clone, Debug)]
pub struct Codebook {
    embed: Tensor,
    /// f32 copy used for distances, so half-precision codebooks still pick exact neighbours.
    embed_f32: Tensor,
    embed_sq: Tensor,
}

impl Codebook {
    /// Wraps `embed: [K, D]` (a float tensor with `K >= 1`).
    pub fn new(embed: Tensor) -> Result<Self> {
        let (k, _) = embed.dims2()?;
        if k == 0 {
            candle_core::bail!("Codebook: needs at least one entry");
        }
        if !embed.dtype().is_float() {
            candle_core::bail!(
                "Codebook: embeddings must be float, got {:?}",
                embed.dtype()
            );
        }
        let embed = embed.contiguous()?;
        let embed_f32 = embed.to_dtype(DType::F32)?;
        let embed_sq = embed_f32.sqr()?.sum(D::Minus1)?;
        Ok(Self {
            embed,
            embed_f32,
            embed_sq,
        })
    }

    /// Loads `embed` of shape `[size, dim]` from `vb`.
    pub fn load(size: usize, dim: usize, vb: VarBuilder) -> Result<Self> {
        Self::new(vb.get((size, dim), "embed")?)
    }

    pub fn embed(&self) -> &Tensor {
        &self.embed
    }

    /// Number of entries `K`.
    pub fn size(&self) -> usize {
        self.embed.dims()[0]
    }

    /// Width `D` of an entry.
    pub fn dim(&self) -> usize {
        self.embed.dims()[1]
    }

    /// Index of the nearest entry (squared L2) for each row of `x: [N, D]`, as `[N]` u32.
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        let (_, d) = x.dims2()?;
        if d != self.dim() {
            candle_core::bail!(
                "Codebook::encode: input width {d}, codebook width {}",
                self.dim()
            );
        }
        let x = x.to_dtype(DType::F32)?;
        let dots = x.matmul(&self.embed_f32.t()?)?;
        let dist = self.embed_sq.unsqueeze(0)?.broadcast_sub(&(dots * 2.0)?)?;
        dist.argmin(D::Minus1)
    }

    /// Entries for `codes` of any shape `S` (integer dtype), as `S × [D]`.
    pub fn decode(&self, codes: &Tensor) -> Result<Tensor> {
        check_codes(codes, self.size(), "Codebook::decode")?;
        let flat = codes.flatten_all()?.to_dtype(DType::U32)?;
        let mut shape = codes.dims().to_vec();
        shape.push(self.dim());
        self.embed.index_select(&flat, 0)?.reshape(shape)
    }
}

/// How a checkpoint stores each codebook of a [`ResidualVq`] (see [`ResidualVq::load_codec`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CodebookStorage {
    /// `embed` `[K, D]` (EnCodec, vaak).
    #[default]
    Embed,
    /// `embed_sum` `[K, D]` and `cluster_usage` `[K]`; the entries are
    /// `embed_sum / cluster_usage.clamp(min = 1e-5)` (Mimi as transformers publishes it).
    EmbedSum,
}

impl Codebook {
    /// Loads a `[size, dim]` codebook stored as `storage` says. A `VarMap` behind `vb` creates
    /// missing tensors as N(0, 1) entries (and usage 1).
    pub fn load_stored(
        size: usize,
        dim: usize,
        storage: CodebookStorage,
        vb: VarBuilder,
    ) -> Result<Self> {
        let randn = Init::Randn {
            mean: 0.0,
            stdev: 1.0,
        };
        let embed = match storage {
            CodebookStorage::Embed => vb.get_with_hints((size, dim), "embed", randn)?,
            CodebookStorage::EmbedSum => {
                let sum = vb.get_with_hints((size, dim), "embed_sum", randn)?;
                let usage = vb.get_with_hints(size, "cluster_usage", Init::Const(1.0))?;
                sum.broadcast_div(&usage.clamp(1e-5, f64::INFINITY)?.unsqueeze(1)?)?
            }
        };
        Self::new(embed)
    }
}

/// Errors unless `codes` is an integer tensor with every value in `0..size`.
fn check_codes(codes: &Tensor, size: usize, what: &str) -> Result<()> {
    if !matches!(codes.dtype(), DType::U8 | DType::U32 | DType::I64) {
        candle_core::bail!(
            "{what}: codes must be u8, u32 or i64, got {:?}",
            codes.dtype()
        );
    }
    if codes.elem_count() == 0 {
        return Ok(());
    }
    let flat = codes.flatten_all()?.to_dtype(DType::I64)?;
    let lo = flat.min(0)?.to_scalar::<i64>()?;
    let hi = flat.max(0)?.to_scalar::<i64>()?;
    if lo < 0 || hi >= size as i64 {
        candle_core::bail!(
            "{what}: code {} out of range 0..{size}",
            if lo < 0 { lo } else { hi }
        );
    }
    Ok(())
}

/// Shape of a [`ResidualVq`]; deserialisable from a model config.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct RvqConfig {
    /// Width of the input and output features.
    pub dim: usize,
    /// Width of the codebooks; `Some` adds input/output projections.
    #[serde(default)]
    pub codebook_dim: Option<usize>,
    pub n_q: usize,
    pub codebook_size: usize,
}

/// Result of [`ResidualVq::quantize_train`].
#[derive(Debug)]
pub struct RvqTrainOutput {
    /// `[B, dim, T]`: forward value = quantized, gradient = identity to the input.
    pub quantized: Tensor,
    /// `[B, n_q, T]` u32; entries of stages an item did not use (dropout) carry no meaning.
    pub codes: Tensor,
    /// Mean over the used stages of the mean squared distance between each stage's input
    /// residual and its (detached) code vector; gradient flows to the encoder only.
    pub commitment_loss: Tensor,
    /// Per stage, the detached residual rows `[M_i, codebook_dim]` of the items that used the
    /// stage and their codes `[M_i]`, ready for [`EmaCodebook::update`].
    pub stages: Vec<(Tensor, Tensor)>,
}

/// A stack of codebooks, each quantizing the residual the previous ones left.
#[derive(Clone, Debug)]
pub struct ResidualVq {
    codebooks: Vec<Codebook>,
    input_proj: Option<Tensor>,
    output_proj: Option<Tensor>,
    dim: usize,
}

fn proj_weight(vb: &VarBuilder, out: usize, inp: usize, name: &str) -> Result<Tensor> {
    let pv = vb.pp(name);
    if let Ok(w) = pv.get((out, inp), "weight") {
        return Ok(w);
    }
    // Accept 1x1 convolution weights as published codecs store them.
    pv.get((out, inp, 1), "weight")?.squeeze(2)
}

impl ResidualVq {
    /// Loads codebooks (and projections) named as in the module doc.
    pub fn new(cfg: &RvqConfig, vb: VarBuilder) -> Result<Self> {
        let cb_dim = cfg.codebook_dim.unwrap_or(cfg.dim);
        let codebooks = (0..cfg.n_q)
            .map(|i| {
                Codebook::load(
                    cfg.codebook_size,
                    cb_dim,
                    vb.pp(format!("layers.{i}.codebook")),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let (ip, op) = match cfg.codebook_dim {
            Some(c) => (
                Some(proj_weight(&vb, c, cfg.dim, "input_proj")?),
                Some(proj_weight(&vb, cfg.dim, c, "output_proj")?),
            ),
            None => (None, None),
        };
        Self::from_parts(codebooks, ip, op)
    }

    /// Loads a codec's quantizer as EnCodec and Mimi publish it: `layers.{i}.codebook.*` stored
    /// as `storage`, and with `cfg.codebook_dim` the projections as 1x1 conv weights,
    /// `input_proj.weight` `[codebook_dim, dim, 1]` and `output_proj.weight`
    /// `[dim, codebook_dim, 1]`. A `VarMap` behind `vb` creates missing tensors in exactly
    /// these shapes (codebooks as [`Codebook::load_stored`], projections N(0, 1 / dim)).
    pub fn load_codec(cfg: &RvqConfig, storage: CodebookStorage, vb: VarBuilder) -> Result<Self> {
        let (input_proj, output_proj) = match cfg.codebook_dim {
            Some(c) => {
                let init = Init::Randn {
                    mean: 0.0,
                    stdev: (1.0 / cfg.dim as f64).sqrt(),
                };
                let i = vb.get_with_hints((c, cfg.dim, 1), "input_proj.weight", init)?;
                let o = vb.get_with_hints((cfg.dim, c, 1), "output_proj.weight", init)?;
                (Some(i.squeeze(2)?), Some(o.squeeze(2)?))
            }
            None => (None, None),
        };
        let cb_dim = cfg.codebook_dim.unwrap_or(cfg.dim);
        let codebooks = (0..cfg.n_q)
            .map(|q| {
                let cvb = vb.pp("layers").pp(q).pp("codebook");
                Codebook::load_stored(cfg.codebook_size, cb_dim, storage, cvb)
            })
            .collect::<Result<Vec<_>>>()?;
        Self::from_parts(codebooks, input_proj, output_proj)
    }

    /// Assembles a stack; projections are `[codebook_dim, dim]` and `[dim, codebook_dim]`.
    pub fn from_parts(
        codebooks: Vec<Codebook>,
        input_proj: Option<Tensor>,
        output_proj: Option<Tensor>,
    ) -> Result<Self> {
        let Some(first) = codebooks.first() else {
            candle_core::bail!("ResidualVq: needs at least one codebook");
        };
        let (k, c) = (first.size(), first.dim());
        if codebooks.iter().any(|cb| cb.size() != k || cb.dim() != c) {
            candle_core::bail!("ResidualVq: codebooks differ in size or width");
        }
        let dim = match (&input_proj, &output_proj) {
            (None, None) => c,
            (Some(i), Some(o)) => {
                let (ic, id) = i.dims2()?;
                let (od, oc) = o.dims2()?;
                if ic != c || oc != c || id != od {
                    candle_core::bail!(
                        "ResidualVq: projections {:?} / {:?} do not fit codebook width {c}",
                        i.shape(),
                        o.shape()
                    );
                }
                id
            }
            _ => candle_core::bail!("ResidualVq: give both projections or neither"),
        };
        Ok(Self {
            codebooks,
            input_proj,
            output_proj,
            dim,
        })
    }

    pub fn n_q(&self) -> usize {
        self.codebooks.len()
    }

    pub fn codebook_size(&self) -> usize {
        self.codebooks[0].size()
    }

    /// Width of the input/output features.
    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn codebooks(&self) -> &[Codebook] {
        &self.codebooks
    }

    /// Whether input/output projections surround the codebooks.
    pub fn has_projections(&self) -> bool {
        self.input_proj.is_some()
    }

    /// Replaces codebook `i` (e.g. after an EMA update); size and width must match.
    pub fn set_codebook(&mut self, i: usize, cb: Codebook) -> Result<()> {
        let n = self.n_q();
        let old = self.codebooks.get(i).ok_or_else(|| {
            candle_core::Error::Msg(format!("ResidualVq: no codebook {i} of {n}"))
        })?;
        if old.size() != cb.size() || old.dim() != cb.dim() {
            candle_core::bail!("ResidualVq::set_codebook: shape differs from codebook {i}");
        }
        self.codebooks[i] = cb;
        Ok(())
    }

    /// `[B, dim, T]` -> rows `[B*T, codebook_dim]` in codebook space.
    fn to_rows(&self, x: &Tensor) -> Result<(Tensor, usize, usize)> {
        let (b, d, t) = x.dims3()?;
        if d != self.dim {
            candle_core::bail!(
                "ResidualVq: input {:?} should be [batch, {}, time]",
                x.shape(),
                self.dim
            );
        }
        let rows = x.transpose(1, 2)?.reshape((b * t, d))?;
        let rows = match &self.input_proj {
            Some(w) => rows.matmul(&w.t()?)?,
            None => rows,
        };
        Ok((rows, b, t))
    }

    /// Rows `[B*T, codebook_dim]` -> `[B, dim, T]`.
    fn rows_to_features(&self, rows: &Tensor, b: usize, t: usize) -> Result<Tensor> {
        let rows = match &self.output_proj {
            Some(w) => rows.matmul(&w.t()?)?,
            None => rows.clone(),
        };
        rows.reshape((b, t, self.dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// Codes `[B, n_q, T]` (u32) with every codebook.
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        self.encode_n(x, self.n_q())
    }

    /// Codes `[B, n, T]` with the first `n` codebooks only (a lower bitrate).
    pub fn encode_n(&self, x: &Tensor, n: usize) -> Result<Tensor> {
        if n == 0 || n > self.n_q() {
            candle_core::bail!("ResidualVq::encode_n: n = {n} not in 1..={}", self.n_q());
        }
        let (rows, b, t) = self.to_rows(x)?;
        // Residuals in f32: half-precision subtraction would drift stage after stage.
        let mut res = rows.to_dtype(DType::F32)?;
        let mut codes = Vec::with_capacity(n);
        for cb in &self.codebooks[..n] {
            let c = cb.encode(&res)?;
            res = (res - cb.embed_f32.index_select(&c, 0)?)?;
            codes.push(c);
        }
        Tensor::stack(&codes, 0)?
            .reshape((n, b, t))?
            .transpose(0, 1)?
            .contiguous()
    }

    /// Features `[B, dim, T]` for codes `[B, n, T]`, `n <= n_q` (the first `n` codebooks).
    pub fn decode(&self, codes: &Tensor) -> Result<Tensor> {
        let (b, n, t) = codes.dims3()?;
        if n == 0 || n > self.n_q() {
            candle_core::bail!(
                "ResidualVq::decode: {n} codebooks given, have {}",
                self.n_q()
            );
        }
        check_codes(codes, self.codebook_size(), "ResidualVq::decode")?;
        let codes = codes.to_dtype(DType::U32)?;
        let mut acc: Option<Tensor> = None;
        for (i, cb) in self.codebooks[..n].iter().enumerate() {
            let c = codes.i((.., i, ..))?.flatten_all()?;
            let q = cb.embed.index_select(&c, 0)?;
            acc = Some(match acc {
                None => q,
                Some(a) => (a + q)?,
            });
        }
        self.rows_to_features(&acc.expect("n >= 1"), b, t)
    }

    /// Codebook `q`'s vectors for `codes: [B, T]`, as `[B, codebook_dim, T]` (no projection).
    pub fn lookup(&self, q: usize, codes: &Tensor) -> Result<Tensor> {
        let cb = self.codebooks.get(q).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "ResidualVq::lookup: no codebook {q} of {}",
                self.n_q()
            ))
        })?;
        let (_, _) = codes.dims2()?;
        cb.decode(codes)?.transpose(1, 2)?.contiguous()
    }

    /// Training forward: straight-through quantization of `x: [B, dim, T]` where item `b` uses
    /// the first `n_q_per_item[b]` codebooks (see [`sample_n_q`]). Codebooks get no gradient
    /// (they learn by EMA); projections and the encoder do.
    pub fn quantize_train(&self, x: &Tensor, n_q_per_item: &[usize]) -> Result<RvqTrainOutput> {
        let (rows, b, t) = self.to_rows(x)?;
        if n_q_per_item.len() != b {
            candle_core::bail!(
                "ResidualVq::quantize_train: {} n_q values for batch {b}",
                n_q_per_item.len()
            );
        }
        if let Some(&bad) = n_q_per_item.iter().find(|&&n| n == 0 || n > self.n_q()) {
            candle_core::bail!(
                "ResidualVq::quantize_train: n_q {bad} not in 1..={}",
                self.n_q()
            );
        }
        let dev = x.device();
        let Some(&max_n) = n_q_per_item.iter().max() else {
            candle_core::bail!("ResidualVq::quantize_train: empty batch");
        };
        let mut res = rows.clone();
        let mut quant = rows.zeros_like()?;
        let mut codes = Vec::with_capacity(self.n_q());
        let mut stages = Vec::new();
        let mut commit = Vec::new();
        for (i, cb) in self.codebooks.iter().enumerate() {
            let c = cb.encode(&res.detach())?;
            codes.push(c.clone());
            if i >= max_n {
                continue;
            }
            let q = cb.embed.index_select(&c, 0)?.detach();
            // Rows of the items that use stage i.
            let keep: Vec<u32> = (0..b * t)
                .filter(|r| n_q_per_item[r / t] > i)
                .map(|r| r as u32)
                .collect();
            let m: Vec<f32> = (0..b * t)
                .map(|r| (n_q_per_item[r / t] > i) as u8 as f32)
                .collect();
            let m = Tensor::from_vec(m, (b * t, 1), dev)?.to_dtype(rows.dtype())?;
            let qm = q.broadcast_mul(&m)?;
            let diff = (res.broadcast_mul(&m)? - &qm)?;
            let denom = (keep.len() * cb.dim()) as f64;
            commit.push((diff.sqr()?.sum_all()? / denom)?);
            let n_keep = keep.len();
            let keep_idx = Tensor::from_vec(keep, n_keep, dev)?;
            stages.push((
                res.detach().index_select(&keep_idx, 0)?,
                c.index_select(&keep_idx, 0)?,
            ));
            quant = (quant + &qm)?;
            res = (res - qm)?;
        }
        // Straight-through: value of the quantized rows, gradient of the identity.
        let st = (&rows + (quant - &rows)?.detach())?;
        let quantized = self.rows_to_features(&st, b, t)?;
        let codes = Tensor::stack(&codes, 0)?
            .reshape((self.n_q(), b, t))?
            .transpose(0, 1)?
            .contiguous()?;
        let commitment_loss = (Tensor::stack(&commit, 0)?.sum_all()? / commit.len() as f64)?;
        Ok(RvqTrainOutput {
            quantized,
            codes,
            commitment_loss,
            stages,
        })
    }
}

/// Quantizer dropout: how many codebooks each of `batch` items uses this step. With
/// probability `prob` a draw is uniform in `1..=n_q`, else `n_q`; `per_item` draws once per
/// item, otherwise once for the whole batch.
pub fn sample_n_q<R: Rng>(
    rng: &mut R,
    batch: usize,
    n_q: usize,
    prob: f64,
    per_item: bool,
) -> Vec<usize> {
    let draw = |rng: &mut R| {
        if n_q > 1 && rng.random::<f64>() < prob {
            rng.random_range(1..=n_q)
        } else {
            n_q
        }
    };
    if per_item {
        (0..batch).map(|_| draw(rng)).collect()
    } else {
        let n = draw(rng);
        vec![n; batch]
    }
}

/// Seeded k-means: k-means++ seeding, then `iters` Lloyd iterations on `data: [N, D]`;
/// returns `[k, D]` centres. With `N < k` the centres are `k` rows drawn with replacement
/// (duplicates are then expected; dead-code restart separates them during training). A
/// cluster that loses all its points keeps its previous centre.
pub fn kmeans_init<R: Rng>(data: &Tensor, k: usize, iters: usize, rng: &mut R) -> Result<Tensor> {
    let (n, d) = data.dims2()?;
    if k == 0 || n == 0 {
        candle_core::bail!("kmeans_init: need k >= 1 and data rows, got k = {k}, N = {n}");
    }
    let data = data.to_dtype(DType::F32)?.contiguous()?;
    if n < k {
        let idx: Vec<u32> = (0..k).map(|_| rng.random_range(0..n) as u32).collect();
        return data.index_select(&Tensor::from_vec(idx, k, data.device())?, 0);
    }
    let dev = data.device().clone();
    let row_sq = data.sqr()?.sum(D::Minus1)?;
    let dist_to = |c: &Tensor| -> Result<Vec<f32>> {
        // ‖x − c‖² for every row.
        let dot = data.matmul(&c.reshape((d, 1))?)?.squeeze(1)?;
        let c_sq = c.sqr()?.sum_all()?;
        row_sq
            .broadcast_add(&c_sq)?
            .sub(&(dot * 2.0)?)?
            .relu()?
            .to_vec1::<f32>()
    };
    let mut chosen = vec![rng.random_range(0..n)];
    let mut best = dist_to(&data.i(chosen[0])?)?;
    while chosen.len() < k {
        let total: f64 = best.iter().map(|&v| v as f64).sum();
        let next = if total <= 0.0 {
            // Fewer distinct points than k: any row will do.
            rng.random_range(0..n)
        } else {
            let mut u = rng.random::<f64>() * total;
            let mut pick = n - 1;
            for (i, &v) in best.iter().enumerate() {
                u -= v as f64;
                if u < 0.0 {
                    pick = i;
                    break;
                }
            }
            pick
        };
        chosen.push(next);
        for (b, nd) in best.iter_mut().zip(dist_to(&data.i(next)?)?) {
            *b = b.min(nd);
        }
    }
    let idx: Vec<u32> = chosen.iter().map(|&i| i as u32).collect();
    let mut centres = data.index_select(&Tensor::from_vec(idx, k, &dev)?, 0)?;
    for _ in 0..iters {
        let codes = Codebook::new(centres.clone())?.encode(&data)?;
        let (sums, counts) = cluster_sums(&data, &codes, k)?;
        let safe = counts.maximum(1f32)?.unsqueeze(1)?;
        let means = sums.broadcast_div(&safe)?;
        let has = counts.gt(0f32)?.unsqueeze(1)?.broadcast_as((k, d))?;
        centres = has.where_cond(&means, &centres)?;
    }
    Ok(centres)
}

/// Per-code sums `[K, D]` and counts `[K]` (f32) of `x: [N, D]` under `codes: [N]`.
fn cluster_sums(x: &Tensor, codes: &Tensor, k: usize) -> Result<(Tensor, Tensor)> {
    let (n, d) = x.dims2()?;
    let x = x.to_dtype(DType::F32)?;
    let codes = codes.to_dtype(DType::U32)?;
    let sums = Tensor::zeros((k, d), DType::F32, x.device())?.index_add(&codes, &x, 0)?;
    let ones = Tensor::ones(n, DType::F32, x.device())?;
    let counts = Tensor::zeros(k, DType::F32, x.device())?.index_add(&codes, &ones, 0)?;
    Ok((sums, counts))
}

/// A codebook learnt by exponential moving averages of cluster sizes and sums (VQ-VAE-2 /
/// SoundStream style), with Laplace smoothing and dead-code restart. State is kept in f32.
#[derive(Clone, Debug)]
pub struct EmaCodebook {
    codebook: Codebook,
    cluster_size: Tensor,
    embed_sum: Tensor,
    /// Weight of the old statistics in each update, e.g. 0.99.
    pub decay: f64,
    /// Laplace smoothing mass per code, e.g. 1e-5.
    pub epsilon: f64,
    /// EMA usage below which a code counts as dead and is restarted, e.g. 2.0.
    pub threshold: f64,
}

impl EmaCodebook {
    /// Starts from `embed: [K, D]` (e.g. from [`kmeans_init`]); every code starts with usage 1,
    /// so that a fresh code is not immediately declared dead.
    pub fn new(embed: Tensor, decay: f64, epsilon: f64, threshold: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&decay) || epsilon < 0.0 {
            candle_core::bail!("EmaCodebook: decay {decay} must be in [0, 1), epsilon >= 0");
        }
        let embed = embed.to_dtype(DType::F32)?;
        let k = embed.dim(0)?;
        Ok(Self {
            cluster_size: Tensor::ones(k, DType::F32, embed.device())?,
            embed_sum: embed.copy()?,
            codebook: Codebook::new(embed)?,
            decay,
            epsilon,
            threshold,
        })
    }

    /// Restores a saved state: `embed` and `cluster_size` (`embed_sum = embed * smoothed size`
    /// is recomputed so that the next update continues exactly).
    pub fn from_state(
        embed: Tensor,
        cluster_size: Tensor,
        decay: f64,
        epsilon: f64,
        threshold: f64,
    ) -> Result<Self> {
        let mut s = Self::new(embed, decay, epsilon, threshold)?;
        if cluster_size.dims() != [s.codebook.size()] {
            candle_core::bail!(
                "EmaCodebook: cluster_size {:?} should be [K]",
                cluster_size.shape()
            );
        }
        s.cluster_size = cluster_size.to_dtype(DType::F32)?;
        s.embed_sum = s
            .codebook
            .embed
            .broadcast_mul(&s.smoothed_sizes()?.unsqueeze(1)?)?;
        Ok(s)
    }

    pub fn codebook(&self) -> &Codebook {
        &self.codebook
    }

    /// EMA usage per code `[K]`.
    pub fn cluster_size(&self) -> &Tensor {
        &self.cluster_size
    }

    /// EMA sum of assigned vectors per code `[K, D]`.
    pub fn embed_sum(&self) -> &Tensor {
        &self.embed_sum
    }

    /// `(n_k + ε) / (n + K ε) · n`: keeps every size positive while preserving the total.
    fn smoothed_sizes(&self) -> Result<Tensor> {
        let k = self.codebook.size() as f64;
        let n = self.cluster_size.sum_all()?.to_scalar::<f32>()? as f64;
        (&self.cluster_size + self.epsilon)? * (n / (n + k * self.epsilon))
    }

    /// One EMA step with the vectors `x: [N, D]` assigned to `codes: [N]`:
    /// `n_k ← γ n_k + (1−γ) count_k`, `m_k ← γ m_k + (1−γ) Σ x`, `e_k = m_k / ñ_k` with `ñ`
    /// the Laplace-smoothed sizes.
    pub fn update(&mut self, x: &Tensor, codes: &Tensor) -> Result<()> {
        let (n, d) = x.dims2()?;
        if d != self.codebook.dim() || codes.dims() != [n] {
            candle_core::bail!(
                "EmaCodebook::update: x {:?} and codes {:?} should be [N, {}] and [N]",
                x.shape(),
                codes.shape(),
                self.codebook.dim()
            );
        }
        check_codes(codes, self.codebook.size(), "EmaCodebook::update")?;
        let (sums, counts) = cluster_sums(&x.detach(), codes, self.codebook.size())?;
        let g = self.decay;
        self.cluster_size = ((&self.cluster_size * g)? + (counts * (1.0 - g))?)?;
        self.embed_sum = ((&self.embed_sum * g)? + (sums * (1.0 - g))?)?;
        let sizes = self.smoothed_sizes()?.unsqueeze(1)?;
        self.codebook = Codebook::new(self.embed_sum.broadcast_div(&sizes)?)?;
        Ok(())
    }

    /// Replaces every code whose EMA usage is below `threshold` by a row of `x: [N, D]` drawn
    /// with `rng` (with replacement when there are more dead codes than rows); such a code
    /// restarts with usage `threshold` and a matching sum. Returns the restarted indices.
    pub fn restart_dead_codes<R: Rng>(&mut self, x: &Tensor, rng: &mut R) -> Result<Vec<usize>> {
        let (n, d) = x.dims2()?;
        if d != self.codebook.dim() {
            candle_core::bail!(
                "EmaCodebook::restart_dead_codes: x width {d} != {}",
                self.codebook.dim()
            );
        }
        let sizes = self.cluster_size.to_vec1::<f32>()?;
        let dead: Vec<usize> = sizes
            .iter()
            .enumerate()
            .filter(|(_, &s)| (s as f64) < self.threshold)
            .map(|(i, _)| i)
            .collect();
        if dead.is_empty() {
            return Ok(dead);
        }
        if n == 0 {
            candle_core::bail!("EmaCodebook::restart_dead_codes: empty batch");
        }
        let k = self.codebook.size();
        let dev = x.device().clone();
        let picks: Vec<u32> = if dead.len() <= n {
            rand::seq::index::sample(rng, n, dead.len())
                .into_iter()
                .map(|i| i as u32)
                .collect()
        } else {
            (0..dead.len())
                .map(|_| rng.random_range(0..n) as u32)
                .collect()
        };
        let samples = x
            .detach()
            .to_dtype(DType::F32)?
            .index_select(&Tensor::from_vec(picks, dead.len(), &dev)?, 0)?;
        // Scatter the samples into the dead rows; live rows keep their bits.
        let mut row_of = vec![u32::MAX; k];
        for (j, &c) in dead.iter().enumerate() {
            row_of[c] = j as u32;
        }
        let is_dead: Vec<u8> = row_of.iter().map(|&r| (r != u32::MAX) as u8).collect();
        let gather: Vec<u32> = row_of
            .iter()
            .map(|&r| if r == u32::MAX { 0 } else { r })
            .collect();
        let spread = samples.index_select(&Tensor::from_vec(gather, k, &dev)?, 0)?;
        let m = Tensor::from_vec(is_dead, (k, 1), &dev)?;
        let embed = m
            .broadcast_as((k, d))?
            .where_cond(&spread, &self.codebook.embed)?;
        let thr = Tensor::full(self.threshold as f32, k, &dev)?;
        self.cluster_size = m.squeeze(1)?.where_cond(&thr, &self.cluster_size)?;
        self.embed_sum = m
            .broadcast_as((k, d))?
            .where_cond(&(&spread * self.threshold)?, &self.embed_sum)?;
        self.codebook = Codebook::new(embed)?;
        Ok(dead)
    }
}

/// Draws `[rows, dim]` standard-normal values on `device` from a seeded RNG (test/init aid).
pub fn seeded_randn<R: Rng>(
    rng: &mut R,
    rows: usize,
    dim: usize,
    device: &Device,
) -> Result<Tensor> {
    use rand_distr::{Distribution, StandardNormal};
    let v: Vec<f32> = (0..rows * dim)
        .map(|_| StandardNormal.sample(rng))
        .collect();
    Tensor::from_vec(v, (rows, dim), device)
}
