//! A seeded, serialisable RNG for training (data order, augmentation, dropout masks).
//!
//! ChaCha20 is counter-based: its whole state is the 32-byte key (seed), the stream id and the
//! position in the keystream, so saving those three and restoring them continues the exact
//! same sequence.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The saved state of a [`TrainRng`]. Numbers that do not fit a JSON double are strings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    /// The 32-byte ChaCha key, hex.
    pub seed: String,
    pub stream: u64,
    /// Position in the keystream, in 32-bit words (decimal string of a u128).
    pub word_pos: String,
}

/// ChaCha20 with save/restore.
#[derive(Clone, Debug)]
pub struct TrainRng {
    rng: ChaCha20Rng,
}

impl TrainRng {
    /// Seeded from a `u64` (expanded to a key as `rand` does).
    pub fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha20Rng::seed_from_u64(seed),
        }
    }

    /// Seeded from a full key.
    pub fn from_key(key: [u8; 32]) -> Self {
        Self {
            rng: ChaCha20Rng::from_seed(key),
        }
    }

    /// An independent generator with the same key on another stream (e.g. one per data
    /// worker), starting at its beginning.
    pub fn fork(&self, stream: u64) -> Self {
        let mut rng = ChaCha20Rng::from_seed(self.rng.get_seed());
        rng.set_stream(stream);
        Self { rng }
    }

    /// The state to save.
    pub fn state(&self) -> RngState {
        let seed = self.rng.get_seed();
        RngState {
            seed: seed.iter().map(|b| format!("{b:02x}")).collect(),
            stream: self.rng.get_stream(),
            word_pos: self.rng.get_word_pos().to_string(),
        }
    }

    /// Restores a generator from a saved state.
    pub fn from_state(st: &RngState) -> Result<Self> {
        let bad = |what: &str| Error::Msg(format!("rng state: {what}"));
        if st.seed.len() != 64 || !st.seed.is_ascii() {
            return Err(bad("seed must be 64 hex digits"));
        }
        let mut key = [0u8; 32];
        for (i, k) in key.iter_mut().enumerate() {
            *k = u8::from_str_radix(&st.seed[2 * i..2 * i + 2], 16)
                .map_err(|_| bad("seed must be 64 hex digits"))?;
        }
        let pos: u128 = st
            .word_pos
            .parse()
            .map_err(|_| bad("word_pos is not an unsigned integer"))?;
        let mut rng = ChaCha20Rng::from_seed(key);
        rng.set_stream(st.stream);
        rng.set_word_pos(pos);
        Ok(Self { rng })
    }
}

impl RngCore for TrainRng {
    fn next_u32(&mut self) -> u32 {
        self.rng.next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        self.rng.next_u64()
    }
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        self.rng.fill_bytes(dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn resumes_mid_block() {
        let mut a = TrainRng::new(5);
        // An odd number of u32 leaves the generator mid-way through a 64-word block.
        for _ in 0..77 {
            a.next_u32();
        }
        let st = a.state();
        let json = serde_json::to_string(&st).unwrap();
        let mut b = TrainRng::from_state(&serde_json::from_str(&json).unwrap()).unwrap();
        for _ in 0..300 {
            assert_eq!(a.random::<u64>(), b.random::<u64>());
            assert_eq!(a.random::<f32>().to_bits(), b.random::<f32>().to_bits());
        }
        let mut f1 = a.fork(3);
        let mut f2 = b.fork(3);
        assert_eq!(f1.next_u64(), f2.next_u64());
        assert_ne!(a.fork(1).next_u64(), a.fork(2).next_u64());
        assert!(TrainRng::from_state(&RngState {
            seed: "zz".into(),
            stream: 0,
            word_pos: "0".into()
        })
        .is_err());
    }
}
