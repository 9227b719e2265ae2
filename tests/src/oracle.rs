//! Differential oracle for observer's frame parser, built on etherparse 0.19.
//!
//! [`verdict`] reads a frame with etherparse's per-header slicers, layered by observer's design rules; each
//! [`Rule`] names a place where the outcome deliberately differs from etherparse's own whole-packet reading.
//! [`check`], [`compare_tcp`] and [`compare_arp`] hold a parser outcome or a record against the oracle and name
//! the first field that differs. The builders and [`named_cases`] give frames with known outcomes, and
//! [`random_frames`] a reproducible mix of valid and broken frames. Nothing here depends on the host side of
//! the parser, so kernel tests can check ring-buffer records and counters the same way.

use std::fmt::{Debug, Display};

use etherparse::{
    ArpHardwareId, ArpOperation, ArpPacket, ArpPacketSlice, EtherType, Ethernet2Header, Ethernet2Slice,
    IpAuthHeaderSlice, IpFragOffset, IpHeaders, IpNumber, Ipv4Header, Ipv4Options, Ipv4Slice, Ipv6Extensions,
    Ipv6FragmentHeaderSlice, Ipv6Header, Ipv6HeaderSlice, Ipv6RawExtHeader, Ipv6RawExtHeaderSlice,
    Ipv6RoutingExtensions, PacketBuilder, PacketBuilderStep, SingleVlanSlice, TcpHeader, TcpOptionElement,
    TcpOptionReadError, TcpOptionsIterator, TcpSlice, VlanId, err,
};
use observer_common::{
    ArpRecord, Counter, RecordHeader, TcpRecord,
    parse::{MAX_EXT_HEADERS, Parsed},
    record::{
        KIND_ARP, KIND_TCP, MAX_OPTION_KINDS, MAX_SACK_BLOCKS, MAX_VLAN_TAGS, OPT_MSS, OPT_SACK, OPT_SACK_PERM,
        OPT_TIMESTAMP, OPT_UNKNOWN, OPT_WSCALE, OPTKIND_EOL, OPTKIND_MSS, OPTKIND_NOP, OPTKIND_SACK, OPTKIND_SACK_PERM,
        OPTKIND_TIMESTAMP, OPTKIND_WSCALE, TCP_ACK, TCP_CWR, TCP_ECE, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, TCP_URG,
    },
};
use proptest::{
    prelude::RngExt,
    test_runner::{RngAlgorithm, TestRng},
};

/// Source MAC of the built frames.
pub const MAC_CLIENT: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
/// Destination MAC of the built frames.
pub const MAC_SERVER: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
/// IPv4 address of the client side.
pub const IP4_CLIENT: [u8; 4] = [10, 0, 0, 1];
/// IPv4 address of the server side.
pub const IP4_SERVER: [u8; 4] = [10, 0, 0, 2];
/// IPv6 address of the client side (fd00::1).
pub const IP6_CLIENT: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
/// IPv6 address of the server side (fd00::2).
pub const IP6_SERVER: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
/// TCP port of the client side.
pub const PORT_CLIENT: u16 = 40000;
/// TCP port of the server side.
pub const PORT_SERVER: u16 = 80;

const ETH_LEN: usize = 14;
const ARP_ETH_IPV4_LEN: usize = 28;
const IPPROTO_TCP: u8 = 6;
const EXT_HOP_BY_HOP: u8 = 0;
const EXT_ROUTING: u8 = 43;
const EXT_FRAGMENT: u8 = 44;
const EXT_AUTH: u8 = 51;
const EXT_DEST_OPTIONS: u8 = 60;
const EXT_MOBILITY: u8 = 135;
const EXT_HIP: u8 = 139;
const EXT_SHIM6: u8 = 140;
/// IPv6 next-header values observer skips as extension headers.
const IPV6_EXTENSIONS: [u8; 8] = [
    EXT_HOP_BY_HOP,
    EXT_ROUTING,
    EXT_FRAGMENT,
    EXT_AUTH,
    EXT_DEST_OPTIONS,
    EXT_MOBILITY,
    EXT_HIP,
    EXT_SHIM6,
];
/// EtherTypes of VLAN tags (802.1Q, 802.1ad, old QinQ).
const VLAN_TPIDS: [EtherType; 3] = [
    EtherType::VLAN_TAGGED_FRAME,
    EtherType::PROVIDER_BRIDGING,
    EtherType::VLAN_DOUBLE_TAGGED_FRAME,
];
/// An experimental TCP option kind (RFC 4727) that neither parser decodes.
const OPTKIND_EXPERIMENT: u8 = 253;

// ------------------------------------------------------------------------------------------------------------
// The oracle
// ------------------------------------------------------------------------------------------------------------

/// A place where observer's design deliberately differs from etherparse's reading of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    /// At most two VLAN tags; a third is malformed (etherparse reads three, then stops without an error).
    VlanLimit,
    /// MACsec is not looked into and is ignored (etherparse decodes unencrypted MACsec).
    Macsec,
    /// An IPv4 authentication header is not skipped: the packet is ignored (etherparse skips the header).
    Ipv4Auth,
    /// A first fragment (offset 0, more fragments) is parsed, later ones ignored (etherparse decodes no fragment).
    FirstFragment,
    /// IPv6 fragment offset and M flag are read where RFC 8200 puts them (etherparse 0.19 reads wrong bits of byte 3).
    Ipv6FragmentBits,
    /// A later IPv6 fragment ends the reading: fragment data follows (etherparse goes on reading it as headers).
    Ipv6LaterFragment,
    /// IPv6 payload length 0 means an empty payload (etherparse takes the rest of the frame, as for a jumbogram).
    Ipv6ZeroPayloadLength,
    /// At most six IPv6 extension headers; a seventh is malformed (etherparse has no limit).
    ExtHeaderLimit,
    /// Late hop-by-hop, mobility, HIP and shim6 headers are skipped by their length (etherparse rejects or stops).
    ExtHeaderKinds,
    /// An authentication header with payload length 0 is skipped as 8 bytes (etherparse rejects it).
    AuthZeroLength,
    /// ARP is one 28-byte Ethernet/IPv4 body: other types are ignored, shorter bodies truncated (etherparse reads any).
    ArpEthernetIpv4,
    /// Unknown TCP option kinds are skipped by their length and flagged (etherparse's option iterator stops there).
    UnknownOption,
}

impl Rule {
    /// Every rule.
    pub const ALL: [Rule; 12] = [
        Rule::VlanLimit,
        Rule::Macsec,
        Rule::Ipv4Auth,
        Rule::FirstFragment,
        Rule::Ipv6FragmentBits,
        Rule::Ipv6LaterFragment,
        Rule::Ipv6ZeroPayloadLength,
        Rule::ExtHeaderLimit,
        Rule::ExtHeaderKinds,
        Rule::AuthZeroLength,
        Rule::ArpEthernetIpv4,
        Rule::UnknownOption,
    ];
}

/// Link-layer fields every record carries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExpectedLink {
    /// Ethernet source MAC.
    pub eth_src: [u8; 6],
    /// Ethernet destination MAC.
    pub eth_dst: [u8; 6],
    /// VLAN ids, outer first.
    pub vlan_ids: Vec<u16>,
}

/// TCP options as etherparse decodes them; a repeated option keeps its last value, as in the record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExpectedOptions {
    /// MSS value.
    pub mss: Option<u16>,
    /// Window scale shift.
    pub wscale: Option<u8>,
    /// SACK permitted seen.
    pub sack_perm: bool,
    /// Timestamps (TSval, TSecr).
    pub timestamps: Option<(u32, u32)>,
    /// SACK blocks (left, right) of the last SACK option.
    pub sack: Option<Vec<(u32, u32)>>,
    /// Option kinds in wire order, NOP and EOL left out.
    pub kinds: Vec<u8>,
    /// An option of a kind etherparse does not decode was skipped.
    pub unknown: bool,
}

