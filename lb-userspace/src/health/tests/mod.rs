//! Health checks against real servers on 127.0.0.1 (ephemeral ports).

mod manager;
mod probe;
mod servers;
mod tls;

use std::{future::Future, time::Duration};

/// Runs a test body, failing it if it takes longer than `limit`.
async fn bounded<T>(limit: Duration, body: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, body)
        .await
        .unwrap_or_else(|_| panic!("test did not finish within {limit:?}"))
}
