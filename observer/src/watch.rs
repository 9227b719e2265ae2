//! `observer watch`: attach, print every record as it arrives, detach on Ctrl-C or SIGTERM, report counters.

use std::io::{self, Write};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use observer_common::Counter;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use crate::{
    capture::{Capture, Counters, Hook},
    cli::{HookKind, WatchArgs},
    events::{self, Event},
    preflight,
    render::Renderer,
};

/// Runs `observer watch` until interrupted (or `--count` events), then prints the counters to stderr.
pub async fn run(args: &WatchArgs) -> anyhow::Result<()> {
    preflight::check_privileges()?;
    let iface = match &args.iface {
        Some(name) => name.clone(),
        None => preflight::default_route_interface()?,
    };
    preflight::check_interface(&iface)?;
    let config = args.config()?;
    let hook = match args.hook {
        HookKind::Tc => Hook::Tc(args.tc_attach),
        HookKind::Xdp => Hook::Xdp(args.xdp_mode),
    };

    let mut capture = Capture::load(&config, args.ebpf_log)?;
    let logger = if args.ebpf_log {
        Some(capture.ebpf_logger()?)
    } else {
        None
    };
    capture.attach(&iface, hook)?;
    let ring = capture.take_events()?;
    // SAFETY: the ring buffer owns its fd for as long as the AsyncFd holds it.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .context("registering the ring buffer with tokio")?;
    let mut logger = match logger {
        // SAFETY: the logger owns its ring buffer fd for as long as the AsyncFd holds it.
        Some(l) => Some(
            unsafe { AsyncFd::register_with_interest(l, Interest::READABLE) }
                .map_err(|e| e.into_parts().1)
                .context("registering the eBPF log reader with tokio")?,
        ),
        None => None,
    };

    let mut renderer = Renderer::new(&iface, preflight::ifindex(&iface), args.json);
    let mut out = io::BufWriter::new(io::stdout().lock());
    let mut stats = HostStats::default();
    eprintln!(
        "observer: watching {iface} ({}){}; Ctrl-C to stop",
        capture.attached().join(", "),
        if args.control_only {
            ", control segments only"
        } else {
            ""
        }
    );

    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut open = true;
    while open {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                open = drain(guard.get_inner_mut(), &mut renderer, &mut out, &mut stats, args.count);
                guard.clear_ready();
            }
            guard = async { logger.as_mut().expect("only polled when present").readable_mut().await },
                if logger.is_some() => {
                let mut guard = guard.context("waiting on the eBPF log")?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            _ = tokio::signal::ctrl_c() => open = false,
            _ = sigterm.recv() => open = false,
            _ = sighup.recv() => open = false,
        }
    }

    let counters = capture.detach()?;
    // Records submitted before the programs went away are still worth printing.
    drain(ring.get_mut(), &mut renderer, &mut out, &mut stats, args.count);
    let _ = out.flush();
    if let Some(logger) = logger.as_mut() {
        // Log records the loop had no turn to read.
        logger.get_mut().flush();
    }
    eprintln!("observer: detached from {iface}");
    eprint!("{}", report(&counters, &stats));
    Ok(())
}

/// What the agent itself counted.
#[derive(Debug, Default)]
struct HostStats {
    events: u64,
    decode_errors: u64,
    output_closed: bool,
}

/// Prints every record waiting in the ring; returns false once the agent should stop.
fn drain(
    ring: &mut RingBuf<MapData>,
    renderer: &mut Renderer,
    out: &mut impl Write,
    stats: &mut HostStats,
    limit: Option<u64>,
) -> bool {
    while let Some(item) = ring.next() {
        if stats.output_closed || limit.is_some_and(|n| stats.events >= n) {
            continue;
        }
        let event: Event = match events::decode(&item) {
            Ok(e) => e,
            Err(_) => {
                stats.decode_errors += 1;
                continue;
            }
        };
        if writeln!(out, "{}", renderer.render(&event)).is_err() {
            // The reader went away (`observer | head`): stop quietly.
            stats.output_closed = true;
            continue;
        }
        stats.events += 1;
        if limit.is_some_and(|n| stats.events >= n) {
            let _ = out.flush();
            return false;
        }
    }
    stats.output_closed |= out.flush().is_err();
    !stats.output_closed
}

/// The exit report: dropped records first, then every counter that is not zero.
fn report(c: &Counters, host: &HostStats) -> String {
    let mut s = format!(
        "dropped records (ring buffer full): {}\nrecords: {} emitted, {} printed, {} undecodable\n",
        c.get(Counter::RingFull),
        c.get(Counter::Emitted),
        host.events,
        host.decode_errors
    );
    s += &format!(
        "frames seen: tc ingress {}, tc egress {}, xdp {}\n",
        c.get(Counter::SeenTcIngress),
        c.get(Counter::SeenTcEgress),
        c.get(Counter::SeenXdp)
    );
    let skipped: Vec<String> = [
        Counter::Filtered,
        Counter::ControlSuppressed,
        Counter::NotTcpOrArp,
        Counter::ArpUnsupported,
        Counter::NonFirstFragment,
    ]
    .iter()
    .map(|k| format!("{} {}", k.name(), c.get(*k)))
    .collect();
    s += &format!("not recorded: {}\n", skipped.join(", "));
    let malformed: Vec<String> = Counter::ALL
        .iter()
        .filter(|k| k.is_malformed())
        .map(|k| format!("{} {}", k.name().trim_start_matches("malformed_"), c.get(*k)))
        .collect();
    s += &format!("malformed: {} ({})\n", c.malformed(), malformed.join(", "));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_puts_drops_first_and_names_every_class() {
        let mut c = Counters::default();
        c.0[Counter::RingFull as usize] = 3;
        c.0[Counter::OptionOverrun as usize] = 2;
        let r = report(
            &c,
            &HostStats {
                events: 5,
                ..Default::default()
            },
        );
        assert!(r.starts_with("dropped records (ring buffer full): 3\n"), "{r}");
        assert!(r.contains("malformed: 2 (") && r.contains("option_overrun 2"), "{r}");
        assert!(r.contains("5 printed"), "{r}");
    }
}
