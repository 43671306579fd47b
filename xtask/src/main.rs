//! `cargo xtask`: the project's developer tasks. Each subcommand lives in its own module; this
//! file only parses the command line.

mod bench;
mod deps;
mod images;
mod paths;
mod test;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

/// Windlass developer tasks.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install the Debian packages and project-local tools the build and tests need (idempotent;
    /// silent when everything is present).
    Deps {
        /// Only report what is missing; install nothing.
        #[arg(long)]
        check: bool,
    },
    /// Compile the eBPF programs in ebpf/ (agent/build.rs does it as part of the agent build).
    BuildEbpf,
    /// Write the test OCI archives into target/images/: `busybox.tar`
    /// (`windlass.local/busybox:latest`, Debian's busybox-static with a symlink per applet, default
    /// command `sh`) and `iperf3.tar` (`windlass.local/iperf3:latest`, the host's iperf3 with the
    /// libraries `ldd` lists, entrypoint `iperf3`). Deterministic; unchanged archives are left
    /// alone. Import one with `windlass image import <archive>`.
    Images,
    /// Lint, build and run every unit and privileged test, then the leak check (needs root).
    Test {
        /// Skip `cargo fmt --check` and `cargo clippy -D warnings`.
        #[arg(long)]
        no_lint: bool,
        /// Extra arguments for the test runner, e.g. a test name filter.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run a benchmark (`apiserver`, `cni`, `scheduler`, `kubelet`, `proxy`); results go to
    /// target/bench/.
    Bench {
        /// Which benchmark.
        name: String,
    },
    /// Start a single-node cluster on this host (server + agent, embedded store).
    Up {
        /// Where the cluster keeps its state.
        #[arg(long, default_value = "/var/lib/windlass")]
        data_dir: String,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Deps { check } => deps::run(check),
        Command::BuildEbpf => paths::cargo(&["build", "--package", "windlass"])
            .context("building the agent, whose build.rs compiles ebpf/*.bpf.c"),
        Command::Images => images::run(),
        Command::Test { no_lint, args } => test::run(!no_lint, &args),
        Command::Bench { name } => bench::run(&name),
        Command::Up { data_dir } => {
            deps::ensure()?;
            bail!(
                "`windlass up --data-dir {data_dir}` is not built yet: the single-node cluster \
                 arrives with issue 8 (windlass up, cluster DNS, multi-node)"
            )
        }
    }
}
