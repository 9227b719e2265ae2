//! Kernel socket events: the tp_btf programs on the TCP tracepoints, set up with offsets from the running
//! kernel's BTF, reporting the sockets of one network namespace into the same ring buffer as the packets.
//!
//! [`attach_socket_events`] loads and attaches them on a [`Capture`]; their records decode as
//! `Event::Sock` and read more easily through [`SockEvent`]. Dropping or detaching the `Capture` detaches them.

pub mod btf;

use std::{
    collections::HashMap,
    io::Read as _,
    mem::size_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::unix::fs::MetadataExt as _,
};

use aya::{
    maps::{Array, MapData},
    programs::{BtfTracePoint, Iter},
};
use log::debug;
use observer_common::sock::{
    AF_INET, AF_INET6, ListenerRecord, SOCK_CONFIG_MAP, SOCK_EV_DESTROY, SOCK_EV_DROP, SOCK_EV_RCVQ_FULL,
    SOCK_EV_RECEIVE_RESET, SOCK_EV_RETRANSMIT_SKB, SOCK_EV_RETRANSMIT_SYNACK, SOCK_EV_SEND_RESET, SOCK_EV_STATE,
    SOCK_F_NO_TUPLE, SOCK_F_QUEUES, SOCK_F_REASON, SOCK_F_TUPLE_FROM_SKB, SockConfig, SockOffsets, SockRecord, fixed,
};

pub use self::btf::{Btf, BtfError};
use crate::{
    sys::capture::{Capture, CaptureError, map_error, missing_map, verifier_error},
    sys::sockets::TcpState,
};

/// A socket program and the tracepoint it attaches to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockProgram {
    /// Program name in the object.
    pub program: &'static str,
    /// Tracepoint name (`btf_trace_<name>` in the kernel's BTF).
    pub tracepoint: &'static str,
    /// Tracepoint arguments the program reads (it fails verification on a kernel with fewer).
    pub args: usize,
    /// Whether socket events cannot work without it.
    pub required: bool,
    /// The program for kernels whose tracepoint has fewer arguments, and how many it reads.
    pub older: Option<(&'static str, usize)>,
}

impl SockProgram {
    /// The program that fits a tracepoint with `have` arguments, or why none does.
    pub fn fitting(&self, have: usize) -> Result<&'static str, String> {
        match self.older {
            _ if have >= self.args => Ok(self.program),
            Some((older, args)) if have >= args => Ok(older),
            _ => Err(format!("has {have} arguments, the program reads {}", self.args)),
        }
    }
}

/// Every socket program, the required state-change one first.
pub const PROGRAMS: [SockProgram; 8] = [
    SockProgram {
        program: "sock_state",
        tracepoint: "inet_sock_set_state",
        args: 3,
        required: true,
        older: None,
    },
    SockProgram {
        program: "sock_retransmit_synack",
        tracepoint: "tcp_retransmit_synack",
        args: 2,
        required: false,
        older: None,
    },
    SockProgram {
        program: "sock_retransmit_skb",
        tracepoint: "tcp_retransmit_skb",
        args: 3,
        required: false,
        older: Some(("sock_retransmit_skb_2args", 2)),
    },
    SockProgram {
        program: "sock_send_reset",
        tracepoint: "tcp_send_reset",
        args: 3,
        required: false,
        older: Some(("sock_send_reset_2args", 2)),
    },
    SockProgram {
        program: "sock_receive_reset",
        tracepoint: "tcp_receive_reset",
        args: 1,
        required: false,
        older: None,
    },
    SockProgram {
        program: "sock_destroy",
        tracepoint: "tcp_destroy_sock",
        args: 1,
        required: false,
        older: None,
    },
    SockProgram {
        program: "sock_rcvqueue_full",
        tracepoint: "sock_rcvqueue_full",
        args: 2,
        required: false,
        older: None,
    },
    SockProgram {
        program: "sock_drop",
        tracepoint: "kfree_skb",
        args: 4,
        required: false,
        older: Some(("sock_drop_3args", 3)),
    },
];

