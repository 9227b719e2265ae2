//! ARP analysis beside tshark's Info: Wireshark's duplicate-address table, request/reply pairing with the
//! response time, retries and requests given up, and connections that waited on a resolution.
//!
//! Wireshark's rules (packet-arp.c, `dissect_arp` and `check_for_duplicate_addresses`): for requests and replies the
//! sender binding is checked when its MAC is unicast and non-zero and its IP non-zero; for anything but a request the
//! target binding is checked the same way unless the sender check already flagged that IP. A binding conflicts when
//! the IP was first seen with another MAC; the table keeps that first MAC. The Info note reflects the last check.

use std::collections::VecDeque;
use std::net::Ipv4Addr;

use observer_common::record::{ARP_REPLY, ARP_REQUEST, ArpRecord, DIR_EGRESS, TCP_ACK, TCP_SYN, TcpRecord};
use serde::Serialize;

use crate::model::FastMap;
use crate::sys::neigh::NeighChange;

/// Default cap on the IP addresses the ARP state remembers.
pub const DEFAULT_ARP_ENTRIES: usize = 4096;
/// Default cap on requests waiting for their reply.
pub const DEFAULT_PENDING: usize = 1024;
/// A request unanswered this long after its last try is given up. Linux retries every `retrans_time` (1 s) and
/// fails the entry 1 s after the last of `mcast_solicit` (3) tries; the extra second keeps a retry still on its
/// way to us from being taken for the end.
pub const GIVE_UP_NS: u64 = 2_000_000_000;
/// A SYN leaving at most this long after the reply that resolved its destination waited on that resolution.
pub const RESOLUTION_SLACK_NS: u64 = 5_000_000;
/// Resolutions remembered for [`ArpTracker::resolution_wait`].
const RECENT_RESOLUTIONS: usize = 64;
pub(crate) const ZERO_MAC: [u8; 6] = [0; 6];

/// What an ARP packet is, in Wireshark's terms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ArpKind {
    /// A plain request.
    Request,
    /// A plain reply.
    Reply,
    /// A request or reply whose sender IP equals its target IP.
    Gratuitous,
    /// A gratuitous request with an all-zero target MAC.
    Announcement,
    /// A request from 0.0.0.0 with an all-zero target MAC.
    Probe,
    /// Any other operation.
    #[default]
    Other,
}

impl ArpKind {
    /// The JSON `kind` word.
    pub fn name(self) -> &'static str {
        match self {
            ArpKind::Request => "request",
            ArpKind::Reply => "reply",
            ArpKind::Gratuitous => "gratuitous",
            ArpKind::Announcement => "announcement",
            ArpKind::Probe => "probe",
            ArpKind::Other => "other",
        }
    }

    /// Classifies a record by Wireshark's rules.
    pub fn of(rec: &ArpRecord) -> Self {
        let op = rec.operation;
        if op != ARP_REQUEST && op != ARP_REPLY {
            return ArpKind::Other;
        }
        if rec.sender_ip == rec.target_ip {
            if op == ARP_REQUEST && rec.target_mac == ZERO_MAC {
                ArpKind::Announcement
            } else {
                ArpKind::Gratuitous
            }
        } else if op == ARP_REQUEST && rec.target_mac == ZERO_MAC && rec.sender_ip == [0; 4] {
            ArpKind::Probe
        } else if op == ARP_REQUEST {
            ArpKind::Request
        } else {
            ArpKind::Reply
        }
    }
}

/// An IP address seen with a MAC other than the one first seen for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpDuplicate {
    /// The contested IP address.
    pub ip: Ipv4Addr,
    /// The MAC first seen with that IP.
    pub previous_mac: [u8; 6],
}

