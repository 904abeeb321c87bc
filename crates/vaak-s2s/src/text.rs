//! The aligned text stream's tokens: [`CharTokenizer`] (one id per character, from a fixed
//! code-point table, no vocabulary file) and [`align_uniform`], which spreads a text's tokens
//! over the voiced frames of its audio ([`voiced_frames`]).
//!
//! # Why characters
//!
//! The tiny and small models see a few thousand pairs: a small vocabulary whose every id is
//! seen often matters more than short sequences. The Whisper / M2M tokenizers vaak loads for
//! the teachers have 50-250k ids (mostly unseen in such data), and UTF-8 bytes would give
//! Cyrillic, Devanagari and Telugu two or three tokens per letter, more than a 25 Hz frame
//! rate holds for fast speech. One id per character fits the four languages vaak speaks
//! (en, ru, hi, te) in [`CharTokenizer::VOCAB`] ids and stays under the frame rate (speech
//! runs at about 10-15 characters per second).
//!
//! # Table
//!
//! | ids | what |
//! | --- | --- |
//! | 0 | [`CharTokenizer::PAD`]: no character starts at this frame |
//! | 1 | [`CharTokenizer::UNK`]: a character outside the table |
//! | 2..=96 | printable ASCII `' '..='~'` (letters lowercased) |
//! | 97..=352 | Cyrillic U+0400..=U+04FF (lowercased) |
//! | 353..=480 | Devanagari U+0900..=U+097F |
//! | 481..=608 | Telugu U+0C00..=U+0C7F |
//!
//! Runs of whitespace become one space; the text is trimmed.
//!
//! # Alignment
//!
//! No aligner exists in vaak, so the characters are spread uniformly over the voiced frames
//! of the target audio: character `i` of `n` lands on voiced frame `floor(i * V / n)` of the
//! `V` voiced frames, every other frame holds [`CharTokenizer::PAD`]. Voiced frames are those
//! whose RMS is above the clip's loudest frame - 30 dB (and above -50 dBFS), the activity
//! rule of the prosody features. Pauses between phrases then carry no characters, and the
//! text runs at the speech's own pace. With more characters than voiced frames the whole clip
//! is used; with more characters than frames, every frame gets one and the characters are
//! subsampled evenly.

/// One id per character from a fixed table (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CharTokenizer;

const ASCII: (u32, u32, u32) = (0x20, 0x7E, 2);
const BLOCKS: [(u32, u32, u32); 3] = [
    (0x0400, 0x04FF, 97),
    (0x0900, 0x097F, 353),
    (0x0C00, 0x0C7F, 481),
];

impl CharTokenizer {
    /// No character starts at this frame.
    pub const PAD: u32 = 0;
    /// A character outside the table.
    pub const UNK: u32 = 1;
    /// Number of ids (the model's `text_vocab_size`).
    pub const VOCAB: usize = 609;

    fn ranges() -> impl Iterator<Item = (u32, u32, u32)> {
        std::iter::once(ASCII).chain(BLOCKS)
    }

    fn id(c: char) -> u32 {
        let c = if c.is_whitespace() {
            ' '
        } else {
            let mut l = c.to_lowercase();
            match (l.next(), l.next()) {
                (Some(lc), None) => lc,
                _ => c,
            }
        };
        let u = c as u32;
        Self::ranges()
            .find(|&(lo, hi, _)| (lo..=hi).contains(&u))
            .map_or(Self::UNK, |(lo, _, base)| base + u - lo)
    }

    /// The ids of `text` (whitespace runs collapsed to one space, trimmed).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        text.split_whitespace()
            .enumerate()
            .flat_map(|(i, w)| {
                let space = (i > 0).then_some(Self::id(' '));
                space.into_iter().chain(w.chars().map(Self::id))
            })
            .collect()
    }

    /// Text of `ids`: PAD is skipped, UNK (and an id outside the table) becomes `'\u{FFFD}'`.
    pub fn decode(&self, ids: &[u32]) -> String {
        ids.iter()
            .filter(|&&i| i != Self::PAD)
            .map(|&i| {
                Self::ranges()
                    .find(|&(lo, hi, base)| i >= base && i - base <= hi - lo)
                    .and_then(|(lo, _, base)| char::from_u32(lo + i - base))
                    .unwrap_or('\u{FFFD}')
            })
            .collect()
    }
}

