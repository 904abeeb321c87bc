//! Property test: `decode_bytes` returns `Ok` or `Err` for any input, never panics, and on `Ok`
//! every sample is finite.
//!
//! Inputs are random bytes, and random mutations (bit flips, byte overwrites, truncations,
//! insertions, deletions; half of them aimed at the first 256 bytes, where the headers are) of
//! the small valid WAV/FLAC/MP3/Ogg fixtures from `tools/fixtures/audio_io.py`.
//!
//! Determinism policy: the RNG seed is fixed ([`SEED`]) and no failure-persistence file is
//! written, so CI runs the same cases every time. To explore, run locally with
//! `VAAK_FUZZ_SEED=<n> VAAK_FUZZ_CASES=<n>`; a failure found that way is minimised by proptest
//! and then added as an explicit regression `#[test]` at the bottom of this file (not as a
//! persistence file).
//!
//! Panics inside symphonia are caught by `decode_bytes` and turned into `AudioError::Corrupt`;
//! their messages still reach stderr, which is expected noise in this test's output.

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use vaak_audio::io::decode_bytes;
use vaak_audio::AudioError;

const DATA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tools/fixtures/data/audio_io"
);

/// Fixed seed of the proptest RNG.
const SEED: u64 = 0x7661_616b_2d66_757a;

const FILES: [(&str, &str); 6] = [
    ("pcm16_16k_stereo.wav", "wav"),
    ("pcm24_22k.wav", "wav"),
    ("float32_16k.wav", "wav"),
    ("flac_16k_stereo.flac", "flac"),
    ("mp3_22k.mp3", "mp3"),
    ("vorbis_16k.ogg", "ogg"),
];

