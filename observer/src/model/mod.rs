//! The analysis, pure and testable without root: decoded events, wire-to-socket linking, flows, ARP pairing.

pub mod analyzer;
pub mod arp;
pub mod events;
pub mod flows;
pub mod fold;
pub mod link;
