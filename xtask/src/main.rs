//! Project tasks for observer: `cargo xtask setup | build | run | test | bench | soak | demo`.
mod cmd;
mod demo;
mod setup;
mod tasks;
mod vm;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Set-up, build, run, test, bench, soak and demo tasks for observer"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Check the build and test prerequisites and install what is missing.
    Setup,
    /// Set up, then build observer (debug profile unless --release).
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Set up, build observer (release) and run it as root, through `sudo -E` when needed.
    Run {
        /// Arguments for observer (after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Set up, then run the workspace tests, clippy (-D warnings) and the rustfmt check, then the kernel and
    /// end-to-end suites on each kernel of the matrix in qemu.
    Test {
        /// Only this kernel: a Debian series (6.1, 6.1-cloud, 6.12) booted in qemu, or `running` for this
        /// machine's kernel alone.
        #[arg(long)]
        kernel: Option<String>,
        /// Only these suites of the tests crate (test binary names such as `table`), with a series `--kernel`.
        #[arg(long, requires = "kernel")]
        suite: Vec<String>,
    },
    /// Set up, then run the tests crate's bench binary (release).
    Bench {
        /// Run the packet bench inside this Debian kernel (6.1, 6.1-cloud, 6.12) booted in qemu instead.
        #[arg(long)]
        kernel: Option<String>,
        /// Arguments for the bench binary (after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Set up, build observer and the tests crate's soak binary (release), then run the real agent on a veth
    /// pair under ~50,000 packets/s with connections opening and closing, printing a row a minute (packets/s,
    /// connections, agent RSS and CPU, lines printed). Fails if the agent's RSS grows more than 10% over the end
    /// of minute 1 (one minute: over a warm-up reading at 20 s) or it lost any record or socket event.
    Soak {
        /// How long to run, in minutes.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
        minutes: u32,
    },
    /// Set up, build observer and the tests crate's demo binary (release), then tell the user's story in
    /// namespaces it makes and removes, printing observer's lines act by act: a WS=256 handshake, a transfer
    /// losing two segments (SACK, retransmissions), a teardown with data in flight, an unanswered ARP, a
    /// backlog-4 listener's full SYN and accept queues, and `observer netstat` next to `netstat -ant`.
    Demo,
}

fn main() -> ExitCode {
    let result = match Cli::parse().task {
        Task::Setup => setup::setup(),
        Task::Build { release } => tasks::build(release),
        Task::Run { args } => tasks::run(&args),
        Task::Test { kernel, suite } => tasks::test(kernel.as_deref(), &suite),
        Task::Bench { kernel, args } => tasks::bench(kernel.as_deref(), &args),
        Task::Soak { minutes } => tasks::soak(minutes),
        Task::Demo => demo::demo(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
