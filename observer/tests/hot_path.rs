//! The per-packet path allocates nothing in steady state: 100,000 synthetic ring records of established flows,
//! decoded, linked to their sockets (or not, as with `--no-sockets`), analysed and written as a line each
//! through the line view (text and JSON) after a warm-up, counted through a global allocator.
//!
//! Its own test binary: the allocator counts every thread of the process, so nothing else may run beside it.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering},
};

use observer::{
    model::analyzer::Analyzer,
    model::events::{self, Event},
    model::link::{DEFAULT_HOLD_NS, Input, Kernel, Linker, Output, Tuple},
    sys::sockets::{Socket, TcpState, process::Owner, tcpext::TcpExt},
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
const WARM_UP: usize = 250_000;
/// Flows the records belong to.
const FLOWS: usize = 16;
/// The most allocations allowed per 1,000 measured records.
const BUDGET_PER_1000: u64 = 1;

/// Nanoseconds between two records: 1 us, the spacing at about a million packets/s.
const SPACING_NS: u64 = 1_000;
/// Records between two flushes of the linker: the 10 ms flush tick at that rate.
const FLUSH_EVERY: usize = 10_000;

/// The client's and the server's address of flow `flow`.
fn ends(flow: usize) -> (([u8; 4], u16), ([u8; 4], u16)) {
    (([10, 0, 0, 1], 40_000 + flow as u16), ([10, 0, 0, 2], 5001))
}

/// The ring bytes of record `i`: 16 flows, each alternating a 64-byte data segment from the client and the
/// server's ACK of it, with sequence numbers advancing as on the wire.
fn record(i: usize) -> Vec<u8> {
    let flow = i % FLOWS;
    let round = (i / FLOWS) as u32;
    let from_client = round.is_multiple_of(2);
    let exchanged = round / 2 * 64;
    let (client, server) = ends(flow);
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
            ts_ns: ts_of(i),
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

/// Record `i`'s kernel time.
fn ts_of(i: usize) -> u64 {
    1_000_000_000 + i as u64 * SPACING_NS
}

/// A kernel whose table holds the server side of every flow, each socket owned by one process: what
/// `cmd::live::LiveKernel` answers while the flows stay established.
struct Established;

impl Established {
    fn sockets() -> Vec<Socket> {
        (0..FLOWS)
            .map(|flow| {
                let (client, server) = ends(flow);
                let mut s = Socket::new(
                    SocketAddr::from(server),
                    SocketAddr::from(client),
                    TcpState::Established,
                );
                s.inode = 100 + flow as u64;
                s
            })
            .collect()
    }
}

impl Kernel for Established {
    fn listeners(&mut self) -> Vec<Socket> {
        Vec::new()
    }

    fn syn_recv(&mut self, _port: u16) -> Vec<Socket> {
        Vec::new()
    }

    fn lookup(&mut self, tuple: Tuple) -> Option<Socket> {
        Self::sockets().into_iter().find(|s| Tuple::of_socket(s) == tuple)
    }

    fn tcpext(&mut self) -> Option<TcpExt> {
        None
    }

    fn owner(&mut self, inode: u64) -> Option<Owner> {
        Some(Owner {
            pid: 4000 + inode as u32,
            comm: "iperf3".into(),
            program: "iperf3".into(),
        })
    }
}

/// Decode, (link,) analyse and write, as `watch` does.
struct Path {
    analyzer: Analyzer,
    lines: Lines<std::io::Sink>,
    linker: Option<Linker<Established>>,
    taken: usize,
}

impl Path {
    fn new(json: bool, linked: bool) -> Self {
        Path {
            analyzer: Analyzer::default(),
            lines: Lines::new(Renderer::new("veth0", 2, json), std::io::sink()),
            linker: linked.then(|| Linker::new(Established, &Established::sockets(), DEFAULT_HOLD_NS)),
            taken: 0,
        }
    }

    fn take(&mut self, bytes: &[u8]) {
        let Ok(Event::Tcp(rec, None)) = events::decode(bytes) else {
            panic!("not a TCP record");
        };
        let Path {
            analyzer,
            lines,
            linker,
            taken,
        } = self;
        *taken += 1;
        let Some(l) = linker.as_mut() else {
            let item = analyzer.segment(&rec, None, &[]);
            lines.item(&item).expect("sink");
            return;
        };
        l.push(Input::Segment(rec, None));
        if taken.is_multiple_of(FLUSH_EVERY) {
            for output in l.flush(rec.header.ts_ns) {
                let Output::Segment(rec, link, _) = output else {
                    panic!("only segments went in");
                };
                assert!(link.as_ref().is_some_and(|l| l.owner.is_some()), "unlinked: {link:?}");
                let item = analyzer.segment(&rec, link.as_ref(), &[]);
                lines.item(&item).expect("sink");
            }
        }
    }
}

/// Allocations per 1,000 records through decode, (link,) render and write after the warm-up.
fn allocations_per_1000(json: bool, linked: bool) -> f64 {
    let ring: Vec<Vec<u8>> = (0..WARM_UP + MEASURED).map(record).collect();
    let mut path = Path::new(json, linked);
    for bytes in &ring[..WARM_UP] {
        path.take(bytes);
    }
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for bytes in &ring[WARM_UP..] {
        path.take(bytes);
    }
    let n = ALLOCATIONS.load(Ordering::Relaxed) - before;
    n as f64 * 1000.0 / MEASURED as f64
}

#[test]
fn decoding_linking_and_rendering_a_record_allocates_nothing_in_steady_state() {
    assert!(
        WARM_UP as u64 * SPACING_NS > 2 * DEFAULT_HOLD_NS,
        "the warm-up must release records through the hold"
    );
    let mut failed = Vec::new();
    for (linked, json) in [(false, false), (false, true), (true, false), (true, true)] {
        let n = allocations_per_1000(json, linked);
        let what = format!(
            "{}, {}",
            if json { "json" } else { "text" },
            if linked { "linked" } else { "unlinked" }
        );
        eprintln!("allocations per 1,000 records, {what}: {n:.2}");
        if n > BUDGET_PER_1000 as f64 {
            failed.push(format!("{what}: {n:.2}"));
        }
    }
    assert!(
        failed.is_empty(),
        "allocations per 1,000 records over the budget of {BUDGET_PER_1000}: {}",
        failed.join("; ")
    );
}
