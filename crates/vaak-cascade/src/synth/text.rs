//! Seeded sentences: random words from a [`WordList`], numbers and dates written with digits
//! (espeak-ng reads them out in the voice's language), and a few templates mixing them.
//!
//! Month names are embedded per language because a date such as `12.03.1998` is read digit by
//! digit with "point" between, while `12 марта 1998` is read as a date. Sentences are not
//! grammatical; they cover each language's phonemes and prosody, which is what a codec and a
//! TTS-side corpus need.

use rand::Rng;
use vaak_data::Lang;

use super::wordlist::WordList;

/// The kinds of sentence [`sentence`] makes, for statistics and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Template {
    Words,
    Number,
    Date,
    NumberAndDate,
}

const MONTHS_EN: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
// Genitive, as a day-month date is said.
const MONTHS_RU: [&str; 12] = [
    "января",
    "февраля",
    "марта",
    "апреля",
    "мая",
    "июня",
    "июля",
    "августа",
    "сентября",
    "октября",
    "ноября",
    "декабря",
];
const MONTHS_HI: [&str; 12] = [
    "जनवरी",
    "फ़रवरी",
    "मार्च",
    "अप्रैल",
    "मई",
    "जून",
    "जुलाई",
    "अगस्त",
    "सितंबर",
    "अक्टूबर",
    "नवंबर",
    "दिसंबर",
];
const MONTHS_TE: [&str; 12] = [
    "జనవరి",
    "ఫిబ్రవరి",
    "మార్చి",
    "ఏప్రిల్",
    "మే",
    "జూన్",
    "జూలై",
    "ఆగస్టు",
    "సెప్టెంబర్",
    "అక్టోబర్",
    "నవంబర్",
    "డిసెంబర్",
];

pub(crate) fn months(lang: Lang) -> &'static [&'static str; 12] {
    match lang {
        Lang::En => &MONTHS_EN,
        Lang::Ru => &MONTHS_RU,
        Lang::Hi => &MONTHS_HI,
        Lang::Te => &MONTHS_TE,
    }
}

/// Words of a sentence: at least this many, at most [`MAX_WORDS`].
pub const MIN_WORDS: usize = 3;
pub const MAX_WORDS: usize = 14;

fn words<R: Rng>(rng: &mut R, list: &WordList, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| list.words[rng.random_range(0..list.words.len())].clone())
        .collect()
}

fn number<R: Rng>(rng: &mut R) -> String {
    // Small numbers are the most common in speech; large ones exercise thousands and millions.
    match rng.random_range(0..10) {
        0..=4 => rng.random_range(0..100u32).to_string(),
        5..=7 => rng.random_range(100..10_000u32).to_string(),
        _ => rng.random_range(10_000..10_000_000u32).to_string(),
    }
}

fn date<R: Rng>(rng: &mut R, lang: Lang) -> String {
    let day = rng.random_range(1..=28u32);
    let month = months(lang)[rng.random_range(0..12)];
    let year = rng.random_range(1900..=2035u32);
    match lang {
        Lang::En => format!("{month} {day}, {year}"),
        _ => format!("{day} {month} {year}"),
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// One sentence for `list.lang`, drawn from `rng`.
pub fn sentence<R: Rng>(rng: &mut R, list: &WordList) -> (String, Template) {
    let lang = list.lang;
    let template = match rng.random_range(0..20) {
        0..=11 => Template::Words,
        12..=14 => Template::Number,
        15..=17 => Template::Date,
        _ => Template::NumberAndDate,
    };
    let n = rng.random_range(MIN_WORDS..=MAX_WORDS);
    let mut parts = words(rng, list, n);
    let insert = |rng: &mut R, parts: &mut Vec<String>, item: String| {
        let at = rng.random_range(0..=parts.len());
        parts.insert(at, item);
    };
    match template {
        Template::Words => {}
        Template::Number => {
            let n = number(rng);
            insert(rng, &mut parts, n);
        }
        Template::Date => {
            let d = date(rng, lang);
            insert(rng, &mut parts, d);
        }
        Template::NumberAndDate => {
            let n = number(rng);
            insert(rng, &mut parts, n);
            let d = date(rng, lang);
            insert(rng, &mut parts, d);
        }
    }
    let end = match rng.random_range(0..10) {
        0 => "?",
        1 => "!",
        _ => ".",
    };
    // Hindi ends a sentence with the danda.
    let end = if lang == Lang::Hi && end == "." {
        "।"
    } else {
        end
    };
    let mut s = capitalise(&parts.join(" "));
    s.push_str(end);
    (s, template)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn list(lang: Lang) -> WordList {
        WordList {
            lang,
            path: "x".into(),
            words: (0..60)
                .map(|i| format!("w{}", (b'a' + i % 26) as char))
                .collect(),
        }
    }

    #[test]
    fn same_seed_same_sentence_and_every_template_occurs() {
        let l = list(Lang::Ru);
        let a: Vec<_> = (0..200)
            .map(|i| sentence(&mut ChaCha8Rng::seed_from_u64(i), &l))
            .collect();
        let b: Vec<_> = (0..200)
            .map(|i| sentence(&mut ChaCha8Rng::seed_from_u64(i), &l))
            .collect();
        assert_eq!(a, b);
        for t in [
            Template::Words,
            Template::Number,
            Template::Date,
            Template::NumberAndDate,
        ] {
            assert!(a.iter().any(|(_, tt)| *tt == t), "{t:?} never drawn");
        }
        let dated = a.iter().find(|(_, t)| *t == Template::Date).unwrap();
        assert!(MONTHS_RU.iter().any(|m| dated.0.contains(m)), "{}", dated.0);
        assert!(dated.0.chars().any(|c| c.is_ascii_digit()));
    }

    #[test]
    fn sentence_lengths_stay_in_bounds() {
        let l = list(Lang::Hi);
        for i in 0..100 {
            let (s, t) = sentence(&mut ChaCha8Rng::seed_from_u64(i), &l);
            let n = s.split_whitespace().count();
            let extra = match t {
                Template::Words => 0,
                Template::Number => 1,
                Template::Date => 3,
                Template::NumberAndDate => 4,
            };
            assert!((MIN_WORDS..=MAX_WORDS + extra).contains(&n), "{s}");
        }
    }
}
