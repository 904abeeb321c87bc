//! Batched, streaming generation: [`S2sStream`] holds every slot's encoder, decoder and
//! sampling state so a server can step all its sessions together under a mask. Each slot has
//! its own seeded RNG and draws only for itself, so a slot's output does not depend on which
//! other slots run beside it, and resetting one slot leaves the others bit-identical.

use candle_core::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vaak_nn::transformer::SlotKvCache;
use vaak_nn::StreamMask;

use crate::cond::SlotCondition;
use crate::config::HeadKind;
use crate::encoder::{EncodedChunk, EncoderState, Frame};
use crate::error::{Result, S2sError};
use crate::model::{DecoderState, S2sModel};

/// Sampling settings.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationConfig {
    /// `<= 0` means greedy (argmax).
    pub temperature: f64,
    pub top_k: Option<usize>,
    /// Nucleus: keep the smallest set of tokens whose probability reaches `top_p`.
    pub top_p: Option<f64>,
    /// `> 1` discourages tokens among a codebook's last `repetition_window` ones.
    pub repetition_penalty: f64,
    pub repetition_window: usize,
    /// Default seed of a slot started without its own.
    pub seed: u64,
    /// Classifier-free guidance on the speaker: `logits = u + g * (c - u)` with `u` from the
    /// null speaker; `None` runs one decoder pass per step.
    pub speaker_guidance: Option<f64>,
    /// Longest reply in frames (capped by the config's `max_target_frames`).
    pub max_frames: usize,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: Some(250),
            top_p: None,
            repetition_penalty: 1.0,
            repetition_window: 32,
            seed: 0,
            speaker_guidance: None,
            max_frames: usize::MAX,
        }
    }
}

impl GenerationConfig {
    /// Argmax decoding.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            ..Default::default()
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad =
            |f: &str, r: &str| Err(S2sError::BadInput(format!("generation config: {f}: {r}")));
        if self.temperature.is_nan() {
            return bad("temperature", "is NaN");
        }
        if self.top_k == Some(0) {
            return bad("top_k", "must be at least 1");
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return bad("top_p", "must be in (0, 1]");
            }
        }
        if self.repetition_penalty.is_nan() || self.repetition_penalty <= 0.0 {
            return bad("repetition_penalty", "must be positive");
        }
        if self.max_frames == 0 {
            return bad("max_frames", "must be at least 1");
        }
        Ok(())
    }
}

/// What one decoder step produced for a slot.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct SlotOutput {
    /// Frames completed by this step (none while delayed codebooks catch up, at most one).
    pub frames: Vec<Frame>,
    /// The text token sampled at this step, if the model has a text stream.
    pub text: Option<u32>,
    /// The reply is over (end-of-turn predicted, or the length limit reached).
    pub end_of_turn: bool,
}

#[derive(Clone, Debug)]
struct SlotGen {
    started: bool,
    cond: SlotCondition,
    rng: ChaCha8Rng,
    step: usize,
    prev: Vec<u32>,
    prev_text: u32,
    /// Frames under construction (delay pattern), indexed from `emitted`.
    partial: Vec<Vec<Option<u32>>>,
    emitted: usize,
    eot_frame: Option<usize>,
    finished: bool,
    history: Vec<Vec<u32>>,
}

/// Per-slot generation state for a batch of independent streams.
pub struct S2sStream {
    model: S2sModel,
    gen: GenerationConfig,
    enc: EncoderState,
    dec: DecoderState,
    uncond: Option<SlotKvCache>,
    slots: Vec<SlotGen>,
}

impl S2sStream {
    pub fn new(model: &S2sModel, batch_size: usize, gen: GenerationConfig) -> Result<Self> {
        gen.validate()?;
        if batch_size == 0 {
            return Err(S2sError::BadInput("batch_size must be at least 1".into()));
        }
        let uncond = match gen.speaker_guidance {
            Some(_) => Some(model.decoder_cache(batch_size)?),
            None => None,
        };
        let k = model.config().codec.num_codebooks;
        let slot = SlotGen {
            started: false,
            cond: SlotCondition::default(),
            rng: ChaCha8Rng::seed_from_u64(gen.seed),
            step: 0,
            prev: vec![0; k],
            prev_text: 0,
            partial: Vec::new(),
            emitted: 0,
            eot_frame: None,
            finished: false,
            history: vec![Vec::new(); k],
        };
        Ok(Self {
            enc: model.encoder().state(batch_size)?,
            dec: model.decoder_state(batch_size)?,
            uncond,
            slots: vec![slot; batch_size],
            model: model.clone(),
            gen,
        })
    }

