//! Sample-rate conversion with rubato's synchronous FFT resampler.
//!
//! [`resample`] converts a whole clip; [`StreamResampler`] converts a stream pushed in chunks of
//! any size. Both guarantee:
//!
//! - **Length.** A clip of `n` frames becomes `round(n * to_hz / from_hz)` frames (half rounds
//!   up). A stream's outputs, once [`StreamResampler::finish`] is called, add up to the same.
//! - **Aligned.** The filter delay is removed: an input event at time `t` seconds appears at time
//!   `t` in the output, not shifted. rubato puts the centre of its linear-phase filter at
//!   `fft_size_in / 2` input frames; the block sizes are chosen so that both FFT sizes are even,
//!   which makes that delay a whole number of output frames (`fft_size_out / 2`), dropped exactly.
//! - **Stream == clip.** [`resample`] is a [`StreamResampler`] fed in one push. The stream buffers
//!   its input and always hands rubato the same fixed blocks, so chunked outputs concatenated are
//!   bit-identical to the whole-clip output, whatever the chunk sizes.
//! - **Identity.** `from_hz == to_hz` copies the input unchanged.
//! - **Quality.** Each FFT block covers about [`DEFAULT_BLOCK_FRAMES`] input frames, with a
//!   Blackman-Harris anti-aliasing window; in the passband (below ~90 % of the lower Nyquist
//!   frequency) a sine keeps its frequency, amplitude and phase with an error below -60 dB.
//!
//! Latency of a stream: output for an input frame is available once its block is complete and
//! the filter's look-ahead (half a block) has arrived, i.e. up to 1.5 blocks.

use rubato::audioadapter_buffers::direct::SequentialSliceOfSlices;
use rubato::{Fft, FixedSync, Resampler, WindowFunction};

use crate::error::{AudioError, Result};

/// Target FFT block size, in input frames, for [`resample`] and [`StreamResampler::new`].
pub const DEFAULT_BLOCK_FRAMES: usize = 1024;

/// Upper bound on the output-side FFT block, in frames, when the input-side target allows it.
const MAX_BLOCK_OUT: usize = 1 << 18;

/// Resamples a whole mono clip from `from_hz` to `to_hz` (see the module doc for guarantees).
///
/// Errors with [`AudioError::Resample`] if either rate is 0.
pub fn resample(samples: &[f32], from_hz: u32, to_hz: u32) -> Result<Vec<f32>> {
    let mut stream = StreamResampler::new(from_hz, to_hz)?;
    let mut out = stream.push(samples)?;
    out.extend(stream.finish()?);
    Ok(out)
}

/// `round(n * to / from)`, half up, without overflow.
pub fn resampled_len(n: u64, from_hz: u32, to_hz: u32) -> u64 {
    if from_hz == 0 {
        return 0;
    }
    let num = u128::from(n) * u128::from(to_hz) * 2 + u128::from(from_hz);
    (num / (2 * u128::from(from_hz))) as u64
}

/// Chunked mono resampler whose concatenated outputs equal [`resample`] on the whole input.
///
/// Push any number of chunks of any size (empty ones too) with [`push`](Self::push), then call
/// [`finish`](Self::finish) to flush the tail; after that the resampler is reset and can take a
/// new stream.
pub struct StreamResampler {
    from_hz: u32,
    to_hz: u32,
    /// `None` when `from_hz == to_hz` (pass-through).
    inner: Option<Fft<f32>>,
    block_in: usize,
    delay_out: usize,
    fifo: Vec<f32>,
    out_buf: Vec<f32>,
    n_in: u64,
    n_out: u64,
    /// Output frames still to drop for the filter delay.
    to_skip: usize,
}

impl std::fmt::Debug for StreamResampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamResampler")
            .field("from_hz", &self.from_hz)
            .field("to_hz", &self.to_hz)
            .field("block_in", &self.block_in)
            .field("delay_out", &self.delay_out)
            .field("n_in", &self.n_in)
            .field("n_out", &self.n_out)
            .finish()
    }
}

impl StreamResampler {
    /// A stream resampler with the default block size ([`DEFAULT_BLOCK_FRAMES`]).
    pub fn new(from_hz: u32, to_hz: u32) -> Result<Self> {
        Self::with_block_frames(from_hz, to_hz, DEFAULT_BLOCK_FRAMES)
    }

