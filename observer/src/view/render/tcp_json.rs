//! A TCP segment's JSON line written straight into the line buffer: the same object, keys in the same sorted
//! order as a `serde_json::Value` prints them, without building one (no allocation for a segment without an
//! ARP wait; that rare nested object still goes through a `Value`, which sorts its keys).

use std::fmt;

use observer_common::{
    TcpRecord,
    record::{OPT_MSS, OPT_SACK_PERM, OPT_TIMESTAMP, OPT_UNKNOWN, OPT_WSCALE, TCP_ACK},
};
use serde::{
    Serialize, Serializer,
    ser::{SerializeMap, SerializeSeq as _},
};

use super::{Clock, HoleJson, SackJson, TCP_FLAG_NAMES, WinScaleJson, direction_name, hook_name, write_tcp_summary};
use crate::model::{
    arp::ResolutionWait,
    events::{tcp_dst, tcp_src},
    flows::{TcpAnalysis, expert::Expert},
    link::SocketLink,
};

/// Appends the segment's JSON object to `out`.
pub fn write_tcp_json(
    out: &mut String,
    clock: &Clock,
    iface: &str,
    (rec, a): (&TcpRecord, &TcpAnalysis),
    link: Option<&SocketLink>,
    wait: Option<ResolutionWait>,
) -> serde_json::Result<()> {
    let h = &rec.header;
    let has = |bit: u8| rec.options & bit != 0;
    // SAFETY: serde_json writes only UTF-8, and only whole values are kept: the caller truncates on error.
    let mut ser = serde_json::Serializer::new(unsafe { out.as_mut_vec() });
    let mut m = ser.serialize_map(None)?;
    m.serialize_entry("ack", &a.ack)?;
    m.serialize_entry("ack_abs", &(rec.flags & TCP_ACK != 0).then_some(rec.ack))?;
    m.serialize_entry("arp_wait", &Sorted(wait))?;
    m.serialize_entry("direction", direction_name(h.direction))?;
    m.serialize_entry("dport", &rec.dport)?;
    m.serialize_entry("dst", &Shown(tcp_dst(rec)))?;
    m.serialize_entry("expert", &ExpertTexts(&a.expert))?;
    m.serialize_entry("fills_hole", &a.fills_hole.map(HoleJson::from))?;
    m.serialize_entry("flags", &FlagNames(rec.flags))?;
    m.serialize_entry("frame", &a.frame)?;
    m.serialize_entry("hook", hook_name(h.hook))?;
    m.serialize_entry("iface", iface)?;
    m.serialize_entry("len", &h.wire_len)?;
    m.serialize_entry("mss", &has(OPT_MSS).then_some(rec.mss))?;
    m.serialize_entry("payload_len", &rec.payload_len)?;
    m.serialize_entry("proto", "tcp")?;
    m.serialize_entry(
        "sack",
        &Each(a.sack_blocks(), |b| SackJson {
            sle: b.left,
            sre: b.right,
        }),
    )?;
    m.serialize_entry("sack_holes", &Each(a.holes.ranges(), |&b| HoleJson::from(b)))?;
    m.serialize_entry("sack_perm", &has(OPT_SACK_PERM))?;
    m.serialize_entry("seq", &a.seq)?;
    m.serialize_entry("seq_abs", &rec.seq)?;
    // Its fields are declared in sorted order (see SocketLink).
    m.serialize_entry("socket", &link)?;
    m.serialize_entry("sport", &rec.sport)?;
    m.serialize_entry("src", &Shown(tcp_src(rec)))?;
    m.serialize_entry("summary", &Summary(rec, a))?;
    m.serialize_entry("time", &Rfc3339(clock, h.ts_ns))?;
    m.serialize_entry("ts_ns", &h.ts_ns)?;
    m.serialize_entry("tsecr", &has(OPT_TIMESTAMP).then_some(rec.tsecr))?;
    m.serialize_entry("tsval", &has(OPT_TIMESTAMP).then_some(rec.tsval))?;
    m.serialize_entry("unknown_options", &has(OPT_UNKNOWN))?;
    m.serialize_entry("vlan", &h.vlan_ids[..usize::from(h.vlan_count).min(h.vlan_ids.len())])?;
    m.serialize_entry("win", &a.window)?;
    m.serialize_entry("win_raw", &rec.window)?;
    m.serialize_entry("win_scale", &WinScaleJson::from(a.scaling))?;
    m.serialize_entry("wscale", &has(OPT_WSCALE).then_some(rec.wscale))?;
    SerializeMap::end(m)
}

/// A value serialized through `serde_json::Value`, whose maps sort their keys as the rest of the line does.
struct Sorted<T>(Option<T>);

impl<T: Serialize> Serialize for Sorted<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            None => s.serialize_none(),
            Some(v) => serde_json::to_value(v).map_err(serde::ser::Error::custom)?.serialize(s),
        }
    }
}

/// A value as the string its `Display` prints, written without an intermediate String.
struct Shown<T>(T);

impl<T: fmt::Display> Serialize for Shown<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// tshark's Info column.
struct Summary<'a>(&'a TcpRecord, &'a TcpAnalysis);

impl fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_tcp_summary(f, self.0, self.1)
    }
}

impl Serialize for Summary<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The RFC 3339 time of a boot-time timestamp.
struct Rfc3339<'a>(&'a Clock, u64);

impl fmt::Display for Rfc3339<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.write_rfc3339(f, self.1)
    }
}

impl Serialize for Rfc3339<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The names of the set flags, in Wireshark's order.
struct FlagNames(u8);

impl Serialize for FlagNames {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(None)?;
        for (bit, name) in TCP_FLAG_NAMES.iter().enumerate() {
            if self.0 & (1 << bit) != 0 {
                seq.serialize_element(name)?;
            }
        }
        seq.end()
    }
}

/// The expert texts without brackets, in Info order.
struct ExpertTexts<'a>(&'a Expert);

impl Serialize for ExpertTexts<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(None)?;
        for text in self.0.texts_shown() {
            seq.serialize_element(&Shown(text))?;
        }
        seq.end()
    }
}

/// The items of a slice, each mapped to its JSON form.
struct Each<'a, T, J, F: Fn(&T) -> J>(&'a [T], F);

impl<T, J: Serialize, F: Fn(&T) -> J> Serialize for Each<'_, T, J, F> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for item in self.0 {
            seq.serialize_element(&(self.1)(item))?;
        }
        seq.end()
    }
}
