//! Decoding of the raw records the kernel programs submit to the `EVENTS` ring buffer.

use core::mem::size_of;

use observer_common::{
    record::{ArpRecord, KIND_ARP, KIND_OFFSET, KIND_TCP, RecordHeader, TcpRecord},
    sock::{KIND_SOCK, SockRecord},
};

/// One record read from the ring buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A TCP segment.
    Tcp(TcpRecord),
    /// An ARP packet.
    Arp(ArpRecord),
    /// A kernel socket event (see `crate::kevents`).
    Sock(SockRecord),
}

impl Event {
    /// The packet header of a packet record (`None` for a socket event).
    pub fn header(&self) -> Option<&RecordHeader> {
        match self {
            Event::Tcp(r) => Some(&r.header),
            Event::Arp(r) => Some(&r.header),
            Event::Sock(_) => None,
        }
    }

    /// `bpf_ktime_get_boot_ns()` when the program ran, for every kind of record.
    pub fn ts_ns(&self) -> u64 {
        match self {
            Event::Tcp(r) => r.header.ts_ns,
            Event::Arp(r) => r.header.ts_ns,
            Event::Sock(r) => r.ts_ns,
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

/// Decodes one ring-buffer entry by its kind byte, requiring the exact size of that kind's record.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let len = bytes.len();
    let kind = *bytes.get(KIND_OFFSET).ok_or(DecodeError::Truncated { len })?;
    match kind {
        KIND_TCP => {
            check_len(kind, len, size_of::<TcpRecord>())?;
            // SAFETY: the length was checked; TcpRecord is repr(C) of integers and byte arrays, so every bit
            // pattern is a valid value, and read_unaligned needs no alignment.
            Ok(Event::Tcp(unsafe {
                core::ptr::read_unaligned(bytes.as_ptr().cast::<TcpRecord>())
            }))
        }
        KIND_ARP => {
            check_len(kind, len, size_of::<ArpRecord>())?;
            // SAFETY: as above, for ArpRecord.
            Ok(Event::Arp(unsafe {
                core::ptr::read_unaligned(bytes.as_ptr().cast::<ArpRecord>())
            }))
        }
        KIND_SOCK => {
            check_len(kind, len, size_of::<SockRecord>())?;
            // SAFETY: as above, for SockRecord.
            Ok(Event::Sock(unsafe {
                core::ptr::read_unaligned(bytes.as_ptr().cast::<SockRecord>())
            }))
        }
        _ => Err(DecodeError::UnknownKind { kind, len }),
    }
}

fn check_len(kind: u8, len: usize, expected: usize) -> Result<(), DecodeError> {
    if len == expected {
        Ok(())
    } else {
        Err(DecodeError::WrongLength { kind, len, expected })
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(decode(&bytes), Ok(Event::Tcp(rec)));
        assert_eq!(decode(&bytes).unwrap().ts_ns(), 42);
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
        assert_eq!((event.ts_ns(), event.header()), (7, None));
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
        assert_eq!(decode(&buf[1..]), Ok(Event::Arp(rec)));
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
}
