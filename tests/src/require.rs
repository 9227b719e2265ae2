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

fn unavailable(test: &str, why: &str) -> bool {
    assert!(!in_ci(), "{test}: {why}; CI=true, so this is a failure, not a skip");
    eprintln!("skipped {test}: {why}");
    false
}
