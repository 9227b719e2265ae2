//! Network namespaces and veth pairs made by a test and removed when it ends, also when it fails.
//!
//! Test traffic flows only between the namespaces a test creates here.

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

use anyhow::{Context as _, bail};

/// A network namespace that is deleted on drop.
#[derive(Debug)]
pub struct Netns {
    /// Its name under /var/run/netns.
    pub name: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs a command, failing with its stderr when it exits non-zero.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let Output { status, stdout, stderr } = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status}): {}", String::from_utf8_lossy(&stderr).trim());
    }
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

/// `ip <args>`.
pub fn ip(args: &[&str]) -> anyhow::Result<String> {
    run(Command::new("ip").args(args))
}

impl Netns {
    /// Creates a namespace named after `tag`, the process id and a counter, with its loopback up.
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        let name = format!(
            "obs-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Packets received and sent by `iface` in this namespace, from its /sys/class/net/<iface>/statistics
    /// counters (read through `ip netns exec`, which mounts the namespace's own sysfs).
    pub fn link_packets(&self, iface: &str) -> anyhow::Result<(u64, u64)> {
        let dir = format!("/sys/class/net/{iface}/statistics");
        let out = run(self
            .command("cat")
            .arg(format!("{dir}/rx_packets"))
            .arg(format!("{dir}/tx_packets")))?;
        let mut values = out.split_whitespace().map(str::parse::<u64>);
        match (values.next(), values.next()) {
            (Some(Ok(rx)), Some(Ok(tx))) => Ok((rx, tx)),
            _ => bail!("{dir}: unexpected counters {:?}", out.trim()),
        }
    }

    /// Drops, in this namespace's output path, every pure ACK to `dport`: a client here never completes its
    /// handshakes with that port, so the server keeps half-open request socks (and retransmits its SYN-ACKs).
    pub fn drop_final_acks(&self, dport: u16) -> anyhow::Result<()> {
        let rule = format!("tcp dport {dport} tcp flags & (syn | ack | fin | rst) == ack drop");
        run(self.command("nft").args(["add", "table", "inet", "obs_final_ack"]))?;
        run(self.command("nft").args([
            "add",
            "chain",
            "inet",
            "obs_final_ack",
            "out",
            "{ type filter hook output priority 0 ; }",
        ]))?;
        run(self
            .command("nft")
            .args(["add", "rule", "inet", "obs_final_ack", "out"])
            .args(rule.split(' ')))?;
        Ok(())
    }

    /// Sends raw Ethernet frames out of `iface` in this namespace through an AF_PACKET socket.
    pub fn inject(&self, iface: &str, frames: Vec<Vec<u8>>) {
        let name = std::ffi::CString::new(iface).expect("interface name");
        self.enter(move || {
            // SAFETY: plain socket calls on a socket this closure owns and closes; `addr` outlives every use.
            unsafe {
                let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
                assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
                let mut addr: libc::sockaddr_ll = std::mem::zeroed();
                addr.sll_family = libc::AF_PACKET as u16;
                addr.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
                addr.sll_halen = 6;
                for frame in &frames {
                    let sent = libc::sendto(
                        fd,
                        frame.as_ptr().cast(),
                        frame.len(),
                        0,
                        (&raw const addr).cast(),
                        std::mem::size_of::<libc::sockaddr_ll>() as u32,
                    );
                    assert_eq!(
                        sent,
                        frame.len() as isize,
                        "sendto: {}",
                        std::io::Error::last_os_error()
                    );
                }
                libc::close(fd);
            }
        })
        .expect("entering the sender namespace");
    }

    /// Runs `f` on a new thread that has entered the namespace, and returns its result.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
        self.spawn(f)?
            .join()
            .map_err(|_| anyhow::anyhow!("thread in {} panicked", self.name))
    }

    /// Starts `f` on a new thread that has entered the namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<thread::JoinHandle<T>> {
        let path = format!("/var/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = thread::spawn(move || {
            // SAFETY: setns on this thread only, with a namespace fd we own.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            let _ = tx.send(rc);
            assert_eq!(rc, 0, "setns failed");
            f()
        });
        match rx.recv() {
            Ok(0) => Ok(handle),
            _ => bail!("setns into {} failed: {}", self.name, std::io::Error::last_os_error()),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace also removes the veth ends inside it.
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Two namespaces joined by a veth pair: `a` holds `a_if` with `a_addr`, `b` holds `b_if` with `b_addr`.
#[derive(Debug)]
pub struct Pair {
    /// First namespace.
    pub a: Netns,
    /// Second namespace.
    pub b: Netns,
    /// Interface name in `a`.
    pub a_if: String,
    /// Interface name in `b`.
    pub b_if: String,
    /// Address of `a_if` (IPv4, no prefix).
    pub a_addr: String,
    /// Address of `b_if`.
    pub b_addr: String,
}

impl Pair {
    /// Creates the namespaces and the veth pair, with IPv4 addresses 10.<subnet>.0.1/24 and .2/24.
    pub fn new(tag: &str, subnet: u8) -> anyhow::Result<Self> {
        let a = Netns::new(&format!("{tag}a"))?;
        let b = Netns::new(&format!("{tag}b"))?;
        let (a_if, b_if) = ("veth-a".to_string(), "veth-b".to_string());
        a.ip(&[
            "link", "add", &a_if, "type", "veth", "peer", "name", &b_if, "netns", &b.name,
        ])?;
        let a_addr = format!("10.{subnet}.0.1");
        let b_addr = format!("10.{subnet}.0.2");
        a.ip(&["addr", "add", &format!("{a_addr}/24"), "dev", &a_if])?;
        b.ip(&["addr", "add", &format!("{b_addr}/24"), "dev", &b_if])?;
        a.ip(&["link", "set", &a_if, "up"])?;
        b.ip(&["link", "set", &b_if, "up"])?;
        Ok(Pair {
            a,
            b,
            a_if,
            b_if,
            a_addr,
            b_addr,
        })
    }

    /// Adds IPv6 addresses (/64, no duplicate address detection, so they work at once) to both ends.
    pub fn add_ipv6(&self, a6: &str, b6: &str) -> anyhow::Result<()> {
        for (ns, iface, addr) in [(&self.a, &self.a_if, a6), (&self.b, &self.b_if, b6)] {
            ns.ip(&["-6", "addr", "add", &format!("{addr}/64"), "dev", iface, "nodad"])?;
        }
        Ok(())
    }
}
