//! Route table build errors: each names the route by index and name and the field.

use thiserror::Error;

use super::PathError;

/// `route[2] (users).path_prefix: must start with "/"`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("route[{index}] ({name}).{field}: {problem}")]
pub struct RouteError {
    pub index: usize,
    pub name: String,
    /// `name`, `hosts[1]`, `path_exact`, `path_prefix`, `headers[0].name`, `rewrite`,
    /// `targets`, `targets[3]` ...
    pub field: String,
    pub problem: Problem,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Problem {
    #[error("must not be empty")]
    Empty,
    #[error("same name as route[{0}]")]
    DuplicateName(usize),
    #[error("must start with \"/\"")]
    NoLeadingSlash,
    #[error("must not contain \"?\" (the query is matched and kept separately)")]
    Query,
    #[error("{0}")]
    BadPath(PathError),
    #[error("not in normalized form, requests would be compared as {0:?}")]
    NotNormalized(String),
    #[error("bad wildcard: only a leading \"*.\" before a domain is allowed (\"*.example.com\")")]
    BadWildcard,
    #[error("must not have a port: hosts are matched without it")]
    HostPort,
    #[error("not a valid host name")]
    BadHost,
    #[error("not a valid header name")]
    BadHeaderName,
    #[error("not a valid header value")]
    BadHeaderValue,
    #[error("all weights are 0")]
    AllZeroWeights,
    #[error("service {0:?} listed twice")]
    DuplicateTarget(String),
}
