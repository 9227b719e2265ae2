//! Linking the wire to the kernel's sockets: each segment gets the socket it belongs to, the state changes it
//! caused and, at a listener, the queues it met and whether the kernel dropped it.
//!
//! Records arrive from two rings (packets, socket events), each in its own order; the queue keeps them in
//! kernel-time order. Every item waits [`Linker::hold_ns`] of kernel time so that the effects
//! of a segment are known before its line is printed: an ingress segment is processed by the stack right after
//! TC saw it, so the state changes it causes follow it; the state change behind an egress segment (connect,
//! close) precedes it. A SYN without a SYN-ACK within the hold was dropped; which counter rose tells why.

use std::{collections::VecDeque, net::SocketAddr};

use observer_common::{
    ArpRecord, TcpRecord,
    record::{DIR_EGRESS, Snap, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    sock::SockRecord,
};
use serde::Serialize;

use crate::model::FastMap;
use crate::{
    model::events::{tcp_dst, tcp_src},
    sys::sockets::{Socket, TcpState, canonical, listener_for, process::Owner, tcpext::TcpExt},
    sys::sockprogs::{SockEvent, SockEventKind},
};

/// A captured packet's header bytes, passed through unchanged (present in `--write` mode only).
pub type Bytes = Option<Box<Snap>>;

/// Default time an item waits for its consequences before it is printed, in nanoseconds.
pub const DEFAULT_HOLD_NS: u64 = 100_000_000;
/// Cap on tracked connections and handshakes; the oldest handshakes go first.
pub const MAX_TRACKED: usize = 1 << 20;
/// How far apart a segment and the state change it causes or follows may be, in nanoseconds.
const CLAIM_NS: u64 = 20_000_000;
/// How often a connection whose owner is unknown is looked up again, in nanoseconds.
const OWNER_RETRY_NS: u64 = 1_000_000_000;

/// A connection as its local socket sees it (addresses canonical: IPv4-mapped shown as IPv4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Tuple {
    /// Local address and port.
    pub local: SocketAddr,
    /// Remote address and port.
    pub remote: SocketAddr,
}

impl Tuple {
    /// A tuple from two endpoints, canonicalizing mapped addresses.
    pub fn new(local: SocketAddr, remote: SocketAddr) -> Self {
        let c = |a: SocketAddr| SocketAddr::new(canonical(a.ip()), a.port());
        Tuple {
            local: c(local),
            remote: c(remote),
        }
    }

    /// The local socket's tuple of a captured segment: the destination is local on ingress, the source on egress.
    pub fn of_segment(rec: &TcpRecord) -> Self {
        let src = SocketAddr::new(tcp_src(rec), rec.sport);
        let dst = SocketAddr::new(tcp_dst(rec), rec.dport);
        if rec.header.direction == DIR_EGRESS {
            Tuple::new(src, dst)
        } else {
            Tuple::new(dst, src)
        }
    }

    /// The tuple of a socket-table row.
    pub fn of_socket(s: &Socket) -> Self {
        Tuple::new(s.local, s.remote)
    }
}

/// A state change the kernel reported (tp_btf `inet_sock_set_state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateChange {
    /// Boot-time ns.
    pub ts_ns: u64,
    /// The socket's tuple.
    pub tuple: Tuple,
    /// State before.
    pub old: TcpState,
    /// State after.
    pub new: TcpState,
}

/// Another kernel event on a socket: a retransmission, a reset, a full receive queue, a drop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelNote {
    /// Boot-time ns.
    pub ts_ns: u64,
    /// The socket's tuple, when known.
    pub tuple: Option<Tuple>,
    /// What happened.
    pub kind: NoteKind,
    /// The socket's state at the event, when the kernel gave it (not for SYN-ACK retransmits and full receive
    /// queues, which happen in one state).
    pub state: Option<TcpState>,
    /// The kernel's reason name, for a reset sent or a drop (`NOT_SPECIFIED`, `TCP_INVALID_SEQUENCE` ...).
    pub reason: Option<String>,
    /// The listener's queues at that moment, for events on a listener.
    pub listener: Option<ListenerView>,
}

/// The kind of a [`KernelNote`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoteKind {
    /// A listener's request sock sent its SYN-ACK again.
    SynackRetransmit,
    /// A segment was retransmitted.
    Retransmit,
    /// The socket sent a RST.
    ResetSent,
    /// The socket received a RST.
    ResetReceived,
    /// The receive queue was full and a segment dropped.
    RcvqFull,
    /// The kernel dropped a segment for a reason.
    Drop,
}

/// What the linker is fed, in ring-buffer order.
#[derive(Clone, Debug)]
pub enum Input {
    /// A captured TCP segment, with its header bytes in `--write` mode.
    Segment(TcpRecord, Bytes),
    /// A captured ARP packet, with its bytes in `--write` mode.
    Arp(ArpRecord, Bytes),
    /// A socket changed state.
    State(StateChange),
    /// Another kernel event.
    Note(KernelNote),
    /// A socket was destroyed.
    Destroyed(Tuple),
}

impl Input {
    /// The linker's input for a socket event from the kernel (None for an event it has no use for, or a
    /// state outside the kernel's numbering). `reason_name` names a reset or drop reason number.
    pub fn from_sock(r: &SockRecord, reason_name: impl Fn(u8, u32) -> String) -> Option<Input> {
        let e = SockEvent::from_record(r)?;
        let tuple = e.local.zip(e.remote).map(|(l, r)| Tuple::new(l, r));
        let listener = e.queues.map(|q| ListenerView {
            addr: tuple.map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |t| t.local),
            synq: q.syn_queue,
            accept: q.accept_queue,
            limit: Some(q.accept_limit),
        });
        let reason = || reason_name(r.event, r.reason);
        let (kind, state, reason) = match e.kind {
            SockEventKind::State => {
                return Some(Input::State(StateChange {
                    ts_ns: e.ts_ns,
                    tuple: tuple?,
                    old: e.old_state?,
                    new: e.state?,
                }));
            }
            SockEventKind::Destroy => return Some(Input::Destroyed(tuple?)),
            SockEventKind::RetransmitSynack => (NoteKind::SynackRetransmit, None, None),
            SockEventKind::RetransmitSkb => (NoteKind::Retransmit, e.state, None),
            SockEventKind::SendReset => (NoteKind::ResetSent, e.state, Some(reason())),
            SockEventKind::ReceiveReset => (NoteKind::ResetReceived, e.state, None),
            SockEventKind::RcvqFull => (NoteKind::RcvqFull, None, None),
            SockEventKind::Drop => {
                let reason = reason();
                // QUEUE_PURGE is a closing socket freeing what it had queued, not a segment lost on its way.
                if reason == "QUEUE_PURGE" {
                    return None;
                }
                (NoteKind::Drop, e.state, Some(reason))
            }
        };
        Some(Input::Note(KernelNote {
            ts_ns: e.ts_ns,
            tuple,
            kind,
            state,
            reason,
            listener,
        }))
    }
}

