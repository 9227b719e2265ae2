//! Fixed-size records that the packet programs submit to the `EVENTS` ring buffer.
//!
//! Every record starts with a [`RecordHeader`] whose `kind` tells which struct follows; each kind has one
//! fixed size. Multi-byte fields are in host byte order, addresses in network order.

use core::mem::size_of;

/// Name of the ring buffer map the packet records go to.
pub const EVENTS_MAP: &str = "EVENTS";
/// Default size of the `EVENTS` ring buffer in bytes (a power of two): about 27,000 TCP records.
pub const RING_BYTES: u32 = 4 << 20;
/// Name of the ring buffer map the socket programs' records go to, apart from the packets so that a packet
/// flood cannot crowd them out.
pub const SOCK_EVENTS_MAP: &str = "SOCK_EVENTS";
/// Default size of the `SOCK_EVENTS` ring buffer in bytes (a power of two): about 20,000 socket records.
pub const SOCK_RING_BYTES: u32 = 2 << 20;

/// `RecordHeader::kind` of a [`TcpRecord`].
pub const KIND_TCP: u8 = 1;
/// `RecordHeader::kind` of an [`ArpRecord`].
pub const KIND_ARP: u8 = 2;

/// `RecordHeader::hook`: TC classifier on ingress.
pub const HOOK_TC_INGRESS: u8 = 1;
/// `RecordHeader::hook`: TC classifier on egress.
pub const HOOK_TC_EGRESS: u8 = 2;
/// `RecordHeader::hook`: XDP (ingress only).
pub const HOOK_XDP: u8 = 3;

/// `RecordHeader::direction`: received by the interface.
pub const DIR_INGRESS: u8 = 0;
/// `RecordHeader::direction`: sent by the interface.
pub const DIR_EGRESS: u8 = 1;

/// `RecordHeader::flags`: a [`Snap`] trailer follows the record (the form `--write` asks for).
pub const HDR_SNAP: u8 = 0x01;
/// `RecordHeader::flags`: `vlan_ids[0]` came from the skb's metadata (an offloaded tag), not from the frame's
/// bytes, so a [`Snap`] does not contain it.
pub const HDR_VLAN_OFFLOADED: u8 = 0x02;
/// `RecordHeader::flags`: the offloaded tag was an 802.1ad service tag (TPID 0x88a8), not 802.1Q (0x8100).
pub const HDR_VLAN_8021AD: u8 = 0x04;
/// TPID of an 802.1Q tag.
pub const TPID_8021Q: u16 = 0x8100;
/// TPID of an 802.1ad service tag.
pub const TPID_8021AD: u16 = 0x88a8;

/// Most frame bytes a [`Snap`] carries: Ethernet with two VLAN tags (22), IPv4 with options (60) and TCP with
/// options (60) need 142; the rest leaves IPv6 (40) room for 70 bytes of extension headers beside the
/// longest TCP header. Longer headers are cut at this length.
pub const SNAP_LEN: usize = 192;

/// TCP flag bits as in byte 13 of the TCP header.
pub const TCP_FIN: u8 = 0x01;
/// SYN flag bit.
pub const TCP_SYN: u8 = 0x02;
/// RST flag bit.
pub const TCP_RST: u8 = 0x04;
/// PSH flag bit.
pub const TCP_PSH: u8 = 0x08;
/// ACK flag bit.
pub const TCP_ACK: u8 = 0x10;
/// URG flag bit.
pub const TCP_URG: u8 = 0x20;
/// ECE flag bit.
pub const TCP_ECE: u8 = 0x40;
/// CWR flag bit.
pub const TCP_CWR: u8 = 0x80;

/// `TcpRecord::options` bit: an MSS option was present (`mss`).
pub const OPT_MSS: u8 = 0x01;
/// Window scale option present (`wscale` is the shift).
pub const OPT_WSCALE: u8 = 0x02;
/// SACK permitted option present.
pub const OPT_SACK_PERM: u8 = 0x04;
/// Timestamps option present (`tsval`, `tsecr`).
pub const OPT_TIMESTAMP: u8 = 0x08;
/// SACK option present (`sack_count` blocks in `sack`).
pub const OPT_SACK: u8 = 0x10;
/// An option of a kind the parser does not decode was present (and skipped by its length).
pub const OPT_UNKNOWN: u8 = 0x20;

