//! Per-connection state for Wireshark's relative sequence numbers and calculated window.
//!
//! The rules follow Wireshark's `packet-tcp.c` (`tcp_analyze_sequence_number`, `verify_tcp_window_scaling`,
//! `dissect_tcpopt_wscale`, `dissect_tcpopt_sack`) and were checked against tshark 4.0's output:
//! - The base (ISN) of a direction is the seq of its SYN, or seq − 1 of its first segment when no SYN was seen,
//!   or ack − 1 of the first segment with ACK from the other direction, whichever comes first.
//! - Relative numbers are absolute − base (wrapping); SACK edges are relative to the other direction's base.
//! - A segment's window is scaled by the shift its *sender* announced, once known; SYN windows never are.
//!   A SYN without WS turns scaling off for both directions, a SYN-ACK with WS after a SYN without it turns it
//!   off for the SYN-ACK's sender. A shift above 14 counts as 14.
//! - A SYN whose seq differs from its direction's base starts a new flow; a SYN-ACK whose seq differs only
//!   rebases its sender's direction. Both are Wireshark's "Port numbers reused".
//!
//! Beside the numbers each flow carries Wireshark's expert analysis ([`expert`]), the latest SACK holes per
//! direction ([`sack`]) and its handshake and teardown timelines ([`timeline`]), all fixed-size. Flows go
//! away after the close linger, after the idle time, or by the cap (least recently seen first).

pub mod expert;
pub mod sack;
pub mod stats;
pub mod timeline;

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use observer_common::record::{MAX_SACK_BLOCKS, OPT_WSCALE, SackBlock, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, TcpRecord};

use self::expert::{Context, Expert, ExpertFlag, Segment, SeqState};
use self::sack::Holes;
use self::stats::FlowStats;
use self::timeline::{Ends, HandshakeReport, HandshakeTrack, TeardownReport, TeardownTrack};

/// Default cap on tracked flows.
pub const DEFAULT_MAX_FLOWS: usize = 65_536;
/// Default time a flow is kept after both FINs or an RST and no segment since, in nanoseconds.
pub const DEFAULT_CLOSE_LINGER_NS: u64 = 10_000_000_000;
/// Default time after which a flow without segments is forgotten, in nanoseconds.
pub const DEFAULT_IDLE_NS: u64 = 300_000_000_000;
/// Largest window scale shift (RFC 7323); larger announced shifts count as this.
pub const MAX_WINDOW_SHIFT: u8 = 14;

/// How a segment's window field relates to the connection's real window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowScaling {
    /// The handshake was not seen: the window is the raw field, scale unknown.
    Unknown,
    /// The window is not scaled: a SYN without WS was seen, or this segment is a SYN.
    NoScaling,
    /// The window is the raw field shifted left by this many bits.
    Shift(u8),
}

/// Wireshark's view of one segment: relative numbers and calculated window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpAnalysis {
    /// Sequence number relative to this direction's base.
    pub seq: u32,
    /// Acknowledgement number relative to the other direction's base; `None` when ACK is clear.
    pub ack: Option<u32>,
    /// Calculated window: the raw window shifted by the sender's scale when known.
    pub window: u32,
    /// How `window` was obtained.
    pub scaling: WindowScaling,
    /// SACK blocks with relative edges; `sack_count` of them are valid.
    pub sack: [SackBlock; MAX_SACK_BLOCKS],
    /// Number of valid entries in `sack`.
    pub sack_count: usize,
    /// A SYN or SYN-ACK with a new ISN on a tracked tuple (Wireshark's "Port numbers reused").
    pub port_reused: bool,
    /// Wireshark's expert flags for this segment.
    pub expert: Expert,
    /// Holes this ACK's SACK blocks leave above its ack, relative to the other direction's base.
    pub holes: Holes,
    /// The hole (relative) of the receiver's latest SACK that this segment's data falls into.
    pub fills_hole: Option<SackBlock>,
    /// The handshake timeline, when this segment completed or ended the handshake.
    pub handshake: Option<HandshakeReport>,
    /// The teardown timeline, when this segment completed the teardown.
    pub teardown: Option<TeardownReport>,
    /// The segment's 1-based frame number.
    pub frame: u64,
}

impl TcpAnalysis {
    /// The valid relative SACK blocks.
    pub fn sack_blocks(&self) -> &[SackBlock] {
        &self.sack[..self.sack_count]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FlowKey {
    ip_version: u8,
    lo_addr: [u8; 16],
    lo_port: u16,
    hi_addr: [u8; 16],
    hi_port: u16,
}

/// Returns the canonical key and which side (0: the lower endpoint) sent the segment.
fn key_of(rec: &TcpRecord) -> (FlowKey, usize) {
    let (saddr, daddr) = if rec.ip_version == 4 {
        (v4_only(&rec.saddr), v4_only(&rec.daddr))
    } else {
        (rec.saddr, rec.daddr)
    };
    let src = (saddr, rec.sport);
    let dst = (daddr, rec.dport);
    let (lo, hi, side) = if src <= dst { (src, dst, 0) } else { (dst, src, 1) };
    let key = FlowKey {
        ip_version: rec.ip_version,
        lo_addr: lo.0,
        lo_port: lo.1,
        hi_addr: hi.0,
        hi_port: hi.1,
    };
    (key, side)
}

fn v4_only(addr: &[u8; 16]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&addr[..4]);
    out
}

/// Wireshark's `win_scale`: -1 unknown, -2 no scaling, else the shift.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scale {
    Unknown,
    Off,
    Shift(u8),
}

#[derive(Clone, Copy, Debug)]
struct Side {
    base: Option<u32>,
    scale: Scale,
    fin: bool,
    seq: SeqState,
    /// Holes in this side's sequence space that the peer's latest ACK reported (absolute).
    holes: Holes,
}

