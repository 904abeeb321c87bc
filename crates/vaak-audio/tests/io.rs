//! Decoding against libsndfile's reference decodes, header probing, WAV writing, and the typed
//! errors for bad input. Fixtures: `tools/fixtures/audio_io.py`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use vaak_audio::io::{decode_bytes, decode_file, probe_info, write_wav, WavFormat};
use vaak_audio::resample::resample;
use vaak_audio::AudioError;

const DATA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tools/fixtures/data/audio_io"
);

/// WAV and FLAC must match libsndfile's float decode to float precision.
const LOSSLESS_TOL: f32 = 1e-6;
/// MP3/Vorbis decoders differ in their synthesis arithmetic; after aligning by the best lag the
/// two decodes must agree to this SNR (dB); measured: MP3 127 dB, Vorbis 135 dB.
const LOSSY_MIN_SNR_DB: f64 = 80.0;
/// Lags searched when aligning a lossy decode with the reference (decoder delay differences).
const MAX_LAG: i64 = 2000;

const LOSSLESS: [&str; 4] = [
    "pcm16_16k_stereo.wav",
    "pcm24_22k.wav",
    "float32_16k.wav",
    "flac_16k_stereo.flac",
];
const LOSSY: [&str; 2] = ["mp3_22k.mp3", "vorbis_16k.ogg"];

fn fixture(name: &str) -> PathBuf {
    Path::new(DATA).join(name)
}