/// TCP option kinds (IANA).
pub const OPTKIND_EOL: u8 = 0;
/// No-operation option kind.
pub const OPTKIND_NOP: u8 = 1;
/// Maximum segment size option kind.
pub const OPTKIND_MSS: u8 = 2;
/// Window scale option kind.
pub const OPTKIND_WSCALE: u8 = 3;
/// SACK permitted option kind.
pub const OPTKIND_SACK_PERM: u8 = 4;
/// SACK option kind.
pub const OPTKIND_SACK: u8 = 5;
/// Timestamps option kind.
pub const OPTKIND_TIMESTAMP: u8 = 8;

/// Most SACK blocks a 40-byte option space can carry.
pub const MAX_SACK_BLOCKS: usize = 4;
/// Option kinds remembered in wire order (NOP and EOL are not remembered).
pub const MAX_OPTION_KINDS: usize = 8;
/// Most VLAN tags parsed (offloaded tag included).
pub const MAX_VLAN_TAGS: usize = 2;

/// Common first part of every record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordHeader {
    /// `bpf_ktime_get_boot_ns()` when the hook ran.
    pub ts_ns: u64,
    /// Interface index the hook is attached to.
    pub ifindex: u32,
    /// Frame length as the hook saw it (skb->len or XDP data length).
    pub wire_len: u32,
    /// Ethernet source MAC.
    pub eth_src: [u8; 6],
    /// Ethernet destination MAC.
    pub eth_dst: [u8; 6],
    /// `KIND_*`.
    pub kind: u8,
    /// `HOOK_*`.
    pub hook: u8,
    /// `DIR_*`.
    pub direction: u8,
    /// Number of VLAN ids in `vlan_ids` (outer first; an offloaded tag counts and comes first).
    pub vlan_count: u8,
    /// VLAN ids (12 bits), outer first.
    pub vlan_ids: [u16; MAX_VLAN_TAGS],
    /// `HDR_*` bits.
    pub flags: u8,
    /// Explicit padding to 8-byte alignment.
    pub _pad: [u8; 3],
}

/// One SACK block: left and right edge, absolute sequence numbers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SackBlock {
    /// Left edge (first sequence number in the block).
    pub left: u32,
    /// Right edge (first sequence number after the block).
    pub right: u32,
}

/// A TCP segment over IPv4 or IPv6.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpRecord {
    /// Common header; `kind` is [`KIND_TCP`].
    pub header: RecordHeader,
    /// Source address; IPv4 uses the first 4 bytes.
    pub saddr: [u8; 16],
    /// Destination address; IPv4 uses the first 4 bytes.
    pub daddr: [u8; 16],
    /// 4 or 6.
    pub ip_version: u8,
    /// `TCP_*` flag bits (byte 13 of the header).
    pub flags: u8,
    /// TCP header length in bytes (data offset * 4).
    pub header_len: u8,
    /// `OPT_*` bits of the options present.
    pub options: u8,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Sequence number (absolute).
    pub seq: u32,
    /// Acknowledgement number (absolute; meaningful when ACK is set).
    pub ack: u32,
    /// Raw window field, unscaled.
    pub window: u16,
    /// Urgent pointer.
    pub urgent: u16,
    /// TCP payload length from the IP length fields.
    pub payload_len: u16,
    /// MSS option value.
    pub mss: u16,
    /// Window scale option: the shift count as sent.
    pub wscale: u8,
    /// Number of valid entries in `sack`.
    pub sack_count: u8,
    /// Number of valid entries in `option_kinds`.
    pub option_count: u8,
    /// Explicit padding.
    pub _pad0: u8,
    /// Timestamp option TSval.
    pub tsval: u32,
    /// Timestamp option TSecr.
    pub tsecr: u32,
    /// Option kinds in wire order, NOP and EOL left out.
    pub option_kinds: [u8; MAX_OPTION_KINDS],
    /// SACK blocks in wire order.
    pub sack: [SackBlock; MAX_SACK_BLOCKS],
    /// Explicit padding to 8-byte alignment.
    pub _pad1: [u8; 4],
}

