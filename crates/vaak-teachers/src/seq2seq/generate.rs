//! Batched greedy and beam-search generation for encoder-decoder models, matching
//! transformers' `generate()` (v5, `do_sample=False`) token for token.
//!
//! Generic over [`Seq2Seq`]: encode a batch once, start a [`KvCache`] with `group` rows per
//! item, feed one token per row, select/reorder rows. M2M-100 / NLLB and Marian implement it;
//! Whisper runs [`greedy_search`] from its own prompt (a [`Decoder`] and a started cache).
//!
//! Semantics reproduced (read from transformers' `generation/utils.py` and `logits_process.py`):
//! - The decoder starts from `decoder_start_token_id`; lengths count that token, so
//!   `max_length` L yields at most L - 1 generated tokens.
//! - Logits processors, in transformers' order: no-repeat n-gram, bad words ([`TokenRules`]),
//!   min length (EOS banned while the sequence is shorter), forced BOS (at length 1 every token
//!   but `forced_bos_token_id` is -inf and it is 0), forced EOS (the same at length
//!   `max_length - 1`), suppressed tokens, and tokens suppressed right after the prompt.
//! - Greedy (`num_beams` 1): arg-max of the processed logits, first index on ties; a row stops
//!   at EOS or `max_length`.
//! - Beam search: the vectorised algorithm of transformers 4.50+: per item, the top `2K`
//!   continuations of `log_softmax + running score` over all `K` beams; those that end (EOS or
//!   max length) and rank in the first `K` become finished candidates with score
//!   `sum_logprobs / generated_len ^ length_penalty`; the best `K` non-ending ones run on
//!   (ending ones carry a -1e9 penalty); the finished set keeps the best `K`. An item stops
//!   when its early-stop heuristic says no running beam can beat its worst finished one
//!   (`early_stopping` false: judged at the current length; `"never"` with a positive length
//!   penalty: at `max_length`), or, with `early_stopping` true, when `K` hypotheses are
//!   finished. The result is the best finished hypothesis. Scores are f32, with the same -1e9
//!   sentinels, so near-ties resolve as they do in PyTorch.
//! - Finished items leave the batch (their cache rows are dropped), which does not change the
//!   others: each item's search depends only on its own rows.
//!
//! Limits may be fixed (as `generate(max_length=...)`) or tied to each source's length
//! ([`MaxLength::Source`]); the latter is per item, so batching never changes a result.

use candle_core::Tensor;

pub use super::cache::{Encoded, KvCache};
pub use super::config::{EarlyStopping, GenerationConfigFile, TokenIds};
use super::select::{beam_top, greedy_pick, top_k, RowRule};
use crate::error::{Result, TeacherError};

/// A decoder that continues a [`KvCache`].
pub trait Decoder {
    fn vocab_size(&self) -> usize;
    /// Feeds `l` tokens per row (`rows x l`, row-major) after what `cache` holds and returns
    /// f32 logits `[rows, l, vocab]`.
    fn decode_step(&self, tokens: &[u32], l: usize, cache: &mut KvCache) -> Result<Tensor>;
}

/// What generation from token sources needs from an encoder-decoder model.
pub trait Seq2Seq: Decoder {
    /// Encodes a batch of token sequences (one encoder pass; right-padded and masked).
    fn encode_sources(&self, sources: &[&[u32]]) -> Result<Encoded>;
    /// A fresh cache with `group` identical rows per encoded item.
    fn start_cache(&self, enc: &Encoded, group: usize) -> Result<KvCache>;
}

/// Token bans beyond [`GenerationParams`], from a model's generation config (transformers'
/// `SuppressTokensLogitsProcessor`, `SuppressTokensAtBeginLogitsProcessor`,
/// `NoBadWordsLogitsProcessor`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenRules {
    /// Never generated.
    pub suppress: Vec<u32>,
    /// Not generated as the first token after the prompt.
    pub begin_suppress: Vec<u32>,
    /// Sequences never completed: the last token is banned after the others.
    pub bad_words: Vec<Vec<u32>>,
}

