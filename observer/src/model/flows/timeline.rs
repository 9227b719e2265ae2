//! Handshake and teardown timelines per connection, fixed-size, each reported once.
//!
//! Sides are the flow's endpoint indexes (0 is the lower address and port). The client is the side that sent
//! the SYN (or, when only the SYN-ACK was seen, the side it went to; with neither, the side seen first).

use std::net::SocketAddr;

use observer_common::record::{
    OPT_MSS, OPT_SACK_PERM, OPT_TIMESTAMP, OPT_WSCALE, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, TcpRecord,
};

/// MSS assumed when a SYN carries no MSS option (RFC 9293, IPv4).
pub const DEFAULT_MSS: u16 = 536;

/// The options one side offered in its SYN or SYN-ACK.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynOptions {
    /// MSS option.
    pub mss: Option<u16>,
    /// Window scale shift as sent.
    pub wscale: Option<u8>,
    /// SACK permitted.
    pub sack_perm: bool,
    /// Timestamps option present.
    pub timestamps: bool,
}

impl SynOptions {
    /// The options of a SYN or SYN-ACK record.
    pub fn of(rec: &TcpRecord) -> Self {
        let has = |bit: u8| rec.options & bit != 0;
        SynOptions {
            mss: has(OPT_MSS).then_some(rec.mss),
            wscale: has(OPT_WSCALE).then_some(rec.wscale),
            sack_perm: has(OPT_SACK_PERM),
            timestamps: has(OPT_TIMESTAMP),
        }
    }
}

/// What both sides agreed on in the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Agreed {
    /// Largest segment the client may send: the server's MSS.
    pub mss_to_server: u16,
    /// Largest segment the server may send: the client's MSS.
    pub mss_to_client: u16,
    /// Window scale shifts (client's, server's) when both offered WS; `None`: no scaling.
    pub wscale: Option<(u8, u8)>,
    /// Both offered SACK.
    pub sack: bool,
    /// Both offered timestamps.
    pub timestamps: bool,
}

/// How a handshake ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeOutcome {
    /// The client's ACK of the SYN-ACK was seen.
    Complete,
    /// An RST ended it; `by_server` tells which side sent it.
    Reset {
        /// The server (the SYN's receiver) sent the RST.
        by_server: bool,
    },
    /// The flow expired, was evicted or the agent stopped before it completed.
    Incomplete,
}

/// One connection's handshake timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandshakeReport {
    /// Time of the segment that completed or ended it (or of the last segment, when incomplete).
    pub ts_ns: u64,
    /// The SYN's sender.
    pub client: SocketAddr,
    /// The SYN's receiver.
    pub server: SocketAddr,
    /// How it ended.
    pub outcome: HandshakeOutcome,
    /// The most recent SYN before the SYN-ACK (Wireshark's `ts_mru_syn`), if a SYN was seen.
    pub syn_ns: Option<u64>,
    /// The most recent SYN-ACK, if seen.
    pub synack_ns: Option<u64>,
    /// The completing ACK, if seen.
    pub ack_ns: Option<u64>,
    /// SYNs beyond the first.
    pub syn_retransmissions: u32,
    /// SYN-ACKs beyond the first.
    pub synack_retransmissions: u32,
    /// The client's SYN options, if a SYN was seen.
    pub client_options: Option<SynOptions>,
    /// The server's SYN-ACK options, if a SYN-ACK was seen.
    pub server_options: Option<SynOptions>,
}

impl HandshakeReport {
    /// SYN to SYN-ACK: the server side's share (plus the path to it).
    pub fn syn_to_synack_ns(&self) -> Option<u64> {
        Some(self.synack_ns?.saturating_sub(self.syn_ns?))
    }

    /// SYN-ACK to ACK: the client side's share.
    pub fn synack_to_ack_ns(&self) -> Option<u64> {
        Some(self.ack_ns?.saturating_sub(self.synack_ns?))
    }

    /// SYN to ACK: Wireshark's iRTT.
    pub fn irtt_ns(&self) -> Option<u64> {
        Some(self.ack_ns?.saturating_sub(self.syn_ns?))
    }

    /// What both sides agreed on, once both SYNs were seen.
    pub fn agreed(&self) -> Option<Agreed> {
        let (c, s) = (self.client_options?, self.server_options?);
        Some(Agreed {
            mss_to_server: s.mss.unwrap_or(DEFAULT_MSS),
            mss_to_client: c.mss.unwrap_or(DEFAULT_MSS),
            wscale: c.wscale.zip(s.wscale),
            sack: c.sack_perm && s.sack_perm,
            timestamps: c.timestamps && s.timestamps,
        })
    }
}