    pub fn batch_size(&self) -> usize {
        self.slots.len()
    }

    /// Whether the slot's reply is over.
    pub fn is_finished(&self, slot: usize) -> bool {
        self.slots.get(slot).is_some_and(|s| s.finished)
    }

    /// Encoder frames the slot's decoder can attend to.
    pub fn memory_len(&self, slot: usize) -> usize {
        self.dec.memory_lens().get(slot).copied().unwrap_or(0)
    }

    fn check_slot(&self, slot: usize) -> Result<()> {
        if slot >= self.slots.len() {
            return Err(S2sError::Slot {
                slot,
                reason: format!("out of range for {} slots", self.slots.len()),
            });
        }
        Ok(())
    }

    /// Forgets everything about `slot` (source, reply, sampling state); other slots are
    /// untouched. The slot must be started again before it steps.
    pub fn reset_slot(&mut self, slot: usize) -> Result<()> {
        self.check_slot(slot)?;
        let mask = StreamMask::only(slot, self.slots.len());
        self.enc.reset_slots(&mask)?;
        self.dec.reset_slots(&mask)?;
        if let Some(u) = &mut self.uncond {
            u.reset_slots(&mask)?;
        }
        let k = self.model.config().codec.num_codebooks;
        let s = &mut self.slots[slot];
        s.started = false;
        s.step = 0;
        s.prev = vec![0; k];
        s.partial.clear();
        s.emitted = 0;
        s.eot_frame = None;
        s.finished = false;
        s.history = vec![Vec::new(); k];
        Ok(())
    }

    /// Resets `slot` and starts a new turn with its conditioning and seed.
    pub fn start(&mut self, slot: usize, cond: SlotCondition, seed: u64) -> Result<()> {
        self.reset_slot(slot)?;
        // Checks the speaker width now rather than at the first step.
        self.model.condition(std::slice::from_ref(&cond), false)?;
        let cfg = self.model.config();
        let sp = cfg.audio_specials();
        let s = &mut self.slots[slot];
        s.started = true;
        s.cond = cond;
        s.rng = ChaCha8Rng::seed_from_u64(seed);
        s.prev = vec![sp.bos; cfg.codec.num_codebooks];
        s.prev_text = cfg.text_specials().map_or(0, |t| t.bos);
        Ok(())
    }

    fn append(&mut self, chunks: Vec<EncodedChunk>) -> Result<()> {
        for c in &chunks {
            self.model.append_memory(&mut self.dec, c)?;
        }
        Ok(())
    }

    /// Feeds new source frames per slot (`frames[slot]`, possibly empty): complete encoder
    /// chunks run now, batched, and grow each slot's cross-attention memory.
    pub fn push_source(&mut self, frames: &[Vec<Frame>]) -> Result<()> {
        let chunks = self.model.encoder().push(&mut self.enc, frames)?;
        self.append(chunks)
    }

    /// Ends a slot's source (end of the user's turn): encodes its partial last chunk.
    pub fn end_source(&mut self, slot: usize) -> Result<()> {
        self.check_slot(slot)?;
        let chunk = self.model.encoder().flush(&mut self.enc, slot)?;
        self.append(chunk.into_iter().collect())
    }

