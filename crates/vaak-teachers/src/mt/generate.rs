//! Generation for the MT teachers: the shared encoder-decoder search of
//! [`crate::seq2seq::generate`], under its former path.

pub use crate::seq2seq::generate::*;
