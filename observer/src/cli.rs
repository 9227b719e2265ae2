//! Command-line interface.

use std::net::IpAddr;

use clap::{Args, Parser, Subcommand, ValueEnum};
use observer_common::config::{MAX_HOSTS, MAX_PORTS};

use crate::{sys::capture, table};

/// observer: every TCP handshake, segment and teardown and every ARP packet of an interface, printed as
/// Wireshark prints them.
#[derive(Debug, Parser)]
#[command(name = "observer", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// What to do (default: watch).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of `watch` when no subcommand is given.
    #[command(flatten)]
    pub watch: WatchArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the interface's TCP segments and ARP packets live (the default).
    Watch(WatchArgs),
    /// Every listening socket's SYN queue, accept queue and limit, established children and drop counters.
    Queues(QueuesArgs),
    /// The TCP socket table exactly as `netstat -ant` (or `ss -tan`) prints it.
    Netstat(NetstatArgs),
    /// Our socket table against the real `netstat -ant` and `ss -tan`, row by row (exit 0 agree, 1 differ, 2
    /// could not compare).
    Compare(CompareArgs),
}

/// Where `observer netstat` and `observer compare` read the socket table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TableSource {
    /// sock_diag netlink (falls back to /proc when it cannot be opened).
    Diag,
    /// /proc/net/tcp and /proc/net/tcp6.
    Proc,
}

impl From<TableSource> for table::Source {
    fn from(s: TableSource) -> Self {
        match s {
            TableSource::Diag => table::Source::Diag,
            TableSource::Proc => table::Source::Proc,
        }
    }
}

/// How TC programs are attached (`--tc-attach`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TcAttach {
    /// TCX links on Linux 6.6 and later, clsact filters before.
    Auto,
    /// TCX links (Linux 6.6+): gone when the process exits.
    Tcx,
    /// A clsact qdisc with netlink filters (any kernel); stale ones are removed at start.
    Netlink,
}

impl From<TcAttach> for capture::TcAttach {
    fn from(a: TcAttach) -> Self {
        match a {
            TcAttach::Auto => capture::TcAttach::Auto,
            TcAttach::Tcx => capture::TcAttach::Tcx,
            TcAttach::Netlink => capture::TcAttach::Netlink,
        }
    }
}

/// XDP attach mode (`--xdp-mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum XdpMode {
    /// Generic (skb) mode: works on every interface.
    Generic,
    /// Native driver mode (veth and XDP-capable drivers).
    Native,
}

impl From<XdpMode> for capture::XdpMode {
    fn from(m: XdpMode) -> Self {
        match m {
            XdpMode::Generic => capture::XdpMode::Generic,
            XdpMode::Native => capture::XdpMode::Native,
        }
    }
}

/// Options of `observer netstat`.
#[derive(Debug, Args)]
pub struct NetstatArgs {
    /// Accepted for netstat's `-ant`: every TCP socket is always listed, numerically.
    #[arg(short = 'a', hide = true)]
    pub all: bool,
    /// Accepted for netstat's `-ant` (always numeric).
    #[arg(short = 'n', hide = true)]
    pub numeric: bool,
    /// Accepted for netstat's `-ant` (always TCP).
    #[arg(short = 't', hide = true)]
    pub tcp: bool,
    /// Do not cut addresses to 22 characters.
    #[arg(long, short = 'W')]
    pub wide: bool,
    /// Add the PID/Program name column.
    #[arg(long, short = 'p')]
    pub programs: bool,
    /// Add the User (numeric uid) and Inode columns.
    #[arg(long = "extend", short = 'e')]
    pub extend: bool,
    /// Add the Timer column.
    #[arg(long, short = 'o')]
    pub timers: bool,
    /// Print as `ss -tan` does instead.
    #[arg(long, conflicts_with_all = ["wide", "programs", "extend", "timers", "json"])]
    pub ss: bool,
    /// One JSON object per socket instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Where to read the table.
    #[arg(long, value_enum, default_value_t = TableSource::Diag)]
    pub source: TableSource,
}

/// Options of `observer compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Where to read our table.
    #[arg(long, value_enum, default_value_t = TableSource::Diag)]
    pub source: TableSource,
}

/// Options of `observer queues`.
#[derive(Debug, Args)]
pub struct QueuesArgs {
    /// Print one snapshot and exit (no kernel programs needed).
    #[arg(long)]
    pub once: bool,
    /// One JSON object per refresh instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Refresh interval in milliseconds (at least 10).
    #[arg(long, value_name = "MS", default_value_t = 1000, value_parser = at_least::<10, u64>)]
    pub interval_ms: u64,
    /// Stop after this many refreshes.
    #[arg(long, value_name = "N", value_parser = at_least::<1, u64>)]
    pub count: Option<u64>,
}

