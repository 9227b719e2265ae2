//! The kernel side from the agent's seat: load the programs, configure them, attach them to an interface,
//! and read their ring buffers and counters. Dropping a [`Capture`] detaches everything.

use std::{io, path::PathBuf};

use aya::{
    Ebpf, EbpfError, EbpfLoader, include_bytes_aligned,
    maps::{Array, MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode as AyaXdpMode,
        tc::{self, NlOptions, TcAttachOptions},
    },
    util::KernelVersion,
};
use observer_common::{
    Config, Counter,
    config::CONFIG_MAP,
    control::FlowKey,
    counter::{COUNTER_COUNT, COUNTERS_MAP, CounterValues},
    fold::{FOLDED_MAP, FoldedFlow},
    record::{EVENTS_MAP, RING_BYTES, SOCK_EVENTS_MAP, SOCK_RING_BYTES},
};

/// The compiled kernel programs (observer-ebpf), embedded at build time.
pub static OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/observer"));

/// Program names in the object.
pub mod program {
    /// TC ingress parser.
    pub const TC_INGRESS: &str = "tc_ingress";
    /// TC egress parser.
    pub const TC_EGRESS: &str = "tc_egress";
    /// XDP ingress parser.
    pub const XDP_INGRESS: &str = "xdp_ingress";
    /// Empty TC program, the benchmark baseline.
    pub const TC_EMPTY: &str = "tc_empty";
}

/// Where the programs hook into the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// TC classifier on ingress and egress.
    Tc(TcAttach),
    /// XDP on ingress only.
    Xdp(XdpMode),
}

/// How TC programs are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcAttach {
    /// TCX links on Linux 6.6 and later, clsact filters before.
    Auto,
    /// TCX links (Linux 6.6+): gone when the process exits.
    Tcx,
    /// A clsact qdisc with netlink filters (any kernel); stale ones are removed at start.
    Netlink,
}

/// XDP attach mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    /// Generic (skb) mode: works on every interface.
    Generic,
    /// Native driver mode (veth and XDP-capable drivers).
    Native,
}

/// Why the kernel side could not be set up. Each message names the problem and the fix.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The object was built without its programs (AYA_BUILD_SKIP).
    #[error(
        "this observer binary was built without its eBPF programs (AYA_BUILD_SKIP); rebuild with `cargo xtask build`"
    )]
    NoObject,
    /// bpf(BPF_MAP_CREATE) or object loading failed.
    #[error("loading the eBPF object failed: {0}{hint}", hint = load_hint(.0))]
    Load(#[source] EbpfError),
    /// bpf(BPF_PROG_LOAD) was refused by the verifier.
    #[error(
        "the kernel's verifier rejected program {program} (bpf(BPF_PROG_LOAD): {io_error}); its log is in {}",
        log.display()
    )]
    Verifier {
        /// Program name.
        program: &'static str,
        /// The syscall's error.
        io_error: io::Error,
        /// Where the verifier log was written.
        log: PathBuf,
    },
    /// Attaching a program failed.
    #[error("attaching {program} to {iface} failed: {source}")]
    Attach {
        /// Program name.
        program: &'static str,
        /// Interface name.
        iface: String,
        /// aya's error.
        #[source]
        source: ProgramError,
    },
    /// A map operation (bpf(BPF_MAP_*)) failed.
    #[error("map {map}: {source}")]
    Map {
        /// Map name.
        map: &'static str,
        /// aya's error.
        #[source]
        source: MapError,
    },
    /// aya-log could not attach to the programs' log buffer.
    #[error("starting the eBPF log reader failed: {0}")]
    Logger(#[source] aya_log::Error),
    /// A program is missing from the object.
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    /// Other program errors (wrong type, already loaded).
    #[error("program {program}: {source}")]
    Program {
        /// Program name.
        program: &'static str,
        /// aya's error.
        #[source]
        source: ProgramError,
    },
    /// TCX was asked for on a kernel without it.
    #[error("TCX links need Linux 6.6 or later (this kernel is {0}); use --tc-attach netlink")]
    NoTcx(String),
    /// The clsact qdisc could not be set up.
    #[error("setting up the clsact qdisc on {iface} failed: {source}")]
    Qdisc {
        /// Interface name.
        iface: String,
        /// aya's error.
        #[source]
        source: tc::TcError,
    },
    /// The socket-event programs could not be set up (see `crate::sys::sockprogs`).
    #[error(transparent)]
    SockEvents(#[from] crate::sys::sockprogs::SockSetupError),
}

fn load_hint(e: &EbpfError) -> &'static str {
    let text = e.to_string();
    if text.contains("EVENTS") || text.contains("ring") {
        "; the BPF ring buffer needs Linux 5.8 or later"
    } else if text.contains("Operation not permitted") || text.contains("EPERM") {
        "; run as root or with CAP_BPF and CAP_NET_ADMIN"
    } else {
        ""
    }
}

