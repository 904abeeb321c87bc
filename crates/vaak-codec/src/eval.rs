//! Codec quality evaluation: whole-clip encode + decode of one clip, scored against the input
//! with SNR, SI-SDR and a multi-resolution log-mel distance (all from `vaak_audio::metrics`),
//! timed for encode and decode real-time factors; and summary statistics over many clips.
//!
//! The reconstruction is compared on the first `min(input, output)` samples: a causal codec
//! emits `floor(T / hop)` frames and so drops the tail shorter than one frame, and EnCodec in
//! reference mode pads up to a whole frame.

use std::time::Instant;

use candle_core::{DType, Tensor};
use serde::Serialize;
use vaak_audio::metrics::{si_sdr_db, snr_db, MelDistance, MelDistanceConfig};

use crate::codec::Codec;
use crate::error::{CodecError, Result};

/// The scores and timings of one clip.
#[derive(Clone, Debug, Serialize)]
pub struct ClipEval {
    /// Input length in seconds (at the codec's sample rate).
    pub seconds: f64,
    /// Frames of codes.
    pub frames: usize,
    pub snr_db: f64,
    pub si_sdr_db: f64,
    /// Multi-resolution log-mel L1 distance (0 = identical).
    pub mel_distance: f64,
    /// Encode time over audio duration (< 1 is faster than real time).
    pub encode_rtf: f64,
    /// Decode time over audio duration.
    pub decode_rtf: f64,
    /// Distinct codes per codebook: a collapsed codebook shows up as 1.
    pub distinct_codes: Vec<usize>,
}

/// Mean, median, min and max of one metric over clips.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Stats {
    pub mean: f64,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Finite values summarised (an identical reconstruction has SNR `+inf` and is left out).
    pub count: usize,
}

impl Stats {
    /// Statistics of the finite values, or `None` when there are none.
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            0.5 * (v[n / 2 - 1] + v[n / 2])
        };
        Some(Self {
            mean: v.iter().sum::<f64>() / n as f64,
            median,
            min: v[0],
            max: v[n - 1],
            count: n,
        })
    }
}

/// Bits per second of the codes: `n_q * log2(codebook_size) * frame_rate`.
pub fn bitrate_bps(codec: &Codec) -> f64 {
    codec.num_codebooks() as f64 * (codec.codebook_size() as f64).log2() * codec.frame_rate()
}

/// Encodes and decodes clips with one codec and scores them.
#[derive(Debug)]
pub struct Evaluator {
    mel: MelDistance,
}

fn metric_err(e: vaak_audio::AudioError) -> CodecError {
    CodecError::BadInput {
        what: "codec eval metrics",
        expected: "finite, non-silent audio".into(),
        got: e.to_string(),
    }
}

impl Evaluator {
    /// Mel distance at the codec's sample rate with the default resolutions (512/1024/2048).
    pub fn new(codec: &Codec) -> Result<Self> {
        let mel = MelDistance::new(MelDistanceConfig {
            sample_rate: codec.sample_rate() as u32,
            ..MelDistanceConfig::default()
        })
        .map_err(metric_err)?;
        Ok(Self { mel })
    }

    /// Mono `samples` at the codec's rate: encode the whole clip, decode it, score it.
    pub fn clip(&self, codec: &Codec, samples: &[f32]) -> Result<ClipEval> {
        if samples.is_empty() {
            return Err(CodecError::BadInput {
                what: "codec eval clip",
                expected: "at least one sample".into(),
                got: "0 samples".into(),
            });
        }
        let seconds = samples.len() as f64 / codec.sample_rate() as f64;
        let x = Tensor::from_slice(samples, (1, 1, samples.len()), codec.device())?;
        let t = Instant::now();
        let codes = codec.encode(&x)?;
        let encode_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let y = codec.decode(&codes)?;
        let decode_s = t.elapsed().as_secs_f64();
        let y = y.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let n = samples.len().min(y.len());
        let (r, e) = (&samples[..n], &y[..n]);
        let codes = codes.squeeze(0)?.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        let distinct_codes = codes
            .iter()
            .map(|row| {
                let mut r = row.clone();
                r.sort_unstable();
                r.dedup();
                r.len()
            })
            .collect();
        Ok(ClipEval {
            seconds,
            frames: codes.first().map_or(0, |r| r.len()),
            snr_db: snr_db(r, e).map_err(metric_err)?,
            si_sdr_db: si_sdr_db(r, e).map_err(metric_err)?,
            mel_distance: self.mel.distance(r, e).map_err(metric_err)?,
            encode_rtf: encode_s / seconds,
            decode_rtf: decode_s / seconds,
            distinct_codes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_skip_non_finite_and_take_the_middle() {
        let s = Stats::of(&[3.0, f64::INFINITY, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!(s.count, 4);
        assert_eq!(s.median, 2.5);
        assert_eq!(s.mean, 4.0);
        assert_eq!((s.min, s.max), (1.0, 10.0));
        assert_eq!(Stats::of(&[f64::NAN]), None);
        assert_eq!(Stats::of(&[1.0, 5.0, 2.0]).unwrap().median, 2.0);
    }
}
