//! The model-independent training run (`vaak_nn::train::run`) on a tiny linear regression:
//! the run directory, metrics lines, cadence, a stop request, exact resume (bit-identical to
//! a straight run), dropping log lines a crashed run wrote after its last checkpoint, and
//! data shards that partition the items.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use rand::Rng;
use vaak_nn::rvq::seeded_randn;
use vaak_nn::train::run::{
    self, CheckpointParts, Intervals, Metric, RunModel, RunOptions, Validation,
};
use vaak_nn::train::{assign_vars, AdamW, AdamWConfig, Checkpoint, Shard, TrainRng, TrainState};

const DIM: usize = 4;
const BATCH: usize = 8;
const ITEMS: usize = 64;

/// `y = x · w_true + 0.5` on fixed items, fitted by AdamW on random minibatches.
struct LinReg {
    x: Tensor,
    y: Tensor,
    w: Var,
    b: Var,
    opt: AdamW,
    rng: TrainRng,
    step: u64,
    total: u64,
    intervals: Intervals,
    /// Item indices this process trains on.
    items: Vec<usize>,
}

impl LinReg {
    fn new(total: u64, shard: Shard) -> Self {
        let dev = Device::Cpu;
        let mut data_rng = TrainRng::new(1);
        let x = seeded_randn(&mut data_rng, ITEMS, DIM, &dev).unwrap();
        let w_true = Tensor::new(&[[1.0f32], [-2.0], [0.5], [3.0]], &dev).unwrap();
        let y = (x.matmul(&w_true).unwrap() + 0.5).unwrap();
        let w = Var::zeros((DIM, 1), DType::F32, &dev).unwrap();
        let b = Var::zeros(1, DType::F32, &dev).unwrap();
        let opt = AdamW::new(
            vec![("b".into(), b.clone()), ("w".into(), w.clone())],
            AdamWConfig {
                lr: 0.05,
                weight_decay: 0.0,
                ..Default::default()
            },
        )
        .unwrap();
        Self {
            x,
            y,
            w,
            b,
            opt,
            rng: TrainRng::new(7),
            step: 0,
            total,
            intervals: Intervals {
                log_every: 2,
                val_every: 5,
                ckpt_every: 3,
                keep_last: 2,
            },
            items: shard.indices(ITEMS).collect(),
        }
    }

    fn loss(&self, idx: &Tensor) -> Tensor {
        let x = self.x.index_select(idx, 0).unwrap();
        let y = self.y.index_select(idx, 0).unwrap();
        let p = x
            .matmul(self.w.as_tensor())
            .unwrap()
            .broadcast_add(self.b.as_tensor())
            .unwrap();
        (p - y).unwrap().sqr().unwrap().mean_all().unwrap()
    }

    fn weights(&self) -> Vec<f32> {
        let mut v = self.w.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        v.extend(self.b.as_tensor().to_vec1::<f32>().unwrap());
        v
    }
}

/// What a step reports.
struct Step {
    loss: f64,
}

impl RunModel for LinReg {
    type Error = vaak_nn::Error;
    type Step = Step;
    type Val = f64;

    fn step(&self) -> u64 {
        self.step
    }

    fn total_steps(&self) -> u64 {
        self.total
    }

    fn intervals(&self) -> Intervals {
        self.intervals.clone()
    }

    fn config_yaml(&self) -> vaak_nn::Result<String> {
        Ok(format!("model: linreg\nsteps: {}\n", self.total))
    }

    fn train_step(&mut self) -> vaak_nn::Result<Step> {
        let pick: Vec<u32> = (0..BATCH)
            .map(|_| self.items[self.rng.random_range(0..self.items.len())] as u32)
            .collect();
        let idx = Tensor::new(pick.as_slice(), &Device::Cpu)?;
        let loss = self.loss(&idx);
        self.opt.step(&loss.backward()?)?;
        self.step += 1;
        Ok(Step {
            loss: loss.to_scalar::<f32>()? as f64,
        })
    }

    fn metrics(&self, s: &Step) -> Vec<(&'static str, Metric)> {
        let mut m = vec![
            ("loss", Metric::Mean(s.loss)),
            ("lr", Metric::Last(self.opt.lr())),
            ("odd", Metric::Count(self.step % 2)),
            ("both", Metric::MeanVec(vec![s.loss, 2.0 * s.loss])),
        ];
        if self.step.is_multiple_of(3) {
            m.push(("every_third", Metric::Mean(self.step as f64)));
        }
        m
    }

