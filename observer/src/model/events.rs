//! Decoding of the raw records the kernel programs submit to the `EVENTS` ring buffer.

use core::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use observer_common::{
    record::{
        ArpRecord, ArpSnapRecord, HDR_SNAP, KIND_ARP, KIND_OFFSET, KIND_TCP, RecordHeader, Snap, TcpRecord,
        TcpSnapRecord,
    },
    sock::{KIND_SOCK, SockRecord},
};

/// Byte offset of `RecordHeader::flags`, which tells the form with header bytes from the plain one.
const FLAGS_OFFSET: usize = core::mem::offset_of!(RecordHeader, flags);

/// One record read from the ring buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A TCP segment, with the frame's header bytes when the capture copies them (`--write`).
    Tcp(TcpRecord, Option<Snap>),
    /// An ARP packet, with the frame's bytes when the capture copies them.
    Arp(ArpRecord, Option<Snap>),
    /// A kernel socket event (see `crate::sys::sockprogs`).
    Sock(SockRecord),
}

impl Event {
    /// The packet header of a packet record (`None` for a socket event).
    pub fn header(&self) -> Option<&RecordHeader> {
        match self {
            Event::Tcp(r, _) => Some(&r.header),
            Event::Arp(r, _) => Some(&r.header),
            Event::Sock(_) => None,
        }
    }

    /// The frame's header bytes of a packet record in the `--write` form.
    pub fn snap(&self) -> Option<&Snap> {
        match self {
            Event::Tcp(_, s) | Event::Arp(_, s) => s.as_ref(),
            Event::Sock(_) => None,
        }
    }
}

/// Why a ring-buffer entry could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The entry ends before the kind byte.
    #[error("record of {len} bytes is too short to carry a kind")]
    Truncated {
        /// Length of the entry.
        len: usize,
    },
    /// The kind byte names no known record.
    #[error("unknown record kind {kind} ({len} bytes)")]
    UnknownKind {
        /// The kind byte.
        kind: u8,
        /// Length of the entry.
        len: usize,
    },
    /// The entry's length is not the size of its kind's record.
    #[error("record of kind {kind} has {len} bytes, expected {expected}")]
    WrongLength {
        /// The kind byte.
        kind: u8,
        /// Length of the entry.
        len: usize,
        /// Size of that kind's record.
        expected: usize,
    },
}

/// Decodes one ring-buffer entry by its kind byte (and, for packet records, the [`HDR_SNAP`] flag), requiring
/// the exact size of that form.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let len = bytes.len();
    let kind = *bytes.get(KIND_OFFSET).ok_or(DecodeError::Truncated { len })?;
    let snap = bytes.get(FLAGS_OFFSET).is_some_and(|f| f & HDR_SNAP != 0);
    match (kind, snap) {
        (KIND_TCP, false) => Ok(Event::Tcp(read::<TcpRecord>(kind, bytes)?, None)),
        (KIND_TCP, true) => {
            let r = read::<TcpSnapRecord>(kind, bytes)?;
            Ok(Event::Tcp(r.record, Some(r.snap)))
        }
        (KIND_ARP, false) => Ok(Event::Arp(read::<ArpRecord>(kind, bytes)?, None)),
        (KIND_ARP, true) => {
            let r = read::<ArpSnapRecord>(kind, bytes)?;
            Ok(Event::Arp(r.record, Some(r.snap)))
        }
        (KIND_SOCK, _) => Ok(Event::Sock(read::<SockRecord>(kind, bytes)?)),
        _ => Err(DecodeError::UnknownKind { kind, len }),
    }
}

