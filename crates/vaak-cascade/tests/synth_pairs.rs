//! `vaak data synth --parallel` / `--dialogue` against the real espeak-ng: the samples are in
//! the parallel layout the S2S trainer reads, in the right scripts, deterministic whatever the
//! job count, and a run resumes by redoing only unfinished samples.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use vaak_cascade::synth::pairs::{synthesize_pairs, PairConfig, PairMode, VOICE_ID_DIM};
use vaak_data::parallel::{self as layout, finished_samples};
use vaak_data::Lang;

fn cfg(out: &Path, mode: PairMode, n: usize, jobs: usize) -> PairConfig {
    PairConfig {
        out: out.to_path_buf(),
        mode,
        utterances: n,
        seed: 11,
        jobs,
        program: "espeak-ng".into(),
        progress: false,
    }
}

fn ruen() -> PairMode {
    PairMode::Parallel {
        src: Lang::Ru,
        tgt: Lang::En,
    }
}

/// Every file under `root`, relative path → bytes.
fn tree(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, d: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(
                    p.strip_prefix(root).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    let mut m = BTreeMap::new();
    walk(root, root, &mut m);
    m
}

/// True when every letter of `s` is in `lang`'s script (digits, spaces, punctuation pass).
fn in_script(s: &str, lang: Lang) -> bool {
    let letters: Vec<char> = s.chars().filter(|c| c.is_alphabetic()).collect();
    !letters.is_empty()
        && letters.iter().all(|&c| match lang {
            Lang::En => c.is_ascii_alphabetic(),
            Lang::Ru => ('\u{0400}'..='\u{04FF}').contains(&c),
            Lang::Hi => ('\u{0900}'..='\u{097F}').contains(&c),
            Lang::Te => ('\u{0C00}'..='\u{0C7F}').contains(&c),
        })
}

/// Checks every sample of `dir`: DONE, every layout file, texts in the languages' scripts,
/// a 192-d voice id; returns how many.
fn check_dir(dir: &Path, src: Lang, tgt: Lang) -> usize {
    let mut n = 0;
    for s in finished_samples(dir).unwrap() {
        let s = s.unwrap();
        assert!(layout::is_done(&s.paths.dir));
        for f in layout::SAMPLE_FILES {
            assert!(s.paths.dir.join(f).is_file(), "{} lacks {f}", s.id);
        }
        assert_eq!(
            (s.meta.src_lang.as_str(), s.meta.tgt_lang.as_str()),
            (src.code(), tgt.code())
        );
        assert!(s.meta.is_ok());
        assert_eq!(s.meta.extra["emotion"], "neutral");
        let st = std::fs::read_to_string(&s.paths.src_txt).unwrap();
        let tt = std::fs::read_to_string(&s.paths.tgt_txt).unwrap();
        assert!(in_script(&st, src), "{} src {st:?} is not {src}", s.id);
        assert!(in_script(&tt, tgt), "{} tgt {tt:?} is not {tgt}", s.id);
        let src_info = vaak_audio::io::probe_info(&s.paths.src_wav).unwrap();
        let tgt_info = vaak_audio::io::probe_info(&s.paths.tgt_wav).unwrap();
        assert_eq!(src_info.sample_rate, layout::SRC_SAMPLE_RATE);
        assert_eq!(tgt_info.sample_rate, layout::TGT_SAMPLE_RATE);
        // At least 0.2 s of speech each.
        assert!(src_info.n_frames.unwrap() > 3_200, "{}", s.id);
        assert!(tgt_info.n_frames.unwrap() > 4_800, "{}", s.id);
        let spk = std::fs::read(&s.paths.spk_npy).unwrap();
        // 192 f32 after the .npy header.
        assert!(spk.len() >= VOICE_ID_DIM * 4 + 64, "{}", spk.len());
        n += 1;
    }
    n
}

#[test]
fn parallel_set_is_complete_in_scripts_and_the_same_for_any_job_count() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let sa = synthesize_pairs(&cfg(a.path(), ruen(), 8, 2)).unwrap();
    let sb = synthesize_pairs(&cfg(b.path(), ruen(), 8, 1)).unwrap();
    assert_eq!((sa.samples, sa.written, sa.failed), (8, 8, 0));
    assert_eq!(sb.samples, 8);
    let dir = a.path().join("data/parallel/ruen");
    assert_eq!(sa.directions, std::slice::from_ref(&dir));
    assert_eq!(check_dir(&dir, Lang::Ru, Lang::En), 8);
    let (ta, tb) = (tree(a.path()), tree(b.path()));
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
    for (k, v) in &ta {
        assert!(v == &tb[k], "{} differs between jobs 2 and 1", k.display());
    }

    // Hindi and Telugu against English, both ways.
    for (src, tgt) in [(Lang::En, Lang::Hi), (Lang::Te, Lang::En)] {
        let d = tempfile::tempdir().unwrap();
        let s = synthesize_pairs(&cfg(d.path(), PairMode::Parallel { src, tgt }, 4, 2)).unwrap();
        assert_eq!(s.samples, 4);
        assert_eq!(check_dir(&s.directions[0], src, tgt), 4);
    }
}

#[test]
fn dialogue_set_has_one_direction_per_language() {
    let d = tempfile::tempdir().unwrap();
    let langs = vec![Lang::En, Lang::Ru, Lang::Hi, Lang::Te];
    let s = synthesize_pairs(&cfg(
        d.path(),
        PairMode::Dialogue {
            langs: langs.clone(),
        },
        8,
        2,
    ))
    .unwrap();
    assert_eq!((s.samples, s.failed), (8, 0));
    assert_eq!(s.directions.len(), 4);
    for l in langs {
        let dir = layout::direction_dir(d.path(), &format!("{0}{0}", l.code()));
        assert_eq!(check_dir(&dir, l, l), 2, "{l}");
    }
}

#[test]
fn resume_redoes_only_the_sample_without_done() {
    let d = tempfile::tempdir().unwrap();
    synthesize_pairs(&cfg(d.path(), ruen(), 4, 2)).unwrap();
    let dir = d.path().join("data/parallel/ruen");
    let before = tree(d.path());
    let samples: Vec<_> = finished_samples(&dir)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let victim = &samples[2].paths.dir;
    std::fs::remove_file(victim.join(layout::DONE_FILE)).unwrap();
    std::fs::remove_file(victim.join(layout::TGT_WAV)).unwrap();
    assert_eq!(finished_samples(&dir).unwrap().count(), 3);
    let s = synthesize_pairs(&cfg(d.path(), ruen(), 4, 2)).unwrap();
    assert_eq!((s.reused, s.written, s.failed), (3, 1, 0));
    assert_eq!(tree(d.path()), before, "the redone sample is identical");
    // Nothing left to do.
    let s = synthesize_pairs(&cfg(d.path(), ruen(), 4, 1)).unwrap();
    assert_eq!((s.reused, s.written), (4, 0));
}