/// Which kernel hook captures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum HookKind {
    /// TC classifiers on ingress and egress.
    Tc,
    /// XDP on ingress only.
    Xdp,
}

/// Options of `observer watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Interface to watch (default: the interface of the default route).
    #[arg(long, short = 'i')]
    pub iface: Option<String>,
    /// Kernel hook: tc sees both directions, xdp only what arrives.
    #[arg(long, value_enum, default_value_t = HookKind::Tc)]
    pub hook: HookKind,
    /// XDP attach mode (with --hook xdp).
    #[arg(long, value_enum, default_value_t = XdpMode::Generic)]
    pub xdp_mode: XdpMode,
    /// TC attach method (with --hook tc).
    #[arg(long, value_enum, default_value_t = TcAttach::Auto)]
    pub tc_attach: TcAttach,
    /// Only TCP segments to or from this port (repeat for more, up to 8).
    #[arg(long = "port", short = 'p', value_name = "PORT", value_parser = at_least::<1, u16>)]
    pub ports: Vec<u16>,
    /// Only packets to or from this address (repeat for more, up to 8).
    #[arg(long = "host", value_name = "ADDR")]
    pub hosts: Vec<IpAddr>,
    /// Busy links: only SYN, FIN, RST, the ACK completing a handshake, the ACK answering a FIN, and ARP.
    #[arg(long)]
    pub control_only: bool,
    /// One JSON object a line instead of text (schema in the README).
    #[arg(long)]
    pub json: bool,
    /// MAC addresses as numbers, without Wireshark's vendor names (`VMware_c0:00:08`), as with tshark -n.
    #[arg(long, short = 'n')]
    pub numeric: bool,
    /// Print the kernel programs' aya-log diagnostics to stderr (costly: a log record per packet).
    #[arg(long)]
    pub ebpf_log: bool,
    /// Stop after this many events.
    #[arg(long, value_name = "N", value_parser = at_least::<1, u64>)]
    pub count: Option<u64>,
    /// Only the wire: do not link segments to sockets (needs no kernel BTF or sock_diag).
    #[arg(long)]
    pub no_sockets: bool,
    /// Also write every captured packet's headers to this pcapng file, with the socket side as packet comments.
    #[arg(long, short = 'w', value_name = "FILE.pcapng")]
    pub write: Option<std::path::PathBuf>,
    /// Most TCP flows analysed at once; the least recently seen is evicted (and counted) beyond it.
    #[arg(long, value_name = "N", default_value_t = crate::model::flows::DEFAULT_MAX_FLOWS, value_parser = at_least::<1, usize>)]
    pub max_flows: usize,
    /// Forget a TCP flow (and report an unfinished handshake) after this many idle seconds; closed flows go 10 s
    /// after their last segment.
    #[arg(long, value_name = "SECS", default_value_t = 300, value_parser = at_least::<1, u64>)]
    pub flow_idle_secs: u64,
    /// Size of the packet records' ring buffer in MiB (a power of two); a larger one rides out longer stalls.
    #[arg(long, value_name = "MIB", default_value_t = observer_common::record::RING_BYTES >> 20, value_parser = ring_mib)]
    pub ring_mb: u32,
    /// Size of the socket events' ring buffer in MiB (a power of two), apart from the packets'.
    #[arg(long, value_name = "MIB", default_value_t = observer_common::record::SOCK_RING_BYTES >> 20, value_parser = ring_mib)]
    pub sock_ring_mb: u32,
    /// While more than this percentage of the packet ring waits unread, fold data segments into one line per
    /// flow per second (0: never); SYN, FIN, RST, handshake ACKs, ARP and socket events are always recorded.
    #[arg(long, value_name = "PCT", default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=99))]
    pub fold_above: u8,
}

/// Largest ring buffer `--ring-mb` and `--sock-ring-mb` accept, in MiB.
const MAX_RING_MIB: u32 = 1024;

/// Parses a ring buffer size in MiB: the kernel takes only powers of two.
fn ring_mib(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if !n.is_power_of_two() || n > MAX_RING_MIB {
        return Err(format!(
            "{n} is not a ring buffer size: use a power of two from 1 to {MAX_RING_MIB}"
        ));
    }
    Ok(n)
}

/// Parses a whole number of at least `MIN`: a port 0 filters everything out, a table of 0 flows holds none, a
/// count of 0 never starts, an interval of 0 never rests.
fn at_least<const MIN: u64, T: TryFrom<u64>>(s: &str) -> Result<T, String> {
    let n: u64 = s.parse().map_err(|e| format!("{e}"))?;
    if n < MIN {
        return Err(format!("must be at least {MIN}"));
    }
    T::try_from(n).map_err(|_| format!("{n} is too large"))
}

