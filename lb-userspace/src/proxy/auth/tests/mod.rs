//! Tests of the auth module.
