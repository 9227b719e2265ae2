//! The kernel's IPv4 neighbour table beside the wire: a NETLINK_ROUTE dump (RTM_GETNEIGH) at start, then the
//! RTNLGRP_NEIGH notifications, turned into changes (`INCOMPLETE→REACHABLE`, a new lladdr, a deletion).
//!
//! Entries in NOARP state (multicast, broadcast, loopback) are left out, as `ip neigh show` leaves them out.

use std::collections::HashMap;
use std::io;
use std::net::Ipv4Addr;

use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage},
};
use netlink_sys::{Socket, protocols::NETLINK_ROUTE};

use crate::sys::rtnl::{self, RECV_BUF};

/// Multicast group of neighbour notifications (`RTNLGRP_NEIGH` in linux/rtnetlink.h).
const RTNLGRP_NEIGH: u32 = 3;
/// Default cap on the entries the table remembers.
pub const DEFAULT_NEIGH_ENTRIES: usize = 4096;

/// A neighbour state (`NUD_*` bits of linux/neighbour.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NeighState(pub u16);

impl NeighState {
    /// `NUD_INCOMPLETE`: resolution under way.
    pub const INCOMPLETE: NeighState = NeighState(0x01);
    /// `NUD_REACHABLE`: confirmed recently.
    pub const REACHABLE: NeighState = NeighState(0x02);
    /// `NUD_STALE`.
    pub const STALE: NeighState = NeighState(0x04);
    /// `NUD_DELAY`.
    pub const DELAY: NeighState = NeighState(0x08);
    /// `NUD_PROBE`.
    pub const PROBE: NeighState = NeighState(0x10);
    /// `NUD_FAILED`: resolution gave up.
    pub const FAILED: NeighState = NeighState(0x20);
    /// `NUD_NOARP`.
    pub const NOARP: NeighState = NeighState(0x40);
    /// `NUD_PERMANENT`.
    pub const PERMANENT: NeighState = NeighState(0x80);

    /// The name `ip neigh` prints, e.g. `REACHABLE`; `NONE` for no bit, hex for several.
    pub fn name(self) -> String {
        const NAMES: [&str; 8] = [
            "INCOMPLETE",
            "REACHABLE",
            "STALE",
            "DELAY",
            "PROBE",
            "FAILED",
            "NOARP",
            "PERMANENT",
        ];
        match self.0 {
            0 => "NONE".to_owned(),
            s if s.count_ones() == 1 && s < 0x100 => NAMES[s.trailing_zeros() as usize].to_owned(),
            s => format!("0x{s:x}"),
        }
    }
}

/// One neighbour message: an entry as the kernel reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NeighMsg {
    /// Interface index.
    pub ifindex: u32,
    /// The neighbour's address.
    pub ip: Ipv4Addr,
    /// Its link-layer address, when known.
    pub lladdr: Option<[u8; 6]>,
    /// Its state.
    pub state: NeighState,
    /// Whether the entry was deleted (RTM_DELNEIGH).
    pub deleted: bool,
    /// How long before the message the kernel last updated the entry, in ms (`NDA_CACHEINFO`'s `ndm_updated`,
    /// in clock ticks of 10 ms, rounded down), when the message says.
    pub updated_ago_ms: Option<u64>,
}

impl NeighMsg {
    /// When the kernel updated the entry, for a message read at `read_ns`: a delayed read changes nothing.
    pub fn updated_ns(&self, read_ns: u64) -> u64 {
        read_ns.saturating_sub(self.updated_ago_ms.unwrap_or(0).saturating_mul(1_000_000))
    }
}

/// A change of one neighbour entry, stamped when the kernel updated it (as far as its message tells).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NeighChange {
    /// Boot-time nanoseconds when the kernel updated the entry (the read time less the message's age of it).
    pub ts_ns: u64,
    /// Interface index.
    pub ifindex: u32,
    /// The neighbour's address.
    pub ip: Ipv4Addr,
    /// Its link-layer address, when known.
    pub lladdr: Option<[u8; 6]>,
    /// The state before, when the entry was known.
    pub old: Option<NeighState>,
    /// The state now.
    pub state: NeighState,
    /// Whether the entry was deleted.
    pub deleted: bool,
}

impl NeighChange {
    /// `REACHABLE`, `INCOMPLETE→REACHABLE` when the state changed, `DELETED` for a deletion.
    pub fn state_text(&self) -> String {
        match self.old {
            _ if self.deleted => "DELETED".to_owned(),
            Some(old) if old != self.state => format!("{}→{}", old.name(), self.state.name()),
            _ => self.state.name(),
        }
    }
}

/// An entry's state and link-layer address, as last reported.
type Known = (NeighState, Option<[u8; 6]>);

