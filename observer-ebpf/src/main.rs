//! observer's kernel programs: thin TC and XDP entry points around `observer_common::parse`.
//!
//! Every program passes the packet on unchanged; what it saw becomes one record in `EVENTS` or one
//! per-CPU counter in `COUNTERS`.
#![no_std]
#![no_main]

mod frame;
mod maps;

use aya_ebpf::{
    bindings::{TC_ACT_UNSPEC, xdp_action},
    helpers::bpf_ktime_get_boot_ns,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::debug;
use observer_common::{
    Counter,
    config::MODE_CONTROL,
    parse::{Frame, Payload, parse_arp, parse_link, parse_tcp},
    record::{ArpRecord, DIR_EGRESS, DIR_INGRESS, HOOK_TC_EGRESS, HOOK_TC_INGRESS, HOOK_XDP, RecordHeader, TcpRecord},
};

use crate::{
    frame::{TcFrame, XdpFrame},
    maps::{CONFIG, SCRATCH_ARP, SCRATCH_TCP, bump, control_allows, emit, scratch},
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
    let frame = XdpFrame(&ctx);
    // SAFETY: ctx.ctx is the xdp_md the kernel passed in.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let outcome = observe(&frame, HOOK_XDP, DIR_INGRESS, ifindex, Counter::SeenXdp);
    // aya-log's AYA_LOG_LEVEL global (0 unless --ebpf-log) turns these off; the verifier prunes them then.
    match outcome {
        Ok(()) => debug!(&ctx, "xdp: record emitted"),
        Err(c) => debug!(&ctx, "xdp: no record, counter {}", c as u32),
    }
    xdp_action::XDP_PASS
}

/// Baseline for `cargo xtask bench`: an empty TC program measured beside the real ones.
#[classifier]
pub fn tc_empty(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[inline(always)]
fn tc(ctx: &TcContext, hook: u8, direction: u8, seen: Counter) {
    let frame = TcFrame(ctx);
    // SAFETY: ctx.skb.skb is the __sk_buff the kernel passed in.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let outcome = observe(&frame, hook, direction, ifindex, seen);
    match outcome {
        Ok(()) => debug!(ctx, "tc hook {}: record emitted", hook),
        Err(c) => debug!(ctx, "tc hook {}: no record, counter {}", hook, c as u32),
    }
}

/// Parses one frame and emits its record; `Err` names the counter that took it instead.
#[inline(always)]
fn observe<F: Frame>(f: &F, hook: u8, direction: u8, ifindex: u32, seen: Counter) -> Result<(), Counter> {
    bump(seen);
    let result = parse_and_emit(f, hook, direction, ifindex);
    if let Err(c) = result {
        bump(c);
    }
    result
}

#[inline(always)]
fn parse_and_emit<F: Frame>(f: &F, hook: u8, direction: u8, ifindex: u32) -> Result<(), Counter> {
    // Verifier: an array lookup can fail as far as it knows; index 0 of CONFIG always exists.
    let Some(cfg) = CONFIG.get(0) else {
        return Err(Counter::RingFull);
    };
    let (link, payload) = parse_link(f)?;
    match payload {
        Payload::Ip => {
            let rec: &mut TcpRecord = scratch(&SCRATCH_TCP).ok_or(Counter::RingFull)?;
            parse_tcp(f, &link, rec)?;
            if !cfg.allows_tcp(rec) {
                return Err(Counter::Filtered);
            }
            if cfg.mode == MODE_CONTROL && !control_allows(rec) {
                return Err(Counter::ControlSuppressed);
            }
            stamp(&mut rec.header, hook, direction, ifindex);
            emit(rec, cfg.discard != 0)
        }
        Payload::Arp => {
            let rec: &mut ArpRecord = scratch(&SCRATCH_ARP).ok_or(Counter::RingFull)?;
            parse_arp(f, &link, rec)?;
            if !cfg.allows_arp(rec) {
                return Err(Counter::Filtered);
            }
            stamp(&mut rec.header, hook, direction, ifindex);
            emit(rec, cfg.discard != 0)
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