impl ExpectedOptions {
    /// The record's `OPT_*` bits for these options.
    pub fn bits(&self) -> u8 {
        [
            (self.mss.is_some(), OPT_MSS),
            (self.wscale.is_some(), OPT_WSCALE),
            (self.sack_perm, OPT_SACK_PERM),
            (self.timestamps.is_some(), OPT_TIMESTAMP),
            (self.sack.is_some(), OPT_SACK),
            (self.unknown, OPT_UNKNOWN),
        ]
        .into_iter()
        .filter(|(present, _)| *present)
        .fold(0, |bits, (_, bit)| bits | bit)
    }

    fn push(&mut self, option: TcpOptionElement) {
        use TcpOptionElement::*;
        let kind = match option {
            Noop => return,
            MaximumSegmentSize(mss) => {
                self.mss = Some(mss);
                OPTKIND_MSS
            }
            WindowScale(shift) => {
                self.wscale = Some(shift);
                OPTKIND_WSCALE
            }
            SelectiveAcknowledgementPermitted => {
                self.sack_perm = true;
                OPTKIND_SACK_PERM
            }
            SelectiveAcknowledgement(first, more) => {
                self.sack = Some(std::iter::once(first).chain(more.into_iter().flatten()).collect());
                OPTKIND_SACK
            }
            Timestamp(val, ecr) => {
                self.timestamps = Some((val, ecr));
                OPTKIND_TIMESTAMP
            }
        };
        self.kinds.push(kind);
    }
}

/// Every field a [`TcpRecord`] carries, as etherparse reads them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExpectedTcp {
    /// Ethernet and VLAN fields.
    pub link: ExpectedLink,
    /// 4 or 6.
    pub ip_version: u8,
    /// Source address (4 or 16 bytes).
    pub saddr: Vec<u8>,
    /// Destination address (4 or 16 bytes).
    pub daddr: Vec<u8>,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number.
    pub ack: u32,
    /// Flags byte (byte 13 of the header).
    pub flags: u8,
    /// Raw window.
    pub window: u16,
    /// Urgent pointer.
    pub urgent: u16,
    /// TCP header length in bytes.
    pub header_len: u8,
    /// TCP payload length from the IP length fields.
    pub payload_len: u16,
    /// Decoded options.
    pub options: ExpectedOptions,
}

/// Every field an [`ArpRecord`] carries, as etherparse reads them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExpectedArp {
    /// Ethernet and VLAN fields.
    pub link: ExpectedLink,
    /// Operation.
    pub operation: u16,
    /// Sender hardware address.
    pub sender_mac: [u8; 6],
    /// Sender protocol address.
    pub sender_ip: [u8; 4],
    /// Target hardware address.
    pub target_mac: [u8; 6],
    /// Target protocol address.
    pub target_ip: [u8; 4],
}

/// What a frame must turn into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expected {
    /// A TCP record with these fields.
    Tcp(ExpectedTcp),
    /// An ARP record with these fields.
    Arp(ExpectedArp),
    /// Malformed: etherparse's error, or the design rule that rejects the frame.
    Rejected(String),
    /// Ignored: not TCP over IP, a later fragment, or ARP of other types.
    NotTcp,
}

impl Expected {
    /// Short description for failure messages.
    pub fn describe(&self) -> String {
        match self {
            Expected::Tcp(_) => "a TCP record".into(),
            Expected::Arp(_) => "an ARP record".into(),
            Expected::Rejected(why) => format!("a rejection ({why})"),
            Expected::NotTcp => "ignored".into(),
        }
    }
}

/// The oracle's reading of a frame and the design rules that shaped it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// What the frame must turn into.
    pub expected: Expected,
    /// Rules applied on the way, sorted; empty when the reading is etherparse's own.
    pub rules: Vec<Rule>,
}

/// What `frame` must turn into.
pub fn expected(frame: &[u8]) -> Expected {
    verdict(frame).expected
}

/// Reads `frame` with etherparse under observer's design rules.
pub fn verdict(frame: &[u8]) -> Verdict {
    let mut reader = Reader::default();
    let expected = reader.frame(frame).unwrap_or_else(Expected::from);
    let mut rules = reader.rules;
    rules.sort();
    rules.dedup();
    Verdict { expected, rules }
}

/// Checks a parser outcome against the oracle: the same record fields, or a counter of the same class.
pub fn check(got: &Result<Parsed, Counter>, expected: &Expected) -> Result<(), String> {
    match (got, expected) {
        (Ok(Parsed::Tcp(rec)), Expected::Tcp(exp)) => compare_tcp(rec, exp),
        (Ok(Parsed::Arp(rec)), Expected::Arp(exp)) => compare_arp(rec, exp),
        (Err(counter), Expected::Rejected(_)) if counter.is_malformed() => Ok(()),
        (Err(counter), Expected::NotTcp) if !counter.is_malformed() => Ok(()),
        (got, expected) => Err(format!(
            "parser gave {}, oracle expected {}",
            describe(got),
            expected.describe()
        )),
    }
}

/// Short description of a parser outcome for failure messages.
pub fn describe(got: &Result<Parsed, Counter>) -> String {
    match got {
        Ok(Parsed::Tcp(_)) => "a TCP record".into(),
        Ok(Parsed::Arp(_)) => "an ARP record".into(),
        Err(counter) => counter.name().into(),
    }
}

/// Compares a TCP record with the oracle, naming the first mismatching field.
pub fn compare_tcp(rec: &TcpRecord, exp: &ExpectedTcp) -> Result<(), String> {
    compare_link(&rec.header, KIND_TCP, &exp.link)?;
    field("ip_version", &rec.ip_version, &exp.ip_version)?;
    field("saddr", rec.src_bytes(), &exp.saddr[..])?;
    field("daddr", rec.dst_bytes(), &exp.daddr[..])?;
    field("sport", &rec.sport, &exp.sport)?;
    field("dport", &rec.dport, &exp.dport)?;
    field("seq", &rec.seq, &exp.seq)?;
    field("ack", &rec.ack, &exp.ack)?;
    field("flags", &rec.flags, &exp.flags)?;
    field("window", &rec.window, &exp.window)?;
    field("urgent", &rec.urgent, &exp.urgent)?;
    field("header_len", &rec.header_len, &exp.header_len)?;
    field("payload_len", &rec.payload_len, &exp.payload_len)?;
    let opts = &exp.options;
    field("options", &rec.options, &opts.bits())?;
    field("mss", &rec.mss, &opts.mss.unwrap_or(0))?;
    field("wscale", &rec.wscale, &opts.wscale.unwrap_or(0))?;
    let (tsval, tsecr) = opts.timestamps.unwrap_or((0, 0));
    field("tsval", &rec.tsval, &tsval)?;
    field("tsecr", &rec.tsecr, &tsecr)?;
    let sack = opts.sack.as_deref().unwrap_or(&[]);
    field("sack_count", &usize::from(rec.sack_count), &sack.len())?;
    let got_sack: Vec<(u32, u32)> = rec.sack_blocks().iter().map(|b| (b.left, b.right)).collect();
    field("sack", &got_sack[..], &sack[..sack.len().min(MAX_SACK_BLOCKS)])?;
    let kinds = &opts.kinds[..opts.kinds.len().min(MAX_OPTION_KINDS)];
    field("option_count", &usize::from(rec.option_count), &kinds.len())?;
    field("option_kinds", rec.option_kinds(), kinds)
}

/// Compares an ARP record with the oracle, naming the first mismatching field.
pub fn compare_arp(rec: &ArpRecord, exp: &ExpectedArp) -> Result<(), String> {
    compare_link(&rec.header, KIND_ARP, &exp.link)?;
    field("operation", &rec.operation, &exp.operation)?;
    field("sender_mac", &rec.sender_mac, &exp.sender_mac)?;
    field("sender_ip", &rec.sender_ip, &exp.sender_ip)?;
    field("target_mac", &rec.target_mac, &exp.target_mac)?;
    field("target_ip", &rec.target_ip, &exp.target_ip)
}

