//! `vaak data synth` against the real espeak-ng program and the Debian word lists (`.ci/run`
//! installs both: espeak-ng, wamerican, hunspell-ru, hunspell-hi, hunspell-te).

use std::path::Path;

use vaak_cascade::synth::{synthesize, SynthConfig, Target};
use vaak_data::manifest::ManifestRow;
use vaak_data::Lang;

/// The rows of a `manifest.jsonl`, through the shared manifest reader.
fn read_manifest(p: &Path) -> Result<Vec<ManifestRow>, vaak_data::DataError> {
    let m = vaak_data::manifest::read_manifest(p, false)?;
    assert!(m.malformed.is_empty(), "{:?}", m.malformed);
    Ok(m.rows)
}

/// espeak-ng speech has RMS around 0.05-0.2; below this a clip counts as silent.
const MIN_RMS: f64 = 0.01;
/// Sane utterance lengths for 3-18 words at 120-230 wpm.
const MIN_DURATION_S: f64 = 0.5;
const MAX_DURATION_S: f64 = 30.0;

fn cfg(out: &Path, n: usize, jobs: usize) -> SynthConfig {
    let mut c = SynthConfig::new(out, Target::Utterances(n));
    c.seed = 7;
    c.jobs = jobs;
    c
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn same_seed_same_corpus_whatever_the_job_count_and_all_languages_speak() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let sa = synthesize(&cfg(a.path(), 6, 3)).unwrap();
    let sb = synthesize(&cfg(b.path(), 6, 1)).unwrap();
    assert_eq!((sa.utterances, sa.synthesized, sa.failed), (6, 6, 0));
    assert_eq!(sb.utterances, 6);
    for f in ["manifest.jsonl", "manifest.csv"] {
        assert_eq!(read(&a.path().join(f)), read(&b.path().join(f)), "{f}");
    }
    let rows = read_manifest(&a.path().join("manifest.jsonl")).unwrap();
    let langs: Vec<&str> = rows.iter().map(|r| r.lang.as_str()).collect();
    assert_eq!(langs, ["en", "ru", "hi", "te", "en", "ru"]);
    for r in &rows {
        // Same bytes from both runs: espeak-ng and the resampler are deterministic.
        assert_eq!(
            read(&a.path().join(&r.audio_path)),
            read(&b.path().join(&r.audio_path)),
            "{}",
            r.id
        );
        let audio = vaak_audio::io::decode_file(a.path().join(&r.audio_path), None).unwrap();
        assert_eq!(audio.sample_rate, 16_000);
        let dur = audio.duration_s();
        assert!(
            (dur - r.duration_s).abs() < 1e-9,
            "{}: {dur} vs {}",
            r.id,
            r.duration_s
        );
        assert!(
            (MIN_DURATION_S..MAX_DURATION_S).contains(&dur),
            "{} ({}): {dur} s for '{}'",
            r.id,
            r.get("voice").unwrap(),
            r.text.as_deref().unwrap()
        );
        let rms = (audio
            .samples
            .iter()
            .map(|&s| f64::from(s).powi(2))
            .sum::<f64>()
            / audio.samples.len() as f64)
            .sqrt();
        assert!(
            rms > MIN_RMS,
            "{} ({}): RMS {rms}",
            r.id,
            r.get("voice").unwrap()
        );
        assert!(!r.text.as_deref().unwrap().trim().is_empty());
    }
    // Different texts and voices, not one sentence repeated.
    let mut texts: Vec<_> = rows.iter().map(|r| &r.text).collect();
    texts.sort();
    texts.dedup();
    assert_eq!(texts.len(), 6);
    // A different seed gives a different corpus.
    let c = tempfile::tempdir().unwrap();
    let mut other = cfg(c.path(), 1, 1);
    other.seed = 8;
    synthesize(&other).unwrap();
    let rows_c = read_manifest(&c.path().join("manifest.jsonl")).unwrap();
    assert_ne!(rows_c[0].text, rows[0].text);
}

#[test]
fn cascade_reads_the_csv_manifest() {
    let d = tempfile::tempdir().unwrap();
    let mut c = cfg(d.path(), 3, 2);
    c.langs = vec![Lang::Te];
    synthesize(&c).unwrap();
    let m = vaak_data::manifest::read_manifest(&d.path().join("manifest.csv"), false).unwrap();
    assert!(m.malformed.is_empty(), "{:?}", m.malformed);
    assert_eq!(m.rows.len(), 3);
    let jsonl = read_manifest(&d.path().join("manifest.jsonl")).unwrap();
    for (r, j) in m.rows.iter().zip(&jsonl) {
        assert_eq!(r.id, j.id);
        assert_eq!(r.lang, "te");
        assert_eq!(r.text.as_deref(), j.text.as_deref());
        assert_eq!(r.duration_s, j.duration_s);
        assert!(d.path().join(&r.audio_path).is_file());
    }
}

