//! The soak's traffic between the two namespaces of a pair: short connections opened and closed all the time
//! (connect, a small request, its reply, close), and paced request/reply rounds on a few long-lived connections
//! whose rate the caller steers towards a packet rate.

use std::{
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tests::netns::{Netns, Pair};

/// The server port of the short connections.
const CHURN_PORT: u16 = 7000;
/// The server port of the long-lived connections.
const STREAM_PORT: u16 = 7001;
/// Client threads opening short connections.
const CHURN_CLIENTS: usize = 4;
/// Server threads answering them.
const CHURN_SERVERS: usize = 4;
/// Short connections opened per second, all clients together.
pub const CHURN_RATE: f64 = 500.0;
/// Long-lived connections.
const STREAMS: usize = 8;
/// Bytes of each request and reply.
const MESSAGE: usize = 32;
/// Longest a socket call may block before the thread looks at the stop flag again, or gives up on a peer.
const PATIENCE: Duration = Duration::from_secs(2);

/// The running traffic; dropping it stops and joins every thread.
pub struct Load {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

/// What the threads share with the caller.
struct Shared {
    stop: AtomicBool,
    opened: AtomicU64,
    failed: AtomicU64,
    /// Round trips per second asked of all the long-lived connections together (f64 bits).
    stream_rate: AtomicU64,
}

impl Load {
    /// Starts the servers in `pair.b`, the long-lived connections and the short-connection clients in `pair.a`,
    /// the long-lived ones at `stream_rate` round trips per second in all.
    pub fn start(pair: &Pair, stream_rate: f64) -> anyhow::Result<Load> {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            opened: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            stream_rate: AtomicU64::new(stream_rate.to_bits()),
        });
        let mut load = Load {
            shared,
            threads: Vec::new(),
        };
        let ip = pair.b_addr.parse().context("server address")?;
        let churn_addr = SocketAddr::new(ip, CHURN_PORT);
        let stream_addr = SocketAddr::new(ip, STREAM_PORT);
        let churn = listen(&pair.b, churn_addr)?;
        churn.set_nonblocking(true)?;
        for _ in 0..CHURN_SERVERS {
            let (listener, shared) = (churn.try_clone()?, Arc::clone(&load.shared));
            load.threads
                .push(thread::spawn(move || churn_server(&listener, &shared)));
        }
        let streams = listen(&pair.b, stream_addr)?;
        for _ in 0..STREAMS {
            let client = pair
                .a
                .enter(move || TcpStream::connect_timeout(&stream_addr, PATIENCE))??;
            let (server, _) = streams.accept().context("accepting a long-lived connection")?;
            let shared = Arc::clone(&load.shared);
            load.threads.push(thread::spawn(move || echo(server, &shared)));
            let shared = Arc::clone(&load.shared);
            load.threads.push(thread::spawn(move || stream_client(client, &shared)));
        }
        for _ in 0..CHURN_CLIENTS {
            let shared = Arc::clone(&load.shared);
            load.threads
                .push(pair.a.spawn(move || churn_client(churn_addr, &shared))?);
        }
        Ok(load)
    }

    /// Short connections opened so far.
    pub fn opened(&self) -> u64 {
        self.shared.opened.load(Ordering::Relaxed)
    }

    /// Connections or round trips that failed so far.
    pub fn failed(&self) -> u64 {
        self.shared.failed.load(Ordering::Relaxed)
    }

    /// Round trips per second asked of the long-lived connections together.
    pub fn stream_rate(&self) -> f64 {
        f64::from_bits(self.shared.stream_rate.load(Ordering::Relaxed))
    }

    /// Asks the long-lived connections for `rate` round trips per second together.
    pub fn set_stream_rate(&self, rate: f64) {
        self.shared.stream_rate.store(rate.to_bits(), Ordering::Relaxed);
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A listener on `addr`, made in `ns`.
fn listen(ns: &Netns, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    ns.enter(move || TcpListener::bind(addr))?
        .with_context(|| format!("listening on {addr} in {}", ns.name))
}

/// Paces work at a rate that may change: credit accrues with time, at most 10 ms of it at once, so a stall is
/// never made up by a burst.
struct Pacer {
    last: Instant,
    credit: f64,
}

impl Pacer {
    fn new() -> Pacer {
        Pacer {
            last: Instant::now(),
            credit: 0.0,
        }
    }

    /// How many rounds are due now at `rate` per second; sleeps a little when none is.
    fn due(&mut self, rate: f64) -> u64 {
        let now = Instant::now();
        let cap = (rate * 0.01).max(1.0);
        self.credit = (self.credit + rate * (now - self.last).as_secs_f64()).min(cap);
        self.last = now;
        let n = self.credit.floor();
        self.credit -= n;
        if n < 1.0 {
            thread::sleep(Duration::from_micros(500));
        }
        n as u64
    }
}

/// One short connection: connect, request, reply, close (the client closes first).
fn churn_once(addr: SocketAddr) -> io::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, PATIENCE)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(PATIENCE))?;
    s.write_all(&[b'q'; MESSAGE])?;
    let mut reply = [0; MESSAGE];
    s.read_exact(&mut reply)
}

fn churn_client(addr: SocketAddr, shared: &Shared) {
    let mut pacer = Pacer::new();
    while !shared.stop.load(Ordering::Relaxed) {
        for _ in 0..pacer.due(CHURN_RATE / CHURN_CLIENTS as f64) {
            let counter = match churn_once(addr) {
                Ok(()) => &shared.opened,
                Err(_) => &shared.failed,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Answers one short connection: its request, then waits for its close.
fn churn_answer(mut s: TcpStream) -> io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(PATIENCE))?;
    let mut request = [0; MESSAGE];
    s.read_exact(&mut request)?;
    s.write_all(&request)?;
    while s.read(&mut request)? > 0 {}
    Ok(())
}

fn churn_server(listener: &TcpListener, shared: &Shared) {
    while !shared.stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((s, _)) => {
                if churn_answer(s).is_err() {
                    shared.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(Duration::from_micros(200)),
            Err(_) => {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Sends back what a long-lived connection sends, until it closes or the load stops.
fn echo(mut s: TcpStream, shared: &Shared) {
    let mut buf = [0; 4096];
    if s.set_nodelay(true)
        .and_then(|()| s.set_read_timeout(Some(PATIENCE)))
        .is_err()
    {
        shared.failed.fetch_add(1, Ordering::Relaxed);
        return;
    }
    while !shared.stop.load(Ordering::Relaxed) {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    shared.failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(_) => {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// Paced request/reply rounds on one long-lived connection, its share of the asked rate.
fn stream_client(mut s: TcpStream, shared: &Shared) {
    let round = |s: &mut TcpStream| -> io::Result<()> {
        s.write_all(&[b'r'; MESSAGE])?;
        let mut reply = [0; MESSAGE];
        s.read_exact(&mut reply)
    };
    if s.set_nodelay(true)
        .and_then(|()| s.set_read_timeout(Some(PATIENCE)))
        .is_err()
    {
        shared.failed.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mut pacer = Pacer::new();
    while !shared.stop.load(Ordering::Relaxed) {
        let rate = f64::from_bits(shared.stream_rate.load(Ordering::Relaxed)) / STREAMS as f64;
        for _ in 0..pacer.due(rate) {
            if round(&mut s).is_err() {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}
