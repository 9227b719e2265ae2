//! Least privilege: once its programs are attached, the agent keeps only the capabilities it still uses (in
//! its effective, permitted, inheritable and bounding sets; the ambient set is cleared) and sets
//! no_new_privs, so a bug in the code that reads the wire runs without root's powers.
//!
//! What the running agent still does, and what that needs (found by running the tests with less):
//! reading the ring buffer (mmap'd at load), its counter map, sock_diag dumps, /proc/net, the neighbour table
//! and its links' fdinfo need no capability; closing TCX and XDP links detaches them without one. Naming the
//! process of a socket reads other processes' `/proc/<pid>/fd` (CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH), and
//! removing legacy netlink tc filters at exit is an RTM_DELTFILTER (CAP_NET_ADMIN).

use caps::{CapSet, Capability, CapsHashSet};

/// What the agent still does after attach.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// Names the processes owning sockets (`/proc/<pid>/fd` of every process).
    pub processes: bool,
    /// Removes legacy netlink tc filters when it ends (`--tc-attach netlink`, or auto before Linux 6.6).
    pub netlink_tc: bool,
}

/// Why dropping privileges failed.
#[derive(Debug, thiserror::Error)]
#[error("dropping capabilities failed ({step})")]
pub struct PrivilegeError {
    /// The step: which set, or prctl(PR_SET_NO_NEW_PRIVS).
    step: &'static str,
    /// The error of caps or the syscall.
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

fn failed<E: std::error::Error + Send + Sync + 'static>(step: &'static str) -> impl FnOnce(E) -> PrivilegeError {
    move |e| PrivilegeError {
        step,
        source: Box::new(e),
    }
}

/// The capabilities `needs` keeps.
pub fn kept(needs: Needs) -> CapsHashSet {
    let mut keep = CapsHashSet::new();
    if needs.processes {
        keep.insert(Capability::CAP_SYS_PTRACE);
        keep.insert(Capability::CAP_DAC_READ_SEARCH);
    }
    if needs.netlink_tc {
        keep.insert(Capability::CAP_NET_ADMIN);
    }
    keep
}

/// Drops every capability `needs` does not keep from every set of this thread (the agent runs on one; threads
/// started later inherit the sets) and sets no_new_privs.
pub fn drop_all_but(needs: Needs) -> Result<(), PrivilegeError> {
    let keep = kept(needs);
    let permitted = caps::read(None, CapSet::Permitted).map_err(failed("reading the permitted set"))?;
    let keep: CapsHashSet = keep.intersection(&permitted).copied().collect();
    // The bounding set first: dropping from it needs CAP_SETPCAP, which goes next. Without it (started with
    // fewer capabilities) the bounding set stays as it is, and no_new_privs keeps exec from raising anything.
    let setpcap = caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false);
    for cap in caps::all().difference(&keep) {
        if setpcap && caps::has_cap(None, CapSet::Bounding, *cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, *cap).map_err(failed("PR_CAPBSET_DROP"))?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(failed("clearing the ambient set"))?;
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new()).map_err(failed("the inheritable set"))?;
    caps::set(None, CapSet::Effective, &keep).map_err(failed("the effective set"))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(failed("the permitted set"))?;
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(failed("prctl(PR_SET_NO_NEW_PRIVS)")(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// What goes unseen for want of the capabilities that name processes, when this process lacks them (run with
/// CAP_BPF and CAP_NET_ADMIN only, say); the agent runs on without them, and says so.
pub fn process_names_note() -> Option<String> {
    let effective = caps::read(None, CapSet::Effective).ok()?;
    let needs = Needs {
        processes: true,
        netlink_tc: false,
    };
    let mut lacking: Vec<String> = kept(needs).difference(&effective).map(ToString::to_string).collect();
    if lacking.is_empty() {
        return None;
    }
    lacking.sort();
    Some(format!(
        "without {} the owners of other users' sockets are not named",
        lacking.join(" and ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_need_keeps_its_capabilities_and_nothing_else() {
        assert!(kept(Needs::default()).is_empty());
        let both = kept(Needs {
            processes: true,
            netlink_tc: true,
        });
        let mut names: Vec<String> = both.iter().map(ToString::to_string).collect();
        names.sort();
        assert_eq!(names, ["CAP_DAC_READ_SEARCH", "CAP_NET_ADMIN", "CAP_SYS_PTRACE"]);
    }
}
