//! Times candle's CPU `conv1d` / `conv_transpose1d` against vaak-nn's inference path on the
//! conv shapes of the models vaak runs (OpenVoice's HiFi-GAN for 2 s at 22.05 kHz, EnCodec
//! 24 kHz for 10 s, one Mimi frame), plus the leaky-ReLU, in milliseconds (median of 5).
//!
//! `RAYON_NUM_THREADS=1 cargo run --release -p vaak-nn --example conv_speed`

use std::time::Instant;

use candle_core::{Device, Result, Tensor};
use vaak_nn::conv::{
    conv1d_inference, conv_transpose1d_differentiable, conv_transpose1d_inference, leaky_relu,
    Conv1dOpts, ConvTranspose1dOpts,
};

fn ms(mut f: impl FnMut() -> Result<Tensor>) -> Result<f64> {
    f()?;
    let mut v = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed().as_secs_f64() * 1e3);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Ok(v[2])
}

fn main() -> Result<()> {
    let dev = Device::Cpu;
    println!(
        "threads: {}\n{:<44} {:>10} {:>10} {:>7}",
        candle_core::utils::get_num_threads(),
        "shape",
        "candle ms",
        "vaak ms",
        "ratio"
    );
    // (label, c_in, c_out, k, dilation, stride, padding, length)
    let convs = [
        ("hifigan s0 256ch k3 d1, 1376", 256, 256, 3, 1, 1, 1, 1376),
        (
            "hifigan s0 256ch k11 d5, 1376",
            256,
            256,
            11,
            5,
            1,
            25,
            1376,
        ),
        ("hifigan s1 128ch k7 d3, 11008", 128, 128, 7, 3, 1, 9, 11008),
        ("hifigan s3 32ch k3 d1, 44032", 32, 32, 3, 1, 1, 1, 44032),
        ("hifigan s3 32ch k11 d5, 44032", 32, 32, 11, 5, 1, 25, 44032),
        ("encodec 32ch k3 d1, 240000", 32, 16, 3, 1, 1, 2, 240000),
        (
            "encodec down 64->128 k8 s4, 60000",
            64,
            128,
            8,
            1,
            4,
            0,
            60000,
        ),
        ("mimi res 512ch k3, 1 frame (2)", 512, 256, 3, 1, 1, 0, 4),
    ];
    for (label, ci, co, k, d, s, p, l) in convs {
        let x = Tensor::randn(0f32, 1., (1, ci, l), &dev)?;
        let w = Tensor::randn(0f32, 0.1, (co, ci, k), &dev)?;
        let b = Tensor::randn(0f32, 0.1, co, &dev)?;
        let candle = ms(|| {
            x.conv1d(&w, p, s, d, 1)?
                .broadcast_add(&b.reshape((1, co, 1))?)
        })?;
        let vaak = ms(|| conv1d_inference(&x, &w, Some(&b), Conv1dOpts::new(p, s, d, 1), None))?;
        println!(
            "{label:<44} {candle:>10.2} {vaak:>10.2} {:>7.2}",
            candle / vaak
        );
    }
    // (label, c_in, c_out, k, stride, padding, frames)
    let trs = [
        ("hifigan up0 512->256 k16 s8, 172", 512, 256, 16, 8, 4, 172),
        ("hifigan up2 128->64 k4 s2, 11008", 128, 64, 4, 2, 1, 11008),
        (
            "encodec dec up 256->128 k16 s8, 1250",
            256,
            128,
            16,
            8,
            0,
            1250,
        ),
    ];
    for (label, ci, co, k, s, p, t) in trs {
        let x = Tensor::randn(0f32, 1., (1, ci, t), &dev)?;
        let w = Tensor::randn(0f32, 0.1, (ci, co, k), &dev)?;
        let b = Tensor::randn(0f32, 0.1, co, &dev)?;
        let before = ms(|| {
            conv_transpose1d_differentiable(&x, &w, s, p, 0, 1, 1)?
                .broadcast_add(&b.reshape((1, co, 1))?)
        })?;
        let opts = ConvTranspose1dOpts {
            stride: s,
            padding: p,
            output_padding: 0,
            dilation: 1,
            groups: 1,
        };
        let vaak = ms(|| conv_transpose1d_inference(&x, &w, Some(&b), opts, None))?;
        println!(
            "{:<44} {before:>10.2} {vaak:>10.2} {:>7.2}",
            format!("T {label} (was: differentiable)"),
            before / vaak
        );
    }
    let x = Tensor::randn(0f32, 1., (1, 32, 44032), &dev)?;
    let candle = ms(|| candle_nn::ops::leaky_relu(&x, 0.1))?;
    let vaak = ms(|| leaky_relu(&x, 0.1))?;
    println!(
        "{:<44} {candle:>10.2} {vaak:>10.2} {:>7.2}",
        "leaky_relu 32 x 44032",
        candle / vaak
    );
    Ok(())
}
