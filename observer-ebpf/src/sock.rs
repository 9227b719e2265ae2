//! Socket events from the TCP tracepoints: read the socket (or the packet, when there is none) at the
//! offsets the agent found in the kernel's BTF, keep the agent's network namespace, submit one `SockRecord`.
//!
//! Every read goes through `bpf_probe_read_kernel`: the programs have no CO-RE, so the verifier's BTF view of
//! the arguments is not used for field access.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::seq_file,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns, bpf_probe_read_kernel,
        bpf_probe_read_kernel_buf,
        generated::{bpf_get_socket_cookie, bpf_seq_write},
    },
};
use observer_common::{
    Counter,
    sock::{
        AF_INET, AF_INET6, KIND_SOCK, ListenerRecord, SOCK_F_NO_TUPLE, SOCK_F_QUEUES, SOCK_F_REASON,
        SOCK_F_TUPLE_FROM_SKB, SockConfig, SockOffsets, SockRecord, TCP_LISTEN, TCP_NEW_SYN_RECV, TCP_TIME_WAIT, fixed,
        listener_event,
    },
};

use crate::maps::{SOCK_CONFIG, SOCK_EVENTS};

const IPPROTO_TCP: u8 = 6;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
/// `sk_buff.network_header` before any layer set it.
const HEADER_UNSET: u16 = 0xffff;

/// The start of `struct sock_common` (see `observer_common::sock::fixed`), read in one go.
#[repr(C)]
#[derive(Clone, Copy)]
struct SkcHead {
    daddr: [u8; 4],
    rcv_saddr: [u8; 4],
    hash: u32,
    dport_be: u16,
    num: u16,
    family: u16,
    state: u8,
    reuse: u8,
}

const _: () = {
    assert!(core::mem::offset_of!(SkcHead, daddr) == fixed::SKC_DADDR as usize);
    assert!(core::mem::offset_of!(SkcHead, rcv_saddr) == fixed::SKC_RCV_SADDR as usize);
    assert!(core::mem::offset_of!(SkcHead, dport_be) == fixed::SKC_DPORT as usize);
    assert!(core::mem::offset_of!(SkcHead, num) == fixed::SKC_NUM as usize);
    assert!(core::mem::offset_of!(SkcHead, family) == fixed::SKC_FAMILY as usize);
    assert!(core::mem::offset_of!(SkcHead, state) == fixed::SKC_STATE as usize);
    assert!(core::mem::size_of::<SkcHead>() == fixed::HEAD_LEN);
};

/// What an event adds to the socket's own fields.
#[derive(Clone, Copy)]
pub struct Extra {
    /// `SOCK_EV_*`.
    pub event: u8,
    /// The state before a state change (0 for other events).
    pub old_state: u8,
    /// The new state of a state change; `None` takes the socket's current state.
    pub new_state: Option<u8>,
    /// Reset or drop reason, or retransmit result.
    pub reason: Option<u32>,
    /// Keep only TCP sockets of AF_INET/AF_INET6 (for tracepoints that fire for every protocol).
    pub tcp_only: bool,
}

impl Extra {
    /// An event of kind `event` with nothing else to add.
    #[inline(always)]
    pub const fn event(event: u8) -> Extra {
        Extra {
            event,
            old_state: 0,
            new_state: None,
            reason: None,
            tcp_only: false,
        }
    }
}

/// The agent's socket configuration, once it has written the offsets.
#[inline(always)]
fn config() -> Result<&'static SockConfig, Counter> {
    match SOCK_CONFIG.get(0) {
        Some(cfg) if cfg.ready != 0 => Ok(cfg),
        _ => Err(Counter::SockUnreadable),
    }
}

/// Reads a `T` at `base + off` from kernel memory.
#[inline(always)]
fn read<T>(base: *const u8, off: u16) -> Result<T, Counter> {
    // SAFETY: bpf_probe_read_kernel checks the address and fails instead of faulting.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(usize::from(off)).cast::<T>()) }
        .map_err(|_| Counter::SockUnreadable)
}

