//! Analysis windows.
//!
//! "Periodic" windows have period `n` (the DFT-even form that `torch.hann_window(n)` and
//! `scipy.signal.get_window` return); "symmetric" ones have period `n - 1` (the filter-design
//! form `numpy.hanning(n)` returns). The values are computed in `f64` and rounded once.

use std::f64::consts::PI;

/// Denominator of the cosine argument: `n` for a periodic window, `n - 1` for a symmetric one.
/// A one-point symmetric window has no defined period; it is `[1.0]` like numpy's.
fn period(n: usize, periodic: bool) -> Option<f64> {
    if periodic {
        Some(n as f64)
    } else if n > 1 {
        Some((n - 1) as f64)
    } else {
        None
    }
}

/// Generalised cosine window `alpha - beta * cos(2 pi i / period)`.
fn raised_cosine(n: usize, periodic: bool, alpha: f64, beta: f64) -> Vec<f32> {
    match period(n, periodic) {
        Some(p) => (0..n)
            .map(|i| (alpha - beta * (2.0 * PI * i as f64 / p).cos()) as f32)
            .collect(),
        None => vec![1.0; n],
    }
}

/// Hann window of length `n`.
pub fn hann_window(n: usize, periodic: bool) -> Vec<f32> {
    raised_cosine(n, periodic, 0.5, 0.5)
}

/// Hamming window (0.54 - 0.46 cos) of length `n`.
pub fn hamming_window(n: usize, periodic: bool) -> Vec<f32> {
    raised_cosine(n, periodic, 0.54, 0.46)
}

/// Kaldi's "povey" window: a symmetric Hann window raised to the power 0.85.
pub fn povey_window(n: usize) -> Vec<f32> {
    match period(n, false) {
        Some(p) => (0..n)
            .map(|i| (0.5 - 0.5 * (2.0 * PI * i as f64 / p).cos()).powf(0.85) as f32)
            .collect(),
        None => vec![1.0; n],
    }
}

/// Symmetric Blackman window as Kaldi defines it:
/// `coeff - 0.5 cos(2 pi i/(n-1)) + (0.5 - coeff) cos(4 pi i/(n-1))` (`coeff` is 0.42 classically).
pub fn blackman_window(n: usize, coeff: f64) -> Vec<f32> {
    match period(n, false) {
        Some(p) => (0..n)
            .map(|i| {
                let a = 2.0 * PI * i as f64 / p;
                (coeff - 0.5 * a.cos() + (0.5 - coeff) * (2.0 * a).cos()) as f32
            })
            .collect(),
        None => vec![1.0; n],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_hann_is_symmetric_hann_of_n_plus_one_without_last() {
        let p = hann_window(8, true);
        let s = hann_window(9, false);
        for (a, b) in p.iter().zip(&s[..8]) {
            assert!((a - b).abs() < 1e-7);
        }
        assert_eq!(p[0], 0.0);
        assert!((p[4] - 1.0).abs() < 1e-7);
    }

    #[test]
    fn symmetric_windows_are_symmetric() {
        for w in [
            hann_window(11, false),
            hamming_window(11, false),
            povey_window(11),
            blackman_window(11, 0.42),
        ] {
            for i in 0..11 {
                assert!((w[i] - w[10 - i]).abs() < 1e-6);
            }
            assert!((w[5] - 1.0).abs() < 1e-6);
        }
        assert!((hamming_window(11, false)[0] - 0.08).abs() < 1e-6);
    }

    #[test]
    fn degenerate_lengths() {
        assert!(hann_window(0, true).is_empty());
        assert_eq!(hann_window(1, false), vec![1.0]);
        assert_eq!(povey_window(1), vec![1.0]);
    }
}
