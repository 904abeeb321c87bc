//! `S2sTrainer` through vaak-nn's training run: a tiny model overfits a few in-memory pairs
//! (the loss falls, the export reloads and greedy generation reproduces every target), and a
//! run stopped at step k and resumed logs the same lines and ends with the same weights as a
//! straight run, for the `lm` and `cond` stages.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use candle_core::Device;
use vaak_nn::train::run::{self, RunOptions};
use vaak_nn::train::CheckpointManager;
use vaak_nn::StreamMask;
use vaak_s2s::train::{S2sExample, S2sTrainConfig, S2sTrainer, Stage, TextKind};
use vaak_s2s::{Frame, GenerationConfig, HeadKind, S2sModel, S2sStream, SlotCondition};

fn examples(n: usize, paired: bool) -> Vec<S2sExample> {
    let cfg = common::tiny(HeadKind::Delay, false);
    (0..n)
        .map(|i| {
            let s = common::sample(&cfg, 100 + i as u64, 4 + i % 3, 3 + i % 4);
            S2sExample {
                id: format!("ex{i}"),
                source: if paired { s.source } else { Vec::new() },
                target: s.target,
                text: None,
                speaker: s.cond.speaker,
                emotion: s.cond.emotion,
                language: s.cond.language,
                prosody: s.cond.prosody,
            }
        })
        .collect()
}

fn train_config(stage: Stage, steps: u64) -> S2sTrainConfig {
    let mut c = S2sTrainConfig {
        preset: "tiny".into(),
        stage,
        steps,
        batch_size: 4,
        seed: 3,
        speaker_dim: 8,
        // The examples here are hand-built codes without text.
        text: TextKind::None,
        ..Default::default()
    };
    c.optim.lr = 1e-2;
    c.optim.min_lr = 1e-2;
    c.optim.warmup_steps = 0;
    c.optim.weight_decay = 0.0;
    c.data.val_fraction = 0.0;
    c.data.max_source_frames = 64;
    c.data.max_target_frames = 32;
    c.data.bucket_window = 2;
    c.intervals.log_every = 10;
    c.intervals.val_every = 0;
    c.intervals.ckpt_every = 0;
    c
}

fn tiny_trainer(cfg: S2sTrainConfig, ex: Vec<S2sExample>) -> S2sTrainer {
    let mut t = S2sTrainer::new(
        cfg,
        common::tiny(HeadKind::Delay, false).codec,
        ex,
        None,
        &Device::Cpu,
    )
    .unwrap();
    t.set_codec_name("test-codec");
    t
}

fn metrics_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            // Timing and process memory are not part of the run's state.
            v.as_object_mut().unwrap().remove("steps_per_s");
            v.as_object_mut().unwrap().remove("peak_host_mb");
            v
        })
        .collect()
}

fn greedy(model: &S2sModel, source: &[Frame], cond: SlotCondition) -> Vec<Frame> {
    let gen = GenerationConfig {
        max_frames: 16,
        ..GenerationConfig::greedy()
    };
    let mut st = S2sStream::new(model, 1, gen).unwrap();
    st.start(0, cond, 0).unwrap();
    st.push_source(&[source.to_vec()]).unwrap();
    st.end_source(0).unwrap();
    let mut out = Vec::new();
    for _ in 0..64 {
        if st.is_finished(0) {
            break;
        }
        if let Some(o) = st.step(&StreamMask::All).unwrap().pop().flatten() {
            out.extend(o.frames);
        }
    }
    out
}

#[test]
fn trainer_overfits_pairs_through_the_run_and_the_export_reproduces_them() {
    let dir = tempfile::tempdir().unwrap();
    let ex = examples(4, true);
    let mut t = tiny_trainer(train_config(Stage::S2s, 300), ex.clone());
    let opts = RunOptions {
        out_dir: dir.path().to_path_buf(),
        stop: None,
    };
    let mut steps = 0;
    let summary = run::run(&mut t, &opts, &mut |_| steps += 1).unwrap();
    assert_eq!((summary.steps, steps), (300, 300));
    let lines = metrics_lines(dir.path());
    let loss = |v: &serde_json::Value| v["loss"].as_f64().unwrap();
    let (first, last) = (loss(&lines[0]), loss(lines.last().unwrap()));
    assert!(last < first * 0.1, "loss {first} -> {last}");
    assert_eq!(lines.last().unwrap()["ce"].as_array().unwrap().len(), 3);
    // The export reloads and reproduces every target greedily (s2s stage: neutral
    // conditioning with the example's language).
    let export = dir.path().join("export");
    let info = vaak_s2s::train::ExportInfo::read(&export).unwrap();
    assert_eq!((info.codec.as_str(), info.num_codebooks), ("test-codec", 3));
    let (model, _) = S2sModel::load(&export, &Device::Cpu).unwrap();
    for e in &ex {
        let cond = SlotCondition {
            language: e.language,
            ..Default::default()
        };
        assert_eq!(greedy(&model, &e.source, cond), e.target, "{}", e.id);
    }
}

