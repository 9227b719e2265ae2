//! The frame parser the kernel programs run: Ethernet (and VLAN), IPv4/IPv6, TCP with options, ARP.
//!
//! It reads through the [`Frame`] trait, which the TC and XDP programs implement with the kernel's
//! load-bytes helpers and the host tests implement over a byte slice. Every frame ends in a record or in
//! exactly one [`Counter`] saying why not (ignored, or malformed by class).
//!
//! Verifier notes: every load has a constant size (headers are loaded in pieces, never more than 28 bytes, to
//! keep the stack small) except the TCP options, whose length is checked against
//! [`MAX_OPTIONS_LEN`] right before the load; the option walk is a counted loop over a cursor kept in memory
//! (see [`parse_options`]), and reads the option buffer only through [`opt8`], whose mask proves each read in
//! bounds.

use crate::{
    counter::Counter,
    record::{
        ArpRecord, HDR_VLAN_8021AD, HDR_VLAN_OFFLOADED, KIND_ARP, KIND_TCP, MAX_OPTION_KINDS, MAX_SACK_BLOCKS,
        MAX_VLAN_TAGS, OPT_MSS, OPT_SACK, OPT_SACK_PERM, OPT_TIMESTAMP, OPT_UNKNOWN, OPT_WSCALE, OPTKIND_EOL,
        OPTKIND_MSS, OPTKIND_NOP, OPTKIND_SACK, OPTKIND_SACK_PERM, OPTKIND_TIMESTAMP, OPTKIND_WSCALE, RecordHeader,
        SNAP_LEN, Snap, TPID_8021AD, TcpRecord,
    },
};

/// Longest TCP option space (data offset 15).
pub const MAX_OPTIONS_LEN: usize = 40;
/// Mask that keeps the option walk's cursor below 64, above any cursor a valid walk reaches ([`MAX_OPTIONS_LEN`]).
const CURSOR_MASK: usize = 63;
/// Size of the buffer the options are loaded into: a power of two that holds any masked cursor plus the
/// longest read behind it (a timestamp's 10 bytes).
pub const OPTION_BUF_LEN: usize = 128;
/// The buffer TCP options are loaded into, and the option walk's cursor. Only the bytes just loaded are ever
/// read, so a buffer reused from an earlier frame needs no clearing.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionBuf {
    /// The option bytes.
    pub bytes: [u8; OPTION_BUF_LEN],
    /// Offset of the option being read (see [`parse_options`]).
    cursor: usize,
}

impl Default for OptionBuf {
    fn default() -> Self {
        OptionBuf {
            bytes: [0; OPTION_BUF_LEN],
            cursor: 0,
        }
    }
}

impl OptionBuf {
    /// The walk's cursor.
    ///
    /// Verifier: read through a volatile load, so that in the kernel (where the buffer lives in map memory) the
    /// verifier sees the same value range, 0..=63 from the mask, in every pass. Kept in a register, its exact
    /// range differed in every pass, no two walk states were alike, and Linux 6.12 gave up ("The sequence of
    /// 8193 jumps is too complex"). The mask, not the `i < opt_len` test, bounds the reads behind it: verifiers
    /// before 6.8 learn nothing from comparing two unknown registers. A valid walk never passes
    /// [`MAX_OPTIONS_LEN`], so the mask changes no value.
    #[inline(always)]
    fn cursor(&self) -> usize {
        // SAFETY: a valid reference.
        unsafe { core::ptr::read_volatile(&self.cursor) & CURSOR_MASK }
    }

    #[inline(always)]
    fn set_cursor(&mut self, at: usize) {
        // SAFETY: a valid, exclusive reference.
        unsafe { core::ptr::write_volatile(&mut self.cursor, at) }
    }
}

/// Most IPv6 extension headers skipped before giving up.
pub const MAX_EXT_HEADERS: usize = 6;

/// EtherType of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// EtherType of ARP.
pub const ETH_P_ARP: u16 = 0x0806;
/// EtherType of an 802.1Q tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// EtherType of an 802.1ad (QinQ) tag.
pub const ETH_P_8021AD: u16 = 0x88a8;
/// EtherType of the old QinQ tag some switches still send.
pub const ETH_P_QINQ1: u16 = 0x9100;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;

/// A frame the parser can read from.
pub trait Frame {
    /// Frame length in bytes.
    fn len(&self) -> usize;

    /// Whether the frame is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies the `N` bytes at `offset` into `dst`; `false` (and `dst` unspecified) past the end of the frame.
    fn load_into<const N: usize>(&self, offset: usize, dst: &mut [u8; N]) -> bool;

