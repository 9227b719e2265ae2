//! Capture configuration the agent writes into the `CONFIG` map before attaching.

use crate::mem::eq16;

/// Name of the single-entry `Array<Config>` map.
pub const CONFIG_MAP: &str = "CONFIG";

/// Most ports `--port` can name.
pub const MAX_PORTS: usize = 8;
/// Most addresses `--host` can name.
pub const MAX_HOSTS: usize = 8;

/// `Config::mode`: every TCP segment.
pub const MODE_ALL: u8 = 0;
/// `Config::mode`: SYN, FIN, RST, the ACK completing a handshake, the ACK answering a FIN, and ARP.
pub const MODE_CONTROL: u8 = 1;

/// What the kernel programs emit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Ports to watch (either end); none means all.
    pub ports: [u16; MAX_PORTS],
    /// Addresses to watch (either end), IPv4 as IPv4-mapped IPv6; none means all.
    pub hosts: [[u8; 16]; MAX_HOSTS],
    /// Valid entries in `ports`.
    pub port_count: u8,
    /// Valid entries in `hosts`.
    pub host_count: u8,
    /// `MODE_*`.
    pub mode: u8,
    /// Non-zero: records are reserved and then discarded instead of submitted (benchmarks only).
    pub discard: u8,
    /// Non-zero: packet records carry the frame's header bytes (`record::Snap`), for `--write`.
    pub snap: u8,
    /// Explicit padding.
    pub _pad: [u8; 3],
    /// Bytes waiting in the packet ring above which data segments are folded (`crate::fold`); 0: never.
    pub fold_above: u32,
}

const _: () = assert!(core::mem::size_of::<Config>() == 156);

/// Maps an address of `len` 4 or 16 bytes to the 16-byte form `Config::hosts` uses.
#[inline(always)]
pub fn mapped(addr: &[u8; 16], ip_version: u8) -> [u8; 16] {
    if ip_version == 4 {
        [
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, addr[0], addr[1], addr[2], addr[3],
        ]
    } else {
        *addr
    }
}

impl Config {
    /// Whether `port` is watched.
    #[inline(always)]
    pub fn port_matches(&self, sport: u16, dport: u16) -> bool {
        if self.port_count == 0 {
            return true;
        }
        let mut i = 0;
        while i < MAX_PORTS {
            if i < self.port_count as usize && (self.ports[i] == sport || self.ports[i] == dport) {
                return true;
            }
            i += 1;
        }
        false
    }

    /// Whether either 16-byte (mapped) address is watched.
    #[inline(always)]
    pub fn host_matches(&self, a: &[u8; 16], b: &[u8; 16]) -> bool {
        if self.host_count == 0 {
            return true;
        }
        let mut i = 0;
        while i < MAX_HOSTS {
            if i < self.host_count as usize && (eq16(&self.hosts[i], a) || eq16(&self.hosts[i], b)) {
                return true;
            }
            i += 1;
        }
        false
    }

    /// Whether a TCP record passes the filter.
    #[inline(always)]
    pub fn allows_tcp(&self, r: &crate::TcpRecord) -> bool {
        self.port_matches(r.sport, r.dport)
            && (self.host_count == 0
                || self.host_matches(&mapped(&r.saddr, r.ip_version), &mapped(&r.daddr, r.ip_version)))
    }

    /// Whether an ARP record passes the filter (ports do not apply to ARP).
    #[inline(always)]
    pub fn allows_arp(&self, r: &crate::ArpRecord) -> bool {
        if self.host_count == 0 {
            return true;
        }
        let mut s = [0u8; 16];
        let mut t = [0u8; 16];
        s[..4].copy_from_slice(&r.sender_ip);
        t[..4].copy_from_slice(&r.target_ip);
        self.host_matches(&mapped(&s, 4), &mapped(&t, 4))
    }
}

#[cfg(feature = "user")]
// SAFETY: plain #[repr(C)] struct of integers and byte arrays with explicit padding.
unsafe impl aya::Pod for Config {}
