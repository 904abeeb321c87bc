//! Every recipe on a tiny fake corpus in its published layout; the manifest must come out
//! exactly as expected, with the planted bad lines skipped and reported.

mod common;

use std::path::Path;

use common::*;
use vaak_data::audio_ref::load_audio;
use vaak_data::corpus::{read_corpus, write_corpus, AudioRef, CorpusRow};
use vaak_data::parquet_audio::{read_audio_cell, read_audio_cell_full};
use vaak_data::recipes::{build_manifest, Options, Recipe, RecipeReport};

#[allow(clippy::too_many_arguments)]
fn row(
    id: &str,
    lang: &str,
    dataset: &str,
    split: &str,
    audio: &str,
    frames: usize,
    rate: u32,
    text: &str,
    speaker: Option<&str>,
    channels: Option<u16>,
) -> CorpusRow {
    CorpusRow {
        id: id.into(),
        lang: lang.into(),
        dataset: dataset.into(),
        split: split.into(),
        audio_path: audio.into(),
        duration_s: frames as f64 / f64::from(rate),
        text: text.into(),
        speaker: speaker.map(str::to_string),
        sample_rate: Some(rate),
        channels,
        source_id: None,
        augment: None,
    }
}

fn run(recipe: &str, dir: &Path, lang: Option<&str>) -> RecipeReport {
    let opts = Options {
        lang: lang.map(str::to_string),
        jobs: 2,
        progress: None,
    };
    build_manifest(recipe.parse().unwrap(), dir, &opts).unwrap()
}

fn skips(r: &RecipeReport) -> Vec<String> {
    r.skipped.iter().map(|s| s.to_string()).collect()
}

#[test]
fn librispeech() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("LibriSpeech");
    let ch = d.join("train-clean-100/19/198");
    write_text(
        &ch.join("19-198.trans.txt"),
        "19-198-0000 NORTHANGER ABBEY\n19-198-0001 THIS LITTLE WORK\n19-198-0002\n19-198-0003 NO AUDIO HERE\n84-121-0000 WRONG CHAPTER\n",
    );
    write_flac(&ch.join("19-198-0000.flac"), 8000, 16000);
    write_flac(&ch.join("19-198-0001.flac"), 4000, 16000);
    let dev = d.join("dev-clean/84/121");
    write_text(
        &dev.join("84-121.trans.txt"),
        "84-121-0000 CONCORD RETURNED\n",
    );
    write_flac(&dev.join("84-121-0000.flac"), 12000, 16000);
    let r = run("librispeech", &d, None);
    let ls = |id: &str, split: &str, rel: &str, n, text, spk| {
        row(
            id,
            "en",
            "librispeech",
            split,
            rel,
            n,
            16000,
            text,
            Some(spk),
            Some(1),
        )
    };
    assert_eq!(
        r.rows,
        vec![
            ls(
                "84-121-0000",
                "dev-clean",
                "dev-clean/84/121/84-121-0000.flac",
                12000,
                "CONCORD RETURNED",
                "84"
            ),
            ls(
                "19-198-0000",
                "train-clean-100",
                "train-clean-100/19/198/19-198-0000.flac",
                8000,
                "NORTHANGER ABBEY",
                "19"
            ),
            ls(
                "19-198-0001",
                "train-clean-100",
                "train-clean-100/19/198/19-198-0001.flac",
                4000,
                "THIS LITTLE WORK",
                "19"
            ),
        ]
    );
    assert_eq!(
        skips(&r),
        vec![
            "train-clean-100/19/198/19-198.trans.txt:3: expected 'ID TEXT'",
            "train-clean-100/19/198/19-198.trans.txt:4: no 19-198-0003.flac next to the transcript",
            "train-clean-100/19/198/19-198.trans.txt:5: utterance id 84-121-0000 is not of speaker 19, chapter 198",
        ]
    );
    assert_eq!(
        (
            r.counts.index_files,
            r.counts.entries,
            r.counts.rows,
            r.counts.skipped
        ),
        (2, 6, 3, 3)
    );
    // Deterministic, and the rows survive a write/read round trip.
    assert_eq!(run("librispeech", &d, None).rows, r.rows);
    let m = t.path().join("m.jsonl");
    write_corpus(&m, &r.rows).unwrap();
    assert_eq!(read_corpus(&m).unwrap().rows, r.rows);
}

