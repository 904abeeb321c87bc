//! The streamed encoder must equal the whole-clip encoder for every chunk size and every way
//! of feeding the frames, per slot, and a slot reset must not disturb the other slots.

mod common;

use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use vaak_nn::StreamMask;
use vaak_s2s::{EncodedChunk, HeadKind, S2sModel};

const TOL: f32 = 1e-5;

/// Collects per-slot streamed outputs `[n, d]` from batched chunks.
fn collect(per_slot: &mut [Vec<Tensor>], chunks: Vec<EncodedChunk>) {
    for c in chunks {
        for (i, out) in per_slot.iter_mut().enumerate() {
            if c.mask.is_active(i) {
                out.push(c.out.get(i).unwrap());
            }
        }
    }
}

#[test]
fn streamed_encoder_equals_whole_clip_for_chunk_and_step_sizes() {
    for (chunk, left) in [(1, 3), (2, 1), (3, 2), (4, 0)] {
        let mut cfg = common::tiny(HeadKind::Delay, false);
        cfg.encoder.chunk_size = chunk;
        cfg.encoder.left_chunks = left;
        let (model, _) = S2sModel::init_seeded(&cfg, &Device::Cpu, 7).unwrap();
        let enc = model.encoder();
        let mut rng = ChaCha8Rng::seed_from_u64(chunk as u64);
        // Two slots of different lengths, neither a multiple of every chunk size.
        let srcs = [
            common::frames(&mut rng, 13, 3, 16),
            common::frames(&mut rng, 9, 3, 16),
        ];
        let (whole, _) = enc
            .forward(&[srcs[0].as_slice(), srcs[1].as_slice()], false)
            .unwrap();
        for steps in [[1usize, 1], [2, 3], [5, 1], [7, 4]] {
            let mut st = enc.state(2).unwrap();
            let mut outs = vec![Vec::new(), Vec::new()];
            let mut fed = [0usize, 0];
            while fed[0] < srcs[0].len() || fed[1] < srcs[1].len() {
                let batch: Vec<Vec<Vec<u32>>> = (0..2)
                    .map(|i| {
                        let end = (fed[i] + steps[i]).min(srcs[i].len());
                        let f = srcs[i][fed[i]..end].to_vec();
                        fed[i] = end;
                        f
                    })
                    .collect();
                collect(&mut outs, enc.push(&mut st, &batch).unwrap());
            }
            for i in 0..2 {
                collect(
                    &mut outs,
                    enc.flush(&mut st, i).unwrap().into_iter().collect(),
                );
            }
            for (i, o) in outs.iter().enumerate() {
                let streamed = Tensor::cat(o, 0).unwrap();
                let n = srcs[i].len();
                assert_eq!(streamed.dims(), &[n, enc.d_model()]);
                let reference = whole.get(i).unwrap().narrow(0, 0, n).unwrap();
                let d = common::max_diff(&streamed, &reference);
                assert!(
                    d < TOL,
                    "chunk {chunk} left {left} steps {steps:?} slot {i}: max diff {d}"
                );
            }
        }
    }
}

#[test]
fn encoder_slot_reset_leaves_other_slots_identical() {
    let cfg = common::tiny(HeadKind::Delay, false);
    let (model, _) = S2sModel::init_seeded(&cfg, &Device::Cpu, 7).unwrap();
    let enc = model.encoder();
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let a = common::frames(&mut rng, 8, 3, 16);
    let b = common::frames(&mut rng, 8, 3, 16);
    let junk = common::frames(&mut rng, 5, 3, 16);

    // Reference: slot 0 alone, fed 2 frames at a time.
    let run = |with_reset: bool| -> (Vec<Tensor>, Vec<Tensor>) {
        let mut st = enc.state(2).unwrap();
        let mut outs = vec![Vec::new(), Vec::new()];
        if with_reset {
            // Slot 1 first hears junk, then is reset and hears `b`.
            collect(
                &mut outs,
                enc.push(&mut st, &[vec![], junk.clone()]).unwrap(),
            );
            collect(
                &mut outs,
                enc.flush(&mut st, 1).unwrap().into_iter().collect(),
            );
        }
        for s in 0..4 {
            if with_reset && s == 1 {
                st.reset_slots(&StreamMask::only(1, 2)).unwrap();
                outs[1].clear();
            }
            let b_part = if with_reset && s == 0 {
                vec![]
            } else {
                b[..].to_vec()
            };
            let feed0 = a[2 * s..2 * s + 2].to_vec();
            let feed1 = if s == 0 || (with_reset && s == 1) {
                b_part
            } else {
                vec![]
            };
            collect(&mut outs, enc.push(&mut st, &[feed0, feed1]).unwrap());
        }
        (outs[0].clone(), outs[1].clone())
    };
    let (a_ref, b_ref) = run(false);
    let (a_rst, b_rst) = run(true);
    let cat = |v: &[Tensor]| Tensor::cat(v, 0).unwrap();
    // Batched attention spans the longest slot's keys (masked for the others), so a
    // neighbour's position may change summation order: equal to f32 rounding, not bitwise.
    let d0 = common::max_diff(&cat(&a_ref), &cat(&a_rst));
    assert!(d0 < TOL, "slot 0 must not feel slot 1's reset: diff {d0}");
    let d = common::max_diff(&cat(&b_ref), &cat(&b_rst));
    assert!(d < TOL, "reset slot 1 must restart from scratch: diff {d}");
}