impl Default for Side {
    fn default() -> Self {
        Side {
            base: None,
            scale: Scale::Unknown,
            fin: false,
            seq: SeqState::default(),
            holes: Holes::default(),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Flow {
    sides: [Side; 2],
    last_seen_ns: u64,
    closed: bool,
    tick: u64,
    /// Side of the first segment seen.
    first_side: u8,
    /// Wireshark's `ts_mru_syn`: the most recent SYN without ACK.
    mru_syn_ns: Option<u64>,
    /// Wireshark's `ts_first_rtt` (iRTT).
    first_rtt_ns: Option<u64>,
    handshake: HandshakeTrack,
    teardown: TeardownTrack,
}

impl Flow {
    fn new(now_ns: u64, tick: u64, first_side: u8) -> Self {
        Flow {
            sides: [Side::default(); 2],
            last_seen_ns: now_ns,
            closed: false,
            tick,
            first_side,
            mru_syn_ns: None,
            first_rtt_ns: None,
            handshake: HandshakeTrack::default(),
            teardown: TeardownTrack::default(),
        }
    }

    fn expired(&self, now_ns: u64, linger_ns: u64, idle_ns: u64) -> bool {
        let quiet = now_ns.saturating_sub(self.last_seen_ns);
        (self.closed && quiet >= linger_ns) || quiet >= idle_ns
    }
}

fn ends_of(key: &FlowKey) -> Ends {
    let addr = |a: &[u8; 16], port: u16| -> SocketAddr {
        if key.ip_version == 4 {
            SocketAddr::from(([a[0], a[1], a[2], a[3]], port))
        } else {
            SocketAddr::from((*a, port))
        }
    };
    [addr(&key.lo_addr, key.lo_port), addr(&key.hi_addr, key.hi_port)]
}

/// Tracks TCP flows, bounded by a flow cap (least recently seen evicted) and by forgetting closed flows.
#[derive(Debug)]
pub struct FlowTable {
    flows: FastMap<FlowKey, Flow>,
    order: BTreeMap<u64, FlowKey>,
    next_tick: u64,
    max_flows: usize,
    close_linger_ns: u64,
    idle_ns: u64,
    last_sweep_ns: u64,
    evicted: u64,
    expired: u64,
    last_frame: u64,
    stats: FlowStats,
    /// Reports of handshakes whose flow went away before they ended, until taken.
    abandoned: Vec<HandshakeReport>,
    /// Window scales learnt from tcp_info for connections whose handshake was not seen, by flow.
    known_scales: FastMap<FlowKey, [Scale; 2]>,
}

impl Default for FlowTable {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FLOWS)
    }
}

impl FlowTable {
    /// A table holding at most `max_flows` flows (at least one).
    pub fn new(max_flows: usize) -> Self {
        FlowTable {
            flows: FastMap::default(),
            order: BTreeMap::new(),
            next_tick: 0,
            max_flows: max_flows.max(1),
            close_linger_ns: DEFAULT_CLOSE_LINGER_NS,
            idle_ns: DEFAULT_IDLE_NS,
            last_sweep_ns: 0,
            evicted: 0,
            expired: 0,
            last_frame: 0,
            stats: FlowStats::default(),
            abandoned: Vec::new(),
            known_scales: FastMap::default(),
        }
    }

    /// Records the window scale shifts the kernel negotiated for a connection opened before capture started
    /// (tcp_info's `rcv_wscale` is `local`'s, `snd_wscale` the peer's; `None` when scaling is off), so its
    /// windows print scaled from its first captured segment on. At most `max_flows` are remembered.
    pub fn learn_scaling(&mut self, local: SocketAddr, remote: SocketAddr, shifts: Option<(u8, u8)>) {
        if self.known_scales.len() >= self.max_flows {
            return;
        }
        let end = |a: SocketAddr| match crate::sys::sockets::canonical(a.ip()) {
            IpAddr::V4(v4) => {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&v4.octets());
                (4u8, b, a.port())
            }
            IpAddr::V6(v6) => (6u8, v6.octets(), a.port()),
        };
        let (l, r) = (end(local), end(remote));
        let (local_scale, remote_scale) = match shifts {
            Some((l, r)) => (
                Scale::Shift(l.min(MAX_WINDOW_SHIFT)),
                Scale::Shift(r.min(MAX_WINDOW_SHIFT)),
            ),
            None => (Scale::Off, Scale::Off),
        };
        let (lo, hi, scales) = if (l.1, l.2) <= (r.1, r.2) {
            (l, r, [local_scale, remote_scale])
        } else {
            (r, l, [remote_scale, local_scale])
        };
        let key = FlowKey {
            ip_version: l.0,
            lo_addr: lo.1,
            lo_port: lo.2,
            hi_addr: hi.1,
            hi_port: hi.2,
        };
        self.known_scales.insert(key, scales);
    }

    /// Sets how long a flow is kept after both FINs or an RST and no segment since.
    pub fn with_close_linger_ns(mut self, linger_ns: u64) -> Self {
        self.close_linger_ns = linger_ns;
        self
    }

    /// Sets how long a flow without segments is kept.
    pub fn with_idle_ns(mut self, idle_ns: u64) -> Self {
        self.idle_ns = idle_ns.max(1);
        self
    }

    /// The cap on tracked flows.
    pub fn max_flows(&self) -> usize {
        self.max_flows
    }

    /// Bytes the flow table's own storage takes now: hash table buckets and the recency index, by capacity.
    pub fn memory_bytes(&self) -> usize {
        let entry = std::mem::size_of::<(FlowKey, Flow)>() + 1;
        // A B-tree node holds up to 11 entries and is at least half full.
        let order = self.order.len() * std::mem::size_of::<(u64, FlowKey)>() * 2;
        let scales = self.known_scales.capacity() * (std::mem::size_of::<(FlowKey, [Scale; 2])>() + 1);
        self.flows.capacity() * entry + order + scales
    }

    /// Size of one tracked flow's analysis state in bytes (fixed: no per-flow allocation).
    pub fn flow_state_bytes() -> usize {
        std::mem::size_of::<Flow>()
    }

    /// Counters for the exit summary (flows evicted and expired included).
    pub fn stats(&self) -> FlowStats {
        let mut s = self.stats.clone();
        s.evicted = self.evicted;
        s.expired = self.expired;
        s
    }

    /// Reports of handshakes whose flow expired or was evicted before they ended, oldest first.
    pub fn take_abandoned(&mut self) -> Vec<HandshakeReport> {
        std::mem::take(&mut self.abandoned)
    }

    /// At exit: the handshakes still open (never completed) and those already abandoned, by time.
    pub fn finish(&mut self) -> Vec<HandshakeReport> {
        let mut out = self.take_abandoned();
        for (key, flow) in self.flows.iter_mut() {
            if let Some(r) = flow.handshake.abandon(&ends_of(key)) {
                self.stats.count_handshake(&r);
                out.push(r);
            }
        }
        out.sort_by_key(|r| r.ts_ns);
        out
    }

    /// Number of flows tracked now.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether no flow is tracked.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Flows dropped because the cap was reached.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Closed flows forgotten after their linger time.
    pub fn expired(&self) -> u64 {
        self.expired
    }