fn compare_link(header: &RecordHeader, kind: u8, link: &ExpectedLink) -> Result<(), String> {
    field("kind", &header.kind, &kind)?;
    field("eth_src", &header.eth_src, &link.eth_src)?;
    field("eth_dst", &header.eth_dst, &link.eth_dst)?;
    field("vlan_count", &usize::from(header.vlan_count), &link.vlan_ids.len())?;
    let count = link.vlan_ids.len().min(MAX_VLAN_TAGS);
    field("vlan_ids", &header.vlan_ids[..count], &link.vlan_ids[..])
}

fn field<T: PartialEq + Debug + ?Sized>(name: &str, got: &T, want: &T) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{name}: record has {got:?}, oracle expects {want:?}"))
    }
}

/// An answer that ends the layered reading early: never a record.
enum Stop {
    Rejected(String),
    NotTcp,
}

impl From<Stop> for Expected {
    fn from(stop: Stop) -> Expected {
        match stop {
            Stop::Rejected(why) => Expected::Rejected(why),
            Stop::NotTcp => Expected::NotTcp,
        }
    }
}

/// A step of the layered reading.
type Step<T> = Result<T, Stop>;

fn rejected(why: impl Display) -> Stop {
    Stop::Rejected(why.to_string())
}

/// IP fields of a TCP segment and the segment bytes, bounded by the IP length fields.
struct Segment<'a> {
    ip_version: u8,
    saddr: Vec<u8>,
    daddr: Vec<u8>,
    bytes: &'a [u8],
}

/// Walks a frame header by header with etherparse's slicers, noting each design rule it applies.
#[derive(Default)]
struct Reader {
    rules: Vec<Rule>,
}

impl Reader {
    /// Notes `rule` and gives `answer`.
    fn by(&mut self, rule: Rule, answer: Stop) -> Stop {
        self.rules.push(rule);
        answer
    }

    fn frame(&mut self, frame: &[u8]) -> Step<Expected> {
        let eth = Ethernet2Slice::from_slice_without_fcs(frame).map_err(rejected)?;
        let mut link = ExpectedLink {
            eth_src: eth.source(),
            eth_dst: eth.destination(),
            vlan_ids: Vec::new(),
        };
        let mut next = eth.payload();
        while VLAN_TPIDS.contains(&next.ether_type) {
            if link.vlan_ids.len() == MAX_VLAN_TAGS {
                return Err(self.by(Rule::VlanLimit, rejected("a third VLAN tag")));
            }
            let vlan = SingleVlanSlice::from_slice(next.payload).map_err(rejected)?;
            link.vlan_ids.push(vlan.vlan_identifier().value());
            next = vlan.payload();
        }
        match next.ether_type {
            EtherType::ARP => self.arp(link, next.payload),
            EtherType::IPV4 => {
                let segment = self.ipv4(next.payload)?;
                self.tcp(link, segment)
            }
            EtherType::IPV6 => {
                let segment = self.ipv6(next.payload)?;
                self.tcp(link, segment)
            }
            EtherType::MACSEC => Err(self.by(Rule::Macsec, Stop::NotTcp)),
            _ => Err(Stop::NotTcp),
        }
    }

    fn ipv4<'a>(&mut self, packet: &'a [u8]) -> Step<Segment<'a>> {
        use err::ipv4::SliceError;
        let ip = match Ipv4Slice::from_slice(packet) {
            Ok(ip) => ip,
            // Rule::Ipv4Auth: the authentication header is not looked into, so its errors do not count.
            Err(SliceError::Exts(_)) => return Err(self.by(Rule::Ipv4Auth, Stop::NotTcp)),
            Err(SliceError::Len(e)) if e.layer == err::Layer::IpAuthHeader => {
                return Err(self.by(Rule::Ipv4Auth, Stop::NotTcp));
            }
            Err(e) => return Err(rejected(e)),
        };
        let header = ip.header();
        if header.fragments_offset().value() != 0 {
            return Err(Stop::NotTcp);
        }
        if header.protocol() == IpNumber::AUTHENTICATION_HEADER {
            return Err(self.by(Rule::Ipv4Auth, Stop::NotTcp));
        }
        if header.protocol() != IpNumber::TCP {
            return Err(Stop::NotTcp);
        }
        if header.more_fragments() {
            self.rules.push(Rule::FirstFragment);
        }
        Ok(Segment {
            ip_version: 4,
            saddr: header.source().to_vec(),
            daddr: header.destination().to_vec(),
            bytes: ip.payload().payload,
        })
    }

    fn ipv6<'a>(&mut self, packet: &'a [u8]) -> Step<Segment<'a>> {
        let header = Ipv6HeaderSlice::from_slice(packet).map_err(rejected)?;
        let declared = usize::from(header.payload_length());
        let mut rest = packet
            .get(Ipv6Header::LEN..Ipv6Header::LEN + declared)
            .ok_or_else(|| rejected("IPv6 payload length past the end of the frame"))?;
        if declared == 0 && packet.len() > Ipv6Header::LEN {
            self.rules.push(Rule::Ipv6ZeroPayloadLength);
        }
        let mut next = header.next_header().0;
        let mut count = 0;
        while IPV6_EXTENSIONS.contains(&next) {
            if count == MAX_EXT_HEADERS {
                return Err(self.by(Rule::ExtHeaderLimit, rejected("a seventh IPv6 extension header")));
            }
            let (len, following) = self.extension(next, count, rest)?;
            rest = &rest[len..];
            next = following;
            count += 1;
        }
        if next != IPPROTO_TCP {
            return Err(Stop::NotTcp);
        }
        Ok(Segment {
            ip_version: 6,
            saddr: header.source().to_vec(),
            daddr: header.destination().to_vec(),
            bytes: rest,
        })
    }

    /// Length and next header of the extension header of `kind` at the start of `rest`.
    fn extension(&mut self, kind: u8, index: usize, rest: &[u8]) -> Step<(usize, u8)> {
        let generic = |rest: &[u8]| -> Step<(usize, u8)> {
            let ext = Ipv6RawExtHeaderSlice::from_slice(rest).map_err(rejected)?;
            Ok((ext.slice().len(), ext.next_header().0))
        };
        match kind {
            EXT_FRAGMENT => {
                let frag = Ipv6FragmentHeaderSlice::from_slice(rest).map_err(rejected)?;
                // Rule::Ipv6FragmentBits: RFC 8200 has the offset in the top 13 bits of bytes 2-3 and M in bit 0.
                let bits = u16::from_be_bytes([frag.slice()[2], frag.slice()[3]]);
                let (offset, more) = (bits >> 3, bits & 1 == 1);
                if (offset != 0 || more) != frag.is_fragmenting_payload() {
                    self.rules.push(Rule::Ipv6FragmentBits);
                }
                if offset != 0 {
                    return Err(self.by(Rule::Ipv6LaterFragment, Stop::NotTcp));
                }
                if more {
                    self.rules.push(Rule::FirstFragment);
                }
                Ok((frag.slice().len(), frag.next_header().0))
            }
            // Rule::AuthZeroLength: (0 + 2) * 4 = 8 bytes, the length of a generic header with length 0.
            EXT_AUTH if rest.get(1) == Some(&0) => {
                self.rules.push(Rule::AuthZeroLength);
                generic(rest)
            }
            EXT_AUTH => {
                let auth = IpAuthHeaderSlice::from_slice(rest).map_err(rejected)?;
                Ok((auth.slice().len(), auth.next_header().0))
            }
            EXT_ROUTING | EXT_DEST_OPTIONS => generic(rest),
            EXT_HOP_BY_HOP if index == 0 => generic(rest),
            // Rule::ExtHeaderKinds: a late hop-by-hop, mobility, HIP and shim6 all have the generic layout.
            _ => {
                self.rules.push(Rule::ExtHeaderKinds);
                generic(rest)
            }
        }
    }

    fn tcp(&mut self, link: ExpectedLink, segment: Segment) -> Step<Expected> {
        let tcp = TcpSlice::from_slice(segment.bytes).map_err(rejected)?;
        let options = self.options(tcp.options())?;
        let flags = [
            (tcp.fin(), TCP_FIN),
            (tcp.syn(), TCP_SYN),
            (tcp.rst(), TCP_RST),
            (tcp.psh(), TCP_PSH),
            (tcp.ack(), TCP_ACK),
            (tcp.urg(), TCP_URG),
            (tcp.ece(), TCP_ECE),
            (tcp.cwr(), TCP_CWR),
        ]
        .into_iter()
        .filter(|(set, _)| *set)
        .fold(0, |flags, (_, bit)| flags | bit);
        Ok(Expected::Tcp(ExpectedTcp {
            link,
            ip_version: segment.ip_version,
            saddr: segment.saddr,
            daddr: segment.daddr,
            sport: tcp.source_port(),
            dport: tcp.destination_port(),
            seq: tcp.sequence_number(),
            ack: tcp.acknowledgment_number(),
            flags,
            window: tcp.window_size(),
            urgent: tcp.urgent_pointer(),
            header_len: u8::try_from(tcp.header_len()).expect("TCP header is at most 60 bytes"),
            payload_len: u16::try_from(tcp.payload().len()).expect("IP lengths are 16 bits"),
            options,
        }))
    }

    fn options(&mut self, bytes: &[u8]) -> Step<ExpectedOptions> {
        let mut found = ExpectedOptions::default();
        let mut iter = TcpOptionsIterator::from_slice(bytes);
        loop {
            let rest = iter.rest();
            match iter.next() {
                None => return Ok(found),
                Some(Ok(option)) => found.push(option),
                // Rule::UnknownOption: skip the option by its length byte and go on decoding after it.
                Some(Err(TcpOptionReadError::UnknownId(kind))) => {
                    self.rules.push(Rule::UnknownOption);
                    let len = usize::from(*rest.get(1).ok_or_else(|| rejected("unknown option without a length"))?);
                    if len < 2 {
                        return Err(rejected("unknown option with length below 2"));
                    }
                    let after = rest
                        .get(len..)
                        .ok_or_else(|| rejected("unknown option past the header end"))?;
                    found.kinds.push(kind);
                    found.unknown = true;
                    iter = TcpOptionsIterator::from_slice(after);
                }
                Some(Err(e)) => return Err(rejected(e)),
            }
        }
    }

    fn arp(&mut self, link: ExpectedLink, body: &[u8]) -> Step<Expected> {
        let parsed = ArpPacketSlice::from_slice(body);
        // Rule::ArpEthernetIpv4: observer loads the 28-byte Ethernet/IPv4 body at once, then checks the types.
        let Some(fixed) = body.get(..ARP_ETH_IPV4_LEN) else {
            if parsed.is_ok() {
                self.rules.push(Rule::ArpEthernetIpv4);
            }
            return Err(rejected("ARP body shorter than 28 bytes"));
        };
        if fixed[..6] != [0, 1, 0x08, 0x00, 6, 4] {
            return Err(self.by(Rule::ArpEthernetIpv4, Stop::NotTcp));
        }
        let arp = parsed.map_err(rejected)?;
        Ok(Expected::Arp(ExpectedArp {
            link,
            operation: arp.operation().0,
            sender_mac: addr(arp.sender_hw_addr()),
            sender_ip: addr(arp.sender_protocol_addr()),
            target_mac: addr(arp.target_hw_addr()),
            target_ip: addr(arp.target_protocol_addr()),
        }))
    }
}

