//! `draw verify`: recomputes a raffle's winners from its log alone and compares them with
//! the winners it recorded.
//!
//! The inputs are all in the log: the prizes and the seed's commitment (`RaffleCreated`),
//! the revealed seed and the public entropy (`WinnersDrawn`), and the issued tickets, folded
//! from the events with three rules a third party can reimplement (docs/AUDIT.md):
//! `TicketsIssued` issues its `numbers` to its order at its `at` (whole seconds);
//! `OrderRefunded` and `RaffleCancelled` take an order's (all orders') tickets back. The
//! fold deliberately does not reuse the aggregate, so it checks the aggregate too.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use tombola_domain::draw::{commitment_of, draw_winners, Winner};
use tombola_domain::{Prize, RaffleEvent};
use utoipa::ToSchema;
use uuid::Uuid;

use super::chain::{ChainBreak, ChainCheck, Expectations};
use super::log::LogReader;

/// One prize's winner: the recorded one, or the recomputed one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct DrawnWinner {
    pub prize_index: u32,
    pub prize: String,
    pub number: u32,
    pub order_id: Uuid,
}

impl From<&Winner> for DrawnWinner {
    fn from(winner: &Winner) -> Self {
        Self {
            prize_index: winner.prize_index,
            prize: winner.prize.clone(),
            number: winner.number,
            order_id: winner.order_id,
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DrawVerification {
    pub raffle_id: Uuid,
    /// The draw algorithm's name and version (docs/AUDIT.md).
    pub algorithm: &'static str,
    pub commitment: Option<String>,
    pub drawn: bool,
    pub seed: Option<String>,
    pub public_entropy: Option<String>,
    /// SHA-256 of the revealed seed equals the commitment published at creation.
    pub seed_matches_commitment: Option<bool>,
    /// Tickets issued when the draw happened: the candidates.
    pub issued_tickets: u64,
    pub recorded: Vec<DrawnWinner>,
    pub recomputed: Vec<DrawnWinner>,
    /// The log's hash chain held up to the draw (a draw on an edited log proves nothing).
    pub chain_intact: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain_break: Option<ChainBreak>,
    /// Drawn, the seed matches its commitment, the chain holds, and the recomputed winners
    /// are exactly the recorded ones.
    pub verified: bool,
}

pub const ALGORITHM: &str = "tombola-draw-v1";

/// Issued numbers with their issue time, and each number's order.
type Candidates = (Vec<(u32, DateTime<Utc>)>, HashMap<u32, Uuid>);

/// Folds the issued tickets from events, independently of the aggregate.
#[derive(Default)]
struct IssuedTickets {
    by_order: HashMap<Uuid, (Vec<u32>, DateTime<Utc>)>,
}

impl IssuedTickets {
    fn apply(&mut self, event: &RaffleEvent) {
        match event {
            RaffleEvent::TicketsIssued {
                order_id,
                numbers,
                at,
                ..
            } => {
                self.by_order.insert(*order_id, (numbers.clone(), *at));
            }
            RaffleEvent::OrderRefunded { order_id, .. } => {
                self.by_order.remove(order_id);
            }
            RaffleEvent::RaffleCancelled { .. } => self.by_order.clear(),
            _ => {}
        }
    }

    fn count(&self) -> u64 {
        self.by_order.values().map(|(n, _)| n.len() as u64).sum()
    }

    /// Candidates with their issue time, and each number's order.
    fn candidates(&self) -> Candidates {
        let mut issued = Vec::new();
        let mut owners = HashMap::new();
        for (order_id, (numbers, at)) in &self.by_order {
            for &number in numbers {
                issued.push((number, *at));
                owners.insert(number, *order_id);
            }
        }
        (issued, owners)
    }
}

/// Reads the raffle's log once: chain, inputs and recorded winners; then draws again.
pub async fn verify_draw(pool: &PgPool, raffle_id: Uuid) -> Result<DrawVerification, sqlx::Error> {
    let expectations = Expectations::default();
    let mut chain = ChainCheck::new(raffle_id, &expectations);
    let mut chain_break = None;
    let mut reader = LogReader::new(pool.clone(), raffle_id);
    let mut prizes: Vec<Prize> = Vec::new();
    let mut commitment = None;
    let mut issued = IssuedTickets::default();
    let mut drawn = None;
    while let Some(raw) = reader.next().await? {
        if let Err(error) = chain.push(&raw) {
            chain_break = Some(error);
            break;
        }
        if drawn.is_some() {
            continue; // later events (refunds after the draw) do not change its inputs
        }
        let event: RaffleEvent = match serde_json::from_str(&raw.payload) {
            Ok(event) => event,
            Err(error) => {
                chain_break = Some(ChainBreak::Unreadable {
                    sequence: raw.sequence,
                    reason: format!("payload: {error}"),
                });
                break;
            }
        };
        match &event {
            RaffleEvent::RaffleCreated { config, .. } => {
                prizes = config.prizes.clone();
                commitment = Some(config.draw_commitment.clone());
            }
            RaffleEvent::WinnersDrawn {
                seed,
                public_entropy,
                winners,
                ..
            } => drawn = Some((seed.clone(), public_entropy.clone(), winners.clone())),
            other => issued.apply(other),
        }
    }
    if chain_break.is_none() {
        chain_break = chain.finish().err();
    }
    let (seed, public_entropy, recorded, recomputed) = match drawn {
        None => (None, None, Vec::new(), Vec::new()),
        Some((seed, entropy, winners)) => {
            let (candidates, owners) = issued.candidates();
            let recomputed = draw_winners(&seed, &entropy, &prizes, &candidates)
                .into_iter()
                .zip(&prizes)
                .enumerate()
                .filter_map(|(index, (number, prize))| {
                    let number = number?;
                    Some(DrawnWinner {
                        prize_index: index as u32,
                        prize: prize.name.clone(),
                        number,
                        order_id: owners[&number],
                    })
                })
                .collect();
            let recorded = winners.iter().map(DrawnWinner::from).collect();
            (Some(seed), Some(entropy), recorded, recomputed)
        }
    };
    let seed_matches_commitment = match (&seed, &commitment) {
        (Some(seed), Some(commitment)) => {
            Some(commitment_of(seed).eq_ignore_ascii_case(commitment))
        }
        _ => None,
    };
    let chain_intact = chain_break.is_none();
    let verified = seed.is_some()
        && seed_matches_commitment == Some(true)
        && chain_intact
        && recorded == recomputed;
    Ok(DrawVerification {
        raffle_id,
        algorithm: ALGORITHM,
        commitment,
        drawn: seed.is_some(),
        seed,
        public_entropy,
        seed_matches_commitment,
        issued_tickets: issued.count(),
        recorded,
        recomputed,
        chain_intact,
        chain_break,
        verified,
    })
}