/// Reads 16 bytes at `base + off` straight into `dst`.
#[inline(always)]
fn read16(base: *const u8, off: u16, dst: &mut [u8; 16]) -> Result<(), Counter> {
    // SAFETY: as in `read`.
    unsafe { bpf_probe_read_kernel_buf(base.wrapping_add(usize::from(off)), dst) }.map_err(|_| Counter::SockUnreadable)
}

/// Whether `net` (a `struct net *`) is the agent's namespace.
#[inline(always)]
fn net_is_ours(cfg: &SockConfig, net: *const u8) -> Result<(), Counter> {
    if cfg.netns_ino == 0 {
        return Ok(());
    }
    if net.is_null() {
        return Err(Counter::SockOtherNetns);
    }
    let inum: u32 = read(net, cfg.offsets.net_ns_inum)?;
    if inum == cfg.netns_ino {
        Ok(())
    } else {
        Err(Counter::SockOtherNetns)
    }
}

/// Whether the socket `sk` (any `sock_common`) lives in the agent's namespace.
#[inline(always)]
fn sk_is_ours(cfg: &SockConfig, sk: *const u8) -> Result<(), Counter> {
    if cfg.netns_ino == 0 {
        return Ok(());
    }
    let net: *const u8 = read(sk, cfg.offsets.skc_net)?;
    net_is_ours(cfg, net)
}

/// Sets the time, the current task and the event's fields of a record whose socket passed every check.
#[inline(always)]
fn stamp(rec: &mut SockRecord, extra: &Extra) {
    // SAFETY: the helper has no preconditions.
    rec.ts_ns = unsafe { bpf_ktime_get_boot_ns() };
    rec.kind = KIND_SOCK;
    rec.event = extra.event;
    rec.old_state = extra.old_state;
    rec.pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Ok(comm) = bpf_get_current_comm() {
        rec.comm = comm;
    }
    if let Some(reason) = extra.reason {
        rec.reason = reason;
        rec.flags |= SOCK_F_REASON;
    }
}

/// Fills the tuple from a `sock_common` whose start is `head`.
#[inline(always)]
fn fill_tuple(rec: &mut SockRecord, off: &SockOffsets, sk: *const u8, head: &SkcHead) -> Result<(), Counter> {
    rec.sport = head.num;
    rec.dport = u16::from_be(head.dport_be);
    if head.family == u16::from(AF_INET) {
        rec.family = AF_INET;
        rec.saddr[..4].copy_from_slice(&head.rcv_saddr);
        rec.daddr[..4].copy_from_slice(&head.daddr);
        Ok(())
    } else if head.family == u16::from(AF_INET6) {
        rec.family = AF_INET6;
        read16(sk, off.skc_v6_rcv_saddr, &mut rec.saddr)?;
        read16(sk, off.skc_v6_daddr, &mut rec.daddr)
    } else {
        Err(Counter::SockNotTcp)
    }
}

/// Fills the listener queue fields from the full socket `sk`.
#[inline(always)]
fn fill_queues(rec: &mut SockRecord, off: &SockOffsets, sk: *const u8) -> Result<(), Counter> {
    rec.ack_backlog = read(sk, off.sk_ack_backlog)?;
    rec.max_ack_backlog = read(sk, off.sk_max_ack_backlog)?;
    rec.synq = read(sk, off.icsk_accept_queue_qlen)?;
    rec.flags |= SOCK_F_QUEUES;
    Ok(())
}

/// The socket's cookie, made by the kernel on first use (what sock_diag reports too).
#[inline(always)]
fn cookie(sk: *const u8) -> u64 {
    // SAFETY: `sk` is a socket argument of the tracepoint; the helper takes any sock_common.
    unsafe { bpf_get_socket_cookie(sk as *mut c_void) }
}