#[test]
fn common_voice() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("cv-corpus-17.0-2024-03-15/te");
    let head = "client_id\tpath\tsentence_id\tsentence\tsentence_domain\tup_votes\tdown_votes\tage\tgender\taccents\tvariant\tlocale\tsegment\n";
    write_text(
        &d.join("train.tsv"),
        &format!("{head}abc\tcommon_voice_te_1.mp3\ts1\tనమస్కారం \"అండి\"\t\t2\t0\t\t\t\t\tte\t\nabc\tcommon_voice_te_2.mp3\ts2\t\t\t2\t0\t\t\t\t\tte\t\nshort\n"),
    );
    write_text(&d.join("dev.tsv"), &format!("{head}def\tcommon_voice_te_3.mp3\ts3\tమరొకటి\t\t2\t0\t\t\t\t\tte\t\nxyz\tcommon_voice_te_9.mp3\ts9\tలేదు\t\t2\t0\t\t\t\t\tte\t\n"));
    write_text(
        &d.join("validated.tsv"),
        &format!("{head}zzz\tcommon_voice_te_1.mp3\ts1\tignored\t\t2\t0\t\t\t\t\tte\t\n"),
    );
    // Common Voice ships MP3; no pure-Rust MP3 encoder exists, so the clips hold WAV bytes
    // under the .mp3 names (the decoder goes by content).
    write_wav(&d.join("clips/common_voice_te_1.mp3"), 8000, 48000, 1);
    write_wav(&d.join("clips/common_voice_te_2.mp3"), 8000, 48000, 1);
    write_wav(&d.join("clips/common_voice_te_3.mp3"), 9600, 48000, 1);
    let r = run("common_voice", t.path(), None);
    assert_eq!(
        r.rows,
        vec![
            row(
                "common_voice_te_3",
                "te",
                "common_voice",
                "dev",
                "cv-corpus-17.0-2024-03-15/te/clips/common_voice_te_3.mp3",
                9600,
                48000,
                "మరొకటి",
                Some("def"),
                Some(1)
            ),
            row(
                "common_voice_te_1",
                "te",
                "common_voice",
                "train",
                "cv-corpus-17.0-2024-03-15/te/clips/common_voice_te_1.mp3",
                8000,
                48000,
                "నమస్కారం \"అండి\"",
                Some("abc"),
                Some(1)
            ),
        ]
    );
    assert_eq!(
        skips(&r),
        vec![
            "cv-corpus-17.0-2024-03-15/te/dev.tsv:3: no clips/common_voice_te_9.mp3",
            "cv-corpus-17.0-2024-03-15/te/train.tsv:3: empty sentence",
            "cv-corpus-17.0-2024-03-15/te/train.tsv:4: expected 13 tab-separated fields, found 1",
        ]
    );
}

#[test]
fn vctk() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("VCTK-Corpus-0.92");
    write_text(&d.join("txt/p225/p225_001.txt"), "Please call Stella.\n");
    write_text(
        &d.join("txt/p225/p225_002.txt"),
        "Ask her to bring these things.\n",
    );
    write_text(&d.join("txt/p226/p226_001.txt"), "Please call Stella.\n");
    write_flac(
        &d.join("wav48_silence_trimmed/p225/p225_001_mic1.flac"),
        24000,
        48000,
    );
    write_flac(
        &d.join("wav48_silence_trimmed/p225/p225_001_mic2.flac"),
        12000,
        48000,
    );
    write_flac(
        &d.join("wav48_silence_trimmed/p226/p226_001_mic1.flac"),
        36000,
        48000,
    );
    let r = run("vctk", &d, None);
    assert_eq!(
        r.rows,
        vec![
            row(
                "p225_001",
                "en",
                "vctk",
                "all",
                "wav48_silence_trimmed/p225/p225_001_mic1.flac",
                24000,
                48000,
                "Please call Stella.",
                Some("p225"),
                Some(1)
            ),
            row(
                "p226_001",
                "en",
                "vctk",
                "all",
                "wav48_silence_trimmed/p226/p226_001_mic1.flac",
                36000,
                48000,
                "Please call Stella.",
                Some("p226"),
                Some(1)
            ),
        ]
    );
    assert_eq!(
        skips(&r),
        vec!["txt/p225/p225_002.txt: no audio for p225_002 in wav48*/p225/ (p225_002_mic1.flac or p225_002.wav)"]
    );
    // The older release: wav48/pNNN/pNNN_MMM.wav.
    let old = t.path().join("VCTK-Corpus");
    write_text(&old.join("txt/p225/p225_001.txt"), "Please call Stella.");
    write_wav(&old.join("wav48/p225/p225_001.wav"), 4800, 48000, 1);
    let r = run("vctk", &old, None);
    assert_eq!(
        r.rows,
        vec![row(
            "p225_001",
            "en",
            "vctk",
            "all",
            "wav48/p225/p225_001.wav",
            4800,
            48000,
            "Please call Stella.",
            Some("p225"),
            Some(1)
        )]
    );
}