    /// The `N` bytes at `offset`, or `None` past the end of the frame.
    ///
    /// Verifier: implementations build the array without zeroing it first; `[0; N]` followed by a fill
    /// became a memset call (see [`crate::mem`]).
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;

    /// Fills `buf[..len]` from `offset`; `len` is 1..=[`MAX_OPTIONS_LEN`]. `None` past the end of the frame.
    fn load_options(&self, offset: usize, buf: &mut OptionBuf, len: usize) -> Option<()>;

    /// Fills `snap.bytes[..len]` from the start of the frame; `len` is 1..=[`SNAP_LEN`]. `None` past the end of
    /// the frame.
    fn load_prefix(&self, snap: &mut Snap, len: usize) -> Option<()>;

    /// The VLAN TCI and TPID the NIC or stack took out of the frame into metadata (TC only).
    fn offloaded_vlan(&self) -> Option<(u16, u16)> {
        None
    }
}

impl Frame for [u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        self.get(offset..offset.checked_add(N)?)?.try_into().ok()
    }

    fn load_into<const N: usize>(&self, offset: usize, dst: &mut [u8; N]) -> bool {
        match offset.checked_add(N).and_then(|end| self.get(offset..end)) {
            Some(src) => {
                dst.copy_from_slice(src);
                true
            }
            None => false,
        }
    }

    fn load_options(&self, offset: usize, buf: &mut OptionBuf, len: usize) -> Option<()> {
        if len > MAX_OPTIONS_LEN {
            return None;
        }
        let dst = buf.bytes.get_mut(..len)?;
        dst.copy_from_slice(self.get(offset..offset.checked_add(len)?)?);
        Some(())
    }

    fn load_prefix(&self, snap: &mut Snap, len: usize) -> Option<()> {
        snap.bytes.get_mut(..len)?.copy_from_slice(self.get(..len)?);
        Some(())
    }
}

/// The link layer of a frame: addresses, VLAN tags and where the payload starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Link {
    /// Ethernet destination MAC.
    pub eth_dst: [u8; 6],
    /// Ethernet source MAC.
    pub eth_src: [u8; 6],
    /// VLAN ids, outer first (an offloaded tag first of all).
    pub vlan_ids: [u16; MAX_VLAN_TAGS],
    /// Valid entries in `vlan_ids`.
    pub vlan_count: u8,
    /// Whether `vlan_ids[0]` came from metadata rather than the frame.
    pub vlan_offloaded: bool,
    /// Whether that offloaded tag was an 802.1ad service tag.
    pub vlan_offloaded_ad: bool,
    /// EtherType after the VLAN tags.
    pub ethertype: u16,
    /// Offset of the network header.
    pub offset: usize,
}

impl Link {
    /// Writes the link fields and `kind` into a record header (time, hook and direction are the caller's).
    #[inline(always)]
    pub fn fill(&self, h: &mut RecordHeader, kind: u8, wire_len: usize) {
        h.eth_dst = self.eth_dst;
        h.eth_src = self.eth_src;
        h.vlan_ids = self.vlan_ids;
        h.vlan_count = self.vlan_count;
        if self.vlan_offloaded {
            h.flags |= HDR_VLAN_OFFLOADED;
        }
        if self.vlan_offloaded_ad {
            h.flags |= HDR_VLAN_8021AD;
        }
        h.kind = kind;
        h.wire_len = wire_len as u32;
    }
}

/// What a frame turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload {
    /// A TCP segment: parse with [`parse_tcp`].
    Ip,
    /// ARP: parse with [`parse_arp`].
    Arp,
}

