//! `--write FILE.pcapng`: the captured header bytes as a pcapng file that Wireshark and tshark open, with the
//! socket side and observer's annotations as packet comments.
//!
//! One Section Header Block, one Interface Description Block per interface (its name, Ethernet, nanosecond
//! timestamps), and one Enhanced Packet Block per wire record in output order, so tshark's frame numbers are
//! the agent's. A packet's captured bytes are the record's [`Snap`] (Ethernet through the TCP options, or the
//! ARP frame) and its original length the frame's length on the wire; a VLAN tag the stack had moved into the
//! skb's metadata is put back as an 802.1Q tag (priority bits are not recorded, so they read 0).

use std::{
    borrow::Cow,
    collections::HashMap,
    fs::File,
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
    time::Duration,
};

use observer_common::record::{
    DIR_EGRESS, DIR_INGRESS, HDR_VLAN_8021AD, HDR_VLAN_OFFLOADED, RecordHeader, SNAP_LEN, TPID_8021AD, TPID_8021Q,
};
use pcap_file::{
    DataLink, Endianness, PcapError,
    pcapng::{
        PcapNgWriter,
        blocks::{
            enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption},
            interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
            section_header::{SectionHeaderBlock, SectionHeaderOption},
        },
    },
};

use crate::model::analyzer::Item;
use crate::view::render::{Clock, packet_comment_of};
use crate::view::sink::Sink;

/// `epb_flags` direction bits: inbound.
pub const EPB_INBOUND: u32 = 0b01;
/// `epb_flags` direction bits: outbound.
pub const EPB_OUTBOUND: u32 = 0b10;
/// `if_tsresol` for nanoseconds (10^-9), the unit pcap-file writes timestamps in.
const TSRESOL_NS: u8 = 9;
/// Length of an 802.1Q tag.
const VLAN_TAG_LEN: usize = 4;
/// The snap length the Interface Description Blocks announce: the kernel's cut plus a re-inserted tag.
pub const FILE_SNAPLEN: u32 = (SNAP_LEN + VLAN_TAG_LEN) as u32;
/// Byte offset of the EtherType (or first tag) in an Ethernet frame.
const ETHERTYPE_OFFSET: usize = 12;

/// Why the pcapng file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PcapngError {
    /// open(2) of the file failed.
    #[error("cannot create {}", path.display())]
    Create {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// write(2) to the file failed.
    #[error("writing {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// pcap-file refused a block (an encoding error, not an I/O one).
    #[error("writing {}: {source}", path.display())]
    Encode {
        /// The file.
        path: PathBuf,
        /// pcap-file's error.
        source: PcapError,
    },
}

impl PcapngError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            PcapngError::Create { path, .. } | PcapngError::Write { path, .. } | PcapngError::Encode { path, .. } => {
                path
            }
        }
    }
}

/// One wire record to write.
#[derive(Clone, Copy, Debug)]
pub struct Packet<'a> {
    /// The record's header: time, interface, direction, length on the wire, VLAN ids.
    pub header: &'a RecordHeader,
    /// The frame bytes the kernel copied.
    pub bytes: &'a [u8],
    /// The packet comment, if there is something to say.
    pub comment: Option<&'a str>,
}

/// A writer that counts the bytes its inner writer took.
struct Counted<W> {
    inner: W,
    taken: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.taken += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A pcapng file being written.
pub struct PcapngWriter<W: Write = BufWriter<File>> {
    path: PathBuf,
    writer: PcapNgWriter<Counted<W>>,
    /// Bytes known to be whole blocks in the file: what the last successful flush wrote.
    flushed: u64,
    /// Where each block handed in since that flush ends: a full disk keeps the whole ones the file took.
    ends: Vec<u64>,
    clock: Clock,
    /// Interface id in the file by ifindex.
    interfaces: HashMap<u32, u32>,
    /// Names known ahead (the watched interface); others go through `lookup` when first seen.
    names: HashMap<u32, String>,
    /// Names an interface first seen in a record (the caller's lookup; none by default).
    lookup: fn(u32) -> Option<String>,
}

impl PcapngWriter {
    /// Creates (truncates) `path` and writes the Section Header Block; timestamps go through `clock`.
    pub fn create(path: &Path, clock: Clock) -> Result<Self, PcapngError> {
        let file = File::create(path).map_err(|source| PcapngError::Create {
            path: path.to_owned(),
            source,
        })?;
        Self::new(BufWriter::new(file), path, clock)
    }

