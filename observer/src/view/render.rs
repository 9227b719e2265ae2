//! Text lines and JSON objects for TCP and ARP records, with tshark's Info column as the summary.
//!
//! The summaries follow Wireshark's `packet-tcp.c` and `packet-arp.c` and were checked against tshark 4.0:
//! - TCP: `<sport> → <dport> [<flags>] Seq= [Ack=] Win= [Urg=] Len=` then option tokens in wire order.
//!   Flags are named from the lowest bit up (FIN, SYN, RST, PSH, ACK, URG, ECE, CWR), `<None>` when none.
//!   A window whose scale is unknown is followed by `*` (observer's mark; tshark shows the raw window alone).
//! - ARP: gratuitous (sender IP = target IP) before announcement (gratuitous request, target MAC zero), probe
//!   (request from 0.0.0.0 to a zero target MAC, tshark 4.0's rule) and the plain cases; the duplicate-address
//!   note is appended as Wireshark does, including its quirk that a later, clean check of the target clears it.

mod analysis;
mod tcp_json;

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use observer_common::record::{
    ARP_REPLY, ARP_REQUEST, ArpRecord, DIR_EGRESS, DIR_INGRESS, HOOK_TC_EGRESS, HOOK_TC_INGRESS, HOOK_XDP,
    MAX_VLAN_TAGS, OPT_MSS, OPT_SACK, OPT_SACK_PERM, OPT_TIMESTAMP, OPT_WSCALE, OPTKIND_MSS, OPTKIND_SACK,
    OPTKIND_SACK_PERM, OPTKIND_TIMESTAMP, OPTKIND_WSCALE, RecordHeader, TCP_URG, TcpRecord,
};
use serde::Serialize;

#[cfg(test)]
use observer_common::record::{OPT_UNKNOWN, TCP_ACK};

use crate::model::analyzer::{Arp, Item, Segment};
use crate::model::arp::{Answer, ArpAnalysis, ArpKind, Unanswered};
use crate::model::events::{tcp_dst, tcp_src};
use crate::model::flows::{MAX_WINDOW_SHIFT, TcpAnalysis, WindowScaling};
use crate::model::fold::Folded;
use crate::model::link::{Fate, KernelNote, ListenerView, NoteKind, SocketLink, StateChange};
use crate::sys::neigh::NeighChange;
use crate::sys::sockets::process::Owner;
use crate::view::names::MacNames;
use crate::view::{notes, summary};

/// TCP option kind of the MD5 signature, which tshark names without a value.
const OPTKIND_MD5: u8 = 19;
const NS_PER_SEC: i64 = 1_000_000_000;

/// Why the wall clock could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    /// `clock_gettime` failed for the named clock.
    #[error("clock_gettime({clock}) failed")]
    Read {
        /// Name of the clock.
        clock: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Converts boot-time nanoseconds (`bpf_ktime_get_boot_ns`) to wall-clock time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    offset_ns: i64,
    local: bool,
}

impl Clock {
    /// Reads `CLOCK_REALTIME − CLOCK_BOOTTIME` now; text times are in local time.
    pub fn new() -> Result<Self, ClockError> {
        let realtime = read_clock(libc::CLOCK_REALTIME, "CLOCK_REALTIME")?;
        let boottime = read_clock(libc::CLOCK_BOOTTIME, "CLOCK_BOOTTIME")?;
        Ok(Clock {
            offset_ns: realtime - boottime,
            local: true,
        })
    }

    /// A clock with a fixed `CLOCK_REALTIME − CLOCK_BOOTTIME` offset whose text times are in UTC.
    pub fn utc_with_offset(offset_ns: i64) -> Self {
        Clock {
            offset_ns,
            local: false,
        }
    }

    /// Unix time in nanoseconds of a boot-time timestamp.
    pub fn wall_ns(&self, ts_ns: u64) -> i64 {
        i64::try_from(ts_ns).unwrap_or(i64::MAX).saturating_add(self.offset_ns)
    }

    /// `HH:MM:SS.micro` of a boot-time timestamp, in local time for [`Clock::new`], else UTC.
    pub fn time_of_day(&self, ts_ns: u64) -> String {
        let mut s = String::with_capacity(15);
        self.write_time_of_day(&mut s, ts_ns);
        s
    }

    /// Appends [`Clock::time_of_day`] to `out`.
    pub fn write_time_of_day(&self, out: &mut String, ts_ns: u64) {
        let wall = self.wall_ns(ts_ns);
        let secs = wall.div_euclid(NS_PER_SEC);
        let micros = wall.rem_euclid(NS_PER_SEC) / 1000;
        let day_secs = if self.local {
            local_seconds_of_day(secs).unwrap_or_else(|| secs.rem_euclid(86_400))
        } else {
            secs.rem_euclid(86_400)
        };
        // Writing into a String cannot fail.
        let _ = write!(
            out,
            "{:02}:{:02}:{:02}.{:06}",
            day_secs / 3600,
            day_secs / 60 % 60,
            day_secs % 60,
            micros
        );
    }

    /// RFC 3339 UTC time with microseconds, e.g. `2024-05-06T07:08:09.123456Z`.
    pub fn rfc3339(&self, ts_ns: u64) -> String {
        let mut s = String::with_capacity(27);
        // Writing into a String cannot fail.
        let _ = self.write_rfc3339(&mut s, ts_ns);
        s
    }

    /// Writes [`Clock::rfc3339`] into `out`.
    pub fn write_rfc3339(&self, out: &mut impl std::fmt::Write, ts_ns: u64) -> std::fmt::Result {
        let wall = self.wall_ns(ts_ns);
        let secs = wall.div_euclid(NS_PER_SEC);
        let micros = wall.rem_euclid(NS_PER_SEC) / 1000;
        let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
        let day_secs = secs.rem_euclid(86_400);
        write!(
            out,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
            day_secs / 3600,
            day_secs / 60 % 60,
            day_secs % 60
        )
    }
}

fn read_clock(id: libc::clockid_t, clock: &'static str) -> Result<i64, ClockError> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid, writable timespec.
    if unsafe { libc::clock_gettime(id, &mut ts) } != 0 {
        return Err(ClockError::Read {
            clock,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(ts.tv_sec * NS_PER_SEC + ts.tv_nsec)
}

fn local_seconds_of_day(unix_secs: i64) -> Option<i64> {
    let t = libc::time_t::try_from(unix_secs).ok()?;
    // SAFETY: an all-zero tm is a valid value to be overwritten.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call; localtime_r is thread-safe.
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        return None;
    }
    Some(i64::from(tm.tm_hour) * 3600 + i64::from(tm.tm_min) * 60 + i64::from(tm.tm_sec))
}

/// Proleptic Gregorian (year, month, day) of days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A MAC address as lower-case colon-separated hex.
pub fn fmt_mac(mac: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
    )
}

/// `in` or `out` for a `RecordHeader::direction`.
pub fn direction_name(direction: u8) -> &'static str {
    match direction {
        DIR_INGRESS => "in",
        DIR_EGRESS => "out",
        _ => "unknown",
    }
}

/// `tc` or `xdp` for a `RecordHeader::hook`.
pub fn hook_name(hook: u8) -> &'static str {
    match hook {
        HOOK_TC_INGRESS | HOOK_TC_EGRESS => "tc",
        HOOK_XDP => "xdp",
        _ => "unknown",
    }
}

fn vlan_ids(h: &RecordHeader) -> Vec<u16> {
    h.vlan_ids[..usize::from(h.vlan_count).min(MAX_VLAN_TAGS)].to_vec()
}

const TCP_FLAG_NAMES: [&str; 8] = ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"];

/// A duration in milliseconds to the microsecond, as every observer annotation prints it: `0.034 ms`.
pub fn fmt_ms(ns: u64) -> String {
    format!("{}.{:03} ms", ns / 1_000_000, ns / 1_000 % 1_000)
}

/// Names of the set TCP flags in Wireshark's order and spelling.
pub fn tcp_flag_names(flags: u8) -> Vec<&'static str> {
    TCP_FLAG_NAMES
        .iter()
        .enumerate()
        .filter(|(bit, _)| flags & (1 << bit) != 0)
        .map(|(_, name)| *name)
        .collect()
}

/// tshark's Info column for a TCP segment.
pub fn tcp_summary(rec: &TcpRecord, a: &TcpAnalysis) -> String {
    let mut s = String::new();
    // Writing into a String cannot fail.
    let _ = write_tcp_summary(&mut s, rec, a);
    s
}

/// Writes [`tcp_summary`] into `s`.
fn write_tcp_summary(s: &mut impl std::fmt::Write, rec: &TcpRecord, a: &TcpAnalysis) -> std::fmt::Result {
    a.expert.write_prefix(s)?;
    write!(s, "{} → {} [", rec.sport, rec.dport)?;
    let mut names = TCP_FLAG_NAMES
        .iter()
        .enumerate()
        .filter(|(bit, _)| rec.flags & (1 << bit) != 0)
        .map(|(_, name)| *name);
    match names.next() {
        None => s.write_str("<None>")?,
        Some(first) => {
            s.write_str(first)?;
            for name in names {
                s.write_str(", ")?;
                s.write_str(name)?;
            }
        }
    }
    write!(s, "] Seq={}", a.seq)?;
    if let Some(ack) = a.ack {
        write!(s, " Ack={ack}")?;
    }
    write!(s, " Win={}", a.window)?;
    if a.scaling == WindowScaling::Unknown {
        s.write_char('*')?;
    }
    if rec.flags & TCP_URG != 0 {
        write!(s, " Urg={}", rec.urgent)?;
    }
    write!(s, " Len={}", rec.payload_len)?;
    for &kind in rec.option_kinds() {
        match kind {
            OPTKIND_MSS if rec.options & OPT_MSS != 0 => {
                write!(s, " MSS={}", rec.mss)?;
            }
            OPTKIND_WSCALE if rec.options & OPT_WSCALE != 0 => {
                write!(s, " WS={}", 1u32 << rec.wscale.min(MAX_WINDOW_SHIFT))?;
            }
            OPTKIND_SACK_PERM if rec.options & OPT_SACK_PERM != 0 => s.write_str(" SACK_PERM")?,
            OPTKIND_TIMESTAMP if rec.options & OPT_TIMESTAMP != 0 => {
                write!(s, " TSval={} TSecr={}", rec.tsval, rec.tsecr)?;
            }
            OPTKIND_SACK if rec.options & OPT_SACK != 0 => {
                for b in a.sack_blocks() {
                    write!(s, " SLE={} SRE={}", b.left, b.right)?;
                }
            }
            OPTKIND_MD5 => s.write_str(" MD5")?,
            _ => {}
        }
    }
    Ok(())
}

