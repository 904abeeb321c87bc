//! Voice activity and turn-taking: earshot's detector on 16 ms frames at 16 kHz, with the
//! hysteresis of [`VadConfig`] (speech start, speech stop, endpoint).

use crate::config::VadConfig;

/// Samples per detector frame (16 ms at 16 kHz).
pub const VAD_FRAME: usize = 256;
/// The detector's sample rate.
pub const VAD_RATE: u32 = 16000;

fn ms_to_frames(ms: u64) -> usize {
    (ms as usize * VAD_RATE as usize / 1000).div_ceil(VAD_FRAME)
}

/// What a chunk of audio changed.
#[derive(Clone, Debug, PartialEq)]
pub enum VadEvent {
    /// Speech for `min_speech_ms`; it began `speech_ms` ago.
    SpeechStart { prob: f32, speech_ms: u64 },
    /// Silence for `min_silence_ms`.
    SpeechStop { prob: f32 },
    /// The user's turn is over: `silence_ms` since the last speech frame, which ended at
    /// sample `speech_end` of the stream.
    Endpoint { silence_ms: u64, speech_end: u64 },
}

/// Streaming VAD + endpointer of one session.
pub struct TurnDetector {
    det: Box<earshot::Detector>,
    cfg: VadConfig,
    buf: Vec<f32>,
    /// Samples seen so far (the stream position).
    pos: u64,
    speaking: bool,
    speech_run: usize,
    silence_run: usize,
    /// Consecutive frames under half the threshold.
    clear_run: usize,
    /// A speech start was reported and no endpoint yet.
    in_turn: bool,
    speech_end: u64,
    speech_frames_in_turn: usize,
    last_prob: f32,
}

impl TurnDetector {
    pub fn new(cfg: VadConfig) -> Self {
        Self {
            det: earshot::Detector::default_boxed(),
            cfg,
            buf: Vec::with_capacity(VAD_FRAME),
            pos: 0,
            speaking: false,
            speech_run: 0,
            silence_run: 0,
            clear_run: 0,
            in_turn: false,
            speech_end: 0,
            speech_frames_in_turn: 0,
            last_prob: 0.0,
        }
    }

    pub fn config(&self) -> &VadConfig {
        &self.cfg
    }

    pub fn speaking(&self) -> bool {
        self.speaking
    }

    /// Milliseconds of the current continuous speech (0 when not speaking).
    pub fn speech_ms(&self) -> u64 {
        if self.speaking {
            (self.speech_run * VAD_FRAME) as u64 * 1000 / VAD_RATE as u64
        } else {
            0
        }
    }

    /// Stream position in samples.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Sample position where the last speech frame ended.
    pub fn speech_end(&self) -> u64 {
        self.speech_end
    }

    /// Ends the turn in progress (an endpoint, an explicit or a forced end of turn): speech
    /// from here on is new speech (a new start, a possible barge-in). Returns whether the
    /// VAD was in the speaking state.
    pub fn end_turn(&mut self) -> bool {
        self.in_turn = false;
        self.speech_frames_in_turn = 0;
        self.speech_run = 0;
        std::mem::replace(&mut self.speaking, false)
    }

    /// Marks a turn as started (by a speech start, a barge-in or push-to-talk): the next
    /// clear silence is its endpoint.
    pub fn begin_turn(&mut self) {
        self.in_turn = true;
    }

    /// Feeds samples in [-1, 1] at 16 kHz; returns the events in order.
    pub fn push(&mut self, samples: &[f32]) -> Vec<VadEvent> {
        let mut ev = Vec::new();
        for &s in samples {
            self.buf.push(s.clamp(-1.0, 1.0));
            if self.buf.len() == VAD_FRAME {
                let p = self.det.predict_f32(&self.buf);
                self.buf.clear();
                self.pos += VAD_FRAME as u64;
                self.frame(p, &mut ev);
            }
        }
        ev
    }

