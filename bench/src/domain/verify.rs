//! The checks that make the figures worth anything: the raffle is sold out, its snapshot
//! reloads to an equal raffle, and it still behaves (exactly-once payments, nothing left).

use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use tombola_domain::{
    Raffle, RaffleCommand, RaffleError, RaffleServices, RaffleStatus, Reserve, Selection,
    TicketState,
};
use uuid::Uuid;

use super::workload::{Sale, Workload};

/// The sold-out raffle, and the one decoded from its snapshot, are what they should be.
pub(super) fn verify(
    raffle: &Raffle,
    decoded: &Raffle,
    workload: &Workload,
    sale: &Sale,
    services: &RaffleServices,
    failures: &mut Vec<String>,
) {
    let tickets = u64::from(workload.tickets);
    let mut check = |ok: bool, what: String| {
        if !ok {
            failures.push(what);
        }
    };
    for (name, r) in [("built", raffle), ("reloaded", decoded)] {
        check(
            r.sold_count() == tickets,
            format!("{name}: sold {} of {tickets}", r.sold_count()),
        );
        check(
            r.available_count() == 0,
            format!("{name}: {} still available", r.available_count()),
        );
        check(
            r.reserved_count() == 0,
            format!("{name}: {} still reserved", r.reserved_count()),
        );
        check(
            r.order_count() as u64 == workload.orders(),
            format!(
                "{name}: {} orders, expected {}",
                r.order_count(),
                workload.orders()
            ),
        );
        check(
            r.status() == RaffleStatus::OnSale,
            format!("{name}: status {:?}", r.status()),
        );
    }
    check(
        raffle == decoded,
        "the reloaded raffle differs from the built one".into(),
    );

    let mut rng = ChaCha8Rng::seed_from_u64(workload.seed);
    let first = raffle.config().map_or(1, |c| c.first_number);
    let unsold: Vec<u32> = (0..1_000)
        .map(|_| first + rng.random_range(0..workload.tickets))
        .filter(|&n| decoded.ticket_state(n) != Some(TicketState::Sold))
        .collect();
    check(
        unsold.is_empty(),
        format!("reloaded: sampled numbers not sold: {unsold:?}"),
    );

    match decoded.order(sale.first_order) {
        Some(order) => check(
            order.numbers.len() as u32 == workload.per_order.min(workload.tickets)
                && order.issued_at.is_some(),
            format!("reloaded: first order is {order:?}"),
        ),
        None => check(false, "reloaded: first order not found".into()),
    }

    // Exactly-once: the last payment delivered again issues nothing.
    if let Some(payment) = &sale.last_payment {
        let again = decoded.decide(RaffleCommand::RecordPayment(payment.clone()), services);
        check(
            matches!(&again, Ok(events) if events.is_empty()),
            format!("reloaded: a repeated payment gave {again:?}"),
        );
    }
    // Sold out: nothing left to reserve.
    let more = decoded.decide(
        RaffleCommand::Reserve(Reserve {
            order_id: Uuid::from_u64_pair(workload.seed, 2),
            buyer: workload.buyers[0].clone(),
            selection: Selection::Random(1),
        }),
        services,
    );
    check(
        matches!(
            more,
            Err(RaffleError::NotEnoughTickets { available: 0, .. })
        ),
        format!("reloaded: reserving from a sold-out raffle gave {more:?}"),
    );
}
