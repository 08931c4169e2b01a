//! The API-key file: parsing and checking, every problem reported as
//! `file:line:column: field: message` (the config's format).
//!
//! Read with `toml_edit` (spans) rather than serde, so one run reports every problem.

use std::collections::HashMap;
use std::ops::Range;

use toml_edit::{ImDocument, Item, TableLike, Value};

use super::identity::{KeyLimits, header_value};

/// One problem in a key file; `line`/`column` are 1-based (0 when there is no place, e.g.
/// the file cannot be read).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {field}: {message}")]
pub struct KeyFileError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// e.g. `key[2].sha256` (0-based index in file order), `syntax`, `file`.
    pub field: String,
    pub message: String,
}

/// Every problem found in a key file, in file order. Never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct KeyFileErrors(pub Vec<KeyFileError>);

/// A checked `[[key]]`.
pub(super) struct KeyEntry {
    pub name: String,
    pub digest: [u8; 32],
    pub tenant: Option<String>,
    pub scopes: Vec<String>,
    pub limits: Option<KeyLimits>,
}

const FIELDS: [&str; 6] = ["name", "sha256", "tenant", "scopes", "rate", "burst"];

struct Diag<'t> {
    file: &'t str,
    text: &'t str,
    errors: Vec<KeyFileError>,
}

impl Diag<'_> {
    fn error(&mut self, span: Option<Range<usize>>, field: &str, message: impl Into<String>) {
        let (line, column) = match span {
            Some(s) => {
                let mut at = s.start.min(self.text.len());
                while !self.text.is_char_boundary(at) {
                    at -= 1;
                }
                let before = &self.text[..at];
                let line_start = before.rfind('\n').map_or(0, |i| i + 1);
                (
                    before.matches('\n').count() + 1,
                    before[line_start..].chars().count() + 1,
                )
            }
            None => (0, 0),
        };
        self.errors.push(KeyFileError {
            file: self.file.to_owned(),
            line,
            column,
            field: field.to_owned(),
            message: message.into(),
        });
    }
}

/// Parses key-file `text`; `file` names it in errors.
pub(super) fn parse(text: &str, file: &str) -> Result<Vec<KeyEntry>, KeyFileErrors> {
    let mut d = Diag {
        file,
        text,
        errors: Vec::new(),
    };
    let doc = match ImDocument::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let message = e
                .message()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            d.error(e.span(), "syntax", message);
            return Err(KeyFileErrors(d.errors));
        }
    };
    let root = doc.as_table();
    for (k, _) in root.iter().filter(|(k, _)| *k != "key") {
        let span = root.key(k).and_then(|k| k.span());
        d.error(
            span,
            k,
            format!("unknown field `{k}`; expected `[[key]]` tables"),
        );
    }
    let mut entries = Vec::new();
    match root.get("key") {
        None => {}
        Some(Item::ArrayOfTables(tables)) => {
            for (i, t) in tables.iter().enumerate() {
                if let Some(e) = entry(t, t.span(), &format!("key[{i}]"), &mut d) {
                    entries.push((e, t.span(), i));
                }
            }
        }
        Some(other) => d.error(other.span(), "key", "expected `[[key]]` tables"),
    }
    check_unique(&entries, &mut d);
    if d.errors.is_empty() {
        Ok(entries.into_iter().map(|(e, _, _)| e).collect())
    } else {
        d.errors.sort_by_key(|e| (e.line, e.column));
        Err(KeyFileErrors(d.errors))
    }
}