/// Stamps and submits `rec`; the counter to add is the outcome.
#[inline(always)]
fn submit(rec: &mut SockRecord, extra: &Extra) -> Result<Counter, Counter> {
    stamp(rec, extra);
    // Verifier: one copying helper call instead of reserve and submit. With a reserved entry LLVM tested the
    // pointer for NULL twice, and 6.1's verifier, which does not know a ring-buffer entry is non-NULL once
    // checked, followed the second NULL branch to an exit with the entry unreleased ("Unreleased reference").
    SOCK_EVENTS
        .output::<SockRecord>(&*rec, 0)
        .map(|()| Counter::SockEmitted)
        .map_err(|_| Counter::SockRingFull)
}

/// An event on the socket `sk` (full, request or TIME_WAIT sock): checks, tuple, state, queues, emit.
#[inline(always)]
pub fn on_sock(sk: *const u8, extra: Extra) -> Result<Counter, Counter> {
    let cfg = config()?;
    let off = &cfg.offsets;
    if sk.is_null() {
        return Err(Counter::SockUnreadable);
    }
    let head: SkcHead = read(sk, 0)?;
    if extra.tcp_only {
        let inet = head.family == u16::from(AF_INET) || head.family == u16::from(AF_INET6);
        if !inet || read::<u16>(sk, off.sk_protocol)? != u16::from(IPPROTO_TCP) {
            return Err(Counter::SockNotTcp);
        }
    }
    sk_is_ours(cfg, sk)?;
    let mut rec = SockRecord::default();
    fill_tuple(&mut rec, off, sk, &head)?;
    rec.state = extra.new_state.unwrap_or(head.state);
    rec.cookie = cookie(sk);
    // Request and TIME_WAIT socks end before the inet_sock and queue fields of a full socket.
    if head.state != TCP_NEW_SYN_RECV && head.state != TCP_TIME_WAIT {
        rec.sport = u16::from_be(read(sk, off.inet_sport)?);
        if listener_event(extra.event, extra.old_state, rec.state) {
            fill_queues(&mut rec, off, sk)?;
        }
    }
    submit(&mut rec, &extra)
}

/// `tcp_retransmit_synack`: the tuple and cookie of the request sock `req`, the queues of `listener`.
#[inline(always)]
pub fn on_synack(listener: *const u8, req: *const u8, extra: Extra) -> Result<Counter, Counter> {
    let cfg = config()?;
    let off = &cfg.offsets;
    if listener.is_null() || req.is_null() {
        return Err(Counter::SockUnreadable);
    }
    sk_is_ours(cfg, listener)?;
    let head: SkcHead = read(req, 0)?;
    let mut rec = SockRecord::default();
    fill_tuple(&mut rec, off, req, &head)?;
    rec.state = head.state;
    rec.cookie = cookie(req);
    fill_queues(&mut rec, off, listener)?;
    submit(&mut rec, &extra)
}

/// `tcp_send_reset`: the socket when there is one, else the received segment `skb` that caused the reset.
#[inline(always)]
pub fn on_reset(sk: *const u8, skb: *const u8, extra: Extra) -> Result<Counter, Counter> {
    if !sk.is_null() {
        on_sock(sk, extra)
    } else if !skb.is_null() {
        on_skb(skb, core::ptr::null(), extra)
    } else {
        on_nothing(extra)
    }
}

/// An event on a TCP segment `skb` (no socket, or `kfree_skb`): the tuple as a received segment, the
/// namespace from `rx_sk` (the receiving socket, may be null), `skb->sk`, or the device.
#[inline(always)]
pub fn on_skb(skb: *const u8, rx_sk: *const u8, extra: Extra) -> Result<Counter, Counter> {
    let cfg = config()?;
    let off = &cfg.offsets;
    if skb.is_null() {
        return Err(Counter::SockUnreadable);
    }
    let mut rec = SockRecord::default();
    skb_tuple(&mut rec, off, skb)?;
    if !rx_sk.is_null() {
        sk_is_ours(cfg, rx_sk)?;
        rec.cookie = cookie(rx_sk);
    } else {
        let owner: *const u8 = read(skb, off.skb_sk)?;
        if !owner.is_null() {
            sk_is_ours(cfg, owner)?;
        } else {
            let dev: *const u8 = read(skb, off.skb_dev)?;
            if dev.is_null() {
                return Err(Counter::SockOtherNetns);
            }
            let net: *const u8 = read(dev, off.dev_nd_net)?;
            net_is_ours(cfg, net)?;
        }
    }
    submit(&mut rec, &extra)
}