/// Wireshark's view of one ARP packet, and observer's analysis after the Info.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArpAnalysis {
    /// Request, reply, gratuitous, announcement, probe or other.
    pub kind: ArpKind,
    /// The last address conflict this packet showed, if any.
    pub duplicate: Option<ArpDuplicate>,
    /// Whether tshark appends ` (duplicate use of <ip> detected!)` to the summary.
    pub duplicate_in_summary: bool,
    /// For a reply: the request it answers.
    pub answers: Option<Answer>,
    /// For a request: the earlier unanswered tries of the same question (0 for a first try).
    pub retry: u32,
    /// The neighbour entry this reply created or refreshed (filled in by [`ArpTracker::observe`]).
    pub neigh: Option<NeighChange>,
    /// 1-based frame number the analyzer gave the packet (0 before [`ArpTracker::observe`]).
    pub frame: u64,
}

/// Remembers the first MAC seen for each IP (bounded, oldest forgotten first) to flag duplicates.
#[derive(Debug)]
pub struct ArpState {
    macs: FastMap<[u8; 4], [u8; 6]>,
    order: VecDeque<[u8; 4]>,
    max_entries: usize,
}

impl Default for ArpState {
    fn default() -> Self {
        Self::new(DEFAULT_ARP_ENTRIES)
    }
}

impl ArpState {
    /// A state remembering at most `max_entries` addresses (at least one).
    pub fn new(max_entries: usize) -> Self {
        ArpState {
            macs: FastMap::default(),
            order: VecDeque::new(),
            max_entries: max_entries.max(1),
        }
    }

    /// Number of addresses remembered.
    pub fn len(&self) -> usize {
        self.macs.len()
    }

    /// Whether no address is remembered.
    pub fn is_empty(&self) -> bool {
        self.macs.is_empty()
    }

    /// Classifies the packet and checks its sender (and, for replies, target) binding for conflicts.
    pub fn observe(&mut self, rec: &ArpRecord) -> ArpAnalysis {
        let mut duplicate = None;
        let mut in_summary = false;
        if rec.operation == ARP_REQUEST || rec.operation == ARP_REPLY {
            if binding_usable(&rec.sender_mac, &rec.sender_ip) {
                in_summary = self.check(rec.sender_ip, rec.sender_mac, &mut duplicate);
            }
            let already = duplicate.is_some_and(|d: ArpDuplicate| d.ip.octets() == rec.target_ip);
            if rec.operation != ARP_REQUEST && binding_usable(&rec.target_mac, &rec.target_ip) && !already {
                in_summary = self.check(rec.target_ip, rec.target_mac, &mut duplicate);
            }
        }
        ArpAnalysis {
            kind: ArpKind::of(rec),
            duplicate,
            duplicate_in_summary: in_summary,
            ..ArpAnalysis::default()
        }
    }

    fn check(&mut self, ip: [u8; 4], mac: [u8; 6], found: &mut Option<ArpDuplicate>) -> bool {
        match self.macs.get(&ip) {
            Some(known) if *known == mac => false,
            Some(known) => {
                *found = Some(ArpDuplicate {
                    ip: Ipv4Addr::from(ip),
                    previous_mac: *known,
                });
                true
            }
            None => {
                while self.macs.len() >= self.max_entries {
                    let Some(old) = self.order.pop_front() else {
                        break;
                    };
                    self.macs.remove(&old);
                }
                self.macs.insert(ip, mac);
                self.order.push_back(ip);
                false
            }
        }
    }
}

fn binding_usable(mac: &[u8; 6], ip: &[u8; 4]) -> bool {
    mac[0] & 0x01 == 0 && *mac != ZERO_MAC && *ip != [0; 4]
}

/// The request a reply answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Answer {
    /// Frame number of the request's last try before the reply.
    pub request_frame: u64,
    /// Time from that try to the reply, in nanoseconds.
    pub response_ns: u64,
    /// How many times the request was sent.
    pub tries: u32,
    /// Whether an earlier reply already answered it (two hosts answering: one of them holds a duplicate).
    pub again: bool,
}