    fn log_fields(&self) -> vaak_nn::Result<Vec<(&'static str, serde_json::Value)>> {
        Ok(vec![("bias", (self.weights()[DIM] as f64).into())])
    }

    fn validate(&mut self) -> vaak_nn::Result<Option<Validation<f64>>> {
        let all: Vec<u32> = (0..ITEMS as u32).collect();
        let mse = self
            .loss(&Tensor::new(all.as_slice(), &Device::Cpu)?)
            .to_scalar::<f32>()? as f64;
        let mut fields = serde_json::Map::new();
        fields.insert("val_mse".into(), mse.into());
        Ok(Some(Validation { value: mse, fields }))
    }

    fn plot(&self, run_dir: &Path) -> vaak_nn::Result<()> {
        let dir = run_dir.join(run::PLOTS_DIR);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{}.txt", self.step)), "plot").unwrap();
        Ok(())
    }

    fn save_state(&self) -> vaak_nn::Result<CheckpointParts> {
        let model: HashMap<String, Tensor> = [
            ("w".to_string(), self.w.as_tensor().copy()?),
            ("b".to_string(), self.b.as_tensor().copy()?),
        ]
        .into();
        let state = TrainState {
            step: self.step,
            schedule: None,
            rng: Some(self.rng.state()),
            metadata: serde_json::json!({ "model": "linreg" }),
        };
        Ok((model, self.opt.state_tensors()?, state))
    }

    fn load_state(&mut self, ck: &Checkpoint) -> vaak_nn::Result<()> {
        assign_vars(
            &[("w".into(), self.w.clone()), ("b".into(), self.b.clone())],
            &ck.model,
        )?;
        self.opt.load_state(&ck.optimizer)?;
        self.step = ck.state.step;
        self.rng = TrainRng::from_state(ck.state.rng.as_ref().expect("rng saved"))?;
        Ok(())
    }

    fn export(&self, dir: &Path) -> vaak_nn::Result<()> {
        std::fs::create_dir_all(dir).unwrap();
        let (model, _, _) = self.save_state()?;
        candle_core::safetensors::save(&model, dir.join("model.safetensors"))?;
        Ok(())
    }
}

fn lines(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join(run::METRICS_FILE))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A line without its wall-clock and process-memory fields.
fn timeless(mut v: serde_json::Value) -> serde_json::Value {
    let o = v.as_object_mut().unwrap();
    o.remove("steps_per_s");
    o.remove("peak_host_mb");
    v
}