/// A listener and its queues (fields in the order of their names, see [`SocketLink`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ListenerView {
    /// Connections waiting for accept().
    pub accept: u32,
    /// The listening address.
    pub addr: SocketAddr,
    /// The accept queue limit, when known.
    pub limit: Option<u32>,
    /// Half-open connections (request socks in SYN_RECV).
    pub synq: u32,
}

/// Why the kernel dropped a segment at a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// The accept queue was full (TcpExt ListenOverflows).
    AcceptQueueFull,
    /// The SYN queue was full and syncookies off (TcpExt TCPReqQFullDrop).
    SynQueueFull,
    /// Another listener drop (TcpExt ListenDrops only).
    ListenDrop,
    /// Not answered and no listener counter rose (a firewall, a checksum, another host).
    NoAnswer,
}

impl DropReason {
    /// The text after `DROPPED:`.
    pub fn text(self) -> &'static str {
        match self {
            DropReason::AcceptQueueFull => "accept queue full (ListenOverflows +1)",
            DropReason::SynQueueFull => "SYN queue full (TCPReqQFullDrop +1)",
            DropReason::ListenDrop => "listener drop (ListenDrops +1)",
            DropReason::NoAnswer => "no answer, no listener counter rose",
        }
    }
}

/// What the kernel did with a segment sent to a listener or to a half-open connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "fate", content = "reason")]
pub enum Fate {
    /// Answered (a SYN-ACK left, or the connection was created).
    Accepted,
    /// Answered with a syncookie (TcpExt SyncookiesSent rose).
    Syncookie,
    /// Dropped.
    Dropped(DropReason),
}

/// The kernel side of one segment.
///
/// Its fields, and those of [`ListenerView`] and [`Owner`], are declared in the order of their names: JSON lines
/// keep their keys sorted, and the segment's line serializes this directly.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SocketLink {
    /// For a segment to a listener or a half-open connection: what the kernel did with it.
    pub fate: Option<Fate>,
    /// For a segment to a listener: the listener and its queues after the segment.
    pub listener: Option<ListenerView>,
    /// The process owning the socket (or the listener).
    pub owner: Option<Owner>,
    /// The connection's state after the segment, when a socket is known.
    pub state: Option<TcpState>,
    /// The state changes this segment caused (ingress) or that sent it (egress), in order.
    pub transitions: Vec<(TcpState, TcpState)>,
}

/// What the linker hands back, in order, once an item's hold has passed.
#[derive(Clone, Debug)]
pub enum Output {
    /// A segment with its socket side (None when no socket is known) and its header bytes.
    Segment(TcpRecord, Option<SocketLink>, Bytes),
    /// An ARP packet, unchanged, with its bytes.
    Arp(ArpRecord, Bytes),
    /// A state change no captured segment explains (another interface, a timer, the application).
    State(StateChange, Option<Owner>),
    /// Another kernel event.
    Note(KernelNote),
}

/// The kernel queries the linker needs; `cmd::live::LiveKernel` answers them from sock_diag, /proc
/// and TcpExt, tests answer them from a script.
pub trait Kernel {
    /// Every listening socket, with its accept queue and limit.
    fn listeners(&mut self) -> Vec<Socket>;
    /// Request socks (SYN_RECV) whose local port is `port`.
    fn syn_recv(&mut self, port: u16) -> Vec<Socket>;
    /// The socket of this tuple, if any (full, request or TIME_WAIT sock).
    fn lookup(&mut self, tuple: Tuple) -> Option<Socket>;
    /// The TcpExt counters now.
    fn tcpext(&mut self) -> Option<TcpExt>;
    /// The process owning a socket inode.
    fn owner(&mut self, inode: u64) -> Option<Owner>;
}

/// Transitions a received segment with `flags` causes (the rest come from the application, a timer or a sent
/// segment).
fn caused_by_ingress(old: TcpState, new: TcpState, flags: u8) -> bool {
    use TcpState::*;
    match (old, new) {
        (SynSent, Established)
        | (Listen, SynRecv)
        | (SynRecv, Established)
        | (Established, CloseWait)
        | (FinWait1, FinWait2)
        | (FinWait1, Closing) => true,
        // The last ACK, or the FIN that starts TIME_WAIT (the tracepoint reports CLOSE), or a reset.
        (LastAck | FinWait1 | FinWait2 | Closing, Close) => true,
        (Listen | Close, Close) => false,
        (_, Close) => flags & TCP_RST != 0,
        _ => false,
    }
}

/// Transitions that precede the segment they make the kernel send.
fn precedes_egress(old: TcpState, new: TcpState) -> bool {
    use TcpState::*;
    matches!(
        (old, new),
        (Close, SynSent) | (Established, FinWait1) | (SynRecv, FinWait1) | (CloseWait, LastAck) | (_, Close)
    )
}

/// A held item's place in the queue: the input itself stays in the linker's slab, so that sorting it into the
/// queue moves 32 bytes, not the input's 168.
#[derive(Clone, Copy, Debug)]
struct Entry {
    id: u64,
    ts: u64,
    /// Its input's index in [`Linker::inputs`].
    at: usize,
    claimed: bool,
}

/// A handshake in progress at one of our listeners.
#[derive(Clone, Copy, Debug)]
struct Handshake {
    /// When the last SYN of it was seen.
    syn_ts: u64,
    /// A SYN-ACK left for it.
    answered: bool,
}