    /// Forgets every closed flow whose linger time has passed at `now_ns` (boot-time ns), and every flow idle
    /// for the idle time; returns how many.
    ///
    /// [`FlowTable::observe`] runs this once per linger period and otherwise only checks the least recently
    /// seen flows.
    pub fn expire(&mut self, now_ns: u64) -> usize {
        let (linger, idle) = (self.close_linger_ns, self.idle_ns);
        let gone: Vec<FlowKey> = self
            .flows
            .iter()
            .filter(|(_, f)| f.expired(now_ns, linger, idle))
            .map(|(k, _)| *k)
            .collect();
        for key in &gone {
            self.remove(key);
        }
        self.expired += gone.len() as u64;
        gone.len()
    }

    /// [`FlowTable::observe_frame`] numbering the segment one after the last frame observed.
    pub fn observe(&mut self, rec: &TcpRecord) -> TcpAnalysis {
        self.observe_frame(rec, self.last_frame + 1)
    }

    /// Updates the segment's flow and returns its relative numbers, calculated window and analysis;
    /// `frame` is the segment's 1-based frame number (dup ACKs name the frame they repeat).
    pub fn observe_frame(&mut self, rec: &TcpRecord, frame: u64) -> TcpAnalysis {
        self.last_frame = frame;
        let now = rec.header.ts_ns;
        let (key, fwd) = key_of(rec);
        let rev = 1 - fwd;
        let syn = rec.flags & TCP_SYN != 0;
        let has_ack = rec.flags & TCP_ACK != 0;

        if now.saturating_sub(self.last_sweep_ns) >= self.close_linger_ns {
            self.expire(now);
            self.last_sweep_ns = now;
        } else {
            self.sweep_front(now);
        }
        let mut port_reused = false;
        let mut existing = self.flows.get(&key).copied();
        if existing.is_some_and(|f| f.expired(now, self.close_linger_ns, self.idle_ns)) {
            self.remove(&key);
            self.expired += 1;
            existing = None;
        }
        let tick = self.bump_tick();
        let reused = existing.is_some_and(|f| syn && f.sides[fwd].base.is_some_and(|b| b != rec.seq));
        let mut flow = match existing {
            Some(mut f) if reused && !has_ack => {
                port_reused = true;
                self.order.remove(&f.tick);
                self.abandon(&key, &mut f);
                Flow::new(now, tick, fwd as u8)
            }
            Some(mut f) if reused => {
                port_reused = true;
                self.order.remove(&f.tick);
                f.sides[fwd].base = Some(rec.seq);
                f.sides[0].fin = false;
                f.sides[1].fin = false;
                f.closed = false;
                f
            }
            Some(f) => {
                self.order.remove(&f.tick);
                f
            }
            None => {
                self.make_room();
                let mut f = Flow::new(now, tick, fwd as u8);
                if !syn && let Some(scales) = self.known_scales.remove(&key) {
                    f.sides[0].scale = scales[0];
                    f.sides[1].scale = scales[1];
                }
                f
            }
        };
        flow.tick = tick;
        flow.last_seen_ns = now;

        if flow.sides[fwd].base.is_none() {
            flow.sides[fwd].base = Some(if syn { rec.seq } else { rec.seq.wrapping_sub(1) });
        }
        if has_ack && flow.sides[rev].base.is_none() {
            flow.sides[rev].base = Some(rec.ack.wrapping_sub(1));
        }
        let fwd_base = flow.sides[fwd].base.unwrap_or(0);
        let rev_base = flow.sides[rev].base.unwrap_or(0);

        let raw = u32::from(rec.window);
        let (window, scaling) = if syn {
            (raw, WindowScaling::NoScaling)
        } else {
            match flow.sides[fwd].scale {
                Scale::Shift(s) => (raw << s, WindowScaling::Shift(s)),
                Scale::Off => (raw, WindowScaling::NoScaling),
                Scale::Unknown => (raw, WindowScaling::Unknown),
            }
        };

        if rec.options & OPT_WSCALE != 0 {
            flow.sides[fwd].scale = Scale::Shift(rec.wscale.min(MAX_WINDOW_SHIFT));
        }
        if syn {
            if flow.sides[fwd].scale == Scale::Unknown {
                flow.sides[fwd].scale = Scale::Off;
                flow.sides[rev].scale = Scale::Off;
            } else if has_ack && flow.sides[rev].scale == Scale::Off {
                flow.sides[fwd].scale = Scale::Off;
            }
        }

        let expert = self.analyze(&mut flow, rec, fwd, frame, port_reused);
        let holes = if has_ack && rec.sack_count > 0 {
            let holes = Holes::of(rec.ack, rec.sack_blocks());
            flow.sides[rev].holes = holes;
            holes.relative_to(rev_base)
        } else {
            if has_ack {
                flow.sides[rev].holes = Holes::default();
            }
            Holes::default()
        };
        let fills_hole = flow.sides[fwd]
            .holes
            .filled_by(rec.seq, u32::from(rec.payload_len))
            .map(|h| SackBlock {
                left: h.left.wrapping_sub(fwd_base),
                right: h.right.wrapping_sub(fwd_base),
            });
        let ends = ends_of(&key);
        let handshake_open = flow.handshake.open();
        let handshake = flow.handshake.observe(fwd as u8, rec, &ends);
        let client = flow.handshake.client().unwrap_or(flow.first_side);
        let peer_next = flow.sides[rev].seq.nextseq;
        let teardown = flow
            .teardown
            .observe(fwd as u8, client, rec, peer_next, handshake_open, &ends);
        if let Some(h) = &handshake {
            self.stats.count_handshake(h);
        }
        if let Some(t) = &teardown {
            self.stats.count_teardown(t);
        }

        let mut sack = [SackBlock::default(); MAX_SACK_BLOCKS];
        let blocks = rec.sack_blocks();
        for (out, b) in sack.iter_mut().zip(blocks) {
            *out = SackBlock {
                left: b.left.wrapping_sub(rev_base),
                right: b.right.wrapping_sub(rev_base),
            };
        }

        if rec.flags & TCP_FIN != 0 {
            flow.sides[fwd].fin = true;
        }
        if rec.flags & TCP_RST != 0 || (flow.sides[0].fin && flow.sides[1].fin) {
            flow.closed = true;
        }

        self.flows.insert(key, flow);
        // Removals leave tombstones, and a table whose tombstones run out may double although it holds no more
        // than the cap: give such growth back, so that the memory stays within twice the cap's entries.
        if self.flows.capacity() > 2 * self.max_flows {
            self.flows.shrink_to(self.max_flows);
        }
        self.order.insert(tick, key);

        TcpAnalysis {
            seq: rec.seq.wrapping_sub(fwd_base),
            ack: has_ack.then(|| rec.ack.wrapping_sub(rev_base)),
            window,
            scaling,
            sack,
            sack_count: blocks.len(),
            port_reused,
            expert,
            holes,
            fills_hole,
            handshake,
            teardown,
            frame,
        }
    }

