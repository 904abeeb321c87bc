//! espeak-ng voices per language, their variants, and seeded voice settings.
//!
//! A voice is a language voice (`en-gb`, `ru`, ...) plus an optional variant (`+m3`, `+f2`,
//! `+croak`, `+whisper`), which changes the formant voice, and a rate (`-s`) and pitch (`-p`)
//! drawn per utterance. espeak-ng silently falls back to the plain voice for an unknown variant,
//! so [`check_variants`] checks each against `espeak-ng --voices=variant` before a run.

use std::path::Path;
use std::process::{Command, Stdio};

use rand::Rng;
use vaak_data::Lang;

use super::error::{Result, SynthError};

/// Language voices drawn from for each language (all in espeak-ng 1.51's `--voices`).
pub fn base_voices(lang: Lang) -> &'static [&'static str] {
    match lang {
        Lang::En => &[
            "en-us",
            "en-gb",
            "en-gb-scotland",
            "en-gb-x-rp",
            "en-029",
            "en-us-nyc",
        ],
        Lang::Ru => &["ru", "ru-lv"],
        Lang::Hi => &["hi"],
        Lang::Te => &["te"],
    }
}

/// Variants drawn from; `""` is the voice's own.
pub const VARIANTS: [&str; 16] = [
    "", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "croak", "whisper",
    "klatt",
];

/// Rates (words per minute) drawn from, uniform.
pub const RATE_WPM: std::ops::RangeInclusive<u32> = 120..=230;
/// Pitches (espeak-ng's 0..=99 scale) drawn from, uniform.
pub const PITCH: std::ops::RangeInclusive<u32> = 20..=80;

/// A voice with its settings for one utterance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoiceDraw {
    /// What goes after `-v`, e.g. `en-gb+f3`.
    pub voice: String,
    pub rate_wpm: u32,
    pub pitch: u32,
}

/// Draws a voice, a variant, a rate and a pitch for `lang`.
pub fn draw<R: Rng>(rng: &mut R, lang: Lang) -> VoiceDraw {
    let bases = base_voices(lang);
    let base = bases[rng.random_range(0..bases.len())];
    let variant = VARIANTS[rng.random_range(0..VARIANTS.len())];
    let voice = if variant.is_empty() {
        base.to_string()
    } else {
        format!("{base}+{variant}")
    };
    VoiceDraw {
        voice,
        rate_wpm: rng.random_range(RATE_WPM),
        pitch: rng.random_range(PITCH),
    }
}

/// Fails naming the first of [`VARIANTS`] that `program --voices=variant` does not list.
pub fn check_variants(program: &Path) -> Result<()> {
    let out = Command::new(program)
        .arg("--voices=variant")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            SynthError::Espeak(format!(
                "cannot run '{}': {e}; install it (apt-get install espeak-ng)",
                program.display()
            ))
        })?;
    let listed = String::from_utf8_lossy(&out.stdout);
    let known = variant_files(&listed);
    for v in VARIANTS.iter().filter(|v| !v.is_empty()) {
        if !known.iter().any(|k| k == v) {
            return Err(SynthError::Espeak(format!(
                "variant '{v}' is not installed ('{} --voices=variant' does not list !v/{v})",
                program.display()
            )));
        }
    }
    Ok(())
}

/// The variant file names (`m1`, `croak`, ...) in `--voices=variant` output.
fn variant_files(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter_map(|l| l.split_whitespace().find_map(|f| f.strip_prefix("!v/")))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn variant_listing_is_parsed() {
        let l = "Pty Language       Age/Gender VoiceName          File                 Other Languages\n \
                 5  variant          --/M      male1              !v/m1                \n \
                 5  variant          --/F      female_whisper     !v/whisperf          \n";
        assert_eq!(variant_files(l), ["m1", "whisperf"]);
    }

    #[test]
    fn draws_stay_in_range_and_cover_variants() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let draws: Vec<_> = (0..400).map(|_| draw(&mut rng, Lang::En)).collect();
        for d in &draws {
            assert!(RATE_WPM.contains(&d.rate_wpm) && PITCH.contains(&d.pitch));
            let base = d.voice.split('+').next().unwrap();
            assert!(base_voices(Lang::En).contains(&base), "{}", d.voice);
        }
        assert!(draws.iter().any(|d| d.voice.ends_with("+whisper")));
        assert!(draws.iter().any(|d| !d.voice.contains('+')));
    }
}
