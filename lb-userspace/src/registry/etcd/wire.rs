//! etcd's v3 JSON gateway: the shapes of its answers (proto3 JSON: int64 as strings,
//! defaults omitted, keys and values base64) and the watch stream's lines.

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use serde::{Deserialize, Deserializer};

#[derive(Debug, Default, Deserialize)]
pub(super) struct ResponseHeader {
    #[serde(default, deserialize_with = "int64")]
    pub(super) revision: i64,
}

#[derive(Debug, Deserialize)]
pub(super) struct RangeResponse {
    #[serde(default)]
    pub(super) header: ResponseHeader,
    #[serde(default)]
    pub(super) kvs: Vec<KeyValue>,
}

#[derive(Debug, Deserialize)]
pub(super) struct KeyValue {
    pub(super) key: String,
    #[serde(default)]
    pub(super) value: String,
}

impl KeyValue {
    pub(super) fn decode(&self) -> Result<(Vec<u8>, Vec<u8>), String> {
        let key = BASE64
            .decode(&self.key)
            .map_err(|e| format!("key {:?} is not base64: {e}", self.key))?;
        let value = BASE64
            .decode(&self.value)
            .map_err(|e| format!("value of key {:?} is not base64: {e}", self.key))?;
        Ok((key, value))
    }
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct WatchResult {
    #[serde(default)]
    pub(super) created: bool,
    #[serde(default)]
    pub(super) canceled: bool,
    #[serde(default, deserialize_with = "int64")]
    pub(super) compact_revision: i64,
    #[serde(default)]
    pub(super) cancel_reason: String,
    #[serde(default)]
    pub(super) events: Vec<WatchEvent>,
}

#[derive(Debug, Deserialize)]
pub(super) struct WatchEvent {
    #[serde(rename = "type", default)]
    pub(super) kind: EventKind,
    pub(super) kv: KeyValue,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) enum EventKind {
    #[default]
    Put,
    Delete,
}

impl<'de> Deserialize<'de> for EventKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // The gateway writes enum names; numbers are valid proto3 JSON too.
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) if s == "PUT" => Ok(EventKind::Put),
            serde_json::Value::String(s) if s == "DELETE" => Ok(EventKind::Delete),
            serde_json::Value::Number(n) if n.as_u64() == Some(0) => Ok(EventKind::Put),
            serde_json::Value::Number(n) if n.as_u64() == Some(1) => Ok(EventKind::Delete),
            other => Err(serde::de::Error::custom(format!(
                "unknown event type {other}"
            ))),
        }
    }
}

/// One line of the watch stream.
#[derive(Debug)]
pub(super) enum WatchMessage {
    Result(WatchResult),
    /// The gateway's in-stream error, e.g. `{"error":{"grpc_code":14,"message":"transport is closing",...}}`.
    Error {
        code: i64,
        message: String,
    },
}

pub(super) fn parse_watch_line(line: &[u8]) -> Result<WatchMessage, String> {
    #[derive(Deserialize)]
    struct Line {
        result: Option<WatchResult>,
        error: Option<serde_json::Value>,
    }
    let parsed: Line = serde_json::from_slice(line).map_err(|e| {
        let shown = String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned();
        format!("watch message {shown:?}: {e}")
    })?;
    if let Some(error) = parsed.error {
        let code = error
            .get("grpc_code")
            .or_else(|| error.get("code"))
            .and_then(serde_json::Value::as_i64)
            .unwrap_or(-1);
        let message = error
            .get("message")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| error.to_string());
        return Ok(WatchMessage::Error { code, message });
    }
    parsed
        .result
        .map(WatchMessage::Result)
        .ok_or_else(|| "watch message with neither result nor error".to_owned())
}

/// proto3 JSON writes int64 as a string; accept a number too.
fn int64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => s.parse().map_err(serde::de::Error::custom),
        serde_json::Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| serde::de::Error::custom(format!("{n} is not an int64"))),
        other => Err(serde::de::Error::custom(format!("{other} is not an int64"))),
    }
}
