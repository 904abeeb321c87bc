//! Manifest ids to directory names, injectively: the `<safe_id>` of the parallel layout.
//!
//! `[A-Za-z0-9_-]` are kept; every other byte of the UTF-8 id (including `.`, `/`, `\`, `%`,
//! spaces and all non-ASCII) becomes `%HH`. Because `%` itself is always escaped, decoding is
//! unique, so two different ids never share a directory. The result never contains a path
//! separator, is never `.`/`..`, and never starts with `.` (our temp dirs do). The empty id
//! becomes `%` (no escaped id is a lone `%`). Names longer than [`MAX_ESCAPED_LEN`] are cut and
//! suffixed with `%%` plus a 128-bit hash of the raw id, keeping them under filesystem limits
//! (255 bytes); only those rare names rely on the hash for uniqueness, and the `%%` marker keeps
//! them apart from all untruncated names. Case-insensitive filesystems are not handled.

/// A fixed 64-bit hash of `(seed, bytes)`, the same on every platform. Also the cascade's
/// shard key, so its values are pinned (see `vaak_cascade::select`'s tests).
pub fn stable_hash(seed: u64, bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.to_le_bytes().iter().chain(bytes) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // SplitMix64 finaliser: FNV alone mixes the last bytes poorly.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Longest escaped name kept as is.
pub const MAX_ESCAPED_LEN: usize = 180;

/// The directory name for manifest id `id`.
pub fn safe_id(id: &str) -> String {
    if id.is_empty() {
        return "%".to_string();
    }
    let mut out = String::with_capacity(id.len());
    for &b in id.as_bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.len() > MAX_ESCAPED_LEN {
        // Cut on an escape boundary so the prefix stays readable.
        let mut cut = MAX_ESCAPED_LEN;
        while out.as_bytes()[cut - 1] == b'%' || (cut >= 2 && out.as_bytes()[cut - 2] == b'%') {
            cut -= 1;
        }
        let h1 = stable_hash(0x5afe_1d00, id.as_bytes());
        let h2 = stable_hash(0x5afe_1d01, id.as_bytes());
        out.truncate(cut);
        out.push_str(&format!("%%{h1:016x}{h2:016x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn readable_ids_stay_readable_and_dangerous_ones_are_escaped() {
        assert_eq!(safe_id("712a8384_f1b-x"), "712a8384_f1b-x");
        assert_eq!(safe_id(""), "%");
        assert_eq!(safe_id(".."), "%2E%2E");
        assert_eq!(safe_id("a/b\\c"), "a%2Fb%5Cc");
        assert_eq!(safe_id("a b"), "a%20b");
        assert_eq!(safe_id("%41"), "%2541");
        assert_eq!(safe_id("я"), "%D1%8F");
        for id in ["..", ".", "/", "\\", "a/../b", ".hidden", " ", "\0", "con"] {
            let s = safe_id(id);
            assert!(
                !s.contains('/') && !s.contains('\\') && !s.starts_with('.'),
                "{s}"
            );
            assert!(s != "." && s != ".." && !s.is_empty());
        }
    }

    #[test]
    fn long_ids_are_bounded_and_still_distinct() {
        let a = "ы".repeat(300);
        let mut b = a.clone();
        b.push('x');
        let (sa, sb) = (safe_id(&a), safe_id(&b));
        assert!(sa.len() <= 255 && sb.len() <= 255);
        assert!(sa.contains("%%"));
        assert_ne!(sa, sb);
    }

    proptest! {
        #[test]
        fn injective(a in "\\PC{0,12}|[a-z%./ ]{0,6}", b in "\\PC{0,12}|[a-z%./ ]{0,6}") {
            if a != b {
                prop_assert_ne!(safe_id(&a), safe_id(&b));
            }
        }

        #[test]
        fn injective_on_near_misses(base in "[a-zA-Z0-9 ._%/-]{0,8}", c in any::<char>()) {
            // Ids that differ by one character, including ones that look like escapes.
            let with = format!("{base}{c}");
            prop_assert_ne!(safe_id(&base), safe_id(&with));
            let esc = format!("{base}%{:02X}", c as u32 & 0xff);
            if esc != with {
                prop_assert_ne!(safe_id(&esc), safe_id(&with));
            }
        }

        #[test]
        fn always_a_single_safe_path_component(id in any::<String>()) {
            let s = safe_id(&id);
            prop_assert!(!s.is_empty() && s.len() <= 255);
            prop_assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-%".contains(&b)));
            prop_assert!(!s.starts_with('.'));
        }
    }
}
