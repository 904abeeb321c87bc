//! Winograd's minimal filtering F(4, 3) for wide stride-1 convs: four outputs of a 3-tap
//! filter from six products instead of twelve, so the gemm work of a `k`-tap conv drops from
//! `k` to `6 / 4 * ceil(k / 3)` multiply-adds per output and input channel (11 -> 6, 7 ->
//! 4.5, 3 -> 1.5).
//!
//! A `k`-tap (dilated) conv is the sum of `ceil(k / 3)` 3-tap convs over shifted inputs (the
//! kernel zero-padded to a multiple of 3). For each of the six transform points the segments'
//! transformed weights sit side by side in one `[c_out, segments * c_in]` matrix, so each point
//! is one `gemm` over the tiles' transformed inputs, and the inverse transform adds the six
//! products into the output's start value (bias plus residual). Tiles hold four outputs one
//! dilation apart, so a dilated conv is `dilation` interleaved undilated ones.
//!
//! The transforms use the points `0, ±1, ±2, ∞` (Lavin and Gray, 2016), whose coefficients
//! stay small: outputs differ from the direct conv's by a few float roundings more (the
//! full-size OpenVoice converter's audio is 125 dB SNR from the direct conv's). That is why the
//! path is opt-in ([`Fused::winograd`](super::Fused)): a model whose output feeds a quantizer
//! (codec tokens) keeps the direct conv's rounding; a vocoder that makes audio opts in.

use gemm::Parallelism;

use super::fast::{
    init_row, run_tasks, with_scratch, ColumnBlocks, ConvGeom, InputAct, RowStart, Strided,
};
use crate::cpu::{parallelism, threads, OutPtr};

/// Outputs per tile.
const TILE: usize = 4;
/// Taps per kernel segment.
const TAPS: usize = 3;
/// Transform points per tile (`TILE + TAPS - 1`).
const POINTS: usize = 6;

/// The fewest input and output channels for which the transforms (linear in the channels)
/// stay a small share next to the products (quadratic in them). HiFi-GAN's 32-channel stage
/// gains as well (one clip, one thread: 0.90 s with it, 0.93-0.96 s from 64 channels up).
const MIN_CHANNELS: usize = 32;
/// Floats of transformed input (all six points) per column block (1 MiB; 0.5 and 2 MiB
/// measured the same on OpenVoice).
const BLOCK_ELEMS: usize = 1 << 18;

/// Whether [`conv1d_winograd`] computes a conv of this geometry: stride 1, one group, at least
/// 3 taps, [`MIN_CHANNELS`] channels each side, and a few tiles per dilation phase.
pub(super) fn applies(g: &ConvGeom) -> bool {
    g.groups == 1
        && g.stride == 1
        && g.k >= TAPS
        && g.c_in_g >= MIN_CHANNELS
        && g.c_out >= MIN_CHANNELS
        && g.l_out >= 4 * TILE * g.dilation
}

/// The weight `[c_out, c_in, k]` transformed for the six points: `[POINTS, c_out, segments *
/// c_in]`, column `s * c_in + c` holding `G` times taps `3s .. 3s + 3` of channel `c` (the
/// taps past `k` zero). Per output channel the taps are first laid out tap-major, so every
/// product runs along the input channels (vectorised; done on every call, it had been 2% of a
/// HiFi-GAN pass element by element).
fn transform_weights(w: &[f32], c_out: usize, c_in: usize, k: usize) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx2_fma() {
        // SAFETY: the features were just detected.
        return unsafe { transform_weights_avx2(w, c_out, c_in, k) };
    }
    transform_weights_any(w, c_out, c_in, k)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn transform_weights_avx2(w: &[f32], c_out: usize, c_in: usize, k: usize) -> Vec<f32> {
    transform_weights_any(w, c_out, c_in, k)
}

