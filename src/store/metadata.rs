//! What every event carries besides its payload: who, through what, why, and the chain.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Api,
    Webhook,
    Operator,
    System,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Webhook => "webhook",
            Self::Operator => "operator",
            Self::System => "system",
        }
    }
}

/// Stored as a flat JSON object of strings (postgres-es reads metadata as
/// `HashMap<String, String>`). Keys are serialized sorted, which the hash chain relies on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMetadata {
    pub actor: String,
    pub source: Source,
    pub request_id: String,
    pub correlation_id: String,
    pub causation_id: String,
    pub idempotency_key: Option<String>,
    pub recorded_at: DateTime<Utc>,
    pub prev_hash: String,
    pub hash: String,
}

impl EventMetadata {
    /// Every field but `hash`, sorted by key: the metadata part of the chained bytes.
    pub fn chained_fields(&self) -> BTreeMap<&'static str, String> {
        let mut map = BTreeMap::new();
        map.insert("actor", self.actor.clone());
        map.insert("source", self.source.as_str().to_owned());
        map.insert("request_id", self.request_id.clone());
        map.insert("correlation_id", self.correlation_id.clone());
        map.insert("causation_id", self.causation_id.clone());
        if let Some(key) = &self.idempotency_key {
            map.insert("idempotency_key", key.clone());
        }
        map.insert(
            "recorded_at",
            self.recorded_at
                .to_rfc3339_opts(SecondsFormat::Micros, true),
        );
        map.insert("prev_hash", self.prev_hash.clone());
        map
    }

    pub fn to_json(&self) -> String {
        let mut map = self.chained_fields();
        map.insert("hash", self.hash.clone());
        serde_json::to_string(&map).expect("string map serializes")
    }

    pub fn from_json(text: &str) -> Result<Self, String> {
        let map: BTreeMap<String, String> =
            serde_json::from_str(text).map_err(|e| format!("metadata: {e}"))?;
        let get = |key: &str| {
            map.get(key)
                .cloned()
                .ok_or_else(|| format!("metadata lacks {key}"))
        };
        let source = serde_json::from_value(serde_json::Value::String(get("source")?))
            .map_err(|e| format!("metadata source: {e}"))?;
        let recorded_at = DateTime::parse_from_rfc3339(&get("recorded_at")?)
            .map_err(|e| format!("metadata recorded_at: {e}"))?
            .with_timezone(&Utc);
        Ok(Self {
            actor: get("actor")?,
            source,
            request_id: get("request_id")?,
            correlation_id: get("correlation_id")?,
            causation_id: get("causation_id")?,
            idempotency_key: map.get("idempotency_key").cloned(),
            recorded_at,
            prev_hash: get("prev_hash")?,
            hash: get("hash")?,
        })
    }
}