    fn frame(&mut self, p: f32, ev: &mut Vec<VadEvent>) {
        let c = &self.cfg;
        self.last_prob = p;
        if p >= c.threshold {
            self.speech_run += 1;
            self.silence_run = 0;
            self.clear_run = 0;
            self.speech_end = self.pos;
            if self.in_turn {
                self.speech_frames_in_turn += 1;
            }
            if !self.speaking && self.speech_run >= ms_to_frames(c.min_speech_ms).max(1) {
                self.speaking = true;
                let speech_ms = (self.speech_run * VAD_FRAME) as u64 * 1000 / VAD_RATE as u64;
                if !self.in_turn {
                    self.in_turn = true;
                    self.speech_frames_in_turn = self.speech_run;
                }
                ev.push(VadEvent::SpeechStart { prob: p, speech_ms });
            }
        } else {
            self.silence_run += 1;
            if p >= c.threshold / 2.0 {
                self.clear_run = 0;
            } else {
                self.clear_run += 1;
            }
            if self.speaking && self.silence_run >= ms_to_frames(c.min_silence_ms).max(1) {
                self.speaking = false;
                self.speech_run = 0;
                ev.push(VadEvent::SpeechStop { prob: p });
            }
            if !self.speaking {
                self.speech_run = 0;
            }
            if self.in_turn && !self.speaking {
                let min = ms_to_frames(c.min_endpointing_delay_ms).max(1);
                let max = ms_to_frames(c.max_endpointing_delay_ms).max(min);
                // Clear: the last min_silence_ms were all well under the threshold.
                let clear = self.clear_run >= ms_to_frames(c.min_silence_ms).max(1).min(min);
                if (self.silence_run >= min && clear) || self.silence_run >= max {
                    self.in_turn = false;
                    self.speech_frames_in_turn = 0;
                    ev.push(VadEvent::Endpoint {
                        silence_ms: (self.silence_run * VAD_FRAME) as u64 * 1000 / VAD_RATE as u64,
                        speech_end: self.speech_end,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(n: usize, amp: f32, seed: u32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(2654435761).max(1);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x as f32 / u32::MAX as f32 * 2.0 - 1.0) * amp
            })
            .collect()
    }

    #[test]
    fn silence_gives_no_events_and_positions_advance() {
        let mut d = TurnDetector::new(VadConfig::default());
        let ev = d.push(&vec![0.0; 16000]);
        assert!(ev.is_empty(), "{ev:?}");
        assert_eq!(d.position(), (16000 / VAD_FRAME * VAD_FRAME) as u64);
        assert!(!d.speaking());
    }

    #[test]
    fn ms_rounding_covers_the_duration() {
        assert_eq!(ms_to_frames(16), 1);
        assert_eq!(ms_to_frames(17), 2);
        assert_eq!(ms_to_frames(500), 32);
    }

    #[test]
    fn faint_noise_is_not_speech() {
        let mut d = TurnDetector::new(VadConfig::default());
        let ev = d.push(&noise(32000, 0.001, 3));
        assert!(
            !ev.iter().any(|e| matches!(e, VadEvent::SpeechStart { .. })),
            "{ev:?}"
        );
    }
}

#[cfg(test)]
mod speech_tests {
    use super::*;

    #[test]
    fn speech_fixture_gives_start_stop_endpoint() {
        let p = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/speech.wav");
        let r = hound::WavReader::open(p).unwrap();
        let x: Vec<f32> = r
            .into_samples::<i16>()
            .map(|s| s.unwrap() as f32 / 32768.0)
            .collect();
        let mut d = TurnDetector::new(VadConfig::default());
        let mut all = Vec::new();
        for c in x.chunks(320) {
            for e in d.push(c) {
                all.push((d.position(), e));
            }
        }
        assert!(matches!(all[0].1, VadEvent::SpeechStart { .. }), "{all:?}");
        let VadEvent::Endpoint {
            silence_ms,
            speech_end,
        } = all.last().unwrap().1
        else {
            panic!("{all:?}")
        };
        assert!(silence_ms >= 500, "{all:?}");
        // The speech runs from 1.0 to 3.4 s of the file; earshot hears espeak's last syllables
        // as weak speech, so its last sure frame is a little earlier.
        assert!((32000..56000).contains(&speech_end), "{all:?}");
        assert!(all.last().unwrap().0 > speech_end + 8000);
    }
}
