//! Where the snapshot decode's time goes.
//!
//! `Raffle::decode_snapshot` is one call, so its steps are replayed here on the very same
//! snapshot bytes (layout documented in `domain/src/snapshot.rs`) with copies of the same
//! structures ([`super::mirror`]), each under its own timer and allocation count. The steps
//! marked `mirrors_domain` are what the domain does; their sum accounts for most of the
//! measured decode (the domain's own per-field parsing and non-inlined pushes are not
//! copied). The others are alternatives, timed on the same data, that docs/BENCHMARKS.md
//! suggests.

use std::thread;

use hashbrown::{HashMap, HashTable};
use roaring::RoaringBitmap;
use uuid::Uuid;

use super::mirror::{id_hash, ChunkedVec, Order};
use super::Step;
use crate::alloc;
use crate::sys::{self, Span};

const RECORD_BYTES: usize = 16 + 1 + 4 + 4 + 4 + 8 + 4;

/// One timed step, and the bytes it left allocated (what it built).
struct Timed<T> {
    out: T,
    time: Span,
    bytes: i64,
    faults: Option<u64>,
}

impl<T> Timed<T> {
    /// The measurements alone, so the value can be dropped outside any timer.
    fn measures(&self) -> Timed<()> {
        Timed {
            out: (),
            time: self.time,
            bytes: self.bytes,
            faults: self.faults,
        }
    }
}

fn timed<T>(work: impl FnOnce() -> T) -> Timed<T> {
    let before = alloc::snapshot();
    let faults = sys::minor_faults();
    let (out, time) = sys::span(work);
    Timed {
        out,
        time,
        bytes: alloc::snapshot().since(&before),
        faults: sys::minor_faults().zip(faults).map(|(a, b)| a - b),
    }
}

fn le_u32(bytes: &[u8]) -> u32 {
    u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"))
}

fn le_u64(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"))
}

/// The six length-prefixed sections after the magic and version.
fn sections(bytes: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut rest = bytes.get(5..).ok_or("snapshot too short")?;
    let mut out = Vec::with_capacity(6);
    for _ in 0..6 {
        let len = le_u32(rest.get(..4).ok_or("truncated")?) as usize;
        out.push(rest.get(4..4 + len).ok_or("truncated")?);
        rest = &rest[4 + len..];
    }
    Ok(out)
}

fn records_and_numbers(section: &[u8]) -> (ChunkedVec<Order>, ChunkedVec<u32>) {
    let count = le_u32(section) as usize;
    let (records, numbers_bytes) = section[4..].split_at(count * RECORD_BYTES);
    let mut orders = ChunkedVec::default();
    let mut numbers = ChunkedVec::default();
    let mut next_number = numbers_bytes.chunks_exact(4);
    for r in records.chunks_exact(RECORD_BYTES) {
        let numbers_len = le_u32(&r[37..]);
        let numbers_at = numbers.len() as u32;
        for _ in 0..numbers_len {
            numbers.push(next_number.next().map_or(0, le_u32));
        }
        orders.push(Order {
            id: Uuid::from_slice(&r[..16]).expect("16 bytes"),
            status: r[16],
            reserved_at: le_u32(&r[17..]),
            expires_at: le_u32(&r[21..]),
            issued_at: le_u32(&r[25..]),
            buyer: le_u64(&r[29..]),
            numbers_len,
            numbers_at,
        });
    }
    (orders, numbers)
}

/// As the domain does it: one pass, each record's numbers and record pushed, and the record
/// indexed at once in a table that grows as it goes.
fn orders_numbers_and_index(
    section: &[u8],
) -> (ChunkedVec<Order>, ChunkedVec<u32>, HashTable<u32>) {
    let count = le_u32(section) as usize;
    let (records, numbers_bytes) = section[4..].split_at(count * RECORD_BYTES);
    let mut orders: ChunkedVec<Order> = ChunkedVec::default();
    let mut numbers = ChunkedVec::default();
    let mut index = HashTable::new();
    let mut next_number = numbers_bytes.chunks_exact(4);
    for r in records.chunks_exact(RECORD_BYTES) {
        let numbers_len = le_u32(&r[37..]);
        let numbers_at = numbers.len() as u32;
        for _ in 0..numbers_len {
            numbers.push(next_number.next().map_or(0, le_u32));
        }
        let order = Order {
            id: Uuid::from_slice(&r[..16]).expect("16 bytes"),
            status: r[16],
            reserved_at: le_u32(&r[17..]),
            expires_at: le_u32(&r[21..]),
            issued_at: le_u32(&r[25..]),
            buyer: le_u64(&r[29..]),
            numbers_len,
            numbers_at,
        };
        let pos = orders.len() as u32;
        orders.push(order);
        index.insert_unique(id_hash(&order.id), pos, |&p| {
            id_hash(&orders.get(p as usize).id)
        });
    }
    (orders, numbers, index)
}

