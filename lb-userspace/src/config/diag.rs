//! Collects errors while the config is read and checked, turning byte spans into the
//! line/column a person looks for.
//!
//! Reading and checking go on after an error so that one run reports everything; the
//! collector is the one place that knows the file name and the text.

use std::ops::Range;

use super::error::{ConfigError, ConfigErrors};

/// A byte range in the config text.
pub(super) type Span = Range<usize>;

pub(super) struct Diag<'t> {
    file: String,
    text: &'t str,
    /// Byte offset where each line starts; `line_starts[0] == 0`.
    line_starts: Vec<usize>,
    errors: Vec<ConfigError>,
}

impl<'t> Diag<'t> {
    pub(super) fn new(file: &str, text: &'t str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self {
            file: file.to_owned(),
            text,
            line_starts,
            errors: Vec::new(),
        }
    }

    /// Records a problem with `field`, placed at the start of `span`.
    pub(super) fn error(&mut self, span: &Span, field: &str, message: impl Into<String>) {
        let (line, column) = self.line_column(span.start);
        self.errors.push(ConfigError {
            file: self.file.clone(),
            line,
            column,
            field: field.to_owned(),
            message: message.into(),
        });
    }

    /// 1-based line and character column of byte `offset` (clamped into the text).
    fn line_column(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.line_starts.partition_point(|&s| s <= offset);
        let start = self.line_starts[line - 1];
        (line, self.text[start..offset].chars().count() + 1)
    }

    /// The 1-based line `span` starts on, for messages like "first defined at line 7".
    pub(super) fn line(&self, span: &Span) -> usize {
        self.line_column(span.start).0
    }

    /// `Ok(value)` if nothing was reported, else every error.
    pub(super) fn finish<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(self.into_errors())
        }
    }

    /// The errors reported, sorted by position (stable, so errors at one place keep the order
    /// they were found in).
    pub(super) fn into_errors(self) -> ConfigErrors {
        let mut errors = self.errors;
        errors.sort_by_key(|e| (e.line, e.column));
        ConfigErrors(errors)
    }
}
