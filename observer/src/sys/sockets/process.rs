//! Which process owns a socket, found the way `netstat -p` finds it: every /proc/<pid>/fd/* symlink that reads
//! `socket:[<inode>]` (or the old `[0000]:<inode>`) ties that inode to the pid.
//!
//! Naming follows net-tools' `prg_cache_load`: processes are visited in /proc order (ascending pid) and the
//! first one holding an inode keeps it; the program is argv[0] (the first 511 bytes of /proc/<pid>/cmdline up
//! to the first NUL), cut after its last `/` only when it starts with `/`; `pid/program` is then cut to 19
//! bytes. Processes that vanish during the scan or deny access are skipped. Pids are those of the procfs
//! mount's pid namespace; sockets of every network namespace are found.

use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    fs,
    io::Read as _,
    os::{fd::AsRawFd as _, unix::ffi::OsStrExt as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

/// Least time between two full rescans that [`ProcessMap::get`] starts by itself.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(200);
/// netstat's PROGNAME_WIDTH: its `pid/program` buffer, terminating NUL included.
const PROGNAME_WIDTH: usize = 20;
/// How much of /proc/<pid>/cmdline netstat reads.
const CMDLINE_MAX: u64 = 511;

/// The process that holds a socket; a clone shares its names (a socket's every line carries its owner). Fields
/// in the order of their names, as JSON lines sort keys (see `model::link::SocketLink`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Owner {
    /// /proc/<pid>/comm (the kernel's 15-byte task name).
    pub comm: Arc<str>,
    /// Process id.
    pub pid: u32,
    /// What `netstat -p` prints after `pid/`, before it cuts the column (see the module documentation).
    pub program: Arc<str>,
}

impl Owner {
    /// `pid/program` cut to the 19 bytes netstat keeps (at a character boundary, where netstat cuts bytes).
    pub fn netstat_label(&self) -> String {
        let mut label = format!("{}/{}", self.pid, self.program);
        let mut end = label.len().min(PROGNAME_WIDTH - 1);
        while !label.is_char_boundary(end) {
            end -= 1;
        }
        label.truncate(end);
        label
    }
}

/// Socket inode to owner, from a cached scan of /proc that is redone when an unknown inode is asked for.
#[derive(Debug)]
pub struct ProcessMap {
    root: PathBuf,
    interval: Duration,
    scanned_at: Option<Instant>,
    owners: HashMap<u32, Owner>,
    inodes: HashMap<u64, u32>,
}

impl Default for ProcessMap {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcessMap {
    /// A map over /proc that rescans at most every [`DEFAULT_INTERVAL`].
    pub fn new() -> Self {
        Self::with_interval(DEFAULT_INTERVAL)
    }

    /// A map over /proc that rescans at most every `interval` on its own ([`ProcessMap::refresh`] always does).
    pub fn with_interval(interval: Duration) -> Self {
        Self::with_root("/proc", interval)
    }

    /// A map over the procfs mounted at `root` (a container's or a host's /proc seen from elsewhere).
    pub fn with_root(root: impl Into<PathBuf>, interval: Duration) -> Self {
        ProcessMap {
            root: root.into(),
            interval,
            scanned_at: None,
            owners: HashMap::new(),
            inodes: HashMap::new(),
        }
    }

    /// The owner of socket `inode`; an inode not seen yet triggers a full rescan unless the last one was less
    /// than the interval ago. Inode 0 (request and TIME_WAIT socks, orphans) has no owner.
    pub fn get(&mut self, inode: u64) -> Option<&Owner> {
        if inode == 0 {
            return None;
        }
        let due = self.scanned_at.is_none_or(|at| at.elapsed() >= self.interval);
        if due && !self.inodes.contains_key(&inode) {
            self.refresh();
        }
        self.owners.get(self.inodes.get(&inode)?)
    }

    /// Rescans every process now.
    pub fn refresh(&mut self) {
        self.scan(&[]);
    }

