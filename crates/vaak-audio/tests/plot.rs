//! PNG plots: valid files of the requested size, content that depends on the input, atomic
//! writes, typed errors for unusable input.

use vaak_audio::plot::{
    curves_png, curves_png_sized, spectrogram_compare_png, spectrogram_compare_png_sized,
    DEFAULT_SIZE,
};

/// Reads back a PNG as written by the plot module, checking what any viewer checks: the
/// signature, chunk order, every chunk's CRC-32, the IHDR fields, and that the zlib stream
/// inflates to exactly `height` rows of `1 + 3 * width` bytes. Returns (width, height, RGB).
fn read_png(path: &std::path::Path) -> (u32, u32, Vec<u8>) {
    use std::io::Read;
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    let crc = |data: &[u8]| {
        let mut c = 0xffff_ffffu32;
        for &x in data {
            c ^= u32::from(x);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    };
    let be = |s: &[u8]| u32::from_be_bytes([s[0], s[1], s[2], s[3]]);
    let (mut at, mut kinds, mut idat, mut wh) = (8, Vec::new(), Vec::new(), (0, 0));
    while at < b.len() {
        let len = be(&b[at..]) as usize;
        let kind = &b[at + 4..at + 8];
        let data = &b[at + 8..at + 8 + len];
        assert_eq!(
            be(&b[at + 8 + len..]),
            crc(&b[at + 4..at + 8 + len]),
            "CRC of {kind:?}"
        );
        match kind {
            b"IHDR" => {
                wh = (be(data), be(&data[4..]));
                assert_eq!(&data[8..], [8, 2, 0, 0, 0], "8-bit RGB, no interlace");
            }
            b"IDAT" => idat.extend_from_slice(data),
            _ => {}
        }
        kinds.push(String::from_utf8_lossy(kind).into_owned());
        at += 12 + len;
    }
    assert_eq!(kinds.first().map(String::as_str), Some("IHDR"));
    assert_eq!(kinds.last().map(String::as_str), Some("IEND"));
    let mut raw = Vec::new();
    flate2::read::ZlibDecoder::new(&idat[..])
        .read_to_end(&mut raw)
        .unwrap();
    let stride = 1 + 3 * wh.0 as usize;
    assert_eq!(raw.len(), stride * wh.1 as usize);
    let mut rgb = Vec::with_capacity(raw.len());
    for row in raw.chunks(stride) {
        assert_eq!(row[0], 0, "filter type None");
        rgb.extend_from_slice(&row[1..]);
    }
    (wh.0, wh.1, rgb)
}

fn differing_pixels(a: &[u8], b: &[u8]) -> usize {
    a.chunks(3).zip(b.chunks(3)).filter(|(x, y)| x != y).count()
}

fn tone(sr: u32, secs: f32, hz: f32) -> Vec<f32> {
    (0..(sr as f32 * secs) as usize)
        .map(|i| 0.5 * (2.0 * std::f32::consts::PI * hz * i as f32 / sr as f32).sin())
        .collect()
}

#[test]
fn curves_are_pngs_of_the_requested_size_and_follow_the_data() {
    let d = tempfile::tempdir().unwrap();
    let loss: Vec<(f64, f64)> = (0..200)
        .map(|s| (s as f64, 5.0 * (-(s as f64) / 50.0).exp() + 0.1))
        .collect();
    let val: Vec<(f64, f64)> = (0..20)
        .map(|k| ((k * 10) as f64, 4.0 / (1.0 + k as f64)))
        .collect();
    let a = d.path().join("a.png");
    curves_png(
        &a,
        "codec training",
        &[("train loss", &loss), ("val loss", &val)],
        true,
    )
    .unwrap();
    let (w, h, pa) = read_png(&a);
    assert_eq!((w, h), DEFAULT_SIZE);

    let b = d.path().join("b.png");
    let flat: Vec<(f64, f64)> = loss.iter().map(|&(x, _)| (x, 1.0)).collect();
    curves_png(
        &b,
        "codec training",
        &[("train loss", &flat), ("val loss", &val)],
        true,
    )
    .unwrap();
    let (_, _, pb) = read_png(&b);
    assert!(
        differing_pixels(&pa, &pb) > 500,
        "different data, different picture"
    );

    // Text is drawn (the embedded font works): a different title changes pixels in the top band.
    let c = d.path().join("c.png");
    curves_png(
        &c,
        "something else entirely",
        &[("train loss", &loss), ("val loss", &val)],
        true,
    )
    .unwrap();
    let (_, _, pc) = read_png(&c);
    let top = (w * 40 * 3) as usize;
    assert!(differing_pixels(&pa[..top], &pc[..top]) > 50);

    let s = d.path().join("small.png");
    curves_png_sized(&s, "lin", &[("x", &loss)], false, (640, 360)).unwrap();
    assert_eq!(read_png(&s).0, 640);
    assert_eq!(read_png(&s).1, 360);
    let leftovers = std::fs::read_dir(d.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('.')
        })
        .count();
    assert_eq!(leftovers, 0, "no temporary files left");
}

