//! Corpus recipes: turn a downloaded corpus, in its published layout, into [`CorpusRow`]s.
//!
//! Each recipe lives in its own file, whose doc comment says which layout it expects. They all
//! share the machinery here: a sorted walk of the directory, line-numbered transcript reading,
//! skipped items with file, line and reason, a header probe of every audio file in parallel
//! (durations come from the audio headers, never from the corpus's metadata) and a
//! deterministic row order (split, then id). A recipe pointed at the wrong corpus says what it
//! expected and what it found, with a guess at the right recipe.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde::Serialize;

use crate::corpus::CorpusRow;
use crate::error::{DataError, Result};

mod cascade_csv;
mod common_voice;
mod hf_parquet;
mod kathbath;
mod librispeech;
mod ljspeech;
mod mucs;
mod openslr66;
mod vctk;

/// The corpora `vaak data manifest` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Recipe {
    LibriSpeech,
    CommonVoice,
    Vctk,
    LjSpeech,
    OpenSlr66,
    Mucs,
    Kathbath,
    IndicVoices,
    IndicTts,
    Golos,
    PeoplesSpeech,
}

impl Recipe {
    pub const ALL: [Recipe; 11] = [
        Recipe::LibriSpeech,
        Recipe::CommonVoice,
        Recipe::Vctk,
        Recipe::LjSpeech,
        Recipe::OpenSlr66,
        Recipe::Mucs,
        Recipe::Kathbath,
        Recipe::IndicVoices,
        Recipe::IndicTts,
        Recipe::Golos,
        Recipe::PeoplesSpeech,
    ];

    /// The name on the command line and in the rows' `dataset` field.
    pub fn name(self) -> &'static str {
        match self {
            Recipe::LibriSpeech => "librispeech",
            Recipe::CommonVoice => "common_voice",
            Recipe::Vctk => "vctk",
            Recipe::LjSpeech => "ljspeech",
            Recipe::OpenSlr66 => "openslr66",
            Recipe::Mucs => "mucs",
            Recipe::Kathbath => "kathbath",
            Recipe::IndicVoices => "indicvoices",
            Recipe::IndicTts => "indictts",
            Recipe::Golos => "golos",
            Recipe::PeoplesSpeech => "peoples_speech",
        }
    }

    /// Other accepted spellings.
    fn aliases(self) -> &'static [&'static str] {
        match self {
            Recipe::CommonVoice => &["commonvoice", "cv"],
            Recipe::OpenSlr66 => &["slr66"],
            Recipe::Mucs => &["openslr103", "slr103"],
            Recipe::PeoplesSpeech => &["peoplesspeech", "people_speech"],
            Recipe::LjSpeech => &["lj_speech"],
            _ => &[],
        }
    }

    /// The layout the recipe expects, in one line (for `--help` and messages).
    pub fn layout(self) -> &'static str {
        match self {
            Recipe::LibriSpeech => {
                "SPLIT/SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt (\"ID TEXT\" lines) next to ID.flac"
            }
            Recipe::CommonVoice => {
                "LANG/{train,dev,test}.tsv (else validated.tsv; columns client_id, path, sentence, locale) + LANG/clips/*.mp3"
            }
            Recipe::Vctk => "txt/pNNN/pNNN_MMM.txt + wav48*/pNNN/pNNN_MMM_mic1.flac (or pNNN_MMM.wav)",
            Recipe::LjSpeech => "metadata.csv (ID|raw text|normalized text) + wavs/ID.wav",
            Recipe::OpenSlr66 => "line_index.tsv (\"ID<TAB>TEXT\") + ID.wav beside it (or in wavs/)",
            Recipe::Mucs => {
                "SPLIT/transcription.txt (or Kaldi text) (\"ID TEXT\") + SPLIT/audio/ID.wav, or wav.scp; utt2spk if present"
            }
            Recipe::Kathbath => {
                "LANG/.../SPLIT/transcription[_n2w].txt (\"ID TEXT\") + the audio files (ID.m4a/.wav/.flac) under LANG/; or HF parquet shards"
            }
            Recipe::IndicVoices => {
                "HF parquet shards (*.parquet; audio_filepath/audio, text, speaker_id, lang columns)"
            }
            Recipe::IndicTts => "HF parquet shards (*.parquet; audio, text, speaker_id/gender columns)",
            Recipe::Golos => {
                "*.csv in the cascade's layout (id, lang, audio_path, duration_s, text[, split, speaker]); audio_path relative to DIR"
            }
            Recipe::PeoplesSpeech => {
                "*.csv in the cascade's layout (id, lang, audio_path, duration_s, text[, split, speaker]); audio_path relative to DIR"
            }
        }
    }

    /// The corpus's own language, when it has only one.
    pub fn fixed_lang(self) -> Option<&'static str> {
        match self {
            Recipe::LibriSpeech | Recipe::Vctk | Recipe::LjSpeech => Some("en"),
            _ => None,
        }
    }

    /// Every recipe name, comma-separated.
    pub fn names() -> String {
        Self::ALL
            .iter()
            .map(|r| r.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for Recipe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Recipe {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self> {
        let k = s.trim().to_ascii_lowercase().replace('-', "_");
        Self::ALL
            .into_iter()
            .find(|r| r.name() == k || r.aliases().contains(&k.as_str()))
            .ok_or_else(|| DataError::UnknownRecipe {
                name: s.into(),
                known: Self::names(),
            })
    }
}

/// Progress callback: (items done, items in all).
pub type Progress = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// How a recipe runs.
#[derive(Clone)]
pub struct Options {
    /// The language, where the corpus does not say (it overrides what a corpus says per row,
    /// except for single-language corpora, where a different one is an error).
    pub lang: Option<String>,
    /// Threads for probing audio headers and decoding parquet cells.
    pub jobs: usize,
    pub progress: Option<Progress>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            lang: None,
            jobs: std::thread::available_parallelism().map_or(1, usize::from),
            progress: None,
        }
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("lang", &self.lang)
            .field("jobs", &self.jobs)
            .finish_non_exhaustive()
    }
}

