//! The error type `load` and `parse` return.
//!
//! A config is usually edited by hand and checked once at start-up, so every problem found is
//! reported in one go (not just the first), each pointing at the exact place to fix:
//! `file:line:column: field: message`, the format editors and CI logs turn into links.

/// One problem in a config file.
///
/// `line` and `column` are 1-based (columns count characters, not bytes). They are 0 only when
/// the problem has no place in the text, e.g. the file could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {field}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// Path of the offending field, e.g. `service[2].backend[1].address` (0-based indices in
    /// file order), `syntax` for a TOML syntax error, `file` when the file cannot be read.
    pub field: String,
    pub message: String,
}

/// Every problem found in a config file, sorted by position. Never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", one_per_line(.0))]
pub struct ConfigErrors(pub Vec<ConfigError>);

fn one_per_line(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}