#[test]
fn linear_regression_runs_stops_and_resumes_exactly() {
    // Straight: 10 steps.
    let a_dir = tempfile::tempdir().unwrap();
    let mut a = LinReg::new(10, Shard::default());
    let opts = RunOptions {
        out_dir: a_dir.path().to_path_buf(),
        stop: None,
    };
    let mut seen = Vec::new();
    let s = run::run(&mut a, &opts, &mut |m: &Step| seen.push(m.loss)).unwrap();
    assert_eq!((s.steps, s.stopped_early, seen.len()), (10, false, 10));
    assert!(seen[9] < seen[0], "the regression learns: {seen:?}");
    assert!(s.final_val.is_finite() && s.final_val > 0.0);
    assert!(s.last_checkpoint.unwrap().ends_with("step_00000010"));
    assert!(a_dir.path().join("export/model.safetensors").is_file());
    assert!(a_dir.path().join("plots/5.txt").is_file());
    assert_eq!(
        std::fs::read_to_string(a_dir.path().join(run::CONFIG_FILE)).unwrap(),
        "model: linreg\nsteps: 10\n"
    );
    let la = lines(a_dir.path());
    let steps: Vec<u64> = la.iter().map(|l| l["step"].as_u64().unwrap()).collect();
    // Log lines at 2, 4, 6, 8, 10; validation at 5 and 10.
    assert_eq!(steps, vec![2, 4, 5, 6, 8, 10, 10]);
    assert!(la[2]["val_mse"].as_f64().unwrap() > 0.0);
    let first = &la[0];
    let mean = (seen[0] + seen[1]) / 2.0;
    assert_eq!(first["loss"].as_f64().unwrap(), mean);
    assert_eq!(
        first["both"],
        serde_json::json!([mean, (2.0 * seen[0] + 2.0 * seen[1]) / 2.0])
    );
    assert_eq!(first["odd"], serde_json::json!(1), "a count is an integer");
    assert_eq!(first["lr"].as_f64().unwrap(), 0.05);
    assert!(first.get("every_third").is_none(), "no step reported it");
    assert_eq!(la[1]["every_third"].as_f64().unwrap(), 3.0);
    assert!(first["bias"].is_number() && first["steps_per_s"].as_f64().unwrap() > 0.0);
    if cfg!(target_os = "linux") {
        // Every line, log and validation alike, carries the peak host memory.
        assert!(la.iter().all(|l| l["peak_host_mb"].as_f64().unwrap() > 0.0));
    }
    // keep_last = 2: checkpoints 9 and 10 remain.
    let ckpts = vaak_nn::train::CheckpointManager::new(a_dir.path().join("checkpoints"), 0)
        .unwrap()
        .list()
        .unwrap();
    assert_eq!(
        ckpts.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![9, 10]
    );

    // Stopped after step 4, then resumed to 10 in a fresh process.
    let b_dir = tempfile::tempdir().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let opts = RunOptions {
        out_dir: b_dir.path().to_path_buf(),
        stop: Some(stop.clone()),
    };
    let mut b = LinReg::new(10, Shard::default());
    let mut n = 0;
    let s = run::run(&mut b, &opts, &mut |_: &Step| {
        n += 1;
        if n == 4 {
            stop.store(true, Ordering::SeqCst);
        }
    })
    .unwrap();
    assert!(s.stopped_early);
    assert_eq!(s.steps, 4);
    assert!(s.last_checkpoint.unwrap().ends_with("step_00000004"));
    // A crashed run wrote a line after the checkpoint: the resumed run drops it.
    let mut text = std::fs::read_to_string(b_dir.path().join(run::METRICS_FILE)).unwrap();
    text.push_str("{\"step\":5,\"loss\":123.0}\n");
    std::fs::write(b_dir.path().join(run::METRICS_FILE), text).unwrap();
    drop(b);

    let mut b = LinReg::new(10, Shard::default());
    let from = run::resume_latest(&mut b, b_dir.path(), &Device::Cpu)
        .unwrap()
        .unwrap();
    assert!(from.ends_with("step_00000004"));
    assert_eq!(b.step(), 4);
    stop.store(false, Ordering::SeqCst);
    let s = run::run(&mut b, &opts, &mut |_: &Step| {}).unwrap();
    assert_eq!((s.steps, s.stopped_early), (10, false));
    assert_eq!(a.weights(), b.weights(), "resumed weights differ");
    assert_eq!(s.final_val, a.validate().unwrap().unwrap().value);

    // Same lines as the straight run, plus the validation at the stop (step 4).
    let lb = lines(b_dir.path());
    let steps: Vec<u64> = lb.iter().map(|l| l["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, vec![2, 4, 4, 5, 6, 8, 10, 10]);
    assert!(lb[2].get("val_mse").is_some());
    let mut lb: Vec<_> = lb.into_iter().map(timeless).collect();
    lb.remove(2);
    let la: Vec<_> = la.into_iter().map(timeless).collect();
    assert_eq!(la, lb);
}

#[test]
fn shards_partition_the_items() {
    for world in 1..=5usize {
        for n in [0usize, 1, 7, 64] {
            let mut all: Vec<usize> = Vec::new();
            let mut sizes = Vec::new();
            for rank in 0..world {
                let s = Shard::new(rank, world).unwrap();
                let idx: Vec<usize> = s.indices(n).collect();
                assert!(idx.iter().all(|&i| s.owns(i)));
                assert_eq!(s.select((0..n).collect::<Vec<_>>()), idx);
                sizes.push(idx.len());
                all.extend(idx);
            }
            all.sort();
            assert_eq!(all, (0..n).collect::<Vec<_>>(), "world {world}, {n} items");
            let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(hi - lo <= 1, "{sizes:?}");
        }
    }
    let single = Shard::default();
    assert_eq!((single.rank, single.world_size), (0, 1));
    assert_eq!(single.select(vec!["a", "b"]), vec!["a", "b"]);
    assert!(Shard::new(2, 2).is_err());
    assert!(Shard::new(0, 0).is_err());
}
