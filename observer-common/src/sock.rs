//! Kernel socket events: the record the tp_btf programs on the TCP tracepoints submit to the same `EVENTS`
//! ring buffer as the packet records, and the kernel structure offsets the agent hands them.
//!
//! The programs have no CO-RE: every offset into `struct sock` and its neighbours beyond the fixed start of
//! `struct sock_common` comes from the running kernel's BTF, read by the agent at load time into
//! [`SockOffsets`] in the `SOCK_CONFIG` map.

use core::mem::{offset_of, size_of};

use crate::record::KIND_OFFSET;

/// `RecordHeader::kind` (byte 28) of a [`SockRecord`].
pub const KIND_SOCK: u8 = 3;

/// Name of the single-entry `Array<SockConfig>` map.
pub const SOCK_CONFIG_MAP: &str = "SOCK_CONFIG";

/// `SockRecord::event`: a state change (`inet_sock_set_state`): `old_state` to `state`.
pub const SOCK_EV_STATE: u8 = 1;
/// A listener retransmitted a SYN-ACK (`tcp_retransmit_synack`): the tuple and cookie are the request sock's,
/// the queue fields the listener's.
pub const SOCK_EV_RETRANSMIT_SYNACK: u8 = 2;
/// A segment was retransmitted (`tcp_retransmit_skb`); `reason` is the send's result (0, or a negative errno).
pub const SOCK_EV_RETRANSMIT_SKB: u8 = 3;
/// A RST was sent (`tcp_send_reset`); `reason` is the kernel's `enum sk_rst_reason`.
pub const SOCK_EV_SEND_RESET: u8 = 4;
/// A RST was received and reset the socket (`tcp_receive_reset`).
pub const SOCK_EV_RECEIVE_RESET: u8 = 5;
/// The socket is being destroyed (`tcp_destroy_sock`).
pub const SOCK_EV_DESTROY: u8 = 6;
/// A segment was dropped because the receive queue was full (`sock_rcvqueue_full`).
pub const SOCK_EV_RCVQ_FULL: u8 = 7;
/// A TCP segment was dropped (`kfree_skb`); `reason` is the kernel's `enum skb_drop_reason`.
pub const SOCK_EV_DROP: u8 = 8;
/// Highest `SOCK_EV_*` value.
pub const SOCK_EV_MAX: u8 = SOCK_EV_DROP;

/// `SockRecord::flags`: `ack_backlog`, `max_ack_backlog` and `synq` are a listener's at that moment.
pub const SOCK_F_QUEUES: u8 = 0x01;
/// `reason` is valid.
pub const SOCK_F_REASON: u8 = 0x02;
/// The tuple is unknown (no socket and no readable packet headers): addresses and ports are zero.
pub const SOCK_F_NO_TUPLE: u8 = 0x04;
/// The tuple comes from the packet's IP and TCP headers (a reset without a socket, every drop), read as a
/// received segment (local = the packet's destination); `cookie` is the receiving socket's when the kernel
/// names one (`kfree_skb`'s `rx_sk`), else 0.
pub const SOCK_F_TUPLE_FROM_SKB: u8 = 0x08;

/// Address family numbers as in the kernel.
pub const AF_INET: u8 = 2;
/// IPv6 address family.
pub const AF_INET6: u8 = 10;

/// TCP_LISTEN in the kernel's numbering.
pub const TCP_LISTEN: u8 = 10;
/// TCP_SYN_RECV.
pub const TCP_SYN_RECV: u8 = 3;
/// TCP_TIME_WAIT.
pub const TCP_TIME_WAIT: u8 = 6;
/// TCP_NEW_SYN_RECV (a request sock).
pub const TCP_NEW_SYN_RECV: u8 = 12;

/// Byte offsets at the start of `struct sock_common`, fixed since Linux 2.6 (checked against BTF at load).
pub mod fixed {
    /// `skc_daddr` (IPv4 remote address, network order).
    pub const SKC_DADDR: u16 = 0;
    /// `skc_rcv_saddr` (IPv4 local address, network order).
    pub const SKC_RCV_SADDR: u16 = 4;
    /// `skc_dport` (remote port, network order).
    pub const SKC_DPORT: u16 = 12;
    /// `skc_num` (local port, host order; 0 once a closing full socket left the bind table).
    pub const SKC_NUM: u16 = 14;
    /// `skc_family` (u16).
    pub const SKC_FAMILY: u16 = 16;
    /// `skc_state` (u8).
    pub const SKC_STATE: u16 = 18;
    /// Bytes read in one go to get all of the above.
    pub const HEAD_LEN: usize = 20;
}