fn reference(name: &str) -> Vec<f32> {
    let bytes = std::fs::read(fixture("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::F32);
    t.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[derive(Debug)]
struct Meta {
    sample_rate: u32,
    channels: u16,
    frames: u64,
}

fn meta() -> HashMap<String, Meta> {
    let text = std::fs::read_to_string(fixture("reference.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v.as_object()
        .unwrap()
        .iter()
        .map(|(k, m)| {
            (
                k.clone(),
                Meta {
                    sample_rate: m["sample_rate"].as_u64().unwrap() as u32,
                    channels: m["channels"].as_u64().unwrap() as u16,
                    frames: m["frames"].as_u64().unwrap(),
                },
            )
        })
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// SNR (dB) of `test` against `reference` over their overlap when `test[i + lag]` is aligned
/// with `reference[i]`.
fn snr_at_lag(reference: &[f32], test: &[f32], lag: i64) -> f64 {
    let (mut sig, mut err) = (0.0f64, 0.0f64);
    for (i, &r) in reference.iter().enumerate() {
        let j = i as i64 + lag;
        if j < 0 || j >= test.len() as i64 {
            continue;
        }
        let t = test[j as usize];
        sig += f64::from(r) * f64::from(r);
        err += f64::from(r - t) * f64::from(r - t);
    }
    10.0 * (sig / err.max(1e-30)).log10()
}

fn best_lag(reference: &[f32], test: &[f32]) -> (i64, f64) {
    (-MAX_LAG..=MAX_LAG)
        .map(|lag| (lag, snr_at_lag(reference, test, lag)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap()
}

/// The error of a decode that must fail (without printing the samples if it did not).
fn decode_err(p: &Path) -> AudioError {
    match decode_file(p, None) {
        Ok(a) => panic!(
            "{}: decoded {} frames, expected an error",
            p.display(),
            a.samples.len()
        ),
        Err(e) => e,
    }
}

fn assert_names(err: &AudioError, path: &Path) {
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "error does not name {}: {msg}",
        path.display()
    );
}

#[test]
fn lossless_decodes_match_libsndfile() {
    let meta = meta();
    for name in LOSSLESS {
        let audio = decode_file(fixture(name), None).unwrap();
        let want = reference(name);
        assert_eq!(audio.sample_rate, meta[name].sample_rate, "{name}");
        assert_eq!(audio.samples.len() as u64, meta[name].frames, "{name}");
        let err = max_abs_diff(&audio.samples, &want);
        eprintln!("{name}: max abs diff vs libsndfile {err:e}");
        assert!(err <= LOSSLESS_TOL, "{name}: {err}");
    }
}

#[test]
fn lossy_decodes_match_libsndfile_after_alignment() {
    let meta = meta();
    for name in LOSSY {
        let audio = decode_file(fixture(name), None).unwrap();
        assert_eq!(audio.sample_rate, meta[name].sample_rate, "{name}");
        let want = reference(name);
        let (lag, snr) = best_lag(&want, &audio.samples);
        eprintln!(
            "{name}: {} frames (libsndfile {}), best lag {lag}, SNR {snr:.1} dB",
            audio.samples.len(),
            want.len()
        );
        assert!(
            snr > LOSSY_MIN_SNR_DB,
            "{name}: SNR {snr:.1} dB at lag {lag}"
        );
        // Gapless trimming: the encoder delay is removed, so the two decodes line up exactly
        // and have the length of the encoded signal.
        assert_eq!(lag, 0, "{name}");
        assert_eq!(audio.samples.len() as u64, meta[name].frames, "{name}");
        // And the decode is close to what was encoded.
        let source = reference(&format!("{name}.source"));
        let snr_src = snr_at_lag(&source, &audio.samples, 0);
        eprintln!("{name}: SNR vs encoded source {snr_src:.1} dB");
        assert!(snr_src > 10.0, "{name}: {snr_src:.1} dB vs source");
    }
}

#[test]
fn decode_bytes_equals_decode_file() {
    for name in LOSSLESS.iter().chain(LOSSY.iter()) {
        let path = fixture(name);
        let from_file = decode_file(&path, None).unwrap();
        // No extension hint: the content alone decides.
        let from_bytes = decode_bytes(std::fs::read(&path).unwrap(), None, &path, None).unwrap();
        assert_eq!(from_file, from_bytes, "{name}");
    }
}

#[test]
fn target_rate_resamples_the_decode() {
    let path = fixture("pcm16_16k_stereo.wav");
    let native = decode_file(&path, None).unwrap();
    let at24 = decode_file(&path, Some(24000)).unwrap();
    assert_eq!(at24.sample_rate, 24000);
    assert_eq!(at24.samples.len(), native.samples.len() * 3 / 2);
    assert_eq!(
        at24.samples,
        resample(&native.samples, native.sample_rate, 24000).unwrap()
    );
    // Same rate: no resampling at all.
    assert_eq!(decode_file(&path, Some(16000)).unwrap(), native);
    assert!(matches!(
        decode_file(&path, Some(0)),
        Err(AudioError::InvalidArgument(_))
    ));
}

#[test]
fn probe_info_reads_headers() {
    let meta = meta();
    let codecs = [
        ("pcm16_16k_stereo.wav", "pcm_s16le"),
        ("pcm24_22k.wav", "pcm_s24le"),
        ("float32_16k.wav", "pcm_f32le"),
        ("flac_16k_stereo.flac", "flac"),
        ("mp3_22k.mp3", "mp3"),
        ("vorbis_16k.ogg", "vorbis"),
    ];
    for (name, codec) in codecs {
        let info = probe_info(fixture(name)).unwrap();
        let m = &meta[name];
        assert_eq!(info.sample_rate, m.sample_rate, "{name}");
        assert_eq!(info.channels, m.channels, "{name}");
        assert_eq!(info.n_frames, Some(m.frames), "{name}");
        let d = info.duration_s.unwrap();
        assert!((d - m.frames as f64 / m.sample_rate as f64).abs() < 1e-12);
        assert_eq!(info.codec, codec, "{name}");
    }
}

#[test]
fn probe_info_counts_untagged_mp3_frames_without_decoding() {
    // Strip the Xing/Info frame (the first MPEG frame) so no header carries the length; the
    // count then comes from the frame headers. Without the LAME tag there is no gapless trim, so
    // the length is every MPEG frame times 576 samples (MPEG-2 layer III at 22.05 kHz).
    let bytes = std::fs::read(fixture("mp3_22k.mp3")).unwrap();
    let first = find_mpeg_sync(&bytes, 0).unwrap();
    let second = first + mpeg_frame_len(&bytes[first..]);
    let mut untagged = bytes[..first].to_vec();
    untagged.extend_from_slice(&bytes[second..]);
    let n_mpeg_frames = count_mpeg_frames(&untagged[first..]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("untagged.mp3");
    std::fs::write(&path, &untagged).unwrap();
    let info = probe_info(&path).unwrap();
    assert_eq!(info.n_frames, Some(n_mpeg_frames * 576));
    // A full decode agrees with the count.
    let audio = decode_file(&path, None).unwrap();
    assert_eq!(audio.samples.len() as u64, n_mpeg_frames * 576);
}

fn find_mpeg_sync(b: &[u8], from: usize) -> Option<usize> {
    (from..b.len().saturating_sub(1)).find(|&i| b[i] == 0xFF && (b[i + 1] & 0xE0) == 0xE0)
}

/// Byte length of the MPEG-2 layer III (22.05 kHz) frame whose header starts `b`.
fn mpeg_frame_len(b: &[u8]) -> usize {
    const BITRATES_V2_L3: [u32; 16] = [
        0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160, 0,
    ];
    assert!(b[0] == 0xFF && (b[1] & 0xE0) == 0xE0, "not at an MPEG sync");
    let bitrate = BITRATES_V2_L3[(b[2] >> 4) as usize] * 1000;
    let padding = ((b[2] >> 1) & 1) as usize;
    let len = (72 * bitrate / 22050) as usize + padding;
    assert!(len > 4, "unexpected bitrate index");
    len
}

/// Counts MPEG frames by walking their headers.
fn count_mpeg_frames(b: &[u8]) -> u64 {
    let mut pos = 0;
    let mut n = 0;
    while pos + 4 <= b.len() && b[pos] == 0xFF && (b[pos + 1] & 0xE0) == 0xE0 {
        pos += mpeg_frame_len(&b[pos..]);
        n += 1;
    }
    n
}

#[test]
fn wav_pcm8_and_pcm32_scale_like_libsndfile() {
    let dir = tempfile::tempdir().unwrap();
    for bits in [8u16, 32] {
        let path = dir.path().join(format!("pcm{bits}.wav"));
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 8000,
            bits_per_sample: bits,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&path, spec).unwrap();
        let full = 1i64 << (bits - 1);
        let values: Vec<i64> = vec![0, 1, -1, full - 1, -full, full / 2, -full / 3];
        for &v in &values {
            if bits == 8 {
                w.write_sample(v as i8).unwrap();
            } else {
                w.write_sample(v as i32).unwrap();
            }
        }
        w.finalize().unwrap();
        let audio = decode_file(&path, None).unwrap();
        let want: Vec<f32> = values
            .iter()
            .map(|&v| (v as f64 / full as f64) as f32)
            .collect();
        assert_eq!(audio.samples, want, "{bits}-bit");
    }
}

#[test]
fn write_wav_pcm16_round_trips_and_clips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.wav");
    let x: Vec<f32> = (0..1000)
        .map(|i| 0.9 * (i as f32 * 0.05).sin())
        .chain([1.0, 1.5, -1.0, -1.5, 0.0])
        .collect();
    write_wav(&path, &x, 16000, WavFormat::Pcm16).unwrap();
    let back = decode_file(&path, None).unwrap();
    assert_eq!(back.sample_rate, 16000);
    assert_eq!(back.samples.len(), x.len());
    let n = 1000;
    let err = max_abs_diff(&back.samples[..n], &x[..n]);
    assert!(err <= 0.5 / 32768.0 + 1e-9, "{err}");
    let max = 32767.0 / 32768.0;
    assert_eq!(&back.samples[n..], &[max, max, -1.0, -1.0, 0.0]);
    let spec = hound::WavReader::open(&path).unwrap().spec();
    assert_eq!(spec.bits_per_sample, 16);
    assert_eq!(spec.channels, 1);
    assert_no_temp_files(dir.path());
}

#[test]
fn write_wav_float32_is_exact_and_replaces_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.wav");
    std::fs::write(&path, b"old content").unwrap();
    let x: Vec<f32> = (0..777).map(|i| (i as f32 * 0.3).cos() * 1.7).collect();
    write_wav(&path, &x, 22050, WavFormat::Float32).unwrap();
    let back = decode_file(&path, None).unwrap();
    assert_eq!(back.samples, x);
    assert_eq!(back.sample_rate, 22050);
    assert_no_temp_files(dir.path());
}

#[test]
fn write_wav_rejects_bad_input_without_touching_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keep.wav");
    std::fs::write(&path, b"keep me").unwrap();
    let e = write_wav(&path, &[0.0, f32::NAN], 16000, WavFormat::Float32).unwrap_err();
    assert!(matches!(e, AudioError::InvalidArgument(_)), "{e}");
    assert_names(&e, &path);
    let e = write_wav(&path, &[0.0], 0, WavFormat::Pcm16).unwrap_err();
    assert!(matches!(e, AudioError::InvalidArgument(_)), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), b"keep me");

    // An unwritable destination: its directory does not exist.
    let missing = dir.path().join("no_such_dir").join("x.wav");
    let e = write_wav(&missing, &[0.0], 16000, WavFormat::Pcm16).unwrap_err();
    assert!(matches!(e, AudioError::Write { .. }), "{e}");
    assert_names(&e, &missing);
    // The destination is a directory: the rename fails, the temp file is cleaned up.
    let as_dir = dir.path().join("a_dir.wav");
    std::fs::create_dir(&as_dir).unwrap();
    std::fs::write(as_dir.join("inner"), b"x").unwrap();
    let e = write_wav(&as_dir, &[0.0], 16000, WavFormat::Pcm16).unwrap_err();
    assert!(matches!(e, AudioError::Write { .. }), "{e}");
    assert_no_temp_files(dir.path());
}

fn assert_no_temp_files(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().to_string();
        assert!(!name.contains(".tmp-"), "temp file left behind: {name}");
    }
}

// ---------------------------------------------------------------------------------------------
// Bad input: typed errors naming the file, never a panic.
// ---------------------------------------------------------------------------------------------

fn write_temp(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn empty_file_is_empty_error() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["empty.wav", "empty.mp3", "empty"] {
        let p = write_temp(dir.path(), name, b"");
        let e = decode_err(&p);
        assert!(matches!(e, AudioError::Empty { .. }), "{e}");
        assert_names(&e, &p);
        let e = probe_info(&p).unwrap_err();
        assert!(matches!(e, AudioError::Empty { .. }), "{e}");
        assert_names(&e, &p);
    }
}

#[test]
fn wav_with_no_samples_is_empty_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("zero.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    hound::WavWriter::create(&p, spec)
        .unwrap()
        .finalize()
        .unwrap();
    let e = decode_err(&p);
    assert!(matches!(e, AudioError::Empty { .. }), "{e}");
    assert_names(&e, &p);
    // The header is valid, so probing works and reports zero frames.
    assert_eq!(probe_info(&p).unwrap().n_frames, Some(0));
}

#[test]
fn text_file_is_unsupported() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["notes.txt", "fake.wav", "fake.mp3", "fake.flac", "fake.ogg"] {
        let p = write_temp(
            dir.path(),
            name,
            b"This is not audio.\nJust a few lines of text,\nrepeated. 0123456789\n",
        );
        let e = decode_err(&p);
        assert!(matches!(e, AudioError::Unsupported { .. }), "{name}: {e}");
        assert_names(&e, &p);
        let e = probe_info(&p).unwrap_err();
        assert!(matches!(e, AudioError::Unsupported { .. }), "{name}: {e}");
    }
}

#[test]
fn unreadable_paths_are_open_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.wav");
    for p in [dir.path().to_path_buf(), missing] {
        let e = decode_err(&p);
        assert!(matches!(e, AudioError::Open { .. }), "{e}");
        assert_names(&e, &p);
        let e = probe_info(&p).unwrap_err();
        assert!(matches!(e, AudioError::Open { .. }), "{e}");
        assert_names(&e, &p);
    }
}