fn order_index(orders: &ChunkedVec<Order>, presized: bool) -> HashTable<u32> {
    let mut index = if presized {
        HashTable::with_capacity(orders.len())
    } else {
        HashTable::new()
    };
    for pos in 0..orders.len() as u32 {
        index.insert_unique(id_hash(&orders.get(pos as usize).id), pos, |&p| {
            id_hash(&orders.get(p as usize).id)
        });
    }
    index
}

/// The alternative: each order's payment digest in a column, and a table of positions only.
fn payment_positions(section: &[u8]) -> (ChunkedVec<u64>, HashTable<u32>) {
    let count = le_u32(section) as usize;
    let mut digests = ChunkedVec::default();
    let mut index = HashTable::with_capacity(count);
    for (pos, entry) in section[4..].chunks_exact(12).take(count).enumerate() {
        let digest = le_u64(entry);
        digests.push(digest);
        index.insert_unique(digest, pos as u32, |&p| *digests.get(p as usize));
    }
    (digests, index)
}

fn payment_index(section: &[u8]) -> HashMap<u64, u32> {
    let count = le_u32(section) as usize;
    let mut payments = HashMap::new();
    payments.reserve(count);
    for entry in section[4..].chunks_exact(12).take(count) {
        payments.insert(le_u64(entry), le_u32(&entry[8..]));
    }
    payments
}

pub(crate) fn profile(snapshot: &[u8]) -> Result<Vec<Step>, String> {
    let s = sections(snapshot)?;
    let bitmap = |bytes: &[u8]| RoaringBitmap::deserialize_from(bytes).map_err(|e| e.to_string());
    let mut steps = Vec::new();
    let mut step = |name, timed: &Timed<_>, mirrors_domain, what| {
        steps.push(
            Step::new(name, timed.time, timed.bytes, mirrors_domain, what)
                .with_faults(timed.faults),
        );
    };

    // What the domain does, in its order.
    let header = timed(|| -> Result<_, String> {
        let header: serde_json::Value = serde_json::from_slice(s[0]).map_err(|e| e.to_string())?;
        Ok((header, bitmap(s[1])?, bitmap(s[2])?))
    });
    step(
        "header_and_bitmaps",
        &header.measures(),
        true,
        "JSON header, free and issued roaring bitmaps",
    );
    header.out?;
    let one_pass = timed(|| orders_numbers_and_index(s[3]));
    step(
        "orders_numbers_and_index_in_one_pass",
        &one_pass.measures(),
        true,
        "per record: its numbers and the 41-byte record pushed to the chunked vectors, then \
         the record indexed in a HashTable<u32> that grows as it goes (every growth rehashes \
         by reading each record's id back from the record chunks)",
    );
    drop(one_pass);
    let payments = timed(|| payment_index(s[4]));
    step(
        "payment_index",
        &payments.measures(),
        true,
        "HashMap<u64, u32>, reserved up front, one random insert per payment",
    );
    drop(payments);

    // Alternatives on the same data.
    let records = timed(|| records_and_numbers(s[3]));
    step(
        "alt_orders_and_numbers_only",
        &records.measures(),
        false,
        "first pass of a two-pass decode: records and numbers only (sequential writes)",
    );
    let orders = &records.out.0;
    let grown = timed(|| order_index(orders, false));
    step(
        "alt_order_id_index_second_pass_grown",
        &grown.measures(),
        false,
        "second pass: the index grown one insert at a time, as the domain does",
    );
    drop(grown);
    let presized = timed(|| order_index(orders, true));
    step(
        "alt_order_id_index_second_pass_presized",
        &presized.measures(),
        false,
        "second pass: the index built with HashTable::with_capacity(count): no growth",
    );
    drop(presized);
    drop(records);
    let positions = timed(|| payment_positions(s[4]));
    step(
        "alt_payment_digest_column_and_position_index",
        &positions.measures(),
        false,
        "instead of payment_index: the digests in a ChunkedVec<u64> column plus a presized \
         HashTable<u32> of positions (4 B + 1 control byte per bucket)",
    );
    drop(positions);
    let both = timed(|| {
        thread::scope(|scope| {
            let payments = scope.spawn(|| payment_index(s[4]));
            let (orders, numbers) = records_and_numbers(s[3]);
            let index = order_index(&orders, true);
            (orders, numbers, index, payments.join())
        })
    });
    step(
        "alt_two_pass_orders_with_payments_on_a_second_thread",
        &both.measures(),
        false,
        "records, then the presized index, on this thread while a second thread builds the \
         payment index (wall time; cpu_ms counts this thread only)",
    );
    drop(both);
    let copy = timed(|| snapshot.to_vec());
    step(
        "floor_copy_snapshot",
        &copy.measures(),
        false,
        "copying the snapshot bytes into fresh memory once: page faults plus memory \
         bandwidth, a floor for any decode that allocates its state",
    );
    drop(copy);
    Ok(steps)
}
