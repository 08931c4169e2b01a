//! Tests of the identity module.
