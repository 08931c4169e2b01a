//! The in-process L7 API gateway.

pub mod auth;
pub mod limit;
pub mod route;
