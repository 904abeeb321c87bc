//! Writes a demo curves plot and spectrogram pair: `cargo run -p vaak-audio --example plot_demo -- OUT_DIR`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| ".".into()));
    let train: Vec<(f64, f64)> = (0..500)
        .map(|s| {
            (
                s as f64,
                5.0 * (-(s as f64) / 80.0).exp() + 0.2 + 0.05 * ((s as f64) * 0.7).sin(),
            )
        })
        .collect();
    let val: Vec<(f64, f64)> = (0..10)
        .map(|k| ((k * 50) as f64, 4.0 / (1.0 + k as f64) + 0.3))
        .collect();
    vaak_audio::plot::curves_png(
        out.join("curves.png"),
        "codec training",
        &[("train loss", &train), ("val loss", &val)],
        true,
    )?;
    let sr = 16_000;
    let orig: Vec<f32> = (0..sr * 2)
        .map(|i| {
            let t = i as f32 / sr as f32;
            0.4 * (2.0 * std::f32::consts::PI * (300.0 + 800.0 * t) * t).sin()
        })
        .collect();
    let dec: Vec<f32> = orig
        .iter()
        .enumerate()
        .map(|(i, v)| v * 0.7 + 0.01 * ((i * 7919 % 1000) as f32 / 500.0 - 1.0))
        .collect();
    vaak_audio::plot::spectrogram_compare_png(
        out.join("spec.png"),
        &orig,
        &dec,
        sr as u32,
        "val clip 0 (step 500)",
    )?;
    Ok(())
}
