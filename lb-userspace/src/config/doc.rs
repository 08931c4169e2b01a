//! A thin view over a parsed `toml_edit` document that keeps, for every value, its field path
//! and its place in the text, and reports wrong types as it reads.
//!
//! Why not `#[derive(Deserialize)]` with `Spanned<T>` fields: serde stops at the first unknown
//! field or wrong type, and we want every problem of the file in one report. Walking the
//! document by hand lets reading go on past an error.

use toml_edit::{ArrayOfTables, ImDocument, Item, TableLike, Value};

use super::diag::{Diag, Span};

/// A value with the byte range it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Sp<T> {
    pub val: T,
    pub span: Span,
}

/// A table (`[header]`, inline `{ ... }` or implied by dotted keys) at `path`.
pub(super) struct Table<'a> {
    inner: &'a dyn TableLike,
    /// Field path of the table, e.g. `service[1]`; empty for the document root.
    pub path: String,
    /// Where the table is: its header (or `{`), else the key that introduced it. Missing
    /// fields are reported here.
    pub span: Span,
}

/// One value of a table or array, not yet checked for type.
pub(super) struct Node<'a> {
    val: Ref<'a>,
    pub path: String,
    pub span: Span,
}

/// What a node holds. Table entries are `Item`s but array elements are `Value`s; this folds
/// both into one shape.
#[derive(Clone, Copy)]
enum Ref<'a> {
    Value(&'a Value),
    Table(&'a toml_edit::Table),
    Tables(&'a ArrayOfTables),
}

impl<'a> Table<'a> {
    pub(super) fn root(doc: &'a ImDocument<&str>) -> Self {
        Self {
            inner: doc.as_table(),
            path: String::new(),
            span: 0..0,
        }
    }

    /// The path of `key` in this table.
    pub(super) fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// Reports every key that is not in `known`, at the key.
    pub(super) fn deny_unknown(&self, known: &[&str], d: &mut Diag) {
        self.deny_unknown_in(known, "", d);
    }

    /// Like [`Self::deny_unknown`], with `context` (e.g. " for a `consul` source") after the
    /// key in the message, for tables whose fields depend on another field.
    pub(super) fn deny_unknown_in(&self, known: &[&str], context: &str, d: &mut Diag) {
        let expected = known
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ");
        for (key, _) in self.inner.iter().filter(|(_, item)| !item.is_none()) {
            if !known.contains(&key) {
                let span = self.key_span(key);
                d.error(
                    &span,
                    &self.field(key),
                    format!("unknown field `{key}`{context}; expected one of {expected}"),
                );
            }
        }
    }

    fn key_span(&self, key: &str) -> Span {
        self.inner
            .get_key_value(key)
            .and_then(|(k, _)| k.span())
            .unwrap_or_else(|| self.span.clone())
    }

    /// The keys present, in file order.
    pub(super) fn keys(&self) -> Vec<String> {
        self.inner
            .iter()
            .filter(|(_, item)| !item.is_none())
            .map(|(k, _)| k.to_owned())
            .collect()
    }

    /// The value of `key`, if present.
    pub(super) fn get(&self, key: &str) -> Option<Node<'a>> {
        let (k, item) = self.inner.get_key_value(key)?;
        let val = match item {
            Item::None => return None,
            Item::Value(v) => Ref::Value(v),
            Item::Table(t) => Ref::Table(t),
            Item::ArrayOfTables(a) => Ref::Tables(a),
        };
        let span = item
            .span()
            .or_else(|| k.span())
            .unwrap_or_else(|| self.span.clone());
        Some(Node {
            val,
            path: self.field(key),
            span,
        })
    }

    /// The value of `key`; reports it missing at the table if it is not there.
    pub(super) fn required(&self, key: &str, what: &str, d: &mut Diag) -> Option<Node<'a>> {
        let node = self.get(key);
        if node.is_none() {
            let place = if self.path.is_empty() {
                String::new()
            } else {
                format!(" in `{}`", self.path)
            };
            d.error(
                &self.span,
                &self.field(key),
                format!("missing required field `{key}` ({what}){place}"),
            );
        }
        node
    }
}