/// An ARP address of the Ethernet/IPv4 size `N`.
fn addr<const N: usize>(bytes: &[u8]) -> [u8; N] {
    bytes.try_into().expect("Ethernet/IPv4 ARP address sizes")
}

// ------------------------------------------------------------------------------------------------------------
// Named frames
// ------------------------------------------------------------------------------------------------------------

/// The outcome a named frame must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A TCP or ARP record (its fields are checked against [`expected`]).
    Record,
    /// No record: this counter.
    Counter(Counter),
}

/// Every named case with the outcome it must have, well-formed ones first.
pub fn named_cases() -> Vec<(&'static str, Vec<u8>, Outcome)> {
    use Counter::*;
    use Outcome::Record;
    let count = |c| Outcome::Counter(c);
    vec![
        ("syn_with_all_options", syn_with_all_options(), Record),
        ("syn_ack", syn_ack(), Record),
        ("fin_ack", fin_ack(), Record),
        ("rst", rst(), Record),
        ("ack_with_sack_1", ack_with_sack(1), Record),
        ("ack_with_sack_2", ack_with_sack(2), Record),
        ("ack_with_sack_3", ack_with_sack(3), Record),
        ("ack_with_sack_4", ack_with_sack(4), Record),
        ("data_segment_1", data_segment(1), Record),
        ("data_segment_1400", data_segment(1400), Record),
        ("arp_request", arp_request(), Record),
        ("arp_reply", arp_reply(), Record),
        ("gratuitous_arp", gratuitous_arp(), Record),
        ("vlan_tcp", vlan_tcp(), Record),
        ("double_vlan_tcp", double_vlan_tcp(), Record),
        ("ipv6_syn", ipv6_syn(), Record),
        ("ipv6_tcp_with_ext_headers", ipv6_tcp_with_ext_headers(), Record),
        ("ipv6_six_ext_headers", ipv6_tcp_with_dest_options(6), Record),
        ("ipv4_with_options_tcp", ipv4_with_options_tcp(), Record),
        ("first_fragment", first_fragment(), Record),
        ("unknown_option", unknown_option(), Record),
        ("ethernet_padding", pad(rst(), 60), Record),
        ("non_first_fragment", non_first_fragment(), count(NonFirstFragment)),
        (
            "ipv6_non_first_fragment",
            ipv6_non_first_fragment(),
            count(NonFirstFragment),
        ),
        ("udp_datagram", udp_datagram(), count(NotTcpOrArp)),
        ("arp_unsupported", arp_unsupported(), count(ArpUnsupported)),
        ("ihl_below_5", ihl_below_5(), count(BadIpHeader)),
        ("ip_version_mismatch", ip_version_mismatch(), count(BadIpHeader)),
        ("total_len_below_ihl", total_len_below_ihl(), count(BadIpLength)),
        (
            "total_len_past_frame",
            truncate(&syn_with_all_options(), 70),
            count(Truncated),
        ),
        ("arp_truncated", truncate(&arp_request(), 40), count(Truncated)),
        ("data_offset_below_5", data_offset_below_5(), count(BadDataOffset)),
        (
            "data_offset_past_segment",
            data_offset_past_segment(),
            count(BadDataOffset),
        ),
        ("option_len_0", option_len(0), count(BadOptionLength)),
        ("option_len_1", option_len(1), count(BadOptionLength)),
        ("option_len_past_end", option_len(34), count(OptionOverrun)),
        (
            "mss_wrong_length",
            with_options(&[OPTKIND_MSS, 5, 0x05, 0xb4, 0, OPTKIND_NOP, OPTKIND_NOP, 0]),
            count(BadOptionLength),
        ),
        ("three_vlan_tags", triple_vlan_tcp(), count(TooManyVlanTags)),
        (
            "ipv6_seven_ext_headers",
            ipv6_tcp_with_dest_options(7),
            count(TooManyExtHeaders),
        ),
    ]
}

/// Linux's SYN options: MSS 1460, SACK_PERM, timestamps, NOP, WS 7.
fn linux_syn_options(tsval: u32, tsecr: u32) -> [TcpOptionElement; 5] {
    use TcpOptionElement::*;
    [
        MaximumSegmentSize(1460),
        SelectiveAcknowledgementPermitted,
        Timestamp(tsval, tsecr),
        Noop,
        WindowScale(7),
    ]
}

/// NOP, NOP, timestamps: the options of an established connection's segments.
fn timestamp_options(tsval: u32, tsecr: u32) -> [TcpOptionElement; 3] {
    use TcpOptionElement::*;
    [Noop, Noop, Timestamp(tsval, tsecr)]
}

fn client_header(seq: u32) -> TcpHeader {
    TcpHeader::new(PORT_CLIENT, PORT_SERVER, seq, 64240)
}