/// Straight run of `steps` vs the same run stopped after `stop_at` and resumed.
fn resume_matches(stage: Stage, paired: bool) {
    let ex = examples(7, paired);
    let mut cfg = train_config(stage, 8);
    cfg.batch_size = 2;
    cfg.data.val_fraction = 0.3;
    cfg.data.lm_max_frames = 5;
    cfg.cond.speaker_drop_prob = 0.5;
    cfg.intervals.log_every = 1;
    cfg.intervals.val_every = 2;
    cfg.intervals.ckpt_every = 4;
    cfg.optim.warmup_steps = 3;
    cfg.optim.min_lr = 1e-4;
    let a = tempfile::tempdir().unwrap();
    let mut t = tiny_trainer(cfg.clone(), ex.clone());
    assert_eq!(t.val_examples().len(), 2);
    let opts = |p: &Path, stop: Option<Arc<AtomicBool>>| RunOptions {
        out_dir: p.to_path_buf(),
        stop,
    };
    run::run(&mut t, &opts(a.path(), None), &mut |_| {}).unwrap();

    let b = tempfile::tempdir().unwrap();
    let mut t = tiny_trainer(cfg.clone(), ex.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let s = run::run(&mut t, &opts(b.path(), Some(stop)), &mut |m| {
        if m.step == 5 {
            s2.store(true, Ordering::SeqCst);
        }
    })
    .unwrap();
    assert!(s.stopped_early);
    assert_eq!(s.steps, 5);
    drop(t);
    let ck = CheckpointManager::new(b.path().join("checkpoints"), 0)
        .unwrap()
        .load_latest(&Device::Cpu)
        .unwrap()
        .unwrap();
    assert_eq!(ck.state.step, 5);
    let mut t = S2sTrainer::resume(&ck, None, ex, &Device::Cpu).unwrap();
    run::run(&mut t, &opts(b.path(), None), &mut |_| {}).unwrap();

    let (la, mut lb) = (metrics_lines(a.path()), metrics_lines(b.path()));
    assert!(la.iter().any(|l| l.get("val_loss").is_some()));
    // The stopped run validated at its last step (5), which the straight run did not.
    let extra = lb
        .iter()
        .position(|l| l["step"] == 5 && l.get("val_loss").is_some())
        .expect("a validation line at the stop");
    lb.remove(extra);
    assert_eq!(la, lb, "{stage}: metrics lines differ");
    for f in ["model.safetensors", "config.json"] {
        assert_eq!(
            std::fs::read(a.path().join("export").join(f)).unwrap(),
            std::fs::read(b.path().join("export").join(f)).unwrap(),
            "{stage}: export {f} differs"
        );
    }
}

#[test]
fn lm_stage_resumes_exactly() {
    resume_matches(Stage::Lm, false);
}

#[test]
fn cond_stage_resumes_exactly() {
    resume_matches(Stage::Cond, true);
}

#[test]
fn same_seed_same_start_and_paired_stage_refuses_clips() {
    let a = tiny_trainer(train_config(Stage::Lm, 1), examples(3, false));
    let b = tiny_trainer(train_config(Stage::Lm, 1), examples(3, false));
    let (pa, pb) = (a.checkpoint_parts().unwrap(), b.checkpoint_parts().unwrap());
    for (name, t) in &pa.0 {
        assert_eq!(
            common::max_diff(t, &pb.0[name]),
            0.0,
            "{name} differs between two runs with one seed"
        );
    }
    // Length-bucketed batches: every training example once per epoch, sorted within windows.
    let mut seen: Vec<usize> = a.epoch_batches(0).concat();
    seen.sort();
    assert_eq!(seen, (0..a.train_examples().len()).collect::<Vec<_>>());
    let e = S2sTrainer::new(
        train_config(Stage::S2s, 1),
        common::tiny(HeadKind::Delay, false).codec,
        examples(3, false),
        None,
        &Device::Cpu,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("stage") && e.contains("no source"), "{e}");
    // A text-stream model needs aligned text; the lm stage has none.
    let mut c = train_config(Stage::Lm, 1);
    c.text_vocab_size = Some(5);
    let codec = common::tiny(HeadKind::Delay, false).codec;
    let e = S2sTrainer::new(
        c.clone(),
        codec.clone(),
        examples(3, false),
        None,
        &Device::Cpu,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("text_vocab_size"), "{e}");
    c.stage = Stage::S2s;
    let e = S2sTrainer::new(c, codec, examples(3, true), None, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("no text"), "{e}");
}

#[test]
fn text_stream_is_trained_and_validated() {
    let cfg = common::tiny(HeadKind::Delay, true);
    let ex: Vec<S2sExample> = (0..4)
        .map(|i| {
            let s = common::sample(&cfg, 200 + i, 4, 3 + i as usize % 2);
            S2sExample {
                id: format!("t{i}"),
                source: s.source,
                target: s.target,
                text: s.text,
                ..Default::default()
            }
        })
        .collect();
    let mut c = train_config(Stage::S2s, 3);
    c.text_vocab_size = Some(common::TEXT_VOCAB);
    c.loss.text_weight = 0.5;
    c.data.val_fraction = 0.25;
    c.intervals.log_every = 1;
    let mut t = S2sTrainer::new(c, cfg.codec, ex, None, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = RunOptions {
        out_dir: dir.path().to_path_buf(),
        stop: None,
    };
    let s = run::run(&mut t, &opts, &mut |m| {
        assert!(m.text_ce.is_some_and(|x| x.is_finite()));
    })
    .unwrap();
    assert!(s.final_val.text_accuracy.is_some());
    let lines = metrics_lines(dir.path());
    assert!(lines.iter().any(|l| l.get("text_ce").is_some()));
    assert!(lines.iter().any(|l| l.get("val_text_accuracy").is_some()));
}
