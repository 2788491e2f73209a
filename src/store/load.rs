//! Loading a raffle: the latest snapshot, then the events after it.

use tombola_domain::{Need, Raffle, RaffleEvent};
use uuid::Uuid;

use super::chain::GENESIS;
use super::metadata::EventMetadata;
use super::{Store, StoreError, RAFFLE_STREAM};

#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub raffle_id: Uuid,
    pub sequence: u64,
    pub event: RaffleEvent,
    pub metadata: EventMetadata,
}

pub struct LoadedRaffle {
    pub raffle: Raffle,
    pub last_sequence: u64,
    pub last_hash: String,
    /// Size of the snapshot it was loaded from (0: none).
    pub snapshot_bytes: usize,
}

impl Store {
    #[tracing::instrument(skip(self), fields(raffle_id = %raffle_id))]
    pub async fn load_raffle(&self, raffle_id: Uuid) -> Result<LoadedRaffle, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let snapshot: Option<(i64, String, Vec<u8>)> = sqlx::query_as(
            "SELECT last_sequence, last_hash, payload FROM raffle_snapshots WHERE raffle_id = $1",
        )
        .bind(raffle_id)
        .fetch_optional(&mut *conn)
        .await?;
        if snapshot
            .as_ref()
            .is_some_and(|(_, _, payload)| payload.len() > super::snapshots::LARGE_MESSAGE)
        {
            sqlx::Connection::shrink_buffers(&mut *conn);
        }
        drop(conn);
        let mut loaded = match snapshot {
            Some((last_sequence, last_hash, payload)) => {
                let snapshot_bytes = payload.len();
                let raffle = tokio::task::spawn_blocking(move || Raffle::decode_snapshot(&payload))
                    .await
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                LoadedRaffle {
                    raffle,
                    last_sequence: last_sequence as u64,
                    last_hash,
                    snapshot_bytes,
                }
            }
            None => LoadedRaffle {
                raffle: Raffle::default(),
                last_sequence: 0,
                last_hash: GENESIS.to_owned(),
                snapshot_bytes: 0,
            },
        };
        let after = loaded.last_sequence;
        self.replay_after(raffle_id, after, |stored| {
            loaded.raffle.apply_event(&stored.event);
            loaded.last_sequence = stored.sequence;
            loaded.last_hash = stored.metadata.hash;
        })
        .await?;
        Ok(loaded)
    }

    /// The events about one order, in order (its reservation, payments, refunds…).
    pub async fn order_events(
        &self,
        raffle_id: Uuid,
        order_id: Uuid,
    ) -> Result<Vec<RaffleEvent>, StoreError> {
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT sequence, payload::text FROM events \
             WHERE order_id = $1 AND aggregate_type = $2 AND aggregate_id = $3 ORDER BY sequence",
        )
        .bind(order_id)
        .bind(RAFFLE_STREAM)
        .bind(raffle_id.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(sequence, payload)| {
                serde_json::from_str(&payload)
                    .map_err(|e| StoreError::Corrupt(format!("event {sequence}: {e}")))
            })
            .collect()
    }

    /// The events `need` names, in order, up to `up_to` (decision 0022): an order's by its
    /// indexed `order_id`; a payment's or failure's by a scan of that event type (rare: only
    /// when a digest says it may have been seen on another order).
    pub async fn events_for(
        &self,
        raffle_id: Uuid,
        need: &Need,
        up_to: u64,
    ) -> Result<Vec<RaffleEvent>, StoreError> {
        let aggregate_id = raffle_id.to_string();
        let rows: Vec<(i64, String)> = match need {
            Need::Order(order_id) => {
                sqlx::query_as(
                    "SELECT sequence, payload::text FROM events \
                     WHERE order_id = $1 AND aggregate_type = $2 AND aggregate_id = $3 \
                     AND sequence <= $4 ORDER BY sequence",
                )
                .bind(order_id)
                .bind(RAFFLE_STREAM)
                .bind(&aggregate_id)
                .bind(up_to as i64)
                .fetch_all(&self.pool)
                .await?
            }
            need => {
                let event_type = need.event_type().unwrap_or("");
                // The id as it appears in the JSON text narrows the scan; one that JSON
                // would escape is looked for in every row of the type instead.
                let needle = match need {
                    Need::Payment(payment_id) => payment_id.as_str(),
                    Need::Failure {
                        provider_event_id, ..
                    } => provider_event_id.as_str(),
                    _ => "",
                };
                let needle = if needle
                    .chars()
                    .all(|c| c != '"' && c != '\\' && !c.is_control())
                {
                    needle
                } else {
                    ""
                };
                sqlx::query_as(
                    "SELECT sequence, payload::text FROM events \
                     WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence <= $3 \
                     AND event_type = $4 AND strpos(payload::text, $5) > 0 ORDER BY sequence",
                )
                .bind(RAFFLE_STREAM)
                .bind(&aggregate_id)
                .bind(up_to as i64)
                .bind(event_type)
                .bind(needle)
                .fetch_all(&self.pool)
                .await?
            }
        };
        let mut events = Vec::with_capacity(rows.len());
        for (sequence, payload) in rows {
            let event: RaffleEvent = serde_json::from_str(&payload)
                .map_err(|e| StoreError::Corrupt(format!("event {sequence}: {e}")))?;
            if need.matches(&event) {
                events.push(event);
            }
        }
        Ok(events)
    }

    /// The stream up to `up_to` folded from its first event into a full raffle (the rare
    /// path of a compact raffle's draw, decision 0022).
    pub async fn fold_log(&self, raffle_id: Uuid, up_to: u64) -> Result<Raffle, StoreError> {
        let mut raffle = Raffle::default();
        self.replay_after(raffle_id, 0, |stored| {
            if stored.sequence <= up_to {
                raffle.apply_event(&stored.event);
            }
        })
        .await?;
        Ok(raffle)
    }

    /// The chain hash of the stream's event at `sequence` (if there is one), and the stream's
    /// last sequence: enough to tell whether a batch ending there is the one stored.
    pub async fn hash_at(
        &self,
        raffle_id: Uuid,
        sequence: u64,
    ) -> Result<(Option<String>, u64), StoreError> {
        let (hash, last): (Option<String>, i64) = sqlx::query_as(
            "SELECT (SELECT metadata->>'hash' FROM events \
                     WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3), \
                    (SELECT coalesce(max(sequence), 0) FROM events \
                     WHERE aggregate_type = $1 AND aggregate_id = $2)",
        )
        .bind(RAFFLE_STREAM)
        .bind(raffle_id.to_string())
        .bind(sequence as i64)
        .fetch_one(&self.pool)
        .await?;
        Ok((hash, last as u64))
    }

    /// The stream's events after `sequence`, in order.
    pub async fn events_after(
        &self,
        raffle_id: Uuid,
        sequence: u64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let mut events = Vec::new();
        self.replay_after(raffle_id, sequence, |stored| events.push(stored))
            .await?;
        Ok(events)
    }

    /// Hands each of the stream's events after `sequence` to `apply`, in order, as the rows
    /// arrive: a large raffle may replay a million events after its snapshot, and they are
    /// never all in memory at once. On an error, `apply` has seen a prefix of the events.
    pub async fn replay_after(
        &self,
        raffle_id: Uuid,
        sequence: u64,
        mut apply: impl FnMut(StoredEvent),
    ) -> Result<(), StoreError> {
        use futures::TryStreamExt;
        let aggregate_id = raffle_id.to_string();
        let mut rows = sqlx::query_as::<_, (i64, String, String)>(
            "SELECT sequence, payload::text, metadata::text FROM events \
             WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3 \
             ORDER BY sequence",
        )
        .bind(RAFFLE_STREAM)
        .bind(&aggregate_id)
        .bind(sequence as i64)
        .fetch(&self.pool);
        while let Some((sequence, payload, metadata)) = rows.try_next().await? {
            apply(StoredEvent {
                raffle_id,
                sequence: sequence as u64,
                event: serde_json::from_str(&payload)
                    .map_err(|e| StoreError::Corrupt(format!("event {sequence}: {e}")))?,
                metadata: EventMetadata::from_json(&metadata).map_err(StoreError::Corrupt)?,
            });
        }
        Ok(())
    }
}
