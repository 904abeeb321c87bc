//! Where a decoder step and a training step of a random model spend their time, for
//! profiling (`perf record`) and before/after comparisons of the S2S speed work:
//!
//! ```bash
//! cargo run --release -p vaak-s2s --example s2s_step_profile -- small delay 32 40
//! #                                          preset head  batch steps [train]
//! ```
//!
//! Prints the median time of the temporal decoder step, of the codebook heads with the
//! greedy choice (the K delay heads' argmax, or K depth-transformer steps), and with `train`
//! of the training step's forward, loss and backward at batch 8 (50 + 50 frames).

use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{Device, Tensor, D};
use vaak_nn::StreamMask;
use vaak_s2s::{
    CodecSpec, EncodedChunk, HeadKind, LossWeights, S2sConfig, S2sModel, Sample, SlotCondition,
};

fn codes(t: usize, k: usize, card: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..t)
        .map(|_| {
            (0..k)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    (s % card as u64) as u32
                })
                .collect()
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn greedy(model: &S2sModel, h: &Tensor) -> Result<Vec<Vec<u32>>> {
    let b = h.dim(0)?;
    let per: Vec<Vec<u32>> = match model.config().head {
        HeadKind::Delay => model
            .delay_logits(h)?
            .iter()
            .map(|l| l.argmax(D::Minus1)?.to_vec1::<u32>())
            .collect::<candle_core::Result<_>>()?,
        HeadKind::Depth => {
            let mut st = model.depth_start(h)?;
            let mut prev = vec![0u32; b];
            let mut per = Vec::new();
            for _ in 0..model.config().codec.num_codebooks {
                prev = model
                    .depth_step(&mut st, &prev)?
                    .argmax(D::Minus1)?
                    .to_vec1::<u32>()?;
                per.push(prev.clone());
            }
            per
        }
    };
    Ok((0..b).map(|r| per.iter().map(|c| c[r]).collect()).collect())
}

fn main() -> Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() < 4 {
        bail!("usage: s2s_step_profile PRESET delay|depth BATCH STEPS [train]");
    }
    let mut cfg = S2sConfig::preset(&a[0], CodecSpec::default())?;
    cfg.head = match a[1].as_str() {
        "delay" => HeadKind::Delay,
        "depth" => HeadKind::Depth,
        h => bail!("unknown head {h}"),
    };
    cfg.max_source_frames = 256;
    cfg.max_target_frames = 256;
    let (b, steps): (usize, usize) = (a[2].parse()?, a[3].parse()?);
    let (k, card) = (cfg.codec.num_codebooks, cfg.codec.cardinality);
    let (model, _) = S2sModel::init_seeded(&cfg, &Device::Cpu, 7)?;
    let rows: Vec<Vec<Vec<u32>>> = (0..b).map(|i| codes(50, k, card, 500 + i as u64)).collect();
    let refs: Vec<&[Vec<u32>]> = rows.iter().map(|r| r.as_slice()).collect();
    let (mem, _) = model.encoder().forward(&refs, false)?;
    let mut ds = model.decoder_state(b)?;
    model.append_memory(
        &mut ds,
        &EncodedChunk {
            out: mem,
            mask: StreamMask::All,
        },
    )?;
    let cond = model.condition(&vec![SlotCondition::default(); b], false)?;
    let mut inp = vec![vec![cfg.audio_specials().bos; k]; b];
    let (mut t_dec, mut t_head) = (Vec::new(), Vec::new());
    for _ in 0..steps {
        let t0 = Instant::now();
        let h = model.decoder_step(&mut ds, &inp, None, &cond, &StreamMask::All)?;
        let t1 = Instant::now();
        inp = greedy(&model, &h)?;
        t_dec.push((t1 - t0).as_secs_f64());
        t_head.push(t1.elapsed().as_secs_f64());
    }
    let (d, h) = (median(t_dec) * 1e3, median(t_head) * 1e3);
    println!(
        "{} {} b{b}: decoder step {d:.3} ms, heads + greedy {h:.3} ms, total {:.3} ms",
        a[0],
        a[1],
        d + h
    );
    if a.get(4).map(String::as_str) == Some("train") {
        let (model, vm) = S2sModel::init_seeded(&cfg, &Device::Cpu, 7)?;
        let samples: Vec<Sample> = (0..8)
            .map(|i| Sample {
                source: codes(50, k, card, 900 + i),
                target: codes(50, k, card, 1900 + i),
                text: None,
                cond: SlotCondition::default(),
            })
            .collect();
        let w = LossWeights::uniform(k);
        let (mut tf, mut tl, mut tb) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..4 {
            let t0 = Instant::now();
            let out = model.forward_batch(&samples, true)?;
            let t1 = Instant::now();
            let loss = model.loss(&out, &w)?;
            let t2 = Instant::now();
            let grads = loss.total.backward()?;
            let t3 = Instant::now();
            drop(grads);
            tf.push((t1 - t0).as_secs_f64());
            tl.push((t2 - t1).as_secs_f64());
            tb.push((t3 - t2).as_secs_f64());
        }
        let n: usize = vm.all_vars().iter().map(|v| v.elem_count()).sum();
        println!(
            "train b8 ({:.1}M params): forward {:.0} ms, loss {:.0} ms, backward {:.0} ms",
            n as f64 / 1e6,
            median(tf) * 1e3,
            median(tl) * 1e3,
            median(tb) * 1e3
        );
    }
    Ok(())
}
