//! Many established TCP connections on loopback inside a namespace of their own, for benchmarks and tests that
//! need a big socket table.
//!
//! The open-file limit cannot be raised above 20,000 per process, so child processes hold the sockets: each
//! enters the namespace, listens on its own port, connects its share of clients in nonblocking batches, accepts
//! them, reports, and then parks until the parent drops the handle (or dies: the child sees its control pipe
//! close). Dropping [`Conns`] kills and reaps the children, then removes the namespace.

use std::{
    fs::File,
    io,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::netns::Netns;

/// Most connections one child holds (two descriptors each, under the 20,000 open-file ceiling).
pub const MAX_PER_PROCESS: usize = 7_500;

/// Connections a child connects before it accepts them (kept below the default somaxconn of 4096).
const BATCH: usize = 1_024;

/// First listener port; child `i` listens on 127.0.0.1:`LISTEN_PORT + i`.
const LISTEN_PORT: u16 = 5_000;

/// First client port; child `i` binds its clients to 127.0.1.`i + 1`:`CLIENT_PORT + j` (below the ephemeral
/// range, so no client ever waits for the kernel to find a free port).
const CLIENT_PORT: u16 = 10_000;

/// How long the children may take to open their connections.
const OPEN_TIMEOUT: Duration = Duration::from_secs(120);

/// A child process holding connections.
#[derive(Debug)]
struct Holder {
    pid: libc::pid_t,
    /// Write end of the control pipe: the child exits when it reads end of file.
    _control: OwnedFd,
}

/// N established loopback connections in a fresh namespace, held until drop.
#[derive(Debug)]
pub struct Conns {
    holders: Vec<Holder>,
    listeners: Vec<SocketAddrV4>,
    established: usize,
    // Dropped after the children are gone (field order), so deleting it finds no process inside.
    ns: Netns,
}

/// Which syscall a child was in when it failed (the first word of its report).
const STAGES: [&str; 10] = [
    "ok",
    "setns",
    "setrlimit(RLIMIT_NOFILE)",
    "socket (listener)",
    "bind (listener)",
    "listen",
    "socket (client)",
    "bind (client)",
    "connect",
    "accept4",
];

impl Conns {
    /// Opens `n` connections in a new namespace named after `tag`, at most [`MAX_PER_PROCESS`] per child.
    pub fn open(tag: &str, n: usize) -> anyhow::Result<Conns> {
        Conns::open_spread(tag, n, MAX_PER_PROCESS)
    }

    /// Opens `n` connections, at most `per_process` (1 to [`MAX_PER_PROCESS`]) in each child.
    pub fn open_spread(tag: &str, n: usize, per_process: usize) -> anyhow::Result<Conns> {
        if !(1..=MAX_PER_PROCESS).contains(&per_process) {
            bail!("per_process must be 1..={MAX_PER_PROCESS}, got {per_process}");
        }
        let children = n.div_ceil(per_process).max(1);
        if children > 250 {
            bail!("{n} connections need {children} children; at most 250 (one 127.0.1.x address each)");
        }
        let ns = Netns::new(tag)?;
        let path = format!("/var/run/netns/{}", ns.name);
        let ns_file = File::open(&path).with_context(|| format!("opening {path}"))?;
        let mut conns = Conns {
            holders: Vec::new(),
            listeners: Vec::new(),
            established: n,
            ns,
        };
        let mut statuses = Vec::new();
        for i in 0..children {
            let share = n / children + usize::from(i < n % children);
            let listen = SocketAddrV4::new(Ipv4Addr::LOCALHOST, LISTEN_PORT + i as u16);
            let client_ip = Ipv4Addr::new(127, 0, 1, i as u8 + 1);
            let (holder, status) = fork_holder(&ns_file, listen, client_ip, share)?;
            conns.holders.push(holder);
            conns.listeners.push(listen);
            statuses.push(status);
        }
        let deadline = Instant::now() + OPEN_TIMEOUT;
        for (i, status) in statuses.iter().enumerate() {
            let report = read_report(status, deadline).with_context(|| format!("waiting for child {i}"))?;
            if report[0] != 0 {
                let stage = STAGES.get(report[0] as usize).copied().unwrap_or("unknown step");
                bail!(
                    "child {i} in {}: {stage} failed after {} connections: {}",
                    conns.ns.name,
                    report[2],
                    io::Error::from_raw_os_error(report[1] as i32)
                );
            }
        }
        Ok(conns)
    }

    /// The namespace the connections live in.
    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    /// Established client sockets (each has an accepted server socket beside it).
    pub fn established(&self) -> usize {
        self.established
    }

    /// The listening sockets, one per child.
    pub fn listeners(&self) -> &[SocketAddrV4] {
        &self.listeners
    }

    /// Every TCP socket in the namespace: clients, accepted sockets and listeners.
    pub fn sockets(&self) -> usize {
        2 * self.established + self.listeners.len()
    }

    /// Process ids of the children holding the sockets.
    pub fn pids(&self) -> Vec<u32> {
        self.holders.iter().map(|h| h.pid as u32).collect()
    }
}

impl Drop for Conns {
    fn drop(&mut self) {
        for h in &self.holders {
            // SAFETY: kill(2) on a child this process forked and has not reaped yet.
            unsafe { libc::kill(h.pid, libc::SIGKILL) };
        }
        for h in &self.holders {
            let mut status = 0;
            // SAFETY: waitpid(2) on our own child.
            while unsafe { libc::waitpid(h.pid, &mut status, 0) } < 0
                && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
            {}
        }
    }
}

/// A pipe with both ends close-on-exec: (read, write).
fn pipe() -> anyhow::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error()).context("pipe2");
    }
    // SAFETY: both descriptors are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Forks a child that opens `count` connections to `listen` from `client_ip`; returns it and the read end of