/// Reads one `[[key]]`; `None` if it had an error (reported).
fn entry(
    t: &dyn TableLike,
    at: Option<Range<usize>>,
    path: &str,
    d: &mut Diag,
) -> Option<KeyEntry> {
    let before = d.errors.len();
    for (k, _) in t.iter() {
        if !FIELDS.contains(&k) {
            let span = t.key(k).and_then(|k| k.span());
            d.error(
                span,
                &format!("{path}.{k}"),
                format!("unknown field `{k}`; expected one of {}", FIELDS.join(", ")),
            );
        }
    }
    let field = |k: &str| format!("{path}.{k}");
    let value = |k: &str| t.get(k).and_then(Item::as_value);
    let span_of = |k: &str| t.get(k).and_then(Item::span).or_else(|| at.clone());

    let text = |k: &str, required: bool, d: &mut Diag| -> Option<String> {
        match (t.get(k), value(k).and_then(Value::as_str)) {
            (None, _) if required => {
                d.error(
                    at.clone(),
                    &field(k),
                    format!("missing required field `{k}`"),
                );
                None
            }
            (None, _) => None,
            (Some(_), None) => {
                d.error(span_of(k), &field(k), "expected a string");
                None
            }
            (Some(_), Some(s)) if s.is_empty() || header_value(s).is_none() => {
                d.error(
                    span_of(k),
                    &field(k),
                    "must be non-empty, without control characters",
                );
                None
            }
            (Some(_), Some(s)) => Some(s.to_owned()),
        }
    };
    let name = text("name", true, d);
    let digest = text("sha256", true, d).and_then(|hex_text| {
        let mut digest = [0u8; 32];
        match hex::decode_to_slice(&hex_text, &mut digest) {
            Ok(()) => Some(digest),
            Err(_) => {
                d.error(
                    span_of("sha256"),
                    &field("sha256"),
                    "expected 64 hex digits (the SHA-256 of the key)",
                );
                None
            }
        }
    });
    let tenant = text("tenant", false, d);

    let mut scopes = Vec::new();
    if let Some(item) = t.get("scopes") {
        match item.as_array() {
            None => d.error(
                span_of("scopes"),
                &field("scopes"),
                "expected an array of strings",
            ),
            Some(array) => {
                for (i, v) in array.iter().enumerate() {
                    match v.as_str() {
                        Some(s)
                            if !s.is_empty()
                                && !s.chars().any(|c| c.is_whitespace() || c.is_control()) =>
                        {
                            scopes.push(s.to_owned());
                        }
                        _ => d.error(
                            v.span(),
                            &format!("{path}.scopes[{i}]"),
                            "expected a non-empty string without spaces or control characters",
                        ),
                    }
                }
            }
        }
    }

    let count = |k: &str, d: &mut Diag| -> Option<u32> {
        t.get(k)?;
        let n = value(k)
            .and_then(Value::as_integer)
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n > 0);
        if n.is_none() {
            d.error(
                span_of(k),
                &field(k),
                "expected an integer from 1 to 4294967295",
            );
        }
        n
    };
    let rate = count("rate", d);
    let burst = count("burst", d);
    if burst.is_some() && t.get("rate").is_none() {
        d.error(span_of("burst"), &field("burst"), "`burst` needs `rate`");
    }
    if d.errors.len() > before {
        return None;
    }
    Some(KeyEntry {
        name: name?,
        digest: digest?,
        tenant,
        scopes,
        limits: rate.map(|rate| KeyLimits {
            rate,
            burst: burst.unwrap_or(rate),
        }),
    })
}

/// Names and hashes must be unique: a name is the identity, a hash the lookup key.
fn check_unique(entries: &[(KeyEntry, Option<Range<usize>>, usize)], d: &mut Diag) {
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut digests: HashMap<[u8; 32], usize> = HashMap::new();
    for (at, (e, span, i)) in entries.iter().enumerate() {
        if let Some(&first) = names.get(e.name.as_str()) {
            let line = line_of(d.text, &entries[first].1);
            d.error(
                span.clone(),
                &format!("key[{i}].name"),
                format!("duplicate name `{}` (first at line {line})", e.name),
            );
        } else {
            names.insert(&e.name, at);
        }
        if let Some(&first) = digests.get(&e.digest) {
            let line = line_of(d.text, &entries[first].1);
            d.error(
                span.clone(),
                &format!("key[{i}].sha256"),
                format!("duplicate sha256 (first at line {line})"),
            );
        } else {
            digests.insert(e.digest, at);
        }
    }
}

fn line_of(text: &str, span: &Option<Range<usize>>) -> usize {
    span.as_ref().map_or(0, |s| {
        text[..s.start.min(text.len())].matches('\n').count() + 1
    })
}