    /// Gives up the file after a write error, cutting it back to the last whole block the file took (a full disk
    /// can leave half a block at the end), so that what was written so far stays readable.
    pub fn abandon(self) -> io::Result<()> {
        let (flushed, ends) = (self.flushed, self.ends);
        // The buffered bytes are dropped unwritten.
        let (file, _) = self.writer.into_inner().inner.into_parts();
        // Without the file's length, the last flush is the one cut known to be whole.
        let Ok(taken) = file.metadata().map(|m| m.len()) else {
            return file.set_len(flushed);
        };
        let whole = ends.iter().rev().find(|&&end| end <= taken).copied();
        file.set_len(whole.unwrap_or(flushed).min(taken))
    }
}

impl<W: Write> PcapngWriter<W> {
    /// Writes the Section Header Block to `writer`; `path` names it in errors.
    pub fn new(writer: W, path: &Path, clock: Clock) -> Result<Self, PcapngError> {
        let section = SectionHeaderBlock {
            endianness: Endianness::Little,
            options: vec![SectionHeaderOption::UserApplication(Cow::Borrowed(concat!(
                "observer ",
                env!("CARGO_PKG_VERSION")
            )))],
            ..SectionHeaderBlock::default()
        };
        let writer = PcapNgWriter::with_section_header(
            Counted {
                inner: writer,
                taken: 0,
            },
            section,
        )
        .map_err(|e| write_error(path, e))?;
        let section_end = writer.get_ref().taken;
        Ok(PcapngWriter {
            path: path.to_owned(),
            writer,
            flushed: 0,
            // The section header is a whole block too.
            ends: vec![section_end],
            clock,
            interfaces: HashMap::new(),
            names: HashMap::new(),
            lookup: |_| None,
        })
    }

    /// Names interfaces not named ahead, when a record of theirs comes first (their index otherwise).
    pub fn with_lookup(mut self, lookup: fn(u32) -> Option<String>) -> Self {
        self.lookup = lookup;
        self
    }

    /// Gives interface `ifindex` its name for the Interface Description Block.
    pub fn name_interface(&mut self, ifindex: u32, name: &str) {
        self.names.insert(ifindex, name.to_owned());
    }

    /// Appends one Enhanced Packet Block (after the interface's description block when it is new).
    pub fn write(&mut self, p: &Packet) -> Result<(), PcapngError> {
        let interface_id = self.interface(p.header.ifindex)?;
        let data = frame_bytes(p.header, p.bytes);
        let reinserted = data.len() - p.bytes.len();
        let mut options = vec![EnhancedPacketOption::Flags(match p.header.direction {
            DIR_EGRESS => EPB_OUTBOUND,
            DIR_INGRESS => EPB_INBOUND,
            _ => 0,
        })];
        if let Some(c) = p.comment {
            options.push(EnhancedPacketOption::Comment(Cow::Borrowed(c)));
        }
        let block = EnhancedPacketBlock {
            interface_id,
            timestamp: Duration::from_nanos(u64::try_from(self.clock.wall_ns(p.header.ts_ns)).unwrap_or(0)),
            original_len: p
                .header
                .wire_len
                .saturating_add(reinserted as u32)
                .max(data.len() as u32),
            data,
            options,
        };
        self.writer
            .write_pcapng_block(block)
            .map_err(|e| write_error(&self.path, e))?;
        self.ends.push(self.writer.get_ref().taken);
        Ok(())
    }

    /// Bytes handed to the writer so far, whole blocks only.
    #[cfg(test)]
    pub(crate) fn taken(&self) -> u64 {
        self.writer.get_ref().taken
    }

    /// Writes out what is buffered.
    pub fn flush(&mut self) -> Result<(), PcapngError> {
        let counted = self.writer.get_mut();
        counted.flush().map_err(|source| PcapngError::Write {
            path: self.path.clone(),
            source,
        })?;
        self.flushed = counted.taken;
        self.ends.clear();
        Ok(())
    }

    /// The file's interface id of `ifindex`, writing its description block first when it is new.
    fn interface(&mut self, ifindex: u32) -> Result<u32, PcapngError> {
        if let Some(id) = self.interfaces.get(&ifindex) {
            return Ok(*id);
        }
        let name = self
            .names
            .get(&ifindex)
            .cloned()
            .or_else(|| (self.lookup)(ifindex))
            .unwrap_or_else(|| ifindex.to_string());
        let idb = InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: FILE_SNAPLEN,
            options: vec![
                InterfaceDescriptionOption::IfName(Cow::Owned(name)),
                InterfaceDescriptionOption::IfTsResol(TSRESOL_NS),
            ],
        };
        self.writer
            .write_pcapng_block(idb)
            .map_err(|e| write_error(&self.path, e))?;
        self.ends.push(self.writer.get_ref().taken);
        let id = self.interfaces.len() as u32;
        self.interfaces.insert(ifindex, id);
        Ok(id)
    }
}