/// Length of everything before the audio payload, so that damage lands after a valid header.
fn header_len(name: &str, bytes: &[u8]) -> usize {
    match name.rsplit('.').next().unwrap() {
        "wav" => bytes.windows(4).position(|w| w == b"data").unwrap() + 8,
        // STREAMINFO and the other metadata blocks.
        "flac" => {
            let mut pos = 4;
            loop {
                let last = bytes[pos] & 0x80 != 0;
                let len = u32::from_be_bytes([0, bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]]);
                pos += 4 + len as usize;
                if last {
                    break pos;
                }
            }
        }
        // The first MPEG frame (the Xing/LAME frame).
        "mp3" => {
            let first = find_mpeg_sync(bytes, 0).unwrap();
            first + mpeg_frame_len(&bytes[first..])
        }
        // The three Vorbis header packets span the first two Ogg pages.
        "ogg" => {
            let second = bytes[4..].windows(4).position(|w| w == b"OggS").unwrap() + 4;
            bytes[second + 4..]
                .windows(4)
                .position(|w| w == b"OggS")
                .unwrap()
                + second
                + 4
        }
        other => panic!("unknown extension {other}"),
    }
}

#[test]
fn truncated_files_are_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    for name in LOSSLESS.iter().chain(LOSSY.iter()) {
        let bytes = std::fs::read(fixture(name)).unwrap();
        let head = header_len(name, &bytes);
        // Cuts in the payload, including a few bytes short of the end (not just 1: a WAV whose
        // data has odd length ends in a pad byte that holds no audio).
        let cuts = [
            head + (bytes.len() - head) / 3,
            head + (bytes.len() - head) * 2 / 3,
            bytes.len() - 7,
            bytes.len() - 3,
        ];
        for cut in cuts {
            let p = write_temp(dir.path(), &format!("cut{cut}_{name}"), &bytes[..cut]);
            let e = decode_err(&p);
            assert!(
                matches!(e, AudioError::Corrupt { .. }),
                "{name} cut at {cut}/{}: {e}",
                bytes.len()
            );
            assert_names(&e, &p);
        }
        // Cut inside the header: still a typed error naming the file.
        for cut in [1, 4, 12, head / 2, head - 1] {
            let p = write_temp(dir.path(), &format!("head{cut}_{name}"), &bytes[..cut]);
            let e = decode_err(&p);
            assert!(
                matches!(
                    e,
                    AudioError::Corrupt { .. }
                        | AudioError::Unsupported { .. }
                        | AudioError::Empty { .. }
                ),
                "{name} header cut at {cut}: {e}"
            );
            assert_names(&e, &p);
        }
    }
}

