//! NETLINK_ROUTE plumbing shared by the neighbour table and the tc filter check: the walk over the messages of
//! one datagram, and a whole dump (request, answers until NLMSG_DONE or an error).

use std::io;

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcMessage, TcOption},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// Receive buffer for one datagram of netlink messages.
pub const RECV_BUF: usize = 1 << 16;

/// One message of a datagram, as far as its readers care.
#[derive(Debug)]
pub enum Message {
    /// A route message (RTM_NEWNEIGH, RTM_NEWTFILTER ...).
    Route(RouteNetlinkMessage),
    /// NLMSG_DONE: the end of a dump.
    Done,
    /// NLMSG_ERROR with an error code: the request failed.
    Error(io::Error),
}

/// Hands each message of the datagram `buf` to `each`; a message that does not decode is skipped.
pub fn messages(mut buf: &[u8], mut each: impl FnMut(Message)) {
    while let Ok(nl) = NetlinkBuffer::new_checked(buf) {
        let len = nl.length() as usize;
        if len == 0 {
            break;
        }
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[..len.min(buf.len())]).map(|m| m.payload) {
            Ok(NetlinkPayload::InnerMessage(m)) => each(Message::Route(m)),
            Ok(NetlinkPayload::Done(_)) => each(Message::Done),
            Ok(NetlinkPayload::Error(e)) => match e.code {
                Some(code) => each(Message::Error(io::Error::from_raw_os_error(-code.get()))),
                // An acknowledgement.
                None => each(Message::Done),
            },
            _ => {}
        }
        buf = buf.get((len + 3) & !3..).unwrap_or_default();
    }
}

/// Sends the dump request `request` on a socket of its own and hands every route message of the answer to
/// `each`; the error names the failing call (or the kernel's answer).
pub fn dump(request: RouteNetlinkMessage, mut each: impl FnMut(RouteNetlinkMessage)) -> Result<(), DumpError> {
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(DumpError::call("socket"))?;
    socket.bind_auto().map_err(DumpError::call("bind"))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = 1;
    let mut req = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(request));
    req.finalize();
    let mut bytes = vec![0; req.buffer_len()];
    req.serialize(&mut bytes);
    socket
        .send_to(&bytes, &SocketAddr::new(0, 0), 0)
        .map_err(DumpError::call("send"))?;
    let mut buf = Vec::with_capacity(RECV_BUF);
    loop {
        buf.clear();
        socket.recv(&mut buf, 0).map_err(DumpError::call("recv"))?;
        let mut end = None;
        messages(&buf, |m| match m {
            Message::Route(m) => each(m),
            Message::Done => {
                end.get_or_insert(Ok(()));
            }
            Message::Error(e) => end = Some(Err(DumpError::Answer(e))),
        });
        if let Some(end) = end {
            return end;
        }
    }
}

/// Why a dump failed.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// A call on the NETLINK_ROUTE socket failed.
    #[error("{call} on a NETLINK_ROUTE socket failed")]
    Socket {
        /// The call.
        call: &'static str,
        /// Its error.
        #[source]
        source: io::Error,
    },
    /// The kernel answered the dump with an error.
    #[error("the kernel refused the dump")]
    Answer(#[source] io::Error),
}

impl DumpError {
    /// The error of a failed socket call.
    pub fn call(call: &'static str) -> impl FnOnce(io::Error) -> DumpError {
        move |source| DumpError::Socket { call, source }
    }
}

/// The bpf filters on the clsact ingress (or egress) hook of `ifindex`: each one's program name and id.
pub fn bpf_filters(ifindex: u32, egress: bool) -> Result<Vec<(String, u32)>, DumpError> {
    let mut get = TcMessage::default();
    get.header.index = ifindex as i32;
    get.header.parent = TcHandle {
        minor: if egress {
            TcHandle::MIN_EGRESS
        } else {
            TcHandle::MIN_INGRESS
        },
        ..TcHandle::CLSACT
    };
    let mut filters = Vec::new();
    dump(RouteNetlinkMessage::GetTrafficFilter(get), |m| {
        let RouteNetlinkMessage::NewTrafficFilter(f) = m else {
            return;
        };
        for a in &f.attributes {
            if let TcAttribute::Options(options) = a {
                let (mut name, mut id) = (String::new(), None);
                for o in options {
                    match o {
                        TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => name.clone_from(n),
                        TcOption::Bpf(TcFilterBpfOption::ProgId(i)) => id = Some(*i),
                        _ => {}
                    }
                }
                filters.extend(id.map(|id| (name, id)));
            }
        }
    })?;
    Ok(filters)
}
