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
    mem::clear,
    parse::{Frame, Payload, parse_arp, parse_link, parse_tcp},
    record::{ArpRecord, DIR_EGRESS, DIR_INGRESS, HOOK_TC_EGRESS, HOOK_TC_INGRESS, HOOK_XDP, RecordHeader},
};

use crate::{
    frame::Packet,
    maps::{CONFIG, SCRATCH_ARP, SCRATCH_TCP, TcpScratch, control_allows, count, emit, scratch},
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
            let TcpScratch { record: rec, options } = scratch(&SCRATCH_TCP).ok_or(Counter::NotTcpOrArp)?;
            clear(rec);
            parse_tcp(f, &link, rec, options)?;
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
            let rec: &mut ArpRecord = scratch(&SCRATCH_ARP).ok_or(Counter::NotTcpOrArp)?;
            clear(rec);
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