    /// One decoder step for the slots set in `mask` that are started and not finished;
    /// returns their outputs (`None` for the others). Each stepped slot needs at least one
    /// encoded source frame.
    pub fn step(&mut self, mask: &StreamMask) -> Result<Vec<Option<SlotOutput>>> {
        let b = self.slots.len();
        if let StreamMask::Slots(s) = mask {
            if s.len() != b {
                return Err(S2sError::BadInput(format!(
                    "step: mask has {} slots, the stream {b}",
                    s.len()
                )));
            }
        }
        let run: Vec<bool> = (0..b)
            .map(|i| mask.is_active(i) && !self.slots[i].finished)
            .collect();
        for (i, &r) in run.iter().enumerate() {
            if r && !self.slots[i].started {
                return Err(S2sError::Slot {
                    slot: i,
                    reason: "not started".into(),
                });
            }
            if r && self.dec.memory_lens()[i] == 0 {
                return Err(S2sError::Slot {
                    slot: i,
                    reason: "no encoded source frames yet".into(),
                });
            }
        }
        if !run.iter().any(|&r| r) {
            return Ok(vec![None; b]);
        }
        let run_mask = StreamMask::from_slots(&run);
        let cfg = self.model.config().clone();
        let sp = cfg.audio_specials();
        let k = cfg.codec.num_codebooks;
        let codes: Vec<Vec<u32>> = (0..b)
            .map(|i| {
                if run[i] {
                    self.slots[i].prev.clone()
                } else {
                    vec![sp.pad; k]
                }
            })
            .collect();
        let text: Option<Vec<u32>> = cfg.text_specials().map(|ts| {
            (0..b)
                .map(|i| {
                    if run[i] {
                        self.slots[i].prev_text
                    } else {
                        ts.pad
                    }
                })
                .collect()
        });
        let conds: Vec<SlotCondition> = self.slots.iter().map(|s| s.cond.clone()).collect();
        let cond = self.model.condition(&conds, false)?;
        let h =
            self.model
                .decoder_step(&mut self.dec, &codes, text.as_deref(), &cond, &run_mask)?;
        let hu = match (&mut self.uncond, self.gen.speaker_guidance) {
            (Some(cache), Some(_)) => {
                let ucond = self.model.condition(&conds, true)?;
                Some(self.model.decoder_step_with(
                    cache,
                    &self.dec.memory,
                    &codes,
                    text.as_deref(),
                    &ucond,
                    &run_mask,
                )?)
            }
            _ => None,
        };
        let g = self.gen.speaker_guidance;
        let guide = |c: Tensor, u: Option<Tensor>| -> Result<Vec<Vec<f32>>> {
            let l = match (u, g) {
                (Some(u), Some(g)) => (&u + ((c - &u)? * g)?)?,
                _ => c,
            };
            Ok(l.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?)
        };

        let mut outs: Vec<Option<SlotOutput>> = vec![None; b];
        // Text first: the depth head conditions on it.
        let mut text_tok = vec![None; b];
        if let (Some(ts), Some(tl)) = (cfg.text_specials(), self.model.text_logits(&h)?) {
            let tu = match &hu {
                Some(hu) => self.model.text_logits(hu)?,
                None => None,
            };
            let rows = guide(tl, tu)?;
            // After a delay-pattern end of turn only the delayed codebooks still run; the
            // text stream is over (its training targets there are ignored).
            let text_live = |s: &SlotGen| s.eot_frame.is_none_or(|e| s.step <= e);
            let live: Vec<bool> = (0..b)
                .map(|i| run[i] && text_live(&self.slots[i]))
                .collect();
            for i in (0..b).filter(|&i| live[i]) {
                let banned = [ts.pad, ts.bos];
                let t = sample(&rows[i], &banned, &[], &self.gen, &mut self.slots[i].rng);
                text_tok[i] = Some(t);
            }
        }

        match cfg.head {
            HeadKind::Delay => {
                let rows: Vec<Vec<Vec<f32>>> = {
                    let lc = self.model.delay_logits(&h)?;
                    let lu = match &hu {
                        Some(hu) => Some(self.model.delay_logits(hu)?),
                        None => None,
                    };
                    let mut v = Vec::with_capacity(k);
                    for (c, l) in lc.into_iter().enumerate() {
                        v.push(guide(l, lu.as_ref().map(|u| u[c].clone()))?);
                    }
                    v
                };
                for i in (0..b).filter(|&i| run[i]) {
                    outs[i] = Some(self.delay_slot(i, &rows, text_tok[i]));
                }
            }
            HeadKind::Depth => {
                let mut dc = self.model.depth_start(&h)?;
                let mut du = match &hu {
                    Some(hu) => Some(self.model.depth_start(hu)?),
                    None => None,
                };
                let mut frame: Vec<Vec<u32>> = vec![Vec::with_capacity(k); b];
                let mut eot = vec![false; b];
                let mut prev: Vec<u32> = (0..b)
                    .map(|i| text_tok[i].unwrap_or(cfg.text_specials().map_or(0, |t| t.pad)))
                    .collect();
                let max_frames = self.max_frames();
                for j in 0..k {
                    let lc = self.model.depth_step(&mut dc, &prev)?;
                    let lu = match &mut du {
                        Some(du) => Some(self.model.depth_step(du, &prev)?),
                        None => None,
                    };
                    let rows = guide(lc, lu)?;
                    for i in 0..b {
                        if !run[i] || eot[i] {
                            continue;
                        }
                        let s = &mut self.slots[i];
                        let force_eot = j == 0 && s.step >= max_frames;
                        let t = if force_eot {
                            sp.eot
                        } else {
                            let banned: &[u32] = if j == 0 {
                                &[sp.pad, sp.bos]
                            } else {
                                &[sp.pad, sp.bos, sp.eot]
                            };
                            sample(&rows[i], banned, &s.history[j], &self.gen, &mut s.rng)
                        };
                        if t == sp.eot {
                            eot[i] = true;
                        } else {
                            frame[i].push(t);
                        }
                        prev[i] = t;
                    }
                    for (i, p) in prev.iter_mut().enumerate() {
                        if !run[i] || eot[i] {
                            *p = sp.pad;
                        }
                    }
                }
                for i in (0..b).filter(|&i| run[i]) {
                    let s = &mut self.slots[i];
                    let mut out = SlotOutput {
                        text: text_tok[i],
                        ..Default::default()
                    };
                    if eot[i] {
                        s.finished = true;
                        s.eot_frame = Some(s.step);
                        out.end_of_turn = true;
                    } else {
                        for (j, &t) in frame[i].iter().enumerate() {
                            push_history(&mut s.history[j], t, self.gen.repetition_window);
                        }
                        s.prev = frame[i].clone();
                        s.emitted += 1;
                        out.frames.push(frame[i].clone());
                    }
                    if let (Some(ts), Some(t)) = (cfg.text_specials(), text_tok[i]) {
                        s.prev_text = if eot[i] { ts.pad } else { t };
                    }
                    s.step += 1;
                    outs[i] = Some(out);
                }
            }
        }
        Ok(outs)
    }