/// One socket event.
///
/// Multi-byte integers are in host order, addresses in network order. "Local" and "remote" are the socket's
/// view (`skc_rcv_saddr`/`skc_num` and `skc_daddr`/`skc_dport`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRecord {
    /// `bpf_ktime_get_boot_ns()` when the tracepoint fired (the clock of the packet records).
    pub ts_ns: u64,
    /// The socket's cookie (`bpf_get_socket_cookie`, the `sk:` of `ss -e` and sock_diag's `idiag_cookie`);
    /// see `SOCK_F_TUPLE_FROM_SKB` for events without a socket.
    pub cookie: u64,
    /// Local port.
    pub sport: u16,
    /// Remote port (0 for a listener).
    pub dport: u16,
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
    /// `SOCK_EV_*`.
    pub event: u8,
    /// For `SOCK_EV_STATE` the state before the change, otherwise 0.
    pub old_state: u8,
    /// For `SOCK_EV_STATE` the new state, otherwise the socket's state when the event fired (0 without one).
    pub state: u8,
    /// `bpf_get_current_pid_tgid() >> 32`: the process only for events in process context (connect, close,
    /// listen); a softirq event carries whatever task was on the CPU.
    pub pid: u32,
    /// [`KIND_SOCK`], at the same offset as `RecordHeader::kind`.
    pub kind: u8,
    /// `SOCK_F_*`.
    pub flags: u8,
    /// Explicit padding.
    pub _pad: [u8; 2],
    /// A listener's accept queue length (`sk_ack_backlog`), with `SOCK_F_QUEUES`.
    pub ack_backlog: u32,
    /// A listener's accept queue limit (`sk_max_ack_backlog`), with `SOCK_F_QUEUES`.
    pub max_ack_backlog: u32,
    /// A listener's SYN queue length (`icsk_accept_queue.qlen`), with `SOCK_F_QUEUES`.
    pub synq: u32,
    /// Reset reason, drop reason or retransmit result (see the `SOCK_EV_*`), with `SOCK_F_REASON`.
    pub reason: u32,
    /// Local address; IPv4 uses the first 4 bytes.
    pub saddr: [u8; 16],
    /// Remote address; IPv4 uses the first 4 bytes.
    pub daddr: [u8; 16],
    /// `bpf_get_current_comm()`, NUL-padded; meaningful like `pid`.
    pub comm: [u8; 16],
}

const _: () = assert!(size_of::<SockRecord>() == 96);
const _: () = assert!(offset_of!(SockRecord, kind) == KIND_OFFSET);

/// Offsets into kernel structures, from the running kernel's BTF (bytes from the start of the structure
/// named in each field's doc). A zero offset that BTF did not give is never read: `valid` says which are set.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOffsets {
    /// `sock_common.skc_v6_daddr` (struct in6_addr).
    pub skc_v6_daddr: u16,
    /// `sock_common.skc_v6_rcv_saddr`.
    pub skc_v6_rcv_saddr: u16,
    /// `sock_common.skc_net.net` (struct net *).
    pub skc_net: u16,
    /// `sock.sk_protocol` (u16).
    pub sk_protocol: u16,
    /// `sock.sk_ack_backlog` (u32).
    pub sk_ack_backlog: u16,
    /// `sock.sk_max_ack_backlog` (u32).
    pub sk_max_ack_backlog: u16,
    /// `inet_connection_sock.icsk_accept_queue.qlen` (atomic_t) from the start of the sock.
    pub icsk_accept_queue_qlen: u16,
    /// `net.ns.inum` (unsigned int).
    pub net_ns_inum: u16,
    /// `sk_buff.head` (unsigned char *).
    pub skb_head: u16,
    /// `sk_buff.network_header` (u16).
    pub skb_network_header: u16,
    /// `sk_buff.protocol` (__be16).
    pub skb_protocol: u16,
    /// `sk_buff.dev` (struct net_device *).
    pub skb_dev: u16,
    /// `sk_buff.sk` (struct sock *).
    pub skb_sk: u16,
    /// `net_device.nd_net.net` (struct net *).
    pub dev_nd_net: u16,
    /// `inet_sock.inet_sport` (__be16): a full socket's local port, kept when `skc_num` is cleared as the
    /// socket leaves the bind table at close (the port the kernel's own tracepoint output shows).
    pub inet_sport: u16,
    /// Explicit padding.
    pub _pad: [u8; 2],
}

