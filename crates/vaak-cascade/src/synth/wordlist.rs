//! Word lists per language, read from Debian packages or a file given by the user.
//!
//! | lang | file | Debian package |
//! | --- | --- | --- |
//! | en | `/usr/share/dict/american-english` | `wamerican` |
//! | ru | `/usr/share/hunspell/ru_RU.dic` | `hunspell-ru` |
//! | hi | `/usr/share/hunspell/hi_IN.dic` | `hunspell-hi` |
//! | te | `/usr/share/hunspell/te_IN.dic` | `hunspell-te` |
//!
//! Both formats are read the same way: one entry per line; a hunspell `.dic` starts with a line
//! holding the entry count and may append `/FLAGS` (affix classes) and tab-separated morphology
//! to a word, which are cut off. All four Debian files are UTF-8 (`SET UTF-8` in their `.aff`).
//! Entries that espeak-ng would not read as one word are dropped: anything with digits,
//! punctuation (possessives like `cat's` included) or spaces, single letters, and all-capital
//! abbreviations (`NASA`, `ЧПУ`, spelled out letter by letter). The result is sorted and
//! deduplicated, so a list's content alone fixes which word a seeded draw picks.

use std::path::{Path, PathBuf};

use vaak_data::Lang;

use super::error::{Result, SynthError};

/// Fewer usable words than this is taken as a wrong file.
pub const MIN_WORDS: usize = 50;

/// Longest word kept, in characters (longer ones are mostly compounds that read badly).
const MAX_WORD_CHARS: usize = 24;

/// Where a language's default word list lives, and the package that installs it.
pub fn debian_source(lang: Lang) -> (&'static str, &'static str) {
    match lang {
        Lang::En => ("/usr/share/dict/american-english", "wamerican"),
        Lang::Ru => ("/usr/share/hunspell/ru_RU.dic", "hunspell-ru"),
        Lang::Hi => ("/usr/share/hunspell/hi_IN.dic", "hunspell-hi"),
        Lang::Te => ("/usr/share/hunspell/te_IN.dic", "hunspell-te"),
    }
}

/// Every Debian package [`debian_source`] names, for install scripts and messages.
pub fn debian_packages() -> Vec<&'static str> {
    Lang::ALL.iter().map(|&l| debian_source(l).1).collect()
}

/// The usable words of one language.
#[derive(Clone, Debug)]
pub struct WordList {
    pub lang: Lang,
    pub path: PathBuf,
    pub words: Vec<String>,
}

impl WordList {
    /// Reads `path` (or the Debian default for `lang` when `None`).
    pub fn load(lang: Lang, path: Option<&Path>) -> Result<Self> {
        let (default, package) = debian_source(lang);
        let user_given = path.is_some();
        let path = path.map_or_else(|| PathBuf::from(default), Path::to_path_buf);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !user_given => {
                return Err(SynthError::MissingWordList {
                    lang: lang.code().into(),
                    path,
                    package: package.into(),
                })
            }
            Err(e) => return Err(SynthError::io(&path, e)),
        };
        let text = String::from_utf8_lossy(&bytes);
        let words = parse_words(&text);
        if words.len() < MIN_WORDS {
            return Err(SynthError::TooFewWords {
                lang: lang.code().into(),
                path,
                count: words.len(),
                min: MIN_WORDS,
            });
        }
        Ok(Self { lang, path, words })
    }

    /// A 64-bit FNV-1a digest of the words, to tell whether a corpus was made from this list.
    pub fn digest(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for w in &self.words {
            for b in w.bytes().chain(std::iter::once(b'\n')) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        h
    }
}

/// The usable words of a word list or `.dic` text (see the module doc).
pub fn parse_words(text: &str) -> Vec<String> {
    let mut words: Vec<String> = text
        .lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let line = line.trim_start_matches('\u{feff}');
            if i == 0 && line.trim().parse::<u64>().is_ok() {
                return None; // hunspell entry count
            }
            let word = line.split(['/', '\t', ' ']).next()?.trim();
            usable(word).then(|| word.to_string())
        })
        .collect();
    words.sort();
    words.dedup();
    words
}

fn usable(w: &str) -> bool {
    let n = w.chars().count();
    if !(2..=MAX_WORD_CHARS).contains(&n) {
        return false;
    }
    if w.chars()
        .any(|c| c.is_numeric() || c.is_whitespace() || c.is_control() || c.is_ascii_punctuation())
    {
        return false;
    }
    if !w.chars().any(char::is_alphabetic) {
        return false;
    }
    // All-capital abbreviations are spelled out; scripts without case have no uppercase.
    let upper = w.chars().filter(|c| c.is_uppercase()).count();
    upper < 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hunspell_flags_counts_and_junk_are_removed() {
        let dic = "7\nЯуза/H\nЯуза/O\nЧПУ\nкошка/A\tpo:noun\nx\ncat's\nB52\nదేశం\nहिंदी/\n";
        assert_eq!(parse_words(dic), ["Яуза", "кошка", "हिंदी", "దేశం"]);
    }

    #[test]
    fn plain_word_list_keeps_capitalised_names() {
        let w = parse_words("Aaron\nNASA\nhello\nhello\nit's\n123\n");
        assert_eq!(w, ["Aaron", "hello"]);
    }

    #[test]
    fn missing_files_are_named() {
        let e = WordList::load(Lang::Te, Some(Path::new("/nonexistent/te.dic")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/te.dic"), "{e}");
        let e = SynthError::MissingWordList {
            lang: "te".into(),
            path: debian_source(Lang::Te).0.into(),
            package: debian_source(Lang::Te).1.into(),
        }
        .to_string();
        assert!(
            e.contains("apt-get install hunspell-te") && e.contains("--wordlist te="),
            "{e}"
        );
    }

    #[test]
    fn too_small_a_list_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.txt");
        std::fs::write(&p, "alpha\nbeta\n").unwrap();
        let e = WordList::load(Lang::En, Some(&p)).unwrap_err().to_string();
        assert!(e.contains("only 2 usable words"), "{e}");
    }
}