/// A request given up: no reply within [`GIVE_UP_NS`] of its last try, or none by exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unanswered {
    /// Boot-time nanoseconds when it was given up.
    pub ts_ns: u64,
    /// Interface index of the requests.
    pub ifindex: u32,
    /// The asking address (0.0.0.0 for probes).
    pub sender_ip: Ipv4Addr,
    /// The address asked for.
    pub target_ip: Ipv4Addr,
    /// How many times it was asked.
    pub tries: u32,
    /// Frame number of the first try.
    pub first_frame: u64,
    /// Frame number of the last try.
    pub last_frame: u64,
}

/// An egress SYN that left right after the ARP reply resolving its destination: it waited on the resolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ResolutionWait {
    /// The address resolved.
    pub target: Ipv4Addr,
    /// From the first request to the SYN, in nanoseconds.
    pub wait_ns: u64,
    /// Frame number of the first request.
    pub request_frame: u64,
    /// Frame number of the reply.
    pub reply_frame: u64,
}

/// Counters for the exit summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArpCounts {
    /// Request and probe packets.
    pub requests: u64,
    /// Questions (a request and its retries) answered.
    pub answered: u64,
    /// Questions given up.
    pub unanswered: u64,
    /// Requests repeating an unanswered question.
    pub retries: u64,
    /// Plain replies.
    pub replies: u64,
    /// Replies that answer no request seen.
    pub unsolicited: u64,
    /// Gratuitous requests and replies (announcements not included).
    pub gratuitous: u64,
    /// Announcements.
    pub announcements: u64,
    /// Probes.
    pub probes: u64,
    /// Packets showing an IP address with a second MAC.
    pub duplicates: u64,
    /// Questions forgotten unanswered because too many were pending.
    pub evicted: u64,
}

/// (interface index, asking IP, asked IP).
type Question = (u32, [u8; 4], [u8; 4]);

#[derive(Clone, Copy, Debug)]
struct Pending {
    first_ts: u64,
    last_ts: u64,
    first_frame: u64,
    last_frame: u64,
    tries: u32,
}

#[derive(Clone, Copy, Debug)]
struct Resolution {
    question: Question,
    request: Pending,
    reply_ts: u64,
    reply_frame: u64,
    /// A segment came back from the resolved address: SYNs sent from now on did not wait in its queue.
    answered: bool,
}

/// Observer's ARP analysis: Wireshark's duplicate table plus request/reply pairing, retries, give-ups and the
/// neighbour changes waiting for the reply that caused them. Memory is bounded.
#[derive(Debug)]
pub struct ArpTracker {
    wireshark: ArpState,
    pending: FastMap<Question, Pending>,
    max_pending: usize,
    given_up: Vec<Unanswered>,
    resolved: VecDeque<Resolution>,
    neigh: VecDeque<NeighChange>,
    neigh_due: Vec<NeighChange>,
    counts: ArpCounts,
}

impl Default for ArpTracker {
    fn default() -> Self {
        Self::new(DEFAULT_ARP_ENTRIES, DEFAULT_PENDING)
    }
}

/// Neighbour changes held for a reply at most.
const NEIGH_HELD: usize = 256;
/// A neighbour change this soon after a reply about that address was caused by it. Generous: a change is stamped
/// from the kernel's own age of the entry, but a message without it is stamped when the agent reads it, which a
/// loaded machine delays (the next change of a resolved entry comes tens of seconds later, when it goes stale).
pub const NEIGH_CLOSE_NS: u64 = 1_000_000_000;
/// How much earlier than the reply that caused it a neighbour change may be stamped: the kernel tells an entry's
/// age in 10 ms ticks counted from jiffies, so the stamp can fall up to a tick before the update.
const NEIGH_EARLY_NS: u64 = 10_000_000;

/// Whether a neighbour change stamped `change_ns` can have been caused by a reply at `reply_ns`.
fn caused(change_ns: u64, reply_ns: u64) -> bool {
    change_ns.saturating_add(NEIGH_EARLY_NS) >= reply_ns && change_ns <= reply_ns.saturating_add(NEIGH_CLOSE_NS)
}
/// How long a neighbour change waits for its reply before it is printed on its own: the linker's hold plus a
/// margin for its flush tick.
pub const NEIGH_HOLD_NS: u64 = 300_000_000;

