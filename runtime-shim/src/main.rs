//! `windlass-shim`: the per-container supervisor (conmon-like). It runs `runc create` and
//! `runc start` with pipes for the container's stdout and stderr, reports the container's pid on
//! its stdout, copies the output into a CRI-format log, reaps the container and records its exit
//! status in a state file, and outlives the agent that started it. The contract (arguments,
//! report line, state files, signals) is in the library's crate docs (`src/lib.rs`).

mod cli;
mod log_file;
mod runc;
mod signals;
mod supervisor;

use std::io::Write;
use std::path::Path;

use windlass_shim::state::{self, StartReport};

fn main() {
    let invocation = match cli::parse(std::env::args_os().skip(1)) {
        Ok(invocation) => invocation,
        Err(error) => {
            let _ = writeln!(std::io::stderr(), "windlass-shim: {error}\n{}", cli::USAGE);
            report(&StartReport::Failed { error });
            std::process::exit(2);
        }
    };
    match invocation {
        cli::Invocation::Version => println!("windlass-shim {}", env!("CARGO_PKG_VERSION")),
        cli::Invocation::Help => println!("{}", cli::USAGE),
        cli::Invocation::Run(opts) => std::process::exit(run(&opts)),
    }
}

fn run(opts: &cli::Options) -> i32 {
    let running = match supervisor::start(opts) {
        Ok(running) => running,
        Err(error) => {
            report(&StartReport::Failed {
                error: format!("{error:#}"),
            });
            return 1;
        }
    };
    report(&StartReport::Started {
        pid: running.container_pid,
        shim_pid: std::process::id(),
    });
    detach_stdio(running.state_dir());
    supervisor::supervise(running)
}

/// Prints the one report line on stdout.
fn report(report: &StartReport) {
    // Serializing this enum of strings and integers cannot fail.
    let line = serde_json::to_string(report).unwrap_or_else(|_| r#"{"error":"?"}"#.into());
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Points stdin and stdout at /dev/null (the agent sees EOF after the report line) and stderr at
/// `<state>/shim.log`, so nothing the shim holds belongs to an agent that may be gone.
fn detach_stdio(state_dir: &Path) {
    let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    else {
        return;
    };
    let _ = nix::unistd::dup2_stdin(&null);
    let _ = nix::unistd::dup2_stdout(&null);
    let shim_log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(state_dir.join(state::SHIM_LOG));
    let _ = match &shim_log {
        Ok(file) => nix::unistd::dup2_stderr(file),
        Err(_) => nix::unistd::dup2_stderr(&null),
    };
}
