//! `vaak bench mt`: M2M-100 generation throughput (sentences/s and generated tokens/s) at
//! several batch sizes, vaak against transformers' `generate()` on the same weights and the
//! same source ids, in the same run.
//!
//! Models: the tiny parity fixture (`tools/fixtures/data/mt_m2m100/m2m`) and a seeded random
//! mid-size M2M-100 (d_model 256, 3+3 layers, vocab 8000) that the peer script writes to a temp
//! dir (skipped without Python), or `--model DIR`. Greedy decoding with EOS banned until the
//! length limit (`min_length = max_length`), so every row generates exactly
//! `--new-tokens` tokens in both implementations; the notes say whether the ids agree.
//!
//! Threads: `--threads N` sets `RAYON_NUM_THREADS` for this process before candle's and
//! gemm's pools start, and the peer gets `torch.set_num_threads(N)` unless `--peer-threads`
//! differs; the notes report the counts candle and rayon actually use.

use crate::peer::{self, PeerArgs, PeerTimingArgs};
use crate::report::{time_median, CaseResult, Machine, Measurement, Report, Timing};
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;
use vaak_nn::weights::WeightLocation;
use vaak_teachers::mt::generate::{generate, EarlyStopping, GenerationParams, MaxLength};
use vaak_teachers::mt::m2m100::{M2m100LoadOptions, M2m100Model};

const PEER_SCRIPT: &str = include_str!("../peers/mt_peer.py");
const TINY: &str = "tools/fixtures/data/mt_m2m100/m2m";

#[derive(Args)]
pub struct MtBenchArgs {
    /// Model directories (config.json + weights). Default: the tiny fixture and a random
    /// mid-size model made by the peer.
    #[arg(long = "model", value_name = "DIR")]
    models: Vec<PathBuf>,
    /// Batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    batch: Vec<usize>,
    /// Generated tokens per sentence (fixed).
    #[arg(long, default_value_t = 32)]
    new_tokens: usize,
    /// Where to write the JSON report.
    #[arg(long, default_value = "bench-mt.json")]
    json: PathBuf,
    /// CPU threads for vaak (sets RAYON_NUM_THREADS, which sizes candle's and gemm's pools,
    /// before anything starts them) and for the peer unless --peer-threads says otherwise.
    /// Default: $RAYON_NUM_THREADS, else all logical CPUs.
    #[arg(long)]
    threads: Option<usize>,
    #[command(flatten)]
    timing: PeerTimingArgs,
    #[command(flatten)]
    peer: PeerArgs,
}

/// Seeded source rows: `[lang] tokens... </s>`, 8 to 24 ids, tokens drawn below `lang`.
fn sources(n: usize, lang: u32, eos: u32, seed: u64) -> Vec<Vec<u32>> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 33) as u32
    };
    (0..n)
        .map(|_| {
            let len = 6 + next() % 17;
            let mut r = vec![lang];
            r.extend((0..len).map(|_| 4 + next() % (lang - 4)));
            r.push(eos);
            r
        })
        .collect()
}

struct Case {
    name: String,
    model: PathBuf,
    sources: Vec<Vec<u32>>,
    max_length: usize,
    forced_bos: u32,
}

