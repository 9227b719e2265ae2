//! observer's agent: loads the kernel programs, reads their records, and renders what the wire and the
//! kernel's sockets do.

pub mod arp;
pub mod capture;
pub mod cli;
pub mod events;
pub mod exit;
pub mod flows;
pub mod kevents;
pub mod link;
pub mod neigh;
pub mod pcapng;
pub mod preflight;
pub mod privileges;
pub mod queues;
pub mod render;
pub mod rtnl;
pub mod sockets;
pub mod table;
pub mod watch;
pub mod watchdog;