/// The text line of a TCP segment: `<time> <iface> <in|out> <src> → <dst> TCP <len> <summary>[ · <note>]...`.
pub fn tcp_line(clock: &Clock, iface: &str, rec: &TcpRecord, a: &TcpAnalysis) -> String {
    let mut s = String::new();
    write_tcp_head(&mut s, clock, iface, rec, a);
    write_annotations(&mut s, &tcp_annotations(a));
    s
}

/// Appends the part of a TCP line tshark would print: everything before observer's annotations.
fn write_tcp_head(s: &mut String, clock: &Clock, iface: &str, rec: &TcpRecord, a: &TcpAnalysis) {
    clock.write_time_of_day(s, rec.header.ts_ns);
    // Writing into a String cannot fail.
    let _ = write!(
        s,
        " {iface} {} {} → {} TCP {} ",
        direction_name(rec.header.direction),
        tcp_src(rec),
        tcp_dst(rec),
        rec.header.wire_len,
    );
    let _ = write_tcp_summary(s, rec, a);
}

/// Observer's SACK notes after the Info: `holes L-R,L-R` on an ACK, `fills hole L-R` on data.
pub fn tcp_annotations(a: &TcpAnalysis) -> Vec<String> {
    let mut out = Vec::new();
    if !a.holes.is_empty() {
        let holes: Vec<String> = a
            .holes
            .ranges()
            .iter()
            .map(|h| format!("{}-{}", h.left, h.right))
            .collect();
        out.push(format!("holes {}", holes.join(",")));
    }
    out.extend(a.fills_hole.map(|h| format!("fills hole {}-{}", h.left, h.right)));
    out
}

/// A segment's socket side, the text after `⇒` (empty when nothing is known):
/// `LISTEN 10.0.0.1:80 synq 1 accept 0/128 nginx(42) DROPPED: ...` or `SYN_RECV→ESTABLISHED curl(7)`.
pub fn socket_side(link: &SocketLink) -> String {
    let mut out = String::new();
    write_socket_side(&mut out, link);
    out
}

/// Appends a segment's socket side, as [`socket_side`] has it, to `out`.
pub fn write_socket_side(out: &mut String, link: &SocketLink) {
    let start = out.len();
    let space = |out: &mut String| {
        if out.len() > start {
            out.push(' ');
        }
    };
    if let Some(l) = &link.listener {
        write_listener(out, l);
    }
    if let Some(first) = link.transitions.first() {
        space(out);
        out.push_str(first.0.name());
        for t in &link.transitions {
            out.push('→');
            out.push_str(t.1.name());
        }
    } else if link.listener.is_none()
        && let Some(s) = link.state
    {
        space(out);
        out.push_str(s.name());
    }
    if let Some(o) = &link.owner {
        space(out);
        let _ = write!(out, "{}({})", o.comm, o.pid);
    }
    match link.fate {
        Some(Fate::Dropped(r)) => {
            space(out);
            out.push_str("DROPPED: ");
            out.push_str(r.text());
        }
        Some(Fate::Syncookie) => {
            space(out);
            out.push_str("answered with a syncookie (SyncookiesSent +1)");
        }
        _ => {}
    }
}

/// `LISTEN <addr> synq <n> accept <n>/<limit or ?>`.
fn listener_text(l: &ListenerView) -> String {
    let mut out = String::new();
    write_listener(&mut out, l);
    out
}

/// Appends [`listener_text`] to `out`.
fn write_listener(out: &mut String, l: &ListenerView) {
    let _ = write!(out, "LISTEN {} synq {} accept {}/", l.addr, l.synq, l.accept);
    match l.limit {
        Some(n) => {
            let _ = write!(out, "{n}");
        }
        None => out.push('?'),
    }
}

/// A kernel note's JSON `event`.
pub fn note_event(kind: NoteKind) -> &'static str {
    match kind {
        NoteKind::SynackRetransmit => "synack_retransmit",
        NoteKind::Retransmit => "retransmit",
        NoteKind::ResetSent => "reset_sent",
        NoteKind::ResetReceived => "reset_received",
        NoteKind::RcvqFull => "rcvq_full",
        NoteKind::Drop => "drop",
    }
}

/// What a kernel note says happened: `segment retransmitted in ESTABLISHED`, `RST sent in SYN_SENT (reason)` ...
pub fn note_text(note: &KernelNote) -> String {
    let in_state = note.state.map(|s| format!(" in {}", s.name())).unwrap_or_default();
    let reason = note.reason.as_deref().unwrap_or("?");
    match note.kind {
        NoteKind::SynackRetransmit => "SYN-ACK retransmitted".to_owned(),
        NoteKind::Retransmit => format!("segment retransmitted{in_state}"),
        NoteKind::ResetSent => format!("RST sent{in_state} ({reason})"),
        NoteKind::ResetReceived => format!("RST received{in_state}"),
        NoteKind::RcvqFull => "receive queue full, segment dropped".to_owned(),
        NoteKind::Drop => format!("segment dropped{in_state} ({reason})"),
    }
}

/// A wire item's comment in the pcapng file: its annotations and socket side as the text line shows them
/// (`fills hole 1-2 ⇒ ESTABLISHED curl(42)`); `None` when there is neither, or when the item is no packet.
pub fn packet_comment_of(item: &Item<'_>) -> Option<String> {
    match item {
        Item::Segment(s) => {
            let mut notes = tcp_annotations(s.analysis);
            notes.extend(s.wait.as_ref().map(notes::resolution_wait));
            let side = s.link.map(socket_side).filter(|t| !t.is_empty());
            packet_comment(&notes, side.as_deref())
        }
        Item::Arp(a) => packet_comment(&arp_annotations(a.analysis), None),
        _ => None,
    }
}

fn packet_comment(notes: &[String], side: Option<&str>) -> Option<String> {
    let mut c = notes.join(" · ");
    if let Some(side) = side {
        if !c.is_empty() {
            c.push_str(" ⇒ ");
        }
        c.push_str(side);
    }
    (!c.is_empty()).then_some(c)
}

/// JSON `win_scale`: `"unknown"`, `"none"` or the shift.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum WinScaleJson {
    /// `"unknown"` or `"none"`.
    Word(&'static str),
    /// The shift applied.
    Shift(u8),
}

impl From<WindowScaling> for WinScaleJson {
    fn from(s: WindowScaling) -> Self {
        match s {
            WindowScaling::Unknown => WinScaleJson::Word("unknown"),
            WindowScaling::NoScaling => WinScaleJson::Word("none"),
            WindowScaling::Shift(n) => WinScaleJson::Shift(n),
        }
    }
}

/// One SACK block in JSON, relative edges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SackJson {
    /// Left edge.
    pub sle: u32,
    /// Right edge.
    pub sre: u32,
}

/// The fields every JSON record has (schema in the README).
#[derive(Clone, Debug, Serialize)]
pub struct CommonJson<'a> {
    /// RFC 3339 UTC wall time with microseconds.
    pub time: String,
    /// Boot-time nanoseconds from the kernel.
    pub ts_ns: u64,
    /// Interface name.
    pub iface: &'a str,
    /// `in` or `out`.
    pub direction: &'static str,
    /// `tc` or `xdp`.
    pub hook: &'static str,
    /// VLAN ids, outer first.
    pub vlan: Vec<u16>,
    /// `tcp` or `arp`.
    pub proto: &'static str,
    /// TCP: source address; ARP: Ethernet source MAC.
    pub src: String,
    /// TCP: destination address; ARP: Ethernet destination MAC.
    pub dst: String,
    /// Frame length.
    pub len: u32,
    /// tshark's Info text.
    pub summary: String,
    /// 1-based frame number (tshark's for the same packet in our pcapng).
    pub frame: u64,
}

impl<'a> CommonJson<'a> {
    fn new(
        clock: &Clock,
        iface: &'a str,
        (h, frame): (&RecordHeader, u64),
        proto: &'static str,
        ends: (String, String),
        summary: String,
    ) -> Self {
        CommonJson {
            frame,
            time: clock.rfc3339(h.ts_ns),
            ts_ns: h.ts_ns,
            iface,
            direction: direction_name(h.direction),
            hook: hook_name(h.hook),
            vlan: vlan_ids(h),
            proto,
            src: ends.0,
            dst: ends.1,
            len: h.wire_len,
            summary,
        }
    }
}

/// The JSON object of a TCP segment as a struct (schema in the README): the reference that
/// `tcp_json::write_tcp_json`, which writes the same object without building it, is tested against.
#[cfg(test)]
#[derive(Clone, Debug, Serialize)]
pub struct TcpJson<'a> {
    /// The fields every record has.
    #[serde(flatten)]
    pub common: CommonJson<'a>,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Flag names.
    pub flags: Vec<&'static str>,
    /// Relative sequence number.
    pub seq: u32,
    /// Relative acknowledgement number, null without ACK.
    pub ack: Option<u32>,
    /// Absolute sequence number.
    pub seq_abs: u32,
    /// Absolute acknowledgement number, null without ACK.
    pub ack_abs: Option<u32>,
    /// Calculated window.
    pub win: u32,
    /// Raw window field.
    pub win_raw: u16,
    /// Scaling applied to `win_raw`.
    pub win_scale: WinScaleJson,
    /// TCP payload length.
    pub payload_len: u16,
    /// MSS option value.
    pub mss: Option<u16>,
    /// Window scale option shift as sent.
    pub wscale: Option<u8>,
    /// SACK-permitted option present.
    pub sack_perm: bool,
    /// Timestamp option TSval.
    pub tsval: Option<u32>,
    /// Timestamp option TSecr.
    pub tsecr: Option<u32>,
    /// SACK blocks, relative.
    pub sack: Vec<SackJson>,
    /// An option of an undecoded kind was present.
    pub unknown_options: bool,
    /// Wireshark's expert texts without brackets, in Info order.
    pub expert: Vec<String>,
    /// Holes this ACK's SACK blocks leave above its ack, relative.
    pub sack_holes: Vec<HoleJson>,
    /// The hole of the receiver's latest SACK this segment's data falls into.
    pub fills_hole: Option<HoleJson>,
}

/// A sequence range `[left, right)` in JSON, relative.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct HoleJson {
    /// First missing sequence number.
    pub left: u32,
    /// One past the last missing sequence number.
    pub right: u32,
}

impl From<observer_common::record::SackBlock> for HoleJson {
    fn from(b: observer_common::record::SackBlock) -> Self {
        HoleJson {
            left: b.left,
            right: b.right,
        }
    }
}

