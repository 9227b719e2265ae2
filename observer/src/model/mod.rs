//! The analysis, pure and testable without root: decoded events, wire-to-socket linking, flows, ARP pairing.

pub mod accounting;
pub mod analyzer;
pub mod arp;
pub mod events;
pub mod flows;
pub mod fold;
pub mod link;

/// The hash map of the per-packet path: foldhash's fast hasher for flow keys, tuples and addresses (SipHash cost
/// 4.4% of the agent at line rate). Its seeds are random per process, like the standard map's.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
