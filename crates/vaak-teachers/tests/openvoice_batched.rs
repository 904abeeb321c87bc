//! `ToneColorConverter::convert_batched` (padded batches with per-clip lengths) against
//! one-by-one `convert` on the tiny fixture converter: clips of different lengths, both
//! embedding modes, different taus and seeds, and a bad item in the middle.

use candle_core::Device;
use vaak_teachers::vc::{ConvertItem, ConverterOptions, ToneColorConverter};
use vaak_teachers::{AudioRef, TeacherError};

const DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tools/fixtures/data/openvoice"
);
const SR: u32 = 22050;
/// Batched vs one-by-one, relative to the waveform's peak.
const TOL: f32 = 1e-5;

fn clip(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let noise = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            0.3 * (i as f32 * 0.031 * (1.0 + seed as f32)).sin() + 0.1 * noise
        })
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn batched_conversion_equals_one_by_one() {
    let mut conv = ToneColorConverter::load(
        &format!("{DIR}/converter"),
        &ConverterOptions {
            device: Device::Cpu,
            ..Default::default()
        },
    )
    .unwrap();
    let lens = [9_000usize, 4_100, 22_050, 1_500, 13_000];
    let clips: Vec<Vec<f32>> = lens
        .iter()
        .enumerate()
        .map(|(i, &n)| clip(n, i as u64))
        .collect();
    let se_a = conv.tone_color(AudioRef::new(&clips[2], SR)).unwrap();
    let se_b = conv.tone_color(AudioRef::new(&clips[0], SR)).unwrap();
    let short = [0.1f32; 5];
    for zero_g in [true, false] {
        conv.set_zero_g(zero_g);
        let mut items: Vec<ConvertItem<'_>> = clips
            .iter()
            .enumerate()
            .map(|(i, c)| ConvertItem {
                src: AudioRef::new(c, SR),
                src_se: if i % 2 == 0 { &se_a } else { &se_b },
                tgt_se: if i % 2 == 0 { &se_b } else { &se_a },
                tau: 0.1 * (i + 1) as f32,
                seed: 10 + i as u64,
            })
            .collect();
        items.insert(
            2,
            ConvertItem {
                src: AudioRef::new(&short, SR),
                src_se: &se_a,
                tgt_se: &se_b,
                tau: 0.3,
                seed: 1,
            },
        );
        for max_batch in [2, 8] {
            let batched = conv.convert_batched(&items, max_batch);
            assert_eq!(batched.len(), items.len());
            for (i, (it, got)) in items.iter().zip(&batched).enumerate() {
                if i == 2 {
                    assert!(
                        matches!(got, Err(TeacherError::BadInput(m)) if m.starts_with("item 2")),
                        "{got:?}"
                    );
                    continue;
                }
                let want = conv
                    .convert(it.src, it.src_se, it.tgt_se, it.tau, it.seed)
                    .unwrap();
                let got = got.as_ref().unwrap();
                let peak = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
                let d = max_abs_diff(got, &want);
                assert!(
                    d <= TOL * peak.max(1.0),
                    "zero_g {zero_g}, max_batch {max_batch}, item {i}: diff {d} (peak {peak})"
                );
            }
        }
    }
}