#[inline(always)]
fn transform_weights_any(w: &[f32], c_out: usize, c_in: usize, k: usize) -> Vec<f32> {
    let segments = k.div_ceil(TAPS);
    let width = segments * c_in;
    let mut u = vec![0f32; POINTS * c_out * width];
    // Taps of one output channel, tap-major, zero past k.
    let mut taps = vec![0f32; segments * TAPS * c_in];
    let (sixth, twelfth, four_24th, quarter) = (1.0 / 6.0, 1.0 / 12.0, 4.0 / 24.0, 0.25);
    let twenty_fourth = 1.0 / 24.0;
    for o in 0..c_out {
        for c in 0..c_in {
            for j in 0..k {
                taps[j * c_in + c] = w[(o * c_in + c) * k + j];
            }
        }
        for s in 0..segments {
            let g = |j: usize| &taps[(s * TAPS + j) * c_in..][..c_in];
            let (g0, g1, g2) = (g(0), g(1), g(2));
            let at = |p: usize| (p * c_out + o) * width + s * c_in;
            let (u0, rest) = u.split_at_mut(at(1));
            let (u1, rest) = rest.split_at_mut(at(2) - at(1));
            let (u2, rest) = rest.split_at_mut(at(3) - at(2));
            let (u3, rest) = rest.split_at_mut(at(4) - at(3));
            let (u4, u5) = rest.split_at_mut(at(5) - at(4));
            let (u0, u1, u2) = (&mut u0[at(0)..][..c_in], &mut u1[..c_in], &mut u2[..c_in]);
            let (u3, u4, u5) = (&mut u3[..c_in], &mut u4[..c_in], &mut u5[..c_in]);
            for c in 0..c_in {
                let (a, b, e) = (g0[c], g1[c], g2[c]);
                let (even, odd) = (a + e, b);
                u0[c] = a * quarter;
                u1[c] = -(even + odd) * sixth;
                u2[c] = -(even - odd) * sixth;
                u3[c] = a * twenty_fourth + b * twelfth + e * four_24th;
                u4[c] = a * twenty_fourth - b * twelfth + e * four_24th;
                u5[c] = e;
            }
        }
    }
    u
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The sizes of one column block's tiles. Tile `(j, p)` (phase `p < d`) holds outputs
/// `(4j + i) * d + p`, `i < 4`, and is gemm column `j * d + p`: the tiles of one chunk of `4d`
/// outputs sit side by side, so every transform runs along contiguous columns.
#[derive(Clone, Copy, Debug)]
struct Tiles {
    /// Dilation: the number of interleaved phases.
    d: usize,
    /// Chunks of `4d` outputs (tiles per phase).
    chunks: usize,
    /// Window units of `d` samples: unit `u` holds samples `u * d .. (u + 1) * d`.
    units: usize,
    /// Kernel segments.
    segments: usize,
}

impl Tiles {
    fn new(n: usize, d: usize, k: usize) -> Self {
        let chunks = n.div_ceil(TILE * d);
        let segments = k.div_ceil(TAPS);
        // Chunk j of segment s reads units 4j + 3s + i, i < 6; units come in groups of 4.
        let units = TILE * (chunks + (TAPS * segments + 2) / TILE);
        Self {
            d,
            chunks,
            units,
            segments,
        }
    }

    /// Gemm columns (tiles of the block).
    fn cols(&self) -> usize {
        self.d * self.chunks
    }

    /// Window samples per channel.
    fn span(&self) -> usize {
        self.units * self.d
    }

    /// Samples per residue plane (`span / 4`).
    fn plane(&self) -> usize {
        self.span() / TILE
    }
}

/// The conv of [`applies`] geometries (see the [module docs](self)); the same contract as
/// `conv1d_blocks`: every value of `out` (`[b, c_out, l_out]`) is written.
pub(super) fn conv1d_winograd(
    g: &ConvGeom,
    wv: &[f32],
    x: Strided<'_>,
    bias: Option<&[f32]>,
    residual: Option<Strided<'_>>,
    lengths: Option<&[usize]>,
    out: OutPtr,
) {
    let ConvGeom {
        b,
        c_in_g: c_in,
        c_out,
        l,
        l_out,
        k,
        dilation: d,
        pad_left,
        act,
        ..
    } = *g;
    let u = transform_weights(wv, c_out, c_in, k);
    let width = k.div_ceil(TAPS) * c_in;
    let threads = threads();
    // Transformed input floats per output column: six points of `width` rows per 4 columns.
    // Blocks of whole gemm micro-tiles: columns come in multiples of 16 when the outputs do
    // in multiples of 64d / gcd(d, 16).
    let align = 64 * d / gcd(d, 16);
    let blocks = ColumnBlocks::new_with(
        (BLOCK_ELEMS, align),
        POINTS * width / TILE,
        l_out,
        b,
        threads,
    );
    let n_blocks = blocks.n;
    let tasks = b * n_blocks;
    let parallel = threads > 1 && tasks >= threads;
    let par = if parallel {
        Parallelism::None
    } else {
        parallelism()
    };
    let [s0, s1, s2] = x.s;
    run_tasks(tasks, parallel, |task| {
        let (bi, blk) = (task / n_blocks, task % n_blocks);
        let (t_start, n) = blocks.range(blk);
        if n == 0 {
            return;
        }
        // SAFETY: this task alone writes item bi's columns t_start .. t_start + n.
        let dst = unsafe { out.at(bi * c_out * l_out + t_start) };
        // The inverse transform writes bias + residual + product in one pass, unless the
        // residual is strided in time: then the rows start as bias + residual and it adds.
        let start = RowStart {
            bias,
            residual,
            bi,
            ch: 0,
            t_start,
        };
        let add = start.contiguous(n).is_none();
        if add {
            for o in 0..c_out {
                // SAFETY: as above, one row of this task's block.
                unsafe { init_row(dst.add(o * l_out), n, RowStart { ch: o, ..start }) };
            }
        }
        let tiles = Tiles::new(n, d, k);
        let (span, cols) = (tiles.span(), tiles.cols());
        let xg = &x.v[bi * s0..];
        let valid = lengths.map_or(l, |ls| ls[bi].min(l));
        let first = t_start as isize - pad_left as isize;
        with_scratch(
            c_in * span,
            POINTS * (width + c_out) * cols,
            |planes, bb| {
                let input = Input {
                    x: xg,
                    strides: (s1, s2),
                    first,
                    valid,
                    act,
                };
                gather_residues(planes, input, c_in, &tiles);
                let (v, m) = bb.split_at_mut(POINTS * width * cols);
                transform_input(v, planes, c_in, &tiles);
                for p in 0..POINTS {
                    // SAFETY: m's point p is c_out x cols, u's c_out x width, v's width x cols,
                    // all inside their buffers.
                    unsafe {
                        crate::cpu::gemm(
                            (c_out, cols, width),
                            (m[p * c_out * cols..].as_mut_ptr(), cols as isize, 1),
                            false,
                            (u[p * c_out * width..].as_ptr(), width as isize, 1),
                            (v[p * width * cols..].as_ptr(), cols as isize, 1),
                            par,
                        );
                    }
                }
                // SAFETY: dst holds c_out rows (stride l_out) of which this task owns columns
                // 0..n, initialised above when `add`.
                let rows = Rows {
                    dst,
                    l_out,
                    n,
                    c_out,
                    start: (!add).then_some(start),
                };
                unsafe { inverse(rows, m, &tiles) };
            },
        );
    });
}

/// One item's input as a block reads it: `x` addressed by `strides` (channel, time), window
/// sample `q` at `first + q`, zero outside `0..valid`, `act` applied.
#[derive(Clone, Copy)]
struct Input<'a> {
    x: &'a [f32],
    strides: (usize, usize),
    first: isize,
    valid: usize,
    act: InputAct,
}

