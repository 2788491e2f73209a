//! The snapshot encoding: compact binary, versioned.
//!
//! Layout (all integers little-endian), version 1:
//! `"TMBS" u8:1`, then length-prefixed (u32) sections:
//! 1. header — JSON of config, status and winners (small);
//! 2. free numbers, 3. issued numbers — roaring's portable serialization;
//! 4. orders — u32 count, then per order `id[16] status:u8 reserved_at:u32 expires_at:u32
//!    issued_at:u32 buyer:u64 numbers_len:u32`, then every order's numbers as u32, in order;
//! 5. payments — u32 count, then `(payment digest:u64, order position:u32)`;
//! 6. partial refunds — u32 count, then `(order position:u32, amount:i64)`.
//!
//! Version 2 is a compact raffle's (decision 0022): the same five first sections, section 4
//! holding the live holds only, then
//! 5. order digests — u32 count, then u64 each, strictly increasing;
//! 6. payment digests — the same;
//! 7. orders owing a refund unpaid, 8. holds released by the cancellation — u32 count, then
//!    16-byte ids.
//!
//! Indexes, the hold queue and buyer counts are rebuilt on decode rather than stored.
//! Version 1 still decodes (as a full raffle; the engine compacts it when it is large).
//! `Raffle`'s serde impl (which cqrs-es requires) wraps these bytes: base64 in JSON.

use base64::Engine as _;
use hashbrown::HashMap;
use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::aggregate::{Raffle, RaffleStatus};
use crate::config::RaffleConfig;
use crate::draw::Winner;
use crate::orders::{Order, OrderBook, OrderStatus};
use crate::resident::{DigestSet, Settled};
use crate::tickets::TicketPool;

const MAGIC: &[u8; 4] = b"TMBS";
const VERSION: u8 = 1;
const COMPACT_VERSION: u8 = 2;
const ORDER_RECORD_BYTES: usize = 16 + 1 + 4 + 4 + 4 + 8 + 4;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("not a Tombola snapshot, or an unknown version")]
    UnknownFormat,
    #[error("snapshot truncated")]
    Truncated,
    #[error("snapshot corrupt: {0}")]
    Corrupt(String),
}

#[derive(Serialize, Deserialize)]
struct Header {
    config: Option<RaffleConfig>,
    status: RaffleStatus,
    winners: Vec<Winner>,
}

