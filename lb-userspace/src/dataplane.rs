//! Data plane loader (being written).