    /// Wireshark's iRTT bookkeeping and expert rules for one segment; counts the flags.
    fn analyze(&mut self, flow: &mut Flow, rec: &TcpRecord, fwd: usize, frame: u64, reused: bool) -> Expert {
        let now = rec.header.ts_ns;
        let (syn, ack) = (rec.flags & TCP_SYN != 0, rec.flags & TCP_ACK != 0);
        if syn && !ack {
            flow.mru_syn_ns = Some(now);
        }
        if ack
            && !syn
            && flow.first_rtt_ns.is_none()
            && let Some(syn_ns) = flow.mru_syn_ns
        {
            flow.first_rtt_ns = Some(now.saturating_sub(syn_ns));
        }
        let rev_shift = match flow.sides[1 - fwd].scale {
            Scale::Unknown => None,
            Scale::Off => Some(0),
            Scale::Shift(s) => Some(s),
        };
        let ctx = Context {
            rev_shift,
            first_rtt_ns: flow.first_rtt_ns,
        };
        let seg = Segment {
            seq: rec.seq,
            ack: rec.ack,
            seglen: u32::from(rec.payload_len),
            flags: rec.flags,
            window: u32::from(rec.window),
            ts_ns: now,
            frame,
        };
        let [s0, s1] = &mut flow.sides;
        let (f, r) = if fwd == 0 { (s0, s1) } else { (s1, s0) };
        let mut e = expert::analyze(&mut f.seq, &mut r.seq, &seg, &ctx);
        if reused {
            e.set(ExpertFlag::PortNumbersReused);
        }
        self.stats.count_flags(&e);
        e
    }

    /// Reports the flow's handshake as never completed if it was still open.
    fn abandon(&mut self, key: &FlowKey, flow: &mut Flow) {
        if let Some(r) = flow.handshake.abandon(&ends_of(key)) {
            self.stats.count_handshake(&r);
            if self.abandoned.len() < self.max_flows {
                self.abandoned.push(r);
            }
        }
    }

    fn bump_tick(&mut self) -> u64 {
        let t = self.next_tick;
        self.next_tick += 1;
        t
    }

    fn remove(&mut self, key: &FlowKey) {
        if let Some(mut f) = self.flows.remove(key) {
            self.order.remove(&f.tick);
            self.abandon(key, &mut f);
        }
    }

    /// Forgets expired closed flows at the least recently seen end.
    fn sweep_front(&mut self, now_ns: u64) {
        while let Some((_, key)) = self.order.first_key_value() {
            let key = *key;
            match self.flows.get(&key) {
                Some(f) if f.expired(now_ns, self.close_linger_ns, self.idle_ns) => {
                    self.remove(&key);
                    self.expired += 1;
                }
                _ => break,
            }
        }
    }