/// An item a recipe left out, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Skip {
    /// Relative to the corpus directory.
    pub file: String,
    /// 1-based line of a transcript.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// 0-based row of a parquet file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub row: Option<usize>,
    pub reason: String,
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.row) {
            (Some(l), _) => write!(f, "{}:{l}: {}", self.file, self.reason),
            (None, Some(r)) => write!(f, "{}#row={r}: {}", self.file, self.reason),
            (None, None) => write!(f, "{}: {}", self.file, self.reason),
        }
    }
}

/// Numbers of a recipe run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Counts {
    /// Transcript / metadata / parquet files read.
    pub index_files: usize,
    /// Utterance entries seen in them (lines, rows).
    pub entries: usize,
    pub rows: usize,
    pub skipped: usize,
    pub hours: f64,
}

/// What a recipe produced.
#[derive(Clone, Debug)]
pub struct RecipeReport {
    pub recipe: Recipe,
    /// Sorted by split, then id.
    pub rows: Vec<CorpusRow>,
    pub skipped: Vec<Skip>,
    pub counts: Counts,
}

/// Runs `recipe` on the corpus in `dir`. Audio paths in the rows are relative to `dir` (the
/// data root for `verify` and `prepare`), with `/` separators.
pub fn build_manifest(recipe: Recipe, dir: &Path, opts: &Options) -> Result<RecipeReport> {
    let rerr = |reason: String| DataError::Recipe {
        recipe: recipe.name().into(),
        dir: dir.into(),
        reason,
    };
    if let (Some(fixed), Some(l)) = (recipe.fixed_lang(), opts.lang.as_deref()) {
        if l != fixed {
            return Err(rerr(format!(
                "this corpus is '{fixed}' only; --lang {l} does not apply"
            )));
        }
    }
    let meta = std::fs::metadata(dir).map_err(|e| rerr(format!("cannot open it: {e}")))?;
    let file_input = matches!(recipe, Recipe::Golos | Recipe::PeoplesSpeech) && meta.is_file();
    if !meta.is_dir() && !file_input {
        return Err(rerr("not a directory".into()));
    }
    let root = if file_input {
        dir.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf()
    } else {
        dir.to_path_buf()
    };
    let files = if file_input {
        vec![dir.to_path_buf()]
    } else {
        walk_files(dir)?
    };
    let mut cx = Ctx {
        recipe,
        root,
        opts: opts.clone(),
        files,
        candidates: Vec::new(),
        skipped: Vec::new(),
        index_files: 0,
        entries: 0,
        parquet_total: 0,
    };
    match recipe {
        Recipe::LibriSpeech => librispeech::scan(&mut cx)?,
        Recipe::CommonVoice => common_voice::scan(&mut cx)?,
        Recipe::Vctk => vctk::scan(&mut cx)?,
        Recipe::LjSpeech => ljspeech::scan(&mut cx)?,
        Recipe::OpenSlr66 => openslr66::scan(&mut cx)?,
        Recipe::Mucs => mucs::scan(&mut cx)?,
        Recipe::Kathbath => kathbath::scan(&mut cx)?,
        Recipe::IndicVoices | Recipe::IndicTts => hf_parquet::scan(&mut cx)?,
        Recipe::Golos | Recipe::PeoplesSpeech => cascade_csv::scan(&mut cx, file_input)?,
    }
    Ok(cx.finish())
}

