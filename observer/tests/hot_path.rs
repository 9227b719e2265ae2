//! The per-packet path allocates nothing in steady state: 100,000 synthetic ring records of established flows,
//! decoded, analysed and written as a line each through the line view (text and JSON) after a warm-up, counted through a global allocator.
//!
//! Its own test binary: the allocator counts every thread of the process, so nothing else may run beside it.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicU64, Ordering},
};

use observer::{
    model::analyzer::Analyzer,
    model::events::{self, Event},
    view::{lines::Lines, render::Renderer, sink::Sink},
};
use observer_common::{
    TcpRecord,
    record::{DIR_EGRESS, DIR_INGRESS, HOOK_TC_EGRESS, HOOK_TC_INGRESS, KIND_TCP, RecordHeader, TCP_ACK, TCP_PSH},
};

/// Counts allocations and reallocations, then defers to the system allocator.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed on unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Records measured after the warm-up.
const MEASURED: usize = 100_000;
/// Records first, to fill the tables and buffers.
const WARM_UP: usize = 20_000;
/// Flows the records belong to.
const FLOWS: usize = 16;
/// The most allocations allowed per 1,000 measured records.
const BUDGET_PER_1000: u64 = 1;

/// The ring bytes of record `i`: 16 flows, each alternating a 64-byte data segment from the client and the
/// server's ACK of it, with sequence numbers advancing as on the wire.
fn record(i: usize) -> Vec<u8> {
    let flow = i % FLOWS;
    let round = (i / FLOWS) as u32;
    let from_client = round.is_multiple_of(2);
    let exchanged = round / 2 * 64;
    let client = ([10, 0, 0, 1], 40_000 + flow as u16);
    let server = ([10, 0, 0, 2], 5001);
    let (src, dst) = if from_client {
        (client, server)
    } else {
        (server, client)
    };
    let mut saddr = [0; 16];
    saddr[..4].copy_from_slice(&src.0);
    let mut daddr = [0; 16];
    daddr[..4].copy_from_slice(&dst.0);
    let rec = TcpRecord {
        header: RecordHeader {
            ts_ns: 1_000_000_000 + i as u64 * 1_000,
            ifindex: 2,
            wire_len: if from_client { 130 } else { 66 },
            kind: KIND_TCP,
            hook: if from_client { HOOK_TC_INGRESS } else { HOOK_TC_EGRESS },
            direction: if from_client { DIR_INGRESS } else { DIR_EGRESS },
            ..RecordHeader::default()
        },
        saddr,
        daddr,
        ip_version: 4,
        flags: if from_client { TCP_ACK | TCP_PSH } else { TCP_ACK },
        header_len: 20,
        sport: src.1,
        dport: dst.1,
        seq: if from_client { 1_000 + exchanged } else { 9_000 },
        ack: if from_client { 9_000 } else { 1_000 + exchanged + 64 },
        window: 502,
        payload_len: if from_client { 64 } else { 0 },
        ..TcpRecord::default()
    };
    // SAFETY: TcpRecord is plain #[repr(C)] data; its bytes are what the kernel submits.
    unsafe { std::slice::from_raw_parts((&raw const rec).cast::<u8>(), size_of::<TcpRecord>()) }.to_vec()
}

/// Allocations per 1,000 records through decode, render and write after the warm-up.
fn allocations_per_1000(json: bool) -> f64 {
    let ring: Vec<Vec<u8>> = (0..WARM_UP + MEASURED).map(record).collect();
    let mut analyzer = Analyzer::default();
    let mut lines = Lines::new(Renderer::new("veth0", 2, json), std::io::sink());
    let mut take = |bytes: &[u8]| {
        let Ok(Event::Tcp(rec, None)) = events::decode(bytes) else {
            panic!("not a TCP record");
        };
        let item = analyzer.segment(&rec, None, &[]);
        lines.item(&item).expect("sink");
    };
    for bytes in &ring[..WARM_UP] {
        take(bytes);
    }
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for bytes in &ring[WARM_UP..] {
        take(bytes);
    }
    let n = ALLOCATIONS.load(Ordering::Relaxed) - before;
    n as f64 * 1000.0 / MEASURED as f64
}

#[test]
fn decoding_and_rendering_a_record_allocates_nothing_in_steady_state() {
    let text = allocations_per_1000(false);
    let json = allocations_per_1000(true);
    eprintln!("allocations per 1,000 records: text {text:.1}, json {json:.1}");
    assert!(
        text <= BUDGET_PER_1000 as f64 && json <= BUDGET_PER_1000 as f64,
        "allocations per 1,000 records: text {text:.1}, json {json:.1} (budget {BUDGET_PER_1000})"
    );
}
