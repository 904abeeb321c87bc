//! The languages vaak serves, and each teacher's spelling of them.
//!
//! Here, in the formats crate, because manifests, `meta.json` and directions name languages,
//! and every crate from the teachers up reads those.

use crate::error::{DataError, Result};
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    En,
    Ru,
    Hi,
    Te,
}

impl Lang {
    pub const ALL: [Lang; 4] = [Lang::En, Lang::Ru, Lang::Hi, Lang::Te];

    /// ISO 639-1, which is also Whisper's and M2M-100's code.
    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Ru => "ru",
            Lang::Hi => "hi",
            Lang::Te => "te",
        }
    }

    /// NLLB-200's FLORES code.
    pub fn nllb_code(self) -> &'static str {
        match self {
            Lang::En => "eng_Latn",
            Lang::Ru => "rus_Cyrl",
            Lang::Hi => "hin_Deva",
            Lang::Te => "tel_Telu",
        }
    }

    /// The English name, for prompts and messages.
    pub fn english_name(self) -> &'static str {
        match self {
            Lang::En => "English",
            Lang::Ru => "Russian",
            Lang::Hi => "Hindi",
            Lang::Te => "Telugu",
        }
    }

    /// The supported codes, for error messages.
    pub fn supported_list() -> String {
        Self::ALL.map(|l| l.code()).join(", ")
    }
}

impl fmt::Display for Lang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for Lang {
    type Err = DataError;

    /// Accepts ISO codes and NLLB codes, case-insensitively.
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|l| l.code() == t || l.nllb_code().to_ascii_lowercase() == t)
            .ok_or_else(|| DataError::UnsupportedLanguage {
                code: s.to_string(),
                supported: Self::supported_list(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_iso_and_nllb_codes_and_names_the_supported_ones_on_error() {
        assert_eq!("ru".parse::<Lang>().unwrap(), Lang::Ru);
        assert_eq!("TEL_TELU".parse::<Lang>().unwrap(), Lang::Te);
        let e = "de".parse::<Lang>().unwrap_err().to_string();
        assert!(e.contains("'de'") && e.contains("en, ru, hi, te"), "{e}");
    }
}