/// An ARP packet over Ethernet carrying IPv4 addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArpRecord {
    /// Common header; `kind` is [`KIND_ARP`].
    pub header: RecordHeader,
    /// 1 request, 2 reply (other values are passed on as seen).
    pub operation: u16,
    /// Sender hardware address.
    pub sender_mac: [u8; 6],
    /// Sender protocol address.
    pub sender_ip: [u8; 4],
    /// Target hardware address.
    pub target_mac: [u8; 6],
    /// Target protocol address.
    pub target_ip: [u8; 4],
    /// Explicit padding to 8-byte alignment.
    pub _pad: [u8; 2],
}

/// The first bytes of a frame: Ethernet through the end of the TCP options, or the whole ARP frame, cut at
/// [`SNAP_LEN`]. Bytes past `len` are zero.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snap {
    /// Valid bytes in `bytes`.
    pub len: u16,
    /// Explicit padding.
    pub _pad: [u8; 6],
    /// The frame's bytes from offset 0.
    pub bytes: [u8; SNAP_LEN],
}

impl Default for Snap {
    fn default() -> Self {
        Snap {
            len: 0,
            _pad: [0; 6],
            bytes: [0; SNAP_LEN],
        }
    }
}

impl Snap {
    /// The valid bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..(self.len as usize).min(SNAP_LEN)]
    }
}

/// A [`TcpRecord`] with the frame's header bytes (`header.flags` has [`HDR_SNAP`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpSnapRecord {
    /// The record as without `--write`.
    pub record: TcpRecord,
    /// The header bytes.
    pub snap: Snap,
}

/// An [`ArpRecord`] with the frame's bytes (`header.flags` has [`HDR_SNAP`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArpSnapRecord {
    /// The record as without `--write`.
    pub record: ArpRecord,
    /// The frame's bytes.
    pub snap: Snap,
}

/// ARP operation: request.
pub const ARP_REQUEST: u16 = 1;
/// ARP operation: reply.
pub const ARP_REPLY: u16 = 2;

/// Byte offset of `RecordHeader::kind` in every record.
pub const KIND_OFFSET: usize = core::mem::offset_of!(RecordHeader, kind);

const _: () = assert!(size_of::<RecordHeader>() == 40);
const _: () = assert!(size_of::<TcpRecord>() == 152);
const _: () = assert!(size_of::<ArpRecord>() == 64);
const _: () = assert!(KIND_OFFSET == 28);
const _: () = assert!(size_of::<Snap>() == 8 + SNAP_LEN);
const _: () = assert!(size_of::<TcpSnapRecord>() == 152 + 8 + SNAP_LEN);
const _: () = assert!(size_of::<ArpSnapRecord>() == 64 + 8 + SNAP_LEN);
const _: () = assert!(SNAP_LEN >= 14 + 8 + 60 + 60 && SNAP_LEN.is_multiple_of(8) && SNAP_LEN <= u16::MAX as usize);

impl TcpRecord {
    /// The source address as the IP version's bytes (4 or 16).
    pub fn src_bytes(&self) -> &[u8] {
        if self.ip_version == 4 {
            &self.saddr[..4]
        } else {
            &self.saddr
        }
    }

    /// The destination address as the IP version's bytes (4 or 16).
    pub fn dst_bytes(&self) -> &[u8] {
        if self.ip_version == 4 {
            &self.daddr[..4]
        } else {
            &self.daddr
        }
    }

    /// The valid SACK blocks.
    pub fn sack_blocks(&self) -> &[SackBlock] {
        &self.sack[..(self.sack_count as usize).min(MAX_SACK_BLOCKS)]
    }

    /// The remembered option kinds in wire order.
    pub fn option_kinds(&self) -> &[u8] {
        &self.option_kinds[..(self.option_count as usize).min(MAX_OPTION_KINDS)]
    }
}

// SAFETY: #[repr(C)] integers and byte arrays with explicit padding, 8-aligned, sizes multiples of 8.
unsafe impl crate::mem::Words for TcpRecord {}
// SAFETY: as above.
unsafe impl crate::mem::Words for ArpRecord {}
// SAFETY: as above.
unsafe impl crate::mem::Words for Snap {}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] structs of integers and byte arrays with explicit padding.
    unsafe impl aya::Pod for super::TcpRecord {}
    unsafe impl aya::Pod for super::ArpRecord {}
    unsafe impl aya::Pod for super::TcpSnapRecord {}
    unsafe impl aya::Pod for super::ArpSnapRecord {}
}