/// Per-flow handshake state.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct HandshakeTrack {
    client: Option<u8>,
    syn_ns: Option<u64>,
    synack_ns: Option<u64>,
    syn_count: u32,
    synack_count: u32,
    client_options: Option<SynOptions>,
    server_options: Option<SynOptions>,
    last_ns: u64,
    /// Reported, or no handshake to report (the flow was seen mid-stream).
    closed: bool,
}

/// The two endpoints of a flow by side index.
pub(crate) type Ends = [SocketAddr; 2];

impl HandshakeTrack {
    /// Whether a handshake was seen starting and has not ended yet.
    pub(crate) fn open(&self) -> bool {
        !self.closed && self.client.is_some()
    }

    /// The client's side index, when known.
    pub(crate) fn client(&self) -> Option<u8> {
        self.client
    }

    /// Feeds one segment from `side`; returns the report when this segment completes or kills the handshake.
    pub(crate) fn observe(&mut self, side: u8, rec: &TcpRecord, ends: &Ends) -> Option<HandshakeReport> {
        if self.closed {
            return None;
        }
        let ts = rec.header.ts_ns;
        self.last_ns = ts;
        let (syn, ack) = (rec.flags & TCP_SYN != 0, rec.flags & TCP_ACK != 0);
        match self.client {
            None if syn && !ack => self.client = Some(side),
            None if syn => self.client = Some(1 - side),
            None => {
                self.closed = true;
                return None;
            }
            Some(_) => {}
        }
        let client = self.client?;
        if rec.flags & TCP_RST != 0 {
            return Some(self.report(
                HandshakeOutcome::Reset {
                    by_server: side != client,
                },
                ts,
                None,
                ends,
            ));
        }
        if syn && !ack && side == client {
            self.syn_count += 1;
            if self.synack_ns.is_none() {
                self.syn_ns = Some(ts);
            }
            self.client_options = Some(SynOptions::of(rec));
        } else if syn && ack && side != client {
            self.synack_count += 1;
            self.synack_ns = Some(ts);
            self.server_options = Some(SynOptions::of(rec));
        } else if !syn && ack && side == client && self.synack_ns.is_some() {
            return Some(self.report(HandshakeOutcome::Complete, ts, Some(ts), ends));
        }
        None
    }

    /// The report of a handshake still open when its flow goes away.
    pub(crate) fn abandon(&mut self, ends: &Ends) -> Option<HandshakeReport> {
        self.open()
            .then(|| self.report(HandshakeOutcome::Incomplete, self.last_ns, None, ends))
    }

    fn report(&mut self, outcome: HandshakeOutcome, ts_ns: u64, ack_ns: Option<u64>, ends: &Ends) -> HandshakeReport {
        self.closed = true;
        let client = usize::from(self.client.unwrap_or(0));
        HandshakeReport {
            ts_ns,
            client: ends[client],
            server: ends[1 - client],
            outcome,
            syn_ns: self.syn_ns,
            synack_ns: self.synack_ns,
            ack_ns,
            syn_retransmissions: self.syn_count.saturating_sub(1),
            synack_retransmissions: self.synack_count.saturating_sub(1),
            client_options: self.client_options,
            server_options: self.server_options,
        }
    }
}

/// Which end of the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The SYN's sender (or the side seen first).
    Client,
    /// The other side.
    Server,
}

impl Role {
    /// `client` or `server`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Server => "server",
        }
    }
}

/// A teardown step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepKind {
    /// A FIN.
    Fin,
    /// The ACK covering the peer's FIN.
    Ack,
    /// An RST.
    Rst,
}

impl StepKind {
    /// `FIN`, `ACK` or `RST`.
    pub fn name(self) -> &'static str {
        match self {
            StepKind::Fin => "FIN",
            StepKind::Ack => "ACK",
            StepKind::Rst => "RST",
        }
    }
}

/// One step of a teardown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// FIN, ACK of a FIN, or RST.
    pub kind: StepKind,
    /// Who sent it.
    pub from: Role,
    /// When.
    pub ts_ns: u64,
}

/// Most steps a teardown records: FIN, ACK, FIN, ACK and an RST.
pub const MAX_STEPS: usize = 5;

/// How a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TeardownKind {
    /// Both FINs acknowledged.
    Fin,
    /// An RST.
    Reset,
}

