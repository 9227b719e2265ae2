//! observer's kernel programs: thin TC and XDP entry points around `observer_common::parse`, and tp_btf
//! programs on the TCP tracepoints around `sock`.
//!
//! Every packet program passes the packet on unchanged; what a program saw becomes one record in `EVENTS` (a
//! socket program's in `SOCK_EVENTS`) or one per-CPU counter in `COUNTERS`.
#![no_std]
#![no_main]

mod frame;
mod maps;
mod sock;

use aya_ebpf::{
    bindings::{TC_ACT_UNSPEC, xdp_action},
    helpers::bpf_ktime_get_boot_ns,
    macros::{btf_tracepoint, classifier, xdp},
    programs::{BtfTracePointContext, TcContext, XdpContext},
};
use aya_log_ebpf::debug;
use observer_common::{
    Counter,
    config::MODE_CONTROL,
    mem::clear,
    parse::{Frame, Payload, copy_headers, parse_arp, parse_link, parse_tcp},
    record::{
        ArpSnapRecord, DIR_EGRESS, DIR_INGRESS, HDR_SNAP, HOOK_TC_EGRESS, HOOK_TC_INGRESS, HOOK_XDP, RecordHeader,
        TcpSnapRecord,
    },
    sock::{
        SOCK_EV_DESTROY, SOCK_EV_DROP, SOCK_EV_RCVQ_FULL, SOCK_EV_RECEIVE_RESET, SOCK_EV_RETRANSMIT_SKB,
        SOCK_EV_RETRANSMIT_SYNACK, SOCK_EV_SEND_RESET, SOCK_EV_STATE,
    },
};

use crate::{
    frame::Packet,
    maps::{CONFIG, SCRATCH_ARP, SCRATCH_TCP, TcpScratch, control_allows, count, emit, fold, scratch},
    sock::{Extra, listener_row, on_reset, on_skb, on_sock, on_synack},
};

/// TC ingress: parse and report every frame the interface receives.
#[classifier]
pub fn tc_ingress(ctx: TcContext) -> i32 {
    tc(&ctx, HOOK_TC_INGRESS, DIR_INGRESS, Counter::SeenTcIngress);
    // TC_ACT_UNSPEC is TCX_NEXT: let the next program (or the stack) decide, as an observer must.
    TC_ACT_UNSPEC
}

/// TC egress: parse and report every frame the interface sends.
#[classifier]
pub fn tc_egress(ctx: TcContext) -> i32 {
    tc(&ctx, HOOK_TC_EGRESS, DIR_EGRESS, Counter::SeenTcEgress);
    TC_ACT_UNSPEC
}

/// XDP ingress: the `--hook xdp` alternative to `tc_ingress` (no egress at XDP).
#[xdp]
pub fn xdp_ingress(ctx: XdpContext) -> u32 {
    // SAFETY: ctx.ctx is the xdp_md the kernel passed in.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let result = parse_and_emit(&Packet(&ctx), HOOK_XDP, DIR_INGRESS, ifindex);
    count(Counter::SeenXdp, outcome(result));
    // aya-log's AYA_LOG_LEVEL global (0 unless --ebpf-log) turns these off; the verifier prunes them then.
    match result {
        Ok(_) => debug!(&ctx, "xdp: record emitted"),
        Err(c) => debug!(&ctx, "xdp: no record: {}", c.name()),
    }
    xdp_action::XDP_PASS
}