/// Reads a `T` from an entry of exactly its size.
fn read<T: aya::Pod>(kind: u8, bytes: &[u8]) -> Result<T, DecodeError> {
    check_len(kind, bytes.len(), size_of::<T>())?;
    // SAFETY: the length was checked; `T: Pod` is repr(C) of integers and byte arrays, so every bit pattern is
    // a valid value, and read_unaligned needs no alignment.
    Ok(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

fn check_len(kind: u8, len: usize, expected: usize) -> Result<(), DecodeError> {
    if len == expected {
        Ok(())
    } else {
        Err(DecodeError::WrongLength { kind, len, expected })
    }
}

/// The source address of a TCP record.
pub fn tcp_src(rec: &TcpRecord) -> IpAddr {
    ip_of(rec.ip_version, &rec.saddr)
}

/// The destination address of a TCP record.
pub fn tcp_dst(rec: &TcpRecord) -> IpAddr {
    ip_of(rec.ip_version, &rec.daddr)
}

/// The address of a record's 16-byte field for IP version `version` (IPv4 in the first 4 bytes).
pub fn ip_of(version: u8, addr: &[u8; 16]) -> IpAddr {
    if version == 4 {
        IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*addr))
    }
}

#[cfg(test)]
mod tests {
    use proptest::{prelude::*, sample::select};

    use super::*;