/// A tracked connection.
#[derive(Clone, Debug)]
struct Conn {
    state: TcpState,
    inode: u64,
    owner: Option<Owner>,
    last_lookup_ns: u64,
    /// The connection lives on as a sock in the TIME_WAIT table (no more tracepoints for it).
    timewait: bool,
}

impl Conn {
    fn new(state: TcpState, inode: u64) -> Self {
        Conn {
            state,
            inode,
            owner: None,
            last_lookup_ns: 0,
            timewait: false,
        }
    }

    fn timewait(state: TcpState) -> Self {
        Conn {
            timewait: true,
            ..Conn::new(state, 0)
        }
    }
}

/// Counter rises not yet matched to a segment.
#[derive(Clone, Copy, Debug, Default)]
struct Budget {
    overflows: u64,
    reqq_full: u64,
    drops: u64,
    cookies: u64,
}

/// Whether `s` is a child's LISTEN→SYN_RECV reported with its listener's addresses (see [`Linker::push`]).
fn is_anonymous_clone(s: &StateChange) -> bool {
    (s.old, s.new) == (TcpState::Listen, TcpState::SynRecv)
        && s.tuple.remote.ip().is_unspecified()
        && s.tuple.remote.port() == 0
}

/// The linker: holds items for [`Linker::hold_ns`], then returns them with their socket side.
pub struct Linker<K: Kernel> {
    kernel: K,
    hold_ns: u64,
    queue: VecDeque<Entry>,
    /// The held inputs, by [`Entry::at`]; a released one leaves its slot to the next.
    inputs: Vec<Option<Input>>,
    /// Free slots of `inputs`.
    free: Vec<usize>,
    /// The outputs of the last flush, handed out by draining: the buffer stays for the next.
    out: Vec<Output>,
    next_id: u64,
    /// Egress SYN-ACKs in the queue, by the local socket's tuple: their timestamps.
    synacks: FastMap<Tuple, Vec<u64>>,
    /// State changes in the queue, by tuple: (entry id, ts).
    states: FastMap<Tuple, Vec<(u64, u64)>>,
    /// Transitions claimed by an egress segment still in the queue: by that segment's entry id.
    attached: FastMap<u64, Vec<(TcpState, TcpState)>>,
    conns: FastMap<Tuple, Conn>,
    handshakes: FastMap<Tuple, Handshake>,
    listeners: Vec<Socket>,
    listeners_fresh: bool,
    /// Listener queues read since the last flush, by listening address.
    views: FastMap<SocketAddr, ListenerView>,
    /// Listener queues read when a segment to a listener arrived, by its entry id.
    seen_views: FastMap<u64, ListenerView>,
    last_tcpext: Option<TcpExt>,
    budget: Budget,
    /// Children cloned from a listener whose LISTEN→SYN_RECV change came before their own addresses (see
    /// [`Linker::push`]), oldest first.
    clones: VecDeque<StateChange>,
    /// Dropped segments labelled per reason, for the exit report and tests.
    pub drops: FastMap<&'static str, u64>,
}

impl<K: Kernel> Linker<K> {
    /// A linker over `kernel`, seeded with the current table (`sockets`), holding items `hold_ns`.
    pub fn new(mut kernel: K, sockets: &[Socket], hold_ns: u64) -> Self {
        let mut conns = FastMap::default();
        let mut listeners = Vec::new();
        for s in sockets {
            match s.state.normalized() {
                TcpState::Listen => listeners.push(s.clone()),
                TcpState::SynRecv => {}
                state => {
                    let mut conn = Conn::new(state, s.inode);
                    conn.timewait = s.state == TcpState::TimeWait;
                    conns.insert(Tuple::of_socket(s), conn);
                }
            }
        }
        let last_tcpext = kernel.tcpext();
        Linker {
            kernel,
            hold_ns,
            queue: VecDeque::new(),
            inputs: Vec::new(),
            free: Vec::new(),
            out: Vec::new(),
            next_id: 0,
            synacks: FastMap::default(),
            states: FastMap::default(),
            attached: FastMap::default(),
            conns,
            handshakes: FastMap::default(),
            listeners,
            listeners_fresh: false,
            views: FastMap::default(),
            seen_views: FastMap::default(),
            last_tcpext,
            budget: Budget::default(),
            clones: VecDeque::new(),
            drops: FastMap::default(),
        }
    }

    /// How long items wait, in nanoseconds.
    pub fn hold_ns(&self) -> u64 {
        self.hold_ns
    }

    /// Connections tracked now.
    pub fn tracked(&self) -> usize {
        self.conns.len()
    }

    /// Items waiting.
    pub fn pending(&self) -> usize {
        self.queue.len()
    }

    /// Queues one item.
    ///
    /// Older kernels (seen on 6.1 and 6.12, not on 6.18) set a new child's LISTEN→SYN_RECV state while the child still
    /// holds its listener's addresses and cookie: such a change arrives with the listener's local address and no
    /// remote one. The child's own SYN_RECV→ESTABLISHED follows in the same softirq, so the change is held back
    /// and queued with the tuple of the next child of that listener.
    pub fn push(&mut self, input: Input) {
        const MAX_CLONES: usize = 1024;
        match input {
            Input::State(s) if is_anonymous_clone(&s) => {
                if self.clones.len() == MAX_CLONES {
                    self.clones.pop_front();
                }
                self.clones.push_back(s);
            }
            Input::State(s) if (s.old, s.new) == (TcpState::SynRecv, TcpState::Established) => {
                let of_listener = |c: &StateChange| {
                    c.tuple.local.port() == s.tuple.local.port()
                        && (c.tuple.local.ip().is_unspecified() || c.tuple.local.ip() == s.tuple.local.ip())
                };
                if let Some(clone) = self
                    .clones
                    .iter()
                    .position(of_listener)
                    .and_then(|i| self.clones.remove(i))
                {
                    self.queue_input(Input::State(StateChange {
                        tuple: s.tuple,
                        ..clone
                    }));
                }
                self.queue_input(Input::State(s));
            }
            input => self.queue_input(input),
        }
    }

