//! How a command ends: the exit status of every error (the README's
//! table of exit statuses).

use std::io;

use crate::{sys::fault::Fault, view::pcapng::PcapngError};

/// Exit statuses, one per way of ending.
pub mod status {
    /// A normal end: Ctrl-C, SIGTERM, `--count`, or the reader of stdout went away.
    pub const OK: u8 = 0;
    /// Any error before or while attaching: privileges, interface, load, attach, a file that cannot be created.
    pub const ERROR: u8 = 1;
    /// A command line clap refuses (an unknown option, a value out of range).
    pub const USAGE: u8 = 2;
    /// The watched interface was deleted or left the network namespace (also when its veth peer's namespace
    /// was deleted).
    pub const INTERFACE_GONE: u8 = 3;
    /// The watched interface was renamed.
    pub const INTERFACE_RENAMED: u8 = 4;
    /// Someone else detached one of the agent's programs from the interface.
    pub const DETACHED: u8 = 5;
    /// The ring buffer's fd failed.
    pub const RING: u8 = 6;
    /// Writing stdout failed (other than a closed pipe).
    pub const OUTPUT: u8 = 7;
    /// Writing the `--write` pcapng file failed (a full disk, say).
    pub const PCAPNG: u8 = 8;
}

/// The exit status of an error that ended a command; `None` when it should end quietly with 0: the reader of
/// stdout went away (`observer ... | head -1`), as for any Unix filter.
pub fn status_of(e: &anyhow::Error) -> Option<u8> {
    let closed_pipe = e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    });
    if closed_pipe {
        return None;
    }
    let status = e.chain().find_map(|c| {
        if let Some(f) = c.downcast_ref::<Fault>() {
            Some(fault_status(f))
        } else if let Some(PcapngError::Write { .. } | PcapngError::Encode { .. }) = c.downcast_ref::<PcapngError>() {
            Some(status::PCAPNG)
        } else {
            None
        }
    });
    Some(status.unwrap_or(status::ERROR))
}

/// The exit status a fault ends the agent with.
pub fn fault_status(f: &Fault) -> u8 {
    match f {
        Fault::InterfaceGone { .. } => status::INTERFACE_GONE,
        Fault::InterfaceRenamed { .. } => status::INTERFACE_RENAMED,
        Fault::Detached { .. } => status::DETACHED,
        Fault::Ring(_) => status::RING,
        Fault::Output(_) => status::OUTPUT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_pipe_is_quiet_and_faults_have_their_own_status() {
        let pipe = anyhow::Error::from(io::Error::from(io::ErrorKind::BrokenPipe)).context("writing to stdout");
        assert_eq!(status_of(&pipe), None);
        let pipe = anyhow::Error::from(Fault::Output(io::ErrorKind::BrokenPipe.into()));
        assert_eq!(status_of(&pipe), None);
        let eio = anyhow::Error::from(Fault::Output(io::Error::from_raw_os_error(libc::EIO)));
        assert_eq!(status_of(&eio), Some(status::OUTPUT));
        let gone = anyhow::Error::from(Fault::InterfaceGone { iface: "x".into() }).context("watching");
        assert_eq!(status_of(&gone), Some(status::INTERFACE_GONE));
        let full = PcapngError::Write {
            path: "f".into(),
            source: io::Error::from_raw_os_error(libc::ENOSPC),
        };
        assert_eq!(status_of(&full.into()), Some(status::PCAPNG));
        assert_eq!(status_of(&anyhow::anyhow!("no such interface")), Some(status::ERROR));
    }

    #[test]
    fn the_readme_lists_every_status() {
        let readme = include_str!("../../../README.md");
        let all = [
            status::OK,
            status::ERROR,
            status::USAGE,
            status::INTERFACE_GONE,
            status::INTERFACE_RENAMED,
            status::DETACHED,
            status::RING,
            status::OUTPUT,
            status::PCAPNG,
        ];
        for s in all {
            assert!(
                readme.lines().any(|l| l.starts_with(&format!("| {s} | "))),
                "status {s}"
            );
        }
        let faults = [
            Fault::InterfaceGone { iface: "veth-a".into() }.to_string(),
            Fault::InterfaceRenamed {
                iface: "veth-a".into(),
                now: "veth-z".into(),
            }
            .to_string(),
            Fault::Detached {
                program: "tc_ingress",
                iface: "veth-a".into(),
            }
            .to_string(),
        ];
        for f in faults {
            assert!(readme.contains(&format!("`observer: error: {f}`")), "{f}");
        }
    }
}