/// The entries known so far, to turn notifications into changes (bounded: when full, new addresses are not
/// remembered and their changes show no old state).
#[derive(Debug)]
pub struct NeighTable {
    entries: HashMap<(u32, Ipv4Addr), Known>,
    max_entries: usize,
}

impl Default for NeighTable {
    fn default() -> Self {
        NeighTable {
            entries: HashMap::new(),
            max_entries: DEFAULT_NEIGH_ENTRIES,
        }
    }
}

impl NeighTable {
    /// A table seeded with a dump.
    pub fn seeded(dump: &[NeighMsg]) -> Self {
        let mut t = NeighTable::default();
        for m in dump {
            t.apply(m, 0);
        }
        t
    }

    /// Number of entries known.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is known.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Applies a message read at `ts_ns`; returns the change, or None when nothing shown changed.
    pub fn apply(&mut self, m: &NeighMsg, ts_ns: u64) -> Option<NeighChange> {
        let key = (m.ifindex, m.ip);
        let old = if m.deleted {
            self.entries.remove(&key)
        } else if self.entries.len() < self.max_entries || self.entries.contains_key(&key) {
            self.entries.insert(key, (m.state, m.lladdr))
        } else {
            None
        };
        if !m.deleted && old == Some((m.state, m.lladdr)) {
            return None;
        }
        Some(NeighChange {
            ts_ns,
            ifindex: m.ifindex,
            ip: m.ip,
            lladdr: m.lladdr,
            old: old.map(|o| o.0),
            state: m.state,
            deleted: m.deleted,
        })
    }
}

/// Why the neighbour table could not be read.
#[derive(Debug, thiserror::Error)]
pub enum NeighError {
    /// A netlink socket call failed.
    #[error("{call} on a NETLINK_ROUTE socket failed")]
    Socket {
        /// The call (`socket`, `bind`, `setsockopt(NETLINK_ADD_MEMBERSHIP)`, `send`, `recv`).
        call: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The RTM_GETNEIGH dump failed.
    #[error("RTM_GETNEIGH dump failed")]
    Dump(#[source] rtnl::DumpError),
}

fn sock_err(call: &'static str) -> impl FnOnce(io::Error) -> NeighError {
    move |source| NeighError::Socket { call, source }
}

/// The RTNLGRP_NEIGH subscription: poll its fd, then [`NeighSource::read`].
#[derive(Debug)]
pub struct NeighSource {
    socket: Socket,
    ifindex: u32,
}

impl NeighSource {
    /// Subscribes to neighbour changes of interface `ifindex` (0: all), then dumps the current IPv4 table.
    /// Subscribing first means no change between the dump and the subscription is lost.
    pub fn open(ifindex: u32) -> Result<(NeighSource, Vec<NeighMsg>), NeighError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(sock_err("socket"))?;
        socket.bind_auto().map_err(sock_err("bind"))?;
        socket
            .add_membership(RTNLGRP_NEIGH)
            .map_err(sock_err("setsockopt(NETLINK_ADD_MEMBERSHIP)"))?;
        socket.set_non_blocking(true).map_err(sock_err("fcntl(O_NONBLOCK)"))?;
        let dump = dump(ifindex)?;
        Ok((NeighSource { socket, ifindex }, dump))
    }

    /// Every message waiting on the socket, without blocking.
    pub fn read(&mut self) -> Result<Vec<NeighMsg>, NeighError> {
        let mut out = Vec::new();
        let mut buf = Vec::with_capacity(RECV_BUF);
        loop {
            buf.clear();
            match self.socket.recv(&mut buf, 0) {
                Ok(_) => out.extend(parse(&buf).into_iter().filter(|m| wanted(m, self.ifindex))),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(out),
                // The socket buffer overflowed: changes were lost, later ones still come.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => continue,
                Err(e) => return Err(sock_err("recv")(e)),
            }
        }
    }
}

impl std::os::fd::AsRawFd for NeighSource {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.socket.as_raw_fd()
    }
}

fn wanted(m: &NeighMsg, ifindex: u32) -> bool {
    (ifindex == 0 || m.ifindex == ifindex) && m.state != NeighState::NOARP
}

/// The IPv4 entries of `ifindex` (0: all) now, from an RTM_GETNEIGH dump.
fn dump(ifindex: u32) -> Result<Vec<NeighMsg>, NeighError> {
    let mut get = NeighbourMessage::default();
    get.header.family = AddressFamily::Inet;
    let mut out = Vec::new();
    rtnl::dump(RouteNetlinkMessage::GetNeighbour(get), |m| {
        out.extend(neigh_of(m).filter(|m| wanted(m, ifindex)));
    })
    .map_err(NeighError::Dump)?;
    Ok(out)
}

/// The neighbour messages of one datagram.
fn parse(buf: &[u8]) -> Vec<NeighMsg> {
    let mut msgs = Vec::new();
    rtnl::messages(buf, |m| {
        if let rtnl::Message::Route(m) = m {
            msgs.extend(neigh_of(m));
        }
    });
    msgs
}