/// One connection's teardown timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TeardownReport {
    /// Time of the segment that completed it.
    pub ts_ns: u64,
    /// See [`Role::Client`].
    pub client: SocketAddr,
    /// See [`Role::Server`].
    pub server: SocketAddr,
    /// Both FINs acknowledged, or an RST.
    pub kind: TeardownKind,
    /// The side that sent the first FIN (the active closer, which sits in TIME_WAIT), if any FIN was seen.
    pub active_closer: Option<Role>,
    steps: [Step; MAX_STEPS],
    step_count: usize,
    /// Payload bytes the passive side sent after the active closer's FIN (half-close with data flowing).
    pub half_close_bytes: u64,
    /// ACKs from the active closer during the half-close that covered only part of what the other side sent.
    pub partial_acks: u32,
}

impl TeardownReport {
    /// The steps in order.
    pub fn steps(&self) -> &[Step] {
        &self.steps[..self.step_count]
    }

    /// Time from the first step to the last.
    pub fn duration_ns(&self) -> u64 {
        match (self.steps().first(), self.steps().last()) {
            (Some(a), Some(b)) => b.ts_ns.saturating_sub(a.ts_ns),
            _ => 0,
        }
    }
}

/// Per-flow teardown state.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TeardownTrack {
    fin_end: [Option<u32>; 2],
    fin_acked: [bool; 2],
    first: Option<u8>,
    steps: [Step; MAX_STEPS],
    step_count: usize,
    half_close_bytes: u64,
    partial_acks: u32,
    done: bool,
}

impl Default for TeardownTrack {
    fn default() -> Self {
        TeardownTrack {
            fin_end: [None; 2],
            fin_acked: [false; 2],
            first: None,
            steps: [Step {
                kind: StepKind::Fin,
                from: Role::Client,
                ts_ns: 0,
            }; MAX_STEPS],
            step_count: 0,
            half_close_bytes: 0,
            partial_acks: 0,
            done: false,
        }
    }
}

fn seq_ge(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) >= 0
}

impl TeardownTrack {
    /// Feeds one segment from `side`. `client` is the client's side index, `peer_nextseq` the highest
    /// sequence number + 1 the other side has sent. Returns the report when this segment completes it.
    /// `handshake_open`: an RST now belongs to the handshake, not to a teardown.
    pub(crate) fn observe(
        &mut self,
        side: u8,
        client: u8,
        rec: &TcpRecord,
        peer_nextseq: u32,
        handshake_open: bool,
        ends: &Ends,
    ) -> Option<TeardownReport> {
        if self.done {
            return None;
        }
        let s = usize::from(side);
        let ts = rec.header.ts_ns;
        let role = |side: usize| {
            if side == usize::from(client) {
                Role::Client
            } else {
                Role::Server
            }
        };
        if rec.flags & TCP_RST != 0 {
            if handshake_open {
                self.done = true;
                return None;
            }
            self.push(StepKind::Rst, role(s), ts);
            return Some(self.report(TeardownKind::Reset, ts, client, ends));
        }
        if let Some(first) = self.first
            && usize::from(first) != s
            && self.fin_end[s].is_none()
        {
            self.half_close_bytes += u64::from(rec.payload_len);
        }
        if rec.flags & TCP_ACK != 0 {
            let o = 1 - s;
            if let Some(end) = self.fin_end[o]
                && !self.fin_acked[o]
                && seq_ge(rec.ack, end)
            {
                self.fin_acked[o] = true;
                self.push(StepKind::Ack, role(s), ts);
            } else if self.first == Some(side) && self.fin_end[o].is_none() && !seq_ge(rec.ack, peer_nextseq) {
                self.partial_acks += 1;
            }
        }
        if rec.flags & TCP_FIN != 0 && self.fin_end[s].is_none() {
            let len = u32::from(rec.payload_len);
            self.fin_end[s] = Some(rec.seq.wrapping_add(len).wrapping_add(1));
            self.first.get_or_insert(side);
            self.push(StepKind::Fin, role(s), ts);
        }
        (self.fin_acked[0] && self.fin_acked[1]).then(|| self.report(TeardownKind::Fin, ts, client, ends))
    }

    fn push(&mut self, kind: StepKind, from: Role, ts_ns: u64) {
        if self.step_count < MAX_STEPS {
            self.steps[self.step_count] = Step { kind, from, ts_ns };
            self.step_count += 1;
        }
    }

    fn report(&mut self, kind: TeardownKind, ts_ns: u64, client: u8, ends: &Ends) -> TeardownReport {
        self.done = true;
        let c = usize::from(client);
        TeardownReport {
            ts_ns,
            client: ends[c],
            server: ends[1 - c],
            kind,
            active_closer: self
                .first
                .map(|f| if f == client { Role::Client } else { Role::Server }),
            steps: self.steps,
            step_count: self.step_count,
            half_close_bytes: self.half_close_bytes,
            partial_acks: self.partial_acks,
        }
    }
}
