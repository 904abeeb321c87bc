//! [`EspeakTts`]: espeak-ng base voices, one `espeak-ng` process per sentence.
//!
//! # Why the program and not libespeak-ng
//!
//! libespeak-ng keeps its voice, parameters and output buffer in global state and is not
//! thread-safe, so an in-process binding would synthesise a batch one sentence at a time behind
//! a lock. Separate processes share nothing, run a batch in parallel (at most
//! `max_concurrency` at once), need no C toolchain or `-dev` package to build, and a crash in
//! one sentence cannot take the cascade down with it. A process start costs a few milliseconds,
//! small next to synthesis.
//!
//! # What runs
//!
//! `espeak-ng --stdin --stdout -b 1 -v <voice> -s <rate_wpm> -p <pitch>`, with no shell. The text
//! goes in on stdin, so nothing in it can be read as an option (a sentence may start with `-`),
//! and `-b 1` makes the input UTF-8 whatever the locale. Before it is sent, control characters
//! and line breaks become spaces (one sentence is one utterance) and `[[` is split to `[ [`,
//! because the espeak-ng program reads `[[...]]` as raw phoneme input.
//!
//! espeak-ng writes a WAV to a pipe with placeholder lengths in its header (it cannot seek back),
//! which [`vaak_audio::io::decode_bytes`] rightly reports as truncated; the RIFF and `data`
//! lengths are patched to the bytes actually received before decoding. The 22.05 kHz output is
//! then resampled to `output_rate` (24 kHz by default, the rate of `tgt.wav`).
//!
//! # Provenance and errors
//!
//! [`ModelId`]: name `espeak-ng`, revision the program's version (`--version`, read once at
//! construction). Construction fails with a message naming the program and its Debian package
//! ([`ESPEAK_DEBIAN_PACKAGE`]) when it cannot be run, and with the language and voice when a
//! configured voice does not synthesise. Per item: empty text (or text with nothing to say) is
//! [`TeacherError::BadInput`]; a failing process is an error quoting its stderr; a process still
//! running after `timeout_ms` is killed and its item fails; an all-zero output is an error
//! rather than a silent sample in the dataset.
//!
//! Written from scratch (no candle-transformers counterpart).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Result, TeacherError};
use crate::{ItemResult, Lang, ModelId, Speech, Tts, TtsRequest};

/// The Debian (and Ubuntu) package that provides the `espeak-ng` program and its voices.
pub const ESPEAK_DEBIAN_PACKAGE: &str = "espeak-ng";

/// How often a running process is checked for exit or timeout.
const WAIT_POLL: Duration = Duration::from_millis(2);

/// How much of a process's stderr is quoted in errors.
const STDERR_QUOTE_CHARS: usize = 500;

/// The espeak-ng voice used for each language (names as `espeak-ng --voices` lists them; a
/// variant may be appended, e.g. `en-us+f3`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EspeakVoices {
    pub en: String,
    pub ru: String,
    pub hi: String,
    pub te: String,
}

impl Default for EspeakVoices {
    fn default() -> Self {
        Self {
            en: "en-us".into(),
            ru: "ru".into(),
            hi: "hi".into(),
            te: "te".into(),
        }
    }
}

impl EspeakVoices {
    pub fn get(&self, lang: Lang) -> &str {
        match lang {
            Lang::En => &self.en,
            Lang::Ru => &self.ru,
            Lang::Hi => &self.hi,
            Lang::Te => &self.te,
        }
    }
}

/// Settings of [`EspeakTts`]. Every field has a default (see [`Default`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EspeakConfig {
    /// The program: a name looked up on `PATH`, or a path.
    pub program: PathBuf,
    /// Voice per language.
    pub voices: EspeakVoices,
    /// Speaking rate in words per minute (espeak-ng's `-s`, 80..=450; its default is 175).
    pub rate_wpm: u32,
    /// Pitch (espeak-ng's `-p`, 0..=99; its default is 50).
    pub pitch: u32,
    /// Sample rate of the returned speech, in Hz.
    pub output_rate: u32,
    /// Most espeak-ng processes at once; 0 means one per available CPU.
    pub max_concurrency: usize,
    /// A process still running after this many milliseconds is killed (that item fails).
    pub timeout_ms: u64,
}

