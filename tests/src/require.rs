//! Guards for tests that need root or a kernel feature: under `CI=true` a missing one fails the test,
//! elsewhere the test is skipped with a one-line reason.

/// Whether the test runs in CI, where nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Returns `true` when the test may go on; otherwise skips (prints why) or, in CI, panics.
pub fn root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    unavailable(test, "needs root (run `sudo -E cargo xtask test`)")
}

/// Returns `true` when `tool` is on PATH; otherwise skips or, in CI, panics.
pub fn tool(test: &str, tool: &str) -> bool {
    let found =
        std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()));
    found || unavailable(test, &format!("needs `{tool}` (`cargo xtask setup` installs it)"))
}

/// The running kernel's (major, minor) version, from /proc/sys/kernel/osrelease.
pub fn kernel_version() -> Option<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Returns `true` when the kernel is at least `major.minor` (needed for `what`); otherwise skips or, in CI, panics.
pub fn kernel(test: &str, major: u32, minor: u32, what: &str) -> bool {
    kernel_version().is_some_and(|v| v >= (major, minor))
        || unavailable(test, &format!("needs Linux {major}.{minor} or later for {what}"))
}

/// Whether the kernel is at least `major.minor`, as `what` needs; when not, says in one line that the feature is
/// not supported on this kernel (the test then checks the documented fallback instead). Never a failure: the
/// kernel matrix runs kernels that lack some features on purpose.
pub fn kernel_supports(test: &str, major: u32, minor: u32, what: &str) -> bool {
    let supported = kernel_version().is_some_and(|v| v >= (major, minor));
    if !supported {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        eprintln!(
            "{test}: {what} not supported on {} (needs {major}.{minor}); testing the fallback",
            release.trim()
        );
    }
    supported
}

fn unavailable(test: &str, why: &str) -> bool {
    assert!(!in_ci(), "{test}: {why}; CI=true, so this is a failure, not a skip");
    eprintln!("skipped {test}: {why}");
    false
}
