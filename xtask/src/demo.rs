//! `cargo xtask demo`: builds observer and the tests crate's demo binary (release) and runs the demo, as root.
use anyhow::Result;

use crate::cmd::{self, cargo, run};
use crate::setup::setup;
use crate::tasks::{as_root, build_observer, target_dir};

/// Builds observer and the demo binary, then replaces this process with the demo (through `sudo -E` when not
/// root), pointed at that observer.
pub fn demo() -> Result<()> {
    setup()?;
    build_observer(true)?;
    run(cargo().args(["build", "--release", "-p", "tests", "--bin", "demo"]))?;
    let release = target_dir()?.join("release");
    let demo = release.join("demo");
    cmd::exec(as_root(&demo, "demo").env("OBSERVER_BIN", release.join("observer")))
}
