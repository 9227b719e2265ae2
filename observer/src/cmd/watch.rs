//! `observer watch`: attach, print every record with its socket side, detach on Ctrl-C or SIGTERM, report
//! counters.

use std::{
    io::{self, Write},
    time::Duration,
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use observer_common::{record::Snap, sock::SockRecord};
use tokio::{
    io::{
        Interest,
        unix::{AsyncFd, AsyncFdReadyMutGuard},
    },
    signal::unix::{SignalKind, signal},
};

use crate::{
    cli::{HookKind, WatchArgs},
    cmd::live::LiveKernel,
    model::accounting::{Accounts, ExitReport, RingAccount, SocketReport},
    model::analyzer::{Analyzer, Due, Item},
    model::events::{self, Event},
    model::flows::FlowTable,
    model::fold::{FoldTracker, Folded},
    model::link::{Bytes, DEFAULT_HOLD_NS, Input, Linker, Output},
    sys::capture::{Capture, CaptureError, FoldedTable, Hook, program},
    sys::fault::Fault,
    sys::neigh::{NeighError, NeighMsg, NeighSource, NeighTable},
    sys::preflight,
    sys::privileges::{self, Needs},
    sys::sockets::{Socket, TcpState},
    sys::sockprogs::{self, ReasonNames},
    sys::watchdog::{self, Watchdog, WatchedFilter},
    view::lines::Lines,
    view::pcapng::{PcapngError, PcapngWriter},
    view::render::{Clock, Renderer},
    view::sink::Sink,
    view::summary,
};

/// How often held records are checked for release.
const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// How often the folded segments are read and printed, one line per flow.
const FOLD_EVERY: Duration = Duration::from_secs(1);
/// How often ARP questions and neighbour changes are checked for being due.
const ARP_TICK: Duration = Duration::from_millis(100);

/// Runs `observer watch` until interrupted (or `--count` events), then prints the counters to stderr.
pub async fn run(args: &WatchArgs) -> anyhow::Result<()> {
    preflight::check_privileges()?;
    let features: &[preflight::Feature] = match args.hook {
        HookKind::Tc => &[preflight::Feature::RingBuf],
        HookKind::Xdp => &[preflight::Feature::RingBuf, preflight::Feature::XdpLoadBytes],
    };
    preflight::check_features(features)?;
    let iface = match &args.iface {
        Some(name) => name.clone(),
        None => preflight::default_route_interface()?,
    };
    preflight::check_interface(&iface)?;
    let ifindex = preflight::ifindex(&iface);
    let mut config = args.config()?;
    config.snap = u8::from(args.write.is_some());
    let clock = Clock::new().unwrap_or(Clock::utc_with_offset(0));
    // Opened before anything is attached, so a bad path costs nothing.
    let pcap = match &args.write {
        Some(path) => {
            let mut w = PcapngWriter::create(path, clock)?.with_lookup(preflight::interface_name);
            w.name_interface(ifindex, &iface);
            Some(w)
        }
        None => None,
    };
    let hook = match args.hook {
        HookKind::Tc => Hook::Tc(args.tc_attach.into()),
        HookKind::Xdp => Hook::Xdp(args.xdp_mode.into()),
    };

    let mut capture = Capture::load(&config, args.rings(), args.ebpf_log)?;
    let logger = if args.ebpf_log {
        Some(capture.ebpf_logger()?)
    } else {
        None
    };
    capture.attach(&iface, hook)?;
    let filters = if capture.netlink_tc() {
        [(program::TC_INGRESS, false), (program::TC_EGRESS, true)]
            .into_iter()
            .filter_map(|(name, egress)| {
                Some(WatchedFilter {
                    program: name,
                    prog_id: capture.program_id(name)?,
                    egress,
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    let watchdog = Watchdog::new(&iface, ifindex, filters);
    let flows = FlowTable::new(args.max_flows).with_idle_ns(args.flow_idle_secs.saturating_mul(1_000_000_000));
    let mut analyzer = Analyzer::default()
        .with_flows(flows)
        .with_loopback(preflight::is_loopback(&iface));
    let (mut linker, reasons) = if args.no_sockets {
        (None, None)
    } else {
        let (l, r) = link_sockets(&mut capture, analyzer.flows_mut())?;
        (Some(l), Some(r))
    };
    let mut ring = register_ring(capture.take_events()?)?;
    let mut sock_ring = match linker {
        Some(_) => Some(register_ring(capture.take_sock_events()?)?),
        None => None,
    };
    let mut sock_batch = Vec::new();
    let mut folded = Folding {
        table: capture.take_folded()?,
        tracker: FoldTracker::default(),
        high_water: u64::from(args.high_water()),
    };
    let mut logger = match logger {
        // SAFETY: the logger owns its ring buffer fd for as long as the AsyncFd holds it.
        Some(l) => Some(
            unsafe { AsyncFd::register_with_interest(l, Interest::READABLE) }
                .map_err(|e| e.into_parts().1)
                .context("registering the eBPF log reader with tokio")?,
        ),
        None => None,
    };

    let mut neigh = open_neigh(ifindex);
    let needs = Needs {
        processes: linker.is_some(),
        netlink_tc: capture.netlink_tc(),
    };
    if needs.processes
        && let Some(note) = privileges::process_names_note()
    {
        eprintln!("observer: note: {note}");
    }
    privileges::drop_all_but(needs)?;

    let renderer = Renderer::new(&iface, ifindex, args.json)
        .with_clock(clock)
        .with_names(super::mac_names(args.numeric));
    let mut printer = Printer {
        analyzer,
        lines: Lines::new(renderer, io::BufWriter::new(io::stdout().lock())),
        stats: HostStats::default(),
        limit: args.count,
        pcap,
        pcap_error: None,
        out_error: None,
    };
    // Before the ready line: a signal that follows it must find the handlers (default SIGINT would leave
    // clsact filters behind on kernels before TCX).
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    eprintln!(
        "observer: watching {iface} ({}){}{}; Ctrl-C to stop",
        capture.attached().join(", "),
        if args.control_only {
            ", control segments only"
        } else {
            ""
        },
        if linker.is_some() { ", linked to sockets" } else { "" }
    );

    let mut flush = tokio::time::interval(FLUSH_EVERY);
    let mut arp_tick = tokio::time::interval(ARP_TICK);
    let mut watch_tick = tokio::time::interval(watchdog::EVERY);
    let mut fold_tick = tokio::time::interval(FOLD_EVERY);
    let mut fault = None;
    let mut open = true;
    while open {
        tokio::select! {
            guard = ring.readable_mut() => {
                open = cleared(guard, &mut fault)
                    && drain(Rings::of(&mut ring, &mut sock_ring, &mut sock_batch), linker.as_mut(), reasons.as_ref(), &mut printer);
            }
            guard = async { sock_ring.as_mut().expect("only polled when present").readable_mut().await },
                if sock_ring.is_some() => {
                open = cleared(guard, &mut fault)
                    && drain(Rings::of(&mut ring, &mut sock_ring, &mut sock_batch), linker.as_mut(), reasons.as_ref(), &mut printer);
            }
            _ = watch_tick.tick() => {
                fault = watchdog.check();
                open = fault.is_none();
            }
            _ = flush.tick(), if linker.as_ref().is_some_and(|l| l.pending() > 0) => {
                if let Some(l) = linker.as_mut() {
                    open = printer.emit_all(l.flush(boot_time_ns()));
                }
            }
            guard = async { logger.as_mut().expect("only polled when present").readable_mut().await },
                if logger.is_some() => {
                let mut guard = guard.context("waiting on the eBPF log")?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            guard = async { neigh.as_mut().expect("only polled when present").fd.readable_mut().await },
                if neigh.is_some() => {
                let mut guard = guard.context("waiting on the neighbour table")?;
                let read = guard.get_inner_mut().read();
                guard.clear_ready();
                drop(guard);
                read_neigh(&mut neigh, read, &mut printer.analyzer);
            }
            _ = fold_tick.tick(), if folded.high_water > 0 => {
                let flows = folded.read(true);
                open = printer.emit_items(flows.iter().map(|f| folded.item(f)));
            }
            _ = arp_tick.tick() => {
                let due = printer.analyzer.tick(boot_time_ns());
                open = printer.emit_items(due.iter().map(Due::item));
            }
            _ = sigint.recv() => open = false,
            _ = sigterm.recv() => open = false,
            _ = sighup.recv() => open = false,
        }
    }

    let counters = capture.detach()?;
    // Records submitted before the programs went away are still worth printing.
    drain(
        Rings::of(&mut ring, &mut sock_ring, &mut sock_batch),
        linker.as_mut(),
        reasons.as_ref(),
        &mut printer,
    );
    if let Some(l) = linker.as_mut() {
        printer.emit_all(l.flush_all());
    }
    // The table outlives the programs: what they folded last is printed too.
    let flows = folded.read(false);
    printer.emit_items(flows.iter().map(|f| folded.item(f)));
    // Handshakes that never completed and ARP questions never answered are reported before the summary.
    let incomplete = printer.analyzer.finish_flows();
    printer.emit_items(incomplete.iter().map(Item::Handshake));
    let due = printer.analyzer.finish_arp(boot_time_ns());
    printer.emit_items(due.iter().map(Due::item));
    let accounts = Accounts {
        ts_ns: boot_time_ns(),
        packet: RingAccount::packets(&counters),
        socket: linker.is_some().then(|| RingAccount::sockets(&counters)),
        printed: printer.stats.events,
        kernel_lines: printer.stats.kernel_lines,
        undecodable: printer.stats.decode_errors,
    };
    if args.json {
        // The text form of the account is the exit report's, on stderr.
        // Past `--count` too: the account closes every run that can still write.
        if printer.out_error.is_none() {
            let written = printer.lines.item(&Item::Summary(&accounts));
            printer.wrote(written);
            printer.flush_out();
        }
    }
    printer.flush_out();
    printer.flush_pcap();
    if let Some(logger) = logger.as_mut() {
        // Log records the loop had no turn to read.
        logger.get_mut().flush();
    }
    eprintln!("observer: detached from {iface}");
    let sockets = linker.as_ref().map(|l| {
        let mut drops: Vec<(&'static str, u64)> = l.drops.iter().map(|(k, v)| (*k, *v)).collect();
        drops.sort_unstable();
        SocketReport {
            tracked: l.tracked(),
            drops,
        }
    });
    eprint!(
        "{}",
        summary::exit_report(&ExitReport {
            counters: &counters,
            accounts: &accounts,
            flows: printer.analyzer.flow_stats(),
            arp: printer.analyzer.arp_tracker().counts(),
            folded_reported: folded.tracker.reported,
            folded_items: folded.tracker.items,
            sockets,
        })
    );
    // The fault that stopped the loop comes first; a closed stdout ends quietly (see `exit::status_of`).
    match (fault, printer.pcap_error.take(), printer.out_error.take()) {
        (Some(f), _, _) => Err(f.into()),
        (None, Some(e), _) => Err(e.into()),
        (None, None, Some(e)) => Err(Fault::Output(e).into()),
        (None, None, None) => Ok(()),
    }
}

/// The neighbour table's subscription and what it knows.
struct Neigh {
    fd: AsyncFd<NeighSource>,
    table: NeighTable,
}

/// Subscribes to the neighbour table of `ifindex`; without it the agent still runs, and says why.
fn open_neigh(ifindex: u32) -> Option<Neigh> {
    let opened = NeighSource::open(ifindex)
        .map_err(anyhow::Error::from)
        .and_then(|(source, dump)| {
            // SAFETY: the source owns its netlink socket for as long as the AsyncFd holds it.
            let fd = unsafe { AsyncFd::register_with_interest(source, Interest::READABLE) }
                .map_err(|e| e.into_parts().1)
                .context("registering the neighbour table socket with tokio")?;
            Ok(Neigh {
                fd,
                table: NeighTable::seeded(&dump),
            })
        });
    match opened {
        Ok(n) => Some(n),
        Err(e) => {
            eprintln!("observer: no neighbour table: {e:#}");
            None
        }
    }
}

/// Hands the neighbour changes read to the analyzer; a failed read ends the subscription.
fn read_neigh(neigh: &mut Option<Neigh>, read: Result<Vec<NeighMsg>, NeighError>, analyzer: &mut Analyzer) {
    let Some(n) = neigh.as_mut() else { return };
    match read {
        Ok(msgs) => {
            let now = boot_time_ns();
            for m in msgs {
                if let Some(change) = n.table.apply(&m, m.updated_ns(now)) {
                    analyzer.neigh(change);
                }
            }
        }
        Err(e) => {
            eprintln!("observer: neighbour table no longer followed: {e}");
            *neigh = None;
        }
    }
}

/// Attaches the socket programs, reads the socket table and builds the linker; teaches `flows` the window
/// scales of connections opened before now.
fn link_sockets(capture: &mut Capture, flows: &mut FlowTable) -> anyhow::Result<(Linker<LiveKernel>, ReasonNames)> {
    // Attach first: a state change between the dump and the attach would otherwise be lost.
    let netns = sockprogs::current_netns().map_err(CaptureError::from)?;
    let events = sockprogs::attach_socket_events(capture, netns)?;
    let mut kernel = LiveKernel::open()?;
    let table = kernel.table().context("reading the socket table")?;
    for s in &table {
        teach_scaling(flows, s);
    }
    Ok((Linker::new(kernel, &table, DEFAULT_HOLD_NS), events.reasons))
}

/// Passes a connection's negotiated window scales from tcp_info to the flow table.
fn teach_scaling(flows: &mut FlowTable, s: &Socket) {
    if matches!(
        s.state.normalized(),
        TcpState::Listen | TcpState::SynRecv | TcpState::TimeWait
    ) {
        return;
    }
    let Some(info) = s.info else { return };
    let shifts = info.rcv_wscale.zip(info.snd_wscale);
    flows.learn_scaling(s.local, s.remote, shifts);
}

/// CLOCK_BOOTTIME in nanoseconds: the clock of the records' timestamps.
fn boot_time_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// What the agent itself counted.
#[derive(Debug, Default)]
struct HostStats {
    events: u64,
    kernel_lines: u64,
    decode_errors: u64,
}

/// Feeds the analyzer and hands its items to the views (lines on stdout, the pcapng file with `--write`),
/// counting them against `--count`.
struct Printer<W: Write> {
    analyzer: Analyzer,
    lines: Lines<W>,
    stats: HostStats,
    limit: Option<u64>,
    pcap: Option<PcapngWriter>,
    /// The write error that stopped the agent.
    pcap_error: Option<PcapngError>,
    /// The stdout error that stopped the agent (a closed pipe: the reader went away).
    out_error: Option<io::Error>,
}

impl<W: Write> Printer<W> {
    fn done(&self) -> bool {
        self.out_error.is_some() || self.pcap_error.is_some() || self.limit.is_some_and(|n| self.stats.events >= n)
    }

    /// Keeps the first stdout error; the agent stops on it.
    fn wrote(&mut self, result: io::Result<()>) -> bool {
        match result {
            Ok(()) => true,
            Err(e) => {
                self.out_error.get_or_insert(e);
                false
            }
        }
    }

    /// Flushes stdout, keeping its error.
    fn flush_out(&mut self) {
        let flushed = self.lines.flush();
        self.wrote(flushed);
    }

    /// Stops writing the pcapng file after `e`, keeping the whole blocks written so far.
    fn pcap_failed(&mut self, e: PcapngError) {
        if let Some(Err(cut)) = self.pcap.take().map(PcapngWriter::abandon) {
            eprintln!(
                "observer: cutting back {} after the error failed: {cut}",
                e.path().display()
            );
        }
        self.pcap_error = Some(e);
    }

    /// Flushes the pcapng file; a failure stops the agent.
    fn flush_pcap(&mut self) {
        if let Some(Err(e)) = self.pcap.as_mut().map(PcapngWriter::flush) {
            self.pcap_failed(e);
        }
    }

    /// Analyses and prints one output of the linker; returns false once the agent should stop.
    fn emit(&mut self, output: Output) -> bool {
        if self.done() {
            return false;
        }
        let Printer {
            analyzer, lines, pcap, ..
        } = self;
        let (item, wire) = match &output {
            Output::Segment(rec, link, snap) => (analyzer.segment(rec, link.as_ref(), snap_bytes(snap)), true),
            Output::Arp(rec, snap) => (analyzer.arp(rec, snap_bytes(snap)), true),
            Output::State(change, owner) => (
                Item::State {
                    change,
                    owner: owner.as_ref(),
                },
                false,
            ),
            Output::Note(note) => (Item::Note(note), false),
        };
        let packet = match pcap.as_mut() {
            Some(w) if wire => w.item(&item),
            _ => Ok(()),
        };
        let written = lines.item(&item);
        if let Err(e) = packet {
            self.pcap_failed(e);
        }
        if !self.wrote(written) {
            return false;
        }
        if wire {
            self.stats.events += 1;
        } else {
            self.stats.kernel_lines += 1;
        }
        if self.done() {
            self.flush_out();
            return false;
        }
        true
    }

    /// Prints items that are neither wire records nor kernel events (folded flows, ARP give-ups, neighbour
    /// changes, open handshakes); returns false once the agent should stop.
    fn emit_items<'a>(&mut self, items: impl IntoIterator<Item = Item<'a>>) -> bool {
        for item in items {
            if self.done() {
                break;
            }
            let written = self.lines.item(&item);
            self.wrote(written);
        }
        self.flush_out();
        !self.done()
    }

    fn emit_all(&mut self, outputs: impl IntoIterator<Item = Output>) -> bool {
        for o in outputs {
            if !self.emit(o) {
                break;
            }
        }
        self.flush_out();
        self.flush_pcap();
        !self.done()
    }
}

/// A record's header bytes, empty without a snap.
fn snap_bytes(snap: &Bytes) -> &[u8] {
    snap.as_deref().map_or(&[], Snap::bytes)
}

/// The kernel's folded segments and what of them was printed.
struct Folding {
    table: FoldedTable,
    tracker: FoldTracker,
    /// The packet ring's high-water mark in bytes (0: folding is off).
    high_water: u64,
}

impl Folding {
    /// The flows that grew since the last reading; with `forget`, idle flows leave the kernel's table.
    fn read(&mut self, forget: bool) -> Vec<Folded> {
        let (flows, idle) = self.tracker.update(self.table.read());
        if forget {
            self.table.remove(&idle);
        }
        flows
    }

    /// A flow's item.
    fn item<'a>(&self, flow: &'a Folded) -> Item<'a> {
        Item::Folded {
            flow,
            high_water: self.high_water,
        }
    }
}

/// A ring buffer registered with tokio.
fn register_ring(ring: RingBuf<MapData>) -> anyhow::Result<AsyncFd<RingBuf<MapData>>> {
    // SAFETY: the ring buffer owns its fd for as long as the AsyncFd holds it.
    unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .context("registering the ring buffer with tokio")
}

/// The two rings one drain reads, and the reused buffer the socket events wait in meanwhile.
struct Rings<'a> {
    packets: &'a mut RingBuf<MapData>,
    sockets: Option<&'a mut RingBuf<MapData>>,
    batch: &'a mut Vec<SockRecord>,
}

impl<'a> Rings<'a> {
    fn of(
        packets: &'a mut AsyncFd<RingBuf<MapData>>,
        sockets: &'a mut Option<AsyncFd<RingBuf<MapData>>>,
        batch: &'a mut Vec<SockRecord>,
    ) -> Self {
        Rings {
            packets: packets.get_mut(),
            sockets: sockets.as_mut().map(AsyncFd::get_mut),
            batch,
        }
    }
}

/// Clears a ring's readiness before it is read (a record submitted meanwhile makes it ready again); false, with
/// the fault, when polling failed.
fn cleared(guard: io::Result<AsyncFdReadyMutGuard<'_, RingBuf<MapData>>>, fault: &mut Option<Fault>) -> bool {
    match guard {
        Ok(mut g) => {
            g.clear_ready();
            true
        }
        Err(e) => {
            *fault = Some(Fault::Ring(e));
            false
        }
    }
}

/// Takes every record waiting in both rings, merged in kernel-time order: into the linker when there is one,
/// else straight to the output. Returns false once the agent should stop.
///
/// The socket ring is read first: a state change that an arriving segment caused was submitted after that
/// segment, so the segment is in the packet ring by then.
fn drain(
    rings: Rings<'_>,
    mut linker: Option<&mut Linker<LiveKernel>>,
    reasons: Option<&ReasonNames>,
    p: &mut Printer<impl Write>,
) -> bool {
    rings.batch.clear();
    if let Some(sockets) = rings.sockets {
        while let Some(item) = sockets.next() {
            match events::decode(&item) {
                Ok(Event::Sock(rec)) => rings.batch.push(rec),
                _ => p.stats.decode_errors += 1,
            }
        }
    }
    let mut socks = rings.batch.drain(..).peekable();
    loop {
        let event = match rings.packets.next() {
            Some(item) => match events::decode(&item) {
                Ok(e) => e,
                Err(_) => {
                    p.stats.decode_errors += 1;
                    continue;
                }
            },
            None => break,
        };
        let ts = event.header().map_or(0, |h| h.ts_ns);
        while let Some(rec) = socks.next_if(|s| s.ts_ns <= ts) {
            take(Event::Sock(rec), linker.as_deref_mut(), reasons, p);
        }
        take(event, linker.as_deref_mut(), reasons, p);
    }
    for rec in socks {
        take(Event::Sock(rec), linker.as_deref_mut(), reasons, p);
    }
    p.flush_out();
    p.flush_pcap();
    !p.done()
}

/// One decoded record: into the linker when there is one, else straight to the output.
fn take(
    event: Event,
    linker: Option<&mut Linker<LiveKernel>>,
    reasons: Option<&ReasonNames>,
    p: &mut Printer<impl Write>,
) {
    if p.done() {
        return;
    }
    let input = match event {
        Event::Tcp(rec, snap) => Input::Segment(rec, snap.map(Box::new)),
        Event::Arp(rec, snap) => Input::Arp(rec, snap.map(Box::new)),
        Event::Sock(rec) => {
            let name = |event: u8, reason: u32| reasons.map_or_else(|| reason.to_string(), |r| r.name(event, reason));
            match Input::from_sock(&rec, name) {
                Some(i) => i,
                None => return,
            }
        }
    };
    match linker {
        Some(l) => l.push(input),
        None => {
            let output = match input {
                Input::Segment(rec, bytes) => Output::Segment(rec, None, bytes),
                Input::Arp(rec, bytes) => Output::Arp(rec, bytes),
                _ => return,
            };
            p.emit(output);
        }
    }
}