#[inline(always)]
fn be16(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

#[inline(always)]
fn be32(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// One byte of the option buffer.
///
/// Verifier: the mask keeps every read inside the buffer by construction. A bounds check on the index
/// is not enough, because LLVM may check one register and read through another derived before the check.
#[inline(always)]
fn opt8(buf: &OptionBuf, i: usize) -> u8 {
    buf.bytes[i & (OPTION_BUF_LEN - 1)]
}

/// A big-endian u32 of the option buffer, read byte by byte through [`opt8`].
#[inline(always)]
fn opt32(buf: &OptionBuf, i: usize) -> u32 {
    u32::from_be_bytes([opt8(buf, i), opt8(buf, i + 1), opt8(buf, i + 2), opt8(buf, i + 3)])
}

#[inline(always)]
fn is_vlan(ethertype: u16) -> bool {
    ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD || ethertype == ETH_P_QINQ1
}

/// Parses Ethernet and up to two VLAN tags; says whether the payload is IP or ARP.
#[inline(always)]
pub fn parse_link<F: Frame + ?Sized>(f: &F) -> Result<(Link, Payload), Counter> {
    let eth: [u8; 14] = f.load(0).ok_or(Counter::Truncated)?;
    let mut link = Link::default();
    link.eth_dst.copy_from_slice(&eth[0..6]);
    link.eth_src.copy_from_slice(&eth[6..12]);
    let mut ethertype = be16(&eth, 12);
    let mut offset = 14;
    let mut count = 0usize;
    if let Some((vid, tpid)) = f.offloaded_vlan() {
        link.vlan_ids[0] = vid & 0x0fff;
        link.vlan_offloaded = true;
        link.vlan_offloaded_ad = tpid == TPID_8021AD;
        count = 1;
    }
    // Bounded loop: one pass per possible tag, plus one to detect a third.
    let mut pass = 0;
    while pass <= MAX_VLAN_TAGS && is_vlan(ethertype) {
        if count >= MAX_VLAN_TAGS {
            return Err(Counter::TooManyVlanTags);
        }
        let tag: [u8; 4] = f.load(offset).ok_or(Counter::Truncated)?;
        link.vlan_ids[count] = be16(&tag, 0) & 0x0fff;
        count += 1;
        ethertype = be16(&tag, 2);
        offset += 4;
        pass += 1;
    }
    link.vlan_count = count as u8;
    link.ethertype = ethertype;
    link.offset = offset;
    let payload = match ethertype {
        ETH_P_IP | ETH_P_IPV6 => Payload::Ip,
        ETH_P_ARP => Payload::Arp,
        _ => return Err(Counter::NotTcpOrArp),
    };
    Ok((link, payload))
}

/// Where the TCP segment sits inside the IP packet.
struct Segment {
    offset: usize,
    len: usize,
}

#[inline(always)]
fn parse_ipv4<F: Frame + ?Sized>(f: &F, off: usize, rec: &mut TcpRecord) -> Result<Segment, Counter> {
    let h: [u8; 20] = f.load(off).ok_or(Counter::Truncated)?;
    if h[0] >> 4 != 4 {
        return Err(Counter::BadIpHeader);
    }
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Err(Counter::BadIpHeader);
    }
    let total = be16(&h, 2) as usize;
    if total < ihl {
        return Err(Counter::BadIpLength);
    }
    if off + total > f.len() {
        return Err(Counter::Truncated);
    }
    if be16(&h, 6) & 0x1fff != 0 {
        return Err(Counter::NonFirstFragment);
    }
    if h[9] != IPPROTO_TCP {
        return Err(Counter::NotTcpOrArp);
    }
    rec.ip_version = 4;
    rec.saddr[..4].copy_from_slice(&h[12..16]);
    rec.daddr[..4].copy_from_slice(&h[16..20]);
    Ok(Segment {
        offset: off + ihl,
        len: total - ihl,
    })
}

#[inline(always)]
fn parse_ipv6<F: Frame + ?Sized>(f: &F, off: usize, rec: &mut TcpRecord) -> Result<Segment, Counter> {
    // The addresses go straight into the record below: a 40-byte copy on the stack would not fit beside the
    // rest of the parser in the 512-byte BPF stack.
    let h: [u8; 8] = f.load(off).ok_or(Counter::Truncated)?;
    if h[0] >> 4 != 6 {
        return Err(Counter::BadIpHeader);
    }
    let payload = be16(&h, 4) as usize;
    if off + 40 + payload > f.len() {
        return Err(Counter::Truncated);
    }
    let mut next = h[6];
    let mut cur = off + 40;
    let mut left = payload;
    // Bounded loop: at most MAX_EXT_HEADERS extension headers are skipped.
    let mut n = 0;
    while n < MAX_EXT_HEADERS {
        let len = match next {
            // Hop-by-hop, routing, destination options, mobility, HIP, shim6: (len + 1) * 8.
            0 | 43 | 60 | 135 | 139 | 140 => {
                let e: [u8; 2] = f.load(cur).ok_or(Counter::Truncated)?;
                next = e[0];
                (e[1] as usize + 1) * 8
            }
            44 => {
                // The offset is only believed once the whole header lies inside the IP payload.
                if left < 8 {
                    return Err(Counter::Truncated);
                }
                let e: [u8; 8] = f.load(cur).ok_or(Counter::Truncated)?;
                if be16(&e, 2) >> 3 != 0 {
                    return Err(Counter::NonFirstFragment);
                }
                next = e[0];
                8
            }
            // Authentication header: (len + 2) * 4.
            51 => {
                let e: [u8; 2] = f.load(cur).ok_or(Counter::Truncated)?;
                next = e[0];
                (e[1] as usize + 2) * 4
            }
            _ => break,
        };
        if len > left {
            return Err(Counter::Truncated);
        }
        cur += len;
        left -= len;
        n += 1;
    }
    if is_ipv6_extension(next) {
        return Err(Counter::TooManyExtHeaders);
    }
    if next != IPPROTO_TCP {
        return Err(Counter::NotTcpOrArp);
    }
    if !f.load_into(off + 8, &mut rec.saddr) || !f.load_into(off + 24, &mut rec.daddr) {
        return Err(Counter::Truncated);
    }
    rec.ip_version = 6;
    Ok(Segment { offset: cur, len: left })
}

/// Whether an IPv6 next-header value is an extension header the parser skips.
#[inline(always)]
pub fn is_ipv6_extension(next: u8) -> bool {
    matches!(next, 0 | 43 | 44 | 51 | 60 | 135 | 139 | 140)
}

/// Parses the IP header and the TCP segment behind `link` into `rec` (header fields other than link ones are
/// left to the caller), loading the TCP options into `buf`; `headers_end` gets the offset where the TCP header
/// ends once it is known.
///
/// Verifier: `headers_end` is written through a volatile store before the option walk, so that no register
/// holds it during the walk; the verifier does not track map memory, so its walk states do not multiply by
/// the many possible ends (keeping it live exceeded the 1,000,000-instruction limit).
#[inline(always)]
pub fn parse_tcp<F: Frame + ?Sized>(
    f: &F,
    link: &Link,
    rec: &mut TcpRecord,
    buf: &mut OptionBuf,
    headers_end: &mut usize,
) -> Result<(), Counter> {
    link.fill(&mut rec.header, KIND_TCP, f.len());
    let seg = if link.ethertype == ETH_P_IP {
        parse_ipv4(f, link.offset, rec)?
    } else {
        parse_ipv6(f, link.offset, rec)?
    };
    if seg.len < 20 {
        return Err(Counter::Truncated);
    }
    let t: [u8; 20] = f.load(seg.offset).ok_or(Counter::Truncated)?;
    rec.sport = be16(&t, 0);
    rec.dport = be16(&t, 2);
    rec.seq = be32(&t, 4);
    rec.ack = be32(&t, 8);
    let header_len = ((t[12] >> 4) as usize) * 4;
    rec.flags = t[13];
    rec.window = be16(&t, 14);
    rec.urgent = be16(&t, 18);
    if header_len < 20 || header_len > seg.len {
        return Err(Counter::BadDataOffset);
    }
    rec.header_len = header_len as u8;
    rec.payload_len = (seg.len - header_len) as u16;
    // SAFETY: a valid, exclusive reference.
    unsafe { core::ptr::write_volatile(headers_end, seg.offset + header_len) };
    let opt_len = header_len - 20;
    if opt_len == 0 {
        return Ok(());
    }
    // Verifier: the helper's length must be provably within the buffer.
    if opt_len > MAX_OPTIONS_LEN {
        return Err(Counter::BadDataOffset);
    }
    f.load_options(seg.offset + 20, buf, opt_len)
        .ok_or(Counter::Truncated)?;
    parse_options(buf, opt_len, rec)
}

/// Walks the TCP options in `buf[..opt_len]`, filling the option fields of `rec`.
#[inline(always)]
pub fn parse_options(buf: &mut OptionBuf, opt_len: usize, rec: &mut TcpRecord) -> Result<(), Counter> {
    buf.set_cursor(0);
    // Verifier: a counted loop (each pass consumes at least one byte, so MAX_OPTIONS_LEN passes read them all)
    // whose cursor the verifier cannot see (see `OptionBuf::cursor`): the passes differ only in their count,
    // so its walk grows linearly with the passes on every kernel.
    let mut pass = 0;
    while pass < MAX_OPTIONS_LEN {
        pass += 1;
        let i = buf.cursor();
        if i >= opt_len {
            break;
        }
        let kind = opt8(buf, i);
        if kind == OPTKIND_EOL {
            break;
        }
        if kind == OPTKIND_NOP {
            buf.set_cursor(i + 1);
            continue;
        }
        if i + 1 >= opt_len {
            return Err(Counter::OptionOverrun);
        }
        let len = opt8(buf, i + 1) as usize;
        if len < 2 {
            return Err(Counter::BadOptionLength);
        }
        if i + len > opt_len {
            return Err(Counter::OptionOverrun);
        }
        match kind {
            OPTKIND_MSS => {
                if len != 4 {
                    return Err(Counter::BadOptionLength);
                }
                rec.mss = u16::from_be_bytes([opt8(buf, i + 2), opt8(buf, i + 3)]);
                rec.options |= OPT_MSS;
            }
            OPTKIND_WSCALE => {
                if len != 3 {
                    return Err(Counter::BadOptionLength);
                }
                rec.wscale = opt8(buf, i + 2);
                rec.options |= OPT_WSCALE;
            }
            OPTKIND_SACK_PERM => {
                if len != 2 {
                    return Err(Counter::BadOptionLength);
                }
                rec.options |= OPT_SACK_PERM;
            }
            OPTKIND_TIMESTAMP => {
                if len != 10 {
                    return Err(Counter::BadOptionLength);
                }
                rec.tsval = opt32(buf, i + 2);
                rec.tsecr = opt32(buf, i + 6);
                rec.options |= OPT_TIMESTAMP;
            }
            OPTKIND_SACK => {
                if len < 10 || !(len - 2).is_multiple_of(8) {
                    return Err(Counter::BadOptionLength);
                }
                let blocks = (len - 2) / 8;
                let mut b = 0;
                // Bounded loop: at most four blocks fit in 40 bytes.
                while b < MAX_SACK_BLOCKS {
                    if b < blocks {
                        let at = i + 2 + b * 8;
                        rec.sack[b].left = opt32(buf, at);
                        rec.sack[b].right = opt32(buf, at + 4);
                    }
                    b += 1;
                }
                rec.sack_count = blocks as u8;
                rec.options |= OPT_SACK;
            }
            _ => rec.options |= OPT_UNKNOWN,
        }
        let n = rec.option_count as usize;
        if n < MAX_OPTION_KINDS {
            rec.option_kinds[n] = kind;
            rec.option_count += 1;
        }
        buf.set_cursor(i + len);
    }
    Ok(())
}

/// Parses an ARP packet behind `link` into `rec`.
#[inline(always)]
pub fn parse_arp<F: Frame + ?Sized>(f: &F, link: &Link, rec: &mut ArpRecord) -> Result<(), Counter> {
    link.fill(&mut rec.header, KIND_ARP, f.len());
    let a: [u8; 28] = f.load(link.offset).ok_or(Counter::Truncated)?;
    if be16(&a, 0) != 1 || be16(&a, 2) != ETH_P_IP || a[4] != 6 || a[5] != 4 {
        return Err(Counter::ArpUnsupported);
    }
    rec.operation = be16(&a, 6);
    rec.sender_mac.copy_from_slice(&a[8..14]);
    rec.sender_ip.copy_from_slice(&a[14..18]);
    rec.target_mac.copy_from_slice(&a[18..24]);
    rec.target_ip.copy_from_slice(&a[24..28]);
    Ok(())
}

/// Copies the frame's first `end` bytes, at most [`SNAP_LEN`], into `snap` (cleared first); `false` when the
/// frame is shorter than that, leaving `snap.len` zero.
#[inline(always)]
pub fn copy_headers<F: Frame + ?Sized>(f: &F, end: usize, snap: &mut Snap) -> bool {
    crate::mem::clear(snap);
    let len = if end > SNAP_LEN { SNAP_LEN } else { end };
    // Verifier: the load helpers take a length register that must be provably in 1..=SNAP_LEN.
    let Some(len) = crate::mem::nonzero_len(len, SNAP_LEN) else {
        return false;
    };
    if f.load_prefix(snap, len).is_none() {
        return false;
    }
    snap.len = len as u16;
    true
}

/// A parsed frame, as the host side and the tests see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A TCP segment.
    Tcp(TcpRecord),
    /// An ARP packet.
    Arp(ArpRecord),
}

/// Parses a whole frame (what each kernel program does before filtering and emitting).
#[inline(always)]
pub fn parse_frame<F: Frame + ?Sized>(f: &F) -> Result<Parsed, Counter> {
    let (link, payload) = parse_link(f)?;
    match payload {
        Payload::Ip => {
            let mut rec = TcpRecord::default();
            parse_tcp(f, &link, &mut rec, &mut OptionBuf::default(), &mut 0)?;
            Ok(Parsed::Tcp(rec))
        }
        Payload::Arp => {
            let mut rec = ArpRecord::default();
            parse_arp(f, &link, &mut rec)?;
            Ok(Parsed::Arp(rec))
        }
    }
}