/// A row waiting for its audio header, or already complete (parquet rows).
struct Candidate {
    row: CorpusRow,
    /// The audio file to probe; `None` when the row already has its duration.
    probe: Option<PathBuf>,
    /// Where the entry came from, for a skip message.
    file: String,
    line: Option<u64>,
}

/// A recipe's working state.
pub(crate) struct Ctx {
    recipe: Recipe,
    root: PathBuf,
    opts: Options,
    /// Every file under the corpus directory, sorted.
    files: Vec<PathBuf>,
    candidates: Vec<Candidate>,
    skipped: Vec<Skip>,
    index_files: usize,
    entries: usize,
    /// Parquet rows in all, for progress.
    parquet_total: u64,
}

impl Ctx {
    /// `p` relative to the corpus directory, `/`-separated.
    fn rel(&self, p: &Path) -> String {
        let r = p.strip_prefix(&self.root).unwrap_or(p);
        r.components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/")
    }

    fn skip(&mut self, file: &Path, line: Option<u64>, reason: impl Into<String>) {
        let file = self.rel(file);
        self.skipped.push(Skip {
            file,
            line,
            row: None,
            reason: reason.into(),
        });
    }

    fn skip_row(&mut self, file: &Path, row: usize, reason: impl Into<String>) {
        let file = self.rel(file);
        self.skipped.push(Skip {
            file,
            line: None,
            row: Some(row),
            reason: reason.into(),
        });
    }

    /// The error for a directory that holds no sign of this recipe's corpus.
    fn wrong_corpus(&self, expected: &str) -> DataError {
        DataError::Recipe {
            recipe: self.recipe.name().into(),
            dir: self.root.clone(),
            reason: format!(
                "{expected}: this is not a {} download (expected {}); {}",
                self.recipe.name(),
                self.recipe.layout(),
                survey(&self.files, self.recipe)
            ),
        }
    }

