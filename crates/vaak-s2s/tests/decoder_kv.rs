//! KV-cache decoding must equal the teacher-forced full forward: the decoder steps one frame
//! at a time with its self-attention cache while its cross-attention memory grows as the
//! source streams through the encoder, and every step's logits (per codebook, text, and for
//! the depth head every depth step) must match the full forward that sees the same memory.

mod common;

use candle_core::{Device, IndexOp};
use vaak_nn::StreamMask;
use vaak_s2s::{HeadKind, S2sModel, S2sStream};

const TOL: f32 = 1e-4;

fn check(head: HeadKind, text: bool) {
    let cfg = common::tiny(head, text);
    let (model, _) = S2sModel::init_seeded(&cfg, &Device::Cpu, 7).unwrap();
    // Two rows of different source and target lengths.
    let samples = [common::sample(&cfg, 1, 9, 5), common::sample(&cfg, 2, 6, 3)];
    let layouts: Vec<_> = samples
        .iter()
        .enumerate()
        .map(|(i, s)| model.layout(i, s).unwrap())
        .collect();
    let steps = layouts.iter().map(|l| l.inputs.len()).max().unwrap();
    let sp = cfg.audio_specials();
    let k = cfg.codec.num_codebooks;

    // Streaming: row 0 hears 2 source frames per decoder step, row 1 one; the decoder starts
    // once each row has some memory.
    let enc = model.encoder();
    let mut est = enc.state(2).unwrap();
    let mut dst = model.decoder_state(2).unwrap();
    let mut fed = [0usize, 0];
    let rate = [2usize, 1];
    let mut visible = vec![Vec::new(), Vec::new()];
    let cond = model
        .condition(&[samples[0].cond.clone(), samples[1].cond.clone()], false)
        .unwrap();
    let mut records = Vec::with_capacity(steps);
    for s in 0..steps {
        // Grow the memory until every row sees at least one frame.
        loop {
            let batch: Vec<Vec<Vec<u32>>> = (0..2)
                .map(|i| {
                    let end = (fed[i] + rate[i]).min(samples[i].source.len());
                    let f = samples[i].source[fed[i]..end].to_vec();
                    fed[i] = end;
                    f
                })
                .collect();
            for c in enc.push(&mut est, &batch).unwrap() {
                model.append_memory(&mut dst, &c).unwrap();
            }
            for i in 0..2 {
                if fed[i] == samples[i].source.len() {
                    if let Some(c) = enc.flush(&mut est, i).unwrap() {
                        model.append_memory(&mut dst, &c).unwrap();
                    }
                }
            }
            if dst.memory_lens().iter().all(|&l| l > 0) {
                break;
            }
        }
        for (v, &l) in visible.iter_mut().zip(dst.memory_lens()) {
            v.push(l);
        }
        let codes: Vec<Vec<u32>> = layouts
            .iter()
            .map(|l| l.inputs.get(s).cloned().unwrap_or(vec![sp.pad; k]))
            .collect();
        let tsp = cfg.text_specials();
        let text: Option<Vec<u32>> = tsp.map(|ts| {
            layouts
                .iter()
                .map(|l| l.text_inputs.get(s).copied().unwrap_or(ts.pad))
                .collect()
        });
        let h = model
            .decoder_step(&mut dst, &codes, text.as_deref(), &cond, &StreamMask::All)
            .unwrap();
        let mut stepped = Vec::new();
        match head {
            HeadKind::Delay => stepped = model.delay_logits(&h).unwrap(),
            HeadKind::Depth => {
                let mut ds = model.depth_start(&h).unwrap();
                for j in 0..k {
                    let prev: Vec<u32> = layouts
                        .iter()
                        .map(|l| {
                            if j == 0 {
                                l.text_targets
                                    .get(s)
                                    .copied()
                                    .flatten()
                                    .unwrap_or(tsp.map_or(0, |t| t.pad))
                            } else {
                                l.targets.get(s).and_then(|t| t[j - 1]).unwrap_or(sp.pad)
                            }
                        })
                        .collect();
                    stepped.push(model.depth_step(&mut ds, &prev).unwrap());
                }
            }
        }
        let text_step = model.text_logits(&h).unwrap();
        // Compared after the loop, once `visible` is complete.
        records.push((stepped, text_step));
    }
    assert!(
        visible[1].windows(2).any(|w| w[0] < w[1]),
        "the memory must grow while decoding: {visible:?}"
    );
    let tf = model
        .forward_batch_visible(&samples, Some(&visible), false)
        .unwrap();
    {
        for (s, (stepped, text_step)) in records.iter().enumerate() {
            for (row, l) in layouts.iter().enumerate() {
                if s >= l.inputs.len() {
                    continue;
                }
                for (c, inc) in stepped.iter().enumerate() {
                    let full = tf.codebook_logits(c).unwrap();
                    let full = full.i((row, s)).unwrap();
                    let inc = inc.i(row).unwrap();
                    let d = common::max_diff(&full, &inc);
                    assert!(
                        d < TOL,
                        "{head:?} row {row} step {s} codebook {c}: diff {d}"
                    );
                }
                if let (Some(ft), Some(it)) = (&tf.text_logits, text_step) {
                    let d = common::max_diff(&ft.i((row, s)).unwrap(), &it.i(row).unwrap());
                    assert!(d < TOL, "{head:?} row {row} step {s} text: diff {d}");
                }
            }
        }
    }
}

#[test]
fn delay_head_kv_cache_equals_full_forward_with_growing_memory() {
    check(HeadKind::Delay, false);
}

#[test]
fn delay_head_with_text_kv_cache_equals_full_forward() {
    check(HeadKind::Delay, true);
}

#[test]
fn depth_head_kv_cache_equals_full_forward_with_growing_memory() {
    check(HeadKind::Depth, false);
}

#[test]
fn depth_head_with_text_kv_cache_equals_full_forward() {
    check(HeadKind::Depth, true);
}

/// The generation stream refuses to step a slot that has no memory yet.
#[test]
fn stepping_without_memory_is_a_typed_error() {
    let cfg = common::tiny(HeadKind::Delay, false);
    let (model, _) = S2sModel::init_seeded(&cfg, &Device::Cpu, 7).unwrap();
    let mut st = S2sStream::new(&model, 1, Default::default()).unwrap();
    st.start(0, Default::default(), 1).unwrap();
    let e = st.step(&StreamMask::All).unwrap_err();
    assert!(e.to_string().contains("no encoded source"), "{e}");
}
