//! Helpers for observer's kernel and end-to-end tests.

pub mod agent;
pub mod conns;
pub mod kernel;
pub mod netns;
pub mod oracle;
pub mod require;
pub mod traffic;
pub mod tshark;
