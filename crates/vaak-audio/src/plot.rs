//! PNG plots for training runs: loss curves ([`curves_png`]) and an original-vs-decoded
//! spectrogram pair ([`spectrogram_compare_png`]).
//!
//! Drawing is plotters' (bitmap backend into an RGB buffer); the PNG is encoded here (zlib via
//! `flate2`) and written atomically (temporary file, sync, rename), so a reader never sees half a
//! plot. Text uses DejaVu Sans, embedded in the binary (`assets/fonts/`, Bitstream Vera /
//! DejaVu licence, see `LICENSE-DejaVu.txt` there), registered with plotters' `ab_glyph` font
//! table, so plots look the same on machines without any system font.
//!
//! The spectrogram is a log-power STFT (Hann window of about 32 ms, hop of a quarter window),
//! shown in dB on one colour scale for both panels: from the loudest bin of either signal down
//! [`SPECTROGRAM_RANGE_DB`], so a decoded signal that lost energy looks darker, not
//! renormalised.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{AudioError, Result};

/// Size of [`curves_png`] and [`spectrogram_compare_png`] images, in pixels.
pub const DEFAULT_SIZE: (u32, u32) = (1200, 700);
/// Dynamic range of the spectrogram colour scale, in dB below the loudest bin.
pub const SPECTROGRAM_RANGE_DB: f32 = 80.0;

const FONT_FAMILY: &str = "sans-serif";
static FONT_BYTES: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
static FONT_INIT: Once = Once::new();

/// Line colours, cycled (colour-blind-safe Okabe-Ito order).
const PALETTE: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
];

fn register_font() {
    FONT_INIT.call_once(|| {
        // A failure can only mean corrupt embedded bytes; drawing text then fails with plotters'
        // "font unavailable", which reaches the caller as a write error naming the file.
        let _ = plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, FONT_BYTES);
    });
}

fn draw_err(path: &Path, e: impl std::fmt::Display) -> AudioError {
    AudioError::Write {
        path: path.to_path_buf(),
        reason: format!("drawing failed: {e}"),
    }
}

fn check_size(path: &Path, (w, h): (u32, u32)) -> Result<()> {
    if !(200..=8192).contains(&w) || !(150..=8192).contains(&h) {
        return Err(AudioError::InvalidArgument(format!(
            "{}: image size {w}x{h} is outside 200..=8192 x 150..=8192",
            path.display()
        )));
    }
    Ok(())
}

/// Training curves: one line per named series of `(step, value)` points, with axes, ticks,
/// labels and a legend; `log_y` puts the values on a log10 axis. Non-finite points (and, with
/// `log_y`, values <= 0) are left out; a series with none left is still listed in the legend.
/// Errors if no series has a point to draw.
pub fn curves_png(
    path: impl AsRef<Path>,
    title: &str,
    series: &[(&str, &[(f64, f64)])],
    log_y: bool,
) -> Result<()> {
    curves_png_sized(path, title, series, log_y, DEFAULT_SIZE)
}

/// [`curves_png`] at `size` (width, height) pixels.
pub fn curves_png_sized(
    path: impl AsRef<Path>,
    title: &str,
    series: &[(&str, &[(f64, f64)])],
    log_y: bool,
    size: (u32, u32),
) -> Result<()> {
    let path = path.as_ref();
    check_size(path, size)?;
    let keep = |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite() && (!log_y || y > 0.0);
    let ty = |y: f64| if log_y { y.log10() } else { y };
    let pts: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|(_, s)| {
            s.iter()
                .filter(|p| keep(p))
                .map(|&(x, y)| (x, ty(y)))
                .collect()
        })
        .collect();
    let all = pts.iter().flatten();
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return Err(AudioError::InvalidArgument(format!(
            "{}: no finite point to plot{} in {} series",
            path.display(),
            if log_y {
                " (log y needs values > 0)"
            } else {
                ""
            },
            series.len()
        )));
    }
    let pad = |a: f64, b: f64| {
        let span = (b - a).abs().max(1e-9 * a.abs().max(1.0));
        if b > a {
            (a - 0.03 * span, b + 0.03 * span)
        } else {
            (a - 0.5 * span.max(1.0), b + 0.5 * span.max(1.0))
        }
    };
    let (x0, x1) = if x1 > x0 { (x0, x1) } else { pad(x0, x1) };
    let (y0, y1) = pad(y0, y1);

    register_font();
    let (w, h) = size;
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| draw_err(path, e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT_FAMILY, 26))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(84)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| draw_err(path, e))?;
        let y_fmt = |v: &f64| {
            if log_y {
                format!("{:.2e}", 10f64.powf(*v))
            } else {
                format!("{v:.4}")
            }
        };
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc(if log_y { "value (log scale)" } else { "value" })
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&y_fmt)
            .label_style((FONT_FAMILY, 15))
            .axis_desc_style((FONT_FAMILY, 17))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(|e| draw_err(path, e))?;
        for (i, ((name, _), p)) in series.iter().zip(&pts).enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let style = ShapeStyle::from(&color).stroke_width(2);
            chart
                .draw_series(LineSeries::new(p.iter().copied(), style))
                .map_err(|e| draw_err(path, e))?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT_FAMILY, 16))
            .draw()
            .map_err(|e| draw_err(path, e))?;
        root.present().map_err(|e| draw_err(path, e))?;
    }
    write_png(path, &buf, size)
}

