//! Helpers for observer's kernel and end-to-end tests.

pub mod agent;
pub mod conns;
pub mod kernel;
pub mod netns;
pub mod oracle;
pub mod procstat;
pub mod require;
pub mod traffic;
pub mod tshark;

use std::time::Duration;

/// `limit` stretched by `OBSERVER_TEST_PATIENCE` (a whole factor, default 1): for upper bounds on something
/// that should happen, never for delays. The kernel matrix sets it, since its guests may run under software
/// emulation at a tenth of this machine's speed.
pub fn patient(limit: Duration) -> Duration {
    let factor = std::env::var("OBSERVER_TEST_PATIENCE")
        .ok()
        .and_then(|f| f.parse::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    limit * factor
}

/// How long a test waits for an expected line, packet or exit: 20 s, made [`patient`].
pub fn wait() -> Duration {
    patient(Duration::from_secs(20))
}