/// `planes[c][r][j * d + p] = act(x[c][first + (4j + r) * d + p])` (zero outside the valid
/// samples): the window's units by residue mod 4, so that unit `4j + q` of every tile of
/// chunk `j` is one contiguous run of columns. One pass over the input, no window copy.
fn gather_residues(planes: &mut [f32], input: Input<'_>, c_in: usize, t: &Tiles) {
    let Input {
        x,
        strides: (sc, st),
        first,
        valid,
        act,
    } = input;
    let (d, span, plane) = (t.d, t.span(), t.plane());
    let chunk = (TILE * d) as isize;
    let chunks = span / (TILE * d);
    // Chunks j0..j1 read only samples inside 0..valid.
    let j0 = if first >= 0 {
        0
    } else {
        (-first + chunk - 1) / chunk
    }
    .clamp(0, chunks as isize) as usize;
    let j1 =
        ((valid as isize - first).div_euclid(chunk)).clamp(j0 as isize, chunks as isize) as usize;
    for c in 0..c_in {
        let src = &x[c * sc..];
        let pl = &mut planes[c * span..(c + 1) * span];
        let sample = |q: isize| {
            if q >= 0 && (q as usize) < valid {
                src[q as usize * st]
            } else {
                0.0
            }
        };
        for j in (0..j0).chain(j1..chunks) {
            for r in 0..TILE {
                for p in 0..d {
                    pl[r * plane + j * d + p] = sample(first + ((TILE * j + r) * d + p) as isize);
                }
            }
        }
        if j1 > j0 {
            let base = (first + j0 as isize * chunk) as usize;
            let inner = &src[base * st..];
            let mut done = j0;
            #[cfg(target_arch = "x86_64")]
            if d == 1 && st == 1 && crate::simd::has_avx2_fma() {
                // SAFETY: the features were just detected; chunks j0..j1 lie inside `inner`.
                done += unsafe { deinterleave4_avx2(pl, plane, j0, &inner[..(j1 - j0) * TILE]) };
            }
            for j in done..j1 {
                let at = (j - j0) * TILE * d;
                for r in 0..TILE {
                    for p in 0..d {
                        pl[r * plane + j * d + p] = inner[(at + r * d + p) * st];
                    }
                }
            }
        }
        for r in 0..TILE {
            act.apply_in_place(&mut pl[r * plane..(r + 1) * plane]);
        }
    }
}