impl Ref<'_> {
    /// "a string", "an integer", ... for messages.
    fn type_name(self) -> &'static str {
        match self {
            Ref::Value(Value::String(_)) => "a string",
            Ref::Value(Value::Integer(_)) => "an integer",
            Ref::Value(Value::Float(_)) => "a float",
            Ref::Value(Value::Boolean(_)) => "a boolean",
            Ref::Value(Value::Datetime(_)) => "a date-time",
            Ref::Value(Value::Array(_)) => "an array",
            Ref::Value(Value::InlineTable(_)) | Ref::Table(_) => "a table",
            Ref::Tables(_) => "an array of tables",
        }
    }
}

impl<'a> Node<'a> {
    fn wrong_type(&self, expected: &str, d: &mut Diag) {
        d.error(
            &self.span,
            &self.path,
            format!("expected {expected}, found {}", self.val.type_name()),
        );
    }

    fn spanned<T>(&self, val: T) -> Sp<T> {
        Sp {
            val,
            span: self.span.clone(),
        }
    }

    pub(super) fn int(&self, d: &mut Diag) -> Option<Sp<i64>> {
        match self.val {
            Ref::Value(Value::Integer(i)) => Some(self.spanned(*i.value())),
            _ => {
                self.wrong_type("an integer", d);
                None
            }
        }
    }

    pub(super) fn bool(&self, d: &mut Diag) -> Option<Sp<bool>> {
        match self.val {
            Ref::Value(Value::Boolean(b)) => Some(self.spanned(*b.value())),
            _ => {
                self.wrong_type("a boolean", d);
                None
            }
        }
    }

    pub(super) fn str(&self, d: &mut Diag) -> Option<Sp<String>> {
        match self.val {
            Ref::Value(Value::String(s)) => Some(self.spanned(s.value().clone())),
            _ => {
                self.wrong_type("a string", d);
                None
            }
        }
    }

    /// This node as a table: a `[header]` table, an inline table or a dotted-key table.
    pub(super) fn table(&self, d: &mut Diag) -> Option<Table<'a>> {
        let inner: &'a dyn TableLike = match self.val {
            Ref::Table(t) => t,
            Ref::Value(Value::InlineTable(t)) => t,
            _ => {
                self.wrong_type("a table", d);
                return None;
            }
        };
        Some(Table {
            inner,
            path: self.path.clone(),
            span: self.span.clone(),
        })
    }

    /// The elements of an inline array, each with the path `path[i]`.
    pub(super) fn array(&self, d: &mut Diag) -> Option<Vec<Node<'a>>> {
        let Ref::Value(Value::Array(array)) = self.val else {
            self.wrong_type("an array", d);
            return None;
        };
        Some(
            array
                .iter()
                .enumerate()
                .map(|(i, v)| Node {
                    val: Ref::Value(v),
                    path: format!("{}[{i}]", self.path),
                    span: v.span().unwrap_or_else(|| self.span.clone()),
                })
                .collect(),
        )
    }

    /// The tables of `[[name]]` sections (or of an inline array of inline tables), each with
    /// the path `path[i]`; `None` (reported) if this is not an array, and `None` elements
    /// (reported) for elements that are not tables, so indices stay those of the file.
    pub(super) fn tables(&self, what: &str, d: &mut Diag) -> Option<Vec<Option<Table<'a>>>> {
        match self.val {
            Ref::Tables(aot) => Some(
                aot.iter()
                    .enumerate()
                    .map(|(i, t)| {
                        Some(Table {
                            inner: t,
                            path: format!("{}[{i}]", self.path),
                            span: t.span().unwrap_or_else(|| self.span.clone()),
                        })
                    })
                    .collect(),
            ),
            Ref::Value(Value::Array(_)) => Some(
                self.array(d)?
                    .into_iter()
                    .map(|node| node.table(d))
                    .collect(),
            ),
            _ => {
                self.wrong_type(what, d);
                None
            }
        }
    }
}
