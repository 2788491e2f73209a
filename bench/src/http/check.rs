//! After a run: the raffle's committed log replayed by a model that shares nothing with the
//! aggregate (a map of number → holding order), and compared with what the buyers were told.
//!
//! `oversold` counts numbers reserved or issued while another live order held them: every
//! `TicketsReserved` must take numbers nobody holds, every `TicketsIssued` numbers its own
//! order holds or nobody does (a late payment). Releases, expiries and refunds that return
//! numbers to the pool free them. The aggregate's own replay must also add up (available +
//! reserved + sold = tickets). `reserved_events` is then held against the 201s the buyers
//! counted: no buyer may have been told of a hold the log does not have, and the log may
//! have more only by as many as the answers that were lost (transport errors, timeouts).

use std::collections::HashMap;

use tombola::store::Store;
use tombola_domain::{Raffle, RaffleEvent};
use uuid::Uuid;

#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct LogCheck {
    /// Numbers reserved or issued while another live order held them (must be 0).
    pub oversold: u64,
    pub reserved_events: u64,
    pub issued_events: u64,
    pub released_numbers: u64,
    pub expired_numbers: u64,
}

/// Replays `raffle_id`'s log; `Err` when the aggregate's counts do not add up.
pub async fn replay(store: &Store, raffle_id: Uuid, tickets: u32) -> Result<LogCheck, String> {
    let payloads: Vec<String> = sqlx::query_scalar(
        "SELECT payload::text FROM events \
         WHERE aggregate_type = 'raffle' AND aggregate_id = $1 ORDER BY sequence",
    )
    .bind(raffle_id.to_string())
    .fetch_all(store.pool())
    .await
    .map_err(|e| e.to_string())?;
    let mut raffle = Raffle::default();
    let mut holder: HashMap<u32, Uuid> = HashMap::new();
    let mut check = LogCheck::default();
    let free = |holder: &mut HashMap<u32, Uuid>, order: Uuid, numbers: &[u32]| {
        let mut freed = 0;
        for n in numbers {
            if holder.get(n) == Some(&order) {
                holder.remove(n);
                freed += 1;
            }
        }
        freed
    };
    for payload in &payloads {
        let event: RaffleEvent = serde_json::from_str(payload).map_err(|e| e.to_string())?;
        raffle.apply_event(&event);
        match &event {
            RaffleEvent::TicketsReserved {
                order_id, numbers, ..
            } => {
                check.reserved_events += 1;
                for n in numbers {
                    if holder.insert(*n, *order_id).is_some() {
                        check.oversold += 1;
                    }
                }
            }
            RaffleEvent::ReservationReleased {
                order_id, numbers, ..
            } => check.released_numbers += free(&mut holder, *order_id, numbers),
            RaffleEvent::HoldsExpired { holds, .. } => {
                for hold in holds {
                    check.expired_numbers += free(&mut holder, hold.order_id, &hold.numbers);
                }
            }
            RaffleEvent::TicketsIssued {
                order_id, numbers, ..
            } => {
                check.issued_events += 1;
                for n in numbers {
                    match holder.insert(*n, *order_id) {
                        Some(other) if other != *order_id => check.oversold += 1,
                        _ => {}
                    }
                }
            }
            RaffleEvent::OrderRefunded {
                order_id,
                numbers,
                returned_to_pool: true,
                ..
            } => {
                free(&mut holder, *order_id, numbers);
            }
            _ => {}
        }
    }
    let total = raffle.available_count() + raffle.reserved_count() + raffle.sold_count();
    if total != u64::from(tickets) {
        return Err(format!("counts do not add up: {total} != {tickets}"));
    }
    Ok(check)
}

/// Whether the buyers' 201s agree with the log: `Err` says how not.
pub fn answers_agree(check: &LogCheck, created: u64, lost: u64) -> Result<(), String> {
    if created > check.reserved_events {
        return Err(format!(
            "buyers were told of {created} holds, the log has {}",
            check.reserved_events
        ));
    }
    if check.reserved_events > created + lost {
        return Err(format!(
            "the log has {} holds, buyers were told of {created} and lost {lost} answers",
            check.reserved_events
        ));
    }
    Ok(())
}
