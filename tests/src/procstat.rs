//! A process's CPU time and memory, read from /proc.

use anyhow::Context as _;

/// The text of /proc/<pid>/<file>.
pub fn read(pid: u32, file: &str) -> anyhow::Result<String> {
    let path = format!("/proc/{pid}/{file}");
    std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))
}

/// utime + stime in clock ticks, from /proc/<pid>/stat (fields 14 and 15, counted after the `(comm)`).
pub fn stat_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = read(pid, "stat")?;
    let rest = stat.rsplit_once(')').context("no `)` in /proc/<pid>/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("field {} of /proc/{pid}/stat", i + 3))
    };
    // `rest` starts at field 3 (state): utime is field 14, stime 15.
    Ok(field(11)? + field(12)?)
}

/// Milliseconds of CPU (utime + stime) the process has used so far.
pub fn cpu_ms(pid: u32) -> anyhow::Result<f64> {
    let ticks_per_s = observer::sys::sockets::procfs::clock_ticks_per_second() as f64;
    Ok(stat_ticks(pid)? as f64 * 1e3 / ticks_per_s)
}

/// Nanoseconds on CPU of every live thread, from /proc/<pid>/task/*/schedstat (finer than the stat ticks).
pub fn cpu_ns(pid: u32) -> anyhow::Result<u64> {
    let dir = format!("/proc/{pid}/task");
    let mut total = 0;
    for task in std::fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        let path = task?.path().join("schedstat");
        // A thread that exited since the listing has no file any more.
        if let Ok(text) = std::fs::read_to_string(&path) {
            total += text
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(total)
}

/// A `Vm...:` field of /proc/<pid>/status in KiB, e.g. `status_kib(pid, "VmRSS:")`.
pub fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = read(pid, "status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("{field} in /proc/{pid}/status"))
}