/// Builds the reference JSON object of a TCP segment; serialize it with `serde_json`.
#[cfg(test)]
pub fn tcp_json<'a>(clock: &Clock, iface: &'a str, rec: &TcpRecord, a: &TcpAnalysis) -> TcpJson<'a> {
    let has = |bit: u8| rec.options & bit != 0;
    let has_ack = rec.flags & TCP_ACK != 0;
    let ends = (tcp_src(rec).to_string(), tcp_dst(rec).to_string());
    TcpJson {
        common: CommonJson::new(clock, iface, (&rec.header, a.frame), "tcp", ends, tcp_summary(rec, a)),
        sport: rec.sport,
        dport: rec.dport,
        flags: tcp_flag_names(rec.flags),
        seq: a.seq,
        ack: a.ack,
        seq_abs: rec.seq,
        ack_abs: has_ack.then_some(rec.ack),
        win: a.window,
        win_raw: rec.window,
        win_scale: a.scaling.into(),
        payload_len: rec.payload_len,
        mss: has(OPT_MSS).then_some(rec.mss),
        wscale: has(OPT_WSCALE).then_some(rec.wscale),
        sack_perm: has(OPT_SACK_PERM),
        tsval: has(OPT_TIMESTAMP).then_some(rec.tsval),
        tsecr: has(OPT_TIMESTAMP).then_some(rec.tsecr),
        sack: a
            .sack_blocks()
            .iter()
            .map(|b| SackJson {
                sle: b.left,
                sre: b.right,
            })
            .collect(),
        unknown_options: has(OPT_UNKNOWN),
        expert: a.expert.texts(),
        sack_holes: a.holes.ranges().iter().map(|&h| h.into()).collect(),
        fills_hole: a.fills_hole.map(HoleJson::from),
    }
}

/// Wireshark's protocol column for an ARP operation.
pub fn arp_protocol(operation: u16) -> &'static str {
    match operation {
        3 | 4 => "RARP",
        5..=7 => "DRARP",
        8 | 9 => "Inverse ARP",
        11..=22 => "MARS",
        23 => "MAPOS",
        _ => "ARP",
    }
}

/// tshark's Info column for an ARP packet.
pub fn arp_summary(rec: &ArpRecord, a: &ArpAnalysis) -> String {
    let sip = Ipv4Addr::from(rec.sender_ip);
    let tip = Ipv4Addr::from(rec.target_ip);
    let sha = fmt_mac(&rec.sender_mac);
    let tha = fmt_mac(&rec.target_mac);
    let op = rec.operation;
    let mut s = match (op, a.kind) {
        (ARP_REQUEST, ArpKind::Announcement) => format!("ARP Announcement for {tip}"),
        (ARP_REQUEST, ArpKind::Gratuitous) => format!("Gratuitous ARP for {tip} (Request)"),
        (ARP_REQUEST, ArpKind::Probe) => format!("Who has {tip}? (ARP Probe)"),
        (ARP_REQUEST, _) => format!("Who has {tip}? Tell {sip}"),
        (ARP_REPLY, ArpKind::Gratuitous) => format!("Gratuitous ARP for {sip} (Reply)"),
        (ARP_REPLY, _) => format!("{sip} is at {sha}"),
        (3 | 5 | 8, _) => format!("Who is {tha}? Tell {sha}"),
        (4 | 6, _) => format!("{tha} is at {tip}"),
        (7, _) => "DRARP Error".to_owned(),
        (9, _) => format!("{sha} is at {sip}"),
        (10, _) => "ARP NAK".to_owned(),
        (11..=23, _) => format!("{} from {sha} at {sip}", mars_name(op)),
        (24, _) => format!("Experimental 1 ( opcode {op} )"),
        (25, _) => format!("Experimental 2 ( opcode {op} )"),
        (0 | 65535, _) => format!("Reserved opcode {op}"),
        _ => format!("Unknown ARP opcode 0x{op:04x}"),
    };
    if let (true, Some(d)) = (a.duplicate_in_summary, a.duplicate) {
        let _ = write!(s, " (duplicate use of {} detected!)", d.ip);
    }
    s
}

fn mars_name(op: u16) -> &'static str {
    match op {
        11 => "MARS request",
        12 => "MARS MULTI request",
        13 => "MARS MSERV request",
        14 => "MARS JOIN request",
        15 => "MARS LEAVE",
        16 => "MARS NAK",
        17 => "MARS UNSERV request",
        18 => "MARS SJOIN request",
        19 => "MARS SLEAVE",
        20 => "MARS grouplist request",
        21 => "MARS grouplist reply",
        22 => "MARS redirect map",
        _ => "MAPOS UNARP request",
    }
}

/// The text line of an ARP packet: `<time> <iface> <in|out> <eth src> → <eth dst> ARP <len> <summary>`, the
/// Ethernet addresses named as Wireshark's columns name them (`VMware_c0:00:08 → Broadcast`).
pub fn arp_line(clock: &Clock, iface: &str, names: &MacNames, rec: &ArpRecord, a: &ArpAnalysis) -> String {
    format!(
        "{} {iface} {} {} → {} {} {} {}",
        clock.time_of_day(rec.header.ts_ns),
        direction_name(rec.header.direction),
        names.name(&rec.header.eth_src),
        names.name(&rec.header.eth_dst),
        arp_protocol(rec.operation),
        rec.header.wire_len,
        arp_summary(rec, a)
    ) + &annotations(&arp_annotations(a))
}

/// Observer's analysis of an ARP packet, in line order: the request answered, the retry, the neighbour entry.
pub fn arp_annotations(a: &ArpAnalysis) -> Vec<String> {
    let mut out = Vec::new();
    out.extend(a.answers.as_ref().map(notes::answer));
    out.extend(notes::retry(a.retry));
    out.extend(a.neigh.as_ref().map(notes::neigh));
    out
}

/// ` · a · b` for annotations `[a, b]`, empty for none.
pub fn annotations(list: &[String]) -> String {
    let mut s = String::new();
    write_annotations(&mut s, list);
    s
}

/// Appends [`annotations`] to `s`.
fn write_annotations(s: &mut String, list: &[String]) {
    for a in list {
        s.push_str(" · ");
        s.push_str(a);
    }
}

/// JSON `operation`: `"request"`, `"reply"` or the number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ArpOperationJson {
    /// `"request"` or `"reply"`.
    Word(&'static str),
    /// Any other operation code.
    Code(u16),
}

/// The JSON object of an ARP packet (schema in the README).
#[derive(Clone, Debug, Serialize)]
pub struct ArpJson<'a> {
    /// The fields every record has.
    #[serde(flatten)]
    pub common: CommonJson<'a>,
    /// The Ethernet source as Wireshark's Source column names it (tshark's `eth.src_resolved`).
    pub src_resolved: String,
    /// The Ethernet destination, named the same way (`eth.dst_resolved`).
    pub dst_resolved: String,
    /// Operation.
    pub operation: ArpOperationJson,
    /// Sender MAC.
    pub sender_mac: String,
    /// Sender IP.
    pub sender_ip: String,
    /// Target MAC.
    pub target_mac: String,
    /// Target IP.
    pub target_ip: String,
    /// Request, reply, gratuitous, announcement, probe or other.
    pub kind: &'static str,
    /// The MAC first seen with an IP this packet claims for another MAC.
    pub duplicate_of: Option<String>,
    /// For a reply: the request it answers.
    pub answers: Option<Answer>,
    /// For a request: earlier unanswered tries of the same question.
    pub retry: u32,
    /// The neighbour entry this reply created or refreshed.
    pub neigh: Option<NeighJson>,
}

/// A neighbour entry in JSON: on an ARP object (`neigh`) and in a `neigh` line.
#[derive(Clone, Debug, Serialize)]
pub struct NeighJson {
    /// The neighbour's address.
    pub ip: Ipv4Addr,
    /// Its link-layer address, null when unknown.
    pub lladdr: Option<String>,
    /// Its state now, as `ip neigh` names it.
    pub state: String,
    /// Its state before, null when the entry was new to observer.
    pub old_state: Option<String>,
    /// Whether the entry was deleted.
    pub deleted: bool,
}

impl From<&NeighChange> for NeighJson {
    fn from(c: &NeighChange) -> Self {
        NeighJson {
            ip: c.ip,
            lladdr: c.lladdr.map(|m| fmt_mac(&m)),
            state: c.state.name(),
            old_state: c.old.map(|o| o.name()),
            deleted: c.deleted,
        }
    }
}

/// Builds the JSON object of an ARP packet; serialize it with `serde_json`.
pub fn arp_json<'a>(clock: &Clock, iface: &'a str, names: &MacNames, rec: &ArpRecord, a: &ArpAnalysis) -> ArpJson<'a> {
    let ends = (fmt_mac(&rec.header.eth_src), fmt_mac(&rec.header.eth_dst));
    ArpJson {
        common: CommonJson::new(clock, iface, (&rec.header, a.frame), "arp", ends, arp_summary(rec, a)),
        src_resolved: names.name(&rec.header.eth_src),
        dst_resolved: names.name(&rec.header.eth_dst),
        operation: match rec.operation {
            ARP_REQUEST => ArpOperationJson::Word("request"),
            ARP_REPLY => ArpOperationJson::Word("reply"),
            other => ArpOperationJson::Code(other),
        },
        sender_mac: fmt_mac(&rec.sender_mac),
        sender_ip: Ipv4Addr::from(rec.sender_ip).to_string(),
        target_mac: fmt_mac(&rec.target_mac),
        target_ip: Ipv4Addr::from(rec.target_ip).to_string(),
        kind: a.kind.name(),
        duplicate_of: a.duplicate.map(|d| fmt_mac(&d.previous_mac)),
        answers: a.answers,
        retry: a.retry,
        neigh: a.neigh.as_ref().map(NeighJson::from),
    }
}

/// The fields every line of observer's own (kernel, analysis, neighbour) starts with.
#[derive(Clone, Debug, Serialize)]
pub struct LineHead {
    /// RFC 3339 UTC wall time with microseconds.
    pub time: String,
    /// Boot-time nanoseconds of what the line reports.
    pub ts_ns: u64,
    /// `kernel`, `analysis` or `neigh`.
    pub proto: &'static str,
}

impl LineHead {
    /// The head of a `proto` line about boot time `ts_ns`.
    pub fn new(clock: &Clock, ts_ns: u64, proto: &'static str) -> Self {
        LineHead {
            time: clock.rfc3339(ts_ns),
            ts_ns,
            proto,
        }
    }
}

/// The JSON object of a `neigh` line (schema in the README).
#[derive(Clone, Debug, Serialize)]
pub struct NeighLineJson<'a> {
    /// When observer read the change; proto `neigh`.
    #[serde(flatten)]
    pub head: LineHead,
    /// Interface name.
    pub iface: &'a str,
    /// The entry.
    #[serde(flatten)]
    pub entry: NeighJson,
    /// Frame number of the ARP reply shortly before it, if any.
    pub after_frame: Option<u64>,
    /// The text line after the time.
    pub summary: String,
}