#[test]
fn ljspeech() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("LJSpeech-1.1");
    write_text(
        &d.join("metadata.csv"),
        "LJ001-0001|Printing, in the only sense|Printing, in the only sense\nLJ001-0002|in 1450 \"quoted\"|in fourteen fifty \"quoted\"\nLJ001-0003\nLJ001-0004|raw only|\n",
    );
    write_wav(&d.join("wavs/LJ001-0001.wav"), 22050, 22050, 1);
    write_wav(&d.join("wavs/LJ001-0002.wav"), 11025, 22050, 1);
    write_wav(&d.join("wavs/LJ001-0004.wav"), 2205, 22050, 1);
    let r = run("ljspeech", t.path(), Some("en"));
    let lj = |id: &str, n, text| {
        row(
            id,
            "en",
            "ljspeech",
            "all",
            &format!("LJSpeech-1.1/wavs/{id}.wav"),
            n,
            22050,
            text,
            Some("LJ"),
            Some(1),
        )
    };
    assert_eq!(
        r.rows,
        vec![
            lj("LJ001-0001", 22050, "Printing, in the only sense"),
            lj("LJ001-0002", 11025, "in fourteen fifty \"quoted\""),
            lj("LJ001-0004", 2205, "raw only"),
        ]
    );
    assert_eq!(
        skips(&r),
        vec![
            "LJSpeech-1.1/metadata.csv:3: expected 'ID|raw text|normalized text', found 1 field(s)"
        ]
    );
    // A single-language corpus refuses another --lang.
    let e = build_manifest(
        Recipe::LjSpeech,
        t.path(),
        &Options {
            lang: Some("te".into()),
            ..Options::default()
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("'en' only"), "{e}");
}

#[test]
fn openslr66() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("te_in_female");
    write_text(
        &d.join("line_index.tsv"),
        "tef_00001_00000001\tతెలుగు వాక్యం\ntef_00001_00000002\n\ntef_00002_00000003\tరెండవ\n",
    );
    write_wav(&d.join("tef_00001_00000001.wav"), 16000, 48000, 1);
    write_wav(&d.join("tef_00002_00000003.wav"), 8000, 48000, 1);
    let r = run("openslr66", t.path(), None);
    assert_eq!(
        r.rows,
        vec![
            row(
                "tef_00001_00000001",
                "te",
                "openslr66",
                "all",
                "te_in_female/tef_00001_00000001.wav",
                16000,
                48000,
                "తెలుగు వాక్యం",
                Some("tef_00001"),
                Some(1)
            ),
            row(
                "tef_00002_00000003",
                "te",
                "openslr66",
                "all",
                "te_in_female/tef_00002_00000003.wav",
                8000,
                48000,
                "రెండవ",
                Some("tef_00002"),
                Some(1)
            ),
        ]
    );
    assert_eq!(
        skips(&r),
        vec!["te_in_female/line_index.tsv:2: expected 'ID<TAB>TEXT'"]
    );
}

#[test]
fn mucs_openslr103() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("Hindi");
    write_text(
        &d.join("train/transcription.txt"),
        "0116_003 नमस्ते दुनिया\n0116_004 बिना ऑडियो\n",
    );
    write_wav(&d.join("train/audio/0116_003.wav"), 8000, 8000, 1);
    write_text(&d.join("test/transcription.txt"), "t_01 परीक्षण\nt_02 आदेश\n");
    write_text(
        &d.join("test/wav.scp"),
        "t_01 audio/t_01.wav\nt_02 sox in.wav -t wav - |\n",
    );
    write_text(&d.join("test/utt2spk"), "t_01 spk9\nt_02 spk9\n");
    write_wav(&d.join("test/audio/t_01.wav"), 4000, 8000, 1);
    let r = run("openslr103", t.path(), None);
    assert_eq!(
        r.rows,
        vec![
            row(
                "t_01",
                "hi",
                "mucs",
                "test",
                "Hindi/test/audio/t_01.wav",
                4000,
                8000,
                "परीक्षण",
                Some("spk9"),
                Some(1)
            ),
            row(
                "0116_003",
                "hi",
                "mucs",
                "train",
                "Hindi/train/audio/0116_003.wav",
                8000,
                8000,
                "नमस्ते दुनिया",
                None,
                Some(1)
            ),
        ]
    );
    assert_eq!(
        skips(&r),
        vec![
            "Hindi/test/transcription.txt:2: wav.scp entry for t_02 is a command, not a file: sox in.wav -t wav - |",
            "Hindi/train/transcription.txt:2: no audio for 0116_004 (audio/0116_004.wav or wav.scp)",
        ]
    );
}

