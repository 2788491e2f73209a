//! Checks run after every step: the aggregate against the model, and invariants that hold
//! whatever the model says.

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use tombola_domain::{draw, OrderStatus, Raffle, RaffleEvent, TicketState};
use uuid::Uuid;

use crate::model::{fail, Model};
use crate::{slot, SLOTS};

// ----- invariants -----

/// The aggregate's observable state equals the model's.
pub(crate) fn check_against_model(raffle: &Raffle, model: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(raffle.status(), model.status);
    for i in 0..SLOTS {
        prop_assert_eq!(
            raffle.order(slot(i)),
            model.view(slot(i)),
            "order slot {}",
            i
        );
    }
    prop_assert_eq!(raffle.order_count(), model.orders.len());
    let first = model.cfg.first_number;
    let last = first + model.cfg.ticket_count - 1;
    for n in first.saturating_sub(1)..=last + 1 {
        let expected = if !model.in_range(n) {
            None
        } else if model.free.contains(&n) {
            Some(TicketState::Available)
        } else if model.sold.contains(&n) {
            Some(TicketState::Sold)
        } else {
            Some(TicketState::Reserved)
        };
        prop_assert_eq!(raffle.ticket_state(n), expected, "ticket {}", n);
    }
    prop_assert_eq!(raffle.available_count(), model.free.len() as u64);
    prop_assert_eq!(raffle.reserved_count(), model.held.len() as u64);
    prop_assert_eq!(raffle.sold_count(), model.sold.len() as u64);
    let next_expiry = model
        .orders
        .values()
        .filter(|o| o.status == OrderStatus::Reserved)
        .map(|o| o.expires_at)
        .min();
    prop_assert_eq!(raffle.next_expiry(), next_expiry);
    prop_assert_eq!(raffle.winners(), &model.winners[..]);
    Ok(())
}

/// A compact twin (decision 0022) shows what the full aggregate shows, reading settled
/// orders from the log.
pub(crate) fn check_compact_twin(
    twin: &Raffle,
    raffle: &Raffle,
    log: &[RaffleEvent],
) -> Result<(), TestCaseError> {
    prop_assert_eq!(twin.status(), raffle.status());
    for i in 0..SLOTS {
        prop_assert_eq!(
            twin.order_from_log(slot(i), log),
            raffle.order(slot(i)),
            "compact twin, order slot {}",
            i
        );
    }
    prop_assert_eq!(twin.order_count(), raffle.order_count());
    prop_assert_eq!(twin.free_numbers(), raffle.free_numbers());
    prop_assert_eq!(twin.sold_count(), raffle.sold_count());
    prop_assert_eq!(twin.reserved_count(), raffle.reserved_count());
    prop_assert_eq!(twin.next_expiry(), raffle.next_expiry());
    prop_assert_eq!(twin.winners(), raffle.winners());
    Ok(())
}

/// Invariants read from the aggregate alone.
pub(crate) fn check_invariants(raffle: &Raffle, ticket_count: u32) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        raffle.available_count() + raffle.reserved_count() + raffle.sold_count(),
        u64::from(ticket_count)
    );
    let mut owner: HashMap<u32, Uuid> = HashMap::new();
    let mut held = 0u64;
    let mut sold = 0u64;
    for i in 0..SLOTS {
        let Some(view) = raffle.order(slot(i)) else {
            continue;
        };
        if !view.status.is_live() {
            continue;
        }
        for n in &view.numbers {
            if let Some(other) = owner.insert(*n, view.order_id) {
                return Err(fail(format!(
                    "{n} belongs to two live orders: {other} and {}",
                    view.order_id
                )));
            }
            let state = raffle.ticket_state(*n);
            if view.status == OrderStatus::Paid {
                sold += 1;
                prop_assert_eq!(state, Some(TicketState::Sold), "paid ticket {}", n);
            } else {
                held += 1;
                prop_assert_eq!(state, Some(TicketState::Reserved), "held ticket {}", n);
            }
        }
    }
    // Every held or sold number belongs to a live order.
    prop_assert_eq!(raffle.reserved_count(), held);
    prop_assert_eq!(raffle.sold_count(), sold);
    Ok(())
}

/// `TicketsIssued` at most once per order and once per payment across the whole history.
#[derive(Default)]
pub(crate) struct IssueLedger {
    orders: HashSet<Uuid>,
    payments: HashSet<String>,
}

impl IssueLedger {
    pub(crate) fn record(&mut self, batch: &[RaffleEvent]) -> Result<(), TestCaseError> {
        let mut paid_by = None;
        for event in batch {
            match event {
                RaffleEvent::PaymentRecorded { payment, .. } => {
                    paid_by = Some(payment.payment_id.clone());
                }
                RaffleEvent::ManualPaymentConfirmed { order_id, .. } => {
                    paid_by = Some(format!("manual:{order_id}"));
                }
                RaffleEvent::TicketsIssued { order_id, .. } => {
                    if !self.orders.insert(*order_id) {
                        return Err(fail(format!("order {order_id} issued twice")));
                    }
                    let Some(payment) = paid_by.take() else {
                        return Err(fail("TicketsIssued without a payment".into()));
                    };
                    if !self.payments.insert(payment.clone()) {
                        return Err(fail(format!("payment {payment} issued twice")));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

pub(crate) fn check_draw(events: &[RaffleEvent], model: &Model) -> Result<(), TestCaseError> {
    for event in events {
        let RaffleEvent::WinnersDrawn {
            seed,
            public_entropy,
            winners,
            ..
        } = event
        else {
            continue;
        };
        // Anyone can re-run the draw from the published inputs and the issued tickets.
        let (issued, owners) = model.issued_tickets();
        let recomputed: Vec<(u32, u32)> =
            draw::draw_winners(seed, public_entropy, &model.cfg.prizes, &issued)
                .into_iter()
                .enumerate()
                .filter_map(|(i, n)| n.map(|n| (i as u32, n)))
                .collect();
        let announced: Vec<(u32, u32)> =
            winners.iter().map(|w| (w.prize_index, w.number)).collect();
        prop_assert_eq!(announced, recomputed);
        let distinct: HashSet<u32> = winners.iter().map(|w| w.number).collect();
        prop_assert_eq!(distinct.len(), winners.len());
        for w in winners {
            prop_assert_eq!(Some(&w.order_id), owners.get(&w.number));
            if let Some(cutoff) = model.cfg.prizes[w.prize_index as usize].early_bird_cutoff {
                let issued_at = model.orders[&w.order_id].issued_at.unwrap();
                prop_assert!(
                    issued_at < cutoff,
                    "early-bird winner issued at {}",
                    issued_at
                );
            }
        }
    }
    Ok(())
}