    fn max_frames(&self) -> usize {
        self.gen
            .max_frames
            .min(self.model.config().max_target_frames)
    }

    /// Samples slot `i`'s codebooks for one delay-pattern step from `rows[k][i]`.
    fn delay_slot(&mut self, i: usize, rows: &[Vec<Vec<f32>>], text: Option<u32>) -> SlotOutput {
        let cfg = self.model.config();
        let sp = cfg.audio_specials();
        let k = cfg.codec.num_codebooks;
        let max_frames = self.max_frames();
        let gen = &self.gen;
        let s = &mut self.slots[i];
        let step = s.step;
        let mut toks = Vec::with_capacity(k);
        for (c, row) in rows.iter().enumerate() {
            let f = step as isize - c as isize;
            let t = if f < 0 || s.eot_frame.is_some_and(|e| f as usize >= e) {
                sp.pad
            } else if c == 0 && f as usize >= max_frames {
                sp.eot
            } else {
                let banned: &[u32] = if c == 0 {
                    &[sp.pad, sp.bos]
                } else {
                    &[sp.pad, sp.bos, sp.eot]
                };
                sample(&row[i], banned, &s.history[c], gen, &mut s.rng)
            };
            if c == 0 && t == sp.eot {
                s.eot_frame = Some(step);
            }
            if t < sp.pad {
                let fi = f as usize - s.emitted;
                while s.partial.len() <= fi {
                    s.partial.push(vec![None; k]);
                }
                s.partial[fi][c] = Some(t);
                push_history(&mut s.history[c], t, gen.repetition_window);
            }
            toks.push(t);
        }
        let mut out = SlotOutput {
            text,
            ..Default::default()
        };
        while s
            .partial
            .first()
            .is_some_and(|f| f.iter().all(|c| c.is_some()))
        {
            let f = s.partial.remove(0);
            out.frames.push(f.into_iter().flatten().collect());
            s.emitted += 1;
        }
        if let Some(ts) = cfg.text_specials() {
            s.prev_text = match (text, s.eot_frame) {
                (Some(t), None) => t,
                (Some(t), Some(e)) if step <= e => t,
                _ => ts.pad,
            };
        }
        s.prev = toks;
        if let Some(e) = s.eot_frame {
            // Frame e - 1's last codebook comes at step e + K - 2.
            if step >= e + k.saturating_sub(2) {
                s.finished = true;
                out.end_of_turn = true;
            }
        }
        s.step += 1;
        out
    }
}

fn push_history(h: &mut Vec<u32>, t: u32, window: usize) {
    if window == 0 {
        return;
    }
    if h.len() == window {
        h.remove(0);
    }
    h.push(t);
}

