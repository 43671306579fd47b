//! `cargo xtask`: the project's developer tasks. Each subcommand lives in its own module; this
//! file only parses the command line.

mod bench;
mod deps;
mod e2e;
mod images;
mod paths;
mod test;
mod up;

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
    Images {
        /// Instead, write `windlass.tar` (`windlass.local/windlass:latest`, the image of
        /// `deploy/windlass.yaml`) from the binaries of `cargo build --release --bins`, with their
        /// shared libraries and busybox. Import it on each node with
        /// `ctr -n k8s.io images import target/images/windlass.tar`.
        #[arg(long)]
        windlass: bool,
        /// With --windlass: take the binaries from target/debug instead of target/release.
        #[arg(long, requires = "windlass")]
        debug: bool,
    },
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
    ///
    /// `cargo xtask bench chart` draws the proxy comparison as SVG from target/bench/proxy.json
    /// (into target/bench/proxy.svg); the committed chart is regenerated with `cargo xtask bench
    /// chart --input docs/proxy-benchmark.json --output docs/proxy-benchmark.svg`.
    Bench {
        /// Which benchmark, or `chart`.
        name: String,
        /// `chart` only: the proxy bench's JSON (default target/bench/proxy.json).
        #[arg(long)]
        input: Option<std::path::PathBuf>,
        /// `chart` only: where the SVG goes (default target/bench/proxy.svg).
        #[arg(long)]
        output: Option<std::path::PathBuf>,
    },
    /// Run the three-node walkthrough (tests/e2e.rs) in network namespaces: Deployment,
    /// Service, DNS, NodePort, a rolling update with zero failed requests, a node loss.
    E2e,
    /// Start a single-node cluster on this host (server + agent, embedded store): installs what
    /// is missing, builds the release binaries, imports the test images, runs `windlass up`.
    Up {
        /// Where the cluster keeps its state (`<data-dir>/admin.kubeconfig`).
        #[arg(long, default_value = "/var/lib/windlass")]
        data_dir: String,
        /// On Ctrl-C, also stop the pods (by default they keep running for the next `up`).
        #[arg(long)]
        stop_pods: bool,
        /// More `windlass agent` flags, after `--`.
        #[arg(last = true)]
        agent_args: Vec<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Deps { check } => deps::run(check),
        Command::BuildEbpf => paths::cargo(&["build", "--package", "windlass"])
            .context("building the agent, whose build.rs compiles ebpf/*.bpf.c"),
        Command::Images { windlass, debug } => match (windlass, debug) {
            (false, _) => images::run(),
            (true, false) => images::run_windlass("release"),
            (true, true) => images::run_windlass("debug"),
        },
        Command::Test { no_lint, args } => test::run(!no_lint, &args),
        Command::Bench {
            name,
            input,
            output,
        } => match name.as_str() {
            "chart" => bench::chart::run(input.as_deref(), output.as_deref()),
            _ if input.is_some() || output.is_some() => {
                bail!("--input and --output are for `cargo xtask bench chart` only")
            }
            _ => bench::run(&name),
        },
        Command::E2e => e2e::run(),
        Command::Up {
            data_dir,
            stop_pods,
            agent_args,
        } => up::run(&data_dir, stop_pods, &agent_args),
    }
}
