//! The verifiable draw, as a pure function anyone can re-run.
//!
//! Algorithm (version 1; it never changes, a new one would get a new version):
//! 1. Before sales open, the organizer publishes `commitment = hex(SHA-256(seed))`, with the
//!    seed's UTF-8 bytes hashed.
//! 2. At the draw the seed is revealed and mixed with public entropy chosen after sales close
//!    (e.g. a lottery result): `key = SHA-256(seed ‖ public_entropy)` over their UTF-8 bytes.
//! 3. A ChaCha20 stream (RFC 8439 block function, 20 rounds, as `rand_chacha::ChaCha20Rng::
//!    from_seed(key)`: stream 0, counter 0) yields 64-bit words (`next_u64`: two consecutive
//!    32-bit output words, little-endian, the first one low).
//! 4. Prizes are drawn in the order listed. A prize's candidates are the issued ticket numbers,
//!    sorted ascending; an early-bird prize keeps only tickets whose issue time, in whole Unix
//!    seconds, is below its cutoff's. `uniform(n)`: take words until one is below
//!    `floor((2^64 - 1) / n) * n`, answer it modulo `n` (no modulo bias). The candidate at that
//!    index wins unless it already won a previous prize, in which case draw again. A prize
//!    whose candidates have all won stays without a winner.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::config::Prize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Winner {
    pub prize_index: u32,
    pub prize: String,
    pub number: u32,
    pub order_id: Uuid,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DrawError {
    #[error("the seed does not match the draw commitment")]
    SeedMismatch,
}

/// `hex(SHA-256(seed))`, the value an organizer publishes before sales open.
pub fn commitment_of(seed: &str) -> String {
    hex::encode(Sha256::digest(seed.as_bytes()))
}

pub fn verify_seed(seed: &str, commitment: &str) -> Result<(), DrawError> {
    if commitment_of(seed).eq_ignore_ascii_case(commitment.trim()) {
        Ok(())
    } else {
        Err(DrawError::SeedMismatch)
    }
}

/// Winning numbers, one `Option` per prize in order. `issued` holds every issued ticket
/// with the time it was issued, in any order.
pub fn draw_winners(
    seed: &str,
    public_entropy: &str,
    prizes: &[Prize],
    issued: &[(u32, DateTime<Utc>)],
) -> Vec<Option<u32>> {
    let mut key = Sha256::new();
    key.update(seed.as_bytes());
    key.update(public_entropy.as_bytes());
    let mut rng = ChaCha20Rng::from_seed(key.finalize().into());

    let mut candidates_by_cutoff: HashMap<Option<i64>, Vec<u32>> = HashMap::new();
    let mut won = HashSet::new();
    prizes
        .iter()
        .map(|prize| {
            let cutoff = prize.early_bird_cutoff.map(|c| c.timestamp());
            let candidates = candidates_by_cutoff.entry(cutoff).or_insert_with(|| {
                let mut numbers: Vec<u32> = issued
                    .iter()
                    .filter(|(_, at)| cutoff.is_none_or(|c| at.timestamp() < c))
                    .map(|(n, _)| *n)
                    .collect();
                numbers.sort_unstable();
                numbers
            });
            if candidates.iter().all(|n| won.contains(n)) {
                return None;
            }
            loop {
                let number = candidates[uniform(&mut rng, candidates.len() as u64) as usize];
                if won.insert(number) {
                    return Some(number);
                }
            }
        })
        .collect()
}

fn uniform(rng: &mut ChaCha20Rng, n: u64) -> u64 {
    let zone = (u64::MAX / n) * n;
    loop {
        let word = rng.next_u64();
        if word < zone {
            return word % n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn prize(name: &str) -> Prize {
        Prize {
            name: name.into(),
            early_bird_cutoff: None,
        }
    }

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, 0).unwrap()
    }

    #[test]
    fn commitment_is_hex_sha256() {
        assert_eq!(
            commitment_of("seed"),
            "19b25856e1c150ca834cffc8b59b23adbd0ec0389e58eb22b3b64768098d002b"
        );
        assert!(verify_seed("seed", &commitment_of("seed").to_uppercase()).is_ok());
        assert_eq!(
            verify_seed("other", &commitment_of("seed")),
            Err(DrawError::SeedMismatch)
        );
    }

    #[test]
    fn the_draw_depends_only_on_seed_entropy_and_the_issued_set() {
        let issued: Vec<_> = (1..=500).map(|n| (n, at(1_700_000_000))).collect();
        let mut shuffled = issued.clone();
        shuffled.reverse();
        let prizes = [prize("a"), prize("b"), prize("c")];
        let first = draw_winners("s", "e", &prizes, &issued);
        assert_eq!(first, draw_winners("s", "e", &prizes, &shuffled));
        assert_ne!(first, draw_winners("s", "e2", &prizes, &issued));
        let distinct: HashSet<_> = first.iter().flatten().collect();
        assert_eq!(distinct.len(), 3);
    }

    #[test]
    fn early_bird_prizes_only_draw_early_tickets() {
        let issued: Vec<_> = (1..=100).map(|n| (n, at(1_000 + i64::from(n)))).collect();
        let early = Prize {
            name: "early".into(),
            early_bird_cutoff: Some(at(1_011)),
        };
        for entropy in ["a", "b", "c", "d", "e"] {
            let winners = draw_winners("s", entropy, std::slice::from_ref(&early), &issued);
            assert!(winners[0].unwrap() <= 10, "{winners:?}");
        }
    }

    #[test]
    fn prizes_beyond_the_tickets_stay_unawarded() {
        let issued = [(7, at(0)), (9, at(0))];
        let winners = draw_winners("s", "e", &[prize("a"), prize("b"), prize("c")], &issued);
        assert_eq!(winners.iter().flatten().count(), 2);
        assert_eq!(winners[2], None);
    }
}
