//! Tests of the auth module: JWT with key files, JWT with a JWKS URL served locally, API keys.

mod apikey;
mod fixtures;
mod jwks;
mod jwt;