/// The JSON object of an ARP question given up (schema in the README).
#[derive(Clone, Debug, Serialize)]
pub struct ArpUnansweredJson<'a> {
    /// When it was given up; proto `analysis`.
    #[serde(flatten)]
    pub head: LineHead,
    /// Always `arp_unanswered`.
    pub event: &'static str,
    /// Interface name.
    pub iface: &'a str,
    /// The asking address.
    pub sender_ip: Ipv4Addr,
    /// The address asked for.
    pub target_ip: Ipv4Addr,
    /// How many times it was asked.
    pub tries: u32,
    /// Frame number of the first try.
    pub first_frame: u64,
    /// Frame number of the last try.
    pub last_frame: u64,
    /// The text line after the time and interface.
    pub summary: String,
}

/// Formats the model's items as text or JSON lines: the interface name, the clock and the mode, no analysis state.
#[derive(Debug)]
pub struct Renderer {
    iface: String,
    ifindex: u32,
    json: bool,
    clock: Clock,
    names: MacNames,
}

impl Renderer {
    /// A renderer for records of interface `iface` (index `ifindex`, 0 if unknown), as text or JSON lines.
    ///
    /// Text times are local; if the clocks cannot be read, times are boot time shown as UTC.
    pub fn new(iface: &str, ifindex: u32, json: bool) -> Self {
        Renderer {
            iface: iface.to_owned(),
            ifindex,
            json,
            clock: Clock::new().unwrap_or(Clock::utc_with_offset(0)),
            names: MacNames::builtin(),
        }
    }

    /// Replaces the MAC address names (the built-in table's by default).
    pub fn with_names(mut self, names: MacNames) -> Self {
        self.names = names;
        self
    }

    /// Replaces the clock.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }
}

/// The JSON object of a `folded` line (schema in the README).
#[derive(Clone, Debug, Serialize)]
pub struct FoldedJson {
    /// The last folded segment's time; proto `folded`.
    #[serde(flatten)]
    pub head: LineHead,
    /// The flow's lower endpoint (address, then port).
    pub lo: String,
    /// Its higher endpoint.
    pub hi: String,
    /// Data segments folded since the flow's previous folded line.
    pub packets: u64,
    /// Their TCP payload bytes.
    pub bytes: u64,
    /// Those of them the kernel counted as retransmitted.
    pub retransmits: u64,
    /// Boot-time ns of the first of them.
    pub from_ns: u64,
    /// The packet ring's high-water mark in bytes: folding happens while more than this waits unread.
    pub high_water: u64,
    /// The text line's description.
    pub summary: String,
}

/// The JSON object of a kernel line (schema in the README).
#[derive(Clone, Debug, Serialize)]
pub struct KernelJson<'a> {
    /// The kernel's time of the event; proto `kernel`.
    #[serde(flatten)]
    pub head: LineHead,
    /// `state` for a state change, else the event (`synack_retransmit`, `reset_sent` ...).
    pub event: &'a str,
    /// Local address and port, when known.
    pub local: Option<String>,
    /// Remote address and port, when known.
    pub remote: Option<String>,
    /// State before (state changes only).
    pub old: Option<&'static str>,
    /// State after (state changes only).
    pub new: Option<&'static str>,
    /// The text line's description.
    pub summary: String,
    /// The owning process, when known.
    pub process: Option<&'a Owner>,
    /// The listener's queues, for events on a listener.
    pub listener: Option<&'a ListenerView>,
}

impl Renderer {
    fn iface_of(&self, ifindex: u32) -> std::borrow::Cow<'_, str> {
        if self.ifindex == 0 || ifindex == self.ifindex {
            std::borrow::Cow::Borrowed(&self.iface)
        } else {
            std::borrow::Cow::Owned(ifindex.to_string())
        }
    }

    /// Appends an item's line to `out` (a segment's followed by the analysis lines it completes, each after a
    /// newline); a data segment without annotations or socket side allocates nothing once `out` has room.
    pub fn write_item(&self, out: &mut String, item: &Item<'_>) {
        match item {
            Item::Segment(s) => self.write_segment(out, s),
            Item::Arp(a) => out.push_str(&self.arp(a)),
            Item::State { change, owner } => out.push_str(&self.state(change, *owner)),
            Item::Note(note) => out.push_str(&self.note(note)),
            Item::Folded { flow, high_water } => out.push_str(&self.folded(flow, *high_water)),
            Item::Unanswered(u) => out.push_str(&self.unanswered_line(u)),
            Item::Neigh { change, after } => out.push_str(&self.neigh_line(change, *after)),
            Item::Handshake(h) => out.push_str(&analysis::handshake(&self.clock, h, self.json)),
            Item::Summary(a) if self.json => out.push_str(&summary::accounts_json(&self.clock, a).to_string()),
            Item::Summary(a) => out.push_str(&summary::accounts_text(a)),
        }
    }

    /// An item's line, as [`Renderer::write_item`] writes it.
    pub fn line(&self, item: &Item<'_>) -> String {
        let mut out = String::new();
        self.write_item(&mut out, item);
        out
    }

    fn write_segment(&self, out: &mut String, s: &Segment<'_>) {
        let (rec, a) = (s.rec, s.analysis);
        let iface = self.iface_of(rec.header.ifindex);
        if self.json {
            let start = out.len();
            if let Err(e) = tcp_json::write_tcp_json(out, &self.clock, &iface, (rec, a), s.link, s.wait) {
                out.truncate(start);
                out.push_str(&json_text(Err(e)));
            }
        } else {
            let mut notes = tcp_annotations(a);
            notes.extend(s.wait.as_ref().map(notes::resolution_wait));
            write_tcp_head(out, &self.clock, &iface, rec, a);
            write_annotations(out, &notes);
            if let Some(link) = s.link {
                let mark = out.len();
                out.push_str(" ⇒ ");
                let side = out.len();
                write_socket_side(out, link);
                if out.len() == side {
                    out.truncate(mark);
                }
            }
        }
        let events = a
            .handshake
            .iter()
            .chain(s.abandoned)
            .map(|h| analysis::handshake(&self.clock, h, self.json))
            .chain(a.teardown.iter().map(|t| analysis::teardown(&self.clock, t, self.json)));
        for line in events {
            out.push('\n');
            out.push_str(&line);
        }
    }

    /// An ARP packet's line.
    fn arp(&self, item: &Arp<'_>) -> String {
        let (rec, a) = (item.rec, item.analysis);
        let iface = self.iface_of(rec.header.ifindex);
        if !self.json {
            return arp_line(&self.clock, &iface, &self.names, rec, a);
        }
        json_text(serde_json::to_value(arp_json(&self.clock, &iface, &self.names, rec, a)))
    }

    /// `<time> arp <iface> Who has <ip>? Tell <ip> · unanswered after 3 tries, #1 to #5`.
    fn unanswered_line(&self, u: &Unanswered) -> String {
        let iface = self.iface_of(u.ifindex);
        let summary = format!(
            "Who has {}? Tell {} · {}, #{} to #{}",
            u.target_ip,
            u.sender_ip,
            notes::unanswered(u),
            u.first_frame,
            u.last_frame
        );
        if !self.json {
            return format!("{} arp {iface} {summary}", self.clock.time_of_day(u.ts_ns));
        }
        json_text(serde_json::to_value(ArpUnansweredJson {
            head: LineHead::new(&self.clock, u.ts_ns, "analysis"),
            event: "arp_unanswered",
            iface: &iface,
            sender_ip: u.sender_ip,
            target_ip: u.target_ip,
            tries: u.tries,
            first_frame: u.first_frame,
            last_frame: u.last_frame,
            summary,
        }))
    }

    /// `<time> neigh <ip> <lladdr|-> <STATE> <dev>[ · after #<reply frame>]`.
    fn neigh_line(&self, c: &NeighChange, after: Option<u64>) -> String {
        let iface = self.iface_of(c.ifindex);
        let lladdr = c.lladdr.map_or_else(|| "-".to_owned(), |m| fmt_mac(&m));
        let mut summary = format!("{} {lladdr} {} {iface}", c.ip, c.state_text());
        if let Some(f) = after {
            let _ = write!(summary, " · after #{f}");
        }
        if !self.json {
            return format!("{} neigh {summary}", self.clock.time_of_day(c.ts_ns));
        }
        json_text(serde_json::to_value(NeighLineJson {
            head: LineHead::new(&self.clock, c.ts_ns, "neigh"),
            iface: &iface,
            entry: c.into(),
            after_frame: after,
            summary,
        }))
    }

    /// The line of a state change no captured segment explains: `<time> kernel <local> ↔ <remote> <OLD>→<NEW>`.
    fn state(&self, change: &StateChange, owner: Option<&Owner>) -> String {
        let summary = format!("{}→{}", change.old.name(), change.new.name());
        let j = KernelJson {
            head: LineHead::new(&self.clock, change.ts_ns, "kernel"),
            event: "state",
            local: Some(change.tuple.local.to_string()),
            remote: Some(change.tuple.remote.to_string()),
            old: Some(change.old.name()),
            new: Some(change.new.name()),
            summary,
            process: owner,
            listener: None,
        };
        self.kernel_line(&j, "↔")
    }

    /// The line of a flow's folded data segments: `<time> folded <lo> ↔ <hi> <n> data segments, <b> bytes ...`.
    fn folded(&self, f: &Folded, high_water: u64) -> String {
        let summary = format!(
            "{} data segments ({} retransmitted), {} bytes in {} not printed one by one: more than {} KiB of the \
             packet ring was unread",
            f.packets,
            f.retransmits,
            f.bytes,
            fmt_ms(f.to_ns.saturating_sub(f.from_ns)),
            high_water >> 10
        );
        if self.json {
            return json_text(serde_json::to_value(FoldedJson {
                head: LineHead::new(&self.clock, f.to_ns, "folded"),
                lo: f.lo.to_string(),
                hi: f.hi.to_string(),
                packets: f.packets,
                bytes: f.bytes,
                retransmits: f.retransmits,
                from_ns: f.from_ns,
                high_water,
                summary,
            }));
        }
        format!(
            "{} folded {} ↔ {} {summary}",
            self.clock.time_of_day(f.to_ns),
            f.lo,
            f.hi
        )
    }

    /// The line of another kernel event: `<time> kernel <local> → <remote> <what>`.
    fn note(&self, note: &KernelNote) -> String {
        let j = KernelJson {
            head: LineHead::new(&self.clock, note.ts_ns, "kernel"),
            event: note_event(note.kind),
            local: note.tuple.map(|t| t.local.to_string()),
            remote: note.tuple.map(|t| t.remote.to_string()),
            old: None,
            new: None,
            summary: note_text(note),
            process: None,
            listener: note.listener.as_ref(),
        };
        self.kernel_line(&j, "→")
    }

    fn kernel_line(&self, j: &KernelJson, arrow: &str) -> String {
        if self.json {
            return json_text(serde_json::to_value(j));
        }
        let mut line = format!("{} kernel", self.clock.time_of_day(j.head.ts_ns));
        if let (Some(l), Some(r)) = (&j.local, &j.remote) {
            let _ = write!(line, " {l} {arrow} {r}");
        }
        let _ = write!(line, " {}", j.summary);
        if let Some(o) = j.process {
            let _ = write!(line, " {}({})", o.comm, o.pid);
        }
        if let Some(l) = j.listener {
            let _ = write!(line, " ⇒ {}", listener_text(l));
        }
        line
    }
}

