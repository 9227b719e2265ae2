//! Notices, while the agent runs, that its interface or its programs' attachments went away: the interface's
//! index is looked up by name, each TCX or XDP link's `/proc/self/fdinfo` entry must still name the interface
//! (the kernel sets a link's ifindex to 0 when it is detached, by `bpftool link detach` or with its device),
//! and a legacy netlink tc filter (`--tc-attach netlink`), which has no link, must still be in an
//! RTM_GETTFILTER dump of its clsact hook with its program's id.

use std::{ffi::CString, fs, path::PathBuf};

use crate::{sys::capture::program, sys::fault::Fault, sys::preflight, sys::rtnl};

/// How often [`Watchdog::check`] should run: faults end the agent well within a second.
pub const EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// One of the agent's links on the interface.
#[derive(Debug)]
struct WatchedLink {
    program: &'static str,
    fdinfo: PathBuf,
}

/// The interface and links of one running agent.
#[derive(Debug)]
pub struct Watchdog {
    iface: String,
    c_iface: CString,
    ifindex: u32,
    links: Vec<WatchedLink>,
    filters: Vec<WatchedFilter>,
}

/// One of the agent's legacy tc filters on the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchedFilter {
    /// The program.
    pub program: &'static str,
    /// Its kernel id.
    pub prog_id: u32,
    /// Whether it hooks egress (else ingress).
    pub egress: bool,
}

impl Watchdog {
    /// Watches `iface` (index `ifindex`), every TCX and XDP link this process holds on it and the legacy tc
    /// `filters` it attached; call after attach.
    pub fn new(iface: &str, ifindex: u32, filters: Vec<WatchedFilter>) -> Watchdog {
        let links = fs::read_dir("/proc/self/fd")
            .map(|dir| {
                dir.filter_map(|e| {
                    let fd = e.ok()?.file_name();
                    let target = fs::read_link(format!("/proc/self/fd/{}", fd.to_str()?)).ok()?;
                    if target.to_str() != Some("anon_inode:bpf_link") {
                        return None;
                    }
                    let fdinfo = PathBuf::from(format!("/proc/self/fdinfo/{}", fd.to_str()?));
                    let info = LinkFdinfo::parse(&fs::read_to_string(&fdinfo).ok()?);
                    (info.ifindex == Some(ifindex)).then_some(WatchedLink {
                        program: info.program?,
                        fdinfo,
                    })
                })
                .collect()
            })
            .unwrap_or_default();
        Watchdog {
            iface: iface.to_owned(),
            c_iface: CString::new(iface).unwrap_or_default(),
            ifindex,
            links,
            filters,
        }
    }

    /// The fault, if the interface or a link is gone.
    pub fn check(&self) -> Option<Fault> {
        if let Some(fault) = self.interface_fault() {
            return Some(fault);
        }
        let detached = |program| Fault::Detached {
            program,
            iface: self.iface.clone(),
        };
        let link_gone = self.links.iter().find_map(|l| {
            let info = fs::read_to_string(&l.fdinfo).map(|t| LinkFdinfo::parse(&t)).ok();
            (info.and_then(|i| i.ifindex) != Some(self.ifindex)).then_some(l.program)
        });
        // A dump that fails says nothing about the filters: they are checked again on the next tick.
        let filter_gone = || {
            self.filters
                .iter()
                .find(|f| filter_ids(self.ifindex, f.egress).is_ok_and(|ids| !ids.contains(&f.prog_id)))
                .map(|f| f.program)
        };
        let program = link_gone.or_else(filter_gone)?;
        // A device being deleted loses its name and then its links: a link found detached right after the name
        // still resolved is explained by the interface when it has gone meanwhile.
        Some(self.interface_fault().unwrap_or_else(|| detached(program)))
    }

    /// The fault, if the interface has gone or has another name now.
    fn interface_fault(&self) -> Option<Fault> {
        // SAFETY: the name is a NUL-terminated string we own.
        let now = unsafe { libc::if_nametoindex(self.c_iface.as_ptr()) };
        (now != self.ifindex).then(|| match preflight::interface_name(self.ifindex) {
            Some(name) => Fault::InterfaceRenamed {
                iface: self.iface.clone(),
                now: name,
            },
            None => Fault::InterfaceGone {
                iface: self.iface.clone(),
            },
        })
    }
}

/// The program ids of the bpf filters on the clsact ingress (or egress) hook of `ifindex`.
fn filter_ids(ifindex: u32, egress: bool) -> Result<Vec<u32>, rtnl::DumpError> {
    Ok(rtnl::bpf_filters(ifindex, egress)?
        .into_iter()
        .map(|(_, id)| id)
        .collect())
}

/// What a bpf_link's fdinfo says of its attachment.
#[derive(Debug, Default, PartialEq, Eq)]
struct LinkFdinfo {
    /// The program it holds, for observer's TCX and XDP links.
    program: Option<&'static str>,
    /// The interface it is attached to; 0 once detached.
    ifindex: Option<u32>,
}

impl LinkFdinfo {
    fn parse(text: &str) -> LinkFdinfo {
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        let program = match (field("link_type"), field("attach_type")) {
            (Some("tcx"), Some(a)) if a.ends_with("(ingress)") => Some(program::TC_INGRESS),
            (Some("tcx"), Some(a)) if a.ends_with("(egress)") => Some(program::TC_EGRESS),
            (Some("xdp"), _) => Some(program::XDP_INGRESS),
            _ => None,
        };
        LinkFdinfo {
            program,
            ifindex: field("ifindex").and_then(|i| i.parse().ok()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_names_the_program_and_its_interface() {
        let tcx = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t1063\nlink_type:\ttcx\nlink_id:\t423\n\
                   prog_tag:\t63b1fecfff2fa0bd\nprog_id:\t667\nifindex:\t2\nattach_type:\t46 (ingress)\n";
        assert_eq!(
            LinkFdinfo::parse(tcx),
            LinkFdinfo {
                program: Some(program::TC_INGRESS),
                ifindex: Some(2)
            }
        );
        let detached = tcx
            .replace("ifindex:\t2", "ifindex:\t0")
            .replace("(ingress)", "(egress)");
        assert_eq!(
            LinkFdinfo::parse(&detached),
            LinkFdinfo {
                program: Some(program::TC_EGRESS),
                ifindex: Some(0)
            }
        );
        let xdp = "link_type:\txdp\nlink_id:\t433\nprog_id:\t681\nifindex:\t7\n";
        assert_eq!(LinkFdinfo::parse(xdp).program, Some(program::XDP_INGRESS));
        let tp = "link_type:\traw_tracepoint\nlink_id:\t425\ntp_name:\tinet_sock_set_state\n";
        assert_eq!(LinkFdinfo::parse(tp), LinkFdinfo::default());
    }

    #[test]
    fn a_missing_interface_is_a_fault_and_lo_is_not() {
        let lo = preflight::ifindex("lo");
        assert!(Watchdog::new("lo", lo, Vec::new()).check().is_none());
        let gone = Watchdog::new("no-such-if0", 4_000_000, Vec::new()).check();
        assert!(matches!(gone, Some(Fault::InterfaceGone { .. })), "{gone:?}");
    }
}