fn server_header(seq: u32) -> TcpHeader {
    TcpHeader::new(PORT_SERVER, PORT_CLIENT, seq, 65160)
}

fn ipv4_header() -> Ipv4Header {
    Ipv4Header::new(0, 64, IpNumber::TCP, IP4_CLIENT, IP4_SERVER).expect("zero payload fits")
}

fn ipv6_header() -> Ipv6Header {
    Ipv6Header {
        hop_limit: 64,
        source: IP6_CLIENT,
        destination: IP6_SERVER,
        ..Default::default()
    }
}

fn ethernet() -> PacketBuilderStep<Ethernet2Header> {
    PacketBuilder::ethernet2(MAC_CLIENT, MAC_SERVER)
}

/// `tcp` carrying `options`.
fn with_elements(mut tcp: TcpHeader, options: &[TcpOptionElement]) -> TcpHeader {
    tcp.set_options(options).expect("options fit in 40 bytes");
    tcp
}

/// Writes the TCP segment `tcp` with `payload` behind `ip`.
fn finish_tcp(ip: PacketBuilderStep<IpHeaders>, tcp: TcpHeader, payload: &[u8]) -> Vec<u8> {
    let builder = ip.tcp_header(tcp);
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut out, payload).expect("valid TCP frame");
    out
}

/// Ethernet and a plain IPv4 header from client to server.
fn plain_ipv4() -> PacketBuilderStep<IpHeaders> {
    ethernet().ip(IpHeaders::Ipv4(ipv4_header(), Default::default()))
}

/// A TCP segment with `options` over plain IPv4 between the client and server addresses.
fn tcp4(tcp: TcpHeader, options: &[TcpOptionElement], payload: &[u8]) -> Vec<u8> {
    finish_tcp(plain_ipv4(), with_elements(tcp, options), payload)
}

/// Writes `builder`'s IP packet with `payload` as the protocol `next`.
fn finish_ip(builder: PacketBuilderStep<IpHeaders>, next: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder
        .write(&mut out, IpNumber(next), payload)
        .expect("valid IP frame");
    out
}

fn finish_arp(packet: ArpPacket, destination: [u8; 6]) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(MAC_CLIENT, destination).arp(packet);
    let mut out = Vec::with_capacity(builder.size());
    builder.write(&mut out).expect("valid ARP frame");
    out
}

fn eth_ipv4_arp(op: ArpOperation, sender: ([u8; 6], [u8; 4]), target: ([u8; 6], [u8; 4])) -> ArpPacket {
    ArpPacket::new(
        ArpHardwareId::ETHERNET,
        EtherType::IPV4,
        op,
        &sender.0,
        &sender.1,
        &target.0,
        &target.1,
    )
    .expect("Ethernet/IPv4 sizes")
}

/// A copy of `frame` with byte `at` set to `value`.
fn with_byte(mut frame: Vec<u8>, at: usize, value: u8) -> Vec<u8> {
    frame[at] = value;
    frame
}

/// The client's SYN header with the Linux option set.
fn client_syn() -> TcpHeader {
    with_elements(
        TcpHeader {
            syn: true,
            ..client_header(1000)
        },
        &linux_syn_options(111, 0),
    )
}

/// SYN from client to server with options in Linux order: MSS 1460, SACK_PERM, timestamps, NOP, WS 7.
pub fn syn_with_all_options() -> Vec<u8> {
    finish_tcp(plain_ipv4(), client_syn(), &[])
}

/// SYN-ACK from server to client with the Linux option set.
pub fn syn_ack() -> Vec<u8> {
    let header = TcpHeader {
        syn: true,
        ack: true,
        acknowledgment_number: 1001,
        ..server_header(5000)
    };
    tcp4(header, &linux_syn_options(222, 111), &[])
}

/// FIN-ACK from client to server with timestamps.
pub fn fin_ack() -> Vec<u8> {
    let header = TcpHeader {
        fin: true,
        ack: true,
        acknowledgment_number: 5001,
        ..client_header(1001)
    };
    tcp4(header, &timestamp_options(333, 222), &[])
}

/// RST from server to client, no options.
pub fn rst() -> Vec<u8> {
    tcp4(
        TcpHeader {
            rst: true,
            window_size: 0,
            ..server_header(5001)
        },
        &[],
        &[],
    )
}

/// ACK with timestamps (when they fit) and a SACK option of `n_blocks` (1..=4) blocks.
pub fn ack_with_sack(n_blocks: usize) -> Vec<u8> {
    use TcpOptionElement::*;
    assert!((1..=MAX_SACK_BLOCKS).contains(&n_blocks), "1 to 4 SACK blocks");
    let block = |i: u32| (1001 + 2000 * i, 2001 + 2000 * i);
    let mut more = [None; 3];
    for (i, slot) in more.iter_mut().enumerate().take(n_blocks - 1) {
        *slot = Some(block(i as u32 + 1));
    }
    let mut options = Vec::new();
    if n_blocks < MAX_SACK_BLOCKS {
        options.extend(timestamp_options(444, 333));
    }
    options.extend([Noop, Noop, SelectiveAcknowledgement(block(0), more)]);
    tcp4(
        TcpHeader {
            ack: true,
            acknowledgment_number: 1001,
            ..server_header(5001)
        },
        &options,
        &[],
    )
}

/// PSH-ACK data segment of `len` payload bytes with timestamps.
pub fn data_segment(len: usize) -> Vec<u8> {
    let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
    let header = TcpHeader {
        psh: true,
        ack: true,
        acknowledgment_number: 5001,
        ..client_header(1001)
    };
    tcp4(header, &timestamp_options(555, 444), &payload)
}

/// Broadcast ARP request from the client for the server's address.
pub fn arp_request() -> Vec<u8> {
    let arp = eth_ipv4_arp(ArpOperation::REQUEST, (MAC_CLIENT, IP4_CLIENT), ([0; 6], IP4_SERVER));
    finish_arp(arp, [0xff; 6])
}

/// ARP reply from the server to the client.
pub fn arp_reply() -> Vec<u8> {
    let arp = eth_ipv4_arp(ArpOperation::REPLY, (MAC_SERVER, IP4_SERVER), (MAC_CLIENT, IP4_CLIENT));
    finish_arp(arp, MAC_SERVER)
}

/// Gratuitous ARP: a broadcast request for the sender's own address.
pub fn gratuitous_arp() -> Vec<u8> {
    let arp = eth_ipv4_arp(ArpOperation::REQUEST, (MAC_CLIENT, IP4_CLIENT), ([0; 6], IP4_CLIENT));
    finish_arp(arp, [0xff; 6])
}

/// Ethernet/IPv4 frame of hardware type 6 (IEEE 802): ARP observer does not decode.
pub fn arp_unsupported() -> Vec<u8> {
    let arp = ArpPacket::new(
        ArpHardwareId(6),
        EtherType::IPV4,
        ArpOperation::REQUEST,
        &MAC_CLIENT,
        &IP4_CLIENT,
        &[0; 6],
        &IP4_SERVER,
    )
    .expect("matching sizes");
    finish_arp(arp, [0xff; 6])
}

/// SYN in 802.1Q VLAN 100.
pub fn vlan_tcp() -> Vec<u8> {
    let vlan = ethernet().single_vlan(VlanId::try_new(100).expect("12 bits"));
    let ip = vlan.ip(IpHeaders::Ipv4(ipv4_header(), Default::default()));
    finish_tcp(ip, client_syn(), &[])
}

/// SYN in QinQ: outer 802.1ad VLAN 200, inner 802.1Q VLAN 100.
pub fn double_vlan_tcp() -> Vec<u8> {
    let vlan = ethernet().double_vlan(
        VlanId::try_new(200).expect("12 bits"),
        VlanId::try_new(100).expect("12 bits"),
    );
    let ip = vlan.ip(IpHeaders::Ipv4(ipv4_header(), Default::default()));
    finish_tcp(ip, client_syn(), &[])
}

/// [`double_vlan_tcp`] with a third (old QinQ 0x9100) tag outside: malformed.
pub fn triple_vlan_tcp() -> Vec<u8> {
    insert_vlans(double_vlan_tcp(), &[(EtherType::VLAN_DOUBLE_TAGGED_FRAME, 300)])
}