impl ArpTracker {
    /// A tracker remembering `max_entries` address bindings and `max_pending` unanswered questions.
    pub fn new(max_entries: usize, max_pending: usize) -> Self {
        ArpTracker {
            wireshark: ArpState::new(max_entries),
            pending: FastMap::default(),
            max_pending: max_pending.max(1),
            given_up: Vec::new(),
            resolved: VecDeque::new(),
            neigh: VecDeque::new(),
            neigh_due: Vec::new(),
            counts: ArpCounts::default(),
        }
    }

    /// Analyses one packet, which the analyzer numbered `frame`.
    pub fn observe(&mut self, rec: &ArpRecord, frame: u64) -> ArpAnalysis {
        let mut a = self.wireshark.observe(rec);
        a.frame = frame;
        let ts = rec.header.ts_ns;
        self.counts.duplicates += u64::from(a.duplicate.is_some());
        match a.kind {
            ArpKind::Request | ArpKind::Probe => {
                self.counts.requests += 1;
                self.counts.probes += u64::from(a.kind == ArpKind::Probe);
                a.retry = self.ask((rec.header.ifindex, rec.sender_ip, rec.target_ip), ts, frame);
            }
            ArpKind::Reply => {
                self.counts.replies += 1;
                a.answers = self.answer((rec.header.ifindex, rec.target_ip, rec.sender_ip), ts, frame);
                self.counts.unsolicited += u64::from(a.answers.is_none());
                a.neigh = self.take_neigh(rec.header.ifindex, rec.sender_ip, ts);
            }
            ArpKind::Gratuitous => self.counts.gratuitous += 1,
            ArpKind::Announcement => self.counts.announcements += 1,
            ArpKind::Other => {}
        }
        a
    }

    /// Records a try of `q`; returns how many earlier tries went unanswered.
    fn ask(&mut self, q: Question, ts: u64, frame: u64) -> u32 {
        if let Some(p) = self.pending.get_mut(&q) {
            if ts.saturating_sub(p.last_ts) <= GIVE_UP_NS {
                p.tries += 1;
                p.last_ts = ts;
                p.last_frame = frame;
                self.counts.retries += 1;
                return p.tries - 1;
            }
            let old = *p;
            self.give_up(q, old, old.last_ts.saturating_add(GIVE_UP_NS));
        }
        if self.pending.len() >= self.max_pending
            && let Some((&oldest, _)) = self.pending.iter().min_by_key(|(_, p)| p.last_ts)
        {
            self.pending.remove(&oldest);
            self.counts.evicted += 1;
        }
        let p = Pending {
            first_ts: ts,
            last_ts: ts,
            first_frame: frame,
            last_frame: frame,
            tries: 1,
        };
        self.pending.insert(q, p);
        0
    }

    fn answer(&mut self, q: Question, ts: u64, frame: u64) -> Option<Answer> {
        let (request, again) = match self.pending.remove(&q) {
            Some(p) => {
                self.counts.answered += 1;
                if self.resolved.len() >= RECENT_RESOLUTIONS {
                    self.resolved.pop_front();
                }
                self.resolved.push_back(Resolution {
                    question: q,
                    request: p,
                    reply_ts: ts,
                    reply_frame: frame,
                    answered: false,
                });
                (p, false)
            }
            None => {
                let r = self
                    .resolved
                    .iter()
                    .rev()
                    .find(|r| r.question == q && ts.saturating_sub(r.reply_ts) <= GIVE_UP_NS)?;
                (r.request, true)
            }
        };
        Some(Answer {
            request_frame: request.last_frame,
            response_ns: ts.saturating_sub(request.last_ts),
            tries: request.tries,
            again,
        })
    }

