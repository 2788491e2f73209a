//! Where a reservation's time goes: choosing random free numbers.
//!
//! `TicketPool::pick_random` draws `quantity` distinct ranks below the free count
//! (`rand::seq::index::sample`) and turns each into a number with `RoaringBitmap::select`,
//! which walks the containers and then scans a 1024-word bitmap container word by word. This
//! replays the first orders of the same sale on a full-size free bitmap, the domain's way and
//! an alternative (rejection sampling: draw a number in range, keep it if free, falling back
//! to rank/select once fewer than 1/16 of the numbers are free), each under its own timer.

use rand::{Rng as _, RngCore, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use roaring::RoaringBitmap;

use super::Step;
use crate::sys;

/// The domain's way (`tickets.rs`): ranks, then select.
fn pick_by_rank(free: &RoaringBitmap, quantity: u32, rng: &mut dyn RngCore) -> Vec<u32> {
    let ranks = rand::seq::index::sample(rng, free.len() as usize, quantity as usize);
    let mut numbers: Vec<u32> = ranks
        .iter()
        .map(|rank| free.select(rank as u32).expect("rank below the free count"))
        .collect();
    numbers.sort_unstable();
    numbers
}

/// Rejection sampling: uniform over the free numbers too, and O(1) expected while at least
/// 1/16 of the range is free.
fn pick_by_rejection(
    free: &RoaringBitmap,
    first: u32,
    count: u32,
    quantity: u32,
    rng: &mut dyn RngCore,
) -> Vec<u32> {
    if free.len() * 16 < u64::from(count) {
        return pick_by_rank(free, quantity, rng);
    }
    let mut numbers = Vec::with_capacity(quantity as usize);
    while numbers.len() < quantity as usize {
        let n = first + rng.random_range(0..count);
        if free.contains(n) && !numbers.contains(&n) {
            numbers.push(n);
        }
    }
    numbers.sort_unstable();
    numbers
}

/// Times the first `orders` orders of `per_order` numbers out of `tickets`, both ways.
pub(crate) fn profile(tickets: u32, per_order: u32, orders: u64, seed: u64) -> Vec<Step> {
    let orders = orders.min(u64::from(tickets.div_ceil(per_order)));
    let run = |by_rank: bool| {
        let mut free = RoaringBitmap::new();
        free.insert_range(1..=tickets);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let ((), span) = sys::span(|| {
            for _ in 0..orders {
                let quantity = (per_order as u64).min(free.len()) as u32;
                let numbers = if by_rank {
                    pick_by_rank(&free, quantity, &mut rng)
                } else {
                    pick_by_rejection(&free, 1, tickets, quantity, &mut rng)
                };
                for n in numbers {
                    free.remove(n);
                }
            }
        });
        span
    };
    let by_rank = run(true);
    let by_rejection = run(false);
    vec![
        Step::new(
            "pick_by_rank_and_select",
            by_rank,
            0,
            true,
            "TicketPool::pick_random + hold: index::sample, RoaringBitmap::select per rank, \
             remove; first orders of the sale on the full-size bitmap",
        ),
        Step::new(
            "alt_pick_by_rejection_sampling",
            by_rejection,
            0,
            false,
            "draw in range, keep if free (rank/select only below 1/16 free), remove; same \
             orders",
        ),
    ]
}
