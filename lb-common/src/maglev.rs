//! Weighted Maglev table (placeholder: being written).
