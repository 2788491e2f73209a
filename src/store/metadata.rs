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
    /// Every field but `hash`, as compact JSON with keys sorted: the metadata part of the
    /// chained bytes. Written by hand in the order a sorted map serializes (the hot path
    /// writes two of these per event), byte for byte what serde_json gives for a
    /// `BTreeMap<String, String>` of the same fields (tested).
    pub fn chained_json(&self) -> String {
        self.json(false)
    }

    /// The stored form: every field, `hash` included, keys sorted.
    pub fn to_json(&self) -> String {
        self.json(true)
    }

    fn json(&self, with_hash: bool) -> String {
        let mut out = String::with_capacity(512);
        let mut field = |key: &str, value: &str| {
            out.push(if out.is_empty() { '{' } else { ',' });
            out.push('"');
            out.push_str(key);
            out.push_str("\":");
            out.push_str(&serde_json::to_string(value).expect("strings serialize"));
        };
        field("actor", &self.actor);
        field("causation_id", &self.causation_id);
        field("correlation_id", &self.correlation_id);
        if with_hash {
            field("hash", &self.hash);
        }
        if let Some(key) = &self.idempotency_key {
            field("idempotency_key", key);
        }
        field("prev_hash", &self.prev_hash);
        field(
            "recorded_at",
            &self
                .recorded_at
                .to_rfc3339_opts(SecondsFormat::Micros, true),
        );
        field("request_id", &self.request_id);
        field("source", self.source.as_str());
        out.push('}');
        out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_written_json_equals_a_sorted_map() {
        let metadata = EventMetadata {
            actor: "key:\"quoted\"".into(),
            source: Source::Webhook,
            request_id: "req-1".into(),
            correlation_id: "pi_1".into(),
            causation_id: "evt_1".into(),
            idempotency_key: Some("ünïcode\n".into()),
            recorded_at: DateTime::parse_from_rfc3339("2026-11-23T18:00:00.123456Z")
                .unwrap()
                .with_timezone(&Utc),
            prev_hash: "0".repeat(64),
            hash: "f".repeat(64),
        };
        let mut map = BTreeMap::new();
        for (key, value) in [
            ("actor", metadata.actor.clone()),
            ("source", "webhook".into()),
            ("request_id", metadata.request_id.clone()),
            ("correlation_id", metadata.correlation_id.clone()),
            ("causation_id", metadata.causation_id.clone()),
            ("idempotency_key", "ünïcode\n".into()),
            ("recorded_at", "2026-11-23T18:00:00.123456Z".into()),
            ("prev_hash", metadata.prev_hash.clone()),
        ] {
            map.insert(key.to_owned(), value);
        }
        assert_eq!(
            metadata.chained_json(),
            serde_json::to_string(&map).unwrap()
        );
        map.insert("hash".into(), metadata.hash.clone());
        assert_eq!(metadata.to_json(), serde_json::to_string(&map).unwrap());
        assert_eq!(
            EventMetadata::from_json(&metadata.to_json()).unwrap(),
            metadata
        );
    }
}