/// A command line that parses but cannot be honoured.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// Too many --port.
    #[error("at most {MAX_PORTS} --port values are supported, got {0}")]
    TooManyPorts(usize),
    /// Too many --host.
    #[error("at most {MAX_HOSTS} --host values are supported, got {0}")]
    TooManyHosts(usize),
}

impl WatchArgs {
    /// The ring buffer sizes these options ask for.
    pub fn rings(&self) -> capture::RingSizes {
        capture::RingSizes {
            packets: self.ring_mb << 20,
            sockets: self.sock_ring_mb << 20,
        }
    }

    /// Unread bytes of the packet ring above which data segments are folded (0: never).
    pub fn high_water(&self) -> u32 {
        // At most 1024 MiB times 99: within u64, and the result within the ring's u32 size.
        ((u64::from(self.ring_mb) << 20) * u64::from(self.fold_above) / 100) as u32
    }

    /// The kernel-side configuration these options ask for.
    pub fn config(&self) -> Result<observer_common::Config, UsageError> {
        let mut c = observer_common::Config::default();
        if self.ports.len() > MAX_PORTS {
            return Err(UsageError::TooManyPorts(self.ports.len()));
        }
        if self.hosts.len() > MAX_HOSTS {
            return Err(UsageError::TooManyHosts(self.hosts.len()));
        }
        c.ports[..self.ports.len()].copy_from_slice(&self.ports);
        c.port_count = self.ports.len() as u8;
        for (slot, host) in c.hosts.iter_mut().zip(&self.hosts) {
            *slot = match host {
                IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
                IpAddr::V6(a) => a.octets(),
            };
        }
        c.host_count = self.hosts.len() as u8;
        c.fold_above = self.high_water();
        c.mode = if self.control_only {
            observer_common::config::MODE_CONTROL
        } else {
            observer_common::config::MODE_ALL
        };
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_sizes_are_powers_of_two_in_mib() {
        let cli = Cli::parse_from(["observer", "--ring-mb", "16", "--sock-ring-mb", "1"]);
        assert_eq!(
            cli.watch.rings(),
            capture::RingSizes {
                packets: 16 << 20,
                sockets: 1 << 20
            }
        );
        assert_eq!(
            Cli::parse_from(["observer"]).watch.rings(),
            capture::RingSizes::default()
        );
        for bad in ["3", "0", "2048", "x"] {
            let e = Cli::try_parse_from(["observer", "--ring-mb", bad]).expect_err(bad);
            assert!(e.to_string().contains("--ring-mb"), "{e}");
        }
        let e = Cli::try_parse_from(["observer", "--sock-ring-mb", "3"]).expect_err("3");
        assert!(e.to_string().contains("use a power of two from 1 to 1024"), "{e}");
    }

    #[test]
    fn watch_is_the_default_and_options_fill_the_config() {
        let cli = Cli::parse_from([
            "observer",
            "-i",
            "eth0",
            "--port",
            "22",
            "--host",
            "10.0.0.1",
            "--control-only",
        ]);
        assert!(cli.command.is_none());
        let c = cli.watch.config().unwrap();
        assert_eq!((c.port_count, c.ports[0]), (1, 22));
        assert_eq!(c.host_count, 1);
        assert_eq!(c.hosts[0][10..], [0xff, 0xff, 10, 0, 0, 1]);
        assert_eq!(c.mode, observer_common::config::MODE_CONTROL);
        let cli = Cli::parse_from(["observer", "watch", "--hook", "xdp", "--json"]);
        assert!(matches!(cli.command, Some(Command::Watch(ref w)) if w.hook == HookKind::Xdp && w.json));
    }

    #[test]
    fn too_many_ports_is_a_usage_error() {
        let args: Vec<String> = ["observer"]
            .into_iter()
            .map(String::from)
            .chain((1..=9).flat_map(|p| ["--port".into(), p.to_string()]))
            .collect();
        let cli = Cli::parse_from(args);
        assert!(cli.watch.config().unwrap_err().to_string().contains("at most 8"));
    }

    #[test]
    fn values_that_make_no_sense_are_refused() {
        for args in [
            &["observer", "--port", "0"][..],
            &["observer", "--port", "65536"],
            &["observer", "--max-flows", "0"],
            &["observer", "--count", "0"],
            &["observer", "--flow-idle-secs", "0"],
            &["observer", "queues", "--count", "0"],
            &["observer", "queues", "--interval-ms", "0"],
            &["observer", "queues", "--interval-ms", "9"],
        ] {
            let e = Cli::try_parse_from(args).expect_err(&format!("{args:?} accepted"));
            assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation, "{args:?}: {e}");
        }
        let cli = Cli::parse_from(["observer", "--port", "1", "--max-flows", "1", "--count", "1"]);
        assert_eq!(
            (cli.watch.ports[0], cli.watch.max_flows, cli.watch.count),
            (1, 1, Some(1))
        );
    }
}
