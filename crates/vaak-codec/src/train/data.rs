//! Training audio: clips decoded and resampled once into memory, a deterministic held-out
//! split, and seeded random crops with augmentation.
//!
//! Every random draw (which clip, where, which augmentation) comes from the caller's
//! [`TrainRng`], so a resumed run continues with exactly the crops it would have seen.
//!
//! For data parallelism each process loads its [`Shard`] of the training clips
//! ([`TrainData::load_shard`], [`TrainData::from_clips_shard`]); the held-out split is made
//! before sharding, so every rank validates on the same clips. Rank 0 of 1 (what
//! [`TrainData::load`] and [`TrainData::from_clips`] use) is every clip.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use rand::{Rng, RngCore};
use vaak_audio::augment::{AugmentConfig, Augmenter};
use vaak_audio::io::{decode_file, Audio};
use vaak_nn::train::{Shard, TrainRng};

use super::TrainError;

/// One clip at the training rate.
#[derive(Clone, Debug)]
pub struct Clip {
    pub path: PathBuf,
    pub samples: Vec<f32>,
}

/// Training and validation clips.
#[derive(Clone, Debug)]
pub struct TrainData {
    train: Vec<Clip>,
    val: Vec<Clip>,
    /// Cumulative training lengths, for length-weighted clip picks.
    cumulative: Vec<u64>,
    sample_rate: u32,
    /// Whether the validation clips are held out (else they are training clips).
    held_out: bool,
}