    fn queue_input(&mut self, input: Input) {
        let id = self.next_id;
        self.next_id += 1;
        let ts = match &input {
            Input::Segment(r, _) => r.header.ts_ns,
            Input::Arp(r, _) => r.header.ts_ns,
            Input::State(s) => s.ts_ns,
            Input::Note(n) => n.ts_ns,
            Input::Destroyed(_) => self.queue.back().map_or(0, |e| e.ts),
        };
        match &input {
            Input::Segment(r, _) if is_synack(r) && r.header.direction == DIR_EGRESS => {
                self.synacks.entry(Tuple::of_segment(r)).or_default().push(ts);
            }
            Input::State(s) => self.states.entry(s.tuple).or_default().push((id, ts)),
            Input::Segment(r, _)
                if r.header.direction != DIR_EGRESS
                    && r.flags & (TCP_SYN | TCP_RST) != 0
                    && r.flags & (TCP_ACK | TCP_RST) == 0 =>
            {
                // Read the listener's queues now, right after the stack handled the SYN, not at release time.
                let tuple = Tuple::of_segment(r);
                if !self.conns.contains_key(&tuple)
                    && let Some(view) = self.listener_view(tuple.local)
                {
                    self.seen_views.insert(id, view);
                }
            }
            Input::Segment(r, _)
                if r.header.direction != DIR_EGRESS
                    && r.flags & (TCP_SYN | TCP_RST | TCP_ACK) == TCP_ACK
                    && !self.conns.contains_key(&Tuple::of_segment(r)) =>
            {
                // Possibly a handshake's last ACK: its listener as the stack left it.
                let tuple = Tuple::of_segment(r);
                if self.find_listener(tuple.local).is_some()
                    && let Some(view) = self.listener_view(tuple.local)
                {
                    self.seen_views.insert(id, view);
                }
            }
            _ => {}
        }
        // The two rings are read in turn: an item may be older than the last one queued, never by more than a
        // read's worth, so the search from the back is short.
        let slot = match self.free.pop() {
            Some(free) => {
                self.inputs[free] = Some(input);
                free
            }
            None => {
                self.inputs.push(Some(input));
                self.inputs.len() - 1
            }
        };
        let at = self.queue.iter().rposition(|e| e.ts <= ts).map_or(0, |i| i + 1);
        self.queue.insert(
            at,
            Entry {
                id,
                ts,
                at: slot,
                claimed: false,
            },
        );
    }