impl TokenRules {
    /// `bad_words_ids` as transformers keeps them: empty sequences and lone EOS ids dropped.
    pub fn with_bad_words(mut self, bad_words: Vec<Vec<u32>>, eos: &[u32]) -> Self {
        self.bad_words = bad_words
            .into_iter()
            .filter(|w| match w.as_slice() {
                [] => false,
                [t] => !eos.contains(t),
                _ => true,
            })
            .collect();
        self
    }

    fn check(&self, vocab: usize) -> Result<()> {
        let all = self
            .suppress
            .iter()
            .chain(&self.begin_suppress)
            .chain(self.bad_words.iter().flatten());
        for &t in all {
            if t as usize >= vocab {
                return Err(TeacherError::BadInput(format!(
                    "banned token {t} is outside the vocabulary ({vocab})"
                )));
            }
        }
        Ok(())
    }
}

/// The decoder length limit (decoder start token included, as transformers' `max_length`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MaxLength {
    /// The same for every item.
    Fixed(usize),
    /// `min(cap, ceil(a * source_len) + b)` per item.
    Source { a: f32, b: usize, cap: usize },
}

impl MaxLength {
    pub fn for_source(&self, src_len: usize) -> usize {
        match *self {
            Self::Fixed(n) => n,
            Self::Source { a, b, cap } => {
                (((a * src_len as f32).ceil().max(0.0) as usize).saturating_add(b)).min(cap)
            }
        }
    }
}

/// Decoding settings (transformers' `GenerationConfig` fields of the same names).
#[derive(Clone, Debug)]
pub struct GenerationParams {
    /// 1 = greedy.
    pub num_beams: usize,
    pub max_length: MaxLength,
    /// EOS is banned while the sequence (start token included) is shorter than this.
    pub min_length: usize,
    pub length_penalty: f32,
    pub early_stopping: EarlyStopping,
    pub decoder_start_token_id: u32,
    pub forced_bos_token_id: Option<u32>,
    pub forced_eos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: u32,
    /// 0 = off.
    pub no_repeat_ngram_size: usize,
}

/// One item's result.
#[derive(Clone, Debug, PartialEq)]
pub struct Generated {
    /// The decoder sequence as transformers returns it without padding: the start token, the
    /// generated tokens and the EOS when one was generated.
    pub tokens: Vec<u32>,
    /// Beam search: the length-penalised score; greedy: the sum of the chosen tokens'
    /// log-probabilities (of the processed scores) over their count.
    pub score: f32,
    /// Whether an EOS ended it (false: the length limit did).
    pub ended: bool,
}

impl Generated {
    /// The tokens after the start (and forced BOS, when `skip_forced`), without the EOS.
    pub fn content(&self, skip_forced: bool, eos: &[u32]) -> &[u32] {
        let from = (1 + usize::from(skip_forced)).min(self.tokens.len());
        let mut to = self.tokens.len();
        if self.ended && to > from && eos.contains(&self.tokens[to - 1]) {
            to -= 1;
        }
        &self.tokens[from..to]
    }
}

/// Pads results to one length with `pad`, as transformers' batched output.
pub fn pad_batch(outs: &[Generated], pad: u32) -> Vec<Vec<u32>> {
    let n = outs.iter().map(|g| g.tokens.len()).max().unwrap_or(0);
    outs.iter()
        .map(|g| {
            let mut v = g.tokens.clone();
            v.resize(n, pad);
            v
        })
        .collect()
}

const SENTINEL: f32 = -1.0e9;

fn check_params(p: &GenerationParams, vocab: usize) -> Result<()> {
    let bad = |m: String| Err(TeacherError::BadInput(m));
    if p.num_beams == 0 {
        return bad("num_beams must be >= 1".into());
    }
    if p.eos_token_ids.is_empty() {
        return bad("generation needs at least one eos_token_id".into());
    }
    for (what, id) in [
        ("decoder_start_token_id", Some(p.decoder_start_token_id)),
        ("forced_bos_token_id", p.forced_bos_token_id),
        ("forced_eos_token_id", p.forced_eos_token_id),
    ]
    .into_iter()
    .chain(p.eos_token_ids.iter().map(|&e| ("eos_token_id", Some(e))))
    {
        if let Some(id) = id {
            if id as usize >= vocab {
                return bad(format!("{what} {id} is outside the vocabulary ({vocab})"));
            }
        }
    }
    if vocab < 2 * p.num_beams {
        return bad(format!(
            "num_beams {} needs a vocabulary of at least {} tokens",
            p.num_beams,
            2 * p.num_beams
        ));
    }
    Ok(())
}