/// Baseline for `cargo xtask bench`: an empty TC program measured beside the real ones.
#[classifier]
pub fn tc_empty(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

/// Floor for `cargo xtask bench`: what every emitted record costs without any parsing. It reads the boot clock,
/// takes the TCP scratch record and copies it into the ring (submitted, or discarded under `Config::discard`),
/// as `tc_ingress` does for a segment; the packet is never read. Fails open like the real programs.
#[classifier]
pub fn tc_floor(_ctx: TcContext) -> i32 {
    // Verifier: an array lookup can fail as far as it knows; index 0 of CONFIG always exists.
    let Some(cfg) = CONFIG.get(0) else {
        return TC_ACT_UNSPEC;
    };
    // Verifier: as above, slot 0 of a per-CPU array always exists.
    let Some(slot) = scratch(&SCRATCH_TCP) else {
        return TC_ACT_UNSPEC;
    };
    let rec = &mut slot.record.record;
    // SAFETY: the helper has no preconditions.
    rec.header.ts_ns = unsafe { bpf_ktime_get_boot_ns() };
    // A full ring is what it is for the real programs too: the packet passes either way.
    let _ = emit(rec, cfg.discard != 0);
    TC_ACT_UNSPEC
}

#[inline(always)]
fn tc(ctx: &TcContext, hook: u8, direction: u8, seen: Counter) {
    // SAFETY: ctx.skb.skb is the __sk_buff the kernel passed in.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let result = parse_and_emit(&Packet(ctx), hook, direction, ifindex);
    count(seen, outcome(result));
    match result {
        Ok(_) => debug!(ctx, "tc hook {}: record emitted", hook),
        Err(c) => debug!(ctx, "tc hook {}: no record: {}", hook, c.name()),
    }
}

/// The counter that records how a frame ended.
#[inline(always)]
fn outcome(result: Result<Counter, Counter>) -> Counter {
    match result {
        Ok(c) | Err(c) => c,
    }
}

/// Parses one frame and emits its record: `Ok(Emitted)`, or `Err` with the counter that took it instead.
#[inline(always)]
fn parse_and_emit<F: Frame>(f: &F, hook: u8, direction: u8, ifindex: u32) -> Result<Counter, Counter> {
    let (link, payload) = parse_link(f)?;
    // Verifier: an array lookup can fail as far as it knows; index 0 of CONFIG always exists.
    let Some(cfg) = CONFIG.get(0) else {
        return Err(Counter::NotTcpOrArp);
    };
    match payload {
        Payload::Ip => {
            // Verifier: as above, slot 0 of a per-CPU array always exists.
            let TcpScratch {
                record: full,
                options,
                headers_end,
            } = scratch(&SCRATCH_TCP).ok_or(Counter::NotTcpOrArp)?;
            let TcpSnapRecord { record: rec, snap } = full;
            clear(rec);
            parse_tcp(f, &link, rec, options, headers_end)?;
            if !cfg.allows_tcp(rec) {
                return Err(Counter::Filtered);
            }
            if cfg.mode == MODE_CONTROL && !control_allows(rec) {
                return Err(Counter::ControlSuppressed);
            }
            stamp(&mut rec.header, hook, direction, ifindex);
            if fold(rec, cfg.fold_above) {
                return Ok(Counter::Folded);
            }
            if cfg.snap == 0 {
                return emit(rec, cfg.discard != 0);
            }
            // Verifier: read back from map memory, unbounded as far as it knows; copy_headers bounds it.
            // SAFETY: a valid reference to this CPU's scratch.
            let end = unsafe { core::ptr::read_volatile(headers_end) };
            // A frame the parser read whole has its headers; a failed copy still emits the record (len 0).
            copy_headers(f, end, snap);
            rec.header.flags |= HDR_SNAP;
            emit(full, cfg.discard != 0)
        }
        Payload::Arp => {
            let full: &mut ArpSnapRecord = scratch(&SCRATCH_ARP).ok_or(Counter::NotTcpOrArp)?;
            let ArpSnapRecord { record: rec, snap } = full;
            clear(rec);
            parse_arp(f, &link, rec)?;
            if !cfg.allows_arp(rec) {
                return Err(Counter::Filtered);
            }
            stamp(&mut rec.header, hook, direction, ifindex);
            if cfg.snap == 0 {
                return emit(rec, cfg.discard != 0);
            }
            copy_headers(f, f.len(), snap);
            rec.header.flags |= HDR_SNAP;
            emit(full, cfg.discard != 0)
        }
    }
}

#[inline(always)]
fn stamp(h: &mut RecordHeader, hook: u8, direction: u8, ifindex: u32) {
    // SAFETY: the helper has no preconditions.
    h.ts_ns = unsafe { bpf_ktime_get_boot_ns() };
    h.hook = hook;
    h.direction = direction;
    h.ifindex = ifindex;
}

/// `inet_sock_set_state(sk, oldstate, newstate)`: every state change of a TCP socket.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn sock_state(ctx: BtfTracePointContext) -> i32 {
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    let extra = Extra {
        old_state: old as u8,
        new_state: Some(new as u8),
        tcp_only: true,
        ..Extra::event(SOCK_EV_STATE)
    };
    sock_done(&ctx, Counter::SockSeenState, on_sock(ctx.arg(0), extra))
}

/// `tcp_retransmit_synack(sk, req)`: a listener resent the SYN-ACK of a request sock.
#[btf_tracepoint(function = "tcp_retransmit_synack")]
pub fn sock_retransmit_synack(ctx: BtfTracePointContext) -> i32 {
    let result = on_synack(ctx.arg(0), ctx.arg(1), Extra::event(SOCK_EV_RETRANSMIT_SYNACK));
    sock_done(&ctx, Counter::SockSeenRetransmitSynack, result)
}

/// `tcp_retransmit_skb(sk, skb, err)`: a segment was retransmitted.
#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn sock_retransmit_skb(ctx: BtfTracePointContext) -> i32 {
    let err: i32 = ctx.arg(2);
    let extra = Extra {
        reason: Some(err as u32),
        ..Extra::event(SOCK_EV_RETRANSMIT_SKB)
    };
    sock_done(&ctx, Counter::SockSeenRetransmitSkb, on_sock(ctx.arg(0), extra))
}

/// `tcp_retransmit_skb(sk, skb)`, as kernels before the `err` argument have it.
#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn sock_retransmit_skb_2args(ctx: BtfTracePointContext) -> i32 {
    let result = on_sock(ctx.arg(0), Extra::event(SOCK_EV_RETRANSMIT_SKB));
    sock_done(&ctx, Counter::SockSeenRetransmitSkb, result)
}