/// Why the socket programs could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SockSetupError {
    /// The kernel publishes no BTF.
    #[error(
        "kernel socket events need the kernel's BTF ({}), which this kernel lacks: it needs CONFIG_DEBUG_INFO_BTF",
        btf::VMLINUX
    )]
    NoBtf,
    /// The kernel's BTF could not be read or lacks a structure the programs read.
    #[error(transparent)]
    Btf(#[from] BtfError),
    /// aya could not read the kernel's BTF (it needs it to load tp_btf programs).
    #[error("loading {} for the tp_btf programs failed: {}", btf::VMLINUX, .0)]
    AyaBtf(#[source] aya::BtfError),
    /// The network namespace to report could not be found.
    #[error("cannot stat {path}: {source}")]
    Netns {
        /// The namespace file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The required tracepoint is missing or older than the program.
    #[error("tracepoint {tracepoint}: {why}; socket events need it")]
    Tracepoint {
        /// The tracepoint.
        tracepoint: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// Attaching, or making the reading fd of, the `iter/tcp` program failed (bpf(BPF_LINK_CREATE),
    /// bpf(BPF_ITER_CREATE)).
    #[error("{LISTENER_ITER}: {step} failed: {source}")]
    Iter {
        /// The step (`bpf_link_create`, `bpf_iter_create`).
        step: &'static str,
        /// aya's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// read() of the iterator's fd failed, or returned a partial record.
    #[error("{LISTENER_ITER}: read of the iterator failed: {0}")]
    IterRead(#[source] std::io::Error),
    /// bpf(BPF_LINK_CREATE) for a tp_btf program failed.
    #[error("attaching {program} to tracepoint {tracepoint} failed: {source}")]
    Attach {
        /// Program name.
        program: &'static str,
        /// Tracepoint name.
        tracepoint: &'static str,
        /// aya's error.
        #[source]
        source: aya::programs::ProgramError,
    },
}

/// The socket programs attached on a `Capture`.
#[derive(Debug)]
pub struct SockEvents {
    /// Programs attached.
    pub attached: Vec<&'static str>,
    /// Programs left out, with why (tracepoint missing in this kernel or with fewer arguments).
    pub skipped: Vec<(&'static str, String)>,
    /// The kernel's names for drop and reset reasons.
    pub reasons: ReasonNames,
}

/// The inode number of the calling thread's network namespace (`/proc/thread-self/ns/net`).
pub fn current_netns() -> Result<u32, SockSetupError> {
    let path = "/proc/thread-self/ns/net";
    let meta = std::fs::metadata(path).map_err(|source| SockSetupError::Netns {
        path: path.into(),
        source,
    })?;
    u32::try_from(meta.ino()).map_err(|_| SockSetupError::Netns {
        path: path.into(),
        source: std::io::Error::other(format!("inode {} does not fit a namespace number", meta.ino())),
    })
}

/// Reads the running kernel's BTF; a kernel without it gives [`SockSetupError::NoBtf`].
pub fn kernel_btf() -> Result<Btf, SockSetupError> {
    btf_at(btf::VMLINUX)
}

/// Reads the kernel BTF published at `path`.
fn btf_at(path: &str) -> Result<Btf, SockSetupError> {
    match Btf::from_file(path) {
        Err(BtfError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Err(SockSetupError::NoBtf)
        }
        other => Ok(other?),
    }
}

/// The socket programs' configuration map.
fn config_map(capture: &mut Capture) -> Result<Array<&mut MapData, SockConfig>, CaptureError> {
    let raw = capture
        .ebpf
        .map_mut(SOCK_CONFIG_MAP)
        .ok_or_else(|| missing_map(SOCK_CONFIG_MAP))?;
    Array::try_from(raw).map_err(map_error(SOCK_CONFIG_MAP))
}

/// Writes the offsets from `kernel` and the namespace to report into the programs' configuration.
fn configure(capture: &mut Capture, kernel: &Btf, netns_ino: u32) -> Result<(), CaptureError> {
    let config = SockConfig {
        offsets: sock_offsets(kernel).map_err(SockSetupError::from)?,
        netns_ino,
        ready: 1,
    };
    config_map(capture)?
        .set(0, config, 0)
        .map_err(map_error(SOCK_CONFIG_MAP))
}

/// Loads, configures and attaches the socket programs, reporting the sockets of network namespace
/// `netns_ino` (see [`current_netns`]; 0 reports every namespace). Tracepoints this kernel lacks are skipped,
/// except `inet_sock_set_state`.
pub fn attach_socket_events(capture: &mut Capture, netns_ino: u32) -> Result<SockEvents, CaptureError> {
    let kernel = kernel_btf()?;
    configure(capture, &kernel, netns_ino)?;

    let aya_btf = aya::Btf::from_sys_fs().map_err(SockSetupError::AyaBtf)?;
    let mut events = SockEvents {
        attached: Vec::new(),
        skipped: Vec::new(),
        reasons: ReasonNames::from_btf(&kernel),
    };
    for p in PROGRAMS {
        let fitting = match kernel.tracepoint_args(p.tracepoint) {
            None => Err("not in this kernel's BTF".to_string()),
            Some(n) => p.fitting(n),
        };
        let name = match fitting {
            Ok(name) => name,
            Err(why) => {
                if p.required {
                    return Err(SockSetupError::Tracepoint {
                        tracepoint: p.tracepoint,
                        why,
                    }
                    .into());
                }
                debug!("socket events: skipping {} ({}): {why}", p.program, p.tracepoint);
                events.skipped.push((p.program, why));
                continue;
            }
        };
        let prog: &mut BtfTracePoint = capture
            .ebpf
            .program_mut(name)
            .ok_or(CaptureError::MissingProgram(name))?
            .try_into()
            .map_err(|source| CaptureError::Program { program: name, source })?;
        prog.load(p.tracepoint, &aya_btf).map_err(|e| verifier_error(name, e))?;
        prog.attach().map_err(|source| SockSetupError::Attach {
            program: name,
            tracepoint: p.tracepoint,
            source,
        })?;
        capture.attached.push(name);
        events.attached.push(name);
    }
    Ok(events)
}

/// Program name of the `iter/tcp` listener dump.
pub const LISTENER_ITER: &str = "listener_queues";

/// A LISTEN socket and its queues, read by the `iter/tcp` program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct ListenerQueue {
    /// Listening address and port (an IPv6 socket's address is V6).
    pub local: SocketAddr,
    /// The socket's cookie.
    pub cookie: u64,
    /// Owner uid.
    pub uid: u32,
    /// Its queues.
    pub queues: ListenerQueues,
}

/// Every LISTEN socket of the calling thread's network namespace (the kernel iterates the namespace of the
/// task that opens the iterator) with its accept and SYN queues, in one pass of the `iter/tcp` program.
pub fn listener_queues(capture: &mut Capture) -> Result<Vec<ListenerQueue>, CaptureError> {
    let configured = config_map(capture)?
        .get(&0, 0)
        .map_err(map_error(SOCK_CONFIG_MAP))?
        .ready
        != 0;
    if !configured {
        // The iterator only sees its own namespace, so the namespace filter stays off.
        configure(capture, &kernel_btf()?, 0)?;
    }
    let prog: &mut Iter = capture
        .ebpf
        .program_mut(LISTENER_ITER)
        .ok_or(CaptureError::MissingProgram(LISTENER_ITER))?
        .try_into()
        .map_err(|source| CaptureError::Program {
            program: LISTENER_ITER,
            source,
        })?;
    if prog.fd().is_err() {
        let btf = aya::Btf::from_sys_fs().map_err(SockSetupError::AyaBtf)?;
        prog.load("tcp", &btf).map_err(|e| verifier_error(LISTENER_ITER, e))?;
    }
    let link_id = prog.attach().map_err(iter_error("bpf_link_create"))?;
    let link = prog.take_link(link_id).map_err(iter_error("bpf_link_create"))?;
    let mut file = link.into_file().map_err(iter_error("bpf_iter_create"))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(SockSetupError::IterRead)?;
    Ok(parse_listeners(&bytes).map_err(SockSetupError::IterRead)?)
}

/// Wraps an error of the iterator's `step`.
fn iter_error<E: std::error::Error + Send + Sync + 'static>(step: &'static str) -> impl FnOnce(E) -> SockSetupError {
    move |e| SockSetupError::Iter {
        step,
        source: Box::new(e),
    }
}

/// The iterator's output: whole `ListenerRecord`s, each a listener.
fn parse_listeners(bytes: &[u8]) -> Result<Vec<ListenerQueue>, std::io::Error> {
    let size = size_of::<ListenerRecord>();
    if !bytes.len().is_multiple_of(size) {
        return Err(std::io::Error::other(format!(
            "{} bytes is not a whole number of {size}-byte records",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(size)
        .filter_map(|chunk| {
            // SAFETY: the chunk is one ListenerRecord long; every bit pattern is a valid value of its
            // integer and byte-array fields, and read_unaligned needs no alignment.
            let r = unsafe { std::ptr::read_unaligned(chunk.as_ptr().cast::<ListenerRecord>()) };
            let ip = match r.family {
                AF_INET => IpAddr::V4(Ipv4Addr::new(r.addr[0], r.addr[1], r.addr[2], r.addr[3])),
                AF_INET6 => IpAddr::V6(Ipv6Addr::from(r.addr)),
                _ => return None,
            };
            Some(ListenerQueue {
                local: SocketAddr::new(ip, r.port),
                cookie: r.cookie,
                uid: r.uid,
                queues: ListenerQueues {
                    accept_queue: r.ack_backlog,
                    accept_limit: r.max_ack_backlog,
                    syn_queue: r.synq,
                },
            })
        })
        .collect())
}

/// The offsets the programs read at, from the kernel's BTF, after checking the layout they assume: the fixed
/// start of `sock_common`, and `sock`, `inet_connection_sock` and `request_sock` starting with it.
pub fn sock_offsets(btf: &Btf) -> Result<SockOffsets, BtfError> {
    let field = |outer: &str, path: &str, size: u32| -> Result<u16, BtfError> {
        let m = btf.member(outer, path)?;
        if m.size != size {
            return Err(BtfError::Layout(format!(
                "{outer}.{path} is {} bytes, the programs read {size}",
                m.size
            )));
        }
        u16::try_from(m.offset).map_err(|_| BtfError::Layout(format!("{outer}.{path} is at {}, past 65535", m.offset)))
    };
    let fixed_fields = [
        ("sock_common", "skc_daddr", fixed::SKC_DADDR, 4),
        ("sock_common", "skc_rcv_saddr", fixed::SKC_RCV_SADDR, 4),
        ("sock_common", "skc_dport", fixed::SKC_DPORT, 2),
        ("sock_common", "skc_num", fixed::SKC_NUM, 2),
        ("sock_common", "skc_family", fixed::SKC_FAMILY, 2),
        ("sock_common", "skc_state", fixed::SKC_STATE, 1),
        ("sock", "__sk_common", 0, btf.struct_size("sock_common")?),
        ("request_sock", "__req_common", 0, btf.struct_size("sock_common")?),
        ("inet_sock", "sk", 0, btf.struct_size("sock")?),
        ("inet_connection_sock", "icsk_inet", 0, btf.struct_size("inet_sock")?),
    ];
    for (outer, path, want, size) in fixed_fields {
        let at = field(outer, path, size)?;
        if at != want {
            return Err(BtfError::Layout(format!(
                "{outer}.{path} is at {at}, the programs assume {want}"
            )));
        }
    }
    Ok(SockOffsets {
        skc_v6_daddr: field("sock_common", "skc_v6_daddr", 16)?,
        skc_v6_rcv_saddr: field("sock_common", "skc_v6_rcv_saddr", 16)?,
        skc_net: field("sock_common", "skc_net.net", 8)?,
        sk_protocol: field("sock", "sk_protocol", 2)?,
        sk_ack_backlog: field("sock", "sk_ack_backlog", 4)?,
        sk_max_ack_backlog: field("sock", "sk_max_ack_backlog", 4)?,
        icsk_accept_queue_qlen: field("inet_connection_sock", "icsk_accept_queue.qlen", 4)?,
        net_ns_inum: field("net", "ns.inum", 4)?,
        skb_head: field("sk_buff", "head", 8)?,
        skb_network_header: field("sk_buff", "network_header", 2)?,
        skb_protocol: field("sk_buff", "protocol", 2)?,
        skb_dev: field("sk_buff", "dev", 8)?,
        skb_sk: field("sk_buff", "sk", 8)?,
        dev_nd_net: field("net_device", "nd_net.net", 8)?,
        inet_sport: field("inet_sock", "inet_sport", 2)?,
        _pad: [0; 2],
    })
}

/// The kernel's names of drop reasons (`enum skb_drop_reason`) and reset reasons (`enum sk_rst_reason`).
#[derive(Clone, Debug, Default)]
pub struct ReasonNames {
    drop: HashMap<u32, String>,
    reset: HashMap<u32, String>,
}

impl ReasonNames {
    /// Reads both enums; one this kernel lacks leaves its reasons as numbers.
    pub fn from_btf(btf: &Btf) -> ReasonNames {
        ReasonNames {
            drop: btf
                .enum_names("skb_drop_reason", "SKB_DROP_REASON_")
                .unwrap_or_default(),
            reset: btf.enum_names("sk_rst_reason", "SK_RST_REASON_").unwrap_or_default(),
        }
    }

    /// The reason of an event of kind `event` (`SOCK_EV_*`) as text: the kernel's name without its prefix
    /// (`NO_SOCKET`), a retransmit's signed result, or the number.
    pub fn name(&self, event: u8, reason: u32) -> String {
        let table = match event {
            SOCK_EV_DROP => &self.drop,
            SOCK_EV_SEND_RESET => &self.reset,
            SOCK_EV_RETRANSMIT_SKB => return (reason as i32).to_string(),
            _ => return reason.to_string(),
        };
        table.get(&reason).cloned().unwrap_or_else(|| reason.to_string())
    }
}

/// What a socket event reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SockEventKind {
    /// A state change (`inet_sock_set_state`).
    State,
    /// A listener resent a SYN-ACK (`tcp_retransmit_synack`).
    RetransmitSynack,
    /// A segment was retransmitted (`tcp_retransmit_skb`).
    RetransmitSkb,
    /// A RST was sent (`tcp_send_reset`).
    SendReset,
    /// A RST was received (`tcp_receive_reset`).
    ReceiveReset,
    /// The socket was destroyed (`tcp_destroy_sock`).
    Destroy,
    /// The receive queue was full (`sock_rcvqueue_full`).
    RcvqFull,
    /// A TCP segment was dropped (`kfree_skb`).
    Drop,
}

impl SockEventKind {
    /// The kind of a `SOCK_EV_*` number.
    pub fn from_raw(event: u8) -> Option<SockEventKind> {
        Some(match event {
            SOCK_EV_STATE => SockEventKind::State,
            SOCK_EV_RETRANSMIT_SYNACK => SockEventKind::RetransmitSynack,
            SOCK_EV_RETRANSMIT_SKB => SockEventKind::RetransmitSkb,
            SOCK_EV_SEND_RESET => SockEventKind::SendReset,
            SOCK_EV_RECEIVE_RESET => SockEventKind::ReceiveReset,
            SOCK_EV_DESTROY => SockEventKind::Destroy,
            SOCK_EV_RCVQ_FULL => SockEventKind::RcvqFull,
            SOCK_EV_DROP => SockEventKind::Drop,
            _ => return None,
        })
    }

    /// The tracepoint behind this kind.
    pub fn tracepoint(self) -> &'static str {
        PROGRAMS[self as usize].tracepoint
    }
}

/// A listener's queues when the event fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct ListenerQueues {
    /// Connections waiting for accept() (`sk_ack_backlog`, `ss` Recv-Q).
    pub accept_queue: u32,
    /// The accept queue limit (`sk_max_ack_backlog`, `ss` Send-Q).
    pub accept_limit: u32,
    /// Half-open connections (`icsk_accept_queue.qlen`).
    pub syn_queue: u32,
}

/// A socket event in the agent's terms.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct SockEvent {
    /// Boot-time nanoseconds (the clock of the packet records).
    pub ts_ns: u64,
    /// What happened.
    pub kind: SockEventKind,
    /// The socket's cookie (`ss -e` `sk:`, sock_diag `idiag_cookie`); 0 when the event had no socket.
    pub cookie: u64,
    /// Local address and port (`None` when unknown). An IPv6 socket's address is V6, mapped or not.
    pub local: Option<SocketAddr>,
    /// Remote address and port (`None` when unknown).
    pub remote: Option<SocketAddr>,
    /// The tuple was read from the packet (no socket): local is the packet's destination.
    pub from_packet: bool,
    /// The state before a state change.
    pub old_state: Option<TcpState>,
    /// The new state of a state change, else the socket's state at the event.
    pub state: Option<TcpState>,
    /// A listener's queues, for events on a listener.
    pub queues: Option<ListenerQueues>,
    /// Reset or drop reason, or retransmit result (see [`ReasonNames::name`]).
    pub reason: Option<u32>,
    /// The current process: the socket's owner only for events in process context.
    pub pid: u32,
    /// The current task's name, like `pid`.
    pub comm: String,
}

impl SockEvent {
    /// The view of a record (`None` for an event kind this agent does not know).
    pub fn from_record(r: &SockRecord) -> Option<SockEvent> {
        let kind = SockEventKind::from_raw(r.event)?;
        let ip = |b: &[u8; 16]| match r.family {
            AF_INET => Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
            AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(*b))),
            _ => None,
        };
        let known = r.flags & SOCK_F_NO_TUPLE == 0;
        let addr = |b, port| ip(b).filter(|_| known).map(|ip| SocketAddr::new(ip, port));
        Some(SockEvent {
            ts_ns: r.ts_ns,
            kind,
            cookie: r.cookie,
            local: addr(&r.saddr, r.sport),
            remote: addr(&r.daddr, r.dport),
            from_packet: r.flags & SOCK_F_TUPLE_FROM_SKB != 0,
            old_state: (kind == SockEventKind::State)
                .then(|| TcpState::from_kernel(r.old_state))
                .flatten(),
            state: TcpState::from_kernel(r.state),
            queues: (r.flags & SOCK_F_QUEUES != 0).then_some(ListenerQueues {
                accept_queue: r.ack_backlog,
                accept_limit: r.max_ack_backlog,
                syn_queue: r.synq,
            }),
            reason: (r.flags & SOCK_F_REASON != 0).then_some(r.reason),
            pid: r.pid,
            comm: String::from_utf8_lossy(r.comm_bytes()).into_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel() -> Option<Btf> {
        match Btf::from_sys_fs() {
            Ok(btf) => Some(btf),
            Err(e) => {
                eprintln!("skipped: {e}");
                None
            }
        }
    }

    #[test]
    fn a_kernel_without_btf_is_named_in_one_line() {
        let e = btf_at("/nonexistent/vmlinux").map(|_| ()).unwrap_err();
        let text = CaptureError::from(e).to_string();
        assert!(text.contains("CONFIG_DEBUG_INFO_BTF") && !text.contains('\n'), "{text}");
    }

    #[test]
    fn an_older_tracepoint_gets_the_older_program() {
        let drop = PROGRAMS.iter().find(|p| p.tracepoint == "kfree_skb").unwrap();
        assert_eq!(drop.fitting(4), Ok("sock_drop"));
        assert_eq!(drop.fitting(3), Ok("sock_drop_3args"));
        assert!(drop.fitting(2).unwrap_err().contains("has 2 arguments"));
        assert_eq!(
            PROGRAMS[0].fitting(2).unwrap_err(),
            "has 2 arguments, the program reads 3"
        );
    }

    #[test]
    fn program_table_matches_event_kinds() {
        for (i, p) in PROGRAMS.iter().enumerate() {
            let kind = SockEventKind::from_raw(i as u8 + 1).expect("one kind per program");
            assert_eq!(kind.tracepoint(), p.tracepoint);
        }
        assert_eq!(PROGRAMS.iter().filter(|p| p.required).count(), 1);
        assert_eq!(SockEventKind::from_raw(0), None);
        assert_eq!(SockEventKind::from_raw(observer_common::sock::SOCK_EV_MAX + 1), None);
    }

    #[test]
    fn offsets_from_this_kernel_fit_their_structs() {
        let Some(btf) = kernel() else { return };
        let o = sock_offsets(&btf).expect("this kernel's layout");
        let within = |outer: &str, at: u16, len: u32| {
            let size = btf.struct_size(outer).unwrap();
            assert!(u32::from(at) + len <= size, "{outer}: {at}+{len} past {size}");
        };
        let common = btf.struct_size("sock_common").unwrap();
        for (at, len) in [(o.skc_v6_daddr, 16), (o.skc_v6_rcv_saddr, 16), (o.skc_net, 8)] {
            within("sock_common", at, len);
            assert!(usize::from(at) >= fixed::HEAD_LEN, "past the fixed start");
        }
        assert_eq!(
            o.skc_v6_rcv_saddr,
            o.skc_v6_daddr + 16,
            "in6 addresses are adjacent in sock_common"
        );
        for (at, len) in [(o.sk_protocol, 2), (o.sk_ack_backlog, 4), (o.sk_max_ack_backlog, 4)] {
            within("sock", at, len);
            assert!(u32::from(at) >= common, "sock fields follow its sock_common");
        }
        let sock = btf.struct_size("sock").unwrap();
        within("inet_connection_sock", o.icsk_accept_queue_qlen, 4);
        assert!(
            u32::from(o.icsk_accept_queue_qlen) >= sock,
            "the accept queue follows the sock"
        );
        within("net", o.net_ns_inum, 4);
        for (at, len) in [
            (o.skb_head, 8),
            (o.skb_network_header, 2),
            (o.skb_protocol, 2),
            (o.skb_dev, 8),
            (o.skb_sk, 8),
        ] {
            within("sk_buff", at, len);
        }
        within("net_device", o.dev_nd_net, 8);
        within("inet_sock", o.inet_sport, 2);
        assert!(u32::from(o.inet_sport) >= sock, "inet_sock fields follow the sock");
        assert_eq!(o.skb_dev % 8, 0, "pointers are aligned");
        assert_eq!(o.skb_sk % 8, 0);
        assert_eq!(o.skc_net % 8, 0);
    }

    #[test]
    fn this_kernel_has_the_required_tracepoint_and_reason_names() {
        let Some(btf) = kernel() else { return };
        assert_eq!(btf.tracepoint_args("inet_sock_set_state"), Some(3));
        let names = ReasonNames::from_btf(&btf);
        // Both enums start with their "not specified" value (include/net/dropreason-core.h, rstreason.h).
        assert_eq!(names.name(SOCK_EV_DROP, 2), "NOT_SPECIFIED");
        assert_eq!(names.name(SOCK_EV_RETRANSMIT_SKB, (-11i32) as u32), "-11");
        assert_eq!(names.name(SOCK_EV_STATE, 5), "5");
    }

    #[test]
    fn iterator_output_reads_as_listeners() {
        let mut v6 = ListenerRecord {
            cookie: 5,
            port: 443,
            family: AF_INET6,
            uid: 1000,
            ack_backlog: 2,
            max_ack_backlog: 128,
            synq: 1,
            ..ListenerRecord::default()
        };
        v6.addr[15] = 1;
        let mut v4 = ListenerRecord {
            port: 80,
            family: AF_INET,
            ..v6
        };
        v4.addr = [0; 16];
        let mut bytes = Vec::new();
        for r in [v6, v4] {
            // SAFETY: test-only view of a plain repr(C) record with explicit padding as bytes.
            bytes.extend_from_slice(unsafe {
                std::slice::from_raw_parts((&r as *const ListenerRecord).cast::<u8>(), size_of::<ListenerRecord>())
            });
        }
        let rows = parse_listeners(&bytes).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].local, "[::1]:443".parse().unwrap());
        assert_eq!(rows[1].local, "0.0.0.0:80".parse().unwrap());
        assert_eq!(
            (rows[0].cookie, rows[0].uid, rows[0].queues),
            (
                5,
                1000,
                ListenerQueues {
                    accept_queue: 2,
                    accept_limit: 128,
                    syn_queue: 1
                }
            )
        );
        assert!(parse_listeners(&bytes[..47]).is_err());
        assert_eq!(parse_listeners(&[]).unwrap(), Vec::new());
    }

    #[test]
    fn a_record_reads_as_a_socket_event() {
        let mut r = SockRecord {
            event: SOCK_EV_STATE,
            family: AF_INET,
            old_state: 10,
            state: 3,
            sport: 8080,
            dport: 0,
            flags: 0,
            cookie: 99,
            ..SockRecord::default()
        };
        r.saddr[..4].copy_from_slice(&[10, 9, 0, 2]);
        let e = SockEvent::from_record(&r).unwrap();
        assert_eq!(e.local, Some("10.9.0.2:8080".parse().unwrap()));
        assert_eq!(e.remote, Some("0.0.0.0:0".parse().unwrap()));
        assert_eq!(
            (e.old_state, e.state),
            (Some(TcpState::Listen), Some(TcpState::SynRecv))
        );
        assert_eq!((e.queues, e.reason), (None, None));

        r.event = SOCK_EV_SEND_RESET;
        r.flags = SOCK_F_NO_TUPLE | SOCK_F_REASON;
        r.reason = 3;
        let e = SockEvent::from_record(&r).unwrap();
        assert_eq!((e.local, e.remote, e.old_state, e.reason), (None, None, None, Some(3)));
        r.event = 200;
        assert_eq!(SockEvent::from_record(&r), None);
    }
}
