//! Weight loading: every format against the same reference values, hub cache resolution
//! offline, weight norm against PyTorch, and typed errors for bad files.
//! Fixtures: tools/fixtures/weights_formats.py.

use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use vaak_nn::streaming::max_abs_diff;
use vaak_nn::weights::{
    merge_weight_norm, weight_norm, HubOptions, LoadOptions, WeightLocation, Weights,
};
use vaak_nn::Error;

/// PyTorch's merged weight-norm weight vs ours (both f32).
const WEIGHT_NORM_TOL: f32 = 1e-6;
/// q8_0 stores each 32-value block as int8 times one f16 scale (max|x| / 127): the rounding
/// error is at most half a step, plus the f16 rounding of the scale.
const Q8_0_TOL: f32 = 0.02;

fn data(rel: &str) -> PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tools/fixtures/data/weights"
    ))
    .join(rel)
}

struct RefTensor {
    name: String,
    dtype: DType,
    shape: Vec<usize>,
    f64s: Vec<f64>,
    i64s: Vec<i64>,
}

fn reference() -> Vec<RefTensor> {
    let text = std::fs::read_to_string(data("reference.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    for (name, t) in v.as_object().unwrap() {
        let dtype = match t["dtype"].as_str().unwrap() {
            "f32" => DType::F32,
            "f16" => DType::F16,
            "bf16" => DType::BF16,
            "i64" => DType::I64,
            other => panic!("dtype {other}"),
        };
        let shape = t["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let vals = t["values"].as_array().unwrap();
        let (f64s, i64s) = if dtype == DType::I64 {
            (
                vec![],
                vals.iter()
                    .map(|x| x.as_str().unwrap().parse().unwrap())
                    .collect(),
            )
        } else {
            (vals.iter().map(|x| x.as_f64().unwrap()).collect(), vec![])
        };
        out.push(RefTensor {
            name: name.clone(),
            dtype,
            shape,
            f64s,
            i64s,
        });
    }
    out
}

/// Checks that `w` holds exactly the reference set: same names, dtypes, shapes and values.
fn assert_matches_reference(w: &Weights, what: &str, convert_to: Option<DType>) {
    let refs = reference();
    let mut want: Vec<&str> = refs.iter().map(|r| r.name.as_str()).collect();
    want.sort_unstable();
    assert_eq!(w.names(), want, "{what}: tensor names");
    for r in &refs {
        let t = w.get(&r.name).unwrap();
        assert_eq!(t.dims(), r.shape.as_slice(), "{what}: {} shape", r.name);
        if r.dtype == DType::I64 {
            assert_eq!(t.dtype(), DType::I64, "{what}: ints keep their dtype");
            let got: Vec<i64> = t.flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(got, r.i64s, "{what}: {}", r.name);
        } else {
            assert_eq!(
                t.dtype(),
                convert_to.unwrap_or(r.dtype),
                "{what}: {}",
                r.name
            );
            let got: Vec<f32> = t
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            // Every stored value is exactly representable in f32, and f16/bf16 -> f32 is
            // exact, so equality is exact (the JSON f64 text rounds back to the same f32).
            let expect: Vec<f32> = match convert_to {
                Some(DType::BF16) => r
                    .f64s
                    .iter()
                    .map(|&x| half::bf16::from_f32(x as f32).to_f32())
                    .collect(),
                _ => r.f64s.iter().map(|&x| x as f32).collect(),
            };
            assert_eq!(got, expect, "{what}: {}", r.name);
        }
    }
}

fn opts() -> LoadOptions {
    LoadOptions {
        hub: HubOptions {
            offline: true,
            cache_dir: Some(PathBuf::from("/nonexistent-vaak-cache")),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[test]
fn every_format_loads_the_same_tensors() {
    let cases = [
        ("single/model.safetensors", None),
        ("single", None),
        ("sharded", None),
        ("sharded/model.safetensors.index.json", None),
        ("model.pth", None),
        ("lightning.ckpt", None),
        ("bin", None),
        ("bin/pytorch_model.bin", None),
        ("nested_model.pth", None),
        ("custom_key.pth", Some("generator")),
        ("legacy.pth", None),
        ("legacy_lightning.ckpt", None),
        ("legacy_lightning.ckpt", Some("state_dict")),
    ];
    for (rel, key) in cases {
        let o = LoadOptions {
            state_dict_key: key.map(str::to_string),
            ..opts()
        };
        let w = Weights::load(data(rel).to_str().unwrap(), &o).unwrap();
        assert_matches_reference(&w, rel, None);
    }
    let sharded = Weights::load(data("sharded").to_str().unwrap(), &opts()).unwrap();
    assert_eq!(sharded.files().len(), 2, "both shards are opened");
}

#[test]
fn views_into_storages_load_in_both_pytorch_formats() {
    let want = candle_core::safetensors::load(data("views_ref.safetensors"), &Device::Cpu).unwrap();
    for rel in ["views.pth", "views_legacy.pth"] {
        let w = Weights::load(data(rel).to_str().unwrap(), &opts()).unwrap();
        assert_eq!(w.names(), ["shared", "slice", "transposed"], "{rel}");
        for (name, t) in &want {
            let got = w.get(name).unwrap();
            assert_eq!(got.dims(), t.dims(), "{rel} {name}");
            assert_eq!(max_abs_diff(&got, t).unwrap(), 0.0, "{rel} {name}");
        }
    }
}

#[test]
fn custom_key_is_needed_when_the_layout_is_unknown() {
    let err = Weights::load(data("custom_key.pth").to_str().unwrap(), &opts())
        .err()
        .expect("no tensors at the top level nor under state_dict/model");
    assert!(matches!(err, Error::UnsupportedFormat { .. }), "{err}");
    assert!(err.to_string().contains("custom_key.pth"), "{err}");
}

#[test]
fn dtype_conversion_on_load() {
    for dt in [DType::F32, DType::BF16] {
        let o = LoadOptions {
            dtype: Some(dt),
            ..opts()
        };
        for rel in ["single", "model.pth"] {
            let w = Weights::load(data(rel).to_str().unwrap(), &o).unwrap();
            assert_matches_reference(&w, &format!("{rel} as {dt:?}"), Some(dt));
        }
    }
}

#[test]
fn var_builder_over_weights() {
    let w = Weights::load(data("model.pth").to_str().unwrap(), &opts()).unwrap();
    let vb = w.into_var_builder(Some(DType::F32));
    let conv = vb.pp("encoder").pp("layers").pp("0").pp("conv");
    let weight = conv.get((4, 3, 5), "weight").unwrap();
    assert_eq!(weight.dtype(), DType::F32);
    let r = reference();
    let want = &r
        .iter()
        .find(|t| t.name == "encoder.layers.0.conv.weight")
        .unwrap()
        .f64s;
    let got: Vec<f32> = weight.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(got, want.iter().map(|&x| x as f32).collect::<Vec<_>>());
    // A wrong shape is an error naming the tensor, not a silent reshape.
    let err = conv.get((5, 3, 4), "weight").unwrap_err().to_string();
    assert!(err.contains("encoder.layers.0.conv.weight"), "{err}");
    let err = vb.get(3, "decoder.nope").unwrap_err().to_string();
    assert!(err.contains("decoder.nope"), "{err}");
}

#[test]
fn gguf_dequantizes_and_keeps_qtensors() {
    let w = Weights::load(data("quant.gguf").to_str().unwrap(), &opts()).unwrap();
    assert_eq!(w.names(), ["blk.0.f16", "blk.0.f32", "blk.0.q8"]);
    let reference =
        candle_core::safetensors::load(data("gguf_ref.safetensors"), &Device::Cpu).unwrap();
    for name in ["blk.0.f32", "blk.0.f16", "blk.0.q8"] {
        let got = w.get(name).unwrap();
        assert_eq!(got.dtype(), DType::F32, "gguf comes out as f32");
        let want = &reference[name];
        assert_eq!(got.dims(), want.dims(), "{name}");
        // Dequantization in candle and in gguf-py is the same f32 product: exact.
        let diff = max_abs_diff(&got, want).unwrap();
        assert_eq!(diff, 0.0, "{name}");
    }
    let orig = &reference["blk.0.q8.original"];
    let q_err = max_abs_diff(&w.get("blk.0.q8").unwrap(), orig).unwrap();
    assert!(q_err > 0.0 && q_err <= Q8_0_TOL, "q8_0 error {q_err}");
    assert_eq!(w.qtensor("blk.0.q8").unwrap().dtype(), GgmlDType::Q8_0);
    assert_eq!(w.qtensor("blk.0.f16").unwrap().dtype(), GgmlDType::F16);
    let md = w.gguf_metadata("blk.0.q8").unwrap();
    assert_eq!(md["vaaktest.answer"].to_u32().unwrap(), 42);
    // Non-gguf tensors have no quantized form.
    let st = Weights::load(data("single").to_str().unwrap(), &opts()).unwrap();
    assert!(matches!(
        st.qtensor("decoder.proj.weight"),
        Err(Error::UnsupportedFormat { .. })
    ));
}

#[test]
fn weight_norm_matches_pytorch_in_both_spellings() {
    let reference =
        Weights::load(data("weight_norm.safetensors").to_str().unwrap(), &opts()).unwrap();
    for file in ["weight_norm.safetensors", "weight_norm.pth"] {
        let w = Weights::load(data(file).to_str().unwrap(), &opts()).unwrap();
        let names = w.names().join(" ");
        assert!(
            names.contains("old0.weight_g") && names.contains("old0.weight_v"),
            "{names}"
        );
        assert!(
            names.contains("new0.parametrizations.weight.original0"),
            "{names}"
        );
        let vb = w.into_var_builder(Some(DType::F32));
        for (module, dim) in [("old0", 0), ("new0", 0), ("old1", 1), ("new1", 1)] {
            let want = reference.get(&format!("ref.{module}.weight")).unwrap();
            let got = weight_norm(&vb.pp(module), want.dims(), Some(dim)).unwrap();
            let diff = max_abs_diff(&got, &want).unwrap();
            assert!(diff <= WEIGHT_NORM_TOL, "{file} {module}: {diff}");
            println!("weight norm {file} {module}: max abs diff {diff:e}");
            // g differs from ||v||, so v alone is not the answer.
            let v_only = vb
                .pp(module)
                .get_unchecked(if module.starts_with("old") {
                    "weight_v"
                } else {
                    "parametrizations.weight.original1"
                })
                .unwrap();
            assert!(max_abs_diff(&v_only, &want).unwrap() > 1e-2);
        }
    }
    // A plain (already merged) weight is passed through.
    let vb = reference.into_var_builder(Some(DType::F32));
    let want = vb.pp("ref.old0").get((4, 3, 5), "weight").unwrap();
    let got = weight_norm(&vb.pp("ref.old0"), &[4, 3, 5], Some(0)).unwrap();
    assert_eq!(max_abs_diff(&got, &want).unwrap(), 0.0);
    let err = weight_norm(&vb.pp("nothing"), &[4, 3, 5], Some(0))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nothing.weight_g") && err.contains("original0"),
        "{err}"
    );
}

#[test]
fn merge_weight_norm_whole_tensor_norm() {
    // dim = None: one g for the whole tensor.
    let v = Tensor::new(&[[3f32, 0.], [0., 4.]], &Device::Cpu).unwrap();
    let g = Tensor::new(10f32, &Device::Cpu).unwrap();
    let w = merge_weight_norm(&g, &v, None).unwrap();
    assert_eq!(w.to_vec2::<f32>().unwrap(), [[6., 0.], [0., 8.]]);
    let g = Tensor::new(&[[1f32], [2.]], &Device::Cpu).unwrap();
    let w = merge_weight_norm(&g, &v, Some(0)).unwrap();
    assert_eq!(w.to_vec2::<f32>().unwrap(), [[1., 0.], [0., 2.]]);
    assert!(merge_weight_norm(&g, &v, Some(2)).is_err());
}

#[test]
fn missing_tensor_names_tensor_and_file() {
    for rel in ["single/model.safetensors", "model.pth", "quant.gguf"] {
        let w = Weights::load(data(rel).to_str().unwrap(), &opts()).unwrap();
        let err = w.get("encoder.layers.9.conv.weight").unwrap_err();
        assert!(matches!(err, Error::MissingTensor { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("encoder.layers.9.conv.weight"), "{msg}");
        assert!(msg.contains(rel.rsplit('/').next().unwrap()), "{msg}");
    }
    let w = Weights::load(data("single").to_str().unwrap(), &opts()).unwrap();
    let err = w
        .get_with_shape("decoder.proj.weight", &[8, 6])
        .unwrap_err();
    assert!(
        matches!(&err, Error::ShapeMismatch { name, found, .. } if name == "decoder.proj.weight" && found == &[6, 8]),
        "{err}"
    );
}

fn truncated_copy(dir: &Path, rel: &str, keep: f64) -> PathBuf {
    let bytes = std::fs::read(data(rel)).unwrap();
    let name = rel.rsplit('/').next().unwrap();
    let p = dir.join(format!("trunc-{keep}-{name}"));
    std::fs::write(&p, &bytes[..(bytes.len() as f64 * keep) as usize]).unwrap();
    p
}

#[test]
fn bad_files_give_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let load = |p: &Path| Weights::from_files(&[p], &opts()).map(|w| w.load_all());
    for (rel, keep) in [
        ("single/model.safetensors", 0.5),
        ("single/model.safetensors", 0.02),
        ("model.pth", 0.5),
        ("model.pth", 0.9),
        ("legacy.pth", 0.5),
        ("legacy.pth", 0.97),
        ("quant.gguf", 0.5),
        ("quant.gguf", 0.9),
        ("quant.gguf", 0.1),
    ] {
        let p = truncated_copy(dir.path(), rel, keep);
        let err = match load(&p) {
            Err(e) => e,
            Ok(Err(e)) => e,
            Ok(Ok(_)) => panic!("{rel} cut to {keep} loaded"),
        };
        assert!(
            matches!(err, Error::CorruptFile { ref path, .. } if path == &p),
            "{rel} cut to {keep}: {err}"
        );
    }
    // Text under weight-file names.
    for name in ["junk.safetensors", "junk.pth", "junk.gguf", "junk.bin"] {
        let p = dir.path().join(name);
        std::fs::write(&p, "this is not a weight file, just some text\n").unwrap();
        let err = load(&p).err().unwrap();
        assert!(matches!(err, Error::CorruptFile { .. }), "{name}: {err}");
        assert!(err.to_string().contains(name), "{err}");
    }
    let p = dir.path().join("notes.txt");
    std::fs::write(&p, "hello").unwrap();
    assert!(matches!(load(&p), Err(Error::UnsupportedFormat { .. })));
    let p = dir.path().join("empty.safetensors");
    std::fs::write(&p, "").unwrap();
    assert!(matches!(load(&p), Err(Error::CorruptFile { .. })));
    // A pickle that torch.save did not write is refused.
    let err = load(&data("not_torch.pth")).err().unwrap();
    assert!(
        matches!(&err, Error::UnsupportedFormat { path, .. } if path.ends_with("not_torch.pth")),
        "{err}"
    );
    // A state-dict key that does not exist.
    let o = LoadOptions {
        state_dict_key: Some("ema".into()),
        ..opts()
    };
    for rel in ["lightning.ckpt", "legacy_lightning.ckpt"] {
        let err = Weights::load(data(rel).to_str().unwrap(), &o)
            .err()
            .unwrap();
        assert!(err.to_string().contains(rel), "{err}");
    }
    // A mis-named file still loads by content.
    let p = dir.path().join("actually_gguf.safetensors");
    std::fs::copy(data("quant.gguf"), &p).unwrap();
    assert_eq!(Weights::from_files(&[&p], &opts()).unwrap().len(), 3);
    // A shard index pointing at a missing shard names the shard.
    let idx = dir.path().join("model.safetensors.index.json");
    std::fs::write(
        &idx,
        r#"{"weight_map": {"a": "model-00001-of-00002.safetensors"}}"#,
    )
    .unwrap();
    let err = load(&idx).err().unwrap();
    assert!(
        matches!(&err, Error::MissingFile { path } if path.ends_with("model-00001-of-00002.safetensors")),
        "{err}"
    );
    std::fs::write(&idx, r#"{"metadata": {}}"#).unwrap();
    assert!(matches!(load(&idx), Err(Error::CorruptFile { .. })));
    // Missing paths and empty or ambiguous directories.
    let missing = dir.path().join("nope.safetensors");
    assert!(
        matches!(Weights::load(missing.to_str().unwrap(), &opts()), Err(Error::MissingFile { path }) if path == missing)
    );
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        Weights::load(empty.path().to_str().unwrap(), &opts()),
        Err(Error::NoWeightFile { .. })
    ));
    let two = tempfile::tempdir().unwrap();
    for name in ["a.safetensors", "b.safetensors"] {
        std::fs::copy(data("single/model.safetensors"), two.path().join(name)).unwrap();
    }
    let err = Weights::load(two.path().to_str().unwrap(), &opts())
        .err()
        .unwrap();
    assert!(
        matches!(&err, Error::AmbiguousWeights { candidates, .. } if candidates == "a.safetensors, b.safetensors"),
        "{err}"
    );
}

#[test]
fn location_parsing() {
    assert_eq!(
        WeightLocation::parse("hf://kyutai/mimi").unwrap(),
        WeightLocation::Hub {
            repo: "kyutai/mimi".into(),
            revision: "main".into(),
            path: "".into()
        }
    );
    assert_eq!(
        WeightLocation::parse("hf://facebook/encodec_24khz@v1.0/sub/model.safetensors").unwrap(),
        WeightLocation::Hub {
            repo: "facebook/encodec_24khz".into(),
            revision: "v1.0".into(),
            path: "sub/model.safetensors".into()
        }
    );
    assert_eq!(
        WeightLocation::parse("./weights/model.pth").unwrap(),
        WeightLocation::Local("./weights/model.pth".into())
    );
    let loc = WeightLocation::parse("hf://a/b@dev/x.gguf").unwrap();
    assert_eq!(loc.to_string(), "hf://a/b@dev/x.gguf");
    for bad in [
        "",
        "hf://",
        "hf://onlyorg",
        "hf://org/",
        "hf:///repo",
        "hf://org/repo@",
        "hf://org/re po",
        "hf://org/repo/../../etc/passwd",
        "hf://org/repo//x",
        "s3://bucket/key",
    ] {
        let err = WeightLocation::parse(bad).unwrap_err();
        assert!(
            matches!(err, Error::BadSpec { ref spec, .. } if spec == bad),
            "{bad:?}: {err}"
        );
    }
}

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

/// Builds `<cache>/models--org--tiny` as huggingface_hub lays it out: files in blobs/, linked
/// from snapshots/<sha>/, and refs/main naming the sha.
fn fake_cache(cache: &Path) {
    let repo = cache.join("models--org--tiny");
    let snap = repo.join("snapshots").join(SHA);
    std::fs::create_dir_all(snap.join("sharded")).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), SHA).unwrap();
    std::fs::write(snap.join("config.json"), r#"{"dim": 8}"#).unwrap();
    let files = [
        ("model.safetensors", "single/model.safetensors"),
        (
            "sharded/model.safetensors.index.json",
            "sharded/model.safetensors.index.json",
        ),
        (
            "sharded/model-00001-of-00002.safetensors",
            "sharded/model-00001-of-00002.safetensors",
        ),
        (
            "sharded/model-00002-of-00002.safetensors",
            "sharded/model-00002-of-00002.safetensors",
        ),
    ];
    for (i, (dst, src)) in files.iter().enumerate() {
        let blob = repo.join("blobs").join(format!("blob{i}"));
        std::fs::copy(data(src), &blob).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(&blob, snap.join(dst)).unwrap();
        #[cfg(not(unix))]
        std::fs::copy(&blob, snap.join(dst)).unwrap();
    }
}

#[test]
fn hub_cache_offline() {
    let cache = tempfile::tempdir().unwrap();
    fake_cache(cache.path());
    let o = LoadOptions {
        hub: HubOptions {
            offline: true,
            cache_dir: Some(cache.path().to_path_buf()),
            ..Default::default()
        },
        ..Default::default()
    };
    for spec in [
        "hf://org/tiny",
        "hf://org/tiny/model.safetensors",
        &format!("hf://org/tiny@{SHA}/model.safetensors"),
        "hf://org/tiny/sharded",
        "hf://org/tiny@main/sharded/model.safetensors.index.json",
    ] {
        let w = Weights::load(spec, &o).unwrap();
        assert_matches_reference(&w, spec, None);
        for f in w.files() {
            assert!(f.starts_with(cache.path()), "{spec}: {}", f.display());
        }
    }

    // Non-weight files next to the weights (config.json) resolve through the same cache.
    let loc = WeightLocation::parse("hf://org/tiny").unwrap();
    let cfg = loc.join("config.json").resolve_file(&o.hub).unwrap();
    assert_eq!(std::fs::read_to_string(cfg).unwrap(), r#"{"dim": 8}"#);
    let files = vaak_nn::weights::resolve_files(&loc.join("sharded"), &o.hub).unwrap();
    assert_eq!(files.len(), 2);
    let local = WeightLocation::Local(data("single"));
    assert!(matches!(
        local.join("config.json").resolve_file(&o.hub),
        Err(Error::MissingFile { .. })
    ));

    let err = Weights::load("hf://org/tiny@main/decoder.safetensors", &o)
        .err()
        .unwrap();
    assert!(matches!(err, Error::HubFileNotCached { .. }), "{err}");
    let msg = err.to_string();
    for part in [
        "decoder.safetensors",
        "hf://org/tiny@main",
        "huggingface-cli download org/tiny decoder.safetensors --revision main",
        &cache.path().display().to_string(),
    ] {
        assert!(msg.contains(part), "missing {part:?} in: {msg}");
    }
    // An unknown revision is missing as a whole.
    let err = Weights::load("hf://org/tiny@v2/model.safetensors", &o)
        .err()
        .unwrap();
    assert!(
        matches!(&err, Error::HubFileNotCached { revision, .. } if revision == "v2"),
        "{err}"
    );
    let err = Weights::load("hf://other/repo", &o).err().unwrap();
    assert!(matches!(err, Error::HubFileNotCached { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("`huggingface-cli download other/repo --revision main`"),
        "{err}"
    );
}

/// All environment-driven behaviour in one test, so no other test sees the variables.
#[test]
fn hub_env_offline_and_cache_dir() {
    let cache = tempfile::tempdir().unwrap();
    fake_cache(cache.path());
    std::env::set_var("HF_HUB_OFFLINE", "1");
    std::env::set_var("HF_HUB_CACHE", cache.path());
    let hub = vaak_nn::weights::Hub::new(&HubOptions::default());
    assert!(hub.is_offline());
    assert_eq!(hub.cache_dir(), cache.path());
    let w = Weights::load("hf://org/tiny", &LoadOptions::default()).unwrap();
    assert_matches_reference(&w, "env", None);
    std::env::remove_var("HF_HUB_CACHE");
    let home = tempfile::tempdir().unwrap();
    std::env::set_var("HF_HOME", home.path());
    let hub = vaak_nn::weights::Hub::new(&HubOptions::default());
    assert_eq!(hub.cache_dir(), home.path().join("hub"));
    let err = Weights::load("hf://org/tiny", &LoadOptions::default())
        .err()
        .unwrap();
    assert!(matches!(err, Error::HubFileNotCached { .. }), "{err}");
    std::env::remove_var("HF_HOME");
    std::env::remove_var("HF_HUB_OFFLINE");
}

/// Damage the bytes of small files in turn (one at a time): loading and reading all tensors
/// must return (Ok or a typed error), never panic.
#[test]
fn byte_corruption_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    // (file, byte stride): the zip is larger and slower to open, so every 5th byte of it.
    for (rel, stride) in [
        ("quant.gguf", 1),
        ("single/model.safetensors", 1),
        ("model.pth", 5),
        ("legacy.pth", 5),
    ] {
        let orig = std::fs::read(data(rel)).unwrap();
        let name = rel.rsplit('/').next().unwrap();
        let p = dir.path().join(name);
        let mut errors = 0;
        for i in (0..orig.len()).step_by(stride) {
            for v in [0xffu8, 0x00] {
                if orig[i] == v {
                    continue;
                }
                let mut bytes = orig.clone();
                bytes[i] = v;
                std::fs::write(&p, &bytes).unwrap();
                let res = Weights::from_files(&[&p], &opts()).and_then(|w| w.load_all());
                if res.is_err() {
                    errors += 1;
                }
            }
        }
        assert!(errors > 0, "{rel}: no corruption was detected at all");
    }
}

/// candle's pickle reader panics (debug) on ints wider than 64 bits; the loader must report
/// that as a typed error naming the file.
#[test]
fn pickle_reader_panics_become_errors() {
    let err = Weights::load(data("big_int.pth").to_str().unwrap(), &opts())
        .err()
        .expect("no tensors can be read from it");
    assert!(
        matches!(&err, Error::CorruptFile { path, .. } | Error::UnsupportedFormat { path, .. } if path.ends_with("big_int.pth")),
        "{err}"
    );
}