/// Log-power STFT in dB, `[frames][bins]`, with the window length it used.
pub fn log_spectrogram(samples: &[f32], sample_rate: u32) -> (Vec<Vec<f32>>, usize) {
    let n_fft = ((sample_rate as f64 * 0.032) as usize)
        .next_power_of_two()
        .max(64);
    let hop = n_fft / 4;
    let window: Vec<f32> = (0..n_fft)
        .map(|i| {
            let t = i as f32 / n_fft as f32;
            0.5 - 0.5 * (2.0 * std::f32::consts::PI * t).cos()
        })
        .collect();
    let mut planner = realfft::RealFftPlanner::<f32>::new();
    let fft = planner.plan_fft_forward(n_fft);
    let mut input = fft.make_input_vec();
    let mut out = fft.make_output_vec();
    let frames = if samples.len() <= n_fft {
        1
    } else {
        1 + (samples.len() - n_fft).div_ceil(hop)
    };
    let mut spec = Vec::with_capacity(frames);
    for f in 0..frames {
        let start = f * hop;
        for (k, v) in input.iter_mut().enumerate() {
            *v = samples.get(start + k).copied().unwrap_or(0.0) * window[k];
        }
        // Lengths match the plan by construction.
        let _ = fft.process(&mut input, &mut out);
        spec.push(
            out.iter()
                .map(|c| 10.0 * (c.norm_sqr() + 1e-12).log10())
                .collect(),
        );
    }
    (spec, n_fft)
}

/// Magma-like colour map: `t` in 0..=1, dark to bright.
fn colormap(t: f32) -> RGBColor {
    const STOPS: [(f32, [f32; 3]); 6] = [
        (0.0, [0.0, 0.0, 4.0]),
        (0.2, [59.0, 15.0, 112.0]),
        (0.4, [140.0, 41.0, 129.0]),
        (0.6, [222.0, 73.0, 104.0]),
        (0.8, [254.0, 159.0, 109.0]),
        (1.0, [252.0, 253.0, 191.0]),
    ];
    let t = t.clamp(0.0, 1.0);
    let i = STOPS
        .iter()
        .rposition(|s| s.0 <= t)
        .unwrap_or(0)
        .min(STOPS.len() - 2);
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let u = (t - a.0) / (b.0 - a.0);
    let c = |k: usize| (a.1[k] + u * (b.1[k] - a.1[k])).round() as u8;
    RGBColor(c(0), c(1), c(2))
}

/// Two stacked log-STFT spectrograms (original above, decoded below) on one colour scale, with
/// time and frequency axes. Errors on empty or non-finite input.
pub fn spectrogram_compare_png(
    path: impl AsRef<Path>,
    original: &[f32],
    decoded: &[f32],
    sample_rate: u32,
    title: &str,
) -> Result<()> {
    spectrogram_compare_png_sized(path, original, decoded, sample_rate, title, DEFAULT_SIZE)
}

/// [`spectrogram_compare_png`] at `size` (width, height) pixels.
pub fn spectrogram_compare_png_sized(
    path: impl AsRef<Path>,
    original: &[f32],
    decoded: &[f32],
    sample_rate: u32,
    title: &str,
    size: (u32, u32),
) -> Result<()> {
    let path = path.as_ref();
    check_size(path, size)?;
    if sample_rate == 0 {
        return Err(AudioError::InvalidArgument(format!(
            "{}: sample rate must be > 0",
            path.display()
        )));
    }
    for (name, s) in [("original", original), ("decoded", decoded)] {
        if s.is_empty() {
            return Err(AudioError::InvalidArgument(format!(
                "{}: {name} audio is empty",
                path.display()
            )));
        }
        if let Some(i) = s.iter().position(|v| !v.is_finite()) {
            return Err(AudioError::InvalidArgument(format!(
                "{}: {name} sample {i} is not finite",
                path.display()
            )));
        }
    }
    let (so, n_fft) = log_spectrogram(original, sample_rate);
    let (sd, _) = log_spectrogram(decoded, sample_rate);
    let top = so
        .iter()
        .chain(&sd)
        .flatten()
        .fold(f32::MIN, |m, &v| m.max(v));
    let floor = top - SPECTROGRAM_RANGE_DB;
    let hop_s = (n_fft / 4) as f64 / f64::from(sample_rate);
    let dur = (original.len().max(decoded.len()) as f64 / f64::from(sample_rate)).max(hop_s);
    let nyq_khz = f64::from(sample_rate) / 2000.0;

    register_font();
    let (w, h) = size;
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| draw_err(path, e))?;
        let titled = root
            .titled(
                &format!("{title}  (dB, {SPECTROGRAM_RANGE_DB:.0} dB range, shared scale)"),
                (FONT_FAMILY, 24),
            )
            .map_err(|e| draw_err(path, e))?;
        let panels = titled.split_evenly((2, 1));
        for (area, (spec, name)) in panels.iter().zip([(&so, "original"), (&sd, "decoded")]) {
            draw_spectrogram_panel(path, &root, area, spec, name, dur, hop_s, nyq_khz, floor)?;
        }
        root.present().map_err(|e| draw_err(path, e))?;
    }
    write_png(path, &buf, size)
}

