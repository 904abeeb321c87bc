//! PNG pictures of a training run: loss curves from `metrics.jsonl` and an original-vs-decoded
//! spectrogram of a validation clip. Drawn by `vaak_audio::plot`.

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use vaak_audio::plot::{curves_png, spectrogram_compare_png};

use super::TrainError;
use crate::codec::Codec;

/// Training loss terms drawn in `curves.png` (log scale).
const TRAIN_SERIES: &[&str] = &[
    "loss",
    "mel",
    "stft_mag",
    "stft_sc",
    "time_l1",
    "commit",
    "gen_adv",
    "feat",
    "disc_loss",
];

/// Parses `metrics.jsonl` into (train series, validation mel distance per n_q, SNR per n_q).
type Series = Vec<(String, Vec<(f64, f64)>)>;

fn read_metrics(path: &Path) -> Result<(Series, Series, Series), TrainError> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    let mut train: Series = TRAIN_SERIES
        .iter()
        .map(|n| (n.to_string(), Vec::new()))
        .collect();
    let mut mel: Series = Vec::new();
    let mut snr: Series = Vec::new();
    let push = |set: &mut Series, name: String, p: (f64, f64)| match set
        .iter_mut()
        .find(|(n, _)| *n == name)
    {
        Some((_, v)) => v.push(p),
        None => set.push((name, vec![p])),
    };
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(step) = v.get("step").and_then(|s| s.as_f64()) else {
            continue;
        };
        if let Some(vals) = v.get("val").and_then(|x| x.as_array()) {
            for m in vals {
                let nq = m.get("n_q").and_then(|x| x.as_u64()).unwrap_or(0);
                let kbps = m.get("kbps").and_then(|x| x.as_f64()).unwrap_or(0.0);
                let name = format!("{nq} codebooks ({kbps:.1} kbps)");
                if let Some(d) = m.get("mel_distance").and_then(|x| x.as_f64()) {
                    push(&mut mel, name.clone(), (step, d));
                }
                if let Some(d) = m.get("snr_db").and_then(|x| x.as_f64()) {
                    push(&mut snr, name, (step, d));
                }
            }
            continue;
        }
        for (name, pts) in train.iter_mut() {
            if let Some(y) = v.get(name.as_str()).and_then(|x| x.as_f64()) {
                if y.is_finite() && y > 0.0 {
                    pts.push((step, y));
                }
            }
        }
    }
    train.retain(|(_, v)| !v.is_empty());
    Ok((train, mel, snr))
}

fn draw(path: &Path, title: &str, set: &Series, log_y: bool) -> Result<(), TrainError> {
    if set.is_empty() {
        return Ok(());
    }
    let refs: Vec<(&str, &[(f64, f64)])> = set
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_slice()))
        .collect();
    curves_png(path, title, &refs, log_y)?;
    Ok(())
}

/// Redraws the run's curves from `<run>/metrics.jsonl` into `<run>/plots/`: `curves.png`
/// (training losses), `val_mel.png` and `val_snr.png` (held-out quality per codebook count).
/// Returns the files written.
pub fn plot_curves(run_dir: &Path) -> Result<Vec<PathBuf>, TrainError> {
    let (train, mel, snr) = read_metrics(&run_dir.join("metrics.jsonl"))?;
    let dir = run_dir.join("plots");
    std::fs::create_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
    let mut out = Vec::new();
    for (name, title, set, log_y) in [
        ("curves.png", "training losses", &train, true),
        ("val_mel.png", "validation mel distance", &mel, false),
        ("val_snr.png", "validation SNR (dB)", &snr, false),
    ] {
        if !set.is_empty() {
            let p = dir.join(name);
            draw(&p, title, set, log_y)?;
            out.push(p);
        }
    }
    Ok(out)
}

/// Encodes and decodes `clip` (cut to whole frames) and writes the original-vs-decoded
/// spectrogram image to `path`.
pub fn plot_reconstruction(
    codec: &Codec,
    clip: &[f32],
    path: &Path,
    title: &str,
) -> Result<(), TrainError> {
    let hop = codec.hop_length();
    let len = clip.len() / hop * hop;
    if len == 0 {
        return Err(TrainError::NoData(format!(
            "a clip for {} is shorter than one frame ({hop} samples)",
            path.display()
        )));
    }
    let x = Tensor::from_slice(&clip[..len], (1, 1, len), codec.device())?;
    let y = codec
        .decode(&codec.encode(&x)?)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let n = len.min(y.len());
    spectrogram_compare_png(path, &clip[..n], &y[..n], codec.sample_rate() as u32, title)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curves_come_from_train_and_val_lines() {
        let dir = tempfile::tempdir().unwrap();
        let lines = [
            r#"{"step":10,"loss":4.0,"mel":1.0,"stft_mag":2.0,"stft_sc":1.0,"time_l1":0.1,"commit":0.02}"#,
            r#"{"step":20,"loss":3.0,"mel":0.8,"stft_mag":1.5,"stft_sc":0.9,"time_l1":0.1,"commit":0.02}"#,
            r#"{"step":20,"val":[{"n_q":8,"kbps":2.0,"mel_distance":0.9,"snr_db":1.5,"si_sdr_db":0.3}]}"#,
            "not json",
        ];
        std::fs::write(dir.path().join("metrics.jsonl"), lines.join("\n")).unwrap();
        let (train, mel, snr) = read_metrics(&dir.path().join("metrics.jsonl")).unwrap();
        let loss = train.iter().find(|(n, _)| n == "loss").unwrap();
        assert_eq!(loss.1, vec![(10.0, 4.0), (20.0, 3.0)]);
        assert!(train.iter().all(|(n, _)| n != "gen_adv"));
        assert_eq!(
            mel,
            vec![("8 codebooks (2.0 kbps)".to_string(), vec![(20.0, 0.9)])]
        );
        assert_eq!(snr[0].1, vec![(20.0, 1.5)]);
        let files = plot_curves(dir.path()).unwrap();
        assert_eq!(files.len(), 3);
        for f in files {
            let bytes = std::fs::read(&f).unwrap();
            assert_eq!(&bytes[1..4], b"PNG", "{}", f.display());
        }
    }
}