/// The ids of the BPF programs some live process holds an fd of (`/proc/<pid>/fdinfo`), a filter's own hold
/// aside.
fn held_programs() -> std::collections::HashSet<u32> {
    let mut held = std::collections::HashSet::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return held;
    };
    for pid in procs
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
    {
        let Ok(fds) = std::fs::read_dir(pid.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == "anon_inode:bpf-prog") {
                let info = std::fs::read_to_string(pid.path().join("fdinfo").join(fd.file_name())).unwrap_or_default();
                held.extend(
                    info.lines()
                        .filter_map(|l| l.strip_prefix("prog_id:"))
                        .filter_map(|id| id.trim().parse::<u32>().ok()),
                );
            }
        }
    }
    held
}

/// The sizes of the two ring buffers, in bytes: each a power of two and a whole number of pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingSizes {
    /// `EVENTS`: the packet records.
    pub packets: u32,
    /// `SOCK_EVENTS`: the socket programs' records.
    pub sockets: u32,
}

impl Default for RingSizes {
    fn default() -> Self {
        RingSizes {
            packets: RING_BYTES,
            sockets: SOCK_RING_BYTES,
        }
    }
}

impl RingSizes {
    /// The default socket ring and a packet ring of one page, for a command that attaches no packet program.
    pub fn sockets_only() -> Self {
        // SAFETY: sysconf has no preconditions.
        let page = u32::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        RingSizes {
            packets: page,
            ..RingSizes::default()
        }
    }
}

/// The loaded programs and their maps.
pub struct Capture {
    pub(crate) ebpf: Ebpf,
    pub(crate) attached: Vec<&'static str>,
    /// Whether the TC programs went in as legacy netlink filters (removing them at exit needs CAP_NET_ADMIN).
    netlink_tc: bool,
}

impl Capture {
    /// Loads the object (maps are created with `rings`' sizes, programs not yet verified) and writes `config`.
    ///
    /// With `ebpf_log` the programs' aya-log diagnostics are compiled in at debug level; without it the
    /// verifier prunes them (one log record per packet costs more than the parse).
    pub fn load(config: &Config, rings: RingSizes, ebpf_log: bool) -> Result<Self, CaptureError> {
        if OBJECT.is_empty() {
            return Err(CaptureError::NoObject);
        }
        let level = if ebpf_log { aya_log::Level::Debug as u8 } else { 0 };
        let ebpf = EbpfLoader::new()
            .override_global(aya_log::LEVEL, &level, true)
            .map_max_entries(EVENTS_MAP, rings.packets)
            .map_max_entries(SOCK_EVENTS_MAP, rings.sockets)
            .load(OBJECT)
            .map_err(CaptureError::Load)?;
        let mut capture = Capture {
            ebpf,
            attached: Vec::new(),
            netlink_tc: false,
        };
        capture.set_config(config)?;
        Ok(capture)
    }

    /// Replaces the configuration the programs read.
    pub fn set_config(&mut self, config: &Config) -> Result<(), CaptureError> {
        let raw = self.ebpf.map_mut(CONFIG_MAP).ok_or_else(|| missing_map(CONFIG_MAP))?;
        let mut array: Array<_, Config> = Array::try_from(raw).map_err(map_error(CONFIG_MAP))?;
        array.set(0, config, 0).map_err(map_error(CONFIG_MAP))
    }