impl Default for EspeakConfig {
    fn default() -> Self {
        Self {
            program: "espeak-ng".into(),
            voices: EspeakVoices::default(),
            rate_wpm: 175,
            pitch: 50,
            output_rate: 24_000,
            max_concurrency: 0,
            timeout_ms: 60_000,
        }
    }
}

fn config_error(field: &str, reason: String) -> TeacherError {
    TeacherError::Config {
        path: format!("EspeakConfig.{field}").into(),
        reason,
    }
}

impl EspeakConfig {
    fn validate(&self) -> Result<()> {
        if !(80..=450).contains(&self.rate_wpm) {
            return Err(config_error(
                "rate_wpm",
                format!("{} is outside 80..=450", self.rate_wpm),
            ));
        }
        if self.pitch > 99 {
            return Err(config_error(
                "pitch",
                format!("{} is outside 0..=99", self.pitch),
            ));
        }
        if !(8_000..=192_000).contains(&self.output_rate) {
            return Err(config_error(
                "output_rate",
                format!("{} Hz is outside 8000..=192000", self.output_rate),
            ));
        }
        if self.timeout_ms == 0 {
            return Err(config_error("timeout_ms", "must be > 0".into()));
        }
        for lang in Lang::ALL {
            let v = self.voices.get(lang);
            if v.trim().is_empty() || v.chars().any(char::is_whitespace) {
                return Err(config_error(
                    &format!("voices.{}", lang.code()),
                    format!("'{v}' is not a voice name"),
                ));
            }
        }
        Ok(())
    }
}

/// espeak-ng as a [`Tts`] base voice (see the module doc).
#[derive(Debug)]
pub struct EspeakTts {
    cfg: EspeakConfig,
    version: String,
    workers: usize,
}

impl EspeakTts {
    /// Checks the settings, runs `espeak-ng --version` and synthesises a word with each
    /// configured voice, so a missing program or a wrong voice fails here, not mid-dataset.
    pub fn new(cfg: EspeakConfig) -> Result<Self> {
        cfg.validate()?;
        let version = query_version(&cfg.program)?;
        let workers = match cfg.max_concurrency {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let tts = Self {
            cfg,
            version,
            workers,
        };
        let probes = crate::pool::map_bounded(&Lang::ALL, tts.workers, |_, &lang| {
            (lang, tts.synthesize_one("a", lang))
        });
        for (lang, res) in probes {
            if let Err(e) = res {
                return Err(config_error(
                    &format!("voices.{}", lang.code()),
                    format!(
                        "voice '{}' does not work with {}: {e}",
                        tts.cfg.voices.get(lang),
                        tts.cfg.program.display()
                    ),
                ));
            }
        }
        Ok(tts)
    }

    pub fn config(&self) -> &EspeakConfig {
        &self.cfg
    }

    /// The version `espeak-ng --version` reported, e.g. `1.51`.
    pub fn version(&self) -> &str {
        &self.version
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.timeout_ms)
    }

    fn synthesize_one(&self, text: &str, lang: Lang) -> ItemResult<Speech> {
        self.synthesize_voice(
            text,
            self.cfg.voices.get(lang),
            self.cfg.rate_wpm,
            self.cfg.pitch,
        )
    }