/// SYN over IPv6 with the Linux option set.
pub fn ipv6_syn() -> Vec<u8> {
    let ip = ethernet().ip(IpHeaders::Ipv6(ipv6_header(), Default::default()));
    finish_tcp(ip, client_syn(), &[])
}

/// Data segment over IPv6 behind hop-by-hop, destination options and routing headers.
pub fn ipv6_tcp_with_ext_headers() -> Vec<u8> {
    // PadN filling the 6 bytes after next header and length; routing type 4 (segment routing), 0 segments left.
    let pad_n = [1, 4, 0, 0, 0, 0];
    let raw = |payload: &[u8]| Ipv6RawExtHeader::new_raw(IpNumber::TCP, payload).expect("6 + 8n bytes");
    let exts = Ipv6Extensions {
        hop_by_hop_options: Some(raw(&pad_n)),
        destination_options: Some(raw(&pad_n)),
        routing: Some(Ipv6RoutingExtensions {
            routing: raw(&[4, 0, 0, 0, 0, 0]),
            final_destination_options: None,
        }),
        fragment: None,
        auth: None,
    };
    let ip = ethernet().ip(IpHeaders::Ipv6(ipv6_header(), exts));
    let header = TcpHeader {
        psh: true,
        ack: true,
        acknowledgment_number: 5001,
        ..client_header(1001)
    };
    finish_tcp(ip, with_elements(header, &timestamp_options(555, 444)), b"hello")
}

/// IPv6 SYN behind `n` destination options headers (observer skips at most six).
pub fn ipv6_tcp_with_dest_options(n: usize) -> Vec<u8> {
    let exts: Vec<_> = (0..n)
        .map(|_| (EXT_DEST_OPTIONS, vec![0, 0, 1, 4, 0, 0, 0, 0]))
        .collect();
    insert_ipv6_extensions(ipv6_syn(), ETH_LEN, &exts)
}

/// IPv6 segment behind a fragment header with offset 185 (1480 bytes): a later fragment.
pub fn ipv6_non_first_fragment() -> Vec<u8> {
    insert_ipv6_extensions(ipv6_syn(), ETH_LEN, &[(EXT_FRAGMENT, fragment_header(185, false, 7))])
}

/// SYN over IPv4 with 8 bytes of IP options (router alert, NOPs, EOL).
pub fn ipv4_with_options_tcp() -> Vec<u8> {
    let mut ip = ipv4_header();
    ip.options = Ipv4Options::try_from(&[148, 4, 0, 0, 1, 1, 1, 0][..]).expect("multiple of 4");
    let ip = ethernet().ip(IpHeaders::Ipv4(ip, Default::default()));
    finish_tcp(ip, client_syn(), &[])
}

/// First IPv4 fragment (offset 0, more fragments) of a data segment: parsed like an unfragmented one.
pub fn first_fragment() -> Vec<u8> {
    let ip = Ipv4Header {
        more_fragments: true,
        identification: 7,
        ..ipv4_header()
    };
    let header = TcpHeader {
        psh: true,
        ack: true,
        acknowledgment_number: 5001,
        ..client_header(1001)
    };
    let tcp = with_elements(header, &timestamp_options(1, 2));
    finish_tcp(ethernet().ip(IpHeaders::Ipv4(ip, Default::default())), tcp, &[7; 64])
}

/// A later IPv4 fragment (offset 185, i.e. 1480 bytes) of a TCP packet: ignored.
pub fn non_first_fragment() -> Vec<u8> {
    let offset = IpFragOffset::try_new(185).expect("13 bits");
    let ip = Ipv4Header {
        fragment_offset: offset,
        identification: 7,
        ..ipv4_header()
    };
    finish_ip(
        ethernet().ip(IpHeaders::Ipv4(ip, Default::default())),
        IPPROTO_TCP,
        &[7; 100],
    )
}

/// A pure ACK with timestamps and no payload (the most common segment on a busy link).
pub fn pure_ack() -> Vec<u8> {
    let header = TcpHeader {
        ack: true,
        acknowledgment_number: 5001,
        ..client_header(1001)
    };
    tcp4(header, &timestamp_options(555, 444), &[])
}