/// Fills the tuple from the IPv4 or IPv6 and TCP headers of `skb`, local being the destination; fails with
/// `SockNotTcp` for anything but TCP directly after the fixed IP header.
#[inline(always)]
fn skb_tuple(rec: &mut SockRecord, off: &SockOffsets, skb: *const u8) -> Result<(), Counter> {
    let protocol = u16::from_be(read::<u16>(skb, off.skb_protocol)?);
    if protocol != ETH_P_IP && protocol != ETH_P_IPV6 {
        return Err(Counter::SockNotTcp);
    }
    let head: *const u8 = read(skb, off.skb_head)?;
    let network: u16 = read(skb, off.skb_network_header)?;
    if head.is_null() || network == HEADER_UNSET {
        return Err(Counter::SockUnreadable);
    }
    let ip = head.wrapping_add(usize::from(network));
    let tcp = if protocol == ETH_P_IP {
        let v4: [u8; 20] = read(ip, 0)?;
        if v4[0] >> 4 != 4 || v4[9] != IPPROTO_TCP {
            return Err(Counter::SockNotTcp);
        }
        rec.family = AF_INET;
        rec.daddr[..4].copy_from_slice(&v4[12..16]);
        rec.saddr[..4].copy_from_slice(&v4[16..20]);
        ip.wrapping_add(usize::from(v4[0] & 0x0f) * 4)
    } else {
        let next: u8 = read(ip, 6)?;
        if next != IPPROTO_TCP {
            return Err(Counter::SockNotTcp);
        }
        rec.family = AF_INET6;
        read16(ip, 8, &mut rec.daddr)?;
        read16(ip, 24, &mut rec.saddr)?;
        ip.wrapping_add(40)
    };
    let ports: [u8; 4] = read(tcp, 0)?;
    rec.dport = u16::from_be_bytes([ports[0], ports[1]]);
    rec.sport = u16::from_be_bytes([ports[2], ports[3]]);
    rec.flags |= SOCK_F_TUPLE_FROM_SKB;
    Ok(())
}

/// An event with neither socket nor packet: only a filter on "all namespaces" lets it through.
#[inline(always)]
fn on_nothing(extra: Extra) -> Result<Counter, Counter> {
    let cfg = config()?;
    if cfg.netns_ino != 0 {
        return Err(Counter::SockOtherNetns);
    }
    let mut rec = SockRecord {
        flags: SOCK_F_NO_TUPLE,
        ..SockRecord::default()
    };
    submit(&mut rec, &extra)
}

/// `iter/tcp` for one socket: writes a [`ListenerRecord`] to `seq` when `sk` is a listener.
#[inline(always)]
pub fn listener_row(seq: *mut seq_file, sk: *const u8, uid: u32) -> Result<(), Counter> {
    let cfg = config()?;
    let off = &cfg.offsets;
    if sk.is_null() {
        return Ok(());
    }
    let head: SkcHead = read(sk, 0)?;
    if head.state != TCP_LISTEN {
        return Ok(());
    }
    let mut rec = SockRecord::default();
    fill_tuple(&mut rec, off, sk, &head)?;
    let mut row = ListenerRecord {
        cookie: cookie(sk),
        addr: rec.saddr,
        port: head.num,
        family: rec.family,
        uid,
        ..ListenerRecord::default()
    };
    fill_queues(&mut rec, off, sk)?;
    row.ack_backlog = rec.ack_backlog;
    row.max_ack_backlog = rec.max_ack_backlog;
    row.synq = rec.synq;
    // SAFETY: `seq` is the iterator's seq_file; the row is on the stack for the call.
    let written = unsafe {
        bpf_seq_write(
            seq,
            (&row as *const ListenerRecord).cast::<c_void>(),
            core::mem::size_of::<ListenerRecord>() as u32,
        )
    };
    if written == 0 {
        Ok(())
    } else {
        Err(Counter::SockUnreadable)
    }
}