/// `planes[r * plane + j0 + j] = src[4j + r]` for whole groups of 8 chunks of `src`, by 4 x 8
/// transposes in registers; returns the chunks done.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn deinterleave4_avx2(planes: &mut [f32], plane: usize, j0: usize, src: &[f32]) -> usize {
    use std::arch::x86_64::*;
    let groups = src.len() / 32;
    assert!(j0 + groups * 8 <= plane && planes.len() >= 4 * plane);
    let s = src.as_ptr();
    let d = planes.as_mut_ptr();
    for g in 0..groups {
        // SAFETY: 32 floats of src at 32g, and 8 of each plane at j0 + 8g (checked above).
        unsafe {
            let v0 = _mm256_loadu_ps(s.add(32 * g));
            let v1 = _mm256_loadu_ps(s.add(32 * g + 8));
            let v2 = _mm256_loadu_ps(s.add(32 * g + 16));
            let v3 = _mm256_loadu_ps(s.add(32 * g + 24));
            // Chunks (0, 4), (1, 5), (2, 6), (3, 7) in the two lanes.
            let w0 = _mm256_permute2f128_ps::<0x20>(v0, v2);
            let w1 = _mm256_permute2f128_ps::<0x31>(v0, v2);
            let w2 = _mm256_permute2f128_ps::<0x20>(v1, v3);
            let w3 = _mm256_permute2f128_ps::<0x31>(v1, v3);
            let t0 = _mm256_unpacklo_ps(w0, w1);
            let t1 = _mm256_unpackhi_ps(w0, w1);
            let t2 = _mm256_unpacklo_ps(w2, w3);
            let t3 = _mm256_unpackhi_ps(w2, w3);
            let at = j0 + 8 * g;
            _mm256_storeu_ps(d.add(at), _mm256_shuffle_ps::<0x44>(t0, t2));
            _mm256_storeu_ps(d.add(plane + at), _mm256_shuffle_ps::<0xEE>(t0, t2));
            _mm256_storeu_ps(d.add(2 * plane + at), _mm256_shuffle_ps::<0x44>(t1, t3));
            _mm256_storeu_ps(d.add(3 * plane + at), _mm256_shuffle_ps::<0xEE>(t1, t3));
        }
    }
    groups * 8
}

/// The input transform `B^T x` of every tile and segment: `v[point][s * c_in + c][col]`
/// from the six units `4j + 3s + i` of the column's tile.
fn transform_input(v: &mut [f32], planes: &[f32], c_in: usize, t: &Tiles) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx2_fma() {
        // SAFETY: the features were just detected.
        return unsafe { transform_input_avx2(v, planes, c_in, t) };
    }
    transform_input_any(v, planes, c_in, t)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn transform_input_avx2(v: &mut [f32], planes: &[f32], c_in: usize, t: &Tiles) {
    transform_input_any(v, planes, c_in, t)
}