pub fn run(args: MtBenchArgs) -> Result<()> {
    if let Some(t) = args.threads {
        anyhow::ensure!(t > 0, "--threads must be at least 1");
        // Read by candle (per call) and by rayon when its global pool starts, which nothing
        // has done yet in this process.
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
    }
    let vaak_threads = candle_core::utils::get_num_threads();
    let peer_threads = args.timing.peer_threads.unwrap_or(vaak_threads);
    let timing = Timing {
        min_time: Duration::from_secs_f64(args.timing.min_time),
        min_iters: 3,
        max_iters: 100,
    };
    let mut notes = Vec::new();
    let python = args.peer.interpreter("peer", &mut notes);
    let tmp = tempfile::tempdir().context("creating a temp dir")?;
    let mut models: Vec<(String, PathBuf)> = args
        .models
        .iter()
        .map(|p| (p.display().to_string(), p.clone()))
        .collect();
    if models.is_empty() {
        models.push(("tiny".into(), PathBuf::from(TINY)));
        if let Some(py) = &python {
            let mid = tmp.path().join("mid");
            let a = vec!["--make-mid".to_string(), mid.display().to_string()];
            match peer::run_script(py, "mt_peer.py", PEER_SCRIPT, &a) {
                Ok(_) => models.push(("mid".into(), mid)),
                Err(e) => notes.push(format!("no mid-size model: {e:#}")),
            }
        } else {
            notes.push("mid-size model needs the Python peer to create it".into());
        }
    }

    let mut cases = Vec::new();
    let mut measured: Vec<(Case, f64, Vec<Vec<u32>>)> = Vec::new();
    for (label, dir) in &models {
        let model = M2m100Model::from_location(
            &WeightLocation::Local(dir.clone()),
            &M2m100LoadOptions::default(),
        )
        .with_context(|| format!("loading {}", dir.display()))?;
        let cfg = model.config().clone();
        // The last ids stand in for language tokens (the fixture's are 128..; any id works).
        let lang = (cfg.vocab_size as u32 * 4 / 5).max(8);
        let eos = cfg.eos_ids()[0];
        let max_length = (args.new_tokens + 1).min(cfg.max_position_embeddings);
        for &b in &args.batch {
            let case = Case {
                name: format!("{label} b{b}"),
                model: dir.clone(),
                sources: sources(b, lang, eos, b as u64),
                max_length,
                forced_bos: lang + 1,
            };
            let p = GenerationParams {
                num_beams: 1,
                max_length: MaxLength::Fixed(max_length),
                min_length: max_length,
                length_penalty: 1.0,
                early_stopping: EarlyStopping::False,
                decoder_start_token_id: cfg.decoder_start_token_id,
                forced_bos_token_id: Some(case.forced_bos),
                forced_eos_token_id: None,
                eos_token_ids: cfg.eos_ids(),
                pad_token_id: cfg.pad_token_id,
                no_repeat_ngram_size: 0,
            };
            let refs: Vec<&[u32]> = case.sources.iter().map(|s| s.as_slice()).collect();
            eprintln!("bench mt: {} ...", case.name);
            let mut ids = Vec::new();
            let secs = time_median(timing, || {
                ids = generate(&model, &refs, &p)?
                    .into_iter()
                    .map(|g| g.tokens)
                    .collect();
                Ok(())
            })?;
            measured.push((case, secs, ids));
        }
    }

    let peer_out = match &python {
        Some(py) if !measured.is_empty() => {
            let mut out = serde_json::Map::new();
            for (mi, (label, dir)) in models.iter().enumerate() {
                let list: Vec<serde_json::Value> = measured
                    .iter()
                    .filter(|(c, _, _)| &c.model == dir)
                    .map(|(c, _, _)| {
                        serde_json::json!({"name": c.name, "sources": c.sources,
                            "max_length": c.max_length, "forced_bos": c.forced_bos})
                    })
                    .collect();
                // Labels of `--model` dirs are paths: name the file by position.
                let cases_path = tmp.path().join(format!("cases-{mi}.json"));
                std::fs::write(
                    &cases_path,
                    serde_json::to_vec(&serde_json::json!({"cases": list}))?,
                )
                .with_context(|| format!("writing {}", cases_path.display()))?;
                let threads = peer_threads;
                eprintln!("bench mt: measuring transformers on {label} ...");
                let a = vec![
                    "--model".to_string(),
                    dir.display().to_string(),
                    "--cases".to_string(),
                    cases_path.display().to_string(),
                    "--threads".to_string(),
                    threads.to_string(),
                    "--min-time".to_string(),
                    args.timing.min_time.to_string(),
                ];
                match peer::run_script(py, "mt_peer.py", PEER_SCRIPT, &a) {
                    Ok(v) => {
                        if let Some(o) = v["cases"].as_object() {
                            out.extend(o.clone());
                        }
                        notes.extend(peer::versions_note(&v));
                    }
                    Err(e) => notes.push(format!("Python peer failed on {label}: {e:#}")),
                }
            }
            Some((out, peer_threads))
        }
        _ => None,
    };

    notes.push(format!(
        "vaak threads: candle get_num_threads() = {vaak_threads}, rayon pool = {}",
        rayon::current_num_threads()
    ));
    for (c, secs, ids) in &measured {
        let b = c.sources.len() as f64;
        let toks = b * (c.max_length - 1) as f64;
        let mut sent = CaseResult {
            case: format!("{} sentences", c.name),
            unit: "sent/s".into(),
            vaak: Measurement {
                implementation: "vaak (candle)".into(),
                seconds: *secs,
                throughput: b / secs,
                threads: vaak_threads,
            },
            peers: Vec::new(),
        };
        let mut tok = CaseResult {
            case: format!("{} tokens", c.name),
            unit: "tok/s".into(),
            vaak: Measurement {
                throughput: toks / secs,
                ..sent.vaak.clone()
            },
            peers: Vec::new(),
        };
        if let Some((out, threads)) = &peer_out {
            if let Some(r) = out.get(&c.name) {
                if let Some(s) = r["seconds"].as_f64() {
                    let m = Measurement {
                        implementation: "transformers generate()".into(),
                        seconds: s,
                        throughput: b / s,
                        threads: *threads,
                    };
                    tok.peers.push(Measurement {
                        throughput: toks / s,
                        ..m.clone()
                    });
                    sent.peers.push(m);
                }
                let same = serde_json::to_value(ids).ok() == Some(r["ids"].clone());
                notes.push(format!(
                    "{}: generated ids {} transformers'",
                    c.name,
                    if same { "equal" } else { "DIFFER from" }
                ));
            }
        }
        cases.push(sent);
        cases.push(tok);
    }

    let report = Report {
        benchmark: "mt".to_string(),
        machine: Machine::here(),
        input: serde_json::json!({
            "models": models.iter().map(|(l, d)| (l.clone(), d.display().to_string()))
                .collect::<Vec<_>>(),
            "batch": args.batch,
            "new_tokens": args.new_tokens,
            "decoding": "greedy, EOS banned until max_length",
        }),
        cases,
        notes,
    };
    report.emit(&args.json)
}
