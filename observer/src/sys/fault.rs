//! The faults that end a running agent: its interface went away, its programs were detached, its ring or its
//! output failed.

use std::io;

/// A fault that ended a running agent.
#[derive(Debug, thiserror::Error)]
pub enum Fault {
    /// The interface is no longer in this namespace.
    #[error("interface {iface} is gone (deleted, or moved out of this network namespace)")]
    InterfaceGone {
        /// Its name when the agent started.
        iface: String,
    },
    /// The interface has another name now.
    #[error("interface {iface} was renamed to {now}")]
    InterfaceRenamed {
        /// Its name when the agent started.
        iface: String,
        /// Its name now.
        now: String,
    },
    /// A program's attachment went away while the interface stayed.
    #[error("{program} was detached from {iface} by someone else")]
    Detached {
        /// The program.
        program: &'static str,
        /// The interface.
        iface: String,
    },
    /// Polling the ring buffer failed.
    #[error("the ring buffer failed")]
    Ring(#[source] io::Error),
    /// Writing stdout failed.
    #[error("writing to stdout failed")]
    Output(#[source] io::Error),
}