    /// One sentence with an explicit voice (e.g. `ru+f3`), rate and pitch instead of the
    /// configured ones; otherwise as [`Tts::synthesize`] for one item (same text handling,
    /// timeout, silence check and output rate). For data generation that varies the voice per
    /// utterance.
    pub fn synthesize_voice(
        &self,
        text: &str,
        voice: &str,
        rate_wpm: u32,
        pitch: u32,
    ) -> ItemResult<Speech> {
        if voice.trim().is_empty() || voice.chars().any(char::is_whitespace) {
            return Err(TeacherError::BadInput(format!(
                "'{voice}' is not a voice name"
            )));
        }
        if !(80..=450).contains(&rate_wpm) || pitch > 99 {
            return Err(TeacherError::BadInput(format!(
                "rate {rate_wpm} wpm (80..=450) or pitch {pitch} (0..=99) out of range"
            )));
        }
        let Some(text) = prepare_text(text) else {
            return Err(TeacherError::BadInput(
                "empty text, nothing to synthesise".into(),
            ));
        };
        let program = &self.cfg.program;
        let fail = |what: String| {
            TeacherError::Msg(format!("{} (voice {voice}): {what}", program.display()))
        };
        let mut child = Command::new(program)
            .args(["--stdin", "--stdout", "-b", "1", "-v", voice])
            .arg("-s")
            .arg(rate_wpm.to_string())
            .arg("-p")
            .arg(pitch.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| fail(format!("cannot start: {e}")))?;
        let run = run_with_deadline(&mut child, text.as_bytes(), self.timeout())
            .map_err(|e| fail(format!("waiting for it failed: {e}")))?;
        let stderr = quote_stderr(&run.stderr);
        let Some(status) = run.status else {
            return Err(fail(format!(
                "killed after timeout_ms = {} ms; {stderr}",
                self.cfg.timeout_ms
            )));
        };
        if !status.success() {
            return Err(fail(format!("exited with {status}: {stderr}")));
        }
        if let Err(e) = run.written {
            return Err(fail(format!(
                "writing the text to its stdin failed: {e}; {stderr}"
            )));
        }
        if run.stdout.is_empty() {
            return Err(fail(format!("produced no audio: {stderr}")));
        }
        let mut wav = run.stdout;
        patch_streamed_wav(&mut wav).map_err(|e| fail(format!("{e}: {stderr}")))?;
        let audio = vaak_audio::io::decode_bytes(
            wav,
            Some("wav"),
            format!("espeak-ng output (voice {voice})"),
            Some(self.cfg.output_rate),
        )?;
        if audio.samples.iter().all(|&s| s == 0.0) {
            return Err(TeacherError::BadInput(format!(
                "espeak-ng (voice {voice}) produced only silence for this text"
            )));
        }
        Ok(Speech {
            samples: audio.samples,
            sample_rate: self.cfg.output_rate,
        })
    }
}

impl Tts for EspeakTts {
    fn model_id(&self) -> ModelId {
        ModelId {
            name: "espeak-ng".into(),
            revision: Some(self.version.clone()),
        }
    }

    fn supports(&self, _lang: Lang) -> bool {
        true
    }

    /// `reference` is ignored: these are fixed base voices.
    fn synthesize(&self, batch: &[TtsRequest<'_>]) -> Result<Vec<ItemResult<Speech>>> {
        Ok(crate::pool::map_bounded(batch, self.workers, |i, req| {
            self.synthesize_one(req.text, req.lang)
                .map_err(|e| match e {
                    TeacherError::BadInput(m) => TeacherError::BadInput(format!("item {i}: {m}")),
                    TeacherError::Msg(m) => TeacherError::Msg(format!("item {i}: {m}")),
                    other => other,
                })
        }))
    }
}

/// What became of one process run by [`run_with_deadline`].
struct Run {
    /// `None` if it was killed at the deadline.
    status: Option<ExitStatus>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    written: std::io::Result<()>,
}

/// Feeds `input` to the child's stdin and collects its stdout and stderr, each on its own
/// thread (espeak-ng may fill its stdout pipe before it has read all of a long text); kills the
/// child if it has not exited by `timeout`.
fn run_with_deadline(child: &mut Child, input: &[u8], timeout: Duration) -> std::io::Result<Run> {
    let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(std::io::Error::other("its stdio was not piped"));
    };
    std::thread::scope(|s| {
        let writer = s.spawn(move || stdin.write_all(input));
        let out_reader = s.spawn(move || {
            let mut v = Vec::new();
            stdout.read_to_end(&mut v).map(|_| v)
        });
        let err_reader = s.spawn(move || {
            let mut v = Vec::new();
            stderr.read_to_end(&mut v).map(|_| v)
        });
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(st) = child.try_wait()? {
                break Some(st);
            }
            if Instant::now() >= deadline {
                // Killing closes the child's pipes, which ends the reader threads.
                child.kill()?;
                child.wait()?;
                break None;
            }
            std::thread::sleep(WAIT_POLL);
        };
        let written = join(writer);
        let stdout: Vec<u8> = join(out_reader)?;
        let stderr: Vec<u8> = join(err_reader)?;
        Ok(Run {
            status,
            stdout,
            stderr,
            written,
        })
    })
}