/// What the socket programs read: the structure offsets and the namespace to report.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockConfig {
    /// Offsets from the kernel's BTF.
    pub offsets: SockOffsets,
    /// Inode number of the network namespace whose sockets are reported (`/proc/self/ns/net`); 0 for all.
    pub netns_ino: u32,
    /// Non-zero once the agent has written the offsets; the programs report nothing before that.
    pub ready: u32,
}

const _: () = assert!(size_of::<SockOffsets>() == 32);
const _: () = assert!(size_of::<SockConfig>() == 40);

/// One LISTEN socket as the `iter/tcp` program writes it (host order, address in network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerRecord {
    /// The socket's cookie.
    pub cookie: u64,
    /// Local address; IPv4 uses the first 4 bytes.
    pub addr: [u8; 16],
    /// Local port.
    pub port: u16,
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
    /// Explicit padding.
    pub _pad: u8,
    /// Owner uid.
    pub uid: u32,
    /// Accept queue length (`sk_ack_backlog`).
    pub ack_backlog: u32,
    /// Accept queue limit (`sk_max_ack_backlog`).
    pub max_ack_backlog: u32,
    /// SYN queue length (`icsk_accept_queue.qlen`).
    pub synq: u32,
    /// Explicit padding.
    pub _pad1: u32,
}

const _: () = assert!(size_of::<ListenerRecord>() == 48);

// SAFETY: #[repr(C)] integers and byte arrays with explicit padding, 8-aligned, 96 bytes.
unsafe impl crate::mem::Words for SockRecord {}

impl SockRecord {
    /// The local address as the family's bytes (4 or 16).
    pub fn local_bytes(&self) -> &[u8] {
        if self.family == AF_INET {
            &self.saddr[..4]
        } else {
            &self.saddr
        }
    }

    /// The remote address as the family's bytes (4 or 16).
    pub fn remote_bytes(&self) -> &[u8] {
        if self.family == AF_INET {
            &self.daddr[..4]
        } else {
            &self.daddr
        }
    }

    /// `comm` up to its first NUL.
    pub fn comm_bytes(&self) -> &[u8] {
        let end = self.comm.iter().position(|b| *b == 0).unwrap_or(self.comm.len());
        &self.comm[..end]
    }
}

/// Whether the queue fields of an event on a socket in `state` (or, for a state change, `old` to `state`)
/// are a listener's: a LISTEN socket, but not the child a listener clones (LISTEN to SYN_RECV).
#[inline(always)]
pub fn listener_event(event: u8, old: u8, state: u8) -> bool {
    if event == SOCK_EV_STATE {
        state == TCP_LISTEN || (old == TCP_LISTEN && state != TCP_SYN_RECV)
    } else {
        state == TCP_LISTEN
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] structs of integers and byte arrays with explicit padding.
    unsafe impl aya::Pod for super::SockRecord {}
    unsafe impl aya::Pod for super::SockConfig {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_belong_to_listeners_not_to_their_clones() {
        assert!(listener_event(SOCK_EV_STATE, 7, TCP_LISTEN));
        assert!(listener_event(SOCK_EV_STATE, TCP_LISTEN, 7));
        assert!(!listener_event(SOCK_EV_STATE, TCP_LISTEN, TCP_SYN_RECV));
        assert!(!listener_event(SOCK_EV_STATE, 1, 4));
        assert!(listener_event(SOCK_EV_RECEIVE_RESET, 0, TCP_LISTEN));
        assert!(!listener_event(SOCK_EV_DESTROY, 0, 7));
    }

    #[test]
    fn addresses_follow_the_family() {
        let mut r = SockRecord {
            family: AF_INET,
            ..SockRecord::default()
        };
        r.saddr[..4].copy_from_slice(&[10, 1, 0, 1]);
        assert_eq!(r.local_bytes(), &[10, 1, 0, 1]);
        r.family = AF_INET6;
        assert_eq!(r.remote_bytes().len(), 16);
        r.comm[..4].copy_from_slice(b"curl");
        assert_eq!(r.comm_bytes(), b"curl");
    }
}