    /// Reads a transcript as UTF-8 lines (BOM and `\r` removed); an unreadable file is
    /// skipped and `None` returned.
    fn read_lines(&mut self, path: &Path) -> Option<Vec<(u64, String)>> {
        self.index_files += 1;
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                self.skip(path, None, format!("cannot read: {e}"));
                return None;
            }
        };
        let text = match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                self.skip(path, None, format!("not UTF-8: {e}"));
                return None;
            }
        };
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        Some(
            text.lines()
                .enumerate()
                .map(|(i, l)| (i as u64 + 1, l.trim_end_matches('\r').to_string()))
                .collect(),
        )
    }

    /// The language for a row: `--lang`, else what the corpus says, else the directory names.
    fn lang_for(&self, said: Option<&str>, path: &Path) -> Option<String> {
        if let Some(l) = &self.opts.lang {
            return Some(l.clone());
        }
        if let Some(f) = self.recipe.fixed_lang() {
            return Some(f.into());
        }
        if let Some(s) = said.map(str::trim).filter(|s| !s.is_empty()) {
            return Some(lang_code(s).map_or_else(|| s.to_string(), str::to_string));
        }
        lang_from_path(path, &self.root)
    }

    #[allow(clippy::too_many_arguments)]
    fn push_file(
        &mut self,
        src: &Path,
        line: Option<u64>,
        id: &str,
        lang: &str,
        split: &str,
        audio: &Path,
        text: &str,
        speaker: Option<String>,
    ) {
        self.candidates.push(Candidate {
            row: CorpusRow {
                id: id.into(),
                lang: lang.into(),
                dataset: self.recipe.name().into(),
                split: split.into(),
                audio_path: self.rel(audio),
                duration_s: 0.0,
                text: text.trim().into(),
                speaker,
                sample_rate: None,
                channels: None,
                source_id: None,
                augment: None,
            },
            probe: Some(audio.to_path_buf()),
            file: self.rel(src),
            line,
        });
    }

    fn push_done(&mut self, row: CorpusRow) {
        self.candidates.push(Candidate {
            row,
            probe: None,
            file: String::new(),
            line: None,
        });
    }

    fn finish(mut self) -> RecipeReport {
        let cands = std::mem::take(&mut self.candidates);
        let total = cands.iter().filter(|c| c.probe.is_some()).count() as u64;
        let progress = self.opts.progress.clone();
        let done = AtomicUsize::new(0);
        let probed = par_map(&cands, self.opts.jobs, |c| {
            let r = c.probe.as_ref().map(vaak_audio::io::probe_info);
            if r.is_some() {
                let d = done.fetch_add(1, Ordering::Relaxed) as u64 + 1;
                if let Some(cb) = &progress {
                    cb(d, total);
                }
            }
            r
        });
        let mut rows = Vec::with_capacity(cands.len());
        for (mut c, info) in cands.into_iter().zip(probed) {
            match info {
                None => rows.push(c.row),
                Some(Ok(info)) => match info.duration_s {
                    Some(d) => {
                        c.row.duration_s = d;
                        c.row.sample_rate = Some(info.sample_rate);
                        c.row.channels = Some(info.channels);
                        rows.push(c.row);
                    }
                    None => self.skipped.push(Skip {
                        file: c.file,
                        line: c.line,
                        row: None,
                        reason: format!("{}: the header gives no length", c.row.audio_path),
                    }),
                },
                Some(Err(e)) => self.skipped.push(Skip {
                    file: c.file,
                    line: c.line,
                    row: None,
                    reason: format!("audio {}: {e}", c.row.audio_path),
                }),
            }
        }
        rows.sort_by(|a, b| {
            (&a.split, &a.id, &a.audio_path).cmp(&(&b.split, &b.id, &b.audio_path))
        });
        let hours = rows.iter().map(|r| r.duration_s).sum::<f64>() / 3600.0;
        let counts = Counts {
            index_files: self.index_files,
            entries: self.entries,
            rows: rows.len(),
            skipped: self.skipped.len(),
            hours,
        };
        RecipeReport {
            recipe: self.recipe,
            rows,
            skipped: self.skipped,
            counts,
        }
    }
}

/// `f` over `items` on `jobs` threads, results in input order.
pub(crate) fn par_map<T: Sync, R: Send>(
    items: &[T],
    jobs: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let jobs = jobs.clamp(1, items.len().max(1));
    if jobs == 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let mut out: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
    let parts: Vec<Vec<(usize, R)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..jobs)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= items.len() {
                            break;
                        }
                        mine.push((i, f(&items[i])));
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a worker thread panicked"))
            .collect()
    });
    for (i, r) in parts.into_iter().flatten() {
        out[i] = Some(r);
    }
    out.into_iter()
        .map(|r| r.expect("every item was mapped"))
        .collect()
}

