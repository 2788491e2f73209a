//! What the aggregate's resident memory is made of.
//!
//! The aggregate's structures are private to the domain crate, so each one is rebuilt here
//! with the same types, the same element sizes, the same element count and the same growth
//! pattern as in `domain/src/orders.rs` and `tickets.rs` (see [`super::mirror`]), and measured
//! with the counting allocator. Whatever the measured total has beyond their sum is reported
//! as `other`.

use hashbrown::{HashMap, HashTable};
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use roaring::RoaringBitmap;

use super::mirror::{ChunkedVec, Order};
use super::{per_ticket, Component};
use crate::alloc;

fn chunked<T: Copy>(len: usize, value: T) -> ChunkedVec<T> {
    let mut chunks = ChunkedVec::default();
    for _ in 0..len {
        chunks.push(value);
    }
    chunks
}

fn measured<T>(build: impl FnOnce() -> T) -> i64 {
    let before = alloc::snapshot();
    let built = build();
    let bytes = alloc::snapshot().since(&before);
    drop(built);
    bytes
}

/// Measures each structure of a sold-out raffle of `tickets` numbers in `orders` orders, and
/// attributes the rest of `total` to `other`.
pub(super) fn measure(tickets: u32, orders: usize, total: i64) -> Vec<Component> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let hashes: Vec<u64> = (0..orders).map(|_| rng.random()).collect();

    let record = Order {
        id: uuid::Uuid::nil(),
        numbers_at: 0,
        numbers_len: 0,
        reserved_at: 0,
        expires_at: 0,
        issued_at: 0,
        buyer: 0,
        status: 0,
    };
    let records = measured(|| chunked(orders, record));
    let numbers = measured(|| chunked::<u32>(tickets as usize, 0));
    let index = measured(|| {
        let mut table = HashTable::<u32>::new();
        for pos in 0..orders as u32 {
            table.insert_unique(hashes[pos as usize], pos, |&p| hashes[p as usize]);
        }
        table
    });
    let payments = measured(|| {
        let mut map = HashMap::<u64, u32>::new();
        for (pos, digest) in hashes.iter().enumerate() {
            map.insert(*digest, pos as u32);
        }
        map
    });
    let issued = measured(|| {
        let mut bitmap = RoaringBitmap::new();
        for n in 1..=tickets {
            bitmap.insert(n);
        }
        bitmap
    });

    let component = |component, bytes, how| Component {
        component,
        bytes,
        bytes_per_ticket: per_ticket(bytes, tickets),
        how,
    };
    let other = total - records - numbers - index - payments - issued;
    vec![
        component(
            "order_records",
            records,
            "OrderBook.orders: ChunkedVec<Order>, 48 B per order in 64Ki-record chunks",
        ),
        component(
            "order_numbers",
            numbers,
            "OrderBook.numbers: ChunkedVec<u32>, 4 B per ticket in 64Ki-number chunks",
        ),
        component(
            "order_id_index",
            index,
            "OrderBook.index: hashbrown HashTable<u32> of order positions (4 B + 1 control \
             byte per bucket, buckets = next power of two above orders * 8/7)",
        ),
        component(
            "payment_index",
            payments,
            "OrderBook.payments: hashbrown HashMap<u64 payment digest, u32 position> \
             (16 B + 1 control byte per bucket)",
        ),
        component(
            "issued_bitmap",
            issued,
            "TicketPool.issued: RoaringBitmap of every number (8 KiB bitmap per 64Ki numbers)",
        ),
        component(
            "other",
            other,
            "measured total minus the above: config, empty free bitmap and hold queue, \
             container vectors, chunk lists",
        ),
    ]
}
