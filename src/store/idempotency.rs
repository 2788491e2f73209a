//! Idempotency-Key records. The writer looks keys up before deciding and stores new ones in
//! the same transaction as the events, so a retry after a crash or a lost answer returns
//! the first response, never a second effect.

use serde_json::Value;

use super::{Store, StoreError};

/// A key as presented with a command: who (`scope`, e.g. the API key id), the key, and a
/// hash of the request so a reused key with another request is caught.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRequest {
    pub scope: String,
    pub key: String,
    pub request_hash: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct IdempotencyRecord {
    pub scope: String,
    pub key: String,
    pub request_hash: Vec<u8>,
    pub response: Value,
}

impl Store {
    /// The stored records among `requests`, in any order.
    pub async fn find_idempotency(
        &self,
        requests: &[&IdempotencyRequest],
    ) -> Result<Vec<IdempotencyRecord>, StoreError> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let scopes: Vec<&str> = requests.iter().map(|r| r.scope.as_str()).collect();
        let keys: Vec<&str> = requests.iter().map(|r| r.key.as_str()).collect();
        let rows: Vec<(String, String, Vec<u8>, Value)> = sqlx::query_as(
            "SELECT i.scope, i.key, i.request_hash, i.response FROM idempotency_keys i \
             JOIN UNNEST($1::text[], $2::text[]) AS t(scope, key) \
               ON i.scope = t.scope AND i.key = t.key",
        )
        .bind(&scopes)
        .bind(&keys)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(scope, key, request_hash, response)| IdempotencyRecord {
                scope,
                key,
                request_hash,
                response,
            })
            .collect())
    }
}