#[test]
fn kathbath_directories() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("kathbath/telugu");
    // Kathbath ships .m4a (AAC); no pure-Rust AAC encoder exists, so the test uses .wav.
    write_text(
        &d.join("transcripts/valid/transcription.txt"),
        "844-1-f ఒకటి 1\n844-2-m రెండు\n",
    );
    write_text(
        &d.join("transcripts/valid/transcription_n2w.txt"),
        "844-1-f ఒకటి ఒకటి\n844-2-m రెండు\nbroken\n",
    );
    write_wav(&d.join("audio/valid/844-1-f.wav"), 8000, 16000, 1);
    write_wav(&d.join("audio/valid/844-2-m.wav"), 4000, 16000, 1);
    write_wav(
        &t.path().join("kathbath/hindi/audio/valid/844-1-f.wav"),
        1600,
        16000,
        1,
    );
    let r = run("kathbath", &t.path().join("kathbath"), None);
    assert_eq!(
        r.rows,
        vec![
            row(
                "844-1-f",
                "te",
                "kathbath",
                "valid",
                "telugu/audio/valid/844-1-f.wav",
                8000,
                16000,
                "ఒకటి ఒకటి",
                None,
                Some(1)
            ),
            row(
                "844-2-m",
                "te",
                "kathbath",
                "valid",
                "telugu/audio/valid/844-2-m.wav",
                4000,
                16000,
                "రెండు",
                None,
                Some(1)
            ),
        ]
    );
    assert_eq!(
        skips(&r),
        vec!["telugu/transcripts/valid/transcription_n2w.txt:3: expected 'UTTID TEXT'"]
    );
}

fn s(v: &str) -> Option<String> {
    Some(v.into())
}

#[test]
fn indicvoices_parquet_with_hf_audio_structs() {
    let t = tempfile::tempdir().unwrap();
    let shard = t.path().join("telugu/train-00000-of-00001.parquet");
    write_parquet(
        &shard,
        &Shard {
            audio_col: "audio_filepath",
            hf_struct: true,
            str_cols: &["text", "speaker_id", "lang"],
            rows: vec![
                (
                    Some(wav_bytes(8000, 16000, 1)),
                    "a.wav".into(),
                    vec![s("మొదటి"), s("S1"), s("telugu")],
                ),
                (
                    Some(flac_bytes(4000, 16000)),
                    "b.flac".into(),
                    vec![s("రెండవ"), s("S2"), s("te")],
                ),
                (None, "c.wav".into(), vec![s("no bytes"), s("S3"), s("te")]),
                (
                    Some(b"not audio".to_vec()),
                    "d.wav".into(),
                    vec![s("garbage"), s("S3"), s("te")],
                ),
                (
                    Some(wav_bytes(1600, 16000, 2)),
                    "e.wav".into(),
                    vec![s("స్టీరియో"), None, s("te")],
                ),
            ],
            groups: &[2, 3],
        },
    );
    let r = run("indicvoices", t.path(), None);
    let f = "telugu/train-00000-of-00001.parquet";
    let pq = |row_n: usize, n, text, spk, ch| {
        row(
            &format!("train-00000-of-00001-{row_n:06}"),
            "te",
            "indicvoices",
            "train",
            &format!("{f}#row={row_n}&column=audio_filepath"),
            n,
            16000,
            text,
            spk,
            ch,
        )
    };
    assert_eq!(
        r.rows,
        vec![
            pq(0, 8000, "మొదటి", Some("S1"), Some(1)),
            pq(1, 4000, "రెండవ", Some("S2"), Some(1)),
            pq(4, 1600, "స్టీరియో", None, Some(2)),
        ]
    );
    let sk = skips(&r);
    assert_eq!(sk.len(), 2, "{sk:?}");
    assert!(
        sk[0].starts_with(&format!(
            "{f}#row=2: the audio struct has no embedded bytes"
        )),
        "{sk:?}"
    );
    assert!(
        sk[1].starts_with(&format!("{f}#row=3: audio does not decode")),
        "{sk:?}"
    );
    // Cells read back by reference: bytes, the struct's path, and decoded audio (row 4 is in
    // the second row group).
    assert_eq!(
        read_audio_cell(&shard, 1, "audio_filepath").unwrap(),
        flac_bytes(4000, 16000)
    );
    assert_eq!(
        read_audio_cell_full(&shard, 4, "audio_filepath")
            .unwrap()
            .path
            .as_deref(),
        Some("e.wav")
    );
    let a = load_audio(
        t.path(),
        &AudioRef::parse(&r.rows[2].audio_path).unwrap(),
        Some(8000),
    )
    .unwrap();
    assert_eq!((a.sample_rate, a.samples.len()), (8000, 800));
    let e = read_audio_cell(&shard, 5, "audio_filepath")
        .unwrap_err()
        .to_string();
    assert!(e.contains("row 5 does not exist"), "{e}");
    let e = read_audio_cell(&shard, 2, "audio_filepath")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("row 2") && e.contains("no embedded bytes"),
        "{e}"
    );
    let e = read_audio_cell(&shard, 0, "speech")
        .unwrap_err()
        .to_string();
    assert!(e.contains("no column \"speech\""), "{e}");
}