fn write_error(path: &Path, e: PcapError) -> PcapngError {
    match e {
        PcapError::IoError(source) => PcapngError::Write {
            path: path.to_owned(),
            source,
        },
        source => PcapngError::Encode {
            path: path.to_owned(),
            source,
        },
    }
}

/// Each packet item is one Enhanced Packet Block, commented with its text line's annotations and socket side;
/// loopback's incoming copy of a frame is that frame, written once.
impl<W: Write> Sink for PcapngWriter<W> {
    type Error = PcapngError;

    fn item(&mut self, item: &Item<'_>) -> Result<(), PcapngError> {
        let (header, bytes) = match item {
            Item::Segment(s) if !s.copy => (&s.rec.header, s.bytes),
            Item::Arp(a) => (&a.rec.header, a.bytes),
            _ => return Ok(()),
        };
        let comment = packet_comment_of(item);
        self.write(&Packet {
            header,
            bytes,
            comment: comment.as_deref(),
        })
    }

    fn flush(&mut self) -> Result<(), PcapngError> {
        PcapngWriter::flush(self)
    }
}

/// The frame as it was on the wire: `bytes`, with the offloaded VLAN tag of `header` put back after the MAC
/// addresses, as an 802.1ad or 802.1Q tag as it came.
pub fn frame_bytes<'a>(header: &RecordHeader, bytes: &'a [u8]) -> Cow<'a, [u8]> {
    if header.flags & HDR_VLAN_OFFLOADED == 0 || header.vlan_count == 0 || bytes.len() < ETHERTYPE_OFFSET {
        return Cow::Borrowed(bytes);
    }
    let vid = header.vlan_ids[0] & 0x0fff;
    let mut out = Vec::with_capacity(bytes.len() + VLAN_TAG_LEN);
    out.extend_from_slice(&bytes[..ETHERTYPE_OFFSET]);
    let tpid = if header.flags & HDR_VLAN_8021AD != 0 {
        TPID_8021AD
    } else {
        TPID_8021Q
    };
    out.extend_from_slice(&tpid.to_be_bytes());
    out.extend_from_slice(&vid.to_be_bytes());
    out.extend_from_slice(&bytes[ETHERTYPE_OFFSET..]);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use observer_common::record::{HOOK_TC_EGRESS, HOOK_TC_INGRESS};
    use pcap_file::pcapng::{Block, PcapNgReader};

    const WALL: i64 = 1_700_000_000 * 1_000_000_000;

    fn header(ts_ns: u64, direction: u8, wire_len: u32) -> RecordHeader {
        RecordHeader {
            ts_ns,
            ifindex: 7,
            wire_len,
            direction,
            hook: if direction == DIR_EGRESS {
                HOOK_TC_EGRESS
            } else {
                HOOK_TC_INGRESS
            },
            kind: 1,
            ..RecordHeader::default()
        }
    }

    #[test]
    fn offloaded_tags_go_back_with_their_tpid() {
        let frame: Vec<u8> = (0..20u8).collect();
        let mut h = header(1, DIR_INGRESS, 64);
        h.vlan_count = 2;
        h.vlan_ids = [200, 100];
        assert_eq!(
            frame_bytes(&h, &frame).as_ref(),
            frame.as_slice(),
            "tags in the bytes stay as they are"
        );
        h.flags = HDR_VLAN_OFFLOADED;
        assert_eq!(frame_bytes(&h, &frame)[12..16], [0x81, 0x00, 0, 200]);
        h.flags |= HDR_VLAN_8021AD;
        let ad = frame_bytes(&h, &frame);
        assert_eq!(ad[12..16], [0x88, 0xa8, 0, 200]);
        assert_eq!(ad[16..], frame[12..]);
    }

    #[test]
    fn written_file_reads_back_block_by_block() {
        let frame: Vec<u8> = (0..54u8).collect();
        let out = header(1_000, DIR_EGRESS, 1514);
        let mut tagged = header(2_500, DIR_INGRESS, 60);
        tagged.flags = HDR_VLAN_OFFLOADED;
        tagged.vlan_count = 1;
        tagged.vlan_ids = [0x0123, 0];
        let mut other = header(3_000, DIR_INGRESS, 54);
        other.ifindex = 9;

        let mut w = PcapngWriter::new(Vec::new(), Path::new("test.pcapng"), Clock::utc_with_offset(WALL)).unwrap();
        w.name_interface(7, "veth-a");
        w.name_interface(9, "veth-b");
        for (h, comment) in [(&out, Some("ESTABLISHED curl(42)")), (&tagged, None), (&other, None)] {
            w.write(&Packet {
                header: h,
                bytes: &frame,
                comment,
            })
            .unwrap();
        }
        w.flush().unwrap();
        let bytes = w.writer.into_inner().inner;

        let mut r = PcapNgReader::new(&bytes[..]).unwrap();
        let mut packets = Vec::new();
        let mut idbs = Vec::new();
        while let Some(block) = r.next_block() {
            match block.unwrap() {
                Block::InterfaceDescription(idb) => idbs.push(idb.into_owned()),
                Block::EnhancedPacket(epb) => packets.push(epb.into_owned()),
                other => panic!("unexpected block {other:?}"),
            }
        }
        assert_eq!(idbs.len(), 2, "one description per interface");
        for (idb, name) in idbs.iter().zip(["veth-a", "veth-b"]) {
            assert_eq!(idb.linktype, DataLink::ETHERNET);
            assert_eq!(idb.snaplen, FILE_SNAPLEN);
            assert!(idb.options.contains(&InterfaceDescriptionOption::IfName(name.into())));
            assert!(idb.options.contains(&InterfaceDescriptionOption::IfTsResol(9)));
        }
        assert_eq!(packets.len(), 3);
        let [p0, p1, p2] = &packets[..] else { unreachable!() };
        assert_eq!(p0.interface_id, 0);
        assert_eq!(p0.timestamp, Duration::from_nanos(WALL as u64 + 1_000));
        assert_eq!((p0.data.as_ref(), p0.original_len), (&frame[..], 1514));
        assert_eq!(
            p0.options,
            [
                EnhancedPacketOption::Flags(EPB_OUTBOUND),
                EnhancedPacketOption::Comment("ESTABLISHED curl(42)".into())
            ]
        );
        // The offloaded tag is back between the MAC addresses and the EtherType, and counted on the wire.
        assert_eq!(p1.data.len(), frame.len() + 4);
        assert_eq!(&p1.data[..12], &frame[..12]);
        assert_eq!(&p1.data[12..16], &[0x81, 0x00, 0x01, 0x23]);
        assert_eq!(&p1.data[16..], &frame[12..]);
        assert_eq!(p1.original_len, 64);
        assert_eq!(p1.options, [EnhancedPacketOption::Flags(EPB_INBOUND)]);
        assert_eq!(p2.interface_id, 1);
    }

    #[test]
    fn an_abandoned_file_keeps_only_the_flushed_blocks() {
        let path = std::env::temp_dir().join(format!("observer-abandon-{}.pcapng", std::process::id()));
        let mut w = PcapngWriter::create(&path, Clock::utc_with_offset(WALL)).unwrap();
        let h = header(1_000, DIR_EGRESS, 60);
        let frame = [0u8; 54];
        let packet = Packet {
            header: &h,
            bytes: &frame,
            comment: None,
        };
        w.write(&packet).unwrap();
        w.flush().unwrap();
        let flushed = std::fs::metadata(&path).unwrap().len();
        w.write(&packet).unwrap();
        w.abandon().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(bytes.len() as u64, flushed);
        let mut r = PcapNgReader::new(&bytes[..]).unwrap();
        let mut blocks = 0;
        while let Some(block) = r.next_block() {
            block.unwrap();
            blocks += 1;
        }
        assert_eq!(blocks, 2, "the interface's block and one packet");
    }

    /// Blocks the buffer spilled into the file since the last flush are kept, cut at the last whole one.
    #[test]
    fn an_abandoned_file_keeps_the_whole_blocks_the_file_took() {
        let path = std::env::temp_dir().join(format!("observer-spill-{}.pcapng", std::process::id()));
        let mut w = PcapngWriter::create(&path, Clock::utc_with_offset(WALL)).unwrap();
        let h = header(1_000, DIR_EGRESS, 60);
        let frame = [0u8; 54];
        let packet = Packet {
            header: &h,
            bytes: &frame,
            comment: None,
        };
        for _ in 0..300 {
            w.write(&packet).unwrap();
        }
        let spilled = std::fs::metadata(&path).unwrap().len();
        w.abandon().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(spilled > 0, "the buffer spilled into the file");
        assert!(bytes.len() as u64 <= spilled && bytes.len() as u64 + 200 > spilled);
        let mut r = PcapNgReader::new(&bytes[..]).unwrap();
        let mut blocks = 0;
        while let Some(block) = r.next_block() {
            block.unwrap();
            blocks += 1;
        }
        assert!(blocks > 50, "{blocks} blocks");
    }

    #[test]
    fn creating_in_a_missing_directory_names_the_file() {
        let path = Path::new("/nonexistent-observer-dir/out.pcapng");
        let err = PcapngWriter::create(path, Clock::utc_with_offset(0))
            .err()
            .expect("no such directory");
        assert_eq!(err.to_string(), "cannot create /nonexistent-observer-dir/out.pcapng");
        assert!(matches!(err, PcapngError::Create { .. }));
    }
}
