//! The raffle's whole event log as NDJSON, in order: what an auditor takes away. Each line
//! holds the stored `payload` and `metadata` text exactly as written (the hash chain covers
//! those bytes), so `tools/verify_draw.py` and any reimplementation of docs/AUDIT.md can
//! check the chain and the draw from this file alone.

use sqlx::postgres::PgConnectOptions;
use uuid::Uuid;

use super::{copy_out, ExportStream};
use crate::store::RAFFLE_STREAM;

/// One line per event:
/// `{"raffle_id":…,"sequence":…,"event_type":…,"event_version":…,"payload":{…},"metadata":{…}}`.
pub async fn events_ndjson(
    options: &PgConnectOptions,
    raffle_id: Uuid,
) -> Result<ExportStream, sqlx::Error> {
    // COPY takes no bind parameters; both values are formatted from typed, trusted data (a
    // UUID and a constant). CSV with a quote and delimiter that JSON text never holds raw
    // (it escapes every control character) passes each line through untouched, where the
    // text format would double every backslash.
    let copy = format!(
        "COPY (SELECT '{{\"raffle_id\":\"{raffle_id}\",\"sequence\":' || sequence \
         || ',\"event_type\":' || to_json(event_type)::text \
         || ',\"event_version\":' || to_json(event_version)::text \
         || ',\"payload\":' || payload::text || ',\"metadata\":' || metadata::text || '}}' \
         FROM events WHERE aggregate_type = '{RAFFLE_STREAM}' AND aggregate_id = '{raffle_id}' \
         ORDER BY sequence) TO STDOUT WITH (FORMAT csv, QUOTE E'\\x01', DELIMITER E'\\x02')"
    );
    copy_out(options, copy).await
}