#[test]
fn indictts_and_kathbath_parquet() {
    let t = tempfile::tempdir().unwrap();
    write_parquet(
        &t.path().join("data/train-00000-of-00001.parquet"),
        &Shard {
            audio_col: "audio",
            hf_struct: false,
            str_cols: &["text", "gender"],
            rows: vec![
                (
                    Some(wav_bytes(4410, 44100, 1)),
                    String::new(),
                    vec![s("ఒక వాక్యం"), s("female")],
                ),
                (
                    Some(wav_bytes(8820, 44100, 1)),
                    String::new(),
                    vec![s(""), s("male")],
                ),
            ],
            groups: &[2],
        },
    );
    let r = run("indictts", t.path(), Some("te"));
    assert_eq!(
        r.rows,
        vec![row(
            "train-00000-of-00001-000000",
            "te",
            "indictts",
            "train",
            "data/train-00000-of-00001.parquet#row=0",
            4410,
            44100,
            "ఒక వాక్యం",
            Some("female"),
            Some(1)
        )]
    );
    assert_eq!(
        skips(&r),
        vec!["data/train-00000-of-00001.parquet#row=1: empty text"]
    );
    // Without --lang and no lang column or language directory, it says what to do.
    let e = build_manifest(Recipe::IndicTts, t.path(), &Options::default()).unwrap_err();
    assert!(e.to_string().contains("pass --lang"), "{e}");

    let k = tempfile::tempdir().unwrap();
    write_parquet(
        &k.path().join("hindi/valid/0.parquet"),
        &Shard {
            audio_col: "audio_filepath",
            hf_struct: true,
            str_cols: &["fname", "text", "speaker_id", "lang"],
            rows: vec![(
                Some(wav_bytes(3200, 16000, 1)),
                "x.m4a".into(),
                vec![s("844-1-f.m4a"), s("नमस्ते"), s("spk1"), s("hindi")],
            )],
            groups: &[1],
        },
    );
    let r = run("kathbath", k.path(), None);
    assert_eq!(
        r.rows,
        vec![row(
            "844-1-f",
            "hi",
            "kathbath",
            "valid",
            "hindi/valid/0.parquet#row=0&column=audio_filepath",
            3200,
            16000,
            "नमस्ते",
            Some("spk1"),
            Some(1)
        )]
    );
}