/// The entry a route message reports, if it is a neighbour message.
fn neigh_of(m: RouteNetlinkMessage) -> Option<NeighMsg> {
    match m {
        RouteNetlinkMessage::NewNeighbour(m) => neigh_msg(&m, false),
        RouteNetlinkMessage::DelNeighbour(m) => neigh_msg(&m, true),
        _ => None,
    }
}

fn neigh_msg(m: &NeighbourMessage, deleted: bool) -> Option<NeighMsg> {
    if m.header.family != AddressFamily::Inet {
        return None;
    }
    let mut ip = None;
    let mut lladdr = None;
    let mut updated_ago_ms = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => ip = Some(*v4),
            NeighbourAttribute::LinkLayerAddress(mac) => lladdr = <[u8; 6]>::try_from(mac.as_slice()).ok(),
            // Clock ticks (USER_HZ, 100 a second) since the last update.
            NeighbourAttribute::CacheInfo(c) => updated_ago_ms = Some(u64::from(c.updated) * 10),
            _ => {}
        }
    }
    Some(NeighMsg {
        ifindex: m.header.ifindex,
        ip: ip?,
        lladdr,
        state: NeighState(u16::from(m.header.state)),
        deleted,
        updated_ago_ms,
    })
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload};

    use super::*;

    fn msg(state: NeighState, lladdr: Option<[u8; 6]>, deleted: bool) -> NeighMsg {
        NeighMsg {
            ifindex: 2,
            ip: Ipv4Addr::new(10, 0, 0, 2),
            lladdr,
            state,
            deleted,
            updated_ago_ms: None,
        }
    }

    const MAC: [u8; 6] = [2, 0xbb, 0, 0, 0, 2];

    #[test]
    fn table_turns_messages_into_changes() {
        let mut t = NeighTable::seeded(&[msg(NeighState::INCOMPLETE, None, false)]);
        assert_eq!(t.len(), 1);
        let c = t.apply(&msg(NeighState::REACHABLE, Some(MAC), false), 7).unwrap();
        assert_eq!(
            (c.ts_ns, c.state_text(), c.lladdr),
            (7, "INCOMPLETE→REACHABLE".to_owned(), Some(MAC))
        );
        assert_eq!(t.apply(&msg(NeighState::REACHABLE, Some(MAC), false), 8), None);
        let c = t.apply(&msg(NeighState::STALE, Some(MAC), true), 9).unwrap();
        assert_eq!(c.state_text(), "DELETED");
        assert!(t.is_empty());
        let c = t.apply(&msg(NeighState::FAILED, None, false), 10).unwrap();
        assert_eq!((c.old, c.state_text()), (None, "FAILED".to_owned()));
    }

    #[test]
    fn state_names_are_ips() {
        assert_eq!(NeighState::PERMANENT.name(), "PERMANENT");
        assert_eq!(NeighState(0).name(), "NONE");
        assert_eq!(NeighState(0x06).name(), "0x6");
    }

    /// The bytes of an RTM_NEWNEIGH notification for 10.0.0.2 on ifindex 2 with `attrs` after the address.
    fn notification(state: netlink_packet_route::neighbour::NeighbourState, attrs: Vec<NeighbourAttribute>) -> Vec<u8> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.ifindex = 2;
        m.header.state = state;
        m.attributes = vec![NeighbourAttribute::Destination(NeighbourAddress::Inet(Ipv4Addr::new(
            10, 0, 0, 2,
        )))];
        m.attributes.extend(attrs);
        let mut nl = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(m)),
        );
        nl.finalize();
        let mut bytes = vec![0; nl.buffer_len()];
        nl.serialize(&mut bytes);
        bytes
    }

    #[test]
    fn parses_a_kernel_notification() {
        use netlink_packet_route::neighbour::{NeighbourCacheInfo, NeighbourState};
        let bytes = notification(
            NeighbourState::Reachable,
            vec![NeighbourAttribute::LinkLayerAddress(MAC.to_vec())],
        );
        let twice = [bytes.clone(), bytes].concat();
        assert_eq!(parse(&twice), vec![msg(NeighState::REACHABLE, Some(MAC), false); 2]);
        assert!(parse(&[1, 2, 3]).is_empty());

        // The entry's age: a message read 1.5 s after the update still says when it happened.
        let info = NeighbourCacheInfo::parse(&[0u32, 0, 150, 1].map(u32::to_ne_bytes).concat()).expect("cache info");
        let read = parse(&notification(
            NeighbourState::default(),
            vec![NeighbourAttribute::CacheInfo(info)],
        ));
        assert_eq!(read[0].updated_ago_ms, Some(1_500));
        assert_eq!(read[0].updated_ns(10_000_000_000), 8_500_000_000);
    }
}