impl Raffle {
    pub fn encode_snapshot(&self) -> Vec<u8> {
        // A compact raffle's records of orders settled since its last compaction are unused.
        let live;
        let orders = if self.settled.is_some() {
            live = self.orders.live_only();
            &live
        } else {
            &self.orders
        };
        let mut out = Vec::with_capacity(
            64 + orders.len() * ORDER_RECORD_BYTES
                + orders.numbers.len() * 4
                + self.tickets.free.serialized_size()
                + self.tickets.issued.serialized_size(),
        );
        out.extend_from_slice(MAGIC);
        out.push(if self.settled.is_some() {
            COMPACT_VERSION
        } else {
            VERSION
        });
        let header = Header {
            config: self.config.as_deref().cloned(),
            status: self.status,
            winners: self.winners.clone(),
        };
        section(&mut out, |out| {
            serde_json::to_writer(out, &header).expect("header serializes")
        });
        section(&mut out, |out| {
            self.tickets.free.serialize_into(out).expect("vec write")
        });
        section(&mut out, |out| {
            self.tickets.issued.serialize_into(out).expect("vec write")
        });
        section(&mut out, |out| {
            out.extend_from_slice(&(orders.len() as u32).to_le_bytes());
            for order in orders.orders.iter() {
                out.extend_from_slice(order.id.as_bytes());
                out.push(order.status as u8);
                out.extend_from_slice(&order.reserved_at.to_le_bytes());
                out.extend_from_slice(&order.expires_at.to_le_bytes());
                out.extend_from_slice(&order.issued_at.to_le_bytes());
                out.extend_from_slice(&order.buyer.to_le_bytes());
                out.extend_from_slice(&order.numbers_len.to_le_bytes());
            }
            for pos in 0..orders.len() as u32 {
                for number in orders.numbers_of(pos) {
                    out.extend_from_slice(&number.to_le_bytes());
                }
            }
        });
        if let Some(settled) = &self.settled {
            for digests in [&settled.orders, &settled.payments] {
                section(&mut out, |out| {
                    let digests = digests.to_sorted_vec();
                    out.extend_from_slice(&(digests.len() as u32).to_le_bytes());
                    for digest in digests {
                        out.extend_from_slice(&digest.to_le_bytes());
                    }
                });
            }
            for ids in [&settled.refund_required, &settled.released_by_cancel] {
                section(&mut out, |out| {
                    let mut ids: Vec<&Uuid> = ids.iter().collect();
                    ids.sort_unstable();
                    out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
                    for id in ids {
                        out.extend_from_slice(id.as_bytes());
                    }
                });
            }
            return out;
        }
        section(&mut out, |out| {
            // Sorted, so equal states encode to equal bytes.
            let mut payments: Vec<(u64, u32)> =
                orders.payments.iter().map(|(d, p)| (*d, *p)).collect();
            payments.sort_unstable();
            out.extend_from_slice(&(payments.len() as u32).to_le_bytes());
            for (digest, pos) in payments {
                out.extend_from_slice(&digest.to_le_bytes());
                out.extend_from_slice(&pos.to_le_bytes());
            }
        });
        section(&mut out, |out| {
            let mut partial: Vec<(u32, i64)> = orders
                .partial_refunds
                .iter()
                .map(|(p, a)| (*p, *a))
                .collect();
            partial.sort_unstable();
            out.extend_from_slice(&(partial.len() as u32).to_le_bytes());
            for (pos, amount) in partial {
                out.extend_from_slice(&pos.to_le_bytes());
                out.extend_from_slice(&amount.to_le_bytes());
            }
        });
        out
    }

    pub fn decode_snapshot(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let mut r = Reader(bytes);
        if r.take(4)? != MAGIC {
            return Err(SnapshotError::UnknownFormat);
        }
        let version = r.u8()?;
        if version != VERSION && version != COMPACT_VERSION {
            return Err(SnapshotError::UnknownFormat);
        }
        let header: Header = serde_json::from_slice(r.section()?)
            .map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
        let bitmap = |bytes: &[u8]| {
            RoaringBitmap::deserialize_from(bytes)
                .map_err(|e| SnapshotError::Corrupt(e.to_string()))
        };
        let (first, last) = header
            .config
            .as_ref()
            .map_or((0, 0), |c| (c.first_number, c.last_number()));
        let tickets = TicketPool {
            free: bitmap(r.section()?)?,
            issued: bitmap(r.section()?)?,
            first,
            last,
        };
        let limits_buyers = header
            .config
            .as_ref()
            .is_some_and(|c| c.max_tickets_per_buyer.is_some());
        let orders_section = r.section()?;
        if version == COMPACT_VERSION {
            if limits_buyers {
                return Err(SnapshotError::Corrupt(
                    "a compact raffle limits buyers".into(),
                ));
            }
            let orders = decode_orders(orders_section, false)?;
            if orders
                .orders
                .iter()
                .any(|o| o.status != OrderStatus::Reserved)
            {
                return Err(SnapshotError::Corrupt("a settled order's record".into()));
            }
            let digests = |section: &[u8]| -> Result<DigestSet, SnapshotError> {
                let mut r = Reader(section);
                let count = r.u32()? as usize;
                let mut digests = Vec::with_capacity(count.min(r.0.len() / 8));
                for _ in 0..count {
                    digests.push(r.u64()?);
                }
                DigestSet::from_sorted(digests)
                    .ok_or_else(|| SnapshotError::Corrupt("digests out of order".into()))
            };
            let ids = |section: &[u8]| -> Result<std::collections::HashSet<Uuid>, SnapshotError> {
                let mut r = Reader(section);
                (0..r.u32()?)
                    .map(|_| Ok(Uuid::from_slice(r.take(16)?).expect("16 bytes")))
                    .collect()
            };
            let settled = Settled {
                orders: digests(r.section()?)?,
                payments: digests(r.section()?)?,
                refund_required: ids(r.section()?)?,
                released_by_cancel: ids(r.section()?)?,
            };
            return Ok(Raffle {
                config: header.config.map(Box::new),
                status: header.status,
                tickets,
                orders,
                winners: header.winners,
                settled: Some(Box::new(settled)),
            });
        }
        let payments_section = r.section()?;
        let partial_section = r.section()?;
        // The payment index is independent of the orders: build it on a second core.
        let (book, payments) = std::thread::scope(|scope| {
            let payments = scope.spawn(|| decode_payments(payments_section));
            let book = decode_orders(orders_section, limits_buyers);
            (
                book,
                payments.join().expect("payment decoding does not panic"),
            )
        });
        let mut book = book?;
        book.payments = payments?;
        let mut partial = Reader(partial_section);
        for _ in 0..partial.u32()? {
            let pos = partial.u32()?;
            book.partial_refunds.insert(pos, partial.u64()? as i64);
        }
        Ok(Raffle {
            config: header.config.map(Box::new),
            status: header.status,
            tickets,
            orders: book,
            winners: header.winners,
            settled: None,
        })
    }
}