/// A minimum-size frame of an EtherType the parser does not read (0x88b5, local experimental).
pub fn non_ip_frame() -> Vec<u8> {
    let mut frame = vec![0u8; 60];
    frame[..6].copy_from_slice(&[0xff; 6]);
    frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    frame[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    frame
}
/// A UDP datagram over IPv4: ignored.
pub fn udp_datagram() -> Vec<u8> {
    let builder = ethernet().ipv4(IP4_CLIENT, IP4_SERVER, 64).udp(5353, 5353);
    let mut out = Vec::new();
    builder.write(&mut out, b"query").expect("valid UDP frame");
    out
}

/// IPv4 SYN whose options are `raw` (zero-padded to a multiple of 4, at most 40 bytes).
pub fn with_options(raw: &[u8]) -> Vec<u8> {
    let mut header = TcpHeader {
        syn: true,
        ..client_header(1000)
    };
    header.set_options_raw(raw).expect("at most 40 option bytes");
    finish_tcp(plain_ipv4(), header, &[])
}

/// SYN with an experimental option (kind 253) before an MSS: skipped, flagged, and the MSS still read.
pub fn unknown_option() -> Vec<u8> {
    with_options(&[OPTKIND_EXPERIMENT, 4, 0xbe, 0xef, OPTKIND_MSS, 4, 0x05, 0xb4])
}

/// SYN with two NOPs and a SACK option whose length byte is `len` in an 8-byte option space.
pub fn option_len(len: u8) -> Vec<u8> {
    with_options(&[OPTKIND_NOP, OPTKIND_NOP, OPTKIND_SACK, len, 0, 0, 0, 0])
}

/// [`syn_with_all_options`] with IHL 4 (16 bytes): malformed.
pub fn ihl_below_5() -> Vec<u8> {
    with_byte(syn_with_all_options(), ETH_LEN, 0x44)
}

/// [`syn_with_all_options`] with IP version 6 under EtherType IPv4: malformed.
pub fn ip_version_mismatch() -> Vec<u8> {
    with_byte(syn_with_all_options(), ETH_LEN, 0x65)
}

/// [`syn_with_all_options`] with an IPv4 total length of 19, below its 20-byte header: malformed.
pub fn total_len_below_ihl() -> Vec<u8> {
    with_byte(with_byte(syn_with_all_options(), ETH_LEN + 2, 0), ETH_LEN + 3, 19)
}

/// [`syn_with_all_options`] with TCP data offset 4 (16 bytes): malformed.
pub fn data_offset_below_5() -> Vec<u8> {
    let frame = syn_with_all_options();
    let at = ETH_LEN + Ipv4Header::MIN_LEN + 12;
    let value = 0x40 | (frame[at] & 0x0f);
    with_byte(frame, at, value)
}

/// [`rst`] (no options, no payload) with data offset 6: the header runs past the segment: malformed.
pub fn data_offset_past_segment() -> Vec<u8> {
    let frame = rst();
    let at = ETH_LEN + Ipv4Header::MIN_LEN + 12;
    let value = 0x60 | (frame[at] & 0x0f);
    with_byte(frame, at, value)
}

/// The first `n` bytes of `frame`.
pub fn truncate(frame: &[u8], n: usize) -> Vec<u8> {
    frame[..n.min(frame.len())].to_vec()
}

/// `frame` zero-padded to at least `min_len` bytes, as Ethernet pads short frames to 60.
pub fn pad(mut frame: Vec<u8>, min_len: usize) -> Vec<u8> {
    if frame.len() < min_len {
        frame.resize(min_len, 0);
    }
    frame
}

/// `frame` with VLAN tags (TPID, TCI) inserted after the MAC addresses, outermost first.
pub fn insert_vlans(frame: Vec<u8>, tags: &[(EtherType, u16)]) -> Vec<u8> {
    let bytes = tags
        .iter()
        .flat_map(|(tpid, tci)| [tpid.0.to_be_bytes(), tci.to_be_bytes()])
        .flatten();
    let mut out = frame[..12].to_vec();
    out.extend(bytes);
    out.extend_from_slice(&frame[12..]);
    out
}

/// `frame` with IPv6 extension headers `(kind, bytes)` inserted after the IPv6 header at `ip_at`.
///
/// Each header's next-header byte and the IPv6 next-header and payload-length fields are rewritten to chain them.
pub fn insert_ipv6_extensions(mut frame: Vec<u8>, ip_at: usize, exts: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut next = frame[ip_at + 6];
    let mut chain = Vec::new();
    for (kind, bytes) in exts.iter().rev() {
        let mut header = bytes.clone();
        header[0] = next;
        header.extend(chain);
        chain = header;
        next = *kind;
    }
    frame[ip_at + 6] = next;
    let payload_len = u16::from_be_bytes([frame[ip_at + 4], frame[ip_at + 5]]) as usize + chain.len();
    frame[ip_at + 4..ip_at + 6].copy_from_slice(&(payload_len as u16).to_be_bytes());
    let at = ip_at + Ipv6Header::LEN;
    frame.splice(at..at, chain);
    frame
}

/// An IPv6 fragment header laid out per RFC 8200 (etherparse 0.19's writer puts M and the offset's low bits elsewhere).
pub fn fragment_header(offset: u16, more: bool, id: u32) -> Vec<u8> {
    let bits = (offset << 3) | u16::from(more);
    let mut header = vec![0, 0];
    header.extend(bits.to_be_bytes());
    header.extend(id.to_be_bytes());
    header
}

// ------------------------------------------------------------------------------------------------------------
// Random frames
// ------------------------------------------------------------------------------------------------------------

/// `n` frames from a generator seeded with `seed`: valid and broken TCP, ARP and other traffic.
pub fn random_frames(seed: u64, n: usize) -> Vec<Vec<u8>> {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let mut generator = Generator {
        rng: TestRng::from_seed(RngAlgorithm::ChaCha, &key),
    };
    (0..n).map(|_| generator.frame()).collect()
}

/// Where the headers of a generated frame start, for targeted corruption.
#[derive(Clone, Copy, Default)]
struct Layout {
    /// 4 or 6 when `ip` is an IP header, else 0.
    ip_version: u8,
    ip: usize,
    /// Start of the transport header, for IP frames.
    transport: Option<usize>,
    /// Length of the TCP option space.
    options: usize,
}

struct Generator {
    rng: TestRng,
}

impl Generator {
    fn frame(&mut self) -> Vec<u8> {
        let (frame, mut layout) = match self.rng.random_range(0..20u8) {
            0..=7 => self.tcp_v4(),
            8..=13 => self.tcp_v6(),
            14..=16 => self.arp(),
            17..=18 => self.other_ip(),
            _ => self.other_ethertype(),
        };
        let tags = match self.rng.random_range(0..20u8) {
            0..=11 => 0,
            12..=15 => 1,
            16..=18 => 2,
            _ => 3,
        };
        let tags: Vec<_> = (0..tags).map(|_| (self.pick(&VLAN_TPIDS), self.rng.random())).collect();
        let mut frame = insert_vlans(frame, &tags);
        layout.ip += 4 * tags.len();
        layout.transport = layout.transport.map(|at| at + 4 * tags.len());
        if self.rng.random_bool(0.2) {
            let trailer = self.bytes(1..=24);
            frame.extend(trailer);
        }
        if self.rng.random_bool(0.35) {
            self.corrupt(&mut frame, layout);
        }
        frame
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.rng.random_range(0..from.len())]
    }

    fn bytes(&mut self, len: std::ops::RangeInclusive<usize>) -> Vec<u8> {
        let len = self.rng.random_range(len);
        (0..len).map(|_| self.rng.random()).collect()
    }

    fn tcp_header(&mut self) -> TcpHeader {
        let mut header = TcpHeader {
            source_port: self.rng.random(),
            destination_port: self.rng.random(),
            sequence_number: self.rng.random(),
            acknowledgment_number: self.rng.random(),
            ns: self.rng.random(),
            fin: self.rng.random(),
            syn: self.rng.random(),
            rst: self.rng.random(),
            psh: self.rng.random(),
            ack: self.rng.random(),
            urg: self.rng.random(),
            ece: self.rng.random(),
            cwr: self.rng.random(),
            window_size: self.rng.random(),
            urgent_pointer: self.rng.random(),
            ..Default::default()
        };
        let options = self.tcp_options();
        header.set_options_raw(&options).expect("at most 40 option bytes");
        header
    }

    /// Raw option bytes: well-formed and unknown options with NOP padding; in some lists wrong lengths or garbage.
    fn tcp_options(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let kinds = if self.rng.random_bool(0.3) { 0..24u8 } else { 0..20 };
        for _ in 0..self.rng.random_range(0..=7) {
            let option: Vec<u8> = match self.rng.random_range(kinds.clone()) {
                0..=4 => vec![OPTKIND_NOP],
                5..=6 => [OPTKIND_MSS, 4]
                    .into_iter()
                    .chain(self.rng.random::<u16>().to_be_bytes())
                    .collect(),
                7..=8 => vec![OPTKIND_WSCALE, 3, self.rng.random_range(0..=14)],
                9..=10 => vec![OPTKIND_SACK_PERM, 2],
                11..=13 => {
                    let mut ts = vec![OPTKIND_TIMESTAMP, 10];
                    ts.extend(self.bytes(8..=8));
                    ts
                }
                14..=16 => {
                    let blocks = self.rng.random_range(1..=4);
                    let mut sack = vec![OPTKIND_SACK, 2 + 8 * blocks as u8];
                    sack.extend(self.bytes(8 * blocks..=8 * blocks));
                    sack
                }
                17 => vec![OPTKIND_EOL],
                18..=19 => {
                    // Unknown kind with a consistent length.
                    let kind = self.pick(&[6, 7, 9, 19, 28, 29, 30, 34, 253, 254, 255]);
                    let body = self.bytes(0..=6);
                    [kind, 2 + body.len() as u8].into_iter().chain(body).collect()
                }
                20..=21 => {
                    // Known kind with a random length byte.
                    let kind = self.pick(&[
                        OPTKIND_MSS,
                        OPTKIND_WSCALE,
                        OPTKIND_SACK_PERM,
                        OPTKIND_SACK,
                        OPTKIND_TIMESTAMP,
                    ]);
                    let body = self.bytes(0..=12);
                    [kind, self.rng.random_range(0..=20)].into_iter().chain(body).collect()
                }
                _ => self.bytes(1..=6),
            };
            out.extend(option);
        }
        out.truncate(40);
        out
    }

    fn tcp_v4(&mut self) -> (Vec<u8>, Layout) {
        let mut ip = Ipv4Header::new(0, 64, IpNumber::TCP, self.rng.random(), self.rng.random()).expect("fits");
        ip.identification = self.rng.random();
        ip.dont_fragment = self.rng.random();
        if self.rng.random_bool(0.2) {
            let words = self.rng.random_range(1..=10);
            ip.options = Ipv4Options::try_from(&self.bytes(4 * words..=4 * words)[..]).expect("multiple of 4");
        }
        match self.rng.random_range(0..12u8) {
            0 => ip.more_fragments = true,
            1 => ip.fragment_offset = IpFragOffset::try_new(self.rng.random_range(1..0x2000)).expect("13 bits"),
            _ => {}
        }
        let tcp = self.tcp_header();
        let layout = Layout {
            ip_version: 4,
            ip: ETH_LEN,
            transport: Some(ETH_LEN + ip.header_len()),
            options: tcp.options.len(),
        };
        let payload = self.bytes(0..=48);
        (
            finish_tcp(ethernet().ip(IpHeaders::Ipv4(ip, Default::default())), tcp, &payload),
            layout,
        )
    }

    fn tcp_v6(&mut self) -> (Vec<u8>, Layout) {
        let ip = Ipv6Header {
            hop_limit: 64,
            source: self.rng.random(),
            destination: self.rng.random(),
            ..Default::default()
        };
        let tcp = self.tcp_header();
        let options = tcp.options.len();
        let payload = self.bytes(0..=48);
        let frame = finish_tcp(ethernet().ip(IpHeaders::Ipv6(ip, Default::default())), tcp, &payload);
        let count = match self.rng.random_range(0..10u8) {
            0..=3 => 0,
            4..=7 => self.rng.random_range(1..=3),
            _ => self.rng.random_range(4..=8),
        };
        let exts: Vec<_> = (0..count).map(|i| self.extension_header(i)).collect();
        let ext_len: usize = exts.iter().map(|(_, bytes)| bytes.len()).sum();
        let layout = Layout {
            ip_version: 6,
            ip: ETH_LEN,
            transport: Some(ETH_LEN + Ipv6Header::LEN + ext_len),
            options,
        };
        (insert_ipv6_extensions(frame, ETH_LEN, &exts), layout)
    }

    /// An extension header of a random kind; hop-by-hop mostly comes first, as RFC 8200 wants.
    fn extension_header(&mut self, index: usize) -> (u8, Vec<u8>) {
        let kind = match self.rng.random_range(0..16u8) {
            0..=3 if index == 0 => EXT_HOP_BY_HOP,
            0..=4 => EXT_DEST_OPTIONS,
            5..=7 => EXT_ROUTING,
            8..=10 => EXT_FRAGMENT,
            11..=12 => EXT_AUTH,
            _ => self.pick(&[EXT_HOP_BY_HOP, EXT_MOBILITY, EXT_HIP, EXT_SHIM6]),
        };
        let bytes = match kind {
            EXT_FRAGMENT => {
                let offset = if self.rng.random_bool(0.7) {
                    0
                } else {
                    self.rng.random_range(1..0x2000)
                };
                let mut header = fragment_header(offset, self.rng.random(), self.rng.random());
                if self.rng.random_bool(0.2) {
                    header[3] |= self.rng.random_range(0..4u8) << 1; // reserved bits
                }
                header
            }
            EXT_AUTH => {
                let len = self.rng.random_range(0..=5u8);
                let mut header = vec![0, len];
                header.extend(self.bytes(4 * usize::from(len) + 6..=4 * usize::from(len) + 6));
                header
            }
            _ => {
                let len = self.rng.random_range(0..=2u8);
                let mut header = vec![0, len];
                header.extend(self.bytes(8 * usize::from(len) + 6..=8 * usize::from(len) + 6));
                header
            }
        };
        (kind, bytes)
    }

    fn arp(&mut self) -> (Vec<u8>, Layout) {
        let any_op = self.rng.random();
        let operation = ArpOperation(self.pick(&[1, 1, 2, 2, 3, 4, any_op]));
        let any_type = self.rng.random();
        let (hw_type, proto_type, hw_len, proto_len) = match self.rng.random_range(0..8u8) {
            0 => (any_type, 0x0800, 6, 4),
            1 => (1, self.pick(&[0x86dd, any_type]), 6, 4),
            2 => (1, 0x0800, self.rng.random_range(0..=16), self.rng.random_range(0..=16)),
            _ => (1, 0x0800, 6, 4),
        };
        let mut addr = |len: usize| self.bytes(len..=len);
        let (sha, spa, tha, tpa) = (addr(hw_len), addr(proto_len), addr(hw_len), addr(proto_len));
        let arp = ArpPacket::new(
            ArpHardwareId(hw_type),
            EtherType(proto_type),
            operation,
            &sha,
            &spa,
            &tha,
            &tpa,
        )
        .expect("matching sizes");
        (finish_arp(arp, [0xff; 6]), Layout::default())
    }

    fn other_ip(&mut self) -> (Vec<u8>, Layout) {
        let payload = self.bytes(0..=64);
        if self.rng.random() {
            let any = self.rng.random();
            let protocol = self.pick(&[1, 17, 47, 50, 51, 132, any]);
            let ip = Ipv4Header::new(0, 64, IpNumber(protocol), self.rng.random(), self.rng.random()).expect("fits");
            let ip_len = ip.header_len();
            let frame = finish_ip(
                ethernet().ip(IpHeaders::Ipv4(ip, Default::default())),
                protocol,
                &payload,
            );
            (
                frame,
                Layout {
                    ip_version: 4,
                    ip: ETH_LEN,
                    transport: Some(ETH_LEN + ip_len),
                    options: 0,
                },
            )
        } else {
            // Includes extension-header kinds followed by garbage.
            let any = self.rng.random();
            let next = self.pick(&[17, 58, 59, 0, 43, 44, 51, 60, any]);
            let ip = Ipv6Header {
                hop_limit: 64,
                source: self.rng.random(),
                destination: self.rng.random(),
                ..Default::default()
            };
            // etherparse's builder refuses an extension kind as the last next header, so it is set afterwards.
            let frame = finish_ip(ethernet().ip(IpHeaders::Ipv6(ip, Default::default())), 59, &payload);
            let frame = with_byte(frame, ETH_LEN + 6, next);
            (
                frame,
                Layout {
                    ip_version: 6,
                    ip: ETH_LEN,
                    transport: Some(ETH_LEN + Ipv6Header::LEN),
                    options: 0,
                },
            )
        }
    }

    fn other_ethertype(&mut self) -> (Vec<u8>, Layout) {
        let any = self.rng.random();
        let ether_type = self.pick(&[0x88cc, 0x8035, 0x0842, 0x88e5, 0x8847, 0x0026, any]);
        let mut frame = Ethernet2Header {
            source: MAC_CLIENT,
            destination: MAC_SERVER,
            ether_type: EtherType(ether_type),
        }
        .to_bytes()
        .to_vec();
        frame.extend(self.bytes(0..=64));
        (
            frame,
            Layout {
                ip_version: 0,
                ip: ETH_LEN,
                transport: None,
                options: 0,
            },
        )
    }

    /// Breaks one thing: the length, an IP or TCP header field, an option byte, or any byte.
    fn corrupt(&mut self, frame: &mut Vec<u8>, at: Layout) {
        let len = frame.len();
        let set = |frame: &mut Vec<u8>, i: usize, value: u8| {
            if let Some(byte) = frame.get_mut(i) {
                *byte = value;
            }
        };
        let byte = |frame: &[u8], i: usize| frame.get(i).copied().unwrap_or(0);
        match (self.rng.random_range(0..8u8), at.transport) {
            (0 | 1, _) => frame.truncate(self.rng.random_range(0..len)),
            (2, _) if at.ip_version == 4 => {
                let ihl = self.rng.random_range(0..16u8);
                set(frame, at.ip, 0x40 | ihl);
            }
            (3, Some(tcp)) => {
                let offset = self.rng.random_range(0..16u8) << 4;
                set(frame, tcp + 12, offset | (byte(frame, tcp + 12) & 0x0f));
            }
            (4, _) if at.ip_version != 0 => {
                let field = at.ip + if at.ip_version == 4 { 2 } else { 4 };
                let old = u16::from_be_bytes([byte(frame, field), byte(frame, field + 1)]);
                let new = match self.rng.random_range(0..4u8) {
                    0 => 0,
                    1 => self.rng.random(),
                    _ => old.wrapping_add_signed(self.rng.random_range(-16..=16)),
                };
                let [hi, lo] = new.to_be_bytes();
                set(frame, field, hi);
                set(frame, field + 1, lo);
            }
            (5, _) if at.ip_version != 0 => {
                let version = self.rng.random_range(0..16u8) << 4;
                set(frame, at.ip, version | (byte(frame, at.ip) & 0x0f));
            }
            (6, Some(tcp)) if at.options > 0 => {
                let i = tcp + 20 + self.rng.random_range(0..at.options);
                let value = self.rng.random();
                set(frame, i, value);
            }
            _ => {
                let i = self.rng.random_range(0..len);
                let value = self.rng.random();
                set(frame, i, value);
            }
        }
    }
}