/// Tokens banned by the no-repeat n-gram rule after `seq` (transformers'
/// `NoRepeatNGramLogitsProcessor`).
fn banned_ngram_tokens(seq: &[u32], n: usize) -> Vec<u32> {
    if n == 0 || seq.len() + 1 < n {
        return Vec::new();
    }
    let prefix = &seq[seq.len() + 1 - n..];
    seq.windows(n)
        .filter(|w| &w[..n - 1] == prefix)
        .map(|w| w[n - 1])
        .collect()
}

/// One row's place in the search: its tokens so far (prompt included) and limits.
struct RowState<'a> {
    seq: &'a [u32],
    max_len: usize,
    prompt_len: usize,
}

/// The logits processors' effect on one row, in transformers' order: n-gram and bad-word bans,
/// min length, forced BOS / EOS (which replace the earlier bans), suppressed tokens.
fn row_rule(st: &RowState<'_>, p: &GenerationParams, rules: &TokenRules) -> RowRule {
    let cur_len = st.seq.len();
    let mut banned = banned_ngram_tokens(st.seq, p.no_repeat_ngram_size);
    for w in &rules.bad_words {
        if let Some((&last, prefix)) = w.split_last() {
            if st.seq.ends_with(prefix) {
                banned.push(last);
            }
        }
    }
    if cur_len < p.min_length {
        banned.extend_from_slice(&p.eos_token_ids);
    }
    let mut forced = None;
    if let (1, Some(id)) = (cur_len, p.forced_bos_token_id) {
        forced = Some(id);
    }
    if let Some(id) = p.forced_eos_token_id {
        if cur_len + 1 == st.max_len {
            forced = Some(id);
        }
    }
    if forced.is_some() {
        banned.clear();
    }
    banned.extend_from_slice(&rules.suppress);
    if cur_len == st.prompt_len {
        banned.extend_from_slice(&rules.begin_suppress);
    }
    RowRule { forced, banned }
}

/// Generates for a batch of sources (token ids as the model's tokenizer makes them).
pub fn generate<M: Seq2Seq + ?Sized>(
    model: &M,
    sources: &[&[u32]],
    p: &GenerationParams,
) -> Result<Vec<Generated>> {
    generate_with(model, sources, p, &TokenRules::default())
}

/// [`generate`] with token bans from the model's generation config.
pub fn generate_with<M: Seq2Seq + ?Sized>(
    model: &M,
    sources: &[&[u32]],
    p: &GenerationParams,
    rules: &TokenRules,
) -> Result<Vec<Generated>> {
    check_params(p, model.vocab_size())?;
    rules.check(model.vocab_size())?;
    if sources.is_empty() {
        return Ok(Vec::new());
    }
    let max_lens: Vec<usize> = sources
        .iter()
        .map(|s| p.max_length.for_source(s.len()))
        .collect();
    if let Some(i) = max_lens.iter().position(|&m| m < 2) {
        return Err(TeacherError::BadInput(format!(
            "item {i}: max_length {} leaves no room to generate (it counts the start token)",
            max_lens[i]
        )));
    }
    let enc = model.encode_sources(sources)?;
    if p.num_beams == 1 {
        let mut cache = model.start_cache(&enc, 1)?;
        let prompts = vec![vec![p.decoder_start_token_id]; sources.len()];
        greedy_search(model, &mut cache, prompts, 0, &max_lens, p, rules)
    } else {
        beam_search(model, &enc, sources.len(), &max_lens, p, rules)
    }
}