/// Records and numbers first, then one presized index over them.
fn decode_orders(section: &[u8], limits_buyers: bool) -> Result<OrderBook, SnapshotError> {
    let mut book = OrderBook::new(limits_buyers);
    let mut orders = Reader(section);
    let count = orders.u32()? as usize;
    let numbers_start = count
        .checked_mul(ORDER_RECORD_BYTES)
        .ok_or(SnapshotError::Truncated)?
        .min(orders.0.len());
    let mut numbers = Reader(&orders.0[numbers_start..]);
    for _ in 0..count {
        let id = Uuid::from_slice(orders.take(16)?).expect("16 bytes");
        let status = OrderStatus::from_u8(orders.u8()?)
            .ok_or_else(|| SnapshotError::Corrupt("order status".into()))?;
        let reserved_at = orders.u32()?;
        let expires_at = orders.u32()?;
        let issued_at = orders.u32()?;
        let buyer = orders.u64()?;
        let numbers_len = orders.u32()?;
        let numbers_at = book.numbers.len() as u32;
        for _ in 0..numbers_len {
            book.push_number(numbers.u32()?);
        }
        book.push_unindexed(Order {
            id,
            numbers_at,
            numbers_len,
            reserved_at,
            expires_at,
            issued_at,
            buyer,
            status,
        });
    }
    book.rebuild_index();
    Ok(book)
}

fn decode_payments(section: &[u8]) -> Result<HashMap<u64, u32>, SnapshotError> {
    let mut payments = Reader(section);
    let count = payments.u32()? as usize;
    // The count is untrusted: reserve no more than the section can hold (12 bytes each),
    // or a corrupt count aborts the process on a huge allocation instead of failing.
    let mut map = HashMap::with_capacity(count.min(payments.0.len() / 12));
    for _ in 0..count {
        let digest = payments.u64()?;
        map.insert(digest, payments.u32()?);
    }
    Ok(map)
}

fn section(out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    write(out);
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        if self.0.len() < n {
            return Err(SnapshotError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn section(&mut self) -> Result<&'a [u8], SnapshotError> {
        let len = self.u32()? as usize;
        self.take(len)
    }
}

impl Serialize for Raffle {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let bytes = self.encode_snapshot();
        if serializer.is_human_readable() {
            serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
        } else {
            serializer.serialize_bytes(&bytes)
        }
    }
}

impl<'de> Deserialize<'de> for Raffle {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let bytes = if deserializer.is_human_readable() {
            let text = String::deserialize(deserializer)?;
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(D::Error::custom)?
        } else {
            Vec::<u8>::deserialize(deserializer)?
        };
        Raffle::decode_snapshot(&bytes).map_err(D::Error::custom)
    }
}