#[inline(always)]
fn transform_input_any(v: &mut [f32], planes: &[f32], c_in: usize, t: &Tiles) {
    let (d, span, plane, cols) = (t.d, t.span(), t.plane(), t.cols());
    let width = t.segments * c_in;
    let point_len = width * cols;
    let (v0, rest) = v.split_at_mut(point_len);
    let (v1, rest) = rest.split_at_mut(point_len);
    let (v2, rest) = rest.split_at_mut(point_len);
    let (v3, rest) = rest.split_at_mut(point_len);
    let (v4, v5) = rest.split_at_mut(point_len);
    for c in 0..c_in {
        let pl = &planes[c * span..(c + 1) * span];
        for s in 0..t.segments {
            let x: [&[f32]; POINTS] = std::array::from_fn(|i| {
                let q = TAPS * s + i;
                &pl[(q % TILE) * plane + q / TILE * d..][..cols]
            });
            let at = (s * c_in + c) * cols;
            let r = at..at + cols;
            let (o0, o1, o2) = (&mut v0[r.clone()], &mut v1[r.clone()], &mut v2[r.clone()]);
            let (o3, o4, o5) = (&mut v3[r.clone()], &mut v4[r.clone()], &mut v5[r]);
            for j in 0..cols {
                let (d0, d1, d2, d3, d4, d5) =
                    (x[0][j], x[1][j], x[2][j], x[3][j], x[4][j], x[5][j]);
                let a = d4 - 4.0 * d2;
                let bq = d3 - 4.0 * d1;
                let e = d4 - d2;
                let f = 2.0 * (d3 - d1);
                o0[j] = 4.0 * d0 - 5.0 * d2 + d4;
                o1[j] = a + bq;
                o2[j] = a - bq;
                o3[j] = e + f;
                o4[j] = e - f;
                o5[j] = 4.0 * d1 - 5.0 * d3 + d5;
            }
        }
    }
}

/// A block's output rows: `c_out` rows of `n` columns at stride `l_out`, written as start
/// value plus product (`start`, its channel taken per row; its residual contiguous in time),
/// or with the product added (`None`: already initialised).
#[derive(Clone, Copy)]
struct Rows<'a> {
    dst: *mut f32,
    l_out: usize,
    n: usize,
    c_out: usize,
    start: Option<RowStart<'a>>,
}