/// Greedy decoding from a prompt per row (all of one length), of which the first `fed` tokens
/// are already in `cache` (one row per prompt). `max_lens` count the prompt. The score of each
/// result is the mean log-probability (of the processed scores) of its generated tokens, EOS
/// included. Finished rows leave the cache.
pub fn greedy_search<D: Decoder + ?Sized>(
    model: &D,
    cache: &mut KvCache,
    prompts: Vec<Vec<u32>>,
    fed: usize,
    max_lens: &[usize],
    p: &GenerationParams,
    rules: &TokenRules,
) -> Result<Vec<Generated>> {
    let n = prompts.len();
    let prompt_len = prompts.first().map_or(0, Vec::len);
    if prompts.iter().any(|r| r.len() != prompt_len) || fed >= prompt_len {
        return Err(TeacherError::BadInput(format!(
            "greedy search: prompts must share one length above the {fed} cached tokens"
        )));
    }
    if max_lens.len() != n || cache.rows() != n {
        return Err(TeacherError::BadInput(format!(
            "greedy search: {n} prompts, {} limits, {} cache rows",
            max_lens.len(),
            cache.rows()
        )));
    }
    let mut out: Vec<Generated> = prompts
        .into_iter()
        .map(|tokens| Generated {
            tokens,
            score: 0.0,
            ended: false,
        })
        .collect();
    let mut sum_lp = vec![0f64; n];
    cache.reserve(max_lens.iter().copied().max().unwrap_or(0));
    // Items still decoding, in cache row order.
    let mut active: Vec<usize> = (0..n).filter(|&i| max_lens[i] > prompt_len).collect();
    if active.len() < n && !active.is_empty() {
        cache.select(&active)?;
    }
    // The prompt's unfed part first (its last position predicts), then one token per step.
    let mut feed: Vec<u32> = active
        .iter()
        .flat_map(|&i| out[i].tokens[fed..].to_vec())
        .collect();
    let mut l = prompt_len - fed;
    while !active.is_empty() {
        let logits = model.decode_step(&feed, l, cache)?;
        let last = logits.narrow(1, l - 1, 1)?.squeeze(1)?;
        let row_rules: Vec<RowRule> = active
            .iter()
            .map(|&item| {
                let st = RowState {
                    seq: &out[item].tokens,
                    max_len: max_lens[item],
                    prompt_len,
                };
                row_rule(&st, p, rules)
            })
            .collect();
        let picks = greedy_pick(&last, &row_rules)?;
        let mut keep = Vec::with_capacity(active.len());
        for (row, (&item, (tok, lp))) in active.iter().zip(picks).enumerate() {
            sum_lp[item] += lp as f64;
            let g = &mut out[item];
            g.tokens.push(tok);
            if p.eos_token_ids.contains(&tok) {
                g.ended = true;
            } else if g.tokens.len() < max_lens[item] {
                keep.push(row);
            }
        }
        if keep.is_empty() {
            break;
        }
        if keep.len() < active.len() {
            cache.select(&keep)?;
            active = keep.iter().map(|&r| active[r]).collect();
        }
        feed = active
            .iter()
            .map(|&i| *out[i].tokens.last().unwrap_or(&p.decoder_start_token_id))
            .collect();
        l = 1;
    }
    for (g, s) in out.iter_mut().zip(sum_lp) {
        g.score = (s / (g.tokens.len() - prompt_len).max(1) as f64) as f32;
    }
    Ok(out)
}

struct Running {
    tokens: Vec<u32>,
    score: f32,
}

#[derive(Clone)]
struct Finished {
    tokens: Vec<u32>,
    score: f32,
    done: bool,
}

struct BeamItem {
    running: Vec<Running>,
    finished: Vec<Finished>,
    unsatisfied: bool,
    max_len: usize,
}

impl BeamItem {
    fn is_done(&self, early: EarlyStopping) -> bool {
        !self.unsatisfied || (early == EarlyStopping::True && self.finished.iter().all(|f| f.done))
    }
}

struct Candidate {
    acc: f32,
    beam: usize,
    token: u32,
    hits: bool,
}