#[test]
fn curves_skip_unplottable_points_and_reject_nothing_to_plot() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("x.png");
    let pts = [(0.0, 1.0), (1.0, f64::NAN), (2.0, -3.0), (3.0, 0.5)];
    curves_png(&p, "t", &[("a", &pts)], true).unwrap();
    let e = curves_png(&p, "t", &[("a", &[(0.0, -1.0), (1.0, 0.0)])], true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("x.png") && e.contains("log y"), "{e}");
    assert!(curves_png(&p, "t", &[], false).is_err());
    assert!(curves_png_sized(&p, "t", &[("a", &pts)], false, (10, 10)).is_err());
    // A single point still plots (degenerate ranges are padded).
    curves_png(&p, "t", &[("a", &[(5.0, 2.0)])], false).unwrap();
}

#[test]
fn spectrogram_pairs_are_pngs_and_show_the_difference() {
    let d = tempfile::tempdir().unwrap();
    let sr = 16_000;
    let orig = tone(sr, 1.0, 500.0);
    let same = d.path().join("same.png");
    spectrogram_compare_png(&same, &orig, &orig, sr, "val clip 0").unwrap();
    let (w, h, ps) = read_png(&same);
    assert_eq!((w, h), DEFAULT_SIZE);
    let row = (w * 3) as usize;
    assert!(
        ps[..(h as usize / 2) * row].iter().any(|&v| v < 100),
        "the panel is drawn"
    );

    let other = d.path().join("other.png");
    spectrogram_compare_png(&other, &orig, &tone(sr, 1.0, 3000.0), sr, "val clip 0").unwrap();
    let (_, _, po) = read_png(&other);
    let lower_a = &ps[(h as usize / 2 + 20) * row..];
    let lower_b = &po[(h as usize / 2 + 20) * row..];
    assert!(
        differing_pixels(lower_a, lower_b) > 1000,
        "decoded panel follows its input"
    );
    let upper_a = &ps[..(h as usize / 2 - 20) * row];
    let upper_b = &po[..(h as usize / 2 - 20) * row];
    // The original panel only changes where the shared colour scale moves (not at all here:
    // both tones peak at the same level).
    assert!(differing_pixels(upper_a, upper_b) < differing_pixels(lower_a, lower_b) / 10);

    let quiet: Vec<f32> = orig.iter().map(|v| v * 0.01).collect();
    let q = d.path().join("quiet.png");
    spectrogram_compare_png_sized(&q, &orig, &quiet, sr, "quiet", (800, 600)).unwrap();
    let (w2, h2, _) = read_png(&q);
    assert_eq!((w2, h2), (800, 600));
}

#[test]
fn spectrogram_rejects_bad_audio_naming_the_file() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("s.png");
    let ok = tone(16_000, 0.2, 440.0);
    let e = spectrogram_compare_png(&p, &ok, &[], 16_000, "t")
        .unwrap_err()
        .to_string();
    assert!(e.contains("s.png") && e.contains("decoded"), "{e}");
    let e = spectrogram_compare_png(&p, &[f32::NAN], &ok, 16_000, "t")
        .unwrap_err()
        .to_string();
    assert!(e.contains("original sample 0"), "{e}");
    assert!(spectrogram_compare_png(&p, &ok, &ok, 0, "t").is_err());
    assert!(!p.exists());
}
