//! The same sold-out raffle in its compact form (decision 0022), measured in the same run as
//! the full one: resident bytes (counting allocator), each structure's share, and the
//! version-2 snapshot's size, encode and decode.

use serde::Serialize;
use tombola_domain::{Raffle, RaffleCommand};

use super::{per_ticket, Component};
use crate::alloc;
use crate::report::{ms, BenchResult};
use crate::sys;

#[derive(Debug, Serialize)]
pub(crate) struct Compact {
    pub bytes_per_ticket: f64,
    pub resident_bytes: i64,
    pub bytes_per_ticket_after_reload: f64,
    pub resident_bytes_after_reload: i64,
    pub snapshot_bytes: usize,
    pub snapshot_bytes_per_ticket: f64,
    pub snapshot_encode_ms: f64,
    pub snapshot_decode_ms: f64,
    pub snapshot_decode_cpu_ms: f64,
    pub compact_ms: f64,
    pub memory_breakdown: Vec<Component>,
}

pub(super) fn measure(
    full: &Raffle,
    tickets: u32,
    paid: uuid::Uuid,
    failures: &mut Vec<String>,
) -> BenchResult<Compact> {
    crate::report::phase("domain: compacting (decision 0022)");
    let copy = full.clone();
    let ((compact, compacted), compacting) = sys::span(move || {
        let mut compact = copy;
        let compacted = compact.compact();
        (compact, compacted)
    });
    if !compacted {
        return Err(
            "a raffle limiting buyers stays full (run without --max-tickets-per-buyer)".into(),
        );
    }
    // What the compact raffle holds: its structures are sized exactly, so a copy allocates
    // what the original does.
    let resident = measure_clone(&compact);
    let (snapshot, encode) = sys::span(|| compact.encode_snapshot());
    let before_decode = alloc::snapshot();
    let (decoded, decode) = sys::span(|| Raffle::decode_snapshot(&snapshot));
    let decoded = decoded?;
    let reload_resident = alloc::snapshot().since(&before_decode);
    if decoded != compact {
        failures.push("the compact snapshot does not decode to the compact raffle".into());
    }
    if decoded.free_numbers() != full.free_numbers()
        || decoded.sold_count() != full.sold_count()
        || decoded.order_count() != full.order_count()
    {
        failures
            .push("the compact raffle's tickets or order count differ from the full one's".into());
    }
    // A settled order is not decided from memory: the compact raffle asks for its events.
    {
        let probe = RaffleCommand::Release { order_id: paid };
        let services = tombola_domain::RaffleServices::deterministic(
            1,
            std::sync::Arc::new(tombola_domain::FixedClock::new(chrono::Utc::now())),
        );
        if decoded
            .decide_with(probe, &services, &Default::default())
            .is_ok()
        {
            failures.push("the compact raffle decided a settled order without its log".into());
        }
    }
    drop(decoded);
    crate::report::phase(format!(
        "domain: compact {resident} B resident ({:.2} B/ticket), snapshot {} B, decoded in {:.1} ms",
        per_ticket(resident, tickets),
        snapshot.len(),
        ms(decode.wall)
    ));
    let memory_breakdown = breakdown(&compact, tickets, resident);
    Ok(Compact {
        bytes_per_ticket: per_ticket(resident, tickets),
        resident_bytes: resident,
        bytes_per_ticket_after_reload: per_ticket(reload_resident, tickets),
        resident_bytes_after_reload: reload_resident,
        snapshot_bytes: snapshot.len(),
        snapshot_bytes_per_ticket: per_ticket(snapshot.len() as i64, tickets),
        snapshot_encode_ms: ms(encode.wall),
        snapshot_decode_ms: ms(decode.wall),
        snapshot_decode_cpu_ms: ms(decode.cpu),
        compact_ms: ms(compacting.wall),
        memory_breakdown,
    })
}

/// Bytes a clone of `raffle` allocates: its resident size.
fn measure_clone(raffle: &Raffle) -> i64 {
    let before = alloc::snapshot();
    let copy = raffle.clone();
    let bytes = alloc::snapshot().since(&before);
    drop(copy);
    bytes
}

/// Each compact structure's share, from its element counts (the structures are private to
/// the domain crate): two sorted vectors of 8-byte digests, the two bitmaps, the rest.
fn breakdown(compact: &Raffle, tickets: u32, total: i64) -> Vec<Component> {
    let orders = compact.order_count() as i64 * 8;
    let mut bitmaps = Vec::new();
    compact
        .free_numbers()
        .serialize_into(&mut bitmaps)
        .expect("vec write");
    let component = |component, bytes, how| Component {
        component,
        bytes,
        bytes_per_ticket: per_ticket(bytes, tickets),
        how,
    };
    let payments = compact.order_count() as i64 * 8;
    vec![
        component(
            "order_digests",
            orders,
            "Settled.orders: sorted Vec<u64> of order-id digests, 8 B per order",
        ),
        component(
            "payment_digests",
            payments,
            "Settled.payments: sorted Vec<u64> of payment-id digests, 8 B per payment \
             (one per order in this workload)",
        ),
        component(
            "other",
            total - orders - payments,
            "measured total minus the above: the issued and free bitmaps (roaring), live \
             holds (none when sold out), config",
        ),
    ]
}
