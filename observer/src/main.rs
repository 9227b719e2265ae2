//! The `observer` command.

use std::process::ExitCode;

use clap::Parser as _;
use observer::{
    cli::{Cli, Command},
    cmd::exit::{self, status},
    cmd::{compare, netstat, queues, watch},
};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => return usage(&e),
        // --help and --version.
        Err(e) => e.exit(),
    };
    // The table commands need neither the runtime nor the logger; compare has its own exit codes.
    match &cli.command {
        Some(Command::Netstat(args)) => {
            return netstat::run(args).map_or_else(|e| fail(&e), |()| ExitCode::SUCCESS);
        }
        Some(Command::Compare(args)) => {
            return match compare::run(args) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("observer: error: {e}");
                    ExitCode::from(2)
                }
            };
        }
        _ => {}
    }
    let ebpf_log = match &cli.command {
        None => cli.watch.ebpf_log,
        Some(Command::Watch(args)) => args.ebpf_log,
        Some(_) => false,
    };
    // The kernel programs' aya-log records arrive through the `log` crate with the target `observer`; aya's
    // own debug output stays off.
    let mut logger = env_logger::Builder::new();
    logger.filter_level(log::LevelFilter::Warn);
    if ebpf_log {
        logger.filter_module("observer", log::LevelFilter::Debug);
    }
    logger.init();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(&anyhow::Error::from(e).context("starting the tokio runtime")),
    };
    let result = runtime.block_on(async {
        match &cli.command {
            None => watch::run(&cli.watch).await,
            Some(Command::Watch(args)) => watch::run(args).await,
            Some(Command::Queues(args)) => queues::run(args).await,
            Some(Command::Netstat(_) | Command::Compare(_)) => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// Prints the error chain on one line (no backtrace) and exits with the error's status; a closed stdout ends
/// quietly with 0.
fn fail(e: &anyhow::Error) -> ExitCode {
    match exit::status_of(e) {
        Some(code) => {
            eprintln!("observer: error: {e:#}");
            ExitCode::from(code)
        }
        None => ExitCode::SUCCESS,
    }
}

/// A command line clap refuses: its first line only (the usage and the `--help` hint that follow are left out).
fn usage(e: &clap::Error) -> ExitCode {
    let text = e.render().to_string();
    let line = text.lines().next().unwrap_or_default();
    eprintln!("observer: {line}");
    ExitCode::from(status::USAGE)
}