    fn give_up(&mut self, q: Question, p: Pending, ts_ns: u64) {
        self.pending.remove(&q);
        self.counts.unanswered += 1;
        self.given_up.push(Unanswered {
            ts_ns,
            ifindex: q.0,
            sender_ip: Ipv4Addr::from(q.1),
            target_ip: Ipv4Addr::from(q.2),
            tries: p.tries,
            first_frame: p.first_frame,
            last_frame: p.last_frame,
        });
    }

    /// The questions given up by `now_ns` (boot time), oldest first.
    pub fn expire(&mut self, now_ns: u64) -> Vec<Unanswered> {
        let due: Vec<(Question, Pending)> = self
            .pending
            .iter()
            .filter(|(_, p)| now_ns.saturating_sub(p.last_ts) > GIVE_UP_NS)
            .map(|(q, p)| (*q, *p))
            .collect();
        for (q, p) in due {
            self.give_up(q, p, p.last_ts.saturating_add(GIVE_UP_NS));
        }
        let mut out = std::mem::take(&mut self.given_up);
        out.sort_by_key(|u| u.ts_ns);
        out
    }

    /// At exit: every question still waiting is given up at `now_ns`, oldest first.
    pub fn finish(&mut self, now_ns: u64) -> Vec<Unanswered> {
        let all: Vec<(Question, Pending)> = self.pending.iter().map(|(q, p)| (*q, *p)).collect();
        for (q, p) in all {
            let ts = now_ns.min(p.last_ts.saturating_add(GIVE_UP_NS));
            self.give_up(q, p, ts);
        }
        self.expire(now_ns)
    }

    /// For an egress IPv4 SYN: the resolution it waited on, when the ARP reply for its destination came just
    /// before it and nothing came back from that address since (SYNs queued on an unresolved neighbour leave
    /// together the moment the reply arrives; a SYN sent after an answer from the peer did not wait).
    /// Every TCP segment passes through here, so that an answer from the peer closes the resolution.
    pub fn resolution_wait(&mut self, rec: &TcpRecord) -> Option<ResolutionWait> {
        if rec.ip_version != 4 {
            return None;
        }
        let egress = rec.header.direction == DIR_EGRESS;
        let addr = if egress { &rec.daddr } else { &rec.saddr };
        let peer = [addr[0], addr[1], addr[2], addr[3]];
        let ts = rec.header.ts_ns;
        let r = self
            .resolved
            .iter_mut()
            .rev()
            .find(|r| r.question.0 == rec.header.ifindex && r.question.2 == peer)?;
        if !egress {
            r.answered = true;
            return None;
        }
        let syn = rec.flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
        if !syn || r.answered || ts < r.reply_ts || ts - r.reply_ts > RESOLUTION_SLACK_NS {
            return None;
        }
        Some(ResolutionWait {
            target: Ipv4Addr::from(peer),
            wait_ns: ts.saturating_sub(r.request.first_ts),
            request_frame: r.request.first_frame,
            reply_frame: r.reply_frame,
        })
    }

    /// Holds a neighbour change until the reply that caused it is observed, or [`NEIGH_HOLD_NS`] passes.
    pub fn hold_neigh(&mut self, change: NeighChange) {
        if self.neigh.len() >= NEIGH_HELD
            && let Some(old) = self.neigh.pop_front()
        {
            // Pushed out of a full queue: printed on its own like an expired one.
            self.neigh_due.push(old);
        }
        self.neigh.push_back(change);
    }

    fn take_neigh(&mut self, ifindex: u32, ip: [u8; 4], ts: u64) -> Option<NeighChange> {
        let i = self
            .neigh
            .iter()
            .position(|c| c.ifindex == ifindex && c.ip.octets() == ip && caused(c.ts_ns, ts))?;
        self.neigh.remove(i)
    }