    fn bytes_of<T: Copy>(value: &T) -> Vec<u8> {
        // SAFETY: test-only view of a plain repr(C) record as bytes; the records have explicit padding fields.
        unsafe { core::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    #[test]
    fn decodes_tcp_record() {
        let mut rec = TcpRecord::default();
        rec.header.kind = KIND_TCP;
        rec.header.ts_ns = 42;
        rec.sport = 443;
        rec.seq = 0xdead_beef;
        let bytes = bytes_of(&rec);
        assert_eq!(decode(&bytes), Ok(Event::Tcp(rec, None)));
        assert_eq!(decode(&bytes).unwrap().header().map(|h| h.ts_ns), Some(42));
    }

    #[test]
    fn decodes_socket_event() {
        let rec = SockRecord {
            kind: KIND_SOCK,
            ts_ns: 7,
            event: observer_common::sock::SOCK_EV_STATE,
            old_state: 2,
            state: 1,
            sport: 40000,
            ..SockRecord::default()
        };
        let bytes = bytes_of(&rec);
        let event = decode(&bytes).unwrap();
        assert_eq!(event, Event::Sock(rec));
        assert_eq!(event.header(), None);
        assert!(matches!(
            decode(&bytes[..64]),
            Err(DecodeError::WrongLength { kind: KIND_SOCK, .. })
        ));
    }

    #[test]
    fn decodes_unaligned_arp_record() {
        let mut rec = ArpRecord::default();
        rec.header.kind = KIND_ARP;
        rec.operation = 2;
        rec.sender_ip = [10, 0, 0, 1];
        let mut buf = vec![0u8];
        buf.extend(bytes_of(&rec));
        assert_eq!(decode(&buf[1..]), Ok(Event::Arp(rec, None)));
    }

    #[test]
    fn decodes_both_forms_by_the_snap_flag() {
        let mut full = TcpSnapRecord::default();
        full.record.header.kind = KIND_TCP;
        full.record.header.flags = HDR_SNAP;
        full.record.seq = 7;
        full.snap.len = 3;
        full.snap.bytes[..3].copy_from_slice(&[1, 2, 3]);
        let event = decode(&bytes_of(&full)).unwrap();
        assert_eq!(event, Event::Tcp(full.record, Some(full.snap)));
        assert_eq!(event.snap().map(Snap::bytes), Some(&[1u8, 2, 3][..]));
        // The flag set on a record of the plain size is a length error, not a misread.
        assert_eq!(
            decode(&bytes_of(&full.record)),
            Err(DecodeError::WrongLength {
                kind: KIND_TCP,
                len: size_of::<TcpRecord>(),
                expected: size_of::<TcpSnapRecord>()
            })
        );

        let mut arp = ArpSnapRecord::default();
        arp.record.header.kind = KIND_ARP;
        arp.record.header.flags = HDR_SNAP;
        arp.snap.len = 42;
        let event = decode(&bytes_of(&arp)).unwrap();
        assert_eq!(event, Event::Arp(arp.record, Some(arp.snap)));
        assert_eq!(event.snap().map(|s| s.bytes().len()), Some(42));
    }

    #[test]
    fn rejects_wrong_length_unknown_kind_and_truncation() {
        let mut rec = TcpRecord::default();
        rec.header.kind = KIND_TCP;
        let bytes = bytes_of(&rec);
        assert_eq!(
            decode(&bytes[..100]),
            Err(DecodeError::WrongLength {
                kind: KIND_TCP,
                len: 100,
                expected: size_of::<TcpRecord>()
            })
        );
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(decode(&longer), Err(DecodeError::WrongLength { .. })));

        let mut arp_sized = bytes[..size_of::<ArpRecord>()].to_vec();
        assert!(matches!(
            decode(&arp_sized),
            Err(DecodeError::WrongLength { kind: KIND_TCP, .. })
        ));
        arp_sized[KIND_OFFSET] = 9;
        assert_eq!(decode(&arp_sized), Err(DecodeError::UnknownKind { kind: 9, len: 64 }));

        assert_eq!(
            decode(&bytes[..KIND_OFFSET]),
            Err(DecodeError::Truncated { len: KIND_OFFSET })
        );
        assert_eq!(decode(&[]), Err(DecodeError::Truncated { len: 0 }));
    }

    /// The entry the kernel writes for `event`: the inverse of [`decode`].
    fn encode(event: &Event) -> Vec<u8> {
        match *event {
            Event::Tcp(record, None) => bytes_of(&record),
            Event::Tcp(record, Some(snap)) => bytes_of(&TcpSnapRecord { record, snap }),
            Event::Arp(record, None) => bytes_of(&record),
            Event::Arp(record, Some(snap)) => bytes_of(&ArpSnapRecord { record, snap }),
            Event::Sock(record) => bytes_of(&record),
        }
    }

    /// Ring entries of every record's size (and a byte either side), with a kind byte that is mostly a known
    /// one and either form's flag; the rest arbitrary.
    fn entries() -> impl Strategy<Value = Vec<u8>> {
        let sizes = vec![
            size_of::<TcpRecord>(),
            size_of::<TcpSnapRecord>(),
            size_of::<ArpRecord>(),
            size_of::<ArpSnapRecord>(),
            size_of::<SockRecord>(),
        ];
        let kinds = prop_oneof![select(vec![KIND_TCP, KIND_ARP, KIND_SOCK]), any::<u8>()];
        let biggest = size_of::<TcpSnapRecord>().max(size_of::<ArpSnapRecord>()) + 1;
        (
            select(sizes),
            0usize..3,
            kinds,
            any::<bool>(),
            prop::collection::vec(any::<u8>(), biggest),
        )
            .prop_map(|(size, off, kind, snap, mut bytes)| {
                bytes.truncate(size + off - 1);
                bytes[KIND_OFFSET] = kind;
                if snap {
                    bytes[FLAGS_OFFSET] |= HDR_SNAP;
                } else {
                    bytes[FLAGS_OFFSET] &= !HDR_SNAP;
                }
                bytes
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        /// Whatever the ring holds, decode answers without panicking; what it decodes is the entry's every
        /// byte (encoding it gives the entry back), and a snap's bytes stay within the snap.
        #[test]
        fn decode_is_total_and_encode_inverts_it(bytes in entries()) {
            match decode(&bytes) {
                Ok(event) => {
                    prop_assert_eq!(&encode(&event), &bytes);
                    prop_assert_eq!(decode(&encode(&event)), Ok(event));
                    prop_assert!(event.snap().is_none_or(|s| s.bytes().len() <= s.bytes.len()));
                }
                Err(DecodeError::WrongLength { len, expected, .. }) => prop_assert_ne!(len, expected),
                Err(DecodeError::UnknownKind { kind, .. }) => {
                    prop_assert!(![KIND_TCP, KIND_ARP, KIND_SOCK].contains(&kind));
                }
                Err(DecodeError::Truncated { len }) => prop_assert!(len <= KIND_OFFSET),
            }
        }

        /// Entries of any length, too.
        #[test]
        fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
            let _ = decode(&bytes);
        }
    }
}