/// Every file under `dir`, recursively, sorted; hidden entries (`.cache`, ...) are left out
/// and symlinks followed (to a depth of 16 directories).
pub fn walk_files(dir: &Path) -> Result<Vec<PathBuf>> {
    fn go(d: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<()> {
        let rd = std::fs::read_dir(d).map_err(|e| DataError::io(d, e))?;
        let mut entries: Vec<PathBuf> = rd
            .filter_map(|e| e.ok())
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| e.path())
            .collect();
        entries.sort();
        for p in entries {
            match std::fs::metadata(&p) {
                Ok(m) if m.is_dir() && depth < 16 => go(&p, depth + 1, out)?,
                Ok(m) if m.is_file() => out.push(p),
                _ => {}
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    go(dir, 0, &mut out)?;
    Ok(out)
}

/// The file name of `p` as a string.
fn fname(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The name of the `n`-th ancestor directory of `p` (0 = its parent).
fn ancestor_name(p: &Path, n: usize) -> Option<String> {
    p.ancestors()
        .nth(n + 1)
        .and_then(|a| a.file_name())
        .map(|s| s.to_string_lossy().into_owned())
}

/// The first existing file among `dir/ID.EXT` for each extension.
fn find_audio(dir: &Path, stem: &str, exts: &[&str]) -> Option<PathBuf> {
    exts.iter()
        .map(|e| dir.join(format!("{stem}.{e}")))
        .find(|p| p.is_file())
}

/// Splits `ID<whitespace>TEXT`; `None` when either part is missing.
fn split_id_text(line: &str) -> Option<(&str, &str)> {
    let l = line.trim();
    let i = l.find(char::is_whitespace)?;
    let (id, text) = (&l[..i], l[i..].trim());
    (!id.is_empty() && !text.is_empty()).then_some((id, text))
}

const AUDIO_EXTS: [&str; 7] = ["wav", "flac", "mp3", "m4a", "ogg", "opus", "aac"];

fn is_audio(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| AUDIO_EXTS.contains(&e.to_ascii_lowercase().as_str()))
}

/// The ISO 639-1 code of a language name or code (`Telugu`, `te`, `hindi`, `en-US` ...).
pub fn lang_code(name: &str) -> Option<&'static str> {
    const TABLE: [(&str, &str); 16] = [
        ("english", "en"),
        ("russian", "ru"),
        ("hindi", "hi"),
        ("telugu", "te"),
        ("bengali", "bn"),
        ("gujarati", "gu"),
        ("kannada", "kn"),
        ("malayalam", "ml"),
        ("marathi", "mr"),
        ("odia", "or"),
        ("punjabi", "pa"),
        ("sanskrit", "sa"),
        ("tamil", "ta"),
        ("urdu", "ur"),
        ("assamese", "as"),
        ("nepali", "ne"),
    ];
    let n = name.trim().to_ascii_lowercase();
    let base = n.split(['-', '_']).next().unwrap_or("");
    TABLE
        .iter()
        .find(|(full, code)| *full == n || *code == base && base.len() == 2)
        .map(|(_, code)| *code)
}

/// A language named by a directory between `root` (included) and `p`.
fn lang_from_path(p: &Path, root: &Path) -> Option<String> {
    for a in p.ancestors().skip(1) {
        if let Some(code) = a.file_name().and_then(|n| lang_code(&n.to_string_lossy())) {
            return Some(code.into());
        }
        if a == root {
            break;
        }
    }
    None
}

/// What a directory looks like, and which recipe it might be for.
fn survey(files: &[PathBuf], recipe: Recipe) -> String {
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    let mut guesses: Vec<Recipe> = Vec::new();
    let mut note = |k: &'static str, r: Option<Recipe>, kinds: &mut BTreeMap<&str, usize>| {
        *kinds.entry(k).or_default() += 1;
        if let Some(r) = r.filter(|r| *r != recipe && !guesses.contains(r)) {
            guesses.push(r);
        }
    };
    for f in files {
        let n = fname(f).to_ascii_lowercase();
        let parent2 = ancestor_name(f, 1).unwrap_or_default();
        if n.ends_with(".trans.txt") {
            note("*.trans.txt", Some(Recipe::LibriSpeech), &mut kinds);
        } else if n == "line_index.tsv" {
            note("line_index.tsv", Some(Recipe::OpenSlr66), &mut kinds);
        } else if n.ends_with(".tsv") {
            let cv = ["train.tsv", "dev.tsv", "test.tsv", "validated.tsv"].contains(&n.as_str());
            note(".tsv", cv.then_some(Recipe::CommonVoice), &mut kinds);
        } else if n == "metadata.csv" {
            note("metadata.csv", Some(Recipe::LjSpeech), &mut kinds);
        } else if n.ends_with(".csv") {
            note(".csv", Some(Recipe::Golos), &mut kinds);
        } else if n.ends_with(".parquet") {
            note(".parquet", Some(Recipe::IndicVoices), &mut kinds);
        } else if n.starts_with("transcription") && n.ends_with(".txt") {
            note("transcription*.txt", Some(Recipe::Mucs), &mut kinds);
        } else if n == "wav.scp" {
            note("wav.scp", Some(Recipe::Mucs), &mut kinds);
        } else if n.ends_with(".txt") && parent2 == "txt" {
            note("txt/SPEAKER/*.txt", Some(Recipe::Vctk), &mut kinds);
        } else if is_audio(f) {
            note("audio", None, &mut kinds);
        } else {
            note("other", None, &mut kinds);
        }
    }
    if files.is_empty() {
        return "the directory has no files".into();
    }
    let found = kinds
        .iter()
        .map(|(k, n)| format!("{n} {k} file{}", if *n == 1 { "" } else { "s" }))
        .collect::<Vec<_>>()
        .join(", ");
    match guesses.first() {
        Some(g) => format!("found {found}; maybe {}?", g.name()),
        None => format!("found {found}"),
    }
}
