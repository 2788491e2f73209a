//! The subscriber: a projection whose read model is the outbox. For each raffle it turns the
//! events after its checkpoint into messages (one per event of interest, with a stable id)
//! and one delivery per matching endpoint, in the transaction that moves its checkpoint —
//! so every message is made exactly once, whatever crashes. It runs on a projection runtime
//! of its own over the write database (decision 0016): the deliveries live beside the
//! endpoints, and a slow outbox never holds back the read models.
//!
//! An endpoint receives the events committed after it was created. The outbox is never
//! rebuilt: a replay would only find its rows already there (inserts skip existing ids).

use std::sync::Arc;

use sqlx::PgConnection;
use tombola_projections::{ApplyError, Batch, BoxFuture, Projection, Tables};

use crate::clock::Clock;

use super::messages;

pub const NAME: &str = "webhooks_outbox";

pub struct Outbox {
    pub clock: Arc<dyn Clock>,
}

impl Projection for Outbox {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> u32 {
        1
    }

    /// Its tables come from migrations (0020), not from here: they are state, not a model
    /// to rebuild. The runtime only needs a table it may create.
    fn tables(&self) -> &'static [&'static str] {
        &["webhooks_outbox_marker"]
    }

    fn schema(&self, tables: Tables) -> String {
        format!(
            "CREATE TABLE {} (created_at timestamptz NOT NULL DEFAULT now())",
            tables.name("webhooks_outbox_marker")
        )
    }

    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        batch: Batch<'a>,
    ) -> BoxFuture<'a, Result<(), ApplyError>> {
        Box::pin(async move {
            let now = self.clock.now();
            let (mut ids, mut sequences, mut types, mut orders, mut payloads, mut times) =
                (vec![], vec![], vec![], vec![], vec![], vec![]);
            for envelope in batch.events {
                for message in messages::from_event(
                    batch.raffle_id,
                    envelope.sequence,
                    envelope.recorded_at,
                    &envelope.event,
                ) {
                    ids.push(message.msg_id);
                    sequences.push(envelope.sequence as i64);
                    types.push(message.event_type);
                    orders.push(message.order_id);
                    payloads.push(message.payload);
                    times.push(envelope.recorded_at);
                }
            }
            if ids.is_empty() {
                return Ok(());
            }
            sqlx::query(
                "INSERT INTO webhook_messages \
                   (msg_id, raffle_id, sequence, event_type, order_id, payload, recorded_at) \
                 SELECT m.msg_id, $7, m.sequence, m.event_type, m.order_id, m.payload, m.recorded_at \
                 FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::uuid[], $5::text[], \
                             $6::timestamptz[]) \
                   AS m(msg_id, sequence, event_type, order_id, payload, recorded_at) \
                 ON CONFLICT (msg_id) DO NOTHING",
            )
            .bind(&ids)
            .bind(&sequences)
            .bind(&types)
            .bind(&orders)
            .bind(&payloads)
            .bind(&times)
            .bind(batch.raffle_id)
            .execute(&mut *conn)
            .await?;
            sqlx::query(
                "INSERT INTO webhook_deliveries (endpoint_id, msg_id, raffle_id, order_key, \
                   sequence, event_type, next_attempt_at, created_at, updated_at) \
                 SELECT e.endpoint_id, m.msg_id, $6, coalesce(m.order_id, $6), m.sequence, \
                   m.event_type, $7, $7, $7 \
                 FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::uuid[], \
                             $5::timestamptz[]) AS m(msg_id, sequence, event_type, order_id, \
                                                     recorded_at) \
                 JOIN webhook_endpoints e ON e.enabled \
                   AND (e.organizer_id IS NULL OR e.organizer_id = \
                        (SELECT organizer_id FROM raffles WHERE raffle_id = $6)) \
                   AND (cardinality(e.event_types) = 0 OR m.event_type = ANY (e.event_types)) \
                   AND (e.raffle_id IS NULL OR e.raffle_id = $6) \
                   AND e.created_at <= m.recorded_at \
                 ON CONFLICT DO NOTHING",
            )
            .bind(&ids)
            .bind(&sequences)
            .bind(&types)
            .bind(&orders)
            .bind(&times)
            .bind(batch.raffle_id)
            .bind(now)
            .execute(&mut *conn)
            .await?;
            // No NOTIFY here: a transaction that notifies holds PostgreSQL's global notify
            // lock through its commit (see store/notify.rs). The node that commits this
            // batch wakes its own worker from the runtime's progress; other nodes poll.
            Ok(())
        })
    }
}
