//! The gateway's router: which route (and which service) a request goes to, and the path
//! sent upstream. Pure logic, no I/O.
//!
//! # Use
//!
//! ```text
//! let table = RouteTable::build(specs)?;            // Vec<RouteSpec<T>> -> Result<_, RouteError>
//! match table.find(host, &method, path_and_query, &headers) {
//!     Err(_) => 400,                                // PathError: bad or ambiguous path
//!     Ok(None) => 404,
//!     Ok(Some(m)) => forward(m.route.pick(rand_u64), &m.path, m.route.payload()),
//! }
//! ```
//!
//! # Matching
//!
//! - **Host** (Host header or `:authority`): case-insensitive, `:port` and a trailing dot
//!   ignored. A route's `hosts` are exact names (`api.example.com`, IPs, `[::1]`),
//!   wildcards `*.example.com` (one or more labels: `a.example.com`, `a.b.example.com`,
//!   not `example.com`), or empty for any host.
//! - **Path**: the request path is normalized first ([`normalize`], like Envoy's
//!   `normalize_path` + `merge_slashes`: unreserved `%XX` decoded, `//` merged, `.` and
//!   `..` resolved). An encoded `/` or `\` (`%2F`, `%5C`), a raw `\`, a malformed escape,
//!   non-visible-ASCII bytes, or a path not starting with `/` (other than `*` for OPTIONS)
//!   make `find` return `Err(PathError)`: the caller answers 400. The normalized path is
//!   what is matched and forwarded; the query is never touched.
//!   `Exact(p)` compares the whole path. `Prefix(p)` is **segment-aware** (Envoy's
//!   `path_separated_prefix`): `/api` matches `/api`, `/api/`, `/api/x` but not `/apiary`;
//!   `/api/` matches `/api/...` but not `/api`.
//! - **Methods**: empty = any. **Headers**: each `HeaderMatch` must hold (present, or one of
//!   the header's values equal; `invert` negates).
//!
//! # Precedence
//!
//! The first route in this order wins:
//! 1. host: routes listing the exact host, then wildcard routes from the longest suffix
//!    (`*.b.example.com` before `*.example.com`), then routes with no hosts;
//! 2. within one host pattern: an exact path before any prefix, then longer prefixes first;
//! 3. for the same path: routes with more conditions (header matchers + 1 if `methods` is
//!    not empty) first;
//! 4. then config order.
//!
//! The list is flat: a request to `api.example.com` that matches none of that host's routes
//! falls through to wildcard and then host-less routes (nginx `server` blocks and Envoy
//! virtual hosts stop at the chosen host instead). To keep a host closed, give it a
//! catch-all `Prefix("/")` route.
//!
//! Lookup is a hash lookup per host group (exact host, each suffix of the host, any) and,
//! inside one, one for the exact path and one per segment prefix of the path: the cost grows
//! with the path's depth, not with the number of routes.
//!
//! # Rewrite and targets
//!
//! See [`Rewrite`] (strip or replace the matched prefix, or replace the path; the result is
//! never empty and the query is appended as received) and [`Targets::pick`] (weighted split
//! over `r % total weight`).

mod compile;
mod error;
mod host;
mod path;
mod spec;
mod table;
mod targets;
#[cfg(test)]
mod tests;

pub use compile::Route;
pub use error::{Problem, RouteError};
pub use path::{PathError, RequestPath, normalize};
pub use spec::{HeaderMatch, HeaderValueMatch, PathMatch, Rewrite, RouteSpec};
pub use table::{Matched, RouteTable};
pub use targets::Targets;