    /// Hands back every item whose hold has passed at `now_ns` (boot-time ns), with its socket side.
    pub fn flush(&mut self, now_ns: u64) -> std::vec::Drain<'_, Output> {
        self.flush_while(|ts, hold| ts.saturating_add(hold) <= now_ns)
    }

    /// Hands back every item now, whatever its hold (at exit).
    pub fn flush_all(&mut self) -> std::vec::Drain<'_, Output> {
        self.flush_while(|_, _| true)
    }

    fn flush_while(&mut self, due: impl Fn(u64, u64) -> bool) -> std::vec::Drain<'_, Output> {
        self.out.clear();
        self.listeners_fresh = false;
        self.views.clear();
        while self.queue.front().is_some_and(|e| due(e.ts, self.hold_ns)) {
            let Some(entry) = self.queue.pop_front() else { break };
            let Some(input) = self.inputs.get_mut(entry.at).and_then(Option::take) else {
                continue;
            };
            self.free.push(entry.at);
            if let Some(o) = self.resolve(entry, input) {
                self.out.push(o);
            }
        }
        // The next segments read the listeners afresh.
        self.listeners_fresh = false;
        self.views.clear();
        self.out.drain(..)
    }

    fn resolve(&mut self, entry: Entry, input: Input) -> Option<Output> {
        match input {
            Input::Segment(rec, bytes) => {
                let tuple = Tuple::of_segment(&rec);
                if is_synack(&rec)
                    && rec.header.direction == DIR_EGRESS
                    && let Some(v) = self.synacks.get_mut(&tuple)
                {
                    v.retain(|t| *t != entry.ts);
                    if v.is_empty() {
                        self.synacks.remove(&tuple);
                    }
                }
                let link = self.link_segment(entry.id, entry.ts, &rec, tuple);
                self.seen_views.remove(&entry.id);
                Some(Output::Segment(rec, link, bytes))
            }
            Input::Arp(rec, bytes) => Some(Output::Arp(rec, bytes)),
            Input::State(mut change) => {
                if let Some(v) = self.states.get_mut(&change.tuple) {
                    v.retain(|(id, _)| *id != entry.id);
                    if v.is_empty() {
                        self.states.remove(&change.tuple);
                    }
                }
                let target = (!entry.claimed && precedes_egress(change.old, change.new))
                    .then(|| self.egress_target(&change, entry.ts))
                    .flatten();
                if let Some((_, tuple)) = target {
                    // connect() reports SYN_SENT before the local port is chosen: the SYN names it.
                    change.tuple = tuple;
                }
                self.apply_state(&change, entry.ts);
                if entry.claimed {
                    return None;
                }
                if let Some((id, _)) = target {
                    self.attached.entry(id).or_default().push((change.old, change.new));
                    return None;
                }
                let owner = self.owner_of(change.tuple, entry.ts);
                Some(Output::State(change, owner))
            }
            Input::Note(note) => Some(Output::Note(note)),
            Input::Destroyed(tuple) => {
                if self.conns.get(&tuple).is_some_and(|c| !c.timewait) {
                    self.conns.remove(&tuple);
                }
                None
            }
        }
    }

    /// The first egress segment of the change's tuple within [`CLAIM_NS`] (for a SYN_SENT without a local
    /// port yet, the first SYN to its peer from its address): its entry id and tuple.
    fn egress_target(&self, change: &StateChange, ts: u64) -> Option<(u64, Tuple)> {
        let limit = ts.saturating_add(CLAIM_NS.min(self.hold_ns));
        let unbound = change.tuple.local.port() == 0;
        self.queue
            .iter()
            .take_while(|e| e.ts <= limit)
            .find_map(|e| match self.inputs.get(e.at)?.as_ref()? {
                Input::Segment(r, _) if r.header.direction == DIR_EGRESS => {
                    let t = Tuple::of_segment(r);
                    let hit = t == change.tuple
                        || (unbound
                            && r.flags & (TCP_SYN | TCP_ACK) == TCP_SYN
                            && t.remote == change.tuple.remote
                            && (change.tuple.local.ip().is_unspecified() || t.local.ip() == change.tuple.local.ip()));
                    hit.then_some((e.id, t))
                }
                _ => None,
            })
    }

    /// Marks a connection as living in the TIME_WAIT table, keeping its owner for the lines still to come.
    fn enter_timewait(&mut self, tuple: Tuple, state: TcpState) {
        let owner = self.conns.get(&tuple).and_then(|c| c.owner.clone());
        self.conns.insert(
            tuple,
            Conn {
                owner,
                ..Conn::timewait(state)
            },
        );
    }

    fn apply_state(&mut self, change: &StateChange, ts: u64) {
        if self.conns.get(&change.tuple).is_some_and(|c| c.timewait)
            && !matches!(change.old, TcpState::Close | TcpState::Listen)
        {
            // The segment that moved it into the TIME_WAIT table already accounted for these changes; only a
            // new connection on the same tuple starts afresh.
            return;
        }
        if change.new == TcpState::Close {
            // A connection its closing segment moved into the TIME_WAIT table stays tracked.
            if self.conns.get(&change.tuple).is_some_and(|c| !c.timewait) {
                self.conns.remove(&change.tuple);
            }
            return;
        }
        if change.new == TcpState::Listen {
            // A new listener: the listener table is read again when next needed.
            self.listeners_fresh = false;
            return;
        }
        if change.new == TcpState::Established || change.new == TcpState::SynRecv {
            self.handshakes.remove(&change.tuple);
        }
        let conn = self
            .conns
            .entry(change.tuple)
            .or_insert_with(|| Conn::new(change.new, 0));
        conn.timewait = false;
        conn.state = change.new;
        if conn.owner.is_none() {
            // Ask again soon: connect() and accept() give the socket its inode.
            conn.last_lookup_ns = conn.last_lookup_ns.min(ts.saturating_sub(OWNER_RETRY_NS));
        }
        self.cap_tracking();
    }

    fn cap_tracking(&mut self) {
        if self.conns.len() > MAX_TRACKED {
            let excess: Vec<Tuple> = self
                .conns
                .keys()
                .take(self.conns.len() - MAX_TRACKED)
                .copied()
                .collect();
            for t in excess {
                self.conns.remove(&t);
            }
        }
        if self.handshakes.len() > MAX_TRACKED {
            let mut by_age: Vec<(u64, Tuple)> = self.handshakes.iter().map(|(t, h)| (h.syn_ts, *t)).collect();
            by_age.sort_unstable();
            for (_, t) in by_age.into_iter().take(self.handshakes.len() - MAX_TRACKED) {
                self.handshakes.remove(&t);
            }
        }
    }

    /// The owner of a tracked connection, looking it up (rate-limited) while unknown.
    fn owner_of(&mut self, tuple: Tuple, ts: u64) -> Option<Owner> {
        let conn = self.conns.get_mut(&tuple)?;
        if conn.owner.is_some() {
            return conn.owner.clone();
        }
        if conn.inode == 0 && ts.saturating_sub(conn.last_lookup_ns) >= OWNER_RETRY_NS {
            conn.last_lookup_ns = ts;
            if let Some(s) = self.kernel.lookup(tuple) {
                let conn = self.conns.get_mut(&tuple)?;
                conn.inode = s.inode;
            }
        }
        let inode = self.conns.get(&tuple)?.inode;
        if inode == 0 {
            return None;
        }
        let owner = self.kernel.owner(inode);
        if let Some(conn) = self.conns.get_mut(&tuple) {
            conn.owner.clone_from(&owner);
        }
        owner
    }

    fn link_segment(&mut self, id: u64, ts: u64, rec: &TcpRecord, tuple: Tuple) -> Option<SocketLink> {
        let ingress = rec.header.direction != DIR_EGRESS;
        let mut link = SocketLink {
            transitions: self.attached.remove(&id).unwrap_or_default(),
            ..SocketLink::default()
        };
        if ingress {
            link.transitions
                .extend(self.claim_ingress_transitions(ts, tuple, rec.flags));
        }
        let syn_only = rec.flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN;
        if ingress && syn_only && self.conns.get(&tuple).is_some_and(|c| c.timewait) {
            // A new connection on the tuple of a TIME_WAIT sock.
            self.conns.remove(&tuple);
        }
        if ingress && syn_only && !self.conns.contains_key(&tuple) {
            return self.link_syn(id, ts, tuple, link);
        }
        if ingress
            && rec.flags & (TCP_SYN | TCP_RST) == 0
            && rec.flags & TCP_ACK != 0
            && self.handshakes.get(&tuple).is_some_and(|h| h.answered)
            && !self.conns.contains_key(&tuple)
        {
            // A segment completing a handshake: the connection exists now unless the listener dropped it.
            let created = link.transitions.iter().any(|t| t.0 == TcpState::Listen);
            link.listener = self.seen_views.remove(&id).or_else(|| self.listener_view(tuple.local));
            link.owner = self.listener_owner(tuple.local);
            if created {
                link.fate = Some(Fate::Accepted);
                link.state = Some(TcpState::Established);
            } else {
                link.fate = Some(Fate::Dropped(self.drop_reason()));
            }
            return Some(link);
        }
        if !ingress && is_synack(rec) && !self.conns.contains_key(&tuple) && self.handshakes.contains_key(&tuple) {
            // Sent by the request sock the SYN created.
            link.state = Some(TcpState::SynRecv);
            link.owner = self.listener_owner(tuple.local);
            return Some(link);
        }
        let state = self.conns.get(&tuple).map(|c| c.state);
        let state = link.transitions.last().map(|t| t.1).or(state);
        if state.is_none() && link.transitions.is_empty() {
            return None;
        }
        if let Some(last) = link.transitions.last().copied()
            && last.1 == TcpState::Close
            && matches!(last.0, TcpState::FinWait1 | TcpState::FinWait2 | TcpState::Closing)
            && rec.flags & TCP_RST == 0
        {
            // tcp_time_wait() replaces the full socket by a sock in the TIME_WAIT table, which the tracepoint
            // reports as CLOSE. sock_diag shows that sock's state: TIME_WAIT, or FIN_WAIT2 for an orphan still
            // waiting for the peer's FIN.
            if let Some(tw) = self.kernel.lookup(tuple).map(|s| s.state)
                && matches!(tw, TcpState::TimeWait | TcpState::FinWait2)
            {
                link.transitions.pop();
                if link.transitions.last().map(|t| t.1) != Some(tw) {
                    link.transitions.push((last.0, tw));
                }
                self.enter_timewait(tuple, tw);
            }
        } else if link.transitions.is_empty()
            && rec.flags & TCP_FIN != 0
            && self
                .conns
                .get(&tuple)
                .is_some_and(|c| c.timewait && c.state == TcpState::FinWait2)
            && self.kernel.lookup(tuple).is_some_and(|s| s.state == TcpState::TimeWait)
        {
            // The orphan's FIN_WAIT2 sock got the peer's FIN: no tracepoint fires, sock_diag shows TIME_WAIT.
            link.transitions.push((TcpState::FinWait2, TcpState::TimeWait));
            self.enter_timewait(tuple, TcpState::TimeWait);
        }
        link.state = link.transitions.last().map(|t| t.1).or(state);
        link.owner = self.owner_of(tuple, ts).or_else(|| {
            (link.transitions.first().is_some_and(|t| t.0 == TcpState::Listen))
                .then(|| self.listener_owner(tuple.local))
                .flatten()
        });
        Some(link)
    }

    /// State changes of `tuple` that an ingress segment at `ts` caused: up to its next ingress segment, within
    /// [`CLAIM_NS`].
    fn claim_ingress_transitions(&mut self, ts: u64, tuple: Tuple, flags: u8) -> Vec<(TcpState, TcpState)> {
        if !self.states.contains_key(&tuple) {
            return Vec::new();
        }
        let limit = ts.saturating_add(CLAIM_NS.min(self.hold_ns));
        let mut out = Vec::new();
        let inputs = &self.inputs;
        for e in self.queue.iter_mut() {
            if e.ts > limit {
                break;
            }
            let Some(input) = inputs.get(e.at).and_then(Option::as_ref) else {
                continue;
            };
            match input {
                Input::Segment(r, _) if r.header.direction != DIR_EGRESS && Tuple::of_segment(r) == tuple => break,
                Input::State(s) if s.tuple == tuple && !e.claimed && caused_by_ingress(s.old, s.new, flags) => {
                    e.claimed = true;
                    out.push((s.old, s.new));
                }
                _ => {}
            }
        }
        out
    }

    fn link_syn(&mut self, id: u64, ts: u64, tuple: Tuple, mut link: SocketLink) -> Option<SocketLink> {
        let listener_known = self.find_listener(tuple.local).is_some();
        if !listener_known {
            return (!link.transitions.is_empty()).then_some(link);
        }
        let limit = ts.saturating_add(self.hold_ns);
        let answered = self
            .synacks
            .get(&tuple)
            .is_some_and(|v| v.iter().any(|t| *t >= ts && *t <= limit));
        let fate = if answered {
            self.handshakes.insert(
                tuple,
                Handshake {
                    syn_ts: ts,
                    answered: true,
                },
            );
            self.cap_tracking();
            self.refresh_budget();
            if self.budget.cookies > 0 {
                self.budget.cookies -= 1;
                Fate::Syncookie
            } else {
                Fate::Accepted
            }
        } else {
            Fate::Dropped(self.drop_reason())
        };
        link.listener = self.seen_views.remove(&id).or_else(|| self.listener_view(tuple.local));
        link.owner = self.listener_owner(tuple.local);
        link.state = Some(TcpState::Listen);
        link.fate = Some(fate);
        Some(link)
    }

    /// Reads TcpExt and adds what rose since the last read to the unmatched budget.
    fn refresh_budget(&mut self) {
        let Some(now) = self.kernel.tcpext() else { return };
        if let Some(prev) = &self.last_tcpext {
            let d = now.since(prev);
            self.budget.overflows += d.listen_overflows;
            self.budget.reqq_full += d.req_q_full_drop;
            self.budget.drops += d.listen_drops;
            self.budget.cookies += d.syncookies_sent;
        }
        self.last_tcpext = Some(now);
    }

    /// Matches one dropped segment with one unit of the counter that rose for it.
    fn drop_reason(&mut self) -> DropReason {
        self.refresh_budget();
        let b = &mut self.budget;
        let reason = if b.overflows > 0 {
            b.overflows -= 1;
            // ListenOverflows also counts in ListenDrops.
            b.drops = b.drops.saturating_sub(1);
            DropReason::AcceptQueueFull
        } else if b.reqq_full > 0 {
            b.reqq_full -= 1;
            b.drops = b.drops.saturating_sub(1);
            DropReason::SynQueueFull
        } else if b.drops > 0 {
            b.drops -= 1;
            DropReason::ListenDrop
        } else {
            DropReason::NoAnswer
        };
        *self.drops.entry(reason_key(reason)).or_default() += 1;
        reason
    }

    fn refresh_listeners(&mut self) {
        if !self.listeners_fresh {
            self.listeners = self.kernel.listeners();
            self.listeners_fresh = true;
        }
    }

    fn find_listener(&mut self, local: SocketAddr) -> Option<Socket> {
        if listener_for(&self.listeners, local).is_none() {
            self.refresh_listeners();
        }
        listener_for(&self.listeners, local).map(|i| self.listeners[i].clone())
    }

    fn listener_view(&mut self, local: SocketAddr) -> Option<ListenerView> {
        self.refresh_listeners();
        let l = self.find_listener(local)?;
        if let Some(v) = self.views.get(&l.local) {
            return Some(v.clone());
        }
        let reqs = self.kernel.syn_recv(l.local.port());
        let synq = reqs
            .iter()
            .filter(|r| listener_for(&self.listeners, r.local).is_some_and(|i| self.listeners[i].local == l.local))
            .count();
        let view = ListenerView {
            addr: l.local,
            synq: u32::try_from(synq).unwrap_or(u32::MAX),
            accept: l.recv_q,
            limit: l.backlog_limit,
        };
        self.views.insert(l.local, view.clone());
        Some(view)
    }

    fn listener_owner(&mut self, local: SocketAddr) -> Option<Owner> {
        let l = self.find_listener(local)?;
        (l.inode != 0).then(|| self.kernel.owner(l.inode)).flatten()
    }
}

