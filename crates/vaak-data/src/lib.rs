//! vaak-data: dataset tools.
//!
//! - [`synth`]: `vaak data synth`, a seeded synthetic speech corpus in en/ru/hi/te from
//!   espeak-ng's voices and variants ([`voices`]) reading sentences ([`text`]) built from Debian
//!   word lists ([`wordlist`]). It feeds codec training and tests, and stands in for speech in a
//!   language with little recorded data (Telugu).
//!
//! Written from scratch; the espeak-ng process handling is `vaak_teachers::tts::EspeakTts`'s.

pub mod error;
pub mod synth;
pub mod text;
pub mod voices;
pub mod wordlist;

pub use error::{DataError, Result};
pub use synth::{synthesize, SynthConfig, SynthSummary, Target, Utterance};