    /// Starts forwarding the programs' aya-log diagnostics to the `log` crate; read it when its fd is readable.
    pub fn ebpf_logger(&mut self) -> Result<aya_log::EbpfLogger<&'static dyn log::Log>, CaptureError> {
        aya_log::EbpfLogger::init(&mut self.ebpf).map_err(CaptureError::Logger)
    }

    /// Verifies and loads a TC program, returning it for attaching or test runs.
    pub fn classifier(&mut self, name: &'static str) -> Result<&mut SchedClassifier, CaptureError> {
        self.loaded(name, SchedClassifier::load, |p| p.fd().is_ok())
    }

    /// Verifies and loads the XDP program, returning it for attaching or test runs.
    pub fn xdp(&mut self) -> Result<&mut Xdp, CaptureError> {
        self.loaded(program::XDP_INGRESS, Xdp::load, |p| p.fd().is_ok())
    }

    /// The program `name` as a `P`, verified and loaded into the kernel on first use.
    fn loaded<P>(
        &mut self,
        name: &'static str,
        load: fn(&mut P) -> Result<(), ProgramError>,
        is_loaded: fn(&P) -> bool,
    ) -> Result<&mut P, CaptureError>
    where
        for<'p> &'p mut P: TryFrom<&'p mut aya::programs::Program, Error = ProgramError>,
    {
        let prog: &mut P = self
            .ebpf
            .program_mut(name)
            .ok_or(CaptureError::MissingProgram(name))?
            .try_into()
            .map_err(|source| CaptureError::Program { program: name, source })?;
        if !is_loaded(prog) {
            load(prog).map_err(|e| verifier_error(name, e))?;
        }
        Ok(prog)
    }

    /// Attaches the programs of `hook` to `iface`. They stay attached until the `Capture` is dropped.
    pub fn attach(&mut self, iface: &str, hook: Hook) -> Result<(), CaptureError> {
        match hook {
            Hook::Tc(how) => {
                let tcx_ok = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
                let options = match how {
                    TcAttach::Tcx if !tcx_ok => {
                        return Err(CaptureError::NoTcx(
                            KernelVersion::current().map(|v| v.to_string()).unwrap_or_default(),
                        ));
                    }
                    TcAttach::Tcx => None,
                    TcAttach::Auto if tcx_ok => None,
                    TcAttach::Auto | TcAttach::Netlink => Some(self.prepare_clsact(iface)?),
                };
                for (name, kind) in [
                    (program::TC_INGRESS, TcAttachType::Ingress),
                    (program::TC_EGRESS, TcAttachType::Egress),
                ] {
                    let prog = self.classifier(name)?;
                    let attach_error = |source| CaptureError::Attach {
                        program: name,
                        iface: iface.into(),
                        source,
                    };
                    match options {
                        None => prog.attach_with_options(iface, kind, TcAttachOptions::TcxOrder(LinkOrder::default())),
                        Some(()) => {
                            prog.attach_with_options(iface, kind, TcAttachOptions::Netlink(NlOptions::default()))
                        }
                    }
                    .map_err(attach_error)?;
                    self.attached.push(name);
                    self.netlink_tc = options.is_some();
                }
            }
            Hook::Xdp(mode) => {
                let flags = match mode {
                    XdpMode::Generic => AyaXdpMode::Skb,
                    XdpMode::Native => AyaXdpMode::Driver,
                };
                let name = program::XDP_INGRESS;
                self.xdp()?
                    .attach(iface, flags)
                    .map_err(|source| CaptureError::Attach {
                        program: name,
                        iface: iface.into(),
                        source,
                    })?;
                self.attached.push(name);
            }
        }
        Ok(())
    }

    /// Adds the clsact qdisc if missing and removes filters a killed earlier run left behind.
    fn prepare_clsact(&mut self, iface: &str) -> Result<(), CaptureError> {
        if let Err(source) = tc::qdisc_add_clsact(iface) {
            // "Exclusivity flag on": the qdisc exists already, which is what we want.
            if !source.to_string().contains("xclusivity")
                && !matches!(&source, tc::TcError::IoError(e) if e.kind() == io::ErrorKind::AlreadyExists)
            {
                return Err(CaptureError::Qdisc {
                    iface: iface.into(),
                    source,
                });
            }
        }
        // A filter of ours whose program a live process holds belongs to another observer on this interface
        // (it removes its own at exit): those are left alone, and with them any stale one of the same name.
        let held = held_programs();
        let ifindex = crate::sys::preflight::ifindex(iface);
        for (name, kind, egress) in [
            (program::TC_INGRESS, TcAttachType::Ingress, false),
            (program::TC_EGRESS, TcAttachType::Egress, true),
        ] {
            let filters = crate::sys::rtnl::bpf_filters(ifindex, egress).unwrap_or_default();
            if filters.iter().any(|(n, id)| n.starts_with(name) && held.contains(id)) {
                continue;
            }
            // Nothing to remove is the usual case.
            let _ = tc::qdisc_detach_program(iface, kind, name);
        }
        Ok(())
    }

    /// Whether the TC programs are legacy netlink filters, which only CAP_NET_ADMIN removes.
    pub fn netlink_tc(&self) -> bool {
        self.netlink_tc
    }

    /// The kernel's id of loaded program `name`.
    pub fn program_id(&self, name: &str) -> Option<u32> {
        let prog: &SchedClassifier = self.ebpf.program(name)?.try_into().ok()?;
        prog.info().ok().map(|i| i.id())
    }

    /// Names of the attached programs.
    pub fn attached(&self) -> &[&'static str] {
        &self.attached
    }

    /// Takes the ring buffer the packet records arrive in (once).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, CaptureError> {
        self.take_ring(EVENTS_MAP)
    }

    /// Takes the ring buffer the socket programs' records arrive in (once).
    pub fn take_sock_events(&mut self) -> Result<RingBuf<MapData>, CaptureError> {
        self.take_ring(SOCK_EVENTS_MAP)
    }

    /// Takes the table of folded segments (once); it stays readable after [`Capture::detach`].
    pub fn take_folded(&mut self) -> Result<FoldedTable, CaptureError> {
        let raw = self.ebpf.take_map(FOLDED_MAP).ok_or_else(|| missing_map(FOLDED_MAP))?;
        Ok(FoldedTable(
            PerCpuHashMap::try_from(raw).map_err(map_error(FOLDED_MAP))?,
        ))
    }

    fn take_ring(&mut self, name: &'static str) -> Result<RingBuf<MapData>, CaptureError> {
        let raw = self.ebpf.take_map(name).ok_or_else(|| missing_map(name))?;
        RingBuf::try_from(raw).map_err(map_error(name))
    }

    /// Reads every counter, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, CaptureError> {
        let raw = self.ebpf.map(COUNTERS_MAP).ok_or_else(|| missing_map(COUNTERS_MAP))?;
        read_counters(PerCpuArray::try_from(raw).map_err(map_error(COUNTERS_MAP))?)
    }

    /// Detaches and unloads every program, then reads the final counters.
    pub fn detach(mut self) -> Result<Counters, CaptureError> {
        let raw = self
            .ebpf
            .take_map(COUNTERS_MAP)
            .ok_or_else(|| missing_map(COUNTERS_MAP))?;
        let counters: PerCpuArray<MapData, CounterValues> =
            PerCpuArray::try_from(raw).map_err(map_error(COUNTERS_MAP))?;
        // Dropping the object detaches its links (TCX, XDP and netlink filters alike).
        drop(self.ebpf);
        read_counters(counters)
    }
}

