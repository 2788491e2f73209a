//! Which numbers are free, held or issued, as roaring bitmaps.
//!
//! Two sets are kept, `free` and `issued`; held = neither. A fully sold 10M raffle costs a
//! few MB here, and random selection is rank/select over `free`, so drawing 10 numbers out of
//! the last 10 free ones among 10M costs the same as out of 10M.

use rand::{Rng, RngCore};
use roaring::RoaringBitmap;
use serde::Serialize;

use crate::errors::RaffleError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TicketState {
    Available,
    Reserved,
    Sold,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct TicketPool {
    pub(crate) free: RoaringBitmap,
    pub(crate) issued: RoaringBitmap,
    /// The raffle's numbers, `first..=last`.
    pub(crate) first: u32,
    pub(crate) last: u32,
}

/// Below one free number in this many, random picks switch from drawing-and-checking to
/// rank/select (measured: drawing is ~10× cheaper while free numbers are plentiful).
const REJECTION_SAMPLING_MAX_TRIES: u64 = 16;

impl TicketPool {
    pub fn new(first: u32, last: u32) -> Self {
        let mut free = RoaringBitmap::new();
        free.insert_range(first..=last);
        Self {
            free,
            issued: RoaringBitmap::new(),
            first,
            last,
        }
    }

    pub fn state(&self, number: u32) -> TicketState {
        if self.free.contains(number) {
            TicketState::Available
        } else if self.issued.contains(number) {
            TicketState::Sold
        } else {
            TicketState::Reserved
        }
    }

    pub fn free_count(&self) -> u64 {
        self.free.len()
    }

    pub fn issued_count(&self) -> u64 {
        self.issued.len()
    }

    /// The requested numbers that are not free, in request order.
    pub fn taken<'a>(&self, numbers: impl IntoIterator<Item = &'a u32>) -> Vec<u32> {
        numbers
            .into_iter()
            .copied()
            .filter(|n| !self.free.contains(*n))
            .collect()
    }

    /// `quantity` distinct free numbers, uniformly at random, ascending.
    pub fn pick_random(
        &self,
        quantity: u32,
        rng: &mut dyn RngCore,
    ) -> Result<Vec<u32>, RaffleError> {
        let available = self.free.len() as u32;
        if quantity > available {
            return Err(RaffleError::NotEnoughTickets {
                requested: quantity,
                available,
            });
        }
        let span = u64::from(self.last - self.first) + 1;
        let plentiful = u64::from(available) * REJECTION_SAMPLING_MAX_TRIES >= span
            && u64::from(quantity) * 4 <= u64::from(available);
        let mut numbers = if plentiful {
            self.pick_by_rejection(quantity as usize, rng)
        } else {
            rand::seq::index::sample(rng, available as usize, quantity as usize)
                .iter()
                .map(|rank| {
                    self.free
                        .select(rank as u32)
                        .expect("rank is below the free count")
                })
                .collect()
        };
        numbers.sort_unstable();
        Ok(numbers)
    }

    /// Uniform over the free numbers: draw uniformly over the whole range and keep free,
    /// not yet picked ones. Only while at least 1/16 of the range is free and the request
    /// is at most a quarter of what is free, so few draws are wasted.
    fn pick_by_rejection(&self, quantity: usize, rng: &mut dyn RngCore) -> Vec<u32> {
        let mut picked = Vec::with_capacity(quantity);
        let mut seen = std::collections::HashSet::new();
        while picked.len() < quantity {
            let number = rng.random_range(self.first..=self.last);
            let fresh = if quantity <= 32 {
                !picked.contains(&number)
            } else {
                seen.insert(number)
            };
            if fresh && self.free.contains(number) {
                picked.push(number);
            }
        }
        picked
    }

    pub fn hold(&mut self, numbers: &[u32]) {
        for n in numbers {
            self.free.remove(*n);
        }
    }

    /// Held → free.
    pub fn release(&mut self, numbers: impl IntoIterator<Item = u32>) {
        for n in numbers {
            self.free.insert(n);
        }
    }

    /// Held → issued.
    pub fn issue(&mut self, numbers: &[u32]) {
        for n in numbers {
            self.free.remove(*n);
            self.issued.insert(*n);
        }
    }

    /// Issued → free.
    pub fn return_issued(&mut self, numbers: impl IntoIterator<Item = u32>) {
        for n in numbers {
            self.issued.remove(n);
            self.free.insert(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn random_picks_are_distinct_free_numbers() {
        let mut pool = TicketPool::new(1, 1000);
        pool.hold(&(1..=990).collect::<Vec<_>>());
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let picked = pool.pick_random(10, &mut rng).unwrap();
        assert_eq!(picked, (991..=1000).collect::<Vec<_>>());
        assert_eq!(
            pool.pick_random(11, &mut rng),
            Err(RaffleError::NotEnoughTickets {
                requested: 11,
                available: 10
            })
        );
    }

    #[test]
    fn few_free_numbers_among_ten_million_are_found_by_select() {
        let mut pool = TicketPool::new(0, 9_999_999);
        pool.free.remove_range(0..9_999_990);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let picked = pool.pick_random(3, &mut rng).unwrap();
        assert!(picked.iter().all(|n| *n >= 9_999_990));
    }

    #[test]
    fn random_picks_are_roughly_uniform() {
        let pool = TicketPool::new(0, 9);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut counts = [0u32; 10];
        for _ in 0..10_000 {
            counts[pool.pick_random(1, &mut rng).unwrap()[0] as usize] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
    }
}