    /// Neighbour changes no reply claimed by `now_ns`, each with the frame of a reply about that address seen
    /// shortly before it (rendered before the change arrived), oldest first.
    pub fn due_neigh(&mut self, now_ns: u64) -> Vec<(NeighChange, Option<u64>)> {
        let mut out = std::mem::take(&mut self.neigh_due);
        while self
            .neigh
            .front()
            .is_some_and(|c| now_ns.saturating_sub(c.ts_ns) >= NEIGH_HOLD_NS)
        {
            if let Some(c) = self.neigh.pop_front() {
                out.push(c);
            }
        }
        out.into_iter()
            .map(|c| {
                let after = self
                    .resolved
                    .iter()
                    .rev()
                    .find(|r| r.question.0 == c.ifindex && r.question.2 == c.ip.octets() && caused(c.ts_ns, r.reply_ts))
                    .map(|r| r.reply_frame);
                (c, after)
            })
            .collect()
    }

    /// Every held neighbour change, at exit.
    pub fn finish_neigh(&mut self) -> Vec<(NeighChange, Option<u64>)> {
        self.due_neigh(u64::MAX)
    }

    /// The counters so far.
    pub fn counts(&self) -> ArpCounts {
        self.counts
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::sys::neigh::NeighState;
    use observer_common::record::{HOOK_XDP, KIND_ARP};

    const BOOT_NS: u64 = 5_000_000_000;
    const MS: u64 = 1_000_000;

    pub(crate) const A: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 1];
    pub(crate) const B: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 2];
    pub(crate) const BC: [u8; 6] = [0xff; 6];
    pub(crate) const Z: [u8; 6] = ZERO_MAC;

    pub(crate) fn arp(
        eth: ([u8; 6], [u8; 6]),
        op: u16,
        smac: [u8; 6],
        sip: [u8; 4],
        tmac: [u8; 6],
        tip: [u8; 4],
    ) -> ArpRecord {
        let mut r = ArpRecord::default();
        r.header.kind = KIND_ARP;
        r.header.ts_ns = BOOT_NS;
        r.header.wire_len = 60;
        r.header.hook = HOOK_XDP;
        r.header.eth_src = eth.0;
        r.header.eth_dst = eth.1;
        r.operation = op;
        r.sender_mac = smac;
        r.sender_ip = sip;
        r.target_mac = tmac;
        r.target_ip = tip;
        r
    }

    pub(crate) const IP1: [u8; 4] = [192, 168, 1, 1];
    pub(crate) const IP2: [u8; 4] = [192, 168, 1, 2];
    pub(crate) const IP5: [u8; 4] = [192, 168, 1, 5];
    pub(crate) const IP9: [u8; 4] = [192, 168, 1, 9];

    fn at(mut r: ArpRecord, ms: u64) -> ArpRecord {
        r.header.ts_ns = BOOT_NS + ms * MS;
        r
    }

    #[test]
    fn arp_duplicates_keep_the_first_mac() {
        let mut state = ArpState::default();
        state.observe(&arp((A, BC), 1, A, IP1, Z, IP2));
        let a = state.observe(&arp((B, BC), 1, B, IP1, Z, IP2));
        let dup = ArpDuplicate {
            ip: Ipv4Addr::from(IP1),
            previous_mac: A,
        };
        assert_eq!((a.duplicate, a.duplicate_in_summary), (Some(dup), true));
        let a = state.observe(&arp((B, A), 2, B, IP1, A, IP5));
        assert_eq!((a.duplicate, a.duplicate_in_summary), (Some(dup), false));
        let a = state.observe(&arp((A, BC), 1, A, IP1, Z, IP2));
        assert_eq!(a.duplicate, None);
        // Target binding of a reply conflicting with the first-seen MAC.
        let a = state.observe(&arp((A, B), 2, A, IP2, B, IP1));
        assert_eq!((a.duplicate, a.duplicate_in_summary), (Some(dup), true));
    }

    #[test]
    fn arp_state_is_capped() {
        let mut state = ArpState::new(2);
        state.observe(&arp((A, BC), 1, A, IP1, Z, IP2));
        state.observe(&arp((A, BC), 1, A, IP2, Z, IP1));
        state.observe(&arp((A, BC), 1, A, IP5, Z, IP1));
        assert_eq!(state.len(), 2);
        let a = state.observe(&arp((B, BC), 1, B, IP1, Z, IP2));
        assert_eq!(a.duplicate, None, "the oldest binding was forgotten");
    }

    #[test]
    fn replies_answer_requests_with_the_response_time() {
        let mut t = ArpTracker::default();
        let a = t.observe(&at(arp((A, BC), 1, A, IP1, Z, IP2), 0), 3);
        assert_eq!((a.answers, a.retry), (None, 0));
        let a = t.observe(&at(arp((B, A), 2, B, IP2, A, IP1), 1), 4);
        let answer = Answer {
            request_frame: 3,
            response_ns: MS,
            tries: 1,
            again: false,
        };
        assert_eq!(a.answers, Some(answer));
        // A second host answering the same question: the duplicate's reply.
        let a = t.observe(&at(arp((A, A), 2, A, IP2, A, IP1), 2), 5);
        assert_eq!(
            a.answers.map(|x| (x.request_frame, x.response_ns, x.again)),
            Some((3, 2 * MS, true))
        );
        // A reply to nobody's question.
        let a = t.observe(&at(arp((B, A), 2, B, IP5, A, IP1), 3), 6);
        assert_eq!(a.answers, None);
        let c = t.counts();
        assert_eq!((c.requests, c.answered, c.replies, c.unsolicited), (1, 1, 3, 1));
        assert!(t.expire(BOOT_NS + 10_000 * MS).is_empty());
    }

    #[test]
    fn retries_are_counted_and_given_up_once() {
        let mut t = ArpTracker::default();
        let ask = |ms| at(arp((A, BC), 1, A, IP1, Z, IP9), ms);
        assert_eq!(t.observe(&ask(0), 1).retry, 0);
        assert_eq!(t.observe(&ask(1000), 2).retry, 1);
        let a = t.observe(&ask(2000), 3);
        assert_eq!(a.retry, 2);
        assert!(t.expire(BOOT_NS + 2000 * MS + GIVE_UP_NS).is_empty(), "not yet");
        let gone = t.expire(BOOT_NS + 2001 * MS + GIVE_UP_NS);
        let want = Unanswered {
            ts_ns: BOOT_NS + 2000 * MS + GIVE_UP_NS,
            ifindex: 0,
            sender_ip: Ipv4Addr::from(IP1),
            target_ip: Ipv4Addr::from(IP9),
            tries: 3,
            first_frame: 1,
            last_frame: 3,
        };
        assert_eq!(gone, vec![want]);
        assert!(t.expire(u64::MAX).is_empty(), "reported once");
        // Asked again much later: a new question, the old one (if still pending) given up first.
        assert_eq!(t.observe(&ask(10_000), 4).retry, 0);
        assert_eq!(t.observe(&ask(20_000), 5).retry, 0);
        let gone = t.finish(BOOT_NS + 20_500 * MS);
        assert_eq!(gone.iter().map(|u| u.first_frame).collect::<Vec<_>>(), [4, 5]);
        assert_eq!(gone[1].ts_ns, BOOT_NS + 20_500 * MS, "at exit: given up now");
        let c = t.counts();
        assert_eq!((c.requests, c.retries, c.unanswered, c.answered), (5, 2, 3, 0));
    }

    #[test]
    fn probes_pair_and_announcements_count() {
        let mut t = ArpTracker::default();
        let a = t.observe(&arp((A, BC), 1, A, [0; 4], Z, IP2), 1);
        assert_eq!(a.kind, ArpKind::Probe);
        // Linux answers a probe with target IP 0.0.0.0.
        let a = t.observe(&arp((B, A), 2, B, IP2, A, [0; 4]), 2);
        assert_eq!(a.answers.map(|x| x.request_frame), Some(1));
        t.observe(&arp((A, BC), 1, A, IP1, Z, IP1), 3);
        t.observe(&arp((A, BC), 2, A, IP1, BC, IP1), 4);
        let c = t.counts();
        assert_eq!((c.probes, c.answered, c.announcements, c.gratuitous), (1, 1, 1, 1));
        assert!(t.finish(BOOT_NS).is_empty());
    }

    #[test]
    fn pending_questions_are_capped() {
        let mut t = ArpTracker::new(16, 2);
        for (i, ip) in [IP2, IP5, IP9].into_iter().enumerate() {
            t.observe(&at(arp((A, BC), 1, A, IP1, Z, ip), i as u64), i as u64 + 1);
        }
        assert_eq!(t.counts().evicted, 1);
        assert_eq!(t.finish(BOOT_NS + 10 * MS).len(), 2);
    }

    fn syn(ms: u64, dst: [u8; 4]) -> TcpRecord {
        let mut r = TcpRecord::default();
        r.header.ts_ns = BOOT_NS + ms * MS;
        r.header.direction = DIR_EGRESS;
        r.ip_version = 4;
        r.daddr[..4].copy_from_slice(&dst);
        r.flags = TCP_SYN;
        r
    }

    #[test]
    fn a_syn_right_after_the_reply_waited_on_resolution() {
        let mut t = ArpTracker::default();
        t.observe(&at(arp((A, BC), 1, A, IP1, Z, IP2), 0), 1);
        t.observe(&at(arp((B, A), 2, B, IP2, A, IP1), 1), 2);
        let w = t.resolution_wait(&syn(1, IP2)).expect("waited");
        assert_eq!(
            w,
            ResolutionWait {
                target: Ipv4Addr::from(IP2),
                wait_ns: MS,
                request_frame: 1,
                reply_frame: 2
            }
        );
        assert_eq!(t.resolution_wait(&syn(1, IP5)), None, "another destination");
        assert_eq!(t.resolution_wait(&syn(100, IP2)), None, "long after the reply");
        let mut synack = syn(1, IP2);
        synack.flags |= TCP_ACK;
        assert_eq!(t.resolution_wait(&synack), None);
        let mut ingress = syn(1, IP2);
        ingress.header.direction = 0;
        assert_eq!(t.resolution_wait(&ingress), None);
        assert!(
            t.resolution_wait(&syn(2, IP2)).is_some(),
            "a second SYN of the queued burst waited too"
        );
        let mut answer = syn(2, IP1);
        answer.header.direction = 0;
        answer.saddr[..4].copy_from_slice(&IP2);
        answer.flags = TCP_SYN | TCP_ACK;
        assert_eq!(t.resolution_wait(&answer), None);
        assert_eq!(
            t.resolution_wait(&syn(3, IP2)),
            None,
            "sent after the peer answered: no wait"
        );
    }

    fn change(ms: u64, ip: [u8; 4]) -> NeighChange {
        NeighChange {
            ts_ns: BOOT_NS + ms * MS,
            ifindex: 0,
            ip: Ipv4Addr::from(ip),
            lladdr: Some(B),
            old: Some(NeighState::INCOMPLETE),
            state: NeighState::REACHABLE,
            deleted: false,
        }
    }

    #[test]
    fn neighbour_changes_join_their_reply_or_stand_alone() {
        let mut t = ArpTracker::default();
        t.observe(&at(arp((A, BC), 1, A, IP1, Z, IP2), 0), 1);
        // The notification is read before the held reply is rendered.
        t.hold_neigh(change(2, IP2));
        t.hold_neigh(change(2, IP9));
        let a = t.observe(&at(arp((B, A), 2, B, IP2, A, IP1), 1), 2);
        assert_eq!(a.neigh, Some(change(2, IP2)));
        assert!(t.due_neigh(BOOT_NS + 2 * MS).is_empty(), "held a while");
        assert_eq!(
            t.due_neigh(BOOT_NS + 2 * MS + NEIGH_HOLD_NS),
            vec![(change(2, IP9), None)]
        );
        // Read after its reply was rendered: its own line, naming the reply.
        t.hold_neigh(change(3, IP2));
        assert_eq!(t.finish_neigh(), vec![(change(3, IP2), Some(2))]);
    }
}