fn json_text(v: serde_json::Result<serde_json::Value>) -> String {
    match v {
        Ok(v) => v.to_string(),
        Err(e) => serde_json::json!({ "error": e.to_string() }).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::model::analyzer::Analyzer;
    use crate::model::arp::ArpTracker;
    use crate::model::flows::FlowTable;
    use crate::view::pcapng::PcapngWriter;
    use crate::view::sink::Sink;

    /// A wire record's pcapng comment, as the pcapng view writes it.
    #[derive(Clone, Debug, PartialEq, Eq)]
    struct Written {
        comment: Option<String>,
    }

    /// The item's packet block in the pcapng view, with its comment, when the view wrote one.
    fn written(pcap: &mut PcapngWriter<Vec<u8>>, item: &Item<'_>) -> Option<Written> {
        let before = pcap.taken();
        pcap.item(item).expect("writing to memory");
        (pcap.taken() > before).then(|| Written {
            comment: packet_comment_of(item),
        })
    }

    /// The analyzer, the renderer and the pcapng view together, as `watch` drives them, one line per call.
    struct Pipeline {
        analyzer: Analyzer,
        renderer: Renderer,
        pcap: PcapngWriter<Vec<u8>>,
        /// The last wire item's comment, unless it was a loopback copy.
        written: Option<Written>,
    }

    impl Pipeline {
        fn new(iface: &str, ifindex: u32, json: bool) -> Self {
            Pipeline {
                analyzer: Analyzer::default(),
                renderer: Renderer::new(iface, ifindex, json),
                pcap: PcapngWriter::new(
                    Vec::new(),
                    std::path::Path::new("test.pcapng"),
                    Clock::utc_with_offset(0),
                )
                .expect("a pcapng writer in memory"),
                written: None,
            }
        }

        fn with_clock(mut self, clock: Clock) -> Self {
            self.renderer = self.renderer.with_clock(clock);
            self
        }

        fn with_loopback(mut self, loopback: bool) -> Self {
            self.analyzer = self.analyzer.with_loopback(loopback);
            self
        }

        fn flows(&self) -> &FlowTable {
            self.analyzer.flows()
        }

        fn arp_tracker(&self) -> &ArpTracker {
            self.analyzer.arp_tracker()
        }

        fn segment(&mut self, rec: &TcpRecord, link: Option<&SocketLink>) -> String {
            let item = self.analyzer.segment(rec, link, &[]);
            let written = written(&mut self.pcap, &item);
            let line = self.renderer.line(&item);
            self.written = written;
            line
        }

        fn arp(&mut self, rec: &ArpRecord) -> String {
            let item = self.analyzer.arp(rec, &[]);
            let written = written(&mut self.pcap, &item);
            let line = self.renderer.line(&item);
            self.written = written;
            line
        }

        fn neigh(&mut self, change: NeighChange) {
            self.analyzer.neigh(change);
        }

        fn arp_tick(&mut self, now_ns: u64) -> Vec<String> {
            let due = self.analyzer.tick(now_ns);
            due.iter().map(|d| self.renderer.line(&d.item())).collect()
        }

        fn arp_finish(&mut self, now_ns: u64) -> Vec<String> {
            let due = self.analyzer.finish_arp(now_ns);
            due.iter().map(|d| self.renderer.line(&d.item())).collect()
        }

        fn take_written(&mut self) -> Option<Written> {
            self.written.take()
        }

        fn state(&self, change: &StateChange, owner: Option<&Owner>) -> String {
            self.renderer.state(change, owner)
        }
    }
    use crate::model::flows::tests::{CLIENT, SERVER, linux_syn_options, seg};
    use observer_common::record::{OPTKIND_SACK, SackBlock, TCP_CWR, TCP_ECE, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN};

    const SYN: u8 = TCP_SYN;
    const ACK: u8 = TCP_ACK;
    const C: ([u8; 4], u16) = (CLIENT, 40000);
    const S: ([u8; 4], u16) = (SERVER, 80);
    /// 2023-11-14T22:13:20Z as Unix seconds.
    const WALL_SECS: i64 = 1_700_000_000;

    /// A UTC clock under which boot time 5 s reads 22:13:20.123456.
    fn clock() -> Clock {
        Clock::utc_with_offset(WALL_SECS * NS_PER_SEC - 5 * NS_PER_SEC + 123_456_789)
    }

    const BOOT_NS: u64 = 5_000_000_000;

    fn framed(mut r: TcpRecord, wire_len: u32, direction: u8) -> TcpRecord {
        r.header.ts_ns = BOOT_NS;
        r.header.wire_len = wire_len;
        r.header.direction = direction;
        r.header.hook = HOOK_TC_EGRESS;
        r
    }

    fn summaries(segments: &[TcpRecord]) -> Vec<String> {
        let mut flows = FlowTable::default();
        segments.iter().map(|r| tcp_summary(r, &flows.observe(r))).collect()
    }

    fn sack(mut r: TcpRecord, left: u32, right: u32) -> TcpRecord {
        r.options |= OPT_SACK;
        r.sack[0] = SackBlock { left, right };
        r.sack_count = 1;
        r.option_kinds[0] = OPTKIND_SACK;
        r.option_count = 1;
        r
    }

    #[test]
    fn connection_summaries_are_tsharks() {
        // Expected text is tshark 4.0's Info column for the same segments.
        let (ci, si) = (1_000_000u32, 3_000_000_000u32);
        let mut syn = seg(C, S, SYN, ci, 0, 64240, 0);
        linux_syn_options(&mut syn, 1460, 111, 0, 7);
        let mut synack = seg(S, C, SYN | ACK, si, ci + 1, 65160, 0);
        linux_syn_options(&mut synack, 1460, 222, 111, 8);
        let got = summaries(&[
            syn,
            synack,
            seg(C, S, ACK, ci + 1, si + 1, 4106, 0),
            seg(C, S, TCP_PSH | ACK, ci + 1, si + 1, 4106, 100),
            sack(seg(S, C, ACK, si + 1, ci + 101, 509, 0), ci + 201, ci + 301),
            seg(C, S, TCP_FIN | TCP_PSH | ACK, ci + 101, si + 1, 4106, 10),
            seg(S, C, TCP_FIN | ACK, si + 1, ci + 112, 509, 0),
            seg(C, S, ACK, ci + 112, si + 2, 4106, 0),
        ]);
        let want = [
            "40000 → 80 [SYN] Seq=0 Win=64240 Len=0 MSS=1460 SACK_PERM TSval=111 TSecr=0 WS=128",
            "80 → 40000 [SYN, ACK] Seq=0 Ack=1 Win=65160 Len=0 MSS=1460 SACK_PERM TSval=222 TSecr=111 WS=256",
            "40000 → 80 [ACK] Seq=1 Ack=1 Win=525568 Len=0",
            "40000 → 80 [PSH, ACK] Seq=1 Ack=1 Win=525568 Len=100",
            "80 → 40000 [ACK] Seq=1 Ack=101 Win=130304 Len=0 SLE=201 SRE=301",
            "40000 → 80 [FIN, PSH, ACK] Seq=101 Ack=1 Win=525568 Len=10",
            "80 → 40000 [FIN, ACK] Seq=1 Ack=112 Win=130304 Len=0",
            "40000 → 80 [ACK] Seq=112 Ack=2 Win=525568 Len=0",
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn full_lines() {
        let mut flows = FlowTable::default();
        let mut syn = framed(seg(C, S, SYN, 1_000_000, 0, 64240, 0), 74, DIR_EGRESS);
        linux_syn_options(&mut syn, 1460, 2_000_000_000, 0, 7);
        let a = flows.observe(&syn);
        assert_eq!(
            tcp_line(&clock(), "eth0", &syn, &a),
            "22:13:20.123456 eth0 out 10.0.0.1 → 10.0.0.2 TCP 74 40000 → 80 [SYN] Seq=0 Win=64240 Len=0 \
             MSS=1460 SACK_PERM TSval=2000000000 TSecr=0 WS=128"
        );
        let mut synack = framed(seg(S, C, SYN | ACK, 77, 1_000_001, 65160, 0), 74, DIR_INGRESS);
        linux_syn_options(&mut synack, 1400, 5, 2_000_000_000, 9);
        let a = flows.observe(&synack);
        assert_eq!(
            tcp_line(&clock(), "eth0", &synack, &a),
            "22:13:20.123456 eth0 in 10.0.0.2 → 10.0.0.1 TCP 74 80 → 40000 [SYN, ACK] Seq=0 Ack=1 Win=65160 \
             Len=0 MSS=1400 SACK_PERM TSval=5 TSecr=2000000000 WS=512"
        );
    }

    #[test]
    fn flag_spellings_and_mid_stream_marks() {
        let got = summaries(&[
            seg((CLIENT, 40001), S, SYN | TCP_ECE | TCP_CWR, 5, 0, 100, 0),
            seg((CLIENT, 40002), S, 0, 5, 0, 100, 0),
            {
                let mut r = seg((CLIENT, 40003), S, ACK | TCP_URG, 5, 9, 100, 1);
                r.urgent = 1;
                r
            },
            seg((CLIENT, 40004), S, TCP_RST, 5, 0, 0, 0),
            seg((CLIENT, 40005), S, TCP_RST | ACK, 5, 0, 0, 0),
            seg((CLIENT, 40006), S, TCP_FIN | TCP_PSH | TCP_URG, 5, 0, 0, 0),
        ]);
        let want = [
            "40001 → 80 [SYN, ECE, CWR] Seq=0 Win=100 Len=0",
            "40002 → 80 [<None>] Seq=1 Win=100* Len=0",
            "40003 → 80 [ACK, URG] Seq=1 Ack=1 Win=100* Urg=1 Len=1",
            "40004 → 80 [RST] Seq=1 Win=0* Len=0",
            "40005 → 80 [RST, ACK] Seq=1 Ack=1 Win=0* Len=0",
            "40006 → 80 [FIN, PSH, URG] Seq=1 Win=0* Urg=0 Len=0",
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn unknown_scale_prints_raw_window_with_star() {
        let got = summaries(&[
            seg(S, C, ACK, 5901, 7101, 4106, 0),
            sack(seg(S, C, ACK, 5901, 7106, 4106, 0), 7200, 7300),
        ]);
        assert_eq!(got[0], "80 → 40000 [ACK] Seq=1 Ack=1 Win=4106* Len=0");
        assert_eq!(got[1], "80 → 40000 [ACK] Seq=1 Ack=6 Win=4106* Len=0 SLE=100 SRE=200");
    }

    #[test]
    fn option_edge_cases() {
        let mut r = seg(C, S, SYN, 1, 0, 100, 0);
        r.options = OPT_WSCALE | OPT_UNKNOWN;
        r.wscale = 15;
        r.option_kinds[..3].copy_from_slice(&[OPTKIND_WSCALE, 19, 99]);
        r.option_count = 3;
        assert_eq!(summaries(&[r])[0], "40000 → 80 [SYN] Seq=0 Win=100 Len=0 WS=16384 MD5");
    }

    #[test]
    fn ipv6_line() {
        let mut r = seg(C, S, SYN, 100, 0, 64800, 0);
        r.ip_version = 6;
        r.saddr = "2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap().octets();
        r.daddr = "2001:db8:0:0:1::2".parse::<std::net::Ipv6Addr>().unwrap().octets();
        r.sport = 62000;
        r.dport = 443;
        r.options = OPT_MSS;
        r.mss = 1440;
        r.option_kinds[0] = OPTKIND_MSS;
        r.option_count = 1;
        let r = framed(r, 78, DIR_INGRESS);
        let a = FlowTable::default().observe(&r);
        assert_eq!(
            tcp_line(&clock(), "wlan0", &r, &a),
            "22:13:20.123456 wlan0 in 2001:db8::1 → 2001:db8::1:0:0:2 TCP 78 62000 → 443 [SYN] Seq=0 \
             Win=64800 Len=0 MSS=1440"
        );
    }

    #[test]
    fn tcp_json_fields() {
        let mut flows = FlowTable::default();
        let mut syn = framed(seg(C, S, SYN, 1000, 0, 64240, 0), 74, DIR_EGRESS);
        linux_syn_options(&mut syn, 1460, 111, 0, 8);
        syn.header.vlan_count = 1;
        syn.header.vlan_ids = [42, 0];
        let a = flows.observe(&syn);
        let v: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&tcp_json(&clock(), "eth0", &syn, &a)).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "time": "2023-11-14T22:13:20.123456Z", "ts_ns": BOOT_NS, "iface": "eth0",
                "direction": "out", "hook": "tc", "vlan": [42], "proto": "tcp",
                "src": "10.0.0.1", "dst": "10.0.0.2", "len": 74,
                "summary": "40000 → 80 [SYN] Seq=0 Win=64240 Len=0 MSS=1460 SACK_PERM TSval=111 TSecr=0 WS=256",
                "sport": 40000, "dport": 80, "flags": ["SYN"], "seq": 0, "ack": null,
                "seq_abs": 1000, "ack_abs": null, "win": 64240, "win_raw": 64240, "win_scale": "none",
                "payload_len": 0, "mss": 1460, "wscale": 8, "sack_perm": true, "tsval": 111, "tsecr": 0,
                "sack": [], "unknown_options": false,
                "frame": 1, "expert": [], "sack_holes": [], "fills_hole": null
            })
        );
        let mut synack = seg(S, C, SYN | ACK, 5000, 1001, 65160, 0);
        linux_syn_options(&mut synack, 1460, 222, 111, 8);
        flows.observe(&synack);
        let ack = sack(framed(seg(C, S, ACK, 1001, 5001, 4106, 0), 66, DIR_EGRESS), 5101, 5201);
        let a = flows.observe(&ack);
        let j = tcp_json(&clock(), "eth0", &ack, &a);
        assert_eq!(
            (j.win, j.win_raw, j.win_scale),
            (1_051_136, 4106, WinScaleJson::Shift(8))
        );
        assert_eq!((j.ack, j.ack_abs, &j.flags), (Some(1), Some(5001), &vec!["ACK"]));
        assert_eq!(j.sack, vec![SackJson { sle: 101, sre: 201 }]);
        let text = serde_json::to_string(&j).unwrap();
        assert!(text.contains(r#""win_scale":8"#), "{text}");
        let mid = seg((CLIENT, 1), S, ACK, 1, 1, 1, 0);
        let a = FlowTable::default().observe(&mid);
        let text = serde_json::to_string(&tcp_json(&clock(), "eth0", &mid, &a)).unwrap();
        assert!(text.contains(r#""win_scale":"unknown""#), "{text}");
    }

    use crate::model::arp::ArpState;
    use crate::model::arp::tests::{A, B, BC, IP1, IP2, IP5, IP9, Z, arp};

    #[test]
    fn duplicate_reply_summary_is_tsharks() {
        // Two hosts answer one request (both hold 192.168.1.2).
        let mut t = ArpTracker::default();
        let req = arp((A, BC), 1, A, IP1, Z, IP2);
        let r1 = arp((B, A), 2, B, IP2, A, IP1);
        const C: [u8; 6] = [0x02, 0xcc, 0, 0, 0, 3];
        let r2 = arp((C, A), 2, C, IP2, A, IP1);
        let texts: Vec<String> = [req, r1, r2]
            .iter()
            .enumerate()
            .map(|(i, p)| arp_summary(p, &t.observe(p, i as u64 + 1)))
            .collect();
        assert_eq!(
            texts,
            [
                "Who has 192.168.1.2? Tell 192.168.1.1",
                "192.168.1.2 is at 02:bb:00:00:00:02",
                // Wireshark's quirk: the clean check of the reply's target binding clears the Info note.
                "192.168.1.2 is at 02:cc:00:00:00:03"
            ]
        );
        assert_eq!(t.counts().duplicates, 1);
        // The second host asking: the sender check alone decides, and tshark prints the note.
        let ask = arp((C, BC), 1, C, IP2, Z, IP1);
        assert_eq!(
            arp_summary(&ask, &t.observe(&ask, 4)),
            "Who has 192.168.1.1? Tell 192.168.1.2 (duplicate use of 192.168.1.2 detected!)"
        );
    }

    #[test]
    fn a_reply_conflicting_with_the_first_mac_says_so() {
        let mut state = ArpState::default();
        state.observe(&arp((A, BC), 1, A, IP1, Z, IP2));
        state.observe(&arp((B, BC), 1, B, IP1, Z, IP2));
        let reply = arp((A, B), 2, A, IP2, B, IP1);
        assert_eq!(
            arp_summary(&reply, &state.observe(&reply)),
            "192.168.1.2 is at 02:aa:00:00:00:01 (duplicate use of 192.168.1.1 detected!)"
        );
    }

    /// Each scenario's `.tshark` file is tshark 4.0.17's Info column for the same segments
    /// (`model/flows/testdata/tshark_info.py` writes the pcap and runs tshark).
    #[test]
    fn expert_flags_match_tshark() {
        let cases = [
            (
                include_str!("../model/flows/testdata/expert_bulk.txt"),
                include_str!("../model/flows/testdata/expert_bulk.tshark"),
            ),
            (
                include_str!("../model/flows/testdata/expert_loss.txt"),
                include_str!("../model/flows/testdata/expert_loss.tshark"),
            ),
            (
                include_str!("../model/flows/testdata/expert_window_full.txt"),
                include_str!("../model/flows/testdata/expert_window_full.tshark"),
            ),
        ];
        for (scenario, want) in cases {
            let (segments, analyses) = crate::model::flows::tests::run_scenario(scenario);
            let got: Vec<String> = segments.iter().zip(&analyses).map(|(r, a)| tcp_summary(r, a)).collect();
            let want: Vec<&str> = want.lines().collect();
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g, w, "frame {}", i + 1);
            }
            assert_eq!(got.len(), want.len());
        }
    }

    #[test]
    fn arp_summaries_are_tsharks() {
        // Expected text is tshark 4.0's Info column for the same packets, in this order.
        let packets = [
            arp((A, BC), 1, A, IP1, Z, IP2),
            arp((B, A), 2, B, IP2, A, IP1),
            arp((A, BC), 1, A, IP1, BC, IP1),
            arp((A, BC), 1, A, IP1, Z, IP1),
            arp((A, BC), 2, A, IP1, BC, IP1),
            arp((A, BC), 2, A, IP1, Z, IP1),
            arp((A, BC), 1, A, [0; 4], Z, IP9),
            arp((A, BC), 1, A, [0; 4], A, IP9),
            arp((B, BC), 1, B, IP1, Z, IP2),
            arp((B, A), 2, B, IP1, A, IP5),
            arp((A, BC), 3, A, IP1, Z, IP2),
            arp((A, BC), 1, A, [0; 4], Z, [0; 4]),
        ];
        let want = [
            ("Who has 192.168.1.2? Tell 192.168.1.1", ArpKind::Request),
            ("192.168.1.2 is at 02:bb:00:00:00:02", ArpKind::Reply),
            ("Gratuitous ARP for 192.168.1.1 (Request)", ArpKind::Gratuitous),
            ("ARP Announcement for 192.168.1.1", ArpKind::Announcement),
            ("Gratuitous ARP for 192.168.1.1 (Reply)", ArpKind::Gratuitous),
            ("Gratuitous ARP for 192.168.1.1 (Reply)", ArpKind::Gratuitous),
            ("Who has 192.168.1.9? (ARP Probe)", ArpKind::Probe),
            ("Who has 192.168.1.9? Tell 0.0.0.0", ArpKind::Request),
            (
                "Who has 192.168.1.2? Tell 192.168.1.1 (duplicate use of 192.168.1.1 detected!)",
                ArpKind::Request,
            ),
            // tshark flags the conflict in the tree but the clean target check clears the Info note.
            ("192.168.1.1 is at 02:bb:00:00:00:02", ArpKind::Reply),
            ("Who is 00:00:00:00:00:00? Tell 02:aa:00:00:00:01", ArpKind::Other),
            ("ARP Announcement for 0.0.0.0", ArpKind::Announcement),
        ];
        let mut state = ArpState::default();
        for (i, (p, (text, kind))) in packets.iter().zip(want).enumerate() {
            let a = state.observe(p);
            assert_eq!((arp_summary(p, &a).as_str(), a.kind), (text, kind), "packet {}", i + 1);
        }
    }

    #[test]
    fn renderer_annotates_arp_and_prints_given_up_questions() {
        let mut text = Pipeline::new("eth0", 0, false).with_clock(clock());
        let ask = arp((A, BC), 1, A, IP1, Z, IP2);
        let mut retry = ask;
        retry.header.ts_ns += 1_000_000_000;
        text.arp(&ask);
        assert!(
            text.arp(&retry)
                .ends_with("Who has 192.168.1.2? Tell 192.168.1.1 · retry 1, unanswered")
        );
        text.neigh(NeighChange {
            ts_ns: retry.header.ts_ns + 300_000,
            ifindex: 0,
            ip: Ipv4Addr::from(IP2),
            lladdr: Some(B),
            old: Some(crate::sys::neigh::NeighState::INCOMPLETE),
            state: crate::sys::neigh::NeighState::REACHABLE,
            deleted: false,
        });
        let mut reply = arp((B, A), 2, B, IP2, A, IP1);
        reply.header.ts_ns = retry.header.ts_ns + 210_000;
        assert!(
            text.arp(&reply).ends_with(
                "192.168.1.2 is at 02:bb:00:00:00:02 · answers #2 in 0.210 ms (try 2) \
                 · neigh 192.168.1.2 INCOMPLETE→REACHABLE 02:bb:00:00:00:02"
            ),
            "{}",
            text.arp(&reply)
        );
        let lost = arp((A, BC), 1, A, IP1, Z, IP9);
        text.arp(&lost);
        assert!(text.arp_tick(BOOT_NS).is_empty());
        assert_eq!(
            text.arp_finish(BOOT_NS + 1_000_000),
            ["22:13:20.124456 arp eth0 Who has 192.168.1.9? Tell 192.168.1.1 · unanswered after 1 try, #4 to #4"]
        );
        assert!(
            crate::view::summary::arp(&text.arp_tracker().counts())
                .starts_with("arp: 3 requests (1 answered, 1 unanswered, 1 retries")
        );
    }

    #[test]
    fn other_arp_operations() {
        let s = |op| {
            let p = arp((A, BC), op, A, IP1, B, IP2);
            (arp_protocol(op), arp_summary(&p, &ArpState::default().observe(&p)))
        };
        assert_eq!(s(4), ("RARP", "02:bb:00:00:00:02 is at 192.168.1.2".into()));
        assert_eq!(s(7), ("DRARP", "DRARP Error".into()));
        assert_eq!(
            s(8),
            ("Inverse ARP", "Who is 02:bb:00:00:00:02? Tell 02:aa:00:00:00:01".into())
        );
        assert_eq!(s(9), ("Inverse ARP", "02:aa:00:00:00:01 is at 192.168.1.1".into()));
        assert_eq!(s(10), ("ARP", "ARP NAK".into()));
        assert_eq!(
            s(15),
            ("MARS", "MARS LEAVE from 02:aa:00:00:00:01 at 192.168.1.1".into())
        );
        assert_eq!(
            s(23),
            (
                "MAPOS",
                "MAPOS UNARP request from 02:aa:00:00:00:01 at 192.168.1.1".into()
            )
        );
        assert_eq!(s(24), ("ARP", "Experimental 1 ( opcode 24 )".into()));
        assert_eq!(s(0), ("ARP", "Reserved opcode 0".into()));
        assert_eq!(s(300), ("ARP", "Unknown ARP opcode 0x012c".into()));
    }

    #[test]
    fn arp_lines_and_json() {
        let mut state = ArpState::default();
        let req = arp((A, BC), 1, A, IP1, Z, IP2);
        let a = state.observe(&req);
        assert_eq!(
            arp_line(&clock(), "eth0", &MacNames::builtin(), &req, &a),
            "22:13:20.123456 eth0 in 02:aa:00:00:00:01 → Broadcast ARP 60 Who has 192.168.1.2? Tell 192.168.1.1"
        );
        let reply = arp((B, A), 2, B, IP2, A, IP1);
        let a = state.observe(&reply);
        assert_eq!(
            arp_line(&clock(), "eth0", &MacNames::builtin(), &reply, &a),
            "22:13:20.123456 eth0 in 02:bb:00:00:00:02 → 02:aa:00:00:00:01 ARP 60 192.168.1.2 is at 02:bb:00:00:00:02"
        );
        let dup = arp((B, BC), 1, B, IP1, Z, IP2);
        let a = ArpAnalysis {
            frame: 3,
            ..state.observe(&dup)
        };
        let v = serde_json::to_value(arp_json(&clock(), "eth0", &MacNames::builtin(), &dup, &a)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "time": "2023-11-14T22:13:20.123456Z", "ts_ns": BOOT_NS, "iface": "eth0",
                "direction": "in", "hook": "xdp", "vlan": [], "proto": "arp",
                "src": "02:bb:00:00:00:02", "dst": "ff:ff:ff:ff:ff:ff", "len": 60,
                "src_resolved": "02:bb:00:00:00:02", "dst_resolved": "Broadcast",
                "summary": "Who has 192.168.1.2? Tell 192.168.1.1 (duplicate use of 192.168.1.1 detected!)",
                "operation": "request", "sender_mac": "02:bb:00:00:00:02", "sender_ip": "192.168.1.1",
                "target_mac": "00:00:00:00:00:00", "target_ip": "192.168.1.2", "kind": "request",
                "duplicate_of": "02:aa:00:00:00:01", "answers": null, "retry": 0, "neigh": null, "frame": 3
            })
        );
        let odd = arp((A, BC), 3, A, IP1, Z, IP2);
        let v = serde_json::to_value(arp_json(
            &clock(),
            "eth0",
            &MacNames::builtin(),
            &odd,
            &state.observe(&odd),
        ))
        .unwrap();
        assert_eq!(
            (&v["operation"], &v["kind"]),
            (&serde_json::json!(3), &serde_json::json!("other"))
        );
    }

    #[test]
    fn clock_formats() {
        let c = Clock::utc_with_offset(0);
        assert_eq!(c.rfc3339(0), "1970-01-01T00:00:00.000000Z");
        let leap = Clock::utc_with_offset(1_709_164_800 * NS_PER_SEC);
        assert_eq!(leap.rfc3339(86_399_999_999_999), "2024-02-29T23:59:59.999999Z");
        assert_eq!(leap.time_of_day(86_399_999_999_999), "23:59:59.999999");
        assert_eq!(leap.rfc3339(86_400_000_000_000), "2024-03-01T00:00:00.000000Z");
        let y2100 = Clock::utc_with_offset(4_107_542_400 * NS_PER_SEC);
        assert_eq!(y2100.rfc3339(0), "2100-03-01T00:00:00.000000Z");
        assert_eq!(clock().wall_ns(BOOT_NS), WALL_SECS * NS_PER_SEC + 123_456_789);
    }

    #[test]
    fn live_clock_reads_a_plausible_time() {
        let c = Clock::new().unwrap();
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: ts is a valid, writable timespec.
        assert_eq!(unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) }, 0);
        let boot_ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
        assert!(c.rfc3339(boot_ns).as_str() > "2024");
        let tod = c.time_of_day(boot_ns);
        assert_eq!((tod.len(), &tod[2..3], &tod[8..9]), (15, ":", "."));
    }

    #[test]
    fn renderer_threads_state_through_text_and_json() {
        let mut text = Pipeline::new("eth0", 2, false).with_clock(clock());
        let mut json = Pipeline::new("eth0", 2, true).with_clock(clock());
        let mut syn = framed(seg(C, S, SYN, 1000, 0, 64240, 0), 74, DIR_EGRESS);
        syn.header.ifindex = 2;
        let mut ack = framed(seg(C, S, ACK, 1001, 5001, 4106, 0), 66, DIR_EGRESS);
        ack.header.ifindex = 7;
        assert_eq!(
            text.segment(&syn, None),
            "22:13:20.123456 eth0 out 10.0.0.1 → 10.0.0.2 TCP 74 40000 → 80 [SYN] Seq=0 Win=64240 Len=0"
        );
        assert_eq!(
            text.segment(&ack, None),
            "22:13:20.123456 7 out 10.0.0.1 → 10.0.0.2 TCP 66 40000 → 80 [ACK] Seq=1 Ack=1 Win=4106 Len=0"
        );
        json.segment(&syn, None);
        let v: serde_json::Value = serde_json::from_str(&json.segment(&ack, None)).unwrap();
        assert_eq!(
            (&v["seq"], &v["ack"], &v["win_scale"]),
            (&1.into(), &1.into(), &"none".into())
        );
        let mut a = arp((A, BC), 1, A, IP1, Z, IP2);
        a.header.ifindex = 2;
        let line = text.arp(&a);
        assert!(line.ends_with("eth0 in 02:aa:00:00:00:01 → Broadcast ARP 60 Who has 192.168.1.2? Tell 192.168.1.1"));
        let v: serde_json::Value = serde_json::from_str(&json.arp(&a)).unwrap();
        assert_eq!(v["kind"], "request");
        assert_eq!(text.flows().len(), 1);
    }

    /// Field names documented in one of the README's JSON tables (the first column, `a`, `b` split).
    /// The keys the README's summary table names for `ring`: each backquoted word of its meaning before `(`.
    fn readme_ring_fields(ring: &str) -> std::collections::BTreeSet<String> {
        let readme = include_str!("../../../README.md");
        let row = readme
            .lines()
            .find(|l| l.starts_with(&format!("| `{ring}` |")))
            .expect("README documents the ring");
        let meaning = row.split('|').nth(3).unwrap_or("");
        meaning.split('`').skip(1).step_by(2).map(str::to_owned).collect()
    }

    fn readme_fields(heading: &str) -> std::collections::BTreeSet<String> {
        let readme = include_str!("../../../README.md");
        let table = readme.split(heading).nth(1).expect("README has the JSON section");
        table
            .lines()
            .skip_while(|l| !l.starts_with("| `"))
            .take_while(|l| l.starts_with('|'))
            .flat_map(|l| {
                l.split('|')
                    .nth(1)
                    .unwrap_or("")
                    .split(',')
                    .map(|f| f.trim().trim_matches('`').to_string())
            })
            .collect()
    }

    fn keys(v: &serde_json::Value) -> std::collections::BTreeSet<String> {
        v.as_object().expect("an object").keys().cloned().collect()
    }

    #[test]
    fn kernel_notes_name_their_event_state_and_reason() {
        use crate::sys::sockets::TcpState;
        let note = |kind, state, reason: Option<&str>| KernelNote {
            ts_ns: 0,
            tuple: None,
            kind,
            state,
            reason: reason.map(str::to_owned),
            listener: None,
        };
        let est = Some(TcpState::Established);
        let cases = [
            (
                note(NoteKind::SynackRetransmit, None, None),
                "synack_retransmit",
                "SYN-ACK retransmitted",
            ),
            (
                note(NoteKind::Retransmit, est, None),
                "retransmit",
                "segment retransmitted in ESTABLISHED",
            ),
            (
                note(NoteKind::Retransmit, None, None),
                "retransmit",
                "segment retransmitted",
            ),
            (
                note(NoteKind::ResetSent, est, Some("NOT_SPECIFIED")),
                "reset_sent",
                "RST sent in ESTABLISHED (NOT_SPECIFIED)",
            ),
            (
                note(NoteKind::ResetReceived, est, None),
                "reset_received",
                "RST received in ESTABLISHED",
            ),
            (
                note(NoteKind::RcvqFull, None, None),
                "rcvq_full",
                "receive queue full, segment dropped",
            ),
            (
                note(NoteKind::Drop, est, Some("TCP_INVALID_SEQUENCE")),
                "drop",
                "segment dropped in ESTABLISHED (TCP_INVALID_SEQUENCE)",
            ),
        ];
        for (n, event, text) in cases {
            assert_eq!((note_event(n.kind), note_text(&n).as_str()), (event, text));
        }
    }

    #[test]
    fn loopback_copies_are_the_frame_that_went_out() {
        // On lo every segment passes TC out and then in: the same packet, which tshark sees once.
        let (c, s) = (([127, 0, 0, 1], 40000), ([127, 0, 0, 1], 46300));
        let syn = seg(c, s, SYN, 1000, 0, 65495, 0);
        let synack = seg(s, c, SYN | ACK, 5000, 1001, 65483, 0);
        let ack = seg(c, s, ACK, 1001, 5001, 64, 0);
        let both = |r: TcpRecord| [framed(r, 74, DIR_EGRESS), framed(r, 74, DIR_INGRESS)];
        let packets: Vec<TcpRecord> = [syn, synack, ack].into_iter().flat_map(both).collect();
        let mut lo = Pipeline::new("lo", 0, true).with_clock(clock()).with_loopback(true);
        let mut objects = Vec::new();
        let mut written = 0;
        for p in &packets {
            let lines = lo.segment(p, None);
            written += usize::from(lo.take_written().is_some());
            objects.extend(
                lines
                    .lines()
                    .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()),
            );
        }
        let tcp: Vec<&serde_json::Value> = objects.iter().filter(|v| v["proto"] == "tcp").collect();
        let frames: Vec<u64> = tcp.iter().map(|v| v["frame"].as_u64().unwrap()).collect();
        assert_eq!(frames, [1, 1, 2, 2, 3, 3]);
        assert!(tcp.iter().all(|v| v["expert"] == serde_json::json!([])), "{tcp:#?}");
        assert_eq!(written, 3, "one pcapng frame per packet");
        let handshakes = objects.iter().filter(|v| v["event"] == "handshake").count();
        assert_eq!(handshakes, 1, "{objects:#?}");
        // The same records on another interface are six frames, three of them retransmissions in Wireshark's eyes.
        let mut veth = Pipeline::new("veth", 0, true).with_clock(clock());
        let flagged = packets
            .iter()
            .map(|p| veth.segment(p, None))
            .filter(|l| l.contains("TCP Retransmission") || l.contains("TCP Dup ACK"))
            .count();
        assert_eq!(flagged, 3);
    }

    #[test]
    fn packet_comments_are_the_text_lines_tail_in_both_modes() {
        let syn = framed(seg(C, S, SYN, 1000, 0, 64240, 0), 74, DIR_EGRESS);
        let ack = sack(framed(seg(S, C, ACK, 5001, 1001, 502, 0), 66, DIR_INGRESS), 1101, 1201);
        let link = SocketLink {
            state: Some(crate::sys::sockets::TcpState::Established),
            ..SocketLink::default()
        };
        let mut comments = Vec::new();
        for json in [false, true] {
            let mut r = Pipeline::new("eth0", 0, json).with_clock(clock());
            let lines = [r.segment(&syn, None), r.segment(&ack, Some(&link))];
            let taken = r.take_written().and_then(|w| w.comment);
            let _ = r.segment(&syn, None);
            assert_eq!(
                r.take_written(),
                Some(Written { comment: None }),
                "a plain SYN has nothing to say"
            );
            if !json {
                let tail = lines[1].split_once(" · ").map(|(_, t)| t.to_owned());
                assert_eq!(taken, tail, "the comment is the text line after the Info");
            }
            comments.push(taken);
        }
        assert!(
            comments[0]
                .as_deref()
                .is_some_and(|c| c.starts_with("holes ") && c.ends_with(" ⇒ ESTABLISHED"))
        );
        assert_eq!(comments[0], comments[1], "--json writes the same comments");
    }

    #[test]
    fn readme_documents_every_json_field() {
        let common = readme_fields("### Fields of every record");
        let mut flows = FlowTable::default();
        let syn = framed(seg(C, S, SYN, 1000, 0, 64240, 0), 74, DIR_EGRESS);
        let _ = flows.observe(&syn);
        let mut json = Pipeline::new("eth0", 0, true).with_clock(clock());
        let link = SocketLink::default();
        let tcp: serde_json::Value = serde_json::from_str(&json.segment(&syn, Some(&link))).unwrap();
        let documented: std::collections::BTreeSet<String> =
            common.union(&readme_fields("### TCP fields")).cloned().collect();
        assert_eq!(keys(&tcp), documented, "TCP JSON keys vs the README");
        // A whole connection: the handshake line follows the third segment, the teardown line the last.
        let connection = [
            seg(S, C, SYN | ACK, 5000, 1001, 65160, 0),
            seg(C, S, ACK, 1001, 5001, 502, 0),
            seg(C, S, TCP_FIN | ACK, 1001, 5001, 502, 0),
            seg(S, C, TCP_FIN | ACK, 5001, 1002, 509, 0),
            seg(C, S, ACK, 1002, 5002, 502, 0),
        ];
        let lines: Vec<String> = connection.iter().map(|r| json.segment(r, None)).collect();
        let analysis: Vec<serde_json::Value> = lines
            .iter()
            .flat_map(|l| l.lines().skip(1))
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let events: Vec<&str> = analysis.iter().map(|v| v["event"].as_str().unwrap()).collect();
        assert_eq!(events, ["handshake", "teardown"], "{lines:#?}");
        let both = keys(&analysis[0]).union(&keys(&analysis[1])).cloned().collect();
        assert_eq!(
            readme_fields("### Analysis lines"),
            both,
            "analysis line keys vs the README"
        );
        assert_eq!(
            keys(&tcp["socket"]),
            readme_fields("### Socket fields"),
            "socket keys vs the README"
        );
        let change = StateChange {
            ts_ns: 1,
            tuple: crate::model::link::Tuple::new("10.0.0.1:80".parse().unwrap(), "10.0.0.2:4000".parse().unwrap()),
            old: crate::sys::sockets::TcpState::Established,
            new: crate::sys::sockets::TcpState::CloseWait,
        };
        let kernel: serde_json::Value = serde_json::from_str(&json.state(&change, None)).unwrap();
        assert_eq!(
            keys(&kernel),
            readme_fields("### Kernel lines"),
            "kernel line keys vs the README"
        );
        let req = arp((A, BC), 1, A, IP1, Z, IP2);
        let arp = serde_json::to_value(arp_json(
            &clock(),
            "eth0",
            &MacNames::builtin(),
            &req,
            &ArpState::default().observe(&req),
        ))
        .unwrap();
        let documented: std::collections::BTreeSet<String> =
            common.union(&readme_fields("### ARP fields")).cloned().collect();
        assert_eq!(keys(&arp), documented, "ARP JSON keys vs the README");
        let change = NeighChange {
            ts_ns: BOOT_NS,
            ifindex: 0,
            ip: Ipv4Addr::from(IP2),
            lladdr: None,
            old: None,
            state: crate::sys::neigh::NeighState::FAILED,
            deleted: false,
        };
        let accounts = crate::model::accounting::Accounts {
            ts_ns: BOOT_NS,
            packet: crate::model::accounting::RingAccount::packets(&Default::default()),
            socket: Some(crate::model::accounting::RingAccount::sockets(&Default::default())),
            printed: 0,
            kernel_lines: 0,
            undecodable: 0,
        };
        let summary: serde_json::Value = serde_json::from_str(&json.renderer.line(&Item::Summary(&accounts))).unwrap();
        assert_eq!(
            keys(&summary),
            readme_fields("### Summary line"),
            "summary keys vs the README"
        );
        for ring in ["packet_ring", "socket_ring"] {
            let documented = readme_ring_fields(ring);
            let ours: std::collections::BTreeSet<String> = summary[ring].as_object().unwrap().keys().cloned().collect();
            assert_eq!(ours, documented, "{ring} keys vs the README");
        }
        let neigh: serde_json::Value = serde_json::from_str(&json.renderer.neigh_line(&change, Some(1))).unwrap();
        assert_eq!(
            keys(&neigh),
            readme_fields("### Neighbour lines"),
            "neigh keys vs the README"
        );
        let gone = Unanswered {
            ts_ns: BOOT_NS,
            ifindex: 0,
            sender_ip: Ipv4Addr::from(IP1),
            target_ip: Ipv4Addr::from(IP2),
            tries: 3,
            first_frame: 1,
            last_frame: 3,
        };
        let gone: serde_json::Value = serde_json::from_str(&json.renderer.unanswered_line(&gone)).unwrap();
        assert_eq!(
            keys(&gone),
            readme_fields("### ARP analysis lines"),
            "arp_unanswered keys vs the README"
        );
    }

    /// The line as the reference builds it: the struct, with the socket side and ARP wait, through a `Value`.
    use crate::model::arp::ResolutionWait;

    fn reference_json(
        rec: &TcpRecord,
        a: &TcpAnalysis,
        link: Option<&SocketLink>,
        wait: Option<ResolutionWait>,
    ) -> String {
        let mut v = serde_json::to_value(tcp_json(&clock(), "eth0", rec, a)).unwrap();
        v["socket"] = serde_json::to_value(link).unwrap();
        v["arp_wait"] = serde_json::to_value(wait).unwrap();
        v.to_string()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2_000))]

        /// The direct writer prints exactly the reference's line, byte for byte, for arbitrary records in
        /// sequence (their flows' analysis included), with and without a socket side and an ARP wait.
        #[test]
        fn the_direct_json_writer_prints_the_reference_line(
            entries in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), size_of::<TcpRecord>()), 1..12),
            linked in proptest::prelude::any::<bool>(),
        ) {
            let mut flows = FlowTable::default();
            let link = SocketLink {
                state: Some(crate::sys::sockets::TcpState::Established),
                transitions: vec![(crate::sys::sockets::TcpState::SynRecv, crate::sys::sockets::TcpState::Established)],
                ..SocketLink::default()
            };
            let wait = ResolutionWait { target: Ipv4Addr::new(10, 0, 0, 9), wait_ns: 1_500, request_frame: 1, reply_frame: 2 };
            for mut bytes in entries {
                bytes[observer_common::record::KIND_OFFSET] = observer_common::record::KIND_TCP;
                bytes[std::mem::offset_of!(RecordHeader, flags)] = 0;
                let Ok(crate::model::events::Event::Tcp(rec, None)) = crate::model::events::decode(&bytes) else {
                    continue;
                };
                let a = flows.observe(&rec);
                let (link, wait) = if linked { (Some(&link), Some(wait)) } else { (None, None) };
                let mut direct = String::new();
                tcp_json::write_tcp_json(&mut direct, &clock(), "eth0", (&rec, &a), link, wait).unwrap();
                proptest::prop_assert_eq!(direct, reference_json(&rec, &a, link, wait));
            }
        }
    }
}
