//! One interface's analysis: it ingests wire records, socket outputs, neighbour changes and ticks, and yields
//! typed [`Item`]s that the views only read.
//!
//! It owns every piece of state a line depends on: the flow table (relative numbers, window scaling, expert
//! flags, timelines), the ARP tracker, the frame numbers and, on loopback, the outgoing segments waiting for
//! their incoming copy.

use std::collections::VecDeque;

use observer_common::record::{ArpRecord, DIR_EGRESS, TcpRecord};

use crate::model::accounting::Accounts;
use crate::model::arp::{ArpAnalysis, ArpTracker, ResolutionWait, Unanswered};
use crate::model::flows::stats::FlowStats;
use crate::model::flows::timeline::HandshakeReport;
use crate::model::flows::{FlowTable, TcpAnalysis};
use crate::model::fold::Folded;
use crate::model::link::{KernelNote, SocketLink, StateChange};
use crate::sys::neigh::NeighChange;
use crate::sys::sockets::process::Owner;

/// Outgoing loopback segments remembered until their incoming copy: a copy follows within microseconds.
const MAX_TWINS: usize = 256;

/// What the model says about one input, for every view to print the same way.
#[derive(Clone, Debug)]
pub enum Item<'a> {
    /// A TCP segment with its analysis and socket side.
    Segment(Segment<'a>),
    /// An ARP packet with its analysis.
    Arp(Arp<'a>),
    /// A state change no captured segment explains (another interface, a timer, the application).
    State {
        /// The change.
        change: &'a StateChange,
        /// The owning process, when known.
        owner: Option<&'a Owner>,
    },
    /// Another kernel event (retransmit, reset, drop, queue overflow ...).
    Note(&'a KernelNote),
    /// A flow's data segments the kernel folded into counters since its previous item.
    Folded {
        /// The flow's counters.
        flow: &'a Folded,
        /// The packet ring's high-water mark in bytes: folding happens while more than this waits unread.
        high_water: u64,
    },
    /// An ARP question given up.
    Unanswered(&'a Unanswered),
    /// A neighbour change no reply claimed.
    Neigh {
        /// The change.
        change: &'a NeighChange,
        /// The frame of the reply it followed, when one did.
        after: Option<u64>,
    },
    /// A handshake that never completed (at exit).
    Handshake(&'a HandshakeReport),
    /// The last item: what each ring saw and what became of it.
    Summary(&'a Accounts),
}

/// A TCP segment's item.
#[derive(Clone, Copy, Debug)]
pub struct Segment<'a> {
    /// The record.
    pub rec: &'a TcpRecord,
    /// Its analysis; on a loopback copy, the original's, without timelines.
    pub analysis: &'a TcpAnalysis,
    /// The ARP resolution this segment waited for, when it did.
    pub wait: Option<ResolutionWait>,
    /// Its socket side; `None` when unknown or not linked.
    pub link: Option<&'a SocketLink>,
    /// Its header bytes (empty without a snap).
    pub bytes: &'a [u8],
    /// Whether it is loopback's incoming copy of the frame before: tcpdump and tshark see one frame.
    pub copy: bool,
    /// Handshakes the flow table gave up while taking it (evicted or expired flows).
    pub abandoned: &'a [HandshakeReport],
}

/// An ARP packet's item.
#[derive(Clone, Debug)]
pub struct Arp<'a> {
    /// The record.
    pub rec: &'a ArpRecord,
    /// Its analysis.
    pub analysis: &'a ArpAnalysis,
    /// Its bytes (empty without a snap).
    pub bytes: &'a [u8],
}

/// A line due at a tick or at exit that no packet carries.
#[derive(Clone, Debug)]
pub enum Due {
    /// An ARP question given up.
    Unanswered(Unanswered),
    /// A neighbour change, with the frame of the reply it followed.
    Neigh(NeighChange, Option<u64>),
}

impl Due {
    /// Its item.
    pub fn item(&self) -> Item<'_> {
        match self {
            Due::Unanswered(u) => Item::Unanswered(u),
            Due::Neigh(change, after) => Item::Neigh { change, after: *after },
        }
    }

    fn ts_ns(&self) -> u64 {
        match self {
            Due::Unanswered(u) => u.ts_ns,
            Due::Neigh(c, _) => c.ts_ns,
        }
    }
}

/// What identifies a loopback segment's incoming copy: every field the copy shares with the original.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TwinKey {
    ends: ([u8; 16], [u8; 16], u16, u16),
    numbers: (u32, u32, u8, u16, u16, u32),
}

impl TwinKey {
    fn of(r: &TcpRecord) -> Self {
        TwinKey {
            ends: (r.saddr, r.daddr, r.sport, r.dport),
            numbers: (r.seq, r.ack, r.flags, r.payload_len, r.window, r.tsval),
        }
    }
}

/// The analysis of one interface's records.
#[derive(Debug, Default)]
pub struct Analyzer {
    flows: FlowTable,
    arp: ArpTracker,
    /// Wire records analysed so far (TCP and ARP): the last frame number given.
    frames: u64,
    /// On a loopback interface, the analyses of segments seen going out, waiting for their copy coming in.
    twins: Option<VecDeque<(TwinKey, TcpAnalysis)>>,
    /// The handshakes the flow table gave up while taking the last segment.
    abandoned: Vec<HandshakeReport>,
    /// The last segment's analysis, which its item borrows: a segment's item stays a few pointers.
    tcp: Option<TcpAnalysis>,
    /// The last ARP packet's analysis, which its item borrows.
    arp_analysis: Option<ArpAnalysis>,
}

impl Analyzer {
    /// For a loopback interface: a segment's copy coming back in is the same frame as the one that went out, with
    /// its analysis; only its socket side is its own.
    pub fn with_loopback(mut self, loopback: bool) -> Self {
        self.twins = loopback.then(VecDeque::new);
        self
    }

    /// Replaces the flow table (for another cap or linger).
    pub fn with_flows(mut self, flows: FlowTable) -> Self {
        self.flows = flows;
        self
    }

    /// The flow table, for its `evicted` and `expired` counters.
    pub fn flows(&self) -> &FlowTable {
        &self.flows
    }

    /// Teaches the flow table window scales learnt from tcp_info.
    pub fn flows_mut(&mut self) -> &mut FlowTable {
        &mut self.flows
    }

    /// The flow analysis counters for the exit summary.
    pub fn flow_stats(&self) -> FlowStats {
        self.flows.stats()
    }

    /// The ARP analysis: its counters and resolution waits.
    pub fn arp_tracker(&self) -> &ArpTracker {
        &self.arp
    }

    /// Takes a TCP segment with its socket side and header bytes.
    pub fn segment<'a>(&'a mut self, rec: &'a TcpRecord, link: Option<&'a SocketLink>, bytes: &'a [u8]) -> Item<'a> {
        let (analysis, copy) = match self.twin_of(rec) {
            Some(a) => (a, true),
            None => {
                let frame = self.next_frame();
                let a = self.flows.observe_frame(rec, frame);
                self.remember_twin(rec, &a);
                (a, false)
            }
        };
        let wait = self.arp.resolution_wait(rec);
        self.abandoned = self.flows.take_abandoned();
        Item::Segment(Segment {
            rec,
            analysis: self.tcp.insert(analysis),
            wait,
            link,
            bytes,
            copy,
            abandoned: &self.abandoned,
        })
    }

    /// Takes an ARP packet with its bytes.
    pub fn arp<'a>(&'a mut self, rec: &'a ArpRecord, bytes: &'a [u8]) -> Item<'a> {
        let frame = self.next_frame();
        let analysis = self.arp.observe(rec, frame);
        Item::Arp(Arp {
            rec,
            analysis: self.arp_analysis.insert(analysis),
            bytes,
        })
    }

    /// Takes a neighbour change; it shows on the item of the reply that caused it, or later as its own.
    pub fn neigh(&mut self, change: NeighChange) {
        self.arp.hold_neigh(change);
    }

    /// What is due by `now_ns` (boot time), in time order: ARP questions given up and neighbour changes no reply
    /// claimed.
    pub fn tick(&mut self, now_ns: u64) -> Vec<Due> {
        let unanswered = self.arp.expire(now_ns);
        let neigh = self.arp.due_neigh(now_ns);
        due(unanswered, neigh)
    }

    /// At exit: every question still waiting, given up, and every neighbour change still held.
    pub fn finish_arp(&mut self, now_ns: u64) -> Vec<Due> {
        let unanswered = self.arp.finish(now_ns);
        let neigh = self.arp.finish_neigh();
        due(unanswered, neigh)
    }

    /// At exit: every handshake that never completed.
    pub fn finish_flows(&mut self) -> Vec<HandshakeReport> {
        self.flows.finish()
    }

    /// The next frame number, 1-based, in output order (tshark's number for the same packet in our pcapng).
    fn next_frame(&mut self) -> u64 {
        self.frames += 1;
        self.frames
    }

    /// On loopback, the analysis of the outgoing copy of this incoming segment (taken once).
    fn twin_of(&mut self, rec: &TcpRecord) -> Option<TcpAnalysis> {
        let twins = self.twins.as_mut()?;
        if rec.header.direction == DIR_EGRESS {
            return None;
        }
        let key = TwinKey::of(rec);
        let i = twins.iter().position(|(k, _)| *k == key)?;
        let (_, a) = twins.remove(i)?;
        // The timelines were reported with the outgoing copy.
        Some(TcpAnalysis {
            handshake: None,
            teardown: None,
            ..a
        })
    }

    fn remember_twin(&mut self, rec: &TcpRecord, a: &TcpAnalysis) {
        let Some(twins) = self.twins.as_mut() else { return };
        if rec.header.direction != DIR_EGRESS {
            return;
        }
        if twins.len() >= MAX_TWINS {
            twins.pop_front();
        }
        twins.push_back((TwinKey::of(rec), *a));
    }
}

fn due(unanswered: Vec<Unanswered>, neigh: Vec<(NeighChange, Option<u64>)>) -> Vec<Due> {
    let mut out: Vec<Due> = unanswered
        .into_iter()
        .map(Due::Unanswered)
        .chain(neigh.into_iter().map(|(c, after)| Due::Neigh(c, after)))
        .collect();
    out.sort_by_key(Due::ts_ns);
    out
}