/// Which of the `frames` codec frames of `samples` (at `sr` Hz, `frame_rate` frames/s) are
/// voiced: RMS above the loudest frame - 30 dB and above -50 dBFS. A frame past the end of
/// the samples is unvoiced.
pub fn voiced_frames(samples: &[f32], sr: u32, frame_rate: f64, frames: usize) -> Vec<bool> {
    let hop = (sr as f64 / frame_rate).round().max(1.0) as usize;
    let db = |x: f32| 20.0 * x.max(1e-10).log10();
    let rms: Vec<Option<f32>> = (0..frames)
        .map(|f| {
            let lo = (f * hop).min(samples.len());
            let hi = ((f + 1) * hop).min(samples.len());
            (hi > lo).then(|| {
                let s = &samples[lo..hi];
                (s.iter().map(|x| x * x).sum::<f32>() / s.len() as f32).sqrt()
            })
        })
        .collect();
    let peak = rms.iter().flatten().cloned().fold(0.0f32, f32::max);
    let threshold = (db(peak) - 30.0).max(-50.0);
    rms.iter()
        .map(|r| r.is_some_and(|r| db(r) > threshold))
        .collect()
}

/// Spreads `tokens` over `voiced.len()` frames (see the module docs): one id per frame,
/// [`CharTokenizer::PAD`] where no token starts.
pub fn align_uniform(tokens: &[u32], voiced: &[bool]) -> Vec<u32> {
    let t = voiced.len();
    let mut out = vec![CharTokenizer::PAD; t];
    let n = tokens.len();
    if n == 0 || t == 0 {
        return out;
    }
    let mut slots: Vec<usize> = (0..t).filter(|&f| voiced[f]).collect();
    if slots.len() < n {
        slots = (0..t).collect();
    }
    if n > t {
        for (f, o) in out.iter_mut().enumerate() {
            *o = tokens[f * n / t];
        }
        return out;
    }
    let v = slots.len();
    for (i, &tok) in tokens.iter().enumerate() {
        out[slots[i * v / n]] = tok;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_round_trip_in_four_scripts() {
        let tk = CharTokenizer;
        for s in ["the time is 9:15.", "сейчас 9:15.", "नमस्ते दुनिया", "నమస్కారం"]
        {
            let ids = tk.encode(s);
            assert_eq!(ids.len(), s.chars().count(), "{s}");
            assert!(ids
                .iter()
                .all(|&i| i != CharTokenizer::UNK && (i as usize) < CharTokenizer::VOCAB));
            assert_eq!(tk.decode(&ids), s);
        }
        // Lowercased, whitespace collapsed, unknown characters kept as UNK.
        assert_eq!(tk.decode(&tk.encode("  Hello\n\tМИР ")), "hello мир");
        assert_eq!(tk.encode("a€b")[1], CharTokenizer::UNK);
        // The blocks follow each other and the last id is the vocabulary's last.
        let block_ends = [
            (96, '~'),
            (97, '\u{0400}'),
            (352, '\u{04FF}'),
            (353, '\u{0900}'),
        ];
        for (id, c) in block_ends
            .into_iter()
            .chain([(480, '\u{097F}'), (481, '\u{0C00}')])
        {
            assert_eq!(tk.decode(&[id]), c.to_string(), "id {id}");
        }
        assert_eq!(
            CharTokenizer::id('\u{0C7F}') as usize,
            CharTokenizer::VOCAB - 1
        );
        assert_eq!(tk.decode(&[CharTokenizer::VOCAB as u32]), "\u{FFFD}");
    }

    #[test]
    fn voiced_frames_follow_the_energy() {
        let sr = 16_000;
        // 10 frames of 640 samples: silence, 6 frames of tone, silence; one quiet frame.
        let mut x = vec![0.0f32; 640 * 2];
        x.extend((0..640 * 6).map(|i| 0.3 * (i as f32 * 0.1).sin()));
        x.extend(vec![0.0; 640]);
        x.extend(vec![0.001; 640]);
        let v = voiced_frames(&x, sr, 25.0, 11);
        let want = [
            false, false, true, true, true, true, true, true, false, false, false,
        ];
        assert_eq!(v, want);
    }

    #[test]
    fn tokens_spread_over_voiced_frames_in_order() {
        let voiced = [false, true, true, false, true, true, true, false];
        let a = align_uniform(&[10, 11, 12], &voiced);
        // 5 voiced frames (1, 2, 4, 5, 6), 3 tokens: voiced slots 0, 1, 3 (i * 5 / 3).
        assert_eq!(a, vec![0, 10, 11, 0, 0, 12, 0, 0]);
        // More tokens than voiced frames: the whole clip.
        let b = align_uniform(&[1, 2, 3, 4, 5, 6], &voiced);
        assert_eq!(b.iter().filter(|&&t| t != 0).count(), 6);
        assert_eq!(
            b.iter().copied().filter(|&t| t != 0).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5, 6]
        );
        // More tokens than frames: every frame, subsampled in order.
        let c = align_uniform(&(1..=16).collect::<Vec<_>>(), &voiced);
        assert_eq!(c, vec![1, 3, 5, 7, 9, 11, 13, 15]);
        assert_eq!(align_uniform(&[], &voiced), vec![0; 8]);
    }
}