/// its status pipe.
fn fork_holder(
    ns: &File,
    listen: SocketAddrV4,
    client_ip: Ipv4Addr,
    count: usize,
) -> anyhow::Result<(Holder, OwnedFd)> {
    let (status_r, status_w) = pipe()?;
    let (control_r, control_w) = pipe()?;
    let plan = Plan {
        ns: ns.as_raw_fd(),
        status: status_w.as_raw_fd(),
        control: control_r.as_raw_fd(),
        listen: sockaddr(listen),
        client_ip,
        count,
    };
    // SAFETY: the child runs only `hold`, which makes raw syscalls on prepared data and never returns.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()).context("fork"),
        0 => hold(&plan),
        pid => Ok((
            Holder {
                pid,
                _control: control_w,
            },
            status_r,
        )),
    }
}

/// Everything a child needs, prepared before fork so that the child does not allocate.
struct Plan {
    ns: RawFd,
    status: RawFd,
    control: RawFd,
    listen: libc::sockaddr_in,
    client_ip: Ipv4Addr,
    count: usize,
}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// The child: after fork only async-signal-safe syscalls, no allocation, no unwinding.
fn hold(plan: &Plan) -> ! {
    let report = |stage: u32, errno: i32, done: usize| {
        let words = [stage, errno as u32, done as u32];
        // SAFETY: writes 12 bytes from a local array to our status pipe.
        unsafe { libc::write(plan.status, words.as_ptr().cast(), size_of_val(&words)) };
    };
    let fail = |stage: u32, done: usize| -> ! {
        report(stage, errno(), done);
        // SAFETY: _exit skips the parent's atexit handlers and buffers, as a forked child must.
        unsafe { libc::_exit(1) }
    };
    // SAFETY (whole block): raw syscalls on descriptors and buffers this function owns.
    unsafe {
        if libc::setns(plan.ns, libc::CLONE_NEWNET) != 0 {
            fail(1, 0);
        }
        close_all_but(plan.status, plan.control);
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            fail(2, 0);
        }
        let listener = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        if listener < 0 {
            fail(3, 0);
        }
        let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::bind(listener, (&raw const plan.listen).cast(), len) != 0 {
            fail(4, 0);
        }
        if libc::listen(listener, BATCH as i32 * 2) != 0 {
            fail(5, 0);
        }
        let mut done = 0;
        while done < plan.count {
            let batch = BATCH.min(plan.count - done);
            for j in done..done + batch {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
                if fd < 0 {
                    fail(6, done);
                }
                let src = sockaddr(SocketAddrV4::new(plan.client_ip, CLIENT_PORT + j as u16));
                if libc::bind(fd, (&raw const src).cast(), len) != 0 {
                    fail(7, done);
                }
                if libc::connect(fd, (&raw const plan.listen).cast(), len) != 0 && errno() != libc::EINPROGRESS {
                    fail(8, done);
                }
            }
            // A client is established once its accepted peer exists, so accepting the batch completes it.
            for _ in 0..batch {
                while libc::accept4(listener, std::ptr::null_mut(), std::ptr::null_mut(), 0) < 0 {
                    if errno() != libc::EINTR {
                        fail(9, done);
                    }
                }
                done += 1;
            }
        }
        report(0, 0, done);
        let mut byte = 0u8;
        while libc::read(plan.control, (&raw mut byte).cast(), 1) != 0 {
            if errno() != libc::EINTR {
                break;
            }
        }
        libc::_exit(0)
    }
}

fn errno() -> i32 {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

/// Closes every descriptor above stderr except `a` and `b`, so that a child holds no other child's control pipe
/// (which would keep that child alive after the parent is gone).
fn close_all_but(a: RawFd, b: RawFd) {
    let (lo, hi) = (a.min(b) as u32, a.max(b) as u32);
    for (first, last) in [(3, lo.wrapping_sub(1)), (lo + 1, hi - 1), (hi + 1, u32::MAX)] {
        if first <= last && last >= 3 {
            // SAFETY: close_range(2) on descriptors this process no longer needs.
            unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) };
        }
    }
}

/// Waits for a child's 12-byte report until `deadline`.
fn read_report(fd: &OwnedFd, deadline: Instant) -> anyhow::Result<[u32; 3]> {
    let mut words = [0u32; 3];
    let mut got = 0;
    let size = size_of_val(&words);
    while got < size {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll(2) on one pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("poll on the status pipe");
        }
        if rc == 0 {
            bail!("no report within {OPEN_TIMEOUT:?}");
        }
        // SAFETY: reads into the rest of `words`, which has `size - got` bytes left.
        let n = unsafe {
            libc::read(
                fd.as_raw_fd(),
                words.as_mut_ptr().cast::<u8>().add(got).cast(),
                size - got,
            )
        };
        match n {
            n if n > 0 => got += n as usize,
            0 => bail!("the child exited without a report"),
            _ if errno() == libc::EINTR => {}
            _ => return Err(io::Error::last_os_error()).context("read on the status pipe"),
        }
    }
    Ok(words)
}
