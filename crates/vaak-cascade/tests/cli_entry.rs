//! The library entry point `vaak cascade` calls (`run_invocation`), with TEST DOUBLES as the
//! teachers: config file + flag overrides + shard from the scheduler environment.

mod common;

use std::path::PathBuf;

use common::*;
use vaak_cascade::{run_invocation, CascadeError, Invocation, Outcome, Overrides};
use vaak_data::Lang;

fn setup(n: usize) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let mut csv = RU_HEADER.to_string();
    for i in 0..n {
        write_clip(&root.join("data"), &format!("x{i}.wav"), 2.0, 0.5);
        csv.push_str(&ru_line(&format!("x{i}"), &format!("x{i}.wav"), 2.0));
    }
    std::fs::write(root.join("manifest.csv"), csv).unwrap();
    let cfg = root.join("config.yaml");
    std::fs::write(&cfg, config_yaml(&root, "", "")).unwrap();
    (tmp, cfg)
}

fn no_env(_: &str) -> Option<String> {
    None
}

#[test]
fn runs_from_a_config_file_with_slurm_shard_and_flag_overrides() {
    let (tmp, cfg) = setup(8);
    let out2 = tmp.path().join("elsewhere");
    let inv = Invocation {
        config: Some(cfg),
        lang: Some(Lang::Ru),
        overrides: Overrides {
            output_root: Some(out2.clone()),
            device: Some("cpu".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let env = |k: &str| match k {
        "SLURM_ARRAY_TASK_ID" => Some("1".to_string()),
        "SLURM_ARRAY_TASK_COUNT" => Some("2".to_string()),
        _ => None,
    };
    let f = DoubleFactory::default();
    let Outcome::Ran(s) = run_invocation(&inv, &f, env).unwrap() else {
        panic!("expected a run")
    };
    assert_eq!((s.shard_idx, s.num_shards), (1, 2));
    assert_eq!(s.ok, s.shard_rows);
    assert!(out2.join("logs/ruen/summary_1.json").is_file());
    assert!(
        !tmp.path().join("out").exists(),
        "--output-root overrides the file"
    );
    // The other half, via the k8s variables.
    let env = |k: &str| match k {
        "JOB_COMPLETION_INDEX" => Some("0".to_string()),
        "VAAK_NUM_SHARDS" => Some("2".to_string()),
        _ => None,
    };
    let Outcome::Ran(s0) = run_invocation(&inv, &f, env).unwrap() else {
        panic!()
    };
    assert_eq!(s0.ok + s.ok, 8);
    assert_eq!(
        std::fs::read_dir(out2.join("data/parallel/ruen"))
            .unwrap()
            .count(),
        8
    );
}

#[test]
fn dry_run_plans_without_teachers() {
    let (_tmp, cfg) = setup(5);
    let inv = Invocation {
        config: Some(cfg),
        dry_run: true,
        num_shards: Some(1),
        ..Default::default()
    };
    // A factory that cannot build anything proves no model is touched.
    struct Nothing;
    impl vaak_cascade::TeacherFactory for Nothing {
        fn asr(
            &self,
            _: &vaak_cascade::config::ModelSpec,
            _: &candle_core::Device,
        ) -> Result<std::sync::Arc<dyn vaak_teachers::Asr>, String> {
            Err("no".into())
        }
        fn translator(
            &self,
            _: &vaak_cascade::config::ModelSpec,
            _: &candle_core::Device,
        ) -> Result<std::sync::Arc<dyn vaak_teachers::Translator>, String> {
            Err("no".into())
        }
        fn speaker(
            &self,
            _: &vaak_cascade::config::ModelSpec,
            _: &candle_core::Device,
        ) -> Result<std::sync::Arc<dyn vaak_teachers::SpeakerEncoder>, String> {
            Err("no".into())
        }
        fn tts(
            &self,
            _: &vaak_cascade::config::ModelSpec,
            _: &candle_core::Device,
        ) -> Result<std::sync::Arc<dyn vaak_teachers::Tts>, String> {
            Err("no".into())
        }
        fn codec(
            &self,
            _: &vaak_cascade::config::ModelSpec,
            _: &candle_core::Device,
        ) -> Result<std::sync::Arc<dyn vaak_cascade::TokenCodec>, String> {
            Err("no".into())
        }
    }
    let Outcome::DryRun(p) = run_invocation(&inv, &Nothing, no_env).unwrap() else {
        panic!()
    };
    assert_eq!(p.items.len(), 5);
    let inv = Invocation {
        dry_run: false,
        ..inv
    };
    let e = run_invocation(&inv, &Nothing, no_env).unwrap_err();
    assert!(matches!(e, CascadeError::Teacher { .. }), "{e}");
    assert!(
        e.to_string().contains("asr") && e.to_string().contains("test-asr"),
        "{e}"
    );
}

#[test]
fn clear_errors_for_bad_invocations() {
    let (tmp, cfg) = setup(1);
    let f = DoubleFactory::default();
    // --lang disagreeing with the direction.
    let inv = Invocation {
        config: Some(cfg.clone()),
        lang: Some(Lang::En),
        ..Default::default()
    };
    let e = run_invocation(&inv, &f, no_env).unwrap_err().to_string();
    assert!(e.contains("--lang en"), "{e}");
    // Shard index out of range.
    let inv = Invocation {
        config: Some(cfg.clone()),
        shard_idx: Some(2),
        num_shards: Some(2),
        ..Default::default()
    };
    assert!(run_invocation(&inv, &f, no_env)
        .unwrap_err()
        .to_string()
        .contains("shard"));
    // Manifest missing required columns: fails fast, naming the file and the columns.
    let bad = tmp.path().join("bad.csv");
    std::fs::write(&bad, "id,lang,path,dur\nx,ru,x.wav,2\n").unwrap();
    let inv = Invocation {
        config: Some(cfg.clone()),
        overrides: Overrides {
            manifest: Some((Lang::Ru, bad.clone())),
            ..Default::default()
        },
        ..Default::default()
    };
    let e = run_invocation(&inv, &f, no_env).unwrap_err().to_string();
    assert!(
        e.contains("bad.csv")
            && e.contains("audio_path")
            && e.contains("duration_s")
            && e.contains("tier"),
        "{e}"
    );
    // Unknown config key.
    let c2 = tmp.path().join("c2.yaml");
    std::fs::write(
        &c2,
        format!("{}\nbogus_key: 1\n", std::fs::read_to_string(&cfg).unwrap()),
    )
    .unwrap();
    let inv = Invocation {
        config: Some(c2),
        ..Default::default()
    };
    let e = run_invocation(&inv, &f, no_env).unwrap_err().to_string();
    assert!(e.contains("bogus_key"), "{e}");
    // The embedded defaults parse (the manifest they name does not exist here).
    let inv = Invocation {
        config: None,
        dry_run: true,
        ..Default::default()
    };
    let e = run_invocation(&inv, &f, no_env).unwrap_err().to_string();
    assert!(e.contains("golos_filtered.csv"), "{e}");
}

#[test]
fn a_missing_data_root_or_manifest_stops_the_run_and_the_dry_run_before_any_row() {
    let (tmp, cfg) = setup(3);
    std::fs::remove_dir_all(tmp.path().join("data")).unwrap();
    for dry_run in [true, false] {
        let inv = Invocation {
            config: Some(cfg.clone()),
            dry_run,
            ..Default::default()
        };
        let e = run_invocation(&inv, &DoubleFactory::default(), no_env).unwrap_err();
        assert!(matches!(e, CascadeError::DataRoot { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.starts_with("data_root does not exist: ") && msg.contains("(config key data_root)"),
            "{msg}"
        );
        assert!(
            !tmp.path().join("out").exists(),
            "nothing written, no error log"
        );
    }
    std::fs::create_dir_all(tmp.path().join("data")).unwrap();
    let missing = tmp.path().join("other.csv");
    let inv = Invocation {
        config: Some(cfg),
        dry_run: true,
        overrides: Overrides {
            manifest: Some((Lang::Ru, missing.clone())),
            ..Default::default()
        },
        ..Default::default()
    };
    let e = run_invocation(&inv, &DoubleFactory::default(), no_env).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "the manifest for ru does not exist: {} (--manifest)",
            missing.display()
        )
    );
    assert!(std::error::Error::source(&e).is_none(), "reported once");
}