/// The inverse transform `A^T m` of every tile into its outputs (outputs past `n`, the last
/// chunk's overhang, dropped).
///
/// # Safety
/// `rows.dst` holds its rows, each valid for `n` writes (and reads when `start` is `None`:
/// then initialised) that nothing else touches during the call.
unsafe fn inverse(rows: Rows<'_>, m: &[f32], t: &Tiles) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx2_fma() {
        // SAFETY: the features were just detected; the caller's contract.
        return unsafe { inverse_avx2(rows, m, t) };
    }
    // SAFETY: the caller's contract.
    unsafe { inverse_any(rows, m, t, false) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn inverse_avx2(rows: Rows<'_>, m: &[f32], t: &Tiles) {
    // SAFETY: the caller's contract; AVX2 is there.
    unsafe { inverse_any(rows, m, t, true) }
}

/// Columns per pass of [`inverse_any`] (four rows of this many floats stay in L1).
const INVERSE_COLS: usize = 128;

/// `avx2`: the CPU has AVX2 and FMA (undilated rows then go through [`inverse_d1_avx2`]).
#[inline(always)]
unsafe fn inverse_any(rows: Rows<'_>, m: &[f32], t: &Tiles, avx2: bool) {
    let Rows {
        dst,
        l_out,
        n,
        c_out,
        start,
    } = rows;
    let (d, cols) = (t.d, t.cols());
    let point_len = c_out * cols;
    // Whole chunks of 4d outputs per pass.
    let per_pass = (INVERSE_COLS / d).max(1) * d;
    let mut y = [[0f32; INVERSE_COLS]; TILE];
    for o in 0..c_out {
        // SAFETY: the caller's contract (row o).
        let row = unsafe { dst.add(o * l_out) };
        let mm: [&[f32]; POINTS] = std::array::from_fn(|q| &m[q * point_len + o * cols..][..cols]);
        let (bias, residual) = start
            .and_then(|st| RowStart { ch: o, ..st }.contiguous(n))
            .unwrap_or((0.0, None));
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if avx2 && d == 1 {
            let store = Store {
                bias,
                residual,
                add: start.is_none(),
            };
            // SAFETY: the caller's contract; AVX2 and FMA are there.
            done = unsafe { inverse_d1_avx2(row, n, mm, store) };
        }
        let _ = avx2;
        for c0 in (done..cols).step_by(per_pass) {
            let len = (cols - c0).min(per_pass);
            let [y0, y1, y2, y3] = &mut y;
            let (y0, y1, y2, y3) = (
                &mut y0[..len],
                &mut y1[..len],
                &mut y2[..len],
                &mut y3[..len],
            );
            let ms: [&[f32]; POINTS] = std::array::from_fn(|q| &mm[q][c0..c0 + len]);
            for j in 0..len {
                let (m0, m1, m2, m3, m4, m5) =
                    (ms[0][j], ms[1][j], ms[2][j], ms[3][j], ms[4][j], ms[5][j]);
                let (a, bq) = (m1 + m2, m1 - m2);
                let (e, f) = (m3 + m4, m3 - m4);
                y0[j] = m0 + a + e;
                y1[j] = bq + 2.0 * f;
                y2[j] = a + 4.0 * e;
                y3[j] = bq + 8.0 * f + m5;
            }
            let ys = [&*y0, &*y1, &*y2, &*y3];
            let pass = Pass {
                d,
                n,
                out0: c0 / d * TILE * d,
                chunks: len / d,
            };
            // SAFETY (each store): t < n, inside the row (the caller's contract).
            match (start.is_some(), residual) {
                (false, _) => pass.scatter(ys, |t, v| unsafe { *row.add(t) += v }),
                (true, None) => pass.scatter(ys, |t, v| unsafe { row.add(t).write(bias + v) }),
                (true, Some(r)) => {
                    pass.scatter(ys, |t, v| unsafe { row.add(t).write(bias + r[t] + v) })
                }
            }
        }
    }
}

/// How [`inverse_d1_avx2`] stores an output: `bias + residual[t] + y`, or `+= y` (`add`).
#[derive(Clone, Copy)]
struct Store<'a> {
    bias: f32,
    residual: Option<&'a [f32]>,
    add: bool,
}

/// The undilated inverse of one row for whole groups of 8 tiles (32 outputs below `n`): the
/// four outputs of 8 tiles computed as 4 vectors and transposed in registers into 32
/// consecutive outputs. Returns the tiles done.
///
/// # Safety
/// AVX2 and FMA are available; `row` is valid for `n` writes (and reads when `store.add`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn inverse_d1_avx2(
    row: *mut f32,
    n: usize,
    ms: [&[f32]; POINTS],
    store: Store<'_>,
) -> usize {
    use std::arch::x86_64::*;
    let cols = ms[0].len();
    let groups = (cols / 8).min(n / 32);
    assert!(ms.iter().all(|m| m.len() == cols));
    assert!(store.residual.is_none_or(|r| r.len() >= n));
    let (two, four, eight) = (
        _mm256_set1_ps(2.0),
        _mm256_set1_ps(4.0),
        _mm256_set1_ps(8.0),
    );
    let bias = _mm256_set1_ps(store.bias);
    for g in 0..groups {
        let j = 8 * g;
        // SAFETY: 8 values of each point row at j (j + 8 <= cols), 32 outputs at 4j (<= n),
        // 32 residual values there (checked above).
        unsafe {
            let m: [__m256; POINTS] =
                std::array::from_fn(|q| _mm256_loadu_ps(ms[q].as_ptr().add(j)));
            let (a, bq) = (_mm256_add_ps(m[1], m[2]), _mm256_sub_ps(m[1], m[2]));
            let (e, f) = (_mm256_add_ps(m[3], m[4]), _mm256_sub_ps(m[3], m[4]));
            let y0 = _mm256_add_ps(_mm256_add_ps(m[0], a), e);
            let y1 = _mm256_fmadd_ps(two, f, bq);
            let y2 = _mm256_fmadd_ps(four, e, a);
            let y3 = _mm256_add_ps(_mm256_fmadd_ps(eight, f, bq), m[5]);
            let t0 = _mm256_unpacklo_ps(y0, y1);
            let t1 = _mm256_unpackhi_ps(y0, y1);
            let t2 = _mm256_unpacklo_ps(y2, y3);
            let t3 = _mm256_unpackhi_ps(y2, y3);
            // Tiles (0, 4), (1, 5), (2, 6), (3, 7) in the two lanes.
            let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let outs = [
                _mm256_permute2f128_ps::<0x20>(u0, u1),
                _mm256_permute2f128_ps::<0x20>(u2, u3),
                _mm256_permute2f128_ps::<0x31>(u0, u1),
                _mm256_permute2f128_ps::<0x31>(u2, u3),
            ];
            for (k, o) in outs.into_iter().enumerate() {
                let at = row.add(4 * j + 8 * k);
                let v = if store.add {
                    _mm256_add_ps(_mm256_loadu_ps(at), o)
                } else if let Some(r) = store.residual {
                    let rv = _mm256_loadu_ps(r.as_ptr().add(4 * j + 8 * k));
                    _mm256_add_ps(_mm256_add_ps(bias, rv), o)
                } else {
                    _mm256_add_ps(bias, o)
                };
                _mm256_storeu_ps(at, v);
            }
        }
    }
    groups * 8
}

