//! `cargo xtask demo`: builds observer and the tests crate's demo binary (release) and runs the demo, as root.
use std::process::Command;

use anyhow::Result;

use crate::cmd::{self, cargo, run};
use crate::setup::setup;
use crate::tasks::{build_observer, target_dir};

/// Builds observer and the demo binary, then replaces this process with the demo (through `sudo -E` when not
/// root), pointed at that observer.
pub fn demo() -> Result<()> {
    setup()?;
    build_observer(true)?;
    run(cargo().args(["build", "--release", "-p", "tests", "--bin", "demo"]))?;
    let release = target_dir()?.join("release");
    let demo = release.join("demo");
    let mut command = if cmd::is_root() {
        Command::new(&demo)
    } else if let Some(sudo) = cmd::which("sudo", &["/usr/bin", "/bin"]) {
        let mut sudo = Command::new(sudo);
        sudo.arg("-E").arg(&demo);
        sudo
    } else {
        eprintln!("demo: not root and no sudo; running it directly");
        Command::new(&demo)
    };
    cmd::exec(command.env("OBSERVER_BIN", release.join("observer")))
}
