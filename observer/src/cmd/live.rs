//! The linker's view of the kernel, read live: sock_diag for sockets, /proc for owners and TcpExt.

use std::net::{IpAddr, SocketAddr};

use crate::{
    model::link::{Kernel, Tuple},
    sys::sockets::{
        Socket,
        diag::{Diag, Query},
        process::{Owner, ProcessMap},
        tcpext::{self, TcpExt},
    },
};

/// Answers the linker's queries from the running kernel.
pub struct LiveKernel {
    diag: Diag,
    processes: ProcessMap,
}

impl LiveKernel {
    /// Opens the sock_diag socket.
    pub fn open() -> Result<Self, crate::sys::sockets::SocketError> {
        Ok(LiveKernel {
            diag: Diag::open()?,
            processes: ProcessMap::new(),
        })
    }

    /// The whole table with tcp_info, for the linker's first view (window scales of older connections).
    pub fn table(&mut self) -> Result<Vec<Socket>, crate::sys::sockets::SocketError> {
        let mut q = Query::all();
        q.info = true;
        self.diag.dump(&q)
    }
}

impl Kernel for LiveKernel {
    fn listeners(&mut self) -> Vec<Socket> {
        self.diag.dump(&Query::listeners()).unwrap_or_default()
    }

    fn syn_recv(&mut self, port: u16) -> Vec<Socket> {
        self.diag.dump(&Query::syn_recv(port)).unwrap_or_default()
    }

    fn lookup(&mut self, tuple: Tuple) -> Option<Socket> {
        if let Some(s) = self.diag.lookup(tuple.local, tuple.remote, false).ok().flatten() {
            return Some(s);
        }
        // A dual-stack socket holds IPv4 peers as mapped IPv6 addresses.
        let mapped = |a: SocketAddr| match a {
            SocketAddr::V4(v4) => Some(SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())),
            SocketAddr::V6(_) => None,
        };
        self.diag
            .lookup(mapped(tuple.local)?, mapped(tuple.remote)?, false)
            .ok()
            .flatten()
    }

    fn tcpext(&mut self) -> Option<TcpExt> {
        tcpext::read().ok()
    }

    fn owner(&mut self, inode: u64) -> Option<Owner> {
        self.processes.get(inode).cloned()
    }
}