fn join<T>(h: std::thread::ScopedJoinHandle<'_, T>) -> T {
    h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// Runs `<program> --version` and returns the version number it prints.
fn query_version(program: &Path) -> Result<String> {
    let out = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::NotFound {
                format!(
                    "not found; install it (Debian/Ubuntu: apt-get install {ESPEAK_DEBIAN_PACKAGE}) \
                     or set EspeakConfig.program to its path"
                )
            } else {
                format!("cannot be run: {e}")
            };
            TeacherError::Msg(format!("espeak-ng program '{}' {hint}", program.display()))
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(TeacherError::Msg(format!(
            "'{} --version' exited with {}: {}",
            program.display(),
            out.status,
            quote_stderr(&out.stderr)
        )));
    }
    parse_version(&stdout).ok_or_else(|| {
        TeacherError::Msg(format!(
            "'{} --version' printed no espeak-ng version: {:?}",
            program.display(),
            stdout.trim()
        ))
    })
}

/// `eSpeak NG text-to-speech: 1.51  Data at: ...` -> `1.51`.
fn parse_version(out: &str) -> Option<String> {
    let line = out.lines().find(|l| l.contains("text-to-speech:"))?;
    let (_, rest) = line.split_once("text-to-speech:")?;
    let v = rest.split_whitespace().next()?;
    v.starts_with(|c: char| c.is_ascii_digit())
        .then(|| v.to_string())
}