fn reason_key(r: DropReason) -> &'static str {
    match r {
        DropReason::AcceptQueueFull => "accept_queue_full",
        DropReason::SynQueueFull => "syn_queue_full",
        DropReason::ListenDrop => "listen_drop",
        DropReason::NoAnswer => "no_answer",
    }
}

fn is_synack(r: &TcpRecord) -> bool {
    r.flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN | TCP_ACK
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use observer_common::record::{DIR_INGRESS, KIND_TCP};

    use super::*;

    /// The segment's JSON line writes a socket side as it is declared: its keys must come out sorted, as a
    /// `serde_json::Value` (whose maps sort) prints them.
    #[test]
    fn socket_link_serializes_with_sorted_keys() {
        let link = SocketLink {
            fate: Some(Fate::Dropped(DropReason::AcceptQueueFull)),
            listener: Some(ListenerView {
                accept: 5,
                addr: "10.0.0.2:22".parse().expect("address"),
                limit: Some(4),
                synq: 1,
            }),
            owner: Some(Owner {
                pid: 42,
                comm: "sshd".into(),
                program: "sshd".into(),
            }),
            state: Some(TcpState::Listen),
            transitions: vec![(TcpState::Listen, TcpState::SynRecv)],
        };
        let direct = serde_json::to_string(&link).expect("serializing");
        let sorted = serde_json::to_value(&link).expect("serializing").to_string();
        assert_eq!(direct, sorted);
        for fate in [Fate::Accepted, Fate::Syncookie] {
            let link = SocketLink {
                fate: Some(fate),
                ..SocketLink::default()
            };
            let sorted = serde_json::to_value(&link).expect("serializing").to_string();
            assert_eq!(serde_json::to_string(&link).expect("serializing"), sorted);
        }
    }

    /// A kernel whose answers the test sets.
    #[derive(Default)]
    struct Script {
        listeners: Vec<Socket>,
        syn_recv: Vec<Socket>,
        time_wait: Vec<Tuple>,
        tcpext: TcpExt,
    }

    impl Kernel for &mut Script {
        fn listeners(&mut self) -> Vec<Socket> {
            self.listeners.clone()
        }
        fn syn_recv(&mut self, port: u16) -> Vec<Socket> {
            self.syn_recv
                .iter()
                .filter(|s| s.local.port() == port)
                .cloned()
                .collect()
        }
        fn lookup(&mut self, tuple: Tuple) -> Option<Socket> {
            self.time_wait
                .contains(&tuple)
                .then(|| sock(tuple.local, tuple.remote, TcpState::TimeWait))
        }
        fn tcpext(&mut self) -> Option<TcpExt> {
            Some(self.tcpext.clone())
        }
        fn owner(&mut self, _inode: u64) -> Option<Owner> {
            None
        }
    }

    fn sock(local: SocketAddr, remote: SocketAddr, state: TcpState) -> Socket {
        Socket {
            backlog_limit: (state == TcpState::Listen).then_some(4),
            ..Socket::new(local, remote, state)
        }
    }

    /// A kernel with one listener, on 0.0.0.0:80 with backlog 4.
    fn listening_on_80() -> Script {
        Script {
            listeners: vec![sock(
                "0.0.0.0:80".parse().unwrap(),
                "0.0.0.0:0".parse().unwrap(),
                TcpState::Listen,
            )],
            ..Script::default()
        }
    }

    const SERVER: &str = "10.0.0.1:80";
    const CLIENT: &str = "10.0.0.2:4000";

    fn seg(ts_ms: u64, from_client: bool, egress: bool, flags: u8) -> Input {
        let (src, dst): (SocketAddr, SocketAddr) = if from_client {
            (CLIENT.parse().unwrap(), SERVER.parse().unwrap())
        } else {
            (SERVER.parse().unwrap(), CLIENT.parse().unwrap())
        };
        let mut r = TcpRecord::default();
        r.header.ts_ns = ts_ms * 1_000_000;
        r.header.kind = KIND_TCP;
        r.header.direction = if egress { DIR_EGRESS } else { DIR_INGRESS };
        r.ip_version = 4;
        let (IpAddr::V4(s), IpAddr::V4(d)) = (src.ip(), dst.ip()) else {
            unreachable!()
        };
        r.saddr[..4].copy_from_slice(&s.octets());
        r.daddr[..4].copy_from_slice(&d.octets());
        r.sport = src.port();
        r.dport = dst.port();
        r.flags = flags;
        Input::Segment(r, None)
    }

    fn server_tuple() -> Tuple {
        Tuple::new(SERVER.parse().unwrap(), CLIENT.parse().unwrap())
    }

    fn state(ts_ms: u64, tuple: Tuple, old: TcpState, new: TcpState) -> Input {
        Input::State(StateChange {
            ts_ns: ts_ms * 1_000_000,
            tuple,
            old,
            new,
        })
    }

    fn links(out: &[Output]) -> Vec<String> {
        out.iter()
            .map(|o| match o {
                Output::Segment(_, l, _) => l.as_ref().map(crate::view::render::socket_side).unwrap_or_default(),
                Output::State(s, _) => format!("state {}→{}", s.old.name(), s.new.name()),
                Output::Note(n) => crate::view::render::note_text(n),
                Output::Arp(..) => "arp".into(),
            })
            .collect()
    }

    /// A passive open on port 80 (SYN, SYN-ACK, ACK) whose child's LISTEN→SYN_RECV is reported on `clone`,
    /// then the child's SYN_RECV→ESTABLISHED; the lines released.
    fn passive_open(clone: Tuple) -> Vec<Output> {
        let mut k = listening_on_80();
        k.syn_recv = vec![sock(
            SERVER.parse().unwrap(),
            CLIENT.parse().unwrap(),
            TcpState::SynRecv,
        )];
        let mut l = Linker::new(&mut k, &[], DEFAULT_HOLD_NS);
        l.push(seg(0, true, false, TCP_SYN));
        l.push(seg(1, false, true, TCP_SYN | TCP_ACK));
        l.push(seg(2, true, false, TCP_ACK));
        l.push(state(3, clone, TcpState::Listen, TcpState::SynRecv));
        l.push(state(3, server_tuple(), TcpState::SynRecv, TcpState::Established));
        l.flush(1_000_000_000).collect()
    }

    #[test]
    fn a_passive_open_links_the_syn_to_the_listener_and_the_ack_to_the_new_child() {
        let out = passive_open(server_tuple());
        assert_eq!(
            links(&out),
            [
                "LISTEN 0.0.0.0:80 synq 1 accept 0/4",
                "SYN_RECV",
                "LISTEN 0.0.0.0:80 synq 1 accept 0/4 LISTEN→SYN_RECV→ESTABLISHED",
            ]
        );
        assert!(matches!(
            &out[0],
            Output::Segment(
                _,
                Some(SocketLink {
                    fate: Some(Fate::Accepted),
                    ..
                }),
                _
            )
        ));
    }

    #[test]
    fn a_child_cloned_before_its_addresses_were_set_gets_its_listen_to_syn_recv() {
        // As Linux 6.1 reports it: the clone with the listener's addresses, then the child's own change.
        let out = passive_open(Tuple::new("0.0.0.0:80".parse().unwrap(), "0.0.0.0:0".parse().unwrap()));
        assert_eq!(
            links(&out),
            [
                "LISTEN 0.0.0.0:80 synq 1 accept 0/4",
                "SYN_RECV",
                "LISTEN 0.0.0.0:80 synq 1 accept 0/4 LISTEN→SYN_RECV→ESTABLISHED",
            ]
        );
    }

    #[test]
    fn an_unanswered_syn_takes_one_unit_of_the_counter_that_rose() {
        let mut k = listening_on_80();
        let mut l = Linker::new(&mut k, &[], DEFAULT_HOLD_NS);
        l.kernel.tcpext.all.insert("ListenOverflows".into(), 1);
        l.kernel.tcpext.all.insert("ListenDrops".into(), 1);
        l.push(seg(0, true, false, TCP_SYN));
        l.push(seg(1000, true, false, TCP_SYN));
        let out: Vec<Output> = l.flush(10_000_000_000).collect();
        let texts = links(&out);
        assert!(
            texts[0].ends_with("DROPPED: accept queue full (ListenOverflows +1)"),
            "{texts:?}"
        );
        assert!(
            texts[1].ends_with("DROPPED: no answer, no listener counter rose"),
            "{texts:?}"
        );
        assert_eq!(l.drops.get("accept_queue_full"), Some(&1));
    }

    /// An active close's segments and state changes, pushed in the order `order` gives; the links released.
    fn active_close(order: impl FnOnce(Vec<Input>) -> Vec<Input>) -> Vec<String> {
        let mut k = Script::default();
        let t = server_tuple();
        k.time_wait.push(t);
        let table = [sock(
            SERVER.parse().unwrap(),
            CLIENT.parse().unwrap(),
            TcpState::Established,
        )];
        let mut l = Linker::new(&mut k, &table, DEFAULT_HOLD_NS);
        let inputs = vec![
            state(0, t, TcpState::Established, TcpState::FinWait1),
            seg(1, false, true, TCP_FIN | TCP_ACK),
            seg(2, true, false, TCP_ACK),
            state(3, t, TcpState::FinWait1, TcpState::FinWait2),
            seg(4, true, false, TCP_FIN | TCP_ACK),
            state(5, t, TcpState::FinWait2, TcpState::Close),
            seg(6, false, true, TCP_ACK),
        ];
        for input in order(inputs) {
            l.push(input);
        }
        links(&l.flush(1_000_000_000).collect::<Vec<_>>())
    }

    #[test]
    fn an_active_close_shows_each_transition_next_to_its_segment() {
        assert_eq!(
            active_close(|inputs| inputs),
            [
                "ESTABLISHED→FIN_WAIT1",
                "FIN_WAIT1→FIN_WAIT2",
                "FIN_WAIT2→TIME_WAIT",
                "TIME_WAIT",
            ]
        );
    }

    #[test]
    fn state_changes_read_from_their_own_ring_after_the_segments_fall_into_kernel_time_order() {
        let in_order = active_close(|inputs| inputs);
        let segments_first = active_close(|inputs| {
            let (states, segments): (Vec<Input>, Vec<Input>) =
                inputs.into_iter().partition(|i| matches!(i, Input::State(_)));
            segments.into_iter().chain(states).collect()
        });
        assert_eq!(segments_first, in_order);
    }

    #[test]
    fn a_passive_close_goes_through_close_wait_and_last_ack() {
        let mut k = Script::default();
        let t = server_tuple();
        let table = [sock(
            SERVER.parse().unwrap(),
            CLIENT.parse().unwrap(),
            TcpState::Established,
        )];
        let mut l = Linker::new(&mut k, &table, DEFAULT_HOLD_NS);
        l.push(seg(0, true, false, TCP_FIN | TCP_ACK));
        l.push(state(1, t, TcpState::Established, TcpState::CloseWait));
        l.push(seg(2, false, true, TCP_ACK));
        l.push(state(3, t, TcpState::CloseWait, TcpState::LastAck));
        l.push(seg(4, false, true, TCP_FIN | TCP_ACK));
        l.push(seg(5, true, false, TCP_ACK));
        l.push(state(6, t, TcpState::LastAck, TcpState::Close));
        let out: Vec<Output> = l.flush(1_000_000_000).collect();
        assert_eq!(
            links(&out),
            [
                "ESTABLISHED→CLOSE_WAIT",
                "CLOSE_WAIT",
                "CLOSE_WAIT→LAST_ACK",
                "LAST_ACK→CLOSE"
            ]
        );
    }

    #[test]
    fn a_state_change_without_a_captured_segment_is_its_own_line_and_items_wait_for_the_hold() {
        let mut k = Script::default();
        let mut l = Linker::new(&mut k, &[], DEFAULT_HOLD_NS);
        l.push(state(0, server_tuple(), TcpState::Close, TcpState::SynSent));
        assert_eq!(l.flush(DEFAULT_HOLD_NS - 1).len(), 0);
        assert_eq!(
            links(&l.flush(DEFAULT_HOLD_NS).collect::<Vec<_>>()),
            ["state CLOSE→SYN_SENT"]
        );
    }
}