fn beam_search<M: Seq2Seq + ?Sized>(
    model: &M,
    enc: &Encoded,
    n: usize,
    max_lens: &[usize],
    p: &GenerationParams,
    rules: &TokenRules,
) -> Result<Vec<Generated>> {
    let k = p.num_beams;
    let keep_k = 2.max(1 + p.eos_token_ids.len()) * k;
    let start = p.decoder_start_token_id;
    let mut cache = model.start_cache(enc, k)?;
    cache.reserve(max_lens.iter().copied().max().unwrap_or(0));
    let mut items: Vec<BeamItem> = max_lens
        .iter()
        .map(|&max_len| BeamItem {
            running: (0..k)
                .map(|b| Running {
                    tokens: vec![start],
                    score: if b == 0 { 0.0 } else { SENTINEL },
                })
                .collect(),
            finished: vec![
                Finished {
                    tokens: vec![start],
                    score: SENTINEL,
                    done: false,
                };
                k
            ],
            unsatisfied: true,
            max_len,
        })
        .collect();
    let prompt_len = 1usize;
    let lp_pow = |len: usize| (len as f64).powf(p.length_penalty as f64) as f32;
    let mut active: Vec<usize> = (0..n).collect();
    let mut cur_len = prompt_len;
    while !active.is_empty() {
        let last: Vec<u32> = active
            .iter()
            .flat_map(|&i| {
                items[i]
                    .running
                    .iter()
                    .map(|r| *r.tokens.last().unwrap_or(&start))
            })
            .collect();
        let logits = model.decode_step(&last, 1, &mut cache)?.squeeze(1)?;
        let vocab = logits.dim(1)?;
        let mut row_rules = Vec::with_capacity(last.len());
        let mut running = Vec::with_capacity(last.len());
        for &i in &active {
            for run in &items[i].running {
                let st = RowState {
                    seq: &run.tokens,
                    max_len: items[i].max_len,
                    prompt_len,
                };
                row_rules.push(row_rule(&st, p, rules));
                running.push(run.score);
            }
        }
        // a. Per item, the top `keep_k` of processed log-probs plus running scores over all
        // its beams, chosen on the device.
        let tops = beam_top(&logits, &row_rules, &running, k, keep_k)?;
        let mut rows_next: Vec<usize> = Vec::with_capacity(last.len());
        let mut still: Vec<usize> = Vec::with_capacity(active.len());
        for ((slot, &item_i), cands) in active.iter().enumerate().zip(tops) {
            let item = &mut items[item_i];
            let top: Vec<Candidate> = cands
                .into_iter()
                .map(|(acc, idx)| {
                    let token = (idx % vocab) as u32;
                    Candidate {
                        acc,
                        beam: idx / vocab,
                        token,
                        hits: p.eos_token_ids.contains(&token) || cur_len + 1 >= item.max_len,
                    }
                })
                .collect();
            // b. The next running beams: the best `k`, ending ones penalised.
            let penalised: Vec<(f32, usize)> = top
                .iter()
                .enumerate()
                .map(|(j, c)| (c.acc + if c.hits { SENTINEL } else { 0.0 }, j))
                .collect();
            let next_run = top_k_sorted(penalised, k);
            // c. Finished candidates: only those among the top `k` that just ended.
            let all_done = item.finished.iter().all(|f| f.done);
            let denom = lp_pow(cur_len + 1 - prompt_len);
            let mut merged: Vec<(f32, usize)> = item
                .finished
                .iter()
                .enumerate()
                .map(|(j, f)| (f.score, j))
                .collect();
            let mut fin_new: Vec<Finished> = Vec::with_capacity(top.len());
            for (j, c) in top.iter().enumerate() {
                let just = c.hits && j < k;
                let mut s = c.acc / denom;
                if all_done && p.early_stopping == EarlyStopping::True {
                    s += SENTINEL;
                }
                if !item.unsatisfied {
                    s += SENTINEL;
                }
                if !just {
                    s += SENTINEL;
                }
                let mut tokens = item.running[c.beam].tokens.clone();
                tokens.push(c.token);
                fin_new.push(Finished {
                    tokens,
                    score: s,
                    done: just,
                });
                merged.push((s, k + j));
            }
            let keep_fin = top_k_sorted(merged, k);
            let old_fin = std::mem::take(&mut item.finished);
            item.finished = keep_fin
                .into_iter()
                .map(|(_, j)| {
                    if j < k {
                        old_fin[j].clone()
                    } else {
                        fin_new[j - k].clone()
                    }
                })
                .collect();
            let new_running: Vec<Running> = next_run
                .iter()
                .map(|&(score, j)| {
                    let c = &top[j];
                    let mut tokens = item.running[c.beam].tokens.clone();
                    tokens.push(c.token);
                    Running { tokens, score }
                })
                .collect();
            let src_rows: Vec<usize> = next_run
                .iter()
                .map(|&(_, j)| slot * k + top[j].beam)
                .collect();
            item.running = new_running;
            // d. The early-stop heuristic, at the new length.
            let new_len = cur_len + 1;
            let best_len = if p.early_stopping == EarlyStopping::Never && p.length_penalty > 0.0 {
                item.max_len - prompt_len
            } else {
                new_len - prompt_len
            };
            let best_possible = item.running[0].score / lp_pow(best_len);
            let worst = item
                .finished
                .iter()
                .map(|f| f.score)
                .fold(f32::INFINITY, f32::min);
            let improvable = item
                .finished
                .iter()
                .any(|f| best_possible > if f.done { worst } else { SENTINEL });
            item.unsatisfied &= improvable;
            let all_hit = top.iter().all(|c| c.hits);
            if !item.is_done(p.early_stopping) && !all_hit {
                still.push(item_i);
                rows_next.extend(src_rows);
            }
        }
        if still.is_empty() {
            break;
        }
        cache.select(&rows_next)?;
        active = still;
        cur_len += 1;
    }
    Ok(items
        .into_iter()
        .map(|it| {
            let best = it.finished.into_iter().next().unwrap_or(Finished {
                tokens: vec![start],
                score: SENTINEL,
                done: false,
            });
            let ended = best
                .tokens
                .last()
                .is_some_and(|t| best.tokens.len() > 1 && p.eos_token_ids.contains(t));
            Generated {
                tokens: best.tokens,
                score: best.score,
                ended,
            }
        })
        .collect())
}