/// One utterance of plain text, or `None` if nothing is left to say.
fn prepare_text(text: &str) -> Option<String> {
    let mut s: String = text
        .chars()
        .map(|c| {
            if c.is_control() || c.is_whitespace() {
                ' '
            } else {
                c
            }
        })
        .collect();
    while s.contains("[[") {
        s = s.replace("[[", "[ [");
    }
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

fn quote_stderr(stderr: &[u8]) -> String {
    let s = String::from_utf8_lossy(stderr);
    let s = s.trim();
    if s.is_empty() {
        return "(no stderr)".into();
    }
    let mut q: String = s.chars().take(STDERR_QUOTE_CHARS).collect();
    if s.chars().count() > STDERR_QUOTE_CHARS {
        q.push('…');
    }
    format!("stderr: {q}")
}

/// Replaces the placeholder RIFF and `data` lengths of a WAV written to a pipe with the lengths
/// of the bytes present (the `data` chunk is taken to run to the end, trimmed to whole frames).
fn patch_streamed_wav(wav: &mut Vec<u8>) -> std::result::Result<(), String> {
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    if wav.len() < 12 || &wav[0..4] != b"RIFF" || &wav[8..12] != b"WAVE" {
        return Err(format!("output is not a WAV ({} bytes)", wav.len()));
    }
    let mut at = 12;
    let mut block_align = 0usize;
    loop {
        if at + 8 > wav.len() {
            return Err("WAV output has no data chunk".into());
        }
        let id = [wav[at], wav[at + 1], wav[at + 2], wav[at + 3]];
        let size = u32_at(wav, at + 4) as usize;
        if &id == b"fmt " && at + 8 + 14 <= wav.len() {
            block_align = u16::from_le_bytes([wav[at + 8 + 12], wav[at + 8 + 13]]) as usize;
        }
        if &id == b"data" {
            let mut data_len = wav.len() - (at + 8);
            if block_align > 0 {
                data_len -= data_len % block_align;
            }
            wav.truncate(at + 8 + data_len);
            wav[at + 4..at + 8].copy_from_slice(&(data_len as u32).to_le_bytes());
            let riff_len = (wav.len() - 8) as u32;
            wav[4..8].copy_from_slice(&riff_len.to_le_bytes());
            return Ok(());
        }
        at = at + 8 + size + (size & 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_flattened_to_one_utterance_and_phoneme_brackets_are_defused() {
        assert_eq!(prepare_text("  a\nb\tc\u{7}d "), Some("a b c d".into()));
        assert_eq!(
            prepare_text("say [[h@l'oU]]"),
            Some("say [ [h@l'oU]]".into())
        );
        assert_eq!(prepare_text("[[["), Some("[ [ [".into()));
        assert_eq!(prepare_text(" \n\t "), None);
        assert_eq!(prepare_text("-v x"), Some("-v x".into()));
    }

    #[test]
    fn version_line_is_parsed() {
        let out =
            "eSpeak NG text-to-speech: 1.51  Data at: /usr/lib/x86_64-linux-gnu/espeak-ng-data\n";
        assert_eq!(parse_version(out).as_deref(), Some("1.51"));
        assert_eq!(
            parse_version("eSpeak NG text-to-speech: 1.52-dev  Data").as_deref(),
            Some("1.52-dev")
        );
        assert_eq!(parse_version("something else"), None);
    }

    #[test]
    fn streamed_wav_header_is_patched_to_the_bytes_present() {
        let mut wav = Vec::new();
        wav.extend_from_slice(b"RIFF");
        wav.extend_from_slice(&0x7fff_f024u32.to_le_bytes());
        wav.extend_from_slice(b"WAVEfmt ");
        wav.extend_from_slice(&16u32.to_le_bytes());
        // PCM, mono, 22050 Hz, 44100 B/s, block align 2, 16 bit.
        for v in [1u16, 1] {
            wav.extend_from_slice(&v.to_le_bytes());
        }
        wav.extend_from_slice(&22_050u32.to_le_bytes());
        wav.extend_from_slice(&44_100u32.to_le_bytes());
        for v in [2u16, 16] {
            wav.extend_from_slice(&v.to_le_bytes());
        }
        wav.extend_from_slice(b"data");
        wav.extend_from_slice(&0x7fff_f000u32.to_le_bytes());
        let samples: Vec<i16> = (0..100).map(|i| (i * 300 - 15_000) as i16).collect();
        for s in &samples {
            wav.extend_from_slice(&s.to_le_bytes());
        }
        wav.push(0x55); // half a frame, as a cut pipe could leave
        patch_streamed_wav(&mut wav).unwrap();
        assert_eq!(wav.len(), 44 + 200);
        let audio = vaak_audio::io::decode_bytes(wav, Some("wav"), "test", None).unwrap();
        assert_eq!(audio.sample_rate, 22_050);
        let want: Vec<f32> = samples.iter().map(|&s| s as f32 / 32768.0).collect();
        assert_eq!(audio.samples, want);

        assert!(patch_streamed_wav(&mut b"not a wav at all".to_vec()).is_err());
        let mut no_data = b"RIFF\0\0\0\0WAVEfmt \x02\0\0\0ab".to_vec();
        assert!(patch_streamed_wav(&mut no_data)
            .unwrap_err()
            .contains("no data chunk"));
    }

    #[test]
    fn config_validation_names_the_field() {
        let bad = |f: fn(&mut EspeakConfig)| {
            let mut c = EspeakConfig::default();
            f(&mut c);
            c.validate().unwrap_err().to_string()
        };
        assert!(bad(|c| c.pitch = 100).contains("EspeakConfig.pitch"));
        assert!(bad(|c| c.rate_wpm = 10).contains("EspeakConfig.rate_wpm"));
        assert!(bad(|c| c.output_rate = 0).contains("EspeakConfig.output_rate"));
        assert!(bad(|c| c.voices.hi = "".into()).contains("EspeakConfig.voices.hi"));
        assert!(EspeakConfig::default().validate().is_ok());
    }
}
