//! Records, constants and logic shared by observer's kernel programs and its agent.
//!
//! Everything here builds for `bpfel-unknown-none` as well as for the host, so the host tests exercise the
//! same parser and decisions that the kernel programs run.
#![cfg_attr(not(test), no_std)]

pub mod config;
pub mod control;
pub mod counter;
pub mod fold;
pub mod mem;
pub mod parse;
pub mod record;
pub mod sock;

pub use config::Config;
pub use counter::Counter;
pub use record::{ArpRecord, RecordHeader, TcpRecord};