#[test]
fn golos_and_peoples_speech_csv_pass_through() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    write_wav(&d.join("golos/crowd/a.wav"), 8000, 16000, 1);
    write_wav(&d.join("golos/crowd/b.wav"), 4000, 16000, 1);
    write_text(
        &d.join("golos/golos_filtered.csv"),
        "id,lang,dataset,split,audio_path,duration_s,text,tier,tier_rank,speaker\n\
         g1,ru,golos,train,crowd/a.wav,99.0,привет мир,Gold,1,s1\n\
         g2,ru,golos,,crowd/b.wav,0.25,пока,Gold,1,\n\
         g3,en,golos,train,crowd/a.wav,0.5,hello,Gold,1,s1\n\
         g4,ru,golos,train,crowd/missing.wav,0.5,нет,Gold,1,s1\n\
         g5,ru,golos,train,../../etc/passwd,0.5,побег,Gold,1,s1\n\
         g6,ru,golos,train,crowd/a.wav,notanumber,текст,Gold,1,s1\n",
    );
    let r = run("golos", &d.join("golos"), None);
    assert_eq!(
        r.rows,
        vec![
            row(
                "g2",
                "ru",
                "golos",
                "golos_filtered",
                "crowd/b.wav",
                4000,
                16000,
                "пока",
                None,
                Some(1)
            ),
            row(
                "g1",
                "ru",
                "golos",
                "train",
                "crowd/a.wav",
                8000,
                16000,
                "привет мир",
                Some("s1"),
                Some(1)
            ),
        ]
    );
    let sk = skips(&r);
    assert_eq!(sk.len(), 4, "{sk:?}");
    assert!(
        sk.iter()
            .any(|s| s.starts_with("golos_filtered.csv:4: lang 'en' is not this corpus's 'ru'")),
        "{sk:?}"
    );
    assert!(
        sk.iter()
            .any(|s| s.starts_with("golos_filtered.csv:5: audio crowd/missing.wav does not exist")),
        "{sk:?}"
    );
    assert!(
        sk.iter()
            .any(|s| s.starts_with("golos_filtered.csv:6:") && s.contains("..")),
        "{sk:?}"
    );
    assert!(
        sk.iter().any(|s| s.starts_with("golos_filtered.csv:7:")),
        "{sk:?}"
    );

    // People's Speech: one CSV file given directly, its directory the data root.
    write_wav(&d.join("ps/clips/x.flac.wav"), 1600, 16000, 1);
    write_text(&d.join("ps/peoples_speech.csv"), "id,lang,dataset,split,tier,tier_rank,audio_path,duration_s,text,speaker\np1,en,ps,train,Gold,1,clips/x.flac.wav,1.0,hello there,\n");
    let r = run("peoples_speech", &d.join("ps/peoples_speech.csv"), None);
    assert_eq!(
        r.rows,
        vec![row(
            "p1",
            "en",
            "peoples_speech",
            "train",
            "clips/x.flac.wav",
            1600,
            16000,
            "hello there",
            None,
            Some(1)
        )]
    );
}

#[test]
fn bad_input_is_explained() {
    let t = tempfile::tempdir().unwrap();
    // A Common Voice download given to the LibriSpeech recipe.
    write_text(
        &t.path().join("te/train.tsv"),
        "client_id\tpath\tsentence\n",
    );
    write_text(&t.path().join("te/dev.tsv"), "client_id\tpath\tsentence\n");
    write_text(&t.path().join("te/test.tsv"), "client_id\tpath\tsentence\n");
    let e = build_manifest(Recipe::LibriSpeech, t.path(), &Options::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("no *.trans.txt under the directory"), "{e}");
    assert!(e.contains("this is not a librispeech download"), "{e}");
    assert!(e.contains("found 3 .tsv files; maybe common_voice?"), "{e}");
    // A missing directory.
    let e = build_manifest(Recipe::Vctk, &t.path().join("nope"), &Options::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("vctk recipe on") && e.contains("nope") && e.contains("cannot open it"),
        "{e}"
    );
    // An empty one.
    let empty = t.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = build_manifest(Recipe::LjSpeech, &empty, &Options::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no metadata.csv") && e.contains("the directory has no files"),
        "{e}"
    );
    // An unknown recipe name lists the known ones.
    let e = "librispeach".parse::<Recipe>().unwrap_err().to_string();
    assert!(
        e.contains("unknown recipe 'librispeach'") && e.contains("librispeech, common_voice"),
        "{e}"
    );
    assert_eq!("OpenSLR103".parse::<Recipe>().unwrap(), Recipe::Mucs);
    // A parquet file that is not parquet is skipped with the reason, not fatal.
    write_text(&t.path().join("pq/train-0.parquet"), "not parquet");
    let r = build_manifest(
        Recipe::IndicVoices,
        &t.path().join("pq"),
        &Options {
            lang: Some("te".into()),
            ..Options::default()
        },
    )
    .unwrap();
    assert!(r.rows.is_empty());
    assert!(
        skips(&r)[0].starts_with("train-0.parquet: parquet"),
        "{:?}",
        skips(&r)
    );
}
