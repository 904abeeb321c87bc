//! [`Shard`]: which share of a data set one of several data-parallel processes loads.

use serde::{Deserialize, Serialize};

use crate::Error;

/// Process `rank` of `world_size` loads the items `i` with `i % world_size == rank`: the
/// shards of all ranks partition the items, and their sizes differ by at most one. The
/// default, rank 0 of 1, is every item in its order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub rank: usize,
    pub world_size: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Self::single()
    }
}

impl Shard {
    /// Rank `rank` of `world_size` (`world_size >= 1`, `rank < world_size`).
    pub fn new(rank: usize, world_size: usize) -> Result<Self, Error> {
        if world_size == 0 || rank >= world_size {
            return Err(Error::Msg(format!(
                "shard: rank {rank} of world size {world_size} (need world size >= 1 and rank < world size)"
            )));
        }
        Ok(Self { rank, world_size })
    }

    /// The one process of a single-process run: every item.
    pub fn single() -> Self {
        Self {
            rank: 0,
            world_size: 1,
        }
    }

    /// Whether this shard holds every item.
    pub fn is_single(&self) -> bool {
        self.world_size <= 1
    }

    /// Whether item `i` belongs to this shard.
    pub fn owns(&self, i: usize) -> bool {
        i % self.world_size.max(1) == self.rank
    }

    /// The indices of this shard's items among `n`, ascending.
    pub fn indices(&self, n: usize) -> impl Iterator<Item = usize> {
        (self.rank..n).step_by(self.world_size.max(1))
    }

    /// This shard's items of `items`, in their order.
    pub fn select<T>(&self, items: Vec<T>) -> Vec<T> {
        if self.is_single() {
            return items;
        }
        items
            .into_iter()
            .enumerate()
            .filter(|(i, _)| self.owns(*i))
            .map(|(_, x)| x)
            .collect()
    }
}