/// FNV-1a, for a split that depends on the path only (not on the listing order).
fn path_hash(p: &Path) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in p.to_string_lossy().as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl TrainData {
    /// Decodes `paths` (any format vaak-audio reads) to mono at `sample_rate`. A file that
    /// does not decode, or is shorter than `min_samples`, is skipped with a warning naming
    /// it; no usable clip at all is an error. See [`TrainData::from_clips`] for the split.
    pub fn load(
        paths: &[PathBuf],
        sample_rate: u32,
        min_samples: usize,
        val_clips: usize,
    ) -> Result<Self, TrainError> {
        Self::load_shard(paths, sample_rate, min_samples, val_clips, Shard::default())
    }

    /// [`TrainData::load`] keeping `shard`'s part of the training clips.
    pub fn load_shard(
        paths: &[PathBuf],
        sample_rate: u32,
        min_samples: usize,
        val_clips: usize,
        shard: Shard,
    ) -> Result<Self, TrainError> {
        let mut clips = Vec::with_capacity(paths.len());
        let mut short = 0usize;
        let mut failed = 0usize;
        for p in paths {
            match decode_file(p, Some(sample_rate)) {
                Ok(Audio { samples, .. }) if samples.len() >= min_samples => clips.push(Clip {
                    path: p.clone(),
                    samples,
                }),
                Ok(a) => {
                    short += 1;
                    tracing::warn!(
                        "{}: {:.2} s is shorter than the {:.2} s crop; skipped",
                        p.display(),
                        a.samples.len() as f64 / sample_rate as f64,
                        min_samples as f64 / sample_rate as f64
                    );
                }
                Err(e) => {
                    failed += 1;
                    tracing::warn!("{e}; skipped");
                }
            }
        }
        if clips.is_empty() {
            return Err(TrainError::NoData(format!(
                "{} file(s) given: {short} shorter than the crop, {failed} unreadable",
                paths.len()
            )));
        }
        Self::from_clips_shard(clips, sample_rate, min_samples, val_clips, shard)
    }

    /// Splits `clips` (at `sample_rate`): the `val_clips` whose path hashes are smallest are
    /// held out for validation, as long as at least one clip is left to train on; otherwise
    /// (too few clips) validation runs on the first training clips and says so.
    pub fn from_clips(
        clips: Vec<Clip>,
        sample_rate: u32,
        min_samples: usize,
        val_clips: usize,
    ) -> Result<Self, TrainError> {
        Self::from_clips_shard(clips, sample_rate, min_samples, val_clips, Shard::default())
    }

    /// [`TrainData::from_clips`] keeping `shard`'s part of the training clips (in path order,
    /// after the held-out split); a shard left without a clip is an error.
    pub fn from_clips_shard(
        mut clips: Vec<Clip>,
        sample_rate: u32,
        min_samples: usize,
        val_clips: usize,
        shard: Shard,
    ) -> Result<Self, TrainError> {
        clips.retain(|c| c.samples.len() >= min_samples.max(1));
        if clips.is_empty() {
            return Err(TrainError::NoData(format!(
                "no clip has the {min_samples} samples a crop needs"
            )));
        }
        clips.sort_by(|a, b| a.path.cmp(&b.path));
        let (train, val, held_out) = if val_clips > 0 && clips.len() > val_clips {
            let mut order: Vec<usize> = (0..clips.len()).collect();
            order.sort_by_key(|&i| (path_hash(&clips[i].path), i));
            let mut is_val = vec![false; clips.len()];
            for &i in &order[..val_clips] {
                is_val[i] = true;
            }
            let (mut train, mut val) = (Vec::new(), Vec::new());
            for (c, v) in clips.into_iter().zip(is_val) {
                if v {
                    val.push(c)
                } else {
                    train.push(c)
                }
            }
            (train, val, true)
        } else {
            if val_clips > 0 {
                tracing::warn!(
                    "only {} clip(s): validation runs on training clips (not held out)",
                    clips.len()
                );
            }
            let val = clips.iter().take(val_clips).cloned().collect();
            (clips, val, false)
        };
        let n_train = train.len();
        let train = shard.select(train);
        if train.is_empty() {
            return Err(TrainError::NoData(format!(
                "shard {} of {} has none of the {n_train} training clip(s)",
                shard.rank, shard.world_size
            )));
        }
        let mut cumulative = Vec::with_capacity(train.len());
        let mut total = 0u64;
        for c in &train {
            total += c.samples.len() as u64;
            cumulative.push(total);
        }
        Ok(Self {
            train,
            val,
            cumulative,
            sample_rate,
            held_out,
        })
    }

    pub fn train_clips(&self) -> &[Clip] {
        &self.train
    }

    pub fn val_clips(&self) -> &[Clip] {
        &self.val
    }

    /// Whether the validation clips are disjoint from the training clips.
    pub fn val_held_out(&self) -> bool {
        self.held_out
    }

    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// Seconds of training audio.
    pub fn train_seconds(&self) -> f64 {
        *self.cumulative.last().unwrap_or(&0) as f64 / self.sample_rate as f64
    }

    /// A batch `[batch, 1, segment]` of random crops: a clip picked with probability
    /// proportional to its length, a uniform offset, and with probability `augment_prob` the
    /// effects of `augment` (speed, pitch, noise at an SNR, gain; an augmenter seeded from
    /// `rng` per crop). Speed changes the length, so a crop is cut long enough first and
    /// trimmed (or zero-padded) to `segment` after.
    pub fn sample_batch(
        &self,
        rng: &mut TrainRng,
        batch: usize,
        segment: usize,
        augment_prob: f64,
        augment: &AugmentConfig,
        device: &Device,
    ) -> Result<Tensor, TrainError> {
        let max_speed = if augment_prob > 0.0 && augment.speed_prob > 0.0 {
            augment.speed_factors.iter().copied().fold(1.0f64, f64::max)
        } else {
            1.0
        };
        let mut out = Vec::with_capacity(batch * segment);
        for _ in 0..batch {
            let total = *self.cumulative.last().expect("at least one clip");
            let pos = rng.random_range(0..total);
            let ci = self.cumulative.partition_point(|&c| c <= pos);
            let clip = &self.train[ci];
            let n = clip.samples.len();
            let want = ((segment as f64 * max_speed).ceil() as usize + 1).min(n);
            let off = rng.random_range(0..=n - want);
            let crop = &clip.samples[off..off + want];
            let augmented = if augment_prob > 0.0 && rng.random::<f64>() < augment_prob {
                let mut a = Augmenter::with_config(augment.clone(), rng.next_u64())?;
                a.apply(&Audio::new(crop.to_vec(), self.sample_rate))?
                    .samples
            } else {
                crop.to_vec()
            };
            let take = augmented.len().min(segment);
            out.extend_from_slice(&augmented[..take]);
            out.extend(std::iter::repeat_n(0f32, segment - take));
        }
        Ok(Tensor::from_vec(out, (batch, 1, segment), device)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clip(name: &str, n: usize) -> Clip {
        Clip {
            path: PathBuf::from(name),
            samples: (0..n).map(|i| ((i % 100) as f32) / 100.0).collect(),
        }
    }

    #[test]
    fn split_is_deterministic_and_disjoint() {
        let clips: Vec<Clip> = (0..10).map(|i| clip(&format!("c{i}.wav"), 2000)).collect();
        let mut rev = clips.clone();
        rev.reverse();
        let a = TrainData::from_clips(clips, 16000, 1000, 2).unwrap();
        let b = TrainData::from_clips(rev, 16000, 1000, 2).unwrap();
        let names = |c: &[Clip]| c.iter().map(|c| c.path.clone()).collect::<Vec<_>>();
        assert_eq!(names(a.val_clips()), names(b.val_clips()));
        assert_eq!(a.val_clips().len(), 2);
        assert_eq!(a.train_clips().len(), 8);
        assert!(a.val_held_out());
        for v in a.val_clips() {
            assert!(!names(a.train_clips()).contains(&v.path));
        }
    }

    #[test]
    fn crops_are_seeded_and_shaped() {
        let clips = vec![
            clip("a.wav", 5000),
            clip("b.wav", 3000),
            clip("short.wav", 10),
        ];
        let d = TrainData::from_clips(clips, 16000, 1000, 0).unwrap();
        assert_eq!(d.train_clips().len(), 2, "the short clip is dropped");
        let aug = AugmentConfig::default();
        let mut r1 = TrainRng::new(7);
        let mut r2 = TrainRng::new(7);
        let x1 = d
            .sample_batch(&mut r1, 3, 960, 1.0, &aug, &Device::Cpu)
            .unwrap();
        let x2 = d
            .sample_batch(&mut r2, 3, 960, 1.0, &aug, &Device::Cpu)
            .unwrap();
        assert_eq!(x1.dims(), [3, 1, 960]);
        let diff = (x1 - x2).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
        assert!(TrainData::from_clips(vec![clip("s", 5)], 16000, 100, 0).is_err());
    }

    #[test]
    fn shards_split_the_training_clips_and_share_validation() {
        let clips: Vec<Clip> = (0..10).map(|i| clip(&format!("c{i}.wav"), 2000)).collect();
        let whole = TrainData::from_clips(clips.clone(), 16000, 1000, 2).unwrap();
        let names = |c: &[Clip]| c.iter().map(|c| c.path.clone()).collect::<Vec<_>>();
        let mut seen = Vec::new();
        for rank in 0..3 {
            let shard = Shard::new(rank, 3).unwrap();
            let d = TrainData::from_clips_shard(clips.clone(), 16000, 1000, 2, shard).unwrap();
            assert_eq!(names(d.val_clips()), names(whole.val_clips()));
            seen.extend(names(d.train_clips()));
        }
        seen.sort();
        assert_eq!(seen, names(whole.train_clips()));
        let one = TrainData::from_clips_shard(clips.clone(), 16000, 1000, 2, Shard::default());
        assert_eq!(
            names(one.unwrap().train_clips()),
            names(whole.train_clips())
        );
        let far = Shard::new(9, 10).unwrap();
        assert!(TrainData::from_clips_shard(clips, 16000, 1000, 2, far).is_err());
    }
}