/// One pass of [`inverse_any`] over a row: `chunks` chunks of `4d` outputs from output
/// `out0` on, of which those at or past `n` are dropped.
#[derive(Clone, Copy)]
struct Pass {
    d: usize,
    n: usize,
    out0: usize,
    chunks: usize,
}

impl Pass {
    /// Calls `put(t, y_i[j * d + p])` for output `t = out0 + (4j + i) * d + p < n`.
    #[inline(always)]
    fn scatter(self, ys: [&[f32]; TILE], put: impl Fn(usize, f32)) {
        let Self { d, n, out0, chunks } = self;
        let whole = chunks.min(n.saturating_sub(out0) / (TILE * d));
        let [y0, y1, y2, y3] = ys;
        if d == 1 {
            for j in 0..whole {
                let t = out0 + TILE * j;
                put(t, y0[j]);
                put(t + 1, y1[j]);
                put(t + 2, y2[j]);
                put(t + 3, y3[j]);
            }
        } else {
            for j in 0..whole {
                let t = out0 + TILE * d * j;
                for p in 0..d {
                    put(t + p, y0[j * d + p]);
                    put(t + d + p, y1[j * d + p]);
                    put(t + 2 * d + p, y2[j * d + p]);
                    put(t + 3 * d + p, y3[j * d + p]);
                }
            }
        }
        // The chunk that runs past n (the block's last).
        for j in whole..chunks {
            for (i, yi) in ys.into_iter().enumerate() {
                for p in 0..d {
                    let t = out0 + (TILE * j + i) * d + p;
                    if t < n {
                        put(t, yi[j * d + p]);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The three transforms compose to the direct 3-tap correlation on one tile.
    #[test]
    fn one_tile_equals_the_direct_filter() {
        let g = [0.3f32, -1.2, 0.7];
        let x = [0.5f32, -0.25, 1.5, 2.0, -0.75, 0.125];
        let u = transform_weights(&g, 1, 1, 3);
        let plane_x: Vec<f32> = x.to_vec();
        // One channel, one phase, one tile: planes are the window split by residue.
        let tiles = Tiles::new(4, 1, 3);
        let mut planes = vec![0f32; tiles.span()];
        let input = Input {
            x: &plane_x,
            strides: (6, 1),
            first: 0,
            valid: 6,
            act: InputAct::None,
        };
        gather_residues(&mut planes, input, 1, &tiles);
        let mut v = vec![0f32; POINTS * tiles.cols()];
        transform_input(&mut v, &planes, 1, &tiles);
        let m: Vec<f32> = (0..POINTS).map(|p| u[p] * v[p]).collect();
        let mut y = [0f32; 4];
        let rows = Rows {
            dst: y.as_mut_ptr(),
            l_out: 4,
            n: 4,
            c_out: 1,
            start: None,
        };
        unsafe { inverse(rows, &m, &tiles) };
        for (i, &yi) in y.iter().enumerate() {
            let direct: f32 = (0..3).map(|j| g[j] * x[i + j]).sum();
            assert!((yi - direct).abs() < 1e-5, "output {i}: {yi} vs {direct}");
        }
    }
}