/// Samples one id from `logits` with `banned` ids excluded and the settings of `gen`.
/// Greedy decoding draws nothing from `rng`; sampling draws exactly one number.
fn sample(
    logits: &[f32],
    banned: &[u32],
    history: &[u32],
    gen: &GenerationConfig,
    rng: &mut ChaCha8Rng,
) -> u32 {
    let mut l: Vec<f64> = logits.iter().map(|&x| x as f64).collect();
    for &b in banned {
        if let Some(x) = l.get_mut(b as usize) {
            *x = f64::NEG_INFINITY;
        }
    }
    if gen.repetition_penalty != 1.0 {
        let mut seen = history.to_vec();
        seen.sort_unstable();
        seen.dedup();
        for t in seen {
            if let Some(x) = l.get_mut(t as usize) {
                *x = if *x > 0.0 {
                    *x / gen.repetition_penalty
                } else {
                    *x * gen.repetition_penalty
                };
            }
        }
    }
    let argmax = || {
        let mut best = 0usize;
        for (i, &x) in l.iter().enumerate() {
            if x > l[best] {
                best = i;
            }
        }
        best as u32
    };
    if gen.temperature <= 0.0 {
        return argmax();
    }
    let mut idx: Vec<usize> = (0..l.len()).filter(|&i| l[i].is_finite()).collect();
    if idx.is_empty() {
        return argmax();
    }
    // Stable order: by logit descending, ties by id.
    idx.sort_by(|&a, &b| l[b].total_cmp(&l[a]).then(a.cmp(&b)));
    if let Some(k) = gen.top_k {
        idx.truncate(k.max(1));
    }
    let m = l[idx[0]];
    let mut p: Vec<f64> = idx
        .iter()
        .map(|&i| ((l[i] - m) / gen.temperature).exp())
        .collect();
    let z: f64 = p.iter().sum();
    p.iter_mut().for_each(|x| *x /= z);
    if let Some(tp) = gen.top_p {
        let mut acc = 0.0;
        let mut keep = p.len();
        for (j, &x) in p.iter().enumerate() {
            acc += x;
            if acc >= tp {
                keep = j + 1;
                break;
            }
        }
        idx.truncate(keep);
        p.truncate(keep);
        let z: f64 = p.iter().sum();
        p.iter_mut().for_each(|x| *x /= z);
    }
    let u: f64 = rng.random::<f64>();
    let mut acc = 0.0;
    for (j, &x) in p.iter().enumerate() {
        acc += x;
        if u < acc {
            return idx[j] as u32;
        }
    }
    idx[idx.len() - 1] as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gen(t: f64, k: Option<usize>, p: Option<f64>) -> GenerationConfig {
        GenerationConfig {
            temperature: t,
            top_k: k,
            top_p: p,
            ..Default::default()
        }
    }

    #[test]
    fn greedy_skips_banned_ids_and_draws_nothing() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let before = rng.clone();
        let l = [0.0, 5.0, 3.0, 9.0];
        assert_eq!(sample(&l, &[3], &[], &gen(0.0, None, None), &mut rng), 1);
        assert_eq!(rng.random::<u64>(), before.clone().random::<u64>());
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_argmax() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let l = [0.0, 1.0, 2.5, 2.4];
        for _ in 0..50 {
            assert_eq!(sample(&l, &[], &[], &gen(1.0, Some(1), None), &mut rng), 2);
            assert_eq!(
                sample(&l, &[], &[], &gen(1.0, None, Some(1e-6)), &mut rng),
                2
            );
        }
    }

    #[test]
    fn sampling_follows_the_softmax_and_never_picks_banned() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let l = [0.0f32, (2.0f32).ln(), 10.0];
        let mut counts = [0usize; 3];
        for _ in 0..6000 {
            counts[sample(&l, &[2], &[], &gen(1.0, None, None), &mut rng) as usize] += 1;
        }
        assert_eq!(counts[2], 0);
        let ratio = counts[1] as f64 / counts[0] as f64;
        assert!((ratio - 2.0).abs() < 0.2, "{counts:?}");
    }

    #[test]
    fn repetition_penalty_discourages_recent_tokens() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let l = [1.0, 1.1];
        let mut g = gen(0.0, None, None);
        assert_eq!(sample(&l, &[], &[1], &g, &mut rng), 1);
        g.repetition_penalty = 1.5;
        assert_eq!(sample(&l, &[], &[1], &g, &mut rng), 0);
    }
}
