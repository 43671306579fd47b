//! The `windlass` command line: clap definitions only, no logic.

use clap::{Parser, Subcommand};

/// Windlass: a Kubernetes node agent, eBPF service proxy and small control plane.
#[derive(Debug, Parser)]
#[command(name = "windlass", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The `windlass` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the version and the embedded eBPF objects.
    Version,
}