    /// Makes the owners of `wanted` known: unless each is known already or the last scan was less than the
    /// interval ago, rescans in /proc order and stops once each has its owner. Other inodes found on the way
    /// are kept; `get` rescans for the rest when due.
    pub fn find(&mut self, wanted: &[u64]) {
        let due = self.scanned_at.is_none_or(|at| at.elapsed() >= self.interval);
        if due && wanted.iter().any(|i| *i != 0 && !self.inodes.contains_key(i)) {
            self.scan(wanted);
        }
    }

    /// Scans processes in /proc order, all of them or until every inode of `until` has its owner: then it stops
    /// at that fd, so that a process holding many sockets is not read through for one of them.
    fn scan(&mut self, until: &[u64]) {
        self.owners.clear();
        self.inodes.clear();
        let mut pending: HashSet<u64> = until.iter().copied().filter(|i| *i != 0).collect();
        let early = !pending.is_empty();
        for pid in pids(&self.root) {
            let dir = self.root.join(pid.to_string());
            let (known, mut new, mut found) = (&self.inodes, Vec::new(), Vec::new());
            each_socket_inode(&dir, |inode| {
                if !known.contains_key(&inode) {
                    new.push(inode);
                }
                if pending.remove(&inode) {
                    found.push(inode);
                }
                early && pending.is_empty()
            });
            if new.is_empty() {
                continue;
            }
            match owner(&dir, pid) {
                Some(owner) => {
                    self.inodes.extend(new.into_iter().map(|inode| (inode, pid)));
                    self.owners.insert(pid, owner);
                }
                // Gone meanwhile: its sockets are still to be found elsewhere, if anywhere.
                None => pending.extend(found),
            }
            if early && pending.is_empty() {
                break;
            }
        }
        self.scanned_at = Some(Instant::now());
    }
}

/// The numeric entries of `root`, ascending (the order /proc lists them in).
fn pids(root: &Path) -> Vec<u32> {
    let Ok(dir) = fs::read_dir(root) else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = dir
        .filter_map(|e| {
            let name = e.ok()?.file_name();
            let name = name.to_str()?;
            if name.bytes().all(|b| b.is_ascii_digit()) {
                name.parse().ok()
            } else {
                None
            }
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// Hands `f` the inode of each socket among `dir`/fd/*, in the directory's order, until it returns true.
fn each_socket_inode(dir: &Path, mut f: impl FnMut(u64) -> bool) {
    let fd_dir = dir.join("fd");
    let (Ok(fds), Ok(handle)) = (fs::read_dir(&fd_dir), fs::File::open(&fd_dir)) else {
        return;
    };
    let mut link = [0u8; 64];
    for fd in fds {
        let Some(name) = fd.ok().and_then(|e| CString::new(e.file_name().as_bytes()).ok()) else {
            continue;
        };
        // Relative to the open fd directory: no path walk from / for each of a busy server's many fds.
        // SAFETY: `handle` is an open directory, `name` NUL-terminated, `link` writable for its length.
        let n = unsafe { libc::readlinkat(handle.as_raw_fd(), name.as_ptr(), link.as_mut_ptr().cast(), link.len()) };
        let inode = usize::try_from(n)
            .ok()
            .and_then(|n| link.get(..n))
            .and_then(socket_inode);
        if inode.is_some_and(&mut f) {
            return;
        }
    }
}

/// The inode of an fd link that names a socket: `socket:[123]` or `[0000]:123`.
fn socket_inode(link: &[u8]) -> Option<u64> {
    let digits = link
        .strip_prefix(b"socket:[")
        .and_then(|rest| rest.strip_suffix(b"]"))
        .or_else(|| link.strip_prefix(b"[0000]:"))?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The owner record of the process at `dir`; None when it is gone or its cmdline cannot be read.
fn owner(dir: &Path, pid: u32) -> Option<Owner> {
    let mut cmdline = Vec::new();
    fs::File::open(dir.join("cmdline"))
        .ok()?
        .take(CMDLINE_MAX)
        .read_to_end(&mut cmdline)
        .ok()?;
    let comm = fs::read(dir.join("comm")).unwrap_or_default();
    Some(Owner {
        pid,
        comm: String::from_utf8_lossy(&comm).trim_end_matches('\n').into(),
        program: program(&cmdline).into(),
    })
}

/// netstat's program name: argv[0], after its last `/` when it is an absolute path.
fn program(cmdline: &[u8]) -> String {
    let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
    let name = match argv0.first() {
        Some(b'/') => argv0.rsplit(|&b| b == b'/').next().unwrap_or_default(),
        _ => argv0,
    };
    String::from_utf8_lossy(name).into_owned()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// A fake procfs under the temp directory, removed on drop.
    struct FakeProc(PathBuf);

    impl FakeProc {
        fn new(tag: &str) -> FakeProc {
            let root = std::env::temp_dir().join(format!("observer-process-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&root);
            fs::create_dir_all(&root).unwrap();
            FakeProc(root)
        }

        fn process(&self, pid: u32, cmdline: &[u8], comm: &str, fds: &[&str]) {
            let dir = self.0.join(pid.to_string());
            fs::create_dir_all(dir.join("fd")).unwrap();
            fs::write(dir.join("cmdline"), cmdline).unwrap();
            fs::write(dir.join("comm"), format!("{comm}\n")).unwrap();
            for (fd, target) in fds.iter().enumerate() {
                symlink(target, dir.join("fd").join(fd.to_string())).unwrap();
            }
        }
    }

    impl Drop for FakeProc {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn socket_links_in_both_spellings() {
        assert_eq!(socket_inode(b"socket:[4242]"), Some(4242));
        assert_eq!(socket_inode(b"[0000]:17"), Some(17));
        for other in [
            &b"socket:[]"[..],
            b"socket:[12",
            b"socket:[1x]",
            b"pipe:[5]",
            b"/dev/null",
            b"anon_inode:[x]",
        ] {
            assert_eq!(socket_inode(other), None, "{}", String::from_utf8_lossy(other));
        }
    }

    #[test]
    fn program_is_argv0_cut_only_when_absolute() {
        assert_eq!(program(b"/usr/bin/socat\0TCP-LISTEN:1\0"), "socat");
        assert_eq!(program(b"sshd: root@pts/0\0\0"), "sshd: root@pts/0");
        assert_eq!(program(b"./bin/server\0-v\0"), "./bin/server");
        assert_eq!(program(b"/usr/sbin/\0"), "");
        assert_eq!(program(b"\0arg\0"), "");
        assert_eq!(program(b""), "");
    }

    #[test]
    fn label_is_cut_to_netstats_column() {
        let owner = |pid, program: &str| Owner {
            pid,
            comm: "".into(),
            program: program.into(),
        };
        assert_eq!(owner(7, "socat").netstat_label(), "7/socat");
        assert_eq!(
            owner(123456, "a-very-long-program-name").netstat_label(),
            "123456/a-very-long-"
        );
        assert_eq!(
            owner(123456, "a-very-long-program-name").netstat_label().len(),
            PROGNAME_WIDTH - 1
        );
        // 'é' would straddle byte 19: the label stops before it.
        assert_eq!(owner(1234567, "abcdefghijké").netstat_label(), "1234567/abcdefghijk");
    }

    #[test]
    fn scan_follows_netstat_rules_on_a_fake_proc() {
        let proc = FakeProc::new("scan");
        proc.process(
            300,
            b"/usr/bin/socat\0-\0",
            "socat",
            &["/dev/null", "socket:[11]", "socket:[12]"],
        );
        proc.process(200, b"sshd: root@pts/0\0", "sshd", &["socket:[11]", "[0000]:13"]);
        proc.process(400, b"", "kworker/0:1", &["socket:[14]"]);
        fs::create_dir_all(proc.0.join("500")).unwrap();
        fs::create_dir_all(proc.0.join("self/fd")).unwrap();
        symlink("socket:[15]", proc.0.join("self/fd/0")).unwrap();

        let mut map = ProcessMap::with_root(&proc.0, Duration::from_secs(3600));
        // The lower pid wins a shared inode, as in /proc order.
        assert_eq!(map.get(11).map(|o| o.pid), Some(200));
        assert_eq!(map.get(12).map(Owner::netstat_label), Some("300/socat".to_string()));
        let sshd = map.get(13).cloned().unwrap();
        assert_eq!((&*sshd.comm, &*sshd.program), ("sshd", "sshd: root@pts/0"));
        assert_eq!(map.get(14).map(|o| &*o.program), Some(""));
        assert_eq!(map.get(15), None);
        assert_eq!(map.get(0), None);
    }

    #[test]
    fn unknown_inodes_rescan_only_after_the_interval() {
        let proc = FakeProc::new("rescan");
        proc.process(10, b"/bin/a\0", "a", &["socket:[1]"]);
        let mut slow = ProcessMap::with_root(&proc.0, Duration::from_secs(3600));
        let mut eager = ProcessMap::with_root(&proc.0, Duration::ZERO);
        assert!(slow.get(1).is_some() && eager.get(1).is_some());

        proc.process(20, b"/bin/b\0", "b", &["socket:[2]"]);
        assert_eq!(slow.get(2), None, "rescanned within the interval");
        assert_eq!(eager.get(2).map(|o| o.pid), Some(20));
        slow.refresh();
        assert_eq!(slow.get(2).map(|o| o.pid), Some(20));

        // A vanished process disappears at the next scan.
        fs::remove_dir_all(proc.0.join("10")).unwrap();
        slow.refresh();
        assert_eq!(slow.get(1), None);
    }

    #[test]
    fn find_stops_at_the_first_holders_of_what_it_wants() {
        let proc = FakeProc::new("find");
        proc.process(10, b"/bin/a\0", "a", &["socket:[1]", "socket:[7]"]);
        proc.process(20, b"/bin/b\0", "b", &["socket:[2]", "socket:[7]"]);
        proc.process(30, b"/bin/c\0", "c", &["socket:[3]"]);
        let mut map = ProcessMap::with_root(&proc.0, Duration::from_secs(3600));
        map.find(&[7, 2, 0]);
        // The first holder in /proc order keeps a shared inode, as in a full scan.
        assert_eq!(map.get(7).map(|o| o.pid), Some(10));
        assert_eq!(map.get(2).map(|o| o.pid), Some(20));
        assert_eq!(map.get(3), None, "pid 30 was scanned although pid 20 completed the set");
        map.refresh();
        assert_eq!(map.get(3).map(|o| o.pid), Some(30));
    }

    #[test]
    fn find_stops_inside_a_process_at_the_fd_it_wants() {
        let proc = FakeProc::new("stop");
        let fds: Vec<String> = (1..=500).map(|i| format!("socket:[{i}]")).collect();
        let fds: Vec<&str> = fds.iter().map(String::as_str).collect();
        proc.process(10, b"/bin/busy\0", "busy", &fds);
        // The fd the scan meets first, in the directory's own order.
        let mut first = None;
        each_socket_inode(&proc.0.join("10"), |inode| {
            first = Some(inode);
            true
        });
        let first = first.expect("a socket fd");
        let mut map = ProcessMap::with_root(&proc.0, Duration::from_secs(3600));
        map.find(&[first]);
        assert_eq!(map.get(first).map(|o| o.pid), Some(10));
        assert_eq!(map.inodes.len(), 1, "read on past the fd it wanted");
        map.refresh();
        assert_eq!(map.inodes.len(), 500);
    }
}
