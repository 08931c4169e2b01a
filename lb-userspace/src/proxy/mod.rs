//! The in-process L7 API gateway.

pub mod limit;
pub mod route;