#[test]
fn garbage_after_a_valid_header_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    // Deterministic garbage without 0xFF bytes, so no MPEG sync can appear in it.
    let garbage: Vec<u8> = (0..4000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 % 0xF0)
        .collect();
    // WAV payload bytes are valid samples whatever they are, so a WAV is only corrupt when its
    // structure is: a header that declares more data than the garbage provides.
    for name in [
        "flac_16k_stereo.flac",
        "mp3_22k.mp3",
        "vorbis_16k.ogg",
        "pcm24_22k.wav",
    ] {
        let bytes = std::fs::read(fixture(name)).unwrap();
        let head = header_len(name, &bytes);
        let mut damaged = bytes[..head].to_vec();
        damaged.extend_from_slice(&garbage);
        let p = write_temp(dir.path(), &format!("garbage_{name}"), &damaged);
        let e = decode_err(&p);
        assert!(matches!(e, AudioError::Corrupt { .. }), "{name}: {e}");
        assert_names(&e, &p);
    }
    // A float WAV whose payload holds NaN/inf bit patterns.
    let bytes = std::fs::read(fixture("float32_16k.wav")).unwrap();
    let head = header_len("float32_16k.wav", &bytes);
    let mut damaged = bytes.clone();
    damaged[head + 40..head + 44].copy_from_slice(&f32::NAN.to_le_bytes());
    let p = write_temp(dir.path(), "nan.wav", &damaged);
    let e = decode_err(&p);
    assert!(matches!(e, AudioError::Corrupt { .. }), "{e}");
    assert_names(&e, &p);
    // A RIFF/WAVE magic followed by garbage chunks.
    let mut riff = b"RIFF\x00\x10\x00\x00WAVE".to_vec();
    riff.extend_from_slice(&garbage);
    let p = write_temp(dir.path(), "riff_garbage.wav", &riff);
    let e = decode_err(&p);
    assert!(
        matches!(
            e,
            AudioError::Corrupt { .. } | AudioError::Unsupported { .. }
        ),
        "{e}"
    );
    assert_names(&e, &p);
}