#[test]
fn resume_reuses_written_wavs_and_redoes_missing_ones() {
    let d = tempfile::tempdir().unwrap();
    let first = synthesize(&cfg(d.path(), 4, 2)).unwrap();
    assert_eq!((first.synthesized, first.reused), (4, 0));
    let rows4 = read(&d.path().join("manifest.jsonl"));
    let rows = read_manifest(&d.path().join("manifest.jsonl")).unwrap();
    let victim = d.path().join(&rows[1].audio_path);
    let victim_bytes = read(&victim);
    std::fs::remove_file(&victim).unwrap();

    let second = synthesize(&cfg(d.path(), 6, 2)).unwrap();
    assert_eq!((second.reused, second.synthesized), (3, 3));
    assert_eq!(read(&victim), victim_bytes, "redone identically");
    let rows6 = read(&d.path().join("manifest.jsonl"));
    assert!(
        rows6.starts_with(&rows4),
        "the longer run extends the shorter one"
    );

    // Hours: stops once the total reaches the target, reusing everything already there.
    let mut h = cfg(d.path(), 1, 2);
    h.target = Target::Hours(3.0 / 3600.0);
    let s = synthesize(&h).unwrap();
    let hrows = read_manifest(&d.path().join("manifest.jsonl")).unwrap();
    let total: f64 = hrows.iter().map(|r| r.duration_s).sum();
    let without_last = total - hrows.last().unwrap().duration_s;
    assert!(total >= 3.0 && without_last < 3.0, "{total}");
    assert_eq!(s.synthesized, 0, "the first utterances were all there");
    // No temporary files are left.
    let leftovers: Vec<_> = std::fs::read_dir(d.path().join("wav"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn bad_arguments_and_other_settings_are_errors() {
    let d = tempfile::tempdir().unwrap();
    let mut c = cfg(d.path(), 1, 1);
    c.langs = vec![Lang::En];
    synthesize(&c).unwrap();
    c.seed = 99;
    let e = synthesize(&c).unwrap_err().to_string();
    assert!(e.contains("other settings") && e.contains("--out"), "{e}");

    let d2 = tempfile::tempdir().unwrap();
    let mut c = cfg(d2.path(), 1, 1);
    c.program = "/nonexistent/espeak-ng".into();
    let e = synthesize(&c).unwrap_err().to_string();
    assert!(e.contains("/nonexistent/espeak-ng"), "{e}");

    let mut c = cfg(d2.path(), 1, 1);
    c.wordlists.insert(Lang::Ru, d2.path().join("missing.dic"));
    let e = synthesize(&c).unwrap_err().to_string();
    assert!(e.contains("missing.dic"), "{e}");

    let w = d2.path().join("tiny.txt");
    std::fs::write(&w, "один\nдва\n").unwrap();
    let mut c = cfg(d2.path(), 1, 1);
    c.wordlists.insert(Lang::Ru, w);
    let e = synthesize(&c).unwrap_err().to_string();
    assert!(e.contains("tiny.txt") && e.contains("usable words"), "{e}");
}

#[test]
fn a_user_word_list_is_used() {
    let d = tempfile::tempdir().unwrap();
    let w = d.path().join("words.txt");
    let letter = |k: usize| char::from(b'a' + (k % 26) as u8);
    let words: Vec<String> = (0..60)
        .map(|i| format!("zebra{}{}", letter(i), letter(i / 26)))
        .collect();
    std::fs::write(&w, words.join("\n")).unwrap();
    let mut c = cfg(&d.path().join("out"), 2, 1);
    c.langs = vec![Lang::En];
    c.wordlists.insert(Lang::En, w);
    synthesize(&c).unwrap();
    let rows = read_manifest(&d.path().join("out/manifest.jsonl")).unwrap();
    for r in rows {
        let text = r.text.as_deref().unwrap();
        let zebras = text.to_lowercase().matches("zebra").count();
        assert!(zebras >= vaak_cascade::synth::text::MIN_WORDS, "{text}");
    }
}
