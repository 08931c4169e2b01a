//! The key schema (`<prefix><service>/<ip>:<port>`, value empty or JSON) and the entries
//! under the prefix as the source last read them.

use std::{collections::BTreeMap, net::SocketAddr};

use serde::Deserialize;
use tracing::warn;

use super::{EntryError, MAX_WEIGHT};
use crate::registry::Endpoint;

/// The entries under the prefix, by raw key; `None` marks a malformed entry.
#[derive(Debug, Default)]
pub(super) struct Snapshot {
    pub(super) entries: BTreeMap<Vec<u8>, Option<Endpoint>>,
    /// Malformed entries met since the last [`Snapshot::take_new_skips`].
    pub(super) new_skips: u64,
}

impl Snapshot {
    pub(super) fn put(&mut self, source: &str, prefix: &[u8], key: Vec<u8>, value: &[u8]) {
        let parsed = key
            .strip_prefix(prefix)
            .ok_or(EntryError::KeyShape)
            .and_then(|suffix| parse_entry(suffix, value));
        let entry = match parsed {
            Ok(endpoint) => Some(endpoint),
            Err(e) => {
                warn!(source, key = %String::from_utf8_lossy(&key), "etcd: skipping entry: {e}");
                self.new_skips += 1;
                None
            }
        };
        self.entries.insert(key, entry);
    }

    pub(super) fn delete(&mut self, key: &[u8]) {
        self.entries.remove(key);
    }

    pub(super) fn endpoints(&self) -> Vec<Endpoint> {
        self.entries.values().flatten().cloned().collect()
    }

    pub(super) fn valid(&self) -> usize {
        self.entries.values().flatten().count()
    }

    pub(super) fn skipped(&self) -> usize {
        self.entries.values().filter(|e| e.is_none()).count()
    }

    pub(super) fn take_new_skips(&mut self) -> u64 {
        std::mem::take(&mut self.new_skips)
    }
}

/// Parses one entry: `suffix` is the key after the prefix (`<service>/<ip>:<port>`).
pub fn parse_entry(suffix: &[u8], value: &[u8]) -> Result<Endpoint, EntryError> {
    let suffix = std::str::from_utf8(suffix).map_err(|_| EntryError::KeyShape)?;
    let (service, address) = suffix.split_once('/').ok_or(EntryError::KeyShape)?;
    if address.contains('/') {
        return Err(EntryError::KeyShape);
    }
    let service_ok = (1..=63).contains(&service.len())
        && service
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !service_ok {
        return Err(EntryError::Service(service.to_owned()));
    }
    let socket: SocketAddr = address
        .parse()
        .map_err(|_| EntryError::Address(address.to_owned()))?;
    let ip = socket.ip();
    if socket.port() == 0 || ip.is_unspecified() || ip.is_multicast() {
        return Err(EntryError::Address(address.to_owned()));
    }
    let value = parse_value(value)?;
    Ok(Endpoint {
        service: service.to_owned(),
        addr: ip,
        port: socket.port(),
        weight: value.weight,
        metadata: value.metadata,
    })
}

#[derive(Debug, Deserialize)]
struct EntryValue {
    #[serde(default = "default_weight")]
    pub(super) weight: u32,
    #[serde(default)]
    pub(super) metadata: BTreeMap<String, String>,
}

fn default_weight() -> u32 {
    1
}

fn parse_value(value: &[u8]) -> Result<EntryValue, EntryError> {
    if value.iter().all(u8::is_ascii_whitespace) {
        return Ok(EntryValue {
            weight: 1,
            metadata: BTreeMap::new(),
        });
    }
    let json: serde_json::Value =
        serde_json::from_slice(value).map_err(|e| EntryError::Value(e.to_string()))?;
    // Checked first: serde would also build the struct from an array.
    if !json.is_object() {
        return Err(EntryError::Value(format!("{json} is not an object")));
    }
    let v: EntryValue =
        serde_json::from_value(json).map_err(|e| EntryError::Value(e.to_string()))?;
    if v.weight > MAX_WEIGHT {
        return Err(EntryError::Weight(v.weight));
    }
    Ok(v)
}

/// The first key of the range: the prefix, or `\0` (all keys) for an empty prefix.
pub(super) fn range_key(prefix: &[u8]) -> Vec<u8> {
    if prefix.is_empty() {
        vec![0]
    } else {
        prefix.to_vec()
    }
}

/// The end of the range holding every key that starts with `prefix` (etcd's rule: the prefix
/// with its last byte below 0xff incremented; `\0`, meaning "to the end", if there is none).
pub(super) fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