#[allow(clippy::too_many_arguments)]
fn draw_spectrogram_panel<DB: DrawingBackend>(
    path: &Path,
    root: &DrawingArea<DB, Shift>,
    area: &DrawingArea<DB, Shift>,
    spec: &[Vec<f32>],
    name: &str,
    dur: f64,
    hop_s: f64,
    nyq_khz: f64,
    floor: f32,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let mut chart = ChartBuilder::on(area)
        .caption(name, (FONT_FAMILY, 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..dur, 0.0..nyq_khz)
        .map_err(|e| draw_err(path, e))?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("time (s)")
        .y_desc("frequency (kHz)")
        .x_label_formatter(&|v| format!("{v:.2}"))
        .y_label_formatter(&|v| format!("{v:.1}"))
        .label_style((FONT_FAMILY, 14))
        .axis_desc_style((FONT_FAMILY, 15))
        .draw()
        .map_err(|e| draw_err(path, e))?;
    let (xr, yr) = chart.plotting_area().get_pixel_range();
    let (pw, ph) = ((xr.end - xr.start).max(1), (yr.end - yr.start).max(1));
    let bins = spec.first().map_or(1, Vec::len);
    for px in xr.clone() {
        let t = (px - xr.start) as f64 / pw as f64 * dur;
        let frame = (t / hop_s) as usize;
        let col = spec.get(frame);
        for py in yr.clone() {
            let color = match col {
                Some(c) => {
                    // Row 0 of the image is the top, the highest frequency.
                    let f = 1.0 - (py - yr.start) as f64 / ph as f64;
                    let bin = ((f * (bins - 1) as f64).round() as usize).min(bins - 1);
                    colormap((c[bin] - floor) / SPECTROGRAM_RANGE_DB)
                }
                None => RGBColor(235, 235, 235), // past the end of the shorter signal
            };
            root.draw_pixel((px, py), &color)
                .map_err(|e| draw_err(path, e))?;
        }
    }
    Ok(())
}

/// CRC-32 (ISO-HDLC, as PNG chunks use).
fn crc32(parts: &[&[u8]]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for part in parts {
        for &byte in *part {
            c ^= u32::from(byte);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
    }
    !c
}

/// An 8-bit RGB PNG: signature, IHDR, one zlib IDAT (every row with filter 0), IEND. Written
/// here on the workspace's `flate2` rather than with an image crate, which would pull in a second
/// deflate configuration and rebuild candle's dependency tree.
fn encode_png(rgb: &[u8], w: u32, h: u32) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let mut raw = Vec::with_capacity(rgb.len() + h as usize);
    for row in rgb.chunks(w as usize * 3) {
        raw.push(0);
        raw.extend_from_slice(row);
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(6));
    z.write_all(&raw)?;
    let idat = z.finish()?;
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // depth 8, RGB, deflate, filter 0, no interlace
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in [
        (b"IHDR", &ihdr[..]),
        (b"IDAT", &idat[..]),
        (b"IEND", &[][..]),
    ] {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc32(&[kind, data]).to_be_bytes());
    }
    Ok(out)
}

/// Encodes an RGB8 buffer as PNG and writes it atomically.
fn write_png(path: &Path, rgb: &[u8], (w, h): (u32, u32)) -> Result<()> {
    let write_err = |reason: String| AudioError::Write {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = encode_png(rgb, w, h).map_err(|e| write_err(format!("PNG encoding: {e}")))?;
    let name = path
        .file_name()
        .ok_or_else(|| write_err("path has no file name".into()))?;
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let r = (|| {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(write_err(e.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_png_check_value() {
        // CRC-32 of "123456789" is the standard check value; IEND's CRC is fixed by the spec.
        assert_eq!(crc32(&[b"123456789"]), 0xcbf4_3926);
        assert_eq!(crc32(&[b"IEND"]), 0xae42_6082);
    }

    #[test]
    fn colormap_runs_dark_to_bright() {
        let lum = |c: RGBColor| u32::from(c.0) + u32::from(c.1) + u32::from(c.2);
        let mut last = 0;
        for i in 0..=20 {
            let l = lum(colormap(i as f32 / 20.0));
            assert!(l >= last, "step {i}");
            last = l;
        }
        assert_eq!(colormap(-1.0), colormap(0.0));
        assert_eq!(colormap(2.0), colormap(1.0));
    }

    #[test]
    fn spectrogram_of_a_tone_peaks_at_its_bin() {
        let sr = 16_000;
        let x: Vec<f32> = (0..sr)
            .map(|i| (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / sr as f32).sin())
            .collect();
        let (s, n_fft) = log_spectrogram(&x, sr);
        assert_eq!(n_fft, 512);
        let mid = &s[s.len() / 2];
        let peak = mid
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0;
        assert_eq!(peak, 1000 * n_fft / sr as usize);
    }
}
