//! Everything that formats: text lines, JSON, pcapng.

pub mod pcapng;
pub mod render;