    fn make_room(&mut self) {
        while self.flows.len() >= self.max_flows {
            let Some((_, key)) = self.order.pop_first() else {
                break;
            };
            if let Some(mut f) = self.flows.remove(&key) {
                self.abandon(&key, &mut f);
            }
            self.evicted += 1;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use observer_common::record::{
        OPT_MSS, OPT_SACK, OPT_SACK_PERM, OPT_TIMESTAMP, OPTKIND_MSS, OPTKIND_SACK, OPTKIND_SACK_PERM,
        OPTKIND_TIMESTAMP, OPTKIND_WSCALE, TCP_PSH,
    };

    pub(crate) const CLIENT: [u8; 4] = [10, 0, 0, 1];
    pub(crate) const SERVER: [u8; 4] = [10, 0, 0, 2];

    /// A segment from `src:sport` to `dst:dport` at `ts_ns`.
    pub(crate) fn seg(
        src: ([u8; 4], u16),
        dst: ([u8; 4], u16),
        flags: u8,
        seq: u32,
        ack: u32,
        window: u16,
        payload_len: u16,
    ) -> TcpRecord {
        let mut r = TcpRecord::default();
        r.header.kind = observer_common::record::KIND_TCP;
        r.ip_version = 4;
        r.saddr[..4].copy_from_slice(&src.0);
        r.daddr[..4].copy_from_slice(&dst.0);
        r.sport = src.1;
        r.dport = dst.1;
        r.flags = flags;
        r.seq = seq;
        r.ack = ack;
        r.window = window;
        r.payload_len = payload_len;
        r.header_len = 20;
        r
    }

    /// Adds Linux's SYN options: MSS, SACK_PERM, TS, NOP, WS.
    pub(crate) fn linux_syn_options(r: &mut TcpRecord, mss: u16, tsval: u32, tsecr: u32, ws: u8) {
        r.options |= OPT_MSS | OPT_SACK_PERM | OPT_TIMESTAMP | OPT_WSCALE;
        r.mss = mss;
        r.tsval = tsval;
        r.tsecr = tsecr;
        r.wscale = ws;
        r.option_kinds[..4].copy_from_slice(&[OPTKIND_MSS, OPTKIND_SACK_PERM, OPTKIND_TIMESTAMP, OPTKIND_WSCALE]);
        r.option_count = 4;
        r.header_len = 40;
    }

    fn with_ws(mut r: TcpRecord, ws: u8) -> TcpRecord {
        r.options |= OPT_WSCALE;
        r.wscale = ws;
        r.option_kinds[r.option_count as usize] = OPTKIND_WSCALE;
        r.option_count += 1;
        r
    }

    fn with_sack(mut r: TcpRecord, blocks: &[(u32, u32)]) -> TcpRecord {
        r.options |= OPT_SACK;
        for (i, (l, rt)) in blocks.iter().enumerate() {
            r.sack[i] = SackBlock { left: *l, right: *rt };
        }
        r.sack_count = blocks.len() as u8;
        r.option_kinds[r.option_count as usize] = OPTKIND_SACK;
        r.option_count += 1;
        r
    }

    fn at(mut r: TcpRecord, ts_ns: u64) -> TcpRecord {
        r.header.ts_ns = ts_ns;
        r
    }

    const C: ([u8; 4], u16) = (CLIENT, 40000);
    const S: ([u8; 4], u16) = (SERVER, 80);
    const ACK: u8 = TCP_ACK;
    const SYN: u8 = TCP_SYN;

    fn nums(a: &TcpAnalysis) -> (u32, Option<u32>, u32) {
        (a.seq, a.ack, a.window)
    }

    /// Parses a scenario line `<µs> <c|s> <flags|-> <seq> <ack> <win> <len> [mss=N ws=N sackperm ts=A,B sack=L-R,..]`.
    fn scenario_segment(line: &str) -> TcpRecord {
        let w: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| w[i].parse::<u32>().unwrap();
        let flags = w[2].chars().fold(0u8, |f, c| {
            f | match c {
                'F' => TCP_FIN,
                'S' => SYN,
                'R' => TCP_RST,
                'P' => TCP_PSH,
                'A' => ACK,
                _ => 0,
            }
        });
        let (src, dst) = if w[1] == "c" { (SC, SS) } else { (SS, SC) };
        let mut r = seg(src, dst, flags, num(3), num(4), num(5) as u16, num(6) as u16);
        r.header.ts_ns = w[0].parse::<u64>().unwrap() * 1000;
        for opt in &w[7..] {
            let (k, v) = opt.split_once('=').unwrap_or((opt, ""));
            let kind = match k {
                "mss" => {
                    r.options |= OPT_MSS;
                    r.mss = v.parse().unwrap();
                    OPTKIND_MSS
                }
                "ws" => {
                    r.options |= OPT_WSCALE;
                    r.wscale = v.parse().unwrap();
                    OPTKIND_WSCALE
                }
                "sackperm" => {
                    r.options |= OPT_SACK_PERM;
                    OPTKIND_SACK_PERM
                }
                "ts" => {
                    let (a, b) = v.split_once(',').unwrap();
                    r.options |= OPT_TIMESTAMP;
                    (r.tsval, r.tsecr) = (a.parse().unwrap(), b.parse().unwrap());
                    OPTKIND_TIMESTAMP
                }
                "sack" => {
                    r.options |= OPT_SACK;
                    for (i, b) in v.split(',').enumerate() {
                        let (l, rt) = b.split_once('-').unwrap();
                        r.sack[i] = SackBlock {
                            left: l.parse().unwrap(),
                            right: rt.parse().unwrap(),
                        };
                        r.sack_count += 1;
                    }
                    OPTKIND_SACK
                }
                other => panic!("unknown option {other}"),
            };
            r.option_kinds[r.option_count as usize] = kind;
            r.option_count += 1;
        }
        r
    }

    const SC: ([u8; 4], u16) = (CLIENT, 40000);
    const SS: ([u8; 4], u16) = (SERVER, 49999);

    /// Runs a scenario through the table and returns (segments, analyses).
    pub(crate) fn run_scenario(text: &str) -> (Vec<TcpRecord>, Vec<TcpAnalysis>) {
        let mut t = FlowTable::default();
        text.lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter(|l| !l.is_empty())
            .map(|l| {
                let r = scenario_segment(l);
                let a = t.observe(&r);
                (r, a)
            })
            .unzip()
    }

    #[test]
    fn full_connection_matches_tshark() {
        // tshark 4.0 on the same segments: Seq/Ack/Win as asserted.
        let (ci, si) = (1_000_000u32, 3_000_000_000u32);
        let mut t = FlowTable::default();
        let mut syn = seg(C, S, SYN, ci, 0, 64240, 0);
        linux_syn_options(&mut syn, 1460, 111, 0, 8);
        let mut synack = seg(S, C, SYN | ACK, si, ci + 1, 65160, 0);
        linux_syn_options(&mut synack, 1460, 222, 111, 8);

        let a = t.observe(&syn);
        assert_eq!(nums(&a), (0, None, 64240));
        assert_eq!(a.scaling, WindowScaling::NoScaling);
        assert_eq!(nums(&t.observe(&synack)), (0, Some(1), 65160));
        let a = t.observe(&seg(C, S, ACK, ci + 1, si + 1, 4106, 0));
        assert_eq!(nums(&a), (1, Some(1), 1_051_136));
        assert_eq!(a.scaling, WindowScaling::Shift(8));
        let a = t.observe(&seg(C, S, TCP_PSH | ACK, ci + 1, si + 1, 4106, 100));
        assert_eq!(nums(&a), (1, Some(1), 1_051_136));
        let a = t.observe(&with_sack(
            seg(S, C, ACK, si + 1, ci + 101, 509, 0),
            &[(ci + 201, ci + 301)],
        ));
        assert_eq!(nums(&a), (1, Some(101), 130_304));
        assert_eq!(a.sack_blocks(), &[SackBlock { left: 201, right: 301 }]);
        let a = t.observe(&seg(S, C, TCP_PSH | ACK, si + 1, ci + 101, 509, 50));
        assert_eq!(nums(&a), (1, Some(101), 130_304));
        let a = t.observe(&seg(C, S, TCP_FIN | TCP_PSH | ACK, ci + 101, si + 51, 4106, 10));
        assert_eq!(nums(&a), (101, Some(51), 1_051_136));
        let a = t.observe(&seg(S, C, TCP_FIN | ACK, si + 51, ci + 112, 509, 0));
        assert_eq!(nums(&a), (51, Some(112), 130_304));
        let a = t.observe(&seg(C, S, ACK, ci + 112, si + 52, 4106, 0));
        assert_eq!(nums(&a), (112, Some(52), 1_051_136));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn scales_learnt_from_tcp_info_apply_to_a_connection_whose_handshake_was_not_seen() {
        let mut t = FlowTable::default();
        let addr = |(ip, port): ([u8; 4], u16)| SocketAddr::from((ip, port));
        // The server's tcp_info: it announced shift 7 (rcv_wscale), the client shift 8 (snd_wscale).
        t.learn_scaling(addr(S), addr(C), Some((7, 8)));
        let from_client = t.observe(&seg(C, S, ACK, 1000, 2000, 4106, 0));
        assert_eq!(
            (from_client.window, from_client.scaling),
            (4106 << 8, WindowScaling::Shift(8))
        );
        let from_server = t.observe(&seg(S, C, ACK, 2000, 1000, 100, 0));
        assert_eq!(
            (from_server.window, from_server.scaling),
            (100 << 7, WindowScaling::Shift(7))
        );
        let mut off = FlowTable::default();
        off.learn_scaling(addr(S), addr(C), None);
        assert_eq!(
            off.observe(&seg(C, S, ACK, 1, 1, 4106, 0)).scaling,
            WindowScaling::NoScaling
        );
    }

    #[test]
    fn syn_without_ws_means_no_scaling_both_ways() {
        let mut t = FlowTable::default();
        let mut syn = seg(C, S, SYN, 100, 0, 64240, 0);
        syn.options = OPT_MSS;
        t.observe(&syn);
        t.observe(&with_ws(seg(S, C, SYN | ACK, 900, 101, 65160, 0), 7));
        let a = t.observe(&seg(C, S, ACK, 101, 901, 500, 0));
        assert_eq!((a.window, a.scaling), (500, WindowScaling::NoScaling));
        let a = t.observe(&seg(S, C, ACK, 901, 101, 500, 0));
        assert_eq!((a.window, a.scaling), (500, WindowScaling::NoScaling));
    }

    #[test]
    fn synack_without_ws_means_no_scaling_both_ways() {
        let mut t = FlowTable::default();
        t.observe(&with_ws(seg(C, S, SYN, 100, 0, 64240, 0), 7));
        t.observe(&seg(S, C, SYN | ACK, 900, 101, 65160, 0));
        let a = t.observe(&seg(C, S, ACK, 101, 901, 500, 0));
        assert_eq!((a.window, a.scaling), (500, WindowScaling::NoScaling));
        let a = t.observe(&seg(S, C, ACK, 901, 101, 500, 0));
        assert_eq!((a.window, a.scaling), (500, WindowScaling::NoScaling));
    }

    #[test]
    fn only_one_syn_seen_scales_that_sender_only() {
        // tshark: SYN with WS=128 seen, SYN-ACK missed: client windows scaled, server's unknown.
        let mut t = FlowTable::default();
        t.observe(&with_ws(seg(C, S, SYN, 100, 0, 64240, 0), 7));
        let a = t.observe(&seg(C, S, ACK, 101, 901, 500, 0));
        assert_eq!((a.window, a.scaling), (64000, WindowScaling::Shift(7)));
        let a = t.observe(&seg(S, C, ACK, 901, 101, 500, 0));
        assert_eq!((a.window, a.scaling), (500, WindowScaling::Unknown));
    }

    #[test]
    fn shift_above_14_counts_as_14() {
        let mut t = FlowTable::default();
        t.observe(&with_ws(seg(C, S, SYN, 100, 0, 100, 0), 15));
        t.observe(&with_ws(seg(S, C, SYN | ACK, 900, 101, 100, 0), 15));
        let a = t.observe(&seg(C, S, ACK, 101, 901, 1, 0));
        assert_eq!((a.window, a.scaling), (16384, WindowScaling::Shift(14)));
    }

    #[test]
    fn mid_stream_capture_starts_at_one_with_unknown_scale() {
        // tshark: first seen segment Seq=1 Ack=1; SACK edges relative to the ack-derived base.
        let mut t = FlowTable::default();
        let a = t.observe(&seg(S, C, ACK, 5901, 7101, 500, 0));
        assert_eq!(nums(&a), (1, Some(1), 500));
        assert_eq!(a.scaling, WindowScaling::Unknown);
        let a = t.observe(&seg(C, S, TCP_PSH | ACK, 7101, 5901, 500, 5));
        assert_eq!(nums(&a), (1, Some(1), 500));
        let a = t.observe(&with_sack(
            seg(S, C, ACK, 5901, 7106, 500, 0),
            &[(7200, 7300), (7400, 7500)],
        ));
        assert_eq!(a.ack, Some(6));
        let edges: Vec<(u32, u32)> = a.sack_blocks().iter().map(|b| (b.left, b.right)).collect();
        assert_eq!(edges, vec![(100, 200), (300, 400)]);
        let a = t.observe(&seg(C, S, ACK, 7000, 5901, 500, 0));
        assert_eq!(a.seq, 4_294_967_196, "lower seq wraps like tshark's");
    }

    #[test]
    fn rst_without_ack_omits_ack() {
        let mut t = FlowTable::default();
        let a = t.observe(&seg(C, S, TCP_RST, 5, 0, 0, 0));
        assert_eq!(nums(&a), (1, None, 0));
    }

    #[test]
    fn new_syn_with_other_isn_starts_a_fresh_flow() {
        let mut t = FlowTable::default();
        t.observe(&with_ws(seg(C, S, SYN, 100, 0, 64240, 0), 7));
        t.observe(&with_ws(seg(S, C, SYN | ACK, 900, 101, 65160, 0), 7));
        t.observe(&seg(C, S, ACK, 101, 901, 500, 0));
        let a = t.observe(&seg(C, S, SYN, 50_000, 0, 64240, 0));
        assert!(a.port_reused);
        assert_eq!(a.seq, 0);
        let a = t.observe(&seg(S, C, SYN | ACK, 70_000, 50_001, 65160, 0));
        assert!(!a.port_reused);
        assert_eq!(nums(&a), (0, Some(1), 65160));
        let a = t.observe(&seg(C, S, ACK, 50_001, 70_001, 500, 0));
        assert_eq!((a.seq, a.ack, a.scaling), (1, Some(1), WindowScaling::NoScaling));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn retransmitted_syn_keeps_the_flow() {
        let mut t = FlowTable::default();
        t.observe(&seg(C, S, SYN, 100, 0, 64240, 0));
        let a = t.observe(&seg(C, S, SYN, 100, 0, 64240, 0));
        assert!(!a.port_reused);
        assert_eq!(a.seq, 0);
    }

    #[test]
    fn synack_with_other_isn_rebases_its_sender_only() {
        // tshark 4.0: Seq=0 Ack=101 on the new SYN-ACK; the client's base stays.
        let mut t = FlowTable::default();
        t.observe(&with_ws(seg(C, S, SYN, 100, 0, 64240, 0), 2));
        t.observe(&with_ws(seg(S, C, SYN | ACK, 900, 101, 65160, 0), 2));
        t.observe(&seg(C, S, ACK, 101, 901, 10, 0));
        let a = t.observe(&with_ws(seg(S, C, SYN | ACK, 1900, 201, 65160, 0), 3));
        assert!(a.port_reused);
        assert_eq!(nums(&a), (0, Some(101), 65160));
        assert_eq!(nums(&t.observe(&seg(C, S, ACK, 101, 1901, 10, 0))), (1, Some(1), 40));
        assert_eq!(nums(&t.observe(&seg(S, C, ACK, 1901, 101, 10, 0))), (1, Some(1), 80));
    }

    #[test]
    fn synack_after_mid_stream_segment_rebases_its_sender() {
        // tshark 4.0: the client's base came from seq − 1, so the SYN-ACK shows Ack=2.
        let mut t = FlowTable::default();
        t.observe(&seg(C, S, ACK, 1000, 5000, 100, 0));
        let a = t.observe(&seg(S, C, SYN | ACK, 9000, 1001, 64240, 0));
        assert!(a.port_reused);
        assert_eq!(nums(&a), (0, Some(2), 64240));
        assert_eq!(nums(&t.observe(&seg(C, S, ACK, 1001, 9001, 100, 0))), (2, Some(1), 100));
    }

    #[test]
    fn syn_after_mid_stream_segment_starts_a_fresh_flow() {
        let mut t = FlowTable::default();
        t.observe(&seg(C, S, ACK, 1000, 5000, 100, 0));
        let a = t.observe(&seg(C, S, SYN, 3000, 0, 64240, 0));
        assert!(a.port_reused);
        assert_eq!(a.seq, 0);
    }

    #[test]
    fn both_directions_share_one_flow_and_distinct_tuples_do_not() {
        let mut t = FlowTable::default();
        t.observe(&seg(C, S, SYN, 1, 0, 1, 0));
        t.observe(&seg(S, C, SYN | ACK, 2, 2, 1, 0));
        assert_eq!(t.len(), 1);
        t.observe(&seg((CLIENT, 40001), S, SYN, 1, 0, 1, 0));
        assert_eq!(t.len(), 2);
        let mut v6 = seg(C, S, SYN, 1, 0, 1, 0);
        v6.ip_version = 6;
        t.observe(&v6);
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn cap_evicts_least_recently_seen() {
        let mut t = FlowTable::new(3);
        for port in 1..=3u16 {
            t.observe(&seg((CLIENT, port), S, SYN, 1000, 0, 1, 0));
        }
        t.observe(&seg((CLIENT, 1), S, ACK, 1001, 77, 1, 0));
        t.observe(&seg((CLIENT, 4), S, SYN, 1000, 0, 1, 0));
        assert_eq!((t.len(), t.evicted()), (3, 1));
        // Port 2 was the least recently seen: it comes back as a mid-stream flow.
        let a = t.observe(&seg((CLIENT, 2), S, ACK, 1001, 77, 1, 0));
        assert_eq!(a.seq, 1);
        assert_eq!(t.evicted(), 2);
        // Port 1 was kept: its SYN base still holds.
        let a = t.observe(&seg((CLIENT, 1), S, ACK, 1101, 77, 1, 0));
        assert_eq!(a.seq, 101);
    }

    #[test]
    fn closed_flows_are_forgotten_after_the_linger() {
        let sec = 1_000_000_000u64;
        let mut t = FlowTable::new(16).with_close_linger_ns(5 * sec);
        t.observe(&at(seg(C, S, SYN, 100, 0, 1, 0), sec));
        t.observe(&at(seg(C, S, TCP_FIN | ACK, 101, 900, 1, 0), 2 * sec));
        t.observe(&at(seg(S, C, TCP_FIN | ACK, 900, 102, 1, 0), 3 * sec));
        let a = t.observe(&at(seg(C, S, ACK, 102, 901, 1, 0), 4 * sec));
        assert_eq!(a.seq, 2);
        assert_eq!(t.expire(8 * sec), 0, "the linger counts from the last segment seen");
        assert_eq!(t.expire(9 * sec), 1);
        assert!(t.is_empty());

        t.observe(&at(seg(C, S, SYN, 100, 0, 1, 0), 10 * sec));
        t.observe(&at(seg(S, C, TCP_RST | ACK, 0, 101, 0, 0), 11 * sec));
        let a = t.observe(&at(seg(C, S, ACK, 500, 1, 1, 0), 17 * sec));
        assert_eq!(a.seq, 1, "forgotten lazily: the late segment starts a new flow");
        assert_eq!(t.expired(), 2);
    }

    #[test]
    fn ws_option_on_a_later_segment_updates_the_shift() {
        // tshark 4.0 applies a WS option wherever it appears.
        let mut t = FlowTable::default();
        t.observe(&with_ws(seg(C, S, SYN, 100, 0, 100, 0), 2));
        t.observe(&with_ws(seg(S, C, SYN | ACK, 900, 101, 100, 0), 2));
        let a = t.observe(&with_ws(seg(C, S, ACK, 101, 901, 1, 0), 5));
        assert_eq!(a.window, 4);
        let a = t.observe(&seg(C, S, ACK, 101, 901, 1, 0));
        assert_eq!(a.window, 32);
    }
}

#[cfg(test)]
mod analysis_tests {
    use super::tests::run_scenario;
    use super::timeline::{HandshakeOutcome, Role, StepKind, TeardownKind};
    use super::*;

    #[test]
    fn sack_holes_and_the_retransmission_that_fills_one() {
        let (_, a) = run_scenario(include_str!("testdata/expert_bulk.txt"));
        // Frame 10: Ack=301 SLE=401 SRE=501 leaves 301-401 missing; frame 13 resends it.
        let rel = |l, r| SackBlock { left: l, right: r };
        assert_eq!(a[9].holes.ranges(), [rel(301, 401)]);
        assert_eq!(a[12].fills_hole, Some(rel(301, 401)));
        assert_eq!(a[13].holes.ranges(), [], "the cumulative ACK closes it");
        assert_eq!(a[14].fills_hole, None);
    }

    #[test]
    fn handshake_timeline_with_retransmitted_syn_and_synack() {
        let (_, a) = run_scenario(include_str!("testdata/expert_loss.txt"));
        let h = a[4].handshake.expect("frame 5 completes the handshake");
        assert_eq!(h.outcome, HandshakeOutcome::Complete);
        assert_eq!((h.syn_retransmissions, h.synack_retransmissions), (1, 1));
        // Most recent SYN at 1.000 s, last SYN-ACK at 2.002 s, ACK at 2.003 s.
        assert_eq!(h.syn_to_synack_ns(), Some(1_002_000_000));
        assert_eq!(h.synack_to_ack_ns(), Some(1_000_000));
        assert_eq!(h.irtt_ns(), Some(1_003_000_000));
        let agreed = h.agreed().unwrap();
        assert_eq!(
            (agreed.mss_to_server, agreed.wscale, agreed.sack),
            (1460, Some((2, 0)), false)
        );
        assert_eq!(a.iter().filter(|x| x.handshake.is_some()).count(), 1);
        let t = a[24].teardown.expect("the RST ends it");
        assert_eq!((t.kind, t.steps().len()), (TeardownKind::Reset, 1));
        assert_eq!(t.steps()[0].from, Role::Server);
    }

    #[test]
    fn teardown_with_half_close_data() {
        let (_, a) = run_scenario(
            "0 c S 1000 0 100 0\n10 s SA 5000 1001 100 0\n20 c A 1001 5001 100 0\n\
             1000 c FA 1001 5001 100 0\n1100 s PA 5001 1002 100 300\n1200 c A 1002 5201 100 0\n\
             1300 s FA 5301 1002 100 0\n1400 c A 1002 5302 100 0\n",
        );
        assert!(a[..7].iter().all(|x| x.teardown.is_none()));
        let t = a[7].teardown.expect("the last ACK completes it");
        assert_eq!((t.kind, t.active_closer), (TeardownKind::Fin, Some(Role::Client)));
        let steps: Vec<(StepKind, Role, u64)> = t.steps().iter().map(|s| (s.kind, s.from, s.ts_ns)).collect();
        assert_eq!(
            steps,
            [
                (StepKind::Fin, Role::Client, 1_000_000),
                (StepKind::Ack, Role::Server, 1_100_000),
                (StepKind::Fin, Role::Server, 1_300_000),
                (StepKind::Ack, Role::Client, 1_400_000),
            ]
        );
        assert_eq!((t.half_close_bytes, t.partial_acks), (300, 1));
        assert_eq!(t.duration_ns(), 400_000);
    }

    #[test]
    fn reset_handshake_and_abandoned_ones_are_reported_once() {
        let (_, a) = run_scenario("0 c S 1000 0 100 0\n50 s RA 0 1001 0 0\n");
        let h = a[1].handshake.unwrap();
        assert_eq!(h.outcome, HandshakeOutcome::Reset { by_server: true });
        assert!(a[1].teardown.is_none(), "an RST in the handshake is no teardown");

        let mut t = FlowTable::new(1);
        t.observe(&tests::seg(
            (tests::CLIENT, 1),
            (tests::SERVER, 80),
            TCP_SYN,
            7,
            0,
            100,
            0,
        ));
        t.observe(&tests::seg(
            (tests::CLIENT, 2),
            (tests::SERVER, 80),
            TCP_SYN,
            7,
            0,
            100,
            0,
        ));
        let gone = t.take_abandoned();
        assert_eq!(gone.len(), 1);
        assert_eq!(
            (gone[0].outcome, gone[0].client.port()),
            (HandshakeOutcome::Incomplete, 1)
        );
        let open = t.finish();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].client.port(), 2);
        assert!(t.finish().is_empty(), "reported once");
        let s = t.stats();
        assert_eq!((s.handshakes_incomplete, s.evicted), (2, 1));
    }

    #[test]
    fn idle_flows_expire() {
        let sec = 1_000_000_000u64;
        let mut t = FlowTable::new(16).with_idle_ns(30 * sec);
        let mut r = tests::seg((tests::CLIENT, 1), (tests::SERVER, 80), TCP_ACK, 7, 9, 100, 0);
        r.header.ts_ns = sec;
        t.observe(&r);
        assert_eq!(t.expire(30 * sec), 0);
        assert_eq!(t.expire(31 * sec), 1);
        assert_eq!(t.expired(), 1);
    }

    /// A million short connections (SYN, SYN-ACK, ACK, FIN/ACK, ACK, FIN/ACK, ACK) through a table capped at
    /// 10,000 flows, then 20,000 half-open ones: the table never exceeds the cap, every flow is accounted for
    /// as expired or evicted, and its storage stays under 10,000 × 2 × (entry size + index entry).
    #[test]
    fn a_million_connections_stay_under_the_cap() {
        const CAP: usize = 10_000;
        const CONNS: u32 = 1_000_000;
        let linger = 50_000_000u64;
        let mut t = FlowTable::new(CAP).with_close_linger_ns(linger);
        let mut r = tests::seg((tests::CLIENT, 0), (tests::SERVER, 80), 0, 0, 0, 100, 0);
        let bound = CAP * 2 * (std::mem::size_of::<(FlowKey, Flow)>() + 1 + 2 * std::mem::size_of::<(u64, FlowKey)>());
        let mut max_len = 0;
        let mut max_mem = 0;
        for i in 0..CONNS {
            let start = u64::from(i) * 10_000;
            let (c, s) = ([10, 1, (i >> 16) as u8, (i >> 8) as u8], (i & 0xff) as u16 + 1024);
            let steps: [(bool, u8, u32, u32); 7] = [
                (true, TCP_SYN, 100, 0),
                (false, TCP_SYN | TCP_ACK, 900, 101),
                (true, TCP_ACK, 101, 901),
                (true, TCP_FIN | TCP_ACK, 101, 901),
                (false, TCP_ACK, 901, 102),
                (false, TCP_FIN | TCP_ACK, 901, 102),
                (true, TCP_ACK, 102, 902),
            ];
            for (n, (from_client, flags, seq, ack)) in steps.into_iter().enumerate() {
                r.header.ts_ns = start + n as u64 * 1000;
                let (src, dst) = if from_client {
                    ((c, s), (tests::SERVER, 80))
                } else {
                    ((tests::SERVER, 80), (c, s))
                };
                r.saddr[..4].copy_from_slice(&src.0);
                r.daddr[..4].copy_from_slice(&dst.0);
                (r.sport, r.dport, r.flags, r.seq, r.ack) = (src.1, dst.1, flags, seq, ack);
                t.observe(&r);
            }
            max_len = max_len.max(t.len());
            if i % 4096 == 0 {
                max_mem = max_mem.max(t.memory_bytes());
            }
        }
        let end = u64::from(CONNS) * 10_000;
        t.expire(end + linger);
        let s = t.stats();
        assert_eq!(
            (s.opened, s.closed_fin, s.expired, s.evicted),
            (1_000_000, 1_000_000, 1_000_000, 0)
        );
        assert!(t.is_empty());

        for i in 0..2 * CAP as u32 {
            r.header.ts_ns = end + linger + u64::from(i);
            r.saddr[..4].copy_from_slice(&[10, 2, (i >> 8) as u8, i as u8]);
            r.daddr[..4].copy_from_slice(&tests::SERVER);
            (r.sport, r.dport, r.flags, r.seq, r.ack) = (4000, 80, TCP_SYN, 1, 0);
            t.observe(&r);
            max_len = max_len.max(t.len());
            max_mem = max_mem.max(t.memory_bytes());
        }
        let abandoned = t.take_abandoned();
        assert_eq!((t.len(), t.evicted(), abandoned.len()), (CAP, CAP as u64, CAP));
        eprintln!(
            "a million connections: at most {max_len} flows, {max_mem} bytes (bound {bound}), {} bytes of \
             state per flow, {} evicted",
            FlowTable::flow_state_bytes(),
            t.evicted()
        );
        assert!(max_len <= CAP, "{max_len} flows tracked");
        assert!(max_mem <= bound, "{max_mem} bytes > {bound}");
        assert_eq!(t.stats().handshakes_incomplete, CAP as u64);
    }
}
use crate::model::FastMap;