    /// A stream resampler whose FFT block covers at least `block_frames` input frames.
    ///
    /// Smaller blocks mean less latency and a wider anti-aliasing transition band (lower
    /// quality). The block is rounded up to an even multiple of `from_hz / gcd(from_hz, to_hz)`
    /// so that the filter delay is a whole number of output frames. Only streams built with the
    /// same block size produce identical output.
    pub fn with_block_frames(from_hz: u32, to_hz: u32, block_frames: usize) -> Result<Self> {
        let err = |reason: String| AudioError::Resample {
            from_hz,
            to_hz,
            reason,
        };
        if from_hz == 0 || to_hz == 0 {
            return Err(err("sample rates must be > 0".into()));
        }
        if block_frames == 0 {
            return Err(err("block size must be > 0".into()));
        }
        let mut s = Self {
            from_hz,
            to_hz,
            inner: None,
            block_in: 0,
            delay_out: 0,
            fifo: Vec::new(),
            out_buf: Vec::new(),
            n_in: 0,
            n_out: 0,
            to_skip: 0,
        };
        if from_hz == to_hz {
            return Ok(s);
        }
        let g = gcd(from_hz as usize, to_hz as usize);
        let (min_in, min_out) = (from_hz as usize / g, to_hz as usize / g);
        // min_in and min_out are coprime, so at most one is even: an even number of minimal
        // blocks is the only way to make both FFT sizes even (see module doc).
        let mut chunks = block_frames.div_ceil(min_in).max(1);
        // Extreme up-sampling ratios (e.g. from a damaged header claiming 1 Hz) would otherwise
        // make the output-side FFT enormous.
        chunks = chunks.min((MAX_BLOCK_OUT / min_out).max(1));
        chunks += chunks % 2;
        let block_in = chunks * min_in;
        let fft = Fft::<f32>::new_custom(
            from_hz as usize,
            to_hz as usize,
            block_in,
            1,
            1,
            WindowFunction::BlackmanHarris2,
            FixedSync::Input,
        )
        .map_err(|e| err(e.to_string()))?;
        debug_assert_eq!(fft.fft_size_in(), block_in);
        debug_assert_eq!(fft.fft_size_out(), chunks * min_out);
        s.delay_out = fft.output_delay();
        s.out_buf = vec![0.0; fft.output_frames_max()];
        s.block_in = block_in;
        s.to_skip = s.delay_out;
        s.inner = Some(fft);
        Ok(s)
    }

    /// Input sample rate.
    pub fn from_hz(&self) -> u32 {
        self.from_hz
    }

    /// Output sample rate.
    pub fn to_hz(&self) -> u32 {
        self.to_hz
    }

    /// Input frames per FFT block (0 for pass-through).
    pub fn block_frames(&self) -> usize {
        self.block_in
    }

    /// The filter delay in output frames that the stream removes (0 for pass-through).
    pub fn delay_frames(&self) -> usize {
        self.delay_out
    }

    /// Feeds `input` and returns every output frame that is final so far.
    pub fn push(&mut self, input: &[f32]) -> Result<Vec<f32>> {
        self.n_in += input.len() as u64;
        if self.inner.is_none() {
            self.n_out += input.len() as u64;
            return Ok(input.to_vec());
        }
        self.fifo.extend_from_slice(input);
        let mut out = Vec::new();
        self.drain_blocks(&mut out, u64::MAX)?;
        Ok(out)
    }

    /// Flushes the stream: returns the remaining output so that the total since the last reset
    /// is `round(n_in * to_hz / from_hz)` frames, then resets.
    pub fn finish(&mut self) -> Result<Vec<f32>> {
        let total = resampled_len(self.n_in, self.from_hz, self.to_hz);
        let mut out = Vec::new();
        if self.inner.is_some() {
            while self.n_out < total {
                // Zeros past the end let the filter's look-ahead complete the last frames.
                let pad = self.block_in - self.fifo.len() % self.block_in;
                self.fifo.resize(self.fifo.len() + pad, 0.0);
                self.drain_blocks(&mut out, total)?;
            }
        }
        self.reset();
        Ok(out)
    }

    /// Forgets all input: the next push starts a new stream.
    pub fn reset(&mut self) {
        if let Some(fft) = self.inner.as_mut() {
            fft.reset();
        }
        self.fifo.clear();
        self.n_in = 0;
        self.n_out = 0;
        self.to_skip = self.delay_out;
    }

    /// Runs every complete block in the fifo, appending at most `limit - n_out` frames to `out`.
    fn drain_blocks(&mut self, out: &mut Vec<f32>, limit: u64) -> Result<()> {
        let (from_hz, to_hz) = (self.from_hz, self.to_hz);
        let fft = self.inner.as_mut().expect("only called when resampling");
        let mut start = 0;
        while self.fifo.len() - start >= self.block_in {
            let chans_in = [&self.fifo[start..start + self.block_in]];
            let adapter_in = SequentialSliceOfSlices::new(&chans_in, 1, self.block_in)
                .map_err(|e| resample_err(from_hz, to_hz, e.to_string()))?;
            let frames_out = self.out_buf.len();
            let mut chans_out = [&mut self.out_buf[..]];
            let mut adapter_out = SequentialSliceOfSlices::new_mut(&mut chans_out, 1, frames_out)
                .map_err(|e| resample_err(from_hz, to_hz, e.to_string()))?;
            let (n_in, n_out) = fft
                .process_into_buffer(&adapter_in, &mut adapter_out, None)
                .map_err(|e| resample_err(from_hz, to_hz, e.to_string()))?;
            start += n_in;
            let produced = &self.out_buf[..n_out];
            let skip = self.to_skip.min(produced.len());
            self.to_skip -= skip;
            let keep = &produced[skip..];
            let room = limit.saturating_sub(self.n_out).min(keep.len() as u64) as usize;
            out.extend_from_slice(&keep[..room]);
            self.n_out += room as u64;
        }
        self.fifo.drain(..start);
        Ok(())
    }
}

fn resample_err(from_hz: u32, to_hz: u32, reason: String) -> AudioError {
    AudioError::Resample {
        from_hz,
        to_hz,
        reason,
    }
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}