/// The kernel's per-flow counters of folded data segments.
pub struct FoldedTable(PerCpuHashMap<MapData, FlowKey, FoldedFlow>);

impl FoldedTable {
    /// Every entry, summed over CPUs (entries that vanish while being read are skipped).
    pub fn read(&self) -> Vec<(FlowKey, FoldedFlow)> {
        self.0
            .iter()
            .filter_map(Result::ok)
            .map(|(k, per_cpu)| (k, observer_common::fold::sum(per_cpu.iter().copied())))
            .collect()
    }

    /// Removes the entries of `keys` (one already gone is no error).
    pub fn remove(&mut self, keys: &[FlowKey]) {
        for k in keys {
            let _ = self.0.remove(k);
        }
    }
}

/// Wraps a map operation's error with the map's name.
pub(crate) fn map_error(map: &'static str) -> impl Fn(MapError) -> CaptureError {
    move |source| CaptureError::Map { map, source }
}

/// The error for a map the object does not have.
pub(crate) fn missing_map(map: &'static str) -> CaptureError {
    map_error(map)(MapError::InvalidName { name: map.into() })
}

fn read_counters<T: std::borrow::Borrow<MapData>>(
    array: PerCpuArray<T, CounterValues>,
) -> Result<Counters, CaptureError> {
    let mut values = [0u64; COUNTER_COUNT as usize];
    for cpu in array.get(&0, 0).map_err(map_error(COUNTERS_MAP))?.iter() {
        for (v, c) in values.iter_mut().zip(cpu) {
            *v += c;
        }
    }
    Ok(Counters(values))
}

pub(crate) fn verifier_error(program: &'static str, e: ProgramError) -> CaptureError {
    match e {
        ProgramError::LoadError { io_error, verifier_log } => {
            let log = std::env::temp_dir().join(format!("observer-{program}.verifier.log"));
            // If the log cannot be written the error still names the program and the syscall's error.
            let _ = std::fs::write(&log, verifier_log.to_string());
            CaptureError::Verifier { program, io_error, log }
        }
        source => CaptureError::Program { program, source },
    }
}

/// A snapshot of the per-CPU counters, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters(pub [u64; COUNTER_COUNT as usize]);

impl Counters {
    /// The value of one counter.
    pub fn get(&self, c: Counter) -> u64 {
        self.0[c as usize]
    }

    /// Counters that rose from `earlier` to `self`.
    pub fn since(&self, earlier: &Counters) -> Counters {
        let mut out = *self;
        for (o, e) in out.0.iter_mut().zip(earlier.0) {
            *o = o.saturating_sub(e);
        }
        out
    }

    /// Sum of the malformed classes.
    pub fn malformed(&self) -> u64 {
        Counter::ALL
            .iter()
            .filter(|c| c.is_malformed())
            .map(|c| self.get(*c))
            .sum()
    }
}