/// Cases per property: 256 by default (well under a second in a debug build);
/// `VAAK_FUZZ_CASES` raises it for a longer local run.
fn cases() -> u32 {
    std::env::var("VAAK_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// [`SEED`], unless `VAAK_FUZZ_SEED` asks to explore elsewhere (never set in CI).
fn seed() -> u64 {
    std::env::var("VAAK_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SEED)
}

fn config() -> Config {
    Config {
        cases: cases(),
        rng_seed: RngSeed::Fixed(seed()),
        failure_persistence: None,
        max_shrink_iters: 2000,
        ..Config::default()
    }
}

fn fixtures() -> &'static [Vec<u8>] {
    static CELL: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    CELL.get_or_init(|| {
        FILES
            .iter()
            .map(|(name, _)| std::fs::read(format!("{DATA}/{name}")).unwrap())
            .collect()
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit { pos: usize, bit: u8 },
    Overwrite { pos: usize, byte: u8 },
    Truncate { at: usize },
    Insert { pos: usize, bytes: Vec<u8> },
    Delete { pos: usize, len: usize },
}

fn position() -> impl Strategy<Value = usize> {
    // Half aimed at the headers; positions are taken modulo the current length.
    prop_oneof![0usize..256, any::<usize>()]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (position(), 0u8..8).prop_map(|(pos, bit)| Mutation::FlipBit { pos, bit }),
        3 => (position(), any::<u8>()).prop_map(|(pos, byte)| Mutation::Overwrite { pos, byte }),
        1 => position().prop_map(|at| Mutation::Truncate { at }),
        1 => (position(), prop::collection::vec(any::<u8>(), 1..64))
            .prop_map(|(pos, bytes)| Mutation::Insert { pos, bytes }),
        1 => (position(), 1usize..512).prop_map(|(pos, len)| Mutation::Delete { pos, len }),
    ]
}

fn apply(mut b: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        let n = b.len().max(1);
        match m {
            Mutation::FlipBit { pos, bit } => {
                if !b.is_empty() {
                    b[pos % n] ^= 1 << bit;
                }
            }
            Mutation::Overwrite { pos, byte } => {
                if !b.is_empty() {
                    b[pos % n] = *byte;
                }
            }
            Mutation::Truncate { at } => b.truncate(at % n),
            Mutation::Insert { pos, bytes } => {
                let p = pos % (b.len() + 1);
                b.splice(p..p, bytes.iter().copied());
            }
            Mutation::Delete { pos, len } => {
                let p = pos % n;
                let end = (p + len).min(b.len());
                if p < end {
                    b.drain(p..end);
                }
            }
        }
    }
    b
}

/// The property: no panic escapes (a panic here fails the test), and `Ok` means finite,
/// non-empty audio at a non-zero rate.
fn check(bytes: Vec<u8>, ext: Option<&str>) -> Result<(), TestCaseError> {
    match decode_bytes(bytes, ext, "fuzz-input", None) {
        Ok(a) => {
            prop_assert!(!a.samples.is_empty());
            prop_assert!(a.sample_rate > 0);
            prop_assert!(a.samples.iter().all(|v| v.is_finite()));
        }
        Err(e) => {
            // Every error names the input.
            prop_assert!(e.to_string().contains("fuzz-input"), "{}", e);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..4096),
        ext in prop::option::of(prop::sample::select(vec!["wav", "flac", "mp3", "ogg", "txt"])),
    ) {
        check(bytes, ext)?;
    }

    #[test]
    fn random_bytes_with_a_valid_magic_never_panic(
        magic in prop::sample::select(vec![
            &b"RIFF\x24\x08\x00\x00WAVEfmt "[..],
            &b"fLaC"[..],
            &b"OggS\x00\x02"[..],
            &b"ID3\x04\x00"[..],
            &b"\xff\xfb\x90\x64"[..],
        ]),
        tail in prop::collection::vec(any::<u8>(), 0..2048),
    ) {
        let mut bytes = magic.to_vec();
        bytes.extend(tail);
        check(bytes, None)?;
    }

    #[test]
    fn mutated_valid_files_never_panic(
        file in 0..FILES.len(),
        muts in prop::collection::vec(mutation(), 1..8),
    ) {
        let bytes = apply(fixtures()[file].clone(), &muts);
        check(bytes, Some(FILES[file].1))?;
    }
}

// ---------------------------------------------------------------------------------------------
// Regressions: inputs that once broke a decoder, kept as plain tests.
// ---------------------------------------------------------------------------------------------

/// The MP3's Xing frame count set to 0 (with the LAME tag CRC fixed up so the tag is still
/// believed): symphonia computes `frames*576 - delay - padding`, which underflows: a panic
/// inside symphonia with overflow checks on (as in the dev/test profile), a wrapped huge count
/// without. Either way the result must be a typed error.
#[test]
fn mp3_xing_frame_count_smaller_than_encoder_delay() {
    let mut b = fixtures()[4].clone();
    let xing = b
        .windows(4)
        .position(|w| w == b"Xing" || w == b"Info")
        .unwrap();
    // Tag, flags, then the frame count (big-endian) when flag bit 0 is set.
    assert_eq!(b[xing + 7] & 1, 1, "fixture has a frame count");
    b[xing + 8..xing + 12].copy_from_slice(&0u32.to_be_bytes());
    // The 36-byte LAME extension follows the 120-byte Xing fields and ends with a CRC-16/ARC of
    // every frame byte before it.
    let frame = b
        .windows(2)
        .position(|w| w[0] == 0xFF && w[1] & 0xE0 == 0xE0)
        .unwrap();
    assert_eq!(&b[xing + 120..xing + 124], b"LAME");
    let crc_at = xing + 120 + 34;
    let crc = crc16_arc(&b[frame..crc_at]);
    b[crc_at..crc_at + 2].copy_from_slice(&crc.to_be_bytes());
    let e = decode_bytes(b, Some("mp3"), "xing0.mp3", None).unwrap_err();
    assert!(matches!(e, AudioError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("xing0.mp3"));
}

fn crc16_arc(data: &[u8]) -> u16 {
    let mut crc = 0u16;
    for &byte in data {
        crc ^= u16::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// A WAV header claiming a sample rate of 1 Hz, decoded with resampling to 16 kHz: allowed,
/// but must neither panic nor build absurd FFT blocks.
#[test]
fn wav_with_tiny_sample_rate_resamples() {
    let mut b = fixtures()[2].clone();
    let fmt = b.windows(4).position(|w| w == b"fmt ").unwrap();
    b[fmt + 12..fmt + 16].copy_from_slice(&1u32.to_le_bytes());
    // Keep it short: 3 samples.
    let data = b.windows(4).position(|w| w == b"data").unwrap();
    b[data + 4..data + 8].copy_from_slice(&12u32.to_le_bytes());
    b.truncate(data + 8 + 12);
    let a = decode_bytes(b, Some("wav"), "rate1.wav", Some(16000)).unwrap();
    assert_eq!(a.samples.len(), 3 * 16000);
    assert!(a.samples.iter().all(|v| v.is_finite()));
}