/// Top `k` of `(value, index)` pairs by value descending, lower index first on ties.
fn top_k_sorted(mut v: Vec<(f32, usize)>, k: usize) -> Vec<(f32, usize)> {
    v.sort_by_key(|&(_, i)| i);
    top_k(v.into_iter(), k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ngram_bans_follow_transformers() {
        // Bigram (5, 6) seen; the sequence ends in 5, so 6 is banned.
        assert_eq!(banned_ngram_tokens(&[2, 5, 6, 7, 5], 2), vec![6]);
        assert!(banned_ngram_tokens(&[2, 5], 3).is_empty());
        assert_eq!(banned_ngram_tokens(&[2, 5, 6, 2, 5], 3), vec![6]);
    }

    #[test]
    fn bad_words_drop_lone_eos_and_ban_after_their_prefix() {
        let r =
            TokenRules::default().with_bad_words(vec![vec![], vec![0], vec![7], vec![3, 4]], &[0]);
        assert_eq!(r.bad_words, vec![vec![7], vec![3, 4]]);
        let p = GenerationParams {
            num_beams: 1,
            max_length: MaxLength::Fixed(10),
            min_length: 0,
            length_penalty: 1.0,
            early_stopping: EarlyStopping::False,
            decoder_start_token_id: 1,
            forced_bos_token_id: None,
            forced_eos_token_id: None,
            eos_token_ids: vec![0],
            pad_token_id: 1,
            no_repeat_ngram_size: 0,
        };
        let banned = |seq: &[u32], rules: &TokenRules| {
            let mut row = vec![0f32; 8];
            let st = RowState {
                seq,
                max_len: 10,
                prompt_len: 1,
            };
            row_rule(&st, &p, rules).apply(&mut row);
            (0..8).filter(|&i| row[i].is_infinite()).collect::<Vec<_>>()
        };
        assert_eq!(banned(&[1, 2], &r), vec![7]);
        assert_eq!(banned(&[1, 3], &r), vec![4, 7]);
        // Begin-suppression applies only right after the prompt.
        let w = TokenRules {
            suppress: vec![5],
            begin_suppress: vec![6],
            bad_words: Vec::new(),
        };
        assert_eq!(banned(&[1], &w), vec![5, 6]);
        assert_eq!(banned(&[1, 2], &w), vec![5]);
    }

    #[test]
    fn source_tied_limits() {
        let m = MaxLength::Source {
            a: 1.5,
            b: 10,
            cap: 40,
        };
        assert_eq!(m.for_source(4), 16);
        assert_eq!(m.for_source(100), 40);
        assert_eq!(MaxLength::Fixed(7).for_source(100), 7);
    }
}