/// `tcp_send_reset(sk, skb, reason)`: a RST went out; `sk` and `skb` may each be NULL.
#[btf_tracepoint(function = "tcp_send_reset")]
pub fn sock_send_reset(ctx: BtfTracePointContext) -> i32 {
    let reason: u32 = ctx.arg(2);
    let extra = Extra {
        reason: Some(reason),
        ..Extra::event(SOCK_EV_SEND_RESET)
    };
    sock_done(
        &ctx,
        Counter::SockSeenSendReset,
        on_reset(ctx.arg(0), ctx.arg(1), extra),
    )
}

/// `tcp_send_reset(sk, skb)`, as kernels before the `reason` argument have it.
#[btf_tracepoint(function = "tcp_send_reset")]
pub fn sock_send_reset_2args(ctx: BtfTracePointContext) -> i32 {
    let extra = Extra::event(SOCK_EV_SEND_RESET);
    sock_done(
        &ctx,
        Counter::SockSeenSendReset,
        on_reset(ctx.arg(0), ctx.arg(1), extra),
    )
}

/// `tcp_receive_reset(sk)`: a RST reset the socket.
#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn sock_receive_reset(ctx: BtfTracePointContext) -> i32 {
    let result = on_sock(ctx.arg(0), Extra::event(SOCK_EV_RECEIVE_RESET));
    sock_done(&ctx, Counter::SockSeenReceiveReset, result)
}

/// `tcp_destroy_sock(sk)`: the socket is freed.
#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn sock_destroy(ctx: BtfTracePointContext) -> i32 {
    let result = on_sock(ctx.arg(0), Extra::event(SOCK_EV_DESTROY));
    sock_done(&ctx, Counter::SockSeenDestroy, result)
}

/// `sock_rcvqueue_full(sk, skb)`: a segment found the receive queue full (any protocol; TCP kept).
#[btf_tracepoint(function = "sock_rcvqueue_full")]
pub fn sock_rcvqueue_full(ctx: BtfTracePointContext) -> i32 {
    let extra = Extra {
        tcp_only: true,
        ..Extra::event(SOCK_EV_RCVQ_FULL)
    };
    sock_done(&ctx, Counter::SockSeenRcvqFull, on_sock(ctx.arg(0), extra))
}

/// `kfree_skb(skb, location, reason, rx_sk)`: an skb was dropped (any protocol; TCP segments kept).
#[btf_tracepoint(function = "kfree_skb")]
pub fn sock_drop(ctx: BtfTracePointContext) -> i32 {
    let reason: u32 = ctx.arg(2);
    let extra = Extra {
        reason: Some(reason),
        ..Extra::event(SOCK_EV_DROP)
    };
    sock_done(&ctx, Counter::SockSeenDrop, on_skb(ctx.arg(0), ctx.arg(3), extra))
}

/// `kfree_skb(skb, location, reason)`, as kernels before the `rx_sk` argument have it.
#[btf_tracepoint(function = "kfree_skb")]
pub fn sock_drop_3args(ctx: BtfTracePointContext) -> i32 {
    let reason: u32 = ctx.arg(2);
    let extra = Extra {
        reason: Some(reason),
        ..Extra::event(SOCK_EV_DROP)
    };
    let result = on_skb(ctx.arg(0), core::ptr::null(), extra);
    sock_done(&ctx, Counter::SockSeenDrop, result)
}

/// The context of an `iter/tcp` program (`struct bpf_iter__tcp`).
#[repr(C)]
pub struct IterTcp {
    /// `struct bpf_iter_meta *`, whose first member is the `seq_file`.
    meta: *const *mut aya_ebpf::bindings::seq_file,
    /// The socket visited; NULL on the final call.
    sk_common: *const u8,
    /// The socket's owner.
    uid: u32,
}

/// `iter/tcp`: one `ListenerRecord` per LISTEN socket of the reading process's network namespace.
///
/// # Safety
/// Only the kernel calls it, with a valid `bpf_iter__tcp` whose `meta` is never NULL.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/tcp")]
pub unsafe extern "C" fn listener_queues(ctx: *const IterTcp) -> i32 {
    // SAFETY: see above; the verifier checks both loads against the context's BTF.
    let (seq, sk, uid) = unsafe { (*(*ctx).meta, (*ctx).sk_common, (*ctx).uid) };
    // A failed read or write leaves the row out; the reader sees fewer rows, never a torn one.
    let _ = listener_row(seq, sk, uid);
    0
}

/// Counts a socket program's run and its outcome; tp_btf programs return 0.
#[inline(always)]
fn sock_done(ctx: &BtfTracePointContext, seen: Counter, result: Result<Counter, Counter>) -> i32 {
    count(seen, outcome(result));
    if let Err(c) = result {
        debug!(ctx, "socket event {}: not emitted: {}", seen.name(), c.name());
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
